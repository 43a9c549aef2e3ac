//! `L2Advertisement`: which pools are announced on the LAN, from which nodes and
//! on which interfaces.

// Each `printcolumn(...)` repeats `type_ = ...`, which clippy mistakes for a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Announces the addresses of some pools over ARP (IPv4) and NDP (IPv6).
///
/// A pool that no L2Advertisement selects is still allocated from, but its
/// addresses are not announced, as in MetalLB. With neither `ipAddressPools` nor
/// `ipAddressPoolSelectors`, every pool is announced.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "ironlb.dev",
    version = "v1alpha1",
    kind = "L2Advertisement",
    plural = "l2advertisements",
    shortname = "l2adv",
    category = "ironlb",
    status = "L2AdvertisementStatus",
    doc = "Announces the addresses of some IPAddressPools on the LAN over ARP and NDP.",
    printcolumn(name = "Pools", type_ = "string", json_path = ".spec.ipAddressPools"),
    printcolumn(name = "Interfaces", type_ = "string", json_path = ".spec.interfaces"),
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
pub struct L2AdvertisementSpec {
    /// Names of the pools to announce.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 253)))]
    pub ip_address_pools: Vec<String>,
    /// Selectors over pool labels; matching pools are announced too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pool_selectors: Vec<LabelSelector>,
    /// Selectors over node labels; only matching nodes announce. Empty: every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
    /// Interfaces to announce on. Empty: the interface whose subnet holds the
    /// address. Naming an interface is the only way to announce on a virtual or
    /// enslaved link.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 15), regex(pattern = r"^[^\s/:]+$")))]
    pub interfaces: Vec<String>,
}

/// What the speakers observed about an advertisement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct L2AdvertisementStatus {
    /// `Valid`: whether the advertisement is used, and if not, why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
