//! Sending a rewritten packet: MACs from the kernel's FIB and neighbour tables,
//! then XDP_TX on the ingress interface or XDP_REDIRECT through the devmap.

use core::{
    mem::{MaybeUninit, size_of},
    ptr::copy_nonoverlapping,
};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::generated::bpf_fib_lookup,
};
use lb_common::counters;
use network_types::eth::EthHdr;

use crate::{
    maps::{TX_PORTS, count},
    nat,
    parse::{Family, Frame, Route, Verdict, ptr_at},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;

#[derive(Clone, Copy)]
pub enum Direction {
    ToBackend,
    ToClient,
}

impl Direction {
    #[inline(always)]
    fn counters(self) -> (u32, u32) {
        match self {
            Self::ToBackend => (counters::FORWARD_TX, counters::FORWARD_REDIRECT),
            Self::ToClient => (counters::REPLY_TX, counters::REPLY_REDIRECT),
        }
    }
}

/// An all-zero `bpf_fib_lookup` block in `storage`, written as sixteen 4-byte
/// stores (its alignment is 4): left to the compiler, zeroing it is a call to
/// a byte-at-a-time `memset` subprogram on every forwarded packet. Zeroed in
/// place: moving the block out would be a copy the compiler turns back into
/// that `memset`.
#[inline(always)]
fn zeroed_fib_params(storage: &mut MaybeUninit<FibParams>) -> &mut FibParams {
    let words = storage.as_mut_ptr().cast::<u32>();
    for i in 0..size_of::<FibParams>() / size_of::<u32>() {
        // SAFETY: within `storage`, which is 4-byte aligned and a multiple of
        // 4 bytes long; volatile so that the stores stay stores.
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: every byte was written; all-zero is a valid `bpf_fib_lookup`
    // (plain integers and unions of them).
    unsafe { storage.assume_init_mut() }
}

/// Sets the Ethernet addresses of the frame at `eth`, which `ptr_at` checked.
/// Copied as non-overlapping bytes, which the compiler writes out inline
/// (plain assignment becomes a `memmove` subprogram call).
#[inline(always)]
pub fn set_macs(eth: *mut EthHdr, dst: [u8; 6], src: [u8; 6]) {
    // SAFETY: `eth` points at a whole Ethernet header inside the packet;
    // `dst` and `src` are locals, so nothing overlaps.
    unsafe {
        copy_nonoverlapping(dst.as_ptr(), (*eth).dst_addr.as_mut_ptr(), 6);
        copy_nonoverlapping(src.as_ptr(), (*eth).src_addr.as_mut_ptr(), 6);
    }
}

/// Whether a packet may be forwarded by this hop; the caller checks before it
/// rewrites or records anything, so an expiring packet reaches the kernel as it
/// came and the kernel sends the Time Exceeded.
#[inline(always)]
pub fn check_ttl(ttl: u8) -> Result<(), Verdict> {
    if ttl <= 1 {
        return Err(Verdict::PassTtlExpired);
    }
    Ok(())
}

/// Sends the already rewritten packet towards its new destination, counting
/// the hop in its TTL. When the neighbour is not resolved yet the packet goes
/// to the kernel, which resolves it (ARP, ND) and forwards this packet itself.
#[inline(always)]
pub fn send(ctx: &Frame, route: &Route, direction: Direction) -> Result<u32, Verdict> {
    let ingress = ctx.ingress_ifindex();
    let mut storage = MaybeUninit::uninit();
    let fib = zeroed_fib_params(&mut storage);
    fib.l4_protocol = route.proto;
    fib.sport = route.src_port;
    fib.dport = route.dst_port;
    fib.__bindgen_anon_1.tot_len = route.total_len;
    fib.ifindex = ingress;
    // The packet is already rewritten: look up the new addresses.
    let (src, dst) = nat::addresses(ctx, route.family)?;
    match route.family {
        Family::V4 => {
            fib.family = AF_INET;
            fib.__bindgen_anon_2.tos = route.tos;
            fib.__bindgen_anon_3.ipv4_src = src[3];
            fib.__bindgen_anon_4.ipv4_dst = dst[3];
        }
        Family::V6 => {
            fib.family = AF_INET6;
            fib.__bindgen_anon_3.ipv6_src = src;
            fib.__bindgen_anon_4.ipv6_dst = dst;
        }
    }
    // SAFETY: `fib` is a valid, writable parameter block of the size given.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), fib, size_of::<FibParams>() as i32, 0) };
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Err(Verdict::PassFibMiss),
        _ => return Err(Verdict::PassFibOther),
    }
    nat::decrement_ttl(ctx, route.family)?;
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    set_macs(eth, fib.dmac, fib.smac);
    let (tx_counter, redirect_counter) = direction.counters();
    if fib.ifindex == ingress {
        count(tx_counter);
        return Ok(xdp_action::XDP_TX);
    }
    match TX_PORTS.redirect(fib.ifindex, 0) {
        Ok(action) => {
            count(redirect_counter);
            Ok(action)
        }
        Err(_) => Err(Verdict::PassFibOther),
    }
}
