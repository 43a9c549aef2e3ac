//! What the allocator knows of a Service, and MetalLB's rule for sharing an
//! address between Services.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use super::range::Family;
use super::selector::Labels;

/// Identifies a Service: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
}

impl ServiceKey {
    /// The key of `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A transport protocol: of a Service port, a Gateway listener's port, a
/// forwarder listener. The one type for it in ironlb.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP (allocated and announced; not forwarded).
    Sctp,
}

impl Protocol {
    /// As Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// A port's `protocol` field as Kubernetes reads it: TCP when unset.
    pub fn of_port(field: Option<&str>) -> Result<Self, String> {
        field.map_or(Ok(Protocol::Tcp), str::parse)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(format!(
                "protocol {other:?} is not one of \"TCP\", \"UDP\", \"SCTP\""
            )),
        }
    }
}

/// A Service port as the outside world sees it: protocol and `port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    /// The protocol.
    pub protocol: Protocol,
    /// The Service's `port` (not the target port).
    pub port: u16,
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)
    }
}

/// Where a Service's traffic goes once it reaches a node; two Services can share
/// an address only when this is equal, because the address is announced from one
/// node for both of them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `externalTrafficPolicy: Cluster`: any node can deliver.
    Cluster,
    /// `externalTrafficPolicy: Local`: only nodes with the selected pods can.
    Local {
        /// The Service's `spec.selector`.
        selector: BTreeMap<String, String>,
    },
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Cluster => f.write_str("externalTrafficPolicy Cluster"),
            Backend::Local { selector } => {
                f.write_str("externalTrafficPolicy Local with selector {")?;
                for (i, (k, v)) in selector.iter().enumerate() {
                    write!(f, "{}{k}={v}", if i == 0 { "" } else { "," })?;
                }
                f.write_str("}")
            }
        }
    }
}

/// The Service's `spec.ipFamilyPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FamilyPolicy {
    /// One address, of the primary family.
    #[default]
    SingleStack,
    /// One address per family when a pool can give both; else one.
    PreferDualStack,
    /// One address per family or none.
    RequireDualStack,
}

/// What a Service asks for, the allocator's whole view of it.
///
/// Built from a Kubernetes Service at the edge; annotations are parsed there, so
/// everything here is already valid in form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// `namespace/name`.
    pub key: ServiceKey,
    /// Creation time in seconds since the epoch; when two Services claim one
    /// address incompatibly, the older keeps it.
    pub created_at: i64,
    /// The Service's labels, for `serviceSelectors`.
    pub labels: Labels,
    /// Its namespace's labels, for `namespaceSelectors`.
    pub namespace_labels: Labels,
    /// `spec.ipFamilies`, primary first: one or two distinct families.
    pub families: Vec<Family>,
    /// `spec.ipFamilyPolicy`.
    pub family_policy: FamilyPolicy,
    /// Specific addresses asked for (`spec.loadBalancerIP` or the
    /// `load-balancer-ips` annotation), at most one per family.
    pub addresses: Vec<IpAddr>,
    /// A pool asked for by name.
    pub pool: Option<String>,
    /// The sharing key (`allow-shared-ip`); `None` never shares.
    pub sharing_key: Option<String>,
    /// The Service's ports.
    pub ports: Vec<Port>,
    /// Where its traffic goes.
    pub backend: Backend,
}

impl Service {
    /// A single-stack IPv4 Service with `externalTrafficPolicy: Cluster`, no ports
    /// and no requests: the start of a builder.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            key: ServiceKey::new(namespace, name),
            created_at: 0,
            labels: Labels::new(),
            namespace_labels: Labels::new(),
            families: vec![Family::V4],
            family_policy: FamilyPolicy::SingleStack,
            addresses: Vec::new(),
            pool: None,
            sharing_key: None,
            ports: Vec::new(),
            backend: Backend::Cluster,
        }
    }

    /// Sets the families and the policy.
    pub fn families(mut self, policy: FamilyPolicy, families: &[Family]) -> Self {
        self.family_policy = policy;
        self.families = families.to_vec();
        self
    }

    /// Asks for `ip`.
    pub fn address(mut self, ip: IpAddr) -> Self {
        self.addresses.push(ip);
        self
    }

    /// Asks for the pool `name`.
    pub fn pool(mut self, name: &str) -> Self {
        self.pool = Some(name.to_string());
        self
    }

    /// Sets the sharing key.
    pub fn sharing(mut self, key: &str) -> Self {
        self.sharing_key = Some(key.to_string());
        self
    }

    /// Adds a port.
    pub fn port(mut self, protocol: Protocol, port: u16) -> Self {
        self.ports.push(Port { protocol, port });
        self
    }

    /// Sets the backend.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Sets the creation time.
    pub fn created_at(mut self, seconds: i64) -> Self {
        self.created_at = seconds;
        self
    }

    /// Adds a Service label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds a label of the Service's namespace.
    pub fn namespace_label(mut self, key: &str, value: &str) -> Self {
        self.namespace_labels.insert(key.into(), value.into());
        self
    }

    /// The families this Service should get an address of, primary first.
    pub(crate) fn wanted_families(&self) -> Vec<Family> {
        let primary = self.families.first().copied().unwrap_or(Family::V4);
        match self.family_policy {
            FamilyPolicy::SingleStack => vec![primary],
            FamilyPolicy::PreferDualStack | FamilyPolicy::RequireDualStack => {
                let mut wanted = vec![primary];
                wanted.extend(self.families.iter().copied().find(|f| *f != primary));
                wanted
            }
        }
    }

    pub(crate) fn claim(&self) -> Claim {
        Claim {
            namespace: self.key.namespace.clone(),
            namespace_labels: self.namespace_labels.clone(),
            sharing_key: self.sharing_key.clone().filter(|k| !k.is_empty()),
            ports: self.ports.clone(),
            backend: self.backend.clone(),
            created_at: self.created_at,
        }
    }
}

/// What one Service holding an address says about how it may be shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Claim {
    pub(crate) namespace: String,
    pub(crate) namespace_labels: Labels,
    pub(crate) sharing_key: Option<String>,
    pub(crate) ports: Vec<Port>,
    pub(crate) backend: Backend,
    pub(crate) created_at: i64,
}

/// Who holds an address, as a refusal may show it to the Service asking: a
/// Service of another namespace is never named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A Service of the asker's own namespace.
    Named(ServiceKey),
    /// A Service of another namespace.
    OtherNamespace,
}

impl Holder {
    /// `holder` as the Service `asker` may learn of it.
    pub fn seen_by(holder: ServiceKey, asker: &ServiceKey) -> Self {
        if holder.namespace == asker.namespace {
            Holder::Named(holder)
        } else {
            Holder::OtherNamespace
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Named(key) => write!(f, "{key}"),
            Holder::OtherNamespace => f.write_str("a Service in another namespace"),
        }
    }
}

/// Why a Service may not share an address with one that holds it. What it
/// says of a holder in another namespace is only what the asker knows anyway
/// (its own key and backend), never the holder's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SharingRefusal {
    /// The holder is in another namespace and the pool does not let the two
    /// namespaces share.
    #[error(
        "the holder is in another namespace, and the address's pool does not let Services of \
         these namespaces share (its spec.crossNamespaceSharing)"
    )]
    OtherNamespace,
    /// Across namespaces, a Service with `externalTrafficPolicy: Local` would
    /// narrow where the address is announced to nodes with endpoints of both,
    /// which no two namespaces' Pods can promise.
    #[error(
        "externalTrafficPolicy Local shares an address only within its namespace: the address \
         is announced only where every Local Service on it has an endpoint"
    )]
    LocalAcrossNamespaces,
    /// The Service asking has no sharing key.
    #[error("this Service has no allow-shared-ip key")]
    NoKey,
    /// The holder has no sharing key.
    #[error("the holder has no allow-shared-ip key")]
    HolderHasNoKey,
    /// The keys differ.
    #[error(
        "allow-shared-ip keys differ ({ours:?} here{})",
        theirs.as_ref().map(|t| format!(", {t:?} on the holder")).unwrap_or_default()
    )]
    KeyMismatch {
        /// This Service's key.
        ours: String,
        /// The holder's key, when it is in the same namespace.
        theirs: Option<String>,
    },
    /// Both use the same protocol and port.
    #[error("both use {port}")]
    PortConflict {
        /// The port both use.
        port: Port,
    },
    /// The backends differ, so one node can't serve both.
    #[error("backends differ ({ours} here, {theirs} on the holder)")]
    BackendMismatch {
        /// This Service's backend.
        ours: Backend,
        /// The holder's backend. Only ever in the asker's namespace: across
        /// namespaces both are `Cluster` (a `Local` one is refused first).
        theirs: Backend,
    },
}

/// Whether a Service may join a holder on an address of a pool whose
/// cross-namespace rule is `across`. MetalLB's rule (the same non-empty key,
/// no common {protocol, port}, the same backend) within a namespace; across
/// namespaces only where the pool lets both namespaces share, and never for
/// `Local` Services. Namespaces are checked first, so a Service learns nothing
/// of another namespace's keys by trying them.
pub(crate) fn check_sharing(
    ours: &Claim,
    theirs: &Claim,
    across: Option<&super::NamespaceMatch>,
) -> Result<(), SharingRefusal> {
    let same_namespace = ours.namespace == theirs.namespace;
    if !same_namespace {
        let allowed = across.is_some_and(|rule| {
            rule.matches(&ours.namespace, &ours.namespace_labels)
                && rule.matches(&theirs.namespace, &theirs.namespace_labels)
        });
        if !allowed {
            return Err(SharingRefusal::OtherNamespace);
        }
        let local = |c: &Claim| matches!(c.backend, Backend::Local { .. });
        if local(ours) || local(theirs) {
            return Err(SharingRefusal::LocalAcrossNamespaces);
        }
    }
    let our_key = ours.sharing_key.as_ref().ok_or(SharingRefusal::NoKey)?;
    let their_key = theirs
        .sharing_key
        .as_ref()
        .ok_or(SharingRefusal::HolderHasNoKey)?;
    if our_key != their_key {
        return Err(SharingRefusal::KeyMismatch {
            ours: our_key.clone(),
            theirs: same_namespace.then(|| their_key.clone()),
        });
    }
    if let Some(port) = ours.ports.iter().find(|p| theirs.ports.contains(p)) {
        return Err(SharingRefusal::PortConflict { port: *port });
    }
    if ours.backend != theirs.backend {
        return Err(SharingRefusal::BackendMismatch {
            ours: ours.backend.clone(),
            theirs: theirs.backend.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::NamespaceMatch;

    fn claim(svc: Service) -> Claim {
        svc.claim()
    }

    #[test]
    fn dns_on_tcp_and_udp_53_shares() {
        let tcp = claim(
            Service::new("d", "tcp")
                .sharing("dns")
                .port(Protocol::Tcp, 53),
        );
        let udp = claim(
            Service::new("d", "udp")
                .sharing("dns")
                .port(Protocol::Udp, 53),
        );
        assert_eq!(check_sharing(&tcp, &udp, None), Ok(()));
    }

    #[test]
    fn a_service_without_a_key_never_shares() {
        let keyed = claim(Service::new("d", "a").sharing("k").port(Protocol::Tcp, 1));
        let bare = claim(Service::new("d", "b").port(Protocol::Tcp, 2));
        assert_eq!(
            check_sharing(&bare, &keyed, None),
            Err(SharingRefusal::NoKey)
        );
        assert_eq!(
            check_sharing(&keyed, &bare, None),
            Err(SharingRefusal::HolderHasNoKey)
        );
        let empty = claim(Service::new("d", "c").sharing("").port(Protocol::Tcp, 3));
        assert_eq!(
            check_sharing(&empty, &keyed, None),
            Err(SharingRefusal::NoKey),
            "an empty key is no key"
        );
    }

    #[test]
    fn different_keys_do_not_share() {
        let a = claim(Service::new("d", "a").sharing("x"));
        let b = claim(Service::new("d", "b").sharing("y"));
        assert!(matches!(
            check_sharing(&a, &b, None),
            Err(SharingRefusal::KeyMismatch { .. })
        ));
    }

    #[test]
    fn the_same_port_and_protocol_do_not_share() {
        let a = claim(
            Service::new("d", "a")
                .sharing("k")
                .port(Protocol::Tcp, 80)
                .port(Protocol::Tcp, 443),
        );
        let b = claim(Service::new("d", "b").sharing("k").port(Protocol::Tcp, 443));
        let err = check_sharing(&b, &a, None).unwrap_err();
        assert_eq!(err.to_string(), "both use TCP/443");
    }

    #[test]
    fn backends_must_match() {
        let sel = |v: &str| Backend::Local {
            selector: [("app".to_string(), v.to_string())].into(),
        };
        let cluster = claim(Service::new("d", "a").sharing("k").port(Protocol::Tcp, 1));
        let local_x = claim(
            Service::new("d", "b")
                .sharing("k")
                .port(Protocol::Tcp, 2)
                .backend(sel("x")),
        );
        let local_x2 = claim(
            Service::new("d", "c")
                .sharing("k")
                .port(Protocol::Tcp, 3)
                .backend(sel("x")),
        );
        let local_y = claim(
            Service::new("d", "e")
                .sharing("k")
                .port(Protocol::Tcp, 4)
                .backend(sel("y")),
        );
        assert!(matches!(
            check_sharing(&cluster, &local_x, None),
            Err(SharingRefusal::BackendMismatch { .. })
        ));
        assert_eq!(check_sharing(&local_x, &local_x2, None), Ok(()));
        let err = check_sharing(&local_x, &local_y, None).unwrap_err();
        assert!(err.to_string().contains("selector {app=y}"), "{err}");
    }

    #[test]
    fn another_namespace_shares_only_where_the_pool_allows_and_is_never_named() {
        let victim = claim(
            Service::new("team-a", "db")
                .sharing("db-key")
                .port(Protocol::Tcp, 5432),
        );
        let squatter = claim(
            Service::new("tenant", "x")
                .sharing("db-key")
                .port(Protocol::Tcp, 80),
        );
        assert_eq!(
            check_sharing(&squatter, &victim, None),
            Err(SharingRefusal::OtherNamespace),
            "the right key does not open another namespace's address"
        );
        let only_a = NamespaceMatch {
            namespaces: vec!["team-a".into()],
            ..Default::default()
        };
        assert_eq!(
            check_sharing(&squatter, &victim, Some(&only_a)),
            Err(SharingRefusal::OtherNamespace),
            "both namespaces must be allowed"
        );
        let everyone = NamespaceMatch {
            namespace_selectors: vec![crate::ipam::LabelSelector::default()],
            ..Default::default()
        };
        assert_eq!(check_sharing(&squatter, &victim, Some(&everyone)), Ok(()));
        // Allowed namespaces, other keys: the holder's key is not told.
        let guess = claim(
            Service::new("tenant", "y")
                .sharing("guess")
                .port(Protocol::Tcp, 81),
        );
        let err = check_sharing(&guess, &victim, Some(&everyone)).unwrap_err();
        assert_eq!(
            err,
            SharingRefusal::KeyMismatch {
                ours: "guess".into(),
                theirs: None
            }
        );
        assert!(!err.to_string().contains("db-key"), "{err}");
        // Within a namespace, the holder's key is the asker's business.
        let neighbour = claim(
            Service::new("team-a", "z")
                .sharing("guess")
                .port(Protocol::Tcp, 82),
        );
        assert!(
            check_sharing(&neighbour, &victim, None)
                .unwrap_err()
                .to_string()
                .contains("\"db-key\" on the holder")
        );
    }

    #[test]
    fn local_services_never_share_across_namespaces() {
        let local = |ns: &str, name: &str, port| {
            claim(
                Service::new(ns, name)
                    .sharing("k")
                    .port(Protocol::Tcp, port)
                    .backend(Backend::Local {
                        selector: [("app".to_string(), "db".to_string())].into(),
                    }),
            )
        };
        let everyone = NamespaceMatch {
            namespace_selectors: vec![crate::ipam::LabelSelector::default()],
            ..Default::default()
        };
        // The same selector names other Pods in another namespace: the address
        // would go dark wherever the two have no endpoint together.
        assert_eq!(
            check_sharing(
                &local("tenant", "x", 1),
                &local("team-a", "db", 2),
                Some(&everyone)
            ),
            Err(SharingRefusal::LocalAcrossNamespaces)
        );
        let cluster = claim(
            Service::new("tenant", "c")
                .sharing("k")
                .port(Protocol::Tcp, 3),
        );
        assert_eq!(
            check_sharing(&cluster, &local("team-a", "db", 2), Some(&everyone)),
            Err(SharingRefusal::LocalAcrossNamespaces)
        );
        assert_eq!(
            check_sharing(&local("team-a", "db2", 1), &local("team-a", "db", 2), None),
            Ok(()),
            "one namespace, one selector: the same Pods"
        );
    }

    #[test]
    fn wanted_families_follow_the_policy() {
        use Family::*;
        let svc = |p, f: &[Family]| Service::new("n", "s").families(p, f).wanted_families();
        assert_eq!(svc(FamilyPolicy::SingleStack, &[V6, V4]), vec![V6]);
        assert_eq!(svc(FamilyPolicy::PreferDualStack, &[V6, V4]), vec![V6, V4]);
        assert_eq!(svc(FamilyPolicy::PreferDualStack, &[V4]), vec![V4]);
        assert_eq!(svc(FamilyPolicy::RequireDualStack, &[V4, V6]), vec![V4, V6]);
    }
}
