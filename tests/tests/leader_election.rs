//! Several lb hosts against one API server: the real `lb agent` twice (each
//! on its own interface, with its own pins), watching one fake API server.
//! The holder of the Lease `lb-controller` assigns addresses and writes the
//! statuses and Events; the other serves what the statuses show, assigns
//! nothing while the holder renews, and takes over when the holder freezes
//! (the Lease expires) or stops (it gives the Lease up).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;
use k8s_openapi::api::{coordination::v1::Lease, events::v1::Event};
use lb_tests::{
    agent::Agent,
    fake_apiserver::{
        Authorizer, FakeApiServer, Options,
        fixtures::{load_balancer, node},
    },
    http,
    kube_agent::KubeAgent,
    netns::{NetNs, veth},
};

const READY: Duration = Duration::from_secs(20);
const NS: &str = "shop";
/// Short, so that a takeover after a freeze fits a test.
const LEASE_DURATION: Duration = Duration::from_secs(4);
const FIRST_METRICS: &str = "127.0.0.1:9641";
const SECOND_METRICS: &str = "127.0.0.1:9642";

/// The flags both agents get; `identity` names each.
fn flags(identity: &str, metrics: &str) -> Vec<String> {
    [
        "--health-interval",
        "0",
        "--ring-size",
        "251",
        "--vip-pool",
        "198.51.100.0/28",
        "--leader-election-lease-duration",
        "4s",
        "--identity",
        identity,
        "--metrics-address",
        metrics,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Who holds the writer's Lease, as the API server has it.
fn holder(server: &FakeApiServer) -> Option<String> {
    server.lease_holder("lb-controller")
}

/// Each Service (`namespace/name`) the agent's data path serves, with its VIP.
fn served(agent: &Agent) -> BTreeMap<String, IpAddr> {
    let Ok(serde_json::Value::Array(rows)) = agent.query("services") else {
        return BTreeMap::new();
    };
    rows.iter()
        .filter_map(|row| {
            let name = row["name"].as_str()?;
            let owner = name.rsplit_once(':').map_or(name, |(owner, _)| owner);
            Some((owner.to_owned(), row["vip"].as_str()?.parse().ok()?))
        })
        .collect()
}

/// The agent's metrics, as a scrape reads them; `None` if it fails.
fn scrape(ns: &NetNs, metrics: &str) -> Option<String> {
    match http::get(ns, metrics.parse().ok()?, "/metrics") {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// The value of the unlabelled gauge `name` on the agent's metrics.
fn gauge(ns: &NetNs, metrics: &str, name: &str) -> Option<f64> {
    scrape(ns, metrics)?
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Asserts that `host` is the reporting instance of every one of `events`.
fn assert_reported_by(events: &[Event], host: &str) {
    for event in events {
        assert_eq!(event.reporting_instance.as_deref(), Some(host), "{event:?}");
    }
}

/// Each Service's VIP as its status shows it.
fn statuses(kube: &KubeAgent, names: &[&str]) -> BTreeMap<String, IpAddr> {
    names
        .iter()
        .filter_map(|name| {
            let vip = kube.vip(NS, name).ok()??;
            Some((format!("{NS}/{name}"), IpAddr::V4(vip)))
        })
        .collect()
}

/// The first host, holding the Lease: an agent on `lb0` in a namespace
/// that has `lb1` for the second, with the API server it watches. (Fields
/// drop in order: the agent before its namespace.)
struct Holder {
    first: KubeAgent,
    ns: NetNs,
}

impl Holder {
    fn start(name: &str) -> Result<Self> {
        let ns = NetNs::new(name)?;
        veth(&ns, "lb0", &ns, "peer0")?;
        veth(&ns, "lb1", &ns, "peer1")?;
        let extra = flags("host-a", FIRST_METRICS);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let first = KubeAgent::start(&ns, &["lb0"], Options::default(), &extra)?;
        first.wait_for("host-a holding the Lease", READY, || {
            (holder(&first.server).as_deref() == Some("host-a")).then_some(())
        })?;
        Ok(Self { first, ns })
    }
}

/// The second host: an agent on `lb1` with a kubeconfig for `server`.
struct Second {
    agent: Agent,
    kubeconfig: PathBuf,
}

impl Second {
    /// Starts it as `identity` with `more` flags; `ns` names its kubeconfig,
    /// so tests that run at once do not share one.
    fn start(ns: &NetNs, server: &FakeApiServer, identity: &str, more: &[&str]) -> Result<Self> {
        let kubeconfig = std::env::temp_dir().join(format!("lb-kubeconfig-{}.yaml", ns.name()));
        server.write_kubeconfig(&kubeconfig)?;
        let path = kubeconfig.display().to_string();
        let mut extra = flags(identity, SECOND_METRICS);
        extra.extend(more.iter().map(|flag| (*flag).to_owned()));
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let agent = Agent::start_from(ns, &["lb1"], &["--kubeconfig", &path], &extra)?;
        Ok(Self { agent, kubeconfig })
    }

    /// Waits as [`KubeAgent::wait_for`] does, with this agent's log too on
    /// failure.
    fn agent_wait<T>(
        &self,
        first: &KubeAgent,
        what: &str,
        mut check: impl FnMut() -> Option<T>,
    ) -> Result<T> {
        first
            .wait_for(what, READY, &mut check)
            .map_err(|e| e.context(format!("host-b's log:\n{}", self.agent.log())))
    }
}

impl Drop for Second {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

#[test]
fn one_elected_agent_assigns_and_the_other_takes_over() -> Result<()> {
    let bed = Holder::start("elect")?;
    let (first, ns) = (&bed.first, &bed.ns);
    let server = &first.server;
    let second = Second::start(ns, server, "host-b", &["--backend-metrics", "false"])?;
    for index in 1..=2 {
        let ip = std::net::Ipv4Addr::new(10, 1, 0, 10 + index);
        server.apply(&node(&format!("node-{index}"), ip))?;
    }
    let mut names = vec!["s0", "s1", "s2", "s3", "s4", "s5"];
    for (port, name) in (30080..).zip(&names) {
        server.apply(&load_balancer(NS, name, &[(80, port)]))?;
    }

    // Every Service gets one address, which both hosts serve it on.
    let assigned = first.wait_for("both hosts serving every status", READY, || {
        let shown = statuses(first, &names);
        (shown.len() == names.len()
            && served(&first.agent) == shown
            && served(&second.agent) == shown)
            .then_some(shown)
    })?;
    let mut vips: Vec<IpAddr> = assigned.values().copied().collect();
    vips.sort();
    vips.dedup();
    assert_eq!(vips.len(), names.len(), "one address each: {assigned:?}");
    // Each says on its metrics whether it assigns.
    assert_eq!(gauge(ns, FIRST_METRICS, "lb_assigns_addresses"), Some(1.0));
    assert_eq!(gauge(ns, SECOND_METRICS, "lb_assigns_addresses"), Some(0.0));
    assert_eq!(gauge(ns, SECOND_METRICS, "lb_maps_readable"), Some(1.0));
    // The second was started with --backend-metrics false: the same
    // per-service series, no per-backend ones.
    for (metrics, backend_series) in [(FIRST_METRICS, true), (SECOND_METRICS, false)] {
        let body = scrape(ns, metrics).expect("a scrape");
        let count = |prefix: &str| body.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(count("lb_service_packets_total{"), names.len(), "{metrics}");
        let backends = if backend_series { 2 * names.len() } else { 0 };
        assert_eq!(count("lb_backend_packets_total{"), backends, "{metrics}");
    }
    // Only the holder records Events.
    let events = first.wait_for("an IPAllocated Event per Service", READY, || {
        let events = server.list::<Event>().ok()?;
        (events.len() >= names.len()).then_some(events)
    })?;
    assert_reported_by(&events, "host-a");

    // The holder freezes: the other assigns nothing while the Lease holds,
    // then takes it and assigns.
    first.agent.signal(libc::SIGSTOP)?;
    let frozen = Instant::now();
    server.apply(&load_balancer(NS, "late", &[(80, 30090)]))?;
    // And one stops being a load balancer: its status still shows the
    // address, which the frozen holder cannot clear.
    let mut cluster_ip = load_balancer(NS, "s0", &[(80, 30080)]);
    cluster_ip.spec.as_mut().expect("a spec").type_ = Some("ClusterIP".into());
    server.apply(&cluster_ip)?;
    std::thread::sleep(LEASE_DURATION / 2);
    assert_eq!(
        first.vip(NS, "late")?,
        None,
        "assigned while the Lease held"
    );
    assert!(!served(&second.agent).contains_key("shop/late"));
    assert_eq!(holder(server).as_deref(), Some("host-a"));
    let late = second.agent_wait(first, "host-b assigning after the Lease expired", || {
        let vip = first.vip(NS, "late").ok()??;
        let serving = served(&second.agent).get("shop/late") == Some(&IpAddr::V4(vip));
        (serving && holder(server).as_deref() == Some("host-b")).then_some(vip)
    })?;
    // What the new holder saw given up while it followed, it clears.
    first.wait_for("host-b clearing the status of s0", READY, || {
        first.vip(NS, "s0").ok()?.is_none().then_some(())
    })?;
    names.retain(|name| *name != "s0");
    // The holder last renewed at most a retry period (a sixth of the
    // duration) before it froze.
    assert!(
        frozen.elapsed() >= LEASE_DURATION - LEASE_DURATION / 6,
        "taken over {:?} after the freeze, before the Lease expired",
        frozen.elapsed()
    );
    // (s0's address is free again.)
    let taken = assigned.iter().filter(|(owner, _)| *owner != "shop/s0");
    assert!(
        !taken.clone().any(|(_, vip)| *vip == IpAddr::V4(late)),
        "{late} was taken already: {assigned:?}"
    );

    // The former holder wakes up as a follower and serves the new address.
    first.agent.signal(libc::SIGCONT)?;
    names.push("late");
    first.wait_for("host-a serving what host-b assigned", READY, || {
        let shown = statuses(first, &names);
        (served(&first.agent) == shown && shown.len() == names.len()).then_some(())
    })?;
    assert_eq!(holder(server).as_deref(), Some("host-b"));
    // The new holder recorded the new address; the former one, awake, did
    // not.
    let late_events = first.wait_for("the Event of late's address", READY, || {
        let events = server.list::<Event>().ok()?;
        let late: Vec<Event> = events
            .into_iter()
            .filter(|event| {
                // Not the layer 2 speaker's nodeAssigned: any host may be it.
                let regarding = event.regarding.as_ref();
                event.reason.as_deref() == Some("IPAllocated")
                    && regarding.and_then(|object| object.name.as_deref()) == Some("late")
            })
            .collect();
        (!late.is_empty()).then_some(late)
    })?;
    assert_reported_by(&late_events, "host-b");
    // It may still think it holds the Lease until its next look at it.
    first.wait_for("host-a saying it no longer assigns", READY, || {
        (gauge(ns, FIRST_METRICS, "lb_assigns_addresses") == Some(0.0)).then_some(())
    })?;
    assert_eq!(gauge(ns, SECOND_METRICS, "lb_assigns_addresses"), Some(1.0));

    // The holder stops: it gives the Lease up, and the other takes over
    // without waiting for it to expire.
    let stopping = Instant::now();
    second.agent.signal(libc::SIGTERM)?;
    first.wait_for("host-a holding the Lease again", READY, || {
        (holder(server).as_deref() == Some("host-a")).then_some(())
    })?;
    // Had it expired instead, that would have taken the Lease's duration
    // from the last renewal, at most a retry period before the signal.
    assert!(
        stopping.elapsed() < LEASE_DURATION - LEASE_DURATION / 6,
        "taken over {:?} after SIGTERM: the Lease was not given up",
        stopping.elapsed()
    );
    second.agent.wait_for_exit(READY)?;
    server.apply(&load_balancer(NS, "after", &[(80, 30091)]))?;
    first.wait_for_vip(NS, "after", READY)?;

    // A scrape that cannot read the pinned maps says so, rather than look
    // like a data path serving nothing.
    // (Pins of a layout this lb does not know make it refuse to read.)
    let other_layout = first.agent.bpffs().join("v9999");
    std::fs::create_dir(&other_layout)?;
    let unreadable = gauge(ns, FIRST_METRICS, "lb_maps_readable");
    std::fs::remove_dir(&other_layout)?;
    assert_eq!(unreadable, Some(0.0));
    assert_eq!(gauge(ns, FIRST_METRICS, "lb_maps_readable"), Some(1.0));
    Ok(())
}

/// Each host tells what its own data path cannot serve, the follower too:
/// here the follower forwards with direct server return and has no route to
/// the node (node addresses carry no traffic in this bed), the holder NATs.
/// The follower's Event names it as its reporting instance.
#[test]
fn a_follower_tells_what_its_own_data_path_cannot_serve() -> Result<()> {
    let bed = Holder::start("notprog")?;
    let (first, ns) = (&bed.first, &bed.ns);
    let server = &first.server;
    let second = Second::start(ns, server, "host-b", &["--forwarding", "dsr"])?;
    server.apply(&node("node-1", std::net::Ipv4Addr::new(10, 1, 0, 11)))?;
    server.apply(&load_balancer(NS, "web", &[(80, 30080)]))?;
    let vip = first.wait_for_vip(NS, "web", READY)?;
    let reporters = second.agent_wait(first, "host-b's NotProgrammed Event", || {
        let events = server.list::<Event>().ok()?;
        let reporters: Vec<String> = events
            .iter()
            .filter(|event| event.reason.as_deref() == Some("NotProgrammed"))
            .filter(|event| {
                let note = event.note.as_deref().unwrap_or_default();
                note.contains(&format!(
                    "{vip}:80/tcp is not served: no route to node node-1"
                ))
            })
            .filter_map(|event| event.reporting_instance.clone())
            .collect();
        (!reporters.is_empty()).then_some(reporters)
    })?;
    assert_eq!(reporters, ["host-b"]);
    assert!(served(&second.agent).is_empty());
    assert_eq!(served(&first.agent).get("shop/web"), Some(&IpAddr::V4(vip)));
    Ok(())
}

/// Two agents given one identity (a host name used twice) do not both
/// write: each would take a Lease held under its own name as its own, from
/// before a restart. The one whose write the other overwrites under that
/// name stops leading and says why; one leads, and stays the only one.
#[test]
fn two_agents_given_one_identity_do_not_both_lead() -> Result<()> {
    let bed = Holder::start("twins")?;
    let (first, ns) = (&bed.first, &bed.ns);
    let second = Second::start(ns, &first.server, "host-a", &[])?;
    let assigning = || {
        [FIRST_METRICS, SECOND_METRICS].map(|metrics| gauge(ns, metrics, "lb_assigns_addresses"))
    };
    let twin = "another agent renews the Lease under this agent's identity";
    second.agent_wait(first, "one agent finding it has a twin", || {
        [first.agent.log(), second.agent.log()]
            .iter()
            .any(|log| log.contains(twin))
            .then_some(())
    })?;
    let settled = second.agent_wait(first, "one of the two assigning", || {
        let now = assigning();
        let values: Vec<f64> = now.iter().flatten().copied().collect();
        (values.len() == 2 && values.iter().sum::<f64>() == 1.0).then_some(now)
    })?;
    // For several renewals of the Lease.
    let until = Instant::now() + LEASE_DURATION * 2;
    while Instant::now() < until {
        assert_eq!(
            assigning(),
            settled,
            "host-b's log:\n{}",
            second.agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let follower = match settled[0] {
        Some(0.0) => first.agent.log(),
        _ => second.agent.log(),
    };
    assert!(follower.contains(twin), "{follower}");
    Ok(())
}

/// An edit of the Lease that renews nothing (a label, as tools add) is not
/// taken for a twin's renewal: the holder keeps leading.
#[test]
fn a_label_on_the_lease_is_not_a_twin() -> Result<()> {
    let bed = Holder::start("edited")?;
    let (first, ns) = (&bed.first, &bed.ns);
    first.server.cluster(|cluster| -> Result<()> {
        let mut lease = cluster
            .get::<Lease>(Some("lb-system"), "lb-controller")?
            .expect("the holder's Lease");
        lease.metadata.labels = Some([("team".to_owned(), "edge".to_owned())].into());
        cluster.apply(&lease)?;
        Ok(())
    })?;
    // For several renewals of the Lease.
    let until = Instant::now() + LEASE_DURATION * 2;
    while Instant::now() < until {
        let assigning = gauge(ns, FIRST_METRICS, "lb_assigns_addresses");
        assert_eq!(assigning, Some(1.0), "{}", first.agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(holder(&first.server).as_deref(), Some("host-a"));
    Ok(())
}

const RBAC: &str = include_str!("../../examples/kubernetes/rbac.yaml");

/// An agent the API server forbids the Leases (RBAC from before elections)
/// assigns nothing, but answers ARP and NDP for the VIPs on its own, as
/// before elections: an upgrade that forgot the new RBAC leaves the VIPs
/// reachable.
#[test]
fn an_agent_forbidden_the_leases_still_answers_at_layer2() -> Result<()> {
    let without_leases: Vec<&str> = RBAC
        .split("\n---\n")
        .filter(|document| !document.contains("lb-leader-election"))
        .collect();
    answers_at_layer2_alone(&without_leases.join("\n---\n"))
}

/// The same when it may read the Leases but not create one, and there is
/// none: nobody can hold it (it stayed silent, as did every agent).
#[test]
fn an_agent_that_cannot_create_the_lease_still_answers_at_layer2() -> Result<()> {
    let create = r#"verbs: ["get", "create", "update"]"#;
    assert!(RBAC.contains(create), "the leases' verbs");
    answers_at_layer2_alone(&RBAC.replace(create, r#"verbs: ["get", "update"]"#))
}

/// An agent under the RBAC of `rbac` answers ARP and NDP on its own and
/// assigns nothing, and the API server refused it something of the Leases.
fn answers_at_layer2_alone(rbac: &str) -> Result<()> {
    let options = Options {
        rbac: Some(Authorizer::from_manifest(rbac)?),
        ..Options::default()
    };
    let ns = NetNs::new("forbid")?;
    veth(&ns, "lb0", &ns, "peer0")?;
    let extra = flags("host-a", FIRST_METRICS);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let agent = KubeAgent::start(&ns, &["lb0"], options, &extra)?;
    agent.wait_for("the agent answering at layer 2", READY, || {
        (gauge(&ns, FIRST_METRICS, "lb_answers_layer2") == Some(1.0)).then_some(())
    })?;
    assert_eq!(gauge(&ns, FIRST_METRICS, "lb_assigns_addresses"), Some(0.0));
    assert!(
        agent
            .server
            .denied()
            .iter()
            .any(|denied| denied.contains("leases")),
        "{:?}",
        agent.server.denied()
    );
    Ok(())
}
