//! The routing that brings the replies of a transparent connection (one whose
//! source is the client's address, for `externalTrafficPolicy: Local`) back to
//! the forwarder instead of out towards the client: an nftables rule marks
//! packets that belong to a transparent socket, and a policy rule sends marked
//! packets to a table whose default route is local.
//!
//! The rule and route go over rtnetlink ([`crate::netlink::host`]); the mark
//! rule lives in ironlb's nftables table ([`super::firewall`]).

use crate::netlink::host::Host;

/// The firewall mark of packets for transparent sockets, by default.
pub const DEFAULT_MARK: u32 = 0x1b1b;
/// The routing table of that mark.
pub const TABLE: u32 = 2727;

/// Failure to set the routing up or down.
#[derive(Debug, thiserror::Error)]
#[error("policy routing: {0}")]
pub struct Error(#[from] crate::netlink::Error);

/// Installs the policy rules and the local table of `mark`.
pub async fn install(mark: u32) -> Result<(), Error> {
    Host::open()?
        .install_transparent_routing(mark, TABLE)
        .await?;
    Ok(())
}

/// Removes them.
pub async fn remove(mark: u32) -> Result<(), Error> {
    Host::open()?
        .remove_transparent_routing(mark, TABLE)
        .await?;
    Ok(())
}
