//! The balancing policy: the backend a packet of a service goes to (its
//! pinned flow while that backend serves, else the Maglev choice, which is
//! then pinned, so that later packets need no service lookup), the per-CPU
//! new-flow budget, and which replies of a node may leave with a VIP. Every
//! lb host with the same services computes the same Maglev choice, so a
//! flow that moves between hosts keeps its node.

use core::mem::MaybeUninit;

use lb_common::{Addr, BACKEND_ACTIVE, Backend, Flow, FlowKey, ServiceInfo, ServiceKey, counters};

use crate::{
    flows,
    forward::{check_ttl, clock},
    keys,
    maps::{self, count},
    parse::{Frame, Ip, Packet, Transport},
    verdict::Verdict,
};

/// The backend a packet goes to: its slot and its address, read from the
/// slot or from the flow entry pinned to it, which holds a copy.
#[derive(Clone, Copy)]
pub struct Target {
    pub id: u32,
    pub ip: &'static Addr,
    /// Network order.
    pub port: u16,
}

impl Target {
    #[inline(always)]
    fn of_slot(id: u32, backend: &'static Backend) -> Self {
        Self {
            id,
            ip: &backend.ip,
            port: backend.port,
        }
    }

    #[inline(always)]
    fn of_flow(flow: &'static Flow) -> Self {
        Self {
            id: u32::from(flow.backend_id),
            ip: &flow.backend_ip,
            port: flow.backend_port,
        }
    }
}

/// Whether the backend `flow` is pinned to still serves it: the rule
/// (`Flow::still_on`) applied to its slot.
#[inline(always)]
fn still_serves(flow: &Flow) -> bool {
    maps::backend(u32::from(flow.backend_id)).is_some_and(|backend| flow.still_on(backend))
}

/// The Maglev choice for `key` (client -> VIP), looked up by its service;
/// `None` for no service, or none to choose.
#[inline(always)]
fn maglev_target(key: &FlowKey) -> Option<Target> {
    let service = maps::service(&key.dst_ip, key.dst_port, key.proto)?;
    let (id, backend) = maglev_backend(key, &service).ok()?;
    Some(Target::of_slot(id, backend))
}

/// The Maglev choice for `key`: the backend its service's live ring gives.
#[inline(always)]
fn maglev_backend(
    key: &FlowKey,
    service: &ServiceInfo,
) -> Result<(u32, &'static Backend), Verdict> {
    if service.backend_count == 0 || service.ring_size == 0 {
        return Err(Verdict::DropNoBackend);
    }
    let backend_id = maps::ring_entry(service.ring_slot(key)).ok_or(Verdict::DropInternal)?;
    let backend = maps::backend(backend_id).ok_or(Verdict::DropInternal)?;
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
    let limit = maps::new_flow_limit();
    if limit == 0 {
        return true;
    }
    let Some(budget) = maps::flow_budget() else {
        return true;
    };
    // SAFETY: per-CPU slot, no concurrent writer.
    unsafe { &mut *budget }.take(now, u64::from(limit))
}

/// What a TCP or UDP packet may be to lb, by the key filters alone.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// To a VIP: for a service, unless its port is none of the VIP's (or
    /// the filter was wrong), when it may still be a node's reply.
    Service,
    /// To no VIP, from a node: perhaps a node's reply from a NodePort.
    NodePortReply,
}

/// What a TCP or UDP packet of `ip` may be to lb, by the key filters'
/// address bits, before its ports are read: for a service if it is to a VIP,
/// else a node's reply from a NodePort if it is from a node.
/// `PassNotService` when it is neither, as for most of the host's own
/// traffic.
#[inline(always)]
pub fn claim(ip: &Ip) -> Result<Claim, Verdict> {
    if maps::may_be_vip(&ip.dst) {
        Ok(Claim::Service)
    } else if maps::may_be_node(&ip.src) {
        Ok(Claim::NodePortReply)
    } else {
        Err(Verdict::PassNotService)
    }
}

/// The backend a tracked flow is pinned to, if that backend still serves.
/// Read in place: a copy of the whole entry would crowd the stack.
#[inline(always)]
pub fn flow_backend(key: &FlowKey, now: u64) -> Option<Target> {
    // SAFETY: the entry stays valid for this program run (RCU).
    let flow = unsafe { &*flows::entry(key, now, still_serves)? };
    Some(Target::of_flow(flow))
}

/// [`flow_backend`] from the table alone (`flows::table_entry`), for ICMP
/// errors.
#[inline(always)]
pub fn table_flow_backend(key: &FlowKey) -> Option<Target> {
    // SAFETY: the entry stays valid for this program run (RCU).
    let flow = unsafe { &*flows::table_entry(key)? };
    still_serves(flow).then_some(Target::of_flow(flow))
}

/// The node a client's flow `request` (client -> VIP) is on, for an ICMP
/// error about it: the one its entry here pins, else the Maglev choice, the
/// node every lb host sends it to (another host saw it begin, or it was not
/// recorded).
#[inline(always)]
pub fn request_backend(request: &FlowKey) -> Option<Target> {
    table_flow_backend(request).or_else(|| maglev_target(request))
}

/// Where a packet for one of our services goes: the backend (its slot and
/// address) and the time it was seen; `Ok(None)` when it is for no service.
///
/// An established packet whose flow entry's backend still serves needs
/// nothing else: no service lookup. Every other packet looks its service
/// up and takes the Maglev choice, which is then pinned. A
/// connection's first packet (`opens`) skips the flow lookup: an entry for
/// its 5-tuple can only be a retransmitted SYN's, which the same choice
/// overwrites, or a closed connection's, which must not decide the new
/// one's node. A packet to no VIP (`claim`), or with no flow and to no
/// service by the key filter's bit for its (VIP, port, protocol), is told so
/// without a service lookup. The TTL is checked once the packet is known to
/// be ours.
#[inline(always)]
pub fn backend_of(
    ctx: &Frame,
    packet: &Packet,
    claim: Claim,
    ttl: u8,
) -> Result<Option<(Target, u64)>, Verdict> {
    let key = &packet.key;
    if claim != Claim::Service {
        return Ok(None);
    }
    let bytes = ctx.len();
    let now = clock();
    let mut stale = false;
    let entry = if packet.opens {
        None
    } else {
        flows::entry(key, now, |flow| {
            stale = !still_serves(flow);
            !stale
        })
    };
    if let Some(flow) = entry {
        // SAFETY: the entry stays valid for this program run (RCU); racing
        // updates of its statistics fields only lose a count.
        let flow = unsafe { &mut *flow };
        check_ttl(ttl)?;
        flow.last_seen_ns = now;
        flow.packets += 1;
        let target = Target::of_flow(flow);
        maps::account(target.id, bytes);
        return Ok(Some((target, now)));
    }
    if !maps::may_be_service(&key.dst_ip, key.dst_port, key.proto) {
        return Ok(None);
    }
    let Some(service) = maps::service(&key.dst_ip, key.dst_port, key.proto) else {
        return Ok(None);
    };
    check_ttl(ttl)?;
    if stale {
        // Counted, not logged: a log record written here was a third of the
        // entry point's verification, which every agent start waits for
        // (each of the hundreds of states reaching it walks its 300
        // instructions again).
        count(counters::FLOW_REHASHED);
    }
    let (backend_id, backend) = maglev_backend(key, &service)?;
    let target = Target::of_slot(backend_id, backend);
    maps::account(target.id, bytes);
    if !take_flow_budget(now) {
        count(counters::NEW_FLOWS_UNTRACKED);
        return Ok(Some((target, now)));
    }
    flows::insert(
        key,
        &Flow {
            backend_id: target.id as u16,
            backend_generation: backend.generation,
            _pad: 0,
            backend_ip: *target.ip,
            backend_port: target.port,
            service: Flow::service_field(service.id),
            created_ns: now,
            last_seen_ns: now,
            packets: 1,
        },
    );
    count(counters::NEW_FLOWS);
    Ok(Some((target, now)))
}

/// The frontend a node's reply is reverse-NAT-ed to, and whether this host
/// tracks its flow.
pub struct ReplyOf {
    pub frontend: ServiceKey,
    pub tracked: bool,
}

/// Whether `reply` is a node's answer to a flow of one of our services, and
/// of which: it must come from a backend's (node IP, NodePort), and from the
/// node the flow is pinned to here or, where this host has no entry (another
/// lb host saw the flow begin, or it was not recorded), from the node the
/// Maglev ring picks for it. Nothing else may borrow a VIP. With direct
/// server return nodes answer clients themselves: no reply is ours. The
/// pinned node comes from `tracked_backend` ([`flow_backend`], or for an
/// ICMP error [`table_flow_backend`]).
#[inline(always)]
pub fn reply_of(
    reply: &FlowKey,
    tracked_backend: impl Fn(&FlowKey) -> Option<Target>,
) -> Option<ReplyOf> {
    // The NodePort first: for most packets that are not ours its key filter
    // answers, before the settings are read.
    let frontend = maps::frontend_of_node_port(&reply.src_ip, reply.src_port, reply.proto)?;
    if maps::direct_server_return() {
        return None;
    }
    let mut request = MaybeUninit::uninit();
    let request = keys::flow_key(
        &mut request,
        [&reply.dst_ip, &frontend.vip],
        Transport::join([reply.dst_port, frontend.port]),
        reply.proto,
    );
    let tracked = tracked_backend(request);
    let backend = match tracked {
        Some(backend) => backend,
        None => maglev_target(request)?,
    };
    (*backend.ip == reply.src_ip && backend.port == reply.src_port).then_some(ReplyOf {
        frontend,
        tracked: tracked.is_some(),
    })
}
