//! The Gateway controller's writes, decided without I/O: from the snapshot,
//! [`attach::decide`]'s outcome and the Services and EndpointSlices of the
//! cluster, the [`Action`]s that bring the cluster to that outcome. Nothing
//! is planned that is already so, so a cluster in order plans nothing.
//!
//! Status writes carry the `resourceVersion` they were decided from: a 409
//! means "look again", never an overwrite of another controller's entry.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::attach::{
    self, Cond, GatewayOutcome, ListenerProtocol, Program, RouteKind, SUPPORTED_FEATURES, Snapshot,
};
use super::snapshot::{ByName, is_ours, service_name};
use crate::api::annotations;
use crate::api::gateway::{
    Gateway, GatewayAddress, GatewayClassStatus, GatewayStatus, ListenerStatus, RouteParentStatus,
    RouteStatus, SupportedFeature,
};
use crate::k8s::translate;

/// The label upstream asks implementations to put on what they create for a
/// Gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// `endpointslice.kubernetes.io/managed-by` on the mirrored slices, so the
/// EndpointSlice controllers leave them alone (a label value: no `/`).
pub const SLICE_MANAGER: &str = "gateway-controller.ironlb.dev";
const SLICE_MANAGER_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub(super) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// `app.kubernetes.io/managed-by` on the Services the controller keeps.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "ironlb-gateway";
/// Written by earlier versions on Gateway Services, read by none.
const RETIRED_PROGRAM_ANNOTATION: &str = "ironlb.dev/gateway-program";

/// One write.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// The status of one of ironlb's GatewayClasses.
    ClassStatus {
        /// The class.
        name: String,
        /// The version decided from.
        resource_version: Option<String>,
        /// Its status.
        status: GatewayClassStatus,
    },
    /// A Gateway's status.
    GatewayStatus {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The version decided from.
        resource_version: Option<String>,
        /// Its status.
        status: GatewayStatus,
    },
    /// A route's status: ironlb's entries as decided, other controllers'
    /// entries as they were.
    RouteStatus {
        /// Its kind.
        kind: RouteKind,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The version decided from.
        resource_version: Option<String>,
        /// Its status.
        status: RouteStatus,
    },
    /// Server-side apply of the Service carrying a Gateway's address.
    ApplyService(Box<Service>),
    /// Server-side apply of an EndpointSlice mirrored for such a Service.
    ApplySlice(Box<EndpointSlice>),
    /// Delete a Service the controller kept for a Gateway that left
    /// ironlb's classes.
    DeleteService {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Delete a mirrored EndpointSlice no longer wanted.
    DeleteSlice {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

/// The writes that bring the cluster to `outcome`, at time `now`.
pub fn plan(
    snap: &Snapshot<'_>,
    outcome: &attach::Outcome,
    services: &[&Service],
    slices: &[&EndpointSlice],
    now: &Time,
) -> Vec<Action> {
    let mut actions = class_statuses(snap, outcome, now);
    let index = Index::of(services, slices);
    let gateways: BTreeMap<(String, String), &Gateway> = snap
        .gateways
        .iter()
        .map(|g| ((g.namespace().unwrap_or_default(), g.name_any()), *g))
        .collect();
    let mut kept = BTreeSet::new();
    for g in &outcome.gateways {
        let Some(gateway) = gateways.get(&(g.namespace.clone(), g.name.clone())) else {
            continue;
        };
        let name = service_name(&g.name);
        kept.insert((g.namespace.clone(), name.clone()));
        let existing = index.service(&g.namespace, &name);
        // A Service of that name that is not this Gateway's is the user's:
        // never taken over (the Gateway stays without an address).
        if existing.is_none_or(|s| is_ours(s, gateway)) {
            let desired = desired_service(gateway, &name, g);
            if existing.is_none_or(|s| differs(s, &desired)) {
                actions.push(Action::ApplyService(Box::new(desired)));
            }
            let wanted = mirrored(&g.namespace, &name, &g.program, &index);
            actions.extend(sync_slices(&g.namespace, &name, wanted, &index));
        }
        let old = gateway.status.clone().unwrap_or_default();
        let status = gateway_status(g, &old, now);
        if status != old {
            actions.push(Action::GatewayStatus {
                namespace: g.namespace.clone(),
                name: g.name.clone(),
                resource_version: gateway.resource_version(),
                status,
            });
        }
    }
    actions.extend(leftovers(services, slices, &kept));
    actions.extend(route_statuses(snap, outcome, now));
    actions
}

/// Conditions as Kubernetes wants them: a transition time that only moves
/// when the status does, and the generation they speak of.
fn conditions(
    decided: &[Cond],
    current: &[Condition],
    generation: i64,
    now: &Time,
) -> Vec<Condition> {
    decided
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let since = current
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == status)
                .map_or_else(|| now.clone(), |o| o.last_transition_time.clone());
            Condition {
                type_: c.type_.into(),
                status: status.into(),
                reason: c.reason.into(),
                message: c.message.clone(),
                observed_generation: Some(generation),
                last_transition_time: since,
            }
        })
        .collect()
}

fn class_statuses(snap: &Snapshot<'_>, outcome: &attach::Outcome, now: &Time) -> Vec<Action> {
    let features: Vec<SupportedFeature> = SUPPORTED_FEATURES
        .iter()
        .map(|f| SupportedFeature {
            name: (*f).to_string(),
        })
        .collect();
    let mut actions = Vec::new();
    for class in &outcome.classes {
        let object = snap.classes.iter().find(|c| c.name_any() == class.name);
        let current = object.and_then(|c| c.status.clone()).unwrap_or_default();
        let status = GatewayClassStatus {
            conditions: conditions(
                &class.conditions,
                &current.conditions,
                class.generation,
                now,
            ),
            supported_features: features.clone(),
        };
        if status != current {
            actions.push(Action::ClassStatus {
                name: class.name.clone(),
                resource_version: object.and_then(|c| c.resource_version()),
                status,
            });
        }
    }
    actions
}

fn gateway_status(g: &GatewayOutcome, old: &GatewayStatus, now: &Time) -> GatewayStatus {
    let listeners = g
        .listeners
        .iter()
        .map(|l| {
            let before = old
                .listeners
                .iter()
                .find(|o| o.name == l.name)
                .map_or(&[][..], |o| &o.conditions[..]);
            ListenerStatus {
                name: l.name.clone(),
                supported_kinds: l.supported_kinds.clone(),
                attached_routes: l.attached_routes,
                conditions: conditions(&l.conditions, before, g.generation, now),
            }
        })
        .collect();
    GatewayStatus {
        addresses: g
            .addresses
            .iter()
            .map(|a| GatewayAddress {
                type_: Some("IPAddress".into()),
                value: a.to_string(),
            })
            .collect(),
        conditions: conditions(&g.conditions, &old.conditions, g.generation, now),
        listeners,
    }
}

/// Route statuses: ironlb's entries as decided, other controllers' kept. A
/// route none of whose parents is ironlb's any more (its Gateway left
/// ironlb's classes, or the route now names another) loses ironlb's entries.
fn route_statuses(snap: &Snapshot<'_>, outcome: &attach::Outcome, now: &Time) -> Vec<Action> {
    let decided: BTreeMap<(RouteKind, &str, &str), &attach::RouteOutcome> = outcome
        .routes
        .iter()
        .map(|r| ((r.kind, r.namespace.as_str(), r.name.as_str()), r))
        .collect();
    let mut actions = Vec::new();
    for route in &snap.routes {
        let decided = decided.get(&(route.kind, route.namespace.as_str(), route.name.as_str()));
        let old: &[RouteParentStatus] = route.status.map_or(&[], |s| &s.parents[..]);
        let mut parents: Vec<RouteParentStatus> = old
            .iter()
            .filter(|p| p.controller_name != attach::CONTROLLER_NAME)
            .cloned()
            .collect();
        for p in decided.iter().flat_map(|r| &r.parents) {
            let before = old
                .iter()
                .find(|o| {
                    o.controller_name == attach::CONTROLLER_NAME && o.parent_ref == p.parent_ref
                })
                .map_or(&[][..], |o| &o.conditions[..]);
            parents.push(RouteParentStatus {
                parent_ref: p.parent_ref.clone(),
                controller_name: attach::CONTROLLER_NAME.into(),
                conditions: conditions(&p.conditions, before, route.generation, now),
            });
        }
        if parents != old {
            actions.push(Action::RouteStatus {
                kind: route.kind,
                namespace: route.namespace.clone(),
                name: route.name.clone(),
                resource_version: route.resource_version.clone(),
                status: RouteStatus { parents },
            });
        }
    }
    actions
}

/// The Service carrying the Gateway's address: its valid listeners' ports,
/// the infrastructure labels and annotations (a pool, sharing key or PROXY
/// protocol choice goes there), requested addresses, and embedded
/// forwarding. The routes are not written on it: every speaker computes them
/// from the Gateway API objects with the same rules.
fn desired_service(gateway: &Gateway, name: &str, outcome: &GatewayOutcome) -> Service {
    let infra = gateway.spec.infrastructure.clone().unwrap_or_default();
    let mut labels = infra.labels.clone();
    labels.insert(GATEWAY_NAME_LABEL.into(), gateway.name_any());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let mut notes = infra.annotations.clone();
    // The routes run on the embedded forwarder only: kube-proxy knows
    // nothing of hostnames and weights.
    notes.insert(annotations::FORWARDING.into(), "embedded".into());
    if !outcome.requested.is_empty() {
        let requested: Vec<String> = outcome.requested.iter().map(IpAddr::to_string).collect();
        notes.insert(annotations::LOAD_BALANCER_IPS.into(), requested.join(","));
    }
    let mut ports: Vec<ServicePort> = outcome
        .program
        .ports
        .iter()
        .map(|p| ServicePort {
            name: Some(port_name(p.port, p.protocol)),
            port: i32::from(p.port),
            protocol: Some(p.protocol.transport().as_str().into()),
            target_port: Some(IntOrString::Int(i32::from(p.port))),
            ..Default::default()
        })
        .collect();
    ports.dedup();
    if ports.is_empty() {
        // A Service needs a port; this one holds the address while no
        // listener is valid.
        ports.push(ServicePort {
            name: Some("placeholder".into()),
            port: 9,
            protocol: Some("TCP".into()),
            ..Default::default()
        });
    }
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: gateway.namespace(),
            labels: Some(labels),
            annotations: Some(notes),
            owner_references: Some(vec![OwnerReference {
                api_version: "gateway.networking.k8s.io/v1".into(),
                kind: "Gateway".into(),
                name: gateway.name_any(),
                uid: gateway.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            load_balancer_class: Some(crate::api::LOAD_BALANCER_CLASS.into()),
            ports: Some(ports),
            ..Default::default()
        }),
        status: None,
    }
}

fn port_name(port: u16, protocol: ListenerProtocol) -> String {
    format!(
        "{}-{port}",
        protocol.transport().as_str().to_ascii_lowercase()
    )
}

/// Whether the fields the controller owns differ from `desired`.
fn differs(current: &Service, desired: &Service) -> bool {
    let contains = |have: Option<&BTreeMap<String, String>>,
                    want: Option<&BTreeMap<String, String>>| {
        want.into_iter()
            .flatten()
            .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
    };
    type Ports = Vec<(Option<String>, i32, Option<String>)>;
    let ports = |s: &Service| -> (Option<String>, Ports) {
        let spec = s.spec.as_ref();
        (
            spec.and_then(|s| s.type_.clone()),
            spec.and_then(|s| s.ports.as_ref())
                .into_iter()
                .flatten()
                .map(|p| (p.name.clone(), p.port, p.protocol.clone()))
                .collect(),
        )
    };
    !contains(
        current.metadata.labels.as_ref(),
        desired.metadata.labels.as_ref(),
    ) || !contains(
        current.metadata.annotations.as_ref(),
        desired.metadata.annotations.as_ref(),
    )
        // An apply without the retired annotation takes it away.
        || current.annotations().contains_key(RETIRED_PROGRAM_ANNOTATION)
        || ports(current) != ports(desired)
}

/// The Services and EndpointSlices of a pass by name: a pass looks up
/// every Gateway's Service and every backend, and a scan per lookup made
/// it quadratic.
struct Index<'a> {
    services: ByName<'a>,
    /// By namespace, then the Service they belong to.
    slices: HashMap<&'a str, HashMap<&'a str, Vec<&'a EndpointSlice>>>,
}

impl<'a> Index<'a> {
    fn of(services: &[&'a Service], slices: &[&'a EndpointSlice]) -> Self {
        let mut index = Self {
            services: ByName::of(services),
            slices: HashMap::new(),
        };
        for s in slices {
            if let (Some(namespace), Some(service)) =
                (&s.metadata.namespace, s.labels().get(SERVICE_NAME_LABEL))
            {
                index
                    .slices
                    .entry(namespace)
                    .or_default()
                    .entry(service)
                    .or_default()
                    .push(*s);
            }
        }
        index
    }

    fn service(&self, namespace: &str, name: &str) -> Option<&'a Service> {
        self.services.get(namespace, name)
    }

    fn slices(&self, namespace: &str, service: &str) -> &[&'a EndpointSlice] {
        self.slices
            .get(namespace)
            .and_then(|of| of.get(service))
            .map_or(&[], Vec::as_slice)
    }
}

/// The EndpointSlices of the Gateway Service `namespace/service`: the ready
/// endpoints of the backends of the first route on each TCP and UDP port, so
/// clients of its cluster IP reach them through kube-proxy. By name.
fn mirrored(
    namespace: &str,
    service: &str,
    program: &Program,
    index: &Index<'_>,
) -> BTreeMap<String, EndpointSlice> {
    let mut wanted = BTreeMap::new();
    for p in program
        .ports
        .iter()
        .filter(|p| p.protocol != ListenerProtocol::Tls)
    {
        let Some(route) = p.routes.first() else {
            continue;
        };
        for (i, b) in route
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.usable && b.weight > 0)
        {
            // The backend Service port's name is what its slices' ports use.
            let Some(backend_port) = index
                .service(&b.namespace, &b.name)
                .and_then(|s| {
                    s.spec
                        .as_ref()?
                        .ports
                        .as_ref()?
                        .iter()
                        .find(|sp| sp.port == i32::from(b.port))
                })
                .map(|sp| sp.name.clone().unwrap_or_default())
            else {
                continue;
            };
            for source in index.slices(&b.namespace, &b.name) {
                let Some(target) = source
                    .ports
                    .iter()
                    .flatten()
                    .find(|sp| sp.name.clone().unwrap_or_default() == backend_port)
                    .and_then(|sp| sp.port)
                else {
                    continue;
                };
                let name = format!(
                    "{service}-{}-{i}-{}",
                    port_name(p.port, p.protocol),
                    source.name_any()
                );
                let name: String = name.chars().take(253).collect();
                let port = EndpointPort {
                    name: Some(port_name(p.port, p.protocol)),
                    port: Some(target),
                    protocol: Some(p.protocol.transport().as_str().into()),
                    ..Default::default()
                };
                if let Some(slice) = mirror_of(source, namespace, service, &name, port) {
                    wanted.insert(name, slice);
                }
            }
        }
    }
    wanted
}

/// The mirror `name` in `namespace/service` of the ready endpoints of
/// `source`, on `port`; none when no endpoint is ready.
fn mirror_of(
    source: &EndpointSlice,
    namespace: &str,
    service: &str,
    name: &str,
    port: EndpointPort,
) -> Option<EndpointSlice> {
    let endpoints: Vec<Endpoint> = source
        .endpoints
        .iter()
        .filter(|e| translate::readiness(e).ready)
        .map(|e| Endpoint {
            addresses: e.addresses.clone(),
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..Default::default()
            }),
            node_name: e.node_name.clone(),
            zone: e.zone.clone(),
            ..Default::default()
        })
        .collect();
    if endpoints.is_empty() {
        return None;
    }
    Some(EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(
                [
                    (SERVICE_NAME_LABEL.to_string(), service.to_string()),
                    (SLICE_MANAGER_LABEL.to_string(), SLICE_MANAGER.to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        address_type: source.address_type.clone(),
        ports: Some(vec![port]),
        endpoints,
    })
}

pub(super) fn is_mirror(s: &EndpointSlice) -> bool {
    s.labels().get(SLICE_MANAGER_LABEL).map(String::as_str) == Some(SLICE_MANAGER)
}

/// Whether ironlb's Gateway controller manages the Service (a Gateway's).
pub(super) fn is_managed(s: &Service) -> bool {
    s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
}

/// The writes that make the mirrored slices of `namespace/service` exactly
/// `wanted`.
fn sync_slices(
    namespace: &str,
    service: &str,
    wanted: BTreeMap<String, EndpointSlice>,
    index: &Index<'_>,
) -> Vec<Action> {
    let ours: Vec<&EndpointSlice> = index
        .slices(namespace, service)
        .iter()
        .copied()
        .filter(|s| is_mirror(s))
        .collect();
    let mut actions: Vec<Action> = ours
        .iter()
        .filter(|s| !wanted.contains_key(&s.name_any()))
        .map(|s| Action::DeleteSlice {
            namespace: namespace.into(),
            name: s.name_any(),
        })
        .collect();
    for (name, slice) in wanted {
        let same = ours
            .iter()
            .find(|s| s.name_any() == name)
            .is_some_and(|current| {
                slice.endpoints == current.endpoints && slice.ports == current.ports
            });
        if !same {
            actions.push(Action::ApplySlice(Box::new(slice)));
        }
    }
    actions
}

/// Services of Gateways that left ironlb's classes (deleted Gateways take
/// theirs along through the owner reference), and mirrored slices of
/// Services no longer kept (slices carry no owner reference).
fn leftovers(
    services: &[&Service],
    slices: &[&EndpointSlice],
    kept: &BTreeSet<(String, String)>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    for s in services.iter().filter(|s| is_managed(s)) {
        let key = (s.namespace().unwrap_or_default(), s.name_any());
        if !kept.contains(&key) {
            actions.push(Action::DeleteService {
                namespace: key.0,
                name: key.1,
            });
        }
    }
    for s in slices.iter().filter(|s| is_mirror(s)) {
        let service = s
            .labels()
            .get(SERVICE_NAME_LABEL)
            .cloned()
            .unwrap_or_default();
        let namespace = s.namespace().unwrap_or_default();
        if !kept.contains(&(namespace.clone(), service)) {
            actions.push(Action::DeleteSlice {
                namespace,
                name: s.name_any(),
            });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::gateway::{GatewayClass, TCPRoute, TLSRoute};
    use crate::gateway::snapshot::{self, Objects};
    use crate::testkit::{Svc, object, slice};
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    /// A cluster as the plan sees it, which the tests change by applying
    /// the plan to it, as the API server would.
    #[derive(Clone)]
    struct Cluster {
        classes: Vec<GatewayClass>,
        gateways: Vec<Gateway>,
        tcp: Vec<TCPRoute>,
        tls: Vec<TLSRoute>,
        services: Vec<Service>,
        slices: Vec<EndpointSlice>,
    }

    impl Cluster {
        /// Class `ironlb`; Gateway `infra/gw` with a TCP listener on 5432
        /// and a TLS one on 443; a TCPRoute to `infra/db` and a TLSRoute to
        /// `infra/web`, whose slices have a ready, an unready and an
        /// unknown endpoint.
        fn new() -> Self {
            Self {
                classes: vec![object(json!({
                    "metadata": {"name": "ironlb", "generation": 1, "resourceVersion": "1"},
                    "spec": {"controllerName": attach::CONTROLLER_NAME},
                }))],
                gateways: vec![object(json!({
                    "metadata": {"name": "gw", "namespace": "infra", "uid": "uid-gw",
                                 "generation": 2, "resourceVersion": "2"},
                    "spec": {"gatewayClassName": "ironlb", "listeners": [
                        {"name": "db", "port": 5432, "protocol": "TCP"},
                        {"name": "tls", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}}]},
                }))],
                tcp: vec![object(json!({
                    "metadata": {"name": "db", "namespace": "infra", "generation": 1, "resourceVersion": "3"},
                    "spec": {"parentRefs": [{"name": "gw"}],
                             "rules": [{"backendRefs": [{"name": "db", "port": 5432}]}]},
                }))],
                tls: vec![object(json!({
                    "metadata": {"name": "web", "namespace": "infra", "generation": 1, "resourceVersion": "4"},
                    "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["web.example.com"],
                             "rules": [{"backendRefs": [{"name": "web", "port": 443}]}]},
                }))],
                services: vec![
                    Svc::new("infra", "db").port("pg", 5432, "TCP").build(),
                    Svc::new("infra", "web").port("https", 443, "TCP").build(),
                ],
                slices: vec![
                    slice(
                        "infra",
                        "db",
                        "db-1",
                        ("pg", 15432, "TCP"),
                        &[
                            ("10.1.0.1", Some(true)),
                            ("10.1.0.2", Some(false)),
                            ("10.1.0.3", None),
                        ],
                    ),
                    slice(
                        "infra",
                        "web",
                        "web-1",
                        ("https", 8443, "TCP"),
                        &[("10.1.0.9", Some(true))],
                    ),
                ],
            }
        }

        fn objects(&self) -> Objects<'_> {
            Objects {
                classes: self.classes.iter().collect(),
                gateways: self.gateways.iter().collect(),
                tcp: self.tcp.iter().collect(),
                tls: self.tls.iter().collect(),
                ..Default::default()
            }
        }

        fn plan(&self) -> Vec<Action> {
            let objects = self.objects();
            let services: Vec<&Service> = self.services.iter().collect();
            let slices: Vec<&EndpointSlice> = self.slices.iter().collect();
            let snap = snapshot::snapshot(&objects, &services);
            let outcome = attach::decide(&snap);
            plan(
                &snap,
                &outcome,
                &services,
                &slices,
                &Time(Timestamp::UNIX_EPOCH),
            )
        }

        /// The cluster after `actions`, written as the API server would.
        fn apply(&mut self, actions: &[Action]) {
            fn upsert<T: kube::ResourceExt + Clone>(list: &mut Vec<T>, new: &T) {
                let key = (new.namespace(), new.name_any());
                list.retain(|o| (o.namespace(), o.name_any()) != key);
                list.push(new.clone());
            }
            for action in actions {
                match action {
                    Action::ClassStatus { name, status, .. } => {
                        let c = self
                            .classes
                            .iter_mut()
                            .find(|c| c.name_any() == *name)
                            .unwrap();
                        c.status = Some(status.clone());
                    }
                    Action::GatewayStatus { name, status, .. } => {
                        let g = self
                            .gateways
                            .iter_mut()
                            .find(|g| g.name_any() == *name)
                            .unwrap();
                        g.status = Some(status.clone());
                    }
                    Action::RouteStatus {
                        kind, name, status, ..
                    } => match kind {
                        RouteKind::Tcp => {
                            let r = self.tcp.iter_mut().find(|r| r.name_any() == *name).unwrap();
                            r.status = Some(status.clone());
                        }
                        RouteKind::Tls => {
                            let r = self.tls.iter_mut().find(|r| r.name_any() == *name).unwrap();
                            r.status = Some(status.clone());
                        }
                        RouteKind::Udp => unreachable!("no UDPRoute here"),
                    },
                    Action::ApplyService(s) => upsert(&mut self.services, &**s),
                    Action::ApplySlice(s) => upsert(&mut self.slices, &**s),
                    Action::DeleteService { namespace, name } => self.services.retain(|s| {
                        (s.namespace().as_deref(), s.name_any().as_str()) != (Some(namespace), name)
                    }),
                    Action::DeleteSlice { namespace, name } => self.slices.retain(|s| {
                        (s.namespace().as_deref(), s.name_any().as_str()) != (Some(namespace), name)
                    }),
                }
            }
        }
    }

    fn summary(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::ClassStatus { name, .. } => format!("class status {name}"),
                Action::GatewayStatus {
                    namespace, name, ..
                } => {
                    format!("gateway status {namespace}/{name}")
                }
                Action::RouteStatus {
                    kind,
                    namespace,
                    name,
                    ..
                } => {
                    format!("{} status {namespace}/{name}", kind.kind())
                }
                Action::ApplyService(s) => {
                    format!("apply Service {}/{}", s.namespace().unwrap(), s.name_any())
                }
                Action::ApplySlice(s) => {
                    format!(
                        "apply EndpointSlice {}/{}",
                        s.namespace().unwrap(),
                        s.name_any()
                    )
                }
                Action::DeleteService { namespace, name } => {
                    format!("delete Service {namespace}/{name}")
                }
                Action::DeleteSlice { namespace, name } => {
                    format!("delete EndpointSlice {namespace}/{name}")
                }
            })
            .collect()
    }

    /// A new Gateway: its class's status, its Service, the mirror of its
    /// TCP route's backends (not of its TLS one: kube-proxy cannot route by
    /// name), its status and its routes'; applied, the plan is empty.
    #[test]
    fn a_new_gateway_is_written_once_and_then_nothing_is_planned() {
        let mut cluster = Cluster::new();
        let actions = cluster.plan();
        let service = service_name("gw");
        assert_eq!(
            summary(&actions),
            [
                "class status ironlb".to_string(),
                format!("apply Service infra/{service}"),
                format!("apply EndpointSlice infra/{service}-tcp-5432-0-db-1"),
                "gateway status infra/gw".into(),
                "TCPRoute status infra/db".into(),
                "TLSRoute status infra/web".into(),
            ]
        );
        cluster.apply(&actions);
        assert_eq!(summary(&cluster.plan()), Vec::<String>::new());
    }

    /// The Service: the Gateway's valid listeners as ports, owned by the
    /// Gateway, embedded forwarding, labels that name it.
    #[test]
    fn the_gateway_service_carries_the_listeners_and_its_owner() {
        let actions = Cluster::new().plan();
        let Some(Action::ApplyService(service)) = actions
            .iter()
            .find(|a| matches!(a, Action::ApplyService(_)))
        else {
            panic!("no Service in {actions:?}");
        };
        let ports: Vec<(Option<String>, i32, Option<String>)> = service
            .spec
            .as_ref()
            .unwrap()
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone(), p.port, p.protocol.clone()))
            .collect();
        assert_eq!(
            ports,
            [
                (Some("tcp-443".into()), 443, Some("TCP".into())),
                (Some("tcp-5432".into()), 5432, Some("TCP".into())),
            ]
        );
        let owner = &service.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Gateway", "uid-gw")
        );
        assert_eq!(service.annotations()[annotations::FORWARDING], "embedded");
        assert_eq!(service.labels()[GATEWAY_NAME_LABEL], "gw");
        assert_eq!(service.labels()[MANAGED_BY_LABEL], MANAGED_BY);
    }

    /// Only ready endpoints (an unset condition is ready) are mirrored, with
    /// the backend's target port.
    #[test]
    fn the_mirror_holds_the_ready_endpoints_at_the_target_port() {
        let actions = Cluster::new().plan();
        let Some(Action::ApplySlice(mirror)) =
            actions.iter().find(|a| matches!(a, Action::ApplySlice(_)))
        else {
            panic!("no EndpointSlice in {actions:?}");
        };
        let addresses: Vec<&str> = mirror
            .endpoints
            .iter()
            .map(|e| e.addresses[0].as_str())
            .collect();
        assert_eq!(addresses, ["10.1.0.1", "10.1.0.3"]);
        assert_eq!(mirror.ports.as_ref().unwrap()[0].port, Some(15432));
        assert_eq!(mirror.labels()[SERVICE_NAME_LABEL], service_name("gw"));
    }

    /// A Service the user made under the name the Gateway's would take is
    /// theirs: never applied over, never mirrored into, never deleted.
    #[test]
    fn a_users_service_under_the_gateways_name_is_left_alone() {
        let mut cluster = Cluster::new();
        cluster.services.push(
            Svc::new("infra", &service_name("gw"))
                .port("", 80, "TCP")
                .build(),
        );
        let summary = summary(&cluster.plan());
        assert!(
            !summary
                .iter()
                .any(|a| a.contains("Service infra/") || a.contains("EndpointSlice")),
            "{summary:?}"
        );
    }

    /// When a Gateway leaves ironlb's classes, the Service kept for it and
    /// its mirrored slices are deleted, and its routes lose ironlb's status
    /// entries; the backends' own slices stay.
    #[test]
    fn what_a_gateway_leaves_behind_is_deleted() {
        let mut cluster = Cluster::new();
        let first = cluster.plan();
        cluster.apply(&first);
        cluster.gateways[0].spec.gateway_class_name = "someone-else".into();
        let service = service_name("gw");
        let actions = cluster.plan();
        for action in &actions {
            if let Action::RouteStatus { status, .. } = action {
                assert_eq!(status.parents, []);
            }
        }
        assert_eq!(
            summary(&actions),
            [
                format!("delete Service infra/{service}"),
                format!("delete EndpointSlice infra/{service}-tcp-5432-0-db-1"),
                "TCPRoute status infra/db".into(),
                "TLSRoute status infra/web".into(),
            ]
        );
    }

    /// A route's status write keeps the entries of other controllers, and
    /// holds only at the version it was decided from.
    #[test]
    fn route_status_keeps_other_controllers_entries_at_the_version_read() {
        let mut cluster = Cluster::new();
        let theirs: RouteParentStatus = object(json!({
            "parentRef": {"name": "other-gw"}, "controllerName": "example.com/other",
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }));
        cluster.tcp[0].status = Some(RouteStatus {
            parents: vec![theirs.clone()],
        });
        let actions = cluster.plan();
        let Some(Action::RouteStatus {
            resource_version,
            status,
            ..
        }) = actions.iter().find(|a| {
            matches!(
                a,
                Action::RouteStatus {
                    kind: RouteKind::Tcp,
                    ..
                }
            )
        })
        else {
            panic!("no TCPRoute status in {actions:?}");
        };
        assert_eq!(resource_version.as_deref(), Some("3"));
        assert_eq!(status.parents[0], theirs);
        assert_eq!(status.parents[1].controller_name, attach::CONTROLLER_NAME);
        assert_eq!(status.parents.len(), 2);
    }

    /// Conditions keep their transition time while their status holds, so
    /// a pass at a later time writes nothing new.
    #[test]
    fn a_later_pass_keeps_transition_times() {
        let mut cluster = Cluster::new();
        let first = cluster.plan();
        cluster.apply(&first);
        let objects = cluster.objects();
        let services: Vec<&Service> = cluster.services.iter().collect();
        let slices: Vec<&EndpointSlice> = cluster.slices.iter().collect();
        let snap = snapshot::snapshot(&objects, &services);
        let later = Time(Timestamp::from_second(86_400).unwrap());
        assert_eq!(
            plan(&snap, &attach::decide(&snap), &services, &slices, &later),
            []
        );
    }

    use super::super::reads::Name;

    /// What a change of Services and EndpointSlices can touch: the route's
    /// backend, the Gateway's Service, a Service beside it and one in
    /// another namespace.
    const NAMES: [(&str, &str); 4] = [
        ("infra", "db"),
        ("infra", "gw-ironlb-gateway"),
        ("infra", "other"),
        ("apps", "x"),
    ];

    #[derive(Clone, Debug)]
    enum Touch {
        /// Service `i` of [`NAMES`] deleted, or written as variant `v`.
        Service(usize, Option<u8>),
        /// EndpointSlice `s-j` deleted, or made a slice of Service `i`
        /// (mirrored or not).
        Slice(usize, Option<(usize, bool)>),
    }

    fn touch() -> impl proptest::strategy::Strategy<Value = Touch> {
        use proptest::prelude::*;
        prop_oneof![
            (0..4usize, proptest::option::of(0..16u8)).prop_map(|(i, v)| Touch::Service(i, v)),
            (0..3usize, proptest::option::of((0..4usize, any::<bool>())))
                .prop_map(|(j, e)| Touch::Slice(j, e)),
        ]
    }

    impl Cluster {
        fn reads(&self) -> super::super::reads::Reads {
            let objects = self.objects();
            let services: Vec<&Service> = self.services.iter().collect();
            let slices: Vec<&EndpointSlice> = self.slices.iter().collect();
            let snap = snapshot::snapshot(&objects, &services);
            super::super::reads::Reads::of(&snap, &services, &slices)
        }

        /// Applies `touch`; returns the Services and EndpointSlices it
        /// touched, as a watch names them.
        fn touch(&mut self, touch: &Touch) -> (Vec<Name>, Vec<Name>) {
            let key = |ns: &str, name: &str| (ns.to_string(), name.to_string());
            match touch {
                Touch::Service(i, variant) => {
                    let (ns, name) = NAMES[*i];
                    let old = self
                        .services
                        .iter()
                        .position(|s| {
                            (s.namespace().as_deref(), s.name_any().as_str()) == (Some(ns), name)
                        })
                        .map(|at| self.services.remove(at));
                    if let Some(v) = variant {
                        // The Gateway's own Service changes only its address.
                        let mut svc = match old.filter(|_| *i == 1) {
                            Some(ours) => ours,
                            None => Svc::new(ns, name)
                                .port("pg", if v & 1 == 0 { 5432 } else { 80 }, "TCP")
                                .build(),
                        };
                        // As the API server gives them: another Service on the
                        // Gateway's address is told apart by its uid.
                        svc.metadata
                            .uid
                            .get_or_insert_with(|| format!("uid-{ns}-{name}"));
                        if v & 2 != 0 {
                            svc.labels_mut()
                                .insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
                        }
                        let ip = ["10.0.0.1", "10.0.0.2", "10.0.0.9"].get(usize::from(v >> 2));
                        svc.status =
                            ip.map(|ip| Svc::new(ns, name).ingress(ip).build().status.unwrap());
                        self.services.push(svc);
                    }
                    (vec![key(ns, name)], vec![])
                }
                Touch::Slice(j, now) => {
                    let name = format!("s-{j}");
                    let mut touched = Vec::new();
                    self.slices.retain(|s| {
                        let gone = s.name_any() == name;
                        if gone {
                            touched.push(key(&s.namespace().unwrap_or_default(), &name));
                        }
                        !gone
                    });
                    if let Some((i, mirrored)) = now {
                        let (ns, service) = NAMES[*i];
                        let mut new = slice(
                            ns,
                            service,
                            &name,
                            ("pg", 15432, "TCP"),
                            &[("10.1.0.7", Some(true))],
                        );
                        if *mirrored {
                            new.labels_mut()
                                .insert(SLICE_MANAGER_LABEL.into(), SLICE_MANAGER.into());
                        }
                        self.slices.push(new);
                        touched.push(key(ns, &name));
                    }
                    (vec![], touched)
                }
            }
        }
    }

    proptest::proptest! {
        /// A change to Services and EndpointSlices that a pass's reads say
        /// it did not read changes nothing that pass plans: the controller
        /// may skip the pass it wakes.
        #[test]
        fn a_change_outside_what_a_pass_read_changes_nothing_it_plans(
            touches in proptest::collection::vec(touch(), 1..20),
        ) {
            let mut cluster = Cluster::new();
            // Settled, with the Gateway's Service given an address as the
            // Service controller gives it.
            let first = cluster.plan();
            cluster.apply(&first);
            cluster.touch(&Touch::Service(1, Some(0)));
            let settle = cluster.plan();
            cluster.apply(&settle);
            for t in &touches {
                let (reads, before) = (cluster.reads(), cluster.plan());
                let (services, slices) = cluster.touch(t);
                let now_service = |(ns, name): &Name| {
                    cluster.services.iter().find(|s| s.namespace().as_ref() == Some(ns) && s.name_any() == *name)
                };
                let now_slice = |(ns, name): &Name| {
                    cluster.slices.iter().find(|s| s.namespace().as_ref() == Some(ns) && s.name_any() == *name)
                };
                let touched = reads.touched_by(
                    services.iter().map(|n| (n, now_service(n))),
                    slices.iter().map(|n| (n, now_slice(n))),
                );
                let after = cluster.plan();
                if !touched {
                    proptest::prop_assert_eq!(&after, &before, "after {:?}", t);
                }
                cluster.apply(&after);
            }
        }
    }
}
