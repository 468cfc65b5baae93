//! ARP and Neighbor Discovery frames, written out field by field from RFC 826
//! and RFC 4861 (independently of the data path's code), for the fixtures of
//! the responder and the agent's announcements.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::packets::internet_checksum;

const ETH_P_ARP: [u8; 2] = [0x08, 0x06];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const BROADCAST: [u8; 6] = [0xff; 6];
const ICMPV6: u8 = 58;

/// Neighbor Advertisement flags.
pub const NA_SOLICITED: u8 = 0x40;
pub const NA_OVERRIDE: u8 = 0x20;

fn eth(dst: [u8; 6], src: [u8; 6], ether_type: [u8; 2]) -> Vec<u8> {
    [&dst[..], &src, &ether_type].concat()
}

/// An Ethernet/IPv4 ARP packet.
fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    [
        &[0, 1, 0x08, 0x00, 6, 4][..],
        &op.to_be_bytes(),
        &sha,
        &spa.octets(),
        &tha,
        &tpa.octets(),
    ]
    .concat()
}

/// "Who has `target`? Tell `sender`", broadcast from `sender_mac`.
pub fn arp_request(sender_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    [
        eth(BROADCAST, sender_mac, ETH_P_ARP),
        arp(1, sender_mac, sender, [0; 6], target),
    ]
    .concat()
}

/// "`ip` is at `mac`", sent to the asker.
pub fn arp_reply(mac: [u8; 6], ip: Ipv4Addr, asker_mac: [u8; 6], asker: Ipv4Addr) -> Vec<u8> {
    [
        eth(asker_mac, mac, ETH_P_ARP),
        arp(2, mac, ip, asker_mac, asker),
    ]
    .concat()
}

/// A gratuitous ARP: a broadcast request for its own address.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    [eth(BROADCAST, mac, ETH_P_ARP), arp(1, mac, ip, [0; 6], ip)].concat()
}

/// The solicited-node multicast address of `target` (RFC 4291 2.7.1).
pub fn solicited_node(target: Ipv6Addr) -> Ipv6Addr {
    let t = target.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    )
}

/// The Ethernet address of an IPv6 multicast group (RFC 2464 7).
pub fn multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let g = group.octets();
    [0x33, 0x33, g[12], g[13], g[14], g[15]]
}

/// An IPv6 frame carrying the ICMPv6 `message` (checksum field zero), with
/// the checksum filled in and hop limit 255.
fn icmpv6(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    mut message: Vec<u8>,
) -> Vec<u8> {
    let len = u16::try_from(message.len()).expect("a short message");
    let pseudo = [
        &src.octets()[..],
        &dst.octets(),
        &u32::from(len).to_be_bytes(),
        &[0, 0, 0, ICMPV6],
    ]
    .concat();
    let check = internet_checksum(&[&pseudo, &message]);
    message[2..4].copy_from_slice(&check.to_be_bytes());
    let ip = [
        &[0x60, 0, 0, 0][..],
        &len.to_be_bytes(),
        &[ICMPV6, 255],
        &src.octets(),
        &dst.octets(),
    ]
    .concat();
    [eth(dst_mac, src_mac, ETH_P_IPV6), ip, message].concat()
}

/// A link-layer address option (1: source, 2: target).
fn link_option(kind: u8, mac: [u8; 6]) -> Vec<u8> {
    [&[kind, 1][..], &mac].concat()
}

/// A Neighbor Solicitation for `target` from `src`, to its solicited-node
/// group, with the Source Link-Layer Address option.
pub fn neighbor_solicitation(src_mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let group = solicited_node(target);
    let message = [
        &[135, 0, 0, 0, 0, 0, 0, 0][..],
        &target.octets(),
        &link_option(1, src_mac),
    ]
    .concat();
    icmpv6(multicast_mac(group), src_mac, src, group, message)
}

/// [`neighbor_solicitation`] without the option, as RFC 4861 7.2.2 allows
/// only for unicast ones (this one is multicast all the same).
pub fn bare_neighbor_solicitation(src_mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let group = solicited_node(target);
    let message = [&[135, 0, 0, 0, 0, 0, 0, 0][..], &target.octets()].concat();
    icmpv6(multicast_mac(group), src_mac, src, group, message)
}

/// A Neighbor Advertisement of `target` at `mac`, from `src` to `dst`, with
/// `flags` and the Target Link-Layer Address option.
pub fn neighbor_advertisement(
    (dst_mac, dst): ([u8; 6], Ipv6Addr),
    (src_mac, src): ([u8; 6], Ipv6Addr),
    target: Ipv6Addr,
    flags: u8,
) -> Vec<u8> {
    let message = [
        &[136, 0, 0, 0, flags, 0, 0, 0][..],
        &target.octets(),
        &link_option(2, src_mac),
    ]
    .concat();
    icmpv6(dst_mac, src_mac, src, dst, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solicited_node_group_and_mac() {
        let target: Ipv6Addr = "2001:db8:ff::10".parse().unwrap();
        assert_eq!(
            solicited_node(target),
            "ff02::1:ff00:10".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            multicast_mac(solicited_node(target)),
            [0x33, 0x33, 0xff, 0, 0, 0x10]
        );
    }

    #[test]
    fn frames_have_their_wire_sizes_and_valid_checksums() {
        let mac = [2, 0, 0, 0, 0, 1];
        let a: Ipv4Addr = "10.0.0.2".parse().unwrap();
        assert_eq!(arp_request(mac, a, a).len(), 42);
        let src: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let ns = neighbor_solicitation(mac, src, "2001:db8::1".parse().unwrap());
        assert_eq!(ns.len(), 14 + 40 + 32);
        crate::packets::verify_checksums(&ns).unwrap();
    }
}
