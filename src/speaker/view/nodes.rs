//! The election's nodes from the gossip members and the Node objects, and
//! the other speakers' gossip addresses.

use super::*;

/// The election's view of the nodes: alive members with their labels, network
/// condition and what their speakers say they cannot serve (`health`). A
/// member without a Node object is still a node (its labels unknown); a Node
/// without a live speaker is not.
pub fn nodes(
    members: &BTreeSet<String>,
    objects: &[&K8sNode],
    health: &crate::membership::HealthMap,
) -> Vec<Node> {
    let by_name: HashMap<&str, &&K8sNode> = objects
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n)))
        .collect();
    members
        .iter()
        .map(|name| {
            let object = by_name.get(name.as_str());
            Node {
                name: name.clone(),
                labels: object.map(|n| n.labels().clone()).unwrap_or_default(),
                alive: true,
                network_unavailable: object
                    .and_then(|n| n.status.as_ref())
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True")
                    }),
                cannot_serve: health.get(name).cloned().unwrap_or_default(),
            }
        })
        .collect()
}

/// The gossip addresses of the other speakers, by their Nodes' InternalIP of
/// `listen`'s family and `listen`'s port: in a DaemonSet every speaker listens
/// on the same port of its node's address.
pub fn node_seeds(
    me: &str,
    objects: &[K8sNode],
    listen: std::net::SocketAddr,
) -> Vec<std::net::SocketAddr> {
    objects
        .iter()
        .filter(|n| n.name_any() != me)
        .filter_map(|n| {
            n.status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse::<IpAddr>().ok())
                .find(|ip| ip.is_ipv4() == listen.is_ipv4())
        })
        .map(|ip| std::net::SocketAddr::new(ip, listen.port()))
        .collect()
}
