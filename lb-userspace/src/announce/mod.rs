//! How VIPs become reachable: answered at layer 2 (ARP / NDP), or announced
//! to routers over BGP by a BIRD the agent runs, each VIP as the plan says
//! (MetalLB's advertisements, or the `--announce` flag for every VIP).

pub mod arp;
pub mod bgp;
pub mod bird;
pub mod bird_config;
pub mod commands;
pub mod community;
pub mod plan;
pub mod planner;
pub mod speaker;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use tracing::warn;

use crate::{
    dataplane::Dataplane,
    k8s::objects::MetallbObjects,
    model::{DesiredState, Frontend},
};
use plan::{AnnouncementPlan, BgpAnnouncement};
pub use speaker::BgpStart;
use speaker::Speaker;

/// How the agent makes VIPs reachable on the segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Announce {
    /// Answer ARP and Neighbor Solicitations for VIPs, and announce new ones
    /// with gratuitous ARP / unsolicited Neighbor Advertisements (with several
    /// agents on one segment and API server, only the holder of its Lease).
    #[default]
    Arp,
    /// Announce each VIP with a healthy backend over BGP (BIRD 2).
    Bgp,
    /// Nothing: routes to the VIPs are someone else's business.
    None,
}

/// What the flags say about announcing.
pub struct Announcement {
    /// How every VIP is announced while there is no MetalLB advertisement.
    pub mode: Announce,
    /// `--announce` was given (command line or config file): advertisements
    /// overruling it are worth a word.
    pub explicit: bool,
    pub bgp: BgpStart,
}

/// Keeps the segment and the routers told of the VIPs, as the plan says:
/// layer 2 and BGP side by side.
pub struct Announcer {
    l2: arp::Announcer,
    bgp: Speaker,
    /// Interface names the plan asks for that lb is not attached to, and
    /// VIPs to announce over BGP without sessions: said once per change.
    problems: BTreeSet<String>,
}

impl Announcer {
    pub fn start(interfaces: &[String], bpffs: &Path, bgp: BgpStart) -> std::io::Result<Self> {
        Ok(Self {
            l2: arp::Announcer::new(interfaces)?,
            bgp: Speaker::new(bpffs, bgp),
            problems: BTreeSet::new(),
        })
    }

    /// The interfaces (by name) ARP and NDP for each VIP are answered on.
    pub fn layer2_answers(&self) -> BTreeMap<IpAddr, Vec<String>> {
        self.l2.announced_on()
    }

    /// Takes the BGP sessions MetalLB's objects set up, if any.
    pub fn configure(&mut self, metallb: &MetallbObjects) {
        self.bgp.configure(metallb);
    }

    /// Brings the announcements in line with `plan` and what is served:
    /// layer 2 for every VIP programmed, on its interfaces, if this host
    /// `speaks_layer2` (see `Source::speaks_layer2`); BGP for each VIP with
    /// a backend that takes new flows and passes its health check, in a
    /// Service that was programmed.
    pub fn update(
        &mut self,
        dataplane: &mut Dataplane,
        state: &DesiredState,
        failed: &BTreeMap<Frontend, String>,
        plan: &AnnouncementPlan,
        speaks_layer2: bool,
    ) {
        let mut problems = BTreeSet::new();
        let mut answers = BTreeMap::new();
        for service in dataplane.services().filter(|_| speaks_layer2) {
            let vip = service.spec.frontend.vip;
            let Some(l2) = plan.vips.get(&vip).and_then(|a| a.l2.as_ref()) else {
                continue;
            };
            let (ifindexes, unknown) = self.l2.ifindexes(l2);
            problems.extend(unknown.into_iter().map(|name| {
                format!("{vip}: interface {name} is not one lb is attached to (--iface)")
            }));
            answers.insert(vip, ifindexes);
        }
        if let Err(e) = dataplane.set_neighbor_answers(&answers) {
            warn!(error = %e, "setting the interfaces that answer ARP and NDP for the VIPs");
        }
        self.l2.update(&answers);
        let healthy = state.healthy_vips(|frontend| !failed.contains_key(frontend));
        let routes: BTreeMap<IpAddr, Vec<BgpAnnouncement>> = healthy
            .into_iter()
            .filter_map(|vip| {
                let routes = &plan.vips.get(&vip)?.bgp;
                (!routes.is_empty()).then(|| (vip, routes.clone()))
            })
            .collect();
        if !self.bgp.has_sessions() {
            problems.extend(routes.keys().map(|vip| {
                format!("{vip}: to be announced over BGP, but no BGP session is configured")
            }));
        }
        self.bgp.update(routes);
        for problem in problems.difference(&self.problems) {
            warn!("not announced as asked: {problem}");
        }
        self.problems = problems;
    }

    /// Checks again what only time changes (`lb drain`, a BIRD that failed).
    pub fn refresh(&mut self) {
        self.bgp.refresh();
    }

    /// The VIPs BIRD announces, as far as the agent knows.
    pub fn bgp_announced(&self) -> BTreeSet<IpAddr> {
        self.bgp.announced()
    }
}
