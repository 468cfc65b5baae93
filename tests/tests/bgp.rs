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
    bird,
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

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_router_learns_the_vip_while_its_service_has_healthy_backends() {
    let net = ScaleOut::new(1, 3).expect("topology");
    let mut servers: Vec<ServerGuard> = net.serve().expect("servers");
    let manifests = ManifestFile::new("bgp", &net.manifest()).expect("manifests");
    let mut args = net.bgp_args(0);
    args.extend(HEALTH.map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = net.start_agent(0, manifests.path(), &args).expect("agent");
    wait_programmed(&agent).expect("agent programs the service");

    assert_eq!(
        net.wait_for_next_hops(VIP, 1).expect("announced"),
        [host_ip(1)]
    );
    let router = net.router_bird().socket();
    wait_until(
        "BFD session up on the router",
        Duration::from_secs(10),
        || bird::bfd_up(&router, host_ip(1)).expect("birdc"),
    );
    assert!(
        bird::bfd_up(&agent.bird_socket(), ROUTER_IP).expect("agent's birdc"),
        "BFD up on the agent's side"
    );
    check_bgp_listing(&agent, true);

    // Every node stops answering: nothing healthy is left to send to.
    servers.clear();
    net.wait_for_next_hops(VIP, 0)
        .expect("withdrawn once no backend is healthy");
    check_bgp_listing(&agent, false);
    servers = net.start_servers().expect("servers");
    net.wait_for_next_hops(VIP, 1)
        .expect("announced again once backends are healthy");

    // The Service goes away.
    let nodes_only: Vec<String> = net
        .nodes
        .iter()
        .map(|n| manifests::ready_node_yaml(&n.name, &[n.ip]))
        .collect();
    manifests
        .write(&manifests::documents(&nodes_only))
        .expect("manifests");
    net.wait_for_next_hops(VIP, 0)
        .expect("withdrawn with its Service");
    manifests.write(&net.manifest()).expect("manifests");
    net.wait_for_next_hops(VIP, 1)
        .expect("announced with its Service back");

    // `lb down` withdraws and stops BIRD, which outlives the agent otherwise.
    let bird = agent.bird_pid().expect("the agent's BIRD runs");
    drop(agent);
    net.wait_for_next_hops(VIP, 0)
        .expect("withdrawn by lb down");
    assert!(
        !Path::new(&format!("/proc/{bird}")).exists(),
        "BIRD still runs after lb down"
    );
    drop(servers);
}

/// `lb bgp --json` shows the session with the router and, while it is
/// announced, the VIP's prefix.
fn check_bgp_listing(agent: &Agent, announcing: bool) {
    let listing = agent.query("bgp").expect("lb bgp").to_string();
    assert!(listing.contains(&ROUTER_IP.to_string()), "{listing}");
    assert_eq!(
        listing.contains(&format!("{VIP}/32")),
        announcing,
        "{listing}"
    );
}
