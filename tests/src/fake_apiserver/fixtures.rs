//! Kubernetes objects as tests and benchmarks put them into the fake API
//! server: LoadBalancer Services, Nodes, EndpointSlices. Built by
//! `lb::k8s::fixtures`, which the translator's own tests use too.

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use lb::k8s::fixtures::{self, NodeEndpoint};
pub use lb::k8s::fixtures::{annotated, ip_families, local, node, not_ready, with_internal_ip};

/// A Service of type LoadBalancer with TCP ports `(port, nodePort)`; a
/// nodePort of 0 lets the server allocate one.
pub fn load_balancer(namespace: &str, name: &str, ports: &[(i32, i32)]) -> Service {
    let ports = ports.iter().map(|&(port, node_port)| {
        fixtures::service_port(port, Some("TCP"), (node_port != 0).then_some(node_port))
    });
    fixtures::load_balancer_service(namespace, name, ports.collect())
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
    let endpoints: Vec<NodeEndpoint> = pods
        .iter()
        .map(|&(node, pod)| {
            let ready = pod == Pod::Ready;
            (node, Some(ready), Some(true), Some(!ready))
        })
        .collect();
    fixtures::endpoint_slice(namespace, service, &endpoints)
}
