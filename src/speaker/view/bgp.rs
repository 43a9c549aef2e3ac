//! BGP: the routers this node may talk to, and how each address is
//! advertised, from BGPPeers, BGPAdvertisements, BFDProfiles and Communities.

use super::*;

/// How one BGP advertisement advertises an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpAdvertisement {
    /// The nodes that advertise; empty: every node. With
    /// `externalTrafficPolicy: Local`, only those of them with a ready
    /// endpoint (the announcement's constraints say which).
    pub node_selectors: Vec<LabelSelector>,
    /// The `BGPPeer`s to advertise to; empty: all of this node's.
    pub peers: Vec<String>,
    /// The prefix length of the route: the address alone, or the aggregate
    /// that holds it.
    pub prefix_length: u8,
    /// LOCAL_PREF and communities.
    pub attributes: crate::bgp::session::Attributes,
}

/// A BGP router this node may talk to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedPeer {
    /// The session.
    pub spec: crate::bgp::peer::PeerSpec,
    /// The nodes that open it.
    pub constraints: Constraints,
}

/// A BGP object that cannot be used as written: what the schema cannot
/// catch (names of other objects, a Secret's content).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpProblem {
    /// `BGPPeer` or `BGPAdvertisement`.
    pub kind: &'static str,
    /// The object's name.
    pub name: String,
    /// What is wrong, naming the object and the field.
    pub message: String,
}

impl BgpProblem {
    fn peer(name: &str, message: String) -> Self {
        Self {
            kind: "BGPPeer",
            name: name.to_string(),
            message,
        }
    }

    fn advertisement(name: &str, message: String) -> Self {
        Self {
            kind: "BGPAdvertisement",
            name: name.to_string(),
            message,
        }
    }
}

/// The BGP routers of the cluster, with the nodes that talk to each, and what
/// keeps some from being used (the object named, for the log and events).
/// `restarting`: this speaker took over from one on the same node, so the
/// forwarding state survived (graceful restart's F bit).
pub fn bgp_peers(view: &ClusterView<'_>, restarting: bool) -> (Vec<WantedPeer>, Vec<BgpProblem>) {
    let mut peers = Vec::new();
    let mut problems = Vec::new();
    for p in &view.bgp.peers {
        let name = p.name_any();
        let bfd =
            match &p.spec.bfd_profile {
                Some(profile) => match view
                    .bgp
                    .bfd_profiles
                    .iter()
                    .find(|b| b.name_any() == *profile)
                {
                    Some(b) => Some(&b.spec),
                    None => {
                        problems.push(BgpProblem::peer(&name, format!(
                        "BGPPeer {name}: spec.bfdProfile: BFDProfile {profile} does not exist"
                    )));
                        continue;
                    }
                },
                None => None,
            };
        let password = match &p.spec.password_secret {
            Some(r) => {
                let secret = view.bgp.secrets.iter().find(|s| {
                    s.name_any() == r.name
                        && r.namespace
                            .as_ref()
                            .is_none_or(|n| s.namespace().as_ref() == Some(n))
                });
                match secret
                    .and_then(|s| s.data.as_ref())
                    .and_then(|d| d.get("password"))
                    .map(|b| String::from_utf8(b.0.clone()))
                {
                    Some(Ok(pw)) => Some(pw),
                    _ => {
                        problems.push(BgpProblem::peer(
                            &name,
                            format!(
                                "BGPPeer {name}: spec.passwordSecret: Secret {} has no key \
                             \"password\" in the speaker's namespace (or is not readable \
                             yet: with deploy/components/bgp the controller grants the \
                             speakers each Secret BGPPeers name)",
                                r.name
                            ),
                        ));
                        continue;
                    }
                }
            }
            None => None,
        };
        let selectors: Result<Vec<_>, _> = p
            .spec
            .node_selectors
            .iter()
            .map(translate::selector)
            .collect();
        let Ok(node_selectors) = selectors else {
            problems.push(BgpProblem::peer(
                &name,
                format!("BGPPeer {name}: spec.nodeSelectors: unreadable selector"),
            ));
            continue;
        };
        match crate::bgp::config::peer_spec(&name, &p.spec, password, bfd, restarting) {
            Ok(spec) => peers.push(WantedPeer {
                spec,
                constraints: Constraints {
                    node_selectors,
                    ..Default::default()
                },
            }),
            Err(e) => problems.push(BgpProblem::peer(&name, e)),
        }
    }
    (peers, problems)
}

/// The BGP advertisements of `pool`'s address `address`.
pub(super) fn bgp_advertisements(
    view: &ClusterView<'_>,
    pool: &str,
    labels: &BTreeMap<String, String>,
    address: IpAddr,
    aliases: &BTreeMap<String, String>,
) -> Vec<BgpAdvertisement> {
    let mut out = Vec::new();
    for ad in &view.bgp.advertisements {
        let spec = &ad.spec;
        let selected = (spec.ip_address_pools.is_empty()
            && spec.ip_address_pool_selectors.is_empty())
            || spec.ip_address_pools.iter().any(|p| p == pool)
            || spec
                .ip_address_pool_selectors
                .iter()
                .filter_map(|s| translate::selector(s).ok())
                .any(|s| s.matches(labels));
        if !selected {
            continue;
        }
        let Ok((prefix, attributes)) =
            crate::bgp::config::advertisement(&ad.name_any(), spec, address, aliases)
        else {
            continue;
        };
        let selectors: Result<Vec<_>, _> = spec
            .node_selectors
            .iter()
            .map(translate::selector)
            .collect();
        out.push(BgpAdvertisement {
            node_selectors: selectors.unwrap_or_else(|_| vec![nothing()]),
            peers: spec.peers.clone(),
            prefix_length: prefix.prefix(),
            attributes,
        });
    }
    out
}

/// What keeps BGPAdvertisements from being used as written, naming the
/// object and field (for the log and events).
pub fn bgp_advertisement_problems(view: &ClusterView<'_>) -> Vec<BgpProblem> {
    let aliases = view.bgp.aliases();
    let mut problems = Vec::new();
    for ad in &view.bgp.advertisements {
        let name = ad.name_any();
        if let Err(e) =
            crate::bgp::config::advertisement(&name, &ad.spec, IpAddr::from([0, 0, 0, 0]), &aliases)
        {
            problems.push(BgpProblem::advertisement(&name, e));
        }
        for peer in &ad.spec.peers {
            if !view.bgp.peers.iter().any(|p| p.name_any() == *peer) {
                problems.push(BgpProblem::advertisement(
                    &name,
                    format!("BGPAdvertisement {name}: spec.peers: BGPPeer {peer} does not exist"),
                ));
            }
        }
    }
    problems
}
