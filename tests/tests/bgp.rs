//! `--announce bgp` end to end: the agent's own BIRD peers with a router
//! running the test's BIRD. The router's kernel table is the judge: the VIP
//! is there, via the lb host, exactly while its Service exists and has a
//! healthy backend; BFD guards the session.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::Agent,
    bird, http,
    manifests::{self, ManifestFile},
    scale_out::{ROUTER_IP, ScaleOut, VIP, host_ip, wait_programmed},
    servers::ServerGuard,
};

/// Checks fast and gives up after two failures: a Service whose nodes all
/// stop answering loses its announcement within about a second.
const HEALTH: [&str; 8] = [
    "--health-interval",
    "200ms",
    "--health-timeout",
    "200ms",
    "--health-fall",
    "2",
    "--health-rise",
    "1",
];

/// One lb host announcing the Service to the router, its node servers and
/// its manifests. Fields drop in order: the agent (whose `lb down` stops its
/// BIRD) before the namespaces.
struct Bed {
    agent: Agent,
    servers: Vec<ServerGuard>,
    manifests: ManifestFile,
    net: ScaleOut,
}

impl Bed {
    /// Returns once the router has the VIP via the host.
    fn new(tag: &str) -> Bed {
        let net = ScaleOut::new(1, 3).expect("topology");
        let servers = net.serve().expect("servers");
        let manifests = ManifestFile::new(tag, &net.manifest()).expect("manifests");
        let mut args = net.bgp_args(0);
        args.extend(HEALTH.map(str::to_owned));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = net.start_agent(0, manifests.path(), &args).expect("agent");
        wait_programmed(&agent).expect("agent programs the service");
        assert_eq!(
            net.wait_for_next_hops(VIP, 1).expect("announced"),
            [host_ip(1)]
        );
        Bed {
            agent,
            servers,
            manifests,
            net,
        }
    }
}

#[test]
fn the_router_learns_the_vip_with_bfd_while_its_service_exists() {
    let bed = Bed::new("bgp-service");
    let router = bed.net.router_bird().socket();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bird::bfd_up(&router, host_ip(1)).expect("router's birdc") {
        assert!(Instant::now() < deadline, "no BFD session up on the router");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        bird::bfd_up(&bed.agent.bird_socket(), ROUTER_IP).expect("agent's birdc"),
        "BFD up on the agent's side"
    );
    check_bgp_listing(&bed.agent, true);
    check_session_metrics(&bed.net);

    // The Service goes away, then comes back.
    let nodes_only: Vec<String> = bed
        .net
        .nodes
        .iter()
        .map(|n| manifests::ready_node_yaml(&n.name, &[n.ip]))
        .collect();
    bed.manifests
        .write(&manifests::documents(&nodes_only))
        .expect("manifests");
    bed.net
        .wait_for_next_hops(VIP, 0)
        .expect("withdrawn with its Service");
    check_bgp_listing(&bed.agent, false);
    bed.manifests.write(&bed.net.manifest()).expect("manifests");
    bed.net
        .wait_for_next_hops(VIP, 1)
        .expect("announced with its Service back");

    // A BIRD that dies is started again, and peers and announces anew.
    let killed = bed.agent.bird_pid().expect("the agent's BIRD runs");
    // SAFETY: a plain signal to a process of this test's agent.
    assert_eq!(unsafe { libc::kill(killed, libc::SIGKILL) }, 0, "kill BIRD");
    let deadline = Instant::now() + Duration::from_secs(10);
    while bed.agent.bird_pid().is_none_or(|pid| pid == killed) {
        assert!(
            Instant::now() < deadline,
            "no BIRD started after the first died"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    while !bird::bfd_up(&bed.agent.bird_socket(), ROUTER_IP).unwrap_or(false) {
        assert!(
            Instant::now() < deadline,
            "the new BIRD has no BFD session up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        bed.net
            .wait_for_next_hops(VIP, 1)
            .expect("announced by the new BIRD"),
        [host_ip(1)]
    );

    // `lb down` withdraws and stops BIRD, which outlives the agent otherwise.
    let Bed { agent, net, .. } = bed;
    let bird = agent.bird_pid().expect("the agent's BIRD runs");
    drop(agent);
    net.wait_for_next_hops(VIP, 0)
        .expect("withdrawn by lb down");
    assert!(
        !Path::new(&format!("/proc/{bird}")).exists(),
        "BIRD still runs after lb down"
    );
}

#[test]
fn the_vip_is_withdrawn_while_no_backend_is_healthy() {
    let mut bed = Bed::new("bgp-health");
    // Every node stops answering: nothing healthy is left to send to.
    bed.servers.clear();
    bed.net
        .wait_for_next_hops(VIP, 0)
        .expect("withdrawn once no backend is healthy");
    check_bgp_listing(&bed.agent, false);
    // The listings say so too, though every node stays in the ring (fail
    // open).
    settles("lb services and lb backends", || {
        let services = bed.agent.query("services").map_err(|e| e.to_string())?;
        let backends = bed.agent.query("backends").map_err(|e| e.to_string())?;
        let healthy = &services[0]["backends_healthy"];
        let states: Vec<&str> = backends
            .as_array()
            .ok_or("no backends")?
            .iter()
            .filter_map(|row| row["health"].as_str())
            .collect();
        let unhealthy = states.len() == 3 && !states.contains(&"healthy");
        (healthy == 0 && unhealthy)
            .then_some(())
            .ok_or(format!("{healthy} healthy, backends {states:?}"))
    });
    bed.servers = bed.net.start_servers().expect("servers");
    bed.net
        .wait_for_next_hops(VIP, 1)
        .expect("announced again once backends are healthy");
}

/// BFD packets are lost for a moment (a link blip, a loaded CPU): both ends
/// take the session down, and it comes back, with the VIP, within seconds
/// of the loss ending. BIRD's own default waits a minute after such an error
/// before it connects or takes a connection again (five after repeated
/// ones), so every lb host behind the blip would stay out of the router's
/// ECMP route that long.
#[test]
fn the_vip_is_back_within_seconds_of_a_bfd_blip() {
    let bed = Bed::new("bgp-bfd-blip");
    let drop_bfd = |action: &str| {
        for chain in ["INPUT", "OUTPUT"] {
            let rule = [action, chain, "-p", "udp", "--dport", "3784", "-j", "DROP"];
            bed.net
                .router
                .run(&[&["iptables"][..], &rule].concat())
                .expect("iptables in the router");
        }
    };
    drop_bfd("-A");
    bed.net
        .wait_for_next_hops(VIP, 0)
        .expect("withdrawn once BFD is down");
    drop_bfd("-D");
    assert_eq!(
        bed.net
            .wait_for_next_hops(VIP, 1)
            .expect("announced again within seconds"),
        [host_ip(1)]
    );
}

/// An agent restarted while no backend of its Service is healthy keeps the
/// VIP withdrawn: it starts from the earlier agent's verdicts, where it
/// would announce the VIP until its own checks failed `--health-fall` times
/// (three seconds here).
#[test]
fn the_vip_stays_withdrawn_across_an_agent_restart() {
    let mut bed = Bed::new("bgp-restart-unhealthy");
    bed.servers.clear();
    bed.net
        .wait_for_next_hops(VIP, 0)
        .expect("withdrawn once no backend is healthy");
    let mut args = bed.net.bgp_args(0);
    args.extend(["--health-interval", "1s", "--health-fall", "3"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    bed.agent
        .restart_with(&bed.net.hosts[0].ns, &args)
        .expect("the agent starts again");
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let hops = bed.net.next_hops(VIP).expect("the router's routes");
        assert!(
            hops.is_empty(),
            "announced again after the restart: {hops:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = bed.agent.log();
    assert!(
        log.contains("synced"),
        "the restarted agent never synced:\n{log}"
    );
}

/// An agent started again without BGP, over the state of one that ran with
/// it and died (its BIRD outlives it), configures that BIRD with no
/// sessions: it must not go on announcing what nobody serves over BGP.
#[test]
fn an_agent_without_bgp_silences_the_bird_an_earlier_agent_left() {
    let mut bed = Bed::new("bgp-leftover");
    bed.agent.kill().expect("the agent dies, its BIRD does not");
    let bird = bed.agent.bird_pid().expect("the BIRD left running");
    bed.agent
        .restart_with(&bed.net.hosts[0].ns, &[])
        .expect("the agent starts again, without BGP");
    bed.net
        .wait_for_next_hops(VIP, 0)
        .expect("withdrawn by the agent without BGP");
    assert_eq!(bed.agent.bird_pid(), Some(bird), "the same BIRD runs on");
}

/// The agent's metrics say its session with the router and that session's
/// BFD are up, as its BIRD does.
fn check_session_metrics(net: &ScaleOut) {
    let address = "127.0.0.1:9641".parse().expect("address");
    let peer = format!("peer=\"{ROUTER_IP}\"}}");
    settles("metrics", || {
        let (_, metrics) = http::get(&net.hosts[0].ns, address, "/metrics").expect("metrics");
        for name in ["lb_bgp_session_up", "lb_bfd_session_up"] {
            let line = metrics
                .lines()
                .find(|line| line.starts_with(&format!("{name}{{")) && line.contains(&peer))
                .ok_or_else(|| format!("no {name} for the router in\n{metrics}"))?;
            if !line.ends_with(" 1.0") {
                return Err(line.to_owned());
            }
        }
        Ok(())
    });
}

/// `lb bgp --json` shows the session with the router established with BFD
/// up and, while it is announced, the VIP's prefix.
fn check_bgp_listing(agent: &Agent, announcing: bool) {
    settles("lb bgp", || {
        let listing = agent.query("bgp").expect("lb bgp");
        listing_problem(&listing, announcing).map_err(|problem| format!("{problem}: {listing}"))
    });
}

/// Waits up to 10 s for `check` to pass, panicking with its last complaint.
/// Not at once: on a loaded machine BFD at 100 ms x 3 may flap and come
/// back, which is BFD doing its job, not what these tests look for.
fn settles(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match check() {
            Ok(()) => return,
            Err(problem) if Instant::now() >= deadline => panic!("{what}: {problem}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// What in `listing` is not as `check_bgp_listing` expects.
fn listing_problem(listing: &serde_json::Value, announcing: bool) -> Result<(), String> {
    let router = ROUTER_IP.to_string();
    let session = listing["sessions"]
        .as_array()
        .ok_or("no sessions")?
        .iter()
        .find(|s| s["peer"].as_str() == Some(router.as_str()))
        .ok_or("no session with the router")?;
    if session["state"] != "Established" || session["bfd"] != "Up" {
        return Err(format!(
            "session {} with BFD {}, not Established with BFD Up",
            session["state"], session["bfd"]
        ));
    }
    let vip = format!("{VIP}/32");
    let announced: Vec<&str> = listing["announced"]
        .as_array()
        .ok_or("no announced prefixes")?
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    let expected: &[&str] = if announcing { &[vip.as_str()] } else { &[] };
    if announced != expected {
        return Err(format!("announced {announced:?}, not {expected:?}"));
    }
    Ok(())
}
