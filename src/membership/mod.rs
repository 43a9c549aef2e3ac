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
    /// The shared secrets: the first signs, any of them opens, so a new key
    /// can be rolled out (added second, then moved first, then the old one
    /// removed) without splitting the group. Speakers with no key in common
    /// never see each other.
    pub keys: Vec<Vec<u8>>,
    /// Addresses of other speakers to announce to at start, and again every
    /// [`REJOIN_PERIOD`] while this speaker knows no live peer (to heal
    /// partitions).
    pub seeds: Vec<SocketAddr>,
    /// How often each speaker probes one other.
    pub probe_period: Duration,
    /// How long a probe waits for its answer before asking others to probe
    /// indirectly.
    pub probe_rtt: Duration,
    /// How long a suspected speaker has to refute before it is declared down.
    pub suspect_to_down_after: Duration,
    /// The identity's generation to keep, when taking over from an earlier
    /// speaker of this node that never left (see [`crate::handover`]); else
    /// a new one, the start time.
    pub generation: Option<u32>,
}

impl Config {
    /// Timings for a LAN: a dead speaker is down in about half a second, and
    /// indirect probes plus suspicion ride out a few percent of packet loss.
    pub fn lan(node: impl Into<String>, keys: Vec<Vec<u8>>, seeds: Vec<SocketAddr>) -> Self {
        Self {
            node: node.into(),
            keys,
            seeds,
            probe_period: Duration::from_millis(100),
            probe_rtt: Duration::from_millis(40),
            suspect_to_down_after: Duration::from_millis(300),
            generation: None,
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

/// Bytes of the header after the tag: incarnation, send time, sequence.
pub const HEADER_LEN: usize = 24;

/// The largest datagram read: `foca`'s packets are at most 1,400 bytes.
pub const MAX_DATAGRAM: usize = TAG_LEN + HEADER_LEN + 1400;

/// How far a datagram's send time may lie from the receiver's clock, either
/// way. Generous, so clocks merely kept by NTP never split the group; within
/// it, sequence numbers catch replays.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(300);

/// Who sent a datagram, when and in what order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Random per start of the sender: a restarted speaker is a new sender.
    pub incarnation: u64,
    /// The sender's clock, in milliseconds since the epoch.
    pub sent_ms: u64,
    /// Increases by one per datagram of the incarnation.
    pub seq: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(&self.incarnation.to_be_bytes());
        out[8..16].copy_from_slice(&self.sent_ms.to_be_bytes());
        out[16..].copy_from_slice(&self.seq.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let word = |i: usize| Some(u64::from_be_bytes(bytes.get(i..i + 8)?.try_into().ok()?));
        Some(Self {
            incarnation: word(0)?,
            sent_ms: word(8)?,
            seq: word(16)?,
        })
    }
}

fn tag(key: &[u8], header: &[u8], payload: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(header);
    mac.update(payload);
    mac
}

/// Signs `payload` for the wire under `key`: tag, header, payload.
pub fn seal(key: &[u8], header: Header, payload: &[u8]) -> Vec<u8> {
    let header = header.encode();
    let tag = tag(key, &header, payload).finalize().into_bytes();
    let mut out = Vec::with_capacity(TAG_LEN + HEADER_LEN + payload.len());
    out.extend_from_slice(&tag[..TAG_LEN]);
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    out
}

/// The header and payload of a datagram whose tag is right under one of
/// `keys`; `None` for a datagram too large, too short, or not signed by them.
pub fn open<'a>(keys: &[Vec<u8>], datagram: &'a [u8]) -> Option<(Header, &'a [u8])> {
    // The size check comes first: a flood of large datagrams costs no hashing.
    if datagram.len() > MAX_DATAGRAM {
        return None;
    }
    let (mac, rest) = datagram.split_at_checked(TAG_LEN)?;
    let (header, payload) = rest.split_at_checked(HEADER_LEN)?;
    keys.iter()
        .any(|key| tag(key, header, payload).verify_truncated_left(mac).is_ok())
        .then(|| Some((Header::decode(header)?, payload)))
        .flatten()
}

/// Why an authentic datagram was refused as a replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Sent longer ago than [`REPLAY_WINDOW`] (or that far in the future).
    Stale,
    /// Its sequence number was seen already, or is too far behind to tell.
    Repeated,
}

/// The sequence numbers seen per sender incarnation: the highest, and which of
/// the 128 below it. Pure, so it is tested without sockets.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    senders: std::collections::HashMap<u64, Seen>,
}

#[derive(Debug)]
struct Seen {
    max: u64,
    /// Bit `i`: `max - i` was seen.
    below: u128,
    last_ms: u64,
}

impl ReplayGuard {
    /// Admits a datagram sent with `h`, received at `now_ms`, once.
    pub fn admit(&mut self, h: Header, now_ms: u64) -> Result<(), Replay> {
        let window = REPLAY_WINDOW.as_millis() as u64;
        if h.sent_ms.abs_diff(now_ms) > window {
            return Err(Replay::Stale);
        }
        // Forget senders quiet for two windows: their datagrams are stale now.
        if self.senders.len() > 64 {
            self.senders
                .retain(|_, s| now_ms.saturating_sub(s.last_ms) <= 2 * window);
        }
        let seen = self.senders.entry(h.incarnation).or_insert(Seen {
            max: h.seq,
            below: 0,
            last_ms: now_ms,
        });
        seen.last_ms = now_ms;
        if h.seq > seen.max {
            let shift = h.seq - seen.max;
            seen.below = if shift >= 128 { 0 } else { seen.below << shift };
            seen.below |= 1;
            seen.max = h.seq;
            return Ok(());
        }
        let back = seen.max - h.seq;
        if back >= 128 || seen.below & (1 << back) != 0 {
            return Err(Replay::Repeated);
        }
        seen.below |= 1 << back;
        Ok(())
    }
}

/// Milliseconds since the epoch by this host's clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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

/// The keys in a secret file (or a static configuration's `secret`): one per
/// line, surrounding whitespace ignored, the first one signing. One line is
/// the usual case; a second line is how a new key is rolled out.
pub fn keys_from(text: &[u8]) -> Vec<Vec<u8>> {
    text.split(|b| *b == b'\n')
        .map(|line| line.trim_ascii().to_vec())
        .filter(|key| !key.is_empty())
        .collect()
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

/// Whether there is a key and every key is long enough ([`check_secret`]).
pub fn check_keys(keys: &[Vec<u8>]) -> std::io::Result<()> {
    if keys.is_empty() {
        return check_secret(&[]);
    }
    keys.iter().try_for_each(|key| check_secret(key))
}

/// What one speaker says it cannot serve, spread to every other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The speaker's node.
    pub node: String,
    /// When that speaker started (ms since the epoch): a restarted speaker's
    /// records replace those of its earlier run.
    pub epoch: u64,
    /// Increases with each record of the run.
    pub version: u64,
    /// The addresses it cannot serve now.
    pub unservable: BTreeSet<IpAddr>,
    /// The list did not fit in a datagram: it cannot serve any address.
    pub everything: bool,
}

/// The largest encoded [`Health`] record: it rides in a datagram beside the
/// membership updates. About 200 IPv4 or 60 IPv6 addresses; a node that
/// cannot serve more says [`Health::everything`] instead.
pub const MAX_HEALTH_LEN: usize = 1000;

impl Health {
    /// A speaker's first record of a run: it can serve everything.
    fn first(node: &str) -> Self {
        Self {
            node: node.to_string(),
            epoch: now_ms(),
            version: 0,
            unservable: BTreeSet::new(),
            everything: false,
        }
    }

    fn newer_than(&self, other: &Health) -> bool {
        (self.epoch, self.version) > (other.epoch, other.version)
    }

    /// The record on the wire, shortened to [`Health::everything`] when the
    /// list is too long.
    pub fn encode(&self) -> Vec<u8> {
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        if bytes.len() <= MAX_HEALTH_LEN {
            return bytes;
        }
        postcard::to_allocvec(&Health {
            unservable: BTreeSet::new(),
            everything: true,
            ..self.clone()
        })
        .unwrap_or_default()
    }

    /// A record from the wire.
    pub fn decode(bytes: &[u8]) -> Result<Self, BadHealth> {
        postcard::from_bytes(bytes).map_err(|_| BadHealth)
    }
}

/// Which addresses each other speaker cannot serve, by node, from the newest
/// record of each.
pub type HealthMap = BTreeMap<String, Unservable>;

/// The key under which `foca` keeps a record while spreading it: a newer
/// record of the same node replaces an older one still being spread.
#[derive(Debug)]
pub struct HealthKey {
    node: String,
    epoch: u64,
    version: u64,
}

impl Invalidates for HealthKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node == other.node && (self.epoch, self.version) > (other.epoch, other.version)
    }
}

/// A record that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("a malformed health record")]
pub struct BadHealth;

/// Keeps the newest record per node and publishes the map when it changes.
struct HealthHandler {
    me: String,
    newest: BTreeMap<String, Health>,
    out: watch::Sender<HealthMap>,
}

impl BroadcastHandler<Peer> for HealthHandler {
    type Key = HealthKey;
    type Error = BadHealth;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&Peer>,
    ) -> Result<Option<HealthKey>, BadHealth> {
        let health = Health::decode(data)?;
        let key = HealthKey {
            node: health.node.clone(),
            epoch: health.epoch,
            version: health.version,
        };
        if let Some(known) = self.newest.get(&health.node)
            && !health.newer_than(known)
        {
            return Ok(None);
        }
        if health.node != self.me {
            let unservable = if health.everything {
                Unservable::Everything
            } else {
                Unservable::Addresses(health.unservable.clone())
            };
            let node = health.node.clone();
            self.out.send_if_modified(|map| {
                let changed = map.get(&node) != Some(&unservable);
                if changed {
                    map.insert(node, unservable);
                }
                changed
            });
        }
        self.newest.insert(health.node.clone(), health);
        Ok(Some(key))
    }
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

/// How often a speaker that cannot serve some address says so again, for
/// speakers that joined since (`foca` spreads each record a few times only).
const HEALTH_REPEAT: Duration = Duration::from_secs(5);

/// The group as `foca` runs it, for this speaker.
type Group = Foca<Peer, PostcardCodec, StdRng, HealthHandler>;

/// This speaker's `foca`, whose random choices are seeded from its name and
/// port, and whose health records go to `health`.
fn group(config: &Config, me: Peer, health: watch::Sender<HealthMap>) -> Group {
    let seed = config.node.bytes().fold(u64::from(me.addr.port()), |h, b| {
        h.rotate_left(5) ^ u64::from(b)
    });
    Foca::with_custom_broadcast(
        me,
        config.foca(),
        StdRng::seed_from_u64(seed),
        PostcardCodec,
        HealthHandler {
            me: config.node.clone(),
            newest: BTreeMap::new(),
            out: health,
        },
    )
}

/// Spreads a new version of this speaker's health record.
fn publish(foca: &mut Group, record: &mut Health) {
    record.version += 1;
    if let Err(e) = foca.add_broadcast(&record.encode()) {
        warn!(error = %e, "spreading this speaker's health");
    }
}

/// Asks the speaker at `addr` to let this one in; its name is learnt from
/// its answer.
fn announce(foca: &mut Group, runtime: &mut AccumulatingRuntime<Peer>, addr: SocketAddr) {
    let placeholder = Peer {
        node: String::new(),
        addr,
        generation: 0,
    };
    if let Err(e) = foca.announce(placeholder, runtime) {
        warn!(error = %e, %addr, "announce failed");
    }
}

/// A ticker that skips the ticks it missed rather than bursting.
fn every(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

async fn run(
    socket: UdpSocket,
    config: Config,
    me: Peer,
    channels: Channels,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let Channels {
        members,
        health,
        mut own,
        mut joins,
    } = channels;
    let mut foca = group(&config, me, health);
    let mut record = Health::first(&config.node);
    // Said once at start, even empty: it replaces what an earlier run of this
    // speaker said.
    publish(&mut foca, &mut record);
    let mut repeat = every(HEALTH_REPEAT);
    let mut runtime = AccumulatingRuntime::new();
    let (timer_tx, mut timers) = mpsc::unbounded_channel::<Timer<Peer>>();
    let mut buf = vec![0u8; 65536];
    let mut wire = Wire {
        socket,
        keys: config.keys.clone(),
        incarnation: rand::random(),
        seq: 0,
        guard: ReplayGuard::default(),
        timers: timer_tx,
        members,
        counters,
    };
    let mut membership_changes = wire.members.subscribe();
    let mut seeds: BTreeSet<SocketAddr> = config.seeds.iter().copied().collect();
    for addr in &seeds {
        announce(&mut foca, &mut runtime, *addr);
    }
    let mut rejoin = every(REJOIN_PERIOD);
    loop {
        wire.flush(&mut runtime, &foca).await;
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(addr) = joins.recv() => {
                seeds.insert(addr);
                announce(&mut foca, &mut runtime, addr);
            }
            // A speaker cut off from all its peers, whose identity was then
            // renewed (the others declared it down), has nobody left to talk
            // to: `foca` waits for someone to announce, and the others may
            // have given up on it. It announces itself to the seeds until it
            // is back in the group.
            _ = rejoin.tick(), if foca.iter_members().next().is_none() && !seeds.is_empty() => {
                for addr in &seeds {
                    announce(&mut foca, &mut runtime, *addr);
                }
            }
            changed = own.changed() => {
                if changed.is_ok() {
                    record.unservable = own.borrow_and_update().clone();
                    publish(&mut foca, &mut record);
                }
            }
            // A newcomer learns what the others cannot serve from their next
            // record, not from history.
            _ = membership_changes.changed() => {
                membership_changes.borrow_and_update();
                if !record.unservable.is_empty() {
                    publish(&mut foca, &mut record);
                }
            }
            _ = repeat.tick(), if !record.unservable.is_empty() => publish(&mut foca, &mut record),
            timer = timers.recv() => {
                let Some(timer) = timer else { break };
                if let Err(e) = foca.handle_timer(timer, &mut runtime) {
                    debug!(error = %e, "timer");
                }
            }
            received = wire.socket.recv_from(&mut buf) => {
                let Ok((len, from)) = received else { continue };
                let Some(payload) = wire.admit(&buf[..len], from) else { continue };
                if foca.handle_data(payload, &mut runtime).is_err() {
                    wire.counters.rejected.inc();
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
    keys: Vec<Vec<u8>>,
    incarnation: u64,
    seq: u64,
    guard: ReplayGuard,
    timers: mpsc::UnboundedSender<Timer<Peer>>,
    members: watch::Sender<BTreeSet<String>>,
    counters: Arc<Counters>,
}

impl Wire {
    /// The payload of a datagram sealed with one of the group's keys and
    /// not seen before; anything else is counted and dropped.
    fn admit<'d>(&mut self, datagram: &'d [u8], from: SocketAddr) -> Option<&'d [u8]> {
        let Some((header, payload)) = open(&self.keys, datagram) else {
            self.counters.bad_tag.inc();
            debug!(%from, "dropped a datagram with a bad tag");
            return None;
        };
        if let Err(why) = self.guard.admit(header, now_ms()) {
            self.counters.replayed.inc();
            if why == Replay::Stale {
                warn!(%from, skew_ms = header.sent_ms as i64 - now_ms() as i64,
                    "dropped a gossip datagram sent too far from this node's clock \
                     (a replay, or clocks out of step: check NTP)");
            } else {
                debug!(%from, "dropped a replayed gossip datagram");
            }
            return None;
        }
        Some(payload)
    }

    /// Sends what `foca` queued, schedules its timers, and publishes the
    /// member list when it changed.
    async fn flush(
        &mut self,
        runtime: &mut AccumulatingRuntime<Peer>,
        foca: &Foca<Peer, PostcardCodec, StdRng, HealthHandler>,
    ) {
        while let Some((to, data)) = runtime.to_send() {
            self.seq += 1;
            let header = Header {
                incarnation: self.incarnation,
                sent_ms: now_ms(),
                seq: self.seq,
            };
            let datagram = seal(&self.keys[0], header, &data);
            if let Err(e) = self.socket.send_to(&datagram, to.addr).await {
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
