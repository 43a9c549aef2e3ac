//! Address families, inclusive address ranges, and the parser for pool entries.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// An IP address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The highest address of the family, as a number.
    pub(crate) fn max(self) -> u128 {
        match self {
            Family::V4 => u128::from(u32::MAX),
            Family::V6 => u128::MAX,
        }
    }

    /// The other family.
    pub fn other(self) -> Self {
        match self {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// An address as a number within its family, so ranges are plain integer
/// intervals for both families.
pub(crate) fn to_number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The inverse of [`to_number`]. A V4 number above `u32::MAX` cannot come from
/// this crate's arithmetic, which stays within [`Family::max`].
pub(crate) fn from_number(family: Family, n: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(
            u32::try_from(n)
                .expect("IPv4 numbers stay within u32: arithmetic is bounded by Family::max"),
        )),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// An inclusive range of addresses of one family; it can't be reversed or mixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddressRange {
    family: Family,
    start: u128,
    end: u128,
}

/// Why a pool entry could not be read. The entry itself is named by the caller
/// (see [`crate::ipam::PoolError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The entry is empty or only white space.
    #[error("the entry is empty")]
    Empty,
    /// Not a CIDR, a range or an address.
    #[error(
        "not a CIDR (192.168.10.0/24, fd00::/120), a range (192.168.10.10-192.168.10.50) or a single address"
    )]
    Unparsable,
    /// The prefix length is not a number or too long for the family.
    #[error("prefix length /{prefix} is not valid for an {family} address (at most /{max})")]
    BadPrefix {
        /// The prefix as written.
        prefix: String,
        /// The address's family.
        family: Family,
        /// The longest prefix of that family.
        max: u8,
    },
    /// A CIDR whose address is not the network address.
    #[error(
        "host bits are set; did you mean {network} (the whole network) or {address} (one address)?"
    )]
    HostBitsSet {
        /// The CIDR with the host bits cleared.
        network: IpNetwork,
        /// The single address that was written.
        address: IpNetwork,
    },
    /// A range whose end comes before its start.
    #[error("the range is reversed: it ends at {end}, before its start {start}")]
    Reversed {
        /// The range's first address as written.
        start: IpAddr,
        /// The range's last address as written.
        end: IpAddr,
    },
    /// The entry holds addresses of a special-purpose block (RFC 6890) that
    /// no Service can use: loopback, multicast, link-local and the like.
    #[error("it includes {block}, {kind}, which no Service can be reached on")]
    SpecialPurpose {
        /// The first such block the entry reaches into.
        block: IpNetwork,
        /// What the block is for, in words.
        kind: &'static str,
    },
    /// A range with one IPv4 and one IPv6 end.
    #[error("the range mixes families: {start} is {start_family} but {end} is {end_family}")]
    MixedFamilies {
        /// The range's first address.
        start: IpAddr,
        /// Its family.
        start_family: Family,
        /// The range's last address.
        end: IpAddr,
        /// Its family.
        end_family: Family,
    },
}

impl AddressRange {
    /// The range from `start` to `end`, both included.
    pub fn new(start: IpAddr, end: IpAddr) -> Result<Self, EntryError> {
        let (start_family, end_family) = (Family::of(start), Family::of(end));
        if start_family != end_family {
            return Err(EntryError::MixedFamilies {
                start,
                start_family,
                end,
                end_family,
            });
        }
        let (s, e) = (to_number(start), to_number(end));
        if e < s {
            return Err(EntryError::Reversed { start, end });
        }
        Ok(Self {
            family: start_family,
            start: s,
            end: e,
        })
    }

    /// The range holding only `ip`.
    pub fn single(ip: IpAddr) -> Self {
        let n = to_number(ip);
        Self {
            family: Family::of(ip),
            start: n,
            end: n,
        }
    }

    /// Reads a pool entry: a CIDR (`10.0.0.0/24`), a range (`10.0.0.10-10.0.0.20`,
    /// white space around the dash allowed) or a single address, IPv4 or IPv6.
    /// An entry reaching into a [special-purpose block](SPECIAL_PURPOSE) is
    /// refused: handing out `127.0.0.1` or `224.0.0.1` would give a Service an
    /// address that no client can reach.
    pub fn parse(entry: &str) -> Result<Self, EntryError> {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(EntryError::Empty);
        }
        let range = if let Some((start, end)) = entry.split_once('-') {
            let start = parse_ip(start.trim())?;
            let end = parse_ip(end.trim())?;
            Self::new(start, end)?
        } else if let Some((ip, prefix)) = entry.split_once('/') {
            parse_cidr(parse_ip(ip.trim())?, prefix.trim())?
        } else {
            Self::single(parse_ip(entry)?)
        };
        match range.special_purpose() {
            Some((block, kind)) => Err(EntryError::SpecialPurpose { block, kind }),
            None => Ok(range),
        }
    }

    /// The first special-purpose block the range reaches into, if any.
    pub fn special_purpose(&self) -> Option<(IpNetwork, &'static str)> {
        SPECIAL_PURPOSE.iter().find_map(|(text, kind)| {
            let block: IpNetwork = text.parse().expect("the table holds valid CIDRs");
            let range = parse_cidr(block.ip(), &block.prefix().to_string())
                .expect("the table's CIDRs are network addresses");
            self.overlaps(&range).then_some((block, *kind))
        })
    }

    /// The family of every address in the range.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The first address.
    pub fn start(&self) -> IpAddr {
        from_number(self.family, self.start)
    }

    /// The last address.
    pub fn end(&self) -> IpAddr {
        from_number(self.family, self.end)
    }

    pub(crate) fn start_number(&self) -> u128 {
        self.start
    }

    pub(crate) fn end_number(&self) -> u128 {
        self.end
    }

    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family && (self.start..=self.end).contains(&to_number(ip))
    }

    /// Whether the two ranges share an address.
    pub fn overlaps(&self, other: &AddressRange) -> bool {
        self.family == other.family && self.start <= other.end && other.start <= self.end
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start())
        } else {
            write!(f, "{}-{}", self.start(), self.end())
        }
    }
}

/// Blocks no Service address may come from (RFC 6890's registries, the
/// parts a LAN client cannot reach a Service on), in the order an entry is
/// checked against them. Private and documentation ranges are fine: they are
/// what pools are made of.
pub const SPECIAL_PURPOSE: [(&str, &str); 10] = [
    ("0.0.0.0/8", "the unspecified \"this network\" block"),
    ("127.0.0.0/8", "the loopback block"),
    ("169.254.0.0/16", "the link-local block"),
    ("224.0.0.0/4", "the multicast block"),
    ("255.255.255.255/32", "the broadcast address"),
    ("::/128", "the unspecified address"),
    ("::1/128", "the loopback address"),
    ("::ffff:0:0/96", "the IPv4-mapped block"),
    ("fe80::/10", "the link-local block"),
    ("ff00::/8", "the multicast block"),
];

fn parse_ip(text: &str) -> Result<IpAddr, EntryError> {
    text.parse().map_err(|_| EntryError::Unparsable)
}

fn parse_cidr(ip: IpAddr, prefix_text: &str) -> Result<AddressRange, EntryError> {
    let family = Family::of(ip);
    let max = match family {
        Family::V4 => 32,
        Family::V6 => 128,
    };
    let bad_prefix = || EntryError::BadPrefix {
        prefix: prefix_text.to_string(),
        family,
        max,
    };
    let prefix: u8 = prefix_text.parse().map_err(|_| bad_prefix())?;
    let network = IpNetwork::new(ip, prefix).map_err(|_| bad_prefix())?;
    if network.network() != ip {
        return Err(EntryError::HostBitsSet {
            network: IpNetwork::new(network.network(), prefix)
                .expect("the prefix was just accepted for this family"),
            address: IpNetwork::new(ip, max).expect("the full length is valid for its family"),
        });
    }
    AddressRange::new(network.network(), network.broadcast_or_last())
}

/// `ipnetwork` calls the last address of an IPv6 network nothing in particular;
/// this names it once for both families.
trait LastAddress {
    fn broadcast_or_last(&self) -> IpAddr;
}

impl LastAddress for IpNetwork {
    fn broadcast_or_last(&self) -> IpAddr {
        match self {
            IpNetwork::V4(n) => IpAddr::V4(n.broadcast()),
            IpNetwork::V6(n) => {
                let host_bits = 128 - u32::from(n.prefix());
                let mask = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | mask))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_an_ipv4_cidr() {
        let r = AddressRange::parse("10.0.0.0/24").unwrap();
        assert_eq!((r.start(), r.end()), (ip("10.0.0.0"), ip("10.0.0.255")));
        assert_eq!(r.family(), Family::V4);
    }

    #[test]
    fn parses_an_ipv6_cidr() {
        let r = AddressRange::parse("fd00::/120").unwrap();
        assert_eq!((r.start(), r.end()), (ip("fd00::"), ip("fd00::ff")));
        let wide = AddressRange::parse("2000::/3").unwrap();
        assert_eq!(wide.end(), ip("3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        let one = AddressRange::parse("fd00::7/128").unwrap();
        assert_eq!((one.start(), one.end()), (ip("fd00::7"), ip("fd00::7")));
    }

    #[test]
    fn parses_ranges_of_both_families_with_or_without_spaces() {
        let r = AddressRange::parse("10.0.0.10-10.0.0.20").unwrap();
        assert_eq!((r.start(), r.end()), (ip("10.0.0.10"), ip("10.0.0.20")));
        let r = AddressRange::parse(" fd00::10 - fd00::20 ").unwrap();
        assert_eq!((r.start(), r.end()), (ip("fd00::10"), ip("fd00::20")));
    }

    #[test]
    fn parses_a_single_address() {
        let r = AddressRange::parse("192.168.1.7").unwrap();
        assert_eq!((r.start(), r.end()), (ip("192.168.1.7"), ip("192.168.1.7")));
    }

    #[test]
    fn host_bits_suggest_the_network_and_the_single_address() {
        let err = AddressRange::parse("10.0.0.5/24").unwrap_err();
        assert_eq!(
            err.to_string(),
            "host bits are set; did you mean 10.0.0.0/24 (the whole network) or 10.0.0.5/32 (one address)?"
        );
        let err = AddressRange::parse("fd00::1/64").unwrap_err();
        assert!(err.to_string().contains("did you mean fd00::/64"), "{err}");
    }

    #[test]
    fn special_purpose_entries_are_refused_naming_the_block() {
        for (entry, block, kind) in [
            ("0.0.0.0/8", "0.0.0.0/8", "unspecified"),
            ("0.0.0.7", "0.0.0.0/8", "unspecified"),
            ("0.0.0.0/0", "0.0.0.0/8", "unspecified"),
            ("127.0.0.1", "127.0.0.0/8", "loopback"),
            ("126.255.255.250-127.0.0.3", "127.0.0.0/8", "loopback"),
            ("169.254.10.0/24", "169.254.0.0/16", "link-local"),
            ("224.0.0.1", "224.0.0.0/4", "multicast"),
            ("239.255.255.250", "224.0.0.0/4", "multicast"),
            ("255.255.255.255", "255.255.255.255/32", "broadcast"),
            ("255.255.255.0/24", "255.255.255.255/32", "broadcast"),
            ("::", "::/128", "unspecified"),
            ("::/0", "::/128", "unspecified"),
            ("::1", "::1/128", "loopback"),
            ("::ffff:10.0.0.1", "::ffff:0.0.0.0/96", "IPv4-mapped"),
            ("fe80::1-fe80::9", "fe80::/10", "link-local"),
            ("ff02::1", "ff00::/8", "multicast"),
        ] {
            let err = AddressRange::parse(entry).unwrap_err();
            let EntryError::SpecialPurpose { block: b, kind: k } = &err else {
                panic!("{entry}: expected SpecialPurpose, got {err:?}");
            };
            assert_eq!(b.to_string(), block, "{entry}");
            assert!(k.contains(kind), "{entry}: {k}");
            assert!(err.to_string().contains(block), "{err}");
        }
        for fine in [
            "1.0.0.0/8",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "223.255.255.255",
            "240.0.0.0-255.255.255.254",
            "::2",
            "fd00::/8",
            "fec0::1",
        ] {
            assert!(AddressRange::parse(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn a_reversed_range_is_refused_with_both_ends() {
        let err = AddressRange::parse("10.0.0.20-10.0.0.10").unwrap_err();
        assert_eq!(
            err,
            EntryError::Reversed {
                start: ip("10.0.0.20"),
                end: ip("10.0.0.10")
            }
        );
        assert!(
            err.to_string()
                .contains("ends at 10.0.0.10, before its start 10.0.0.20")
        );
    }

    #[test]
    fn a_range_of_mixed_families_is_refused() {
        let err = AddressRange::parse("10.0.0.1-fd00::1").unwrap_err();
        assert!(matches!(err, EntryError::MixedFamilies { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("10.0.0.1 is IPv4 but fd00::1 is IPv6"),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_refused() {
        for entry in [
            "ten.0.0.0/8",
            "10.0.0",
            "10.0.0.1-",
            "-10.0.0.1",
            "a-b-c",
            "10.0.0.1-10.0.0.0/24",
        ] {
            assert_eq!(
                AddressRange::parse(entry),
                Err(EntryError::Unparsable),
                "{entry}"
            );
        }
        assert_eq!(AddressRange::parse("   "), Err(EntryError::Empty));
    }

    #[test]
    fn a_prefix_too_long_or_not_a_number_is_refused() {
        for (entry, prefix) in [
            ("10.0.0.0/33", "33"),
            ("fd00::/129", "129"),
            ("10.0.0.0/x", "x"),
            ("10.0.0.0/24/8", "24/8"),
        ] {
            match AddressRange::parse(entry) {
                Err(EntryError::BadPrefix { prefix: p, .. }) => assert_eq!(p, prefix),
                other => panic!("{entry}: expected BadPrefix, got {other:?}"),
            }
        }
    }

    #[test]
    fn overlap_and_containment() {
        let a = AddressRange::parse("10.0.0.0/30").unwrap();
        let b = AddressRange::parse("10.0.0.3-10.0.0.9").unwrap();
        let c = AddressRange::parse("10.0.0.4/30").unwrap();
        let v6 = AddressRange::parse("::a00:0/126").unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        assert!(!a.overlaps(&v6), "families never overlap");
        assert!(a.contains(ip("10.0.0.3")) && !a.contains(ip("10.0.0.4")));
    }

    #[test]
    fn displays_as_a_range_or_an_address() {
        assert_eq!(
            AddressRange::parse("10.0.0.0/31").unwrap().to_string(),
            "10.0.0.0-10.0.0.1"
        );
        assert_eq!(
            AddressRange::parse("fd00::1").unwrap().to_string(),
            "fd00::1"
        );
    }
}
