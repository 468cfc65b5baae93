//! How VIPs become reachable: answered at layer 2 (`arp`), or announced to
//! routers over BGP by a BIRD the agent runs (`bgp`).

pub mod arp;
pub mod bgp;
pub mod bird;
pub mod commands;
pub mod plan;

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

/// What the agent announces with, as configured.
pub enum Announcement {
    Arp,
    Bgp {
        settings: bgp::BgpSettings,
        /// The BIRD binary, found before anything was loaded.
        bird: PathBuf,
    },
    None,
}

/// Keeps the segment or the routers told of the VIPs.
pub enum Announcer {
    Arp(arp::Announcer),
    Bgp(Speaker),
    None,
}

impl Announcer {
    pub fn start(
        announcement: Announcement,
        interfaces: &[String],
        bpffs: &Path,
    ) -> std::io::Result<Self> {
        Ok(match announcement {
            Announcement::Arp => Self::Arp(arp::Announcer::new(interfaces)?),
            Announcement::Bgp { settings, bird } => Self::Bgp(Speaker {
                bird: bird::Bird::of(bpffs),
                binary: bird,
                settings,
                announced: None,
                wanted: None,
            }),
            Announcement::None => Self::None,
        })
    }

    /// Brings the announcements in line with what is served: ARP announces
    /// every VIP programmed; BGP each VIP with a backend that takes new flows
    /// and passes its health check, in a Service that was programmed.
    pub fn update(
        &mut self,
        dataplane: &Dataplane,
        state: &DesiredState,
        failed: &BTreeMap<Frontend, String>,
    ) {
        match self {
            Self::Arp(announcer) => {
                announcer.update(dataplane.services().map(|s| s.spec.frontend.vip).collect());
            }
            Self::Bgp(speaker) => {
                speaker.update(state.healthy_vips(|frontend| !failed.contains_key(frontend)));
            }
            Self::None => {}
        }
    }

    /// Checks again what only time changes (`lb drain`, a BIRD that failed).
    pub fn refresh(&mut self) {
        if let Self::Bgp(speaker) = self
            && let Some(wanted) = speaker.wanted.clone()
        {
            speaker.update(wanted);
        }
    }
}

/// The agent's side of its BIRD.
pub struct Speaker {
    bird: bird::Bird,
    binary: PathBuf,
    settings: bgp::BgpSettings,
    /// What BIRD was last told to announce; `None` until it was configured.
    announced: Option<BTreeSet<IpAddr>>,
    /// What the data path says should be announced.
    wanted: Option<BTreeSet<IpAddr>>,
}

impl Speaker {
    fn update(&mut self, wanted: BTreeSet<IpAddr>) {
        self.wanted = Some(wanted.clone());
        let vips = if self.bird.draining() {
            BTreeSet::new()
        } else {
            wanted
        };
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
