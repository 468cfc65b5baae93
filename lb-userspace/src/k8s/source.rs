//! Where the agent's Kubernetes objects come from. Every source yields the same
//! `ClusterObjects`, so translation and reconciliation are written once.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
use tokio::time::{Interval, MissedTickBehavior, interval};

use super::{
    kube_source::KubeSource,
    manifests::{ManifestError, load_path},
    objects::ClusterObjects,
    translate::{Role, Translation},
};

/// How often the manifests are checked for changes.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A source of cluster objects.
pub enum Source {
    Manifests(ManifestSource),
    Kubernetes(Box<KubeSource>),
}

impl Source {
    /// Waits until the objects changed (or a refresh was asked for) and returns
    /// them as they are now. An error means the source could not be read; the
    /// caller keeps serving the last good state.
    pub async fn changed(&mut self) -> Result<ClusterObjects, ManifestError> {
        match self {
            Self::Manifests(source) => source.changed().await,
            // Watch errors are retried inside; the stores keep the last good state.
            Self::Kubernetes(source) => Ok(source.changed().await),
        }
    }

    /// Says that the data path serves what an earlier agent left pinned: a
    /// good state to keep already, which manifests that do not parse (a file
    /// caught mid-write at the start) must not take away; and `vips`, the
    /// addresses it served each Service (`namespace/name`) on. Manifests
    /// carry no status, so the first read shows those as the status of each
    /// Service that has none, and the Services keep their addresses as they
    /// would from an API server's statuses.
    pub fn keep_inherited_state(&mut self, vips: BTreeMap<String, Vec<IpAddr>>) {
        match self {
            Self::Manifests(source) => {
                source.served = true;
                source.inherited_vips = vips;
            }
            // The API server's objects are whole or not listed at all, and
            // the Services' statuses hold their addresses.
            Self::Kubernetes(_) => {}
        }
    }

    /// What this agent does about addresses: manifests are one agent's
    /// alone; against an API server, only the elected agent assigns.
    pub fn role(&self) -> Role {
        match self {
            Self::Kubernetes(source) if !source.assigns() => Role::Adopt,
            _ => Role::Assign,
        }
    }

    /// Whether this agent answers ARP and NDP for the VIPs: against an API
    /// server with an election, only the agent the Lease names (one answer
    /// on the segment, and another host's when it takes over); otherwise
    /// every agent, as it is the only one.
    pub fn speaks_layer2(&self) -> bool {
        match self {
            Self::Kubernetes(source) => source.speaks_layer2(),
            Self::Manifests(_) => true,
        }
    }

    /// Makes the next `changed` return a fresh read even if nothing changed.
    pub fn refresh(&mut self) {
        match self {
            Self::Manifests(source) => source.forced = true,
            Self::Kubernetes(source) => source.refresh(),
        }
    }

    /// Finishes what the source still owes the cluster as the agent stops:
    /// a Kubernetes source gives up its Leases (the layer 2 one only if
    /// `detaching`: else the data path left answers on) and records its
    /// queued Events, for at most `grace`.
    pub async fn close(&mut self, grace: Duration, detaching: bool) {
        match self {
            Self::Manifests(_) => {}
            Self::Kubernetes(source) => source.flush(grace, detaching).await,
        }
    }

    /// Tells the source what was made of its objects, in `role`, and which
    /// Services (`namespace/name`) the data path could not serve, and why: a
    /// Kubernetes source writes the assigned VIPs back into the Services'
    /// status, and Events of the problems, if that role, and this agent's
    /// now, is to assign; else only Events of what its data path could not
    /// serve.
    pub async fn report(
        &mut self,
        translation: &Translation,
        role: Role,
        unprogrammed: &[(String, String)],
    ) {
        match self {
            // Manifests are the operator's files: lb never writes them.
            Self::Manifests(_) => {}
            Self::Kubernetes(source) => source.report(translation, role, unprogrammed).await,
        }
    }

    /// Tells the source which Services' VIPs this host answers ARP and NDP
    /// for: a Kubernetes source records an Event on each Service this host
    /// starts answering for (or for more of).
    pub fn report_layer2(&mut self, answers: &Layer2Answers) {
        match self {
            Self::Manifests(_) => {}
            Self::Kubernetes(source) => source.report_layer2(answers),
        }
    }
}

/// The interfaces this host answers ARP and NDP on for each VIP of each
/// Service (`namespace/name`).
pub type Layer2Answers = BTreeMap<String, VipInterfaces>;

/// The interfaces (by name) ARP and NDP for each VIP are answered on.
pub type VipInterfaces = BTreeMap<IpAddr, Vec<String>>;

/// YAML manifests in a file or directory, polled for changes.
pub struct ManifestSource {
    path: PathBuf,
    /// Created on first use: a timer needs the runtime, the source does not.
    ticker: Option<Interval>,
    seen: Option<Fingerprint>,
    forced: bool,
    /// A read has been handed out, or the data path was inherited: from then
    /// on there is a good state to keep.
    served: bool,
    /// The VIPs an earlier agent served each Service on, by `namespace/name`,
    /// until the first read shows them as statuses.
    inherited_vips: BTreeMap<String, Vec<IpAddr>>,
}

impl ManifestSource {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            ticker: None,
            seen: None,
            forced: true,
            served: false,
            inherited_vips: BTreeMap::new(),
        }
    }

    async fn changed(&mut self) -> Result<ClusterObjects, ManifestError> {
        let ticker = self.ticker.get_or_insert_with(|| {
            let mut ticker = interval(POLL_INTERVAL);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticker
        });
        loop {
            ticker.tick().await;
            let fingerprint = fingerprint(&self.path);
            if !self.forced && self.seen.as_ref() == Some(&fingerprint) {
                continue;
            }
            self.forced = false;
            self.seen = Some(fingerprint);
            let loaded = load_path(&self.path)?;
            // A bad object is skipped and the rest served. Once something was
            // served, text that does not parse at all (a file caught mid-write,
            // garbage) must not take services away: the caller keeps the last
            // good state until the files parse again.
            if loaded.unparseable > 0 && self.served {
                return Err(ManifestError::Unparseable {
                    path: self.path.clone(),
                    count: loaded.unparseable,
                });
            }
            self.served = true;
            let mut objects = loaded.objects;
            show_as_status(&mut objects, std::mem::take(&mut self.inherited_vips));
            return Ok(objects);
        }
    }
}

/// Gives each Service of `vips` (by `namespace/name`) that shows no status
/// those addresses as its `status.loadBalancer.ingress`.
fn show_as_status(objects: &mut ClusterObjects, vips: BTreeMap<String, Vec<IpAddr>>) {
    if vips.is_empty() {
        return;
    }
    for service in &mut objects.services {
        let owner = format!(
            "{}/{}",
            service.metadata.namespace.as_deref().unwrap_or("default"),
            service.metadata.name.as_deref().unwrap_or_default()
        );
        let Some(addresses) = vips.get(&owner) else {
            continue;
        };
        let shown = service
            .status
            .as_ref()
            .and_then(|status| status.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .is_some_and(|ingress| !ingress.is_empty());
        if shown {
            continue;
        }
        let ingress = addresses
            .iter()
            .map(|ip| LoadBalancerIngress {
                ip: Some(ip.to_string()),
                ..Default::default()
            })
            .collect();
        Arc::make_mut(service).status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(ingress),
            }),
            ..Default::default()
        });
    }
}

/// Names, sizes and modification times of the manifest file or directory: a
/// cheap way to notice edits without inotify.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn fingerprint(path: &Path) -> Fingerprint {
    let entries: Vec<PathBuf> = match std::fs::read_dir(path) {
        Ok(dir) => dir.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => vec![path.to_owned()],
    };
    let mut print: Fingerprint = entries
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect();
    print.sort();
    print
}
