//! Which node announces an address: eligibility and rendezvous hashing.
//!
//! Pure. Every speaker computes the owner of every address from the same view
//! (live members, node labels, endpoints) and gets the same answer, with no
//! coordination. The owner is the eligible node with the highest score for
//! (node, address): when a node leaves, only the addresses it owned move, and
//! each moves to the node that scores next; nothing else is reshuffled, as it
//! would be with `hash(address) % nodes`.
//!
//! The address is hashed, not the Service, so Services sharing an address always
//! land on the same node.
//!
//! A node that says it cannot serve an address (its interface is down, a
//! listener failed: see [`crate::membership::Health`]) stays eligible but
//! yields: the owner is the best-scoring eligible node that can serve it, and
//! only when none can does the best-scoring eligible node keep it — an address
//! announced by a node with a problem is better than one announced by nobody.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use crate::ipam::{LabelSelector, Labels};

/// The label Kubernetes defines for nodes that must not carry external
/// load-balancer traffic.
pub use crate::api::EXCLUDE_FROM_EXTERNAL_LB_LABEL;

/// What a speaker knows about one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The node's name.
    pub name: String,
    /// Its labels.
    pub labels: Labels,
    /// Its speaker is alive in the membership.
    pub alive: bool,
    /// Its `NetworkUnavailable` condition is `True`.
    pub network_unavailable: bool,
    /// What its speaker says it cannot serve now.
    pub cannot_serve: Unservable,
}

/// What a node cannot serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unservable {
    /// These addresses.
    Addresses(BTreeSet<IpAddr>),
    /// Any address.
    Everything,
}

impl Default for Unservable {
    fn default() -> Self {
        Unservable::Addresses(BTreeSet::new())
    }
}

impl Unservable {
    /// Whether `address` is among them.
    pub fn contains(&self, address: &IpAddr) -> bool {
        match self {
            Unservable::Addresses(a) => a.contains(address),
            Unservable::Everything => true,
        }
    }
}

/// The constraints on who may announce one address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Constraints {
    /// The L2Advertisement's `nodeSelectors`; empty: every node.
    pub node_selectors: Vec<LabelSelector>,
    /// With `externalTrafficPolicy: Local`: the nodes that have a ready endpoint
    /// of the Service. `None` for `Cluster`.
    pub local_endpoints: Option<BTreeSet<String>>,
    /// Nodes named by a static configuration; `None`: any.
    pub allowed_nodes: Option<BTreeSet<String>>,
}

/// Why a node may not announce an address; also a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Ineligible {
    /// Its speaker is not in the membership.
    #[error("its speaker is not alive in the membership")]
    NotAlive,
    /// It carries the exclude-from-external-load-balancers label.
    #[error("it is labelled {EXCLUDE_FROM_EXTERNAL_LB_LABEL}")]
    Excluded,
    /// Its network is unavailable.
    #[error("its NetworkUnavailable condition is True")]
    NetworkUnavailable,
    /// No `nodeSelectors` entry matches it.
    #[error("no nodeSelectors entry of the L2Advertisement matches it")]
    NotSelected,
    /// `externalTrafficPolicy: Local` and no ready endpoint of the Service on it.
    #[error("externalTrafficPolicy is Local and it has no ready endpoint of the Service")]
    NoLocalEndpoint,
}

impl Ineligible {
    /// The reason as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Ineligible::NotAlive => "not_alive",
            Ineligible::Excluded => "excluded",
            Ineligible::NetworkUnavailable => "network_unavailable",
            Ineligible::NotSelected => "not_selected",
            Ineligible::NoLocalEndpoint => "no_local_endpoint",
        }
    }
}

/// Whether `node` may announce an address under `constraints`.
pub fn eligibility(node: &Node, constraints: &Constraints) -> Result<(), Ineligible> {
    if !node.alive {
        return Err(Ineligible::NotAlive);
    }
    if node.labels.contains_key(EXCLUDE_FROM_EXTERNAL_LB_LABEL) {
        return Err(Ineligible::Excluded);
    }
    if node.network_unavailable {
        return Err(Ineligible::NetworkUnavailable);
    }
    let named_out = constraints
        .allowed_nodes
        .as_ref()
        .is_some_and(|a| !a.contains(&node.name));
    let unselected = !constraints.node_selectors.is_empty()
        && !constraints
            .node_selectors
            .iter()
            .any(|s| s.matches(&node.labels));
    if named_out || unselected {
        return Err(Ineligible::NotSelected);
    }
    if let Some(local) = &constraints.local_endpoints
        && !local.contains(&node.name)
    {
        return Err(Ineligible::NoLocalEndpoint);
    }
    Ok(())
}

/// The rendezvous score of `node` for `address`.
///
/// Written here rather than taken from `std::hash`: every speaker, whatever its
/// version or platform, must compute the same number, and the standard hashers
/// are randomly keyed or explicitly unspecified across releases. FNV-1a over the
/// node name, a separator and the address octets, then the SplitMix64 finalizer
/// to spread FNV's weak low bits.
pub fn score(node: &str, address: IpAddr) -> u64 {
    finish(name_hash(node), address)
}

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over a node name and the separator: the part of a score that
/// does not depend on the address, computed once per node by [`Memo`], so
/// an election over many nodes hashes only the address octets for each.
fn name_hash(node: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    node.bytes().chain([0xff]).fold(OFFSET, |h, byte| {
        (h ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

/// The score from a node's [`name_hash`]: FNV-1a over the address octets,
/// then the SplitMix64 finalizer.
fn finish(name_hash: u64, address: IpAddr) -> u64 {
    let (v4, v6);
    let octets: &[u8] = match address {
        IpAddr::V4(a) => {
            v4 = a.octets();
            &v4
        }
        IpAddr::V6(a) => {
            v6 = a.octets();
            &v6
        }
    };
    let mut h = octets.iter().fold(name_hash, |h, byte| {
        (h ^ u64::from(*byte)).wrapping_mul(FNV_PRIME)
    });
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The node that announces `address`: the eligible node with the highest score
/// among those that can serve it (among all eligible nodes when none can),
/// ties broken by name. `None` when no node is eligible.
pub fn owner<'a>(
    address: IpAddr,
    nodes: &'a [Node],
    constraints: &Constraints,
) -> Option<&'a Node> {
    best(
        address,
        nodes.iter().map(|n| (name_hash(&n.name), n)),
        constraints,
    )
    .owner
}

/// How many of the best nodes that can serve an address an election keeps,
/// so that when its owner leaves, the next is known without another.
const RUNNERS_UP: usize = 3;

/// What an election found.
struct Elected<'a> {
    /// The owner, as [`owner`] gives it.
    owner: Option<&'a Node>,
    /// The [`RUNNERS_UP`] best eligible nodes that can serve the address,
    /// best first; fewer when fewer can.
    able: Vec<&'a Node>,
}

/// [`owner`] over nodes given with their [`name_hash`], with the best
/// nodes that can serve the address.
fn best<'a>(
    address: IpAddr,
    nodes: impl Iterator<Item = (u64, &'a Node)>,
    constraints: &Constraints,
) -> Elected<'a> {
    // Scores come in random order, so only a few nodes (about ln n for each
    // place kept) beat the ones kept so far: eligibility, the costly part,
    // is checked for those only.
    let beats = |score: u64, node: &Node, best: Option<(u64, &Node)>| {
        best.is_none_or(|(s, b)| score > s || (score == s && node.name < b.name))
    };
    let mut able: Vec<(u64, &Node)> = Vec::with_capacity(RUNNERS_UP + 1);
    let mut any: Option<(u64, &Node)> = None;
    for (name_hash, node) in nodes {
        let s = finish(name_hash, address);
        // The last able node kept never scores above `any`'s best: a node
        // that does not beat it is kept by neither.
        let last = (able.len() == RUNNERS_UP).then(|| able[RUNNERS_UP - 1]);
        if !beats(s, node, last) || eligibility(node, constraints).is_err() {
            continue;
        }
        if beats(s, node, any) {
            any = Some((s, node));
        }
        if !node.cannot_serve.contains(&address) {
            let at = able.partition_point(|b| !beats(s, node, Some(*b)));
            able.insert(at, (s, node));
            able.truncate(RUNNERS_UP);
        }
    }
    Elected {
        owner: able.first().or(any.as_ref()).map(|(_, n)| *n),
        able: able.into_iter().map(|(_, n)| n).collect(),
    }
}

/// The owners of the last election, so that when nodes only leave, an
/// address whose owner stays keeps it without a new election: with
/// rendezvous hashing, removing a node moves only its own addresses, each
/// to the best node after it that can serve it, which the election kept.
/// A node loss then costs a lookup per address that node owned, not an
/// election per address, nor a pass over the nodes.
#[derive(Clone, Debug, Default)]
pub struct Memo {
    /// The nodes of the last election, and those that left since, in
    /// places that do not move until the nodes change otherwise.
    nodes: Vec<Node>,
    /// Each of `nodes`' [`name_hash`], in the same places.
    name_hashes: Vec<u64>,
    /// Whether the node in each place is still here.
    present: Vec<bool>,
    /// The name of each node still here → its place in `nodes`.
    index: HashMap<String, usize>,
    /// Address → what it was last elected under, and by whom.
    owners: HashMap<IpAddr, Choice>,
    /// Owner → the addresses it owns, as in `owners`.
    owned: HashMap<String, HashSet<IpAddr>>,
    /// The last round's owners still hold where they are still among
    /// `nodes` (nodes only left since, or the round ended); `false` when
    /// the nodes changed otherwise and every address is elected anew.
    kept: bool,
    /// Addresses asked for this round; the others are forgotten at its end.
    asked: HashSet<IpAddr>,
}

/// One address's last election.
#[derive(Clone, Debug)]
struct Choice {
    /// The constraints it was elected under.
    constraints: Constraints,
    /// Its owner.
    owner: Option<String>,
    /// [`Elected::able`], by name.
    able: Vec<String>,
}

impl Memo {
    /// Starts an election over `nodes`. Returns the addresses whose owner
    /// may differ from the last round's (those of the nodes that left), or
    /// `None` when the nodes changed otherwise and any may.
    pub fn begin(&mut self, nodes: &[Node]) -> Option<HashSet<IpAddr>> {
        self.asked.clear();
        // Which of the last nodes are still here as they were, found by
        // name: a node loss costs no copy of the nodes that stay.
        let mut stays = vec![false; self.nodes.len()];
        let only_left = nodes.iter().all(|n| {
            self.index.get(&n.name).is_some_and(|&i| {
                stays[i] = self.nodes[i] == *n;
                stays[i]
            })
        });
        self.kept = only_left;
        if !only_left {
            self.nodes = nodes.to_vec();
            self.name_hashes = nodes.iter().map(|n| name_hash(&n.name)).collect();
            self.present = vec![true; nodes.len()];
            self.index = nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.name.clone(), i))
                .collect();
            return None;
        }
        let left: Vec<usize> = (0..stays.len())
            .filter(|i| self.present[*i] && !stays[*i])
            .collect();
        Some(self.drop_leavers(left))
    }

    /// Starts an election over the last one's nodes but those named `left`,
    /// the others as they were: what [`Memo::begin`] does given those
    /// nodes, without comparing each. Returns the addresses the leavers
    /// owned.
    pub fn leave(&mut self, left: &[String]) -> HashSet<IpAddr> {
        self.asked.clear();
        self.kept = true;
        let places: Vec<usize> = left
            .iter()
            .filter_map(|name| self.index.get(name).copied())
            .collect();
        self.drop_leavers(places)
    }

    /// Marks the nodes in `places` gone, leaving every other in its place;
    /// returns the addresses they owned.
    fn drop_leavers(&mut self, places: Vec<usize>) -> HashSet<IpAddr> {
        let mut moved = HashSet::new();
        for i in places {
            let name = &self.nodes[i].name;
            self.present[i] = false;
            self.index.remove(name);
            moved.extend(self.owned.get(name).into_iter().flatten());
        }
        moved
    }

    /// The owner of `address`, as [`owner`] over the nodes of this round.
    pub fn owner(&mut self, address: IpAddr, constraints: &Constraints) -> Option<&Node> {
        self.asked.insert(address);
        let name = match self.known_owner(address, constraints) {
            Some(name) => name,
            None => {
                let elected = self.elect(address, constraints);
                let owner = elected.owner.map(|n| n.name.clone());
                let able = elected.able.iter().map(|n| n.name.clone()).collect();
                self.record(
                    address,
                    Choice {
                        constraints: constraints.clone(),
                        owner: owner.clone(),
                        able,
                    },
                );
                owner
            }
        };
        name.and_then(|name| self.index.get(&name).map(|i| &self.nodes[*i]))
    }

    /// The owner of `address` without an election, when nodes only left
    /// since its last: the owner then, if still here, or the best node
    /// after it that can serve it. `None` when it needs an election.
    fn known_owner(
        &mut self,
        address: IpAddr,
        constraints: &Constraints,
    ) -> Option<Option<String>> {
        let choice = self
            .owners
            .get_mut(&address)
            .filter(|c| self.kept && c.constraints == *constraints)?;
        let next = match &choice.owner {
            // No owner stays no owner when nodes only leave.
            Some(owner) if !self.index.contains_key(owner) => choice
                .able
                .iter()
                .find(|n| self.index.contains_key(*n))?
                .clone(),
            stays => return Some(stays.clone()),
        };
        if let Some(last) = choice.owner.replace(next.clone()) {
            disown(&mut self.owned, &last, &address);
        }
        self.owned.entry(next.clone()).or_default().insert(address);
        Some(Some(next))
    }

    /// Elects the owner of `address` among the nodes still here.
    fn elect(&self, address: IpAddr, constraints: &Constraints) -> Elected<'_> {
        // Only a node a constraint names can be eligible: when one names
        // fewer nodes than there are, the election is among those, found
        // by name — a Local Service's few endpoint nodes among a thousand
        // cost a few scores, not a thousand eligibility checks.
        let named = [&constraints.local_endpoints, &constraints.allowed_nodes]
            .into_iter()
            .flatten()
            .min_by_key(|names| names.len())
            .filter(|names| names.len() < self.index.len());
        match named {
            Some(names) => {
                let places = names.iter().filter_map(|n| self.index.get(n));
                let nodes = places.map(|&i| (self.name_hashes[i], &self.nodes[i]));
                best(address, nodes, constraints)
            }
            None => {
                let places = self.present.iter().enumerate().filter(|(_, p)| **p);
                let nodes = places.map(|(i, _)| (self.name_hashes[i], &self.nodes[i]));
                best(address, nodes, constraints)
            }
        }
    }

    /// Records `address`'s election.
    fn record(&mut self, address: IpAddr, choice: Choice) {
        self.forget(&address);
        if let Some(n) = &choice.owner {
            self.owned.entry(n.clone()).or_default().insert(address);
        }
        self.owners.insert(address, choice);
    }

    /// Forgets `address` (no longer to be announced).
    pub fn forget(&mut self, address: &IpAddr) {
        if let Some(Choice {
            owner: Some(owner), ..
        }) = self.owners.remove(address)
        {
            disown(&mut self.owned, &owner, address);
        }
    }

    /// Ends a round that asked for every address: the others are forgotten.
    pub fn end(&mut self) {
        let gone: Vec<IpAddr> = self
            .owners
            .keys()
            .filter(|a| !self.asked.contains(a))
            .copied()
            .collect();
        for a in gone {
            self.forget(&a);
        }
        // Every owner left was elected or checked this round.
        self.kept = true;
    }
}

/// Takes `address` from what `owner` owns in `owned`.
fn disown(owned: &mut HashMap<String, HashSet<IpAddr>>, owner: &str, address: &IpAddr) {
    if let Some(addresses) = owned.get_mut(owner) {
        addresses.remove(address);
        if addresses.is_empty() {
            owned.remove(owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            labels: Labels::new(),
            alive: true,
            network_unavailable: false,
            cannot_serve: Unservable::default(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_reason_makes_a_node_ineligible() {
        let c = Constraints::default();
        assert_eq!(eligibility(&node("a"), &c), Ok(()));
        assert_eq!(
            eligibility(
                &Node {
                    alive: false,
                    ..node("a")
                },
                &c
            ),
            Err(Ineligible::NotAlive)
        );
        let mut excluded = node("a");
        excluded
            .labels
            .insert(EXCLUDE_FROM_EXTERNAL_LB_LABEL.into(), String::new());
        assert_eq!(eligibility(&excluded, &c), Err(Ineligible::Excluded));
        let down = Node {
            network_unavailable: true,
            ..node("a")
        };
        assert_eq!(eligibility(&down, &c), Err(Ineligible::NetworkUnavailable));
        let selective = Constraints {
            node_selectors: vec![LabelSelector::labels([("zone", "a")])],
            local_endpoints: None,
            allowed_nodes: None,
        };
        assert_eq!(
            eligibility(&node("a"), &selective),
            Err(Ineligible::NotSelected)
        );
        let named = Constraints {
            allowed_nodes: Some(["b".to_string()].into()),
            ..Default::default()
        };
        assert_eq!(
            eligibility(&node("a"), &named),
            Err(Ineligible::NotSelected)
        );
        assert_eq!(eligibility(&node("b"), &named), Ok(()));
        let local = Constraints {
            node_selectors: vec![],
            local_endpoints: Some(["b".to_string()].into()),
            allowed_nodes: None,
        };
        assert_eq!(
            eligibility(&node("a"), &local),
            Err(Ineligible::NoLocalEndpoint)
        );
        assert_eq!(eligibility(&node("b"), &local), Ok(()));
    }

    #[test]
    fn scores_are_fixed_across_builds() {
        // Pinned so that a change of hash, which would move every address on an
        // upgrade while old and new speakers disagree, fails here first. The value
        // was computed apart from this code, from the definition above (FNV-1a 64
        // over b"node-1", 0xff, 192.168.10.1, then the SplitMix64 finalizer).
        assert_eq!(score("node-1", ip("192.168.10.1")), 0x8619_f882_bb0c_c261);
        assert_ne!(
            score("node-1", ip("192.168.10.1")),
            score("node-2", ip("192.168.10.1"))
        );
    }

    #[test]
    fn addresses_spread_evenly_over_nodes() {
        let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| node(n)).collect();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for i in 0..3000u32 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let o = owner(addr, &nodes, &Constraints::default()).unwrap();
            *counts.entry(o.name.as_str()).or_default() += 1;
        }
        for (name, n) in counts {
            assert!((800..1200).contains(&n), "node {name} owns {n} of 3000");
        }
    }

    fn nodes_strategy() -> impl Strategy<Value = Vec<Node>> {
        proptest::collection::vec(
            (0..12u8, any::<bool>(), any::<bool>(), any::<bool>(), 0..4u8),
            1..8,
        )
        .prop_map(|raw| {
            let mut seen = BTreeSet::new();
            raw.into_iter()
                .filter(|(n, ..)| seen.insert(*n))
                .map(|(n, alive, zone_a, unavailable, health)| {
                    let mut labels = Labels::new();
                    labels.insert("zone".into(), if zone_a { "a" } else { "b" }.into());
                    Node {
                        name: format!("node-{n}"),
                        labels,
                        alive,
                        network_unavailable: unavailable && n % 3 == 0,
                        // Mostly healthy; some cannot serve the probe
                        // addresses, one cannot serve anything.
                        cannot_serve: match health {
                            0 => Unservable::Everything,
                            1 => Unservable::Addresses(probes().into_iter().collect()),
                            _ => Unservable::default(),
                        },
                    }
                })
                .collect()
        })
    }

    fn constraints_strategy() -> impl Strategy<Value = Constraints> {
        let names = || proptest::option::of(proptest::collection::btree_set(0..12u8, 0..6));
        let named = |s: Option<BTreeSet<u8>>| {
            s.map(|s| s.into_iter().map(|n| format!("node-{n}")).collect())
        };
        (any::<bool>(), names(), names()).prop_map(move |(only_a, local, allowed)| Constraints {
            node_selectors: if only_a {
                vec![LabelSelector::labels([("zone", "a")])]
            } else {
                vec![]
            },
            local_endpoints: named(local),
            allowed_nodes: named(allowed),
        })
    }

    /// Addresses some generated nodes cannot serve.
    fn probes() -> [IpAddr; 2] {
        [ip("10.0.0.1"), ip("fd00::1")]
    }

    fn address_strategy() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            proptest::sample::select(probes().to_vec()),
            any::<u32>().prop_map(|n| IpAddr::from(std::net::Ipv4Addr::from(n))),
            any::<u128>().prop_map(|n| IpAddr::from(std::net::Ipv6Addr::from(n))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Every speaker sees the nodes in its own order; all agree on the owner.
        #[test]
        fn identical_views_give_identical_owners(
            nodes in nodes_strategy(),
            c in constraints_strategy(),
            addr in address_strategy(),
            seed in any::<u64>(),
        ) {
            let mut shuffled = nodes.clone();
            let len = shuffled.len();
            for i in 0..len {
                shuffled.swap(i, (seed as usize).wrapping_add(i * 7) % len);
            }
            let a = owner(addr, &nodes, &c).map(|n| n.name.clone());
            let b = owner(addr, &shuffled, &c).map(|n| n.name.clone());
            prop_assert_eq!(a, b);
        }

        /// Removing a node moves only the addresses that node owned.
        #[test]
        fn removing_a_node_moves_only_its_addresses(
            nodes in nodes_strategy(),
            c in constraints_strategy(),
            addrs in proptest::collection::vec(address_strategy(), 1..20),
            victim in any::<prop::sample::Index>(),
        ) {
            let gone = victim.get(&nodes).name.clone();
            let rest: Vec<Node> = nodes.iter().filter(|n| n.name != gone).cloned().collect();
            for addr in addrs {
                let before = owner(addr, &nodes, &c).map(|n| n.name.clone());
                let after = owner(addr, &rest, &c).map(|n| n.name.clone());
                if before.as_deref() != Some(gone.as_str()) {
                    prop_assert_eq!(before, after, "{} moved though its owner stayed", addr);
                }
            }
        }

        /// The election that checks eligibility only for nodes that beat the
        /// best so far picks what checking every node picks.
        #[test]
        fn the_lazy_election_picks_what_a_full_scan_picks(
            nodes in nodes_strategy(),
            c in constraints_strategy(),
            addrs in proptest::collection::vec(address_strategy(), 1..20),
        ) {
            for addr in addrs {
                let full = |able: bool| {
                    nodes
                        .iter()
                        .filter(|n| eligibility(n, &c).is_ok())
                        .filter(|n| !able || !n.cannot_serve.contains(&addr))
                        .max_by(|a, b| {
                            score(&a.name, addr)
                                .cmp(&score(&b.name, addr))
                                .then_with(|| b.name.cmp(&a.name))
                        })
                };
                let want = full(true).or_else(|| full(false)).map(|n| n.name.clone());
                prop_assert_eq!(owner(addr, &nodes, &c).map(|n| n.name.clone()), want);
            }
        }

        /// Round after round — nodes leaving, coming back, changing, an
        /// address's constraints changing — the memo's owners are the
        /// election's.
        #[test]
        fn the_memo_always_agrees_with_a_fresh_election(
            nodes in nodes_strategy(),
            rounds in proptest::collection::vec(
                (any::<prop::sample::Index>(), 0u8..5, constraints_strategy()),
                1..8,
            ),
            addrs in proptest::collection::vec(address_strategy(), 1..10),
        ) {
            let mut memo = Memo::default();
            let mut current = nodes.clone();
            let mut constraints = Constraints::default();
            let mut last: BTreeMap<IpAddr, Option<String>> = BTreeMap::new();
            for (round, (pick, change, c)) in rounds.into_iter().enumerate() {
                let constraints_before = constraints.clone();
                let name = pick.get(&nodes).name.clone();
                // Told which node left (`leave`) once the memo has nodes,
                // else left to find it (`begin`).
                let told = change == 4 && round > 0;
                match change {
                    0 | 4 => current.retain(|n| n.name != name),
                    1 if !current.iter().any(|n| n.name == name) => {
                        current.push(pick.get(&nodes).clone());
                    }
                    2 => {
                        for n in current.iter_mut().filter(|n| n.name == name) {
                            n.cannot_serve = Unservable::Everything;
                        }
                    }
                    _ => constraints = c,
                }
                let may_move = if told {
                    Some(memo.leave(std::slice::from_ref(&name)))
                } else {
                    memo.begin(&current)
                };
                let constraints_kept = constraints == constraints_before;
                for addr in &addrs {
                    let want = owner(*addr, &current, &constraints).map(|n| n.name.clone());
                    // What `begin` or `leave` says stays, stays.
                    if constraints_kept
                        && let (Some(may_move), Some(last)) = (&may_move, last.get(addr))
                        && !may_move.contains(addr)
                    {
                        prop_assert_eq!(&want, last, "{} moved unannounced", addr);
                    }
                    let got = memo.owner(*addr, &constraints).map(|n| n.name.clone());
                    prop_assert_eq!(&got, &want, "{}", addr);
                    last.insert(*addr, want);
                }
                memo.end();
            }
        }

        /// A node that cannot serve an address owns it only when no eligible
        /// node can; and a healthy node's addresses never move because
        /// another node cannot serve them.
        #[test]
        fn a_node_that_cannot_serve_yields_to_one_that_can(
            nodes in nodes_strategy(),
            c in constraints_strategy(),
            addr in address_strategy(),
        ) {
            let eligible: Vec<&Node> =
                nodes.iter().filter(|n| eligibility(n, &c).is_ok()).collect();
            match owner(addr, &nodes, &c) {
                None => prop_assert!(eligible.is_empty()),
                Some(o) if o.cannot_serve.contains(&addr) => prop_assert!(
                    eligible.iter().all(|n| n.cannot_serve.contains(&addr)),
                    "{} owns {} though another node can serve it", o.name, addr
                ),
                Some(o) => {
                    let healthy: Vec<Node> = nodes
                        .iter()
                        .cloned()
                        .map(|n| Node { cannot_serve: Unservable::default(), ..n })
                        .collect();
                    // Without any health problem, the owner would be the same
                    // node, or one that cannot serve the address now.
                    let unhindered = owner(addr, &healthy, &c).expect("eligible nodes");
                    let unhindered = nodes.iter().find(|n| n.name == unhindered.name).unwrap();
                    prop_assert!(
                        unhindered.name == o.name || unhindered.cannot_serve.contains(&addr),
                        "{} moved to {} though it can serve it", unhindered.name, o.name
                    );
                }
            }
        }

        /// With externalTrafficPolicy Local, the owner always has a ready endpoint.
        #[test]
        fn local_traffic_never_picks_a_node_without_an_endpoint(
            nodes in nodes_strategy(),
            c in constraints_strategy(),
            addr in address_strategy(),
        ) {
            if let (Some(local), Some(o)) = (&c.local_endpoints, owner(addr, &nodes, &c)) {
                prop_assert!(local.contains(&o.name));
            }
            if c.local_endpoints.as_ref().is_some_and(BTreeSet::is_empty) {
                prop_assert!(owner(addr, &nodes, &c).is_none());
            }
        }
    }
}
