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
use std::os::fd::AsFd;
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
use transition::{Cause, Effect, Faults, World};
use view::Announcement;

pub mod config;
pub mod executor;
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
    pub announcements: Vec<Announcement>,
    /// What the forwarder is asked to carry.
    pub forwards: Forwards,
    /// The Node objects (with a cluster).
    pub node_objects: Vec<K8sNode>,
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
    let socket = match taken.as_mut().and_then(|t| t.gossip.take()) {
        Some(fd) => {
            let socket = std::net::UdpSocket::from(fd);
            socket.set_nonblocking(true)?;
            UdpSocket::from_std(socket)?
        }
        None => UdpSocket::bind(listen).await?,
    };
    if let Some(t) = &taken {
        // The same member to the group: its peers see no change.
        gossip.generation = Some(t.generation);
    }
    // Kept to pass on to a successor.
    let gossip_fd = socket.as_fd().try_clone_to_owned()?;
    let http_fd = http
        .as_ref()
        .map(|l| l.as_fd().try_clone_to_owned())
        .transpose()?;
    let http_stop = shutdown.child_token();
    let mut has_seeds = !gossip.seeds.is_empty();
    let discover_seeds = !has_seeds && cluster;
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
    let mut links = crate::netlink::watch_links(shutdown.clone())
        .await
        .map_err(std::io::Error::other)?;
    if cluster {
        // A speaker without a view could own addresses it knows nothing of:
        // its peers would withdraw them and nobody would answer. So it joins
        // the group only once its view is synced; until then the others don't
        // count it and keep announcing (an API server that is down when a
        // speaker restarts costs nothing).
        info!(%node, "waiting for the cluster view before joining the gossip group");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            changed = desired.changed() => if changed.is_err() { return Ok(()) },
        }
    }
    if let Some(t) = &taken {
        // The predecessor stops gossiping only now, so the group hears from
        // this node without a gap.
        t.gossip_turn()?;
    }
    let membership = Membership::start(socket, gossip)?;
    info!(%node, %listen, took_over = taken.is_some(), "speaker started");
    metrics.register_membership(membership.counters());
    let mut members = membership.members();
    let mut health = membership.health();
    // Without listed seeds, a cluster speaker finds its peers at the Nodes'
    // InternalIPs, on its own gossip port.
    let mut seeds_joined: BTreeSet<SocketAddr> = BTreeSet::new();
    let mut join_new_seeds = |objects: &[K8sNode]| {
        for addr in view::node_seeds(&node, objects, listen) {
            if seeds_joined.insert(addr) {
                info!(%addr, "joining a speaker discovered from its Node");
                membership.join(addr);
            }
        }
        !seeds_joined.is_empty()
    };
    if discover_seeds {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while desired.borrow().node_objects.is_empty() {
            if tokio::time::timeout_at(deadline, desired.changed())
                .await
                .is_err()
            {
                break;
            }
        }
        has_seeds = join_new_seeds(&desired.borrow().node_objects);
    }
    settle(&mut members, has_seeds).await;
    metrics.set_ready();

    let settings = transition::Settings {
        node: node.clone(),
        cluster,
        timing,
        reserved,
    };
    let mut state = transition::State::default();
    let drain = forwarding.drain;
    if let Ok((limit, _)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        && let Some(why) = crate::forwarder::descriptor_shortfall(&forwarding, limit)
    {
        warn!("{why}");
    }
    let bgp_identifier = bgp_identifier(&node, listen);
    let mut executor = Executor::new(timing, forwarding, metrics.clone(), report, bgp_identifier);
    if let Some(t) = taken.as_mut() {
        executor.inherit(std::mem::take(&mut t.listeners));
    }
    let mut offer = match offer_at.as_deref().map(crate::handover::Offer::listen) {
        Some(Ok(offer)) => Some(offer),
        Some(Err(e)) => {
            warn!(error = %e, "cannot offer this speaker's sockets to a successor; an upgrade will reset connections");
            None
        }
        None => None,
    };
    let mut successor: Option<crate::handover::Successor> = None;
    let mut handing_over = false;
    let mut faults = Faults::default();
    let mut broken: BTreeMap<String, (u32, String, Instant)> = BTreeMap::new();
    let reannounce = (!timing.reannounce.is_zero()).then_some(timing.reannounce);
    let mut next_reannounce = tokio::time::Instant::now() + timing.reannounce;
    let mut cause = Cause::Start;
    loop {
        let now = Instant::now();
        broken.retain(|_, (.., until)| now < *until);
        let Desired {
            announcements,
            forwards,
            node_objects,
            bgp_peers,
        } = desired.borrow_and_update().clone();
        let world = World {
            members: members.borrow_and_update().clone(),
            health: health.borrow_and_update().clone(),
            desired: announcements,
            node_objects,
            bgp_peers,
            links: links.borrow_and_update().clone(),
            forwards,
            faults: faults.active(now),
            broken: broken
                .iter()
                .map(|(name, (index, why, _))| (name.clone(), (*index, why.clone())))
                .collect(),
            now,
        };
        if matches!(cause, Cause::Start | Cause::Membership) {
            info!(members = ?world.members, "membership");
        }
        let effects = transition::step(&settings, &mut state, &world, cause);
        metrics.observe(
            state.owned.len(),
            state.unservable.len(),
            world.members.len(),
        );
        if effects.iter().any(|e| matches!(e, Effect::Burst { .. })) {
            next_reannounce = tokio::time::Instant::now() + timing.reannounce;
        }
        let outcome = executor.run(effects, Some(&membership)).await;
        if let Some(t) = taken.take() {
            // Listening on everything the predecessor did that is still
            // wanted: it may stop accepting.
            executor.forget_inherited();
            t.ready();
            info!("took over the sockets of the previous speaker on this node");
        }
        let mut again = false;
        for (ip, problems) in outcome.failed {
            again |= faults.fail(ip, problems, now);
        }
        for ip in &outcome.forwarded {
            faults.succeed(ip);
        }
        for (name, (index, why)) in outcome.broken {
            broken.insert(name, (index, why, now + BROKEN_RETRY));
            again = true;
        }
        if again {
            cause = Cause::View;
            continue;
        }
        let wake = [
            outcome.wake,
            faults.next_end(now),
            broken.values().map(|(.., until)| *until).min(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(tokio::time::Instant::from_std);
        cause = tokio::select! {
            // A successor holds this speaker's sockets: stopping now would
            // withdraw its addresses under it. The kubelet's SIGTERM (the
            // new pod looked ready) waits for the successor's next word.
            _ = shutdown.cancelled(), if successor.is_none() => break,
            changed = members.changed() => {
                if changed.is_err() {
                    warn!("membership ended");
                    break;
                }
                Cause::Membership
            }
            changed = health.changed() => if changed.is_err() { break } else { Cause::View },
            changed = links.changed() => if changed.is_err() { break } else { Cause::View },
            changed = desired.changed() => {
                if changed.is_err() {
                    break;
                }
                if discover_seeds {
                    join_new_seeds(&desired.borrow().node_objects);
                }
                Cause::View
            }
            _ = tokio::time::sleep_until(next_reannounce), if reannounce.is_some() => Cause::Reannounce,
            _ = sleep_until_some(wake) => Cause::View,
            Some(mut next) = next_successor(&mut offer), if successor.is_none() => {
                let mut sockets = vec![(crate::handover::Kind::Gossip, gossip_fd.as_fd())];
                if let Some(fd) = &http_fd {
                    sockets.push((crate::handover::Kind::Metrics, fd.as_fd()));
                }
                sockets.extend(executor.listener_sockets().into_iter().map(
                    |((address, protocol), fd)| {
                        (crate::handover::Kind::Listener { address, protocol }, fd)
                    },
                ));
                match next.give(membership.generation(), &sockets) {
                    Ok(()) => {
                        info!(sockets = sockets.len(), "a new speaker on this node took this one's sockets");
                        successor = Some(next);
                    }
                    Err(e) => warn!(error = %e, "cannot hand the sockets over to a new speaker"),
                }
                Cause::View
            }
            said = said(&mut successor) => match said {
                crate::handover::Said::Gossip => {
                    handing_over = true;
                    break;
                }
                _ => {
                    warn!("the new speaker went away before it took over; this one carries on");
                    successor = None;
                    Cause::View
                }
            },
        };
    }
    if let (true, Some(mut next)) = (handing_over, successor) {
        // The successor is this member now: no leave, no withdrawal.
        membership.abort();
        next.gossip_stopped();
        let ready = next.said().await == crate::handover::Said::Ready;
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
        return if ready {
            Ok(())
        } else {
            Err(std::io::Error::other(
                "the new speaker went away during the hand-over",
            ))
        };
    }
    // Leave first, so the others take the addresses over at once, then let
    // the connections open finish while the addresses are still here.
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
    Ok(())
}

/// The next successor to connect, or never without an offer.
async fn next_successor(
    offer: &mut Option<crate::handover::Offer>,
) -> Option<crate::handover::Successor> {
    match offer {
        Some(offer) => offer.successor().await,
        None => std::future::pending().await,
    }
}

/// What the successor says next, or never without one.
async fn said(successor: &mut Option<crate::handover::Successor>) -> crate::handover::Said {
    match successor {
        Some(s) => s.said().await,
        None => std::future::pending().await,
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
