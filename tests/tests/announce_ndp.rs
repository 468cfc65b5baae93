//! `--announce arp` for IPv6 end to end: the client has only an on-link route
//! to the IPv6 VIP range, so it must send a Neighbor Solicitation for a VIP,
//! and the XDP program answers with the lb interface's MAC; a VIP that
//! appears later is announced with an unsolicited Neighbor Advertisement.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Agent, backends_of},
    manifests::{self, ManifestFile, ServicePort},
    servers,
    topology::{HOST_IFACE, LB_CLIENT_IFACE, Layout, Topology, VIP6_RANGE, vip6},
    xdp_bed::fmt_mac,
};

const VIP: Ipv6Addr = vip6(10);
const LATER_VIP: Ipv6Addr = vip6(11);
const NOT_A_VIP: Ipv6Addr = vip6(12);
const NODE_PORT: u16 = 31000;
const TIMEOUT: Duration = Duration::from_secs(3);
const READY: Duration = Duration::from_secs(20);

/// IPv6-only Services at `vips` and the nodes at their IPv6 addresses.
fn manifest(topology: &Topology, vips: &[Ipv6Addr]) -> String {
    let port = ServicePort {
        name: "http",
        port: 80,
        protocol: "TCP",
        node_port: NODE_PORT,
        target_port: None,
    };
    let mut docs: Vec<String> = vips
        .iter()
        .enumerate()
        .map(|(i, vip)| {
            // An IPv6 VIP makes it an IPv6 Service (spec.ipFamilies).
            manifests::load_balancer_service_yaml(&format!("web6-{i}"), "demo", vip, &[port])
        })
        .collect();
    docs.extend(
        topology
            .nodes
            .iter()
            .map(|n| manifests::ready_node_yaml(&n.name, &[n.ip6])),
    );
    manifests::documents(&docs)
}

fn neighbour_mac(topology: &Topology, ip: Ipv6Addr) -> Option<String> {
    topology.client.neighbour_mac(HOST_IFACE, IpAddr::V6(ip))
}

#[test]
fn a_client_on_the_segment_solicits_the_vip_and_hears_of_new_ones() {
    let topology = Topology::new(Layout::TwoArm, 2).expect("topology");
    // Only an on-link route to the VIPs: the client must solicit them.
    topology
        .client
        .ip(&format!("-6 route add {VIP6_RANGE} dev {HOST_IFACE}"))
        .expect("on-link route");
    let lb_mac = fmt_mac(topology.lb.mac(LB_CLIENT_IFACE).expect("lb MAC"));
    let manifests =
        ManifestFile::new("announce-ndp", &manifest(&topology, &[VIP])).expect("manifests");
    let _servers: Vec<_> = topology
        .nodes
        .iter()
        .map(|n| servers::tcp_name_server(&n.ns, NODE_PORT, &n.name).expect("server"))
        .collect();
    let agent =
        Agent::start(&topology.lb, &topology.lb_ifaces(), manifests.path(), &[]).expect("agent");
    agent
        .wait_for_backends(READY, |rows| {
            backends_of(rows, &format!("[{VIP}]:80/tcp")).len() == 2
        })
        .expect("backends programmed");

    let name = topology
        .client
        .enter(|| servers::tcp_ask_name(SocketAddr::from((VIP, 80)), TIMEOUT))
        .expect("client namespace")
        .expect("a TCP connection through the VIP");
    assert!(name.starts_with("node-"), "answered by {name:?}");
    assert_eq!(neighbour_mac(&topology, VIP), Some(lb_mac.clone()));
    assert!(
        agent.counter("ndp_reply").expect("lb stats") > 0,
        "the data path answered the solicitation"
    );
    // An address lb does not serve gets no answer from it.
    let refused = topology
        .client
        .enter(|| servers::tcp_ask_name(SocketAddr::from((NOT_A_VIP, 80)), Duration::from_secs(1)))
        .expect("client namespace");
    assert!(refused.is_err(), "{NOT_A_VIP} answered");
    assert_eq!(neighbour_mac(&topology, NOT_A_VIP), None);

    // A Service appears: its VIP is advertised before anyone asks. Linux
    // creates an entry from an unsolicited advertisement only on a router
    // told to (RFC 9131), and routers are who needs it: make the client one.
    for (key, value) in [("forwarding", "1"), ("accept_untracked_na", "1")] {
        topology
            .client
            .sysctl(&format!("net.ipv6.conf.{HOST_IFACE}.{key}"), value)
            .expect(key);
    }
    assert_eq!(neighbour_mac(&topology, LATER_VIP), None);
    manifests
        .write(&manifest(&topology, &[VIP, LATER_VIP]))
        .expect("manifests");
    let deadline = Instant::now() + READY;
    while neighbour_mac(&topology, LATER_VIP).is_none() {
        assert!(
            Instant::now() < deadline,
            "no unsolicited Neighbor Advertisement for {LATER_VIP}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(neighbour_mac(&topology, LATER_VIP), Some(lb_mac));
}
