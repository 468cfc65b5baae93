//! Several lb hosts on one segment announcing at layer 2 (`--announce arp`,
//! the default) against one API server: only the host the segment's Lease
//! (`--layer2-lease`) names answers ARP for the VIP, so the router's cache
//! points at one host; when that host dies, another takes the Lease,
//! answers, and tells the segment with gratuitous ARPs, and a connection
//! through the VIP carries on (direct server return: the nodes hold the
//! connections, and every host's Maglev sends a flow to the same node).
//! A holder's agent that restarts keeps the Lease; while the API server
//! cannot be reached, the holder goes on answering, and keeps the Lease when
//! it comes back. Hosts given different Leases (as on
//! different segments) each answer. Each host that starts answering says
//! so in an Event on the Service (`nodeAssigned`, as MetalLB's speaker).

use std::{
    net::{IpAddr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::events::v1::Event;
use lb_tests::{
    agent::{Agent, backends_of},
    fake_apiserver::{
        FakeApiServer, Options,
        fixtures::{load_balancer, node},
    },
    scale_out::{NODE_PORT, PORT, ROUTER_IP, ScaleOut, VIP},
    servers::{self, LineClient},
    topology::HOST_IFACE,
    xdp_bed::fmt_mac,
};

const READY: Duration = Duration::from_secs(20);
const TIMEOUT: Duration = Duration::from_secs(3);
/// `--leader-election-lease-duration`, short for a test.
const LEASE: Duration = Duration::from_secs(4);

/// Two lb hosts on the router's segment, whose agents watch an API server
/// in the router's namespace; the router reaches the VIP on the segment, so
/// it must ARP for it. (Fields drop in order: the agents first.)
struct Bed {
    agents: Vec<Agent>,
    server: FakeApiServer,
    kubeconfig: PathBuf,
    net: ScaleOut,
}

impl Bed {
    /// The agents with `--layer2-lease` `leases[i]` each, once both serve
    /// the VIP.
    fn start(tag: &str, leases: [&str; 2]) -> Result<Self> {
        let net = ScaleOut::new(2, 2)?;
        net.router
            .ip(&format!("route add {VIP}/32 dev {HOST_IFACE}"))
            .context("on-link route to the VIP")?;
        let options = Options {
            address: ROUTER_IP,
            ..Options::default()
        };
        let server = FakeApiServer::start(Some(&net.router), options)?;
        for member in &net.nodes {
            server.apply(&node(&member.name, member.ip))?;
        }
        let ports = [(PORT.into(), NODE_PORT.into())];
        server.apply(&load_balancer("edge", "web", &ports))?;
        let name = format!("lb-kubeconfig-{tag}-{}.yaml", std::process::id());
        let kubeconfig = std::env::temp_dir().join(name);
        server.write_kubeconfig(&kubeconfig)?;
        let path = kubeconfig.display().to_string();
        let (pool, lease) = (format!("{VIP}/32"), format!("{}s", LEASE.as_secs()));
        let agents: Vec<Agent> = (0..2)
            .map(|i| {
                let identity = format!("host-{i}");
                let flags = [
                    "--forwarding",
                    "dsr",
                    "--vip-pool",
                    &pool,
                    "--identity",
                    &identity,
                    "--leader-election-lease-duration",
                    &lease,
                    "--layer2-lease",
                    leases[i],
                    "--health-interval",
                    "0",
                ];
                let ns = &net.hosts[i].ns;
                Agent::start_from(ns, &[HOST_IFACE], &["--kubeconfig", &path], &flags)
            })
            .collect::<Result<_>>()?;
        let service = format!("{VIP}:{PORT}/tcp");
        for agent in &agents {
            agent.wait_for_backends(READY, |rows| backends_of(rows, &service).len() == 2)?;
        }
        Ok(Self {
            agents,
            server,
            kubeconfig,
            net,
        })
    }

    /// Who holds the Lease `name`, as the API server has it.
    fn holder(&self, name: &str) -> Option<String> {
        self.server.lease_holder(name)
    }

    /// The hosts the Service's `nodeAssigned` Events name, in the order
    /// they were recorded.
    fn announcers(&self) -> Result<Vec<String>> {
        let mut events: Vec<Event> = self
            .server
            .list::<Event>()?
            .into_iter()
            .filter(|event| {
                event.reason.as_deref() == Some("nodeAssigned")
                    && event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web")
            })
            .collect();
        // A repeat of an Event within minutes is a series of the first.
        events.sort_by_key(|event| {
            let series = event
                .series
                .as_ref()
                .map(|series| &series.last_observed_time);
            series.or(event.event_time.as_ref()).map(|time| time.0)
        });
        Ok(events
            .iter()
            .filter_map(|event| {
                let note = event.note.as_deref()?;
                let (_, from) = note.split_once(" from ")?;
                Some(from.split(' ').next()?.to_owned())
            })
            .collect())
    }

    /// Waits until the last `nodeAssigned` Event names `host`.
    fn wait_for_announcer(&self, host: &str) -> Result<Vec<String>> {
        let deadline = Instant::now() + READY;
        loop {
            let announcers = self.announcers()?;
            if announcers.last().map(String::as_str) == Some(host) {
                return Ok(announcers);
            }
            ensure!(
                Instant::now() < deadline,
                "no nodeAssigned Event names {host} last: {announcers:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The router's neighbour entry for the VIP: the MAC it sends the
    /// VIP's packets to.
    fn router_entry(&self) -> Result<Option<String>> {
        self.net.router.neighbour_mac(HOST_IFACE, IpAddr::V4(VIP))
    }

    fn mac(&self, host: usize) -> Result<String> {
        self.net.hosts[host].ns.mac(HOST_IFACE).map(fmt_mac)
    }

    /// The router asks for the VIP afresh, for three new connections.
    fn ask_again(&self) -> Result<()> {
        self.net.router.ip(&format!("neigh flush {VIP}"))?;
        servers::connect_many(&self.net.client, vip(), 3, TIMEOUT);
        Ok(())
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

fn vip() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, PORT)
}

#[test]
fn the_lease_holder_answers_for_the_vip_and_another_host_takes_over() -> Result<()> {
    let mut bed = Bed::start("l2", ["lb-layer2"; 2])?;
    let _servers = bed.net.serve()?;
    let first = bed.holder("lb-layer2").context("a Lease holder")?;
    let (held, other) = if first == "host-0" { (0, 1) } else { (1, 0) };

    // The router learns the VIP from the holder alone.
    let (client, greeting) = bed.net.client.enter(move || -> Result<_> {
        let client = LineClient::connect(vip(), TIMEOUT)?;
        let greeting = client.greeting().to_owned();
        Ok((client, greeting))
    })??;
    assert_eq!(bed.router_entry()?, Some(bed.mac(held)?));
    ensure!(
        bed.agents[held].counter("arp_reply")? >= 1,
        "the holder answered no ARP"
    );
    // Asked again, only the holder answers.
    let holder_alone_answers = |bed: &Bed| -> Result<()> {
        bed.ask_again()?;
        assert_eq!(bed.router_entry()?, Some(bed.mac(held)?));
        let other_answers = bed.agents[other].counter("arp_reply")?;
        assert_eq!(other_answers, 0, "the other host answered ARP");
        Ok(())
    };
    for _ in 0..3 {
        holder_alone_answers(&bed)?;
    }
    // The Service says which host answers for it; the other never did.
    let announcers = bed.wait_for_announcer(&first)?;
    assert!(
        announcers.iter().all(|host| *host == first),
        "{announcers:?}"
    );

    // The holder's agent is restarted: it keeps its Lease across the stop
    // (its data path answers on meanwhile) and takes it back, so nothing
    // moves and the other never answers.
    bed.agents[held].signal(libc::SIGTERM)?;
    bed.agents[held].wait_for_exit(READY)?;
    // Several of the other's looks at the Lease, which it would take if
    // it were given up.
    std::thread::sleep(LEASE / 2);
    assert_eq!(bed.holder("lb-layer2"), Some(first.clone()));
    bed.agents[held].restart(&bed.net.hosts[held].ns)?;
    std::thread::sleep(LEASE / 2);
    assert_eq!(bed.holder("lb-layer2"), Some(first.clone()));
    holder_alone_answers(&bed)?;

    // The API server goes away for longer than the Lease lasts: nobody can
    // take the Lease, and the holder goes on answering rather than leave the
    // segment with no answer. Back, it finds the holder renewing: time the
    // Lease could not be read does not count as time it went unrenewed.
    bed.server.stop();
    std::thread::sleep(LEASE * 2);
    holder_alone_answers(&bed)?;
    bed.server.restart(Some(&bed.net.router))?;
    std::thread::sleep(LEASE * 3 / 2);
    assert_eq!(bed.holder("lb-layer2"), Some(first.clone()));
    holder_alone_answers(&bed)?;

    // The holder's host dies: the other takes the Lease and tells the
    // router, which sends it the VIP's packets without asking.
    bed.net.hosts[held].unplug()?;
    bed.agents[held].kill()?;
    let deadline = Instant::now() + READY;
    while bed.router_entry()? != Some(bed.mac(other)?) {
        ensure!(
            Instant::now() < deadline,
            "the router still sends the VIP to {:?}; the other host's log:\n{}",
            bed.router_entry()?,
            bed.agents[other].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(bed.holder("lb-layer2"), Some(format!("host-{other}")));
    bed.wait_for_announcer(&format!("host-{other}"))?;
    let (node, answer) = bed.net.client.enter(move || -> Result<_> {
        let mut client = client;
        let answer = client.ask("still there?")?;
        Ok((client.greeting().to_owned(), answer))
    })??;
    assert_eq!(node, greeting);
    assert_eq!(answer, format!("{greeting} still there?"));
    let tally = servers::connect_many(&bed.net.client, vip(), 10, TIMEOUT);
    assert_eq!(tally.values().sum::<usize>(), 10, "{tally:?}");
    Ok(())
}

/// Hosts given different Leases (as hosts on different segments are) each
/// elect themselves: both answer.
#[test]
fn hosts_with_their_own_leases_each_answer() -> Result<()> {
    let bed = Bed::start("l2-apart", ["segment-a", "segment-b"])?;
    let _servers = bed.net.serve()?;
    assert_eq!(bed.holder("segment-a").as_deref(), Some("host-0"));
    assert_eq!(bed.holder("segment-b").as_deref(), Some("host-1"));
    for _ in 0..3 {
        bed.ask_again()?;
    }
    for (i, agent) in bed.agents.iter().enumerate() {
        let answers = agent.counter("arp_reply")?;
        ensure!(answers >= 3, "host {i} answered {answers} ARP requests");
    }
    // Each says so on the Service.
    let deadline = Instant::now() + READY;
    loop {
        let mut announcers = bed.announcers()?;
        announcers.sort();
        if announcers == ["host-0", "host-1"] {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "nodeAssigned Events name {announcers:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
