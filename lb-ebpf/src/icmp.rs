//! ICMP and ICMPv6: echo requests to a VIP (answered when configured), and
//! errors about a tracked flow, translated like the flow so path MTU discovery
//! works through the VIP. This module holds what both families share and
//! ICMPv4 itself; `icmp6` the ICMPv6 specifics.

use aya_ebpf::bindings::xdp_action;
use lb_common::{Addr, PROTO_TCP, PROTO_UDP, checksum, counters, ipv4_mapped};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    balance,
    forward::{self, Direction, HopCache, Route, check_ttl},
    keys,
    maps::{self, answer_echo, count, is_vip},
    nat::{self, End},
    parse::{self, Family, Frame, IP_FRAGMENT_OFFSET, Ip, PLAIN_IPV4_VIHL, Transport, ptr_at},
    verdict::Verdict,
};

const ECHO_REPLY: u8 = 0;
const DEST_UNREACHABLE: u8 = 3;
const ECHO_REQUEST: u8 = 8;
const TIME_EXCEEDED: u8 = 11;
const PARAMETER_PROBLEM: u8 = 12;

/// The ICMP header, the same for ICMPv6.
#[repr(C)]
pub struct IcmpHdr {
    pub type_code: [u8; 2],
    pub check: u16,
    pub rest: [u8; 4],
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

/// Handles an ICMPv4 packet (in the side path `lb_icmp4`).
#[inline(always)]
pub fn handle(ctx: &Frame, ip: &Ip) -> Result<u32, Verdict> {
    let header: *mut IcmpHdr = ptr_at(ctx, ip.l4_offset)?;
    // SAFETY: bounds-checked by `ptr_at`.
    match unsafe { (*header).type_code[0] } {
        ECHO_REQUEST if is_vip(&ip.dst) && answer_echo() => {
            echo_reply(ctx, Family::V4, header, ECHO_REPLY)
        }
        DEST_UNREACHABLE | TIME_EXCEEDED | PARAMETER_PROBLEM => {
            // The ports must lie in the packet, not in padding after it.
            if ip.l4_len() < core::mem::size_of::<IcmpError>() {
                return Err(Verdict::PassOtherProto);
            }
            let error: *mut IcmpError = ptr_at(ctx, ip.l4_offset)?;
            // SAFETY: bounds-checked by `ptr_at`.
            let quoted = unsafe { &(*error).quoted };
            // A quoted later fragment has no ports where they would be.
            if quoted.vihl != PLAIN_IPV4_VIHL
                || u16::from_be_bytes(quoted.frags) & IP_FRAGMENT_OFFSET != 0
            {
                return Err(Verdict::PassOtherProto);
            }
            let quote = Quote {
                proto: quoted.proto,
                src: ipv4_mapped(u32::from_ne_bytes(quoted.src_addr)),
                dst: ipv4_mapped(u32::from_ne_bytes(quoted.dst_addr)),
                // SAFETY: as above.
                ports: unsafe { (*error).quoted_ports },
                l4_check_offset: quoted_l4_check_offset(ip, Ipv4Hdr::LEN, quoted.proto),
            };
            translate_error(ctx, ip, &quote, &Ipv4Error(error))
        }
        _ => Err(Verdict::PassOtherProto),
    }
}

/// Turns an echo request around in place: the reply type, addresses and MACs
/// swapped, a fresh TTL (hop limit): the request's may have been spent to
/// its last hop (traceroute's last probe), and the reply has a path of its
/// own to go. Swapping the addresses leaves the IPv4 header checksum and the
/// ICMPv6 pseudo-header sum as they were. A request to a group MAC
/// (broadcast, multicast) passes: its reply would come from that MAC.
#[inline(always)]
pub fn echo_reply(
    ctx: &Frame,
    family: Family,
    header: *mut IcmpHdr,
    reply_type: u8,
) -> Result<u32, Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds-checked by `ptr_at`.
    if parse::is_group_address(unsafe { &(*eth).dst_addr }) {
        return Err(Verdict::PassOtherProto);
    }
    nat::swap_addresses(ctx, family)?;
    nat::set_ttl(ctx, family, |_| nat::FRESH_TTL)?;
    // SAFETY: both pointers were bounds-checked by `ptr_at`.
    unsafe {
        let old = (*header).type_code;
        let new = [reply_type, old[1]];
        (*header).type_code = new;
        (*header).check = checksum::replace_u16(
            (*header).check,
            u16::from_ne_bytes(old),
            u16::from_ne_bytes(new),
        );
        let (to, from) = ((*eth).dst_addr, (*eth).src_addr);
        forward::set_macs(eth, &forward::mac_words(from), &forward::mac_words(to));
    }
    count(counters::ICMP_ECHO_REPLY);
    Ok(xdp_action::XDP_TX)
}

/// The start of the packet an ICMP error quotes, addresses in map form.
pub struct Quote {
    pub proto: u8,
    pub src: Addr,
    pub dst: Addr,
    /// Source and destination port, network order.
    pub ports: [u16; 2],
    /// Where the quote's L4 checksum would be (it may be cut off).
    pub l4_check_offset: usize,
}

/// Offset of the L4 checksum of a quote whose IP header is `quoted_ip_len`
/// bytes: beyond the part every error carries. 0 where the quote is too
/// short to hold it: what follows the IP packet (Ethernet padding) is no
/// part of the quote.
#[inline(always)]
pub fn quoted_l4_check_offset(ip: &Ip, quoted_ip_len: usize, proto: u8) -> usize {
    let offset = ip.l4_offset
        + core::mem::size_of::<IcmpHdr>()
        + quoted_ip_len
        + parse::l4_check_offset(proto);
    if offset + 2 > EthHdr::LEN + usize::from(ip.total_len) {
        return 0;
    }
    offset
}

/// Which end of the quoted packet changes.
#[derive(Clone, Copy)]
pub enum Quoted {
    Source,
    Destination,
}

/// One end of the quoted packet, before and after.
pub struct QuoteRewrite {
    pub which: Quoted,
    pub old_ip: Addr,
    pub new_ip: Addr,
    pub old_port: u16,
    pub new_port: u16,
}

/// How an error of one family changes: its quote, and an outer address.
pub trait ErrorRewriter {
    /// Rewrites one end of the quote, keeping every checksum over it right.
    fn rewrite_quoted(
        &self,
        ctx: &Frame,
        quote: &Quote,
        rewrite: &QuoteRewrite,
    ) -> Result<(), Verdict>;
    /// Rewrites an outer address, keeping every checksum over it right.
    fn rewrite_outer(&self, ctx: &Frame, end: End, new: &Addr) -> Result<(), Verdict>;
}

/// An ICMP error quotes the packet that caused it, which travelled the other
/// way: the reverse of its 5-tuple is what the flow tables know.
#[inline(always)]
pub fn translate_error(
    ctx: &Frame,
    ip: &Ip,
    quote: &Quote,
    error: &impl ErrorRewriter,
) -> Result<u32, Verdict> {
    if quote.proto != PROTO_TCP && quote.proto != PROTO_UDP {
        return Err(Verdict::PassOtherProto);
    }
    let [quoted_src_port, quoted_dst_port] = quote.ports;
    let slot = maps::error_flow_slot().ok_or(Verdict::PassOtherProto)?;
    let reverse = keys::flow_key(
        slot,
        [&quote.dst, &quote.src],
        Transport::join([quoted_dst_port, quoted_src_port]),
        quote.proto,
    );
    // The end of the quote that changes, the outer address that changes
    // with it (if any), and where the error goes.
    let now = forward::clock();
    let (rewrite, outer, direction) =
        if let Some(reply) = balance::reply_of(reverse, balance::table_flow_backend) {
            // About a request we DNAT-ed (client -> node): the client must hear
            // of its VIP, and when the node itself complained, from the VIP.
            let rewrite = QuoteRewrite {
                which: Quoted::Destination,
                old_ip: quote.dst,
                new_ip: reply.frontend.vip,
                old_port: quoted_dst_port,
                new_port: reply.frontend.port,
            };
            let outer = (ip.src == quote.dst).then_some(End::Source);
            (rewrite, outer, Direction::ToClient)
        } else if ip.dst == quote.src
            && let Some(backend) = balance::request_backend(reverse)
        {
            // About a reply we reverse-NAT-ed (VIP -> client), or another lb
            // host did (ECMP hashes the error apart from its flow): the node
            // must hear of it, the one the flow is on. With direct server
            // return the node answered from the VIP itself, and hears of it
            // as it came (see below).
            let rewrite = QuoteRewrite {
                which: Quoted::Source,
                old_ip: quote.src,
                new_ip: *backend.ip,
                old_port: quoted_src_port,
                new_port: backend.port,
            };
            (rewrite, Some(End::Destination), Direction::ToBackend)
        } else {
            return Err(Verdict::PassNotService);
        };
    check_ttl(ip.ttl)?;
    let (src, dst) = match outer {
        Some(End::Source) => (&rewrite.new_ip, &ip.dst),
        Some(End::Destination) => (&ip.src, &rewrite.new_ip),
        None => (&ip.src, &ip.dst),
    };
    let hop = forward::next_hop(
        ctx,
        &Route::of(ip, [0, 0]),
        [src, dst],
        HopCache::Destination,
        now,
    )?;
    // With direct server return only the MACs change, as for the flow's
    // packets (no reply is ours then: an error to a node is about one). Not
    // checked again to be adjacent, as the flow's packets are (the stack
    // has no room): a node they reached is.
    if !maps::direct_server_return() {
        error.rewrite_quoted(ctx, quote, &rewrite)?;
        if let Some(end) = outer {
            error.rewrite_outer(ctx, end, &rewrite.new_ip)?;
        }
    }
    count(counters::ICMP_TRANSLATED);
    forward::send(ctx, ip.family, &hop, direction)
}

/// Updates the quote's L4 checksum for `rewrite` when the quote is long
/// enough to hold it (a zero UDP checksum means none and stays as it came);
/// returns the ICMP checksum, which covers it, updated to match.
#[inline(always)]
pub fn update_quoted_l4(ctx: &Frame, quote: &Quote, rewrite: &QuoteRewrite, icmp: u16) -> u16 {
    if quote.l4_check_offset == 0 {
        return icmp;
    }
    let Ok(l4_check) = ptr_at::<u16>(ctx, quote.l4_check_offset) else {
        return icmp;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    unsafe {
        let old = l4_check.read_unaligned();
        if quote.proto != PROTO_TCP && old == 0 {
            return icmp;
        }
        let new = checksum::replace_address_and_port(
            old,
            &rewrite.old_ip,
            &rewrite.new_ip,
            rewrite.old_port,
            rewrite.new_port,
        );
        l4_check.write_unaligned(new);
        checksum::replace_u16(icmp, old, new)
    }
}

/// An ICMPv4 error: its checksum covers the quote but no pseudo-header, and
/// the quote has an IPv4 header checksum of its own.
struct Ipv4Error(*mut IcmpError);

impl ErrorRewriter for Ipv4Error {
    #[inline(always)]
    fn rewrite_quoted(
        &self,
        ctx: &Frame,
        quote: &Quote,
        rewrite: &QuoteRewrite,
    ) -> Result<(), Verdict> {
        let error = self.0;
        let (old_ip, new_ip) = (rewrite.old_ip[3], rewrite.new_ip[3]);
        // SAFETY: `error` was bounds-checked when it was made.
        unsafe {
            let quoted = &mut (*error).quoted;
            let (address, port) = match rewrite.which {
                Quoted::Source => (&mut quoted.src_addr, &mut (*error).quoted_ports[0]),
                Quoted::Destination => (&mut quoted.dst_addr, &mut (*error).quoted_ports[1]),
            };
            let old_quoted_check = u16::from_ne_bytes(quoted.check);
            let new_quoted_check = checksum::replace_u32(old_quoted_check, old_ip, new_ip);
            *address = new_ip.to_ne_bytes();
            *port = rewrite.new_port;
            quoted.check = new_quoted_check.to_ne_bytes();
            let mut icmp = checksum::replace_u32((*error).icmp.check, old_ip, new_ip);
            icmp = checksum::replace_u16(icmp, old_quoted_check, new_quoted_check);
            icmp = checksum::replace_u16(icmp, rewrite.old_port, rewrite.new_port);
            (*error).icmp.check = update_quoted_l4(ctx, quote, rewrite, icmp);
        }
        Ok(())
    }

    #[inline(always)]
    fn rewrite_outer(&self, ctx: &Frame, end: End, new: &Addr) -> Result<(), Verdict> {
        nat::rewrite_address(ctx, Family::V4, end, new).map(drop)
    }
}
