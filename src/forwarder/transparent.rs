//! The routing that brings the replies of a transparent connection (one whose
//! source is the client's address, for `externalTrafficPolicy: Local`) back to
//! the forwarder instead of out towards the client: an nftables rule marks
//! packets that belong to a transparent socket, and a policy rule sends marked
//! packets to a table whose default route is local.
//!
//! The rule and route go over rtnetlink ([`crate::netlink::host`]); the
//! nftables table is loaded with `nft -f -`: the netlink crates for nftables
//! are young or unmaintained, and one atomic ruleset text is what
//! `nft` itself guarantees to apply all-or-nothing.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::netlink::host::Host;

/// The firewall mark of packets for transparent sockets, by default.
pub const DEFAULT_MARK: u32 = 0x1b1b;
/// The routing table of that mark.
pub const TABLE: u32 = 2727;
/// The nftables table ironlb owns (family `inet`).
pub const NFT_TABLE: &str = "ironlb";

/// Failure to set the routing up or down.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rule or route.
    #[error("policy routing: {0}")]
    Netlink(#[from] crate::netlink::Error),
    /// `nft` could not run.
    #[error("running nft: {0}")]
    Nft(#[source] std::io::Error),
    /// `nft` refused the ruleset.
    #[error("nft refused the ironlb table: {0}")]
    Refused(String),
}

/// The ruleset text: the table replaced whole, so applying twice never
/// duplicates a rule.
pub fn ruleset(mark: u32) -> String {
    format!(
        "add table inet {NFT_TABLE}\n\
         delete table inet {NFT_TABLE}\n\
         table inet {NFT_TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority mangle; policy accept;\n\
         \t\tmeta l4proto {{ tcp, udp }} socket transparent 1 meta mark set {mark:#x}\n\
         \t}}\n\
         }}\n"
    )
}

/// Runs `nft` on the blocking pool: it forks and waits.
async fn nft(script: String) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || nft_blocking(&script))
        .await
        .map_err(|e| Error::Nft(std::io::Error::other(e)))?
}

fn nft_blocking(script: &str) -> Result<(), Error> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::Nft)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(Error::Nft)?;
    }
    let out = child.wait_with_output().map_err(Error::Nft)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Installs the mark rule, the policy rules and the local table.
pub async fn install(mark: u32) -> Result<(), Error> {
    nft(ruleset(mark)).await?;
    Host::open()?
        .install_transparent_routing(mark, TABLE)
        .await?;
    Ok(())
}

/// Removes all of it.
pub async fn remove(mark: u32) -> Result<(), Error> {
    let host = Host::open()?;
    host.remove_transparent_routing(mark, TABLE).await?;
    nft(format!(
        "add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
    ))
    .await
}
