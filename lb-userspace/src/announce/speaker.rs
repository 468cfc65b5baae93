//! The agent's side of its BIRD: the sessions (BGPPeer objects when there
//! are any, else the `--bgp-*` flags), and the routes the plan and the data
//! path ask for, told to BIRD when they change.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use tracing::{info, warn};

use super::{
    bgp::BgpSettings,
    bird::{Bird, find_binary},
    bird_config::Exports,
    plan::BgpAnnouncement,
};
use crate::k8s::{metallb::bgp::sessions, objects::MetallbObjects, translate::Skipped};

/// How the agent's BGP is set up by its flags.
#[derive(Clone)]
pub struct BgpStart {
    /// The sessions of `--announce bgp` and the `--bgp-*` flags.
    pub flags: Option<BgpSettings>,
    /// `--bird`: looked for when there first are sessions.
    pub bird: PathBuf,
    /// `--bgp-router-id`, for the sessions of BGPPeer objects too.
    pub router_id: Option<Ipv4Addr>,
}

pub struct Speaker {
    bird: Bird,
    start: BgpStart,
    binary: Option<PathBuf>,
    /// The sessions of BGPPeer objects; `None` while there are none.
    objects: Option<BgpSettings>,
    skipped: Vec<Skipped>,
    /// What BIRD was last configured with; `None` until it was.
    applied: Option<Applied>,
    /// The routes the plan and the data path say should be announced.
    /// `None` until the first sync says what is served: until then a BIRD
    /// taken over from an earlier agent keeps announcing what it did.
    wanted: Option<BTreeMap<IpAddr, Vec<BgpAnnouncement>>>,
    /// The problems last logged, so each is said once.
    said: BTreeSet<String>,
}

#[derive(PartialEq, Eq)]
struct Applied {
    settings: BgpSettings,
    exports: Exports,
    vips: BTreeSet<IpAddr>,
}

impl Speaker {
    pub fn new(bpffs: &Path, start: BgpStart) -> Self {
        Self {
            bird: Bird::of(bpffs),
            start,
            binary: None,
            objects: None,
            skipped: Vec::new(),
            applied: None,
            wanted: None,
            said: BTreeSet::new(),
        }
    }

    /// Takes the sessions from MetalLB's BGPPeers (and the BFDProfiles and
    /// Secrets they name). Skipped peers, and flags the objects overrule,
    /// are logged when that changes.
    pub fn configure(&mut self, metallb: &MetallbObjects) {
        let (valid, skipped) = sessions(metallb);
        for skipped in skipped.iter().filter(|s| !self.skipped.contains(s)) {
            warn!("skipping {skipped}");
        }
        self.skipped = skipped;
        let objects = (!valid.is_empty()).then_some(BgpSettings {
            router_id: self.start.router_id,
            sessions: valid,
        });
        if let (Some(flags), Some(objects), None) = (&self.start.flags, &objects, &self.objects) {
            warn!(
                flag_peers = flags.sessions.len(),
                bgp_peers = objects.sessions.len(),
                "--bgp-peer and --bgp-asn are overruled: MetalLB's BGPPeer objects exist, and \
                 BGP sessions are set up as they say; remove the flags, or the BGPPeers"
            );
        }
        self.objects = objects;
    }

    /// The sessions in force: the objects', else the flags'.
    fn settings(&self) -> Option<&BgpSettings> {
        self.objects.as_ref().or(self.start.flags.as_ref())
    }

    pub fn has_sessions(&self) -> bool {
        self.settings().is_some()
    }

    /// Announces `wanted` (each healthy VIP's announcements), unless
    /// draining.
    pub fn update(&mut self, wanted: BTreeMap<IpAddr, Vec<BgpAnnouncement>>) {
        self.wanted = Some(wanted);
        self.refresh();
    }

    /// Brings BIRD in line again: what only time changes (`lb drain`, a BIRD
    /// that failed or was missing) is seen here.
    pub fn refresh(&mut self) {
        let Some(wanted) = &self.wanted else {
            return;
        };
        let settings = match self.settings() {
            Some(settings) => settings.clone(),
            // Sessions gone, or none for this agent where an earlier one
            // left its BIRD running: that BIRD keeps none, so it announces
            // nothing the agent does not serve.
            None if self.applied.is_some() || self.bird.running() => BgpSettings {
                router_id: self.start.router_id,
                sessions: Vec::new(),
            },
            None => return,
        };
        let (exports, problems, vips) = if self.bird.draining() {
            Default::default()
        } else {
            let (exports, problems) = Exports::of(wanted, &settings.sessions);
            let vips = wanted
                .keys()
                .copied()
                .filter(|vip| exports.carries(*vip))
                .collect();
            (exports, problems, vips)
        };
        let desired = Applied {
            settings,
            exports,
            vips,
        };
        if self.applied.as_ref() == Some(&desired) {
            // A BIRD with sessions that died (killed, out of memory) is
            // started again, and told everything.
            if desired.settings.sessions.is_empty() || self.bird.running() {
                return;
            }
            warn!("BIRD stopped answering on its control socket: starting it again");
            self.applied = None;
        }
        let result = self.binary().and_then(|binary| match &self.applied {
            // Only routes changed: the sessions are left alone.
            Some(applied) if applied.settings == desired.settings => self
                .bird
                .announce(&desired.settings, &desired.exports)
                .map_err(|e| e.to_string()),
            _ => self
                .bird
                .apply(&binary, &desired.settings, &desired.exports)
                .map_err(|e| e.to_string()),
        });
        let mut said = problems.into_iter().collect::<BTreeSet<_>>();
        match result {
            Ok(()) => {
                info!(
                    sessions = desired.settings.sessions.len(),
                    prefixes = desired.exports.prefixes().len(),
                    "BGP announcements updated"
                );
                self.applied = Some(desired);
            }
            // Tried again at the next refresh.
            Err(e) => {
                said.insert(format!("announcing over BGP: {e}"));
                self.applied = None;
            }
        }
        for problem in said.difference(&self.said) {
            warn!("{problem}");
        }
        self.said = said;
    }

    /// The BIRD binary, looked for once there are sessions, so that
    /// configuration appearing later finds it (or says it is missing).
    fn binary(&mut self) -> Result<PathBuf, String> {
        if let Some(binary) = &self.binary {
            return Ok(binary.clone());
        }
        let binary = find_binary(&self.start.bird).map_err(|e| e.to_string())?;
        self.binary = Some(binary.clone());
        Ok(binary)
    }

    /// The VIPs BIRD was last told to announce to some session.
    pub fn announced(&self) -> BTreeSet<IpAddr> {
        self.applied
            .as_ref()
            .map(|applied| applied.vips.clone())
            .unwrap_or_default()
    }
}
