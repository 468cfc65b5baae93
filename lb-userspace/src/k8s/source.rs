//! Where the agent's Kubernetes objects come from. Every source yields the same
//! `ClusterObjects`, so translation and reconciliation are written once.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tokio::time::{Interval, MissedTickBehavior, interval};

use super::{
    kube_source::KubeSource,
    manifests::{ManifestError, load_path},
    objects::ClusterObjects,
    translate::Translation,
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
    /// caught mid-write at the start) must not take away.
    pub fn keep_inherited_state(&mut self) {
        match self {
            Self::Manifests(source) => source.served = true,
            // The API server's objects are whole or not listed at all.
            Self::Kubernetes(_) => {}
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
    /// a Kubernetes source records its queued Events, for at most `grace`.
    pub async fn close(&mut self, grace: Duration) {
        match self {
            Self::Manifests(_) => {}
            Self::Kubernetes(source) => source.flush(grace).await,
        }
    }

    /// Tells the source what was made of its objects (a Kubernetes source writes
    /// the assigned VIPs back into the Services' status).
    pub async fn report(&mut self, translation: &Translation) {
        match self {
            // Manifests are the operator's files: lb never writes them.
            Self::Manifests(_) => {}
            Self::Kubernetes(source) => source.report(translation).await,
        }
    }
}

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
}

impl ManifestSource {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            ticker: None,
            seen: None,
            forced: true,
            served: false,
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
            return Ok(loaded.objects);
        }
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
