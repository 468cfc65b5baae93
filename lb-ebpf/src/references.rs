//! Reference programs: for `cargo xtask bench` the floor of the XDP machinery and
//! the cost of parsing alone, measured in the same run as lb itself; for the
//! test beds a pass-through program for veth peers.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr};

/// Returns XDP_PASS. Test beds attach it to the far end of a veth that lb
/// bounces frames into with XDP_TX: the veth driver only wakes a peer that runs
/// an XDP program after XDP_TX (GRO alone suffices for XDP_REDIRECT).
#[xdp]
pub fn ref_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Returns XDP_TX and touches nothing.
#[xdp]
pub fn ref_xdp_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Parses Ethernet, IPv4 and TCP with bounds checks, then returns XDP_TX.
#[xdp]
pub fn ref_parse_only(ctx: XdpContext) -> u32 {
    match parse(&ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Option<()> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + EthHdr::LEN + Ipv4Hdr::LEN > end {
        return None;
    }
    // SAFETY: bounds checked above.
    let eth = unsafe { &*(start as *const EthHdr) };
    if eth.ether_type != 0x0800u16.to_be() {
        return None;
    }
    // SAFETY: bounds checked above.
    let ip = unsafe { &*((start + EthHdr::LEN) as *const Ipv4Hdr) };
    let l4 = start + EthHdr::LEN + usize::from(ip.vihl & 0x0f) * 4;
    if ip.proto != 6 || l4 + TcpHdr::LEN > end {
        return None;
    }
    // SAFETY: bounds checked above.
    let tcp = unsafe { &*(l4 as *const TcpHdr) };
    core::hint::black_box(tcp.dest);
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
