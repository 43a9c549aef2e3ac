//! BFD (RFC 5880, single hop per RFC 5881): tells a BGP session within a few
//! hundred milliseconds that the path to its router is gone, where BGP's own
//! hold timer takes seconds to minutes.
//!
//! [`packet`] and [`session`] are pure; the sockets are here: one receiving
//! socket per node on UDP 3784 ([`Mux`]), handing packets to the session of
//! their source address, and one sending socket per session, from a port in
//! 49152–65535 with TTL 255 as RFC 5881 asks.

pub mod packet;
pub mod session;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use packet::{Packet, State};
use session::{Output, Session, Settings};

type Sessions = Arc<Mutex<HashMap<IpAddr, mpsc::UnboundedSender<Packet>>>>;

/// The node's BFD receiver: packets to port 3784, by source address.
pub struct Mux {
    sessions: Sessions,
    stop: CancellationToken,
}

impl Mux {
    /// Binds UDP 3784 on every address (IPv4 and IPv6 on one socket).
    pub fn bind() -> std::io::Result<Self> {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        socket.set_only_v6(false)?;
        socket.set_nonblocking(true)?;
        socket.bind(&SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), packet::PORT).into())?;
        let socket = UdpSocket::from_std(socket.into())?;
        let sessions: Sessions = Arc::default();
        let stop = CancellationToken::new();
        let (table, done) = (sessions.clone(), stop.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 128];
            loop {
                let (n, from) = tokio::select! {
                    _ = done.cancelled() => return,
                    r = socket.recv_from(&mut buf) => match r {
                        Ok(r) => r,
                        Err(e) => {
                            warn!(error = %e, "BFD receive failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let source = from.ip().to_canonical();
                match Packet::decode(&buf[..n]) {
                    Ok(p) => {
                        let tx = table.lock().ok().and_then(|t| t.get(&source).cloned());
                        match tx {
                            Some(tx) => {
                                let _ = tx.send(p);
                            }
                            None => debug!(%source, "BFD packet from an address without a session"),
                        }
                    }
                    Err(e) => debug!(%source, error = %e, "BFD packet discarded"),
                }
            }
        });
        Ok(Self { sessions, stop })
    }

    /// Runs a session with `peer`: it calls `down` each time the session goes
    /// from Up to Down, and says its state on the returned channel. It ends
    /// with `stop`.
    pub fn session(
        &self,
        peer: IpAddr,
        settings: Settings,
        down: mpsc::UnboundedSender<()>,
        stop: CancellationToken,
    ) -> watch::Receiver<State> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut t) = self.sessions.lock() {
            t.insert(peer, tx);
        }
        let (state_tx, state) = watch::channel(State::Down);
        let sessions = self.sessions.clone();
        tokio::spawn(async move {
            if let Err(e) = run(peer, settings, rx, down, &state_tx, stop).await {
                warn!(%peer, error = %e, "BFD session failed; BGP runs without it");
            }
            if let Ok(mut t) = sessions.lock() {
                t.remove(&peer);
            }
        });
        state
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A unique, non-zero discriminator for each session of this process.
fn discriminator() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = NEXT.fetch_add(1, Ordering::Relaxed);
    (rand::random::<u32>() & 0xffff_0000) | (base & 0xffff) | 1
}

async fn run(
    peer: IpAddr,
    settings: Settings,
    mut packets: mpsc::UnboundedReceiver<Packet>,
    down: mpsc::UnboundedSender<()>,
    state: &watch::Sender<State>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let socket = sender(peer).await?;
    let to = SocketAddr::new(peer, packet::PORT);
    let mut session = Session::new(settings, discriminator(), Instant::now());
    loop {
        let wait = session
            .deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(std::time::Duration::from_secs(3600));
        let outputs = tokio::select! {
            _ = stop.cancelled() => {
                // AdminDown tells the peer this is no failure (RFC 5880 6.8.16).
                let _ = socket.send_to(&session.farewell().encode(), to).await;
                return Ok(());
            }
            _ = tokio::time::sleep(wait) => session.timer(Instant::now()),
            p = packets.recv() => match p {
                Some(p) => session.receive(&p, Instant::now()),
                None => return Ok(()),
            },
        };
        for o in outputs {
            match o {
                Output::Send(p) => {
                    if let Err(e) = socket.send_to(&p.encode(), to).await {
                        debug!(%peer, error = %e, "BFD send failed");
                    }
                }
                Output::Changed { from, to } => {
                    state.send_replace(to);
                    if to == State::Up {
                        info!(%peer, "BFD session up");
                    } else if from == State::Up {
                        warn!(%peer, state = %to, "BFD session down");
                        let _ = down.send(());
                    }
                }
            }
        }
    }
}

/// A sending socket from a port in 49152–65535 with TTL 255 (RFC 5881 4, 5).
async fn sender(peer: IpAddr) -> std::io::Result<UdpSocket> {
    let unspecified: IpAddr = if peer.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let start = 49152 + (rand::random::<u16>() % 16384);
    let mut last = None;
    for i in 0..64u16 {
        let port = 49152 + (start - 49152 + i * 257) % 16384;
        match UdpSocket::bind(SocketAddr::new(unspecified, port)).await {
            Ok(s) => {
                let s2 = socket2::SockRef::from(&s);
                if peer.is_ipv4() {
                    s2.set_ttl_v4(255)?;
                } else {
                    s2.set_unicast_hops_v6(255)?;
                }
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no source port free")))
}
