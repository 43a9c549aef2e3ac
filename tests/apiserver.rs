//! The test API server behaves as the real one does where ironlb depends on it:
//! these pin its protocol so the controller tests mean something.

mod support;

use futures::{StreamExt, TryStreamExt};
use ironlb::api::IPAddressPool;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Error};
use serde_json::json;
use support::*;

fn code(err: Error) -> (u16, String) {
    match err {
        Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn create_twice_is_already_exists_and_a_missing_object_is_not_found() {
    let server = ApiServer::start().await;
    let api: Api<Service> = Api::namespaced(server.client(), "default");
    let svc = Svc::lb("default", "web").build();
    let created = api.create(&PostParams::default(), &svc).await.unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
    assert_eq!(
        created.spec.unwrap().ip_families.unwrap(),
        ["IPv4"],
        "defaulted as a real server does"
    );
    assert_eq!(
        code(api.create(&PostParams::default(), &svc).await.unwrap_err()),
        (409, "AlreadyExists".into())
    );
    assert_eq!(
        code(api.get("nope").await.unwrap_err()),
        (404, "NotFound".into())
    );
}

#[tokio::test]
async fn replace_with_a_stale_resource_version_is_a_conflict() {
    let server = ApiServer::start().await;
    let api: Api<Service> = Api::namespaced(server.client(), "default");
    let v1 = api
        .create(&PostParams::default(), &Svc::lb("default", "web").build())
        .await
        .unwrap();
    let mut v2 = v1.clone();
    v2.metadata.labels = Some([("x".to_string(), "1".to_string())].into());
    let v2 = api
        .replace("web", &PostParams::default(), &v2)
        .await
        .unwrap();
    assert_ne!(v1.metadata.resource_version, v2.metadata.resource_version);
    let err = api
        .replace("web", &PostParams::default(), &v1)
        .await
        .unwrap_err();
    assert_eq!(code(err), (409, "Conflict".into()));
}

#[tokio::test]
async fn status_writes_ignore_spec_and_other_writes_ignore_status() {
    let server = ApiServer::start().await;
    let api: Api<Service> = Api::namespaced(server.client(), "default");
    api.create(&PostParams::default(), &Svc::lb("default", "web").build())
        .await
        .unwrap();
    let both = json!({
        "spec": {"type": "NodePort"},
        "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}},
    });
    let after_status = api
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&both))
        .await
        .unwrap();
    assert_eq!(
        after_status.spec.as_ref().unwrap().type_.as_deref(),
        Some("LoadBalancer")
    );
    assert_eq!(
        ingress_ips(&server.client(), "default", "web")
            .await
            .unwrap(),
        ["10.0.0.1"]
    );
    let after_main = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&json!({
                "spec": {"type": "NodePort"},
                "status": {"loadBalancer": {"ingress": [{"ip": "10.9.9.9"}]}},
            })),
        )
        .await
        .unwrap();
    assert_eq!(after_main.spec.unwrap().type_.as_deref(), Some("NodePort"));
    assert_eq!(
        ingress_ips(&server.client(), "default", "web")
            .await
            .unwrap(),
        ["10.0.0.1"]
    );
}

#[tokio::test]
async fn json_patch_applies_and_a_no_op_keeps_the_resource_version() {
    let server = ApiServer::start().await;
    let api: Api<IPAddressPool> = Api::all(server.client());
    let created = create_pool(&server.client(), pool("lan", &["10.0.0.0/24"])).await;
    let patch: json_patch::Patch = serde_json::from_value(
        json!([{"op": "add", "path": "/spec/addresses/-", "value": "10.0.1.0/24"}]),
    )
    .unwrap();
    let patched = api
        .patch("lan", &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .unwrap();
    assert_eq!(patched.spec.addresses, ["10.0.0.0/24", "10.0.1.0/24"]);
    assert_ne!(
        patched.metadata.resource_version,
        created.metadata.resource_version
    );
    let same = api
        .patch(
            "lan",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"autoAssign": true}})),
        )
        .await
        .unwrap();
    assert_eq!(
        same.metadata.resource_version, patched.metadata.resource_version,
        "nothing changed"
    );
}

#[tokio::test]
async fn server_side_apply_conflicts_between_managers_unless_forced() {
    let server = ApiServer::start().await;
    let api: Api<IPAddressPool> = Api::all(server.client());
    let body = |addr: &str| json!({"apiVersion": "ironlb.dev/v1alpha1", "kind": "IPAddressPool", "spec": {"addresses": [addr]}});
    api.patch(
        "lan",
        &PatchParams::apply("alice"),
        &Patch::Apply(body("10.0.0.0/24")),
    )
    .await
    .unwrap();
    let err = api
        .patch(
            "lan",
            &PatchParams::apply("bob"),
            &Patch::Apply(body("10.0.1.0/24")),
        )
        .await
        .unwrap_err();
    assert_eq!(code(err), (409, "Conflict".into()));
    api.patch(
        "lan",
        &PatchParams::apply("alice"),
        &Patch::Apply(body("10.0.2.0/24")),
    )
    .await
    .unwrap();
    let forced = api
        .patch(
            "lan",
            &PatchParams::apply("bob").force(),
            &Patch::Apply(body("10.0.1.0/24")),
        )
        .await
        .unwrap();
    assert_eq!(forced.spec.addresses, ["10.0.1.0/24"]);
}

#[tokio::test]
async fn a_watch_sees_changes_in_order_and_an_expired_version_is_gone() {
    let server = ApiServer::start().await;
    let client = server.client();
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let created = api
        .create(&PostParams::default(), &Svc::lb("default", "web").build())
        .await
        .unwrap();
    let from = created.metadata.resource_version.clone().unwrap();
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
    )
    .await
    .unwrap();
    api.delete("web", &Default::default()).await.unwrap();
    let events: Vec<String> = api
        .watch(&WatchParams::default().timeout(1), &from)
        .await
        .unwrap()
        .take(2)
        .map_ok(|e| match e {
            WatchEvent::Added(_) => "ADDED".to_string(),
            WatchEvent::Modified(_) => "MODIFIED".to_string(),
            WatchEvent::Deleted(_) => "DELETED".to_string(),
            WatchEvent::Bookmark(_) => "BOOKMARK".to_string(),
            WatchEvent::Error(e) => format!("ERROR {}", e.code),
        })
        .try_collect()
        .await
        .unwrap();
    assert_eq!(events, ["MODIFIED", "DELETED"]);

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
async fn lists_honour_label_selectors() {
    let server = ApiServer::start().await;
    let client = server.client();
    create_service(
        &client,
        Svc::lb("default", "a").label("tier", "web").build(),
    )
    .await;
    create_service(&client, Svc::lb("default", "b").label("tier", "db").build()).await;
    create_service(&client, Svc::lb("default", "c").build()).await;
    let api: Api<Service> = Api::namespaced(client, "default");
    let names = |sel: &'static str| {
        let api = api.clone();
        async move {
            let list = api
                .list(&kube::api::ListParams::default().labels(sel))
                .await
                .unwrap();
            list.items
                .into_iter()
                .map(|s| s.metadata.name.unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(names("tier=web").await, ["a"]);
    assert_eq!(names("tier!=web").await, ["b", "c"]);
    assert_eq!(names("tier").await, ["a", "b"]);
    assert_eq!(names("!tier").await, ["c"]);
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
