//! lb's XDP data path: Maglev DNAT from service VIPs to node NodePorts and reverse
//! NAT of the replies. Everything that is not ours passes to the kernel unchanged.
#![no_std]
#![no_main]

mod balance;
mod flows;
mod forward;
mod fragments;
mod icmp;
mod icmp6;
mod keys;
mod maps;
mod nat;
mod neighbor;
mod parse;
mod side_paths;
mod too_big;
mod verdict;

use core::mem::MaybeUninit;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    PROTO_ICMP, PROTO_ICMPV6, SIDE_PATH_ARP, SIDE_PATH_ICMP4, SIDE_PATH_ICMP6, counters,
};

use crate::{
    balance::Claim,
    forward::{Direction, HopCache, Route, check_ttl},
    maps::count,
    parse::{Family, Frame, Ip, Packet, check_for_this_host},
    verdict::Verdict,
};

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    // No count of every packet: each ends in one outcome counter, and
    // readers add those up (`counters::derive_rx`).
    let ctx = Frame::new(ctx);
    verdict::finish(&ctx, try_lb_xdp(&ctx))
}

/// Samples the data path's two clocks for the agent, which runs it with
/// `BPF_PROG_TEST_RUN` at every load (see `lb_common::clock`). Never attached.
#[xdp]
pub fn lb_clock_sample(_ctx: XdpContext) -> u32 {
    forward::sample_clocks();
    xdp_action::XDP_PASS
}

/// Returns the XDP action for a handled packet, or the verdict explaining why the
/// packet was not ours (or was dropped). What is neither TCP nor UDP goes
/// to a side path.
#[inline(always)]
fn try_lb_xdp(ctx: &Frame) -> Result<u32, Verdict> {
    let Some(family) = Ip::family_of(ctx) else {
        return Err(side_paths::enter(ctx, SIDE_PATH_ARP, Verdict::PassNotIp));
    };
    let mut ip = MaybeUninit::uninit();
    Ip::parse::<true>(ctx, family, &mut ip)?;
    // SAFETY: `parse` returned `Ok`, so it wrote the header. (Not zeroed
    // first: that is a `memset` subprogram call per packet.)
    let ip = unsafe { ip.assume_init_ref() };
    match (ip.family, ip.proto) {
        (Family::V4, PROTO_ICMP) => Err(side_paths::enter(
            ctx,
            SIDE_PATH_ICMP4,
            Verdict::PassOtherProto,
        )),
        (Family::V6, PROTO_ICMPV6) => Err(side_paths::enter(
            ctx,
            SIDE_PATH_ICMP6,
            Verdict::PassOtherProto,
        )),
        _ => {
            // What is to no VIP and from no node passes here, before its
            // ports are read and before its MAC is looked at.
            let claim = balance::claim(ip)?;
            check_for_this_host(ctx)?;
            let ports = fragments::ports(ctx, ip)?;
            serve_transport(ctx, ip, ports, claim)
        }
    }
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
    fragments::remember(ctx, ip, ports)?;
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
    let hop = match forward::next_hop(ctx, &route, ends, cache, now) {
        Ok(hop) => hop,
        Err(verdict) => forward::too_big(ctx, &route, verdict)?,
    };
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
