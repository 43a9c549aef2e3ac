//! Runs the transition's effects ([`super::transition::Effect`]): the
//! announcers' sockets, the takeover bursts, the forwarder and what it
//! changes on the node, the reports and the group's health record.
//!
//! Bursts run as their own tasks and check before every packet that the
//! address is still owned, so a withdrawal or a shutdown never waits behind
//! one. Nothing blocking runs on the event loop: `nft` and the joins of
//! announcer threads go to the blocking pool.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::metrics::Metrics;
use super::report::Report;
use super::transition::{Effect, Iface};
use crate::forwarder::Forwarder;
use crate::forwarder::firewall::KernelRoute;
use crate::forwarder::plan::Listener;
use crate::ipam::ServiceKey;
use crate::l2::announcer::Announcer;
use crate::membership::Membership;

/// What running the effects found out, for the next transition.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Addresses whose forwarding failed: the Services and why.
    pub failed: BTreeMap<IpAddr, Vec<(ServiceKey, String)>>,
    /// Addresses forwarded as asked.
    pub forwarded: BTreeSet<IpAddr>,
    /// Interfaces whose announcer could not start: index and why.
    pub broken: BTreeMap<String, (u32, String)>,
    /// The earliest instant the transition asked to be woken at.
    pub wake: Option<Instant>,
}

/// The speaker's hands.
pub struct Executor {
    announcers: BTreeMap<String, (u32, Arc<Announcer>)>,
    forwarding: Forwarding,
    timing: super::config::Timing,
    metrics: Arc<Metrics>,
    report: Option<mpsc::UnboundedSender<Report>>,
    /// Cancels every running burst.
    bursts: CancellationToken,
    /// The BGP sessions, by `BGPPeer` name.
    peers: BTreeMap<String, crate::bgp::peer::Peer>,
    /// The BFD receiver, bound when a first session asks for BFD.
    bfd: Option<crate::bfd::Mux>,
    /// This node's BGP identifier for sessions from an IPv6 address.
    bgp_identifier: std::net::Ipv4Addr,
}

impl Executor {
    /// An executor with no announcer and no listener yet.
    pub fn new(
        timing: super::config::Timing,
        forwarding: crate::forwarder::Settings,
        metrics: Arc<Metrics>,
        report: Option<mpsc::UnboundedSender<Report>>,
        bgp_identifier: std::net::Ipv4Addr,
    ) -> Self {
        let forwarder_metrics = crate::forwarder::metrics::Metrics::default();
        metrics.register_forwarder(&forwarder_metrics);
        Self {
            announcers: BTreeMap::new(),
            forwarding: Forwarding::new(forwarding, forwarder_metrics),
            timing,
            metrics,
            report,
            bursts: CancellationToken::new(),
            peers: BTreeMap::new(),
            bfd: None,
            bgp_identifier,
        }
    }

    /// Runs `effects` in order.
    pub async fn run(&mut self, effects: Vec<Effect>, membership: Option<&Membership>) -> Outcome {
        let mut outcome = Outcome::default();
        for effect in effects {
            match effect {
                Effect::Withdraw { address, interface } => {
                    if let Some((_, a)) = self.announcers.get(&interface.name) {
                        a.disown(address);
                    }
                    info!(%address, interface = %interface.name, "withdrawn");
                }
                Effect::Announce { address, interface } => match self.announcer(&interface) {
                    Ok(a) => {
                        a.own(address);
                        info!(%address, interface = %interface.name, mac = %a.mac(), "announcing");
                    }
                    Err(e) => {
                        self.metrics.announce_failed(&interface.name);
                        warn!(interface = %interface.name, error = %e,
                                  "cannot announce on this interface; another interface or node takes over, and it is tried again");
                        outcome
                            .broken
                            .insert(interface.name.clone(), (interface.index, e.to_string()));
                    }
                },
                Effect::Burst { addresses, count } => self.burst(addresses, count),
                Effect::Forward {
                    listeners,
                    interfaces,
                } => {
                    let failed = self.forwarding.apply(&listeners, &interfaces).await;
                    outcome.forwarded = listeners
                        .iter()
                        .map(|l| l.address.ip())
                        .filter(|ip| !failed.contains_key(ip))
                        .collect();
                    outcome.failed = failed;
                }
                Effect::Report(r) => {
                    if let Report::GaveUp {
                        address, reason, ..
                    } = &r
                    {
                        warn!(%address, %reason, "cannot serve this address; leaving it to another node");
                    }
                    if let Report::NotForwarded { service, message } = &r {
                        warn!(%service, error = %message, "not forwarded");
                    }
                    if let Some(tx) = &self.report {
                        let _ = tx.send(r);
                    }
                }
                Effect::Publish(addresses) => {
                    if !addresses.is_empty() {
                        warn!(addresses = ?addresses, "telling the group this node cannot serve these addresses");
                    }
                    if let Some(m) = membership {
                        m.set_unservable(addresses);
                    }
                }
                Effect::Bgp(plan) => self.bgp(plan).await,
                Effect::WakeAt(at) => {
                    outcome.wake = Some(outcome.wake.map_or(at, |w| w.min(at)));
                }
            }
        }
        self.drop_idle_announcers();
        outcome
    }

    /// The announcer of `iface`, started (or restarted, for a re-created
    /// interface) when needed.
    fn announcer(&mut self, iface: &Iface) -> std::io::Result<Arc<Announcer>> {
        if let Some((index, a)) = self.announcers.get(&iface.name)
            && *index == iface.index
        {
            return Ok(a.clone());
        }
        if let Some((_, old)) = self.announcers.remove(&iface.name) {
            release(old);
        }
        let a = Arc::new(Announcer::start(
            &iface.name,
            self.metrics.announcer_counters(&iface.name),
        )?);
        self.announcers
            .insert(iface.name.clone(), (iface.index, a.clone()));
        Ok(a)
    }

    /// Closes the sockets of interfaces that announce nothing now.
    fn drop_idle_announcers(&mut self) {
        let idle: Vec<String> = self
            .announcers
            .iter()
            .filter(|(_, (_, a))| a.owns_nothing())
            .map(|(name, _)| name.clone())
            .collect();
        for name in idle {
            if let Some((_, a)) = self.announcers.remove(&name) {
                release(a);
            }
        }
    }

    /// Sends `count` gratuitous packets per address, `announce_interval`
    /// apart, from a task of its own.
    fn burst(&self, addresses: Vec<IpAddr>, count: u32) {
        let targets: Vec<(IpAddr, Arc<Announcer>)> = addresses
            .iter()
            .flat_map(|ip| {
                self.announcers
                    .values()
                    .filter(|(_, a)| a.owns(ip))
                    .map(|(_, a)| (*ip, a.clone()))
            })
            .collect();
        if targets.is_empty() {
            return;
        }
        let stop = self.bursts.clone();
        let interval = self.timing.announce_interval;
        tokio::spawn(async move {
            for n in 0..count {
                if n > 0 {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(interval) => {}
                    }
                }
                for (ip, a) in &targets {
                    // Withdrawn meanwhile: not one more packet.
                    if a.owns(ip) {
                        a.announce(*ip);
                    }
                }
            }
        });
    }

    /// Uses a predecessor's listening sockets for the listeners they match.
    pub fn inherit(
        &mut self,
        sockets: BTreeMap<
            (std::net::SocketAddr, crate::forwarder::plan::Protocol),
            std::os::fd::OwnedFd,
        >,
    ) {
        self.forwarding.forwarder.inherit(sockets);
    }

    /// Closes the inherited sockets no listener took.
    pub fn forget_inherited(&mut self) {
        self.forwarding.forwarder.forget_inherited();
    }

    /// The running listeners' sockets, for a successor.
    pub fn listener_sockets(
        &self,
    ) -> Vec<(
        (std::net::SocketAddr, crate::forwarder::plan::Protocol),
        std::os::fd::BorrowedFd<'_>,
    )> {
        self.forwarding.forwarder.sockets()
    }

    /// Stops accepting: every listener stops, and the connections and flows
    /// open go on until they end or the drain period is over. Nothing on the
    /// node changes.
    pub fn stop_accepting(&mut self) {
        self.forwarding.forwarder.stop_all();
    }

    /// Waits until no connection or flow is open, or `limit` has passed.
    pub async fn drained(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.forwarding.forwarder.in_use() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Runs exactly `plan`'s sessions: a session whose settings changed
    /// starts over (the router withdraws its routes meanwhile, as it would
    /// for any reconfigured neighbor); the others get their new routes.
    async fn bgp(&mut self, plan: super::transition::Bgp) {
        let wanted: BTreeMap<&str, &crate::bgp::peer::PeerSpec> =
            plan.peers.iter().map(|p| (p.name.as_str(), p)).collect();
        let ended: Vec<String> = self
            .peers
            .iter()
            .filter(|(name, p)| wanted.get(name.as_str()) != Some(&&p.spec))
            .map(|(name, _)| name.clone())
            .collect();
        for name in ended {
            if let Some(p) = self.peers.remove(&name) {
                info!(peer = %name, router = %p.spec.address, "BGP session ends");
                let address = p.spec.address.ip();
                p.stop(crate::bgp::peer::Ending::Withdraw).await;
                if !wanted.contains_key(name.as_str()) {
                    self.metrics.bgp_session(&name, None);
                }
                if let Some(tx) = &self.report
                    && !wanted.contains_key(name.as_str())
                {
                    let _ = tx.send(Report::BgpSession {
                        peer: name,
                        peer_address: address,
                        status: None,
                    });
                }
            }
        }
        for (name, spec) in wanted {
            let routes = plan.routes_for(name);
            match self.peers.get(name) {
                Some(p) => p.advertise(routes),
                None => {
                    if spec.bfd.is_some() && self.bfd.is_none() {
                        match crate::bfd::Mux::bind() {
                            Ok(m) => self.bfd = Some(m),
                            Err(e) => warn!(error = %e,
                                "cannot listen for BFD on UDP 3784; BGP sessions run without BFD"),
                        }
                    }
                    info!(peer = %name, router = %spec.address, bfd = spec.bfd.is_some(), "BGP session starts");
                    let peer = crate::bgp::peer::Peer::start(
                        spec.clone(),
                        routes,
                        self.bfd.as_ref(),
                        self.bgp_identifier,
                    );
                    report_session(self.report.clone(), self.metrics.clone(), &peer);
                    self.peers.insert(name.to_string(), peer);
                }
            }
        }
    }

    /// Stops every burst, listener, announcer and BGP session (with a Cease:
    /// routers withdraw at once), and removes what was added to the node.
    pub async fn stop(&mut self) {
        self.bursts.cancel();
        for (_, p) in std::mem::take(&mut self.peers) {
            p.stop(crate::bgp::peer::Ending::Withdraw).await;
        }
        self.forwarding.stop().await;
        for (_, (_, a)) in std::mem::take(&mut self.announcers) {
            for ip in a.owned() {
                a.disown(ip);
            }
            release(a);
        }
    }
}

/// Reports `peer`'s state as it changes (to the cluster, with `tx`, and in
/// the metrics), until the session ends.
fn report_session(
    tx: Option<mpsc::UnboundedSender<Report>>,
    metrics: Arc<Metrics>,
    peer: &crate::bgp::peer::Peer,
) {
    let (name, address) = (peer.spec.name.clone(), peer.spec.address.ip());
    let mut status = peer.status();
    let mut bfd = peer.bfd_state();
    tokio::spawn(async move {
        loop {
            // A session that ended says nothing more: its last word is the
            // executor's (removed, or the next session's).
            if status.has_changed().is_err() {
                return;
            }
            let s = status.borrow_and_update().clone();
            metrics.bgp_session(
                &name,
                Some(s.state == crate::bgp::session::State::Established),
            );
            let bfd_now = bfd.as_mut().map(|b| b.borrow_and_update().to_string());
            let report = Report::BgpSession {
                peer: name.clone(),
                peer_address: address,
                status: Some(super::report::BgpSessionStatus {
                    state: s.state.to_string(),
                    bfd: bfd_now,
                    since: std::time::SystemTime::now() - s.since.elapsed(),
                    last_error: s.last_error,
                    prefixes_sent: s.prefixes_sent as u64,
                }),
            };
            if tx.as_ref().is_some_and(|tx| tx.send(report).is_err()) {
                return;
            }
            let bfd_changed = async {
                match bfd.as_mut() {
                    Some(b) => b.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = status.changed() => if r.is_err() { return },
                r = bfd_changed => if r.is_err() { return },
            }
        }
    });
}

/// Drops an announcer off the event loop: its reader thread takes up to a
/// read timeout to notice.
fn release(a: Arc<Announcer>) {
    tokio::task::spawn_blocking(move || drop(a));
}

/// The forwarder and what it changed on the node.
struct Forwarding {
    forwarder: Forwarder,
    /// The firewall mark of transparent connections.
    mark: u32,
    /// The Service addresses on the loopback, once known.
    addresses: Option<BTreeSet<IpAddr>>,
    transparent: bool,
    /// ironlb's nftables table as last written.
    table: Option<crate::forwarder::firewall::Ruleset>,
    /// The kernel path may serve Services here: it is not turned off and
    /// no per-source limit is set, which only user space enforces.
    kernel_allowed: bool,
    /// Whether the last plan had Services the kernel could have taken on a
    /// node that does not forward IP: said once, not at every change.
    said_forwarding_off: bool,
    metrics: crate::forwarder::metrics::Metrics,
}

impl Forwarding {
    fn new(
        settings: crate::forwarder::Settings,
        metrics: crate::forwarder::metrics::Metrics,
    ) -> Self {
        Self {
            mark: settings.mark,
            kernel_allowed: settings.kernel_path && settings.max_connections_per_source.is_none(),
            forwarder: Forwarder::new(settings, metrics.clone()),
            addresses: None,
            transparent: false,
            table: None,
            said_forwarding_off: false,
            metrics,
        }
    }

    /// Runs `listeners`, with their addresses on the loopback and, for
    /// `Local` Services, the transparent routing. Returns the addresses that
    /// could not be forwarded as asked, with the Services concerned and why;
    /// they are tried again on the next call.
    async fn apply(
        &mut self,
        listeners: &[Listener],
        interfaces: &BTreeSet<String>,
    ) -> BTreeMap<IpAddr, Vec<(ServiceKey, String)>> {
        let mut failed: BTreeMap<IpAddr, Vec<(ServiceKey, String)>> = BTreeMap::new();
        let fail_all = |failed: &mut BTreeMap<_, Vec<_>>, local_only: bool, why: &str| {
            for l in listeners.iter().filter(|l| !local_only || l.policy.local) {
                failed
                    .entry(l.address.ip())
                    .or_default()
                    .push((l.service.clone(), why.to_string()));
            }
        };
        let (kernel, user) = self.split(listeners);
        let local = user.iter().any(|l| l.policy.local);
        // Only the Services' ports reach their addresses, from before the
        // addresses go on the loopback; a table that cannot be written would
        // leave the node's own programs reachable there, so the addresses
        // are given up instead.
        let table = self.table(listeners, &kernel, local);
        if table == Default::default() {
            // Nothing forwarded: no table (a node that never forwards never
            // gets one).
            if self.table.take().is_some()
                && let Err(e) = crate::forwarder::firewall::remove().await
            {
                warn!(error = %e, "cannot remove the nftables table");
            }
        } else if self.table.as_ref() != Some(&table) {
            self.metrics.kernel_table_changes();
            match crate::forwarder::firewall::apply(&table).await {
                Ok(()) => {
                    self.metrics.kernel_table_changed(table.counters());
                    self.table = Some(table);
                }
                Err(e) => {
                    warn!(error = %e, "cannot write the nftables table that keeps the node's own ports off Service addresses");
                    self.table = None;
                    fail_all(
                        &mut failed,
                        false,
                        &format!("cannot filter the address's ports: {e}"),
                    );
                    // No address goes on the loopback unfiltered; the table
                    // is tried again on the next call (nft left the last
                    // one in place).
                    return failed;
                }
            }
        }
        let addresses: BTreeSet<IpAddr> = listeners.iter().map(|l| l.address.ip()).collect();
        if self.addresses.as_ref() != Some(&addresses) {
            for interface in interfaces {
                if let Err(e) = crate::netlink::host::quiet_arp(interface) {
                    warn!(%interface, error = %e, "cannot set arp_ignore/arp_announce");
                }
            }
            match set_service_addresses(&addresses).await {
                Ok(()) => self.addresses = Some(addresses),
                Err(e) => {
                    warn!(error = %e, "cannot put Service addresses on the loopback");
                    fail_all(
                        &mut failed,
                        false,
                        &format!("cannot put the address on the loopback: {e}"),
                    );
                }
            }
        }
        if local && !self.transparent {
            match crate::forwarder::transparent::install(self.mark).await {
                Ok(()) => self.transparent = true,
                Err(e) => {
                    warn!(error = %e, "cannot install transparent routing; Local Services won't answer");
                    fail_all(
                        &mut failed,
                        true,
                        &format!("cannot install the transparent routing: {e}"),
                    );
                }
            }
        } else if !local && self.transparent {
            self.remove_transparent().await;
        }
        for e in self.forwarder.apply(&user) {
            failed
                .entry(e.address.ip())
                .or_default()
                .push((e.service.clone(), e.to_string()));
        }
        failed
    }

    /// The nftables table for `listeners`, of which `kernel` are forwarded
    /// in the kernel; `local`: some user-space listener is transparent.
    fn table(
        &self,
        listeners: &[Listener],
        kernel: &[Listener],
        local: bool,
    ) -> crate::forwarder::firewall::Ruleset {
        let mut table = crate::forwarder::firewall::Ruleset {
            mark: local.then_some(self.mark),
            open: Default::default(),
            kernel: kernel.iter().map(KernelRoute::of).collect(),
        };
        for l in listeners {
            table
                .open
                .entry(l.address.ip())
                .or_default()
                .insert((l.protocol, l.address.port()));
        }
        table
    }

    /// The listeners the kernel forwards, and those left to user space.
    fn split(&mut self, listeners: &[Listener]) -> (Vec<Listener>, Vec<Listener>) {
        let (v4, v6) = ip_forwarding();
        let forwards = |l: &Listener| if l.address.is_ipv4() { v4 } else { v6 };
        let (kernel, user): (Vec<Listener>, Vec<Listener>) = listeners
            .iter()
            .cloned()
            .partition(|l| l.in_kernel(self.kernel_allowed && forwards(l)));
        let wanted = self.kernel_allowed && user.iter().any(|l| l.in_kernel(true));
        if wanted && !self.said_forwarding_off {
            info!(
                "IP forwarding is off on this node (net.ipv4.ip_forward, net.ipv6.conf.all.forwarding): \
                 Services of that family are forwarded in user space, not in the kernel"
            );
        }
        self.said_forwarding_off = wanted;
        (kernel, user)
    }

    async fn remove_transparent(&mut self) {
        match crate::forwarder::transparent::remove(self.mark).await {
            Ok(()) => self.transparent = false,
            Err(e) => warn!(error = %e, "cannot remove transparent routing"),
        }
    }

    /// Stops every listener and removes what was added to the node.
    async fn stop(&mut self) {
        self.forwarder.stop_all();
        if self.table.is_some()
            && let Err(e) = crate::forwarder::firewall::remove().await
        {
            warn!(error = %e, "cannot remove the nftables table");
        }
        if self.addresses.as_ref().is_some_and(|a| !a.is_empty())
            && let Err(e) = set_service_addresses(&BTreeSet::new()).await
        {
            warn!(error = %e, "cannot remove Service addresses from the loopback");
        }
        if self.transparent {
            self.remove_transparent().await;
        }
    }
}

/// Whether the node forwards IPv4 and IPv6 packets, as the kernel path
/// needs (Kubernetes nodes do: kube-proxy and CNIs need it too).
fn ip_forwarding() -> (bool, bool) {
    let on = |path: &str| std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1");
    (
        on("/proc/sys/net/ipv4/ip_forward"),
        on("/proc/sys/net/ipv6/conf/all/forwarding"),
    )
}

async fn set_service_addresses(addresses: &BTreeSet<IpAddr>) -> Result<(), crate::netlink::Error> {
    crate::netlink::host::Host::open()?
        .set_service_addresses(addresses)
        .await
}
