//! Map keys and values.

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Map names, shared so userspace finds what the program declares.
pub const MAP_SERVICES: &str = "SERVICES";
pub const MAP_BACKENDS: &str = "BACKENDS";
pub const MAP_MAGLEV: &str = "MAGLEV";
pub const MAP_FLOWS: &str = "FLOWS";
pub const MAP_REVERSE_FLOWS: &str = "REVERSE_FLOWS";
pub const MAP_SERVICE_STATS: &str = "SERVICE_STATS";
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
pub const MAP_GLOBAL_STATS: &str = "GLOBAL_STATS";
pub const MAP_TX_PORTS: &str = "TX_PORTS";
pub const MAP_SETTINGS: &str = "SETTINGS";
pub const MAP_VIPS: &str = "VIPS";
/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "lb_xdp";

/// Version of the map layout (keys, values, sizes). Pinned state lives in a
/// directory named after it, so an agent never reads maps of another layout.
pub const LAYOUT_VERSION: u32 = 1;

/// Compile-time capacities; the Maglev map's size is set at load time from
/// `max_services * 2 * ring_size`.
pub const MAX_SERVICES: u32 = 16384;
pub const MAX_BACKENDS: u32 = 65536;
pub const MAX_FLOWS: u32 = 1 << 20;
pub const MAX_TX_PORTS: u32 = 64;

/// A backend slot whose `flags` lack this bit is free: flows pointing at it re-hash.
pub const BACKEND_ACTIVE: u8 = 1;

/// `Settings::flags`: answer ICMP echo requests to a VIP (else they pass).
pub const SETTING_ANSWER_ECHO: u32 = 1;

/// Run-time switches of the data path; `SETTINGS` has one entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub flags: u32,
    pub _pad: u32,
}

/// A (VIP, port, protocol) the load balancer serves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// VIP, network byte order.
    pub vip: u32,
    /// Service port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
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

/// One (node IP, NodePort) of one service; `BACKENDS` is indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Node IP, network byte order.
    pub ip: u32,
    /// NodePort, network byte order.
    pub port: u16,
    /// `BACKEND_ACTIVE` when the slot is in use.
    pub flags: u8,
    pub _pad: u8,
}

/// A packet's 5-tuple as it arrives; key of both flow tables.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_ip: u32,
    pub dst_ip: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// The backend a client flow is pinned to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub backend_id: u32,
    /// Copy of the backend's address: a recycled backend id with another
    /// address does not capture the flow.
    pub backend_ip: u32,
    pub backend_port: u16,
    pub _pad: [u8; 6],
    /// `bpf_ktime_get_ns` when the flow was created and last seen.
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
}

impl Flow {
    /// Whether `backend` (the slot `backend_id` names) still is the backend
    /// this flow was pinned to: in use and not recycled for another address.
    /// The data path and `lb trace` decide with this one rule.
    #[inline(always)]
    pub fn still_on(&self, backend: &Backend) -> bool {
        backend.flags & BACKEND_ACTIVE != 0
            && backend.ip == self.backend_ip
            && backend.port == self.backend_port
    }
}

/// What a reply from a backend is rewritten to: its source becomes (VIP, port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReverseNat {
    pub vip: u32,
    pub port: u16,
    pub _pad: [u8; 2],
}

/// Per-CPU packet and byte counters of a service or a backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, and padded explicitly.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceInfo {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for ReverseNat {}
    unsafe impl aya::Pod for Traffic {}
    unsafe impl aya::Pod for Settings {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 8);
        assert_eq!(size_of::<ServiceInfo>(), 16);
        assert_eq!(size_of::<Backend>(), 8);
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<Flow>(), 40);
        assert_eq!(size_of::<ReverseNat>(), 8);
        assert_eq!(size_of::<Traffic>(), 16);
        assert_eq!(size_of::<Settings>(), 8);
    }
}
