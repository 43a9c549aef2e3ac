//! `IPAddressPool`: the addresses ironlb may hand out, and to whom.

// Each `printcolumn(...)` repeats `type_ = ...`, which clippy mistakes for a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A set of addresses ironlb may assign to `type: LoadBalancer` Services.
///
/// Entries may mix IPv4 and IPv6 (a dual-stack Service takes one address of each
/// family from a single pool). Pools must not overlap: when two do, the pool that
/// was created later is not used and says so in its `Valid` condition.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ironlb.dev",
    version = "v1alpha1",
    kind = "IPAddressPool",
    plural = "ipaddresspools",
    shortname = "ippool",
    category = "ironlb",
    status = "IPAddressPoolStatus",
    doc = "A set of addresses ironlb may assign to type: LoadBalancer Services.",
    printcolumn(name = "Addresses", type_ = "string", json_path = ".spec.addresses"),
    printcolumn(
        name = "Auto Assign",
        type_ = "boolean",
        json_path = ".spec.autoAssign"
    ),
    printcolumn(
        name = "Assigned v4",
        type_ = "integer",
        json_path = ".status.assignedIPv4",
        description = "IPv4 addresses held by Services"
    ),
    printcolumn(
        name = "Available v4",
        type_ = "integer",
        json_path = ".status.availableIPv4",
        description = "IPv4 addresses still free"
    ),
    printcolumn(
        name = "Assigned v6",
        type_ = "integer",
        json_path = ".status.assignedIPv6",
        description = "IPv6 addresses held by Services"
    ),
    printcolumn(
        name = "Available v6",
        type_ = "string",
        json_path = ".status.availableIPv6",
        description = "IPv6 addresses still free (a decimal string: it may exceed 64 bits)"
    ),
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Valid\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolSpec {
    /// The pool's addresses: CIDRs (`192.168.10.0/24`, `fd00::/120`), ranges
    /// (`192.168.10.10-192.168.10.50`) and single addresses, IPv4 and IPv6 mixed.
    #[schemars(
        length(min = 1, max = 128),
        inner(length(min = 1, max = 100)),
        transform = entry_rules
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub addresses: Vec<String>,

    /// Whether Services that don't ask for this pool or one of its addresses by
    /// name may get an address from it.
    #[serde(default = "default_auto_assign")]
    pub auto_assign: bool,

    /// Skip IPv4 addresses ending in `.0` and `.255`, which some old network gear
    /// mistakes for broadcast addresses.
    #[serde(default, rename = "avoidBuggyIPs")]
    pub avoid_buggy_ips: bool,

    /// Restricts automatic assignment from this pool to some Services, and orders
    /// the pools that match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_allocation: Option<ServiceAllocation>,

    /// Lets Services of different namespaces share this pool's addresses (with
    /// the same `allow-shared-ip` key), when both namespaces are listed or
    /// selected here. Without it, a Service shares an address only with
    /// Services of its own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_namespace_sharing: Option<CrossNamespaceSharing>,
}

/// Namespaces whose Services may share one address of the pool with each
/// other. `namespaceSelectors: [{}]` selects every namespace: MetalLB's
/// behaviour, which lets any namespace's Service that knows (or guesses) a
/// sharing key join another's address.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CrossNamespaceSharing {
    /// Namespaces by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Selectors over namespace labels; an empty selector selects every
    /// namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_selectors: Vec<LabelSelector>,
}

/// Every entry parses as a CIDR, a single address, or a two-ended range whose ends
/// are of one family. Uses the Kubernetes CEL IP/CIDR and string libraries.
const ENTRY_SYNTAX_RULE: &str = "isCIDR(self) || isIP(self) || \
     (self.split('-').size() == 2 && isIP(self.split('-')[0].trim()) && isIP(self.split('-')[1].trim()) \
     && ip(self.split('-')[0].trim()).family() == ip(self.split('-')[1].trim()).family())";

/// The message of [`ENTRY_SYNTAX_RULE`].
pub const ENTRY_SYNTAX_MESSAGE: &str = "must be a CIDR (192.168.10.0/24), a range of one family \
     (192.168.10.10-192.168.10.50) or a single address";

/// A CIDR must be its own network address: `10.0.0.5/24` is almost always a typo
/// for `10.0.0.0/24` or `10.0.0.5/32`, and guessing which would hand out
/// addresses the user never meant to give away.
const HOST_BITS_RULE: &str = "!isCIDR(self) || cidr(self).masked().ip() == cidr(self).ip()";

/// Names the entry and both things the user may have meant. It cannot print the
/// masked network itself: the API server estimates `string()` of a CIDR value as
/// unbounded and refuses the CRD; only pieces of `self` (at most 100 characters)
/// keep the estimate bounded. The controller's `Valid` condition names the network.
const HOST_BITS_MESSAGE: &str = "'host bits are set in ' + self + ': write the network address with /' + \
     self.split('/')[1] + ' (the whole network) or ' + self.split('/')[0] + \
     (cidr(self).ip().family() == 4 ? '/32' : '/128') + ' (one address)'";

/// The special-purpose kinds the schema refuses, as (CEL predicate over an
/// address expression, what to call it). The API server's IP library can only
/// test single addresses, so a CIDR is judged by its network address and a
/// range by its two ends; the controller's `Valid` condition catches an entry
/// that only reaches into such a block in its middle (`126.0.0.0/7`).
const SPECIAL_KINDS: [(&str, &str); 4] = [
    (
        "{a}.isUnspecified()",
        "the unspecified address (0.0.0.0, ::)",
    ),
    ("{a}.isLoopback()", "a loopback address (127.0.0.0/8, ::1)"),
    (
        "{a}.isLinkLocalUnicast()",
        "a link-local address (169.254.0.0/16, fe80::/10)",
    ),
    (
        "({a}.isLinkLocalMulticast() || !({a}.isGlobalUnicast() || {a}.isUnspecified() || \
         {a}.isLoopback() || {a}.isLinkLocalUnicast()))",
        "a multicast or broadcast address (224.0.0.0/4, 255.255.255.255, ff00::/8)",
    ),
];

/// One rule per kind in [`SPECIAL_KINDS`]: the entry's addresses, as far as
/// CEL can see them, are none of that kind.
fn special_purpose_rules() -> Vec<serde_json::Value> {
    let start = "self.split('-')[0].trim()";
    let end = "self.split('-')[1].trim()";
    SPECIAL_KINDS
        .iter()
        .map(|(predicate, kind)| {
            let of = |a: &str| predicate.replace("{a}", a);
            let rule = format!(
                "!((isIP(self) && {single}) || (isCIDR(self) && {network}) || \
                 (self.split('-').size() == 2 && isIP({start}) && isIP({end}) && ({first} || {last})))",
                single = of("ip(self)"),
                network = of("cidr(self).ip()"),
                first = of(&format!("ip({start})")),
                last = of(&format!("ip({end})")),
            );
            serde_json::json!({
                "rule": rule,
                "messageExpression": format!("self + ' is or holds {kind}, which no Service can be reached on'"),
            })
        })
        .collect()
}

/// Puts the entry rules on each item rather than on the list: the API server then
/// names the offending entry (`spec.addresses[2]`), and a rule over one string of
/// at most 100 characters stays far inside the CEL cost budget, where a rule
/// (and above all a message expression) that filters and joins the whole list was
/// estimated at over 100 times the budget and refused.
fn entry_rules(schema: &mut schemars::Schema) {
    let mut rules = vec![
        serde_json::json!({"rule": ENTRY_SYNTAX_RULE, "message": ENTRY_SYNTAX_MESSAGE}),
        serde_json::json!({"rule": HOST_BITS_RULE, "messageExpression": HOST_BITS_MESSAGE}),
    ];
    rules.extend(special_purpose_rules());
    if let Some(items) = schema.get_mut("items").and_then(|i| i.as_object_mut()) {
        items.insert("x-kubernetes-validations".into(), rules.into());
    }
}

fn default_auto_assign() -> bool {
    true
}

/// Which Services a pool serves automatically, and in what order pools are tried.
///
/// A Service matches when its namespace is listed in `namespaces` or matched by
/// one of `namespaceSelectors` (when either is set), and its labels match one of
/// `serviceSelectors` (when set). Matching pools are tried before pools without a
/// `serviceAllocation`, lowest `priority` first, pools without a priority last,
/// then by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAllocation {
    /// Lower numbers are tried first; pools without a priority come last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Namespaces whose Services may use this pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Selectors over namespace labels; a Service in a matching namespace may use
    /// this pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_selectors: Vec<LabelSelector>,
    /// Selectors over Service labels; only matching Services may use this pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
}

/// What the controller observed about a pool.
///
/// Counts are `u64` here but `int64` in the schema: Kubernetes knows no `uint64`
/// format (the API server warns about it), and no pool holds 2^63 IPv4 addresses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct IPAddressPoolStatus {
    /// IPv4 addresses of this pool held by Services.
    #[serde(default, rename = "assignedIPv4")]
    #[schemars(extend("format" = "int64"))]
    pub assigned_ipv4: u64,
    /// IPv4 addresses of this pool still free.
    #[serde(default, rename = "availableIPv4")]
    #[schemars(extend("format" = "int64"))]
    pub available_ipv4: u64,
    /// IPv6 addresses of this pool held by Services.
    #[serde(default, rename = "assignedIPv6")]
    #[schemars(extend("format" = "int64"))]
    pub assigned_ipv6: u64,
    /// IPv6 addresses of this pool still free, in decimal: a /48 holds 2^80.
    #[serde(default, rename = "availableIPv6")]
    pub available_ipv6: String,
    /// `Valid`: whether the pool is used, and if not, which entry or which other
    /// pool is the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
