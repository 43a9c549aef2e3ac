//! The embedded L4 forwarder: the owning node accepts TCP and UDP on a
//! Service's address itself and forwards to the Service's endpoints, keeping
//! the client's address — transparently for `externalTrafficPolicy: Local`,
//! in a PROXY protocol header otherwise.
//!
//! [`plan`] decides the listeners (pure); [`Forwarder::apply`] makes the
//! running ones match, keeping existing connections alive: a listener whose
//! address moves away, or a backend that disappears, drains for
//! [`Settings::drain`] before its connections are cut.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub mod balance;
pub mod firewall;
pub mod metrics;
pub mod plan;
pub mod proxy_header;
mod tcp;
pub mod transparent;
mod udp;

use balance::Balancer;
use plan::{Backend, Listener, Policy, Protocol};

use crate::ipam::ServiceKey;

/// Limits and timeouts of every listener.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a backend connect may take before the next backend is tried.
    pub connect_timeout: Duration,
    /// A TCP connection with no byte either way for this long is closed.
    pub tcp_idle: Duration,
    /// A UDP flow with no datagram either way for this long is forgotten.
    pub udp_idle: Duration,
    /// TCP connections open at once per listener; more are reset.
    pub max_connections: usize,
    /// UDP flows per listener; datagrams of new clients beyond are dropped.
    pub max_flows: usize,
    /// How long connections live on once their backend or listener is gone.
    pub drain: Duration,
    /// The firewall mark that routes replies of transparent connections back
    /// to the forwarder ([`transparent`]).
    pub mark: u32,
    /// Ports the node keeps for itself, never forwarded on a Service address
    /// (besides those the speaker adds: the kubelet's, its gossip and metrics
    /// ports).
    pub reserved: Vec<(Protocol, u16)>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            tcp_idle: Duration::from_secs(3600),
            // kube-proxy's conntrack UDP stream timeout.
            udp_idle: Duration::from_secs(120),
            max_connections: 65_536,
            max_flows: 65_536,
            drain: Duration::from_secs(30),
            mark: transparent::DEFAULT_MARK,
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
    /// [`Settings::tcp_idle`], in seconds.
    pub tcp_idle_seconds: Option<u64>,
    /// [`Settings::udp_idle`], in seconds.
    pub udp_idle_seconds: Option<u64>,
    /// [`Settings::max_connections`].
    pub max_connections: Option<usize>,
    /// [`Settings::max_flows`].
    pub max_flows: Option<usize>,
    /// [`Settings::drain`], in seconds.
    pub drain_seconds: Option<u64>,
    /// TCP ports of [`Settings::reserved`].
    pub reserved_tcp_ports: Vec<u16>,
    /// UDP ports of [`Settings::reserved`].
    pub reserved_udp_ports: Vec<u16>,
}

impl Tuning {
    /// The defaults with these overrides.
    pub fn settings(&self) -> Settings {
        let d = Settings::default();
        Settings {
            connect_timeout: self
                .connect_timeout_ms
                .map_or(d.connect_timeout, Duration::from_millis),
            tcp_idle: self
                .tcp_idle_seconds
                .map_or(d.tcp_idle, Duration::from_secs),
            udp_idle: self
                .udp_idle_seconds
                .map_or(d.udp_idle, Duration::from_secs),
            max_connections: self.max_connections.unwrap_or(d.max_connections).max(1),
            max_flows: self.max_flows.unwrap_or(d.max_flows).max(1),
            drain: self.drain_seconds.map_or(d.drain, Duration::from_secs),
            mark: d.mark,
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
}

/// Per-listener state its connection tasks share.
struct Context {
    settings: Settings,
    metrics: metrics::Metrics,
    balancer: Balancer,
    connections: Arc<Semaphore>,
}

struct Running {
    state: watch::Sender<Arc<Shared>>,
    stop: CancellationToken,
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
    running: BTreeMap<(SocketAddr, Protocol), Running>,
}

impl Forwarder {
    /// A forwarder with no listener yet.
    pub fn new(settings: Settings, metrics: metrics::Metrics) -> Self {
        Self {
            settings,
            metrics,
            running: BTreeMap::new(),
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

    /// Stops every listener; connections drain as on any stop.
    pub fn stop_all(&mut self) {
        for r in self.running.values() {
            r.stop.cancel();
        }
        self.running.clear();
    }

    fn start(&self, l: &Listener, shared: Shared) -> std::io::Result<Running> {
        let (state, rx) = watch::channel(Arc::new(shared));
        let stop = CancellationToken::new();
        let ctx = Arc::new(Context {
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            balancer: Balancer::default(),
            connections: Arc::new(Semaphore::new(self.settings.max_connections)),
        });
        let socket = bound_socket(l.address, l.protocol)?;
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
        }
        Ok(Running { state, stop })
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

/// A non-blocking socket bound to `address`. `IP_FREEBIND` lets it bind before
/// the address is on the node (the two are applied independently) and keeps
/// it bound if the address goes first.
fn bound_socket(address: SocketAddr, protocol: Protocol) -> std::io::Result<Socket> {
    let domain = Domain::for_address(address);
    let socket = match protocol {
        Protocol::Tcp => Socket::new(domain, Type::STREAM, Some(socket2::Protocol::TCP))?,
        Protocol::Udp => Socket::new(domain, Type::DGRAM, Some(socket2::Protocol::UDP))?,
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
    /// Milliseconds from `start` to the last byte.
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
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// When the last byte moved.
    fn last(&self) -> std::time::Instant {
        self.start + Duration::from_millis(self.last.load(std::sync::atomic::Ordering::Relaxed))
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

/// Resolves once `backend` has been gone from the listener (or the listener
/// stopped) for the drain period: the moment a connection to it is cut.
async fn doomed(
    mut state: watch::Receiver<Arc<Shared>>,
    backend: Backend,
    stop: CancellationToken,
    drain: Duration,
) {
    loop {
        if stop.is_cancelled() || !state.borrow_and_update().backends.contains(&backend) {
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            changed = state.changed() => if changed.is_err() { break },
        }
    }
    tokio::time::sleep(drain).await;
}
