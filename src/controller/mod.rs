//! The controller: gives every eligible `type: LoadBalancer` Service an address
//! and keeps it.
//!
//! The allocator is one state shared by every Service, so the controller does
//! not reconcile objects one by one: watchers keep caches of Services, pools and
//! Namespaces, and each change wakes a pass ([`plan::Planner::plan`]) that looks
//! at the whole snapshot and returns the writes to make. Passes are level-based
//! and idempotent; bursts of events coalesce into one pass.
//!
//! One replica is active at a time ([`crate::control_plane`]); a pass writes
//! only while its [`Fence`] holds.

pub mod metrics;
pub mod plan;
pub mod reports;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Namespace, ObjectReference, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::annotations::ALLOCATED_FROM_POOL;
use crate::api::{IPAddressPool, POOL_FINALIZER};
use crate::ipam::ServiceKey;
pub use crate::k8s::Fence;
use crate::k8s::apply::{Backoff, Written};
use crate::k8s::{self, cache_all};
use metrics::Metrics;
use plan::{Action, Planner, Snapshot};

/// The name events and field managers use for the controller.
pub const CONTROLLER_NAME: &str = "ironlb-controller";

/// How the controller behaves.
#[derive(Clone, Debug)]
pub struct Config {
    /// Serve Services without a `loadBalancerClass`.
    pub default_class: bool,
    /// This replica's name, for events and the Lease.
    pub identity: String,
    /// A pass runs at least this often even without events, to retry failed writes.
    pub resync: Duration,
    /// With leader election: the Lease this replica must hold, freshly renewed,
    /// for a pass to write anything.
    pub fence: Option<Fence>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            default_class: true,
            identity: CONTROLLER_NAME.into(),
            resync: Duration::from_secs(60),
            fence: None,
        }
    }
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A watcher's cache could not be filled.
    #[error("waiting for the {0} cache: the watcher stopped")]
    CacheNotReady(&'static str),
}

/// The key of the gossip Secret that holds the shared secret.
pub const GOSSIP_SECRET_KEY: &str = "secret";

/// Creates the speakers' gossip Secret `namespace/name` with 32 random bytes
/// (hex) unless it exists — a user may supply their own before installing.
/// Returns whether it was created here. Every replica may try; a conflict
/// means another one won.
pub async fn ensure_gossip_secret(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<bool, kube::Error> {
    use k8s_openapi::api::core::v1::Secret;
    use rand::RngExt;
    let api: Api<Secret> = Api::namespaced(client, namespace);
    if api.get_opt(name).await?.is_some() {
        return Ok(false);
    }
    let bytes: [u8; 32] = rand::rng().random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(
                [(
                    "app.kubernetes.io/part-of".to_string(),
                    "ironlb".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        data: Some(
            [(
                GOSSIP_SECRET_KEY.to_string(),
                k8s_openapi::ByteString(hex.into_bytes()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    match api.create(&kube::api::PostParams::default(), &secret).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs the controller (without leader election) until `shutdown`.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let wake = Arc::new(Notify::new());
    let services = cache_all::<Service>(&client, &wake, &shutdown);
    let pools = cache_all::<IPAddressPool>(&client, &wake, &shutdown);
    let namespaces = cache_all::<Namespace>(&client, &wake, &shutdown);
    for (name, ready) in [
        ("Service", services.wait_until_ready().await.is_ok()),
        ("IPAddressPool", pools.wait_until_ready().await.is_ok()),
        ("Namespace", namespaces.wait_until_ready().await.is_ok()),
    ] {
        if !ready {
            return Err(Error::CacheNotReady(name));
        }
    }
    info!("caches synced; restoring addresses from Service status");
    metrics.set_ready(true);

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: CONTROLLER_NAME.into(),
            instance: Some(config.identity.clone()),
        },
    );
    let mut planner = Planner::default();
    let mut backoff = Backoff::default();
    loop {
        let started = std::time::Instant::now();
        let svc_state = services.state();
        let pool_state = pools.state();
        let ns_labels = namespaces
            .state()
            .iter()
            .map(|ns| (ns.name_any(), ns.labels().clone()))
            .collect();
        let snapshot = Snapshot {
            services: svc_state.iter().map(AsRef::as_ref).collect(),
            pools: pool_state.iter().map(AsRef::as_ref).collect(),
            namespaces: &ns_labels,
            default_class: config.default_class,
            now: Time(Timestamp::now()),
        };
        let (actions, outcome) = planner.plan(&snapshot);
        if !actions.is_empty()
            && let Some(fence) = &config.fence
            && let Err(why) = fence.check(&client).await
        {
            // The plan may rest on a stale view or collide with another
            // leader: write nothing, and start from the cluster again once the
            // lease is ours (the election loop restarts this function).
            warn!(%why, "not writing: this replica cannot be sure it leads");
            planner = Planner::default();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(backoff.delay()) => {}
            }
            continue;
        }
        for action in &actions {
            if let Action::Event {
                warning: true,
                reason,
                ..
            } = action
            {
                metrics.count_failure(reason);
            }
        }
        let written = apply(&client, &recorder, &snapshot, actions).await;
        metrics.observe_pending(outcome.errors.iter());
        metrics.observe_pools(
            planner.allocator(),
            &pool_state.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
        );
        metrics.observe_pass(started.elapsed().as_secs_f64());
        debug!(services = outcome.assigned_services, ?written, "pass done");

        let retry = k8s::apply::idle_until_retry(written, &mut backoff, config.resync);
        if k8s::next_pass(&wake, Some(retry), &shutdown)
            .await
            .is_none()
        {
            return Ok(());
        }
    }
}

/// The objects of a pass' snapshot by name: a pass writes to thousands of
/// Services, and a scan per write made it quadratic.
struct Targets<'a> {
    services: HashMap<ServiceKey, &'a Service>,
    pools: HashMap<String, &'a IPAddressPool>,
}

impl<'a> Targets<'a> {
    fn of(snap: &Snapshot<'a>) -> Self {
        Self {
            services: snap
                .services
                .iter()
                .map(|s| (k8s::translate::service_key(s), *s))
                .collect(),
            pools: snap.pools.iter().map(|p| (p.name_any(), *p)).collect(),
        }
    }
}

/// Carries out the pass' writes, status writes first: each carries the
/// `resourceVersion` of the snapshot it was computed from, so a 409 means "look
/// again", never an overwrite, and the other writes (an annotation on the same
/// Service, say) must not bump the version under it.
async fn apply(
    client: &Client,
    recorder: &Recorder,
    snap: &Snapshot<'_>,
    actions: Vec<Action>,
) -> Written {
    let targets = Targets::of(snap);
    let (statuses, others): (Vec<Action>, Vec<Action>) = actions
        .into_iter()
        .partition(|a| matches!(a, Action::ServiceStatus { .. } | Action::PoolStatus { .. }));
    let mut written = apply_all(client, recorder, &targets, statuses).await;
    written += apply_all(client, recorder, &targets, others).await;
    written
}

async fn apply_all(
    client: &Client,
    recorder: &Recorder,
    targets: &Targets<'_>,
    actions: Vec<Action>,
) -> Written {
    let writes = actions.into_iter().map(|action| async move {
        let result = write(client, recorder, targets, &action).await;
        Written::of(result, format_args!("{action:?}"))
    });
    futures::stream::iter(writes)
        .buffer_unordered(16)
        .fold(Written::default(), |mut n, w| {
            n += w;
            future::ready(n)
        })
        .await
}

/// Carries out one action; an object gone from the snapshot needs nothing.
async fn write(
    client: &Client,
    recorder: &Recorder,
    targets: &Targets<'_>,
    action: &Action,
) -> Result<(), kube::Error> {
    match action {
        Action::ServiceStatus { key, ingress } => {
            let api: Api<Service> = Api::namespaced(client.clone(), &key.namespace);
            let version = targets
                .services
                .get(key)
                .and_then(|s| s.metadata.resource_version.as_deref());
            let patch = service_status_patch(version, ingress);
            api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
        Action::ServicePool { key, pool } => {
            let api: Api<Service> = Api::namespaced(client.clone(), &key.namespace);
            let patch = json!({"metadata": {"annotations": {ALLOCATED_FROM_POOL: pool}}});
            api.patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
        Action::PoolFinalizer { name, add } => {
            let Some(pool) = targets.pools.get(name) else {
                return Ok(());
            };
            let api: Api<IPAddressPool> = Api::all(client.clone());
            // A JSON patch touches only our entry: other finalizers stay, and
            // the `test` makes a list that changed meanwhile fail (and the
            // next pass retry) instead of removing someone else's.
            let ops = finalizer_patch(pool.finalizers(), *add);
            match serde_json::from_value::<json_patch::Patch>(ops) {
                Ok(ops) => api
                    .patch(name, &PatchParams::default(), &Patch::Json::<()>(ops))
                    .await
                    .map(|_| ()),
                Err(e) => Err(kube::Error::SerdeError(e)),
            }
        }
        Action::PoolEvent { name, reason, note } => {
            let Some(pool) = targets.pools.get(name) else {
                return Ok(());
            };
            let event = Event {
                type_: EventType::Warning,
                reason: reason.clone(),
                note: Some(note.clone()),
                action: "Delete".into(),
                secondary: None,
            };
            recorder.publish(&event, &pool.object_ref(&())).await
        }
        Action::PoolStatus { name, status } => {
            let api: Api<IPAddressPool> = Api::all(client.clone());
            let version = targets
                .pools
                .get(name)
                .and_then(|p| p.metadata.resource_version.clone());
            let patch = json!({"metadata": {"resourceVersion": version}, "status": status});
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
        Action::Event {
            key,
            warning,
            reason,
            note,
        } => {
            let Some(svc) = targets.services.get(key) else {
                return Ok(());
            };
            let event = Event {
                type_: if *warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: reason.clone(),
                note: Some(note.clone()),
                action: "Allocate".into(),
                secondary: None,
            };
            recorder.publish(&event, &object_reference(svc)).await
        }
    }
}

/// A Service's status as a merge patch that holds only at `version`, the
/// one the pass read. A merge patch replaces the ingress list whole; null
/// removes it.
fn service_status_patch(
    version: Option<&str>,
    ingress: &[LoadBalancerIngress],
) -> serde_json::Value {
    let ingress = if ingress.is_empty() {
        json!(null)
    } else {
        json!(ingress)
    };
    json!({
        "metadata": {"resourceVersion": version},
        "status": {"loadBalancer": {"ingress": ingress}},
    })
}

/// JSON patch operations that add or remove [`POOL_FINALIZER`] in `current`.
fn finalizer_patch(current: &[String], add: bool) -> serde_json::Value {
    match current.iter().position(|f| f == POOL_FINALIZER) {
        Some(i) if !add => json!([
            {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": POOL_FINALIZER},
            {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
        ]),
        None if add && current.is_empty() => {
            json!([{"op": "add", "path": "/metadata/finalizers", "value": [POOL_FINALIZER]}])
        }
        None if add => {
            json!([{"op": "add", "path": "/metadata/finalizers/-", "value": POOL_FINALIZER}])
        }
        _ => json!([]),
    }
}

fn object_reference(svc: &Service) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: svc.metadata.name.clone(),
        namespace: svc.metadata.namespace.clone(),
        uid: svc.metadata.uid.clone(),
        resource_version: svc.metadata.resource_version.clone(),
        field_path: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_finalizer_patch_touches_only_our_entry() {
        let ours = POOL_FINALIZER.to_string();
        assert_eq!(
            finalizer_patch(&["other".into(), ours.clone()], false),
            json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": POOL_FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ])
        );
        assert_eq!(
            finalizer_patch(&[], true),
            json!([{"op": "add", "path": "/metadata/finalizers", "value": [POOL_FINALIZER]}])
        );
        assert_eq!(
            finalizer_patch(&["other".into()], true),
            json!([{"op": "add", "path": "/metadata/finalizers/-", "value": POOL_FINALIZER}])
        );
        assert_eq!(finalizer_patch(&[ours], true), json!([]));
    }
}
