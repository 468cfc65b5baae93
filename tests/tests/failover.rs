//! Two lb hosts active-active behind a router that spreads the VIP over both
//! (ECMP, learnt over BGP with BFD), forwarding by direct server return to
//! three nodes that answer the client themselves. Sixty long-lived streams
//! run across both hosts while one host dies, has its agent restarted or is
//! drained: no stream may break or stall for 3 s, because the surviving host
//! sends a stream it never saw to the node the other host chose (Maglev).

use std::{
    net::{SocketAddr, SocketAddrV4},
    time::Duration,
};

use lb_tests::{
    agent::{Agent, backends_of},
    bird,
    manifests::ManifestFile,
    scale_out::{PORT, ScaleOut, VIP, host_ip},
    servers::{self, ServerGuard},
    streams::{self, Streams},
};

const STREAMS: usize = 60;
const LINE_INTERVAL: Duration = Duration::from_millis(100);
const MAX_STALL: Duration = Duration::from_secs(3);
const TIMEOUT: Duration = Duration::from_secs(3);

/// The segment with an agent on each host, both announcing the VIP.
/// Fields drop in order: agents (whose `lb down` stops their BIRD) before the
/// namespaces.
struct Bed {
    agents: Vec<Agent>,
    _servers: Vec<ServerGuard>,
    _manifests: ManifestFile,
    net: ScaleOut,
}

impl Bed {
    fn new(tag: &str) -> Bed {
        let net = ScaleOut::new(2, 3).expect("topology");
        let servers = net.serve().expect("servers");
        let manifests = ManifestFile::new(tag, &net.manifest()).expect("manifests");
        let agents = (0..2)
            .map(|i| {
                let mut args = net.bgp_args(i);
                args.extend(["--forwarding".to_owned(), "dsr".to_owned()]);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                net.start_agent(i, manifests.path(), &args).expect("agent")
            })
            .collect();
        let bed = Bed {
            agents,
            _servers: servers,
            _manifests: manifests,
            net,
        };
        for agent in &bed.agents {
            agent
                .wait_for_backends(Duration::from_secs(20), |rows| {
                    backends_of(rows, &format!("{VIP}:{PORT}/tcp")).len() == 3
                })
                .expect("agent programs the service");
        }
        let mut hops = bed.net.wait_for_next_hops(VIP, 2).expect("ECMP route");
        hops.sort();
        assert_eq!(hops, [host_ip(1), host_ip(2)]);
        bed.wait_for_bfd();
        bed
    }

    /// BFD guards both sessions, so a dead host is noticed in 300 ms.
    fn wait_for_bfd(&self) {
        let socket = self.net.router_bird().socket();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for host in &self.net.hosts {
            while !bird::bfd_up(&socket, host.ip).expect("birdc") {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no BFD session up with {}:\n{}",
                    host.ip,
                    self.net
                        .router_bird()
                        .birdc("show bfd sessions")
                        .unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn vip() -> SocketAddr {
        SocketAddrV4::new(VIP, PORT).into()
    }

    /// Starts the streams and checks that both hosts carry some: every
    /// stream is one flow on exactly one of them.
    fn streams_on_both_hosts(&self) -> Streams {
        let streams =
            Streams::start(&self.net.client, Self::vip(), STREAMS, LINE_INTERVAL).expect("streams");
        std::thread::sleep(Duration::from_millis(500));
        let flows: Vec<usize> = self
            .agents
            .iter()
            .map(|agent| {
                let rows = agent
                    .query_with(&["flows", "--limit", "1000"])
                    .expect("lb flows");
                rows.as_array().expect("flow rows").len()
            })
            .collect();
        assert!(
            flows.iter().all(|&n| n > 0),
            "the router does not spread the streams: flows per host {flows:?}"
        );
        assert_eq!(flows.iter().sum::<usize>(), STREAMS, "flows per host");
        streams
    }

    /// Lets the streams run on for a while, stops them and checks them.
    fn check_streams(&self, streams: Streams) {
        std::thread::sleep(Duration::from_secs(2));
        let longest = streams::check(&streams.stop(), MAX_STALL).expect("streams");
        println!("longest stall: {longest:?}");
    }

    /// New connections reach the nodes through what is left.
    fn check_new_connections(&self) {
        let tally = servers::connect_many(&self.net.client, Self::vip(), 30, TIMEOUT);
        assert_eq!(tally.values().sum::<usize>(), 30);
    }
}

#[test]
fn no_stream_breaks_when_an_lb_host_dies() {
    let mut bed = Bed::new("failover-death");
    let streams = bed.streams_on_both_hosts();
    bed.net.hosts[0].unplug().expect("links down");
    bed.agents[0].kill_with_bird().expect("SIGKILL");
    assert_eq!(
        bed.net.wait_for_next_hops(VIP, 1).expect("route"),
        [host_ip(2)]
    );
    bed.check_streams(streams);
    bed.check_new_connections();
}

#[test]
fn no_stream_breaks_when_an_agent_restarts() {
    let mut bed = Bed::new("failover-restart");
    let bird = bed.agents[0].bird_pid().expect("the agent runs BIRD");
    let streams = bed.streams_on_both_hosts();
    let Bed { agents, net, .. } = &mut bed;
    agents[0].restart(&net.hosts[0].ns).expect("restart");
    // BIRD and the pinned data path carry on while no agent runs.
    assert_eq!(net.next_hops(VIP).expect("route").len(), 2);
    agents[0]
        .wait_for_backends(Duration::from_secs(20), |rows| {
            backends_of(rows, &format!("{VIP}:{PORT}/tcp")).len() == 3
        })
        .expect("the restarted agent programs the service");
    assert_eq!(
        bed.agents[0].bird_pid(),
        Some(bird),
        "the restarted agent took the running BIRD over"
    );
    assert_eq!(bed.net.next_hops(VIP).expect("route").len(), 2);
    bed.check_streams(streams);
    bed.check_new_connections();
}

#[test]
fn no_stream_breaks_when_an_lb_host_is_drained() {
    let mut bed = Bed::new("failover-drain");
    let streams = bed.streams_on_both_hosts();
    bed.agents[0].command(&["drain"]).expect("lb drain");
    assert_eq!(
        bed.net.wait_for_next_hops(VIP, 1).expect("route"),
        [host_ip(2)]
    );
    // Withdrawn: now it may stop.
    drop(bed.agents.remove(0));
    bed.check_streams(streams);
    bed.check_new_connections();
}
