//! BGPPeers as MetalLB's documentation writes them ("Configuration",
//! "Advanced BGP configuration"), and the invalid ones, each skipped by name
//! and field while the others still make sessions.

use std::path::Path;

use super::*;

fn objects(yaml: &str) -> MetallbObjects {
    let loaded = crate::k8s::load_bytes(Path::new("test"), yaml.as_bytes());
    assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
    loaded.objects.metallb
}

/// The one session of `peer` (a BGPPeer spec in YAML) among `others`.
fn peer_with(spec: &str, others: &str) -> Result<Session, String> {
    let yaml = format!(
        "apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {{name: sample, namespace: metallb-system}}
spec: {spec}
---
{others}"
    );
    let (mut sessions, skipped) = sessions(&objects(&yaml));
    match skipped.as_slice() {
        [] => Ok(sessions.remove(0)),
        [skipped] => {
            assert_eq!(
                (skipped.kind, skipped.name.as_str()),
                ("BGPPeer", "metallb-system/sample")
            );
            Err(skipped.reason.clone())
        }
        more => panic!("{more:?}"),
    }
}

fn peer(spec: &str) -> Result<Session, String> {
    peer_with(spec, "")
}

const SECRET: &str = "apiVersion: v1
kind: Secret
metadata: {name: bgp-secret, namespace: metallb-system}
type: kubernetes.io/basic-auth
stringData: {password: mypassword}";

const FULL1: &str = "apiVersion: metallb.io/v1beta1
kind: BFDProfile
metadata: {name: full1, namespace: metallb-system}
spec:
  receiveInterval: 380
  transmitInterval: 270
  echoInterval: 62
  echoMode: true
  passiveMode: true
  minimumTtl: 254
  detectMultiplier: 37";

#[test]
fn the_documented_peer_gets_metallb_defaults() {
    let session = peer("{myASN: 64500, peerASN: 64501, peerAddress: 10.0.0.1}").unwrap();
    assert_eq!(
        session,
        Session::with_metallb_defaults("sample", "10.0.0.1", 64501, 64500)
    );
}

#[test]
fn every_documented_setting_is_carried() {
    let session = peer_with(
        "{myASN: 64512, peerASN: 64512, peerAddress: 172.30.0.3, peerPort: 1790, \
         sourceAddress: 172.30.0.2, holdTime: 1m30s, keepaliveTime: 30s, connectTime: 1m, \
         routerID: 10.10.10.10, bfdProfile: full1, ebgpMultiHop: true, passwordSecret: {name: bgp-secret}}",
        &format!("{SECRET}\n---\n{FULL1}"),
    )
    .unwrap();
    assert_eq!(session.port, 1790);
    assert_eq!(session.source_address, Some("172.30.0.2".parse().unwrap()));
    assert_eq!((session.hold_time, session.keepalive_time), (90, Some(30)));
    assert_eq!(session.connect_time, 60);
    assert_eq!(session.router_id, Some(Ipv4Addr::new(10, 10, 10, 10)));
    assert_eq!(session.password.as_deref(), Some("mypassword"));
    assert!(session.multihop);
    assert_eq!(
        session.bfd,
        Some(Bfd {
            receive_interval: Duration::from_millis(380),
            transmit_interval: Duration::from_millis(270),
            multiplier: 37,
            passive: true,
        })
    );
}

#[test]
fn a_bfd_profile_without_settings_has_metallb_defaults_and_dynamic_asns_map() {
    let profile = "apiVersion: metallb.io/v1beta1
kind: BFDProfile
metadata: {name: plain, namespace: metallb-system}";
    let session = peer_with(
        "{myASN: 64512, dynamicASN: external, peerAddress: '2001:db8::1', bfdProfile: plain, \
         password: inline}",
        profile,
    )
    .unwrap();
    assert_eq!(session.peer_as, PeerAs::External);
    assert_eq!(session.password.as_deref(), Some("inline"));
    assert_eq!(
        session.bfd,
        Some(Bfd::symmetric(Duration::from_millis(300), 3))
    );
    let internal = peer("{myASN: 64512, dynamicASN: internal, peerAddress: 10.0.0.1}");
    assert_eq!(internal.unwrap().peer_as, PeerAs::Internal);
}

#[test]
fn invalid_peers_are_skipped_naming_the_field() {
    let secret_of_type = |kind: &str| SECRET.replace("kubernetes.io/basic-auth", kind);
    let cases: &[(&str, &str, &str)] = &[
        ("{myASN: 64512, peerAddress: 10.0.0.1}", "", "no AS"),
        (
            "{myASN: 64512, peerASN: 1, dynamicASN: external, peerAddress: 10.0.0.1}",
            "",
            "spec.peerASN and spec.dynamicASN",
        ),
        (
            "{myASN: 64512, dynamicASN: sideways, peerAddress: 10.0.0.1}",
            "",
            "spec.dynamicASN",
        ),
        ("{peerASN: 64500, peerAddress: 10.0.0.1}", "", "spec.myASN"),
        (
            "{myASN: 1, peerASN: 2, peerAddress: router}",
            "",
            "spec.peerAddress",
        ),
        ("{myASN: 1, peerASN: 2}", "", "spec.peerAddress"),
        (
            "{myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, sourceAddress: '::1'}",
            "",
            "spec.sourceAddress",
        ),
        (
            "{myASN: 1, peerASN: 2, peerAddress: 'fe80::1'}",
            "",
            "spec.peerAddress: fe80::1 is link-local",
        ),
        (
            "{myASN: 1, peerASN: 2, peerAddress: '2001:db8::1', sourceAddress: 'fe80::2'}",
            "",
            "spec.sourceAddress: fe80::2 is link-local",
        ),
        (
            "{myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, bfdProfile: nope}",
            "",
            "spec.bfdProfile: no BFDProfile named \"nope\"",
        ),
        (
            "{myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, bfdProfile: full1, ebgpMultiHop: true}",
            FULL1,
            "needs spec.sourceAddress",
        ),
        (
            "{myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, passwordSecret: {name: nope}}",
            "",
            "spec.passwordSecret: no Secret metallb-system/nope",
        ),
        (
            "{myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, passwordSecret: {name: bgp-secret}}",
            &secret_of_type("Opaque"),
            "of type Opaque",
        ),
        (
            "{myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, passwordSecret: {name: bgp-secret}}",
            &SECRET.replace("password: mypassword", "username: admin"),
            "no key \"password\"",
        ),
        (
            "{myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, password: x, passwordSecret: {name: bgp-secret}}",
            SECRET,
            "spec.password and spec.passwordSecret",
        ),
        (
            "{myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, password: 'say \"hi\"'}",
            "",
            "password: empty, or with a '\"'",
        ),
        (
            "{myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, holdTime: ninety}",
            "",
            "spec.holdTime",
        ),
        (
            "{myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, holdTime: 2s}",
            "",
            "spec.holdTime: 2s: 0 or at least 3s",
        ),
        (
            "{myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, holdTime: 1500ms}",
            "",
            "whole number of seconds",
        ),
        (
            "{myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, holdTime: 30s, keepaliveTime: 31s}",
            "",
            "spec.keepaliveTime: 31s is longer than the hold time",
        ),
        (
            "{myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, connectTime: 0s}",
            "",
            "spec.connectTime: 0s: at least 1s",
        ),
        (
            "{myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, connectTime: 20h}",
            "",
            "spec.connectTime: \"20h\" is longer than 65535s",
        ),
        (
            "{myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, routerID: '::1'}",
            "",
            "spec.routerID",
        ),
        (
            "{myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, vrf: red}",
            "",
            "spec.vrf",
        ),
    ];
    for (spec, others, reason) in cases {
        let error = peer_with(spec, others).unwrap_err();
        assert!(error.contains(reason), "{spec}: {error}");
    }
    assert!(peer("{myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, holdTime: '0'}").is_ok());
}

#[test]
fn a_bad_peer_leaves_the_others_and_a_second_session_to_one_address_is_refused() {
    let yaml = "apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: a, namespace: metallb-system}
spec: {myASN: 64512, peerASN: 64500, peerAddress: 10.0.0.1}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: b, namespace: metallb-system}
spec: {myASN: 64512, peerASN: 64500, peerAddress: 10.0.0.1, peerPort: 1790}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: c, namespace: metallb-system}
spec: {myASN: 64512, peerAddress: 10.0.0.3}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: d, namespace: metallb-system}
spec: {myASN: 64513, peerASN: 64500, peerAddress: 10.0.0.4}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: e, namespace: metallb-system}
spec: {myASN: 64512, peerASN: 64500, peerAddress: 'fe80::1'}";
    let yaml = format!(
        "{yaml}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {{name: vips4, namespace: metallb-system}}
spec: {{myASN: 64512, peerASN: 64500, peerAddress: 10.0.0.6}}"
    );
    let (sessions, skipped) = sessions(&objects(&yaml));
    let names: Vec<(&str, u32)> = sessions
        .iter()
        .map(|s| (s.name.as_str(), s.local_as))
        .collect();
    assert_eq!(names, [("a", 64512), ("d", 64513)]);
    let skipped: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    assert_eq!(
        skipped,
        [
            "BGPPeer metallb-system/b: spec.peerAddress: BGPPeer a has this peer already",
            "BGPPeer metallb-system/c: no AS: set spec.peerASN (or spec.dynamicASN)",
            "BGPPeer metallb-system/e: spec.peerAddress: fe80::1 is link-local: BIRD needs an \
             interface for it, which lb does not give; use a global or unique local address",
            "BGPPeer metallb-system/vips4: metadata.name \"vips4\": BIRD has a protocol or \
             filter of lb's by that name; rename the BGPPeer",
        ]
    );
}
