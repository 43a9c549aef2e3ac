//! BGP: ironlb's speakers advertise Service addresses to routers themselves.
//!
//! [`session`] is one session as a pure state machine; [`wire`] frames its
//! messages on a byte stream; the sockets that carry them are a thin adapter
//! ([`peer`]).
//!
//! Messages are built and parsed with `netgauze-bgp-pkt` (Apache-2.0, kept up
//! by the NetGauze project, used in production BMP/BGP collectors). It covers
//! what ironlb needs — 4-byte ASNs, MP_REACH/MP_UNREACH for IPv6, route
//! refresh, graceful restart, standard and large communities — with typed
//! messages in and out, and its codec tracks the 4-byte-ASN negotiation. The
//! alternatives fell short: `bgp-rs` and `zettabgp` only parse (or build
//! with hand-set flags), and `bgpkit-parser` reads MRT dumps, not sessions.

pub mod config;
pub mod identity;
pub mod md5;
pub mod peer;
pub mod session;
pub mod wire;
