//! An in-process Kubernetes API server for tests: real HTTP/1.1 over TCP,
//! speaking the protocol kube-rs speaks to a cluster (lists with
//! resourceVersion and continue tokens, watch streams with bookmarks and 410
//! Gone, the status subresource, optimistic concurrency, Events), with the
//! objects in memory and controls a real server lacks: compact the watch
//! history, drop every watch connection, stop and restart on the same port.
//!
//! It serves Services, Nodes, EndpointSlices, events.k8s.io Events,
//! Namespaces, Secrets and, once their CRDs are installed, MetalLB's kinds. The
//! agent under test gets a kubeconfig pointing at it ([`FakeApiServer::write_kubeconfig`]).
//! Plain HTTP by default; with [`Options::tls`], HTTPS with a certificate
//! made at start ([`FakeApiServer::ca_pem`]), as in-cluster config needs.
//! With [`Options::rbac`], requests are authorized as the API server's RBAC
//! authorizer would, by the rules a manifest binds to its ServiceAccount.

pub mod fixtures;
mod http;
mod kinds;
mod objects;
mod rbac;
mod store;
mod tls;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    ops::RangeInclusive,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use base64::Engine as _;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Resource as KubeResource;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use socket2::{Domain, Socket, Type};
use tokio::{runtime::Runtime, task::AbortHandle};

pub use kinds::Kind;
pub use objects::ApiError;
pub use rbac::Authorizer;
pub use store::Stats;

use crate::netns::NetNs;
use http::Shared;
use objects::Allocations;
use store::Store;

/// The bearer token in the kubeconfig, checked on every request.
const TOKEN: &str = "lb-test-token";

#[derive(Clone, Debug)]
pub struct Options {
    /// Changes kept for watches to resume from; older resourceVersions get 410.
    pub history_limit: usize,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
    /// `--service-node-port-range`.
    pub node_ports: RangeInclusive<u16>,
    /// Serve HTTPS (a CA and a certificate for 127.0.0.1 made at start)
    /// instead of plain HTTP.
    pub tls: bool,
    /// MetalLB's CRDs are installed (see [`FakeApiServer::install_metallb_crds`]):
    /// without them, its kinds are 404 Not Found, as on a cluster without MetalLB.
    pub metallb_crds: bool,
    /// Enforce RBAC: requests it does not grant are 403 Forbidden (see
    /// [`FakeApiServer::denied`]). Without it, the token may do anything.
    pub rbac: Option<Authorizer>,
    /// The address to listen on, in the namespace `start` is given: one on
    /// a segment lets agents in other namespaces reach the server.
    pub address: Ipv4Addr,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(1),
            node_ports: 30000..=32767,
            tls: false,
            metallb_crds: false,
            rbac: None,
            address: Ipv4Addr::LOCALHOST,
        }
    }
}

/// A running fake API server; dropping it stops it.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    runtime: Runtime,
    addr: SocketAddrV4,
    /// The accept loop and every connection, so that stopping closes them all.
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    /// Set when serving HTTPS.
    tls: Option<tls::Tls>,
}

impl FakeApiServer {
    /// Starts serving on `options.address` (an ephemeral port) inside `ns`,
    /// or in the calling thread's namespace.
    pub fn start(ns: Option<&NetNs>, options: Options) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-apiserver")
            .enable_all()
            .build()
            .context("starting the fake API server's runtime")?;
        let tls = match options.tls {
            true => Some(tls::Tls::generate()?),
            false => None,
        };
        let store = Store::new(options.history_limit, Allocations::new(options.node_ports));
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            token: TOKEN.to_owned(),
            bookmark_interval: options.bookmark_interval,
            metallb_crds: AtomicBool::new(options.metallb_crds),
            authorizer: options.rbac,
            denied: Mutex::default(),
        });
        let mut server = Self {
            shared,
            runtime,
            addr: SocketAddrV4::new(options.address, 0),
            tasks: Arc::default(),
            tls,
        };
        server.listen(ns)?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        let scheme = match self.tls {
            Some(_) => "https",
            None => "http",
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// The bearer token every request must carry.
    pub fn token(&self) -> &'static str {
        TOKEN
    }

    /// The PEM of the CA that signed the server's certificate, when serving
    /// HTTPS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|tls| tls.ca_pem.as_str())
    }

    /// Installs MetalLB's CRDs: its kinds are served from now on.
    pub fn install_metallb_crds(&self) {
        self.shared.metallb_crds.store(true, Ordering::Relaxed);
    }

    /// Takes MetalLB's CRDs away again: lists and watches of its kinds are
    /// 404 from now on (as while an upgrade replaces them); watches already
    /// open go on until [`FakeApiServer::drop_watches`].
    pub fn remove_metallb_crds(&self) {
        self.shared.metallb_crds.store(false, Ordering::Relaxed);
    }

    /// Writes a kubeconfig whose current context is this server.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url}{ca}
contexts:
- name: fake
  context:
    cluster: fake
    user: tester
    namespace: default
current-context: fake
users:
- name: tester
  user:
    token: {TOKEN}
",
            url = self.url(),
            ca = match self.ca_pem() {
                Some(pem) => format!(
                    "\n    certificate-authority-data: {}",
                    base64::engine::general_purpose::STANDARD.encode(pem)
                ),
                None => String::new(),
            },
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Writes what in-cluster config reads from a Pod's service account into
    /// `dir`: `token`, `ca.crt` (HTTPS only) and `namespace`.
    pub fn write_service_account(&self, dir: &Path, namespace: &str) -> Result<()> {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
        };
        write("token", TOKEN)?;
        write("namespace", namespace)?;
        if let Some(pem) = self.ca_pem() {
            write("ca.crt", pem)?;
        }
        Ok(())
    }

    /// Stops serving: the listener and every connection close at once, as
    /// when an API server crashes. Objects stay (they live in etcd).
    pub fn stop(&self) {
        for task in self.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
        self.store().drop_watches();
    }

    /// Serves again on the same address after [`stop`](Self::stop). The watch
    /// cache starts empty, as after a real restart: watches resuming from
    /// before it get 410 Gone.
    pub fn restart(&mut self, ns: Option<&NetNs>) -> Result<()> {
        self.stop();
        self.store().compact();
        self.listen(ns)
    }

    fn listen(&mut self, ns: Option<&NetNs>) -> Result<()> {
        let addr = self.addr;
        let listener = match ns {
            Some(ns) => ns.enter(move || bind(addr))?,
            None => bind(addr),
        }
        .with_context(|| format!("binding the fake API server to {addr}"))?;
        if let SocketAddr::V4(bound) = listener.local_addr()? {
            self.addr = bound;
        }
        let _runtime = self.runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (shared, tasks) = (Arc::clone(&self.shared), Arc::clone(&self.tasks));
        let acceptor = self.tls.as_ref().map(|tls| tls.acceptor.clone());
        let accept = self.runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = Arc::clone(&shared);
                let service = service_fn(move |request| http::handle(request, Arc::clone(&shared)));
                let acceptor = acceptor.clone();
                let connection = tokio::spawn(async move {
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match acceptor {
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => {
                                http.serve_connection(TokioIo::new(stream), service).await
                            }
                            Err(_) => return,
                        },
                    };
                });
                let mut tasks = tasks.lock().expect("tasks lock");
                tasks.retain(|task| !task.is_finished());
                tasks.push(connection.abort_handle());
            }
        });
        self.tasks
            .lock()
            .expect("tasks lock")
            .push(accept.abort_handle());
        Ok(())
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.shared.store()
    }

    /// Runs `f` with the cluster locked, so that several changes happen with
    /// no request in between (say, a change and a compaction that hides it).
    pub fn cluster<T>(&self, f: impl FnOnce(&mut Cluster) -> T) -> T {
        f(&mut Cluster(&mut self.store()))
    }

    /// Creates or replaces `object` (see [`Cluster::apply`]).
    pub fn apply<K: Resource + Serialize + DeserializeOwned>(&self, object: &K) -> Result<K> {
        self.cluster(|cluster| cluster.apply(object))
    }

    pub fn delete<K: Resource>(&self, namespace: Option<&str>, name: &str) -> Result<()> {
        self.cluster(|cluster| cluster.delete::<K>(namespace, name))
    }

    pub fn get<K: Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<K>> {
        self.cluster(|cluster| cluster.get(namespace, name))
    }

    /// Who holds the Lease `name` in `lb-system` (the agents' default
    /// namespace for their elections), if anyone.
    pub fn lease_holder(&self, name: &str) -> Option<String> {
        let lease = self.get::<Lease>(Some("lb-system"), name).ok()??;
        lease.spec?.holder_identity
    }

    /// Every object of kind `K`, sorted by namespace and name.
    pub fn list<K: Resource + DeserializeOwned>(&self) -> Result<Vec<K>> {
        self.cluster(|cluster| cluster.list())
    }

    /// Forgets the watch history (see [`Cluster::compact`]).
    pub fn compact(&self) {
        self.store().compact();
    }

    /// Aborts every watch connection mid-stream.
    pub fn drop_watches(&self) {
        self.store().drop_watches();
    }

    pub fn stats(&self) -> Stats {
        self.store().stats.clone()
    }

    /// The requests RBAC refused (see [`Options::rbac`]), as the server
    /// answered them.
    pub fn denied(&self) -> Vec<String> {
        self.shared
            .denied
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A listener on `addr` that can be bound again right after being closed,
/// connections in TIME_WAIT notwithstanding.
fn bind(addr: SocketAddrV4) -> Result<TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::V4(addr).into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The objects, as tests change them (typed, through the same rules as
/// requests: allocations, resourceVersions, watch events).
pub struct Cluster<'a>(&'a mut Store);

impl Cluster<'_> {
    /// Creates `object`, or replaces the stored one whatever its
    /// resourceVersion. Its status too, if it has one: tests play every
    /// other controller.
    pub fn apply<K: Resource + Serialize + DeserializeOwned>(&mut self, object: &K) -> Result<K> {
        let kind = kind::<K>()?;
        let value = serde_json::to_value(object)?;
        let namespace = namespace(kind, value["metadata"]["namespace"].as_str());
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = (kind, namespace.clone(), name);
        let stored = match self.0.get(&key) {
            Err(_) => {
                let created = self.0.create(kind, &namespace, value.clone())?;
                match kind.has_status() && value.get("status").is_some() {
                    true => self.0.replace(&key, with_version(value, &created), true)?,
                    false => created,
                }
            }
            Ok(current) => {
                let updated = self
                    .0
                    .replace(&key, with_version(value.clone(), &current), false)?;
                match kind.has_status() && value.get("status").is_some() {
                    true => self.0.replace(&key, with_version(value, &updated), true)?,
                    false => updated,
                }
            }
        };
        Ok(serde_json::from_value(stored)?)
    }

    pub fn delete<K: Resource>(&mut self, namespace: Option<&str>, name: &str) -> Result<()> {
        let kind = kind::<K>()?;
        let key = (kind, self::namespace(kind, namespace), name.to_owned());
        self.0.delete(&key)?;
        Ok(())
    }

    pub fn get<K: Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<K>> {
        let kind = kind::<K>()?;
        let key = (kind, self::namespace(kind, namespace), name.to_owned());
        match self.0.get(&key) {
            Ok(value) => Ok(Some(serde_json::from_value(value)?)),
            Err(_) => Ok(None),
        }
    }

    pub fn list<K: Resource + DeserializeOwned>(&self) -> Result<Vec<K>> {
        let values = self.0.list(kind::<K>()?, None);
        let objects = values.into_iter().map(serde_json::from_value);
        Ok(objects.collect::<Result<_, _>>()?)
    }

    /// Forgets the watch history: a watch resuming from any earlier
    /// resourceVersion gets 410 Gone and must list again.
    pub fn compact(&mut self) {
        self.0.compact();
    }

    /// Aborts every watch connection mid-stream; clients resume from the last
    /// resourceVersion they saw.
    pub fn drop_watches(&mut self) {
        self.0.drop_watches();
    }
}

fn kind<K: Resource>() -> Result<Kind> {
    Kind::of::<K>().ok_or_else(|| anyhow!("the fake API server does not serve {}", K::kind(&())))
}

/// A type of object tests read and write: k8s-openapi's, and custom
/// resources (MetalLB's objects).
pub trait Resource: KubeResource<DynamicType = ()> {}

impl<K: KubeResource<DynamicType = ()>> Resource for K {}

fn namespace(kind: Kind, namespace: Option<&str>) -> String {
    match kind.namespaced() {
        true => namespace.unwrap_or("default").to_owned(),
        false => String::new(),
    }
}

/// `object` with `current`'s resourceVersion, so that a replace is not refused.
fn with_version(mut object: Value, current: &Value) -> Value {
    object["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    object
}

#[cfg(test)]
mod tests;
