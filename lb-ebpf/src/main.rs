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
mod transport;
mod verdict;

use core::mem::MaybeUninit;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    PROTO_ICMP, PROTO_ICMPV6, SIDE_PATH_ARP, SIDE_PATH_FRAGMENT4, SIDE_PATH_ICMP4, SIDE_PATH_ICMP6,
};

use crate::{
    parse::{Family, Fragment, Frame, Ip, Transport, check_for_this_host},
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
            // Without ports, a later fragment takes another path, so that
            // this one does not pay for it.
            if ip.fragment == Fragment::Later {
                return Err(side_paths::enter(
                    ctx,
                    SIDE_PATH_FRAGMENT4,
                    Verdict::PassFragment,
                ));
            }
            let ports = Transport::parse(ctx, ip)?.ports;
            transport::serve::<true>(ctx, ip, ports, claim)
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
