//! VIPs: where each comes from, who may share one, families and pools.

use super::*;

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
    let translation = pool.translate(&objects(vec![pooled, status, both], vec![]));
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    let want = [
        ("ns/status:p80".to_owned(), ip("198.51.100.1")),
        ("ns/both:p80".to_owned(), ip("198.51.100.2")),
        ("ns/pooled:p80".to_owned(), ip("198.51.100.3")),
    ];
    assert_eq!(served(translation), want);
}

#[test]
fn requested_vip_outside_pool_served() {
    let service = with_lb_ip(service("a", vec![tcp(80, 30080)]), "203.0.113.7");
    let mut pool = pool();
    let translation = pool.translate(&objects(vec![service], vec![]));
    assert_eq!(
        served(translation),
        [("ns/a:p80".to_owned(), ip("203.0.113.7"))]
    );
}

#[test]
fn no_usable_vip_skipped() {
    let services = vec![
        service("a", vec![tcp(80, 30080)]),
        with_lb_ip(service("b", vec![tcp(80, 30081)]), "198.51.100.300"),
    ];
    let translation = Translator::default()
        .translate(&objects(services.clone(), vec![]))
        .clone();
    assert!(translation.state.services.is_empty());
    let want = [
        "Service ns/b: spec.loadBalancerIP \"198.51.100.300\" is not an IP address",
        "Service ns/a: no IPv4 VIP: it requests none and no VIP pool is configured",
    ];
    assert_eq!(skipped(&translation), want);

    let mut tiny = translator(&["default=198.51.100.0/32"]);
    let holder = with_lb_ip(service("holder", vec![tcp(80, 30082)]), "198.51.100.0");
    let services = vec![services[0].clone(), holder];
    let translation = tiny.translate(&objects(services, vec![]));
    assert_eq!(
        skipped(translation),
        ["Service ns/a: no IPv4 VIP: VIP pool default has no free IPv4 address left"]
    );
}

#[test]
fn shared_vip_for_disjoint_ports() {
    let dns = vec![port(53, Some("UDP"), Some(30053))];
    let services = vec![
        with_lb_ip(
            service("web", vec![tcp(80, 30080), tcp(53, 30054)]),
            "198.51.100.4",
        ),
        annotated(service("dns", dns), ADDRESS_ANNOTATION, "198.51.100.4"),
        service("other", vec![tcp(80, 30081)]),
    ];
    let mut pool = pool();
    let first = pool.translate(&objects(services.clone(), vec![]));
    assert!(first.skipped.is_empty(), "{:?}", first.skipped);
    // Shows the address in its status, but does not ask to share it: it
    // gets another, as MetalLB gives one whose status it cannot keep.
    let quiet = with_status_ips(service("quiet", vec![tcp(25, 30025)]), &["198.51.100.4"]);
    let translation = pool.translate(&objects([services, vec![quiet]].concat(), vec![]));
    let want = [
        ("ns/other:p80".to_owned(), ip("198.51.100.1")),
        ("ns/quiet:p25".to_owned(), ip("198.51.100.2")),
        ("ns/web:p53".to_owned(), ip("198.51.100.4")),
        ("ns/dns:p53".to_owned(), ip("198.51.100.4")),
        ("ns/web:p80".to_owned(), ip("198.51.100.4")),
    ];
    assert_eq!(served(translation), want);
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
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
    let translation = pool.translate(&objects(services, vec![]));
    assert_eq!(
        served(translation),
        [("ns/a:p80".to_owned(), ip("198.51.100.4"))]
    );
    assert_eq!(
        skipped(translation),
        ["Service ns/b: VIP 198.51.100.4 is already used by ns/a on an overlapping port"]
    );
    assert_eq!(
        pool.pools.lookup("ns/a", Family::V4),
        Some(ip("198.51.100.4"))
    );
}

#[test]
fn requested_vip_held_by_allocation_refused() {
    let mut pool = pool();
    let a = service("a", vec![tcp(80, 30080)]);
    pool.translate(&objects(vec![a.clone()], vec![]));
    let b = with_lb_ip(service("b", vec![tcp(80, 30081)]), "198.51.100.1");
    let translation = pool.translate(&objects(vec![a, b], vec![]));
    assert_eq!(
        served(translation),
        [("ns/a:p80".to_owned(), ip("198.51.100.1"))]
    );
    assert_eq!(
        skipped(translation),
        ["Service ns/b: address 198.51.100.1 is already held by ns/a"]
    );
}

#[test]
fn services_swapping_vips() {
    let mut pool = pool();
    let a = |vip| with_lb_ip(service("a", vec![tcp(80, 30080)]), vip);
    let b = |vip| with_lb_ip(service("b", vec![tcp(80, 30081)]), vip);
    pool.translate(&objects(vec![a("198.51.100.1"), b("198.51.100.2")], vec![]));
    let translation = pool.translate(&objects(vec![a("198.51.100.2"), b("198.51.100.1")], vec![]));
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    let want = [
        ("ns/b:p80".to_owned(), ip("198.51.100.1")),
        ("ns/a:p80".to_owned(), ip("198.51.100.2")),
    ];
    assert_eq!(served(translation), want);
}

#[test]
fn deleted_service_releases_pool_address() {
    let mut pool = pool();
    let a = service("a", vec![tcp(80, 30080)]);
    let b = service("b", vec![tcp(80, 30081)]);
    let c = service("c", vec![tcp(80, 30082)]);
    let first = pool.translate(&objects(vec![a, b.clone()], vec![]));
    let want = [
        ("ns/a:p80".to_owned(), ip("198.51.100.1")),
        ("ns/b:p80".to_owned(), ip("198.51.100.2")),
    ];
    assert_eq!(served(first), want);

    let second = pool.translate(&objects(vec![b.clone()], vec![]));
    assert_eq!(
        served(second),
        [("ns/b:p80".to_owned(), ip("198.51.100.2"))]
    );
    assert_eq!(pool.pools.lookup("ns/a", Family::V4), None);

    let third = pool.translate(&objects(vec![b, c], vec![]));
    let want = [
        ("ns/c:p80".to_owned(), ip("198.51.100.1")),
        ("ns/b:p80".to_owned(), ip("198.51.100.2")),
    ];
    assert_eq!(served(third), want);
}

#[test]
fn address_annotation_wins_over_load_balancer_ip() {
    let both = annotated(
        with_lb_ip(service("both", vec![tcp(80, 30080)]), "198.51.100.2"),
        ADDRESS_ANNOTATION,
        "198.51.100.7",
    );
    let bad = annotated(
        service("bad", vec![tcp(80, 30081)]),
        ADDRESS_ANNOTATION,
        "nope",
    );
    let mut pool = pool();
    let translation = pool.translate(&objects(vec![both, bad], vec![]));
    assert_eq!(
        served(translation),
        [("ns/both:p80".to_owned(), ip("198.51.100.7"))]
    );
    assert_eq!(
        skipped(translation),
        ["Service ns/bad: annotation lb.dev/address=\"nope\" is not an IP address"]
    );
    assert_eq!(problems(translation), [("ns/bad", Problem::Invalid)]);
    assert_eq!(translation.vips.len(), 1);
}

#[test]
fn pools_are_chosen_by_annotation() {
    let mut translator =
        translator(&["public=198.51.100.20-198.51.100.21", "internal=10.9.0.0/30"]);
    let services = vec![
        service("a", vec![tcp(80, 30080)]),
        annotated(
            service("b", vec![tcp(80, 30081)]),
            POOL_ANNOTATION,
            "internal",
        ),
        annotated(service("c", vec![tcp(80, 30082)]), POOL_ANNOTATION, "nope"),
        service("d", vec![tcp(80, 30083)]),
        service("e", vec![tcp(80, 30084)]),
    ];
    let translation = translator.translate(&objects(services, vec![]));
    let want = [
        ("ns/a", "198.51.100.20"),
        ("ns/b", "10.9.0.1"),
        ("ns/d", "198.51.100.21"),
    ];
    assert_eq!(
        vips(translation),
        want.map(|(owner, vip)| (owner, vec![ip(vip)]))
    );
    assert_eq!(
        skipped(translation),
        [
            "Service ns/c: no IPv4 VIP: no VIP pool named \"nope\"",
            "Service ns/e: no IPv4 VIP: VIP pool public has no free IPv4 address left",
        ]
    );
    assert_eq!(
        problems(translation),
        [
            ("ns/c", Problem::Invalid),
            ("ns/e", Problem::AllocationFailed)
        ]
    );

    // A status address outside the Service's pool is not kept: it moves.
    let moved = annotated(
        with_status_ips(service("a", vec![tcp(80, 30080)]), &["198.51.100.20"]),
        POOL_ANNOTATION,
        "internal",
    );
    let translation = translator.translate(&objects(vec![moved], vec![]));
    assert_eq!(translation.vips["ns/a"], [ip::<IpAddr>("10.9.0.1")]);
}

#[test]
fn the_holder_of_an_address_keeps_it() {
    // "a" sorts first and asks for the address "b" shows in its status.
    let a = with_lb_ip(service("a", vec![tcp(80, 30080)]), "198.51.100.9");
    let b = with_status_ips(service("b", vec![tcp(80, 30081)]), &["198.51.100.9"]);
    // After a restart (empty pools), the status wins.
    let mut fresh = pool();
    let translation = fresh.translate(&objects(vec![a.clone(), b.clone()], vec![]));
    assert_eq!(
        served(translation),
        [("ns/b:p80".to_owned(), ip("198.51.100.9"))]
    );
    assert_eq!(problems(translation), [("ns/a", Problem::AddressConflict)]);
    assert_eq!(
        skipped(translation),
        [
            "Service ns/a: VIP 198.51.100.9 is already used by ns/b; only Services that both request it, or have the same sharing key (allow-shared-ip), may share it"
        ]
    );

    // Also when the holder asks for the address too: "a" asked for it while
    // "b" held it, and was refused; a restarted agent keeps it with "b".
    let b = with_lb_ip(b, "198.51.100.9");
    let mut restarted = pool();
    let translation = restarted.translate(&objects(vec![a.clone(), b.clone()], vec![]));
    assert_eq!(
        served(translation),
        [("ns/b:p80".to_owned(), ip("198.51.100.9"))]
    );
    assert_eq!(problems(translation), [("ns/a", Problem::AddressConflict)]);

    // A Service the pools gave the address to keeps it against status holders.
    let mut running = pool();
    let c = service("c", vec![tcp(80, 30082)]);
    running.translate(&objects(vec![c.clone()], vec![]));
    let d = with_status_ips(service("d", vec![tcp(80, 30083)]), &["198.51.100.1"]);
    let translation = running.translate(&objects(vec![c, d], vec![]));
    assert_eq!(translation.vips["ns/c"], [ip::<IpAddr>("198.51.100.1")]);
    assert_eq!(translation.vips.get("ns/d"), None);
    assert_eq!(problems(translation), [("ns/d", Problem::AddressConflict)]);
}

#[test]
fn released_on_deletion_and_type_change() {
    let mut pool = pool();
    let a = service("a", vec![tcp(80, 30080)]);
    let b = service("b", vec![tcp(80, 30081)]);
    let c = service("c", vec![tcp(80, 30082)]);
    let first = pool.translate(&objects(vec![a, b.clone(), c], vec![]));
    assert!(first.released.is_empty());
    let mut internal = b;
    internal.spec.as_mut().unwrap().type_ = Some("ClusterIP".to_owned());
    let second = pool.translate(&objects(vec![internal], vec![]));
    let want = [
        ("ns/a".to_owned(), ip("198.51.100.1")),
        ("ns/b".to_owned(), ip("198.51.100.2")),
        ("ns/c".to_owned(), ip("198.51.100.3")),
    ];
    assert_eq!(second.released, want);
    assert!(second.vips.is_empty());
}

#[test]
fn dual_stack_service_served_on_a_vip_of_each_family() {
    let ports = vec![
        tcp(80, 30080),
        port(53, Some("UDP"), Some(30053)),
        port(9000, Some("SCTP"), Some(30900)),
    ];
    // Listed IPv6 first: the status still lists IPv4 first.
    let web = ip_families(service("web", ports), "RequireDualStack", &["IPv6", "IPv4"]);
    let nodes = vec![
        with_internal_ip(node("both", "10.1.0.1"), "fd00::1"),
        node("v4-only", "10.1.0.2"),
        node("v6-only", "fd00::3"),
    ];
    let mut translator = dual_pool();
    let translation = translator.translate(&objects(vec![web], nodes));
    // The bad port is reported once, not once per VIP.
    assert_eq!(
        skipped(translation),
        ["Service ns/web: port 9000/sctp: protocol SCTP is not supported"]
    );
    assert_eq!(
        vips(translation),
        [("ns/web", vec![ip("198.51.100.1"), ip("2001:db8::1")])]
    );
    let served: Vec<Frontend> = translation.state.services.keys().copied().collect();
    let want = [
        frontend("198.51.100.1", 53, Protocol::Udp),
        frontend("198.51.100.1", 80, Protocol::Tcp),
        frontend("2001:db8::1", 53, Protocol::Udp),
        frontend("2001:db8::1", 80, Protocol::Tcp),
    ];
    assert_eq!(served, want);
    assert!(want.iter().all(|f| translation.checks.contains_key(f)));
    let v4 = &translation.state.services[&want[1]];
    assert_eq!(
        backend_ips(v4),
        [("both", ip("10.1.0.1")), ("v4-only", ip("10.1.0.2"))]
    );
    let v6 = &translation.state.services[&want[3]];
    assert_eq!(v6.name, "ns/web:p80");
    assert_eq!(
        backend_ips(v6),
        [("both", ip("fd00::1")), ("v6-only", ip("fd00::3"))]
    );
    assert_eq!(
        translator.pools.lookup("ns/web", Family::V6),
        Some(ip("2001:db8::1"))
    );
}

#[test]
fn single_stack_ipv6_and_the_ipv4_default() {
    let services = vec![
        ip_families(
            service("six", vec![tcp(80, 30080)]),
            "SingleStack",
            &["IPv6"],
        ),
        // Only the first family counts for a single stack.
        ip_families(
            service("first", vec![tcp(80, 30081)]),
            "SingleStack",
            &["IPv6", "IPv4"],
        ),
        service("unset", vec![tcp(80, 30082)]),
    ];
    let translation = dual_pool().translate(&objects(services, vec![])).clone();
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    let want = [
        ("ns/first", vec![ip("2001:db8::1")]),
        ("ns/six", vec![ip("2001:db8::2")]),
        ("ns/unset", vec![ip("198.51.100.1")]),
    ];
    assert_eq!(vips(&translation), want);
}

#[test]
fn require_dual_stack_without_an_ipv6_pool_not_served() {
    let services = vec![
        dual_stack(service("both", vec![tcp(80, 30080)])),
        ip_families(
            service("six", vec![tcp(80, 30081)]),
            "SingleStack",
            &["IPv6"],
        ),
    ];
    let mut translator = pool();
    let translation = translator.translate(&objects(services, vec![]));
    assert!(translation.state.services.is_empty());
    assert!(translation.vips.is_empty());
    assert_eq!(
        skipped(translation),
        [
            "Service ns/both: not served, as ipFamilyPolicy RequireDualStack needs a VIP of each family: no IPv6 VIP: VIP pool default has no IPv6 range",
            "Service ns/six: no IPv6 VIP: VIP pool default has no IPv6 range",
        ]
    );
    assert_eq!(
        problems(translation),
        [
            ("ns/both", Problem::AllocationFailed),
            ("ns/six", Problem::AllocationFailed)
        ]
    );
}

#[test]
fn prefer_dual_stack_takes_the_families_it_can_get() {
    let prefer = |name, listed: &[&str]| {
        ip_families(
            service(name, vec![tcp(80, 30080)]),
            "PreferDualStack",
            listed,
        )
    };
    // An IPv4 pool: IPv4 only, and nothing to complain about.
    let translation = pool()
        .translate(&objects(vec![prefer("a", &["IPv4", "IPv6"])], vec![]))
        .clone();
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    assert_eq!(vips(&translation), [("ns/a", vec![ip("198.51.100.1")])]);

    // A dual-stack pool: the families listed (a single-stack cluster lists
    // one), both when none is.
    let services = vec![
        prefer("a", &["IPv4", "IPv6"]),
        prefer("b", &["IPv4"]),
        prefer("c", &[]),
    ];
    let translation = dual_pool().translate(&objects(services, vec![])).clone();
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    let want = [
        ("ns/a", vec![ip("198.51.100.1"), ip("2001:db8::1")]),
        ("ns/b", vec![ip("198.51.100.2")]),
        ("ns/c", vec![ip("198.51.100.3"), ip("2001:db8::2")]),
    ];
    assert_eq!(vips(&translation), want);

    // A family that runs out is reported; the Service is served in the other.
    let mut tiny = translator(&["default=198.51.100.0/28,2001:db8::1/128"]);
    let services = vec![
        prefer("a", &["IPv4", "IPv6"]),
        prefer("b", &["IPv6", "IPv4"]),
    ];
    let translation = tiny.translate(&objects(services, vec![]));
    let want = [
        ("ns/a", vec![ip("198.51.100.1"), ip("2001:db8::1")]),
        ("ns/b", vec![ip("198.51.100.2")]),
    ];
    assert_eq!(vips(translation), want);
    assert_eq!(
        skipped(translation),
        ["Service ns/b: no IPv6 VIP: VIP pool default has no free IPv6 address left"]
    );
}

#[test]
fn address_annotation_names_one_address_per_family() {
    let both = annotated(
        dual_stack(service("both", vec![tcp(80, 30080)])),
        ADDRESS_ANNOTATION,
        "2001:db8::7, 198.51.100.7",
    );
    // Requests IPv4 only: the IPv6 VIP comes from the pool.
    let half = annotated(
        dual_stack(service("half", vec![tcp(80, 30081)])),
        ADDRESS_ANNOTATION,
        "198.51.100.8",
    );
    // An IPv4-mapped IPv6 address is the IPv4 address.
    let mapped = with_lb_ip(
        service("mapped", vec![tcp(80, 30082)]),
        "::ffff:198.51.100.9",
    );
    let two_v4 = annotated(
        dual_stack(service("two-v4", vec![tcp(80, 30083)])),
        ADDRESS_ANNOTATION,
        "198.51.100.10,198.51.100.11",
    );
    let wrong_family = annotated(
        service("wrong-family", vec![tcp(80, 30084)]),
        ADDRESS_ANNOTATION,
        "198.51.100.12,2001:db8::12",
    );
    let garbage = annotated(
        dual_stack(service("garbage", vec![tcp(80, 30085)])),
        ADDRESS_ANNOTATION,
        "198.51.100.13,nope",
    );
    let services = vec![both, half, mapped, two_v4, wrong_family, garbage];
    let translation = dual_pool().translate(&objects(services, vec![])).clone();
    let want = [
        ("ns/both", vec![ip("198.51.100.7"), ip("2001:db8::7")]),
        ("ns/half", vec![ip("198.51.100.8"), ip("2001:db8::1")]),
        ("ns/mapped", vec![ip("198.51.100.9")]),
    ];
    assert_eq!(vips(&translation), want);
    assert_eq!(
        skipped(&translation),
        [
            "Service ns/garbage: annotation lb.dev/address=\"198.51.100.13,nope\": \"nope\" is not an IP address",
            "Service ns/two-v4: annotation lb.dev/address=\"198.51.100.10,198.51.100.11\" names more than one IPv4 address",
            "Service ns/wrong-family: annotation lb.dev/address=\"198.51.100.12,2001:db8::12\" names an IPv6 address, but the Service is served in IPv4 only (spec.ipFamilies, spec.ipFamilyPolicy)",
        ]
    );
}

#[test]
fn unknown_ip_family_fields_skipped() {
    let services = vec![
        ip_families(
            service("policy", vec![tcp(80, 30080)]),
            "DualStack",
            &["IPv4"],
        ),
        ip_families(
            service("family", vec![tcp(80, 30081)]),
            "SingleStack",
            &["IPv5"],
        ),
        ip_families(
            service("twice", vec![tcp(80, 30082)]),
            "PreferDualStack",
            &["IPv6", "IPv6"],
        ),
    ];
    let translation = dual_pool().translate(&objects(services, vec![])).clone();
    assert!(translation.vips.is_empty());
    assert_eq!(
        skipped(&translation),
        [
            "Service ns/family: spec.ipFamilies lists \"IPv5\", which is not IPv4 or IPv6",
            "Service ns/policy: spec.ipFamilyPolicy \"DualStack\" is not SingleStack, PreferDualStack or RequireDualStack",
            "Service ns/twice: spec.ipFamilies lists IPv6 twice",
        ]
    );
    assert_eq!(
        problems(&translation),
        [
            ("ns/family", Problem::Invalid),
            ("ns/policy", Problem::Invalid),
            ("ns/twice", Problem::Invalid)
        ]
    );
}

#[test]
fn restart_keeps_both_vips_and_dropping_a_family_frees_it() {
    let web = with_status_ips(
        dual_stack(service("web", vec![tcp(80, 30080)])),
        &["198.51.100.9", "2001:db8::9"],
    );
    let other = dual_stack(service("other", vec![tcp(80, 30081)]));
    // After a restart (empty pools), the status gives both back.
    let mut fresh = dual_pool();
    let translation = fresh.translate(&objects(vec![web.clone(), other.clone()], vec![]));
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    let want = [
        ("ns/other", vec![ip("198.51.100.1"), ip("2001:db8::1")]),
        ("ns/web", vec![ip("198.51.100.9"), ip("2001:db8::9")]),
    ];
    assert_eq!(vips(translation), want);

    // web turns single-stack: its IPv6 address goes to whoever asks next.
    let single = ip_families(web, "SingleStack", &["IPv4"]);
    let six = ip_families(
        service("six", vec![tcp(80, 30082)]),
        "SingleStack",
        &["IPv6"],
    );
    fresh.translate(&objects(vec![single.clone(), other.clone()], vec![]));
    assert_eq!(fresh.pools.lookup("ns/web", Family::V6), None);
    let claimant = with_lb_ip(six, "2001:db8::9");
    let translation = fresh.translate(&objects(vec![single, other, claimant], vec![]));
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    assert_eq!(translation.vips["ns/six"], [ip::<IpAddr>("2001:db8::9")]);
    assert_eq!(translation.vips["ns/web"], [ip::<IpAddr>("198.51.100.9")]);

    // Deleting a dual-stack Service releases both addresses.
    let translation = fresh.translate(&objects(vec![], vec![]));
    let released: Vec<(&str, IpAddr)> = translation
        .released
        .iter()
        .map(|(owner, vip)| (owner.as_str(), *vip))
        .collect();
    let want = [
        ("ns/other", ip("198.51.100.1")),
        ("ns/other", ip("2001:db8::1")),
        ("ns/six", ip("2001:db8::9")),
        ("ns/web", ip("198.51.100.9")),
    ];
    assert_eq!(released, want);
}

#[test]
fn sharing_and_conflicts_are_per_address() {
    let shared = "198.51.100.4,2001:db8::4";
    let web = annotated(
        dual_stack(service("web", vec![tcp(80, 30080)])),
        ADDRESS_ANNOTATION,
        shared,
    );
    let dns = annotated(
        dual_stack(service("dns", vec![port(53, Some("UDP"), Some(30053))])),
        ADDRESS_ANNOTATION,
        shared,
    );
    // Sorts after web and overlaps its port on the IPv6 address only; prefers
    // dual stack, so it is served on IPv4 alone.
    let late = annotated(
        ip_families(
            service("x-late", vec![tcp(80, 30081)]),
            "PreferDualStack",
            &["IPv4", "IPv6"],
        ),
        ADDRESS_ANNOTATION,
        "198.51.100.5,2001:db8::4",
    );
    let translation = dual_pool()
        .translate(&objects(vec![web, dns, late], vec![]))
        .clone();
    let want = [
        ("ns/dns", vec![ip("198.51.100.4"), ip("2001:db8::4")]),
        ("ns/web", vec![ip("198.51.100.4"), ip("2001:db8::4")]),
        ("ns/x-late", vec![ip("198.51.100.5")]),
    ];
    assert_eq!(vips(&translation), want);
    assert_eq!(
        skipped(&translation),
        ["Service ns/x-late: VIP 2001:db8::4 is already used by ns/web on an overlapping port"]
    );
    assert_eq!(translation.state.services.len(), 5);
}

/// A Service that moves off its address to one it cannot get (another
/// Service holds it) gives the old one up: the status writer is told, so
/// the Service's status stops showing an address another may now get.
#[test]
fn a_service_that_moves_off_its_address_gives_it_up() {
    let nodes = || vec![node("n1", "10.1.0.11")];
    let mut translator = pool();
    let first = objects(
        vec![
            service("a", vec![tcp(80, 31000)]),
            with_lb_ip(service("b", vec![tcp(80, 31001)]), "198.51.100.5"),
        ],
        nodes(),
    );
    let held = translator.translate(&first).vips["ns/a"].clone();
    let moved = objects(
        vec![
            with_lb_ip(service("a", vec![tcp(80, 31000)]), "198.51.100.5"),
            with_lb_ip(service("b", vec![tcp(80, 31001)]), "198.51.100.5"),
        ],
        nodes(),
    );
    let translation = translator.translate(&moved);
    assert!(!translation.vips.contains_key("ns/a"), "b keeps .5");
    assert_eq!(translation.released, vec![("ns/a".to_owned(), held[0])]);
}

/// Not elected, an agent serves each Service on what its status shows (the
/// elected agent's choice, in a pool of this agent's or not), allocates
/// nothing, and takes no requested address the status does not show yet.
/// Elected again, it assigns as before, keeping what the statuses show.
#[test]
fn adopting_serves_only_what_statuses_show() {
    let shown = with_status_ips(service("shown", vec![tcp(80, 30080)]), &["198.51.100.7"]);
    let elsewhere = with_status_ips(service("elsewhere", vec![tcp(80, 30081)]), &["203.0.113.9"]);
    let waiting = service("waiting", vec![tcp(80, 30082)]);
    let requested = with_lb_ip(service("requested", vec![tcp(80, 30083)]), "198.51.100.2");
    // Two that ask for one address, shared as the elected agent shares it.
    let sharing = |name, port, node_port| {
        let service = with_lb_ip(service(name, vec![tcp(port, node_port)]), "198.51.100.4");
        with_status_ips(service, &["198.51.100.4"])
    };
    let services = vec![
        shown,
        elsewhere,
        waiting,
        requested,
        sharing("web", 80, 30084),
        sharing("dns", 53, 30085),
    ];
    let cluster = objects(services, vec![]);
    let mut pool = pool();
    pool.set_role(Role::Adopt);
    let translation = pool.translate(&cluster);
    assert!(translation.skipped.is_empty(), "{:?}", translation.skipped);
    let adopted = [
        ("ns/dns:p53".to_owned(), ip("198.51.100.4")),
        ("ns/web:p80".to_owned(), ip("198.51.100.4")),
        ("ns/shown:p80".to_owned(), ip("198.51.100.7")),
        ("ns/elsewhere:p80".to_owned(), ip("203.0.113.9")),
    ];
    assert_eq!(served(translation), adopted);
    pool.set_role(Role::Assign);
    let translation = pool.translate(&cluster);
    // An address outside this agent's pool moves into it.
    let assigned = [
        ("ns/elsewhere:p80".to_owned(), ip("198.51.100.1")),
        ("ns/requested:p80".to_owned(), ip("198.51.100.2")),
        ("ns/waiting:p80".to_owned(), ip("198.51.100.3")),
        ("ns/dns:p53".to_owned(), ip("198.51.100.4")),
        ("ns/web:p80".to_owned(), ip("198.51.100.4")),
        ("ns/shown:p80".to_owned(), ip("198.51.100.7")),
    ];
    assert_eq!(served(translation), assigned);
}

/// An address asked for must lie in the pool the Service names (MetalLB's
/// rule); a pool named that does not exist refuses it too.
#[test]
fn a_requested_address_must_lie_in_the_named_pool() {
    let in_pool = |name, address, pool| {
        let service = with_lb_ip(service(name, vec![tcp(80, 30080)]), address);
        annotated(service, POOL_ANNOTATION, pool)
    };
    let services = vec![
        in_pool("inside", "203.0.113.2", "public"),
        in_pool("outside", "198.51.100.2", "public"),
        in_pool("unknown", "203.0.113.3", "nosuch"),
    ];
    let mut translator = translator(&["default=198.51.100.0/28", "public=203.0.113.0/29"]);
    let translation = translator.translate(&objects(services, vec![]));
    assert_eq!(
        served(translation),
        [("ns/inside:p80".to_owned(), ip("203.0.113.2"))]
    );
    assert_eq!(
        skipped(translation),
        [
            "Service ns/outside: 198.51.100.2 is requested, but annotation lb.dev/pool names pool \"public\", which does not hold it",
            "Service ns/unknown: annotation lb.dev/pool: no VIP pool named \"nosuch\"",
        ]
    );
}

/// Of two Services sharing an address by key, the one that changes its
/// terms (its key, or a port onto the other's) moves to another address,
/// whatever the name order; the other keeps it. The same whether the
/// statuses show the address (an API server) or not (manifests), and in a
/// later round whose status does not show the move yet. An agent that
/// adopts moves nothing.
#[test]
fn a_sharer_that_changes_terms_moves_and_the_other_keeps_the_address() {
    let sharer = |name, port, node_port, key| {
        annotated(
            service(name, vec![tcp(port, node_port)]),
            SHARING_ANNOTATION,
            key,
        )
    };
    let shown = |service: Service, vip: &str| with_status_ips(service, &[vip]);
    for (mover, stays) in [("a", "b"), ("b", "a")] {
        let original = |name| sharer(name, if name == "a" { 80 } else { 443 }, 30080, "k");
        let changes = [
            sharer(mover, 80, 30080, "other"),
            sharer(mover, if mover == "a" { 443 } else { 80 }, 30080, "k"),
        ];
        for (changed, with_status) in changes
            .into_iter()
            .flat_map(|c| [(c.clone(), false), (c, true)])
        {
            let what = format!("{mover} changed to {changed:?}, status shown: {with_status}");
            let mut pool = pool();
            let first = pool.translate(&objects(vec![original("a"), original("b")], vec![]));
            assert!(first.skipped.is_empty(), "{:?}", first.skipped);
            assert_eq!(first.vips["ns/a"], first.vips["ns/b"]);
            let status = |service: Service| match with_status {
                true => shown(service, "198.51.100.1"),
                false => service,
            };
            let round = objects(
                vec![status(changed.clone()), status(original(stays))],
                vec![],
            );
            let translation = pool.translate(&round).clone();
            assert!(
                translation.skipped.is_empty(),
                "{what}: {:?}",
                translation.skipped
            );
            assert_eq!(
                translation.vips[&format!("ns/{stays}")],
                [ip::<IpAddr>("198.51.100.1")],
                "{what}"
            );
            assert_eq!(
                translation.vips[&format!("ns/{mover}")],
                [ip::<IpAddr>("198.51.100.2")],
                "{what}"
            );
            // The next round still shows the old status, and a newcomer
            // arrives: the mover keeps its new address.
            let newcomer = service("z", vec![tcp(80, 30090)]);
            let round = objects(
                vec![status(changed.clone()), status(original(stays)), newcomer],
                vec![],
            );
            let translation = pool.translate(&round);
            assert!(
                translation.skipped.is_empty(),
                "{what}: {:?}",
                translation.skipped
            );
            assert_eq!(
                translation.vips[&format!("ns/{mover}")],
                [ip::<IpAddr>("198.51.100.2")],
                "{what}"
            );
            assert_eq!(
                translation.vips["ns/z"],
                [ip::<IpAddr>("198.51.100.3")],
                "{what}"
            );
        }
    }
    // Adopting, the changed sharer keeps what its status shows until the
    // elected agent moves it: it allocates nothing.
    let mut follower = pool();
    follower.set_role(Role::Adopt);
    let before = objects(
        vec![
            shown(sharer("a", 80, 30080, "k"), "198.51.100.1"),
            shown(sharer("b", 443, 30443, "k"), "198.51.100.1"),
        ],
        vec![],
    );
    assert!(follower.translate(&before).skipped.is_empty());
    let round = objects(
        vec![
            shown(sharer("a", 80, 30080, "other"), "198.51.100.1"),
            shown(sharer("b", 443, 30443, "k"), "198.51.100.1"),
        ],
        vec![],
    );
    let translation = follower.translate(&round);
    assert_eq!(translation.vips.get("ns/a"), None);
    assert_eq!(translation.vips["ns/b"], [ip::<IpAddr>("198.51.100.1")]);
    assert_eq!(problems(translation), [("ns/a", Problem::AddressConflict)]);
}

/// A Service refused for a setting to fix (sharing annotations that
/// disagree, source ranges lb cannot enforce) keeps its address for when
/// it is fixed, as one with any other invalid setting: a newcomer does not
/// get it meanwhile.
#[test]
fn a_refused_service_keeps_its_address() {
    let web = || service("web", vec![tcp(80, 30080)]);
    let disagreeing = annotated(
        annotated(web(), SHARING_ANNOTATION, "y"),
        "metallb.io/allow-shared-ip",
        "x",
    );
    let mut limited = web();
    limited.spec.as_mut().unwrap().load_balancer_source_ranges = Some(vec!["10.0.0.0/8".into()]);
    for refused in [disagreeing, limited] {
        let mut pool = pool();
        let first = pool.translate(&objects(vec![web()], vec![]));
        assert_eq!(first.vips["ns/web"], [ip::<IpAddr>("198.51.100.1")]);
        let newcomer = service("new", vec![tcp(81, 30081)]);
        let translation = pool.translate(&objects(vec![refused, newcomer], vec![]));
        assert_eq!(problems(translation), [("ns/web", Problem::Invalid)]);
        assert!(
            translation.released.is_empty(),
            "{:?}",
            translation.released
        );
        assert_eq!(translation.vips["ns/new"], [ip::<IpAddr>("198.51.100.2")]);
        let fixed = pool.translate(&objects(vec![web()], vec![]));
        assert_eq!(fixed.vips["ns/web"], [ip::<IpAddr>("198.51.100.1")]);
    }
    // An agent that restarts (or is elected) meanwhile keeps it too, by the
    // Service's status.
    let refused = with_status_ips(
        annotated(
            annotated(web(), SHARING_ANNOTATION, "y"),
            "metallb.io/allow-shared-ip",
            "x",
        ),
        &["198.51.100.1"],
    );
    let newcomer = service("new", vec![tcp(81, 30081)]);
    let mut restarted = pool();
    let translation = restarted.translate(&objects(vec![refused, newcomer], vec![]));
    assert_eq!(translation.vips["ns/new"], [ip::<IpAddr>("198.51.100.2")]);
    let fixed = with_status_ips(web(), &["198.51.100.1"]);
    let translation = restarted.translate(&objects(vec![fixed], vec![]));
    assert_eq!(translation.vips["ns/web"], [ip::<IpAddr>("198.51.100.1")]);
}
