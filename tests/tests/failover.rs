//! Two lb hosts active-active behind a router that spreads the VIP over both
//! (ECMP, learnt over BGP with BFD), forwarding by direct server return to
//! three nodes that answer the client themselves. Sixty long-lived streams
//! run across both hosts while one host dies, has its agent restarted or is
//! drained: no stream may break or stall for 3 s, because the surviving host
//! sends a stream it never saw to the node the other host chose (Maglev).

use std::{
    net::{SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use lb_tests::{
    http,
    scale_out::{ActiveActive, Detection, PORT, VIP, host_ip, wait_programmed},
    servers,
    streams::{self, Streams},
};

const STREAMS: usize = 60;
const LINE_INTERVAL: Duration = Duration::from_millis(100);
const MAX_STALL: Duration = Duration::from_secs(3);
const TIMEOUT: Duration = Duration::from_secs(3);

fn vip() -> SocketAddr {
    SocketAddrV4::new(VIP, PORT).into()
}

fn start(tag: &str, detection: Detection) -> ActiveActive {
    ActiveActive::start(tag, "dsr", detection).expect("two lb hosts announcing the VIP")
}

/// Starts the streams and checks that both hosts carry some: every stream
/// is one flow on exactly one of them.
fn streams_on_both_hosts(bed: &ActiveActive) -> Streams {
    let streams = Streams::start(&bed.net.client, vip(), STREAMS, LINE_INTERVAL).expect("streams");
    std::thread::sleep(Duration::from_millis(500));
    let flows = bed.flows_per_host().expect("lb flows");
    assert!(
        flows.iter().all(|&n| n > 0),
        "the router does not spread the streams: flows per host {flows:?}"
    );
    assert_eq!(flows.iter().sum::<usize>(), STREAMS, "flows per host");
    streams
}

/// Lets the streams run on for a while, checks that the host left (agent
/// `survivor`, if one host is gone) carries every stream now, with an entry
/// for each it inherited, stops the streams and checks them; then new
/// connections must get through what is left.
fn check_streams_and_new_connections(
    bed: &ActiveActive,
    streams: Streams,
    survivor: Option<usize>,
) {
    std::thread::sleep(Duration::from_secs(2));
    if let Some(survivor) = survivor {
        let flows = bed.flows_per_host().expect("lb flows")[survivor];
        assert_eq!(flows, STREAMS, "flows on the surviving host");
    }
    let longest = streams::check(&streams.stop(), MAX_STALL).expect("streams");
    println!("longest stall: {longest:?}");
    let tally = servers::connect_many(&bed.net.client, vip(), 30, TIMEOUT);
    assert!(
        tally.keys().all(|node| node.starts_with("node-")),
        "answered by {tally:?}"
    );
}

#[test]
fn no_stream_breaks_when_an_lb_host_dies() {
    let mut bed = start("failover-death", Detection::Fast);
    let streams = streams_on_both_hosts(&bed);
    bed.kill_host(0).expect("host 1 dies");
    assert_eq!(
        bed.net.wait_for_next_hops(VIP, 1).expect("route"),
        [host_ip(2)]
    );
    check_streams_and_new_connections(&bed, streams, Some(1));
}

#[test]
fn no_stream_breaks_when_an_agent_restarts() {
    let mut bed = start("failover-restart", Detection::Tolerant);
    let bird = bed.agents[0].bird_pid().expect("the agent runs BIRD");
    let learnt = bed.net.settled_routes(VIP).expect("router's routes");
    let streams = streams_on_both_hosts(&bed);
    bed.agents[0]
        .restart(&bed.net.hosts[0].ns)
        .expect("restart");
    wait_programmed(&bed.agents[0]).expect("the restarted agent programs the service");
    // Let a restarted agent that withdraws for a moment be caught at it.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        bed.agents[0].bird_pid(),
        Some(bird),
        "the restarted agent took the running BIRD over"
    );
    // A flap would go unnoticed by the streams (the other host takes them
    // meanwhile), not by the router: its routes are the ones it had.
    let now = bed.net.learnt_routes(VIP).expect("router's routes");
    assert!(
        now.same_as(&learnt),
        "the route via the restarted host was withdrawn or announced again: \
         before {learnt}, after {now}"
    );
    check_streams_and_new_connections(&bed, streams, None);
}

#[test]
fn no_stream_breaks_when_an_lb_host_is_drained() {
    let mut bed = start("failover-drain", Detection::Tolerant);
    let streams = streams_on_both_hosts(&bed);
    bed.agents[0].command(&["drain"]).expect("lb drain");
    assert_eq!(
        bed.net.wait_for_next_hops(VIP, 1).expect("route"),
        [host_ip(2)]
    );
    // Its metrics say so, not only at the next change of a Service.
    let series = format!("lb_vip_announced{{vip=\"{VIP}\",mode=\"bgp\"}} ");
    let announced = || {
        let address = "127.0.0.1:9641".parse().expect("address");
        let (_, metrics) = http::get(&bed.net.hosts[0].ns, address, "/metrics").expect("metrics");
        let line = metrics.lines().find_map(|line| line.strip_prefix(&series));
        line.map(|value| value.parse::<f64>().expect("a number"))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while announced() != Some(0.0) {
        assert!(Instant::now() < deadline, "announced: {:?}", announced());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Withdrawn: now it may stop.
    drop(bed.agents.remove(0));
    check_streams_and_new_connections(&bed, streams, Some(0));
}
