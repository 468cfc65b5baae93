//! The load balancers compared end to end, each on its own copy of the same
//! topology (client -> lb namespace -> three node namespaces) with the same
//! servers and sinks on the nodes. Only what runs in the lb namespace differs.
//!
//! Every contestant gets a fresh topology so that nothing one leaves behind
//! (conntrack entries, routes, addresses) can touch another; all of them exist
//! at once so that their runs can be interleaved. Everything lives inside the
//! namespaces and goes away with them.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use lb_tests::{
    agent::Agent,
    manifests::{self, ServicePort},
    netns::ChildGuard,
    servers::{self, ServerGuard},
    topology::{self, Layout, Topology},
};

use crate::{flood, httpd};

/// The VIP every contestant serves.
pub const VIP: Ipv4Addr = topology::vip(10);
pub const HTTP_PORT: u16 = 80;
pub const NODE_HTTP_PORT: u16 = 30080;
pub const UDP_PORT: u16 = 9000;
pub const NODE_UDP_PORT: u16 = 30090;
const NODES: usize = 3;
/// HTTP worker threads per node.
pub const HTTP_WORKERS: usize = 2;
const READY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Lb,
    Iptables,
    Haproxy,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Lb, Kind::Iptables, Kind::Haproxy];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Lb => "lb (XDP)",
            Kind::Iptables => "iptables DNAT",
            Kind::Haproxy => "HAProxy (TCP mode)",
        }
    }

    /// HAProxy proxies connections; it does not forward UDP packets.
    pub fn forwards_udp(self) -> bool {
        self != Kind::Haproxy
    }

    /// The programs it needs besides `ip`.
    pub fn tools(self) -> &'static [&'static str] {
        match self {
            Kind::Lb => &[],
            Kind::Iptables => &["iptables"],
            Kind::Haproxy => &["haproxy"],
        }
    }
}

/// What runs in the lb namespace.
enum Engine {
    Lb(Agent),
    Iptables,
    Haproxy(ChildGuard),
}

/// A contestant, set up and verified. Fields drop in order: the load balancer
/// first, then its files, the servers, and the namespaces last.
pub struct Contestant {
    pub kind: Kind,
    engine: Engine,
    _scratch: Scratch,
    _servers: Vec<lb_tests::servers::ServerGuard>,
    _health: Vec<ServerGuard>,
    pub topology: Topology,
}

impl Contestant {
    pub fn start(kind: Kind) -> Result<Contestant> {
        let topology = Topology::new(Layout::TwoArm, NODES).context("building the topology")?;
        let mut servers = Vec::new();
        let mut health = Vec::new();
        for node in &topology.nodes {
            servers.push(httpd::serve(
                &node.ns,
                NODE_HTTP_PORT,
                &node.name,
                HTTP_WORKERS,
            )?);
            // A TCP listener on the UDP NodePort, for health checks that
            // probe NodePorts with a TCP connect; the flood itself never gets
            // past the sink.
            health.push(servers::tcp_name_server(
                &node.ns,
                NODE_UDP_PORT,
                &node.name,
            )?);
            flood::install_sink(&node.ns, topology::HOST_IFACE, NODE_UDP_PORT)?;
        }
        // GRO (and with it NAPI) on the lb's client-side veth for every
        // contestant, as a NIC has: lb's XDP program switches NAPI on there
        // anyway, so this way all of them receive through the same path.
        topology.lb.set_offload(
            topology::LB_CLIENT_IFACE,
            lb_tests::netns::Offload::Gro,
            true,
        )?;
        // Every connection wrk opens is new; with the default 28,000 ephemeral
        // ports they come back within seconds while the nodes still hold the
        // previous connection of the same 4-tuple in TIME_WAIT. More ports
        // make that rarer (HAProxy's own connections leave from the lb side).
        for ns in [&topology.client, &topology.lb] {
            ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        }
        let scratch = Scratch::new(kind)?;
        let engine = match kind {
            Kind::Lb => start_lb(&topology, &scratch)?,
            Kind::Iptables => start_iptables(&topology)?,
            Kind::Haproxy => start_haproxy(&topology, &scratch)?,
        };
        let contestant = Contestant {
            kind,
            engine,
            _scratch: scratch,
            _servers: servers,
            _health: health,
            topology,
        };
        contestant.check_http().with_context(|| {
            format!(
                "{} does not serve HTTP on the VIP; its log:\n{}",
                kind.name(),
                contestant.log()
            )
        })?;
        Ok(contestant)
    }

    /// Asks the VIP a few times until every node has answered once.
    fn check_http(&self) -> Result<()> {
        let vip = SocketAddrV4::new(VIP, HTTP_PORT);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen: Vec<String> = Vec::new();
        for _ in 0..200 {
            if seen.len() == self.topology.nodes.len() {
                return Ok(());
            }
            let answer = self
                .topology
                .client
                .enter(move || servers::http_get(vip, Duration::from_secs(2)))?;
            match answer {
                Ok(body) => {
                    let name = body.trim().to_owned();
                    if !seen.contains(&name) {
                        seen.push(name);
                    }
                }
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        bail!("only {seen:?} answered on {vip}")
    }

    /// lb's global counters that are not zero, read from the agent's pins:
    /// proof of which path the traffic took. `None` for the others.
    pub fn lb_counters(&self) -> Result<Option<Vec<(&'static str, u64)>>> {
        let Engine::Lb(agent) = &self.engine else {
            return Ok(None);
        };
        let maps = lb::maps::Maps::open_pinned(agent.bpffs())?;
        let values = maps.global_counters()?;
        Ok(Some(
            lb_common::counters::NAMES
                .iter()
                .zip(values)
                .filter(|(_, value)| *value > 0)
                .map(|(name, value)| (*name, value))
                .collect(),
        ))
    }

    /// The load balancer's log (lb's agent, HAProxy).
    pub fn log(&self) -> String {
        match &self.engine {
            Engine::Lb(agent) => agent.log(),
            Engine::Haproxy(child) => child.log(),
            Engine::Iptables => String::new(),
        }
    }
}

fn start_lb(topology: &Topology, scratch: &Scratch) -> Result<Engine> {
    let manifest = scratch.path.join("bench.yaml");
    std::fs::write(&manifest, manifest_yaml(topology))
        .with_context(|| format!("writing {}", manifest.display()))?;
    let agent = Agent::start(
        &topology.lb,
        &topology.lb_ifaces(),
        &manifest,
        &["--vip-pool", topology::VIP_RANGE],
    )?;
    // One TCP and one UDP service, three nodes each.
    agent.wait_for_backends(READY_TIMEOUT, |rows| rows.len() >= 2 * NODES)?;
    Ok(Engine::Lb(agent))
}

/// One Service of type LoadBalancer with an HTTP and a UDP port, and the nodes.
fn manifest_yaml(topology: &Topology) -> String {
    let ports = [
        ServicePort::http(HTTP_PORT, NODE_HTTP_PORT),
        ServicePort {
            name: "flood",
            port: UDP_PORT,
            protocol: "UDP",
            node_port: NODE_UDP_PORT,
            target_port: None,
        },
    ];
    let service = manifests::load_balancer_service_yaml("bench", "default", VIP, &ports);
    manifests::service_and_nodes(service, &topology.nodes)
}

/// kube-proxy's iptables mode: the Service chain picks an endpoint with
/// `statistic --mode random` (1/3, then 1/2 of the rest, then the last), and
/// DNAT; conntrack un-NATs the replies.
fn start_iptables(topology: &Topology) -> Result<Engine> {
    let lb = &topology.lb;
    for (chain, protocol, port, node_port) in [
        ("KUBE-SVC-HTTP", "tcp", HTTP_PORT, NODE_HTTP_PORT),
        ("KUBE-SVC-FLOOD", "udp", UDP_PORT, NODE_UDP_PORT),
    ] {
        let iptables = |args: &str| -> Result<()> {
            let mut argv = vec!["iptables", "-w", "-t", "nat"];
            argv.extend(args.split_whitespace());
            lb.run(&argv).map(drop)
        };
        iptables(&format!("-N {chain}"))?;
        iptables(&format!(
            "-A PREROUTING -d {VIP}/32 -p {protocol} --dport {port} -j {chain}"
        ))?;
        let count = topology.nodes.len();
        for (i, node) in topology.nodes.iter().enumerate() {
            let remaining = count - i;
            let pick = if remaining > 1 {
                format!(
                    "-m statistic --mode random --probability {:.11} ",
                    1.0 / remaining as f64
                )
            } else {
                String::new()
            };
            iptables(&format!(
                "-A {chain} -p {protocol} {pick}-j DNAT --to-destination {}:{node_port}",
                node.ip
            ))?;
        }
    }
    Ok(Engine::Iptables)
}

/// HAProxy in TCP mode listening on the VIP, which is added to the lb
/// namespace's loopback (the client routes VIPs to the lb namespace).
/// `maxconn` stays far above wrk's connections but low enough for HAProxy's
/// file descriptors to fit common hard limits (it needs two per connection).
fn start_haproxy(topology: &Topology, scratch: &Scratch) -> Result<Engine> {
    topology.lb.ip(&format!("addr add {VIP}/32 dev lo"))?;
    let mut config = format!(
        "global
    maxconn 8000
    nbthread {}
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend vip
    bind {VIP}:{HTTP_PORT}
    default_backend nodes
backend nodes
    balance roundrobin
",
        crate::stats::online_cpus()
    );
    for node in &topology.nodes {
        config.push_str(&format!(
            "    server {} {}:{NODE_HTTP_PORT}\n",
            node.name, node.ip
        ));
    }
    let path = scratch.path.join("haproxy.cfg");
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    let path_arg = path.display().to_string();
    // -db: stay in the foreground, so the guard's signals reach HAProxy itself.
    let child = topology
        .lb
        .spawn("haproxy", &["-db", "-f", path_arg.as_str()])?;
    Ok(Engine::Haproxy(child))
}

/// A directory for a contestant's files, removed when dropped.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new(kind: Kind) -> Result<Scratch> {
        let path = std::env::temp_dir().join(format!(
            "lb-bench-{}-{}",
            std::process::id(),
            format!("{kind:?}").to_lowercase()
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Whether `program` is on the PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| is_executable(&dir.join(program)))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
