//! The per-family maps of layout v4: each family's flows in its own table
//! under the key `lb_common` defines (16 bytes for IPv4, 40 for IPv6), read
//! by the real program through BPF_PROG_TEST_RUN; and pinned state of layout
//! v3, where one map held both families, upgraded in place by the agent's
//! data path, keeping services, counters and flows; and maps pinned by
//! earlier agents of this layout, taken over as they are.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, DevMapHash, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use lb::{
    catalog::Catalog,
    dataplane::{Dataplane, DataplaneConfig, DataplaneError, service_key},
    maps::{FLOWS, FORMER_TX_PORTS, Maps, MapsError, SERVICES},
    model::Protocol,
    pins::PinsError,
};
use lb_common::{
    Addr, Backend, ByFamily as _, Flow, FlowKey, FlowKey4, MAP_EGRESS_PORTS, MAP_EGRESS_SLOTS,
    PROTO_TCP, ServiceInfo, ServiceKey, Traffic, addr_of,
};
use lb_tests::{
    packets,
    pin_root::{
        BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_DEVMAP_HASH, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH,
        BPF_MAP_TYPE_PERCPU_ARRAY, PinRoot, pin_old_map,
    },
    specs::{node, node6, service},
    xdp_bed::{self, CLIENT, CLIENT6, XDP_REDIRECT, XdpBed, node_ip, node_ip6, raw_map},
};

const VIP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 20));
const VIP6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::new(
    0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x20,
));
const RING_SIZE: u32 = 1021;
/// `BPF_F_NO_COMMON_LRU`: per-CPU LRU lists, as v3's flow table had.
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

/// One family's case: its VIP, two backends (nodes 1 and 2), and a client.
struct Family {
    vip: IpAddr,
    backends: [IpAddr; 2],
    client: SocketAddr,
}

fn families() -> [Family; 2] {
    [
        Family {
            vip: VIP,
            backends: [node_ip(1).into(), node_ip(2).into()],
            client: SocketAddr::new(CLIENT.into(), 40000),
        },
        Family {
            vip: VIP6,
            backends: [node_ip6(1).into(), node_ip6(2).into()],
            client: SocketAddr::new(CLIENT6.into(), 40000),
        },
    ]
}

impl Family {
    fn spec(&self) -> lb::model::ServiceSpec {
        let backends = if self.vip.is_ipv4() {
            vec![node(1, 31000), node(2, 31000)]
        } else {
            vec![node6(1, 31000), node6(2, 31000)]
        };
        service(self.vip, 80, Protocol::Tcp, backends)
    }

    fn vip_port(&self) -> SocketAddr {
        SocketAddr::new(self.vip, 80)
    }

    fn flow_key(&self) -> FlowKey {
        FlowKey::new(
            addr_of(self.client.ip()),
            addr_of(self.vip),
            self.client.port().to_be(),
            80u16.to_be(),
            PROTO_TCP,
        )
    }
}

fn config(pin_dir: Option<PathBuf>, ring_size: u32) -> DataplaneConfig {
    DataplaneConfig {
        ring_size,
        max_services: 4,
        pin_dir,
        new_flow_limit: 0,
        ..Default::default()
    }
}

/// Sends `input` from the clients' side; returns the address it was sent to.
fn forwarded_to(dataplane: &Dataplane, bed: &XdpBed, input: &[u8]) -> IpAddr {
    let program = dataplane.program().expect("program");
    let (action, output) = xdp_bed::run(program, input, bed.client_if).expect("test run");
    assert_eq!(action, XDP_REDIRECT);
    let (tuple, _) = packets::owned_tuple(&output).expect("a TCP packet");
    tuple.dst.ip()
}

/// Repins a flow to the backend the Maglev ring did not choose, so that
/// where its next packet goes shows which entry the data path read.
fn repin_elsewhere(dataplane: &Dataplane, family: &Family, flow: &mut Flow) -> IpAddr {
    let service = dataplane
        .service(&family.spec().frontend)
        .expect("programmed");
    let other = service
        .backends
        .iter()
        .find(|backend| addr_of(backend.spec.ip) != flow.backend_ip)
        .expect("a second backend");
    flow.backend_id = other.id as u16;
    flow.backend_generation = dataplane
        .maps()
        .backends
        .get(&other.id, 0)
        .expect("slot")
        .generation;
    flow.backend_ip = addr_of(other.spec.ip);
    flow.backend_port = other.spec.port.to_be();
    other.spec.ip
}

/// Repins the flow under `key` in `table`, which must hold it on `chosen`,
/// elsewhere (see `repin_elsewhere`).
fn repin_in<K: aya::Pod>(
    table: &mut HashMap<MapData, K, Flow>,
    key: &K,
    chosen: IpAddr,
    dataplane: &Dataplane,
    family: &Family,
) -> IpAddr {
    let mut flow = table.get(key, 0).expect("the flow, in its family's table");
    assert_eq!(flow.backend_ip, addr_of(chosen));
    let moved_to = repin_elsewhere(dataplane, family, &mut flow);
    table.insert(key, flow, 0).expect("repin");
    moved_to
}

#[test]
fn each_family_keeps_its_flows_in_its_own_table_by_its_compact_key() {
    let (ns, bed) = XdpBed::new("lbfam").expect("netns");
    ns.enter(move || family_tables(&bed)).expect("enter");
}

fn family_tables(bed: &XdpBed) {
    let mut dataplane = bed.load(config(None, RING_SIZE)).expect("load");
    for family in families() {
        dataplane.set_service(&family.spec()).expect("set_service");
        let chosen = forwarded_to(
            &dataplane,
            bed,
            &packets::tcp_syn(family.client, family.vip_port()),
        );
        assert!(family.backends.contains(&chosen));
        let key = family.flow_key();
        let [flows4, flows6] = FLOWS.map(|name| raw_map(&dataplane, name));
        let mut flows4: HashMap<_, FlowKey4, Flow> = flows4.try_into().expect("FLOWS4");
        let mut flows6: HashMap<_, FlowKey, Flow> = flows6.try_into().expect("FLOWS6");
        let moved_to = if family.vip.is_ipv4() {
            assert_eq!(flows6.keys().count(), 0, "an IPv4 flow in FLOWS6");
            // The data path writes its key; userspace derives it (`to_v4`).
            let key4 = key.to_v4().expect("an IPv4 flow");
            repin_in(&mut flows4, &key4, chosen, &dataplane, &family)
        } else {
            assert_eq!(flows4.keys().count(), 1, "an IPv6 flow in FLOWS4");
            repin_in(&mut flows6, &key, chosen, &dataplane, &family)
        };
        let ack = packets::tcp_ack(family.client, family.vip_port(), b"x");
        assert_eq!(
            forwarded_to(&dataplane, bed, &ack),
            moved_to,
            "{}: the next packet follows the entry under its key",
            family.vip
        );
    }
}

/// Flow tables many batches long (a listing and a metrics scrape read them
/// a batch of entries at a time) are read whole: every flow of each family
/// once, each with its own value.
#[test]
fn flow_tables_larger_than_a_batch_are_read_whole() {
    let (ns, bed) = XdpBed::new("lbbat").expect("netns");
    ns.enter(move || read_whole(&bed)).expect("enter");
}

fn read_whole(bed: &XdpBed) {
    const V4_FLOWS: u16 = 10_000;
    const V6_FLOWS: u16 = 5_000;
    let dataplane = bed.load(config(None, RING_SIZE)).expect("load");
    let [flows4, flows6] = FLOWS.map(|name| raw_map(&dataplane, name));
    let mut flows4: HashMap<_, FlowKey4, Flow> = flows4.try_into().expect("FLOWS4");
    let mut flows6: HashMap<_, FlowKey, Flow> = flows6.try_into().expect("FLOWS6");
    let key = |client: IpAddr, vip: IpAddr, port: u16| {
        FlowKey::new(
            addr_of(client),
            addr_of(vip),
            port.to_be(),
            80u16.to_be(),
            PROTO_TCP,
        )
    };
    let flow = |port: u16| Flow {
        packets: u64::from(port),
        ..Flow::default()
    };
    for port in 0..V4_FLOWS {
        let key4 = key(IpAddr::V4(CLIENT), VIP, port).to_v4().expect("IPv4");
        flows4.insert(key4, flow(port), 0).expect("insert");
    }
    for port in 0..V6_FLOWS {
        flows6
            .insert(key(IpAddr::V6(CLIENT6), VIP6, port), flow(port), 0)
            .expect("insert");
    }
    let entries = dataplane.maps().flows.entries().expect("entries");
    let mut read: BTreeMap<(Addr, u16), u64> = BTreeMap::new();
    for (key, flow) in entries {
        let port = u16::from_be(key.src_port);
        assert_eq!(flow.packets, u64::from(port), "the value of {key:?}");
        assert!(
            read.insert((key.src_ip, port), flow.packets).is_none(),
            "{key:?} twice"
        );
    }
    let per_client = |client: IpAddr| read.keys().filter(|(ip, _)| *ip == addr_of(client)).count();
    assert_eq!(per_client(IpAddr::V4(CLIENT)), usize::from(V4_FLOWS));
    assert_eq!(per_client(IpAddr::V6(CLIENT6)), usize::from(V6_FLOWS));
}

#[test]
fn pinned_state_of_layout_v3_is_upgraded_in_place_keeping_services_and_flows() {
    let (ns, bed) = XdpBed::new("lbupg").expect("netns");
    ns.enter(move || upgrade(&bed)).expect("enter");
}

fn upgrade(bed: &XdpBed) {
    let root = PinRoot::new("upgrade-test");
    let families = families();
    let moved_to = write_v3_state(bed, &root, &families);
    let v3_pins = pin_names(&root.dir(3));

    // Readers refuse state the agent has not upgraded yet, and say so.
    let refused = Maps::open_pinned(root.path())
        .err()
        .expect("v3 state refused");
    assert!(
        matches!(refused, MapsError::Layout(PinsError::NotUpgradedYet { .. })),
        "{refused}"
    );
    // An agent with other settings leaves the old state as it was.
    let mismatch = bed.load(config(Some(root.path().clone()), 251)).err();
    assert!(
        matches!(mismatch, Some(DataplaneError::ConfigMismatch { .. })),
        "{mismatch:?}"
    );
    assert_eq!(pin_names(&root.dir(3)), v3_pins, "v3 state was touched");
    assert!(!root.dir(4).exists(), "a v4 directory was left behind");

    let dataplane = bed
        .load(config(Some(root.path().clone()), RING_SIZE))
        .expect("upgrade");
    assert!(!root.dir(3).exists(), "the v3 state stayed");
    assert!(dataplane.inherited_state());
    for (family, moved_to) in families.iter().zip(moved_to) {
        let frontend = family.spec().frontend;
        let service = dataplane.service(&frontend).expect("service recovered");
        assert_eq!(service.backends.len(), 2, "{frontend}: backends recovered");
        let traffic = dataplane
            .service_traffic(&frontend)
            .expect("stats")
            .expect("service");
        assert_eq!(traffic.packets, 1, "{frontend}: counters kept");
        let ack = packets::tcp_ack(family.client, family.vip_port(), b"x");
        assert_eq!(
            forwarded_to(&dataplane, bed, &ack),
            moved_to,
            "{frontend}: the flow kept its backend"
        );
        // The NodePorts' way back is derived from the services, not copied.
        assert_eq!(
            reply_source(&dataplane, bed, family, moved_to),
            family.vip_port(),
            "{frontend}: the reply's source"
        );
    }
    dataplane.remove_pins().expect("remove pins");
}

/// The source a reply from `node`'s NodePort to `family`'s client leaves with.
fn reply_source(dataplane: &Dataplane, bed: &XdpBed, family: &Family, node: IpAddr) -> SocketAddr {
    let reply = packets::tcp_ack(SocketAddr::new(node, 31000), family.client, b"y");
    let program = dataplane.program().expect("program");
    let (action, output) = xdp_bed::run(program, &reply, bed.node_if).expect("test run");
    assert_eq!(action, XDP_REDIRECT, "{}: the reply", family.vip);
    packets::owned_tuple(&output).expect("a TCP packet").0.src
}

/// An agent started with a `--ring-size` other than the pinned state's is
/// refused before it touches anything: the state it found still serves
/// every service with its backends, and its flows stay on their nodes.
#[test]
fn an_agent_with_another_ring_size_leaves_the_pinned_state_alone() {
    let (ns, bed) = XdpBed::new("lbring").expect("netns");
    ns.enter(move || other_ring_size(&bed)).expect("enter");
}

fn other_ring_size(bed: &XdpBed) {
    let root = PinRoot::new("other-ring-size");
    let families = families();
    let (dataplane, nodes) = serve_pinned(bed, &root, &families);
    drop(dataplane);
    let mismatch = bed.load(config(Some(root.path().clone()), 251)).err();
    assert!(
        matches!(mismatch, Some(DataplaneError::ConfigMismatch { .. })),
        "{mismatch:?}"
    );
    let dataplane = bed
        .load(config(Some(root.path().clone()), RING_SIZE))
        .expect("reload");
    for (family, node) in families.iter().zip(nodes) {
        let spec = family.spec();
        let service = dataplane
            .service(&spec.frontend)
            .expect("service recovered");
        assert_eq!(service.backends.len(), spec.backends.len());
        let ack = packets::tcp_ack(family.client, family.vip_port(), b"");
        assert_eq!(forwarded_to(&dataplane, bed, &ack), node);
    }
    dataplane.remove_pins().expect("remove pins");
}

/// A backend a service drains (weight 0) when its agent stops is still the
/// service's after the restart, by the catalog the agent wrote (no ring
/// points at it): the flows pinned to it stay there, and its traffic still
/// counts in the service's.
#[test]
fn a_drained_backend_keeps_its_flows_across_a_restart() {
    let (ns, bed) = XdpBed::new("lbdrained").expect("netns");
    ns.enter(move || drained_across_a_restart(&bed))
        .expect("enter");
}

fn drained_across_a_restart(bed: &XdpBed) {
    let root = PinRoot::new("drained-restart");
    let [family, other] = families();
    let mut spec = family.spec();
    let mut dataplane = bed
        .load(config(Some(root.path().clone()), RING_SIZE))
        .expect("load");
    dataplane.set_service(&spec).expect("set_service");
    dataplane
        .set_service(&other.spec())
        .expect("another service");
    let drained = spec.backends[0].ip;
    let client = (40000..41000)
        .map(|port| SocketAddr::new(family.client.ip(), port))
        .find(|&client| {
            forwarded_to(
                &dataplane,
                bed,
                &packets::tcp_syn(client, family.vip_port()),
            ) == drained
        })
        .expect("a client Maglev sends to node 1");
    let ack = packets::tcp_ack(client, family.vip_port(), b"x");
    spec.backends[0].weight = 0;
    dataplane.set_service(&spec).expect("drain node 1");
    assert_eq!(forwarded_to(&dataplane, bed, &ack), drained);
    let counted = dataplane.service_traffic(&spec.frontend).expect("traffic");
    // A catalog an agent killed mid-sync left: it also gives the first
    // service a slot the other's ring points at.
    let mut catalog = Catalog::of(&dataplane);
    let taken = dataplane
        .service(&other.spec().frontend)
        .expect("other")
        .backends[0]
        .id;
    catalog.slots[0].ids.push(taken);
    let path = Catalog::path(root.path());
    std::fs::create_dir_all(path.parent().expect("a directory")).expect("run dir");
    std::fs::write(&path, serde_json::to_vec(&catalog).expect("json")).expect("catalog");
    drop(dataplane);

    let mut dataplane = bed
        .load(config(Some(root.path().clone()), RING_SIZE))
        .expect("reload");
    let traffic = dataplane.service_traffic(&spec.frontend).expect("traffic");
    assert_eq!(
        traffic, counted,
        "the drained backend's traffic is the service's"
    );
    for spec in [&spec, &other.spec()] {
        let recovered = dataplane.service(&spec.frontend).expect("recovered");
        assert_eq!(recovered.backends.len(), 2, "{}", spec.frontend);
    }
    dataplane.set_service(&spec).expect("the first sync");
    assert_eq!(forwarded_to(&dataplane, bed, &ack), drained);
    Catalog::remove(root.path());
    dataplane.remove_pins().expect("remove pins");
}

/// An interface the earlier agent was attached to and this one does not
/// list is detached, and its egress port goes with it: nothing is
/// redirected to an interface without the program (some drivers drop it).
#[test]
fn an_unlisted_interface_is_detached_and_no_longer_an_egress_port() {
    let (ns, bed) = XdpBed::new("lbunlisted").expect("netns");
    ns.enter(move || unlisted(&bed)).expect("enter");
}

fn unlisted(bed: &XdpBed) {
    let root = PinRoot::new("unlisted");
    let egress_slot = |dataplane: &Dataplane, ifindex: u32| {
        let slots: aya::maps::HashMap<_, u32, u32> =
            aya::maps::HashMap::try_from(raw_map(dataplane, MAP_EGRESS_SLOTS)).expect("slots");
        slots.get(&ifindex, 0).ok()
    };
    let mut dataplane = bed
        .load(config(Some(root.path().clone()), RING_SIZE))
        .expect("load");
    for iface in ["cl0", "nd0"] {
        dataplane.attach(iface).expect("attach");
    }
    assert!(egress_slot(&dataplane, bed.node_if).is_some());
    drop(dataplane);
    let mut dataplane = bed
        .load(config(Some(root.path().clone()), RING_SIZE))
        .expect("reload");
    dataplane.attach("cl0").expect("attach");
    let detached = dataplane
        .detach_unlisted(&["cl0".to_owned()])
        .expect("detach");
    assert_eq!(detached, ["nd0"]);
    assert_eq!(egress_slot(&dataplane, bed.node_if), None);
    assert!(egress_slot(&dataplane, bed.client_if).is_some());
    assert!(!root.dir(4).join("link-nd0").exists());
    dataplane.remove_pins().expect("remove pins");
}

/// Agents of layout v4 before the NodePorts' frontends became arrays
/// derived at every load pinned them as hash maps, `NODE_PORTS4` and
/// `NODE_PORTS6`: a load removes those pins, and replies find their
/// frontends in the arrays it derived from the services it took over.
#[test]
fn formerly_pinned_node_ports_are_unpinned_and_replies_still_served() {
    let (ns, bed) = XdpBed::new("lbnpp").expect("netns");
    ns.enter(move || formerly_pinned(&bed)).expect("enter");
}

fn formerly_pinned(bed: &XdpBed) {
    let root = PinRoot::new("formerly-pinned");
    let families = families();
    let (dataplane, nodes) = serve_pinned(bed, &root, &families);
    drop(dataplane);
    let formerly = ["NODE_PORTS4", "NODE_PORTS6"];
    for name in formerly {
        pin_old_map::<u64, u64>(&root.dir(4), name, BPF_MAP_TYPE_HASH, 16, 0);
    }
    let dataplane = bed
        .load(config(Some(root.path().clone()), RING_SIZE))
        .expect("reload");
    let pins = pin_names(&root.dir(4));
    for name in formerly {
        assert!(
            !pins.iter().any(|pin| pin == name),
            "{name} is still pinned"
        );
    }
    for (family, node) in families.iter().zip(nodes) {
        assert_eq!(
            reply_source(&dataplane, bed, family, node),
            family.vip_port()
        );
    }
    dataplane.remove_pins().expect("remove pins");
}

/// Agents of layout v4 before the egress ports were a devmap array by slot
/// pinned them as a devmap hash by ifindex, `TX_PORTS`: a takeover
/// redirects to those ports from its first packet, with nothing added (the
/// earlier program redirects through `TX_PORTS` until this one is
/// attached), and unpins it once attached.
#[test]
fn egress_ports_an_earlier_agent_pinned_by_ifindex_are_taken_over() {
    let (ns, bed) = XdpBed::new("lbtxp").expect("netns");
    ns.enter(move || former_tx_ports(&bed)).expect("enter");
}

fn former_tx_ports(bed: &XdpBed) {
    let root = PinRoot::new("former-tx-ports");
    let families = families();
    let (dataplane, nodes) = serve_pinned(bed, &root, &families);
    drop(dataplane);
    let dir = root.dir(4);
    for name in [MAP_EGRESS_PORTS, MAP_EGRESS_SLOTS] {
        fs::remove_file(dir.join(name)).expect("unpin");
    }
    let former = FORMER_TX_PORTS;
    let map = pin_old_map::<u32, u64>(&dir, former, BPF_MAP_TYPE_DEVMAP_HASH, 64, 0);
    let mut ports: DevMapHash<_> = map.try_into().expect("a devmap hash");
    for ifindex in [bed.client_if, bed.node_if] {
        ports.insert(ifindex, ifindex, None, 0).expect("a port");
    }
    drop(ports);
    // Loaded as the agent loads it: no port added after the load.
    let mut dataplane =
        Dataplane::load(config(Some(root.path().clone()), RING_SIZE)).expect("takeover");
    assert!(dir.join(former).exists(), "{former} went before the attach");
    for (family, node) in families.iter().zip(nodes) {
        assert_eq!(
            reply_source(&dataplane, bed, family, node),
            family.vip_port(),
            "a reply redirected to the client's side"
        );
        let ack = packets::tcp_ack(family.client, family.vip_port(), b"x");
        assert_eq!(forwarded_to(&dataplane, bed, &ack), node);
    }
    dataplane.retire_former_pins().expect("retire");
    let pins = pin_names(&dir);
    assert!(
        !pins.iter().any(|pin| pin == former),
        "{former} is still pinned"
    );
    dataplane.remove_pins().expect("remove pins");
}

/// Agents of layout v4 before a service's traffic was its backends' pinned
/// `SERVICE_STATS`, in which the data path counted each service whole: a
/// load keeps each service's count (the part its backends do not hold as
/// what its retired backends counted) and removes the pin.
#[test]
fn service_stats_of_an_earlier_agent_are_kept_and_unpinned() {
    let (ns, bed) = XdpBed::new("lbsvs").expect("netns");
    ns.enter(move || former_service_stats(&bed)).expect("enter");
}

fn former_service_stats(bed: &XdpBed) {
    let root = PinRoot::new("service-stats");
    let families = families();
    let (dataplane, _) = serve_pinned(bed, &root, &families);
    let ids: Vec<u32> = families
        .iter()
        .map(|family| {
            dataplane
                .service(&family.spec().frontend)
                .expect("service")
                .id
        })
        .collect();
    drop(dataplane);
    // What the earlier agent counted: the connection's SYN, and before it
    // packets to backends it retired since.
    let whole = Traffic {
        packets: 42,
        bytes: 4200,
    };
    let name = "SERVICE_STATS";
    pin_old_map::<u32, Traffic>(&root.dir(4), name, BPF_MAP_TYPE_PERCPU_ARRAY, 16384, 0);
    let pinned = MapData::from_pin(root.dir(4).join(name)).expect("pinned");
    let mut stats: PerCpuArray<_, Traffic> = Map::from_map_data(pinned)
        .expect("map type")
        .try_into()
        .expect("a per-CPU array");
    let cpus = nr_cpus().expect("CPUs");
    for id in ids {
        // Split over two CPUs, as counted.
        let mut values = vec![Traffic::default(); cpus];
        values[0] = Traffic {
            packets: 40,
            bytes: 4000,
        };
        values[cpus - 1] = values[cpus - 1].plus(Traffic {
            packets: 2,
            bytes: 200,
        });
        let values = PerCpuValues::try_from(values).expect("values");
        stats.set(id, values, 0).expect("set");
    }
    drop(stats);
    let dataplane = bed
        .load(config(Some(root.path().clone()), RING_SIZE))
        .expect("reload");
    assert!(
        !pin_names(&root.dir(4)).iter().any(|pin| pin == name),
        "{name} is still pinned"
    );
    for family in &families {
        let frontend = family.spec().frontend;
        let traffic = || {
            dataplane
                .service_traffic(&frontend)
                .expect("traffic")
                .expect("service")
        };
        assert_eq!(traffic(), whole, "{frontend}: the earlier count kept");
        let ack = packets::tcp_ack(family.client, family.vip_port(), b"x");
        forwarded_to(&dataplane, bed, &ack);
        assert_eq!(
            traffic().packets,
            whole.packets + 1,
            "{frontend}: a packet counted once"
        );
    }
    dataplane.remove_pins().expect("remove pins");
}

/// State an agent of this layout pinned before the flow caches existed is
/// read without them and taken over, the caches then pinned beside it.
#[test]
fn state_pinned_before_the_flow_caches_is_read_and_taken_over() {
    let (ns, bed) = XdpBed::new("lbfcp").expect("netns");
    ns.enter(move || before_the_caches(&bed)).expect("enter");
}

fn before_the_caches(bed: &XdpBed) {
    let root = PinRoot::new("before-caches");
    let families = families();
    let (dataplane, nodes) = serve_pinned(bed, &root, &families);
    drop(dataplane);
    let caches = ["FLOW_CACHE4", "FLOW_CACHE6"];
    for name in caches {
        fs::remove_file(root.dir(4).join(name)).expect("unpin a flow cache");
    }
    let maps = Maps::open_pinned(root.path()).expect("state without the caches");
    assert!(maps.flow_caches.is_none(), "no caches to read");
    assert_eq!(maps.flows.entries().expect("flows").len(), families.len());
    drop(maps);

    let dataplane = bed
        .load(config(Some(root.path().clone()), RING_SIZE))
        .expect("takeover");
    let pins = pin_names(&root.dir(4));
    for name in caches {
        assert!(pins.iter().any(|pin| pin == name), "{name} is not pinned");
    }
    for (family, node) in families.iter().zip(nodes) {
        let ack = packets::tcp_ack(family.client, family.vip_port(), b"x");
        assert_eq!(forwarded_to(&dataplane, bed, &ack), node, "the flow stays");
    }
    assert!(
        Maps::open_pinned(root.path())
            .expect("state")
            .flow_caches
            .is_some()
    );
    dataplane.remove_pins().expect("remove pins");
}

/// A `MAGLEV` an earlier agent pinned without `BPF_F_MMAPABLE` cannot be
/// mapped: it is kept, and the rings are written into it with system calls.
#[test]
fn a_maglev_map_pinned_unmappable_is_kept_and_its_rings_written() {
    let (ns, bed) = XdpBed::new("lbmgl").expect("netns");
    ns.enter(move || unmappable_maglev(&bed)).expect("enter");
}

fn unmappable_maglev(bed: &XdpBed) {
    let root = PinRoot::new("unmappable-maglev");
    let families = families();
    // Two rings per service, as the data path lays them out.
    let entries = config(None, RING_SIZE).max_services * 2 * RING_SIZE;
    fs::create_dir_all(root.dir(4)).expect("state directory");
    pin_old_map::<u32, u32>(&root.dir(4), "MAGLEV", BPF_MAP_TYPE_ARRAY, entries, 0);
    let (dataplane, nodes) = serve_pinned(bed, &root, &families);
    let maglev = MapData::from_pin(root.dir(4).join("MAGLEV")).expect("MAGLEV");
    assert_eq!(
        maglev.info().expect("info").map_flags(),
        0,
        "MAGLEV replaced"
    );
    for (family, node) in families.iter().zip(nodes) {
        let frontend = family.spec().frontend;
        let service = dataplane.service(&frontend).expect("programmed");
        let programmed: BTreeMap<u32, u32> = service
            .backends
            .iter()
            .map(|backend| (backend.id, backend.ring_entries))
            .collect();
        let info = dataplane
            .maps()
            .services
            .get(&service_key(&frontend))
            .expect("lookup")
            .expect("the service's entry");
        let ring = dataplane.maps().ring_entries(&info).expect("ring");
        assert_eq!(ring, programmed, "{frontend}: the ring in the map");
        let chosen = dataplane
            .maps()
            .maglev_choice(&family.flow_key())
            .expect("lookup")
            .expect("a choice");
        assert_eq!(
            addr_of(node),
            chosen.backend.ip,
            "{frontend}: the SYN's node"
        );
    }
    dataplane.remove_pins().expect("remove pins");
}

/// The pins in `dir`, sorted.
fn pin_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("state directory")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into())
        .collect();
    names.sort();
    names
}

/// A data path pinned under `root` serving `families`, after one connection
/// each; returns it and each connection's node.
fn serve_pinned(bed: &XdpBed, root: &PinRoot, families: &[Family]) -> (Dataplane, Vec<IpAddr>) {
    let mut dataplane = bed
        .load(config(Some(root.path().clone()), RING_SIZE))
        .expect("load");
    let mut nodes = Vec::new();
    for family in families {
        dataplane.set_service(&family.spec()).expect("set_service");
        let syn = packets::tcp_syn(family.client, family.vip_port());
        nodes.push(forwarded_to(&dataplane, bed, &syn));
    }
    (dataplane, nodes)
}

/// Leaves under `root` the state an agent of layout v3 would have pinned
/// serving `families` after one connection each, whose flow entry names
/// the backend Maglev did not choose; returns those backends. The maps v4
/// kept are the v4 program's own (their layout is v3's); `SERVICES`,
/// `NODE_PORTS` and `FLOWS` are created as v3 had them, with the same
/// entries under the family-neutral keys.
fn write_v3_state(bed: &XdpBed, root: &PinRoot, families: &[Family]) -> Vec<IpAddr> {
    let (dataplane, _) = serve_pinned(bed, root, families);
    let mut moved_to = Vec::new();
    let maps = dataplane.maps();
    let services = maps.services.entries().expect("services");
    let node_ports: Vec<(ServiceKey, ServiceKey)> = families
        .iter()
        .flat_map(|family| {
            let spec = family.spec();
            let frontend = service_key(&spec.frontend);
            spec.backends.into_iter().map(move |backend| {
                let node_port =
                    ServiceKey::new(addr_of(backend.ip), backend.port.to_be(), PROTO_TCP);
                (node_port, frontend)
            })
        })
        .collect();
    let mut flows = maps.flows.entries().expect("flows");
    for family in families {
        let (_, flow) = flows
            .iter_mut()
            .find(|(key, _)| *key == family.flow_key())
            .expect("the family's flow");
        moved_to.push(repin_elsewhere(&dataplane, family, flow));
    }
    // v3 had no generations and no service in its flows: all zero bytes.
    for (_, flow) in &mut flows {
        flow.backend_generation = 0;
        flow.service = 0;
    }
    let mut backends: Array<_, Backend> =
        Map::from_map_data(MapData::from_pin(root.dir(4).join("BACKENDS")).expect("BACKENDS"))
            .expect("map type")
            .try_into()
            .expect("an array");
    for id in 0..backends.len() {
        let backend = backends.get(&id, 0).expect("slot");
        let generation = 0;
        backends
            .set(
                id,
                Backend {
                    generation,
                    ..backend
                },
                0,
            )
            .expect("slot");
    }
    drop(dataplane);
    fs::rename(root.dir(4), root.dir(3)).expect("v4 state to v3");
    for name in [SERVICES, FLOWS].concat() {
        fs::remove_file(root.dir(3).join(name)).expect("unpin a v4 map");
    }
    let v3 = root.dir(3);
    pin_old_hash::<ServiceKey, ServiceInfo>(
        &v3,
        "SERVICES",
        BPF_MAP_TYPE_HASH,
        16384,
        0,
        &services,
    );
    pin_old_hash::<ServiceKey, ServiceKey>(
        &v3,
        "NODE_PORTS",
        BPF_MAP_TYPE_HASH,
        65536,
        0,
        &node_ports,
    );
    let lru = BPF_F_NO_COMMON_LRU;
    pin_old_hash::<FlowKey, Flow>(&v3, "FLOWS", BPF_MAP_TYPE_LRU_HASH, 4096, lru, &flows);
    moved_to
}

/// [`pin_old_map`] for a hash map, filled with `entries`.
fn pin_old_hash<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &str,
    map_type: u32,
    max_entries: u32,
    flags: u32,
    entries: &[(K, V)],
) {
    let mut map: HashMap<_, K, V> = pin_old_map::<K, V>(dir, name, map_type, max_entries, flags)
        .try_into()
        .expect("a hash map");
    for (key, value) in entries {
        map.insert(key, value, 0).expect("insert");
    }
}
