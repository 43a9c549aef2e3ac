//! Pools change under Services that use them, and the Services keep answering:
//! the controller (in this process) and three real speakers in cluster mode (in
//! network namespaces) share the test API server; a client connects through
//! the embedded forwarder after each change to the pool — `avoidBuggyIPs` set,
//! shrunk past the address, given an invalid selector, edited to overlap a
//! pool in use, deleted — and the Service keeps its address throughout.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ironlb::api::{IPAddressPool, L2Advertisement, L2AdvertisementSpec, annotations};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use support::netns::{Lab, Speakers};
use support::*;

/// The first address of the pool, which `avoidBuggyIPs` would skip.
const VIP: &str = "10.77.1.0";
const CLIENT: &str = "10.77.0.2";
const BACKEND: &str = "10.77.0.50";

fn peer() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers/peer.py")
        .to_string_lossy()
        .into_owned()
}

struct World {
    lab: Lab,
    client_ns: String,
}

impl World {
    /// One request from the client through [`VIP`]:80 (`peer.py tcp`).
    fn request(&self) -> String {
        let out = self.lab.exec(
            &self.client_ns,
            &[
                "timeout",
                "3",
                "python3",
                &peer(),
                "tcp",
                VIP,
                "80",
                "hello",
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn answered(&self) -> bool {
        let answer = self.request();
        answer.starts_with(&format!("peer={CLIENT}:")) || answer.starts_with("peer=10.77.0.1")
    }

    fn logs(&self) -> String {
        (1..=3)
            .map(|i| {
                let log = std::fs::read_to_string(self.lab.dir().join(format!("node-{i}.log")));
                format!("--- node-{i}\n{}", log.unwrap_or_default())
            })
            .collect()
    }

    /// The client gets answers for two seconds running, `what` having just
    /// happened.
    fn keeps_answering(&self, what: &str) {
        let started = Instant::now();
        let mut answers = 0;
        while started.elapsed() < Duration::from_secs(2) {
            assert!(
                self.answered(),
                "after {what}, the client got {:?} from {VIP}; speaker logs:\n{}",
                self.request(),
                self.logs()
            );
            answers += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("pool changes: {what}: {answers} answers in a row");
    }
}

async fn patch_pool(client: &Client, patch: serde_json::Value) {
    Api::<IPAddressPool>::all(client.clone())
        .patch("lan", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("patch the pool");
}

/// Waits until the pool's `Valid` condition has `reason` (the controller has
/// seen the change), then a moment for the speakers to see it too.
async fn pool_reason(client: &Client, reason: &str) {
    wait_for(
        &format!("the pool's Valid condition to say {reason}"),
        Duration::from_secs(10),
        || async {
            let p = Api::<IPAddressPool>::all(client.clone())
                .get_opt("lan")
                .await
                .ok()??;
            p.status?
                .conditions
                .iter()
                .any(|c| c.type_ == "Valid" && c.reason == reason)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pool_change_leaves_the_service_its_address_and_the_client_its_answers() {
    let Some(mut lab) = Lab::new("every_pool_change_leaves_the_service_its_address") else {
        return;
    };
    let switch = lab.switch();
    let nodes = lab.plug_nodes(&switch, "10.77.0", 3);
    let client_ns = lab.namespace("client");
    lab.plug(&switch, &client_ns, "pc", &[&format!("{CLIENT}/24")]);
    // The pool's subnet is on the same segment, reached by ARP.
    lab.exec_ok(
        &client_ns,
        &["ip", "route", "add", "10.77.1.0/24", "dev", "eth0"],
    );
    let backend_ns = lab.namespace("web");
    lab.plug(&switch, &backend_ns, "pw", &[&format!("{BACKEND}/24")]);
    let log = lab.dir().join("backend.log");
    lab.spawn(
        &backend_ns,
        "python3",
        &[&peer(), "serve", BACKEND, "8080"],
        &log,
    );
    let control = lab.namespace("ctl");
    lab.plug(&switch, &control, "pctl", &["10.77.0.3/24"]);
    let server = ApiServer::start_in_namespace(&control, "10.77.0.3:6443".parse().unwrap()).await;
    let client = server.client();

    create_pool(&client, pool("lan", &["10.77.1.0/30"])).await;
    Api::<L2Advertisement>::all(client.clone())
        .create(
            &PostParams::default(),
            &L2Advertisement::new(
                "lan",
                L2AdvertisementSpec {
                    ip_address_pools: vec!["lan".into()],
                    interfaces: vec!["eth0".into()],
                    ..Default::default()
                },
            ),
        )
        .await
        .expect("create L2Advertisement");
    for i in 1..=3 {
        support::create_node(&client, &format!("node-{i}"), &format!("10.77.0.1{i}")).await;
    }
    let mut svc = Svc::lb("default", "web")
        .annotation(annotations::FORWARDING, "embedded")
        .build();
    svc.spec.as_mut().unwrap().selector = None;
    create_service(&client, svc).await;
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [BACKEND], "nodeName": "node-1", "conditions": {"ready": true}}],
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &slice)
        .await
        .unwrap();

    let controller = Controller::start(&client);
    assert_eq!(
        wait_for_addresses(&client, "default", "web", 1).await,
        [VIP]
    );
    let kubeconfig = server.lab_kubeconfig(lab.dir());
    for (i, ns) in nodes.iter().enumerate() {
        lab.start_cluster_speaker(ns, i + 1, "10.77.0", &kubeconfig);
    }
    let world = World { lab, client_ns };
    let started = Instant::now();
    while !world.answered() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the client never reached {VIP}: {:?}; logs:\n{}",
            world.request(),
            world.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    world.keeps_answering("the Service got its address");

    // avoidBuggyIPs: .0 is no longer an address of the pool.
    patch_pool(&client, json!({"spec": {"avoidBuggyIPs": true}})).await;
    wait_for_event(&client, "default", "web", "AddressOutsidePool").await;
    pool_reason(&client, "Accepted").await;
    world.keeps_answering("avoidBuggyIPs was set");

    // Shrunk past the address.
    patch_pool(&client, json!({"spec": {"addresses": ["10.77.1.2/31"]}})).await;
    wait_for(
        "the pool to list the orphan",
        Duration::from_secs(10),
        || async {
            let p = Api::<IPAddressPool>::all(client.clone())
                .get("lan")
                .await
                .ok()?;
            let s = p.status?;
            (s.conditions.iter().any(|c| c.type_ == "OrphanedAddresses")
                && p.spec.addresses == ["10.77.1.2/31"])
            .then_some(())
        },
    )
    .await;
    world.keeps_answering("the pool shrank past the address");

    // An invalid selector (stored before the schema refused it).
    patch_pool(
        &client,
        json!({"spec": {"serviceAllocation": {"serviceSelectors": [
            {"matchExpressions": [{"key": "app", "operator": "in", "values": ["web"]}]}]}}}),
    )
    .await;
    pool_reason(&client, "InvalidSelector").await;
    world.keeps_answering("the pool got an invalid selector");
    patch_pool(&client, json!({"spec": {"serviceAllocation": null}})).await;
    pool_reason(&client, "Accepted").await;

    // Edited to overlap a pool that is in use: the edited one is invalid.
    create_pool(&client, pool("other", &["10.77.2.0/30"])).await;
    let other = Svc::lb("default", "other").annotation(annotations::ADDRESS_POOL, "other");
    create_service(&client, other.build()).await;
    wait_for_addresses(&client, "default", "other", 1).await;
    wait_for(
        "the other pool to be accepted",
        Duration::from_secs(10),
        || async {
            let p = Api::<IPAddressPool>::all(client.clone())
                .get("other")
                .await
                .ok()?;
            ironlb::k8s::translate::is_established(&p).then_some(())
        },
    )
    .await;
    patch_pool(&client, json!({"spec": {"addresses": ["10.77.2.0/23"]}})).await;
    pool_reason(&client, "OverlapsPool").await;
    world.keeps_answering("the pool was edited to overlap another");

    // Deleted: Terminating while web holds its address.
    Api::<IPAddressPool>::all(client.clone())
        .delete("lan", &Default::default())
        .await
        .unwrap();
    pool_reason(&client, "Terminating").await;
    world.keeps_answering("the pool was deleted");
    assert_eq!(
        ingress_ips(&client, "default", "web").await.unwrap(),
        [VIP],
        "web kept its address through every change"
    );

    // Once web goes, so does the pool.
    Api::<Service>::namespaced(client.clone(), "default")
        .delete("web", &Default::default())
        .await
        .unwrap();
    wait_for("the pool to go", Duration::from_secs(10), || async {
        Api::<IPAddressPool>::all(client.clone())
            .get_opt("lan")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    controller.stop().await;
    server.stop();
}
