//! The speaker's metrics: what it announces, what it answered, the group.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::l2::announcer;
use crate::membership;

/// Everything a speaker exports, plus readiness.
pub struct Metrics {
    // Announcers appear as interfaces are first used, so registration happens
    // after the server is up.
    registry: Mutex<Registry>,
    announced: Gauge,
    members: Gauge,
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
        let members = Gauge::default();
        registry.register(
            "members",
            "Speakers alive in the gossip group, this one included",
            members.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            announced,
            members,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Exports an announcer's counters under its interface's name.
    pub fn register_announcer(&self, interface: &str, c: &announcer::Counters) {
        let mut registry = self.registry.lock().expect("registry");
        let sub =
            registry.sub_registry_with_label(("interface".into(), interface.to_string().into()));
        sub.register(
            "arp_answered",
            "ARP requests answered",
            c.arp_answered.clone(),
        );
        sub.register(
            "ndp_answered",
            "Neighbor Solicitations answered",
            c.ns_answered.clone(),
        );
        sub.register(
            "gratuitous_sent",
            "Gratuitous ARP and unsolicited Neighbor Advertisements sent",
            c.gratuitous_sent.clone(),
        );
        sub.register(
            "malformed_frames",
            "ARP and NDP frames that could not be read",
            c.malformed.clone(),
        );
    }

    /// Exports the forwarder's metrics.
    pub fn register_forwarder(&self, m: &crate::forwarder::metrics::Metrics) {
        m.register(&mut self.registry.lock().expect("registry"));
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

    /// Records how many addresses this node announces and how many speakers live.
    pub fn observe(&self, announced: usize, members: usize) {
        self.announced
            .set(i64::try_from(announced).unwrap_or(i64::MAX));
        self.members.set(i64::try_from(members).unwrap_or(i64::MAX));
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
        let mut out = String::new();
        prometheus_client::encoding::text::encode(
            &mut out,
            &self.registry.lock().expect("registry"),
        )?;
        Ok(out)
    }
}
