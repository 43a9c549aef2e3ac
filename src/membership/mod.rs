//! Who is alive: SWIM gossip among speakers over UDP, authenticated with a
//! shared secret.
//!
//! Liveness comes from the speakers themselves, not from the Node object, whose
//! Ready condition lags by tens of seconds: a speaker that stops answering
//! probes is suspected within a probe period or two and declared down a few
//! hundred milliseconds later, so its addresses move in well under a second. A
//! speaker that stops cleanly leaves the group at once.
//!
//! The protocol is `foca`'s (SWIM with suspicion and infection-style
//! dissemination). `foca` does no I/O of its own, which suits the thin-shell
//! habit here: this module only carries its datagrams and timers. `chitchat`
//! (the other candidate) is a state-replication gossip with phi-accrual
//! detection, built around its own transport and pulling in a C zstd build; we
//! need membership only, and tight control of timings.
//!
//! Every datagram carries a header — the sender's incarnation (random per
//! start), its clock and a sequence number — and a truncated HMAC-SHA256 of
//! header and payload under the shared secret. A datagram that is too large is
//! dropped before any hashing; one without the right tag, or a replay (a
//! sequence number of that incarnation already seen, or sent longer ago than
//! [`REPLAY_WINDOW`]), is dropped and counted before `foca` sees it, so a
//! captured "leave" cannot evict a member and a departed member's datagrams
//! cannot bring it back. Several keys may be configured for rotation: the
//! first signs, any opens.
//!
//! Beside liveness, each speaker spreads the addresses it cannot serve now
//! (its announcing interface is down, a listener failed): a versioned
//! [`Health`] record per node, carried as a `foca` custom broadcast, so every
//! speaker leaves those addresses to nodes that can ([`crate::election`]).
//!
//! One file per job: [`config`] (identity, settings, keys), [`seal`]
//! (datagrams and replays), [`health`] (the records), [`gossip`] (the task).

use prometheus_client::metrics::counter::Counter;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use foca::{
    AccumulatingRuntime, BroadcastHandler, Config as FocaConfig, Foca, Identity, Invalidates,
    PeriodicParams, PostcardCodec, Timer,
};
use hmac::{Hmac, KeyInit, Mac};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use crate::election::Unservable;

mod config;
mod gossip;
mod health;
mod seal;

pub use config::*;
use gossip::run;
use health::HealthHandler;
pub use health::*;
use seal::now_ms;
pub use seal::*;

/// Counters of the group's traffic, for metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams dropped for a missing or wrong tag, or too large to check.
    pub bad_tag: Counter,
    /// Authentic datagrams dropped as replays (repeated or stale).
    pub replayed: Counter,
    /// Datagrams `foca` refused.
    pub rejected: Counter,
    /// Membership changes seen.
    pub changes: Counter,
}

/// A running member of the group.
pub struct Membership {
    members: watch::Receiver<BTreeSet<String>>,
    health: watch::Receiver<HealthMap>,
    unservable: watch::Sender<BTreeSet<IpAddr>>,
    join: mpsc::UnboundedSender<SocketAddr>,
    counters: Arc<Counters>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    local: SocketAddr,
    generation: u32,
}

impl Membership {
    /// Joins the group from `socket`, announcing to the seeds. Refuses a secret
    /// shorter than [`MIN_SECRET_LEN`] bytes: anyone who guesses it can join
    /// the group and take addresses.
    pub fn start(socket: UdpSocket, config: Config) -> std::io::Result<Self> {
        check_keys(&config.keys)?;
        let local = socket.local_addr()?;
        let (tx, members) = watch::channel(BTreeSet::from([config.node.clone()]));
        let (health_tx, health) = watch::channel(HealthMap::new());
        let (unservable, own) = watch::channel(BTreeSet::new());
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let (join, joins) = mpsc::unbounded_channel();
        // A fresh identity per start: the generation is the start time, so it
        // also wins over any earlier incarnation at this address.
        let generation = config
            .generation
            .unwrap_or_else(|| u32::try_from(now_ms() / 1000).unwrap_or(u32::MAX));
        let me = Peer {
            node: config.node.clone(),
            addr: local,
            generation,
        };
        let task = tokio::spawn(run(
            socket,
            config,
            me,
            Channels {
                members: tx,
                health: health_tx,
                own,
                joins,
            },
            counters.clone(),
            stop.clone(),
        ));
        Ok(Self {
            members,
            health,
            unservable,
            join,
            counters,
            stop,
            task,
            local,
            generation,
        })
    }

    /// This member's identity generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The nodes alive now (this one included); changes as the group does.
    pub fn members(&self) -> watch::Receiver<BTreeSet<String>> {
        self.members.clone()
    }

    /// What the other speakers cannot serve, by node; changes as they say so.
    pub fn health(&self) -> watch::Receiver<HealthMap> {
        self.health.clone()
    }

    /// Tells the group which addresses this speaker cannot serve now.
    pub fn set_unservable(&self, addresses: BTreeSet<IpAddr>) {
        self.unservable.send_if_modified(|current| {
            let changed = *current != addresses;
            if changed {
                *current = addresses;
            }
            changed
        });
    }

    /// Announces this member to another speaker at `addr`, learnt after the
    /// start (seeds discovered from the Node objects).
    pub fn join(&self, addr: SocketAddr) {
        let _ = self.join.send(addr);
    }

    /// The traffic counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Where this member listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Leaves the group, telling the others so they need not detect it, and
    /// stops.
    pub async fn leave(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Stops without a word, as a crash would: the others must detect it.
    pub fn abort(self) {
        self.task.abort();
    }
}

/// The membership task's ends of its channels.
struct Channels {
    members: watch::Sender<BTreeSet<String>>,
    health: watch::Sender<HealthMap>,
    own: watch::Receiver<BTreeSet<IpAddr>>,
    joins: mpsc::UnboundedReceiver<SocketAddr>,
}

/// How often a speaker that knows no live peer announces itself to its seeds.
pub const REJOIN_PERIOD: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listen_address_takes_a_bare_ipv6_pod_ip_and_a_port() {
        let v6: std::net::IpAddr = "fd00::5".parse().unwrap();
        assert_eq!(
            listen_address(None, Some(v6), DEFAULT_PORT),
            Ok("[fd00::5]:7947".parse().unwrap())
        );
        assert_eq!(
            listen_address(None, Some("10.0.0.5".parse().unwrap()), 7000),
            Ok("10.0.0.5:7000".parse().unwrap())
        );
        let explicit: SocketAddr = "[fd00::9]:7946".parse().unwrap();
        assert_eq!(listen_address(Some(explicit), Some(v6), 1), Ok(explicit));
        let missing = listen_address(None, None, DEFAULT_PORT).unwrap_err();
        assert!(missing.contains("--gossip-address"), "{missing}");
    }

    const H: Header = Header {
        incarnation: 7,
        sent_ms: 1_000_000,
        seq: 1,
    };

    #[test]
    fn a_sealed_datagram_opens_only_with_one_of_its_keys() {
        let key = b"s3cret".to_vec();
        let keys = std::slice::from_ref(&key);
        let sealed = seal(&key, H, b"hello");
        assert_eq!(sealed.len(), TAG_LEN + HEADER_LEN + 5);
        assert_eq!(open(keys, &sealed), Some((H, &b"hello"[..])));
        // Rotation: any configured key opens.
        assert_eq!(
            open(&[b"new".to_vec(), key.clone()], &sealed),
            Some((H, &b"hello"[..]))
        );
        assert_eq!(open(&[b"other".to_vec()], &sealed), None);
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(open(keys, &tampered), None);
        // The header is signed too: a replay cannot be made to look new.
        let mut renumbered = sealed.clone();
        renumbered[TAG_LEN + HEADER_LEN - 1] ^= 1;
        assert_eq!(open(keys, &renumbered), None);
        assert_eq!(open(keys, &sealed[..TAG_LEN + HEADER_LEN - 1]), None);
        let huge = seal(&key, H, &vec![0u8; MAX_DATAGRAM]);
        assert_eq!(open(keys, &huge), None, "too large to check");
    }

    #[test]
    fn a_secret_file_holds_one_key_per_line() {
        assert_eq!(
            keys_from(b"new-key\n  old-key \n\n"),
            [b"new-key".to_vec(), b"old-key".to_vec()]
        );
        assert_eq!(keys_from(b"only\n"), [b"only".to_vec()]);
        assert!(keys_from(b"\n \n").is_empty());
    }

    #[test]
    fn the_guard_admits_each_datagram_once_and_nothing_stale() {
        let mut g = ReplayGuard::default();
        let at = |seq| Header { seq, ..H };
        let now = H.sent_ms;
        assert_eq!(g.admit(at(5), now), Ok(()));
        assert_eq!(g.admit(at(5), now), Err(Replay::Repeated));
        assert_eq!(g.admit(at(3), now), Ok(()), "reordered, not seen");
        assert_eq!(g.admit(at(3), now), Err(Replay::Repeated));
        assert_eq!(g.admit(at(200), now), Ok(()));
        assert_eq!(
            g.admit(at(6), now),
            Err(Replay::Repeated),
            "too far behind to tell"
        );
        let window = REPLAY_WINDOW.as_millis() as u64;
        let late = Header { seq: 201, ..H };
        assert_eq!(g.admit(late, now + window + 1), Err(Replay::Stale));
        let other = Header {
            incarnation: 8,
            ..H
        };
        assert_eq!(
            g.admit(other, now),
            Ok(()),
            "another incarnation counts apart"
        );
    }
}
