//! Kubernetes objects as tests and benchmarks put them into the fake API
//! server: LoadBalancer Services, Nodes, EndpointSlices.

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::{
    api::{
        core::v1::{
            Node, NodeAddress, NodeCondition, NodeStatus, Service, ServicePort, ServiceSpec,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

/// A Service of type LoadBalancer with TCP ports `(port, nodePort)`; a
/// nodePort of 0 lets the server allocate one.
pub fn load_balancer(namespace: &str, name: &str, ports: &[(i32, i32)]) -> Service {
    let ports = ports.iter().map(|&(port, node_port)| ServicePort {
        name: Some(format!("p{port}")),
        port,
        protocol: Some("TCP".to_owned()),
        node_port: (node_port != 0).then_some(node_port),
        ..Default::default()
    });
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".to_owned()),
            ports: Some(ports.collect()),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn annotated(mut service: Service, key: &str, value: &str) -> Service {
    let annotations = service.metadata.annotations.get_or_insert_default();
    annotations.insert(key.to_owned(), value.to_owned());
    service
}

/// `externalTrafficPolicy: Local`: only nodes with a ready endpoint serve.
pub fn local(mut service: Service) -> Service {
    let spec = service.spec.get_or_insert_default();
    spec.external_traffic_policy = Some("Local".to_owned());
    service
}

/// `spec.ipFamilyPolicy` and `spec.ipFamilies` (left to the server when empty).
pub fn ip_families(mut service: Service, policy: &str, families: &[&str]) -> Service {
    let spec = service.spec.get_or_insert_default();
    spec.ip_family_policy = Some(policy.to_owned());
    if !families.is_empty() {
        spec.ip_families = Some(families.iter().map(|f| (*f).to_owned()).collect());
    }
    service
}

/// The first IPv4 address of `status.loadBalancer.ingress`.
pub fn ingress_ip(service: &Service) -> Option<Ipv4Addr> {
    ingress_ips(service).into_iter().find_map(|ip| match ip {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    })
}

/// Every IP address of `status.loadBalancer.ingress`, in order: read as
/// the agent reads it.
pub use lb::k8s::ingress_ips;

/// A Ready Node at `ip` (its InternalIP).
pub fn node(name: &str, ip: impl Into<IpAddr>) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: None,
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".to_owned(),
                    address: ip.into().to_string(),
                },
                NodeAddress {
                    type_: "Hostname".to_owned(),
                    address: name.to_owned(),
                },
            ]),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".to_owned(),
                status: "True".to_owned(),
                reason: Some("KubeletReady".to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// `node` with another InternalIP, as the kubelet of a dual-stack node lists
/// its address of the other family: after the first.
pub fn with_internal_ip(mut node: Node, ip: impl Into<IpAddr>) -> Node {
    let addresses = node
        .status
        .get_or_insert_default()
        .addresses
        .get_or_insert_default();
    let after = addresses
        .iter()
        .rposition(|address| address.type_ == "InternalIP")
        .map_or(0, |index| index + 1);
    let address = NodeAddress {
        type_: "InternalIP".to_owned(),
        address: ip.into().to_string(),
    };
    addresses.insert(after, address);
    node
}

/// `node` as the node controller marks it when its kubelet stops reporting.
pub fn not_ready(mut node: Node) -> Node {
    let conditions = node
        .status
        .get_or_insert_default()
        .conditions
        .get_or_insert_default();
    for condition in conditions.iter_mut().filter(|c| c.type_ == "Ready") {
        condition.status = "Unknown".to_owned();
        condition.reason = Some("NodeStatusUnknown".to_owned());
    }
    node
}

/// Where an endpoint (a pod) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pod {
    Ready,
    /// Shutting down but still serving its connections.
    Terminating,
}

/// The EndpointSlice the endpointslice controller keeps for a Service, with
/// one endpoint per `(node, pod)`.
pub fn endpoint_slice(namespace: &str, service: &str, pods: &[(&str, Pod)]) -> EndpointSlice {
    let endpoints = pods.iter().enumerate().map(|(index, &(node, pod))| {
        let ready = pod == Pod::Ready;
        Endpoint {
            addresses: vec![format!("10.244.{}.{}", index / 250, index % 250 + 2)],
            node_name: Some(node.to_owned()),
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(true),
                terminating: Some(!ready),
            }),
            ..Default::default()
        }
    });
    EndpointSlice {
        address_type: "IPv4".to_owned(),
        endpoints: Some(endpoints.collect()),
        metadata: ObjectMeta {
            name: Some(format!("{service}-slice")),
            namespace: Some(namespace.to_owned()),
            labels: Some([("kubernetes.io/service-name".to_owned(), service.to_owned())].into()),
            ..Default::default()
        },
        ports: None,
    }
}
