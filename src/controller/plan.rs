//! One pass of the controller, as a pure function: from a snapshot of the
//! cluster to the writes that make it right.
//!
//! The pass is level-based: it looks at every Service and pool each time and
//! never depends on having seen every event, so a missed or repeated event
//! costs nothing. It is O(n log n) in Services: each is allocated once (an
//! idempotent, logarithmic operation) and compared once with its status.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::api::annotations;
use crate::api::{CONDITION_VALID, IPAddressPool, IPAddressPoolStatus, POOL_FINALIZER};
use crate::ipam::{self, Allocator, Assignment, Labels, PoolSpec, ServiceKey};
use crate::k8s::translate::{self, NamespaceLabels};

/// The pool condition that lists addresses Services keep although the pool no
/// longer contains them (it shrank under them).
pub const CONDITION_ORPHANED: &str = "OrphanedAddresses";

/// What the controller sees: every Service, pool and Namespace.
pub struct Snapshot<'a> {
    /// All Services, of every type and class.
    pub services: Vec<&'a Service>,
    /// All pools.
    pub pools: Vec<&'a IPAddressPool>,
    /// Labels by Namespace name.
    pub namespaces: &'a NamespaceLabels,
    /// Serve Services without a `loadBalancerClass`.
    pub default_class: bool,
    /// The time to stamp on changed conditions.
    pub now: Time,
}

/// A write the pass wants done.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Set a Service's `status.loadBalancer.ingress` (empty: clear it).
    ServiceStatus {
        /// The Service.
        key: ServiceKey,
        /// The entries it should show.
        ingress: Vec<LoadBalancerIngress>,
    },
    /// Record an event on a Service.
    Event {
        /// The Service.
        key: ServiceKey,
        /// `Normal` (false) or `Warning` (true).
        warning: bool,
        /// CamelCase reason.
        reason: String,
        /// What happened, for a human.
        note: String,
    },
    /// Record on a Service which pool its addresses came from
    /// ([`annotations::ALLOCATED_FROM_POOL`]); `None` removes the record.
    ServicePool {
        /// The Service.
        key: ServiceKey,
        /// The pool.
        pool: Option<String>,
    },
    /// Add (`true`) or remove (`false`) [`POOL_FINALIZER`] on a pool.
    PoolFinalizer {
        /// The pool.
        name: String,
        /// Add or remove.
        add: bool,
    },
    /// Record a warning event on a pool.
    PoolEvent {
        /// The pool.
        name: String,
        /// CamelCase reason.
        reason: String,
        /// What happened, for a human.
        note: String,
    },
    /// Set a pool's status.
    PoolStatus {
        /// The pool.
        name: String,
        /// Its new status.
        status: IPAddressPoolStatus,
    },
}

/// Counts a pass produces, for metrics and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Services holding at least one address.
    pub assigned_services: usize,
    /// Allocation failures this pass, by reason.
    pub errors: BTreeMap<&'static str, usize>,
}

/// The controller's memory between passes. Everything in it can be rebuilt from
/// the cluster: a new `Planner` restores the allocator from Service status on its
/// first pass.
#[derive(Default)]
pub struct Planner {
    allocator: Allocator,
    pool_specs: Option<Vec<PoolSpec>>,
    restored: bool,
    /// The last event sent per Service, so a pass repeats none.
    last_event: BTreeMap<ServiceKey, (String, String)>,
    /// For addresses that fell out of their pool: the pool they were in.
    orphan_origin: BTreeMap<IpAddr, String>,
    /// The last event sent per terminating pool.
    last_pool_event: BTreeMap<String, String>,
}

/// A Service, and what it asks the allocator for (or why that cannot be read).
type Requested<'a> = (
    &'a Service,
    Result<translate::Request, translate::FieldError>,
);

/// The eligible Services, oldest first (so they win ties and get the lower
/// addresses), each with its request.
fn requests<'a>(snap: &Snapshot<'a>) -> Vec<Requested<'a>> {
    let mut eligible: Vec<&Service> = snap
        .services
        .iter()
        .copied()
        .filter(|s| translate::is_eligible(s, snap.default_class))
        .collect();
    eligible.sort_by_cached_key(|s| {
        (
            translate::seconds(s.metadata.creation_timestamp.as_ref()),
            translate::service_key(s),
        )
    });
    let no_labels = Labels::new();
    eligible
        .into_iter()
        .map(|s| {
            let ns_labels = snap
                .namespaces
                .get(s.namespace().as_deref().unwrap_or_default())
                .unwrap_or(&no_labels);
            (s, translate::request(s, ns_labels))
        })
        .collect()
}

impl Planner {
    /// The allocator's state, for metrics.
    pub fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    /// Computes the writes for `snap`, updating the allocator.
    pub fn plan(&mut self, snap: &Snapshot<'_>) -> (Vec<Action>, Outcome) {
        let mut actions = Vec::new();
        let mut outcome = Outcome::default();
        let translation_errors = self.update_pools(snap);
        let requests = requests(snap);
        if !self.restored {
            self.restore(&requests, &mut actions);
            self.restored = true;
        }
        self.adopt(&requests, &mut actions);
        let seen = self.allocate(&requests, &mut actions, &mut outcome);
        self.release_gone(snap, &seen, &mut actions);
        let holders: BTreeMap<String, Vec<(ServiceKey, IpAddr)>> = snap
            .pools
            .iter()
            .map(|p| (p.name_any(), holders(snap, p)))
            .collect();
        actions.extend(self.pool_statuses(snap, &translation_errors, &holders));
        actions.extend(self.pool_lifecycle(snap, &holders));
        (actions, outcome)
    }

    /// A Service that shows addresses this planner does not know of got
    /// them from another replica (one that led while this one stood by or
    /// was paused): adopt them, never hand out others.
    fn adopt(&mut self, requests: &[Requested<'_>], actions: &mut Vec<Action>) {
        let strangers: Vec<(ipam::Service, Vec<IpAddr>)> = requests
            .iter()
            .filter_map(|(svc, request)| {
                let r = request.as_ref().ok()?;
                let shown = translate::status_addresses(svc);
                (!shown.is_empty() && self.allocator.assignment(&r.service.key).is_none())
                    .then(|| (r.service.clone(), shown))
            })
            .collect();
        for result in self
            .allocator
            .restore(strangers.iter().map(|(s, a)| (s, a.as_slice())))
        {
            if let Err(e) = result {
                self.event(actions, &e.service, true, e.kind.reason(), e.to_string());
            }
        }
    }

    /// Allocates for each Service in turn (oldest first), with the status,
    /// pool annotation and events that follow; returns the Services seen.
    fn allocate(
        &mut self,
        requests: &[Requested<'_>],
        actions: &mut Vec<Action>,
        outcome: &mut Outcome,
    ) -> BTreeSet<ServiceKey> {
        let mut seen = BTreeSet::new();
        for (svc, request) in requests {
            let key = translate::service_key(svc);
            seen.insert(key.clone());
            let (result, forwarding) = match request {
                Ok(r) => (
                    self.allocator
                        .allocate(&r.service)
                        .map_err(|e| (e.kind.reason(), e.to_string())),
                    Some(r.forwarding),
                ),
                // Leave address and status as they are: a typo in an annotation
                // must cost neither the address nor its ipMode.
                Err(e) => (Err((e.reason(), e.to_string())), None),
            };
            let held = self.allocator.assignment(&key);
            let mut changed = false;
            if let Some(forwarding) = forwarding {
                let addresses = held
                    .as_ref()
                    .map(|a| a.addresses.as_slice())
                    .unwrap_or_default();
                let desired = translate::ingress(addresses, forwarding);
                changed = !same_ingress(&translate::current_ingress(svc), &desired);
                if changed {
                    actions.push(Action::ServiceStatus {
                        key: key.clone(),
                        ingress: desired,
                    });
                }
            }
            match &result {
                Err((reason, message)) => {
                    *outcome.errors.entry(reason).or_default() += 1;
                    self.event(actions, &key, true, reason, message.clone());
                }
                Ok(a) if !a.orphaned.is_empty() => {
                    let note = self.orphan_note(a);
                    self.event(actions, &key, true, "AddressOutsidePool", note);
                }
                // Announce an address when it appears in the status, not on every
                // restart of the controller.
                Ok(a) if changed && !a.addresses.is_empty() => {
                    let note = match &a.pool {
                        Some(pool) => {
                            format!(
                                "Assigned {} from IPAddressPool {pool}",
                                translate::join(&a.addresses, ", ")
                            )
                        }
                        None => format!("Assigned {}", translate::join(&a.addresses, ", ")),
                    };
                    self.event(actions, &key, false, "IPAllocated", note);
                }
                Ok(_) => {}
            }
            if let Some(pool) = held.as_ref().and_then(|a| a.pool.as_ref())
                && svc.annotations().get(annotations::ALLOCATED_FROM_POOL) != Some(pool)
            {
                actions.push(Action::ServicePool {
                    key: key.clone(),
                    pool: Some(pool.clone()),
                });
            }
            if held.is_some() {
                outcome.assigned_services += 1;
            }
        }
        seen
    }

    /// Services gone, no longer LoadBalancer, or of another class: release,
    /// and clear the status of those still there.
    fn release_gone(
        &mut self,
        snap: &Snapshot<'_>,
        seen: &BTreeSet<ServiceKey>,
        actions: &mut Vec<Action>,
    ) {
        let by_key: BTreeMap<ServiceKey, &Service> = snap
            .services
            .iter()
            .map(|s| (translate::service_key(s), *s))
            .collect();
        let gone: Vec<ServiceKey> = self
            .allocator
            .assignments()
            .map(|(k, _)| k.clone())
            .filter(|k| !seen.contains(k))
            .collect();
        for key in gone {
            let released = self.allocator.release(&key);
            self.last_event.remove(&key);
            if let Some(svc) = by_key.get(&key) {
                let shows_ours = translate::status_addresses(svc)
                    .iter()
                    .any(|ip| released.contains(ip));
                if shows_ours {
                    actions.push(Action::ServiceStatus {
                        key: key.clone(),
                        ingress: Vec::new(),
                    });
                }
                if svc
                    .annotations()
                    .contains_key(annotations::ALLOCATED_FROM_POOL)
                {
                    actions.push(Action::ServicePool {
                        key: key.clone(),
                        pool: None,
                    });
                }
            }
        }
        self.last_event.retain(|k, _| seen.contains(k));
        let held: BTreeSet<IpAddr> = self
            .allocator
            .assignments()
            .flat_map(|(_, a)| a.iter().copied())
            .collect();
        self.orphan_origin.retain(|ip, _| held.contains(ip));
    }

    /// Keeps [`POOL_FINALIZER`] on the pools some Service holds an address of,
    /// and only on those: a deleted pool in use stays (and says who holds it)
    /// until the last holder lets go, while an unused pool — or every pool,
    /// once its Services are gone, when ironlb is uninstalled — is deleted at
    /// once.
    fn pool_lifecycle(
        &mut self,
        snap: &Snapshot<'_>,
        held: &BTreeMap<String, Vec<(ServiceKey, IpAddr)>>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        for pool in &snap.pools {
            let name = pool.name_any();
            let protected = pool.finalizers().iter().any(|f| f == POOL_FINALIZER);
            let holders = held.get(&name).map_or(&[][..], Vec::as_slice);
            // What this pass hands out counts too, before any status shows it:
            // otherwise a pool deleted right after its first allocation would
            // go unprotected.
            let handing_out = self
                .allocator
                .usage(&name)
                .is_some_and(|u| u.v4.assigned > 0 || u.v6.assigned > 0);
            if holders.is_empty() && !handing_out {
                self.last_pool_event.remove(&name);
                if protected {
                    actions.push(Action::PoolFinalizer { name, add: false });
                }
                continue;
            }
            if !translate::is_terminating(pool) {
                if !protected {
                    actions.push(Action::PoolFinalizer { name, add: true });
                }
                continue;
            }
            // Events about a cluster-scoped object land in `default`, which
            // tenants may read: they count the Services, the pool's condition
            // (readable by whoever may read pools) names them.
            let note = format!(
                "IPAddressPool {name} is being deleted, but {} Service(s) still hold its addresses \
                 (its Valid condition names them): they keep answering, and the pool goes once \
                 the last of these Services is deleted or stops being a LoadBalancer",
                holders.len()
            );
            if self.last_pool_event.get(&name) != Some(&note) {
                self.last_pool_event.insert(name.clone(), note.clone());
                actions.push(Action::PoolEvent {
                    name,
                    reason: "PoolInUse".into(),
                    note,
                });
            }
        }
        self.last_pool_event
            .retain(|name, _| snap.pools.iter().any(|p| p.name_any() == *name));
        actions
    }

    /// Hands the pools to the allocator when they changed, remembering which
    /// pool each address was in so an address a pool loses can be traced to it.
    fn update_pools(&mut self, snap: &Snapshot<'_>) -> BTreeMap<String, String> {
        let mut specs = Vec::new();
        let mut errors = BTreeMap::new();
        // A pool being deleted hands out nothing more; what its Services hold
        // they keep (as addresses outside every pool), and speakers still
        // announce them by the Services' records.
        for pool in snap.pools.iter().filter(|p| !translate::is_terminating(p)) {
            match translate::pool_spec(pool) {
                Ok(spec) => specs.push(spec),
                Err(e) => {
                    errors.insert(pool.name_any(), e);
                }
            }
        }
        if self.pool_specs.as_ref() != Some(&specs) {
            let before: Vec<(IpAddr, String)> = self
                .allocator
                .assignments()
                .flat_map(|(_, a)| a.iter().copied())
                .filter_map(|ip| Some((ip, self.allocator.pool_of(ip)?.to_string())))
                .collect();
            self.allocator.set_pools(&specs);
            for (ip, pool) in before {
                if self.allocator.pool_of(ip).is_none() {
                    self.orphan_origin.insert(ip, pool);
                }
            }
            self.orphan_origin
                .retain(|ip, _| self.allocator.pool_of(*ip).is_none());
            self.pool_specs = Some(specs);
        }
        errors
    }

    /// Loads every address already in an eligible Service's status, before any
    /// allocation, so a restarted controller moves nothing.
    fn restore(&mut self, requests: &[Requested<'_>], actions: &mut Vec<Action>) {
        let recorded: Vec<(ipam::Service, Vec<IpAddr>)> = requests
            .iter()
            .filter_map(|(svc, request)| {
                let addresses = translate::status_addresses(svc);
                if addresses.is_empty() {
                    return None;
                }
                let service = match request {
                    Ok(r) => r.service.clone(),
                    // Unreadable annotations: keep the address under a claim that
                    // shares with nobody until the user fixes them.
                    Err(_) => {
                        let key = translate::service_key(svc);
                        ipam::Service::new(&key.namespace, &key.name).created_at(
                            translate::seconds(svc.metadata.creation_timestamp.as_ref()),
                        )
                    }
                };
                Some((service, addresses))
            })
            .collect();
        let results = self
            .allocator
            .restore(recorded.iter().map(|(s, a)| (s, a.as_slice())));
        for result in results {
            if let Err(e) = result {
                self.event(actions, &e.service, true, e.kind.reason(), e.to_string());
            }
        }
    }

    fn orphan_note(&self, a: &Assignment) -> String {
        let list: Vec<String> = a
            .orphaned
            .iter()
            .map(|ip| match self.orphan_origin.get(ip) {
                Some(pool) => format!("{ip} (was in IPAddressPool {pool})"),
                None => ip.to_string(),
            })
            .collect();
        format!(
            "{} no longer in any IPAddressPool; the Service keeps it. Put it back into a pool, or \
             remove the Service's address request to have it moved",
            if list.len() == 1 {
                format!("{} is", list[0])
            } else {
                format!("{} are", list.join(", "))
            }
        )
    }

    fn event(
        &mut self,
        actions: &mut Vec<Action>,
        key: &ServiceKey,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let last = (reason.to_string(), note.clone());
        if self.last_event.get(key) == Some(&last) {
            return;
        }
        self.last_event.insert(key.clone(), last);
        actions.push(Action::Event {
            key: key.clone(),
            warning,
            reason: reason.to_string(),
            note,
        });
    }

    fn pool_statuses(
        &self,
        snap: &Snapshot<'_>,
        translation_errors: &BTreeMap<String, String>,
        held: &BTreeMap<String, Vec<(ServiceKey, IpAddr)>>,
    ) -> Vec<Action> {
        let pool_errors: BTreeMap<&str, &ipam::PoolError> = self
            .allocator
            .pool_errors()
            .map(|e| (e.pool(), e))
            .collect();
        let mut orphans_by_pool: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (key, addresses) in self.allocator.assignments() {
            for ip in addresses {
                if let Some(pool) = self.orphan_origin.get(ip) {
                    orphans_by_pool
                        .entry(pool)
                        .or_default()
                        .push(format!("{ip} ({key})"));
                }
            }
        }
        let mut actions = Vec::new();
        for pool in &snap.pools {
            let name = pool.name_any();
            let previous = pool.status.clone().unwrap_or_default();
            let mut status = IPAddressPoolStatus::default();
            let (valid, reason, message) = if translate::is_terminating(pool) {
                let holders = held.get(&name).map_or(&[][..], Vec::as_slice);
                let message = if holders.is_empty() {
                    "being deleted; no Service holds its addresses".to_string()
                } else {
                    format!(
                        "being deleted; held by {}: it goes once they let go",
                        list_holders(holders)
                    )
                };
                ("False", "Terminating", message)
            } else if let Some(e) = translation_errors.get(&name) {
                ("False", "InvalidSelector", e.clone())
            } else if let Some(e) = pool_errors.get(name.as_str()) {
                ("False", e.reason(), e.to_string())
            } else {
                ("True", "Accepted", "the pool is in use".to_string())
            };
            if let Some(usage) = self.allocator.usage(&name) {
                status.assigned_ipv4 = u64::try_from(usage.v4.assigned).unwrap_or(u64::MAX);
                status.available_ipv4 = u64::try_from(usage.v4.available).unwrap_or(u64::MAX);
                status.assigned_ipv6 = u64::try_from(usage.v6.assigned).unwrap_or(u64::MAX);
                status.available_ipv6 = usage.v6.available.to_string();
            } else {
                status.available_ipv6 = "0".into();
            }
            status.conditions.push(condition(
                &previous,
                pool.metadata.generation,
                CONDITION_VALID,
                valid,
                reason,
                message,
                snap,
            ));
            if let Some(list) = orphans_by_pool.get(name.as_str()) {
                let message = format!(
                    "Services keep addresses this pool no longer contains: {}",
                    list.join(", ")
                );
                status.conditions.push(condition(
                    &previous,
                    pool.metadata.generation,
                    CONDITION_ORPHANED,
                    "True",
                    "AddressesOutsidePool",
                    message,
                    snap,
                ));
            }
            if status != previous {
                actions.push(Action::PoolStatus { name, status });
            }
        }
        actions
    }
}

/// The Services (eligible ones, with their addresses) that hold an address of
/// `pool`: recorded as coming from it, or, with no record, inside its entries.
fn holders(snap: &Snapshot<'_>, pool: &IPAddressPool) -> Vec<(ServiceKey, IpAddr)> {
    let name = pool.name_any();
    let mut out = Vec::new();
    for svc in &snap.services {
        if !translate::is_eligible(svc, snap.default_class) {
            continue;
        }
        let recorded = translate::recorded_pool(svc);
        for ip in translate::status_addresses(svc) {
            let from_pool = match recorded {
                Some(p) => p == name,
                None => translate::pool_contains(pool, ip),
            };
            if from_pool {
                out.push((translate::service_key(svc), ip));
            }
        }
    }
    out.sort();
    out
}

fn list_holders(holders: &[(ServiceKey, IpAddr)]) -> String {
    let list: Vec<String> = holders
        .iter()
        .map(|(key, ip)| format!("{key} ({ip})"))
        .collect();
    list.join(", ")
}

/// A condition for the pool's `generation`, keeping the previous transition
/// time when its status is unchanged.
fn condition(
    previous: &IPAddressPoolStatus,
    generation: Option<i64>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    snap: &Snapshot<'_>,
) -> Condition {
    let last_transition_time = previous
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| snap.now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

fn same_ingress(a: &[LoadBalancerIngress], b: &[LoadBalancerIngress]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.ip == y.ip && x.ip_mode == y.ip_mode && x.hostname == y.hostname)
}

#[cfg(test)]
mod tests {
    //! The planner's rules for pools changing under their Services, as tables
    //! of snapshots and the writes they call for.

    use super::*;
    use crate::testkit::{self, Svc};
    use k8s_openapi::jiff::Timestamp;

    fn service(name: &str, shows: Option<&str>, recorded: Option<&str>) -> Service {
        let mut svc = Svc::new("default", name).port("", 80, "TCP");
        if let Some(pool) = recorded {
            svc = svc.annotation(annotations::ALLOCATED_FROM_POOL, pool);
        }
        if let Some(ip) = shows {
            svc = svc.ingress(ip);
        }
        svc.build()
    }

    fn pool(name: &str, addresses: &str, finalized: bool, terminating: bool) -> IPAddressPool {
        let mut p = testkit::pool(name, &[addresses]);
        p.metadata.generation = Some(1);
        if finalized {
            p.metadata.finalizers = Some(vec![POOL_FINALIZER.into()]);
        }
        if terminating {
            p.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        }
        p
    }

    fn plan(planner: &mut Planner, services: &[Service], pools: &[IPAddressPool]) -> Vec<Action> {
        let namespaces = NamespaceLabels::new();
        planner
            .plan(&Snapshot {
                services: services.iter().collect(),
                pools: pools.iter().collect(),
                namespaces: &namespaces,
                default_class: true,
                now: Time(Timestamp::UNIX_EPOCH),
            })
            .0
    }

    fn finalizer(actions: &[Action]) -> Option<bool> {
        actions.iter().find_map(|a| match a {
            Action::PoolFinalizer { add, .. } => Some(*add),
            _ => None,
        })
    }

    fn record(actions: &[Action]) -> Option<Option<String>> {
        actions.iter().find_map(|a| match a {
            Action::ServicePool { pool, .. } => Some(pool.clone()),
            _ => None,
        })
    }

    /// Services, whether the pool has its finalizer and is being deleted; the
    /// finalizer write (add or remove) and the record write expected.
    type Row<'a> = (
        &'a [Service],
        bool,
        bool,
        Option<bool>,
        Option<Option<String>>,
    );

    #[test]
    fn the_finalizer_follows_use_and_the_record_follows_the_address() {
        let table: &[Row] = &[
            // A new Service: address, record, protection.
            (
                &[service("web", None, None)],
                false,
                false,
                Some(true),
                Some(Some("lan".into())),
            ),
            // Recorded and protected already: nothing to write.
            (
                &[service("web", Some("10.0.0.0"), Some("lan"))],
                true,
                false,
                None,
                None,
            ),
            // Unused pool: no protection; an unused protected pool loses it.
            (&[], false, false, None, None),
            (&[], true, false, Some(false), None),
            // Deleted while held: keeps its finalizer; released: lets go.
            (
                &[service("web", Some("10.0.0.0"), Some("lan"))],
                true,
                true,
                None,
                None,
            ),
            (&[], true, true, Some(false), None),
        ];
        for (i, (services, finalized, terminating, want_finalizer, want_record)) in
            table.iter().enumerate()
        {
            let mut planner = Planner::default();
            let pools = [pool("lan", "10.0.0.0/30", *finalized, *terminating)];
            let actions = plan(&mut planner, services, &pools);
            assert_eq!(finalizer(&actions), *want_finalizer, "row {i}: {actions:?}");
            assert_eq!(record(&actions), *want_record, "row {i}: {actions:?}");
        }
    }

    #[test]
    fn a_terminating_pool_in_use_warns_once_and_hands_out_nothing() {
        let mut planner = Planner::default();
        let pools = [pool("lan", "10.0.0.0/30", true, true)];
        let held = service("web", Some("10.0.0.0"), Some("lan"));
        let services = [held.clone(), service("late", None, None)];
        let first = plan(&mut planner, &services, &pools);
        let events: Vec<&Action> = first
            .iter()
            .filter(|a| matches!(a, Action::PoolEvent { .. }))
            .collect();
        assert_eq!(events.len(), 1, "{first:?}");
        assert!(
            !first.iter().any(|a| matches!(a,
                Action::ServiceStatus { key, ingress } if key.name == "late" && !ingress.is_empty())),
            "nothing is handed out of a pool being deleted: {first:?}"
        );
        assert!(
            !first
                .iter()
                .any(|a| matches!(a, Action::ServiceStatus { key, .. } if key.name == "web")),
            "web keeps its address: {first:?}"
        );
        let again = plan(&mut planner, &services, &pools);
        assert!(
            !again.iter().any(|a| matches!(a, Action::PoolEvent { .. })),
            "the same holders are not announced twice: {again:?}"
        );
    }

    #[test]
    fn an_address_another_replica_handed_out_is_adopted_not_replaced() {
        let mut planner = Planner::default();
        let pools = [pool("lan", "10.0.0.0/30", true, false)];
        // This replica has planned before (so its restore is done), without web.
        plan(&mut planner, &[], &pools);
        // The other replica gave web .2 meanwhile.
        let web = service("web", Some("10.0.0.2"), Some("lan"));
        let actions = plan(&mut planner, std::slice::from_ref(&web), &pools);
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::ServiceStatus { .. })),
            "web keeps 10.0.0.2: {actions:?}"
        );
        let next = plan(&mut planner, &[web, service("new", None, None)], &pools);
        let given = next.iter().find_map(|a| match a {
            Action::ServiceStatus { key, ingress } if key.name == "new" => ingress[0].ip.clone(),
            _ => None,
        });
        assert_eq!(
            given.as_deref(),
            Some("10.0.0.0"),
            "and .2 is not handed out again"
        );
    }
}
