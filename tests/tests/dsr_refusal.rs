//! `--forwarding dsr` needs every node on a segment lb is attached to: a
//! Service with a node the kernel routes through a gateway is refused, with
//! the reason in the agent's log, and served again once that node is gone.

use std::{net::Ipv4Addr, time::Duration};

use lb_tests::{
    agent::{Agent, QUIET_DSR, backends_of},
    manifests::{self, ManifestFile, ServicePort},
    topology::{Layout, Topology, node_ip},
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// A node two hops away: the lb host reaches it through node 1.
const FAR_NODE: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 5);
const READY: Duration = Duration::from_secs(20);

/// The Service and nodes 1 and 2, and the far node if `far`.
fn manifest(far: bool) -> String {
    let port = ServicePort::http(80, 31000);
    let mut docs = vec![manifests::load_balancer_service_yaml(
        "web",
        "demo",
        VIP,
        &[port],
    )];
    for i in 1..=2 {
        docs.push(manifests::ready_node_yaml(
            &format!("node-{i}"),
            &[node_ip(i)],
        ));
    }
    if far {
        docs.push(manifests::ready_node_yaml("far", &[FAR_NODE]));
    }
    manifests::documents(&docs)
}

#[test]
fn a_service_with_a_node_behind_a_gateway_is_refused_with_the_reason() {
    let topology = Topology::new(Layout::TwoArm, 2).expect("topology");
    topology
        .lb
        .ip(&format!("route add 10.9.0.0/24 via {}", node_ip(1)))
        .expect("route to the far node");
    let manifests = ManifestFile::new("dsr-refusal", &manifest(false)).expect("manifests");
    let agent = Agent::start(
        &topology.lb,
        &topology.lb_ifaces(),
        manifests.path(),
        &QUIET_DSR,
    )
    .expect("agent");
    let service = format!("{VIP}:80/tcp");
    agent
        .wait_for_backends(READY, |rows| backends_of(rows, &service).len() == 2)
        .expect("served while every node is on-link");

    manifests.write(&manifest(true)).expect("add the far node");
    agent
        .wait_for_backends(READY, |rows| backends_of(rows, &service).is_empty())
        .expect("refused once a node is behind a gateway");
    let reason = format!(
        "node far ({FAR_NODE}) is reached through gateway {}: direct server return needs \
         every node on a segment lb is attached to",
        node_ip(1)
    );
    assert!(agent.log().contains(&reason), "{}", agent.log());

    manifests
        .write(&manifest(false))
        .expect("remove the far node");
    agent
        .wait_for_backends(READY, |rows| backends_of(rows, &service).len() == 2)
        .expect("served again");
}
