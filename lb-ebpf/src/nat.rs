//! Address and port rewriting with incremental checksum updates (RFC 1624).

use lb_common::{PROTO_UDP, checksum};
use network_types::eth::EthHdr;

use crate::parse::{Frame, Packet, Verdict, ptr_at};

const IP_CHECK_OFFSET: usize = EthHdr::LEN + 10;
pub const IP_SRC_OFFSET: usize = EthHdr::LEN + 12;
pub const IP_DST_OFFSET: usize = EthHdr::LEN + 16;

/// Rewrites one address of the IP header, keeping the header checksum right;
/// returns the old address. The L4 checksum is the caller's (an ICMP message
/// does not cover the IP header, TCP and UDP do through their pseudo-header).
#[inline(always)]
pub fn rewrite_address(ctx: &Frame, offset: usize, new_ip: u32) -> Result<u32, Verdict> {
    let address: *mut u32 = ptr_at(ctx, offset)?;
    let ip_check: *mut u16 = ptr_at(ctx, IP_CHECK_OFFSET)?;
    // SAFETY: both pointers were bounds-checked by `ptr_at`; the IPv4 header is
    // 4-byte aligned after a 14-byte Ethernet header only by accident, so all
    // accesses are unaligned.
    unsafe {
        let old = address.read_unaligned();
        address.write_unaligned(new_ip);
        ip_check.write_unaligned(checksum::replace_u32(
            ip_check.read_unaligned(),
            old,
            new_ip,
        ));
        Ok(old)
    }
}

/// DNAT: destination becomes (`ip`, `port`), both network order.
#[inline(always)]
pub fn rewrite_destination(
    ctx: &Frame,
    packet: &Packet,
    ip: u32,
    port: u16,
) -> Result<(), Verdict> {
    rewrite(ctx, packet, IP_DST_OFFSET, packet.l4_offset + 2, ip, port)
}

/// Reverse NAT: source becomes (`ip`, `port`), both network order.
#[inline(always)]
pub fn rewrite_source(ctx: &Frame, packet: &Packet, ip: u32, port: u16) -> Result<(), Verdict> {
    rewrite(ctx, packet, IP_SRC_OFFSET, packet.l4_offset, ip, port)
}

#[inline(always)]
fn rewrite(
    ctx: &Frame,
    packet: &Packet,
    ip_offset: usize,
    port_offset: usize,
    new_ip: u32,
    new_port: u16,
) -> Result<(), Verdict> {
    // Every pointer is checked before anything is written: no half rewrite.
    let port_field: *mut u16 = ptr_at(ctx, port_offset)?;
    let l4_check: *mut u16 = ptr_at(ctx, packet.l4_check_offset)?;
    let old_ip = rewrite_address(ctx, ip_offset, new_ip)?;
    // SAFETY: both pointers were bounds-checked by `ptr_at`.
    unsafe {
        let old_port = port_field.read_unaligned();
        port_field.write_unaligned(new_port);
        let old_l4 = l4_check.read_unaligned();
        // A zero UDP checksum means "none" and must stay zero (RFC 768).
        if packet.key.proto == PROTO_UDP && old_l4 == 0 {
            return Ok(());
        }
        let mut l4 = checksum::replace_address_and_port(old_l4, old_ip, new_ip, old_port, new_port);
        // A computed zero is sent as all ones for UDP, since zero means "none".
        if packet.key.proto == PROTO_UDP && l4 == 0 {
            l4 = 0xffff;
        }
        l4_check.write_unaligned(l4);
    }
    Ok(())
}
