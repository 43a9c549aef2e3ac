//! A speaker's configuration from a file (`--static`): the addresses, the
//! gossip group and the Services with their endpoints, for hosts without a
//! cluster and for the namespace lab.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::view::{self, Announcement};
use crate::api::annotations::{ForwardingPath, ProxyVersion};
use crate::election::Constraints;
use crate::forwarder::plan::{
    Endpoint, Frontend, FrontendPort, FrontendRoute, FrontendRouting, FrontendShare, Policy,
    Protocol,
};
use crate::ipam::ServiceKey;

/// A speaker's configuration from a file.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticConfig {
    /// This node's name (default: the host name).
    #[serde(default)]
    pub node: Option<String>,
    /// The gossip group.
    pub gossip: Gossip,
    /// The addresses to announce.
    pub addresses: Vec<StaticAddress>,
    /// Gratuitous packets sent on takeover.
    #[serde(default = "default_burst_count")]
    pub announce_count: u32,
    /// Milliseconds between them.
    #[serde(default = "default_burst_interval_ms")]
    pub announce_interval_ms: u64,
    /// Seconds between re-announcements of every owned address (0: never).
    /// Switches age MAC entries faster than hosts age ARP entries.
    #[serde(default = "default_reannounce_s")]
    pub reannounce_seconds: u64,
    /// Services the embedded forwarder carries on those addresses.
    #[serde(default)]
    pub services: Vec<StaticService>,
    /// The forwarder's limits and timeouts.
    #[serde(default)]
    pub forwarder: crate::forwarder::Tuning,
    /// BGP routers to advertise addresses to.
    #[serde(default)]
    pub bgp: StaticBgp,
}

/// The BGP part of a static configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticBgp {
    /// The routers.
    #[serde(default)]
    pub peers: Vec<StaticPeer>,
    /// Names for communities, as a `Community` object gives them.
    #[serde(default)]
    pub communities: BTreeMap<String, String>,
    /// BFD profiles by name, as `BFDProfile` specs, for the peers'
    /// `bfdProfile`.
    #[serde(default)]
    pub bfd_profiles: BTreeMap<String, crate::api::BFDProfileSpec>,
}

/// A BGP router of a static configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticPeer {
    /// Its name, for advertisements' `peers` and the logs.
    pub name: String,
    /// The session, as a `BGPPeer`'s spec writes it (its `nodeSelectors`
    /// and `passwordSecret` are not used here).
    pub spec: crate::api::BGPPeerSpec,
    /// The TCP MD5 password.
    #[serde(default)]
    pub password: Option<String>,
    /// Nodes that open the session; empty: all.
    #[serde(default)]
    pub nodes: Vec<String>,
}

/// A Service of a static configuration: an address, ports and endpoints, with
/// the same options as a Kubernetes Service with embedded forwarding.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticService {
    /// A name for logs and metrics (namespace `static`).
    pub name: String,
    /// One of the file's addresses.
    pub address: IpAddr,
    /// The ports.
    pub ports: Vec<StaticPort>,
    /// The endpoints; each serves every port on its `targetPort`.
    pub endpoints: Vec<StaticEndpoint>,
    /// `Cluster` (default) or `Local`: only endpoints on the owning node, and
    /// they see the client's address.
    #[serde(default)]
    pub external_traffic_policy: Option<String>,
    /// Seconds a client keeps its backend (`sessionAffinity: ClientIP`).
    #[serde(default)]
    pub session_affinity_seconds: Option<u64>,
    /// `v1` or `v2`: the PROXY protocol header sent to TCP backends.
    #[serde(default)]
    pub proxy_protocol: Option<String>,
    /// Clients allowed; empty: all.
    #[serde(default)]
    pub source_ranges: Vec<ipnetwork::IpNetwork>,
    /// `auto` (default), `kernel` or `user`, as the
    /// `ironlb.dev/forwarding-path` annotation.
    #[serde(default)]
    pub forwarding_path: Option<String>,
}

/// A port of a [`StaticService`].
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticPort {
    /// The port clients use.
    pub port: u16,
    /// `TCP` (default) or `UDP`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// The endpoints' port (default: `port`).
    #[serde(default)]
    pub target_port: Option<u16>,
    /// TLS passthrough on this TCP port: each client goes to the route whose
    /// hostnames best match its ClientHello's server name (as a Gateway's
    /// TLSRoutes), instead of to the service's endpoints.
    #[serde(default)]
    pub tls_routes: Vec<StaticTlsRoute>,
}

/// A route of a TLS passthrough port.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticTlsRoute {
    /// Server names, exact or `*.` wildcards; empty: every name, and
    /// clients that send none.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Where its connections go.
    pub endpoints: Vec<StaticEndpoint>,
    /// The endpoints' port (default: the port's `targetPort`, else `port`).
    #[serde(default)]
    pub target_port: Option<u16>,
}

/// An endpoint of a [`StaticService`].
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticEndpoint {
    /// Its address.
    pub address: IpAddr,
    /// The node it runs on (matters for `Local`).
    #[serde(default)]
    pub node: Option<String>,
}

/// A static port's TLS routes, each one share of its endpoints at the
/// route's target port.
fn static_tls_routing(p: &StaticPort, target: u16) -> Result<FrontendRouting, String> {
    let mut routes = Vec::new();
    for (i, r) in p.tls_routes.iter().enumerate() {
        if let Some(bad) = r.hostnames.iter().find(|h| !crate::api::hostname::valid(h)) {
            return Err(format!(
                "port {}: tlsRoutes[{i}].hostnames: {bad:?} is not a hostname or a *. wildcard",
                p.port
            ));
        }
        let port = format!("tls-route-{i}");
        let target = r.target_port.unwrap_or(target);
        routes.push(FrontendRoute {
            name: format!("port {} tlsRoutes[{i}]", p.port),
            hostnames: r.hostnames.iter().map(|h| h.to_ascii_lowercase()).collect(),
            shares: vec![FrontendShare {
                weight: 1,
                endpoints: r
                    .endpoints
                    .iter()
                    .map(|e| e.endpoint([((port.clone(), Protocol::Tcp), target)].into()))
                    .collect(),
                port: Some(port),
            }],
        });
    }
    Ok(FrontendRouting { sni: true, routes })
}

impl StaticEndpoint {
    /// The endpoint, always ready, serving `ports`.
    fn endpoint(&self, ports: BTreeMap<(String, Protocol), u16>) -> Endpoint {
        Endpoint {
            address: self.address,
            node: self.node.clone(),
            ready: true,
            serving: true,
            ports,
        }
    }
}

/// What the forwarder is asked to carry, and the Services it can't, by
/// Service and found by address. Persistent maps: the view changes one
/// Service in place and every transition reads a copy that cost nothing, so
/// a change costs the same in a cluster of ten Services as of ten thousand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forwards {
    /// Services with embedded forwarding.
    frontends: imbl::OrdMap<ServiceKey, Arc<Frontend>>,
    /// Load-balancer address → the Services forwarded on it.
    by_address: imbl::OrdMap<IpAddr, imbl::OrdSet<ServiceKey>>,
    /// Services with embedded forwarding and a setting that can't be
    /// honoured (a Service may have several, and a frontend too).
    invalid: imbl::OrdMap<ServiceKey, Arc<Vec<view::FrontendError>>>,
}

impl Forwards {
    /// The frontends and errors of a whole view.
    pub fn new(frontends: Vec<Frontend>, invalid: Vec<view::FrontendError>) -> Self {
        let mut out = Self::default();
        for f in frontends {
            out.set_frontend(f.service.clone(), Some(f));
        }
        let mut errors: BTreeMap<ServiceKey, Vec<view::FrontendError>> = BTreeMap::new();
        for e in invalid {
            errors.entry(e.service.clone()).or_default().push(e);
        }
        for (service, e) in errors {
            out.set_invalid(service, e);
        }
        out
    }

    /// Service `service`'s frontend is `frontend` now (`None`: it has none).
    pub fn set_frontend(&mut self, service: ServiceKey, frontend: Option<Frontend>) {
        let new = frontend.map(Arc::new);
        let old = match &new {
            Some(f) => self.frontends.insert(service.clone(), f.clone()),
            None => self.frontends.remove(&service),
        };
        if old == new {
            return;
        }
        for ip in old.iter().flat_map(|f| &f.addresses) {
            if let Some(on) = self.by_address.get_mut(ip) {
                on.remove(&service);
                if on.is_empty() {
                    self.by_address.remove(ip);
                }
            }
        }
        for ip in new.iter().flat_map(|f| &f.addresses) {
            self.by_address
                .entry(*ip)
                .or_default()
                .insert(service.clone());
        }
    }

    /// Service `service`'s errors are `errors` now.
    pub fn set_invalid(&mut self, service: ServiceKey, errors: Vec<view::FrontendError>) {
        if errors.is_empty() {
            self.invalid.remove(&service);
        } else if self.invalid.get(&service).is_none_or(|e| **e != errors) {
            self.invalid.insert(service, Arc::new(errors));
        }
    }

    /// The frontends with an address in `addresses`, each once.
    pub fn on<'a>(&'a self, addresses: impl IntoIterator<Item = &'a IpAddr>) -> Vec<&'a Frontend> {
        let services: BTreeSet<&ServiceKey> = addresses
            .into_iter()
            .filter_map(|ip| self.by_address.get(ip))
            .flatten()
            .collect();
        services
            .into_iter()
            .filter_map(|s| self.frontends.get(s).map(AsRef::as_ref))
            .collect()
    }

    /// Every frontend.
    pub fn frontends(&self) -> impl Iterator<Item = &Frontend> {
        self.frontends.values().map(AsRef::as_ref)
    }

    /// Every error.
    pub fn invalid(&self) -> impl Iterator<Item = &view::FrontendError> {
        self.invalid.values().flat_map(|e| e.iter())
    }
}

/// The gossip settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gossip {
    /// Where this speaker listens, `address:port`.
    pub listen: SocketAddr,
    /// Other speakers.
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    /// The shared secret, at least 16 bytes; several lines are several keys
    /// (the first signs), for rotation.
    pub secret: String,
}

/// One address and where it may be announced.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticAddress {
    /// The address.
    pub address: IpAddr,
    /// Interfaces to announce on (ARP/NDP). With `bgp` and no interfaces,
    /// the address is advertised over BGP only.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Nodes allowed to announce it; empty: all.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Advertise it over BGP, as a `BGPAdvertisement`'s spec writes it
    /// (`peers`, `localPref`, `communities`, `aggregationLength`); every
    /// allowed node advertises.
    #[serde(default)]
    pub bgp: Option<crate::api::BGPAdvertisementSpec>,
}

/// Gratuitous packets in a takeover burst, by default.
pub const DEFAULT_ANNOUNCE_COUNT: u32 = 3;
/// Milliseconds between them, by default.
pub const DEFAULT_ANNOUNCE_INTERVAL_MS: u64 = 100;
/// Seconds between re-announcements, by default.
pub const DEFAULT_REANNOUNCE_SECONDS: u64 = 30;

fn default_burst_count() -> u32 {
    DEFAULT_ANNOUNCE_COUNT
}
fn default_burst_interval_ms() -> u64 {
    DEFAULT_ANNOUNCE_INTERVAL_MS
}
fn default_reannounce_s() -> u64 {
    DEFAULT_REANNOUNCE_SECONDS
}

/// A configuration file that can't be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid YAML for the schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong and where.
        message: String,
    },
    /// A service that can't be forwarded as written.
    #[error("{path}: services[{service}].{field}: {message}")]
    Service {
        /// The file.
        path: String,
        /// The service's name.
        service: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A BGP peer or advertisement that can't be used.
    #[error("{path}: {message}")]
    Bgp {
        /// The file.
        path: String,
        /// What is wrong, naming the peer or address and the field.
        message: String,
    },
    /// An address listed twice.
    #[error("{path}: addresses: {address} is listed twice")]
    Duplicate {
        /// The file.
        path: String,
        /// The address.
        address: IpAddr,
    },
}

impl StaticConfig {
    /// Reads and checks a file.
    pub fn load(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and checks the text of a file named `path`.
    pub fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        let config: StaticConfig =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.into(),
                message: e.to_string(),
            })?;
        let mut seen = BTreeSet::new();
        for a in &config.addresses {
            if !seen.insert(a.address) {
                return Err(ConfigError::Duplicate {
                    path: path.into(),
                    address: a.address,
                });
            }
        }
        config.frontends_checked(path)?;
        config.bgp_checked(path)?;
        Ok(config)
    }

    /// The file's BGP routers.
    pub fn bgp_peers(&self) -> Vec<view::WantedPeer> {
        // `parse` checked every peer, so nothing is dropped here.
        self.bgp_checked("").map(|(p, _)| p).unwrap_or_default()
    }

    fn bgp_checked(
        &self,
        path: &str,
    ) -> Result<
        (
            Vec<view::WantedPeer>,
            BTreeMap<IpAddr, view::BgpAdvertisement>,
        ),
        ConfigError,
    > {
        let fail = |message: String| ConfigError::Bgp {
            path: path.into(),
            message,
        };
        let mut peers = Vec::new();
        for p in &self.bgp.peers {
            if peers
                .iter()
                .any(|w: &view::WantedPeer| w.spec.name == p.name)
            {
                return Err(fail(format!("bgp.peers: {} is listed twice", p.name)));
            }
            let bfd = match &p.spec.bfd_profile {
                Some(name) => Some(self.bgp.bfd_profiles.get(name).ok_or_else(|| {
                    fail(format!(
                        "bgp.peers[{}].spec.bfdProfile: {name} is not one of bgp.bfdProfiles",
                        p.name
                    ))
                })?),
                None => None,
            };
            let spec =
                crate::bgp::config::peer_spec(&p.name, &p.spec, p.password.clone(), bfd, false)
                    .map_err(fail)?;
            peers.push(view::WantedPeer {
                spec,
                constraints: Constraints {
                    allowed_nodes: (!p.nodes.is_empty()).then(|| p.nodes.iter().cloned().collect()),
                    ..Default::default()
                },
            });
        }
        let mut ads = BTreeMap::new();
        for a in &self.addresses {
            let Some(ad) = &a.bgp else { continue };
            for peer in &ad.peers {
                if !self.bgp.peers.iter().any(|p| &p.name == peer) {
                    return Err(fail(format!(
                        "addresses[{}].bgp.peers: {peer} is not one of bgp.peers",
                        a.address
                    )));
                }
            }
            let (prefix, attributes) = crate::bgp::config::advertisement(
                &a.address.to_string(),
                ad,
                a.address,
                &self.bgp.communities,
            )
            .map_err(fail)?;
            ads.insert(
                a.address,
                view::BgpAdvertisement {
                    node_selectors: Vec::new(),
                    peers: ad.peers.clone(),
                    prefix_length: prefix.prefix(),
                    attributes,
                },
            );
        }
        Ok((peers, ads))
    }

    /// The file's services as the forwarder sees them.
    pub fn frontends(&self) -> Vec<Frontend> {
        // `parse` checked every field, so nothing is dropped here.
        self.frontends_checked("").unwrap_or_default()
    }

    fn frontends_checked(&self, path: &str) -> Result<Vec<Frontend>, ConfigError> {
        let mut out = Vec::new();
        for s in &self.services {
            let fail = |field: &'static str, message: String| ConfigError::Service {
                path: path.into(),
                service: s.name.clone(),
                field,
                message,
            };
            if !self.addresses.iter().any(|a| a.address == s.address) {
                return Err(fail(
                    "address",
                    format!("{} is not one of the file's addresses", s.address),
                ));
            }
            let local = match s.external_traffic_policy.as_deref() {
                None | Some("Cluster") => false,
                Some("Local") => true,
                Some(other) => {
                    return Err(fail(
                        "externalTrafficPolicy",
                        format!("{other:?} is not one of \"Cluster\", \"Local\""),
                    ));
                }
            };
            let proxy = s
                .proxy_protocol
                .as_deref()
                .map(ProxyVersion::parse)
                .transpose()
                .map_err(|e| fail("proxyProtocol", e))?;
            let forwarding_path = s
                .forwarding_path
                .as_deref()
                .map(ForwardingPath::parse)
                .transpose()
                .map_err(|e| fail("forwardingPath", e))?
                .unwrap_or_default();
            let mut ports = Vec::new();
            let mut endpoint_ports = BTreeMap::new();
            for p in &s.ports {
                let protocol = match Protocol::of_port(p.protocol.as_deref()) {
                    Ok(protocol @ (Protocol::Tcp | Protocol::Udp)) => protocol,
                    _ => {
                        return Err(fail(
                            "ports",
                            format!(
                                "protocol {:?} is not one of \"TCP\", \"UDP\"",
                                p.protocol.as_deref().unwrap_or_default()
                            ),
                        ));
                    }
                };
                let name = format!("{}-{}", protocol, p.port);
                let target = p.target_port.unwrap_or(p.port);
                endpoint_ports.insert((name.clone(), protocol), target);
                let routing = if p.tls_routes.is_empty() {
                    None
                } else if protocol != Protocol::Tcp {
                    return Err(fail(
                        "ports",
                        format!("port {}: tlsRoutes need TCP", p.port),
                    ));
                } else {
                    Some(static_tls_routing(p, target).map_err(|m| fail("ports", m))?)
                };
                ports.push(FrontendPort {
                    name,
                    port: p.port,
                    protocol,
                    routing,
                });
            }
            let policy = Policy {
                local,
                affinity: s.session_affinity_seconds.map(Duration::from_secs),
                proxy,
                source_ranges: s.source_ranges.clone(),
                path: forwarding_path,
            };
            let routed = ports.iter().any(|p| p.routing.is_some());
            crate::speaker::view::kernel_path_fits(&policy, routed)
                .map_err(|e| fail("forwardingPath", e))?;
            out.push(Frontend {
                service: ServiceKey::new("static", s.name.clone()),
                addresses: vec![s.address],
                ports,
                policy,
                endpoints: s
                    .endpoints
                    .iter()
                    .map(|e| e.endpoint(endpoint_ports.clone()))
                    .collect(),
            });
        }
        Ok(out)
    }

    /// The file's addresses as announcements: named interfaces, and the nodes
    /// allowed to announce each.
    /// An address of a `Local` service may only be announced by the nodes of
    /// its endpoints, as in a cluster.
    pub fn announcements(&self) -> Vec<Announcement> {
        let bgp = self.bgp_checked("").map(|(_, a)| a).unwrap_or_default();
        self.addresses
            .iter()
            .map(|a| {
                let local_endpoints = self
                    .services
                    .iter()
                    .filter(|s| {
                        s.address == a.address
                            && s.external_traffic_policy.as_deref() == Some("Local")
                    })
                    .map(|s| s.endpoints.iter().filter_map(|e| e.node.clone()).collect())
                    .reduce(|x: BTreeSet<String>, y| x.intersection(&y).cloned().collect());
                Announcement {
                    address: a.address,
                    pool: String::new(),
                    services: Vec::new(),
                    interfaces: a.interfaces.clone(),
                    constraints: Constraints {
                        allowed_nodes: (!a.nodes.is_empty())
                            .then(|| a.nodes.iter().cloned().collect()),
                        local_endpoints,
                        ..Default::default()
                    },
                    l2: a.bgp.is_none() || !a.interfaces.is_empty(),
                    bgp: bgp.get(&a.address).cloned().into_iter().collect(),
                }
            })
            .collect()
    }

    /// When gratuitous packets go out.
    pub fn timing(&self) -> Timing {
        Timing {
            announce_count: self.announce_count,
            announce_interval: Duration::from_millis(self.announce_interval_ms),
            reannounce: Duration::from_secs(self.reannounce_seconds),
        }
    }
}

/// When gratuitous packets go out.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Packets in a takeover burst.
    pub announce_count: u32,
    /// Time between them.
    pub announce_interval: Duration,
    /// Time between re-announcements of every owned address (zero: never).
    pub reannounce: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "
node: node-1
gossip:
  listen: 10.77.0.11:7946
  seeds: [10.77.0.12:7946]
  secret: s3cret
addresses:
  - address: 10.77.0.100
    interfaces: [eth0]
  - address: fd00::100
    interfaces: [eth0]
    nodes: [node-2]
";

    #[test]
    fn a_static_file_parses_with_defaults() {
        let c = StaticConfig::parse("lab.yaml", FILE).unwrap();
        assert_eq!(c.node.as_deref(), Some("node-1"));
        assert_eq!(c.addresses.len(), 2);
        assert_eq!(
            (
                c.announce_count,
                c.announce_interval_ms,
                c.reannounce_seconds
            ),
            (3, 100, 30)
        );
    }

    #[test]
    fn tls_routes_route_a_tcp_port_by_server_name_and_bad_ones_are_named() {
        let with = |ports: &str| {
            format!(
                "{FILE}services:\n  - name: tls\n    address: 10.77.0.100\n    ports: [{ports}]\n    endpoints: []\n"
            )
        };
        let c = StaticConfig::parse(
            "lab.yaml",
            &with("{port: 443, tlsRoutes: [{hostnames: [A.example.com], endpoints: [{address: 10.0.0.5}], targetPort: 8443}, {endpoints: [{address: 10.0.0.6}]}]}"),
        )
        .unwrap();
        let owned = ["10.77.0.100".parse().unwrap()].into();
        let plan = crate::forwarder::plan::plan("node-1", &owned, &c.frontends());
        let routing = plan.listeners[0].routing.as_ref().expect("routed");
        assert!(routing.sni);
        let route = |name| {
            routing
                .route(Some(name))
                .map(|r| r.shares[0].backends[0].address.to_string())
        };
        assert_eq!(route("a.example.com").as_deref(), Some("10.0.0.5:8443"));
        assert_eq!(route("other.org").as_deref(), Some("10.0.0.6:443"));

        let err = StaticConfig::parse(
            "lab.yaml",
            &with("{port: 443, tlsRoutes: [{hostnames: [\"a..com\"], endpoints: []}]}"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("tls")
                && err
                    .to_string()
                    .contains("tlsRoutes[0].hostnames: \"a..com\""),
            "{err}"
        );
        let err = StaticConfig::parse(
            "lab.yaml",
            &with("{port: 53, protocol: UDP, tlsRoutes: [{endpoints: []}]}"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("tlsRoutes need TCP"), "{err}");
    }

    #[test]
    fn a_bad_file_names_the_file_and_the_problem() {
        let err = StaticConfig::parse("lab.yaml", &FILE.replace("10.77.0.100", "10.77.0.300"))
            .unwrap_err();
        assert!(err.to_string().starts_with("lab.yaml: "), "{err}");
        let dup = FILE.replace("fd00::100", "10.77.0.100");
        let err = StaticConfig::parse("lab.yaml", &dup).unwrap_err();
        assert_eq!(
            err.to_string(),
            "lab.yaml: addresses: 10.77.0.100 is listed twice"
        );
        let err =
            StaticConfig::parse("lab.yaml", &FILE.replace("secret:", "secrett:")).unwrap_err();
        assert!(err.to_string().contains("secrett"), "{err}");
    }
}
