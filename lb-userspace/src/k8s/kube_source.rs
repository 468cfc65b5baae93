//! Services, Nodes and EndpointSlices, Namespaces, and MetalLB's
//! configuration in its namespace, read from a Kubernetes API server through
//! kube-rs reflectors: each kind is listed once, then watched, with kube's
//! backoff on errors, resumption from the last resourceVersion on dropped
//! connections and a fresh list on 410 Gone. The stores swap a re-list in
//! whole, so a restarting watch never shows a half-empty cluster.

mod optional;

use std::{fmt::Debug, hash::Hash, path::PathBuf, time::Duration};

use futures::{StreamExt as _, future};
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Secret, Service},
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

use super::{
    election::{ElectionConfig, Elections, Elector},
    metallb::objects::{
        BFDProfile, BGPAdvertisement, BGPPeer, Community, IPAddressPool, L2Advertisement,
        from_value,
    },
    objects::{ClusterObjects, MetallbObjects},
    source::Layer2Answers,
    status::StatusWriter,
    translate::{Role, Translation},
};
use optional::{OptionalKind, Scope, core};

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
    namespaces: OptionalKind,
    metallb: MetallbKinds,
    /// Objects skipped as malformed, as logged last time.
    skipped: Vec<String>,
    /// Bumped by the watch tasks on every change.
    changes: watch::Receiver<()>,
    status: StatusWriter,
    /// Of the agent that writes.
    election: Election,
    /// Of the agent that answers at layer 2 on this agent's segment.
    layer2: Election,
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
    pub async fn connect(
        config: &KubeConfigSource,
        metallb_namespace: &str,
        identity: &str,
        elections: Option<Elections>,
    ) -> Result<Self, KubeError> {
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
            slices: reflect(Api::all(client.clone()), changed.clone()),
            namespaces: OptionalKind::start::<Namespace>(
                client.clone(),
                Scope::Cluster,
                changed.clone(),
            ),
            metallb: MetallbKinds::start(&client, metallb_namespace, &changed),
            election: Election::of(&client, elections.as_ref().map(|e| &e.controller), &changed),
            layer2: Election::of(
                &client,
                elections.as_ref().and_then(|e| e.layer2.as_ref()),
                &changed,
            ),
            skipped: Vec::new(),
            changes,
            status: StatusWriter::new(client, identity),
            ready: false,
            forced: false,
            next_resync: Instant::now() + RESYNC,
            last_read: Instant::now(),
            read_at: None,
        })
    }

    /// Gives up the Lease of the writer if this agent holds it (it writes no
    /// more statuses), and with `layer2` the layer 2 one, then records the
    /// Events still queued, for at most `grace`.
    pub(super) async fn flush(&mut self, grace: Duration, layer2: bool) {
        let layer2_resigned = async {
            if layer2 {
                self.layer2.resign().await;
            }
        };
        tokio::join!(self.election.resign(), layer2_resigned);
        self.status.flush(grace).await;
    }

    /// Whether this agent assigns addresses and writes statuses: it is
    /// elected, or there is no election.
    pub(super) fn assigns(&self) -> bool {
        self.election.holds(Elector::leading)
    }

    /// Whether this agent answers for the VIPs at layer 2: its segment's
    /// Lease names it (`Elector::named`), or there is no election.
    pub(super) fn speaks_layer2(&self) -> bool {
        self.layer2.holds(Elector::named)
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
            self.namespaces.ready().await;
            self.metallb.ready().await;
            // Started before any await: a caller that drops this future
            // must find it running, not lost.
            self.election.start();
            self.layer2.start();
            self.election.settled().await;
            self.layer2.settled().await;
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
        let mut skipped = Vec::new();
        let objects = ClusterObjects {
            services: self.services.state(),
            nodes: self.nodes.state(),
            endpoint_slices: self.slices.state(),
            namespaces: self.namespaces.objects(core, &mut skipped),
            metallb: self.metallb.objects(&mut skipped),
        };
        for reason in skipped.iter().filter(|r| !self.skipped.contains(r)) {
            warn!("skipping {reason}");
        }
        self.skipped = skipped;
        objects
    }

    pub(super) fn refresh(&mut self) {
        self.forced = true;
    }

    /// See `Source::report_layer2`.
    pub(super) fn report_layer2(&mut self, answers: &Layer2Answers) {
        self.status.report_layer2(&self.services, answers);
    }

    /// Writes VIPs into the Services' status and Events for what went wrong;
    /// what fails is tried again soon. Only a translation made as the elected
    /// agent, which it still is, is written: the elected agent writes for
    /// everyone.
    pub(super) async fn report(
        &mut self,
        translation: &Translation,
        role: Role,
        unprogrammed: &[(String, String)],
    ) {
        if role != Role::Assign || !self.assigns() {
            self.status.remember_released(translation);
            // What this host's data path could not serve is this host's to
            // tell: its Events name it.
            self.status
                .report_problems(&self.services, None, unprogrammed);
            return;
        }
        if !self
            .status
            .write(&self.services, translation, unprogrammed)
            .await
        {
            self.next_resync = Instant::now() + RETRY;
        }
    }
}

/// Whether this agent takes part in an election (of the one that writes,
/// or of the one that answers at layer 2).
enum Election {
    /// It does the elected one's duty on its own (`--leader-elect false`).
    Alone,
    /// It will take part once its first lists are in, so that an agent that
    /// cannot read the cluster never holds the Lease: what starting needs.
    Candidate(Client, ElectionConfig, watch::Sender<()>),
    Running(Elector),
}

impl Election {
    /// A candidate by `config`, or alone without one.
    fn of(client: &Client, config: Option<&ElectionConfig>, changed: &watch::Sender<()>) -> Self {
        match config {
            Some(config) => Self::Candidate(client.clone(), config.clone(), changed.clone()),
            None => Self::Alone,
        }
    }

    /// A candidate starts taking part.
    fn start(&mut self) {
        *self = match std::mem::replace(self, Self::Alone) {
            Self::Candidate(client, config, changed) => {
                Self::Running(Elector::start(client, config, changed))
            }
            other => other,
        };
    }

    /// Waits for the first attempt's outcome (see `Elector::settled`).
    async fn settled(&mut self) {
        if let Self::Running(elector) = self {
            elector.settled().await;
        }
    }

    async fn resign(&mut self) {
        if let Self::Running(elector) = self {
            elector.resign().await;
        }
    }

    /// Whether this agent does the elected one's duty: alone, or `elected`.
    fn holds(&self, elected: impl Fn(&Elector) -> bool) -> bool {
        match self {
            Self::Alone => true,
            Self::Candidate(..) => false,
            Self::Running(elector) => elected(elector),
        }
    }
}

/// MetalLB's configuration objects, and the Secrets BGPPeers' passwords are
/// in, in MetalLB's namespace.
struct MetallbKinds {
    pools: OptionalKind,
    l2_advertisements: OptionalKind,
    bgp_advertisements: OptionalKind,
    bgp_peers: OptionalKind,
    bfd_profiles: OptionalKind,
    communities: OptionalKind,
    secrets: OptionalKind,
}

impl MetallbKinds {
    fn start(client: &Client, namespace: &str, changed: &watch::Sender<()>) -> Self {
        fn start<K: Resource<DynamicType = ()>>(
            client: &Client,
            namespace: &str,
            changed: &watch::Sender<()>,
        ) -> OptionalKind {
            OptionalKind::start::<K>(client.clone(), Scope::Namespace(namespace), changed.clone())
        }
        Self {
            pools: start::<IPAddressPool>(client, namespace, changed),
            l2_advertisements: start::<L2Advertisement>(client, namespace, changed),
            bgp_advertisements: start::<BGPAdvertisement>(client, namespace, changed),
            bgp_peers: start::<BGPPeer>(client, namespace, changed),
            bfd_profiles: start::<BFDProfile>(client, namespace, changed),
            communities: start::<Community>(client, namespace, changed),
            secrets: start::<Secret>(client, namespace, changed),
        }
    }

    fn kinds(&self) -> [&OptionalKind; 7] {
        [
            &self.pools,
            &self.l2_advertisements,
            &self.bgp_advertisements,
            &self.bgp_peers,
            &self.bfd_profiles,
            &self.communities,
            &self.secrets,
        ]
    }

    async fn ready(&self) {
        future::join_all(self.kinds().map(OptionalKind::ready)).await;
    }

    fn objects(&self, skipped: &mut Vec<String>) -> MetallbObjects {
        MetallbObjects {
            pools: self.pools.objects(from_value, skipped),
            l2_advertisements: self.l2_advertisements.objects(from_value, skipped),
            bgp_advertisements: self.bgp_advertisements.objects(from_value, skipped),
            bgp_peers: self.bgp_peers.objects(from_value, skipped),
            bfd_profiles: self.bfd_profiles.objects(from_value, skipped),
            communities: self.communities.objects(from_value, skipped),
            secrets: self.secrets.objects(core, skipped),
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
