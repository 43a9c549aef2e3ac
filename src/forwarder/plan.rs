//! Which listeners a node runs: pure.
//!
//! Input is what the node knows of each embedded-forwarding Service (its
//! addresses, ports, policy and endpoints, see [`Frontend`]) and the addresses
//! this node owns; output is one [`Listener`] per owned address, port and
//! protocol, with the backends it may use. The runtime diffs successive plans.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnetwork::IpNetwork;

pub use super::routing::Backend;
use super::routing::{Route, Routing, Share};
use crate::api::annotations::{ForwardingPath, ProxyVersion};
use crate::ipam::ServiceKey;

/// The forwarder carries TCP and UDP; the view never plans SCTP.
pub use crate::ipam::Protocol;

/// A Service as the forwarder sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    /// The Service.
    pub service: ServiceKey,
    /// Its load-balancer addresses.
    pub addresses: Vec<IpAddr>,
    /// Its ports.
    pub ports: Vec<FrontendPort>,
    /// Traffic policy and options shared by every port.
    pub policy: Policy,
    /// Its endpoints, from every EndpointSlice of the Service.
    pub endpoints: Vec<Endpoint>,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendPort {
    /// The port's name (empty for a single unnamed port); endpoints are matched
    /// on it, as EndpointSlice ports are.
    pub name: String,
    /// The port clients connect to.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
    /// A Gateway's routes behind the port; `None` for a Service's own port,
    /// served by the Service's endpoints.
    pub routing: Option<FrontendRouting>,
}

/// A Gateway port's routes, their backends still as endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendRouting {
    /// TLS passthrough: routes are chosen by the ClientHello's server name.
    pub sni: bool,
    /// The attached routes, oldest first.
    pub routes: Vec<FrontendRoute>,
}

/// One route of a Gateway port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendRoute {
    /// `Kind namespace/name`.
    pub name: String,
    /// Server names it takes (TLS only).
    pub hostnames: Vec<String>,
    /// Its backend references.
    pub shares: Vec<FrontendShare>,
}

/// One backend reference of a route: a Service port and its weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendShare {
    /// Its weight.
    pub weight: u32,
    /// The backend Service port's name, as its endpoints list it; `None`
    /// when the reference is unusable (its share is refused).
    pub port: Option<String>,
    /// The backend Service's endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// How a listener treats clients.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `externalTrafficPolicy: Local`: local endpoints only, and the backend
    /// sees the client's own address.
    pub local: bool,
    /// `sessionAffinity: ClientIP` and its timeout: a client keeps its backend.
    pub affinity: Option<Duration>,
    /// The PROXY protocol header sent to TCP backends.
    pub proxy: Option<ProxyVersion>,
    /// `loadBalancerSourceRanges`; empty: everyone.
    pub source_ranges: Vec<IpNetwork>,
    /// Where the Service asks to be forwarded.
    pub path: ForwardingPath,
}

/// What a Service with `policy` (and Gateway routes, when `routed`) needs
/// that only the user-space forwarder gives, if anything: the kernel path
/// forwards whole connections to one backend chosen at their first packet,
/// and sends nothing of its own.
pub fn user_space_need(policy: &Policy, routed: bool) -> Option<&'static str> {
    if policy.proxy.is_some() {
        Some("send a PROXY protocol header")
    } else if routed {
        Some("route by Gateway routes")
    } else if policy.affinity.is_some() {
        Some("keep session affinity")
    } else {
        None
    }
}

/// One endpoint of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Its address.
    pub address: IpAddr,
    /// The node it runs on, when known.
    pub node: Option<String>,
    /// Ready for new traffic.
    pub ready: bool,
    /// Serving (possibly while terminating).
    pub serving: bool,
    /// Port name and protocol → the endpoint's port.
    pub ports: BTreeMap<(String, Protocol), u16>,
}

/// A socket this node must listen on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// The address and port.
    pub address: SocketAddr,
    /// The protocol.
    pub protocol: Protocol,
    /// The Service it belongs to.
    pub service: ServiceKey,
    /// The backends, in a stable order; empty when the Service has no usable
    /// endpoint (connections are then refused). On a Gateway port, every
    /// backend of every route.
    pub backends: Vec<Backend>,
    /// The Service's policy.
    pub policy: Policy,
    /// A Gateway port's routes, which choose among the backends.
    pub routing: Option<Routing>,
}

impl Listener {
    /// What identifies a listener across plans.
    pub fn key(&self) -> (SocketAddr, Protocol) {
        (self.address, self.protocol)
    }

    /// Whether the kernel forwards this listener, on a node where the
    /// kernel path is `available`: when the Service does not ask for user
    /// space and needs nothing only user space gives.
    pub fn in_kernel(&self, available: bool) -> bool {
        available
            && self.policy.path != ForwardingPath::User
            && user_space_need(&self.policy, self.routing.is_some()).is_none()
    }
}

/// Two Services that want the same address, port and protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The address and port.
    pub address: SocketAddr,
    /// The protocol.
    pub protocol: Protocol,
    /// The Service that keeps it (the first by namespace and name).
    pub kept: ServiceKey,
    /// The Service left without a listener there.
    pub refused: ServiceKey,
}

/// A node's listeners and the conflicts found on the way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sorted by address, then protocol.
    pub listeners: Vec<Listener>,
    /// Ports two Services both asked for.
    pub conflicts: Vec<Conflict>,
}

/// The listeners node `node` runs for the addresses it `owned`s.
///
/// Backends are the Service's ready endpoints; serving-but-terminating ones
/// only when none is ready, as kube-proxy does. With `externalTrafficPolicy:
/// Local` only endpoints on `node` count.
pub fn plan<'a>(
    node: &str,
    owned: &BTreeSet<IpAddr>,
    frontends: impl IntoIterator<Item = &'a Frontend>,
) -> Plan {
    let mut sorted: Vec<&Frontend> = frontends
        .into_iter()
        .filter(|f| f.addresses.iter().any(|ip| owned.contains(ip)))
        .collect();
    sorted.sort_by(|a, b| a.service.cmp(&b.service));
    let mut listeners: BTreeMap<(SocketAddr, Protocol), Listener> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for f in sorted {
        for port in &f.ports {
            let routing = port.routing.as_ref().map(|r| routing(node, f, port, r));
            let backends = match &routing {
                None => backends(node, f, &f.endpoints, &(port.name.clone(), port.protocol)),
                Some(r) => r.backends(),
            };
            let addresses: BTreeSet<IpAddr> = f.addresses.iter().copied().collect();
            for ip in addresses.into_iter().filter(|ip| owned.contains(ip)) {
                let address = SocketAddr::new(ip, port.port);
                let key = (address, port.protocol);
                if let Some(kept) = listeners.get(&key) {
                    if kept.service != f.service {
                        conflicts.push(Conflict {
                            address,
                            protocol: port.protocol,
                            kept: kept.service.clone(),
                            refused: f.service.clone(),
                        });
                    }
                    continue;
                }
                listeners.insert(
                    key,
                    Listener {
                        address,
                        protocol: port.protocol,
                        service: f.service.clone(),
                        backends: backends
                            .iter()
                            .filter(|b| b.address.is_ipv4() == ip.is_ipv4())
                            .cloned()
                            .collect(),
                        policy: f.policy.clone(),
                        routing: routing.as_ref().map(|r| r.of_family(ip)),
                    },
                );
            }
        }
    }
    Plan {
        listeners: listeners.into_values().collect(),
        conflicts,
    }
}

/// The ready endpoints among `endpoints`; serving-but-terminating ones only
/// when none is ready, as kube-proxy does. `state` gives an endpoint's
/// (ready, serving). Shared with the speaker's choice of the nodes that may
/// announce a `Local` Service.
pub fn usable<T>(endpoints: Vec<T>, state: impl Fn(&T) -> (bool, bool)) -> Vec<T> {
    let any_ready = endpoints.iter().any(|e| state(e).0);
    endpoints
        .into_iter()
        .filter(|e| {
            let (ready, serving) = state(e);
            if any_ready { ready } else { serving }
        })
        .collect()
}

/// A Gateway port's routes with each share's usable backends, of every
/// address family (the listener keeps its own).
fn routing(node: &str, f: &Frontend, port: &FrontendPort, r: &FrontendRouting) -> Routing {
    Routing {
        sni: r.sni,
        routes: r
            .routes
            .iter()
            .map(|route| Route {
                name: route.name.clone(),
                hostnames: route.hostnames.clone(),
                shares: route
                    .shares
                    .iter()
                    .map(|s| Share {
                        weight: s.weight,
                        backends: match &s.port {
                            Some(name) => {
                                backends(node, f, &s.endpoints, &(name.clone(), port.protocol))
                            }
                            None => Vec::new(),
                        },
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The usable backends among `endpoints` for the endpoint port `key`.
fn backends(
    node: &str,
    f: &Frontend,
    endpoints: &[Endpoint],
    key: &(String, Protocol),
) -> Vec<Backend> {
    let candidates: Vec<(&Endpoint, u16)> = endpoints
        .iter()
        .filter(|e| !f.policy.local || e.node.as_deref() == Some(node))
        .filter_map(|e| e.ports.get(key).map(|p| (e, *p)))
        .collect();
    let chosen: BTreeSet<Backend> = usable(candidates, |(e, _)| (e.ready, e.serving))
        .into_iter()
        .map(|(e, p)| Backend {
            address: SocketAddr::new(e.address, p),
            node: e.node.clone(),
        })
        .collect();
    chosen.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn endpoint(addr: &str, node: &str, ready: bool, serving: bool) -> Endpoint {
        Endpoint {
            address: ip(addr),
            node: Some(node.into()),
            ready,
            serving,
            ports: [(("http".to_string(), Protocol::Tcp), 8080)].into(),
        }
    }

    fn web(local: bool, endpoints: Vec<Endpoint>) -> Frontend {
        Frontend {
            service: ServiceKey::new("default", "web"),
            addresses: vec![ip("10.0.0.1")],
            ports: vec![FrontendPort {
                name: "http".into(),
                port: 80,
                protocol: Protocol::Tcp,
                routing: None,
            }],
            policy: Policy {
                local,
                ..Policy::default()
            },
            endpoints,
        }
    }

    fn owned(ips: &[&str]) -> BTreeSet<IpAddr> {
        ips.iter().map(|s| ip(s)).collect()
    }

    fn backend_ips(p: &Plan) -> Vec<String> {
        p.listeners[0]
            .backends
            .iter()
            .map(|b| b.address.to_string())
            .collect()
    }

    #[test]
    fn only_owned_addresses_get_listeners() {
        let f = web(false, vec![endpoint("10.1.0.1", "a", true, true)]);
        assert!(
            plan("a", &owned(&["10.0.0.2"]), std::slice::from_ref(&f))
                .listeners
                .is_empty()
        );
        let p = plan("a", &owned(&["10.0.0.1"]), &[f]);
        assert_eq!(p.listeners.len(), 1);
        assert_eq!(p.listeners[0].address.to_string(), "10.0.0.1:80");
        assert_eq!(backend_ips(&p), ["10.1.0.1:8080"]);
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let f = web(
            false,
            vec![
                endpoint("10.1.0.1", "a", true, true),
                endpoint("10.1.0.2", "b", false, true),
                endpoint("10.1.0.3", "b", false, false),
            ],
        );
        let p = plan("a", &owned(&["10.0.0.1"]), std::slice::from_ref(&f));
        assert_eq!(backend_ips(&p), ["10.1.0.1:8080"]);
        let mut f = f;
        f.endpoints.remove(0);
        let p = plan("a", &owned(&["10.0.0.1"]), &[f]);
        assert_eq!(backend_ips(&p), ["10.1.0.2:8080"]);
    }

    #[test]
    fn local_policy_keeps_endpoints_of_this_node_only() {
        let f = web(
            true,
            vec![
                endpoint("10.1.0.1", "a", true, true),
                endpoint("10.1.0.2", "b", true, true),
            ],
        );
        let p = plan("b", &owned(&["10.0.0.1"]), &[f]);
        assert_eq!(backend_ips(&p), ["10.1.0.2:8080"]);
    }

    #[test]
    fn two_services_on_one_port_conflict_and_the_first_keeps_it() {
        let a = web(false, vec![endpoint("10.1.0.1", "a", true, true)]);
        let mut b = a.clone();
        b.service = ServiceKey::new("default", "other");
        let p = plan("a", &owned(&["10.0.0.1"]), &[b, a]);
        assert_eq!(p.listeners.len(), 1);
        assert_eq!(p.listeners[0].service.name, "other");
        assert_eq!(p.conflicts.len(), 1);
        assert_eq!(p.conflicts[0].refused.name, "web");
    }

    #[test]
    fn tcp_and_udp_on_one_port_are_two_listeners() {
        let mut f = web(false, vec![endpoint("10.1.0.1", "a", true, true)]);
        f.ports.push(FrontendPort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Udp,
            routing: None,
        });
        f.endpoints[0]
            .ports
            .insert(("http".into(), Protocol::Udp), 8053);
        let p = plan("a", &owned(&["10.0.0.1"]), &[f]);
        assert_eq!(p.listeners.len(), 2);
        assert_eq!(p.listeners[1].protocol, Protocol::Udp);
        assert_eq!(p.listeners[1].backends[0].address.port(), 8053);
        assert!(p.conflicts.is_empty());
    }
}
