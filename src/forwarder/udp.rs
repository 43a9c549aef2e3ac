//! UDP: a flow per client address, each with a connected socket to its
//! backend; replies leave from the Service's address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use socket2::Type;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::metrics::{Direction, Refusal, ServiceLabels};
use super::plan::Backend;
use super::{Context, Shared, admitted, transparent_socket};

/// The largest UDP payload.
const DATAGRAM: usize = 65_535;

struct Flow {
    backend: Backend,
    socket: Arc<UdpSocket>,
    /// Milliseconds since the listener started, at the flow's last datagram.
    last: Arc<AtomicU64>,
    replies: AbortHandle,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

pub(super) async fn serve(
    socket: UdpSocket,
    state: watch::Receiver<Arc<Shared>>,
    stop: CancellationToken,
    ctx: Arc<Context>,
) {
    let socket = Arc::new(socket);
    let start = Instant::now();
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut gauge: Option<Gauge> = None;
    let mut buf = vec![0u8; DATAGRAM];
    let sweep_every = (ctx.settings.udp_idle / 4).max(Duration::from_millis(100));
    let mut sweep = tokio::time::interval(sweep_every);
    loop {
        let (n, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            _ = sweep.tick() => {
                let idle = millis(ctx.settings.udp_idle);
                let now = millis(start.elapsed());
                flows.retain(|_, f| now.saturating_sub(f.last.load(Ordering::Relaxed)) < idle);
                set(&gauge, flows.len());
                continue;
            }
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                // An ICMP error for an earlier reply; nothing to do.
                Err(_) => continue,
            },
        };
        let shared = state.borrow().clone();
        let labels = ServiceLabels::from(&shared.service);
        let g = gauge.get_or_insert_with(|| ctx.metrics.udp_flows.get_or_create(&labels).clone());
        if !admitted(&shared.policy, peer.ip()) {
            ctx.metrics.refuse(&shared.service, Refusal::SourceRange);
            continue;
        }
        // A flow whose backend left moves to a live one now, not when it idles
        // out (kubernetes#113250).
        if flows
            .get(&peer)
            .is_some_and(|f| !shared.backends.contains(&f.backend))
        {
            flows.remove(&peer);
        }
        if !flows.contains_key(&peer) {
            if flows.len() >= ctx.settings.max_flows {
                ctx.metrics.refuse(&shared.service, Refusal::FlowTableFull);
                continue;
            }
            match open(&socket, peer, &shared, &ctx, start).await {
                Some(flow) => {
                    flows.insert(peer, flow);
                }
                None => {
                    ctx.metrics.refuse(&shared.service, Refusal::NoBackend);
                    continue;
                }
            }
        }
        g.set(i64::try_from(flows.len()).unwrap_or(i64::MAX));
        let Some(flow) = flows.get(&peer) else {
            continue;
        };
        flow.last.store(millis(start.elapsed()), Ordering::Relaxed);
        match flow.socket.send(&buf[..n]).await {
            Ok(sent) => {
                ctx.metrics.udp_datagrams.get_or_create(&labels).inc();
                ctx.metrics
                    .bytes(&shared.service, Direction::ToBackend)
                    .inc_by(sent as u64);
            }
            Err(e) => {
                // Typically ECONNREFUSED from an earlier ICMP port unreachable:
                // the backend is gone; its next datagram picks another.
                debug!(backend = %flow.backend.address, error = %e, "send to backend failed");
                ctx.metrics
                    .backend_connect_failures
                    .get_or_create(&labels)
                    .inc();
                flows.remove(&peer);
            }
        }
    }
    flows.clear();
    set(&gauge, 0);
}

fn set(gauge: &Option<Gauge>, n: usize) {
    if let Some(g) = gauge {
        g.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Opens a flow for `peer` to the first backend that takes a socket.
async fn open(
    listener: &Arc<UdpSocket>,
    peer: SocketAddr,
    shared: &Shared,
    ctx: &Arc<Context>,
    start: Instant,
) -> Option<Flow> {
    let now = Instant::now();
    let order = ctx
        .balancer
        .order(&shared.backends, peer.ip(), shared.policy.affinity, now);
    for backend in order {
        let socket = match backend_socket(peer, backend.address, shared.policy.local).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                debug!(backend = %backend.address, error = %e, "UDP backend socket");
                continue;
            }
        };
        ctx.balancer
            .stick(peer.ip(), &backend, shared.policy.affinity, now);
        let last = Arc::new(AtomicU64::new(millis(start.elapsed())));
        let replies = tokio::spawn(replies(
            socket.clone(),
            listener.clone(),
            peer,
            last.clone(),
            start,
            ctx.metrics.bytes(&shared.service, Direction::ToClient),
        ))
        .abort_handle();
        return Some(Flow {
            backend,
            socket,
            last,
            replies,
        });
    }
    None
}

async fn backend_socket(
    peer: SocketAddr,
    backend: SocketAddr,
    transparent: bool,
) -> std::io::Result<UdpSocket> {
    let socket = if transparent {
        // The backend sees the client's own address and port.
        UdpSocket::from_std(transparent_socket(peer, backend, Type::DGRAM)?.into())?
    } else if backend.is_ipv4() {
        UdpSocket::bind("0.0.0.0:0").await?
    } else {
        UdpSocket::bind("[::]:0").await?
    };
    socket.connect(backend).await?;
    Ok(socket)
}

/// Sends the backend's datagrams to `peer` from the listener's socket, so they
/// come from the Service's address and port.
async fn replies(
    backend: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    peer: SocketAddr,
    last: Arc<AtomicU64>,
    start: Instant,
    bytes: prometheus_client::metrics::counter::Counter,
) {
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        let n = match backend.recv(&mut buf).await {
            Ok(n) => n,
            // ICMP unreachable from the backend; keep waiting for the flow to
            // be moved or to expire.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if listener.send_to(&buf[..n], peer).await.is_ok() {
            bytes.inc_by(n as u64);
            last.store(millis(start.elapsed()), Ordering::Relaxed);
        }
    }
}
