//! BGP messages on a byte stream: what arrives is cut into messages and
//! parsed, what leaves is written, with the 4-byte-ASN choice each side made
//! in its OPEN remembered (the codec does that).
//!
//! A message the codec cannot parse is judged as the RFCs say, not dropped
//! with the session: the header as RFC 4271 §6.1 checks it, an UPDATE as
//! RFC 7606 revises §6.3. ironlb takes no routes from a router, so where
//! RFC 7606 says treat-as-withdraw or attribute-discard the UPDATE is simply
//! discarded and the session stays up; only an UPDATE whose routes cannot
//! even be located (its length fields, its NLRI, or its MP_REACH_NLRI /
//! MP_UNREACH_NLRI are broken) resets it, with the subcode that says why.

use bytes::BytesMut;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::codec::{BgpCodec, BgpCodecDecoderError};
use netgauze_bgp_pkt::notification::{
    BgpNotificationMessage, MessageHeaderError, OpenMessageError, RouteRefreshError,
    UpdateMessageError,
};
use tokio_util::codec::{Decoder, Encoder};

/// The largest BGP message without the extended-message capability.
pub const MAX_MESSAGE: usize = 4096;

/// The header: marker, length, type.
const HEADER: usize = 19;

/// Message types (RFC 4271 §4.1, RFC 2918).
const OPEN: u8 = 1;
const UPDATE: u8 = 2;
const NOTIFICATION: u8 = 3;
const KEEPALIVE: u8 = 4;
const ROUTE_REFRESH: u8 = 5;

/// Path attribute types whose errors RFC 7606 §7.3 answers with a reset.
const MP_REACH_NLRI: u8 = 14;
const MP_UNREACH_NLRI: u8 = 15;

/// A message stream's framing state.
#[derive(Debug, Default)]
pub struct Wire {
    codec: BgpCodec,
    input: BytesMut,
}

/// What one whole message came to.
#[derive(Debug)]
pub enum Received {
    /// A message.
    Message(BgpMessage),
    /// An UPDATE with an error RFC 7606 handles without a reset: dropped,
    /// and why.
    Discarded(String),
}

/// Bytes the session cannot go on after: what went wrong, and the
/// NOTIFICATION that says so to the router (none for a NOTIFICATION that
/// could not be read: one is never answered with another).
#[derive(Debug)]
pub struct Malformed {
    /// What went wrong, for the log and the session's last error.
    pub why: String,
    /// What to tell the router.
    pub notification: Option<BgpNotificationMessage>,
}

impl Malformed {
    fn new(why: String, notification: BgpNotificationMessage) -> Self {
        Self {
            why,
            notification: Some(notification),
        }
    }
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
    pub fn next_message(&mut self) -> Result<Option<Received>, Malformed> {
        if self.input.len() < HEADER {
            return Ok(None);
        }
        let length_field = [self.input[16], self.input[17]];
        let length = usize::from(u16::from_be_bytes(length_field));
        let kind = self.input[18];
        header_errors(&self.input[..16], length, kind, length_field)?;
        if self.input.len() < length {
            return Ok(None);
        }
        let frame = self.input.split_to(length);
        let mut one = frame.clone();
        match self.codec.decode(&mut one) {
            Ok(Some((message, _))) => Ok(Some(Received::Message(message))),
            Ok(None) | Err(BgpCodecDecoderError::Incomplete(_)) => {
                undecodable(kind, &frame, "the message ends early".into())
            }
            Err(e) => undecodable(kind, &frame, e.to_string()),
        }
    }

    /// Appends `message`, encoded, to `out`.
    pub fn encode(&mut self, message: BgpMessage, out: &mut BytesMut) -> Result<(), String> {
        self.codec
            .encode(message, out)
            .map_err(|e| format!("cannot encode a BGP message: {e:?}"))
    }
}

/// RFC 4271 §6.1: the marker, the length for the type, the type.
fn header_errors(marker: &[u8], length: usize, kind: u8, field: [u8; 2]) -> Result<(), Malformed> {
    if marker != [0xff; 16] {
        return Err(Malformed::new(
            "the header's marker is not all ones".into(),
            BgpNotificationMessage::MessageHeaderError(
                MessageHeaderError::ConnectionNotSynchronized {
                    value: Box::new([]),
                },
            ),
        ));
    }
    let fits = match kind {
        OPEN => (29..=MAX_MESSAGE).contains(&length),
        UPDATE => (23..=MAX_MESSAGE).contains(&length),
        NOTIFICATION => (21..=MAX_MESSAGE).contains(&length),
        KEEPALIVE => length == HEADER,
        // RFC 7313 §5 answers a wrong ROUTE-REFRESH length itself, below.
        ROUTE_REFRESH => (HEADER..=MAX_MESSAGE).contains(&length),
        _ => {
            return Err(Malformed::new(
                format!("message type {kind} does not exist"),
                BgpNotificationMessage::MessageHeaderError(MessageHeaderError::BadMessageType {
                    value: Box::new([kind]),
                }),
            ));
        }
    };
    if !fits {
        return Err(Malformed::new(
            format!("bad message length {length} for message type {kind}"),
            BgpNotificationMessage::MessageHeaderError(MessageHeaderError::BadMessageLength {
                value: Box::new(field),
            }),
        ));
    }
    Ok(())
}

/// A whole message of type `kind` the codec could not parse.
fn undecodable(kind: u8, frame: &[u8], error: String) -> Result<Option<Received>, Malformed> {
    match kind {
        UPDATE => match judge_update(&frame[HEADER..]) {
            Verdict::Discard => Ok(Some(Received::Discarded(format!(
                "an UPDATE with an attribute error, discarded (RFC 7606): {error}"
            )))),
            Verdict::Reset(why, e) => Err(Malformed::new(
                format!("an UPDATE whose routes cannot be located: {why}"),
                BgpNotificationMessage::UpdateMessageError(e),
            )),
        },
        OPEN => Err(Malformed::new(
            format!("unreadable OPEN: {error}"),
            BgpNotificationMessage::OpenMessageError(OpenMessageError::Unspecific {
                value: Box::new([]),
            }),
        )),
        NOTIFICATION => Err(Malformed {
            why: format!("unreadable NOTIFICATION: {error}"),
            notification: None,
        }),
        ROUTE_REFRESH if frame.len() != 23 => Err(Malformed::new(
            format!("ROUTE-REFRESH of {} bytes (RFC 7313: 23)", frame.len()),
            BgpNotificationMessage::RouteRefreshError(RouteRefreshError::InvalidMessageLength {
                value: frame.into(),
            }),
        )),
        // A ROUTE-REFRESH for a family not negotiated is ignored (RFC 2918).
        _ => Ok(Some(Received::Discarded(format!(
            "an unreadable message of type {kind}, ignored: {error}"
        )))),
    }
}

/// What RFC 7606 makes of an UPDATE that could not be parsed.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Treat-as-withdraw or attribute-discard: for a speaker that takes no
    /// routes, nothing to do.
    Discard,
    /// Session reset, with why and the subcode.
    Reset(&'static str, UpdateMessageError),
}

/// Judges an UPDATE's body (after the header): only errors that leave its
/// routes unlocatable reset the session.
fn judge_update(body: &[u8]) -> Verdict {
    let malformed = |why| {
        Verdict::Reset(
            why,
            UpdateMessageError::MalformedAttributeList {
                value: Box::new([]),
            },
        )
    };
    let invalid_network = |why| {
        Verdict::Reset(
            why,
            UpdateMessageError::InvalidNetworkField {
                value: Box::new([]),
            },
        )
    };
    let u16_at = |i: usize| usize::from(u16::from_be_bytes([body[i], body[i + 1]]));
    // RFC 4271 §6.3, kept by RFC 7606 §5.3 (the NLRI cannot be located).
    let withdrawn_len = u16_at(0);
    if 2 + withdrawn_len + 2 > body.len() {
        return malformed("the withdrawn routes length overruns the message");
    }
    let attributes_len = u16_at(2 + withdrawn_len);
    let attributes_at = 4 + withdrawn_len;
    if attributes_at + attributes_len > body.len() {
        return malformed("the total path attribute length overruns the message");
    }
    if !prefixes_parse(&body[2..2 + withdrawn_len], 32)
        || !prefixes_parse(&body[attributes_at + attributes_len..], 32)
    {
        return invalid_network("a prefix length overruns the routes or exceeds 32");
    }
    let mut attributes = &body[attributes_at..attributes_at + attributes_len];
    let (mut reach, mut unreach) = (0, 0);
    while !attributes.is_empty() {
        // An attribute that overruns the attribute field: treat-as-withdraw
        // (RFC 7606 §4), unless it is an MP attribute.
        let Some((kind, value, rest)) = attribute(attributes) else {
            return Verdict::Discard;
        };
        match kind {
            MP_REACH_NLRI => reach += 1,
            MP_UNREACH_NLRI => unreach += 1,
            _ => {}
        }
        if (kind == MP_REACH_NLRI && !mp_reach_parses(value))
            || (kind == MP_UNREACH_NLRI && !mp_unreach_parses(value))
        {
            return Verdict::Reset(
                "MP_REACH_NLRI or MP_UNREACH_NLRI is malformed",
                UpdateMessageError::OptionalAttributeError {
                    value: Box::new([]),
                },
            );
        }
        attributes = rest;
    }
    // RFC 7606 §3 (g).
    if reach > 1 || unreach > 1 {
        return malformed("MP_REACH_NLRI or MP_UNREACH_NLRI appears twice");
    }
    Verdict::Discard
}

/// One path attribute: its type, value and what follows; `None` when its
/// header or value overruns `bytes`.
fn attribute(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let flags = *bytes.first()?;
    let kind = *bytes.get(1)?;
    let (len, at) = if flags & 0x10 != 0 {
        (
            usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])),
            4,
        )
    } else {
        (usize::from(*bytes.get(2)?), 3)
    };
    let value = bytes.get(at..at + len)?;
    Some((kind, value, &bytes[at + len..]))
}

/// Whether `bytes` are whole prefixes of at most `max` bits each.
fn prefixes_parse(mut bytes: &[u8], max: u8) -> bool {
    while let Some((&bits, rest)) = bytes.split_first() {
        let len = usize::from(bits).div_ceil(8);
        if bits > max || rest.len() < len {
            return false;
        }
        bytes = &rest[len..];
    }
    true
}

/// The most bits a prefix of AFI `afi` (unicast) may have; `None` for the
/// families whose NLRI this speaker does not read.
fn max_bits(afi: u16, safi: u8) -> Option<u8> {
    match (afi, safi) {
        (1, 1) => Some(32),
        (2, 1) => Some(128),
        _ => None,
    }
}

/// RFC 4760 §3: AFI, SAFI, next hop length, next hop, reserved, NLRI.
fn mp_reach_parses(value: &[u8]) -> bool {
    let Some(&hop_len) = value.get(3) else {
        return false;
    };
    let nlri_at = 4 + usize::from(hop_len) + 1;
    if value.len() < nlri_at {
        return false;
    }
    let afi = u16::from_be_bytes([value[0], value[1]]);
    max_bits(afi, value[2]).is_none_or(|max| prefixes_parse(&value[nlri_at..], max))
}

/// RFC 4760 §4: AFI, SAFI, withdrawn routes.
fn mp_unreach_parses(value: &[u8]) -> bool {
    if value.len() < 3 {
        return false;
    }
    let afi = u16::from_be_bytes([value[0], value[1]]);
    max_bits(afi, value[2]).is_none_or(|max| prefixes_parse(&value[3..], max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A whole UPDATE of `attributes` announcing 10.0.0.0/24.
    fn update(attributes: &[u8]) -> Vec<u8> {
        let mut body = vec![0, 0];
        body.extend_from_slice(&u16::try_from(attributes.len()).unwrap().to_be_bytes());
        body.extend_from_slice(attributes);
        body.extend_from_slice(&[24, 10, 0, 0]);
        message(UPDATE, &body)
    }

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![0xff; 16];
        m.extend_from_slice(&u16::try_from(HEADER + body.len()).unwrap().to_be_bytes());
        m.push(kind);
        m.extend_from_slice(body);
        m
    }

    /// ORIGIN IGP, an empty AS_PATH, NEXT_HOP 10.0.0.1: a valid start.
    const MANDATORY: [u8; 14] = [
        0x40, 1, 1, 0, // ORIGIN
        0x40, 2, 0, // AS_PATH
        0x40, 3, 4, 10, 0, 0, 1, // NEXT_HOP
    ];

    fn with(extra: &[u8]) -> Vec<u8> {
        let mut a = MANDATORY.to_vec();
        a.extend_from_slice(extra);
        update(&a)
    }

    fn read(bytes: &[u8]) -> Result<Option<Received>, Malformed> {
        let mut w = Wire::new();
        w.feed(bytes);
        w.next_message()
    }

    fn subcode(m: &Malformed) -> Option<(u8, u8)> {
        use BgpNotificationMessage as N;
        Some(match m.notification.as_ref()? {
            N::MessageHeaderError(e) => (1, header_subcode(e)),
            N::OpenMessageError(_) => (2, 0),
            N::UpdateMessageError(e) => (3, update_subcode(e)),
            N::RouteRefreshError(_) => (7, 1),
            other => panic!("unexpected {other:?}"),
        })
    }

    fn header_subcode(e: &MessageHeaderError) -> u8 {
        match e {
            MessageHeaderError::Unspecific { .. } => 0,
            MessageHeaderError::ConnectionNotSynchronized { .. } => 1,
            MessageHeaderError::BadMessageLength { .. } => 2,
            MessageHeaderError::BadMessageType { .. } => 3,
        }
    }

    fn update_subcode(e: &UpdateMessageError) -> u8 {
        match e {
            UpdateMessageError::Unspecific { .. } => 0,
            UpdateMessageError::MalformedAttributeList { .. } => 1,
            UpdateMessageError::OptionalAttributeError { .. } => 9,
            UpdateMessageError::InvalidNetworkField { .. } => 10,
            other => panic!("not a subcode this speaker sends: {other:?}"),
        }
    }

    #[test]
    fn a_valid_update_is_a_message() {
        assert!(matches!(
            read(&with(&[])),
            Ok(Some(Received::Message(BgpMessage::Update(_))))
        ));
    }

    /// The attribute errors RFC 7606 answers with treat-as-withdraw or
    /// attribute-discard leave the session up.
    #[test]
    fn attribute_errors_discard_the_update_and_keep_the_session() {
        let cases: [(&str, Vec<u8>); 5] = [
            ("COMMUNITIES of length 3", with(&[0xc0, 8, 3, 0, 0, 1])),
            (
                "LARGE_COMMUNITY of length 11",
                with(&[0xc0, 32, 11, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 3]),
            ),
            (
                "an AS_PATH segment that overruns the attribute",
                update(&[
                    0x40, 1, 1, 0, 0x40, 2, 4, 2, 5, 0, 0, 0x40, 3, 4, 10, 0, 0, 1,
                ]),
            ),
            (
                "ORIGIN with the optional flag",
                update(&[0xc0, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4, 10, 0, 0, 1]),
            ),
            (
                "an attribute that overruns the attribute field",
                update(&[0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 9, 10]),
            ),
        ];
        for (what, bytes) in cases {
            match read(&bytes) {
                Ok(Some(Received::Discarded(why))) => assert!(why.contains("RFC 7606"), "{why}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    /// Errors that leave the routes unlocatable reset, with the subcode
    /// that says why.
    #[test]
    fn unlocatable_routes_reset_with_the_right_subcode() {
        let mut overrun = update(&MANDATORY);
        overrun[HEADER] = 0x7f; // withdrawn routes length
        let mut attributes_overrun = update(&MANDATORY);
        attributes_overrun[HEADER + 3] = 0xff;
        let bad_prefix = {
            let mut body = vec![0, 0, 0, MANDATORY.len() as u8];
            body.extend_from_slice(&MANDATORY);
            body.extend_from_slice(&[33, 10, 0, 0, 0, 0]);
            message(UPDATE, &body)
        };
        let two_reach = with(&[
            0x80, 14, 5, 0, 1, 1, 0, 0, 0x80, 14, 5, 0, 1, 1, 0, 0, // twice, empty hop
        ]);
        let short_reach = with(&[0x80, 14, 2, 0, 1]);
        for (what, bytes, want) in [
            ("withdrawn length", overrun, (3, 1)),
            ("attribute length", attributes_overrun, (3, 1)),
            ("a /33", bad_prefix, (3, 10)),
            ("two MP_REACH_NLRI", two_reach, (3, 1)),
            ("a short MP_REACH_NLRI", short_reach, (3, 9)),
        ] {
            let bad = read(&bytes).expect_err(what);
            assert_eq!(subcode(&bad), Some(want), "{what}: {}", bad.why);
        }
    }

    #[test]
    fn header_errors_say_which_and_carry_rfc_4271s_data() {
        let mut bad_marker = message(KEEPALIVE, &[]);
        bad_marker[0] = 0;
        let bad = read(&bad_marker).unwrap_err();
        assert_eq!(subcode(&bad), Some((1, 1)));
        let bad = read(&message(KEEPALIVE, &[0])).unwrap_err();
        assert_eq!(subcode(&bad), Some((1, 2)));
        assert!(matches!(
            bad.notification,
            Some(BgpNotificationMessage::MessageHeaderError(MessageHeaderError::BadMessageLength { ref value })) if **value == [0, 20]
        ));
        let bad = read(&message(9, &[])).unwrap_err();
        assert!(matches!(
            bad.notification,
            Some(BgpNotificationMessage::MessageHeaderError(MessageHeaderError::BadMessageType { ref value })) if **value == [9]
        ));
        let bad = read(&message(UPDATE, &[0, 0])).unwrap_err();
        assert_eq!(subcode(&bad), Some((1, 2)), "an UPDATE under 23 bytes");
        // A NOTIFICATION is never answered with another.
        let bad = read(&message(NOTIFICATION, &[6, 2, 0xff, 0xff])).map(|_| ());
        if let Err(bad) = bad {
            assert!(bad.notification.is_none(), "{}", bad.why);
        }
        let bad = read(&message(ROUTE_REFRESH, &[0, 1, 0])).unwrap_err();
        assert_eq!(subcode(&bad), Some((7, 1)));
    }

    proptest! {
        /// Bytes off the network never panic the framing, whatever they are.
        #[test]
        fn any_bytes_are_a_message_an_error_or_a_wait(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8), header in any::<bool>()) {
            let mut w = Wire::new();
            if header {
                let mut h = vec![0xff; 16];
                h.extend_from_slice(&[0, 40, 2]);
                w.feed(&h);
            }
            for c in chunks {
                w.feed(&c);
                if w.next_message().is_err() {
                    break;
                }
            }
        }

        /// Whatever a well-framed UPDATE's attributes hold, the session
        /// stays up; a reset needs broken routes, and says so with an
        /// UPDATE Message Error subcode RFC 4271 §4.5 defines.
        #[test]
        fn attribute_bytes_never_reset_a_session(attributes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let bytes = update(&attributes);
            match read(&bytes) {
                Ok(Some(_)) => {}
                Ok(None) => prop_assert!(false, "a whole message waits"),
                Err(bad) => {
                    let code = subcode(&bad);
                    prop_assert!(matches!(code, Some((3, 1 | 9))), "{:?}: {}", code, bad.why);
                    prop_assert!(bad.why.contains("MP_"), "{}", bad.why);
                }
            }
        }

        /// Any UPDATE body: a message, a discard, or a reset with a subcode
        /// of RFC 4271 §4.5 — never an unspecific error.
        #[test]
        fn any_update_body_is_judged_with_a_defined_subcode(body in proptest::collection::vec(any::<u8>(), 4..300)) {
            if let Err(bad) = read(&message(UPDATE, &body)) {
                let code = subcode(&bad);
                prop_assert!(matches!(code, Some((3, 1 | 9 | 10))), "{:?}: {}", code, bad.why);
            }
        }
    }
}
