//! Sending a packet on: the next hop from the kernel's FIB and neighbour
//! tables, then XDP_TX on the ingress interface or XDP_REDIRECT through the
//! devmap.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::generated::{bpf_fib_lookup, bpf_jiffies64, bpf_ktime_get_coarse_ns},
};
use lb_common::{Addr, MAX_EGRESS_PORTS, SIDE_PATH_TOO_BIG, counters};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    maps::{self, EGRESS_PORTS, FIB_PARAMS, count},
    nat,
    parse::{Family, Frame, IP_FRAGMENT_OFFSET, Ip, ptr_at},
    side_paths,
    verdict::Verdict,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NOT_FWDED: i64 = 4;
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

/// This CPU's `bpf_fib_lookup` parameter block, all zero. It lives in a
/// per-CPU map rather than on the stack: 64 bytes are too many for the
/// verifier's 512-byte budget of the paths that look up a next hop (the
/// lookup of a per-CPU array is inlined, so this costs no helper call).
/// Zeroed as sixteen 4-byte stores (its alignment is 4): left to the
/// compiler, zeroing it is a call to a byte-at-a-time `memset` subprogram.
#[inline(always)]
fn zeroed_fib_params() -> Result<&'static mut FibParams, Verdict> {
    let block = FIB_PARAMS.get_ptr_mut(0).ok_or(Verdict::PassFibOther)?;
    let words = block.cast::<u32>();
    for i in 0..size_of::<FibParams>() / size_of::<u32>() {
        // SAFETY: within the map value, which is 4-byte aligned and a
        // multiple of 4 bytes long; volatile so that the stores stay stores.
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: a per-CPU value, not shared while this program runs; every
    // byte was written and all-zero is a valid `bpf_fib_lookup`.
    Ok(unsafe { &mut *block })
}

/// Sets the Ethernet addresses of the frame at `eth`, which `ptr_at` checked,
/// a 16-bit word at a time (a byte array would be copied byte by byte). An
/// XDP frame starts at least 2-byte aligned (drivers reserve a headroom of
/// 256 bytes and lb never moves the start), so the words are aligned.
#[inline(always)]
pub fn set_macs(eth: *mut EthHdr, dst: &Mac, src: &Mac) {
    let words = eth.cast::<u16>();
    for i in 0..3 {
        // SAFETY: `eth` points at a whole, 2-byte aligned Ethernet header
        // inside the packet; the destination MAC is its first 6 bytes, the
        // source the next 6.
        unsafe {
            words.add(i).write(dst[i]);
            words.add(3 + i).write(src[i]);
        }
    }
}

/// A MAC from its bytes as [`Mac`] words.
#[inline(always)]
pub fn mac_words(mac: [u8; 6]) -> Mac {
    [
        u16::from_ne_bytes([mac[0], mac[1]]),
        u16::from_ne_bytes([mac[2], mac[3]]),
        u16::from_ne_bytes([mac[4], mac[5]]),
    ]
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

/// What the FIB lookup needs to know about a packet.
pub struct Route {
    pub family: Family,
    pub proto: u8,
    /// Source and destination port (0 without ports), network order.
    pub src_port: u16,
    pub dst_port: u16,
    /// IP total length, host order.
    pub total_len: u16,
    pub tos: u8,
}

impl Route {
    /// The route of a packet with `ports` (source, destination).
    #[inline(always)]
    pub fn of(ip: &Ip, [src_port, dst_port]: [u16; 2]) -> Self {
        Self {
            family: ip.family,
            proto: ip.proto,
            src_port,
            dst_port,
            total_len: ip.total_len,
            tos: ip.tos,
        }
    }
}

/// Where the kernel's FIB and neighbour tables send a packet. A plain struct
/// rather than an enum with data: every field is defined on every path, so
/// the compiler cannot merge paths through a register the verifier sees as a
/// pointer on one of them.
pub struct NextHop {
    /// The neighbour is resolved: the rest is valid.
    resolved: bool,
    /// Not resolved, as the kernel is to fragment the packet on its way.
    to_fragment: bool,
    /// The destination is on the egress link, not behind a gateway.
    on_link: bool,
    ifindex: u32,
    /// `ifindex`'s slot in `EGRESS_PORTS`, or [`NO_EGRESS_SLOT`].
    egress_slot: u8,
    dmac: Mac,
    smac: Mac,
}

/// The egress slot of an interface packets may not be redirected to (one lb
/// is not attached to): `EGRESS_PORTS` has fewer slots.
const NO_EGRESS_SLOT: u8 = u8::MAX;
const _: () = assert!(MAX_EGRESS_PORTS < NO_EGRESS_SLOT as u32);

impl NextHop {
    /// A hop the kernel is to take the packet to, translated: its neighbour
    /// is not resolved yet, or it is `to_fragment` the packet.
    #[inline(always)]
    fn unresolved(to_fragment: bool) -> Self {
        Self {
            resolved: false,
            to_fragment,
            on_link: false,
            ifindex: 0,
            egress_slot: NO_EGRESS_SLOT,
            dmac: [0; 3],
            smac: [0; 3],
        }
    }

    /// Whether direct server return can use this hop: the packet keeps its
    /// VIP, so only the node's own MAC takes it there, and the kernel could
    /// only route it by that VIP.
    #[inline(always)]
    pub fn check_direct(&self) -> Result<(), Verdict> {
        if self.to_fragment {
            return Err(Verdict::PassFibOther);
        }
        if !self.resolved {
            return Err(Verdict::DropNoNeighbor);
        }
        if !self.on_link {
            return Err(Verdict::DropNotAdjacent);
        }
        Ok(())
    }
}

/// The time the data path keeps, in `CLOCK_MONOTONIC` nanoseconds: flows'
/// "last seen", the new-flow budget's window and the next-hop cache's age.
/// A tick's resolution is enough for all three: jiffies, a load once the
/// verifier has inlined `bpf_jiffies64`, turned into nanoseconds by the
/// agent's `CLOCK`; until the agent has set that, the coarse clock, a
/// helper call. A forwarded packet reads it once and passes it on.
#[inline(always)]
pub fn clock() -> u64 {
    match maps::tick_clock() {
        // SAFETY: `bpf_jiffies64` has no preconditions.
        Some(clock) => clock.ns(unsafe { bpf_jiffies64() }),
        // SAFETY: `bpf_ktime_get_coarse_ns` has no preconditions.
        None => unsafe { bpf_ktime_get_coarse_ns() },
    }
}

/// Records one sample of both clocks for the agent (see `maps::CLOCK`).
#[inline(always)]
pub fn sample_clocks() {
    // SAFETY (both): no preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    let coarse_ns = unsafe { bpf_ktime_get_coarse_ns() };
    maps::record_clock_sample(jiffies, coarse_ns);
}

/// Where a destination's next hop is cached: either way in a [`HopSlot`],
/// an array read that the verifier inlines, no hash lookup.
#[derive(Clone, Copy)]
pub enum HopCache {
    /// The slot of the backend (by id) the packet goes to, shared by all
    /// CPUs. A backend id reused for another node misses.
    Backend(u32),
    /// This CPU's slot for the destination address (a reply's client, an
    /// ICMP error's), by `lb_common::hash::client_hop_slot`. Clients that
    /// share a slot take turns in it, each evicting the other.
    Destination,
}

/// The next hop of a packet from `src` to `dst` (the addresses it will have
/// when sent), looked up before anything is rewritten: a destination that is
/// this host's own (`NOT_FWDED`) is the kernel's, and the packet must reach it
/// as it came. A hop the FIB gave for `dst` less than [`HOP_CACHE_NS`] ago
/// (`now` is [`clock`]'s), for a packet no longer than one it approved then,
/// is taken from `cache`: the FIB lookup is the largest single cost of a
/// forwarded packet. A packet too big for the next hop's link passes as
/// `Verdict::PassFibOther` (see [`too_big`]).
#[inline(always)]
pub fn next_hop(
    ctx: &Frame,
    route: &Route,
    [src, dst]: [&Addr; 2],
    cache: HopCache,
    now: u64,
) -> Result<NextHop, Verdict> {
    if let Some(cached) = maps::cached_hop(cache, dst) {
        // SAFETY: an array slot, valid for this program run; a concurrent
        // refresh of a shared slot may mix old and new fields, each of which
        // was right within the bound.
        let cached = unsafe { &*cached };
        if now.wrapping_sub(cached.refreshed_ns) < HOP_CACHE_NS && route.total_len <= cached.max_len
        {
            return Ok(NextHop {
                resolved: true,
                to_fragment: false,
                on_link: cached.on_link != 0,
                ifindex: cached.ifindex,
                egress_slot: cached.egress_slot,
                dmac: cached.dmac,
                smac: cached.smac,
            });
        }
    }
    let hop = fib_next_hop(ctx, route, src, dst)?;
    // A hop out of an interface that is no egress port is not cached: it
    // may be one a moment later (an agent attaches its interfaces one by
    // one), and until then its packets pass anyway.
    if hop.resolved && hop.egress_slot != NO_EGRESS_SLOT {
        let fresh = CachedHop {
            refreshed_ns: now,
            ifindex: hop.ifindex,
            max_len: route.total_len,
            on_link: u8::from(hop.on_link),
            egress_slot: hop.egress_slot,
            dmac: hop.dmac,
            smac: hop.smac,
        };
        maps::cache_hop(cache, dst, &fresh);
    }
    Ok(hop)
}

/// For a TCP or UDP packet that [`next_hop`] passed because the FIB found it
/// too big for the link to its next hop: with IPv4's Don't Fragment clear, a
/// hop that hands it to the kernel translated, to fragment and forward (with
/// direct server return, which the kernel could not forward, it passes
/// untouched); otherwise the side path that answers it (`lb_too_big`), but
/// for a later IPv4 fragment, which passes as `verdict`. For any other
/// packet, `verdict`. The FIB tells "too big" by the link's MTU,
/// which it writes where it read the packet's length, in this CPU's
/// parameter block; on every other failure that length stays. ICMP errors
/// do not come here: no ICMP error answers one (RFC 1122 3.2.2), and the
/// kernel need not fragment one (it quotes at most 576 or 1,280 bytes).
#[inline(always)]
pub fn too_big(ctx: &Frame, route: &Route, verdict: Verdict) -> Result<NextHop, Verdict> {
    if !matches!(verdict, Verdict::PassFibOther)
        || !maps::fib_mtu().is_some_and(|mtu| mtu < route.total_len)
    {
        return Err(verdict);
    }
    if route.family == Family::V4 {
        let header: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
        // SAFETY: bounds-checked by `ptr_at`.
        let frags = u16::from_be_bytes(unsafe { (*header).frags });
        if frags & DONT_FRAGMENT == 0 {
            return Ok(NextHop::unresolved(true));
        }
        // No ICMP error answers a fragment but a datagram's first (RFC 1122
        // 3.2.2); lb's answer quotes the ports, which the first has.
        if frags & IP_FRAGMENT_OFFSET != 0 {
            return Err(verdict);
        }
    }
    Err(side_paths::enter(ctx, SIDE_PATH_TOO_BIG, verdict))
}

/// IPv4's Don't Fragment flag, host order.
pub const DONT_FRAGMENT: u16 = 0x4000;

/// How long a next hop is taken from the cache: the bound on how long a node
/// whose MAC (or route) changed may still get packets the old way.
pub const HOP_CACHE_NS: u64 = 1_000_000_000;

/// A MAC address as three 16-bit words in network order: copied as words,
/// where a `[u8; 6]` is copied byte by byte.
pub type Mac = [u16; 3];

/// A next hop the FIB gave, kept in a [`HopSlot`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CachedHop {
    /// [`clock`] at the lookup.
    pub refreshed_ns: u64,
    pub ifindex: u32,
    /// The longest IP packet (total length) the FIB's MTU check approved.
    pub max_len: u16,
    pub on_link: u8,
    /// As [`NextHop`]'s.
    pub egress_slot: u8,
    pub dmac: Mac,
    pub smac: Mac,
}

/// A slot of `BACKEND_HOPS` or `CLIENT_HOPS`: a next hop and the address it
/// is for, since a slot may be taken by another destination (a backend id
/// reused for another node, another client of the same slot).
#[repr(C)]
pub struct HopSlot {
    pub dst: Addr,
    pub hop: CachedHop,
}

/// The kernel's FIB and neighbour tables' answer for the packet.
#[inline(always)]
fn fib_next_hop(ctx: &Frame, route: &Route, src: &Addr, dst: &Addr) -> Result<NextHop, Verdict> {
    let fib = zeroed_fib_params()?;
    fib.l4_protocol = route.proto;
    fib.sport = route.src_port;
    fib.dport = route.dst_port;
    fib.__bindgen_anon_1.tot_len = route.total_len;
    fib.ifindex = ctx.ingress_ifindex();
    match route.family {
        Family::V4 => {
            fib.family = AF_INET;
            fib.__bindgen_anon_2.tos = route.tos;
            fib.__bindgen_anon_3.ipv4_src = src[3];
            fib.__bindgen_anon_4.ipv4_dst = dst[3];
        }
        Family::V6 => {
            fib.family = AF_INET6;
            // SAFETY: plain integer arrays of the parameter block.
            unsafe {
                nat::copy_addr(&mut fib.__bindgen_anon_3.ipv6_src, src);
                nat::copy_addr(&mut fib.__bindgen_anon_4.ipv6_dst, dst);
            }
        }
    }
    // SAFETY: `fib` is a valid, writable parameter block of the size given.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), fib, size_of::<FibParams>() as i32, 0) };
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            return Ok(NextHop::unresolved(false));
        }
        BPF_FIB_LKUP_RET_NOT_FWDED => return Err(Verdict::PassNotService),
        _ => return Err(Verdict::PassFibOther),
    }
    // The lookup replaces the destination with the gateway's, if any.
    // SAFETY: plain integers; the family says which member was written.
    let on_link = unsafe {
        match route.family {
            Family::V4 => fib.__bindgen_anon_4.ipv4_dst == dst[3],
            Family::V6 => fib.__bindgen_anon_4.ipv6_dst == *dst,
        }
    };
    // SAFETY: both MACs lie at even offsets of the 4-byte aligned block.
    let (dmac, smac) = unsafe {
        (
            (&raw const fib.dmac).cast::<Mac>().read(),
            (&raw const fib.smac).cast::<Mac>().read(),
        )
    };
    Ok(NextHop {
        resolved: true,
        to_fragment: false,
        on_link,
        ifindex: fib.ifindex,
        egress_slot: maps::egress_slot(fib.ifindex).unwrap_or(NO_EGRESS_SLOT),
        dmac,
        smac,
    })
}

/// Sends the packet, rewritten as it is to be, to `hop`, counting the hop in
/// its TTL. When the neighbour is not resolved yet, or the egress is no port
/// of the devmap (an interface lb is not attached to), the packet goes to
/// the kernel as it is, Ethernet header and TTL untouched, and the kernel
/// forwards it itself (resolving the neighbour first). So the redirect is
/// asked for before the frame is readdressed: a frame passed with the next
/// hop's MACs would be another host's to the kernel, which drops it.
#[inline(always)]
pub fn send(
    ctx: &Frame,
    family: Family,
    hop: &NextHop,
    direction: Direction,
) -> Result<u32, Verdict> {
    if !hop.resolved {
        return Err(if hop.to_fragment {
            Verdict::PassToFragment
        } else {
            Verdict::PassFibMiss
        });
    }
    let (tx_counter, redirect_counter) = direction.counters();
    let (action, counter) = if hop.ifindex == ctx.ingress_ifindex() {
        (xdp_action::XDP_TX, tx_counter)
    } else {
        if hop.egress_slot == NO_EGRESS_SLOT {
            return Err(Verdict::PassFibOther);
        }
        let action = EGRESS_PORTS
            .redirect(u32::from(hop.egress_slot), 0)
            .map_err(|_| Verdict::PassFibOther)?;
        (action, redirect_counter)
    };
    nat::decrement_ttl(ctx, family)?;
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    set_macs(eth, &hop.dmac, &hop.smac);
    count(counter);
    Ok(action)
}
