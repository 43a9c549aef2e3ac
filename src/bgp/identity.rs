//! The BGP identifier of a node, for sessions that have none of their own.

use std::net::Ipv4Addr;

/// The BGP identifier a node uses on sessions that have no IPv4 address of
/// their own (IPv6 peers) and no `routerID`: the node's IPv4 address when it
/// has one, else a value derived from the node's name, the same on every
/// restart. The derived value is a unicast IPv4 address (first octet 1 to
/// 223, never 127), as routers that still check RFC 4271's wording expect.
pub fn node_identifier(node: &str, ipv4: Option<Ipv4Addr>) -> Ipv4Addr {
    if let Some(a) = ipv4.filter(|a| !a.is_unspecified()) {
        return a;
    }
    // FNV-1a: stable across releases and platforms, unlike std's hasher.
    let hash = node.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let [a, b, c, d] = hash.to_be_bytes();
    let first = match a % 223 + 1 {
        127 => 128,
        octet => octet,
    };
    Ipv4Addr::new(first, b, c, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes without an IPv4 address get identifiers from their names:
    /// unicast, stable, and distinct across many usual node names.
    #[test]
    fn node_identifiers_are_the_ipv4_address_or_distinct_unicast_values() {
        let a = Ipv4Addr::new(192, 0, 2, 1);
        assert_eq!(node_identifier("worker-1", Some(a)), a);
        assert_eq!(
            node_identifier("worker-1", None),
            node_identifier("worker-1", None),
            "the same on every start"
        );
        let mut seen = std::collections::BTreeSet::new();
        for prefix in ["node-", "worker-", "ip-10-0-", "k8s-worker-0"] {
            for i in 0..2500 {
                let id = node_identifier(&format!("{prefix}{i}"), None);
                let first = id.octets()[0];
                assert!((1..=223).contains(&first) && first != 127, "{id}");
                assert!(seen.insert(id), "{prefix}{i}: {id} taken twice");
            }
        }
    }
}
