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
    create_service(
        &client,
        Svc::lb("web", "ingress")
            .annotation("ironlb.dev/forwarding", "embedded")
            .build(),
    )
    .await;
    services
        .patch_status(
            "ingress",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.168.10.100", "ipMode": "Proxy"}]}}})),
        )
        .await
        .unwrap();
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
        "web ingress 192.168.10.100 lan node-2 eth0 embedded"
    );
    assert_eq!(
        line("web waiting"),
        "web waiting <pending> - - - kube-proxy"
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
    let _ = std::fs::remove_dir_all(&dir);
}
