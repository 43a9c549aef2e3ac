//! `ServiceL2Status`: which node announces a Service's address, and on which
//! interfaces, as the announcing speaker reports it.

// Each `printcolumn(...)` repeats `type_ = ...`, which clippy mistakes for a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The label holding the Service's name on its `ServiceL2Status` objects.
pub const SERVICE_NAME_LABEL: &str = "ironlb.dev/service-name";
/// The label holding the announcing node on `ServiceL2Status` objects.
pub const NODE_LABEL: &str = "ironlb.dev/node";

/// A speaker's report that it announces a Service's addresses. Written by the
/// announcing node's speaker, deleted when it stops announcing; one object per
/// Service and node, named `<service>-<node>`, in the Service's namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "ironlb.dev",
    version = "v1alpha1",
    kind = "ServiceL2Status",
    plural = "servicel2statuses",
    shortname = "l2status",
    category = "ironlb",
    namespaced,
    doc = "Which node announces a Service's addresses over ARP/NDP, and on which interfaces.",
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.service"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "Interfaces", type_ = "string", json_path = ".spec.interfaces"),
    printcolumn(name = "Addresses", type_ = "string", json_path = ".spec.addresses"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceL2StatusSpec {
    /// The Service's name (in this object's namespace).
    pub service: String,
    /// The announcing node.
    pub node: String,
    /// The addresses it announces for the Service.
    pub addresses: Vec<String>,
    /// The interfaces it announces them on.
    pub interfaces: Vec<String>,
}
