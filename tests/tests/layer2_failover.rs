//! Several lb hosts on one segment announcing at layer 2 (`--announce arp`,
//! the default) against one API server: only the host the leader Lease
//! names answers ARP for the VIP, so the router's cache points at one host;
//! when that host dies, another takes the Lease, answers, and tells the
//! segment with gratuitous ARPs, and a connection through the VIP carries on
//! (direct server return: the nodes hold the connections, and every host's
//! Maglev sends a flow to the same node). While the API server cannot be
//! reached, the holder goes on answering.

use std::{
    net::{IpAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
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

/// Who holds the leader Lease, as the API server has it.
fn holder(server: &FakeApiServer) -> Option<String> {
    let lease = server
        .get::<Lease>(Some("lb-system"), "lb-controller")
        .ok()??;
    lease.spec?.holder_identity
}

/// The router's neighbour entry for the VIP: the MAC it sends the VIP's
/// packets to.
fn router_entry(bed: &ScaleOut) -> Result<Option<String>> {
    bed.router.neighbour_mac(HOST_IFACE, IpAddr::V4(VIP))
}

#[test]
fn the_lease_holder_answers_for_the_vip_and_another_host_takes_over() -> Result<()> {
    let bed = ScaleOut::new(2, 2)?;
    let _servers = bed.serve()?;
    // The router reaches the VIP on the segment: it must ARP for it.
    bed.router
        .ip(&format!("route add {VIP}/32 dev {HOST_IFACE}"))
        .context("on-link route to the VIP")?;
    let options = Options {
        address: ROUTER_IP,
        ..Options::default()
    };
    let mut server = FakeApiServer::start(Some(&bed.router), options)?;
    for member in &bed.nodes {
        server.apply(&node(&member.name, member.ip))?;
    }
    server.apply(&load_balancer(
        "edge",
        "web",
        &[(PORT.into(), NODE_PORT.into())],
    ))?;
    let kubeconfig =
        std::env::temp_dir().join(format!("lb-kubeconfig-l2-{}.yaml", std::process::id()));
    server.write_kubeconfig(&kubeconfig)?;
    let path = kubeconfig.display().to_string();
    let pool = format!("{VIP}/32");
    let lease = format!("{}s", LEASE.as_secs());
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| {
            let identity = format!("host-{i}");
            Agent::start_from(
                &bed.hosts[i].ns,
                &[HOST_IFACE],
                &["--kubeconfig", &path],
                &[
                    "--forwarding",
                    "dsr",
                    "--vip-pool",
                    &pool,
                    "--identity",
                    &identity,
                    "--leader-election-lease-duration",
                    &lease,
                    "--health-interval",
                    "0",
                ],
            )
        })
        .collect::<Result<_>>()?;
    let service = format!("{VIP}:{PORT}/tcp");
    for agent in &agents {
        agent.wait_for_backends(READY, |rows| backends_of(rows, &service).len() == 2)?;
    }
    let first = holder(&server).context("a Lease holder")?;
    let (held, other) = if first == "host-0" { (0, 1) } else { (1, 0) };
    let mac = |i: usize| bed.hosts[i].ns.mac(HOST_IFACE).map(fmt_mac);

    // The router learns the VIP from the holder alone.
    let vip = SocketAddrV4::new(VIP, PORT);
    let (client, greeting) = bed.client.enter(move || -> Result<_> {
        let client = LineClient::connect(vip, TIMEOUT)?;
        let greeting = client.greeting().to_owned();
        Ok((client, greeting))
    })??;
    assert_eq!(router_entry(&bed)?, Some(mac(held)?));
    ensure!(
        agents[held].counter("arp_reply")? >= 1,
        "the holder answered no ARP"
    );
    // Asked again, only the holder answers.
    let holder_alone_answers = || -> Result<()> {
        bed.router.ip(&format!("neigh flush {VIP}"))?;
        servers::connect_many(&bed.client, vip, 3, TIMEOUT);
        assert_eq!(router_entry(&bed)?, Some(mac(held)?));
        let other_answers = agents[other].counter("arp_reply")?;
        assert_eq!(other_answers, 0, "the other host answered ARP");
        Ok(())
    };
    for _ in 0..3 {
        holder_alone_answers()?;
    }

    // The API server goes away for longer than the Lease lasts: nobody can
    // take the Lease, and the holder goes on answering rather than leave the
    // segment with no answer.
    server.stop();
    std::thread::sleep(LEASE * 2);
    holder_alone_answers()?;
    server.restart(Some(&bed.router))?;

    // The holder's host dies: the other takes the Lease and tells the
    // router, which sends it the VIP's packets without asking.
    bed.hosts[held].unplug()?;
    agents[held].kill()?;
    let deadline = Instant::now() + READY;
    while router_entry(&bed)? != Some(mac(other)?) {
        ensure!(
            Instant::now() < deadline,
            "the router still sends the VIP to {:?}; the other host's log:\n{}",
            router_entry(&bed)?,
            agents[other].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        holder(&server).as_deref(),
        Some(format!("host-{other}").as_str())
    );
    let (node, answer) = bed.client.enter(move || -> Result<_> {
        let mut client = client;
        let answer = client.ask("still there?")?;
        Ok((client.greeting().to_owned(), answer))
    })??;
    assert_eq!(node, greeting);
    assert_eq!(answer, format!("{greeting} still there?"));
    let tally = servers::connect_many(&bed.client, vip, 10, TIMEOUT);
    assert_eq!(tally.values().sum::<usize>(), 10, "{tally:?}");
    let _ = std::fs::remove_file(&kubeconfig);
    Ok(())
}
