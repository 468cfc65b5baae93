//! Prometheus metrics, `/healthz` and `/readyz` over HTTP. Metrics are read
//! from the pinned maps at scrape time, the way node_exporter reads /proc: the
//! numbers are the kernel's, never a copy that could drift.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use lb_common::counters;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::{
    announce::bird::{Bird, Session},
    catalog::Catalog,
    inspect::{self, BackendRow, ServiceRow, Snapshot},
    maps::Maps,
    model::Frontend,
};

/// What the HTTP endpoints report on.
#[derive(Debug)]
pub struct Health {
    bpffs: PathBuf,
    /// Set once the first sync programmed the data path.
    ready: AtomicBool,
    /// This agent assigns addresses and writes statuses (elected, or alone).
    assigning: AtomicBool,
    /// This agent answers ARP and NDP for the VIPs (named by the Lease, or
    /// alone).
    speaking_layer2: AtomicBool,
}

impl Health {
    pub fn new(bpffs: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            bpffs,
            ready: AtomicBool::new(false),
            assigning: AtomicBool::new(false),
            speaking_layer2: AtomicBool::new(false),
        })
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn set_assigning(&self, assigning: bool) {
        self.assigning.store(assigning, Ordering::Relaxed);
    }

    pub fn set_speaking_layer2(&self, speaking: bool) {
        self.speaking_layer2.store(speaking, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct MapsCollector {
    health: Arc<Health>,
    /// Export the per-backend series.
    per_backend: bool,
}

type Labels = Vec<(&'static str, String)>;

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family =
        encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, value) in samples {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    let mut family =
        encoder.encode_descriptor(name, help, None, ConstGauge::new(0f64).metric_type())?;
    for (labels, value) in samples {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for MapsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let assigning = self.health.assigning.load(Ordering::Relaxed);
        gauge(
            &mut encoder,
            "lb_assigns_addresses",
            "1 while this agent assigns addresses (from manifests, alone, or elected among the agents of one API server, where it writes the statuses)",
            &[(Vec::new(), f64::from(u8::from(assigning)))],
        )?;
        let speaking = self.health.speaking_layer2.load(Ordering::Relaxed);
        gauge(
            &mut encoder,
            "lb_answers_layer2",
            "1 while this agent is the one to answer ARP and NDP for the VIPs announced at layer 2 (alone, or named by its segment's Lease among the agents of one API server); 0 while another is",
            &[(Vec::new(), f64::from(u8::from(speaking)))],
        )?;
        let scrape = Scrape::read(&self.health.bpffs, self.per_backend);
        if let Err(e) = &scrape {
            warn!(error = %e, "metrics: reading the pinned maps");
        }
        // Without it, a scrape that could not read the maps would look like
        // one of a data path serving nothing.
        gauge(
            &mut encoder,
            "lb_maps_readable",
            "1 if this scrape could read the pinned maps, 0 if not (then no traffic series)",
            &[(Vec::new(), f64::from(u8::from(scrape.is_ok())))],
        )?;
        match scrape {
            Ok(scrape) => scrape.encode(&mut encoder),
            Err(_) => Ok(()),
        }
    }
}

/// What one scrape reports: the rows `lb services` and `lb backends` list,
/// and the global counters.
#[derive(Debug)]
struct Scrape {
    services: Vec<ServiceRow>,
    backends: Vec<BackendRow>,
    global: BTreeMap<&'static str, u64>,
    announced: Vec<Announced>,
    /// The agent's BIRD's sessions; none while no BIRD runs.
    bgp_sessions: Vec<Session>,
}

/// How a VIP is announced now.
#[derive(Debug)]
struct Announced {
    vip: IpAddr,
    /// ARP and Neighbor Solicitations for it are answered on an interface.
    l2: bool,
    /// BIRD was told to announce it.
    bgp: bool,
}

/// The labels of a service's series.
fn service_labels(name: &str, frontend: &Frontend) -> Labels {
    vec![
        ("service", name.to_owned()),
        ("vip", frontend.vip.to_string()),
        ("port", frontend.port.to_string()),
        ("protocol", frontend.protocol.to_string()),
    ]
}

impl Scrape {
    /// Reads what a scrape reports; the backends' rows only if `per_backend`
    /// (they take a walk of every backend, and make most of the series).
    fn read(bpffs: &Path, per_backend: bool) -> anyhow::Result<Self> {
        let maps = Maps::open_pinned(bpffs)?;
        let mut catalog = Catalog::read(bpffs);
        let bgp = std::mem::take(&mut catalog.bgp_announced);
        let announced = maps
            .vips
            .iter()
            .map(|entry| {
                let (addr, mask) = entry?;
                let vip = lb_common::ip_of(addr);
                Ok(Announced {
                    vip,
                    l2: mask != 0,
                    bgp: bgp.contains(&vip),
                })
            })
            .collect::<Result<_, aya::maps::MapError>>()?;
        let snapshot = Snapshot::take(&maps, catalog)?;
        // No BIRD (no BGP, or not started yet) answers at once: no sessions.
        let bgp_sessions = Bird::of(bpffs)
            .status()
            .map(|status| status.sessions)
            .unwrap_or_default();
        Ok(Self {
            services: inspect::services(&maps, &snapshot)?,
            backends: if per_backend {
                inspect::backends(&maps, &snapshot, None)?
            } else {
                Vec::new()
            },
            global: inspect::global(&maps)?,
            announced,
            bgp_sessions,
        })
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let per_service: Vec<(Labels, &ServiceRow)> = self
            .services
            .iter()
            .map(|s| (service_labels(&s.name, &s.frontend), s))
            .collect();
        let collect = |f: &dyn Fn(&ServiceRow) -> u64| -> Vec<(Labels, u64)> {
            per_service.iter().map(|(l, s)| (l.clone(), f(s))).collect()
        };
        counter(
            encoder,
            "lb_service_packets",
            "Packets forwarded to a service's backends.",
            &collect(&|s| s.packets),
        )?;
        counter(
            encoder,
            "lb_service_bytes",
            "Bytes forwarded to a service's backends.",
            &collect(&|s| s.bytes),
        )?;
        gauge(
            encoder,
            "lb_service_active_flows",
            "Flows of a service seen in the last minute.",
            &per_service
                .iter()
                .map(|(l, s)| (l.clone(), s.active_flows as f64))
                .collect::<Vec<_>>(),
        )?;
        let per_backend: Vec<(Labels, &BackendRow)> = self
            .backends
            .iter()
            .map(|b| {
                let mut labels = service_labels(&b.service_name, &b.frontend);
                labels.extend([
                    ("backend", b.node.clone()),
                    ("address", SocketAddr::new(b.address, b.port).to_string()),
                ]);
                (labels, b)
            })
            .collect();
        let collect = |f: &dyn Fn(&BackendRow) -> u64| -> Vec<(Labels, u64)> {
            per_backend.iter().map(|(l, b)| (l.clone(), f(b))).collect()
        };
        counter(
            encoder,
            "lb_backend_packets",
            "Packets forwarded to a backend.",
            &collect(&|b| b.packets),
        )?;
        counter(
            encoder,
            "lb_backend_bytes",
            "Bytes forwarded to a backend.",
            &collect(&|b| b.bytes),
        )?;
        gauge(
            encoder,
            "lb_backend_active_flows",
            "Flows pinned to a backend seen in the last minute.",
            &per_backend
                .iter()
                .map(|(l, b)| (l.clone(), b.active_flows as f64))
                .collect::<Vec<_>>(),
        )?;
        gauge(
            encoder,
            "lb_backend_maglev_share",
            "Fraction of the service's Maglev table pointing at the backend.",
            &per_backend
                .iter()
                .map(|(l, b)| (l.clone(), b.share))
                .collect::<Vec<_>>(),
        )?;
        let outcomes: Vec<(Labels, u64)> = counters::OUTCOMES
            .iter()
            .map(|&index| {
                let name = counters::NAMES[index as usize];
                (
                    vec![("outcome", name.to_owned())],
                    self.global.get(name).copied().unwrap_or(0),
                )
            })
            .collect();
        counter(
            encoder,
            "lb_packets",
            "Packets the XDP program handled, by outcome.",
            &outcomes,
        )?;
        let announced: Vec<(Labels, f64)> = self
            .announced
            .iter()
            .flat_map(|a| {
                let labels = |mode: &str| vec![("vip", a.vip.to_string()), ("mode", mode.into())];
                [(labels("l2"), a.l2), (labels("bgp"), a.bgp)]
            })
            .map(|(labels, on)| (labels, if on { 1.0 } else { 0.0 }))
            .collect();
        gauge(
            encoder,
            "lb_vip_announced",
            "Whether a VIP is announced: at layer 2 (ARP / NDP answered on some interface, \
             mode=\"l2\"), over BGP (mode=\"bgp\").",
            &announced,
        )?;
        self.encode_sessions(encoder)?;
        for (name, help) in Self::EVENT_COUNTERS {
            let value = self.global.get(name).copied().unwrap_or(0);
            counter(encoder, &format!("lb_{name}"), help, &[(Vec::new(), value)])?;
        }
        Ok(())
    }

    /// The global counters that are no packet's outcome (those are
    /// `lb_packets_total{outcome}`), each exported as `lb_<name>_total`.
    const EVENT_COUNTERS: [(&str, &str); 5] = [
        (
            "new_flows",
            "Flows created (Maglev lookup and flow insert).",
        ),
        ("flow_rehashed", "Flows whose backend was gone, re-hashed."),
        (
            "icmp_translated",
            "ICMP errors about a tracked flow translated like the flow.",
        ),
        (
            "new_flows_untracked",
            "New flows forwarded without a flow entry, over the CPU's new-flow limit.",
        ),
        (
            "replies_untracked",
            "Replies reverse-NAT-ed with no flow entry on this host (another lb host saw the \
         flow begin).",
        ),
    ];

    /// One series per BGP session (MetalLB exports the same pair as
    /// `metallb_bgp_session_up` and `metallb_bfd_session_up`), so an alert
    /// can fire on a session that is down.
    fn encode_sessions(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let labels = |session: &Session| {
            vec![
                ("session", session.name.clone()),
                ("peer", session.peer.clone()),
            ]
        };
        let up = |on: bool| if on { 1.0 } else { 0.0 };
        let bgp: Vec<(Labels, f64)> = self
            .bgp_sessions
            .iter()
            .map(|s| (labels(s), up(s.state == "Established")))
            .collect();
        gauge(
            encoder,
            "lb_bgp_session_up",
            "Whether the BGP session with a peer is established.",
            &bgp,
        )?;
        let bfd: Vec<(Labels, f64)> = self
            .bgp_sessions
            .iter()
            .filter_map(|s| Some((labels(s), up(s.bfd.as_deref()? == "Up"))))
            .collect();
        gauge(
            encoder,
            "lb_bfd_session_up",
            "Whether the BFD session guarding a BGP session is up (sessions with BFD only).",
            &bfd,
        )
    }
}

/// Serves `/metrics` (with the per-backend series if `per_backend`),
/// `/healthz` and `/readyz` on `listener` until the task is dropped. A failed
/// accept (out of file descriptors, say) is logged and the next one tried
/// after a pause: the endpoints outlive a bad moment.
pub async fn serve(listener: TcpListener, health: Arc<Health>, per_backend: bool) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(MapsCollector {
        health: health.clone(),
        per_backend,
    }));
    let registry = Arc::new(registry);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accepting a metrics connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (registry, health) = (registry.clone(), health.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<_>| {
                let (registry, health) = (registry.clone(), health.clone());
                let path = request.uri().path().to_owned();
                async move {
                    // A scrape reads every map, flows included, and asks
                    // BIRD: not on the runtime's threads, which the
                    // reconciler, health checks and watches share.
                    let response =
                        tokio::task::spawn_blocking(move || respond(&path, &registry, &health))
                            .await
                            .unwrap_or_else(|_| {
                                text_response(
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    "text/plain",
                                    "scrape failed\n".into(),
                                )
                            });
                    Ok::<_, Infallible>(response)
                }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "metrics connection");
            }
        });
    }
}

fn respond(path: &str, registry: &Registry, health: &Health) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "encoding failed\n".into(),
                ),
            }
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if health.ready.load(Ordering::Relaxed) => {
            (StatusCode::OK, "text/plain", "ready\n".into())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not synced yet\n".into(),
        ),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    text_response(status, content_type, body)
}

fn text_response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    /// Every global counter is exported: an outcome as
    /// `lb_packets_total{outcome}`, any other as `lb_<name>_total` (`rx` is
    /// their sum).
    #[test]
    fn every_counter_is_exported() {
        for (index, name) in (0..).zip(counters::NAMES) {
            let outcome = counters::OUTCOMES.contains(&index);
            let event = Scrape::EVENT_COUNTERS
                .iter()
                .any(|(event, _)| *event == name);
            assert!(
                outcome || event || index == counters::RX,
                "{name} is not exported"
            );
        }
    }

    /// A collector that reports fixed rows the way a scrape of the maps does.
    #[derive(Debug)]
    struct Fixed(Scrape);

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            self.0.encode(&mut encoder)
        }
    }

    fn text(scrape: Scrape) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(scrape)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn service_and_backend_series_of_an_ipv6_service_carry_its_vip_and_port() {
        let frontend = Frontend {
            vip: "2001:db8::1".parse().unwrap(),
            port: 80,
            protocol: Protocol::Udp,
        };
        let service = ServiceRow {
            name: "demo/web6:dns".into(),
            frontend,
            id: 0,
            backends_healthy: 1,
            backends_total: 1,
            packets: 7,
            bytes: 700,
            active_flows: 2,
        };
        let backend = BackendRow {
            frontend,
            service_name: "demo/web6:dns".into(),
            node: "node-1".into(),
            id: 3,
            address: "2001:db8:1::11".parse().unwrap(),
            port: 31053,
            weight: Some(1),
            health: "healthy",
            ring_entries: 7,
            share: 1.0,
            packets: 5,
            bytes: 500,
            active_flows: 1,
        };
        let text = text(Scrape {
            services: vec![service],
            backends: vec![backend],
            global: BTreeMap::new(),
            announced: vec![Announced {
                vip: frontend.vip,
                l2: false,
                bgp: true,
            }],
            bgp_sessions: vec![
                Session {
                    name: "router".into(),
                    peer: "2001:db8::fe".into(),
                    state: "Established".into(),
                    bfd: Some("Up".into()),
                    ..Session::default()
                },
                Session {
                    name: "peer2".into(),
                    peer: "192.0.2.254".into(),
                    state: "Active".into(),
                    ..Session::default()
                },
            ],
        });
        let labels = r#"service="demo/web6:dns",vip="2001:db8::1",port="80",protocol="udp""#;
        for line in [
            format!("lb_service_packets_total{{{labels}}} 7"),
            format!(
                r#"lb_backend_packets_total{{{labels},backend="node-1",address="[2001:db8:1::11]:31053"}} 5"#
            ),
            r#"lb_vip_announced{vip="2001:db8::1",mode="l2"} 0.0"#.to_owned(),
            r#"lb_vip_announced{vip="2001:db8::1",mode="bgp"} 1.0"#.to_owned(),
            r#"lb_bgp_session_up{session="router",peer="2001:db8::fe"} 1.0"#.to_owned(),
            r#"lb_bgp_session_up{session="peer2",peer="192.0.2.254"} 0.0"#.to_owned(),
            r#"lb_bfd_session_up{session="router",peer="2001:db8::fe"} 1.0"#.to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
        assert!(
            !text.contains(r#"lb_bfd_session_up{session="peer2""#),
            "a session without BFD has no BFD series:\n{text}"
        );
    }
}
