//! One BGP session on a real socket: the thin adapter around
//! [`super::session::Session`]. It connects, reads and writes, sleeps until
//! the session's next deadline, and publishes what the session says.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ipnetwork::IpNetwork;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::session::{Action, Attributes, Config, Input, Session, State};
use super::wire::{Received, Wire};

/// Everything one session needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    /// The `BGPPeer`'s name.
    pub name: String,
    /// The router, address and port.
    pub address: SocketAddr,
    /// The local address to connect from.
    pub source: Option<IpAddr>,
    /// The session's settings.
    pub session: Config,
    /// The TTL of the session's packets: 1 for a directly connected eBGP
    /// router, 255 with `ebgpMultiHop`; `None`: the system's.
    pub ttl: Option<u32>,
    /// The TCP MD5 password.
    pub password: Option<String>,
    /// BFD with the router, and how fast.
    pub bfd: Option<crate::bfd::session::Settings>,
}

/// What a session last said, for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The state.
    pub state: State,
    /// Since when.
    pub since: Instant,
    /// Why it last failed.
    pub last_error: Option<String>,
    /// Prefixes the router has from it.
    pub prefixes_sent: usize,
}

/// A session's BFD state, when it runs BFD.
pub type BfdState = Option<watch::Receiver<crate::bfd::packet::State>>;

/// How a session ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Cease: the router withdraws this node's routes at once.
    Withdraw,
    /// Close without a word: a router that agreed to graceful restart keeps
    /// the routes until this node's next speaker sends them again.
    Graceful,
}

/// A running session.
pub struct Peer {
    /// What it is.
    pub spec: PeerSpec,
    routes: watch::Sender<BTreeMap<IpNetwork, Attributes>>,
    bfd: BfdState,
    bfd_stop: CancellationToken,
    status: watch::Receiver<Status>,
    stop: watch::Sender<Option<Ending>>,
    done: tokio::task::JoinHandle<()>,
}

impl Peer {
    /// Starts a session with `spec`, advertising `routes` once established;
    /// with BFD in `spec`, its BFD session runs on `mux`.
    /// `identifier` is the node's BGP identifier for sessions from an IPv6
    /// address ([`crate::bgp::identity::node_identifier`]).
    pub fn start(
        spec: PeerSpec,
        routes: BTreeMap<IpNetwork, Attributes>,
        mux: Option<&crate::bfd::Mux>,
        identifier: std::net::Ipv4Addr,
    ) -> Self {
        let now = Instant::now();
        let session = Session::new(spec.session.clone(), now).identified_as(identifier);
        let (routes_tx, routes_rx) = watch::channel(routes);
        let (bfd_tx, bfd_rx) = mpsc::unbounded_channel();
        let bfd_stop = CancellationToken::new();
        let bfd = match (spec.bfd, mux) {
            (Some(settings), Some(mux)) => {
                Some(mux.session(spec.address.ip(), settings, bfd_tx, bfd_stop.clone()))
            }
            _ => None,
        };
        let (status_tx, status) = watch::channel(Status {
            state: State::Idle,
            since: now,
            last_error: None,
            prefixes_sent: 0,
        });
        let (stop, stop_rx) = watch::channel(None);
        let done = tokio::spawn(run(
            spec.clone(),
            session,
            routes_rx,
            bfd_rx,
            status_tx,
            stop_rx,
        ));
        Self {
            spec,
            routes: routes_tx,
            bfd,
            bfd_stop,
            status,
            stop,
            done,
        }
    }

    /// Advertises exactly `routes` from now on.
    pub fn advertise(&self, routes: BTreeMap<IpNetwork, Attributes>) {
        self.routes.send_if_modified(|r| {
            let changed = *r != routes;
            *r = routes;
            changed
        });
    }

    /// The BFD session's state, when there is one.
    pub fn bfd_state(&self) -> BfdState {
        self.bfd.clone()
    }

    /// What the session last said.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Ends the session and waits until its last words are sent.
    pub async fn stop(self, ending: Ending) {
        self.bfd_stop.cancel();
        let _ = self.stop.send(Some(ending));
        let _ = self.done.await;
    }
}

/// A session's loop: the only place its socket is touched.
async fn run(
    spec: PeerSpec,
    mut session: Session,
    mut routes: watch::Receiver<BTreeMap<IpNetwork, Attributes>>,
    mut bfd: mpsc::UnboundedReceiver<()>,
    status: watch::Sender<Status>,
    mut stop: watch::Receiver<Option<Ending>>,
) {
    let mut stream: Option<TcpStream> = None;
    let mut wire = Wire::new();
    let mut connecting: Option<Connecting> = None;
    let mut buf = vec![0u8; 65536];
    let first = routes.borrow_and_update().clone();
    let mut pending = session.input(Input::Routes(first), Instant::now());
    let peer = &spec.name;
    loop {
        // Run what the session asked for.
        pending = perform(
            std::mem::take(&mut pending),
            &spec,
            &mut session,
            &mut stream,
            &mut wire,
            &mut connecting,
        )
        .await;
        if !pending.is_empty() {
            continue;
        }
        let now = Instant::now();
        publish(&status, &session, &spec);
        if stop.borrow().is_some() && session.state() == State::Idle && stream.is_none() {
            return;
        }
        let sleep = session
            .deadline()
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {
                pending = session.input(Input::Timer, Instant::now());
            }
            done = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                let input = match done {
                    Ok(Ok(s)) => match s.local_addr() {
                        Ok(local) => {
                            stream = Some(s);
                            Input::Connected { local: local.ip() }
                        }
                        Err(e) => Input::ConnectFailed(e.to_string()),
                    },
                    Ok(Err(e)) => Input::ConnectFailed(e),
                    Err(e) => Input::ConnectFailed(e.to_string()),
                };
                pending = session.input(input, Instant::now());
            }
            read = async { stream.as_mut().expect("guarded").read(&mut buf).await }, if stream.is_some() => {
                let now = Instant::now();
                match read {
                    Ok(0) => {
                        stream = None;
                        pending = session.input(Input::Closed("the router closed the connection".into()), now);
                    }
                    Err(e) => {
                        stream = None;
                        pending = session.input(Input::Closed(format!("read: {e}")), now);
                    }
                    Ok(n) => {
                        wire.feed(&buf[..n]);
                        pending = received(&mut wire, &mut session, peer, now);
                    }
                }
            }
            changed = routes.changed() => {
                if changed.is_ok() {
                    let r = routes.borrow_and_update().clone();
                    pending = session.input(Input::Routes(r), Instant::now());
                }
            }
            Some(()) = bfd.recv() => {
                pending = session.input(Input::BfdDown, Instant::now());
            }
            changed = stop.changed() => {
                let ending = if changed.is_ok() { *stop.borrow() } else { Some(Ending::Withdraw) };
                if let Some(ending) = ending {
                    pending = session.input(
                        Input::Stop { graceful: ending == Ending::Graceful },
                        Instant::now(),
                    );
                    if pending.is_empty() {
                        return;
                    }
                }
            }
        }
    }
}

/// A connection being opened.
type Connecting = tokio::task::JoinHandle<Result<TcpStream, String>>;

/// Runs the session's actions on the socket; returns what the session says
/// to a write that failed.
async fn perform(
    actions: Vec<Action>,
    spec: &PeerSpec,
    session: &mut Session,
    stream: &mut Option<TcpStream>,
    wire: &mut Wire,
    connecting: &mut Option<Connecting>,
) -> Vec<Action> {
    let mut pending = Vec::new();
    for action in actions {
        match action {
            Action::Connect => {
                *wire = Wire::new();
                let spec = spec.clone();
                *connecting = Some(tokio::spawn(async move { connect(&spec).await }));
            }
            Action::Send(message) => {
                let Some(s) = stream.as_mut() else { continue };
                let mut out = BytesMut::new();
                if let Err(e) = wire.encode(message, &mut out) {
                    warn!(peer = %spec.name, error = %e, "not sent");
                    continue;
                }
                if let Err(e) = s.write_all(&out).await {
                    *stream = None;
                    pending.extend(
                        session.input(Input::Closed(format!("write: {e}")), Instant::now()),
                    );
                }
            }
            Action::Close => {
                if let Some(mut s) = stream.take() {
                    let _ = s.shutdown().await;
                }
                if let Some(c) = connecting.take() {
                    c.abort();
                }
            }
        }
    }
    pending
}

/// Tells the session's watchers what it last said, logging a change of
/// state once.
fn publish(status: &watch::Sender<Status>, session: &Session, spec: &PeerSpec) {
    let peer = &spec.name;
    let said = Status {
        state: session.state(),
        since: session.since(),
        last_error: session.last_error().map(str::to_string),
        prefixes_sent: session.prefixes_sent(),
    };
    status.send_if_modified(|s| {
        if *s == said {
            return false;
        }
        match (&said.last_error, said.state) {
            (_, State::Established) if s.state != State::Established => {
                info!(%peer, router = %spec.address, "BGP session established")
            }
            (Some(e), State::Active) if s.state == State::Established => {
                warn!(%peer, router = %spec.address, error = %e, "BGP session down")
            }
            // A new reason it cannot come up; the same one again (every
            // retry) is not repeated.
            (Some(e), State::Active) if s.last_error.as_ref() != Some(e) => {
                warn!(%peer, router = %spec.address, error = %e, "BGP session not established; retrying")
            }
            _ => {}
        }
        *s = said;
        true
    });
}

/// Hands the session every whole message `wire` holds; a malformed one ends
/// the reading (the session decides what it costs).
fn received(wire: &mut Wire, session: &mut Session, peer: &str, now: Instant) -> Vec<Action> {
    let mut pending = Vec::new();
    loop {
        match wire.next_message() {
            Ok(Some(Received::Message(m))) => pending.extend(session.input(Input::Message(m), now)),
            Ok(Some(Received::Discarded(why))) => {
                warn!(%peer, %why, "BGP message discarded; the session stays up");
                pending.extend(session.input(Input::Discarded(why), now));
            }
            Ok(None) => return pending,
            Err(bad) => {
                warn!(%peer, error = %bad.why, "malformed BGP message");
                pending.extend(session.input(
                    Input::Malformed(bad.why, bad.notification.map(Box::new)),
                    now,
                ));
                return pending;
            }
        }
    }
}

/// Opens the TCP connection as the peer's settings say.
async fn connect(spec: &PeerSpec) -> Result<TcpStream, String> {
    let socket = if spec.address.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    if let Some(password) = &spec.password {
        super::md5::set(&socket, spec.address, password)?;
    }
    if let Some(source) = spec.source {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("cannot bind {source}: {e}"))?;
    }
    let stream = tokio::time::timeout(spec.session.connect_time, socket.connect(spec.address))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if let Some(ttl) = spec.ttl {
        // The SYN left with the system's TTL; a directly connected router
        // accepts it, and from here on the session keeps to one hop.
        stream.set_ttl(ttl).map_err(|e| e.to_string())?;
    }
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(stream)
}
