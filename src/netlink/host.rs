//! What the forwarder changes on the node, over rtnetlink: Service addresses
//! on the loopback, the policy routing of transparent connections, and the ARP
//! sysctls of announcing interfaces.
//!
//! These machines' kernels have no `dummy` links, so the addresses go on `lo`
//! (as /32 and /128: a wider prefix on `lo` would make the kernel treat the
//! whole subnet as local). Each address ironlb adds carries its own address
//! protocol ([`ADDRESS_PROTOCOL`], `ip addr show` prints it as `proto 27`), so
//! a restarted speaker removes what a crashed one left, and never touches an
//! address somebody else added.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressProtocol};
use netlink_packet_route::route::{RouteScope, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use super::Error;

/// The address protocol (`IFA_PROTO`) that marks addresses ironlb added.
pub const ADDRESS_PROTOCOL: u8 = 27;

/// A netlink session: one socket for a batch of requests.
pub struct Host {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Host {
    /// Opens a netlink socket in this process's network namespace.
    pub fn open() -> Result<Self, Error> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::Connect)?;
        Ok(Self {
            handle,
            task: tokio::spawn(connection),
        })
    }

    async fn loopback(&self) -> Result<u32, Error> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name("lo".to_string())
            .execute();
        match links.try_next().await? {
            Some(l) => Ok(l.header.index),
            None => Err(Error::Connect(std::io::Error::other("no loopback link"))),
        }
    }

    /// ironlb's addresses on the loopback, whose index is `lo`.
    async fn ours(&self, lo: u32) -> Result<Vec<AddressMessage>, Error> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(lo)
            .execute();
        let mut found = Vec::new();
        while let Some(msg) = stream.try_next().await? {
            let marked = msg.attributes.iter().any(
                |a| matches!(a, AddressAttribute::Protocol(p) if u8::from(*p) == ADDRESS_PROTOCOL),
            );
            if marked {
                found.push(msg);
            }
        }
        Ok(found)
    }

    /// Makes ironlb's addresses on the loopback exactly `wanted`: adds the
    /// missing, removes the rest (from this run or a crashed one).
    pub async fn set_service_addresses(&self, wanted: &BTreeSet<IpAddr>) -> Result<(), Error> {
        let lo = self.loopback().await?;
        let mut present = BTreeSet::new();
        for msg in self.ours(lo).await? {
            match address_of(&msg) {
                Some(ip) if wanted.contains(&ip) => {
                    present.insert(ip);
                }
                _ => self.handle.address().del(msg).execute().await?,
            }
        }
        for ip in wanted.difference(&present) {
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            let mut add = self.handle.address().add(lo, *ip, prefix);
            add.message_mut()
                .attributes
                .push(AddressAttribute::Protocol(AddressProtocol::from(
                    ADDRESS_PROTOCOL,
                )));
            match add.execute().await {
                Ok(()) => {}
                // Added meanwhile (by hand, without our mark): it's there.
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.raw_code() == -(nix::errno::Errno::EEXIST as i32) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Installs, once, the policy routing that delivers packets marked `mark`
    /// to local sockets: a rule `fwmark mark lookup table` and a `local
    /// default dev lo` route in `table`, for both families.
    pub async fn install_transparent_routing(&self, mark: u32, table: u32) -> Result<(), Error> {
        self.remove_transparent_routing(mark, table).await?;
        let lo = self.loopback().await?;
        let v4 = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .output_interface(lo)
            .table_id(table)
            .build();
        let v6 = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .output_interface(lo)
            .table_id(table)
            .build();
        for route in [v4, v6] {
            self.handle.route().add(route).replace().execute().await?;
        }
        for v6 in [false, true] {
            let rule = self
                .handle
                .rule()
                .add()
                .fw_mark(mark)
                .table_id(table)
                .priority(RULE_PRIORITY)
                .action(RuleAction::ToTable);
            if v6 {
                rule.v6().execute().await?;
            } else {
                rule.v4().execute().await?;
            }
        }
        Ok(())
    }

    /// Removes what [`Self::install_transparent_routing`] installed; nothing
    /// else.
    pub async fn remove_transparent_routing(&self, mark: u32, table: u32) -> Result<(), Error> {
        for version in [IpVersion::V4, IpVersion::V6] {
            let rules: Vec<RuleMessage> = self
                .handle
                .rule()
                .get(version)
                .execute()
                .try_collect()
                .await?;
            for rule in rules.into_iter().filter(|r| is_ours(r, mark, table)) {
                self.handle.rule().del(rule).execute().await?;
            }
        }
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut filter = match family {
                AddressFamily::Inet => RouteMessageBuilder::<Ipv4Addr>::new().build(),
                _ => RouteMessageBuilder::<Ipv6Addr>::new().build(),
            };
            filter.header.table = 0;
            let routes: Vec<_> = self
                .handle
                .route()
                .get(filter)
                .execute()
                .try_collect()
                .await?;
            for route in routes.into_iter().filter(|r| {
                r.header.kind == RouteType::Local
                    && r.header.destination_prefix_length == 0
                    && route_table(r) == table
            }) {
                self.handle.route().del(route).execute().await?;
            }
        }
        Ok(())
    }
}

/// Below the kernel's `main` rule (32766), above nothing of ours to collide
/// with; kube-proxy and CNIs leave this range alone.
const RULE_PRIORITY: u32 = 9_127;

fn is_ours(rule: &RuleMessage, mark: u32, table: u32) -> bool {
    let has_mark = rule
        .attributes
        .iter()
        .any(|a| matches!(a, RuleAttribute::FwMark(m) if *m == mark));
    let rule_table = rule
        .attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(rule.header.table));
    has_mark && rule_table == table
}

fn route_table(route: &netlink_packet_route::route::RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            netlink_packet_route::route::RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    })
}

/// Makes `interface` answer ARP only for addresses on itself (`arp_ignore=1`)
/// and source its ARP requests from its own addresses (`arp_announce=2`), so
/// Service addresses on the loopback are answered by the speaker alone.
pub fn quiet_arp(interface: &str) -> std::io::Result<()> {
    for (key, value) in [("arp_ignore", "1"), ("arp_announce", "2")] {
        let path = format!("/proc/sys/net/ipv4/conf/{interface}/{key}");
        let current = std::fs::read_to_string(&path)?;
        if current.trim() != value {
            std::fs::write(&path, value)?;
        }
    }
    Ok(())
}
