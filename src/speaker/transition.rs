//! The speaker's decisions, as a pure transition: the state it keeps and one
//! atomic view of the world in, the effects to run out (announce, withdraw,
//! burst, forward, report, tell the group what this node cannot serve).
//!
//! Nothing here touches a socket, a clock or the kernel: the executor
//! ([`super::executor`]) runs the effects and feeds their failures back as
//! part of the next view, so every scenario of failover, of an interface that
//! goes down and of a listener that cannot start is tested here without root;
//! the namespace labs prove the same on the wire.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node as K8sNode;
use tracing::warn;

use super::config::{Forwards, Timing};
use super::report::Report;
use super::view::{self, Announcement, Announcements};
use crate::election::{self, Unservable};
use crate::forwarder::plan::{Listener, Protocol};
use crate::ipam::ServiceKey;
use crate::membership::HealthMap;
use crate::netlink::{Link, Skip};

/// How long a node must be able to serve an address again before it says so
/// and takes the address back: a flapping link moves the address once, not
/// at every flap. Until then the node goes on telling the group it cannot
/// serve it, so the current owner keeps it meanwhile.
pub const RECOVERY_GRACE: Duration = Duration::from_secs(1);

/// What the transition needs to know of its own speaker.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This node's name.
    pub node: String,
    /// Whether the view comes from a cluster (only members named like a Node
    /// object may own addresses).
    pub cluster: bool,
    /// When gratuitous packets go out.
    pub timing: Timing,
    /// Ports the node keeps for itself, and whose they are: never forwarded
    /// on a Service address.
    pub reserved: BTreeMap<(Protocol, u16), String>,
}

/// Everything the speaker decides from, read at one instant.
#[derive(Clone, Debug)]
pub struct World {
    /// The live members of the gossip group, this node included.
    pub members: Arc<BTreeSet<String>>,
    /// What the other members say they cannot serve.
    pub health: Arc<HealthMap>,
    /// The addresses to announce.
    pub desired: Announcements,
    /// The Node objects (with a cluster; empty until known).
    pub node_objects: Arc<Vec<K8sNode>>,
    /// The BGP routers, and which nodes talk to each.
    pub bgp_peers: Vec<view::WantedPeer>,
    /// This node's network interfaces.
    pub links: Vec<Link>,
    /// What the forwarder is asked to carry.
    pub forwards: Forwards,
    /// Forwarding failures still held against addresses: the Services
    /// concerned and why ([`Faults`]).
    pub faults: BTreeMap<IpAddr, Vec<(ServiceKey, String)>>,
    /// Interfaces whose announcer could not start lately, by name, with the
    /// link index it failed on and why.
    pub broken: BTreeMap<String, (u32, String)>,
    /// Now.
    pub now: Instant,
}

/// What woke the speaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// It just joined the group.
    Start,
    /// The group changed: every owned address is announced again, since
    /// clients may have moved to a node that believed itself owner while the
    /// group was split.
    Membership,
    /// Anything else changed (view, links, faults).
    View,
    /// Time to re-announce every owned address once.
    Reannounce,
}

/// An interface that announces an address. A re-created interface has a new
/// index, and needs a new socket.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Iface {
    /// Its name.
    pub name: String,
    /// Its index when chosen.
    pub index: u32,
}

/// What the speaker remembers between transitions, by concern: each phase
/// of [`step`] keeps its own part.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Layer 2: the addresses this node announces, and what it said of them.
    pub l2: L2State,
    /// What this node cannot serve.
    pub serving: Servability,
    /// BGP: what this node advertises, and what it said of it.
    pub bgp: BgpState,
    /// Forwarding problems of owned Services, as last reported.
    reported_problems: BTreeSet<(ServiceKey, String)>,
    /// The speaker's node name matched no Node object last time.
    warned_unknown: bool,
    /// The last layer 2 elections, as they are and as they would be were
    /// this node healthy.
    elections: (election::Memo, election::Memo),
    /// The group's nodes as the election sees them, this one healthy, and
    /// what they were made of: made again only when one of those changes.
    nodes: Option<ElectionNodes>,
    /// What the last step read: a step revisits only the addresses whose
    /// inputs changed since. `None`: every address.
    seen: Option<Seen>,
}

/// The election's nodes, and the members, Node objects and health they
/// were made of (compared by pointer: the speaker hands the same ones
/// until they change).
#[derive(Clone, Debug)]
struct ElectionNodes {
    members: Arc<BTreeSet<String>>,
    objects: Arc<Vec<K8sNode>>,
    health: Arc<HealthMap>,
    /// Every counted member, this node without what it cannot serve.
    unhindered: Arc<Vec<election::Node>>,
    /// What this node could not serve when they were last elected over.
    told: Option<BTreeSet<IpAddr>>,
}

/// The inputs of the last step that decide each address on its own.
#[derive(Clone, Debug)]
struct Seen {
    desired: Announcements,
    faults: BTreeMap<IpAddr, Vec<(ServiceKey, String)>>,
    /// This node as the election saw it (without what it cannot serve).
    me: Option<election::Node>,
    links: Vec<Link>,
    broken: BTreeMap<String, (u32, String)>,
}

impl Seen {
    fn of(world: &World, me: Option<&election::Node>) -> Self {
        Self {
            desired: world.desired.clone(),
            faults: world.faults.clone(),
            me: me.cloned(),
            links: world.links.clone(),
            broken: world.broken.clone(),
        }
    }

    /// The addresses whose announcement or faults changed since.
    fn changed(&self, world: &World) -> BTreeSet<IpAddr> {
        let mut out: BTreeSet<IpAddr> = self
            .desired
            .diff(&world.desired)
            .map(|d| match d {
                imbl::ordmap::DiffItem::Add(ip, _)
                | imbl::ordmap::DiffItem::Remove(ip, _)
                | imbl::ordmap::DiffItem::Update { new: (ip, _), .. } => *ip,
            })
            .collect();
        for (ip, f) in &self.faults {
            if world.faults.get(ip) != Some(f) {
                out.insert(*ip);
            }
        }
        out.extend(
            world
                .faults
                .keys()
                .filter(|ip| !self.faults.contains_key(ip)),
        );
        out
    }
}

/// Which addresses a phase revisits.
#[derive(Clone, Debug)]
enum Visit {
    /// Every address.
    All,
    /// Only these; the others keep what was decided.
    Only(BTreeSet<IpAddr>),
}

impl Visit {
    /// The addresses to revisit among `desired`, each once, in order.
    fn addresses(&self, desired: &Announcements) -> Vec<IpAddr> {
        match self {
            Visit::All => desired.keys().copied().collect(),
            Visit::Only(set) => set.iter().copied().collect(),
        }
    }

    fn with(self, more: Option<impl IntoIterator<Item = IpAddr>>) -> Self {
        match (self, more) {
            (Visit::Only(mut set), Some(more)) => {
                set.extend(more);
                Visit::Only(set)
            }
            _ => Visit::All,
        }
    }
}

/// The layer 2 part of [`State`].
#[derive(Clone, Debug, Default)]
pub struct L2State {
    /// Address → the interfaces announcing it.
    pub owned: BTreeMap<IpAddr, Vec<Iface>>,
    /// Address → the Services on it, as last reported.
    reported: BTreeMap<IpAddr, Vec<ServiceKey>>,
    /// Addresses given up to another node, as last reported.
    gave_up: BTreeSet<IpAddr>,
    /// Address → the interfaces of this node that can announce it (those
    /// this node may announce at all).
    usable: BTreeMap<IpAddr, Vec<Iface>>,
}

/// What this node cannot serve, as told to the group.
#[derive(Clone, Debug, Default)]
pub struct Servability {
    /// What this node cannot serve, and why.
    pub unservable: BTreeMap<IpAddr, String>,
    /// Addresses this node can serve again, and since when: still told to
    /// the group as unservable until [`RECOVERY_GRACE`] has passed.
    recovered: BTreeMap<IpAddr, Instant>,
}

/// The BGP part of [`State`].
#[derive(Clone, Debug, Default)]
pub struct BgpState {
    /// What this node advertises, as last told to the executor.
    pub advertised: Bgp,
    /// Address → the Services and peers of its advertisement, as last
    /// reported.
    reported: BTreeMap<IpAddr, (Vec<ServiceKey>, Vec<String>)>,
    /// Address → the routes this node would advertise for it.
    routes: BTreeMap<IpAddr, Vec<Route>>,
}

/// This node's BGP sessions and the routes they carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bgp {
    /// The sessions this node opens.
    pub peers: Vec<crate::bgp::peer::PeerSpec>,
    /// The routes, each with the peers it goes to (empty: all).
    pub routes: Vec<Route>,
}

/// One route this node advertises.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// The Service address it is for.
    pub address: IpAddr,
    /// The prefix: the address, or its aggregate.
    pub prefix: ipnetwork::IpNetwork,
    /// The `BGPPeer`s it goes to; empty: all of this node's.
    pub peers: Vec<String>,
    /// LOCAL_PREF and communities.
    pub attributes: crate::bgp::session::Attributes,
}

impl Bgp {
    /// The routes `peer` is given: those of every advertisement that names
    /// it or names no peer, attributes merged where two give one prefix
    /// (communities joined, the highest LOCAL_PREF).
    pub fn routes_for(
        &self,
        peer: &str,
    ) -> BTreeMap<ipnetwork::IpNetwork, crate::bgp::session::Attributes> {
        let mut out: BTreeMap<ipnetwork::IpNetwork, crate::bgp::session::Attributes> =
            BTreeMap::new();
        for r in self
            .routes
            .iter()
            .filter(|r| r.peers.is_empty() || r.peers.iter().any(|p| p == peer))
        {
            let a = out.entry(r.prefix).or_default();
            a.communities.extend(&r.attributes.communities);
            a.large_communities.extend(&r.attributes.large_communities);
            a.local_pref = a.local_pref.max(r.attributes.local_pref);
        }
        out
    }

    /// The addresses advertised.
    pub fn addresses(&self) -> BTreeSet<IpAddr> {
        self.routes.iter().map(|r| r.address).collect()
    }
}

impl State {
    /// What this node tells the group it cannot serve.
    pub fn told(&self) -> BTreeSet<IpAddr> {
        told(&self.serving.unservable, &self.serving.recovered)
    }

    /// Makes the next step revisit every address, as the first does.
    pub fn revisit_everything(&mut self) {
        self.seen = None;
        self.nodes = None;
    }
}

fn told(
    unservable: &BTreeMap<IpAddr, String>,
    recovered: &BTreeMap<IpAddr, Instant>,
) -> BTreeSet<IpAddr> {
    unservable.keys().chain(recovered.keys()).copied().collect()
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Stop answering for `address` on `interface`, at once.
    Withdraw {
        /// The address.
        address: IpAddr,
        /// The interface.
        interface: Iface,
    },
    /// Answer for `address` on `interface`.
    Announce {
        /// The address.
        address: IpAddr,
        /// The interface.
        interface: Iface,
    },
    /// Send `count` gratuitous packets for each of `addresses` (stopping for
    /// any address withdrawn meanwhile).
    Burst {
        /// The addresses.
        addresses: Vec<IpAddr>,
        /// Packets per address.
        count: u32,
    },
    /// Run exactly these listeners; the Service addresses' announcing
    /// interfaces get quiet ARP settings.
    Forward {
        /// The listeners.
        listeners: Vec<Listener>,
        /// The interfaces announcing their addresses.
        interfaces: BTreeSet<String>,
    },
    /// Tell the cluster.
    Report(Report),
    /// Tell the group which addresses this node cannot serve.
    Publish(BTreeSet<IpAddr>),
    /// Look again at this instant, even if nothing else changes.
    WakeAt(Instant),
    /// Run exactly these BGP sessions, advertising these routes.
    Bgp(Bgp),
}

/// The interfaces of this node that can announce `a`, or why none can.
fn interfaces(
    links: &[Link],
    a: &Announcement,
    broken: &BTreeMap<String, (u32, String)>,
) -> Result<Vec<Iface>, String> {
    let (chosen, skipped) = crate::netlink::announcing_links(links, a.address, &a.interfaces);
    let is_broken = |l: &Link| broken.get(&l.name).is_some_and(|(i, _)| *i == l.index);
    let usable: Vec<Iface> = chosen
        .iter()
        .filter(|l| !is_broken(l))
        .map(|l| Iface {
            name: l.name.clone(),
            index: l.index,
        })
        .collect();
    if !usable.is_empty() {
        return Ok(usable);
    }
    let mut why: Vec<String> = chosen
        .iter()
        .filter_map(|l| broken.get(&l.name).map(|(_, e)| format!("{}: {e}", l.name)))
        .collect();
    if a.interfaces.is_empty() {
        why.extend(
            skipped
                .iter()
                .filter(|(_, skip)| *skip != Skip::OtherSubnet)
                .map(|(l, skip)| format!("{}: {skip}", l.name)),
        );
        if why.is_empty() {
            return Err("no interface's subnet holds it (name one in the L2Advertisement)".into());
        }
    } else {
        for name in &a.interfaces {
            if !links.iter().any(|l| l.name == *name) {
                why.push(format!("{name} does not exist"));
            }
        }
        why.extend(
            skipped
                .iter()
                .filter(|(_, skip)| *skip != Skip::NotNamed)
                .map(|(l, skip)| format!("{}: {skip}", l.name)),
        );
    }
    Err(format!("no interface can announce it: {}", why.join("; ")))
}

/// Runs one transition: from `state` and `world`, woken by `cause`, the
/// effects to run; `state` becomes what the speaker will have after them.
///
/// A pipeline of phases, each deciding one concern from what the ones before
/// it decided: who may own addresses, what this node cannot serve, the layer
/// 2 election and its announcements, the BGP routes, the listeners, then the
/// reports and gratuitous bursts that tell the world.
pub fn step(settings: &Settings, state: &mut State, world: &World, cause: Cause) -> Vec<Effect> {
    let me = settings.node.as_str();
    let mut effects = Vec::new();
    let (unhindered, group) = election_nodes(settings, state, world);
    let me_node = unhindered.iter().find(|n| n.name == me);
    // Each address is decided from its announcement, its faults, this
    // node's links and eligibility, and the group: a step revisits the
    // addresses whose part of those changed, so its cost follows the change,
    // not the cluster.
    let seen = state.seen.take().filter(|seen| {
        seen.me.as_ref() == me_node && seen.links == world.links && seen.broken == world.broken
    });
    let visit = match &seen {
        Some(seen) => Visit::Only(seen.changed(world)),
        None => Visit::All,
    };
    let new_seen = Seen::of(world, me_node);
    servability(me_node, state, world, &visit, &mut effects);
    let (me_elected, wanted) = elect(
        me,
        &unhindered,
        &group,
        state,
        world,
        visit.clone(),
        &mut effects,
    );
    let gained = announce(state, wanted, &mut effects);
    let bgp = match &me_elected {
        Some(node) => bgp_wanted(node, state, world, &visit),
        None => {
            state.bgp.routes.clear();
            Bgp::default()
        }
    };
    state.seen = Some(new_seen);
    // Routers stop sending before the listeners close, and start only once
    // they are open: routes that go away are withdrawn first, new ones come
    // after the forwarding.
    let bgp_changed = bgp != state.bgp.advertised;
    if bgp_changed {
        withdraw_routes(state, &bgp, &mut effects);
    }
    if cause != Cause::Reannounce || bgp_changed {
        forward(settings, state, world, &bgp.addresses(), &mut effects);
    }
    if bgp_changed {
        effects.push(Effect::Bgp(bgp.clone()));
        state.bgp.advertised = bgp;
    }
    report_bgp(state, world, &mut effects);
    report_l2(state, world, &gained, &mut effects);
    burst(settings, state, cause, gained, &mut effects);
    effects
}

/// How the group changed since the last step.
enum Group {
    /// Not at all.
    Same,
    /// Only these members left; the others are as they were.
    Left(Vec<String>),
    /// Otherwise.
    Changed,
}

/// The election's nodes, this one healthy: made again only when the
/// members, the Node objects or the group's health changed, and only
/// narrowed when members just left. Also how they changed since the last
/// step.
fn election_nodes(
    settings: &Settings,
    state: &mut State,
    world: &World,
) -> (Arc<Vec<election::Node>>, Group) {
    if let Some(n) = &mut state.nodes
        && Arc::ptr_eq(&n.objects, &world.node_objects)
        && Arc::ptr_eq(&n.health, &world.health)
    {
        if Arc::ptr_eq(&n.members, &world.members) {
            return (n.unhindered.clone(), Group::Same);
        }
        if let Some(left) = only_left(&n.members, &world.members) {
            // The nodes that stay are as they were: a node loss remakes no
            // node (the speaker alone holds them between steps, so this
            // takes the leavers out in place).
            Arc::make_mut(&mut n.unhindered).retain(|node| !left.contains(&node.name));
            n.members = world.members.clone();
            return (n.unhindered.clone(), Group::Left(left));
        }
    }
    let objects: Vec<&K8sNode> = world.node_objects.iter().collect();
    let members = counted_members(settings, state, world, &objects);
    // What the others say they cannot serve; this node's own entry is filled
    // in by the election, once known (eligibility does not depend on it).
    let mut unhindered = view::nodes(&members, &objects, &world.health);
    for n in unhindered.iter_mut().filter(|n| n.name == settings.node) {
        n.cannot_serve = Unservable::default();
    }
    let unhindered = Arc::new(unhindered);
    state.nodes = Some(ElectionNodes {
        members: world.members.clone(),
        objects: world.node_objects.clone(),
        health: world.health.clone(),
        unhindered: unhindered.clone(),
        told: None,
    });
    (unhindered, Group::Changed)
}

/// The members of `before` missing from `after`, when `after` has no
/// other: the sets walked side by side, in order.
fn only_left(before: &BTreeSet<String>, after: &BTreeSet<String>) -> Option<Vec<String>> {
    let mut stayed = after.iter().peekable();
    let mut left = Vec::new();
    for name in before {
        if stayed.peek() == Some(&name) {
            stayed.next();
        } else {
            left.push(name.clone());
        }
    }
    stayed.next().is_none().then_some(left)
}

/// The members of the group that may own addresses. With a cluster, only
/// members named like a Node object count: a speaker that knows the gossip
/// secret but runs on no node of the cluster (a test box, a stolen secret)
/// never owns an address. Says once when this node is such a speaker.
fn counted_members(
    settings: &Settings,
    state: &mut State,
    world: &World,
    objects: &[&K8sNode],
) -> BTreeSet<String> {
    let me = settings.node.as_str();
    let named: HashSet<&str> = objects
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    let unknown = settings.cluster && !objects.is_empty() && !named.contains(me);
    if unknown && !state.warned_unknown {
        warn!(node = %me, "no Node object has this speaker's node name, so it owns no address: \
               check --node / NODE_NAME (the DaemonSet sets it from spec.nodeName)");
    }
    state.warned_unknown = unknown;
    world
        .members
        .iter()
        .filter(|m| !settings.cluster || named.contains(m.as_str()))
        .cloned()
        .collect()
}

/// What this node cannot serve among the layer 2 addresses it may announce,
/// and the interfaces that can announce the rest (`state.l2.usable`), for
/// the addresses `visit` names; tells the group when what it cannot serve
/// changes, holding recovered addresses for [`RECOVERY_GRACE`].
fn servability(
    me_node: Option<&election::Node>,
    state: &mut State,
    world: &World,
    visit: &Visit,
    effects: &mut Vec<Effect>,
) {
    let mut unservable = match visit {
        Visit::All => {
            state.l2.usable.clear();
            BTreeMap::new()
        }
        Visit::Only(_) => state.serving.unservable.clone(),
    };
    for ip in visit.addresses(&world.desired) {
        unservable.remove(&ip);
        state.l2.usable.remove(&ip);
        let Some(a) = world.desired.get(&ip).filter(|a| a.l2) else {
            continue;
        };
        if me_node.is_none_or(|n| election::eligibility(n, &a.constraints).is_err()) {
            continue;
        }
        let fault = world.faults.get(&a.address).map(|problems| {
            let messages: BTreeSet<&str> = problems.iter().map(|(_, m)| m.as_str()).collect();
            messages.into_iter().collect::<Vec<_>>().join("; ")
        });
        match (interfaces(&world.links, a, &world.broken), fault) {
            (Ok(ifaces), None) => {
                state.l2.usable.insert(a.address, ifaces);
            }
            (Ok(ifaces), Some(why)) => {
                state.l2.usable.insert(a.address, ifaces);
                unservable.insert(a.address, why);
            }
            (Err(why), _) => {
                unservable.insert(a.address, why);
            }
        }
    }
    let recovered_before = state.serving.recovered.clone();
    for ip in state.serving.unservable.keys() {
        if !unservable.contains_key(ip) {
            state.serving.recovered.insert(*ip, world.now);
        }
    }
    state
        .serving
        .recovered
        .retain(|ip, since| !unservable.contains_key(ip) && world.now < *since + RECOVERY_GRACE);
    if let Some(first) = state.serving.recovered.values().min() {
        effects.push(Effect::WakeAt(*first + RECOVERY_GRACE));
    }
    let before = told(&state.serving.unservable, &recovered_before);
    state.serving.unservable = unservable;
    let own = state.told();
    if own != before {
        effects.push(Effect::Publish(own));
    }
}

/// The layer 2 election, with this node's own health as it is now (its
/// peers learn it within a gossip round, as they learn of a node joining):
/// this node as elected, and the addresses this node is to own with the
/// interfaces that announce them. Revisits the addresses
/// `visit` names and those whose owner may have changed with the `group`.
/// Reports each address given up to another node because of a problem
/// here, once.
fn elect(
    me: &str,
    unhindered: &[election::Node],
    group: &Group,
    state: &mut State,
    world: &World,
    visit: Visit,
    effects: &mut Vec<Effect>,
) -> (Option<election::Node>, BTreeMap<IpAddr, Vec<Iface>>) {
    let told = state.told();
    let as_told = |n: &election::Node| election::Node {
        cannot_serve: Unservable::Addresses(told.clone()),
        ..n.clone()
    };
    let me_node = unhindered.iter().find(|n| n.name == me).map(as_told);
    let last = state.nodes.as_mut().map(|n| &mut n.told);
    let told_same = last.as_ref().is_some_and(|t| t.as_ref() == Some(&told));
    let (as_is, healthy) = &mut state.elections;
    let within = told_same && matches!(visit, Visit::Only(_));
    let visit = match group {
        Group::Same if within => visit,
        // Members only left: each memo drops them, as `begin` would find,
        // without comparing every node.
        Group::Left(left) if within => {
            let moved = as_is.leave(left);
            let moved_healthy = healthy.leave(left);
            visit.with(Some(moved)).with(Some(moved_healthy))
        }
        _ => {
            // Copied only when the election begins anew: a step within the same
            // group costs what it revisits, not a copy of every node.
            let nodes: Vec<election::Node> = unhindered
                .iter()
                .map(|n| if n.name == me { as_told(n) } else { n.clone() })
                .collect();
            let moved = as_is.begin(&nodes);
            let moved_healthy = healthy.begin(unhindered);
            visit.with(moved).with(moved_healthy)
        }
    };
    if let Some(last) = last {
        *last = Some(told);
    }
    let mut wanted = match &visit {
        Visit::All => BTreeMap::new(),
        Visit::Only(_) => state.l2.owned.clone(),
    };
    let mut gave_up = match &visit {
        Visit::All => BTreeSet::new(),
        Visit::Only(_) => state.l2.gave_up.clone(),
    };
    for ip in visit.addresses(&world.desired) {
        wanted.remove(&ip);
        gave_up.remove(&ip);
        let Some(a) = world.desired.get(&ip).filter(|a| a.l2) else {
            as_is.forget(&ip);
            healthy.forget(&ip);
            continue;
        };
        if as_is
            .owner(a.address, &a.constraints)
            .is_some_and(|o| o.name == me)
        {
            // Owned even when it cannot be served here, if no node can: then
            // what can be announced is.
            wanted.insert(
                a.address,
                state.l2.usable.get(&a.address).cloned().unwrap_or_default(),
            );
        } else if let Some(reason) = state.serving.unservable.get(&a.address)
            && healthy
                .owner(a.address, &a.constraints)
                .is_some_and(|o| o.name == me)
        {
            gave_up.insert(a.address);
            if !state.l2.gave_up.contains(&a.address) {
                effects.push(Effect::Report(Report::GaveUp {
                    address: a.address,
                    services: a.services.clone(),
                    reason: reason.clone(),
                }));
            }
        }
    }
    if matches!(visit, Visit::All) {
        as_is.end();
        healthy.end();
    }
    state.l2.gave_up = gave_up;
    (me_node, wanted)
}

/// Moves `state.l2.owned` to what the election `wanted`: withdrawals first, so
/// nothing this node stops serving waits for anything, then announcements.
/// Returns the addresses gained on some interface.
fn announce(
    state: &mut State,
    wanted: BTreeMap<IpAddr, Vec<Iface>>,
    effects: &mut Vec<Effect>,
) -> Vec<IpAddr> {
    for (ip, ifaces) in &state.l2.owned {
        let keep = wanted.get(ip);
        for i in ifaces {
            if !keep.is_some_and(|k| k.contains(i)) {
                effects.push(Effect::Withdraw {
                    address: *ip,
                    interface: i.clone(),
                });
            }
        }
    }
    let mut gained = Vec::new();
    for (ip, ifaces) in &wanted {
        let had = state.l2.owned.get(ip);
        let mut new = false;
        for i in ifaces {
            if !had.is_some_and(|h| h.contains(i)) {
                new = true;
                effects.push(Effect::Announce {
                    address: *ip,
                    interface: i.clone(),
                });
            }
        }
        if new {
            gained.push(*ip);
        }
    }
    state.l2.owned = wanted;
    gained
}

/// The BGP sessions and routes of `node`. No election: every eligible node
/// advertises (routers spread the traffic over them), except an address this
/// node failed to forward. Routes are kept by address (`state.bgp.routes`):
/// the addresses `visit` names are decided again.
fn bgp_wanted(node: &election::Node, state: &mut State, world: &World, visit: &Visit) -> Bgp {
    if matches!(visit, Visit::All) {
        state.bgp.routes.clear();
    }
    for ip in visit.addresses(&world.desired) {
        state.bgp.routes.remove(&ip);
        if let Some(a) = world.desired.get(&ip)
            && !world.faults.contains_key(&ip)
        {
            let routes = routes_of(node, a);
            if !routes.is_empty() {
                state.bgp.routes.insert(ip, routes);
            }
        }
    }
    let mut routes: Vec<Route> = state.bgp.routes.values().flatten().cloned().collect();
    routes.sort();
    routes.dedup();
    Bgp {
        peers: world
            .bgp_peers
            .iter()
            .filter(|p| election::eligibility(node, &p.constraints).is_ok())
            .map(|p| p.spec.clone())
            .collect(),
        routes,
    }
}

/// The routes of `node` for announcement `a`, one per advertisement it may
/// make.
fn routes_of(node: &election::Node, a: &view::Announcement) -> Vec<Route> {
    let mut routes = Vec::new();
    for ad in &a.bgp {
        let constraints = crate::election::Constraints {
            node_selectors: ad.node_selectors.clone(),
            ..a.constraints.clone()
        };
        if election::eligibility(node, &constraints).is_err() {
            continue;
        }
        let Ok(prefix) = ipnetwork::IpNetwork::new(a.address, ad.prefix_length)
            .and_then(|n| ipnetwork::IpNetwork::new(n.network(), ad.prefix_length))
        else {
            continue;
        };
        routes.push(Route {
            address: a.address,
            prefix,
            peers: ad.peers.clone(),
            attributes: ad.attributes.clone(),
        });
    }
    routes
}

/// Before the listeners change: the sessions as `bgp` wants them, carrying
/// only the routes that stay.
fn withdraw_routes(state: &State, bgp: &Bgp, effects: &mut Vec<Effect>) {
    let kept = Bgp {
        peers: bgp.peers.clone(),
        routes: state
            .bgp
            .advertised
            .routes
            .iter()
            .filter(|r| bgp.routes.contains(r))
            .cloned()
            .collect(),
    };
    if kept != state.bgp.advertised {
        effects.push(Effect::Bgp(kept));
    }
}

/// The listeners of the addresses this node owns or advertises (`routed`);
/// what keeps a Service from being forwarded as asked is reported once.
fn forward(
    settings: &Settings,
    state: &mut State,
    world: &World,
    routed: &BTreeSet<IpAddr>,
    effects: &mut Vec<Effect>,
) {
    let keys: BTreeSet<IpAddr> = state.l2.owned.keys().chain(routed).copied().collect();
    let mut plan = crate::forwarder::plan::plan(&settings.node, &keys, world.forwards.on(&keys));
    let (listeners, refused): (Vec<Listener>, Vec<Listener>) =
        plan.listeners.into_iter().partition(|l| {
            !settings
                .reserved
                .contains_key(&(l.protocol, l.address.port()))
        });
    plan.listeners = listeners;
    let mut problems: BTreeSet<(ServiceKey, String)> = world
        .forwards
        .invalid()
        .filter(|e| e.addresses.iter().any(|a| keys.contains(a)))
        .map(|e| (e.service.clone(), e.message.clone()))
        .collect();
    for c in &plan.conflicts {
        problems.insert((
            c.refused.clone(),
            format!(
                "{} {} is already forwarded for Service {}",
                c.protocol, c.address, c.kept
            ),
        ));
    }
    for l in &refused {
        let port = l.address.port();
        problems.insert((
            l.service.clone(),
            format!(
                "{} port {port} is the node's own ({}): it is never forwarded on a \
                 Service address; choose another port",
                l.protocol,
                settings.reserved[&(l.protocol, port)]
            ),
        ));
    }
    for (ip, faults) in &world.faults {
        if keys.contains(ip) || state.serving.unservable.contains_key(ip) {
            problems.extend(faults.iter().cloned());
        }
    }
    for (service, message) in &problems {
        if !state
            .reported_problems
            .contains(&(service.clone(), message.clone()))
        {
            effects.push(Effect::Report(Report::NotForwarded {
                service: service.clone(),
                message: message.clone(),
            }));
        }
    }
    state.reported_problems = problems;
    let addresses: BTreeSet<IpAddr> = plan.listeners.iter().map(|l| l.address.ip()).collect();
    let interfaces = addresses
        .iter()
        .flat_map(|ip| state.l2.owned.get(ip).into_iter().flatten())
        .map(|i| i.name.clone())
        .collect();
    effects.push(Effect::Forward {
        listeners: plan.listeners,
        interfaces,
    });
}

/// Reports what this node advertises over BGP, and what it no longer does.
fn report_bgp(state: &mut State, world: &World, effects: &mut Vec<Effect>) {
    let mut by_address: BTreeMap<IpAddr, Vec<&Route>> = BTreeMap::new();
    for r in &state.bgp.advertised.routes {
        by_address.entry(r.address).or_default().push(r);
    }
    let mut advertised: BTreeMap<IpAddr, (Vec<ServiceKey>, Vec<String>)> = BTreeMap::new();
    for (ip, routes) in &by_address {
        let Some(a) = world.desired.get(ip) else {
            continue;
        };
        let peers: BTreeSet<String> = state
            .bgp
            .advertised
            .peers
            .iter()
            .map(|p| p.name.clone())
            .filter(|p| {
                routes
                    .iter()
                    .any(|r| r.peers.is_empty() || r.peers.contains(p))
            })
            .collect();
        advertised.insert(a.address, (a.services.clone(), peers.into_iter().collect()));
    }
    for (address, (services, _)) in &state.bgp.reported {
        if !advertised.contains_key(address) {
            effects.push(Effect::Report(Report::BgpWithdrawn {
                address: *address,
                services: services.clone(),
            }));
        }
    }
    for (address, (services, peers)) in &advertised {
        if state.bgp.reported.get(address) != Some(&(services.clone(), peers.clone())) {
            effects.push(Effect::Report(Report::BgpAdvertising {
                address: *address,
                services: services.clone(),
                peers: peers.clone(),
            }));
        }
    }
    state.bgp.reported = advertised;
}

/// Reports what this node announces, and what it no longer does.
fn report_l2(state: &mut State, world: &World, gained: &[IpAddr], effects: &mut Vec<Effect>) {
    for (ip, services) in std::mem::take(&mut state.l2.reported) {
        if state.l2.owned.contains_key(&ip) {
            state.l2.reported.insert(ip, services);
        } else {
            effects.push(Effect::Report(Report::Withdrawn {
                address: ip,
                services,
            }));
        }
    }
    for (ip, ifaces) in &state.l2.owned {
        let Some(a) = world.desired.get(ip) else {
            continue;
        };
        if state.l2.reported.get(&a.address) != Some(&a.services) || gained.contains(&a.address) {
            effects.push(Effect::Report(Report::Announcing {
                address: a.address,
                services: a.services.clone(),
                interfaces: ifaces.iter().map(|i| i.name.clone()).collect(),
            }));
            state.l2.reported.insert(a.address, a.services.clone());
        }
    }
}

/// Gratuitous packets: for every owned address when the node starts, the
/// group changes or it is time to re-announce; else for those just gained.
fn burst(
    settings: &Settings,
    state: &State,
    cause: Cause,
    gained: Vec<IpAddr>,
    effects: &mut Vec<Effect>,
) {
    let addresses: Vec<IpAddr> = match cause {
        Cause::Start | Cause::Membership | Cause::Reannounce => {
            state.l2.owned.keys().copied().collect()
        }
        Cause::View => gained,
    };
    if !addresses.is_empty() {
        effects.push(Effect::Burst {
            addresses,
            count: match cause {
                Cause::Reannounce => 1,
                _ => settings.timing.announce_count,
            },
        });
    }
}

/// The effects that end the speaker: every address withdrawn, the listeners
/// stopped, the reports of withdrawal.
pub fn stop(state: &mut State) -> Vec<Effect> {
    let mut effects: Vec<Effect> = std::mem::take(&mut state.l2.owned)
        .into_iter()
        .flat_map(|(address, ifaces)| {
            ifaces
                .into_iter()
                .map(move |interface| Effect::Withdraw { address, interface })
        })
        .collect();
    // Routers stop sending here before the listeners close.
    if std::mem::take(&mut state.bgp.advertised) != Bgp::default() {
        effects.push(Effect::Bgp(Bgp::default()));
    }
    effects.extend(std::mem::take(&mut state.bgp.reported).into_iter().map(
        |(address, (services, _))| Effect::Report(Report::BgpWithdrawn { address, services }),
    ));
    effects.push(Effect::Forward {
        listeners: Vec::new(),
        interfaces: BTreeSet::new(),
    });
    effects.extend(
        std::mem::take(&mut state.l2.reported)
            .into_iter()
            .map(|(address, services)| Effect::Report(Report::Withdrawn { address, services })),
    );
    effects
}

/// Forwarding failures held against addresses. A failed address is given up
/// for a hold-down that doubles with each failure in a row (from
/// [`Faults::FIRST_HOLD`] to [`Faults::MAX_HOLD`]), then tried again; a
/// success forgets its history.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    held: BTreeMap<IpAddr, Held>,
}

#[derive(Clone, Debug)]
struct Held {
    problems: Vec<(ServiceKey, String)>,
    until: Instant,
    hold: Duration,
}

impl Faults {
    /// The first hold-down.
    pub const FIRST_HOLD: Duration = Duration::from_secs(10);
    /// The longest hold-down.
    pub const MAX_HOLD: Duration = Duration::from_secs(300);

    /// Records that forwarding `address` failed at `now`. True when that is
    /// news (the address was not held).
    pub fn fail(
        &mut self,
        address: IpAddr,
        problems: Vec<(ServiceKey, String)>,
        now: Instant,
    ) -> bool {
        match self.held.get_mut(&address) {
            Some(h) if now < h.until => false,
            Some(h) => {
                h.hold = (h.hold * 2).min(Self::MAX_HOLD);
                h.until = now + h.hold;
                h.problems = problems;
                true
            }
            None => {
                self.held.insert(
                    address,
                    Held {
                        problems,
                        until: now + Self::FIRST_HOLD,
                        hold: Self::FIRST_HOLD,
                    },
                );
                true
            }
        }
    }

    /// Records that `address` is forwarded: its history is forgotten.
    pub fn succeed(&mut self, address: &IpAddr) {
        self.held.remove(address);
    }

    /// The failures still held at `now`.
    pub fn active(&self, now: Instant) -> BTreeMap<IpAddr, Vec<(ServiceKey, String)>> {
        self.held
            .iter()
            .filter(|(_, h)| now < h.until)
            .map(|(ip, h)| (*ip, h.problems.clone()))
            .collect()
    }

    /// When the next hold-down ends after `now`.
    pub fn next_end(&self, now: Instant) -> Option<Instant> {
        self.held
            .values()
            .map(|h| h.until)
            .filter(|u| *u > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::Constraints;

    const A: &str = "10.0.0.100";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn link(name: &str, index: u32) -> Link {
        crate::netlink::test_link(name, index, "10.0.0.1/24")
    }

    fn eth0() -> Vec<Link> {
        vec![link("eth0", 2)]
    }

    pub(super) fn announcement(address: &str, interfaces: &[&str]) -> Announcement {
        Announcement {
            address: ip(address),
            pool: "p".into(),
            services: vec![ServiceKey::new("default", "web")],
            interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
            constraints: Constraints::default(),
            l2: true,
            bgp: Vec::new(),
        }
    }

    pub(super) fn settings(node: &str) -> Settings {
        Settings {
            node: node.into(),
            cluster: false,
            timing: Timing {
                announce_count: 3,
                announce_interval: Duration::from_millis(100),
                reannounce: Duration::from_secs(30),
            },
            reserved: BTreeMap::new(),
        }
    }

    pub(super) fn world(
        members: &[&str],
        desired: Vec<Announcement>,
        links: Vec<Link>,
        now: Instant,
    ) -> World {
        World {
            members: Arc::new(members.iter().map(|s| s.to_string()).collect()),
            health: Default::default(),
            desired: view::by_address(desired),
            node_objects: Default::default(),
            bgp_peers: Vec::new(),
            links,
            forwards: Forwards::default(),
            faults: BTreeMap::new(),
            broken: BTreeMap::new(),
            now,
        }
    }

    /// The nodes in the order of their score for `address`, best first.
    fn ranked(nodes: &[&str], address: &str) -> Vec<String> {
        let mut v: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
        v.sort_by_key(|n| std::cmp::Reverse(election::score(n, ip(address))));
        v
    }

    /// The (address, interface, index) of each announcement, or with
    /// `withdrawals`, of each withdrawal.
    fn moves(effects: &[Effect], withdrawals: bool) -> Vec<(IpAddr, String, u32)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Announce { address, interface } if !withdrawals => {
                    Some((address, interface))
                }
                Effect::Withdraw { address, interface } if withdrawals => {
                    Some((address, interface))
                }
                _ => None,
            })
            .map(|(address, i)| (*address, i.name.clone(), i.index))
            .collect()
    }

    fn announced(effects: &[Effect]) -> Vec<(IpAddr, String, u32)> {
        moves(effects, false)
    }

    fn withdrawn(effects: &[Effect]) -> Vec<(IpAddr, String, u32)> {
        moves(effects, true)
    }

    fn published(effects: &[Effect]) -> Option<BTreeSet<IpAddr>> {
        effects.iter().find_map(|e| match e {
            Effect::Publish(set) => Some(set.clone()),
            _ => None,
        })
    }

    fn bursts(effects: &[Effect]) -> Vec<(Vec<IpAddr>, u32)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Burst { addresses, count } => Some((addresses.clone(), *count)),
                _ => None,
            })
            .collect()
    }

    /// A group of speakers, each with its own links, stepped together: what
    /// each publishes reaches the others before the next round, as gossip
    /// does within a round or two.
    struct Group {
        nodes: BTreeMap<String, (State, Vec<Link>)>,
        desired: Vec<Announcement>,
        now: Instant,
    }

    impl Group {
        fn new(names: &[&str], desired: Vec<Announcement>) -> Self {
            Self {
                nodes: names
                    .iter()
                    .map(|n| (n.to_string(), (State::default(), eth0())))
                    .collect(),
                desired,
                now: Instant::now(),
            }
        }

        /// One round: every node steps once with the others' last health.
        fn round(&mut self, cause: Cause) -> BTreeMap<String, Vec<Effect>> {
            let health: HealthMap = self
                .nodes
                .iter()
                .map(|(n, (s, _))| (n.clone(), Unservable::Addresses(s.told())))
                .collect();
            let members: Vec<String> = self.nodes.keys().cloned().collect();
            let members: Vec<&str> = members.iter().map(String::as_str).collect();
            let mut out = BTreeMap::new();
            for (name, (state, links)) in &mut self.nodes {
                let mut w = world(&members, self.desired.clone(), links.clone(), self.now);
                let mut others = health.clone();
                others.remove(name);
                w.health = Arc::new(others);
                out.insert(name.clone(), step(&settings(name), state, &w, cause));
            }
            out
        }

        fn owners(&self, address: &str) -> Vec<String> {
            self.nodes
                .iter()
                .filter(|(_, (s, _))| s.l2.owned.contains_key(&ip(address)))
                .map(|(n, _)| n.clone())
                .collect()
        }

        fn links(&mut self, node: &str) -> &mut Vec<Link> {
            &mut self.nodes.get_mut(node).unwrap().1
        }
    }

    #[test]
    fn exactly_one_live_node_owns_each_address_and_only_an_allowed_one() {
        let mut restricted = announcement("fd00::100", &["eth0"]);
        restricted.constraints.allowed_nodes = Some(["node-2".to_string()].into());
        let mut g = Group::new(
            &["node-1", "node-2", "node-3"],
            vec![announcement(A, &["eth0"]), restricted],
        );
        g.nodes
            .values_mut()
            .for_each(|(_, l)| l[0].networks.push("fd00::1/64".parse().unwrap()));
        g.round(Cause::Start);
        assert_eq!(g.owners(A).len(), 1);
        assert_eq!(g.owners("fd00::100"), ["node-2"]);
        g.nodes.remove("node-2");
        g.round(Cause::Membership);
        assert!(
            g.owners("fd00::100").is_empty(),
            "an address restricted to a dead node is announced by nobody"
        );
    }

    #[test]
    fn with_a_cluster_only_members_that_are_nodes_may_own() {
        let node = |name: &str| K8sNode {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut w = world(
            &["node-1", "intruder"],
            vec![announcement(A, &["eth0"])],
            eth0(),
            Instant::now(),
        );
        w.node_objects = Arc::new(vec![node("node-1"), node("node-2")]);
        let cluster = |n: &str| Settings {
            cluster: true,
            ..settings(n)
        };
        let mut intruder = State::default();
        step(&cluster("intruder"), &mut intruder, &w, Cause::Start);
        assert!(intruder.l2.owned.is_empty(), "knows the secret, is no Node");
        let mut one = State::default();
        step(&cluster("node-1"), &mut one, &w, Cause::Start);
        assert!(
            one.l2.owned.contains_key(&ip(A)),
            "the only candidate that is a node"
        );
        // Without a cluster there are no Node objects to check against.
        w.members = Arc::new(["intruder".to_string()].into());
        let mut anyone = State::default();
        step(&settings("intruder"), &mut anyone, &w, Cause::Start);
        assert!(anyone.l2.owned.contains_key(&ip(A)));
    }

    #[test]
    fn an_owner_whose_interface_goes_down_gives_the_address_up_and_takes_it_back() {
        let names = ["n1", "n2", "n3"];
        let order = ranked(&names, A);
        let (first, second) = (order[0].clone(), order[1].clone());
        let mut g = Group::new(&names, vec![announcement(A, &["eth0"])]);
        g.round(Cause::Start);
        assert_eq!(g.owners(A), [first.as_str()]);

        // Down on the owner: it withdraws at once and says so.
        g.links(&first)[0].up = false;
        let effects = g.round(Cause::View);
        let mine = &effects[&first];
        assert_eq!(withdrawn(mine), [(ip(A), "eth0".to_string(), 2)]);
        assert_eq!(published(mine), Some([ip(A)].into()));
        let gave_up: Vec<&Effect> = mine
            .iter()
            .filter(|e| matches!(e, Effect::Report(Report::GaveUp { .. })))
            .collect();
        assert_eq!(gave_up.len(), 1, "{mine:?}");
        let Effect::Report(Report::GaveUp { reason, .. }) = gave_up[0] else {
            unreachable!()
        };
        assert!(reason.contains("eth0: it is down"), "{reason}");
        // The next best node takes it as soon as it hears, with a burst.
        let effects = g.round(Cause::View);
        assert_eq!(g.owners(A), [second.as_str()]);
        assert_eq!(
            announced(&effects[&second]),
            [(ip(A), "eth0".to_string(), 2)]
        );
        assert_eq!(bursts(&effects[&second]), [(vec![ip(A)], 3)]);
        assert!(
            !effects[&first]
                .iter()
                .any(|e| matches!(e, Effect::Report(Report::GaveUp { .. }))),
            "given up once, reported once"
        );

        // Back up: the first node waits out the grace, still saying it
        // cannot serve the address, so the second keeps it meanwhile.
        g.links(&first)[0].up = true;
        let effects = g.round(Cause::View);
        assert_eq!(published(&effects[&first]), None, "not yet");
        let wake = effects[&first].iter().find_map(|e| match e {
            Effect::WakeAt(at) => Some(*at),
            _ => None,
        });
        assert_eq!(wake, Some(g.now + RECOVERY_GRACE));
        g.round(Cause::View);
        assert_eq!(g.owners(A), [second.as_str()], "not before the grace");
        // A flap within the grace starts it again.
        g.now += RECOVERY_GRACE / 2;
        g.links(&first)[0].up = false;
        g.round(Cause::View);
        g.links(&first)[0].up = true;
        g.round(Cause::View);
        g.now += RECOVERY_GRACE / 2;
        g.round(Cause::View);
        assert_eq!(
            g.owners(A),
            [second.as_str()],
            "the flap restarted the grace"
        );
        g.now += RECOVERY_GRACE;
        let effects = g.round(Cause::View);
        assert_eq!(published(&effects[&first]), Some(BTreeSet::new()));
        assert!(
            g.owners(A).contains(&first),
            "taken back once the grace is over"
        );
        let effects = g.round(Cause::View);
        assert_eq!(
            g.owners(A),
            [first.as_str()],
            "back to its usual owner alone"
        );
        assert_eq!(
            withdrawn(&effects[&second]),
            [(ip(A), "eth0".to_string(), 2)]
        );
    }

    #[test]
    fn no_carrier_or_a_missing_interface_counts_as_down_and_its_return_is_picked_up() {
        let names = ["n1", "n2"];
        let first = ranked(&names, A)[0].clone();
        let mut g = Group::new(&names, vec![announcement(A, &["eth1"])]);
        // eth1 does not exist yet on the best node: it never takes the address.
        g.nodes
            .values_mut()
            .for_each(|(_, l)| l.push(link("eth1", 7)));
        g.links(&first).retain(|l| l.name != "eth1");
        let effects = g.round(Cause::Start);
        assert!(announced(&effects[&first]).is_empty());
        let gave_up = effects[&first]
            .iter()
            .find_map(|e| match e {
                Effect::Report(Report::GaveUp { reason, .. }) => Some(reason.clone()),
                _ => None,
            })
            .expect("a report");
        assert!(gave_up.contains("eth1 does not exist"), "{gave_up}");
        g.round(Cause::View);
        assert_ne!(g.owners(A), [first.as_str()]);
        assert_eq!(g.owners(A).len(), 1);
        // It appears: picked up from the links alone.
        g.links(&first).push(link("eth1", 9));
        g.round(Cause::View);
        g.now += RECOVERY_GRACE;
        g.round(Cause::View);
        g.round(Cause::View);
        assert_eq!(g.owners(A), [first.as_str()], "eth1 appeared, no restart");
        // Without carrier (a pulled cable, a veth whose peer is down).
        g.links(&first).last_mut().unwrap().carrier = false;
        let effects = g.round(Cause::View);
        assert_eq!(
            withdrawn(&effects[&first]),
            [(ip(A), "eth1".to_string(), 9)]
        );
    }

    #[test]
    fn a_recreated_interface_is_announced_on_again_with_its_new_index() {
        let mut state = State::default();
        let desired = vec![announcement(A, &["eth0"])];
        let now = Instant::now();
        step(
            &settings("n1"),
            &mut state,
            &world(&["n1"], desired.clone(), eth0(), now),
            Cause::Start,
        );
        let effects = step(
            &settings("n1"),
            &mut state,
            &world(&["n1"], desired, vec![link("eth0", 12)], now),
            Cause::View,
        );
        assert_eq!(withdrawn(&effects), [(ip(A), "eth0".to_string(), 2)]);
        assert_eq!(announced(&effects), [(ip(A), "eth0".to_string(), 12)]);
        assert_eq!(bursts(&effects), [(vec![ip(A)], 3)]);
        let first_withdraw = effects
            .iter()
            .position(|e| matches!(e, Effect::Withdraw { .. }));
        let first_announce = effects
            .iter()
            .position(|e| matches!(e, Effect::Announce { .. }));
        assert!(first_withdraw < first_announce, "withdrawals come first");
    }

    #[test]
    fn one_interface_down_of_two_keeps_the_address_on_the_other() {
        let mut state = State::default();
        let desired = vec![announcement(A, &["eth0", "eth1"])];
        let now = Instant::now();
        let links = vec![link("eth0", 2), link("eth1", 3)];
        step(
            &settings("n1"),
            &mut state,
            &world(&["n1", "n2"], desired.clone(), links.clone(), now),
            Cause::Start,
        );
        let mut down = links;
        down[1].up = false;
        let effects = step(
            &settings("n1"),
            &mut state,
            &world(&["n1", "n2"], desired, down, now),
            Cause::View,
        );
        if state.l2.owned.contains_key(&ip(A)) {
            assert_eq!(withdrawn(&effects), [(ip(A), "eth1".to_string(), 3)]);
        }
        assert!(state.serving.unservable.is_empty(), "eth0 still serves it");
        assert_eq!(published(&effects), None);
    }

    #[test]
    fn an_address_nobody_can_serve_is_still_owned_by_its_usual_owner() {
        let names = ["n1", "n2"];
        let first = ranked(&names, A)[0].clone();
        let mut g = Group::new(&names, vec![announcement(A, &["eth0"])]);
        g.nodes.values_mut().for_each(|(_, l)| l[0].up = false);
        g.round(Cause::Start);
        g.round(Cause::View);
        assert_eq!(
            g.owners(A),
            [first],
            "better a node with a problem than nobody"
        );
    }

    #[test]
    fn a_forwarding_failure_gives_the_address_up_until_its_hold_down_ends() {
        let names = ["n1", "n2"];
        let order = ranked(&names, A);
        let mut state = State::default();
        let now = Instant::now();
        let desired = vec![announcement(A, &["eth0"])];
        let me = settings(&order[0]);
        step(
            &me,
            &mut state,
            &world(&names, desired.clone(), eth0(), now),
            Cause::Start,
        );
        assert!(state.l2.owned.contains_key(&ip(A)));
        let mut faults = Faults::default();
        let problem = (
            ServiceKey::new("default", "web"),
            "TCP 10.0.0.100:80: address in use".to_string(),
        );
        assert!(faults.fail(ip(A), vec![problem.clone()], now));
        assert!(
            !faults.fail(ip(A), vec![problem.clone()], now),
            "held: no news"
        );
        let mut w = world(&names, desired.clone(), eth0(), now);
        w.faults = faults.active(now);
        let effects = step(&me, &mut state, &w, Cause::View);
        assert!(
            !state.l2.owned.contains_key(&ip(A)),
            "given up to {}",
            order[1]
        );
        assert_eq!(published(&effects), Some([ip(A)].into()));
        assert!(effects.contains(&Effect::Report(Report::NotForwarded {
            service: problem.0.clone(),
            message: problem.1.clone(),
        })));
        // The hold-down ends: tried again; a second failure holds twice as long.
        let later = now + Faults::FIRST_HOLD;
        assert_eq!(faults.next_end(now), Some(later));
        assert!(faults.active(later).is_empty());
        assert!(faults.fail(ip(A), vec![problem.clone()], later));
        assert_eq!(faults.next_end(later), Some(later + 2 * Faults::FIRST_HOLD));
        faults.succeed(&ip(A));
        assert!(faults.fail(ip(A), vec![problem], later));
        assert_eq!(
            faults.next_end(later),
            Some(later + Faults::FIRST_HOLD),
            "a success forgets"
        );
    }

    #[test]
    fn bursts_follow_the_cause_and_stop_withdraws_everything() {
        let mut state = State::default();
        let now = Instant::now();
        let me = settings("n1");
        let one = vec![announcement(A, &["eth0"])];
        let effects = step(
            &me,
            &mut state,
            &world(&["n1"], one.clone(), eth0(), now),
            Cause::Start,
        );
        assert_eq!(bursts(&effects), [(vec![ip(A)], 3)]);
        let two = vec![
            announcement(A, &["eth0"]),
            announcement("10.0.0.101", &["eth0"]),
        ];
        let effects = step(
            &me,
            &mut state,
            &world(&["n1"], two.clone(), eth0(), now),
            Cause::View,
        );
        assert_eq!(
            bursts(&effects),
            [(vec![ip("10.0.0.101")], 3)],
            "only what was gained"
        );
        let effects = step(
            &me,
            &mut state,
            &world(&["n1", "n2", "n3"], two.clone(), eth0(), now),
            Cause::Membership,
        );
        let owned: Vec<IpAddr> = state.l2.owned.keys().copied().collect();
        if !owned.is_empty() {
            assert_eq!(
                bursts(&effects),
                [(owned.clone(), 3)],
                "everything after a change of group"
            );
        }
        let effects = step(
            &me,
            &mut state,
            &world(&["n1"], two.clone(), eth0(), now),
            Cause::Reannounce,
        );
        assert_eq!(bursts(&effects), [(vec![ip(A), ip("10.0.0.101")], 1)]);
        assert!(
            !effects.iter().any(|e| matches!(e, Effect::Forward { .. })),
            "a re-announcement touches nothing else"
        );
        let effects = stop(&mut state);
        assert_eq!(withdrawn(&effects).len(), 2);
        assert!(state.l2.owned.is_empty());
        assert_eq!(
            effects
                .iter()
                .filter(|e| matches!(e, Effect::Report(Report::Withdrawn { .. })))
                .count(),
            2
        );
    }

    #[test]
    fn a_node_not_eligible_for_an_address_never_says_it_cannot_serve_it() {
        let mut elsewhere = announcement(A, &["eth9"]);
        elsewhere.constraints.allowed_nodes = Some(["n2".to_string()].into());
        let mut state = State::default();
        let effects = step(
            &settings("n1"),
            &mut state,
            &world(&["n1", "n2"], vec![elsewhere], eth0(), Instant::now()),
            Cause::Start,
        );
        assert_eq!(published(&effects), None);
        assert!(state.serving.unservable.is_empty());
    }
}

/// Each phase of the pipeline on its own, as tables.
#[cfg(test)]
mod phase_tests {
    use super::tests::{announcement, settings, world};
    use super::*;
    use crate::speaker::view::BgpAdvertisement;

    fn node(name: &str, labels: &[(&str, &str)]) -> election::Node {
        election::Node {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            alive: true,
            network_unavailable: false,
            cannot_serve: Unservable::default(),
        }
    }

    /// Who bursts what: every owned address when the node starts, the group
    /// changes or it is time to re-announce (once), else what was gained.
    #[test]
    fn bursts_by_cause() {
        let mut state = State::default();
        for ip in ["10.0.0.1", "10.0.0.2"] {
            state.l2.owned.insert(ip.parse().unwrap(), Vec::new());
        }
        let gained: Vec<IpAddr> = vec!["10.0.0.2".parse().unwrap()];
        let all: Vec<IpAddr> = state.l2.owned.keys().copied().collect();
        for (cause, gained, want) in [
            (Cause::Start, vec![], Some((all.clone(), 3))),
            (Cause::Membership, vec![], Some((all.clone(), 3))),
            (Cause::Reannounce, vec![], Some((all.clone(), 1))),
            (Cause::View, gained.clone(), Some((gained.clone(), 3))),
            (Cause::View, vec![], None),
        ] {
            let mut effects = Vec::new();
            burst(&settings("n1"), &state, cause, gained, &mut effects);
            let got = effects.into_iter().find_map(|e| match e {
                Effect::Burst { addresses, count } => Some((addresses, count)),
                _ => None,
            });
            assert_eq!(got, want, "{cause:?}");
        }
    }

    /// The routes a node advertises: the address or its aggregate, only
    /// where an advertisement's selectors take the node, never for an
    /// address it failed to forward.
    #[test]
    fn bgp_routes_by_advertisement_and_fault() {
        let advertised = |prefix_length: u8, selector: Option<(&str, &str)>| BgpAdvertisement {
            node_selectors: selector
                .map(|pair| crate::ipam::LabelSelector::labels([pair]))
                .into_iter()
                .collect(),
            peers: Vec::new(),
            prefix_length,
            attributes: Default::default(),
        };
        let rack_a = node("n1", &[("rack", "a")]);
        for (ad, faulty, want) in [
            (advertised(32, None), false, vec!["10.0.0.7/32"]),
            (advertised(24, None), false, vec!["10.0.0.0/24"]),
            (
                advertised(32, Some(("rack", "a"))),
                false,
                vec!["10.0.0.7/32"],
            ),
            (advertised(32, Some(("rack", "b"))), false, vec![]),
            (advertised(32, None), true, vec![]),
        ] {
            let mut w = world(
                &["n1"],
                vec![Announcement {
                    bgp: vec![ad.clone()],
                    ..announcement("10.0.0.7", &[])
                }],
                Vec::new(),
                Instant::now(),
            );
            if faulty {
                w.faults.insert(
                    "10.0.0.7".parse().unwrap(),
                    vec![(ServiceKey::new("d", "w"), "x".into())],
                );
            }
            let got: Vec<String> = bgp_wanted(&rack_a, &mut State::default(), &w, &Visit::All)
                .routes
                .iter()
                .map(|r| r.prefix.to_string())
                .collect();
            assert_eq!(got, want, "{ad:?}, faulty {faulty}");
        }
    }

    /// With a cluster, a member counts only if a Node has its name; without
    /// one (a static file), every member counts.
    #[test]
    fn members_that_count() {
        let objects: Vec<K8sNode> = ["n1", "n2"]
            .iter()
            .map(|n| K8sNode {
                metadata: kube::api::ObjectMeta {
                    name: Some(n.to_string()),
                    ..Default::default()
                },
                ..Default::default()
            })
            .collect();
        let refs: Vec<&K8sNode> = objects.iter().collect();
        let w = world(
            &["n1", "n2", "stranger"],
            Vec::new(),
            Vec::new(),
            Instant::now(),
        );
        for (cluster, want) in [
            (true, vec!["n1", "n2"]),
            (false, vec!["n1", "n2", "stranger"]),
        ] {
            let s = Settings {
                cluster,
                ..settings("n1")
            };
            let got = counted_members(&s, &mut State::default(), &w, &refs);
            assert_eq!(got.iter().map(String::as_str).collect::<Vec<_>>(), want);
        }
    }
}

#[cfg(test)]
mod reserved_tests {
    use super::*;
    use crate::forwarder::plan::{Endpoint, Frontend, FrontendPort, Policy};

    fn frontend(name: &str, port: u16, protocol: Protocol) -> Frontend {
        Frontend {
            service: ServiceKey::new("default", name),
            addresses: vec!["10.0.0.100".parse().unwrap()],
            ports: vec![FrontendPort {
                name: String::new(),
                port,
                protocol,
                routing: None,
            }],
            policy: Policy::default(),
            endpoints: vec![Endpoint {
                address: "10.0.0.21".parse().unwrap(),
                node: None,
                ready: true,
                serving: true,
                ports: [((String::new(), protocol), 8080)].into(),
            }],
        }
    }

    #[test]
    fn a_port_the_node_keeps_is_never_forwarded_and_the_service_is_told_whose_it_is() {
        let settings = Settings {
            reserved: [
                ((Protocol::Tcp, 10250), "the kubelet's".to_string()),
                ((Protocol::Udp, 7947), "ironlb's gossip".to_string()),
            ]
            .into(),
            ..tests::settings("n1")
        };
        let world = World {
            forwards: Forwards::new(
                vec![
                    frontend("web", 80, Protocol::Tcp),
                    frontend("kubelet-clash", 10250, Protocol::Tcp),
                    // The same number over the other protocol is not the node's.
                    frontend("udp-10250", 10250, Protocol::Udp),
                    frontend("gossip-clash", 7947, Protocol::Udp),
                ],
                Vec::new(),
            ),
            ..tests::world(
                &["n1"],
                vec![tests::announcement("10.0.0.100", &["eth0"])],
                vec![crate::netlink::test_link("eth0", 2, "10.0.0.1/24")],
                Instant::now(),
            )
        };
        let effects = step(&settings, &mut State::default(), &world, Cause::Start);
        let forwarded: Vec<(Protocol, u16)> = effects
            .iter()
            .find_map(|e| match e {
                Effect::Forward { listeners, .. } => Some(
                    listeners
                        .iter()
                        .map(|l| (l.protocol, l.address.port()))
                        .collect(),
                ),
                _ => None,
            })
            .expect("a Forward effect");
        assert_eq!(forwarded, [(Protocol::Tcp, 80), (Protocol::Udp, 10250)]);
        let refused: Vec<String> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Report(Report::NotForwarded { service, message }) => {
                    Some(format!("{}: {message}", service.name))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            refused,
            [
                "gossip-clash: UDP port 7947 is the node's own (ironlb's gossip): it is never \
                 forwarded on a Service address; choose another port",
                "kubelet-clash: TCP port 10250 is the node's own (the kubelet's): it is never \
                 forwarded on a Service address; choose another port",
            ]
        );
    }
}

#[cfg(test)]
mod bgp_tests {
    use super::tests::settings;
    use super::*;
    use crate::bgp::peer::PeerSpec;
    use crate::speaker::view::{BgpAdvertisement, WantedPeer};

    fn peer(name: &str) -> WantedPeer {
        let spec: crate::api::BGPPeerSpec = serde_json::from_value(serde_json::json!({
            "myASN": 64512, "peerASN": 64513, "peerAddress": "10.0.0.1"
        }))
        .expect("spec");
        WantedPeer {
            spec: crate::bgp::config::peer_spec(name, &spec, None, None, false).expect("valid"),
            constraints: Default::default(),
        }
    }

    fn both(address: &str) -> Announcement {
        Announcement {
            bgp: vec![BgpAdvertisement {
                node_selectors: Vec::new(),
                peers: Vec::new(),
                prefix_length: 32,
                attributes: Default::default(),
            }],
            ..tests::announcement(address, &["eth0"])
        }
    }

    fn world(members: &[&str], desired: Vec<Announcement>) -> World {
        World {
            bgp_peers: vec![peer("tor")],
            ..tests::world(
                members,
                desired,
                vec![crate::netlink::test_link("eth0", 2, "10.0.0.1/24")],
                Instant::now(),
            )
        }
    }

    fn advertised(effects: &[Effect]) -> Option<(Vec<PeerSpec>, Vec<ipnetwork::IpNetwork>)> {
        effects.iter().rev().find_map(|e| match e {
            Effect::Bgp(b) => Some((b.peers.clone(), b.routes.iter().map(|r| r.prefix).collect())),
            _ => None,
        })
    }

    /// A pool announced over layer 2 and advertised over BGP (as MetalLB
    /// allows): one node answers ARP, every node advertises.
    #[test]
    fn a_pool_with_both_is_announced_by_one_node_and_advertised_by_all() {
        let nodes = ["node-1", "node-2", "node-3"];
        let mut announcing = 0;
        for n in nodes {
            let mut state = State::default();
            let effects = step(
                &settings(n),
                &mut state,
                &world(&nodes, vec![both("10.0.0.100")]),
                Cause::Start,
            );
            announcing += usize::from(effects.iter().any(|e| matches!(e, Effect::Announce { .. })));
            let (peers, routes) = advertised(&effects).expect("a BGP effect");
            assert_eq!(peers.len(), 1, "{n}");
            assert_eq!(
                routes,
                ["10.0.0.100/32"
                    .parse::<ipnetwork::IpNetwork>()
                    .expect("net")],
                "{n}"
            );
        }
        assert_eq!(announcing, 1, "exactly one node answers ARP");
    }

    /// BGP only: no node answers ARP; a node whose forwarding of the address
    /// failed stops advertising it; stopping withdraws before the listeners
    /// close.
    #[test]
    fn bgp_only_no_arp_a_failed_node_stops_advertising_and_stop_withdraws_first() {
        let mut a = both("10.0.0.100");
        a.l2 = false;
        let mut state = State::default();
        let mut w = world(&["node-1"], vec![a]);
        let effects = step(&settings("node-1"), &mut state, &w, Cause::Start);
        assert!(!effects.iter().any(|e| matches!(e, Effect::Announce { .. })));
        assert_eq!(advertised(&effects).expect("advertised").1.len(), 1);
        w.faults.insert(
            "10.0.0.100".parse().expect("ip"),
            vec![(ServiceKey::new("default", "web"), "bind failed".into())],
        );
        let effects = step(&settings("node-1"), &mut state, &w, Cause::View);
        assert_eq!(advertised(&effects).expect("withdrawn").1.len(), 0);
        w.faults.clear();
        step(&settings("node-1"), &mut state, &w, Cause::View);
        let effects = stop(&mut state);
        let bgp = effects
            .iter()
            .position(|e| matches!(e, Effect::Bgp(b) if b.routes.is_empty()));
        let forward = effects
            .iter()
            .position(|e| matches!(e, Effect::Forward { .. }));
        assert!(bgp.is_some() && bgp < forward, "{effects:?}");
    }
}

#[cfg(test)]
mod incremental_tests {
    use super::tests::{announcement, settings};
    use super::*;
    use crate::speaker::view::BgpAdvertisement;
    use proptest::prelude::*;

    const NODES: [&str; 3] = ["n1", "n2", "n3"];

    /// One change to the world: which part, and the random picks it uses.
    #[derive(Clone, Debug)]
    enum Change {
        /// Address `i` (of six) is announced with these settings, or not.
        Address(usize, Option<(u8, u8, bool)>),
        Members(u8),
        Health(usize, u8),
        Links(bool),
        Fault(usize, bool),
        Broken(bool),
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            4 => (0..6usize, proptest::option::of((0..4u8, 0..8u8, any::<bool>())))
                .prop_map(|(i, a)| Change::Address(i, a)),
            1 => (0..4u8).prop_map(Change::Members),
            1 => (1..3usize, 0..64u8).prop_map(|(n, set)| Change::Health(n, set)),
            1 => any::<bool>().prop_map(Change::Links),
            1 => (0..6usize, any::<bool>()).prop_map(|(i, f)| Change::Fault(i, f)),
            1 => any::<bool>().prop_map(Change::Broken),
        ]
    }

    fn address(i: usize) -> IpAddr {
        format!("10.0.0.{}", 100 + i).parse().unwrap()
    }

    /// Applies `c` to `w` the way the speaker hands a changed world: the
    /// parts that did not change stay the same `Arc`s and map nodes.
    fn apply(w: &mut World, c: &Change) {
        match c {
            Change::Address(i, None) => {
                w.desired.remove(&address(*i));
            }
            Change::Address(i, Some((interfaces, local, bgp))) => {
                let names: &[&str] = match interfaces {
                    0 => &[],
                    1 => &["eth0"],
                    2 => &["eth9"],
                    _ => &["eth0", "eth1"],
                };
                let mut a = announcement(&address(*i).to_string(), names);
                // Bits 0-2: which nodes have a local endpoint; 7 and up: no
                // Local Service.
                a.constraints.local_endpoints = (*local < 7).then(|| {
                    NODES
                        .iter()
                        .enumerate()
                        .filter(|(n, _)| local & (1 << n) != 0)
                        .map(|(_, n)| n.to_string())
                        .collect()
                });
                if *bgp {
                    a.bgp = vec![BgpAdvertisement {
                        node_selectors: Vec::new(),
                        peers: Vec::new(),
                        prefix_length: 32,
                        attributes: Default::default(),
                    }];
                    a.l2 = interfaces % 2 == 0;
                }
                w.desired.insert(address(*i), Arc::new(a));
            }
            Change::Members(set) => {
                // This node is always a member.
                w.members = Arc::new(
                    NODES
                        .iter()
                        .enumerate()
                        .filter(|(n, _)| *n == 0 || set & (1 << (n - 1)) != 0)
                        .map(|(_, n)| n.to_string())
                        .collect(),
                );
            }
            Change::Health(n, set) => {
                let mut health = (*w.health).clone();
                let cannot: BTreeSet<IpAddr> = (0..6)
                    .filter(|i| set & (1 << i) != 0)
                    .map(address)
                    .collect();
                health.insert(NODES[*n].to_string(), Unservable::Addresses(cannot));
                w.health = Arc::new(health);
            }
            Change::Links(two) => {
                w.links = vec![crate::netlink::test_link("eth0", 2, "10.0.0.1/24")];
                if *two {
                    w.links
                        .push(crate::netlink::test_link("eth1", 3, "10.0.0.2/24"));
                }
            }
            Change::Fault(i, on) => {
                if *on {
                    w.faults.insert(
                        address(*i),
                        vec![(ServiceKey::new("default", "web"), "no port".into())],
                    );
                } else {
                    w.faults.remove(&address(*i));
                }
            }
            Change::Broken(on) => {
                w.broken = if *on {
                    [("eth1".to_string(), (3, "socket refused".to_string()))].into()
                } else {
                    BTreeMap::new()
                };
            }
        }
    }

    proptest! {
        /// `only_left` names exactly the members that left, and only when
        /// none came.
        #[test]
        fn only_left_names_the_leavers_when_no_one_came(
            before in proptest::collection::btree_set("[a-d]{1,2}", 0..8),
            after in proptest::collection::btree_set("[a-d]{1,2}", 0..8),
        ) {
            let want = after
                .is_subset(&before)
                .then(|| before.difference(&after).cloned().collect::<Vec<_>>());
            prop_assert_eq!(only_left(&before, &after), want);
        }

        /// Change after change, a speaker that revisits only what changed
        /// decides exactly what one that revisits every address decides.
        #[test]
        fn revisiting_only_what_changed_decides_as_revisiting_everything(
            changes in proptest::collection::vec((change(), 0..3u8), 1..24),
        ) {
            let settings = settings("n1");
            let mut world = super::tests::world(
                &NODES,
                Vec::new(),
                vec![crate::netlink::test_link("eth0", 2, "10.0.0.1/24")],
                Instant::now(),
            );
            let (mut incremental, mut whole) = (State::default(), State::default());
            let mut cause = Cause::Start;
            for (c, next) in changes {
                apply(&mut world, &c);
                world.now += Duration::from_millis(400);
                whole.revisit_everything();
                let got = step(&settings, &mut incremental, &world, cause);
                let want = step(&settings, &mut whole, &world, cause);
                prop_assert_eq!(&got, &want, "after {:?}", c);
                prop_assert_eq!(&incremental.l2.owned, &whole.l2.owned);
                prop_assert_eq!(incremental.told(), whole.told());
                prop_assert_eq!(&incremental.bgp.advertised, &whole.bgp.advertised);
                cause = [Cause::View, Cause::Membership, Cause::Reannounce][usize::from(next)];
            }
        }
    }
}
