//! Services as tests hand them to the data path's domain API
//! (`Dataplane::set_service`), built one way everywhere.

use std::net::IpAddr;

use lb::model::{BackendSpec, Frontend, Protocol, ServiceSpec};

use crate::xdp_bed::{node_ip, node_ip6};

/// The service at (`vip`, `port`, `protocol`), named after it.
pub fn service(
    vip: impl Into<IpAddr>,
    port: u16,
    protocol: Protocol,
    backends: Vec<BackendSpec>,
) -> ServiceSpec {
    let frontend = Frontend {
        vip: vip.into(),
        port,
        protocol,
    };
    ServiceSpec {
        name: format!("test/{frontend}"),
        frontend,
        backends,
    }
}

/// A backend of weight 1 on `node` at (`ip`, `port`).
pub fn backend(node: impl Into<String>, ip: impl Into<IpAddr>, port: u16) -> BackendSpec {
    BackendSpec {
        node: node.into(),
        ip: ip.into(),
        port,
        weight: 1,
    }
}

/// Node `i` of an [`XdpBed`](crate::xdp_bed::XdpBed) (`node-<i>`) at its
/// IPv4 address.
pub fn node(i: u8, port: u16) -> BackendSpec {
    backend(format!("node-{i}"), node_ip(i), port)
}

/// Node `i` of an [`XdpBed`](crate::xdp_bed::XdpBed) at its IPv6 address.
pub fn node6(i: u8, port: u16) -> BackendSpec {
    backend(format!("node-{i}"), node_ip6(i), port)
}
