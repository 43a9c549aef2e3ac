//! Properties of the forwarder's pure parts: the listener plan and the PROXY
//! protocol headers (read back with the `ppp` parser, as a backend would).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ironlb::api::annotations::ProxyVersion;
use ironlb::forwarder::plan::{Endpoint, Frontend, FrontendPort, Policy, Protocol, plan};
use ironlb::forwarder::proxy_header;
use ironlb::ipam::ServiceKey;
use proptest::prelude::*;

const NODES: [&str; 3] = ["a", "b", "c"];

fn addresses() -> Vec<IpAddr> {
    vec![
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
    ]
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)]
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    (
        prop_oneof![
            (1u8..20).prop_map(|i| IpAddr::V4(Ipv4Addr::new(10, 1, 0, i))),
            (1u16..20).prop_map(|i| IpAddr::V6(Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, i))),
        ],
        proptest::option::of(0usize..3),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::btree_map(
            (
                prop_oneof![Just("http".to_string()), Just("dns".to_string())],
                protocol(),
            ),
            8000u16..8003,
            0..3,
        ),
    )
        .prop_map(|(address, node, ready, serving, ports)| Endpoint {
            address,
            node: node.map(|n| NODES[n].to_string()),
            ready,
            serving: serving || ready,
            ports,
        })
}

fn frontend(index: usize) -> impl Strategy<Value = Frontend> {
    (
        proptest::sample::subsequence(addresses(), 1..=3),
        proptest::collection::vec(
            (
                prop_oneof![Just("http".to_string()), Just("dns".to_string())],
                prop_oneof![Just(53u16), Just(80u16)],
                protocol(),
            ),
            1..3,
        ),
        any::<bool>(),
        proptest::collection::vec(endpoint(), 0..6),
    )
        .prop_map(move |(addresses, ports, local, endpoints)| Frontend {
            service: ServiceKey::new("ns", format!("svc-{index}")),
            addresses,
            ports: ports
                .into_iter()
                .map(|(name, port, protocol)| FrontendPort {
                    name,
                    port,
                    protocol,
                    routing: None,
                })
                .collect(),
            policy: Policy {
                local,
                ..Policy::default()
            },
            endpoints,
        })
}

fn frontends() -> impl Strategy<Value = Vec<Frontend>> {
    (1usize..5).prop_flat_map(|n| (0..n).map(frontend).collect::<Vec<_>>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn listeners_are_owned_unique_complete_and_use_allowed_backends(
        fronts in frontends(),
        owned in proptest::sample::subsequence(addresses(), 0..=3),
        node in 0usize..3,
    ) {
        let node = NODES[node];
        let owned: BTreeSet<IpAddr> = owned.into_iter().collect();
        let p = plan(node, &owned, &fronts);
        let mut keys = BTreeSet::new();
        for l in &p.listeners {
            prop_assert!(owned.contains(&l.address.ip()), "listener on an address not owned");
            prop_assert!(keys.insert(l.key()), "two listeners on one port");
            let f = fronts.iter().find(|f| f.service == l.service).unwrap();
            prop_assert!(f.addresses.contains(&l.address.ip()));
            let ports: Vec<&FrontendPort> = f
                .ports
                .iter()
                .filter(|p| p.port == l.address.port() && p.protocol == l.protocol)
                .collect();
            prop_assert!(!ports.is_empty());
            // The first such port of the Service decides (later duplicates
            // are the same listener).
            let port = ports[0];
            let candidates: Vec<&Endpoint> = f
                .endpoints
                .iter()
                .filter(|e| !f.policy.local || e.node.as_deref() == Some(node))
                .filter(|e| e.ports.contains_key(&(port.name.clone(), port.protocol)))
                .collect();
            let any_ready = candidates.iter().any(|e| e.ready);
            for b in &l.backends {
                prop_assert_eq!(b.address.is_ipv4(), l.address.is_ipv4(), "backend of another family");
                // One address may be listed twice (a terminating and a ready
                // copy, as during a rollout): one copy must allow it.
                let copies: Vec<&&Endpoint> = candidates
                    .iter()
                    .filter(|e| e.address == b.address.ip()
                        && e.ports[&(port.name.clone(), port.protocol)] == b.address.port())
                    .collect();
                prop_assert!(!copies.is_empty(), "backend {:?} is no candidate endpoint", b);
                if any_ready {
                    prop_assert!(copies.iter().any(|e| e.ready), "a terminating endpoint while a ready one exists");
                } else {
                    prop_assert!(copies.iter().any(|e| e.serving), "an endpoint that is not serving");
                }
                if f.policy.local {
                    prop_assert!(
                        copies.iter().any(|e| e.node.as_deref() == Some(node)),
                        "Local used another node's endpoint"
                    );
                }
            }
            // Nothing usable is left out.
            let usable = candidates
                .iter()
                .filter(|e| e.address.is_ipv4() == l.address.is_ipv4())
                .filter(|e| if any_ready { e.ready } else { e.serving })
                .map(|e| SocketAddr::new(e.address, e.ports[&(port.name.clone(), port.protocol)]))
                .collect::<BTreeSet<_>>();
            let got = l.backends.iter().map(|b| b.address).collect::<BTreeSet<_>>();
            prop_assert_eq!(got, usable);
        }
        // Every owned address and port of every Service has its listener, or
        // is a conflict the Service lost.
        for f in &fronts {
            for port in &f.ports {
                for ip in f.addresses.iter().filter(|ip| owned.contains(ip)) {
                    let key = (SocketAddr::new(*ip, port.port), port.protocol);
                    let l = p.listeners.iter().find(|l| l.key() == key);
                    prop_assert!(l.is_some(), "no listener for {:?}", key);
                    let l = l.unwrap();
                    if l.service != f.service {
                        prop_assert!(l.service < f.service, "the later Service kept the port");
                        prop_assert!(p.conflicts.iter().any(|c| c.refused == f.service
                            && c.kept == l.service && (c.address, c.protocol) == key));
                    }
                }
            }
        }
    }

    #[test]
    fn the_plan_does_not_depend_on_input_order(
        fronts in frontends(),
        owned in proptest::sample::subsequence(addresses(), 0..=3),
        seed in any::<u64>(),
    ) {
        let owned: BTreeSet<IpAddr> = owned.into_iter().collect();
        let mut shuffled = fronts.clone();
        let n = shuffled.len();
        shuffled.rotate_left((seed as usize) % n.max(1));
        for f in &mut shuffled {
            f.endpoints.reverse();
        }
        prop_assert_eq!(plan("a", &owned, &fronts), plan("a", &owned, &shuffled));
    }

    #[test]
    fn proxy_headers_read_back_as_the_addresses_sent(
        v4 in any::<bool>(),
        a in any::<u128>(),
        b in any::<u128>(),
        sp in any::<u16>(),
        dp in any::<u16>(),
        v2 in any::<bool>(),
    ) {
        let (client, service) = if v4 {
            (
                SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a as u32)), sp),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::from(b as u32)), dp),
            )
        } else {
            // Mapped addresses are sent as IPv4 by design; keep to real IPv6.
            let six = |x: u128| {
                let ip = Ipv6Addr::from(x | (1 << 127));
                IpAddr::V6(ip)
            };
            (SocketAddr::new(six(a), sp), SocketAddr::new(six(b), dp))
        };
        let version = if v2 { ProxyVersion::V2 } else { ProxyVersion::V1 };
        let bytes = proxy_header::tcp(version, client, service);
        match ppp::HeaderResult::parse(&bytes) {
            ppp::HeaderResult::V1(Ok(h)) => {
                prop_assert!(!v2);
                prop_assert_eq!(h.header.len(), bytes.len());
                let want = ppp::v1::Addresses::from((client, service));
                prop_assert_eq!(h.addresses, want);
            }
            ppp::HeaderResult::V2(Ok(h)) => {
                prop_assert!(v2);
                prop_assert_eq!(h.len(), bytes.len(), "length field disagrees with the bytes");
                prop_assert_eq!(h.command, ppp::v2::Command::Proxy);
                prop_assert_eq!(h.protocol, ppp::v2::Protocol::Stream);
                prop_assert_eq!(h.addresses, ppp::v2::Addresses::from((client, service)));
            }
            other => prop_assert!(false, "unreadable header: {:?}", other),
        }
    }
}

#[test]
fn an_endpoint_port_map_is_matched_by_name_and_protocol() {
    // A UDP port never takes a TCP endpoint port of the same name.
    let f = Frontend {
        service: ServiceKey::new("ns", "dns"),
        addresses: vec!["10.0.0.1".parse().unwrap()],
        ports: vec![FrontendPort {
            name: "dns".into(),
            port: 53,
            protocol: Protocol::Udp,
            routing: None,
        }],
        policy: Policy::default(),
        endpoints: vec![Endpoint {
            address: "10.1.0.1".parse().unwrap(),
            node: None,
            ready: true,
            serving: true,
            ports: BTreeMap::from([(("dns".to_string(), Protocol::Tcp), 5353)]),
        }],
    };
    let owned = BTreeSet::from(["10.0.0.1".parse().unwrap()]);
    let p = plan("a", &owned, &[f]);
    assert!(p.listeners[0].backends.is_empty());
}
