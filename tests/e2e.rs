//! ironlb on a real Kubernetes API server: the one `IRONLB_E2E_KUBECONFIG`
//! names (`.ci/run` starts a local control plane and sets it). Without it these
//! tests skip and say why; with `CI=true` they fail instead.
//!
//! ```sh
//! IRONLB_E2E_KUBECONFIG=~/.kube/config ./scripts/test
//! ```
//!
//! What they create on the cluster, one test at a time, and delete afterwards
//! (also when a test fails): `deploy/` as a user applies it (namespace
//! `ironlb-system`, the CRDs, RBAC, the Deployment and DaemonSet), namespaces
//! and pools named `ironlb-e2e-<pid>…` with documentation or lab addresses
//! (198.51.100.0/24, 10.77.0.0/24), and for the lab test three Nodes named
//! `ironlb-e2e-<pid>-node-<i>`. The controllers and speakers run on this
//! machine (speakers inside network namespaces), serve only Services of class
//! `ironlb.dev/ironlb`, and authenticate with tokens of the ServiceAccounts
//! `deploy/` creates, never as admin, so a missing RBAC rule fails a test.
//! The migration tests also install MetalLB's CRDs (`tests/metallb/crds`),
//! which stay, and use the namespace `metallb-system` (see docs/testing.md).
//! Remove a leftover install with `kubectl delete -k deploy/`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use ironlb::api::{L2Advertisement, L2AdvertisementSpec, LOAD_BALANCER_CLASS, ServiceL2Status};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use support::cluster::{Cluster, PATIENCE};
use support::cluster_lab::*;
use support::netns::{Lab, relay};
use support::process::{ControllerProcess, ScratchDir, holder};
use support::tenancy;
use support::*;

/// An object the test made, deleted (without waiting) on drop, so a failing
/// test leaves nothing behind either.
struct Made<'a> {
    cluster: &'a Cluster,
    kind: &'static str,
    name: String,
}

impl<'a> Made<'a> {
    fn new(cluster: &'a Cluster, kind: &'static str, name: &str) -> Self {
        Self {
            cluster,
            kind,
            name: name.into(),
        }
    }

    /// Creates namespace `name`.
    async fn namespace(cluster: &'a Cluster, client: &Client, name: &str) -> Self {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        Self::new(cluster, "namespace", name)
    }
}

impl Drop for Made<'_> {
    fn drop(&mut self) {
        let _ = self.cluster.kubectl(&[
            "delete",
            self.kind,
            &self.name,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}

fn unique(what: &str) -> String {
    format!("ironlb-e2e-{}-{what}", std::process::id())
}

#[tokio::test]
async fn the_crds_apply_without_warnings_and_refuse_bad_pools_naming_the_entry() {
    let Some(cluster) = Cluster::lock("the_crds_apply_without_warnings").await else {
        return;
    };
    // As a user installs them: server-side, and any warning (an unknown
    // format, say) is an error.
    let _installed = cluster.install();
    for file in ["crds/ironlb.yaml", "deploy/base/crds.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        cluster.kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--warnings-as-errors",
            "-f",
            path.to_str().expect("utf-8 path"),
        ]);
    }

    let dir = ScratchDir::new("e2e-crds");
    let bad = unique("bad");
    let manifest = dir.0.join("bad.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: ironlb.dev/v1alpha1\nkind: IPAddressPool\nmetadata: {{name: {bad}}}\n\
             spec:\n  addresses: [\"10.0.0.0/24\", \"10.1.0.9/16\", \"ten.0.0.0/8\", \"10.0.0.1-fd00::1\"]\n"
        ),
    )
    .expect("write manifest");
    let out = cluster.kubectl(&["apply", "-f", manifest.to_str().expect("utf-8 path")]);
    assert!(!out.status.success(), "a pool with bad entries is refused");
    let said = String::from_utf8_lossy(&out.stderr);
    // The messages docs/pools.md shows.
    for expected in [
        "spec.addresses[1]: Invalid value: \"10.1.0.9/16\": host bits are set in 10.1.0.9/16: \
         write the network address with /16 (the whole network) or 10.1.0.9/32 (one address)",
        "spec.addresses[2]: Invalid value: \"ten.0.0.0/8\": must be a CIDR (192.168.10.0/24), \
         a range of one family (192.168.10.10-192.168.10.50) or a single address",
        "spec.addresses[3]: Invalid value: \"10.0.0.1-fd00::1\": must be a CIDR",
    ] {
        assert!(said.contains(expected), "expected {expected:?} in:\n{said}");
    }
    assert!(
        !said.contains("spec.addresses[0]"),
        "10.0.0.0/24 is fine: {said}"
    );

    // Special-purpose addresses, one entry per kind: the schema names each
    // one it can see (an entry's ends); the controller judges the middle.
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: ironlb.dev/v1alpha1\nkind: IPAddressPool\nmetadata: {{name: {bad}}}\n\
             spec:\n  addresses: [\"0.0.0.0/8\", \"127.0.0.1\", \"169.254.0.0/16\", \"224.0.0.1\", \
             \"255.255.255.255\", \"::/0\", \"::1\", \"fe80::1-fe80::9\", \"ff02::1\", \"10.0.0.0/24\"]\n"
        ),
    )
    .expect("write manifest");
    let out = cluster.kubectl(&["apply", "-f", manifest.to_str().expect("utf-8 path")]);
    assert!(
        !out.status.success(),
        "a pool of special addresses is refused"
    );
    let said = String::from_utf8_lossy(&out.stderr);
    for (i, entry, kind) in [
        (0, "0.0.0.0/8", "the unspecified address"),
        (1, "127.0.0.1", "a loopback address"),
        (2, "169.254.0.0/16", "a link-local address"),
        (3, "224.0.0.1", "a multicast or broadcast address"),
        (4, "255.255.255.255", "a multicast or broadcast address"),
        (5, "::/0", "the unspecified address"),
        (6, "::1", "a loopback address"),
        (7, "fe80::1-fe80::9", "a link-local address"),
        (8, "ff02::1", "a multicast or broadcast address"),
    ] {
        let expected =
            format!("spec.addresses[{i}]: Invalid value: \"{entry}\": {entry} is or holds {kind}");
        assert!(
            said.contains(&expected),
            "expected {expected:?} in:\n{said}"
        );
    }
    assert!(!said.contains("spec.addresses[9]"), "10.0.0.0/24: {said}");

    // A selector operator is checked by the schema.
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: ironlb.dev/v1alpha1\nkind: IPAddressPool\nmetadata: {{name: {bad}}}\n\
             spec:\n  addresses: [\"10.0.0.0/24\"]\n  serviceAllocation:\n    serviceSelectors:\n    \
             - matchExpressions: [{{key: app, operator: in, values: [web]}}]\n"
        ),
    )
    .expect("write manifest");
    let out = cluster.kubectl(&["apply", "-f", manifest.to_str().expect("utf-8 path")]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && said.contains(
                "spec.serviceAllocation.serviceSelectors[0].matchExpressions[0].operator: \
                 Unsupported value: \"in\""
            ),
        "{said}"
    );

    // Limits the schema sets are enforced there too.
    let too_many: Vec<String> = (0..129).map(|i| format!("\"10.0.{i}.0/24\"")).collect();
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: ironlb.dev/v1alpha1\nkind: IPAddressPool\nmetadata: {{name: {bad}}}\n\
             spec:\n  addresses: [{}]\n",
            too_many.join(", ")
        ),
    )
    .expect("write manifest");
    let out = cluster.kubectl(&["apply", "-f", manifest.to_str().expect("utf-8 path")]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && said.contains("spec.addresses: Too many: 129: must have at most 128 items"),
        "{said}"
    );

    // A good pool: defaults filled in by the API server, the printer columns
    // kubectl shows.
    let good = unique("good");
    let client = cluster.client().await;
    create_pool(&client, pool(&good, &["198.51.100.0/30", "2001:db8::/126"])).await;
    let pools = Api::<ironlb::api::IPAddressPool>::all(client.clone());
    let raw: serde_json::Value = cluster
        .kubectl_ok(&["get", "ipaddresspools.ironlb.dev", &good, "-o", "json"])
        .parse()
        .expect("JSON");
    assert_eq!(raw["spec"]["autoAssign"], json!(true));
    assert_eq!(raw["spec"]["avoidBuggyIPs"], json!(false));
    let table = cluster.kubectl_ok(&["get", "ipaddresspools.ironlb.dev", &good]);
    let header = table.lines().next().unwrap_or_default();
    for column in [
        "NAME",
        "ADDRESSES",
        "AUTO ASSIGN",
        "ASSIGNED V4",
        "AVAILABLE V4",
        "ASSIGNED V6",
        "AVAILABLE V6",
        "VALID",
        "AGE",
    ] {
        assert!(header.contains(column), "column {column} in:\n{table}");
    }
    assert!(
        table.contains("[\"198.51.100.0/30\",\"2001:db8::/126\"]"),
        "{table}"
    );
    pools
        .delete(&good, &Default::default())
        .await
        .expect("delete pool");
}

/// The BGP kinds as a user meets them: bad values refused at `kubectl apply`
/// with the field named and what would be right, defaults filled in, and a
/// session's state readable in `kubectl get bgpsessionstates`.
#[tokio::test]
async fn the_bgp_kinds_refuse_bad_fields_naming_them_and_show_sessions() {
    let Some(cluster) = Cluster::lock("the_bgp_kinds_refuse_bad_fields").await else {
        return;
    };
    let _installed = cluster.install();
    let dir = ScratchDir::new("e2e-bgp");
    let manifest = dir.0.join("objects.yaml");
    let apply = |yaml: String| {
        std::fs::write(&manifest, yaml).expect("write manifest");
        cluster.kubectl(&["apply", "-f", manifest.to_str().expect("utf-8 path")])
    };
    let refused = |yaml: String, expected: &[&str], not: &[&str]| {
        let out = apply(yaml);
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "refused: {said}");
        for e in expected {
            assert!(said.contains(e), "expected {e:?} in:\n{said}");
        }
        for n in not {
            assert!(!said.contains(n), "did not expect {n:?} in:\n{said}");
        }
    };
    let name = unique("bgp");
    refused(
        format!(
            "apiVersion: ironlb.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: {name}}}\nspec:\n  \
             myASN: 23456\n  peerASN: 4294967296\n  peerAddress: 10.0.0.300\n  peerPort: 0\n  \
             holdTime: 2s\n  keepaliveTime: fast\n  connectTime: 0s\n  routerID: \"fd00::1\"\n"
        ),
        &[
            "spec.myASN: Invalid value: 23456: 23456 is AS_TRANS (RFC 6793)",
            "spec.peerASN: Invalid value: 4294967296: spec.peerASN in body should be less than or equal to 4294967295",
            "spec.peerAddress: Invalid value: \"10.0.0.300\": must be an IPv4 or IPv6 address",
            "spec.peerPort: Invalid value: 0",
            "spec.holdTime: Invalid value: \"2s\": must be 0s or between 3s and 65535s (RFC 4271)",
            "spec.keepaliveTime: Invalid value: \"fast\": spec.keepaliveTime in body should match",
            "spec.connectTime: Invalid value: \"0s\": must be between 1s and 65535s",
            "spec.routerID: Invalid value: \"fd00::1\": must be an IPv4 address",
        ],
        // A field already refused does not also break the rules across fields.
        &["type conversion error", "parse error"],
    );
    refused(
        format!(
            "apiVersion: ironlb.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: {name}}}\nspec:\n  \
             myASN: 64512\n  peerASN: 64513\n  peerAddress: 10.0.0.1\n  sourceAddress: \"fd00::1\"\n  \
             holdTime: 9s\n  keepaliveTime: 10s\n"
        ),
        &[
            "spec.keepaliveTime: Invalid value: keepaliveTime must be shorter than holdTime",
            "spec.sourceAddress: Invalid value: sourceAddress must be of the same family as peerAddress",
        ],
        &[],
    );
    refused(
        format!(
            "apiVersion: ironlb.dev/v1alpha1\nkind: BGPAdvertisement\nmetadata: {{name: {name}}}\nspec:\n  \
             aggregationLength: 33\n  aggregationLengthV6: 129\n  localPref: -1\n  \
             communities: [\"65536:1\", \"65000:100\", \"large:1:2:4294967296\", \"large:1:2:3\", \"Bad Name\", \"backbone\"]\n"
        ),
        &[
            "spec.aggregationLength: Invalid value: 33",
            "spec.aggregationLengthV6: Invalid value: 129",
            "spec.localPref: Invalid value: -1",
            "spec.communities[0]: Invalid value: \"65536:1\": must be a standard community (65000:100, each half at most 65535)",
            "spec.communities[2]: Invalid value: \"large:1:2:4294967296\"",
            "spec.communities[4]: Invalid value: \"Bad Name\"",
        ],
        &[
            "spec.communities[1]",
            "spec.communities[3]",
            "spec.communities[5]",
        ],
    );
    refused(
        format!(
            "apiVersion: ironlb.dev/v1alpha1\nkind: BFDProfile\nmetadata: {{name: {name}}}\nspec:\n  \
             receiveInterval: 5\n  transmitInterval: 60001\n  detectMultiplier: 1\n  minimumTtl: 255\n"
        ),
        &[
            "spec.receiveInterval: Invalid value: 5",
            "spec.transmitInterval: Invalid value: 60001",
            "spec.detectMultiplier: Invalid value: 1",
            "spec.minimumTtl: Invalid value: 255",
        ],
        &[],
    );
    refused(
        format!(
            "apiVersion: ironlb.dev/v1alpha1\nkind: Community\nmetadata: {{name: {name}}}\nspec:\n  \
             communities: [{{name: backbone, value: \"no-export\"}}, {{name: \"Bad name\", value: \"65000:1\"}}]\n"
        ),
        &[
            "spec.communities[0].value: Invalid value: \"no-export\": must be a standard community",
            "spec.communities[1].name: Invalid value: \"Bad name\"",
        ],
        &[],
    );

    // Good objects: the API server fills in the port, and a 4-byte ASN fits.
    let out = apply(format!(
        "apiVersion: ironlb.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: {name}}}\nspec:\n  \
         myASN: 4200000000\n  peerASN: 64513\n  peerAddress: \"fd00::1\"\n  holdTime: 9s\n  \
         keepaliveTime: 3s\n  bfdProfile: {name}\n---\n\
         apiVersion: ironlb.dev/v1alpha1\nkind: BFDProfile\nmetadata: {{name: {name}}}\nspec:\n  \
         receiveInterval: 100\n  transmitInterval: 100\n---\n\
         apiVersion: ironlb.dev/v1alpha1\nkind: Community\nmetadata: {{name: {name}}}\nspec:\n  \
         communities: [{{name: backbone, value: \"65000:300\"}}]\n---\n\
         apiVersion: ironlb.dev/v1alpha1\nkind: BGPAdvertisement\nmetadata: {{name: {name}}}\nspec:\n  \
         aggregationLength: 24\n  localPref: 4294967295\n  communities: [\"backbone\", \"large:4200000000:1:2\"]\n"
    ));
    let _made: Vec<Made> = [
        "bgppeers.ironlb.dev",
        "bfdprofiles.ironlb.dev",
        "communities.ironlb.dev",
        "bgpadvertisements.ironlb.dev",
    ]
    .into_iter()
    .map(|kind| Made::new(&cluster, kind, &name))
    .collect();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peer: serde_json::Value = cluster
        .kubectl_ok(&["get", "bgppeers.ironlb.dev", &name, "-o", "json"])
        .parse()
        .expect("JSON");
    assert_eq!(peer["spec"]["peerPort"], json!(179));
    assert_eq!(peer["spec"]["myASN"], json!(4200000000u32));
    let client = cluster.client().await;
    let peers = Api::<ironlb::api::BGPPeer>::all(client.clone());
    let read = peers.get(&name).await.expect("read the peer");
    assert_eq!(read.spec.bfd_profile.as_deref(), Some(name.as_str()));

    // A session report as a speaker writes it: the object, then its status.
    let sessions = Api::<ironlb::api::BGPSessionState>::all(client.clone());
    let session = ironlb::api::BGPSessionState::new(
        &name,
        ironlb::api::BGPSessionStateSpec {
            node: "node-a".into(),
            peer: name.clone(),
            peer_address: "fd00::1".into(),
        },
    );
    let _session = Made::new(&cluster, "bgpsessionstates.ironlb.dev", &name);
    sessions
        .create(&PostParams::default(), &session)
        .await
        .expect("create the session report");
    sessions
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "state": "Active",
                "bfdState": "Down",
                "since": "2026-12-02T10:00:00Z",
                "lastError": "connect: connection refused",
                "prefixesSent": 0,
            }})),
        )
        .await
        .expect("write its status");
    let table = cluster.kubectl_ok(&["get", "bgpsessionstates.ironlb.dev", &name]);
    let header = table.lines().next().unwrap_or_default();
    for column in [
        "NODE",
        "PEER",
        "STATE",
        "BFD",
        "SENT",
        "SINCE",
        "LAST ERROR",
    ] {
        assert!(header.contains(column), "column {column} in:\n{table}");
    }
    assert!(
        table.contains("node-a")
            && table.contains("Active")
            && table.contains("connection refused"),
        "{table}"
    );
}

/// What a ServiceAccount may do beyond what every authenticated user may, as
/// (resource, resource names, verb), from `kubectl auth can-i --list`.
fn can_i(cluster: &Cluster, user: &str, namespace: &str, baseline: &str) -> BTreeSet<Grant> {
    let list = |user: &str| {
        let out = cluster.kubectl_ok(&["auth", "can-i", "--list", "--as", user, "-n", namespace]);
        let mut lines = out.lines();
        let header = lines.next().expect("a header");
        let column = |name: &str| {
            header
                .find(name)
                .unwrap_or_else(|| panic!("{name} in {header}"))
        };
        let (names_at, verbs_at) = (column("Resource Names"), column("Verbs"));
        let mut grants = BTreeSet::new();
        for line in lines {
            let cell =
                |from: usize, to: usize| line.get(from..to.min(line.len())).unwrap_or("").trim();
            let resource = cell(0, column("Non-Resource URLs"));
            if resource.is_empty() {
                continue;
            }
            let words = |text: &str| -> Vec<String> {
                text.trim_matches(['[', ']'])
                    .split_whitespace()
                    .map(String::from)
                    .collect()
            };
            let mut names = words(cell(names_at, verbs_at));
            names.sort();
            for verb in words(cell(verbs_at, line.len())) {
                grants.insert((resource.to_string(), names.join(" "), verb));
            }
        }
        grants
    };
    &list(user) - &list(baseline)
}

/// A (resource, resource names, verb) that RBAC grants.
type Grant = (String, String, String);

/// The grants docs/security.md's table after `<!-- can-i: WHAT -->` lists.
fn documented_grants(doc: &str, what: &str) -> BTreeSet<Grant> {
    let marker = format!("<!-- can-i: {what} -->");
    let start = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/security.md has no {marker}"));
    let mut grants = BTreeSet::new();
    for line in doc[start + marker.len()..]
        .lines()
        .skip(1)
        .skip(2)
        .take_while(|l| l.starts_with('|'))
    {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let names = if cells[1] == "—" { "" } else { cells[1] };
        for verb in cells[2].split_whitespace() {
            grants.insert((cells[0].to_string(), names.to_string(), verb.to_string()));
        }
    }
    grants
}

/// docs/security.md lists what each ServiceAccount may do (`kubectl auth
/// can-i --list`, beyond what any authenticated user may), with `deploy/`
/// and with the Gateway component; the API server agrees, row for row. Every
/// documented overlay renders, and the one for clusters before 1.30 has no
/// admission policy.
#[tokio::test]
async fn the_rbac_table_is_the_truth() {
    let Some(cluster) = Cluster::lock("the_rbac_table_is_the_truth").await else {
        return;
    };
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md"))
        .expect("docs/security.md");
    for overlay in [
        "deploy",
        "deploy/overlays/gateway",
        "deploy/overlays/pre-1.30",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(overlay);
        let rendered = cluster.kubectl_ok(&["kustomize", path.to_str().expect("utf-8 path")]);
        let policies = rendered
            .matches("kind: ValidatingAdmissionPolicy\n")
            .count();
        assert_eq!(
            policies,
            if overlay.ends_with("pre-1.30") { 0 } else { 4 },
            "{overlay}"
        );
    }
    let mut installed = cluster.install();
    let client = cluster.client().await;
    let ns = Made::namespace(&cluster, &client, &unique("rbac")).await;
    cluster.kubectl_ok(&["create", "serviceaccount", "nobody", "-n", &ns.name]);
    let nobody = format!("system:serviceaccount:{}:nobody", ns.name);
    let grants = |who: &str, namespace: &str| {
        can_i(
            &cluster,
            &format!("system:serviceaccount:ironlb-system:{who}"),
            namespace,
            &nobody,
        )
    };
    let mut base = BTreeMap::new();
    for who in ["ironlb-controller", "ironlb-speaker"] {
        let everywhere = grants(who, &ns.name);
        let home = &grants(who, "ironlb-system") - &everywhere;
        assert_eq!(
            everywhere,
            documented_grants(&doc, &format!("base {who} everywhere")),
            "{who}, everywhere"
        );
        assert_eq!(
            home,
            documented_grants(&doc, &format!("base {who} ironlb-system")),
            "{who}, in ironlb-system"
        );
        base.insert(who, (everywhere, home));
    }
    // Each component on top of what is there: what it adds, everywhere and
    // in ironlb-system, is what its tables say (none: it grants nothing).
    let mut before = base;
    let mut installed_so_far: Vec<&str> = Vec::new();
    for component in ["gateway", "bgp", "monitoring"] {
        installed_so_far.push(component);
        installed.add_components(&installed_so_far);
        let mut now = BTreeMap::new();
        for who in ["ironlb-controller", "ironlb-speaker"] {
            let everywhere = grants(who, &ns.name);
            let home = &grants(who, "ironlb-system") - &everywhere;
            let (was_everywhere, was_home) = &before[who];
            for (scope, added) in [
                ("everywhere", &everywhere - was_everywhere),
                ("ironlb-system", &home - was_home),
            ] {
                let what = format!("{component} {who} {scope}");
                let documented = if doc.contains(&format!("<!-- can-i: {what} -->")) {
                    documented_grants(&doc, &what)
                } else {
                    BTreeSet::new()
                };
                assert_eq!(added, documented, "what {component} adds to {who}, {scope}");
            }
            now.insert(who, (everywhere, home));
        }
        before = now;
    }
}

/// The protocol checks the test server passes in tests/apiserver.rs hold on the
/// real server too.
#[tokio::test]
async fn the_test_servers_protocol_is_the_real_servers() {
    let Some(cluster) = Cluster::lock("the_test_servers_protocol_is_the_real_servers").await else {
        return;
    };
    let _installed = cluster.install();
    let client = cluster.client().await;
    let ns = Made::namespace(&cluster, &client, &unique("protocol")).await;
    let (ns, prefix) = (ns.name.as_str(), unique("protocol"));
    protocol::create_twice_is_already_exists_and_a_missing_object_is_not_found(&client, ns).await;
    protocol::a_created_service_gets_the_defaults_ironlb_reads(&client, ns).await;
    protocol::a_stale_resource_version_is_a_conflict_on_replace_and_patch(&client, ns).await;
    protocol::status_writes_ignore_spec_and_other_writes_ignore_status(&client, ns).await;
    protocol::json_patch_applies_and_a_no_op_keeps_the_resource_version(&client, &prefix).await;
    protocol::server_side_apply_owns_fields_and_set_elements(&client, &prefix).await;
    protocol::a_finalizer_holds_a_deleted_object_until_it_is_removed(&client, &prefix).await;
    protocol::strategic_merge_merges_keyed_lists_and_custom_resources_refuse_it(
        &client, ns, &prefix,
    )
    .await;
    protocol::a_watch_sees_changes_in_order_through_its_selectors(&client, ns).await;
    protocol::lists_honour_label_and_field_selectors(&client, ns).await;
}

/// A scenario of [`support::scenarios`] on the real server, with the
/// controller's ServiceAccount token.
async fn scenario_env(cluster: &Cluster, dir: &ScratchDir, name: &str) -> scenarios::Env {
    let client = cluster.client().await;
    scenarios::Env {
        kubeconfig: cluster.service_account_kubeconfig(
            "ironlb-system",
            "ironlb-controller",
            &dir.0,
            None,
        ),
        client,
        namespace: unique(name),
        other_namespace: unique(&format!("{name}-other")),
        prefix: unique(name),
        dir: dir.0.clone(),
        patience: PATIENCE,
    }
}

/// Runs a scenario of [`support::scenarios`] on the real server, in a
/// namespace of its own, with `deploy/` installed for the controller's
/// ServiceAccount.
async fn on_the_real_server(name: &str, scenario: impl AsyncFnOnce(&scenarios::Env)) {
    let Some(cluster) = Cluster::lock(name).await else {
        return;
    };
    let _installed = cluster.install();
    let dir = ScratchDir::new(&format!("e2e-{name}"));
    let env = scenario_env(&cluster, &dir, name).await;
    let _ns = Made::namespace(&cluster, &env.client, &env.namespace).await;
    let _other = Made::namespace(&cluster, &env.client, &env.other_namespace).await;
    scenario(&env).await;
}

#[tokio::test]
async fn restarts_and_replicas_never_move_an_address() {
    on_the_real_server(
        "restarts",
        scenarios::restarts_and_replicas_never_move_an_address,
    )
    .await;
}

#[tokio::test]
async fn sharing_stays_within_a_namespace_unless_the_pool_allows() {
    on_the_real_server(
        "tenancy",
        scenarios::sharing_stays_within_a_namespace_unless_the_pool_allows,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_never_writes_over_the_new_one() {
    on_the_real_server(
        "paused",
        scenarios::a_paused_leader_never_writes_over_the_new_one,
    )
    .await;
}

#[tokio::test]
async fn a_gateway_gets_an_address_and_its_route_status() {
    let name = "gateway-scenario";
    let Some(cluster) = Cluster::lock(name).await else {
        return;
    };
    let _installed = cluster.install_with_gateway();
    install_gateway_crds(&cluster);
    let dir = ScratchDir::new(&format!("e2e-{name}"));
    let env = scenario_env(&cluster, &dir, name).await;
    let _ns = Made::namespace(&cluster, &env.client, &env.namespace).await;
    // The scenario names its pool and class after its prefix.
    let _pool = Made::new(
        &cluster,
        "ipaddresspools.ironlb.dev",
        &format!("{}-gw", env.prefix),
    );
    let _class = Made::new(&cluster, "gatewayclass", &format!("{}-gw", env.prefix));
    scenarios::a_gateway_gets_an_address_and_its_route_status(&env).await;
}

#[tokio::test]
async fn sharing_metallb_annotations_and_exhaustion() {
    on_the_real_server(
        "sharing",
        scenarios::sharing_metallb_annotations_and_exhaustion,
    )
    .await;
}

const VIP: &str = "10.77.0.100";
const CLIENT: &str = "10.77.0.2";
const BACKEND: &str = "10.77.0.50";

/// Creates `svc` as ironlb serves it with embedded forwarding and PROXY v2,
/// its one endpoint nginx (`BACKEND:8080`) on `node`, in an EndpointSlice
/// made by hand (no kubelet, no EndpointSlice controller for selectorless
/// Services).
async fn nginx_service(client: &Client, ns: &str, svc: Svc, node: &str) {
    let mut svc = svc
        .class(LOAD_BALANCER_CLASS)
        .annotation(ironlb::api::annotations::FORWARDING, "embedded")
        .annotation(ironlb::api::annotations::PROXY_PROTOCOL, "v2")
        .build();
    let name = svc.metadata.name.clone().expect("a name");
    let spec = svc.spec.as_mut().expect("spec");
    spec.selector = None;
    spec.ports.as_mut().expect("ports")[0].target_port =
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080));
    create_service(client, svc).await;
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-1"), "namespace": ns, "labels": {
            "kubernetes.io/service-name": name,
            "endpointslice.kubernetes.io/managed-by": "ironlb-e2e"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [BACKEND], "nodeName": node, "conditions": {"ready": true}}],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    }))
    .expect("slice");
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &slice)
        .await
        .expect("create EndpointSlice");
}

/// nginx at [`BACKEND`]`:8080` on `switch`, reading the PROXY protocol and
/// answering with the client address it gave (`client=…`).
fn nginx_backend(lab: &mut Lab, switch: &str) {
    let ns = lab.namespace("web");
    lab.plug(switch, &ns, "pw", &[&format!("{BACKEND}/24")]);
    let temp = lab.nginx_temp_paths("nginx");
    lab.nginx(
        &ns,
        "nginx",
        &format!(
            "http {{\n{temp}  access_log off;\n  server {{ listen {BACKEND}:8080 proxy_protocol;\n\
               location / {{ return 200 \"client=$proxy_protocol_addr\\n\"; }} }}\n}}\n"
        ),
    );
}

/// Writes the gossip secret where speakers read it; returns the file.
/// `curl http://VIP/` from the client: nginx behind the forwarder answers with
/// the client address the PROXY v2 header gave it.
fn fetch(lab: &Lab, client: &str) -> Option<String> {
    let out = lab.exec(
        client,
        &["curl", "-sS", "--max-time", "2", &format!("http://{VIP}/")],
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn wait_fetch(lab: &Lab, client: &str, what: &str, logs: &dyn Fn() -> String) -> Duration {
    let started = Instant::now();
    loop {
        if let Some(body) = fetch(lab, client) {
            assert_eq!(body, format!("client={CLIENT}"), "{what}");
            return started.elapsed();
        }
        assert!(
            started.elapsed() < PATIENCE,
            "timed out waiting for {what}; logs:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `deploy/` applied as a user does; two controller replicas and three
/// speakers (in network namespaces, as nodes) with the ServiceAccount tokens it
/// creates. The controller elects a leader, creates the gossip Secret, gives a
/// Service with embedded forwarding and PROXY v2 an address and says so in an
/// event; the speakers announce it, report in a ServiceL2Status and an event,
/// and a client reaches nginx through it, nginx seeing the client's address.
/// Its pool is deleted: it stays Terminating and the address answers on. Then
/// the API server is frozen (SIGSTOP) and the owner's speaker killed: the
/// address still moves and the client still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_installs_and_its_service_accounts_run_ironlb_end_to_end() {
    let test = "deploy_installs_and_its_service_accounts_run_ironlb_end_to_end";
    let Some(cluster) = Cluster::lock(test).await else {
        return;
    };
    let Some(mut lab) = Lab::new(test) else {
        return;
    };
    // BGP with a TCP MD5 password below: the component that grants it.
    let _installed = cluster.install_with(&["bgp"]);
    let client = cluster.client().await;
    let dir = lab.dir().to_path_buf();

    // The lab: a switch, three nodes, a client and nginx as the backend.
    let switch = lab.switch();
    let nodes: Vec<(String, String)> = lab
        .plug_nodes(&switch, "10.77.0", 3)
        .into_iter()
        .enumerate()
        .map(|(i, ns)| (format!("{}-node-{}", unique("n"), i + 1), ns))
        .collect();
    let client_ns = lab.namespace("client");
    lab.plug(&switch, &client_ns, "pc", &[&format!("{CLIENT}/24")]);
    nginx_backend(&mut lab, &switch);

    // The controller: two replicas, the ServiceAccount's token.
    let controller_kubeconfig =
        cluster.service_account_kubeconfig("ironlb-system", "ironlb-controller", &dir, None);
    let controllers = [
        ControllerProcess::spawn(
            &controller_kubeconfig,
            &dir,
            "e2e-ctl-a",
            &["--default-class=false", "--gateway=false"],
        ),
        ControllerProcess::spawn(
            &controller_kubeconfig,
            &dir,
            "e2e-ctl-b",
            &["--default-class=false", "--gateway=false"],
        ),
    ];
    let controller_logs = || {
        controllers
            .iter()
            .map(|c| format!("--- {}\n{}", c.identity, c.log()))
            .collect::<String>()
    };
    let leader = wait_for("a controller to lead", PATIENCE, || holder(&client)).await;
    assert!(leader.starts_with("e2e-ctl-"), "leader {leader}");
    let secret = gossip_secret(&client).await;
    assert!(secret.0.len() >= 32, "a 32-byte random secret");

    // The world, as an operator makes it.
    let ns = Made::namespace(&cluster, &client, &unique("lab")).await;
    let pool_name = unique("lab");
    announced_pool(&client, &pool_name, &unique("lab"), &[VIP]).await;
    let _made_nodes: Vec<Made> = nodes
        .iter()
        .map(|(n, _)| Made::new(&cluster, "node", n))
        .collect();
    for (i, (name, _)) in nodes.iter().enumerate() {
        create_node(&client, name, &format!("10.77.0.1{}", i + 1)).await;
    }
    let svc = Svc::lb(&ns.name, "web");
    nginx_service(&client, &ns.name, svc, &nodes[0].0).await;

    let status = wait_for("web's status", PATIENCE, || async {
        let s = Api::<Service>::namespaced(client.clone(), &ns.name)
            .get("web")
            .await
            .ok()?;
        s.status?.load_balancer?.ingress?.into_iter().next()
    })
    .await;
    assert_eq!(status.ip.as_deref(), Some(VIP), "{}", controller_logs());
    assert_eq!(
        status.ip_mode.as_deref(),
        Some("Proxy"),
        "embedded forwarding"
    );
    let allocated = wait_for_event(&client, &ns.name, "web", "IPAllocated").await;
    assert!(allocated.contains(&pool_name), "{allocated}");

    // The speakers: the speaker ServiceAccount's token, bound to a Pod on
    // each one's node as the kubelet's is; the API server reached at its own
    // address through a relay inside each node.
    let secret_file = gossip_secret_file(&dir, &secret);
    let api = cluster.server_addr();
    let mut relays = Vec::new();
    let mut speakers = Vec::new();
    for (i, (name, node_ns)) in nodes.iter().enumerate() {
        relays.push(relay(node_ns, api, api));
        // Seeds are given, so no speaker looks for peers at other Nodes of a
        // user's cluster.
        let seeds: Vec<String> = (1..=3)
            .filter(|j| *j != i + 1)
            .map(|j| format!("10.77.0.1{j}:7947"))
            .collect();
        let idx = spawn_speaker(
            &mut lab,
            node_ns,
            name,
            &format!("10.77.0.1{}", i + 1),
            &cluster.speaker_kubeconfig(name, &dir, None),
            &secret_file,
            &seeds,
            &dir.join(format!("speaker-{}.log", i + 1)),
            false,
        );
        speakers.push(idx);
    }
    let speaker_logs = || {
        (1..=3)
            .map(|i| {
                let log = std::fs::read_to_string(dir.join(format!("speaker-{i}.log")));
                format!("--- speaker {i}\n{}", log.unwrap_or_default())
            })
            .collect::<String>()
    };

    let took = wait_fetch(
        &lab,
        &client_ns,
        "the client to reach nginx through the address",
        &speaker_logs,
    );
    eprintln!("e2e: the client reached nginx through {VIP} {took:?} after the speakers started");

    // Who announces is visible with kubectl.
    let reports: Api<ServiceL2Status> = Api::namespaced(client.clone(), &ns.name);
    // The one report about web, when there is exactly one.
    let web_report = || async {
        let list = reports.list(&Default::default()).await.ok()?;
        let mut web: Vec<_> = list
            .items
            .into_iter()
            .filter(|s| s.spec.service == "web")
            .collect();
        (web.len() == 1).then(|| web.remove(0).spec)
    };
    let owner = wait_for("a ServiceL2Status for web", PATIENCE, &web_report).await;
    assert_eq!(owner.addresses, [VIP]);
    assert_eq!(owner.interfaces, ["eth0"]);
    let announcing = wait_for_event(&client, &ns.name, "web", "Announcing").await;
    assert!(announcing.contains(&owner.node), "{announcing}");

    // The controller recorded the pool on the Service and protects the pool
    // (RBAC allows both); deleting the pool leaves it Terminating, and the
    // address answers on.
    let web = Api::<Service>::namespaced(client.clone(), &ns.name)
        .get("web")
        .await
        .expect("web");
    assert_eq!(
        web.metadata
            .annotations
            .unwrap_or_default()
            .get(ironlb::api::annotations::ALLOCATED_FROM_POOL),
        Some(&pool_name)
    );
    let pools = Api::<ironlb::api::IPAddressPool>::all(client.clone());
    wait_for("the pool's finalizer", PATIENCE, || async {
        let p = pools.get(&pool_name).await.ok()?;
        p.metadata
            .finalizers
            .filter(|f| f.iter().any(|f| f == ironlb::api::POOL_FINALIZER))
    })
    .await;
    pools
        .delete(&pool_name, &Default::default())
        .await
        .expect("delete the pool");
    wait_for("the pool to say Terminating", PATIENCE, || async {
        let p = pools.get(&pool_name).await.ok()?;
        p.status?
            .conditions
            .iter()
            .any(|c| c.reason == "Terminating" && c.message.contains("web"))
            .then_some(())
    })
    .await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            fetch(&lab, &client_ns).as_deref(),
            Some(format!("client={CLIENT}").as_str()),
            "the address answers while its pool is Terminating"
        );
    }

    // BGP from the cluster's objects, with the speakers' own RBAC: an FRR
    // router on the LAN, a BGPPeer whose TCP MD5 password is in a Secret, a
    // pool only a BGPAdvertisement selects; every node advertises its
    // address, and the client reaches it through the router.
    if support::routers::frr_installed() {
        let router_ns = lab.namespace("tor");
        lab.plug(&switch, &router_ns, "pt", &["10.77.0.1/24"]);
        lab.exec_ok(&router_ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let frr = support::routers::Frr::start(
            &mut lab,
            &router_ns,
            "router bgp 64513\n bgp router-id 10.77.0.1\n no bgp ebgp-requires-policy\n \
             neighbor nodes peer-group\n neighbor nodes remote-as 64512\n neighbor nodes password e2e-md5-secret\n \
             bgp listen range 10.77.0.0/24 peer-group nodes\n address-family ipv4 unicast\n  maximum-paths 8\n \
             exit-address-family\n",
        );
        lab.exec_ok(
            &client_ns,
            &["ip", "route", "add", "10.77.9.0/24", "via", "10.77.0.1"],
        );
        let secret_name = unique("bgp");
        let bgp_secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": secret_name, "namespace": "ironlb-system"},
            "type": "kubernetes.io/basic-auth",
            "stringData": {"password": "e2e-md5-secret"},
        }))
        .expect("secret");
        Api::<Secret>::namespaced(client.clone(), "ironlb-system")
            .create(&PostParams::default(), &bgp_secret)
            .await
            .expect("create the password Secret");
        let _made_secret = Made::new(&cluster, "secret", &secret_name);
        let bgp_objects = format!(
            "apiVersion: ironlb.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: {tor}}}\nspec:\n  \
             myASN: 64512\n  peerASN: 64513\n  peerAddress: 10.77.0.1\n  holdTime: 9s\n  \
             passwordSecret: {{name: {secret_name}}}\n---\n\
             apiVersion: ironlb.dev/v1alpha1\nkind: IPAddressPool\nmetadata: {{name: {bgp_pool}}}\nspec:\n  \
             addresses: [10.77.9.100/32]\n---\n\
             apiVersion: ironlb.dev/v1alpha1\nkind: BGPAdvertisement\nmetadata: {{name: {tor}}}\nspec:\n  \
             ipAddressPools: [{bgp_pool}]\n  communities: [\"65000:77\"]\n",
            tor = unique("tor"),
            bgp_pool = unique("bgp"),
        );
        let manifest = dir.join("bgp.yaml");
        std::fs::write(&manifest, bgp_objects).expect("write the BGP objects");
        cluster.kubectl_ok(&["apply", "-f", manifest.to_str().expect("utf-8 path")]);
        let _made_bgp: Vec<Made> = [
            ("bgppeers.ironlb.dev", unique("tor")),
            ("bgpadvertisements.ironlb.dev", unique("tor")),
        ]
        .into_iter()
        .map(|(kind, name)| Made::new(&cluster, kind, &name))
        .collect();
        let routed = Svc::lb(&ns.name, "routed")
            .annotation(ironlb::api::annotations::ADDRESS_POOL, &unique("bgp"));
        nginx_service(&client, &ns.name, routed, &nodes[0].0).await;
        let all: std::collections::BTreeSet<String> =
            (1..=3).map(|i| format!("10.77.0.1{i}")).collect();
        let deadline = Instant::now() + PATIENCE;
        while support::routers::next_hops(&lab, &router_ns, "10.77.9.100") != all {
            assert!(
                Instant::now() < deadline,
                "the router's next hops for 10.77.9.100: {:?}; sessions {:?}\n{}\n{}",
                support::routers::next_hops(&lab, &router_ns, "10.77.9.100"),
                frr.established(&lab),
                frr.log(),
                speaker_logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Each node's session is readable with kubectl.
        let by_peer = format!("{}={}", ironlb::api::bgp::BGP_PEER_LABEL, unique("tor"));
        let sessions = Api::<ironlb::api::BGPSessionState>::all(client.clone());
        wait_for("three established BGPSessionStates", PATIENCE, || async {
            let list = sessions
                .list(&kube::api::ListParams::default().labels(&by_peer))
                .await
                .ok()?;
            (list.items.len() == 3
                && list.items.iter().all(|s| {
                    s.status
                        .as_ref()
                        .is_some_and(|st| st.state == "Established" && st.prefixes_sent == 1)
                }))
            .then_some(())
        })
        .await;
        let table = cluster.kubectl_ok(&["get", "bgpsessionstates.ironlb.dev", "-l", &by_peer]);
        assert_eq!(table.matches("Established").count(), 3, "{table}");
        // What the schema cannot catch is a warning event on the object.
        let dangling = unique("dangling");
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: ironlb.dev/v1alpha1\nkind: BGPAdvertisement\nmetadata: {{name: {dangling}}}\n\
                 spec:\n  ipAddressPools: [{bgp_pool}]\n  peers: [no-such-peer]\n",
                bgp_pool = unique("bgp")
            ),
        )
        .expect("write the advertisement");
        cluster.kubectl_ok(&["apply", "-f", manifest.to_str().expect("utf-8 path")]);
        let _made_dangling = Made::new(&cluster, "bgpadvertisements.ironlb.dev", &dangling);
        let note = wait_for_event(&client, "default", &dangling, "InvalidConfiguration").await;
        assert!(
            note.contains(&format!(
                "BGPAdvertisement {dangling}: spec.peers: BGPPeer no-such-peer does not exist"
            )),
            "{note}"
        );
        // Which nodes advertise the Service, as ServiceL2Status says for layer 2.
        let statuses = Api::<ironlb::api::ServiceBGPStatus>::namespaced(client.clone(), &ns.name);
        let advertisers = wait_for("three ServiceBGPStatus for routed", PATIENCE, || async {
            let list = statuses.list(&Default::default()).await.ok()?;
            let routed: std::collections::BTreeSet<String> = list
                .items
                .iter()
                .filter(|s| {
                    s.spec.service == "routed"
                        && s.spec.peers == [unique("tor")]
                        && s.spec.addresses == ["10.77.9.100"]
                })
                .map(|s| s.spec.node.clone())
                .collect();
            (routed.len() == 3).then_some(routed)
        })
        .await;
        assert_eq!(
            advertisers,
            nodes.iter().map(|(n, _)| n.clone()).collect(),
            "every node advertises"
        );
        let out = lab.exec(
            &client_ns,
            &["curl", "-sS", "--max-time", "2", "http://10.77.9.100/"],
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("client={CLIENT}"),
            "through the router: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("e2e: FRR is not installed: the BGP part is not tried");
    }

    // The API server hangs; the owner dies; the address moves all the same.
    if let Some(frozen) = cluster.freeze() {
        let index = nodes
            .iter()
            .position(|(n, _)| *n == owner.node)
            .expect("the owner is a lab node");
        lab.kill(speakers[index]);
        let took = wait_fetch(
            &lab,
            &client_ns,
            "the client to get through after the owner died, API server frozen",
            &speaker_logs,
        );
        eprintln!(
            "e2e: failover with the API server frozen: the client got through {took:?} after the kill"
        );
        drop(frozen);
        // Once the API server answers again, the report names the new owner.
        wait_for(
            "the ServiceL2Status to leave the dead owner",
            PATIENCE,
            || async { web_report().await.filter(|r| r.node != owner.node) },
        )
        .await;
    } else {
        eprintln!(
            "e2e: not the local control plane (IRONLB_K8S_DIR unset): the frozen-API-server failover is not tried"
        );
    }

    for r in relays {
        r.abort();
    }
}

/// The Gateway controller on the real API server, with the upstream v1.6.1
/// CRDs ([`install_gateway_crds`]) and the controller's own
/// ServiceAccount: class, Gateway, listener and route status as the spec
/// words them, the Gateway's address from a pool through its Service, the
/// backends mirrored as EndpointSlices, and a ReferenceGrant added and
/// removed.
#[tokio::test]
async fn gateways_get_addresses_and_status_and_routes_follow_reference_grants() {
    let Some(cluster) = Cluster::lock("gateways_get_addresses_and_status").await else {
        return;
    };
    let _installed = cluster.install_with_gateway();
    install_gateway_crds(&cluster);
    let dir = ScratchDir::new("e2e-gateway");
    // The worked examples are what the API server accepts, in namespaces
    // of their own (the names they use, made unique).
    {
        let client = cluster.client().await;
        let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples/gateway");
        let mut text = String::new();
        for file in ["class.yaml", "one-address.yaml"] {
            let body = std::fs::read_to_string(format!("{examples}/{file}")).expect("example");
            text.push_str(&format!("{body}\n---\n"));
        }
        let mut made = Vec::new();
        for name in ["edge", "databases", "dns", "web"] {
            let unique_name = unique(name);
            text = text.replace(
                &format!("namespace: {name}"),
                &format!("namespace: {unique_name}"),
            );
            made.push(Made::namespace(&cluster, &client, &unique_name).await);
        }
        let file = dir.0.join("examples.yaml");
        std::fs::write(&file, text).expect("write examples");
        let out = cluster.kubectl_ok(&[
            "apply",
            "--dry-run=server",
            "-f",
            file.to_str().expect("utf-8 path"),
        ]);
        assert_eq!(out.matches("(server dry run)").count(), 8, "{out}");
    }
    let env = scenario_env(&cluster, &dir, "gw").await;
    let ns = env.namespace.clone();
    let apps = unique("gw-apps");
    let _ns = Made::namespace(&cluster, &env.client, &ns).await;
    let _apps = Made::namespace(&cluster, &env.client, &apps).await;
    let pool = unique("gw-pool");
    create_pool(&env.client, support::pool(&pool, &["198.51.100.40"])).await;
    let _pool = Made::new(&cluster, "ipaddresspools.ironlb.dev", &pool);
    let class = unique("gw-class");
    let _class = Made::new(&cluster, "gatewayclass", &class);

    let manifest = dir.0.join("gateway.yaml");
    let apply = |yaml: String| {
        std::fs::write(&manifest, yaml).expect("write manifest");
        cluster.kubectl_ok(&["apply", "-f", manifest.to_str().expect("utf-8 path")]);
    };
    apply(format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: {class}}}
spec: {{controllerName: ironlb.dev/gateway-controller}}
---
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: {ns}}}
spec: {{ports: [{{name: pg, port: 5432, targetPort: 15432}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  namespace: {ns}
  labels: {{kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{{name: pg, port: 15432, protocol: TCP}}]
endpoints:
  - addresses: [10.80.0.7]
    conditions: {{ready: true}}
  - addresses: [10.80.0.8]
    conditions: {{ready: false}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: {ns}}}
spec:
  gatewayClassName: {class}
  infrastructure:
    annotations: {{ironlb.dev/address-pool: {pool}}}
  listeners:
    - {{name: postgres, port: 5432, protocol: TCP, allowedRoutes: {{namespaces: {{from: All}}}}}}
    - {{name: dns, port: 53, protocol: UDP}}
    - {{name: web, port: 80, protocol: HTTP}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {{name: pg, namespace: {ns}}}
spec:
  parentRefs: [{{name: edge, sectionName: postgres}}]
  rules: [{{backendRefs: [{{name: db, port: 5432}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: UDPRoute
metadata: {{name: dns, namespace: {ns}}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: coredns, port: 53}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {{name: borrowed, namespace: {apps}}}
spec:
  parentRefs: [{{name: edge, namespace: {ns}, sectionName: postgres}}]
  rules: [{{backendRefs: [{{name: db, namespace: {ns}, port: 5432}}]}}]
"#
    ));
    let controller = ControllerProcess::spawn(
        &env.kubeconfig,
        &dir.0,
        "ctl-gateway",
        &["--default-class=false"],
    );
    let get = |kind: &str, namespace: &str, name: &str| {
        let out = cluster.kubectl(&["get", kind, "-n", namespace, name, "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let condition =
        |object: &serde_json::Value, path: &str, type_: &str| -> Option<(String, String)> {
            let list = object.pointer(path)?.as_array()?;
            let c = list.iter().find(|c| c["type"] == type_)?;
            Some((
                c["status"].as_str()?.to_string(),
                c["reason"].as_str()?.to_string(),
            ))
        };
    let pair = |s: &str, r: &str| Some((s.to_string(), r.to_string()));
    let logs = || controller.log();

    // The class is accepted.
    support::wait_for("the GatewayClass accepted", PATIENCE, || async {
        let c = get("gatewayclass", "default", &class);
        (condition(&c, "/status/conditions", "Accepted") == pair("True", "Accepted")).then_some(())
    })
    .await;
    // The Gateway is programmed on the pool's address, partly valid.
    let gw = support::wait_for("the Gateway programmed", PATIENCE, || async {
        let g = get("gateway", &ns, "edge");
        (condition(&g, "/status/conditions", "Programmed") == pair("True", "Programmed"))
            .then_some(g)
    })
    .await;
    assert_eq!(
        gw["status"]["addresses"],
        json!([{"type": "IPAddress", "value": "198.51.100.40"}]),
        "{gw}\n{}",
        logs()
    );
    assert_eq!(
        condition(&gw, "/status/conditions", "Accepted"),
        pair("True", "ListenersNotValid")
    );
    assert_eq!(
        gw["status"]["conditions"][0]["observedGeneration"],
        gw["metadata"]["generation"]
    );
    let listeners = gw["status"]["listeners"]
        .as_array()
        .expect("listener status");
    let listener = |name: &str| {
        listeners
            .iter()
            .find(|l| l["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    // pg, and borrowed (attached though its backend is not resolved).
    assert_eq!(listener("postgres")["attachedRoutes"], 2, "{gw}");
    assert_eq!(listener("dns")["attachedRoutes"], 1, "{gw}");
    assert_eq!(
        condition(&listener("web"), "/conditions", "Accepted"),
        pair("False", "UnsupportedProtocol")
    );
    assert_eq!(
        listener("postgres")["supportedKinds"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "TCPRoute"}])
    );

    // The Gateway's Service carries its ports and address; the backend's
    // ready endpoint is mirrored with the backend's target port.
    let svc_name = ironlb::gateway::service_name("edge");
    let svc = get("service", &ns, &svc_name);
    let ports: Vec<(i64, String)> = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["port"].as_i64().unwrap_or(0),
                p["protocol"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [(53, "UDP".to_string()), (5432, "TCP".to_string())],
        "{svc}"
    );
    assert_eq!(svc["metadata"]["ownerReferences"][0]["kind"], "Gateway");
    let slices = support::wait_for("the mirrored EndpointSlice", PATIENCE, || async {
        let list = Api::<EndpointSlice>::namespaced(env.client.clone(), &ns)
            .list(
                &kube::api::ListParams::default()
                    .labels(&format!("kubernetes.io/service-name={svc_name}")),
            )
            .await
            .ok()?;
        (!list.items.is_empty()).then_some(list.items)
    })
    .await;
    assert_eq!(slices.len(), 1, "{slices:?}");
    let endpoints: Vec<&String> = slices[0]
        .endpoints
        .iter()
        .flat_map(|e| &e.addresses)
        .collect();
    assert_eq!(endpoints, ["10.80.0.7"], "ready endpoints only");
    assert_eq!(
        slices[0].ports.as_ref().and_then(|p| p[0].port),
        Some(15432)
    );
    assert_eq!(
        slices[0]
            .ports
            .as_ref()
            .and_then(|p| p[0].name.clone())
            .as_deref(),
        Some("tcp-5432")
    );

    // Routes: attached and resolved; a missing backend; a cross-namespace
    // backend refused until a ReferenceGrant allows it, and again after.
    let route_status = |kind: &str, namespace: &str, name: &str| {
        let r = get(kind, namespace, name);
        (
            condition(&r, "/status/parents/0/conditions", "Accepted"),
            condition(&r, "/status/parents/0/conditions", "ResolvedRefs"),
        )
    };
    let wait_route = |kind: &'static str,
                      namespace: String,
                      name: &'static str,
                      accepted: (&'static str, &'static str),
                      resolved: (&'static str, &'static str)| {
        let route_status = &route_status;
        async move {
            support::wait_for(
                &format!("{kind} {namespace}/{name}: {accepted:?} {resolved:?}"),
                PATIENCE,
                || async {
                    (route_status(kind, &namespace, name)
                        == (pair(accepted.0, accepted.1), pair(resolved.0, resolved.1)))
                        .then_some(())
                },
            )
            .await
        }
    };
    wait_route(
        "tcproute",
        ns.clone(),
        "pg",
        ("True", "Accepted"),
        ("True", "ResolvedRefs"),
    )
    .await;
    wait_route(
        "udproute",
        ns.clone(),
        "dns",
        ("True", "Accepted"),
        ("False", "BackendNotFound"),
    )
    .await;
    let borrowed = |resolved| {
        wait_route(
            "tcproute",
            apps.clone(),
            "borrowed",
            ("True", "Accepted"),
            resolved,
        )
    };
    borrowed(("False", "RefNotPermitted")).await;
    apply(format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: ReferenceGrant\nmetadata: {{name: apps-to-db, namespace: {ns}}}\n\
         spec:\n  from: [{{group: gateway.networking.k8s.io, kind: TCPRoute, namespace: {apps}}}]\n  to: [{{group: \"\", kind: Service, name: db}}]\n"
    ));
    borrowed(("True", "ResolvedRefs")).await;
    cluster.kubectl_ok(&["delete", "referencegrant", "-n", &ns, "apps-to-db"]);
    borrowed(("False", "RefNotPermitted")).await;
    // A pass with nothing new changes nothing: a namespace label wakes the
    // controller, and no object it keeps gets a new resourceVersion.
    let versions = || {
        let slice = format!("{svc_name}-tcp-5432-0-db-1");
        [
            ("gateway", "edge"),
            ("tcproute", "pg"),
            ("service", svc_name.as_str()),
            ("endpointslice", slice.as_str()),
        ]
        .map(|(kind, name)| get(kind, &ns, name)["metadata"]["resourceVersion"].clone())
    };
    let before = versions();
    assert!(
        before.iter().all(serde_json::Value::is_string),
        "{before:?}"
    );
    cluster.kubectl_ok(&["label", "namespace", &apps, "touched=yes"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(versions(), before, "{}", logs());

    let g = get("gateway", &ns, "edge");
    let postgres = g["status"]["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["name"] == "postgres")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        postgres["attachedRoutes"], 2,
        "attached even with an unresolved backend: {g}"
    );

    // The Gateway gone, its Service goes with it (owner reference).
    cluster.kubectl_ok(&["delete", "gateway", "-n", &ns, "edge"]);
    support::wait_for("the Gateway's Service deleted", PATIENCE, || async {
        Api::<Service>::namespaced(env.client.clone(), &ns)
            .get_opt(&svc_name)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    drop(controller);
}

/// One Gateway address carries a PostgreSQL-like TCP listener limited to a
/// source range, a DNS-like UDP listener and a TLS passthrough listener, on
/// the real API server with the deployed RBAC: the controller and a speaker
/// in a node namespace run them. TCP connections split 80/20 by weight
/// (1,000 measured), each UDP flow stays with one backend, two hostnames
/// reach two TLS servers (the client sees each one's certificate) with the
/// client's address in PROXY v2, a name no route takes is closed without an alert,
/// and a client outside the range is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_address_carries_tcp_udp_and_tls_routes_to_their_backends() {
    let test = "a_gateway_address_carries_tcp_udp_and_tls_routes";
    let Some(cluster) = Cluster::lock(test).await else {
        return;
    };
    let Some(mut lab) = Lab::new(test) else {
        return;
    };
    let _installed = cluster.install_with_gateway();
    install_gateway_crds(&cluster);
    let client = cluster.client().await;
    let dir = lab.dir().to_path_buf();
    let peer = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/peer.py");

    // The lab: one node, a client inside the source range and one outside,
    // two hosts answering TCP and UDP (peer.py), two TLS servers (nginx).
    let switch = lab.switch();
    let node_ns = lab.plug_nodes(&switch, "10.77.0", 1).remove(0);
    let node = format!("{}-node-1", unique("gw"));
    let client_ns = lab.namespace("client");
    lab.plug(&switch, &client_ns, "pc", &[&format!("{CLIENT}/24")]);
    let outsider_ns = lab.namespace("out");
    lab.plug(&switch, &outsider_ns, "po", &["10.77.0.60/24"]);
    for (short, address) in [("ha", "10.77.0.21"), ("hb", "10.77.0.22")] {
        let ns = lab.namespace(short);
        lab.plug(
            &switch,
            &ns,
            &format!("p{short}"),
            &[&format!("{address}/24")],
        );
        let log = dir.join(format!("{short}.log"));
        lab.spawn(&ns, "python3", &[peer, "serve", address, "15432"], &log);
    }
    for (short, address, name) in [
        ("ta", "10.77.0.31", "a.example.com"),
        ("tb", "10.77.0.32", "b.example.com"),
    ] {
        let ns = lab.namespace(short);
        lab.plug(
            &switch,
            &ns,
            &format!("p{short}"),
            &[&format!("{address}/24")],
        );
        let (key, cert) = (
            dir.join(format!("{short}.key")),
            dir.join(format!("{short}.crt")),
        );
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes",
                "-days",
                "1",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl req");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        lab.nginx(
            &ns,
            short,
            &format!(
                "stream {{ server {{ listen {address}:8443 ssl proxy_protocol;\n\
                 ssl_certificate {}; ssl_certificate_key {};\n\
                 return \"backend={short} client=$proxy_protocol_addr sni=$ssl_server_name\\n\"; }} }}\n",
                cert.display(),
                key.display()
            ),
        );
    }

    // The controller, with its ServiceAccount; it makes the gossip Secret.
    let controller_kubeconfig =
        cluster.service_account_kubeconfig("ironlb-system", "ironlb-controller", &dir, None);
    let controller = ControllerProcess::spawn(
        &controller_kubeconfig,
        &dir,
        "gw-ctl",
        &["--default-class=false"],
    );
    let secret = gossip_secret(&client).await;

    // The cluster's side: the node, a pool and advertisement, the backend
    // Services with their endpoints, the class, the Gateway and its routes.
    let _node = Made::new(&cluster, "node", &node);
    create_node(&client, &node, "10.77.0.11").await;
    let ns = Made::namespace(&cluster, &client, &unique("gw-lab")).await;
    let pool_name = unique("gw-lab");
    let ad_name = unique("gw-lab");
    let _pool = Made::new(&cluster, "ipaddresspools.ironlb.dev", &pool_name);
    let _ad = Made::new(&cluster, "l2advertisements.ironlb.dev", &ad_name);
    announced_pool(&client, &pool_name, &ad_name, &[VIP]).await;
    let class = unique("gw-lab");
    let _class = Made::new(&cluster, "gatewayclass", &class);
    let n = &ns.name;
    let mut yaml = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: {class}}}
spec: {{controllerName: ironlb.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: {n}}}
spec:
  gatewayClassName: {class}
  addresses: [{{type: IPAddress, value: {VIP}}}]
  infrastructure:
    annotations:
      ironlb.dev/address-pool: {pool_name}
      ironlb.dev/proxy-protocol: v2
      service.beta.kubernetes.io/load-balancer-source-ranges: 10.77.0.0/28
  listeners:
    - {{name: postgres, port: 5432, protocol: TCP}}
    - {{name: dns, port: 53, protocol: UDP}}
    - {{name: tls, port: 443, protocol: TLS, tls: {{mode: Passthrough}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {{name: pg, namespace: {n}}}
spec:
  parentRefs: [{{name: edge, sectionName: postgres}}]
  rules: [{{backendRefs: [{{name: pg-a, port: 5432, weight: 80}}, {{name: pg-b, port: 5432, weight: 20}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: UDPRoute
metadata: {{name: dns, namespace: {n}}}
spec:
  parentRefs: [{{name: edge, sectionName: dns}}]
  rules: [{{backendRefs: [{{name: dns-a, port: 53}}, {{name: dns-b, port: 53}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: a, namespace: {n}}}
spec:
  parentRefs: [{{name: edge, sectionName: tls}}]
  hostnames: [a.example.com]
  rules: [{{backendRefs: [{{name: tls-a, port: 443}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: b, namespace: {n}}}
spec:
  parentRefs: [{{name: edge, sectionName: tls}}]
  hostnames: ["*.example.com"]
  rules: [{{backendRefs: [{{name: tls-b, port: 443}}]}}]
"#
    );
    for (service, port, protocol, target, address) in [
        ("pg-a", 5432, "TCP", 15432, "10.77.0.21"),
        ("pg-b", 5432, "TCP", 15432, "10.77.0.22"),
        ("dns-a", 53, "UDP", 15432, "10.77.0.21"),
        ("dns-b", 53, "UDP", 15432, "10.77.0.22"),
        ("tls-a", 443, "TCP", 8443, "10.77.0.31"),
        ("tls-b", 443, "TCP", 8443, "10.77.0.32"),
    ] {
        yaml.push_str(&format!(
            r#"---
apiVersion: v1
kind: Service
metadata: {{name: {service}, namespace: {n}}}
spec: {{ports: [{{name: app, port: {port}, protocol: {protocol}, targetPort: {target}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {service}-1
  namespace: {n}
  labels: {{kubernetes.io/service-name: {service}, endpointslice.kubernetes.io/managed-by: ironlb-e2e}}
addressType: IPv4
ports: [{{name: app, port: {target}, protocol: {protocol}}}]
endpoints: [{{addresses: [{address}], nodeName: {node}, conditions: {{ready: true}}}}]
"#
        ));
    }
    let manifest = dir.join("gateway.yaml");
    std::fs::write(&manifest, yaml).expect("write manifest");
    cluster.kubectl_ok(&["apply", "-f", manifest.to_str().expect("utf-8 path")]);

    // The speaker: its ServiceAccount (a token bound to a Pod on its node),
    // the API server through a relay.
    let speaker_kubeconfig = cluster.speaker_kubeconfig(&node, &dir, None);
    let secret_file = gossip_secret_file(&dir, &secret);
    let api = cluster.server_addr();
    let relay = relay(&node_ns, api, api);
    spawn_speaker(
        &mut lab,
        &node_ns,
        &node,
        "10.77.0.11",
        &speaker_kubeconfig,
        &secret_file,
        &[],
        &dir.join("speaker.log"),
        true,
    );
    let logs = || {
        format!(
            "--- controller\n{}\n--- speaker\n{}",
            controller.log(),
            std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default()
        )
    };
    let run = |ns: &str, args: &[&str]| -> String {
        let mut cmd = vec!["python3", peer];
        cmd.extend_from_slice(args);
        lab.exec_ok(ns, &cmd).trim().to_string()
    };

    // The Gateway is programmed at the address it asked for.
    let gateway = || {
        let out = cluster.kubectl(&["get", "gateway", "-n", n, "edge", "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    wait_for("the Gateway programmed", PATIENCE, || async {
        let g = gateway();
        let programmed = g["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Programmed" && c["status"] == "True");
        (programmed && g["status"]["addresses"][0]["value"] == VIP).then_some(())
    })
    .await;
    let g = gateway();
    for listener in g["status"]["listeners"].as_array().expect("listeners") {
        let programmed = listener["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Programmed" && c["status"] == "True");
        assert!(programmed, "{listener}");
    }

    // TCP: answered once the speaker forwards; then 1,000 connections.
    let started = Instant::now();
    loop {
        let out = run(&client_ns, &["tcp", VIP, "5432", "hello"]);
        if out.contains("at=") {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "5432 never answered (last: {out})\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let spread = run(&client_ns, &["spread", VIP, "5432", "1000"]);
    let count = |text: &str, key: &str| -> i64 {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (a, b) = (count(&spread, "10.77.0.21"), count(&spread, "10.77.0.22"));
    eprintln!("e2e gateway: weights 80/20 over 1000 connections: {spread}");
    assert_eq!(count(&spread, "failed"), 0, "{spread}");
    assert!((a - 800).abs() <= 50 && (b - 200).abs() <= 50, "{spread}");

    // The source range: the outsider is turned away.
    let outside = run(&outsider_ns, &["tcp", VIP, "5432", "hello"]);
    assert!(!outside.contains("at="), "outside the range: {outside}");

    // UDP: every flow keeps its backend; flows go to both.
    let flows = run(&client_ns, &["flows", VIP, "53", "20", "5"]);
    eprintln!("e2e gateway: UDP flows: {flows}");
    assert_eq!(count(&flows, "sticky"), 20, "{flows}");
    assert!(
        count(&flows, "10.77.0.21") > 0 && count(&flows, "10.77.0.22") > 0,
        "{flows}"
    );

    // TLS passthrough: the exact name beats the wildcard, a name under the
    // wildcard goes to its route, nginx sees the client in PROXY v2.
    let tls = |name: &str| -> String {
        let out = lab.exec(
            &client_ns,
            &[
                "timeout",
                "10",
                "openssl",
                "s_client",
                "-connect",
                &format!("{VIP}:443"),
                "-servername",
                name,
                "-ign_eof",
            ],
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    for (name, backend) in [
        ("a.example.com", "ta"),
        ("b.example.com", "tb"),
        ("x.example.com", "tb"),
    ] {
        let out = tls(name);
        let cn = if backend == "ta" {
            "a.example.com"
        } else {
            "b.example.com"
        };
        assert!(out.contains(&format!("CN = {cn}")), "{name}: {out}");
        assert!(
            out.contains(&format!("backend={backend} client={CLIENT} sni={name}")),
            "{name}: {out}"
        );
    }
    // A name no route takes: the connection closes during the handshake,
    // without an alert.
    let refused = tls("db.other.org");
    assert!(
        refused.contains("no peer certificate available") && !refused.contains("alert"),
        "{refused}"
    );
    let metrics = lab.exec_ok(
        &node_ns,
        &[
            "python3",
            "-c",
            "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9121/metrics').read().decode())",
        ],
    );
    assert!(
        metrics.lines().any(|l| l.contains("refused")
            && l.contains("reason=\"no_route\"")
            && !l.ends_with(" 0")),
        "no_route counted:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("refused"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    relay.abort();
}

/// What a kubectl run said, stdout and stderr, and whether it succeeded.
fn said(out: &std::process::Output) -> (bool, String) {
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `curl http://URL` from `ns`: the body, or the error.
fn curl(lab: &Lab, ns: &str, url: &str) -> String {
    let (_, text) = said(&lab.exec(ns, &["curl", "-sS", "--max-time", "2", url]));
    text.trim().to_string()
}

/// Asks `url` from the client a few times over `seconds`: none of the
/// answers may be the secret backend's.
fn never_the_secret(lab: &Lab, ns: &str, url: &str, what: &str) {
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let answer = curl(lab, ns, url);
        assert!(
            !answer.contains("secret="),
            "{what}: {url} answered {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A tenant who holds only `edit` in its namespace (and may write Gateway
/// API objects there, as a platform team would let it) tries every way of
/// reaching past it, on the real API server with `deploy/`'s RBAC and
/// policies and the Gateway feature on, with a real speaker in a node
/// namespace forwarding: a forged Gateway Service with a hand-written route
/// table (without the Gateway API CRDs, then with a real Gateway's uid of
/// another class), a route to another namespace's backend without a
/// ReferenceGrant, joining the team's shared address by key and by address,
/// reading the team's names or key from events, an address from a pool kept
/// for the team, and setting the pool record. Each is refused or has no
/// effect; a ReferenceGrant the team writes opens the backend (so the
/// refusal was the rule, not a broken path), and the team's own Service
/// answers throughout. Then the components' own tokens: a speaker cannot
/// write another node's report, and the controller cannot touch a Service it
/// does not own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_stay_in_their_namespace() {
    let test = "tenants_stay_in_their_namespace";
    let Some(cluster) = Cluster::lock(test).await else {
        return;
    };
    let Some(mut lab) = Lab::new(test) else {
        return;
    };
    let gateway_api = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/gateway-api/v1.6.1");
    // Without the Gateway API CRDs first, as the default install runs; only
    // on the local control plane, where removing them deletes nobody's
    // Gateways.
    let without_crds = std::env::var_os("IRONLB_K8S_DIR").is_some();
    if without_crds {
        cluster.kubectl_ok(&[
            "delete",
            "--ignore-not-found",
            "--wait=true",
            "-f",
            gateway_api,
        ]);
    } else {
        eprintln!(
            "e2e: not the local control plane: the forged Service is tried with the Gateway API CRDs installed only"
        );
        install_gateway_crds(&cluster);
    }
    let _installed = cluster.install_with_gateway();
    let client = cluster.client().await;
    let dir = lab.dir().to_path_buf();

    // The lab: one node, a client, the team's database (nginx reading PROXY
    // v2) and its internal secret service (plain nginx).
    let switch = lab.switch();
    let node_ns = lab.plug_nodes(&switch, "10.77.0", 1).remove(0);
    let node = format!("{}-node-1", unique("tenancy"));
    let client_ns = lab.namespace("client");
    lab.plug(&switch, &client_ns, "pc", &[&format!("{CLIENT}/24")]);
    nginx_backend(&mut lab, &switch);
    let secret_ns = lab.namespace("secret");
    lab.plug(&switch, &secret_ns, "ps", &["10.77.0.51/24"]);
    let temp = lab.nginx_temp_paths("secret");
    lab.nginx(
        &secret_ns,
        "secret",
        &format!(
            "http {{\n{temp}  access_log off;\n  server {{ listen 10.77.0.51:8080;\n\
               location / {{ return 200 \"secret=$remote_addr\\n\"; }} }}\n}}\n"
        ),
    );

    // ironlb, with its ServiceAccounts: the controller, and the speaker with
    // a token bound to a Pod on its node.
    let controller_kubeconfig =
        cluster.service_account_kubeconfig("ironlb-system", "ironlb-controller", &dir, None);
    let controller = ControllerProcess::spawn(
        &controller_kubeconfig,
        &dir,
        "tenancy-ctl",
        &["--default-class=false"],
    );
    let secret = gossip_secret(&client).await;
    let _node = Made::new(&cluster, "node", &node);
    create_node(&client, &node, "10.77.0.11").await;
    let pool_name = unique("tenancy");
    let ad_name = unique("tenancy");
    let _pool = Made::new(&cluster, "ipaddresspools.ironlb.dev", &pool_name);
    let _ad = Made::new(&cluster, "l2advertisements.ironlb.dev", &ad_name);
    create_pool(&client, pool(&pool_name, &["10.77.0.100-10.77.0.104"])).await;
    let ad = L2Advertisement::new(
        &ad_name,
        L2AdvertisementSpec {
            ip_address_pools: vec![pool_name.clone()],
            interfaces: vec!["eth0".into()],
            ..Default::default()
        },
    );
    Api::<L2Advertisement>::all(client.clone())
        .create(&PostParams::default(), &ad)
        .await
        .expect("create L2Advertisement");
    let secret_file = gossip_secret_file(&dir, &secret);
    let api = cluster.server_addr();
    let relay = relay(&node_ns, api, api);
    let speaker_kubeconfig = cluster.speaker_kubeconfig(&node, &dir, None);
    spawn_speaker(
        &mut lab,
        &node_ns,
        &node,
        "10.77.0.11",
        &speaker_kubeconfig,
        &secret_file,
        &[],
        &dir.join("speaker.log"),
        true,
    );
    let logs = || {
        format!(
            "--- controller\n{}\n--- speaker\n{}",
            controller.log(),
            std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default()
        )
    };

    // The team: its database on the shared address with a sharing key, and
    // an internal Service no LAN client may reach.
    let team = Made::namespace(&cluster, &client, &unique("team")).await;
    let t = team.name.as_str();
    let db = Svc::lb(t, "db")
        .annotation(ironlb::api::annotations::ALLOW_SHARED_IP, "team-secret-key")
        .annotation(ironlb::api::annotations::LOAD_BALANCER_IPS, VIP);
    nginx_service(&client, t, db, &node).await;
    let internal = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: secret-db, namespace: {t}}}\n\
         spec: {{ports: [{{port: 8080, protocol: TCP}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: secret-db-1, namespace: {t}, labels: {{kubernetes.io/service-name: secret-db, \
         endpointslice.kubernetes.io/managed-by: ironlb-e2e}}}}\naddressType: IPv4\n\
         ports: [{{port: 8080, protocol: TCP}}]\n\
         endpoints: [{{addresses: [10.77.0.51], nodeName: {node}, conditions: {{ready: true}}}}]\n"
    );
    let manifest = dir.join("team.yaml");
    std::fs::write(&manifest, internal).expect("write the team's objects");
    cluster.kubectl_ok(&["apply", "-f", manifest.to_str().expect("utf-8 path")]);
    wait_fetch(
        &lab,
        &client_ns,
        "the team's database through its address",
        &logs,
    );

    // The tenant: edit in its namespace, and the Gateway API kinds there.
    let tenant = Made::namespace(&cluster, &client, &unique("tenant")).await;
    let n = tenant.name.as_str();
    cluster.kubectl_ok(&["create", "serviceaccount", "tenant", "-n", n]);
    cluster.kubectl_ok(&[
        "create",
        "rolebinding",
        "tenant-edit",
        "-n",
        n,
        "--clusterrole=edit",
        &format!("--serviceaccount={n}:tenant"),
    ]);
    // A Role written out: `kubectl create role` would look the kinds up,
    // and the Gateway API is not installed yet.
    let role = dir.join("tenant-role.yaml");
    std::fs::write(
        &role,
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: gateway-api, namespace: {n}}}\n\
             rules: [{{apiGroups: [gateway.networking.k8s.io], resources: [gateways, tcproutes, referencegrants], \
             verbs: [\"*\"]}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: tenant-gateway-api, namespace: {n}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: gateway-api}}\n\
             subjects: [{{kind: ServiceAccount, name: tenant, namespace: {n}}}]\n"
        ),
    )
    .expect("write the tenant's Role");
    cluster.kubectl_ok(&["apply", "-f", role.to_str().expect("utf-8 path")]);
    let tenant_kubeconfig = cluster.service_account_kubeconfig(n, "tenant", &dir, None);
    let as_tenant = |args: &[&str]| said(&cluster.kubectl_as(&tenant_kubeconfig, args));
    let apply_as_tenant = |name: &str, yaml: String| {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).expect("write the tenant's manifest");
        as_tenant(&["apply", "-f", path.to_str().expect("utf-8 path")])
    };

    // The team's address answers throughout: a client asks every 100 ms.
    let poll_log = dir.join("poll.log");
    lab.spawn(
        &client_ns,
        "bash",
        &[
            "-c",
            &format!(
                "while :; do if curl -s --max-time 1 http://{VIP}/ | grep -q client=; \
                 then echo ok; else echo \"failed at $(date +%T.%N)\"; fi; sleep 0.1; done"
            ),
        ],
        &poll_log,
    );
    let address_of = |ns: &str, name: &str| {
        let (client, ns, name) = (client.clone(), ns.to_string(), name.to_string());
        async move {
            let s = Api::<Service>::namespaced(client, &ns)
                .get(&name)
                .await
                .ok()?;
            ips_of(&s).into_iter().next()
        }
    };
    let forged = |uid: &str| tenancy::forged_gateway_service(n, t, uid, Some(LOAD_BALANCER_CLASS));
    let forged_name = ironlb::gateway::service_name("edge");

    // 1. A forged Gateway Service, with no Gateway API at all.
    if without_crds {
        // The garbage collector still knows the Gateway kind for a while
        // after the CRDs went (it would delete the Service for its missing
        // owner); once it forgets, the Service stays, as on a cluster that
        // never had the CRDs.
        let deadline = Instant::now() + 3 * PATIENCE;
        let ip = loop {
            let (ok, text) =
                apply_as_tenant("forged", forged("7d0b5e3c-0000-4000-8000-000000000001"));
            assert!(ok, "the tenant may write Services: {text}");
            tokio::time::sleep(Duration::from_secs(3)).await;
            if let Some(ip) = address_of(n, &forged_name).await {
                break ip;
            }
            assert!(
                Instant::now() < deadline,
                "the forged Service never kept an address:\n{}",
                logs()
            );
        };
        wait_for("the forged Service announced", PATIENCE, || async {
            let reports = Api::<ServiceL2Status>::namespaced(client.clone(), n);
            let list = reports.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|r| r.spec.service == forged_name)
                .then_some(())
        })
        .await;
        never_the_secret(
            &lab,
            &client_ns,
            &format!("http://{ip}:8080/"),
            "a forged program, no CRDs",
        );
        assert_eq!(
            address_of(n, &forged_name).await,
            Some(ip),
            "the forged Service stayed while it was tried"
        );
        as_tenant(&["delete", "service", &forged_name, "-n", n]);
    }

    // 2. The same, owned by a real Gateway of another class.
    install_gateway_crds(&cluster);
    let other_class = unique("other");
    let ironlb_class = unique("ironlb");
    let _classes = [
        Made::new(&cluster, "gatewayclass", &other_class),
        Made::new(&cluster, "gatewayclass", &ironlb_class),
    ];
    let classes = dir.join("classes.yaml");
    std::fs::write(
        &classes,
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: {other_class}}}\n\
             spec: {{controllerName: example.com/other}}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: {ironlb_class}}}\n\
             spec: {{controllerName: ironlb.dev/gateway-controller}}\n"
        ),
    )
    .expect("write the classes");
    cluster.kubectl_ok(&["apply", "-f", classes.to_str().expect("utf-8 path")]);
    let (ok, text) = apply_as_tenant("other-gateway", tenancy::gateway(n, "edge", &other_class));
    assert!(ok, "{text}");
    let uid = cluster.kubectl_ok(&[
        "get",
        "gateway",
        "edge",
        "-n",
        n,
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let (ok, text) = apply_as_tenant("forged-with-uid", forged(uid.trim()));
    assert!(ok, "{text}");
    let ip = wait_for(
        "the forged Service's address, another class",
        PATIENCE,
        || address_of(n, &forged_name),
    )
    .await;
    never_the_secret(
        &lab,
        &client_ns,
        &format!("http://{ip}:8080/"),
        "a forged program, another class's Gateway",
    );
    as_tenant(&["delete", "service", &forged_name, "-n", n]);
    as_tenant(&["delete", "gateway", "edge", "-n", n]);

    // 3. A route of the tenant's own ironlb Gateway to the team's internal
    // Service, without a ReferenceGrant there.
    let steal = tenancy::steal_route(n, t, &ironlb_class);
    let (ok, text) = apply_as_tenant("steal", steal);
    assert!(ok, "{text}");
    let reason = wait_for("the route's RefNotPermitted", PATIENCE, || async {
        let (_, json) = as_tenant(&["get", "tcproute", "steal", "-n", n, "-o", "json"]);
        let r: serde_json::Value = serde_json::from_str(&json).ok()?;
        let conditions = r["status"]["parents"][0]["conditions"].as_array()?.clone();
        conditions
            .iter()
            .find(|c| c["type"] == "ResolvedRefs")
            .map(|c| c["reason"].as_str().unwrap_or_default().to_string())
    })
    .await;
    assert_eq!(reason, "RefNotPermitted");
    let gw_ip = wait_for("the tenant Gateway's address", PATIENCE, || {
        address_of(n, &ironlb::gateway::service_name("gw"))
    })
    .await;
    let gw_url = format!("http://{gw_ip}:8080/");
    never_the_secret(
        &lab,
        &client_ns,
        &gw_url,
        "a route without a ReferenceGrant",
    );
    let grant = tenancy::reference_grant(t, n);
    let (ok, text) = apply_as_tenant("grant", grant.clone());
    assert!(
        !ok && text.contains("forbidden"),
        "the tenant cannot grant itself: {text}"
    );
    // The team grants it: the same path now reaches the backend.
    let grant_path = dir.join("team-grant.yaml");
    std::fs::write(&grant_path, grant).expect("write the grant");
    cluster.kubectl_ok(&["apply", "-f", grant_path.to_str().expect("utf-8 path")]);
    wait_for(
        "the granted route to reach the backend",
        PATIENCE,
        || async {
            curl(&lab, &client_ns, &gw_url)
                .contains("secret=")
                .then_some(())
        },
    )
    .await;
    cluster.kubectl_ok(&["delete", "-f", grant_path.to_str().expect("utf-8 path")]);
    wait_for(
        "the grant's removal to close the route",
        PATIENCE,
        || async { (!curl(&lab, &client_ns, &gw_url).contains("secret=")).then_some(()) },
    )
    .await;
    never_the_secret(&lab, &client_ns, &gw_url, "the grant withdrawn");

    // 4. Joining the team's shared address: by key and address, by address
    // alone, by key alone.
    let squat = |name: &str, annotations: &str, port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {n}\n  annotations: {{{annotations}}}\n\
             spec:\n  type: LoadBalancer\n  loadBalancerClass: {LOAD_BALANCER_CLASS}\n  externalTrafficPolicy: Local\n  \
             selector: {{app: db}}\n  ports: [{{port: {port}, protocol: TCP}}]\n"
        )
    };
    let key = "ironlb.dev/allow-shared-ip: team-secret-key";
    let ips = format!("ironlb.dev/load-balancer-ips: {VIP}");
    for (name, annotations, port) in [
        ("squat", format!("{key}, {ips}"), 9999),
        ("squat-ip", ips.clone(), 9998),
        ("squat-key", key.to_string(), 9997),
    ] {
        let (ok, text) = apply_as_tenant(name, squat(name, &annotations, port));
        assert!(ok, "{text}");
    }
    for name in ["squat", "squat-ip"] {
        let note = wait_for_event(&client, n, name, "AddressInUse").await;
        assert!(
            note.contains(&format!("{VIP} is held by a Service in another namespace")),
            "{name}: {note}"
        );
        assert_eq!(address_of(n, name).await, None, "{name} has no address");
    }
    let own = wait_for("squat-key's own address", PATIENCE, || {
        address_of(n, "squat-key")
    })
    .await;
    assert_ne!(own, VIP, "the key alone does not open the team's address");

    // 5. Nothing the tenant can read names the team's objects or key, and it
    // cannot read the team's events.
    let (ok, events) = as_tenant(&["get", "events", "-n", n, "-o", "json"]);
    assert!(ok, "{events}");
    for secret in [
        format!("{t}/"),
        "team-secret-key".into(),
        "secret-db".into(),
    ] {
        assert!(
            !events.contains(&secret),
            "the tenant's events tell {secret:?}:\n{events}"
        );
    }
    let (ok, text) = as_tenant(&["get", "events", "-n", t]);
    assert!(!ok && text.contains("forbidden"), "{text}");

    // 6. An address from a pool kept for the team: by pool, by address.
    let kept = unique("team-only");
    let _kept = Made::new(&cluster, "ipaddresspools.ironlb.dev", &kept);
    let mut kept_pool = pool(&kept, &["10.77.0.110"]);
    kept_pool.spec.auto_assign = false;
    kept_pool.spec.service_allocation = Some(ironlb::api::ServiceAllocation {
        namespaces: vec![t.to_string()],
        ..Default::default()
    });
    create_pool(&client, kept_pool).await;
    for (name, annotations) in [
        ("by-pool", format!("ironlb.dev/address-pool: {kept}")),
        (
            "by-ip",
            "ironlb.dev/load-balancer-ips: 10.77.0.110".to_string(),
        ),
    ] {
        let (ok, text) = apply_as_tenant(name, squat(name, &annotations, 9000));
        assert!(ok, "{text}");
        let note = wait_for_event(&client, n, name, "PoolNotAllowed").await;
        assert!(
            note.contains(&format!("IPAddressPool {kept} does not serve this Service")),
            "{name}: {note}"
        );
        assert_eq!(address_of(n, name).await, None, "{name} has no address");
    }

    // 7. The pool record is the controller's; EndpointSlices are nobody's
    // in a tenant's namespace.
    let (ok, text) = as_tenant(&[
        "annotate",
        "service",
        "squat-key",
        "-n",
        n,
        &format!("ironlb.dev/ip-allocated-from-pool={kept}"),
        "--overwrite",
    ]);
    assert!(
        !ok && text.contains("ironlb-pool-record-by-controller"),
        "{text}"
    );
    let (ok, text) = as_tenant(&["auth", "can-i", "create", "endpointslices", "-n", n]);
    assert!(!ok && text.trim() == "no", "{text}");

    // The components' own tokens. The speaker, bound to its node, writes its
    // own node's reports and no other node's.
    let own_report = format!("db-{node}");
    let (ok, text) = said(&cluster.kubectl_as(
        &speaker_kubeconfig,
        &[
            "annotate",
            "servicel2statuses.ironlb.dev",
            &own_report,
            "-n",
            t,
            "e2e=own",
        ],
    ));
    assert!(ok, "its own node's report: {text}");
    let forged_report = dir.join("forged-report.yaml");
    std::fs::write(
        &forged_report,
        format!(
            "apiVersion: ironlb.dev/v1alpha1\nkind: ServiceL2Status\nmetadata:\n  name: ghost-elsewhere\n  namespace: {t}\n  \
             labels: {{ironlb.dev/node: elsewhere, ironlb.dev/service-name: ghost}}\n\
             spec: {{service: ghost, node: elsewhere, addresses: [10.77.0.104], interfaces: [eth0]}}\n"
        ),
    )
    .expect("write the report");
    let forged_report = forged_report.to_str().expect("utf-8 path");
    let (ok, text) =
        said(&cluster.kubectl_as(&speaker_kubeconfig, &["create", "-f", forged_report]));
    assert!(
        !ok && text.contains("ironlb-speaker-writes-own-node"),
        "{text}"
    );
    cluster.kubectl_ok(&["create", "-f", forged_report]);
    for args in [
        vec![
            "annotate",
            "servicel2statuses.ironlb.dev",
            "ghost-elsewhere",
            "-n",
            t,
            "e2e=taken",
        ],
        vec![
            "delete",
            "servicel2statuses.ironlb.dev",
            "ghost-elsewhere",
            "-n",
            t,
        ],
    ] {
        let (ok, text) = said(&cluster.kubectl_as(&speaker_kubeconfig, &args));
        assert!(
            !ok && text.contains("ironlb-speaker-writes-own-node"),
            "{args:?}: {text}"
        );
    }
    // The controller changes only the pool record of a Service it does not
    // own, and deletes none.
    for args in [
        vec!["label", "service", "db", "-n", t, "e2e=controller"],
        vec!["delete", "service", "db", "-n", t],
    ] {
        let (ok, text) = said(&cluster.kubectl_as(&controller_kubeconfig, &args));
        assert!(
            !ok && text.contains("ironlb-controller-owned-services"),
            "{args:?}: {text}"
        );
    }

    // The team's address answered every time it was asked.
    std::thread::sleep(Duration::from_millis(500));
    let polled = std::fs::read_to_string(&poll_log).unwrap_or_default();
    let answered = polled.lines().filter(|l| *l == "ok").count();
    let failed: Vec<&str> = polled.lines().filter(|l| l.starts_with("failed")).collect();
    eprintln!(
        "e2e: the team's address answered {answered} of {} polls",
        answered + failed.len()
    );
    assert!(answered > 50, "polled {answered} times:\n{polled}");
    assert!(
        failed.is_empty(),
        "the team's address did not answer: {failed:?}\n{}",
        logs()
    );
    relay.abort();
}

/// `ironlb status` as a kubectl plugin: `kubectl ironlb status` runs the
/// binary installed as `kubectl-ironlb` on the PATH, with kubectl's
/// environment (KUBECONFIG).
#[tokio::test]
async fn ironlb_status_runs_as_a_kubectl_plugin() {
    let Some(cluster) = Cluster::lock("ironlb_status_runs_as_a_kubectl_plugin").await else {
        return;
    };
    let _installed = cluster.install();
    let client = cluster.client().await;
    let name = unique("plugin");
    let _pool = Made::new(&cluster, "ipaddresspools.ironlb.dev", &name);
    create_pool(&client, pool(&name, &["198.51.100.200/30"])).await;
    let dir = ScratchDir::new("e2e-plugin");
    let plugin = dir.0.join("kubectl-ironlb");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ironlb"), &plugin).expect("link the plugin");
    let path = format!(
        "{}:{}",
        dir.0.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let kubectl = std::env::var_os("IRONLB_K8S_KUBECTL").unwrap_or_else(|| "kubectl".into());
    let out = std::process::Command::new(kubectl)
        .args(["ironlb", "status"])
        .env("PATH", path)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .output()
        .expect("kubectl");
    let (ok, text) = said(&out);
    assert!(ok, "{text}");
    assert!(
        text.contains(&name) && text.contains("198.51.100.200/30"),
        "{text}"
    );
}

/// An upgrade as a user does it: the previous release's `deploy/`
/// (`tests/upgrade/previous`) with pools and Services, then today's applied
/// over it. It applies without a warning, the stored objects stay valid (a
/// change to each is accepted), and a controller of the new install takes
/// over from the old one's: no address moves and no Service status is
/// written again.
#[tokio::test]
async fn an_upgrade_from_the_previous_manifests_moves_nothing() {
    let test = "an_upgrade_from_the_previous_manifests_moves_nothing";
    let Some(cluster) = Cluster::lock(test).await else {
        return;
    };
    let previous = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/upgrade/previous");
    cluster.kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-k",
        previous,
    ]);
    let mut installed = cluster.install_previous(previous);
    let client = cluster.client().await;
    let dir = ScratchDir::new("e2e-upgrade");
    let ns = Made::namespace(&cluster, &client, &unique("upgrade")).await;
    let pool_name = unique("upgrade");
    let _pool = Made::new(&cluster, "ipaddresspools.ironlb.dev", &pool_name);
    create_pool(&client, pool(&pool_name, &["198.51.100.64/29"])).await;
    for name in ["a", "b", "c"] {
        let svc = Svc::lb(&ns.name, name).class(LOAD_BALANCER_CLASS);
        create_service(&client, svc.build()).await;
    }
    let addresses = || async {
        let list = Api::<Service>::namespaced(client.clone(), &ns.name)
            .list(&Default::default())
            .await
            .ok()?;
        let all: BTreeMap<String, (Vec<String>, Option<String>)> = list
            .items
            .iter()
            .map(|s| {
                (
                    s.metadata.name.clone().unwrap_or_default(),
                    (ips_of(s), s.metadata.resource_version.clone()),
                )
            })
            .collect();
        (all.len() == 3 && all.values().all(|(ips, _)| ips.len() == 1)).then_some(all)
    };
    let old_kubeconfig =
        cluster.service_account_kubeconfig("ironlb-system", "ironlb-controller", &dir.0, None);
    let old = ControllerProcess::spawn(
        &old_kubeconfig,
        &dir.0,
        "upgrade-old",
        &["--default-class=false"],
    );
    let before = wait_for("addresses from the old install", PATIENCE, addresses).await;
    let recorded = wait_for("the pool record on every Service", PATIENCE, || async {
        let list = Api::<Service>::namespaced(client.clone(), &ns.name)
            .list(&Default::default())
            .await
            .ok()?;
        let all: BTreeMap<String, String> = list
            .items
            .iter()
            .filter_map(|s| {
                let pool = s
                    .metadata
                    .annotations
                    .as_ref()?
                    .get(ironlb::api::annotations::ALLOCATED_FROM_POOL)?;
                Some((s.metadata.name.clone().unwrap_or_default(), pool.clone()))
            })
            .collect();
        (all.len() == 3).then_some(all)
    })
    .await;
    let settled = wait_for("statuses to settle", PATIENCE, addresses).await;

    // Today's deploy/, over the previous one.
    installed.upgrade();
    let pools = Api::<ironlb::api::IPAddressPool>::all(client.clone());
    let stored = pools.get(&pool_name).await.expect("the pool");
    assert!(
        stored
            .finalizers()
            .iter()
            .any(|f| f == ironlb::api::POOL_FINALIZER),
        "the pool is still protected"
    );
    // Stored objects are valid under the new schema: a change is accepted.
    cluster.kubectl_ok(&[
        "label",
        "ipaddresspools.ironlb.dev",
        &pool_name,
        "e2e-upgraded=yes",
    ]);
    // The new install's controller (its token, its RBAC and policies)
    // takes over; the old one goes.
    let new_kubeconfig =
        cluster.service_account_kubeconfig("ironlb-system", "ironlb-controller", &dir.0, None);
    let new = ControllerProcess::spawn(
        &new_kubeconfig,
        &dir.0,
        "upgrade-new",
        &["--default-class=false"],
    );
    drop(old);
    wait_for("the new controller to lead", PATIENCE, || async {
        (holder(&client).await.as_deref() == Some("upgrade-new")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = addresses().await.expect("every Service keeps an address");
    for (name, (ips, version)) in &after {
        assert_eq!(
            ips,
            &before[name].0,
            "{name}'s address moved:\n{}",
            new.log()
        );
        assert_eq!(
            version,
            &settled[name].1,
            "{name} was written again:\n{}",
            new.log()
        );
    }
    assert_eq!(recorded.len(), 3);
    drop(new);
    // The grant a release dropped goes as docs/install.md says.
    let speaker = "system:serviceaccount:ironlb-system:ironlb-speaker";
    let can = |verb: &str| {
        let out = cluster.kubectl(&[
            "auth",
            "can-i",
            verb,
            "secrets",
            "-n",
            "ironlb-system",
            "--as",
            speaker,
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        can("list"),
        "yes",
        "the previous release let speakers list Secrets"
    );
    cluster.kubectl_ok(&[
        "-n",
        "ironlb-system",
        "delete",
        "role,rolebinding",
        "ironlb-speaker",
        "--ignore-not-found",
    ]);
    assert_eq!(can("list"), "no");
}

/// Uninstalling with pools in use, as docs/install.md says: `ironlb
/// uninstall` (the controller stopped, the pools released, ironlb's
/// addresses taken off the Services), then `kubectl delete -k deploy/`,
/// within a minute; the Services stay, without an address or ironlb's
/// record.
#[tokio::test]
async fn uninstalling_with_pools_in_use_finishes_within_a_minute() {
    let test = "uninstalling_with_pools_in_use_finishes_within_a_minute";
    let Some(cluster) = Cluster::lock(test).await else {
        return;
    };
    let _installed = cluster.install();
    let client = cluster.client().await;
    let dir = ScratchDir::new("e2e-uninstall");
    let ns = Made::namespace(&cluster, &client, &unique("uninstall")).await;
    let pool_name = unique("uninstall");
    let _pool = Made::new(&cluster, "ipaddresspools.ironlb.dev", &pool_name);
    create_pool(&client, pool(&pool_name, &["198.51.100.72/30"])).await;
    create_service(
        &client,
        Svc::lb(&ns.name, "web").class(LOAD_BALANCER_CLASS).build(),
    )
    .await;
    let kubeconfig =
        cluster.service_account_kubeconfig("ironlb-system", "ironlb-controller", &dir.0, None);
    let controller = ControllerProcess::spawn(
        &kubeconfig,
        &dir.0,
        "uninstall-ctl",
        &["--default-class=false"],
    );
    let pools = Api::<ironlb::api::IPAddressPool>::all(client.clone());
    wait_for("the pool to be in use and protected", PATIENCE, || async {
        let p = pools.get(&pool_name).await.ok()?;
        (p.finalizers()
            .iter()
            .any(|f| f == ironlb::api::POOL_FINALIZER)
            && p.status?.assigned_ipv4 == 1)
            .then_some(())
    })
    .await;
    // The controller's Deployment is scaled to zero by the command; here
    // the controller is this process, which that would stop.
    drop(controller);

    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .args(["uninstall", "--kubeconfig"])
        .arg(&cluster.kubeconfig)
        .output()
        .expect("ironlb uninstall");
    let (ok, text) = said(&out);
    assert!(ok, "{text}");
    assert!(
        text.contains(&pool_name) && text.contains(&format!("{}/web", ns.name)),
        "{text}"
    );
    // Nothing of ironlb's holds a deletion any more: no pool keeps its
    // finalizer.
    let held: Vec<String> = pools
        .list(&Default::default())
        .await
        .expect("list pools")
        .items
        .iter()
        .filter(|p| {
            p.finalizers()
                .iter()
                .any(|f| f == ironlb::api::POOL_FINALIZER)
        })
        .map(|p| p.name_any())
        .collect();
    assert!(held.is_empty(), "pools still protected: {held:?}");
    let released = started.elapsed();
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    // The API server's own CRD cleanup retries with a growing back-off
    // while a CRD's storage re-initialises ("storage is (re)initializing"
    // in its log), which a control plane that has installed and removed
    // the CRDs many times meets: give it time; a finalizer left behind
    // would hang here for good.
    cluster.kubectl_ok(&["delete", "-k", deploy, "--wait=true", "--timeout=300s"]);
    let took = started.elapsed();
    eprintln!(
        "e2e: uninstall released every pool in {released:?}; `kubectl delete -k deploy/` \
         finished {took:?} after the start"
    );
    assert!(released < Duration::from_secs(60), "{released:?}");
    let web = Api::<Service>::namespaced(client.clone(), &ns.name)
        .get("web")
        .await
        .expect("the Service stays");
    assert!(ips_of(&web).is_empty(), "no address left in its status");
    assert!(
        !web.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(ironlb::api::annotations::ALLOCATED_FROM_POOL),
        "no pool record left"
    );
    let crds = cluster.kubectl_ok(&["get", "crd", "-o", "name"]);
    assert!(!crds.contains("ironlb.dev"), "{crds}");
}

/// Installs MetalLB's own CRDs (`tests/metallb/crds`, without its
/// conversion webhook); they stay, as the Gateway API CRDs do.
fn install_metallb_crds(cluster: &Cluster) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/metallb/crds");
    cluster.kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        dir.to_str().expect("utf-8 path"),
    ]);
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/ipaddresspools.metallb.io",
        "crd/l2advertisements.metallb.io",
        "crd/bgpadvertisements.metallb.io",
        "crd/bgppeers.metallb.io",
        "crd/bfdprofiles.metallb.io",
        "crd/communities.metallb.io",
    ]);
}

/// `ironlb migrate metallb` with `args`, as admin: (success, stdout, stderr).
fn migrate_cli(cluster: &Cluster, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .args(["migrate", "metallb", "--kubeconfig"])
        .arg(&cluster.kubeconfig)
        .args(args)
        .output()
        .expect("run ironlb migrate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every sample of MetalLB's `configsamples/`: MetalLB's CRDs take it, the
/// migration of the live objects has no refusal (the VRF one is skipped as
/// told), and ironlb's objects apply with `--warnings-as-errors`.
#[tokio::test]
async fn metallbs_samples_migrate_from_the_cluster_and_apply_without_warnings() {
    let Some(cluster) = Cluster::lock("metallbs_samples_migrate").await else {
        return;
    };
    let _installed = cluster.install();
    install_metallb_crds(&cluster);
    let client = cluster.client().await;
    let namespace = "metallb-system";
    let _ns = match Api::<Namespace>::all(client.clone())
        .get_opt(namespace)
        .await
    {
        Ok(Some(_)) => None,
        _ => Some(Made::namespace(&cluster, &client, namespace).await),
    };
    let dir = ScratchDir::new("e2e-migrate-samples");
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/metallb/configsamples");
    let mut files: Vec<_> = std::fs::read_dir(&samples)
        .expect("samples")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let metallb_kinds = "ipaddresspools.metallb.io,l2advertisements.metallb.io,\
         bgpadvertisements.metallb.io,bgppeers.metallb.io,bfdprofiles.metallb.io,\
         communities.metallb.io";
    for file in files {
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        // MetalLB's objects only: the deployment samples also hold an nginx
        // Deployment and Service, for a cluster with nodes.
        let text = std::fs::read_to_string(&file).expect("read sample");
        let metallb: Vec<serde_json::Value> = ironlb::migrate::parse_objects(&text, &name)
            .expect("parse")
            .into_iter()
            .filter(|o| {
                o["apiVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("metallb.io/"))
            })
            .collect();
        // Left over from a failed run, another sample's objects would be
        // migrated with this one's.
        cluster.kubectl_ok(&["delete", metallb_kinds, "--all", "-n", namespace]);
        let input = dir.0.join(format!("metallb-{name}.json"));
        std::fs::write(
            &input,
            json!({"apiVersion": "v1", "kind": "List", "items": metallb}).to_string(),
        )
        .expect("write");
        cluster.kubectl_ok(&[
            "apply",
            "--server-side",
            "-f",
            input.to_str().expect("path"),
        ]);

        let skip: &[&str] = if name == "bgppeer_with_vrf.yaml" {
            &["--skip", "BGPPeer.spec.vrf"]
        } else {
            &[]
        };
        let (ok, yaml, table) = migrate_cli(&cluster, skip);
        assert!(ok, "{name}: the live objects migrate:\n{table}");
        let output = dir.0.join(format!("ironlb-{name}"));
        std::fs::write(&output, &yaml).expect("write");
        let out = cluster.kubectl(&[
            "apply",
            "--server-side",
            "--warnings-as-errors",
            "-f",
            output.to_str().expect("path"),
        ]);
        assert!(
            out.status.success(),
            "{name}: ironlb's objects apply:\n{}\n{yaml}\n{table}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The same sample migrated from the file applies too (the API
        // server's defaults, such as disableMP, are what the live objects add).
        let (ok, from_file, table) = migrate_cli(
            &cluster,
            &[&["-f", file.to_str().expect("path")], skip].concat(),
        );
        assert!(ok, "{name}: from the file:\n{table}");
        std::fs::write(&output, &from_file).expect("write");
        cluster.kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--warnings-as-errors",
            "-f",
            output.to_str().expect("path"),
        ]);
        cluster.kubectl_ok(&[
            "delete",
            "-f",
            output.to_str().expect("path"),
            "--wait=false",
        ]);
        cluster.kubectl_ok(&["delete", metallb_kinds, "--all", "-n", namespace]);
    }
}

/// From a cluster MetalLB configured: `ironlb migrate metallb --apply`
/// writes the pool (letting the two namespaces that share an address keep
/// sharing it), the advertisement, the peer and a copy of its password
/// Secret; then ironlb's controller keeps every Service's address.
#[tokio::test]
async fn migrating_a_live_metallb_keeps_every_address() {
    let Some(cluster) = Cluster::lock("migrating_a_live_metallb").await else {
        return;
    };
    let client = cluster.client().await;
    let metallb_ns = unique("metallb");
    let (ns_a, ns_b) = (unique("dns-tcp"), unique("dns-udp"));
    let _namespaces = [
        Made::namespace(&cluster, &client, &metallb_ns).await,
        Made::namespace(&cluster, &client, &ns_a).await,
        Made::namespace(&cluster, &client, &ns_b).await,
    ];
    let (pool, peer, secret) = (unique("lan"), unique("tor"), unique("tor-password"));
    let _made = [
        Made::new(&cluster, "ipaddresspools.ironlb.dev", &pool),
        Made::new(&cluster, "l2advertisements.ironlb.dev", &pool),
        Made::new(&cluster, "bgppeers.ironlb.dev", &peer),
    ];
    let dir = ScratchDir::new("e2e-migrate-live");
    let manifest = dir.0.join("metallb.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: {pool}, namespace: {metallb_ns}}}\n\
             spec: {{addresses: [198.51.100.0/28]}}\n---\n\
             apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {{name: {pool}, namespace: {metallb_ns}}}\n---\n\
             apiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {{name: {peer}, namespace: {metallb_ns}}}\n\
             spec: {{myASN: 64512, peerASN: 64513, peerAddress: 198.51.100.254, passwordSecret: {{name: {secret}}}, \
             holdTime: 9m0s, keepaliveTime: 0s}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: {secret}, namespace: {metallb_ns}}}\n\
             type: kubernetes.io/basic-auth\nstringData: {{password: s3cret}}\n"
        ),
    )
    .expect("write");
    // Services as MetalLB left them: two namespaces share .5 with one key.
    let services = [
        (ns_a.as_str(), "dns", "198.51.100.5", "TCP", Some("dns")),
        (ns_b.as_str(), "dns", "198.51.100.5", "UDP", Some("dns")),
        (ns_a.as_str(), "web", "198.51.100.7", "TCP", None),
    ];
    for (ns, name, ip, proto, key) in services {
        let mut svc = Svc::lb(ns, name)
            .class(LOAD_BALANCER_CLASS)
            .only_port(proto, 53)
            .annotation("metallb.io/ip-allocated-from-pool", &pool);
        if let Some(key) = key {
            svc = svc.annotation("metallb.io/allow-shared-ip", key);
        }
        create_service(&client, svc.build()).await;
        let status =
            json!({"status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}});
        Api::<Service>::namespaced(client.clone(), ns)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .expect("status as MetalLB wrote it");
    }

    // ironlb comes after MetalLB wrote its Services: its admission policy
    // lets only ironlb's controller set a pool record from then on.
    let _installed = cluster.install_with(&["bgp"]);
    install_metallb_crds(&cluster);
    cluster.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        manifest.to_str().expect("path"),
    ]);
    // Other MetalLB objects of the cluster (from other tests) would be
    // migrated too: only this test's namespace may hold any.
    let (ok, applied, table) = migrate_cli(&cluster, &["--apply"]);
    assert!(ok, "migrate --apply:\n{table}");
    for expected in [
        format!("applied Secret {secret}"),
        format!("applied IPAddressPool {pool}"),
        format!("applied BGPPeer {peer}"),
        format!("applied L2Advertisement {pool}"),
    ] {
        assert!(
            applied.contains(&expected),
            "{expected} in:\n{applied}\n{table}"
        );
    }
    assert!(
        table.contains(&format!(
            "Services of namespaces {ns_a}, {ns_b} share 198.51.100.5"
        )),
        "{table}"
    );
    let _copied = Made::new(&cluster, "secret", &secret);
    let copy: Secret = Api::namespaced(client.clone(), "ironlb-system")
        .get(&secret)
        .await
        .expect("the password Secret is copied to ironlb's namespace");
    assert_eq!(copy.type_.as_deref(), Some("kubernetes.io/basic-auth"));
    assert_eq!(
        copy.data.expect("data")["password"].0,
        b"s3cret",
        "the same password"
    );
    let migrated: ironlb::api::IPAddressPool =
        Api::all(client.clone()).get(&pool).await.expect("pool");
    assert_eq!(
        migrated
            .spec
            .cross_namespace_sharing
            .expect("sharing")
            .namespaces,
        [ns_a.clone(), ns_b.clone()]
    );
    let peer_now: ironlb::api::BGPPeer = Api::all(client.clone()).get(&peer).await.expect("peer");
    assert_eq!(
        (
            peer_now.spec.hold_time.as_deref(),
            peer_now.spec.keepalive_time.as_deref()
        ),
        (Some("9m0s"), None)
    );

    // ironlb's controller, with its ServiceAccount, adopts every address.
    let kubeconfig =
        cluster.service_account_kubeconfig("ironlb-system", "ironlb-controller", &dir.0, None);
    let controller = ControllerProcess::spawn(
        &kubeconfig,
        &dir.0,
        "migrate-ctl",
        &["--default-class=false", "--gateway=false"],
    );
    for (ns, name, ip, _, _) in services {
        let api = Api::<Service>::namespaced(client.clone(), ns);
        let svc = wait_for(
            &format!("{ns}/{name} to be recorded as ironlb's"),
            PATIENCE,
            || async {
                let svc = api.get(name).await.ok()?;
                svc.annotations()
                    .contains_key(ironlb::api::annotations::ALLOCATED_FROM_POOL)
                    .then_some(svc)
            },
        )
        .await;
        let ingress = svc
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress);
        let ips: Vec<String> = ingress.into_iter().flatten().filter_map(|i| i.ip).collect();
        assert_eq!(
            ips,
            [ip],
            "{ns}/{name} keeps its address; controller log:\n{}",
            controller.log()
        );
        assert_eq!(
            svc.metadata.annotations.as_ref().expect("annotations")
                [ironlb::api::annotations::ALLOCATED_FROM_POOL],
            pool
        );
    }
}

/// What MetalLB users write by hand means the same in ironlb's CRDs: an
/// advertisement with no spec (every pool, every node), a community alias
/// in capitals, `keepaliveTime: 0s` beside a hold time.
#[tokio::test]
async fn metallbs_hand_written_forms_are_accepted() {
    let Some(cluster) = Cluster::lock("metallbs_hand_written_forms").await else {
        return;
    };
    let _installed = cluster.install();
    let name = unique("metallb-forms");
    let _made = [
        Made::new(&cluster, "l2advertisements.ironlb.dev", &name),
        Made::new(&cluster, "bgpadvertisements.ironlb.dev", &name),
        Made::new(&cluster, "communities.ironlb.dev", &name),
        Made::new(&cluster, "bgppeers.ironlb.dev", &name),
    ];
    let dir = ScratchDir::new("e2e-metallb-forms");
    let manifest = dir.0.join("forms.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: ironlb.dev/v1alpha1\nkind: L2Advertisement\nmetadata: {{name: {name}}}\n---\n\
             apiVersion: ironlb.dev/v1alpha1\nkind: BGPAdvertisement\nmetadata: {{name: {name}}}\n\
             spec: {{communities: [NO_ADVERTISE, my_alias.1]}}\n---\n\
             apiVersion: ironlb.dev/v1alpha1\nkind: Community\nmetadata: {{name: {name}}}\n\
             spec: {{communities: [{{name: NO_ADVERTISE, value: \"65535:65282\"}}]}}\n---\n\
             apiVersion: ironlb.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: {name}}}\n\
             spec: {{myASN: 64512, peerASN: 64512, peerAddress: 172.30.0.3, holdTime: 9m0s, keepaliveTime: 0s}}\n"
        ),
    )
    .expect("write");
    cluster.kubectl_ok(&[
        "apply",
        "--server-side",
        "--warnings-as-errors",
        "-f",
        manifest.to_str().expect("path"),
    ]);
    // The API server fills in the empty spec, so watchers always read one.
    let client = cluster.client().await;
    let ad: L2Advertisement = Api::all(client.clone()).get(&name).await.expect("stored");
    assert_eq!(ad.spec, L2AdvertisementSpec::default());
    let stored = cluster.kubectl_ok(&[
        "get",
        "l2advertisements.ironlb.dev",
        &name,
        "-o",
        "jsonpath={.spec}",
    ]);
    assert_eq!(stored.trim(), "{}");
    // A keepalive other than 0s still has to be shorter than the hold time.
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: ironlb.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: {name}}}\n\
             spec: {{myASN: 64512, peerASN: 64512, peerAddress: 172.30.0.3, holdTime: 9s, keepaliveTime: 9s}}\n"
        ),
    )
    .expect("write");
    let out = cluster.kubectl(&[
        "apply",
        "--server-side",
        "-f",
        manifest.to_str().expect("path"),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("keepaliveTime must be shorter than holdTime"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
