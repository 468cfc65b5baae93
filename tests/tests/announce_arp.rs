//! `--announce arp` end to end: the client has only an on-link route to the
//! VIP range, so it must ARP for a VIP, and the XDP program answers with the
//! lb interface's MAC; a VIP that appears later is announced with a
//! gratuitous ARP the client learns without asking.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Agent, backends_of},
    manifests::{self, ServicePort},
    netns::NetNs,
    servers,
    topology::{HOST_IFACE, LB_CLIENT_IFACE, Layout, Topology, VIP_RANGE},
    xdp_bed::fmt_mac,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const LATER_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const NODE_PORT: u16 = 31000;
const TIMEOUT: Duration = Duration::from_secs(3);
const READY: Duration = Duration::from_secs(20);

fn port() -> [ServicePort<'static>; 1] {
    [ServicePort {
        name: "http",
        port: 80,
        protocol: "TCP",
        node_port: NODE_PORT,
        target_port: None,
    }]
}

/// The Services at `vips` (one per VIP) and the topology's nodes.
fn manifest(topology: &Topology, vips: &[Ipv4Addr]) -> String {
    let mut docs: Vec<String> = vips
        .iter()
        .enumerate()
        .map(|(i, vip)| {
            manifests::load_balancer_service_yaml(&format!("web-{i}"), "demo", vip, &port())
        })
        .collect();
    docs.extend(
        topology
            .nodes
            .iter()
            .map(|n| manifests::ready_node_yaml(&n.name, &[n.ip])),
    );
    manifests::documents(&docs)
}

fn write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write manifest");
    std::fs::rename(tmp, path).expect("rename manifest");
}

/// The MAC `ns` has for `ip` in its neighbour table, if any.
fn neighbour_mac(ns: &NetNs, ip: Ipv4Addr) -> Option<String> {
    ns.neighbour_mac(HOST_IFACE, ip.into())
}

#[test]
fn a_client_on_the_segment_arps_for_the_vip_and_hears_of_new_ones() {
    let topology = Topology::new(Layout::TwoArm, 2).expect("topology");
    // Only an on-link route to the VIPs: the client must ARP for them.
    topology
        .client
        .ip(&format!("route add {VIP_RANGE} dev {HOST_IFACE}"))
        .expect("on-link route");
    let lb_mac = fmt_mac(topology.lb.mac(LB_CLIENT_IFACE).expect("lb MAC"));
    let dir = std::env::temp_dir().join(format!("lb-arp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("manifest dir");
    let file = dir.join("cluster.yaml");
    write(&file, &manifest(&topology, &[VIP]));
    let _servers: Vec<_> = topology
        .nodes
        .iter()
        .map(|n| servers::tcp_name_server(&n.ns, NODE_PORT, &n.name).expect("server"))
        .collect();
    let agent = Agent::start(&topology.lb, &topology.lb_ifaces(), &file, &[]).expect("agent");
    agent
        .wait_for_backends(READY, |rows| {
            backends_of(rows, &format!("{VIP}:80/tcp")).len() == 2
        })
        .expect("backends programmed");

    let name = topology
        .client
        .enter(|| servers::tcp_ask_name(SocketAddrV4::new(VIP, 80), TIMEOUT))
        .expect("client namespace")
        .expect("a TCP connection through the VIP");
    assert!(name.starts_with("node-"), "answered by {name:?}");
    assert_eq!(neighbour_mac(&topology.client, VIP), Some(lb_mac.clone()));
    let stats = agent.query("stats").expect("lb stats");
    assert!(
        stats["totals"]["arp_reply"].as_u64().unwrap_or(0) > 0,
        "the data path answered the ARP: {stats}"
    );
    // An address lb does not serve gets no answer from it.
    let unanswered = Ipv4Addr::new(198, 51, 100, 12);
    assert!(
        topology
            .client
            .ping(unanswered, Duration::from_secs(1))
            .is_err(),
        "{unanswered} answered"
    );
    assert_eq!(neighbour_mac(&topology.client, unanswered), None);

    // A Service appears: its VIP is announced before anyone asks. (Only now
    // does the client take gratuitous ARPs for addresses it has no entry
    // for: the one at the agent's start would have spared it the ARP above.)
    topology
        .client
        .sysctl(&format!("net.ipv4.conf.{HOST_IFACE}.arp_accept"), "1")
        .expect("arp_accept");
    assert_eq!(neighbour_mac(&topology.client, LATER_VIP), None);
    write(&file, &manifest(&topology, &[VIP, LATER_VIP]));
    let deadline = Instant::now() + READY;
    while neighbour_mac(&topology.client, LATER_VIP).is_none() {
        assert!(
            Instant::now() < deadline,
            "no gratuitous ARP for {LATER_VIP}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(neighbour_mac(&topology.client, LATER_VIP), Some(lb_mac));
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
}
