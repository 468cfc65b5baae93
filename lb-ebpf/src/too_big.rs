//! The answer to a packet of ours too big for the link to its next hop: an
//! ICMP "fragmentation needed" (RFC 1191) or ICMPv6 "packet too big" (RFC
//! 4443) from the address the packet was sent to, so that the sender's path
//! MTU discovery works through lb. The kernel can send neither: it would
//! quote the packet translated, which the sender never sent (and a packet to
//! a VIP it does not own it cannot route at all).
//!
//! Built in place: the new headers go in front of the packet
//! (`bpf_xdp_adjust_head`), which becomes the quote, cut to what fits the
//! smallest MTU each family must carry (`bpf_xdp_adjust_tail`).

use core::{mem::size_of, ptr::null_mut};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{xdp_action, xdp_md},
    helpers::generated::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
};
use lb_common::{PROTO_ICMP, PROTO_ICMPV6, checksum, counters};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    forward,
    icmp::IcmpHdr,
    maps::{self, count},
    nat::FRESH_TTL,
    parse::{
        ETH_P_IPV4_BE, ETH_P_IPV6_BE, Family, Frame, Ip, PLAIN_IPV4_VIHL, is_group_address, ptr_at,
    },
    verdict::Verdict,
};

const ICMP_LEN: usize = size_of::<IcmpHdr>();
/// RFC 1812 4.3.2.3: an ICMP error quotes as much as fits in 576 bytes.
const QUOTE4: usize = 576 - Ipv4Hdr::LEN - ICMP_LEN;
/// RFC 4443 2.4 (c): as much as fits in the minimum IPv6 MTU.
const QUOTE6: usize = MIN_MTU6 as usize - Ipv6Hdr::LEN - ICMP_LEN;
/// The smallest MTU of a link (RFC 791, RFC 8200 5).
const MIN_MTU4: u16 = 68;
const MIN_MTU6: u16 = 1280;
/// Type and code of the answers.
const FRAGMENTATION_NEEDED: [u8; 2] = [3, 4];
const PACKET_TOO_BIG: [u8; 2] = [2, 0];
const IPV6_VERSION: [u8; 4] = [0x60, 0, 0, 0];
/// The most `bpf_csum_diff` sums in one call.
const CSUM_DIFF_MAX: usize = 512;

/// Answers the packet, which the FIB found too big for its next hop's link
/// (the lookup's MTU is still in this CPU's parameter block); an IPv4 packet
/// comes here only with Don't Fragment (`forward::too_big`). It passes
/// untouched, as `Verdict::PassFibOther`, when the answer must not go: to or
/// from a group MAC, to a source that is no single host (RFC 1122 3.2.2, RFC
/// 4443 2.4 (e)), over this CPU's [`ANSWERS_PER_SECOND`] (RFC 4443 2.4 (f)),
/// or with an MTU that is no link's or not below the packet's length (a
/// block another lookup wrote). So does an IPv4 packet shorter than the
/// quote.
#[inline(always)]
pub fn answer(ctx: &Frame) -> Result<u32, Verdict> {
    let mtu = maps::fib_mtu().ok_or(Verdict::PassFibOther)?;
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let (src_mac, dst_mac) = unsafe { ((*eth).src_addr, (*eth).dst_addr) };
    if is_group_address(&src_mac) || is_group_address(&dst_mac) {
        return Err(Verdict::PassFibOther);
    }
    // Turned around: the answer goes back to the MAC the packet came from.
    let macs = (src_mac, dst_mac);
    match Ip::family_of(ctx) {
        Some(Family::V4) => answer4(ctx, macs, mtu),
        Some(Family::V6) => answer6(ctx, macs, mtu),
        None => Err(Verdict::PassFibOther),
    }
}

/// Answers a CPU sends each second at most, as Linux's
/// `net.ipv4.icmp_msgs_per_sec` allows its ICMP errors.
pub const ANSWERS_PER_SECOND: u64 = 1000;

/// Whether an answer may go: the packet's `length`, the link's `mtu` and the
/// smallest MTU of the family agree, and this CPU has an answer left.
#[inline(always)]
fn may_answer(mtu: u16, min_mtu: u16, length: u16, unicast_source: bool) -> bool {
    if !unicast_source || mtu < min_mtu || mtu >= length {
        return false;
    }
    let Some(budget) = maps::too_big_budget() else {
        return false;
    };
    // SAFETY: a per-CPU slot, no concurrent writer.
    unsafe { &mut *budget }.take(forward::clock(), ANSWERS_PER_SECOND)
}

fn answer4(ctx: &Frame, macs: ([u8; 6], [u8; 6]), mtu: u16) -> Result<u32, Verdict> {
    let packet: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let (total_len, src, dst) = unsafe {
        (
            u16::from_be_bytes((*packet).tot_len),
            (*packet).src_addr,
            (*packet).dst_addr,
        )
    };
    // Not 0/8, loopback, multicast, reserved or broadcast.
    let unicast = !matches!(src[0], 0 | 127 | 224..);
    if usize::from(total_len) < QUOTE4 || !may_answer(mtu, MIN_MTU4, total_len, unicast) {
        return Err(Verdict::PassFibOther);
    }
    const HEADERS: usize = Ipv4Hdr::LEN + ICMP_LEN;
    let ctx = make_room::<QUOTE4>(ctx, HEADERS)?;
    let header = Ipv4Hdr {
        vihl: PLAIN_IPV4_VIHL,
        tos: 0,
        tot_len: ((HEADERS + QUOTE4) as u16).to_be_bytes(),
        id: [0; 2],
        frags: forward::DONT_FRAGMENT.to_be_bytes(),
        ttl: FRESH_TTL,
        proto: PROTO_ICMP,
        check: [0; 2],
        src_addr: dst,
        dst_addr: src,
    };
    write_eth(&ctx, macs, ETH_P_IPV4_BE)?;
    let ip: *mut Ipv4Hdr = ptr_at(&ctx, EthHdr::LEN)?;
    // SAFETY: bounds-checked by `ptr_at`.
    unsafe { ip.write(header) };
    let check = !checksum::fold_wide(sum::<{ Ipv4Hdr::LEN }>(&ctx, EthHdr::LEN)?.into());
    // SAFETY: as above.
    unsafe { (*ip).check = check.to_ne_bytes() };
    let mut rest = [0; 4];
    rest[2..].copy_from_slice(&mtu.to_be_bytes());
    write_icmp::<{ ICMP_LEN + QUOTE4 }>(
        &ctx,
        EthHdr::LEN + Ipv4Hdr::LEN,
        FRAGMENTATION_NEEDED,
        rest,
        0,
    )
}

fn answer6(ctx: &Frame, macs: ([u8; 6], [u8; 6]), mtu: u16) -> Result<u32, Verdict> {
    let packet: *const Ipv6Hdr = ptr_at(ctx, EthHdr::LEN)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let (payload_len, src, dst) = unsafe {
        (
            u16::from_be_bytes((*packet).payload_len),
            (*packet).src_addr,
            (*packet).dst_addr,
        )
    };
    // Not unspecified, loopback or multicast.
    // SAFETY: sixteen bytes as two words, any bits valid.
    let [high, low]: [u64; 2] = unsafe { core::mem::transmute(src) };
    let unicast = src[0] != 0xff && (high != 0 || u64::from_be(low) > 1);
    let length = payload_len.saturating_add(Ipv6Hdr::LEN as u16);
    if !may_answer(mtu, MIN_MTU6, length, unicast) {
        return Err(Verdict::PassFibOther);
    }
    const HEADERS: usize = Ipv6Hdr::LEN + ICMP_LEN;
    // Every IPv6 link carries 1280 bytes, so a packet too big for one is
    // longer than the quote.
    let ctx = make_room::<QUOTE6>(ctx, HEADERS)?;
    let payload_len = (ICMP_LEN + QUOTE6) as u16;
    write_eth(&ctx, macs, ETH_P_IPV6_BE)?;
    let ip: *mut Ipv6Hdr = ptr_at(&ctx, EthHdr::LEN)?;
    // SAFETY: bounds-checked by `ptr_at`.
    unsafe {
        ip.write(Ipv6Hdr {
            vcf: IPV6_VERSION,
            payload_len: payload_len.to_be_bytes(),
            next_hdr: PROTO_ICMPV6,
            hop_limit: FRESH_TTL,
            src_addr: dst,
            dst_addr: src,
        });
    }
    // The pseudo-header: both addresses, the length and the next header.
    let addresses = sum::<32>(&ctx, EthHdr::LEN + 8)?;
    let pseudo = u64::from(addresses)
        + u64::from(u16::from_ne_bytes(payload_len.to_be_bytes()))
        + u64::from(u16::from_ne_bytes([0, PROTO_ICMPV6]));
    let rest = u32::from(mtu).to_be_bytes();
    write_icmp::<{ ICMP_LEN + QUOTE6 }>(
        &ctx,
        EthHdr::LEN + Ipv6Hdr::LEN,
        PACKET_TOO_BIG,
        rest,
        pseudo,
    )
}

/// Writes the answer's Ethernet header: `ether_type` in network order.
fn write_eth(ctx: &Frame, (dst, src): ([u8; 6], [u8; 6]), ether_type: u16) -> Result<(), Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds-checked by `ptr_at`.
    unsafe {
        eth.write(EthHdr {
            dst_addr: dst,
            src_addr: src,
            ether_type,
        });
    }
    Ok(())
}

/// Writes the ICMP header at `offset`, followed by the quote (`LEN` bytes
/// with the header), with its checksum over both and `pseudo` (ICMPv6's pseudo-header
/// sum); counts and sends the answer.
fn write_icmp<const LEN: usize>(
    ctx: &Frame,
    offset: usize,
    type_code: [u8; 2],
    rest: [u8; 4],
    pseudo: u64,
) -> Result<u32, Verdict> {
    let icmp: *mut IcmpHdr = ptr_at(ctx, offset)?;
    // SAFETY: bounds-checked by `ptr_at`.
    unsafe {
        icmp.write(IcmpHdr {
            type_code,
            check: 0,
            rest,
        });
    }
    let sum = sum::<LEN>(ctx, offset)?;
    // SAFETY: as above.
    unsafe { (*icmp).check = !checksum::fold_wide(u64::from(sum) + pseudo) };
    count(counters::TOO_BIG_ANSWERED);
    Ok(xdp_action::XDP_TX)
}

/// Puts `headers` bytes in front of the packet and cuts what follows them
/// to `QUOTE` bytes; returns the frame as it now is. Should the cut fail,
/// the packet is put back as it came and passes.
fn make_room<const QUOTE: usize>(ctx: &Frame, headers: usize) -> Result<Frame, Verdict> {
    // The packet must hold the quote: cutting to it must not grow it.
    ptr_at::<[u8; QUOTE]>(ctx, EthHdr::LEN)?;
    let md = ctx.as_ptr().cast::<xdp_md>();
    // SAFETY: this run's context; a failed move leaves the frame as it was.
    if unsafe { bpf_xdp_adjust_head(md, -(headers as i32)) } != 0 {
        return Err(Verdict::PassFibOther);
    }
    let grown = ctx.reload();
    let cut = (EthHdr::LEN + headers + QUOTE) as i64 - grown.len() as i64;
    // SAFETY: as above; `cut` is not positive.
    if unsafe { bpf_xdp_adjust_tail(md, cut as i32) } != 0 {
        // SAFETY: as above; moving back over the bytes just added cannot fail.
        unsafe { bpf_xdp_adjust_head(md, headers as i32) };
        return Err(Verdict::PassFibOther);
    }
    Ok(grown.reload())
}

/// The one's complement sum, folded, of the `LEN` bytes (a multiple of 4)
/// of the frame at `offset`.
#[inline(always)]
fn sum<const LEN: usize>(ctx: &Frame, offset: usize) -> Result<u16, Verdict> {
    let start: *mut [u8; LEN] = ptr_at(ctx, offset)?;
    let mut total = 0u64;
    let mut done = 0;
    while done < LEN {
        let len = if LEN - done < CSUM_DIFF_MAX {
            LEN - done
        } else {
            CSUM_DIFF_MAX
        };
        // SAFETY: `len` bytes from `done` lie within the `LEN` that
        // `ptr_at` checked; `bpf_csum_diff` only reads them.
        let sum = unsafe {
            bpf_csum_diff(
                null_mut(),
                0,
                start.cast::<u8>().add(done).cast(),
                len as u32,
                0,
            )
        };
        total += u64::from(sum as u32);
        done += len;
    }
    Ok(checksum::fold_wide(total))
}
