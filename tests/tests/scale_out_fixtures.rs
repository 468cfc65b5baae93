//! BPF_PROG_TEST_RUN fixtures of what several lb hosts on a real segment
//! need from the data path: ARP and Neighbor Solicitations for VIPs answered
//! (exact bytes, built independently in `neighbor_packets`), direct server
//! return, a node's reply translated by a host that never saw its flow, and
//! the same Maglev choice on two hosts whatever order they learnt things in.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
};

use lb::{
    dataplane::{Dataplane, DataplaneConfig, Forwarding},
    model::{BackendSpec, Protocol},
};
use lb_common::{FlowKey, PROTO_TCP, addr_of, counters, ip_of};
use lb_tests::{
    neighbor_packets::{self as nd, NA_OVERRIDE, NA_SOLICITED},
    netns::NetNs,
    packets,
    specs::{backend, node, node6, service},
    xdp_bed::{
        self, CLIENT, CLIENT_MAC, CLIENT6, NODE_DEV, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
        XdpBed, node_ip, node_ip6, node_mac,
    },
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// A VIP whose only node sits behind a gateway (node 1).
const VIP_ROUTED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
/// A VIP whose only node's MAC is not resolved.
const VIP_UNRESOLVED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 12);
/// A VIP announced at layer 2 on no interface (over BGP, say).
const VIP_BGP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 13);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10);
/// A node two hops away: routed through node 1.
const ROUTED_NODE: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 5);
const RING_SIZE: u32 = 1021;

/// Nodes 1 to 3, one service port on each.
fn three_nodes() -> Vec<BackendSpec> {
    (1..=3).map(|i| node(i, 31000)).collect()
}

fn load(bed: &XdpBed, forwarding: Forwarding, answer_neighbors: bool) -> Dataplane {
    let mut dataplane = Dataplane::load(DataplaneConfig {
        ring_size: RING_SIZE,
        max_services: 8,
        pin_dir: None,
        new_flow_limit: 0,
        forwarding,
        ..Default::default()
    })
    .expect("load");
    for (ifindex, mac) in [
        (bed.client_if, bed.client_if_mac),
        (bed.node_if, bed.node_if_mac),
    ] {
        dataplane.add_egress_port(ifindex).expect("egress port");
        // Registered, an interface takes only frames to its own MAC; the
        // forwarding fixtures' frames go to `packets::LB_MAC`, a stand-in.
        if answer_neighbors {
            dataplane.add_iface(ifindex, mac).expect("iface");
        }
    }
    dataplane
}

/// One packet, where it arrives, and what must come out.
struct Fixture {
    description: &'static str,
    input: Vec<u8>,
    ifindex: u32,
    action: u32,
    /// `None`: handed on bit for bit unchanged.
    output: Option<Vec<u8>>,
}

fn check(dataplane: &Dataplane, fixtures: &[Fixture]) {
    let program = dataplane.program().expect("program");
    let failures: Vec<String> = fixtures
        .iter()
        .filter_map(|fixture| {
            let (action, output) =
                xdp_bed::run(program, &fixture.input, fixture.ifindex).expect("test run");
            let expected = fixture.output.as_ref().unwrap_or(&fixture.input);
            (action != fixture.action || &output != expected).then(|| {
                format!(
                    "{}: action {action} (want {}), output {}",
                    fixture.description,
                    fixture.action,
                    if &output == expected { "ok" } else { "differs" }
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "fixtures failed:\n{}",
        failures.join("\n")
    );
}

fn in_bed(name: &str, f: impl FnOnce(&NetNs, XdpBed) + Send + 'static) {
    let (ns, bed) = XdpBed::new(name).expect("netns");
    let ns = std::sync::Arc::new(ns);
    let inner = ns.clone();
    ns.enter(move || f(&inner, bed)).expect("enter namespace");
}

/// An interface whose ifindex lies past `IFACES_BY_INDEX` (an array by
/// ifindex the program reads instead of the `IFACES` hash) is looked up in
/// `IFACES`: its frames are still told apart by MAC, its ARP still answered.
#[test]
fn an_interface_with_a_large_ifindex_is_found_in_the_hash() {
    in_bed("lbbigif", |ns, bed| {
        let ifindex = lb_common::IFACES_BY_INDEX_LEN + 904;
        ns.ip(&format!(
            "link add name big0 index {ifindex} type veth peer name big1"
        ))
        .expect("veth with a large ifindex");
        ns.ip("link set big0 up").expect("up");
        ns.ip("link set big1 up").expect("up");
        assert_eq!(ns.ifindex("big0").expect("ifindex"), ifindex);
        let mac = [0x02, 0, 0, 0, 0xb1, 0x90];
        let mut dataplane = load(&bed, Forwarding::Nat, true);
        dataplane.add_iface(ifindex, mac).expect("iface");
        dataplane
            .set_service(&service(VIP, 80, Protocol::Tcp, vec![node(1, 31000)]))
            .expect("set_service");
        dataplane
            .set_neighbor_answers(&[(VIP.into(), BTreeSet::from([ifindex]))].into())
            .expect("answers");
        let mut other_host = packets::tcp_syn(sock(CLIENT, 43000), sock(VIP, 80));
        other_host[..6].copy_from_slice(&packets::LB_MAC);
        check(
            &dataplane,
            &[
                Fixture {
                    description: "an ARP request for a VIP gets the interface's MAC",
                    input: nd::arp_request(CLIENT_MAC, CLIENT, VIP),
                    ifindex,
                    action: XDP_TX,
                    output: Some(nd::arp_reply(mac, VIP, CLIENT_MAC, CLIENT)),
                },
                Fixture {
                    description: "a frame for another host's MAC passes untouched",
                    input: other_host,
                    ifindex,
                    action: XDP_PASS,
                    output: None,
                },
            ],
        );
        let global = dataplane.maps().global_counters().expect("counters");
        assert_eq!(global[counters::PASS_OTHER_HOST as usize], 1);
    });
}

#[test]
fn arp_and_neighbor_solicitations_for_vips_are_answered() {
    in_bed("lbarp", |_, bed| {
        let dataplane = {
            let mut dataplane = load(&bed, Forwarding::Nat, true);
            for spec in [
                service(VIP, 80, Protocol::Tcp, vec![node(1, 31000)]),
                service(VIP6, 80, Protocol::Tcp, vec![node6(1, 31000)]),
            ] {
                dataplane.set_service(&spec).expect("set_service");
            }
            let both = BTreeSet::from([bed.client_if, bed.node_if]);
            let answers = [VIP.into(), VIP6.into()].map(|vip: IpAddr| (vip, both.clone()));
            dataplane
                .set_neighbor_answers(&answers.into())
                .expect("answers");
            dataplane
        };
        let (mac, asker) = (bed.client_if_mac, CLIENT_MAC);
        let asker6 = CLIENT6;
        // A SYN to the VIP, sent to `dst_mac`.
        let syn_to = |dst_mac: [u8; 6]| {
            let mut frame = packets::tcp_syn(sock(CLIENT, 43000), sock(VIP, 80));
            frame[..6].copy_from_slice(&dst_mac);
            frame
        };
        let fixtures = [
            Fixture {
                description: "an ARP request for a VIP gets the interface's MAC",
                input: nd::arp_request(asker, CLIENT, VIP),
                ifindex: bed.client_if,
                action: XDP_TX,
                output: Some(nd::arp_reply(mac, VIP, asker, CLIENT)),
            },
            Fixture {
                description: "on the other interface, that interface's MAC",
                input: nd::arp_request(asker, CLIENT, VIP),
                ifindex: bed.node_if,
                action: XDP_TX,
                output: Some(nd::arp_reply(bed.node_if_mac, VIP, asker, CLIENT)),
            },
            Fixture {
                description: "an ARP request for another address passes unchanged",
                input: nd::arp_request(asker, CLIENT, node_ip(1)),
                ifindex: bed.client_if,
                action: XDP_PASS,
                output: None,
            },
            Fixture {
                description: "another host's gratuitous ARP for a VIP is not answered",
                input: nd::gratuitous_arp(asker, VIP),
                ifindex: bed.client_if,
                action: XDP_PASS,
                output: None,
            },
            Fixture {
                description: "an ARP request for a VIP unicast to another host's MAC \
                              (promiscuous NIC) is not answered",
                input: {
                    let mut request = nd::arp_request(asker, CLIENT, VIP);
                    request[..6].copy_from_slice(&packets::LB_MAC);
                    request
                },
                ifindex: bed.client_if,
                action: XDP_PASS,
                output: None,
            },
            Fixture {
                description: "a Neighbor Solicitation for an IPv6 VIP gets a solicited advertisement",
                input: nd::neighbor_solicitation(asker, asker6, VIP6),
                ifindex: bed.client_if,
                action: XDP_TX,
                output: Some(nd::neighbor_advertisement(
                    (asker, asker6),
                    (mac, VIP6),
                    VIP6,
                    NA_SOLICITED | NA_OVERRIDE,
                )),
            },
            Fixture {
                description: "a Neighbor Solicitation for another address passes unchanged",
                input: nd::neighbor_solicitation(asker, asker6, node_ip6(1)),
                ifindex: bed.client_if,
                action: XDP_PASS,
                output: None,
            },
            Fixture {
                description: "a multicast Neighbor Solicitation without the asker's MAC passes: \
                              the advertisement would need the option it has no room for",
                input: nd::bare_neighbor_solicitation(asker, asker6, VIP6),
                ifindex: bed.client_if,
                action: XDP_PASS,
                output: None,
            },
            Fixture {
                description: "a Neighbor Solicitation for an IPv4 VIP's mapped address \
                              (::ffff:a.b.c.d) passes: no IPv6 host has it",
                input: nd::neighbor_solicitation(asker, asker6, VIP.to_ipv6_mapped()),
                ifindex: bed.client_if,
                action: XDP_PASS,
                output: None,
            },
            Fixture {
                description: "duplicate address detection (from ::) for a VIP passes",
                input: nd::neighbor_solicitation(asker, Ipv6Addr::UNSPECIFIED, VIP6),
                ifindex: bed.client_if,
                action: XDP_PASS,
                output: None,
            },
            Fixture {
                description: "a frame for another host's MAC (promiscuous NIC) passes untouched",
                input: syn_to(packets::LB_MAC),
                ifindex: bed.client_if,
                action: XDP_PASS,
                output: None,
            },
            Fixture {
                description: "the same frame to this interface's MAC is served",
                input: syn_to(mac),
                ifindex: bed.client_if,
                action: XDP_REDIRECT,
                output: Some(packets::forwarded(&packets::expect_dnat(
                    &syn_to(mac),
                    SocketAddr::V4(sock(node_ip(1), 31000)),
                    bed.node_if_mac,
                    node_mac(1),
                ))),
            },
        ];
        check(&dataplane, &fixtures);
        let global = dataplane.maps().global_counters().expect("counters");
        assert_eq!(global[counters::ARP_REPLY as usize], 2);
        assert_eq!(global[counters::NDP_REPLY as usize], 1);
        assert_eq!(global[counters::PASS_OTHER_HOST as usize], 2);
        let mut dataplane = dataplane;
        // A removed VIP is no longer answered.
        dataplane
            .remove_service(&service(VIP, 80, Protocol::Tcp, vec![]).frontend)
            .expect("remove");
        check(
            &dataplane,
            &[Fixture {
                description: "a removed VIP's ARP passes",
                input: nd::arp_request(asker, CLIENT, VIP),
                ifindex: bed.client_if,
                action: XDP_PASS,
                output: None,
            }],
        );
    });
}

#[test]
fn neighbors_are_answered_only_on_the_vips_interfaces() {
    in_bed("lbl2mask", |_, bed| {
        let mut dataplane = load(&bed, Forwarding::Nat, true);
        for spec in [
            service(VIP, 80, Protocol::Tcp, vec![node(1, 31000)]),
            service(VIP_BGP, 80, Protocol::Tcp, vec![node(1, 31000)]),
            service(VIP6, 80, Protocol::Tcp, vec![node6(1, 31000)]),
        ] {
            dataplane.set_service(&spec).expect("set_service");
        }
        // VIP_BGP is announced some other way: no interface answers for it.
        let answers = BTreeMap::from([
            (IpAddr::from(VIP), BTreeSet::from([bed.client_if])),
            (IpAddr::from(VIP6), BTreeSet::from([bed.node_if])),
        ]);
        dataplane.set_neighbor_answers(&answers).expect("answers");
        // A later update of the Service keeps its VIP's interfaces.
        dataplane
            .set_service(&service(VIP, 80, Protocol::Tcp, three_nodes()))
            .expect("update");
        let (asker, asker6) = (CLIENT_MAC, CLIENT6);
        let arp = |vip, ifindex, answered_with: Option<[u8; 6]>| {
            let input = nd::arp_request(asker, CLIENT, vip);
            match answered_with {
                Some(mac) => (
                    input,
                    ifindex,
                    XDP_TX,
                    Some(nd::arp_reply(mac, vip, asker, CLIENT)),
                ),
                None => (input, ifindex, XDP_PASS, None),
            }
        };
        let ns = |ifindex, answered_with: Option<[u8; 6]>| {
            let input = nd::neighbor_solicitation(asker, asker6, VIP6);
            let flags = NA_SOLICITED | NA_OVERRIDE;
            let answer =
                |mac| nd::neighbor_advertisement((asker, asker6), (mac, VIP6), VIP6, flags);
            match answered_with {
                Some(mac) => (input, ifindex, XDP_TX, Some(answer(mac))),
                None => (input, ifindex, XDP_PASS, None),
            }
        };
        let fixtures = [
            (
                "an ARP request for a VIP on its interface is answered",
                arp(VIP, bed.client_if, Some(bed.client_if_mac)),
            ),
            (
                "on another interface it passes",
                arp(VIP, bed.node_if, None),
            ),
            (
                "a VIP answered nowhere (mask 0) passes",
                arp(VIP_BGP, bed.client_if, None),
            ),
            (
                "a Neighbor Solicitation for a VIP on its interface is answered",
                ns(bed.node_if, Some(bed.node_if_mac)),
            ),
            ("on another interface it passes", ns(bed.client_if, None)),
        ]
        .map(|(description, (input, ifindex, action, output))| Fixture {
            description,
            input,
            ifindex,
            action,
            output,
        });
        check(&dataplane, &fixtures);
        // Answered nowhere any more.
        dataplane
            .set_neighbor_answers(&BTreeMap::new())
            .expect("no answers");
        let (input, ifindex, action, output) = arp(VIP, bed.client_if, None);
        let description = "a VIP no longer announced at layer 2 passes";
        check(
            &dataplane,
            &[Fixture {
                description,
                input,
                ifindex,
                action,
                output,
            }],
        );
    });
}

fn sock(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// `frame` as sent on by direct server return: MACs of the hop, TTL one less,
/// addresses and ports untouched.
fn re_addressed(frame: &[u8], dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    let mut out = packets::forwarded(frame);
    out[..6].copy_from_slice(&dst_mac);
    out[6..12].copy_from_slice(&src_mac);
    out
}

#[test]
fn direct_server_return_only_re_addresses_at_layer_two() {
    in_bed("lbdsr", |ns, bed| {
        ns.ip(&format!(
            "route add 10.2.0.0/24 via {} dev {NODE_DEV}",
            node_ip(1)
        ))
        .expect("route via node 1");
        let mut dataplane = load(&bed, Forwarding::Dsr, false);
        for spec in [
            service(VIP, 80, Protocol::Tcp, vec![node(2, 31000)]),
            service(
                VIP_ROUTED,
                80,
                Protocol::Tcp,
                vec![backend("far", ROUTED_NODE, 31000)],
            ),
            service(VIP_UNRESOLVED, 80, Protocol::Tcp, vec![node(4, 31000)]),
        ] {
            dataplane.set_service(&spec).expect("set_service");
        }
        let client = sock(CLIENT, 40000);
        let syn = packets::tcp_syn(client, sock(VIP, 80));
        let ack = packets::tcp_ack(client, sock(VIP, 80), b"GET /");
        // A router on the client's side could not pass on the node's reply,
        // which left the node from VIP:port.
        let too_big = packets::icmp_too_big(
            Ipv4Addr::new(10, 0, 0, 1),
            VIP,
            &packets::tcp_ack(sock(VIP, 80), client, &[0; 1400]),
            CLIENT_MAC,
            bed.client_if_mac,
        );
        let fixtures = [
            Fixture {
                description: "a SYN to a VIP keeps VIP:port and gets the node's MAC",
                output: Some(re_addressed(&syn, node_mac(2), bed.node_if_mac)),
                input: syn,
                ifindex: bed.client_if,
                action: XDP_REDIRECT,
            },
            Fixture {
                description: "the flow's next packet goes the same way",
                output: Some(re_addressed(&ack, node_mac(2), bed.node_if_mac)),
                input: ack,
                ifindex: bed.client_if,
                action: XDP_REDIRECT,
            },
            Fixture {
                description: "an ICMP error about a node's reply goes to that node as it \
                              came: it answered from the VIP itself",
                output: Some(re_addressed(&too_big, node_mac(2), bed.node_if_mac)),
                input: too_big,
                ifindex: bed.client_if,
                action: XDP_REDIRECT,
            },
            Fixture {
                description: "a node's reply is not lb's to translate: it passes",
                input: packets::tcp_ack(sock(node_ip(2), 31000), client, b"200 OK"),
                ifindex: bed.node_if,
                action: XDP_PASS,
                output: None,
            },
            Fixture {
                description: "a node behind a gateway is dropped, not sent to the gateway",
                input: packets::tcp_syn(client, sock(VIP_ROUTED, 80)),
                ifindex: bed.client_if,
                action: XDP_DROP,
                output: None,
            },
            Fixture {
                description: "a node with no resolved MAC is dropped, not routed by its VIP",
                input: packets::tcp_syn(client, sock(VIP_UNRESOLVED, 80)),
                ifindex: bed.client_if,
                action: XDP_DROP,
                output: None,
            },
        ];
        check(&dataplane, &fixtures);
        let global = dataplane.maps().global_counters().expect("counters");
        assert_eq!(global[counters::FORWARD_REDIRECT as usize], 3);
        assert_eq!(global[counters::ICMP_TRANSLATED as usize], 1);
        assert_eq!(global[counters::DROP_NOT_ADJACENT as usize], 1);
        assert_eq!(global[counters::DROP_NO_NEIGHBOR as usize], 1);
        assert_eq!(global[counters::REPLY_REDIRECT as usize], 0);
    });
}

/// The request a reply from `node` to `client` answers, as the maps key it.
fn request_key(client: SocketAddrV4, vip: SocketAddrV4) -> FlowKey {
    FlowKey::new(
        addr_of((*client.ip()).into()),
        addr_of((*vip.ip()).into()),
        client.port().to_be(),
        vip.port().to_be(),
        PROTO_TCP,
    )
}

/// The node Maglev picks for `client`'s connection to `vip`.
fn maglev_node(dataplane: &Dataplane, client: SocketAddrV4, vip: SocketAddrV4) -> Ipv4Addr {
    let choice = dataplane
        .maps()
        .maglev_choice(&request_key(client, vip))
        .expect("maps")
        .expect("a choice");
    match ip_of(choice.backend.ip) {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => panic!("an IPv6 node {ip} for an IPv4 VIP"),
    }
}

#[test]
fn a_host_that_never_saw_the_flow_translates_the_chosen_nodes_reply() {
    in_bed("lbnat2", |_, bed| {
        let mut dataplane = load(&bed, Forwarding::Nat, false);
        dataplane
            .set_service(&service(VIP, 80, Protocol::Tcp, three_nodes()))
            .expect("set_service");
        let vip = sock(VIP, 80);
        let client = sock(CLIENT, 41000);
        let chosen = maglev_node(&dataplane, client, vip);
        let other = (1..=3)
            .map(node_ip)
            .find(|ip| *ip != chosen)
            .expect("another node");
        let reply = |from: Ipv4Addr| packets::tcp_ack(sock(from, 31000), client, b"200 OK");
        let translated = packets::forwarded(&packets::expect_snat(
            &reply(chosen),
            SocketAddr::V4(vip),
            bed.client_if_mac,
            CLIENT_MAC,
        ));
        // A router on the client's side could not pass on a reply another
        // lb host translated, and the error reaches this one.
        let router = Ipv4Addr::new(10, 0, 0, 1);
        let big_reply = |from: SocketAddrV4| packets::tcp_ack(from, client, &[0; 1400]);
        let chosen_index = (1..=3).find(|i| node_ip(*i) == chosen).expect("a node");
        let too_big = packets::icmp_too_big(
            router,
            VIP,
            &packets::forwarded(&big_reply(vip)),
            CLIENT_MAC,
            bed.client_if_mac,
        );
        let too_big_to_node = packets::forwarded(&packets::icmp_too_big(
            router,
            chosen,
            &packets::forwarded(&big_reply(sock(chosen, 31000))),
            bed.node_if_mac,
            node_mac(chosen_index),
        ));
        let fixtures = [
            Fixture {
                description: "an ICMP error about a reply of a flow this host never saw goes \
                              to the Maglev choice, translated",
                input: too_big,
                ifindex: bed.client_if,
                action: XDP_REDIRECT,
                output: Some(too_big_to_node),
            },
            Fixture {
                description: "the Maglev choice's reply leaves with the VIP",
                input: reply(chosen),
                ifindex: bed.node_if,
                action: XDP_REDIRECT,
                output: Some(translated),
            },
            Fixture {
                description: "another node may not borrow the VIP",
                input: reply(other),
                ifindex: bed.node_if,
                action: XDP_PASS,
                output: None,
            },
            Fixture {
                description: "a reply to this host itself (a health check) passes",
                input: packets::tcp_ack(
                    sock(chosen, 31000),
                    sock(Ipv4Addr::new(10, 1, 0, 1), 41000),
                    b"200 OK",
                ),
                ifindex: bed.node_if,
                action: XDP_PASS,
                output: None,
            },
        ];
        check(&dataplane, &fixtures);
        let global = dataplane.maps().global_counters().expect("counters");
        assert_eq!(global[counters::REPLIES_UNTRACKED as usize], 1);
    });
}

#[test]
fn two_hosts_choose_the_same_node_whatever_order_they_learnt_things_in() {
    in_bed("lbtwin", |_, bed| {
        let nodes = three_nodes();
        let mut first = load(&bed, Forwarding::Nat, false);
        first
            .set_service(&service(VIP, 80, Protocol::Tcp, nodes.clone()))
            .expect("set_service");
        // The second host saw another service first (other ids), and the
        // nodes in another order.
        let mut second = load(&bed, Forwarding::Nat, false);
        second
            .set_service(&service(
                VIP_ROUTED,
                80,
                Protocol::Tcp,
                vec![backend("x", node_ip(9), 1)],
            ))
            .expect("set_service");
        let mut reversed = nodes;
        reversed.reverse();
        second
            .set_service(&service(VIP, 80, Protocol::Tcp, reversed))
            .expect("set_service");
        let vip = sock(VIP, 80);
        let mut seen = std::collections::HashSet::new();
        for port in 20000..21000 {
            let client = sock(CLIENT, port);
            let node = maglev_node(&first, client, vip);
            assert_eq!(
                node,
                maglev_node(&second, client, vip),
                "client port {port}"
            );
            seen.insert(node);
        }
        assert_eq!(seen.len(), 3, "every node gets flows");
    });
}
