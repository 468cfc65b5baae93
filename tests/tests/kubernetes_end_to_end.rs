//! Real connections through a VIP the agent learnt from the (fake) Kubernetes
//! API: a client namespace, the agent and the API server in the load balancer
//! namespace, node namespaces running servers on the NodePorts.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::Result;
use k8s_openapi::api::core::v1::Service;
use lb_tests::{
    fake_apiserver::{
        Options,
        fixtures::{Pod, endpoint_slice, load_balancer, local, node},
    },
    kube_agent::KubeAgent,
    servers::{self, LineClient, ServerGuard},
    topology::{self, Layout, Node, Topology, VIP_RANGE},
};

const NODE_PORT: u16 = 31000;
const HEALTH_PORT: u16 = 32000;
const TIMEOUT: Duration = Duration::from_secs(3);
const READY: Duration = Duration::from_secs(20);
const NS: &str = "demo";

fn start_agent(topology: &Topology, flags: &[&str]) -> Result<KubeAgent> {
    let mut extra = vec!["--vip-pool", VIP_RANGE];
    extra.extend(flags);
    let bed = KubeAgent::start(
        &topology.lb,
        &topology.lb_ifaces(),
        Options::default(),
        &extra,
    )?;
    for member in &topology.nodes {
        bed.server.apply(&node(&member.name, member.ip))?;
    }
    Ok(bed)
}

/// Waits until the VIP's port 80 has `count` backends that get new flows.
fn wait_for_live_backends(bed: &KubeAgent, vip: Ipv4Addr, count: usize) -> Result<()> {
    bed.wait_for(&format!("{count} live backends"), READY, || {
        let backends = bed.backends(vip, 80)?;
        let live = backends.values().filter(|(_, share)| *share > 0.0).count();
        (live == count).then_some(())
    })
}

/// Opens `count` connections to the VIP from the client; how many each node
/// answered. Every one must succeed.
fn connect_many(topology: &Topology, vip: Ipv4Addr, count: usize) -> BTreeMap<String, usize> {
    servers::connect_many(&topology.client, SocketAddrV4::new(vip, 80), count, TIMEOUT)
}

/// A connection that stays open, and the node that answered it.
fn long_lived(topology: &Topology, vip: Ipv4Addr) -> (LineClient, String) {
    let vip = SocketAddrV4::new(vip, 80);
    topology
        .client
        .enter(move || {
            let client = LineClient::connect(vip, TIMEOUT).expect("long-lived connect");
            let node = client.greeting().to_owned();
            (client, node)
        })
        .expect("client namespace")
}

/// Asks over the long-lived connection; the node that answers.
fn ask(topology: &Topology, client: LineClient) -> (LineClient, String) {
    topology
        .client
        .enter(move || {
            let mut client = client;
            let answer = client.ask("still there?").expect("the connection survives");
            (client, answer)
        })
        .expect("client namespace")
}

#[test]
fn service_from_the_api_server_serves_and_keeps_connections_when_a_node_joins() -> Result<()> {
    let mut topology = Topology::new(Layout::TwoArm, 3)?;
    let mut guards: Vec<ServerGuard> = topology
        .nodes
        .iter()
        .map(|n| servers::tcp_name_server(&n.ns, NODE_PORT, &n.name))
        .collect::<Result<_>>()?;
    let bed = start_agent(&topology, &[])?;
    bed.server
        .apply(&load_balancer(NS, "web", &[(80, NODE_PORT.into())]))?;
    let vip = bed.wait_for_vip(NS, "web", READY)?;
    assert_eq!(vip, Ipv4Addr::new(198, 51, 100, 1));
    wait_for_live_backends(&bed, vip, 3)?;

    let (client, first) = long_lived(&topology, vip);
    let tally = connect_many(&topology, vip, 150);
    assert_eq!(tally.len(), 3, "every node serves: {tally:?}");

    // A fourth node joins the cluster.
    let joined = topology.add_node()?;
    guards.push(servers::tcp_name_server(
        &joined.ns,
        NODE_PORT,
        &joined.name,
    )?);
    bed.server.apply(&node(&joined.name, joined.ip))?;
    wait_for_live_backends(&bed, vip, 4)?;

    let (mut client, answer) = ask(&topology, client);
    assert_eq!(
        answer,
        format!("{first} still there?"),
        "the connection moved"
    );
    let tally = connect_many(&topology, vip, 300);
    assert!(
        tally.get("node-4").copied().unwrap_or(0) > 20,
        "new connections do not reach the new node: {tally:?}"
    );
    client.close();
    drop(bed);
    drop(guards);
    Ok(())
}

#[test]
fn failing_health_checks_drain_a_node_then_remove_it() -> Result<()> {
    let topology = Topology::new(Layout::TwoArm, 3)?;
    let mut health: BTreeMap<String, ServerGuard> = BTreeMap::new();
    let mut guards = Vec::new();
    for member in &topology.nodes {
        guards.push(servers::tcp_name_server(
            &member.ns,
            NODE_PORT,
            &member.name,
        )?);
        // kube-proxy's healthCheckNodePort: 200 while the node has an endpoint.
        let healthz = servers::http_name_server(&member.ns, HEALTH_PORT, &member.name)?;
        health.insert(member.name.clone(), healthz);
    }
    let checks = [
        "--health-interval",
        "200ms",
        "--health-timeout",
        "200ms",
        "--health-fall",
        "2",
        "--health-dead",
        "15",
    ];
    let bed = start_agent(&topology, &checks)?;
    let mut web = local(load_balancer(NS, "web", &[(80, NODE_PORT.into())]));
    web.spec.as_mut().unwrap().health_check_node_port = Some(HEALTH_PORT.into());
    bed.server.apply(&web)?;
    let pods: Vec<(&str, Pod)> = topology
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), Pod::Ready))
        .collect();
    bed.server.apply(&endpoint_slice(NS, "web", &pods))?;
    let vip = bed.wait_for_vip(NS, "web", READY)?;
    wait_for_live_backends(&bed, vip, 3)?;

    let (client, failing) = long_lived(&topology, vip);
    // Its node's health check starts failing: no new flows, but the
    // established one stays.
    drop(health.remove(&failing));
    bed.wait_for(&format!("{failing} draining"), READY, || {
        let backends = bed.backends(vip, 80)?;
        (backends.get(&failing) == Some(&(0, 0.0))).then_some(())
    })?;
    let (mut client, answer) = ask(&topology, client);
    assert_eq!(answer, format!("{failing} still there?"));
    let tally = connect_many(&topology, vip, 60);
    assert!(
        !tally.contains_key(&failing),
        "{failing} got new flows: {tally:?}"
    );

    // Still failing: declared dead and removed.
    bed.wait_for(&format!("{failing} removed"), READY, || {
        (!bed.backends(vip, 80)?.contains_key(&failing)).then_some(())
    })?;
    assert_eq!(bed.backends(vip, 80).map(|b| b.len()), Some(2));
    client.close();
    drop(bed);
    drop(guards);
    Ok(())
}

/// With direct server return a Service needs no NodePorts
/// (`allocateLoadBalancerNodePorts: false`): each node's kube-proxy takes the
/// packet on the VIP itself and answers the client directly. The nodes are
/// then checked on kube-proxy's own health port: one whose kube-proxy does
/// not answer gets no new connection until it does.
#[test]
fn direct_server_return_serves_a_service_without_node_ports() -> Result<()> {
    let mut web = load_balancer(NS, "web", &[(80, 0)]);
    web.spec.as_mut().unwrap().allocate_load_balancer_node_ports = Some(false);
    only_nodes_whose_kube_proxy_answers_serve(&["--forwarding", "dsr"], web, 8080)
}

/// With `--cluster-health-check kube-proxy` the nodes of a Service with
/// NodePorts (policy Cluster) are checked on kube-proxy's own health port,
/// one check per node, not on each NodePort: one whose kube-proxy does not
/// answer gets no new connection, though its NodePort would take them.
#[test]
fn nodes_of_policy_cluster_are_checked_on_kube_proxy_when_asked() -> Result<()> {
    let web = load_balancer(NS, "web", &[(80, 30080)]);
    only_nodes_whose_kube_proxy_answers_serve(&["--cluster-health-check", "kube-proxy"], web, 30080)
}

/// The agent started with `flags` serves `web` (port 80, its pods on
/// `pod_port` of every node) while kube-proxy's health port answers on
/// node-1 and node-2 only: only they get new connections; once node-3's
/// answers too, every node serves.
fn only_nodes_whose_kube_proxy_answers_serve(
    flags: &[&str],
    web: Service,
    pod_port: u16,
) -> Result<()> {
    const KUBE_PROXY_HEALTHZ: u16 = 10256;
    let topology = Topology::new(Layout::TwoArm, 3)?;
    let pods: Vec<ServerGuard> = topology
        .nodes
        .iter()
        .map(|n| servers::tcp_name_server(&n.ns, pod_port, &n.name))
        .collect::<Result<_>>()?;
    let healthz = |n: &Node| servers::http_name_server(&n.ns, KUBE_PROXY_HEALTHZ, &n.name);
    let mut kube_proxies: Vec<ServerGuard> = topology.nodes[..2]
        .iter()
        .map(healthz)
        .collect::<Result<_>>()?;
    let health = [
        "--health-interval",
        "200ms",
        "--health-timeout",
        "200ms",
        "--health-fall",
        "1",
        "--health-dead",
        "100",
    ];
    let flags: Vec<&str> = health.iter().chain(flags).copied().collect();
    let bed = start_agent(&topology, &flags)?;
    bed.server.apply(&web)?;
    let vip = bed.wait_for_vip(NS, "web", READY)?;
    topology::expose(&topology.nodes, vip, 80, pod_port)?;
    wait_for_live_backends(&bed, vip, 2)?;
    let tally = connect_many(&topology, vip, 100);
    assert_eq!(
        tally.keys().collect::<Vec<_>>(),
        ["node-1", "node-2"],
        "{tally:?}"
    );

    kube_proxies.push(healthz(&topology.nodes[2])?);
    wait_for_live_backends(&bed, vip, 3)?;
    let tally = connect_many(&topology, vip, 150);
    assert_eq!(tally.len(), 3, "every node serves: {tally:?}");
    drop(bed);
    drop((pods, kube_proxies));
    Ok(())
}
