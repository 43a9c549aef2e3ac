//! The addresses each speaker cannot serve: versioned records spread as
//! `foca` custom broadcasts, the newest per node kept.

use super::*;

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
    pub(super) fn first(node: &str) -> Self {
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
pub(super) struct HealthHandler {
    pub(super) me: String,
    pub(super) newest: BTreeMap<String, Health>,
    pub(super) out: watch::Sender<HealthMap>,
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
