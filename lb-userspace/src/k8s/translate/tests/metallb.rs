//! MetalLB's documented configurations, written as manifests, give the
//! addresses MetalLB would hand out; invalid objects are skipped by name.

use std::path::Path;

use super::*;
use crate::k8s::load_bytes;

/// The objects of a multi-document manifest, none skipped.
fn cluster(yaml: &str) -> ClusterObjects {
    let loaded = load_bytes(Path::new("example.yaml"), yaml.as_bytes());
    assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
    loaded.objects
}

/// A LoadBalancer Service listening on `port`/`protocol`, with extra
/// metadata lines (labels, annotations) indented under `metadata:`.
fn service_yaml(namespace: &str, name: &str, port: u16, protocol: &str, metadata: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         {metadata}spec:\n  type: LoadBalancer\n  ports:\n  - port: {port}\n    protocol: {protocol}\n    \
         nodePort: {}\n",
        30000 + port
    )
}

/// An IPAddressPool in MetalLB's namespace; `spec` is indented by two.
fn ip_address_pool(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: {name}\n  \
         namespace: metallb-system\nspec:{spec}"
    )
}

fn vips(translation: &Translation) -> Vec<(String, Vec<IpAddr>)> {
    translation.vips.clone().into_iter().collect()
}

fn addresses(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|text| ip(text)).collect()
}

fn first_pool() -> String {
    [ip_address_pool(
        "first-pool",
        "
  addresses:
  - 192.168.10.0/24
  - 192.168.9.1-192.168.9.5
  - fc00:f853:0ccd:e799::/124
",
    )]
    .concat()
}

#[test]
fn a_cidr_is_handed_out_from_its_first_address_in_the_order_listed() {
    let mut yaml = first_pool();
    for name in ["a", "b"] {
        yaml += &service_yaml("default", name, 80, "TCP", "");
    }
    yaml += &service_yaml(
        "default",
        "dual",
        80,
        "TCP",
        "  annotations:\n    metallb.io/loadBalancerIPs: 192.168.9.3,fc00:f853:ccd:e799::3\n",
    );
    let mut objects = cluster(&yaml);
    objects.services[2] = Arc::new(ip_families(
        (*objects.services[2]).clone(),
        "RequireDualStack",
        &["IPv4", "IPv6"],
    ));
    // The flags' pool is not used while IPAddressPools exist.
    let translation = pool().translate(&objects).clone();
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    assert_eq!(
        vips(&translation),
        [
            ("default/a".to_owned(), addresses(&["192.168.10.0"])),
            ("default/b".to_owned(), addresses(&["192.168.10.1"])),
            (
                "default/dual".to_owned(),
                addresses(&["192.168.9.3", "fc00:f853:ccd:e799::3"])
            ),
        ]
    );
    assert_eq!(translation.vip_pools[&ip("192.168.10.1")], "first-pool");
}

#[test]
fn auto_assign_false_pools_serve_only_services_naming_them() {
    let mut yaml = [
        ip_address_pool(
            "cheap",
            "
  addresses:
  - 192.168.144.0/20
",
        ),
        ip_address_pool(
            "expensive",
            "
  addresses:
  - 42.176.25.64/30
  autoAssign: false
",
        ),
    ]
    .concat();
    yaml += &service_yaml("default", "plain", 80, "TCP", "");
    let named = "  annotations:\n    metallb.universe.tf/address-pool: expensive\n";
    yaml += &service_yaml("default", "public", 80, "TCP", named);
    let translation = Translator::default().translate(&cluster(&yaml)).clone();
    assert_eq!(
        vips(&translation),
        [
            ("default/plain".to_owned(), addresses(&["192.168.144.0"])),
            ("default/public".to_owned(), addresses(&["42.176.25.64"])),
        ]
    );
}

#[test]
fn avoid_buggy_ips_skips_dot_zero_and_dot_255() {
    let mut yaml = [ip_address_pool(
        "p",
        "
  addresses:
  - 192.168.10.254-192.168.11.1
  avoidBuggyIPs: true
",
    )]
    .concat();
    for name in ["a", "b", "c"] {
        yaml += &service_yaml("default", name, 80, "TCP", "");
    }
    let asks = "  annotations:\n    metallb.io/loadBalancerIPs: 192.168.11.0\n";
    yaml += &service_yaml("default", "d", 80, "TCP", asks);
    let translation = Translator::default().translate(&cluster(&yaml)).clone();
    assert_eq!(
        vips(&translation),
        [
            ("default/a".to_owned(), addresses(&["192.168.10.254"])),
            ("default/b".to_owned(), addresses(&["192.168.11.1"])),
        ]
    );
    assert_eq!(
        skipped(&translation),
        [
            "Service default/c: no IPv4 VIP: VIP pool p has no free IPv4 address left",
            "Service default/d: address 192.168.11.0 is in no IPAddressPool",
        ]
    );
}

fn reserved_pools() -> String {
    [
        ip_address_pool(
            "ns-pool",
            "
  addresses:
  - 10.0.1.0/24
  serviceAllocation:
    priority: 50
    namespaces:
    - test-ns
    namespaceSelectors:
    - matchLabels:
        team: blue
",
        ),
        ip_address_pool(
            "svc-pool",
            "
  addresses:
  - 10.0.2.0/24
  serviceAllocation:
    priority: 20
    serviceSelectors:
    - matchExpressions:
      - key: app
        operator: In
        values: [foo]
",
        ),
        ip_address_pool(
            "shared",
            "
  addresses:
  - 10.0.3.0/24
",
        ),
        "
---
apiVersion: v1
kind: Namespace
metadata:
  name: blue-ns
  labels:
    team: blue
"
        .to_owned(),
    ]
    .concat()
}

#[test]
fn reserved_pools_by_priority_namespace_and_labels() {
    let mut yaml = reserved_pools();
    let foo = "  labels:\n    app: foo\n";
    yaml += &service_yaml("test-ns", "labelled", 80, "TCP", foo);
    yaml += &service_yaml("test-ns", "plain", 80, "TCP", "");
    yaml += &service_yaml("blue-ns", "blue", 80, "TCP", "");
    yaml += &service_yaml("other", "elsewhere", 80, "TCP", "");
    let intruder = "  annotations:\n    metallb.universe.tf/loadBalancerIPs: 10.0.1.9\n";
    yaml += &service_yaml("other", "intruder", 80, "TCP", intruder);
    let named = "  annotations:\n    metallb.io/address-pool: ns-pool\n";
    yaml += &service_yaml("other", "named", 80, "TCP", named);
    let translation = Translator::default().translate(&cluster(&yaml)).clone();
    assert_eq!(
        vips(&translation),
        [
            ("blue-ns/blue".to_owned(), addresses(&["10.0.1.0"])),
            ("other/elsewhere".to_owned(), addresses(&["10.0.3.0"])),
            // Both reserved pools admit it: the lower priority number wins.
            ("test-ns/labelled".to_owned(), addresses(&["10.0.2.0"])),
            ("test-ns/plain".to_owned(), addresses(&["10.0.1.1"])),
        ]
    );
    assert_eq!(
        skipped(&translation),
        [
            "Service other/intruder: pool ns-pool is reserved for other namespaces (serviceAllocation)",
            "Service other/named: no IPv4 VIP: pool ns-pool is reserved for other namespaces (serviceAllocation)",
        ]
    );
}

/// A pool reserved for a namespace admits each sharer of an address by its
/// own namespace: none reaches it through a sharer the pool admits, and an
/// admitted one is not refused for a sharer that is not, whatever the name
/// order. A requested address is admitted again every round: a Service its
/// pool no longer admits is refused by the running agent as by a restarted
/// one.
#[test]
fn a_reserved_pool_admits_each_sharer_by_its_own_namespace() {
    let asks = "  annotations:\n    metallb.universe.tf/loadBalancerIPs: 10.0.1.9\n    \
                metallb.io/allow-shared-ip: k\n";
    let refused = "pool ns-pool is reserved for other namespaces (serviceAllocation)";
    for intruder in ["zz", "other"] {
        let mut yaml = reserved_pools();
        yaml += &service_yaml("test-ns", "a", 80, "TCP", asks);
        yaml += &service_yaml(intruder, "b", 443, "TCP", asks);
        let translation = Translator::default().translate(&cluster(&yaml)).clone();
        assert_eq!(
            vips(&translation),
            [("test-ns/a".to_owned(), addresses(&["10.0.1.9"]))],
            "{intruder}"
        );
        assert_eq!(
            skipped(&translation),
            [format!("Service {intruder}/b: {refused}")],
            "{intruder}"
        );
    }

    // A holder its pool no longer admits gives the address up to a sharer
    // it admits, which both request with no key (so share only while both
    // may have it).
    let no_key = "  annotations:\n    metallb.universe.tf/loadBalancerIPs: 10.0.1.9\n";
    let mut running = Translator::default();
    let yaml = reserved_pools() + &service_yaml("test-ns", "a", 80, "TCP", no_key);
    assert_eq!(vips(running.translate(&cluster(&yaml))).len(), 1);
    let yaml = yaml.replace("    - test-ns\n", "    - another-ns\n")
        + &service_yaml("another-ns", "b", 443, "TCP", no_key);
    let translation = running.translate(&cluster(&yaml)).clone();
    let fresh = Translator::default().translate(&cluster(&yaml)).clone();
    assert_eq!(vips(&translation), vips(&fresh));
    assert_eq!(
        vips(&translation),
        [("another-ns/b".to_owned(), addresses(&["10.0.1.9"]))]
    );

    let mut running = Translator::default();
    let yaml = reserved_pools() + &service_yaml("test-ns", "a", 80, "TCP", asks);
    assert_eq!(vips(running.translate(&cluster(&yaml))).len(), 1);
    let elsewhere = yaml.replace("    - test-ns\n", "    - another-ns\n");
    let translation = running.translate(&cluster(&elsewhere)).clone();
    let fresh = Translator::default()
        .translate(&cluster(&elsewhere))
        .clone();
    assert_eq!(vips(&translation), vips(&fresh));
    assert_eq!(vips(&translation), []);
    assert_eq!(
        skipped(&translation),
        [format!("Service test-ns/a: {refused}")]
    );
}

#[test]
fn services_with_one_sharing_key_share_an_address_on_different_ports() {
    let mut yaml = [ip_address_pool(
        "p",
        "
  addresses:
  - 192.168.1.0/30
",
    )]
    .concat();
    let key =
        |key: &str| format!("  annotations:\n    metallb.universe.tf/allow-shared-ip: {key}\n");
    yaml += &service_yaml("dns", "tcp", 53, "TCP", &key("dns"));
    yaml += &service_yaml("dns", "udp", 53, "UDP", &key("dns"));
    // Same key, same port: not on the same address.
    yaml += &service_yaml("dns", "udp2", 53, "UDP", &key("dns"));
    // Another key, or none: an address of its own.
    yaml += &service_yaml("web", "other-key", 80, "TCP", &key("web"));
    yaml += &service_yaml("web", "no-key", 443, "TCP", "");
    let new_spelling = "  annotations:\n    metallb.io/allow-shared-ip: web\n";
    yaml += &service_yaml("web", "z", 8080, "TCP", new_spelling);
    let translation = Translator::default().translate(&cluster(&yaml)).clone();
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    assert_eq!(
        vips(&translation),
        [
            ("dns/tcp".to_owned(), addresses(&["192.168.1.0"])),
            ("dns/udp".to_owned(), addresses(&["192.168.1.0"])),
            ("dns/udp2".to_owned(), addresses(&["192.168.1.1"])),
            ("web/no-key".to_owned(), addresses(&["192.168.1.2"])),
            ("web/other-key".to_owned(), addresses(&["192.168.1.3"])),
            ("web/z".to_owned(), addresses(&["192.168.1.3"])),
        ]
    );
}

#[test]
fn sharing_with_policy_local_needs_the_same_selector() {
    let pools = [ip_address_pool(
        "p",
        "
  addresses:
  - 192.168.1.0/30
",
    )]
    .concat();
    let key = "  annotations:\n    metallb.io/allow-shared-ip: k\n";
    let yaml = [
        pools.to_owned(),
        service_yaml("ns", "a", 53, "TCP", key),
        service_yaml("ns", "b", 53, "UDP", key),
        service_yaml("ns", "c", 54, "UDP", key),
    ]
    .concat();
    let mut objects = cluster(&yaml);
    let selector = |app: &str| [("app".to_owned(), app.to_owned())].into();
    for (index, app) in [(0, "dns"), (1, "dns"), (2, "other")] {
        let mut service = fixtures::local((*objects.services[index]).clone());
        service.spec.as_mut().unwrap().selector = Some(selector(app));
        objects.services[index] = Arc::new(service);
    }
    let translation = Translator::default().translate(&objects).clone();
    assert_eq!(
        vips(&translation),
        [
            ("ns/a".to_owned(), addresses(&["192.168.1.0"])),
            ("ns/b".to_owned(), addresses(&["192.168.1.0"])),
            ("ns/c".to_owned(), addresses(&["192.168.1.1"])),
        ]
    );
}

#[test]
fn invalid_pools_are_skipped_by_name_and_field_and_the_rest_serve() {
    let mut yaml = [
        ip_address_pool(
            "a-good",
            "
  addresses:
  - 10.0.0.0/24
",
        ),
        ip_address_pool(
            "b-overlapping",
            "
  addresses:
  - 10.0.0.128/25
",
        ),
        ip_address_pool(
            "c-bad-cidr",
            "
  addresses:
  - 10.1.0.0/33
",
        ),
        ip_address_pool(
            "d-bad-selector",
            "
  addresses:
  - 10.2.0.0/24
  serviceAllocation:
    serviceSelectors:
    - matchExpressions:
      - key: app
        operator: In
",
        ),
        ip_address_pool(
            "e-empty",
            "
  autoAssign: true
",
        ),
        // MetalLB's pools are namespaced; lb's are named alone.
        ip_address_pool(
            "a-good",
            "
  addresses:
  - 10.9.0.0/24
",
        )
        .replace("namespace: metallb-system", "namespace: other"),
    ]
    .concat();
    yaml += &service_yaml("default", "web", 80, "TCP", "");
    let named = "  annotations:\n    metallb.io/address-pool: c-bad-cidr\n";
    yaml += &service_yaml("default", "named", 80, "TCP", named);
    let translation = Translator::default().translate(&cluster(&yaml)).clone();
    assert_eq!(
        vips(&translation),
        [("default/web".to_owned(), addresses(&["10.0.0.0"]))]
    );
    let skipped = skipped(&translation);
    let want = [
        "IPAddressPool other/a-good: another IPAddressPool is named a-good (metallb-system/a-good)",
        "IPAddressPool metallb-system/b-overlapping: spec.addresses overlap those of IPAddressPool a-good",
        "IPAddressPool metallb-system/c-bad-cidr: spec.addresses: \"10.1.0.0/33\": invalid IP address syntax, expected a CIDR or FIRST-LAST",
        "IPAddressPool metallb-system/d-bad-selector: spec.serviceAllocation.serviceSelectors[0]: matchExpressions[0]: operator In needs values",
        "IPAddressPool metallb-system/e-empty: spec.addresses is empty",
        "Service default/named: no IPv4 VIP: no VIP pool named \"c-bad-cidr\"",
    ];
    assert_eq!(skipped, want);
}

/// Of two overlapping pools the newer is skipped, whatever the names: a
/// pool added by mistake over one in use does not take its Services'
/// addresses.
#[test]
fn of_overlapping_pools_the_newer_is_skipped() {
    let created = |yaml: String, at: &str| {
        yaml.replace(
            "  namespace: metallb-system\n",
            &format!("  namespace: metallb-system\n  creationTimestamp: \"{at}\"\n"),
        )
    };
    let mut yaml = [
        created(
            ip_address_pool("prod", "\n  addresses:\n  - 10.0.0.0/24\n"),
            "2026-01-01T00:00:00Z",
        ),
        created(
            ip_address_pool("lab", "\n  addresses:\n  - 10.0.0.0/28\n"),
            "2026-06-01T00:00:00Z",
        ),
    ]
    .concat();
    // Pools of one rank are still tried by name: "a-spare", the newest,
    // before "prod".
    yaml += &created(
        ip_address_pool("a-spare", "\n  addresses:\n  - 10.5.0.0/24\n"),
        "2026-07-01T00:00:00Z",
    );
    yaml += &service_yaml("default", "web", 80, "TCP", "");
    let pinned = "  annotations:\n    metallb.io/address-pool: prod\n";
    yaml += &service_yaml("default", "prod-web", 80, "TCP", pinned);
    let translation = Translator::default().translate(&cluster(&yaml)).clone();
    assert_eq!(
        vips(&translation),
        [
            ("default/prod-web".to_owned(), addresses(&["10.0.0.0"])),
            ("default/web".to_owned(), addresses(&["10.5.0.0"])),
        ]
    );
    assert_eq!(translation.vip_pools[&ip::<IpAddr>("10.0.0.0")], "prod");
    assert_eq!(
        skipped(&translation),
        ["IPAddressPool metallb-system/lab: spec.addresses overlap those of IPAddressPool prod"]
    );
}

#[test]
fn spellings_of_one_setting_must_agree() {
    let both = "  annotations:\n    lb.dev/pool: a\n    metallb.universe.tf/address-pool: b\n";
    let same =
        "  annotations:\n    metallb.io/address-pool: a\n    metallb.universe.tf/address-pool: a\n";
    let yaml = [
        first_pool().replace("first-pool", "a"),
        service_yaml("ns", "both", 80, "TCP", both),
        service_yaml("ns", "same", 80, "TCP", same),
    ]
    .concat();
    let translation = Translator::default().translate(&cluster(&yaml)).clone();
    assert_eq!(
        vips(&translation),
        [("ns/same".to_owned(), addresses(&["192.168.10.0"]))]
    );
    assert_eq!(
        skipped(&translation),
        [
            "Service ns/both: annotations lb.dev/pool=\"a\" and metallb.universe.tf/address-pool=\"b\" disagree"
        ]
    );
}

#[test]
fn without_ip_address_pools_the_flags_pools_serve_again() {
    let mut translator = pool();
    let yaml = [first_pool(), service_yaml("ns", "web", 80, "TCP", "")].concat();
    let mut objects = cluster(&yaml);
    assert_eq!(
        translator.translate(&objects).vips["ns/web"],
        addresses(&["192.168.10.0"])
    );
    objects.metallb.pools.clear();
    let translation = translator.translate(&objects);
    assert_eq!(translation.vips["ns/web"], addresses(&["198.51.100.1"]));
    // Given up for the new one: the status writer rewrites it.
    assert_eq!(
        translation.released,
        [("ns/web".to_owned(), addresses(&["192.168.10.0"])[0])]
    );
}
