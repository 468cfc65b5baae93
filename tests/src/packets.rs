//! Ethernet frames for `BPF_PROG_TEST_RUN` fixtures, and expectations for what
//! the data path must make of them.
//!
//! Frames are built with etherparse. Expected NAT output is re-encoded from
//! scratch with etherparse as well, and [`verify_checksums`] is plain arithmetic
//! written here: neither shares code with the incremental checksum updates under
//! test, so a bug there cannot hide in the fixtures.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use anyhow::{Context, Result, bail, ensure};
use etherparse::{
    ArpEthIpv4Packet, ArpOperation, Icmpv4Type, Icmpv6Type, IpFragOffset, IpHeaders, IpNumber,
    Ipv4Header, Ipv4Options, Ipv6Extensions, Ipv6FragmentHeader, Ipv6RawExtHeader, NetHeaders,
    PacketBuilder, PacketBuilderStep, PacketHeaders, TransportHeader,
    icmpv4::DestUnreachableHeader,
};

/// Source MAC of the frames built here (locally administered).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// Destination MAC of the frames built here: the load balancer's interface.
pub const LB_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

const ETH_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPV6_HEADER_LEN: usize = 40;
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

/// The answer to `icmp_echo_request(src, dst)` as a host would send it: the
/// same TTL, addresses and MACs swapped.
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
}
