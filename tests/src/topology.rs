//! The standard test topology of the end-to-end tests and the demo: a client,
//! the load balancer and N nodes, each in its own namespace.
//!
//! ```text
//! TwoArm:  client eth0 ─── lbc0 [lb] lbn0 ─── flb0 ┐
//!                                                   br0 [fabric] ── n<i> ─── eth0 node-<i>
//! OneArm:  client eth0 ─── fc0 ┐
//!                [lb] lb0 ─── flb0 ── br0 [fabric] ── n<i> ─── eth0 node-<i>
//! ```
//!
//! The client (10.0.0.0/24 and 2001:db8::/64) and the nodes (10.1.0.0/24 and
//! 2001:db8:1::/64) reach each other only through the lb namespace, which
//! routes between its addresses on both subnets. The IPv6 addresses mirror
//! the IPv4 ones: client `::2`, lb `::1`, node `i` `::(0x10 + i)`. VIPs are on
//! no interface: the client's default routes send them to the load balancer.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};

use crate::netns::{NetNs, Offload, XdpPass, veth};

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// The load balancer's address on the client subnet: the client's gateway.
pub const LB_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The load balancer's address on the node subnet: the nodes' gateway.
pub const LB_NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
/// Prefix length of the client and node subnets.
pub const PREFIX_LEN: u8 = 24;
/// Addresses the load balancer may hand out as VIPs.
pub const VIP_RANGE: &str = "198.51.100.0/28";

pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// The load balancer's IPv6 address on the client subnet: the client's gateway.
pub const LB_CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The load balancer's IPv6 address on the node subnet: the nodes' gateway.
pub const LB_NODE_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// Prefix length of the client and node IPv6 subnets.
pub const PREFIX_LEN6: u8 = 64;
/// IPv6 addresses the load balancer may hand out as VIPs.
pub const VIP6_RANGE: &str = "2001:db8:ff::/112";

/// The client's and every node's interface.
pub const HOST_IFACE: &str = "eth0";
/// Two-arm: the load balancer's interface towards the client.
pub const LB_CLIENT_IFACE: &str = "lbc0";
/// Two-arm: the load balancer's interface towards the nodes.
pub const LB_NODE_IFACE: &str = "lbn0";
/// One-arm: the load balancer's only interface.
pub const LB_ONE_ARM_IFACE: &str = "lb0";

pub(crate) const BRIDGE: &str = "br0";
/// Fabric end of the veth whose other end is the load balancer's.
const FABRIC_LB_PORT: &str = "flb0";
/// One-arm: fabric end of the client's veth.
const FABRIC_CLIENT_PORT: &str = "fc0";

/// Address of node `index` (1-based, at most 245): 10.1.0.(10 + index).
pub const fn node_ip(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, 10 + index)
}

/// The `index`th address of [`VIP_RANGE`] (0..16).
pub const fn vip(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, index)
}

/// IPv6 address of node `index` (1-based, at most 245): 2001:db8:1::(0x10 +
/// index), which reads like the IPv4 one for the first nine nodes.
pub const fn node_ip6(index: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10 + index as u16)
}

/// The `index`th address of [`VIP6_RANGE`].
pub const fn vip6(index: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, index)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Client side and node side on separate interfaces: the data path
    /// redirects between them (XDP_REDIRECT).
    TwoArm,
    /// One interface on a shared L2 with both subnets: the data path sends
    /// packets back out where they came in (XDP_TX).
    OneArm,
}

#[derive(Debug)]
pub struct Node {
    /// `node-<i>`, as the servers on it call themselves.
    pub name: String,
    pub ns: NetNs,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
}

/// The namespaces of one topology; dropping it deletes them all.
#[derive(Debug)]
pub struct Topology {
    pub client: NetNs,
    pub lb: NetNs,
    /// Holds the bridge the nodes (and, one-arm, the client and lb) plug into.
    pub fabric: NetNs,
    pub nodes: Vec<Node>,
    pub layout: Layout,
    /// Pass-through XDP on the fabric end of the lb's veth (see `wire`).
    fabric_xdp: Option<XdpPass>,
}

impl Node {
    /// What kube-proxy programs for a LoadBalancer ingress IP (ipMode VIP):
    /// TCP to `vip:port` is DNAT-ed to the node's own `local_port`, where its
    /// server listens (kube-proxy picks an endpoint; here the node is one).
    pub fn take_vip(&self, vip: Ipv4Addr, port: u16, local_port: u16) -> Result<()> {
        self.ns
            .run(&[
                "iptables",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                &format!("{vip}/32"),
                "-p",
                "tcp",
                "--dport",
                &port.to_string(),
                "-j",
                "DNAT",
                "--to-destination",
                &format!("{}:{local_port}", self.ip),
            ])
            .map(drop)
    }
}

/// What kube-proxy programs for a LoadBalancer ingress IP on every one of
/// `nodes` (see [`Node::take_vip`]).
pub fn expose(nodes: &[Node], vip: Ipv4Addr, port: u16, local_port: u16) -> Result<()> {
    for node in nodes {
        node.take_vip(vip, port, local_port)?;
    }
    Ok(())
}

impl Topology {
    pub fn new(layout: Layout, node_count: usize) -> Result<Topology> {
        let mut topology = Topology {
            client: NetNs::new("client")?,
            lb: NetNs::new("lb")?,
            fabric: NetNs::new("fabric")?,
            nodes: Vec::new(),
            layout,
            fabric_xdp: None,
        };
        topology
            .wire()
            .with_context(|| format!("wiring the {layout:?} topology"))?;
        // Frames the lb bounces with XDP_TX into its veth only wake the peer if
        // the peer runs an XDP program (GRO is enough for XDP_REDIRECT alone).
        topology.fabric_xdp = Some(topology.fabric.attach_xdp_pass(FABRIC_LB_PORT)?);
        for _ in 0..node_count {
            topology.add_node()?;
        }
        Ok(topology)
    }

    /// Plugs one more node into the fabric; servers on it are up to the caller.
    pub fn add_node(&mut self) -> Result<&Node> {
        let node = plug_node(&self.fabric, self.nodes.len() + 1)?;
        self.nodes.push(node);
        Ok(self.nodes.last().expect("a node was just added"))
    }

    /// The lb namespace's interfaces the agent attaches to.
    pub fn lb_ifaces(&self) -> Vec<&'static str> {
        match self.layout {
            Layout::TwoArm => vec![LB_CLIENT_IFACE, LB_NODE_IFACE],
            Layout::OneArm => vec![LB_ONE_ARM_IFACE],
        }
    }

    fn wire(&self) -> Result<()> {
        let (lb, fabric, client) = (&self.lb, &self.fabric, &self.client);
        fabric.ip(&format!("link add {BRIDGE} type bridge"))?;
        fabric.ip(&format!("link set {BRIDGE} up"))?;
        lb.sysctl("net.ipv4.ip_forward", "1")?;
        // Also becomes the default of interfaces created later.
        lb.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        // Set before the interfaces exist, so that they inherit the defaults.
        for conf in ["all", "default"] {
            lb.sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "0")?;
            // One-arm forwards out of the interface packets came in on; the
            // kernel would tell the client to go direct, which it can't.
            lb.sysctl(&format!("net.ipv4.conf.{conf}.send_redirects"), "0")?;
            // The kernel solicits the neighbours of packets it forwards from
            // its link-local address, which `nodad` does not cover: without
            // DAD that address, too, is usable at once instead of a second or
            // two later (the first forwarded packets would be lost).
            lb.sysctl(&format!("net.ipv6.conf.{conf}.accept_dad"), "0")?;
        }
        let lb_ifaces = match self.layout {
            Layout::TwoArm => {
                veth(client, HOST_IFACE, lb, LB_CLIENT_IFACE)?;
                veth(lb, LB_NODE_IFACE, fabric, FABRIC_LB_PORT)?;
                // Replies are redirected into lbc0: its peer needs NAPI.
                client.set_offload(HOST_IFACE, Offload::Gro, true)?;
                [
                    (LB_CLIENT_IFACE, LB_CLIENT_IP, LB_CLIENT_IP6),
                    (LB_NODE_IFACE, LB_NODE_IP, LB_NODE_IP6),
                ]
            }
            Layout::OneArm => {
                veth(client, HOST_IFACE, fabric, FABRIC_CLIENT_PORT)?;
                fabric.ip(&format!("link set {FABRIC_CLIENT_PORT} master {BRIDGE}"))?;
                veth(lb, LB_ONE_ARM_IFACE, fabric, FABRIC_LB_PORT)?;
                [
                    (LB_ONE_ARM_IFACE, LB_CLIENT_IP, LB_CLIENT_IP6),
                    (LB_ONE_ARM_IFACE, LB_NODE_IP, LB_NODE_IP6),
                ]
            }
        };
        fabric.ip(&format!("link set {FABRIC_LB_PORT} master {BRIDGE}"))?;
        // Requests are redirected (two-arm) or bounced (one-arm) into the lb's
        // veth towards the fabric: its peer needs NAPI.
        fabric.set_offload(FABRIC_LB_PORT, Offload::Gro, true)?;
        for (iface, ip, ip6) in lb_ifaces {
            add_addresses(lb, iface, ip, ip6)?;
        }
        add_addresses(client, HOST_IFACE, CLIENT_IP, CLIENT_IP6)?;
        add_default_routes(client, LB_CLIENT_IP, LB_CLIENT_IP6)?;
        // Full checksums on the wire, as a physical NIC delivers them.
        client.set_offload(HOST_IFACE, Offload::TxChecksum, false)?;
        Ok(())
    }
}

/// Node `index` (1-based) plugged into the bridge of `fabric`, with default
/// routes via [`LB_NODE_IP`] and [`LB_NODE_IP6`]. Other topologies on the
/// same addressing plan (see `scale_out`) put their gateway there too.
pub(crate) fn plug_node(fabric: &NetNs, index: usize) -> Result<Node> {
    let index = u8::try_from(index)
        .ok()
        .filter(|index| (1..=245).contains(index))
        .context("too many nodes for 10.1.0.0/24")?;
    let name = format!("node-{index}");
    let ns = NetNs::new(&name)?;
    let (ip, ip6) = (node_ip(index), node_ip6(index));
    let port = format!("n{index}");
    veth(&ns, HOST_IFACE, fabric, &port)?;
    fabric.ip(&format!("link set {port} master {BRIDGE}"))?;
    add_addresses(&ns, HOST_IFACE, ip, ip6)?;
    add_default_routes(&ns, LB_NODE_IP, LB_NODE_IP6)?;
    // Full checksums on the wire, as a physical NIC delivers them.
    ns.set_offload(HOST_IFACE, Offload::TxChecksum, false)?;
    Ok(Node { name, ns, ip, ip6 })
}

/// Gives `iface` its IPv4 and its IPv6 address, with the topology's prefix lengths.
pub(crate) fn add_addresses(ns: &NetNs, iface: &str, ip: Ipv4Addr, ip6: Ipv6Addr) -> Result<()> {
    ns.ip(&format!("addr add {ip}/{PREFIX_LEN} dev {iface}"))?;
    // Without duplicate address detection the address is usable at once
    // instead of after a second; the topology hands out every address once.
    ns.ip(&format!("addr add {ip6}/{PREFIX_LEN6} dev {iface} nodad"))?;
    Ok(())
}

pub(crate) fn add_default_routes(ns: &NetNs, gateway: Ipv4Addr, gateway6: Ipv6Addr) -> Result<()> {
    ns.ip(&format!("route add default via {gateway}"))?;
    ns.ip(&format!("-6 route add default via {gateway6}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use super::*;
    use crate::servers;

    const TIMEOUT: Duration = Duration::from_secs(2);
    /// Where the name servers that answer the IPv6 probes listen.
    const PROBE_PORT: u16 = 7000;

    /// Asks the name server at `[ip]:PROBE_PORT` from inside `from`.
    fn ask_name(from: &NetNs, ip: Ipv6Addr) -> Result<String> {
        let server = SocketAddr::from((ip, PROBE_PORT));
        from.enter(move || servers::tcp_ask_name(server, TIMEOUT))?
    }

    /// Without any XDP program, plain kernel forwarding must connect the
    /// client to every node, both ways, in both families. `NetNs::ping` speaks
    /// ICMPv4 only, so IPv6 is probed with a TCP round trip to a name server.
    fn assert_client_reaches_nodes(topology: &Topology) -> Result<()> {
        let layout = topology.layout;
        let _client_server = servers::tcp_name_server(&topology.client, PROBE_PORT, "client")?;
        for node in &topology.nodes {
            let _node_server = servers::tcp_name_server(&node.ns, PROBE_PORT, &node.name)?;
            topology
                .client
                .ping(node.ip, TIMEOUT)
                .with_context(|| format!("{layout:?}: client to {}", node.name))?;
            node.ns
                .ping(CLIENT_IP, TIMEOUT)
                .with_context(|| format!("{layout:?}: {} to client", node.name))?;
            let answer = ask_name(&topology.client, node.ip6)
                .with_context(|| format!("{layout:?}: client to {} over IPv6", node.name))?;
            assert_eq!(answer, node.name);
            let answer = ask_name(&node.ns, CLIENT_IP6)
                .with_context(|| format!("{layout:?}: {} to client over IPv6", node.name))?;
            assert_eq!(answer, "client");
        }
        Ok(())
    }

    #[test]
    fn topology_pings() -> Result<()> {
        for layout in [Layout::TwoArm, Layout::OneArm] {
            let topology = Topology::new(layout, 3)?;
            assert_eq!(topology.nodes.len(), 3);
            assert_eq!(topology.nodes[2].name, "node-3");
            assert_eq!(topology.nodes[2].ip, Ipv4Addr::new(10, 1, 0, 13));
            assert_eq!(topology.nodes[2].ip6, "2001:db8:1::13".parse::<Ipv6Addr>()?);
            for iface in topology.lb_ifaces() {
                assert!(topology.lb.ifindex(iface)? > 0);
            }
            assert_client_reaches_nodes(&topology)?;
        }
        Ok(())
    }

    #[test]
    fn added_node_is_reachable() -> Result<()> {
        let mut topology = Topology::new(Layout::TwoArm, 1)?;
        let node = topology.add_node()?;
        assert_eq!(
            (node.name.as_str(), node.ip, node.ip6),
            ("node-2", node_ip(2), node_ip6(2))
        );
        assert_client_reaches_nodes(&topology)
    }
}
