//! The migration's two contacts with a cluster: reading MetalLB's objects
//! (with the Services and password Secrets they concern) and applying
//! ironlb's, server-side.

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::Value;

use super::{FIELD_MANAGER, METALLB_GROUP, Migration, kind_of};

/// MetalLB's configuration kinds and the versions to read them at: the
/// newest MetalLB serves (its conversion webhook answers for older ones).
const METALLB_KINDS: [(&str, &str, &str); 6] = [
    ("v1beta1", "IPAddressPool", "ipaddresspools"),
    ("v1beta1", "L2Advertisement", "l2advertisements"),
    ("v1beta1", "BGPAdvertisement", "bgpadvertisements"),
    ("v1beta1", "BFDProfile", "bfdprofiles"),
    ("v1beta1", "Community", "communities"),
    ("v1beta2", "BGPPeer", "bgppeers"),
];

/// Every MetalLB configuration object in the cluster, every LoadBalancer
/// Service, and the Secrets the BGPPeers name. A kind whose CRD is not
/// installed is left out; any other failure is an error naming the kind.
pub async fn read(client: &Client) -> anyhow::Result<Vec<Value>> {
    use anyhow::Context;
    let mut out = Vec::new();
    for (version, kind, plural) in METALLB_KINDS {
        let gvk = GroupVersionKind::gvk(METALLB_GROUP, version, kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                for item in list.items {
                    let mut value = serde_json::to_value(item)?;
                    value["apiVersion"] = format!("{METALLB_GROUP}/{version}").into();
                    value["kind"] = kind.into();
                    out.push(value);
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                return Err(e).with_context(|| format!("listing {plural}.{METALLB_GROUP}"));
            }
        }
    }
    let services: Api<Service> = Api::all(client.clone());
    for svc in services
        .list(&ListParams::default())
        .await
        .context("listing Services")?
        .items
        .into_iter()
        .filter(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"))
    {
        let mut value = serde_json::to_value(svc)?;
        value["apiVersion"] = "v1".into();
        value["kind"] = "Service".into();
        out.push(value);
    }
    let wanted: Vec<(String, String)> = out
        .iter()
        .filter(|o| kind_of(o) == "BGPPeer")
        .filter_map(|peer| {
            let name = peer.pointer("/spec/passwordSecret/name")?.as_str()?;
            let namespace = peer
                .pointer("/spec/passwordSecret/namespace")
                .or_else(|| peer.pointer("/metadata/namespace"))?
                .as_str()?;
            Some((namespace.to_string(), name.to_string()))
        })
        .collect();
    for (namespace, name) in wanted {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        // Not found or not readable: the table says to copy it by hand.
        if let Ok(Some(secret)) = secrets.get_opt(&name).await {
            let mut value = serde_json::to_value(secret)?;
            value["apiVersion"] = "v1".into();
            value["kind"] = "Secret".into();
            out.push(value);
        }
    }
    Ok(out)
}

/// Applies every object of `migration` server-side, in order, as
/// [`FIELD_MANAGER`]; returns `Kind name` of each.
pub async fn apply(client: &Client, migration: &Migration) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut done = Vec::new();
    for object in &migration.objects {
        let typed: DynamicObject = serde_json::from_value(object.clone())?;
        let types = typed.types.clone().context("object without apiVersion")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let plural = plural_of(&gvk.kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
        let name = typed.metadata.name.clone().unwrap_or_default();
        let api: Api<DynamicObject> = match typed.metadata.namespace.as_deref() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        api.patch(&name, &params, &Patch::Apply(object))
            .await
            .with_context(|| format!("applying {} {name}", gvk.kind))?;
        done.push(format!("{} {name}", gvk.kind));
    }
    Ok(done)
}

/// The plural of the kinds a migration writes.
fn plural_of(kind: &str) -> String {
    crate::api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .map(|c| c.spec.names.plural)
        .unwrap_or_else(|| format!("{}s", kind.to_lowercase()))
}
