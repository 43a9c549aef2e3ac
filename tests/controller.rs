//! The controller against the in-process API server, over real HTTP with the real
//! `kube` client: each scenario as a user would see it with kubectl.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ironlb::api::{IPAddressPool, ServiceAllocation};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use support::*;

async fn setup(pools: Vec<IPAddressPool>) -> (ApiServer, Client, Controller) {
    let server = ApiServer::start().await;
    let client = server.client();
    for p in pools {
        create_pool(&client, p).await;
    }
    let controller = Controller::start(&client);
    (server, client, controller)
}

fn services(client: &Client, ns: &str) -> Api<Service> {
    Api::namespaced(client.clone(), ns)
}

#[tokio::test]
async fn a_new_service_gets_an_address_within_a_second_as_kubectl_shows_it() {
    let (_server, client, controller) = setup(vec![pool("lan", &["10.0.0.10-10.0.0.20"])]).await;
    let started = Instant::now();
    create_service(&client, Svc::lb("default", "web").build()).await;
    let ips = wait_for("an EXTERNAL-IP", Duration::from_secs(1), || async {
        ingress_ips(&client, "default", "web")
            .await
            .filter(|i| !i.is_empty())
    })
    .await;
    assert_eq!(ips, ["10.0.0.10"], "after {:?}", started.elapsed());

    let svc = services(&client, "default").get("web").await.unwrap();
    let status = serde_json::to_value(svc.status.unwrap()).unwrap();
    assert_eq!(
        status,
        json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.10", "ipMode": "VIP"}]}}),
        "exactly what `kubectl get svc -o yaml` shows on a real cluster"
    );
    let note = wait_for_event(&client, "default", "web", "IPAllocated").await;
    assert_eq!(note, "Assigned 10.0.0.10 from IPAddressPool lan");
    controller.stop().await;
}

#[tokio::test]
async fn embedded_forwarding_shows_ip_mode_proxy() {
    let (_server, client, controller) = setup(vec![pool("lan", &["10.0.0.0/24"])]).await;
    create_service(
        &client,
        Svc::lb("default", "ingress")
            .annotation("ironlb.dev/forwarding", "embedded")
            .build(),
    )
    .await;
    wait_for_addresses(&client, "default", "ingress", 1).await;
    let svc = services(&client, "default").get("ingress").await.unwrap();
    let ingress = svc.status.unwrap().load_balancer.unwrap().ingress.unwrap();
    assert_eq!(ingress[0].ip_mode.as_deref(), Some("Proxy"));
    controller.stop().await;
}

#[tokio::test]
async fn requests_by_address_pool_and_metallb_annotations_are_honoured() {
    let manual = {
        let mut p = pool("manual", &["10.0.9.0/24"]);
        p.spec.auto_assign = false;
        p
    };
    let (_server, client, controller) = setup(vec![pool("lan", &["10.0.0.0/24"]), manual]).await;
    create_service(
        &client,
        Svc::lb("default", "by-ip")
            .annotation("ironlb.dev/load-balancer-ips", "10.0.0.77")
            .build(),
    )
    .await;
    create_service(
        &client,
        Svc::lb("default", "by-pool")
            .annotation("metallb.universe.tf/address-pool", "manual")
            .build(),
    )
    .await;
    create_service(
        &client,
        Svc::lb("default", "by-metallb-ip")
            .annotation("metallb.io/loadBalancerIPs", "10.0.9.9")
            .build(),
    )
    .await;
    let mut legacy = Svc::lb("default", "by-spec").build();
    legacy.spec.as_mut().unwrap().load_balancer_ip = Some("10.0.0.42".into());
    create_service(&client, legacy).await;
    assert_eq!(
        wait_for_addresses(&client, "default", "by-ip", 1).await,
        ["10.0.0.77"]
    );
    assert_eq!(
        wait_for_addresses(&client, "default", "by-pool", 1).await,
        ["10.0.9.0"]
    );
    assert_eq!(
        wait_for_addresses(&client, "default", "by-metallb-ip", 1).await,
        ["10.0.9.9"]
    );
    assert_eq!(
        wait_for_addresses(&client, "default", "by-spec", 1).await,
        ["10.0.0.42"]
    );
    controller.stop().await;
}

#[tokio::test]
async fn namespace_and_label_selection_and_priority_pick_the_pool() {
    let server = ApiServer::start().await;
    server.create_namespace("gold", &[("tier", "gold")]);
    server.create_namespace("team-a", &[]);
    let client = server.client();
    let selector = |k: &str, v: &str| LabelSelector {
        match_labels: Some([(k.to_string(), v.to_string())].into()),
        match_expressions: None,
    };
    for p in [
        pool("default", &["10.0.0.0/24"]),
        pool_for(
            "team-a",
            &["10.0.1.0/24"],
            ServiceAllocation {
                namespaces: vec!["team-a".into()],
                ..Default::default()
            },
        ),
        pool_for(
            "gold-low",
            &["10.0.2.0/24"],
            ServiceAllocation {
                priority: Some(20),
                namespace_selectors: vec![selector("tier", "gold")],
                ..Default::default()
            },
        ),
        pool_for(
            "gold-high",
            &["10.0.3.0/24"],
            ServiceAllocation {
                priority: Some(10),
                namespace_selectors: vec![selector("tier", "gold")],
                ..Default::default()
            },
        ),
        pool_for(
            "ingress",
            &["10.0.4.0/24"],
            ServiceAllocation {
                service_selectors: vec![selector("app.kubernetes.io/name", "ingress-nginx")],
                ..Default::default()
            },
        ),
    ] {
        create_pool(&client, p).await;
    }
    let controller = Controller::start(&client);
    create_service(&client, Svc::lb("team-a", "x").build()).await;
    create_service(&client, Svc::lb("gold", "y").build()).await;
    create_service(
        &client,
        Svc::lb("default", "z")
            .label("app.kubernetes.io/name", "ingress-nginx")
            .build(),
    )
    .await;
    create_service(&client, Svc::lb("default", "plain").build()).await;
    assert_eq!(
        wait_for_addresses(&client, "team-a", "x", 1).await,
        ["10.0.1.0"]
    );
    assert_eq!(
        wait_for_addresses(&client, "gold", "y", 1).await,
        ["10.0.3.0"],
        "lower priority number first"
    );
    assert_eq!(
        wait_for_addresses(&client, "default", "z", 1).await,
        ["10.0.4.0"]
    );
    assert_eq!(
        wait_for_addresses(&client, "default", "plain", 1).await,
        ["10.0.0.0"]
    );
    controller.stop().await;
}

#[tokio::test]
async fn dual_stack_services_get_one_address_per_family() {
    let (_server, client, controller) = setup(vec![
        pool("v4", &["10.0.0.0/24"]),
        pool("dual", &["10.0.1.0/24", "fd00::/120"]),
    ])
    .await;
    create_service(
        &client,
        Svc::lb("default", "both")
            .families("RequireDualStack", &["IPv4", "IPv6"])
            .build(),
    )
    .await;
    create_service(
        &client,
        Svc::lb("default", "v6")
            .families("SingleStack", &["IPv6"])
            .build(),
    )
    .await;
    assert_eq!(
        wait_for_addresses(&client, "default", "both", 2).await,
        ["10.0.1.0", "fd00::"]
    );
    assert_eq!(
        wait_for_addresses(&client, "default", "v6", 1).await,
        ["fd00::1"]
    );
    controller.stop().await;
}

#[tokio::test]
async fn dns_on_tcp_and_udp_shares_one_address_and_a_port_clash_does_not() {
    let (_server, client, controller) = setup(vec![pool("lan", &["10.0.0.0/24"])]).await;
    let dns = |name: &str, proto: &str| {
        Svc::lb("dns", name)
            .annotation("ironlb.dev/allow-shared-ip", "dns")
            .only_port(proto, 53)
            .build()
    };
    create_service(&client, dns("tcp", "TCP")).await;
    create_service(&client, dns("udp", "UDP")).await;
    create_service(&client, dns("udp-too", "UDP")).await;
    let tcp = wait_for_addresses(&client, "dns", "tcp", 1).await;
    assert_eq!(wait_for_addresses(&client, "dns", "udp", 1).await, tcp);
    assert_ne!(
        wait_for_addresses(&client, "dns", "udp-too", 1).await,
        tcp,
        "UDP/53 twice can't share"
    );
    controller.stop().await;
}

#[tokio::test]
async fn avoid_buggy_ips_skips_dot_zero_and_dot_255() {
    let mut p = pool("lan", &["10.0.0.255-10.0.1.1"]);
    p.spec.avoid_buggy_ips = true;
    let (_server, client, controller) = setup(vec![p]).await;
    create_service(&client, Svc::lb("default", "a").build()).await;
    assert_eq!(
        wait_for_addresses(&client, "default", "a", 1).await,
        ["10.0.1.1"]
    );
    controller.stop().await;
}

#[tokio::test]
async fn exhaustion_warns_and_an_extended_pool_serves_the_waiting_service() {
    let (_server, client, controller) = setup(vec![pool("small", &["10.0.0.1"])]).await;
    create_service(&client, Svc::lb("default", "first").build()).await;
    wait_for_addresses(&client, "default", "first", 1).await;
    create_service(&client, Svc::lb("default", "second").build()).await;
    let note = wait_for_event(&client, "default", "second", "PoolExhausted").await;
    assert!(
        note.contains("every IPAddressPool that serves this Service is exhausted (tried small)"),
        "{note}"
    );
    assert_eq!(
        ingress_ips(&client, "default", "second").await.unwrap(),
        Vec::<String>::new()
    );

    set_pool_addresses(&client, "small", &["10.0.0.1-10.0.0.2"]).await;
    assert_eq!(
        wait_for_addresses(&client, "default", "second", 1).await,
        ["10.0.0.2"]
    );
    let pool = wait_for(
        "pool status to count 2 assigned",
        Duration::from_secs(5),
        || async {
            let p = Api::<IPAddressPool>::all(client.clone())
                .get("small")
                .await
                .unwrap();
            p.status.filter(|s| s.assigned_ipv4 == 2)
        },
    )
    .await;
    assert_eq!(pool.available_ipv4, 0);
    assert_eq!(pool.conditions[0].type_, "Valid");
    assert_eq!(pool.conditions[0].status, "True");
    controller.stop().await;
}

#[tokio::test]
async fn an_invalid_pool_says_why_in_its_condition_and_is_not_used() {
    let server = ApiServer::start().await;
    let client = server.client();
    // Named so that name order would favour the newer: age must decide.
    create_pool(&client, pool("zz-old", &["10.0.0.0/24"])).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create_pool(&client, pool("new", &["10.0.0.128/25"])).await;
    let controller = Controller::start(&client);
    // The pool's first condition once it says False.
    let refused = |name: &'static str| {
        let client = client.clone();
        async move {
            let what = format!("pool {name}'s Valid=False condition");
            wait_for(&what, Duration::from_secs(5), || async {
                let p = Api::<IPAddressPool>::all(client.clone())
                    .get(name)
                    .await
                    .unwrap();
                let status = p.status?;
                status
                    .conditions
                    .iter()
                    .any(|c| c.status == "False")
                    .then(|| status.conditions[0].clone())
            })
            .await
        }
    };
    let c = refused("new").await;
    assert_eq!(
        (c.type_.as_str(), c.reason.as_str()),
        ("Valid", "OverlapsPool")
    );
    assert!(
        c.message
            .contains("overlaps 10.0.0.0-10.0.0.255 of pool zz-old, which came first"),
        "{}",
        c.message
    );

    // An entry the schema lets through because only its middle is special:
    // the condition names the entry and the block.
    create_pool(&client, pool("wide", &["126.0.0.0/7"])).await;
    let c = refused("wide").await;
    assert_eq!(c.reason, "InvalidEntry");
    assert_eq!(
        c.message,
        "pool wide: entry \"126.0.0.0/7\": it includes 127.0.0.0/8, the loopback block, \
         which no Service can be reached on"
    );
    controller.stop().await;
}

#[tokio::test]
async fn an_invalid_annotation_warns_names_the_annotation_and_keeps_the_address() {
    let (_server, client, controller) = setup(vec![pool("lan", &["10.0.0.0/24"])]).await;
    let svc = Svc::lb("default", "typo")
        .annotation("ironlb.dev/forwarding", "embedded")
        .build();
    create_service(&client, svc).await;
    let before = wait_for_addresses(&client, "default", "typo", 1).await;
    services(&client, "default")
        .patch(
            "typo",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"metallb.io/loadBalancerIPs": "10.0.0.300"}}}),
            ),
        )
        .await
        .unwrap();
    let note = wait_for_event(&client, "default", "typo", "InvalidRequest").await;
    assert!(
        note.contains(
            "metadata.annotations[metallb.io/loadBalancerIPs]: \"10.0.0.300\" is not an IP address"
        ),
        "{note}"
    );
    let svc = services(&client, "default").get("typo").await.unwrap();
    let ingress = svc.status.unwrap().load_balancer.unwrap().ingress.unwrap();
    assert_eq!(
        ingress[0].ip.as_deref(),
        Some(before[0].as_str()),
        "the address stays"
    );
    assert_eq!(
        ingress[0].ip_mode.as_deref(),
        Some("Proxy"),
        "and so does its ipMode"
    );
    controller.stop().await;
}

#[tokio::test]
async fn other_classes_are_untouched_and_a_type_change_releases_the_address() {
    let (_server, client, controller) = setup(vec![pool("lan", &["10.0.0.1-10.0.0.2"])]).await;
    create_service(
        &client,
        Svc::lb("default", "theirs").class("other.io/lb").build(),
    )
    .await;
    create_service(&client, Svc::lb("default", "a").build()).await;
    create_service(&client, Svc::lb("default", "b").build()).await;
    assert_eq!(
        wait_for_addresses(&client, "default", "a", 1).await,
        ["10.0.0.1"]
    );
    wait_for_addresses(&client, "default", "b", 1).await;

    services(&client, "default")
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
        )
        .await
        .unwrap();
    wait_for_addresses(&client, "default", "a", 0).await;
    create_service(&client, Svc::lb("default", "c").build()).await;
    assert_eq!(
        wait_for_addresses(&client, "default", "c", 1).await,
        ["10.0.0.1"],
        "released and reused"
    );
    assert_eq!(
        ingress_ips(&client, "default", "theirs").await.unwrap(),
        Vec::<String>::new()
    );
    assert!(
        events_for(&client, "default", "theirs").await.is_empty(),
        "no events on another class"
    );
    controller.stop().await;
}

#[tokio::test]
async fn deleting_retyping_or_editing_one_service_never_moves_another() {
    let (_server, client, controller) = setup(vec![
        pool("lan", &["10.0.0.0/24"]),
        pool("other", &["10.0.1.0/24"]),
    ])
    .await;
    for name in ["a", "b", "c", "d", "e"] {
        create_service(&client, Svc::lb("default", name).build()).await;
    }
    let mut before = BTreeMap::new();
    for name in ["a", "b", "c", "d", "e"] {
        before.insert(name, wait_for_addresses(&client, "default", name, 1).await);
    }
    let api = services(&client, "default");
    api.delete("a", &DeleteParams::default()).await.unwrap();
    api.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"type": "NodePort"}})),
    )
    .await
    .unwrap();
    api.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"ironlb.dev/address-pool": "other"}}})),
    )
    .await
    .unwrap();
    wait_for(
        "c to move to the pool it now asks for",
        Duration::from_secs(5),
        || async {
            ingress_ips(&client, "default", "c")
                .await
                .filter(|ips| ips == &["10.0.1.0"])
        },
    )
    .await;
    create_service(&client, Svc::lb("default", "f").build()).await;
    wait_for_addresses(&client, "default", "f", 1).await;
    for name in ["d", "e"] {
        assert_eq!(
            ingress_ips(&client, "default", name).await.unwrap(),
            before[name],
            "{name} kept its address"
        );
    }
    assert_eq!(
        wait_for_addresses(&client, "default", "b", 0).await,
        Vec::<String>::new(),
        "a NodePort shows none"
    );
    controller.stop().await;
}

#[tokio::test]
async fn two_services_recorded_with_one_address_the_older_keeps_it() {
    let server = ApiServer::start().await;
    let client = server.client();
    create_pool(&client, pool("lan", &["10.0.0.0/24"])).await;
    for name in ["older", "younger"] {
        create_service(&client, Svc::lb("default", name).build()).await;
        // Creation times are whole seconds: make the order unambiguous.
        if name == "older" {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        services(&client, "default")
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.7", "ipMode": "VIP"}]}}})),
            )
            .await
            .unwrap();
    }
    let controller = Controller::start(&client);
    let note = wait_for_event(&client, "default", "younger", "AddressConflict").await;
    assert!(
        note.contains("10.0.0.7 is also in the status of default/older, which is older"),
        "{note}"
    );
    let moved = wait_for(
        "younger to get a new address",
        Duration::from_secs(5),
        || async {
            ingress_ips(&client, "default", "younger")
                .await
                .filter(|i| i.len() == 1 && i[0] != "10.0.0.7")
        },
    )
    .await;
    assert_eq!(moved, ["10.0.0.0"]);
    assert_eq!(
        ingress_ips(&client, "default", "older").await.unwrap(),
        ["10.0.0.7"]
    );
    controller.stop().await;
}

#[tokio::test]
async fn a_shrunk_pool_keeps_the_address_and_warns_on_service_and_pool() {
    let (_server, client, controller) = setup(vec![pool("lan", &["10.0.0.0/30"])]).await;
    create_service(&client, Svc::lb("default", "web").build()).await;
    assert_eq!(
        wait_for_addresses(&client, "default", "web", 1).await,
        ["10.0.0.0"]
    );
    set_pool_addresses(&client, "lan", &["10.0.0.2/31"]).await;
    let note = wait_for_event(&client, "default", "web", "AddressOutsidePool").await;
    assert!(
        note.contains("10.0.0.0 (was in IPAddressPool lan) is no longer in any IPAddressPool"),
        "{note}"
    );
    let status = wait_for(
        "the pool's OrphanedAddresses condition",
        Duration::from_secs(5),
        || async {
            let p = Api::<IPAddressPool>::all(client.clone())
                .get("lan")
                .await
                .unwrap();
            p.status
                .filter(|s| s.conditions.iter().any(|c| c.type_ == "OrphanedAddresses"))
        },
    )
    .await;
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == "OrphanedAddresses")
        .unwrap();
    assert!(
        c.message.contains("10.0.0.0 (default/web)"),
        "{}",
        c.message
    );
    assert_eq!(
        ingress_ips(&client, "default", "web").await.unwrap(),
        ["10.0.0.0"],
        "not moved"
    );
    controller.stop().await;
}

#[tokio::test]
async fn twenty_restarts_with_500_services_change_no_address() {
    let server = ApiServer::start().await;
    let client = server.client();
    create_pool(&client, pool("lan", &["10.0.0.0/22", "fd00::/118"])).await;
    let first = Controller::start(&client);
    for i in 0..500 {
        let svc = match i % 3 {
            0 => Svc::lb("default", &format!("s{i}")),
            1 => {
                Svc::lb("default", &format!("s{i}")).families("PreferDualStack", &["IPv4", "IPv6"])
            }
            _ => Svc::lb("default", &format!("s{i}"))
                .annotation("ironlb.dev/allow-shared-ip", "pair")
                .only_port("UDP", 1000 + i),
        };
        create_service(&client, svc.build()).await;
    }
    let snapshot = || async {
        let list = services(&client, "default")
            .list(&Default::default())
            .await
            .unwrap();
        list.items
            .into_iter()
            .map(|s| (s.metadata.name.clone().unwrap(), ips_of(&s)))
            .collect::<BTreeMap<_, _>>()
    };
    let before = wait_for(
        "all 500 Services to have addresses",
        Duration::from_secs(30),
        || async {
            let s = snapshot().await;
            s.values().all(|ips| !ips.is_empty()).then_some(s)
        },
    )
    .await;
    first.stop().await;
    let patches_before = server.requests("patch", "services/status");
    for restart in 0..20 {
        let c = Controller::start(&client);
        wait_for("two full passes", Duration::from_secs(5), || async {
            (c.metrics.passes() >= 2).then_some(())
        })
        .await;
        c.stop().await;
        assert_eq!(
            snapshot().await,
            before,
            "addresses changed at restart {restart}"
        );
    }
    assert_eq!(
        server.requests("patch", "services/status"),
        patches_before,
        "no restart rewrote any status"
    );
}

#[tokio::test]
async fn the_controller_recovers_when_its_watch_resource_version_expires() {
    let (server, client, controller) = setup(vec![pool("lan", &["10.0.0.0/24"])]).await;
    create_service(&client, Svc::lb("default", "a").build()).await;
    wait_for_addresses(&client, "default", "a", 1).await;
    server.compact();
    create_service(&client, Svc::lb("default", "b").build()).await;
    assert_eq!(
        wait_for_addresses(&client, "default", "b", 1).await,
        ["10.0.0.1"]
    );
    controller.stop().await;
}

#[tokio::test]
async fn the_gossip_secret_is_created_once_and_a_users_own_is_kept() {
    use ironlb::controller::{GOSSIP_SECRET_KEY, ensure_gossip_secret};
    use k8s_openapi::api::core::v1::Secret;
    let server = ApiServer::start().await;
    let client = server.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "ironlb-system");
    let read = |s: Secret| String::from_utf8(s.data.unwrap()[GOSSIP_SECRET_KEY].0.clone()).unwrap();
    assert!(
        ensure_gossip_secret(client.clone(), "ironlb-system", "ironlb-gossip")
            .await
            .unwrap()
    );
    let first = read(secrets.get("ironlb-gossip").await.unwrap());
    assert_eq!(first.len(), 64);
    assert!(first.chars().all(|c| c.is_ascii_hexdigit()), "{first}");
    // A second replica, or a restart, changes nothing.
    assert!(
        !ensure_gossip_secret(client.clone(), "ironlb-system", "ironlb-gossip")
            .await
            .unwrap()
    );
    assert_eq!(read(secrets.get("ironlb-gossip").await.unwrap()), first);
    // A Secret the user created first is theirs.
    let mine: Secret = serde_json::from_value(json!({
        "metadata": {"name": "mine", "namespace": "ironlb-system"},
        "data": {"secret": "dXNlci1zZWNyZXQ="},
    }))
    .unwrap();
    secrets.create(&Default::default(), &mine).await.unwrap();
    assert!(
        !ensure_gossip_secret(client.clone(), "ironlb-system", "mine")
            .await
            .unwrap()
    );
    assert_eq!(read(secrets.get("mine").await.unwrap()), "user-secret");
}

fn recorded_pool(svc: &Service) -> Option<String> {
    svc.metadata
        .annotations
        .as_ref()?
        .get(ironlb::api::annotations::ALLOCATED_FROM_POOL)
        .cloned()
}

#[tokio::test]
async fn a_service_records_its_pool_and_loses_the_record_with_its_address() {
    let (_server, client, controller) = setup(vec![pool("lan", &["10.0.0.0/30"])]).await;
    create_service(&client, Svc::lb("default", "web").build()).await;
    let svc = wait_for("the pool record", Duration::from_secs(5), || async {
        let s = services(&client, "default").get("web").await.ok()?;
        recorded_pool(&s).map(|_| s)
    })
    .await;
    assert_eq!(recorded_pool(&svc).as_deref(), Some("lan"));
    services(&client, "default")
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
        )
        .await
        .unwrap();
    wait_for("the record to go", Duration::from_secs(5), || async {
        let s = services(&client, "default").get("web").await.ok()?;
        recorded_pool(&s).is_none().then_some(())
    })
    .await;
    controller.stop().await;
}

fn valid_condition(p: &IPAddressPool) -> Option<(String, String, String)> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Valid")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn a_deleted_pool_in_use_stays_terminating_says_who_holds_it_and_goes_when_they_let_go() {
    let (_server, client, controller) = setup(vec![pool("lan", &["10.0.0.0/30"])]).await;
    let pools: Api<IPAddressPool> = Api::all(client.clone());
    create_pool(&client, pool("unused", &["10.0.1.0/30"])).await;
    wait_for(
        "the unused pool's status",
        Duration::from_secs(5),
        || async { pools.get("unused").await.ok()?.status },
    )
    .await;
    assert_eq!(
        pools.get("unused").await.unwrap().metadata.finalizers,
        None,
        "a pool nobody uses is not protected"
    );
    pools.delete("unused", &Default::default()).await.unwrap();
    assert!(
        pools.get_opt("unused").await.unwrap().is_none(),
        "and goes at once"
    );
    create_service(&client, Svc::lb("default", "web").build()).await;
    assert_eq!(
        wait_for_addresses(&client, "default", "web", 1).await,
        ["10.0.0.0"]
    );
    wait_for("the pool's finalizer", Duration::from_secs(5), || async {
        let p = pools.get("lan").await.ok()?;
        p.metadata
            .finalizers
            .filter(|f| f.iter().any(|f| f == ironlb::api::POOL_FINALIZER))
    })
    .await;

    pools.delete("lan", &Default::default()).await.unwrap();
    let (status, _, message) = wait_for(
        "the pool to say it is Terminating",
        Duration::from_secs(5),
        || async {
            let p = pools.get("lan").await.ok()?;
            p.metadata.deletion_timestamp.as_ref()?;
            valid_condition(&p).filter(|(_, r, _)| r == "Terminating")
        },
    )
    .await;
    assert_eq!(status, "False");
    assert!(
        message.contains("held by default/web (10.0.0.0)"),
        "{message}"
    );
    let note = wait_for_event(&client, "default", "lan", "PoolInUse").await;
    assert!(
        note.contains("IPAddressPool lan is being deleted, but 1 Service(s) still hold")
            && !note.contains("web"),
        "{note}"
    );
    // The Service keeps its address and its record meanwhile; a new Service
    // gets nothing from the pool.
    create_service(&client, Svc::lb("default", "late").build()).await;
    wait_for_event(&client, "default", "late", "NoMatchingPool").await;
    let web = services(&client, "default").get("web").await.unwrap();
    assert_eq!(ips_of(&web), ["10.0.0.0"]);
    assert_eq!(recorded_pool(&web).as_deref(), Some("lan"));

    services(&client, "default")
        .delete("web", &Default::default())
        .await
        .unwrap();
    wait_for("the pool to go", Duration::from_secs(5), || async {
        pools.get_opt("lan").await.ok()?.is_none().then_some(())
    })
    .await;
    controller.stop().await;
}

#[tokio::test]
async fn an_edit_that_overlaps_a_serving_pool_invalidates_the_edited_pool() {
    let server = ApiServer::start().await;
    let client = server.client();
    create_pool(&client, pool("old", &["10.0.0.0/30"])).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create_pool(&client, pool("new", &["10.0.1.0/30"])).await;
    let controller = Controller::start(&client);
    let pools: Api<IPAddressPool> = Api::all(client.clone());
    let svc = Svc::lb("default", "web").annotation(ironlb::api::annotations::ADDRESS_POOL, "new");
    create_service(&client, svc.build()).await;
    assert_eq!(
        wait_for_addresses(&client, "default", "web", 1).await,
        ["10.0.1.0"]
    );
    wait_for("both pools accepted", Duration::from_secs(5), || async {
        let ok = |p: IPAddressPool| valid_condition(&p).is_some_and(|(s, _, _)| s == "True");
        (ok(pools.get("old").await.ok()?) && ok(pools.get("new").await.ok()?)).then_some(())
    })
    .await;

    // The older pool is edited to overlap the newer one, which serves web.
    set_pool_addresses(&client, "old", &["10.0.0.0/23"]).await;
    let (_, reason, message) = wait_for("old to be invalid", Duration::from_secs(5), || async {
        valid_condition(&pools.get("old").await.ok()?).filter(|(s, _, _)| s == "False")
    })
    .await;
    assert_eq!(reason, "OverlapsPool");
    assert!(
        message.contains("of pool new, which came first"),
        "{message}"
    );
    let new = pools.get("new").await.unwrap();
    assert_eq!(
        valid_condition(&new).unwrap().0,
        "True",
        "the serving pool stays valid"
    );
    assert_eq!(new.status.unwrap().assigned_ipv4, 1);
    assert_eq!(
        ingress_ips(&client, "default", "web").await.unwrap(),
        ["10.0.1.0"]
    );
    controller.stop().await;
}
