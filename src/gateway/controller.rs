//! The Gateway controller's adapter: watches the Gateway API kinds, runs
//! [`attach::decide`] and [`plan::plan`], and carries out the plan.
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::attach::{self, RouteKind};
use super::plan::{self, Action};
use super::reads::Reads;
use super::snapshot::{self, Objects};
use super::watch::{self, refs};
use crate::api::IPAddressPool;
use crate::api::gateway::{Gateway, GatewayClass, TCPRoute, TLSRoute, UDPRoute};
use crate::k8s::apply::{Backoff, Written, gone_is_fine};
use crate::k8s::{self, Fence, cache_all, cache_touched};

/// The field manager of the controller's Gateway writes.
pub const FIELD_MANAGER: &str = "ironlb-gateway";
/// A pass runs at least this often even without events.
const RESYNC: Duration = Duration::from_secs(30);

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
    let (services, touched_services) = cache_touched::<Service>(&client, &wake, &shutdown);
    let (slices, touched_slices) = cache_touched::<EndpointSlice>(&client, &wake, &shutdown);
    let pools = cache_all::<IPAddressPool>(&client, &wake, &shutdown);
    let ready = caches.ready().await
        && services.wait_until_ready().await.is_ok()
        && slices.wait_until_ready().await.is_ok()
        && pools.wait_until_ready().await.is_ok();
    if !ready {
        warn!("the Gateway controller's caches did not fill; it stops");
        return;
    }

    let mut backoff = Backoff::default();
    let mut last: Option<LastPass> = None;
    loop {
        // Taken before the caches are read: what changes after is noted for
        // the next wake.
        let touched = (
            touched_services.take_from(&services),
            touched_slices.take_from(&slices),
        );
        let state = caches.state();
        let pool_state = pools.state();
        let others = [state.identities(), watch::identities(&pool_state)].concat();
        if let (Some(last), (Some(touched_services), Some(touched_slices))) = (&last, touched)
            && last.others == others
            && let Some(idle) = RESYNC.checked_sub(last.at.elapsed())
            && !last.reads.touched_by(
                touched_services.iter().map(|(n, s)| (n, s.as_deref())),
                touched_slices.iter().map(|(n, s)| (n, s.as_deref())),
            )
        {
            if k8s::next_pass(&wake, Some(idle), &shutdown).await.is_none() {
                return;
            }
            continue;
        }
        // The caches' own objects, shared, never copied.
        let objects = Objects {
            pools: Some(refs(&pool_state)),
            ..state.objects()
        };
        let (service_state, slice_state) = (services.state(), slices.state());
        let service_list = refs(&service_state);
        let slice_list = refs(&slice_state);
        let snap = snapshot::snapshot(&objects, &service_list);
        let outcome = attach::decide(&snap);

        let actions = plan::plan(
            &snap,
            &outcome,
            &service_list,
            &slice_list,
            &Time(Timestamp::now()),
        );
        let written = match &fence {
            _ if actions.is_empty() => Written::default(),
            Some(fence) if let Err(why) = fence.check(&client).await => {
                warn!(%why, "Gateway controller not writing: this replica cannot be sure it leads");
                // Looked at again after a back-off, as after a failed write.
                Written {
                    failed: 1,
                    conflicts: 0,
                }
            }
            _ => {
                debug!(writes = actions.len(), "Gateway pass");
                apply(&client, actions).await
            }
        };
        last = (written == Written::default()).then(|| LastPass {
            reads: Reads::of(&snap, &service_list, &slice_list),
            others,
            at: Instant::now(),
        });
        let idle = k8s::apply::idle_until_retry(written, &mut backoff, RESYNC);
        if k8s::next_pass(&wake, Some(idle), &shutdown).await.is_none() {
            return;
        }
    }
}

/// A pass that wrote all it planned: until something it read changes, or
/// [`RESYNC`] has passed, another would plan nothing new.
struct LastPass {
    /// What it read of the Services and EndpointSlices.
    reads: Reads,
    /// The identities of every other kind's objects it read.
    others: Vec<usize>,
    at: Instant,
}

/// Carries out the plan, in its order; what became of the writes.
async fn apply(client: &Client, actions: Vec<Action>) -> Written {
    let mut written = Written::default();
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let status = PatchParams::default();
    for action in actions {
        written += match action {
            Action::ClassStatus {
                name,
                resource_version,
                status: s,
            } => {
                let patch = status_patch(resource_version, &s);
                let r = Api::<GatewayClass>::all(client.clone())
                    .patch_status(&name, &status, &Patch::Merge(&patch))
                    .await;
                Written::of(r, format_args!("writing GatewayClass {name} status"))
            }
            Action::GatewayStatus {
                namespace,
                name,
                resource_version,
                status: s,
            } => {
                let patch = status_patch(resource_version, &s);
                let r = Api::<Gateway>::namespaced(client.clone(), &namespace)
                    .patch_status(&name, &status, &Patch::Merge(&patch))
                    .await;
                Written::of(r, format_args!("writing Gateway {namespace}/{name} status"))
            }
            Action::RouteStatus {
                kind,
                namespace,
                name,
                resource_version,
                status: s,
            } => {
                let patch = status_patch(resource_version, &s);
                let merge = Patch::Merge(&patch);
                let r = match kind {
                    RouteKind::Tcp => Api::<TCPRoute>::namespaced(client.clone(), &namespace)
                        .patch_status(&name, &status, &merge)
                        .await
                        .map(drop),
                    RouteKind::Udp => Api::<UDPRoute>::namespaced(client.clone(), &namespace)
                        .patch_status(&name, &status, &merge)
                        .await
                        .map(drop),
                    RouteKind::Tls => Api::<TLSRoute>::namespaced(client.clone(), &namespace)
                        .patch_status(&name, &status, &merge)
                        .await
                        .map(drop),
                };
                Written::of(
                    r,
                    format_args!("writing {} {namespace}/{name} status", kind.kind()),
                )
            }
            Action::ApplyService(service) => {
                let (namespace, name) =
                    (service.namespace().unwrap_or_default(), service.name_any());
                let r = Api::<Service>::namespaced(client.clone(), &namespace)
                    .patch(&name, &apply, &Patch::Apply(&*service))
                    .await;
                Written::of(r, format_args!("writing Service {namespace}/{name}"))
            }
            Action::ApplySlice(slice) => {
                let (namespace, name) = (slice.namespace().unwrap_or_default(), slice.name_any());
                let r = Api::<EndpointSlice>::namespaced(client.clone(), &namespace)
                    .patch(&name, &apply, &Patch::Apply(&*slice))
                    .await;
                Written::of(r, format_args!("writing EndpointSlice {namespace}/{name}"))
            }
            Action::DeleteService { namespace, name } => {
                let r = Api::<Service>::namespaced(client.clone(), &namespace)
                    .delete(&name, &DeleteParams::default())
                    .await;
                Written::of(
                    gone_is_fine(r),
                    format_args!("deleting Service {namespace}/{name}"),
                )
            }
            Action::DeleteSlice { namespace, name } => {
                let r = Api::<EndpointSlice>::namespaced(client.clone(), &namespace)
                    .delete(&name, &DeleteParams::default())
                    .await;
                Written::of(
                    gone_is_fine(r),
                    format_args!("deleting EndpointSlice {namespace}/{name}"),
                )
            }
        };
    }
    written
}

/// A status merge patch that holds only if the object is still at
/// `resource_version`: other controllers' entries are kept, never
/// overwritten from a stale view.
fn status_patch(resource_version: Option<String>, status: &impl serde::Serialize) -> Value {
    json!({"metadata": {"resourceVersion": resource_version}, "status": status})
}
