//! Table-driven BPF_PROG_TEST_RUN fixtures: real packets through the real
//! program, after the real verifier, checked byte for byte.
//!
//! The program runs inside a namespace whose FIB and neighbour tables are known
//! (permanent neighbours), so MAC rewriting is deterministic.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex},
};

use aya::maps::Array;
use aya_log::EbpfLogger;
use lb::{
    dataplane::{Dataplane, DataplaneConfig},
    model::{Frontend, Protocol},
};
use lb_common::{
    BACKEND_ACTIVE, Backend, FlowKey, KeyFilter, MAP_BACKENDS, MAP_EGRESS_SLOTS, MAX_EGRESS_PORTS,
    ServiceKey, counters, hash::client_hop_slot, ipv4_mapped,
};
use lb_tests::{
    netns::NetNs,
    packets,
    specs::{node, node6, service},
    xdp_bed::{
        self, CLIENT, CLIENT_DEV, CLIENT_MAC, CLIENT6, NODE_DEV, XDP_DROP, XDP_PASS, XDP_REDIRECT,
        XDP_TX, XdpBed, node_ip, node_ip6, node_mac,
    },
};

/// A client on the nodes' segment: its traffic leaves where it came in (one-arm).
const LOCAL_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 50);
const LOCAL_CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x50];
const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const VIP_SPREAD: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const VIP_EMPTY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 12);
const VIP_UNRESOLVED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 13);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10);
/// Small prime ring: fixtures need determinism, not balance.
const RING_SIZE: u32 = 1021;

/// The namespace the program runs in, with a client on the nodes' segment.
/// Nodes 1-3 are resolved; node 4 deliberately not, to exercise the FIB miss
/// path.
fn bench() -> (NetNs, XdpBed) {
    let (ns, bench) = XdpBed::new("lbfix").expect("netns");
    xdp_bed::add_neighbour(&ns, LOCAL_CLIENT, LOCAL_CLIENT_MAC, NODE_DEV)
        .expect("local client neighbour");
    (ns, bench)
}

/// Where a fixture packet arrives.
#[derive(Clone, Copy)]
enum Ingress {
    Clients,
    Nodes,
}

enum Expected {
    /// Handed to the kernel bit for bit unchanged.
    Unchanged,
    /// Rewritten to exactly these bytes.
    Bytes(Vec<u8>),
}

struct Fixture {
    description: &'static str,
    input: Vec<u8>,
    ingress: Ingress,
    action: u32,
    output: Expected,
}

fn sock(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

fn sock6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// Runs one packet through the program; returns (action, output bytes).
fn run(dataplane: &Dataplane, input: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    xdp_bed::run(dataplane.program().expect("program"), input, ifindex).expect("BPF_PROG_TEST_RUN")
}

fn load(bench: &XdpBed) -> Dataplane {
    bench
        .load(DataplaneConfig {
            ring_size: RING_SIZE,
            max_services: 8,
            pin_dir: None,
            answer_ping: true,
            new_flow_limit: 0,
            ..Default::default()
        })
        .expect("load")
}

#[test]
fn packet_fixtures() {
    in_bench(fixtures_in_namespace);
}

fn fixtures_in_namespace(bench: &XdpBed) {
    let mut dataplane = load(bench);
    for spec in [
        service(VIP, 80, Protocol::Tcp, vec![node(1, 31000)]),
        service(VIP, 53, Protocol::Udp, vec![node(1, 31053)]),
        service(VIP_EMPTY, 80, Protocol::Tcp, vec![]),
        service(VIP_UNRESOLVED, 80, Protocol::Tcp, vec![node(4, 31004)]),
        service(VIP6, 80, Protocol::Tcp, vec![node6(1, 31000)]),
        service(VIP6, 53, Protocol::Udp, vec![node6(1, 31053)]),
    ] {
        dataplane.set_service(&spec).expect("set_service");
    }
    let client = sock(CLIENT, 40000);
    let vip_http = sock(VIP, 80);
    let to_node1 = |input: &[u8], port: u16| {
        packets::forwarded(&packets::expect_dnat(
            input,
            sock(node_ip(1), port),
            bench.node_if_mac,
            node_mac(1),
        ))
    };
    let to_node1_v6 = |input: &[u8], port: u16| {
        packets::forwarded(&packets::expect_dnat(
            input,
            sock6(node_ip6(1), port),
            bench.node_if_mac,
            node_mac(1),
        ))
    };
    let client6 = sock6(CLIENT6, 40000);
    let vip6_http = sock6(VIP6, 80);
    let syn6 = packets::tcp_syn(client6, vip6_http);
    let ack6 = packets::tcp_ack(client6, vip6_http, b"GET / HTTP/1.0\r\n\r\n");
    let udp6 = packets::udp(client6, sock6(VIP6, 53), b"query");
    let extensions_syn6 = packets::ipv6_tcp_syn_with_extensions(sock6(CLIENT6, 40001), vip6_http);
    let reply6 = packets::tcp_ack(sock6(node_ip6(1), 31000), client6, b"HTTP/1.0 200 OK\r\n");
    let syn6_to_node = to_node1_v6(&syn6, 31000);
    let reply6_from_vip = packets::forwarded(&packets::expect_snat(
        &reply6,
        vip6_http,
        bench.client_if_mac,
        CLIENT_MAC,
    ));
    let too_big_from_node6 = packets::icmp_too_big(
        node_ip6(1),
        CLIENT6,
        &syn6_to_node,
        node_mac(1),
        bench.node_if_mac,
    );
    let too_big_to_client6 = packets::forwarded(&packets::icmp_too_big(
        VIP6,
        CLIENT6,
        &packets::forwarded(&syn6),
        bench.client_if_mac,
        CLIENT_MAC,
    ));
    let too_big_from_client6 = packets::icmp_too_big(
        CLIENT6,
        VIP6,
        &reply6_from_vip,
        CLIENT_MAC,
        bench.client_if_mac,
    );
    let too_big_to_node6 = packets::forwarded(&packets::icmp_too_big(
        CLIENT6,
        node_ip6(1),
        &packets::forwarded(&reply6),
        bench.node_if_mac,
        node_mac(1),
    ));
    let syn = packets::tcp_syn(client, vip_http);
    let ack = packets::tcp_ack(client, vip_http, b"GET / HTTP/1.0\r\n\r\n");
    // A UDP datagram in two fragments, and the node's reply in two; 24 bytes
    // of UDP in each first fragment.
    let fragmented = sock(CLIENT, 40003);
    let datagram = packets::udp(fragmented, sock(VIP, 53), &[0x5a; 56]);
    let [first, later] = packets::ipv4_fragments(&datagram, 24);
    let [first_to_node, later_to_node] = packets::ipv4_fragments(&to_node1(&datagram, 31053), 24);
    let mut unseen = later.clone();
    unseen[packets::ETH_LEN + 4] ^= 0xff; // another identification
    packets::fix_checksums(&mut unseen);
    // A TCP segment in fragments (no flow yet: its first fragment pins
    // one).
    let segment = packets::tcp_ack(sock(CLIENT, 40004), vip_http, &[0x3c; 48]);
    let [segment_first, segment_later] = packets::ipv4_fragments(&segment, 24);
    let [segment_first_out, segment_later_out] =
        packets::ipv4_fragments(&to_node1(&segment, 31000), 24);
    let reply_datagram = packets::udp(sock(node_ip(1), 31053), fragmented, &[0xa5; 56]);
    let [reply_first, reply_later] = packets::ipv4_fragments(&reply_datagram, 24);
    let [reply_first_from_vip, reply_later_from_vip] = packets::ipv4_fragments(
        &packets::forwarded(&packets::expect_snat(
            &reply_datagram,
            sock(VIP, 53),
            bench.client_if_mac,
            CLIENT_MAC,
        )),
        24,
    );
    let options_syn = packets::tcp_syn_with_ip_options(sock(CLIENT, 40001), vip_http);
    let udp = packets::udp(client, sock(VIP, 53), b"query");
    let udp_no_csum = packets::udp_no_checksum(sock(CLIENT, 40002), sock(VIP, 53), b"query");
    let reply = packets::tcp_ack(sock(node_ip(1), 31000), client, b"HTTP/1.0 200 OK\r\n");
    let local_syn = packets::tcp_syn(sock(LOCAL_CLIENT, 40000), vip_http);
    let unresolved_syn = packets::tcp_syn(client, sock(VIP_UNRESOLVED, 80));
    // ICMP errors quote packets as they were on the wire on the far side.
    let syn_to_node = to_node1(&syn, 31000);
    let reply_from_vip = packets::forwarded(&packets::expect_snat(
        &reply,
        vip_http,
        bench.client_if_mac,
        CLIENT_MAC,
    ));
    let frag_needed_from_node = packets::icmp_too_big(
        node_ip(1),
        CLIENT,
        &syn_to_node,
        node_mac(1),
        bench.node_if_mac,
    );
    // Quotes keep the TTL the quoted packet had where it was quoted.
    let frag_needed_to_client = packets::forwarded(&packets::icmp_too_big(
        VIP,
        CLIENT,
        &packets::forwarded(&syn),
        bench.client_if_mac,
        CLIENT_MAC,
    ));
    let frag_needed_from_client = packets::icmp_too_big(
        CLIENT,
        VIP,
        &reply_from_vip,
        CLIENT_MAC,
        bench.client_if_mac,
    );
    let frag_needed_to_node = packets::forwarded(&packets::icmp_too_big(
        CLIENT,
        node_ip(1),
        &packets::forwarded(&reply),
        bench.node_if_mac,
        node_mac(1),
    ));
    // RFC 792's least quote (the IP header and 8 bytes: no TCP checksum),
    // in a frame with bytes after the IP packet (Ethernet padding).
    let short_quote = |frame: &[u8]| frame[..packets::ETH_LEN + 28].to_vec();
    let trailer = [0xab; 12];
    let with_trailer = |frame: Vec<u8>| [frame, trailer.to_vec()].concat();
    let short_frag_needed_from_node = with_trailer(packets::icmp_too_big(
        node_ip(1),
        CLIENT,
        &short_quote(&syn_to_node),
        node_mac(1),
        bench.node_if_mac,
    ));
    let short_frag_needed_to_client = with_trailer(packets::forwarded(&packets::icmp_too_big(
        VIP,
        CLIENT,
        &short_quote(&packets::forwarded(&syn)),
        bench.client_if_mac,
        CLIENT_MAC,
    )));
    // A quote of the IP header alone, padded with what its ports were.
    let ports_only_in_padding = [
        packets::icmp_too_big(
            node_ip(1),
            CLIENT,
            &syn_to_node[..packets::ETH_LEN + 20],
            node_mac(1),
            bench.node_if_mac,
        ),
        syn_to_node[packets::ETH_LEN + 20..packets::ETH_LEN + 32].to_vec(),
    ]
    .concat();
    // The IPv6 twin, the quote cut after the source port.
    let ports_only_in_padding6 = [
        packets::icmp_too_big(
            node_ip6(1),
            CLIENT6,
            &syn6_to_node[..packets::ETH_LEN + 42],
            node_mac(1),
            bench.node_if_mac,
        ),
        syn6_to_node[packets::ETH_LEN + 42..packets::ETH_LEN + 44].to_vec(),
    ]
    .concat();
    let fixtures = vec![
        Fixture {
            description: "TCP SYN to a VIP is DNAT-ed and redirected to the node side",
            output: Expected::Bytes(to_node1(&syn, 31000)),
            input: syn,
            ingress: Ingress::Clients,
            action: XDP_REDIRECT,
        },
        Fixture {
            description: "the next packet of the flow goes to the same backend",
            output: Expected::Bytes(to_node1(&ack, 31000)),
            input: ack,
            ingress: Ingress::Clients,
            action: XDP_REDIRECT,
        },
        Fixture {
            description: "the backend's reply is reverse-NAT-ed to come from the VIP",
            output: Expected::Bytes(reply_from_vip.clone()),
            input: reply,
            ingress: Ingress::Nodes,
            action: XDP_REDIRECT,
        },
        Fixture {
            description: "ICMP frag-needed from the node about a request: told to the client as the VIP",
            input: frag_needed_from_node,
            ingress: Ingress::Nodes,
            action: XDP_REDIRECT,
            output: Expected::Bytes(frag_needed_to_client),
        },
        Fixture {
            description: "ICMP frag-needed quoting 8 bytes past the IP header, in a padded \
                          frame: translated, the padding left as it came",
            input: short_frag_needed_from_node,
            ingress: Ingress::Nodes,
            action: XDP_REDIRECT,
            output: Expected::Bytes(short_frag_needed_to_client),
        },
        Fixture {
            description: "ICMP frag-needed whose quote ends before the ports (they are in the \
                          padding after the packet): passes",
            input: ports_only_in_padding,
            ingress: Ingress::Nodes,
            action: XDP_PASS,
            output: Expected::Unchanged,
        },
        Fixture {
            description: "ICMP frag-needed from the client side about a reply: told to the node",
            input: frag_needed_from_client,
            ingress: Ingress::Clients,
            action: XDP_REDIRECT,
            output: Expected::Bytes(frag_needed_to_node),
        },
        Fixture {
            description: "ICMP echo to a VIP is answered",
            input: packets::icmp_echo_request(CLIENT, VIP),
            ingress: Ingress::Clients,
            action: XDP_TX,
            output: Expected::Bytes(packets::icmp_echo_reply(CLIENT, VIP)),
        },
        Fixture {
            description: "ICMP echo to a VIP with TTL 1 (traceroute's last probe) is answered \
                          with a fresh TTL",
            input: packets::with_ttl(&packets::icmp_echo_request(CLIENT, VIP), 1),
            ingress: Ingress::Clients,
            action: XDP_TX,
            output: Expected::Bytes(packets::icmp_echo_reply(CLIENT, VIP)),
        },
        Fixture {
            description: "ICMP echo to a VIP at the broadcast MAC passes: a reply would come \
                          from it",
            input: {
                let mut request = packets::icmp_echo_request(CLIENT, VIP);
                request[..6].fill(0xff);
                request
            },
            ingress: Ingress::Clients,
            action: XDP_PASS,
            output: Expected::Unchanged,
        },
        Fixture {
            description: "ICMP echo to another address passes",
            input: packets::icmp_echo_request(CLIENT, node_ip(1)),
            ingress: Ingress::Clients,
            action: XDP_PASS,
            output: Expected::Unchanged,
        },
        Fixture {
            description: "an ICMP error about an untracked flow passes",
            input: packets::icmp_too_big(
                node_ip(2),
                CLIENT,
                &packets::tcp_syn(sock(CLIENT, 45555), sock(node_ip(2), 31000)),
                node_mac(2),
                bench.node_if_mac,
            ),
            ingress: Ingress::Nodes,
            action: XDP_PASS,
            output: Expected::Unchanged,
        },
        Fixture {
            description: "a reply from a NodePort no service uses passes unchanged",
            input: packets::tcp_ack(sock(node_ip(2), 31000), sock(CLIENT, 49999), b"x"),
            ingress: Ingress::Nodes,
            action: XDP_PASS,
            output: Expected::Unchanged,
        },
        Fixture {
            description: "TTL 1 to a VIP passes unchanged: the kernel sends Time Exceeded",
            input: packets::with_ttl(&packets::tcp_syn(sock(CLIENT, 41000), vip_http), 1),
            ingress: Ingress::Clients,
            action: XDP_PASS,
            output: Expected::Unchanged,
        },
        Fixture {
            description: "IPv6: TCP SYN to a VIP is DNAT-ed to the node's IPv6 address",
            output: Expected::Bytes(to_node1_v6(&syn6, 31000)),
            input: syn6,
            ingress: Ingress::Clients,
            action: XDP_REDIRECT,
        },
        Fixture {
            description: "IPv6: the next packet of the flow goes to the same backend",
            output: Expected::Bytes(to_node1_v6(&ack6, 31000)),
            input: ack6,
            ingress: Ingress::Clients,
            action: XDP_REDIRECT,
        },
        Fixture {
            description: "IPv6: the backend's reply is reverse-NAT-ed to come from the VIP",
            output: Expected::Bytes(reply6_from_vip),
            input: reply6,
            ingress: Ingress::Nodes,
            action: XDP_REDIRECT,
        },
        Fixture {
            description: "IPv6: packet too big from the node about a request: told to the client as the VIP",
            input: too_big_from_node6,
            ingress: Ingress::Nodes,
            action: XDP_REDIRECT,
            output: Expected::Bytes(too_big_to_client6),
        },
        Fixture {
            description: "IPv6: packet too big from the client side about a reply: told to the node",
            input: too_big_from_client6,
            ingress: Ingress::Clients,
            action: XDP_REDIRECT,
            output: Expected::Bytes(too_big_to_node6),
        },
        Fixture {
            description: "IPv6: ICMPv6 echo to a VIP is answered",
            input: packets::icmp_echo_request(CLIENT6, VIP6),
            ingress: Ingress::Clients,
            action: XDP_TX,
            output: Expected::Bytes(packets::icmp_echo_reply(CLIENT6, VIP6)),
        },
        Fixture {
            description: "IPv6: ICMPv6 echo to a VIP with hop limit 1 is answered with a fresh one",
            input: packets::with_ttl(&packets::icmp_echo_request(CLIENT6, VIP6), 1),
            ingress: Ingress::Clients,
            action: XDP_TX,
            output: Expected::Bytes(packets::icmp_echo_reply(CLIENT6, VIP6)),
        },
        Fixture {
            description: "IPv6: an error whose quote ends before the destination port (which \
                          only padding holds) passes",
            input: ports_only_in_padding6,
            ingress: Ingress::Nodes,
            action: XDP_PASS,
            output: Expected::Unchanged,
        },
        Fixture {
            description: "IPv6: ICMPv6 echo to another address passes",
            input: packets::icmp_echo_request(CLIENT6, node_ip6(1)),
            ingress: Ingress::Clients,
            action: XDP_PASS,
            output: Expected::Unchanged,
        },
        Fixture {
            description: "IPv6: UDP to a VIP is DNAT-ed with a valid checksum",
            output: Expected::Bytes(to_node1_v6(&udp6, 31053)),
            input: udp6,
            ingress: Ingress::Clients,
            action: XDP_REDIRECT,
        },
        Fixture {
            description: "IPv6: hop-by-hop and destination options are walked past",
            output: Expected::Bytes(to_node1_v6(&extensions_syn6, 31000)),
            input: extensions_syn6,
            ingress: Ingress::Clients,
            action: XDP_REDIRECT,
        },
        Fixture {
            description: "IPv6: a fragment to a VIP passes",
            input: packets::ipv6_fragment(sock6(CLIENT6, 40002), vip6_http),
            ingress: Ingress::Clients,
            action: XDP_PASS,
            output: Expected::Unchanged,
        },
        Fixture {
            description: "IPv6: hop limit 1 passes unchanged",
            input: packets::with_ttl(&packets::tcp_syn(sock6(CLIENT6, 41000), vip6_http), 1),
            ingress: Ingress::Clients,
            action: XDP_PASS,
            output: Expected::Unchanged,
        },
        Fixture {
            description: "IPv6: an IPv4-mapped destination never matches an IPv4 VIP",
            input: packets::tcp_syn(client6, sock6(VIP.to_ipv6_mapped(), 80)),
            ingress: Ingress::Clients,
            action: XDP_PASS,
            output: Expected::Unchanged,
        },
        Fixture {
            description: "UDP to a VIP is DNAT-ed with a valid checksum",
            output: Expected::Bytes(to_node1(&udp, 31053)),
            input: udp,
            ingress: Ingress::Clients,
            action: XDP_REDIRECT,
        },
        Fixture {
            description: "UDP without checksum keeps checksum 0",
            output: Expected::Bytes(to_node1(&udp_no_csum, 31053)),
            input: udp_no_csum,
            ingress: Ingress::Clients,
            action: XDP_REDIRECT,
        },
        Fixture {
            description: "IP options are skipped to find the ports",
            output: Expected::Bytes(to_node1(&options_syn, 31000)),
            input: options_syn,
            ingress: Ingress::Clients,
            action: XDP_REDIRECT,
        },
        Fixture {
            description: "one-arm: the node is reached through the ingress interface (XDP_TX)",
            output: Expected::Bytes(to_node1(&local_syn, 31000)),
            input: local_syn,
            ingress: Ingress::Nodes,
            action: XDP_TX,
        },
        Fixture {
            description: "unresolved neighbour: the DNAT-ed packet goes to the kernel",
            output: Expected::Bytes(packets::expect_dnat(
                &unresolved_syn,
                sock(node_ip(4), 31004),
                // Ethernet header untouched: the kernel fills it in.
                packets::CLIENT_MAC,
                packets::LB_MAC,
            )),
            input: unresolved_syn,
            ingress: Ingress::Clients,
            action: XDP_PASS,
        },
        Fixture {
            description: "a service without backends drops",
            input: packets::tcp_syn(client, sock(VIP_EMPTY, 80)),
            ingress: Ingress::Clients,
            action: XDP_DROP,
            output: Expected::Unchanged,
        },
        Fixture {
            description: "a port the VIP does not serve passes",
            input: packets::tcp_syn(client, sock(VIP, 443)),
            ingress: Ingress::Clients,
            action: XDP_PASS,
            output: Expected::Unchanged,
        },
        Fixture {
            description: "a non-VIP destination passes",
            input: packets::tcp_syn(client, sock(node_ip(1), 31000)),
            ingress: Ingress::Clients,
            action: XDP_PASS,
            output: Expected::Unchanged,
        },
        Fixture {
            description: "ARP passes",
            input: packets::arp_request(CLIENT, VIP),
            ingress: Ingress::Clients,
            action: XDP_PASS,
            output: Expected::Unchanged,
        },
        Fixture {
            description: "IPv6 to an address that is not a VIP passes",
            input: packets::ipv6_tcp_syn(),
            ingress: Ingress::Clients,
            action: XDP_PASS,
            output: Expected::Unchanged,
        },
        Fixture {
            description: "a datagram's first fragment is DNAT-ed as the datagram",
            input: first,
            ingress: Ingress::Clients,
            action: XDP_REDIRECT,
            output: Expected::Bytes(first_to_node),
        },
        Fixture {
            description: "its later fragment follows, only its address rewritten",
            input: later,
            ingress: Ingress::Clients,
            action: XDP_REDIRECT,
            output: Expected::Bytes(later_to_node),
        },
        Fixture {
            description: "a later fragment of a datagram not seen passes",
            input: unseen,
            ingress: Ingress::Clients,
            action: XDP_PASS,
            output: Expected::Unchanged,
        },
        Fixture {
            description: "a TCP segment's first fragment is DNAT-ed as the segment",
            input: segment_first,
            ingress: Ingress::Clients,
            action: XDP_REDIRECT,
            output: Expected::Bytes(segment_first_out),
        },
        Fixture {
            description: "the TCP segment's later fragment follows",
            input: segment_later,
            ingress: Ingress::Clients,
            action: XDP_REDIRECT,
            output: Expected::Bytes(segment_later_out),
        },
        Fixture {
            description: "a reply's first fragment is reverse-NAT-ed as the reply",
            input: reply_first,
            ingress: Ingress::Nodes,
            action: XDP_REDIRECT,
            output: Expected::Bytes(reply_first_from_vip),
        },
        Fixture {
            description: "the reply's later fragment follows, only its address rewritten",
            input: reply_later,
            ingress: Ingress::Nodes,
            action: XDP_REDIRECT,
            output: Expected::Bytes(reply_later_from_vip),
        },
    ];
    let mut fixtures = fixtures;
    let syn = packets::tcp_syn(client, vip_http);
    // Shorter than an Ethernet header the kernel refuses the frame itself.
    for len in [14, 20, 33, 34, 40, 53] {
        fixtures.push(Fixture {
            description: "a truncated packet passes",
            input: packets::truncated(&syn, len),
            ingress: Ingress::Clients,
            action: XDP_PASS,
            output: Expected::Unchanged,
        });
    }
    check_fixtures(&dataplane, bench, &fixtures);
    let global = dataplane.maps().global_counters().expect("counters");
    assert_eq!(global[counters::FIB_MISS as usize], 1, "one FIB miss");
    assert_eq!(global[counters::DROP_NO_BACKEND as usize], 1);
    assert_eq!(global[counters::PASS_FRAGMENT as usize], 2, "IPv4 and IPv6");
    assert_eq!(
        global[counters::PASS_TTL_EXPIRED as usize],
        2,
        "IPv4 and IPv6"
    );
    assert_eq!(
        global[counters::REPLY_REDIRECT as usize],
        7,
        "the replies, one ICMP error of each family, the padded one and the reply's fragments"
    );
    assert_eq!(
        global[counters::REPLIES_UNTRACKED as usize],
        0,
        "each reply found the entry of the flow it answers"
    );
    assert_eq!(global[counters::ICMP_TRANSLATED as usize], 5);
    assert_eq!(
        global[counters::ICMP_ECHO_REPLY as usize],
        4,
        "two of each family"
    );
    let outcomes: u64 = counters::OUTCOMES.iter().map(|&c| global[c as usize]).sum();
    assert_eq!(
        outcomes,
        fixtures.len() as u64,
        "every packet has one outcome"
    );
    assert_eq!(global[counters::RX as usize], outcomes, "rx derived");
    let http = dataplane
        .service_traffic(&frontend(VIP, 80))
        .expect("traffic")
        .expect("svc");
    assert_eq!(
        http.packets, 6,
        "SYN, ACK, options SYN, one-arm SYN, the fragmented segment's two"
    );
}

/// Runs each fixture through the program; fails naming every one whose
/// action or output differs, or whose output's checksums are wrong.
fn check_fixtures(dataplane: &Dataplane, bench: &XdpBed, fixtures: &[Fixture]) {
    let mut failures = Vec::new();
    for fixture in fixtures {
        let ifindex = match fixture.ingress {
            Ingress::Clients => bench.client_if,
            Ingress::Nodes => bench.node_if,
        };
        let (action, output) = run(dataplane, &fixture.input, ifindex);
        let expected = match &fixture.output {
            Expected::Unchanged => &fixture.input,
            Expected::Bytes(bytes) => bytes,
        };
        if action != fixture.action || &output != expected {
            failures.push(format!(
                "{} (len {}): action {action} (want {}), output {}",
                fixture.description,
                fixture.input.len(),
                fixture.action,
                if &output == expected { "ok" } else { "differs" }
            ));
        }
        if let (Expected::Bytes(_), true) = (&fixture.output, action != XDP_DROP) {
            packets::verify_checksums(&output)
                .unwrap_or_else(|e| failures.push(format!("{}: {e}", fixture.description)));
        }
    }
    assert!(
        failures.is_empty(),
        "fixtures failed:\n{}",
        failures.join("\n")
    );
}

fn frontend(vip: Ipv4Addr, port: u16) -> Frontend {
    Frontend {
        vip: vip.into(),
        port,
        protocol: Protocol::Tcp,
    }
}

/// The backend the kernel picks for a new flow is the one userspace predicts
/// from the same hash and the same table, and later packets stick to it even
/// when the service gains backends.
#[test]
fn maglev_choice_matches_prediction_and_flows_stick() {
    in_bench(stickiness_in_namespace);
}

fn stickiness_in_namespace(bench: &XdpBed) {
    let mut dataplane = load(bench);
    let mut spec = service(
        VIP_SPREAD,
        80,
        Protocol::Tcp,
        vec![node(1, 31000), node(2, 31000)],
    );
    dataplane.set_service(&spec).expect("set_service");
    let port_of = |output: &[u8]| -> Ipv4Addr {
        Ipv4Addr::new(output[30], output[31], output[32], output[33])
    };
    let predict = |dataplane: &Dataplane, client: SocketAddrV4| -> Ipv4Addr {
        let key = flow_key(client, sock(VIP_SPREAD, 80));
        let choice = dataplane
            .maps()
            .maglev_choice(&key)
            .expect("maps")
            .expect("a backend");
        match lb_common::ip_of(choice.backend.ip) {
            std::net::IpAddr::V4(ip) => ip,
            ip => panic!("{ip}: an IPv4 service has an IPv6 backend"),
        }
    };
    let clients: Vec<SocketAddrV4> = (0..200).map(|i| sock(CLIENT, 20000 + i)).collect();
    let mut first_choice = Vec::new();
    for client in &clients {
        let (action, output) = run(
            &dataplane,
            &packets::tcp_syn(*client, sock(VIP_SPREAD, 80)),
            bench.client_if,
        );
        assert_eq!(action, XDP_REDIRECT);
        let chosen = port_of(&output);
        assert_eq!(
            chosen,
            predict(&dataplane, *client),
            "prediction for {client}"
        );
        first_choice.push(chosen);
    }
    for node in [node_ip(1), node_ip(2)] {
        let n = first_choice.iter().filter(|&&ip| ip == node).count();
        assert!(n > 60, "{node} got only {n} of 200 flows");
    }
    // A third backend: existing flows stay put, new flows may use it.
    spec.backends.push(node(3, 31000));
    dataplane.set_service(&spec).expect("update");
    for (client, before) in clients.iter().zip(&first_choice) {
        let (_, output) = run(
            &dataplane,
            &packets::tcp_ack(*client, sock(VIP_SPREAD, 80), b"x"),
            bench.client_if,
        );
        assert_eq!(port_of(&output), *before, "flow {client} moved");
    }
    let fresh: Vec<Ipv4Addr> = (0..200)
        .map(|i| {
            let (_, output) = run(
                &dataplane,
                &packets::tcp_syn(sock(CLIENT, 30000 + i), sock(VIP_SPREAD, 80)),
                bench.client_if,
            );
            port_of(&output)
        })
        .collect();
    assert!(
        fresh.contains(&node_ip(3)),
        "new flows never reach the new backend"
    );
    // A connection's first packet is not claimed by an entry of its 5-tuple
    // (a closed connection's): it takes today's Maglev choice, and the
    // entry follows it. (One of backend 1's, which the checks below expect
    // to have moved anyway.)
    let moved = clients
        .iter()
        .zip(&first_choice)
        .find(|(client, before)| {
            **before == node_ip(1) && predict(&dataplane, **client) != **before
        })
        .map(|(client, _)| *client)
        .expect("the new backend took some flows");
    let (_, output) = run(
        &dataplane,
        &packets::tcp_syn(moved, sock(VIP_SPREAD, 80)),
        bench.client_if,
    );
    assert_eq!(
        port_of(&output),
        predict(&dataplane, moved),
        "a reused 5-tuple"
    );
    let (_, output) = run(
        &dataplane,
        &packets::tcp_ack(moved, sock(VIP_SPREAD, 80), b"x"),
        bench.client_if,
    );
    assert_eq!(
        port_of(&output),
        predict(&dataplane, moved),
        "its next packet"
    );
    // Removing backend 1: its flows re-hash onto the survivors, others stay.
    // What it counted stays the service's, whose traffic is its backends'.
    let traffic = |dataplane: &Dataplane| {
        dataplane
            .service_traffic(&frontend(VIP_SPREAD, 80))
            .expect("traffic")
            .expect("service")
            .packets
    };
    let counted = traffic(&dataplane);
    spec.backends.retain(|b| b.ip != node_ip(1));
    dataplane.set_service(&spec).expect("update");
    assert_eq!(traffic(&dataplane), counted, "backend 1's count stayed");
    for (client, before) in clients.iter().zip(&first_choice) {
        let (_, output) = run(
            &dataplane,
            &packets::tcp_ack(*client, sock(VIP_SPREAD, 80), b"x"),
            bench.client_if,
        );
        let now = port_of(&output);
        if *before == node_ip(1) {
            assert_ne!(now, node_ip(1), "flow {client} still on a removed backend");
        } else {
            assert_eq!(
                now, *before,
                "flow {client} moved although its backend stayed"
            );
        }
    }
    assert_eq!(
        traffic(&dataplane),
        counted + clients.len() as u64,
        "each packet since counted once"
    );
    let global = dataplane.maps().global_counters().expect("counters");
    assert!(global[counters::FLOW_REHASHED as usize] > 0);
}

/// Runs `test` in a fresh bench's namespace.
fn in_bench(test: fn(&XdpBed)) {
    let (ns, bench) = bench();
    ns.enter(move || test(&bench)).expect("enter namespace");
}

/// Runs `test` in a fresh bench's namespace, with the namespace at hand to
/// change its neighbours while the test runs.
fn in_bench_with_ns(test: fn(&NetNs, &XdpBed)) {
    let (ns, bench) = bench();
    let ns = std::sync::Arc::new(ns);
    let inner = ns.clone();
    ns.enter(move || test(&inner, &bench))
        .expect("enter namespace");
}

/// The next hop of a node is cached for at most the cache's bound: a node
/// whose MAC changes gets packets at the new MAC once that has passed (stale
/// entry refreshed), at once for a packet longer than any the cached lookup
/// approved (its MTU must be checked), and at the old one only until then
/// (a hit: the FIB is not asked).
#[test]
fn a_node_whose_mac_changes_gets_packets_at_its_new_mac_within_the_cache_bound() {
    in_bench_with_ns(next_hop_cache_in_namespace);
}

fn next_hop_cache_in_namespace(ns: &NetNs, bench: &XdpBed) {
    let mut dataplane = load(bench);
    dataplane
        .set_service(&service(VIP, 80, Protocol::Tcp, vec![node(1, 31000)]))
        .expect("set_service");
    let dst_mac = |payload: &[u8]| forwarded_mac(&dataplane, bench, 80, payload);
    assert_eq!(dst_mac(b""), node_mac(1), "first packet: from the FIB");
    let moved = [0x02, 0, 0, 0, 0x0e, 0x01];
    ns.ip(&format!(
        "neigh replace {} lladdr {} dev {NODE_DEV} nud permanent",
        node_ip(1),
        xdp_bed::fmt_mac(moved)
    ))
    .expect("change node 1's MAC");
    assert_eq!(
        dst_mac(b""),
        node_mac(1),
        "within the bound: from the cache"
    );
    assert_eq!(
        dst_mac(&[0; 1000]),
        moved,
        "longer than any approved packet: from the FIB"
    );
    // A fresh start for the length rule, then past the bound.
    ns.ip(&format!(
        "neigh replace {} lladdr {} dev {NODE_DEV} nud permanent",
        node_ip(1),
        xdp_bed::fmt_mac(node_mac(1))
    ))
    .expect("restore node 1's MAC");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(dst_mac(b""), node_mac(1), "past the bound: refreshed");
}

/// The destination MAC of a client's packet to VIP:`port` with `payload`,
/// which the program must forward.
fn forwarded_mac(dataplane: &Dataplane, bench: &XdpBed, port: u16, payload: &[u8]) -> [u8; 6] {
    let (action, output) = run(
        dataplane,
        &packets::tcp_ack(sock(CLIENT, 42000), sock(VIP, port), payload),
        bench.client_if,
    );
    assert_eq!(action, XDP_REDIRECT);
    <[u8; 6]>::try_from(&output[..6]).expect("a MAC")
}

/// A backend's next hop is cached in its slot, and a slot freed by one node
/// and taken by another (the agent reuses the last freed id first) must not
/// send the new node's packets to the old node's MAC.
#[test]
fn a_backend_slot_reused_for_another_node_does_not_keep_the_old_next_hop() {
    in_bench(reused_backend_slot_in_namespace);
}

fn reused_backend_slot_in_namespace(bench: &XdpBed) {
    let mut dataplane = load(bench);
    let dst_mac = |dataplane: &Dataplane, port: u16| forwarded_mac(dataplane, bench, port, b"");
    dataplane
        .set_service(&service(VIP, 80, Protocol::Tcp, vec![node(1, 31000)]))
        .expect("set_service");
    assert_eq!(dst_mac(&dataplane, 80), node_mac(1), "node 1, now cached");
    // Node 2 replaces node 1 (node 1's slot is freed last), then another
    // service's backend on node 2 takes that slot.
    dataplane
        .set_service(&service(VIP, 80, Protocol::Tcp, vec![node(2, 31000)]))
        .expect("replace node 1");
    dataplane
        .set_service(&service(VIP, 81, Protocol::Tcp, vec![node(2, 31001)]))
        .expect("set_service on 81");
    assert_eq!(dst_mac(&dataplane, 81), node_mac(2), "the reused slot");
    assert_eq!(dst_mac(&dataplane, 80), node_mac(2), "the new slot");
}

/// Replies' next hops are cached by client address: replies to two clients
/// on the same link go each to its own MAC, from the FIB and then from the
/// cache, and a client whose MAC changes gets its replies at the old MAC
/// only until the cache's bound has passed; for both families.
#[test]
fn replies_to_each_client_take_that_clients_cached_next_hop() {
    in_bench_with_ns(reply_hops_in_namespace);
}

fn reply_hops_in_namespace(ns: &NetNs, bench: &XdpBed) {
    const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
    // Each CPU caches its own: every reply must run on the same one.
    xdp_bed::pin_to_cpu(0).expect("pin to one CPU");
    let other = Ipv4Addr::new(10, 0, 0, 3);
    let other6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3);
    for ip in [IpAddr::from(other), other6.into()] {
        xdp_bed::add_neighbour(ns, ip, OTHER_MAC, CLIENT_DEV).expect("second client");
    }
    let mut dataplane = load(bench);
    for spec in [
        service(VIP, 80, Protocol::Tcp, vec![node(1, 31000)]),
        service(VIP6, 80, Protocol::Tcp, vec![node6(1, 31000)]),
    ] {
        dataplane.set_service(&spec).expect("set_service");
    }
    let reply_mac = |from, to| reply_mac(&dataplane, bench, from, to);
    let families = [
        (
            SocketAddr::from(sock(node_ip(1), 31000)),
            IpAddr::from(CLIENT),
            IpAddr::from(other),
        ),
        (sock6(node_ip6(1), 31000), CLIENT6.into(), other6.into()),
    ];
    for (node, client, other) in families {
        for round in ["from the FIB", "from the cache"] {
            for (ip, mac) in [(client, CLIENT_MAC), (other, OTHER_MAC)] {
                assert_eq!(
                    reply_mac(node, SocketAddr::new(ip, 40000)),
                    mac,
                    "the reply to {ip}, {round}"
                );
            }
        }
    }
    let moved = [0x02, 0, 0, 0, 0x0e, 0x03];
    for ip in [IpAddr::from(other), other6.into()] {
        ns.ip(&format!(
            "neigh replace {ip} lladdr {} dev {CLIENT_DEV} nud permanent",
            xdp_bed::fmt_mac(moved)
        ))
        .expect("move the second client");
    }
    for (node, _, other) in families {
        assert_eq!(
            reply_mac(node, SocketAddr::new(other, 40000)),
            OTHER_MAC,
            "the reply to {other} within the bound: from the cache"
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for (node, _, other) in families {
        assert_eq!(
            reply_mac(node, SocketAddr::new(other, 40000)),
            moved,
            "the reply to {other} past the bound: refreshed"
        );
    }
}

/// Clients whose addresses share a slot of the (per-CPU, direct-mapped)
/// cache of clients' next hops take turns in it: each one's replies go to
/// its own MAC, never to the one the slot's other client left there.
#[test]
fn replies_to_clients_that_share_a_hop_slot_each_take_their_own_next_hop() {
    in_bench_with_ns(shared_hop_slot_in_namespace);
}

fn shared_hop_slot_in_namespace(ns: &NetNs, bench: &XdpBed) {
    const SHARER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x04];
    xdp_bed::pin_to_cpu(0).expect("pin to one CPU");
    let slot = |ip: Ipv4Addr| client_hop_slot(&ipv4_mapped(u32::from_ne_bytes(ip.octets())));
    // The clients of one subnet take distinct slots: a sharer lies beyond it,
    // routed onto the clients' link.
    let sharer = (u32::from(Ipv4Addr::new(10, 64, 0, 1))..)
        .map(Ipv4Addr::from)
        .find(|&ip| slot(ip) == slot(CLIENT))
        .expect("an address in CLIENT's slot");
    ns.ip(&format!("route add {sharer}/32 dev {CLIENT_DEV}"))
        .expect("route to the sharer");
    xdp_bed::add_neighbour(ns, sharer, SHARER_MAC, CLIENT_DEV).expect("the sharer's MAC");
    let mut dataplane = load(bench);
    dataplane
        .set_service(&service(VIP, 80, Protocol::Tcp, vec![node(1, 31000)]))
        .expect("set_service");
    let node = SocketAddr::from(sock(node_ip(1), 31000));
    for round in 1..=2 {
        for (client, mac) in [(CLIENT, CLIENT_MAC), (sharer, SHARER_MAC)] {
            assert_eq!(
                reply_mac(&dataplane, bench, node, sock(client, 40000).into()),
                mac,
                "round {round}: the reply to {client}"
            );
        }
    }
}

/// The destination MAC of a node's reply from `from` to `to`, which the
/// program must reverse-NAT and send on.
fn reply_mac(dataplane: &Dataplane, bench: &XdpBed, from: SocketAddr, to: SocketAddr) -> [u8; 6] {
    let reply = packets::tcp_ack(from, to, b"HTTP/1.0 200 OK\r\n");
    let (action, output) = run(dataplane, &reply, bench.node_if);
    assert_eq!(action, XDP_REDIRECT, "the reply to {to} is reverse-NAT-ed");
    <[u8; 6]>::try_from(&output[..6]).expect("a MAC")
}

/// An established packet whose flow entry records its service goes where
/// the entry says without a service lookup; the guard is the slot's
/// generation. A removed service's flow must not follow its freed slot into
/// the next service that takes it, even one at the same (node, NodePort):
/// the key filter would not stop it when another service's key keeps the
/// removed one's bit set.
#[test]
fn a_removed_services_flow_does_not_follow_its_slot_into_another_service() {
    in_bench(removed_service_flow_in_namespace);
}

fn removed_service_flow_in_namespace(bench: &XdpBed) {
    let mut dataplane = load(bench);
    let client = sock(CLIENT, 43000);
    let (port, sharing) = sharing_ports(KeyFilter::Services, VIP);
    let keeps_the_bit = service(VIP, sharing, Protocol::Tcp, vec![node(2, 31002)]);
    let removed = service(VIP, port, Protocol::Tcp, vec![node(1, 31000)]);
    dataplane.set_service(&keeps_the_bit).expect("set_service");
    dataplane.set_service(&removed).expect("set_service");
    let (action, _) = run(
        &dataplane,
        &packets::tcp_syn(client, sock(VIP, port)),
        bench.client_if,
    );
    assert_eq!(action, XDP_REDIRECT, "the connection opens");
    let established = packets::tcp_ack(client, sock(VIP, port), b"x");
    assert_eq!(
        run(&dataplane, &established, bench.client_if).0,
        XDP_REDIRECT
    );
    dataplane
        .remove_service(&removed.frontend)
        .expect("remove_service");
    // The next service takes the freed slot, at the same node and NodePort.
    let next = service(VIP_SPREAD, 80, Protocol::Tcp, vec![node(1, 31000)]);
    dataplane.set_service(&next).expect("set_service");
    let (taken, freed) = (
        dataplane
            .service(&next.frontend)
            .expect("programmed")
            .backends[0]
            .id,
        dataplane
            .maps()
            .flows
            .get(&flow_key(client, sock(VIP, port))),
    );
    let freed = freed.expect("FLOWS4").expect("the removed service's flow");
    assert_eq!(taken, u32::from(freed.backend_id), "the slot was reused");
    let (action, output) = run(&dataplane, &established, bench.client_if);
    assert_eq!(action, XDP_PASS, "{:?}", packets::owned_tuple(&output));
    assert_eq!(output, established, "passed untouched");
}

/// The flow key of a TCP packet from `client` to `dst`.
fn flow_key(client: SocketAddrV4, dst: SocketAddrV4) -> FlowKey {
    FlowKey::new(
        lb_common::addr_of((*client.ip()).into()),
        lb_common::addr_of((*dst.ip()).into()),
        client.port().to_be(),
        dst.port().to_be(),
        lb_common::PROTO_TCP,
    )
}

/// The data path tells time by jiffies, turned into `CLOCK_MONOTONIC`
/// nanoseconds by the clock the agent sets at every load: a new flow records
/// a time of that clock (a whole number of ticks past its offset, which the
/// coarse clock's readings are not), within a tick of what the coarse clock
/// read around the packet, as userspace compares it.
#[test]
fn flows_record_the_monotonic_time_by_the_tick_clock() {
    in_bench(tick_clock_in_namespace);
}

fn tick_clock_in_namespace(bench: &XdpBed) {
    let mut dataplane = load(bench);
    dataplane
        .set_service(&service(VIP, 80, Protocol::Tcp, vec![node(1, 31000)]))
        .expect("set_service");
    let clock = dataplane.clock().expect("CLOCK").tick;
    let tick = coarse_clock(libc::clock_getres);
    assert_eq!(clock.ns_per_tick, tick, "a tick as the coarse clock has it");
    let client = sock(CLIENT, 43000);
    let before = coarse_clock(libc::clock_gettime);
    let syn = packets::tcp_syn(client, sock(VIP, 80));
    assert_eq!(run(&dataplane, &syn, bench.client_if).0, XDP_REDIRECT);
    let after = coarse_clock(libc::clock_gettime);
    let created = dataplane
        .maps()
        .flows
        .get(&flow_key(client, sock(VIP, 80)))
        .expect("FLOWS4")
        .expect("the new flow")
        .created_ns;
    assert_eq!(
        created.wrapping_sub(clock.offset_ns) % tick,
        0,
        "{created} ns is no time of the tick clock {clock:?}"
    );
    assert!(
        (before - tick..=after + tick).contains(&created),
        "created at {created} ns, the coarse clock read {before} and {after}"
    );
}

/// `CLOCK_MONOTONIC_COARSE` as `call` (`clock_gettime`, `clock_getres`) gives
/// it, in nanoseconds.
fn coarse_clock(call: lb::clock::ClockCall) -> u64 {
    lb::clock::nanoseconds(call, libc::CLOCK_MONOTONIC_COARSE).expect("the coarse clock")
}

/// Services that come and go are served, and their NodePorts' replies
/// reverse-NAT-ed, exactly while they are programmed, also when their keys
/// share a bit of the data path's key filter (which spares packets that are
/// not ours the `SERVICES` and `NODE_PORTS` lookups): removing one service
/// must not hide the other's entries.
#[test]
fn services_sharing_key_filter_bits_come_and_go() {
    in_bench(key_filter_in_namespace);
}

/// Two ports whose keys, with `ip` and TCP, share a bit of `map`'s filter.
fn sharing_ports(map: KeyFilter, ip: Ipv4Addr) -> (u16, u16) {
    let key = |port: u16| {
        ServiceKey::new(
            lb_common::addr_of(ip.into()),
            port.to_be(),
            lb_common::PROTO_TCP,
        )
    };
    let mut seen = std::collections::HashMap::new();
    (1000..u16::MAX)
        .find_map(|port| {
            seen.insert(map.position(&key(port)), port)
                .map(|other| (other, port))
        })
        .expect("65535 ports in 65536 bits collide")
}

fn key_filter_in_namespace(bench: &XdpBed) {
    let mut dataplane = load(bench);
    let client = sock(CLIENT, 40000);
    let (port_a, port_b) = sharing_ports(KeyFilter::Services, VIP);
    let (node_port_a, node_port_b) = sharing_ports(KeyFilter::NodePorts, node_ip(1));
    let a = service(VIP, port_a, Protocol::Tcp, vec![node(1, node_port_a)]);
    let b = service(VIP, port_b, Protocol::Tcp, vec![node(1, node_port_b)]);
    // Whether a request to `port` is forwarded, and whether a reply from
    // `node_port` leaves with the VIP.
    let served = |dataplane: &Dataplane, port: u16, node_port: u16| -> (bool, bool) {
        let request = packets::tcp_ack(client, sock(VIP, port), b"");
        let (request, _) = run(dataplane, &request, bench.client_if);
        let reply = packets::tcp_ack(sock(node_ip(1), node_port), client, b"");
        let (reply, _) = run(dataplane, &reply, bench.node_if);
        for action in [request, reply] {
            assert!(
                action == XDP_REDIRECT || action == XDP_PASS,
                "action {action}"
            );
        }
        (request == XDP_REDIRECT, reply == XDP_REDIRECT)
    };
    dataplane.set_service(&a).expect("set a");
    dataplane.set_service(&b).expect("set b");
    assert_eq!(served(&dataplane, port_a, node_port_a), (true, true), "a");
    assert_eq!(served(&dataplane, port_b, node_port_b), (true, true), "b");
    dataplane.remove_service(&b.frontend).expect("remove b");
    assert_eq!(
        served(&dataplane, port_a, node_port_a),
        (true, true),
        "a, b removed"
    );
    assert_eq!(
        served(&dataplane, port_b, node_port_b),
        (false, false),
        "b removed"
    );
    dataplane.remove_service(&a.frontend).expect("remove a");
    assert_eq!(
        served(&dataplane, port_a, node_port_a),
        (false, false),
        "a removed"
    );
    dataplane.set_service(&b).expect("set b again");
    assert_eq!(
        served(&dataplane, port_b, node_port_b),
        (true, true),
        "b again"
    );
    assert_eq!(
        served(&dataplane, port_a, node_port_a),
        (false, false),
        "a still removed"
    );
}

/// A node's reply finds the frontend it leaves with by its NodePort and
/// protocol alone (`lb_common::node_port_slot`), which the agent keeps by
/// what each programmed service claims: one NodePort number of TCP and of
/// UDP serves two frontends; a service that loses a backend keeps its
/// NodePort for the others; of two services claiming one NodePort (one
/// freed in Kubernetes and given to another before lb removed the first),
/// the later is served, and the earlier again once the later goes.
#[test]
fn node_port_replies_leave_with_the_frontend_that_claims_the_node_port() {
    in_bench(node_port_claims_in_namespace);
}

fn node_port_claims_in_namespace(bench: &XdpBed) {
    let mut dataplane = load(bench);
    let client = sock(CLIENT, 40000);
    // The source a reply from (`node`, `node_port`) leaves with; `None` when
    // it passes to the kernel.
    let left_with = |dataplane: &Dataplane, node: u8, node_port: u16, proto: Protocol| {
        let from = sock(node_ip(node), node_port);
        let reply = match proto {
            Protocol::Tcp => packets::tcp_ack(from, client, b"r"),
            Protocol::Udp => packets::udp(from, client, b"r"),
        };
        let (action, output) = run(dataplane, &reply, bench.node_if);
        if action == XDP_PASS {
            assert_eq!(output, reply, "passed untouched");
            return None;
        }
        assert_eq!(action, XDP_REDIRECT);
        let (tuple, _) = packets::owned_tuple(&output).expect("a TCP or UDP packet");
        Some(tuple.src)
    };
    let at = |ip: Ipv4Addr, port: u16| Some(SocketAddr::from(sock(ip, port)));

    let tcp = service(VIP, 80, Protocol::Tcp, vec![node(1, 31500)]);
    let udp = service(VIP, 53, Protocol::Udp, vec![node(1, 31500)]);
    for spec in [&tcp, &udp] {
        dataplane.set_service(spec).expect("set_service");
    }
    assert_eq!(left_with(&dataplane, 1, 31500, Protocol::Tcp), at(VIP, 80));
    assert_eq!(left_with(&dataplane, 1, 31500, Protocol::Udp), at(VIP, 53));

    let mut spread = service(
        VIP_SPREAD,
        80,
        Protocol::Tcp,
        vec![node(1, 31600), node(2, 31600)],
    );
    dataplane.set_service(&spread).expect("set_service");
    spread.backends.remove(0);
    dataplane.set_service(&spread).expect("one backend less");
    assert_eq!(
        left_with(&dataplane, 2, 31600, Protocol::Tcp),
        at(VIP_SPREAD, 80),
        "the remaining backend's NodePort"
    );

    let (vip_earlier, vip_later) = (
        Ipv4Addr::new(198, 51, 100, 14),
        Ipv4Addr::new(198, 51, 100, 15),
    );
    let earlier = service(vip_earlier, 80, Protocol::Tcp, vec![node(3, 31700)]);
    let later = service(vip_later, 8080, Protocol::Tcp, vec![node(3, 31700)]);
    dataplane.set_service(&earlier).expect("set earlier");
    dataplane.set_service(&later).expect("set later");
    assert_eq!(
        left_with(&dataplane, 3, 31700, Protocol::Tcp),
        at(vip_later, 8080),
        "the later claim"
    );
    dataplane
        .remove_service(&later.frontend)
        .expect("remove later");
    assert_eq!(
        left_with(&dataplane, 3, 31700, Protocol::Tcp),
        at(vip_earlier, 80),
        "the earlier claim, back"
    );
    dataplane
        .remove_service(&earlier.frontend)
        .expect("remove earlier");
    assert_eq!(
        left_with(&dataplane, 3, 31700, Protocol::Tcp),
        None,
        "no claim"
    );
}

/// A Maglev ring that points at a backend no longer in use is a bug of the
/// agent's; the data path drops the packet, counts `drop_internal` and logs
/// the reason, which the entry point does for every path (a log record
/// written deeper in the call chain would cost that chain stack).
#[test]
fn a_ring_pointing_at_a_retired_backend_drops_counts_and_logs() {
    in_bench(internal_drop_in_namespace);
}

/// Keeps what the data path logged.
#[derive(Clone, Default)]
struct Records(Arc<Mutex<Vec<String>>>);

impl log::Log for Records {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let mut records = self.0.lock().expect("records");
        records.push(record.args().to_string());
    }

    fn flush(&self) {}
}

fn internal_drop_in_namespace(bench: &XdpBed) {
    let mut dataplane = load(bench);
    let spec = service(VIP, 80, Protocol::Tcp, vec![node(1, 31000)]);
    dataplane.set_service(&spec).expect("set_service");
    let records = Records::default();
    let mut logger =
        EbpfLogger::init_with_logger(dataplane.ebpf_mut(), records.clone()).expect("logger");
    // Behind the agent's back, the ring's only backend leaves its slot.
    let id = dataplane
        .service(&spec.frontend)
        .expect("programmed")
        .backends[0]
        .id;
    let mut backends: Array<_, Backend> =
        Array::try_from(xdp_bed::raw_map(&dataplane, MAP_BACKENDS)).expect("an array");
    let mut backend = backends.get(&id, 0).expect("the backend's slot");
    backend.flags &= !BACKEND_ACTIVE;
    backends.set(id, backend, 0).expect("retire the slot");

    let before = dataplane.maps().global_counters().expect("counters");
    let syn = packets::tcp_syn(sock(CLIENT, 44000), sock(VIP, 80));
    assert_eq!(run(&dataplane, &syn, bench.client_if).0, XDP_DROP);
    let after = dataplane.maps().global_counters().expect("counters");
    let drops = counters::DROP_INTERNAL as usize;
    assert_eq!(after[drops] - before[drops], 1, "one internal drop");
    logger.flush();
    let records = records.0.lock().expect("records");
    assert!(
        records
            .iter()
            .any(|r| r.contains("a Maglev ring points at a missing backend")),
        "the drop was logged: {records:?}"
    );
}

/// A packet whose next hop leaves through an interface the program may not
/// redirect to (no devmap entry: an interface lb is not attached to) goes
/// to the kernel translated, as for an unresolved neighbour, with its
/// Ethernet header and TTL as they came: the kernel forwards it itself.
/// Sent on with the next hop's MACs, the kernel would take it for another
/// host's frame and drop it.
#[test]
fn a_packet_whose_egress_is_not_in_the_devmap_goes_to_the_kernel_translated() {
    in_bench(egress_not_in_devmap_in_namespace);
}

fn egress_not_in_devmap_in_namespace(bench: &XdpBed) {
    let mut dataplane = Dataplane::load(DataplaneConfig {
        ring_size: RING_SIZE,
        max_services: 8,
        pin_dir: None,
        ..Default::default()
    })
    .expect("load");
    // The clients' side only: the nodes' interface is not a port.
    dataplane
        .add_egress_port(bench.client_if)
        .expect("egress port");
    let spec = service(VIP, 80, Protocol::Tcp, vec![node(1, 31000)]);
    dataplane.set_service(&spec).expect("set_service");
    let before = dataplane.maps().global_counters().expect("counters");
    let syn = packets::tcp_syn(sock(CLIENT, 44000), sock(VIP, 80));
    let (action, output) = run(&dataplane, &syn, bench.client_if);
    assert_eq!(action, XDP_PASS);
    assert_eq!(
        output,
        packets::expect_dnat(
            &syn,
            sock(node_ip(1), 31000),
            packets::CLIENT_MAC,
            packets::LB_MAC
        ),
        "translated, Ethernet header and TTL untouched"
    );
    let after = dataplane.maps().global_counters().expect("counters");
    let other = counters::FIB_OTHER as usize;
    assert_eq!(after[other] - before[other], 1, "counted as fib_other_pass");
    // Made a port (as an agent attaching its interfaces one by one does),
    // the interface takes the next packet: the hop without a port was not
    // kept.
    dataplane
        .add_egress_port(bench.node_if)
        .expect("egress port");
    let (action, _) = run(&dataplane, &syn, bench.client_if);
    assert_eq!(action, XDP_REDIRECT, "redirected once the egress is a port");
}

/// The kernel empties the egress slot of an interface that goes; its slot
/// is handed out again, so interfaces that come and go (a bond rebuilt, a
/// VLAN recreated) never use up the devmap's slots, and the ports that
/// stay keep theirs.
#[test]
fn the_egress_slots_of_interfaces_that_went_are_handed_out_again() {
    in_bench_with_ns(egress_slots_reused_in_namespace);
}

fn egress_slots_reused_in_namespace(ns: &NetNs, bench: &XdpBed) {
    let mut dataplane = load(bench);
    let spec = service(VIP, 80, Protocol::Tcp, vec![node(1, 31000)]);
    dataplane.set_service(&spec).expect("set_service");
    let slot_of = |dataplane: &Dataplane, ifindex: u32| -> u32 {
        let slots: aya::maps::HashMap<_, u32, u32> = xdp_bed::raw_map(dataplane, MAP_EGRESS_SLOTS)
            .try_into()
            .expect("a hash map");
        slots.get(&ifindex, 0).expect("a slot")
    };
    // While slots were never given out, a gone one is not taken (a next hop
    // cached with it could still name it).
    let mut taken = Vec::new();
    for name in ["first", "second"] {
        ns.ip(&format!("link add {name} type veth peer name {name}p"))
            .expect("an interface");
        let ifindex = ns.ifindex(name).expect("its index");
        dataplane.add_egress_port(ifindex).expect("a port");
        taken.push(slot_of(&dataplane, ifindex));
        ns.ip(&format!("link del {name}")).expect("gone");
    }
    assert_ne!(taken[0], taken[1], "the gone slot was taken again at once");
    for i in 0..MAX_EGRESS_PORTS + 8 {
        let name = format!("gone{i}");
        ns.ip(&format!("link add {name} type veth peer name {name}p"))
            .expect("an interface");
        let ifindex = ns.ifindex(&name).expect("its index");
        dataplane
            .add_egress_port(ifindex)
            .unwrap_or_else(|e| panic!("port {i}: {e}"));
        ns.ip(&format!("link del {name}")).expect("gone");
    }
    let syn = packets::tcp_syn(sock(CLIENT, 44001), sock(VIP, 80));
    let (action, _) = run(&dataplane, &syn, bench.client_if);
    assert_eq!(
        action, XDP_REDIRECT,
        "the ports that stayed still take packets"
    );
}

/// A packet too big for the link to its next hop (here 1,400 bytes, both
/// ways) is answered from the address it was sent to with ICMP
/// "fragmentation needed" or ICMPv6 "packet too big", giving that MTU and
/// quoting the packet as its sender sent it (as much as fits 576 and 1,280
/// bytes): the kernel could only quote it translated. A client's packet to
/// a VIP is answered from the VIP; a node's reply from the client it is
/// for. An IPv4 packet the sender lets be fragmented goes to the kernel
/// translated, for it to fragment.
#[test]
fn a_packet_too_big_for_its_next_hops_link_is_answered_with_the_links_mtu() {
    in_bench_with_ns(too_big_in_namespace);
}

fn too_big_in_namespace(ns: &NetNs, bench: &XdpBed) {
    for dev in [CLIENT_DEV, NODE_DEV] {
        ns.ip(&format!("link set {dev} mtu 1400"))
            .expect("a 1,400-byte link");
    }
    let mut dataplane = load(bench);
    for spec in [
        service(VIP, 80, Protocol::Tcp, vec![node(1, 31000)]),
        service(VIP, 53, Protocol::Udp, vec![node(1, 31053)]),
        service(VIP6, 80, Protocol::Tcp, vec![node6(1, 31000)]),
    ] {
        dataplane.set_service(&spec).expect("set_service");
    }
    let payload = [0x5a; 1400];
    let client = sock(CLIENT, 45000);
    let client6 = sock6(CLIENT6, 45000);
    let answered = |description, input: Vec<u8>, from: IpAddr, to: IpAddr, ingress| Fixture {
        description,
        output: Expected::Bytes(packets::icmp_too_big(
            from,
            to,
            &input,
            packets::LB_MAC,
            packets::CLIENT_MAC,
        )),
        input,
        ingress,
        action: XDP_TX,
    };
    let to_vip = packets::tcp_ack(client, sock(VIP, 80), &payload);
    let udp_to_vip = packets::udp(client, sock(VIP, 53), &payload);
    let to_vip6 = packets::tcp_ack(client6, sock6(VIP6, 80), &payload);
    let reply = packets::tcp_ack(sock(node_ip(1), 31000), client, &payload);
    let fragmentable = |frame: &[u8]| {
        let mut frame = frame.to_vec();
        frame[packets::ETH_LEN + 6] &= !0x40;
        packets::fix_checksums(&mut frame);
        frame
    };
    let (to_vip_fragmentable, reply_fragmentable) = (fragmentable(&to_vip), fragmentable(&reply));
    // Translated, Ethernet header and TTL as they came: the kernel's to
    // fragment and forward.
    let for_the_kernel = |description, input: Vec<u8>, output, ingress| Fixture {
        description,
        input,
        ingress,
        action: XDP_PASS,
        output: Expected::Bytes(output),
    };
    let mut to_broadcast = to_vip.clone();
    to_broadcast[..6].copy_from_slice(&[0xff; 6]);
    let from_multicast = packets::tcp_ack(
        sock(Ipv4Addr::new(224, 1, 2, 3), 45000),
        sock(VIP, 80),
        &payload,
    );
    let small = packets::tcp_ack(client, sock(VIP, 80), &payload[..1000]);
    let before = dataplane.maps().global_counters().expect("counters");
    let fixtures = [
        answered(
            "TCP to a VIP",
            to_vip,
            VIP.into(),
            CLIENT.into(),
            Ingress::Clients,
        ),
        answered(
            "UDP to a VIP",
            udp_to_vip,
            VIP.into(),
            CLIENT.into(),
            Ingress::Clients,
        ),
        answered(
            "TCP to an IPv6 VIP",
            to_vip6,
            VIP6.into(),
            CLIENT6.into(),
            Ingress::Clients,
        ),
        answered(
            "a node's reply",
            reply,
            CLIENT.into(),
            node_ip(1).into(),
            Ingress::Nodes,
        ),
        // No answer to or from a group address (RFC 1812 4.3.2.7, RFC 1122
        // 3.2.2): the packet passes as it came.
        Fixture {
            description: "sent to the broadcast MAC",
            input: to_broadcast,
            ingress: Ingress::Clients,
            action: XDP_PASS,
            output: Expected::Unchanged,
        },
        Fixture {
            description: "from a multicast address",
            input: from_multicast,
            ingress: Ingress::Clients,
            action: XDP_PASS,
            output: Expected::Unchanged,
        },
        for_the_kernel(
            "to a VIP without Don't Fragment",
            to_vip_fragmentable.clone(),
            packets::expect_dnat(
                &to_vip_fragmentable,
                sock(node_ip(1), 31000),
                packets::CLIENT_MAC,
                packets::LB_MAC,
            ),
            Ingress::Clients,
        ),
        for_the_kernel(
            "a node's reply without Don't Fragment",
            reply_fragmentable.clone(),
            packets::expect_snat(
                &reply_fragmentable,
                sock(VIP, 80),
                packets::CLIENT_MAC,
                packets::LB_MAC,
            ),
            Ingress::Nodes,
        ),
    ];
    check_fixtures(&dataplane, bench, &fixtures);
    let (action, _) = run(&dataplane, &small, bench.client_if);
    assert_eq!(action, XDP_REDIRECT, "a packet that fits is forwarded");
    let after = dataplane.maps().global_counters().expect("counters");
    let delta = |counter: u32| after[counter as usize] - before[counter as usize];
    assert_eq!(
        (
            delta(counters::TOO_BIG_ANSWERED),
            delta(counters::PASS_TO_FRAGMENT),
            delta(counters::FIB_OTHER)
        ),
        (4, 2, 2),
        "answered, and passed to fragment (too_big_answered, pass_to_fragment, fib_other_pass)"
    );
}

/// Answers to packets too big are limited to `ANSWERS_PER_SECOND` (1,000)
/// a second on each CPU (RFC 4443 2.4 (f)): past that, the packets pass as
/// they came.
#[test]
fn answers_to_packets_too_big_are_limited_per_cpu_and_second() {
    in_bench_with_ns(too_big_limit_in_namespace);
}

fn too_big_limit_in_namespace(ns: &NetNs, bench: &XdpBed) {
    const LIMIT: usize = 1000;
    ns.ip(&format!("link set {NODE_DEV} mtu 1400"))
        .expect("a 1,400-byte link");
    // One CPU's budget: this thread stays on CPU 0.
    // SAFETY: a zeroed set with one CPU, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin to CPU 0"
        );
    }
    let mut dataplane = load(bench);
    dataplane
        .set_service(&service(VIP, 80, Protocol::Tcp, vec![node(1, 31000)]))
        .expect("set_service");
    let too_big = packets::tcp_ack(sock(CLIENT, 46000), sock(VIP, 80), &[0x5a; 1400]);
    let started = std::time::Instant::now();
    let actions: Vec<u32> = (0..LIMIT + 100)
        .map(|_| run(&dataplane, &too_big, bench.client_if).0)
        .collect();
    let seconds = started.elapsed().as_secs_f64();
    let answered = actions.iter().filter(|&&action| action == XDP_TX).count();
    let passed = actions.iter().filter(|&&action| action == XDP_PASS).count();
    assert_eq!(answered + passed, actions.len(), "answered or passed");
    if seconds < 1.0 {
        assert_eq!((answered, passed), (LIMIT, 100), "within one second");
    } else {
        // A slow run spans more than one second's budget.
        let windows = seconds.ceil() as usize + 1;
        assert!(
            (LIMIT..=LIMIT * windows).contains(&answered),
            "{answered} answered in {seconds:.2} s"
        );
    }
}
