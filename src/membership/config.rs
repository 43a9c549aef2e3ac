//! A speaker's place in the group: its identity, its settings, its keys and
//! where it listens.

use super::*;

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
    /// Timings for a LAN. A dead speaker is first probed within two probe
    /// periods (by each of the others, round robin), suspected one period
    /// later, and down after the suspicion: under 400 ms in all, where 100 +
    /// 300 ms took up to 600. The suspicion still spans four gossip rounds,
    /// so a member wrongly suspected under a few percent of packet loss
    /// refutes in time; the price is twice the probes (20 a second per
    /// speaker, whatever the cluster's size).
    pub fn lan(node: impl Into<String>, keys: Vec<Vec<u8>>, seeds: Vec<SocketAddr>) -> Self {
        Self {
            node: node.into(),
            keys,
            seeds,
            probe_period: Duration::from_millis(50),
            // A LAN answers in well under a millisecond; the rest of the
            // period is for the indirect probes.
            probe_rtt: Duration::from_millis(20),
            suspect_to_down_after: Duration::from_millis(200),
            generation: None,
        }
    }

    pub(super) fn foca(&self) -> FocaConfig {
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
