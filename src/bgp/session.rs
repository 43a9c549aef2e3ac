//! One BGP session (RFC 4271) as a pure state machine: inputs in (a
//! connection made or lost, a message, the clock, the routes wanted), actions
//! out (connect, send, close). No socket and no clock of its own, so every
//! path, timers included, is tested without a router.
//!
//! ironlb only advertises: it opens the connection itself (no listener on
//! port 179, so no collision resolution is needed), ignores the routes a
//! router sends, and speaks one address family per session, the family of the
//! session's own addresses (IPv4 routes over an IPv4 session with a plain
//! NEXT_HOP, IPv6 routes over an IPv6 session in MP_REACH_NLRI, RFC 4760), so
//! the next hop is always the address the router talks to.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::capabilities::{
    BgpCapability, FourOctetAsCapability, GracefulRestartAddressFamily, GracefulRestartCapability,
    MultiProtocolExtensionsCapability,
};
use netgauze_bgp_pkt::community::{Community, LargeCommunity};
use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress};
use netgauze_bgp_pkt::notification::{
    BgpNotificationMessage, CeaseError, FiniteStateMachineError, HoldTimerExpiredError,
    OpenMessageError,
};
use netgauze_bgp_pkt::open::{BgpOpenMessage, BgpOpenMessageParameter};
use netgauze_bgp_pkt::path_attribute::{
    As4PathSegment, AsPath, AsPathSegmentType, Communities, LargeCommunities, LocalPreference,
    MpReach, MpUnreach, NextHop, Origin, PathAttribute, PathAttributeValue,
};
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_iana::address_family::AddressType;

/// The AS number a 2-byte field carries for a 4-byte ASN (RFC 6793).
pub const AS_TRANS: u16 = 23456;
/// The hold time while waiting for the peer's OPEN (RFC 4271 8: "a large
/// value", 4 minutes suggested).
const OPEN_HOLD: Duration = Duration::from_secs(240);
/// The first wait before connecting again after a failure; it doubles up to
/// [`MAX_RETRY`] and starts over once a session has stayed established (see
/// `Session::stable`). Short, so a router that restarts gets its routes back
/// within a second or two.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between connection attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// The shortest time Established that resets the reconnect back-off.
const STABLE_AT_LEAST: Duration = Duration::from_secs(10);

/// How a session is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This speaker's AS.
    pub my_asn: u32,
    /// The router's AS.
    pub peer_asn: u32,
    /// This speaker's BGP identifier; `None`: the session's own IPv4
    /// address, or for an IPv6 session the last 32 bits of its address.
    pub router_id: Option<Ipv4Addr>,
    /// The hold time proposed, in seconds (0, or 3 to 65535).
    pub hold_time: u16,
    /// The keepalive interval, in seconds; `None`: a third of the negotiated
    /// hold time.
    pub keepalive: Option<u16>,
    /// How long one connection attempt may take.
    pub connect_time: Duration,
    /// Graceful restart (RFC 4724): the restart time offered, and whether this
    /// speaker is coming back from a restart (the R bit).
    pub graceful_restart: Option<GracefulRestart>,
}

/// The graceful-restart capability this speaker offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GracefulRestart {
    /// Seconds the router keeps this speaker's routes after the session drops.
    pub restart_time: u16,
    /// This speaker restarted and its forwarding state survived.
    pub restarting: bool,
}

/// The RFC 4271 states, as routers name them. `Active` here means "waiting to
/// connect again after a failure" (ironlb never listens).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    /// Not started, or stopped.
    Idle,
    /// Connecting.
    Connect,
    /// Waiting to connect again.
    Active,
    /// OPEN sent, waiting for the router's.
    OpenSent,
    /// OPENs exchanged, waiting for the first KEEPALIVE.
    OpenConfirm,
    /// Routes flow.
    Established,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// The path attributes a route carries besides its next hop.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attributes {
    /// LOCAL_PREF, sent to iBGP peers only.
    pub local_pref: Option<u32>,
    /// Standard communities (RFC 1997).
    pub communities: BTreeSet<u32>,
    /// Large communities (RFC 8092).
    pub large_communities: BTreeSet<[u32; 3]>,
}

/// What the session is told.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// The connection is up, from `local`.
    Connected {
        /// The local address: the next hop of every route.
        local: IpAddr,
    },
    /// The connection attempt failed.
    ConnectFailed(String),
    /// The connection ended or broke.
    Closed(String),
    /// A message arrived.
    Message(BgpMessage),
    /// Bytes arrived that the session cannot go on after; the notification
    /// to send, if any.
    Malformed(String, Option<Box<BgpNotificationMessage>>),
    /// An UPDATE was dropped for an error RFC 7606 handles without a reset.
    Discarded(String),
    /// The clock reached [`Session::deadline`].
    Timer,
    /// The routes to advertise now (all of them).
    Routes(BTreeMap<IpNetwork, Attributes>),
    /// BFD says the path to the router is down.
    BfdDown,
    /// Stop. `graceful`: close without a NOTIFICATION, so that a router that
    /// agreed to graceful restart keeps the routes while this speaker comes
    /// back; otherwise send a Cease and the router withdraws at once.
    Stop {
        /// Keep the routes at the router.
        graceful: bool,
    },
}

/// What the session asks its adapter to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Open a connection to the router.
    Connect,
    /// Send a message.
    Send(BgpMessage),
    /// Close the connection (after sending what came before).
    Close,
}

/// One session's state and timers.
#[derive(Clone, Debug)]
pub struct Session {
    config: Config,
    state: State,
    since: Instant,
    last_error: Option<String>,
    /// When to connect (Idle/Active), or give up connecting (Connect).
    connect_at: Option<Instant>,
    retry: Duration,
    hold: Duration,
    hold_at: Option<Instant>,
    keepalive_every: Option<Duration>,
    keepalive_at: Option<Instant>,
    local: Option<IpAddr>,
    ibgp: bool,
    stopped: bool,
    wanted: BTreeMap<IpNetwork, Attributes>,
    sent: BTreeMap<IpNetwork, Attributes>,
    /// Whether the router offered graceful restart on this connection.
    peer_graceful: bool,
    /// The BGP identifier for a session from an IPv6 address, when the
    /// config names none (see [`crate::bgp::identity::node_identifier`]).
    node_identifier: Option<Ipv4Addr>,
}

impl Session {
    /// A session that connects at once.
    pub fn new(config: Config, now: Instant) -> Self {
        let ibgp = config.my_asn == config.peer_asn;
        Self {
            config,
            state: State::Idle,
            since: now,
            last_error: None,
            connect_at: Some(now),
            retry: FIRST_RETRY,
            hold: OPEN_HOLD,
            hold_at: None,
            keepalive_every: None,
            keepalive_at: None,
            local: None,
            ibgp,
            stopped: false,
            wanted: BTreeMap::new(),
            sent: BTreeMap::new(),
            peer_graceful: false,
            node_identifier: None,
        }
    }

    /// The same session, identifying itself as `identifier` on sessions
    /// from an IPv6 address (unless the config names a `routerID`).
    pub fn identified_as(mut self, identifier: Ipv4Addr) -> Self {
        self.node_identifier = Some(identifier);
        self
    }

    /// The state.
    pub fn state(&self) -> State {
        self.state
    }

    /// When the session entered its state.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Why the session last failed, if it did.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The prefixes the router has from this session now.
    pub fn prefixes_sent(&self) -> usize {
        self.sent.len()
    }

    /// The next instant the session must be woken with [`Input::Timer`].
    pub fn deadline(&self) -> Option<Instant> {
        [self.connect_at, self.hold_at, self.keepalive_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Takes one input.
    pub fn input(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Routes(routes) => {
                self.wanted = routes;
                if self.state == State::Established {
                    self.send_changes(&mut out);
                }
            }
            Input::Stop { graceful } => {
                if matches!(
                    self.state,
                    State::OpenSent | State::OpenConfirm | State::Established
                ) && !graceful
                {
                    out.push(notification(BgpNotificationMessage::CeaseError(
                        CeaseError::AdministrativeShutdown {
                            value: Box::new([]),
                        },
                    )));
                }
                if self.state != State::Idle && self.state != State::Active {
                    out.push(Action::Close);
                }
                self.stopped = true;
                self.enter(State::Idle, now);
                self.connect_at = None;
            }
            _ if self.stopped => {}
            Input::Timer => self.timer(now, &mut out),
            Input::Connected { local } => {
                if self.state == State::Connect {
                    self.local = Some(local);
                    self.enter(State::OpenSent, now);
                    self.connect_at = None;
                    self.hold_at = Some(now + OPEN_HOLD);
                    out.push(Action::Send(BgpMessage::Open(self.open(local))));
                } else {
                    // A connection the machine did not ask for.
                    out.push(Action::Close);
                }
            }
            Input::ConnectFailed(why) => {
                if self.state == State::Connect {
                    self.fail(format!("connect: {why}"), now, &mut out, false);
                }
            }
            Input::Closed(why) => {
                if self.connected() {
                    self.fail(why, now, &mut out, false);
                }
            }
            Input::BfdDown => {
                if self.connected() {
                    out.push(notification(BgpNotificationMessage::CeaseError(
                        CeaseError::BfdDown {
                            value: Box::new([]),
                        },
                    )));
                    self.fail("BFD says the path is down".into(), now, &mut out, true);
                }
            }
            Input::Malformed(why, note) => {
                if self.connected() {
                    if let Some(note) = note {
                        out.push(notification(*note));
                    }
                    self.fail(format!("malformed message: {why}"), now, &mut out, true);
                }
            }
            // Any message keeps the session alive, a discarded UPDATE too;
            // outside Established it is out of turn, as a readable one is.
            Input::Discarded(_) if self.state == State::Established => self.touch(now),
            Input::Discarded(why) => {
                if self.connected() {
                    let state = self.state;
                    self.out_of_turn(state, format!("an UPDATE ({why})"), now, &mut out);
                }
            }
            Input::Message(message) => self.message(message, now, &mut out),
        }
        out
    }

    fn connected(&self) -> bool {
        matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        )
    }

    fn enter(&mut self, state: State, now: Instant) {
        if state != self.state {
            self.state = state;
            self.since = now;
        }
        if state != State::Established {
            self.sent.clear();
        }
        if !matches!(
            state,
            State::OpenSent | State::OpenConfirm | State::Established
        ) {
            self.hold_at = None;
            self.keepalive_at = None;
            self.local = None;
        }
    }

    /// The connection is lost or given up: wait, then connect again. The
    /// wait doubles with every failure up to [`MAX_RETRY`], and starts over
    /// only after a session that stayed Established for [`Session::stable`]:
    /// a router that accepts and then drops the session at once is tried
    /// less and less often, not every second.
    fn fail(&mut self, why: String, now: Instant, out: &mut Vec<Action>, close: bool) {
        if close {
            out.push(Action::Close);
        }
        if self.state == State::Established && now.duration_since(self.since) >= self.stable() {
            self.retry = FIRST_RETRY;
        }
        self.last_error = Some(why);
        self.enter(State::Active, now);
        self.connect_at = Some(now + self.retry);
        self.retry = (self.retry * 2).min(MAX_RETRY);
    }

    fn timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.hold_at.is_some_and(|t| now >= t) {
            out.push(notification(BgpNotificationMessage::HoldTimerExpiredError(
                HoldTimerExpiredError::Unspecific {
                    sub_code: 0,
                    value: Box::new([]),
                },
            )));
            self.fail("hold timer expired".into(), now, out, true);
            return;
        }
        if self.connect_at.is_some_and(|t| now >= t) {
            if self.state == State::Connect {
                self.fail("connect: timed out".into(), now, out, true);
            } else {
                self.enter(State::Connect, now);
                self.connect_at = Some(now + self.config.connect_time);
                out.push(Action::Connect);
            }
            return;
        }
        if let (Some(at), Some(every)) = (self.keepalive_at, self.keepalive_every)
            && now >= at
        {
            out.push(Action::Send(BgpMessage::KeepAlive));
            self.keepalive_at = Some(now + every);
        }
    }

    fn message(&mut self, message: BgpMessage, now: Instant, out: &mut Vec<Action>) {
        if let BgpMessage::Notification(n) = &message {
            if self.connected() {
                self.fail(format!("the router sent {}", describe(n)), now, out, true);
            }
            return;
        }
        match (self.state, message) {
            (State::OpenSent, BgpMessage::Open(open)) => {
                if let Err((why, note)) = self.check_open(&open) {
                    out.push(notification(note));
                    self.fail(why, now, out, true);
                    return;
                }
                self.peer_graceful = open
                    .capabilities()
                    .iter()
                    .any(|c| matches!(c, BgpCapability::GracefulRestartCapability(_)));
                let hold = self.config.hold_time.min(open.hold_time());
                self.hold = Duration::from_secs(hold.into());
                self.keepalive_every = (hold > 0).then(|| {
                    let every = self.config.keepalive.unwrap_or(hold / 3).clamp(1, hold);
                    Duration::from_secs(every.into())
                });
                self.hold_at = (hold > 0).then(|| now + self.hold);
                self.keepalive_at = self.keepalive_every.map(|e| now + e);
                self.enter(State::OpenConfirm, now);
                out.push(Action::Send(BgpMessage::KeepAlive));
            }
            (State::OpenConfirm, BgpMessage::KeepAlive) => {
                self.enter(State::Established, now);
                self.last_error = None;
                self.touch(now);
                self.send_changes(out);
                out.push(Action::Send(end_of_rib(self.family_v6())));
            }
            (State::Established, BgpMessage::KeepAlive | BgpMessage::Update(_)) => {
                // Routes from the router are not used: ironlb only advertises.
                self.touch(now);
            }
            (State::Established, BgpMessage::RouteRefresh(_)) => {
                self.touch(now);
                self.sent.clear();
                self.send_changes(out);
                out.push(Action::Send(end_of_rib(self.family_v6())));
            }
            (state, message) if self.connected() => {
                let what = format!("{:?}", message.get_type());
                self.out_of_turn(state, what, now, out);
            }
            _ => {}
        }
    }

    /// A message the state machine does not expect in `state`.
    fn out_of_turn(&mut self, state: State, what: String, now: Instant, out: &mut Vec<Action>) {
        let value: Box<[u8]> = Box::new([]);
        let note = match state {
            State::OpenSent => {
                FiniteStateMachineError::ReceiveUnexpectedMessageInOpenSentState { value }
            }
            State::OpenConfirm => {
                FiniteStateMachineError::ReceiveUnexpectedMessageInOpenConfirmState { value }
            }
            _ => FiniteStateMachineError::ReceiveUnexpectedMessageInEstablishedState { value },
        };
        out.push(notification(
            BgpNotificationMessage::FiniteStateMachineError(note),
        ));
        self.fail(
            format!("the router sent {what} in state {state}"),
            now,
            out,
            true,
        );
    }

    /// How long a session must stay Established before a failure counts as
    /// a new one: its hold time, at least [`STABLE_AT_LEAST`] (90 s with no
    /// hold time).
    fn stable(&self) -> Duration {
        if self.hold.is_zero() {
            Duration::from_secs(90)
        } else {
            self.hold.max(STABLE_AT_LEAST)
        }
    }

    fn touch(&mut self, now: Instant) {
        if !self.hold.is_zero() {
            self.hold_at = Some(now + self.hold);
        }
    }

    fn family_v6(&self) -> bool {
        self.local.is_some_and(|l| l.is_ipv6())
    }

    fn check_open(&self, open: &BgpOpenMessage) -> Result<(), (String, BgpNotificationMessage)> {
        let value: Box<[u8]> = Box::new([]);
        if open.version() != 4 {
            return Err((
                format!("the router speaks BGP version {}", open.version()),
                BgpNotificationMessage::OpenMessageError(
                    OpenMessageError::UnsupportedVersionNumber {
                        value: Box::new([0, 4]),
                    },
                ),
            ));
        }
        let asn = open.my_asn4();
        if asn != self.config.peer_asn {
            return Err((
                format!(
                    "the router is in AS {asn}, the BGPPeer says {}",
                    self.config.peer_asn
                ),
                BgpNotificationMessage::OpenMessageError(OpenMessageError::BadPeerAs { value }),
            ));
        }
        if matches!(open.hold_time(), 1 | 2) {
            return Err((
                format!(
                    "the router proposed a hold time of {} s (RFC 4271 allows 0 or at least 3)",
                    open.hold_time()
                ),
                BgpNotificationMessage::OpenMessageError(OpenMessageError::UnacceptableHoldTime {
                    value,
                }),
            ));
        }
        let id = open.bgp_id();
        if id.is_unspecified() || (self.ibgp && Some(id) == self.local.map(|l| self.router_id(l))) {
            return Err((
                format!("the router's BGP identifier {id} is unusable"),
                BgpNotificationMessage::OpenMessageError(OpenMessageError::BadBgpIdentifier {
                    value,
                }),
            ));
        }
        Ok(())
    }

    /// `routerID`, else the session's own IPv4 address, else the node's
    /// identifier. Never the low bits of an IPv6 address: two nodes of one
    /// /64 with EUI-64 or sequential addresses would collide.
    fn router_id(&self, local: IpAddr) -> Ipv4Addr {
        self.config.router_id.unwrap_or(match local {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) => self
                .node_identifier
                .unwrap_or_else(|| super::identity::node_identifier(&a.to_string(), None)),
        })
    }

    fn open(&self, local: IpAddr) -> BgpOpenMessage {
        let family = address_type(local.is_ipv6());
        let mut caps = vec![
            BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(family)),
            BgpCapability::RouteRefresh,
            BgpCapability::FourOctetAs(FourOctetAsCapability::new(self.config.my_asn)),
        ];
        if let Some(gr) = self.config.graceful_restart {
            caps.push(BgpCapability::GracefulRestartCapability(
                GracefulRestartCapability::new(
                    gr.restarting,
                    false,
                    gr.restart_time.min(4095),
                    // Forwarding state "preserved" (F bit) always: the
                    // node's addresses and routes outlive its speaker, so a
                    // router keeps the routes until this speaker's
                    // End-of-RIB rather than dropping them when it reconnects.
                    [GracefulRestartAddressFamily::new(true, family)],
                ),
            ));
        }
        let my_as = u16::try_from(self.config.my_asn).unwrap_or(AS_TRANS);
        BgpOpenMessage::new(
            my_as,
            self.config.hold_time,
            self.router_id(local),
            [BgpOpenMessageParameter::Capabilities(caps.into())],
        )
    }

    /// Sends what the router lacks: withdrawals first, then announcements
    /// grouped by attributes. Only routes of the session's family are sent.
    fn send_changes(&mut self, out: &mut Vec<Action>) {
        let Some(local) = self.local else { return };
        let v6 = local.is_ipv6();
        let wanted: BTreeMap<IpNetwork, Attributes> = self
            .wanted
            .iter()
            .filter(|(p, _)| p.is_ipv6() == v6)
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        let gone: Vec<IpNetwork> = self
            .sent
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        if !gone.is_empty() {
            out.push(Action::Send(withdraw(&gone, v6)));
        }
        let mut groups: BTreeMap<&Attributes, Vec<IpNetwork>> = BTreeMap::new();
        for (prefix, attrs) in &wanted {
            if self.sent.get(prefix) != Some(attrs) {
                groups.entry(attrs).or_default().push(*prefix);
            }
        }
        for (attrs, prefixes) in groups {
            // Keep each UPDATE far below the 4,096-byte limit.
            for chunk in prefixes.chunks(200) {
                out.push(Action::Send(self.announce(chunk, attrs, local)));
            }
        }
        self.sent = wanted;
    }

    fn announce(&self, prefixes: &[IpNetwork], attrs: &Attributes, local: IpAddr) -> BgpMessage {
        let mut path = vec![
            attribute(PathAttributeValue::Origin(Origin::IGP)),
            attribute(PathAttributeValue::AsPath(AsPath::As4PathSegments(
                if self.ibgp {
                    Vec::new()
                } else {
                    vec![As4PathSegment::new(
                        AsPathSegmentType::AsSequence,
                        [self.config.my_asn],
                    )]
                }
                .into(),
            ))),
        ];
        let mut nlri = Vec::new();
        match local {
            IpAddr::V4(hop) => {
                path.push(attribute(PathAttributeValue::NextHop(NextHop::new(hop))));
                nlri = prefixes.iter().filter_map(v4_nlri).collect();
            }
            IpAddr::V6(hop) => path.push(attribute(PathAttributeValue::MpReach(
                MpReach::Ipv6Unicast {
                    next_hop_global: hop,
                    next_hop_local: None,
                    nlri: prefixes.iter().filter_map(v6_nlri).collect(),
                },
            ))),
        }
        if self.ibgp
            && let Some(pref) = attrs.local_pref
        {
            path.push(attribute(PathAttributeValue::LocalPreference(
                LocalPreference::new(pref),
            )));
        }
        if !attrs.communities.is_empty() {
            path.push(attribute(PathAttributeValue::Communities(
                Communities::new(
                    attrs
                        .communities
                        .iter()
                        .map(|c| Community::new(*c))
                        .collect::<Vec<_>>(),
                ),
            )));
        }
        if !attrs.large_communities.is_empty() {
            path.push(attribute(PathAttributeValue::LargeCommunities(
                LargeCommunities::new(
                    attrs
                        .large_communities
                        .iter()
                        .map(|[g, a, b]| LargeCommunity::new(*g, *a, *b))
                        .collect::<Vec<_>>(),
                ),
            )));
        }
        BgpMessage::Update(BgpUpdateMessage::new(Vec::new(), path, nlri))
    }
}

fn notification(n: BgpNotificationMessage) -> Action {
    Action::Send(BgpMessage::Notification(n))
}

/// A NOTIFICATION as an operator reads it: "Cease (AdministrativeShutdown)".
fn describe(n: &BgpNotificationMessage) -> String {
    let detail = format!("{n:?}");
    let kind = detail.split('(').next().unwrap_or_default().to_string();
    let sub = detail
        .split('(')
        .nth(1)
        .and_then(|s| s.split([' ', '{']).next())
        .unwrap_or_default();
    format!("a NOTIFICATION: {kind} ({sub})")
}

fn address_type(v6: bool) -> AddressType {
    if v6 {
        AddressType::Ipv6Unicast
    } else {
        AddressType::Ipv4Unicast
    }
}

/// A path attribute with the flags RFC 4271/4760 give it (the codec knows
/// them for every attribute sent here); MP_(UN)REACH_NLRI use the extended
/// length, since they can pass 255 bytes.
fn attribute(value: PathAttributeValue) -> PathAttribute {
    let extended = matches!(
        value,
        PathAttributeValue::MpReach(_) | PathAttributeValue::MpUnreach(_)
    );
    let optional = value.can_be_optional().unwrap_or(true);
    let transitive = value.can_be_transitive().unwrap_or(false);
    PathAttribute::from(optional, transitive, false, extended, value)
        .expect("the codec accepts the flags it gives")
}

fn v4_nlri(p: &IpNetwork) -> Option<Ipv4UnicastAddress> {
    let IpNetwork::V4(n) = p else { return None };
    let net = ipnet::Ipv4Net::new(n.network(), n.prefix()).ok()?;
    Ipv4Unicast::from_net(net)
        .ok()
        .map(Ipv4UnicastAddress::new_no_path_id)
}

fn v6_nlri(p: &IpNetwork) -> Option<Ipv6UnicastAddress> {
    let IpNetwork::V6(n) = p else { return None };
    let net = ipnet::Ipv6Net::new(n.network(), n.prefix()).ok()?;
    Ipv6Unicast::from_net(net)
        .ok()
        .map(|n| Ipv6UnicastAddress::new(None, n))
}

fn withdraw(prefixes: &[IpNetwork], v6: bool) -> BgpMessage {
    if v6 {
        BgpMessage::Update(BgpUpdateMessage::new(
            Vec::new(),
            vec![attribute(PathAttributeValue::MpUnreach(
                MpUnreach::Ipv6Unicast {
                    nlri: prefixes.iter().filter_map(v6_nlri).collect(),
                },
            ))],
            Vec::new(),
        ))
    } else {
        BgpMessage::Update(BgpUpdateMessage::new(
            prefixes.iter().filter_map(v4_nlri).collect::<Vec<_>>(),
            Vec::new(),
            Vec::new(),
        ))
    }
}

/// The End-of-RIB marker (RFC 4724 2): an empty UPDATE for IPv4, an empty
/// MP_UNREACH_NLRI for IPv6. A router doing graceful restart drops the stale
/// routes this speaker did not send again once it sees it.
fn end_of_rib(v6: bool) -> BgpMessage {
    withdraw(&[], v6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::wire::Wire;
    use bytes::BytesMut;
    use netgauze_bgp_pkt::iana::RouteRefreshSubcode;
    use netgauze_bgp_pkt::route_refresh::BgpRouteRefreshMessage;
    use proptest::prelude::*;

    const HOLD: u16 = 9;

    fn config(my_asn: u32, peer_asn: u32) -> Config {
        Config {
            my_asn,
            peer_asn,
            router_id: None,
            hold_time: HOLD,
            keepalive: None,
            connect_time: Duration::from_secs(5),
            graceful_restart: None,
        }
    }

    /// The other end, as a router sees this speaker: every message crosses
    /// the real encoding both ways, and the routes it holds are what the
    /// UPDATEs said.
    struct Router {
        asn: u32,
        hold: u16,
        from_speaker: Wire,
        to_speaker: Wire,
        table: BTreeMap<IpNetwork, (IpAddr, Attributes)>,
        end_of_rib: usize,
        notifications: Vec<BgpNotificationMessage>,
        opens: Vec<BgpOpenMessage>,
    }

    impl Router {
        fn new(asn: u32, hold: u16) -> Self {
            Self {
                asn,
                hold,
                from_speaker: Wire::new(),
                to_speaker: Wire::new(),
                table: BTreeMap::new(),
                end_of_rib: 0,
                notifications: Vec::new(),
                opens: Vec::new(),
            }
        }

        /// A new connection: a router without graceful restart forgets the
        /// session's routes when it drops.
        fn reconnected(&mut self) {
            self.from_speaker = Wire::new();
            self.to_speaker = Wire::new();
            self.table.clear();
        }

        /// Carries `message` through the encoder and decoder, as a socket would.
        fn cross(from: &mut Wire, to: &mut Wire, message: BgpMessage) -> BgpMessage {
            let mut bytes = BytesMut::new();
            from.encode(message, &mut bytes).expect("encodes");
            to.feed(&bytes);
            match to.next_message().expect("parses").expect("a whole message") {
                super::super::wire::Received::Message(m) => m,
                other => panic!("a message, not {other:?}"),
            }
        }

        /// What the router makes of the speaker's actions; whether an UPDATE
        /// was among them.
        fn take(&mut self, actions: &[Action]) -> bool {
            let mut updates = false;
            for a in actions {
                let m = match a {
                    Action::Send(m) => m,
                    // Without graceful restart, a router drops a closed
                    // session's routes.
                    Action::Close => {
                        self.table.clear();
                        continue;
                    }
                    Action::Connect => continue,
                };
                let mut sender = std::mem::take(&mut self.to_speaker);
                let received = Self::cross(&mut sender, &mut self.from_speaker, m.clone());
                self.to_speaker = sender;
                match received {
                    BgpMessage::Open(o) => self.opens.push(o),
                    BgpMessage::Notification(n) => self.notifications.push(n),
                    BgpMessage::Update(u) => {
                        updates = true;
                        self.apply(&u)
                    }
                    _ => {}
                }
            }
            updates
        }

        fn apply(&mut self, u: &BgpUpdateMessage) {
            if u.end_of_rib().is_some() {
                self.end_of_rib += 1;
                return;
            }
            for w in u.withdraw_routes() {
                self.table.remove(&v4(w));
            }
            let mut attrs = Attributes::default();
            let mut hop = None;
            let mut reach = Vec::new();
            for a in u.path_attributes() {
                match a.value() {
                    PathAttributeValue::NextHop(n) => hop = Some(IpAddr::V4(n.next_hop())),
                    PathAttributeValue::LocalPreference(l) => attrs.local_pref = Some(l.metric()),
                    PathAttributeValue::Communities(c) => {
                        attrs.communities = c.communities().iter().map(|c| c.value()).collect()
                    }
                    PathAttributeValue::LargeCommunities(c) => {
                        attrs.large_communities = c
                            .communities()
                            .iter()
                            .map(|c| [c.global_admin(), c.local_data1(), c.local_data2()])
                            .collect()
                    }
                    PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                        next_hop_global,
                        nlri,
                        ..
                    }) => {
                        hop = Some(IpAddr::V6(*next_hop_global));
                        reach.extend(nlri.iter().map(v6));
                    }
                    PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri }) => {
                        for n in nlri.iter() {
                            self.table.remove(&v6(n));
                        }
                    }
                    _ => {}
                }
            }
            reach.extend(u.nlri().iter().map(v4));
            for p in reach {
                self.table.insert(
                    p,
                    (hop.expect("a next hop with every route"), attrs.clone()),
                );
            }
        }

        /// The router's OPEN and first KEEPALIVE, through the wire.
        fn open(&mut self, id: Ipv4Addr) -> Vec<BgpMessage> {
            let caps = vec![
                BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
                    AddressType::Ipv4Unicast,
                )),
                BgpCapability::RouteRefresh,
                BgpCapability::FourOctetAs(FourOctetAsCapability::new(self.asn)),
            ];
            let open = BgpOpenMessage::new(
                u16::try_from(self.asn).unwrap_or(AS_TRANS),
                self.hold,
                id,
                [BgpOpenMessageParameter::Capabilities(caps.into())],
            );
            [BgpMessage::Open(open), BgpMessage::KeepAlive]
                .into_iter()
                .map(|m| self.send(m))
                .collect()
        }

        fn send(&mut self, m: BgpMessage) -> BgpMessage {
            let mut receiver = std::mem::take(&mut self.from_speaker);
            let out = Self::cross(&mut receiver, &mut self.to_speaker, m);
            self.from_speaker = receiver;
            out
        }
    }

    fn v4(a: &Ipv4UnicastAddress) -> IpNetwork {
        let n = a.network().address();
        IpNetwork::new(IpAddr::V4(n.addr()), n.prefix_len()).expect("a prefix")
    }

    fn v6(a: &Ipv6UnicastAddress) -> IpNetwork {
        let n = a.network().address();
        IpNetwork::new(IpAddr::V6(n.addr()), n.prefix_len()).expect("a prefix")
    }

    /// Drives a session to Established against `router`; returns the clock.
    fn establish(s: &mut Session, r: &mut Router, local: IpAddr, now: Instant) -> Instant {
        assert_eq!(s.deadline(), Some(now));
        assert_eq!(s.input(Input::Timer, now), vec![Action::Connect]);
        assert_eq!(s.state(), State::Connect);
        r.reconnected();
        let sent = s.input(Input::Connected { local }, now);
        r.take(&sent);
        assert_eq!(s.state(), State::OpenSent);
        for m in r.open(Ipv4Addr::new(10, 0, 0, 1)) {
            let out = s.input(Input::Message(m), now);
            r.take(&out);
        }
        assert_eq!(s.state(), State::Established, "{:?}", s.last_error());
        now
    }

    fn host(i: u8) -> IpNetwork {
        IpNetwork::new(IpAddr::V4(Ipv4Addr::new(10, 240, 9, i)), 32).expect("a prefix")
    }

    #[test]
    fn a_session_opens_with_four_byte_asns_and_advertises_with_our_next_hop() {
        let now = Instant::now();
        let mut s = Session::new(config(4_200_000_001, 64512), now);
        let mut r = Router::new(64512, 90);
        let routes: BTreeMap<_, _> = [(
            host(100),
            Attributes {
                local_pref: Some(200),
                communities: [65000 << 16 | 100].into(),
                large_communities: [[4_200_000_001, 1, 2]].into(),
            },
        )]
        .into();
        s.input(Input::Routes(routes.clone()), now);
        establish(&mut s, &mut r, "10.0.0.2".parse().expect("ip"), now);
        let open = &r.opens[0];
        assert_eq!(open.my_as(), AS_TRANS, "a 4-byte ASN goes as AS_TRANS");
        assert_eq!(open.my_asn4(), 4_200_000_001);
        assert_eq!(open.hold_time(), HOLD);
        let (hop, attrs) = &r.table[&host(100)];
        assert_eq!(*hop, "10.0.0.2".parse::<IpAddr>().expect("ip"));
        assert_eq!(attrs.local_pref, None, "LOCAL_PREF goes to iBGP peers only");
        assert_eq!(attrs.communities, routes[&host(100)].communities);
        assert_eq!(
            attrs.large_communities,
            routes[&host(100)].large_communities
        );
        assert_eq!(r.end_of_rib, 1);
        assert_eq!(s.prefixes_sent(), 1);
    }

    #[test]
    fn ibgp_carries_local_pref_and_ipv6_goes_in_mp_reach_over_an_ipv6_session() {
        let now = Instant::now();
        let mut s = Session::new(config(64512, 64512), now);
        let mut r = Router::new(64512, 90);
        let v6p: IpNetwork = "2001:db8::64/128".parse().expect("prefix");
        let attrs = Attributes {
            local_pref: Some(300),
            ..Default::default()
        };
        s.input(
            Input::Routes([(v6p, attrs.clone()), (host(1), attrs.clone())].into()),
            now,
        );
        establish(&mut s, &mut r, "fd00::2".parse().expect("ip"), now);
        assert_eq!(
            r.table.keys().copied().collect::<Vec<_>>(),
            vec![v6p],
            "only the session's family"
        );
        assert_eq!(r.table[&v6p].0, "fd00::2".parse::<IpAddr>().expect("ip"));
        assert_eq!(r.table[&v6p].1.local_pref, Some(300));
        let out = s.input(Input::Routes(BTreeMap::new()), now);
        r.take(&out);
        assert!(r.table.is_empty(), "withdrawn with MP_UNREACH_NLRI");
    }

    /// On an IPv6 session the identifier is the node's, never the low bits
    /// of the IPv6 address (which two nodes of one /64 can share).
    #[test]
    fn an_ipv6_session_identifies_as_the_node() {
        let node = Ipv4Addr::new(192, 0, 2, 7);
        for (local, identified, want) in [
            ("fd00::a:0:c000:207", Some(node), node),
            ("10.0.0.2", Some(node), Ipv4Addr::new(10, 0, 0, 2)),
        ] {
            let now = Instant::now();
            let mut s = Session::new(config(64512, 64513), now);
            if let Some(id) = identified {
                s = s.identified_as(id);
            }
            let mut r = Router::new(64513, 90);
            establish(&mut s, &mut r, local.parse().expect("ip"), now);
            assert_eq!(r.opens[0].bgp_id(), want, "{local}");
        }
        // Without one, not the low 32 bits either.
        let now = Instant::now();
        let mut s = Session::new(config(64512, 64513), now);
        let mut r = Router::new(64513, 90);
        establish(&mut s, &mut r, "fd00::c000:207".parse().expect("ip"), now);
        assert_ne!(r.opens[0].bgp_id(), node);
    }

    /// A dropped UPDATE keeps the session (and its hold timer) alive; out
    /// of turn it is a state machine error, as a readable one is.
    #[test]
    fn a_discarded_update_keeps_the_session() {
        let now = Instant::now();
        let mut s = Session::new(config(64512, 64513), now);
        let mut r = Router::new(64513, 9);
        establish(&mut s, &mut r, "10.0.0.2".parse().expect("ip"), now);
        let later = now + Duration::from_secs(8);
        let out = s.input(Input::Discarded("COMMUNITIES of length 3".into()), later);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(s.state(), State::Established);
        // The hold timer started over at the discarded UPDATE: past the
        // first 9 s, the session is still up.
        let out = s.input(Input::Timer, now + Duration::from_secs(10));
        assert!(!out.contains(&Action::Close), "{out:?}");
        assert_eq!(s.state(), State::Established);
        // Out of turn, it ends the session as any UPDATE would.
        let mut s = Session::new(config(64512, 64513), now);
        s.input(Input::Timer, now);
        let local = "10.0.0.2".parse().expect("ip");
        s.input(Input::Connected { local }, now);
        let out = s.input(Input::Discarded("bad".into()), now);
        assert!(out.contains(&Action::Close), "{out:?}");
        assert_eq!(s.state(), State::Active);
    }

    #[test]
    fn a_router_in_another_as_is_refused_with_bad_peer_as() {
        let now = Instant::now();
        let mut s = Session::new(config(64512, 64513), now);
        let mut r = Router::new(64999, 90);
        s.input(Input::Timer, now);
        r.take(&s.input(
            Input::Connected {
                local: "10.0.0.2".parse().expect("ip"),
            },
            now,
        ));
        let open = r.open(Ipv4Addr::new(10, 0, 0, 1)).remove(0);
        let out = s.input(Input::Message(open), now);
        r.take(&out);
        assert_eq!(out.last(), Some(&Action::Close));
        assert!(matches!(
            r.notifications[..],
            [BgpNotificationMessage::OpenMessageError(
                OpenMessageError::BadPeerAs { .. }
            )]
        ));
        assert_eq!(s.state(), State::Active);
        assert_eq!(
            s.last_error(),
            Some("the router is in AS 64999, the BGPPeer says 64513")
        );
        assert_eq!(s.deadline(), Some(now + FIRST_RETRY));
    }

    #[test]
    fn keepalives_go_every_third_of_the_hold_time_and_silence_ends_the_session() {
        let t0 = Instant::now();
        let mut s = Session::new(config(64512, 64513), t0);
        let mut r = Router::new(64513, 30);
        establish(&mut s, &mut r, "10.0.0.2".parse().expect("ip"), t0);
        // Hold: min(9, 30) = 9 s, so a keepalive every 3 s.
        assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(3)));
        let t = t0 + Duration::from_secs(3);
        assert_eq!(
            s.input(Input::Timer, t),
            vec![Action::Send(BgpMessage::KeepAlive)]
        );
        assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(6)));
        // The router says nothing for 9 s.
        let mut t = t;
        while s.state() == State::Established {
            t = s.deadline().expect("a deadline");
            let out = s.input(Input::Timer, t);
            r.take(&out);
        }
        assert_eq!(t, t0 + Duration::from_secs(HOLD.into()));
        assert!(matches!(
            r.notifications[..],
            [BgpNotificationMessage::HoldTimerExpiredError(_)]
        ));
        assert_eq!(s.last_error(), Some("hold timer expired"));
        assert_eq!(s.prefixes_sent(), 0);
    }

    #[test]
    fn failed_connections_back_off_to_thirty_seconds_and_start_over_once_stably_established() {
        let mut now = Instant::now();
        let mut s = Session::new(config(64512, 64513), now);
        let mut waits = Vec::new();
        for _ in 0..8 {
            now = s.deadline().expect("a deadline");
            assert_eq!(s.input(Input::Timer, now), vec![Action::Connect]);
            s.input(Input::ConnectFailed("refused".into()), now);
            waits.push((s.deadline().expect("a deadline") - now).as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        // A connect that hangs is given up after connect_time.
        now = s.deadline().expect("a deadline");
        s.input(Input::Timer, now);
        assert_eq!(s.deadline(), Some(now + Duration::from_secs(5)));
        let out = s.input(Input::Timer, now + Duration::from_secs(5));
        assert_eq!(out, vec![Action::Close]);
        assert_eq!(s.last_error(), Some("connect: timed out"));
        // Up for its hold time (90 s), then lost: the next try is soon.
        now = s.deadline().expect("a deadline");
        let mut r = Router::new(64513, 90);
        let up = establish(&mut s, &mut r, "10.0.0.2".parse().expect("ip"), now);
        let later = up + Duration::from_secs(90);
        s.input(Input::Closed("reset by peer".into()), later);
        assert_eq!(s.deadline(), Some(later + FIRST_RETRY));
    }

    /// A router that accepts, opens and drops the session at once is not
    /// tried every second forever: the back-off keeps growing.
    #[test]
    fn a_session_that_drops_right_after_opening_keeps_backing_off() {
        let mut s = Session::new(config(64512, 64513), Instant::now());
        let mut waits = Vec::new();
        for _ in 0..7 {
            let now = s.deadline().expect("a deadline");
            let mut r = Router::new(64513, 90);
            let up = establish(&mut s, &mut r, "10.0.0.2".parse().expect("ip"), now);
            assert_eq!(s.state(), State::Established);
            let dropped = up + Duration::from_secs(2);
            s.input(
                Input::Closed("the router closed the connection".into()),
                dropped,
            );
            waits.push((s.deadline().expect("a deadline") - dropped).as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn stopping_says_cease_unless_graceful_and_a_stopped_session_stays_down() {
        for graceful in [false, true] {
            let now = Instant::now();
            let mut c = config(64512, 64513);
            c.graceful_restart = Some(GracefulRestart {
                restart_time: 120,
                restarting: false,
            });
            let mut s = Session::new(c, now);
            let mut r = Router::new(64513, 90);
            establish(&mut s, &mut r, "10.0.0.2".parse().expect("ip"), now);
            assert!(r.opens[0].capabilities().iter().any(|c| matches!(
                c,
                BgpCapability::GracefulRestartCapability(g) if g.time() == 120
            )));
            let out = s.input(Input::Stop { graceful }, now);
            r.take(&out);
            assert_eq!(out.last(), Some(&Action::Close));
            assert_eq!(r.notifications.len(), usize::from(!graceful));
            assert_eq!(s.state(), State::Idle);
            assert_eq!(s.deadline(), None);
            assert!(
                s.input(Input::Timer, now + Duration::from_secs(60))
                    .is_empty()
            );
        }
    }

    #[test]
    fn bfd_down_closes_at_once_with_a_cease() {
        let now = Instant::now();
        let mut s = Session::new(config(64512, 64513), now);
        let mut r = Router::new(64513, 90);
        establish(&mut s, &mut r, "10.0.0.2".parse().expect("ip"), now);
        let out = s.input(Input::BfdDown, now);
        r.take(&out);
        assert!(matches!(
            r.notifications[..],
            [BgpNotificationMessage::CeaseError(
                CeaseError::BfdDown { .. }
            )]
        ));
        assert_eq!(s.state(), State::Active);
        assert_eq!(s.prefixes_sent(), 0);
    }

    #[test]
    fn an_update_before_established_is_a_state_machine_error() {
        let now = Instant::now();
        let mut s = Session::new(config(64512, 64513), now);
        let mut r = Router::new(64513, 90);
        s.input(Input::Timer, now);
        r.take(&s.input(
            Input::Connected {
                local: "10.0.0.2".parse().expect("ip"),
            },
            now,
        ));
        let out = s.input(Input::Message(BgpMessage::KeepAlive), now);
        r.take(&out);
        assert!(matches!(
            r.notifications[..],
            [BgpNotificationMessage::FiniteStateMachineError(_)]
        ));
        assert_eq!(s.state(), State::Active);
    }

    /// What happens to a session, in any order.
    #[derive(Clone, Debug)]
    enum Step {
        Routes(Vec<(u8, u8)>),
        Drop,
        Refresh,
        Wait(u8),
        RouterKeepalive,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => proptest::collection::vec((0u8..12, 0u8..3), 0..8).prop_map(Step::Routes),
            1 => Just(Step::Drop),
            1 => Just(Step::Refresh),
            2 => (0u8..12).prop_map(Step::Wait),
            2 => Just(Step::RouterKeepalive),
        ]
    }

    proptest! {
        /// Whatever happens, once the session is established the router holds
        /// exactly the routes wanted, with their attributes, and no UPDATE is
        /// ever sent outside Established.
        #[test]
        fn the_router_holds_exactly_the_routes_wanted(steps in proptest::collection::vec(step(), 1..40)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut s = Session::new(config(64512, 64513), now);
            let mut r = Router::new(64513, 9);
            let mut wanted = BTreeMap::new();
            establish(&mut s, &mut r, "10.0.0.2".parse().expect("ip"), now);
            for step in steps {
                let out = match step {
                    Step::Routes(routes) => {
                        wanted = routes
                            .into_iter()
                            .map(|(i, c)| {
                                (host(i), Attributes {
                                    communities: (0..c).map(u32::from).collect(),
                                    ..Default::default()
                                })
                            })
                            .collect();
                        s.input(Input::Routes(wanted.clone()), now)
                    }
                    Step::Drop => s.input(Input::Closed("reset".into()), now),
                    Step::Refresh => s.input(
                        Input::Message(r.send(BgpMessage::RouteRefresh(
                            BgpRouteRefreshMessage::new(AddressType::Ipv4Unicast, RouteRefreshSubcode::NormalRequest),
                        ))),
                        now,
                    ),
                    Step::Wait(secs) => {
                        let until = now + Duration::from_secs(secs.into());
                        let mut out = Vec::new();
                        while let Some(d) = s.deadline().filter(|d| *d <= until) {
                            now = d.max(now);
                            let acts = s.input(Input::Timer, now);
                            if acts.contains(&Action::Connect) {
                                r.reconnected();
                                let sent = s.input(Input::Connected { local: "10.0.0.2".parse().expect("ip") }, now);
                                r.take(&sent);
                                for m in r.open(Ipv4Addr::new(10, 0, 0, 1)) {
                                    let acts = s.input(Input::Message(m), now);
                                    r.take(&acts);
                                    out.extend(acts);
                                }
                            } else {
                                r.take(&acts);
                                out.extend(acts);
                            }
                        }
                        now = until;
                        prop_assert!(out.iter().all(|a| !matches!(a, Action::Send(BgpMessage::Update(_))))
                            || s.state() == State::Established || out.contains(&Action::Close));
                        Vec::new()
                    }
                    Step::RouterKeepalive => {
                        let m = r.send(BgpMessage::KeepAlive);
                        s.input(Input::Message(m), now)
                    }
                };
                let state_before = s.state();
                let updated = r.take(&out);
                prop_assert!(!updated || s.state() == State::Established || state_before == State::Established,
                    "an UPDATE outside Established");
                if s.state() == State::Established {
                    let held: BTreeMap<_, _> = r.table.iter().map(|(p, (_, a))| (*p, a.clone())).collect();
                    prop_assert_eq!(&held, &wanted);
                    prop_assert_eq!(s.prefixes_sent(), wanted.len());
                } else {
                    prop_assert_eq!(s.prefixes_sent(), 0);
                }
            }
        }
    }
}
