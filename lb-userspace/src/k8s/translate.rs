//! Turning Services and Nodes into the desired state of the data path.
//!
//! Traffic goes to every usable node on the Service's NodePort (like a cloud
//! load balancer with `externalTrafficPolicy: Cluster`), so Endpoints are not
//! needed: kube-proxy on the node takes it from there.

use std::{
    collections::{BTreeMap, BTreeSet, btree_map::Entry},
    fmt::Display,
    net::Ipv4Addr,
};

use k8s_openapi::api::core::v1::{Node, Service, ServicePort};

use super::manifests::ClusterObjects;
use crate::{
    model::{BackendSpec, DesiredState, Frontend, Protocol, ServiceSpec},
    vip_pool::{PoolError, VipPool},
};

/// Annotation on a Node giving its Maglev weight (positive integer; default 1),
/// so bigger nodes can take a bigger share of new connections.
pub const NODE_WEIGHT_ANNOTATION: &str = "lb.dev/weight";

/// What [`translate`] computed.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    pub state: DesiredState,
    /// Services or nodes skipped, each "kind namespace/name: reason", so one
    /// bad object does not take the others down with it.
    pub skipped: Vec<String>,
}

/// Computes what the data path should serve.
///
/// VIPs: `spec.loadBalancerIP` if set, else the first IPv4
/// `status.loadBalancer.ingress[].ip`, else allocated from `pool` keyed by
/// "namespace/name". Requested addresses are claimed in the pool before
/// anything is allocated, so allocations never collide with them. Two
/// Services may share a VIP only if their (port, protocol) sets are disjoint
/// (MetalLB's "allow-shared-ip", simplified); otherwise the later one in
/// namespace/name order is skipped. Pool owners no longer present are released.
pub fn translate(objects: &ClusterObjects, mut pool: Option<&mut VipPool>) -> Translation {
    let mut skips = Skips::default();
    let nodes = usable_nodes(&objects.nodes, &mut skips);
    let services = load_balancers(&objects.services, &mut skips);
    if let Some(pool) = pool.as_deref_mut() {
        let live = services
            .iter()
            .map(|service| service.owner.clone())
            .collect();
        for owner in pool.retain_owners(&live) {
            tracing::info!("released the VIP of {owner}, which is gone");
        }
    }
    let mut state = DesiredState::default();
    for (service, vip) in assign_vips(&services, pool, &mut skips) {
        for port in service.ports {
            match port_spec(service, port, vip, &nodes) {
                Ok(spec) => match state.services.entry(spec.frontend) {
                    Entry::Vacant(entry) => {
                        entry.insert(spec);
                    }
                    Entry::Occupied(entry) => {
                        let reason = format!(
                            "{} is already served by {}",
                            spec.frontend,
                            entry.get().name
                        );
                        skips.service(&service.owner, reason);
                    }
                },
                Err(reason) => skips.service(&service.owner, reason),
            }
        }
    }
    Translation {
        state,
        skipped: skips.0,
    }
}

/// Skip reasons, each also logged as it is found.
#[derive(Default)]
struct Skips(Vec<String>);

impl Skips {
    fn service(&mut self, owner: &str, reason: impl Display) {
        self.push(format!("Service {owner}: {reason}"));
    }

    fn node(&mut self, name: &str, reason: impl Display) {
        self.push(format!("Node {name}: {reason}"));
    }

    fn push(&mut self, skipped: String) {
        tracing::warn!("skipping {skipped}");
        self.0.push(skipped);
    }
}

/// A node traffic can be sent to.
struct Member<'a> {
    name: &'a str,
    ip: Ipv4Addr,
    weight: u32,
}

/// Ready, schedulable nodes sorted by name, so equal sets compare equal.
/// Nodes that are merely not ready are left out silently: that is routine.
fn usable_nodes<'a>(nodes: &'a [Node], skips: &mut Skips) -> Vec<Member<'a>> {
    let mut members = Vec::new();
    for node in nodes {
        let Some(name) = node.metadata.name.as_deref() else {
            skips.node("<unnamed>", "no metadata.name");
            continue;
        };
        let unschedulable = node.spec.as_ref().and_then(|spec| spec.unschedulable) == Some(true);
        if unschedulable || !is_ready(node) {
            continue;
        }
        match member(name, node) {
            Ok(member) => members.push(member),
            Err(reason) => skips.node(name, reason),
        }
    }
    members.sort_by_key(|member| member.name);
    members
}

fn is_ready(node: &Node) -> bool {
    let conditions = node
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_deref());
    conditions
        .unwrap_or_default()
        .iter()
        .any(|condition| condition.type_ == "Ready" && condition.status == "True")
}

fn member<'a>(name: &'a str, node: &Node) -> Result<Member<'a>, String> {
    let addresses = node
        .status
        .as_ref()
        .and_then(|status| status.addresses.as_deref());
    let ip = addresses
        .unwrap_or_default()
        .iter()
        .filter(|address| address.type_ == "InternalIP")
        .find_map(|address| address.address.parse().ok())
        .ok_or("no IPv4 InternalIP address")?;
    let annotations = node.metadata.annotations.as_ref();
    let weight = match annotations.and_then(|annotations| annotations.get(NODE_WEIGHT_ANNOTATION)) {
        None => 1,
        Some(text) => text
            .parse()
            .ok()
            .filter(|&weight| weight > 0)
            .ok_or_else(|| {
                format!("annotation {NODE_WEIGHT_ANNOTATION}={text:?} is not a positive integer")
            })?,
    };
    Ok(Member { name, ip, weight })
}

/// A Service of type LoadBalancer.
struct LoadBalancer<'a> {
    /// "namespace/name": the pool owner and the prefix of port names.
    owner: String,
    service: &'a Service,
    ports: &'a [ServicePort],
}

impl LoadBalancer<'_> {
    /// The VIP the Service asks for or already has; `None` to allocate one.
    fn requested_vip(&self) -> Result<Option<Ipv4Addr>, String> {
        let spec = self.service.spec.as_ref();
        if let Some(text) = spec
            .and_then(|spec| spec.load_balancer_ip.as_deref())
            .filter(|text| !text.is_empty())
        {
            let vip = text
                .parse()
                .map_err(|_| format!("spec.loadBalancerIP {text:?} is not an IPv4 address"))?;
            return Ok(Some(vip));
        }
        let status = self
            .service
            .status
            .as_ref()
            .and_then(|status| status.load_balancer.as_ref());
        let ingress = status
            .and_then(|status| status.ingress.as_deref())
            .unwrap_or_default();
        Ok(ingress
            .iter()
            .find_map(|ingress| ingress.ip.as_deref()?.parse().ok()))
    }

    /// What this Service listens on, to tell whether it can share a VIP.
    fn listeners(&self) -> BTreeSet<(i32, &str)> {
        self.ports
            .iter()
            .map(|port| (port.port, protocol_name(port)))
            .collect()
    }
}

fn protocol_name(port: &ServicePort) -> &str {
    port.protocol.as_deref().unwrap_or("TCP")
}

/// Services of type LoadBalancer sorted by namespace/name, which decides who
/// wins a VIP conflict.
fn load_balancers<'a>(services: &'a [Service], skips: &mut Skips) -> Vec<LoadBalancer<'a>> {
    let mut found = Vec::new();
    for service in services {
        let Some(spec) = service
            .spec
            .as_ref()
            .filter(|spec| spec.type_.as_deref() == Some("LoadBalancer"))
        else {
            continue;
        };
        let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
        let Some(name) = service.metadata.name.as_deref() else {
            skips.service(&format!("{namespace}/<unnamed>"), "no metadata.name");
            continue;
        };
        let ports = spec.ports.as_deref().unwrap_or_default();
        found.push(LoadBalancer {
            owner: format!("{namespace}/{name}"),
            service,
            ports,
        });
    }
    found.sort_by(|a, b| a.owner.cmp(&b.owner));
    found
}

/// Requested VIPs with the Services sharing each, and the Services that need
/// one allocated. Services are visited in order, so the first one wins a conflict.
type Requests<'s, 'a> = (
    BTreeMap<Ipv4Addr, Vec<&'s LoadBalancer<'a>>>,
    Vec<&'s LoadBalancer<'a>>,
);

fn requests<'s, 'a>(services: &'s [LoadBalancer<'a>], skips: &mut Skips) -> Requests<'s, 'a> {
    let (mut sharers, mut unassigned): Requests = (BTreeMap::new(), Vec::new());
    for service in services {
        match service.requested_vip() {
            Ok(Some(vip)) => {
                let holders = sharers.entry(vip).or_default();
                let listeners = service.listeners();
                match holders
                    .iter()
                    .find(|holder| !holder.listeners().is_disjoint(&listeners))
                {
                    Some(holder) => {
                        let reason = format!(
                            "VIP {vip} is already used by {} on an overlapping port",
                            holder.owner
                        );
                        skips.service(&service.owner, reason);
                    }
                    None => holders.push(service),
                }
            }
            Ok(None) => unassigned.push(service),
            Err(reason) => skips.service(&service.owner, reason),
        }
    }
    (sharers, unassigned)
}

/// Gives each Service a VIP, claiming requested ones in the pool before
/// allocating the rest.
fn assign_vips<'s, 'a>(
    services: &'s [LoadBalancer<'a>],
    mut pool: Option<&mut VipPool>,
    skips: &mut Skips,
) -> Vec<(&'s LoadBalancer<'a>, Ipv4Addr)> {
    let (sharers, unassigned) = requests(services, skips);
    if let Some(pool) = pool.as_deref_mut() {
        release_moved(pool, &sharers);
    }
    let mut assigned = Vec::new();
    for (vip, holders) in sharers {
        let claimed = match pool.as_deref_mut() {
            Some(pool) => claim(pool, vip, &holders),
            None => Ok(()),
        };
        match claimed {
            Ok(()) => assigned.extend(holders.into_iter().map(|service| (service, vip))),
            Err(err) => holders
                .iter()
                .for_each(|service| skips.service(&service.owner, &err)),
        }
    }
    for service in unassigned {
        let Some(pool) = pool.as_deref_mut() else {
            let reason = "no VIP: no spec.loadBalancerIP, no IPv4 status.loadBalancer.ingress and no VIP pool";
            skips.service(&service.owner, reason);
            continue;
        };
        match pool.allocate(&service.owner) {
            Ok(vip) => assigned.push((service, vip)),
            Err(err) => skips.service(&service.owner, format!("no VIP: {err}")),
        }
    }
    assigned
}

/// Frees addresses that Services requesting another one held before, so
/// Services swapping VIPs do not look like a conflict.
fn release_moved(pool: &mut VipPool, sharers: &BTreeMap<Ipv4Addr, Vec<&LoadBalancer>>) {
    for (&vip, holders) in sharers {
        for service in holders {
            if pool.lookup(&service.owner).is_some_and(|held| held != vip) {
                pool.release(&service.owner);
            }
        }
    }
}

/// Records `vip` in the pool for the Services sharing it. The pool knows one
/// owner per address, so the sharer already holding it stays its owner and a
/// new sharer is not mistaken for a conflict.
fn claim(pool: &mut VipPool, vip: Ipv4Addr, holders: &[&LoadBalancer]) -> Result<(), PoolError> {
    let holding = holders
        .iter()
        .find(|service| pool.lookup(&service.owner) == Some(vip));
    let owner = holding.unwrap_or(&holders[0]).owner.as_str();
    pool.claim(owner, vip)
}

/// One port of a Service as the data path serves it: to every node's NodePort.
fn port_spec(
    service: &LoadBalancer,
    port: &ServicePort,
    vip: Ipv4Addr,
    nodes: &[Member],
) -> Result<ServiceSpec, String> {
    let protocol_name = protocol_name(port);
    let label = format!("port {}/{}", port.port, protocol_name.to_ascii_lowercase());
    let protocol = match protocol_name {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        other => return Err(format!("{label}: protocol {other} is not supported")),
    };
    let number =
        valid_port(port.port).ok_or_else(|| format!("{label}: not a valid port number"))?;
    let node_port = match port.node_port {
        None => return Err(format!("{label} has no nodePort")),
        Some(node_port) => valid_port(node_port)
            .ok_or_else(|| format!("{label}: nodePort {node_port} is not valid"))?,
    };
    let name = match port.name.as_deref() {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => port.port.to_string(),
    };
    let backends = nodes.iter().map(|node| BackendSpec {
        node: node.name.to_owned(),
        ip: node.ip,
        port: node_port,
        weight: node.weight,
    });
    Ok(ServiceSpec {
        name: format!("{}:{name}", service.owner),
        frontend: Frontend {
            vip,
            port: number,
            protocol,
        },
        backends: backends.collect(),
    })
}

fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|&port| port != 0)
}

#[cfg(test)]
mod tests;
