//! The segment as the failover tests and the benchmark use it: two lb hosts
//! running the real agent, both announcing the VIP over BGP with BFD, so the
//! router spreads it over both.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::{PORT, ScaleOut, VIP, host_ip};
use crate::{
    agent::{Agent, backends_of},
    bird,
    manifests::ManifestFile,
    servers::ServerGuard,
};

/// How long the agents get to program the Service and the router to learn it.
const READY: Duration = Duration::from_secs(20);

/// How soon a host gone without a word is noticed: its BFD timers.
#[derive(Clone, Copy, Debug)]
pub enum Detection {
    /// BFD at 100 ms x 3, as the router runs it: 300 ms, what the failover
    /// measurements are of.
    Fast,
    /// The hosts ask for BFD at 1 s x 10 (detection 3 s at the hosts, 10 s
    /// at the router): for tests that a restart or a drain leaves the
    /// sessions alone, so that BFD packets a loaded machine delays by a few
    /// hundred ms are not taken for what the test looks for. A BGP session
    /// that closes, or a withdrawal, shows at once whatever BFD does.
    Tolerant,
}

impl Detection {
    fn args(self) -> &'static [&'static str] {
        match self {
            Self::Fast => &[],
            Self::Tolerant => &["--bfd-interval", "1s", "--bfd-multiplier", "10"],
        }
    }
}

/// Fields drop in order: agents (whose `lb down` stops their BIRD) before
/// the namespaces.
pub struct ActiveActive {
    pub agents: Vec<Agent>,
    _servers: Vec<ServerGuard>,
    _manifests: ManifestFile,
    pub net: ScaleOut,
}

impl ActiveActive {
    /// Two hosts with agents forwarding by `forwarding` (`nat` or `dsr`),
    /// three nodes; returns once the router has both next hops and BFD is
    /// up on both sessions.
    pub fn start(tag: &str, forwarding: &str, detection: Detection) -> Result<ActiveActive> {
        let net = ScaleOut::new(2, 3)?;
        let servers = net.serve()?;
        let manifests = ManifestFile::new(tag, &net.manifest())?;
        let agents = (0..2)
            .map(|i| {
                let mut args = net.bgp_args(i);
                args.extend(["--forwarding".to_owned(), forwarding.to_owned()]);
                args.extend(detection.args().iter().map(|&arg| arg.to_owned()));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                net.start_agent(i, manifests.path(), &args)
            })
            .collect::<Result<_>>()?;
        let bed = ActiveActive {
            agents,
            _servers: servers,
            _manifests: manifests,
            net,
        };
        for agent in &bed.agents {
            wait_programmed(agent)?;
        }
        let mut hops = bed.net.wait_for_next_hops(VIP, 2)?;
        hops.sort();
        ensure!(
            hops == [host_ip(1), host_ip(2)],
            "the router's next hops are {hops:?}"
        );
        bed.wait_for_bfd()?;
        Ok(bed)
    }

    /// Waits until the router's BFD sessions with both hosts are up, so a
    /// dead host is noticed as `Detection` says.
    fn wait_for_bfd(&self) -> Result<()> {
        let socket = self.net.router_bird().socket();
        let deadline = Instant::now() + Duration::from_secs(10);
        for host in &self.net.hosts {
            while !bird::bfd_up(&socket, host.ip)? {
                ensure!(
                    Instant::now() < deadline,
                    "no BFD session up with {}:\n{}",
                    host.ip,
                    self.net.router_bird().birdc("show bfd sessions")?
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// How many flows each host's data path has (`lb flows`).
    pub fn flows_per_host(&self) -> Result<Vec<usize>> {
        self.agents
            .iter()
            .map(|agent| {
                let rows = agent.query_with(&["flows", "--limit", "100000"])?;
                rows.as_array().map(Vec::len).context("flow rows")
            })
            .collect()
    }

    /// Host `index` dies: its link goes down, its agent and BIRD are
    /// SIGKILLed, nothing is withdrawn.
    pub fn kill_host(&mut self, index: usize) -> Result<()> {
        self.net.hosts[index].unplug()?;
        self.agents[index].kill_with_bird()
    }
}

/// Waits until `agent` has the Service with its three nodes.
pub fn wait_programmed(agent: &Agent) -> Result<()> {
    agent
        .wait_for_backends(READY, |rows| {
            backends_of(rows, &format!("{VIP}:{PORT}/tcp")).len() == 3
        })
        .map(drop)
}
