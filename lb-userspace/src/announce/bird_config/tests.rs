//! BIRD's files for the flags' sessions and for MetalLB's documented BGP
//! configurations; each checked by BIRD's own parser too.

use std::{
    net::Ipv4Addr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use super::*;
use crate::announce::bgp::{Bfd, PeerAs};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A session with MetalLB's defaults.
fn session(name: &str, address: &str, peer_as: u32) -> Session {
    Session::with_metallb_defaults(name, address, peer_as, 64512)
}

fn announcement(
    prefix_len: u8,
    local_pref: Option<u32>,
    communities: &[&str],
    peers: Option<&[&str]>,
) -> BgpAnnouncement {
    BgpAnnouncement {
        prefix_len,
        local_pref,
        communities: communities.iter().map(|c| (*c).to_owned()).collect(),
        peers: peers.map(|names| names.iter().map(|n| (*n).to_owned()).collect()),
    }
}

/// BIRD parses the three files (`bird -p`).
fn bird_accepts(settings: &BgpSettings, exports: &Exports) {
    if let Err(refused) = bird_parses(settings, exports) {
        panic!("{refused}");
    }
}

/// What `bird -p` says of the configuration of `settings` and `exports`.
fn bird_parses(settings: &BgpSettings, exports: &Exports) -> Result<(), String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "lb-bird-config-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("routes.conf"), routes(&exports.prefixes())).unwrap();
    std::fs::write(dir.join("exports.conf"), super::exports(settings, exports)).unwrap();
    std::fs::write(dir.join("bird.conf"), bird_config(settings, &dir)).unwrap();
    let output = Command::new("bird")
        .arg("-p")
        .arg("-c")
        .arg(dir.join("bird.conf"))
        .output()
        .expect("bird (Debian package bird2) runs");
    let _ = std::fs::remove_dir_all(&dir);
    match output.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

#[test]
fn flag_sessions_have_bfd_and_every_vip() {
    let bfd = Some(Bfd::symmetric(Duration::from_millis(100), 3));
    let settings = BgpSettings {
        router_id: Some(Ipv4Addr::new(10, 1, 0, 2)),
        sessions: vec![
            Session {
                bfd,
                ..session("peer1", "10.1.0.1", 64500)
            },
            Session {
                bfd,
                ..session("peer2", "2001:db8:1::1", 64500)
            },
        ],
    };
    assert_eq!(
        bird_config(&settings, Path::new("/run/lb/x")),
        "# Written by lb agent, rewritten on every change: do not edit.\n\
         router id 10.1.0.2;\n\
         log \"/run/lb/x/bird.log\" all;\n\
         protocol device {}\n\
         protocol bfd lb_bfd {}\n\
         include \"/run/lb/x/routes.conf\";\n\
         include \"/run/lb/x/exports.conf\";\n\
         protocol bgp 'lb_peer1' { local as 64512; neighbor 10.1.0.1 port 179 as 64500; hold time 90; \
         connect delay time 1; connect retry time 5; error wait time 1, 60; \
         bfd { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; \
         ipv4 { import none; export filter 'lb_export_peer1'; next hop self; }; }\n\
         protocol bgp 'lb_peer2' { local as 64512; neighbor 2001:db8:1::1 port 179 as 64500; hold time 90; \
         connect delay time 1; connect retry time 5; error wait time 1, 60; \
         bfd { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; \
         ipv6 { import none; export filter 'lb_export_peer2'; next hop self; }; }\n"
    );
    let wanted = ["198.51.100.10", "2001:db8:ff::10"]
        .map(|vip| (ip(vip), vec![BgpAnnouncement::host_route(ip(vip))]))
        .into();
    let (exports, problems) = Exports::of(&wanted, &settings.sessions);
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(
        super::exports(&settings, &exports),
        "filter 'lb_export_peer1' { if net = 198.51.100.10/32 then { accept; } reject; }\n\
         filter 'lb_export_peer2' { if net = 2001:db8:ff::10/128 then { accept; } reject; }\n"
    );
    assert_eq!(
        routes(&exports.prefixes()),
        "protocol static lb_vips4 { ipv4; route 198.51.100.10/32 blackhole; }\n\
         protocol static lb_vips6 { ipv6; route 2001:db8:ff::10/128 blackhole; }\n"
    );
    assert!(
        !bird_config(
            &BgpSettings {
                sessions: vec![session("p", "10.1.0.1", 1)],
                ..settings.clone()
            },
            Path::new("d")
        )
        .contains("bfd")
    );
    bird_accepts(&settings, &exports);
}

#[test]
fn a_metallb_peer_keeps_its_own_settings() {
    let settings = BgpSettings {
        router_id: None,
        sessions: vec![
            Session {
                port: 1790,
                source_address: Some(ip("172.30.0.2")),
                hold_time: 30,
                keepalive_time: Some(10),
                connect_time: 30,
                router_id: Some(Ipv4Addr::new(10, 10, 10, 10)),
                password: Some("it's a \\ secret".to_owned()),
                multihop: true,
                bfd: Some(Bfd {
                    receive_interval: Duration::from_millis(380),
                    transmit_interval: Duration::from_millis(270),
                    multiplier: 37,
                    passive: true,
                }),
                ..session("peer-a.example", "172.30.0.3", 64500)
            },
            Session {
                peer_as: PeerAs::Internal,
                ..session("ibgp", "172.30.0.4", 0)
            },
        ],
    };
    let conf = bird_config(&settings, Path::new("/d"));
    assert!(
        conf.contains(
            "protocol bgp 'lb_peer-a.example' { local 172.30.0.2 as 64512; \
             neighbor 172.30.0.3 port 1790 as 64500; router id 10.10.10.10; hold time 30; \
             keepalive time 10; connect delay time 1; connect retry time 30; \
             error wait time 1, 60; password \"it's a \\ secret\"; multihop; \
             bfd { min rx interval 380 ms; min tx interval 270 ms; multiplier 37; passive on; }; \
             ipv4 { import none; export filter 'lb_export_peer-a.example'; next hop self; }; }"
        ),
        "{conf}"
    );
    assert!(
        conf.contains(
            "protocol bgp 'lb_ibgp' { local as 64512; neighbor 172.30.0.4 port 179 internal; \
             hold time 90; connect delay time 1; connect retry time 5; error wait time 1, 60; \
             direct; ipv4"
        ),
        "{conf}"
    );
    bird_accepts(&settings, &Exports::default());
}

/// MetalLB's "Advanced BGP configuration": one advertisement of each VIP
/// alone with a local preference and communities, one of an aggregate /24,
/// limited to a peer.
#[test]
fn aggregates_attributes_and_peers_as_the_advertisements_say() {
    let settings = BgpSettings {
        router_id: Some(Ipv4Addr::new(10, 0, 0, 2)),
        sessions: vec![
            session("peer1", "10.0.0.1", 64500),
            session("peer2", "10.0.0.3", 64501),
            session("peer6", "2001:db8::1", 64500),
        ],
    };
    let advertised = |vip: &str| {
        (
            ip(vip),
            vec![
                announcement(
                    32,
                    Some(100),
                    &["65535:65282", "large:64512:1:2"],
                    Some(&["peer1"]),
                ),
                announcement(24, None, &["64512:24"], Some(&["peer2"])),
            ],
        )
    };
    let wanted = [advertised("198.51.100.10"), advertised("198.51.100.11")].into();
    let (exports, problems) = Exports::of(&wanted, &settings.sessions);
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(
        super::exports(&settings, &exports),
        "filter 'lb_export_peer1' { \
         if net = 198.51.100.10/32 then { bgp_local_pref = 100; bgp_community.add((65535,65282)); \
         bgp_large_community.add((64512,1,2)); accept; } \
         if net = 198.51.100.11/32 then { bgp_local_pref = 100; bgp_community.add((65535,65282)); \
         bgp_large_community.add((64512,1,2)); accept; } reject; }\n\
         filter 'lb_export_peer2' { if net = 198.51.100.0/24 then { bgp_community.add((64512,24)); \
         accept; } reject; }\n\
         filter 'lb_export_peer6' { reject; }\n"
    );
    // One aggregate for both VIPs.
    assert_eq!(
        routes(&exports.prefixes()),
        "protocol static lb_vips4 { ipv4; route 198.51.100.0/24 blackhole; \
         route 198.51.100.10/32 blackhole; route 198.51.100.11/32 blackhole; }\n\
         protocol static lb_vips6 { ipv6; }\n"
    );
    bird_accepts(&settings, &exports);

    // The aggregate stays while one VIP needs it.
    let one = [advertised("198.51.100.11")].into();
    let (exports, _) = Exports::of(&one, &settings.sessions);
    let prefixes: Vec<String> = exports.prefixes().iter().map(ToString::to_string).collect();
    assert_eq!(prefixes, ["198.51.100.0/24", "198.51.100.11/32"]);
}

#[test]
fn routes_asked_for_twice_merge_and_bad_communities_are_left_out() {
    let sessions = [session("peer1", "10.0.0.1", 64500)];
    let wanted = [
        (
            ip("198.51.100.10"),
            vec![
                announcement(24, Some(50), &["1:1"], None),
                announcement(24, Some(200), &["1:2"], None),
            ],
        ),
        (
            ip("198.51.100.99"),
            vec![announcement(24, None, &["NO_ADVERTISE"], None)],
        ),
    ]
    .into();
    let (exports, problems) = Exports::of(&wanted, &sessions);
    assert_eq!(
        exports.sessions["peer1"][&Prefix::covering(ip("198.51.100.10"), 24)],
        Attributes {
            local_pref: Some(200),
            communities: ["1:1", "1:2"].map(|c| c.parse().unwrap()).into(),
        }
    );
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].starts_with("198.51.100.99: not announced over BGP: \"NO_ADVERTISE\""),
        "{problems:?}"
    );
}

/// A VIP is carried when some session announces a prefix covering it: not
/// an IPv6 VIP with IPv4 peers only, nor one whose advertisement names a
/// peer there is none of.
#[test]
fn a_vip_is_carried_only_by_a_session_that_announces_it() {
    let sessions = [session("peer1", "10.1.0.1", 64500)];
    let wanted = [
        ("198.51.100.10", announcement(24, None, &[], None)),
        ("2001:db8:ff::10", announcement(128, None, &[], None)),
        (
            "198.51.200.10",
            announcement(32, None, &[], Some(&["nobody"])),
        ),
    ]
    .map(|(vip, announcement)| (ip(vip), vec![announcement]))
    .into();
    let (exports, _) = Exports::of(&wanted, &sessions);
    let carried: Vec<bool> = wanted.keys().map(|vip| exports.carries(*vip)).collect();
    assert_eq!(carried, [true, false, false]);
    assert!(exports.carries(ip("198.51.100.99")), "in the /24 announced");
}

#[test]
fn prefixes_cover_their_vips() {
    let covering = |vip: &str, len| Prefix::covering(ip(vip), len).to_string();
    assert_eq!(covering("198.51.100.77", 24), "198.51.100.0/24");
    assert_eq!(covering("198.51.100.77", 32), "198.51.100.77/32");
    assert_eq!(covering("198.51.100.77", 0), "0.0.0.0/0");
    assert_eq!(covering("2001:db8:ff::10", 64), "2001:db8:ff::/64");
    assert_eq!(covering("2001:db8:ff::10", 128), "2001:db8:ff::10/128");
}

/// BGPPeer names up to Kubernetes' 253 characters: BIRD takes symbols of
/// 64 at most, and two long names that differ only at the end still get
/// names of their own.
#[test]
fn long_session_names_fit_bird() {
    let long = |last: char| format!("{}{last}", "peer.".repeat(50));
    let settings = BgpSettings {
        router_id: Some(Ipv4Addr::new(10, 1, 0, 2)),
        sessions: vec![
            session(&long('a'), "10.1.0.1", 64500),
            session(&long('b'), "10.1.0.3", 64500),
        ],
    };
    let names: Vec<String> = settings
        .sessions
        .iter()
        .flat_map(|s| [protocol_name(&s.name), export_filter(&s.name)])
        .collect();
    for name in &names {
        assert!(name.len() <= SYMBOL_MAX, "{name}");
    }
    assert_eq!(
        names
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        4,
        "{names:?}"
    );
    assert_eq!(protocol_name("peer1"), "lb_peer1", "short names stay whole");
    let wanted = [(
        ip("198.51.100.10"),
        vec![BgpAnnouncement::host_route(ip("198.51.100.10"))],
    )]
    .into();
    let (exports, _) = Exports::of(&wanted, &settings.sessions);
    bird_accepts(&settings, &exports);
}

/// BIRD needs a router id of its own even when every session has one: on
/// a host without an IPv4 address it exits, once started, without one.
#[test]
fn bird_takes_the_lowest_router_id_of_the_sessions_when_none_is_set() {
    let with_id = |name, address, id| Session {
        router_id: Some(id),
        ..session(name, address, 64500)
    };
    let mut settings = BgpSettings {
        router_id: None,
        sessions: vec![
            with_id("b", "2001:db8::1", Ipv4Addr::new(10, 10, 10, 20)),
            with_id("c", "2001:db8::2", Ipv4Addr::new(10, 10, 10, 10)),
            session("a", "2001:db8::3", 64500),
        ],
    };
    let global = |settings: &BgpSettings| {
        let conf = bird_config(settings, Path::new("/d"));
        let line = conf.lines().find(|line| line.starts_with("router id "));
        line.map(str::to_owned)
    };
    assert_eq!(global(&settings).as_deref(), Some("router id 10.10.10.10;"));
    bird_accepts(&settings, &Exports::default());

    settings.router_id = Some(Ipv4Addr::new(10, 1, 0, 2));
    assert_eq!(global(&settings).as_deref(), Some("router id 10.1.0.2;"));

    // Nothing to take it from: BIRD picks an IPv4 address of the host.
    settings.router_id = None;
    settings.sessions.retain(|s| s.router_id.is_none());
    assert_eq!(global(&settings), None);
}

/// A session named as one of lb's own protocols or filters would be would
/// make BIRD refuse the whole configuration; such names are told apart, so
/// that the BGPPeer is skipped, and no other is.
#[test]
fn session_names_that_are_lbs_own_are_told_apart() {
    let bfd = Some(Bfd::symmetric(Duration::from_millis(300), 3));
    let settings = |name: &str| BgpSettings {
        router_id: Some(Ipv4Addr::new(10, 1, 0, 2)),
        sessions: [("peer1", "10.1.0.10"), (name, "10.1.0.11")]
            .map(|(name, address)| Session {
                bfd,
                ..session(name, address, 64500)
            })
            .into(),
    };
    let wanted = [("198.51.100.10", "2001:db8:ff::10")]
        .into_iter()
        .flat_map(|(v4, v6)| [v4, v6])
        .map(|vip| (ip(vip), vec![BgpAnnouncement::host_route(ip(vip))]))
        .collect();
    for name in ["vips4", "vips6", "bfd", "export_peer1"] {
        assert!(session_name_taken(name), "{name}");
        let settings = settings(name);
        let (exports, _) = Exports::of(&wanted, &settings.sessions);
        let refused = bird_parses(&settings, &exports).expect_err(name);
        assert!(refused.contains("already defined"), "{name}: {refused}");
    }
    for name in ["peer2", "vips", "bfd-1", "exports"] {
        assert!(!session_name_taken(name), "{name}");
        let settings = settings(name);
        let (exports, _) = Exports::of(&wanted, &settings.sessions);
        bird_accepts(&settings, &exports);
    }
}
