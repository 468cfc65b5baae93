//! Each CPU's cache of flow entries in front of the flow table (see
//! `lb-ebpf/src/flows.rs`), through the real program: what a copy counts
//! reaches the table within the refresh interval or when another flow takes
//! its slot, readers add what it holds until then, and a copy whose backend
//! left is replaced at once.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use lb::{
    dataplane::{Dataplane, DataplaneConfig},
    model::Protocol,
};
use lb_common::{Flow, FlowKey, PROTO_TCP, addr_of, counters, hash::flow_cache_slot};
use lb_tests::{
    packets,
    specs::{node, service},
    xdp_bed::{self, CLIENT, XDP_REDIRECT, XdpBed, node_ip},
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// Longer than the data path's `FLOW_REFRESH_NS`.
const REFRESH: Duration = Duration::from_millis(1100);
/// A few of the data path's clock ticks (jiffies: 1 to 10 ms).
const TICKS: Duration = Duration::from_millis(30);

/// Runs `test` in a namespace of its own on one CPU (the cache is per CPU),
/// with a data path loaded there.
fn on_one_cpu(test: fn(&XdpBed, Dataplane)) {
    with_flow_limit(0, test);
}

/// [`on_one_cpu`], with a data path that records at most `new_flow_limit`
/// new flows a second.
fn with_flow_limit(new_flow_limit: u32, test: fn(&XdpBed, Dataplane)) {
    let (ns, bed) = XdpBed::new("lbcache").expect("netns");
    ns.enter(move || {
        xdp_bed::pin_to_cpu(0).expect("pin to one CPU");
        let dataplane = bed
            .load(DataplaneConfig {
                ring_size: 1021,
                max_services: 4,
                pin_dir: None,
                new_flow_limit,
                ..Default::default()
            })
            .expect("load");
        test(&bed, dataplane);
    })
    .expect("enter namespace");
}

fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(CLIENT, port)
}

fn key(client: SocketAddrV4) -> FlowKey {
    FlowKey::new(
        addr_of((*client.ip()).into()),
        addr_of(VIP.into()),
        client.port().to_be(),
        80u16.to_be(),
        PROTO_TCP,
    )
}

/// Sends the SYN of `client`'s connection, or with `acks` > 0 that many of
/// its established packets; returns the node of the last.
fn send(dataplane: &Dataplane, bed: &XdpBed, client: SocketAddrV4, acks: usize) -> IpAddr {
    let vip = SocketAddrV4::new(VIP, 80);
    let packet = if acks == 0 {
        packets::tcp_syn(client, vip)
    } else {
        packets::tcp_ack(client, vip, b"x")
    };
    let program = dataplane.program().expect("program");
    let mut node = None;
    for _ in 0..acks.max(1) {
        let (action, output) = xdp_bed::run(program, &packet, bed.client_if).expect("test run");
        assert_eq!(action, XDP_REDIRECT);
        let (tuple, _) = packets::owned_tuple(&output).expect("a TCP packet");
        node = Some(tuple.dst.ip());
    }
    node.expect("a packet was sent")
}

fn entry(dataplane: &Dataplane, client: SocketAddrV4) -> Flow {
    dataplane
        .maps()
        .flows
        .get(&key(client))
        .expect("FLOWS4")
        .expect("the flow's entry")
}

/// The entry of `client`'s flow as readers see it, with what the caches
/// hold added.
fn as_read(dataplane: &Dataplane, client: SocketAddrV4) -> Flow {
    let maps = dataplane.maps();
    let mut flows = maps.flows.entries().expect("FLOWS4");
    let caches = maps.flow_caches.as_ref().expect("the caches");
    caches.add_to(&mut flows).expect("the caches' counts");
    flows
        .into_iter()
        .find(|(k, _)| *k == key(client))
        .map(|(_, flow)| flow)
        .expect("the flow")
}

/// A flow's packets are counted in its entry at most a refresh interval
/// late, and none is lost when another flow takes the flow's cache slot.
#[test]
fn a_flows_packets_reach_its_entry_within_the_refresh_interval() {
    on_one_cpu(|bed, mut dataplane| {
        dataplane
            .set_service(&service(VIP, 80, Protocol::Tcp, vec![node(1, 31000)]))
            .expect("set_service");
        let first = client(40000);
        let sharer = (40001..u16::MAX)
            .map(client)
            .find(|c| flow_cache_slot(&key(*c)) == flow_cache_slot(&key(first)))
            .expect("a client port whose flow shares the first's cache slot");

        send(&dataplane, bed, first, 0);
        send(&dataplane, bed, first, 5);
        // The SYN and the first packet after it are in the entry; the
        // copy made then served the other four.
        let cached = entry(&dataplane, first);
        assert_eq!(cached.packets, 2, "served from this CPU's copy: {cached:?}");
        assert_eq!(
            as_read(&dataplane, first).packets,
            6,
            "readers add what the copy holds"
        );

        send(&dataplane, bed, sharer, 0);
        send(&dataplane, bed, sharer, 1);
        assert_eq!(
            entry(&dataplane, first).packets,
            6,
            "the copy gave its four back when the sharer took the slot"
        );

        send(&dataplane, bed, first, 4);
        assert_eq!(
            entry(&dataplane, first).packets,
            7,
            "one counted, three cached"
        );
        std::thread::sleep(REFRESH);
        send(&dataplane, bed, first, 1);
        let refreshed = entry(&dataplane, first);
        assert_eq!(
            refreshed.packets, 11,
            "every packet counted after a refresh"
        );
        assert!(
            refreshed.last_seen_ns >= cached.last_seen_ns + 1_000_000_000,
            "last seen {} ns, {} ns before the refresh",
            refreshed.last_seen_ns,
            cached.last_seen_ns
        );
    });
}

/// A cached flow whose backend leaves goes to the Maglev choice among the
/// others at its next packet, and stays there: the re-hashed entry replaces
/// the copy, not only the entry.
#[test]
fn a_cached_flow_whose_backend_leaves_moves_once() {
    on_one_cpu(|bed, mut dataplane| {
        let mut spec = service(VIP, 80, Protocol::Tcp, vec![node(1, 31000), node(2, 31000)]);
        dataplane.set_service(&spec).expect("set_service");
        let flow = client(40000);
        send(&dataplane, bed, flow, 0);
        let pinned = send(&dataplane, bed, flow, 2);
        spec.backends.retain(|b| b.ip != pinned);
        dataplane.set_service(&spec).expect("update");
        let survivor = if pinned == node_ip(1) {
            node_ip(2)
        } else {
            node_ip(1)
        };
        let survivor = IpAddr::from(survivor);
        let rehashed = || {
            dataplane.maps().global_counters().expect("counters")[counters::FLOW_REHASHED as usize]
        };
        let before = rehashed();
        assert_eq!(send(&dataplane, bed, flow, 3), survivor);
        assert_eq!(
            rehashed() - before,
            1,
            "re-hashed once, then served as pinned"
        );
    });
}

/// A copy refreshed from an entry whose backend left is not trusted as
/// checked: when the flow budget leaves the re-hashed flow unrecorded, so
/// that the table keeps the stale entry, the flow's later packets still
/// stay off the backend that left.
#[test]
fn a_copy_refreshed_from_a_stale_entry_is_not_trusted() {
    with_flow_limit(1, |bed, mut dataplane| {
        let mut spec = service(VIP, 80, Protocol::Tcp, vec![node(1, 31000), node(2, 31000)]);
        dataplane.set_service(&spec).expect("set_service");
        let flow = client(40000);
        send(&dataplane, bed, flow, 0);
        let pinned = send(&dataplane, bed, flow, 1);
        // The copy is due for a refresh, and the budget's window is over.
        std::thread::sleep(REFRESH);
        spec.backends.retain(|b| b.ip != pinned);
        dataplane.set_service(&spec).expect("update");
        // Past the clock tick of the update: a copy dated in that tick is
        // checked again anyway.
        std::thread::sleep(TICKS);
        // Spends this window's budget.
        send(&dataplane, bed, client(40001), 0);
        let untracked = || {
            dataplane.maps().global_counters().expect("counters")
                [counters::NEW_FLOWS_UNTRACKED as usize]
        };
        let before = untracked();
        let survivor = IpAddr::from(if pinned == node_ip(1) {
            node_ip(2)
        } else {
            node_ip(1)
        });
        assert_eq!(send(&dataplane, bed, flow, 1), survivor, "re-hashed");
        assert_eq!(untracked() - before, 1, "and not recorded");
        assert_eq!(
            send(&dataplane, bed, flow, 2),
            survivor,
            "later packets stay off the backend that left"
        );
    });
}
