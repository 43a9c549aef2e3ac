//! Controller scale benchmark: `cargo bench --bench controller_scale`.
//!
//! Starts the in-process test API server and a real `ironlb controller`
//! process, creates 5,000 LoadBalancer Services, and prints the time until every
//! one has an address, the CPU time the controller used and its peak RSS.
//! Then 1,000 TCPRoutes over 20 Gateways of ironlb's class: the time until
//! the Gateway controller has accepted every one, and its CPU time. Then the
//! controller is stopped and another started over those Services: how long
//! its first pass (every address restored from status) takes, by its own
//! `reconcile_duration_seconds`, and that no address moved.
//! Not a test: the figures depend on the machine.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use support::*;

const SERVICES: usize = 5_000;

/// TCPRoutes, one per listener, over Gateways of [`LISTENERS`] listeners.
const ROUTES: usize = 1_000;
const LISTENERS: usize = 50;

#[tokio::main]
async fn main() {
    let server = ApiServer::start().await;
    let client = server.client();
    let dir = std::env::temp_dir().join(format!("ironlb-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    create_pool(&client, pool("bench", &["10.0.0.0/16"])).await;

    let (mut child, port) = spawn_controller(&server, &dir, "bench");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "ironlb-system");
    wait_for(
        "the controller to take the lease",
        Duration::from_secs(30),
        || async {
            leases
                .get_opt("ironlb-controller")
                .await
                .ok()
                .flatten()?
                .spec?
                .holder_identity
        },
    )
    .await;

    let started = Instant::now();
    futures::stream::iter(0..SERVICES)
        .map(|i| {
            let client = client.clone();
            async move { create_service(&client, Svc::lb("default", &format!("svc-{i}")).build()).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let created = started.elapsed();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    wait_for(
        "every Service to have an address",
        Duration::from_secs(600),
        || async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let list = services.list(&Default::default()).await.ok()?;
            let done = list.items.iter().filter(|s| !ips_of(s).is_empty()).count();
            (done == SERVICES).then_some(())
        },
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let services_cpu_seconds = cpu_seconds(child.id());
    let (passes, pass_seconds) = reconcile_seconds(port).expect("the controller's metrics");
    let gateway_seconds = routes_accepted(&client).await;
    let gateway_cpu_seconds = cpu_seconds(child.id()) - services_cpu_seconds;
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("controller status");
    let peak_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    let addresses_before = namespace_addresses(&client, "default").await;
    // Stopped as Kubernetes stops it, so it hands the lease over at once.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let restarted = Instant::now();
    let (mut child, port) = spawn_controller(&server, &dir, "bench-restarted");
    let (_, first_pass_seconds) = wait_for(
        "the restarted controller's first pass",
        Duration::from_secs(120),
        || async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            reconcile_seconds(port).filter(|(passes, _)| *passes >= 1)
        },
    )
    .await;
    let restart_seconds = restarted.elapsed().as_secs_f64();
    let addresses_after = namespace_addresses(&client, "default").await;
    assert_eq!(addresses_after.len(), addresses_before.len());
    let moved = addresses_after
        .iter()
        .zip(&addresses_before)
        .filter(|(after, before)| after != before)
        .count();
    assert_eq!(moved, 0, "a restart moved {moved} Services' addresses");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let peak_mib = peak_kib / 1024.0;
    println!("controller_scale: {SERVICES} Services through the test API server\n");
    println!("{:<36} {:>10}", "measure", "value");
    println!(
        "{:<36} {:>10.2}",
        "seconds to create them all",
        created.as_secs_f64()
    );
    println!(
        "{:<36} {:>10.2}",
        "seconds until all have addresses", seconds
    );
    println!(
        "{:<36} {:>10.2}",
        "controller CPU seconds (the Services)", services_cpu_seconds
    );
    println!("{:<36} {:>10}", "controller passes meanwhile", passes);
    println!(
        "{:<36} {:>10.1}",
        "mean pass ms (plan and writes)",
        pass_seconds * 1000.0 / passes.max(1) as f64
    );
    println!(
        "{:<36} {:>10.2}",
        format!("seconds until {ROUTES} routes accepted"),
        gateway_seconds
    );
    println!(
        "{:<36} {:>10.2}",
        "controller CPU seconds (the routes)", gateway_cpu_seconds
    );
    println!("{:<36} {:>10.1}", "controller peak RSS (MiB)", peak_mib);
    println!(
        "{:<36} {:>10.2}",
        "restart: seconds to first pass done", restart_seconds
    );
    println!(
        "{:<36} {:>10.1}",
        "restart: first pass ms (every Service)",
        first_pass_seconds * 1000.0
    );
    println!(
        "\ncontroller_scale services={SERVICES} seconds={seconds:.2} cpu_seconds={services_cpu_seconds:.2} \
         routes={ROUTES} route_seconds={gateway_seconds:.2} route_cpu_seconds={gateway_cpu_seconds:.2} \
         peak_rss_mib={peak_mib:.1} restart_seconds={restart_seconds:.2} \
         restart_pass_ms={:.1} moved=0",
        first_pass_seconds * 1000.0
    );
}

/// Starts `ironlb controller` against `server` as `identity`; returns it and
/// its metrics port.
fn spawn_controller(
    server: &ApiServer,
    dir: &std::path::Path,
    identity: &str,
) -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .args(["controller", "--kubeconfig"])
        .arg(server.kubeconfig(dir))
        .args([
            "--identity",
            identity,
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ironlb controller");
    (child, port)
}

/// The controller's passes so far and the seconds they took, from its
/// `/metrics`; `None` while it does not answer.
fn reconcile_seconds(port: u16) -> Option<(u64, f64)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let count = value("ironlb_controller_reconcile_duration_seconds_count")?;
    let sum = value("ironlb_controller_reconcile_duration_seconds_sum")?;
    Some((count as u64, sum))
}

/// The CPU time (user and system) process `pid` has used, in seconds: what
/// the controller itself costs, apart from the API server it waits on.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("controller stat");
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields[11..13]
        .iter()
        .filter_map(|f| f.parse::<f64>().ok())
        .sum();
    // The kernel counts in USER_HZ, 100 on Linux.
    ticks / 100.0
}

/// Creates a GatewayClass of ironlb's, `ROUTES / LISTENERS` Gateways and a
/// TCPRoute per listener, each to one of the Services; returns the seconds
/// from the first route until every route shows the controller's parent
/// status.
async fn routes_accepted(client: &kube::Client) -> f64 {
    use ironlb::api::gateway::{Gateway, GatewayClass, TCPRoute};
    use kube::api::PostParams;
    use serde_json::json;
    fn typed<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> K {
        serde_json::from_value(v).expect("a well-formed object")
    }
    let post = PostParams::default();
    Api::<GatewayClass>::all(client.clone())
        .create(
            &post,
            &typed(json!({"metadata": {"name": "bench"},
                "spec": {"controllerName": "ironlb.dev/gateway-controller"}})),
        )
        .await
        .expect("create GatewayClass");
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), "default");
    for g in 0..ROUTES / LISTENERS {
        let listeners: Vec<_> = (0..LISTENERS)
            .map(|l| json!({"name": format!("l-{l}"), "port": 10_000 + l, "protocol": "TCP"}))
            .collect();
        let gateway = json!({"metadata": {"name": format!("gw-{g}"), "namespace": "default"},
            "spec": {"gatewayClassName": "bench",
                "infrastructure": {"annotations": {"ironlb.dev/address-pool": "bench"}},
                "listeners": listeners}});
        gateways
            .create(&post, &typed(gateway))
            .await
            .expect("create Gateway");
    }
    let routes: Api<TCPRoute> = Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    futures::stream::iter(0..ROUTES)
        .map(|i| {
            let (routes, post) = (routes.clone(), post.clone());
            let route = json!({"metadata": {"name": format!("r-{i}"), "namespace": "default"},
                "spec": {"parentRefs": [{"name": format!("gw-{}", i / LISTENERS),
                                         "sectionName": format!("l-{}", i % LISTENERS)}],
                    "rules": [{"backendRefs": [{"name": format!("svc-{i}"), "port": 80}]}]}});
            async move {
                routes
                    .create(&post, &typed(route))
                    .await
                    .expect("create TCPRoute")
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    wait_for("every route accepted", Duration::from_secs(600), || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let list = routes.list(&Default::default()).await.ok()?;
        let accepted = list
            .items
            .iter()
            .filter(|r| {
                let r = serde_json::to_value(r).unwrap_or_default();
                r["status"]["parents"].as_array().is_some_and(|p| {
                    p.iter().any(|p| {
                        p["controllerName"] == "ironlb.dev/gateway-controller"
                            && p["conditions"].as_array().is_some_and(|c| {
                                c.iter()
                                    .any(|c| c["type"] == "Accepted" && c["status"] == "True")
                            })
                    })
                })
            })
            .count();
        (accepted == ROUTES).then_some(())
    })
    .await;
    started.elapsed().as_secs_f64()
}
