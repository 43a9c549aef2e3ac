//! Choosing a backend: round robin, with `sessionAffinity: ClientIP`. Pure but
//! for the clock, which callers pass in.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::plan::Backend;

/// One listener's choice of backends.
pub struct Balancer {
    next: AtomicUsize,
    /// Each client's backend and when it last went there. Bounded: a flood of
    /// new clients (or spoofed UDP sources) pushes out the least recently
    /// seen, in constant time per client, instead of growing without end.
    sticky: Mutex<LruCache<IpAddr, (SocketAddr, Instant)>>,
}

impl Balancer {
    /// A balancer remembering the backends of at most `clients` clients.
    pub fn new(clients: usize) -> Self {
        Self {
            next: AtomicUsize::new(0),
            sticky: Mutex::new(LruCache::new(
                NonZeroUsize::new(clients.max(1)).expect("at least one"),
            )),
        }
    }

    /// The backends to try for `client`, best first: its sticky backend when
    /// affinity is on and it is still listed and fresh, then every backend in
    /// round-robin order, so a failed connect falls through to the next.
    pub fn order(
        &self,
        backends: &[Backend],
        client: IpAddr,
        affinity: Option<Duration>,
        now: Instant,
    ) -> Vec<Backend> {
        if backends.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % backends.len();
        let mut order: Vec<Backend> = backends[start..]
            .iter()
            .chain(&backends[..start])
            .cloned()
            .collect();
        if let Some(timeout) = affinity {
            let sticky = self.sticky.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((address, seen)) = sticky.peek(&client)
                && now.duration_since(*seen) < timeout
                && let Some(i) = order.iter().position(|o| o.address == *address)
            {
                let b = order.remove(i);
                order.insert(0, b);
            }
        }
        order
    }

    /// Records that `client` went to `backend` at `now`; returns how many
    /// clients are remembered.
    pub fn stick(
        &self,
        client: IpAddr,
        backend: &Backend,
        affinity: Option<Duration>,
        now: Instant,
    ) -> usize {
        let mut sticky = self.sticky.lock().unwrap_or_else(|e| e.into_inner());
        if affinity.is_some() {
            sticky.put(client, (backend.address, now));
        }
        sticky.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn backends(n: u8) -> Vec<Backend> {
        (1..=n)
            .map(|i| Backend {
                address: format!("10.1.0.{i}:80").parse().unwrap(),
                node: None,
            })
            .collect()
    }

    #[test]
    fn round_robin_visits_every_backend_in_turn() {
        let b = Balancer::new(100);
        let list = backends(3);
        let client: IpAddr = "10.9.0.1".parse().unwrap();
        let now = Instant::now();
        let firsts: Vec<_> = (0..6)
            .map(|_| b.order(&list, client, None, now)[0].clone())
            .collect();
        assert_eq!(firsts[..3], list[..]);
        assert_eq!(firsts[3..], list[..]);
        // Every order lists every backend once, for failover.
        assert_eq!(b.order(&list, client, None, now).len(), 3);
    }

    #[test]
    fn affinity_sticks_until_the_timeout_or_the_backend_goes() {
        let b = Balancer::new(100);
        let list = backends(3);
        let client: IpAddr = "10.9.0.1".parse().unwrap();
        let t0 = Instant::now();
        let ttl = Some(Duration::from_secs(10));
        let first = b.order(&list, client, ttl, t0)[0].clone();
        b.stick(client, &first, ttl, t0);
        for s in 1..5 {
            assert_eq!(
                b.order(&list, client, ttl, t0 + Duration::from_secs(s))[0],
                first
            );
        }
        let later = t0 + Duration::from_secs(11);
        let picks: Vec<_> = (0..3)
            .map(|_| b.order(&list, client, ttl, later)[0].clone())
            .collect();
        assert!(
            picks.iter().any(|p| *p != first),
            "expired affinity still sticks"
        );
        let without: Vec<_> = list.iter().filter(|x| **x != first).cloned().collect();
        assert_ne!(b.order(&without, client, ttl, t0)[0], first);
    }

    proptest! {
        /// However many clients come, the table holds at most its capacity,
        /// and the most recent `capacity` clients still stick.
        #[test]
        fn remembers_at_most_its_capacity_and_the_latest_clients(
            capacity in 1usize..64,
            clients in proptest::collection::vec(any::<u32>(), 0..400),
        ) {
            let b = Balancer::new(capacity);
            let list = backends(4);
            let ttl = Some(Duration::from_secs(60));
            let now = Instant::now();
            let mut went = std::collections::HashMap::new();
            for c in &clients {
                let ip = IpAddr::from(c.to_be_bytes());
                let first = b.order(&list, ip, ttl, now)[0].clone();
                let held = b.stick(ip, &first, ttl, now);
                prop_assert!(held <= capacity);
                went.insert(ip, first);
            }
            let mut recent: Vec<IpAddr> = Vec::new();
            for c in clients.iter().rev() {
                let ip = IpAddr::from(c.to_be_bytes());
                if !recent.contains(&ip) {
                    recent.push(ip);
                }
                if recent.len() == capacity {
                    break;
                }
            }
            for ip in recent {
                prop_assert_eq!(&b.order(&list, ip, ttl, now)[0], &went[&ip]);
            }
        }
    }
}
