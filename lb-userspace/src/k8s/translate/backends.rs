//! Which nodes serve a Service, and each of its ports as the data path serves it.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Node, ServicePort},
    discovery::v1::EndpointSlice,
};

use super::{
    HealthCheck, LoadBalancer, NODE_WEIGHT_ANNOTATION, SERVICE_NAME_LABEL, Skips, TranslateConfig,
};
use crate::{
    dataplane::Forwarding,
    k8s::family::Family,
    model::{BackendSpec, Frontend, Protocol, ServiceSpec},
};

/// A node traffic can be sent to.
pub(super) struct Member<'a> {
    name: &'a str,
    /// Its first address of each family (of the configured type): a node
    /// serves the VIPs of the families it has an address of.
    ips: Vec<IpAddr>,
    weight: u32,
}

impl Member<'_> {
    fn ip(&self, family: Family) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| Family::of(*ip) == family)
    }
}

/// Ready nodes sorted by name, so equal sets compare equal. Nodes that are
/// merely not ready are left out silently: that is routine. As Kubernetes'
/// own service controller does since 1.30 (KEP-3458), a cordoned node stays
/// (cordoning stops scheduling, not its kube-proxy: dropping it would re-hash
/// its flows for nothing), and a node labelled
/// `node.kubernetes.io/exclude-from-external-load-balancers` (kubeadm labels
/// control-plane nodes so) is left out.
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
        let excluded = node
            .metadata
            .labels
            .as_ref()
            .is_some_and(|labels| labels.contains_key(EXCLUDE_FROM_LOAD_BALANCERS));
        if excluded || !is_ready(node) {
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

/// The label that keeps a node out of every load balancer's backends.
const EXCLUDE_FROM_LOAD_BALANCERS: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

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
    let of_type = addresses
        .unwrap_or_default()
        .iter()
        .filter(|address| address.type_ == address_type)
        .filter_map(|address| address.address.parse::<IpAddr>().ok());
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in of_type.map(|ip| ip.to_canonical()) {
        if !ips.iter().any(|first| Family::of(*first) == Family::of(ip)) {
            ips.push(ip);
        }
    }
    if ips.is_empty() {
        return Err(format!("no {address_type} address"));
    }
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
    Ok(Member { name, ips, weight })
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

/// Per Service (namespace, name), what each usable node runs of its
/// endpoints. Nodes by their index among the usable ones, which is their
/// name order: a Service's backends then need no lookup by name.
pub(super) type EndpointIndex<'a> = HashMap<(&'a str, &'a str), BTreeMap<usize, Local>>;

/// Indexes the EndpointSlices by Service and node, once per translation.
/// Endpoints on nodes that are not usable are left out.
pub(super) fn index_endpoints<'a>(
    slices: &'a [Arc<EndpointSlice>],
    usable: &[Member],
) -> EndpointIndex<'a> {
    let by_name: HashMap<&str, usize> = usable
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name, i))
        .collect();
    let mut index = EndpointIndex::new();
    for slice in slices {
        let Some(service) = service_of(slice) else {
            continue;
        };
        let nodes = index.entry(service).or_default();
        for endpoint in slice.endpoints.iter().flatten() {
            let Some(&node) = endpoint.node_name.as_deref().and_then(|n| by_name.get(n)) else {
                continue;
            };
            // Unset conditions mean ready and serving, and not terminating,
            // as kube-proxy reads them: it is the node's kube-proxy that
            // takes the traffic (the API's documentation would have an unset
            // serving follow ready; the EndpointSlice controller sets both).
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

/// The (namespace, name) of the Service `slice` belongs to.
pub(super) fn service_of(slice: &EndpointSlice) -> Option<(&str, &str)> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
    Some((namespace, name))
}

/// A node serving a Service, with its Maglev weight (0: draining).
pub(super) struct Backend<'n, 'a> {
    node: &'n Member<'a>,
    weight: u32,
}

/// Every usable node with policy Cluster; with policy Local only those running
/// an endpoint, a draining node with weight 0 so that it keeps its flows but
/// gets no new ones. Sorted by node name, as `nodes` is.
pub(super) fn for_service<'n, 'a>(
    service: &LoadBalancer,
    nodes: &'n [Member<'a>],
    endpoints: &EndpointIndex,
) -> Vec<Backend<'n, 'a>> {
    let backend = |node, weight| Backend { node, weight };
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
        .map(|(&index, state)| {
            let node = &nodes[index];
            match state {
                Local::Ready => backend(node, node.weight),
                Local::Draining => backend(node, 0),
            }
        })
        .collect()
}

pub(super) fn protocol_name(port: &ServicePort) -> &str {
    port.protocol.as_deref().unwrap_or("TCP")
}

/// One port of a Service, checked once however many VIPs it is served on.
pub(super) struct ServedPort {
    /// `namespace/name:port`.
    name: String,
    number: u16,
    protocol: Protocol,
    /// None with direct server return only: nodes then take the packet on
    /// the VIP and the Service's own port.
    node_port: Option<u16>,
    /// How its nodes are health checked, if they are.
    pub(super) check: Option<HealthCheck>,
}

impl ServedPort {
    pub(super) fn new(
        service: &LoadBalancer,
        port: &ServicePort,
        config: &TranslateConfig,
    ) -> Result<Self, String> {
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
            Some(node_port) => Some(
                valid_port(node_port)
                    .ok_or_else(|| format!("{label}: nodePort {node_port} is not valid"))?,
            ),
            None if config.forwarding == Forwarding::Dsr => None,
            None => {
                return Err(format!(
                    "{label} has no nodePort, where --forwarding nat sends its traffic \
                     (--forwarding dsr serves it on the VIP)"
                ));
            }
        };
        let name = match port.name.as_deref() {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => port.port.to_string(),
        };
        Ok(Self {
            name: format!("{}:{name}", service.owner),
            number,
            protocol,
            node_port,
            check: service.health_check(node_port.is_some(), config),
        })
    }

    /// The port on `vip` as the data path serves it: to the NodePort (or,
    /// without one, the port itself) of the backends with an address of the
    /// VIP's family.
    pub(super) fn on(&self, vip: IpAddr, backends: &[Backend]) -> ServiceSpec {
        let family = Family::of(vip);
        let backends = backends.iter().filter_map(|backend| {
            Some(BackendSpec {
                node: backend.node.name.to_owned(),
                ip: backend.node.ip(family)?,
                port: self.node_port.unwrap_or(self.number),
                weight: backend.weight,
            })
        });
        ServiceSpec {
            name: self.name.clone(),
            frontend: Frontend {
                vip,
                port: self.number,
                protocol: self.protocol,
            },
            backends: backends.collect(),
        }
    }
}

pub(super) fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|&port| port != 0)
}
