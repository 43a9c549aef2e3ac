//! The test API server behaves as the real one does where ironlb depends on it.
//! The checks in `support::protocol` run here and, in tests/e2e.rs, on a real
//! API server: a difference fails one of the two. What only the test server
//! can do (compact its history, fail on purpose) is checked here alone.

mod support;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{PostParams, WatchEvent, WatchParams};
use support::protocol;
use support::*;

/// Runs a check of `support::protocol` on a fresh test server, in `default`.
macro_rules! on_the_test_server {
    ($($check:ident $(, $prefix:literal)?);* $(;)?) => {$(
        #[tokio::test]
        async fn $check() {
            let server = ApiServer::start().await;
            protocol::$check(&server.client() $(, $prefix)?).await;
        }
    )*};
}

on_the_test_server! {
    create_twice_is_already_exists_and_a_missing_object_is_not_found, "default";
    a_created_service_gets_the_defaults_ironlb_reads, "default";
    a_stale_resource_version_is_a_conflict_on_replace_and_patch, "default";
    status_writes_ignore_spec_and_other_writes_ignore_status, "default";
    json_patch_applies_and_a_no_op_keeps_the_resource_version, "t";
    server_side_apply_owns_fields_and_set_elements, "t";
    a_finalizer_holds_a_deleted_object_until_it_is_removed, "t";
    a_watch_sees_changes_in_order_through_its_selectors, "default";
    lists_honour_label_and_field_selectors, "default";
}

#[tokio::test]
async fn strategic_merge_merges_keyed_lists_and_custom_resources_refuse_it() {
    let server = ApiServer::start().await;
    protocol::strategic_merge_merges_keyed_lists_and_custom_resources_refuse_it(
        &server.client(),
        "default",
        "t",
    )
    .await;
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_is_expired() {
    let server = ApiServer::start().await;
    let api: Api<Service> = Api::namespaced(server.client(), "default");
    let created = api
        .create(&PostParams::default(), &Svc::lb("default", "web").build())
        .await
        .unwrap();
    let from = created.metadata.resource_version.clone().unwrap();
    api.delete("web", &Default::default()).await.unwrap();
    server.compact();
    let first: Vec<_> = api
        .watch(&WatchParams::default().timeout(1), &from)
        .await
        .unwrap()
        .take(1)
        .collect()
        .await;
    match &first[0] {
        Ok(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410 Expired, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failing_server_answers_500_until_it_is_back() {
    let server = ApiServer::start().await;
    let client = server.client();
    let pools: Api<ironlb::api::IPAddressPool> = Api::all(client.clone());
    pools.list(&Default::default()).await.unwrap();
    server.set_failing(true);
    match pools.list(&Default::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 500, "{e:?}"),
        other => panic!("expected 500, got {other:?}"),
    }
    server.set_failing(false);
    pools.list(&Default::default()).await.unwrap();
}
