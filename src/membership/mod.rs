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
//! Every datagram carries a truncated HMAC-SHA256 of its payload under the
//! shared secret; a datagram without the right tag is dropped and counted
//! before `foca` sees it.

use prometheus_client::metrics::counter::Counter;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use foca::{
    AccumulatingRuntime, Config as FocaConfig, Foca, Identity, PeriodicParams, PostcardCodec, Timer,
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

/// Bytes of HMAC-SHA256 kept in each datagram: 128 bits.
pub const TAG_LEN: usize = 16;

/// A speaker in the group: its node and where it listens. The generation
/// changes when a speaker that was wrongly declared down rejoins.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Peer {
    /// The node's name.
    pub node: String,
    /// Its gossip address.
    pub addr: SocketAddr,
    /// Bumped on each rejoin.
    pub generation: u32,
}

impl Identity for Peer {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Peer {
            generation: self.generation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// How a speaker joins the group.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's name.
    pub node: String,
    /// The shared secret; speakers with different secrets never see each other.
    pub secret: Vec<u8>,
    /// Addresses of other speakers to announce to at start and periodically
    /// (to heal partitions).
    pub seeds: Vec<SocketAddr>,
    /// How often each speaker probes one other.
    pub probe_period: Duration,
    /// How long a probe waits for its answer before asking others to probe
    /// indirectly.
    pub probe_rtt: Duration,
    /// How long a suspected speaker has to refute before it is declared down.
    pub suspect_to_down_after: Duration,
}

impl Config {
    /// Timings for a LAN: a dead speaker is down in about half a second, and
    /// indirect probes plus suspicion ride out a few percent of packet loss.
    pub fn lan(
        node: impl Into<String>,
        secret: impl Into<Vec<u8>>,
        seeds: Vec<SocketAddr>,
    ) -> Self {
        Self {
            node: node.into(),
            secret: secret.into(),
            seeds,
            probe_period: Duration::from_millis(100),
            probe_rtt: Duration::from_millis(40),
            suspect_to_down_after: Duration::from_millis(300),
        }
    }

    fn foca(&self) -> FocaConfig {
        let mut c = FocaConfig::new_lan(std::num::NonZeroU32::new(16).expect("non-zero"));
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt;
        c.suspect_to_down_after = self.suspect_to_down_after;
        c.num_indirect_probes = NonZeroUsize::new(3).expect("non-zero");
        c.max_transmissions = NonZeroU8::new(10).expect("non-zero");
        c.remove_down_after = Some(Duration::from_secs(30));
        c.notify_down_members = true;
        c.periodic_announce = Some(PeriodicParams {
            frequency: Duration::from_secs(2),
            num_members: NonZeroUsize::new(1).expect("non-zero"),
        });
        // A speaker cut off by a link failure declares the others down and they
        // it; without talking to down members now and then, the two sides would
        // never learn that the link is back.
        c.periodic_announce_to_down_members = Some(PeriodicParams {
            frequency: Duration::from_millis(500),
            num_members: NonZeroUsize::new(3).expect("non-zero"),
        });
        c.periodic_gossip = Some(PeriodicParams {
            frequency: self.probe_period,
            num_members: NonZeroUsize::new(3).expect("non-zero"),
        });
        c
    }
}

/// Signs `payload` for the wire: tag, then payload.
pub fn seal(secret: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(payload);
    let tag = mac.finalize().into_bytes();
    let mut out = Vec::with_capacity(TAG_LEN + payload.len());
    out.extend_from_slice(&tag[..TAG_LEN]);
    out.extend_from_slice(payload);
    out
}

/// The payload of a datagram whose tag is right under `secret`.
pub fn open<'a>(secret: &[u8], datagram: &'a [u8]) -> Option<&'a [u8]> {
    let (tag, payload) = datagram.split_at_checked(TAG_LEN)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(payload);
    mac.verify_truncated_left(tag).ok()?;
    Some(payload)
}

/// Counters of the group's traffic, for metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams dropped for a missing or wrong tag.
    pub bad_tag: Counter,
    /// Datagrams `foca` refused.
    pub rejected: Counter,
    /// Membership changes seen.
    pub changes: Counter,
}

/// The gossip port a DaemonSet uses: 7947, beside MetalLB's 7946, so both may
/// run during a migration.
pub const DEFAULT_PORT: u16 = 7947;

/// Where this speaker gossips: `listen` when given, else `address` on `port`.
/// The two-part form exists for IPv6: a pod IP such as `fd00::5` cannot be
/// glued to a port in a manifest (`$(POD_IP):7947` is no socket address, and
/// `fd00::5:7947` is a different IPv6 address).
pub fn listen_address(
    listen: Option<SocketAddr>,
    address: Option<std::net::IpAddr>,
    port: u16,
) -> Result<SocketAddr, String> {
    listen
        .or_else(|| address.map(|ip| SocketAddr::new(ip, port)))
        .ok_or_else(|| {
            "this node's gossip address is required without --static: --gossip-address \
             (GOSSIP_ADDRESS, the pod IP) with --gossip-port, or --gossip-listen address:port"
                .to_string()
        })
}

/// The shortest gossip secret a speaker accepts, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Whether `secret` is long enough to authenticate the group; the error says
/// how to make one that is.
pub fn check_secret(secret: &[u8]) -> std::io::Result<()> {
    if secret.len() >= MIN_SECRET_LEN {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!(
            "the gossip secret is {} bytes; it must be at least {MIN_SECRET_LEN} (make one with \
             `head -c 32 /dev/urandom | base64`)",
            secret.len()
        ),
    ))
}

/// A running member of the group.
pub struct Membership {
    members: watch::Receiver<BTreeSet<String>>,
    join: mpsc::UnboundedSender<SocketAddr>,
    counters: Arc<Counters>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    local: SocketAddr,
}

impl Membership {
    /// Joins the group from `socket`, announcing to the seeds. Refuses a secret
    /// shorter than [`MIN_SECRET_LEN`] bytes: anyone who guesses it can join
    /// the group and take addresses.
    pub fn start(socket: UdpSocket, config: Config) -> std::io::Result<Self> {
        check_secret(&config.secret)?;
        let local = socket.local_addr()?;
        let (tx, members) = watch::channel(BTreeSet::from([config.node.clone()]));
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let (join, joins) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(
            socket,
            config,
            local,
            tx,
            joins,
            counters.clone(),
            stop.clone(),
        ));
        Ok(Self {
            members,
            join,
            counters,
            stop,
            task,
            local,
        })
    }

    /// The nodes alive now (this one included); changes as the group does.
    pub fn members(&self) -> watch::Receiver<BTreeSet<String>> {
        self.members.clone()
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

async fn run(
    socket: UdpSocket,
    config: Config,
    local: SocketAddr,
    members: watch::Sender<BTreeSet<String>>,
    mut joins: mpsc::UnboundedReceiver<SocketAddr>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let me = Peer {
        node: config.node.clone(),
        addr: local,
        generation: 0,
    };
    let seed = config.node.bytes().fold(u64::from(local.port()), |h, b| {
        h.rotate_left(5) ^ u64::from(b)
    });
    let mut foca = Foca::new(
        me,
        config.foca(),
        StdRng::seed_from_u64(seed),
        PostcardCodec,
    );
    let mut runtime = AccumulatingRuntime::new();
    let (timer_tx, mut timers) = mpsc::unbounded_channel::<Timer<Peer>>();
    let mut buf = vec![0u8; 65536];
    let wire = Wire {
        socket,
        secret: config.secret.clone(),
        timers: timer_tx,
        members,
        counters,
    };
    let announce = |foca: &mut Foca<_, _, _, _>, runtime: &mut AccumulatingRuntime<Peer>, addr| {
        // The seed's name is learnt from its answer.
        let placeholder = Peer {
            node: String::new(),
            addr,
            generation: 0,
        };
        if let Err(e) = foca.announce(placeholder, runtime) {
            warn!(error = %e, %addr, "announce failed");
        }
    };
    for addr in &config.seeds {
        announce(&mut foca, &mut runtime, *addr);
    }
    loop {
        wire.flush(&mut runtime, &foca).await;
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(addr) = joins.recv() => announce(&mut foca, &mut runtime, addr),
            timer = timers.recv() => {
                let Some(timer) = timer else { break };
                if let Err(e) = foca.handle_timer(timer, &mut runtime) {
                    debug!(error = %e, "timer");
                }
            }
            received = wire.socket.recv_from(&mut buf) => {
                let Ok((len, from)) = received else { continue };
                match open(&wire.secret, &buf[..len]) {
                    None => {
                        wire.counters.bad_tag.inc();
                        debug!(%from, "dropped a datagram with a bad tag");
                    }
                    Some(payload) => {
                        if foca.handle_data(payload, &mut runtime).is_err() {
                            wire.counters.rejected.inc();
                        }
                    }
                }
            }
        }
    }
    if let Err(e) = foca.leave_cluster(&mut runtime) {
        warn!(error = %e, "leaving the group");
    }
    wire.flush(&mut runtime, &foca).await;
}

/// Where `foca`'s output goes: the socket, the timer queue, the member list.
struct Wire {
    socket: UdpSocket,
    secret: Vec<u8>,
    timers: mpsc::UnboundedSender<Timer<Peer>>,
    members: watch::Sender<BTreeSet<String>>,
    counters: Arc<Counters>,
}

impl Wire {
    /// Sends what `foca` queued, schedules its timers, and publishes the
    /// member list when it changed.
    async fn flush(
        &self,
        runtime: &mut AccumulatingRuntime<Peer>,
        foca: &Foca<Peer, PostcardCodec, StdRng, foca::NoCustomBroadcast>,
    ) {
        while let Some((to, data)) = runtime.to_send() {
            if let Err(e) = self
                .socket
                .send_to(&seal(&self.secret, &data), to.addr)
                .await
            {
                debug!(error = %e, to = %to.addr, "send failed");
            }
        }
        while let Some((after, timer)) = runtime.to_schedule() {
            let timers = self.timers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = timers.send(timer);
            });
        }
        let mut changed = false;
        while runtime.to_notify().is_some() {
            changed = true;
        }
        if changed {
            self.counters.changes.inc();
            let mut alive: BTreeSet<String> =
                foca.iter_members().map(|m| m.id().node.clone()).collect();
            alive.insert(foca.identity().node.clone());
            alive.remove("");
            self.members.send_if_modified(|current| {
                if *current == alive {
                    false
                } else {
                    *current = alive;
                    true
                }
            });
        }
    }
}

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

    #[test]
    fn a_sealed_datagram_opens_only_with_its_secret() {
        let sealed = seal(b"s3cret", b"hello");
        assert_eq!(sealed.len(), TAG_LEN + 5);
        assert_eq!(open(b"s3cret", &sealed), Some(&b"hello"[..]));
        assert_eq!(open(b"other", &sealed), None);
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(open(b"s3cret", &tampered), None);
        assert_eq!(
            open(b"s3cret", &sealed[..TAG_LEN - 1]),
            None,
            "shorter than a tag"
        );
    }
}
