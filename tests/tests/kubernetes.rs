//! The Kubernetes control plane: the real `lb agent` watching a fake API
//! server through kube-rs, as it would a cluster. Checked through what the
//! agent writes back (status, Events) and what it programs (`lb services`,
//! `lb backends`). Node addresses here carry no traffic, so health checks are
//! off; `kubernetes_end_to_end.rs` sends real connections.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{Context as _, Result};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
    events::v1::Event,
};
use lb_tests::{
    fake_apiserver::{
        Authorizer, FakeApiServer, Options,
        fixtures::{
            Pod, annotated, endpoint_slice, ip_families, load_balancer, local, node, not_ready,
            with_internal_ip,
        },
    },
    kube_agent::{KubeAgent, ServiceAccount},
    metallb::pool,
    netns::{NetNs, veth},
};

const READY: Duration = Duration::from_secs(20);
const NS: &str = "shop";

/// An agent attached to a veth in its own namespace, with the API server it
/// watches on that namespace's loopback.
struct Bed {
    kube: KubeAgent,
    ns: NetNs,
}

impl std::ops::Deref for Bed {
    type Target = KubeAgent;
    fn deref(&self) -> &KubeAgent {
        &self.kube
    }
}

fn bed(options: Options, flags: &[&str]) -> Result<Bed> {
    let ns = NetNs::new("k8s")?;
    veth(&ns, "lb0", &ns, "peer0")?;
    let mut extra = vec!["--health-interval", "0", "--ring-size", "251"];
    extra.extend(flags);
    let kube = KubeAgent::start(&ns, &["lb0"], options, &extra)?;
    Ok(Bed { kube, ns })
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("an IPv4 address")
}

fn node_ip(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, 10 + index)
}

fn node_ip6(index: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 10 + u16::from(index))
}

/// (VIP, port) of every service `lb services` lists, IPv4 first.
fn frontends(bed: &Bed) -> Vec<(IpAddr, u64)> {
    let mut rows: Vec<(IpAddr, u64)> = bed
        .rows("services")
        .iter()
        .filter_map(|row| Some((row["vip"].as_str()?.parse().ok()?, row["port"].as_u64()?)))
        .collect();
    rows.sort();
    rows
}

/// Waits until the backends of TCP port 80 of `vip` are exactly `nodes`, as
/// (name, gets new flows) pairs: weight and Maglev share both positive, or both
/// zero (draining).
fn wait_for_backends(bed: &Bed, vip: &str, nodes: &[(&str, bool)]) -> Result<()> {
    let want: BTreeMap<String, bool> = nodes
        .iter()
        .map(|&(n, live)| (n.to_owned(), live))
        .collect();
    let mut got = BTreeMap::new();
    let waited = bed.wait_for(&format!("backends of {vip}:80 = {want:?}"), READY, || {
        got = bed.backends(vip.parse::<IpAddr>().expect("an IP address"), 80)?;
        let live = got
            .iter()
            .map(|(node, &(weight, share))| (node.clone(), (weight > 0, share > 0.0)));
        let live: BTreeMap<String, bool> = live
            .filter(|(_, (weighted, in_ring))| weighted == in_ring)
            .map(|(node, (weighted, _))| (node, weighted))
            .collect();
        (live == want && got.len() == want.len()).then_some(())
    });
    waited.with_context(|| format!("last seen (weight, share): {got:?}"))
}

/// Events about one Service with one reason.
fn events(bed: &Bed, service: &str, reason: &str) -> Vec<Event> {
    let events = bed.server.list::<Event>().expect("listing Events");
    events
        .into_iter()
        .filter(|event| {
            event.reason.as_deref() == Some(reason)
                && event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(service)
        })
        .collect()
}

fn wait_for_event(bed: &Bed, service: &str, reason: &str, note: &str) -> Result<()> {
    bed.wait_for(&format!("a {reason} Event for {service}"), READY, || {
        let events = events(bed, service, reason);
        events
            .iter()
            .any(|event| event.note.as_deref().is_some_and(|n| n.contains(note)))
            .then_some(())
    })
}

#[test]
fn vips_are_allocated_written_to_status_and_released() -> Result<()> {
    let bed = bed(
        Options::default(),
        &[
            "--vip-pool",
            "198.51.100.0/29",
            "--pool",
            "internal=203.0.113.10-203.0.113.11",
        ],
    )?;
    bed.server.apply(&node("node-1", node_ip(1)))?;
    let mut other_class = load_balancer(NS, "e", &[(80, 30084)]);
    other_class.spec.as_mut().unwrap().load_balancer_class = Some("example.com/other".into());
    let mut requested_by_field = load_balancer(NS, "d", &[(80, 30083)]);
    requested_by_field.spec.as_mut().unwrap().load_balancer_ip = Some("198.51.100.5".into());
    for service in [
        load_balancer(NS, "a", &[(80, 30080)]),
        annotated(
            load_balancer(NS, "b", &[(80, 30081)]),
            "lb.dev/pool",
            "internal",
        ),
        annotated(
            load_balancer(NS, "c", &[(80, 30082)]),
            "lb.dev/address",
            "198.51.100.6",
        ),
        other_class,
        requested_by_field.clone(),
    ] {
        bed.server.apply(&service)?;
    }
    let want = [
        ("a", "198.51.100.1"),
        ("b", "203.0.113.10"),
        ("c", "198.51.100.6"),
        ("d", "198.51.100.5"),
    ];
    for (name, vip) in want {
        assert_eq!(bed.wait_for_vip(NS, name, READY)?, ip(vip), "{name}");
        // kube-proxy takes packets for the VIP itself (direct server return).
        let service: Service = bed.server.get(Some(NS), name)?.context("the Service")?;
        let modes: Vec<Option<String>> = service
            .status
            .and_then(|status| status.load_balancer?.ingress)
            .unwrap_or_default()
            .into_iter()
            .map(|ingress| ingress.ip_mode)
            .collect();
        assert_eq!(modes, [Some("VIP".to_owned())], "{name}");
    }
    let mut served: Vec<(IpAddr, u64)> = want.iter().map(|(_, vip)| (ip(vip).into(), 80)).collect();
    served.sort();
    bed.wait_for("every VIP programmed", READY, || {
        (frontends(&bed) == served).then_some(())
    })?;
    // Another controller's Service is neither served nor touched.
    assert_eq!(bed.vip(NS, "e")?, None);
    wait_for_event(&bed, "a", "IPAllocated", "Assigned IP 198.51.100.1")?;

    // Deleting a Service, or making it a ClusterIP one, releases its VIP.
    bed.server.delete::<Service>(Some(NS), "a")?;
    let mut cluster_ip = requested_by_field;
    cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    bed.server.apply(&cluster_ip)?;
    let left = vec![
        (ip("198.51.100.6").into(), 80),
        (ip("203.0.113.10").into(), 80),
    ];
    bed.wait_for("a and d no longer served", READY, || {
        (frontends(&bed) == left && bed.vip(NS, "d").is_ok_and(|vip| vip.is_none())).then_some(())
    })?;
    bed.server.apply(&load_balancer(NS, "f", &[(80, 30085)]))?;
    assert_eq!(bed.wait_for_vip(NS, "f", READY)?, ip("198.51.100.1"));
    Ok(())
}

/// The RBAC the README points to grants every request the agent makes: with
/// the API server enforcing it, a Service gets its VIP from an IPAddressPool
/// (MetalLB's namespace), its status and its Event, gives the VIP up when it
/// stops being a load balancer, and nothing the agent asked for (lists and
/// watches of every kind it reads, Secrets included) was refused.
#[test]
fn the_example_rbac_grants_every_request_of_the_agent() -> Result<()> {
    let manifest = include_str!("../../examples/kubernetes/rbac.yaml");
    let options = Options {
        rbac: Some(Authorizer::from_manifest(manifest)?),
        metallb_crds: true,
        ..Options::default()
    };
    let bed = bed(options, &[])?;
    bed.server.apply(&pool("pool", &["198.51.100.0/29"]))?;
    bed.server.apply(&node("node-1", node_ip(1)))?;
    let service = load_balancer(NS, "a", &[(80, 30080)]);
    bed.server.apply(&service)?;
    // MetalLB's pools hand out their first address too (no avoidBuggyIPs).
    assert_eq!(bed.wait_for_vip(NS, "a", READY)?, ip("198.51.100.0"));
    wait_for_event(&bed, "a", "IPAllocated", "Assigned IP 198.51.100.0")?;
    let mut cluster_ip = service;
    cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    bed.server.apply(&cluster_ip)?;
    bed.wait_for("the VIP released", READY, || {
        bed.vip(NS, "a")
            .is_ok_and(|vip| vip.is_none())
            .then_some(())
    })?;
    assert_eq!(bed.server.denied(), Vec::<String>::new());
    Ok(())
}

/// A Service the data path cannot serve is told so in an Event: with direct
/// server return, a node the lb host has no on-link route to (here none:
/// node addresses carry no traffic in this bed).
#[test]
fn a_service_the_data_path_cannot_serve_gets_an_event() -> Result<()> {
    let bed = bed(
        Options::default(),
        &["--vip-pool", "198.51.100.0/29", "--forwarding", "dsr"],
    )?;
    bed.server.apply(&node("node-1", node_ip(1)))?;
    bed.server
        .apply(&load_balancer(NS, "web", &[(80, 30080)]))?;
    let vip = bed.wait_for_vip(NS, "web", READY)?;
    wait_for_event(
        &bed,
        "web",
        "NotProgrammed",
        &format!("{vip}:80/tcp is not served: no route to node node-1 (10.1.0.11)"),
    )?;
    assert!(frontends(&bed).is_empty(), "{:?}", frontends(&bed));
    Ok(())
}

#[test]
fn conflicts_and_pool_exhaustion_raise_events() -> Result<()> {
    let bed = bed(
        Options::default(),
        &["--pool", "small=198.51.100.1-198.51.100.2"],
    )?;
    let shared = |name, port, node_port| {
        annotated(
            load_balancer(NS, name, &[(port, node_port)]),
            "lb.dev/address",
            "198.51.100.9",
        )
    };
    for service in [
        load_balancer(NS, "x", &[(80, 30080)]),
        load_balancer(NS, "y", &[(80, 30081)]),
        shared("p", 80, 30082),
        shared("q", 443, 30083),
    ] {
        bed.server.apply(&service)?;
    }
    for (name, vip) in [
        ("x", "198.51.100.1"),
        ("y", "198.51.100.2"),
        ("p", "198.51.100.9"),
        ("q", "198.51.100.9"),
    ] {
        assert_eq!(bed.wait_for_vip(NS, name, READY)?, ip(vip), "{name}");
    }
    // The pool is empty; x's address is not up for sharing; p already has
    // port 80 of the shared address.
    for service in [
        load_balancer(NS, "z", &[(80, 30084)]),
        annotated(
            load_balancer(NS, "w", &[(8080, 30085)]),
            "lb.dev/address",
            "198.51.100.1",
        ),
        shared("r", 80, 30086),
    ] {
        bed.server.apply(&service)?;
    }
    wait_for_event(
        &bed,
        "z",
        "AllocationFailed",
        "VIP pool small has no free IPv4 address left",
    )?;
    wait_for_event(
        &bed,
        "w",
        "AddressConflict",
        "198.51.100.1 is already used by shop/x",
    )?;
    wait_for_event(
        &bed,
        "r",
        "AddressConflict",
        "already used by shop/p on an overlapping port",
    )?;
    for name in ["z", "w", "r"] {
        assert_eq!(bed.vip(NS, name)?, None, "{name}");
    }
    let vip9 = ip("198.51.100.9").into();
    assert!(
        frontends(&bed).contains(&(vip9, 443)),
        "{:?}",
        frontends(&bed)
    );

    // A problem is reported once while it lasts, not at every change.
    bed.server.apply(&node("node-1", node_ip(1)))?;
    wait_for_backends(&bed, "198.51.100.1", &[("node-1", true)])?;
    let reported = events(&bed, "z", "AllocationFailed");
    assert_eq!(reported.len(), 1);
    assert!(
        reported[0].series.is_none(),
        "reported again: {:?}",
        reported[0].series
    );

    // Freed addresses go to who asks: w requested x's; z gets y's.
    bed.server.delete::<Service>(Some(NS), "x")?;
    assert_eq!(bed.wait_for_vip(NS, "w", READY)?, ip("198.51.100.1"));
    bed.server.delete::<Service>(Some(NS), "y")?;
    assert_eq!(bed.wait_for_vip(NS, "z", READY)?, ip("198.51.100.2"));
    Ok(())
}

#[test]
fn local_policy_follows_endpoint_slices() -> Result<()> {
    let bed = bed(Options::default(), &[])?;
    for index in 1..=3 {
        bed.server
            .apply(&node(&format!("node-{index}"), node_ip(index)))?;
    }
    let web = annotated(
        local(load_balancer(NS, "web", &[(80, 30080)])),
        "lb.dev/address",
        "198.51.100.1",
    );
    bed.server.apply(&web)?;
    let slice = |pods: &[(&str, Pod)]| endpoint_slice(NS, "web", pods);
    bed.server.apply(&slice(&[
        ("node-1", Pod::Ready),
        ("node-2", Pod::Terminating),
    ]))?;
    // node-2 only drains: programmed for its flows, out of the Maglev table.
    let service = "198.51.100.1";
    wait_for_backends(&bed, service, &[("node-1", true), ("node-2", false)])?;
    let stored: Service = bed.server.get(Some(NS), "web")?.expect("web");
    let health_port = stored.spec.unwrap().health_check_node_port;
    assert!(
        health_port.is_some(),
        "the API server allocates a healthCheckNodePort"
    );

    bed.server.apply(&slice(&[("node-3", Pod::Ready)]))?;
    wait_for_backends(&bed, service, &[("node-3", true)])?;
    bed.server.delete::<EndpointSlice>(Some(NS), "web-slice")?;
    wait_for_backends(&bed, service, &[])?;
    Ok(())
}

#[test]
fn nodes_join_leave_and_turn_not_ready() -> Result<()> {
    let bed = bed(Options::default(), &[])?;
    let web = annotated(
        load_balancer(NS, "web", &[(80, 30080)]),
        "lb.dev/address",
        "198.51.100.1",
    );
    bed.server.apply(&web)?;
    let service = "198.51.100.1";
    for index in 1..=2 {
        bed.server
            .apply(&node(&format!("node-{index}"), node_ip(index)))?;
    }
    wait_for_backends(&bed, service, &[("node-1", true), ("node-2", true)])?;
    bed.server.apply(&node("node-3", node_ip(3)))?;
    wait_for_backends(
        &bed,
        service,
        &[("node-1", true), ("node-2", true), ("node-3", true)],
    )?;
    bed.server.apply(&not_ready(node("node-2", node_ip(2))))?;
    wait_for_backends(&bed, service, &[("node-1", true), ("node-3", true)])?;
    bed.server.delete::<Node>(None, "node-1")?;
    wait_for_backends(&bed, service, &[("node-3", true)])?;
    bed.server.apply(&node("node-2", node_ip(2)))?;
    wait_for_backends(&bed, service, &[("node-2", true), ("node-3", true)])?;
    Ok(())
}

#[test]
fn watches_survive_dropped_connections_expiry_and_restarts() -> Result<()> {
    let mut bed = bed(Options::default(), &["--vip-pool", "198.51.100.0/28"])?;
    bed.server.apply(&load_balancer(NS, "s1", &[(80, 30081)]))?;
    bed.wait_for_vip(NS, "s1", READY)?;

    // Connections cut mid-stream: the watches resume where they were,
    // without listing again.
    let before = bed.server.stats();
    bed.server.drop_watches();
    bed.server.apply(&load_balancer(NS, "s2", &[(80, 30082)]))?;
    bed.wait_for_vip(NS, "s2", READY)?;
    let resumed = bed.server.stats();
    assert!(resumed.watches > before.watches, "{resumed:?}");
    assert_eq!((resumed.lists, resumed.expired), (before.lists, 0));

    // Cut, then a change the history no longer holds when they come back:
    // 410 Gone, and a fresh list.
    bed.server.cluster(|cluster| -> Result<()> {
        cluster.drop_watches();
        cluster.apply(&load_balancer(NS, "s3", &[(80, 30083)]))?;
        cluster.compact();
        Ok(())
    })?;
    bed.wait_for_vip(NS, "s3", READY)?;
    let relisted = bed.server.stats();
    assert!(
        relisted.expired >= 1 && relisted.lists > resumed.lists,
        "{relisted:?}"
    );

    // The API server goes away, the cluster changes meanwhile, and it comes
    // back on the same address with an empty watch cache.
    bed.kube.server.stop();
    bed.server.apply(&load_balancer(NS, "s4", &[(80, 30084)]))?;
    bed.server.delete::<Service>(Some(NS), "s1")?;
    std::thread::sleep(Duration::from_millis(500));
    let expired = bed.server.stats().expired;
    bed.kube.server.restart(Some(&bed.ns))?;
    bed.wait_for_vip(NS, "s4", READY)?;
    let vips: Vec<(IpAddr, u64)> = ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
        .into_iter()
        .map(|vip| (ip(vip).into(), 80))
        .collect();
    // s1's address was free again by the time s4 got one.
    assert_eq!(bed.vip(NS, "s4")?, Some(ip("198.51.100.1")));
    bed.wait_for("s1 gone, the others programmed", READY, || {
        (frontends(&bed) == vips).then_some(())
    })?;
    assert!(
        bed.server.stats().expired > expired,
        "{:?}",
        bed.server.stats()
    );
    Ok(())
}

#[test]
fn agent_restart_keeps_every_vip() -> Result<()> {
    let mut bed = bed(Options::default(), &["--vip-pool", "198.51.100.0/28"])?;
    for index in 0..8 {
        bed.server.apply(&load_balancer(
            NS,
            &format!("s{index}"),
            &[(80, 30080 + index)],
        ))?;
    }
    for index in 0..8 {
        bed.wait_for_vip(NS, &format!("s{index}"), READY)?;
    }
    // A gap in the pool, filled by a later Service: allocation order no
    // longer matches name order.
    bed.server.delete::<Service>(Some(NS), "s2")?;
    bed.wait_for("s2 released", READY, || {
        (frontends(&bed).len() == 7).then_some(())
    })?;
    bed.server.apply(&load_balancer(NS, "s9", &[(80, 30089)]))?;
    assert_eq!(bed.wait_for_vip(NS, "s9", READY)?, ip("198.51.100.3"));
    let names = ["s0", "s1", "s3", "s4", "s5", "s6", "s7", "s9"];
    let before: BTreeMap<&str, Option<Ipv4Addr>> = names
        .iter()
        .map(|n| Ok((*n, bed.vip(NS, n)?)))
        .collect::<Result<_>>()?;

    // The agent crashes; a Service appears while it is down.
    bed.kube.agent.kill()?;
    bed.server
        .apply(&load_balancer(NS, "s10", &[(80, 30090)]))?;
    let writes = bed.server.stats().status_writes;
    bed.kube.agent.restart(&bed.ns)?;
    // It gets the lowest address nobody holds; everyone else keeps theirs.
    assert_eq!(bed.wait_for_vip(NS, "s10", READY)?, ip("198.51.100.9"));
    let after: BTreeMap<&str, Option<Ipv4Addr>> = names
        .iter()
        .map(|n| Ok((*n, bed.vip(NS, n)?)))
        .collect::<Result<_>>()?;
    assert_eq!(after, before);
    bed.wait_for("every VIP programmed", READY, || {
        (frontends(&bed).len() == 9).then_some(())
    })?;
    // Only the new Service's status was written.
    assert_eq!(bed.server.stats().status_writes, writes + 1);
    Ok(())
}

/// The Events of an agent's last round are recorded after its statuses, by a
/// task of their own; an agent stopped (SIGTERM) just after the statuses
/// still records them before it exits.
#[test]
fn an_agent_stopped_after_its_statuses_records_their_events() -> Result<()> {
    const SERVICES: u16 = 1000;
    let ns = NetNs::new("k8s-stop")?;
    veth(&ns, "lb0", &ns, "peer0")?;
    let server = FakeApiServer::start(Some(&ns), Options::default())?;
    server.apply(&node("node-1", node_ip(1)))?;
    for index in 0..SERVICES {
        server.apply(&load_balancer(
            NS,
            &format!("s{index}"),
            &[(80, 30000 + i32::from(index))],
        ))?;
    }
    let extra = [
        "--health-interval",
        "0",
        "--ring-size",
        "251",
        "--vip-pool",
        "198.18.0.0/20",
    ];
    let kube = KubeAgent::with_server(server, &ns, &["lb0"], &extra)?;
    kube.wait_for("every status written", READY, || {
        (kube.server.stats().status_writes >= u64::from(SERVICES)).then_some(())
    })?;
    kube.agent.signal(libc::SIGTERM)?;
    kube.wait_for("the agent to exit", READY, || {
        kube.pid().is_none().then_some(())
    })?;
    // Each Service also has this host's nodeAssigned: counted by reason.
    let allocated = kube
        .server
        .list::<Event>()?
        .iter()
        .filter(|event| event.reason.as_deref() == Some("IPAllocated"))
        .count();
    assert!(
        allocated >= usize::from(SERVICES),
        "{allocated} IPAllocated Events for {SERVICES} VIPs assigned"
    );
    Ok(())
}

#[test]
fn a_dual_stack_service_gets_a_vip_of_each_family() -> Result<()> {
    let mut bed = bed(
        Options::default(),
        &[
            "--pool",
            "dual=198.51.100.0/29,2001:db8::/125",
            "--pool",
            "v4=203.0.113.10-203.0.113.11",
        ],
    )?;
    // Nodes of either family or both: each serves the VIPs of its families.
    bed.server
        .apply(&with_internal_ip(node("node-1", node_ip(1)), node_ip6(1)))?;
    bed.server.apply(&node("node-2", node_ip(2)))?;
    bed.server.apply(&node("node-3", node_ip6(3)))?;
    // The API server lists both families for it, as a dual-stack cluster does.
    let web = ip_families(
        load_balancer(NS, "web", &[(80, 30080)]),
        "PreferDualStack",
        &[],
    );
    bed.server.apply(&web)?;
    let (v4, v6): (IpAddr, IpAddr) = (ip("198.51.100.1").into(), "2001:db8::1".parse()?);
    assert_eq!(bed.wait_for_vips(NS, "web", 2, READY)?, [v4, v6]);
    bed.wait_for("both VIPs programmed", READY, || {
        (frontends(&bed) == [(v4, 80), (v6, 80)]).then_some(())
    })?;
    wait_for_backends(&bed, "198.51.100.1", &[("node-1", true), ("node-2", true)])?;
    wait_for_backends(&bed, "2001:db8::1", &[("node-1", true), ("node-3", true)])?;
    wait_for_event(
        &bed,
        "web",
        "IPAllocated",
        "Assigned IPs 198.51.100.1, 2001:db8::1",
    )?;

    // Both families required from a pool without IPv6: not served, and told.
    let strict = annotated(
        ip_families(
            load_balancer(NS, "strict", &[(80, 30081)]),
            "RequireDualStack",
            &[],
        ),
        "lb.dev/pool",
        "v4",
    );
    bed.server.apply(&strict)?;
    wait_for_event(
        &bed,
        "strict",
        "AllocationFailed",
        "ipFamilyPolicy RequireDualStack needs a VIP of each family: no IPv6 VIP: VIP pool v4 has no IPv6 range",
    )?;
    assert!(bed.vips(NS, "strict")?.is_empty());

    // A restarted agent finds both VIPs in the status and keeps them: a
    // Service created meanwhile gets the next IPv6 address.
    let writes = bed.server.stats().status_writes;
    bed.kube.agent.kill()?;
    let six = ip_families(
        load_balancer(NS, "six", &[(80, 30082)]),
        "SingleStack",
        &["IPv6"],
    );
    bed.server.apply(&six)?;
    bed.kube.agent.restart(&bed.ns)?;
    let six_vip: IpAddr = "2001:db8::2".parse()?;
    assert_eq!(bed.wait_for_vips(NS, "six", 1, READY)?, [six_vip]);
    assert_eq!(bed.vips(NS, "web")?, [v4, v6]);
    bed.wait_for("every VIP programmed", READY, || {
        (frontends(&bed) == [(v4, 80), (v6, 80), (six_vip, 80)]).then_some(())
    })?;
    // Only the new Service's status was written.
    assert_eq!(bed.server.stats().status_writes, writes + 1);
    Ok(())
}

#[test]
fn the_agent_takes_exactly_one_source_and_names_a_bad_kubeconfig() -> Result<()> {
    let lb = |args: &[&str]| -> Result<(i32, String)> {
        let output = std::process::Command::new(lb_tests::agent::lb_binary()?)
            .arg("agent")
            .args(args)
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        Ok((output.status.code().unwrap_or(-1), stderr))
    };
    let (code, stderr) = lb(&["--iface", "lo"])?;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--manifests <PATH>|--kubeconfig <PATH>|--in-cluster"),
        "{stderr}"
    );
    let (code, stderr) = lb(&[
        "--iface",
        "lo",
        "--manifests",
        "m.yaml",
        "--kubeconfig",
        "k",
    ])?;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    // Refused before anything is loaded into the kernel.
    let (code, stderr) = lb(&[
        "--iface",
        "nosuch0",
        "--kubeconfig",
        "/nonexistent/kubeconfig",
    ])?;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with("lb: connecting to the Kubernetes API: kubeconfig:")
            && stderr.contains("/nonexistent/kubeconfig"),
        "{stderr}"
    );
    let (code, stderr) = lb(&["--iface", "lo", "--kubeconfig", "k", "--pool", "nameless"])?;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with("lb: --pool: invalid VIP pool \"nameless\""),
        "{stderr}"
    );
    Ok(())
}

/// A server serving HTTPS, with one node, in a fresh namespace with a veth.
fn tls_server() -> Result<(NetNs, FakeApiServer)> {
    let ns = NetNs::new("k8s")?;
    veth(&ns, "lb0", &ns, "peer0")?;
    let options = Options {
        tls: true,
        ..Options::default()
    };
    let server = FakeApiServer::start(Some(&ns), options)?;
    assert!(server.url().starts_with("https://"), "{}", server.url());
    server.apply(&node("node-1", node_ip(1)))?;
    Ok((ns, server))
}

const TLS_FLAGS: [&str; 6] = [
    "--health-interval",
    "0",
    "--ring-size",
    "251",
    "--vip-pool",
    "198.51.100.0/29",
];

#[test]
fn a_kubeconfig_with_a_certificate_authority_reaches_an_https_server() -> Result<()> {
    let (ns, server) = tls_server()?;
    let bed = Bed {
        kube: KubeAgent::with_server(server, &ns, &["lb0"], &TLS_FLAGS)?,
        ns,
    };
    bed.server
        .apply(&load_balancer(NS, "tls", &[(80, 30080)]))?;
    assert_eq!(bed.wait_for_vip(NS, "tls", READY)?, ip("198.51.100.1"));
    Ok(())
}

#[test]
fn in_cluster_config_reads_the_service_account_and_environment() -> Result<()> {
    let (ns, server) = tls_server()?;
    let account = ServiceAccount::write(&server)?;
    let bed = Bed {
        kube: KubeAgent::in_cluster(server, &account, &ns, &["lb0"], &TLS_FLAGS)?,
        ns,
    };
    bed.server
        .apply(&load_balancer(NS, "pod", &[(80, 30080)]))?;
    assert_eq!(bed.wait_for_vip(NS, "pod", READY)?, ip("198.51.100.1"));
    bed.wait_for("the VIP programmed", READY, || {
        (frontends(&bed) == [(ip("198.51.100.1").into(), 80)]).then_some(())
    })?;
    // The agent stops before the service account goes.
    drop(bed);
    drop(account);
    Ok(())
}

/// A MetalLB kind the agent has read that the API server then refuses for a
/// while (404: its CRD replaced by an upgrade) keeps its last list: a new
/// Service still gets an address of the IPAddressPool, where reading the
/// kind as none would have left no pool to take one from.
#[test]
fn a_metallb_kind_refused_after_it_was_read_keeps_its_last_list() -> Result<()> {
    let options = Options {
        metallb_crds: true,
        ..Options::default()
    };
    let bed = bed(options, &[])?;
    bed.server.apply(&pool("pool", &["198.51.100.0/29"]))?;
    bed.server.apply(&node("node-1", node_ip(1)))?;
    bed.server.apply(&load_balancer(NS, "a", &[(80, 30080)]))?;
    let vip = bed.wait_for_vip(NS, "a", READY)?;
    bed.server.remove_metallb_crds();
    bed.server.drop_watches();
    bed.wait_for("the agent to see the refusal", READY, || {
        let log = bed.agent.log();
        (log.contains("refused after it was read") || log.contains("read as none")).then_some(())
    })?;
    // A round with what the agent now reads: a new Service gets the pool's
    // next address (read as none, the kind would leave it none to take).
    bed.server.apply(&load_balancer(NS, "b", &[(80, 30081)]))?;
    assert_eq!(bed.wait_for_vip(NS, "b", READY)?, ip("198.51.100.1"));
    assert_eq!(bed.vip(NS, "a")?, Some(vip), "the Service kept its VIP");
    Ok(())
}
