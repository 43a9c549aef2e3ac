//! The embedded L4 forwarder: the owning node accepts TCP and UDP on a
//! Service's address itself and forwards to the Service's endpoints, keeping
//! the client's address — transparently for `externalTrafficPolicy: Local`,
//! in a PROXY protocol header otherwise.
//!
//! [`plan`] decides the listeners (pure); [`Forwarder::apply`] makes the
//! running ones match, keeping existing connections alive: a connection
//! outlives its backend's endpoint, and a listener whose address moves away
//! drains for [`Settings::drain`] before its connections are cut.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub mod balance;
mod datagrams;
pub mod firewall;
pub mod flows;
pub mod metrics;
pub mod plan;
pub mod proxy_header;
pub mod routing;
pub mod sni;
mod tcp;
pub mod transparent;
mod udp;

use balance::Balancer;
use plan::{Backend, Listener, Policy, Protocol};
use routing::{Routing, Spreader};

use crate::ipam::ServiceKey;

/// Limits and timeouts of every listener. Each is documented with its default
/// and the reason for it in docs/forwarder.md ("Limits and protections").
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a backend connect may take before the next backend is tried.
    pub connect_timeout: Duration,
    /// A TCP connection that moved no byte either way this long after the
    /// backend connected is closed: what a silent client gets.
    pub tcp_handshake: Duration,
    /// A TCP connection with no byte either way for this long is closed.
    pub tcp_idle: Duration,
    /// A UDP flow with no datagram either way for this long is forgotten.
    pub udp_idle: Duration,
    /// TCP connections open at once per listener; more are reset.
    pub max_connections: usize,
    /// TCP connections open at once on the node, over every listener.
    pub max_connections_total: usize,
    /// TCP connections open at once per client address and listener; `None`,
    /// the default: no such limit, since one address is often a NAT or a
    /// proxy in front of thousands of users.
    pub max_connections_per_source: Option<usize>,
    /// UDP flows per listener; a new client beyond makes room (see
    /// [`flows`]).
    pub max_flows: usize,
    /// UDP flows on the node, over every listener: each holds a socket, and
    /// without transparency an ephemeral port of the node.
    pub max_flows_total: usize,
    /// Clients whose backend a listener with session affinity remembers.
    pub max_affinity_clients: usize,
    /// Descriptors connections, flows and splice pipes may hold together on
    /// the node: the open-file limit less the speaker's own. Past it new
    /// connections are refused (`open_file_limit`) and bulk copies skip
    /// `splice`, where accepts would otherwise fail with EMFILE.
    pub descriptors: usize,
    /// How long connections live on once their listener is gone.
    pub drain: Duration,
    /// The firewall mark that routes replies of transparent connections back
    /// to the forwarder ([`transparent`]).
    pub mark: u32,
    /// Services that need nothing of user space may be forwarded in the
    /// kernel ([`firewall`]); false keeps every Service in user space, under
    /// the limits above.
    pub kernel_path: bool,
    /// Ports the node keeps for itself, never forwarded on a Service address
    /// (besides those the speaker adds: the kubelet's, its gossip and metrics
    /// ports).
    pub reserved: Vec<(Protocol, u16)>,
}

/// A UDP flow whose backend never replied is forgotten after this long, as
/// the kernel's connection tracking does (`nf_conntrack_udp_timeout`): a
/// spoofed source's flow should not last as long as a real client's.
pub const UNANSWERED_FLOW_IDLE: Duration = Duration::from_secs(30);

/// A new UDP flow's backend has this long to reply before the flow counts as
/// never answered when room is needed (see [`flows`]).
pub const REPLY_GRACE: Duration = Duration::from_secs(1);

/// The open-file limit [`Settings::default`] assumes: systemd's and
/// containerd's usual hard limit.
pub const DEFAULT_OPEN_FILES: u64 = 1_048_576;

impl Default for Settings {
    fn default() -> Self {
        Self::within(DEFAULT_OPEN_FILES)
    }
}

impl Settings {
    /// The defaults on a node whose open-file limit is `open_files`. The
    /// connection caps are what the descriptors allow, as HAProxy derives its
    /// `maxconn` from the limit: load HAProxy carries with its defaults is
    /// carried here too, and what does not fit is refused cleanly.
    pub fn within(open_files: u64) -> Self {
        let descriptors = usize::try_from(open_files.saturating_sub(OWN_DESCRIPTORS))
            .unwrap_or(usize::MAX)
            .max(2);
        // Two sockets per proxied connection.
        let max_connections_total = descriptors / 2;
        Self {
            // Past TCP's second SYN retransmission (at 3 s): a backend whose
            // accept queue overflowed for a moment still gets the connection,
            // as through HAProxy (which advises at least 3 s) or nginx (60 s).
            connect_timeout: Duration::from_secs(5),
            tcp_handshake: Duration::from_secs(10),
            // IPVS's established-TCP timeout: long enough for database pools
            // and SSH with keepalives, short enough that one byte does not
            // hold a connection for hours.
            tcp_idle: Duration::from_secs(900),
            // kube-proxy's conntrack UDP stream timeout.
            udp_idle: Duration::from_secs(120),
            // HAProxy's frontend `maxconn` defaults to its global one.
            max_connections: max_connections_total,
            max_connections_total,
            max_connections_per_source: None,
            max_flows: 8_192,
            // Well inside the default ephemeral port range (28,232 ports), so
            // the node can still open its own sockets.
            max_flows_total: 16_384.min(descriptors),
            max_affinity_clients: 65_536,
            descriptors,
            drain: Duration::from_secs(30),
            mark: transparent::DEFAULT_MARK,
            kernel_path: true,
            reserved: Vec::new(),
        }
    }
}

/// Overrides of [`Settings`], as written in a static file's `forwarder:`
/// section or given as `--forward-*` flags; unset fields keep the defaults.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Tuning {
    /// [`Settings::connect_timeout`], in milliseconds.
    pub connect_timeout_ms: Option<u64>,
    /// [`Settings::tcp_handshake`], in seconds.
    pub tcp_handshake_seconds: Option<u64>,
    /// [`Settings::tcp_idle`], in seconds.
    pub tcp_idle_seconds: Option<u64>,
    /// [`Settings::udp_idle`], in seconds.
    pub udp_idle_seconds: Option<u64>,
    /// [`Settings::max_connections`].
    pub max_connections: Option<usize>,
    /// [`Settings::max_connections_total`].
    pub max_connections_total: Option<usize>,
    /// [`Settings::max_connections_per_source`].
    pub max_connections_per_source: Option<usize>,
    /// [`Settings::max_flows`].
    pub max_flows: Option<usize>,
    /// [`Settings::max_flows_total`].
    pub max_flows_total: Option<usize>,
    /// [`Settings::max_affinity_clients`].
    pub max_affinity_clients: Option<usize>,
    /// [`Settings::drain`], in seconds.
    pub drain_seconds: Option<u64>,
    /// [`Settings::kernel_path`].
    pub kernel_path: Option<bool>,
    /// TCP ports of [`Settings::reserved`].
    pub reserved_tcp_ports: Vec<u16>,
    /// UDP ports of [`Settings::reserved`].
    pub reserved_udp_ports: Vec<u16>,
}

impl Tuning {
    /// The defaults on a node with `open_files` descriptors
    /// ([`Settings::within`]) with these overrides.
    pub fn settings(&self, open_files: u64) -> Settings {
        let d = Settings::within(open_files);
        let count = |v: Option<usize>, default: usize| v.unwrap_or(default).max(1);
        let secs = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_secs);
        Settings {
            connect_timeout: self
                .connect_timeout_ms
                .map_or(d.connect_timeout, Duration::from_millis),
            tcp_handshake: secs(self.tcp_handshake_seconds, d.tcp_handshake),
            tcp_idle: secs(self.tcp_idle_seconds, d.tcp_idle),
            udp_idle: secs(self.udp_idle_seconds, d.udp_idle),
            max_connections: count(self.max_connections, d.max_connections),
            max_connections_total: count(self.max_connections_total, d.max_connections_total),
            max_connections_per_source: self.max_connections_per_source.map(|n| n.max(1)),
            max_flows: count(self.max_flows, d.max_flows),
            max_flows_total: count(self.max_flows_total, d.max_flows_total),
            max_affinity_clients: count(self.max_affinity_clients, d.max_affinity_clients),
            descriptors: d.descriptors,
            drain: secs(self.drain_seconds, d.drain),
            mark: d.mark,
            kernel_path: self.kernel_path.unwrap_or(d.kernel_path),
            reserved: self
                .reserved_tcp_ports
                .iter()
                .map(|p| (Protocol::Tcp, *p))
                .chain(self.reserved_udp_ports.iter().map(|p| (Protocol::Udp, *p)))
                .collect(),
        }
    }
}

/// What a running listener needs to know now; replaced whole on change.
#[derive(Debug, PartialEq)]
struct Shared {
    service: ServiceKey,
    backends: Vec<Backend>,
    policy: Policy,
    routing: Option<Routing>,
}

impl Shared {
    /// The backends a new connection or flow may go to: the Service's, or on
    /// a Gateway port those of the share its route's weights give it. The
    /// route is the one that takes `server_name`, the ClientHello's (TLS
    /// ports; `None` elsewhere).
    fn backends_for(
        &self,
        spreader: &Spreader,
        server_name: Option<&str>,
    ) -> Result<&[Backend], metrics::Refusal> {
        let Some(routing) = &self.routing else {
            return Ok(&self.backends);
        };
        let route = routing
            .route(server_name)
            .ok_or(metrics::Refusal::NoRoute)?;
        let share = spreader.share(route).ok_or(metrics::Refusal::NoBackend)?;
        Ok(&share.backends)
    }
}

/// Per-listener state its connection tasks share.
struct Context {
    settings: Settings,
    metrics: metrics::Metrics,
    balancer: Balancer,
    /// A Gateway port's choice among its routes' shares.
    spreader: Spreader,
    /// The listener's own connection limit.
    connections: Arc<Semaphore>,
    /// The node's, shared by every listener: TCP connections, and UDP flows.
    node: NodeLimits,
    /// Connections open per client address.
    sources: tcp::Sources,
}

/// The node-wide limits every listener draws on.
#[derive(Clone)]
struct NodeLimits {
    connections: Arc<Semaphore>,
    flows: Arc<Semaphore>,
    /// [`Settings::descriptors`]: two per connection, one per flow, two per
    /// splice pipe.
    descriptors: Arc<Semaphore>,
}

/// A connection's or a flow's place under the node's limits, given back
/// when it is dropped.
struct NodeSlot {
    _count: OwnedSemaphorePermit,
    _descriptors: OwnedSemaphorePermit,
}

impl NodeLimits {
    fn new(settings: &Settings) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(settings.max_connections_total)),
            flows: Arc::new(Semaphore::new(settings.max_flows_total)),
            descriptors: Arc::new(Semaphore::new(
                settings.descriptors.min(Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// A place for one more TCP connection, or the limit that is reached.
    fn connection(&self) -> Result<NodeSlot, metrics::Refusal> {
        let descriptors = self
            .descriptors
            .clone()
            .try_acquire_many_owned(2)
            .map_err(|_| metrics::Refusal::OpenFileLimit)?;
        let count = self
            .connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| metrics::Refusal::NodeConnectionLimit)?;
        Ok(NodeSlot {
            _count: count,
            _descriptors: descriptors,
        })
    }

    /// A place for one more UDP flow, if the node has one.
    fn flow(&self) -> Option<NodeSlot> {
        let count = self.flows.clone().try_acquire_owned().ok()?;
        let descriptors = self.descriptors.clone().try_acquire_owned().ok()?;
        Some(NodeSlot {
            _count: count,
            _descriptors: descriptors,
        })
    }
}

struct Running {
    state: watch::Sender<Arc<Shared>>,
    stop: CancellationToken,
    /// The listening socket, for a successor to take over.
    socket: OwnedFd,
}

/// A listener that could not start.
#[derive(Debug, thiserror::Error)]
#[error("{service}: cannot listen on {protocol} {address}: {source}")]
pub struct ListenError {
    /// Its Service.
    pub service: ServiceKey,
    /// The address and port.
    pub address: SocketAddr,
    /// The protocol.
    pub protocol: Protocol,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// The running listeners of a node.
pub struct Forwarder {
    settings: Settings,
    metrics: metrics::Metrics,
    node: NodeLimits,
    running: BTreeMap<(SocketAddr, Protocol), Running>,
    /// Listening sockets taken over from a predecessor, used instead of new
    /// ones when their listener starts.
    inherited: BTreeMap<(SocketAddr, Protocol), OwnedFd>,
}

impl Forwarder {
    /// A forwarder with no listener yet.
    pub fn new(settings: Settings, metrics: metrics::Metrics) -> Self {
        Self {
            node: NodeLimits::new(&settings),
            settings,
            metrics,
            running: BTreeMap::new(),
            inherited: BTreeMap::new(),
        }
    }

    /// Makes the running listeners those of `listeners`: starts new ones,
    /// updates backends and policy in place, and stops (draining) the rest.
    /// Returns the listeners that could not start; they are tried again on the
    /// next call.
    pub fn apply(&mut self, listeners: &[Listener]) -> Vec<ListenError> {
        let wanted: BTreeMap<_, _> = listeners.iter().map(|l| (l.key(), l)).collect();
        self.running.retain(|key, r| {
            let keep = wanted.contains_key(key);
            if !keep {
                info!(address = %key.0, protocol = %key.1, "listener stopped; its connections drain");
                r.stop.cancel();
            }
            keep
        });
        let mut errors = Vec::new();
        for (key, l) in wanted {
            let shared = Shared {
                service: l.service.clone(),
                backends: l.backends.clone(),
                policy: l.policy.clone(),
                routing: l.routing.clone(),
            };
            if let Some(r) = self.running.get(&key) {
                r.state.send_if_modified(|s| {
                    let changed = **s != shared;
                    if changed {
                        *s = Arc::new(shared);
                    }
                    changed
                });
                continue;
            }
            match self.start(l, shared) {
                Ok(r) => {
                    info!(service = %l.service, address = %l.address, protocol = %l.protocol,
                          backends = l.backends.len(), "listening");
                    self.running.insert(key, r);
                }
                Err(source) => errors.push(ListenError {
                    service: l.service.clone(),
                    address: l.address,
                    protocol: l.protocol,
                    source,
                }),
            }
        }
        errors
    }

    /// Uses `sockets`, a predecessor's listening sockets, for the listeners
    /// they match: their queues and the connections waiting in them carry
    /// over.
    pub fn inherit(&mut self, sockets: BTreeMap<(SocketAddr, Protocol), OwnedFd>) {
        self.inherited = sockets;
    }

    /// Closes the inherited sockets no listener took (Services gone since).
    pub fn forget_inherited(&mut self) {
        self.inherited.clear();
    }

    /// The running listeners' sockets, for a successor.
    pub fn sockets(&self) -> Vec<((SocketAddr, Protocol), BorrowedFd<'_>)> {
        self.running
            .iter()
            .map(|(key, r)| (*key, r.socket.as_fd()))
            .collect()
    }

    /// TCP connections and UDP flows open now, over every listener, stopped
    /// ones included.
    pub fn in_use(&self) -> usize {
        (self.settings.max_connections_total - self.node.connections.available_permits())
            + (self.settings.max_flows_total - self.node.flows.available_permits())
    }

    /// Stops every listener; connections drain as on any stop.
    pub fn stop_all(&mut self) {
        for r in self.running.values() {
            r.stop.cancel();
        }
        self.running.clear();
    }

    fn start(&mut self, l: &Listener, shared: Shared) -> std::io::Result<Running> {
        let (state, rx) = watch::channel(Arc::new(shared));
        let stop = CancellationToken::new();
        let ctx = Arc::new(Context {
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            balancer: Balancer::new(self.settings.max_affinity_clients),
            spreader: Spreader::default(),
            connections: Arc::new(Semaphore::new(self.settings.max_connections)),
            node: self.node.clone(),
            sources: tcp::Sources::default(),
        });
        let socket = match self.inherited.remove(&(l.address, l.protocol)) {
            Some(fd) => {
                let socket = Socket::from(fd);
                socket.set_nonblocking(true)?;
                socket
            }
            None => bound_socket(l.address, l.protocol)?,
        };
        let kept = socket.try_clone()?.into();
        match l.protocol {
            Protocol::Tcp => {
                // Accepted sockets inherit it: no setsockopt per connection.
                socket.set_tcp_nodelay(true)?;
                socket.listen(1024)?;
                let listener = tokio::net::TcpListener::from_std(socket.into())?;
                tokio::spawn(tcp::serve(listener, rx, stop.clone(), ctx));
            }
            Protocol::Udp => {
                let socket = tokio::net::UdpSocket::from_std(socket.into())?;
                tokio::spawn(udp::serve(socket, rx, stop.clone(), ctx));
            }
            Protocol::Sctp => return Err(sctp_not_forwarded()),
        }
        Ok(Running {
            state,
            stop,
            socket: kept,
        })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Raises this process's open-file limit to its hard limit: every proxied
/// connection holds two sockets (and, while moving data, two pipes), so the
/// usual soft limit of 1024 would cap a listener at a few hundred clients.
/// Returns the new limit.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// Descriptors the speaker keeps for itself besides connections and flows:
/// gossip, metrics, netlink, the packet sockets, `nft` and `ip` children.
const OWN_DESCRIPTORS: u64 = 256;

/// This process's open-file limit now (after [`raise_fd_limit`]), or
/// [`DEFAULT_OPEN_FILES`] when it cannot be read.
pub fn open_file_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(DEFAULT_OPEN_FILES, |(soft, _)| soft)
}

/// Why caps set by hand cannot be reached within `settings`' descriptors,
/// if they cannot: connections or flows past the descriptors are refused
/// (`open_file_limit`), not taken. Pure, for the startup warning.
pub fn descriptor_shortfall(settings: &Settings) -> Option<String> {
    let connections = settings.descriptors / 2;
    let flows = settings.descriptors;
    (settings.max_connections_total > connections || settings.max_flows_total > flows).then(|| {
        format!(
            "the open-file limit leaves the forwarder {} descriptors: at most {connections} TCP \
             connections (2 each) or {flows} UDP flows (1 each), below maxConnectionsTotal {} / \
             maxFlowsTotal {}; what does not fit is refused (open_file_limit): raise the limit \
             (LimitNOFILE, ulimit -n) or lower the caps",
            settings.descriptors, settings.max_connections_total, settings.max_flows_total
        )
    })
}

/// The view plans no SCTP listener; one that got here anyway is refused.
fn sctp_not_forwarded() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "SCTP is not forwarded (TCP and UDP are)",
    )
}

/// A non-blocking socket bound to `address`. `IP_FREEBIND` lets it bind before
/// the address is on the node (the two are applied independently) and keeps
/// it bound if the address goes first.
fn bound_socket(address: SocketAddr, protocol: Protocol) -> std::io::Result<Socket> {
    let domain = Domain::for_address(address);
    let socket = match protocol {
        Protocol::Tcp => Socket::new(domain, Type::STREAM, Some(socket2::Protocol::TCP))?,
        Protocol::Udp => Socket::new(domain, Type::DGRAM, Some(socket2::Protocol::UDP))?,
        Protocol::Sctp => return Err(sctp_not_forwarded()),
    };
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket)
}

/// A socket whose source is `from`, an address not of this node: the client's,
/// for `externalTrafficPolicy: Local`. Needs `CAP_NET_ADMIN`, and the routing
/// of [`transparent`] for the replies to come back.
fn transparent_socket(from: SocketAddr, to: SocketAddr, kind: Type) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(to), kind, None)?;
    if to.is_ipv6() {
        socket.set_ip_transparent_v6(true)?;
    } else {
        socket.set_ip_transparent_v4(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&from.into())?;
    Ok(socket)
}

/// When a connection or flow last moved a byte: updated by the tasks that copy
/// (an atomic, so both directions and the reply task share it), read by the
/// idle checks.
struct Activity {
    start: std::time::Instant,
    /// Milliseconds from `start` to the last byte, plus one; zero until the
    /// first.
    last: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Records a byte moved now.
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last
            .store(ms + 1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a byte has moved yet.
    fn moved(&self) -> bool {
        self.last.load(std::sync::atomic::Ordering::Relaxed) != 0
    }

    /// When the last byte moved (when it began, if none has).
    fn last(&self) -> std::time::Instant {
        let ms = self.last.load(std::sync::atomic::Ordering::Relaxed);
        self.start + Duration::from_millis(ms.saturating_sub(1))
    }
}

/// Whether `client` may use a listener with `policy`.
fn admitted(policy: &Policy, client: std::net::IpAddr) -> bool {
    let client = match client {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, std::net::IpAddr::V4),
        v4 => v4,
    };
    policy.source_ranges.is_empty() || policy.source_ranges.iter().any(|r| r.contains(client))
}

#[cfg(test)]
mod descriptor_tests {
    use super::*;

    /// The defaults follow the open-file limit: the connection caps are
    /// what the descriptors hold, no source is limited, and none of them
    /// needs a warning.
    #[test]
    fn the_defaults_are_what_the_open_file_limit_holds() {
        for (limit, connections, flows) in [
            (20_000, 9_872, 16_384),
            (1_048_576, 524_160, 16_384),
            (4_096, 1_920, 3_840),
            (100, 1, 2),
        ] {
            let s = Settings::within(limit);
            assert_eq!(s.max_connections_total, connections, "limit {limit}");
            assert_eq!(s.max_connections, connections, "limit {limit}");
            assert_eq!(s.max_flows_total, flows, "limit {limit}");
            assert_eq!(s.max_connections_per_source, None, "limit {limit}");
            assert_eq!(descriptor_shortfall(&s), None, "limit {limit}");
        }
        let tuned = Tuning {
            max_connections_per_source: Some(0),
            max_connections_total: Some(50_000),
            ..Tuning::default()
        }
        .settings(20_000);
        assert_eq!(tuned.max_connections_per_source, Some(1));
        let short = descriptor_shortfall(&tuned).expect("50,000 connections do not fit");
        assert!(
            short.contains("19744 descriptors") && short.contains("at most 9872 TCP connections"),
            "{short}"
        );
    }

    /// The kernel path is on unless the static file or the flag turns it
    /// off.
    #[test]
    fn the_kernel_path_is_on_by_default_and_can_be_turned_off() {
        assert!(Settings::default().kernel_path);
        let off: Tuning = serde_saphyr::from_str("kernelPath: false").expect("tuning");
        assert!(!off.settings(DEFAULT_OPEN_FILES).kernel_path);
        let unset: Tuning = serde_saphyr::from_str("drainSeconds: 5").expect("tuning");
        assert!(unset.settings(DEFAULT_OPEN_FILES).kernel_path);
    }
}
