//! The UDP flow table of one listener: bounded, and fair to real clients when
//! full. A flood from spoofed sources opens a flow per datagram that no client
//! will ever use again, so a full table must make room rather than refuse.
//! Flows whose backend never replied go first (a spoofed source's flow to a
//! backend that ignores it), then the least recently used — but a flow still
//! waiting for its first reply (its client spoke within
//! [`super::REPLY_GRACE`]) goes last: against a backend that answers
//! everyone, as DNS does, the spoofed flows are answered within a millisecond,
//! and evicting the one flow still waiting would drop the answer of exactly the
//! new real client the room was made for. Pure: the caller says which flows
//! were answered and which are still waiting.

use std::hash::Hash;

use lru::LruCache;

/// Which flow made room for a new one (`unanswered`, `least_recent` in the
/// metrics).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Eviction {
    /// Its backend had never replied.
    Unanswered,
    /// It was answered, and the least recently used.
    LeastRecent,
}

/// Flows by client address, in two recency lists: those never answered and
/// those answered.
pub struct FlowTable<K: Hash + Eq, V> {
    unanswered: LruCache<K, V>,
    answered: LruCache<K, V>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> FlowTable<K, V> {
    /// An empty table holding at most `capacity` flows (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            unanswered: LruCache::unbounded(),
            answered: LruCache::unbounded(),
            capacity: capacity.max(1),
        }
    }

    /// Flows held.
    pub fn len(&self) -> usize {
        self.unanswered.len() + self.answered.len()
    }

    /// Whether it holds no flow.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it holds as many flows as it may.
    pub fn is_full(&self) -> bool {
        self.len() >= self.capacity
    }

    /// The flow of `key`, marked as just used.
    pub fn touch(&mut self, key: &K) -> Option<&V> {
        if self.unanswered.contains(key) {
            return self.unanswered.get(key);
        }
        self.answered.get(key)
    }

    /// The flow of `key`, its recency unchanged.
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.unanswered
            .peek(key)
            .or_else(|| self.answered.peek(key))
    }

    /// Records that the backend of `key`'s flow replied just now.
    pub fn answered(&mut self, key: &K) {
        if let Some(v) = self.unanswered.pop(key) {
            self.answered.put(key.clone(), v);
        }
    }

    /// Adds a new, unanswered flow. The caller makes room first
    /// ([`FlowTable::evict`]) when the table is full.
    pub fn insert(&mut self, key: K, value: V) {
        self.remove(&key);
        self.unanswered.put(key, value);
    }

    /// Removes the flow of `key`.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.unanswered.pop(key).or_else(|| self.answered.pop(key))
    }

    /// Removes one flow to make room: the least recently used of those never
    /// answered and no longer `waiting`, else the least recently used answered
    /// one, else the oldest of those waiting.
    pub fn evict(&mut self, waiting: impl Fn(&V) -> bool) -> Option<(K, V, Eviction)> {
        // The unanswered list is in order of last use, so if its oldest is
        // still waiting, all of them are.
        if self.unanswered.peek_lru().is_some_and(|(_, v)| !waiting(v)) || self.answered.is_empty()
        {
            return self
                .unanswered
                .pop_lru()
                .map(|(k, v)| (k, v, Eviction::Unanswered));
        }
        self.answered
            .pop_lru()
            .map(|(k, v)| (k, v, Eviction::LeastRecent))
    }

    /// Keeps only the flows for which `keep(key, flow, answered)` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V, bool) -> bool) {
        for (list, answered) in [(&mut self.unanswered, false), (&mut self.answered, true)] {
            let gone: Vec<K> = list
                .iter()
                .filter(|(k, v)| !keep(k, v, answered))
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                list.pop(&k);
            }
        }
    }

    /// Removes every flow.
    pub fn clear(&mut self) {
        self.unanswered.clear();
        self.answered.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Clone, Debug)]
    enum Op {
        /// A datagram from client `k`: touched, or added (evicting when full).
        Datagram(u16),
        /// The backend of client `k`'s flow replies.
        Reply(u16),
        /// The idle sweep drops client `k`.
        Expire(u16),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(
            prop_oneof![
                4 => (0u16..40).prop_map(Op::Datagram),
                2 => (0u16..40).prop_map(Op::Reply),
                1 => (0u16..40).prop_map(Op::Expire),
            ],
            0..300,
        )
    }

    /// A flow still waits for its first reply while its last use is less
    /// than this many steps old.
    const GRACE: usize = 5;

    /// A modelled flow: its last use, and whether it was answered.
    #[derive(Clone, Copy, Debug)]
    struct Model {
        last: usize,
        answered: bool,
    }

    proptest! {
        /// Against a model that keeps each flow's last use and answered flag:
        /// the table never exceeds its capacity, and a full table evicts the
        /// least recently used unanswered flow no longer waiting if there is
        /// one, else the least recently used answered flow if there is one,
        /// else the oldest waiting flow.
        #[test]
        fn evicts_unanswered_then_least_recent_then_waiting(capacity in 1usize..12, ops in ops()) {
            // The table's values are the clients, so `waiting` can look them
            // up in the model.
            let mut table: FlowTable<u16, u16> = FlowTable::new(capacity);
            let mut model: HashMap<u16, Model> = HashMap::new();
            for (t, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Datagram(k) => {
                        if table.touch(&k).is_some() {
                            model.get_mut(&k).expect("modelled").last = t;
                            continue;
                        }
                        if table.is_full() {
                            let oldest = |answered: bool, waiting: Option<bool>| {
                                model
                                    .iter()
                                    .filter(|(_, m)| {
                                        m.answered == answered
                                            && waiting.is_none_or(|w| (t - m.last < GRACE) == w)
                                    })
                                    .min_by_key(|(_, m)| m.last)
                                    .map(|(k, _)| *k)
                            };
                            let want = oldest(false, Some(false))
                                .map(|k| (k, Eviction::Unanswered))
                                .or(oldest(true, None).map(|k| (k, Eviction::LeastRecent)))
                                .or(oldest(false, None).map(|k| (k, Eviction::Unanswered)));
                            let (gone, _, why) = table
                                .evict(|c| t - model[c].last < GRACE)
                                .expect("full");
                            prop_assert_eq!(Some((gone, why)), want);
                            model.remove(&gone);
                        }
                        table.insert(k, k);
                        model.insert(k, Model { last: t, answered: false });
                    }
                    Op::Reply(k) => {
                        table.answered(&k);
                        if let Some(m) = model.get_mut(&k) {
                            // A reply is a use, as for the table's answered list.
                            if !m.answered {
                                m.last = t;
                            }
                            m.answered = true;
                        }
                    }
                    Op::Expire(k) => {
                        table.retain(|key, _, _| *key != k);
                        model.remove(&k);
                    }
                }
                prop_assert!(table.len() <= capacity);
                prop_assert_eq!(table.len(), model.len());
                for k in model.keys() {
                    prop_assert!(table.peek(k).is_some());
                }
            }
        }
    }

    /// A flood from spoofed sources that the backend answers at once (DNS):
    /// the new real client's flow, still waiting for its answer, outlives it.
    #[test]
    fn a_waiting_flow_outlives_a_flood_of_answered_ones() {
        let mut table: FlowTable<u32, ()> = FlowTable::new(4);
        table.insert(0, ());
        for spoofed in 1..1000u32 {
            if table.is_full() {
                let (gone, _, why) = table.evict(|_| true).expect("full");
                assert_ne!(gone, 0, "the waiting flow was evicted");
                assert_eq!(why, Eviction::LeastRecent);
            }
            table.insert(spoofed, ());
            table.answered(&spoofed);
        }
        assert!(table.peek(&0).is_some());
    }

    /// A flood that the backend ignores (garbage to a game server): the
    /// answered client's flow outlives it.
    #[test]
    fn an_answered_flow_outlives_a_flood_of_unanswered_ones() {
        let mut table: FlowTable<u32, ()> = FlowTable::new(4);
        table.insert(0, ());
        table.answered(&0);
        for spoofed in 1..1000u32 {
            if table.is_full() {
                let (gone, _, why) = table.evict(|_| false).expect("full");
                assert_ne!(gone, 0, "the answered flow was evicted");
                assert_eq!(why, Eviction::Unanswered);
            }
            table.insert(spoofed, ());
        }
        assert!(table.touch(&0).is_some());
    }
}
