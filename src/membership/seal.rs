//! Sealing and opening datagrams: the header, the truncated HMAC-SHA256
//! under the group's keys, and the replay guard.

use super::*;

/// Bytes of HMAC-SHA256 kept in each datagram: 128 bits.
pub const TAG_LEN: usize = 16;

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
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
