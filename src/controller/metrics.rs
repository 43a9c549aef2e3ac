//! The controller's Prometheus metrics and readiness.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ipam::Allocator;

/// Labels of the per-pool address gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// The pool.
    pub pool: String,
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// `assigned` or `available`.
    pub state: &'static str,
}

/// Labels of the allocation-error counter and the pending-Services gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The event reason in snake_case, e.g. `pool_exhausted`.
    pub reason: String,
}

/// Everything the controller exports, plus readiness.
pub struct Metrics {
    registry: Registry,
    addresses: Family<PoolLabels, Gauge<f64, AtomicU64>>,
    allocation_errors: Family<ReasonLabels, Counter>,
    pending: Family<ReasonLabels, Gauge>,
    reconcile_seconds: Histogram,
    leader: Gauge,
    ready: AtomicBool,
    passes: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ironlb_controller");
        let addresses = Family::<PoolLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "pool_addresses",
            "Addresses per pool, family and state (assigned or available)",
            addresses.clone(),
        );
        let allocation_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "allocation_errors",
            "Failures to give a Service what it asked for, by reason: each counted once, when its warning event is sent",
            allocation_errors.clone(),
        );
        let pending = Family::<ReasonLabels, Gauge>::default();
        registry.register(
            "services_pending",
            "Services whose request cannot be met now, by reason (most have no address)",
            pending.clone(),
        );
        let reconcile_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "reconcile_duration_seconds",
            "Time to plan and apply one pass over every Service",
            reconcile_seconds.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica is the active controller",
            leader.clone(),
        );
        Self {
            registry,
            addresses,
            allocation_errors,
            pending,
            reconcile_seconds,
            leader,
            ready: AtomicBool::new(false),
            passes: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Records the pools' usage after a pass.
    pub fn observe_pools(&self, allocator: &Allocator, pools: &[String]) {
        self.addresses.clear();
        for pool in pools {
            let Some(usage) = allocator.usage(pool) else {
                continue;
            };
            for (family, u) in [("ipv4", usage.v4), ("ipv6", usage.v6)] {
                for (state, n) in [("assigned", u.assigned), ("available", u.available)] {
                    self.addresses
                        .get_or_create(&PoolLabels {
                            pool: pool.clone(),
                            family,
                            state,
                        })
                        .set(n as f64);
                }
            }
        }
    }

    /// Counts a failure whose warning event a pass sends (each once, not once
    /// per pass while it lasts).
    pub fn count_failure(&self, reason: &str) {
        self.allocation_errors
            .get_or_create(&ReasonLabels {
                reason: crate::http::snake_case(reason),
            })
            .inc();
    }

    /// Sets how many Services wait, by reason, after a pass.
    pub fn observe_pending<'a>(
        &self,
        pending: impl IntoIterator<Item = (&'a &'static str, &'a usize)>,
    ) {
        self.pending.clear();
        for (reason, n) in pending {
            self.pending
                .get_or_create(&ReasonLabels {
                    reason: crate::http::snake_case(reason),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// Records how long a pass took.
    pub fn observe_pass(&self, seconds: f64) {
        self.reconcile_seconds.observe(seconds);
        self.passes.fetch_add(1, Ordering::AcqRel);
    }

    /// How many passes have completed.
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Acquire)
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Marks this replica as leader or standby.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Marks the controller ready: connected, and either leading with synced
    /// caches or waiting as a standby.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl crate::http::Endpoints for Metrics {
    fn ready(&self) -> bool {
        self.is_ready()
    }

    fn metrics(&self) -> Result<String, std::fmt::Error> {
        self.render()
    }
}
