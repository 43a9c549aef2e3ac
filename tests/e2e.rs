//! The controller's core scenarios against a real cluster.
//!
//! Needs a cluster, so it is ignored by default. Run it with
//!
//! ```sh
//! IRONLB_E2E_KUBECONFIG=~/.kube/config cargo test --test e2e -- --ignored
//! ```
//!
//! on a cluster where ironlb is not deployed. It applies `crds/`, runs the
//! controller in this process for Services of class `ironlb.dev/ironlb` only (it
//! never touches other Services), in a namespace and a pool of its own that it
//! deletes afterwards. The pool's addresses come from `IRONLB_E2E_POOL`
//! (default `198.51.100.0/29`, a documentation range nothing routes).

mod support;

use std::sync::Arc;
use std::time::Duration;

use ironlb::api::{IPAddressPool, LOAD_BALANCER_CLASS, crds};
use ironlb::controller::{self, metrics::Metrics};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use support::*;
use tokio_util::sync::CancellationToken;

async fn real_client() -> Client {
    let path = std::env::var("IRONLB_E2E_KUBECONFIG").unwrap_or_else(|_| {
        panic!("IRONLB_E2E_KUBECONFIG is not set: point it at the kubeconfig of a cluster to test against")
    });
    let kc = Kubeconfig::read_from(&path).expect("read IRONLB_E2E_KUBECONFIG");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

#[tokio::test]
#[ignore = "needs a real cluster: IRONLB_E2E_KUBECONFIG=... cargo test --test e2e -- --ignored"]
async fn core_scenarios_on_a_real_cluster() {
    let client = real_client().await;
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds() {
        crd_api
            .patch(
                &crd.name_any(),
                &PatchParams::apply("ironlb-e2e").force(),
                &Patch::Apply(&crd),
            )
            .await
            .expect("apply CRD");
    }
    // CRDs take a moment to be served.
    let pools: Api<IPAddressPool> = Api::all(client.clone());
    wait_for(
        "the IPAddressPool CRD to be served",
        Duration::from_secs(30),
        || async { pools.list(&Default::default()).await.ok().map(|_| ()) },
    )
    .await;

    let suffix = std::process::id();
    let ns = format!("ironlb-e2e-{suffix}");
    let pool_name = format!("ironlb-e2e-{suffix}");
    let range = std::env::var("IRONLB_E2E_POOL").unwrap_or_else(|_| "198.51.100.0/29".into());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create namespace");
    let mut p = pool(&pool_name, &[range.as_str()]);
    p.spec.auto_assign = true;
    create_pool(&client, p).await;

    let stop = CancellationToken::new();
    let config = controller::Config {
        default_class: false,
        ..Default::default()
    };
    let task = tokio::spawn(controller::run(
        client.clone(),
        config,
        Arc::new(Metrics::default()),
        stop.clone(),
    ));

    let (c, ns2, range2) = (client.clone(), ns.clone(), range.clone());
    let result = async move {
        let (client, ns, range) = (c, ns2, range2);
        let first = range.split('/').next().expect("range").to_string();
        create_service(
            &client,
            Svc::lb(&ns, "a").class(LOAD_BALANCER_CLASS).build(),
        )
        .await;
        let a = wait_for_addresses(&client, &ns, "a", 1).await;
        assert_eq!(a, [first]);
        create_service(
            &client,
            Svc::lb(&ns, "b").class(LOAD_BALANCER_CLASS).build(),
        )
        .await;
        let b = wait_for_addresses(&client, &ns, "b", 1).await;
        assert_ne!(a, b);
        Api::<Service>::namespaced(client.clone(), &ns)
            .delete("a", &DeleteParams::default())
            .await
            .expect("delete a");
        create_service(
            &client,
            Svc::lb(&ns, "c").class(LOAD_BALANCER_CLASS).build(),
        )
        .await;
        assert_eq!(
            wait_for_addresses(&client, &ns, "c", 1).await,
            a,
            "a's address is reused"
        );
        assert_eq!(
            ingress_ips(&client, &ns, "b").await.unwrap(),
            b,
            "b never moved"
        );
    };
    let outcome = tokio::spawn(result).await;

    stop.cancel();
    let _ = task.await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    let _ = pools.delete(&pool_name, &DeleteParams::default()).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
}
