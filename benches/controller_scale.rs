//! Controller scale benchmark: `cargo bench --bench controller_scale`.
//!
//! Starts the in-process test API server and a real `ironlb controller`
//! process, creates 5,000 LoadBalancer Services, and prints the time until every
//! one has an address and the controller's peak RSS. Not a test: the figures
//! depend on the machine.

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

#[tokio::main]
async fn main() {
    let server = ApiServer::start().await;
    let client = server.client();
    let dir = std::env::temp_dir().join(format!("ironlb-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    create_pool(&client, pool("bench", &["10.0.0.0/16"])).await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .args(["controller", "--kubeconfig"])
        .arg(server.kubeconfig(&dir))
        .args([
            "--identity",
            "bench",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ironlb controller");
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
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("controller status");
    let peak_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
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
    println!("{:<36} {:>10.1}", "controller peak RSS (MiB)", peak_mib);
    println!(
        "\ncontroller_scale services={SERVICES} seconds={seconds:.2} peak_rss_mib={peak_mib:.1}"
    );
}
