//! lb's XDP data path: Maglev DNAT from service VIPs to node NodePorts and reverse
//! NAT of the replies. Everything that is not ours passes to the kernel unchanged.
#![no_std]
#![no_main]

mod forward;
mod icmp;
mod icmp6;
mod maps;
mod nat;
mod parse;

use core::mem::MaybeUninit;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use aya_log_ebpf::warn;
use lb_common::{PROTO_ICMP, PROTO_ICMPV6, counters};

use crate::{
    forward::check_ttl,
    maps::{count, lookup_reverse_nat, lookup_service, select_backend, stateless_reverse_nat},
    parse::{Family, Frame, Ip, Packet, Verdict},
};

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    count(counters::RX);
    let ctx = Frame::new(ctx);
    match try_lb_xdp(&ctx) {
        Ok(action) => action,
        Err(verdict) => {
            count(verdict.counter());
            if let Verdict::DropInternal = verdict {
                log_internal_drop(&ctx);
            }
            verdict.action()
        }
    }
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
    Ip::parse(ctx, &mut ip)?;
    // SAFETY: `parse` returned `Ok`, so it wrote the header. (Not zeroed
    // first: that is a `memset` subprogram call per packet.)
    let ip = unsafe { ip.assume_init_ref() };
    match (ip.family, ip.proto) {
        (Family::V4, PROTO_ICMP) => icmp::handle(ctx, ip),
        (Family::V6, PROTO_ICMPV6) => icmp6::handle(ctx, ip),
        _ => serve_transport(ctx, ip),
    }
}

/// The TCP and UDP path: DNAT towards a backend, or reverse NAT of a reply.
/// Each path is a BPF subprogram of its own: the verifier allows 512 bytes of
/// stack for a whole call chain, and the paths' locals (16-byte addresses in
/// every key) do not fit in one frame together.
#[inline(never)]
fn serve_transport(ctx: &Frame, ip: &Ip) -> Result<u32, Verdict> {
    let packet = Packet::parse(ctx, ip)?;
    let key = packet.key;
    if let Some(service) = lookup_service(&key) {
        check_ttl(ip.ttl)?;
        let backend = select_backend(ctx, &key, service, ctx.len())?;
        nat::rewrite_destination(ctx, &packet, &backend.ip, backend.port)?;
        return forward::send(ctx, &packet.route, forward::Direction::ToBackend);
    }
    if let Some(rnat) = lookup_reverse_nat(&key).or_else(|| stateless_reverse_nat(&key)) {
        check_ttl(ip.ttl)?;
        nat::rewrite_source(ctx, &packet, &rnat.vip, rnat.port)?;
        return forward::send(ctx, &packet.route, forward::Direction::ToClient);
    }
    Err(Verdict::PassNotService)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
