//! Which nodes serve a Service, and each of its ports as the data path serves it.

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Node, ServicePort},
    discovery::v1::EndpointSlice,
};

use super::{LoadBalancer, NODE_WEIGHT_ANNOTATION, SERVICE_NAME_LABEL, Skips, TranslateConfig};
use crate::model::{BackendSpec, Frontend, Protocol, ServiceSpec};

/// A node traffic can be sent to.
pub(super) struct Member<'a> {
    name: &'a str,
    ip: Ipv4Addr,
    weight: u32,
}

/// Ready, schedulable nodes sorted by name, so equal sets compare equal.
/// Nodes that are merely not ready are left out silently: that is routine.
pub(super) fn usable_nodes<'a>(
    nodes: &'a [Arc<Node>],
    config: &TranslateConfig,
    skips: &mut Skips,
) -> Vec<Member<'a>> {
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
        match member(name, node, &config.node_address_type) {
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

fn member<'a>(name: &'a str, node: &Node, address_type: &str) -> Result<Member<'a>, String> {
    let addresses = node
        .status
        .as_ref()
        .and_then(|status| status.addresses.as_deref());
    let ip = addresses
        .unwrap_or_default()
        .iter()
        .filter(|address| address.type_ == address_type)
        .find_map(|address| address.address.parse().ok())
        .ok_or_else(|| format!("no IPv4 {address_type} address"))?;
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

/// What a node runs of one Service's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Local {
    /// Only terminating endpoints that still serve: existing connections may
    /// finish there, new ones must go elsewhere.
    Draining,
    /// At least one ready endpoint.
    Ready,
}

/// Per Service (namespace, name), what each node runs of its endpoints.
pub(super) type EndpointIndex<'a> = BTreeMap<(&'a str, &'a str), BTreeMap<&'a str, Local>>;

/// Indexes the EndpointSlices by Service and node, once per translation.
pub(super) fn index_endpoints(slices: &[Arc<EndpointSlice>]) -> EndpointIndex<'_> {
    let mut index = EndpointIndex::new();
    for slice in slices {
        let labels = slice.metadata.labels.as_ref();
        let Some(service) = labels.and_then(|labels| labels.get(SERVICE_NAME_LABEL)) else {
            continue;
        };
        let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
        let nodes = index.entry((namespace, service.as_str())).or_default();
        for endpoint in slice.endpoints.iter().flatten() {
            let Some(node) = endpoint.node_name.as_deref() else {
                continue;
            };
            // Unset conditions mean ready and serving, and not terminating
            // (discovery.k8s.io/v1 EndpointConditions).
            let conditions = endpoint.conditions.as_ref();
            let flag =
                |get: fn(&_) -> Option<bool>, unset| conditions.and_then(get).unwrap_or(unset);
            let terminating = flag(|c| c.terminating, false);
            let state = if flag(|c| c.ready, true) && !terminating {
                Local::Ready
            } else if flag(|c| c.serving, true) && terminating {
                Local::Draining
            } else {
                continue;
            };
            let best = nodes.entry(node).or_insert(state);
            *best = (*best).max(state);
        }
    }
    index
}

/// A node serving a Service, with its Maglev weight (0: draining).
pub(super) struct Backend<'a> {
    name: &'a str,
    ip: Ipv4Addr,
    weight: u32,
}

/// Every usable node with policy Cluster; with policy Local only those running
/// an endpoint, a draining node with weight 0 so that it keeps its flows but
/// gets no new ones. Sorted by node name, as `nodes` is.
pub(super) fn for_service<'a>(
    service: &LoadBalancer,
    nodes: &[Member<'a>],
    endpoints: &EndpointIndex,
) -> Vec<Backend<'a>> {
    let backend = |node: &Member<'a>, weight| Backend {
        name: node.name,
        ip: node.ip,
        weight,
    };
    if !service.is_local() {
        return nodes
            .iter()
            .map(|node| backend(node, node.weight))
            .collect();
    }
    // Walk the Service's few endpoint nodes, not every node of the cluster.
    let local = endpoints.get(&(service.namespace, service.name));
    let local = local.into_iter().flatten();
    local
        .filter_map(|(name, state)| {
            let index = nodes.binary_search_by_key(name, |node| node.name).ok()?;
            let node = &nodes[index];
            Some(match state {
                Local::Ready => backend(node, node.weight),
                Local::Draining => backend(node, 0),
            })
        })
        .collect()
}

pub(super) fn protocol_name(port: &ServicePort) -> &str {
    port.protocol.as_deref().unwrap_or("TCP")
}

/// One port of a Service as the data path serves it: to its backends' NodePort.
pub(super) fn port_spec(
    service: &LoadBalancer,
    port: &ServicePort,
    vip: Ipv4Addr,
    backends: &[Backend],
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
    let backends = backends.iter().map(|backend| BackendSpec {
        node: backend.name.to_owned(),
        ip: backend.ip.into(),
        port: node_port,
        weight: backend.weight,
    });
    Ok(ServiceSpec {
        name: format!("{}:{name}", service.owner),
        frontend: Frontend {
            vip: vip.into(),
            port: number,
            protocol,
        },
        backends: backends.collect(),
    })
}

pub(super) fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|&port| port != 0)
}
