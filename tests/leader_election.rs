//! Two real `ironlb controller` processes against the test API server: one leads,
//! the other stands by; SIGKILL the leader and the standby takes over.

mod support;

use std::time::Duration;

use support::process::{ControllerProcess, ScratchDir, holder};
use support::*;

#[tokio::test]
async fn when_the_leader_is_killed_the_standby_allocates() {
    let server = ApiServer::start().await;
    let client = server.client();
    let dir = ScratchDir::new("leader");
    let kubeconfig = server.kubeconfig(&dir.0);
    create_pool(&client, pool("lan", &["10.0.0.0/24"])).await;
    let mut procs = vec![
        ControllerProcess::spawn(&kubeconfig, &dir.0, "ctl-a", &[]),
        ControllerProcess::spawn(&kubeconfig, &dir.0, "ctl-b", &[]),
    ];

    let leader = wait_for("a leader", Duration::from_secs(15), || async {
        holder(&client).await
    })
    .await;
    create_service(&client, Svc::lb("default", "before").build()).await;
    assert_eq!(
        wait_for_addresses(&client, "default", "before", 1).await,
        ["10.0.0.0"]
    );

    let (index, standby) = if leader == "ctl-a" {
        (0, "ctl-b")
    } else {
        (1, "ctl-a")
    };
    let other = &procs[1 - index];
    for path in ["/healthz", "/readyz"] {
        let (code, _) = wait_for(
            &format!("{path} on the standby"),
            Duration::from_secs(5),
            || async { other.get(path) },
        )
        .await;
        assert_eq!(code, 200, "{path} on the standby");
    }
    // The gauges follow the status writes of the same pass.
    let assigned =
        "ironlb_controller_pool_addresses{pool=\"lan\",family=\"ipv4\",state=\"assigned\"} 1";
    let metrics = wait_for(
        "the leader's metrics to count the address",
        Duration::from_secs(5),
        || async {
            procs[index]
                .get("/metrics")
                .map(|(_, body)| body)
                .filter(|b| b.contains(assigned))
        },
    )
    .await;
    assert!(metrics.contains("ironlb_controller_leader 1"), "{metrics}");

    let mut killed = procs.remove(index);
    killed.kill();
    assert_eq!(killed.identity, leader);

    create_service(&client, Svc::lb("default", "after").build()).await;
    let survivor = &procs[0];
    let ips = wait_for(
        "the standby to allocate",
        Duration::from_secs(20),
        || async {
            ingress_ips(&client, "default", "after")
                .await
                .filter(|i| !i.is_empty())
        },
    )
    .await;
    assert_eq!(
        ips,
        ["10.0.0.1"],
        "log of {}:\n{}",
        survivor.identity,
        survivor.log()
    );
    assert_eq!(holder(&client).await.as_deref(), Some(standby));
    assert_eq!(
        ingress_ips(&client, "default", "before").await.unwrap(),
        ["10.0.0.0"],
        "nothing moved"
    );
}

/// A scenario of [`support::scenarios`] on the in-process server (e2e.rs runs
/// the same on a real one).
async fn on_test_server(name: &str) -> (ApiServer, ScratchDir, scenarios::Env) {
    let server = ApiServer::start().await;
    let dir = ScratchDir::new(name);
    let env = scenarios::Env {
        client: server.client(),
        kubeconfig: server.kubeconfig(&dir.0),
        namespace: "default".into(),
        other_namespace: "tenant".into(),
        prefix: name.into(),
        dir: dir.0.clone(),
        patience: Duration::from_secs(20),
    };
    (server, dir, env)
}

#[tokio::test]
async fn restarts_and_replicas_never_move_an_address() {
    let (_server, _dir, env) = on_test_server("restarts").await;
    scenarios::restarts_and_replicas_never_move_an_address(&env).await;
}

#[tokio::test]
async fn a_gateway_gets_an_address_and_its_route_status() {
    let (_server, _dir, env) = on_test_server("gateway").await;
    scenarios::a_gateway_gets_an_address_and_its_route_status(&env).await;
}

#[tokio::test]
async fn sharing_metallb_annotations_and_exhaustion() {
    let (_server, _dir, env) = on_test_server("sharing").await;
    scenarios::sharing_metallb_annotations_and_exhaustion(&env).await;
}

#[tokio::test]
async fn sharing_stays_within_a_namespace_unless_the_pool_allows() {
    let (_server, _dir, env) = on_test_server("tenancy").await;
    scenarios::sharing_stays_within_a_namespace_unless_the_pool_allows(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_never_writes_over_the_new_one() {
    let (_server, _dir, env) = on_test_server("paused").await;
    scenarios::a_paused_leader_never_writes_over_the_new_one(&env).await;
}

/// The fence a leader checks before every write: the Lease must name it and
/// have been renewed recently, by its own clock.
#[tokio::test]
async fn the_fence_lets_a_leader_write_only_on_a_fresh_lease_of_its_own() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use kube::Api;
    use kube::api::{Patch, PatchParams};

    let server = ApiServer::start().await;
    let client = server.client();
    let fence = ironlb::controller::Fence {
        namespace: "ironlb-system".into(),
        name: "ironlb-controller".into(),
        identity: "me".into(),
        max_age: Duration::from_secs(10),
    };
    let refusal = fence.check(&client).await.expect_err("no Lease yet");
    assert!(refusal.contains("reading Lease"), "{refusal}");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "ironlb-system");
    let set = |holder: &str, age: i64| {
        let renewed = Timestamp::now() - SignedDuration::from_secs(age);
        serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "ironlb-controller"},
            "spec": {"holderIdentity": holder, "renewTime": MicroTime(renewed), "leaseDurationSeconds": 15}})
    };
    for (holder, age, ok) in [("me", 1, true), ("me", 30, false), ("other", 1, false)] {
        leases
            .patch(
                "ironlb-controller",
                &PatchParams::apply("test").force(),
                &Patch::Apply(set(holder, age)),
            )
            .await
            .unwrap();
        let verdict = fence.check(&client).await;
        assert_eq!(
            verdict.is_ok(),
            ok,
            "held by {holder}, renewed {age} s ago: {verdict:?}"
        );
    }
}

/// Logs read well where they are read: plain text with no colour codes
/// when not on a terminal (`kubectl logs`, files), and with `--log-format
/// json` one JSON object per line.
#[tokio::test]
async fn logs_are_plain_text_off_a_terminal_or_json() {
    let (_server, _dir, env) = on_test_server("logs").await;
    for format in ["text", "json"] {
        let controller = ControllerProcess::spawn(
            &env.kubeconfig,
            &env.dir,
            &format!("logs-{format}"),
            &["--log-format", format],
        );
        let log = wait_for(
            &format!("the {format} controller to log its start"),
            env.patience,
            || async {
                let log = controller.log();
                log.contains("caches synced").then_some(log)
            },
        )
        .await;
        assert!(
            !log.contains('\u{1b}'),
            "colour codes in {format} logs:\n{log}"
        );
        if format == "json" {
            for line in log.lines().filter(|l| !l.trim().is_empty()) {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
            }
        }
    }
}
