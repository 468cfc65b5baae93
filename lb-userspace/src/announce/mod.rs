//! How VIPs become reachable: answered at layer 2 (ARP / NDP), or announced
//! to routers over BGP by a BIRD the agent runs, each VIP as the plan says
//! (MetalLB's advertisements, or the `--announce` flag for every VIP).

pub mod arp;
pub mod bgp;
pub mod bird;
pub mod commands;
pub mod plan;
pub mod planner;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use tracing::{info, warn};

use crate::{
    dataplane::Dataplane,
    model::{DesiredState, Frontend},
};
use plan::{AnnouncementPlan, BgpAnnouncement};

/// How the agent makes VIPs reachable on the segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Announce {
    /// Answer ARP and Neighbor Solicitations for VIPs, and announce new ones
    /// with gratuitous ARP / unsolicited Neighbor Advertisements.
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
    /// The BGP sessions of `--announce bgp`.
    pub bgp: Option<BgpStart>,
}

/// What BIRD is started with.
pub struct BgpStart {
    pub settings: bgp::BgpSettings,
    /// The BIRD binary, found before anything was loaded.
    pub bird: PathBuf,
}

/// Keeps the segment and the routers told of the VIPs, as the plan says:
/// layer 2 and BGP side by side.
pub struct Announcer {
    l2: arp::Announcer,
    /// `None` until BGP sessions are configured.
    bgp: Option<Speaker>,
    bpffs: PathBuf,
    /// Interface names the plan asks for that lb is not attached to, and
    /// VIPs to announce over BGP without sessions: said once per change.
    problems: BTreeSet<String>,
}

impl Announcer {
    pub fn start(interfaces: &[String], bpffs: &Path) -> std::io::Result<Self> {
        Ok(Self {
            l2: arp::Announcer::new(interfaces)?,
            bgp: None,
            bpffs: bpffs.to_owned(),
            problems: BTreeSet::new(),
        })
    }

    /// Starts announcing over BGP with these sessions, or, when BGP runs
    /// already, reconfigures BIRD for them at the next update.
    pub fn set_bgp(&mut self, start: BgpStart) {
        self.bgp = Some(Speaker {
            bird: bird::Bird::of(&self.bpffs),
            binary: start.bird,
            settings: start.settings,
            announced: None,
            wanted: None,
        });
    }

    /// Brings the announcements in line with `plan` and what is served:
    /// layer 2 for every VIP programmed, on its interfaces; BGP for each VIP
    /// with a backend that takes new flows and passes its health check, in a
    /// Service that was programmed.
    pub fn update(
        &mut self,
        dataplane: &mut Dataplane,
        state: &DesiredState,
        failed: &BTreeMap<Frontend, String>,
        plan: &AnnouncementPlan,
    ) {
        let mut problems = BTreeSet::new();
        let mut answers = BTreeMap::new();
        for service in dataplane.services() {
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
        match &mut self.bgp {
            Some(speaker) => speaker.update(routes),
            None => problems.extend(routes.keys().map(|vip| {
                format!("{vip}: to be announced over BGP, but no BGP session is configured")
            })),
        }
        for problem in problems.difference(&self.problems) {
            warn!("not announced as asked: {problem}");
        }
        self.problems = problems;
    }

    /// Checks again what only time changes (`lb drain`, a BIRD that failed).
    pub fn refresh(&mut self) {
        if let Some(speaker) = &mut self.bgp
            && let Some(wanted) = speaker.wanted.clone()
        {
            speaker.update(wanted);
        }
    }

    /// The VIPs BIRD announces, as far as the agent knows.
    pub fn bgp_announced(&self) -> BTreeSet<IpAddr> {
        let announced = self.bgp.as_ref().and_then(|s| s.announced.as_ref());
        announced.cloned().unwrap_or_default()
    }
}

/// The agent's side of its BIRD.
pub struct Speaker {
    bird: bird::Bird,
    binary: PathBuf,
    settings: bgp::BgpSettings,
    /// What BIRD was last told to announce; `None` until it was configured.
    announced: Option<BTreeSet<IpAddr>>,
    /// The routes the plan and the data path say should be announced.
    wanted: Option<BTreeMap<IpAddr, Vec<BgpAnnouncement>>>,
}

impl Speaker {
    fn update(&mut self, wanted: BTreeMap<IpAddr, Vec<BgpAnnouncement>>) {
        let vips = if self.bird.draining() {
            BTreeSet::new()
        } else {
            wanted.keys().copied().collect()
        };
        self.wanted = Some(wanted);
        if self.announced.as_ref() == Some(&vips) {
            return;
        }
        // The first time, the whole configuration (taking over a running
        // BIRD, or starting one); then only the routes change.
        let result = match self.announced {
            None => self.bird.apply(&self.binary, &self.settings, &vips),
            Some(_) => self.bird.announce(&vips),
        };
        match result {
            Ok(()) => {
                info!(vips = vips.len(), "BGP announcements updated");
                self.announced = Some(vips);
            }
            // Tried again at the next refresh.
            Err(e) => {
                warn!(error = %e, "announcing over BGP");
                self.announced = None;
            }
        }
    }
}
