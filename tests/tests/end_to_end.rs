//! Real TCP and UDP through the VIP: a client namespace, the agent attached in the
//! load balancer namespace, and node namespaces running real servers.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_tests::{
    agent::{Agent, backends_of},
    manifests::{self, ServicePort},
    servers::{self, LineClient, ServerGuard},
    topology::{LB_ONE_ARM_IFACE, Layout, Node, Topology},
};
use serde_json::Value;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const TCP_NODE_PORT: u16 = 31000;
const UDP_NODE_PORT: u16 = 31053;
const TIMEOUT: Duration = Duration::from_secs(3);
const READY: Duration = Duration::from_secs(20);

/// A Service with a TCP and a UDP port, and the given Ready nodes, as
/// `kubectl get -o yaml` shows them.
fn manifest(nodes: &[Node]) -> String {
    let ports = [
        ServicePort {
            name: "http",
            port: 80,
            protocol: "TCP",
            node_port: TCP_NODE_PORT,
            target_port: Some(8080),
        },
        ServicePort {
            name: "echo",
            port: 53,
            protocol: "UDP",
            node_port: UDP_NODE_PORT,
            target_port: Some(5353),
        },
    ];
    let service = manifests::load_balancer_service_yaml("web", "demo", VIP, &ports);
    manifests::service_and_nodes(service, nodes)
}

struct ManifestDir(PathBuf);

impl ManifestDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lb-e2e-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("manifest dir");
        Self(dir)
    }

    fn write(&self, topology: &Topology) {
        // Write then rename, so the agent never reads half a file.
        let tmp = self.0.join(".cluster.yaml.tmp");
        std::fs::write(&tmp, manifest(&topology.nodes)).expect("write manifest");
        std::fs::rename(&tmp, self.0.join("cluster.yaml")).expect("rename manifest");
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_servers(topology: &Topology) -> Vec<ServerGuard> {
    topology
        .nodes
        .iter()
        .flat_map(|node| {
            [
                servers::tcp_name_server(&node.ns, TCP_NODE_PORT, &node.name).expect("tcp server"),
                servers::udp_echo_server(&node.ns, UDP_NODE_PORT, &node.name).expect("udp server"),
            ]
        })
        .collect()
}

fn tcp_service() -> String {
    format!("{VIP}:80/tcp")
}

fn wait_for_nodes(agent: &Agent, count: usize) -> Vec<Value> {
    agent
        .wait_for_backends(READY, |rows| {
            backends_of(rows, &tcp_service()).len() == count
                && backends_of(rows, &format!("{VIP}:53/udp")).len() == count
        })
        .expect("agent programs the backends")
}

/// The manifests of `topology`'s nodes (in a directory named by `tag`), the
/// nodes' servers and the agent, once it serves every node, with its
/// backend rows then.
fn serving(topology: &Topology, tag: &str) -> (ManifestDir, Vec<ServerGuard>, Agent, Vec<Value>) {
    let manifests = ManifestDir::new(tag);
    manifests.write(topology);
    let guards = start_servers(topology);
    let agent = Agent::start(&topology.lb, &topology.lb_ifaces(), manifests.path(), &[])
        .expect("agent starts");
    let rows = wait_for_nodes(&agent, topology.nodes.len());
    (manifests, guards, agent, rows)
}

/// The echo of `datagram` from the VIP's UDP port, sent by the client with
/// Don't Fragment clear.
fn ask_fragmentable(topology: &Topology, datagram: &str) -> anyhow::Result<String> {
    let asked = datagram.to_owned();
    topology
        .client
        .enter(move || {
            servers::udp_ask_fragmentable(SocketAddrV4::new(VIP, 53), asked.as_bytes(), TIMEOUT)
        })
        .expect("client namespace")
}

/// Opens `count` TCP connections from the client to the VIP; returns how many
/// each node answered. Every connection must succeed.
fn connect_many(topology: &Topology, count: usize) -> BTreeMap<String, usize> {
    servers::connect_many(&topology.client, SocketAddrV4::new(VIP, 80), count, TIMEOUT)
}

/// Asserts that the program itself sent at least `packets` requests to the
/// nodes and as many replies to the client, with the action `layout` calls
/// for. Working connections alone do not show that: the kernel forwards the
/// packets the program rewrites and then passes to it.
fn assert_xdp_carried(agent: &Agent, layout: Layout, packets: u64) {
    let (forward, reply) = match layout {
        Layout::TwoArm => ("forward_redirect", "reply_redirect"),
        Layout::OneArm => ("forward_tx", "reply_tx"),
    };
    for name in [forward, reply] {
        let sent = agent.counter(name).expect("lb stats");
        assert!(
            sent >= packets,
            "{layout:?}: {name} is {sent}, expected at least {packets}"
        );
    }
}

fn node_of_address(topology: &Topology, address: &str) -> String {
    topology
        .nodes
        .iter()
        .find(|n| n.ip.to_string() == address)
        .map(|n| n.name.clone())
        .unwrap_or_else(|| panic!("no node has address {address}"))
}

#[test]
fn two_arm_spreads_connections_by_maglev_and_keeps_flows_across_node_changes() {
    let mut topology = Topology::new(Layout::TwoArm, 3).expect("topology");
    let (manifests, mut guards, agent, rows) = serving(&topology, "two-arm");

    // A long-lived connection, opened before anything changes.
    let vip = SocketAddrV4::new(VIP, 80);
    let (long_lived, first_node) = topology
        .client
        .enter(move || {
            let client = LineClient::connect(vip, TIMEOUT).expect("long-lived connect");
            let greeting = client.greeting().to_owned();
            (client, greeting)
        })
        .expect("client namespace");

    const CONNECTIONS: usize = 1000;
    let tally = connect_many(&topology, CONNECTIONS);
    assert_eq!(tally.len(), 3, "every node answers: {tally:?}");
    assert_xdp_carried(&agent, Layout::TwoArm, CONNECTIONS as u64);
    for row in backends_of(&rows, &tcp_service()) {
        let node = node_of_address(&topology, row["address"].as_str().expect("address"));
        let share = row["share"].as_f64().expect("share");
        let observed = *tally.get(&node).unwrap_or(&0) as f64 / CONNECTIONS as f64;
        println!("{node}: Maglev share {share:.3}, observed {observed:.3}");
        // 1000 draws of a ~1/3 share: a standard deviation is 1.5 points.
        assert!(
            (observed - share).abs() < 0.06,
            "{node} got {observed:.3} of connections, its Maglev share is {share:.3}"
        );
    }

    // UDP through the same VIP.
    let udp_reply = topology
        .client
        .enter(|| servers::udp_ask(SocketAddrV4::new(VIP, 53), b"ping", TIMEOUT))
        .expect("client namespace")
        .expect("UDP answer");
    assert!(udp_reply.ends_with("ping"), "UDP reply {udp_reply:?}");

    // A fourth node joins: the agent notices the manifest change.
    topology.add_node().expect("fourth node");
    let node4 = topology.nodes.last().expect("node 4");
    guards.push(servers::tcp_name_server(&node4.ns, TCP_NODE_PORT, &node4.name).expect("server"));
    guards.push(servers::udp_echo_server(&node4.ns, UDP_NODE_PORT, &node4.name).expect("server"));
    manifests.write(&topology);
    wait_for_nodes(&agent, 4);

    // The long-lived connection still works, on the same node.
    let (mut long_lived, answer) = topology
        .client
        .enter(move || {
            let mut client = long_lived;
            let answer = client
                .ask("still there?")
                .expect("long-lived connection survives");
            (client, answer)
        })
        .expect("client namespace");
    assert_eq!(
        answer,
        format!("{first_node} still there?"),
        "the long-lived connection moved"
    );
    let tally = connect_many(&topology, 300);
    assert!(
        tally.get("node-4").copied().unwrap_or(0) > 20,
        "new connections do not reach the new node: {tally:?}"
    );
    long_lived.close();
    drop(agent);
    drop(guards);
}

#[test]
fn one_arm_serves_tcp_and_udp_through_one_interface() {
    let topology = Topology::new(Layout::OneArm, 3).expect("topology");
    let (_manifests, guards, agent, _) = serving(&topology, "one-arm");
    let tally = connect_many(&topology, 200);
    assert_eq!(tally.len(), 3, "every node serves: {tally:?}");
    let udp_reply = topology
        .client
        .enter(|| servers::udp_ask(SocketAddrV4::new(VIP, 53), b"hello", TIMEOUT))
        .expect("client namespace")
        .expect("UDP answer");
    assert!(udp_reply.starts_with("node-"), "UDP reply {udp_reply:?}");
    assert_xdp_carried(&agent, Layout::OneArm, 200);
    drop(agent);
    drop(guards);
}

/// A UDP datagram too big for the client's link, which the client's kernel
/// fragments, reaches a node through the VIP, and the node's answer, as big
/// and fragmented by the node, comes back from the VIP: lb sends each
/// fragment where its datagram's first went, translated, and none passes
/// to the kernel for want of its first (which could route none of them).
#[test]
fn fragmented_datagrams_go_through_the_vip_both_ways() {
    let topology = Topology::new(Layout::TwoArm, 2).expect("topology");
    let (_manifests, guards, agent, _) = serving(&topology, "fragments");
    for i in 0..4 {
        // Three fragments each way on 1,500-byte links.
        let datagram = format!("{i}").repeat(4000);
        let echo = ask_fragmentable(&topology, &datagram)
            .expect("a fragmented datagram and its fragmented answer get through");
        assert!(
            echo.starts_with("node-") && echo.ends_with(&datagram),
            "answer of {} bytes: {}",
            echo.len(),
            &echo[..echo.len().min(40)]
        );
    }
    assert_eq!(agent.counter("pass_fragment").expect("lb stats"), 0);
    drop(agent);
    drop(guards);
}

/// Path MTU discovery through the VIP: the link from lb to the nodes is
/// narrower than the client's, so the client's full-sized segments are too
/// big for it. lb answers them with "fragmentation needed" from the VIP,
/// quoting them as the client sent them; the client lowers its path MTU and
/// sends again, and a request of many segments gets through. (The kernel's
/// own answer would quote the packet translated, which the client cannot
/// match, and the connection would stall.) A UDP datagram that may be
/// fragmented goes to the kernel translated, to be fragmented.
#[test]
fn path_mtu_discovery_works_through_the_vip() {
    // One-arm: the answers go back out of the interface the packets came
    // in on (XDP_TX), and only there does the far end of the veth wake for
    // them (see `Topology::wire`).
    let topology = Topology::new(Layout::OneArm, 1).expect("topology");
    // The route's MTU, not the interface's: an interface of 1,280 bytes
    // would refuse the nodes' full-sized replies too.
    topology
        .lb
        .ip(&format!(
            "route add {}/32 dev {LB_ONE_ARM_IFACE} mtu lock 1280",
            topology.nodes[0].ip
        ))
        .expect("a narrower path to the nodes");
    let (_manifests, guards, agent, _) = serving(&topology, "pmtu");
    // First (the client then learns the path's MTU to the VIP, and would
    // fragment the datagram itself): a datagram the client lets be
    // fragmented goes to the kernel translated, which fragments it on the
    // narrower link.
    let datagram = "y".repeat(1400);
    let echo = ask_fragmentable(&topology, &datagram)
        .expect("a fragmentable datagram too big for the link gets through");
    assert_eq!(echo, format!("node-1 {datagram}"));
    let passed = agent.counter("pass_to_fragment").expect("lb stats");
    assert!(passed >= 1, "pass_to_fragment is {passed}");
    let line = "x".repeat(20_000);
    let request = line.clone();
    let vip = SocketAddrV4::new(VIP, 80);
    let answer = topology
        .client
        .enter(move || LineClient::connect(vip, TIMEOUT)?.ask(&request))
        .expect("client namespace")
        .expect("a request of many full-sized segments gets through");
    assert_eq!(answer, format!("node-1 {line}"));
    let answered = agent.counter("too_big_answered").expect("lb stats");
    assert!(answered >= 1, "too_big_answered is {answered}");
    drop(agent);
    drop(guards);
}
