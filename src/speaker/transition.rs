//! The speaker's decisions, as a pure transition: the state it keeps and one
//! atomic view of the world in, the effects to run out (announce, withdraw,
//! burst, forward, report, tell the group what this node cannot serve).
//!
//! Nothing here touches a socket, a clock or the kernel: the executor
//! ([`super::executor`]) runs the effects and feeds their failures back as
//! part of the next view, so every scenario of failover, of an interface that
//! goes down and of a listener that cannot start is tested here without root;
//! the namespace labs prove the same on the wire.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node as K8sNode;
use kube::ResourceExt;
use tracing::warn;

use super::config::{Forwards, Timing};
use super::report::Report;
use super::view::{self, Announcement};
use crate::election::{self, Unservable};
use crate::forwarder::plan::Listener;
use crate::ipam::ServiceKey;
use crate::membership::HealthMap;
use crate::netlink::{Link, Skip};

/// How long a node waits, once it can serve an address again, before it
/// takes the address back: time for its peers to hear that it can, so the
/// current owner lets go as it takes over and the two never both answer.
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
}

/// Everything the speaker decides from, read at one instant.
#[derive(Clone, Debug)]
pub struct World {
    /// The live members of the gossip group, this node included.
    pub members: BTreeSet<String>,
    /// What the other members say they cannot serve.
    pub health: HealthMap,
    /// The addresses to announce.
    pub desired: Vec<Announcement>,
    /// The Node objects (with a cluster; empty until known).
    pub node_objects: Vec<K8sNode>,
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

/// What the speaker remembers between transitions.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Address → the interfaces announcing it.
    pub owned: BTreeMap<IpAddr, Vec<Iface>>,
    /// Address → the Services on it, as last reported.
    reported: BTreeMap<IpAddr, Vec<ServiceKey>>,
    /// Forwarding problems of owned Services, as last reported.
    reported_problems: BTreeSet<(ServiceKey, String)>,
    /// What this node told the group it cannot serve, and why.
    pub unservable: BTreeMap<IpAddr, String>,
    /// Addresses this node can serve again, and since when.
    recovered: BTreeMap<IpAddr, Instant>,
    /// Addresses given up to another node, as last reported.
    gave_up: BTreeSet<IpAddr>,
    /// The speaker's node name matched no Node object last time.
    warned_unknown: bool,
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
                .map(|(l, skip)| format!("{} {skip}", l.name)),
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
                .map(|(l, skip)| format!("{} {skip}", l.name)),
        );
    }
    Err(format!("no interface can announce it: {}", why.join("; ")))
}

/// Runs one transition: from `state` and `world`, woken by `cause`, the
/// effects to run; `state` becomes what the speaker will have after them.
pub fn step(settings: &Settings, state: &mut State, world: &World, cause: Cause) -> Vec<Effect> {
    let me = settings.node.as_str();
    let mut effects = Vec::new();
    let objects: Vec<&K8sNode> = world.node_objects.iter().collect();
    let unknown =
        settings.cluster && !objects.is_empty() && !objects.iter().any(|n| n.name_any() == me);
    if unknown && !state.warned_unknown {
        warn!(node = %me, "no Node object has this speaker's node name, so it owns no address: \
               check --node / NODE_NAME (the DaemonSet sets it from spec.nodeName)");
    }
    state.warned_unknown = unknown;
    // With a cluster, only members named like a Node object count: a speaker
    // that knows the gossip secret but runs on no node of the cluster (a test
    // box, a stolen secret) never owns an address.
    let members: BTreeSet<String> = world
        .members
        .iter()
        .filter(|m| !settings.cluster || objects.iter().any(|n| n.name_any() == **m))
        .cloned()
        .collect();
    let bare = view::nodes(&members, &objects, &HealthMap::new());
    let me_node = bare.iter().find(|n| n.name == me);

    // What this node cannot serve, among the addresses it may announce.
    let mut usable: BTreeMap<IpAddr, Vec<Iface>> = BTreeMap::new();
    let mut unservable: BTreeMap<IpAddr, String> = BTreeMap::new();
    for a in &world.desired {
        if !me_node.is_some_and(|n| election::eligibility(n, &a.constraints).is_ok()) {
            continue;
        }
        let fault = world.faults.get(&a.address).map(|problems| {
            let messages: BTreeSet<&str> = problems.iter().map(|(_, m)| m.as_str()).collect();
            messages.into_iter().collect::<Vec<_>>().join("; ")
        });
        match (interfaces(&world.links, a, &world.broken), fault) {
            (Ok(ifaces), None) => {
                usable.insert(a.address, ifaces);
            }
            (Ok(ifaces), Some(why)) => {
                usable.insert(a.address, ifaces);
                unservable.insert(a.address, why);
            }
            (Err(why), _) => {
                unservable.insert(a.address, why);
            }
        }
    }
    for ip in state.unservable.keys() {
        if !unservable.contains_key(ip) {
            state.recovered.insert(*ip, world.now);
        }
    }
    state
        .recovered
        .retain(|ip, since| !unservable.contains_key(ip) && world.now < *since + RECOVERY_GRACE);
    if let Some(first) = state.recovered.values().min() {
        effects.push(Effect::WakeAt(*first + RECOVERY_GRACE));
    }
    if unservable.keys().ne(state.unservable.keys()) {
        effects.push(Effect::Publish(unservable.keys().copied().collect()));
    }
    state.unservable = unservable;

    // The election, with this node's own health as it is now (its peers
    // learn it within a gossip round) and recovering addresses still held
    // back.
    let mut health = world.health.clone();
    let own: BTreeSet<IpAddr> = state
        .unservable
        .keys()
        .chain(state.recovered.keys())
        .copied()
        .collect();
    health.insert(me.to_string(), Unservable::Addresses(own));
    let nodes = view::nodes(&members, &objects, &health);
    let mut healthy_me = health.clone();
    healthy_me.remove(me);
    let unhindered = view::nodes(&members, &objects, &healthy_me);
    let mut wanted: BTreeMap<IpAddr, Vec<Iface>> = BTreeMap::new();
    let mut gave_up: BTreeSet<IpAddr> = BTreeSet::new();
    for a in &world.desired {
        let owner = election::owner(a.address, &nodes, &a.constraints);
        if owner.is_some_and(|o| o.name == me) {
            // Owned even when it cannot be served here, if no node can: then
            // what can be announced is.
            wanted.insert(
                a.address,
                usable.get(&a.address).cloned().unwrap_or_default(),
            );
        } else if election::owner(a.address, &unhindered, &a.constraints)
            .is_some_and(|o| o.name == me)
            && let Some(reason) = state.unservable.get(&a.address)
        {
            gave_up.insert(a.address);
            if !state.gave_up.contains(&a.address) {
                effects.push(Effect::Report(Report::GaveUp {
                    address: a.address,
                    services: a.services.clone(),
                    reason: reason.clone(),
                }));
            }
        }
    }
    state.gave_up = gave_up;

    // Withdrawals first: nothing this node stops serving waits for anything.
    for (ip, ifaces) in &state.owned {
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
        let had = state.owned.get(ip);
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
    state.owned = wanted;

    // Forwarding: the listeners of owned addresses; what keeps a Service from
    // being forwarded as asked is reported once.
    if cause != Cause::Reannounce {
        let keys: BTreeSet<IpAddr> = state.owned.keys().copied().collect();
        let plan = crate::forwarder::plan::plan(me, &keys, &world.forwards.frontends);
        let mut problems: BTreeSet<(ServiceKey, String)> = world
            .forwards
            .invalid
            .iter()
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
        for (ip, faults) in &world.faults {
            if keys.contains(ip) || state.unservable.contains_key(ip) {
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
            .flat_map(|ip| state.owned.get(ip).into_iter().flatten())
            .map(|i| i.name.clone())
            .collect();
        effects.push(Effect::Forward {
            listeners: plan.listeners,
            interfaces,
        });
    }

    // Reports of what this node announces.
    for (ip, services) in std::mem::take(&mut state.reported) {
        if state.owned.contains_key(&ip) {
            state.reported.insert(ip, services);
        } else {
            effects.push(Effect::Report(Report::Withdrawn {
                address: ip,
                services,
            }));
        }
    }
    for a in &world.desired {
        let Some(ifaces) = state.owned.get(&a.address) else {
            continue;
        };
        if state.reported.get(&a.address) != Some(&a.services) || gained.contains(&a.address) {
            effects.push(Effect::Report(Report::Announcing {
                address: a.address,
                services: a.services.clone(),
                interfaces: ifaces.iter().map(|i| i.name.clone()).collect(),
            }));
            state.reported.insert(a.address, a.services.clone());
        }
    }

    let burst: Vec<IpAddr> = match cause {
        Cause::Start | Cause::Membership | Cause::Reannounce => {
            state.owned.keys().copied().collect()
        }
        Cause::View => gained,
    };
    if !burst.is_empty() {
        effects.push(Effect::Burst {
            addresses: burst,
            count: match cause {
                Cause::Reannounce => 1,
                _ => settings.timing.announce_count,
            },
        });
    }
    effects
}

/// The effects that end the speaker: every address withdrawn, the listeners
/// stopped, the reports of withdrawal.
pub fn stop(state: &mut State) -> Vec<Effect> {
    let mut effects: Vec<Effect> = std::mem::take(&mut state.owned)
        .into_iter()
        .flat_map(|(address, ifaces)| {
            ifaces
                .into_iter()
                .map(move |interface| Effect::Withdraw { address, interface })
        })
        .collect();
    effects.push(Effect::Forward {
        listeners: Vec::new(),
        interfaces: BTreeSet::new(),
    });
    effects.extend(
        std::mem::take(&mut state.reported)
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
