//! Maps shared with userspace, and thin accessors over them. What the data
//! path decides with them lives in `balance`.

use core::mem::{MaybeUninit, offset_of};

use crate::{
    forward::{CachedHop, HopCache, HopSlot},
    keys,
    nat::copy_addr,
};
use aya_ebpf::{
    bindings::bpf_fib_lookup,
    macros::map,
    maps::{Array, DevMap, HashMap, LruHashMap, PerCpuArray, ProgramArray},
};
use lb_common::{
    Addr, Backend, Budget, CachedFlow, DataPathClock, Flow, FlowKey, FlowKey4, IFACES_BY_INDEX_LEN,
    Iface, IfacesByIndexEntries, KEY_FILTER_WORDS, KeyFilter, KeyFilterWords, MAX_BACKENDS,
    MAX_EGRESS_PORTS, MAX_FLOWS, MAX_IFACES, MAX_SERVICES, NODE_PORT_SLOTS, NeighborMask,
    SETTING_ANSWER_ECHO, SETTING_DSR, SIDE_PATH_SLOTS, ServiceInfo, ServiceKey, ServiceKey4,
    Settings, TickClock, Traffic, answers_on, counters,
    hash::{CLIENT_HOP_SLOTS, FLOW_CACHE_SLOTS, client_hop_slot},
    ipv4_mapped, is_ipv4_mapped, node_port_slot,
};

/// Per-CPU LRU lists: flow inserts on one CPU do not contend with another's.
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;
/// An array userspace can `mmap`.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The services, one map per family (see `lb_common::family`).
#[map]
static SERVICES4: HashMap<ServiceKey4, ServiceInfo> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map]
static SERVICES6: HashMap<ServiceKey, ServiceInfo> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map]
static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// All services' Maglev rings back to back; sized by the loader, and
/// mapped by the agent, which writes the rings into its memory.
#[map]
static MAGLEV: Array<u32> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// The flow tables, one per family; the loader may size them. Read and
/// written through `flows`.
#[map]
pub static FLOWS4: LruHashMap<FlowKey4, Flow> =
    LruHashMap::with_max_entries(MAX_FLOWS, BPF_F_NO_COMMON_LRU);

#[map]
pub static FLOWS6: LruHashMap<FlowKey, Flow> =
    LruHashMap::with_max_entries(MAX_FLOWS, BPF_F_NO_COMMON_LRU);

/// Each CPU's copies of the flow entries its packets used last,
/// direct-mapped by `flow_cache_slot` (see `flows`). Pinned, as the counts
/// the copies hold are the flows' until given back.
#[map]
pub static FLOW_CACHE4: PerCpuArray<CachedFlow<FlowKey4>> =
    PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

#[map]
pub static FLOW_CACHE6: PerCpuArray<CachedFlow<FlowKey>> =
    PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

/// `lb_common::MAP_RETIRED_TRAFFIC`: the agent's, which the data path never
/// reads or writes; declared here to be created and pinned with the rest.
#[map]
static RETIRED_TRAFFIC: Array<Traffic> = Array::with_max_entries(MAX_SERVICES, 0);

#[map]
static BACKEND_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::SLOTS, 0);

/// Every VIP with at least one service (ICMP echo addressed to the VIP
/// itself), with the interfaces ARP and Neighbor Solicitations for it are
/// answered on.
#[map]
static VIPS: HashMap<Addr, NeighborMask> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// The frontend each backend NodePort serves, by `node_port_slot`: how a
/// node's reply finds the VIP it must leave with, by an array read the
/// verifier inlines where a hash map would cost a helper call. An entry of
/// protocol 0 is empty. Derived by the agent at every load, so not pinned.
#[map]
static NODE_PORTS4: Array<ServiceKey4> = Array::with_max_entries(NODE_PORT_SLOTS, 0);

#[map]
static NODE_PORTS6: Array<ServiceKey> = Array::with_max_entries(NODE_PORT_SLOTS, 0);

/// Bits standing for the keys of `SERVICES` and `NODE_PORTS`, and for their
/// addresses alone (see `KeyFilter`). Most packets that are not ours (the
/// host's own traffic) are told apart by two reads of it, by their
/// addresses, before their ports are read; a packet to a VIP with no flow
/// by one more, with its port, before the `SERVICES` lookup. Global data
/// (`MAP_KEY_FILTER`), read at its address: an array map's lookup, even
/// inlined, takes its index through the stack, and the load waits for it.
/// Written whole by the agent at every change; derived from what is
/// programmed, so not pinned. Read through [`global_word`].
#[unsafe(link_section = ".bss.key_filter")]
static mut KEY_FILTER: KeyFilterWords = [0; KEY_FILTER_WORDS as usize];

/// The data path's switches (`lb_common::MAP_SETTINGS`). Global data, as
/// `KEY_FILTER` is: a forwarded packet reads them, and an array map's
/// lookup would cost it a key through the stack. Written by the agent at
/// every load, before the program is attached; read a field at a time
/// through [`settings_field`].
#[unsafe(link_section = ".bss.settings")]
static mut SETTINGS: Settings = Settings {
    flags: 0,
    new_flow_limit: 0,
};

/// Zero, where the verifier cannot see it: nothing writes it, and the
/// verifier takes a writable global for unknown. A value it is added to is
/// known to the verifier by its bounds alone, so that paths which computed
/// the value differently go on in one state (see `parse::skip_extensions`).
#[unsafe(link_section = ".bss.opaque_zero")]
static mut OPAQUE_ZERO: u32 = 0;

/// Flows each CPU inserted in the current second, against `Settings::new_flow_limit`.
#[map]
static FLOW_BUDGET: PerCpuArray<Budget> = PerCpuArray::with_max_entries(1, 0);

/// Packets each CPU answered as too big in the current second (see
/// `too_big`). Not pinned: a new program starts a new second.
#[map]
static TOO_BIG_BUDGET: PerCpuArray<Budget> = PerCpuArray::with_max_entries(1, 0);

/// The interfaces the program is attached to, by ifindex.
#[map]
static IFACES: HashMap<u32, Iface> = HashMap::with_max_entries(MAX_IFACES, 0);

/// `IFACES` by ifindex (see `IFACES_BY_INDEX_LEN`); derived from it by the
/// agent at every load, so not pinned. Global data, as `KEY_FILTER` is, and
/// read through [`global_word`].
#[unsafe(link_section = ".bss.ifaces_by_index")]
static mut IFACES_BY_INDEX: IfacesByIndexEntries = [Iface {
    mac: [0; 6],
    slot: 0,
    _pad: 0,
}; IFACES_BY_INDEX_LEN as usize];

/// The data path's clock and the time of the latest backend change by it
/// (`lb_common::DataPathClock`). Written by the agent at every load and
/// after each change, so not pinned; read a word at a time through
/// [`clock_word`].
#[unsafe(link_section = ".bss.clock")]
static mut CLOCK: DataPathClock = DataPathClock {
    tick: TickClock {
        ns_per_tick: 0,
        offset_ns: 0,
        sample_jiffies: 0,
        sample_ns: 0,
    },
    backends_changed_ns: 0,
};

/// Word `index` of the global-data array at `array`, in one load. Volatile:
/// the agent writes the words the data path reads (the program writes
/// none of them), so the compiler would take them for the zeros they start
/// as.
///
/// # Safety
/// `array` must be a global whose entries are 8-byte words, and `index`
/// within it.
#[inline(always)]
unsafe fn global_word<A>(array: *const A, index: u32) -> u64 {
    // SAFETY: the caller vouches for the array and the index.
    unsafe { array.cast::<u64>().add(index as usize).read_volatile() }
}

/// Each CPU's parameter block for `bpf_fib_lookup` (see `forward`).
/// Scratch space, but pinned (`lb_common::MAP_FIB_PARAMS`): the side path
/// `lb_too_big` reads the MTU a lookup left in it, and a load sets its side
/// paths in the pinned array while an earlier load's entry point may still
/// serve, so both must see the same block.
#[map]
pub static FIB_PARAMS: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

/// Each CPU's key of the flow an ICMP error is about (see `icmp`): on the
/// stack, it left the ICMPv6 side path's other locals no room. Scratch
/// space, written anew for every error, so not pinned.
#[map]
static ERROR_FLOW: PerCpuArray<FlowKey> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's [`ERROR_FLOW`] slot, to be written.
#[inline(always)]
pub fn error_flow_slot() -> Option<&'static mut MaybeUninit<FlowKey>> {
    let slot = ERROR_FLOW.get_ptr_mut(0)?;
    // SAFETY: a per-CPU value, not shared while this program runs; a
    // `MaybeUninit` is as the `FlowKey` it holds.
    Some(unsafe { &mut *slot.cast::<MaybeUninit<FlowKey>>() })
}

/// The MTU this CPU's last `bpf_fib_lookup` reported with
/// `BPF_FIB_LKUP_RET_FRAG_NEEDED`, for the side path it tail-calls then,
/// which runs on the same CPU before anything else can look up.
#[inline(always)]
pub fn fib_mtu() -> Option<u16> {
    let block = FIB_PARAMS.get_ptr(0)?;
    // SAFETY: a per-CPU value; both members of the union are a `u16`.
    Some(unsafe { (*block).__bindgen_anon_1.mtu_result })
}

/// The next hop of each backend, by backend id: what most forwarded packets
/// need. A cache, refreshed from the FIB (see `forward::next_hop`): not
/// pinned, a new program starts empty.
#[map]
static BACKEND_HOPS: Array<HopSlot> = Array::with_max_entries(MAX_BACKENDS, 0);

/// The next hops of the clients replies (and ICMP errors) go to, each CPU's
/// own, direct-mapped by address (`client_hop_slot`): an array read the
/// verifier inlines where a hash map would cost a helper call, hashing and
/// an LRU; per CPU, so a slot is never written by two CPUs at once and
/// never pairs one client's address with another's hop. The price: a client
/// costs a FIB lookup on each CPU its replies arrive on, at most once per
/// `HOP_CACHE_NS` each. A cache like `BACKEND_HOPS`.
#[map]
static CLIENT_HOPS: PerCpuArray<HopSlot> = PerCpuArray::with_max_entries(CLIENT_HOP_SLOTS, 0);

/// IPv4 datagrams in fragments, as [`FragmentKey`], to the ports their first
/// fragment had (as `parse::Transport` reads them): what their later
/// fragments, which have no transport header, are balanced and translated
/// by. Shared by all CPUs (a datagram's fragments may arrive on several),
/// least recently used out of one common list: per-CPU lists would split
/// it over every possible CPU, and a NIC spreads fragments by addresses
/// alone, so one busy pair of hosts would have one CPU's small share. (Only
/// first fragments insert: the common list's lock is taken rarely.) Not
/// pinned: a datagram outlives no load.
#[map]
static FRAGMENTS4: LruHashMap<FragmentKey, u32> =
    LruHashMap::with_max_entries(MAX_FRAGMENTED_DATAGRAMS, 0);

/// Datagrams whose fragments are followed at once: the kernel's own
/// reassembly keeps at most 4 MB of fragments per namespace
/// (`ipfrag_high_thresh`), a few thousand datagrams.
const MAX_FRAGMENTED_DATAGRAMS: u32 = 16384;

/// A datagram's identity (RFC 791): source and destination address, then
/// the identification (as it lies in the packet) and the protocol in one
/// word.
pub type FragmentKey = [u32; 3];

/// The ports of the datagram `key`'s first fragment, if it was seen.
#[inline(always)]
pub fn fragment_ports(key: &FragmentKey) -> Option<u32> {
    // SAFETY: a plain value, copied out.
    unsafe { FRAGMENTS4.get(key) }.copied()
}

/// Remembers the ports of the datagram `key` from its first fragment. Should
/// that fail, its later fragments pass to the kernel.
#[inline(always)]
pub fn remember_fragment_ports(key: &FragmentKey, ports: u32) {
    let _ = FRAGMENTS4.insert(key, ports, 0);
}

/// The programs for what is neither TCP nor UDP, tail-called by the entry
/// point (`lb_common::SIDE_PATH_PROGRAMS`); set by the agent at every load.
#[map]
pub static SIDE_PATH_ARRAY: ProgramArray = ProgramArray::with_max_entries(SIDE_PATH_SLOTS, 0);

/// Interfaces packets may be redirected to, by egress slot
/// (`lb_common::MAP_EGRESS_PORTS`).
#[map]
pub static EGRESS_PORTS: DevMap = DevMap::with_max_entries(MAX_EGRESS_PORTS, 0);

/// Each egress port's slot in `EGRESS_PORTS`, by ifindex.
#[map]
static EGRESS_SLOTS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_EGRESS_PORTS, 0);

/// The slot in `EGRESS_PORTS` of interface `ifindex`, if packets may be
/// redirected to it.
#[inline(always)]
pub fn egress_slot(ifindex: u32) -> Option<u8> {
    // SAFETY: a plain value, copied out.
    let slot = unsafe { EGRESS_SLOTS.get(ifindex) }.copied()?;
    u8::try_from(slot).ok()
}

#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *counter += 1 };
    }
}

/// Counts a packet sent to backend `id`: a service's traffic is its
/// backends' (with what its retired backends counted, which the agent
/// keeps), so a forwarded packet updates one counter, not two.
#[inline(always)]
pub fn account(backend_id: u32, bytes: u64) {
    if let Some(traffic) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe {
            (*traffic).packets += 1;
            (*traffic).bytes += bytes;
        }
    }
}

/// Whether `map` may hold the key of (`addr`, `port`, `proto`); `false`
/// proves it does not.
#[inline(always)]
fn may_hold(map: KeyFilter, addr: &Addr, port: u16, proto: u8) -> bool {
    let (word, bit) = map.position_of(addr, port, proto);
    // SAFETY: the mask keeps the index within the filter (the verifier
    // checks it too).
    let word = unsafe { global_word(&raw const KEY_FILTER, word & (KEY_FILTER_WORDS - 1)) };
    word & bit != 0
}

/// Whether (`addr`, `port` network order, `proto`) may be a service's;
/// `false` proves it is not, without a lookup.
#[inline(always)]
pub fn may_be_service(addr: &Addr, port: u16, proto: u8) -> bool {
    may_hold(KeyFilter::Services, addr, port, proto)
}

/// Whether `addr` may be a VIP; `false` proves no service is at it.
#[inline(always)]
pub fn may_be_vip(addr: &Addr) -> bool {
    may_hold(KeyFilter::Vips, addr, 0, 0)
}

/// Whether `addr` may be a backend's node; `false` proves no NodePort is
/// at it.
#[inline(always)]
pub fn may_be_node(addr: &Addr) -> bool {
    may_hold(KeyFilter::Nodes, addr, 0, 0)
}

/// Whether (`addr`, `port` network order, `proto`) may be a backend's
/// NodePort; `false` proves it is not, without a lookup.
#[inline(always)]
pub fn may_be_node_port(addr: &Addr, port: u16, proto: u8) -> bool {
    may_hold(KeyFilter::NodePorts, addr, port, proto)
}

/// The service at (`addr`, `port` network order, `proto`), from the map of
/// its family (see `lb_common::family`). No key filter here: its callers
/// asked it already ([`may_be_service`]) or hold a key of a programmed
/// service.
#[inline(always)]
pub fn service(addr: &Addr, port: u16, proto: u8) -> Option<ServiceInfo> {
    // SAFETY (both): the value is copied before the map can change it.
    if is_ipv4_mapped(addr) {
        let mut key = MaybeUninit::uninit();
        let key = keys::service_key4(&mut key, addr[3], port, proto);
        unsafe { SERVICES4.get(key) }.copied()
    } else {
        let mut key = MaybeUninit::uninit();
        let key = keys::service_key(&mut key, addr, port, proto);
        unsafe { SERVICES6.get(key) }.copied()
    }
}

/// `DataPathClock::backends_changed_ns`.
#[inline(always)]
pub fn backends_changed_ns() -> u64 {
    clock_word(offset_of!(DataPathClock, backends_changed_ns))
}

/// The word of [`CLOCK`] at byte `offset`, in one load: volatile, as
/// [`global_word`] is.
#[inline(always)]
fn clock_word(offset: usize) -> u64 {
    // SAFETY: callers pass the offset of a `u64` field of the global.
    unsafe { global_word(&raw const CLOCK, (offset / 8) as u32) }
}

#[inline(always)]
pub fn backend(id: u32) -> Option<&'static Backend> {
    BACKENDS.get(id)
}

/// The backend id at `slot` of the `MAGLEV` array.
#[inline(always)]
pub fn ring_entry(slot: u32) -> Option<u32> {
    MAGLEV.get(slot).copied()
}

/// The frontend (VIP, port, protocol) served by the backend at (`addr`,
/// `port`, `proto`), if the key filter does not rule it out. Only the
/// NodePort picks the entry (`node_port_slot`): the caller checks the node.
/// Copied field by field: copied whole, the value becomes a `memmove`
/// subprogram call.
#[inline(always)]
pub fn frontend_of_node_port(addr: &Addr, port: u16, proto: u8) -> Option<ServiceKey> {
    if !may_be_node_port(addr, port, proto) {
        return None;
    }
    let slot = node_port_slot(port, proto)?;
    if is_ipv4_mapped(addr) {
        let frontend = NODE_PORTS4.get(slot).filter(|f| f.proto != 0)?;
        Some(ServiceKey::new(
            ipv4_mapped(frontend.vip),
            frontend.port,
            frontend.proto,
        ))
    } else {
        let frontend = NODE_PORTS6.get(slot).filter(|f| f.proto != 0)?;
        let [a, b, c, d] = frontend.vip;
        Some(ServiceKey::new([a, b, c, d], frontend.port, frontend.proto))
    }
}

/// This CPU's new-flow budget.
#[inline(always)]
pub fn flow_budget() -> Option<*mut Budget> {
    FLOW_BUDGET.get_ptr_mut(0)
}

/// This CPU's budget of answers to packets too big.
#[inline(always)]
pub fn too_big_budget() -> Option<*mut Budget> {
    TOO_BIG_BUDGET.get_ptr_mut(0)
}

/// The field of [`SETTINGS`] at byte `offset`, in one load: volatile, as
/// [`global_word`] is.
#[inline(always)]
fn settings_field(offset: usize) -> u32 {
    // SAFETY: callers pass the offset of a `u32` field of the global.
    unsafe {
        (&raw const SETTINGS)
            .cast::<u8>()
            .add(offset)
            .cast::<u32>()
            .read_volatile()
    }
}

/// [`OPAQUE_ZERO`], in one load: volatile, so that the compiler keeps it.
#[inline(always)]
pub fn opaque_zero() -> u32 {
    // SAFETY: reading a global that nothing writes.
    unsafe { (&raw const OPAQUE_ZERO).read_volatile() }
}

/// `Settings::new_flow_limit`: 0 for none.
#[inline(always)]
pub fn new_flow_limit() -> u32 {
    settings_field(offset_of!(Settings, new_flow_limit))
}

/// Whether echo requests to VIPs are answered.
#[inline(always)]
pub fn answer_echo() -> bool {
    settings_field(offset_of!(Settings, flags)) & SETTING_ANSWER_ECHO != 0
}

/// Whether services are served by direct server return.
#[inline(always)]
pub fn direct_server_return() -> bool {
    settings_field(offset_of!(Settings, flags)) & SETTING_DSR != 0
}

#[inline(always)]
pub fn is_vip(addr: &Addr) -> bool {
    // SAFETY: only presence is read.
    unsafe { VIPS.get(addr) }.is_some()
}

/// The slot where `cache` keeps the next hop of `dst`.
#[inline(always)]
fn hop_slot(cache: HopCache, dst: &Addr) -> Option<*mut HopSlot> {
    match cache {
        HopCache::Backend(id) => BACKEND_HOPS.get_ptr_mut(id),
        HopCache::Destination => CLIENT_HOPS.get_ptr_mut(client_hop_slot(dst)),
    }
}

/// The cached next hop of `dst`, to read in place, if its slot holds `dst`'s.
#[inline(always)]
pub fn cached_hop(cache: HopCache, dst: &Addr) -> Option<*const CachedHop> {
    let slot = hop_slot(cache, dst)?;
    // SAFETY: a valid slot of the array.
    unsafe { ((*slot).dst == *dst).then_some(&raw const (*slot).hop) }
}

/// Caches the next hop of `dst`, in place: readers on other CPUs may see a
/// mix of this and the previous hop of a shared slot (see
/// `forward::next_hop`). The hop is written before the address, so a reader
/// never pairs `dst` with the hop of a destination that had the slot before.
#[inline(always)]
pub fn cache_hop(cache: HopCache, dst: &Addr, hop: &CachedHop) {
    if let Some(slot) = hop_slot(cache, dst) {
        // SAFETY: a valid slot of the array; `copy_addr` copies word by word.
        unsafe {
            // Volatile, as `copy_addr`'s stores are: kept in this order.
            (&raw mut (*slot).hop).write_volatile(*hop);
            copy_addr(&raw mut (*slot).dst, dst);
        }
    }
}

/// The clock the agent set, if it did.
#[inline(always)]
pub fn tick_clock() -> Option<TickClock> {
    let clock = TickClock {
        ns_per_tick: clock_word(offset_of!(DataPathClock, tick.ns_per_tick)),
        offset_ns: clock_word(offset_of!(DataPathClock, tick.offset_ns)),
        sample_jiffies: 0,
        sample_ns: 0,
    };
    clock.is_set().then_some(clock)
}

/// Records `jiffies` and `coarse_ns`, read together, for the agent.
#[inline(always)]
pub fn record_clock_sample(jiffies: u64, coarse_ns: u64) {
    // SAFETY: fields of the global; the data path reads only the others.
    // Volatile, as the agent reads them (see `global_word`).
    unsafe {
        (&raw mut CLOCK.tick.sample_jiffies).write_volatile(jiffies);
        (&raw mut CLOCK.tick.sample_ns).write_volatile(coarse_ns);
    }
}

/// The attached interface `ifindex`, from `IFACES_BY_INDEX` where it can be.
#[inline(always)]
fn iface(ifindex: u32) -> Option<Iface> {
    if ifindex < IFACES_BY_INDEX_LEN {
        // SAFETY: within the array, whose entries are words, aligned, with
        // no padding but their explicit field.
        let iface: Iface =
            unsafe { core::mem::transmute(global_word(&raw const IFACES_BY_INDEX, ifindex)) };
        return iface.is_set().then_some(iface);
    }
    // SAFETY: copied before the map can change it (RCU).
    unsafe { IFACES.get(ifindex) }.copied()
}

/// The MAC of the attached interface `ifindex`, as `lb_common::mac_word`
/// gives it.
#[inline(always)]
pub fn iface_mac_word(ifindex: u32) -> Option<u64> {
    iface(ifindex).as_ref().map(Iface::mac_word)
}

/// The MAC to answer ARP and Neighbor Solicitations for `vip` with when they
/// arrive on `ifindex`: that interface's, if the VIP is answered there.
#[inline(always)]
pub fn neighbor_answer(vip: &Addr, ifindex: u32) -> Option<[u8; 6]> {
    // SAFETY: both values are copied out before the maps can change them.
    let mask = *unsafe { VIPS.get(vip) }?;
    let iface = iface(ifindex)?;
    answers_on(mask, iface.slot).then_some(iface.mac)
}
