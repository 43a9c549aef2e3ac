//! The allocator's rules, one scenario each.

use std::net::IpAddr;

use ironlb::ipam::{
    AllocErrorKind, AllocationRules, Allocator, Backend, Family, FamilyPolicy, LabelSelector,
    PoolSpec, Protocol, Service, ServiceKey, SharingRefusal,
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn allocator(pools: &[PoolSpec]) -> Allocator {
    let (alloc, errors) = Allocator::new(pools);
    assert!(errors.is_empty(), "unexpected pool errors: {errors:?}");
    alloc
}

fn addresses(alloc: &mut Allocator, svc: &Service) -> Vec<IpAddr> {
    match alloc.allocate(svc) {
        Ok(a) => a.addresses,
        Err(e) => panic!("expected an address for {}, got: {e}", svc.key),
    }
}

fn error(alloc: &mut Allocator, svc: &Service) -> AllocErrorKind {
    match alloc.allocate(svc) {
        Ok(a) => panic!("expected {} to get no address, got {a}", svc.key),
        Err(e) => {
            assert_eq!(e.service, svc.key);
            e.kind
        }
    }
}

fn dual(policy: FamilyPolicy, svc: Service) -> Service {
    svc.families(policy, &[Family::V4, Family::V6])
}

#[test]
fn automatic_allocation_takes_the_lowest_free_address() {
    let mut alloc = allocator(&[PoolSpec::new("lan", &["10.0.0.10-10.0.0.12"])]);
    assert_eq!(
        addresses(&mut alloc, &Service::new("a", "one")),
        [ip("10.0.0.10")]
    );
    assert_eq!(
        addresses(&mut alloc, &Service::new("a", "two")),
        [ip("10.0.0.11")]
    );
    alloc.release(&ServiceKey::new("a", "one"));
    assert_eq!(
        addresses(&mut alloc, &Service::new("a", "three")),
        [ip("10.0.0.10")],
        "a released address is reusable at once"
    );
}

#[test]
fn allocation_is_idempotent() {
    let mut alloc = allocator(&[PoolSpec::new("lan", &["10.0.0.0/29"])]);
    let svc = Service::new("a", "web");
    let first = alloc.allocate(&svc).unwrap();
    let before = alloc.clone();
    assert_eq!(alloc.allocate(&svc).unwrap(), first);
    assert_eq!(alloc, before);
    assert_eq!(first.pool.as_deref(), Some("lan"));
}

#[test]
fn a_requested_address_is_given_exactly() {
    let mut alloc = allocator(&[PoolSpec::new("lan", &["10.0.0.0/24"]).auto_assign(false)]);
    let svc = Service::new("a", "db").address(ip("10.0.0.77"));
    assert_eq!(addresses(&mut alloc, &svc), [ip("10.0.0.77")]);
}

#[test]
fn a_requested_address_outside_every_pool_is_refused() {
    let mut alloc = allocator(&[PoolSpec::new("lan", &["10.0.0.0/24"])]);
    let kind = error(
        &mut alloc,
        &Service::new("a", "db").address(ip("192.168.9.9")),
    );
    assert_eq!(
        kind,
        AllocErrorKind::NotInAnyPool {
            address: ip("192.168.9.9")
        }
    );
    assert_eq!(kind.reason(), "AddressNotInPool");
}

#[test]
fn requested_addresses_must_fit_the_requested_pool_and_one_pool() {
    let mut alloc = allocator(&[
        PoolSpec::new("a", &["10.0.0.0/24", "fd00::/120"]),
        PoolSpec::new("b", &["10.0.1.0/24", "fd01::/120"]),
    ]);
    let kind = error(
        &mut alloc,
        &Service::new("n", "s").pool("a").address(ip("10.0.1.5")),
    );
    assert!(
        kind.to_string()
            .contains("10.0.1.5 is in IPAddressPool b, not in the requested a"),
        "{kind}"
    );
    let svc = dual(FamilyPolicy::RequireDualStack, Service::new("n", "s"))
        .address(ip("10.0.0.5"))
        .address(ip("fd01::5"));
    assert!(matches!(
        error(&mut alloc, &svc),
        AllocErrorKind::DifferentPools { .. }
    ));
}

#[test]
fn malformed_requests_are_refused_before_anything_changes() {
    let mut alloc = allocator(&[PoolSpec::new("lan", &["10.0.0.0/24", "fd00::/120"])]);
    let held = Service::new("n", "s");
    addresses(&mut alloc, &held);
    let before = alloc.clone();
    let two_v4 = held.clone().address(ip("10.0.0.1")).address(ip("10.0.0.2"));
    assert!(matches!(
        error(&mut alloc, &two_v4),
        AllocErrorKind::TwoOfOneFamily { .. }
    ));
    let v6_on_v4 = held.clone().address(ip("fd00::1"));
    assert_eq!(
        error(&mut alloc, &v6_on_v4),
        AllocErrorKind::FamilyNotInService {
            address: ip("fd00::1"),
            family: Family::V6
        }
    );
    let require_one =
        Service::new("n", "s").families(FamilyPolicy::RequireDualStack, &[Family::V4]);
    assert!(matches!(
        error(&mut alloc, &require_one),
        AllocErrorKind::DualStackIncomplete(_)
    ));
    assert_eq!(
        alloc, before,
        "a bad request keeps the address the Service had"
    );
}

#[test]
fn a_named_pool_is_used_even_without_auto_assign() {
    let mut alloc = allocator(&[
        PoolSpec::new("auto", &["10.0.0.0/24"]),
        PoolSpec::new("manual", &["10.0.9.0/24"]).auto_assign(false),
    ]);
    assert_eq!(
        addresses(&mut alloc, &Service::new("n", "a")),
        [ip("10.0.0.0")]
    );
    assert_eq!(
        addresses(&mut alloc, &Service::new("n", "b").pool("manual")),
        [ip("10.0.9.0")]
    );
}

#[test]
fn pools_without_auto_assign_are_never_chosen_automatically() {
    let mut alloc = allocator(&[PoolSpec::new("manual", &["10.0.9.0/24"]).auto_assign(false)]);
    assert_eq!(
        error(&mut alloc, &Service::new("n", "a")),
        AllocErrorKind::NoMatchingPool
    );
}

#[test]
fn an_unknown_or_invalid_named_pool_is_reported() {
    let (mut alloc, errors) = Allocator::new(&[PoolSpec::new("broken", &["10.0.0.1/24"])]);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        error(&mut alloc, &Service::new("n", "a").pool("nope")),
        AllocErrorKind::UnknownPool {
            pool: "nope".into()
        }
    );
    let kind = error(&mut alloc, &Service::new("n", "a").pool("broken"));
    assert_eq!(kind.reason(), "InvalidPool");
    assert!(kind.to_string().contains("host bits are set"), "{kind}");
}

#[test]
fn service_allocation_selects_by_namespace_name_namespace_labels_and_service_labels() {
    let by_name = AllocationRules {
        namespaces: vec!["team-a".into()],
        ..Default::default()
    };
    let by_ns_label = AllocationRules {
        namespace_selectors: vec![LabelSelector::labels([("tier", "gold")])],
        ..Default::default()
    };
    let by_svc_label = AllocationRules {
        service_selectors: vec![LabelSelector::labels([("app", "ingress")])],
        ..Default::default()
    };
    let mut alloc = allocator(&[
        PoolSpec::new("default", &["10.0.0.0/24"]),
        PoolSpec::new("team-a", &["10.0.1.0/24"]).allocation(by_name),
        PoolSpec::new("gold", &["10.0.2.0/24"]).allocation(by_ns_label),
        PoolSpec::new("ingress", &["10.0.3.0/24"]).allocation(by_svc_label),
    ]);
    assert_eq!(
        addresses(&mut alloc, &Service::new("team-a", "x")),
        [ip("10.0.1.0")]
    );
    let gold = Service::new("other", "x").namespace_label("tier", "gold");
    assert_eq!(addresses(&mut alloc, &gold), [ip("10.0.2.0")]);
    let ingress = Service::new("other", "y").label("app", "ingress");
    assert_eq!(addresses(&mut alloc, &ingress), [ip("10.0.3.0")]);
    assert_eq!(
        addresses(&mut alloc, &Service::new("other", "z")),
        [ip("10.0.0.0")]
    );
}

#[test]
fn a_restricted_pool_refuses_other_namespaces_even_by_name() {
    let rules = AllocationRules {
        namespaces: vec!["team-a".into()],
        ..Default::default()
    };
    let mut alloc = allocator(&[PoolSpec::new("team-a", &["10.0.1.0/24"]).allocation(rules)]);
    let kind = error(&mut alloc, &Service::new("team-b", "x").pool("team-a"));
    assert_eq!(kind.reason(), "PoolNotAllowed");
    assert!(
        kind.to_string().contains("namespace team-b is not in"),
        "{kind}"
    );
    assert_eq!(
        error(&mut alloc, &Service::new("team-b", "y")),
        AllocErrorKind::NoMatchingPool
    );
    let kind = error(
        &mut alloc,
        &Service::new("team-b", "z").address(ip("10.0.1.9")),
    );
    assert_eq!(kind.reason(), "PoolNotAllowed");
}

#[test]
fn priority_orders_matching_pools_lowest_first_unset_last_then_plain_pools() {
    let prio = |p| AllocationRules {
        priority: p,
        ..Default::default()
    };
    let mut alloc = allocator(&[
        PoolSpec::new("aa-plain", &["10.0.0.0/32"]),
        PoolSpec::new("bb-unset", &["10.0.1.0/32"]).allocation(prio(None)),
        PoolSpec::new("cc-ten", &["10.0.2.0/32"]).allocation(prio(Some(10))),
        PoolSpec::new("dd-one", &["10.0.3.0/32"]).allocation(prio(Some(1))),
    ]);
    let order: Vec<IpAddr> = (0..4)
        .map(|i| addresses(&mut alloc, &Service::new("n", &format!("s{i}")))[0])
        .collect();
    assert_eq!(
        order,
        [
            ip("10.0.3.0"),
            ip("10.0.2.0"),
            ip("10.0.1.0"),
            ip("10.0.0.0")
        ]
    );
    let kind = error(&mut alloc, &Service::new("n", "late"));
    assert_eq!(
        kind,
        AllocErrorKind::Exhausted {
            tried: "dd-one, cc-ten, bb-unset, aa-plain".into()
        }
    );
}

#[test]
fn equal_pools_are_tried_in_name_order() {
    let mut alloc = allocator(&[
        PoolSpec::new("zeta", &["10.0.0.0/32"]),
        PoolSpec::new("alpha", &["10.0.9.0/32"]),
    ]);
    assert_eq!(
        addresses(&mut alloc, &Service::new("n", "s")),
        [ip("10.0.9.0")]
    );
}

#[test]
fn require_dual_stack_takes_one_address_per_family_from_one_pool() {
    let mut alloc = allocator(&[
        PoolSpec::new("a-v4", &["10.0.0.0/24"]),
        PoolSpec::new("b-dual", &["10.0.1.0/24", "fd00::/120"]),
    ]);
    let svc = dual(FamilyPolicy::RequireDualStack, Service::new("n", "s"));
    let a = alloc.allocate(&svc).unwrap();
    assert_eq!(a.addresses, [ip("10.0.1.0"), ip("fd00::")]);
    assert_eq!(a.pool.as_deref(), Some("b-dual"));
}

#[test]
fn require_dual_stack_without_a_dual_pool_says_so() {
    let mut alloc = allocator(&[
        PoolSpec::new("v4", &["10.0.0.0/24"]),
        PoolSpec::new("v6", &["fd00::/120"]),
    ]);
    let svc = dual(FamilyPolicy::RequireDualStack, Service::new("n", "s"));
    assert_eq!(
        error(&mut alloc, &svc),
        AllocErrorKind::NoPoolForFamily {
            needed: "both IPv4 and IPv6".into(),
            tried: "v4, v6".into()
        }
    );
}

#[test]
fn prefer_dual_stack_takes_a_dual_pool_over_a_higher_priority_single_one() {
    let first = AllocationRules {
        priority: Some(1),
        ..Default::default()
    };
    let mut alloc = allocator(&[
        PoolSpec::new("v4-first", &["10.0.0.0/24"]).allocation(first),
        PoolSpec::new("dual", &["10.0.1.0/24", "fd00::/120"]),
    ]);
    let svc = dual(FamilyPolicy::PreferDualStack, Service::new("n", "s"));
    assert_eq!(addresses(&mut alloc, &svc), [ip("10.0.1.0"), ip("fd00::")]);
}

#[test]
fn prefer_dual_stack_falls_back_to_the_primary_then_the_other_family() {
    let mut alloc = allocator(&[
        PoolSpec::new("v4", &["10.0.0.0/32"]),
        PoolSpec::new("v6", &["fd00::/127"]),
    ]);
    let v6_first =
        Service::new("n", "a").families(FamilyPolicy::PreferDualStack, &[Family::V6, Family::V4]);
    assert_eq!(
        addresses(&mut alloc, &v6_first),
        [ip("fd00::")],
        "primary family first"
    );
    let v4_first = dual(FamilyPolicy::PreferDualStack, Service::new("n", "b"));
    assert_eq!(addresses(&mut alloc, &v4_first), [ip("10.0.0.0")]);
    let v4_first_again = dual(FamilyPolicy::PreferDualStack, Service::new("n", "c"));
    assert_eq!(
        addresses(&mut alloc, &v4_first_again),
        [ip("fd00::1")],
        "then the other family"
    );
}

#[test]
fn prefer_dual_stack_gains_the_missing_family_when_its_pool_gets_one() {
    let mut alloc = allocator(&[PoolSpec::new("lan", &["10.0.0.0/24"])]);
    let svc = dual(FamilyPolicy::PreferDualStack, Service::new("n", "s"));
    assert_eq!(addresses(&mut alloc, &svc), [ip("10.0.0.0")]);
    assert!(
        alloc
            .set_pools(&[PoolSpec::new("lan", &["fd00::/120", "10.0.0.0/24"])])
            .is_empty()
    );
    assert_eq!(
        addresses(&mut alloc, &svc),
        [ip("10.0.0.0"), ip("fd00::")],
        "the IPv4 address stays"
    );
}

#[test]
fn single_stack_gets_one_address_from_a_dual_pool() {
    let mut alloc = allocator(&[PoolSpec::new("dual", &["10.0.1.0/24", "fd00::/120"])]);
    let v6 = Service::new("n", "s").families(FamilyPolicy::SingleStack, &[Family::V6]);
    assert_eq!(addresses(&mut alloc, &v6), [ip("fd00::")]);
}

#[test]
fn leaving_dual_stack_gives_up_the_secondary_address_only() {
    let mut alloc = allocator(&[PoolSpec::new("dual", &["10.0.1.0/24", "fd00::/120"])]);
    let svc = dual(FamilyPolicy::PreferDualStack, Service::new("n", "s"));
    assert_eq!(addresses(&mut alloc, &svc), [ip("10.0.1.0"), ip("fd00::")]);
    let single = svc.families(FamilyPolicy::SingleStack, &[Family::V4]);
    assert_eq!(addresses(&mut alloc, &single), [ip("10.0.1.0")]);
    assert_eq!(alloc.usage("dual").unwrap().v6.assigned, 0);
}

fn dns(name: &str, protocol: Protocol) -> Service {
    Service::new("dns", name).sharing("dns").port(protocol, 53)
}

#[test]
fn tcp_and_udp_53_share_one_address() {
    let mut alloc = allocator(&[PoolSpec::new("lan", &["10.0.0.0/24"])]);
    addresses(&mut alloc, &Service::new("x", "first"));
    let tcp = addresses(&mut alloc, &dns("tcp", Protocol::Tcp));
    let udp = addresses(&mut alloc, &dns("udp", Protocol::Udp));
    assert_eq!(tcp, [ip("10.0.0.1")]);
    assert_eq!(udp, tcp, "the second Service joins the first's address");
    let holders: Vec<_> = alloc.holders_of(ip("10.0.0.1")).cloned().collect();
    assert_eq!(
        holders,
        [ServiceKey::new("dns", "tcp"), ServiceKey::new("dns", "udp")]
    );
    assert_eq!(alloc.usage("lan").unwrap().v4.assigned, 2);
}

#[test]
fn a_port_collision_gets_another_address_automatically_and_an_error_when_requested() {
    let mut alloc = allocator(&[PoolSpec::new("lan", &["10.0.0.0/24"])]);
    let first = addresses(&mut alloc, &dns("a", Protocol::Udp));
    let second = addresses(&mut alloc, &dns("b", Protocol::Udp));
    assert_ne!(first, second);
    let kind = error(&mut alloc, &dns("c", Protocol::Udp).address(first[0]));
    assert_eq!(
        kind.to_string(),
        "10.0.0.0 is held by dns/a and can't be shared: both use UDP/53"
    );
    assert_eq!(kind.reason(), "AddressInUse");
}

#[test]
fn services_without_a_key_or_with_other_backends_never_share() {
    let mut alloc = allocator(&[PoolSpec::new("lan", &["10.0.0.0/24"])]);
    let held = addresses(
        &mut alloc,
        &Service::new("n", "plain").port(Protocol::Tcp, 80),
    )[0];
    let keyed = Service::new("n", "keyed")
        .sharing("k")
        .port(Protocol::Tcp, 81)
        .address(held);
    assert!(matches!(
        error(&mut alloc, &keyed),
        AllocErrorKind::InUse {
            reason: SharingRefusal::HolderHasNoKey,
            ..
        }
    ));
    let local = |name: &str, app: &str, port| {
        Service::new("n", name)
            .sharing("k")
            .port(Protocol::Tcp, port)
            .backend(Backend::Local {
                selector: [("app".to_string(), app.to_string())].into(),
            })
    };
    let a = addresses(&mut alloc, &local("a", "web", 1));
    assert_eq!(
        addresses(&mut alloc, &local("b", "web", 2)),
        a,
        "Local with identical selectors shares"
    );
    assert_ne!(
        addresses(&mut alloc, &local("c", "api", 3)),
        a,
        "Local with other selectors does not"
    );
    let cluster = Service::new("n", "d")
        .sharing("k")
        .port(Protocol::Tcp, 4)
        .address(a[0]);
    assert!(matches!(
        error(&mut alloc, &cluster),
        AllocErrorKind::InUse {
            reason: SharingRefusal::BackendMismatch { .. },
            ..
        }
    ));
}

#[test]
fn the_service_whose_request_makes_sharing_impossible_is_the_one_that_moves() {
    let mut alloc = allocator(&[PoolSpec::new("lan", &["10.0.0.0/24"])]);
    let tcp = addresses(&mut alloc, &dns("tcp", Protocol::Tcp));
    assert_eq!(addresses(&mut alloc, &dns("udp", Protocol::Udp)), tcp);
    // The UDP Service now also wants TCP/53: it may no longer share, so it moves.
    let edited = dns("udp", Protocol::Udp).port(Protocol::Tcp, 53);
    let moved = addresses(&mut alloc, &edited);
    assert_ne!(moved, tcp);
    assert_eq!(
        addresses(&mut alloc, &dns("tcp", Protocol::Tcp)),
        tcp,
        "the other keeps its address"
    );
}

#[test]
fn a_changed_request_releases_the_old_address() {
    let mut alloc = allocator(&[
        PoolSpec::new("a", &["10.0.0.0/24"]),
        PoolSpec::new("b", &["10.0.1.0/24"]),
    ]);
    let svc = Service::new("n", "s");
    assert_eq!(addresses(&mut alloc, &svc), [ip("10.0.0.0")]);
    assert_eq!(
        addresses(&mut alloc, &svc.clone().pool("b")),
        [ip("10.0.1.0")]
    );
    assert_eq!(
        addresses(&mut alloc, &svc.clone().address(ip("10.0.0.9"))),
        [ip("10.0.0.9")]
    );
    assert_eq!(
        alloc.usage("b").unwrap().v4.assigned,
        0,
        "the pool-b address went back"
    );
    assert_eq!(alloc.usage("a").unwrap().v4.assigned, 1);
}

#[test]
fn avoid_buggy_ips_skips_dot_zero_and_dot_255() {
    let mut alloc =
        allocator(&[PoolSpec::new("lan", &["10.0.0.254-10.0.1.1"]).avoid_buggy_ips(true)]);
    assert_eq!(
        addresses(&mut alloc, &Service::new("n", "a")),
        [ip("10.0.0.254")]
    );
    assert_eq!(
        addresses(&mut alloc, &Service::new("n", "b")),
        [ip("10.0.1.1")]
    );
    assert_eq!(
        error(&mut alloc, &Service::new("n", "c")).reason(),
        "PoolExhausted"
    );
    let kind = error(
        &mut alloc,
        &Service::new("n", "d").address(ip("10.0.0.255")),
    );
    assert!(
        matches!(kind, AllocErrorKind::BuggyAddress { .. }),
        "{kind:?}"
    );
    let usage = alloc.usage("lan").unwrap().v4;
    assert_eq!((usage.assigned, usage.available), (2, 0));
}

#[test]
fn exhaustion_is_reported_and_an_extended_pool_serves_the_waiting_service() {
    let mut alloc = allocator(&[PoolSpec::new("lan", &["10.0.0.1"])]);
    addresses(&mut alloc, &Service::new("n", "a"));
    let waiting = Service::new("n", "b");
    assert_eq!(
        error(&mut alloc, &waiting),
        AllocErrorKind::Exhausted {
            tried: "lan".into()
        }
    );
    alloc.set_pools(&[PoolSpec::new("lan", &["10.0.0.1-10.0.0.2"])]);
    assert_eq!(addresses(&mut alloc, &waiting), [ip("10.0.0.2")]);
    assert_eq!(
        alloc
            .assignment(&ServiceKey::new("n", "a"))
            .unwrap()
            .addresses,
        [ip("10.0.0.1")]
    );
}

#[test]
fn a_shrunk_pool_never_moves_an_address_it_no_longer_holds() {
    let mut alloc = allocator(&[PoolSpec::new("lan", &["10.0.0.0/30"])]);
    let svc = Service::new("n", "s").pool("lan");
    addresses(&mut alloc, &Service::new("n", "first"));
    let held = addresses(&mut alloc, &svc);
    alloc.set_pools(&[PoolSpec::new("lan", &["10.0.0.2/31"])]);
    let a = alloc.allocate(&svc).unwrap();
    assert_eq!(
        (a.addresses.clone(), a.orphaned.clone()),
        (held.clone(), held.clone())
    );
    assert_eq!(a.pool, None);
    alloc.set_pools(&[]);
    assert_eq!(
        alloc.allocate(&svc).unwrap().addresses,
        held,
        "deleting the pool keeps it too"
    );
    alloc.set_pools(&[PoolSpec::new("other", &["10.0.0.0/30"])]);
    assert_eq!(
        addresses(&mut alloc, &Service::new("n", "new")),
        [ip("10.0.0.2")],
        "orphaned addresses are still held when a pool covers them again"
    );
}

#[test]
fn restore_keeps_every_recorded_address_and_the_older_wins_a_conflict() {
    let (mut alloc, _) = Allocator::new(&[PoolSpec::new("lan", &["10.0.0.0/24"])]);
    let old = Service::new("n", "old").created_at(100);
    let young = Service::new("n", "young").created_at(200);
    let orphan = Service::new("n", "orphan").created_at(300);
    let same = [ip("10.0.0.7")];
    let outside = [ip("192.168.0.1")];
    let results = alloc.restore([
        (&young, &same[..]),
        (&orphan, &outside[..]),
        (&old, &same[..]),
    ]);
    let err = results[0].as_ref().unwrap_err();
    assert_eq!(err.service, young.key);
    assert_eq!(err.kind.reason(), "AddressConflict");
    assert!(
        err.to_string()
            .contains("10.0.0.7 is also in the status of n/old, which is older"),
        "{err}"
    );
    assert_eq!(results[1].as_ref().unwrap().orphaned, outside);
    assert_eq!(
        results[2].as_ref().unwrap().addresses,
        same,
        "results come in the order given"
    );
    assert_eq!(
        addresses(&mut alloc, &young),
        [ip("10.0.0.0")],
        "the younger gets a fresh address"
    );
    assert_eq!(addresses(&mut alloc, &old), same);
}

#[test]
fn an_ipv6_slash_48_pool_works_without_enumerating_it() {
    let mut alloc = allocator(&[PoolSpec::new("big", &["fd00:1::/48"])]);
    let svc = |i: usize| {
        Service::new("n", &format!("s{i}")).families(FamilyPolicy::SingleStack, &[Family::V6])
    };
    for i in 0..1000 {
        addresses(&mut alloc, &svc(i));
    }
    assert_eq!(addresses(&mut alloc, &svc(1000)), [ip("fd00:1::3e8")]);
    let usage = alloc.usage("big").unwrap().v6;
    assert_eq!(
        (usage.assigned, usage.available),
        (1001, (1u128 << 80) - 1001)
    );
}

#[test]
fn overlapping_pools_leave_the_newer_unused() {
    let (mut alloc, errors) = Allocator::new(&[
        PoolSpec::new("old", &["10.0.0.0/24"]).created_at(1),
        PoolSpec::new("new", &["10.0.0.128/25"]).created_at(2),
    ]);
    assert_eq!(errors.len(), 1);
    assert_eq!(alloc.pool_errors().count(), 1);
    assert!(alloc.usage("new").is_none());
    assert_eq!(
        error(&mut alloc, &Service::new("n", "s").pool("new")).reason(),
        "InvalidPool"
    );
}
