//! Address and port rewriting with incremental checksum updates (RFC 1624).

use lb_common::{
    Addr, PROTO_UDP,
    checksum::{self, Delta},
};
use network_types::eth::EthHdr;

use crate::{
    parse::{Family, Frame, Packet, ptr_at, read_word, write_word},
    verdict::Verdict,
};

const IPV4_TTL_OFFSET: usize = EthHdr::LEN + 8;
const IPV4_CHECK_OFFSET: usize = EthHdr::LEN + 10;
const IPV4_SRC_OFFSET: usize = EthHdr::LEN + 12;
const IPV4_DST_OFFSET: usize = EthHdr::LEN + 16;
const IPV6_HOP_LIMIT_OFFSET: usize = EthHdr::LEN + 7;
const IPV6_SRC_OFFSET: usize = EthHdr::LEN + 8;
const IPV6_DST_OFFSET: usize = EthHdr::LEN + 24;

/// Which address of the IP header.
#[derive(Clone, Copy)]
pub enum End {
    Source,
    Destination,
}

/// Swaps source and destination address (no checksum changes: the sums are
/// order independent).
#[inline(always)]
pub fn swap_addresses(ctx: &Frame, family: Family) -> Result<(), Verdict> {
    match family {
        Family::V4 => {
            let both: *mut [u32; 2] = ptr_at(ctx, IPV4_SRC_OFFSET)?;
            // SAFETY: bounds-checked by `ptr_at`.
            unsafe {
                let [src, dst] = both.read_unaligned();
                both.write_unaligned([dst, src]);
            }
        }
        Family::V6 => {
            let both: *mut [Addr; 2] = ptr_at(ctx, IPV6_SRC_OFFSET)?;
            // SAFETY: bounds-checked by `ptr_at`.
            unsafe {
                let [src, dst] = both.read_unaligned();
                both.write_unaligned([dst, src]);
            }
        }
    }
    Ok(())
}

/// Rewrites one address of the IP header, keeping an IPv4 header checksum
/// right; returns the difference the change makes to a checksum covering
/// the address. The L4 checksum is the caller's (ICMPv4 does not cover the
/// IP header, TCP, UDP and ICMPv6 do through their pseudo-header).
#[inline(always)]
pub fn rewrite_address(
    ctx: &Frame,
    family: Family,
    end: End,
    new: &Addr,
) -> Result<Delta, Verdict> {
    match family {
        Family::V4 => {
            let offset = match end {
                End::Source => IPV4_SRC_OFFSET,
                End::Destination => IPV4_DST_OFFSET,
            };
            let address: *mut [u16; 2] = ptr_at(ctx, offset)?;
            let ip_check: *mut u16 = ptr_at(ctx, IPV4_CHECK_OFFSET)?;
            // SAFETY: both pointers were bounds-checked by `ptr_at`; both
            // fields lie at even offsets (see `parse::read_word`).
            unsafe {
                let delta = Delta::default().u32(read_word(address), new[3]);
                write_word(address, new[3]);
                ip_check.write(delta.apply(ip_check.read()));
                Ok(delta)
            }
        }
        Family::V6 => {
            let offset = match end {
                End::Source => IPV6_SRC_OFFSET,
                End::Destination => IPV6_DST_OFFSET,
            };
            let address: *mut [[u16; 2]; 4] = ptr_at(ctx, offset)?;
            let mut delta = Delta::default();
            for (i, &word) in new.iter().enumerate() {
                // SAFETY: bounds-checked by `ptr_at`, at an even offset (see
                // `parse::read_word`).
                unsafe {
                    let at = address.cast::<[u16; 2]>().add(i);
                    delta = delta.u32(read_word(at), word);
                    write_word(at, word);
                }
            }
            Ok(delta)
        }
    }
}

/// Copies an address (not in the packet) word by word (see [`copy_words`]).
///
/// # Safety
/// `dst` and `src` must be valid and aligned for an `Addr`.
#[inline(always)]
pub unsafe fn copy_addr(dst: *mut Addr, src: *const Addr) {
    // SAFETY: the caller vouches for both; an address is four words.
    unsafe { copy_words::<Addr, u32>(dst, src) }
}

/// Copies a `T` (not in the packet) as words `W`, in order: left to the
/// compiler, a copy of a value is often a block copy it cannot prove
/// aligned, which BPF does a byte at a time (or a `memmove` subprogram call).
///
/// # Safety
/// `dst` and `src` must be valid and aligned for a `T` and a `W`, and `T`'s
/// size a multiple of `W`'s.
#[inline(always)]
pub unsafe fn copy_words<T, W: Copy>(dst: *mut T, src: *const T) {
    let (dst, src) = (dst.cast::<W>(), src.cast::<W>());
    for i in 0..core::mem::size_of::<T>() / core::mem::size_of::<W>() {
        // SAFETY: within both values; volatile keeps the moves from being
        // merged back into a block copy.
        unsafe { dst.add(i).write_volatile(src.add(i).read()) };
    }
}

/// The TTL (hop limit) of a packet lb answers with, as Linux sends its own.
pub const FRESH_TTL: u8 = 64;

/// Counts this hop: TTL (hop limit) minus one, IPv4 header checksum updated.
/// The caller checked it was above one.
#[inline(always)]
pub fn decrement_ttl(ctx: &Frame, family: Family) -> Result<(), Verdict> {
    set_ttl(ctx, family, |ttl| ttl.wrapping_sub(1))
}

/// Sets the TTL (hop limit) to what `new` makes of it, IPv4 header checksum
/// updated.
#[inline(always)]
pub fn set_ttl(ctx: &Frame, family: Family, new: impl FnOnce(u8) -> u8) -> Result<(), Verdict> {
    match family {
        Family::V4 => {
            // TTL and protocol share one checksummed 16-bit word.
            let ttl_proto: *mut [u8; 2] = ptr_at(ctx, IPV4_TTL_OFFSET)?;
            let ip_check: *mut u16 = ptr_at(ctx, IPV4_CHECK_OFFSET)?;
            // SAFETY: both pointers were bounds-checked by `ptr_at`; the
            // checksum lies at an even offset (see `parse::read_word`).
            unsafe {
                let old = *ttl_proto;
                let new = [new(old[0]), old[1]];
                *ttl_proto = new;
                ip_check.write(checksum::replace_u16(
                    ip_check.read(),
                    u16::from_ne_bytes(old),
                    u16::from_ne_bytes(new),
                ));
            }
        }
        Family::V6 => {
            let hop_limit: *mut u8 = ptr_at(ctx, IPV6_HOP_LIMIT_OFFSET)?;
            // SAFETY: bounds-checked by `ptr_at`.
            unsafe { *hop_limit = new(*hop_limit) };
        }
    }
    Ok(())
}

/// DNAT: destination becomes (`ip`, `port`), the port in network order;
/// without its transport `HEADER` (a later fragment), the address only.
#[inline(always)]
pub fn rewrite_destination<const HEADER: bool>(
    ctx: &Frame,
    packet: &Packet,
    ip: &Addr,
    port: u16,
) -> Result<(), Verdict> {
    rewrite::<HEADER>(
        ctx,
        packet,
        End::Destination,
        packet.l4_offset + 2,
        ip,
        port,
    )
}

/// Reverse NAT: source becomes (`ip`, `port`), the port in network order;
/// without its transport `HEADER`, the address only.
#[inline(always)]
pub fn rewrite_source<const HEADER: bool>(
    ctx: &Frame,
    packet: &Packet,
    ip: &Addr,
    port: u16,
) -> Result<(), Verdict> {
    rewrite::<HEADER>(ctx, packet, End::Source, packet.l4_offset, ip, port)
}

#[inline(always)]
fn rewrite<const HEADER: bool>(
    ctx: &Frame,
    packet: &Packet,
    end: End,
    port_offset: usize,
    new_ip: &Addr,
    new_port: u16,
) -> Result<(), Verdict> {
    if !HEADER {
        // The datagram's checksum is in its first fragment, rewritten there.
        return rewrite_address(ctx, packet.family, end, new_ip).map(drop);
    }
    // Every pointer is checked before anything is written: no half rewrite.
    let port_field: *mut u16 = ptr_at(ctx, port_offset)?;
    let l4_check: *mut u16 = ptr_at(ctx, packet.l4_check_offset)?;
    let address_delta = rewrite_address(ctx, packet.family, end, new_ip)?;
    // SAFETY: both pointers were bounds-checked by `ptr_at`; both fields
    // lie at even offsets (see `parse::read_word`).
    unsafe {
        let old_port = port_field.read();
        port_field.write(new_port);
        let old_l4 = l4_check.read();
        // A zero UDP checksum means "none" and must stay zero (RFC 768; over
        // IPv6 it is invalid, and stays as invalid as it came).
        if packet.key.proto == PROTO_UDP && old_l4 == 0 {
            return Ok(());
        }
        let mut l4 = address_delta.u16(old_port, new_port).apply(old_l4);
        // A computed zero is sent as all ones for UDP, since zero means "none".
        if packet.key.proto == PROTO_UDP && l4 == 0 {
            l4 = 0xffff;
        }
        l4_check.write(l4);
    }
    Ok(())
}
