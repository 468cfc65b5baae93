//! Kubernetes objects as tests and benchmarks put them into the fake API
//! server: LoadBalancer Services, Nodes, EndpointSlices.

use std::net::Ipv4Addr;

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

/// The first IPv4 address of `status.loadBalancer.ingress`.
pub fn ingress_ip(service: &Service) -> Option<Ipv4Addr> {
    let status = service.status.as_ref()?.load_balancer.as_ref()?;
    let ingress = status.ingress.as_deref().unwrap_or_default();
    ingress.iter().find_map(|i| i.ip.as_deref()?.parse().ok())
}

/// A Ready Node at `ip` (its InternalIP).
pub fn node(name: &str, ip: Ipv4Addr) -> Node {
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
                    address: ip.to_string(),
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
