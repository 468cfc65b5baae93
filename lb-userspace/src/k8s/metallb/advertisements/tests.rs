//! The plans MetalLB's documented configurations (its "L2 configuration"
//! and "Advanced BGP configuration" pages) make, written as manifests.

use std::path::Path;

use super::*;
use crate::announce::{Announce, plan::VipAnnouncement};

const POOLS: &str = "
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: first-pool, namespace: metallb-system}
spec: {addresses: [192.168.1.240-192.168.1.250]}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: second-pool, namespace: metallb-system, labels: {example: 'true'}}
spec: {addresses: [192.168.10.0/24, 'fc00:f853:0ccd:e799::/64']}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: third-pool, namespace: metallb-system, labels: {example: 'false', zone: a}}
spec: {addresses: [192.168.20.0/24]}
";

const FIRST: &str = "192.168.1.240";
const SECOND: &str = "192.168.10.1";
const SECOND6: &str = "fc00:f853:ccd:e799::1";
const THIRD: &str = "192.168.20.1";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// The plan of `advertisements` (YAML) over the three pools, with one VIP in
/// each (two in the second, one per family).
fn advertised(advertisements: &str) -> Advertised {
    let text = format!("{POOLS}---\n{advertisements}");
    let loaded = crate::k8s::load_bytes(Path::new("test"), text.as_bytes());
    assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
    let vip_pools = [
        (FIRST, "first-pool"),
        (SECOND, "second-pool"),
        (SECOND6, "second-pool"),
        (THIRD, "third-pool"),
    ]
    .into_iter()
    .map(|(vip, pool)| (ip(vip), pool.to_owned()))
    .collect();
    let (in_use, _) = crate::k8s::metallb::pools::pools(&loaded.objects.metallb.pools);
    plan(&loaded.objects.metallb, &in_use, &vip_pools)
}

fn plan_of(advertisements: &str) -> AnnouncementPlan {
    let advertised = advertised(advertisements);
    assert_eq!(advertised.skipped, []);
    advertised.plan.expect("a plan")
}

fn l2(interfaces: &[&str]) -> VipAnnouncement {
    VipAnnouncement {
        l2: Some(L2Announcement {
            interfaces: interfaces.iter().map(ToString::to_string).collect(),
        }),
        bgp: Vec::new(),
    }
}

fn l2_vips(plan: &AnnouncementPlan) -> Vec<IpAddr> {
    let vips = plan.vips.iter().filter(|(_, a)| a.l2.is_some());
    vips.map(|(vip, _)| *vip).collect()
}

#[test]
fn an_empty_l2_advertisement_announces_every_pool_on_every_interface() {
    let plan = plan_of(
        "apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: example, namespace: metallb-system}",
    );
    assert_eq!(plan.vips.len(), 4);
    assert!(plan.vips.values().all(|a| *a == l2(&[])), "{plan:?}");
}

#[test]
fn an_l2_advertisement_of_named_pools_announces_only_theirs() {
    let plan = plan_of(
        "apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: example, namespace: metallb-system}
spec: {ipAddressPools: [first-pool]}",
    );
    assert_eq!(plan.vips, BTreeMap::from([(ip(FIRST), l2(&[]))]));
}

#[test]
fn pool_selectors_match_the_pools_labels() {
    let plan = plan_of(
        "apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: example, namespace: metallb-system}
spec:
  ipAddressPoolSelectors:
  - matchExpressions:
    - {key: example, operator: In, values: ['true']}",
    );
    assert_eq!(l2_vips(&plan), [ip(SECOND), ip(SECOND6)]);
    // Names and selectors add up.
    let plan = plan_of(
        "apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: example, namespace: metallb-system}
spec:
  ipAddressPools: [first-pool]
  ipAddressPoolSelectors:
  - matchLabels: {zone: a}",
    );
    assert_eq!(l2_vips(&plan), [ip(FIRST), ip(THIRD)]);
}

#[test]
fn interfaces_restrict_and_several_advertisements_add_up() {
    let plan = plan_of(
        "apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: l2-eth, namespace: metallb-system}
spec: {ipAddressPools: [third-pool, first-pool], interfaces: [eth0, eth1]}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: l2-eth2, namespace: metallb-system}
spec: {ipAddressPools: [third-pool], interfaces: [eth2]}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: l2-all, namespace: metallb-system}
spec: {ipAddressPools: [second-pool]}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: l2-second-eth0, namespace: metallb-system}
spec: {ipAddressPools: [second-pool], interfaces: [eth0]}",
    );
    assert_eq!(plan.vips[&ip(FIRST)], l2(&["eth0", "eth1"]));
    assert_eq!(plan.vips[&ip(THIRD)], l2(&["eth0", "eth1", "eth2"]));
    // An advertisement on every interface covers one restricted to some.
    assert_eq!(plan.vips[&ip(SECOND)], l2(&[]));
}

#[test]
fn bgp_advertisements_give_one_route_each_with_their_attributes() {
    let plan = plan_of(
        "apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: local, namespace: metallb-system}
spec:
  ipAddressPools: [second-pool]
  aggregationLength: 32
  localPref: 100
  communities: [no-advertise, 'large:64512:1:2']
---
apiVersion: metallb.io/v1beta1
kind: Community
metadata: {name: communities, namespace: metallb-system}
spec:
  communities:
  - {name: no-advertise, value: '65535:65282'}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: local-again, namespace: metallb-system}
spec:
  ipAddressPoolSelectors: [{matchLabels: {example: 'true'}}]
  localPref: 100
  communities: ['large:64512:1:2', '65535:65282']
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: external, namespace: metallb-system}
spec:
  ipAddressPools: [second-pool]
  aggregationLength: 24
  aggregationLengthV6: 64
  peers: [peer-a]",
    );
    let routes = |vip: &str| plan.vips[&ip(vip)].bgp.clone();
    let local = |prefix_len| BgpAnnouncement {
        prefix_len,
        local_pref: Some(100),
        // The alias resolved through the Community object.
        communities: BTreeSet::from(["65535:65282".to_owned(), "large:64512:1:2".to_owned()]),
        peers: None,
    };
    let external = |prefix_len| BgpAnnouncement {
        prefix_len,
        local_pref: None,
        communities: BTreeSet::new(),
        peers: Some(BTreeSet::from(["peer-a".to_owned()])),
    };
    // The same route twice (local, local-again) is announced once.
    assert_eq!(routes(SECOND), [external(24), local(32)]);
    assert_eq!(routes(SECOND6), [external(64), local(128)]);
    assert!(plan.vips[&ip(SECOND)].l2.is_none());
    // Pools no advertisement selects are not announced at all.
    assert_eq!(plan.vips.len(), 2);
}

#[test]
fn a_pool_can_be_announced_both_ways() {
    let plan = plan_of(
        "apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: all-bgp, namespace: metallb-system}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: first-l2, namespace: metallb-system}
spec: {ipAddressPools: [first-pool]}",
    );
    let first = &plan.vips[&ip(FIRST)];
    assert_eq!(first.l2, Some(L2Announcement::default()));
    assert_eq!(first.bgp, [BgpAnnouncement::host_route(ip(FIRST))]);
    assert_eq!(plan.vips[&ip(THIRD)].l2, None);
}

#[test]
fn invalid_advertisements_are_skipped_with_the_field_and_the_others_count() {
    let advertised = advertised(
        "apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: typo, namespace: metallb-system}
spec: {ipAddressPools: [first-pool, frist-pool]}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: bad-selector, namespace: metallb-system}
spec:
  ipAddressPoolSelectors:
  - matchExpressions: [{key: example, operator: In}]
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: too-long, namespace: metallb-system}
spec: {aggregationLength: 33}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: too-long6, namespace: metallb-system}
spec: {aggregationLengthV6: -1}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: too-short, namespace: metallb-system}
spec: {aggregationLength: 24, ipAddressPools: [first-pool]}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: no-alias, namespace: metallb-system}
spec: {communities: ['65535:65281', NO_EXPORT]}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: good, namespace: metallb-system}
spec: {ipAddressPools: [third-pool]}",
    );
    let reasons: Vec<String> = advertised.skipped.iter().map(ToString::to_string).collect();
    assert_eq!(
        reasons,
        [
            "L2Advertisement metallb-system/typo: spec.ipAddressPools[1]: no IPAddressPool named \"frist-pool\"",
            "L2Advertisement metallb-system/bad-selector: spec.ipAddressPoolSelectors[0]: matchExpressions[0]: operator In needs values",
            "BGPAdvertisement metallb-system/too-long: spec.aggregationLength: 33 is not 0 to 32",
            "BGPAdvertisement metallb-system/too-long6: spec.aggregationLengthV6: -1 is not 0 to 128",
            "BGPAdvertisement metallb-system/too-short: spec.aggregationLength: 24 is shorter than \
             /32, a block of IPAddressPool first-pool's addresses: the route would cover \
             addresses outside it",
            "BGPAdvertisement metallb-system/no-alias: spec.communities[1]: \"NO_EXPORT\" is neither a \
             community value (65535:65282, large:1:2:3) nor the name of one in a Community object",
        ]
    );
    let plan = advertised.plan.expect("a plan from the good one");
    assert_eq!(plan.vips, BTreeMap::from([(ip(THIRD), l2(&[]))]));
}

#[test]
fn without_advertisements_the_flag_decides() {
    let advertised = advertised("");
    assert_eq!(advertised, Advertised::default());
    let vips = [ip(FIRST), ip(SECOND6)];
    let arp = AnnouncementPlan::of_flag(Announce::Arp, vips);
    assert!(arp.vips.values().all(|a| *a == l2(&[])) && arp.vips.len() == 2);
    let bgp = AnnouncementPlan::of_flag(Announce::Bgp, vips);
    let lengths: Vec<u8> = bgp.vips.values().map(|a| a.bgp[0].prefix_len).collect();
    assert_eq!(lengths, [32, 128]);
    assert!(
        bgp.vips
            .values()
            .all(|a| a.l2.is_none() && a.bgp.len() == 1)
    );
    assert_eq!(
        AnnouncementPlan::of_flag(Announce::None, vips).vips.len(),
        0
    );
}
