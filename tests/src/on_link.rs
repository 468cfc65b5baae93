//! The standard two-arm topology with a client that reaches the VIPs only
//! on-link, as a router or client on lb's segment does: it must resolve
//! every VIP (ARP, Neighbor Solicitation), which lb answers (`--announce arp`).

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    agent::{Agent, backends_of},
    manifests::{self, ManifestFile},
    servers::{self, ServerGuard},
    topology::{HOST_IFACE, LB_CLIENT_IFACE, Layout, Topology, VIP_RANGE, VIP6_RANGE},
    xdp_bed::fmt_mac,
};

pub const NODE_PORT: u16 = 31000;
const READY: Duration = Duration::from_secs(20);

/// Dropped in this order: the agent, the servers, the files, the namespaces.
pub struct OnLink {
    pub agent: Agent,
    _servers: Vec<ServerGuard>,
    pub manifests: ManifestFile,
    pub topology: Topology,
    /// The MAC of lb's interface on the client's segment, as `ip` prints it.
    pub lb_mac: String,
}

impl OnLink {
    /// Two nodes with name servers, an agent serving one Service per VIP of
    /// `vips` (all of one family), ready once the first has both nodes.
    pub fn start(tag: &str, vips: &[IpAddr]) -> Result<OnLink> {
        let first = *vips.first().context("at least one VIP")?;
        let topology = Topology::new(Layout::TwoArm, 2)?;
        let route = match first {
            IpAddr::V4(_) => format!("route add {VIP_RANGE} dev {HOST_IFACE}"),
            IpAddr::V6(_) => format!("-6 route add {VIP6_RANGE} dev {HOST_IFACE}"),
        };
        topology.client.ip(&route).context("on-link route")?;
        let lb_mac = fmt_mac(topology.lb.mac(LB_CLIENT_IFACE)?);
        let manifests = ManifestFile::new(tag, &manifest(&topology, vips))?;
        let servers = topology
            .nodes
            .iter()
            .map(|n| servers::tcp_name_server(&n.ns, NODE_PORT, &n.name))
            .collect::<Result<_>>()?;
        let agent = Agent::start(&topology.lb, &topology.lb_ifaces(), manifests.path(), &[])?;
        let listed = SocketAddr::new(first, 80).to_string() + "/tcp";
        agent.wait_for_backends(READY, |rows| backends_of(rows, &listed).len() == 2)?;
        Ok(OnLink {
            agent,
            _servers: servers,
            manifests,
            topology,
            lb_mac,
        })
    }

    /// Serves `vips` from now on.
    pub fn serve(&self, vips: &[IpAddr]) -> Result<()> {
        Ok(self.manifests.write(&manifest(&self.topology, vips))?)
    }

    /// Asks the name server behind `vip`:80 from the client.
    pub fn ask(&self, vip: IpAddr, timeout: Duration) -> Result<String> {
        let addr = SocketAddr::new(vip, 80);
        self.topology
            .client
            .enter(move || servers::tcp_ask_name(addr, timeout))?
    }

    /// The client connects to `vip` after resolving it to lb's MAC (the
    /// data path's `counter`, `arp_reply` or `ndp_reply`, grew), and gets no
    /// answer from `not_a_vip`, an address of the range lb does not serve.
    pub fn check_resolved(&self, vip: IpAddr, not_a_vip: IpAddr, counter: &str) -> Result<()> {
        let name = self
            .ask(vip, Duration::from_secs(3))
            .context("a TCP connection through the VIP")?;
        ensure!(name.starts_with("node-"), "answered by {name:?}");
        ensure!(
            self.neighbour_mac(vip).as_ref() == Some(&self.lb_mac),
            "the client resolved {vip} to {:?}, not lb's {}",
            self.neighbour_mac(vip),
            self.lb_mac
        );
        ensure!(self.agent.counter(counter)? > 0, "{counter} did not grow");
        ensure!(
            self.ask(not_a_vip, Duration::from_secs(1)).is_err(),
            "{not_a_vip} answered"
        );
        ensure!(
            self.neighbour_mac(not_a_vip).is_none(),
            "{not_a_vip} was resolved"
        );
        Ok(())
    }

    /// The MAC the client has for `ip`, if any.
    pub fn neighbour_mac(&self, ip: IpAddr) -> Option<String> {
        self.topology.client.neighbour_mac(HOST_IFACE, ip)
    }

    /// Waits until the client has an entry for `ip` (that it did not ask
    /// for: an announcement made it) and returns its MAC.
    pub fn wait_for_neighbour(&self, ip: IpAddr) -> Result<String> {
        let deadline = Instant::now() + READY;
        loop {
            if let Some(mac) = self.neighbour_mac(ip) {
                return Ok(mac);
            }
            ensure!(Instant::now() < deadline, "the client never learnt {ip}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The Services at `vips` and the nodes at their addresses of that family.
fn manifest(topology: &Topology, vips: &[IpAddr]) -> String {
    let v6 = vips.first().is_some_and(IpAddr::is_ipv6);
    let nodes = topology.nodes.iter().map(|n| {
        let ip: IpAddr = if v6 { n.ip6.into() } else { n.ip.into() };
        (n.name.as_str(), ip)
    });
    manifests::http_services_and_nodes(vips, NODE_PORT, nodes)
}
