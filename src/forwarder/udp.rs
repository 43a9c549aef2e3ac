//! UDP: a flow per client address, each with a connected socket to its
//! backend; replies leave from the Service's address. The flows are bounded
//! per listener and per node ([`super::flows`] decides which one goes).
//! Datagrams move in batches, both ways ([`super::datagrams`]).

use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use socket2::{Domain, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::datagrams::{BATCHES, Batch};
use super::flows::{Eviction, FlowTable};
use super::metrics::{Direction, EvictedLabels, Refusal, ServiceLabels};
use super::plan::Backend;
use super::{
    Activity, Context, NodeSlot, REPLY_GRACE, Shared, UNANSWERED_FLOW_IDLE, admitted,
    transparent_socket,
};

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

/// A listener's flows and what it forwards them by.
struct Listener {
    socket: Arc<UdpSocket>,
    flows: FlowTable<SocketAddr, Flow>,
    shared: Arc<Shared>,
    /// Made on the first datagram, so a listener nobody used exports no
    /// series.
    counters: Option<Counters>,
    ctx: Arc<Context>,
    answered: mpsc::UnboundedSender<Answered>,
    next_id: u64,
    /// Whether a flow went since the task last yielded.
    closed: bool,
}

pub(super) async fn serve(
    socket: UdpSocket,
    state: watch::Receiver<Arc<Shared>>,
    stop: CancellationToken,
    ctx: Arc<Context>,
) {
    let socket = Arc::new(socket);
    let mut state = state;
    let udp_idle = ctx.settings.udp_idle;
    let unanswered_idle = UNANSWERED_FLOW_IDLE.min(udp_idle);
    let sweep_every = (unanswered_idle / 4).max(Duration::from_millis(100));
    let mut sweep = tokio::time::interval(sweep_every);
    let (answered, mut answered_rx) = mpsc::unbounded_channel::<Answered>();
    let mut listener = Listener {
        socket: socket.clone(),
        flows: FlowTable::new(ctx.settings.max_flows),
        shared: state.borrow_and_update().clone(),
        counters: None,
        ctx,
        answered,
        next_id: 0,
        closed: false,
    };
    loop {
        note_answers(&mut listener.flows, &mut answered_rx);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = sweep.tick() => {
                expire(&mut listener.flows, udp_idle, unanswered_idle);
                if let Some(c) = &listener.counters {
                    c.count_flows(&listener.flows);
                }
                continue;
            }
            ready = socket.readable() => if ready.is_err() {
                continue;
            },
        }
        if state.has_changed().unwrap_or(false) {
            let now = state.borrow_and_update().clone();
            if now.service != listener.shared.service {
                listener.counters = None;
            }
            listener.shared = now;
        }
        // Received and sent on without a suspension point, so the batch is
        // never held across one.
        BATCHES.with(|batch| {
            let mut batch = batch.borrow_mut();
            // An error is an ICMP error for an earlier reply: nothing to do.
            if let Ok(n) = socket.try_io(Interest::READABLE, || batch.recv(socket.as_raw_fd())) {
                listener.forward(&batch, n);
            }
        });
        // A flow's socket closes once its reply task, aborted, is dropped,
        // which the runtime does only when this task yields: without that,
        // a flood of new clients would hold the sockets of the flows they
        // evicted past the flow and descriptor limits.
        if std::mem::take(&mut listener.closed) {
            tokio::task::yield_now().await;
        }
    }
    let Listener {
        flows,
        counters,
        ctx,
        ..
    } = listener;
    drain(flows, &ctx).await;
    if let Some(c) = &counters {
        c.flows.set(0);
    }
}

impl Listener {
    /// Forwards the `n` datagrams of `batch`, each client's run of them in
    /// one send.
    fn forward(&mut self, batch: &Batch, n: usize) {
        let mut start = 0;
        while start < n {
            let peer = batch.datagram(start).1;
            let end = (start + 1..n)
                .find(|&i| batch.datagram(i).1 != peer)
                .unwrap_or(n);
            if let Some(peer) = peer {
                let before = self.flows.len();
                let opened = self.forward_run(batch, start..end, peer);
                self.closed |= self.flows.len() < before + usize::from(opened);
            }
            start = end;
        }
    }

    /// Forwards datagrams `run` of `batch`, all from `peer`; whether it
    /// opened a flow for them.
    fn forward_run(&mut self, batch: &Batch, run: Range<usize>, peer: SocketAddr) -> bool {
        let count = run.len() as u64;
        let c = self
            .counters
            .get_or_insert_with(|| Counters::of(&self.ctx.metrics, &self.shared.service));
        if !admitted(&self.shared.policy, peer.ip()) {
            let metrics = &self.ctx.metrics;
            metrics.refuse_many(&self.shared.service, Refusal::SourceRange, count);
            return false;
        }
        // A flow whose backend left moves to a live one now, not when it idles
        // out (kubernetes#113250).
        if self
            .flows
            .peek(&peer)
            .is_some_and(|f| !self.shared.backends.contains(&f.backend))
        {
            self.flows.remove(&peer);
        }
        let mut opened = false;
        if self.flows.touch(&peer).is_none() {
            if self.flows.is_full() {
                evict(&mut self.flows, c);
            }
            let Some(slot) = node_slot(&mut self.flows, &self.ctx, c) else {
                let metrics = &self.ctx.metrics;
                metrics.refuse_many(&self.shared.service, Refusal::FlowTableFull, count);
                return false;
            };
            self.next_id += 1;
            let reply = (self.answered.clone(), self.next_id);
            match open(&self.socket, peer, &self.shared, &self.ctx, c, slot, reply) {
                Ok(flow) => {
                    self.flows.insert(peer, flow);
                    opened = true;
                }
                Err(why) => {
                    self.ctx
                        .metrics
                        .refuse_many(&self.shared.service, why, count);
                    return false;
                }
            }
            c.count_flows(&self.flows);
        }
        let Some(flow) = self.flows.peek(&peer) else {
            return opened;
        };
        flow.activity.touch();
        // Sent past the runtime's readiness, which a socket just opened
        // lacks until the reactor next looks: a send that finds no room
        // drops, and is never waited for.
        match batch.send(flow.socket.as_fd(), run.clone(), None) {
            Ok(sent) => {
                c.datagrams.inc_by(sent as u64);
                c.to_backend
                    .inc_by(batch.bytes(run.start..run.start + sent));
            }
            // Its send buffer is full: dropped, as a full link would.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                // Typically ECONNREFUSED from an earlier ICMP port unreachable:
                // the backend is gone; its next datagram picks another.
                debug!(backend = %flow.backend.address, error = %e, "send to backend failed");
                c.failures.inc();
                self.flows.remove(&peer);
            }
        }
        opened
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
fn open(
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
        let socket = match backend_socket(peer, backend.address, shared.policy.local) {
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

/// A socket connected to `backend`. Binding and connecting a UDP socket
/// never wait, so a batch opens its flows without a suspension point.
fn backend_socket(
    peer: SocketAddr,
    backend: SocketAddr,
    transparent: bool,
) -> std::io::Result<UdpSocket> {
    let socket = if transparent {
        // The backend sees the client's own address and port.
        transparent_socket(peer, backend, Type::DGRAM)?
    } else {
        let socket = Socket::new(Domain::for_address(backend), Type::DGRAM, None)?;
        socket.set_nonblocking(true)?;
        socket
    };
    socket.connect(&backend.into())?;
    UdpSocket::from_std(socket.into())
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
        // Received and sent without a suspension point, so the batch is
        // never held across one. Replies the send buffer can't take now
        // are dropped, as a full link would.
        let outcome = BATCHES.with(|batch| {
            let mut batch = batch.borrow_mut();
            let n = match backend.try_io(Interest::READABLE, || batch.recv(backend.as_raw_fd())) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            };
            // Past the runtime's readiness, as the listener's sends.
            let sent = batch.send(listener.as_fd(), 0..n, Some(peer)).unwrap_or(0);
            Ok(Some(batch.bytes(0..sent)))
        });
        match outcome {
            Ok(None) => {}
            Ok(Some(n)) => {
                bytes.inc_by(n);
                activity.touch();
                if let Some((answered, id)) = first.take() {
                    let _ = answered.send((peer, id));
                }
            }
            // ICMP unreachable from the backend: keep waiting for the flow to
            // be moved or to expire.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
