//! Service annotation names ironlb reads, ours and MetalLB's.
//!
//! MetalLB's spellings are honoured exactly as MetalLB writes them, so a MetalLB
//! user can switch without editing a single Service. When a Service carries both
//! spellings of one request, ours wins: the `*_KEYS` arrays list the names in the
//! order they are consulted.

use std::collections::BTreeMap;

/// Asks for an address from the named `IPAddressPool`.
pub const ADDRESS_POOL: &str = "ironlb.dev/address-pool";
/// Asks for specific addresses: a comma-separated list, at most one per family.
pub const LOAD_BALANCER_IPS: &str = "ironlb.dev/load-balancer-ips";
/// The sharing key: Services with the same non-empty key may share an address
/// when their ports don't collide and their backends match.
pub const ALLOW_SHARED_IP: &str = "ironlb.dev/allow-shared-ip";
/// Who carries the traffic once it reaches the node: `kube-proxy` (default) or
/// ironlb's `embedded` forwarder.
pub const FORWARDING: &str = "ironlb.dev/forwarding";
/// With embedded forwarding, where packets are forwarded: `auto` (default:
/// in the kernel when the Service needs nothing user space gives), `kernel`
/// or `user`.
pub const FORWARDING_PATH: &str = "ironlb.dev/forwarding-path";
/// With embedded forwarding, send a PROXY protocol header (`v1` or `v2`) to the
/// backend before the client's bytes.
pub const PROXY_PROTOCOL: &str = "ironlb.dev/proxy-protocol";
/// Kubernetes' older spelling of `spec.loadBalancerSourceRanges` (comma
/// separated), honoured when the field is empty, as kube-proxy does: the way
/// a Gateway's `infrastructure.annotations` limit who may connect.
pub const SOURCE_RANGES: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// Written by the controller: the `IPAddressPool` the Service's addresses came
/// from. Speakers announce an address by this record and the advertisements,
/// so an address keeps answering while its pool is edited, invalid or being
/// deleted.
pub const ALLOCATED_FROM_POOL: &str = "ironlb.dev/ip-allocated-from-pool";
/// MetalLB's spelling of [`ALLOCATED_FROM_POOL`], read (never written) so
/// Services allocated by MetalLB keep their record after a switch.
pub const METALLB_ALLOCATED_FROM_POOL: &str = "metallb.io/ip-allocated-from-pool";
/// The names that record the pool, highest precedence first.
pub const ALLOCATED_FROM_POOL_KEYS: [&str; 2] = [ALLOCATED_FROM_POOL, METALLB_ALLOCATED_FROM_POOL];

/// MetalLB's current spelling of [`ADDRESS_POOL`].
pub const METALLB_ADDRESS_POOL: &str = "metallb.io/address-pool";
/// MetalLB's current spelling of [`LOAD_BALANCER_IPS`].
pub const METALLB_LOAD_BALANCER_IPS: &str = "metallb.io/loadBalancerIPs";
/// MetalLB's current spelling of [`ALLOW_SHARED_IP`].
pub const METALLB_ALLOW_SHARED_IP: &str = "metallb.io/allow-shared-ip";
/// MetalLB's older spelling of [`ADDRESS_POOL`].
pub const METALLB_LEGACY_ADDRESS_POOL: &str = "metallb.universe.tf/address-pool";
/// MetalLB's older spelling of [`LOAD_BALANCER_IPS`].
pub const METALLB_LEGACY_LOAD_BALANCER_IPS: &str = "metallb.universe.tf/loadBalancerIPs";
/// MetalLB's older spelling of [`ALLOW_SHARED_IP`].
pub const METALLB_LEGACY_ALLOW_SHARED_IP: &str = "metallb.universe.tf/allow-shared-ip";

/// The names that ask for a pool, highest precedence first.
pub const ADDRESS_POOL_KEYS: [&str; 3] = [
    ADDRESS_POOL,
    METALLB_ADDRESS_POOL,
    METALLB_LEGACY_ADDRESS_POOL,
];
/// The names that ask for specific addresses, highest precedence first.
pub const LOAD_BALANCER_IPS_KEYS: [&str; 3] = [
    LOAD_BALANCER_IPS,
    METALLB_LOAD_BALANCER_IPS,
    METALLB_LEGACY_LOAD_BALANCER_IPS,
];
/// The names that carry a sharing key, highest precedence first.
pub const ALLOW_SHARED_IP_KEYS: [&str; 3] = [
    ALLOW_SHARED_IP,
    METALLB_ALLOW_SHARED_IP,
    METALLB_LEGACY_ALLOW_SHARED_IP,
];

/// The first of `keys` present in `annotations`, as `(name, value)`, so an error
/// about the value can name the annotation the user actually wrote.
pub fn lookup<'a>(
    annotations: &'a BTreeMap<String, String>,
    keys: &[&'static str],
) -> Option<(&'static str, &'a str)> {
    keys.iter()
        .find_map(|key| annotations.get(*key).map(|value| (*key, value.as_str())))
}

/// Who carries a Service's traffic once it reaches the owning node
/// ([`FORWARDING`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Forwarding {
    /// kube-proxy or the CNI, as for any Service (`kube-proxy`, the default).
    #[default]
    KubeProxy,
    /// ironlb's embedded L4 forwarder (`embedded`); the Service status then says
    /// `ipMode: Proxy` so kube-proxy leaves the address alone.
    Embedded,
}

impl Forwarding {
    /// Reads the annotation's value.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "kube-proxy" => Ok(Forwarding::KubeProxy),
            "embedded" => Ok(Forwarding::Embedded),
            other => Err(format!(
                "{other:?} is not one of \"kube-proxy\", \"embedded\""
            )),
        }
    }

    /// The `status.loadBalancer.ingress[].ipMode` this mode needs.
    pub fn ip_mode(self) -> &'static str {
        match self {
            Forwarding::KubeProxy => "VIP",
            Forwarding::Embedded => "Proxy",
        }
    }
}

/// Where the embedded forwarder forwards a Service's packets
/// ([`FORWARDING_PATH`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ForwardingPath {
    /// In the kernel when the Service needs no user-space feature (PROXY
    /// protocol, Gateway routes, session affinity) and the node allows it;
    /// in user space otherwise.
    #[default]
    Auto,
    /// In the kernel (nftables DNAT with connection tracking); a Service that
    /// also asks for a user-space feature is refused.
    Kernel,
    /// In ironlb's user-space forwarder, with its limits and timeouts.
    User,
}

impl ForwardingPath {
    /// Reads the annotation's value.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "auto" => Ok(ForwardingPath::Auto),
            "kernel" => Ok(ForwardingPath::Kernel),
            "user" => Ok(ForwardingPath::User),
            other => Err(format!(
                "{other:?} is not one of \"auto\", \"kernel\", \"user\""
            )),
        }
    }
}

/// Which PROXY protocol header the embedded forwarder sends a backend first
/// ([`PROXY_PROTOCOL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProxyVersion {
    /// The text header (`PROXY TCP4 …\r\n`).
    V1,
    /// The binary header.
    V2,
}

impl ProxyVersion {
    /// Reads the annotation's value.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "v1" => Ok(ProxyVersion::V1),
            "v2" => Ok(ProxyVersion::V2),
            other => Err(format!("{other:?} is not one of \"v1\", \"v2\"")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ours_win_over_both_metallb_spellings() {
        let a = annotations(&[
            (METALLB_LEGACY_ADDRESS_POOL, "legacy"),
            (METALLB_ADDRESS_POOL, "metallb"),
            (ADDRESS_POOL, "ours"),
        ]);
        assert_eq!(lookup(&a, &ADDRESS_POOL_KEYS), Some((ADDRESS_POOL, "ours")));
    }

    #[test]
    fn metallb_io_wins_over_the_legacy_spelling() {
        let a = annotations(&[
            (METALLB_LEGACY_LOAD_BALANCER_IPS, "10.0.0.1"),
            (METALLB_LOAD_BALANCER_IPS, "10.0.0.2"),
        ]);
        assert_eq!(
            lookup(&a, &LOAD_BALANCER_IPS_KEYS),
            Some((METALLB_LOAD_BALANCER_IPS, "10.0.0.2"))
        );
    }

    #[test]
    fn forwarding_values_parse_and_map_to_ip_modes() {
        assert_eq!(
            Forwarding::parse("embedded").map(Forwarding::ip_mode),
            Ok("Proxy")
        );
        assert_eq!(
            Forwarding::parse(" kube-proxy ").map(Forwarding::ip_mode),
            Ok("VIP")
        );
        assert_eq!(
            Forwarding::parse("ebpf"),
            Err("\"ebpf\" is not one of \"kube-proxy\", \"embedded\"".to_string())
        );
    }

    #[test]
    fn proxy_versions_and_forwarding_paths_parse_and_others_are_named_in_the_error() {
        assert_eq!(ProxyVersion::parse(" v2"), Ok(ProxyVersion::V2));
        assert_eq!(ForwardingPath::parse(" kernel"), Ok(ForwardingPath::Kernel));
        assert_eq!(ForwardingPath::parse("user"), Ok(ForwardingPath::User));
        assert_eq!(ForwardingPath::parse("auto"), Ok(ForwardingPath::Auto));
        let e = ForwardingPath::parse("ebpf").unwrap_err();
        assert!(e.contains("\"ebpf\"") && e.contains("\"kernel\""), "{e}");
        assert_eq!(ProxyVersion::parse("v1"), Ok(ProxyVersion::V1));
        let e = ProxyVersion::parse("2").unwrap_err();
        assert!(e.contains("\"2\"") && e.contains("v1"), "{e}");
    }

    #[test]
    fn the_legacy_spelling_alone_is_honoured() {
        let a = annotations(&[(METALLB_LEGACY_ALLOW_SHARED_IP, "dns")]);
        assert_eq!(
            lookup(&a, &ALLOW_SHARED_IP_KEYS),
            Some((METALLB_LEGACY_ALLOW_SHARED_IP, "dns"))
        );
        assert_eq!(lookup(&a, &ADDRESS_POOL_KEYS), None);
    }
}
