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
use lb_common::{
    PROTO_ICMP, PROTO_ICMPV6, SIDE_PATH_ARP, SIDE_PATH_ICMP4, SIDE_PATH_ICMP6, counters,
};

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
    finish(&ctx, try_lb_xdp(&ctx))
}

/// ARP requests for VIPs (`SIDE_PATH_ARP`): `lb_xdp` tail-calls it for
/// every frame that is not IP.
#[xdp]
pub fn lb_arp(ctx: XdpContext) -> u32 {
    let ctx = Frame::new(ctx);
    finish(&ctx, neighbor::answer_arp(&ctx))
}

/// ICMP (`SIDE_PATH_ICMP4`): echo requests to VIPs, errors about our flows.
#[xdp]
pub fn lb_icmp4(ctx: XdpContext) -> u32 {
    let ctx = Frame::new(ctx);
    finish(&ctx, with_ip::<true>(&ctx, icmp::handle))
}

/// ICMPv6 (`SIDE_PATH_ICMP6`): Neighbor Solicitations for VIPs, and what
/// `lb_icmp4` does for ICMP.
#[xdp]
pub fn lb_icmp6(ctx: XdpContext) -> u32 {
    let ctx = Frame::new(ctx);
    finish(
        &ctx,
        with_ip::<false>(&ctx, |ctx, ip| {
            if neighbor::is_solicitation(ctx, ip) {
                neighbor::answer_solicitation(ctx, ip)
            } else {
                Ok(serve_icmp6(ctx, ip))
            }
        }),
    )
}

/// ICMPv6 but Neighbor Solicitations, a BPF subprogram: beside the
/// solicitation's (a subprogram too) its locals would not fit one frame.
/// It returns its outcome settled: a `Result` comes back through the
/// caller's stack, and LLVM may leave a pointer to it in R0, which the
/// verifier refuses at the return. An ICMP path never drops as
/// `Verdict::DropInternal` (a failed Maglev lookup passes the error on),
/// so there is nothing to log.
#[inline(never)]
fn serve_icmp6(ctx: &Frame, ip: &Ip) -> u32 {
    settle(icmp6::handle(ctx, ip))
}

/// The XDP action for a packet's outcome, logging one dropped as
/// `Verdict::DropInternal` (see [`settle`]).
#[inline(always)]
fn finish(ctx: &Frame, outcome: Result<u32, Verdict>) -> u32 {
    if let Err(Verdict::DropInternal) = outcome {
        log_internal_drop(ctx);
    }
    settle(outcome)
}

/// The XDP action for a packet's outcome, counting the verdict of one that
/// was not handled.
#[inline(always)]
fn settle(outcome: Result<u32, Verdict>) -> u32 {
    match outcome {
        Ok(action) => action,
        Err(verdict) => {
            count(verdict.counter());
            verdict.action()
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
/// packet was not ours (or was dropped). What is neither TCP nor UDP goes
/// to a side path.
#[inline(always)]
fn try_lb_xdp(ctx: &Frame) -> Result<u32, Verdict> {
    let mut ip = MaybeUninit::uninit();
    match Ip::parse::<true>(ctx, &mut ip) {
        Ok(()) => {}
        Err(Verdict::PassNotIp) => return side_path(ctx, SIDE_PATH_ARP, Verdict::PassNotIp),
        Err(verdict) => return Err(verdict),
    }
    // SAFETY: `parse` returned `Ok`, so it wrote the header. (Not zeroed
    // first: that is a `memset` subprogram call per packet.)
    let ip = unsafe { ip.assume_init_ref() };
    match (ip.family, ip.proto) {
        (Family::V4, PROTO_ICMP) => side_path(ctx, SIDE_PATH_ICMP4, Verdict::PassOtherProto),
        (Family::V6, PROTO_ICMPV6) => side_path(ctx, SIDE_PATH_ICMP6, Verdict::PassOtherProto),
        _ => {
            // What is to no VIP and from no node passes here, before its
            // ports are read.
            let claim = balance::claim(ip)?;
            let ports = Transport::parse(ctx, ip)?.ports;
            serve_transport(ctx, ip, ports, claim)
        }
    }
}

/// Hands the packet to side path `index` (`lb_common::SIDE_PATH_PROGRAMS`),
/// which does not return here. Should it be missing (no agent set it), the
/// packet passes as `missing`, untouched.
#[inline(always)]
fn side_path(ctx: &Frame, index: u32, missing: Verdict) -> Result<u32, Verdict> {
    // SAFETY: the side paths are XDP programs, run on this same context.
    unsafe { maps::SIDE_PATHS.tail_call(ctx, index) };
    Err(missing)
}

/// Runs `handle` on the packet's IP header, parsed again (`INLINE_V6` as
/// for `Ip::parse`): a side path is a program of its own, which the entry
/// point passes nothing.
#[inline(always)]
fn with_ip<const INLINE_V6: bool>(
    ctx: &Frame,
    handle: impl FnOnce(&Frame, &Ip) -> Result<u32, Verdict>,
) -> Result<u32, Verdict> {
    let mut ip = MaybeUninit::uninit();
    Ip::parse::<INLINE_V6>(ctx, &mut ip)?;
    // SAFETY: `parse` returned `Ok`, so it wrote the header.
    handle(ctx, unsafe { ip.assume_init_ref() })
}

/// The TCP and UDP path: a packet for a service goes to its backend (DNAT,
/// or with direct server return only the node's MAC), a node's reply leaves
/// with its VIP (reverse NAT). Inlined in the entry point, whose stack it
/// fits now that the other paths are programs of their own.
#[inline(always)]
fn serve_transport(ctx: &Frame, ip: &Ip, ports: u32, claim: Claim) -> Result<u32, Verdict> {
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
