//! A SYN flood from random source addresses and ports must not push
//! established flows out of the flow table: above the per-CPU new-flow limit
//! the program forwards new flows by the stateless Maglev choice without
//! recording them, and while the flood lasts their replies are reverse-NAT-ed
//! only when they come from the node Maglev picks. Real packets through BPF_PROG_TEST_RUN, after
//! the real verifier, on a deliberately small flow table.

use std::net::{Ipv4Addr, SocketAddrV4};

use lb::{
    dataplane::{Dataplane, DataplaneConfig, MIN_FLOWS},
    model::{Protocol, ServiceSpec},
};
use lb_common::{FlowKey, PROTO_TCP, addr_of, counters};
use lb_tests::{
    packets, specs,
    xdp_bed::{self, XDP_PASS, XDP_REDIRECT, XdpBed, node_ip},
};

const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 10), 80);
const NODE_PORT: u16 = 31000;
/// Ten times the flow table: without a limit, every early flow is evicted.
const FLOOD: u32 = MIN_FLOWS * 10;
const LIMIT: u32 = 100;

fn service() -> ServiceSpec {
    let nodes = (1..=2).map(|i| specs::node(i, NODE_PORT)).collect();
    specs::service(*VIP.ip(), VIP.port(), Protocol::Tcp, nodes)
}

/// A spoofed source: 10.200.x.y with a port, all distinct.
fn spoofed(i: u32) -> SocketAddrV4 {
    let [_, a, b, c] = i.to_be_bytes();
    SocketAddrV4::new(Ipv4Addr::new(10, 200, a, b), 1024 + u16::from(c))
}

fn flow_key(client: SocketAddrV4) -> FlowKey {
    FlowKey::new(
        addr_of((*client.ip()).into()),
        addr_of((*VIP.ip()).into()),
        client.port().to_be(),
        VIP.port().to_be(),
        PROTO_TCP,
    )
}

struct FloodResult {
    established_kept: bool,
    dataplane: Dataplane,
}

/// Opens one connection, floods, and reports whether its flow survived.
fn flood(bed: &XdpBed, new_flow_limit: u32) -> FloodResult {
    let mut dataplane = bed
        .load(DataplaneConfig {
            ring_size: 1021,
            max_services: 4,
            max_flows: MIN_FLOWS,
            new_flow_limit,
            ..Default::default()
        })
        .expect("load");
    dataplane.set_service(&service()).expect("service");
    let program = dataplane.program().expect("program");
    let client = SocketAddrV4::new(xdp_bed::CLIENT, 50000);
    let (action, _) =
        xdp_bed::run(program, &packets::tcp_syn(client, VIP), bed.client_if).expect("run");
    assert_eq!(action, XDP_REDIRECT, "the established connection's SYN");
    assert!(
        dataplane
            .maps()
            .flows
            .get(&flow_key(client))
            .expect("FLOWS4")
            .is_some()
    );
    for i in 0..FLOOD {
        let (action, _) =
            xdp_bed::run(program, &packets::tcp_syn(spoofed(i), VIP), bed.client_if).expect("run");
        // Flooded or not, a SYN to a served VIP is forwarded.
        assert_eq!(action, XDP_REDIRECT, "flood SYN {i}");
    }
    FloodResult {
        established_kept: dataplane
            .maps()
            .flows
            .get(&flow_key(client))
            .expect("FLOWS4")
            .is_some(),
        dataplane,
    }
}

#[test]
fn without_a_limit_a_flood_evicts_established_flows() {
    let (ns, bed) = XdpBed::new("lbflood").expect("netns");
    let result = ns
        .enter(move || flood(&bed, 0).established_kept)
        .expect("enter");
    assert!(
        !result,
        "the control case: an unlimited flood evicts the flow"
    );
}

#[test]
fn above_the_limit_new_flows_are_stateless_and_established_ones_stay() {
    let (ns, bed) = XdpBed::new("lbflood").expect("netns");
    // The spoofed clients are reached through the real one's address.
    ns.ip("route add 10.200.0.0/16 via 10.0.0.2")
        .expect("route");
    ns.enter(move || limited_flood(&bed)).expect("enter");
}

fn limited_flood(bed: &XdpBed) {
    // The budget is per CPU: replies must see the one the flood exhausted.
    xdp_bed::pin_to_cpu(0).expect("pin");
    let FloodResult {
        established_kept,
        dataplane,
    } = flood(bed, LIMIT);
    assert!(established_kept, "the established flow survived the flood");
    let global = dataplane.maps().global_counters().expect("counters");
    let untracked = global[counters::NEW_FLOWS_UNTRACKED as usize];
    let recorded = global[counters::NEW_FLOWS as usize];
    // The window is one second; a slow run may span a few of them.
    assert!(
        untracked >= u64::from(FLOOD) - 10 * u64::from(LIMIT),
        "{untracked} of {FLOOD} flood flows forwarded statelessly"
    );
    assert_eq!(
        recorded + untracked,
        u64::from(FLOOD) + 1,
        "every SYN counted once"
    );

    // Replies of flood flows nobody recorded: reverse-NAT-ed only from the
    // node the SYN went to, passed from the other one.
    let program = dataplane.program().expect("program");
    let mut untracked_replies = 0;
    for i in (0..FLOOD).step_by(97) {
        let client = spoofed(i);
        let (_, dnat) =
            xdp_bed::run(program, &packets::tcp_syn(client, VIP), bed.client_if).expect("run");
        let chosen = Ipv4Addr::new(dnat[30], dnat[31], dnat[32], dnat[33]);
        let tracked = dataplane
            .maps()
            .flows
            .get(&flow_key(client))
            .expect("FLOWS4")
            .is_some();
        for node in [node_ip(1), node_ip(2)] {
            let reply = packets::tcp_ack(SocketAddrV4::new(node, NODE_PORT), client, b"x");
            let (action, output) = xdp_bed::run(program, &reply, bed.node_if).expect("run");
            if node == chosen {
                assert_eq!(action, XDP_REDIRECT, "reply of {client} from its node");
                assert_eq!(output[26..30], VIP.ip().octets(), "source is the VIP");
                packets::verify_checksums(&output).expect("checksums");
                untracked_replies += u64::from(!tracked);
            } else {
                assert_eq!(action, XDP_PASS, "reply of {client} from another node");
                assert_eq!(output, reply, "passed unchanged");
            }
        }
    }
    let global = dataplane.maps().global_counters().expect("counters");
    assert!(untracked_replies > 0);
    assert_eq!(
        global[counters::REPLIES_UNTRACKED as usize],
        untracked_replies
    );
}
