//! `ironlb uninstall`: what must happen before `kubectl delete -k deploy/`
//! can finish. A pool whose addresses Services hold carries the controller's
//! finalizer, which only a running controller removes; delete the controller
//! with everything else and the CRDs wait on their pools forever. So: stop
//! the controller, release the pools, and (unless told otherwise) take
//! ironlb's addresses off the Services, which would otherwise keep showing
//! an EXTERNAL-IP nothing announces any more.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::api::{IPAddressPool, LOAD_BALANCER_CLASS, POOL_FINALIZER, annotations};
use crate::k8s::translate;

/// The controller's Deployment in `deploy/`.
const CONTROLLER_DEPLOYMENT: &str = "ironlb-controller";

/// What [`prepare`] did, for the user.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The controller was scaled to zero (false: there was none).
    pub controller_stopped: bool,
    /// Pools whose finalizer was removed.
    pub pools_released: Vec<String>,
    /// Services whose ironlb address and pool record were removed.
    pub services_cleaned: Vec<String>,
}

/// Stops the controller (its Deployment in `namespace`, scaled to zero, and
/// waits up to a minute for its Pods to go), removes ironlb's finalizer from
/// every pool and, with `clean_services`, removes ironlb's addresses and
/// pool record from every Service ironlb gave an address.
pub async fn prepare(
    client: Client,
    namespace: &str,
    clean_services: bool,
) -> Result<Prepared, kube::Error> {
    let mut done = Prepared::default();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    if deployments.get_opt(CONTROLLER_DEPLOYMENT).await?.is_some() {
        let scale = json!({"spec": {"replicas": 0}});
        deployments
            .patch(
                CONTROLLER_DEPLOYMENT,
                &PatchParams::default(),
                &Patch::Merge(&scale),
            )
            .await?;
        // A replica still running could put a finalizer back.
        for _ in 0..120 {
            let d = deployments.get(CONTROLLER_DEPLOYMENT).await?;
            if d.status.and_then(|s| s.replicas).unwrap_or(0) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        done.controller_stopped = true;
    }

    let pools: Api<IPAddressPool> = Api::all(client.clone());
    for pool in pools.list(&ListParams::default()).await? {
        let finalizers = pool.finalizers();
        if !finalizers.iter().any(|f| f == POOL_FINALIZER) {
            continue;
        }
        let kept: Vec<&String> = finalizers.iter().filter(|f| *f != POOL_FINALIZER).collect();
        // The resourceVersion makes it a compare-and-swap: another
        // finalizer added meanwhile is never dropped.
        let patch = json!({"metadata": {
            "finalizers": kept,
            "resourceVersion": pool.resource_version(),
        }});
        pools
            .patch(
                &pool.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        done.pools_released.push(pool.name_any());
    }

    if clean_services {
        let services: Api<Service> = Api::all(client.clone());
        for svc in services.list(&ListParams::default()).await? {
            let recorded = svc
                .annotations()
                .contains_key(annotations::ALLOCATED_FROM_POOL);
            let ours = svc
                .spec
                .as_ref()
                .and_then(|s| s.load_balancer_class.as_deref())
                == Some(LOAD_BALANCER_CLASS);
            if !recorded && !ours {
                continue;
            }
            let ns = svc.namespace().unwrap_or_default();
            let api: Api<Service> = Api::namespaced(client.clone(), &ns);
            if !translate::status_addresses(&svc).is_empty() {
                let status = json!({"status": {"loadBalancer": {"ingress": null}}});
                api.patch_status(
                    &svc.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await?;
            }
            if recorded {
                let record =
                    json!({"metadata": {"annotations": {annotations::ALLOCATED_FROM_POOL: null}}});
                api.patch(
                    &svc.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&record),
                )
                .await?;
            }
            done.services_cleaned
                .push(format!("{ns}/{}", svc.name_any()));
        }
    }
    Ok(done)
}
