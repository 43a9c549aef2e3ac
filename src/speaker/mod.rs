//! The speaker: on every node, decides which addresses this node owns and
//! announces them.
//!
//! Its view is the gossip membership (who is alive) plus the addresses to
//! announce; every speaker computes the same owners from the same view
//! ([`crate::election`]), so there is nothing to coordinate. Ownership follows
//! the membership alone, so announcement and failover keep working while the
//! Kubernetes API server is unreachable.
//!
//! This module runs from a static file (`--static`), for hosts without a
//! cluster and for the namespace lab; the Kubernetes view feeds the same loop.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::election::{self, Constraints, Node};
use crate::l2::announcer::Announcer;
use crate::membership::{self, Membership};

pub mod metrics;
pub mod view;

/// A speaker's configuration from a file.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticConfig {
    /// This node's name (default: the host name).
    #[serde(default)]
    pub node: Option<String>,
    /// The gossip group.
    pub gossip: Gossip,
    /// The addresses to announce.
    pub addresses: Vec<StaticAddress>,
    /// Gratuitous packets sent on takeover.
    #[serde(default = "default_burst_count")]
    pub announce_count: u32,
    /// Milliseconds between them.
    #[serde(default = "default_burst_interval_ms")]
    pub announce_interval_ms: u64,
    /// Seconds between re-announcements of every owned address (0: never).
    /// Switches age MAC entries faster than hosts age ARP entries.
    #[serde(default = "default_reannounce_s")]
    pub reannounce_seconds: u64,
}

/// The gossip settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gossip {
    /// Where this speaker listens, `address:port`.
    pub listen: SocketAddr,
    /// Other speakers.
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    /// The shared secret.
    pub secret: String,
}

/// One address and where it may be announced.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticAddress {
    /// The address.
    pub address: IpAddr,
    /// Interfaces to announce on.
    pub interfaces: Vec<String>,
    /// Nodes allowed to announce it; empty: all.
    #[serde(default)]
    pub nodes: Vec<String>,
}

fn default_burst_count() -> u32 {
    3
}
fn default_burst_interval_ms() -> u64 {
    100
}
fn default_reannounce_s() -> u64 {
    30
}

/// A configuration file that can't be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid YAML for the schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong and where.
        message: String,
    },
    /// An address listed twice.
    #[error("{path}: addresses: {address} is listed twice")]
    Duplicate {
        /// The file.
        path: String,
        /// The address.
        address: IpAddr,
    },
}

impl StaticConfig {
    /// Reads and checks a file.
    pub fn load(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and checks the text of a file named `path`.
    pub fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        let config: StaticConfig =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.into(),
                message: e.to_string(),
            })?;
        let mut seen = BTreeSet::new();
        for a in &config.addresses {
            if !seen.insert(a.address) {
                return Err(ConfigError::Duplicate {
                    path: path.into(),
                    address: a.address,
                });
            }
        }
        Ok(config)
    }
}

/// Which addresses `me` owns among `addresses`, given the live `members`.
pub fn owned_by(
    me: &str,
    members: &BTreeSet<String>,
    addresses: &[StaticAddress],
) -> BTreeSet<IpAddr> {
    let nodes: Vec<Node> = members
        .iter()
        .map(|name| Node {
            name: name.clone(),
            labels: Default::default(),
            alive: true,
            network_unavailable: false,
        })
        .collect();
    addresses
        .iter()
        .filter(|a| {
            let allowed: Vec<Node> = nodes
                .iter()
                .filter(|n| a.nodes.is_empty() || a.nodes.contains(&n.name))
                .cloned()
                .collect();
            election::owner(a.address, &allowed, &Constraints::default())
                .is_some_and(|o| o.name == me)
        })
        .map(|a| a.address)
        .collect()
}

/// Runs a speaker from a static configuration until `shutdown`, then withdraws
/// every address and leaves the group.
pub async fn run_static(
    config: StaticConfig,
    node: String,
    http: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut announcers: BTreeMap<String, Announcer> = BTreeMap::new();
    for a in &config.addresses {
        for name in &a.interfaces {
            if !announcers.contains_key(name) {
                announcers.insert(name.clone(), Announcer::start(name)?);
            }
        }
    }
    let socket = UdpSocket::bind(config.gossip.listen).await?;
    let membership = Membership::start(
        socket,
        membership::Config::lan(
            node.clone(),
            config.gossip.secret.as_bytes(),
            config.gossip.seeds.clone(),
        ),
    )?;
    info!(%node, listen = %config.gossip.listen, "speaker started");
    let mut m = metrics::Metrics::default();
    for (name, ann) in &announcers {
        m.register_announcer(name, ann.counters());
    }
    m.register_membership(membership.counters());
    let m = std::sync::Arc::new(m);
    if let Some(listener) = http {
        tokio::spawn(crate::http::serve(listener, m.clone(), shutdown.clone()));
    }
    let mut members = membership.members();
    settle(&mut members, !config.gossip.seeds.is_empty()).await;
    m.set_ready();
    let mut owned: BTreeSet<IpAddr> = BTreeSet::new();
    let reannounce = if config.reannounce_seconds == 0 {
        Duration::MAX
    } else {
        Duration::from_secs(config.reannounce_seconds)
    };
    let mut last_announce = tokio::time::Instant::now();
    let mut trigger = Trigger::Start;
    loop {
        let alive = members.borrow_and_update().clone();
        if !matches!(trigger, Trigger::Tick) {
            info!(members = ?alive, "membership");
        }
        let want = owned_by(&node, &alive, &config.addresses);
        m.observe(want.len(), alive.len());
        for ip in owned.difference(&want) {
            for a in interfaces_of(&config, *ip) {
                if let Some(ann) = announcers.get(a) {
                    ann.disown(*ip);
                }
            }
            info!(address = %ip, "withdrawn");
        }
        let gained: Vec<IpAddr> = want.difference(&owned).copied().collect();
        for ip in &gained {
            for a in interfaces_of(&config, *ip) {
                if let Some(ann) = announcers.get(a) {
                    ann.own(*ip);
                    info!(address = %ip, interface = a, mac = %ann.mac(), "announcing");
                }
            }
        }
        owned = want;
        // After any change of membership, every owned address gets the burst,
        // not only the new ones: when a partition heals, clients may have moved
        // to a node that believed itself owner, and must come back now. The
        // first packet goes at once.
        let burst: Vec<IpAddr> = match trigger {
            Trigger::Start | Trigger::Membership => owned.iter().copied().collect(),
            Trigger::Tick => Vec::new(),
        };
        for n in 0..config.announce_count {
            if n > 0 && !burst.is_empty() {
                tokio::time::sleep(Duration::from_millis(config.announce_interval_ms)).await;
            }
            announce_all(&config, &announcers, &burst);
        }
        if !burst.is_empty() {
            last_announce = tokio::time::Instant::now();
        }
        if last_announce.elapsed() >= reannounce {
            last_announce = tokio::time::Instant::now();
            announce_all(
                &config,
                &announcers,
                &owned.iter().copied().collect::<Vec<_>>(),
            );
        }
        let tick =
            tokio::time::sleep_until(last_announce + reannounce.min(Duration::from_secs(3600)));
        trigger = tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = members.changed() => {
                if changed.is_err() {
                    warn!("membership ended");
                    break;
                }
                Trigger::Membership
            }
            _ = tick => Trigger::Tick,
        };
    }
    for ip in &owned {
        for a in interfaces_of(&config, *ip) {
            if let Some(ann) = announcers.get(a) {
                ann.disown(*ip);
            }
        }
    }
    membership.leave().await;
    info!("speaker stopped: addresses withdrawn, left the group");
    Ok(())
}

/// Waits, before announcing anything, until this speaker has joined its peers
/// and the membership has been still for a moment: a speaker that starts alone
/// would otherwise claim every address for the instant until it hears from the
/// others. Gives up after two seconds (it may really be alone).
async fn settle(members: &mut tokio::sync::watch::Receiver<BTreeSet<String>>, has_seeds: bool) {
    if !has_seeds {
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let joined = tokio::time::timeout_at(deadline, members.wait_for(|m| m.len() > 1))
        .await
        .is_ok_and(|r| r.is_ok());
    if !joined {
        warn!("no peer answered within 2 s; announcing alone");
        return;
    }
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(300), members.changed()).await {
            Err(_) | Ok(Err(_)) => break,
            Ok(Ok(())) => {}
        }
    }
}

/// What woke the speaker's loop.
#[derive(Clone, Copy)]
enum Trigger {
    Start,
    Membership,
    Tick,
}

fn announce_all(
    config: &StaticConfig,
    announcers: &BTreeMap<String, Announcer>,
    addresses: &[IpAddr],
) {
    for ip in addresses {
        for a in interfaces_of(config, *ip) {
            if let Some(ann) = announcers.get(a) {
                ann.announce(*ip);
            }
        }
    }
}

fn interfaces_of(config: &StaticConfig, ip: IpAddr) -> impl Iterator<Item = &str> {
    config
        .addresses
        .iter()
        .filter(move |a| a.address == ip)
        .flat_map(|a| a.interfaces.iter().map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "
node: node-1
gossip:
  listen: 10.77.0.11:7946
  seeds: [10.77.0.12:7946]
  secret: s3cret
addresses:
  - address: 10.77.0.100
    interfaces: [eth0]
  - address: fd00::100
    interfaces: [eth0]
    nodes: [node-2]
";

    #[test]
    fn a_static_file_parses_with_defaults() {
        let c = StaticConfig::parse("lab.yaml", FILE).unwrap();
        assert_eq!(c.node.as_deref(), Some("node-1"));
        assert_eq!(c.addresses.len(), 2);
        assert_eq!(
            (
                c.announce_count,
                c.announce_interval_ms,
                c.reannounce_seconds
            ),
            (3, 100, 30)
        );
    }

    #[test]
    fn a_bad_file_names_the_file_and_the_problem() {
        let err = StaticConfig::parse("lab.yaml", &FILE.replace("10.77.0.100", "10.77.0.300"))
            .unwrap_err();
        assert!(err.to_string().starts_with("lab.yaml: "), "{err}");
        let dup = FILE.replace("fd00::100", "10.77.0.100");
        let err = StaticConfig::parse("lab.yaml", &dup).unwrap_err();
        assert_eq!(
            err.to_string(),
            "lab.yaml: addresses: 10.77.0.100 is listed twice"
        );
        let err =
            StaticConfig::parse("lab.yaml", &FILE.replace("secret:", "secrett:")).unwrap_err();
        assert!(err.to_string().contains("secrett"), "{err}");
    }

    #[test]
    fn exactly_one_live_node_owns_each_address() {
        let c = StaticConfig::parse("lab.yaml", FILE).unwrap();
        let members: BTreeSet<String> = ["node-1", "node-2", "node-3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let owners: Vec<usize> = c
            .addresses
            .iter()
            .map(|a| {
                members
                    .iter()
                    .filter(|m| owned_by(m, &members, &c.addresses).contains(&a.address))
                    .count()
            })
            .collect();
        assert_eq!(owners, [1, 1]);
        assert!(owned_by("node-2", &members, &c.addresses).contains(&"fd00::100".parse().unwrap()));
        let without_2: BTreeSet<String> =
            ["node-1", "node-3"].iter().map(|s| s.to_string()).collect();
        assert!(
            members
                .iter()
                .all(|m| !owned_by(m, &without_2, &c.addresses)
                    .contains(&"fd00::100".parse().unwrap())),
            "an address restricted to a dead node is announced by nobody"
        );
    }
}
