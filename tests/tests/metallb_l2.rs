//! MetalLB's L2Advertisements end to end: the VIPs of the pool one selects
//! are answered by ARP on lb's segment and serve real connections; the VIPs
//! of a pool only a BGPAdvertisement selects are not answered; an
//! advertisement naming no existing pool is skipped with its reason, and the
//! rest keep working. From an API server (where MetalLB's CRDs may come
//! later, and a change of an advertisement, its pools or its interfaces,
//! takes effect) and from manifests.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use anyhow::{Context as _, Result};
use lb_tests::{
    fake_apiserver::{Options, fixtures::node},
    http,
    kube_agent::KubeAgent,
    manifests::{ServicePort, load_balancer_service},
    metallb::{bgp_advertisement, l2_advertisement, pool, yaml},
    on_link::{NODE_PORTS, OnLink, READY, Segment},
    topology::LB_NODE_IFACE,
};

const L2_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
const BGP_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9));
/// The pools before MetalLB's CRDs are installed, named and sized like the
/// IPAddressPools that replace them.
const POOL_FLAGS: [&str; 4] = [
    "--pool",
    "l2-pool=198.51.100.0/29",
    "--pool",
    "bgp-pool=198.51.100.8/29",
];
/// How long MetalLB's objects may take to be seen once their CRDs are
/// installed: the watch looks again with kube's backoff, at most 30 s apart.
const CRDS_SEEN: Duration = Duration::from_secs(45);
const SKIPPED: &str = "skipping L2Advertisement metallb-system/typo: spec.ipAddressPools[0]: \
                       no IPAddressPool named \"no-such-pool\"";

/// The pools, an L2Advertisement of the first, a BGPAdvertisement of the
/// second, and an L2Advertisement of a pool that does not exist.
fn configuration() -> (
    Vec<lb::k8s::metallb::objects::IPAddressPool>,
    Vec<lb::k8s::metallb::objects::L2Advertisement>,
    lb::k8s::metallb::objects::BGPAdvertisement,
) {
    (
        vec![
            pool("l2-pool", &["198.51.100.0/29"]),
            pool("bgp-pool", &["198.51.100.8/29"]),
        ],
        vec![
            l2_advertisement("l2", &["l2-pool"], &[]),
            l2_advertisement("typo", &["no-such-pool"], &[]),
        ],
        bgp_advertisement("bgp", &["bgp-pool"]),
    )
}

/// `lb_vip_announced` of `vip` at layer 2, as the agent exports it.
fn announced_l2(segment: &Segment, vip: IpAddr) -> Result<bool> {
    let address = "127.0.0.1:9641".parse().context("address")?;
    let (_, metrics) = http::get(&segment.topology.lb, address, "/metrics")?;
    let series = format!("lb_vip_announced{{vip=\"{vip}\",mode=\"l2\"}} ");
    let line = metrics.lines().find(|line| line.starts_with(&series));
    Ok(line.context("no series")?.ends_with(" 1.0"))
}

#[test]
fn l2_advertisements_from_the_api_server_choose_the_vips_answered_by_arp() -> Result<()> {
    let segment = Segment::new(false)?;
    let topology = &segment.topology;
    // No MetalLB yet: its kinds are 404 Not Found, and --announce decides.
    let mut flags = POOL_FLAGS.to_vec();
    flags.extend(["--announce", "arp"]);
    let bed = KubeAgent::start(
        &topology.lb,
        &topology.lb_ifaces(),
        Options::default(),
        &flags,
    )?;
    for member in &topology.nodes {
        bed.server.apply(&node(&member.name, member.ip))?;
    }
    for ((name, vip), node_port) in [("web-l2", L2_VIP), ("web-bgp", BGP_VIP)]
        .into_iter()
        .zip(NODE_PORTS)
    {
        let port = ServicePort::http(80, node_port);
        bed.server
            .apply(&load_balancer_service(name, "demo", vip, &[port]))?;
        segment.wait_until_served(&bed.agent, vip)?;
    }
    segment.check_answered(&bed.agent, L2_VIP, "arp_reply")?;
    segment.check_answered(&bed.agent, BGP_VIP, "arp_reply")?;

    // MetalLB's CRDs and configuration appear: the advertisements decide.
    bed.server.install_metallb_crds();
    let (pools, l2, bgp) = configuration();
    for pool in &pools {
        bed.server.apply(pool)?;
    }
    bed.server.apply(&bgp)?;
    for advertisement in &l2 {
        bed.server.apply(advertisement)?;
    }
    bed.wait_for("the advertisements read", CRDS_SEEN, || {
        let log = bed.agent.log();
        (log.contains(SKIPPED) && log.contains("--announce arp is overruled")).then_some(())
    })?;
    segment.forget_neighbours()?;
    segment.check_answered(&bed.agent, L2_VIP, "arp_reply")?;
    segment.check_unanswered(BGP_VIP)?;
    assert!(announced_l2(&segment, L2_VIP)?);
    assert!(!announced_l2(&segment, BGP_VIP)?);

    // The L2Advertisement changes to take the other pool too.
    bed.server
        .apply(&l2_advertisement("l2", &["l2-pool", "bgp-pool"], &[]))?;
    bed.wait_for("the BGP pool's VIP answered", READY, || {
        segment.ask(BGP_VIP, Duration::from_secs(1)).ok()
    })?;
    segment.check_answered(&bed.agent, BGP_VIP, "arp_reply")?;
    assert!(announced_l2(&segment, BGP_VIP)?);

    // Restricted to the nodes' side, the client's side no longer answers.
    let nodes_side = l2_advertisement("l2", &["l2-pool", "bgp-pool"], &[LB_NODE_IFACE]);
    bed.server.apply(&nodes_side)?;
    bed.wait_for("the client's side silent", READY, || {
        segment.forget_neighbours().ok()?;
        segment.check_unanswered(L2_VIP).ok()
    })?;
    segment.check_unanswered(BGP_VIP)?;
    assert!(announced_l2(&segment, L2_VIP)?, "still announced, on lbn0");

    // Said once, not at every sync since.
    let log = bed.agent.log();
    for once in [SKIPPED, "--announce arp is overruled"] {
        assert_eq!(log.matches(once).count(), 1, "{once:?} in\n{log}");
    }
    Ok(())
}

#[test]
fn l2_advertisements_from_manifests_choose_the_vips_answered_by_arp() -> Result<()> {
    let (pools, l2, bgp) = configuration();
    let mut documents: Vec<String> = pools.iter().map(yaml).collect();
    documents.extend(l2.iter().map(yaml));
    documents.push(yaml(&bgp));
    let bed = OnLink::start_with("metallb-l2", &[L2_VIP, BGP_VIP], &documents)?;
    bed.segment.wait_until_served(&bed.agent, BGP_VIP)?;
    bed.segment
        .check_answered(&bed.agent, L2_VIP, "arp_reply")
        .context("the L2 pool's VIP")?;
    bed.segment
        .check_unanswered(BGP_VIP)
        .context("the BGP pool's VIP")?;
    assert!(bed.agent.log().contains(SKIPPED), "{}", bed.agent.log());
    Ok(())
}
