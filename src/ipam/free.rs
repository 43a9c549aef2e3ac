//! The free addresses of one family of one pool, as disjoint intervals.
//!
//! A pool is never enumerated: an IPv6 /64 is one interval until addresses are
//! taken from it, so memory grows with the number of allocations, not with the
//! pool's size, and the lowest free address is the first interval's start.
//!
//! With `avoidBuggyIPs`, IPv4 addresses ending in `.0` and `.255` are not
//! allocatable at all (as in MetalLB, they don't belong to the pool). Intervals
//! start and end on allocatable addresses, and two intervals are merged when only
//! unallocatable addresses lie between them, so every set of free addresses has
//! exactly one representation: a state rebuilt from scratch equals the state
//! reached by any sequence of takes and gives.

use std::collections::BTreeMap;

use super::range::Family;

/// Free addresses of one family, as numbers within that family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FreeSet {
    family: Family,
    avoid_buggy: bool,
    /// start → end, both inclusive and allocatable; disjoint and never adjacent.
    intervals: BTreeMap<u128, u128>,
    free: u128,
}

impl FreeSet {
    pub(crate) fn new(family: Family, avoid_buggy_ips: bool) -> Self {
        Self {
            family,
            avoid_buggy: avoid_buggy_ips && family == Family::V4,
            intervals: BTreeMap::new(),
            free: 0,
        }
    }

    /// Whether `n` may ever be handed out from this set.
    pub(crate) fn allocatable(&self, n: u128) -> bool {
        !(self.avoid_buggy && matches!(n & 0xff, 0x00 | 0xff))
    }

    /// The smallest allocatable address ≥ `n`, if any.
    fn first_at_or_after(&self, mut n: u128) -> Option<u128> {
        // Two steps at most: .255 → .0 → .1.
        while !self.allocatable(n) {
            n = n.checked_add(1).filter(|&m| m <= self.family.max())?;
        }
        Some(n)
    }

    /// The largest allocatable address ≤ `n`, if any.
    fn last_at_or_before(&self, mut n: u128) -> Option<u128> {
        while !self.allocatable(n) {
            n = n.checked_sub(1)?;
        }
        Some(n)
    }

    fn next_after(&self, n: u128) -> Option<u128> {
        n.checked_add(1)
            .filter(|&m| m <= self.family.max())
            .and_then(|m| self.first_at_or_after(m))
    }

    fn prev_before(&self, n: u128) -> Option<u128> {
        n.checked_sub(1).and_then(|m| self.last_at_or_before(m))
    }

    /// How many allocatable addresses lie in `start..=end`, saturating at
    /// `u128::MAX` for the whole IPv6 space.
    pub(crate) fn count_allocatable(&self, start: u128, end: u128) -> u128 {
        let all = (end - start).saturating_add(1);
        if !self.avoid_buggy {
            return all;
        }
        // Numbers k in 0..=n with k % 256 == r.
        let upto = |n: Option<u128>, r: u128| match n {
            Some(n) if n >= r => (n - r) / 256 + 1,
            _ => 0,
        };
        let below = start.checked_sub(1);
        let zeros = upto(Some(end), 0) - upto(below, 0);
        let broadcasts = upto(Some(end), 0xff) - upto(below, 0xff);
        all - zeros - broadcasts
    }

    /// Adds every allocatable address of `start..=end`, none of which may be free
    /// already.
    pub(crate) fn insert_range(&mut self, start: u128, end: u128) {
        let (Some(s), Some(e)) = (self.first_at_or_after(start), self.last_at_or_before(end))
        else {
            return;
        };
        if s > e {
            return;
        }
        self.free = self.free.saturating_add(self.count_allocatable(s, e));
        self.insert_normalized(s, e);
    }

    fn insert_normalized(&mut self, mut start: u128, mut end: u128) {
        if let Some((&left_start, &left_end)) = self.intervals.range(..start).next_back()
            && self.next_after(left_end) == Some(start)
        {
            self.intervals.remove(&left_start);
            start = left_start;
        }
        if let Some(right_start) = self.next_after(end)
            && let Some(right_end) = self.intervals.remove(&right_start)
        {
            end = right_end;
        }
        self.intervals.insert(start, end);
    }

    /// The lowest free address.
    pub(crate) fn lowest(&self) -> Option<u128> {
        self.intervals.keys().next().copied()
    }

    /// Whether `n` is free.
    pub(crate) fn contains(&self, n: u128) -> bool {
        self.allocatable(n)
            && self
                .intervals
                .range(..=n)
                .next_back()
                .is_some_and(|(_, &end)| n <= end)
    }

    /// Takes `n` out of the set; false when it was not free.
    pub(crate) fn take(&mut self, n: u128) -> bool {
        if !self.allocatable(n) {
            return false;
        }
        let Some((&start, &end)) = self.intervals.range(..=n).next_back() else {
            return false;
        };
        if n > end {
            return false;
        }
        self.intervals.remove(&start);
        if let Some(before) = self.prev_before(n).filter(|&b| b >= start) {
            self.intervals.insert(start, before);
        }
        if let Some(after) = self.next_after(n).filter(|&a| a <= end) {
            self.intervals.insert(after, end);
        }
        self.free -= 1;
        true
    }

    /// Puts `n` back; it must be allocatable and not free.
    pub(crate) fn give(&mut self, n: u128) {
        debug_assert!(
            self.allocatable(n) && !self.contains(n),
            "give({n}) of a free or unallocatable address"
        );
        self.free += 1;
        self.insert_normalized(n, n);
    }

    /// How many addresses are free.
    pub(crate) fn free(&self) -> u128 {
        self.free
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> u128 {
        u128::from(u32::from_be_bytes([a, b, c, d]))
    }

    #[test]
    fn lowest_skips_buggy_addresses() {
        let mut set = FreeSet::new(Family::V4, true);
        set.insert_range(v4(10, 0, 0, 0), v4(10, 0, 1, 255));
        assert_eq!(set.lowest(), Some(v4(10, 0, 0, 1)));
        assert_eq!(set.free(), 508);
        for d in 1..=254 {
            assert!(set.take(v4(10, 0, 0, d)));
        }
        assert_eq!(
            set.lowest(),
            Some(v4(10, 0, 1, 1)),
            ".255 and .0 are never handed out"
        );
    }

    #[test]
    fn buggy_avoidance_is_ipv4_only() {
        let mut set = FreeSet::new(Family::V6, true);
        set.insert_range(0, 0xff);
        assert_eq!((set.lowest(), set.free()), (Some(0), 256));
    }

    #[test]
    fn counts_buggy_addresses_arithmetically() {
        let set = FreeSet::new(Family::V4, true);
        assert_eq!(
            set.count_allocatable(0, u128::from(u32::MAX)),
            (1 << 32) - 2 * (1 << 24)
        );
        assert_eq!(set.count_allocatable(v4(10, 0, 0, 255), v4(10, 0, 1, 0)), 0);
        assert_eq!(set.count_allocatable(v4(10, 0, 0, 254), v4(10, 0, 1, 1)), 2);
    }

    #[test]
    fn a_huge_ipv6_range_is_one_interval() {
        let mut set = FreeSet::new(Family::V6, false);
        set.insert_range(0, (1 << 64) - 1);
        assert_eq!(set.free(), 1 << 64);
        assert!(set.take(0) && set.take(5));
        assert_eq!(set.intervals.len(), 2);
        assert_eq!(set.lowest(), Some(1));
    }

    #[test]
    fn the_top_of_the_address_space_does_not_overflow() {
        let mut set = FreeSet::new(Family::V6, false);
        set.insert_range(u128::MAX - 1, u128::MAX);
        assert!(set.take(u128::MAX));
        set.give(u128::MAX);
        assert_eq!(set.intervals.len(), 1);
        let mut v4set = FreeSet::new(Family::V4, true);
        v4set.insert_range(v4(255, 255, 255, 0), v4(255, 255, 255, 255));
        assert_eq!(v4set.free(), 254);
        assert!(v4set.take(v4(255, 255, 255, 254)));
    }

    /// Every allocatable address in `lo..=hi` minus `taken`, rebuilt from scratch.
    fn fresh(avoid: bool, lo: u128, hi: u128, taken: &BTreeSet<u128>) -> FreeSet {
        let mut set = FreeSet::new(Family::V4, avoid);
        set.insert_range(lo, hi);
        for &n in taken {
            set.take(n);
        }
        set
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Any sequence of takes and gives ends in the same representation as a
        /// set built directly, and agrees with a naive set of numbers.
        #[test]
        fn takes_and_gives_match_a_naive_model(
            avoid in any::<bool>(),
            lo in 0u128..600,
            len in 0u128..600,
            ops in proptest::collection::vec((any::<bool>(), 0u128..1300), 0..200),
        ) {
            let hi = lo + len;
            let mut set = FreeSet::new(Family::V4, avoid);
            set.insert_range(lo, hi);
            let mut model: BTreeSet<u128> =
                (lo..=hi).filter(|&n| !avoid || !matches!(n & 0xff, 0 | 0xff)).collect();
            let mut taken = BTreeSet::new();
            for (take, n) in ops {
                if take {
                    let took = set.take(n);
                    prop_assert_eq!(took, model.remove(&n));
                    if took { taken.insert(n); }
                } else if taken.remove(&n) {
                    set.give(n);
                    model.insert(n);
                }
                prop_assert_eq!(set.lowest(), model.first().copied());
                prop_assert_eq!(set.free(), model.len() as u128);
            }
            for n in lo.saturating_sub(3)..=hi + 3 {
                prop_assert_eq!(set.contains(n), model.contains(&n));
            }
            prop_assert_eq!(&set, &fresh(avoid, lo, hi, &taken));
        }
    }
}
