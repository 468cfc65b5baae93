//! Ethernet frames for `BPF_PROG_TEST_RUN` fixtures, and expectations for what
//! the data path must make of them.
//!
//! Frames are built with etherparse. Expected NAT output is re-encoded from
//! scratch with etherparse as well, and [`verify_checksums`] is plain arithmetic
//! written here: neither shares code with the incremental checksum updates under
//! test, so a bug there cannot hide in the fixtures.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    ops::Range,
};

use anyhow::{Context, Result, bail, ensure};
use etherparse::{
    ArpEthIpv4Packet, ArpOperation, Icmpv4Type, Icmpv6Type, IpFragOffset, IpHeaders, IpNumber,
    Ipv4Header, Ipv4Options, Ipv6Extensions, Ipv6FragmentHeader, Ipv6RawExtHeader, NetHeaders,
    PacketBuilder, PacketBuilderStep, PacketHeaders, TransportHeader,
    icmpv4::DestUnreachableHeader,
};
use lb_common::{PROTO_TCP, PROTO_UDP};

/// Source MAC of the frames built here (locally administered).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// Destination MAC of the frames built here: the load balancer's interface.
pub const LB_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

/// Ethernet header without VLAN tags.
pub const ETH_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const IPV6_HEADER_LEN: usize = 40;
const TTL: u8 = 64;
const SEQ: u32 = 1000;
const ACK: u32 = 2000;
const WINDOW: u16 = 64240;
/// NOP, NOP, NOP, end of options: the smallest non-empty option block (IHL 6).
const IP_OPTIONS: [u8; 4] = [1, 1, 1, 0];
const FRAGMENT_ID: u16 = 0x1234;
const ECHO_ID: u16 = 0x4c42;
const ECHO_SEQ: u16 = 7;
const ECHO_PAYLOAD: &[u8] = b"ping payload";

/// Serializes a finished etherparse builder. Fixtures are small, so running out
/// of room in a frame is a bug in the calling test.
macro_rules! frame {
    ($builder:expr, $payload:expr) => {{
        let builder = $builder;
        let payload: &[u8] = $payload;
        let mut frame = Vec::with_capacity(builder.size(payload.len()));
        builder
            .write(&mut frame, payload)
            .expect("fixture payload fits in a frame");
        frame
    }};
}

/// Ethernet from the client to the load balancer, and an IP header of the
/// family of `src` and `dst`.
fn eth_ip(src: IpAddr, dst: IpAddr) -> PacketBuilderStep<IpHeaders> {
    eth_ip_between(CLIENT_MAC, LB_MAC, src, dst)
}

fn eth_ip_between(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
) -> PacketBuilderStep<IpHeaders> {
    let builder = PacketBuilder::ethernet2(src_mac, dst_mac);
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => builder.ipv4(src.octets(), dst.octets(), TTL),
        (IpAddr::V6(src), IpAddr::V6(dst)) => builder.ipv6(src.octets(), dst.octets(), TTL),
        _ => panic!("{src} and {dst} are of different families"),
    }
}

pub fn tcp_syn(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Vec<u8> {
    let (src, dst) = (src.into(), dst.into());
    frame!(
        eth_ip(src.ip(), dst.ip())
            .tcp(src.port(), dst.port(), SEQ, WINDOW)
            .syn(),
        &[]
    )
}

/// An established-connection segment (ACK set) carrying `payload`.
pub fn tcp_ack(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = (src.into(), dst.into());
    frame!(
        eth_ip(src.ip(), dst.ip())
            .tcp(src.port(), dst.port(), SEQ, WINDOW)
            .ack(ACK),
        payload
    )
}

pub fn udp(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = (src.into(), dst.into());
    frame!(
        eth_ip(src.ip(), dst.ip()).udp(src.port(), dst.port()),
        payload
    )
}

/// An IPv6 SYN with extension headers before TCP: hop-by-hop options (a PadN)
/// and destination options, which the data path must walk past.
pub fn ipv6_tcp_syn_with_extensions(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    // PadN of 4 bytes: with next header and length, one 8-byte unit.
    let padding =
        Ipv6RawExtHeader::new_raw(IpNumber::IPV6_DESTINATION_OPTIONS, &[1, 4, 0, 0, 0, 0])
            .expect("a valid option block");
    let destination_options = Ipv6RawExtHeader::new_raw(IpNumber::TCP, &[1, 4, 0, 0, 0, 0])
        .expect("a valid option block");
    let extensions = Ipv6Extensions {
        hop_by_hop_options: Some(padding),
        destination_options: Some(destination_options),
        ..Default::default()
    };
    ipv6_with_extensions(src, dst, IpNumber::IPV6_HEADER_HOP_BY_HOP, extensions)
}

/// The first fragment of an IPv6 TCP SYN: a fragment header before TCP.
pub fn ipv6_fragment(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let extensions = Ipv6Extensions {
        fragment: Some(Ipv6FragmentHeader::new(
            IpNumber::TCP,
            IpFragOffset::ZERO,
            true,
            u32::from(FRAGMENT_ID),
        )),
        ..Default::default()
    };
    ipv6_with_extensions(src, dst, IpNumber::IPV6_FRAGMENTATION_HEADER, extensions)
}

/// An IPv6 SYN with `extensions` between the IPv6 header and TCP, `first`
/// being the first of them.
fn ipv6_with_extensions(
    src: SocketAddr,
    dst: SocketAddr,
    first: IpNumber,
    extensions: Ipv6Extensions,
) -> Vec<u8> {
    let (IpAddr::V6(src_ip), IpAddr::V6(dst_ip)) = (src.ip(), dst.ip()) else {
        panic!("{src} and {dst} must be IPv6");
    };
    let ip = etherparse::Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: 0,
        next_header: first,
        hop_limit: TTL,
        source: src_ip.octets(),
        destination: dst_ip.octets(),
    };
    frame!(
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ip(IpHeaders::Ipv6(ip, extensions))
            .tcp(src.port(), dst.port(), SEQ, WINDOW)
            .syn(),
        &[]
    )
}

/// UDP with checksum 0 ("none", RFC 768), which NAT must leave at 0.
pub fn udp_no_checksum(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut frame = udp(src, dst, payload);
    let check = ETH_LEN + Ipv4Header::MIN_LEN + 6;
    frame[check..check + 2].fill(0);
    frame
}

/// A SYN whose IPv4 header carries options (IHL 6), so the transport header
/// does not start at the usual offset.
pub fn tcp_syn_with_ip_options(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let mut ip = ipv4_header(src, dst, IpNumber::TCP);
    ip.options = Ipv4Options::from(IP_OPTIONS);
    frame!(
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ip(IpHeaders::Ipv4(ip, Default::default()))
            .tcp(src.port(), dst.port(), SEQ, WINDOW)
            .syn(),
        &[]
    )
}

/// The first fragment of a UDP datagram (more-fragments set). Its UDP checksum
/// covers only this fragment's payload, so it is valid on its own.
pub fn ip_fragment(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let mut ip = ipv4_header(src, dst, IpNumber::UDP);
    ip.identification = FRAGMENT_ID;
    ip.dont_fragment = false;
    ip.more_fragments = true;
    ip.fragment_offset = IpFragOffset::ZERO;
    frame!(
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ip(IpHeaders::Ipv4(ip, Default::default()))
            .udp(src.port(), dst.port()),
        b"first fragment"
    )
}

/// `frame`, an IPv4 datagram filling its frame, as its two
/// fragments: the first with the first `first_len` bytes of the IP payload
/// (a multiple of 8) and more-fragments set, the second with the rest at
/// that offset; each with its total length and header checksum, Don't
/// Fragment clear.
pub fn ipv4_fragments(frame: &[u8], first_len: usize) -> [Vec<u8>; 2] {
    assert!(
        first_len.is_multiple_of(8),
        "fragment offsets count 8 bytes"
    );
    let ip = ETH_LEN;
    let header_len = usize::from(frame[ip] & 0x0f) * 4;
    let payload = &frame[ip + header_len..];
    let fragment = |bytes: &[u8], offset: usize, more: bool| {
        let mut fragment = frame[..ip + header_len].to_vec();
        fragment.extend_from_slice(bytes);
        let total = u16::try_from(header_len + bytes.len()).expect("a small datagram");
        fragment[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
        let flags =
            u16::try_from(offset / 8).expect("a small offset") | if more { 0x2000 } else { 0 };
        fragment[ip + 6..ip + 8].copy_from_slice(&flags.to_be_bytes());
        // A fragment's: the header checksum only.
        fix_checksums(&mut fragment);
        fragment
    };
    [
        fragment(&payload[..first_len], 0, true),
        fragment(&payload[first_len..], first_len, false),
    ]
}

/// A broadcast "who has `target`" from the client.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let arp = ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: CLIENT_MAC,
        sender_ipv4: sender.octets(),
        target_mac: [0; 6],
        target_ipv4: target.octets(),
    };
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, [0xff; 6]).arp(arp.into());
    let mut frame = Vec::with_capacity(builder.size());
    builder
        .write(&mut frame)
        .expect("an ARP request fits in a frame");
    frame
}

/// A SYN from `[2001:db8::2]:40000` to `[2001:db8::1]:80`: lb balances IPv4
/// only, so this is for the pass-through path.
pub fn ipv6_tcp_syn() -> Vec<u8> {
    let src = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    let dst = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    frame!(
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv6(src.octets(), dst.octets(), TTL)
            .tcp(40000, 80, SEQ, WINDOW)
            .syn(),
        &[]
    )
}

/// An ICMP (ICMPv6) echo request (ping) from `src` to `dst`.
pub fn icmp_echo_request(src: impl Into<IpAddr>, dst: impl Into<IpAddr>) -> Vec<u8> {
    let (src, dst) = (src.into(), dst.into());
    let builder = eth_ip(src, dst);
    if src.is_ipv6() {
        frame!(builder.icmpv6_echo_request(ECHO_ID, ECHO_SEQ), ECHO_PAYLOAD)
    } else {
        frame!(builder.icmpv4_echo_request(ECHO_ID, ECHO_SEQ), ECHO_PAYLOAD)
    }
}

/// The answer to `icmp_echo_request(src, dst)` as a host would send it: a
/// fresh TTL (64, whatever the request's), addresses and MACs swapped.
pub fn icmp_echo_reply(src: impl Into<IpAddr>, dst: impl Into<IpAddr>) -> Vec<u8> {
    let (src, dst) = (src.into(), dst.into());
    let builder = eth_ip_between(LB_MAC, CLIENT_MAC, dst, src);
    if src.is_ipv6() {
        frame!(builder.icmpv6_echo_reply(ECHO_ID, ECHO_SEQ), ECHO_PAYLOAD)
    } else {
        frame!(builder.icmpv4_echo_reply(ECHO_ID, ECHO_SEQ), ECHO_PAYLOAD)
    }
}

/// An ICMP "fragmentation needed" (ICMPv6 "packet too big") from `src` to
/// `dst` quoting the IP packet inside `quoted_frame` (an Ethernet frame): as
/// much of it as a router quotes (548 bytes for IPv4, a 1280-byte message for
/// IPv6).
pub fn icmp_too_big(
    src: impl Into<IpAddr>,
    dst: impl Into<IpAddr>,
    quoted_frame: &[u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Vec<u8> {
    let quoted = &quoted_frame[ETH_LEN..];
    let (src, dst) = (src.into(), dst.into());
    let builder = eth_ip_between(src_mac, dst_mac, src, dst);
    if src.is_ipv6() {
        frame!(
            builder.icmpv6(Icmpv6Type::PacketTooBig { mtu: 1400 }),
            &quoted[..quoted.len().min(1280 - IPV6_HEADER_LEN - 8)]
        )
    } else {
        frame!(
            builder.icmpv4(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 }
            )),
            &quoted[..quoted.len().min(548)]
        )
    }
}

/// The first `len` bytes of `packet`, for bounds-check tests.
pub fn truncated(packet: &[u8], len: usize) -> Vec<u8> {
    packet[..len.min(packet.len())].to_vec()
}

/// An IPv4 header as etherparse's builder would make it; the builder fills in
/// the lengths and checksums.
fn ipv4_header(src: SocketAddrV4, dst: SocketAddrV4, protocol: IpNumber) -> Ipv4Header {
    Ipv4Header::new(0, TTL, protocol, src.ip().octets(), dst.ip().octets())
        .expect("an empty payload fits")
}

/// Checks the IPv4 header checksum and, for unfragmented packets, the TCP, UDP
/// or ICMP checksum of an Ethernet frame; for IPv6, the TCP, UDP or ICMPv6
/// checksum after any hop-by-hop, routing and destination options headers.
/// The error names the wrong checksum.
///
/// A UDP checksum of 0 means "none" and is accepted (over IPv6 it is invalid,
/// but the data path must only keep it as it came). Fragments have only their
/// IP header checked: the transport checksum covers the reassembled datagram.
pub fn verify_checksums(frame: &[u8]) -> Result<()> {
    ensure!(frame.len() >= ETH_LEN, "frame of {} bytes", frame.len());
    match be16(frame, 12) {
        ETHERTYPE_IPV4 => verify_ipv4(&frame[ETH_LEN..]),
        ETHERTYPE_IPV6 => verify_ipv6(&frame[ETH_LEN..]),
        ether_type => bail!("not IP (EtherType {ether_type:#06x})"),
    }
}

fn verify_ipv4(ip: &[u8]) -> Result<()> {
    ensure!(
        ip.len() >= Ipv4Header::MIN_LEN,
        "{} bytes are too short for IPv4",
        ip.len()
    );
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    ensure!(
        ip[0] >> 4 == 4 && header_len >= Ipv4Header::MIN_LEN,
        "bad IPv4 version/IHL byte {:#04x}",
        ip[0]
    );
    let total_len = usize::from(be16(ip, 2));
    ensure!(
        (header_len..=ip.len()).contains(&total_len),
        "IPv4 total length {total_len} does not fit {} bytes after Ethernet",
        ip.len()
    );
    // Anything past the total length is Ethernet padding.
    let ip = &ip[..total_len];
    compare(
        "IPv4 header",
        be16(ip, 10),
        internet_checksum(&[&ip[..10], &ip[12..header_len]]),
    )?;

    let more_fragments_or_offset = be16(ip, 6) & 0x3fff;
    if more_fragments_or_offset != 0 {
        return Ok(());
    }
    let l4 = &ip[header_len..];
    let l4_len = u16::try_from(l4.len()).context("IPv4 payload length")?;
    let mut pseudo_header = Vec::with_capacity(12);
    pseudo_header.extend_from_slice(&ip[12..20]);
    pseudo_header.extend_from_slice(&[0, ip[9]]);
    pseudo_header.extend_from_slice(&l4_len.to_be_bytes());
    if IpNumber(ip[9]) == IpNumber::ICMP {
        ensure!(l4.len() >= 8, "ICMP message of {} bytes", l4.len());
        return compare(
            "ICMP",
            be16(l4, 2),
            internet_checksum(&[&l4[..2], &l4[4..]]),
        );
    }
    verify_transport(IpNumber(ip[9]), &pseudo_header, l4)
}

fn verify_ipv6(ip: &[u8]) -> Result<()> {
    ensure!(
        ip.len() >= IPV6_HEADER_LEN && ip[0] >> 4 == 6,
        "not an IPv6 header"
    );
    let end = IPV6_HEADER_LEN + usize::from(be16(ip, 4));
    ensure!(
        end <= ip.len(),
        "IPv6 payload length {} does not fit {} bytes after Ethernet",
        end - IPV6_HEADER_LEN,
        ip.len()
    );
    let ip = &ip[..end];
    let (mut next, mut offset) = (ip[6], IPV6_HEADER_LEN);
    loop {
        match IpNumber(next) {
            IpNumber::IPV6_HEADER_HOP_BY_HOP
            | IpNumber::IPV6_ROUTE_HEADER
            | IpNumber::IPV6_DESTINATION_OPTIONS => {
                ensure!(offset + 8 <= ip.len(), "truncated IPv6 extension header");
                next = ip[offset];
                offset += (usize::from(ip[offset + 1]) + 1) * 8;
            }
            IpNumber::IPV6_FRAGMENTATION_HEADER => return Ok(()),
            _ => break,
        }
    }
    ensure!(
        offset <= ip.len(),
        "IPv6 extension headers overrun the packet"
    );
    let l4 = &ip[offset..];
    let l4_len = u32::try_from(l4.len()).context("IPv6 payload length")?;
    let mut pseudo_header = Vec::with_capacity(40);
    pseudo_header.extend_from_slice(&ip[8..40]);
    pseudo_header.extend_from_slice(&l4_len.to_be_bytes());
    pseudo_header.extend_from_slice(&[0, 0, 0, next]);
    if IpNumber(next) == IpNumber::IPV6_ICMP {
        ensure!(l4.len() >= 8, "ICMPv6 message of {} bytes", l4.len());
        return compare(
            "ICMPv6",
            be16(l4, 2),
            internet_checksum(&[&pseudo_header, &l4[..2], &l4[4..]]),
        );
    }
    verify_transport(IpNumber(next), &pseudo_header, l4)
}

/// The TCP or UDP checksum of `l4` under `pseudo_header`; other protocols pass.
fn verify_transport(proto: IpNumber, pseudo_header: &[u8], l4: &[u8]) -> Result<()> {
    match proto {
        IpNumber::TCP => {
            ensure!(l4.len() >= 20, "TCP segment of {} bytes", l4.len());
            compare(
                "TCP",
                be16(l4, 16),
                internet_checksum(&[pseudo_header, &l4[..16], &l4[18..]]),
            )
        }
        IpNumber::UDP => {
            ensure!(l4.len() >= 8, "UDP datagram of {} bytes", l4.len());
            ensure!(
                usize::from(be16(l4, 4)) == l4.len(),
                "UDP length {} but IP payload of {} bytes",
                be16(l4, 4),
                l4.len()
            );
            let stored = be16(l4, 6);
            if stored == 0 {
                return Ok(());
            }
            // A computed 0 is sent as all ones, since 0 means "none".
            let computed = match internet_checksum(&[pseudo_header, &l4[..6], &l4[8..]]) {
                0 => 0xffff,
                sum => sum,
            };
            compare("UDP", stored, computed)
        }
        _ => Ok(()),
    }
}

/// `frame` as a router forwards it: TTL (hop limit) one less, the IPv4 header
/// checksum recomputed.
pub fn forwarded(frame: &[u8]) -> Vec<u8> {
    with_ttl(frame, ttl_of(frame) - 1)
}

/// The TTL (IPv6: hop limit) of an IP frame.
pub fn ttl_of(frame: &[u8]) -> u8 {
    frame[ttl_offset(frame)]
}

/// `frame` with its TTL (hop limit) set to `ttl`, the IPv4 header checksum
/// recomputed.
pub fn with_ttl(frame: &[u8], ttl: u8) -> Vec<u8> {
    let mut frame = frame.to_vec();
    let at = ttl_offset(&frame);
    frame[at] = ttl;
    if be16(&frame, 12) == ETHERTYPE_IPV4 {
        let ip = ETH_LEN;
        let header_len = usize::from(frame[ip] & 0x0f) * 4;
        let check = internet_checksum(&[&frame[ip..ip + 10], &frame[ip + 12..ip + header_len]]);
        frame[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());
    }
    frame
}

fn ttl_offset(frame: &[u8]) -> usize {
    match be16(frame, 12) {
        ETHERTYPE_IPV4 => ETH_LEN + 8,
        ETHERTYPE_IPV6 => ETH_LEN + 7,
        ether_type => panic!("no TTL in a frame of EtherType {ether_type:#06x}"),
    }
}

fn compare(what: &str, stored: u16, computed: u16) -> Result<()> {
    ensure!(
        stored == computed,
        "{what} checksum is {stored:#06x}, expected {computed:#06x}"
    );
    Ok(())
}

fn be16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_be_bytes([bytes[offset], bytes[offset + 1]])
}

/// RFC 1071 checksum of the concatenated `parts` (only the last may be odd),
/// computed from scratch: the independent reference the data path is checked
/// against.
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let data = parts.concat();
    let mut sum: u32 = data
        .chunks(2)
        .map(|word| u32::from(word[0]) << 8 | u32::from(word.get(1).copied().unwrap_or(0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The frame the data path must send for `input` after DNAT to `new_dst`, with
/// the given MACs. Everything else (TTL, IP ID, TCP flags, payload) unchanged;
/// a UDP checksum of 0 stays 0.
///
/// # Panics
/// If `input` is not an unfragmented IPv4 TCP or UDP frame.
pub fn expect_dnat(
    input: &[u8],
    new_dst: impl Into<SocketAddr>,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Vec<u8> {
    expect_nat(input, Side::Destination, new_dst.into(), src_mac, dst_mac)
}

/// The frame the data path must send for `input` (a backend's reply) after
/// reverse NAT of its source to `new_src` (the VIP and service port).
///
/// # Panics
/// If `input` is not an unfragmented IPv4 TCP or UDP frame.
pub fn expect_snat(
    input: &[u8],
    new_src: impl Into<SocketAddr>,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Vec<u8> {
    expect_nat(input, Side::Source, new_src.into(), src_mac, dst_mac)
}

#[derive(Clone, Copy)]
enum Side {
    Source,
    Destination,
}

impl Side {
    fn rewrite_ports(self, ports: (u16, u16), port: u16) -> (u16, u16) {
        match self {
            Side::Source => (port, ports.1),
            Side::Destination => (ports.0, port),
        }
    }
}

/// Decodes `input`, rewrites one side's address and port, and encodes it again,
/// so lengths and checksums are computed from scratch. Panics rather than
/// returning errors: the input is a fixture, so a bad one is a bug in the test.
fn expect_nat(
    input: &[u8],
    side: Side,
    addr: SocketAddr,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Vec<u8> {
    let headers = PacketHeaders::from_ethernet_slice(input).expect("NAT input decodes");
    let ip = match (headers.net, addr.ip()) {
        (Some(NetHeaders::Ipv4(mut ip, exts)), IpAddr::V4(new)) => {
            match side {
                Side::Source => ip.source = new.octets(),
                Side::Destination => ip.destination = new.octets(),
            }
            IpHeaders::Ipv4(ip, exts)
        }
        (Some(NetHeaders::Ipv6(mut ip, exts)), IpAddr::V6(new)) => {
            match side {
                Side::Source => ip.source = new.octets(),
                Side::Destination => ip.destination = new.octets(),
            }
            IpHeaders::Ipv6(ip, exts)
        }
        _ => panic!("NAT input is not IP of the family of {addr}"),
    };
    let header_len = ip.header_len();
    let payload = headers.payload.slice();
    let builder = PacketBuilder::ethernet2(src_mac, dst_mac).ip(ip);
    match headers.transport {
        Some(TransportHeader::Tcp(mut tcp)) => {
            (tcp.source_port, tcp.destination_port) =
                side.rewrite_ports((tcp.source_port, tcp.destination_port), addr.port());
            frame!(builder.tcp_header(tcp), payload)
        }
        Some(TransportHeader::Udp(udp)) => {
            let (source, destination) =
                side.rewrite_ports((udp.source_port, udp.destination_port), addr.port());
            let mut frame = frame!(builder.udp(source, destination), payload);
            if udp.checksum == 0 {
                let check = ETH_LEN + header_len + 6;
                frame[check..check + 2].fill(0);
            }
            frame
        }
        _ => panic!("NAT input is neither TCP nor UDP (or is a fragment)"),
    }
}

// --- Repairs and 5-tuples, for the fuzzer's oracle ---------------------------

const VLAN_LEN: usize = 4;
const ETHERTYPE_VLAN: u16 = 0x8100;
/// IPv6 extension headers the data path walks past, and the fragment header.
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_DEST_OPTIONS: u8 = 60;

/// Where the IP header of `frame` starts: after Ethernet and one VLAN tag, if any.
pub fn ip_start(frame: &[u8]) -> usize {
    if frame.get(12..14) == Some(&ETHERTYPE_VLAN.to_be_bytes()[..]) {
        ETH_LEN + VLAN_LEN
    } else {
        ETH_LEN
    }
}

/// Recomputes the IPv4 header checksum and, for an unfragmented TCP or UDP
/// packet whose total length fits the frame, the transport checksum over the
/// bytes the total length covers (how [`verify_checksums`] reads them).
/// A UDP checksum of 0 ("none") stays 0.
pub fn fix_checksums(frame: &mut [u8]) {
    let ip = ip_start(frame);
    if frame.get(ip - 2..ip) == Some(&ETHERTYPE_IPV6.to_be_bytes()[..]) {
        return fix_ipv6_checksum(frame, ip);
    }
    if frame.get(ip - 2..ip) != Some(&ETHERTYPE_IPV4.to_be_bytes()[..]) || frame.len() < ip + 20 {
        return;
    }
    let header_len = usize::from(frame[ip] & 0x0f) * 4;
    if header_len < 20 || frame.len() < ip + header_len {
        return;
    }
    frame[ip + 10..ip + 12].fill(0);
    let sum = internet_checksum(&[&frame[ip..ip + header_len]]);
    frame[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());

    let total = usize::from(u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]));
    let fragment = u16::from_be_bytes([frame[ip + 6], frame[ip + 7]]) & 0x3fff != 0;
    if fragment || total < header_len || frame.len() < ip + total {
        return;
    }
    let proto = frame[ip + 9];
    let l4_len = total - header_len;
    let mut pseudo_header = frame[ip + 12..ip + 20].to_vec();
    pseudo_header.extend_from_slice(&[0, proto]);
    pseudo_header.extend_from_slice(&(l4_len as u16).to_be_bytes());
    write_l4_checksum(frame, proto, ip + header_len..ip + total, pseudo_header);
}

/// The IPv6 counterpart: the TCP or UDP checksum after the extension headers
/// the data path walks, over the bytes the payload length covers.
fn fix_ipv6_checksum(frame: &mut [u8], ip: usize) {
    let Some((proto, l4)) = ipv6_upper_layer(frame, ip) else {
        return;
    };
    let end =
        ip + IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([frame[ip + 4], frame[ip + 5]]));
    if end > frame.len() || l4 > end {
        return;
    }
    let mut pseudo_header = frame[ip + 8..ip + 40].to_vec();
    pseudo_header.extend_from_slice(&((end - l4) as u32).to_be_bytes());
    pseudo_header.extend_from_slice(&[0, 0, 0, proto]);
    write_l4_checksum(frame, proto, l4..end, pseudo_header);
}

/// Writes the TCP or UDP checksum of the segment at `l4` (a UDP checksum of 0
/// stays 0); other protocols and segments too short for a checksum are left.
fn write_l4_checksum(frame: &mut [u8], proto: u8, l4: Range<usize>, mut pseudo_header: Vec<u8>) {
    let check = match proto {
        PROTO_TCP if l4.len() >= 20 => l4.start + 16,
        PROTO_UDP if l4.len() >= 8 && frame[l4.start + 6..l4.start + 8] != [0, 0] => l4.start + 6,
        _ => return,
    };
    frame[check..check + 2].fill(0);
    pseudo_header.extend_from_slice(&frame[l4]);
    let sum = match internet_checksum(&[&pseudo_header]) {
        0 if proto == PROTO_UDP => 0xffff,
        sum => sum,
    };
    frame[check..check + 2].copy_from_slice(&sum.to_be_bytes());
}

/// The upper-layer protocol of an IPv6 frame and its offset, walking what the
/// data path walks (at most four hop-by-hop, destination options or finished
/// routing headers); `None` for a fragment, an unfinished route or a longer
/// chain.
fn ipv6_upper_layer(frame: &[u8], ip: usize) -> Option<(u8, usize)> {
    let (mut next, mut offset) = (*frame.get(ip + 6)?, ip + IPV6_HEADER_LEN);
    for _ in 0..=4 {
        match next {
            IPV6_HOP_BY_HOP | IPV6_DEST_OPTIONS | IPV6_ROUTING => {}
            IPV6_FRAGMENT => return None,
            _ => return Some((next, offset)),
        }
        let header = frame.get(offset..offset + 4)?;
        if next == IPV6_ROUTING && header[3] != 0 {
            return None;
        }
        next = header[0];
        offset += (usize::from(header[1]) + 1) * 8;
    }
    None
}

/// A TCP or UDP 5-tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
}

/// Whether `frame` is untagged IPv4, and a datagram's fragment other than
/// its first.
pub fn is_later_ipv4_fragment(frame: &[u8]) -> bool {
    frame.len() >= ETH_LEN + 20
        && be16(frame, 12) == ETHERTYPE_IPV4
        && frame[ETH_LEN] >> 4 == 4
        && be16(frame, ETH_LEN + 6) & 0x1fff != 0
}

/// The 5-tuple of a packet lb may own, with its L4 offset: untagged IPv4
/// with a valid version and IHL, not a datagram's later fragment (its first
/// has the datagram's ports); or untagged IPv6 whose
/// extension headers the data path walks, neither address IPv4-mapped; TCP or
/// UDP, ports inside the frame. Lengths are not checked: a packet lb may own
/// can still be malformed, and may then pass.
pub fn owned_tuple(frame: &[u8]) -> Option<(Tuple, usize)> {
    let ip = frame.get(ETH_LEN..)?;
    let (src, dst, proto, l4) = if be16(frame, 12) == ETHERTYPE_IPV6 {
        if ip.len() < IPV6_HEADER_LEN || ip[0] >> 4 != 6 {
            return None;
        }
        let (proto, l4) = ipv6_upper_layer(frame, ETH_LEN)?;
        let addr = |at: usize| {
            let bytes: [u8; 16] = ip[at..at + 16].try_into().expect("16 bytes");
            Ipv6Addr::from(bytes)
        };
        let (src, dst) = (addr(8), addr(24));
        if src.to_ipv4_mapped().is_some() || dst.to_ipv4_mapped().is_some() {
            return None;
        }
        (IpAddr::V6(src), IpAddr::V6(dst), proto, l4)
    } else {
        if be16(frame, 12) != ETHERTYPE_IPV4 || ip.len() < 20 || ip[0] >> 4 != 4 {
            return None;
        }
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        // A later fragment has no ports; the first has the datagram's.
        if header_len < 20 || is_later_ipv4_fragment(frame) {
            return None;
        }
        let addr = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
        (
            IpAddr::V4(addr(12)),
            IpAddr::V4(addr(16)),
            ip[9],
            ETH_LEN + header_len,
        )
    };
    if !matches!(proto, PROTO_TCP | PROTO_UDP) {
        return None;
    }
    let ports = frame.get(l4..l4 + 4)?;
    let port = |at: usize| u16::from_be_bytes([ports[at], ports[at + 1]]);
    let tuple = Tuple {
        src: SocketAddr::new(src, port(0)),
        dst: SocketAddr::new(dst, port(2)),
        proto,
    };
    Some((tuple, l4))
}

#[cfg(test)]
mod tests {
    use lb_common::checksum;

    use super::*;

    const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const VIP_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const CLIENT: SocketAddrV4 = SocketAddrV4::new(CLIENT_IP, 40000);
    const VIP: SocketAddrV4 = SocketAddrV4::new(VIP_IP, 80);
    const BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 11), 30080);
    const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];

    fn ipv4_fixtures() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("tcp_syn", tcp_syn(CLIENT, VIP)),
            ("tcp_ack", tcp_ack(CLIENT, VIP, b"hello")),
            ("tcp_ack odd payload", tcp_ack(CLIENT, VIP, b"odd")),
            ("udp", udp(CLIENT, VIP, b"ping")),
            ("udp_no_checksum", udp_no_checksum(CLIENT, VIP, b"ping")),
            ("ip options", tcp_syn_with_ip_options(CLIENT, VIP)),
            ("fragment", ip_fragment(CLIENT, VIP)),
        ]
    }

    #[test]
    fn built_frames_have_valid_checksums() {
        for (name, frame) in ipv4_fixtures() {
            verify_checksums(&frame).unwrap_or_else(|err| panic!("{name}: {err:#}"));
        }
    }

    #[test]
    fn fixtures_have_the_promised_shape() -> Result<()> {
        let options = tcp_syn_with_ip_options(CLIENT, VIP);
        assert_eq!(options[ETH_LEN] & 0x0f, 6, "IHL");
        let headers = PacketHeaders::from_ethernet_slice(&options)?;
        let Some(TransportHeader::Tcp(tcp)) = headers.transport else {
            panic!("no TCP after IP options");
        };
        assert!(tcp.syn && !tcp.ack);
        assert_eq!(tcp.destination_port, VIP.port());

        let fragment = ip_fragment(CLIENT, VIP);
        let flags = be16(&fragment, ETH_LEN + 6);
        assert_eq!(flags, 0x2000, "MF set, offset 0");

        assert_eq!(be16(&udp_no_checksum(CLIENT, VIP, b"x"), ETH_LEN + 26), 0);
        assert_eq!(be16(&arp_request(CLIENT_IP, VIP_IP), 12), 0x0806);
        assert_eq!(truncated(&options, 20).len(), 20);
        Ok(())
    }

    #[test]
    fn non_ip_is_reported_and_ipv6_is_checked() {
        let err = verify_checksums(&arp_request(CLIENT_IP, VIP_IP)).unwrap_err();
        assert!(err.to_string().contains("not IP"), "{err}");
        verify_checksums(&ipv6_tcp_syn()).expect("a valid IPv6 SYN");
        let src = "[2001:db8::2]:40000".parse().unwrap();
        let dst = "[2001:db8::1]:80".parse().unwrap();
        verify_checksums(&ipv6_tcp_syn_with_extensions(src, dst)).expect("extension headers");
        let mut bad = udp(src, dst, b"ping");
        *bad.last_mut().unwrap() ^= 0x80;
        let err = verify_checksums(&bad).unwrap_err().to_string();
        assert!(err.starts_with("UDP"), "{err}");
    }

    #[test]
    fn flipped_bytes_are_detected() {
        let frame = tcp_ack(CLIENT, VIP, b"hello");
        let cases = [
            (ETH_LEN + 8, "IPv4 header"),  // TTL
            (ETH_LEN + 16, "IPv4 header"), // destination address
            (frame.len() - 1, "TCP"),      // payload
            (ETH_LEN + 20 + 2, "TCP"),     // destination port
        ];
        for (offset, what) in cases {
            let mut bad = frame.clone();
            bad[offset] ^= 0x01;
            let err = verify_checksums(&bad).unwrap_err().to_string();
            assert!(err.starts_with(what), "byte {offset}: {err}");
        }
        let mut bad = udp(CLIENT, VIP, b"ping");
        *bad.last_mut().unwrap() ^= 0x80;
        let err = verify_checksums(&bad).unwrap_err().to_string();
        assert!(err.starts_with("UDP"), "{err}");
    }

    #[test]
    fn ethernet_padding_is_ignored() -> Result<()> {
        let mut frame = tcp_syn(CLIENT, VIP);
        frame.resize(64, 0xaa);
        verify_checksums(&frame)
    }

    #[test]
    fn dnat_expectation_rewrites_only_destination() -> Result<()> {
        for (name, input) in ipv4_fixtures() {
            if name == "fragment" {
                continue; // Checked below.
            }
            let output = expect_dnat(&input, BACKEND, LB_MAC, NODE_MAC);
            verify_checksums(&output).with_context(|| name.to_owned())?;
            assert_eq!(output.len(), input.len(), "{name}");
            assert_eq!(&output[..6], &NODE_MAC, "{name}");
            assert_eq!(&output[6..12], &LB_MAC, "{name}");
            let header_len = usize::from(input[ETH_LEN] & 0x0f) * 4;
            let l4 = ETH_LEN + header_len;
            assert_eq!(&output[ETH_LEN + 16..ETH_LEN + 20], &BACKEND.ip().octets());
            assert_eq!(be16(&output, l4 + 2), BACKEND.port(), "{name}");
            // Everything but addresses, ports and checksums is untouched.
            let mut masked = [input.clone(), output];
            for frame in &mut masked {
                frame[..12].fill(0);
                frame[ETH_LEN + 10..ETH_LEN + 12].fill(0);
                frame[ETH_LEN + 16..ETH_LEN + 20].fill(0);
                frame[l4 + 2..l4 + 4].fill(0);
                let check = l4 + if name.starts_with("udp") { 6 } else { 16 };
                frame[check..check + 2].fill(0);
            }
            assert_eq!(masked[0], masked[1], "{name}");
        }
        let zero = expect_dnat(
            &udp_no_checksum(CLIENT, VIP, b"x"),
            BACKEND,
            LB_MAC,
            NODE_MAC,
        );
        assert_eq!(be16(&zero, ETH_LEN + 26), 0, "UDP checksum 0 stays 0");
        Ok(())
    }

    #[test]
    #[should_panic(expected = "neither TCP nor UDP")]
    fn dnat_expectation_rejects_fragments() {
        expect_dnat(&ip_fragment(CLIENT, VIP), BACKEND, LB_MAC, NODE_MAC);
    }

    #[test]
    fn snat_expectation_rewrites_only_source() -> Result<()> {
        let reply = tcp_ack(BACKEND, CLIENT, b"node-1");
        let output = expect_snat(&reply, VIP, LB_MAC, CLIENT_MAC);
        verify_checksums(&output)?;
        let headers = PacketHeaders::from_ethernet_slice(&output)?;
        let Some(NetHeaders::Ipv4(ip, _)) = headers.net else {
            panic!("not IPv4");
        };
        assert_eq!(ip.source, VIP.ip().octets());
        assert_eq!(ip.destination, CLIENT.ip().octets());
        let Some(TransportHeader::Tcp(tcp)) = headers.transport else {
            panic!("not TCP");
        };
        assert_eq!(
            (tcp.source_port, tcp.destination_port),
            (VIP.port(), CLIENT.port())
        );
        assert_eq!(headers.payload.slice(), b"node-1");
        Ok(())
    }

    /// The data path's incremental updates (lb-common) must land on the same
    /// bytes as the from-scratch expectation.
    #[test]
    fn incremental_dnat_matches_expectation() {
        for input in [tcp_syn(CLIENT, VIP), udp(CLIENT, VIP, b"ping")] {
            let expected = expect_dnat(&input, BACKEND, CLIENT_MAC, LB_MAC);
            let mut frame = input.clone();
            let l4 = ETH_LEN + 20;
            let l4_check = l4 + if frame[ETH_LEN + 9] == 6 { 16 } else { 6 };
            let read16 = |f: &[u8], at: usize| u16::from_ne_bytes([f[at], f[at + 1]]);
            let read32 =
                |f: &[u8], at: usize| u32::from_ne_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
            let old_ip = read32(&frame, ETH_LEN + 16);
            let new_ip = u32::from_ne_bytes(BACKEND.ip().octets());
            let old_port = read16(&frame, l4 + 2);
            let new_port = u16::from_ne_bytes(BACKEND.port().to_be_bytes());
            let ip_check = checksum::replace_u32(read16(&frame, ETH_LEN + 10), old_ip, new_ip);
            let l4_sum = checksum::replace_u32(read16(&frame, l4_check), old_ip, new_ip);
            let l4_sum = checksum::replace_u16(l4_sum, old_port, new_port);
            frame[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&ip_check.to_ne_bytes());
            frame[ETH_LEN + 16..ETH_LEN + 20].copy_from_slice(&new_ip.to_ne_bytes());
            frame[l4 + 2..l4 + 4].copy_from_slice(&new_port.to_ne_bytes());
            frame[l4_check..l4_check + 2].copy_from_slice(&l4_sum.to_ne_bytes());
            assert_eq!(frame, expected);
        }
    }

    #[test]
    fn damaged_checksums_are_repaired_and_tuples_read() {
        let v6_client = SocketAddr::new("2001:db8::2".parse().unwrap(), 40000);
        let v6_vip = SocketAddr::new("2001:db8:ff::10".parse().unwrap(), 80);
        for (frame, src, dst, proto) in [
            (
                tcp_ack(CLIENT, VIP, b"odd"),
                CLIENT.into(),
                VIP.into(),
                PROTO_TCP,
            ),
            (
                udp(CLIENT, VIP, b"ping"),
                CLIENT.into(),
                VIP.into(),
                PROTO_UDP,
            ),
            (
                ipv6_tcp_syn_with_extensions(v6_client, v6_vip),
                v6_client,
                v6_vip,
                PROTO_TCP,
            ),
        ] {
            let mut damaged = frame.clone();
            // The last byte is payload (TCP options for the SYN): every
            // checksum over it is wrong now.
            *damaged.last_mut().unwrap() ^= 0xff;
            assert!(verify_checksums(&damaged).is_err());
            fix_checksums(&mut damaged);
            verify_checksums(&damaged).expect("repaired");
            let (tuple, _) = owned_tuple(&frame).expect("a TCP or UDP packet");
            assert_eq!(tuple, Tuple { src, dst, proto });
        }
        let first = ip_fragment(CLIENT, VIP);
        assert_eq!(owned_tuple(&first).map(|(t, _)| t.dst), Some(VIP.into()));
        let [_, later] = ipv4_fragments(&udp(CLIENT, VIP, &[7; 40]), 16);
        assert_eq!(owned_tuple(&later), None);
    }
}
