//! Answers ARP requests and IPv6 Neighbor Solicitations for VIPs with the MAC
//! of the interface they arrived on, where the VIP is announced at layer 2 on
//! that interface (its mask in `VIPS`), so a router or client
//! on the segment reaches a VIP that no interface carries. Requests for any
//! other address, and anything unusual, pass to the kernel as they came.

use aya_ebpf::bindings::xdp_action;
use lb_common::{Addr, checksum, counters, ipv4_mapped, is_ipv4_mapped};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    forward::{mac_words, set_macs},
    maps::{count, neighbor_answer},
    parse::{Frame, Ip, ptr_at},
    verdict::Verdict,
};

const ETH_P_ARP_BE: u16 = 0x0806u16.to_be();
const ARP_HTYPE_ETHERNET_BE: u16 = 1u16.to_be();
const ARP_REQUEST_BE: u16 = 1u16.to_be();
const ARP_REPLY_BE: u16 = 2u16.to_be();
const ETH_P_IPV4_BE: u16 = 0x0800u16.to_be();

const NEIGHBOR_SOLICITATION: u8 = 135;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// Hop limit every Neighbor Discovery message carries (RFC 4861 7.1.1): it
/// proves the message was not forwarded.
const ND_HOP_LIMIT: u8 = 255;
/// Advertisement flags: Solicited and Override (RFC 4861 4.4).
const NA_SOLICITED_OVERRIDE_BE: u32 = 0x6000_0000u32.to_be();
/// Option types and the length of a link-layer address option, in 8 bytes.
const OPTION_SOURCE_LINK_ADDRESS: u8 = 1;
const OPTION_TARGET_LINK_ADDRESS: u8 = 2;
const OPTION_LINK_ADDRESS_UNITS: u8 = 1;

/// An Ethernet/IPv4 ARP packet (RFC 826).
#[repr(C)]
struct Arp {
    htype: u16,
    ptype: u16,
    hlen: u8,
    plen: u8,
    oper: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

/// A Neighbor Solicitation or Advertisement with its link-layer address
/// option (RFC 4861 4.3, 4.4, 4.6.1).
#[repr(C)]
struct NeighborMessage {
    type_code: [u8; 2],
    check: u16,
    /// Reserved in a solicitation; the flags in an advertisement.
    flags: u32,
    target: [u8; 16],
}

#[repr(C)]
struct LinkAddressOption {
    kind_len: [u8; 2],
    mac: [u8; 6],
}

/// Turns an ARP request for a VIP into the reply, in place. Gratuitous
/// requests (sender = target: another host announcing the address) are not
/// answered. The side path `lb_arp`.
#[inline(always)]
pub fn answer_arp(ctx: &Frame) -> Result<u32, Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).map_err(|_| Verdict::PassNotIp)?;
    let arp: *mut Arp = ptr_at(ctx, EthHdr::LEN).map_err(|_| Verdict::PassNotIp)?;
    // SAFETY: both bounds-checked by `ptr_at`.
    unsafe {
        let request = &mut *arp;
        if (*eth).ether_type != ETH_P_ARP_BE
            || request.htype != ARP_HTYPE_ETHERNET_BE
            || request.ptype != ETH_P_IPV4_BE
            || request.hlen != 6
            || request.plen != 4
            || request.oper != ARP_REQUEST_BE
            || request.spa == request.tpa
        {
            return Err(Verdict::PassNotIp);
        }
        let vip = ipv4_mapped(u32::from_ne_bytes(request.tpa));
        let mac = neighbor_answer(&vip, ctx.ingress_ifindex()).ok_or(Verdict::PassNotIp)?;
        let (asker_mac, asker_ip, vip) = (request.sha, request.spa, request.tpa);
        request.oper = ARP_REPLY_BE;
        request.tha = asker_mac;
        request.tpa = asker_ip;
        request.sha = mac;
        request.spa = vip;
        set_macs(eth, &mac_words(asker_mac), &mac_words(mac));
    }
    count(counters::ARP_REPLY);
    Ok(xdp_action::XDP_TX)
}

/// Whether the ICMPv6 message of `ip` is a Neighbor Solicitation. Its type
/// is read with the code, as the first two bytes every ICMPv6 message has:
/// for a one-byte read the compiler may test `start + offset >= end`,
/// from which the verifier grants no bytes.
#[inline(always)]
pub fn is_solicitation(ctx: &Frame, ip: &Ip) -> bool {
    ptr_at::<[u8; 2]>(ctx, ip.l4_offset)
        // SAFETY: bounds-checked by `ptr_at`.
        .is_ok_and(|header| unsafe { (*header)[0] } == NEIGHBOR_SOLICITATION)
}

/// Turns a Neighbor Solicitation for a VIP into the solicited advertisement,
/// in place: from the VIP to the asker, with the Target Link-Layer Address
/// option in place of the Source one (a solicitation without options, which
/// only unicast ones may be, gets an advertisement without). Solicitations
/// for duplicate address detection (from `::`) and any other option layout
/// pass. `ip.l4_offset` points at the ICMPv6 header. A BPF subprogram of
/// its own, called from the side path `lb_icmp6`: its locals stay off the
/// other ICMPv6 path's stack (`serve_icmp6`'s).
#[inline(never)]
pub fn answer_solicitation(ctx: &Frame, ip: &Ip) -> Result<u32, Verdict> {
    const MESSAGE_LEN: usize = core::mem::size_of::<NeighborMessage>();
    const OPTION_LEN: usize = core::mem::size_of::<LinkAddressOption>();
    let with_option = match ip.l4_len() {
        MESSAGE_LEN => false,
        len if len == MESSAGE_LEN + OPTION_LEN => true,
        _ => return Err(Verdict::PassOtherProto),
    };
    if ip.l4_offset != EthHdr::LEN + Ipv6Hdr::LEN || ip.ttl != ND_HOP_LIMIT || ip.src == [0; 4] {
        return Err(Verdict::PassOtherProto);
    }
    // A multicast solicitation's advertisement must carry the Target
    // Link-Layer Address (RFC 4861 7.2.4), which takes the Source one's room.
    if !with_option && ip.dst[0].to_ne_bytes()[0] == 0xff {
        return Err(Verdict::PassOtherProto);
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let message: *mut NeighborMessage = ptr_at(ctx, ip.l4_offset)?;
    let option: Option<*mut LinkAddressOption> = if with_option {
        Some(ptr_at(ctx, ip.l4_offset + MESSAGE_LEN)?)
    } else {
        None
    };
    // SAFETY: all bounds-checked by `ptr_at`.
    unsafe {
        let solicitation = &mut *message;
        let target = crate::parse::words(&solicitation.target);
        // IPv4 VIPs are keyed in their mapped form: no IPv6 host has one.
        if solicitation.type_code != [NEIGHBOR_SOLICITATION, 0]
            || is_ipv4_mapped(&target)
            || option.is_some_and(|option| {
                (*option).kind_len != [OPTION_SOURCE_LINK_ADDRESS, OPTION_LINK_ADDRESS_UNITS]
            })
        {
            return Err(Verdict::PassOtherProto);
        }
        let mac = neighbor_answer(&target, ctx.ingress_ifindex()).ok_or(Verdict::PassOtherProto)?;
        let asker_mac = (*eth).src_addr;
        // The pseudo-header's sum does not depend on which address is which:
        // only the old destination being replaced by the VIP changes it.
        let mut check = checksum::replace_u128(solicitation.check, &ip.dst, &target);
        let advertisement = [NEIGHBOR_ADVERTISEMENT, 0];
        check = checksum::replace_u16(
            check,
            u16::from_ne_bytes(solicitation.type_code),
            u16::from_ne_bytes(advertisement),
        );
        check = checksum::replace_u32(check, solicitation.flags, NA_SOLICITED_OVERRIDE_BE);
        solicitation.type_code = advertisement;
        solicitation.flags = NA_SOLICITED_OVERRIDE_BE;
        if let Some(option) = option {
            let option = &mut *option;
            let kind_len = [OPTION_TARGET_LINK_ADDRESS, OPTION_LINK_ADDRESS_UNITS];
            check = checksum::replace_u16(
                check,
                u16::from_ne_bytes(option.kind_len),
                u16::from_ne_bytes(kind_len),
            );
            check = replace_mac(check, &option.mac, &mac);
            option.kind_len = kind_len;
            option.mac = mac;
        }
        solicitation.check = check;
        set_addresses(ctx, &target, &ip.src)?;
        set_macs(eth, &mac_words(asker_mac), &mac_words(mac));
    }
    count(counters::NDP_REPLY);
    Ok(xdp_action::XDP_TX)
}

/// Updates `check` for a MAC's three 16-bit words changing.
#[inline(always)]
fn replace_mac(check: u16, old: &[u8; 6], new: &[u8; 6]) -> u16 {
    let mut check = check;
    for i in 0..3 {
        check = checksum::replace_u16(
            check,
            u16::from_ne_bytes([old[2 * i], old[2 * i + 1]]),
            u16::from_ne_bytes([new[2 * i], new[2 * i + 1]]),
        );
    }
    check
}

/// Writes both IPv6 addresses (no checksum of the IP header to keep).
#[inline(always)]
fn set_addresses(ctx: &Frame, src: &Addr, dst: &Addr) -> Result<(), Verdict> {
    let both: *mut [Addr; 2] = ptr_at(ctx, EthHdr::LEN + 8)?;
    // SAFETY: bounds-checked by `ptr_at`.
    unsafe { both.write_unaligned([*src, *dst]) };
    Ok(())
}
