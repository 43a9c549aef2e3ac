//! What the Gateway controller and every speaker read of the cluster, and the
//! one function from it to the rules' [`Snapshot`]. Both decide from the same
//! view with the same rules ([`attach::decide`]): the routes a speaker
//! forwards are exactly the ones the Gateway's status calls attached, and no
//! object anyone can write carries a route table a speaker would trust.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::ResourceExt;

use super::attach::{Address, Outcome, Program, Route, Snapshot, requested};
use crate::api::IPAddressPool;
use crate::api::annotations;
use crate::api::gateway::{Gateway, GatewayClass, ReferenceGrant, TCPRoute, TLSRoute, UDPRoute};
use crate::ipam::{Holder, Protocol, ServiceKey};
use crate::k8s::translate;

/// The Gateway API objects the rules read (absent kinds: empty).
#[derive(Clone, Debug, Default)]
pub struct Objects<'a> {
    /// Every GatewayClass.
    pub classes: Vec<&'a GatewayClass>,
    /// Every Gateway.
    pub gateways: Vec<&'a Gateway>,
    /// Every TCPRoute.
    pub tcp: Vec<&'a TCPRoute>,
    /// Every UDPRoute.
    pub udp: Vec<&'a UDPRoute>,
    /// Every TLSRoute.
    pub tls: Vec<&'a TLSRoute>,
    /// Every ReferenceGrant.
    pub grants: Vec<&'a ReferenceGrant>,
    /// Every Namespace, for `allowedRoutes` selectors.
    pub namespaces: Vec<&'a Namespace>,
    /// Every IPAddressPool, when the reader judges whether the addresses a
    /// Gateway asks for can be had (the controller; speakers need not).
    pub pools: Option<Vec<&'a IPAddressPool>>,
}

/// The name of the Service carrying a Gateway's address.
pub fn service_name(gateway: &str) -> String {
    let name = format!("{gateway}-ironlb-gateway");
    if name.len() <= 63 {
        return name;
    }
    // Keep it unique and within the DNS label limit.
    let hash = gateway.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{}-{:08x}-ironlb-gw", &gateway[..40], hash as u32)
}

/// Whether `svc` is the Service the controller keeps for `gateway`: its
/// controlling owner is that very Gateway (by uid, which no one can choose).
pub fn is_ours(svc: &Service, gateway: &Gateway) -> bool {
    gateway.metadata.uid.is_some()
        && svc.owner_references().iter().any(|o| {
            o.controller == Some(true)
                && o.kind == "Gateway"
                && Some(&o.uid) == gateway.metadata.uid.as_ref()
        })
}

/// The rules' snapshot of `objects` and the cluster's Services.
pub fn snapshot<'a>(objects: &Objects<'a>, services: &[&'a Service]) -> Snapshot<'a> {
    let index = ServiceIndex::of(services);
    Snapshot {
        classes: objects.classes.clone(),
        gateways: objects.gateways.clone(),
        grants: objects.grants.clone(),
        routes: objects
            .tcp
            .iter()
            .map(|r| Route::tcp(r))
            .chain(objects.udp.iter().map(|r| Route::udp(r)))
            .chain(objects.tls.iter().map(|r| Route::tls(r)))
            .collect(),
        services: services
            .iter()
            .map(|s| {
                let ports = s
                    .spec
                    .iter()
                    .flat_map(|s| s.ports.iter().flatten())
                    .map(|p| p.port)
                    .collect();
                ((s.namespace().unwrap_or_default(), s.name_any()), ports)
            })
            .collect(),
        namespaces: objects
            .namespaces
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect(),
        addresses: objects
            .gateways
            .iter()
            .map(|g| {
                let key = (g.namespace().unwrap_or_default(), g.name_any());
                (key, address_of(g, &index, objects.pools.as_deref()))
            })
            .collect(),
    }
}

/// Services by namespace and name, borrowed: a pass looks up every
/// Gateway's Service and every backend, and a scan per lookup made it
/// quadratic.
#[derive(Default)]
pub(crate) struct ByName<'a>(HashMap<&'a str, HashMap<&'a str, &'a Service>>);

impl<'a> ByName<'a> {
    pub(crate) fn of(services: &[&'a Service]) -> Self {
        let mut by_name = Self::default();
        for s in services {
            if let (Some(namespace), Some(name)) = (&s.metadata.namespace, &s.metadata.name) {
                by_name.0.entry(namespace).or_default().insert(name, *s);
            }
        }
        by_name
    }

    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<&'a Service> {
        self.0.get(namespace)?.get(name).copied()
    }
}

/// The Services, as each Gateway looks them up: its own by name, those
/// sharing its address by address.
struct ServiceIndex<'a> {
    by_name: ByName<'a>,
    on_address: HashMap<IpAddr, Vec<&'a Service>>,
}

impl<'a> ServiceIndex<'a> {
    fn of(services: &[&'a Service]) -> Self {
        let mut on_address: HashMap<IpAddr, Vec<&'a Service>> = HashMap::new();
        for s in services {
            for ip in translate::status_addresses(s) {
                on_address.entry(ip).or_default().push(*s);
            }
        }
        Self {
            by_name: ByName::of(services),
            on_address,
        }
    }
}

/// The Gateway's address, read from its Service.
fn address_of(
    gateway: &Gateway,
    services: &ServiceIndex<'_>,
    pools: Option<&[&IPAddressPool]>,
) -> Address {
    let ns = gateway.namespace().unwrap_or_default();
    let name = service_name(&gateway.name_any());
    let Some(svc) = services.by_name.get(&ns, &name) else {
        return Address::Pending;
    };
    if !is_ours(svc, gateway) {
        return Address::Refused {
            reason: "AddressNotAssigned",
            message: format!(
                "Service {ns}/{name} exists and does not belong to this Gateway; rename or delete it"
            ),
        };
    }
    if let Some(message) = pools.and_then(|p| unusable(gateway, p)) {
        return Address::Refused {
            reason: "AddressNotUsable",
            message,
        };
    }
    let addresses = translate::status_addresses(svc);
    // Until the Service holds what `spec.addresses` asks for (it keeps an
    // address it had while the request is being changed), the Gateway is not
    // where it was asked to be.
    let requested = requested(gateway);
    if addresses.is_empty() || requested.iter().any(|ip| !addresses.contains(ip)) {
        return Address::Pending;
    }
    // Ports other Services sharing the address hold.
    let mut taken = BTreeMap::new();
    let sharing: BTreeMap<(String, String), &Service> = addresses
        .iter()
        .flat_map(|ip| services.on_address.get(ip).into_iter().flatten())
        .filter(|s| s.metadata.uid != svc.metadata.uid)
        .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), *s))
        .collect();
    for other in sharing.values() {
        for p in other.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
            let Ok(transport) = Protocol::of_port(p.protocol.as_deref()) else {
                continue;
            };
            // The message lands in the Gateway's status, which its namespace
            // reads: a Service of another namespace is not named.
            let holder = translate::service_key(other);
            let holder = match Holder::seen_by(holder, &translate::service_key(svc)) {
                Holder::Named(key) => format!("Service {key}"),
                other => other.to_string(),
            };
            taken.insert((p.port, transport), holder);
        }
    }
    Address::Assigned { addresses, taken }
}

/// Why addresses the Gateway asks for cannot be had: some are in no pool it
/// may take them from (the one its `ironlb.dev/address-pool` names, else
/// any), or two are of one family. The allocator will not give them,
/// whatever else changes.
fn unusable(gateway: &Gateway, pools: &[&IPAddressPool]) -> Option<String> {
    let requested = requested(gateway);
    let named = gateway
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.annotations.get(annotations::ADDRESS_POOL));
    let candidates: Vec<&&IPAddressPool> = pools
        .iter()
        .filter(|p| named.is_none_or(|n| *n == p.name_any()))
        .collect();
    let outside: Vec<String> = requested
        .iter()
        .filter(|ip| !candidates.iter().any(|p| translate::pool_contains(p, **ip)))
        .map(IpAddr::to_string)
        .collect();
    if !outside.is_empty() {
        return Some(match named {
            Some(pool) => format!(
                "spec.addresses: {} not in IPAddressPool {pool} (named by {})",
                outside.join(", "),
                annotations::ADDRESS_POOL
            ),
            None => format!("spec.addresses: {} in no IPAddressPool", outside.join(", ")),
        });
    }
    for v4 in [true, false] {
        let family: Vec<String> = requested
            .iter()
            .filter(|ip| ip.is_ipv4() == v4)
            .map(IpAddr::to_string)
            .collect();
        if family.len() > 1 {
            return Some(format!(
                "spec.addresses: {} are of one family; a Gateway has at most one IPv4 and one IPv6 address",
                family.join(", ")
            ));
        }
    }
    None
}

/// The program of each Gateway of ironlb's, by the key of the Service that
/// carries its address, for the Services that are what the controller keeps
/// ([`is_ours`]). Any other Service, whatever its name, owner references or
/// annotations say, has no program: it is forwarded as an ordinary Service.
pub fn programs(
    outcome: Outcome,
    objects: &Objects<'_>,
    services: &[&Service],
) -> BTreeMap<ServiceKey, Program> {
    let mut out = BTreeMap::new();
    for g in outcome.gateways {
        let Some(gateway) = objects.gateways.iter().find(|o| {
            o.namespace().as_deref() == Some(g.namespace.as_str()) && o.name_any() == g.name
        }) else {
            continue;
        };
        let key = ServiceKey::new(&g.namespace, service_name(&g.name));
        let kept = services
            .iter()
            .any(|s| translate::service_key(s) == key && is_ours(s, gateway));
        if kept {
            out.insert(key, g.program);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::attach;
    use serde_json::json;

    fn gateway(ns: &str, name: &str, class: &str, uid: &str) -> Gateway {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"namespace": ns, "name": name, "uid": uid},
            "spec": {"gatewayClassName": class, "listeners": [
                {"name": "db", "port": 5432, "protocol": "TCP"}]},
        }))
        .expect("gateway")
    }

    fn class(name: &str, controller: &str) -> GatewayClass {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": name},
            "spec": {"controllerName": controller},
        }))
        .expect("class")
    }

    /// A Service; a Gateway's (owned by `(uid, address)`) has an address.
    fn service(ns: &str, name: &str, owner: Option<(&str, &str)>) -> Service {
        let owners: Vec<serde_json::Value> = owner
            .map(|(uid, _)| {
                json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                       "name": "edge", "uid": uid, "controller": true})
            })
            .into_iter()
            .collect();
        let status = match owner {
            Some((_, ip)) => json!({"loadBalancer": {"ingress": [{"ip": ip}]}}),
            None => json!({}),
        };
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "uid": format!("svc-{ns}-{name}"),
                         "ownerReferences": owners},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 5432, "protocol": "TCP"}]},
            "status": status,
        }))
        .expect("service")
    }

    fn route(ns: &str, backend_ns: &str) -> TCPRoute {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
            "metadata": {"namespace": ns, "name": "r"},
            "spec": {"parentRefs": [{"name": "edge"}],
                     "rules": [{"backendRefs": [{"name": "db", "namespace": backend_ns, "port": 5432}]}]},
        }))
        .expect("route")
    }

    /// A program comes only with the Service the controller keeps for an
    /// ironlb Gateway, found by its owner's uid: a Service that names the
    /// Gateway as its owner with another uid, or a Gateway of another
    /// class, gets none.
    #[test]
    fn only_the_kept_service_of_an_ironlb_gateway_has_a_program() {
        let ours = class("ironlb", attach::CONTROLLER_NAME);
        let theirs = class("other", "example.com/other");
        let edge = gateway("t", "edge", "ironlb", "uid-edge");
        let foreign = gateway("f", "edge", "other", "uid-foreign");
        let db = service("t", "db", None);
        let kept = service("t", &service_name("edge"), Some(("uid-edge", "10.0.0.1")));
        let forged_uid = service("t2", &service_name("edge"), Some(("uid-edge", "10.0.0.2")));
        let other_class = service(
            "f",
            &service_name("edge"),
            Some(("uid-foreign", "10.0.0.3")),
        );
        let r = route("t", "t");
        let r2 = route("f", "t");
        let objects = Objects {
            classes: vec![&ours, &theirs],
            gateways: vec![&edge, &foreign],
            tcp: vec![&r, &r2],
            ..Default::default()
        };
        let services = [&db, &kept, &forged_uid, &other_class];
        let programs = programs(
            attach::decide(&snapshot(&objects, &services)),
            &objects,
            &services,
        );
        let keys: Vec<String> = programs.keys().map(ToString::to_string).collect();
        assert_eq!(keys, [format!("t/{}", service_name("edge"))]);
        let program = programs.values().next().expect("one");
        assert_eq!(program.ports[0].routes[0].backends[0].name, "db");
    }

    /// A backend in another namespace without a ReferenceGrant is in the
    /// program only as a refused share.
    #[test]
    fn a_backend_of_another_namespace_without_a_grant_is_not_usable() {
        let ours = class("ironlb", attach::CONTROLLER_NAME);
        let edge = gateway("t", "edge", "ironlb", "uid-edge");
        let kept = service("t", &service_name("edge"), Some(("uid-edge", "10.0.0.1")));
        let victim = service("team-a", "db", None);
        let r = route("t", "team-a");
        let objects = Objects {
            classes: vec![&ours],
            gateways: vec![&edge],
            tcp: vec![&r],
            ..Default::default()
        };
        let services = [&kept, &victim];
        let programs = programs(
            attach::decide(&snapshot(&objects, &services)),
            &objects,
            &services,
        );
        let backend = &programs.values().next().expect("one").ports[0].routes[0].backends[0];
        assert_eq!(
            (backend.namespace.as_str(), backend.usable),
            ("team-a", false)
        );
    }

    /// A Gateway whose Service waits for addresses no pool holds says so
    /// (`AddressNotUsable`, naming them) when the reader knows the pools;
    /// one asking for a pool's address, or the pools unknown, waits.
    #[test]
    fn addresses_in_no_pool_are_not_usable() {
        let pool: IPAddressPool = serde_json::from_value(json!({
            "apiVersion": "ironlb.dev/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": "lan"}, "spec": {"addresses": ["10.0.0.0/24"]},
        }))
        .expect("pool");
        let ours = class("ironlb", attach::CONTROLLER_NAME);
        let mut edge = gateway("t", "edge", "ironlb", "uid-edge");
        let waiting = {
            let mut s = service("t", &service_name("edge"), Some(("uid-edge", "10.0.0.1")));
            s.status = None;
            s
        };
        let ask = |edge: &mut Gateway, ips: &[&str]| {
            edge.spec.addresses = ips
                .iter()
                .map(|ip| crate::api::gateway::GatewayAddress {
                    type_: None,
                    value: (*ip).into(),
                })
                .collect();
        };
        let address = |edge: &Gateway, pools: Option<Vec<&IPAddressPool>>| {
            let objects = Objects {
                classes: vec![&ours],
                gateways: vec![edge],
                pools,
                ..Objects::default()
            };
            snapshot(&objects, &[&waiting]).addresses[&("t".to_string(), "edge".to_string())]
                .clone()
        };
        ask(&mut edge, &["192.0.2.9", "10.0.0.5"]);
        match address(&edge, Some(vec![&pool])) {
            Address::Refused { reason, message } => {
                assert_eq!(reason, "AddressNotUsable");
                assert!(
                    message.contains("192.0.2.9") && !message.contains("10.0.0.5"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            address(&edge, None),
            Address::Pending,
            "a speaker does not judge"
        );
        ask(&mut edge, &["10.0.0.5", "10.0.0.6"]);
        assert!(matches!(
            address(&edge, Some(vec![&pool])),
            Address::Refused { reason: "AddressNotUsable", message } if message.contains("one family")
        ));
        ask(&mut edge, &["10.0.0.5"]);
        assert_eq!(address(&edge, Some(vec![&pool])), Address::Pending);
    }

    /// A Gateway whose Service still holds another address than the one
    /// `spec.addresses` now asks for waits; once it holds it, it is there.
    #[test]
    fn a_gateway_is_where_it_asked_to_be_or_pending() {
        let ours = class("ironlb", attach::CONTROLLER_NAME);
        let mut edge = gateway("t", "edge", "ironlb", "uid-edge");
        edge.spec.addresses = vec![crate::api::gateway::GatewayAddress {
            type_: None,
            value: "10.0.0.9".into(),
        }];
        let address = |held: &str| {
            let svc = service("t", &service_name("edge"), Some(("uid-edge", held)));
            let objects = Objects {
                classes: vec![&ours],
                gateways: vec![&edge],
                ..Objects::default()
            };
            snapshot(&objects, &[&svc]).addresses[&("t".to_string(), "edge".to_string())].clone()
        };
        assert_eq!(address("10.0.0.1"), Address::Pending);
        assert!(
            matches!(address("10.0.0.9"), Address::Assigned { addresses, .. } if addresses == ["10.0.0.9".parse::<IpAddr>().unwrap()])
        );
    }
}
