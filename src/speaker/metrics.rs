//! The speaker's metrics: what it announces, what it answered, the group.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::l2::announcer;
use crate::membership;

/// An interface, as a label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceLabel {
    interface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

/// Everything a speaker exports, plus readiness.
///
/// Per-interface series are families with an `interface` label, created once:
/// one HELP and TYPE line each however many interfaces announce (a
/// sub-registry per interface would repeat them, which Prometheus refuses).
pub struct Metrics {
    // The forwarder and the gossip group register after the server is up.
    registry: Mutex<Registry>,
    announced: Gauge,
    unservable: Gauge,
    members: Gauge,
    arp_answered: Family<InterfaceLabel, Counter>,
    ndp_answered: Family<InterfaceLabel, Counter>,
    gratuitous_sent: Family<InterfaceLabel, Counter>,
    malformed_frames: Family<InterfaceLabel, Counter>,
    announce_failures: Family<InterfaceLabel, Counter>,
    bgp_established: Family<PeerLabel, Gauge>,
    /// Read before each page: the kernel path's counters live in nftables.
    forwarder: Mutex<Option<crate::forwarder::metrics::Metrics>>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ironlb_speaker");
        let announced = Gauge::default();
        registry.register(
            "announced_addresses",
            "Addresses this node announces now",
            announced.clone(),
        );
        let unservable = Gauge::default();
        registry.register(
            "unservable_addresses",
            "Addresses this node may announce but cannot serve now (interface missing, down or without carrier, listener failed): it leaves them to other nodes",
            unservable.clone(),
        );
        let members = Gauge::default();
        registry.register(
            "members",
            "Speakers alive in the gossip group, this one included",
            members.clone(),
        );
        let bgp_established = Family::<PeerLabel, Gauge>::default();
        registry.register(
            "bgp_session_established",
            "1 while this node's BGP session with the BGPPeer is Established, else 0",
            bgp_established.clone(),
        );
        let family = |registry: &mut Registry, name: &str, help: &str| {
            let f = Family::<InterfaceLabel, Counter>::default();
            registry.register(name, help, f.clone());
            f
        };
        Self {
            arp_answered: family(&mut registry, "arp_answered", "ARP requests answered"),
            ndp_answered: family(
                &mut registry,
                "ndp_answered",
                "Neighbor Solicitations answered",
            ),
            gratuitous_sent: family(
                &mut registry,
                "gratuitous_sent",
                "Gratuitous ARP and unsolicited Neighbor Advertisements sent",
            ),
            malformed_frames: family(
                &mut registry,
                "malformed_frames",
                "ARP and NDP frames that could not be read",
            ),
            announce_failures: family(
                &mut registry,
                "announce_failures",
                "Times an announcer could not open its socket on an interface it should announce on",
            ),
            registry: Mutex::new(registry),
            bgp_established,
            announced,
            unservable,
            members,
            forwarder: Mutex::new(None),
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// The counters an announcer on `interface` updates: this interface's
    /// series (the same ones again when an announcer there is restarted).
    pub fn announcer_counters(&self, interface: &str) -> announcer::Counters {
        let label = InterfaceLabel {
            interface: interface.to_string(),
        };
        announcer::Counters {
            arp_answered: self.arp_answered.get_or_create(&label).clone(),
            ns_answered: self.ndp_answered.get_or_create(&label).clone(),
            gratuitous_sent: self.gratuitous_sent.get_or_create(&label).clone(),
            malformed: self.malformed_frames.get_or_create(&label).clone(),
        }
    }

    /// Counts a failure to announce on `interface`.
    pub fn announce_failed(&self, interface: &str) {
        self.announce_failures
            .get_or_create(&InterfaceLabel {
                interface: interface.to_string(),
            })
            .inc();
    }

    /// Exports the forwarder's metrics.
    pub fn register_forwarder(&self, m: &crate::forwarder::metrics::Metrics) {
        m.register(&mut self.registry.lock().expect("registry"));
        *self.forwarder.lock().expect("forwarder metrics") = Some(m.clone());
    }

    /// Exports the gossip group's counters.
    pub fn register_membership(&self, c: &membership::Counters) {
        let mut registry = self.registry.lock().expect("registry");
        registry.register(
            "gossip_bad_tag",
            "Gossip datagrams dropped for a wrong or missing tag",
            c.bad_tag.clone(),
        );
        registry.register(
            "gossip_replayed",
            "Authentic gossip datagrams dropped as replays (seen already, or sent too long ago)",
            c.replayed.clone(),
        );
        registry.register(
            "gossip_rejected",
            "Gossip datagrams the protocol refused",
            c.rejected.clone(),
        );
        registry.register(
            "membership_changes",
            "Changes of the gossip group seen",
            c.changes.clone(),
        );
    }

    /// Records how many addresses this node announces and cannot serve, and
    /// how many speakers live.
    pub fn observe(&self, announced: usize, unservable: usize, members: usize) {
        self.announced
            .set(i64::try_from(announced).unwrap_or(i64::MAX));
        self.unservable
            .set(i64::try_from(unservable).unwrap_or(i64::MAX));
        self.members.set(i64::try_from(members).unwrap_or(i64::MAX));
    }

    /// Records whether the session with `peer` is Established; `None`: the
    /// session is no longer configured (its series goes).
    pub fn bgp_session(&self, peer: &str, established: Option<bool>) {
        let label = PeerLabel { peer: peer.into() };
        match established {
            Some(up) => {
                self.bgp_established
                    .get_or_create(&label)
                    .set(i64::from(up));
            }
            None => {
                self.bgp_established.remove(&label);
            }
        }
    }

    /// Marks the speaker ready (it has settled into the group).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

impl crate::http::Endpoints for Metrics {
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn metrics(&self) -> Result<String, std::fmt::Error> {
        let forwarder = self.forwarder.lock().expect("forwarder metrics").clone();
        if let Some(f) = forwarder {
            f.read_kernel_counters();
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(
            &mut out,
            &self.registry.lock().expect("registry"),
        )?;
        Ok(out)
    }
}
