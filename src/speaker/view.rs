//! The speaker's view of a cluster, as a pure function: from Services, pools,
//! L2Advertisements, Nodes and EndpointSlices to the addresses to announce and
//! who may announce each.
//!
//! The watchers that feed it are thin; every decision is here, so tests need no
//! API server.

use std::collections::{BTreeMap, BTreeSet};
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

/// One address to announce, and the rules for who may.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The address.
    pub address: IpAddr,
    /// Its pool.
    pub pool: String,
    /// The Services on it.
    pub services: Vec<ServiceKey>,
    /// Interfaces named by the advertisements; empty: choose by subnet.
    pub interfaces: Vec<String>,
    /// Node selectors and local endpoints.
    pub constraints: Constraints,
    /// Announced on the LAN (ARP/NDP) by one elected node.
    pub l2: bool,
    /// Advertised over BGP by every eligible node, once per advertisement.
    pub bgp: Vec<BgpAdvertisement>,
}

/// How one BGP advertisement advertises an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpAdvertisement {
    /// The nodes that advertise; empty: every node. With
    /// `externalTrafficPolicy: Local`, only those of them with a ready
    /// endpoint (the announcement's constraints say which).
    pub node_selectors: Vec<LabelSelector>,
    /// The `BGPPeer`s to advertise to; empty: all of this node's.
    pub peers: Vec<String>,
    /// The prefix length of the route: the address alone, or the aggregate
    /// that holds it.
    pub prefix_length: u8,
    /// LOCAL_PREF and communities.
    pub attributes: crate::bgp::session::Attributes,
}

/// A BGP router this node may talk to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedPeer {
    /// The session.
    pub spec: crate::bgp::peer::PeerSpec,
    /// The nodes that open it.
    pub constraints: Constraints,
}

/// Everything the speaker reads from the cluster.
pub struct ClusterView<'a> {
    /// All Services.
    pub services: Vec<&'a Service>,
    /// All pools.
    pub pools: Vec<&'a IPAddressPool>,
    /// All advertisements.
    pub advertisements: Vec<&'a L2Advertisement>,
    /// All EndpointSlices.
    pub slices: Vec<&'a EndpointSlice>,
    /// Serve Services without a class.
    pub default_class: bool,
    /// The BGP objects.
    pub bgp: BgpObjects<'a>,
    /// The Gateway API objects (none while the feature is off or the CRDs
    /// are not installed).
    pub gateways: crate::gateway::snapshot::Objects<'a>,
}

/// The BGP kinds as the speaker reads them.
#[derive(Default)]
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

/// A BGP object that cannot be used as written: what the schema cannot
/// catch (names of other objects, a Secret's content).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpProblem {
    /// `BGPPeer` or `BGPAdvertisement`.
    pub kind: &'static str,
    /// The object's name.
    pub name: String,
    /// What is wrong, naming the object and the field.
    pub message: String,
}

impl BgpProblem {
    fn peer(name: &str, message: String) -> Self {
        Self {
            kind: "BGPPeer",
            name: name.to_string(),
            message,
        }
    }

    fn advertisement(name: &str, message: String) -> Self {
        Self {
            kind: "BGPAdvertisement",
            name: name.to_string(),
            message,
        }
    }
}

/// The BGP routers of the cluster, with the nodes that talk to each, and what
/// keeps some from being used (the object named, for the log and events).
/// `restarting`: this speaker took over from one on the same node, so the
/// forwarding state survived (graceful restart's F bit).
pub fn bgp_peers(view: &ClusterView<'_>, restarting: bool) -> (Vec<WantedPeer>, Vec<BgpProblem>) {
    let mut peers = Vec::new();
    let mut problems = Vec::new();
    for p in &view.bgp.peers {
        let name = p.name_any();
        let bfd =
            match &p.spec.bfd_profile {
                Some(profile) => match view
                    .bgp
                    .bfd_profiles
                    .iter()
                    .find(|b| b.name_any() == *profile)
                {
                    Some(b) => Some(&b.spec),
                    None => {
                        problems.push(BgpProblem::peer(&name, format!(
                        "BGPPeer {name}: spec.bfdProfile: BFDProfile {profile} does not exist"
                    )));
                        continue;
                    }
                },
                None => None,
            };
        let password = match &p.spec.password_secret {
            Some(r) => {
                let secret = view.bgp.secrets.iter().find(|s| {
                    s.name_any() == r.name
                        && r.namespace
                            .as_ref()
                            .is_none_or(|n| s.namespace().as_ref() == Some(n))
                });
                match secret
                    .and_then(|s| s.data.as_ref())
                    .and_then(|d| d.get("password"))
                    .map(|b| String::from_utf8(b.0.clone()))
                {
                    Some(Ok(pw)) => Some(pw),
                    _ => {
                        problems.push(BgpProblem::peer(
                            &name,
                            format!(
                                "BGPPeer {name}: spec.passwordSecret: Secret {} has no key \
                             \"password\" in the speaker's namespace (or is not readable \
                             yet: with deploy/components/bgp the controller grants the \
                             speakers each Secret BGPPeers name)",
                                r.name
                            ),
                        ));
                        continue;
                    }
                }
            }
            None => None,
        };
        let selectors: Result<Vec<_>, _> = p
            .spec
            .node_selectors
            .iter()
            .map(translate::selector)
            .collect();
        let Ok(node_selectors) = selectors else {
            problems.push(BgpProblem::peer(
                &name,
                format!("BGPPeer {name}: spec.nodeSelectors: unreadable selector"),
            ));
            continue;
        };
        match crate::bgp::config::peer_spec(&name, &p.spec, password, bfd, restarting) {
            Ok(spec) => peers.push(WantedPeer {
                spec,
                constraints: Constraints {
                    node_selectors,
                    ..Default::default()
                },
            }),
            Err(e) => problems.push(BgpProblem::peer(&name, e)),
        }
    }
    (peers, problems)
}

/// The BGP advertisements of `pool`'s address `address`.
fn bgp_advertisements(
    view: &ClusterView<'_>,
    pool: &str,
    labels: &BTreeMap<String, String>,
    address: IpAddr,
    aliases: &BTreeMap<String, String>,
) -> Vec<BgpAdvertisement> {
    let mut out = Vec::new();
    for ad in &view.bgp.advertisements {
        let spec = &ad.spec;
        let selected = (spec.ip_address_pools.is_empty()
            && spec.ip_address_pool_selectors.is_empty())
            || spec.ip_address_pools.iter().any(|p| p == pool)
            || spec
                .ip_address_pool_selectors
                .iter()
                .filter_map(|s| translate::selector(s).ok())
                .any(|s| s.matches(labels));
        if !selected {
            continue;
        }
        let Ok((prefix, attributes)) =
            crate::bgp::config::advertisement(&ad.name_any(), spec, address, aliases)
        else {
            continue;
        };
        let selectors: Result<Vec<_>, _> = spec
            .node_selectors
            .iter()
            .map(translate::selector)
            .collect();
        out.push(BgpAdvertisement {
            node_selectors: selectors.unwrap_or_else(|_| vec![nothing()]),
            peers: spec.peers.clone(),
            prefix_length: prefix.prefix(),
            attributes,
        });
    }
    out
}

/// What keeps BGPAdvertisements from being used as written, naming the
/// object and field (for the log and events).
pub fn bgp_advertisement_problems(view: &ClusterView<'_>) -> Vec<BgpProblem> {
    let aliases = view.bgp.aliases();
    let mut problems = Vec::new();
    for ad in &view.bgp.advertisements {
        let name = ad.name_any();
        if let Err(e) =
            crate::bgp::config::advertisement(&name, &ad.spec, IpAddr::from([0, 0, 0, 0]), &aliases)
        {
            problems.push(BgpProblem::advertisement(&name, e));
        }
        for peer in &ad.spec.peers {
            if !view.bgp.peers.iter().any(|p| p.name_any() == *peer) {
                problems.push(BgpProblem::advertisement(
                    &name,
                    format!("BGPAdvertisement {name}: spec.peers: BGPPeer {peer} does not exist"),
                ));
            }
        }
    }
    problems
}

/// The addresses to announce. An address's pool is the one the controller
/// recorded on its Service ([`crate::api::annotations::ALLOCATED_FROM_POOL`]),
/// never re-validated here: an address keeps answering while its pool is
/// edited, shrunk, overlapped, invalid or being deleted, exactly as long as the
/// controller lets the Service keep it. Only a Service with no record (written
/// before records existed) is matched against the valid pools' ranges. An
/// address whose pool no advertisement selects is allocated but not announced,
/// as in MetalLB; so is one with neither a record nor a pool.
pub fn announcements(view: &ClusterView<'_>) -> Vec<Announcement> {
    let specs: Vec<_> = view
        .pools
        .iter()
        .filter_map(|p| translate::pool_spec(p).ok())
        .collect();
    let (pools, _) = Allocator::new(&specs);
    let pool_labels: BTreeMap<String, BTreeMap<String, String>> = view
        .pools
        .iter()
        .map(|p| (p.name_any(), p.labels().clone()))
        .collect();

    let aliases = view.bgp.aliases();
    let mut by_address: BTreeMap<IpAddr, Vec<&Service>> = BTreeMap::new();
    for svc in &view.services {
        if translate::is_eligible(svc, view.default_class) {
            for ip in translate::status_addresses(svc) {
                by_address.entry(ip).or_default().push(svc);
            }
        }
    }
    let mut out = Vec::new();
    for (address, services) in by_address {
        let recorded = services.iter().find_map(|s| translate::recorded_pool(s));
        let Some(pool) = recorded
            .or_else(|| pools.pool_of(address))
            .map(str::to_string)
        else {
            continue;
        };
        let labels = pool_labels.get(&pool).cloned().unwrap_or_default();
        let ads: Vec<&&L2Advertisement> = view
            .advertisements
            .iter()
            .filter(|ad| selects_pool(ad, &pool, &labels))
            .collect();
        let bgp = bgp_advertisements(view, &pool, &labels, address, &aliases);
        if ads.is_empty() && bgp.is_empty() {
            continue;
        }
        let mut interfaces: BTreeSet<String> = BTreeSet::new();
        let mut node_selectors = Vec::new();
        let mut any_ad_selects_all_nodes = false;
        for ad in &ads {
            interfaces.extend(ad.spec.interfaces.iter().cloned());
            if ad.spec.node_selectors.is_empty() {
                any_ad_selects_all_nodes = true;
            }
            node_selectors.extend(
                ad.spec
                    .node_selectors
                    .iter()
                    .filter_map(|s| translate::selector(s).ok()),
            );
        }
        if any_ad_selects_all_nodes {
            node_selectors.clear();
        } else if node_selectors.is_empty() {
            // Every selector was unreadable: nobody may announce.
            node_selectors.push(nothing());
        }
        // Every Service with externalTrafficPolicy Local needs a ready endpoint
        // on the announcing node.
        let local_endpoints = services
            .iter()
            .filter(|s| {
                s.spec
                    .as_ref()
                    .and_then(|sp| sp.external_traffic_policy.as_deref())
                    == Some("Local")
            })
            .map(|s| ready_nodes(s, &view.slices))
            .reduce(|a, b| a.intersection(&b).cloned().collect());
        out.push(Announcement {
            address,
            pool,
            services: services.iter().map(|s| translate::service_key(s)).collect(),
            interfaces: interfaces.into_iter().collect(),
            constraints: Constraints {
                node_selectors,
                local_endpoints,
                allowed_nodes: None,
            },
            l2: !ads.is_empty(),
            bgp,
        });
    }
    out
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

fn selects_pool(ad: &L2Advertisement, pool: &str, labels: &BTreeMap<String, String>) -> bool {
    let spec = &ad.spec;
    if spec.ip_address_pools.is_empty() && spec.ip_address_pool_selectors.is_empty() {
        return true;
    }
    spec.ip_address_pools.iter().any(|p| p == pool)
        || spec
            .ip_address_pool_selectors
            .iter()
            .filter_map(|s| translate::selector(s).ok())
            .any(|s| s.matches(labels))
}

/// Nodes with a ready endpoint of `svc`; serving-but-terminating endpoints
/// count only when no endpoint is ready, as kube-proxy does.
fn ready_nodes(svc: &Service, slices: &[&EndpointSlice]) -> BTreeSet<String> {
    let key = translate::service_key(svc);
    let with_node: Vec<_> = slices_of(&key, slices)
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.node_name.is_some())
        .collect();
    crate::forwarder::plan::usable(with_node, |e| {
        let c = e.conditions.as_ref();
        (
            c.and_then(|c| c.ready).unwrap_or(true),
            c.and_then(|c| c.serving) == Some(true),
        )
    })
    .into_iter()
    .filter_map(|e| e.node_name.clone())
    .collect()
}

/// The EndpointSlices of Service `key`.
fn slices_of<'a>(
    key: &'a ServiceKey,
    slices: &'a [&'a EndpointSlice],
) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
    slices.iter().copied().filter(move |s| {
        s.namespace().as_deref() == Some(key.namespace.as_str())
            && s.labels().get("kubernetes.io/service-name") == Some(&key.name)
    })
}

/// The election's view of the nodes: alive members with their labels, network
/// condition and what their speakers say they cannot serve (`health`). A
/// member without a Node object is still a node (its labels unknown); a Node
/// without a live speaker is not.
pub fn nodes(
    members: &BTreeSet<String>,
    objects: &[&K8sNode],
    health: &crate::membership::HealthMap,
) -> Vec<Node> {
    members
        .iter()
        .map(|name| {
            let object = objects.iter().find(|n| n.name_any() == *name);
            Node {
                name: name.clone(),
                labels: object.map(|n| n.labels().clone()).unwrap_or_default(),
                alive: true,
                network_unavailable: object
                    .and_then(|n| n.status.as_ref())
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True")
                    }),
                cannot_serve: health.get(name).cloned().unwrap_or_default(),
            }
        })
        .collect()
}

/// A Service the forwarder can't serve as asked, and why (names the field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendError {
    /// The Service.
    pub service: ServiceKey,
    /// Its addresses: the owner of one reports the error.
    pub addresses: Vec<IpAddr>,
    /// What is wrong, naming the annotation or field.
    pub message: String,
}

/// The Services with `ironlb.dev/forwarding: embedded` and an address, as the
/// forwarder sees them, with their endpoints from the EndpointSlices. A Service
/// with an unreadable setting is left out and named in the errors (a listener
/// that ignores the PROXY protocol or the source ranges the user asked for
/// would be worse than none).
pub fn frontends(view: &ClusterView<'_>) -> (Vec<Frontend>, Vec<FrontendError>) {
    use crate::api::annotations::{FORWARDING, Forwarding, PROXY_PROTOCOL, ProxyVersion};
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut programs = gateway_programs(view);
    for svc in &view.services {
        if !translate::is_eligible(svc, view.default_class) {
            continue;
        }
        let addresses = translate::status_addresses(svc);
        let annotations = svc.annotations();
        let embedded = annotations
            .get(FORWARDING)
            .and_then(|v| Forwarding::parse(v).ok())
            == Some(Forwarding::Embedded);
        if addresses.is_empty() || !embedded {
            continue;
        }
        let key = translate::service_key(svc);
        let fail = |message: String| FrontendError {
            service: key.clone(),
            addresses: addresses.clone(),
            message,
        };
        let Some(spec) = &svc.spec else { continue };
        let proxy = match annotations
            .get(PROXY_PROTOCOL)
            .map(|v| ProxyVersion::parse(v))
        {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => {
                errors.push(fail(format!("annotation {PROXY_PROTOCOL}: {e}")));
                continue;
            }
        };
        let source_ranges = match source_ranges(spec, annotations) {
            Ok(ranges) => ranges,
            Err(m) => {
                errors.push(fail(m));
                continue;
            }
        };
        let mut routing = programs
            .remove(&key)
            .map(|program| gateway_routing(program, view));
        let mut ports = Vec::new();
        for p in spec.ports.iter().flatten() {
            let protocol = match Protocol::of_port(p.protocol.as_deref()) {
                Ok(protocol @ (Protocol::Tcp | Protocol::Udp)) => protocol,
                _ => {
                    errors.push(fail(format!(
                        "spec.ports[{}]: protocol {} is not forwarded (TCP and UDP are)",
                        p.name.as_deref().unwrap_or(&p.port.to_string()),
                        p.protocol.as_deref().unwrap_or_default()
                    )));
                    continue;
                }
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            ports.push(FrontendPort {
                name: p.name.clone().unwrap_or_default(),
                port,
                protocol,
                routing: routing.as_mut().map(|r| {
                    r.remove(&(port, protocol)).unwrap_or(FrontendRouting {
                        sni: false,
                        routes: Vec::new(),
                    })
                }),
            });
        }
        out.push(Frontend {
            service: key.clone(),
            addresses,
            ports,
            policy: Policy {
                local: spec.external_traffic_policy.as_deref() == Some("Local"),
                affinity: affinity(spec),
                proxy,
                source_ranges,
            },
            endpoints: endpoints_of(&key, &view.slices),
        });
    }
    (out, errors)
}

/// A Gateway's routes by port and transport.
type GatewayPorts = BTreeMap<(u16, Protocol), FrontendRouting>;

/// The programs of the Gateways' Services, from the Gateway API objects by
/// the rules the controller's statuses follow: a speaker trusts no route
/// table written on any object, since whoever may edit a Service could
/// write one naming another namespace's backends.
fn gateway_programs(
    view: &ClusterView<'_>,
) -> BTreeMap<ServiceKey, crate::gateway::attach::Program> {
    use crate::gateway::{attach, snapshot};
    if view.gateways.gateways.is_empty() {
        return BTreeMap::new();
    }
    let snap = snapshot::snapshot(&view.gateways, &view.services);
    snapshot::programs(attach::decide(&snap), &view.gateways, &view.services)
}

/// The source ranges a Service admits: the field, or else the older
/// annotation, as kube-proxy reads them (a Gateway's infrastructure
/// annotations can set only the latter). The error names the bad one.
fn source_ranges(
    spec: &ServiceSpec,
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<ipnetwork::IpNetwork>, String> {
    use crate::api::annotations::SOURCE_RANGES;
    let (ranges, where_): (Vec<&str>, String) = match spec.load_balancer_source_ranges.as_deref() {
        Some(r) if !r.is_empty() => (
            r.iter().map(String::as_str).collect(),
            "spec.loadBalancerSourceRanges".into(),
        ),
        _ => (
            annotations
                .get(SOURCE_RANGES)
                .map(|v| v.split(',').filter(|r| !r.trim().is_empty()).collect())
                .unwrap_or_default(),
            format!("annotation {SOURCE_RANGES}"),
        ),
    };
    let mut source_ranges = Vec::new();
    let mut bad_range = None;
    for r in ranges {
        match r.trim().parse::<ipnetwork::IpNetwork>() {
            Ok(n) => source_ranges.push(n),
            Err(e) => bad_range = Some(format!("{where_}: {r:?}: {e}")),
        }
    }
    match bad_range {
        Some(m) => Err(m),
        None => Ok(source_ranges),
    }
}

/// `sessionAffinity: ClientIP`'s timeout (Kubernetes' default: 3 hours).
fn affinity(spec: &ServiceSpec) -> Option<std::time::Duration> {
    (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let seconds = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .unwrap_or(10_800);
        std::time::Duration::from_secs(u64::try_from(seconds.max(1)).unwrap_or(1))
    })
}

/// A Gateway's routes by port and transport, with each backend resolved to
/// its endpoints.
fn gateway_routing(
    program: crate::gateway::attach::Program,
    view: &ClusterView<'_>,
) -> GatewayPorts {
    use crate::gateway::attach;
    let mut out = BTreeMap::new();
    for p in program.ports {
        let (protocol, sni) = match p.protocol {
            attach::ListenerProtocol::Tcp => (Protocol::Tcp, false),
            attach::ListenerProtocol::Tls => (Protocol::Tcp, true),
            attach::ListenerProtocol::Udp => (Protocol::Udp, false),
        };
        let routes = p
            .routes
            .into_iter()
            .map(|r| FrontendRoute {
                name: r.route,
                hostnames: r.hostnames,
                shares: r
                    .backends
                    .iter()
                    .map(|b| backend_share(b, protocol, view))
                    .collect(),
            })
            .collect();
        out.insert((p.port, protocol), FrontendRouting { sni, routes });
    }
    out
}

/// A route's backend Service port as a share: its endpoints, found by the
/// Service port's name as its EndpointSlices list it. A backend that is not
/// usable, or whose Service or port is gone, keeps its weight with no
/// endpoint port: its share is refused.
fn backend_share(
    b: &crate::gateway::attach::ProgramBackend,
    protocol: Protocol,
    view: &ClusterView<'_>,
) -> FrontendShare {
    let key = ServiceKey::new(&b.namespace, &b.name);
    let port = view
        .services
        .iter()
        .filter(|_| b.usable)
        .find(|s| translate::service_key(s) == key)
        .and_then(|s| s.spec.as_ref()?.ports.as_ref())
        .and_then(|ports| {
            ports.iter().find(|p| {
                i32::from(b.port) == p.port
                    && Protocol::of_port(p.protocol.as_deref()) == Ok(protocol)
            })
        })
        .map(|p| p.name.clone().unwrap_or_default());
    FrontendShare {
        weight: b.weight,
        endpoints: match port {
            Some(_) => endpoints_of(&key, &view.slices),
            None => Vec::new(),
        },
        port,
    }
}

/// The endpoints of Service `key` from its EndpointSlices.
fn endpoints_of(key: &ServiceKey, slices: &[&EndpointSlice]) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for slice in slices_of(key, slices) {
        let ports: BTreeMap<(String, Protocol), u16> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let protocol = Protocol::of_port(p.protocol.as_deref()).ok()?;
                let port = u16::try_from(p.port?).ok()?;
                Some(((p.name.clone().unwrap_or_default(), protocol), port))
            })
            .collect();
        for e in &slice.endpoints {
            let translate::Readiness { ready, serving } = translate::readiness(e);
            for a in &e.addresses {
                let Ok(address) = a.parse::<IpAddr>() else {
                    continue;
                };
                out.push(Endpoint {
                    address,
                    node: e.node_name.clone(),
                    ready,
                    serving,
                    ports: ports.clone(),
                });
            }
        }
    }
    out
}

/// The gossip addresses of the other speakers, by their Nodes' InternalIP of
/// `listen`'s family and `listen`'s port: in a DaemonSet every speaker listens
/// on the same port of its node's address.
pub fn node_seeds(
    me: &str,
    objects: &[K8sNode],
    listen: std::net::SocketAddr,
) -> Vec<std::net::SocketAddr> {
    objects
        .iter()
        .filter(|n| n.name_any() != me)
        .filter_map(|n| {
            n.status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse::<IpAddr>().ok())
                .find(|ip| ip.is_ipv4() == listen.is_ipv4())
        })
        .map(|ip| std::net::SocketAddr::new(ip, listen.port()))
        .collect()
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
            .traffic_policy(if local { "Local" } else { "Cluster" })
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
}
