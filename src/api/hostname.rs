//! Gateway API hostnames: exact names and `*.` wildcards, as listeners and
//! TLSRoutes write them, and as a ClientHello's SNI is matched against them.
//!
//! A wildcard `*.example.com` stands for one or more labels in front of
//! `example.com` (never `example.com` itself).

/// Whether `pattern` is a hostname as the Gateway API writes them: DNS
/// labels (RFC 1123), the first of which may be a `*` wildcard.
pub fn valid(pattern: &str) -> bool {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Whether `name` (an SNI hostname) is one `pattern` covers. Both are
/// compared without regard to ASCII case.
pub fn matches(pattern: &str, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .strip_suffix(suffix)
            .and_then(|front| front.strip_suffix('.'))
            .is_some_and(|front| !front.is_empty()),
        None => pattern == name,
    }
}

/// The hostnames a listener (`None`: any) and a route's hostname both
/// cover, as the more specific of the two: `None` when they share none.
pub fn intersect(listener: Option<&str>, route: &str) -> Option<String> {
    let Some(listener) = listener else {
        return Some(route.to_ascii_lowercase());
    };
    let (l, r) = (listener.to_ascii_lowercase(), route.to_ascii_lowercase());
    match (l.starts_with("*."), r.starts_with("*.")) {
        (false, false) => (l == r).then_some(l),
        (false, true) => matches(&r, &l).then_some(l),
        (true, false) => matches(&l, &r).then_some(r),
        // Two wildcards share names when one's suffix ends the other's.
        (true, true) => {
            if l == r || matches(&l, &r[2..]) {
                Some(r)
            } else if matches(&r, &l[2..]) {
                Some(l)
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hostnames_are_dns_labels_with_an_optional_leading_wildcard() {
        for good in ["a.example.com", "*.example.com", "localhost", "x-1.y"] {
            assert!(valid(good), "{good}");
        }
        for bad in [
            "", "*.", "*", "a.*.com", "a..b", "-a.com", "a-.com", "a.com.", "a b.com", "*.*.com",
        ] {
            assert!(!valid(bad), "{bad}");
        }
        assert!(!valid(&format!("{}.com", "a".repeat(64))));
    }

    #[test]
    fn wildcards_cover_one_or_more_labels_and_never_the_bare_suffix() {
        assert!(matches("*.example.com", "foo.example.com"));
        assert!(matches("*.example.com", "foo.bar.example.com"));
        assert!(matches("*.example.com", "FOO.Example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", "fooexample.com"));
        assert!(!matches("*.example.com", ".example.com"));
        assert!(matches("db.example.com", "DB.example.com"));
        assert!(!matches("db.example.com", "x.db.example.com"));
    }

    #[test]
    fn intersections_keep_the_more_specific_name() {
        assert_eq!(
            intersect(None, "a.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            intersect(Some("*.example.com"), "a.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            intersect(Some("a.example.com"), "*.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            intersect(Some("*.example.com"), "*.b.example.com").as_deref(),
            Some("*.b.example.com")
        );
        assert_eq!(
            intersect(Some("*.b.example.com"), "*.example.com").as_deref(),
            Some("*.b.example.com")
        );
        assert_eq!(
            intersect(Some("*.example.com"), "*.example.com").as_deref(),
            Some("*.example.com")
        );
        assert_eq!(intersect(Some("*.example.com"), "*.example.org"), None);
        assert_eq!(intersect(Some("a.example.com"), "b.example.com"), None);
        assert_eq!(intersect(Some("*.example.com"), "example.com"), None);
    }

    fn label() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "c", "example", "com"]).prop_map(String::from)
    }

    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(label(), 1..5).prop_map(|l| l.join("."))
    }

    fn pattern() -> impl Strategy<Value = String> {
        (any::<bool>(), name()).prop_map(|(w, n)| if w { format!("*.{n}") } else { n })
    }

    proptest! {
        /// A name is covered by both the listener's and the route's pattern
        /// exactly when it is covered by their intersection.
        #[test]
        fn the_intersection_covers_exactly_what_both_cover(
            listener in pattern(), route in pattern(), n in name(),
        ) {
            let both = matches(&listener, &n) && matches(&route, &n);
            let through = intersect(Some(&listener), &route).is_some_and(|i| matches(&i, &n));
            prop_assert_eq!(both, through, "{} ∩ {} = {:?} for {}", listener, route, intersect(Some(&listener), &route), n);
        }
    }
}
