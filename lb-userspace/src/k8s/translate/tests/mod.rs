//! Translation as a whole, and the builders every test uses; what is
//! particular to VIPs and to backends is tested in files named like the
//! modules of `translate/`.

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Node, ServiceStatus};

use super::*;
use crate::{
    k8s::{
        family::Family,
        fixtures::{
            self, annotated, ip_families, load_balancer_service, node, service_port as port,
            with_internal_ip,
        },
        manifests::load_path,
        pools::Pool,
    },
    model::{BackendSpec, Protocol, ServiceSpec},
};

mod backends;
mod metallb;
mod vips;

fn ip<T: std::str::FromStr<Err: std::fmt::Debug>>(text: &str) -> T {
    text.parse().unwrap()
}

/// A translator with these pools (`NAME=RANGES`).
fn translator(pools: &[&str]) -> Translator {
    let pools = pools
        .iter()
        .map(|text| Pool::parse(text).unwrap())
        .collect();
    Translator::new(
        TranslateConfig::default(),
        Pools::from_flags(pools).unwrap(),
    )
}

fn pool() -> Translator {
    translator(&["default=198.51.100.0/28"])
}

fn skipped(translation: &Translation) -> Vec<String> {
    translation
        .skipped
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn tcp(port: i32, node_port: i32) -> ServicePort {
    self::port(port, Some("TCP"), Some(node_port))
}

/// A LoadBalancer Service in namespace `ns`.
fn service(name: &str, ports: Vec<ServicePort>) -> Service {
    load_balancer_service("ns", name, ports)
}

fn with_lb_ip(mut service: Service, text: &str) -> Service {
    service.spec.as_mut().unwrap().load_balancer_ip = Some(text.to_owned());
    service
}

fn with_status_ips(mut service: Service, ips: &[&str]) -> Service {
    let ingress = ips.iter().map(|ip| LoadBalancerIngress {
        ip: Some((*ip).to_owned()),
        ..Default::default()
    });
    let load_balancer = LoadBalancerStatus {
        ingress: Some(ingress.collect()),
    };
    service.status = Some(ServiceStatus {
        load_balancer: Some(load_balancer),
        ..Default::default()
    });
    service
}

fn with_weight(mut node: Node, weight: &str) -> Node {
    let annotations = [(NODE_WEIGHT_ANNOTATION.to_owned(), weight.to_owned())];
    node.metadata.annotations = Some(annotations.into());
    node
}

fn objects(services: Vec<Service>, nodes: Vec<Node>) -> ClusterObjects {
    ClusterObjects {
        services: services.into_iter().map(Arc::new).collect(),
        nodes: nodes.into_iter().map(Arc::new).collect(),
        ..ClusterObjects::default()
    }
}

fn frontend(vip: &str, port: u16, protocol: Protocol) -> Frontend {
    Frontend {
        vip: ip(vip),
        port,
        protocol,
    }
}

/// (name, VIP) of every served port, in frontend order.
fn served(translation: &Translation) -> Vec<(String, IpAddr)> {
    let specs = translation.state.services.values();
    specs
        .map(|spec| (spec.name.clone(), spec.frontend.vip))
        .collect()
}

fn backend_nodes(spec: &ServiceSpec) -> Vec<(&str, u32)> {
    spec.backends
        .iter()
        .map(|backend| (backend.node.as_str(), backend.weight))
        .collect()
}

#[test]
fn voting_app_example() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/voting-app.yaml");
    let loaded = load_path(path.as_ref()).unwrap();
    assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
    let mut pool = pool();
    let translation = pool.translate(&loaded.objects);
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    assert_eq!(translation.state.services.len(), 2);

    let vote = &translation.state.services[&frontend("198.51.100.10", 5000, Protocol::Tcp)];
    assert_eq!(vote.name, "vote/vote:vote-service");
    let want: Vec<BackendSpec> = (1..=3)
        .map(|i| BackendSpec {
            node: format!("node-{i}"),
            ip: ip(&format!("10.1.0.{}", 10 + i)),
            port: 31000,
            weight: 1,
        })
        .collect();
    assert_eq!(vote.backends, want);

    let result = &translation.state.services[&frontend("198.51.100.1", 5001, Protocol::Tcp)];
    assert_eq!(result.name, "vote/result:result-service");
    assert_eq!(result.backends.len(), 3);
    assert!(result.backends.iter().all(|backend| backend.port == 31001));
    assert_eq!(
        pool.pools.lookup("vote/result", Family::V4),
        Some(ip("198.51.100.1"))
    );
}

#[test]
fn only_load_balancers_served() {
    let mut cluster_ip = service("internal", vec![tcp(80, 30080)]);
    cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".to_owned());
    let mut untyped = service("untyped", vec![tcp(80, 30081)]);
    untyped.spec.as_mut().unwrap().type_ = None;
    let public = with_lb_ip(service("public", vec![tcp(80, 30082)]), "198.51.100.5");
    let mut pool = pool();
    let translation = pool.translate(&objects(vec![cluster_ip, untyped, public], vec![]));
    assert_eq!(
        served(translation),
        [("ns/public:p80".to_owned(), ip("198.51.100.5"))]
    );
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    assert_eq!(pool.pools.lookup("ns/internal", Family::V4), None);
}

#[test]
fn ports_and_protocols() {
    let mut unnamed = port(8080, None, Some(30080));
    unnamed.name = None;
    let mut empty_name = port(8081, Some("TCP"), Some(30081));
    empty_name.name = Some(String::new());
    let ports = vec![
        tcp(80, 30000),
        port(53, Some("UDP"), Some(30053)),
        port(9000, Some("SCTP"), Some(30900)),
        port(443, Some("TCP"), None),
        unnamed,
        empty_name,
    ];
    let mut service = with_lb_ip(service("web", ports), "198.51.100.1");
    service.metadata.namespace = None;
    let translation = Translator::default()
        .translate(&objects(vec![service], vec![node("n", "10.1.0.1")]))
        .clone();
    let want = [
        "Service default/web: port 9000/sctp: protocol SCTP is not supported",
        "Service default/web: port 443/tcp has no nodePort, where --forwarding nat sends its \
         traffic (--forwarding dsr serves it on the VIP)",
    ];
    assert_eq!(skipped(&translation), want);
    let services = &translation.state.services;
    let names: Vec<(Frontend, &str, u16)> = services
        .values()
        .map(|spec| (spec.frontend, spec.name.as_str(), spec.backends[0].port))
        .collect();
    let want = [
        (
            frontend("198.51.100.1", 53, Protocol::Udp),
            "default/web:p53",
            30053,
        ),
        (
            frontend("198.51.100.1", 80, Protocol::Tcp),
            "default/web:p80",
            30000,
        ),
        (
            frontend("198.51.100.1", 8080, Protocol::Tcp),
            "default/web:8080",
            30080,
        ),
        (
            frontend("198.51.100.1", 8081, Protocol::Tcp),
            "default/web:8081",
            30081,
        ),
    ];
    assert_eq!(names, want);
}

fn with_class(mut service: Service, class: &str) -> Service {
    service.spec.as_mut().unwrap().load_balancer_class = Some(class.to_owned());
    service
}

fn problems(translation: &Translation) -> Vec<(&str, Problem)> {
    let skipped = translation.skipped.iter();
    skipped.map(|s| (s.name.as_str(), s.problem)).collect()
}

#[test]
fn load_balancer_class_selects_services() {
    let services = vec![
        service("unset", vec![tcp(80, 30080)]),
        with_class(
            service("ours", vec![tcp(80, 30081)]),
            DEFAULT_LOAD_BALANCER_CLASS,
        ),
        with_class(service("theirs", vec![tcp(80, 30082)]), "example.com/other"),
    ];
    let mut pool = pool();
    let translation = pool.translate(&objects(services.clone(), vec![]));
    let want = [
        ("ns/ours:p80".to_owned(), ip("198.51.100.1")),
        ("ns/unset:p80".to_owned(), ip("198.51.100.2")),
    ];
    assert_eq!(served(translation), want);
    assert_eq!(pool.pools.lookup("ns/theirs", Family::V4), None);

    // Another class name configured: only unclassed Services and that class.
    let mut other = self::pool();
    other.config.load_balancer_class = "example.com/other".to_owned();
    let names: Vec<String> = served(other.translate(&objects(services, vec![])))
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, ["ns/theirs:p80", "ns/unset:p80"]);
}

#[test]
fn kubernetes_example() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/kubernetes/services.yaml"
    );
    let loaded = load_path(path.as_ref()).unwrap();
    assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
    let mut translator = translator(&["public=198.51.100.20-198.51.100.30"]);
    let translation = translator.translate(&loaded.objects);
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    let web = frontend("198.51.100.20", 80, Protocol::Tcp);
    assert_eq!(
        backend_nodes(&translation.state.services[&web]),
        [("node-1", 1), ("node-2", 0)]
    );
    assert_eq!(
        translation.checks[&web],
        HealthCheck::HealthCheckNodePort(32080)
    );
    let dns = [Protocol::Tcp, Protocol::Udp].map(|p| frontend("198.51.100.53", 53, p));
    for frontend in dns {
        assert_eq!(translation.state.services[&frontend].backends.len(), 3);
    }
}

fn vips(translation: &Translation) -> Vec<(&str, Vec<IpAddr>)> {
    let vips = translation.vips.iter();
    vips.map(|(owner, vips)| (owner.as_str(), vips.clone()))
        .collect()
}

fn dual_stack(service: Service) -> Service {
    ip_families(service, "RequireDualStack", &["IPv4", "IPv6"])
}

fn dual_pool() -> Translator {
    translator(&["default=198.51.100.0/28,2001:db8::/120"])
}

/// (node, backend IP) of a served port.
fn backend_ips(spec: &ServiceSpec) -> Vec<(&str, IpAddr)> {
    let backends = spec.backends.iter();
    backends.map(|b| (b.node.as_str(), b.ip)).collect()
}

/// `spec.loadBalancerSourceRanges` (or its annotation) is kube-proxy's to
/// enforce on traffic for the VIP, which only direct server return hands the
/// nodes: with NAT such a Service is refused, not served to every client.
#[test]
fn source_ranges_are_refused_with_nat_and_served_with_dsr() {
    let mut limited = service("limited", vec![tcp(80, 31000)]);
    limited.spec.as_mut().unwrap().load_balancer_source_ranges = Some(vec!["10.0.0.0/8".into()]);
    let annotated = annotated(
        service("annotated", vec![tcp(81, 31001)]),
        "service.beta.kubernetes.io/load-balancer-source-ranges",
        "10.0.0.0/8",
    );
    let open = service("open", vec![tcp(82, 31002)]);
    let cluster = objects(
        vec![limited, annotated, open],
        vec![node("n1", "10.1.0.11")],
    );
    let names = |translation: &Translation| -> Vec<String> {
        served(translation)
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    };
    let mut nat = pool();
    let translation = nat.translate(&cluster);
    assert_eq!(names(translation), ["ns/open:p82"]);
    let refused = skipped(translation);
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|reason| reason.contains("spec.loadBalancerSourceRanges: not enforced")),
        "{refused:?}"
    );
    let mut dsr = Translator::new(
        TranslateConfig {
            forwarding: Forwarding::Dsr,
            ..TranslateConfig::default()
        },
        Pools::from_flags(vec![Pool::parse("default=198.51.100.0/28").unwrap()]).unwrap(),
    );
    assert_eq!(names(dsr.translate(&cluster)).len(), 3);
}

/// A Service none of whose ports can be served (no nodePort, as with
/// `allocateLoadBalancerNodePorts: false`, or only SCTP) holds no address and
/// gets none in its status: an external IP that carries nothing would mislead.
#[test]
fn a_service_with_no_servable_port_holds_no_address() {
    let no_node_port = service("a-none", vec![port(80, Some("TCP"), None)]);
    let sctp = service("b-sctp", vec![port(80, Some("SCTP"), Some(31000))]);
    let web = service("c-web", vec![tcp(80, 31001)]);
    let cluster = objects(vec![no_node_port, sctp, web], vec![node("n1", "10.1.0.11")]);
    let translation = pool().translate(&cluster).clone();
    assert_eq!(
        translation.vips.keys().collect::<Vec<_>>(),
        ["ns/c-web"],
        "{:?}",
        translation.skipped
    );
    assert_eq!(
        translation.vips["ns/c-web"],
        [ip::<IpAddr>("198.51.100.1")],
        "the first address was not kept by a Service that cannot use it"
    );
    assert_eq!(skipped(&translation).len(), 2);
}

/// A skip is logged when it first appears, not again at every round while
/// it lasts (rounds follow every change in the cluster); one that goes and
/// comes back is logged again.
#[test]
fn a_skip_is_logged_once_while_it_lasts() {
    #[derive(Clone, Default)]
    struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // A second dispatcher, registered throughout: while only one is,
    // tracing decides a call site's interest by the subscriber of whichever
    // thread reaches it first, and another test's thread, which has none,
    // would have this one's warnings cached as never wanted.
    let _second = tracing::Dispatch::new(tracing_subscriber::registry());
    let log = Capture::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let mut translator = pool();
        let bad = || service("bad", vec![port(80, Some("SCTP"), Some(31000))]);
        let good = || service("good", vec![tcp(80, 31001)]);
        let nodes = |count: u8| {
            (1..=count)
                .map(|i| node(&format!("n{i}"), format!("10.1.0.{i}")))
                .collect()
        };
        // Three full rounds with the bad Service (nodes join), one without,
        // one with it again.
        for count in 1..=3 {
            translator.translate(&objects(vec![bad(), good()], nodes(count)));
        }
        translator.translate(&objects(vec![good()], nodes(3)));
        translator.translate(&objects(vec![bad(), good()], nodes(3)));
    });
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.matches("skipping Service ns/bad").count(), 2, "{text}");
}
