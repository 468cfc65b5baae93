//! The desired state of the load balancer, independent of where it came from
//! (manifests or a Kubernetes API server) and of how it is programmed.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

/// Transport protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => lb_common::PROTO_TCP,
            Self::Udp => lb_common::PROTO_UDP,
        }
    }

    pub fn from_number(number: u8) -> Option<Self> {
        match number {
            lb_common::PROTO_TCP => Some(Self::Tcp),
            lb_common::PROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// What clients connect to: (VIP, port, protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Frontend {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.vip, self.port),
            self.protocol
        )
    }
}

/// One node serving a service port: (node IP, the port the node takes the
/// packet on: its NodePort, or with direct server return and none the
/// service's port) with a Maglev weight.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BackendSpec {
    /// Kubernetes Node name.
    pub node: String,
    pub ip: IpAddr,
    pub port: u16,
    pub weight: u32,
}

/// One port of one Service, as the data path serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// `namespace/name:port` (the port's name, or its number when unnamed).
    pub name: String,
    pub frontend: Frontend,
    /// Sorted by node name, so equal sets compare equal.
    pub backends: Vec<BackendSpec>,
}

impl ServiceSpec {
    /// The Service's `namespace/name`, without the port.
    pub fn owner(&self) -> &str {
        self.name
            .rsplit_once(':')
            .map_or(self.name.as_str(), |(owner, _)| owner)
    }

    /// The backend at (`ip`, `port`).
    pub fn backend(&self, ip: IpAddr, port: u16) -> Option<&BackendSpec> {
        self.backends.iter().find(|b| b.ip == ip && b.port == port)
    }
}

/// Everything the data path should serve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub services: BTreeMap<Frontend, ServiceSpec>,
    /// Services every backend of which fails its health check: served all
    /// the same (fail open), but not worth announcing to routers.
    pub failing: BTreeSet<Frontend>,
}

impl DesiredState {
    /// The VIPs worth announcing: of services that are `served`, not
    /// failing their health checks, and have a backend: one that takes new
    /// flows, or, while every one drains (their pods terminate), those that
    /// finish the flows they have, which a withdrawal would cut.
    pub fn healthy_vips(&self, served: impl Fn(&Frontend) -> bool) -> BTreeSet<IpAddr> {
        self.services
            .values()
            .filter(|spec| served(&spec.frontend) && !self.failing.contains(&spec.frontend))
            .filter(|spec| !spec.backends.is_empty())
            .map(|spec| spec.frontend.vip)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontends_print_ipv6_vips_in_brackets() {
        let label = |vip: &str, protocol| {
            Frontend {
                vip: vip.parse().unwrap(),
                port: 80,
                protocol,
            }
            .to_string()
        };
        assert_eq!(label("198.51.100.1", Protocol::Tcp), "198.51.100.1:80/tcp");
        assert_eq!(label("2001:db8::1", Protocol::Udp), "[2001:db8::1]:80/udp");
    }

    #[test]
    fn a_service_whose_backends_all_drain_is_announced_until_they_go() {
        let service = |last: u8, weights: &[u32]| {
            let frontend = Frontend {
                vip: IpAddr::from([198, 51, 100, last]),
                port: 80,
                protocol: Protocol::Tcp,
            };
            let backends = weights.iter().map(|&weight| BackendSpec {
                node: format!("node-{weight}"),
                ip: IpAddr::from([10, 1, 0, 1]),
                port: 30080,
                weight,
            });
            let name = format!("ns/s{last}:http");
            let spec = ServiceSpec {
                name,
                frontend,
                backends: backends.collect(),
            };
            (frontend, spec)
        };
        let mut state = DesiredState::default();
        state.services.extend([
            service(1, &[1, 0]),
            service(2, &[0, 0]),
            service(3, &[]),
            service(4, &[1]),
            service(5, &[1]),
        ]);
        state
            .failing
            .insert(state.services.keys().nth(3).copied().unwrap());
        let unserved = *state.services.keys().nth(4).unwrap();
        let vips = state.healthy_vips(|frontend| *frontend != unserved);
        let want = [1, 2].map(|last| IpAddr::from([198, 51, 100, last]));
        assert_eq!(vips, BTreeSet::from(want));
    }
}
