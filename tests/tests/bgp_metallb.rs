//! MetalLB's BGP configuration read from manifests by the real agent, with a
//! real BIRD as the router: BGPPeers become sessions with their own port,
//! AS, password and BFD profile; BGPAdvertisements decide the prefixes
//! (aggregationLength), their attributes (localPref, communities through a
//! Community alias) and which peer gets them; a BGPPeer without an AS is
//! skipped, by name and field, while the others work.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use serde::{Deserialize as _, Serialize, de::DeserializeOwned};

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use kube::Resource;
use lb::k8s::metallb::objects::{BFDProfile, BGPAdvertisement, BGPPeer, Community, IPAddressPool};
use lb_tests::{
    agent::Agent,
    bird,
    fake_apiserver::{FakeApiServer, Options},
    kube_agent::KubeAgent,
    manifests::{self, ManifestFile, ServicePort},
    scale_out::{NODE_PORT, PORT, ROUTER_IP, ScaleOut, host_ip},
    topology::HOST_IFACE,
};

/// The router's and the lb host's second addresses, for the second session:
/// BIRD runs one session per neighbour address.
const ROUTER_B: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const HOST_B: Ipv4Addr = host_ip(2);
const PASSWORD: &str = "s3cret md5";
/// As the API server keeps a Secret's data.
const PASSWORD_BASE64: &str = "czNjcmV0IG1kNQ==";
/// router-a's session listens here, not on BGP's port.
const PORT_A: u16 = 1790;

/// The router: iBGP (AS 64512) with a password and BFD on a port of its
/// own as `router_a`, eBGP (AS 64500) between both second addresses as
/// `router_b`.
fn router_config(hosts: &[Ipv4Addr]) -> String {
    let host = hosts[0];
    format!(
        "router id {ROUTER_IP};
log stderr all;
protocol device {{ }}
protocol bfd {{ }}
protocol bgp router_a {{
  local {ROUTER_IP} port {PORT_A} as 64512; neighbor {host} as 64512; direct;
  password \"{PASSWORD}\"; bfd on;
  ipv4 {{ import all; export none; }};
  connect retry time 1; error wait time 1, 5;
}}
protocol bgp router_b {{
  local {ROUTER_B} as 64500; neighbor {HOST_B} as 64512;
  ipv4 {{ import all; export none; }};
  connect retry time 1; error wait time 1, 5;
}}
"
    )
}

/// The segment with one lb host and three nodes, the router and the host
/// with their second addresses.
fn bed() -> ScaleOut {
    let net = ScaleOut::with_router(1, 3, |router, hosts| {
        router.ip(&format!("addr add {ROUTER_B}/24 dev {HOST_IFACE}"))?;
        Ok(router_config(hosts))
    })
    .expect("topology");
    net.hosts[0]
        .ns
        .ip(&format!("addr add {HOST_B}/24 dev {HOST_IFACE}"))
        .expect("host's second address");
    net
}

/// MetalLB's objects as its documentation writes them, for this bed.
fn metallb_objects() -> String {
    format!(
        "apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {{name: bgp-pool, namespace: metallb-system}}
spec: {{addresses: [198.51.100.0/24]}}
---
apiVersion: v1
kind: Secret
metadata: {{name: router-a-password, namespace: metallb-system}}
type: kubernetes.io/basic-auth
data: {{password: {PASSWORD_BASE64}}}
---
apiVersion: metallb.io/v1beta1
kind: BFDProfile
metadata: {{name: full1, namespace: metallb-system}}
spec: {{receiveInterval: 100, transmitInterval: 100, detectMultiplier: 3, echoMode: true, minimumTtl: 254}}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {{name: router-a, namespace: metallb-system}}
spec:
  myASN: 64512
  peerASN: 64512
  peerAddress: {ROUTER_IP}
  peerPort: {PORT_A}
  holdTime: 30s
  bfdProfile: full1
  passwordSecret: {{name: router-a-password, namespace: metallb-system}}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {{name: router-b, namespace: metallb-system}}
spec: {{myASN: 64512, peerASN: 64500, peerAddress: {ROUTER_B}, sourceAddress: {HOST_B}}}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {{name: no-as, namespace: metallb-system}}
spec: {{myASN: 64512, peerAddress: 10.1.0.3}}
---
apiVersion: metallb.io/v1beta1
kind: Community
metadata: {{name: communities, namespace: metallb-system}}
spec:
  communities:
  - {{name: NO_ADVERTISE, value: '65535:65282'}}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {{name: local, namespace: metallb-system}}
spec:
  ipAddressPools: [bgp-pool]
  aggregationLength: 32
  localPref: 150
  communities: [NO_ADVERTISE, 'large:64512:1:2']
  peers: [router-a]
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {{name: external, namespace: metallb-system}}
spec:
  ipAddressPools: [bgp-pool]
  aggregationLength: 24
  peers: [router-b]
"
    )
}

/// Two Services, 198.51.100.10 and .11, on every node.
fn services(net: &ScaleOut) -> String {
    let port = ServicePort::http(PORT, NODE_PORT);
    let web = manifests::load_balancer_service_yaml("web", "edge", "198.51.100.10", &[port]);
    let port = ServicePort {
        node_port: NODE_PORT + 1,
        ..port
    };
    let api = manifests::load_balancer_service_yaml("api", "edge", "198.51.100.11", &[port]);
    let mut docs = vec![web, api];
    docs.extend(
        net.nodes
            .iter()
            .map(|n| manifests::ready_node_yaml(&n.name, &[n.ip])),
    );
    manifests::documents(&docs)
}

/// Applies every document of `text` (YAML) to the fake API server, as
/// `kubectl apply` would.
fn apply(server: &FakeApiServer, text: &str) -> anyhow::Result<()> {
    fn typed<K: Resource<DynamicType = ()> + Serialize + DeserializeOwned>(
        server: &FakeApiServer,
        value: serde_yaml::Value,
    ) -> anyhow::Result<()> {
        server.apply(&serde_yaml::from_value::<K>(value)?).map(drop)
    }
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document)?;
        match value["kind"].as_str().unwrap_or_default() {
            "Service" => typed::<Service>(server, value)?,
            "Node" => typed::<Node>(server, value)?,
            "Secret" => typed::<Secret>(server, value)?,
            "IPAddressPool" => typed::<IPAddressPool>(server, value)?,
            "BGPPeer" => typed::<BGPPeer>(server, value)?,
            "BFDProfile" => typed::<BFDProfile>(server, value)?,
            "Community" => typed::<Community>(server, value)?,
            "BGPAdvertisement" => typed::<BGPAdvertisement>(server, value)?,
            other => anyhow::bail!("no kind {other:?} here"),
        }
    }
    Ok(())
}

/// Polls the router's `show route all protocol NAME` until `done` says so.
fn routes_until(net: &ScaleOut, protocol: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let routes = net
            .router_bird()
            .birdc(&format!("show route all protocol {protocol}"))
            .expect("router's birdc");
        if done(&routes) {
            return routes;
        }
        assert!(
            Instant::now() < deadline,
            "router's {protocol} routes:\n{routes}\nprotocols:\n{}",
            net.router_bird()
                .birdc("show protocols all")
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn bgp_peers_and_advertisements_from_manifests_reach_a_real_router() {
    let net = bed();
    let text = format!("{}---\n{}", metallb_objects(), services(&net));
    let manifests = ManifestFile::new("bgp-metallb", &text).expect("manifests");
    // Health checks off: every node is a healthy backend. The flags' BGP
    // session too, which the BGPPeers overrule.
    let mut args = net.bgp_args(0);
    args.extend(["--health-interval", "0"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = net.start_agent(0, manifests.path(), &args).expect("agent");

    // router-a: both VIPs alone, with the advertisement's attributes.
    let a = routes_until(&net, "router_a", |r| {
        r.contains("198.51.100.10/32") && r.contains("198.51.100.11/32")
    });
    assert!(!a.contains("198.51.100.0/24"), "router-a got the /24:\n{a}");
    assert!(a.contains("BGP.local_pref: 150"), "{a}");
    assert!(a.contains("(65535,65282)"), "{a}");
    assert!(a.contains("(64512, 1, 2)"), "{a}");
    // router-b: one /24 for both, and nothing of the advertisement for a.
    let b = routes_until(&net, "router_b", |r| r.contains("198.51.100.0/24"));
    assert!(!b.contains("/32"), "router-b got a host route:\n{b}");
    assert_eq!(b.matches("198.51.100.0/24").count(), 1, "{b}");
    assert!(!b.contains("65535,65282"), "{b}");

    let deadline = Instant::now() + Duration::from_secs(10);
    while !bird::bfd_up(&net.router_bird().socket(), host_ip(1)).expect("router's birdc") {
        assert!(Instant::now() < deadline, "no BFD session with router-a");
        std::thread::sleep(Duration::from_millis(100));
    }

    // `lb bgp` names the sessions as the BGPPeers do.
    let listing = agent.query("bgp").expect("lb bgp");
    let mut sessions: Vec<(String, String)> = listing["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| (s["name"].to_string(), s["state"].to_string()))
        .collect();
    sessions.sort();
    assert_eq!(
        sessions,
        [
            ("\"router-a\"".to_owned(), "\"Established\"".to_owned()),
            ("\"router-b\"".to_owned(), "\"Established\"".to_owned())
        ],
        "{listing}"
    );
    let log = agent.log();
    assert!(
        log.contains("BGPPeer metallb-system/no-as: no AS"),
        "the peer without an AS is not reported:\n{log}"
    );
    assert_eq!(
        log.matches("--bgp-peer and --bgp-asn are overruled")
            .count(),
        1,
        "the flags' clash with the BGPPeers is not said once:\n{log}"
    );
    drop(agent);
}

/// The agent with no BGP flags starts BIRD for BGPPeers that only appear
/// later (SIGHUP re-reads the manifests).
#[test]
fn bgp_peers_appearing_later_start_bird() {
    let net = bed();
    let manifests = ManifestFile::new("bgp-metallb-later", &services(&net)).expect("manifests");
    let agent: Agent = net
        .start_agent(0, manifests.path(), &["--health-interval", "0"])
        .expect("agent");
    agent
        .wait_for_backends(Duration::from_secs(20), |rows| rows.len() == 6)
        .expect("both Services programmed");
    assert!(agent.bird_pid().is_none(), "BIRD runs without sessions");
    let text = format!("{}---\n{}", metallb_objects(), services(&net));
    manifests.write(&text).expect("manifests");
    agent.signal(libc::SIGHUP).expect("SIGHUP");
    routes_until(&net, "router_b", |r| r.contains("198.51.100.0/24"));
}

/// BGPPeers on a host without BIRD: one clear error, and the agent serves on.
#[test]
fn a_missing_bird_is_said_once() {
    let net = bed();
    let text = format!("{}---\n{}", metallb_objects(), services(&net));
    let manifests = ManifestFile::new("bgp-metallb-no-bird", &text).expect("manifests");
    let agent = net
        .start_agent(
            0,
            manifests.path(),
            &["--health-interval", "0", "--bird", "/nonexistent/bird"],
        )
        .expect("agent");
    agent
        .wait_for_backends(Duration::from_secs(20), |rows| rows.len() == 6)
        .expect("both Services programmed");
    // Retried every second meanwhile.
    std::thread::sleep(Duration::from_secs(3));
    let log = agent.log();
    assert_eq!(
        log.matches("/nonexistent/bird not found: install bird2")
            .count(),
        1,
        "{log}"
    );
}

/// The same configuration from the (fake) API server, the password from a
/// Secret's data as the API server keeps it.
#[test]
fn bgp_peers_and_advertisements_from_the_api_server() -> anyhow::Result<()> {
    let net = bed();
    let bed = KubeAgent::start(
        &net.hosts[0].ns,
        &[HOST_IFACE],
        Options::default(),
        &["--health-interval", "0"],
    )?;
    bed.server.install_metallb_crds();
    apply(&bed.server, &services(&net))?;
    apply(&bed.server, &metallb_objects())?;
    let a = routes_until(&net, "router_a", |r| {
        r.contains("198.51.100.10/32") && r.contains("198.51.100.11/32")
    });
    assert!(a.contains("BGP.local_pref: 150"), "{a}");
    routes_until(&net, "router_b", |r| r.contains("198.51.100.0/24"));
    Ok(())
}
