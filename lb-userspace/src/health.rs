//! Active health checks of backends: a TCP connect to each (node, NodePort), or
//! for `externalTrafficPolicy: Local` an HTTP GET on the Service's
//! healthCheckNodePort, where kube-proxy answers 200 only while the node has a
//! local endpoint, or for a port without a NodePort (direct server return) an
//! HTTP GET on kube-proxy's own health port.
//!
//! A backend failing `fall` checks in a row keeps its place with weight 0: no
//! new flows, while established ones stay on it (the flow table wins). After
//! `dead` more failures it is removed, and its flows re-hash. `rise` successes
//! bring it back; a new target on a node whose every target is down starts
//! failing. UDP NodePorts without a healthCheckNodePort are not checked:
//! a connect proves nothing there.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use futures::{StreamExt as _, stream};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::watch,
    time::{Instant, MissedTickBehavior, interval_at, timeout},
};

use crate::{
    k8s::translate::{HealthCheck, Translation},
    model::{DesiredState, Frontend, Protocol},
};

/// Probes in flight at once, so a large cluster does not exhaust descriptors.
const MAX_CONCURRENT_PROBES: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between rounds of checks; zero switches health checking off.
    pub interval: Duration,
    /// How long one check may take.
    pub timeout: Duration,
    /// Successes in a row that bring a failing backend back.
    pub rise: u32,
    /// Failures in a row after which a backend gets no new flows.
    pub fall: u32,
    /// Further failures after which a failing backend is removed.
    pub dead: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            dead: 3,
        }
    }
}

/// What is checked: an address and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Target {
    pub addr: SocketAddr,
    /// An HTTP GET expecting 2xx, rather than a bare TCP connect.
    pub http: bool,
}

/// The state of a target that is not healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// No new flows.
    Failing,
    /// Removed: its flows re-hash.
    Dead,
}

pub type Verdicts = BTreeMap<Target, Verdict>;

/// Runs the checks in a background task and tells the agent when a verdict
/// changes. Checking off, it changes nothing.
pub struct HealthChecker {
    targets: watch::Sender<BTreeSet<Target>>,
    verdicts: watch::Receiver<Verdicts>,
    enabled: bool,
}

impl HealthChecker {
    /// Starts checking (needs a Tokio runtime) from the verdicts `earlier`
    /// (an earlier agent's, so that a restart does not give a dead node new
    /// flows, nor announce a VIP none of whose nodes answers, until checks
    /// fail again); the task ends with the checker.
    pub fn start(config: HealthConfig, earlier: Verdicts) -> Self {
        let enabled = !config.interval.is_zero();
        let earlier = if enabled { earlier } else { Verdicts::new() };
        let (targets, targets_rx) = watch::channel(BTreeSet::new());
        let (verdicts_tx, verdicts) = watch::channel(earlier.clone());
        if enabled {
            let records = earlier
                .into_iter()
                .map(|(target, verdict)| (target, Record::of(verdict, &config)))
                .collect();
            tokio::spawn(check_forever(config, records, targets_rx, verdicts_tx));
        }
        Self {
            targets,
            verdicts,
            enabled,
        }
    }

    /// Checks the backends of `translation`: those new to the checker at
    /// once, all from the next round on.
    pub fn watch(&self, translation: &Translation) {
        if self.enabled {
            let now = targets(translation);
            self.targets.send_if_modified(|targets| {
                let changed = *targets != now;
                *targets = now;
                changed
            });
        }
    }

    /// The verdicts now: targets not healthy.
    pub fn verdicts(&self) -> Verdicts {
        self.verdicts.borrow().clone()
    }

    /// Returns when a verdict changed; never when checking is off.
    pub async fn changed(&mut self) {
        if !self.enabled || self.verdicts.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The translation's state with the verdicts applied: failing backends get
    /// weight 0, dead ones are left out (unless the translation drains them). A service all of whose backends would
    /// get no new flows keeps them all (fail open): sending traffic to nodes
    /// that may be down beats dropping all of it. Without verdicts, the
    /// translation's state itself: a copy of a large cluster's costs time.
    pub fn apply<'t>(&self, translation: &'t Translation) -> Cow<'t, DesiredState> {
        let verdicts = self.verdicts.borrow();
        if verdicts.is_empty() {
            return Cow::Borrowed(&translation.state);
        }
        let mut state = translation.state.clone();
        for (frontend, spec) in &mut state.services {
            let Some(check) = checked(translation, frontend) else {
                continue;
            };
            // Every backend drains (its pods terminate): the service takes
            // no new flows whatever the checks say, and is not failing.
            let drains = spec.backends.iter().all(|backend| backend.weight == 0);
            let mut backends = spec.backends.clone();
            backends.retain_mut(|backend| {
                let target = target(check, backend.ip, backend.port);
                match verdicts.get(&target) {
                    None => true,
                    // A backend the translation drains (its pods terminate)
                    // keeps its flows until Kubernetes removes it, although
                    // kube-proxy may already fail its health check.
                    Some(Verdict::Dead) if backend.weight > 0 => false,
                    Some(_) => {
                        backend.weight = 0;
                        true
                    }
                }
            });
            if drains || backends.iter().any(|backend| backend.weight > 0) {
                spec.backends = backends;
            } else {
                tracing::debug!(%frontend, "every backend fails its health check; keeping them all");
                state.failing.insert(*frontend);
            }
        }
        Cow::Owned(state)
    }
}

/// How a service's backends are checked; `None`: not at all.
fn checked(translation: &Translation, frontend: &Frontend) -> Option<HealthCheck> {
    match translation.checks.get(frontend).copied()? {
        HealthCheck::NodePort if frontend.protocol == Protocol::Udp => None,
        check => Some(check),
    }
}

/// How each service of `translation` is checked, those that are.
pub fn checks(translation: &Translation) -> Vec<(Frontend, HealthCheck)> {
    let frontends = translation.state.services.keys();
    let checked =
        frontends.filter_map(|frontend| Some((*frontend, checked(translation, frontend)?)));
    checked.collect()
}

/// What checks the backend at (`ip`, `node_port`) of a service checked by
/// `check`.
pub fn target(check: HealthCheck, ip: IpAddr, node_port: u16) -> Target {
    match check {
        HealthCheck::NodePort => Target {
            addr: SocketAddr::new(ip, node_port),
            http: false,
        },
        HealthCheck::HealthCheckNodePort(port) | HealthCheck::KubeProxy(port) => Target {
            addr: SocketAddr::new(ip, port),
            http: true,
        },
    }
}

fn targets(translation: &Translation) -> BTreeSet<Target> {
    let services = translation.state.services.iter();
    services
        .filter_map(|(frontend, spec)| {
            let check = checked(translation, frontend)?;
            Some(
                spec.backends
                    .iter()
                    .map(move |backend| target(check, backend.ip, backend.port)),
            )
        })
        .flatten()
        .collect()
}

/// Consecutive results of one target. A new target counts as healthy, so new
/// nodes serve at once, unless its node is down.
#[derive(Debug, Default)]
struct Record {
    down: bool,
    successes: u32,
    failures: u32,
}

impl Record {
    /// The record of a target new to the checker on a node (address) that
    /// has targets, every one of them down: the node fails, not a Service,
    /// and a new Service's port there would fail as well; counted healthy,
    /// it would take new flows until `fall` checks failed. It comes back
    /// after `rise` successes, as any other.
    fn on_down_node(config: &HealthConfig) -> Self {
        Self::of(Verdict::Failing, config)
    }

    /// The record that gives `verdict`, as if that many checks had failed.
    fn of(verdict: Verdict, config: &HealthConfig) -> Self {
        let failures = match verdict {
            Verdict::Failing => config.fall,
            Verdict::Dead => config.fall.saturating_add(config.dead),
        };
        Self {
            down: true,
            successes: 0,
            failures,
        }
    }

    fn add(&mut self, ok: bool, config: &HealthConfig) {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= config.rise {
                self.down = false;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= config.fall {
                self.down = true;
            }
        }
    }

    fn verdict(&self, config: &HealthConfig) -> Option<Verdict> {
        match self.down {
            false => None,
            true if self.failures >= config.fall.saturating_add(config.dead) => Some(Verdict::Dead),
            true => Some(Verdict::Failing),
        }
    }
}

/// Checks every target each interval, and a new one as soon as it comes,
/// so that a node that does not answer soon gets no new flows (and, with
/// direct server return on a kernel without managed neighbour entries, so
/// that its MAC is resolved: see `node_neighbors`).
async fn check_forever(
    config: HealthConfig,
    mut records: BTreeMap<Target, Record>,
    mut targets: watch::Receiver<BTreeSet<Target>>,
    verdicts: watch::Sender<Verdicts>,
) {
    // Nothing is checked, and the earlier verdicts stand, until the agent
    // names the first targets; the first round checks those new to the
    // records, the rest wait for the first tick.
    if targets.changed().await.is_err() {
        return;
    }
    let mut ticker = interval_at(Instant::now() + config.interval, config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut only_new = true;
    while !verdicts.is_closed() {
        let current = targets.borrow_and_update().clone();
        records.retain(|target, _| current.contains(target));
        let down_nodes = down_nodes(&records);
        let current = current
            .into_iter()
            .filter(|target| !only_new || !records.contains_key(target));
        let results: Vec<(Target, bool)> = stream::iter(current)
            .map(|target| async move { (target, probe(target, config.timeout).await) })
            .buffer_unordered(MAX_CONCURRENT_PROBES)
            .collect()
            .await;
        for (target, ok) in results {
            let record = records.entry(target).or_insert_with(|| {
                match down_nodes.contains(&target.addr.ip()) {
                    true => Record::on_down_node(&config),
                    false => Record::default(),
                }
            });
            record.add(ok, &config);
        }
        let now: Verdicts = records
            .iter()
            .filter_map(|(target, record)| Some((*target, record.verdict(&config)?)))
            .collect();
        verdicts.send_if_modified(|last| {
            let changed = *last != now;
            if changed {
                tracing::info!(unhealthy = ?now, "health verdicts changed");
                *last = now;
            }
            changed
        });
        only_new = tokio::select! {
            _ = ticker.tick() => false,
            changed = targets.changed() => match changed {
                Ok(()) => true,
                // The checker is gone.
                Err(_) => return,
            },
        };
    }
}

/// The addresses all of whose targets are down.
fn down_nodes(records: &BTreeMap<Target, Record>) -> BTreeSet<IpAddr> {
    let mut nodes = BTreeMap::new();
    for (target, record) in records {
        *nodes.entry(target.addr.ip()).or_insert(true) &= record.down;
    }
    nodes
        .into_iter()
        .filter_map(|(ip, down)| down.then_some(ip))
        .collect()
}

/// One check: connected (and, for HTTP, answered 2xx) within `limit`.
async fn probe(target: Target, limit: Duration) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(target.addr).await?;
        if !target.http {
            return Ok(true);
        }
        let request = format!(
            "GET /healthz HTTP/1.0\r\nHost: {}\r\nUser-Agent: lb\r\n\r\n",
            target.addr
        );
        stream.write_all(request.as_bytes()).await?;
        // "HTTP/1.x 200": the status code is bytes 9..12.
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head.starts_with(b"HTTP/1.") && head[9] == b'2')
    };
    matches!(timeout(limit, attempt).await, Ok(Ok(true)))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::net::TcpListener;

    use super::*;
    use crate::model::{BackendSpec, ServiceSpec};

    fn config() -> HealthConfig {
        HealthConfig {
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 2,
            dead: 2,
        }
    }

    #[test]
    fn fall_then_dead_then_rise() {
        let config = config();
        let mut record = Record::default();
        let mut verdicts = Vec::new();
        for ok in [false, false, false, false, true, false, true, true] {
            record.add(ok, &config);
            verdicts.push(record.verdict(&config));
        }
        use Verdict::*;
        let want = [
            None,
            Some(Failing),
            Some(Failing),
            Some(Dead),
            // One success is not enough to come back, but ends "dead".
            Some(Failing),
            Some(Failing),
            Some(Failing),
            None,
        ];
        assert_eq!(verdicts, want);
    }

    fn frontend(port: u16, protocol: Protocol) -> Frontend {
        Frontend {
            vip: Ipv4Addr::new(198, 51, 100, 1).into(),
            port,
            protocol,
        }
    }

    /// One service per (port, protocol, check), each with backends on 10.1.0.1..=n.
    fn translation(services: &[(u16, Protocol, HealthCheck)], nodes: u8) -> Translation {
        let mut translation = Translation::default();
        for &(port, protocol, check) in services {
            let frontend = frontend(port, protocol);
            let backends = (1..=nodes).map(|i| BackendSpec {
                node: format!("node-{i}"),
                ip: Ipv4Addr::new(10, 1, 0, i).into(),
                port: 30000 + port,
                weight: 1,
            });
            let spec = ServiceSpec {
                name: format!("ns/s:{port}"),
                frontend,
                backends: backends.collect(),
            };
            translation.state.services.insert(frontend, spec);
            translation.checks.insert(frontend, check);
        }
        translation
    }

    fn checker_with(verdicts: Verdicts) -> HealthChecker {
        let (targets, _) = watch::channel(BTreeSet::new());
        let (_, verdicts) = watch::channel(verdicts);
        HealthChecker {
            targets,
            verdicts,
            enabled: true,
        }
    }

    fn weights(state: &DesiredState, frontend: Frontend) -> Vec<(IpAddr, u32)> {
        let backends = &state.services[&frontend].backends;
        backends.iter().map(|b| (b.ip, b.weight)).collect()
    }

    #[test]
    fn verdicts_drain_then_remove_and_fail_open() {
        let mut translation = translation(
            &[
                (80, Protocol::Tcp, HealthCheck::NodePort),
                (53, Protocol::Udp, HealthCheck::NodePort),
                (443, Protocol::Tcp, HealthCheck::HealthCheckNodePort(32000)),
                (8080, Protocol::Tcp, HealthCheck::NodePort),
                (9090, Protocol::Tcp, HealthCheck::HealthCheckNodePort(32090)),
            ],
            3,
        );
        // Every node drains port 9090 (a rollout without surge): kube-proxy
        // fails them all, as none has a ready endpoint.
        let all_draining = frontend(9090, Protocol::Tcp);
        for backend in &mut translation
            .state
            .services
            .get_mut(&all_draining)
            .unwrap()
            .backends
        {
            backend.weight = 0;
        }
        // Node 2 drains port 8080: its pods terminate.
        let draining = frontend(8080, Protocol::Tcp);
        translation
            .state
            .services
            .get_mut(&draining)
            .unwrap()
            .backends[1]
            .weight = 0;
        let node = |i, port| SocketAddr::new(Ipv4Addr::new(10, 1, 0, i).into(), port);
        let tcp = |addr| Target { addr, http: false };
        let http = |addr| Target { addr, http: true };
        // Every target the translation names, UDP ones excepted.
        let want: BTreeSet<Target> = (1..=3)
            .flat_map(|i| {
                [
                    tcp(node(i, 30080)),
                    http(node(i, 32000)),
                    tcp(node(i, 38080)),
                    http(node(i, 32090)),
                ]
            })
            .collect();
        assert_eq!(targets(&translation), want);

        let checker = checker_with(Verdicts::from([
            (tcp(node(1, 30080)), Verdict::Failing),
            (tcp(node(2, 30080)), Verdict::Dead),
            // The UDP port of node 1 is not TCP-checked: a verdict there is ignored.
            (tcp(node(1, 30053)), Verdict::Dead),
            (http(node(1, 32000)), Verdict::Dead),
            (http(node(2, 32000)), Verdict::Dead),
            (http(node(3, 32000)), Verdict::Failing),
            (tcp(node(2, 38080)), Verdict::Dead),
            (http(node(1, 32090)), Verdict::Failing),
            (http(node(2, 32090)), Verdict::Dead),
            (http(node(3, 32090)), Verdict::Failing),
        ]));
        let state = checker.apply(&translation);
        let ip = |i| IpAddr::from(Ipv4Addr::new(10, 1, 0, i));
        assert_eq!(
            weights(&state, frontend(80, Protocol::Tcp)),
            [(ip(1), 0), (ip(3), 1)]
        );
        assert_eq!(
            weights(&state, frontend(53, Protocol::Udp)),
            [(ip(1), 1), (ip(2), 1), (ip(3), 1)]
        );
        // Nothing healthy left: all three keep serving, and the service is
        // marked failing, so its VIP is not announced.
        assert_eq!(
            weights(&state, frontend(443, Protocol::Tcp)),
            [(ip(1), 1), (ip(2), 1), (ip(3), 1)]
        );
        assert_eq!(
            state.failing,
            BTreeSet::from([frontend(443, Protocol::Tcp)])
        );
        // Dead, but draining: it keeps its flows.
        assert_eq!(
            weights(&state, draining),
            [(ip(1), 1), (ip(2), 0), (ip(3), 1)]
        );
        // All draining: their flows finish; not failing (its VIP stays
        // announced for them), nothing comes back to take new flows.
        assert_eq!(
            weights(&state, all_draining),
            [(ip(1), 0), (ip(2), 0), (ip(3), 0)]
        );
        assert_eq!(
            *checker_with(Verdicts::new()).apply(&translation),
            translation.state
        );
    }

    /// Answers every connection with `status` and closes it.
    async fn http_server(status: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 256];
                let _ = stream.read(&mut request).await;
                let response = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        addr
    }

    /// A local port nothing listens on.
    fn closed_port() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    }

    #[tokio::test]
    async fn probes_connect_and_read_http_status() {
        let limit = Duration::from_secs(1);
        let ok = http_server("200 OK").await;
        let unavailable = http_server("503 Service Unavailable").await;
        let closed = closed_port();
        let check = |addr, http| probe(Target { addr, http }, limit);
        assert!(check(ok, false).await);
        assert!(check(ok, true).await);
        assert!(check(unavailable, false).await);
        assert!(!check(unavailable, true).await);
        assert!(!check(closed, false).await);
        assert!(!check(closed, true).await);
    }

    #[tokio::test]
    async fn checker_reports_a_failing_backend() {
        let up = http_server("200 OK").await;
        let down = closed_port();
        let mut translation = Translation::default();
        for addr in [up, down] {
            let frontend = frontend(addr.port(), Protocol::Tcp);
            let backend = BackendSpec {
                node: addr.to_string(),
                ip: addr.ip(),
                port: addr.port(),
                weight: 1,
            };
            let spec = ServiceSpec {
                name: addr.to_string(),
                frontend,
                backends: vec![
                    backend.clone(),
                    BackendSpec {
                        node: "other".into(),
                        port: up.port(),
                        ..backend
                    },
                ],
            };
            translation.state.services.insert(frontend, spec);
            translation.checks.insert(frontend, HealthCheck::NodePort);
        }
        let mut checker = HealthChecker::start(config(), Verdicts::new());
        checker.watch(&translation);
        let target = |addr| Target { addr, http: false };
        let mut seen = Vec::new();
        while seen.last() != Some(&Some(Verdict::Dead)) {
            timeout(Duration::from_secs(5), checker.changed())
                .await
                .unwrap();
            let verdicts = checker.verdicts.borrow().clone();
            assert!(!verdicts.contains_key(&target(up)), "{verdicts:?}");
            seen.push(verdicts.get(&target(down)).copied());
        }
        assert_eq!(seen, [Some(Verdict::Failing), Some(Verdict::Dead)]);
        let state = checker.apply(&translation);
        let spec = &state.services[&frontend(down.port(), Protocol::Tcp)];
        assert_eq!(spec.backends.len(), 1);
        assert_eq!(spec.backends[0].port, up.port());
    }

    /// A checker whose rounds come an hour apart, so that it checks only
    /// the targets new to it, and that takes one failure for a verdict.
    fn checker_of_new_targets() -> HealthChecker {
        let config = HealthConfig {
            interval: Duration::from_secs(3600),
            fall: 1,
            ..config()
        };
        HealthChecker::start(config, Verdicts::new())
    }

    /// A backend new to the checker is checked at once, not an interval
    /// later: a node that fails to answer must not get new flows for long.
    /// (Checked here on kube-proxy's health port: an HTTP GET.)
    #[tokio::test]
    async fn a_new_backend_is_checked_at_once() {
        let down = closed_port();
        let mut checker = checker_of_new_targets();
        let frontend = frontend(80, Protocol::Tcp);
        let backend = BackendSpec {
            node: "node-1".into(),
            ip: down.ip(),
            port: 80,
            weight: 1,
        };
        let spec = ServiceSpec {
            name: "ns/s:80".into(),
            frontend,
            backends: vec![backend],
        };
        let mut translation = Translation::default();
        translation.state.services.insert(frontend, spec);
        let check = HealthCheck::KubeProxy(down.port());
        translation.checks.insert(frontend, check);
        checker.watch(&translation);
        timeout(Duration::from_secs(5), checker.changed())
            .await
            .expect("checked within the interval");
        let verdicts = checker.verdicts.borrow().clone();
        let target = Target {
            addr: down,
            http: true,
        };
        assert_eq!(verdicts.get(&target), Some(&Verdict::Failing));
    }

    /// A Service new to the checker on a node whose every target fails
    /// starts failing: it gets no new flows there until `rise` checks pass,
    /// not until `fall` fail.
    #[tokio::test]
    async fn a_new_target_on_a_down_node_starts_failing() {
        let down = closed_port();
        let up = http_server("200 OK").await;
        let mut checker = checker_of_new_targets();
        let service = |addr: SocketAddr| {
            let frontend = frontend(addr.port(), Protocol::Tcp);
            let backend = BackendSpec {
                node: "node-1".into(),
                ip: addr.ip(),
                port: addr.port(),
                weight: 1,
            };
            let backends = vec![backend];
            (
                frontend,
                ServiceSpec {
                    name: addr.to_string(),
                    frontend,
                    backends,
                },
            )
        };
        let mut translation = Translation::default();
        let (frontend, spec) = service(down);
        translation.state.services.insert(frontend, spec);
        translation.checks.insert(frontend, HealthCheck::NodePort);
        checker.watch(&translation);
        timeout(Duration::from_secs(5), checker.changed())
            .await
            .expect("the down target checked");
        let target = |addr| Target { addr, http: false };
        let (frontend, spec) = service(up);
        translation.state.services.insert(frontend, spec);
        translation.checks.insert(frontend, HealthCheck::NodePort);
        checker.watch(&translation);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let verdicts = checker.verdicts.borrow().clone();
        assert_eq!(
            verdicts,
            Verdicts::from([
                (target(down), Verdict::Failing),
                (target(up), Verdict::Failing)
            ])
        );
    }
}
