//! Allocation from pools given by flags.

use super::*;

const V4: Family = Family::V4;

/// A Service in a namespace without labels, sharing nothing.
fn who(owner: &str) -> Claimant<'_> {
    Claimant {
        owner,
        service: ServiceIdentity {
            namespace: owner.split('/').next().unwrap(),
            namespace_labels: None,
            labels: None,
        },
        sharing: None,
    }
}
const V6: Family = Family::V6;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn pools(specs: &[&str]) -> Pools {
    Pools::from_flags(
        specs
            .iter()
            .map(|spec| Pool::parse(spec).unwrap())
            .collect(),
    )
    .unwrap()
}

#[test]
fn cidrs_skip_network_and_broadcast_except_in_tiny_prefixes() {
    let mut p = pools(&["a=198.51.100.0/29"]);
    let got: Vec<IpAddr> = (0..6)
        .map(|i| p.allocate(&who(&format!("ns/s{i}")), None, V4).unwrap())
        .collect();
    let want: Vec<IpAddr> = (1..=6).map(|i| ip(&format!("198.51.100.{i}"))).collect();
    assert_eq!(got, want);
    assert_eq!(
        p.allocate(&who("ns/s6"), None, V4),
        Err(PoolError::Exhausted {
            pool: "a".into(),
            family: V4
        })
    );

    let mut p = pools(&["a=198.51.100.6/31,198.51.100.9/32"]);
    let got: Vec<IpAddr> = ["ns/a", "ns/b", "ns/c"]
        .iter()
        .map(|owner| p.allocate(&who(owner), None, V4).unwrap())
        .collect();
    assert_eq!(
        got,
        [ip("198.51.100.6"), ip("198.51.100.7"), ip("198.51.100.9")]
    );

    // The very top of the address space must not overflow the search.
    let mut top = pools(&["top=255.255.255.254/31"]);
    assert_eq!(
        top.allocate(&who("a/a"), None, V4),
        Ok(ip("255.255.255.254"))
    );
    assert_eq!(
        top.allocate(&who("a/b"), None, V4),
        Ok(ip("255.255.255.255"))
    );
    assert!(matches!(
        top.allocate(&who("a/c"), None, V4),
        Err(PoolError::Exhausted { .. })
    ));
}

#[test]
fn ipv6_cidrs_skip_only_the_subnet_router_anycast_address() {
    let mut p = pools(&["a=2001:db8::/126"]);
    let got: Vec<IpAddr> = (0..3)
        .map(|i| p.allocate(&who(&format!("ns/s{i}")), None, V6).unwrap())
        .collect();
    assert_eq!(
        got,
        [ip("2001:db8::1"), ip("2001:db8::2"), ip("2001:db8::3")]
    );
    assert_eq!(
        p.allocate(&who("ns/s3"), None, V6).unwrap_err().to_string(),
        "VIP pool a has no free IPv6 address left"
    );

    // A /127 (RFC 6164) and a /128 have no anycast address to skip.
    let mut p = pools(&["a=2001:db8::6/127,2001:db8::9/128"]);
    let got: Vec<IpAddr> = ["ns/a", "ns/b", "ns/c"]
        .iter()
        .map(|owner| p.allocate(&who(owner), None, V6).unwrap())
        .collect();
    assert_eq!(
        got,
        [ip("2001:db8::6"), ip("2001:db8::7"), ip("2001:db8::9")]
    );

    let mut top = pools(&["top=ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127"]);
    for owner in ["a/a", "a/b"] {
        top.allocate(&who(owner), None, V6).unwrap();
    }
    assert!(matches!(
        top.allocate(&who("a/c"), None, V6),
        Err(PoolError::Exhausted { .. })
    ));
}

#[test]
fn dual_stack_pools_allocate_one_address_per_family() {
    let mut p = pools(&[
        "mixed=2001:db8::10-2001:db8::11,198.51.100.0/30",
        "v4=10.9.0.0/30",
    ]);
    assert_eq!(p.allocate(&who("ns/a"), None, V6), Ok(ip("2001:db8::10")));
    assert_eq!(p.allocate(&who("ns/a"), None, V4), Ok(ip("198.51.100.1")));
    // Sticky per family: both addresses stay the owner's.
    assert_eq!(p.allocate(&who("ns/a"), None, V6), Ok(ip("2001:db8::10")));
    assert_eq!(p.lookup("ns/a", V4), Some(ip("198.51.100.1")));
    assert_eq!(p.allocate(&who("ns/b"), None, V6), Ok(ip("2001:db8::11")));
    assert_eq!(
        p.allocate(&who("ns/c"), None, V6).unwrap_err().to_string(),
        "VIP pool mixed has no free IPv6 address left"
    );
    assert_eq!(
        p.allocate(&who("ns/c"), Some("v4"), V6),
        Err(PoolError::NoRange {
            pool: "v4".into(),
            family: V6
        })
    );
    let anyone = who("ns/x").service;
    assert!(p.candidates(None, &anyone).unwrap()[0].supplies(V6));
    assert!(!p.candidates(Some("v4"), &anyone).unwrap()[0].supplies(V6));
    // Giving up one family leaves the other.
    p.release_family("ns/a", V6);
    assert_eq!(p.lookup("ns/a", V6), None);
    assert_eq!(p.lookup("ns/a", V4), Some(ip("198.51.100.1")));
    assert_eq!(p.allocate(&who("ns/c"), None, V6), Ok(ip("2001:db8::10")));
    assert_eq!(
        Pool::parse("m=2001:db8::/127,10.0.0.0/31")
            .unwrap()
            .to_string(),
        "m (2001:db8::-2001:db8::1,10.0.0.0-10.0.0.1)"
    );
}

#[test]
fn ranges_and_named_pools() {
    let mut p = pools(&[
        "public=198.51.100.20-198.51.100.22,198.51.100.30-198.51.100.30",
        "internal=10.9.0.0/30",
    ]);
    let public: Vec<IpAddr> = ["ns/a", "ns/b", "ns/c", "ns/d"]
        .iter()
        .map(|owner| p.allocate(&who(owner), Some("public"), V4).unwrap())
        .collect();
    assert_eq!(
        public,
        ["20", "21", "22", "30"].map(|last| ip(&format!("198.51.100.{last}")))
    );
    assert_eq!(
        p.allocate(&who("ns/e"), None, V4),
        Err(PoolError::Exhausted {
            pool: "public".into(),
            family: V4
        })
    );
    assert_eq!(
        p.allocate(&who("ns/e"), Some("internal"), V4),
        Ok(ip("10.9.0.1"))
    );
    assert_eq!(
        p.allocate(&who("ns/f"), Some("nope"), V4),
        Err(PoolError::UnknownPool("nope".into()))
    );
    // Switching pools moves the owner and frees its old address.
    assert_eq!(
        p.allocate(&who("ns/a"), Some("internal"), V4),
        Ok(ip("10.9.0.2"))
    );
    assert_eq!(
        p.allocate(&who("ns/g"), Some("public"), V4),
        Ok(ip("198.51.100.20"))
    );
    assert_eq!(
        Pools::default().allocate(&who("ns/a"), None, V4),
        Err(PoolError::NoPool)
    );
}

#[test]
fn allocation_is_sticky_and_claims_conflict() {
    let mut p = pools(&["a=198.51.100.0/28,2001:db8::/124"]);
    p.claim(&who("ns/a"), ip("198.51.100.1")).unwrap();
    p.claim(&who("ns/b"), ip("198.51.100.3")).unwrap();
    p.claim(&who("ns/a"), ip("198.51.100.1")).unwrap();
    assert_eq!(p.allocate(&who("ns/a"), None, V4), Ok(ip("198.51.100.1")));
    // Allocation fills the gaps around claimed addresses.
    assert_eq!(p.allocate(&who("ns/c"), None, V4), Ok(ip("198.51.100.2")));
    assert_eq!(p.allocate(&who("ns/d"), None, V4), Ok(ip("198.51.100.4")));
    assert_eq!(p.allocate(&who("ns/c"), None, V4), Ok(ip("198.51.100.2")));
    let err = p.claim(&who("other/x"), ip("198.51.100.3")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "address 198.51.100.3 is already held by ns/b"
    );
    assert_eq!(p.lookup("other/x", V4), None);
    // Outside every pool: recorded, exclusive, reserving nothing inside.
    p.claim(&who("ns/e"), ip("203.0.113.7")).unwrap();
    assert!(p.claim(&who("ns/f"), ip("203.0.113.7")).is_err());
    assert_eq!(p.allocate(&who("ns/f"), None, V4), Ok(ip("198.51.100.5")));
    // A claim elsewhere moves the owner; allocating again brings it back into the pool.
    assert_eq!(p.allocate(&who("ns/e"), None, V4), Ok(ip("198.51.100.6")));
    p.claim(&who("ns/a"), ip("198.51.100.9")).unwrap();
    assert_eq!(p.allocate(&who("ns/g"), None, V4), Ok(ip("198.51.100.1")));
    // Claims are per family: an IPv6 claim keeps the owner's IPv4 address.
    p.claim(&who("ns/a"), ip("2001:db8::2")).unwrap();
    assert_eq!(p.lookup("ns/a", V4), Some(ip("198.51.100.9")));
    assert_eq!(p.allocate(&who("ns/h"), None, V6), Ok(ip("2001:db8::1")));
    assert_eq!(p.allocate(&who("ns/i"), None, V6), Ok(ip("2001:db8::3")));
    assert_eq!(
        p.claim(&who("ns/h"), ip("2001:db8::2"))
            .unwrap_err()
            .to_string(),
        "address 2001:db8::2 is already held by ns/a"
    );
}

#[test]
fn retain_owners_returns_what_it_frees() {
    let mut p = pools(&["a=198.51.100.0/28,2001:db8::/120"]);
    for owner in ["ns/a", "ns/b", "ns/c"] {
        p.allocate(&who(owner), None, V4).unwrap();
    }
    p.allocate(&who("ns/a"), None, V6).unwrap();
    let live = BTreeSet::from(["ns/b"]);
    assert_eq!(
        p.retain_owners(&live),
        [
            ("ns/a".to_owned(), ip("198.51.100.1")),
            ("ns/a".to_owned(), ip("2001:db8::1")),
            ("ns/c".to_owned(), ip("198.51.100.3"))
        ]
    );
    assert_eq!(p.lookup("ns/b", V4), Some(ip("198.51.100.2")));
    assert_eq!(p.allocate(&who("ns/d"), None, V4), Ok(ip("198.51.100.1")));
    assert_eq!(p.allocate(&who("ns/d"), None, V6), Ok(ip("2001:db8::1")));
}

#[test]
fn parse_names_bad_input() {
    for bad in [
        "",
        "noname",
        "=198.51.100.0/28",
        "a=not-a-cidr",
        "a=198.51.100.0/33",
        "a=2001:db8::/129",
        "a=198.51.100.9-198.51.100.1",
        "a=2001:db8::9-2001:db8::1",
        "a=198.51.100.1-2001:db8::1",
        "a=198.51.100.0/28,198.51.100.8-198.51.100.20",
        "a=2001:db8::/64,2001:db8::ff-2001:db8:1::",
    ] {
        let err = Pool::parse(bad).unwrap_err();
        assert!(matches!(err, PoolError::Invalid { .. }), "{bad}: {err:?}");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    assert!(
        Pool::parse("a=198.51.100.1-2001:db8::1")
            .unwrap_err()
            .to_string()
            .ends_with("\"198.51.100.1-2001:db8::1\" mixes IPv4 and IPv6")
    );
    assert!(Pool::from_cidr("default", "198.51.100.0").is_err());
    assert!(Pool::from_cidr("default", "2001:db8::/64").is_ok());
    let clash = |specs: &[&str]| {
        Pools::new(specs.iter().map(|s| Pool::parse(s).unwrap()).collect()).is_err()
    };
    assert!(clash(&["a=10.0.0.0/24", "a=10.0.1.0/24"]));
    assert!(clash(&["a=10.0.0.0/24", "b=10.0.0.200-10.0.1.5"]));
    assert!(!clash(&["a=10.0.0.0/24", "b=10.0.1.0/24"]));
    assert!(clash(&[
        "a=10.0.0.0/24,2001:db8::/64",
        "b=2001:db8::8000-2001:db8:1::"
    ]));
    // Families overlap only with themselves, however their numbers compare.
    assert!(!clash(&["a=0.0.0.0/8", "b=::/120"]));
    assert!(!clash(&[
        "a=10.0.0.0/24,2001:db8::/64",
        "b=10.0.1.0/24,2001:db8:1::/64"
    ]));
}

#[test]
fn longest_prefix_of_the_cidr_blocks_a_pool_splits_into() {
    let longest = |ranges: &[&str], family| {
        Pool::new("p", ranges, Hosts::All)
            .unwrap()
            .longest_prefix(family)
    };
    assert_eq!(longest(&["192.168.10.0/24"], V4), Some(24));
    assert_eq!(longest(&["192.168.10.0/24", "10.0.0.0/16"], V4), Some(24));
    // 0-7 is a /29; 1-5 splits into /32, /31, /32.
    assert_eq!(longest(&["10.0.0.0-10.0.0.7"], V4), Some(29));
    assert_eq!(longest(&["10.0.0.1-10.0.0.5"], V4), Some(32));
    assert_eq!(
        longest(&["10.0.0.4-10.0.0.7", "2001:db8::/64"], V4),
        Some(30)
    );
    assert_eq!(longest(&["2001:db8::/64"], V6), Some(64));
    assert_eq!(longest(&["0.0.0.0/0"], V4), Some(0));
    assert_eq!(longest(&["::/0"], V6), Some(0));
    assert_eq!(longest(&["10.0.0.0/24"], V6), None);
}

#[test]
fn a_sharer_finds_the_lowest_address_it_may_share_after_others_filled_the_pool() {
    let mut p = pools(&["a=198.51.100.0/28"]);
    let sharing = |port| Sharing {
        key: "k".into(),
        backend: String::new(),
        listeners: BTreeSet::from([(port, "TCP".to_owned())]),
    };
    let (http, https) = (sharing(80), sharing(443));
    let sharer = |owner, sharing| Claimant {
        sharing: Some(sharing),
        ..who(owner)
    };
    assert_eq!(
        p.allocate(&sharer("ns/a", &http), None, V4),
        Ok(ip("198.51.100.1"))
    );
    for (owner, last) in [("ns/b", 2), ("ns/c", 3)] {
        let want = ip(&format!("198.51.100.{last}"));
        assert_eq!(p.allocate(&who(owner), None, V4), Ok(want));
    }
    assert_eq!(
        p.allocate(&sharer("ns/d", &https), None, V4),
        Ok(ip("198.51.100.1"))
    );
    assert_eq!(p.allocate(&who("ns/e"), None, V4), Ok(ip("198.51.100.4")));
}
