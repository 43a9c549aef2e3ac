//! Scenarios whose truth depends on the API server (status writes, events,
//! leases, and on a real cluster RBAC), written once and run on both the
//! in-process test server and a real one. Controllers run as processes, as a
//! Deployment runs them, serving only Services of class `ironlb.dev/ironlb` so
//! that on a user's cluster nothing else is touched.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ironlb::api::{IPAddressPool, LOAD_BALANCER_CLASS, annotations};
use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client};

use super::process::{ControllerProcess, holder};
use super::{Svc, create_pool, create_service, events_for, ips_of, pool, wait_for};

/// Where a scenario runs.
pub struct Env {
    /// An admin client, to make the world and read it.
    pub client: Client,
    /// What the controller processes use: on a real cluster, a token of the
    /// ServiceAccount `deploy/` creates.
    pub kubeconfig: PathBuf,
    /// A namespace of the scenario's own, which exists.
    pub namespace: String,
    /// A second namespace of its own, which exists: another team's.
    pub other_namespace: String,
    /// Makes cluster-scoped names unique to this run.
    pub prefix: String,
    /// Scratch space for logs.
    pub dir: PathBuf,
    /// How long a change may take to show.
    pub patience: Duration,
}

impl Env {
    fn controller(&self, identity: &str) -> ControllerProcess {
        ControllerProcess::spawn(
            &self.kubeconfig,
            &self.dir,
            identity,
            &["--default-class=false"],
        )
    }

    fn service(&self, name: &str) -> Svc {
        Svc::lb(&self.namespace, name).class(LOAD_BALANCER_CLASS)
    }

    fn pool_name(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    async fn pool(&self, short: &str, addresses: &[&str], auto_assign: bool) {
        let mut p = pool(&self.pool_name(short), addresses);
        p.spec.auto_assign = auto_assign;
        create_pool(&self.client, p).await;
    }

    /// Every Service of the namespace with its addresses.
    async fn addresses(&self) -> BTreeMap<String, Vec<String>> {
        super::namespace_addresses(&self.client, &self.namespace).await
    }

    async fn wait_addressed(&self, names: &[&str]) -> BTreeMap<String, Vec<String>> {
        wait_for(
            &format!("{names:?} to show an address"),
            self.patience,
            || async {
                let all = self.addresses().await;
                names
                    .iter()
                    .all(|n| all.get(*n).is_some_and(|ips| ips.len() == 1))
                    .then_some(all)
            },
        )
        .await
    }

    async fn wait_event(&self, service: &str, reason: &str) -> (String, String) {
        self.wait_event_in(&self.namespace, service, reason).await
    }

    async fn wait_event_in(&self, ns: &str, service: &str, reason: &str) -> (String, String) {
        wait_for(
            &format!("a {reason} event on {ns}/{service}"),
            self.patience,
            || async {
                events_for(&self.client, ns, service)
                    .await
                    .into_iter()
                    .find(|(_, r, _)| r == reason)
                    .map(|(t, _, note)| (t, note))
            },
        )
        .await
    }
}

/// Addresses held by more than one Service of `all`, except the pairs that
/// `sharing` lists as meant to share.
fn shared_by_accident(
    all: &BTreeMap<String, Vec<String>>,
    sharing: &[&str],
) -> Vec<(String, Vec<String>)> {
    let mut holders: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (svc, ips) in all {
        for ip in ips {
            holders.entry(ip).or_default().push(svc.clone());
        }
    }
    holders
        .into_iter()
        .filter(|(_, svcs)| svcs.len() > 1 && !svcs.iter().all(|s| sharing.contains(&s.as_str())))
        .map(|(ip, svcs)| (ip.to_string(), svcs))
        .collect()
}

/// Two controller replicas with leader election; the leader is SIGKILLed three
/// times (a new replica replacing it each time) while Services come and go.
/// No address ever changes, no two Services hold one address unless they asked
/// to share it, and each new Service is served by the new leader.
pub async fn restarts_and_replicas_never_move_an_address(env: &Env) {
    env.pool("restart", &["198.51.100.0/28"], true).await;
    let mut replicas = vec![env.controller("ctl-0"), env.controller("ctl-1")];
    let mut names: Vec<String> = Vec::new();
    for i in 0..4 {
        create_service(&env.client, env.service(&format!("s{i}")).build()).await;
        names.push(format!("s{i}"));
    }
    for (name, protocol) in [("dns-tcp", "TCP"), ("dns-udp", "UDP")] {
        let svc = env
            .service(name)
            .only_port(protocol, 53)
            .annotation(annotations::ALLOW_SHARED_IP, "dns");
        create_service(&env.client, svc.build()).await;
        names.push(name.into());
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut before = env.wait_addressed(&refs).await;
    assert_eq!(before["dns-tcp"], before["dns-udp"], "the DNS pair shares");
    assert_eq!(
        shared_by_accident(&before, &["dns-tcp", "dns-udp"]),
        [],
        "{before:?}"
    );

    for round in 0..3 {
        let leader = wait_for("a leader", env.patience, || holder(&env.client)).await;
        let index = replicas
            .iter()
            .position(|r| r.identity == leader)
            .unwrap_or_else(|| panic!("leader {leader} is one of ours"));
        replicas[index].kill();
        replicas.remove(index);
        replicas.push(env.controller(&format!("ctl-{}", round + 2)));
        // One Service leaves and one comes while the leader is dead.
        let gone = format!("s{round}");
        Api::<Service>::namespaced(env.client.clone(), &env.namespace)
            .delete(&gone, &DeleteParams::default())
            .await
            .expect("delete a service");
        before.remove(&gone);
        names.retain(|n| *n != gone);
        let new = format!("r{round}");
        create_service(&env.client, env.service(&new).build()).await;
        names.push(new.clone());
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let after = env.wait_addressed(&refs).await;
        for (name, ips) in &before {
            assert_eq!(
                &after[name], ips,
                "round {round}: {name} moved after the leader {leader} was killed"
            );
        }
        assert_eq!(
            shared_by_accident(&after, &["dns-tcp", "dns-udp"]),
            [],
            "round {round}: {after:?}"
        );
        before = after;
    }
    let leader = holder(&env.client).await.expect("a leader at the end");
    assert!(
        replicas.iter().any(|r| r.identity == leader),
        "the leader {leader} is a live replica"
    );
}

/// Every address each Service shows, sampled until `stop`: panics on the first
/// sample where two Services (other than the `sharing` ones) show one address,
/// or a Service shows an address other than the first it showed.
async fn watch_for_fights(
    client: Client,
    namespace: String,
    sharing: &'static [&'static str],
    stop: tokio_util::sync::CancellationToken,
) -> usize {
    let api = Api::<Service>::namespaced(client, &namespace);
    let mut first: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut samples = 0;
    while !stop.is_cancelled() {
        // An API server that is slow or gone costs a sample, nothing else.
        if let Ok(list) = api.list(&ListParams::default()).await {
            let all: BTreeMap<String, Vec<String>> = list
                .items
                .iter()
                .map(|s| (s.metadata.name.clone().unwrap_or_default(), ips_of(s)))
                .collect();
            let accidents = shared_by_accident(&all, sharing);
            assert!(
                accidents.is_empty(),
                "two Services on one address: {accidents:?} in {all:?}"
            );
            for (name, ips) in &all {
                if ips.is_empty() {
                    continue;
                }
                let was = first.entry(name.clone()).or_insert_with(|| ips.clone());
                assert_eq!(was, ips, "{name} changed its address");
            }
            samples += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    samples
}

/// The leader is frozen (SIGSTOP) for longer than its lease while Services are
/// created and deleted; the standby takes over; the old leader is resumed. At
/// no moment do two Services show one address, and no Service's address
/// changes: the resumed replica writes nothing until it holds a freshly renewed
/// lease, and adopts what the other handed out instead of handing out again.
pub async fn a_paused_leader_never_writes_over_the_new_one(env: &Env) {
    env.pool("paused", &["198.51.100.32/28"], true).await;
    let replicas = [env.controller("ctl-p0"), env.controller("ctl-p1")];
    for i in 0..4 {
        create_service(&env.client, env.service(&format!("s{i}")).build()).await;
    }
    env.wait_addressed(&["s0", "s1", "s2", "s3"]).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn(watch_for_fights(
        env.client.clone(),
        env.namespace.clone(),
        &[],
        stop.clone(),
    ));

    let leader = wait_for("a leader", env.patience, || holder(&env.client)).await;
    let paused = replicas
        .iter()
        .find(|r| r.identity == leader)
        .expect("the leader is one of ours");
    let pid = paused.child.id().to_string();
    let signal = |name: &str| {
        let ok = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {name} {pid}");
    };
    // Frozen most likely between seeing `pending` and writing its address:
    // awake with that stale plan, it would give `pending` the lowest address it
    // thinks free, while the new leader (which saw s0 go) gives it s0's.
    create_service(&env.client, env.service("pending").build()).await;
    signal("-STOP");
    // While it sleeps: one Service goes, and its address is handed to a new
    // one; more come.
    Api::<Service>::namespaced(env.client.clone(), &env.namespace)
        .delete("s0", &DeleteParams::default())
        .await
        .expect("delete s0");
    for i in 4..7 {
        create_service(&env.client, env.service(&format!("s{i}")).build()).await;
    }
    let during = env
        .wait_addressed(&["pending", "s1", "s2", "s3", "s4", "s5", "s6"])
        .await;
    let standby = holder(&env.client).await.expect("a leader");
    assert_ne!(standby, leader, "the standby took over");
    // Past its lease for sure, then awake again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    signal("-CONT");
    tokio::time::sleep(Duration::from_secs(5)).await;
    create_service(&env.client, env.service("s7").build()).await;
    let after = env
        .wait_addressed(&["pending", "s1", "s2", "s3", "s4", "s5", "s6", "s7"])
        .await;
    stop.cancel();
    let samples = watcher.await.expect("the watcher held");
    assert!(samples > 20, "only {samples} samples");
    for (name, ips) in &during {
        assert_eq!(&after[name], ips, "{name} moved after the old leader woke");
    }
}

/// Sharing (MetalLB's annotation spellings), a requested address, a named pool
/// that does not auto-assign, and an exhausted pool's warning event — through a
/// controller process, with the events and pool status an operator reads.
pub async fn sharing_metallb_annotations_and_exhaustion(env: &Env) {
    env.pool("main", &["198.51.100.16-198.51.100.17"], true)
        .await;
    env.pool("named", &["198.51.100.20"], false).await;
    let controller = env.controller("ctl-share");

    let pinned = env
        .service("pinned")
        .annotation(annotations::METALLB_LOAD_BALANCER_IPS, "198.51.100.17");
    create_service(&env.client, pinned.build()).await;
    assert_eq!(
        env.wait_addressed(&["pinned"]).await["pinned"],
        ["198.51.100.17"]
    );

    let tcp = env
        .service("dns-tcp")
        .only_port("TCP", 53)
        .annotation(annotations::METALLB_ALLOW_SHARED_IP, "dns");
    let udp = env
        .service("dns-udp")
        .only_port("UDP", 53)
        .annotation(annotations::METALLB_LEGACY_ALLOW_SHARED_IP, "dns");
    create_service(&env.client, tcp.build()).await;
    create_service(&env.client, udp.build()).await;
    let named = env.service("named").annotation(
        annotations::METALLB_LEGACY_ADDRESS_POOL,
        &env.pool_name("named"),
    );
    create_service(&env.client, named.build()).await;
    let all = env.wait_addressed(&["dns-tcp", "dns-udp", "named"]).await;
    assert_eq!(all["dns-tcp"], ["198.51.100.16"]);
    assert_eq!(all["dns-udp"], ["198.51.100.16"], "shares with dns-tcp");
    assert_eq!(all["named"], ["198.51.100.20"]);

    let (kind, note) = env.wait_event("dns-tcp", "IPAllocated").await;
    assert_eq!(kind, "Normal");
    assert!(
        note.contains(&format!(
            "198.51.100.16 from IPAddressPool {}",
            env.pool_name("main")
        )),
        "{note}"
    );

    create_service(&env.client, env.service("waiting").build()).await;
    let (kind, note) = env.wait_event("waiting", "PoolExhausted").await;
    assert_eq!(kind, "Warning");
    assert!(
        note.contains(&format!("exhausted (tried {})", env.pool_name("main"))),
        "{note}"
    );
    assert_eq!(env.addresses().await["waiting"], Vec::<String>::new());

    let status = wait_for(
        "the main pool's status to count both addresses",
        env.patience,
        || async {
            let p = Api::<IPAddressPool>::all(env.client.clone())
                .get(&env.pool_name("main"))
                .await
                .ok()?;
            p.status.filter(|s| s.assigned_ipv4 == 2)
        },
    )
    .await;
    assert_eq!(status.available_ipv4, 0);

    // What an operator alerts on, in a page Prometheus accepts.
    let page = wait_for("the exhaustion in the metrics", env.patience, || async {
        controller
            .get("/metrics")
            .map(|(_, body)| body)
            .filter(|b| {
                b.contains("ironlb_controller_services_pending{reason=\"pool_exhausted\"} 1")
            })
    })
    .await;
    assert!(
        page.contains("ironlb_controller_allocation_errors_total{reason=\"pool_exhausted\"} 1"),
        "counted once, not once per pass:\n{page}"
    );
    for metric in super::alerted_metrics("ironlb_controller_") {
        assert!(
            page.contains(&format!("{metric}{{")) || page.contains(&format!("{metric} ")),
            "no {metric} for the alerts:\n{page}"
        );
    }
    if let Some(verdict) =
        super::promtool_check("sharing_metallb_annotations_and_exhaustion", &page)
    {
        verdict.unwrap_or_else(|said| panic!("promtool check metrics: {said}\n{page}"));
    }
}

/// An address never crosses namespaces unless its pool says so: another
/// namespace's Service with the right key cannot join an address, its
/// refusal names nothing of the holder, and with the same key and no
/// request it simply gets an address of its own; a Service of the holder's
/// own namespace shares as MetalLB's rule says. Once the pool allows every
/// namespace (`crossNamespaceSharing`), the same request succeeds — but
/// never for a `Local` Service.
pub async fn sharing_stays_within_a_namespace_unless_the_pool_allows(env: &Env) {
    env.pool("tenancy", &["198.51.100.24-198.51.100.25"], true)
        .await;
    let controller = env.controller("ctl-tenancy");
    let (team, tenant) = (env.namespace.as_str(), env.other_namespace.as_str());
    let victim = env
        .service("victim-db")
        .only_port("TCP", 5432)
        .annotation(annotations::ALLOW_SHARED_IP, "team-secret-key");
    create_service(&env.client, victim.build()).await;
    let victim_ip = env.wait_addressed(&["victim-db"]).await["victim-db"][0].clone();

    let squatter = |name: &str| {
        Svc::lb(tenant, name)
            .class(LOAD_BALANCER_CLASS)
            .only_port("TCP", 80)
            .annotation(annotations::ALLOW_SHARED_IP, "team-secret-key")
    };
    create_service(
        &env.client,
        squatter("by-address")
            .annotation(annotations::LOAD_BALANCER_IPS, &victim_ip)
            .build(),
    )
    .await;
    let (_, note) = env
        .wait_event_in(tenant, "by-address", "AddressInUse")
        .await;
    assert!(
        note.contains(&format!(
            "{victim_ip} is held by a Service in another namespace and can't be shared: the \
             holder is in another namespace"
        )),
        "{note}"
    );
    // The team namespace by itself, not as the start of the tenant's name.
    let team_prefix = format!("{team}/");
    for secret in [team_prefix.as_str(), "victim-db", "team-secret-key"] {
        assert!(
            !note.contains(secret),
            "the refusal tells {secret:?}: {note}"
        );
    }
    // The same key without a request: an address of its own, not the victim's.
    create_service(&env.client, squatter("by-key").build()).await;
    let theirs = wait_for("by-key's address", env.patience, || async {
        let s = Api::<Service>::namespaced(env.client.clone(), tenant)
            .get("by-key")
            .await
            .ok()?;
        ips_of(&s).into_iter().next()
    })
    .await;
    assert_ne!(theirs, victim_ip, "the key alone does not join the address");
    // Within its own namespace, the key shares as MetalLB's rule says.
    let neighbour = env
        .service("victim-dns")
        .only_port("UDP", 53)
        .annotation(annotations::ALLOW_SHARED_IP, "team-secret-key");
    create_service(&env.client, neighbour.build()).await;
    assert_eq!(
        env.wait_addressed(&["victim-dns"]).await["victim-dns"],
        std::slice::from_ref(&victim_ip)
    );

    // The pool lets every namespace share: MetalLB's behaviour, opted into.
    Api::<IPAddressPool>::all(env.client.clone())
        .patch(
            &env.pool_name("tenancy"),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "spec": {"crossNamespaceSharing": {"namespaceSelectors": [{}]}}
            })),
        )
        .await
        .expect("allow sharing across namespaces");
    wait_for("by-address to join the address", env.patience, || async {
        let s = Api::<Service>::namespaced(env.client.clone(), tenant)
            .get("by-address")
            .await
            .ok()?;
        (ips_of(&s) == [victim_ip.clone()]).then_some(())
    })
    .await;
    // Never a Local Service: it would narrow where the address is announced.
    let local = squatter("local")
        .only_port("TCP", 81)
        .annotation(annotations::LOAD_BALANCER_IPS, &victim_ip)
        .external_traffic_policy("Local");
    create_service(&env.client, local.build()).await;
    let (_, note) = env.wait_event_in(tenant, "local", "AddressInUse").await;
    assert!(
        note.contains("externalTrafficPolicy Local shares an address only within its namespace"),
        "{note}"
    );
    drop(controller);
}

/// The API of `kind` in `api_version` (any kind the server serves).
fn dynamic(
    client: &Client,
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
) -> Api<kube::api::DynamicObject> {
    use kube::api::{ApiResource, GroupVersionKind};
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "GatewayClass" => "gatewayclasses".to_string(),
        other => format!("{}s", other.to_ascii_lowercase()),
    };
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural);
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// Creates `object`, as `kubectl create` would.
async fn create_json(client: &Client, object: serde_json::Value) {
    let api_version = object["apiVersion"]
        .as_str()
        .expect("apiVersion")
        .to_string();
    let kind = object["kind"].as_str().expect("kind").to_string();
    let object: kube::api::DynamicObject = serde_json::from_value(object).expect("an object");
    dynamic(
        client,
        &api_version,
        &kind,
        object.metadata.namespace.as_deref(),
    )
    .create(&kube::api::PostParams::default(), &object)
    .await
    .unwrap_or_else(|e| panic!("create {kind}: {e}"));
}

/// An object as JSON (`Value::Null` when it is not there).
async fn get_json(
    client: &Client,
    api_version: &str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> serde_json::Value {
    match dynamic(client, api_version, kind, Some(namespace))
        .get_opt(name)
        .await
    {
        Ok(Some(o)) => serde_json::to_value(o).unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}

/// The program the speakers compute for the Gateway Service `service` of the
/// scenario's namespace, from the objects as the server returns them.
async fn speakers_program(env: &Env, service: &str) -> ironlb::gateway::attach::Program {
    use ironlb::api::gateway::{
        Gateway, GatewayClass, ReferenceGrant, TCPRoute, TLSRoute, UDPRoute,
    };
    use ironlb::gateway::{attach, snapshot};
    use k8s_openapi::api::core::v1::Namespace;
    async fn all<K>(client: &Client) -> Vec<K>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        Api::<K>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }
    let c = &env.client;
    let (classes, gateways) = (all::<GatewayClass>(c).await, all::<Gateway>(c).await);
    let (tcp, udp, tls) = (
        all::<TCPRoute>(c).await,
        all::<UDPRoute>(c).await,
        all::<TLSRoute>(c).await,
    );
    let (grants, namespaces) = (all::<ReferenceGrant>(c).await, all::<Namespace>(c).await);
    let services = all::<Service>(c).await;
    let objects = snapshot::Objects {
        classes: classes.iter().collect(),
        gateways: gateways.iter().collect(),
        tcp: tcp.iter().collect(),
        udp: udp.iter().collect(),
        tls: tls.iter().collect(),
        grants: grants.iter().collect(),
        namespaces: namespaces.iter().collect(),
        // As a speaker reads them: no pools.
        pools: None,
    };
    let services: Vec<&Service> = services.iter().collect();
    let outcome = attach::decide(&snapshot::snapshot(&objects, &services));
    snapshot::programs(outcome, &objects, &services)
        .remove(&ironlb::ipam::ServiceKey::new(&env.namespace, service))
        .expect("a program for the Gateway's Service")
}

/// A condition's (status, reason) in a conditions list.
fn condition(conditions: &serde_json::Value, type_: &str) -> Option<(String, String)> {
    let c = conditions.as_array()?.iter().find(|c| c["type"] == type_)?;
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
    ))
}

/// A Gateway of ironlb's class gets its address from the pool its
/// infrastructure annotation names, through the Service the controller keeps
/// for it; its listeners and route show the spec's conditions; the Service
/// asks for embedded forwarding, and the routes the speakers compute from the
/// same objects carry the weights, a missing backend's share kept and
/// refused. Objects are
/// written as a user writes them, without the defaults a real server's
/// CRD schemas fill in (weight 1, `allowedRoutes` from `Same`), which the
/// controller must supply itself.
pub async fn a_gateway_gets_an_address_and_its_route_status(env: &Env) {
    use serde_json::json;
    let ns = &env.namespace;
    let class = env.pool_name("gw");
    env.pool("gw", &["198.51.100.60"], false).await;
    let objects = [
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": class}, "spec": {"controllerName": "ironlb.dev/gateway-controller"}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": ns},
            "spec": {"ports": [{"name": "pg", "port": 5432, "targetPort": 15432}]}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": ns},
            "spec": {"gatewayClassName": class,
                "infrastructure": {"annotations": {"ironlb.dev/address-pool": env.pool_name("gw")}},
                "listeners": [
                    {"name": "postgres", "port": 5432, "protocol": "TCP"},
                    {"name": "tls", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}}]}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "TCPRoute",
            "metadata": {"name": "pg", "namespace": ns},
            "spec": {"parentRefs": [{"name": "edge", "sectionName": "postgres"}],
                "rules": [{"backendRefs": [{"name": "db", "port": 5432, "weight": 3}, {"name": "missing", "port": 5432}]}]}}),
    ];
    for o in objects {
        create_json(&env.client, o).await;
    }
    let controller = env.controller("ctl-gateway");
    const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";
    let pair = |s: &str, r: &str| Some((s.to_string(), r.to_string()));
    let gateway = wait_for("the Gateway programmed", env.patience, || async {
        let g = get_json(&env.client, GATEWAY_API, "Gateway", ns, "edge").await;
        (condition(&g["status"]["conditions"], "Programmed") == pair("True", "Programmed"))
            .then_some(g)
    })
    .await;
    assert_eq!(
        gateway["status"]["addresses"],
        json!([{"type": "IPAddress", "value": "198.51.100.60"}]),
        "{}",
        controller.log()
    );
    let listeners = gateway["status"]["listeners"]
        .as_array()
        .expect("listeners");
    let listener = |name: &str| {
        listeners
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("listener {name} in {gateway}"))
    };
    assert_eq!(listener("postgres")["attachedRoutes"], 1);
    assert_eq!(listener("tls")["attachedRoutes"], 0);
    for name in ["postgres", "tls"] {
        let c = &listener(name)["conditions"];
        assert_eq!(
            condition(c, "Programmed"),
            pair("True", "Programmed"),
            "{name}"
        );
        assert_eq!(
            condition(c, "ResolvedRefs"),
            pair("True", "ResolvedRefs"),
            "{name}"
        );
    }

    let parent = wait_for("the route's status", env.patience, || async {
        let r = get_json(&env.client, GATEWAY_API, "TCPRoute", ns, "pg").await;
        let parents = r["status"]["parents"].as_array()?.clone();
        parents
            .into_iter()
            .find(|p| p["controllerName"] == "ironlb.dev/gateway-controller")
    })
    .await;
    assert_eq!(
        condition(&parent["conditions"], "Accepted"),
        pair("True", "Accepted")
    );
    assert_eq!(
        condition(&parent["conditions"], "ResolvedRefs"),
        pair("False", "BackendNotFound")
    );

    let service = get_json(&env.client, "v1", "Service", ns, "edge-ironlb-gateway").await;
    let annotations = &service["metadata"]["annotations"];
    assert_eq!(annotations[annotations::FORWARDING], "embedded");
    assert!(
        annotations["ironlb.dev/gateway-program"].is_null(),
        "no route table is written where a tenant could rewrite it"
    );
    // What every speaker forwards: the same rules on the same objects, read
    // back from the server as the speakers' caches hold them.
    let program = speakers_program(env, "edge-ironlb-gateway").await;
    let port = program
        .ports
        .iter()
        .find(|p| p.port == 5432)
        .expect("port 5432");
    let backends: Vec<(String, u32, bool)> = port.routes[0]
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.weight, b.usable))
        .collect();
    assert_eq!(
        backends,
        [
            ("db".to_string(), 3, true),
            ("missing".to_string(), 1, false)
        ],
        "an unset weight is 1; a missing backend keeps its share, refused"
    );
    assert_eq!(
        service["metadata"]["ownerReferences"][0]["kind"], "Gateway",
        "the Gateway owns its Service"
    );
    drop(controller);
}
