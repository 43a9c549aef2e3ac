//! The Gateway API's attachment and status rules as one pure function of the
//! cluster's objects: which listeners are valid, which routes attach to
//! which listeners, what every status says, and what the data path must do
//! (the [`Program`]). The controller writes what this returns and nothing
//! else, so every rule here is tested without a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::api::gateway::{
    GATEWAY_GROUP, Gateway, GatewayClass, Listener, ParentReference, ReferenceGrant,
    RouteGroupKind, RouteRule, RouteStatus, TCPRoute, TLSRoute, UDPRoute,
};
use crate::api::hostname;
use crate::ipam::Protocol;
use crate::k8s::translate::{self, NamespaceLabels};

/// The `controllerName` of the GatewayClasses ironlb implements.
pub const CONTROLLER_NAME: &str = "ironlb.dev/gateway-controller";

/// The Gateway API features ironlb implements, by their conformance names,
/// sorted as `GatewayClass.status.supportedFeatures` lists them. Each is
/// proven by the upstream conformance tests that claim it
/// (`tests/conformance.rs`, `docs/conformance-report.yaml`).
pub const SUPPORTED_FEATURES: &[&str] = &[
    "Gateway",
    "GatewayAddressEmpty",
    "GatewayInfrastructurePropagation",
    "GatewayStaticAddresses",
    "ReferenceGrant",
    "TCPRoute",
    "TLSRoute",
    "UDPRoute",
];

/// The three route kinds ironlb carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RouteKind {
    /// `TCPRoute`: a listener's TCP connections to backends.
    #[serde(rename = "TCPRoute")]
    Tcp,
    /// `UDPRoute`: a listener's UDP flows to backends.
    #[serde(rename = "UDPRoute")]
    Udp,
    /// `TLSRoute`: TLS connections by SNI, passed through.
    #[serde(rename = "TLSRoute")]
    Tls,
}

impl RouteKind {
    /// The kind's name.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Tcp => "TCPRoute",
            Self::Udp => "UDPRoute",
            Self::Tls => "TLSRoute",
        }
    }

    fn of_protocol(protocol: ListenerProtocol) -> Self {
        match protocol {
            ListenerProtocol::Tcp => Self::Tcp,
            ListenerProtocol::Udp => Self::Udp,
            ListenerProtocol::Tls => Self::Tls,
        }
    }
}

/// A listener protocol ironlb serves: a transport, or TLS passed through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ListenerProtocol {
    /// Plain TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// TLS passed through, routed by SNI.
    #[serde(rename = "TLS")]
    Tls,
}

impl ListenerProtocol {
    /// The transport the listener's port is opened with.
    pub fn transport(self) -> Protocol {
        match self {
            Self::Udp => Protocol::Udp,
            Self::Tcp | Self::Tls => Protocol::Tcp,
        }
    }
}

/// A route of any kind, as the rules see it.
#[derive(Clone, Debug)]
pub struct Route<'a> {
    /// Its kind.
    pub kind: RouteKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: i64,
    /// Creation time in seconds: the older route wins a contested hostname.
    pub created: i64,
    /// `spec.parentRefs`.
    pub parent_refs: &'a [ParentReference],
    /// `spec.hostnames` (TLSRoute only).
    pub hostnames: &'a [String],
    /// `spec.rules`.
    pub rules: &'a [RouteRule],
    /// `status`, whose other controllers' entries the writer keeps.
    pub status: Option<&'a RouteStatus>,
    /// `metadata.resourceVersion`, for a compare-and-swap status write.
    pub resource_version: Option<String>,
}

impl<'a> Route<'a> {
    fn new<K: ResourceExt>(
        kind: RouteKind,
        object: &K,
        parent_refs: &'a [ParentReference],
        hostnames: &'a [String],
        rules: &'a [RouteRule],
        status: Option<&'a RouteStatus>,
    ) -> Self {
        Self {
            kind,
            namespace: object.namespace().unwrap_or_default(),
            name: object.name_any(),
            generation: object.meta().generation.unwrap_or(0),
            created: translate::seconds(object.meta().creation_timestamp.as_ref()),
            parent_refs,
            hostnames,
            rules,
            status,
            resource_version: object.meta().resource_version.clone(),
        }
    }

    /// A TCPRoute.
    pub fn tcp(r: &'a TCPRoute) -> Self {
        Self::new(
            RouteKind::Tcp,
            r,
            &r.spec.parent_refs,
            &[],
            &r.spec.rules,
            r.status.as_ref(),
        )
    }

    /// A UDPRoute.
    pub fn udp(r: &'a UDPRoute) -> Self {
        Self::new(
            RouteKind::Udp,
            r,
            &r.spec.parent_refs,
            &[],
            &r.spec.rules,
            r.status.as_ref(),
        )
    }

    /// A TLSRoute.
    pub fn tls(r: &'a TLSRoute) -> Self {
        let s = &r.spec;
        Self::new(
            RouteKind::Tls,
            r,
            &s.parent_refs,
            &s.hostnames,
            &s.rules,
            r.status.as_ref(),
        )
    }
}

/// Where a Gateway's address stands (the adapter learns it from the Service
/// that carries the Gateway's address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// Not assigned yet.
    Pending,
    /// Assigned; `taken` holds the ports other Services sharing the address
    /// already use, as (port, transport) → who holds it, in words the
    /// Gateway's namespace may read (`Service namespace/name`, or no name
    /// for another namespace's).
    Assigned {
        /// The addresses.
        addresses: Vec<IpAddr>,
        /// Ports held by others on them.
        taken: BTreeMap<(i32, Protocol), String>,
    },
    /// Refused, with a Gateway `Programmed` reason and a message.
    Refused {
        /// `AddressNotAssigned` or `AddressNotUsable`.
        reason: &'static str,
        /// Why, naming the pool or field.
        message: String,
    },
}

/// Everything the rules read.
#[derive(Clone, Debug, Default)]
pub struct Snapshot<'a> {
    /// Every GatewayClass (only ironlb's are acted on).
    pub classes: Vec<&'a GatewayClass>,
    /// Every Gateway.
    pub gateways: Vec<&'a Gateway>,
    /// Every route of the three kinds.
    pub routes: Vec<Route<'a>>,
    /// Every ReferenceGrant.
    pub grants: Vec<&'a ReferenceGrant>,
    /// Every Service's port numbers, by (namespace, name).
    pub services: BTreeMap<(String, String), Vec<i32>>,
    /// Labels of every namespace.
    pub namespaces: NamespaceLabels,
    /// Each Gateway's address, by (namespace, name); absent is `Pending`.
    pub addresses: BTreeMap<(String, String), Address>,
}

/// A status condition as the rules decide it; the adapter adds times and
/// the generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    /// The condition type.
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// The reason, from the spec's list.
    pub reason: &'static str,
    /// For humans.
    pub message: String,
}

/// A class's `Accepted` condition: ironlb takes every class naming it,
/// except one whose `parametersRef` asks for parameters ironlb cannot read.
fn class_accepted(class: &GatewayClass) -> Cond {
    match &class.spec.parameters_ref {
        Some(p) => cond(
            "Accepted",
            false,
            "InvalidParameters",
            format!(
                "spec.parametersRef: {}/{} {:?} is not a kind ironlb reads; a Gateway's \
                 options are its infrastructure annotations",
                p.group, p.kind, p.name
            ),
        ),
        None => cond(
            "Accepted",
            true,
            "Accepted",
            "ironlb serves TCP, UDP and TLS passthrough listeners",
        ),
    }
}

fn cond(
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: impl Into<String>,
) -> Cond {
    Cond {
        type_,
        status,
        reason,
        message: message.into(),
    }
}

/// A class's status.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassOutcome {
    /// The class.
    pub name: String,
    /// Its generation.
    pub generation: i64,
    /// `Accepted`.
    pub conditions: Vec<Cond>,
}

/// A listener's status.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerOutcome {
    /// The listener's name.
    pub name: String,
    /// The kinds it takes.
    pub supported_kinds: Vec<RouteGroupKind>,
    /// Routes attached.
    pub attached_routes: i32,
    /// `Accepted`, `Conflicted`, `ResolvedRefs`, `Programmed`.
    pub conditions: Vec<Cond>,
}

/// A Gateway's status and data path.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayOutcome {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its generation.
    pub generation: i64,
    /// `Accepted`, `Programmed`.
    pub conditions: Vec<Cond>,
    /// The addresses `spec.addresses` asks for, once the Gateway is
    /// accepted (an unaccepted Gateway asks for none).
    pub requested: Vec<IpAddr>,
    /// The addresses to show.
    pub addresses: Vec<IpAddr>,
    /// One per listener, in spec order.
    pub listeners: Vec<ListenerOutcome>,
    /// What the forwarder does on the Gateway's address.
    pub program: Program,
}

/// A route's status towards one of ironlb's Gateways.
#[derive(Clone, Debug, PartialEq)]
pub struct ParentOutcome {
    /// The parent reference as written in the route.
    pub parent_ref: ParentReference,
    /// `Accepted`, `ResolvedRefs`.
    pub conditions: Vec<Cond>,
}

/// A route's status entries for ironlb's parents.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteOutcome {
    /// Its kind.
    pub kind: RouteKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its generation.
    pub generation: i64,
    /// One per parent reference to a Gateway of ironlb's.
    pub parents: Vec<ParentOutcome>,
}

/// What the forwarder does on a Gateway's address: one entry per port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Program {
    /// The ports, by port and protocol.
    pub ports: Vec<ProgramPort>,
}

/// One listening port and the routes behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramPort {
    /// The port.
    pub port: u16,
    /// The protocol.
    pub protocol: ListenerProtocol,
    /// The routes, oldest first (a TCP or UDP port uses the first; a TLS
    /// port the most specific hostname match, then the oldest).
    pub routes: Vec<ProgramRoute>,
}

/// An attached route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramRoute {
    /// `Kind namespace/name`, for logs and metrics.
    pub route: String,
    /// SNI patterns (TLS only), already narrowed to the listener's hostname.
    pub hostnames: Vec<String>,
    /// The backends with their weights.
    pub backends: Vec<ProgramBackend>,
}

/// A backend Service port and its share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramBackend {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The Service port.
    pub port: u16,
    /// The share of connections or flows.
    pub weight: u32,
    /// False when the reference is not usable: its share is refused, as the
    /// spec asks, rather than spread over the others.
    pub usable: bool,
}

/// What the rules decide.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// ironlb's classes.
    pub classes: Vec<ClassOutcome>,
    /// Gateways of ironlb's classes.
    pub gateways: Vec<GatewayOutcome>,
    /// Routes with at least one parent of ironlb's.
    pub routes: Vec<RouteOutcome>,
}

/// A listener as checked on its own and against its siblings.
struct Checked<'a> {
    listener: &'a Listener,
    protocol: Option<ListenerProtocol>,
    kinds: Vec<RouteKind>,
    conditions: Vec<Cond>,
    /// Accepted, not conflicted, its port free, and at least one kind.
    usable: bool,
}

/// Decides every status and data path from the snapshot.
pub fn decide(snap: &Snapshot<'_>) -> Outcome {
    let our_classes: Vec<&GatewayClass> = snap
        .classes
        .iter()
        .copied()
        .filter(|c| c.spec.controller_name == CONTROLLER_NAME)
        .collect();
    let ours: BTreeSet<String> = our_classes.iter().map(|c| c.name_any()).collect();
    let mut out = Outcome {
        classes: our_classes
            .iter()
            .map(|c| ClassOutcome {
                name: c.name_any(),
                generation: c.metadata.generation.unwrap_or(0),
                conditions: vec![class_accepted(c)],
            })
            .collect(),
        ..Outcome::default()
    };

    let gateways: Vec<(&Gateway, Vec<Checked<'_>>)> = snap
        .gateways
        .iter()
        .copied()
        .filter(|g| ours.contains(&g.spec.gateway_class_name))
        .map(|g| (g, check_listeners(g, snap)))
        .collect();

    // Routes, in age order so the older route is first in every program.
    let mut routes: Vec<&Route<'_>> = snap.routes.iter().collect();
    routes.sort_by(|a, b| {
        (a.created, &a.namespace, &a.name).cmp(&(b.created, &b.namespace, &b.name))
    });
    // Per gateway index and listener index: routes attached, with their
    // narrowed hostnames and backends.
    let mut attached: BTreeMap<(usize, usize), Vec<ProgramRoute>> = BTreeMap::new();
    for route in routes {
        let mut parents = Vec::new();
        // The backends are the route's, whichever parent: resolved once, and
        // only for a route with a parent of ironlb's.
        let mut resolution = None;
        for parent_ref in route.parent_refs {
            let Some(gi) = gateway_of(route, parent_ref, &gateways) else {
                continue;
            };
            let (gateway, listeners) = &gateways[gi];
            let (accepted, matched) = attach(route, parent_ref, gateway, listeners, snap);
            let (resolved, backends) = resolution.get_or_insert_with(|| resolve(route, snap));
            if accepted.status {
                for (li, hostnames) in matched {
                    attached.entry((gi, li)).or_default().push(ProgramRoute {
                        route: format!("{} {}/{}", route.kind.kind(), route.namespace, route.name),
                        hostnames,
                        backends: backends.clone(),
                    });
                }
            }
            parents.push(ParentOutcome {
                parent_ref: parent_ref.clone(),
                conditions: vec![accepted, resolved.clone()],
            });
        }
        if !parents.is_empty() {
            out.routes.push(RouteOutcome {
                kind: route.kind,
                namespace: route.namespace.clone(),
                name: route.name.clone(),
                generation: route.generation,
                parents,
            });
        }
    }

    for (gi, (gateway, listeners)) in gateways.into_iter().enumerate() {
        out.gateways
            .push(gateway_outcome(gi, gateway, listeners, &mut attached, snap));
    }
    out
}

/// The index of the Gateway of ironlb's a parent reference names, if any.
fn gateway_of(
    route: &Route<'_>,
    parent: &ParentReference,
    gateways: &[(&Gateway, Vec<Checked<'_>>)],
) -> Option<usize> {
    if parent.group.as_deref().unwrap_or(GATEWAY_GROUP) != GATEWAY_GROUP
        || parent.kind.as_deref().unwrap_or("Gateway") != "Gateway"
    {
        return None;
    }
    let namespace = parent.namespace.as_deref().unwrap_or(&route.namespace);
    gateways.iter().position(|(g, _)| {
        g.metadata.namespace.as_deref() == Some(namespace)
            && g.metadata.name.as_deref() == Some(parent.name.as_str())
    })
}

fn check_listeners<'a>(gateway: &'a Gateway, snap: &Snapshot<'_>) -> Vec<Checked<'a>> {
    let key = (gateway.namespace().unwrap_or_default(), gateway.name_any());
    let taken = match snap.addresses.get(&key) {
        Some(Address::Assigned { taken, .. }) => Some(taken),
        _ => None,
    };
    let mut checked: Vec<Checked<'a>> = gateway
        .spec
        .listeners
        .iter()
        .map(|l| check_listener(l, taken))
        .collect();

    // Distinctness (the spec's "Distinct Listeners"): TCP and UDP listeners
    // by port; TLS listeners by port and hostname; a TCP listener sharing a
    // port with a TLS one makes both indistinct.
    let conflicts: Vec<Option<(&'static str, String)>> = (0..checked.len())
        .map(|i| {
            let a = &checked[i];
            let pa = a.protocol?;
            let others: Vec<&Checked<'_>> = checked
                .iter()
                .enumerate()
                .filter(|(j, b)| {
                    *j != i
                        && b.protocol
                            .is_some_and(|pb| pb.transport() == pa.transport())
                        && b.listener.port == a.listener.port
                })
                .map(|(_, b)| b)
                .collect();
            let names = |v: &[&Checked<'_>]| {
                v.iter()
                    .map(|b| b.listener.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let protocol_clash: Vec<&Checked<'_>> = others
                .iter()
                .copied()
                .filter(|b| b.protocol != Some(pa) || pa != ListenerProtocol::Tls)
                .collect();
            if !protocol_clash.is_empty() {
                return Some((
                    "ProtocolConflict",
                    format!(
                        "{} port {} is also taken by listener {}",
                        pa.transport(),
                        a.listener.port,
                        names(&protocol_clash)
                    ),
                ));
            }
            let host = |c: &Checked<'_>| c.listener.hostname.clone().unwrap_or_default();
            let same_host: Vec<&Checked<'_>> = others
                .iter()
                .copied()
                .filter(|b| host(b) == host(a))
                .collect();
            (!same_host.is_empty()).then(|| {
                (
                    "HostnameConflict",
                    format!(
                        "port {} with hostname {:?} is also taken by listener {}",
                        a.listener.port,
                        host(a),
                        names(&same_host)
                    ),
                )
            })
        })
        .collect();
    for (c, conflict) in checked.iter_mut().zip(conflicts) {
        match conflict {
            Some((reason, message)) => {
                c.usable = false;
                c.conditions.push(cond("Conflicted", true, reason, message));
            }
            None => c
                .conditions
                .push(cond("Conflicted", false, "NoConflicts", "")),
        }
    }
    checked
}

fn check_listener<'a>(
    l: &'a Listener,
    taken: Option<&BTreeMap<(i32, Protocol), String>>,
) -> Checked<'a> {
    let protocol = match l.protocol.as_str() {
        "TCP" => Ok(ListenerProtocol::Tcp),
        "UDP" => Ok(ListenerProtocol::Udp),
        // The CRD defaults `tls.mode` to Terminate.
        "TLS" => match l.tls.as_ref().and_then(|t| t.mode.as_deref()) {
            Some("Passthrough") => Ok(ListenerProtocol::Tls),
            mode => Err((
                "UnsupportedValue",
                format!(
                    "tls.mode: {} is not supported; ironlb passes TLS through (mode: Passthrough) and never terminates it",
                    mode.unwrap_or("Terminate")
                ),
            )),
        },
        other => Err((
            "UnsupportedProtocol",
            format!(
                "protocol {other} is not served by ironlb, which serves TCP, UDP and TLS (Passthrough)"
            ),
        )),
    };
    let mut conditions = Vec::new();
    let protocol = match protocol {
        Ok(p) => {
            match taken.and_then(|t| t.get(&(l.port, p.transport()))) {
                Some(holder) => conditions.push(cond(
                    "Accepted",
                    false,
                    "PortUnavailable",
                    format!(
                        "{} port {} on the Gateway's address is used by {holder}",
                        p.transport(),
                        l.port
                    ),
                )),
                None => conditions.push(cond("Accepted", true, "Accepted", "")),
            }
            Some(p)
        }
        Err((reason, message)) => {
            conditions.push(cond("Accepted", false, reason, message));
            None
        }
    };

    // Route kinds: the protocol's own kind, or those listed that it carries.
    // A listener whose protocol is refused takes no kind, and its kinds are
    // not judged: the refusal already says what is wrong.
    let listed = l
        .allowed_routes
        .as_ref()
        .map(|a| &a.kinds[..])
        .unwrap_or(&[]);
    let (kinds, refused): (Vec<RouteKind>, Vec<String>) = match protocol {
        None => (Vec::new(), Vec::new()),
        Some(p) if listed.is_empty() => (vec![RouteKind::of_protocol(p)], Vec::new()),
        Some(p) => {
            let native = RouteKind::of_protocol(p);
            let mut kinds = Vec::new();
            let mut refused = Vec::new();
            for k in listed {
                let group = k.group.as_deref().unwrap_or(GATEWAY_GROUP);
                if group == GATEWAY_GROUP && k.kind == native.kind() {
                    kinds.push(native);
                } else {
                    refused.push(format!("{group}/{}", k.kind));
                }
            }
            (kinds, refused)
        }
    };
    if refused.is_empty() {
        conditions.push(cond("ResolvedRefs", true, "ResolvedRefs", ""));
    } else {
        conditions.push(cond(
            "ResolvedRefs",
            false,
            "InvalidRouteKinds",
            format!(
                "allowedRoutes.kinds: {} cannot attach to a {} listener",
                refused.join(", "),
                l.protocol
            ),
        ));
    }
    let usable = conditions[0].status && !kinds.is_empty();
    Checked {
        listener: l,
        protocol,
        kinds,
        conditions,
        usable,
    }
}

/// Whether `route` attaches through `parent` to `gateway`, and to which
/// listeners (with the TLS hostnames narrowed to each).
fn attach(
    route: &Route<'_>,
    parent: &ParentReference,
    gateway: &Gateway,
    listeners: &[Checked<'_>],
    snap: &Snapshot<'_>,
) -> (Cond, Vec<(usize, Vec<String>)>) {
    let named: Vec<(usize, &Checked<'_>)> = listeners
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            parent
                .section_name
                .as_deref()
                .is_none_or(|s| s == c.listener.name)
                && parent.port.is_none_or(|p| p == c.listener.port)
        })
        .collect();
    let refused = |reason, message: String| (cond("Accepted", false, reason, message), Vec::new());
    let gw = gateway.name_any();
    if named.is_empty() {
        return refused(
            "NoMatchingParent",
            match (&parent.section_name, parent.port) {
                (Some(s), _) => format!("Gateway {gw} has no listener {s:?} (on that port)"),
                (None, Some(p)) => format!("Gateway {gw} has no listener on port {p}"),
                (None, None) => format!("Gateway {gw} has no listeners"),
            },
        );
    }
    let usable: Vec<(usize, &Checked<'_>)> =
        named.iter().copied().filter(|(_, c)| c.usable).collect();
    if usable.is_empty() {
        return refused(
            "NotAllowedByListeners",
            format!(
                "listener {} of Gateway {gw} is not accepted; see the Gateway's status",
                named
                    .iter()
                    .map(|(_, c)| c.listener.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    let gateway_ns = gateway.namespace().unwrap_or_default();
    let allowed: Vec<(usize, &Checked<'_>)> = usable
        .into_iter()
        .filter(|(_, c)| {
            c.kinds.contains(&route.kind)
                && namespace_allowed(c.listener, &gateway_ns, &route.namespace, snap)
        })
        .collect();
    if allowed.is_empty() {
        return refused(
            "NotAllowedByListeners",
            format!(
                "no listener of Gateway {gw} allows a {} from namespace {}",
                route.kind.kind(),
                route.namespace
            ),
        );
    }
    if route.kind != RouteKind::Tls {
        let matched = allowed.into_iter().map(|(i, _)| (i, Vec::new())).collect();
        return (cond("Accepted", true, "Accepted", ""), matched);
    }
    let matched: Vec<(usize, Vec<String>)> = allowed
        .into_iter()
        .filter_map(|(i, c)| {
            let mut names: Vec<String> = route
                .hostnames
                .iter()
                .filter_map(|h| hostname::intersect(c.listener.hostname.as_deref(), h))
                .collect();
            names.sort();
            names.dedup();
            (!names.is_empty()).then_some((i, names))
        })
        .collect();
    if matched.is_empty() {
        return refused(
            "NoMatchingListenerHostname",
            format!(
                "none of the hostnames {} falls under a listener of Gateway {gw}",
                route.hostnames.join(", ")
            ),
        );
    }
    (cond("Accepted", true, "Accepted", ""), matched)
}

fn namespace_allowed(l: &Listener, gateway_ns: &str, route_ns: &str, snap: &Snapshot<'_>) -> bool {
    let namespaces = l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    match namespaces.and_then(|n| n.from.as_deref()).unwrap_or("Same") {
        "All" => true,
        "Selector" => {
            let Some(selector) = namespaces
                .and_then(|n| n.selector.as_ref())
                .and_then(|s| translate::selector(s).ok())
            else {
                return false;
            };
            snap.namespaces
                .get(route_ns)
                .is_some_and(|labels| selector.matches(labels))
        }
        _ => gateway_ns == route_ns,
    }
}

/// Whether every backend of `route` is usable (`ResolvedRefs`), and the
/// backends for the data path.
fn resolve(route: &Route<'_>, snap: &Snapshot<'_>) -> (Cond, Vec<ProgramBackend>) {
    let mut first_problem: Option<(&'static str, String)> = None;
    let mut backends = Vec::new();
    for (i, b) in route.rules.iter().flat_map(|r| &r.backend_refs).enumerate() {
        let namespace = b
            .namespace
            .clone()
            .unwrap_or_else(|| route.namespace.clone());
        let group = b.group.as_deref().unwrap_or("");
        let kind = b.kind.as_deref().unwrap_or("Service");
        let port = b.port.unwrap_or(0);
        let problem = if !group.is_empty() || kind != "Service" {
            Some((
                "InvalidKind",
                format!("backendRefs[{i}]: {group}/{kind} is not a Service"),
            ))
        } else if namespace != route.namespace && !granted(route, &namespace, &b.name, snap) {
            Some((
                "RefNotPermitted",
                format!(
                    "backendRefs[{i}]: Service {namespace}/{} is in another namespace and no ReferenceGrant there allows {}s from {}",
                    b.name,
                    route.kind.kind(),
                    route.namespace
                ),
            ))
        } else {
            match snap.services.get(&(namespace.clone(), b.name.clone())) {
                None => Some((
                    "BackendNotFound",
                    format!(
                        "backendRefs[{i}]: Service {namespace}/{} does not exist",
                        b.name
                    ),
                )),
                Some(ports) if !ports.contains(&port) => Some((
                    "BackendNotFound",
                    format!(
                        "backendRefs[{i}]: Service {namespace}/{} has no port {port}",
                        b.name
                    ),
                )),
                Some(_) => None,
            }
        };
        backends.push(ProgramBackend {
            namespace,
            name: b.name.clone(),
            port: u16::try_from(port).unwrap_or(0),
            weight: u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0),
            usable: problem.is_none(),
        });
        if first_problem.is_none() {
            first_problem = problem;
        }
    }
    let resolved = match first_problem {
        Some((reason, message)) => cond("ResolvedRefs", false, reason, message),
        None => cond("ResolvedRefs", true, "ResolvedRefs", ""),
    };
    (resolved, backends)
}

/// Whether a ReferenceGrant in `namespace` lets `route` refer to Service `name`.
fn granted(route: &Route<'_>, namespace: &str, name: &str, snap: &Snapshot<'_>) -> bool {
    snap.grants
        .iter()
        .filter(|g| g.metadata.namespace.as_deref() == Some(namespace))
        .any(|g| {
            g.spec.from.iter().any(|f| {
                f.group == GATEWAY_GROUP
                    && f.kind == route.kind.kind()
                    && f.namespace == route.namespace
            }) && g.spec.to.iter().any(|t| {
                t.group.is_empty()
                    && t.kind == "Service"
                    && t.name.as_deref().is_none_or(|n| n == name)
            })
        })
}

/// The IP addresses `spec.addresses` names.
pub fn requested(gateway: &Gateway) -> Vec<IpAddr> {
    gateway
        .spec
        .addresses
        .iter()
        .filter_map(|a| a.value.parse().ok())
        .collect()
}

/// The Gateway's `Accepted` condition: its addresses and parameters as
/// ironlb reads them, and its listeners (`good` accepted, `bad` not).
fn gateway_accepted(gateway: &Gateway, good: &[String], bad: &[String]) -> Cond {
    // An `IPAddress` entry without a value asks for any address: the
    // pools' choice, as with no entry at all.
    let unsupported_address = gateway.spec.addresses.iter().find(|a| {
        a.type_.as_deref().unwrap_or("IPAddress") != "IPAddress"
            || (!a.value.is_empty() && a.value.parse::<IpAddr>().is_err())
    });
    let parameters = gateway
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref());
    if let Some(a) = unsupported_address {
        cond(
            "Accepted",
            false,
            "UnsupportedAddress",
            format!(
                "spec.addresses: {:?} is not an IP address; ironlb assigns IPAddress addresses from its pools",
                a.value
            ),
        )
    } else if let Some(p) = parameters {
        cond(
            "Accepted",
            false,
            "InvalidParameters",
            format!(
                "spec.infrastructure.parametersRef: {}/{} {:?} is not a kind ironlb reads; its options are the infrastructure annotations",
                p.group, p.kind, p.name
            ),
        )
    } else if good.is_empty() {
        cond(
            "Accepted",
            false,
            "ListenersNotValid",
            format!("no listener is valid: {}", bad.join(", ")),
        )
    } else if !bad.is_empty() {
        cond(
            "Accepted",
            true,
            "ListenersNotValid",
            format!(
                "listeners not accepted: {}; accepted: {}",
                bad.join(", "),
                good.join(", ")
            ),
        )
    } else {
        cond("Accepted", true, "Accepted", "")
    }
}

/// The Gateway's `Programmed` condition and the addresses to show.
fn gateway_programmed(address: &Address, accepted: bool) -> (Cond, Vec<IpAddr>) {
    match (address, accepted) {
        (_, false) => (
            cond(
                "Programmed",
                false,
                "Invalid",
                "the Gateway is not accepted",
            ),
            Vec::new(),
        ),
        (Address::Assigned { addresses, .. }, true) => (
            cond("Programmed", true, "Programmed", ""),
            addresses.clone(),
        ),
        (Address::Pending, true) => (
            cond(
                "Programmed",
                false,
                "AddressNotAssigned",
                "waiting for an address from the IPAddressPools",
            ),
            Vec::new(),
        ),
        (Address::Refused { reason, message }, true) => (
            cond("Programmed", false, reason, message.clone()),
            Vec::new(),
        ),
    }
}

fn gateway_outcome(
    gi: usize,
    gateway: &Gateway,
    listeners: Vec<Checked<'_>>,
    attached: &mut BTreeMap<(usize, usize), Vec<ProgramRoute>>,
    snap: &Snapshot<'_>,
) -> GatewayOutcome {
    let namespace = gateway.namespace().unwrap_or_default();
    let name = gateway.name_any();
    let address = snap
        .addresses
        .get(&(namespace.clone(), name.clone()))
        .cloned()
        .unwrap_or(Address::Pending);
    let mut program: BTreeMap<(u16, ListenerProtocol), Vec<ProgramRoute>> = BTreeMap::new();
    let mut outcomes = Vec::new();
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for (li, mut c) in listeners.into_iter().enumerate() {
        let routes = attached.remove(&(gi, li)).unwrap_or_default();
        let programmed = match (&address, c.usable) {
            (_, false) => cond(
                "Programmed",
                false,
                "Invalid",
                "the listener is not accepted",
            ),
            (Address::Assigned { .. }, true) => cond("Programmed", true, "Programmed", ""),
            (_, true) => cond(
                "Programmed",
                false,
                "Pending",
                "waiting for the Gateway's address",
            ),
        };
        if c.usable {
            good.push(c.listener.name.clone());
            if let (Some(p), Ok(port)) = (c.protocol, u16::try_from(c.listener.port)) {
                program
                    .entry((port, p))
                    .or_default()
                    .extend(routes.iter().cloned());
            }
        } else {
            bad.push(c.listener.name.clone());
        }
        c.conditions.push(programmed);
        outcomes.push(ListenerOutcome {
            name: c.listener.name.clone(),
            supported_kinds: c
                .kinds
                .iter()
                .map(|k| RouteGroupKind {
                    group: Some(GATEWAY_GROUP.to_string()),
                    kind: k.kind().to_string(),
                })
                .collect(),
            attached_routes: i32::try_from(routes.len()).unwrap_or(i32::MAX),
            conditions: c.conditions,
        });
    }

    let accepted = gateway_accepted(gateway, &good, &bad);
    let (programmed, addresses) = gateway_programmed(&address, accepted.status);
    let requested = if accepted.status {
        requested(gateway)
    } else {
        Vec::new()
    };
    GatewayOutcome {
        namespace,
        name,
        generation: gateway.metadata.generation.unwrap_or(0),
        requested,
        conditions: vec![accepted, programmed],
        addresses,
        listeners: outcomes,
        program: Program {
            ports: program
                .into_iter()
                .map(|((port, protocol), routes)| ProgramPort {
                    port,
                    protocol,
                    routes,
                })
                .collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn object<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).expect("a valid object")
    }

    fn class(name: &str, controller: &str) -> GatewayClass {
        object(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": name, "generation": 1},
            "spec": {"controllerName": controller},
        }))
    }

    fn gateway(name: &str, class: &str, listeners: Value) -> Gateway {
        object(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": "infra", "generation": 2},
            "spec": {"gatewayClassName": class, "listeners": listeners},
        }))
    }

    fn route_json(ns: &str, name: &str, created: &str, spec: Value) -> Value {
        json!({
            "metadata": {"name": name, "namespace": ns, "generation": 3, "creationTimestamp": created},
            "spec": spec,
        })
    }

    fn tcp(ns: &str, name: &str, parent: Value, backends: Value) -> TCPRoute {
        object(route_json(
            ns,
            name,
            "2026-01-01T00:00:00Z",
            json!({
                "parentRefs": [parent], "rules": [{"backendRefs": backends}],
            }),
        ))
    }

    fn udp(ns: &str, name: &str, parent: Value, backends: Value) -> UDPRoute {
        object(route_json(
            ns,
            name,
            "2026-01-01T00:00:00Z",
            json!({
                "parentRefs": [parent], "rules": [{"backendRefs": backends}],
            }),
        ))
    }

    fn tls(ns: &str, name: &str, created: &str, hostnames: Value, backends: Value) -> TLSRoute {
        object(route_json(
            ns,
            name,
            created,
            json!({
                "hostnames": hostnames,
                "parentRefs": [{"name": "gw", "namespace": "infra"}],
                "rules": [{"backendRefs": backends}],
            }),
        ))
    }

    fn grant(ns: &str, from_kind: &str, from_ns: &str, to_name: Option<&str>) -> ReferenceGrant {
        let mut to = json!({"group": "", "kind": "Service"});
        if let Some(n) = to_name {
            to["name"] = json!(n);
        }
        object(json!({
            "metadata": {"name": "allow", "namespace": ns},
            "spec": {"from": [{"group": GATEWAY_GROUP, "kind": from_kind, "namespace": from_ns}], "to": [to]},
        }))
    }

    /// The usual world: class `ironlb`, Services `db` (5432) in `infra` and
    /// `apps`, `dns` (53) in `infra`, namespace `apps` labelled `team=a`,
    /// and an address for `infra/gw`.
    fn world<'a>(
        classes: &'a [GatewayClass],
        gateways: &'a [Gateway],
        grants: &'a [ReferenceGrant],
        routes: Vec<Route<'a>>,
    ) -> Snapshot<'a> {
        let mut snap = Snapshot {
            classes: classes.iter().collect(),
            gateways: gateways.iter().collect(),
            grants: grants.iter().collect(),
            routes,
            ..Snapshot::default()
        };
        for (ns, name, port) in [
            ("infra", "db", 5432),
            ("apps", "db", 5432),
            ("infra", "dns", 53),
            ("infra", "web", 443),
            ("infra", "api", 443),
        ] {
            snap.services.insert((ns.into(), name.into()), vec![port]);
        }
        snap.namespaces.insert(
            "apps".into(),
            [("team".to_string(), "a".to_string())].into(),
        );
        snap.namespaces.insert("infra".into(), Default::default());
        snap.addresses.insert(
            ("infra".into(), "gw".into()),
            Address::Assigned {
                addresses: vec!["192.0.2.10".parse().unwrap()],
                taken: BTreeMap::new(),
            },
        );
        snap
    }

    fn reasons(c: &[Cond]) -> Vec<(&'static str, bool, &'static str)> {
        c.iter().map(|c| (c.type_, c.status, c.reason)).collect()
    }

    fn postgres_listener(from: Value) -> Value {
        json!([{"name": "postgres", "port": 5432, "protocol": "TCP", "allowedRoutes": {"namespaces": from}}])
    }

    /// Each row: a listener's `allowedRoutes.namespaces`, the route's
    /// namespace, its parent reference and backends, the grants, and the
    /// route's expected (Accepted, ResolvedRefs) reasons.
    #[test]
    fn route_attachment_and_reference_rules() {
        let same = json!({"from": "Same"});
        let all = json!({"from": "All"});
        let team_a = json!({"from": "Selector", "selector": {"matchLabels": {"team": "a"}}});
        let team_b = json!({"from": "Selector", "selector": {"matchLabels": {"team": "b"}}});
        let gw = json!({"name": "gw", "namespace": "infra"});
        let db = json!([{"name": "db", "port": 5432}]);
        let infra_db = json!([{"name": "db", "namespace": "infra", "port": 5432}]);
        /// What, allowed namespaces, route namespace, parent, backends,
        /// grants, expected (Accepted, ResolvedRefs) reasons.
        type Case<'a> = (
            &'a str,
            &'a Value,
            &'a str,
            Value,
            Value,
            Vec<ReferenceGrant>,
            (&'a str, &'a str),
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "same namespace",
                &same,
                "infra",
                gw.clone(),
                db.clone(),
                vec![],
                ("Accepted", "ResolvedRefs"),
            ),
            (
                "other namespace refused by Same",
                &same,
                "apps",
                gw.clone(),
                db.clone(),
                vec![],
                ("NotAllowedByListeners", "ResolvedRefs"),
            ),
            (
                "All",
                &all,
                "apps",
                gw.clone(),
                db.clone(),
                vec![],
                ("Accepted", "ResolvedRefs"),
            ),
            (
                "selector matching",
                &team_a,
                "apps",
                gw.clone(),
                db.clone(),
                vec![],
                ("Accepted", "ResolvedRefs"),
            ),
            (
                "selector not matching",
                &team_b,
                "apps",
                gw.clone(),
                db.clone(),
                vec![],
                ("NotAllowedByListeners", "ResolvedRefs"),
            ),
            (
                "unknown sectionName",
                &same,
                "infra",
                json!({"name": "gw", "namespace": "infra", "sectionName": "mysql"}),
                db.clone(),
                vec![],
                ("NoMatchingParent", "ResolvedRefs"),
            ),
            (
                "port of no listener",
                &same,
                "infra",
                json!({"name": "gw", "namespace": "infra", "port": 3306}),
                db.clone(),
                vec![],
                ("NoMatchingParent", "ResolvedRefs"),
            ),
            (
                "sectionName and port",
                &same,
                "infra",
                json!({"name": "gw", "namespace": "infra", "sectionName": "postgres", "port": 5432}),
                db.clone(),
                vec![],
                ("Accepted", "ResolvedRefs"),
            ),
            (
                "cross-namespace backend without grant",
                &all,
                "apps",
                gw.clone(),
                infra_db.clone(),
                vec![],
                ("Accepted", "RefNotPermitted"),
            ),
            (
                "cross-namespace backend with grant",
                &all,
                "apps",
                gw.clone(),
                infra_db.clone(),
                vec![grant("infra", "TCPRoute", "apps", None)],
                ("Accepted", "ResolvedRefs"),
            ),
            (
                "grant naming another Service",
                &all,
                "apps",
                gw.clone(),
                infra_db.clone(),
                vec![grant("infra", "TCPRoute", "apps", Some("dns"))],
                ("Accepted", "RefNotPermitted"),
            ),
            (
                "grant for another kind",
                &all,
                "apps",
                gw.clone(),
                infra_db.clone(),
                vec![grant("infra", "UDPRoute", "apps", None)],
                ("Accepted", "RefNotPermitted"),
            ),
            (
                "grant in the wrong namespace",
                &all,
                "apps",
                gw.clone(),
                infra_db.clone(),
                vec![grant("apps", "TCPRoute", "apps", None)],
                ("Accepted", "RefNotPermitted"),
            ),
            (
                "missing Service",
                &same,
                "infra",
                gw.clone(),
                json!([{"name": "nope", "port": 5432}]),
                vec![],
                ("Accepted", "BackendNotFound"),
            ),
            (
                "missing port",
                &same,
                "infra",
                gw.clone(),
                json!([{"name": "db", "port": 5433}]),
                vec![],
                ("Accepted", "BackendNotFound"),
            ),
            (
                "not a Service",
                &same,
                "infra",
                gw.clone(),
                json!([{"group": "", "kind": "ConfigMap", "name": "db", "port": 5432}]),
                vec![],
                ("Accepted", "InvalidKind"),
            ),
        ];
        let classes = [class("ironlb", CONTROLLER_NAME)];
        for (what, from, ns, parent, backends, grants, (accepted, resolved)) in cases {
            let gateways = [gateway("gw", "ironlb", postgres_listener(from.clone()))];
            let route = tcp(ns, "r", parent, backends);
            let out = decide(&world(
                &classes,
                &gateways,
                &grants,
                vec![Route::tcp(&route)],
            ));
            assert_eq!(out.routes.len(), 1, "{what}");
            let got = reasons(&out.routes[0].parents[0].conditions);
            assert_eq!(
                got,
                [
                    ("Accepted", accepted == "Accepted", accepted),
                    ("ResolvedRefs", resolved == "ResolvedRefs", resolved)
                ],
                "{what}: {:?}",
                out.routes[0].parents[0].conditions
            );
            let listener = &out.gateways[0].listeners[0];
            assert_eq!(
                listener.attached_routes,
                i32::from(accepted == "Accepted"),
                "{what}"
            );
            let programmed: usize = out.gateways[0]
                .program
                .ports
                .iter()
                .map(|p| p.routes.len())
                .sum();
            assert_eq!(programmed, usize::from(accepted == "Accepted"), "{what}");
            if let Some(r) = out.gateways[0]
                .program
                .ports
                .first()
                .and_then(|p| p.routes.first())
            {
                assert_eq!(r.backends[0].usable, resolved == "ResolvedRefs", "{what}");
            }
        }
    }

    #[test]
    fn listeners_are_checked_alone_and_against_each_other() {
        let classes = [class("ironlb", CONTROLLER_NAME)];
        let gateways = [gateway(
            "gw",
            "ironlb",
            json!([
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                {"name": "dns-udp", "port": 53, "protocol": "UDP"},
                {"name": "web", "port": 443, "protocol": "TLS", "hostname": "web.example.com", "tls": {"mode": "Passthrough"}},
                {"name": "api", "port": 443, "protocol": "TLS", "hostname": "*.example.com", "tls": {"mode": "Passthrough"}},
                {"name": "api-again", "port": 443, "protocol": "TLS", "hostname": "*.example.com", "tls": {"mode": "Passthrough"}},
                {"name": "raw", "port": 8443, "protocol": "TCP"},
                {"name": "sni", "port": 8443, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
                {"name": "http", "port": 80, "protocol": "HTTP"},
                {"name": "terminate", "port": 9443, "protocol": "TLS", "tls": {"mode": "Terminate"}},
                {"name": "kinds", "port": 5432, "protocol": "TCP", "allowedRoutes": {"kinds": [{"kind": "TCPRoute"}, {"kind": "HTTPRoute"}]}},
                {"name": "no-kinds", "port": 5433, "protocol": "TCP", "allowedRoutes": {"kinds": [{"kind": "UDPRoute"}]}},
                {"name": "taken", "port": 6379, "protocol": "TCP"},
            ]),
        )];
        let mut snap = world(&classes, &gateways, &[], Vec::new());
        snap.addresses.insert(
            ("infra".into(), "gw".into()),
            Address::Assigned {
                addresses: vec!["192.0.2.10".parse().unwrap()],
                taken: [((6379, Protocol::Tcp), "cache/redis".to_string())].into(),
            },
        );
        let out = decide(&snap);
        let g = &out.gateways[0];
        let by_name: BTreeMap<&str, Vec<(&'static str, bool, &'static str)>> = g
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), reasons(&l.conditions)))
            .collect();
        let ok = vec![
            ("Accepted", true, "Accepted"),
            ("ResolvedRefs", true, "ResolvedRefs"),
            ("Conflicted", false, "NoConflicts"),
            ("Programmed", true, "Programmed"),
        ];
        assert_eq!(
            by_name["dns-tcp"], ok,
            "TCP and UDP on one port are distinct"
        );
        assert_eq!(by_name["dns-udp"], ok);
        assert_eq!(
            by_name["web"], ok,
            "TLS listeners differing by hostname are distinct"
        );
        for conflicted in ["api", "api-again"] {
            assert_eq!(
                by_name[conflicted][2],
                ("Conflicted", true, "HostnameConflict"),
                "{conflicted}"
            );
            assert_eq!(by_name[conflicted][3], ("Programmed", false, "Invalid"));
        }
        for conflicted in ["raw", "sni"] {
            assert_eq!(
                by_name[conflicted][2],
                ("Conflicted", true, "ProtocolConflict"),
                "{conflicted}"
            );
        }
        assert_eq!(
            by_name["http"][0],
            ("Accepted", false, "UnsupportedProtocol")
        );
        // GEP-2643: a TLS mode ironlb lacks is an unsupported value, and a
        // refused listener's kinds are not judged as well.
        assert_eq!(
            by_name["terminate"][..2],
            [
                ("Accepted", false, "UnsupportedValue"),
                ("ResolvedRefs", true, "ResolvedRefs")
            ]
        );
        for refused in ["http", "terminate"] {
            let l = g.listeners.iter().find(|l| l.name == refused).unwrap();
            assert!(l.supported_kinds.is_empty(), "{refused}");
        }
        assert_eq!(
            by_name["kinds"][1],
            ("ResolvedRefs", false, "InvalidRouteKinds")
        );
        assert_eq!(
            by_name["kinds"][3],
            ("Programmed", true, "Programmed"),
            "TCPRoute remains"
        );
        assert_eq!(
            by_name["no-kinds"][1],
            ("ResolvedRefs", false, "InvalidRouteKinds")
        );
        assert_eq!(by_name["no-kinds"][3], ("Programmed", false, "Invalid"));
        assert!(
            g.listeners
                .iter()
                .find(|l| l.name == "no-kinds")
                .unwrap()
                .supported_kinds
                .is_empty()
        );
        assert_eq!(by_name["taken"][0], ("Accepted", false, "PortUnavailable"));
        assert!(
            g.listeners
                .iter()
                .find(|l| l.name == "taken")
                .unwrap()
                .conditions[0]
                .message
                .contains("cache/redis")
        );
        // Partly valid: accepted, saying which listeners are not.
        assert_eq!(
            reasons(&g.conditions),
            [
                ("Accepted", true, "ListenersNotValid"),
                ("Programmed", true, "Programmed")
            ]
        );
        for name in ["api", "raw", "http", "taken"] {
            assert!(
                g.conditions[0].message.contains(name),
                "{}",
                g.conditions[0].message
            );
        }
        // The data path opens only the good ports.
        let ports: Vec<(u16, ListenerProtocol)> = g
            .program
            .ports
            .iter()
            .map(|p| (p.port, p.protocol))
            .collect();
        assert_eq!(
            ports,
            [
                (53, ListenerProtocol::Tcp),
                (53, ListenerProtocol::Udp),
                (443, ListenerProtocol::Tls),
                (5432, ListenerProtocol::Tcp)
            ]
        );
    }

    #[test]
    fn a_gateway_without_valid_listeners_or_address_says_so() {
        let classes = [
            class("ironlb", CONTROLLER_NAME),
            class("other", "example.com/other"),
        ];
        let mut hostname_address = gateway(
            "named",
            "ironlb",
            json!([{"name": "t", "port": 1, "protocol": "TCP"}]),
        );
        hostname_address.spec.addresses = vec![crate::api::gateway::GatewayAddress {
            type_: Some("Hostname".into()),
            value: "lb.example.com".into(),
        }];
        let gateways = [
            gateway(
                "gw",
                "ironlb",
                json!([{"name": "h", "port": 80, "protocol": "HTTP"}]),
            ),
            gateway(
                "waiting",
                "ironlb",
                json!([{"name": "t", "port": 1, "protocol": "TCP"}]),
            ),
            hostname_address,
            gateway(
                "theirs",
                "other",
                json!([{"name": "t", "port": 1, "protocol": "TCP"}]),
            ),
        ];
        let route = tcp(
            "infra",
            "r",
            json!({"name": "theirs"}),
            json!([{"name": "db", "port": 5432}]),
        );
        let out = decide(&world(&classes, &gateways, &[], vec![Route::tcp(&route)]));
        assert_eq!(out.classes.len(), 1, "only ironlb's class gets a status");
        assert_eq!(
            reasons(&out.classes[0].conditions),
            [("Accepted", true, "Accepted")]
        );
        let by_name: BTreeMap<&str, &GatewayOutcome> =
            out.gateways.iter().map(|g| (g.name.as_str(), g)).collect();
        assert!(!by_name.contains_key("theirs"));
        assert!(
            out.routes.is_empty(),
            "a route of another controller's Gateway gets no entry of ours"
        );
        assert_eq!(
            reasons(&by_name["gw"].conditions),
            [
                ("Accepted", false, "ListenersNotValid"),
                ("Programmed", false, "Invalid")
            ]
        );
        assert_eq!(
            reasons(&by_name["waiting"].conditions),
            [
                ("Accepted", true, "Accepted"),
                ("Programmed", false, "AddressNotAssigned")
            ]
        );
        assert_eq!(
            by_name["waiting"].listeners[0].conditions[3].reason,
            "Pending"
        );
        assert_eq!(
            reasons(&by_name["named"].conditions)[0],
            ("Accepted", false, "UnsupportedAddress")
        );
    }

    #[test]
    fn addresses_and_parameters_are_judged_before_any_is_asked_for() {
        use crate::api::gateway::{GatewayAddress, GatewayInfrastructure, ParametersReference};
        let classes = [class("ironlb", CONTROLLER_NAME)];
        let listeners = json!([{"name": "t", "port": 1, "protocol": "TCP"}]);
        let address = |type_: Option<&str>, value: &str| GatewayAddress {
            type_: type_.map(Into::into),
            value: value.into(),
        };
        let mut any = gateway("any", "ironlb", listeners.clone());
        any.spec.addresses = vec![address(Some("IPAddress"), "")];
        let mut fixed = gateway("fixed", "ironlb", listeners.clone());
        fixed.spec.addresses = vec![address(None, "192.0.2.7"), address(None, "")];
        let mut mixed = gateway("mixed", "ironlb", listeners.clone());
        mixed.spec.addresses = vec![
            address(Some("test/fake-invalid-type"), "fake"),
            address(None, "192.0.2.8"),
        ];
        let mut parameters = gateway("parameters", "ironlb", listeners);
        parameters.spec.infrastructure = Some(GatewayInfrastructure {
            parameters_ref: Some(ParametersReference {
                group: "invalid.io".into(),
                kind: "InvalidParameters".into(),
                name: "invalid".into(),
                namespace: None,
            }),
            ..GatewayInfrastructure::default()
        });
        parameters.spec.addresses = vec![address(None, "192.0.2.9")];
        let gateways = [any, fixed, mixed, parameters];
        let out = decide(&world(&classes, &gateways, &[], Vec::new()));
        let by_name: BTreeMap<&str, &GatewayOutcome> =
            out.gateways.iter().map(|g| (g.name.as_str(), g)).collect();
        let accepted = |name: &str| reasons(&by_name[name].conditions)[0];
        assert_eq!(
            accepted("any"),
            ("Accepted", true, "Accepted"),
            "a value-less entry asks for any address"
        );
        assert!(by_name["any"].requested.is_empty());
        assert_eq!(accepted("fixed"), ("Accepted", true, "Accepted"));
        assert_eq!(
            by_name["fixed"].requested,
            ["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(accepted("mixed"), ("Accepted", false, "UnsupportedAddress"));
        assert!(
            by_name["mixed"].requested.is_empty(),
            "an unaccepted Gateway asks for nothing"
        );
        assert_eq!(
            accepted("parameters"),
            ("Accepted", false, "InvalidParameters")
        );
        assert!(
            by_name["parameters"].conditions[0]
                .message
                .contains("invalid.io/InvalidParameters")
        );
        assert!(by_name["parameters"].requested.is_empty());
    }

    #[test]
    fn tls_routes_attach_by_hostname_and_programs_keep_weights() {
        let classes = [class("ironlb", CONTROLLER_NAME)];
        let gateways = [gateway(
            "gw",
            "ironlb",
            json!([
                {"name": "tls", "port": 443, "protocol": "TLS", "hostname": "*.example.com", "tls": {"mode": "Passthrough"}},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ]),
        )];
        let web = tls(
            "infra",
            "web",
            "2026-01-02T00:00:00Z",
            json!(["web.example.com", "web.example.org"]),
            json!([{"name": "web", "port": 443, "weight": 80}, {"name": "api", "port": 443, "weight": 20}]),
        );
        let elsewhere = tls(
            "infra",
            "elsewhere",
            "2026-01-01T00:00:00Z",
            json!(["*.example.org"]),
            json!([{"name": "web", "port": 443}]),
        );
        let wide = tls(
            "infra",
            "wide",
            "2026-01-01T00:00:00Z",
            json!(["*.com"]),
            json!([{"name": "api", "port": 443}, {"name": "gone", "port": 443, "weight": 3}]),
        );
        let dns = udp(
            "infra",
            "dns",
            json!({"name": "gw"}),
            json!([{"name": "dns", "port": 53}]),
        );
        let wrong_kind = udp(
            "infra",
            "wrong",
            json!({"name": "gw", "sectionName": "tls"}),
            json!([{"name": "dns", "port": 53}]),
        );
        let routes = vec![
            Route::tls(&web),
            Route::tls(&elsewhere),
            Route::tls(&wide),
            Route::udp(&dns),
            Route::udp(&wrong_kind),
        ];
        let out = decide(&world(&classes, &gateways, &[], routes));
        let by_name: BTreeMap<&str, &RouteOutcome> =
            out.routes.iter().map(|r| (r.name.as_str(), r)).collect();
        assert_eq!(by_name["web"].parents[0].conditions[0].reason, "Accepted");
        assert_eq!(
            by_name["elsewhere"].parents[0].conditions[0].reason,
            "NoMatchingListenerHostname"
        );
        assert_eq!(by_name["wide"].parents[0].conditions[0].reason, "Accepted");
        assert_eq!(
            by_name["wide"].parents[0].conditions[1].reason,
            "BackendNotFound"
        );
        assert_eq!(by_name["dns"].parents[0].conditions[0].reason, "Accepted");
        assert_eq!(
            by_name["wrong"].parents[0].conditions[0].reason,
            "NotAllowedByListeners"
        );
        let g = &out.gateways[0];
        assert_eq!(g.listeners[0].attached_routes, 2);
        assert_eq!(g.listeners[1].attached_routes, 1);
        let tls_port = g
            .program
            .ports
            .iter()
            .find(|p| p.protocol == ListenerProtocol::Tls)
            .unwrap();
        // Oldest first; hostnames narrowed to the listener's.
        assert_eq!(tls_port.routes[0].route, "TLSRoute infra/wide");
        assert_eq!(tls_port.routes[0].hostnames, ["*.example.com"]);
        assert_eq!(tls_port.routes[1].hostnames, ["web.example.com"]);
        let weights: Vec<(u32, bool)> = tls_port.routes[1]
            .backends
            .iter()
            .map(|b| (b.weight, b.usable))
            .collect();
        assert_eq!(weights, [(80, true), (20, true)]);
        let wide_backends: Vec<(u32, bool)> = tls_port.routes[0]
            .backends
            .iter()
            .map(|b| (b.weight, b.usable))
            .collect();
        assert_eq!(
            wide_backends,
            [(1, true), (3, false)],
            "a missing backend keeps its share, refused"
        );
    }

    /// A class whose `parametersRef` names parameters ironlb cannot read is
    /// not accepted, and says which; a class without one is.
    #[test]
    fn a_class_with_parameters_is_invalid_parameters() {
        let mut with = class("with-parameters", CONTROLLER_NAME);
        with.spec.parameters_ref = Some(crate::api::gateway::ParametersReference {
            group: "example.com".into(),
            kind: "Config".into(),
            name: "tuning".into(),
            namespace: Some("infra".into()),
        });
        let classes = [class("ironlb", CONTROLLER_NAME), with];
        let out = decide(&world(&classes, &[], &[], Vec::new()));
        let by_name: BTreeMap<&str, &ClassOutcome> =
            out.classes.iter().map(|c| (c.name.as_str(), c)).collect();
        assert_eq!(
            reasons(&by_name["ironlb"].conditions),
            [("Accepted", true, "Accepted")]
        );
        assert_eq!(
            reasons(&by_name["with-parameters"].conditions),
            [("Accepted", false, "InvalidParameters")]
        );
        assert!(
            by_name["with-parameters"].conditions[0]
                .message
                .contains("example.com/Config \"tuning\"")
        );
    }
}
