//! BFD (RFC 5880, single hop per RFC 5881): tells a BGP session within a few
//! hundred milliseconds that the path to its router is gone, where BGP's own
//! hold timer takes seconds to minutes.
//!
//! [`packet`] and [`session`] are pure; the sockets are here: one receiving
//! socket per node on UDP 3784 ([`Mux`]), handing packets to the session of
//! their source address, and one sending socket per session, from a port in
//! 49152–65535 with TTL 255 as RFC 5881 asks. The receiver reads each
//! packet's TTL (hop limit) and drops those below the session's
//! `minimumTtl`, so a host further away than the router cannot speak for it.

pub mod packet;
pub mod session;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use packet::{Packet, State};
use session::{Output, Session, Settings};

/// Where the receiver hands a source's packets, and the lowest TTL it takes.
struct Route {
    packets: mpsc::UnboundedSender<Packet>,
    minimum_ttl: u8,
}

type Sessions = Arc<Mutex<HashMap<IpAddr, Route>>>;

/// The node's BFD receiver: packets to port 3784, by source address.
pub struct Mux {
    sessions: Sessions,
    stop: CancellationToken,
    #[cfg(test)]
    port: u16,
}

impl Mux {
    /// Binds UDP 3784 on every address (IPv4 and IPv6 on one socket).
    pub fn bind() -> std::io::Result<Self> {
        Self::bind_port(packet::PORT)
    }

    fn bind_port(port: u16) -> std::io::Result<Self> {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        socket.set_only_v6(false)?;
        socket.set_nonblocking(true)?;
        socket.bind(&SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port).into())?;
        // IPv4 options apply to the IPv4 packets a dual-stack socket receives.
        setsockopt(&socket, sockopt::Ipv4RecvTtl, &true)?;
        setsockopt(&socket, sockopt::Ipv6RecvHopLimit, &true)?;
        #[cfg(test)]
        let port = socket.local_addr()?.as_socket().map_or(port, |a| a.port());
        let socket = UdpSocket::from_std(socket.into())?;
        let sessions: Sessions = Arc::default();
        let stop = CancellationToken::new();
        let (table, done) = (sessions.clone(), stop.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 128];
            let mut control = nix::cmsg_space!(libc::c_int);
            loop {
                let (n, source, ttl) = tokio::select! {
                    _ = done.cancelled() => return,
                    r = socket.async_io(Interest::READABLE, || receive(&socket, &mut buf, &mut control)) => match r {
                        Ok(r) => r,
                        Err(e) => {
                            warn!(error = %e, "BFD receive failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let Some(source) = source else { continue };
                let packet = match Packet::decode(&buf[..n]) {
                    Ok(p) => p,
                    Err(e) => {
                        debug!(%source, error = %e, "BFD packet discarded");
                        continue;
                    }
                };
                let Ok(table) = table.lock() else { return };
                match table.get(&source) {
                    // A packet without a TTL reading is refused too: the
                    // check must not be skipped silently.
                    Some(route) if ttl.is_none_or(|t| t < route.minimum_ttl) => {
                        debug!(%source, ?ttl, minimum = route.minimum_ttl, "BFD packet below the minimum TTL discarded");
                    }
                    Some(route) => {
                        let _ = route.packets.send(packet);
                    }
                    None => debug!(%source, "BFD packet from an address without a session"),
                }
            }
        });
        Ok(Self {
            sessions,
            stop,
            #[cfg(test)]
            port,
        })
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
            let minimum_ttl = settings.minimum_ttl;
            t.insert(
                peer,
                Route {
                    packets: tx,
                    minimum_ttl,
                },
            );
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

/// Reads one datagram: its length, its source and the TTL (hop limit) it
/// arrived with.
fn receive(
    socket: &UdpSocket,
    buf: &mut [u8],
    control: &mut [u8],
) -> std::io::Result<(usize, Option<IpAddr>, Option<u8>)> {
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(control),
        MsgFlags::empty(),
    )?;
    let source = msg.address.as_ref().and_then(|a| {
        a.as_sockaddr_in6()
            .map(|a| IpAddr::V6(a.ip()).to_canonical())
            .or_else(|| a.as_sockaddr_in().map(|a| IpAddr::V4(a.ip())))
    });
    let ttl = msg.cmsgs().ok().and_then(|mut c| {
        c.find_map(|m| match m {
            ControlMessageOwned::Ipv4Ttl(t) | ControlMessageOwned::Ipv6HopLimit(t) => {
                u8::try_from(t).ok()
            }
            _ => None,
        })
    });
    Ok((msg.bytes, source, ttl))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A peer's packet sent with `ttl` to the receiver: does the session see
    /// it (Down → Init)?
    async fn heard_with_ttl(peer: IpAddr, ttl: u32) -> bool {
        let mux = Mux::bind_port(0).expect("bind the receiver");
        let settings = Settings {
            passive: true,
            ..Settings::default()
        };
        let (down, _) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let mut state = mux.session(peer, settings, down, stop.clone());
        let socket = std::net::UdpSocket::bind(SocketAddr::new(peer, 0)).expect("bind the peer");
        if peer.is_ipv4() {
            socket.set_ttl(ttl).expect("set the TTL");
        } else {
            socket2::SockRef::from(&socket)
                .set_unicast_hops_v6(ttl)
                .expect("set the hop limit");
        }
        let hello = Packet::first_hello(7);
        let heard = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                socket
                    .send_to(&hello.encode(), SocketAddr::new(peer, mux.port))
                    .expect("send");
                tokio::time::sleep(Duration::from_millis(20)).await;
                if *state.borrow_and_update() != State::Down {
                    return;
                }
            }
        })
        .await
        .is_ok();
        stop.cancel();
        heard
    }

    #[tokio::test]
    async fn packets_below_the_minimum_ttl_are_dropped_on_both_families() {
        for peer in [
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(Ipv6Addr::LOCALHOST),
        ] {
            assert!(
                heard_with_ttl(peer, 255).await,
                "{peer}: TTL 255 is a neighbour"
            );
            assert!(
                heard_with_ttl(peer, 254).await,
                "{peer}: TTL 254 is the minimum"
            );
            assert!(
                !heard_with_ttl(peer, 64).await,
                "{peer}: TTL 64 is not a neighbour"
            );
        }
    }
}
