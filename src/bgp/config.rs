//! From the API's BGP kinds to what a session needs, once, with errors that
//! name the field: what the schema cannot check (or what a static file
//! skipped the schema for) ends here as a clear message, never as a panic.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnetwork::IpNetwork;

use super::peer::PeerSpec;
use super::session::{Attributes, Config, GracefulRestart};
use crate::api::{BFDProfileSpec, BGPAdvertisementSpec, BGPPeerSpec};

/// The hold time when a peer sets none (RFC 4271's suggestion, MetalLB's).
pub const DEFAULT_HOLD: u16 = 90;
/// How long one connection attempt may take by default.
pub const DEFAULT_CONNECT: Duration = Duration::from_secs(10);
/// The restart time offered with graceful restart: how long a router keeps
/// this node's routes while its speaker comes back.
pub const RESTART_TIME: u16 = 120;

/// The Secrets of `namespace` that `peers` name as `passwordSecret` (a
/// reference without a namespace means the speaker's own): the only Secrets
/// the speakers read.
pub fn password_secrets(
    peers: &[&crate::api::BGPPeer],
    namespace: &str,
) -> std::collections::BTreeSet<String> {
    peers
        .iter()
        .filter_map(|p| p.spec.password_secret.as_ref())
        .filter(|r| r.namespace.as_deref().is_none_or(|n| n == namespace))
        .map(|r| r.name.clone())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Parses a Go duration as Kubernetes writes them: `90s`, `1m30s`, `500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (write it as 90s, 1m30s or 500ms)");
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, scale) = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("µs", 1e-6),
            ("ms", 1e-3),
            ("s", 1.0),
            ("m", 60.0),
            ("h", 3600.0),
        ]
        .into_iter()
        .filter(|(u, _)| rest.starts_with(u))
        .max_by_key(|(u, _)| u.len())
        .ok_or_else(bad)?;
        rest = &rest[unit.len()..];
        total += Duration::try_from_secs_f64(number * scale).map_err(|_| bad())?;
    }
    Ok(total)
}

/// Whole seconds of a duration field, within `range` (or 0 when
/// `zero_allowed`).
fn seconds(
    field: &str,
    text: &str,
    range: std::ops::RangeInclusive<u64>,
    zero_allowed: bool,
) -> Result<u16, String> {
    let d = parse_duration(text).map_err(|e| format!("{field}: {e}"))?;
    let s = d.as_secs();
    let allowed = range.contains(&s) || (zero_allowed && s == 0);
    if !allowed {
        return Err(format!(
            "{field}: {text} is outside {}s to {}s",
            range.start(),
            range.end()
        ));
    }
    u16::try_from(s).map_err(|_| format!("{field}: {text} is too long"))
}

/// The session settings of `BGPPeer` `name`; `password` is the TCP MD5
/// password its `passwordSecret` holds. `restarting`: this speaker came back
/// from a restart with forwarding intact (graceful restart's R bit).
pub fn peer_spec(
    name: &str,
    spec: &BGPPeerSpec,
    password: Option<String>,
    bfd: Option<&BFDProfileSpec>,
    restarting: bool,
) -> Result<PeerSpec, String> {
    let at = |e: String| format!("BGPPeer {name}: spec.{e}");
    let peer: IpAddr = spec.peer_address.parse().map_err(|_| {
        at(format!(
            "peerAddress: {:?} is not an address",
            spec.peer_address
        ))
    })?;
    let source = spec
        .source_address
        .as_deref()
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| at(format!("sourceAddress: {s:?} is not an address")))
        })
        .transpose()?;
    if source.is_some_and(|s| s.is_ipv4() != peer.is_ipv4()) {
        return Err(at(
            "sourceAddress: must be of the same family as peerAddress".into(),
        ));
    }
    let hold_time = match &spec.hold_time {
        Some(t) => seconds("holdTime", t, 3..=65535, true).map_err(at)?,
        None => DEFAULT_HOLD,
    };
    // 0s is MetalLB's way of leaving the keepalive to the session; here it
    // means the default, a third of the negotiated hold time. Sending none
    // at all would let a router with a non-zero hold time drop the session.
    let keepalive = spec
        .keepalive_time
        .as_deref()
        .map(|t| seconds("keepaliveTime", t, 1..=21845, true).map_err(at))
        .transpose()?
        .filter(|k| *k > 0);
    if let Some(k) = keepalive
        && hold_time > 0
        && k >= hold_time
    {
        return Err(at("keepaliveTime: must be shorter than holdTime".into()));
    }
    let connect_time = match &spec.connect_time {
        Some(t) => Duration::from_secs(
            seconds("connectTime", t, 1..=65535, false)
                .map_err(at)?
                .into(),
        ),
        None => DEFAULT_CONNECT,
    };
    let router_id = spec
        .router_id
        .as_deref()
        .map(|r| {
            r.parse()
                .map_err(|_| at(format!("routerID: {r:?} is not an IPv4 address")))
        })
        .transpose()?;
    if let Some(p) = &password
        && p.len() > super::md5::MAX_KEY
    {
        return Err(at(format!(
            "passwordSecret: the password is {} bytes; Linux takes at most {}",
            p.len(),
            super::md5::MAX_KEY
        )));
    }
    let ebgp = spec.my_asn != spec.peer_asn;
    Ok(PeerSpec {
        name: name.to_string(),
        address: SocketAddr::new(peer, spec.peer_port),
        source,
        session: Config {
            my_asn: spec.my_asn,
            peer_asn: spec.peer_asn,
            router_id,
            hold_time,
            keepalive,
            connect_time,
            graceful_restart: spec.enable_graceful_restart.then_some(GracefulRestart {
                restart_time: RESTART_TIME,
                restarting,
            }),
        },
        ttl: match (ebgp, spec.ebgp_multi_hop) {
            (true, false) => Some(1),
            (true, true) => Some(255),
            (false, _) => None,
        },
        password,
        bfd: bfd.map(bfd_settings),
    })
}

/// A `BFDProfile`'s settings; what it leaves out keeps the session's
/// defaults (300 ms, 3, TTL 254).
pub fn bfd_settings(p: &BFDProfileSpec) -> crate::bfd::session::Settings {
    let d = crate::bfd::session::Settings::default();
    let ms = |v: Option<u32>, default: Duration| {
        v.map_or(default, |v| {
            Duration::from_millis(v.clamp(10, 60_000).into())
        })
    };
    crate::bfd::session::Settings {
        transmit_interval: ms(p.transmit_interval, d.transmit_interval),
        receive_interval: ms(p.receive_interval, d.receive_interval),
        detect_multiplier: p
            .detect_multiplier
            .map_or(d.detect_multiplier, |m| m.clamp(2, 255) as u8),
        passive: p.passive_mode.unwrap_or(d.passive),
        minimum_ttl: p
            .minimum_ttl
            .map_or(d.minimum_ttl, |t| t.clamp(1, 254) as u8),
    }
}

/// A community as written in an advertisement or an alias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommunityValue {
    /// `AS:value`.
    Standard(u32),
    /// `large:global:local1:local2`.
    Large([u32; 3]),
}

/// Parses `65000:100` or `large:65000:1:2`.
pub fn parse_community(text: &str) -> Option<CommunityValue> {
    let parts: Vec<&str> = text.split(':').collect();
    match parts[..] {
        [a, b] => Some(CommunityValue::Standard(
            (u32::from(a.parse::<u16>().ok()?) << 16) | u32::from(b.parse::<u16>().ok()?),
        )),
        ["large", g, a, b] => Some(CommunityValue::Large([
            g.parse().ok()?,
            a.parse().ok()?,
            b.parse().ok()?,
        ])),
        _ => None,
    }
}

/// The attributes and prefix length of `address` under advertisement `name`;
/// `aliases` are the `Community` objects' names.
pub fn advertisement(
    name: &str,
    spec: &BGPAdvertisementSpec,
    address: IpAddr,
    aliases: &BTreeMap<String, String>,
) -> Result<(IpNetwork, Attributes), String> {
    let mut attributes = Attributes {
        local_pref: spec.local_pref,
        ..Default::default()
    };
    for (i, c) in spec.communities.iter().enumerate() {
        let value = parse_community(c)
            .or_else(|| aliases.get(c).and_then(|v| parse_community(v)))
            .ok_or_else(|| {
                format!(
                    "BGPAdvertisement {name}: spec.communities[{i}]: {c:?} is neither a \
                     community nor the name of one in a Community object"
                )
            })?;
        match value {
            CommunityValue::Standard(v) => {
                attributes.communities.insert(v);
            }
            CommunityValue::Large(v) => {
                attributes.large_communities.insert(v);
            }
        }
    }
    let length = if address.is_ipv4() {
        spec.aggregation_length.unwrap_or(32).min(32)
    } else {
        spec.aggregation_length_v6.unwrap_or(128).min(128)
    };
    let prefix = IpNetwork::new(address, length)
        .and_then(|n| IpNetwork::new(n.network(), length))
        .map_err(|e| format!("BGPAdvertisement {name}: aggregation: {e}"))?;
    Ok((prefix, attributes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_kubernetes_writes_them() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        for bad in ["", "90", "s", "9x", "-1s", "1..5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn communities_parse_and_aliases_resolve_and_unknown_names_are_named() {
        assert_eq!(
            parse_community("65000:100"),
            Some(CommunityValue::Standard(65000 << 16 | 100))
        );
        assert_eq!(
            parse_community("large:4200000000:1:2"),
            Some(CommunityValue::Large([4_200_000_000, 1, 2]))
        );
        assert_eq!(parse_community("65536:1"), None);
        let spec = BGPAdvertisementSpec {
            communities: vec!["backbone".into(), "65000:1".into()],
            aggregation_length: Some(24),
            local_pref: Some(150),
            ..Default::default()
        };
        let aliases = [("backbone".to_string(), "large:1:2:3".to_string())].into();
        let (prefix, attrs) =
            advertisement("ad", &spec, "10.0.0.77".parse().expect("ip"), &aliases).expect("valid");
        assert_eq!(prefix, "10.0.0.0/24".parse::<IpNetwork>().expect("net"));
        assert_eq!(attrs.large_communities, [[1, 2, 3]].into());
        assert_eq!(attrs.communities, [65000 << 16 | 1].into());
        assert_eq!(attrs.local_pref, Some(150));
        let err = advertisement(
            "ad",
            &spec,
            "10.0.0.77".parse().expect("ip"),
            &BTreeMap::new(),
        )
        .expect_err("unknown alias");
        assert_eq!(
            err,
            "BGPAdvertisement ad: spec.communities[0]: \"backbone\" is neither a community nor \
             the name of one in a Community object"
        );
    }

    #[test]
    fn a_peer_gets_defaults_one_hop_ttl_for_ebgp_and_errors_name_the_field() {
        let mut spec: BGPPeerSpec = serde_json::from_value(serde_json::json!({
            "myASN": 64512, "peerASN": 64513, "peerAddress": "10.0.0.1"
        }))
        .expect("spec");
        let p = peer_spec("tor", &spec, None, None, false).expect("valid");
        assert_eq!(p.address, "10.0.0.1:179".parse().expect("addr"));
        assert_eq!(p.session.hold_time, DEFAULT_HOLD);
        assert_eq!(p.ttl, Some(1));
        spec.ebgp_multi_hop = true;
        spec.hold_time = Some("3s".into());
        spec.keepalive_time = Some("3s".into());
        assert_eq!(
            peer_spec("tor", &spec, None, None, false).expect_err("keepalive"),
            "BGPPeer tor: spec.keepaliveTime: must be shorter than holdTime"
        );
        spec.keepalive_time = None;
        spec.hold_time = Some("2s".into());
        assert_eq!(
            peer_spec("tor", &spec, None, None, false).expect_err("hold"),
            "BGPPeer tor: spec.holdTime: 2s is outside 3s to 65535s"
        );
        // MetalLB's own sample: 0s leaves the keepalive to the hold time.
        spec.hold_time = Some("9m0s".into());
        spec.keepalive_time = Some("0s".into());
        let p = peer_spec("tor", &spec, None, None, false).expect("keepalive 0s");
        assert_eq!((p.session.hold_time, p.session.keepalive), (540, None));
        spec.keepalive_time = None;
        spec.hold_time = Some("0s".into());
        assert_eq!(
            peer_spec("tor", &spec, None, None, false)
                .expect("0s: no keepalives")
                .ttl,
            Some(255)
        );
        assert!(
            peer_spec("tor", &spec, Some("x".repeat(81)), None, false)
                .expect_err("long password")
                .contains("passwordSecret")
        );
    }
}
