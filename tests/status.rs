//! `ironlb status` against the test API server: the pools' counts, each
//! Service's address, pool, announcing node and interface and forwarding mode,
//! as a table and as JSON.

mod support;

use ironlb::api::{IPAddressPool, ServiceL2Status, ServiceL2StatusSpec};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use support::{ApiServer, Svc, create_pool, create_service, pool};

#[tokio::test]
async fn status_joins_pools_services_and_announcements() {
    let server = ApiServer::start().await;
    let client = server.client();
    create_pool(&client, pool("lan", &["192.168.10.100-192.168.10.109"])).await;
    Api::<IPAddressPool>::all(client.clone())
        .patch_status(
            "lan",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"assignedIPv4": 1, "availableIPv4": 9}})),
        )
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "web");
    // Writes `ingress` (a list of ingress entries) as a Service's status.
    let show = |name: &'static str, ingress: serde_json::Value| {
        let services = services.clone();
        async move {
            services
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(
                        serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}}),
                    ),
                )
                .await
                .unwrap();
        }
    };
    create_service(
        &client,
        Svc::lb("web", "ingress")
            .annotation("ironlb.dev/forwarding", "embedded")
            .build(),
    )
    .await;
    show(
        "ingress",
        serde_json::json!([{"ip": "192.168.10.100", "ipMode": "Proxy"}]),
    )
    .await;
    create_service(&client, Svc::lb("web", "waiting").build()).await;
    create_service(
        &client,
        Svc::lb("web", "theirs").class("example.com/other").build(),
    )
    .await;
    Api::<ServiceL2Status>::namespaced(client.clone(), "web")
        .create(
            &PostParams::default(),
            &ServiceL2Status::new(
                "ingress-node-2",
                ServiceL2StatusSpec {
                    service: "ingress".into(),
                    node: "node-2".into(),
                    addresses: vec!["192.168.10.100".into()],
                    interfaces: vec!["eth0".into()],
                },
            ),
        )
        .await
        .unwrap();

    // The controller's warning about the pending Service (an older one
    // first, which the newer replaces), and one from someone else.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "web");
    for (name, controller, reason, at) in [
        (
            "w1",
            "ironlb-controller",
            "NoMatchingPool",
            "2026-12-04T10:00:00.000000Z",
        ),
        (
            "w2",
            "ironlb-controller",
            "PoolExhausted",
            "2026-12-04T10:05:00.000000Z",
        ),
        (
            "w3",
            "someone-else",
            "Unrelated",
            "2026-12-04T10:09:00.000000Z",
        ),
    ] {
        let event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "web"},
            "eventTime": at, "type": "Warning", "reason": reason,
            "note": format!("{reason} said here"), "action": "Allocate",
            "reportingController": controller, "reportingInstance": "ctl-a",
            "regarding": {"apiVersion": "v1", "kind": "Service", "namespace": "web", "name": "waiting"},
        }))
        .unwrap();
        events.create(&PostParams::default(), &event).await.unwrap();
    }
    // An address no node reports announcing.
    create_service(&client, Svc::lb("web", "silent").build()).await;
    show("silent", serde_json::json!([{"ip": "192.168.10.101"}])).await;

    // One advertised over BGP.
    create_service(&client, Svc::lb("web", "routed").build()).await;
    show("routed", serde_json::json!([{"ip": "192.168.10.102"}])).await;
    let advertised: ironlb::api::ServiceBGPStatus = serde_json::from_value(serde_json::json!({
        "apiVersion": "ironlb.dev/v1alpha1", "kind": "ServiceBGPStatus",
        "metadata": {"name": "routed-node-1", "namespace": "web"},
        "spec": {"service": "routed", "node": "node-1", "peers": ["tor"], "addresses": ["192.168.10.102"]},
    }))
    .unwrap();
    Api::<ironlb::api::ServiceBGPStatus>::namespaced(client.clone(), "web")
        .create(&PostParams::default(), &advertised)
        .await
        .unwrap();

    let dir = std::env::temp_dir().join(format!("ironlb-status-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = server.kubeconfig(&dir);
    let run = |format: &'static str| {
        let kubeconfig = kubeconfig.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_ironlb"))
                .args([
                    "status",
                    "--kubeconfig",
                    kubeconfig.to_str().unwrap(),
                    "-o",
                    format,
                ])
                .output()
                .await
                .unwrap()
        }
    };
    let table = run("table").await;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let line = |start: &str| {
        text.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line {start:?} in\n{text}"))
    };
    assert_eq!(
        line("lan "),
        "lan 192.168.10.100-192.168.10.109 1 v4, 0 v6 9 v4, 0 v6 -"
    );
    assert_eq!(
        line("web ingress"),
        "web ingress 192.168.10.100 lan node-2 eth0 embedded -"
    );
    assert_eq!(
        line("web waiting"),
        "web waiting <pending> - - - kube-proxy PoolExhausted: PoolExhausted said here"
    );
    assert!(
        line("web silent")
            .starts_with("web silent 192.168.10.101 lan - - kube-proxy not announced"),
        "{text}"
    );
    assert_eq!(
        line("web routed"),
        "web routed 192.168.10.102 lan node-1 bgp:tor kube-proxy -"
    );
    assert!(
        !text.contains("theirs"),
        "another class's Service is listed:\n{text}"
    );

    let json = run("json").await;
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["pools"][0]["availableIPv4"], 9);
    let ingress = &value["services"][0];
    assert_eq!(ingress["name"], "ingress");
    assert_eq!(ingress["nodes"], serde_json::json!(["node-2"]));
    assert_eq!(ingress["interfaces"], serde_json::json!(["eth0"]));
    assert_eq!(ingress["pool"], "lan");
    assert_eq!(ingress["forwarding"], "embedded");

    // As kubectl finds a cluster: ~/.kube/config with nothing else said, and
    // $KUBECONFIG as a list whose first entry does not exist.
    let home = dir.join("home");
    std::fs::create_dir_all(home.join(".kube")).unwrap();
    std::fs::copy(&kubeconfig, home.join(".kube/config")).unwrap();
    let found = |home: &std::path::Path, env: Option<String>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ironlb"));
        cmd.args(["status", "-o", "json"])
            .env("HOME", home)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST");
        if let Some(list) = env {
            cmd.env("KUBECONFIG", list);
        }
        cmd.output()
    };
    for (what, env) in [
        ("~/.kube/config", None),
        (
            "$KUBECONFIG",
            Some(format!(
                "{}:{}",
                dir.join("absent").display(),
                kubeconfig.display()
            )),
        ),
    ] {
        let out = found(&home, env).await.unwrap();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(value["pools"][0]["name"], "lan", "{what}");
    }
    // Nothing at all: it says where it looked.
    let out = found(&dir.join("empty-home"), None).await.unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("no kubeconfig") && said.contains("--kubeconfig"),
        "{said}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
