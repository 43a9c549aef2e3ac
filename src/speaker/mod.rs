//! The speaker: on every node, decides which addresses this node owns and
//! announces them.
//!
//! Its view is the gossip membership (who is alive, and what each node says
//! it cannot serve) plus the addresses to announce; every speaker computes
//! the same owners from the same view ([`crate::election`]), so there is
//! nothing to coordinate. Ownership follows the membership alone, so
//! announcement and failover keep working while the Kubernetes API server is
//! unreachable.
//!
//! The parts: [`config`] (the static file), [`sources`] (the file or the
//! cluster, as watch channels), [`transition`] (every decision, pure),
//! [`executor`] (sockets, bursts, forwarder), [`report`] (status and events).
//! [`run`] is the loop that joins them: it takes one atomic view of its
//! sources, runs the transition, runs the effects, and feeds what failed back
//! into the next view.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node as K8sNode;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::forwarder::plan::Protocol;
use crate::membership::{self, Membership};
use executor::Executor;
use handoff::Handoff;
use transition::{Cause, Effect, Faults, World};

pub mod config;
pub mod executor;
mod handoff;
pub mod metrics;
pub mod report;
pub mod sources;
pub mod transition;
pub mod view;

pub use config::{
    ConfigError, DEFAULT_ANNOUNCE_COUNT, DEFAULT_ANNOUNCE_INTERVAL_MS, DEFAULT_REANNOUNCE_SECONDS,
    Forwards, StaticConfig, Timing,
};
pub use report::Report;
pub use sources::{ClusterOptions, run_kubernetes, run_static};

/// A speaker's own settings.
#[derive(Clone, Debug)]
pub struct Speaker {
    /// This node's name.
    pub node: String,
    /// Where it gossips.
    pub listen: SocketAddr,
    /// The gossip group.
    pub gossip: membership::Config,
    /// When gratuitous packets go out.
    pub timing: Timing,
    /// The forwarder's settings.
    pub forwarding: crate::forwarder::Settings,
}

/// What a speaker is asked to do, as one value, so that a change of the
/// cluster is seen whole (never announcements of one moment with the
/// forwarding of another).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// The addresses to announce.
    pub announcements: view::Announcements,
    /// What the forwarder is asked to carry.
    pub forwards: Forwards,
    /// The Node objects (with a cluster).
    pub node_objects: Arc<Vec<K8sNode>>,
    /// The BGP routers, and which nodes talk to each.
    pub bgp_peers: Vec<view::WantedPeer>,
}

/// What a speaker is fed.
pub struct Sources {
    /// What it is asked to do.
    pub desired: watch::Receiver<Desired>,
    /// Whether that comes from a cluster: then the first change of `desired`
    /// means the view is synced, and only members named like a Node object
    /// may own addresses.
    pub cluster: bool,
}

/// How long an interface whose announcer could not start is left out before
/// it is tried again (a change of the interface tries it at once).
const BROKEN_RETRY: Duration = Duration::from_secs(5);

/// Runs a speaker until `shutdown`, then leaves the group, withdraws every
/// address, and lets open connections finish (up to the drain period) before
/// it removes what it added to the node. When a source goes quiet (an
/// unreachable API server), its last view stands and failover goes on.
///
/// With `handover`, it starts from the sockets its predecessor on this node
/// passed (if any), and passes its own to a successor that asks: then it
/// exits without withdrawing anything, once its connections are done
/// ([`crate::handover`]).
pub async fn run(
    speaker: Speaker,
    sources: Sources,
    http: Option<tokio::net::TcpListener>,
    report: Option<mpsc::UnboundedSender<Report>>,
    shutdown: CancellationToken,
    handover: Option<crate::handover::Handover>,
) -> std::io::Result<()> {
    let Some(mut running) =
        Running::start(speaker, sources, http, report, &shutdown, handover).await?
    else {
        return Ok(());
    };
    match running.serve(&shutdown).await {
        Ending::HandOver => running.hand_over().await,
        Ending::Stop => {
            running.stop().await;
            Ok(())
        }
    }
}

/// A speaker that has joined its group.
struct Running {
    node: String,
    listen: SocketAddr,
    timing: Timing,
    drain: Duration,
    settings: transition::Settings,
    state: transition::State,
    executor: Executor,
    membership: Membership,
    metrics: Arc<metrics::Metrics>,
    desired: watch::Receiver<Desired>,
    members: watch::Receiver<BTreeSet<String>>,
    health: watch::Receiver<membership::HealthMap>,
    /// The members and health the last transition read: handed again, not
    /// copied, while they stay the same, so the transition sees they did.
    group: (Arc<BTreeSet<String>>, Arc<membership::HealthMap>),
    links: watch::Receiver<Vec<crate::netlink::Link>>,
    /// Forwarding failures held against addresses.
    faults: Faults,
    /// Interfaces whose announcer could not start: index, why, retry time.
    broken: BTreeMap<String, (u32, String, Instant)>,
    /// Without listed seeds, a cluster speaker finds its peers at the Nodes'
    /// InternalIPs, on its own gossip port: those joined so far.
    discovered: Option<BTreeSet<SocketAddr>>,
    /// What the predecessor passed, until this speaker is ready.
    taken: Option<crate::handover::Takeover>,
    handoff: Handoff,
    /// Stops the metrics server, which a successor may have taken.
    http_stop: CancellationToken,
}

/// How the speaker's loop ended.
enum Ending {
    Stop,
    HandOver,
}

impl Running {
    /// Opens or takes the sockets, waits for the cluster view, joins the
    /// group and lets it settle. `None` when shut down meanwhile.
    async fn start(
        speaker: Speaker,
        sources: Sources,
        http: Option<tokio::net::TcpListener>,
        report: Option<mpsc::UnboundedSender<Report>>,
        shutdown: &CancellationToken,
        handover: Option<crate::handover::Handover>,
    ) -> std::io::Result<Option<Self>> {
        let Speaker {
            node,
            listen,
            mut gossip,
            timing,
            forwarding,
        } = speaker;
        let (offer_at, mut taken) = match handover {
            Some(h) => (Some(h.path), h.taken),
            None => (None, None),
        };
        let Sources {
            mut desired,
            cluster,
        } = sources;
        let socket = gossip_socket(taken.as_mut(), listen, &mut gossip).await?;
        let handoff = Handoff::new(offer_at.as_deref(), &socket, http.as_ref())?;
        let http_stop = shutdown.child_token();
        let has_seeds = !gossip.seeds.is_empty();
        let mut discovered = (!has_seeds && cluster).then(BTreeSet::new);
        // Refused before waiting for the cluster view, not minutes later.
        membership::check_keys(&gossip.keys)?;
        let metrics = Arc::new(metrics::Metrics::default());
        let reserved = reserved_ports(&forwarding, listen, http.as_ref());
        if let Some(listener) = http {
            tokio::spawn(crate::http::serve(
                listener,
                metrics.clone(),
                http_stop.clone(),
            ));
        }
        let links = crate::netlink::watch_links(shutdown.clone())
            .await
            .map_err(std::io::Error::other)?;
        if cluster && !view_synced(&node, &mut desired, shutdown).await {
            return Ok(None);
        }
        if let Some(t) = &taken {
            // The predecessor stops gossiping only now, so the group hears
            // from this node without a gap.
            t.gossip_turn()?;
        }
        let membership = Membership::start(socket, gossip)?;
        info!(%node, %listen, took_over = taken.is_some(), "speaker started");
        metrics.register_membership(membership.counters());
        let joined_discovered = match &mut discovered {
            Some(joined) => {
                discover_seeds(&membership, &node, listen, &mut desired, joined).await;
                !joined.is_empty()
            }
            None => false,
        };
        let mut members = membership.members();
        settle(&mut members, has_seeds || joined_discovered).await;
        metrics.set_ready();

        let drain = forwarding.drain;
        let mut executor = executor(&node, listen, timing, forwarding, &metrics, report);
        if let Some(t) = taken.as_mut() {
            executor.inherit(std::mem::take(&mut t.listeners));
        }
        let settings = transition::Settings {
            node: node.clone(),
            cluster,
            timing,
            reserved,
        };
        Ok(Some(Self {
            health: membership.health(),
            node,
            listen,
            timing,
            drain,
            settings,
            state: transition::State::default(),
            executor,
            membership,
            metrics,
            desired,
            members,
            group: Default::default(),
            links,
            faults: Faults::default(),
            broken: BTreeMap::new(),
            discovered,
            taken,
            handoff,
            http_stop,
        }))
    }

    /// The loop: one atomic view of the sources, the transition, its effects,
    /// and what failed fed into the next view; until shutdown, a source ends,
    /// or a successor takes over.
    async fn serve(&mut self, shutdown: &CancellationToken) -> Ending {
        let reannounce = (!self.timing.reannounce.is_zero()).then_some(self.timing.reannounce);
        let mut next_reannounce = tokio::time::Instant::now() + self.timing.reannounce;
        let mut cause = Cause::Start;
        loop {
            let now = Instant::now();
            let world = self.world(now);
            if matches!(cause, Cause::Start | Cause::Membership) {
                info!(members = ?world.members, "membership");
            }
            let effects = transition::step(&self.settings, &mut self.state, &world, cause);
            self.metrics.observe(
                self.state.l2.owned.len(),
                self.state.serving.unservable.len(),
                world.members.len(),
            );
            if effects.iter().any(|e| matches!(e, Effect::Burst { .. })) {
                next_reannounce = tokio::time::Instant::now() + self.timing.reannounce;
            }
            let outcome = self.executor.run(effects, Some(&self.membership)).await;
            if let Some(t) = self.taken.take() {
                // Listening on everything the predecessor did that is still
                // wanted: it may stop accepting.
                self.executor.forget_inherited();
                t.ready();
                info!("took over the sockets of the previous speaker on this node");
            }
            let mut again = false;
            for (ip, problems) in outcome.failed {
                again |= self.faults.fail(ip, problems, now);
            }
            for ip in &outcome.forwarded {
                self.faults.succeed(ip);
            }
            for (name, (index, why)) in outcome.broken {
                self.broken.insert(name, (index, why, now + BROKEN_RETRY));
                again = true;
            }
            if again {
                cause = Cause::View;
                continue;
            }
            let wake = [
                outcome.wake,
                self.faults.next_end(now),
                self.broken.values().map(|(.., until)| *until).min(),
            ]
            .into_iter()
            .flatten()
            .min()
            .map(tokio::time::Instant::from_std);
            cause = tokio::select! {
                // A successor holds this speaker's sockets: stopping now would
                // withdraw its addresses under it. The kubelet's SIGTERM (the
                // new pod looked ready) waits for the successor's next word.
                _ = shutdown.cancelled(), if !self.handoff.passed() => return Ending::Stop,
                changed = self.members.changed() => {
                    if changed.is_err() {
                        warn!("membership ended");
                        return Ending::Stop;
                    }
                    Cause::Membership
                }
                changed = self.health.changed() => if changed.is_err() { return Ending::Stop } else { Cause::View },
                changed = self.links.changed() => if changed.is_err() { return Ending::Stop } else { Cause::View },
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        return Ending::Stop;
                    }
                    if let Some(joined) = &mut self.discovered {
                        join_seeds(&self.membership, &self.node, self.listen,
                                   &self.desired.borrow().node_objects, joined);
                    }
                    Cause::View
                }
                _ = tokio::time::sleep_until(next_reannounce), if reannounce.is_some() => Cause::Reannounce,
                _ = sleep_until_some(wake) => Cause::View,
                step = self.handoff.next(&self.executor, &self.membership) => match step {
                    handoff::Step::Continue => Cause::View,
                    handoff::Step::HandOver => return Ending::HandOver,
                },
            };
        }
    }

    /// The sources as they are at `now`, with what failed lately.
    fn world(&mut self, now: Instant) -> World {
        self.broken.retain(|_, (.., until)| now < *until);
        let Desired {
            announcements,
            forwards,
            node_objects,
            bgp_peers,
        } = self.desired.borrow_and_update().clone();
        renew(&mut self.group.0, &self.members.borrow_and_update());
        renew(&mut self.group.1, &self.health.borrow_and_update());
        World {
            members: self.group.0.clone(),
            health: self.group.1.clone(),
            desired: announcements,
            node_objects,
            bgp_peers,
            links: self.links.borrow_and_update().clone(),
            forwards,
            faults: self.faults.active(now),
            broken: self
                .broken
                .iter()
                .map(|(name, (index, why, _))| (name.clone(), (*index, why.clone())))
                .collect(),
            now,
        }
    }

    /// The end of an upgrade: the successor is this member now, so no leave
    /// and no withdrawal; open connections drain, then the speaker exits.
    async fn hand_over(self) -> std::io::Result<()> {
        let Self {
            membership,
            handoff,
            http_stop,
            mut executor,
            drain,
            ..
        } = self;
        membership.abort();
        let ready = handoff.finish().await;
        if !ready {
            warn!(
                "the new speaker went away before it was ready; its connections drain, then this one exits to be restarted"
            );
        }
        http_stop.cancel();
        executor.stop_accepting();
        info!("handed over to the new speaker; open connections drain");
        executor.drained(drain).await;
        info!("speaker stopped after handing over; addresses stay with its successor");
        if ready {
            Ok(())
        } else {
            Err(std::io::Error::other(
                "the new speaker went away during the hand-over",
            ))
        }
    }

    /// The end of a speaker: leave first, so the others take the addresses
    /// over at once, then let the connections open finish while the addresses
    /// are still here, then remove what the speaker added to the node.
    async fn stop(self) {
        let Self {
            membership,
            mut state,
            mut executor,
            drain,
            ..
        } = self;
        membership.leave().await;
        let (cleanup, withdraw): (Vec<Effect>, Vec<Effect>) = transition::stop(&mut state)
            .into_iter()
            .partition(|e| matches!(e, Effect::Forward { .. }));
        executor.run(withdraw, None).await;
        executor.stop_accepting();
        executor.drained(drain).await;
        executor.run(cleanup, None).await;
        executor.stop().await;
        info!("speaker stopped: left the group, addresses withdrawn, connections drained");
    }
}

/// Replaces `kept` by `now` when they differ.
fn renew<T: Clone + PartialEq>(kept: &mut Arc<T>, now: &T) {
    if **kept != *now {
        *kept = Arc::new(now.clone());
    }
}

/// Waits for the cluster view; false when shut down first. A speaker without
/// a view could own addresses it knows nothing of: its peers would withdraw
/// them and nobody would answer. So it joins the group only once its view is
/// synced; until then the others don't count it and keep announcing (an API
/// server that is down when a speaker restarts costs nothing).
async fn view_synced(
    node: &str,
    desired: &mut watch::Receiver<Desired>,
    shutdown: &CancellationToken,
) -> bool {
    info!(%node, "waiting for the cluster view before joining the gossip group");
    tokio::select! {
        _ = shutdown.cancelled() => false,
        changed = desired.changed() => changed.is_ok(),
    }
}

/// The executor, warned about a descriptor limit the forwarder's settings
/// could exceed.
fn executor(
    node: &str,
    listen: SocketAddr,
    timing: Timing,
    forwarding: crate::forwarder::Settings,
    metrics: &Arc<metrics::Metrics>,
    report: Option<mpsc::UnboundedSender<Report>>,
) -> Executor {
    if let Some(why) = crate::forwarder::descriptor_shortfall(&forwarding) {
        warn!("{why}");
    }
    let bgp_identifier = bgp_identifier(node, listen);
    Executor::new(timing, forwarding, metrics.clone(), report, bgp_identifier)
}

/// The gossip socket: the predecessor's when it passed one (then this
/// speaker is the same member to the group: its peers see no change), else
/// one bound to `listen`.
async fn gossip_socket(
    taken: Option<&mut crate::handover::Takeover>,
    listen: SocketAddr,
    gossip: &mut membership::Config,
) -> std::io::Result<UdpSocket> {
    let Some(taken) = taken else {
        return UdpSocket::bind(listen).await;
    };
    gossip.generation = Some(taken.generation);
    match taken.gossip.take() {
        Some(fd) => {
            let socket = std::net::UdpSocket::from(fd);
            socket.set_nonblocking(true)?;
            UdpSocket::from_std(socket)
        }
        None => UdpSocket::bind(listen).await,
    }
}

/// Without listed seeds: waits up to 3 s for the Node objects, then joins
/// the speakers on them.
async fn discover_seeds(
    membership: &Membership,
    node: &str,
    listen: SocketAddr,
    desired: &mut watch::Receiver<Desired>,
    joined: &mut BTreeSet<SocketAddr>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while desired.borrow().node_objects.is_empty() {
        if tokio::time::timeout_at(deadline, desired.changed())
            .await
            .is_err()
        {
            break;
        }
    }
    join_seeds(
        membership,
        node,
        listen,
        &desired.borrow().node_objects,
        joined,
    );
}

/// Joins the speakers of the Nodes in `objects` not joined yet.
fn join_seeds(
    membership: &Membership,
    node: &str,
    listen: SocketAddr,
    objects: &[K8sNode],
    joined: &mut BTreeSet<SocketAddr>,
) {
    for addr in view::node_seeds(node, objects, listen) {
        if joined.insert(addr) {
            info!(%addr, "joining a speaker discovered from its Node");
            membership.join(addr);
        }
    }
}

/// The kubelet's port.
const KUBELET_PORT: u16 = 10250;

/// The ports this node keeps for itself, and whose they are: the kubelet's,
/// this speaker's gossip and metrics ports, and the configured ones.
fn reserved_ports(
    forwarding: &crate::forwarder::Settings,
    gossip: SocketAddr,
    http: Option<&tokio::net::TcpListener>,
) -> BTreeMap<(Protocol, u16), String> {
    let mut reserved = BTreeMap::from([
        ((Protocol::Tcp, KUBELET_PORT), "the kubelet's".to_string()),
        (
            (Protocol::Udp, gossip.port()),
            "ironlb's gossip".to_string(),
        ),
    ]);
    if let Some(port) = http.and_then(|l| l.local_addr().ok()).map(|a| a.port()) {
        reserved.insert((Protocol::Tcp, port), "ironlb's metrics".to_string());
    }
    for port in &forwarding.reserved {
        reserved
            .entry(*port)
            .or_insert_with(|| "listed in the reserved ports".to_string());
    }
    reserved
}

/// Sleeps until `at`, or forever without it.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
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

/// This node's BGP identifier for sessions from an IPv6 address: its gossip
/// address is the node's own (the DaemonSet's host IP) when that is IPv4.
fn bgp_identifier(node: &str, listen: SocketAddr) -> std::net::Ipv4Addr {
    let ipv4 = match listen.ip() {
        std::net::IpAddr::V4(a) => Some(a),
        std::net::IpAddr::V6(_) => None,
    };
    crate::bgp::identity::node_identifier(node, ipv4)
}
