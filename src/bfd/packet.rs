//! BFD control packets (RFC 5880 4.1), without authentication.
//!
//! Written here rather than taken from a crate: crates.io has no BFD packet
//! crate (none named `bfd`, `bfd-rs` or `rfc5880`; the BGP codecs stop at
//! BGP), and the packet is 24 fixed bytes.

/// The UDP port of single-hop BFD control packets (RFC 5881).
pub const PORT: u16 = 3784;
/// The length of a packet without authentication.
pub const LENGTH: usize = 24;

/// A session state as the wire carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// Held down by its administrator.
    AdminDown = 0,
    /// Down.
    Down = 1,
    /// Coming up.
    Init = 2,
    /// Up.
    Up = 3,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Why a session last went down (RFC 5880 4.1, the values used here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diagnostic {
    /// No diagnostic.
    None = 0,
    /// No packet within the detection time.
    DetectionTimeExpired = 1,
    /// The neighbor said its session went down.
    NeighborSignaledDown = 3,
    /// Held down administratively.
    AdminDown = 7,
}

/// A control packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Why the sender's session last went down.
    pub diagnostic: u8,
    /// The sender's state.
    pub state: State,
    /// Poll: the sender changed its timers and wants a Final.
    pub poll: bool,
    /// Final: the answer to a Poll.
    pub final_: bool,
    /// The detection multiplier.
    pub detect_mult: u8,
    /// The sender's discriminator.
    pub my_discriminator: u32,
    /// The receiver's discriminator as the sender knows it (0: unknown).
    pub your_discriminator: u32,
    /// Microseconds the sender wants between its packets, at least.
    pub desired_min_tx: u32,
    /// Microseconds the sender wants between received packets, at least
    /// (0: send none).
    pub required_min_rx: u32,
}

/// Why bytes are not a usable control packet (RFC 5880 6.8.6's checks).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Fewer than 24 bytes, or a length field that disagrees.
    #[error("bad length")]
    Length,
    /// Not version 1.
    #[error("version {0}")]
    Version(u8),
    /// Detection multiplier 0.
    #[error("detect multiplier 0")]
    DetectMult,
    /// Multipoint bit set.
    #[error("multipoint bit set")]
    Multipoint,
    /// My Discriminator 0.
    #[error("my discriminator 0")]
    Discriminator,
    /// Authentication, which ironlb does not support.
    #[error("authentication is not supported")]
    Authentication,
}

impl Packet {
    /// The packet's 24 bytes.
    pub fn encode(&self) -> [u8; LENGTH] {
        let mut b = [0u8; LENGTH];
        b[0] = (1 << 5) | (self.diagnostic & 0x1f);
        b[1] =
            ((self.state as u8) << 6) | (u8::from(self.poll) << 5) | (u8::from(self.final_) << 4);
        b[2] = self.detect_mult;
        b[3] = LENGTH as u8;
        b[4..8].copy_from_slice(&self.my_discriminator.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_discriminator.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx.to_be_bytes());
        // Required Min Echo RX Interval: 0, no echo function.
        b
    }

    /// Parses and checks a received packet.
    pub fn decode(b: &[u8]) -> Result<Self, Invalid> {
        if b.len() < LENGTH {
            return Err(Invalid::Length);
        }
        let version = b[0] >> 5;
        if version != 1 {
            return Err(Invalid::Version(version));
        }
        let length = usize::from(b[3]);
        if length < LENGTH || length > b.len() {
            return Err(Invalid::Length);
        }
        if b[1] & 0x04 != 0 {
            return Err(Invalid::Authentication);
        }
        if b[1] & 0x01 != 0 {
            return Err(Invalid::Multipoint);
        }
        if b[2] == 0 {
            return Err(Invalid::DetectMult);
        }
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let my_discriminator = word(4);
        if my_discriminator == 0 {
            return Err(Invalid::Discriminator);
        }
        Ok(Self {
            diagnostic: b[0] & 0x1f,
            state: match b[1] >> 6 {
                0 => State::AdminDown,
                1 => State::Down,
                2 => State::Init,
                _ => State::Up,
            },
            poll: b[1] & 0x20 != 0,
            final_: b[1] & 0x10 != 0,
            detect_mult: b[2],
            my_discriminator,
            your_discriminator: word(8),
            desired_min_tx: word(12),
            required_min_rx: word(16),
        })
    }
}

#[cfg(test)]
impl Packet {
    /// What a session says first: Down, its discriminator, slow rates.
    pub(crate) fn first_hello(my_discriminator: u32) -> Self {
        Self {
            diagnostic: 0,
            state: State::Down,
            poll: false,
            final_: false,
            detect_mult: 3,
            my_discriminator,
            your_discriminator: 0,
            desired_min_tx: 1_000_000,
            required_min_rx: 1_000_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state() -> impl Strategy<Value = State> {
        prop_oneof![
            Just(State::AdminDown),
            Just(State::Down),
            Just(State::Init),
            Just(State::Up)
        ]
    }

    proptest! {
        #[test]
        fn packets_round_trip(diagnostic in 0u8..32, state in state(), poll: bool, final_: bool,
                              detect_mult in 1u8.., my in 1u32.., your: u32, tx: u32, rx: u32) {
            let p = Packet { diagnostic, state, poll, final_, detect_mult, my_discriminator: my,
                             your_discriminator: your, desired_min_tx: tx, required_min_rx: rx };
            prop_assert_eq!(Packet::decode(&p.encode()), Ok(p));
        }

        #[test]
        fn any_bytes_decode_or_give_a_reason(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Packet::decode(&bytes);
        }
    }

    #[test]
    fn what_rfc_5880_says_to_discard_is_refused() {
        let good = Packet::first_hello(7).encode();
        assert!(Packet::decode(&good).is_ok());
        let mut b = good;
        b[0] = 2 << 5;
        assert_eq!(Packet::decode(&b), Err(Invalid::Version(2)));
        let mut b = good;
        b[2] = 0;
        assert_eq!(Packet::decode(&b), Err(Invalid::DetectMult));
        let mut b = good;
        b[4..8].fill(0);
        assert_eq!(Packet::decode(&b), Err(Invalid::Discriminator));
        let mut b = good;
        b[1] |= 0x04;
        assert_eq!(Packet::decode(&b), Err(Invalid::Authentication));
        assert_eq!(Packet::decode(&good[..20]), Err(Invalid::Length));
    }
}
