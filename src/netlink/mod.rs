//! The node's interfaces, read over rtnetlink, and the choice of the interfaces
//! that announce an address.
//!
//! Answering ARP on the wrong interface is a classic complaint about layer-2
//! load balancers: a bridge port, a bond member or a CNI veth answering for a
//! LAN address confuses switches and steals traffic. [`announcing_links`] is the
//! one place that decides, and says why it skipped each link.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo};
use rtnetlink::sys::AsyncSocket as _;
use serde::Serialize;

use crate::l2::packet::MacAddr;

pub mod host;

/// What ironlb needs to know of a network interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Administratively up.
    pub up: bool,
    /// Has a carrier (`LOWER_UP`): a cable, or a veth's peer that is up.
    pub carrier: bool,
    /// The loopback interface.
    pub loopback: bool,
    /// `NOARP`: the interface does no address resolution.
    pub noarp: bool,
    /// The link kind (`veth`, `bridge`, `bond`, …) when it has one.
    pub kind: Option<String>,
    /// Enslaved to a bridge or bond (has a controller).
    pub enslaved: bool,
    /// Its Ethernet address.
    #[serde(serialize_with = "mac_text")]
    pub mac: Option<MacAddr>,
    /// Its addresses with their prefixes.
    pub networks: Vec<IpNetwork>,
}

fn mac_text<S: serde::Serializer>(mac: &Option<MacAddr>, s: S) -> Result<S::Ok, S::Error> {
    match mac {
        Some(m) => s.serialize_str(&m.to_string()),
        None => s.serialize_none(),
    }
}

/// Why a link does not announce an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
pub enum Skip {
    /// Not named in the L2Advertisement's `interfaces`.
    #[error("not among the L2Advertisement's interfaces")]
    NotNamed,
    /// No subnet of the link holds the address.
    #[error("no subnet of it holds the address")]
    OtherSubnet,
    /// Administratively down.
    #[error("it is down")]
    Down,
    /// Up, but without a carrier.
    #[error("it has no carrier (cable unplugged, or its peer is down)")]
    NoCarrier,
    /// The loopback interface.
    #[error("it is the loopback")]
    Loopback,
    /// No Ethernet address.
    #[error("it has no Ethernet address")]
    NoMac,
    /// `NOARP`.
    #[error("it is NOARP")]
    NoArp,
    /// A bridge port or bond member: the bridge or bond itself answers.
    #[error("it is enslaved to a bridge or bond")]
    Enslaved,
    /// A container or CNI link, which faces pods, not the LAN.
    #[error("it is a container or CNI link")]
    Virtual,
}

/// Name prefixes of links that face containers, not the LAN.
const VIRTUAL_PREFIXES: &[&str] = &[
    "veth",
    "cni",
    "cali",
    "flannel",
    "docker",
    "kube-ipvs",
    "cilium",
    "lxc",
    "vxlan",
    "tunl",
    "weave",
    "genev",
    "nodelocaldns",
    "ironlb",
];

/// The links that announce `address`, and why each other link does not.
///
/// With `named` interfaces (the L2Advertisement's `interfaces`), exactly those
/// that are up and have an Ethernet address: naming a link is how a user
/// chooses a virtual or enslaved one. Otherwise, the links whose subnet holds
/// the address, minus down, loopback, NOARP, enslaved and container links.
pub fn announcing_links<'a>(
    links: &'a [Link],
    address: IpAddr,
    named: &[String],
) -> (Vec<&'a Link>, Vec<(&'a Link, Skip)>) {
    let mut chosen = Vec::new();
    let mut skipped = Vec::new();
    for link in links {
        match check(link, address, named) {
            Ok(()) => chosen.push(link),
            Err(skip) => skipped.push((link, skip)),
        }
    }
    (chosen, skipped)
}

fn check(link: &Link, address: IpAddr, named: &[String]) -> Result<(), Skip> {
    if !named.is_empty() && !named.contains(&link.name) {
        return Err(Skip::NotNamed);
    }
    if named.is_empty() && !link.networks.iter().any(|n| n.contains(address)) {
        return Err(Skip::OtherSubnet);
    }
    if link.loopback {
        return Err(Skip::Loopback);
    }
    if !link.up {
        return Err(Skip::Down);
    }
    if !link.carrier {
        return Err(Skip::NoCarrier);
    }
    if link.mac.is_none() {
        return Err(Skip::NoMac);
    }
    if named.is_empty() {
        if link.noarp {
            return Err(Skip::NoArp);
        }
        if link.enslaved {
            return Err(Skip::Enslaved);
        }
        let virtual_kind = matches!(
            link.kind.as_deref(),
            Some("veth" | "vxlan" | "geneve" | "ipip" | "tun")
        );
        if virtual_kind || VIRTUAL_PREFIXES.iter().any(|p| link.name.starts_with(p)) {
            return Err(Skip::Virtual);
        }
    }
    Ok(())
}

/// A failure talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The netlink socket could not be opened.
    #[error("opening a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    /// A netlink request failed.
    #[error("netlink: {0}")]
    Request(#[from] rtnetlink::Error),
}

/// How often the links are read again even without a notification: the
/// kernel drops notifications when the socket's buffer is full.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(10);

/// The links of this network namespace, kept current from the kernel's link
/// and address notifications (an interface created, deleted, set down,
/// losing its carrier, given an address), until `stop`.
pub async fn watch_links(
    stop: tokio_util::sync::CancellationToken,
) -> Result<tokio::sync::watch::Receiver<Vec<Link>>, Error> {
    use futures::StreamExt;
    use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK};
    let (mut connection, _, mut messages) = rtnetlink::new_connection().map_err(Error::Connect)?;
    let groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&rtnetlink::sys::SocketAddr::new(0, groups))
        .map_err(Error::Connect)?;
    let connection = tokio::spawn(connection);
    // Subscribed before the first read, so no change falls in between.
    let (tx, rx) = tokio::sync::watch::channel(links().await?);
    tokio::spawn(async move {
        let mut live = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                message = messages.next(), if live => {
                    if message.is_none() {
                        tracing::warn!("interface notifications ended; reading the interfaces every {RESYNC:?}");
                        live = false;
                        continue;
                    }
                    // Changes come in bursts (a link and its addresses): read
                    // once they have landed.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    while let Some(Some(_)) = futures::FutureExt::now_or_never(messages.next()) {}
                }
                _ = tokio::time::sleep(RESYNC) => {}
            }
            match links().await {
                Ok(now) => {
                    tx.send_if_modified(|current| {
                        let changed = *current != now;
                        if changed {
                            *current = now;
                        }
                        changed
                    });
                }
                Err(e) => tracing::warn!(error = %e, "reading the interfaces"),
            }
        }
        connection.abort();
    });
    Ok(rx)
}

/// Every link of this network namespace with its addresses.
pub async fn links() -> Result<Vec<Link>, Error> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::Connect)?;
    let task = tokio::spawn(connection);
    let mut by_index: BTreeMap<u32, Link> = BTreeMap::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await? {
        let flags = msg.header.flags;
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            up: flags.contains(LinkFlags::Up),
            carrier: flags.contains(LinkFlags::LowerUp),
            loopback: flags.contains(LinkFlags::Loopback),
            noarp: flags.contains(LinkFlags::Noarp),
            kind: None,
            enslaved: false,
            mac: None,
            networks: Vec::new(),
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Controller(_) => link.enslaved = true,
                LinkAttribute::Address(bytes) if bytes.len() == 6 => {
                    link.mac = Some(MacAddr::new(
                        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5],
                    ))
                    .filter(|m| *m != MacAddr::zero());
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        by_index.insert(link.index, link);
    }
    let mut stream = handle.address().get().execute();
    while let Some(msg) = stream.try_next().await? {
        let prefix = msg.header.prefix_len;
        let address = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let (Some(ip), Some(link)) = (address, by_index.get_mut(&msg.header.index))
            && let Ok(network) = IpNetwork::new(ip, prefix)
        {
            link.networks.push(network);
        }
    }
    task.abort();
    Ok(by_index.into_values().collect())
}

/// An Ethernet link that is up, with one network, for tests and benches.
#[cfg(any(test, feature = "testkit"))]
pub fn test_link(name: &str, index: u32, net: &str) -> Link {
    Link {
        index,
        name: name.into(),
        up: true,
        carrier: true,
        loopback: false,
        noarp: false,
        kind: None,
        enslaved: false,
        mac: Some(MacAddr::new(2, 0, 0, 0, 0, index as u8)),
        networks: vec![net.parse().expect("a network")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, net: &str) -> Link {
        test_link(name, 1, net)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn reasons(links: &[Link], address: &str, named: &[&str]) -> Vec<(String, Option<Skip>)> {
        let named: Vec<String> = named.iter().map(|s| s.to_string()).collect();
        let (chosen, skipped) = announcing_links(links, ip(address), &named);
        let mut out: Vec<(String, Option<Skip>)> =
            chosen.iter().map(|l| (l.name.clone(), None)).collect();
        out.extend(skipped.iter().map(|(l, s)| (l.name.clone(), Some(*s))));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn the_interface_whose_subnet_holds_the_address_announces() {
        let links = [link("eth0", "192.168.10.5/24"), link("eth1", "10.9.0.5/16")];
        assert_eq!(
            reasons(&links, "192.168.10.200", &[]),
            [
                ("eth0".into(), None),
                ("eth1".into(), Some(Skip::OtherSubnet))
            ]
        );
    }

    #[test]
    fn down_noarp_enslaved_and_container_links_never_announce_unnamed() {
        let net = "192.168.10.5/24";
        let links = [
            Link {
                up: false,
                ..link("eth0", net)
            },
            Link {
                noarp: true,
                ..link("eth1", net)
            },
            Link {
                enslaved: true,
                ..link("eth2", net)
            },
            Link {
                kind: Some("veth".into()),
                ..link("eth3", net)
            },
            link("cali1234", net),
            link("flannel.1", net),
            Link {
                loopback: true,
                ..link("lo", net)
            },
            Link {
                mac: None,
                ..link("wg0", net)
            },
            link("br0", net),
        ];
        assert_eq!(
            reasons(&links, "192.168.10.200", &[]),
            [
                ("br0".into(), None),
                ("cali1234".into(), Some(Skip::Virtual)),
                ("eth0".into(), Some(Skip::Down)),
                ("eth1".into(), Some(Skip::NoArp)),
                ("eth2".into(), Some(Skip::Enslaved)),
                ("eth3".into(), Some(Skip::Virtual)),
                ("flannel.1".into(), Some(Skip::Virtual)),
                ("lo".into(), Some(Skip::Loopback)),
                ("wg0".into(), Some(Skip::NoMac)),
            ]
        );
    }

    #[test]
    fn a_named_interface_announces_even_when_virtual_or_in_another_subnet() {
        let links = [
            Link {
                kind: Some("veth".into()),
                ..link("eth0", "10.1.0.1/24")
            },
            link("eth1", "192.168.10.5/24"),
            Link {
                up: false,
                ..link("eth2", "192.168.10.6/24")
            },
        ];
        assert_eq!(
            reasons(&links, "192.168.10.200", &["eth0", "eth2"]),
            [
                ("eth0".into(), None),
                ("eth1".into(), Some(Skip::NotNamed)),
                ("eth2".into(), Some(Skip::Down)),
            ]
        );
    }
}
