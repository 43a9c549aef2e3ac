//! The allocator: an in-memory state machine from Services to addresses.
//!
//! Every change goes through [`Allocator::allocate`], [`Allocator::release`],
//! [`Allocator::restore`] or [`Allocator::set_pools`], and each keeps one
//! invariant: all holders of an address are pairwise allowed to share it. A
//! Service whose own request changed so that it may no longer share is the one
//! that moves; the others keep their address.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use super::free::FreeSet;
use super::pool::{Pool, PoolError, PoolSet, PoolSpec};
use super::range::{Family, to_number};
use super::service::{
    Claim, FamilyPolicy, Holder, Service, ServiceKey, SharingRefusal, check_sharing,
};

/// The addresses a Service holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The addresses, primary family first.
    pub addresses: Vec<IpAddr>,
    /// The pool they come from; `None` when none of them lies in a pool any more.
    pub pool: Option<String>,
    /// Addresses no pool holds any more (the pool shrank or went away). They are
    /// kept, never silently moved; the user decides.
    pub orphaned: Vec<IpAddr>,
}

/// A Service that could not get (all of) what it asked for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("service {service}: {kind}")]
pub struct AllocError {
    /// The Service.
    pub service: ServiceKey,
    /// What went wrong.
    pub kind: AllocErrorKind,
}

/// What went wrong for one Service.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocErrorKind {
    /// No pool with `autoAssign` admits the Service.
    #[error("no IPAddressPool with autoAssign serves this Service")]
    NoMatchingPool,
    /// Pools admit the Service, but none has the family it needs.
    #[error("no IPAddressPool that serves this Service has {needed} addresses (tried {tried})")]
    NoPoolForFamily {
        /// What the Service needs, e.g. "IPv6" or "both IPv4 and IPv6".
        needed: String,
        /// The pools tried, comma-separated.
        tried: String,
    },
    /// Every pool that could serve the Service is full.
    #[error("every IPAddressPool that serves this Service is exhausted (tried {tried})")]
    Exhausted {
        /// The pools tried, comma-separated.
        tried: String,
    },
    /// The requested pool does not exist.
    #[error("the requested IPAddressPool {pool} does not exist")]
    UnknownPool {
        /// The pool named.
        pool: String,
    },
    /// The requested pool exists but is not used.
    #[error("the requested IPAddressPool {pool} is not usable: {reason}")]
    InvalidPool {
        /// The pool named.
        pool: String,
        /// The pool's error.
        reason: String,
    },
    /// The pool's `serviceAllocation` does not admit the Service.
    #[error("IPAddressPool {pool} does not serve this Service: {why}")]
    PoolNotAllowed {
        /// The pool.
        pool: String,
        /// Which rule fails.
        why: String,
    },
    /// The named pool has no free address of a needed family.
    #[error("IPAddressPool {pool} has no free {family} address")]
    PoolExhausted {
        /// The pool.
        pool: String,
        /// The family.
        family: Family,
    },
    /// The named pool has no range of a needed family.
    #[error("IPAddressPool {pool} has no {family} addresses")]
    PoolLacksFamily {
        /// The pool.
        pool: String,
        /// The family.
        family: Family,
    },
    /// A requested address is in no pool.
    #[error("the requested address {address} is not in any IPAddressPool")]
    NotInAnyPool {
        /// The address.
        address: IpAddr,
    },
    /// A requested address is in another pool than the requested one.
    #[error(
        "the requested address {address} is in IPAddressPool {actual}, not in the requested {requested}"
    )]
    NotInRequestedPool {
        /// The address.
        address: IpAddr,
        /// Its pool.
        actual: String,
        /// The pool asked for.
        requested: String,
    },
    /// Requested addresses lie in different pools.
    #[error(
        "the requested addresses {first} ({first_pool}) and {second} ({second_pool}) are in different \
         IPAddressPools; a Service's addresses come from one pool"
    )]
    DifferentPools {
        /// One address.
        first: IpAddr,
        /// Its pool.
        first_pool: String,
        /// The other.
        second: IpAddr,
        /// Its pool.
        second_pool: String,
    },
    /// A requested address is skipped by its pool's `avoidBuggyIPs`.
    #[error(
        "the requested address {address} ends in .0 or .255, which IPAddressPool {pool} avoids (avoidBuggyIPs)"
    )]
    BuggyAddress {
        /// The address.
        address: IpAddr,
        /// Its pool.
        pool: String,
    },
    /// Two requested addresses of one family.
    #[error(
        "the requested addresses {first} and {second} are both {family}; ask for at most one per family"
    )]
    TwoOfOneFamily {
        /// One address.
        first: IpAddr,
        /// The other.
        second: IpAddr,
        /// Their family.
        family: Family,
    },
    /// A requested address of a family the Service doesn't have.
    #[error(
        "the requested address {address} is {family}, which is not among the Service's ipFamilies"
    )]
    FamilyNotInService {
        /// The address.
        address: IpAddr,
        /// Its family.
        family: Family,
    },
    /// `RequireDualStack` without two families, or without one requested address of each.
    #[error("ipFamilyPolicy RequireDualStack needs {0}")]
    DualStackIncomplete(String),
    /// The address is held by a Service it can't be shared with.
    #[error("{address} is held by {holder} and can't be shared: {reason}")]
    InUse {
        /// The address.
        address: IpAddr,
        /// Its holder, as the Service asking may know it.
        holder: Holder,
        /// Why sharing is refused.
        #[source]
        reason: SharingRefusal,
    },
    /// On restore: an older Service holds the address this one has in its status.
    #[error("{address} is also in the status of {holder}, which is older and keeps it ({reason})")]
    Conflict {
        /// The address.
        address: IpAddr,
        /// The older Service, as the younger may know it.
        holder: Holder,
        /// Why the two can't share.
        reason: SharingRefusal,
    },
}

impl AllocErrorKind {
    /// A CamelCase reason for events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AllocErrorKind::NoMatchingPool => "NoMatchingPool",
            AllocErrorKind::NoPoolForFamily { .. } => "NoPoolForFamily",
            AllocErrorKind::Exhausted { .. } | AllocErrorKind::PoolExhausted { .. } => {
                "PoolExhausted"
            }
            AllocErrorKind::UnknownPool { .. } => "UnknownPool",
            AllocErrorKind::InvalidPool { .. } => "InvalidPool",
            AllocErrorKind::PoolNotAllowed { .. } => "PoolNotAllowed",
            AllocErrorKind::PoolLacksFamily { .. } => "PoolLacksFamily",
            AllocErrorKind::NotInAnyPool { .. }
            | AllocErrorKind::NotInRequestedPool { .. }
            | AllocErrorKind::DifferentPools { .. }
            | AllocErrorKind::BuggyAddress { .. } => "AddressNotInPool",
            AllocErrorKind::TwoOfOneFamily { .. }
            | AllocErrorKind::FamilyNotInService { .. }
            | AllocErrorKind::DualStackIncomplete(_) => "InvalidRequest",
            AllocErrorKind::InUse { .. } => "AddressInUse",
            AllocErrorKind::Conflict { .. } => "AddressConflict",
        }
    }
}

/// Assigned and available addresses of one family of one pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FamilyUsage {
    /// Addresses held by at least one Service.
    pub assigned: u128,
    /// Allocatable addresses nobody holds.
    pub available: u128,
}

/// A pool's usage per family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// IPv4.
    pub v4: FamilyUsage,
    /// IPv6.
    pub v6: FamilyUsage,
}

/// The free addresses of a pool, per family.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PoolState {
    v4: FreeSet,
    v6: FreeSet,
}

impl PoolState {
    fn new(pool: &Pool) -> Self {
        let mut state = Self {
            v4: FreeSet::new(Family::V4, pool.spec.avoid_buggy_ips),
            v6: FreeSet::new(Family::V6, pool.spec.avoid_buggy_ips),
        };
        for r in &pool.ranges {
            state
                .family_mut(r.family())
                .insert_range(r.start_number(), r.end_number());
        }
        state
    }

    fn family(&self, family: Family) -> &FreeSet {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    fn family_mut(&mut self, family: Family) -> &mut FreeSet {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }
}

/// The Services holding one address, sorted by key. Almost always one or two, so
/// a vector: a `BTreeMap` would allocate a whole node per address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Holders(Vec<(ServiceKey, Claim)>);

impl Holders {
    fn get(&self, key: &ServiceKey) -> Option<&Claim> {
        let i = self.0.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
        Some(&self.0[i].1)
    }

    fn insert(&mut self, key: ServiceKey, claim: Claim) {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => self.0[i].1 = claim,
            Err(i) => self.0.insert(i, (key, claim)),
        }
    }

    fn remove(&mut self, key: &ServiceKey) -> Option<Claim> {
        let i = self.0.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
        Some(self.0.remove(i).1)
    }

    fn iter(&self) -> impl Iterator<Item = (&ServiceKey, &Claim)> {
        self.0.iter().map(|(k, c)| (k, c))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Assigns addresses from pools to Services. Pure: no I/O, no clock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocator {
    pools: PoolSet,
    free: BTreeMap<String, PoolState>,
    /// Address → its holders and what each said about sharing.
    holders: BTreeMap<IpAddr, Holders>,
    /// Service → the addresses it holds, primary family first.
    held: BTreeMap<ServiceKey, Vec<IpAddr>>,
    /// Sharing key → addresses whose holders carry it, to find a shareable
    /// address without scanning.
    by_sharing_key: BTreeMap<String, BTreeSet<IpAddr>>,
}

impl fmt::Display for Assignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addrs: Vec<String> = self.addresses.iter().map(ToString::to_string).collect();
        write!(f, "{}", addrs.join(","))?;
        if let Some(pool) = &self.pool {
            write!(f, " from pool {pool}")?;
        }
        Ok(())
    }
}

// An error names the Service, the addresses, pools and holders involved, which is
// what makes it actionable; failures are rare beside successes, so the size of
// `Result<_, AllocError>` costs nothing that matters.
#[allow(clippy::result_large_err)]
impl Allocator {
    /// An allocator over `pools`, with the errors of the pools it does not use.
    pub fn new(pools: &[PoolSpec]) -> (Self, Vec<PoolError>) {
        let mut allocator = Self::default();
        let errors = allocator.set_pools(pools);
        (allocator, errors)
    }

    /// Replaces the pools. Every held address stays held: one that no valid pool
    /// holds any more is reported as orphaned in its Service's [`Assignment`], never
    /// moved. Returns the errors of the pools not used.
    pub fn set_pools(&mut self, specs: &[PoolSpec]) -> Vec<PoolError> {
        let (pools, errors) = PoolSet::build(specs);
        self.pools = pools;
        self.free = self
            .pools
            .pools
            .values()
            .map(|p| (p.name().to_string(), PoolState::new(p)))
            .collect();
        let held: Vec<IpAddr> = self.holders.keys().copied().collect();
        for ip in held {
            self.take_free(ip);
        }
        self.end_shares_no_longer_allowed();
        errors
    }

    /// Ends the shares the pools no longer allow: an address's pool that
    /// stopped letting two namespaces share it, or no pool holding it any
    /// more. Decided as [`Allocator::restore`] decides, oldest Service
    /// first: each keeps what it holds if it may share every address with
    /// the Services kept before it, else gives everything up (and the next
    /// allocation finds it another address). So a restart after the change
    /// restores exactly what is held, and no holding depends on which
    /// Service the next pass happens to look at first.
    fn end_shares_no_longer_allowed(&mut self) {
        if self.holders.values().all(|h| h.0.len() < 2) {
            return;
        }
        let mut order: Vec<(&ServiceKey, &Claim)> = self
            .held
            .iter()
            .filter_map(|(key, ips)| Some((key, self.holders.get(ips.first()?)?.get(key)?)))
            .collect();
        order.sort_by_key(|(key, claim)| (claim.created_at, *key));
        let mut kept: BTreeMap<IpAddr, Vec<(&ServiceKey, &Claim)>> = BTreeMap::new();
        let mut ended = Vec::new();
        for (key, claim) in order {
            let ips = &self.held[key];
            let may_share = ips.iter().all(|ip| {
                let others = kept.get(ip).into_iter().flatten().copied();
                self.may_share_with(*ip, claim, others).is_ok()
            });
            if may_share {
                for ip in ips {
                    kept.entry(*ip).or_default().push((key, claim));
                }
            } else {
                ended.push(key.clone());
            }
        }
        for key in ended {
            self.release(&key);
        }
    }

    /// The errors of the pools not in use, by pool name.
    pub fn pool_errors(&self) -> impl Iterator<Item = &PoolError> {
        self.pools.invalid.values()
    }

    /// Loads the addresses Services already have in their status, before any new
    /// allocation, so no restart moves an address. Services are taken oldest first:
    /// when two claim one address and may not share it, the older keeps it and the
    /// younger gets a [`AllocErrorKind::Conflict`] and restores nothing. Addresses no
    /// pool holds are kept as orphans. Results come in the order of `existing`.
    pub fn restore<'a>(
        &mut self,
        existing: impl IntoIterator<Item = (&'a Service, &'a [IpAddr])>,
    ) -> Vec<Result<Assignment, AllocError>> {
        let existing: Vec<(&Service, &[IpAddr])> = existing.into_iter().collect();
        let mut order: Vec<usize> = (0..existing.len()).collect();
        order.sort_by_key(|&i| (existing[i].0.created_at, &existing[i].0.key));
        let mut results: Vec<Option<Result<Assignment, AllocError>>> = vec![None; existing.len()];
        for i in order {
            let (svc, addresses) = existing[i];
            results[i] = Some(self.restore_one(svc, addresses));
        }
        results
            .into_iter()
            .map(|r| r.expect("every index was restored"))
            .collect()
    }

    fn restore_one(
        &mut self,
        svc: &Service,
        addresses: &[IpAddr],
    ) -> Result<Assignment, AllocError> {
        self.release(&svc.key);
        let mut unique: Vec<IpAddr> = Vec::with_capacity(addresses.len());
        for ip in addresses {
            if !unique.contains(ip) {
                unique.push(*ip);
            }
        }
        let claim = svc.claim();
        for &ip in &unique {
            if let Err((holder, reason)) = self.shareable(ip, &svc.key, &claim) {
                return Err(AllocError {
                    service: svc.key.clone(),
                    kind: AllocErrorKind::Conflict {
                        address: ip,
                        holder: Holder::seen_by(holder, &svc.key),
                        reason,
                    },
                });
            }
        }
        self.commit(&svc.key, &claim, &unique);
        Ok(self.assignment(&svc.key).expect("just committed"))
    }

    /// Gives `svc` what it asks for, or keeps what it has when that still fits its
    /// request. Idempotent: calling it again with the same Service changes nothing.
    ///
    /// A Service whose request changed (other addresses, another pool, families it
    /// no longer has, sharing it may no longer do) first gives up what it held.
    pub fn allocate(&mut self, svc: &Service) -> Result<Assignment, AllocError> {
        let fail = |kind| AllocError {
            service: svc.key.clone(),
            kind,
        };
        let wanted = svc.wanted_families();
        let requested = self.check_request(svc, &wanted).map_err(fail)?;
        let claim = svc.claim();

        if let Some(kept) = self.keepable(svc, &wanted, &claim) {
            if kept.len() < self.held[&svc.key].len()
                || self.holders_claim_differs(&svc.key, &claim)
            {
                self.release(&svc.key);
                self.commit(&svc.key, &claim, &kept);
            }
            if requested.is_empty() && kept.len() < wanted.len() {
                self.gain_missing_family(svc, &wanted, &claim, &kept)
                    .map_err(fail)?;
            }
            return Ok(self
                .assignment(&svc.key)
                .expect("the Service holds addresses"));
        }
        self.release(&svc.key);

        let chosen = if !requested.is_empty() {
            self.choose_requested(svc, &claim, &requested)
        } else if let Some(name) = &svc.pool {
            let pool = self.named_pool(svc, name)?;
            self.choose_in_pool(pool, svc, &claim, &wanted)
        } else {
            self.choose_automatically(svc, &claim, &wanted)
        }
        .map_err(fail)?;
        self.commit(&svc.key, &claim, &chosen);
        Ok(self.assignment(&svc.key).expect("just committed"))
    }

    /// Gives up every address `key` holds; an address nobody holds any more is
    /// free again at once. Returns what was held.
    pub fn release(&mut self, key: &ServiceKey) -> Vec<IpAddr> {
        let Some(addresses) = self.held.remove(key) else {
            return Vec::new();
        };
        for &ip in &addresses {
            let Some(holders) = self.holders.get_mut(&ip) else {
                continue;
            };
            if let Some(claim) = holders.remove(key)
                && let Some(k) = &claim.sharing_key
                && !holders
                    .iter()
                    .any(|(_, c)| c.sharing_key.as_ref() == Some(k))
                && let Some(set) = self.by_sharing_key.get_mut(k)
            {
                set.remove(&ip);
                if set.is_empty() {
                    self.by_sharing_key.remove(k);
                }
            }
            if holders.is_empty() {
                self.holders.remove(&ip);
                self.give_free(ip);
            }
        }
        addresses
    }

    /// What `key` holds.
    pub fn assignment(&self, key: &ServiceKey) -> Option<Assignment> {
        let addresses = self.held.get(key)?.clone();
        let pool = addresses
            .iter()
            .find_map(|ip| self.pool_holding(*ip))
            .map(|p| p.name().to_string());
        let orphaned = addresses
            .iter()
            .copied()
            .filter(|ip| self.pool_holding(*ip).is_none())
            .collect();
        Some(Assignment {
            addresses,
            pool,
            orphaned,
        })
    }

    /// Every Service holding addresses, with them.
    pub fn assignments(&self) -> impl Iterator<Item = (&ServiceKey, &[IpAddr])> {
        self.held.iter().map(|(k, v)| (k, v.as_slice()))
    }

    /// The pool in use that `ip` is an allocatable address of.
    pub fn pool_of(&self, ip: IpAddr) -> Option<&str> {
        self.pool_holding(ip).map(Pool::name)
    }

    /// The Services holding `ip`.
    pub fn holders_of(&self, ip: IpAddr) -> impl Iterator<Item = &ServiceKey> {
        self.holders
            .get(&ip)
            .into_iter()
            .flat_map(|h| h.iter().map(|(k, _)| k))
    }

    /// Assigned and available counts of a pool in use.
    pub fn usage(&self, pool: &str) -> Option<PoolUsage> {
        let p = self.pools.pools.get(pool)?;
        let state = self.free.get(pool)?;
        let family_usage = |family: Family| {
            let set = state.family(family);
            let total: u128 = p
                .ranges
                .iter()
                .filter(|r| r.family() == family)
                .map(|r| set.count_allocatable(r.start_number(), r.end_number()))
                .fold(0, u128::saturating_add);
            FamilyUsage {
                assigned: total - set.free(),
                available: set.free(),
            }
        };
        Some(PoolUsage {
            v4: family_usage(Family::V4),
            v6: family_usage(Family::V6),
        })
    }

    /// The valid pool `ip` belongs to, as an allocatable address.
    fn pool_holding(&self, ip: IpAddr) -> Option<&Pool> {
        self.pools
            .pool_of(ip)
            .filter(|p| PoolSet::allocatable_in(p, ip))
    }

    /// The requested addresses, checked in form: at most one per family, each of a
    /// family the Service has, one of each for `RequireDualStack`.
    fn check_request(
        &self,
        svc: &Service,
        wanted: &[Family],
    ) -> Result<Vec<IpAddr>, AllocErrorKind> {
        let mut seen: Vec<IpAddr> = Vec::new();
        for &ip in &svc.addresses {
            let family = Family::of(ip);
            if let Some(&first) = seen.iter().find(|s| Family::of(**s) == family) {
                if first == ip {
                    continue;
                }
                return Err(AllocErrorKind::TwoOfOneFamily {
                    first,
                    second: ip,
                    family,
                });
            }
            if !wanted.contains(&family) {
                return Err(AllocErrorKind::FamilyNotInService {
                    address: ip,
                    family,
                });
            }
            seen.push(ip);
        }
        if svc.family_policy == FamilyPolicy::RequireDualStack {
            if wanted.len() < 2 {
                return Err(AllocErrorKind::DualStackIncomplete(
                    "two ipFamilies, but the Service has one".into(),
                ));
            }
            if !seen.is_empty() && seen.len() < 2 {
                return Err(AllocErrorKind::DualStackIncomplete(
                    "one requested address per family, but only one was requested".into(),
                ));
            }
        }
        seen.sort_by_key(|ip| wanted.iter().position(|f| *f == Family::of(*ip)));
        Ok(seen)
    }

    /// What the Service may keep of what it holds, or `None` when its request no
    /// longer fits and it must start over.
    fn keepable(&self, svc: &Service, wanted: &[Family], claim: &Claim) -> Option<Vec<IpAddr>> {
        let held = self.held.get(&svc.key)?;
        if !svc.addresses.is_empty() {
            let mut a = held.clone();
            let mut b = svc.addresses.clone();
            a.sort();
            b.sort();
            b.dedup();
            if a != b {
                return None;
            }
        }
        if let Some(name) = &svc.pool {
            // Orphans stay: the pool shrank under them, the request did not change.
            if held
                .iter()
                .any(|ip| self.pool_holding(*ip).is_some_and(|p| p.name() != name))
            {
                return None;
            }
        }
        for &ip in held {
            if self.shareable(ip, &svc.key, claim).is_err() {
                return None;
            }
        }
        let kept: Vec<IpAddr> = held
            .iter()
            .copied()
            .filter(|ip| wanted.contains(&Family::of(*ip)))
            .collect();
        (!kept.is_empty()).then_some(kept)
    }

    fn holders_claim_differs(&self, key: &ServiceKey, claim: &Claim) -> bool {
        self.held[key]
            .iter()
            .any(|ip| self.holders[ip].get(key) != Some(claim))
    }

    /// A dual-stack Service holding one family gets the other from the same pool
    /// once that pool has it. `PreferDualStack` goes on without it when it can't;
    /// `RequireDualStack` reports why.
    fn gain_missing_family(
        &mut self,
        svc: &Service,
        wanted: &[Family],
        claim: &Claim,
        kept: &[IpAddr],
    ) -> Result<(), AllocErrorKind> {
        let Some(pool) = kept.iter().find_map(|ip| self.pool_holding(*ip)) else {
            return Ok(());
        };
        let pool_name = pool.name().to_string();
        let missing: Vec<Family> = wanted
            .iter()
            .copied()
            .filter(|f| !kept.iter().any(|ip| Family::of(*ip) == *f))
            .collect();
        let mut gained = Vec::new();
        for family in missing {
            match self.find_in_pool(pool, family, &svc.key, claim) {
                Some(ip) => gained.push(ip),
                None if svc.family_policy == FamilyPolicy::RequireDualStack => {
                    return Err(if pool.has_family(family) {
                        AllocErrorKind::PoolExhausted {
                            pool: pool_name,
                            family,
                        }
                    } else {
                        AllocErrorKind::PoolLacksFamily {
                            pool: pool_name,
                            family,
                        }
                    });
                }
                None => {}
            }
        }
        if !gained.is_empty() {
            let mut all = kept.to_vec();
            all.extend(gained);
            all.sort_by_key(|ip| wanted.iter().position(|f| *f == Family::of(*ip)));
            self.release(&svc.key);
            self.commit(&svc.key, claim, &all);
        }
        Ok(())
    }

    fn named_pool(&self, svc: &Service, name: &str) -> Result<&Pool, AllocError> {
        let fail = |kind| AllocError {
            service: svc.key.clone(),
            kind,
        };
        let pool = self.pools.pools.get(name).ok_or_else(|| {
            fail(match self.pools.invalid.get(name) {
                Some(err) => AllocErrorKind::InvalidPool {
                    pool: name.to_string(),
                    reason: err.to_string(),
                },
                None => AllocErrorKind::UnknownPool {
                    pool: name.to_string(),
                },
            })
        })?;
        pool.admits(svc).map_err(|why| {
            fail(AllocErrorKind::PoolNotAllowed {
                pool: name.to_string(),
                why,
            })
        })?;
        Ok(pool)
    }

    fn choose_requested(
        &self,
        svc: &Service,
        claim: &Claim,
        requested: &[IpAddr],
    ) -> Result<Vec<IpAddr>, AllocErrorKind> {
        let mut first: Option<(IpAddr, &Pool)> = None;
        for &ip in requested {
            let pool = self
                .pools
                .pool_of(ip)
                .ok_or(AllocErrorKind::NotInAnyPool { address: ip })?;
            if !PoolSet::allocatable_in(pool, ip) {
                return Err(AllocErrorKind::BuggyAddress {
                    address: ip,
                    pool: pool.name().to_string(),
                });
            }
            if let Some(name) = &svc.pool
                && pool.name() != name
            {
                return Err(AllocErrorKind::NotInRequestedPool {
                    address: ip,
                    actual: pool.name().to_string(),
                    requested: name.clone(),
                });
            }
            match first {
                Some((other, other_pool)) if other_pool.name() != pool.name() => {
                    return Err(AllocErrorKind::DifferentPools {
                        first: other,
                        first_pool: other_pool.name().to_string(),
                        second: ip,
                        second_pool: pool.name().to_string(),
                    });
                }
                Some(_) => {}
                None => {
                    pool.admits(svc)
                        .map_err(|why| AllocErrorKind::PoolNotAllowed {
                            pool: pool.name().to_string(),
                            why,
                        })?;
                    first = Some((ip, pool));
                }
            }
            self.shareable(ip, &svc.key, claim)
                .map_err(|(holder, reason)| AllocErrorKind::InUse {
                    address: ip,
                    holder: Holder::seen_by(holder, &svc.key),
                    reason,
                })?;
        }
        Ok(requested.to_vec())
    }

    /// Addresses of the `wanted` families from one pool: both when it can, else
    /// (unless `RequireDualStack`) the primary, else the other.
    fn choose_in_pool(
        &self,
        pool: &Pool,
        svc: &Service,
        claim: &Claim,
        wanted: &[Family],
    ) -> Result<Vec<IpAddr>, AllocErrorKind> {
        let mut first_error = None;
        for families in family_choices(svc.family_policy, wanted) {
            match self.take_from(pool, &families, &svc.key, claim) {
                Ok(found) => return Ok(found),
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        Err(first_error.expect("family_choices is never empty"))
    }

    /// One address per family from `pool`, or why not.
    fn take_from(
        &self,
        pool: &Pool,
        families: &[Family],
        key: &ServiceKey,
        claim: &Claim,
    ) -> Result<Vec<IpAddr>, AllocErrorKind> {
        families
            .iter()
            .map(|&family| {
                if !pool.has_family(family) {
                    return Err(AllocErrorKind::PoolLacksFamily {
                        pool: pool.name().to_string(),
                        family,
                    });
                }
                self.find_in_pool(pool, family, key, claim).ok_or_else(|| {
                    AllocErrorKind::PoolExhausted {
                        pool: pool.name().to_string(),
                        family,
                    }
                })
            })
            .collect()
    }

    fn choose_automatically(
        &self,
        svc: &Service,
        claim: &Claim,
        wanted: &[Family],
    ) -> Result<Vec<IpAddr>, AllocErrorKind> {
        let mut candidates: Vec<&Pool> = self
            .pools
            .pools
            .values()
            .filter(|p| p.spec.auto_assign && p.admits(svc).is_ok())
            .collect();
        if candidates.is_empty() {
            return Err(AllocErrorKind::NoMatchingPool);
        }
        candidates.sort_by(|a, b| a.auto_order(b));
        let choices = family_choices(svc.family_policy, wanted);
        for families in &choices {
            for pool in &candidates {
                if let Ok(found) = self.take_from(pool, families, &svc.key, claim) {
                    return Ok(found);
                }
            }
        }
        let tried = candidates
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ");
        let servable = choices.iter().any(|families| {
            candidates
                .iter()
                .any(|p| families.iter().all(|f| p.has_family(*f)))
        });
        if servable {
            Err(AllocErrorKind::Exhausted { tried })
        } else {
            let needed = match wanted {
                [only] => only.to_string(),
                _ if svc.family_policy == FamilyPolicy::RequireDualStack => {
                    "both IPv4 and IPv6".into()
                }
                _ => "IPv4 or IPv6".into(),
            };
            Err(AllocErrorKind::NoPoolForFamily { needed, tried })
        }
    }

    /// The address of `family` in `pool` this Service should get: the lowest one
    /// already shared under its key and shareable with it, else the lowest free.
    fn find_in_pool(
        &self,
        pool: &Pool,
        family: Family,
        key: &ServiceKey,
        claim: &Claim,
    ) -> Option<IpAddr> {
        if let Some(sharing_key) = &claim.sharing_key {
            let shared = self.by_sharing_key.get(sharing_key).and_then(|addrs| {
                addrs.iter().copied().find(|&ip| {
                    Family::of(ip) == family
                        && self
                            .pool_holding(ip)
                            .is_some_and(|p| p.name() == pool.name())
                        && self.shareable(ip, key, claim).is_ok()
                })
            });
            if shared.is_some() {
                return shared;
            }
        }
        let lowest = self.free.get(pool.name())?.family(family).lowest()?;
        Some(super::range::from_number(family, lowest))
    }

    /// Whether `key` with `claim` may hold `ip` beside its current holders; `Err`
    /// names the first holder that refuses and why.
    fn shareable(
        &self,
        ip: IpAddr,
        key: &ServiceKey,
        claim: &Claim,
    ) -> Result<(), (ServiceKey, SharingRefusal)> {
        let Some(holders) = self.holders.get(&ip) else {
            return Ok(());
        };
        self.may_share_with(
            ip,
            claim,
            holders.iter().filter(|(holder, _)| *holder != key),
        )
    }

    /// Whether `claim` may share `ip` with `others`, under the sharing
    /// rules of the pool holding `ip`; else the first that refuses, and why.
    fn may_share_with<'a>(
        &self,
        ip: IpAddr,
        claim: &Claim,
        others: impl IntoIterator<Item = (&'a ServiceKey, &'a Claim)>,
    ) -> Result<(), (ServiceKey, SharingRefusal)> {
        let across = self
            .pool_holding(ip)
            .and_then(|p| p.spec.cross_namespace.as_ref());
        for (holder, theirs) in others {
            check_sharing(claim, theirs, across).map_err(|reason| (holder.clone(), reason))?;
        }
        Ok(())
    }

    fn commit(&mut self, key: &ServiceKey, claim: &Claim, addresses: &[IpAddr]) {
        for &ip in addresses {
            if !self.holders.contains_key(&ip) {
                self.take_free(ip);
            }
            self.holders
                .entry(ip)
                .or_default()
                .insert(key.clone(), claim.clone());
            if let Some(k) = &claim.sharing_key {
                self.by_sharing_key.entry(k.clone()).or_default().insert(ip);
            }
        }
        self.held.insert(key.clone(), addresses.to_vec());
    }

    fn take_free(&mut self, ip: IpAddr) {
        if let Some(pool) = self.pools.pool_of(ip)
            && let Some(state) = self.free.get_mut(pool.name())
        {
            state.family_mut(Family::of(ip)).take(to_number(ip));
        }
    }

    fn give_free(&mut self, ip: IpAddr) {
        if let Some(pool) = self.pool_holding(ip) {
            let name = pool.name().to_string();
            if let Some(state) = self.free.get_mut(&name) {
                state.family_mut(Family::of(ip)).give(to_number(ip));
            }
        }
    }
}

/// The sets of families to try, in order.
fn family_choices(policy: FamilyPolicy, wanted: &[Family]) -> Vec<Vec<Family>> {
    match (policy, wanted) {
        (FamilyPolicy::PreferDualStack, [primary, secondary]) => {
            vec![vec![*primary, *secondary], vec![*primary], vec![*secondary]]
        }
        _ => vec![wanted.to_vec()],
    }
}
