//! Read-only views of the pinned maps, labelled with the agent's catalog: what
//! is served, by whom, which flows are pinned where, and how much traffic went
//! where. Everything here reads the kernel's own state, so it is true whether
//! the agent runs or not.

use std::{
    cell::{OnceCell, RefCell},
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    rc::Rc,
    time::Duration,
};

use lb_common::{
    Backend, Flow, FlowKey, PROTO_TCP, PROTO_UDP, ServiceInfo, ServiceKey, addr_of, counters, ip_of,
};
use serde::{Serialize, Serializer};

use crate::{
    catalog::Catalog,
    dataplane::service_key,
    health::Verdict,
    maps::{Maps, MapsError, map_error},
    model::{Frontend, Protocol},
};

/// A flow seen this recently counts as active.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize)]
pub struct ServiceRow {
    pub name: String,
    /// Listed as `vip`, `port` and `protocol`.
    #[serde(flatten)]
    pub frontend: Frontend,
    pub id: u32,
    /// Backends in the Maglev table (new flows go to them).
    pub backends_healthy: u32,
    /// Backends the agent programmed, including drained ones.
    pub backends_total: u32,
    pub packets: u64,
    pub bytes: u64,
    pub active_flows: u64,
}

#[derive(Debug, Serialize)]
pub struct BackendRow {
    /// The service's frontend, listed as `service`: `VIP:PORT/PROTO`.
    #[serde(rename = "service", serialize_with = "as_label")]
    pub frontend: Frontend,
    pub service_name: String,
    pub node: String,
    pub id: u32,
    pub address: IpAddr,
    pub port: u16,
    pub weight: Option<u32>,
    /// `healthy`, `draining`, `failing` or `dead` (see [`health`]).
    pub health: &'static str,
    /// Entries of the service's Maglev table that point at this backend.
    pub ring_entries: u32,
    /// `ring_entries` over the table size.
    pub share: f64,
    pub packets: u64,
    pub bytes: u64,
    pub active_flows: u64,
}

#[derive(Debug, Serialize)]
pub struct FlowRow {
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub protocol: &'static str,
    pub backend: SocketAddr,
    pub node: String,
    pub age_seconds: f64,
    pub last_seen_seconds: f64,
    pub packets: u64,
}

#[derive(Debug, Serialize)]
pub struct TraceReport {
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub service: Option<String>,
    pub hash: Option<u32>,
    pub ring_slot: Option<u32>,
    pub ring_size: Option<u32>,
    /// Where a new flow with this 5-tuple would go.
    pub new_flow_backend: Option<SocketAddr>,
    pub new_flow_node: Option<String>,
    /// Where the flow table pins it, if it does.
    pub pinned_backend: Option<SocketAddr>,
    /// Where the packets of this 5-tuple go now: those of its flow, and for
    /// TCP a new connection's first packet (a SYN, which the data path
    /// sends by the Maglev choice whatever the flow table holds) where that
    /// differs.
    pub verdict: String,
}

pub fn protocol_name(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        _ => "?",
    }
}

/// Serializes a frontend as it is printed: `VIP:PORT/PROTO`.
fn as_label<S: Serializer>(frontend: &Frontend, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(frontend)
}

/// The frontend a `SERVICES` key stands for; `None` for a protocol lb never
/// pins a service of.
fn frontend_of(key: &ServiceKey) -> Option<Frontend> {
    Some(Frontend {
        vip: ip_of(key.vip),
        port: u16::from_be(key.port),
        protocol: Protocol::from_number(key.proto)?,
    })
}

/// Nanoseconds of CLOCK_MONOTONIC, the clock the data path records flows by
/// (see `lb_common::clock`).
pub fn monotonic_ns() -> u64 {
    // It cannot fail for this clock; 0 reads as "long ago".
    crate::clock::nanoseconds(libc::clock_gettime, libc::CLOCK_MONOTONIC).unwrap_or(0)
}

/// Active flows per service key and per backend id.
#[derive(Default)]
struct ActiveFlows {
    per_service: HashMap<ServiceKey, u64>,
    per_backend: HashMap<u32, u64>,
}

/// A snapshot of the maps the listings are computed from. What the
/// listings derive from it (active flows, rings, backend slots) is computed
/// once per snapshot, however many listings ask: a metrics scrape takes
/// both the services' and the backends'.
pub struct Snapshot {
    pub services: Vec<(Frontend, ServiceInfo)>,
    pub flows: Vec<(FlowKey, Flow)>,
    pub catalog: Catalog,
    pub now_ns: u64,
    active: OnceCell<ActiveFlows>,
    /// Ring entries per backend id, by service id.
    rings: RefCell<HashMap<u32, Rc<BTreeMap<u32, u32>>>>,
    slots: RefCell<HashMap<u32, Backend>>,
}

impl Snapshot {
    pub fn take(maps: &Maps, catalog: Catalog) -> Result<Self, MapsError> {
        let mut services: Vec<(Frontend, ServiceInfo)> = maps
            .services
            .entries()?
            .into_iter()
            .filter_map(|(key, info)| Some((frontend_of(&key)?, info)))
            .collect();
        services.sort_by_key(|(frontend, _)| *frontend);
        let mut flows = maps.flows.entries()?;
        if let Some(caches) = &maps.flow_caches {
            caches.add_to(&mut flows)?;
        }
        Ok(Self {
            services,
            flows,
            catalog,
            now_ns: monotonic_ns(),
            active: OnceCell::new(),
            rings: RefCell::default(),
            slots: RefCell::default(),
        })
    }

    /// Flows created after `since_ns`, by the service they are to: one pass
    /// over the flows for every service.
    pub fn flows_created_since(&self, since_ns: u64) -> HashMap<ServiceKey, usize> {
        let mut created: HashMap<ServiceKey, usize> = HashMap::new();
        for (flow_key, flow) in &self.flows {
            if flow.created_ns > since_ns {
                *created
                    .entry(ServiceKey::of_destination(flow_key))
                    .or_default() += 1;
            }
        }
        created
    }

    fn is_active(&self, flow: &Flow) -> bool {
        self.now_ns.saturating_sub(flow.last_seen_ns) <= ACTIVE_WINDOW.as_nanos() as u64
    }

    /// Backend slot `id`, read from `maps` once per snapshot: few slots
    /// serve many flows.
    fn slot(&self, maps: &Maps, id: u32) -> Result<Backend, MapsError> {
        if let Some(slot) = self.slots.borrow().get(&id) {
            return Ok(*slot);
        }
        let slot = maps
            .backends
            .get(&id, 0)
            .map_err(|e| map_error(lb_common::MAP_BACKENDS, e))?;
        self.slots.borrow_mut().insert(id, slot);
        Ok(slot)
    }

    /// The Maglev ring of the service `info` as entries per backend id.
    fn ring(&self, maps: &Maps, info: &ServiceInfo) -> Result<Rc<BTreeMap<u32, u32>>, MapsError> {
        if let Some(ring) = self.rings.borrow().get(&info.id) {
            return Ok(Rc::clone(ring));
        }
        let ring = Rc::new(maps.ring_entries(info)?);
        self.rings.borrow_mut().insert(info.id, Rc::clone(&ring));
        Ok(ring)
    }

    /// The active flows per service and backend. A flow counts only
    /// while its backend slot still holds it (`Flow::still_on`): once the
    /// slot changed hands the data path re-hashes it at its next packet, so
    /// it is no flow of the slot's new owner.
    fn active_flows(&self, maps: &Maps) -> Result<&ActiveFlows, MapsError> {
        if let Some(active) = self.active.get() {
            return Ok(active);
        }
        let mut active = ActiveFlows::default();
        for (key, flow) in &self.flows {
            if !self.is_active(flow) {
                continue;
            }
            let id = u32::from(flow.backend_id);
            if !flow.still_on(&self.slot(maps, id)?) {
                continue;
            }
            *active
                .per_service
                .entry(ServiceKey::of_destination(key))
                .or_insert(0) += 1;
            *active.per_backend.entry(id).or_insert(0) += 1;
        }
        Ok(self.active.get_or_init(|| active))
    }

    fn name_of(&self, frontend: &Frontend) -> String {
        self.catalog
            .service(frontend)
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }

    /// Whether `filter` (`VIP:PORT[/PROTO]` or a Kubernetes name) selects the
    /// service at `frontend`.
    pub fn service_matches(&self, frontend: &Frontend, filter: &str) -> bool {
        let label = frontend.to_string();
        label == filter
            || label.split('/').next() == Some(filter)
            || self.name_of(frontend) == filter
    }
}

pub fn services(maps: &Maps, snapshot: &Snapshot) -> Result<Vec<ServiceRow>, MapsError> {
    let active = &snapshot.active_flows(maps)?.per_service;
    let mut rows = Vec::new();
    for (frontend, info) in &snapshot.services {
        let backends = service_backends(maps, snapshot, frontend, info)?;
        let traffic = maps.service_traffic(info.id, backends.iter().map(|b| b.id))?;
        let healthy = backends
            .iter()
            .filter(|b| health(snapshot, frontend, b) == HEALTHY)
            .count() as u32;
        let entry = snapshot.catalog.service(frontend);
        rows.push(ServiceRow {
            name: entry.map(|e| e.name.clone()).unwrap_or_default(),
            frontend: *frontend,
            id: info.id,
            backends_healthy: healthy,
            backends_total: entry.map_or(healthy, |e| e.backends.len() as u32),
            packets: traffic.packets,
            bytes: traffic.bytes,
            active_flows: active.get(&service_key(frontend)).copied().unwrap_or(0),
        });
    }
    Ok(rows)
}

const HEALTHY: &str = "healthy";

/// What `lb backends` says of a backend's health: `healthy` (in the Maglev
/// ring, checks pass), `draining` (kept for its flows: its pods terminate),
/// or as its health checks' verdict says, `failing` (no new flows) or `dead`
/// (kept only as a drain's, or with every other backend of its service when
/// all fail).
fn health(snapshot: &Snapshot, frontend: &Frontend, backend: &ServiceBackend) -> &'static str {
    let (ip, port) = (ip_of(backend.slot.ip), u16::from_be(backend.slot.port));
    match snapshot.catalog.verdict(frontend, ip, port) {
        Some(Verdict::Failing) => "failing",
        Some(Verdict::Dead) => "dead",
        None if backend.ring > 0 => HEALTHY,
        None => "draining",
    }
}

/// An active backend slot of a service.
struct ServiceBackend {
    id: u32,
    /// Entries of the service's live ring that point at it: 0 when it drains.
    ring: u32,
    slot: Backend,
}

/// The active backend slots of the service at `frontend`: those of its live
/// Maglev ring plus, from the catalog, those it drains.
fn service_backends(
    maps: &Maps,
    snapshot: &Snapshot,
    frontend: &Frontend,
    info: &ServiceInfo,
) -> Result<Vec<ServiceBackend>, MapsError> {
    let mut ids: BTreeMap<u32, u32> = (*snapshot.ring(maps, info)?).clone();
    for &id in snapshot.catalog.slots(frontend).unwrap_or_default() {
        ids.entry(id).or_insert(0);
    }
    let mut backends = Vec::new();
    for (id, ring) in ids {
        let slot = snapshot.slot(maps, id)?;
        if slot.flags & lb_common::BACKEND_ACTIVE != 0 {
            backends.push(ServiceBackend { id, ring, slot });
        }
    }
    Ok(backends)
}

/// Backends of every service (or of those `filter` selects). Backends come
/// from the live Maglev table plus, from the catalog, drained ones.
pub fn backends(
    maps: &Maps,
    snapshot: &Snapshot,
    filter: Option<&str>,
) -> Result<Vec<BackendRow>, MapsError> {
    let active = &snapshot.active_flows(maps)?.per_backend;
    let mut rows = Vec::new();
    for (frontend, info) in &snapshot.services {
        if filter.is_some_and(|f| !snapshot.service_matches(frontend, f)) {
            continue;
        }
        let entry = snapshot.catalog.service(frontend);
        for service_backend in service_backends(maps, snapshot, frontend, info)? {
            let health = health(snapshot, frontend, &service_backend);
            let ServiceBackend {
                id,
                ring,
                slot: backend,
            } = service_backend;
            let (address, port) = (ip_of(backend.ip), u16::from_be(backend.port));
            let known = entry.and_then(|e| e.backend(address, port));
            let traffic = maps.backend_traffic(id)?;
            rows.push(BackendRow {
                frontend: *frontend,
                service_name: entry.map(|e| e.name.clone()).unwrap_or_default(),
                node: known.map(|b| b.node.clone()).unwrap_or_default(),
                id,
                address,
                port,
                weight: known.map(|b| b.weight),
                health,
                ring_entries: ring,
                share: f64::from(ring) / f64::from(info.ring_size.max(1)),
                packets: traffic.packets,
                bytes: traffic.bytes,
                active_flows: active.get(&id).copied().unwrap_or(0),
            });
        }
    }
    Ok(rows)
}

/// Tracked flows, most recently seen first.
pub fn flows(
    snapshot: &Snapshot,
    service: Option<&str>,
    backend: Option<&str>,
    limit: usize,
) -> Vec<FlowRow> {
    let mut rows: Vec<(u64, FlowRow)> = snapshot
        .flows
        .iter()
        .filter_map(|(key, flow)| {
            let frontend = frontend_of(&ServiceKey::of_destination(key));
            if let Some(filter) = service
                && !frontend.is_some_and(|f| snapshot.service_matches(&f, filter))
            {
                return None;
            }
            let backend_addr =
                SocketAddr::new(ip_of(flow.backend_ip), u16::from_be(flow.backend_port));
            let node = frontend
                .and_then(|f| snapshot.catalog.service(&f))
                .and_then(|s| s.backend(backend_addr.ip(), backend_addr.port()))
                .map(|b| b.node.clone())
                .unwrap_or_default();
            if let Some(filter) = backend
                && filter != node
                && filter != backend_addr.to_string()
                && filter != backend_addr.ip().to_string()
            {
                return None;
            }
            let seconds = |ns: u64| snapshot.now_ns.saturating_sub(ns) as f64 / 1e9;
            Some((
                flow.last_seen_ns,
                FlowRow {
                    client: SocketAddr::new(ip_of(key.src_ip), u16::from_be(key.src_port)),
                    vip: SocketAddr::new(ip_of(key.dst_ip), u16::from_be(key.dst_port)),
                    protocol: protocol_name(key.proto),
                    backend: backend_addr,
                    node,
                    age_seconds: seconds(flow.created_ns),
                    last_seen_seconds: seconds(flow.last_seen_ns),
                    packets: flow.packets,
                },
            ))
        })
        .collect();
    rows.sort_by_key(|(last_seen, _)| std::cmp::Reverse(*last_seen));
    rows.into_iter().take(limit).map(|(_, row)| row).collect()
}

/// Which backend a flow gets and why: the same hash over the same table as
/// the data path, then the flow table, which wins while its backend lives.
pub fn trace(
    maps: &Maps,
    snapshot: &Snapshot,
    client: SocketAddr,
    vip: SocketAddr,
    protocol: Protocol,
) -> Result<TraceReport, MapsError> {
    let key = FlowKey::new(
        addr_of(client.ip()),
        addr_of(vip.ip()),
        client.port().to_be(),
        vip.port().to_be(),
        protocol.number(),
    );
    let frontend = Frontend {
        vip: vip.ip(),
        port: vip.port(),
        protocol,
    };
    let mut report = TraceReport {
        client,
        vip,
        protocol,
        service: None,
        hash: None,
        ring_slot: None,
        ring_size: None,
        new_flow_backend: None,
        new_flow_node: None,
        pinned_backend: None,
        verdict: String::new(),
    };
    if !snapshot.services.iter().any(|(f, _)| *f == frontend) {
        report.verdict = format!("{frontend} is not a service: the packet passes to the kernel");
        return Ok(report);
    }
    let name = snapshot.name_of(&frontend);
    report.service = Some(if name.is_empty() {
        frontend.to_string()
    } else {
        name
    });
    if let Some(choice) = maps.maglev_choice(&key)? {
        let addr = SocketAddr::new(ip_of(choice.backend.ip), u16::from_be(choice.backend.port));
        report.hash = Some(choice.hash);
        report.ring_slot = Some(choice.slot);
        report.ring_size = Some(choice.ring_size);
        report.new_flow_backend = Some(addr);
        report.new_flow_node = snapshot
            .catalog
            .service(&frontend)
            .and_then(|s| s.backend(addr.ip(), addr.port()))
            .map(|b| b.node.clone());
    }
    let pinned = maps.flows.get(&key)?.filter(|flow| {
        maps.backends
            .get(&u32::from(flow.backend_id), 0)
            .is_ok_and(|backend| flow.still_on(&backend))
    });
    report.pinned_backend =
        pinned.map(|f| SocketAddr::new(ip_of(f.backend_ip), u16::from_be(f.backend_port)));
    report.verdict = verdict(&report);
    Ok(report)
}

/// [`TraceReport::verdict`] from the rest of the report.
fn verdict(report: &TraceReport) -> String {
    match (report.pinned_backend, report.new_flow_backend) {
        (Some(pinned), Some(new)) if report.protocol == Protocol::Tcp && new != pinned => {
            format!(
                "pinned by the flow table to {pinned}; a new connection from this port (its SYN) \
                 goes to {new}"
            )
        }
        (Some(pinned), _) => format!("pinned by the flow table to {pinned}"),
        (None, Some(new)) => format!(
            "new flow: hash {:#010x} -> slot {} of {} -> {new}",
            report.hash.unwrap_or_default(),
            report.ring_slot.unwrap_or_default(),
            report.ring_size.unwrap_or_default()
        ),
        (None, None) => "the service has no backends: the packet is dropped".to_owned(),
    }
}

/// Global counters by name.
pub fn global(maps: &Maps) -> Result<BTreeMap<&'static str, u64>, MapsError> {
    let values = maps.global_counters()?;
    Ok(counters::NAMES.iter().copied().zip(values).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_keys_read_back_as_the_frontends_they_were_written_from() {
        for (vip, protocol) in [
            ("198.51.100.1", Protocol::Tcp),
            ("2001:db8::1", Protocol::Udp),
        ] {
            let frontend = Frontend {
                vip: vip.parse().unwrap(),
                port: 80,
                protocol,
            };
            assert_eq!(frontend_of(&service_key(&frontend)), Some(frontend));
        }
        let other = ServiceKey::new(addr_of("198.51.100.1".parse().unwrap()), 80u16.to_be(), 1);
        assert_eq!(frontend_of(&other), None, "ICMP is no service protocol");
    }

    /// A TCP flow pinned elsewhere than Maglev now chooses: the verdict
    /// says where a new connection from the port goes too, as its SYN
    /// skips the flow table; UDP has no such first packet.
    #[test]
    fn a_verdict_tells_where_a_new_connection_goes_when_that_differs() {
        let at = |last: u8| SocketAddr::from(([10, 1, 0, last], 31000));
        for (protocol, new, told) in [
            (Protocol::Tcp, at(12), true),
            (Protocol::Tcp, at(11), false),
            (Protocol::Udp, at(12), false),
        ] {
            let report = TraceReport {
                client: SocketAddr::from(([10, 0, 0, 2], 40000)),
                vip: SocketAddr::from(([198, 51, 100, 1], 80)),
                protocol,
                service: None,
                hash: Some(1),
                ring_slot: Some(1),
                ring_size: Some(251),
                new_flow_backend: Some(new),
                new_flow_node: None,
                pinned_backend: Some(at(11)),
                verdict: String::new(),
            };
            let verdict = verdict(&report);
            assert!(verdict.starts_with("pinned by the flow table to 10.1.0.11:31000"));
            let names_new = verdict
                .contains("a new connection from this port (its SYN) goes to 10.1.0.12:31000");
            assert_eq!(names_new, told, "{protocol:?}, {new}: {verdict}");
        }
    }

    /// One pass counts, for every service, the flows created after a time.
    #[test]
    fn flows_created_since_are_counted_by_service() {
        let frontend = |port: u16| Frontend {
            vip: "198.51.100.1".parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
        };
        let flow = |port: u16, created_ns: u64| {
            let client = addr_of("10.0.0.2".parse().unwrap());
            let vip = addr_of(frontend(port).vip);
            let key = FlowKey::new(client, vip, 40000u16.to_be(), port.to_be(), 6);
            let flow = Flow {
                created_ns,
                ..Flow::default()
            };
            (key, flow)
        };
        let snapshot = Snapshot {
            services: Vec::new(),
            flows: vec![flow(80, 10), flow(80, 20), flow(80, 30), flow(443, 30)],
            catalog: Catalog::default(),
            now_ns: 40,
            active: OnceCell::new(),
            rings: RefCell::default(),
            slots: RefCell::default(),
        };
        let created = snapshot.flows_created_since(15);
        assert_eq!(created.get(&service_key(&frontend(80))), Some(&2));
        assert_eq!(created.get(&service_key(&frontend(443))), Some(&1));
        assert_eq!(created.len(), 2);
    }
}
