//! Property test of the XDP program: random and mutated packets through the
//! real program (BPF_PROG_TEST_RUN, after the real verifier), each outcome
//! checked against what the data path may do with it.
//!
//! Properties, for every packet:
//! - the action is DROP, PASS, TX or REDIRECT, never ABORTED;
//! - a packet lb does not own (not to a configured VIP:port/protocol, not a
//!   node's reply to a flow it tracks or, for a flow it never saw (another lb
//!   host's), from the node Maglev picks for it; or an IPv6 fragment, a
//!   VLAN-tagged frame, another protocol, ICMP echo while answering pings is
//!   off) passes bit for bit unchanged; an IPv4 datagram's first fragment is
//!   owned as the whole datagram would be;
//! - a later fragment of an IPv4 datagram (no ports) is unchanged, or has
//!   only its MACs, TTL, header checksum and one address rewritten: DNAT to
//!   a backend of a service on its destination, or reverse NAT from a node
//!   to the VIP of a service it serves;
//! - an owned packet is either left unchanged (PASS or DROP) or rewritten, and
//!   a rewrite changes only MACs, one address, one port, the checksums and the
//!   TTL (one less when sent on, unchanged when handed to the kernel); a
//!   DNAT goes to a backend of the service the packet was addressed to (never
//!   anywhere else: no open relay), a reverse NAT makes the reply come from the
//!   VIP:port of its flow; if the input's checksums were valid, the output's
//!   are (`packets::verify_checksums`), and if they were not, the output's are
//!   not either (damage is carried over, never repaired); a packet sent out
//!   (TX or REDIRECT) carries the MAC of the neighbour it is sent to;
//! - or, for an owned packet longer than the MTU of its next hop's link, an
//!   answer (TX) with ICMP "fragmentation needed" or ICMPv6 "packet too big"
//!   goes back where it came from, quoting its start, with valid checksums.
//!
//! The cases are exhaustive sweeps (every truncation, IHL and total length of
//! valid packets) and then proptest's random cases: valid packets to VIPs, to
//! other ports and addresses, from backends (replies of tracked flows and
//! forged ones), other traffic and random bytes, each with up to four
//! mutations. The random part uses a fixed seed, so runs are reproducible;
//! `LB_FUZZ_SEED=<u64>` and `LB_FUZZ_CASES=<n>` explore further.

use std::{
    cell::RefCell,
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::Range,
};

use anyhow::{Context as _, Result, bail, ensure};
use etherparse::{PacketBuilder, TcpHeader};
use lb::{
    dataplane::{Dataplane, DataplaneConfig},
    model::{BackendSpec, Protocol, ServiceSpec},
};
use lb_common::{FlowKey, PROTO_TCP, PROTO_UDP};
use lb_tests::{
    netns::NetNs,
    packets::{
        self, ETH_LEN, IPV6_DEST_OPTIONS, IPV6_FRAGMENT, IPV6_HEADER_LEN, IPV6_HOP_BY_HOP,
        IPV6_ROUTING, Tuple, fix_checksums, ip_start, owned_tuple,
    },
    specs::{self, service},
    xdp_bed::{
        self, CLIENT_DEV, NODES, XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, XdpBed,
        node_ip, node_ip6, node_mac,
    },
};
use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner},
};

const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
const ETHERTYPE_VLAN: [u8; 2] = [0x81, 0x00];
const PROTO_ICMP: u8 = 1;

const VIP_A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const VIP_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
/// A service without backends: its packets are dropped.
const VIP_EMPTY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 12);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10);
const VIPS: [IpAddr; 4] = [
    IpAddr::V4(VIP_A),
    IpAddr::V4(VIP_B),
    IpAddr::V4(VIP_EMPTY),
    IpAddr::V6(VIP6),
];
/// Small prime ring: the properties need no balance.
const RING_SIZE: u32 = 1021;
const DEFAULT_SEED: u64 = 0x6c62_5f66_757a_7a01;
const DEFAULT_CASES: u32 = 10_000;

/// Clients with resolved neighbours on the client side (the first is
/// `xdp_bed::CLIENT`).
fn client_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 2 + i)
}

/// The same clients' IPv6 addresses (2001:db8::2 is `xdp_bed::CLIENT6`).
fn client_ip6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2 + u16::from(i))
}

/// Client `i` of the family `v6` says.
fn client(i: u8, v6: bool) -> IpAddr {
    if v6 {
        client_ip6(i).into()
    } else {
        client_ip(i).into()
    }
}

fn client_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, 0x02 + i]
}

const CLIENTS: u8 = 4;

fn backends(nodes: &[u8], port: u16, v6: bool) -> Vec<BackendSpec> {
    let node = if v6 { specs::node6 } else { specs::node };
    nodes.iter().map(|&i| node(i, port)).collect()
}

/// Distinct NodePorts per service, so the reverse-NAT keys of different
/// services never collide and the expected VIP of a reply is unambiguous.
fn services() -> Vec<ServiceSpec> {
    vec![
        service(VIP_A, 80, Protocol::Tcp, backends(&[1, 2, 3], 31000, false)),
        service(VIP_A, 53, Protocol::Udp, backends(&[1, 2], 31053, false)),
        service(VIP_B, 443, Protocol::Tcp, backends(&[3], 31443, false)),
        service(VIP_EMPTY, 80, Protocol::Tcp, Vec::new()),
        service(VIP6, 80, Protocol::Tcp, backends(&[1, 2, 3], 32080, true)),
        service(VIP6, 53, Protocol::Udp, backends(&[2, 3], 32053, true)),
    ]
}

/// The namespace the program runs in, with all clients resolved. Nodes
/// (`xdp_bed::NODES`) are all resolved: a DNAT-ed packet leaves with TX or
/// REDIRECT and a known MAC, and a passed rewritten packet is an exception.
fn bench() -> Result<(NetNs, XdpBed)> {
    let (ns, bench) = XdpBed::new("lbfuzz")?;
    // Client 0 is `xdp_bed::CLIENT` (and `CLIENT6`), resolved already.
    for i in 1..CLIENTS {
        xdp_bed::add_neighbour(&ns, client_ip(i), client_mac(i), CLIENT_DEV)?;
        xdp_bed::add_neighbour(&ns, client_ip6(i), client_mac(i), CLIENT_DEV)?;
    }
    Ok((ns, bench))
}

#[test]
fn random_and_mutated_packets_keep_the_data_path_properties() -> Result<()> {
    let (ns, bench) = bench()?;
    ns.enter(move || fuzz_in_namespace(bench.client_if, bench.node_if))?
}

fn fuzz_in_namespace(client_if: u32, node_if: u32) -> Result<()> {
    let mut dataplane = Dataplane::load(DataplaneConfig {
        ring_size: RING_SIZE,
        max_services: 8,
        pin_dir: None,
        // ICMP echo to a VIP then passes like any packet lb does not own.
        answer_ping: false,
        // Every flow is recorded: the oracle predicts replies from the records.
        new_flow_limit: 0,
        ..Default::default()
    })?;
    dataplane.add_egress_port(client_if)?;
    dataplane.add_egress_port(node_if)?;
    let services = services();
    for spec in &services {
        dataplane.set_service(spec)?;
    }
    let mut macs: HashMap<IpAddr, [u8; 6]> = HashMap::new();
    for v6 in [false, true] {
        macs.extend((0..CLIENTS).map(|i| (client(i, v6), client_mac(i))));
    }
    macs.extend((1..=NODES).map(|i| (node_ip(i).into(), node_mac(i))));
    macs.extend((1..=NODES).map(|i| (node_ip6(i).into(), node_mac(i))));
    let world = RefCell::new(World {
        dataplane,
        client_if,
        node_if,
        services,
        macs,
        tracked: HashMap::new(),
        stats: Stats::default(),
    });

    // Flows the random replies can belong to: every resolved client opens
    // one to every served frontend.
    let mut flows = Vec::new();
    for spec in world
        .borrow()
        .services
        .iter()
        .filter(|s| !s.backends.is_empty())
    {
        for i in 0..CLIENTS {
            let v6 = spec.frontend.vip.is_ipv6();
            let client = SocketAddr::new(client(i, v6), 40000 + u16::from(i));
            let dst = SocketAddr::new(spec.frontend.vip, spec.frontend.port);
            let kind = match spec.frontend.protocol {
                Protocol::Tcp => Kind::Tcp { flags: SYN },
                Protocol::Udp => Kind::Udp {
                    zero_checksum: false,
                },
            };
            flows.push(Datagram {
                src: client,
                dst,
                kind,
                payload: b"hello".to_vec(),
            });
        }
    }
    for flow in &flows {
        let outcome = world
            .borrow_mut()
            .run_case(&Case::plain(Base::Datagram(flow.clone())), &[])?;
        ensure!(outcome == Outcome::Dnat, "opening {flow:?}: {outcome:?}");
    }
    // Sorted: the random cases pick replies by position, reproducibly.
    let mut replies: Vec<Tuple> = world.borrow().tracked.keys().copied().collect();
    replies.sort();
    ensure!(replies.len() == flows.len(), "one tracked reply per flow");

    for case in sweeps(&flows[0], &replies) {
        world
            .borrow_mut()
            .run_case(&case, &replies)
            .with_context(|| format!("sweep case {case:?}"))?;
    }
    let after_sweeps = world.borrow().stats.clone();
    ensure!(
        after_sweeps.checksum_checked > 0 && after_sweeps.unchanged > 0,
        "the sweeps exercise both paths: {after_sweeps:?}"
    );

    let seed = env_number("LB_FUZZ_SEED", DEFAULT_SEED)?;
    let cases = u32::try_from(env_number("LB_FUZZ_CASES", u64::from(DEFAULT_CASES))?)?;
    println!("fuzz_packets: {cases} random cases, seed {seed} (set LB_FUZZ_SEED to change)");
    let mut seed_bytes = [0u8; 32];
    for chunk in seed_bytes.chunks_mut(8) {
        chunk.copy_from_slice(&seed.to_le_bytes());
    }
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let result = runner.run(&case_strategy(), |case| {
        world
            .borrow_mut()
            .run_case(&case, &replies)
            .map(drop)
            .map_err(|e| TestCaseError::fail(format!("{e:#}")))
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, case)) => {
            bail!("seed {seed}: property violated: {reason}\nminimal case: {case:#?}")
        }
        Err(e) => bail!("seed {seed}: {e}"),
    }

    let stats = world.into_inner().stats;
    println!("fuzz_packets: {stats:?}");
    // Each property must have been exercised, or a passing run proves little.
    let total = u64::from(cases) + after_sweeps.total();
    for (what, count, at_least) in [
        ("DNAT-ed", stats.dnat, total / 10),
        ("reverse-NAT-ed", stats.reverse_nat, total / 100),
        (
            "rewritten with valid input checksums",
            stats.checksum_checked,
            total / 10,
        ),
        ("passed unchanged", stats.unchanged, total / 4),
        ("IPv6 rewritten", stats.ipv6_rewritten, total / 20),
        ("later fragments rewritten", stats.fragments_rewritten, 1),
        ("dropped", stats.dropped, 1),
        ("answered as too big", stats.too_big, 1),
    ] {
        ensure!(
            count >= at_least,
            "only {count} of {total} packets {what} (want {at_least}): {stats:?}"
        );
    }
    Ok(())
}

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(text) if !text.is_empty() => text
            .parse()
            .with_context(|| format!("{name}={text:?} is not a number")),
        _ => Ok(default),
    }
}

// --- Cases: a base packet, mutations, checksum repair ---------------------

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

#[derive(Clone, Debug)]
enum Kind {
    /// TCP with this flags byte (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR).
    Tcp { flags: u8 },
    /// UDP; a zero checksum means "none" (RFC 768).
    Udp { zero_checksum: bool },
}

#[derive(Clone, Debug)]
struct Datagram {
    src: SocketAddr,
    dst: SocketAddr,
    kind: Kind,
    payload: Vec<u8>,
}

#[derive(Clone, Debug)]
enum Base {
    Datagram(Datagram),
    /// A backend's reply in one of the flows opened at the start (any
    /// number: it is taken modulo their count).
    Reply {
        flow: usize,
        flags: u8,
        payload: Vec<u8>,
    },
    /// An ICMP (ICMPv6) echo request from a client.
    Ping {
        dst: IpAddr,
    },
    Ipv6,
    Arp,
    /// An Ethernet header with EtherType IPv4 and random bytes after it.
    RandomIpv4(Vec<u8>),
    /// Random bytes, Ethernet header included.
    Random(Vec<u8>),
}

#[derive(Clone, Debug)]
enum Mutation {
    /// Keeps the first N bytes, but at least the Ethernet header (the kernel
    /// itself refuses shorter frames).
    Truncate(usize),
    TotalLength(u16),
    Ihl(u8),
    /// Inserts IP options (whole 4-byte words) and adjusts IHL and total
    /// length as a sender would.
    Options(Vec<u8>),
    Fragment {
        more: bool,
        offset: u16,
    },
    /// Inserts an 802.1Q tag.
    Vlan(u16),
    Byte {
        at: Index,
        value: u8,
    },
    Protocol(u8),
    /// Bytes after the IP datagram, as Ethernet padding.
    Padding(Vec<u8>),
    /// Inserts an IPv6 extension header of this type right after the IPv6
    /// header, `units` 8-byte units long after its first 8 bytes, with this
    /// routing "segments left".
    Ipv6Extension {
        kind: u8,
        units: u8,
        segments_left: u8,
    },
}

#[derive(Clone, Copy, Debug)]
enum Ingress {
    Clients,
    Nodes,
}

#[derive(Clone, Debug)]
struct Case {
    base: Base,
    mutations: Vec<Mutation>,
    /// Recompute the checksums after mutating, as the sender of such a packet
    /// would, so that odd but intact packets are most of the cases; without,
    /// the packet was damaged in flight.
    fix_checksums: bool,
    ingress: Ingress,
}

impl Case {
    fn plain(base: Base) -> Self {
        Self::mutated(base, vec![], true)
    }

    fn mutated(base: Base, mutations: Vec<Mutation>, fix_checksums: bool) -> Self {
        Self {
            base,
            mutations,
            fix_checksums,
            ingress: Ingress::Clients,
        }
    }

    fn frame(&self, replies: &[Tuple]) -> Result<Vec<u8>> {
        let mut frame = match &self.base {
            Base::Datagram(datagram) => datagram.build()?,
            Base::Reply {
                flow,
                flags,
                payload,
            } => {
                let reply = replies
                    .get(flow % replies.len().max(1))
                    .context("no tracked flows")?;
                let kind = if reply.proto == PROTO_TCP {
                    Kind::Tcp { flags: *flags }
                } else {
                    Kind::Udp {
                        zero_checksum: false,
                    }
                };
                Datagram {
                    src: reply.src,
                    dst: reply.dst,
                    kind,
                    payload: payload.clone(),
                }
                .build()?
            }
            Base::Ping { dst } => packets::icmp_echo_request(client(0, dst.is_ipv6()), *dst),
            Base::Ipv6 => packets::ipv6_tcp_syn(),
            Base::Arp => packets::arp_request(client_ip(0), VIP_A),
            Base::RandomIpv4(bytes) => [
                &packets::LB_MAC[..],
                &packets::CLIENT_MAC,
                &ETHERTYPE_IPV4,
                bytes,
            ]
            .concat(),
            Base::Random(bytes) => bytes.clone(),
        };
        for mutation in &self.mutations {
            mutation.apply(&mut frame);
        }
        if self.fix_checksums {
            fix_checksums(&mut frame);
        }
        Ok(frame)
    }
}

impl Datagram {
    fn build(&self) -> Result<Vec<u8>> {
        let eth = PacketBuilder::ethernet2(packets::CLIENT_MAC, packets::LB_MAC);
        let builder = match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => eth.ipv4(src.octets(), dst.octets(), 64),
            (IpAddr::V6(src), IpAddr::V6(dst)) => eth.ipv6(src.octets(), dst.octets(), 64),
            (src, dst) => bail!("{src} and {dst} are of different families"),
        };
        let mut frame = Vec::new();
        match self.kind {
            Kind::Tcp { flags } => {
                let mut tcp = TcpHeader::new(self.src.port(), self.dst.port(), 1000, 64240);
                tcp.fin = flags & FIN != 0;
                tcp.syn = flags & SYN != 0;
                tcp.rst = flags & 0x04 != 0;
                tcp.psh = flags & 0x08 != 0;
                tcp.ack = flags & ACK != 0;
                tcp.urg = flags & 0x20 != 0;
                tcp.ece = flags & 0x40 != 0;
                tcp.cwr = flags & 0x80 != 0;
                builder
                    .tcp_header(tcp)
                    .write(&mut frame, &self.payload)
                    .context("building a TCP frame")?;
            }
            Kind::Udp { zero_checksum } => {
                builder
                    .udp(self.src.port(), self.dst.port())
                    .write(&mut frame, &self.payload)
                    .context("building a UDP frame")?;
                if zero_checksum {
                    let udp = ETH_LEN
                        + if self.src.is_ipv6() {
                            IPV6_HEADER_LEN
                        } else {
                            20
                        };
                    frame[udp + 6..udp + 8].fill(0);
                }
            }
        }
        Ok(frame)
    }
}

/// Where the IPv4 header starts: after the Ethernet header and any VLAN tag.
impl Mutation {
    /// Applies the mutation where the frame is long enough for it; a frame too
    /// short (after an earlier truncation, say) is left as it is.
    fn apply(&self, frame: &mut Vec<u8>) {
        let ip = ip_start(frame);
        let has_ip_header = frame.len() >= ip + 20;
        match self {
            Mutation::Truncate(len) => frame.truncate(ETH_LEN.max(*len)),
            Mutation::TotalLength(len) if has_ip_header => {
                frame[ip + 2..ip + 4].copy_from_slice(&len.to_be_bytes());
            }
            Mutation::Ihl(ihl) if has_ip_header => {
                frame[ip] = (frame[ip] & 0xf0) | (ihl & 0x0f);
            }
            Mutation::Options(options) if has_ip_header => {
                let header_len = usize::from(frame[ip] & 0x0f) * 4;
                let words = options.len() / 4;
                let new_len = header_len + words * 4;
                if header_len < 20 || new_len > 60 || frame.len() < ip + header_len {
                    return;
                }
                let at = ip + header_len;
                frame.splice(at..at, options[..words * 4].iter().copied());
                frame[ip] = (frame[ip] & 0xf0) | (new_len / 4) as u8;
                let total = u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]);
                let total = total.wrapping_add((words * 4) as u16);
                frame[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
            }
            Mutation::Fragment { more, offset } if has_ip_header => {
                let flags = u16::from_be_bytes([frame[ip + 6], frame[ip + 7]]) & 0x4000;
                let value = flags | if *more { 0x2000 } else { 0 } | (offset & 0x1fff);
                frame[ip + 6..ip + 8].copy_from_slice(&value.to_be_bytes());
            }
            Mutation::Vlan(tci) if frame.len() >= ETH_LEN => {
                let tag = [ETHERTYPE_VLAN, tci.to_be_bytes()].concat();
                frame.splice(12..12, tag);
            }
            Mutation::Byte { at, value } if !frame.is_empty() => {
                *at.get_mut(frame) = *value;
            }
            Mutation::Protocol(proto) if has_ip_header => frame[ip + 9] = *proto,
            Mutation::Padding(bytes) => frame.extend_from_slice(bytes),
            Mutation::Ipv6Extension {
                kind,
                units,
                segments_left,
            } if frame.get(ip - 2..ip) == Some(&ETHERTYPE_IPV6[..])
                && frame.len() >= ip + IPV6_HEADER_LEN =>
            {
                let len = (usize::from(*units) + 1) * 8;
                let mut header = vec![0u8; len];
                header[0] = frame[ip + 6];
                header[1] = *units;
                header[3] = *segments_left;
                frame[ip + 6] = *kind;
                let at = ip + IPV6_HEADER_LEN;
                frame.splice(at..at, header);
                let payload = u16::from_be_bytes([frame[ip + 4], frame[ip + 5]]);
                let payload = payload.wrapping_add(len as u16);
                frame[ip + 4..ip + 6].copy_from_slice(&payload.to_be_bytes());
            }
            _ => {}
        }
    }
}

// --- The oracle --------------------------------------------------------------

/// Whether `output` is an ICMP "fragmentation needed" or ICMPv6 "packet too
/// big" (both with option-less headers, as lb writes them).
fn is_too_big_answer(output: &[u8]) -> bool {
    match output.get(12..14) {
        Some([0x08, 0x00]) => output.get(23) == Some(&1) && output.get(34..36) == Some(&[3, 4]),
        Some([0x86, 0xdd]) => output.get(20) == Some(&58) && output.get(54) == Some(&2),
        _ => false,
    }
}

/// An answer to a packet too big for its next hop goes back where the packet
/// came from (MACs and addresses turned around), with valid checksums,
/// quotes the start of the packet, and gives an MTU the packet exceeds.
fn check_too_big_answer(input: &[u8], output: &[u8]) -> Result<()> {
    ensure!(
        output[..6] == input[6..12] && output[6..12] == input[..6],
        "the answer's MACs are not the packet's turned around"
    );
    let v6 = output[12] == 0x86;
    let (src, dst, mtu, quote_at) = if v6 {
        let mtu = u32::from_be_bytes(output[58..62].try_into()?);
        (22..38, 38..54, mtu, 62)
    } else {
        let mtu = u32::from(u16::from_be_bytes(output[40..42].try_into()?));
        (26..30, 30..34, mtu, 42)
    };
    ensure!(
        output[src.clone()] == input[dst.clone()] && output[dst] == input[src],
        "the answer's addresses are not the packet's turned around"
    );
    let quote = &output[quote_at..];
    // As much as fits the family's smallest MTU for errors.
    let quote_len = if v6 { 1280 - 48 } else { 576 - 28 };
    ensure!(
        quote.len() == quote_len && input[ETH_LEN..].starts_with(quote),
        "the answer does not quote the packet's first {quote_len} bytes"
    );
    let be16 = |at: usize| u32::from(u16::from_be_bytes([input[at], input[at + 1]]));
    let ip_len = if v6 {
        IPV6_HEADER_LEN as u32 + be16(ETH_LEN + 4)
    } else {
        ensure!(
            input[ETH_LEN + 6] & 0x40 != 0,
            "answered an IPv4 packet without Don't Fragment"
        );
        be16(ETH_LEN + 2)
    };
    ensure!(
        ip_len > mtu,
        "a packet of {ip_len} bytes answered as over {mtu}"
    );
    packets::verify_checksums(output).context("the answer's checksums")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Unchanged,
    Dnat,
    ReverseNat,
    /// Answered as too big for the link to its next hop.
    TooBig,
}

#[derive(Clone, Debug, Default)]
struct Stats {
    unchanged: u64,
    dropped: u64,
    dnat: u64,
    reverse_nat: u64,
    too_big: u64,
    /// Rewrites whose input had valid checksums, so the output's were checked.
    checksum_checked: u64,
    /// Rewrites of packets with damaged checksums (or lengths), which the
    /// data path does not validate.
    damaged_rewritten: u64,
    /// Rewrites of IPv6 packets (either way).
    ipv6_rewritten: u64,
    /// Rewrites of IPv4 datagrams' later fragments (either way).
    fragments_rewritten: u64,
}

impl Stats {
    fn total(&self) -> u64 {
        self.unchanged + self.dnat + self.reverse_nat + self.too_big
    }
}

struct World {
    dataplane: Dataplane,
    client_if: u32,
    node_if: u32,
    services: Vec<ServiceSpec>,
    /// Resolved neighbours: where TX and REDIRECT may send to.
    macs: HashMap<IpAddr, [u8; 6]>,
    /// Replies of the flows seen DNAT-ed (backend to client), with the
    /// VIP:port they must be made to come from.
    tracked: HashMap<Tuple, SocketAddr>,
    stats: Stats,
}

impl World {
    fn run_case(&mut self, case: &Case, replies: &[Tuple]) -> Result<Outcome> {
        let input = case.frame(replies)?;
        let ifindex = match case.ingress {
            Ingress::Clients => self.client_if,
            Ingress::Nodes => self.node_if,
        };
        let (action, output) = self.run(&input, ifindex)?;
        self.check(&input, action, &output).with_context(|| {
            format!(
                "action {action}\n input  {}\n output {}",
                hex(&input),
                hex(&output)
            )
        })
    }

    fn run(&self, input: &[u8], ifindex: u32) -> Result<(u32, Vec<u8>)> {
        xdp_bed::run(self.dataplane.program()?, input, ifindex)
    }

    /// The VIP:port a node's reply may leave with although this world saw
    /// no flow of it (another lb host did): the reply must come from the
    /// backend the live Maglev ring picks for the flow it answers.
    fn maglev_reply_of(&self, reply: &Tuple) -> Option<SocketAddr> {
        let spec = self.services.iter().find(|s| {
            s.frontend.protocol.number() == reply.proto
                && s.backends
                    .iter()
                    .any(|b| b.ip == reply.src.ip() && b.port == reply.src.port())
        })?;
        let request = FlowKey::new(
            lb_common::addr_of(reply.dst.ip()),
            lb_common::addr_of(spec.frontend.vip),
            reply.dst.port().to_be(),
            spec.frontend.port.to_be(),
            reply.proto,
        );
        let choice = self.dataplane.maps().maglev_choice(&request).ok()??;
        let chosen = SocketAddr::new(
            lb_common::ip_of(choice.backend.ip),
            u16::from_be(choice.backend.port),
        );
        (chosen == reply.src).then_some(SocketAddr::new(spec.frontend.vip, spec.frontend.port))
    }

    fn check(&mut self, input: &[u8], action: u32, output: &[u8]) -> Result<Outcome> {
        ensure!(action != XDP_ABORTED, "XDP_ABORTED");
        ensure!(action <= XDP_REDIRECT, "unknown XDP action");
        if packets::is_later_ipv4_fragment(input) {
            return self.check_later_fragment(input, action, output);
        }
        let tuple = owned_tuple(input);
        let service = tuple.and_then(|(t, _)| {
            self.services.iter().find(|s| {
                s.frontend.vip == t.dst.ip()
                    && s.frontend.port == t.dst.port()
                    && s.frontend.protocol.number() == t.proto
            })
        });
        let reply_of = tuple.and_then(|(t, _)| {
            self.tracked
                .get(&t)
                .copied()
                .or_else(|| self.maglev_reply_of(&t))
        });
        if output == input {
            let may_drop = service.is_some_and(|spec| spec.backends.is_empty());
            return self.unchanged(action, may_drop, "packet");
        }
        let Some((tuple, l4)) = tuple else {
            bail!("changed a packet lb does not own");
        };
        if action == XDP_TX && is_too_big_answer(output) {
            ensure!(
                service.is_some() || reply_of.is_some(),
                "answered {tuple:?} as too big: neither to a service nor a reply of one"
            );
            check_too_big_answer(input, output)?;
            self.stats.too_big += 1;
            return Ok(Outcome::TooBig);
        }
        ensure!(
            matches!(action, XDP_TX | XDP_REDIRECT | XDP_PASS),
            "a rewritten packet must be sent or passed"
        );
        let v6 = tuple.src.is_ipv6();
        only_nat_fields_changed(input, output, l4, tuple.proto, v6)?;
        self.stats.ipv6_rewritten += u64::from(v6);
        check_hop(input, output, action, v6)?;
        let (out, _) = owned_tuple(output).context("the rewritten packet lost its 5-tuple")?;
        ensure!(out.proto == tuple.proto, "protocol changed");
        let outcome = if let Some(spec) = service {
            ensure!(
                out.src == tuple.src,
                "DNAT changed the source to {}",
                out.src
            );
            ensure!(
                spec.backends
                    .iter()
                    .any(|b| b.ip == out.dst.ip() && b.port == out.dst.port()),
                "open relay: DNAT to {}, not a backend of {}",
                out.dst,
                spec.frontend
            );
            self.tracked.insert(
                Tuple {
                    src: out.dst,
                    dst: tuple.src,
                    proto: tuple.proto,
                },
                tuple.dst,
            );
            self.stats.dnat += 1;
            Outcome::Dnat
        } else if let Some(vip) = reply_of {
            ensure!(
                out.src == vip,
                "reverse NAT to {}, the flow's VIP is {vip}",
                out.src
            );
            ensure!(out.dst == tuple.dst, "reverse NAT changed the destination");
            self.stats.reverse_nat += 1;
            Outcome::ReverseNat
        } else {
            bail!("rewrote {tuple:?}: neither to a service nor a reply of one of its flows");
        };
        self.check_sent(action, output, out.dst.ip())?;
        self.check_checksums(input, output)?;
        Ok(outcome)
    }

    /// A later fragment of an IPv4 datagram has no ports: lb may send it
    /// where its datagram's first fragment went (which it remembers from
    /// that fragment, which this world does not model), rewriting only its
    /// addresses, TTL and header checksum: to a backend of a service on its
    /// destination (DNAT), or from a node to a client with the VIP of a
    /// service the node serves (reverse NAT).
    fn check_later_fragment(
        &mut self,
        input: &[u8],
        action: u32,
        output: &[u8],
    ) -> Result<Outcome> {
        let address = |frame: &[u8], at: usize| -> IpAddr {
            let bytes: [u8; 4] = frame[ETH_LEN + at..ETH_LEN + at + 4].try_into().expect("4");
            Ipv4Addr::from(bytes).into()
        };
        let (src, dst, proto) = (address(input, 12), address(input, 16), input[ETH_LEN + 9]);
        let on = |vip: IpAddr| {
            self.services
                .iter()
                .filter(move |s| s.frontend.vip == vip && s.frontend.protocol.number() == proto)
        };
        if output == input {
            let may_drop = on(dst).any(|spec| spec.backends.is_empty());
            return self.unchanged(action, may_drop, "fragment");
        }
        ensure!(
            matches!(action, XDP_TX | XDP_REDIRECT | XDP_PASS),
            "a rewritten fragment must be sent or passed"
        );
        only_changed(
            input,
            output,
            &[0..12, ETH_LEN + 8..ETH_LEN + 9, ETH_LEN + 10..ETH_LEN + 20],
        )?;
        check_hop(input, output, action, false)?;
        let (new_src, new_dst) = (address(output, 12), address(output, 16));
        let outcome = if new_src == src {
            ensure!(
                on(dst).any(|spec| spec.backends.iter().any(|b| b.ip == new_dst)),
                "open relay: a fragment to {dst} sent to {new_dst}"
            );
            self.stats.dnat += 1;
            Outcome::Dnat
        } else {
            ensure!(new_dst == dst, "reverse NAT changed the destination");
            ensure!(
                on(new_src).any(|spec| spec.backends.iter().any(|b| b.ip == src)),
                "a fragment from {src} made to come from {new_src}, no VIP it serves"
            );
            self.stats.reverse_nat += 1;
            Outcome::ReverseNat
        };
        self.check_sent(action, output, new_dst)?;
        self.check_checksums(input, output)?;
        self.stats.fragments_rewritten += 1;
        Ok(outcome)
    }

    /// An unchanged `what` (packet, fragment) must pass, or be dropped where
    /// it `may_drop`: for a service without backends (one with backends, all
    /// usable here with resolved neighbours, never drops).
    fn unchanged(&mut self, action: u32, may_drop: bool, what: &str) -> Result<Outcome> {
        match action {
            XDP_PASS => {}
            XDP_DROP if may_drop => self.stats.dropped += 1,
            _ => bail!(
                "an unchanged {what} must pass (or be dropped for a service without backends)"
            ),
        }
        self.stats.unchanged += 1;
        Ok(Outcome::Unchanged)
    }

    /// A packet sent out (not passed) carries the MAC of `dst`'s neighbour.
    fn check_sent(&self, action: u32, output: &[u8], dst: IpAddr) -> Result<()> {
        if action != XDP_PASS {
            let mac = self
                .macs
                .get(&dst)
                .with_context(|| format!("sent out to {dst}, no resolved neighbour"))?;
            ensure!(output[..6] == mac[..], "sent to the wrong MAC");
        }
        Ok(())
    }

    /// Incremental updates carry damage over: valid stays valid, and a
    /// damaged packet stays detectably damaged for its receiver.
    fn check_checksums(&mut self, input: &[u8], output: &[u8]) -> Result<()> {
        match packets::verify_checksums(input) {
            Ok(()) => {
                packets::verify_checksums(output)
                    .context("valid checksums broken by the rewrite")?;
                self.stats.checksum_checked += 1;
            }
            Err(damage) => {
                ensure!(
                    packets::verify_checksums(output).is_err(),
                    "a rewrite repaired a damaged packet ({damage:#})"
                );
                self.stats.damaged_rewritten += 1;
            }
        }
        Ok(())
    }
}

/// A packet sent on was counted as a hop; one handed to the kernel (no
/// neighbour yet) is counted by the kernel's forwarding.
fn check_hop(input: &[u8], output: &[u8], action: u32, v6: bool) -> Result<()> {
    let ttl_at = ETH_LEN + if v6 { 7 } else { 8 };
    let (ttl_in, ttl_out) = (input[ttl_at], output[ttl_at]);
    let hop = u8::from(action != XDP_PASS);
    ensure!(ttl_in > 1, "rewrote a packet with TTL {ttl_in}");
    ensure!(
        ttl_out == ttl_in - hop,
        "TTL {ttl_in} became {ttl_out} (action {action})"
    );
    Ok(())
}

/// Fails unless `output` differs from `input` only in the MACs, the TTL (hop
/// limit), the IPv4 checksum, the addresses, the ports and the transport
/// checksum.
fn only_nat_fields_changed(
    input: &[u8],
    output: &[u8],
    l4: usize,
    proto: u8,
    v6: bool,
) -> Result<()> {
    let l4_check = l4 + if proto == PROTO_TCP { 16 } else { 6 };
    let ip_fields = if v6 {
        [ETH_LEN + 7..ETH_LEN + 8, ETH_LEN + 8..ETH_LEN + 40]
    } else {
        [ETH_LEN + 8..ETH_LEN + 9, ETH_LEN + 10..ETH_LEN + 20]
    };
    let [ttl, addresses] = ip_fields;
    only_changed(
        input,
        output,
        &[0..12, ttl, addresses, l4..l4 + 4, l4_check..l4_check + 2],
    )
}

/// Fails unless `output` differs from `input` only within `allowed`.
fn only_changed(input: &[u8], output: &[u8], allowed: &[Range<usize>]) -> Result<()> {
    ensure!(
        input.len() == output.len(),
        "length changed to {}",
        output.len()
    );
    for (at, (a, b)) in input.iter().zip(output).enumerate() {
        ensure!(
            a == b || allowed.iter().any(|range| range.contains(&at)),
            "byte {at} changed from {a:#04x} to {b:#04x}"
        );
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// --- Deterministic sweeps ------------------------------------------------------

/// Every truncation of one packet of each kind, every IHL and every total
/// length of valid packets to a VIP, and fragments.
fn sweeps(flow: &Datagram, replies: &[Tuple]) -> Vec<Case> {
    let to = |dst: SocketAddr, kind: Kind| {
        Base::Datagram(Datagram {
            src: SocketAddr::new(client(1, dst.is_ipv6()), 41000),
            dst,
            kind,
            payload: b"sweep payload, forty bytes long........".to_vec(),
        })
    };
    let tcp = Kind::Tcp { flags: SYN };
    let udp = Kind::Udp {
        zero_checksum: false,
    };
    let vip_http = SocketAddr::new(VIP_A.into(), 80);
    let vip_dns = SocketAddr::new(VIP_A.into(), 53);
    let vip6_http = SocketAddr::new(VIP6.into(), 80);
    let reply = Base::Reply {
        flow: 0,
        flags: ACK,
        payload: b"reply".to_vec(),
    };
    let bases = [
        Base::Datagram(flow.clone()),
        to(vip_http, tcp.clone()),
        to(vip_dns, udp.clone()),
        to(
            vip_dns,
            Kind::Udp {
                zero_checksum: true,
            },
        ),
        to(SocketAddr::new(node_ip(1).into(), 31000), tcp.clone()),
        to(vip6_http, tcp.clone()),
        to(SocketAddr::new(VIP6.into(), 53), udp.clone()),
        reply.clone(),
        Base::Ping { dst: VIP_A.into() },
        Base::Ping { dst: VIP6.into() },
        Base::Ipv6,
        Base::Arp,
    ];
    let mut cases = Vec::new();
    let with = |base: &Base, mutations: Vec<Mutation>| Case::mutated(base.clone(), mutations, true);
    for base in &bases {
        let len = Case::plain(base.clone())
            .frame(replies)
            .expect("every base builds a frame")
            .len();
        for cut in ETH_LEN..len {
            cases.push(with(base, vec![Mutation::Truncate(cut)]));
        }
    }
    for base in [to(vip_http, tcp.clone()), reply.clone()] {
        for ihl in 0..16 {
            cases.push(with(&base, vec![Mutation::Ihl(ihl)]));
        }
        let len = Case::plain(base.clone())
            .frame(replies)
            .expect("every base builds a frame")
            .len();
        for total in 0..=(len - ETH_LEN + 8) as u16 {
            cases.push(with(&base, vec![Mutation::TotalLength(total)]));
        }
        for options in [vec![1; 4], vec![1; 40], [[7, 7, 4, 0], [0; 4]].concat()] {
            cases.push(with(&base, vec![Mutation::Options(options)]));
        }
        for (more, offset) in [(true, 0), (false, 1), (true, 8), (false, 0x1fff)] {
            cases.push(with(&base, vec![Mutation::Fragment { more, offset }]));
        }
        cases.push(with(&base, vec![Mutation::Vlan(100)]));
        cases.push(with(&base, vec![Mutation::Padding(vec![0; 18])]));
    }
    for kind in [
        IPV6_HOP_BY_HOP,
        IPV6_DEST_OPTIONS,
        IPV6_ROUTING,
        IPV6_FRAGMENT,
        59,
    ] {
        for (units, segments_left) in [(0, 0), (1, 0), (0, 1), (255, 0)] {
            cases.push(with(
                &to(vip6_http, tcp.clone()),
                vec![Mutation::Ipv6Extension {
                    kind,
                    units,
                    segments_left,
                }],
            ));
        }
    }
    for proto in [0, PROTO_ICMP, 41, 47, 132, 255] {
        cases.push(with(
            &to(vip_http, tcp.clone()),
            vec![Mutation::Protocol(proto)],
        ));
    }
    cases
}

// --- Random cases ----------------------------------------------------------------

fn endpoint(ip: IpAddr) -> impl Strategy<Value = SocketAddr> {
    any::<u16>().prop_map(move |port| SocketAddr::new(ip, port))
}

fn any_ip(v6: bool) -> BoxedStrategy<IpAddr> {
    if v6 {
        any::<u128>()
            .prop_map(|bits| IpAddr::V6(Ipv6Addr::from(bits)))
            .boxed()
    } else {
        any::<u32>()
            .prop_map(|bits| IpAddr::V4(Ipv4Addr::from(bits)))
            .boxed()
    }
}

/// A served VIP:port with a packet of its protocol.
fn to_frontend() -> impl Strategy<Value = (SocketAddr, Kind)> {
    prop::sample::select(services()).prop_flat_map(|spec| {
        let dst = SocketAddr::new(spec.frontend.vip, spec.frontend.port);
        let kind = match spec.frontend.protocol {
            Protocol::Tcp => tcp_kind().boxed(),
            Protocol::Udp => udp_kind().boxed(),
        };
        kind.prop_map(move |kind| (dst, kind))
    })
}

fn backend_endpoint(v6: bool) -> impl Strategy<Value = SocketAddr> {
    prop::sample::select(
        services()
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| SocketAddr::new(b.ip, b.port)))
            .filter(|addr| addr.is_ipv6() == v6)
            .collect::<Vec<_>>(),
    )
}

/// A source of the family `v6` says.
fn source(v6: bool) -> impl Strategy<Value = SocketAddr> {
    // A client nobody knows the MAC of: replies to it pass to the kernel.
    let unknown = (10u8..250).prop_map(move |host| {
        if v6 {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(host)))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, host))
        }
    });
    prop_oneof![
        4 => (0..CLIENTS).prop_flat_map(move |i| endpoint(client(i, v6))),
        2 => unknown.prop_flat_map(endpoint),
        1 => backend_endpoint(v6),
        1 => any_ip(v6).prop_flat_map(endpoint),
    ]
}

/// Anywhere else, or a VIP on a port or protocol it does not serve (or one
/// it serves, by chance).
fn elsewhere() -> impl Strategy<Value = SocketAddr> {
    any::<bool>().prop_flat_map(|v6| {
        prop_oneof![
            1 => prop::sample::select(VIPS.to_vec())
                .prop_filter("family", move |vip| vip.is_ipv6() == v6)
                .prop_flat_map(endpoint),
            1 => backend_endpoint(v6),
            1 => (0..CLIENTS).prop_flat_map(move |i| endpoint(client(i, v6))),
            1 => any_ip(v6).prop_flat_map(endpoint),
        ]
    })
}

fn tcp_kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        // Mostly SYNs and ACKs, as real flows start and go on.
        prop::sample::select(vec![SYN, ACK, ACK | 0x08, FIN | ACK]),
        any::<u8>(),
    ]
    .prop_map(|flags| Kind::Tcp { flags })
}

fn udp_kind() -> impl Strategy<Value = Kind> {
    any::<bool>().prop_map(|zero_checksum| Kind::Udp { zero_checksum })
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..48)
}

fn base() -> impl Strategy<Value = Base> {
    let addressed = prop_oneof![
        2 => to_frontend(),
        1 => (elsewhere(), prop_oneof![tcp_kind(), udp_kind()]),
    ];
    let datagram = (addressed, payload()).prop_flat_map(|((dst, kind), payload)| {
        source(dst.is_ipv6()).prop_map(move |src| {
            Base::Datagram(Datagram {
                src,
                dst,
                kind: kind.clone(),
                payload: payload.clone(),
            })
        })
    });
    prop_oneof![
        12 => datagram,
        4 => (0..64usize, any::<u8>(), payload())
            .prop_map(|(flow, flags, payload)| Base::Reply { flow, flags, payload }),
        1 => prop::sample::select(VIPS.to_vec()).prop_map(|dst| Base::Ping { dst }),
        1 => Just(Base::Ipv6),
        1 => Just(Base::Arp),
        1 => prop::collection::vec(any::<u8>(), 0..80).prop_map(Base::RandomIpv4),
        1 => prop::collection::vec(any::<u8>(), ETH_LEN..120).prop_map(Base::Random),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (ETH_LEN..160).prop_map(Mutation::Truncate),
        prop_oneof![0u16..80, any::<u16>()].prop_map(Mutation::TotalLength),
        (0u8..16).prop_map(Mutation::Ihl),
        prop::collection::vec(any::<u8>(), 4..=40).prop_map(Mutation::Options),
        (any::<bool>(), 0u16..0x2000)
            .prop_filter("a fragment", |(more, offset)| *more || *offset != 0)
            .prop_map(|(more, offset)| Mutation::Fragment { more, offset }),
        any::<u16>().prop_map(Mutation::Vlan),
        (any::<Index>(), any::<u8>()).prop_map(|(at, value)| Mutation::Byte { at, value }),
        any::<u8>().prop_map(Mutation::Protocol),
        prop::collection::vec(any::<u8>(), 1..32).prop_map(Mutation::Padding),
        (
            prop::sample::select(vec![
                IPV6_HOP_BY_HOP,
                IPV6_DEST_OPTIONS,
                IPV6_ROUTING,
                IPV6_FRAGMENT,
                PROTO_TCP,
                PROTO_UDP,
            ]),
            prop_oneof![0u8..3, any::<u8>()],
            prop_oneof![Just(0u8), any::<u8>()],
        )
            .prop_map(|(kind, units, segments_left)| Mutation::Ipv6Extension {
                kind,
                units,
                segments_left,
            }),
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let ingress = prop_oneof![Just(Ingress::Clients), Just(Ingress::Nodes)];
    (
        base(),
        // Many unmutated packets, so that the rewrite paths are well covered.
        prop_oneof![
            2 => Just(Vec::new()),
            3 => prop::collection::vec(mutation(), 1..=4),
        ],
        prop::bool::weighted(0.8),
        ingress,
    )
        .prop_map(|(base, mutations, fix_checksums, ingress)| Case {
            base,
            mutations,
            fix_checksums,
            ingress,
        })
}
