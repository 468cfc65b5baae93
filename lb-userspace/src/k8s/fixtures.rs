//! Kubernetes objects as the API server holds them, built one way for every
//! test: the translator's unit tests, and the integration tests that feed
//! them to a fake API server or write them as manifests. Compiled for tests
//! and with the `fixtures` feature.

use std::fmt::Display;

use k8s_openapi::{
    api::{
        core::v1::{
            Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, Service, ServicePort,
            ServiceSpec,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::translate::SERVICE_NAME_LABEL;

/// Port `port` (named `p<port>`) of `protocol` (`None`: the API server's
/// default, TCP) on `node_port` (`None`: none yet).
pub fn service_port(port: i32, protocol: Option<&str>, node_port: Option<i32>) -> ServicePort {
    ServicePort {
        name: Some(format!("p{port}")),
        port,
        protocol: protocol.map(str::to_owned),
        node_port,
        ..Default::default()
    }
}

/// A Service of type LoadBalancer with `ports`.
pub fn load_balancer_service(namespace: &str, name: &str, ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".to_owned()),
            ports: Some(ports),
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

/// `spec.ipFamilyPolicy` and `spec.ipFamilies` (left out when empty).
pub fn ip_families(mut service: Service, policy: &str, families: &[&str]) -> Service {
    let spec = service.spec.get_or_insert_default();
    spec.ip_family_policy = Some(policy.to_owned());
    if !families.is_empty() {
        spec.ip_families = Some(families.iter().map(|f| (*f).to_owned()).collect());
    }
    service
}

/// A Ready, schedulable Node with InternalIP `ip`, its addresses in the
/// kubelet's order.
pub fn node(name: &str, ip: impl Display) -> Node {
    let address = |type_: &str, address: String| NodeAddress {
        type_: type_.to_owned(),
        address,
    };
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            addresses: Some(vec![
                address("InternalIP", ip.to_string()),
                address("Hostname", name.to_owned()),
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
pub fn with_internal_ip(mut node: Node, ip: impl Display) -> Node {
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
        address: ip.to_string(),
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

/// An endpoint's node and its (ready, serving, terminating) conditions.
pub type NodeEndpoint<'a> = (&'a str, Option<bool>, Option<bool>, Option<bool>);

/// The EndpointSlice the endpointslice controller keeps for Service
/// `service`, with one endpoint (a pod) per entry of `endpoints`.
pub fn endpoint_slice(namespace: &str, service: &str, endpoints: &[NodeEndpoint]) -> EndpointSlice {
    let endpoints =
        endpoints
            .iter()
            .enumerate()
            .map(|(index, &(node, ready, serving, terminating))| Endpoint {
                addresses: vec![format!("10.244.{}.{}", index / 250, index % 250 + 2)],
                node_name: Some(node.to_owned()),
                conditions: Some(EndpointConditions {
                    ready,
                    serving,
                    terminating,
                }),
                ..Default::default()
            });
    EndpointSlice {
        address_type: "IPv4".to_owned(),
        endpoints: Some(endpoints.collect()),
        metadata: ObjectMeta {
            name: Some(format!("{service}-slice")),
            namespace: Some(namespace.to_owned()),
            labels: Some([(SERVICE_NAME_LABEL.to_owned(), service.to_owned())].into()),
            ..Default::default()
        },
        ports: None,
    }
}
