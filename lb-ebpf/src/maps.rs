//! Maps shared with userspace, and the lookups the data path makes in them.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Addr, BACKEND_ACTIVE, Backend, Flow, FlowBudget, FlowKey, MAX_BACKENDS, MAX_FLOWS,
    MAX_SERVICES, MAX_TX_PORTS, ReverseNat, SETTING_ANSWER_ECHO, ServiceInfo, ServiceKey, Settings,
    Traffic, counters, hash::flow_hash,
};

use aya_log_ebpf::debug;

use crate::parse::{Frame, Verdict};

/// Per-CPU LRU lists: flow inserts on one CPU do not contend with another's.
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

#[map]
static SERVICES: HashMap<ServiceKey, ServiceInfo> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map]
static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// All services' Maglev rings back to back; sized by the loader.
#[map]
static MAGLEV: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static FLOWS: LruHashMap<FlowKey, Flow> =
    LruHashMap::with_max_entries(MAX_FLOWS, BPF_F_NO_COMMON_LRU);

/// Keyed by the reply's own 5-tuple (backend to client).
#[map]
static REVERSE_FLOWS: LruHashMap<FlowKey, ReverseNat> =
    LruHashMap::with_max_entries(MAX_FLOWS, BPF_F_NO_COMMON_LRU);

#[map]
static SERVICE_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map]
static BACKEND_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map]
static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Every VIP with at least one service, for ICMP addressed to the VIP itself.
#[map]
static VIPS: HashMap<Addr, u32> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// (node IP, NodePort, protocol) of every backend to the service it serves:
/// how a reply of an untracked flow finds the ring that must have chosen it.
#[map]
static NODE_PORTS: HashMap<ServiceKey, ServiceKey> = HashMap::with_max_entries(MAX_BACKENDS, 0);

/// Flows each CPU inserted in the current second, against `Settings::new_flow_limit`.
#[map]
static FLOW_BUDGET: PerCpuArray<FlowBudget> = PerCpuArray::with_max_entries(1, 0);

/// Interfaces packets may be redirected to, keyed by ifindex.
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = GLOBAL_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn add_traffic(map: &PerCpuArray<Traffic>, index: u32, bytes: u64) {
    if let Some(traffic) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe {
            (*traffic).packets += 1;
            (*traffic).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn lookup_service(key: &FlowKey) -> Option<ServiceInfo> {
    let service = ServiceKey {
        vip: key.dst_ip,
        port: key.dst_port,
        proto: key.proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out before the map can change it.
    unsafe { SERVICES.get(service) }.copied()
}

/// The Maglev choice for `key`: the backend its service's live ring gives.
#[inline(always)]
fn maglev_backend(key: &FlowKey, service: &ServiceInfo) -> Result<(u32, Backend), Verdict> {
    if service.backend_count == 0 || service.ring_size == 0 {
        return Err(Verdict::DropNoBackend);
    }
    let slot = service.ring_base + flow_hash(key) % service.ring_size;
    let backend_id = *MAGLEV.get(slot).ok_or(Verdict::DropInternal)?;
    let backend = *BACKENDS.get(backend_id).ok_or(Verdict::DropInternal)?;
    if backend.flags & BACKEND_ACTIVE == 0 {
        return Err(Verdict::DropInternal);
    }
    Ok((backend_id, backend))
}

/// Whether this CPU may insert one more flow now. Above the limit a SYN flood
/// of random source ports cannot push established flows out of the LRU; the
/// flows it did not record are forwarded by the stateless Maglev choice.
#[inline(always)]
fn take_flow_budget(now: u64) -> bool {
    let limit = SETTINGS
        .get(0)
        .map_or(0, |settings| settings.new_flow_limit);
    if limit == 0 {
        return true;
    }
    let Some(budget) = FLOW_BUDGET.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: per-CPU slot, no concurrent writer.
    let budget = unsafe { &mut *budget };
    if now.wrapping_sub(budget.window_start_ns) >= 1_000_000_000 {
        budget.window_start_ns = now;
        budget.inserted = 0;
    }
    if budget.inserted >= u64::from(limit) {
        return false;
    }
    budget.inserted += 1;
    true
}

/// Whether this CPU refused a flow insert in the current window: a flood is
/// on. Only then may replies lack their flow's entry; otherwise a reply
/// without one is not lb's (the host's own connections to a NodePort, such
/// as health checks, must reach the kernel untouched).
#[inline(always)]
fn over_flow_budget() -> bool {
    let limit = SETTINGS
        .get(0)
        .map_or(0, |settings| settings.new_flow_limit);
    limit != 0
        && FLOW_BUDGET.get(0).is_some_and(|budget| {
            // The clock is read last: every packet that is no flow's reply
            // asks, and outside a flood the count alone says no.
            budget.inserted >= u64::from(limit) && {
                // SAFETY: `bpf_ktime_get_ns` has no preconditions.
                let now = unsafe { bpf_ktime_get_ns() };
                now.wrapping_sub(budget.window_start_ns) < 1_000_000_000
            }
        })
}

/// The reverse NAT of a reply whose flow is not (or no longer) in the tables:
/// granted only when the reply comes from the very (node, NodePort) that
/// Maglev picks for the flow it answers, so nothing else can borrow a VIP.
#[inline(always)]
pub fn stateless_reverse_nat(reply: &FlowKey) -> Option<ReverseNat> {
    if !over_flow_budget() {
        return None;
    }
    let node_port = ServiceKey {
        vip: reply.src_ip,
        port: reply.src_port,
        proto: reply.proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out before the map can change it.
    let frontend = unsafe { NODE_PORTS.get(node_port) }.copied()?;
    let request = FlowKey::new(
        reply.dst_ip,
        frontend.vip,
        reply.dst_port,
        frontend.port,
        reply.proto,
    );
    let service = lookup_service(&request)?;
    let (_, backend) = maglev_backend(&request, &service).ok()?;
    if backend.ip != reply.src_ip || backend.port != reply.src_port {
        return None;
    }
    count(counters::REPLIES_UNTRACKED);
    Some(ReverseNat {
        vip: frontend.vip,
        port: frontend.port,
        _pad: [0; 2],
    })
}

/// Whether echo requests to VIPs are answered.
#[inline(always)]
pub fn answer_echo() -> bool {
    SETTINGS
        .get(0)
        .is_some_and(|settings| settings.flags & SETTING_ANSWER_ECHO != 0)
}

#[inline(always)]
pub fn is_vip(addr: &Addr) -> bool {
    // SAFETY: only presence is read.
    unsafe { VIPS.get(addr) }.is_some()
}

/// The backend a tracked flow is pinned to, if that backend still serves.
#[inline(always)]
pub fn lookup_flow_backend(key: &FlowKey) -> Option<Backend> {
    // SAFETY: the value is copied out before the map can change it.
    let flow = unsafe { FLOWS.get(key) }.copied()?;
    let backend = *BACKENDS.get(flow.backend_id)?;
    flow.still_on(&backend).then_some(backend)
}

#[inline(always)]
pub fn lookup_reverse_nat(key: &FlowKey) -> Option<ReverseNat> {
    // SAFETY: as above.
    unsafe { REVERSE_FLOWS.get(key) }.copied()
}

/// Returns the backend of `key`'s flow: the pinned one while it is still in place,
/// otherwise the Maglev choice, which is then pinned.
#[inline(always)]
pub fn select_backend(
    ctx: &Frame,
    key: &FlowKey,
    service: ServiceInfo,
    bytes: u64,
) -> Result<Backend, Verdict> {
    // SAFETY: no helper call that could sleep; ktime has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(flow) = FLOWS.get_ptr_mut(key) {
        // SAFETY: the pointer is valid for this program run; concurrent updates of
        // the statistics fields may race, which only loses a count.
        let flow = unsafe { &mut *flow };
        if let Some(backend) = BACKENDS.get(flow.backend_id)
            && flow.still_on(backend)
        {
            flow.last_seen_ns = now;
            flow.packets += 1;
            account(service.id, flow.backend_id, bytes);
            return Ok(*backend);
        }
        count(counters::FLOW_REHASHED);
        debug!(ctx, "flow re-hashed: backend {} is gone", flow.backend_id);
    }
    let (backend_id, backend) = maglev_backend(key, &service)?;
    account(service.id, backend_id, bytes);
    if !take_flow_budget(now) {
        count(counters::NEW_FLOWS_UNTRACKED);
        return Ok(backend);
    }
    let flow = Flow {
        backend_id,
        backend_ip: backend.ip,
        backend_port: backend.port,
        _pad: [0; 2],
        created_ns: now,
        last_seen_ns: now,
        packets: 1,
    };
    // A full table evicts the least recently used flow, so insert cannot fail
    // for lack of room; if it fails anyway the packet still goes to the Maglev
    // choice, which the next packet recomputes identically.
    let _ = FLOWS.insert(key, flow, 0);
    let reply = FlowKey::new(
        backend.ip,
        key.src_ip,
        backend.port,
        key.src_port,
        key.proto,
    );
    let rnat = ReverseNat {
        vip: key.dst_ip,
        port: key.dst_port,
        _pad: [0; 2],
    };
    let _ = REVERSE_FLOWS.insert(reply, rnat, 0);
    count(counters::NEW_FLOWS);
    Ok(backend)
}

#[inline(always)]
fn account(service_id: u32, backend_id: u32, bytes: u64) {
    add_traffic(&SERVICE_STATS, service_id, bytes);
    add_traffic(&BACKEND_STATS, backend_id, bytes);
}
