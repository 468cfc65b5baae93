//! The side paths: what is neither TCP nor UDP (ARP, ICMP, ICMPv6), the
//! answer to a packet too big for its next hop, and later fragments of TCP
//! and UDP datagrams, each an XDP program of its
//! own that the entry point tail-calls through `SIDE_PATH_ARRAY`
//! (`lb_common::SIDE_PATH_PROGRAMS`). Each then has a stack of
//! its own, so the TCP and UDP path fits in the entry point's frame and
//! makes no BPF subprogram call.

use core::mem::MaybeUninit;

use aya_ebpf::{macros::xdp, programs::XdpContext};

use crate::{
    fragments, icmp, icmp6,
    maps::SIDE_PATH_ARRAY,
    neighbor,
    parse::{Family, Frame, Ip, check_for_this_host},
    too_big,
    verdict::{self, Verdict},
};

/// Hands the packet to side path `index` (`lb_common::SIDE_PATH_PROGRAMS`),
/// which does not return here. Should it be missing (no agent set it), the
/// packet passes as `missing`, untouched.
#[inline(always)]
pub fn enter(ctx: &Frame, index: u32, missing: Verdict) -> Verdict {
    // SAFETY: the side paths are XDP programs, run on this same context.
    unsafe { SIDE_PATH_ARRAY.tail_call(ctx, index) };
    missing
}

/// ARP requests for VIPs (`SIDE_PATH_ARP`): `lb_xdp` tail-calls it for
/// every frame that is not IP.
#[xdp]
pub fn lb_arp(ctx: XdpContext) -> u32 {
    let ctx = Frame::new(ctx);
    verdict::finish(
        &ctx,
        check_for_this_host(&ctx).and_then(|()| neighbor::answer_arp(&ctx)),
    )
}

/// ICMP (`SIDE_PATH_ICMP4`): echo requests to VIPs, errors about our flows.
#[xdp]
pub fn lb_icmp4(ctx: XdpContext) -> u32 {
    let ctx = Frame::new(ctx);
    verdict::finish(&ctx, with_ip::<true>(&ctx, Family::V4, icmp::handle))
}

/// A later fragment of an IPv4 TCP or UDP datagram (`SIDE_PATH_FRAGMENT4`).
/// Its verdict is counted but an internal drop not logged (`settle`, not
/// `finish`): its frame leaves no room for the log's subprogram, and the
/// datagram's first fragment, in the entry point, logs the same drop.
#[xdp]
pub fn lb_fragment4(ctx: XdpContext) -> u32 {
    let ctx = Frame::new(ctx);
    verdict::settle(with_ip::<true>(&ctx, Family::V4, fragments::serve_later))
}

/// A TCP or UDP packet too big for the link to its next hop
/// (`SIDE_PATH_TOO_BIG`), which `lb_xdp` tail-calls when the FIB says so:
/// answered with ICMP "fragmentation needed" or ICMPv6 "packet too big".
#[xdp]
pub fn lb_too_big(ctx: XdpContext) -> u32 {
    let ctx = Frame::new(ctx);
    verdict::finish(&ctx, too_big::answer(&ctx))
}

/// ICMPv6 (`SIDE_PATH_ICMP6`): Neighbor Solicitations for VIPs, and what
/// `lb_icmp4` does for ICMP.
#[xdp]
pub fn lb_icmp6(ctx: XdpContext) -> u32 {
    let ctx = Frame::new(ctx);
    verdict::finish(
        &ctx,
        with_ip::<false>(&ctx, Family::V6, |ctx, ip| {
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
    verdict::settle(icmp6::handle(ctx, ip))
}

/// Runs `handle` on the packet's IP header, parsed again (`INLINE_V6` as
/// for `Ip::parse`): a side path is a program of its own, which the entry
/// point passes nothing. The entry point sends it only packets of `family`,
/// and it parses no other: with the other family's paths beside its own,
/// the verifier took `lb_icmp4` through twelve times the instructions.
#[inline(always)]
fn with_ip<const INLINE_V6: bool>(
    ctx: &Frame,
    family: Family,
    handle: impl FnOnce(&Frame, &Ip) -> Result<u32, Verdict>,
) -> Result<u32, Verdict> {
    check_for_this_host(ctx)?;
    if Ip::family_of(ctx) != Some(family) {
        return Err(Verdict::PassOtherProto);
    }
    let mut ip = MaybeUninit::uninit();
    Ip::parse::<INLINE_V6>(ctx, family, &mut ip)?;
    // SAFETY: `parse` returned `Ok`, so it wrote the header.
    handle(ctx, unsafe { ip.assume_init_ref() })
}
