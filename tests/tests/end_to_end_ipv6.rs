//! Real TCP and UDP through an IPv6 VIP: a client namespace, the data path
//! loaded with the domain API and attached in the load balancer namespace, and
//! node namespaces running real servers on their IPv6 addresses.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use lb::{
    dataplane::{Dataplane, DataplaneConfig},
    model::{Frontend, Protocol, ServiceSpec},
};
use lb_common::counters;
use lb_tests::{
    servers::{self, ServerGuard},
    specs,
    topology::{Layout, Topology, vip6},
};

const VIP: Ipv6Addr = vip6(10);
const TCP_FRONTEND: Frontend = Frontend {
    vip: IpAddr::V6(VIP),
    port: 80,
    protocol: Protocol::Tcp,
};
const UDP_FRONTEND: Frontend = Frontend {
    vip: IpAddr::V6(VIP),
    port: 53,
    protocol: Protocol::Udp,
};
const TCP_NODE_PORT: u16 = 31000;
const UDP_NODE_PORT: u16 = 31053;
const TIMEOUT: Duration = Duration::from_secs(3);
/// Packets every name-protocol connection sends at least in each direction:
/// the handshake's SYN and ACK, the SYN-ACK and the greeting. The first packet
/// to each node goes through the kernel while the lb resolves its neighbour.
const PACKETS_EACH_WAY: u64 = 2;

/// The data path attached to every lb interface, serving the services of
/// [`services`], and the servers behind it. Fields drop in order: the program
/// detaches before the servers stop, the namespaces go last.
struct Bed {
    dataplane: Dataplane,
    _servers: Vec<ServerGuard>,
    topology: Topology,
}

/// One TCP and one UDP service on the VIP, each with every node as an equal
/// backend at its IPv6 address.
fn services(topology: &Topology) -> [ServiceSpec; 2] {
    let service = |frontend: Frontend, node_port| {
        let nodes = topology.nodes.iter();
        let backends = nodes
            .map(|node| specs::backend(&node.name, node.ip6, node_port))
            .collect();
        specs::service(frontend.vip, frontend.port, frontend.protocol, backends)
    };
    [
        service(TCP_FRONTEND, TCP_NODE_PORT),
        service(UDP_FRONTEND, UDP_NODE_PORT),
    ]
}

impl Bed {
    fn new(layout: Layout) -> Bed {
        let topology = Topology::new(layout, 3).expect("topology");
        let servers = topology
            .nodes
            .iter()
            .flat_map(|node| {
                [
                    servers::tcp_name_server(&node.ns, TCP_NODE_PORT, &node.name)
                        .expect("tcp server"),
                    servers::udp_echo_server(&node.ns, UDP_NODE_PORT, &node.name)
                        .expect("udp server"),
                ]
            })
            .collect();
        let ifaces = topology.lb_ifaces();
        let services = services(&topology);
        // Interface names resolve in the calling thread's namespace.
        let dataplane = topology
            .lb
            .enter(move || {
                let mut dataplane = Dataplane::load(DataplaneConfig {
                    max_services: services.len() as u32,
                    ..Default::default()
                })
                .expect("load");
                for iface in ifaces {
                    // Also lets the program redirect out of it.
                    dataplane.attach(iface).expect("attach");
                }
                for service in &services {
                    dataplane.set_service(service).expect("set service");
                }
                dataplane
            })
            .expect("lb namespace");
        Bed {
            dataplane,
            _servers: servers,
            topology,
        }
    }

    /// Opens `count` TCP connections from the client to the VIP; returns how
    /// many each node answered. Every connection must succeed.
    fn connect_many(&self, count: usize) -> BTreeMap<String, usize> {
        let vip = SocketAddr::new(TCP_FRONTEND.vip, TCP_FRONTEND.port);
        servers::connect_many(&self.topology.client, vip, count, TIMEOUT)
    }

    /// Sends one datagram from the client to the VIP and returns the answer.
    fn udp_ask(&self, payload: &'static [u8]) -> String {
        let vip = SocketAddr::new(UDP_FRONTEND.vip, UDP_FRONTEND.port);
        self.topology
            .client
            .enter(move || servers::udp_ask(vip, payload, TIMEOUT))
            .expect("client namespace")
            .expect("UDP answer")
    }

    /// The share of the TCP service's Maglev ring each node owns.
    fn maglev_shares(&self) -> BTreeMap<String, f64> {
        let programmed = self
            .dataplane
            .service(&TCP_FRONTEND)
            .expect("the TCP service is programmed");
        let ring: u32 = programmed.backends.iter().map(|b| b.ring_entries).sum();
        programmed
            .backends
            .iter()
            .map(|b| {
                (
                    b.spec.node.clone(),
                    f64::from(b.ring_entries) / f64::from(ring),
                )
            })
            .collect()
    }

    /// The program's global counter at `index` (`lb_common::counters`).
    fn counter(&self, index: u32) -> u64 {
        self.dataplane.maps().global_counters().expect("counters")[index as usize]
    }

    /// Asserts that the program itself sent at least `packets` requests to
    /// nodes and as many replies to the client, with the action the layout
    /// calls for. Working connections alone do not show that: the kernel
    /// forwards the packets the program rewrites and then passes to it.
    fn assert_xdp_carried(&self, packets: u64) {
        let (forward, reply) = match self.topology.layout {
            Layout::TwoArm => (counters::FORWARD_REDIRECT, counters::REPLY_REDIRECT),
            Layout::OneArm => (counters::FORWARD_TX, counters::REPLY_TX),
        };
        for (index, direction) in [(forward, "requests"), (reply, "replies")] {
            let name = counters::NAMES[index as usize];
            let sent = self.counter(index);
            assert!(
                sent >= packets,
                "{:?}: {name} is {sent}, expected at least {packets} {direction}",
                self.topology.layout
            );
        }
    }
}

#[test]
fn two_arm_spreads_ipv6_connections_by_maglev() {
    let bed = Bed::new(Layout::TwoArm);
    const CONNECTIONS: usize = 300;
    let tally = bed.connect_many(CONNECTIONS);
    assert_eq!(tally.len(), 3, "every node answers: {tally:?}");
    let shares = bed.maglev_shares();
    assert!(
        shares.keys().eq(tally.keys()),
        "the ring holds every node that answered, and only those: {shares:?}"
    );
    for (node, share) in shares {
        let observed = tally[&node] as f64 / CONNECTIONS as f64;
        println!("{node}: Maglev share {share:.3}, observed {observed:.3}");
        // 300 draws of a ~1/3 share: a standard deviation is 2.7 points.
        assert!(
            observed >= 0.15 && (observed - share).abs() < 0.1,
            "{node} got {observed:.3} of connections, its Maglev share is {share:.3}"
        );
    }
    bed.assert_xdp_carried(CONNECTIONS as u64 * PACKETS_EACH_WAY);

    let answer = bed.udp_ask(b"ping");
    assert!(
        answer.starts_with("node-") && answer.ends_with(" ping"),
        "UDP answer {answer:?}"
    );
}

#[test]
fn one_arm_serves_ipv6_tcp_and_udp_through_one_interface() {
    let bed = Bed::new(Layout::OneArm);
    const CONNECTIONS: usize = 100;
    let tally = bed.connect_many(CONNECTIONS);
    assert_eq!(tally.len(), 3, "every node answers: {tally:?}");
    bed.assert_xdp_carried(CONNECTIONS as u64 * PACKETS_EACH_WAY);
    let answer = bed.udp_ask(b"hello");
    assert!(
        answer.starts_with("node-") && answer.ends_with(" hello"),
        "UDP answer {answer:?}"
    );
}
