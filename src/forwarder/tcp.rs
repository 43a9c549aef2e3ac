//! TCP: accept, choose a backend, send the PROXY header, copy both ways.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use socket2::Type;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::metrics::{Direction, Refusal, ServiceLabels, Timeout, TimeoutLabels};
use super::{
    Activity, Context, NodeSlot, Settings, Shared, admitted, proxy_header, sni, transparent_socket,
};
use crate::ipam::ServiceKey;

pub(super) async fn serve(
    listener: TcpListener,
    state: watch::Receiver<Arc<Shared>>,
    stop: CancellationToken,
    ctx: Arc<Context>,
) {
    let mut state = state;
    let mut shared = state.borrow_and_update().clone();
    let mut counters = Arc::new(TcpCounters::of(&ctx.metrics, &shared.service));
    let mut backoff = AcceptBackoff::default();
    // Connections are cut once the listener has been stopped for the drain
    // period: one timer for the listener, not one in every connection.
    let cut = CancellationToken::new();
    tokio::spawn({
        let (stop, cut, drain) = (stop.clone(), cut.clone(), ctx.settings.drain);
        async move {
            stop.cancelled().await;
            tokio::time::sleep(drain).await;
            cut.cancel();
        }
    });
    loop {
        let (client, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    backoff.succeeded(&shared.service);
                    a
                }
                Err(e) => {
                    counters.accept_errors.inc();
                    let pause = backoff.failed(&shared.service, &e);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            },
        };
        if state.has_changed().unwrap_or(false) {
            let now = state.borrow_and_update().clone();
            if now.service != shared.service {
                counters = Arc::new(TcpCounters::of(&ctx.metrics, &now.service));
            }
            shared = now;
        }
        if !admitted(&shared.policy, peer.ip()) {
            debug!(client = %peer, service = %shared.service, "outside loadBalancerSourceRanges");
            ctx.metrics.refuse(&shared.service, Refusal::SourceRange);
            reset(&client);
            continue;
        }
        let permits = match admit(&ctx, peer.ip()) {
            Ok(p) => p,
            Err(why) => {
                ctx.metrics.refuse(&shared.service, why);
                reset(&client);
                continue;
            }
        };
        tokio::spawn(connection(
            client,
            peer,
            Listener {
                shared: shared.clone(),
                counters: counters.clone(),
                cut: cut.clone(),
                ctx: ctx.clone(),
            },
            permits,
        ));
    }
}

/// A connection's places under the listener's, the node's and (when one is
/// set) its source's limits, given back when it ends.
struct Permits {
    _listener: OwnedSemaphorePermit,
    _node: NodeSlot,
    _source: Option<SourceSlot>,
}

/// Takes a place under every connection limit for a client at `source`, or
/// says which limit is reached. The node's are asked first: by default the
/// caps are what the descriptors hold, and a refusal should name the limit
/// the operator can raise (the open-file limit), not a cap derived from it.
fn admit(ctx: &Context, source: IpAddr) -> Result<Permits, Refusal> {
    let node = ctx.node.connection()?;
    let listener = ctx
        .connections
        .clone()
        .try_acquire_owned()
        .map_err(|_| Refusal::ConnectionLimit)?;
    // Without a per-source limit nothing is counted: no lock, no map entry.
    let source = match ctx.settings.max_connections_per_source {
        Some(limit) => Some(
            ctx.sources
                .take(source, limit)
                .ok_or(Refusal::SourceLimit)?,
        ),
        None => None,
    };
    Ok(Permits {
        _listener: listener,
        _node: node,
        _source: source,
    })
}

/// TCP connections open per client address on one listener. An address is
/// forgotten when its last connection ends, so the map is no larger than the
/// connections open.
#[derive(Clone, Default)]
pub(super) struct Sources(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl Sources {
    /// A place for one more connection from `source`, unless it has `limit`.
    fn take(&self, source: IpAddr, limit: usize) -> Option<SourceSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(source).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            sources: self.clone(),
            source,
        })
    }
}

/// One connection's place under its source's limit.
struct SourceSlot {
    sources: Sources,
    source: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.sources.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// Pauses after failed accepts. The failing connection stays queued, so an
/// immediate retry would fail again: out of file descriptors (EMFILE, ENFILE)
/// lasts until connections close. The pause doubles up to a second and starts
/// over after a success; a warning is logged at most every ten seconds, since
/// near the limit accepts succeed and fail by turns.
#[derive(Default)]
struct AcceptBackoff {
    /// Failures in a row.
    failures: u32,
    /// Failures since the last warning, and when it was logged.
    unreported: u64,
    warned: Option<Instant>,
    /// Whether a warning awaits its "accepting again".
    recovery_untold: bool,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);
    const WARN_EVERY: Duration = Duration::from_secs(10);

    fn failed(&mut self, service: &ServiceKey, error: &std::io::Error) -> Duration {
        self.unreported += 1;
        if self
            .warned
            .is_none_or(|at| at.elapsed() >= Self::WARN_EVERY)
        {
            warn!(%service, %error, failures = self.unreported,
                  "accept failed; this listener pauses until accepts succeed again");
            self.warned = Some(Instant::now());
            self.unreported = 0;
            self.recovery_untold = true;
        }
        self.failures = self.failures.saturating_add(1);
        Self::FIRST
            .saturating_mul(1 << self.failures.min(10))
            .min(Self::MAX)
    }

    fn succeeded(&mut self, service: &ServiceKey) {
        if std::mem::take(&mut self.recovery_untold) {
            info!(%service, "accepting again");
        }
        self.failures = 0;
    }
}

/// Passes a FIN on.
fn half_close(to: &TcpStream) -> std::io::Result<()> {
    match socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write) {
        Err(e) if e.kind() != std::io::ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}

/// Makes the stream's close a reset, once it is dropped: the client learns at
/// once, and no TIME_WAIT remains.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// What a connection shares with its listener.
struct Listener {
    shared: Arc<Shared>,
    counters: Arc<TcpCounters>,
    /// Cancelled when the listener's drain period is over.
    cut: CancellationToken,
    ctx: Arc<Context>,
}

/// A listener's counters, looked up once per Service rather than once per
/// connection.
struct TcpCounters {
    connections: Counter,
    active: Gauge,
    up: Counter,
    down: Counter,
    failures: Counter,
    connect_timeouts: Counter,
    accept_errors: Counter,
    handshake_timeouts: Counter,
    idle_timeouts: Counter,
}

impl TcpCounters {
    fn of(m: &super::metrics::Metrics, service: &crate::ipam::ServiceKey) -> Self {
        let labels = ServiceLabels::from(service);
        let timeout = |timeout| {
            m.timeouts
                .get_or_create(&TimeoutLabels {
                    namespace: labels.namespace.clone(),
                    service: labels.service.clone(),
                    timeout,
                })
                .clone()
        };
        Self {
            connections: m.connections.get_or_create(&labels).clone(),
            active: m.connections_active.get_or_create(&labels).clone(),
            up: m.bytes(service, Direction::ToBackend),
            down: m.bytes(service, Direction::ToClient),
            failures: m.backend_connect_failures.get_or_create(&labels).clone(),
            connect_timeouts: m.backend_connect_timeouts.get_or_create(&labels).clone(),
            accept_errors: m.accept_errors.get_or_create(&labels).clone(),
            handshake_timeouts: timeout(Timeout::Handshake),
            idle_timeouts: timeout(Timeout::Idle),
        }
    }
}

async fn connection(client: TcpStream, peer: SocketAddr, listener: Listener, _permits: Permits) {
    let Listener {
        shared,
        counters,
        cut,
        ctx,
    } = listener;
    // What a connection needs only until its backend is chosen lives in
    // `open`'s own state: an async fn is as large as its largest await, and
    // an idle connection should carry only what it needs while idle.
    let Some((backend, upstream)) = open(&client, peer, &shared, &counters, &ctx).await else {
        return;
    };
    counters.connections.inc();
    counters.active.inc();
    // A connection outlives its backend's endpoint (the pod may still be
    // terminating, as through kube-proxy's NAT); only its listener going away
    // cuts it, after the drain period.
    let outcome = tokio::select! {
        r = pipe(&client, &upstream, &ctx.settings, &ctx.node.descriptors, &counters) => r,
        _ = cut.cancelled() => Err(std::io::Error::other("drained")),
    };
    counters.active.dec();
    if let Err(e) = outcome {
        debug!(client = %peer, %backend, error = %e, "connection ended abnormally");
        // A reset on one side is passed on as a reset to the other.
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
}

/// Reads the ClientHello on a TLS port, chooses and connects a backend and
/// sends it what comes first (the PROXY header, the ClientHello): the
/// backend's address and the connection, or `None` when the client was
/// refused (reset or closed here).
async fn open(
    client: &TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    counters: &TcpCounters,
    ctx: &Context,
) -> Option<(SocketAddr, TcpStream)> {
    let sni = shared.routing.as_ref().is_some_and(|r| r.sni);
    let hello = if sni {
        match read_hello(client, ctx.settings.tcp_handshake).await {
            Ok(hello) => hello,
            Err(timed_out) => {
                if timed_out {
                    counters.handshake_timeouts.inc();
                }
                return None;
            }
        }
    } else {
        Hello::default()
    };
    let backends = match shared.backends_for(&ctx.spreader, hello.server_name.as_deref()) {
        Ok(b) => b,
        Err(why) => {
            debug!(client = %peer, server_name = ?hello.server_name, ?why, "refused");
            ctx.metrics.refuse(&shared.service, why);
            // A TLS client no route takes gets a bare FIN, not an alert:
            // Gateway API's conformance suite counts only a close or a reset
            // as a rejected connection. On a TCP port without a route the
            // client is reset, as on a Service without endpoints.
            if why == Refusal::NoRoute && sni {
                close(client);
            } else {
                reset(client);
            }
            return None;
        }
    };
    let now = Instant::now();
    let order = ctx
        .balancer
        .order(backends, peer.ip(), shared.policy.affinity, now);
    let from = shared.policy.local.then_some(peer);
    let chosen = connect_first(order, from, &ctx.settings, counters).await;
    let Some((backend, mut upstream)) = chosen else {
        ctx.metrics.refuse(&shared.service, Refusal::NoBackend);
        reset(client);
        return None;
    };
    ctx.balancer
        .stick(peer.ip(), &backend, shared.policy.affinity, now);
    let _ = upstream.set_nodelay(true);
    // The PROXY header and the bytes read before choosing (a ClientHello)
    // go in one write: one segment to the backend, not two.
    let mut first = match shared.policy.proxy {
        Some(version) => {
            let local = client.local_addr().unwrap_or(peer);
            proxy_header::tcp(version, peer, local)
        }
        None => Vec::new(),
    };
    first.extend_from_slice(&hello.bytes);
    if !first.is_empty() && upstream.write_all(&first).await.is_err() {
        reset(client);
        return None;
    }
    counters.up.inc_by(hello.bytes.len() as u64);
    Some((backend.address, upstream))
}

/// The first backend of `order` that accepts a connection (from `from`,
/// the client's address, in transparent mode), and the connection.
async fn connect_first(
    order: Vec<super::routing::Backend>,
    from: Option<SocketAddr>,
    settings: &Settings,
    counters: &TcpCounters,
) -> Option<(super::routing::Backend, TcpStream)> {
    for b in order {
        match tokio::time::timeout(settings.connect_timeout, connect(b.address, from)).await {
            Ok(Ok(stream)) => return Some((b, stream)),
            Ok(Err(e)) => debug!(backend = %b.address, error = %e, "backend connect failed"),
            Err(_) => {
                debug!(backend = %b.address, "backend connect timed out");
                counters.connect_timeouts.inc();
            }
        }
        counters.failures.inc();
    }
    None
}

/// What was read of a TLS client before its backend was chosen.
#[derive(Default)]
struct Hello {
    /// The bytes, sent on to the backend first.
    bytes: Vec<u8>,
    /// The server name the ClientHello asks for.
    server_name: Option<String>,
}

/// Reads a client's ClientHello: at most [`sni::MAX_HELLO`] bytes, for at
/// most `patience`. Fails when the client closed first (`false`) or took
/// longer (`true`).
async fn read_hello(client: &TcpStream, patience: Duration) -> Result<Hello, bool> {
    // Most ClientHellos are a few hundred bytes to two KiB: the buffer
    // starts there and grows only for a larger one. It is on the heap, not
    // an array on this future's stack: every connection's task would carry
    // those bytes for as long as it lives.
    let mut bytes = vec![0u8; 2048];
    let deadline = tokio::time::Instant::now() + patience;
    // A read tried at once, as HAProxy does after accept: the hello usually
    // arrived with the handshake's last ACK, and the reactor need not be
    // asked first whether it has (a turn of the event loop per connection).
    match std::io::Read::read(&mut &*socket2::SockRef::from(client), &mut bytes) {
        Ok(0) => return Err(false),
        Ok(n) => bytes.truncate(n),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => bytes.clear(),
        Err(_) => return Err(false),
    }
    loop {
        let server_name = match sni::parse(&bytes) {
            sni::Hello::Incomplete => None,
            sni::Hello::ServerName(name) => Some(name),
            sni::Hello::NotClientHello => Some(None),
        };
        if let Some(server_name) = server_name {
            return Ok(Hello { bytes, server_name });
        }
        if bytes.len() == bytes.capacity() {
            // Exact, so the buffer never holds more than MAX_HELLO: parse
            // says Incomplete only below it.
            bytes.reserve_exact(bytes.capacity().min(sni::MAX_HELLO - bytes.len()));
        }
        let read = tokio::time::timeout_at(deadline, async {
            loop {
                client.readable().await?;
                match client.try_read_buf(&mut bytes) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    other => return other,
                }
            }
        });
        match read.await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err(false),
            Err(_) => return Err(true),
        }
    }
}

/// Turns away a TLS client no route takes with a FIN.
fn close(client: &TcpStream) {
    let _ = socket2::SockRef::from(client).shutdown(std::net::Shutdown::Write);
}

async fn connect(to: SocketAddr, from: Option<SocketAddr>) -> std::io::Result<TcpStream> {
    let socket = match from {
        Some(from) => TcpSocket::from_std_stream(
            transparent_socket(SocketAddr::new(from.ip(), 0), to, Type::STREAM)?.into(),
        ),
        None if to.is_ipv4() => TcpSocket::new_v4()?,
        None => TcpSocket::new_v6()?,
    };
    socket.connect(to).await
}

/// Bytes moved per `splice(2)` call: a pipe's default capacity.
const PIPE_CHUNK: usize = 64 * 1024;

/// Copies both ways until both sides have closed, passing each half-close on;
/// gives up when no byte moved for [`Settings::tcp_handshake`] from the start,
/// or later for [`Settings::tcp_idle`].
///
/// Small exchanges go through one buffer per worker thread (read and written
/// without awaiting in between); once a read fills that buffer the direction
/// is bulk and switches to `splice(2)`, socket → pipe → socket, so bytes no
/// longer enter user space — HAProxy's `splice-auto`. A connection owns no
/// buffer of its own, and its pipes only once it moves bulk data and the
/// node's `descriptors` have room for them.
async fn pipe(
    client: &TcpStream,
    upstream: &TcpStream,
    settings: &Settings,
    descriptors: &Semaphore,
    counters: &TcpCounters,
) -> std::io::Result<()> {
    let activity = Activity::new();
    let copy = async {
        tokio::try_join!(
            copy_half(client, upstream, &activity, descriptors, &counters.up),
            copy_half(upstream, client, &activity, descriptors, &counters.down),
        )
    };
    let watchdog = async {
        loop {
            let deadline = if activity.moved() {
                activity.last() + settings.tcp_idle
            } else {
                activity.last() + settings.tcp_handshake.min(settings.tcp_idle)
            };
            if Instant::now() >= deadline {
                return activity.moved();
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    };
    tokio::select! {
        r = copy => r.map(|_| ()),
        // A connection that timed out is closed politely (FIN both ways), as
        // HAProxy does on its client and server timeouts.
        moved = watchdog => {
            if moved {
                debug!("idle timeout");
                counters.idle_timeouts.inc();
            } else {
                debug!("handshake timeout: no byte either way");
                counters.handshake_timeouts.inc();
            }
            Ok(())
        }
    }
}

thread_local! {
    static CHUNK: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; CHUNK_SIZE]);
}

/// The per-thread buffer of small exchanges; a read that fills it means bulk.
const CHUNK_SIZE: usize = 16 * 1024;

async fn copy_half(
    from: &TcpStream,
    to: &TcpStream,
    activity: &Activity,
    descriptors: &Semaphore,
    bytes: &Counter,
) -> std::io::Result<()> {
    use nix::fcntl::{OFlag, SpliceFFlags, splice};
    use std::io::ErrorKind::WouldBlock;
    use tokio::io::Interest;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut pipe = None;
    let mut bulk = false;
    let mut no_pipe = false;
    loop {
        from.readable().await?;
        if !bulk {
            let step = CHUNK.with(|chunk| -> std::io::Result<Option<(usize, Vec<u8>)>> {
                let mut chunk = chunk.borrow_mut();
                let n = match from.try_read(&mut chunk) {
                    Ok(n) => n,
                    Err(e) if e.kind() == WouldBlock => return Ok(None),
                    Err(e) => return Err(e),
                };
                let mut written = 0;
                while written < n {
                    match to.try_write(&chunk[written..n]) {
                        Ok(m) => written += m,
                        Err(e) if e.kind() == WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                // What the peer can't take now is kept (rare: its window is full).
                Ok(Some((n, chunk[written..n].to_vec())))
            })?;
            let Some((n, rest)) = step else { continue };
            if n == 0 {
                return half_close(to);
            }
            let mut sent = 0;
            while sent < rest.len() {
                to.writable().await?;
                match to.try_write(&rest[sent..]) {
                    Ok(m) => sent += m,
                    Err(e) if e.kind() == WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            bulk = n == CHUNK_SIZE && !no_pipe;
            bytes.inc_by(n as u64);
            activity.touch();
            continue;
        }
        let ((pipe_out, pipe_in), _) = match &pipe {
            Some(p) => p,
            None => match descriptors.try_acquire_many(2).ok().and_then(|permit| {
                let fds = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).ok()?;
                Some((fds, permit))
            }) {
                Some(p) => pipe.insert(p),
                // No descriptors to spare: this connection copies through
                // the buffer instead, rather than failing or taking the
                // descriptors a new connection needs.
                None => {
                    bulk = false;
                    no_pipe = true;
                    continue;
                }
            },
        };
        // The pipe is empty here (drained below), so EAGAIN can only mean the
        // socket has nothing, and clearing its readiness is right.
        let n = match from.try_io(Interest::READABLE, || {
            splice(from, None, pipe_in, None, PIPE_CHUNK, flags).map_err(std::io::Error::from)
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return half_close(to);
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe_out, None, to, None, left, flags).map_err(std::io::Error::from)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        bytes.inc_by(n as u64);
        activity.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failed accepts pause 20 ms, then twice as long each time up to a
    /// second, and start over after a success: a listener out of
    /// descriptors (other than through its own connections, which the
    /// node's budget refuses first) neither spins nor stalls for long.
    #[test]
    fn failed_accepts_back_off_doubling_to_a_second_and_start_over() {
        let service = ServiceKey::new("apps", "web");
        let error = std::io::Error::from_raw_os_error(libc::EMFILE);
        let mut backoff = AcceptBackoff::default();
        let pauses: Vec<u128> = (0..8)
            .map(|_| backoff.failed(&service, &error).as_millis())
            .collect();
        assert_eq!(pauses, [20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert!(backoff.recovery_untold);
        backoff.succeeded(&service);
        assert!(!backoff.recovery_untold);
        assert_eq!(backoff.failed(&service, &error).as_millis(), 20);
    }
}
