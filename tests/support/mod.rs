//! Test-only helpers: the in-process API server, object builders, and waiting.
#![allow(dead_code)] // each test binary uses a different part

pub mod apiserver;
pub mod cluster;
pub mod cluster_lab;
pub mod netns;
pub mod nodes;
pub mod process;
pub mod protocol;
pub mod routers;
pub mod scenarios;
pub mod tenancy;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[allow(unused_imports)] // not every test binary starts a server
pub use apiserver::ApiServer;
use ironlb::api::IPAddressPool;
use ironlb::control_plane;
use ironlb::controller::metrics::Metrics;
#[allow(unused_imports)] // not every test binary builds each kind
pub use ironlb::testkit::{Svc, pool, pool_for};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Creates Node `name` with InternalIP `address` (no kubelet makes it); the
/// address goes through the status subresource, as the kubelet writes it.
pub async fn create_node(client: &Client, name: &str, address: &str) {
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone());
    let node = serde_json::from_value(json!({"metadata": {"name": name}})).expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    let status = json!({"status": {"addresses": [{"type": "InternalIP", "address": address}]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("node address");
}

/// Creates `svc` in its namespace.
pub async fn create_service(client: &Client, svc: Service) -> Service {
    let ns = svc.metadata.namespace.clone().expect("namespace");
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service")
}

/// Creates `pool`.
pub async fn create_pool(client: &Client, pool: IPAddressPool) -> IPAddressPool {
    Api::<IPAddressPool>::all(client.clone())
        .create(&PostParams::default(), &pool)
        .await
        .expect("create pool")
}

/// Replaces a pool's addresses.
pub async fn set_pool_addresses(client: &Client, name: &str, addresses: &[&str]) {
    Api::<IPAddressPool>::all(client.clone())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"addresses": addresses}})),
        )
        .await
        .expect("patch pool");
}

/// The addresses a Service shows in its status.
pub fn ips_of(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect()
}

/// Every Service of `namespace` with the addresses its status shows.
pub async fn namespace_addresses(
    client: &Client,
    namespace: &str,
) -> std::collections::BTreeMap<String, Vec<String>> {
    Api::<Service>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .expect("list services")
        .items
        .iter()
        .map(|s| (s.metadata.name.clone().unwrap_or_default(), ips_of(s)))
        .collect()
}

/// The addresses in a Service's status, `None` when it does not exist.
pub async fn ingress_ips(client: &Client, namespace: &str, name: &str) -> Option<Vec<String>> {
    let svc = Api::<Service>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .expect("get service")?;
    Some(ips_of(&svc))
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout`
/// saying what was awaited.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the Service shows exactly `n` addresses, and returns them.
pub async fn wait_for_addresses(
    client: &Client,
    namespace: &str,
    name: &str,
    n: usize,
) -> Vec<String> {
    wait_for(
        &format!("{namespace}/{name} to show {n} address(es)"),
        Duration::from_secs(5),
        || async {
            ingress_ips(client, namespace, name)
                .await
                .filter(|ips| ips.len() == n)
        },
    )
    .await
}

/// Events recorded on a Service: (type, reason, note).
pub async fn events_for(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Vec<(String, String, String)> {
    Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// Waits for an event of `reason` on the Service and returns its note.
pub async fn wait_for_event(client: &Client, namespace: &str, name: &str, reason: &str) -> String {
    wait_for(
        &format!("a {reason} event on {namespace}/{name}"),
        Duration::from_secs(5),
        || async {
            events_for(client, namespace, name)
                .await
                .into_iter()
                .find(|(_, r, _)| r == reason)
                .map(|(_, _, note)| note)
        },
    )
    .await
}

/// A controller running in this process against a test server.
pub struct Controller {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), control_plane::Error>>,
    /// Its metrics and readiness.
    pub metrics: Arc<Metrics>,
}

impl Controller {
    /// Starts a controller (no leader election) that serves Services of no class.
    pub fn start(client: &Client) -> Self {
        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::default());
        let task = tokio::spawn(control_plane::run(
            client.clone(),
            control_plane::Config::default(),
            None,
            metrics.clone(),
            stop.clone(),
        ));
        Self {
            stop,
            task,
            metrics,
        }
    }

    /// Stops it and waits until it has.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task
            .await
            .expect("controller task")
            .expect("controller run");
    }
}

/// Runs `promtool check metrics` (Debian's `prometheus` package, which
/// `./scripts/test` installs) on a `/metrics` page: `Err` with what it said
/// when Prometheus would refuse or flag the page. `None` (after printing why)
/// when promtool is missing; with `CI=true` that fails instead.
pub fn promtool_check(test: &str, page: &str) -> Option<Result<(), String>> {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        netns::skip(
            test,
            Some("promtool is not installed (./scripts/test installs Debian's prometheus)".into()),
        );
        return None;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    })
}

/// The metric names starting with `prefix` that the alert rules
/// (deploy/components/monitoring) read, so a test can check the component
/// exports each of them.
pub fn alerted_metrics(prefix: &str) -> Vec<String> {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/components/monitoring/ironlb.rules.yaml"
    ))
    .expect("the alert rules");
    let mut names: Vec<String> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with(prefix))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}
