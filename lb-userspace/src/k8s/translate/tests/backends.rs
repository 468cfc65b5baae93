//! Backends: which nodes serve, at which address and weight, and
//! `externalTrafficPolicy: Local`.

use k8s_openapi::api::{
    core::v1::{Namespace, NodeAddress},
    discovery::v1::EndpointSlice,
};

use super::*;
use crate::k8s::{
    fixtures::{NodeEndpoint, endpoint_slice},
    metallb::objects::{IPAddressPool, IPAddressPoolSpec},
};

#[test]
fn not_ready_and_excluded_nodes_are_left_out_and_cordoned_ones_serve() {
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
    let mut control_plane = node("control-plane", "10.1.0.6");
    control_plane.metadata.labels = Some(
        [(
            "node.kubernetes.io/exclude-from-external-load-balancers".to_owned(),
            String::new(),
        )]
        .into(),
    );
    let nodes = vec![
        node("c-ready", "10.1.0.1"),
        not_ready,
        no_conditions,
        cordoned,
        schedulable,
        control_plane,
    ];
    let service = with_lb_ip(service("a", vec![tcp(80, 30080)]), "198.51.100.1");
    let translation = Translator::default()
        .translate(&objects(vec![service], nodes))
        .clone();
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    let spec = &translation.state.services[&frontend("198.51.100.1", 80, Protocol::Tcp)];
    assert_eq!(
        backend_nodes(spec),
        [("b-schedulable", 1), ("c-ready", 1), ("cordoned", 1)]
    );
    assert_eq!(spec.backends[0].ip, ip::<IpAddr>("10.1.0.5"));
    assert_eq!(spec.backends[0].port, 30080);
}

#[test]
fn node_without_internal_ip_skipped() {
    let mut external_only = node("external-only", "10.1.0.2");
    external_only
        .status
        .as_mut()
        .unwrap()
        .addresses
        .as_mut()
        .unwrap()
        .iter_mut()
        .find(|address| address.type_ == "InternalIP")
        .unwrap()
        .type_ = "ExternalIP".to_owned();
    let nodes = vec![
        node("good", "10.1.0.1"),
        external_only,
        node("v6-only", "fd00::1"),
    ];
    let service = with_lb_ip(service("a", vec![tcp(80, 30080)]), "198.51.100.1");
    let translation = Translator::default()
        .translate(&objects(vec![service], nodes))
        .clone();
    // An IPv6-only node is fine, but serves no IPv4 VIP.
    assert_eq!(
        skipped(&translation),
        ["Node external-only: no InternalIP address"]
    );
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
    let translation = Translator::default()
        .translate(&objects(vec![service], nodes))
        .clone();
    let want = [
        "Node zero: annotation lb.dev/weight=\"0\" is not a positive integer",
        "Node word: annotation lb.dev/weight=\"heavy\" is not a positive integer",
        "Node negative: annotation lb.dev/weight=\"-2\" is not a positive integer",
    ];
    assert_eq!(skipped(&translation), want);
    let spec = &translation.state.services[&frontend("198.51.100.1", 80, Protocol::Tcp)];
    assert_eq!(backend_nodes(spec), [("heavy", 5), ("plain", 1)]);
}

fn slice(service: &str, endpoints: &[NodeEndpoint]) -> EndpointSlice {
    endpoint_slice("ns", service, endpoints)
}

#[test]
fn local_policy_follows_endpoint_slices() {
    let mut local = with_lb_ip(service("web", vec![tcp(80, 30080)]), "198.51.100.1");
    let spec = local.spec.as_mut().unwrap();
    spec.external_traffic_policy = Some("Local".to_owned());
    spec.health_check_node_port = Some(32000);
    let mut no_slices = with_lb_ip(service("empty", vec![tcp(80, 30081)]), "198.51.100.2");
    no_slices.spec.as_mut().unwrap().external_traffic_policy = Some("Local".to_owned());
    let cluster = with_lb_ip(service("cluster", vec![tcp(80, 30082)]), "198.51.100.3");
    let nodes = (1..=5)
        .map(|i| node(&format!("n{i}"), format!("10.1.0.{i}")))
        .collect();
    let (t, f) = (Some(true), Some(false));
    let mut objects = objects(vec![local, no_slices, cluster], nodes);
    objects.endpoint_slices = [
        // n1 ready (unset conditions count as ready), n2 ready and draining,
        // n3 only draining, n4 neither serving nor ready, n5 terminating and
        // not ready with serving unset, which kube-proxy reads as serving.
        slice("web", &[("n1", None, None, None), ("n2", f, t, t)]),
        slice("web", &[("n2", t, t, f), ("n3", f, t, t), ("n4", f, f, t)]),
        slice("web", &[("n5", f, None, t)]),
        // Endpoints of other Services count for nothing.
        slice("cluster", &[("n5", t, t, f)]),
    ]
    .map(Arc::new)
    .into();
    let translation = Translator::default().translate(&objects).clone();
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    let web = frontend("198.51.100.1", 80, Protocol::Tcp);
    let spec = &translation.state.services[&web];
    assert_eq!(
        backend_nodes(spec),
        [("n1", 1), ("n2", 1), ("n3", 0), ("n5", 0)]
    );
    assert_eq!(
        translation.checks[&web],
        HealthCheck::HealthCheckNodePort(32000)
    );
    let empty = frontend("198.51.100.2", 80, Protocol::Tcp);
    assert!(translation.state.services[&empty].backends.is_empty());
    assert_eq!(translation.checks[&empty], HealthCheck::NodePort);
    let cluster = &translation.state.services[&frontend("198.51.100.3", 80, Protocol::Tcp)];
    assert_eq!(cluster.backends.len(), 5);
}

fn local(name: &str, vip: &str, node_port: i32) -> Service {
    let mut service = with_lb_ip(service(name, vec![tcp(80, node_port)]), vip);
    service.spec.as_mut().unwrap().external_traffic_policy = Some("Local".to_owned());
    service
}

/// The names of the nodes serving port 80 of `vip`.
fn nodes_serving(translation: &Translation, vip: &str) -> Vec<String> {
    let spec = &translation.state.services[&frontend(vip, 80, Protocol::Tcp)];
    let nodes = backend_nodes(spec).into_iter();
    nodes.map(|(node, _)| node.to_owned()).collect()
}

/// A round in which only EndpointSlices changed translates only the
/// Services they belong to, into what translating everything gives.
#[test]
fn a_slice_change_translates_only_its_services_again() {
    let services = vec![
        local("web", "198.51.100.1", 30080),
        local("api", "198.51.100.2", 30081),
        local("db", "198.51.100.3", 30082),
        with_lb_ip(service("cluster", vec![tcp(80, 30083)]), "198.51.100.4"),
    ];
    let nodes = (1..=4)
        .map(|i| node(&format!("n{i}"), format!("10.1.0.{i}")))
        .collect();
    let mut objects = objects(services, nodes);
    let ready = |node| (node, None, None, None);
    let on = |service, node| Arc::new(slice(service, &[ready(node)]));
    objects.endpoint_slices = vec![on("web", "n1"), on("api", "n2"), on("db", "n3")];
    let mut translator = Translator::default();
    assert_eq!(translator.translate(&objects).translated, 4);
    // web's slice changes, api's goes, db gets a second one.
    objects.endpoint_slices[0] = on("web", "n4");
    objects.endpoint_slices.remove(1);
    objects.endpoint_slices.push(on("db", "n1"));
    let translation = translator.translate(&objects);
    assert_eq!(translation.translated, 3);
    assert_eq!(nodes_serving(translation, "198.51.100.1"), ["n4"]);
    assert!(nodes_serving(translation, "198.51.100.2").is_empty());
    assert_eq!(nodes_serving(translation, "198.51.100.3"), ["n1", "n3"]);
    assert_eq!(nodes_serving(translation, "198.51.100.4").len(), 4);
    let everything = Translator::default().translate(&objects).clone();
    assert_eq!(translation.state, everything.state);
    assert_eq!(translation.vips, everything.vips);
    assert_eq!(translation.checks, everything.checks);
    // Nothing changed: nothing to translate.
    assert_eq!(translator.translate(&objects).translated, 0);
    // A Service changed: everything is translated again.
    objects.services[3] = Arc::new(local("cluster", "198.51.100.4", 30083));
    let translation = translator.translate(&objects);
    assert_eq!(translation.translated, 4);
    assert_eq!(
        nodes_serving(translation, "198.51.100.4"),
        Vec::<String>::new()
    );
    // So does anything else translation reads: a Node (a new object, even
    // alike), a Namespace's labels, an IPAddressPool.
    objects.nodes[0] = Arc::new((*objects.nodes[0]).clone());
    assert_eq!(translator.translate(&objects).translated, 4);
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some("ns".to_owned());
    namespace.metadata.labels = Some([("team".to_owned(), "web".to_owned())].into());
    objects.namespaces.push(Arc::new(namespace));
    assert_eq!(translator.translate(&objects).translated, 4);
    let spec = IPAddressPoolSpec {
        addresses: vec!["198.51.100.0/28".to_owned()],
        ..IPAddressPoolSpec::default()
    };
    let pool = IPAddressPool::new("public", spec);
    objects.metallb.pools.push(Arc::new(pool));
    assert_eq!(translator.translate(&objects).translated, 4);
    assert_eq!(translator.translate(&objects).translated, 0);
}

#[test]
fn node_address_type_is_configurable() {
    let mut external = node("n1", "10.1.0.1");
    let addresses = external
        .status
        .as_mut()
        .unwrap()
        .addresses
        .as_mut()
        .unwrap();
    addresses.push(NodeAddress {
        type_: "ExternalIP".to_owned(),
        address: "192.0.2.1".to_owned(),
    });
    let service = with_lb_ip(service("a", vec![tcp(80, 30080)]), "198.51.100.1");
    let mut translator = Translator::default();
    translator.config.node_address_type = "ExternalIP".to_owned();
    let translation = translator.translate(&objects(
        vec![service],
        vec![external, node("n2", "10.1.0.2")],
    ));
    let spec = &translation.state.services[&frontend("198.51.100.1", 80, Protocol::Tcp)];
    assert_eq!(spec.backends.len(), 1);
    assert_eq!(spec.backends[0].ip, ip::<IpAddr>("192.0.2.1"));
    assert_eq!(skipped(translation), ["Node n2: no ExternalIP address"]);
}

/// With direct server return a port needs no NodePort (as with
/// `allocateLoadBalancerNodePorts: false`): nodes take the packet on the VIP
/// and the port itself, and are checked on kube-proxy's own health port
/// unless the Service has a healthCheckNodePort (policy Local); a port with
/// a NodePort is still checked there. NAT refuses such a port.
#[test]
fn direct_server_return_serves_ports_without_a_node_port() {
    let cluster = with_lb_ip(
        service(
            "cluster",
            vec![port(80, Some("TCP"), None), tcp(443, 30443)],
        ),
        "198.51.100.1",
    );
    let mut local = with_lb_ip(
        service("local", vec![port(53, Some("UDP"), None)]),
        "198.51.100.2",
    );
    let spec = local.spec.as_mut().unwrap();
    spec.external_traffic_policy = Some("Local".to_owned());
    spec.health_check_node_port = Some(32000);
    let mut objects = objects(vec![cluster, local], vec![node("n1", "10.1.0.1")]);
    objects.endpoint_slices = vec![Arc::new(slice("local", &[("n1", None, None, None)]))];
    let config = TranslateConfig {
        forwarding: Forwarding::Dsr,
        kube_proxy_healthz_port: Some(10999),
        ..TranslateConfig::default()
    };
    let mut dsr = Translator::new(config, Pools::default());
    let translation = dsr.translate(&objects).clone();
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    let want = [
        (
            frontend("198.51.100.1", 80, Protocol::Tcp),
            80,
            HealthCheck::KubeProxy(10999),
        ),
        (
            frontend("198.51.100.1", 443, Protocol::Tcp),
            30443,
            HealthCheck::NodePort,
        ),
        (
            frontend("198.51.100.2", 53, Protocol::Udp),
            53,
            HealthCheck::HealthCheckNodePort(32000),
        ),
    ];
    for (frontend, port, check) in want {
        let backends = &translation.state.services[&frontend].backends;
        let ports: Vec<u16> = backends.iter().map(|backend| backend.port).collect();
        assert_eq!(ports, [port], "{frontend}");
        assert_eq!(translation.checks[&frontend], check, "{frontend}");
    }

    // With kube-proxy's health port switched off such a port goes unchecked;
    // the others are checked as before.
    let config = TranslateConfig {
        forwarding: Forwarding::Dsr,
        kube_proxy_healthz_port: None,
        ..TranslateConfig::default()
    };
    let translation = Translator::new(config, Pools::default())
        .translate(&objects)
        .clone();
    let checks: Vec<u16> = translation.checks.keys().map(|f| f.port).collect();
    assert_eq!(checks, [443, 53], "{:?}", translation.checks);

    // Checked on kube-proxy's own port, policy Cluster ports with a NodePort
    // too (one check per node); policy Local still on its own.
    let config = TranslateConfig {
        forwarding: Forwarding::Dsr,
        kube_proxy_healthz_port: Some(10999),
        cluster_check: ClusterCheck::KubeProxy,
        ..TranslateConfig::default()
    };
    let translation = Translator::new(config, Pools::default())
        .translate(&objects)
        .clone();
    let checks: Vec<(u16, HealthCheck)> = translation
        .checks
        .iter()
        .map(|(frontend, check)| (frontend.port, *check))
        .collect();
    assert_eq!(
        checks,
        [
            (80, HealthCheck::KubeProxy(10999)),
            (443, HealthCheck::KubeProxy(10999)),
            (53, HealthCheck::HealthCheckNodePort(32000)),
        ]
    );

    let translation = Translator::default().translate(&objects).clone();
    assert_eq!(served(&translation).len(), 1, "{:?}", translation.state);
    assert_eq!(skipped(&translation).len(), 2, "{:?}", translation.skipped);
}
