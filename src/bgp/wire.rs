//! BGP messages on a byte stream: what arrives is cut into messages and
//! parsed, what leaves is written, with the 4-byte-ASN choice each side made
//! in its OPEN remembered (the codec does that).

use bytes::BytesMut;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::codec::{BgpCodec, BgpCodecDecoderError};
use netgauze_bgp_pkt::notification::{BgpNotificationMessage, MessageHeaderError};
use tokio_util::codec::{Decoder, Encoder};

/// The largest BGP message without the extended-message capability.
pub const MAX_MESSAGE: usize = 4096;

/// A message stream's framing state.
#[derive(Debug, Default)]
pub struct Wire {
    codec: BgpCodec,
    input: BytesMut,
}

/// Bytes that are not a BGP message: what went wrong, and the NOTIFICATION
/// that says so to the router.
#[derive(Debug)]
pub struct Malformed {
    /// What went wrong, for the log and the session's last error.
    pub why: String,
    /// What to tell the router.
    pub notification: BgpNotificationMessage,
}

impl Wire {
    /// A new stream, before any OPEN.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes bytes read from the socket.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// The next whole message, if one has arrived.
    pub fn next_message(&mut self) -> Result<Option<BgpMessage>, Malformed> {
        if self.input.len() >= 19 {
            let length = usize::from(u16::from_be_bytes([self.input[16], self.input[17]]));
            if !(19..=MAX_MESSAGE).contains(&length) || self.input[..16] != [0xff; 16] {
                return Err(Malformed {
                    why: format!("bad message header (length {length})"),
                    notification: BgpNotificationMessage::MessageHeaderError(
                        MessageHeaderError::BadMessageLength {
                            value: self.input[16..18].into(),
                        },
                    ),
                });
            }
        }
        match self.codec.decode(&mut self.input) {
            Ok(m) => Ok(m.map(|(message, _)| message)),
            Err(BgpCodecDecoderError::Incomplete(_)) => Ok(None),
            Err(e) => Err(Malformed {
                why: e.to_string(),
                notification: BgpNotificationMessage::MessageHeaderError(
                    MessageHeaderError::Unspecific {
                        value: Box::new([]),
                    },
                ),
            }),
        }
    }

    /// Appends `message`, encoded, to `out`.
    pub fn encode(&mut self, message: BgpMessage, out: &mut BytesMut) -> Result<(), String> {
        self.codec
            .encode(message, out)
            .map_err(|e| format!("cannot encode a BGP message: {e:?}"))
    }
}
