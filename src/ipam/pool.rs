//! Pools: their specs as the user wrote them, and the validated set the allocator
//! uses, with overlaps between pools resolved.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::net::IpAddr;

use super::range::{AddressRange, EntryError, Family, to_number};
use super::selector::LabelSelector;
use super::service::Service;

/// A pool as the user wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    /// The pool's name.
    pub name: String,
    /// Creation time in seconds since the epoch: when pools overlap, the older one
    /// is used and the newer one is not (after [`PoolSpec::established`]).
    pub created_at: i64,
    /// Whether the pool was accepted as it is now (its `Valid` condition is true
    /// for its current generation). When pools overlap, an established pool is
    /// used before one that is new or was just edited, so an edit can never
    /// take addresses away from a pool that was serving them, whatever the ages.
    pub established: bool,
    /// The entries: CIDRs, ranges, single addresses.
    pub addresses: Vec<String>,
    /// Whether Services that don't ask for this pool may get its addresses.
    pub auto_assign: bool,
    /// Skip IPv4 addresses ending in `.0` and `.255`.
    pub avoid_buggy_ips: bool,
    /// Which Services may use the pool, and its priority.
    pub allocation: Option<AllocationRules>,
    /// Namespaces whose Services may share this pool's addresses with each
    /// other; `None`: a Service shares only within its own namespace.
    pub cross_namespace: Option<NamespaceMatch>,
}

impl PoolSpec {
    /// A pool of `addresses` with `autoAssign` on: the start of a builder.
    pub fn new(name: &str, addresses: &[&str]) -> Self {
        Self {
            name: name.to_string(),
            created_at: 0,
            established: false,
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            allocation: None,
            cross_namespace: None,
        }
    }

    /// Lets Services of the matching namespaces share addresses with each other.
    pub fn cross_namespace(mut self, rule: NamespaceMatch) -> Self {
        self.cross_namespace = Some(rule);
        self
    }

    /// Sets `autoAssign`.
    pub fn auto_assign(mut self, on: bool) -> Self {
        self.auto_assign = on;
        self
    }

    /// Marks the pool as accepted in its current form.
    pub fn established(mut self, on: bool) -> Self {
        self.established = on;
        self
    }

    /// Sets `avoidBuggyIPs`.
    pub fn avoid_buggy_ips(mut self, on: bool) -> Self {
        self.avoid_buggy_ips = on;
        self
    }

    /// Sets `serviceAllocation`.
    pub fn allocation(mut self, rules: AllocationRules) -> Self {
        self.allocation = Some(rules);
        self
    }

    /// Sets the creation time.
    pub fn created_at(mut self, seconds: i64) -> Self {
        self.created_at = seconds;
        self
    }
}

/// A pool's `serviceAllocation`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocationRules {
    /// Lower is tried first; `None` after every number.
    pub priority: Option<i32>,
    /// Namespaces allowed by name.
    pub namespaces: Vec<String>,
    /// Namespaces allowed by their labels.
    pub namespace_selectors: Vec<LabelSelector>,
    /// Services allowed by their labels.
    pub service_selectors: Vec<LabelSelector>,
}

/// Namespaces by name or by their labels, as a pool names them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceMatch {
    /// Namespaces by name.
    pub namespaces: Vec<String>,
    /// Namespaces by their labels; an empty selector matches every namespace.
    pub namespace_selectors: Vec<LabelSelector>,
}

impl NamespaceMatch {
    /// Whether namespace `name` with `labels` is matched.
    pub fn matches(&self, name: &str, labels: &super::Labels) -> bool {
        in_namespaces(&self.namespaces, &self.namespace_selectors, name, labels)
    }
}

fn in_namespaces(
    names: &[String],
    selectors: &[LabelSelector],
    name: &str,
    labels: &super::Labels,
) -> bool {
    names.iter().any(|n| n == name) || selectors.iter().any(|s| s.matches(labels))
}

impl AllocationRules {
    /// Whether `svc` may use a pool with these rules; `Err` says why not.
    pub(crate) fn admits(&self, svc: &Service) -> Result<(), String> {
        let namespace_restricted =
            !self.namespaces.is_empty() || !self.namespace_selectors.is_empty();
        if namespace_restricted
            && !in_namespaces(
                &self.namespaces,
                &self.namespace_selectors,
                &svc.key.namespace,
                &svc.namespace_labels,
            )
        {
            return Err(format!(
                "namespace {} is not in its serviceAllocation.namespaces {:?} nor matched by its namespaceSelectors",
                svc.key.namespace, self.namespaces
            ));
        }
        if !self.service_selectors.is_empty()
            && !self
                .service_selectors
                .iter()
                .any(|s| s.matches(&svc.labels))
        {
            return Err(
                "the Service's labels match none of its serviceAllocation.serviceSelectors".into(),
            );
        }
        Ok(())
    }
}

/// Why a pool, or part of it, is not used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// An entry could not be read.
    #[error("pool {pool}: entry {entry:?}: {source}")]
    Entry {
        /// The pool.
        pool: String,
        /// The entry as written.
        entry: String,
        /// What is wrong with it.
        #[source]
        source: EntryError,
    },
    /// Two entries of one pool share addresses.
    #[error("pool {pool}: entries {first:?} and {second:?} overlap")]
    EntriesOverlap {
        /// The pool.
        pool: String,
        /// One entry.
        first: String,
        /// The other.
        second: String,
    },
    /// The pool shares addresses with a pool that came first (accepted before
    /// this pool's current form, or older), which keeps them.
    #[error(
        "pool {pool}: {range} overlaps {other_range} of pool {other}, which came first; \
         this pool is not used until the overlap is removed"
    )]
    Overlap {
        /// The pool that is not used.
        pool: String,
        /// Its overlapping range.
        range: AddressRange,
        /// The pool that came first.
        other: String,
        /// Its overlapping range.
        other_range: AddressRange,
    },
    /// The pool has no entries.
    #[error("pool {pool}: it has no addresses")]
    Empty {
        /// The pool.
        pool: String,
    },
}

impl PoolError {
    /// The pool the error is about.
    pub fn pool(&self) -> &str {
        match self {
            PoolError::Entry { pool, .. }
            | PoolError::EntriesOverlap { pool, .. }
            | PoolError::Overlap { pool, .. }
            | PoolError::Empty { pool } => pool,
        }
    }

    /// A CamelCase reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PoolError::Entry { .. } => "InvalidEntry",
            PoolError::EntriesOverlap { .. } => "EntriesOverlap",
            PoolError::Overlap { .. } => "OverlapsPool",
            PoolError::Empty { .. } => "NoAddresses",
        }
    }
}

/// A pool that passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pool {
    pub(crate) spec: PoolSpec,
    /// Sorted by family, then start; disjoint.
    pub(crate) ranges: Vec<AddressRange>,
}

impl Pool {
    pub(crate) fn name(&self) -> &str {
        &self.spec.name
    }

    pub(crate) fn has_family(&self, family: Family) -> bool {
        self.ranges.iter().any(|r| r.family() == family)
    }

    /// The order in which pools are tried for automatic assignment: pools with a
    /// `serviceAllocation` first, by priority (none last), then the rest; ties by
    /// name, so the choice is deterministic.
    pub(crate) fn auto_order(&self, other: &Pool) -> Ordering {
        let key = |p: &Pool| {
            (
                p.spec.allocation.is_none(),
                p.spec
                    .allocation
                    .as_ref()
                    .and_then(|a| a.priority)
                    .map_or((1, 0), |prio| (0, prio)),
            )
        };
        key(self)
            .cmp(&key(other))
            .then_with(|| self.name().cmp(other.name()))
    }

    pub(crate) fn admits(&self, svc: &Service) -> Result<(), String> {
        self.spec
            .allocation
            .as_ref()
            .map_or(Ok(()), |rules| rules.admits(svc))
    }
}

/// The pools in use, and an index from address to pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PoolSet {
    pub(crate) pools: BTreeMap<String, Pool>,
    /// Pools that are not used, with why.
    pub(crate) invalid: BTreeMap<String, PoolError>,
    /// (family, start) → (end, pool name), disjoint across all valid pools.
    index: BTreeMap<(Family, u128), (u128, String)>,
}

impl PoolSet {
    /// Validates `specs`. A pool with a bad entry is not used; of two overlapping
    /// pools the established one, then the older, then the one whose name sorts
    /// first is used, so neither adding a pool nor editing one can take
    /// addresses away from a pool already serving Services.
    pub(crate) fn build(specs: &[PoolSpec]) -> (Self, Vec<PoolError>) {
        let mut ordered: Vec<&PoolSpec> = specs.iter().collect();
        ordered.sort_by(|a, b| {
            (!a.established, a.created_at, &a.name).cmp(&(!b.established, b.created_at, &b.name))
        });
        let mut set = PoolSet::default();
        let mut errors = Vec::new();
        for spec in ordered {
            match set.admit(spec) {
                Ok(pool) => {
                    for r in &pool.ranges {
                        set.index.insert(
                            (r.family(), r.start_number()),
                            (r.end_number(), spec.name.clone()),
                        );
                    }
                    set.pools.insert(spec.name.clone(), pool);
                }
                Err(err) => {
                    set.invalid.insert(spec.name.clone(), err.clone());
                    errors.push(err);
                }
            }
        }
        (set, errors)
    }

    // Runs once per pool per configuration change; the error's size is irrelevant.
    #[allow(clippy::result_large_err)]
    fn admit(&self, spec: &PoolSpec) -> Result<Pool, PoolError> {
        if spec.addresses.is_empty() {
            return Err(PoolError::Empty {
                pool: spec.name.clone(),
            });
        }
        let mut ranges: Vec<(AddressRange, &str)> = Vec::with_capacity(spec.addresses.len());
        for entry in &spec.addresses {
            let range = AddressRange::parse(entry).map_err(|source| PoolError::Entry {
                pool: spec.name.clone(),
                entry: entry.clone(),
                source,
            })?;
            ranges.push((range, entry));
        }
        ranges.sort();
        for pair in ranges.windows(2) {
            if pair[0].0.overlaps(&pair[1].0) {
                return Err(PoolError::EntriesOverlap {
                    pool: spec.name.clone(),
                    first: pair[0].1.to_string(),
                    second: pair[1].1.to_string(),
                });
            }
        }
        for (range, _) in &ranges {
            if let Some((other_range, other)) = self.overlapping(range) {
                return Err(PoolError::Overlap {
                    pool: spec.name.clone(),
                    range: *range,
                    other: other.to_string(),
                    other_range,
                });
            }
        }
        Ok(Pool {
            spec: spec.clone(),
            ranges: ranges.into_iter().map(|(r, _)| r).collect(),
        })
    }

    /// The indexed range that overlaps `range`, if any. Indexed ranges are
    /// disjoint, so the one starting last at or before `range`'s end is the only
    /// candidate.
    fn overlapping(&self, range: &AddressRange) -> Option<(AddressRange, &str)> {
        let family = range.family();
        let ((_, start), (end, pool)) = self
            .index
            .range((family, 0)..=(family, range.end_number()))
            .next_back()?;
        let found = AddressRange::new(
            super::range::from_number(family, *start),
            super::range::from_number(family, *end),
        )
        .expect("indexed ranges are well-formed");
        found.overlaps(range).then_some((found, pool.as_str()))
    }

    /// The valid pool whose ranges hold `ip` (whether or not `ip` is allocatable).
    pub(crate) fn pool_of(&self, ip: IpAddr) -> Option<&Pool> {
        let (_, pool) = self.overlapping(&AddressRange::single(ip))?;
        self.pools.get(pool)
    }

    /// Whether `ip` may be handed out from its pool, i.e. is not a skipped
    /// `.0`/`.255` of an `avoidBuggyIPs` pool.
    pub(crate) fn allocatable_in(pool: &Pool, ip: IpAddr) -> bool {
        !(pool.spec.avoid_buggy_ips
            && Family::of(ip) == Family::V4
            && matches!(to_number(ip) & 0xff, 0x00 | 0xff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_entry_names_pool_and_entry() {
        let (set, errors) =
            PoolSet::build(&[PoolSpec::new("lan", &["10.0.0.0/24", "10.1.0.9/16"])]);
        assert!(set.pools.is_empty());
        assert_eq!(
            errors[0].to_string(),
            "pool lan: entry \"10.1.0.9/16\": host bits are set; did you mean 10.1.0.0/16 \
             (the whole network) or 10.1.0.9/32 (one address)?"
        );
        assert_eq!(errors[0].reason(), "InvalidEntry");
    }

    #[test]
    fn overlapping_entries_within_a_pool_are_named() {
        let (_, errors) = PoolSet::build(&[PoolSpec::new(
            "lan",
            &["10.0.0.0/24", "10.0.0.200-10.0.1.5"],
        )]);
        assert_eq!(
            errors,
            vec![PoolError::EntriesOverlap {
                pool: "lan".into(),
                first: "10.0.0.0/24".into(),
                second: "10.0.0.200-10.0.1.5".into()
            }]
        );
    }

    #[test]
    fn an_established_pool_keeps_its_addresses_against_an_older_edited_one() {
        // zz-old was edited to overlap aa-new, which was accepted as it is.
        let edited = PoolSpec::new("zz-old", &["10.0.0.0/24"]).created_at(100);
        let serving = PoolSpec::new("aa-new", &["10.0.0.128/25"])
            .created_at(200)
            .established(true);
        let (set, errors) = PoolSet::build(&[edited, serving]);
        assert!(set.pools.contains_key("aa-new") && !set.pools.contains_key("zz-old"));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].pool(), "zz-old");
        assert!(
            errors[0]
                .to_string()
                .contains("of pool aa-new, which came first"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn the_older_of_two_overlapping_pools_is_used_and_both_are_named() {
        let old = PoolSpec::new("zz-old", &["10.0.0.0/24"]).created_at(100);
        let new = PoolSpec::new("aa-new", &["fd00::/120", "10.0.0.128/25"]).created_at(200);
        let (set, errors) = PoolSet::build(&[new, old]);
        assert!(set.pools.contains_key("zz-old") && !set.pools.contains_key("aa-new"));
        assert_eq!(errors.len(), 1);
        let msg = errors[0].to_string();
        assert!(
            msg.starts_with(
                "pool aa-new: 10.0.0.128-10.0.0.255 overlaps 10.0.0.0-10.0.0.255 of pool zz-old"
            ),
            "{msg}"
        );
        assert_eq!(errors[0].reason(), "OverlapsPool");
    }

    #[test]
    fn equal_ages_fall_back_to_the_name() {
        let (set, errors) = PoolSet::build(&[
            PoolSpec::new("b", &["10.0.0.5"]),
            PoolSpec::new("a", &["10.0.0.0-10.0.0.9"]),
        ]);
        assert!(set.pools.contains_key("a"));
        assert_eq!(errors[0].pool(), "b");
    }

    #[test]
    fn adjacent_pools_and_pools_of_other_families_do_not_overlap() {
        let (set, errors) = PoolSet::build(&[
            PoolSpec::new("a", &["10.0.0.0/25"]),
            PoolSpec::new("b", &["10.0.0.128/25", "::a00:0/120"]),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            set.pool_of("10.0.0.127".parse().unwrap()).map(Pool::name),
            Some("a")
        );
        assert_eq!(
            set.pool_of("10.0.0.128".parse().unwrap()).map(Pool::name),
            Some("b")
        );
        assert_eq!(
            set.pool_of("10.0.1.0".parse().unwrap()).map(Pool::name),
            None
        );
    }

    #[test]
    fn a_pool_without_entries_is_refused() {
        let (_, errors) = PoolSet::build(&[PoolSpec::new("none", &[])]);
        assert_eq!(errors[0].to_string(), "pool none: it has no addresses");
    }

    #[test]
    fn auto_order_is_selected_by_priority_then_unprioritised_then_plain_pools() {
        let rules = |priority| AllocationRules {
            priority,
            ..Default::default()
        };
        let (set, _) = PoolSet::build(&[
            PoolSpec::new("plain-a", &["10.0.1.0/24"]),
            PoolSpec::new("no-prio", &["10.0.2.0/24"]).allocation(rules(None)),
            PoolSpec::new("prio-5", &["10.0.3.0/24"]).allocation(rules(Some(5))),
            PoolSpec::new("prio-1", &["10.0.4.0/24"]).allocation(rules(Some(1))),
            PoolSpec::new("prio-1b", &["10.0.5.0/24"]).allocation(rules(Some(1))),
        ]);
        let mut pools: Vec<&Pool> = set.pools.values().collect();
        pools.sort_by(|a, b| a.auto_order(b));
        let names: Vec<&str> = pools.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["prio-1", "prio-1b", "prio-5", "no-prio", "plain-a"]);
    }
}
