//! ICMPv6: echo requests to a VIP (answered when configured), and errors
//! about a tracked flow ("packet too big" above all), translated like the flow
//! so path MTU discovery works through an IPv6 VIP. Unlike ICMPv4, the ICMPv6
//! checksum covers a pseudo-header, so every address rewrite, outer or quoted,
//! updates it.

use aya_ebpf::bindings::xdp_action;
use lb_common::{Addr, FlowKey, PROTO_TCP, PROTO_UDP, checksum, counters};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    forward::{self, Direction, check_ttl},
    icmp::IcmpHdr,
    maps::{answer_echo, count, is_vip, lookup_flow_backend, lookup_reverse_nat},
    nat::{self, End},
    parse::{self, Family, Frame, Ip, Route, Verdict, ptr_at},
};

const DEST_UNREACHABLE: u8 = 1;
const PACKET_TOO_BIG: u8 = 2;
const TIME_EXCEEDED: u8 = 3;
const PARAMETER_PROBLEM: u8 = 4;
const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;

/// An ICMPv6 error with the start of the packet it quotes, reached through one
/// bounds-checked pointer (see `icmp::IcmpError`).
#[repr(C)]
struct Icmp6Error {
    icmp: IcmpHdr,
    quoted: Ipv6Hdr,
    quoted_ports: [u16; 2],
}

#[inline(always)]
pub fn handle(ctx: &Frame, ip: &Ip) -> Result<u32, Verdict> {
    let header: *mut IcmpHdr = ptr_at(ctx, ip.l4_offset)?;
    // SAFETY: bounds-checked by `ptr_at`.
    match unsafe { (*header).type_code[0] } {
        ECHO_REQUEST if is_vip(&ip.dst) && answer_echo() => echo_reply(ctx, header),
        DEST_UNREACHABLE | PACKET_TOO_BIG | TIME_EXCEEDED | PARAMETER_PROBLEM => {
            translate_error(ctx, ip)
        }
        _ => Err(Verdict::PassOtherProto),
    }
}

/// Turns the request around in place: type 129, addresses and MACs swapped
/// (the swap leaves the pseudo-header sum as it was).
#[inline(always)]
fn echo_reply(ctx: &Frame, header: *mut IcmpHdr) -> Result<u32, Verdict> {
    let addresses: *mut [Addr; 2] = ptr_at(ctx, EthHdr::LEN + 8)?;
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: every pointer was bounds-checked by `ptr_at`.
    unsafe {
        let old = (*header).type_code;
        let new = [ECHO_REPLY, old[1]];
        (*header).type_code = new;
        (*header).check = checksum::replace_u16(
            (*header).check,
            u16::from_ne_bytes(old),
            u16::from_ne_bytes(new),
        );
        let [src, dst] = addresses.read_unaligned();
        addresses.write_unaligned([dst, src]);
        let (to, from) = ((*eth).dst_addr, (*eth).src_addr);
        (*eth).dst_addr = from;
        (*eth).src_addr = to;
    }
    count(counters::ICMP_ECHO_REPLY);
    Ok(xdp_action::XDP_TX)
}

/// Which end of the quoted packet changes.
#[derive(Clone, Copy)]
enum Quoted {
    Source,
    Destination,
}

/// As for ICMPv4: the quoted packet travelled the other way, so the reverse of
/// its 5-tuple is what the flow tables know.
#[inline(always)]
fn translate_error(ctx: &Frame, ip: &Ip) -> Result<u32, Verdict> {
    let error: *mut Icmp6Error = ptr_at(ctx, ip.l4_offset)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let (proto, quoted_src, quoted_dst, [quoted_src_port, quoted_dst_port]) = unsafe {
        let quoted = &(*error).quoted;
        (
            quoted.next_hdr,
            words(quoted.src_addr),
            words(quoted.dst_addr),
            (*error).quoted_ports,
        )
    };
    // Quotes with extension headers before TCP or UDP are left to the kernel.
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(Verdict::PassOtherProto);
    }
    let reverse = FlowKey {
        src_ip: quoted_dst,
        dst_ip: quoted_src,
        src_port: quoted_dst_port,
        dst_port: quoted_src_port,
        proto,
        _pad: [0; 3],
    };
    let route = Route::of(ip);
    let l4_check_offset = ip.l4_offset
        + core::mem::size_of::<IcmpHdr>()
        + Ipv6Hdr::LEN
        + parse::l4_check_offset(proto);
    // About a request we DNAT-ed (client -> node): the client must hear of its VIP.
    if let Some(rnat) = lookup_reverse_nat(&reverse) {
        check_ttl(ip.ttl)?;
        let quote = QuoteRewrite {
            which: Quoted::Destination,
            old_ip: quoted_dst,
            new_ip: rnat.vip,
            old_port: quoted_dst_port,
            new_port: rnat.port,
            proto,
        };
        rewrite_quoted(ctx, error, l4_check_offset, &quote)?;
        if ip.src == quoted_dst {
            // The node itself complained: make it the VIP's voice.
            rewrite_outer(ctx, error, End::Source, &rnat.vip)?;
        }
        count(counters::ICMP_TRANSLATED);
        return forward::send(ctx, &route, Direction::ToClient);
    }
    // About a reply we reverse-NAT-ed (VIP -> client): the node must hear of it.
    if ip.dst == quoted_src
        && let Some(backend) = lookup_flow_backend(&reverse)
    {
        check_ttl(ip.ttl)?;
        let quote = QuoteRewrite {
            which: Quoted::Source,
            old_ip: quoted_src,
            new_ip: backend.ip,
            old_port: quoted_src_port,
            new_port: backend.port,
            proto,
        };
        rewrite_quoted(ctx, error, l4_check_offset, &quote)?;
        rewrite_outer(ctx, error, End::Destination, &backend.ip)?;
        count(counters::ICMP_TRANSLATED);
        return forward::send(ctx, &route, Direction::ToBackend);
    }
    Err(Verdict::PassNotService)
}

/// One end of the quoted packet, before and after.
struct QuoteRewrite {
    which: Quoted,
    old_ip: Addr,
    new_ip: Addr,
    old_port: u16,
    new_port: u16,
    proto: u8,
}

/// Rewrites an outer address; the ICMPv6 checksum follows its pseudo-header.
#[inline(always)]
fn rewrite_outer(ctx: &Frame, error: *mut Icmp6Error, end: End, new: &Addr) -> Result<(), Verdict> {
    let old = nat::rewrite_address(ctx, Family::V6, end, new)?;
    // SAFETY: `error` was bounds-checked by the caller.
    unsafe { (*error).icmp.check = checksum::replace_u128((*error).icmp.check, &old, new) };
    Ok(())
}

/// Rewrites an address and port of the quoted packet, keeping its L4 checksum
/// and the ICMPv6 checksum (which covers the quote) consistent.
#[inline(always)]
fn rewrite_quoted(
    ctx: &Frame,
    error: *mut Icmp6Error,
    l4_check_offset: usize,
    quote: &QuoteRewrite,
) -> Result<(), Verdict> {
    // SAFETY: `error` was bounds-checked by the caller; the L4 checksum is
    // checked here.
    unsafe {
        let quoted = &mut (*error).quoted;
        let (address, port) = match quote.which {
            Quoted::Source => (&mut quoted.src_addr, &mut (*error).quoted_ports[0]),
            Quoted::Destination => (&mut quoted.dst_addr, &mut (*error).quoted_ports[1]),
        };
        *address = bytes(&quote.new_ip);
        *port = quote.new_port;
        let mut icmp = checksum::replace_address_and_port(
            (*error).icmp.check,
            &quote.old_ip,
            &quote.new_ip,
            quote.old_port,
            quote.new_port,
        );
        // When the quote is long enough to hold it (a zero UDP checksum is
        // left as it came).
        if let Ok(l4_check) = ptr_at::<u16>(ctx, l4_check_offset) {
            let old = l4_check.read_unaligned();
            if quote.proto == PROTO_TCP || old != 0 {
                let new = checksum::replace_address_and_port(
                    old,
                    &quote.old_ip,
                    &quote.new_ip,
                    quote.old_port,
                    quote.new_port,
                );
                l4_check.write_unaligned(new);
                icmp = checksum::replace_u16(icmp, old, new);
            }
        }
        (*error).icmp.check = icmp;
    }
    Ok(())
}

#[inline(always)]
fn words(bytes: [u8; 16]) -> Addr {
    parse::words(bytes)
}

#[inline(always)]
fn bytes(addr: &Addr) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, word) in addr.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
    }
    out
}
