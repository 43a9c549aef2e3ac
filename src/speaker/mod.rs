//! The speaker: on every node, decides which addresses this node owns and
//! announces them.
//!
//! Its view is the gossip membership (who is alive) plus the addresses to
//! announce; every speaker computes the same owners from the same view
//! ([`crate::election`]), so there is nothing to coordinate. Ownership follows
//! the membership alone, so announcement and failover keep working while the
//! Kubernetes API server is unreachable.
//!
//! This module runs from a static file (`--static`), for hosts without a
//! cluster and for the namespace lab; the Kubernetes view feeds the same loop.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::annotations::ProxyVersion;
use crate::election::{self, Constraints};
use crate::forwarder::Forwarder;
use crate::forwarder::plan::{Endpoint, Frontend, FrontendPort, Policy, Protocol};
use crate::ipam::ServiceKey;
use crate::l2::announcer::Announcer;
use crate::membership::{self, Membership};
use k8s_openapi::api::core::v1::Node as K8sNode;
use kube::ResourceExt;
use tokio::sync::{mpsc, watch};
use view::Announcement;

pub mod metrics;
pub mod view;

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

/// What the forwarder is asked to carry, and the Services it can't.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forwards {
    /// Services with embedded forwarding.
    pub frontends: Vec<Frontend>,
    /// Services with embedded forwarding and a setting that can't be honoured.
    pub invalid: Vec<view::FrontendError>,
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
    /// Interfaces to announce on.
    pub interfaces: Vec<String>,
    /// Nodes allowed to announce it; empty: all.
    #[serde(default)]
    pub nodes: Vec<String>,
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
        Ok(config)
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
            let mut ports = Vec::new();
            let mut endpoint_ports = BTreeMap::new();
            for p in &s.ports {
                let protocol = match p.protocol.as_deref() {
                    None | Some("TCP") => Protocol::Tcp,
                    Some("UDP") => Protocol::Udp,
                    Some(other) => {
                        return Err(fail(
                            "ports",
                            format!("protocol {other:?} is not one of \"TCP\", \"UDP\""),
                        ));
                    }
                };
                let name = format!("{}-{}", protocol, p.port);
                endpoint_ports.insert((name.clone(), protocol), p.target_port.unwrap_or(p.port));
                ports.push(FrontendPort {
                    name,
                    port: p.port,
                    protocol,
                });
            }
            out.push(Frontend {
                service: ServiceKey::new("static", s.name.clone()),
                addresses: vec![s.address],
                ports,
                policy: Policy {
                    local,
                    affinity: s.session_affinity_seconds.map(Duration::from_secs),
                    proxy,
                    source_ranges: s.source_ranges.clone(),
                },
                endpoints: s
                    .endpoints
                    .iter()
                    .map(|e| Endpoint {
                        address: e.address,
                        node: e.node.clone(),
                        ready: true,
                        serving: true,
                        ports: endpoint_ports.clone(),
                    })
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
                }
            })
            .collect()
    }

    fn timing(&self) -> Timing {
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

/// The addresses `me` owns, with the interfaces named for each (empty: choose
/// by subnet), given the live `members`, the Node objects (`None` without a
/// cluster) and the desired announcements. Pure.
///
/// With a cluster, only members named like a Node object count: a speaker
/// that knows the gossip secret but runs on no node of the cluster (a test
/// box, a stolen secret) never owns an address.
pub fn owned(
    me: &str,
    members: &BTreeSet<String>,
    node_objects: Option<&[K8sNode]>,
    desired: &[Announcement],
) -> BTreeMap<IpAddr, Vec<String>> {
    let objects: Vec<&K8sNode> = node_objects.into_iter().flatten().collect();
    let known: BTreeSet<String>;
    let members = match node_objects {
        Some(_) => {
            known = members
                .iter()
                .filter(|m| objects.iter().any(|n| n.name_any() == **m))
                .cloned()
                .collect();
            &known
        }
        None => members,
    };
    let nodes = view::nodes(members, &objects);
    desired
        .iter()
        .filter(|a| {
            election::owner(a.address, &nodes, &a.constraints).is_some_and(|o| o.name == me)
        })
        .map(|a| (a.address, a.interfaces.clone()))
        .collect()
}

/// Runs a speaker from a static configuration until `shutdown`, then withdraws
/// every address and leaves the group. When `path` is given, the file is read
/// again whenever it changes: addresses, services and endpoints follow it
/// (gossip settings need a restart); a file that no longer parses is logged
/// and the last good one stays.
pub async fn run_static(
    config: StaticConfig,
    path: Option<String>,
    node: String,
    http: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let (desired_tx, desired) = watch::channel(config.announcements());
    let forwards = |c: &StaticConfig| Forwards {
        frontends: c.frontends(),
        invalid: Vec::new(),
    };
    let (frontends_tx, frontends) = watch::channel(forwards(&config));
    let (_nodes_tx, nodes) = watch::channel(Vec::new());
    if let Some(path) = path {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let modified = |p: &str| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut seen = modified(&path);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                let now = modified(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                match StaticConfig::load(&path) {
                    Ok(c) => {
                        info!(%path, "configuration reloaded");
                        desired_tx.send_replace(c.announcements());
                        frontends_tx.send_replace(forwards(&c));
                    }
                    Err(e) => {
                        warn!(error = %e, "configuration not reloaded; keeping the last good one")
                    }
                }
            }
        });
    }
    let gossip = membership::Config::lan(
        node.clone(),
        membership::keys_from(config.gossip.secret.as_bytes()),
        config.gossip.seeds.clone(),
    );
    run(
        node,
        config.gossip.listen,
        gossip,
        desired,
        frontends,
        nodes,
        config.timing(),
        false,
        config.forwarder.settings(),
        http,
        None,
        shutdown,
    )
    .await
}

/// Runs a speaker whose view comes from the cluster: Services with addresses,
/// pools, L2Advertisements, EndpointSlices and Nodes, watched and kept in
/// caches. When the API server is unreachable the caches keep the last view,
/// and announcement and failover go on from the gossip membership.
#[allow(clippy::too_many_arguments)] // the speaker's whole configuration, once
pub async fn run_kubernetes(
    client: kube::Client,
    node: String,
    listen: SocketAddr,
    gossip: membership::Config,
    default_class: bool,
    timing: Timing,
    forwarding: crate::forwarder::Settings,
    http: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use crate::api::{IPAddressPool, L2Advertisement};
    use crate::controller::cache;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::Api;

    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let services = cache::<Service>(Api::all(client.clone()), wake.clone(), shutdown.clone());
    let pools = cache::<IPAddressPool>(Api::all(client.clone()), wake.clone(), shutdown.clone());
    let ads = cache::<L2Advertisement>(Api::all(client.clone()), wake.clone(), shutdown.clone());
    let slices = cache::<EndpointSlice>(Api::all(client.clone()), wake.clone(), shutdown.clone());
    let report_client = client.clone();
    let nodes = cache::<K8sNode>(Api::all(client), wake.clone(), shutdown.clone());
    let (desired_tx, desired) = watch::channel(Vec::new());
    let (frontends_tx, frontends) = watch::channel(Forwards::default());
    let (nodes_tx, node_objects) = watch::channel(Vec::new());
    let feeder_stop = shutdown.clone();
    tokio::spawn(async move {
        for ready in [
            services.wait_until_ready().await,
            pools.wait_until_ready().await,
            ads.wait_until_ready().await,
            slices.wait_until_ready().await,
            nodes.wait_until_ready().await,
        ] {
            if ready.is_err() {
                warn!("a cluster cache could not be filled; announcing nothing from the cluster");
                return;
            }
        }
        info!("cluster view ready");
        // Always a notification, even for an empty cluster: it tells `run`
        // that the view is synced and the speaker may join the group.
        nodes_tx.send_replace(nodes.state().iter().map(|n| (**n).clone()).collect());
        loop {
            let (svc, pl, ad, sl) = (services.state(), pools.state(), ads.state(), slices.state());
            let view = view::ClusterView {
                services: svc.iter().map(AsRef::as_ref).collect(),
                pools: pl.iter().map(AsRef::as_ref).collect(),
                advertisements: ad.iter().map(AsRef::as_ref).collect(),
                slices: sl.iter().map(AsRef::as_ref).collect(),
                default_class,
            };
            let announcements = view::announcements(&view);
            let (frontends, invalid) = view::frontends(&view);
            let fronts = Forwards { frontends, invalid };
            frontends_tx.send_if_modified(|current| {
                let changed = *current != fronts;
                if changed {
                    *current = fronts;
                }
                changed
            });
            desired_tx.send_if_modified(|current| {
                let changed = *current != announcements;
                if changed {
                    *current = announcements;
                }
                changed
            });
            let objects: Vec<K8sNode> = nodes.state().iter().map(|n| (**n).clone()).collect();
            nodes_tx.send_if_modified(|current| {
                let changed = *current != objects;
                if changed {
                    *current = objects;
                }
                changed
            });
            tokio::select! {
                _ = feeder_stop.cancelled() => return,
                _ = wake.notified() => {}
            }
            // Let a burst of events land before looking again.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (report_tx, mut report_rx) = mpsc::unbounded_channel::<Report>();
    let reporter = ClusterReporter::new(report_client, node.clone());
    let worker = tokio::spawn(async move {
        // Reports that did not land (API server unreachable or overloaded)
        // are tried again every two seconds; a newer report about the same
        // address or Service replaces an older one still waiting.
        let mut pending: BTreeMap<String, Report> = BTreeMap::new();
        loop {
            tokio::select! {
                received = report_rx.recv() => {
                    let Some(r) = received else { break };
                    let key = r.key();
                    pending.remove(&key);
                    if !reporter.report(&r).await {
                        pending.insert(key, r);
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(2)), if !pending.is_empty() => {
                    for (key, r) in std::mem::take(&mut pending) {
                        if !reporter.report(&r).await {
                            pending.insert(key, r);
                        }
                    }
                }
            }
        }
    });
    let result = run(
        node,
        listen,
        gossip,
        desired,
        frontends,
        node_objects,
        timing,
        true,
        forwarding,
        http,
        Some(report_tx),
        shutdown,
    )
    .await;
    // The last reports (withdrawals) go out before the process ends, if the
    // API server answers in time.
    let _ = tokio::time::timeout(Duration::from_secs(3), worker).await;
    result
}

/// Runs a speaker fed by `desired` and `node_objects` until `shutdown`, then
/// withdraws every address and leaves the group. Ownership follows the gossip
/// membership: when the source of `desired` goes quiet (an unreachable API
/// server), the last view stands and failover goes on.
#[allow(clippy::too_many_arguments)] // the speaker's whole configuration, once
pub async fn run(
    node: String,
    listen: SocketAddr,
    gossip: membership::Config,
    mut desired: watch::Receiver<Vec<Announcement>>,
    mut frontends: watch::Receiver<Forwards>,
    mut node_objects: watch::Receiver<Vec<K8sNode>>,
    timing: Timing,
    cluster: bool,
    forwarding_settings: crate::forwarder::Settings,
    http: Option<tokio::net::TcpListener>,
    report: Option<mpsc::UnboundedSender<Report>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let socket = UdpSocket::bind(listen).await?;
    let mut has_seeds = !gossip.seeds.is_empty();
    let discover_seeds = !has_seeds && cluster;
    // Refused before waiting for the cluster view, not minutes later.
    membership::check_keys(&gossip.keys)?;
    let metrics = std::sync::Arc::new(metrics::Metrics::default());
    if let Some(listener) = http {
        tokio::spawn(crate::http::serve(
            listener,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    if cluster {
        // A speaker without a view could own addresses it knows nothing of:
        // its peers would withdraw them and nobody would answer. So it joins
        // the group only once its view is synced; until then the others don't
        // count it and keep announcing (an API server that is down when a
        // speaker restarts costs nothing).
        info!(%node, "waiting for the cluster view before joining the gossip group");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            changed = node_objects.changed() => if changed.is_err() { return Ok(()) },
        }
    }
    let membership = Membership::start(socket, gossip)?;
    info!(%node, %listen, "speaker started");
    metrics.register_membership(membership.counters());
    let mut members = membership.members();
    // Without listed seeds, a cluster speaker finds its peers at the Nodes'
    // InternalIPs, on its own gossip port.
    let mut seeds_joined: BTreeSet<SocketAddr> = BTreeSet::new();
    let mut join_new_seeds = |objects: &[K8sNode]| {
        for addr in view::node_seeds(&node, objects, listen) {
            if seeds_joined.insert(addr) {
                info!(%addr, "joining a speaker discovered from its Node");
                membership.join(addr);
            }
        }
        !seeds_joined.is_empty()
    };
    if discover_seeds {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while node_objects.borrow().is_empty() {
            if tokio::time::timeout_at(deadline, node_objects.changed())
                .await
                .is_err()
            {
                break;
            }
        }
        has_seeds = join_new_seeds(&node_objects.borrow());
    }
    settle(&mut members, has_seeds).await;
    metrics.set_ready();

    let mut announcers: BTreeMap<String, Announcer> = BTreeMap::new();
    // Address → the interfaces announcing it.
    let mut owned_now: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    // Address → the Services on it, as last reported.
    let mut reported: BTreeMap<IpAddr, Vec<ServiceKey>> = BTreeMap::new();
    let send = |r: Report| {
        if let Some(tx) = &report {
            let _ = tx.send(r);
        }
    };
    let mut last_announce = tokio::time::Instant::now();
    let mut trigger = Trigger::Start;
    let forwarder_metrics = crate::forwarder::metrics::Metrics::default();
    metrics.register_forwarder(&forwarder_metrics);
    let mut forwarding = Forwarding::new(forwarding_settings, forwarder_metrics);
    // Forwarding problems of owned Services, as last reported.
    let mut reported_problems: BTreeSet<(ServiceKey, String)> = BTreeSet::new();
    let mut warned_unknown = false;
    'run: loop {
        let alive = members.borrow_and_update().clone();
        if !matches!(trigger, Trigger::Tick | Trigger::View) {
            info!(members = ?alive, "membership");
        }
        let view_now = desired.borrow_and_update().clone();
        let objects = node_objects.borrow_and_update().clone();
        let unknown =
            cluster && !objects.is_empty() && !objects.iter().any(|n| n.name_any() == node);
        if unknown && !warned_unknown {
            warn!(%node, "no Node object has this speaker's node name, so it owns no address: \
                   check --node / NODE_NAME (the DaemonSet sets it from spec.nodeName)");
        }
        warned_unknown = unknown;
        let wanted = owned(&node, &alive, cluster.then_some(&objects[..]), &view_now);
        let wanted = resolve_interfaces(wanted).await;
        metrics.observe(wanted.len(), alive.len());
        for (ip, interfaces) in &owned_now {
            if wanted.get(ip) != Some(interfaces) {
                for name in interfaces {
                    if let Some(a) = announcers.get(name) {
                        a.disown(*ip);
                    }
                }
                if !wanted.contains_key(ip) {
                    info!(address = %ip, "withdrawn");
                }
            }
        }
        let mut gained = Vec::new();
        // Interfaces that cannot announce now (missing, down): left out of
        // what is owned, so the check below retries them every second.
        let mut unserved: Vec<(IpAddr, String)> = Vec::new();
        for (ip, interfaces) in &wanted {
            if owned_now.get(ip) == Some(interfaces) {
                continue;
            }
            for name in interfaces {
                if !announcers.contains_key(name) {
                    match Announcer::start(name, metrics.announcer_counters(name)) {
                        Ok(a) => {
                            announcers.insert(name.clone(), a);
                        }
                        Err(e) => {
                            metrics.announce_failed(name);
                            warn!(interface = %name, error = %e, "cannot announce on this interface; retrying");
                            unserved.push((*ip, name.clone()));
                            continue;
                        }
                    }
                }
                let a = &announcers[name];
                a.own(*ip);
                info!(address = %ip, interface = %name, mac = %a.mac(), "announcing");
            }
            gained.push(*ip);
        }
        let mut wanted = wanted;
        for (ip, name) in &unserved {
            if let Some(interfaces) = wanted.get_mut(ip) {
                interfaces.retain(|i| i != name);
            }
        }
        let retry = !unserved.is_empty() || wanted.values().any(Vec::is_empty);
        owned_now = wanted;
        let problems = forwarding
            .apply(&node, &owned_now, &frontends.borrow_and_update())
            .await;
        for (service, message) in &problems {
            if !reported_problems.contains(&(service.clone(), message.clone())) {
                warn!(%service, error = %message, "not forwarded");
                send(Report::NotForwarded {
                    service: service.clone(),
                    message: message.clone(),
                });
            }
        }
        reported_problems = problems;
        for (ip, services) in std::mem::take(&mut reported) {
            if !owned_now.contains_key(&ip) {
                send(Report::Withdrawn {
                    address: ip,
                    services,
                });
            } else {
                reported.insert(ip, services);
            }
        }
        for a in view_now
            .iter()
            .filter(|a| owned_now.contains_key(&a.address))
        {
            if reported.get(&a.address) != Some(&a.services) || gained.contains(&a.address) {
                send(Report::Announcing {
                    address: a.address,
                    services: a.services.clone(),
                    interfaces: owned_now[&a.address].clone(),
                });
                reported.insert(a.address, a.services.clone());
            }
        }
        // After a change of membership every owned address gets the burst, not
        // only the new ones: when a partition heals, clients may have moved to a
        // node that believed itself owner, and must come back now.
        let burst: Vec<IpAddr> = match trigger {
            Trigger::Start | Trigger::Membership => owned_now.keys().copied().collect(),
            Trigger::View => gained,
            Trigger::Tick => Vec::new(),
        };
        for n in 0..timing.announce_count {
            if burst.is_empty() {
                break;
            }
            if n > 0 {
                tokio::time::sleep(timing.announce_interval).await;
            }
            announce_all(&announcers, &owned_now, &burst);
        }
        if !burst.is_empty() {
            last_announce = tokio::time::Instant::now();
        }
        let reannounce = if timing.reannounce.is_zero() {
            Duration::from_secs(3600)
        } else {
            timing.reannounce
        };
        if !timing.reannounce.is_zero() && last_announce.elapsed() >= reannounce {
            last_announce = tokio::time::Instant::now();
            let all: Vec<IpAddr> = owned_now.keys().copied().collect();
            announce_all(&announcers, &owned_now, &all);
        }
        trigger = loop {
            let woke = tokio::select! {
                _ = shutdown.cancelled() => break 'run,
                changed = members.changed() => {
                    if changed.is_err() {
                        warn!("membership ended");
                        break 'run;
                    }
                    Trigger::Membership
                }
                changed = desired.changed() => if changed.is_err() { break 'run } else { Trigger::View },
                changed = frontends.changed() => if changed.is_err() { break 'run } else { Trigger::View },
                changed = node_objects.changed() => {
                    if changed.is_err() {
                        break 'run;
                    }
                    if discover_seeds {
                        join_new_seeds(&node_objects.borrow());
                    }
                    Trigger::View
                }
                _ = tokio::time::sleep_until(last_announce + reannounce) => Trigger::Tick,
                // An interface deleted, re-created or down cannot announce:
                // replace its announcer (and retry missing ones) within a
                // second, without waiting for anything else to change.
                _ = tokio::time::sleep(LINK_CHECK) => {
                    let gone: Vec<String> = announcers
                        .iter()
                        .filter(|(_, a)| !a.serves())
                        .map(|(name, _)| name.clone())
                        .collect();
                    for name in &gone {
                        warn!(interface = %name, "the interface is gone, re-created or down; announcing there again once it is back");
                        metrics.announce_failed(name);
                        announcers.remove(name);
                        for interfaces in owned_now.values_mut() {
                            interfaces.retain(|i| i != name);
                        }
                    }
                    if gone.is_empty() && !retry { continue } else { Trigger::View }
                }
            };
            break woke;
        };
    }
    for (ip, interfaces) in &owned_now {
        for name in interfaces {
            if let Some(a) = announcers.get(name) {
                a.disown(*ip);
            }
        }
    }
    forwarding.stop().await;
    for (ip, services) in reported {
        send(Report::Withdrawn {
            address: ip,
            services,
        });
    }
    membership.leave().await;
    info!("speaker stopped: addresses withdrawn, left the group");
    Ok(())
}

/// The forwarder and what it changed on the node.
struct Forwarding {
    forwarder: Forwarder,
    /// The firewall mark of transparent connections.
    mark: u32,
    /// The Service addresses on the loopback, once known.
    addresses: Option<BTreeSet<IpAddr>>,
    transparent: bool,
}

impl Forwarding {
    fn new(
        settings: crate::forwarder::Settings,
        metrics: crate::forwarder::metrics::Metrics,
    ) -> Self {
        Self {
            mark: settings.mark,
            forwarder: Forwarder::new(settings, metrics),
            addresses: None,
            transparent: false,
        }
    }

    /// Runs the listeners of the addresses this node owns, with the Service
    /// addresses on the loopback and, for `Local` Services, the transparent
    /// routing. Failures are logged and retried on the next pass. Returns what
    /// keeps Services on owned addresses from being forwarded as asked.
    async fn apply(
        &mut self,
        node: &str,
        owned: &BTreeMap<IpAddr, Vec<String>>,
        forwards: &Forwards,
    ) -> BTreeSet<(ServiceKey, String)> {
        let keys: BTreeSet<IpAddr> = owned.keys().copied().collect();
        let plan = crate::forwarder::plan::plan(node, &keys, &forwards.frontends);
        let mut problems: BTreeSet<(ServiceKey, String)> = forwards
            .invalid
            .iter()
            .filter(|e| e.addresses.iter().any(|a| keys.contains(a)))
            .map(|e| (e.service.clone(), e.message.clone()))
            .collect();
        for c in &plan.conflicts {
            problems.insert((
                c.refused.clone(),
                format!(
                    "{} {} is already forwarded for Service {}",
                    c.protocol, c.address, c.kept
                ),
            ));
        }
        let addresses: BTreeSet<IpAddr> = plan.listeners.iter().map(|l| l.address.ip()).collect();
        if self.addresses.as_ref() != Some(&addresses) {
            for ip in &addresses {
                for interface in owned.get(ip).into_iter().flatten() {
                    if let Err(e) = crate::netlink::host::quiet_arp(interface) {
                        warn!(%interface, error = %e, "cannot set arp_ignore/arp_announce");
                    }
                }
            }
            match set_service_addresses(&addresses).await {
                Ok(()) => self.addresses = Some(addresses),
                Err(e) => warn!(error = %e, "cannot put Service addresses on the loopback"),
            }
        }
        let local = plan.listeners.iter().any(|l| l.policy.local);
        if local && !self.transparent {
            match crate::forwarder::transparent::install(self.mark).await {
                Ok(()) => self.transparent = true,
                Err(e) => {
                    warn!(error = %e, "cannot install transparent routing; Local Services won't answer")
                }
            }
        } else if !local && self.transparent {
            self.remove_transparent().await;
        }
        for e in self.forwarder.apply(&plan.listeners) {
            problems.insert((e.service.clone(), e.to_string()));
        }
        problems
    }

    async fn remove_transparent(&mut self) {
        match crate::forwarder::transparent::remove(self.mark).await {
            Ok(()) => self.transparent = false,
            Err(e) => warn!(error = %e, "cannot remove transparent routing"),
        }
    }

    /// Stops every listener and removes what was added to the node.
    async fn stop(&mut self) {
        self.forwarder.stop_all();
        if self.addresses.as_ref().is_some_and(|a| !a.is_empty())
            && let Err(e) = set_service_addresses(&BTreeSet::new()).await
        {
            warn!(error = %e, "cannot remove Service addresses from the loopback");
        }
        if self.transparent {
            self.remove_transparent().await;
        }
    }
}

async fn set_service_addresses(addresses: &BTreeSet<IpAddr>) -> Result<(), crate::netlink::Error> {
    crate::netlink::host::Host::open()?
        .set_service_addresses(addresses)
        .await
}

/// Fills in the interfaces of addresses that name none: those whose subnet
/// holds the address ([`crate::netlink::announcing_links`]).
async fn resolve_interfaces(
    wanted: BTreeMap<IpAddr, Vec<String>>,
) -> BTreeMap<IpAddr, Vec<String>> {
    if wanted.values().all(|i| !i.is_empty()) {
        return wanted;
    }
    let links = match crate::netlink::links().await {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "listing interfaces");
            Vec::new()
        }
    };
    wanted
        .into_iter()
        .map(|(ip, named)| {
            if !named.is_empty() {
                return (ip, named);
            }
            let (chosen, _) = crate::netlink::announcing_links(&links, ip, &[]);
            if chosen.is_empty() {
                warn!(address = %ip, "no interface's subnet holds this address; name one in the L2Advertisement");
            }
            (ip, chosen.iter().map(|l| l.name.clone()).collect())
        })
        .collect()
}

/// Waits, before announcing anything, until this speaker has joined its peers
/// and the membership has been still for a moment: a speaker that starts alone
/// would otherwise claim every address for the instant until it hears from the
/// others. Gives up after two seconds (it may really be alone).
async fn settle(members: &mut tokio::sync::watch::Receiver<BTreeSet<String>>, has_seeds: bool) {
    if !has_seeds {
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let joined = tokio::time::timeout_at(deadline, members.wait_for(|m| m.len() > 1))
        .await
        .is_ok_and(|r| r.is_ok());
    if !joined {
        warn!("no peer answered within 2 s; announcing alone");
        return;
    }
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(300), members.changed()).await {
            Err(_) | Ok(Err(_)) => break,
            Ok(Ok(())) => {}
        }
    }
}

/// What a speaker tells the cluster about its announcements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// This node now announces `address` for `services` on `interfaces`.
    Announcing {
        /// The address.
        address: IpAddr,
        /// The Services on it.
        services: Vec<ServiceKey>,
        /// Where it is announced.
        interfaces: Vec<String>,
    },
    /// This node no longer announces `address`.
    Withdrawn {
        /// The address.
        address: IpAddr,
        /// The Services that were on it.
        services: Vec<ServiceKey>,
    },
    /// This node owns an address of `service` but can't forward it as asked.
    NotForwarded {
        /// The Service.
        service: ServiceKey,
        /// Why, naming the annotation or field.
        message: String,
    },
}

impl Report {
    /// What a later report supersedes: the address, or the Service's problem.
    fn key(&self) -> String {
        match self {
            Report::Announcing { address, .. } | Report::Withdrawn { address, .. } => {
                address.to_string()
            }
            Report::NotForwarded { service, message } => format!("{service} {message}"),
        }
    }
}

/// Writes [`Report`]s as `ServiceL2Status` objects and events on the Services.
/// Runs off the announcement path: an unreachable API server delays reports,
/// never announcements.
struct ClusterReporter {
    client: kube::Client,
    node: String,
    recorder: kube::runtime::events::Recorder,
}

impl ClusterReporter {
    fn new(client: kube::Client, node: String) -> Self {
        let recorder = kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "ironlb-speaker".into(),
                instance: Some(node.clone()),
            },
        );
        Self {
            client,
            node,
            recorder,
        }
    }

    /// Writes one report; false when a write must be tried again.
    async fn report(&self, report: &Report) -> bool {
        use crate::api::l2status::{NODE_LABEL, SERVICE_NAME_LABEL};
        use crate::api::{ServiceL2Status, ServiceL2StatusSpec};
        use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
        use kube::runtime::events::{Event, EventType};

        let (address, services, interfaces) = match report {
            Report::Announcing {
                address,
                services,
                interfaces,
            } => (address, services, Some(interfaces)),
            Report::Withdrawn { address, services } => (address, services, None),
            Report::NotForwarded { service, message } => {
                let event = Event {
                    type_: EventType::Warning,
                    reason: "NotForwarded".into(),
                    note: Some(format!("node {}: {message}", self.node)),
                    action: "Forward".into(),
                    secondary: None,
                };
                if let Err(e) = self
                    .recorder
                    .publish(&event, &service_reference(service))
                    .await
                {
                    warn!(%service, error = %e, "recording an event; will retry");
                    return false;
                }
                return true;
            }
        };
        let mut landed = true;
        for svc in services {
            let api: kube::Api<ServiceL2Status> =
                kube::Api::namespaced(self.client.clone(), &svc.namespace);
            let name = format!("{}-{}", svc.name, self.node);
            let result = match interfaces {
                Some(interfaces) => {
                    let mut status = ServiceL2Status::new(
                        &name,
                        ServiceL2StatusSpec {
                            service: svc.name.clone(),
                            node: self.node.clone(),
                            addresses: vec![address.to_string()],
                            interfaces: interfaces.clone(),
                        },
                    );
                    status.metadata.labels = Some(
                        [
                            (SERVICE_NAME_LABEL.to_string(), svc.name.clone()),
                            (NODE_LABEL.to_string(), self.node.clone()),
                        ]
                        .into(),
                    );
                    let applied = api
                        .patch(
                            &name,
                            &PatchParams::apply("ironlb-speaker").force(),
                            &Patch::Apply(&status),
                        )
                        .await
                        .map(|_| ());
                    // Reports of a node that died are stale now that this one announces.
                    let selector = format!("{SERVICE_NAME_LABEL}={}", svc.name);
                    if let Ok(list) = api.list(&ListParams::default().labels(&selector)).await {
                        for stale in list.items.iter().filter(|s| s.spec.node != self.node) {
                            let _ = api
                                .delete(&stale.name_any(), &DeleteParams::default())
                                .await;
                        }
                    }
                    applied
                }
                None => match api.delete(&name, &DeleteParams::default()).await {
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    other => other.map(|_| ()),
                },
            };
            if let Err(e) = result {
                warn!(service = %svc, error = %e, "reporting the announcement; will retry");
                landed = false;
                // The event waits for the status write, so a retry does not
                // repeat it.
                continue;
            }
            let (reason, note) = match interfaces {
                Some(i) => (
                    "Announcing",
                    format!("node {} announces {address} on {}", self.node, i.join(", ")),
                ),
                None => (
                    "Withdrawn",
                    format!("node {} no longer announces {address}", self.node),
                ),
            };
            let event = Event {
                type_: EventType::Normal,
                reason: reason.into(),
                note: Some(note),
                action: "Announce".into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, &service_reference(svc)).await {
                warn!(service = %svc, error = %e, "recording an event");
            }
        }
        landed
    }
}

fn service_reference(svc: &ServiceKey) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some(svc.name.clone()),
        namespace: Some(svc.namespace.clone()),
        ..Default::default()
    }
}

/// How often the speaker checks that its announcing interfaces still serve.
const LINK_CHECK: Duration = Duration::from_secs(1);

/// What woke the speaker's loop.
#[derive(Clone, Copy)]
enum Trigger {
    Start,
    Membership,
    View,
    Tick,
}

fn announce_all(
    announcers: &BTreeMap<String, Announcer>,
    owned: &BTreeMap<IpAddr, Vec<String>>,
    addresses: &[IpAddr],
) {
    for ip in addresses {
        for name in owned.get(ip).into_iter().flatten() {
            if let Some(a) = announcers.get(name) {
                a.announce(*ip);
            }
        }
    }
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

    #[test]
    fn exactly_one_live_node_owns_each_address() {
        let c = StaticConfig::parse("lab.yaml", FILE).unwrap();
        let members: BTreeSet<String> = ["node-1", "node-2", "node-3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let owners: Vec<usize> = c
            .addresses
            .iter()
            .map(|a| {
                members
                    .iter()
                    .filter(|m| {
                        owned(m, &members, None, &c.announcements()).contains_key(&a.address)
                    })
                    .count()
            })
            .collect();
        assert_eq!(owners, [1, 1]);
        assert!(
            owned("node-2", &members, None, &c.announcements())
                .contains_key(&"fd00::100".parse().unwrap())
        );
        let without_2: BTreeSet<String> =
            ["node-1", "node-3"].iter().map(|s| s.to_string()).collect();
        assert!(
            members
                .iter()
                .all(|m| !owned(m, &without_2, None, &c.announcements())
                    .contains_key(&"fd00::100".parse().unwrap())),
            "an address restricted to a dead node is announced by nobody"
        );
    }

    #[test]
    fn with_a_cluster_only_members_that_are_nodes_may_own() {
        let c = StaticConfig::parse("lab.yaml", FILE).unwrap();
        let announcements = c.announcements();
        let node = |name: &str| K8sNode {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        // "intruder" knows the secret but is no Node of the cluster.
        let members: BTreeSet<String> = ["node-1", "intruder"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let objects = [node("node-1"), node("node-2"), node("node-3")];
        let v4: IpAddr = "10.77.0.100".parse().unwrap();
        assert!(
            owned("node-1", &members, Some(&objects), &announcements).contains_key(&v4),
            "node-1 is the only candidate that is a node"
        );
        assert!(owned("intruder", &members, Some(&objects), &announcements).is_empty());
        // Without a cluster there are no Node objects to check against.
        let anyone = ["intruder".to_string()].into();
        assert!(owned("intruder", &anyone, None, &announcements).contains_key(&v4));
    }
}
