//! Where a Gateway listener sends a connection or flow: the route (the first,
//! or on a TLS passthrough port the one whose hostnames best match the
//! ClientHello's server name), then a share of that route by weight. Pure.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::api::hostname;

/// A backend a listener may send a connection or flow to (here, where the
/// choice among backends is made; [`super::plan`] builds them).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    /// Where to connect.
    pub address: SocketAddr,
    /// The endpoint's node.
    pub node: Option<String>,
}

/// A Gateway port's routes, as its listener runs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    /// TLS passthrough: the route is chosen by the ClientHello's server name.
    pub sni: bool,
    /// The attached routes, oldest first.
    pub routes: Vec<Route>,
}

/// One attached route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// `Kind namespace/name`, for logs.
    pub name: String,
    /// Server names it takes (TLS only; empty: every name, and clients that
    /// send none).
    pub hostnames: Vec<String>,
    /// Its backend references with their weights.
    pub shares: Vec<Share>,
}

/// One backend reference of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// Its weight among the route's shares.
    pub weight: u32,
    /// Its usable endpoints. Empty (an unusable reference, or a Service with
    /// no ready endpoint): the connections its weight draws are refused, as
    /// the Gateway API asks, not spread over the other shares.
    pub backends: Vec<Backend>,
}

/// How well a route's hostname covers a server name: higher is better.
/// An exact name beats every wildcard, a longer wildcard a shorter one, and
/// a route without hostnames comes last.
fn specificity(pattern: &str, name: &str) -> Option<(u8, usize)> {
    if !hostname::matches(pattern, name) {
        return None;
    }
    Some(match pattern.starts_with("*.") {
        false => (2, pattern.len()),
        true => (1, pattern.len()),
    })
}

impl Routing {
    /// Every backend of every route, once, in order.
    pub fn backends(&self) -> Vec<Backend> {
        let all: std::collections::BTreeSet<&Backend> = self
            .routes
            .iter()
            .flat_map(|r| &r.shares)
            .flat_map(|s| &s.backends)
            .collect();
        all.into_iter().cloned().collect()
    }

    /// The routes with only the backends of `ip`'s address family: what a
    /// listener on `ip` can connect to.
    pub fn of_family(&self, ip: std::net::IpAddr) -> Routing {
        let mut out = self.clone();
        for share in out.routes.iter_mut().flat_map(|r| r.shares.iter_mut()) {
            share
                .backends
                .retain(|b| b.address.is_ipv4() == ip.is_ipv4());
        }
        out
    }

    /// The route for a connection whose ClientHello named `server_name`
    /// (`None`: no name, or not a TLS port): on a TCP or UDP port the first
    /// route; on a TLS port the most specific match, the oldest among equals.
    /// `None` when no route takes the name.
    pub fn route(&self, server_name: Option<&str>) -> Option<&Route> {
        if !self.sni {
            return self.routes.first();
        }
        let mut best: Option<((u8, usize), &Route)> = None;
        for route in &self.routes {
            let score = if route.hostnames.is_empty() {
                Some((0, 0))
            } else {
                server_name.and_then(|name| {
                    route
                        .hostnames
                        .iter()
                        .filter_map(|p| specificity(p, name))
                        .max()
                })
            };
            if let Some(score) = score
                && best.is_none_or(|(b, _)| score > b)
            {
                best = Some((score, route));
            }
        }
        best.map(|(_, r)| r)
    }
}

/// Spreads a listener's connections over a route's shares by weight.
///
/// The n-th pick takes the point `frac(n·φ)` of the weights laid end to end:
/// the golden-ratio sequence fills the interval evenly at every length, so
/// any run of picks — not only whole rounds — comes within a few
/// connections of the weights, without a lock or a per-route state that
/// would have to survive route changes.
#[derive(Debug, Default)]
pub struct Spreader {
    picks: AtomicU64,
}

/// 1/φ as a fraction of 2⁶⁴ (Fibonacci hashing's constant): the step is
/// taken in integers, so it stays exact however many picks a listener makes.
const STEP: u64 = 0x9E37_79B9_7F4A_7C15;

impl Spreader {
    /// The share the next connection of `route` goes to; `None` when every
    /// weight is zero (the route is refused).
    pub fn share<'a>(&self, route: &'a Route) -> Option<&'a Share> {
        let n = self.picks.fetch_add(1, Ordering::Relaxed);
        pick(&route.shares, n)
    }
}

/// The share the `n`-th pick lands on.
fn pick(shares: &[Share], n: u64) -> Option<&Share> {
    let total: u64 = shares.iter().map(|s| u64::from(s.weight)).sum();
    if total == 0 {
        return None;
    }
    let fraction = n.wrapping_mul(STEP);
    let point = ((u128::from(fraction) * u128::from(total)) >> 64) as u64;
    let mut end = 0u64;
    shares.iter().find(|s| {
        end += u64::from(s.weight);
        point < end
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn backend(i: u8) -> Backend {
        Backend {
            address: format!("10.1.0.{i}:80").parse().unwrap(),
            node: None,
        }
    }

    fn route(name: &str, hostnames: &[&str]) -> Route {
        Route {
            name: name.into(),
            hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
            shares: vec![Share {
                weight: 1,
                backends: vec![backend(1)],
            }],
        }
    }

    fn routed(sni: bool, routes: Vec<Route>) -> Routing {
        Routing { sni, routes }
    }

    fn chosen(r: &Routing, name: Option<&str>) -> Option<String> {
        r.route(name).map(|r| r.name.clone())
    }

    #[test]
    fn the_most_specific_hostname_wins_then_the_oldest() {
        let r = routed(
            true,
            vec![
                route("any", &[]),
                route("wild", &["*.example.com"]),
                route("deep", &["*.db.example.com"]),
                route("exact", &["pg.db.example.com"]),
                route("exact-later", &["pg.db.example.com"]),
            ],
        );
        let pick = |n| chosen(&r, Some(n));
        assert_eq!(pick("pg.db.example.com").as_deref(), Some("exact"));
        assert_eq!(pick("PG.DB.example.com").as_deref(), Some("exact"));
        assert_eq!(pick("my.db.example.com").as_deref(), Some("deep"));
        assert_eq!(pick("web.example.com").as_deref(), Some("wild"));
        assert_eq!(pick("example.org").as_deref(), Some("any"));
        assert_eq!(chosen(&r, None).as_deref(), Some("any"));
    }

    #[test]
    fn a_name_no_route_takes_gets_no_route() {
        let r = routed(true, vec![route("a", &["a.example.com"])]);
        assert_eq!(chosen(&r, Some("b.example.com")), None);
        assert_eq!(chosen(&r, None), None, "no server name, no hostname route");
        assert_eq!(chosen(&routed(true, vec![]), Some("a.example.com")), None);
    }

    #[test]
    fn tcp_and_udp_ports_take_the_first_route_whatever_the_name() {
        let r = routed(
            false,
            vec![route("first", &["x.example.com"]), route("second", &[])],
        );
        assert_eq!(chosen(&r, Some("y.example.com")).as_deref(), Some("first"));
        assert_eq!(chosen(&r, None).as_deref(), Some("first"));
    }

    #[test]
    fn zero_weights_refuse_and_a_zero_share_is_never_picked() {
        let shares = |w: &[u32]| -> Vec<Share> {
            w.iter()
                .enumerate()
                .map(|(i, w)| Share {
                    weight: *w,
                    backends: vec![backend(i as u8)],
                })
                .collect()
        };
        assert!(pick(&shares(&[0, 0]), 7).is_none());
        assert!(pick(&[], 0).is_none());
        let s = shares(&[0, 3, 0]);
        for n in 0..100 {
            assert_eq!(pick(&s, n).unwrap().backends[0], backend(1));
        }
    }

    /// Hostnames over a small alphabet, so that routes and names overlap.
    fn pattern() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ab]\\.[ab]\\.example",
            "\\*\\.[ab]\\.example",
            Just("*.example".to_string()),
        ]
    }

    proptest! {
        /// The chosen route takes the name, no route takes it more
        /// specifically, and among equals it is the oldest; a name some
        /// route takes is never refused.
        #[test]
        fn the_chosen_route_is_the_most_specific_then_the_oldest(
            routes in proptest::collection::vec(proptest::collection::vec(pattern(), 0..3), 0..6),
            name in "[ab]\\.[ab]\\.example",
        ) {
            let routing = Routing {
                sni: true,
                routes: routes
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        let h: Vec<&str> = h.iter().map(String::as_str).collect();
                        route(&i.to_string(), &h)
                    })
                    .collect(),
            };
            let score = |r: &Route| {
                if r.hostnames.is_empty() {
                    return Some((0, 0));
                }
                r.hostnames.iter().filter_map(|p| specificity(p, &name)).max()
            };
            match routing.route(Some(&name)) {
                None => prop_assert!(routing.routes.iter().all(|r| score(r).is_none())),
                Some(chosen) => {
                    let best = score(chosen).expect("the chosen route takes the name");
                    let index: usize = chosen.name.parse().unwrap();
                    for (i, r) in routing.routes.iter().enumerate() {
                        if let Some(s) = score(r) {
                            prop_assert!(s < best || (s == best && i >= index),
                                "route {i} ({:?}) beats {index} ({:?})", r.hostnames, chosen.hostnames);
                        }
                    }
                }
            }
        }

        /// Every run of consecutive picks, from any start, gives each share
        /// its weight's part of the run within a few picks.
        #[test]
        fn any_run_of_picks_follows_the_weights(
            weights in proptest::collection::vec(0u32..200, 1..6),
            start in any::<u64>(),
            len in 1usize..3000,
        ) {
            let shares: Vec<Share> = weights
                .iter()
                .enumerate()
                .map(|(i, w)| Share { weight: *w, backends: vec![backend(i as u8)] })
                .collect();
            let total: u32 = weights.iter().sum();
            let mut counts = vec![0usize; shares.len()];
            for n in (0..len as u64).map(|i| start.wrapping_add(i)) {
                match pick(&shares, n) {
                    Some(s) => counts[shares.iter().position(|x| std::ptr::eq(x, s)).unwrap()] += 1,
                    None => prop_assert_eq!(total, 0),
                }
            }
            if total > 0 {
                for (i, w) in weights.iter().enumerate() {
                    let expected = len as f64 * f64::from(*w) / f64::from(total);
                    let off = (counts[i] as f64 - expected).abs();
                    prop_assert!(off <= 4.0 + (len as f64).ln(),
                        "share {i} weight {w}/{total}: {} of {len}, expected {expected:.1}", counts[i]);
                }
            }
        }
    }
}
