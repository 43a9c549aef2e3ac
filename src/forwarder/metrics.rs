//! The forwarder's metrics, per Service.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::flows::Eviction;
use crate::ipam::ServiceKey;

/// A Service, as a label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
}

impl From<&ServiceKey> for ServiceLabels {
    fn from(k: &ServiceKey) -> Self {
        Self {
            namespace: k.namespace.clone(),
            service: k.name.clone(),
        }
    }
}

/// Which way bytes went (`to_backend`, `to_client`).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    /// Client to backend.
    ToBackend,
    /// Backend to client.
    ToClient,
}

/// Why a connection or datagram was not forwarded (`source_range`,
/// `connection_limit`, `node_connection_limit`, `source_limit`,
/// `flow_table_full`, `no_backend`, `no_route`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Refusal {
    /// The client is outside `loadBalancerSourceRanges`.
    SourceRange,
    /// The listener's connection limit was reached.
    ConnectionLimit,
    /// The node's connection limit, over every listener, was reached.
    NodeConnectionLimit,
    /// The node's descriptors ([`super::Settings::descriptors`]) were all
    /// taken.
    OpenFileLimit,
    /// The client's address had as many connections open as it may.
    SourceLimit,
    /// The node's UDP flows were all taken, none of them this listener's.
    FlowTableFull,
    /// No backend accepted.
    NoBackend,
    /// On a Gateway's port, no route takes the connection: none attached,
    /// or on a TLS port none for the ClientHello's server name (or no
    /// ClientHello came).
    NoRoute,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(match self {
            Direction::ToBackend => "to_backend",
            Direction::ToClient => "to_client",
        })
    }
}

impl EncodeLabelValue for Refusal {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(match self {
            Refusal::SourceRange => "source_range",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::NodeConnectionLimit => "node_connection_limit",
            Refusal::OpenFileLimit => "open_file_limit",
            Refusal::SourceLimit => "source_limit",
            Refusal::FlowTableFull => "flow_table_full",
            Refusal::NoBackend => "no_backend",
            Refusal::NoRoute => "no_route",
        })
    }
}

/// Why a TCP connection was closed by a timeout (`handshake`, `idle`).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Timeout {
    /// No byte moved either way in time after it was set up.
    Handshake,
    /// No byte moved either way for the idle timeout.
    Idle,
}

impl EncodeLabelValue for Timeout {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(match self {
            Timeout::Handshake => "handshake",
            Timeout::Idle => "idle",
        })
    }
}

/// A Service and a timeout.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimeoutLabels {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// Which timeout.
    pub timeout: Timeout,
}

/// Which UDP flow made room for a new client (`unanswered`, `least_recent`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvictedLabels {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// Which kind of flow.
    pub reason: Eviction,
}

impl EncodeLabelValue for Eviction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(match self {
            Eviction::Unanswered => "unanswered",
            Eviction::LeastRecent => "least_recent",
        })
    }
}

/// A Service and a direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// Which way.
    pub direction: Direction,
}

/// A Service and a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// Why.
    pub reason: Refusal,
}

/// Every forwarder metric; cheap to clone (shared counters).
#[derive(Clone, Default)]
pub struct Metrics {
    /// TCP connections open now.
    pub connections_active: Family<ServiceLabels, Gauge>,
    /// TCP connections accepted and forwarded.
    pub connections: Family<ServiceLabels, Counter>,
    /// Bytes forwarded.
    pub bytes: Family<BytesLabels, Counter>,
    /// Connects to a backend that failed or timed out.
    pub backend_connect_failures: Family<ServiceLabels, Counter>,
    /// Connects to a backend given up after the connect timeout.
    pub backend_connect_timeouts: Family<ServiceLabels, Counter>,
    /// TCP connections closed by a timeout.
    pub timeouts: Family<TimeoutLabels, Counter>,
    /// Accepts that failed (out of descriptors, memory, …).
    pub accept_errors: Family<ServiceLabels, Counter>,
    /// UDP flows removed to make room for a new client.
    pub udp_flows_evicted: Family<EvictedLabels, Counter>,
    /// Clients whose backend session affinity remembers.
    pub affinity_clients: Family<ServiceLabels, Gauge>,
    /// Connections and datagrams refused.
    pub refused: Family<RefusedLabels, Counter>,
    /// UDP flows open now.
    pub udp_flows: Family<ServiceLabels, Gauge>,
    /// UDP datagrams forwarded to backends.
    pub udp_datagrams: Family<ServiceLabels, Counter>,
    /// Connections and UDP flows the kernel forwarded.
    pub kernel_connections: Family<ServiceLabels, Counter>,
    kernel: Arc<Mutex<KernelCounters>>,
}

/// What the kernel path's nftables counters mean, and what of them is
/// already counted. The table (and its counters) is replaced whole on every
/// change: [`Metrics::kernel_table_changes`] and
/// [`Metrics::kernel_table_changed`] frame a rewrite, and a reading taken
/// across one is dropped rather than credited to the wrong Service.
#[derive(Default)]
struct KernelCounters {
    /// Bumped at every rewrite.
    generation: u64,
    /// Counter name → Service; `None` while a rewrite is under way.
    services: Option<BTreeMap<String, ServiceKey>>,
    /// Counter name → packets already counted.
    seen: BTreeMap<String, u64>,
}

impl Metrics {
    /// Registers every metric under `forwarder_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("forwarder");
        r.register(
            "connections_active",
            "TCP connections open now",
            self.connections_active.clone(),
        );
        r.register(
            "connections",
            "TCP connections forwarded",
            self.connections.clone(),
        );
        r.register("bytes", "Bytes forwarded", self.bytes.clone());
        r.register(
            "backend_connect_failures",
            "Connects to a backend that failed or timed out",
            self.backend_connect_failures.clone(),
        );
        r.register(
            "backend_connect_timeouts",
            "Connects to a backend given up after the connect timeout",
            self.backend_connect_timeouts.clone(),
        );
        r.register(
            "timeouts",
            "TCP connections closed by a timeout, by timeout",
            self.timeouts.clone(),
        );
        r.register(
            "accept_errors",
            "Accepts that failed (out of file descriptors or memory); the listener backs off",
            self.accept_errors.clone(),
        );
        r.register(
            "udp_flows_evicted",
            "UDP flows removed to make room for a new client, by kind",
            self.udp_flows_evicted.clone(),
        );
        r.register(
            "affinity_clients",
            "Clients whose backend session affinity remembers",
            self.affinity_clients.clone(),
        );
        r.register(
            "refused",
            "Connections and datagrams refused, by reason",
            self.refused.clone(),
        );
        r.register("udp_flows", "UDP flows open now", self.udp_flows.clone());
        r.register(
            "udp_datagrams",
            "UDP datagrams forwarded to backends",
            self.udp_datagrams.clone(),
        );
        r.register(
            "kernel_connections",
            "TCP connections and UDP flows forwarded in the kernel (counted at their first packet)",
            self.kernel_connections.clone(),
        );
    }

    /// Counts what the kernel forwarded since the last reading: call before
    /// the metrics are read.
    pub fn read_kernel_counters(&self) {
        let (generation, services) = {
            let k = self.kernel.lock().expect("kernel counters");
            match &k.services {
                Some(s) if !s.is_empty() => (k.generation, s.clone()),
                _ => return,
            }
        };
        let now = match super::firewall::counters() {
            Ok(now) => now,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the kernel path's counters");
                return;
            }
        };
        let mut k = self.kernel.lock().expect("kernel counters");
        if k.generation != generation {
            return;
        }
        for (name, packets) in now {
            let Some(service) = services.get(&name) else {
                continue;
            };
            let before = k.seen.insert(name, packets).unwrap_or(0);
            self.kernel_connections
                .get_or_create(&service.into())
                .inc_by(packets.saturating_sub(before));
        }
    }

    /// The kernel path's table is about to be replaced: what its counters
    /// hold is counted first.
    pub fn kernel_table_changes(&self) {
        self.read_kernel_counters();
        let mut k = self.kernel.lock().expect("kernel counters");
        k.generation += 1;
        k.services = None;
    }

    /// The table now written names these counters, all at zero.
    pub fn kernel_table_changed(&self, services: BTreeMap<String, ServiceKey>) {
        let mut k = self.kernel.lock().expect("kernel counters");
        k.seen.clear();
        k.services = Some(services);
    }

    /// Counts one refusal.
    pub fn refuse(&self, service: &ServiceKey, reason: Refusal) {
        self.refuse_many(service, reason, 1);
    }

    /// Counts `count` refusals for one reason at once: a batch of datagrams
    /// from one client.
    pub fn refuse_many(&self, service: &ServiceKey, reason: Refusal, count: u64) {
        self.refused
            .get_or_create(&RefusedLabels {
                namespace: service.namespace.clone(),
                service: service.name.clone(),
                reason,
            })
            .inc_by(count);
    }

    /// The byte counter of `service` in `direction`.
    pub fn bytes(&self, service: &ServiceKey, direction: Direction) -> Counter {
        self.bytes
            .get_or_create(&BytesLabels {
                namespace: service.namespace.clone(),
                service: service.name.clone(),
                direction,
            })
            .clone()
    }
}
