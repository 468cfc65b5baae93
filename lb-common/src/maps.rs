//! Map keys and values.

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IPv6 next header number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

/// Map names, shared so userspace finds what the program declares.
/// The per-family pairs (see `family`): IPv4 first.
pub const MAP_SERVICES4: &str = "SERVICES4";
pub const MAP_SERVICES6: &str = "SERVICES6";
pub const MAP_BACKENDS: &str = "BACKENDS";
pub const MAP_MAGLEV: &str = "MAGLEV";
pub const MAP_FLOWS4: &str = "FLOWS4";
pub const MAP_FLOWS6: &str = "FLOWS6";
pub const MAP_FLOW_CACHE4: &str = "FLOW_CACHE4";
pub const MAP_FLOW_CACHE6: &str = "FLOW_CACHE6";
/// What a service's backends counted before they were retired, by service
/// id: a service's traffic is that plus its backends' `BACKEND_STATS`.
/// The agent's alone (the data path counts per backend only), pinned so
/// that it outlives the agent.
pub const MAP_RETIRED_TRAFFIC: &str = "RETIRED_TRAFFIC";
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
/// The global counters, [`crate::counters::SLOTS`] of them. (Earlier agents
/// pinned one for each counter they knew as `GLOBAL_STATS`.)
pub const MAP_COUNTERS: &str = "COUNTERS";
/// The interfaces packets may be redirected to, by egress slot: a devmap
/// array, whose lookup is an index where a devmap hash's is a hash and a
/// bucket walk on every redirected packet. (Earlier agents pinned a devmap
/// hash by ifindex as `TX_PORTS`.)
pub const MAP_EGRESS_PORTS: &str = "EGRESS_PORTS";
/// Each egress port's slot in [`MAP_EGRESS_PORTS`], by ifindex: read when a
/// next hop is looked up in the FIB, and kept with it.
pub const MAP_EGRESS_SLOTS: &str = "EGRESS_SLOTS";
pub const MAP_VIPS: &str = "VIPS";
pub const MAP_NODE_PORTS4: &str = "NODE_PORTS4";
pub const MAP_NODE_PORTS6: &str = "NODE_PORTS6";
pub const MAP_FLOW_BUDGET: &str = "FLOW_BUDGET";
/// Each CPU's `bpf_fib_lookup` parameter block, pinned so that a side path
/// of one load reads what the entry point of another left in it.
pub const MAP_FIB_PARAMS: &str = "FIB_PARAMS";
pub const MAP_IFACES: &str = "IFACES";
/// `KEY_FILTER`, `IFACES_BY_INDEX`, `CLOCK` and `SETTINGS` are the
/// program's global data, each in a section of its own, which the loader
/// makes a one-entry array map named after the section: the value is the
/// whole global ([`KeyFilterWords`], [`IfacesByIndexEntries`],
/// [`DataPathClock`], [`Settings`]).
pub const MAP_KEY_FILTER: &str = ".bss.key_filter";
pub const MAP_IFACES_BY_INDEX: &str = ".bss.ifaces_by_index";
pub const MAP_CLOCK: &str = ".bss.clock";
pub const MAP_SETTINGS: &str = ".bss.settings";
/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "lb_xdp";
/// The programs `lb_xdp` tail-calls for what is neither TCP nor UDP (and for
/// IPv4 datagrams' later fragments), each at its index in the program array
/// `SIDE_PATHS`: there each has a stack
/// of its own, so the TCP and UDP path fits in the entry point's frame and
/// needs no BPF subprogram call (a call's return is costly on CPUs with
/// return-stack mitigations, and this path is most packets').
pub const SIDE_PATH_PROGRAMS: [&str; 5] = [
    "lb_arp",
    "lb_icmp4",
    "lb_icmp6",
    "lb_too_big",
    "lb_fragment4",
];
/// Their indexes in `SIDE_PATHS`: ARP requests, ICMP, ICMPv6 (Neighbor
/// Solicitations included), the answer to a packet too big for the link to
/// its next hop, and a later fragment of a TCP or UDP datagram.
pub const SIDE_PATH_ARP: u32 = 0;
pub const SIDE_PATH_ICMP4: u32 = 1;
pub const SIDE_PATH_ICMP6: u32 = 2;
pub const SIDE_PATH_TOO_BIG: u32 = 3;
pub const SIDE_PATH_FRAGMENT4: u32 = 4;
/// Slots of `SIDE_PATHS`: more than there are side paths, so that one added
/// later fits the array an earlier agent pinned.
pub const SIDE_PATH_SLOTS: u32 = 8;
const _: () = assert!(SIDE_PATH_PROGRAMS.len() <= SIDE_PATH_SLOTS as usize);
/// The program array of [`SIDE_PATH_PROGRAMS`]. Pinned: a program array loses its
/// entries once no file descriptor or pin refers to it, and the attached
/// program keeps serving after the agent exits. (Earlier agents pinned one
/// of three slots as `SIDE_PATHS`.)
pub const MAP_SIDE_PATHS: &str = "SIDE_PATH_ARRAY";
/// The program that samples the data path's clocks for the agent (see
/// `clock`); run by `BPF_PROG_TEST_RUN`, never attached.
pub const CLOCK_SAMPLE_PROGRAM: &str = "lb_clock_sample";

/// Version of the map layout (keys, values, sizes). Pinned state lives in a
/// directory named after it, so an agent never reads maps of another layout.
/// v4 split `SERVICES`, `NODE_PORTS` and `FLOWS` by family; the agent
/// upgrades v3 state in place.
pub const LAYOUT_VERSION: u32 = 4;

/// Compile-time capacities; the Maglev map's size is set at load time from
/// `max_services * 2 * ring_size`.
pub const MAX_SERVICES: u32 = 16384;
pub const MAX_BACKENDS: u32 = 65536;
/// Entries of each family's flow table (as Cilium sizes its ct4 and ct6 maps).
pub const MAX_FLOWS: u32 = 1 << 20;
/// Egress ports, slots 0 to `MAX_EGRESS_PORTS` - 1 (fewer than `u8::MAX`: a
/// next hop keeps its slot in a byte).
pub const MAX_EGRESS_PORTS: u32 = 64;

// A flow records its backend's id in 16 bits and its service's id plus one
// in 16 bits (`Flow`).
const _: () = assert!(MAX_BACKENDS <= 1 << 16 && MAX_SERVICES < u16::MAX as u32);

/// Interfaces the program may be attached to (entries of `IFACES`).
pub const MAX_IFACES: u32 = 64;

/// `KEY_FILTER` holds this many bits for each of the four kinds of key it
/// stands for ([`KeyFilter`]), in 64-bit words.
pub const KEY_FILTER_BITS: u32 = 1 << 16;
pub const KEY_FILTER_WORDS: u32 = 4 * KEY_FILTER_BITS / 64;

/// `KEY_FILTER`'s words, as the data path reads them and userspace writes
/// them: all at once.
pub type KeyFilterWords = [u64; KEY_FILTER_WORDS as usize];

// The data path bounds a word's index by a mask.
const _: () = assert!(KEY_FILTER_WORDS.is_power_of_two());

/// Entries of `NODE_PORTS4` and `NODE_PORTS6`: one for every TCP and every
/// UDP port.
pub const NODE_PORT_SLOTS: u32 = 2 << 16;

/// The entry of the NodePort `port` (network order) of `proto` in
/// `NODE_PORTS4` and `NODE_PORTS6`; `None` for a protocol lb does not
/// serve. A NodePort is the same on every node (Kubernetes allocates it
/// cluster-wide), so the node is not part of it: the data path finds the
/// frontend of a node's reply by an array read, and checks the node by the
/// flow the reply answers.
#[inline(always)]
pub fn node_port_slot(port: u16, proto: u8) -> Option<u32> {
    let port = u32::from(u16::from_be(port));
    match proto {
        PROTO_TCP => Some(port),
        PROTO_UDP => Some(1 << 16 | port),
        _ => None,
    }
}

/// A backend slot whose `flags` lack this bit is free: flows pointing at it re-hash.
pub const BACKEND_ACTIVE: u8 = 1;

/// `Settings::flags`: answer ICMP echo requests to a VIP (else they pass).
pub const SETTING_ANSWER_ECHO: u32 = 1;
/// `Settings::flags` bit an agent of the same layout from before per-VIP
/// neighbor answers set to answer ARP and Neighbor Solicitations for every
/// VIP on every interface. The program no longer reads it and agents no
/// longer set it: found in the settings such an agent pinned (as the map
/// `SETTINGS`), it tells an agent taking over that the VIPs' interface
/// masks (`VIPS`) were never written.
pub const LEGACY_SETTING_ANSWER_NEIGHBORS: u32 = 1 << 1;
/// `Settings::flags`: direct server return. Packets for a service keep their
/// destination (VIP, port) and only get the chosen node's MAC; the node
/// answers the client itself, so there is nothing to reverse-NAT.
pub const SETTING_DSR: u32 = 1 << 2;

/// Run-time switches of the data path, set at every load (global data,
/// [`MAP_SETTINGS`]). Agents before that pinned them, as a one-entry array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub flags: u32,
    /// New flows each CPU may insert into the flow table per second; above it
    /// new flows are forwarded by the stateless Maglev choice. 0: no limit.
    pub new_flow_limit: u32,
}

/// An IP address as the maps store it: 16 bytes in network order, an IPv4
/// address as its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`), so one key type
/// serves both families and the two never collide.
pub type Addr = [u32; 4];

/// The third word of an IPv4-mapped address.
const MAPPED_MARK: u32 = 0xffffu32.to_be();

/// `addr` (network order) as an IPv4-mapped [`Addr`].
#[inline(always)]
pub const fn ipv4_mapped(addr: u32) -> Addr {
    [0, 0, MAPPED_MARK, addr]
}

/// Whether `addr` is an IPv4 address in its mapped form.
#[inline(always)]
pub const fn is_ipv4_mapped(addr: &Addr) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == MAPPED_MARK
}

/// The map form of an address of either family (IPv4 ones as the
/// family-neutral keys hold them: `family` has the compact forms).
pub fn addr_of(ip: core::net::IpAddr) -> Addr {
    match ip {
        core::net::IpAddr::V4(v4) => ipv4_mapped(u32::from_ne_bytes(v4.octets())),
        core::net::IpAddr::V6(v6) => {
            let b = v6.octets();
            core::array::from_fn(|i| {
                u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
            })
        }
    }
}

/// The address a map value holds, IPv4 when it is in the mapped form.
pub fn ip_of(addr: Addr) -> core::net::IpAddr {
    let mut bytes = [0u8; 16];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(addr) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    core::net::Ipv6Addr::from(bytes).to_canonical()
}

/// A (VIP, port, protocol) the load balancer serves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub vip: Addr,
    /// Service port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl ServiceKey {
    /// A key from its parts (port network order). The padding is spelled out,
    /// as in [`FlowKey::new`].
    #[inline(always)]
    pub const fn new(vip: Addr, port: u16, proto: u8) -> Self {
        Self {
            vip,
            port,
            proto,
            _pad: 0,
        }
    }

    /// The service a packet is addressed to: its destination (address, port,
    /// protocol): key of `SERVICES6`, and of `SERVICES4` in its compact form.
    /// (The data path writes both in place: `lb-ebpf/src/keys.rs`.)
    #[inline(always)]
    pub const fn of_destination(key: &FlowKey) -> Self {
        Self::new(key.dst_ip, key.dst_port, key.proto)
    }
}

/// Which keys a `KEY_FILTER` bit stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFilter {
    /// `SERVICES`: a packet's destination.
    Services,
    /// A backend's (node IP, NodePort), before `NODE_PORTS`: a packet's source.
    NodePorts,
    /// The VIPs of `Services`, by address alone (port and protocol 0): a
    /// packet's destination, told before its ports are read.
    Vips,
    /// The node IPs of `NodePorts`, by address alone: a packet's source.
    Nodes,
}

impl KeyFilter {
    /// The `KEY_FILTER` word and the bit in it for `key`: a bit is set for
    /// every key the map holds (userspace sets it before the entry is
    /// written and clears it only once no entry needs it), so a clear bit
    /// proves the key absent without a hash-map lookup. A cheap fold of the
    /// key, not a good hash: a collision only costs the lookup it would have
    /// saved.
    #[inline(always)]
    pub fn position(self, key: &ServiceKey) -> (u32, u64) {
        self.position_of(&key.vip, key.port, key.proto)
    }

    /// [`Self::position`] of the key of (`addr`, `port`, `proto`), which the
    /// data path checks before it builds the key of either family.
    #[inline(always)]
    pub fn position_of(self, addr: &Addr, port: u16, proto: u8) -> (u32, u64) {
        let [a, b, c, d] = *addr;
        let folded = a ^ b ^ c ^ d ^ (u32::from(port) << 8) ^ u32::from(proto);
        let bit = folded.wrapping_mul(0x9e37_79b1) >> (32 - KEY_FILTER_BITS.trailing_zeros());
        let base = KEY_FILTER_BITS / 64
            * match self {
                Self::Services => 0,
                Self::NodePorts => 1,
                Self::Vips => 2,
                Self::Nodes => 3,
            };
        (base + bit / 64, 1 << (bit % 64))
    }
}

/// Where a service's live Maglev ring sits in the `MAGLEV` array.
///
/// Userspace writes the new ring into the service's idle slot, then replaces this
/// value in one map update, so a packet sees either the old or the new ring whole.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Index into the per-service counters.
    pub id: u32,
    /// Index of the first entry of the live ring in `MAGLEV`.
    pub ring_base: u32,
    /// Entries in the ring (a prime, the Maglev M).
    pub ring_size: u32,
    /// Backends in the ring; 0 means the service has none and its packets drop.
    pub backend_count: u32,
}

impl ServiceInfo {
    /// The `MAGLEV` index that picks the backend of a new flow of this
    /// service. The data path and `lb trace` both call this.
    #[inline(always)]
    pub fn ring_slot(&self, key: &FlowKey) -> u32 {
        self.ring_base + crate::hash::flow_hash(key) % self.ring_size
    }
}

/// One (node IP, NodePort) of one service; `BACKENDS` is indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Node IP.
    pub ip: Addr,
    /// NodePort, network byte order.
    pub port: u16,
    /// `BACKEND_ACTIVE` when the slot is in use.
    pub flags: u8,
    /// Bumped (wrapping) each time userspace hands the slot to a backend,
    /// and copied into the flows pinned to it: a flow never follows its
    /// slot into a later owner, even one at the same (node IP, NodePort).
    pub generation: u8,
}

/// A packet's 5-tuple as it arrives: key of `FLOWS6`, and of `FLOWS4` in
/// its compact form (`family`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_ip: Addr,
    pub dst_ip: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    /// A key from its 5-tuple (ports network order). The padding is spelled
    /// out byte by byte: as `[0; 3]` the compiler zeroes it with a `memset`
    /// call, which in BPF is a byte-loop subprogram on every packet.
    #[inline(always)]
    pub const fn new(src_ip: Addr, dst_ip: Addr, src_port: u16, dst_port: u16, proto: u8) -> Self {
        Self {
            src_ip,
            dst_ip,
            src_port,
            dst_port,
            proto,
            _pad: [0, 0, 0],
        }
    }
}

/// The backend a client flow is pinned to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// The backend's slot: ids are below `MAX_BACKENDS` (2^16). Layout v3
    /// had a `u32` here and padding in `service`; on these little-endian
    /// machines its flows read as generation 0 and no service.
    pub backend_id: u16,
    /// The slot's [`Backend::generation`] when the flow was pinned.
    pub backend_generation: u8,
    pub _pad: u8,
    /// Copy of the backend's address: a recycled backend id with another
    /// address does not capture the flow (a second guard beside the
    /// generation, which wraps).
    pub backend_ip: Addr,
    pub backend_port: u16,
    /// The id of the flow's service plus one; 0 in a flow pinned by layout
    /// v3. Written at insert as the layout has it, though nothing reads it
    /// now: the data path counts per backend, and readers find a flow's
    /// service by its key.
    pub service: u16,
    /// `bpf_ktime_get_ns` when the flow was created and last seen.
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
}

impl Flow {
    /// Whether `backend` (the slot `backend_id` names) still is the backend
    /// this flow was pinned to: in use and not handed to another backend
    /// since. The data path and `lb trace` decide with this one rule.
    #[inline(always)]
    pub fn still_on(&self, backend: &Backend) -> bool {
        backend.flags & BACKEND_ACTIVE != 0
            && backend.generation == self.backend_generation
            && backend.ip == self.backend_ip
            && backend.port == self.backend_port
    }

    /// Adds what a cached copy of this entry counted: its packets, and its
    /// last-seen time if later. The data path gives a copy's counts back
    /// with this, and readers add those of copies not given back yet.
    #[inline(always)]
    pub fn add_cached(&mut self, copy: &Flow) {
        self.packets += copy.packets;
        if copy.last_seen_ns > self.last_seen_ns {
            self.last_seen_ns = copy.last_seen_ns;
        }
    }

    /// The [`Self::service`] field for service `id`.
    #[inline(always)]
    pub const fn service_field(id: u32) -> u16 {
        (id + 1) as u16
    }
}

/// An interface the program is attached to; `IFACES` is keyed by ifindex.
/// Aligned as a word, so that the data path reads its MAC with one load
/// (see [`Self::mac_word`]); map values are word aligned anyway.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Iface {
    /// The interface's MAC: the answer to ARP and Neighbor Solicitations for
    /// a VIP that arrive on it.
    pub mac: [u8; 6],
    /// Its bit in a VIP's [`NeighborMask`]: 0 to [`MAX_NEIGHBOR_SLOTS`] - 1.
    pub slot: u8,
    pub _pad: u8,
}

impl Iface {
    /// Whether this `IFACES_BY_INDEX` slot holds an interface: an empty slot
    /// is all zero, and no interface has the all-zero MAC.
    #[inline(always)]
    pub fn is_set(&self) -> bool {
        self.mac_word() != 0
    }

    /// The MAC as [`mac_word`] gives it.
    #[inline(always)]
    pub fn mac_word(&self) -> u64 {
        // SAFETY: `Iface` is 8 bytes, word aligned and has no padding but
        // the explicit field; read as bytes, the compiler loads them one by
        // one.
        let word = unsafe { (self as *const Self).cast::<u64>().read() };
        word & MAC_WORD_MASK
    }
}

/// The bytes of a MAC in a word, as in memory: the data path compares a
/// frame's destination with an interface's MAC as one number, not six bytes.
#[inline(always)]
pub fn mac_word(mac: [u8; 6]) -> u64 {
    let [a, b, c, d, e, f] = mac;
    u64::from_ne_bytes([a, b, c, d, e, f, 0, 0])
}

/// The bytes of a word that hold a MAC (see [`mac_word`]).
const MAC_WORD_MASK: u64 = u64::from_ne_bytes([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]);

/// `IFACES_BY_INDEX` repeats `IFACES` as an array by ifindex for the
/// ifindexes below this: the check every packet makes (is the frame for this
/// host?) is then a read of global data, not a hash lookup. A larger ifindex is
/// looked up in `IFACES`.
pub const IFACES_BY_INDEX_LEN: u32 = 4096;

/// `IFACES_BY_INDEX`'s entries, as the data path reads them (one by one)
/// and userspace writes them (all at once); an empty one is all zero.
pub type IfacesByIndexEntries = [Iface; IFACES_BY_INDEX_LEN as usize];

/// The value of `VIPS`: the interfaces (bit [`Iface::slot`]) on which ARP
/// requests and Neighbor Solicitations for the VIP are answered. 0 for a
/// VIP announced otherwise (BGP) or not at all.
pub type NeighborMask = u32;

/// Interfaces a [`NeighborMask`] can name.
pub const MAX_NEIGHBOR_SLOTS: u8 = 32;

/// Every interface: what VIPs inherited from an agent that answered for
/// every VIP everywhere get until the first sync writes their real masks.
pub const ALL_NEIGHBOR_SLOTS: NeighborMask = NeighborMask::MAX;

/// Whether `mask` answers on the interface with `slot`. Slots past the
/// mask's width answer nowhere (the agent never hands them out).
#[inline(always)]
pub const fn answers_on(mask: NeighborMask, slot: u8) -> bool {
    slot < MAX_NEIGHBOR_SLOTS && mask & (1 << slot) != 0
}

/// The mask bit of the interface with `slot` (below [`MAX_NEIGHBOR_SLOTS`]).
#[inline(always)]
pub const fn neighbor_bit(slot: u8) -> NeighborMask {
    1 << (slot % MAX_NEIGHBOR_SLOTS)
}

/// One CPU's allowance of something per second (new flow entries, answers
/// to packets too big): what it took in the current one-second window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub window_start_ns: u64,
    pub taken: u64,
}

impl Budget {
    /// Takes one of `per_second` at `now_ns` (a monotonic clock); `false`
    /// when this window's are all taken. A window starts at the first take
    /// a second or more after the last one started.
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, per_second: u64) -> bool {
        if now_ns.wrapping_sub(self.window_start_ns) >= 1_000_000_000 {
            self.window_start_ns = now_ns;
            self.taken = 0;
        }
        if self.taken >= per_second {
            return false;
        }
        self.taken += 1;
        true
    }
}

/// A slot of the data path's per-CPU caches of flow entries (`FLOW_CACHE4`
/// keyed by [`crate::FlowKey4`], `FLOW_CACHE6` by [`FlowKey`]; slots by
/// [`crate::hash::flow_cache_slot`]): the key of the flow it holds and a copy
/// of the flow's entry, made at `refreshed_ns`, whose `packets` and
/// `last_seen_ns` count what the copy served since. Readers of the flow
/// table add those to the entry ([`Flow::add_cached`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedFlow<K> {
    pub key: K,
    pub flow: Flow,
    pub refreshed_ns: u64,
}

impl<K> CachedFlow<K> {
    /// Whether the copy's backend is known to serve it still, without a
    /// look at `BACKENDS`: a copy is dated when it is refreshed, only if its
    /// backend served it then (else it is dated expired), and
    /// `backends_changed_ns` is the data path's clock after the agent's
    /// latest change of a slot. A copy dated in that tick is checked again.
    #[inline(always)]
    pub fn checked_since(&self, backends_changed_ns: u64) -> bool {
        self.refreshed_ns > backends_changed_ns
    }
}

/// Packet and byte counters: of a backend on one CPU (`BACKEND_STATS`), or
/// of a service's retired backends on all (`RETIRED_TRAFFIC`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

impl Traffic {
    /// This and `other` together.
    pub fn plus(self, other: Self) -> Self {
        Self {
            packets: self.packets + other.packets,
            bytes: self.bytes + other.bytes,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, and padded explicitly.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for crate::DataPathClock {}
    unsafe impl aya::Pod for ServiceInfo {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for CachedFlow<FlowKey> {}
    unsafe impl aya::Pod for CachedFlow<crate::FlowKey4> {}
    unsafe impl aya::Pod for Iface {}
    unsafe impl aya::Pod for Traffic {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for Budget {}
}

#[cfg(test)]
mod tests {
    use super::Budget;

    #[test]
    fn a_budget_allows_its_count_a_second() {
        let mut budget = Budget::default();
        let start = 5_000_000_000;
        let taken = (0..5).filter(|&i| budget.take(start + i, 3)).count();
        assert_eq!(taken, 3, "three of five in one window");
        assert!(
            !budget.take(start + 999_999_999, 3),
            "still the same window"
        );
        assert!(budget.take(start + 1_000_000_000, 3), "a new window");
    }

    use super::*;
    use core::mem::size_of;

    #[test]
    fn each_protocol_and_node_port_has_an_entry_of_its_own() {
        let slot = |port: u16, proto| node_port_slot(port.to_be(), proto);
        let ports = [0, 1, 80, 30000, 32767, u16::MAX];
        let protos = [PROTO_TCP, PROTO_UDP];
        for (i, port) in ports.into_iter().enumerate() {
            for (j, proto) in protos.into_iter().enumerate() {
                let entry = slot(port, proto).expect("a served protocol");
                assert!(entry < NODE_PORT_SLOTS, "{entry} past the array");
                for (k, other_port) in ports.into_iter().enumerate() {
                    for (l, other_proto) in protos.into_iter().enumerate() {
                        if (i, j) != (k, l) {
                            assert_ne!(Some(entry), slot(other_port, other_proto));
                        }
                    }
                }
            }
        }
        assert_eq!(slot(80, PROTO_ICMP), None);
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(size_of::<ServiceInfo>(), 16);
        assert_eq!(size_of::<Backend>(), 20);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<Flow>(), 48);
        assert_eq!(size_of::<Iface>(), 8);
        assert_eq!(size_of::<Traffic>(), 16);
        assert_eq!(size_of::<Settings>(), 8);
    }

    #[test]
    fn a_slots_bit_answers_on_that_slot_only() {
        let mask = neighbor_bit(0) | neighbor_bit(31);
        assert!(answers_on(mask, 0) && answers_on(mask, 31));
        assert!(!answers_on(mask, 1) && !answers_on(mask, 30));
        assert!(!answers_on(ALL_NEIGHBOR_SLOTS, MAX_NEIGHBOR_SLOTS));
        assert!(!answers_on(0, 0));
    }

    #[test]
    fn key_filter_positions_stay_in_their_quarter() {
        let kinds = [
            KeyFilter::Services,
            KeyFilter::NodePorts,
            KeyFilter::Vips,
            KeyFilter::Nodes,
        ];
        let quarter = KEY_FILTER_WORDS / 4;
        for port in [0u16, 80, 443, 31000, u16::MAX] {
            for last in [1u32, 0xc633_640a, u32::MAX] {
                let key = ServiceKey::new(ipv4_mapped(last), port.to_be(), PROTO_TCP);
                let (first, bit) = KeyFilter::Services.position(&key);
                assert!(first < quarter);
                assert_eq!(bit.count_ones(), 1);
                for (index, kind) in (0..).zip(kinds) {
                    assert_eq!(kind.position(&key), (first + index * quarter, bit));
                }
            }
        }
    }

    #[test]
    fn addresses_round_trip_and_families_stay_apart() {
        use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let v4 = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7));
        assert_eq!(ip_of(addr_of(v4)), v4);
        assert_eq!(ip_of(addr_of(v6)), v6);
        assert!(is_ipv4_mapped(&addr_of(v4)));
        assert!(!is_ipv4_mapped(&addr_of(v6)));
        assert_eq!(addr_of(v4)[3], u32::from_ne_bytes([198, 51, 100, 7]));
    }
}
