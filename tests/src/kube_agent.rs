//! The real `lb agent` watching a fake API server: both in one namespace,
//! the server on that namespace's loopback, the agent given a kubeconfig for
//! it, exactly as it would be for a cluster. Or, with `--in-cluster`, given
//! what a Pod would have: the `KUBERNETES_SERVICE_*` variables and a service
//! account ([`ServiceAccount`]).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::Service;
use lb::{
    catalog::Catalog,
    model::{Frontend, Protocol},
};
use serde_json::Value;

use crate::{
    agent::Agent,
    fake_apiserver::{
        FakeApiServer, Options,
        fixtures::{ingress_ip, ingress_ips},
    },
    netns::NetNs,
};

static NEXT_KUBECONFIG: AtomicU32 = AtomicU32::new(0);

/// An agent and the API server it watches. Dropping it stops the agent
/// first, then the server.
pub struct KubeAgent {
    pub agent: Agent,
    pub server: FakeApiServer,
    /// `None` for an agent started with `--in-cluster`.
    kubeconfig: Option<PathBuf>,
}

impl KubeAgent {
    /// Starts a fake API server in `ns` and `lb agent` on `interfaces` there,
    /// with `extra` agent flags.
    pub fn start(
        ns: &NetNs,
        interfaces: &[&str],
        options: Options,
        extra: &[&str],
    ) -> Result<Self> {
        Self::with_server(
            FakeApiServer::start(Some(ns), options)?,
            ns,
            interfaces,
            extra,
        )
    }

    /// Starts `lb agent` on `interfaces` in `ns` against `server`, which
    /// must listen in `ns` (say, one filled with objects beforehand).
    pub fn with_server(
        server: FakeApiServer,
        ns: &NetNs,
        interfaces: &[&str],
        extra: &[&str],
    ) -> Result<Self> {
        let kubeconfig = std::env::temp_dir().join(format!(
            "lb-kubeconfig-{}-{}.yaml",
            std::process::id(),
            NEXT_KUBECONFIG.fetch_add(1, Ordering::Relaxed)
        ));
        server.write_kubeconfig(&kubeconfig)?;
        let path = kubeconfig.display().to_string();
        let agent = Agent::start_from(ns, interfaces, &["--kubeconfig", &path], extra)?;
        Ok(Self {
            agent,
            server,
            kubeconfig: Some(kubeconfig),
        })
    }

    /// Starts `lb agent --in-cluster` on `interfaces` in `ns` against
    /// `server` (which must listen in `ns` and serve HTTPS), as a Pod would:
    /// `KUBERNETES_SERVICE_HOST` and `_PORT` name the server, and `account`
    /// holds its token and CA.
    pub fn in_cluster(
        server: FakeApiServer,
        _account: &ServiceAccount,
        ns: &NetNs,
        interfaces: &[&str],
        extra: &[&str],
    ) -> Result<Self> {
        ns.set_env("KUBERNETES_SERVICE_HOST", server.addr().ip().to_string());
        ns.set_env("KUBERNETES_SERVICE_PORT", server.addr().port().to_string());
        let agent = Agent::start_from(ns, interfaces, &["--in-cluster"], extra)?;
        Ok(Self {
            agent,
            server,
            kubeconfig: None,
        })
    }

    /// The agent's process id, found by its kubeconfig on its command line
    /// (nsenter execs lb, so that process is lb itself).
    pub fn pid(&self) -> Option<u32> {
        let needle = self.kubeconfig.as_ref()?.to_string_lossy().into_owned();
        let entries = std::fs::read_dir("/proc").ok()?;
        entries.flatten().find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(&needle)
                .then_some(pid)
        })
    }

    /// Polls `check` every 50 ms until it returns `Some`, for at most
    /// `timeout`; the error names `what` and carries the agent's log.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check() {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!(
                    "{what}: not within {timeout:?}; the agent's log:\n{}",
                    self.agent.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The Service as the API server has it; an error when it has none, so
    /// that "no VIP" is never said of a Service that is not there.
    fn service(&self, namespace: &str, name: &str) -> Result<Service> {
        self.server
            .get::<Service>(Some(namespace), name)?
            .with_context(|| format!("no Service {namespace}/{name}"))
    }

    /// The VIP in the Service's status, as the agent wrote it.
    pub fn vip(&self, namespace: &str, name: &str) -> Result<Option<Ipv4Addr>> {
        Ok(ingress_ip(&self.service(namespace, name)?))
    }

    /// Waits until the Service's status has a VIP.
    pub fn wait_for_vip(&self, namespace: &str, name: &str, timeout: Duration) -> Result<Ipv4Addr> {
        self.wait_for(&format!("a VIP for {namespace}/{name}"), timeout, || {
            self.vip(namespace, name).ok().flatten()
        })
    }

    /// Every VIP in the Service's status (IPv4 first, as the agent writes them).
    pub fn vips(&self, namespace: &str, name: &str) -> Result<Vec<IpAddr>> {
        Ok(ingress_ips(&self.service(namespace, name)?))
    }

    /// Waits until the Service's status has `count` VIPs.
    pub fn wait_for_vips(
        &self,
        namespace: &str,
        name: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<IpAddr>> {
        let what = format!("{count} VIPs for {namespace}/{name}");
        self.wait_for(&what, timeout, || {
            let vips = self.vips(namespace, name).ok()?;
            (vips.len() == count).then_some(vips)
        })
    }

    /// The backends the agent programmed for TCP port `port` of `vip`, by
    /// node: their weight (0: draining) and share of the Maglev table. Read
    /// from the agent's catalog, which lists backends without flows and
    /// weight 0 too, and `lb backends`. `None` while the catalog lacks the
    /// service or the listing lacks one of its backends.
    pub fn backends(
        &self,
        vip: impl Into<IpAddr>,
        port: u16,
    ) -> Option<BTreeMap<String, (u32, f64)>> {
        let frontend = Frontend {
            vip: vip.into(),
            port,
            protocol: Protocol::Tcp,
        };
        let catalog = Catalog::read(self.agent.bpffs());
        let service = catalog.service(&frontend)?;
        let rows = self.rows("backends");
        let label = frontend.to_string();
        let share = |node: &str| {
            let row = rows
                .iter()
                .find(|row| row["service"] == label && row["node"] == node);
            row?["share"].as_f64()
        };
        let backends = service.backends.iter();
        backends
            .map(|b| Some((b.node.clone(), (b.weight, share(&b.node)?))))
            .collect()
    }

    /// Rows of `lb <command> --json` (`services`, `backends`).
    pub fn rows(&self, command: &str) -> Vec<Value> {
        match self.agent.query(command) {
            Ok(Value::Array(rows)) => rows,
            _ => Vec::new(),
        }
    }
}

impl Drop for KubeAgent {
    fn drop(&mut self) {
        if let Some(kubeconfig) = &self.kubeconfig {
            let _ = std::fs::remove_file(kubeconfig);
        }
    }
}

/// A Pod's service account where kube-rs's in-cluster config reads it (a
/// fixed path). Dropping it removes every directory it created.
pub struct ServiceAccount {
    /// The outermost directory that did not exist before.
    created: PathBuf,
}

impl ServiceAccount {
    pub const DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

    /// Writes `server`'s token and CA to [`DIR`](Self::DIR) and `default` as
    /// the namespace. An error when that directory exists already (a real
    /// Pod's, or left by a test that was killed): it is not ours to
    /// overwrite, and the in-cluster path would go untested.
    pub fn write(server: &FakeApiServer) -> Result<Self> {
        let dir = Path::new(Self::DIR);
        ensure!(
            !dir.exists(),
            "{} exists already and is not ours to overwrite: the in-cluster test needs it \
             absent (remove it if a killed test run left it behind)",
            dir.display()
        );
        let mut created = dir;
        while let Some(parent) = created.parent()
            && !parent.exists()
        {
            created = parent;
        }
        let account = Self {
            created: created.to_owned(),
        };
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        server.write_service_account(dir, "default")?;
        Ok(account)
    }
}

impl Drop for ServiceAccount {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.created);
    }
}
