//! The speaker's view of a cluster, as a pure function: from Services, pools,
//! L2Advertisements, Nodes and EndpointSlices to the addresses to announce and
//! who may announce each.
//!
//! The watchers that feed it are thin; every decision is here, so tests need no
//! API server. One file per job: [`l2`] (announcements), [`bgp`] (peers and
//! advertisements), [`frontends`] (what the forwarder carries), [`nodes`]
//! (the election's nodes and gossip seeds).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node as K8sNode, Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use crate::api::{IPAddressPool, L2Advertisement};
use crate::election::{Constraints, Node};
use crate::forwarder::plan::{
    Endpoint, Frontend, FrontendPort, FrontendRoute, FrontendRouting, FrontendShare, Policy,
    Protocol,
};
use crate::ipam::{Allocator, LabelSelector, ServiceKey};
use crate::k8s::translate;

mod bgp;
mod frontends;
mod incremental;
mod l2;
mod nodes;

use bgp::bgp_advertisements;
pub use bgp::{BgpAdvertisement, BgpProblem, WantedPeer, bgp_advertisement_problems, bgp_peers};
pub use frontends::{FrontendError, frontends, kernel_path_fits};
pub use incremental::{CachedObjects, Changes, IncrementalView, Lookup};
pub use l2::{Announcement, Announcements, announcements, by_address};
pub use nodes::{node_seeds, nodes};

/// Everything the speaker reads from the cluster.
pub struct ClusterView<'a> {
    /// All Services.
    pub services: Vec<&'a Service>,
    /// All pools.
    pub pools: Vec<&'a IPAddressPool>,
    /// All advertisements.
    pub advertisements: Vec<&'a L2Advertisement>,
    /// All EndpointSlices, by the Service they belong to.
    pub slices: Slices<'a>,
    /// Serve Services without a class.
    pub default_class: bool,
    /// The BGP objects.
    pub bgp: BgpObjects<'a>,
    /// The Gateway API objects (none while the feature is off or the CRDs
    /// are not installed).
    pub gateways: crate::gateway::snapshot::Objects<'a>,
}

/// The BGP kinds as the speaker reads them.
#[derive(Clone, Default)]
pub struct BgpObjects<'a> {
    /// All BGPPeers.
    pub peers: Vec<&'a crate::api::BGPPeer>,
    /// All BGPAdvertisements.
    pub advertisements: Vec<&'a crate::api::BGPAdvertisement>,
    /// All BFDProfiles.
    pub bfd_profiles: Vec<&'a crate::api::BFDProfile>,
    /// All Communities.
    pub communities: Vec<&'a crate::api::Community>,
    /// The Secrets of the speaker's namespace (for `passwordSecret`).
    pub secrets: Vec<&'a k8s_openapi::api::core::v1::Secret>,
}

impl BgpObjects<'_> {
    /// Community aliases by name, from every Community object.
    fn aliases(&self) -> BTreeMap<String, String> {
        self.communities
            .iter()
            .flat_map(|c| c.spec.communities.iter())
            .map(|a| (a.name.clone(), a.value.clone()))
            .collect()
    }
}

/// A selector that matches no node: a key no label can have twice.
fn nothing() -> LabelSelector {
    LabelSelector {
        match_labels: Default::default(),
        match_expressions: vec![
            crate::ipam::Requirement {
                key: "ironlb.dev/unreadable-node-selector".into(),
                operator: crate::ipam::Operator::Exists,
                values: vec![],
            },
            crate::ipam::Requirement {
                key: "ironlb.dev/unreadable-node-selector".into(),
                operator: crate::ipam::Operator::DoesNotExist,
                values: vec![],
            },
        ],
    }
}

/// EndpointSlices by the Service they belong to (their namespace and
/// `kubernetes.io/service-name` label): finding a Service's costs the same
/// with ten Services as with ten thousand.
#[derive(Default)]
pub struct Slices<'a>(HashMap<ServiceKey, Vec<&'a EndpointSlice>>);

impl<'a> Slices<'a> {
    /// The EndpointSlices of Service `key`.
    fn of(&self, key: &ServiceKey) -> &[&'a EndpointSlice] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }
}

impl<'a> FromIterator<&'a EndpointSlice> for Slices<'a> {
    fn from_iter<I: IntoIterator<Item = &'a EndpointSlice>>(slices: I) -> Self {
        let mut by_service: HashMap<ServiceKey, Vec<&'a EndpointSlice>> = HashMap::new();
        for slice in slices {
            let (Some(namespace), Some(service)) = (
                slice.metadata.namespace.as_ref(),
                slice.labels().get("kubernetes.io/service-name"),
            ) else {
                continue;
            };
            by_service
                .entry(ServiceKey::new(namespace, service))
                .or_default()
                .push(slice);
        }
        // In one order whatever order the cache hands them in.
        for slices in by_service.values_mut() {
            slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }
        Self(by_service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::L2AdvertisementSpec;
    use crate::election;
    use crate::testkit::{self, Svc};
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sSelector;
    use kube::api::ObjectMeta;

    fn svc(name: &str, ip: &str, local: bool) -> Service {
        Svc::new("default", name)
            .external_traffic_policy(if local { "Local" } else { "Cluster" })
            .ingress(ip)
            .build()
    }

    fn pool(name: &str, cidr: &str) -> IPAddressPool {
        testkit::pool(name, &[cidr])
    }

    fn ad(name: &str, spec: L2AdvertisementSpec) -> L2Advertisement {
        L2Advertisement::new(name, spec)
    }

    fn slice(service: &str, endpoints: &[(&str, bool, bool)]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(format!("{service}-abc")),
                labels: Some(
                    [(
                        "kubernetes.io/service-name".to_string(),
                        service.to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: endpoints
                .iter()
                .map(|(node, ready, serving)| Endpoint {
                    addresses: vec!["10.42.0.5".into()],
                    node_name: Some(node.to_string()),
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        serving: Some(*serving),
                        terminating: Some(!*ready),
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: None,
        }
    }

    fn view<'a>(
        services: &'a [Service],
        pools: &'a [IPAddressPool],
        ads: &'a [L2Advertisement],
        slices: &'a [EndpointSlice],
    ) -> Vec<Announcement> {
        announcements(&ClusterView {
            services: services.iter().collect(),
            pools: pools.iter().collect(),
            advertisements: ads.iter().collect(),
            slices: slices.iter().collect(),
            default_class: true,
            bgp: Default::default(),
            gateways: Default::default(),
        })
    }

    fn recorded(mut s: Service, pool: &str) -> Service {
        s.metadata.annotations = Some(
            [(
                crate::api::annotations::ALLOCATED_FROM_POOL.to_string(),
                pool.to_string(),
            )]
            .into(),
        );
        s
    }

    /// The Gateway API objects of the routing test: an ironlb class; Gateway
    /// infra/gw (uid `u`) with TCP 5432 and TLS 443 listeners; TCPRoute
    /// infra/pg to apps/db (weight 80, granted), apps/gone (15, no such
    /// Service) and apps/db on a port it lacks (5, unusable); TLSRoute
    /// infra/web for *.example.com to apps/db; and the ReferenceGrant in
    /// apps that lets both kinds of route of infra refer there.
    struct GatewayWorld {
        class: crate::api::gateway::GatewayClass,
        gateway: crate::api::gateway::Gateway,
        tcp: crate::api::gateway::TCPRoute,
        tls: crate::api::gateway::TLSRoute,
        grant: crate::api::gateway::ReferenceGrant,
    }

    impl GatewayWorld {
        fn new() -> Self {
            use serde_json::{from_value, json};
            let v1 = "gateway.networking.k8s.io/v1";
            Self {
                class: from_value(json!({"apiVersion": v1, "kind": "GatewayClass",
                    "metadata": {"name": "ironlb"},
                    "spec": {"controllerName": crate::gateway::attach::CONTROLLER_NAME}}))
                .unwrap(),
                gateway: from_value(json!({"apiVersion": v1, "kind": "Gateway",
                    "metadata": {"namespace": "infra", "name": "gw", "uid": "u"},
                    "spec": {"gatewayClassName": "ironlb", "listeners": [
                        {"name": "pg", "port": 5432, "protocol": "TCP"},
                        {"name": "web", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}}]}}))
                .unwrap(),
                tcp: from_value(json!({"apiVersion": v1, "kind": "TCPRoute",
                    "metadata": {"namespace": "infra", "name": "pg"},
                    "spec": {"parentRefs": [{"name": "gw", "sectionName": "pg"}], "rules": [{"backendRefs": [
                        {"namespace": "apps", "name": "db", "port": 5432, "weight": 80},
                        {"namespace": "apps", "name": "gone", "port": 5432, "weight": 15},
                        {"namespace": "apps", "name": "db", "port": 9999, "weight": 5}]}]}}))
                .unwrap(),
                tls: from_value(json!({"apiVersion": v1, "kind": "TLSRoute",
                    "metadata": {"namespace": "infra", "name": "web"},
                    "spec": {"parentRefs": [{"name": "gw", "sectionName": "web"}],
                        "hostnames": ["*.example.com"],
                        "rules": [{"backendRefs": [{"namespace": "apps", "name": "db", "port": 5432}]}]}}))
                .unwrap(),
                grant: from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
                    "metadata": {"namespace": "apps", "name": "from-infra"},
                    "spec": {"from": [
                        {"group": "gateway.networking.k8s.io", "kind": "TCPRoute", "namespace": "infra"},
                        {"group": "gateway.networking.k8s.io", "kind": "TLSRoute", "namespace": "infra"}],
                        "to": [{"group": "", "kind": "Service"}]}}))
                .unwrap(),
            }
        }

        fn objects(&self, granted: bool) -> crate::gateway::snapshot::Objects<'_> {
            crate::gateway::snapshot::Objects {
                classes: vec![&self.class],
                gateways: vec![&self.gateway],
                tcp: vec![&self.tcp],
                tls: vec![&self.tls],
                grants: if granted { vec![&self.grant] } else { vec![] },
                ..Default::default()
            }
        }
    }

    /// A Gateway's Service: the routes the rules attach to its listeners
    /// become routes of shares of the backend Services' endpoints, at the
    /// endpoint port the Service port names; an unusable or vanished backend
    /// keeps its weight with no backend. Only the Service the controller
    /// keeps for an ironlb Gateway is routed, and nothing written on a
    /// Service (an old `ironlb.dev/gateway-program` annotation, say) changes
    /// its routes.
    #[test]
    fn a_gateways_routes_become_weighted_shares_of_its_backends_endpoints() {
        use crate::forwarder::plan::plan;
        // A route table naming a backend the rules would refuse, as a
        // tenant who may edit the Service could write it.
        let hand_written = serde_json::json!({"ports": [{"port": 5432, "protocol": "TCP", "routes": [
            {"route": "TCPRoute infra/evil", "backends": [
                {"namespace": "team-a", "name": "secret-db", "port": 5432, "weight": 1, "usable": true}]}]}]});
        let gateway_service = |owner_kind: &str, uid: &str| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "infra", "name": "gw-ironlb-gateway",
                    "annotations": {"ironlb.dev/forwarding": "embedded",
                        "ironlb.dev/gateway-program": hand_written.to_string()},
                    "ownerReferences": [{"apiVersion": "gateway.networking.k8s.io/v1", "kind": owner_kind, "name": "gw", "uid": uid, "controller": true}]},
                "spec": {"type": "LoadBalancer", "ports": [
                    {"name": "tcp-5432", "port": 5432, "protocol": "TCP"},
                    {"name": "tcp-443", "port": 443, "protocol": "TCP"}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}},
            }))
            .unwrap()
        };
        let service = |ns: &str, name: &str, target: i32| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": ns, "name": name},
                "spec": {"ports": [{"name": "pg", "port": 5432, "protocol": "TCP", "targetPort": target}]},
            }))
            .unwrap()
        };
        let slice = |ns: &str, name: &str, ip: &str| -> EndpointSlice {
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": ns, "name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "pg", "port": 15432, "protocol": "TCP"}],
                "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
            }))
            .unwrap()
        };
        let (db, secret) = (
            service("apps", "db", 15432),
            service("team-a", "secret-db", 15432),
        );
        let slices = [
            slice("apps", "db", "10.42.0.7"),
            slice("team-a", "secret-db", "10.42.9.9"),
        ];
        let world = GatewayWorld::new();
        let listeners = |services: &[Service], gateways| {
            let view = ClusterView {
                services: services.iter().collect(),
                pools: Vec::new(),
                advertisements: Vec::new(),
                slices: slices.iter().collect(),
                default_class: true,
                bgp: Default::default(),
                gateways,
            };
            let (frontends, errors) = frontends(&view);
            assert!(errors.is_empty(), "{errors:?}");
            let owned = ["10.0.0.1".parse().unwrap()].into();
            plan("n1", &owned, &frontends).listeners
        };
        let shares = |routing: &crate::forwarder::routing::Routing| -> Vec<(u32, Vec<String>)> {
            routing.routes[0]
                .shares
                .iter()
                .map(|s| {
                    (
                        s.weight,
                        s.backends.iter().map(|b| b.address.to_string()).collect(),
                    )
                })
                .collect()
        };

        let all = [gateway_service("Gateway", "u"), db.clone(), secret.clone()];
        let got = listeners(&all, world.objects(true));
        assert_eq!(got.len(), 2);
        let (tls, tcp) = (&got[0], &got[1]);
        assert_eq!(tcp.address.port(), 5432);
        let routing = tcp.routing.as_ref().expect("a Gateway port is routed");
        assert!(!routing.sni);
        assert_eq!(
            routing.routes[0].name, "TCPRoute infra/pg",
            "not the hand-written table"
        );
        let endpoint = vec!["10.42.0.7:15432".to_string()];
        assert_eq!(
            shares(routing),
            [(80, endpoint.clone()), (15, vec![]), (5, vec![])],
            "usable backends get their endpoints; a missing or unusable one none"
        );
        assert_eq!(tcp.backends.len(), 1, "every route's backends, once");
        let tls_routing = tls.routing.as_ref().expect("routed");
        assert!(tls_routing.sni, "a TLS listener routes by server name");
        assert_eq!(tls_routing.routes[0].hostnames, ["*.example.com"]);

        // Without the ReferenceGrant, the other namespace's backends are
        // refused shares.
        let got = listeners(&all, world.objects(false));
        let routing = got[1].routing.as_ref().expect("routed");
        assert_eq!(shares(routing), [(80, vec![]), (15, vec![]), (5, vec![])]);

        // No Gateway objects (the CRDs absent, the feature off), another
        // owner, an owner of another uid, another name: an ordinary Service,
        // whose own endpoints (none here) it forwards to.
        for (what, svc, gateways) in [
            (
                "no Gateway objects",
                gateway_service("Gateway", "u"),
                Default::default(),
            ),
            (
                "not owned by a Gateway",
                gateway_service("Deployment", "u"),
                world.objects(true),
            ),
            (
                "another uid",
                gateway_service("Gateway", "forged"),
                world.objects(true),
            ),
        ] {
            let got = listeners(&[svc, db.clone(), secret.clone()], gateways);
            assert!(
                got.iter()
                    .all(|l| l.routing.is_none() && l.backends.is_empty()),
                "{what}"
            );
        }
        let mut renamed = gateway_service("Gateway", "u");
        renamed.metadata.name = Some("my-own".into());
        let got = listeners(&[renamed, db.clone(), secret.clone()], world.objects(true));
        assert!(
            got.iter()
                .all(|l| l.routing.is_none() && l.backends.is_empty())
        );
    }

    #[test]
    fn the_recorded_pool_decides_whatever_became_of_the_pool() {
        let by_name = [ad(
            "lan",
            L2AdvertisementSpec {
                ip_address_pools: vec!["lan".into()],
                ..Default::default()
            },
        )];
        let services = [recorded(svc("a", "10.0.0.1", false), "lan")];
        let shrunk = [pool("lan", "10.0.0.128/25")];
        let mut bad = pool("lan", "10.0.0.0/24");
        bad.spec.addresses = vec!["not an address".into()];
        // A newer pool overlapping it, so the older one here is the invalid one.
        let overlapped = [pool("lan", "10.0.0.0/24"), pool("aaa", "10.0.0.0/16")];
        for (what, pools) in [
            ("deleted", &[][..]),
            ("shrunk past the address", &shrunk[..]),
            ("invalid", std::slice::from_ref(&bad)),
            ("overlapped", &overlapped[..]),
        ] {
            let out = view(&services, pools, &by_name, &[]);
            assert_eq!(out.len(), 1, "pool {what}: still announced");
            assert_eq!(out[0].pool, "lan", "pool {what}");
        }
        // Without a record, only a valid pool's range counts.
        let unrecorded = [svc("a", "10.0.0.1", false)];
        assert!(view(&unrecorded, &shrunk, &by_name, &[]).is_empty());
        assert_eq!(
            view(&unrecorded, &[pool("lan", "10.0.0.0/24")], &by_name, &[]).len(),
            1
        );
        // An advertisement that does not select the recorded pool: not announced.
        let other = [ad(
            "other",
            L2AdvertisementSpec {
                ip_address_pools: vec!["other".into()],
                ..Default::default()
            },
        )];
        assert!(view(&services, &shrunk, &other, &[]).is_empty());
        // MetalLB's record is read too.
        let mut metallb = svc("a", "10.0.0.1", false);
        metallb.metadata.annotations = Some(
            [(
                crate::api::annotations::METALLB_ALLOCATED_FROM_POOL.to_string(),
                "lan".to_string(),
            )]
            .into(),
        );
        assert_eq!(view(&[metallb], &[], &by_name, &[]).len(), 1);
    }

    #[test]
    fn a_pool_without_an_advertisement_is_not_announced() {
        let services = [svc("a", "10.0.0.1", false), svc("b", "10.0.1.1", false)];
        let pools = [pool("lan", "10.0.0.0/24"), pool("quiet", "10.0.1.0/24")];
        let ads = [ad(
            "lan",
            L2AdvertisementSpec {
                ip_address_pools: vec!["lan".into()],
                interfaces: vec!["eth0".into()],
                ..Default::default()
            },
        )];
        let out = view(&services, &pools, &ads, &[]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].address, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (out[0].pool.as_str(), out[0].interfaces.clone()),
            ("lan", vec!["eth0".to_string()])
        );
    }

    #[test]
    fn an_advertisement_without_pools_announces_every_pool_and_selectors_combine() {
        let services = [svc("a", "10.0.0.1", false)];
        let pools = [pool("lan", "10.0.0.0/24")];
        let zone = |z: &str| K8sSelector {
            match_labels: Some([("zone".to_string(), z.to_string())].into()),
            match_expressions: None,
        };
        let ads = [
            ad(
                "a",
                L2AdvertisementSpec {
                    node_selectors: vec![zone("a")],
                    ..Default::default()
                },
            ),
            ad(
                "b",
                L2AdvertisementSpec {
                    node_selectors: vec![zone("b")],
                    ..Default::default()
                },
            ),
        ];
        let out = view(&services, &pools, &ads, &[]);
        assert_eq!(
            out[0].constraints.node_selectors.len(),
            2,
            "either advertisement's nodes may announce"
        );
        let nodes = [("n1", "a"), ("n2", "b"), ("n3", "c")].map(|(n, z)| Node {
            name: n.into(),
            labels: [("zone".to_string(), z.to_string())].into(),
            alive: true,
            network_unavailable: false,
            cannot_serve: Default::default(),
        });
        let owner = election::owner(out[0].address, &nodes, &out[0].constraints).unwrap();
        assert_ne!(owner.name, "n3");
    }

    #[test]
    fn local_traffic_needs_a_ready_endpoint_or_else_a_serving_one() {
        let services = [svc("web", "10.0.0.1", true)];
        let pools = [pool("lan", "10.0.0.0/24")];
        let ads = [ad("all", L2AdvertisementSpec::default())];
        let ready = [slice("web", &[("n1", false, true), ("n2", true, true)])];
        let out = view(&services, &pools, &ads, &ready);
        assert_eq!(
            out[0].constraints.local_endpoints,
            Some(["n2".to_string()].into())
        );
        let only_terminating = [slice("web", &[("n1", false, true), ("n3", false, false)])];
        let out = view(&services, &pools, &ads, &only_terminating);
        assert_eq!(
            out[0].constraints.local_endpoints,
            Some(["n1".to_string()].into())
        );
        let none = [slice("web", &[])];
        let out = view(&services, &pools, &ads, &none);
        assert_eq!(
            out[0].constraints.local_endpoints,
            Some(BTreeSet::new()),
            "nobody may announce"
        );
    }

    #[test]
    fn services_sharing_an_address_are_one_announcement() {
        let services = [svc("tcp", "10.0.0.1", false), svc("udp", "10.0.0.1", false)];
        let pools = [pool("lan", "10.0.0.0/24")];
        let ads = [ad("all", L2AdvertisementSpec::default())];
        let out = view(&services, &pools, &ads, &[]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].services.len(), 2);
    }

    #[test]
    fn nodes_carry_labels_and_network_condition_of_live_members_only() {
        let object = K8sNode {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some(
                    [(
                        crate::api::EXCLUDE_FROM_EXTERNAL_LB_LABEL.to_string(),
                        String::new(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            spec: None,
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "NetworkUnavailable".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        };
        let dead = K8sNode {
            metadata: ObjectMeta {
                name: Some("n9".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let members: BTreeSet<String> = ["n1".to_string(), "n2".to_string()].into();
        let nodes = nodes(&members, &[&object, &dead], &Default::default());
        assert_eq!(
            nodes.len(),
            2,
            "a Node without a live speaker is no candidate"
        );
        assert!(
            nodes[0].network_unavailable
                && nodes[0]
                    .labels
                    .contains_key(crate::api::EXCLUDE_FROM_EXTERNAL_LB_LABEL)
        );
        assert_eq!(
            election::eligibility(&nodes[0], &Constraints::default()),
            Err(election::Ineligible::Excluded)
        );
        assert_eq!(
            election::eligibility(&nodes[1], &Constraints::default()),
            Ok(())
        );
    }

    #[test]
    fn seeds_are_the_other_nodes_internal_ips_of_the_listen_family() {
        let node = |name: &str, addresses: &[(&str, &str)]| -> K8sNode {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "status": {"addresses": addresses.iter()
                    .map(|(t, a)| serde_json::json!({"type": t, "address": a}))
                    .collect::<Vec<_>>()},
            }))
            .unwrap()
        };
        let objects = [
            node("me", &[("InternalIP", "10.0.0.1")]),
            node(
                "b",
                &[
                    ("Hostname", "b"),
                    ("InternalIP", "fd00::2"),
                    ("InternalIP", "10.0.0.2"),
                ],
            ),
            node("c", &[("ExternalIP", "203.0.113.3")]),
        ];
        let listen = "10.0.0.1:7946".parse().unwrap();
        let seeds: Vec<String> = node_seeds("me", &objects, listen)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(seeds, ["10.0.0.2:7946"]);
        let v6: Vec<_> = node_seeds("me", &objects, "[fd00::1]:7946".parse().unwrap());
        assert_eq!(
            v6,
            ["[fd00::2]:7946".parse::<std::net::SocketAddr>().unwrap()]
        );
    }

    /// A Service goes to the kernel unless it asks for user space or needs
    /// it; asking for the kernel and for a PROXY header at once, or for a
    /// path that does not exist, is refused naming the annotation.
    #[test]
    fn the_forwarding_path_follows_the_annotation_and_what_the_service_needs() {
        use crate::api::annotations::{FORWARDING, FORWARDING_PATH, PROXY_PROTOCOL};
        let embedded = |name: &str, ip: &str, extra: &[(&str, &str)]| {
            extra
                .iter()
                .fold(
                    Svc::lb("apps", name)
                        .annotation(FORWARDING, "embedded")
                        .ingress(ip),
                    |s, (k, v)| s.annotation(k, v),
                )
                .build()
        };
        let services = [
            embedded("plain", "10.0.0.1", &[]),
            embedded("proxied", "10.0.0.2", &[(PROXY_PROTOCOL, "v2")]),
            embedded("pinned", "10.0.0.3", &[(FORWARDING_PATH, "user")]),
            embedded(
                "contradicts",
                "10.0.0.4",
                &[(FORWARDING_PATH, "kernel"), (PROXY_PROTOCOL, "v1")],
            ),
            embedded("typo", "10.0.0.5", &[(FORWARDING_PATH, "kernal")]),
            embedded("asked", "10.0.0.6", &[(FORWARDING_PATH, "kernel")]),
        ];
        let view = ClusterView {
            services: services.iter().collect(),
            pools: Vec::new(),
            advertisements: Vec::new(),
            slices: Default::default(),
            default_class: true,
            bgp: Default::default(),
            gateways: Default::default(),
        };
        let (frontends, errors) = frontends(&view);
        let refused: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.service.name.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(
            refused[0].0 == "contradicts"
                && refused[0].1.contains(FORWARDING_PATH)
                && refused[0].1.contains("PROXY protocol"),
            "{refused:?}"
        );
        assert!(
            refused[1].0 == "typo" && refused[1].1.contains("\"kernal\" is not one of"),
            "{refused:?}"
        );
        let owned = (1..=6)
            .map(|i| format!("10.0.0.{i}").parse().unwrap())
            .collect();
        let kernel: Vec<(String, bool, bool)> =
            crate::forwarder::plan::plan("n1", &owned, &frontends)
                .listeners
                .iter()
                .map(|l| {
                    (
                        l.service.name.clone(),
                        l.in_kernel(true),
                        l.in_kernel(false),
                    )
                })
                .collect();
        assert_eq!(
            kernel,
            [
                ("plain".to_string(), true, false),
                ("proxied".to_string(), false, false),
                ("pinned".to_string(), false, false),
                ("asked".to_string(), true, false),
            ]
        );
    }
}
