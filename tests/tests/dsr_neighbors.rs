//! With `--forwarding dsr` the data path can send only to a node whose MAC
//! the kernel has resolved, and the packet keeps its VIP, so the kernel
//! cannot resolve the node for it. The agent makes the nodes' neighbour
//! entries managed (the kernel resolves them and keeps them resolved):
//! connections through the VIP work with health checks off, which otherwise
//! resolved the nodes as a side effect. An entry set by hand or by another
//! daemon is left alone; the agent's entry of a node no longer served goes,
//! one deleted by someone else comes back, and all of them go with the data
//! path when the agent detaches on exit.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Agent, QUIET_DSR, backends_of},
    manifests::{self, ManifestFile},
    servers::{self, ServerGuard},
    topology::{self, HOST_IFACE, LB_NODE_IFACE, Layout, Topology, node_ip},
    xdp_bed::fmt_mac,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const POD_PORT: u16 = 8080;
const READY: Duration = Duration::from_secs(20);
/// `lb::node_neighbors::NEIGHBOR_PROTOCOL`, as `ip -d neigh` shows it.
const OURS: &str = "proto 108";

/// The Service and nodes `nodes` (1-based).
fn manifest(nodes: &[u8]) -> String {
    let names: Vec<String> = nodes.iter().map(|i| format!("node-{i}")).collect();
    let ips = nodes.iter().map(|&i| IpAddr::V4(node_ip(i)));
    let nodes = names.iter().map(String::as_str).zip(ips);
    manifests::http_services_and_nodes([(IpAddr::V4(VIP), 31000)], nodes)
}

/// The lb host's neighbour entry of node `i`, as `ip -d neigh` prints it
/// (empty without one).
fn entry(topology: &Topology, i: u8) -> String {
    let ip = IpAddr::V4(node_ip(i));
    topology
        .lb
        .ip(&format!("-d neigh show {ip} dev {LB_NODE_IFACE}"))
        .expect("ip neigh")
        .trim()
        .to_owned()
}

#[test]
fn nodes_are_kept_resolved_without_health_checks() {
    let topology = Topology::new(Layout::TwoArm, 3).expect("topology");
    let _pods: Vec<ServerGuard> = topology
        .nodes
        .iter()
        .map(|n| servers::tcp_name_server(&n.ns, POD_PORT, &n.name))
        .collect::<anyhow::Result<_>>()
        .expect("servers");
    topology::expose(&topology.nodes, VIP, 80, POD_PORT).expect("kube-proxy's rules");
    // Node 3's entry is set by hand, node 2's by a routing daemon, each
    // with the node's real MAC.
    let mac = |i: u8| {
        let node = &topology.nodes[usize::from(i) - 1];
        fmt_mac(node.ns.mac(HOST_IFACE).expect("a node's MAC"))
    };
    for (i, kind) in [(3, "nud permanent"), (2, "nud reachable protocol bgp")] {
        topology
            .lb
            .ip(&format!(
                "neigh replace {} dev {LB_NODE_IFACE} lladdr {} {kind}",
                node_ip(i),
                mac(i)
            ))
            .expect("an entry not the agent's");
    }

    let manifests = ManifestFile::new("dsr-neighbors", &manifest(&[1, 2, 3])).expect("manifests");
    let agent = Agent::start(
        &topology.lb,
        &topology.lb_ifaces(),
        manifests.path(),
        &[&QUIET_DSR[..], &["--detach-on-exit"]].concat(),
    )
    .expect("agent");
    let service = format!("{VIP}:80/tcp");
    agent
        .wait_for_backends(READY, |rows| backends_of(rows, &service).len() == 3)
        .expect("served");

    let tally = servers::connect_many(
        &topology.client,
        SocketAddrV4::new(VIP, 80),
        60,
        Duration::from_secs(3),
    );
    assert_eq!(tally.len(), 3, "every node answers: {tally:?}");
    let managed = entry(&topology, 1);
    assert!(
        managed.contains("managed") && managed.contains(OURS),
        "{managed}"
    );
    let by_hand = entry(&topology, 3);
    assert!(
        by_hand.contains("PERMANENT") && !by_hand.contains("managed"),
        "{by_hand}"
    );
    let daemons = entry(&topology, 2);
    assert!(
        daemons.contains("proto bgp") && !daemons.contains("managed"),
        "{daemons}"
    );

    // Deleted by someone else, the agent's entry comes back.
    topology
        .lb
        .ip(&format!("neigh del {} dev {LB_NODE_IFACE}", node_ip(1)))
        .expect("delete node 1's entry");
    let deadline = Instant::now() + READY;
    while !entry(&topology, 1).contains(OURS) {
        assert!(Instant::now() < deadline, "not made again: {}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }

    manifests.write(&manifest(&[2, 3])).expect("node 1 leaves");
    agent
        .wait_for_backends(READY, |rows| backends_of(rows, &service).len() == 2)
        .expect("node 1 no longer served");
    let gone = entry(&topology, 1);
    assert!(!gone.contains(OURS), "node 1's entry stays: {gone}");
    assert!(entry(&topology, 2).contains("proto bgp"), "{}", agent.log());
    assert!(entry(&topology, 3).contains("PERMANENT"));
    manifests
        .write(&manifest(&[1, 2, 3]))
        .expect("node 1 is back");
    agent
        .wait_for_backends(READY, |rows| backends_of(rows, &service).len() == 3)
        .expect("node 1 served again");
    assert!(entry(&topology, 1).contains(OURS), "{}", agent.log());

    // Detaching, the agent takes its entries with the data path.
    agent.signal(libc::SIGTERM).expect("SIGTERM");
    agent
        .wait_for_exit(Duration::from_secs(10))
        .expect("the agent stops");
    let left = entry(&topology, 1);
    assert!(!left.contains(OURS), "node 1's entry stays: {left}");
    assert!(entry(&topology, 3).contains("PERMANENT"));
}
