//! The domain API against the real kernel maps: what `set_service` and
//! `remove_service` leave behind, and how the reconciler diffs.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use aya::maps::{Array, PerCpuArray, PerCpuValues};
use lb::{
    dataplane::{Dataplane, DataplaneConfig, DataplaneError, service_key},
    model::{BackendSpec, DesiredState, Protocol, ServiceSpec},
    reconcile,
};
use lb_common::{
    ALL_NEIGHBOR_SLOTS, BACKEND_ACTIVE, LEGACY_SETTING_ANSWER_NEIGHBORS, MAP_COUNTERS,
    MAP_SIDE_PATHS, SIDE_PATH_PROGRAMS, Settings, addr_of, counters,
};
use lb_tests::{
    pin_root::{BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY, PinRoot, pin_old_map},
    specs,
};

const RING_SIZE: u32 = 251;

fn spec(vip_last: u8, nodes: &[(u8, u32)]) -> ServiceSpec {
    let backends = nodes
        .iter()
        .map(|&(i, weight)| BackendSpec {
            weight,
            ..specs::node(i, 31000)
        })
        .collect();
    specs::service(
        Ipv4Addr::new(198, 51, 100, vip_last),
        80,
        Protocol::Tcp,
        backends,
    )
}

fn load(max_services: u32) -> Dataplane {
    Dataplane::load(DataplaneConfig {
        ring_size: RING_SIZE,
        max_services,
        pin_dir: None,
        ..Default::default()
    })
    .expect("load")
}

/// Backend ids the live ring of `spec`'s service points at, with entry counts.
fn ring(dataplane: &Dataplane, spec: &ServiceSpec) -> BTreeMap<u32, u32> {
    let info = dataplane
        .maps()
        .services
        .get(&service_key(&spec.frontend))
        .expect("SERVICES4")
        .expect("service entry");
    assert_eq!(info.ring_size, RING_SIZE);
    let mut counts = BTreeMap::new();
    for slot in info.ring_base..info.ring_base + info.ring_size {
        let id = dataplane.maps().maglev.get(&slot, 0).expect("ring entry");
        *counts.entry(id).or_insert(0) += 1;
    }
    // What the listings read in one batch (from the map's first entry, or
    // after the one before the ring) is what the entries say one by one.
    let batched = dataplane.maps().ring_entries(&info).expect("batch read");
    assert_eq!(batched, counts, "ring at {}", info.ring_base);
    counts
}

#[test]
fn updates_swap_whole_rings_and_retire_removed_backends() {
    let mut dataplane = load(4);
    let three = spec(10, &[(1, 1), (2, 1), (3, 1)]);
    dataplane.set_service(&three).expect("add");
    let first_base = dataplane
        .maps()
        .services
        .get(&service_key(&three.frontend))
        .expect("SERVICES4")
        .expect("entry")
        .ring_base;
    let before = ring(&dataplane, &three);
    assert_eq!(before.len(), 3);
    for id in before.keys() {
        let backend = dataplane.maps().backends.get(id, 0).expect("backend");
        assert_eq!(backend.flags & BACKEND_ACTIVE, BACKEND_ACTIVE);
    }

    // Drop node-3, double node-1's weight.
    let two = spec(10, &[(1, 2), (2, 1)]);
    dataplane.set_service(&two).expect("update");
    let info = dataplane
        .maps()
        .services
        .get(&service_key(&two.frontend))
        .expect("SERVICES4")
        .expect("entry");
    assert_ne!(info.ring_base, first_base, "the update wrote the idle slot");
    let after = ring(&dataplane, &two);
    assert_eq!(after.len(), 2);
    let programmed = dataplane.service(&two.frontend).expect("programmed");
    let node1 = programmed
        .backends
        .iter()
        .find(|b| b.spec.node == "node-1")
        .expect("node-1");
    assert!(
        after[&node1.id] > 160,
        "weight 2 of 3 should own about 2/3 of {RING_SIZE}: {after:?}"
    );
    let removed: Vec<u32> = before
        .keys()
        .filter(|id| !after.contains_key(id))
        .copied()
        .collect();
    assert_eq!(removed.len(), 1);
    let retired = dataplane.maps().backends.get(&removed[0], 0).expect("slot");
    assert_eq!(
        retired.flags & BACKEND_ACTIVE,
        0,
        "removed backend still active"
    );

    dataplane.remove_service(&two.frontend).expect("remove");
    assert!(
        dataplane
            .maps()
            .services
            .get(&service_key(&two.frontend))
            .expect("SERVICES4")
            .is_none()
    );
    for id in after.keys() {
        assert_eq!(dataplane.maps().backends.get(id, 0).expect("slot").flags, 0);
    }
}

#[test]
fn service_capacity_is_enforced_and_freed_ids_are_reused() {
    let mut dataplane = load(2);
    dataplane.set_service(&spec(1, &[(1, 1)])).expect("first");
    dataplane.set_service(&spec(2, &[(1, 1)])).expect("second");
    match dataplane.set_service(&spec(3, &[(1, 1)])) {
        Err(DataplaneError::ServicesFull(2)) => {}
        other => panic!("expected ServicesFull, got {other:?}"),
    }
    dataplane
        .remove_service(&spec(1, &[]).frontend)
        .expect("remove");
    dataplane
        .set_service(&spec(3, &[(1, 1)]))
        .expect("third fits now");
}

#[test]
fn a_service_without_weight_has_no_backends_in_the_kernel() {
    let mut dataplane = load(2);
    let idle = spec(5, &[(1, 0), (2, 0)]);
    dataplane.set_service(&idle).expect("set");
    let info = dataplane
        .maps()
        .services
        .get(&service_key(&idle.frontend))
        .expect("SERVICES4")
        .expect("entry");
    assert_eq!(
        info.backend_count, 0,
        "packets to it drop instead of using a stale ring"
    );
}

#[test]
fn reconcile_touches_only_what_changed() {
    let mut dataplane = load(8);
    let a = spec(1, &[(1, 1), (2, 1)]);
    let b = spec(2, &[(1, 1)]);
    let mut desired = DesiredState::default();
    desired.services.insert(a.frontend, a.clone());
    desired.services.insert(b.frontend, b.clone());
    let report = reconcile::apply(&mut dataplane, &desired);
    assert_eq!(report.added, vec![a.frontend, b.frontend]);
    assert!(
        reconcile::apply(&mut dataplane, &desired).is_noop(),
        "second apply changes nothing"
    );

    let ring_of_a = ring(&dataplane, &a);
    let b2 = spec(2, &[(1, 1), (3, 1)]);
    desired.services.insert(b2.frontend, b2.clone());
    let report = reconcile::apply(&mut dataplane, &desired);
    assert_eq!(report.updated, vec![b2.frontend]);
    assert!(report.added.is_empty() && report.removed.is_empty());
    assert_eq!(ring(&dataplane, &a), ring_of_a, "service a was rewritten");

    desired.services.remove(&a.frontend);
    let report = reconcile::apply(&mut dataplane, &desired);
    assert_eq!(report.removed, vec![a.frontend]);
}

/// An agent taking over pinned state answers ARP and NDP for the VIPs as the
/// earlier agent did until its first sync: the masks that agent wrote, or,
/// from an agent that answered for every VIP everywhere (the legacy
/// setting, masks never written), every interface.
#[test]
fn a_takeover_keeps_answering_neighbors_as_the_earlier_agent_did() {
    let bpffs = PinRoot::new("test-masks");
    let config = DataplaneConfig {
        ring_size: RING_SIZE,
        max_services: 4,
        pin_dir: Some(bpffs.path().clone()),
        ..Default::default()
    };
    let (answered, bgp_only) = (spec(10, &[(1, 1)]), spec(11, &[(1, 1)]));
    let (vip, other) = (answered.frontend.vip, bgp_only.frontend.vip);
    let mut first = Dataplane::load(config.clone()).expect("load");
    first.add_iface(7, [2, 0, 0, 0, 0, 7]).expect("iface");
    for spec in [&answered, &bgp_only] {
        first.set_service(spec).expect("set_service");
    }
    let answers = BTreeMap::from([(vip, BTreeSet::from([7]))]);
    first.set_neighbor_answers(&answers).expect("answers");
    let mask = first.neighbor_mask(vip);
    assert_ne!(mask, 0);
    drop(first);

    let second = Dataplane::load(config.clone()).expect("takeover");
    assert_eq!(
        (second.neighbor_mask(vip), second.neighbor_mask(other)),
        (mask, 0)
    );
    drop(second);

    // What an agent from before the masks left: the setting, in the
    // settings it pinned (agents since keep them in global data), masks 0.
    let mut settings: Array<_, Settings> =
        pin_old_map::<u32, Settings>(&bpffs.dir(4), "SETTINGS", BPF_MAP_TYPE_ARRAY, 1, 0)
            .try_into()
            .expect("an array");
    let legacy = Settings {
        flags: LEGACY_SETTING_ANSWER_NEIGHBORS,
        new_flow_limit: 0,
    };
    settings.set(0, legacy, 0).expect("settings");
    drop(settings);
    let mut maps = lb::maps::Maps::open_pinned(bpffs.path()).expect("pinned maps");
    for ip in [vip, other] {
        maps.vips.insert(addr_of(ip), 0, 0).expect("vips");
    }
    drop(maps);
    let third = Dataplane::load(config).expect("takeover of a legacy agent's state");
    assert_eq!(
        (third.neighbor_mask(vip), third.neighbor_mask(other)),
        (ALL_NEIGHBOR_SLOTS, ALL_NEIGHBOR_SLOTS)
    );
    assert!(
        !bpffs.dir(4).join("SETTINGS").exists(),
        "the legacy settings are still pinned"
    );
    third.remove_pins().expect("remove pins");
}

/// An agent started again with its interfaces in another order gives each
/// the slot it had: the masks it takes over mean the same interfaces.
#[test]
fn a_takeover_keeps_each_interface_in_its_slot_whatever_their_order() {
    let bpffs = PinRoot::new("test-slots");
    let config = DataplaneConfig {
        ring_size: RING_SIZE,
        max_services: 4,
        pin_dir: Some(bpffs.path().clone()),
        ..Default::default()
    };
    let slots = || -> BTreeMap<u32, u8> {
        let maps = lb::maps::Maps::open_pinned(bpffs.path()).expect("pinned maps");
        let entries = maps.ifaces.iter().map(|entry| entry.expect("an interface"));
        entries
            .map(|(ifindex, iface)| (ifindex, iface.slot))
            .collect()
    };
    let mut first = Dataplane::load(config.clone()).expect("load");
    for ifindex in [7, 9] {
        first.add_iface(ifindex, [2, 0, 0, 0, 0, 7]).expect("iface");
    }
    drop(first);
    let before = slots();
    assert_eq!(before, BTreeMap::from([(7, 0), (9, 1)]));
    let mut second = Dataplane::load(config).expect("takeover");
    for ifindex in [9, 3, 7] {
        second
            .add_iface(ifindex, [2, 0, 0, 0, 0, 7])
            .expect("iface");
    }
    assert_eq!(slots(), BTreeMap::from([(3, 2), (7, 0), (9, 1)]));
    second.remove_pins().expect("remove pins");
}

/// Earlier agents pinned the counters as `GLOBAL_STATS` and the side paths'
/// program array as `SIDE_PATHS`, each with a slot for every counter or side
/// path they knew, too few for this one's. A takeover carries the counts
/// into the counters it pins under their new name, so that they keep
/// counting up, and removes both former pins, once its program is attached;
/// until then the CLI reads the former counters.
#[test]
fn a_takeover_carries_the_counters_an_earlier_agent_pinned_with_fewer_slots() {
    const FORMER_SLOTS: u32 = 26;
    let bpffs = PinRoot::new("test-counters");
    let config = DataplaneConfig {
        ring_size: RING_SIZE,
        max_services: 4,
        pin_dir: Some(bpffs.path().clone()),
        ..Default::default()
    };
    drop(Dataplane::load(config.clone()).expect("load"));
    // What an earlier agent left: its maps under their former names.
    let dir = bpffs.dir(4);
    for name in [MAP_COUNTERS, MAP_SIDE_PATHS] {
        std::fs::remove_file(dir.join(name)).expect("unpin");
    }
    const PROG_ARRAY: u32 = 3;
    drop(pin_old_map::<u32, u32>(
        &dir,
        "SIDE_PATHS",
        PROG_ARRAY,
        3,
        0,
    ));
    let mut former: PerCpuArray<_, u64> = pin_old_map::<u32, u64>(
        &dir,
        "GLOBAL_STATS",
        BPF_MAP_TYPE_PERCPU_ARRAY,
        FORMER_SLOTS,
        0,
    )
    .try_into()
    .expect("a per-CPU array");
    let cpus = aya::util::nr_cpus().expect("CPUs");
    let counts: Vec<u64> = (1..=cpus as u64).collect();
    let forwarded = PerCpuValues::try_from(counts.clone()).expect("values");
    former
        .set(counters::FORWARD_TX, forwarded, 0)
        .expect("a count");
    drop(former);
    let forwarded = |maps: &lb::maps::Maps| {
        maps.global_counters().expect("counters")[counters::FORWARD_TX as usize]
    };
    let total = counts.iter().sum::<u64>();
    let cli = lb::maps::Maps::open_pinned(bpffs.path()).expect("the CLI's view");
    assert_eq!(forwarded(&cli), total, "the CLI reads the former counters");
    drop(cli);

    let mut second = Dataplane::load(config).expect("takeover of an earlier agent's state");
    // The earlier program serves, counting and tail-calling through them,
    // until this one is attached.
    for former in ["GLOBAL_STATS", "SIDE_PATHS"] {
        assert!(dir.join(former).exists(), "{former} went before the attach");
    }
    second.retire_former_pins().expect("retire the former pins");
    assert_eq!(forwarded(second.maps()), total, "the count carried over");
    for former in ["GLOBAL_STATS", "SIDE_PATHS"] {
        assert!(!dir.join(former).exists(), "{former} is still pinned");
    }
    for name in [MAP_COUNTERS, MAP_SIDE_PATHS] {
        assert!(dir.join(name).exists(), "{name} is not pinned");
    }
    second.remove_pins().expect("remove pins");
}

/// The verifier walks every path of each program before the program loads,
/// and an agent's start waits for it: a change that multiplies the states it
/// walks shows here, as the IPv6 extension-header walk once did (each of its
/// exits a state of its own, the entry point at 319,000 instructions).
#[test]
fn each_program_verifies_within_a_seventh_of_the_budget() {
    const BOUND: u32 = 150_000;
    let dataplane = load(16);
    let counts = dataplane
        .verified_instructions()
        .expect("the verifier's counts");
    assert_eq!(counts.len(), 1 + SIDE_PATH_PROGRAMS.len(), "{counts:?}");
    for (name, verified) in counts {
        assert!(
            verified <= BOUND,
            "{name}: the verifier processed {verified} instructions, more than {BOUND}"
        );
    }
}

/// A new service that cannot be programmed (here: more backends than ring
/// entries) leaves nothing behind: no entry, no backend slot taken, its
/// service id free again, and no programmed service the reconciler would
/// take for done (or the announcer for served), so the next round tries
/// again.
#[test]
fn a_new_service_that_fails_to_program_leaves_nothing_behind() {
    let mut dataplane = load(1);
    let backends = (0..=RING_SIZE)
        .map(|i| {
            let ip = Ipv4Addr::new(10, 2, (i / 250) as u8, (i % 250) as u8 + 1);
            specs::backend(format!("node-{i}"), ip, 31000)
        })
        .collect();
    let too_many = specs::service(Ipv4Addr::new(198, 51, 100, 20), 80, Protocol::Tcp, backends);
    let error = dataplane
        .set_service(&too_many)
        .expect_err("more backends than ring entries");
    assert!(matches!(error, DataplaneError::Maglev(_)), "{error}");
    assert!(dataplane.service(&too_many.frontend).is_none());
    assert_eq!(dataplane.services().count(), 0);
    assert_eq!(
        dataplane
            .maps()
            .services
            .get(&service_key(&too_many.frontend))
            .expect("SERVICES4"),
        None
    );
    let active = dataplane
        .maps()
        .backends
        .iter()
        .filter(|entry| entry.as_ref().is_ok_and(|b| b.flags & BACKEND_ACTIVE != 0))
        .count();
    assert_eq!(active, 0, "backend slots left taken");
    // The one service id is free again.
    dataplane
        .set_service(&spec(10, &[(1, 1)]))
        .expect("another service");
}
