//! UDP: a flow per client address, each with a connected socket to its
//! backend; replies leave from the Service's address. The flows are bounded
//! per listener and per node ([`super::flows`] decides which one goes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use socket2::Type;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::flows::{Eviction, FlowTable};
use super::metrics::{Direction, EvictedLabels, Refusal, ServiceLabels};
use super::plan::Backend;
use super::{
    Activity, Context, NodeSlot, REPLY_GRACE, Shared, UNANSWERED_FLOW_IDLE, admitted,
    transparent_socket,
};

/// The largest UDP payload.
const DATAGRAM: usize = 65_535;

struct Flow {
    backend: Backend,
    socket: Arc<UdpSocket>,
    /// Its last datagram, either way.
    activity: Arc<Activity>,
    /// Tells it apart from an earlier flow of the same client, for the reply
    /// task's news that its backend answered.
    id: u64,
    replies: AbortHandle,
    /// Its place under the node's flow and descriptor limits, given back
    /// when it goes.
    _slot: NodeSlot,
}

/// A stopped listener's flow ends after this long without a datagram: its
/// client's next datagrams go to the listener's successor or new owner, so
/// only the backend's last replies are waited for.
const STOPPED_FLOW_IDLE: Duration = Duration::from_secs(5);

/// A flow's first reply, as the reply task reports it: the client, and the
/// flow's id.
type Answered = (SocketAddr, u64);

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
    let mut flows: FlowTable<SocketAddr, Flow> = FlowTable::new(ctx.settings.max_flows);
    let mut state = state;
    let mut shared = state.borrow_and_update().clone();
    let mut counters: Option<Counters> = None;
    let mut buf = vec![0u8; DATAGRAM];
    let udp_idle = ctx.settings.udp_idle;
    let unanswered_idle = UNANSWERED_FLOW_IDLE.min(udp_idle);
    let sweep_every = (unanswered_idle / 4).max(Duration::from_millis(100));
    let mut sweep = tokio::time::interval(sweep_every);
    let (answered_tx, mut answered_rx) = mpsc::unbounded_channel::<Answered>();
    let mut next_id = 0u64;
    loop {
        note_answers(&mut flows, &mut answered_rx);
        let (n, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            _ = sweep.tick() => {
                expire(&mut flows, udp_idle, unanswered_idle);
                if let Some(c) = &counters {
                    c.count_flows(&flows);
                }
                continue;
            }
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                // An ICMP error for an earlier reply; nothing to do.
                Err(_) => continue,
            },
        };
        if state.has_changed().unwrap_or(false) {
            let now = state.borrow_and_update().clone();
            if now.service != shared.service {
                counters = None;
            }
            shared = now;
        }
        // Made on the first datagram, so a listener nobody used exports no
        // series.
        let c = counters.get_or_insert_with(|| Counters::of(&ctx.metrics, &shared.service));
        if !admitted(&shared.policy, peer.ip()) {
            ctx.metrics.refuse(&shared.service, Refusal::SourceRange);
            continue;
        }
        // A flow whose backend left moves to a live one now, not when it idles
        // out (kubernetes#113250).
        if flows
            .peek(&peer)
            .is_some_and(|f| !shared.backends.contains(&f.backend))
        {
            flows.remove(&peer);
        }
        if flows.touch(&peer).is_none() {
            if flows.is_full() {
                evict(&mut flows, c);
            }
            let Some(slot) = node_slot(&mut flows, &ctx, c) else {
                ctx.metrics.refuse(&shared.service, Refusal::FlowTableFull);
                continue;
            };
            next_id += 1;
            let reply = (answered_tx.clone(), next_id);
            match open(&socket, peer, &shared, &ctx, c, slot, reply).await {
                Ok(flow) => flows.insert(peer, flow),
                Err(why) => {
                    ctx.metrics.refuse(&shared.service, why);
                    continue;
                }
            }
            c.count_flows(&flows);
        }
        let Some(flow) = flows.peek(&peer) else {
            continue;
        };
        flow.activity.touch();
        match flow.socket.send(&buf[..n]).await {
            Ok(sent) => {
                c.datagrams.inc();
                c.to_backend.inc_by(sent as u64);
            }
            Err(e) => {
                // Typically ECONNREFUSED from an earlier ICMP port unreachable:
                // the backend is gone; its next datagram picks another.
                debug!(backend = %flow.backend.address, error = %e, "send to backend failed");
                c.failures.inc();
                flows.remove(&peer);
            }
        }
    }
    drain(flows, &ctx).await;
    if let Some(c) = &counters {
        c.flows.set(0);
    }
}

/// Marks the flows whose backend answered. At most one report per flow, so
/// the channel holds no more than the flows opened since the last datagram.
fn note_answers(
    flows: &mut FlowTable<SocketAddr, Flow>,
    answered: &mut mpsc::UnboundedReceiver<Answered>,
) {
    while let Ok((peer, id)) = answered.try_recv() {
        if flows.peek(&peer).is_some_and(|f| f.id == id) {
            flows.answered(&peer);
        }
    }
}

/// One of the node's flow slots; when they are all taken, this listener
/// gives up one of its own flows, if it has any: it never takes another's.
fn node_slot(
    flows: &mut FlowTable<SocketAddr, Flow>,
    ctx: &Context,
    c: &Counters,
) -> Option<NodeSlot> {
    ctx.node
        .flow()
        .or_else(|| evict(flows, c).then(|| ctx.node.flow()).flatten())
}

/// After the listener stopped: the flows open go on (their replies still
/// leave from the listener's socket) until they are quiet for a few seconds
/// or the drain period ends, as TCP connections do; a successor that took
/// the socket over serves new datagrams meanwhile.
async fn drain(mut flows: FlowTable<SocketAddr, Flow>, ctx: &Context) {
    let drained = tokio::time::sleep(ctx.settings.drain);
    tokio::pin!(drained);
    let quiet = STOPPED_FLOW_IDLE.min(ctx.settings.udp_idle);
    let mut sweep = tokio::time::interval(Duration::from_millis(500));
    while !flows.is_empty() {
        tokio::select! {
            _ = &mut drained => break,
            _ = sweep.tick() => expire(&mut flows, quiet, quiet),
        }
    }
}

/// Forgets the flows idle for longer than their timeout.
fn expire(
    flows: &mut FlowTable<SocketAddr, Flow>,
    answered_idle: Duration,
    unanswered_idle: Duration,
) {
    flows.retain(|_, f, answered| {
        let idle = if answered {
            answered_idle
        } else {
            unanswered_idle
        };
        f.activity.last().elapsed() < idle
    });
}

/// Removes one flow of `flows` to make room; whether there was one.
fn evict(flows: &mut FlowTable<SocketAddr, Flow>, c: &Counters) -> bool {
    match flows.evict(|f| f.activity.last().elapsed() < REPLY_GRACE) {
        Some((_, _, Eviction::Unanswered)) => {
            c.evicted_unanswered.inc();
            true
        }
        Some((_, _, Eviction::LeastRecent)) => {
            c.evicted_least_recent.inc();
            true
        }
        None => false,
    }
}

/// A listener's counters, looked up once per change of its Service rather
/// than once per datagram.
struct Counters {
    datagrams: Counter,
    to_backend: Counter,
    to_client: Counter,
    failures: Counter,
    evicted_unanswered: Counter,
    evicted_least_recent: Counter,
    flows: Gauge,
    affinity: Gauge,
}

impl Counters {
    fn count_flows(&self, flows: &FlowTable<SocketAddr, Flow>) {
        self.flows
            .set(i64::try_from(flows.len()).unwrap_or(i64::MAX));
    }

    fn of(m: &super::metrics::Metrics, service: &crate::ipam::ServiceKey) -> Self {
        let labels = ServiceLabels::from(service);
        let evicted = |kind| {
            m.udp_flows_evicted
                .get_or_create(&EvictedLabels {
                    namespace: labels.namespace.clone(),
                    service: labels.service.clone(),
                    reason: kind,
                })
                .clone()
        };
        Self {
            datagrams: m.udp_datagrams.get_or_create(&labels).clone(),
            to_backend: m.bytes(service, Direction::ToBackend),
            to_client: m.bytes(service, Direction::ToClient),
            failures: m.backend_connect_failures.get_or_create(&labels).clone(),
            evicted_unanswered: evicted(Eviction::Unanswered),
            evicted_least_recent: evicted(Eviction::LeastRecent),
            flows: m.udp_flows.get_or_create(&labels).clone(),
            affinity: m.affinity_clients.get_or_create(&labels).clone(),
        }
    }
}

/// Opens a flow for `peer` to the first backend that takes a socket, or says
/// why none does.
async fn open(
    listener: &Arc<UdpSocket>,
    peer: SocketAddr,
    shared: &Shared,
    ctx: &Arc<Context>,
    c: &Counters,
    slot: NodeSlot,
    (answered, id): (mpsc::UnboundedSender<Answered>, u64),
) -> Result<Flow, Refusal> {
    let now = Instant::now();
    let backends = shared.backends_for(&ctx.spreader, None)?;
    let order = ctx
        .balancer
        .order(backends, peer.ip(), shared.policy.affinity, now);
    for backend in order {
        let socket = match backend_socket(peer, backend.address, shared.policy.local).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                debug!(backend = %backend.address, error = %e, "UDP backend socket");
                continue;
            }
        };
        let remembered = ctx
            .balancer
            .stick(peer.ip(), &backend, shared.policy.affinity, now);
        if shared.policy.affinity.is_some() {
            c.affinity
                .set(i64::try_from(remembered).unwrap_or(i64::MAX));
        }
        let activity = Arc::new(Activity::new());
        let replies = tokio::spawn(replies(
            socket.clone(),
            listener.clone(),
            peer,
            activity.clone(),
            Some((answered, id)),
            c.to_client.clone(),
        ))
        .abort_handle();
        return Ok(Flow {
            backend,
            socket,
            activity,
            id,
            replies,
            _slot: slot,
        });
    }
    Err(Refusal::NoBackend)
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

thread_local! {
    /// One receive buffer per worker thread for every flow's replies: a flow
    /// holds no buffer of its own, so an idle flow costs a socket and a small
    /// task, not 64 KiB.
    static REPLY: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; DATAGRAM]);
}

/// Sends the backend's datagrams to `peer` from the listener's socket, so they
/// come from the Service's address and port.
async fn replies(
    backend: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    peer: SocketAddr,
    activity: Arc<Activity>,
    mut first: Option<(mpsc::UnboundedSender<Answered>, u64)>,
    bytes: Counter,
) {
    loop {
        if backend.readable().await.is_err() {
            return;
        }
        // Receive and send without awaiting, so the buffer is never held
        // across a suspension point. A reply the send buffer can't take now
        // is dropped, as a full link would.
        let outcome = REPLY.with(|buf| {
            let mut buf = buf.borrow_mut();
            match backend.try_recv(&mut buf) {
                Ok(n) => Some(listener.try_send_to(&buf[..n], peer).map(|_| n)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                Err(e) => Some(Err(e)),
            }
        });
        match outcome {
            None => {}
            Some(Ok(n)) => {
                bytes.inc_by(n as u64);
                activity.touch();
                if let Some((answered, id)) = first.take() {
                    let _ = answered.send((peer, id));
                }
            }
            // ICMP unreachable from the backend: keep waiting for the flow to
            // be moved or to expire.
            Some(Err(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
