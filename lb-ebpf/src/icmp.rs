//! ICMP: echo requests to a VIP (answered when configured), and errors about a
//! tracked flow, translated like the flow so path MTU discovery works through
//! the VIP.

use aya_ebpf::bindings::xdp_action;
use lb_common::{FlowKey, PROTO_TCP, PROTO_UDP, checksum, counters, ipv4_mapped};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    forward::{self, Direction, check_ttl},
    maps::{answer_echo, count, is_vip, lookup_flow_backend, lookup_reverse_nat},
    nat::{self, End},
    parse::{self, Family, Frame, Ip, Route, Verdict, ptr_at},
};

const ECHO_REPLY: u8 = 0;
const DEST_UNREACHABLE: u8 = 3;
const ECHO_REQUEST: u8 = 8;
const TIME_EXCEEDED: u8 = 11;
const PARAMETER_PROBLEM: u8 = 12;
/// An option-less IPv4 header: version 4, 5 words.
const PLAIN_IPV4_VIHL: u8 = 0x45;

/// The ICMP header, the same for ICMPv6.
#[repr(C)]
pub struct IcmpHdr {
    pub type_code: [u8; 2],
    pub check: u16,
    rest: [u8; 4],
}

/// An ICMP error with the start of the packet it quotes. Its fields are
/// reached through one bounds-checked pointer: the verifier forgets the bounds
/// of a variable-offset pointer the compiler derives afresh.
#[repr(C)]
struct IcmpError {
    icmp: IcmpHdr,
    quoted: Ipv4Hdr,
    quoted_ports: [u16; 2],
}

#[inline(always)]
pub fn handle(ctx: &Frame, ip: &Ip) -> Result<u32, Verdict> {
    let header: *mut IcmpHdr = ptr_at(ctx, ip.l4_offset)?;
    // SAFETY: bounds-checked by `ptr_at`.
    match unsafe { (*header).type_code[0] } {
        ECHO_REQUEST if is_vip(&ip.dst) && answer_echo() => echo_reply(ctx, header),
        DEST_UNREACHABLE | TIME_EXCEEDED | PARAMETER_PROBLEM => translate_error(ctx, ip),
        _ => Err(Verdict::PassOtherProto),
    }
}

/// Turns the request around in place: type 0, addresses and MACs swapped.
#[inline(always)]
fn echo_reply(ctx: &Frame, header: *mut IcmpHdr) -> Result<u32, Verdict> {
    let addresses: *mut [u32; 2] = ptr_at(ctx, EthHdr::LEN + 12)?;
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
        // Swapping the addresses leaves the header checksum as it is.
        let [src, dst] = addresses.read_unaligned();
        addresses.write_unaligned([dst, src]);
        let (to, from) = ((*eth).dst_addr, (*eth).src_addr);
        (*eth).dst_addr = from;
        (*eth).src_addr = to;
    }
    count(counters::ICMP_ECHO_REPLY);
    Ok(xdp_action::XDP_TX)
}

/// Which address of the quoted packet changes.
#[derive(Clone, Copy)]
enum Quoted {
    Source,
    Destination,
}

/// An ICMP error quotes the packet that caused it, which travelled the other
/// way: the reverse of its 5-tuple is what the flow tables know.
#[inline(always)]
fn translate_error(ctx: &Frame, ip: &Ip) -> Result<u32, Verdict> {
    let error: *mut IcmpError = ptr_at(ctx, ip.l4_offset)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let quoted = unsafe { &(*error).quoted };
    if quoted.vihl != PLAIN_IPV4_VIHL || (quoted.proto != PROTO_TCP && quoted.proto != PROTO_UDP) {
        return Err(Verdict::PassOtherProto);
    }
    // SAFETY: as above.
    let [quoted_src_port, quoted_dst_port] = unsafe { (*error).quoted_ports };
    let (quoted_src, quoted_dst) = (
        ipv4_mapped(u32::from_ne_bytes(quoted.src_addr)),
        ipv4_mapped(u32::from_ne_bytes(quoted.dst_addr)),
    );
    let proto = quoted.proto;
    let reverse = FlowKey {
        src_ip: quoted_dst,
        dst_ip: quoted_src,
        src_port: quoted_dst_port,
        dst_port: quoted_src_port,
        proto,
        _pad: [0; 3],
    };
    let route = Route::of(ip);
    // The quote's L4 checksum sits beyond the part every error carries.
    let l4_check_offset = ip.l4_offset
        + core::mem::size_of::<IcmpHdr>()
        + Ipv4Hdr::LEN
        + parse::l4_check_offset(proto);
    // About a request we DNAT-ed (client -> node): the client must hear of its VIP.
    if let Some(rnat) = lookup_reverse_nat(&reverse) {
        check_ttl(ip.ttl)?;
        rewrite_quoted(
            ctx,
            error,
            l4_check_offset,
            Quoted::Destination,
            rnat.vip[3],
            rnat.port,
        )?;
        if ip.src == quoted_dst {
            // The node itself complained: make it the VIP's voice.
            nat::rewrite_address(ctx, Family::V4, End::Source, &rnat.vip)?;
        }
        count(counters::ICMP_TRANSLATED);
        return forward::send(ctx, &route, Direction::ToClient);
    }
    // About a reply we reverse-NAT-ed (VIP -> client): the node must hear of it.
    if ip.dst == quoted_src
        && let Some(backend) = lookup_flow_backend(&reverse)
    {
        check_ttl(ip.ttl)?;
        rewrite_quoted(
            ctx,
            error,
            l4_check_offset,
            Quoted::Source,
            backend.ip[3],
            backend.port,
        )?;
        nat::rewrite_address(ctx, Family::V4, End::Destination, &backend.ip)?;
        count(counters::ICMP_TRANSLATED);
        return forward::send(ctx, &route, Direction::ToBackend);
    }
    Err(Verdict::PassNotService)
}

/// Rewrites an address and port of the quoted packet, keeping its IP and L4
/// checksums and the ICMP checksum (which covers the quote) consistent.
#[inline(always)]
fn rewrite_quoted(
    ctx: &Frame,
    error: *mut IcmpError,
    l4_check_offset: usize,
    which: Quoted,
    new_ip: u32,
    new_port: u16,
) -> Result<(), Verdict> {
    // SAFETY: `error` was bounds-checked by the caller; the L4 checksum is
    // checked here.
    unsafe {
        let quoted = &mut (*error).quoted;
        let (address, port) = match which {
            Quoted::Source => (&mut quoted.src_addr, &mut (*error).quoted_ports[0]),
            Quoted::Destination => (&mut quoted.dst_addr, &mut (*error).quoted_ports[1]),
        };
        let (old_ip, old_port) = (u32::from_ne_bytes(*address), *port);
        let old_quoted_check = u16::from_ne_bytes(quoted.check);
        let new_quoted_check = checksum::replace_u32(old_quoted_check, old_ip, new_ip);
        *address = new_ip.to_ne_bytes();
        *port = new_port;
        quoted.check = new_quoted_check.to_ne_bytes();
        let mut icmp = checksum::replace_u32((*error).icmp.check, old_ip, new_ip);
        icmp = checksum::replace_u16(icmp, old_quoted_check, new_quoted_check);
        icmp = checksum::replace_u16(icmp, old_port, new_port);
        // When the quote is long enough to hold it (a zero UDP checksum means
        // none and stays zero).
        if let Ok(l4_check) = ptr_at::<u16>(ctx, l4_check_offset) {
            let old = l4_check.read_unaligned();
            if quoted.proto == PROTO_TCP || old != 0 {
                let new = checksum::replace_address_and_port(
                    old,
                    &ipv4_mapped(old_ip),
                    &ipv4_mapped(new_ip),
                    old_port,
                    new_port,
                );
                l4_check.write_unaligned(new);
                icmp = checksum::replace_u16(icmp, old, new);
            }
        }
        (*error).icmp.check = icmp;
    }
    Ok(())
}
