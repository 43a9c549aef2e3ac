//! The Kubernetes-facing API of ironlb: the custom resources (group `ironlb.dev`,
//! version `v1alpha1`, cluster-scoped) and every annotation name ironlb reads.
//!
//! These types are the edge: controllers and speakers turn them into the plain
//! types of [`crate::ipam`] and [`crate::election`] once, with errors that name the
//! object and the field, and never pass kube types deeper.

pub mod annotations;
pub mod bgp;
pub mod gateway;
pub mod hostname;
mod l2advertisement;
pub mod l2status;
mod pool;

pub use bgp::{
    BFDProfile, BFDProfileSpec, BGPAdvertisement, BGPAdvertisementSpec, BGPPeer, BGPPeerSpec,
    BGPSessionState, BGPSessionStateSpec, BGPSessionStateStatus, Community, CommunityAlias,
    CommunitySpec, SecretReference, ServiceBGPStatus, ServiceBGPStatusSpec,
};
pub use l2advertisement::{L2Advertisement, L2AdvertisementSpec, L2AdvertisementStatus};
pub use l2status::{ServiceL2Status, ServiceL2StatusSpec};
pub use pool::{
    CrossNamespaceSharing, IPAddressPool, IPAddressPoolSpec, IPAddressPoolStatus, ServiceAllocation,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSON, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use kube::CustomResourceExt;

/// The API group of every ironlb custom resource.
pub const GROUP: &str = "ironlb.dev";

/// The `spec.loadBalancerClass` ironlb serves. Services with another class are
/// left to whoever serves that class.
pub const LOAD_BALANCER_CLASS: &str = "ironlb.dev/ironlb";

/// The node label Kubernetes defines for nodes that must not carry external
/// load-balancer traffic; such a node never announces an address.
pub const EXCLUDE_FROM_EXTERNAL_LB_LABEL: &str =
    "node.kubernetes.io/exclude-from-external-load-balancers";

/// The condition type on pools and advertisements that says whether the object's
/// spec was accepted (`True`) or why it is not used (`False`, with a reason and a
/// message naming the entry or the other object).
pub const CONDITION_VALID: &str = "Valid";

/// The finalizer the controller puts on every `IPAddressPool`, as Kubernetes
/// protects a PersistentVolumeClaim in use: a deleted pool stays (Terminating)
/// while a Service still holds one of its addresses, and those addresses keep
/// answering until the last Service lets go.
pub const POOL_FINALIZER: &str = "ironlb.dev/pool-protection";

/// The operators a label selector requirement may use.
pub const SELECTOR_OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

/// Every custom resource definition ironlb serves, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        IPAddressPool::crd(),
        L2Advertisement::crd(),
        ServiceL2Status::crd(),
        BGPPeer::crd(),
        BGPAdvertisement::crd(),
        BFDProfile::crd(),
        Community::crd(),
        BGPSessionState::crd(),
        ServiceBGPStatus::crd(),
    ];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                restrict_selector_operators(schema);
                default_an_all_optional_spec(schema);
            }
        }
    }
    crds
}

/// MetalLB's usual advertisement is `kind: L2Advertisement` with a name and
/// nothing else, meaning every pool from every node. Where a kind's spec has
/// no required field the same object means the same here: `spec` is not
/// required and the API server fills in `{}` (so the stored object, and what
/// a watcher reads, always has one).
fn default_an_all_optional_spec(schema: &mut JSONSchemaProps) {
    let Some(spec) = schema.properties.as_mut().and_then(|p| p.get_mut("spec")) else {
        return;
    };
    if spec.required.as_ref().is_some_and(|r| !r.is_empty()) {
        return;
    }
    spec.default = Some(JSON(serde_json::json!({})));
    if let Some(required) = schema.required.as_mut() {
        required.retain(|r| r != "spec");
    }
    if schema.required.as_ref().is_some_and(Vec::is_empty) {
        schema.required = None;
    }
}

/// Label selectors come from `k8s-openapi`, whose schema takes any string as an
/// operator, so `operator: in` would be stored and only fail later, in the
/// controller. An enum lets the API server refuse it at `kubectl apply`.
fn restrict_selector_operators(schema: &mut JSONSchemaProps) {
    if let Some(props) = schema.properties.as_mut() {
        let requirement = ["key", "operator", "values"]
            .iter()
            .all(|k| props.contains_key(*k));
        if requirement && let Some(op) = props.get_mut("operator") {
            op.enum_ = Some(
                SELECTOR_OPERATORS
                    .iter()
                    .map(|o| JSON(serde_json::Value::String(o.to_string())))
                    .collect(),
            );
        }
        for child in props.values_mut() {
            restrict_selector_operators(child);
        }
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        restrict_selector_operators(items);
    }
}

/// The CRDs as one multi-document YAML stream: what `ironlb crds` prints and what
/// `crds/ironlb.yaml` holds.
pub fn crds_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::from("# Generated by `ironlb crds`; do not edit.\n");
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}
