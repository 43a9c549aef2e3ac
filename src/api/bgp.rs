//! The BGP kinds: `BGPPeer` (a router to talk to), `BGPAdvertisement` (which
//! pools go to which peers, and with which attributes), `BFDProfile` (fast
//! failure detection for a peer), `Community` (names for community values), and
//! the speakers' reports `BGPSessionState` (one per node and peer) and
//! `ServiceBGPStatus` (one per Service and advertising node).
//!
//! Field names are MetalLB's (`metallb.io/v1beta2` BGPPeer, `v1beta1` for the
//! others), so a migration renames the group and nothing else. What a schema can
//! check is checked here, by the API server at `kubectl apply`; what needs other
//! objects (a profile or secret that does not exist, an unknown community name)
//! is reported by the speaker as an event on the object.

// Each `printcolumn(...)` repeats `type_ = ...`, which clippy mistakes for a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Go duration as `metav1.Duration` writes it (`90s`, `1m30s`, `500ms`): the
/// pattern refuses what CEL's `duration()` could not parse, so the rules that
/// compare durations never fail to evaluate.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A BGP router the speakers open sessions to.
///
/// Every node selected by `nodeSelectors` (all nodes when empty) opens its own
/// session to `peerAddress`, from the node's own address (or `sourceAddress`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ironlb.dev",
    version = "v1alpha1",
    kind = "BGPPeer",
    plural = "bgppeers",
    shortname = "bgppeer",
    category = "ironlb",
    doc = "A BGP router that ironlb's speakers advertise Service addresses to.",
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.peerAddress"),
    printcolumn(name = "My ASN", type_ = "integer", json_path = ".spec.myASN"),
    printcolumn(name = "Peer ASN", type_ = "integer", json_path = ".spec.peerASN"),
    printcolumn(name = "BFD Profile", type_ = "string", json_path = ".spec.bfdProfile"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.holdTime) || !has(self.keepaliveTime) || !self.holdTime.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$') || !self.keepaliveTime.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$') || duration(self.holdTime) == duration('0s') || duration(self.keepaliveTime) < duration(self.holdTime)",
        "message": "keepaliveTime must be shorter than holdTime",
        "fieldPath": ".keepaliveTime",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "!has(self.sourceAddress) || !isIP(self.sourceAddress) || !isIP(self.peerAddress) || ip(self.sourceAddress).family() == ip(self.peerAddress).family()",
        "message": "sourceAddress must be of the same family as peerAddress",
        "fieldPath": ".sourceAddress",
        "reason": "FieldValueInvalid"
    }
]))]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerSpec {
    /// The autonomous system the speakers are in (4-byte ASNs allowed).
    #[serde(rename = "myASN")]
    #[schemars(range(min = 1, max = 4294967295u32), extend("format" = "int64", "x-kubernetes-validations" = [
        {"rule": "self != 23456", "message": "23456 is AS_TRANS (RFC 6793), not an AS a speaker may be in"}
    ]))]
    pub my_asn: u32,
    /// The router's autonomous system; equal to `myASN` for iBGP.
    #[serde(rename = "peerASN")]
    #[schemars(range(min = 1, max = 4294967295u32), extend("format" = "int64", "x-kubernetes-validations" = [
        {"rule": "self != 23456", "message": "23456 is AS_TRANS (RFC 6793), not a peer's AS"}
    ]))]
    pub peer_asn: u32,
    /// The router's address, IPv4 or IPv6.
    #[schemars(length(min = 2, max = 45), extend("x-kubernetes-validations" = [
        {"rule": "isIP(self)", "message": "must be an IPv4 or IPv6 address"}
    ]))]
    pub peer_address: String,
    /// The router's BGP port.
    #[serde(default = "default_peer_port")]
    #[schemars(range(min = 1, max = 65535), extend("format" = "int32"))]
    pub peer_port: u16,
    /// The address to open the session from; by default the node's address
    /// on the route towards the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 45), extend("x-kubernetes-validations" = [
        {"rule": "isIP(self)", "message": "must be an IPv4 or IPv6 address"}
    ]))]
    pub source_address: Option<String>,
    /// The hold time proposed to the router (`0s`: no keepalives, or 3 s to
    /// 65535 s; default 90 s). The session uses the smaller of both sides'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = DURATION_PATTERN), extend("x-kubernetes-validations" = [
        {"rule": "!self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$') || (duration(self) == duration('0s') || (duration(self) >= duration('3s') && duration(self) <= duration('65535s')))", "message": "must be 0s or between 3s and 65535s (RFC 4271)"}
    ]))]
    pub hold_time: Option<String>,
    /// How often to send keepalives; default (or `0s`, as MetalLB writes it) a
    /// third of the negotiated hold time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = DURATION_PATTERN), extend("x-kubernetes-validations" = [
        {"rule": "!self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$') || duration(self) == duration('0s') || (duration(self) >= duration('1s') && duration(self) <= duration('21845s'))", "message": "must be 0s (the default) or between 1s and 21845s"}
    ]))]
    pub keepalive_time: Option<String>,
    /// How long one connection attempt may take before the next (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = DURATION_PATTERN), extend("x-kubernetes-validations" = [
        {"rule": "!self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$') || (duration(self) >= duration('1s') && duration(self) <= duration('65535s'))", "message": "must be between 1s and 65535s"}
    ]))]
    pub connect_time: Option<String>,
    /// The BGP identifier to use, an IPv4 address; by default the node's IPv4
    /// address towards the peer.
    #[serde(default, rename = "routerID", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 7, max = 15), extend("x-kubernetes-validations" = [
        {"rule": "isIP(self) && ip(self).family() == 4", "message": "must be an IPv4 address (a BGP identifier is 32 bits)"}
    ]))]
    pub router_id: Option<String>,
    /// Selectors over node labels; only matching nodes open a session. Empty:
    /// every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
    /// A Secret (type `kubernetes.io/basic-auth`, key `password`) holding the
    /// TCP MD5 password (RFC 2385) the router expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<SecretReference>,
    /// The router is more than one hop away: send with a TTL of 255 rather
    /// than 1 (eBGP).
    #[serde(default)]
    pub ebgp_multi_hop: bool,
    /// The name of a `BFDProfile`: run BFD with the router and withdraw at
    /// once when it says the path is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub bfd_profile: Option<String>,
    /// Ask the router to keep this node's routes while its speaker restarts
    /// (RFC 4724 graceful restart).
    #[serde(default)]
    pub enable_graceful_restart: bool,
}

fn default_peer_port() -> u16 {
    179
}

/// A Secret by name, in `namespace` or else in the speaker's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
pub struct SecretReference {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace; by default the speaker's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// A standard community `AS:value` (two 16-bit halves), a large community
/// `large:global:local1:local2` (three 32-bit parts, RFC 8092), or the name
/// of an alias in a `Community` object.
const COMMUNITY_RULE: &str = "self.matches('^[0-9]{1,5}:[0-9]{1,5}$') ? \
     (int(self.split(':')[0]) <= 65535 && int(self.split(':')[1]) <= 65535) : \
     self.matches('^large:[0-9]{1,10}:[0-9]{1,10}:[0-9]{1,10}$') ? \
     (int(self.split(':')[1]) <= 4294967295 && int(self.split(':')[2]) <= 4294967295 && int(self.split(':')[3]) <= 4294967295) : \
     self.matches('^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')";

/// The message of [`COMMUNITY_RULE`].
pub const COMMUNITY_MESSAGE: &str = "must be a standard community (65000:100, each half at most \
     65535), a large community (large:65000:1:2, each part at most 4294967295) or the name of \
     an alias in a Community object";

/// A community value proper (no alias): what a `Community` alias may stand for.
const COMMUNITY_VALUE_RULE: &str = "self.matches('^[0-9]{1,5}:[0-9]{1,5}$') ? \
     (int(self.split(':')[0]) <= 65535 && int(self.split(':')[1]) <= 65535) : \
     self.matches('^large:[0-9]{1,10}:[0-9]{1,10}:[0-9]{1,10}$') && \
     int(self.split(':')[1]) <= 4294967295 && int(self.split(':')[2]) <= 4294967295 && int(self.split(':')[3]) <= 4294967295";

/// Advertises the addresses of some pools over BGP, from some nodes, to some
/// peers, with some attributes.
///
/// With neither `ipAddressPools` nor `ipAddressPoolSelectors`, every pool is
/// advertised; with no `peers`, to every peer; with no `nodeSelectors`, from
/// every node. A pool may be advertised by both an L2Advertisement and a
/// BGPAdvertisement.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "ironlb.dev",
    version = "v1alpha1",
    kind = "BGPAdvertisement",
    plural = "bgpadvertisements",
    shortname = "bgpadv",
    category = "ironlb",
    doc = "Advertises the addresses of some IPAddressPools to BGP peers.",
    printcolumn(name = "Pools", type_ = "string", json_path = ".spec.ipAddressPools"),
    printcolumn(name = "Peers", type_ = "string", json_path = ".spec.peers"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BGPAdvertisementSpec {
    /// Names of the pools to advertise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 253)))]
    pub ip_address_pools: Vec<String>,
    /// Selectors over pool labels; matching pools are advertised too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pool_selectors: Vec<LabelSelector>,
    /// Selectors over node labels; only matching nodes advertise. Empty: every
    /// node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
    /// Names of the `BGPPeer`s to advertise to. Empty: every peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 253)))]
    pub peers: Vec<String>,
    /// The prefix length of the IPv4 route advertised for an address: 32 (the
    /// default) advertises each address; shorter advertises the aggregate
    /// that holds it, once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 32), extend("format" = "int32"))]
    pub aggregation_length: Option<u8>,
    /// The same for IPv6 (default 128).
    #[serde(
        default,
        rename = "aggregationLengthV6",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0, max = 128), extend("format" = "int32"))]
    pub aggregation_length_v6: Option<u8>,
    /// The LOCAL_PREF attribute, sent to iBGP peers only (eBGP peers ignore it,
    /// RFC 4271 5.1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4294967295u32), extend("format" = "int64"))]
    pub local_pref: Option<u32>,
    /// Communities to attach: `65000:100`, `large:65000:1:2`, or the name of an
    /// alias in a `Community` object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 40)), transform = community_rule)]
    pub communities: Vec<String>,
}

/// Puts [`COMMUNITY_RULE`] on each item, so that the API server names the
/// offending entry (`spec.communities[2]`).
fn community_rule(schema: &mut schemars::Schema) {
    let rules = serde_json::json!([{"rule": COMMUNITY_RULE, "message": COMMUNITY_MESSAGE}]);
    if let Some(items) = schema.get_mut("items").and_then(|i| i.as_object_mut()) {
        items.insert("x-kubernetes-validations".into(), rules);
    }
}

/// Names for community values, usable in `BGPAdvertisement.spec.communities`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "ironlb.dev",
    version = "v1alpha1",
    kind = "Community",
    plural = "communities",
    category = "ironlb",
    doc = "Names for BGP community values.",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CommunitySpec {
    /// The aliases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub communities: Vec<CommunityAlias>,
}

/// One name for one community value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
pub struct CommunityAlias {
    /// The name used in advertisements.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    )]
    pub name: String,
    /// The value: `65000:100` or `large:65000:1:2`.
    #[schemars(length(min = 3, max = 40), extend("x-kubernetes-validations" = [
        {"rule": COMMUNITY_VALUE_RULE, "message": "must be a standard community (65000:100, each half at most 65535) or a large community (large:65000:1:2, each part at most 4294967295)"}
    ]))]
    pub value: String,
}

/// BFD settings (RFC 5880, single hop) for the peers that name this profile.
/// Intervals are in milliseconds.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "ironlb.dev",
    version = "v1alpha1",
    kind = "BFDProfile",
    plural = "bfdprofiles",
    shortname = "bfdprofile",
    category = "ironlb",
    doc = "How fast BFD detects that a BGP peer's path is down.",
    printcolumn(
        name = "Receive ms",
        type_ = "integer",
        json_path = ".spec.receiveInterval"
    ),
    printcolumn(
        name = "Transmit ms",
        type_ = "integer",
        json_path = ".spec.transmitInterval"
    ),
    printcolumn(
        name = "Multiplier",
        type_ = "integer",
        json_path = ".spec.detectMultiplier"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BFDProfileSpec {
    /// The slowest rate at which this node wants the peer's packets (ms,
    /// default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 60000), extend("format" = "int32"))]
    pub receive_interval: Option<u32>,
    /// The fastest rate at which this node will send (ms, default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 60000), extend("format" = "int32"))]
    pub transmit_interval: Option<u32>,
    /// How many intervals without a packet mean the path is down (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 255), extend("format" = "int32"))]
    pub detect_multiplier: Option<u32>,
    /// Wait for the peer to start BFD rather than start it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive_mode: Option<bool>,
    /// The lowest TTL accepted on received packets (default 254: the peer is
    /// one hop away, RFC 5881's 255 less one for tolerance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 254), extend("format" = "int32"))]
    pub minimum_ttl: Option<u32>,
}

/// The label holding the node on `BGPSessionState` and `ServiceBGPStatus`
/// objects.
pub const BGP_NODE_LABEL: &str = "ironlb.dev/node";
/// The label holding the `BGPPeer`'s name on `BGPSessionState` objects.
pub const BGP_PEER_LABEL: &str = "ironlb.dev/peer";

/// One node's session with one peer, as that node's speaker reports it. Named
/// `<peer>-<node>`; written by the node's speaker, deleted when the session is
/// no longer configured.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "ironlb.dev",
    version = "v1alpha1",
    kind = "BGPSessionState",
    plural = "bgpsessionstates",
    shortname = "bgpsession",
    category = "ironlb",
    status = "BGPSessionStateStatus",
    doc = "The state of one node's BGP session with one peer.",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "Peer", type_ = "string", json_path = ".spec.peer"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "BFD", type_ = "string", json_path = ".status.bfdState"),
    printcolumn(
        name = "Sent",
        type_ = "integer",
        json_path = ".status.prefixesSent",
        description = "Prefixes advertised on the session"
    ),
    printcolumn(
        name = "Since",
        type_ = "date",
        json_path = ".status.since",
        description = "When the session reached its state"
    ),
    printcolumn(name = "Last Error", type_ = "string", json_path = ".status.lastError")
)]
#[serde(rename_all = "camelCase")]
pub struct BGPSessionStateSpec {
    /// The node whose speaker holds the session.
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    /// The `BGPPeer`'s name.
    #[schemars(length(min = 1, max = 253))]
    pub peer: String,
    /// The peer's address, as configured.
    #[schemars(length(min = 2, max = 45))]
    pub peer_address: String,
}

/// What a speaker last saw of one session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BGPSessionStateStatus {
    /// The RFC 4271 state: `Idle`, `Connect`, `Active`, `OpenSent`,
    /// `OpenConfirm` or `Established`.
    #[serde(default)]
    pub state: String,
    /// The BFD state (`Down`, `Init`, `Up`, `AdminDown`) when the peer has a
    /// BFD profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd_state: Option<String>,
    /// When the session entered `state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Why the session last went down or failed to come up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Prefixes advertised on the session now.
    #[serde(default)]
    #[schemars(extend("format" = "int64"))]
    pub prefixes_sent: u64,
}

/// A speaker's report that it advertises a Service's addresses over BGP. One
/// object per Service and node, named `<service>-<node>`, in the Service's
/// namespace, like `ServiceL2Status`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "ironlb.dev",
    version = "v1alpha1",
    kind = "ServiceBGPStatus",
    plural = "servicebgpstatuses",
    shortname = "bgpstatus",
    category = "ironlb",
    namespaced,
    doc = "Which node advertises a Service's addresses over BGP, and to which peers.",
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.service"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "Peers", type_ = "string", json_path = ".spec.peers"),
    printcolumn(name = "Addresses", type_ = "string", json_path = ".spec.addresses"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBGPStatusSpec {
    /// The Service's name (in this object's namespace).
    pub service: String,
    /// The advertising node.
    pub node: String,
    /// The `BGPPeer`s it advertises them to.
    pub peers: Vec<String>,
    /// The addresses it advertises for the Service.
    pub addresses: Vec<String>,
}
