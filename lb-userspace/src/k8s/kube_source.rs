//! Services, Nodes and EndpointSlices read from a Kubernetes API server through
//! kube-rs reflectors: each kind is listed once, then watched, with kube's
//! backoff on errors, resumption from the last resourceVersion on dropped
//! connections and a fresh list on 410 Gone. The stores swap a re-list in
//! whole, so a restarting watch never shows a half-empty cluster.

use std::{fmt::Debug, hash::Hash, path::PathBuf, time::Duration};

use futures::{StreamExt as _, future};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config, Resource,
    config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::{
    sync::watch,
    time::{Instant, sleep_until},
};
use tracing::{info, warn};

use super::{objects::ClusterObjects, status::StatusWriter, translate::Translation};

/// The objects are read at most this often, so that a burst of changes (a
/// rollout, a re-list) costs one reconciliation per interval instead of one
/// per change. A change after a quiet spell is read at once: waiting for more
/// would only delay it.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// How often to reconcile without a change, as a safety net.
const RESYNC: Duration = Duration::from_secs(300);
/// How soon to try again after a status or event write failed.
const RETRY: Duration = Duration::from_secs(2);

/// Where the API server and credentials come from.
#[derive(Debug, Clone)]
pub enum KubeConfigSource {
    /// A kubeconfig file (its current context).
    File(PathBuf),
    /// The service account of the pod lb runs in.
    InCluster,
}

#[derive(thiserror::Error, Debug)]
pub enum KubeError {
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] KubeconfigError),
    #[error("in-cluster configuration: {0}")]
    InCluster(#[from] InClusterError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// The cluster as the reflectors see it.
pub struct KubeSource {
    services: Store<Service>,
    nodes: Store<Node>,
    slices: Store<EndpointSlice>,
    /// Bumped by the watch tasks on every change.
    changes: watch::Receiver<()>,
    status: StatusWriter,
    /// Until every store has finished its first list, nothing is reported: an
    /// empty store would look like every Service was deleted.
    ready: bool,
    forced: bool,
    next_resync: Instant,
    /// When the objects were last read.
    last_read: Instant,
    /// A change was seen: the objects are read once this has passed. Kept
    /// here, not in `changed`'s future, so that a caller that drops the
    /// future (another branch of its `select!` won) loses no change.
    read_at: Option<Instant>,
}

impl KubeSource {
    /// Builds the client and starts watching (needs a Tokio runtime). An API
    /// server that is down is not an error: the watches retry until it is up.
    pub async fn connect(config: &KubeConfigSource) -> Result<Self, KubeError> {
        let config = match config {
            KubeConfigSource::File(path) => {
                let kubeconfig = Kubeconfig::read_from(path)?;
                Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?
            }
            KubeConfigSource::InCluster => Config::incluster()?,
        };
        info!(server = %config.cluster_url, "watching the Kubernetes API");
        let client = Client::try_from(config)?;
        let (changed, changes) = watch::channel(());
        Ok(Self {
            services: reflect(Api::all(client.clone()), changed.clone()),
            nodes: reflect(Api::all(client.clone()), changed.clone()),
            slices: reflect(Api::all(client.clone()), changed),
            changes,
            status: StatusWriter::new(client),
            ready: false,
            forced: false,
            next_resync: Instant::now() + RESYNC,
            last_read: Instant::now(),
            read_at: None,
        })
    }

    /// Waits for a change (or a refresh, or the periodic resync) and returns
    /// the objects as they are now.
    pub(super) async fn changed(&mut self) -> ClusterObjects {
        if !self.ready {
            // The watch tasks only end with the runtime, so the stores stay alive.
            let _ = future::try_join3(
                self.services.wait_until_ready(),
                self.nodes.wait_until_ready(),
                self.slices.wait_until_ready(),
            )
            .await;
            self.ready = true;
            info!("initial lists received");
        } else if !std::mem::take(&mut self.forced) {
            if self.read_at.is_none() {
                tokio::select! {
                    changed = self.changes.changed() => {
                        if changed.is_err() {
                            // Without watch tasks there will be no change again.
                            future::pending::<()>().await;
                        }
                        self.read_at = Some(self.last_read + MIN_INTERVAL);
                    }
                    () = sleep_until(self.next_resync) => {}
                }
            }
            if let Some(deadline) = self.read_at {
                sleep_until(deadline).await;
            }
        }
        self.read_at = None;
        self.changes.mark_unchanged();
        self.last_read = Instant::now();
        self.next_resync = self.last_read + RESYNC;
        ClusterObjects {
            services: self.services.state(),
            nodes: self.nodes.state(),
            endpoint_slices: self.slices.state(),
            ..ClusterObjects::default()
        }
    }

    pub(super) fn refresh(&mut self) {
        self.forced = true;
    }

    /// Writes VIPs into the Services' status and Events for what went wrong;
    /// what fails is tried again soon.
    pub(super) async fn report(&mut self, translation: &Translation) {
        if !self.status.write(&self.services, translation).await {
            self.next_resync = Instant::now() + RETRY;
        }
    }
}

/// Starts a reflector of `api` that bumps `changed` whenever its store changes.
fn reflect<K>(api: Api<K>, changed: watch::Sender<()>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(stream.for_each(move |event| {
        match event {
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
                changed.send_replace(());
            }
            // A re-list in progress: the store changes at InitDone.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Err(error) => warn!(kind, %error, "watch failed; retrying"),
        }
        future::ready(())
    }));
    store
}
