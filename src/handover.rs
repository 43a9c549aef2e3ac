//! Seamless upgrades: a new speaker on the same node takes the old one's
//! sockets instead of opening its own, as HAProxy's seamless reload and
//! Envoy's hot restart do.
//!
//! The old speaker listens on a Unix socket (`--handover-socket`). A new one
//! connects there before it opens anything, receives the gossip socket, the
//! metrics listener and every forwarder listener (file descriptors passed with
//! `SCM_RIGHTS`) and the gossip identity, and starts with them: the same
//! listening sockets keep their queues, peers see the same member. The old
//! speaker gossips until the new one is about to (they take turns on one
//! socket: the gap is a round trip on the Unix socket, far below the group's
//! 300 ms suspicion timeout), and forwards until the new one says it is
//! ready; then it stops accepting, lets its connections and UDP flows finish
//! (up to the drain period), and exits without withdrawing anything.
//!
//! `SOCK_SEQPACKET` keeps each message whole with the descriptors it carries;
//! a message holds at most [`FDS_PER_MESSAGE`] of them (the kernel's limit is
//! 253), and a node with more listeners sends several.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::forwarder::plan::Protocol;

/// Descriptors per message.
pub const FDS_PER_MESSAGE: usize = 200;

/// How long a new speaker waits for the old one's sockets.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a passed descriptor is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// The gossip socket (UDP).
    Gossip,
    /// The `/metrics` listener (TCP).
    Metrics,
    /// A forwarder listener.
    Listener {
        /// Its address and port.
        address: SocketAddr,
        /// Its protocol.
        protocol: Protocol,
    },
}

/// One message: the kinds of the descriptors it carries, in order.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    /// The old speaker's gossip generation, for the new one to keep.
    generation: u32,
    sockets: Vec<Kind>,
    /// Whether more messages follow.
    more: bool,
}

/// What a failed hand-over is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The hand-over socket.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The old speaker sent something unreadable.
    #[error("hand-over socket {path}: {why}")]
    Protocol {
        /// The hand-over socket.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(Errno) -> Error {
    let path = path.to_path_buf();
    move |e| Error::Io {
        what,
        path,
        source: e.into(),
    }
}

/// A speaker's part in upgrades: where it offers its sockets to a successor,
/// and what it took from its predecessor.
#[derive(Debug)]
pub struct Handover {
    /// The hand-over socket.
    pub path: PathBuf,
    /// What the predecessor passed, if there was one.
    pub taken: Option<Takeover>,
}

/// The sockets a new speaker took from its predecessor.
#[derive(Debug)]
pub struct Takeover {
    /// The predecessor's gossip generation: the same member to its peers.
    pub generation: u32,
    /// The gossip socket.
    pub gossip: Option<OwnedFd>,
    /// The metrics listener.
    pub metrics: Option<OwnedFd>,
    /// The forwarder's listeners.
    pub listeners: BTreeMap<(SocketAddr, Protocol), OwnedFd>,
    /// The connection to the predecessor, told when this speaker is ready.
    predecessor: OwnedFd,
}

impl Takeover {
    /// Asks the predecessor to stop gossiping, and waits until it has: this
    /// speaker gossips on the socket from now on.
    pub fn gossip_turn(&self) -> std::io::Result<()> {
        rustix::net::send(&self.predecessor, b"gossip", SendFlags::NOSIGNAL)?;
        let mut buf = [0u8; 16];
        let (_, n) = rustix::net::recv(&self.predecessor, &mut buf, RecvFlags::empty())?;
        if &buf[..n] == b"ok" {
            Ok(())
        } else {
            Err(std::io::Error::other(
                "the old speaker did not hand over its gossip",
            ))
        }
    }

    /// Tells the predecessor this speaker serves now: it stops accepting and
    /// drains.
    pub fn ready(self) {
        let _ = rustix::net::send(&self.predecessor, b"ready", SendFlags::NOSIGNAL);
    }
}

/// A successor's word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Said {
    /// It is about to gossip: stop, then [`Successor::gossip_stopped`].
    Gossip,
    /// It serves: stop accepting and drain.
    Ready,
    /// It went away (crashed, or refused the sockets).
    Gone,
}

/// Takes the sockets of the speaker listening at `path`, if one does. No
/// speaker there (no socket file, or nobody listening) is not an error.
pub async fn take_over(path: &Path) -> Result<Option<Takeover>, Error> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || take_over_blocking(&path))
        .await
        .unwrap_or_else(|e| {
            Err(Error::Protocol {
                path: PathBuf::new(),
                why: e.to_string(),
            })
        })
}

/// A message socket (blocking) and the address of `path`.
fn seqpacket(path: &Path) -> Result<(OwnedFd, SocketAddrUnix), Error> {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io("opening a socket for", path))?;
    let addr = SocketAddrUnix::new(path).map_err(io("naming", path))?;
    Ok((fd, addr))
}

fn take_over_blocking(path: &Path) -> Result<Option<Takeover>, Error> {
    let (fd, addr) = seqpacket(path)?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => {}
        Err(Errno::NOENT | Errno::CONNREFUSED) => return Ok(None),
        Err(e) => return Err(io("connecting to", path)(e)),
    }
    rustix::net::sockopt::set_socket_timeout(
        &fd,
        rustix::net::sockopt::Timeout::Recv,
        Some(RECEIVE_TIMEOUT),
    )
    .map_err(io("setting a timeout on", path))?;
    let mut takeover = Takeover {
        generation: 0,
        gossip: None,
        metrics: None,
        listeners: BTreeMap::new(),
        predecessor: fd,
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (message, fds) = receive(&takeover.predecessor, &mut buf, path)?;
        if message.sockets.len() != fds.len() {
            return Err(Error::Protocol {
                path: path.to_path_buf(),
                why: format!(
                    "{} sockets named but {} passed",
                    message.sockets.len(),
                    fds.len()
                ),
            });
        }
        takeover.generation = message.generation;
        for (kind, fd) in message.sockets.into_iter().zip(fds) {
            match kind {
                Kind::Gossip => takeover.gossip = Some(fd),
                Kind::Metrics => takeover.metrics = Some(fd),
                Kind::Listener { address, protocol } => {
                    takeover.listeners.insert((address, protocol), fd);
                }
            }
        }
        if !message.more {
            return Ok(Some(takeover));
        }
    }
}

fn receive(fd: &OwnedFd, buf: &mut [u8], path: &Path) -> Result<(Message, Vec<OwnedFd>), Error> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let len = rustix::net::recvmsg(
        fd,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(io("receiving sockets from", path))?
    .bytes;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(passed) = message {
            fds.extend(passed);
        }
    }
    if len == 0 {
        return Err(Error::Protocol {
            path: path.to_path_buf(),
            why: "the old speaker closed the connection before sending its sockets".into(),
        });
    }
    let message: Message = serde_json::from_slice(&buf[..len]).map_err(|e| Error::Protocol {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    Ok((message, fds))
}

/// The socket a speaker offers its sockets on, to a successor: a thread
/// accepts (blocking) and hands each successor over.
pub struct Offer {
    successors: mpsc::Receiver<Successor>,
}

impl Offer {
    /// Listens at `path`, replacing what is there: a predecessor's socket
    /// (already taken over, or dead). The file is left behind on exit: a
    /// successor may have replaced it, and a stale one is refused at connect,
    /// which a new speaker takes for "no predecessor".
    pub fn listen(path: &Path) -> Result<Self, Error> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::remove_file(path);
        let (fd, addr) = seqpacket(path)?;
        rustix::net::bind(&fd, &addr).map_err(io("binding", path))?;
        rustix::net::listen(&fd, 4).map_err(io("listening on", path))?;
        let (tx, successors) = mpsc::channel(1);
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("handover".into())
            .spawn(move || {
                while let Ok(conn) = rustix::net::accept_with(&fd, SocketFlags::CLOEXEC) {
                    let successor = Successor {
                        conn: std::sync::Arc::new(conn),
                        path: path.clone(),
                        said: None,
                    };
                    if tx.blocking_send(successor).is_err() {
                        return;
                    }
                }
            })
            .map_err(|source| Error::Io {
                what: "starting the hand-over thread for",
                path: PathBuf::new(),
                source,
            })?;
        Ok(Self { successors })
    }

    /// Waits for a successor to connect.
    pub async fn successor(&mut self) -> Option<Successor> {
        self.successors.recv().await
    }
}

/// A new speaker on this node, asking for this one's sockets.
pub struct Successor {
    conn: std::sync::Arc<OwnedFd>,
    path: PathBuf,
    said: Option<mpsc::Receiver<Said>>,
}

impl Successor {
    /// Sends `sockets` (each with what it is) and the gossip `generation`,
    /// then listens for what the successor says.
    pub fn give(
        &mut self,
        generation: u32,
        sockets: &[(Kind, BorrowedFd<'_>)],
    ) -> Result<(), Error> {
        let chunks: Vec<&[(Kind, BorrowedFd<'_>)]> = if sockets.is_empty() {
            vec![&[]]
        } else {
            sockets.chunks(FDS_PER_MESSAGE).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let message = Message {
                generation,
                sockets: chunk.iter().map(|(k, _)| k.clone()).collect(),
                more: i < last,
            };
            let body = serde_json::to_vec(&message).expect("a message serializes");
            let fds: Vec<BorrowedFd<'_>> = chunk.iter().map(|(_, fd)| *fd).collect();
            let mut space =
                [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() {
                control.push(SendAncillaryMessage::ScmRights(&fds));
            }
            rustix::net::sendmsg(
                &*self.conn,
                &[IoSlice::new(&body)],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .map_err(io("sending sockets on", &self.path))?;
        }
        let (tx, said) = mpsc::channel(2);
        let conn = self.conn.clone();
        std::thread::Builder::new()
            .name("handover-successor".into())
            .spawn(move || {
                let mut buf = [0u8; 16];
                loop {
                    let word = match rustix::net::recv(&*conn, &mut buf, RecvFlags::empty()) {
                        Ok((_, n)) if &buf[..n] == b"gossip" => Said::Gossip,
                        Ok((_, n)) if &buf[..n] == b"ready" => Said::Ready,
                        Err(Errno::INTR) => continue,
                        _ => Said::Gone,
                    };
                    if tx.blocking_send(word).is_err() || word == Said::Gone {
                        return;
                    }
                }
            })
            .map_err(|source| Error::Io {
                what: "starting a thread for",
                path: self.path.clone(),
                source,
            })?;
        self.said = Some(said);
        Ok(())
    }

    /// What the successor says next (after [`Successor::give`]).
    pub async fn said(&mut self) -> Said {
        match &mut self.said {
            Some(said) => said.recv().await.unwrap_or(Said::Gone),
            None => Said::Gone,
        }
    }

    /// Tells the successor this speaker no longer gossips.
    pub fn gossip_stopped(&self) {
        let _ = rustix::net::send(&*self.conn, b"ok", SendFlags::NOSIGNAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// Sockets passed over a real Unix socket arrive as the same sockets
    /// (same local address), with what each is, across several messages.
    #[tokio::test]
    async fn sockets_pass_to_a_successor_and_it_says_ready() {
        let dir = std::env::temp_dir().join(format!("ironlb-handover-{}", std::process::id()));
        let path = dir.join("handover.sock");
        let mut offer = Offer::listen(&path).expect("listen");
        assert!(take_over(&dir.join("nobody.sock")).await.unwrap().is_none());
        let udp: Vec<std::net::UdpSocket> = (0..FDS_PER_MESSAGE + 3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let gossip = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let new = tokio::spawn({
            let path = path.clone();
            async move { take_over(&path).await }
        });
        let mut successor = offer.successor().await.expect("a successor");
        let mut sockets: Vec<(Kind, BorrowedFd<'_>)> = udp
            .iter()
            .map(|s| {
                (
                    Kind::Listener {
                        address: s.local_addr().unwrap(),
                        protocol: Protocol::Udp,
                    },
                    s.as_fd(),
                )
            })
            .collect();
        sockets.push((Kind::Gossip, gossip.as_fd()));
        successor.give(1234, &sockets).expect("give");
        let taken = new.await.unwrap().expect("taken").expect("a predecessor");
        assert_eq!(taken.generation, 1234);
        assert_eq!(taken.listeners.len(), udp.len());
        for s in &udp {
            let key = (s.local_addr().unwrap(), Protocol::Udp);
            let fd = taken.listeners[&key].try_clone().unwrap();
            let same = std::net::UdpSocket::from(fd);
            assert_eq!(same.local_addr().unwrap(), key.0);
        }
        let g = std::net::UdpSocket::from(taken.gossip.as_ref().unwrap().try_clone().unwrap());
        assert_eq!(g.local_addr().unwrap(), gossip.local_addr().unwrap());
        let turn = std::thread::spawn(move || {
            taken
                .gossip_turn()
                .expect("the old speaker stops gossiping");
            taken
        });
        assert_eq!(successor.said().await, Said::Gossip);
        successor.gossip_stopped();
        let taken = turn.join().unwrap();
        taken.ready();
        assert_eq!(successor.said().await, Said::Ready);
        assert_eq!(successor.said().await, Said::Gone);
        let _ = std::fs::remove_dir_all(dir);
    }
}
