//! ARP (RFC 826, RFC 5227) and Neighbor Discovery (RFC 4861 §4.3, §4.4) frames:
//! build and parse, on `pnet`'s packet types. Pure: bytes in, bytes out.
//!
//! A frame that is not one of these four messages, or is malformed, is refused
//! with a [`DropReason`], never a panic: these bytes come from anyone on the LAN.

use std::net::{Ipv4Addr, Ipv6Addr};

use pnet::packet::Packet;
use pnet::packet::arp::{ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket};
use pnet::packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet::packet::icmpv6::{Icmpv6Code, Icmpv6Packet, Icmpv6Types, MutableIcmpv6Packet, checksum};
use pnet::packet::ip::IpNextHeaderProtocols;
use pnet::packet::ipv6::{Ipv6Packet, MutableIpv6Packet};
pub use pnet::util::MacAddr;

const ETH_LEN: usize = 14;
const ARP_LEN: usize = 28;
const IPV6_LEN: usize = 40;
/// An NS or NA without options: type, code, checksum, 4 bytes, target.
const ND_LEN: usize = 24;
/// Source/Target Link-Layer Address option for Ethernet (RFC 4861 §4.6.1).
const LL_OPTION_LEN: usize = 8;
const OPTION_SOURCE_LL: u8 = 1;
const OPTION_TARGET_LL: u8 = 2;
const FLAG_ROUTER: u8 = 0x80;
const FLAG_SOLICITED: u8 = 0x40;
const FLAG_OVERRIDE: u8 = 0x20;

/// An ARP operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpOp {
    /// Who has `target_ip`?
    Request,
    /// `sender_ip` is at `sender_mac`.
    Reply,
}

/// An Ethernet/IPv4 ARP message with its Ethernet addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arp {
    /// Ethernet source.
    pub eth_src: MacAddr,
    /// Ethernet destination.
    pub eth_dst: MacAddr,
    /// Request or reply.
    pub op: ArpOp,
    /// Sender hardware address.
    pub sender_mac: MacAddr,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address (zero in a request).
    pub target_mac: MacAddr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

/// A Neighbor Solicitation (RFC 4861 §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighborSolicit {
    /// Ethernet source.
    pub eth_src: MacAddr,
    /// Ethernet destination.
    pub eth_dst: MacAddr,
    /// IPv6 source (`::` during duplicate address detection).
    pub src_ip: Ipv6Addr,
    /// IPv6 destination: the target's solicited-node group, or the target itself
    /// for a unicast reachability probe.
    pub dst_ip: Ipv6Addr,
    /// The address asked about.
    pub target: Ipv6Addr,
    /// The Source Link-Layer Address option; unicast probes may omit it.
    pub source_ll: Option<MacAddr>,
}

/// A Neighbor Advertisement (RFC 4861 §4.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighborAdvert {
    /// Ethernet source.
    pub eth_src: MacAddr,
    /// Ethernet destination.
    pub eth_dst: MacAddr,
    /// IPv6 source.
    pub src_ip: Ipv6Addr,
    /// IPv6 destination.
    pub dst_ip: Ipv6Addr,
    /// The address advertised.
    pub target: Ipv6Addr,
    /// The R flag.
    pub router: bool,
    /// The S flag: an answer to a solicitation.
    pub solicited: bool,
    /// The O flag: replace cached link-layer addresses.
    pub override_: bool,
    /// The Target Link-Layer Address option.
    pub target_ll: Option<MacAddr>,
}

/// A frame the announcer understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// ARP.
    Arp(Arp),
    /// A Neighbor Solicitation.
    NeighborSolicit(NeighborSolicit),
    /// A Neighbor Advertisement.
    NeighborAdvert(NeighborAdvert),
}

/// Why a frame was not accepted; also a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DropReason {
    /// Shorter than its headers say.
    #[error("truncated")]
    Truncated,
    /// Neither ARP nor IPv6.
    #[error("not ARP or IPv6")]
    OtherEtherType,
    /// ARP for something other than Ethernet and IPv4.
    #[error("ARP not for Ethernet/IPv4")]
    NotEthernetIpv4,
    /// An ARP operation other than request or reply.
    #[error("unknown ARP operation")]
    UnknownArpOperation,
    /// IPv6 that is not ICMPv6 (extension headers included: NDP never uses them).
    #[error("not ICMPv6")]
    NotIcmpv6,
    /// ICMPv6 that is neither NS nor NA.
    #[error("not a neighbor solicitation or advertisement")]
    NotNeighborDiscovery,
    /// RFC 4861 §7.1.1: hop limit must be 255 (the sender is on-link).
    #[error("hop limit is not 255")]
    HopLimit,
    /// RFC 4861 §7.1.1: code must be 0.
    #[error("ICMPv6 code is not 0")]
    Code,
    /// The ICMPv6 checksum is wrong.
    #[error("bad ICMPv6 checksum")]
    Checksum,
    /// An option of length 0 or running past the end.
    #[error("malformed NDP option")]
    Option,
    /// The target is a multicast address.
    #[error("multicast target")]
    MulticastTarget,
}

impl DropReason {
    /// The reason as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::OtherEtherType => "other_ethertype",
            DropReason::NotEthernetIpv4 => "arp_not_ethernet_ipv4",
            DropReason::UnknownArpOperation => "arp_unknown_operation",
            DropReason::NotIcmpv6 => "not_icmpv6",
            DropReason::NotNeighborDiscovery => "not_neighbor_discovery",
            DropReason::HopLimit => "hop_limit",
            DropReason::Code => "icmpv6_code",
            DropReason::Checksum => "checksum",
            DropReason::Option => "ndp_option",
            DropReason::MulticastTarget => "multicast_target",
        }
    }
}

impl Message {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Arp(a) => encode_arp(a),
            Message::NeighborSolicit(ns) => encode_nd(
                ns.eth_src,
                ns.eth_dst,
                ns.src_ip,
                ns.dst_ip,
                Icmpv6Types::NeighborSolicit.0,
                0,
                ns.target,
                ns.source_ll.map(|m| (OPTION_SOURCE_LL, m)),
            ),
            Message::NeighborAdvert(na) => {
                let flags = (if na.router { FLAG_ROUTER } else { 0 })
                    | (if na.solicited { FLAG_SOLICITED } else { 0 })
                    | (if na.override_ { FLAG_OVERRIDE } else { 0 });
                encode_nd(
                    na.eth_src,
                    na.eth_dst,
                    na.src_ip,
                    na.dst_ip,
                    Icmpv6Types::NeighborAdvert.0,
                    flags,
                    na.target,
                    na.target_ll.map(|m| (OPTION_TARGET_LL, m)),
                )
            }
        }
    }

    /// Reads a frame.
    pub fn decode(frame: &[u8]) -> Result<Self, DropReason> {
        let eth = EthernetPacket::new(frame).ok_or(DropReason::Truncated)?;
        match eth.get_ethertype() {
            EtherTypes::Arp => decode_arp(&eth).map(Message::Arp),
            EtherTypes::Ipv6 => decode_nd(&eth),
            _ => Err(DropReason::OtherEtherType),
        }
    }
}

fn encode_arp(a: &Arp) -> Vec<u8> {
    let mut buf = vec![0u8; ETH_LEN + ARP_LEN];
    {
        let mut eth = MutableEthernetPacket::new(&mut buf).expect("buffer fits the header");
        eth.set_source(a.eth_src);
        eth.set_destination(a.eth_dst);
        eth.set_ethertype(EtherTypes::Arp);
    }
    let mut arp = MutableArpPacket::new(&mut buf[ETH_LEN..]).expect("buffer fits ARP");
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    arp.set_operation(match a.op {
        ArpOp::Request => ArpOperations::Request,
        ArpOp::Reply => ArpOperations::Reply,
    });
    arp.set_sender_hw_addr(a.sender_mac);
    arp.set_sender_proto_addr(a.sender_ip);
    arp.set_target_hw_addr(a.target_mac);
    arp.set_target_proto_addr(a.target_ip);
    buf
}

fn decode_arp(eth: &EthernetPacket<'_>) -> Result<Arp, DropReason> {
    let payload = eth.payload();
    if payload.len() < ARP_LEN {
        return Err(DropReason::Truncated);
    }
    let arp = ArpPacket::new(payload).ok_or(DropReason::Truncated)?;
    if arp.get_hardware_type() != ArpHardwareTypes::Ethernet
        || arp.get_protocol_type() != EtherTypes::Ipv4
        || arp.get_hw_addr_len() != 6
        || arp.get_proto_addr_len() != 4
    {
        return Err(DropReason::NotEthernetIpv4);
    }
    let op = match arp.get_operation() {
        ArpOperations::Request => ArpOp::Request,
        ArpOperations::Reply => ArpOp::Reply,
        _ => return Err(DropReason::UnknownArpOperation),
    };
    Ok(Arp {
        eth_src: eth.get_source(),
        eth_dst: eth.get_destination(),
        op,
        sender_mac: arp.get_sender_hw_addr(),
        sender_ip: arp.get_sender_proto_addr(),
        target_mac: arp.get_target_hw_addr(),
        target_ip: arp.get_target_proto_addr(),
    })
}

#[allow(clippy::too_many_arguments)] // one frame's fields; the two callers name them
fn encode_nd(
    eth_src: MacAddr,
    eth_dst: MacAddr,
    src_ip: Ipv6Addr,
    dst_ip: Ipv6Addr,
    icmp_type: u8,
    flags: u8,
    target: Ipv6Addr,
    option: Option<(u8, MacAddr)>,
) -> Vec<u8> {
    let icmp_len = ND_LEN + option.map_or(0, |_| LL_OPTION_LEN);
    let mut buf = vec![0u8; ETH_LEN + IPV6_LEN + icmp_len];
    {
        let mut eth = MutableEthernetPacket::new(&mut buf).expect("buffer fits the header");
        eth.set_source(eth_src);
        eth.set_destination(eth_dst);
        eth.set_ethertype(EtherTypes::Ipv6);
    }
    {
        let mut ip = MutableIpv6Packet::new(&mut buf[ETH_LEN..]).expect("buffer fits IPv6");
        ip.set_version(6);
        ip.set_payload_length(u16::try_from(icmp_len).expect("NDP messages are small"));
        ip.set_next_header(IpNextHeaderProtocols::Icmpv6);
        ip.set_hop_limit(255);
        ip.set_source(src_ip);
        ip.set_destination(dst_ip);
    }
    let icmp = &mut buf[ETH_LEN + IPV6_LEN..];
    icmp[0] = icmp_type;
    icmp[4] = flags;
    icmp[8..24].copy_from_slice(&target.octets());
    if let Some((kind, mac)) = option {
        icmp[24] = kind;
        icmp[25] = 1; // in units of 8 octets
        icmp[26..32].copy_from_slice(&mac.octets());
    }
    let mut packet = MutableIcmpv6Packet::new(icmp).expect("buffer fits ICMPv6");
    packet.set_icmpv6_code(Icmpv6Code(0));
    let sum = checksum(&packet.to_immutable(), &src_ip, &dst_ip);
    packet.set_checksum(sum);
    buf
}

fn decode_nd(eth: &EthernetPacket<'_>) -> Result<Message, DropReason> {
    let ip = Ipv6Packet::new(eth.payload()).ok_or(DropReason::Truncated)?;
    if ip.get_next_header() != IpNextHeaderProtocols::Icmpv6 {
        return Err(DropReason::NotIcmpv6);
    }
    let declared = usize::from(ip.get_payload_length());
    let body = eth
        .payload()
        .get(IPV6_LEN..IPV6_LEN + declared)
        .ok_or(DropReason::Truncated)?;
    if body.len() < 4 {
        return Err(DropReason::Truncated);
    }
    let icmp_type = body[0];
    let is_ns = icmp_type == Icmpv6Types::NeighborSolicit.0;
    if !is_ns && icmp_type != Icmpv6Types::NeighborAdvert.0 {
        return Err(DropReason::NotNeighborDiscovery);
    }
    if body.len() < ND_LEN {
        return Err(DropReason::Truncated);
    }
    if ip.get_hop_limit() != 255 {
        return Err(DropReason::HopLimit);
    }
    if body[1] != 0 {
        return Err(DropReason::Code);
    }
    let (src_ip, dst_ip) = (ip.get_source(), ip.get_destination());
    let packet = Icmpv6Packet::new(body).ok_or(DropReason::Truncated)?;
    if checksum(&packet, &src_ip, &dst_ip) != packet.get_checksum() {
        return Err(DropReason::Checksum);
    }
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&body[8..24]);
    let target = Ipv6Addr::from(octets);
    if target.is_multicast() {
        return Err(DropReason::MulticastTarget);
    }
    let wanted = if is_ns {
        OPTION_SOURCE_LL
    } else {
        OPTION_TARGET_LL
    };
    let ll = link_layer_option(&body[ND_LEN..], wanted)?;
    let (eth_src, eth_dst) = (eth.get_source(), eth.get_destination());
    Ok(if is_ns {
        Message::NeighborSolicit(NeighborSolicit {
            eth_src,
            eth_dst,
            src_ip,
            dst_ip,
            target,
            source_ll: ll,
        })
    } else {
        let flags = body[4];
        Message::NeighborAdvert(NeighborAdvert {
            eth_src,
            eth_dst,
            src_ip,
            dst_ip,
            target,
            router: flags & FLAG_ROUTER != 0,
            solicited: flags & FLAG_SOLICITED != 0,
            override_: flags & FLAG_OVERRIDE != 0,
            target_ll: ll,
        })
    })
}

/// Walks the options by hand: `pnet`'s option iterator trusts the length byte,
/// and RFC 4861 §4.6 says an option of length 0 makes the whole message invalid.
fn link_layer_option(mut options: &[u8], wanted: u8) -> Result<Option<MacAddr>, DropReason> {
    let mut found = None;
    while !options.is_empty() {
        if options.len() < 2 {
            return Err(DropReason::Option);
        }
        let len = usize::from(options[1]) * 8;
        if len == 0 || len > options.len() {
            return Err(DropReason::Option);
        }
        if options[0] == wanted && len >= LL_OPTION_LEN && found.is_none() {
            let m = &options[2..8];
            found = Some(MacAddr::new(m[0], m[1], m[2], m[3], m[4], m[5]));
        }
        options = &options[len..];
    }
    Ok(found)
}

/// The solicited-node multicast group of `ip` (RFC 4291 §2.7.1): ff02::1:ffXX:XXXX.
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet address of an IPv6 multicast group (RFC 2464 §7): 33:33 and its
/// last 32 bits.
pub fn multicast_mac(group: Ipv6Addr) -> MacAddr {
    let o = group.octets();
    MacAddr::new(0x33, 0x33, o[12], o[13], o[14], o[15])
}

/// ff02::1, every node on the link.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The reply to an ARP request for one of our addresses.
pub fn arp_reply(our_mac: MacAddr, request: &Arp) -> Arp {
    Arp {
        eth_src: our_mac,
        eth_dst: request.sender_mac,
        op: ArpOp::Reply,
        sender_mac: our_mac,
        sender_ip: request.target_ip,
        target_mac: request.sender_mac,
        target_ip: request.sender_ip,
    }
}

/// A gratuitous ARP announcing `ip` at `our_mac` to the whole segment, in the
/// request form of RFC 5227 §3 (sender and target address both `ip`), which
/// every common stack uses to update an existing cache entry.
pub fn gratuitous_arp(our_mac: MacAddr, ip: Ipv4Addr) -> Arp {
    Arp {
        eth_src: our_mac,
        eth_dst: MacAddr::broadcast(),
        op: ArpOp::Request,
        sender_mac: our_mac,
        sender_ip: ip,
        target_mac: MacAddr::zero(),
        target_ip: ip,
    }
}

/// An ARP request for `target` (what a client sends).
pub fn arp_request(our_mac: MacAddr, our_ip: Ipv4Addr, target: Ipv4Addr) -> Arp {
    Arp {
        eth_src: our_mac,
        eth_dst: MacAddr::broadcast(),
        op: ArpOp::Request,
        sender_mac: our_mac,
        sender_ip: our_ip,
        target_mac: MacAddr::zero(),
        target_ip: target,
    }
}

/// The answer to a solicitation for one of our addresses (RFC 4861 §7.2.4):
/// unicast back to the solicitor, or to all nodes when it has no address yet.
/// A probe without a Source Link-Layer option is answered at its Ethernet source.
pub fn neighbor_advert_for(our_mac: MacAddr, ns: &NeighborSolicit) -> NeighborAdvert {
    let dad = ns.src_ip.is_unspecified();
    NeighborAdvert {
        eth_src: our_mac,
        eth_dst: if dad {
            multicast_mac(ALL_NODES)
        } else {
            ns.source_ll.unwrap_or(ns.eth_src)
        },
        src_ip: ns.target,
        dst_ip: if dad { ALL_NODES } else { ns.src_ip },
        target: ns.target,
        router: false,
        solicited: !dad,
        override_: true,
        target_ll: Some(our_mac),
    }
}

/// An unsolicited advertisement of `ip` at `our_mac` to all nodes, with the
/// override flag so caches switch at once (RFC 4861 §7.2.6).
pub fn unsolicited_advert(our_mac: MacAddr, ip: Ipv6Addr) -> NeighborAdvert {
    NeighborAdvert {
        eth_src: our_mac,
        eth_dst: multicast_mac(ALL_NODES),
        src_ip: ip,
        dst_ip: ALL_NODES,
        target: ip,
        router: false,
        solicited: false,
        override_: true,
        target_ll: Some(our_mac),
    }
}

/// A solicitation for `target` (what a client sends), to its solicited-node group.
pub fn neighbor_solicit(our_mac: MacAddr, our_ip: Ipv6Addr, target: Ipv6Addr) -> NeighborSolicit {
    let group = solicited_node(target);
    NeighborSolicit {
        eth_src: our_mac,
        eth_dst: multicast_mac(group),
        src_ip: our_ip,
        dst_ip: group,
        target,
        source_ll: Some(our_mac),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x0a);
    const B: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x0b);

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn a_gratuitous_arp_matches_the_wire_format() {
        let frame = Message::Arp(gratuitous_arp(A, Ipv4Addr::new(192, 168, 10, 1))).encode();
        let expected = hex("ffffffffffff 02000000000a 0806 \
             0001 0800 06 04 0001 02000000000a c0a80a01 000000000000 c0a80a01");
        assert_eq!(frame, expected);
    }

    #[test]
    fn an_arp_reply_answers_the_asker() {
        let request = arp_request(
            B,
            Ipv4Addr::new(192, 168, 10, 50),
            Ipv4Addr::new(192, 168, 10, 1),
        );
        let reply = arp_reply(A, &request);
        let frame = Message::Arp(reply).encode();
        let expected = hex("02000000000b 02000000000a 0806 \
             0001 0800 06 04 0002 02000000000a c0a80a01 02000000000b c0a80a32");
        assert_eq!(frame, expected);
    }

    #[test]
    fn a_neighbor_solicitation_matches_the_wire_format_with_its_checksum() {
        let ns = neighbor_solicit(B, "fe80::b".parse().unwrap(), "fd00::1".parse().unwrap());
        let frame = Message::NeighborSolicit(ns).encode();
        // Checksum 0x7c05 computed apart from this code (RFC 4443 §2.3 over the
        // pseudo-header fe80::b → ff02::1:ff00:1, length 32, next header 58).
        let expected = hex("3333ff000001 02000000000b 86dd \
             60000000 0020 3a ff fe80000000000000000000000000000b ff0200000000000000000001ff000001 \
             87 00 7c05 00000000 fd000000000000000000000000000001 01 01 02000000000b");
        assert_eq!(frame, expected);
        assert_eq!(Message::decode(&frame), Ok(Message::NeighborSolicit(ns)));
    }

    #[test]
    fn solicited_node_groups_and_their_macs() {
        let g = solicited_node("fd00::12:3456".parse().unwrap());
        assert_eq!(g, "ff02::1:ff12:3456".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            multicast_mac(g),
            MacAddr(0x33, 0x33, 0xff, 0x12, 0x34, 0x56)
        );
    }

    #[test]
    fn a_probe_without_source_link_layer_is_answered_at_its_ethernet_source() {
        let mut ns = neighbor_solicit(B, "fd00::50".parse().unwrap(), "fd00::1".parse().unwrap());
        ns.source_ll = None;
        ns.eth_dst = A;
        ns.dst_ip = ns.target;
        let na = neighbor_advert_for(A, &ns);
        assert_eq!((na.eth_dst, na.dst_ip), (B, ns.src_ip));
        assert!(na.solicited && na.override_);
        let dad = NeighborSolicit {
            src_ip: Ipv6Addr::UNSPECIFIED,
            ..ns
        };
        let na = neighbor_advert_for(A, &dad);
        assert_eq!(
            (na.dst_ip, na.solicited),
            (ALL_NODES, false),
            "DAD is answered to all nodes"
        );
    }

    #[test]
    fn malformed_frames_are_refused_with_a_reason() {
        let ns = Message::NeighborSolicit(neighbor_solicit(
            B,
            "fe80::b".parse().unwrap(),
            "fd00::1".parse().unwrap(),
        ));
        let good = ns.encode();
        let mut bad_sum = good.clone();
        bad_sum[ETH_LEN + IPV6_LEN + 2] ^= 0xff;
        assert_eq!(Message::decode(&bad_sum), Err(DropReason::Checksum));
        let mut hop = good.clone();
        hop[ETH_LEN + 7] = 64;
        assert_eq!(Message::decode(&hop), Err(DropReason::HopLimit));
        let mut zero_option = good.clone();
        zero_option[ETH_LEN + IPV6_LEN + ND_LEN + 1] = 0;
        // Fix the checksum so only the option is wrong.
        let sum_at = ETH_LEN + IPV6_LEN + 2;
        zero_option[sum_at..sum_at + 2].copy_from_slice(&[0, 0]);
        let fixed = {
            let p = Icmpv6Packet::new(&zero_option[ETH_LEN + IPV6_LEN..]).unwrap();
            checksum(
                &p,
                &"fe80::b".parse().unwrap(),
                &solicited_node("fd00::1".parse().unwrap()),
            )
        };
        zero_option[sum_at..sum_at + 2].copy_from_slice(&fixed.to_be_bytes());
        assert_eq!(Message::decode(&zero_option), Err(DropReason::Option));
        assert_eq!(
            Message::decode(&good[..good.len() - 9]),
            Err(DropReason::Truncated)
        );
        assert_eq!(Message::decode(&[0u8; 5]), Err(DropReason::Truncated));
        let mut ipv4 = Message::Arp(gratuitous_arp(A, Ipv4Addr::LOCALHOST)).encode();
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(Message::decode(&ipv4), Err(DropReason::OtherEtherType));
        let mut op = Message::Arp(gratuitous_arp(A, Ipv4Addr::LOCALHOST)).encode();
        op[ETH_LEN + 7] = 9;
        assert_eq!(Message::decode(&op), Err(DropReason::UnknownArpOperation));
    }

    fn mac() -> impl Strategy<Value = MacAddr> {
        any::<[u8; 6]>().prop_map(|b| MacAddr::new(b[0], b[1], b[2], b[3], b[4], b[5]))
    }

    fn unicast_v6() -> impl Strategy<Value = Ipv6Addr> {
        any::<u128>()
            .prop_map(Ipv6Addr::from)
            .prop_filter("not multicast", |a| !a.is_multicast())
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                mac(),
                mac(),
                any::<bool>(),
                mac(),
                any::<u32>(),
                mac(),
                any::<u32>()
            )
                .prop_map(
                    |(eth_src, eth_dst, req, sender_mac, sip, target_mac, tip)| Message::Arp(Arp {
                        eth_src,
                        eth_dst,
                        op: if req { ArpOp::Request } else { ArpOp::Reply },
                        sender_mac,
                        sender_ip: sip.into(),
                        target_mac,
                        target_ip: tip.into(),
                    })
                ),
            (
                mac(),
                mac(),
                any::<u128>(),
                any::<u128>(),
                unicast_v6(),
                proptest::option::of(mac())
            )
                .prop_map(|(eth_src, eth_dst, s, d, target, source_ll)| {
                    Message::NeighborSolicit(NeighborSolicit {
                        eth_src,
                        eth_dst,
                        src_ip: s.into(),
                        dst_ip: d.into(),
                        target,
                        source_ll,
                    })
                }),
            (
                mac(),
                mac(),
                any::<u128>(),
                any::<u128>(),
                unicast_v6(),
                any::<[bool; 3]>(),
                proptest::option::of(mac())
            )
                .prop_map(|(eth_src, eth_dst, s, d, target, f, target_ll)| {
                    Message::NeighborAdvert(NeighborAdvert {
                        eth_src,
                        eth_dst,
                        src_ip: s.into(),
                        dst_ip: d.into(),
                        target,
                        router: f[0],
                        solicited: f[1],
                        override_: f[2],
                        target_ll,
                    })
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn decode_inverts_encode(m in message()) {
            prop_assert_eq!(Message::decode(&m.encode()), Ok(m));
        }

        /// Any bytes at all: an answer, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Message::decode(&bytes);
        }

        /// Every truncation and every single-byte corruption of a valid frame
        /// decodes to something or is refused, never a panic.
        #[test]
        fn damaged_frames_never_panic(m in message(), cut in any::<prop::sample::Index>(), flip in any::<(prop::sample::Index, u8)>()) {
            let frame = m.encode();
            let _ = Message::decode(&frame[..cut.index(frame.len() + 1)]);
            let mut damaged = frame.clone();
            let i = flip.0.index(damaged.len());
            damaged[i] ^= flip.1 | 1;
            let _ = Message::decode(&damaged);
        }
    }
}
