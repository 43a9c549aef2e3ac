//! Properties of the allocator over random pools, Services and operations, each
//! checked against a reference written here from the rules, not from the code.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ironlb::ipam::{
    AddressRange, AllocErrorKind, AllocationRules, Allocator, Backend, Family, FamilyPolicy,
    LabelSelector, NamespaceMatch, PoolSpec, Port, Protocol, Service, ServiceKey,
};
use proptest::prelude::*;

const CASES: u32 = 1000;

/// Small address worlds: the IPv4 one straddles a /24 boundary so that
/// `avoidBuggyIPs` matters; pools are built from their segments.
const V4_SEGMENTS: [&str; 6] = [
    "10.0.0.244/30",
    "10.0.0.248-10.0.0.251",
    "10.0.0.252-10.0.1.3",
    "10.0.1.4/30",
    "10.0.1.8",
    "10.0.1.9-10.0.1.11",
];
const V6_SEGMENTS: [&str; 3] = ["fd00::/126", "fd00::4-fd00::6", "fd00::8/127"];

fn world() -> Vec<IpAddr> {
    let mut all = Vec::new();
    for seg in V4_SEGMENTS.iter().chain(V6_SEGMENTS.iter()) {
        let r = AddressRange::parse(seg).expect("segment");
        let (mut n, end) = (number(r.start()), number(r.end()));
        while n <= end {
            all.push(from_number(r.family(), n));
            n += 1;
        }
    }
    all.push("10.9.9.9".parse().expect("outside")); // in no pool, ever
    all
}

fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_number(family: Family, n: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::from(std::net::Ipv4Addr::from(u32::try_from(n).expect("v4"))),
        Family::V6 => IpAddr::from(std::net::Ipv6Addr::from(n)),
    }
}

fn pool_strategy(name: &'static str) -> impl Strategy<Value = PoolSpec> {
    (
        proptest::sample::subsequence(V4_SEGMENTS.to_vec(), 0..=3),
        proptest::sample::subsequence(V6_SEGMENTS.to_vec(), 0..=2),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of((proptest::option::of(0..3i32), any::<bool>())),
        0..3i64,
        0..3u8,
    )
        .prop_map(move |(v4, v6, auto, buggy, rules, created, across)| {
            let entries: Vec<&str> = v4.into_iter().chain(v6).collect();
            let mut spec = PoolSpec::new(name, &entries)
                .auto_assign(auto)
                .avoid_buggy_ips(buggy)
                .created_at(created);
            if let Some((priority, only_ns_x)) = rules {
                spec = spec.allocation(AllocationRules {
                    priority,
                    namespaces: if only_ns_x { vec!["x".into()] } else { vec![] },
                    ..Default::default()
                });
            }
            match across {
                1 => spec.cross_namespace(NamespaceMatch {
                    namespaces: vec!["x".into()],
                    ..Default::default()
                }),
                2 => spec.cross_namespace(NamespaceMatch {
                    namespace_selectors: vec![LabelSelector::default()],
                    ..Default::default()
                }),
                _ => spec,
            }
        })
}

fn pools_strategy() -> impl Strategy<Value = Vec<PoolSpec>> {
    (
        pool_strategy("p1"),
        pool_strategy("p2"),
        pool_strategy("p3"),
    )
        .prop_map(|(a, b, c)| vec![a, b, c])
}

fn service_strategy() -> impl Strategy<Value = Service> {
    let world = world();
    (
        (0..8usize, proptest::sample::select(vec!["x", "y"])),
        prop_oneof![
            Just((FamilyPolicy::SingleStack, vec![Family::V4])),
            Just((FamilyPolicy::SingleStack, vec![Family::V6])),
            Just((FamilyPolicy::PreferDualStack, vec![Family::V4, Family::V6])),
            Just((FamilyPolicy::PreferDualStack, vec![Family::V6, Family::V4])),
            Just((FamilyPolicy::RequireDualStack, vec![Family::V4, Family::V6])),
        ],
        proptest::collection::vec(proptest::sample::select(world), 0..=2),
        proptest::option::of(proptest::sample::select(vec!["p1", "p2", "p3", "gone"])),
        proptest::option::of(proptest::sample::select(vec!["a", "b"])),
        proptest::sample::subsequence(
            vec![
                (Protocol::Tcp, 53),
                (Protocol::Udp, 53),
                (Protocol::Tcp, 80),
            ],
            0..=2,
        ),
        0..3u8,
        0..4i64,
    )
        .prop_map(
            |((n, ns), (policy, families), addrs, pool, key, ports, backend, created)| {
                let mut svc = Service::new(ns, &format!("s{n}"))
                    .families(policy, &families)
                    .created_at(created);
                // Requests of a family the Service lacks are exercised by the scenario tests.
                for a in addrs
                    .into_iter()
                    .filter(|a| families.contains(&Family::of(*a)))
                {
                    svc = svc.address(a);
                }
                if let Some(p) = pool {
                    svc = svc.pool(p);
                }
                if let Some(k) = key {
                    svc = svc.sharing(k);
                }
                for (protocol, port) in ports {
                    svc = svc.port(protocol, port);
                }
                svc.backend(match backend {
                    0 => Backend::Cluster,
                    b => Backend::Local {
                        selector: [("app".to_string(), b.to_string())].into(),
                    },
                })
            },
        )
}

#[derive(Clone, Debug)]
enum Op {
    Allocate(Box<Service>),
    Release(usize),
    SetPools(Vec<PoolSpec>),
}

fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            6 => service_strategy().prop_map(|s| Op::Allocate(Box::new(s))),
            2 => (0..8usize).prop_map(Op::Release),
            1 => pools_strategy().prop_map(Op::SetPools),
        ],
        1..30,
    )
}

/// The allocator beside what the test knows of each Service's last accepted spec.
struct World {
    alloc: Allocator,
    pools: Vec<PoolSpec>,
    /// The spec each holder was last allocated with: what its claim reflects.
    spec: BTreeMap<ServiceKey, Service>,
    /// Pools changed under held addresses: those stay put even when that splits a
    /// Service's addresses across pools (never moving an address comes first).
    repartitioned: bool,
}

impl World {
    fn new(pools: Vec<PoolSpec>) -> Self {
        let (alloc, _) = Allocator::new(&pools);
        Self {
            alloc,
            pools,
            spec: BTreeMap::new(),
            repartitioned: false,
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Allocate(svc) => match self.alloc.allocate(svc) {
                // A request refused for its form changes nothing.
                Err(e)
                    if matches!(
                        e.kind,
                        AllocErrorKind::TwoOfOneFamily { .. }
                            | AllocErrorKind::FamilyNotInService { .. }
                            | AllocErrorKind::DualStackIncomplete(_)
                    ) => {}
                _ => {
                    self.spec.insert(svc.key.clone(), (**svc).clone());
                }
            },
            Op::Release(n) => {
                for ns in ["x", "y"] {
                    self.alloc.release(&ServiceKey::new(ns, format!("s{n}")));
                }
            }
            Op::SetPools(pools) => {
                self.repartitioned |= self.alloc.assignments().next().is_some();
                self.alloc.set_pools(pools);
                self.pools = pools.clone();
            }
        }
    }

    fn holdings(&self) -> Vec<(Service, Vec<IpAddr>)> {
        self.alloc
            .assignments()
            .map(|(k, a)| (self.spec[k].clone(), a.to_vec()))
            .collect()
    }
}

/// MetalLB's sharing rule, restated.
/// MetalLB's rule within a namespace; across namespaces only where the pool
/// (`across`) names both, and never for `Local` Services.
fn may_share(a: &Service, b: &Service, across: Option<&NamespaceMatch>) -> bool {
    let key = |s: &Service| s.sharing_key.clone().filter(|k| !k.is_empty());
    let ports = |s: &Service| s.ports.iter().copied().collect::<BTreeSet<Port>>();
    let namespaces = a.key.namespace == b.key.namespace
        || (across.is_some_and(|rule| {
            rule.matches(&a.key.namespace, &a.namespace_labels)
                && rule.matches(&b.key.namespace, &b.namespace_labels)
        }) && a.backend == Backend::Cluster
            && b.backend == Backend::Cluster);
    namespaces
        && key(a).is_some()
        && key(a) == key(b)
        && ports(a).is_disjoint(&ports(b))
        && a.backend == b.backend
}

/// The valid pools' allocatable addresses, by enumeration.
fn pool_members(alloc: &Allocator, pools: &[PoolSpec]) -> BTreeMap<String, BTreeSet<IpAddr>> {
    pools
        .iter()
        .filter(|p| alloc.usage(&p.name).is_some())
        .map(|p| {
            let ranges: Vec<AddressRange> = p
                .addresses
                .iter()
                .map(|a| AddressRange::parse(a).expect("valid pool"))
                .collect();
            let members = world()
                .into_iter()
                .filter(|ip| ranges.iter().any(|r| r.contains(*ip)))
                .filter(|ip| {
                    !(p.avoid_buggy_ips
                        && matches!(ip, IpAddr::V4(v4) if matches!(v4.octets()[3], 0 | 255)))
                })
                .collect();
            (p.name.clone(), members)
        })
        .collect()
}

fn check_invariants(w: &World) -> Result<(), TestCaseError> {
    let members = pool_members(&w.alloc, &w.pools);
    let mut by_address: BTreeMap<IpAddr, Vec<&Service>> = BTreeMap::new();
    let holdings = w.holdings();
    for (svc, addrs) in &holdings {
        let families: BTreeSet<Family> = addrs.iter().map(|a| Family::of(*a)).collect();
        prop_assert_eq!(
            families.len(),
            addrs.len(),
            "{} holds two of one family: {:?}",
            svc.key,
            addrs
        );
        let pools: BTreeSet<&String> = addrs
            .iter()
            .filter_map(|a| members.iter().find(|(_, m)| m.contains(a)).map(|(n, _)| n))
            .collect();
        if !w.repartitioned {
            prop_assert!(
                pools.len() <= 1,
                "{} holds addresses of pools {:?}",
                svc.key,
                pools
            );
        }
        for a in addrs {
            by_address.entry(*a).or_default().push(svc);
        }
    }
    for (ip, holders) in &by_address {
        // The address's pool judges, also after the pools were redrawn under
        // its holders: a share the pools no longer allow has ended.
        let across = members
            .iter()
            .find(|(_, m)| m.contains(ip))
            .and_then(|(name, _)| w.pools.iter().find(|p| &p.name == name))
            .and_then(|p| p.cross_namespace.as_ref());
        for (i, a) in holders.iter().enumerate() {
            for b in &holders[i + 1..] {
                prop_assert!(
                    may_share(a, b, across),
                    "{} held by {} and {}, which may not share",
                    ip,
                    a.key,
                    b.key
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// No address is ever held by two Services that may not share it, no Service
    /// holds two addresses of one family, and a Service's addresses come from one
    /// pool (unless the pools were redrawn under them).
    #[test]
    fn no_address_is_held_by_two_incompatible_services(pools in pools_strategy(), ops in ops_strategy()) {
        let mut w = World::new(pools);
        for op in &ops {
            w.apply(op);
            check_invariants(&w)?;
        }
    }

    /// Allocating then releasing a new Service leaves the allocator exactly as it
    /// was, and allocating again gives the same answer; a failed allocation
    /// changes nothing.
    #[test]
    fn allocate_release_allocate_round_trips(
        pools in pools_strategy(),
        ops in ops_strategy(),
        svc in service_strategy(),
    ) {
        let mut w = World::new(pools);
        for op in &ops {
            w.apply(op);
        }
        w.alloc.release(&svc.key);
        let before = w.alloc.clone();
        let first = w.alloc.allocate(&svc);
        if first.is_err() {
            prop_assert_eq!(&w.alloc, &before);
            return Ok(());
        }
        w.alloc.release(&svc.key);
        prop_assert_eq!(&w.alloc, &before);
        prop_assert_eq!(w.alloc.allocate(&svc), first);
    }

    /// A fresh allocator fed the recorded addresses reaches the very same state,
    /// and so makes the same next decision.
    #[test]
    fn restore_of_a_snapshot_rebuilds_the_same_state(
        pools in pools_strategy(),
        ops in ops_strategy(),
        next in service_strategy(),
    ) {
        let mut w = World::new(pools);
        for op in &ops {
            w.apply(op);
        }
        let snapshot = w.holdings();
        let (mut fresh, _) = Allocator::new(&w.pools);
        let results = fresh.restore(snapshot.iter().map(|(s, a)| (s, a.as_slice())));
        for r in &results {
            prop_assert!(r.is_ok(), "restore of a consistent snapshot failed: {:?}", r);
        }
        prop_assert_eq!(&fresh, &w.alloc);
        prop_assert_eq!(fresh.allocate(&next), w.alloc.allocate(&next));
    }

    /// Assigned and available counts per pool and family equal those of an
    /// enumeration of the pool.
    #[test]
    fn usage_counts_equal_a_naive_model(pools in pools_strategy(), ops in ops_strategy()) {
        let mut w = World::new(pools);
        for op in &ops {
            w.apply(op);
        }
        let held: BTreeSet<IpAddr> = w.alloc.assignments().flat_map(|(_, a)| a.iter().copied()).collect();
        for (name, members) in pool_members(&w.alloc, &w.pools) {
            let usage = w.alloc.usage(&name).expect("valid pool");
            for (family, got) in [(Family::V4, usage.v4), (Family::V6, usage.v6)] {
                let of_family: Vec<&IpAddr> = members.iter().filter(|ip| Family::of(**ip) == family).collect();
                let assigned = of_family.iter().filter(|ip| held.contains(**ip)).count() as u128;
                prop_assert_eq!(got.assigned, assigned, "{} {} assigned", name, family);
                prop_assert_eq!(got.available, of_family.len() as u128 - assigned, "{} {} available", name, family);
            }
        }
    }
}
