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
        Api::<Service>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default())
            .await
            .expect("list services")
            .items
            .iter()
            .map(|s| (s.metadata.name.clone().unwrap_or_default(), ips_of(s)))
            .collect()
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
        wait_for(
            &format!("a {reason} event on {}/{service}", self.namespace),
            self.patience,
            || async {
                events_for(&self.client, &self.namespace, service)
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
    if let Some(verdict) =
        super::promtool_check("sharing_metallb_annotations_and_exhaustion", &page)
    {
        verdict.unwrap_or_else(|said| panic!("promtool check metrics: {said}\n{page}"));
    }
}
