//! The Gateway controller's adapter: watches the Gateway API kinds, runs
//! [`attach::decide`], and writes what it returns.
//!
//! A Gateway's address is an ordinary ironlb address: for every Gateway of
//! an ironlb class the controller keeps a selector-less `LoadBalancer`
//! Service (owned by the Gateway, so it goes with it) whose ports are the
//! Gateway's valid listeners. ironlb's allocator gives it an address with
//! the usual pool, sharing and stability rules, and the speakers announce
//! it like any other (layer 2 or BGP). The speakers forward its routes from
//! the same rules run on the same objects ([`super::snapshot`]), never from
//! anything written on the Service. For clients of the Service's cluster IP,
//! the controller mirrors the ready endpoints of each TCP and UDP port's
//! first route into EndpointSlices of the Service, for kube-proxy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::attach::{self, Cond, GatewayOutcome, Program, Protocol, Route, Snapshot};
use super::snapshot::{self, Objects, is_ours, service_name};
use super::watch::{self, refs};
use crate::api::gateway::{Gateway, GatewayClass, SupportedFeature, TCPRoute, TLSRoute, UDPRoute};
use crate::api::{IPAddressPool, annotations};
use crate::k8s::{Fence, cache_all};

/// The field manager of the controller's Gateway writes.
pub const FIELD_MANAGER: &str = "ironlb-gateway";
/// The label upstream asks implementations to put on what they create for a
/// Gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// `endpointslice.kubernetes.io/managed-by` on the mirrored slices, so the
/// EndpointSlice controllers leave them alone (a label value: no `/`).
const SLICE_MANAGER: &str = "gateway-controller.ironlb.dev";
const SLICE_MANAGER_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
const MANAGED_BY: &str = "ironlb-gateway";

/// Runs the Gateway controller until `shutdown`: it waits (quietly, checking
/// every [`watch::CRD_RECHECK`]) for the Gateway API CRDs, then reconciles on
/// every change.
pub async fn run(client: Client, fence: Option<Fence>, shutdown: CancellationToken) {
    let Some(kinds) = watch::wait_for_crds(&client, "Gateway controller", &shutdown).await else {
        return;
    };
    info!(kinds = ?kinds, "Gateway controller running");
    let wake = Arc::new(Notify::new());
    let caches = watch::Caches::start(&client, &kinds, &wake, &shutdown);
    let services = cache_all::<Service>(&client, &wake, &shutdown);
    let slices = cache_all::<EndpointSlice>(&client, &wake, &shutdown);
    let pools = cache_all::<IPAddressPool>(&client, &wake, &shutdown);
    let ready = caches.ready().await
        && services.wait_until_ready().await.is_ok()
        && slices.wait_until_ready().await.is_ok()
        && pools.wait_until_ready().await.is_ok();
    if !ready {
        warn!("the Gateway controller's caches did not fill; it stops");
        return;
    }

    while !shutdown.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The caches' own objects, shared, never copied: a pass runs on
        // every Service and EndpointSlice change of the cluster.
        let state = caches.state();
        let pool_state = pools.state();
        let objects = Objects {
            pools: Some(refs(&pool_state)),
            ..state.objects()
        };
        let (service_state, slice_state) = (services.state(), slices.state());
        let service_list = refs(&service_state);
        let slice_list = refs(&slice_state);
        let snap = snapshot::snapshot(&objects, &service_list);
        let outcome = attach::decide(&snap);

        if let Some(fence) = &fence
            && let Err(why) = fence.check(&client).await
        {
            warn!(%why, "Gateway controller not writing: this replica cannot be sure it leads");
        } else {
            let failed = write(&client, &snap, &outcome, &service_list, &slice_list).await;
            if failed > 0 {
                debug!(failed, "some Gateway writes failed; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

/// Conditions as Kubernetes wants them: a transition time that only moves
/// when the status does, and the generation they speak of.
fn conditions(
    decided: &[Cond],
    current: &[Condition],
    generation: i64,
    now: &Time,
) -> Vec<Condition> {
    decided
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let since = current
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == status)
                .map_or_else(|| now.clone(), |o| o.last_transition_time.clone());
            Condition {
                type_: c.type_.into(),
                status: status.into(),
                reason: c.reason.into(),
                message: c.message.clone(),
                observed_generation: Some(generation),
                last_transition_time: since,
            }
        })
        .collect()
}

/// 1 when a write failed (and says so), else 0.
fn failure<T>(result: Result<T, kube::Error>, what: String) -> usize {
    match result {
        Ok(_) => 0,
        Err(e) => {
            warn!(error = %e, "{what}");
            1
        }
    }
}

/// Carries out the outcome; returns how many writes failed.
async fn write(
    client: &Client,
    snap: &Snapshot<'_>,
    outcome: &attach::Outcome,
    services: &[&Service],
    slices: &[&EndpointSlice],
) -> usize {
    let now = Time(Timestamp::now());
    let mut failed = 0;
    let params = PatchParams::apply(FIELD_MANAGER).force();

    let features: Vec<SupportedFeature> = attach::SUPPORTED_FEATURES
        .iter()
        .map(|f| SupportedFeature {
            name: (*f).to_string(),
        })
        .collect();
    for class in &outcome.classes {
        let current = snap
            .classes
            .iter()
            .find(|c| c.name_any() == class.name)
            .and_then(|c| c.status.as_ref());
        let old = current.map(|s| &s.conditions[..]).unwrap_or(&[]);
        let new = conditions(&class.conditions, old, class.generation, &now);
        if new != old || current.is_none_or(|s| s.supported_features != features) {
            let api: Api<GatewayClass> = Api::all(client.clone());
            let patch = json!({"status": {"conditions": new, "supportedFeatures": features}});
            let r = api
                .patch_status(&class.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            failed += failure(r, format!("writing GatewayClass {} status", class.name));
        }
    }

    let gateways: BTreeMap<(String, String), &Gateway> = snap
        .gateways
        .iter()
        .map(|g| ((g.namespace().unwrap_or_default(), g.name_any()), *g))
        .collect();
    let mut wanted_services = BTreeSet::new();
    for g in &outcome.gateways {
        let Some(gateway) = gateways.get(&(g.namespace.clone(), g.name.clone())) else {
            continue;
        };
        let svc_name = service_name(&g.name);
        wanted_services.insert((g.namespace.clone(), svc_name.clone()));
        let existing = services
            .iter()
            .find(|s| s.namespace().as_deref() == Some(&g.namespace) && s.name_any() == svc_name);
        if existing.is_none_or(|s| is_ours(s, gateway)) {
            let desired = desired_service(gateway, &svc_name, g);
            let api: Api<Service> = Api::namespaced(client.clone(), &g.namespace);
            if existing.is_none_or(|s| differs(s, &desired)) {
                let r = api.patch(&svc_name, &params, &Patch::Apply(&desired)).await;
                failed += failure(
                    r,
                    format!(
                        "writing Service {}/{svc_name} for Gateway {}",
                        g.namespace, g.name
                    ),
                );
            }
            let mirrored = mirror(
                client,
                &g.namespace,
                &svc_name,
                &g.program,
                services,
                slices,
            );
            failed += mirrored.await;
        }
        let old = gateway.status.clone().unwrap_or_default();
        let status = gateway_status(g, &old, &now);
        if serde_json::to_value(&old).ok() != Some(status.clone()) {
            let api: Api<Gateway> = Api::namespaced(client.clone(), &g.namespace);
            let patch = json!({"status": status});
            let r = api
                .patch_status(&g.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            failed += failure(
                r,
                format!("writing Gateway {}/{} status", g.namespace, g.name),
            );
        }
    }

    // Services of Gateways that left ironlb's classes (deleted Gateways take
    // theirs along through the owner reference).
    for s in services
        .iter()
        .filter(|s| s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY))
    {
        let key = (s.namespace().unwrap_or_default(), s.name_any());
        if !wanted_services.contains(&key) {
            let api: Api<Service> = Api::namespaced(client.clone(), &key.0);
            let r = api.delete(&key.1, &DeleteParams::default()).await;
            failed += failure(r, format!("deleting Service {}/{}", key.0, key.1));
        }
    }
    // Mirrored slices of those Services (slices carry no owner reference).
    for s in slices
        .iter()
        .filter(|s| s.labels().get(SLICE_MANAGER_LABEL).map(String::as_str) == Some(SLICE_MANAGER))
    {
        let service = s
            .labels()
            .get(SERVICE_NAME_LABEL)
            .cloned()
            .unwrap_or_default();
        let namespace = s.namespace().unwrap_or_default();
        if !wanted_services.contains(&(namespace.clone(), service)) {
            let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &namespace);
            let r = api.delete(&s.name_any(), &DeleteParams::default()).await;
            failed += failure(
                r,
                format!("deleting EndpointSlice {namespace}/{}", s.name_any()),
            );
        }
    }

    let routes: BTreeMap<(attach::RouteKind, &str, &str), &Route<'_>> = snap
        .routes
        .iter()
        .map(|r| ((r.kind, r.namespace.as_str(), r.name.as_str()), r))
        .collect();
    for r in &outcome.routes {
        let Some(route) = routes.get(&(r.kind, r.namespace.as_str(), r.name.as_str())) else {
            continue;
        };
        let old_parents: Vec<Value> = route
            .status
            .map(|s| {
                s.parents
                    .iter()
                    .filter_map(|p| serde_json::to_value(p).ok())
                    .collect()
            })
            .unwrap_or_default();
        let mut parents: Vec<Value> = old_parents
            .iter()
            .filter(|p| p["controllerName"] != attach::CONTROLLER_NAME)
            .cloned()
            .collect();
        for p in &r.parents {
            let old: &[Condition] = route
                .status
                .and_then(|s| {
                    s.parents.iter().find(|o| {
                        o.controller_name == attach::CONTROLLER_NAME && o.parent_ref == p.parent_ref
                    })
                })
                .map_or(&[], |o| &o.conditions[..]);
            parents.push(json!({
                "parentRef": p.parent_ref,
                "controllerName": attach::CONTROLLER_NAME,
                "conditions": conditions(&p.conditions, old, r.generation, &now),
            }));
        }
        if parents == old_parents {
            continue;
        }
        // The resourceVersion makes this a compare-and-swap: other
        // controllers' entries are kept, never overwritten by a stale view.
        let patch = json!({"metadata": {"resourceVersion": route.resource_version}, "status": {"parents": parents}});
        let pp = PatchParams::default();
        let result = match r.kind {
            attach::RouteKind::Tcp => Api::<TCPRoute>::namespaced(client.clone(), &r.namespace)
                .patch_status(&r.name, &pp, &Patch::Merge(&patch))
                .await
                .map(drop),
            attach::RouteKind::Udp => Api::<UDPRoute>::namespaced(client.clone(), &r.namespace)
                .patch_status(&r.name, &pp, &Patch::Merge(&patch))
                .await
                .map(drop),
            attach::RouteKind::Tls => Api::<TLSRoute>::namespaced(client.clone(), &r.namespace)
                .patch_status(&r.name, &pp, &Patch::Merge(&patch))
                .await
                .map(drop),
        };
        failed += failure(
            result,
            format!(
                "writing {} {}/{} status",
                r.kind.kind(),
                r.namespace,
                r.name
            ),
        );
    }
    failed
}

fn gateway_status(
    g: &GatewayOutcome,
    old: &crate::api::gateway::GatewayStatus,
    now: &Time,
) -> Value {
    let listeners: Vec<Value> = g
        .listeners
        .iter()
        .map(|l| {
            let before = old
                .listeners
                .iter()
                .find(|o| o.name == l.name)
                .map(|o| &o.conditions[..])
                .unwrap_or(&[]);
            json!({
                "name": l.name,
                "supportedKinds": l.supported_kinds,
                "attachedRoutes": l.attached_routes,
                "conditions": conditions(&l.conditions, before, g.generation, now),
            })
        })
        .collect();
    json!({
        "addresses": g.addresses.iter().map(|a| json!({"type": "IPAddress", "value": a.to_string()})).collect::<Vec<_>>(),
        "conditions": conditions(&g.conditions, &old.conditions, g.generation, now),
        "listeners": listeners,
    })
}

/// The Service carrying the Gateway's address: its valid listeners' ports,
/// the infrastructure labels and annotations (a pool, sharing key or PROXY
/// protocol choice goes there), requested addresses, and embedded
/// forwarding. The routes are not written on it: every speaker computes them
/// from the Gateway API objects with the same rules.
fn desired_service(gateway: &Gateway, name: &str, outcome: &GatewayOutcome) -> Value {
    let program = &outcome.program;
    let infra = gateway.spec.infrastructure.clone().unwrap_or_default();
    let mut labels = infra.labels.clone();
    labels.insert(GATEWAY_NAME_LABEL.into(), gateway.name_any());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let mut annotations = infra.annotations.clone();
    // The routes run on the embedded forwarder only: kube-proxy knows
    // nothing of hostnames and weights.
    annotations.insert(annotations::FORWARDING.into(), "embedded".into());
    if !outcome.requested.is_empty() {
        let requested: Vec<String> = outcome.requested.iter().map(IpAddr::to_string).collect();
        annotations.insert(annotations::LOAD_BALANCER_IPS.into(), requested.join(","));
    }
    let mut ports: Vec<Value> = program
        .ports
        .iter()
        .map(|p| {
            let transport = p.protocol.transport();
            json!({"name": port_name(p.port, p.protocol), "port": p.port, "protocol": transport, "targetPort": p.port})
        })
        .collect();
    ports.dedup();
    let owner = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "name": gateway.name_any(), "uid": gateway.metadata.uid,
        "controller": true, "blockOwnerDeletion": true,
    });
    let mut spec = json!({
        "type": "LoadBalancer",
        "loadBalancerClass": crate::api::LOAD_BALANCER_CLASS,
        "ports": ports,
    });
    if ports.is_empty() {
        // A Service needs a port; this one holds the address while no
        // listener is valid.
        spec["ports"] = json!([{"name": "placeholder", "port": 9, "protocol": "TCP"}]);
    }
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": gateway.namespace(), "labels": labels, "annotations": annotations, "ownerReferences": [owner]},
        "spec": spec,
    })
}

fn port_name(port: u16, protocol: Protocol) -> String {
    format!("{}-{port}", protocol.transport().to_ascii_lowercase())
}

/// Whether the fields the controller owns differ from `desired`.
fn differs(current: &Service, desired: &Value) -> bool {
    let Ok(current) = serde_json::to_value(current) else {
        return true;
    };
    let pick = |v: &Value| {
        let ports: Vec<Value> = v["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| json!([p["name"], p["port"], p["protocol"]]))
            .collect();
        json!([ports, v["spec"]["type"]])
    };
    let labels_differ = desired["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .any(|(k, v)| &current["metadata"]["labels"][k] != v);
    let annotations_differ = desired["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .any(|(k, v)| &current["metadata"]["annotations"][k] != v)
        // Written by earlier versions, read by none: an apply without it
        // takes it away.
        || !current["metadata"]["annotations"]["ironlb.dev/gateway-program"].is_null();
    labels_differ || annotations_differ || pick(&current) != pick(desired)
}

/// Keeps the Gateway Service's EndpointSlices equal to the ready endpoints
/// of the backends of the first route on each TCP and UDP port. Returns the
/// failed writes.
async fn mirror(
    client: &Client,
    namespace: &str,
    service: &str,
    program: &Program,
    services: &[&Service],
    slices: &[&EndpointSlice],
) -> usize {
    let mut wanted: BTreeMap<String, Value> = BTreeMap::new();
    for p in program.ports.iter().filter(|p| p.protocol != Protocol::Tls) {
        let Some(route) = p.routes.first() else {
            continue;
        };
        for (i, b) in route
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.usable && b.weight > 0)
        {
            // The backend Service port's name is what its slices' ports use.
            let Some(port_name_of_backend) = services
                .iter()
                .find(|s| s.namespace().as_deref() == Some(&b.namespace) && s.name_any() == b.name)
                .and_then(|s| {
                    s.spec
                        .as_ref()?
                        .ports
                        .as_ref()?
                        .iter()
                        .find(|sp| sp.port == i32::from(b.port))
                })
                .map(|sp| sp.name.clone().unwrap_or_default())
            else {
                continue;
            };
            for source in slices.iter().filter(|s| {
                s.namespace().as_deref() == Some(&b.namespace)
                    && s.labels().get(SERVICE_NAME_LABEL) == Some(&b.name)
            }) {
                let Some(target) = source
                    .ports
                    .iter()
                    .flatten()
                    .find(|sp| sp.name.clone().unwrap_or_default() == port_name_of_backend)
                    .and_then(|sp| sp.port)
                else {
                    continue;
                };
                let endpoints: Vec<Value> = source
                    .endpoints
                    .iter()
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                    .map(|e| json!({"addresses": e.addresses, "conditions": {"ready": true}, "nodeName": e.node_name, "zone": e.zone}))
                    .collect();
                if endpoints.is_empty() {
                    continue;
                }
                let name = format!(
                    "{service}-{}-{i}-{}",
                    port_name(p.port, p.protocol),
                    source.name_any()
                );
                let name: String = name.chars().take(253).collect();
                wanted.insert(name.clone(), json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": name, "namespace": namespace, "labels": {
                        (SERVICE_NAME_LABEL): service,
                        (SLICE_MANAGER_LABEL): SLICE_MANAGER,
                    }},
                    "addressType": source.address_type,
                    "ports": [{"name": port_name(p.port, p.protocol), "port": target, "protocol": p.protocol.transport()}],
                    "endpoints": endpoints,
                }));
            }
        }
    }
    let mut failed = 0;
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let ours: Vec<&EndpointSlice> = slices
        .iter()
        .copied()
        .filter(|s| {
            s.namespace().as_deref() == Some(namespace)
                && s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(service)
                && s.labels().get(SLICE_MANAGER_LABEL).map(String::as_str) == Some(SLICE_MANAGER)
        })
        .collect();
    for (name, slice) in &wanted {
        // Compared as typed slices: an absent field and a null are the same.
        let same = ours
            .iter()
            .find(|s| &s.name_any() == name)
            .is_some_and(|current| {
                serde_json::from_value::<EndpointSlice>(slice.clone()).is_ok_and(|want| {
                    want.endpoints == current.endpoints && want.ports == current.ports
                })
            });
        if !same {
            let r = api.patch(name, &params, &Patch::Apply(slice)).await;
            failed += failure(r, format!("writing EndpointSlice {namespace}/{name}"));
        }
    }
    for s in ours.iter().filter(|s| !wanted.contains_key(&s.name_any())) {
        let r = api.delete(&s.name_any(), &DeleteParams::default()).await;
        failed += failure(
            r,
            format!("deleting EndpointSlice {namespace}/{}", s.name_any()),
        );
    }
    failed
}
