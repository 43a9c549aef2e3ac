//! Choosing a backend: round robin, with `sessionAffinity: ClientIP`. Pure but
//! for the clock, which callers pass in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::plan::Backend;

/// Affinity entries kept before expired ones are swept.
const AFFINITY_SWEEP_AT: usize = 16_384;

/// One listener's choice of backends.
#[derive(Default)]
pub struct Balancer {
    next: AtomicUsize,
    sticky: Mutex<HashMap<IpAddr, (Backend, Instant)>>,
}

impl Balancer {
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
            if let Some((b, seen)) = sticky.get(&client)
                && now.duration_since(*seen) < timeout
                && let Some(i) = order.iter().position(|o| o == b)
            {
                let b = order.remove(i);
                order.insert(0, b);
            }
        }
        order
    }

    /// Records that `client` went to `backend` at `now`.
    pub fn stick(
        &self,
        client: IpAddr,
        backend: &Backend,
        affinity: Option<Duration>,
        now: Instant,
    ) {
        let Some(timeout) = affinity else { return };
        let mut sticky = self.sticky.lock().unwrap_or_else(|e| e.into_inner());
        if sticky.len() >= AFFINITY_SWEEP_AT {
            sticky.retain(|_, (_, seen)| now.duration_since(*seen) < timeout);
        }
        sticky.insert(client, (backend.clone(), now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let b = Balancer::default();
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
        let b = Balancer::default();
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
}
