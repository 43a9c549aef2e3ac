//! The switch from MetalLB to ironlb, in the namespace lab, as
//! docs/migrating-from-metallb.md tells it: while another provider's speaker
//! answers ARP for the Services' addresses, ironlb is configured from
//! `ironlb migrate metallb`, adopts every address and announces it; the old
//! speaker stops. A client polling every 100 ms loses less than a second
//! in all, and no address changes.
//!
//! Every node accepts traffic for the addresses whoever announces them (as
//! kube-proxy makes every node do), so what is measured is the announcing:
//! after the old speaker stops, the client forgets its neighbours and must
//! find the address again.

mod support;

use std::time::{Duration, Instant};

use ironlb::migrate::{Options, convert, kind_of, parse_objects};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::netns::{Lab, Speakers};
use support::{ApiServer, Svc, create_service};

/// A Service's address, and one shared by Services of two namespaces.
const WEB: &str = "10.77.0.100";
const DNS: &str = "10.77.0.53";
const PORT: &str = "5353";

/// MetalLB's configuration as a user exports it. The interface is named:
/// the lab's nodes have veth links, which ironlb, unlike MetalLB, does not
/// pick by itself (they are what container networks use).
const METALLB: &str = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: lan, namespace: metallb-system}
spec:
  addresses: [10.77.0.40-10.77.0.110]
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: lan, namespace: metallb-system}
spec:
  interfaces: [eth0]
"#;

fn peer(name: &str) -> String {
    format!("{}/tests/peers/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A Service as MetalLB left it: its address in the status, the pool
/// recorded, and a sharing key when given.
async fn metallb_service(
    client: &Client,
    ns: &str,
    name: &str,
    ip: &str,
    proto: &str,
    key: Option<&str>,
) {
    let mut svc = Svc::lb(ns, name)
        .only_port(proto, PORT.parse().expect("port"))
        .annotation("metallb.io/ip-allocated-from-pool", "lan");
    if let Some(key) = key {
        svc = svc.annotation("metallb.io/allow-shared-ip", key);
    }
    create_service(client, svc.build()).await;
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}});
    Api::<Service>::namespaced(client.clone(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("status as MetalLB wrote it");
}

async fn address_of(client: &Client, ns: &str, name: &str) -> Option<String> {
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .ok()?;
    svc.status?.load_balancer?.ingress?.first()?.ip.clone()
}

/// The last lines of each speaker's log.
fn logs(lab: &Lab) -> String {
    (1..=3)
        .map(|i| {
            let text = std::fs::read_to_string(lab.dir().join(format!("node-{i}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(25).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("--- node-{i}\n{}\n", tail.join("\n"))
        })
        .collect()
}

/// What the poller printed when told to stop.
fn poller_report(lab: &Lab, stop: &std::path::Path, log: &std::path::Path) -> Value {
    std::fs::write(stop, "").expect("stop file");
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with('{')) {
            return serde_json::from_str(line).expect("poller JSON");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the poller did not report: {text}; lab {}",
            lab.dir().display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer2_switch_from_metallb_loses_under_a_second_and_moves_no_address() {
    let Some(mut lab) = Lab::new("migrate-l2") else {
        return;
    };
    let sw = lab.switch();
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let ns = lab.namespace(&format!("n{i}"));
        lab.plug(&sw, &ns, &format!("p{i}"), &[&format!("10.77.0.1{i}/24")]);
        // As kube-proxy does: every node takes the Services' traffic, and
        // only a speaker answers ARP for their addresses.
        lab.exec_ok(&ns, &["sysctl", "-qw", "net.ipv4.conf.eth0.arp_ignore=1"]);
        for (ip, proto) in [(WEB, "udp"), (DNS, "udp")] {
            lab.exec_ok(
                &ns,
                &[
                    "ip", "route", "add", "table", "local", "local", ip, "dev", "lo",
                ],
            );
            let log = lab.dir().join(format!("echo-{i}-{ip}-{proto}.log"));
            lab.spawn(
                &ns,
                env!("CARGO_BIN_EXE_ironlb"),
                &["demo-udp-echo", &format!("{ip}:{PORT}")],
                &log,
            );
        }
        nodes.push(ns);
    }
    let client_ns = lab.namespace("client");
    lab.plug(&sw, &client_ns, "pc", &["10.77.0.5/24"]);
    let control = lab.namespace("ctl");
    lab.plug(&sw, &control, "pctl", &["10.77.0.2/24"]);
    let server = ApiServer::start_in_namespace(&control, "10.77.0.2:6443".parse().unwrap()).await;
    let client = server.client();

    // MetalLB's state: two Services of two namespaces sharing DNS's
    // address (one key), one Service on its own.
    metallb_service(&client, "shop", "web", WEB, "UDP", None).await;
    metallb_service(&client, "dns-tcp", "dns", DNS, "TCP", Some("dns")).await;
    metallb_service(&client, "dns-udp", "dns", DNS, "UDP", Some("dns")).await;
    for i in 1..=3 {
        support::create_node(&client, &format!("node-{i}"), &format!("10.77.0.1{i}")).await;
    }

    // The old speaker answers on node-1; the client polls both addresses.
    let announcer = lab.spawn(
        &nodes[0],
        "python3",
        &[&peer("arp_announcer.py"), "eth0", WEB, DNS],
        &lab.dir().join("announcer.log"),
    );
    let mut pollers = Vec::new();
    for ip in [WEB, DNS] {
        let stop = lab.dir().join(format!("stop-{ip}"));
        let log = lab.dir().join(format!("poller-{ip}.log"));
        lab.spawn(
            &client_ns,
            "python3",
            &[
                &peer("udp_poller.py"),
                ip,
                PORT,
                stop.to_str().expect("path"),
            ],
            &log,
        );
        pollers.push((ip, stop, log));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // ironlb: configured from the migration of MetalLB's objects (with the
    // Services, for the sharing they rely on), then its controller and
    // speakers start.
    let mut input = parse_objects(METALLB, "metallb.yaml").expect("parse");
    for svc in Api::<Service>::all(client.clone())
        .list(&Default::default())
        .await
        .expect("list")
        .items
    {
        let mut value = serde_json::to_value(svc).expect("json");
        value["apiVersion"] = "v1".into();
        value["kind"] = "Service".into();
        input.push(value);
    }
    let migration = convert(
        &input,
        &Options {
            namespace: "ironlb-system".into(),
            skip: Default::default(),
        },
    );
    assert!(migration.refused().is_empty(), "{}", migration.table());
    for object in &migration.objects {
        match kind_of(object).as_str() {
            "IPAddressPool" => {
                let pool: ironlb::api::IPAddressPool =
                    serde_json::from_value(object.clone()).expect("pool");
                assert_eq!(
                    pool.spec
                        .cross_namespace_sharing
                        .as_ref()
                        .map(|s| s.namespaces.clone()),
                    Some(vec!["dns-tcp".to_string(), "dns-udp".to_string()]),
                    "the migration lets the two namespaces keep sharing"
                );
                support::create_pool(&client, pool).await;
            }
            "L2Advertisement" => {
                let ad: ironlb::api::L2Advertisement =
                    serde_json::from_value(object.clone()).expect("advertisement");
                Api::<ironlb::api::L2Advertisement>::all(client.clone())
                    .create(&PostParams::default(), &ad)
                    .await
                    .expect("create advertisement");
            }
            other => panic!("unexpected {other}"),
        }
    }
    let controller = support::Controller::start(&client);
    let kubeconfig = server.lab_kubeconfig(lab.dir());
    for (i, ns) in nodes.iter().enumerate() {
        lab.start_cluster_speaker(ns, i + 1, "10.77.0", &kubeconfig);
    }
    let reports: Api<ironlb::api::ServiceL2Status> = Api::all(client.clone());
    support::wait_for(
        "ironlb to announce all three Services",
        Duration::from_secs(15),
        || async {
            let list = reports.list(&Default::default()).await.ok()?;
            let services: std::collections::BTreeSet<String> = list
                .items
                .iter()
                .map(|r| {
                    format!(
                        "{}/{}",
                        r.metadata.namespace.clone().unwrap_or_default(),
                        r.spec.service
                    )
                })
                .collect();
            (services.len() == 3).then_some(())
        },
    )
    .await;

    // The old speaker stops; the client forgets whom it knew, as it would
    // once its neighbour entries go stale.
    let stopped = Instant::now();
    lab.kill(announcer);
    lab.exec_ok(&client_ns, &["ip", "neigh", "flush", "dev", "eth0"]);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut total_lost_ms = 0;
    for (ip, stop, log) in &pollers {
        let report = poller_report(&lab, stop, log);
        let sent = report["sent"].as_u64().expect("sent");
        let lost = report["lost"].as_array().expect("lost").len() as u64;
        eprintln!(
            "migration switch-over (layer 2), {ip}: {sent} probes every 100 ms, {lost} lost \
             ({} ms), longest gap {} ms; old speaker stopped {:?} before the end",
            lost * 100,
            report["longest_gap_ms"],
            stopped.elapsed()
        );
        assert!(sent > 40, "the poller ran: {report}");
        total_lost_ms += lost * 100;
    }
    assert!(
        total_lost_ms < 1000,
        "clients lost {total_lost_ms} ms in all (under 1 s wanted); the client's neighbours: \
         {}\n{}",
        lab.exec_ok(&client_ns, &["ip", "neigh", "show"]),
        logs(&lab)
    );
    // No address moved.
    for (ns, name, ip) in [
        ("shop", "web", WEB),
        ("dns-tcp", "dns", DNS),
        ("dns-udp", "dns", DNS),
    ] {
        assert_eq!(
            address_of(&client, ns, name).await.as_deref(),
            Some(ip),
            "{ns}/{name}"
        );
    }
    controller.stop().await;
    server.stop();
}
