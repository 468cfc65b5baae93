use k8s_openapi::{
    api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, NodeAddress, NodeCondition, NodeSpec, NodeStatus,
        ServiceSpec as K8sServiceSpec, ServiceStatus,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::*;
use crate::k8s::manifests::load_path;

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

fn pool() -> VipPool {
    VipPool::parse("198.51.100.0/28").unwrap()
}

fn port(port: i32, protocol: Option<&str>, node_port: Option<i32>) -> ServicePort {
    ServicePort {
        name: Some(format!("p{port}")),
        port,
        protocol: protocol.map(str::to_owned),
        node_port,
        ..Default::default()
    }
}

fn tcp(port: i32, node_port: i32) -> ServicePort {
    self::port(port, Some("TCP"), Some(node_port))
}

fn service(name: &str, ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("ns".to_owned()),
            ..Default::default()
        },
        spec: Some(K8sServiceSpec {
            type_: Some("LoadBalancer".to_owned()),
            ports: Some(ports),
            ..Default::default()
        }),
        status: None,
    }
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

fn node(name: &str, internal_ip: &str) -> Node {
    let address = |type_: &str, address: &str| NodeAddress {
        type_: type_.to_owned(),
        address: address.to_owned(),
    };
    let ready = NodeCondition {
        type_: "Ready".to_owned(),
        status: "True".to_owned(),
        ..Default::default()
    };
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            addresses: Some(vec![
                address("Hostname", name),
                address("InternalIP", internal_ip),
            ]),
            conditions: Some(vec![ready]),
            ..Default::default()
        }),
    }
}

fn with_weight(mut node: Node, weight: &str) -> Node {
    let annotations = [(NODE_WEIGHT_ANNOTATION.to_owned(), weight.to_owned())];
    node.metadata.annotations = Some(annotations.into());
    node
}

fn objects(services: Vec<Service>, nodes: Vec<Node>) -> ClusterObjects {
    ClusterObjects { services, nodes }
}

fn frontend(vip: &str, port: u16, protocol: Protocol) -> Frontend {
    Frontend {
        vip: ip(vip),
        port,
        protocol,
    }
}

/// (name, VIP) of every served port, in frontend order.
fn served(translation: &Translation) -> Vec<(String, Ipv4Addr)> {
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
    let translation = translate(&loaded.objects, Some(&mut pool));
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
    assert_eq!(pool.lookup("vote/result"), Some(ip("198.51.100.1")));
}

#[test]
fn only_load_balancers_served() {
    let mut cluster_ip = service("internal", vec![tcp(80, 30080)]);
    cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".to_owned());
    let mut untyped = service("untyped", vec![tcp(80, 30081)]);
    untyped.spec.as_mut().unwrap().type_ = None;
    let public = with_lb_ip(service("public", vec![tcp(80, 30082)]), "198.51.100.5");
    let mut pool = pool();
    let translation = translate(
        &objects(vec![cluster_ip, untyped, public], vec![]),
        Some(&mut pool),
    );
    assert_eq!(
        served(&translation),
        [("ns/public:p80".to_owned(), ip("198.51.100.5"))]
    );
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    assert_eq!(pool.lookup("ns/internal"), None);
}

#[test]
fn vip_precedence() {
    let both = with_status_ips(
        with_lb_ip(service("both", vec![tcp(80, 30080)]), "198.51.100.2"),
        &["198.51.100.9"],
    );
    // The status may list a hostname or IPv6 address before the IPv4 one.
    let status = with_status_ips(
        service("status", vec![tcp(80, 30081)]),
        &["lb.example.com", "2001:db8::1", "198.51.100.1"],
    );
    let pooled = service("pooled", vec![tcp(80, 30082)]);
    let mut pool = pool();
    let translation = translate(
        &objects(vec![pooled, status, both], vec![]),
        Some(&mut pool),
    );
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    let want = [
        ("ns/status:p80".to_owned(), ip("198.51.100.1")),
        ("ns/both:p80".to_owned(), ip("198.51.100.2")),
        ("ns/pooled:p80".to_owned(), ip("198.51.100.3")),
    ];
    assert_eq!(served(&translation), want);
}

#[test]
fn requested_vip_outside_pool_served() {
    let service = with_lb_ip(service("a", vec![tcp(80, 30080)]), "203.0.113.7");
    let mut pool = pool();
    let translation = translate(&objects(vec![service], vec![]), Some(&mut pool));
    assert_eq!(
        served(&translation),
        [("ns/a:p80".to_owned(), ip("203.0.113.7"))]
    );
}

#[test]
fn no_usable_vip_skipped() {
    let services = vec![
        service("a", vec![tcp(80, 30080)]),
        with_lb_ip(service("b", vec![tcp(80, 30081)]), "198.51.100.300"),
    ];
    let translation = translate(&objects(services.clone(), vec![]), None);
    assert!(translation.state.services.is_empty());
    let want = [
        "Service ns/b: spec.loadBalancerIP \"198.51.100.300\" is not an IPv4 address",
        "Service ns/a: no VIP: no spec.loadBalancerIP, no IPv4 status.loadBalancer.ingress and no VIP pool",
    ];
    assert_eq!(translation.skipped, want);

    let mut tiny = VipPool::parse("198.51.100.0/32").unwrap();
    let holder = with_lb_ip(service("holder", vec![tcp(80, 30082)]), "198.51.100.0");
    let services = vec![services[0].clone(), holder];
    let translation = translate(&objects(services, vec![]), Some(&mut tiny));
    assert_eq!(
        translation.skipped,
        ["Service ns/a: no VIP: VIP pool 198.51.100.0/32 has no free address left"]
    );
}

#[test]
fn not_ready_and_unschedulable_nodes_excluded() {
    let mut not_ready = node("not-ready", "10.1.0.2");
    not_ready
        .status
        .as_mut()
        .unwrap()
        .conditions
        .as_mut()
        .unwrap()[0]
        .status = "False".to_owned();
    let mut no_conditions = node("no-conditions", "10.1.0.3");
    no_conditions.status.as_mut().unwrap().conditions = None;
    let mut cordoned = node("cordoned", "10.1.0.4");
    cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
    let mut schedulable = node("b-schedulable", "10.1.0.5");
    schedulable.spec.as_mut().unwrap().unschedulable = Some(false);
    let nodes = vec![
        node("c-ready", "10.1.0.1"),
        not_ready,
        no_conditions,
        cordoned,
        schedulable,
    ];
    let service = with_lb_ip(service("a", vec![tcp(80, 30080)]), "198.51.100.1");
    let translation = translate(&objects(vec![service], nodes), None);
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    let spec = &translation.state.services[&frontend("198.51.100.1", 80, Protocol::Tcp)];
    assert_eq!(backend_nodes(spec), [("b-schedulable", 1), ("c-ready", 1)]);
    assert_eq!(spec.backends[0].ip, ip("10.1.0.5"));
    assert_eq!(spec.backends[0].port, 30080);
}

#[test]
fn node_without_internal_ipv4_skipped() {
    let mut external_only = node("external-only", "10.1.0.2");
    external_only
        .status
        .as_mut()
        .unwrap()
        .addresses
        .as_mut()
        .unwrap()[1]
        .type_ = "ExternalIP".to_owned();
    let nodes = vec![
        node("good", "10.1.0.1"),
        external_only,
        node("v6-only", "fd00::1"),
    ];
    let service = with_lb_ip(service("a", vec![tcp(80, 30080)]), "198.51.100.1");
    let translation = translate(&objects(vec![service], nodes), None);
    let want = [
        "Node external-only: no IPv4 InternalIP address",
        "Node v6-only: no IPv4 InternalIP address",
    ];
    assert_eq!(translation.skipped, want);
    let spec = &translation.state.services[&frontend("198.51.100.1", 80, Protocol::Tcp)];
    assert_eq!(backend_nodes(spec), [("good", 1)]);
}

#[test]
fn weight_annotation() {
    let nodes = vec![
        with_weight(node("heavy", "10.1.0.1"), "5"),
        node("plain", "10.1.0.2"),
        with_weight(node("zero", "10.1.0.3"), "0"),
        with_weight(node("word", "10.1.0.4"), "heavy"),
        with_weight(node("negative", "10.1.0.5"), "-2"),
    ];
    let service = with_lb_ip(service("a", vec![tcp(80, 30080)]), "198.51.100.1");
    let translation = translate(&objects(vec![service], nodes), None);
    let want = [
        "Node zero: annotation lb.dev/weight=\"0\" is not a positive integer",
        "Node word: annotation lb.dev/weight=\"heavy\" is not a positive integer",
        "Node negative: annotation lb.dev/weight=\"-2\" is not a positive integer",
    ];
    assert_eq!(translation.skipped, want);
    let spec = &translation.state.services[&frontend("198.51.100.1", 80, Protocol::Tcp)];
    assert_eq!(backend_nodes(spec), [("heavy", 5), ("plain", 1)]);
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
    let translation = translate(&objects(vec![service], vec![node("n", "10.1.0.1")]), None);
    let want = [
        "Service default/web: port 9000/sctp: protocol SCTP is not supported",
        "Service default/web: port 443/tcp has no nodePort",
    ];
    assert_eq!(translation.skipped, want);
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

#[test]
fn shared_vip_for_disjoint_ports() {
    let dns = vec![port(53, Some("UDP"), Some(30053))];
    let services = vec![
        with_lb_ip(
            service("web", vec![tcp(80, 30080), tcp(53, 30054)]),
            "198.51.100.4",
        ),
        with_status_ips(service("dns", dns), &["198.51.100.4"]),
        service("other", vec![tcp(80, 30081)]),
    ];
    let mut pool = pool();
    let translation = translate(&objects(services, vec![]), Some(&mut pool));
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    let want = [
        ("ns/other:p80".to_owned(), ip("198.51.100.1")),
        ("ns/web:p53".to_owned(), ip("198.51.100.4")),
        ("ns/dns:p53".to_owned(), ip("198.51.100.4")),
        ("ns/web:p80".to_owned(), ip("198.51.100.4")),
    ];
    assert_eq!(served(&translation), want);
}

#[test]
fn shared_vip_for_overlapping_ports_refused() {
    let services = vec![
        with_lb_ip(
            service("b", vec![tcp(80, 30081), tcp(443, 30444)]),
            "198.51.100.4",
        ),
        with_lb_ip(service("a", vec![tcp(80, 30080)]), "198.51.100.4"),
    ];
    let mut pool = pool();
    let translation = translate(&objects(services, vec![]), Some(&mut pool));
    assert_eq!(
        served(&translation),
        [("ns/a:p80".to_owned(), ip("198.51.100.4"))]
    );
    assert_eq!(
        translation.skipped,
        ["Service ns/b: VIP 198.51.100.4 is already used by ns/a on an overlapping port"]
    );
    assert_eq!(pool.lookup("ns/a"), Some(ip("198.51.100.4")));
}

#[test]
fn requested_vip_held_by_allocation_refused() {
    let mut pool = pool();
    let a = service("a", vec![tcp(80, 30080)]);
    translate(&objects(vec![a.clone()], vec![]), Some(&mut pool));
    let b = with_lb_ip(service("b", vec![tcp(80, 30081)]), "198.51.100.1");
    let translation = translate(&objects(vec![a, b], vec![]), Some(&mut pool));
    assert_eq!(
        served(&translation),
        [("ns/a:p80".to_owned(), ip("198.51.100.1"))]
    );
    assert_eq!(
        translation.skipped,
        ["Service ns/b: address 198.51.100.1 is already held by ns/a"]
    );
}

#[test]
fn services_swapping_vips() {
    let mut pool = pool();
    let a = |vip| with_lb_ip(service("a", vec![tcp(80, 30080)]), vip);
    let b = |vip| with_lb_ip(service("b", vec![tcp(80, 30081)]), vip);
    translate(
        &objects(vec![a("198.51.100.1"), b("198.51.100.2")], vec![]),
        Some(&mut pool),
    );
    let translation = translate(
        &objects(vec![a("198.51.100.2"), b("198.51.100.1")], vec![]),
        Some(&mut pool),
    );
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    let want = [
        ("ns/b:p80".to_owned(), ip("198.51.100.1")),
        ("ns/a:p80".to_owned(), ip("198.51.100.2")),
    ];
    assert_eq!(served(&translation), want);
}

#[test]
fn deleted_service_releases_pool_address() {
    let mut pool = pool();
    let a = service("a", vec![tcp(80, 30080)]);
    let b = service("b", vec![tcp(80, 30081)]);
    let c = service("c", vec![tcp(80, 30082)]);
    let first = translate(&objects(vec![a, b.clone()], vec![]), Some(&mut pool));
    let want = [
        ("ns/a:p80".to_owned(), ip("198.51.100.1")),
        ("ns/b:p80".to_owned(), ip("198.51.100.2")),
    ];
    assert_eq!(served(&first), want);

    let second = translate(&objects(vec![b.clone()], vec![]), Some(&mut pool));
    assert_eq!(
        served(&second),
        [("ns/b:p80".to_owned(), ip("198.51.100.2"))]
    );
    assert_eq!(pool.lookup("ns/a"), None);

    let third = translate(&objects(vec![b, c], vec![]), Some(&mut pool));
    let want = [
        ("ns/c:p80".to_owned(), ip("198.51.100.1")),
        ("ns/b:p80".to_owned(), ip("198.51.100.2")),
    ];
    assert_eq!(served(&third), want);
}
