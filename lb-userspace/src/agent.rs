//! The agent: loads and attaches the data path, then keeps it in step with its
//! source of Kubernetes objects until SIGINT or SIGTERM.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info, warn};

use crate::{
    announce::{Announcement, Announcer, bird::Bird, plan::AnnouncementPlan, planner::Planner},
    catalog::{Catalog, ServiceCheck},
    dataplane::{Dataplane, DataplaneConfig, Forwarding},
    health::{self, HealthChecker, HealthConfig, Verdicts},
    k8s::{
        Translation, Translator,
        source::{Layer2Answers, Source},
        translate::Role,
    },
    metrics::{self, Health},
    model::{DesiredState, Frontend},
    node_neighbors::{NodeNeighbors, Nodes},
    reconcile,
    routes::{Reach, Routes},
    xdp_log,
};

pub struct AgentOptions {
    pub interfaces: Vec<String>,
    /// Remove the pinned state on exit (detaching the program) instead of
    /// leaving the data path running for the next agent.
    pub detach_on_exit: bool,
    /// Where to serve metrics, /healthz and /readyz.
    pub metrics_address: std::net::SocketAddr,
    /// Export the per-backend series too.
    pub backend_metrics: bool,
    pub source: Source,
    /// Class, pools and the VIPs handed out so far.
    pub translator: Translator,
    pub health: HealthConfig,
    pub dataplane: DataplaneConfig,
    pub announcement: Announcement,
}

pub async fn run(mut options: AgentOptions) -> Result<()> {
    // Before the load: it takes over the pinned state, whose programs an
    // interface that is only then found missing would leave replaced.
    for iface in &options.interfaces {
        Dataplane::interface_index(iface)?;
    }
    // Also before the load: an address in use (an agent still running)
    // must not cost the pinned state its programs either.
    let metrics = tokio::net::TcpListener::bind(options.metrics_address)
        .await
        .with_context(|| format!("--metrics-address {}", options.metrics_address))?;
    // On a thread of its own: the verifier and the preallocation of the flow
    // tables take about half a second, in which the runtime reads the
    // cluster (the source's watches started when it connected).
    let config = options.dataplane.clone();
    let mut dataplane = tokio::task::spawn_blocking(move || Dataplane::load(config))
        .await
        .context("the thread loading the data path")??;
    if dataplane.inherited_state() {
        info!(
            services = dataplane.services().count(),
            "took over the pinned state of an earlier agent"
        );
        let vips = inherited_vips(&dataplane, options.dataplane.pin_dir.as_deref());
        options.source.keep_inherited_state(vips);
    }
    let attached = attach_all(&mut dataplane, &options.interfaces);
    let started = attached.is_ok();
    let result = match attached {
        Ok(()) => serve(&mut dataplane, &mut options, metrics).await,
        Err(e) => Err(e),
    };
    // A failed start must not destroy state an earlier agent left running,
    // even with --detach-on-exit (that is this agent's to remove once it
    // is attached); a failed fresh start leaves nothing behind.
    let remove = match (result.is_err(), dataplane.inherited_state()) {
        (true, false) => true,
        (true, true) if !started => false,
        _ => options.detach_on_exit,
    };
    if remove {
        if let Err(e) = dataplane.remove_pins() {
            warn!(error = %e, "removing the pinned state");
        }
        if let Some(bpffs) = &options.dataplane.pin_dir {
            Catalog::remove(bpffs);
            if let Err(e) = Bird::of(bpffs).stop() {
                warn!(error = %e, "stopping BIRD");
            }
        }
        drop(dataplane);
        info!("detached");
    } else {
        info!("exiting; the data path stays attached with its state pinned (`lb down` removes it)");
    }
    result
}

/// The VIPs the inherited data path serves each Service (`namespace/name`)
/// on, IPv4 first: its services, named by the catalog the earlier agent
/// wrote (the pins hold no names).
fn inherited_vips(dataplane: &Dataplane, bpffs: Option<&Path>) -> BTreeMap<String, Vec<IpAddr>> {
    let mut vips: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let Some(bpffs) = bpffs else {
        return vips;
    };
    let catalog = Catalog::read(bpffs);
    let served = catalog
        .services
        .iter()
        .filter(|spec| dataplane.service(&spec.frontend).is_some());
    for spec in served {
        let addresses = vips.entry(spec.owner().to_owned()).or_default();
        if !addresses.contains(&spec.frontend.vip) {
            addresses.push(spec.frontend.vip);
        }
    }
    for addresses in vips.values_mut() {
        addresses.sort_by_key(IpAddr::is_ipv6);
    }
    vips
}

fn attach_all(dataplane: &mut Dataplane, interfaces: &[String]) -> Result<()> {
    for iface in interfaces {
        let ifindex = dataplane.attach(iface)?;
        info!(iface, ifindex, "XDP program attached");
    }
    let detached = dataplane
        .detach_unlisted(interfaces)
        .context("detaching from interfaces no longer listed")?;
    for iface in detached {
        info!(
            iface,
            "XDP program detached: the interface is no longer listed (--iface)"
        );
    }
    dataplane
        .retire_former_pins()
        .context("retiring the maps an earlier agent pinned under former names")
}

async fn serve(
    dataplane: &mut Dataplane,
    options: &mut AgentOptions,
    metrics: tokio::net::TcpListener,
) -> Result<()> {
    let bpffs = options.dataplane.pin_dir.clone().unwrap_or_default();
    let health = Health::new(bpffs);
    let server = tokio::spawn(metrics::serve(
        metrics,
        health.clone(),
        options.backend_metrics,
    ));
    info!(address = %options.metrics_address, "serving metrics, /healthz and /readyz");
    let xdp_log = xdp_log::spawn(dataplane).context("forwarding the XDP program's log")?;
    let result = sync_until_signalled(dataplane, options, &health).await;
    server.abort();
    xdp_log.abort();
    result
}

async fn sync_until_signalled(
    dataplane: &mut Dataplane,
    options: &mut AgentOptions,
    health: &Health,
) -> Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let bpffs = options.dataplane.pin_dir.clone().unwrap_or_default();
    let mut checker =
        HealthChecker::start(options.health.clone(), earlier_verdicts(dataplane, options));
    let announcement = &options.announcement;
    let mut planner = Planner::new(announcement.mode, announcement.explicit);
    let bgp = options.announcement.bgp.clone();
    let mut announcer = Announcer::start(&options.interfaces, &bpffs, bgp)
        .context("reading the interfaces' addresses")?;
    // Drains and failed BGP updates are looked at again this often.
    let mut refresh = tokio::time::interval(std::time::Duration::from_secs(1));
    // What health verdicts are applied to when they change, with the
    // translator's last translation.
    let mut last_plan: Option<AnnouncementPlan> = None;
    // Services that could not be programmed last time, and why.
    let mut failed = BTreeMap::new();
    let mut neighbors = NodeNeighbors::default();
    let mut catalog = CatalogOnDisk {
        stale: true,
        bgp_announced: BTreeSet::new(),
        verdicts: Verdicts::new(),
        checks: Vec::new(),
    };
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => options.source.refresh(),
            objects = options.source.changed() => match objects {
                Ok(objects) => {
                    let role = options.source.role();
                    options.translator.set_role(role);
                    health.set_assigning(role == Role::Assign);
                    options.translator.translate(&objects);
                    let translation = options.translator.translation();
                    debug!(
                        services = objects.services.len(),
                        translated = translation.translated,
                        "translated"
                    );
                    let plan = planner.plan(&objects, options.translator.pools.pools(), translation);
                    announcer.configure(&objects.metallb);
                    checker.watch(translation);
                    let state = checker.apply(translation);
                    program(dataplane, &mut neighbors, options, &state, &mut failed, &mut catalog);
                    let speaks = options.source.speaks_layer2();
                    health.set_speaking_layer2(speaks);
                    announcer.update(dataplane, &state, &failed, &plan, speaks);
                    // The statuses before the catalog, which only names
                    // services for the CLI: a start's takes tens of
                    // milliseconds to write.
                    let unprogrammed = unprogrammed(translation, &failed);
                    options.source.report(translation, role, &unprogrammed).await;
                    options.source.report_layer2(&layer2_answers(translation, &announcer));
                    catalog.take_checks(translation);
                    write_catalog(dataplane, options, &announcer, &checker, &mut catalog);
                    last_plan = Some(plan);
                    health.set_ready();
                }
                // With nothing served yet (nor inherited) there is no good
                // state to keep: say so and stop, rather than run empty.
                Err(e) if last_plan.is_none() && !dataplane.inherited_state() => {
                    return Err(e).context("the first read of the source failed");
                }
                // The last good state keeps serving.
                Err(e) => warn!(error = %e, "source not read; keeping the last good state"),
            },
            () = checker.changed() => if let Some(plan) = &last_plan {
                let translation = options.translator.translation();
                let state = checker.apply(translation);
                program(dataplane, &mut neighbors, options, &state, &mut failed, &mut catalog);
                let speaks = options.source.speaks_layer2();
                announcer.update(dataplane, &state, &failed, plan, speaks);
                options.source.report_layer2(&layer2_answers(translation, &announcer));
                write_catalog(dataplane, options, &announcer, &checker, &mut catalog);
            },
            _ = refresh.tick() => {
                announcer.refresh();
                neighbors.recheck();
                // What BIRD announces changes here too (`lb drain`); not
                // before the source was read: the inherited data path has
                // no names yet, and the catalog on disk has them.
                if last_plan.is_some() {
                    write_catalog(dataplane, options, &announcer, &checker, &mut catalog);
                }
            }
        }
    }
    if options.detach_on_exit {
        // The data path that needed them goes too.
        neighbors.keep(&Nodes::new());
        // It stops answering before another speaker takes over.
        if let Err(e) = dataplane.set_neighbor_answers(&BTreeMap::new()) {
            warn!(error = %e, "no longer answering ARP and NDP for the VIPs");
        }
    }
    // A data path that stays answers as it did: this agent keeps its
    // layer 2 Lease for a restart to take back, or to expire.
    options
        .source
        .close(EVENTS_GRACE, options.detach_on_exit)
        .await;
    Ok(())
}

/// The Services (`namespace/name`) with a port the data path could not
/// serve, with the port and why, for their Events.
fn unprogrammed(
    translation: &Translation,
    failed: &BTreeMap<Frontend, String>,
) -> Vec<(String, String)> {
    failed
        .iter()
        .filter_map(|(frontend, reason)| {
            let owner = translation.state.services.get(frontend)?.owner();
            Some((
                owner.to_owned(),
                format!("{frontend} is not served: {reason}"),
            ))
        })
        .collect()
}

/// The Services whose VIPs this host answers ARP and NDP for, with the
/// interfaces, for their Events.
fn layer2_answers(translation: &Translation, announcer: &Announcer) -> Layer2Answers {
    let answered = announcer.layer2_answers();
    let mut answers = Layer2Answers::new();
    for (frontend, service) in &translation.state.services {
        if let Some(interfaces) = answered.get(&frontend.vip) {
            answers
                .entry(service.owner().to_owned())
                .or_default()
                .insert(frontend.vip, interfaces.clone());
        }
    }
    answers
}

/// How long a stopping agent waits for the Events of its last rounds (a
/// start's 10,000, twice that on a layer 2 speaker, take a second or two
/// here): less than the 30 s Kubernetes gives a Pod between SIGTERM and
/// SIGKILL.
const EVENTS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// With direct server return a packet keeps its VIP and gets only the node's
/// MAC: a node the kernel routes through a gateway (or not at all) cannot be
/// reached that way. Its Services are refused, with the reason; the rest of
/// the state is returned, without a copy when nothing is refused (every
/// round asks, and a copy of 10,000 Services costs more than the round's
/// translation). Each node's route is looked up once: Services share nodes.
/// Also returns the nodes of the Services kept, with their interfaces, if
/// the routes were read.
fn without_routed_nodes(
    state: &DesiredState,
) -> (
    Cow<'_, DesiredState>,
    Vec<(Frontend, String)>,
    Option<Nodes>,
) {
    let routes = match Routes::read() {
        Ok(routes) => routes,
        Err(e) => {
            warn!(error = %e, "reading the routing table; not checking that nodes are on-link");
            return (Cow::Borrowed(state), Vec::new(), None);
        }
    };
    let mut reach = BTreeMap::new();
    let refused: Vec<(Frontend, String)> = state
        .services
        .iter()
        .filter_map(|(frontend, spec)| {
            let problem = spec.backends.iter().find_map(|backend| {
                let node = || format!("node {} ({})", backend.node, backend.ip);
                match reach
                    .entry(backend.ip)
                    .or_insert_with(|| routes.reach(backend.ip))
                {
                    Reach::OnLink(_) => None,
                    Reach::Gateway(gateway) => Some(format!(
                        "{} is reached through gateway {gateway}: direct server return needs \
                         every node on a segment lb is attached to",
                        node()
                    )),
                    Reach::Unreachable => Some(format!("no route to {}", node())),
                }
            });
            Some((*frontend, problem?))
        })
        .collect();
    let kept = if refused.is_empty() {
        Cow::Borrowed(state)
    } else {
        let mut kept = state.clone();
        for (frontend, _) in &refused {
            kept.services.remove(frontend);
        }
        Cow::Owned(kept)
    };
    let nodes = kept
        .services
        .values()
        .flat_map(|spec| &spec.backends)
        .filter_map(|backend| match reach.get(&backend.ip)? {
            Reach::OnLink(iface) => Some((backend.ip, iface.clone())),
            _ => None,
        })
        .collect();
    (kept, refused, Some(nodes))
}

/// Applies `state` to the data path. Services that cannot be programmed are
/// logged when that changes, not at every sync.
fn program(
    dataplane: &mut Dataplane,
    neighbors: &mut NodeNeighbors,
    options: &AgentOptions,
    state: &DesiredState,
    failed: &mut BTreeMap<Frontend, String>,
    catalog: &mut CatalogOnDisk,
) {
    let mut report = match options.dataplane.forwarding {
        Forwarding::Nat => {
            neighbors.keep(&Nodes::new());
            reconcile::apply(dataplane, state)
        }
        Forwarding::Dsr => {
            let (state, refused, nodes) = without_routed_nodes(state);
            // Before the data path sends to them.
            if let Some(nodes) = nodes {
                neighbors.keep(&nodes);
            }
            let mut report = reconcile::apply(dataplane, &state);
            report.failed.extend(refused);
            report
        }
    };
    report.failed.sort();
    for (frontend, reason) in &report.failed {
        if failed.get(frontend) != Some(reason) {
            warn!(%frontend, %reason, "service not programmed");
        }
    }
    *failed = report.failed.iter().cloned().collect();
    info!(
        services = state.services.len(),
        added = report.added.len(),
        updated = report.updated.len(),
        removed = report.removed.len(),
        failed = report.failed.len(),
        "synced"
    );
    catalog.stale |= [&report.added, &report.updated, &report.removed]
        .iter()
        .any(|frontends| !frontends.is_empty());
}

/// Writes the catalog (names for the CLI, what is announced over BGP for
/// the metrics) if that changed: with 10,000 services a write takes tens of
/// milliseconds, which every round would pay for nothing.
fn write_catalog(
    dataplane: &Dataplane,
    options: &AgentOptions,
    announcer: &Announcer,
    checker: &HealthChecker,
    on_disk: &mut CatalogOnDisk,
) {
    let bgp_announced = announcer.bgp_announced();
    let verdicts = checker.verdicts();
    if let Some(bpffs) = &options.dataplane.pin_dir
        && (on_disk.stale || bgp_announced != on_disk.bgp_announced || verdicts != on_disk.verdicts)
    {
        let written =
            Catalog::write_of(dataplane, &bgp_announced, &verdicts, &on_disk.checks, bpffs);
        if let Err(e) = &written {
            warn!(error = %e, "writing the catalog for the CLI");
        }
        on_disk.stale = written.is_err();
        on_disk.bgp_announced = bgp_announced;
        on_disk.verdicts = verdicts;
    }
}

/// What the catalog file last written says, so it is written only when
/// that changes.
struct CatalogOnDisk {
    /// The data path changed since, or the last write failed.
    stale: bool,
    bgp_announced: BTreeSet<IpAddr>,
    verdicts: Verdicts,
    /// How the services are checked, as the last translation says.
    checks: Vec<ServiceCheck>,
}

impl CatalogOnDisk {
    /// Takes how `translation`'s services are checked (once per
    /// translation, not at every write): the catalog is stale if that
    /// changed.
    fn take_checks(&mut self, translation: &Translation) {
        let checks: Vec<ServiceCheck> = health::checks(translation)
            .into_iter()
            .map(|(frontend, check)| ServiceCheck { frontend, check })
            .collect();
        if checks != self.checks {
            self.checks = checks;
            self.stale = true;
        }
    }
}

/// The health verdicts of the agent whose data path this one took over, from
/// its catalog: its dead nodes stay out and its VIPs without a healthy node
/// unannounced until checks say otherwise.
fn earlier_verdicts(dataplane: &Dataplane, options: &AgentOptions) -> Verdicts {
    match &options.dataplane.pin_dir {
        Some(bpffs) if dataplane.inherited_state() => {
            Catalog::read(bpffs).health.into_iter().collect()
        }
        _ => Verdicts::new(),
    }
}
