//! lb's XDP data path: Maglev DNAT from service VIPs to node NodePorts and reverse
//! NAT of the replies. Everything that is not ours passes to the kernel unchanged.
#![no_std]
#![no_main]

mod balance;
mod flows;
mod forward;
mod icmp;
mod icmp6;
mod keys;
mod maps;
mod nat;
mod neighbor;
mod parse;
mod verdict;

use core::mem::MaybeUninit;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use aya_log_ebpf::warn;
use lb_common::{PROTO_ICMP, PROTO_ICMPV6, counters};

use crate::{
    balance::Claim,
    forward::{Direction, HopCache, Route, check_ttl},
    maps::count,
    parse::{Family, Frame, Ip, Packet, Transport},
    verdict::Verdict,
};

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    // No count of every packet: each ends in one outcome counter, and
    // readers add those up (`counters::derive_rx`).
    let ctx = Frame::new(ctx);
    match settle(try_lb_xdp(&ctx)) {
        DROPPED_INTERNAL => {
            log_internal_drop(&ctx);
            xdp_action::XDP_DROP
        }
        action => action,
    }
}

/// What [`settle`] returns for a packet dropped as `Verdict::DropInternal`,
/// which no XDP action is: the entry point logs it. Logged from a
/// subprogram's own subprogram, its frame would add to the deepest call
/// chain's stack (`serve_transport`'s).
const DROPPED_INTERNAL: u32 = u32::MAX;

/// The action for a packet's outcome, counting the verdict of one that was
/// not handled.
#[inline(always)]
fn settle(outcome: Result<u32, Verdict>) -> u32 {
    match outcome {
        Ok(action) => action,
        Err(verdict) => {
            count(verdict.counter());
            match verdict {
                Verdict::DropInternal => DROPPED_INTERNAL,
                verdict => verdict.action(),
            }
        }
    }
}

/// Samples the data path's two clocks for the agent, which runs it with
/// `BPF_PROG_TEST_RUN` at every load (see `lb_common::clock`). Never attached.
#[xdp]
pub fn lb_clock_sample(_ctx: XdpContext) -> u32 {
    forward::sample_clocks();
    xdp_action::XDP_PASS
}

/// Rare and a bug if it happens: worth a line in the agent's log. A
/// subprogram, so the log record's stack is not the entry point's.
#[inline(never)]
fn log_internal_drop(ctx: &Frame) {
    warn!(ctx, "dropped: a Maglev ring points at a missing backend");
}

/// Returns the XDP action for a handled packet, or the verdict explaining why the
/// packet was not ours (or was dropped).
#[inline(always)]
fn try_lb_xdp(ctx: &Frame) -> Result<u32, Verdict> {
    let mut ip = MaybeUninit::uninit();
    match Ip::parse(ctx, &mut ip) {
        Ok(()) => {}
        Err(Verdict::PassNotIp) => return neighbor::answer_arp(ctx),
        Err(verdict) => return Err(verdict),
    }
    // SAFETY: `parse` returned `Ok`, so it wrote the header. (Not zeroed
    // first: that is a `memset` subprogram call per packet.)
    let ip = unsafe { ip.assume_init_ref() };
    match (ip.family, ip.proto) {
        (Family::V4, PROTO_ICMP) => Ok(serve_icmp::<false>(ctx, ip)),
        (Family::V6, PROTO_ICMPV6) if neighbor::is_solicitation(ctx, ip) => {
            neighbor::answer_solicitation(ctx, ip)
        }
        (Family::V6, PROTO_ICMPV6) => Ok(serve_icmp::<true>(ctx, ip)),
        _ => {
            // What is to no VIP and from no node passes here, before its
            // ports are read and `serve_transport` is called.
            let claim = balance::claim(ip)?;
            let ports = Transport::parse(ctx, ip)?.ports;
            Ok(serve_transport(ctx, ip, ports, claim))
        }
    }
}

/// The TCP and UDP path: a packet for a service goes to its backend (DNAT,
/// or with direct server return only the node's MAC), a node's reply leaves
/// with its VIP (reverse NAT). A BPF subprogram of its own: the verifier
/// allows 512 bytes of stack for a whole call chain, and this path's locals
/// (16-byte addresses in every key) do not fit in the entry point's frame
/// too. Both directions share one next-hop lookup, so its parameter block
/// is on the stack once. What the entry point parsed and filtered comes as
/// scalars (a reference to its stack would not pass the verifier). It
/// settles its own outcome and returns the action (or [`DROPPED_INTERNAL`],
/// for the entry point to log): a `Result` comes back through the caller's
/// stack, and LLVM may leave a pointer to it in R0, which the verifier
/// refuses at the return.
#[inline(never)]
fn serve_transport(ctx: &Frame, ip: &Ip, ports: u32, claim: Claim) -> u32 {
    settle(try_serve_transport(ctx, ip, ports, claim))
}

/// ICMP (`V6`: ICMPv6 but Neighbor Solicitations): echo requests to VIPs,
/// errors about our flows. A BPF subprogram per family, for the same
/// reasons as [`serve_transport`], and like it settling its own outcome;
/// one for both would need the stack of both.
#[inline(never)]
fn serve_icmp<const V6: bool>(ctx: &Frame, ip: &Ip) -> u32 {
    settle(if V6 {
        icmp6::handle(ctx, ip)
    } else {
        icmp::handle(ctx, ip)
    })
}

#[inline(always)]
fn try_serve_transport(ctx: &Frame, ip: &Ip, ports: u32, claim: Claim) -> Result<u32, Verdict> {
    let mut packet = MaybeUninit::uninit();
    Packet::parse(ctx, ip, ports, &mut packet)?;
    // SAFETY: `parse` returned `Ok`, so it wrote the packet.
    let packet = unsafe { packet.assume_init_ref() };
    let key = &packet.key;
    // The end of the packet that changes, and to what (the address by
    // reference: copied, it is stored a byte at a time); where its next hop
    // is cached.
    let reply;
    let (cache, new_ip, new_port, tracked, now) =
        match balance::backend_of(ctx, packet, claim, ip.ttl)? {
            Some((backend, now)) => (
                HopCache::Backend(backend.id),
                backend.ip,
                backend.port,
                true,
                now,
            ),
            None => {
                let now = forward::clock();
                reply = balance::reply_of(key, |request| balance::flow_backend(request, now))
                    .ok_or(Verdict::PassNotService)?;
                check_ttl(ip.ttl)?;
                (
                    HopCache::Destination,
                    &reply.frontend.vip,
                    reply.frontend.port,
                    reply.tracked,
                    now,
                )
            }
        };
    // Looked up before anything is rewritten: a reply addressed to this host
    // (a health check, the host's own connection to a NodePort) is the
    // kernel's, and must reach it as it came.
    let to_backend = matches!(cache, HopCache::Backend(_));
    let ends = if to_backend {
        [&key.src_ip, new_ip]
    } else {
        [new_ip, &key.dst_ip]
    };
    let route = Route::of(ip, [key.src_port, key.dst_port]);
    let hop = forward::next_hop(ctx, &route, ends, cache, now)?;
    let direction = if !to_backend {
        nat::rewrite_source(ctx, packet, new_ip, new_port)?;
        if !tracked {
            count(counters::REPLIES_UNTRACKED);
        }
        Direction::ToClient
    } else if maps::direct_server_return() {
        hop.check_direct()?;
        Direction::ToBackend
    } else {
        nat::rewrite_destination(ctx, packet, new_ip, new_port)?;
        Direction::ToBackend
    };
    forward::send(ctx, ip.family, &hop, direction)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
