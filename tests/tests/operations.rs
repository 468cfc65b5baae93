//! Operating lb: the CLI and metrics tell the truth about real traffic, `lb
//! trace` predicts real connections, and the agent can die and come back
//! without a connection noticing.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lb_common::MAP_SIDE_PATHS;
use lb_tests::{
    agent::{Agent, backends_of},
    manifests::{self, ServicePort},
    netns::NetNs,
    servers::{self, LineClient, ServerGuard},
    topology::{Layout, Node, Topology, vip6},
};
use serde_json::Value;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const VIP6: Ipv6Addr = vip6(10);
const NODE_PORT: u16 = 31000;
const TIMEOUT: Duration = Duration::from_secs(3);
const METRICS: &str = "127.0.0.1:9641";

/// Service `ops/web` at `vips[0]`, `ops/web6` at `vips[1]` (of another family)
/// if given, each on port 80, and the nodes.
fn manifest(nodes: &[Node], vips: &[IpAddr]) -> String {
    let http = ServicePort {
        name: "http",
        port: 80,
        protocol: "TCP",
        node_port: NODE_PORT,
        target_port: Some(8080),
    };
    let services: Vec<String> = vips
        .iter()
        .zip(["web", "web6"])
        .map(|(vip, name)| manifests::load_balancer_service_yaml(name, "ops", vip, &[http]))
        .collect();
    manifests::service_and_nodes(manifests::documents(&services), nodes)
}

/// The topology, node servers and a running agent.
struct Bed {
    topology: Topology,
    agent: Agent,
    _servers: Vec<ServerGuard>,
    manifests: PathBuf,
    vips: Vec<IpAddr>,
}

impl Bed {
    /// Serves `ops/web` on [`VIP`].
    fn new(tag: &str) -> Self {
        Self::with_vips(tag, &[VIP.into()])
    }

    fn with_vips(tag: &str, vips: &[IpAddr]) -> Self {
        Self::with_agent_args(tag, vips, &[])
    }

    /// Serves `ops/web` on `vips`, the agent run with `args` too.
    fn with_agent_args(tag: &str, vips: &[IpAddr], args: &[&str]) -> Self {
        let topology = Topology::new(Layout::TwoArm, 3).expect("topology");
        let manifests =
            std::env::temp_dir().join(format!("lb-ops-{tag}-{}.yaml", std::process::id()));
        std::fs::write(&manifests, manifest(&topology.nodes, vips)).expect("manifest");
        let servers = topology
            .nodes
            .iter()
            .map(|n| servers::tcp_name_server(&n.ns, NODE_PORT, &n.name).expect("server"))
            .collect();
        let agent =
            Agent::start(&topology.lb, &topology.lb_ifaces(), &manifests, args).expect("agent");
        let bed = Self {
            topology,
            agent,
            _servers: servers,
            manifests,
            vips: vips.to_vec(),
        };
        bed.wait_programmed();
        bed
    }

    /// Waits until the agent serves every VIP on port 80 with all three nodes,
    /// named after the catalog.
    fn wait_programmed(&self) {
        self.agent
            .wait_for_backends(Duration::from_secs(20), |rows| {
                self.vips.iter().all(|vip| {
                    backends_of(rows, &format!("{}/tcp", SocketAddr::new(*vip, 80))).len() == 3
                }) && rows
                    .iter()
                    .all(|r| r["node"].as_str().is_some_and(|n| !n.is_empty()))
            })
            .expect("agent programs the services");
    }

    fn in_client<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.topology.client.enter(f).expect("client namespace")
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.manifests);
    }
}

fn by_node(rows: &[Value], field: &str) -> BTreeMap<String, u64> {
    rows.iter()
        .map(|r| (text(r, "node"), number(r, field)))
        .collect()
}

/// Waits until the backends' packet counts hold still for a few hundred
/// milliseconds (delayed ACKs, closing packets and retransmissions have
/// landed), so that reads made one after another see the same traffic.
fn wait_until_idle(agent: &Agent) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let packets = || {
        let rows = agent.query("backends").expect("lb backends");
        by_node(rows.as_array().expect("rows"), "packets")
    };
    let mut last = packets();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = packets();
        if now == last {
            return;
        }
        assert!(Instant::now() < deadline, "traffic never stopped: {now:?}");
        last = now;
    }
}

#[test]
fn listings_agree_with_the_traffic_sent() {
    let bed = Bed::new("listings");
    const CONNECTIONS: usize = 60;
    let vip = SocketAddrV4::new(VIP, 80);
    // Connections stay open, so every flow is active while we look.
    let (clients, tally) = bed.in_client(move || {
        let mut clients = Vec::new();
        let mut tally: BTreeMap<String, u64> = BTreeMap::new();
        for _ in 0..CONNECTIONS {
            let mut client = LineClient::connect(vip, TIMEOUT).expect("connect");
            client.ask("hello").expect("answer");
            *tally.entry(client.greeting().to_owned()).or_default() += 1;
            clients.push(client);
        }
        (clients, tally)
    });

    // From here on the connections are idle.
    wait_until_idle(&bed.agent);
    let services = bed.agent.query("services").expect("lb services");
    let service = &services[0];
    assert_eq!(service["name"], "ops/web:http");
    assert_eq!(service["backends_healthy"], 3);
    assert_eq!(service["backends_total"], 3);
    assert_eq!(service["active_flows"].as_u64(), Some(CONNECTIONS as u64));

    let flows = bed
        .agent
        .query_with(&["flows", "--service", "ops/web:http", "--limit", "1000"])
        .expect("lb flows");
    let flows = flows.as_array().expect("flow rows").clone();
    assert_eq!(flows.len(), CONNECTIONS, "one flow per connection");
    // A service filter that selects nothing (here: the name without its
    // port) is an error naming it, not an empty listing.
    for args in [
        &["flows", "--service", "ops/web"][..],
        &["backends", "ops/web"],
    ] {
        let refused = bed.agent.query_with(args).expect_err("no such service");
        assert!(
            refused.to_string().contains("\"ops/web\": no service is"),
            "{args:?}: {refused:#}"
        );
    }
    let mut flows_per_node: BTreeMap<String, u64> = BTreeMap::new();
    let mut packets_per_node: BTreeMap<String, u64> = BTreeMap::new();
    for flow in &flows {
        let node = text(flow, "node");
        *flows_per_node.entry(node.clone()).or_default() += 1;
        *packets_per_node.entry(node).or_default() += number(flow, "packets");
    }
    assert_eq!(flows_per_node, tally, "flows per node match who answered");

    let backends = bed.agent.query("backends").expect("lb backends");
    let backends = backends.as_array().expect("rows");
    assert_eq!(by_node(backends, "active_flows"), tally);
    // Every forwarded packet is counted on its backend and on its flow.
    assert_eq!(by_node(backends, "packets"), packets_per_node);
    let service_packets = number(&services[0], "packets");
    assert_eq!(service_packets, packets_per_node.values().sum::<u64>());

    let one_node = tally.keys().next().expect("a node").clone();
    let filtered = bed
        .agent
        .query_with(&["flows", "--backend", &one_node, "--limit", "1000"])
        .expect("lb flows --backend");
    assert_eq!(
        filtered.as_array().map(Vec::len),
        Some(tally[&one_node] as usize)
    );
    drop(clients);
}

#[test]
fn trace_predicts_where_real_connections_land() {
    let bed = Bed::new("trace");
    let vip = SocketAddrV4::new(VIP, 80);
    // 200 distinct pseudo-random client ports.
    let mut ports = Vec::new();
    let mut x: u32 = 0x2545_f491;
    while ports.len() < 200 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let port = 20000 + (x % 30000) as u16;
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    let mut predicted = Vec::new();
    for port in &ports {
        let client = format!("10.0.0.2:{port}");
        let report = bed
            .agent
            .query_with(&["trace", &client, &vip.to_string()])
            .expect("lb trace");
        assert!(
            report["pinned_backend"].is_null(),
            "a new flow is not pinned yet"
        );
        predicted.push(report["new_flow_node"].as_str().expect("node").to_owned());
    }
    let ports_copy = ports.clone();
    let landed: Vec<String> = bed.in_client(move || {
        ports_copy
            .iter()
            .map(|port| {
                let mut client = LineClient::connect_from(*port, vip, TIMEOUT).expect("connect");
                let node = client.greeting().to_owned();
                client.close();
                node
            })
            .collect()
    });
    for ((port, predicted), landed) in ports.iter().zip(&predicted).zip(&landed) {
        assert_eq!(predicted, landed, "client port {port}");
    }
    // Now the flow table pins them: trace says so.
    let report = bed
        .agent
        .query_with(&["trace", &format!("10.0.0.2:{}", ports[0]), &vip.to_string()])
        .expect("lb trace");
    assert!(!report["pinned_backend"].is_null(), "{report}");
}

/// A plain HTTP GET of the agent's metrics server from inside `ns`.
fn http_get(ns: &NetNs, path: &'static str) -> (u16, String) {
    lb_tests::http::get(ns, METRICS.parse().expect("addr"), path).expect("GET from the agent")
}

type Labels = BTreeMap<String, String>;

/// The samples of the metric `name`: each one's labels and value.
fn samples(metrics: &str, name: &str) -> Vec<(Labels, u64)> {
    metrics
        .lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let labels = match series.strip_prefix(name)? {
                "" => "",
                braced => braced.strip_prefix('{')?.strip_suffix('}')?,
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, quoted) = pair.split_once('=').expect("label=\"value\"");
                    let value = quoted.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                    (key.to_owned(), value.expect("a quoted value").to_owned())
                })
                .collect();
            Some((labels, value.parse().expect("an integer sample")))
        })
        .collect()
}

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.clone()))
        .collect()
}

fn text(row: &Value, field: &str) -> String {
    row[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {row}"))
        .to_owned()
}

fn number(row: &Value, field: &str) -> u64 {
    row[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {row}"))
}

#[test]
fn metrics_match_the_cli() {
    let bed = Bed::with_vips("metrics", &[VIP.into(), VIP6.into()]);
    let vips = [
        SocketAddr::new(VIP.into(), 80),
        SocketAddr::new(VIP6.into(), 80),
    ];
    bed.in_client(move || {
        for vip in vips {
            for _ in 0..30 {
                servers::tcp_ask_name(vip, TIMEOUT).expect("connect");
            }
        }
    });
    // The closing packets arrive before the reads.
    wait_until_idle(&bed.agent);
    let services = bed.agent.query("services").expect("lb services");
    let backends = bed.agent.query("backends").expect("lb backends");
    let (status, metrics) = http_get(&bed.topology.lb, "/metrics");
    assert_eq!(status, 200);

    // The labels each series must carry, from what the test set up.
    let service_labels = |name: &str, vip: IpAddr| {
        vec![
            ("service", name.to_owned()),
            ("vip", vip.to_string()),
            ("port", "80".to_owned()),
            ("protocol", "tcp".to_owned()),
        ]
    };

    let services = services.as_array().expect("service rows");
    let mut want = Vec::new();
    for (vip, name) in [
        (IpAddr::from(VIP), "ops/web:http"),
        (VIP6.into(), "ops/web6:http"),
    ] {
        let row = services
            .iter()
            .find(|row| row["vip"] == vip.to_string())
            .unwrap_or_else(|| panic!("no service at {vip} in {services:?}"));
        assert_eq!(text(row, "name"), name);
        want.push((labels(&service_labels(name, vip)), number(row, "packets")));
    }
    assert_eq!(services.len(), want.len(), "{services:?}");
    let mut got = samples(&metrics, "lb_service_packets_total");
    got.sort();
    want.sort();
    assert_eq!(got, want, "service series in\n{metrics}");

    let backends = backends.as_array().expect("backend rows");
    assert_eq!(backends.len(), 6, "3 nodes behind each VIP: {backends:?}");
    let mut want = Vec::new();
    for row in backends {
        let address: IpAddr = text(row, "address").parse().expect("an address");
        // A node's address of the VIP's family is its backend.
        let vip = match address {
            IpAddr::V4(_) => IpAddr::from(VIP),
            IpAddr::V6(_) => VIP6.into(),
        };
        assert_eq!(
            text(row, "service"),
            format!("{}/tcp", SocketAddr::new(vip, 80))
        );
        let mut pairs = service_labels(&text(row, "service_name"), vip);
        pairs.extend([
            ("backend", text(row, "node")),
            ("address", SocketAddr::new(address, NODE_PORT).to_string()),
        ]);
        assert!(number(row, "packets") > 0, "no traffic reached {row}");
        want.push((labels(&pairs), number(row, "packets")));
    }
    let mut got = samples(&metrics, "lb_backend_packets_total");
    got.sort();
    want.sort();
    assert_eq!(got, want, "backend series in\n{metrics}");

    let stats = bed
        .agent
        .query_with(&["stats", "--interval", "0.1"])
        .expect("lb stats");
    assert_eq!(
        samples(&metrics, "lb_new_flows_total"),
        [(Labels::new(), number(&stats["totals"], "new_flows"))]
    );
    // `--watch --json` streams one sample per interval until stopped.
    let mut watch = std::process::Command::new(lb_tests::agent::lb_binary().expect("lb"))
        .args(["stats", "--watch", "--json", "--interval", "0.2", "--bpffs"])
        .arg(bed.agent.bpffs())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("lb stats --watch");
    std::thread::sleep(Duration::from_millis(1100));
    watch.kill().expect("stop watching");
    let output = watch.wait_with_output().expect("watch output");
    let samples: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert!(samples.len() >= 3, "{} samples in 1.1 s", samples.len());
    assert_eq!(http_get(&bed.topology.lb, "/healthz").0, 200);
    assert_eq!(http_get(&bed.topology.lb, "/readyz").0, 200);
}

/// Whether `iface` has an XDP program; the interface must exist, so that
/// "not attached" is never said of one that is gone.
fn xdp_attached(ns: &NetNs, iface: &str) -> bool {
    ns.ip(&format!("link show dev {iface}"))
        .expect("ip link show")
        .contains("xdp")
}

#[test]
fn connections_survive_an_agent_killed_and_restarted() {
    // Pings to the VIP are answered by a side path of the program
    // (`lb_icmp4`), which must outlive the agent as the program does.
    let mut bed = Bed::with_agent_args("restart", &[VIP.into()], &["--answer-ping"]);
    let vip = SocketAddrV4::new(VIP, 80);
    let long_lived = bed.in_client(move || LineClient::connect(vip, TIMEOUT).expect("connect"));
    let node = long_lived.greeting().to_owned();

    // A stream of new connections for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let (made, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stream = {
        let (stop, made, failed) = (stop.clone(), made.clone(), failed.clone());
        bed.topology
            .client
            .spawn_thread(move || {
                // A bound only should the test fail before it says stop.
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match servers::tcp_ask_name(vip, TIMEOUT) {
                        Ok(_) => made.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
            .expect("client thread")
    };
    std::thread::sleep(Duration::from_millis(500));
    let flows_before = bed
        .agent
        .query_with(&["flows", "--limit", "100000"])
        .expect("flows");
    let flows_before = flows_before.as_array().expect("flow rows").len();
    assert!(
        flows_before > 0,
        "half a second of new connections left no flow to carry over"
    );

    bed.topology
        .client
        .ping(VIP, TIMEOUT)
        .expect("lb answers a ping to the VIP");
    bed.agent.kill().expect("SIGKILL");
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        xdp_attached(&bed.topology.lb, "lbc0"),
        "the program stays attached"
    );
    bed.topology
        .client
        .ping(VIP, TIMEOUT)
        .expect("with the agent gone, lb still answers a ping to the VIP");
    // State pinned by an agent from before the side paths has no program
    // array: the next agent makes one.
    let side_paths = lb::pins::PinDir::new(bed.agent.bpffs()).map(MAP_SIDE_PATHS);
    std::fs::remove_file(&side_paths).expect("unpinning the side paths");
    bed.agent.restart(&bed.topology.lb).expect("restart");
    let made_before_restart = made.load(Ordering::Relaxed);
    bed.wait_programmed();
    std::thread::sleep(Duration::from_millis(500));
    // Until the new agent's program is attached, the old one's side paths
    // are gone with their pin.
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = bed.topology.client.ping(VIP, Duration::from_secs(1)) {
        assert!(
            Instant::now() < deadline,
            "the restarted agent's side paths answer no ping to the VIP: {e:#}"
        );
    }
    assert!(side_paths.exists(), "the agent pins its side paths");

    let mut long_lived = long_lived;
    let answer = bed
        .in_client(move || {
            let answer = long_lived.ask("after the restart");
            (long_lived, answer)
        })
        .1
        .expect("the long-lived connection survives");
    assert_eq!(answer, format!("{node} after the restart"));
    stop.store(true, Ordering::Relaxed);
    stream.join().expect("client thread");
    let (made, failed) = (made.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(made > 20, "only {made} connections were made");
    assert!(
        made > made_before_restart,
        "no connection was made after the restart ({made} in all)"
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {} connections failed",
        made + failed
    );
    let flows_after = bed
        .agent
        .query_with(&["flows", "--limit", "100000"])
        .expect("flows");
    let flows_after = flows_after.as_array().expect("flow rows").len();
    assert!(
        flows_after >= flows_before,
        "the flow table lost entries: {flows_before} before, {flows_after} after"
    );

    // `lb down` detaches and removes every pin once the agent is gone.
    let bpffs = bed.agent.bpffs().to_owned();
    bed.agent.kill().expect("stop");
    assert!(xdp_attached(&bed.topology.lb, "lbc0"));
    let output = std::process::Command::new(lb_tests::agent::lb_binary().expect("lb"))
        .args(["down", "--bpffs"])
        .arg(&bpffs)
        .output()
        .expect("lb down");
    assert!(output.status.success(), "{output:?}");
    assert!(
        !xdp_attached(&bed.topology.lb, "lbc0"),
        "still attached after lb down"
    );
    assert!(
        !Path::new(&bpffs).exists(),
        "pins left at {}",
        bpffs.display()
    );
}
