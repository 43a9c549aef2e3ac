//! The parts of the Kubernetes API protocol ironlb depends on, as checks that
//! run unchanged on the in-process test server (tests/apiserver.rs) and on a
//! real API server (tests/e2e.rs): where the two differ, the test server is
//! wrong and these fail on it.
//!
//! Each check takes an admin client, a namespace that exists, and a prefix
//! for the cluster-scoped names it makes.

// These are test bodies shared by two test binaries: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use futures::{StreamExt, TryStreamExt};
use ironlb::api::IPAddressPool;
use k8s_openapi::api::core::v1::Service;
use kube::api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client, Error};
use serde_json::json;

use super::{Svc, create_pool, ingress_ips, pool};

/// The status code and reason of an API error.
pub fn code(err: Error) -> (u16, String) {
    match err {
        Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API error, got {other}"),
    }
}

fn services(client: &Client, ns: &str) -> Api<Service> {
    Api::namespaced(client.clone(), ns)
}

/// 409 `AlreadyExists` on a second create, 404 `NotFound` for a missing object.
pub async fn create_twice_is_already_exists_and_a_missing_object_is_not_found(
    client: &Client,
    ns: &str,
) {
    let api = services(client, ns);
    let svc = Svc::lb(ns, "twice").build();
    let created = api.create(&PostParams::default(), &svc).await.unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
    assert_eq!(
        code(api.create(&PostParams::default(), &svc).await.unwrap_err()),
        (409, "AlreadyExists".into())
    );
    assert_eq!(
        code(api.get("nope").await.unwrap_err()),
        (404, "NotFound".into())
    );
}

/// The defaults a real server fills in that ironlb reads.
pub async fn a_created_service_gets_the_defaults_ironlb_reads(client: &Client, ns: &str) {
    let api = services(client, ns);
    let created = api
        .create(&PostParams::default(), &Svc::lb(ns, "defaults").build())
        .await
        .unwrap();
    let spec = created.spec.expect("spec");
    assert_eq!(spec.ip_families.as_deref(), Some(&["IPv4".to_string()][..]));
    assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
    assert_eq!(spec.session_affinity.as_deref(), Some("None"));
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
    let port = &spec.ports.expect("ports")[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80)),
        "targetPort defaults to port"
    );
    assert!(
        created
            .status
            .is_none_or(|s| s.load_balancer.is_none_or(|lb| lb.ingress.is_none()))
    );
}

/// A replace or a patch carrying a stale `resourceVersion` is a 409 `Conflict`,
/// never a silent overwrite: what a controller's optimistic concurrency rests on.
pub async fn a_stale_resource_version_is_a_conflict_on_replace_and_patch(
    client: &Client,
    ns: &str,
) {
    let api = services(client, ns);
    let v1 = api
        .create(&PostParams::default(), &Svc::lb(ns, "stale").build())
        .await
        .unwrap();
    let mut v2 = v1.clone();
    v2.metadata.labels = Some([("x".to_string(), "1".to_string())].into());
    let v2 = api
        .replace("stale", &PostParams::default(), &v2)
        .await
        .unwrap();
    assert_ne!(v1.metadata.resource_version, v2.metadata.resource_version);
    let err = api
        .replace("stale", &PostParams::default(), &v1)
        .await
        .unwrap_err();
    assert_eq!(code(err), (409, "Conflict".into()));

    let old_rv = v1.metadata.resource_version.clone().unwrap();
    let stale = json!({
        "metadata": {"resourceVersion": old_rv},
        "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}},
    });
    let err = api
        .patch_status("stale", &PatchParams::default(), &Patch::Merge(&stale))
        .await
        .unwrap_err();
    assert_eq!(code(err), (409, "Conflict".into()), "stale merge patch");
    assert_eq!(
        ingress_ips(client, ns, "stale").await.unwrap(),
        Vec::<String>::new()
    );
    let current = json!({
        "metadata": {"resourceVersion": v2.metadata.resource_version.clone().unwrap()},
        "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}},
    });
    api.patch_status("stale", &PatchParams::default(), &Patch::Merge(&current))
        .await
        .expect("a patch with the current resourceVersion applies");
    assert_eq!(
        ingress_ips(client, ns, "stale").await.unwrap(),
        ["10.0.0.1"]
    );
}

/// Writes to `/status` change only `status`; other writes never change it. An
/// ingress `ip` written without an `ipMode` gets `VIP`.
pub async fn status_writes_ignore_spec_and_other_writes_ignore_status(client: &Client, ns: &str) {
    let api = services(client, ns);
    api.create(&PostParams::default(), &Svc::lb(ns, "split").build())
        .await
        .unwrap();
    let both = |ip: &str, publish: bool| {
        json!({
            "spec": {"publishNotReadyAddresses": publish},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}},
        })
    };
    let after_status = api
        .patch_status(
            "split",
            &PatchParams::default(),
            &Patch::Merge(both("10.0.0.1", true)),
        )
        .await
        .unwrap();
    assert_eq!(after_status.spec.unwrap().publish_not_ready_addresses, None);
    let ingress = after_status
        .status
        .unwrap()
        .load_balancer
        .unwrap()
        .ingress
        .unwrap();
    assert_eq!(ingress[0].ip.as_deref(), Some("10.0.0.1"));
    assert_eq!(ingress[0].ip_mode.as_deref(), Some("VIP"), "defaulted");
    let after_main = api
        .patch(
            "split",
            &PatchParams::default(),
            &Patch::Merge(both("10.9.9.9", true)),
        )
        .await
        .unwrap();
    assert_eq!(
        after_main.spec.unwrap().publish_not_ready_addresses,
        Some(true)
    );
    assert_eq!(
        ingress_ips(client, ns, "split").await.unwrap(),
        ["10.0.0.1"]
    );
}

/// A JSON patch applies; a patch that changes nothing keeps the
/// `resourceVersion` (and sends no watch event).
pub async fn json_patch_applies_and_a_no_op_keeps_the_resource_version(
    client: &Client,
    prefix: &str,
) {
    let name = format!("{prefix}-jsonpatch");
    let api: Api<IPAddressPool> = Api::all(client.clone());
    let created = create_pool(client, pool(&name, &["10.0.0.0/24"])).await;
    let patch: json_patch::Patch = serde_json::from_value(
        json!([{"op": "add", "path": "/spec/addresses/-", "value": "10.0.1.0/24"}]),
    )
    .unwrap();
    let patched = api
        .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .unwrap();
    assert_eq!(patched.spec.addresses, ["10.0.0.0/24", "10.0.1.0/24"]);
    assert_ne!(
        patched.metadata.resource_version,
        created.metadata.resource_version
    );
    let same = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"autoAssign": true}})),
        )
        .await
        .unwrap();
    assert_eq!(
        same.metadata.resource_version, patched.metadata.resource_version,
        "nothing changed"
    );
    api.delete(&name, &Default::default()).await.unwrap();
}

/// A strategic-merge patch merges a built-in kind's keyed lists (a Service's
/// ports by `port`), where a merge patch replaces them; custom resources have
/// no strategic merge at all (415).
pub async fn strategic_merge_merges_keyed_lists_and_custom_resources_refuse_it(
    client: &Client,
    ns: &str,
    prefix: &str,
) {
    let api = services(client, ns);
    let mut svc = Svc::lb(ns, "smp").build();
    // Two ports need names.
    svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].name = Some("http".into());
    api.create(&PostParams::default(), &svc).await.unwrap();
    let add = json!({"spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}});
    let ports_after = |patch: Patch<serde_json::Value>| {
        let api = api.clone();
        async move {
            let svc = api
                .patch("smp", &PatchParams::default(), &patch)
                .await
                .unwrap();
            let ports = svc.spec.unwrap().ports.unwrap();
            ports.iter().map(|p| p.port).collect::<Vec<i32>>()
        }
    };
    assert_eq!(
        ports_after(Patch::Strategic(add.clone())).await,
        [443, 80],
        "merged by port, the patch's entries first"
    );
    let ports = ports_after(Patch::Merge(add)).await;
    assert_eq!(ports, [443], "a merge patch replaces the list");

    let name = format!("{prefix}-smp");
    create_pool(client, pool(&name, &["10.0.0.0/24"])).await;
    let pools: Api<IPAddressPool> = Api::all(client.clone());
    let err = pools
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"autoAssign": false}})),
        )
        .await
        .unwrap_err();
    assert_eq!(code(err), (415, "UnsupportedMediaType".into()));
    pools.delete(&name, &Default::default()).await.unwrap();
}

/// Server-side apply: the body names a new object (an existing one is named
/// by the URL); a second manager setting a
/// field the first owns is a 409 unless forced; the elements of a `set` list
/// are owned one by one, so two managers' addresses add up.
pub async fn server_side_apply_owns_fields_and_set_elements(client: &Client, prefix: &str) {
    let name = format!("{prefix}-ssa");
    let api: Api<IPAddressPool> = Api::all(client.clone());
    let body = |addr: &str, auto: bool| {
        json!({"apiVersion": "ironlb.dev/v1alpha1", "kind": "IPAddressPool", "metadata": {"name": name},
               "spec": {"addresses": [addr], "autoAssign": auto}})
    };
    let apply = |manager: &'static str, force: bool, body: serde_json::Value| {
        let api = api.clone();
        let name = name.clone();
        async move {
            let mut params = PatchParams::apply(manager);
            params.force = force;
            api.patch(&name, &params, &Patch::Apply(body)).await
        }
    };
    let mut nameless = body("10.0.0.0/24", false);
    nameless["metadata"] = json!({});
    let err = apply("alice", false, nameless).await.unwrap_err();
    assert_eq!(
        code(err),
        (400, "BadRequest".into()),
        "apply names the object"
    );

    apply("alice", false, body("10.0.0.0/24", false))
        .await
        .unwrap();
    let err = apply("bob", false, body("10.0.1.0/24", true))
        .await
        .unwrap_err();
    assert_eq!(code(err), (409, "Conflict".into()), "autoAssign is alice's");
    let shared = apply("bob", false, body("10.0.1.0/24", false))
        .await
        .unwrap();
    assert_eq!(
        shared.spec.addresses,
        ["10.0.0.0/24", "10.0.1.0/24"],
        "set elements add up"
    );
    let moved = apply("alice", false, body("10.0.2.0/24", false))
        .await
        .unwrap();
    assert_eq!(
        moved.spec.addresses,
        ["10.0.1.0/24", "10.0.2.0/24"],
        "alice's old element goes, bob's stays"
    );
    let forced = apply("bob", true, body("10.0.1.0/24", true)).await.unwrap();
    assert!(forced.spec.auto_assign);
    let mut nameless = body("10.0.1.0/24", true);
    nameless["metadata"] = json!({});
    apply("bob", false, nameless)
        .await
        .expect("an existing object is named by the URL");
    api.delete(&name, &Default::default()).await.unwrap();
}

/// Deleting an object that has a finalizer leaves it Terminating (a
/// `deletionTimestamp`, still readable); removing the last finalizer deletes it.
pub async fn a_finalizer_holds_a_deleted_object_until_it_is_removed(client: &Client, prefix: &str) {
    let name = format!("{prefix}-held");
    let api: Api<IPAddressPool> = Api::all(client.clone());
    let mut held = pool(&name, &["10.0.0.0/24"]);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    create_pool(client, held).await;
    api.delete(&name, &Default::default()).await.unwrap();
    let terminating = api.get(&name).await.expect("still there");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "example.com/hold"},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ]))
    .unwrap();
    api.patch(&name, &PatchParams::default(), &Patch::Json::<()>(ops))
        .await
        .unwrap();
    assert_eq!(
        code(api.get(&name).await.unwrap_err()).0,
        404,
        "gone with its finalizer"
    );
}

fn event_name(e: WatchEvent<Service>) -> String {
    match e {
        WatchEvent::Added(s) => format!("ADDED {}", s.metadata.name.unwrap_or_default()),
        WatchEvent::Modified(s) => format!("MODIFIED {}", s.metadata.name.unwrap_or_default()),
        WatchEvent::Deleted(s) => format!("DELETED {}", s.metadata.name.unwrap_or_default()),
        WatchEvent::Bookmark(_) => "BOOKMARK".to_string(),
        WatchEvent::Error(e) => format!("ERROR {}", e.code),
    }
}

/// A watch from a `resourceVersion` replays what came after it, in order, and
/// only for the objects its label and field selectors pick.
pub async fn a_watch_sees_changes_in_order_through_its_selectors(client: &Client, ns: &str) {
    let api = services(client, ns);
    let created = api
        .create(
            &PostParams::default(),
            &Svc::lb(ns, "watched").label("w", "yes").build(),
        )
        .await
        .unwrap();
    let from = created.metadata.resource_version.clone().unwrap();
    api.create(&PostParams::default(), &Svc::lb(ns, "unwatched").build())
        .await
        .unwrap();
    for name in ["unwatched", "watched"] {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"a": "b"}}})),
        )
        .await
        .unwrap();
    }
    api.delete("unwatched", &Default::default()).await.unwrap();
    api.delete("watched", &Default::default()).await.unwrap();
    let all: Vec<String> = api
        .watch(&WatchParams::default().timeout(2), &from)
        .await
        .unwrap()
        .take(4)
        .map_ok(event_name)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        all,
        [
            "ADDED unwatched",
            "MODIFIED unwatched",
            "MODIFIED watched",
            "DELETED unwatched"
        ]
    );
    for params in [
        WatchParams::default().labels("w=yes"),
        WatchParams::default().fields("metadata.name=watched"),
    ] {
        let picked: Vec<String> = api
            .watch(&params.timeout(2), &from)
            .await
            .unwrap()
            .take(2)
            .map_ok(event_name)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(picked, ["MODIFIED watched", "DELETED watched"]);
    }
}

/// Lists honour equality label selectors and the `metadata.name` field
/// selector; a field the kind cannot select on is a 400.
pub async fn lists_honour_label_and_field_selectors(client: &Client, ns: &str) {
    let api = services(client, ns);
    for (name, tier) in [
        ("sel-a", Some("web")),
        ("sel-b", Some("db")),
        ("sel-c", None),
    ] {
        let mut svc = Svc::lb(ns, name).label("sel", "yes");
        if let Some(tier) = tier {
            svc = svc.label("tier", tier);
        }
        api.create(&PostParams::default(), &svc.build())
            .await
            .unwrap();
    }
    let names = |params: ListParams| {
        let api = api.clone();
        async move {
            let list = api.list(&params).await.unwrap();
            list.items
                .into_iter()
                .map(|s| s.metadata.name.unwrap())
                .collect::<Vec<_>>()
        }
    };
    let labels = |sel: &str| ListParams::default().labels(&format!("sel=yes,{sel}"));
    assert_eq!(names(labels("tier=web")).await, ["sel-a"]);
    assert_eq!(names(labels("tier!=web")).await, ["sel-b", "sel-c"]);
    assert_eq!(names(labels("tier")).await, ["sel-a", "sel-b"]);
    assert_eq!(names(labels("!tier")).await, ["sel-c"]);
    assert_eq!(
        names(ListParams::default().fields("metadata.name=sel-b")).await,
        ["sel-b"]
    );
    assert_eq!(
        names(
            ListParams::default()
                .labels("sel=yes")
                .fields("metadata.name!=sel-b")
        )
        .await,
        ["sel-a", "sel-c"]
    );
    let err = api
        .list(&ListParams::default().fields("spec.bogus=1"))
        .await
        .unwrap_err();
    assert_eq!(code(err).0, 400);
}
