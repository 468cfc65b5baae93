//! The standard two-arm topology with a client that reaches the VIPs only
//! on-link, as a router or client on lb's segment does: it must resolve
//! every VIP (ARP, Neighbor Solicitation), which lb answers where the VIP is
//! announced at layer 2.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    agent::{Agent, backends_of},
    manifests::{self, ManifestFile},
    netns::XdpPass,
    servers::{self, ServerGuard},
    topology::{HOST_IFACE, LB_CLIENT_IFACE, Layout, Topology, VIP_RANGE, VIP6_RANGE},
    xdp_bed::fmt_mac,
};

/// Where the nodes serve: the `i`th Service gets the `i`th (a node's reply
/// from a NodePort tells its Service, so each has its own).
pub const NODE_PORTS: [u16; 2] = [31000, 31001];
pub const READY: Duration = Duration::from_secs(20);

/// The namespaces, two nodes with name servers on NodePorts, and a client
/// with only an on-link route to the VIP range. Dropped in this order: the
/// servers, the namespaces.
pub struct Segment {
    _servers: Vec<ServerGuard>,
    /// On the client's interface: lb's ARP and NDP answers are bounced with
    /// XDP_TX into its veth, which wakes the client's end only when that runs
    /// an XDP program (with GRO alone, an answer may wait for other traffic,
    /// and the client gives up first).
    _client_xdp: XdpPass,
    pub topology: Topology,
    /// The MAC of lb's interface on the client's segment, as `ip` prints it.
    pub lb_mac: String,
}

impl Segment {
    /// The segment for VIPs of the family of `ipv6`.
    pub fn new(ipv6: bool) -> Result<Segment> {
        let topology = Topology::new(Layout::TwoArm, 2)?;
        let route = match ipv6 {
            false => format!("route add {VIP_RANGE} dev {HOST_IFACE}"),
            true => format!("-6 route add {VIP6_RANGE} dev {HOST_IFACE}"),
        };
        topology.client.ip(&route).context("on-link route")?;
        let lb_mac = fmt_mac(topology.lb.mac(LB_CLIENT_IFACE)?);
        let client_xdp = topology.client.attach_xdp_pass(HOST_IFACE)?;
        let servers = topology
            .nodes
            .iter()
            .flat_map(|n| NODE_PORTS.map(|port| (n, port)))
            .map(|(n, port)| servers::tcp_name_server(&n.ns, port, &n.name))
            .collect::<Result<_>>()?;
        Ok(Segment {
            _servers: servers,
            _client_xdp: client_xdp,
            topology,
            lb_mac,
        })
    }

    /// The Services at `vips` (`web-<i>`, port 80; at most as many as
    /// [`NODE_PORTS`]) and the nodes at their addresses of that family, as
    /// manifests.
    pub fn manifest(&self, vips: &[IpAddr]) -> String {
        let v6 = vips.first().is_some_and(IpAddr::is_ipv6);
        let nodes = self.topology.nodes.iter().map(|n| {
            let ip: IpAddr = if v6 { n.ip6.into() } else { n.ip.into() };
            (n.name.as_str(), ip)
        });
        let services = vips.iter().copied().zip(NODE_PORTS);
        manifests::http_services_and_nodes(services, nodes)
    }

    /// Waits until `agent` serves `vip`:80 with both nodes.
    pub fn wait_until_served(&self, agent: &Agent, vip: IpAddr) -> Result<()> {
        let listed = SocketAddr::new(vip, 80).to_string() + "/tcp";
        agent.wait_for_backends(READY, |rows| backends_of(rows, &listed).len() == 2)?;
        Ok(())
    }

    /// Asks the name server behind `vip`:80 from the client.
    pub fn ask(&self, vip: IpAddr, timeout: Duration) -> Result<String> {
        let addr = SocketAddr::new(vip, 80);
        self.topology
            .client
            .enter(move || servers::tcp_ask_name(addr, timeout))?
    }

    /// The client connects to `vip` after resolving it to lb's MAC (the
    /// data path's `counter`, `arp_reply` or `ndp_reply`, grew).
    pub fn check_answered(&self, agent: &Agent, vip: IpAddr, counter: &str) -> Result<()> {
        let name = self.ask(vip, Duration::from_secs(3)).with_context(|| {
            let neighbours = self.topology.client.ip("neigh").unwrap_or_default();
            let counters = agent.query("stats").map(|stats| stats["totals"].clone());
            format!(
                "a TCP connection through the VIP; the client's neighbours:\n{neighbours}\n\
                 the data path's counters: {counters:?}\nthe agent's log:\n{}",
                agent.log()
            )
        })?;
        ensure!(name.starts_with("node-"), "answered by {name:?}");
        let resolved = self.neighbour_mac(vip)?;
        ensure!(
            resolved.as_ref() == Some(&self.lb_mac),
            "the client resolved {vip} to {resolved:?}, not lb's {}",
            self.lb_mac
        );
        ensure!(agent.counter(counter)? > 0, "{counter} did not grow");
        Ok(())
    }

    /// The client gets no answer from `ip`: nobody resolves it.
    pub fn check_unanswered(&self, ip: IpAddr) -> Result<()> {
        ensure!(
            self.ask(ip, Duration::from_secs(1)).is_err(),
            "{ip} answered"
        );
        ensure!(self.neighbour_mac(ip)?.is_none(), "{ip} was resolved");
        Ok(())
    }

    /// The MAC the client has for `ip`, if any.
    pub fn neighbour_mac(&self, ip: IpAddr) -> Result<Option<String>> {
        self.topology.client.neighbour_mac(HOST_IFACE, ip)
    }

    /// The client forgets every neighbour it resolved.
    pub fn forget_neighbours(&self) -> Result<()> {
        self.topology
            .client
            .ip(&format!("neigh flush dev {HOST_IFACE}"))?;
        Ok(())
    }

    /// Waits until the client has an entry for `ip` (that it did not ask
    /// for: an announcement made it) and returns its MAC.
    pub fn wait_for_neighbour(&self, ip: IpAddr) -> Result<String> {
        let deadline = Instant::now() + READY;
        loop {
            if let Some(mac) = self.neighbour_mac(ip)? {
                return Ok(mac);
            }
            ensure!(Instant::now() < deadline, "the client never learnt {ip}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A [`Segment`] with an agent reading manifests. Dropped in this order: the
/// agent, the files, the segment.
pub struct OnLink {
    pub agent: Agent,
    pub manifests: ManifestFile,
    pub segment: Segment,
}

impl OnLink {
    /// An agent serving one Service per VIP of `vips` (all of one family),
    /// ready once the first has both nodes.
    pub fn start(tag: &str, vips: &[IpAddr]) -> Result<OnLink> {
        Self::start_with(tag, vips, &[])
    }

    /// The same, with `documents` added to the manifests.
    pub fn start_with(tag: &str, vips: &[IpAddr], documents: &[String]) -> Result<OnLink> {
        let first = *vips.first().context("at least one VIP")?;
        let segment = Segment::new(first.is_ipv6())?;
        let mut text = segment.manifest(vips);
        for document in documents {
            text = manifests::documents(&[text, document.clone()]);
        }
        let manifests = ManifestFile::new(tag, &text)?;
        let topology = &segment.topology;
        let agent = Agent::start(&topology.lb, &topology.lb_ifaces(), manifests.path(), &[])?;
        segment.wait_until_served(&agent, first)?;
        Ok(OnLink {
            agent,
            manifests,
            segment,
        })
    }

    /// Serves `vips` from now on.
    pub fn serve(&self, vips: &[IpAddr]) -> Result<()> {
        Ok(self.manifests.write(&self.segment.manifest(vips))?)
    }

    /// `vip` is resolved and served (see [`Segment::check_answered`]);
    /// `not_a_vip`, an address of the range lb does not serve, is not.
    pub fn check_resolved(&self, vip: IpAddr, not_a_vip: IpAddr, counter: &str) -> Result<()> {
        self.segment.check_answered(&self.agent, vip, counter)?;
        self.segment.check_unanswered(not_a_vip)
    }
}
