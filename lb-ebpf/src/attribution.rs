//! Attribution programs for `cargo xtask bench`: each does one thing lb's data
//! path does, then returns XDP_TX, so the benchmark can show, beside the
//! XDP_TX floor measured the same way, what each costs on this machine.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::generated::{
        bpf_fib_lookup, bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns,
    },
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{Flow, FlowKey, FlowKey4, MAX_FLOWS};

/// Per-CPU LRU lists, as lb's flow table.
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;
const AF_INET: u8 = 2;
/// The address every FIB lookup asks for: node 1 of the bench's namespace,
/// whose neighbour is resolved. Network order.
const FIB_DESTINATION: u32 = u32::from_ne_bytes([10, 1, 0, 11]);

/// Keyed by IPv4 flows, as lb's `FLOWS4`.
#[map]
static LRU_PER_CPU: LruHashMap<FlowKey4, Flow> =
    LruHashMap::with_max_entries(MAX_FLOWS, BPF_F_NO_COMMON_LRU);

#[map]
static LRU_COMMON: LruHashMap<FlowKey4, Flow> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// The two LRU kinds again, which the bench fills before it measures: each
/// insert then evicts, as every new flow does in a full flow table.
#[map]
static LRU_PER_CPU_FULL: LruHashMap<FlowKey4, Flow> =
    LruHashMap::with_max_entries(MAX_FLOWS, BPF_F_NO_COMMON_LRU);

#[map]
static LRU_COMMON_FULL: LruHashMap<FlowKey4, Flow> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// A plain hash of the same size, preallocated: no LRU lists to keep.
#[map]
static PLAIN: HashMap<FlowKey4, Flow> = HashMap::with_max_entries(MAX_FLOWS, 0);

const BPF_F_NO_PREALLOC: u32 = 1;

/// A plain hash whose entries are allocated at insert.
#[map]
static PLAIN_NO_PREALLOC: HashMap<FlowKey4, Flow> =
    HashMap::with_max_entries(MAX_FLOWS, BPF_F_NO_PREALLOC);

/// Sized and flagged as lb's `FLOWS4`, with one entry (the bench writes
/// `ipv4_flow(1)`): what an established IPv4 packet's flow lookup costs
/// against the small table of `HASH_KEY16`.
#[map]
static FLOW_TABLE: LruHashMap<FlowKey4, Flow> =
    LruHashMap::with_max_entries(MAX_FLOWS, BPF_F_NO_COMMON_LRU);

/// One entry each, written by the bench: the lookups hit.
#[map]
static HASH_KEY40: HashMap<FlowKey, u32> = HashMap::with_max_entries(1024, 0);

#[map]
static HASH_KEY16: HashMap<FlowKey4, u32> = HashMap::with_max_entries(1024, 0);

/// A flow's key and entry in one 64-byte cache line: a slot of
/// [`FLOW_SLOTS`].
#[repr(C, align(64))]
pub struct FlowSlot {
    key: FlowKey4,
    flow: Flow,
}

const _: () = assert!(core::mem::size_of::<FlowSlot>() == 64);

const BPF_F_MMAPABLE: u32 = 1 << 10;

/// As many flows as lb's table, each in a slot of its own: a flow table
/// that is an array, set-associative or direct-mapped, needs no bucket, no
/// free list and no LRU lists, so its insert is the least any flow table's
/// can be: one cold line read and written. Mappable, so that the values
/// start page-aligned and every slot is one whole line.
#[map]
static FLOW_SLOTS: Array<FlowSlot> = Array::with_max_entries(MAX_FLOWS, BPF_F_MMAPABLE);

/// Each CPU's count of inserts, which makes every inserted key new: into
/// the hashes with room at [`HASH_INSERTS`], `FLOW_SLOTS`' at
/// [`SLOT_INSERTS`], the full hashes' at [`EVICTING_INSERTS`].
#[map]
static INSERTS: PerCpuArray<u32> = PerCpuArray::with_max_entries(3, 0);

const HASH_INSERTS: u32 = 0;
const SLOT_INSERTS: u32 = 1;
const EVICTING_INSERTS: u32 = 2;

/// One `bpf_fib_lookup`, as lb's forwarding makes it on a next-hop miss.
#[xdp]
pub fn attr_fib_lookup(ctx: XdpContext) -> u32 {
    // SAFETY: an all-zero parameter block is valid.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_4.ipv4_dst = FIB_DESTINATION;
    // SAFETY: `fib` is a valid, writable parameter block of the size given.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    tx_if(rc == 0)
}

/// One read of the precise clock.
#[xdp]
pub fn attr_clock(_ctx: XdpContext) -> u32 {
    // SAFETY: no preconditions.
    core::hint::black_box(unsafe { bpf_ktime_get_ns() });
    xdp_action::XDP_TX
}

/// One read of the coarse clock (what lb reads).
#[xdp]
pub fn attr_clock_coarse(_ctx: XdpContext) -> u32 {
    // SAFETY: no preconditions.
    core::hint::black_box(unsafe { bpf_ktime_get_coarse_ns() });
    xdp_action::XDP_TX
}

/// One read of jiffies, which the verifier inlines as a load: the cheapest
/// clock, in ticks rather than nanoseconds.
#[xdp]
pub fn attr_clock_jiffies(_ctx: XdpContext) -> u32 {
    // SAFETY: no preconditions.
    core::hint::black_box(unsafe { bpf_jiffies64() });
    xdp_action::XDP_TX
}

/// One insert of a new flow into a 1M-entry LRU with per-CPU lists.
#[xdp]
pub fn attr_lru_insert_per_cpu(_ctx: XdpContext) -> u32 {
    tx_if(insert(&LRU_PER_CPU, HASH_INSERTS))
}

/// One insert of a new flow into a 1M-entry LRU with one common list.
#[xdp]
pub fn attr_lru_insert_common(_ctx: XdpContext) -> u32 {
    tx_if(insert(&LRU_COMMON, HASH_INSERTS))
}

/// One insert of a new flow into a full 1M-entry LRU with per-CPU lists.
#[xdp]
pub fn attr_lru_evict_per_cpu(_ctx: XdpContext) -> u32 {
    tx_if(insert(&LRU_PER_CPU_FULL, EVICTING_INSERTS))
}

/// One insert of a new flow into a full 1M-entry LRU with one common list.
#[xdp]
pub fn attr_lru_evict_common(_ctx: XdpContext) -> u32 {
    tx_if(insert(&LRU_COMMON_FULL, EVICTING_INSERTS))
}

/// One insert of a new flow into a preallocated 1M-entry plain hash.
#[xdp]
pub fn attr_hash_insert(_ctx: XdpContext) -> u32 {
    tx_if(insert_plain(&PLAIN))
}

/// One insert of a new flow into a 1M-entry plain hash that allocates.
#[xdp]
pub fn attr_hash_insert_no_prealloc(_ctx: XdpContext) -> u32 {
    tx_if(insert_plain(&PLAIN_NO_PREALLOC))
}

/// One new flow written into a slot of `FLOW_SLOTS` no earlier call used
/// (a multiplicative hash of the count, a bijection on the slots, scatters
/// them as flow hashes would), after reading the key it held, as an insert
/// that must not overwrite a live flow of another key does.
#[xdp]
pub fn attr_slot_insert(_ctx: XdpContext) -> u32 {
    let Some(n) = next_key(SLOT_INSERTS) else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(slot) = FLOW_SLOTS.get_ptr_mut(n.wrapping_mul(0x9e37_79b1) & (MAX_FLOWS - 1)) else {
        return xdp_action::XDP_ABORTED;
    };
    let key = ipv4_flow(n);
    // SAFETY: a slot of the array, valid for this program run.
    unsafe {
        if core::ptr::read_volatile(&raw const (*slot).key.src_ip) == key.src_ip {
            return xdp_action::XDP_ABORTED;
        }
        slot.write(FlowSlot {
            key,
            flow: Flow::default(),
        });
    }
    xdp_action::XDP_TX
}

#[inline(always)]
fn insert_plain(map: &HashMap<FlowKey4, Flow>) -> bool {
    next_key(HASH_INSERTS).is_some_and(|n| map.insert(ipv4_flow(n), Flow::default(), 0).is_ok())
}

/// One hash lookup with a 40-byte key (lb's IPv6 flow key).
#[xdp]
pub fn attr_hash_lookup_key40(_ctx: XdpContext) -> u32 {
    let key = FlowKey::new([0, 0, 0, 1], [0, 0, 0, 2], 3, 4, 6);
    // SAFETY: only presence is read.
    tx_if(unsafe { HASH_KEY40.get(key) }.is_some())
}

/// One hash lookup with a 16-byte key (lb's IPv4 flow key).
#[xdp]
pub fn attr_hash_lookup_key16(_ctx: XdpContext) -> u32 {
    let key = ipv4_flow(1);
    // SAFETY: only presence is read.
    tx_if(unsafe { HASH_KEY16.get(key) }.is_some())
}

/// One lookup of an IPv4 flow in a table the size of lb's, which hits.
#[xdp]
pub fn attr_flow_lookup(_ctx: XdpContext) -> u32 {
    let key = ipv4_flow(1);
    // SAFETY: only presence is read.
    tx_if(unsafe { FLOW_TABLE.get(key) }.is_some())
}

/// Inserts a flow under a key no earlier call of its `kind` used.
#[inline(always)]
fn insert(map: &LruHashMap<FlowKey4, Flow>, kind: u32) -> bool {
    next_key(kind).is_some_and(|n| map.insert(ipv4_flow(n), Flow::default(), 0).is_ok())
}

/// A source address no earlier insert of its kind (`HASH_INSERTS`,
/// `SLOT_INSERTS`, `EVICTING_INSERTS`) on this CPU used.
#[inline(always)]
fn next_key(kind: u32) -> Option<u32> {
    let count = INSERTS.get_ptr_mut(kind)?;
    // SAFETY: per-CPU slot, no concurrent writer.
    Some(unsafe {
        *count = (*count).wrapping_add(1);
        *count
    })
}

/// The IPv4 flow key from source address `src` to 0.0.0.2 (the bench
/// writes `ipv4_flow(1)` into `HASH_KEY16` and `FLOW_TABLE`).
#[inline(always)]
fn ipv4_flow(src: u32) -> FlowKey4 {
    FlowKey4 {
        src_ip: src,
        dst_ip: 2,
        src_port: 3,
        dst_port: 4,
        proto: 6,
        _pad: [0; 3],
    }
}

/// XDP_TX when the one thing worked, so the bench knows it was measured;
/// XDP_ABORTED otherwise.
#[inline(always)]
fn tx_if(worked: bool) -> u32 {
    if worked {
        xdp_action::XDP_TX
    } else {
        xdp_action::XDP_ABORTED
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
