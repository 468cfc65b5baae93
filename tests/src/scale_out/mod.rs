//! Several lb hosts on one segment behind a router, as lb runs at the edge of
//! a real network: the router learns VIPs over BGP and spreads them over the
//! hosts (ECMP); the nodes emulate kube-proxy's rule for a LoadBalancer IP.
//!
//! ```text
//! client eth0 ─── rc0 [router, BIRD] eth0 ─── fr ┐
//!                        [lbhost-<i>] eth0 ─── l<i> ─ br0 [fabric] ── n<i> ─── eth0 node-<i>
//! ```
//!
//! The addresses follow [`topology`](crate::topology): the client is
//! 10.0.0.2, the router takes the lb's place as everyone's gateway (10.0.0.1
//! and 10.1.0.1), nodes are 10.1.0.(10 + i) and route everything via the
//! router, so a node's reply reaches the client without crossing an lb host
//! (direct server return). lb host `i` is 10.1.0.(100 + i), one-arm.

mod active_active;

pub use active_active::{ActiveActive, Detection, wait_programmed};

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

use crate::{
    agent::Agent,
    bird::{self, Bird, LB_ASN, LearntRoutes, ROUTER_ASN},
    manifests::{self, ServicePort},
    netns::{NetNs, Offload, XdpPass, veth},
    servers::{self, ServerGuard},
    topology::{
        self, BRIDGE, CLIENT_IP, CLIENT_IP6, HOST_IFACE, LB_CLIENT_IP, LB_CLIENT_IP6, LB_NODE_IP,
        LB_NODE_IP6, Node,
    },
};

/// The VIP of the Service the beds serve ([`ScaleOut::manifest`]).
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// Its port.
pub const PORT: u16 = 80;
/// Its NodePort, where the nodes' servers listen.
pub const NODE_PORT: u16 = 31000;

/// The router's address on the segment: the nodes' and lb hosts' gateway.
pub const ROUTER_IP: Ipv4Addr = LB_NODE_IP;
/// The router's interface towards the client.
const ROUTER_CLIENT_IFACE: &str = "rc0";
/// Fabric end of the router's veth.
const FABRIC_ROUTER_PORT: &str = "fr";
/// Fabric ends of the lb hosts' veths: static names, because the pass-through
/// XDP program holds on to its interface's name.
const FABRIC_HOST_PORTS: [&str; 4] = ["l1", "l2", "l3", "l4"];

/// Address of lb host `index` (1-based): 10.1.0.(100 + index).
pub const fn host_ip(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, 100 + index)
}

#[derive(Debug)]
pub struct LbHost {
    pub ns: NetNs,
    pub ip: Ipv4Addr,
}

impl LbHost {
    /// The host loses power: its link goes down. (Its processes are the
    /// caller's to kill, see `Agent::kill_with_bird`.)
    pub fn unplug(&self) -> Result<()> {
        self.ns.ip(&format!("link set {HOST_IFACE} down")).map(drop)
    }
}

/// The namespaces and the router's BIRD; dropping it removes everything (the
/// nodes' iptables rules live in their namespaces).
#[derive(Debug)]
pub struct ScaleOut {
    /// Declared first so it stops before its namespace goes.
    router_bird: Bird,
    pub client: NetNs,
    pub router: NetNs,
    pub fabric: NetNs,
    pub hosts: Vec<LbHost>,
    pub nodes: Vec<Node>,
    /// Pass-through XDP on the fabric ends of the hosts' veths: frames an lb
    /// host bounces with XDP_TX only wake a peer that runs XDP.
    _fabric_xdp: Vec<XdpPass>,
}

impl ScaleOut {
    /// Builds the segment with `host_count` lb hosts and `node_count` nodes;
    /// the router peers with every host.
    pub fn new(host_count: usize, node_count: usize) -> Result<ScaleOut> {
        Self::with_router(host_count, node_count, |_, peers| {
            Ok(bird::router_config(ROUTER_IP, peers))
        })
    }

    /// [`new`](Self::new) with a router of the caller's: `setup` prepares
    /// its namespace (wired, before BIRD starts) and returns its BIRD's
    /// configuration for the lb hosts' addresses.
    pub fn with_router(
        host_count: usize,
        node_count: usize,
        setup: impl FnOnce(&NetNs, &[Ipv4Addr]) -> Result<String>,
    ) -> Result<ScaleOut> {
        ensure!(
            (1..=FABRIC_HOST_PORTS.len()).contains(&host_count),
            "1 to {} lb hosts",
            FABRIC_HOST_PORTS.len()
        );
        let client = NetNs::new("client")?;
        let router = NetNs::new("router")?;
        let fabric = NetNs::new("fabric")?;
        fabric.ip(&format!("link add {BRIDGE} type bridge"))?;
        fabric.ip(&format!("link set {BRIDGE} up"))?;
        wire_router(&client, &router, &fabric).context("wiring the router")?;
        let mut hosts = Vec::new();
        let mut fabric_xdp = Vec::new();
        for (index, port) in (1..).zip(&FABRIC_HOST_PORTS[..host_count]) {
            hosts.push(plug_host(&fabric, index, port)?);
            fabric_xdp.push(fabric.attach_xdp_pass(port)?);
        }
        let nodes = (1..=node_count)
            .map(|index| topology::plug_node(&fabric, index))
            .collect::<Result<_>>()?;
        let peers: Vec<Ipv4Addr> = hosts.iter().map(|host| host.ip).collect();
        let router_bird = Bird::start(&router, &setup(&router, &peers)?)?;
        Ok(ScaleOut {
            router_bird,
            client,
            router,
            fabric,
            hosts,
            nodes,
            _fabric_xdp: fabric_xdp,
        })
    }

    pub fn router_bird(&self) -> &Bird {
        &self.router_bird
    }

    /// The Service `web` (TCP [`VIP`]:[`PORT`] to [`NODE_PORT`]) and every
    /// node, Ready: what the agents read.
    pub fn manifest(&self) -> String {
        let port = ServicePort::http(PORT, NODE_PORT);
        let service = manifests::load_balancer_service_yaml("web", "edge", VIP, &[port]);
        manifests::service_and_nodes(service, &self.nodes)
    }

    /// A name server on [`NODE_PORT`] on every node, and kube-proxy's rule
    /// for the LoadBalancer IP in front of it (see [`expose`](Self::expose)).
    pub fn serve(&self) -> Result<Vec<ServerGuard>> {
        self.expose(VIP, PORT, NODE_PORT)?;
        self.start_servers()
    }

    /// The name servers of [`serve`](Self::serve) alone, e.g. after they
    /// were stopped.
    pub fn start_servers(&self) -> Result<Vec<ServerGuard>> {
        self.nodes
            .iter()
            .map(|node| servers::tcp_name_server(&node.ns, NODE_PORT, &node.name))
            .collect()
    }

    /// Starts the real agent on lb host `index` (0-based) on its one
    /// interface, reading `manifests`, with `extra` arguments.
    pub fn start_agent(&self, index: usize, manifests: &Path, extra: &[&str]) -> Result<Agent> {
        Agent::start(&self.hosts[index].ns, &[HOST_IFACE], manifests, extra)
    }

    /// The arguments that make lb host `index` announce its VIPs to the
    /// router over BGP (with the agent's default BFD).
    pub fn bgp_args(&self, index: usize) -> Vec<String> {
        [
            "--announce".to_owned(),
            "bgp".to_owned(),
            "--bgp-asn".to_owned(),
            LB_ASN.to_string(),
            "--bgp-peer".to_owned(),
            format!("{ROUTER_IP}@{ROUTER_ASN}"),
            "--bgp-router-id".to_owned(),
            self.hosts[index].ip.to_string(),
        ]
        .into()
    }

    /// The routes to `vip` the router's BIRD has learnt, each with the time
    /// it was learnt: the same answer at two moments means that nothing was
    /// withdrawn or announced again between them.
    pub fn learnt_routes(&self, vip: Ipv4Addr) -> Result<LearntRoutes> {
        let shown = self
            .router_bird
            .birdc(&format!("show route for {vip}/32"))?;
        Ok(LearntRoutes::parse(&shown))
    }

    /// The learnt routes to `vip` once they stopped changing (two reads
    /// half a second apart agree): a session that just came up may still
    /// replace its route within milliseconds of the first announcement.
    pub fn settled_routes(&self, vip: Ipv4Addr) -> Result<LearntRoutes> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = self.learnt_routes(vip)?;
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = self.learnt_routes(vip)?;
            if now.same_as(&last) {
                return Ok(now);
            }
            ensure!(
                Instant::now() < deadline,
                "the routes to {vip} keep changing:\n{now}"
            );
            last = now;
        }
    }

    /// Waits until the router's route to `vip` has `count` next hops (0: no
    /// route) and returns them.
    pub fn wait_for_next_hops(&self, vip: Ipv4Addr, count: usize) -> Result<Vec<Ipv4Addr>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let hops = self.next_hops(vip)?;
            if hops.len() == count {
                return Ok(hops);
            }
            ensure!(
                Instant::now() < deadline,
                "the router has {hops:?} for {vip}, not {count} next hops; its BGP:\n{}",
                self.router_bird.birdc("show protocols")?
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What kube-proxy programs for a LoadBalancer ingress IP on every node
    /// (see [`Node::take_vip`]).
    pub fn expose(&self, vip: Ipv4Addr, port: u16, node_port: u16) -> Result<()> {
        topology::expose(&self.nodes, vip, port, node_port)
    }

    /// The next hops of the router's route to `vip`, as its kernel has them
    /// (empty without a route).
    pub fn next_hops(&self, vip: Ipv4Addr) -> Result<Vec<Ipv4Addr>> {
        let routes = self.router.ip(&format!("route show {vip}/32"))?;
        let words: Vec<&str> = routes.split_whitespace().collect();
        words
            .windows(2)
            .filter(|pair| pair[0] == "via")
            .map(|pair| {
                pair[1]
                    .parse()
                    .with_context(|| format!("next hop in {routes:?}"))
            })
            .collect()
    }
}

/// The router between the client and the segment: kernel forwarding, ECMP
/// spread by the 5-tuple.
fn wire_router(client: &NetNs, router: &NetNs, fabric: &NetNs) -> Result<()> {
    router.sysctl("net.ipv4.ip_forward", "1")?;
    router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    // Per connection, not per source and destination: with one client the
    // latter would send everything to one lb host.
    router.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
    veth(client, HOST_IFACE, router, ROUTER_CLIENT_IFACE)?;
    veth(router, HOST_IFACE, fabric, FABRIC_ROUTER_PORT)?;
    fabric.ip(&format!("link set {FABRIC_ROUTER_PORT} master {BRIDGE}"))?;
    topology::add_addresses(router, ROUTER_CLIENT_IFACE, LB_CLIENT_IP, LB_CLIENT_IP6)?;
    topology::add_addresses(router, HOST_IFACE, LB_NODE_IP, LB_NODE_IP6)?;
    topology::add_addresses(client, HOST_IFACE, CLIENT_IP, CLIENT_IP6)?;
    topology::add_default_routes(client, LB_CLIENT_IP, LB_CLIENT_IP6)?;
    // Full checksums on the wire, as a physical NIC delivers them.
    client.set_offload(HOST_IFACE, Offload::TxChecksum, false)?;
    Ok(())
}

/// lb host `index`, one-arm on the segment, default route via the router.
fn plug_host(fabric: &NetNs, index: u8, fabric_port: &str) -> Result<LbHost> {
    let ns = NetNs::new(&format!("lbhost-{index}"))?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    for conf in ["all", "default"] {
        ns.sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "0")?;
        // One-arm: what comes in goes out the same way; no redirects.
        ns.sysctl(&format!("net.ipv4.conf.{conf}.send_redirects"), "0")?;
    }
    veth(&ns, HOST_IFACE, fabric, fabric_port)?;
    fabric.ip(&format!("link set {fabric_port} master {BRIDGE}"))?;
    fabric.set_offload(fabric_port, Offload::Gro, true)?;
    // A NIC hands XDP only frames for its own MAC (or broadcasts), a veth
    // every frame it gets. Without this, frames for a host that just died
    // (the bridge forgets its MAC with its port and floods them) would reach
    // the other lb hosts' XDP, which would serve them before the router
    // noticed anything: a failover no real segment has.
    fabric.run(&["bridge", "link", "set", "dev", fabric_port, "flood", "off"])?;
    let ip = host_ip(index);
    let ip6 = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x100 + u16::from(index));
    topology::add_addresses(&ns, HOST_IFACE, ip, ip6)?;
    topology::add_default_routes(&ns, LB_NODE_IP, LB_NODE_IP6)?;
    ns.set_offload(HOST_IFACE, Offload::TxChecksum, false)?;
    Ok(LbHost { ns, ip })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use super::*;
    use crate::streams::{self, Streams};

    /// A plain-Linux stand-in for an lb host: the kernel routes the VIP to
    /// one node, BIRD announces it to the router with BFD.
    fn stand_in(host: &LbHost, node: Ipv4Addr) -> Result<Bird> {
        host.ns.ip(&format!("route add {VIP}/32 via {node}"))?;
        let ip = host.ip;
        let config = format!(
            "router id {ip};
protocol device {{ }}
protocol static {{ ipv4; route {VIP}/32 via {node}; }}
protocol bfd {{
  interface \"*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }};
}}
protocol bgp {{
  local {ip} as {LB_ASN};
  neighbor {ROUTER_IP} as {ROUTER_ASN};
  ipv4 {{ import none; export all; next hop self; }};
  bfd on;
}}
"
        );
        Bird::start(&host.ns, &config)
    }

    /// The topology itself, without lb: two stand-in hosts announce the VIP,
    /// the router spreads connections over both, the nodes' DNAT answers, and
    /// when one host dies BFD moves every stream to the other within the
    /// time the failover tests allow.
    #[test]
    fn stand_in_hosts_fail_over_without_breaking_streams() -> Result<()> {
        let bed = ScaleOut::new(2, 3)?;
        let node = &bed.nodes[0];
        let _servers = bed.serve()?;
        let mut birds: Vec<Bird> = bed
            .hosts
            .iter()
            .map(|host| stand_in(host, node.ip))
            .collect::<Result<_>>()?;
        bed.wait_for_next_hops(VIP, 2)?;
        let hops = bed.next_hops(VIP)?;
        assert!(hops.contains(&host_ip(1)) && hops.contains(&host_ip(2)));
        // BFD comes up beside the BGP session, not necessarily before the
        // routes it carried.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for host in &bed.hosts {
            while !bird::bfd_up(&bed.router_bird().socket(), host.ip)? {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no BFD with {}",
                    host.ip
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        let vip = SocketAddrV4::new(VIP, PORT).into();
        let streams = Streams::start(&bed.client, vip, 60, Duration::from_millis(100))?;
        std::thread::sleep(Duration::from_secs(1));
        bed.hosts[0].unplug()?;
        drop(birds.remove(0));
        bed.wait_for_next_hops(VIP, 1)?;
        assert_eq!(bed.next_hops(VIP)?, vec![host_ip(2)]);
        std::thread::sleep(Duration::from_secs(2));
        let longest = streams::check(&streams.stop(), Duration::from_secs(3))?;
        println!("longest stall {longest:?}");
        let name = bed
            .client
            .enter(move || servers::tcp_ask_name(vip, Duration::from_secs(3)))??;
        assert_eq!(name, node.name);
        Ok(())
    }
}
