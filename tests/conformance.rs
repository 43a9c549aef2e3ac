//! The upstream Gateway API conformance tests (kubernetes-sigs/gateway-api
//! v1.6.1, `conformance/tests`) that apply to a layer-4 implementation, run
//! against ironlb on the real API server (`IRONLB_E2E_KUBECONFIG`, as the
//! other end-to-end tests) with the controller and one speaker, and with
//! their traffic steps in a network-namespace lab.
//!
//! Each test keeps upstream's manifests (`tests/conformance/`, copied with
//! their source and every change noted there) and its assertions, with
//! upstream's helpers' semantics: conditions matched by type, status and
//! reason (an empty reason matches any); listener lists compared exactly by
//! count, kinds as a subset (an expected empty list must be empty); route
//! parents by controller, group, kind, name and namespace. The echo
//! backends are lab hosts running `tests/peers/echo_basic.py`, which speaks
//! upstream's echo protocols, behind Services whose EndpointSlices point at
//! them (no kubelet runs Pods here).
//!
//! The run writes a `ConformanceReport` in upstream's format and checks it
//! against `docs/conformance-report.yaml` (regenerate with
//! `IRONLB_WRITE_DOCS=1 cargo test --test conformance`); the claimed
//! features are ironlb's `GatewayClass.status.supportedFeatures`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use ironlb::gateway::attach::{CONTROLLER_NAME, SUPPORTED_FEATURES};
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::cluster_lab::*;
use support::netns::{Lab, relay};
use support::process::ControllerProcess;
use support::*;

const INFRA: &str = "gateway-conformance-infra";
const CLASS: &str = "ironlb-conformance";
const GATEWAY_API_VERSION: &str = "v1.6.1";
/// How long a status step waits, as upstream's helpers (60 s) do.
const STEP: Duration = Duration::from_secs(60);
/// The lab: the speaker's node, the client, the backends' addresses, the pool.
const NODE_ADDRESS: &str = "10.77.0.11";
const CLIENT: &str = "10.77.0.50";
const POOL: &str = "10.77.0.100-10.77.0.139";
const USABLE: &str = "10.77.0.139";
const UNUSABLE: &str = "10.78.0.9";
const BACKEND_FIRST: u8 = 150;

type Outcome = Result<(), String>;
type Step<'a> = Pin<Box<dyn Future<Output = Outcome> + 'a>>;

/// One upstream test: its name, features, and what ironlb does with it.
struct Case {
    name: &'static str,
    features: &'static [&'static str],
    provisional: bool,
    manifest: &'static str,
    /// Why ironlb skips it, if it does (reported with the test).
    skip: Option<&'static str>,
    /// Whether upstream's profiles count it: not for a test whose point
    /// upstream is HTTP, run here on layer-4 routes instead.
    reported: bool,
}

const HTTPS: &str = "HTTPS listeners: ironlb passes TLS through, never terminates it";

/// The applicable tests, in upstream's order (alphabetical by file).
#[rustfmt::skip]
const CASES: &[Case] = &[
    case("GatewayInfrastructure", &["Gateway", "GatewayInfrastructurePropagation"], true, "gateway-infrastructure.yaml"),
    skip_case("GatewayInvalidTLSConfiguration", &["Gateway"], HTTPS),
    case("GatewayListenerUnsupportedProtocol", &["Gateway"], false, "gateway-invalid-listeners-unsupported-protocol.yaml"),
    case("GatewayInvalidParametersRef", &["Gateway"], false, "gateway-invalid-parameters-ref.yaml"),
    case("GatewayInvalidRouteKind", &["Gateway"], false, "gateway-invalid-route-kind.yaml"),
    case("GatewayModifyListeners", &["Gateway"], false, "gateway-modify-listeners.yaml"),
    case("GatewayObservedGenerationBump", &["Gateway"], false, "gateway-observed-generation-bump.yaml"),
    case("GatewayOptionalAddressValue", &["Gateway", "GatewayAddressEmpty"], true, "gateway-optional-address-value.yaml"),
    skip_case("GatewaySecretInvalidReferenceGrant", &["Gateway", "ReferenceGrant"], HTTPS),
    skip_case("GatewaySecretMissingReferenceGrant", &["Gateway", "ReferenceGrant"], HTTPS),
    skip_case("GatewaySecretReferenceGrantAllInNamespace", &["Gateway", "ReferenceGrant"], HTTPS),
    skip_case("GatewaySecretReferenceGrantSpecific", &["Gateway", "ReferenceGrant"], HTTPS),
    case("GatewayStaticAddresses", &["Gateway", "GatewayStaticAddresses"], false, "gateway-static-addresses.yaml"),
    adapted("GatewayWithAttachedRoutes", "gateway-with-attached-routes.yaml"),
    case("GatewayClassObservedGenerationBump", &["Gateway"], false, "gatewayclass-observed-generation-bump.yaml"),
    case("TCPRouteInvalidBackendRefNonexistent", &["Gateway", "TCPRoute"], true, "tcproute-invalid-backendref-nonexistent.yaml"),
    case("TCPRouteInvalidCrossNamespaceBackendRef", &["Gateway", "TCPRoute", "ReferenceGrant"], true, "tcproute-invalid-cross-namespace-backend-ref.yaml"),
    case("TCPRouteInvalidNonTCPListener", &["Gateway", "TCPRoute"], true, "tcproute-invalid-non-tcp-listener.yaml"),
    case("TCPRouteMultipleRoutesAttachment", &["Gateway", "TCPRoute"], false, "tcproute-multiple-routes-attachment.yaml"),
    case("TCPRouteParentRefAttachAll", &["Gateway", "TCPRoute"], true, "tcproute-parentref-attach-all.yaml"),
    case("TCPRouteParentRefPortAndSectionName", &["Gateway", "TCPRoute"], true, "tcproute-parentref-port-and-section-name.yaml"),
    case("TCPRouteReferenceGrant", &["Gateway", "TCPRoute", "ReferenceGrant"], true, "tcproute-reference-grant.yaml"),
    case("TCPRouteWeightedRouting", &["Gateway", "TCPRoute"], true, "tcproute-weighted-routing.yaml"),
    case("TLSRouteHostnameIntersection", &["Gateway", "TLSRoute"], false, "tlsroute-hostname-intersection.yaml"),
    case("TLSRouteInvalidBackendRefNonexistent", &["Gateway", "TLSRoute"], false, "tlsroute-invalid-backendref-nonexistent.yaml"),
    case("TLSRouteInvalidBackendRefUnknownKind", &["Gateway", "TLSRoute"], false, "tlsroute-invalid-backendref-unknown-kind.yaml"),
    case("TLSRouteInvalidNoMatchingListenerHostname", &["Gateway", "TLSRoute"], false, "tlsroute-invalid-no-matching-listener-hostname.yaml"),
    case("TLSRouteInvalidNoMatchingListener", &["Gateway", "TLSRoute"], false, "tlsroute-invalid-no-matching-listener.yaml"),
    case("TLSRouteInvalidReferenceGrant", &["Gateway", "TLSRoute", "ReferenceGrant"], false, "tlsroute-invalid-reference-grant.yaml"),
    case("TLSRouteListenerPassthroughSupportedKinds", &["Gateway", "TLSRoute"], false, "tlsroute-listener-passthrough-supported-kinds.yaml"),
    case("TLSRouteListenerTerminateNotSupported", &["Gateway", "TLSRoute"], false, "tlsroute-listener-terminate-not-supported.yaml"),
    case("TLSRouteSimpleSameNamespace", &["Gateway", "TLSRoute"], false, "tlsroute-simple-same-namespace.yaml"),
    case("UDPRouteInvalidBackendRefNonexistent", &["Gateway", "UDPRoute"], true, "udproute-invalid-backendref-nonexistent.yaml"),
    case("UDPRouteInvalidCrossNamespaceBackendRef", &["Gateway", "UDPRoute", "ReferenceGrant"], true, "udproute-invalid-cross-namespace-backend-ref.yaml"),
    case("UDPRouteMultipleRoutesAttachment", &["Gateway", "UDPRoute"], true, "udproute-multiple-routes-attachment.yaml"),
    case("UDPRouteNotAllowedByListeners", &["Gateway", "UDPRoute"], true, "udproute-not-allowed-by-listeners.yaml"),
    case("UDPRouteParentRefAttachAllListeners", &["Gateway", "UDPRoute"], true, "udproute-parentref-attach-all-listeners.yaml"),
    case("UDPRouteParentRefPortAndSectionName", &["Gateway", "UDPRoute"], true, "udproute-parentref-port-and-section-name.yaml"),
    case("UDPRouteReferenceGrant", &["Gateway", "UDPRoute", "ReferenceGrant"], true, "udproute-reference-grant.yaml"),
    case("UDPRoute", &["UDPRoute", "Gateway"], true, "udproute-simple.yaml"),
    case("UDPRouteWeightedRouting", &["Gateway", "UDPRoute"], true, "udproute-weighted-routing.yaml"),
];

const fn case(
    name: &'static str,
    features: &'static [&'static str],
    provisional: bool,
    manifest: &'static str,
) -> Case {
    Case {
        name,
        features,
        provisional,
        manifest,
        skip: None,
        reported: true,
    }
}

/// An upstream test of HTTPRoute attachment (features `Gateway`,
/// `HTTPRoute`), run with TCPRoutes and TLSRoutes instead: it must pass,
/// and no profile counts it.
const fn adapted(name: &'static str, manifest: &'static str) -> Case {
    Case {
        name,
        features: &["Gateway"],
        provisional: false,
        manifest,
        skip: None,
        reported: false,
    }
}

const fn skip_case(
    name: &'static str,
    features: &'static [&'static str],
    why: &'static str,
) -> Case {
    Case {
        name,
        features,
        provisional: false,
        manifest: "",
        skip: Some(why),
        reported: true,
    }
}

/// Everything a test reaches: the cluster, the lab and its hosts.
struct Suite<'a> {
    cluster: &'a Cluster,
    client: Client,
    lab: &'a Lab,
    client_ns: String,
    dir: PathBuf,
    /// `{BACKEND …}` placeholder → the lab address serving it.
    backends: BTreeMap<String, String>,
    /// The CA the TLS backends' certificate chains to.
    ca: PathBuf,
    /// The backends' certificate, which TLS clients trust as its own anchor.
    leaf: PathBuf,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_gateway_api_conformance() {
    let test = "upstream_gateway_api_conformance";
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

    // Leftovers of an interrupted run go first: the names are upstream's.
    for ns in namespaces() {
        cluster.kubectl(&[
            "delete",
            "namespace",
            &ns,
            "--ignore-not-found",
            "--timeout=120s",
        ]);
    }
    cluster.kubectl(&[
        "delete",
        "gatewayclass",
        CLASS,
        "gatewayclass-observed-generation-bump",
        "--ignore-not-found",
    ]);

    // The lab: the speaker's node, a client, one host holding every backend
    // address.
    let switch = lab.switch();
    let node_ns = lab.plug_nodes(&switch, "10.77.0", 1).remove(0);
    let client_ns = lab.namespace("client");
    lab.plug(&switch, &client_ns, "pc", &[&format!("{CLIENT}/24")]);
    let backends = placeholders();
    let backend_ns = lab.namespace("backends");
    let addresses: Vec<String> = (0..backends.len())
        .map(|i| format!("10.77.0.{}/24", usize::from(BACKEND_FIRST) + i))
        .collect();
    let address_refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
    lab.plug(&switch, &backend_ns, "pb", &address_refs);
    let (ca, leaf, key) = certificates(&dir);
    let echo = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/echo_basic.py");
    let mut served = BTreeMap::new();
    for (i, placeholder) in backends.iter().enumerate() {
        let ip = format!("10.77.0.{}", usize::from(BACKEND_FIRST) + i);
        let args = serve_args(placeholder, &ip, &leaf, &key);
        let mut argv = vec![echo];
        argv.extend(args.iter().map(String::as_str));
        lab.spawn(
            &backend_ns,
            "python3",
            &argv,
            &dir.join(format!("backend-{i}.log")),
        );
        served.insert(placeholder.clone(), ip);
    }

    // ironlb: the controller and one speaker, with their ServiceAccounts.
    let controller_kubeconfig =
        cluster.service_account_kubeconfig("ironlb-system", "ironlb-controller", &dir, None);
    let controller = ControllerProcess::spawn(
        &controller_kubeconfig,
        &dir,
        "conformance",
        &["--default-class=false"],
    );
    let secret = gossip_secret(&client).await;
    let node = format!("ironlb-conformance-{}-node", std::process::id());
    let _node = Deleted(&cluster, "node", node.clone());
    create_node(&client, &node, NODE_ADDRESS).await;
    let pool_name = format!("ironlb-conformance-{}", std::process::id());
    let _pool = Deleted(&cluster, "ipaddresspools.ironlb.dev", pool_name.clone());
    let _ad = Deleted(&cluster, "l2advertisements.ironlb.dev", pool_name.clone());
    announced_pool(&client, &pool_name, &pool_name, &[POOL]).await;
    let speaker_kubeconfig = cluster.speaker_kubeconfig(&node, &dir, None);
    let secret_file = gossip_secret_file(&dir, &secret);
    let api = cluster.server_addr();
    let _relay = relay(&node_ns, api, api);
    spawn_speaker(
        &mut lab,
        &node_ns,
        &node,
        NODE_ADDRESS,
        &speaker_kubeconfig,
        &secret_file,
        &[],
        &dir.join("speaker.log"),
        true,
    );

    // The class and the base objects.
    let _class = Deleted(&cluster, "gatewayclass", CLASS.to_string());
    let suite = Suite {
        cluster: &cluster,
        client: client.clone(),
        lab: &lab,
        client_ns,
        dir: dir.clone(),
        backends: served,
        ca,
        leaf,
    };
    suite.apply_text(&format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: {CLASS}}}\nspec: {{controllerName: {CONTROLLER_NAME}}}\n"
    ));
    let _namespaces: Vec<Deleted<'_>> = namespaces()
        .into_iter()
        .map(|ns| Deleted(&cluster, "namespace", ns))
        .collect();
    suite.apply("base.yaml");
    let class = suite
        .class_accepted(CLASS)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", controller.log()));
    let mut claimed: Vec<String> = class["status"]["supportedFeatures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["name"].as_str().map(String::from))
        .collect();
    claimed.sort();
    assert_eq!(
        claimed, SUPPORTED_FEATURES,
        "the class lists what ironlb claims"
    );

    let mut results = Vec::new();
    for case in CASES {
        let started = Instant::now();
        let outcome = if let Some(why) = case.skip {
            Verdict::Skipped(why)
        } else if !case.features.iter().all(|f| claimed.iter().any(|c| c == f)) {
            Verdict::NotSupported
        } else {
            suite.apply(case.manifest);
            let outcome = suite.run(case.name).await;
            suite.delete(case.manifest);
            match outcome {
                Ok(()) => Verdict::Passed,
                Err(why) => Verdict::Failed(why),
            }
        };
        eprintln!(
            "{:<45} {:<10} {:>5.1} s",
            case.name,
            outcome.word(),
            started.elapsed().as_secs_f64()
        );
        results.push((case, outcome));
    }

    let failed: Vec<String> = results
        .iter()
        .filter_map(|(c, v)| match v {
            Verdict::Failed(why) => Some(format!("{}: {why}", c.name)),
            _ => None,
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{}\n--- controller\n{}\n--- speaker\n{}",
        failed.join("\n"),
        controller.log(),
        std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default()
    );
    check_report(&report(&results, &claimed));
    drop(suite);
    drop(controller);
}

/// Deletes a cluster object (without waiting) when dropped.
struct Deleted<'a>(&'a Cluster, &'static str, String);

impl Drop for Deleted<'_> {
    fn drop(&mut self) {
        let _ = self.0.kubectl(&[
            "delete",
            self.1,
            &self.2,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}

fn namespaces() -> Vec<String> {
    ["infra", "app-backend", "web-backend"]
        .iter()
        .map(|n| format!("gateway-conformance-{n}"))
        .collect()
}

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

/// Every `{BACKEND namespace deployment service mode}` the manifests name.
fn placeholders() -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(manifest_dir()).expect("tests/conformance") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("manifest");
            let mut rest = text.as_str();
            while let Some(start) = rest.find("{BACKEND ") {
                let end = rest[start..].find('}').expect("a closed placeholder") + start;
                found.insert(rest[start..=end].to_string());
                rest = &rest[end..];
            }
        }
    }
    found
}

/// `echo_basic.py serve` arguments for a placeholder: the identity upstream's
/// Deployment gives its Pods (`<deployment>-<replicaset>-<pod>`), and the
/// ports of its mode.
fn serve_args(placeholder: &str, ip: &str, cert: &Path, key: &Path) -> Vec<String> {
    let fields: Vec<&str> = placeholder
        .trim_start_matches("{BACKEND ")
        .trim_end_matches('}')
        .split_whitespace()
        .collect();
    let [namespace, deployment, service, mode, ref ports @ ..] = fields[..] else {
        panic!("{placeholder}: expected {{BACKEND namespace deployment service mode}}");
    };
    let mut args: Vec<String> = vec![
        "serve".into(),
        ip.into(),
        "--namespace".into(),
        namespace.into(),
        "--service".into(),
        service.into(),
        "--pod".into(),
        format!("{deployment}-5d4f8c-x7k2q"),
    ];
    let port = |kind: &str, default: &str| {
        ports
            .iter()
            .find_map(|p| p.strip_prefix(&format!("{kind}=")))
            .unwrap_or(default)
            .to_string()
    };
    let tls = |args: &mut Vec<String>, flag: &str, port: String| {
        args.extend([
            flag.into(),
            port,
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ]);
    };
    for part in mode.split('+') {
        match part {
            "tcp" => args.extend(["--tcp".into(), port("tcp", "3000")]),
            "udp" => args.extend(["--udp".into(), port("udp", "8080")]),
            "dns" => args.extend(["--udp".into(), port("dns", "53")]),
            "http" => args.extend(["--tcp".into(), port("tcp", "3000")]),
            "tls" if mode.starts_with("http") => tls(&mut args, "--https", port("tls", "8443")),
            "tls" => tls(&mut args, "--tls", port("tls", "8443")),
            other => panic!("{placeholder}: unknown mode {other}"),
        }
    }
    args
}

/// A CA and a certificate it signs for the names the TLS tests ask for:
/// (CA, certificate, key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca_key, ca) = (dir.join("ca.key"), dir.join("ca.crt"));
    let (key, csr, leaf) = (
        dir.join("tls.key"),
        dir.join("tls.csr"),
        dir.join("tls.crt"),
    );
    let ext = dir.join("san.ext");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:abc.example.com,DNS:other.example.com,DNS:example.com\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write extensions");
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = |p: &Path| p.display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=gatewayapi/O=Kubernetes Gateway API",
        "-keyout",
        &p(&ca_key),
        "-out",
        &p(&ca),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=default/O=Acme Co",
        "-keyout",
        &p(&key),
        "-out",
        &p(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&ca),
        "-CAkey",
        &p(&ca_key),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&leaf),
    ]);
    (ca, leaf, key)
}

enum Verdict {
    Passed,
    Failed(String),
    Skipped(&'static str),
    NotSupported,
}

impl Verdict {
    fn word(&self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed(_) => "FAILED",
            Self::Skipped(_) => "skipped",
            Self::NotSupported => "unsupported",
        }
    }
}

/// A condition as upstream's helpers match it: type, status, and a reason
/// (empty: any).
type Cond = (&'static str, &'static str, &'static str);

fn has_condition(conditions: &Value, (type_, status, reason): Cond) -> bool {
    conditions.as_array().into_iter().flatten().any(|c| {
        c["type"] == type_ && c["status"] == status && (reason.is_empty() || c["reason"] == reason)
    })
}

/// Whether every condition speaks of `generation`.
fn latest(conditions: &Value, generation: &Value) -> bool {
    conditions
        .as_array()
        .into_iter()
        .flatten()
        .all(|c| c["observedGeneration"] == *generation)
}

/// A Gateway of the hostname-intersection test: its routes, the names that
/// reach a backend (name, backend) and a name it must turn away.
type Intersection = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static str,
);

/// A listener status as a test expects it.
struct Listener {
    name: &'static str,
    /// Kinds the status must list; empty: it must list none.
    kinds: &'static [&'static str],
    conditions: &'static [Cond],
    attached: i64,
}

impl Suite<'_> {
    fn resource(kind: &str) -> ApiResource {
        let (group, plural) = match kind {
            "GatewayClass" => ("gateway.networking.k8s.io", "gatewayclasses"),
            "Gateway" => ("gateway.networking.k8s.io", "gateways"),
            "TCPRoute" => ("gateway.networking.k8s.io", "tcproutes"),
            "UDPRoute" => ("gateway.networking.k8s.io", "udproutes"),
            "TLSRoute" => ("gateway.networking.k8s.io", "tlsroutes"),
            "ReferenceGrant" => ("gateway.networking.k8s.io", "referencegrants"),
            "Service" => ("", "services"),
            other => panic!("no resource for {other}"),
        };
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural)
    }

    fn api(&self, kind: &str, namespace: Option<&str>) -> Api<DynamicObject> {
        let resource = Self::resource(kind);
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        }
    }

    async fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Result<Value, String> {
        let object = self
            .api(kind, namespace)
            .get(name)
            .await
            .map_err(|e| format!("{kind} {name}: {e}"))?;
        serde_json::to_value(object).map_err(|e| e.to_string())
    }

    /// The manifest's text with upstream's placeholders filled in.
    fn text(&self, file: &str) -> String {
        let mut text = std::fs::read_to_string(manifest_dir().join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        for (placeholder, ip) in &self.backends {
            text = text.replace(placeholder, ip);
        }
        text.replace("{GATEWAY_CLASS_NAME}", CLASS)
            .replace("{GATEWAY_CONTROLLER_NAME}", CONTROLLER_NAME)
            .replace(
                "value: \"PLACEHOLDER_UNUSABLE_ADDRS\"",
                &format!("value: \"{UNUSABLE}\""),
            )
            .replace(
                "value: \"PLACEHOLDER_USABLE_ADDRS\"",
                &format!("value: \"{USABLE}\""),
            )
    }

    fn apply_text(&self, text: &str) {
        let file = self.dir.join("applied.yaml");
        std::fs::write(&file, text).expect("write manifest");
        self.cluster
            .kubectl_ok(&["apply", "-f", file.to_str().expect("utf-8 path")]);
    }

    fn apply(&self, file: &str) {
        self.apply_text(&self.text(file));
    }

    fn delete(&self, file: &str) {
        let path = self.dir.join("deleted.yaml");
        std::fs::write(&path, self.text(file)).expect("write manifest");
        self.cluster.kubectl(&[
            "delete",
            "-f",
            path.to_str().expect("utf-8 path"),
            "--ignore-not-found",
            "--timeout=60s",
        ]);
    }

    /// Polls `check` every 200 ms for up to `within`: its last error if it
    /// never passes.
    async fn eventually<T, F, Fut>(&self, within: Duration, mut check: F) -> Result<T, String>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let started = Instant::now();
        loop {
            match check().await {
                Ok(t) => return Ok(t),
                Err(why) if started.elapsed() > within => return Err(why),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn class_accepted(&self, name: &str) -> Result<Value, String> {
        self.eventually(STEP, || async {
            let c = self.get("GatewayClass", None, name).await?;
            let ok = latest(&c["status"]["conditions"], &c["metadata"]["generation"])
                && has_condition(&c["status"]["conditions"], ("Accepted", "True", ""));
            ok.then_some(c.clone())
                .ok_or_else(|| format!("GatewayClass {name} not accepted: {}", c["status"]))
        })
        .await
    }

    /// `GatewayMustHaveLatestConditions`, then the conditions.
    async fn gateway_conditions(&self, name: &str, wanted: &[Cond]) -> Result<Value, String> {
        self.eventually(STEP, || async {
            let g = self.get("Gateway", Some(INFRA), name).await?;
            let conditions = &g["status"]["conditions"];
            let ok = latest(conditions, &g["metadata"]["generation"])
                && wanted.iter().all(|c| has_condition(conditions, *c));
            ok.then_some(g.clone()).ok_or_else(|| {
                format!(
                    "Gateway {name}: wanted {wanted:?} at generation {}, has {conditions}",
                    g["metadata"]["generation"]
                )
            })
        })
        .await
    }

    /// What upstream's `NamespacesMustBeReady` asks of a test's Gateway.
    async fn ready(&self, name: &str) -> Result<Value, String> {
        self.gateway_conditions(
            name,
            &[("Accepted", "True", ""), ("Programmed", "True", "")],
        )
        .await
    }

    /// `GatewayStatusMustHaveListeners`.
    async fn listeners(&self, name: &str, wanted: &[Listener]) -> Result<(), String> {
        self.eventually(STEP, || async {
            let g = self.gateway_conditions(name, &[]).await?;
            let actual = g["status"]["listeners"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let matches = actual.len() == wanted.len()
                && wanted.iter().all(|w| {
                    actual.iter().any(|a| {
                        let kinds: Vec<&str> = a["supportedKinds"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|k| {
                                k["group"].as_str().unwrap_or("gateway.networking.k8s.io")
                                    == "gateway.networking.k8s.io"
                            })
                            .filter_map(|k| k["kind"].as_str())
                            .collect();
                        let all_kinds = a["supportedKinds"].as_array().map_or(0, Vec::len);
                        a["name"] == w.name
                            && a["attachedRoutes"] == w.attached
                            && if w.kinds.is_empty() {
                                all_kinds == 0
                            } else {
                                w.kinds.iter().all(|k| kinds.contains(k))
                            }
                            && w.conditions
                                .iter()
                                .all(|c| has_condition(&a["conditions"], *c))
                    })
                });
            matches
                .then_some(())
                .ok_or_else(|| format!("Gateway {name}: listeners {}", g["status"]["listeners"]))
        })
        .await
    }

    /// `GatewayMustHaveZeroRoutes`.
    async fn zero_routes(&self, name: &str) -> Result<(), String> {
        self.eventually(STEP, || async {
            let g = self.gateway_conditions(name, &[]).await?;
            let l = g["status"]["listeners"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            (l.is_empty() || (l.len() == 1 && l[0]["attachedRoutes"] == 0))
                .then_some(())
                .ok_or_else(|| {
                    format!(
                        "Gateway {name}: routes attached: {}",
                        g["status"]["listeners"]
                    )
                })
        })
        .await
    }

    /// `WaitForGatewayAddress`: the first status address and the port of
    /// `listener` (else of the first listener).
    async fn address(&self, name: &str, listener: Option<&str>) -> Result<(String, u16), String> {
        self.eventually(Duration::from_secs(180), || async {
            let g = self.gateway_conditions(name, &[]).await?;
            let listeners = g["spec"]["listeners"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let port = listeners
                .iter()
                .find(|l| listener.is_some_and(|n| l["name"] == n))
                .or(listeners.first())
                .and_then(|l| l["port"].as_u64())
                .ok_or_else(|| format!("Gateway {name} has no listener"))?;
            let ip = g["status"]["addresses"][0]["value"]
                .as_str()
                .ok_or_else(|| format!("Gateway {name} has no address: {}", g["status"]))?;
            Ok((ip.to_string(), u16::try_from(port).expect("a port")))
        })
        .await
    }

    /// `RouteMustHaveParents` with one parent: the Gateway, accepted.
    async fn parent_accepted(&self, kind: &str, route: &str, gateway: &str) -> Result<(), String> {
        self.eventually(STEP, || async {
            let r = self.get(kind, Some(INFRA), route).await?;
            let found = r["status"]["parents"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| {
                    let parent = &p["parentRef"];
                    p["controllerName"] == CONTROLLER_NAME
                        && parent["group"] == "gateway.networking.k8s.io"
                        && parent["kind"] == "Gateway"
                        && parent["name"] == gateway
                        && (parent["namespace"].is_null() || parent["namespace"] == INFRA)
                        && has_condition(&p["conditions"], ("Accepted", "True", "Accepted"))
                });
            found
                .then_some(())
                .ok_or_else(|| format!("{kind} {route}: parents {}", r["status"]["parents"]))
        })
        .await
    }

    /// `*RouteMustHaveCondition`.
    async fn route_condition(
        &self,
        kind: &str,
        route: &str,
        gateway: &str,
        wanted: Cond,
    ) -> Result<(), String> {
        self.eventually(STEP, || async {
            let r = self.get(kind, Some(INFRA), route).await?;
            let parents = r["status"]["parents"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let current = parents
                .iter()
                .all(|p| latest(&p["conditions"], &r["metadata"]["generation"]));
            let found = parents.iter().any(|p| {
                p["parentRef"]["name"] == gateway
                    && (p["parentRef"]["namespace"].is_null()
                        || p["parentRef"]["namespace"] == INFRA)
                    && has_condition(&p["conditions"], wanted)
            });
            (current && found).then_some(()).ok_or_else(|| {
                format!(
                    "{kind} {route}: wanted {wanted:?} for {gateway}, parents {}",
                    r["status"]["parents"]
                )
            })
        })
        .await
    }

    /// `*RouteMustHaveNoAcceptedParents`.
    async fn no_accepted_parents(&self, kind: &str, route: &str) -> Result<(), String> {
        self.eventually(STEP, || async {
            let r = self.get(kind, Some(INFRA), route).await?;
            let parents = r["status"]["parents"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ok = parents.len() <= 1
                && parents.iter().all(|p| {
                    latest(&p["conditions"], &r["metadata"]["generation"])
                        && has_condition(&p["conditions"], ("Accepted", "False", ""))
                });
            ok.then_some(())
                .ok_or_else(|| format!("{kind} {route}: parents {}", r["status"]["parents"]))
        })
        .await
    }

    /// `GatewayAnd*RoutesMustBeAccepted`: the address, each route's parent
    /// accepted, every listener accepted, resolved and programmed.
    async fn accepted_with_routes(
        &self,
        gateway: &str,
        listener: Option<&str>,
        kind: &str,
        routes: &[&str],
    ) -> Result<String, String> {
        let (ip, port) = self.address(gateway, listener).await?;
        for route in routes {
            self.parent_accepted(kind, route, gateway).await?;
        }
        self.eventually(STEP, || async {
            let g = self.get("Gateway", Some(INFRA), gateway).await?;
            let all = g["status"]["listeners"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|l| {
                    ["ResolvedRefs", "Accepted", "Programmed"]
                        .iter()
                        .all(|t| has_condition(&l["conditions"], (t, "True", "")))
                });
            all.then_some(())
                .ok_or_else(|| format!("Gateway {gateway}: listeners {}", g["status"]["listeners"]))
        })
        .await?;
        Ok(format!("{ip}:{port}"))
    }

    /// Runs `tests/peers/echo_basic.py` in the lab's client namespace.
    fn echo(&self, args: &[&str]) -> Result<String, String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/echo_basic.py");
        let mut cmd = vec!["python3", script];
        cmd.extend_from_slice(args);
        let out = self.lab.exec(&self.client_ns, &cmd);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("echo_basic {args:?}: {text}"))
        }
    }

    fn split(addr: &str) -> (&str, &str) {
        addr.rsplit_once(':').expect("host:port")
    }

    /// `MakeTCPRequestAndExpectEventuallyValidResponse` without TLS.
    fn tcp_expect(&self, addr: &str, namespace: &str, backend: &str) -> Outcome {
        let (host, port) = Self::split(addr);
        self.echo(&[
            "tcp-expect",
            host,
            port,
            "--namespace",
            namespace,
            "--backend",
            backend,
        ])
        .map(drop)
    }

    /// `tcp.ExpectAddressBeAvailable`: an echo answers (upstream only
    /// connects; a forwarder accepts before it has a backend).
    async fn tcp_available(&self, addr: &str) -> Outcome {
        let (host, port) = Self::split(addr);
        self.eventually(Duration::from_secs(30), || async {
            self.echo(&["tcp-once", host, port]).map(drop)
        })
        .await
    }

    /// The same through TLS passthrough, trusting the test CA.
    fn tls_expect(&self, addr: &str, sni: &str, namespace: &str, backend: &str) -> Outcome {
        let (host, port) = Self::split(addr);
        let ca = self.ca.display().to_string();
        self.echo(&[
            "tcp-expect",
            host,
            port,
            "--namespace",
            namespace,
            "--backend",
            backend,
            "--tls",
            "--ca",
            &ca,
            "--sni",
            sni,
        ])
        .map(drop)
    }

    /// `MakeTLSRequestAndExpectEventuallyConsistentResponse`: HTTPS through
    /// passthrough, trusting the backends' certificate itself.
    fn https_expect(&self, addr: &str, name: &str, backend: &str) -> Outcome {
        let (host, port) = Self::split(addr);
        let leaf = self.leaf.display().to_string();
        self.echo(&[
            "https-expect",
            host,
            port,
            "--sni",
            name,
            "--host",
            name,
            "--ca",
            &leaf,
            "--namespace",
            INFRA,
            "--backend",
            backend,
        ])
        .map(drop)
    }

    /// `MakeTLSConnectionAndExpectEventuallyConnectionRejection`.
    fn tls_rejected(&self, addr: &str, sni: &str) -> Outcome {
        let (host, port) = Self::split(addr);
        self.echo(&["tls-rejected", host, port, "--sni", sni])
            .map(drop)
    }

    /// `udp.ExpectEchoResponseFromBackend` (no service: any reply).
    fn udp_expect(&self, addr: &str, service: Option<&str>) -> Outcome {
        let (host, port) = Self::split(addr);
        let mut args = vec!["udp-expect", host, port];
        if let Some(s) = service {
            args.extend(["--service", s, "--namespace", INFRA]);
        }
        self.echo(&args).map(drop)
    }

    /// `weight.TestWeightedDistribution`, up to 10 attempts of 500 requests.
    fn weighted(&self, transport: &str, addr: &str, weights: &[(&str, f64)]) -> Outcome {
        let (host, port) = Self::split(addr);
        let mut last = String::new();
        for _ in 0..10 {
            let out = self.echo(&["weighted", transport, host, port])?;
            let counts: BTreeMap<&str, f64> = out
                .lines()
                .filter_map(|l| l.split_once('='))
                .filter_map(|(k, v)| Some((k.trim(), v.trim().parse().ok()?)))
                .collect();
            let total: f64 = counts
                .iter()
                .filter(|(k, _)| **k != "errors")
                .map(|(_, v)| v)
                .sum();
            let errors = counts.get("errors").copied().unwrap_or(0.0);
            let unknown = counts
                .keys()
                .any(|k| *k != "errors" && !weights.iter().any(|(w, _)| w == k));
            let within = weights.iter().all(|(backend, weight)| {
                let n = counts.get(backend).copied().unwrap_or(0.0);
                if *weight == 0.0 {
                    n == 0.0
                } else {
                    (n / 500.0 - weight).abs() <= 0.05
                }
            });
            if errors == 0.0 && total == 500.0 && !unknown && within {
                return Ok(());
            }
            last = out;
        }
        Err(format!(
            "the weighted distribution did not converge: {last}"
        ))
    }

    /// One test's steps.
    fn run<'a>(&'a self, name: &'a str) -> Step<'a> {
        Box::pin(async move {
            match name {
                "GatewayInfrastructure" => self.gateway_infrastructure().await,
                "GatewayListenerUnsupportedProtocol" => self.gateway_unsupported_protocol().await,
                "GatewayInvalidParametersRef" => self
                    .gateway_conditions(
                        "gateway-invalid-parameters-ref",
                        &[("Accepted", "False", "InvalidParameters")],
                    )
                    .await
                    .map(drop),
                "GatewayInvalidRouteKind" => self.gateway_invalid_route_kind().await,
                "GatewayModifyListeners" => self.gateway_modify_listeners().await,
                "GatewayObservedGenerationBump" => self.gateway_observed_generation_bump().await,
                "GatewayOptionalAddressValue" => {
                    self.ready("gateway-without-address-value").await?;
                    self.address("gateway-without-address-value", Some("http"))
                        .await
                        .map(drop)
                }
                "GatewayStaticAddresses" => self.gateway_static_addresses().await,
                "GatewayClassObservedGenerationBump" => {
                    self.gatewayclass_observed_generation_bump().await
                }
                "GatewayWithAttachedRoutes" => self.gateway_with_attached_routes().await,
                "TCPRouteInvalidBackendRefNonexistent" => {
                    self.ready("tcp-gateway-invalid-backend").await?;
                    self.route_condition(
                        "TCPRoute",
                        "tcp-route-invalid-backend-ref-nonexistent",
                        "tcp-gateway-invalid-backend",
                        ("ResolvedRefs", "False", "BackendNotFound"),
                    )
                    .await
                }
                "TCPRouteInvalidCrossNamespaceBackendRef" => {
                    let gw = "tcp-invalid-cross-namespace-backend-ref-gateway";
                    self.ready(gw).await?;
                    self.accepted_with_routes(
                        gw,
                        Some("tcp"),
                        "TCPRoute",
                        &["tcp-invalid-cross-namespace-backend-ref"],
                    )
                    .await?;
                    self.route_condition(
                        "TCPRoute",
                        "tcp-invalid-cross-namespace-backend-ref",
                        gw,
                        ("ResolvedRefs", "False", "RefNotPermitted"),
                    )
                    .await
                }
                "TCPRouteInvalidNonTCPListener" => {
                    self.ready("tcp-mixed-protocol-gateway").await?;
                    self.route_condition(
                        "TCPRoute",
                        "tcp-route",
                        "tcp-mixed-protocol-gateway",
                        ("Accepted", "False", "NotAllowedByListeners"),
                    )
                    .await?;
                    self.zero_routes("tcp-mixed-protocol-gateway").await
                }
                "TCPRouteMultipleRoutesAttachment" => self.multiple_routes("TCPRoute", "tcp").await,
                "TCPRouteParentRefAttachAll" => {
                    let gw = "tcp-attach-all-gateway";
                    self.ready(gw).await?;
                    self.parent_accepted("TCPRoute", "tcp-route-attach-all", gw)
                        .await?;
                    for listener in ["one", "two", "three", "four"] {
                        let (ip, port) = self.address(gw, Some(listener)).await?;
                        self.tcp_expect(&format!("{ip}:{port}"), INFRA, "tcp-echo-attach-all")?;
                    }
                    Ok(())
                }
                "TCPRouteParentRefPortAndSectionName" => {
                    let gw = "tcp-multi-listener-gateway";
                    self.ready(gw).await?;
                    for (route, listener, backend) in [
                        ("tcp-route-by-port", "one", "tcp-echo-one"),
                        ("tcp-route-by-section", "two", "tcp-echo-two"),
                        ("tcp-route-by-section-and-port", "three", "tcp-echo-three"),
                    ] {
                        self.parent_accepted("TCPRoute", route, gw).await?;
                        let (ip, port) = self.address(gw, Some(listener)).await?;
                        self.tcp_expect(&format!("{ip}:{port}"), INFRA, backend)?;
                    }
                    Ok(())
                }
                "TCPRouteReferenceGrant" => {
                    let gw = "tcp-reference-grant-gateway";
                    self.ready(gw).await?;
                    let addr = self
                        .accepted_with_routes(gw, Some("tcp"), "TCPRoute", &["tcp-reference-grant"])
                        .await?;
                    self.tcp_expect(
                        &addr,
                        "gateway-conformance-web-backend",
                        "tcp-reference-grant-backend",
                    )?;
                    self.delete_grant("gateway-conformance-web-backend", "tcp-reference-grant")
                        .await?;
                    self.route_condition(
                        "TCPRoute",
                        "tcp-reference-grant",
                        gw,
                        ("ResolvedRefs", "False", "RefNotPermitted"),
                    )
                    .await
                }
                "TCPRouteWeightedRouting" => {
                    let gw = "tcp-weighted-gateway";
                    self.ready(gw).await?;
                    let addr = self
                        .accepted_with_routes(gw, Some("tcp"), "TCPRoute", &["tcp-weighted-route"])
                        .await?;
                    self.tcp_available(&addr).await?;
                    self.weighted(
                        "tcp",
                        &addr,
                        &[
                            ("tcp-backend-v1", 0.7),
                            ("tcp-backend-v2", 0.3),
                            ("tcp-backend-v3", 0.0),
                        ],
                    )
                }
                "TLSRouteHostnameIntersection" => self.tls_hostname_intersection().await,
                "TLSRouteInvalidBackendRefNonexistent" => {
                    self.invalid_tls_backend(
                        "gateway-tlsroute-invalid-backend-ref-nonexistent",
                        "invalid-backend-ref-nonexistent",
                        "BackendNotFound",
                    )
                    .await
                }
                "TLSRouteInvalidBackendRefUnknownKind" => {
                    self.invalid_tls_backend(
                        "gateway-tlsroute-invalid-backend-ref-unknown-kind",
                        "invalid-backend-ref-unknown-kind",
                        "InvalidKind",
                    )
                    .await
                }
                "TLSRouteInvalidNoMatchingListenerHostname" => {
                    for gw in [
                        "gateway-tls-exact-hostname",
                        "gateway-tls-wildcard-hostname",
                    ] {
                        self.ready(gw).await?;
                    }
                    for (route, gw) in [
                        ("tlsroute-hostname-mismatch-1", "gateway-tls-exact-hostname"),
                        (
                            "tlsroute-hostname-mismatch-2",
                            "gateway-tls-wildcard-hostname",
                        ),
                    ] {
                        self.route_condition(
                            "TLSRoute",
                            route,
                            gw,
                            ("Accepted", "False", "NoMatchingListenerHostname"),
                        )
                        .await?;
                        self.no_accepted_parents("TLSRoute", route).await?;
                        self.zero_routes(gw).await?;
                    }
                    Ok(())
                }
                "TLSRouteInvalidNoMatchingListener" => self.tls_no_matching_listener().await,
                "TLSRouteInvalidReferenceGrant" => {
                    let gw = "gateway-tlsroute-referencegrant";
                    self.accepted_with_routes(
                        gw,
                        None,
                        "TLSRoute",
                        &["gateway-conformance-infra-test"],
                    )
                    .await?;
                    self.route_condition(
                        "TLSRoute",
                        "gateway-conformance-infra-test",
                        gw,
                        ("ResolvedRefs", "False", "RefNotPermitted"),
                    )
                    .await
                }
                "TLSRouteListenerPassthroughSupportedKinds" => {
                    self.listeners(
                        "gateway-tlsroute-passthrough-supported-kind",
                        &[Listener {
                            name: "tls-passthrough",
                            kinds: &["TLSRoute"],
                            conditions: &[("ResolvedRefs", "False", "InvalidRouteKinds")],
                            attached: 0,
                        }],
                    )
                    .await
                }
                "TLSRouteListenerTerminateNotSupported" => {
                    self.listeners(
                        "gateway-tlsroute-terminate-unsupported",
                        &[Listener {
                            name: "tls-terminate",
                            kinds: &[],
                            conditions: &[("Accepted", "False", "UnsupportedValue")],
                            attached: 0,
                        }],
                    )
                    .await
                }
                "TLSRouteSimpleSameNamespace" => {
                    self.ready("gateway-tlsroute").await?;
                    let addr = self
                        .accepted_with_routes(
                            "gateway-tlsroute",
                            None,
                            "TLSRoute",
                            &["gateway-conformance-infra-test"],
                        )
                        .await?;
                    self.tls_expect(&addr, "abc.example.com", INFRA, "tcp-backend")
                }
                "UDPRouteInvalidBackendRefNonexistent" => {
                    self.ready("udp-gateway-invalid-backend").await?;
                    self.route_condition(
                        "UDPRoute",
                        "udp-route-invalid-backend-ref-nonexistent",
                        "udp-gateway-invalid-backend",
                        ("ResolvedRefs", "False", "BackendNotFound"),
                    )
                    .await
                }
                "UDPRouteInvalidCrossNamespaceBackendRef" => {
                    let gw = "udp-gateway-invalid-cross-namespace-backend-ref";
                    self.ready(gw).await?;
                    self.accepted_with_routes(
                        gw,
                        None,
                        "UDPRoute",
                        &["udp-route-invalid-cross-namespace-backend-ref"],
                    )
                    .await?;
                    self.route_condition(
                        "UDPRoute",
                        "udp-route-invalid-cross-namespace-backend-ref",
                        gw,
                        ("ResolvedRefs", "False", "RefNotPermitted"),
                    )
                    .await
                }
                "UDPRouteMultipleRoutesAttachment" => self.multiple_routes("UDPRoute", "udp").await,
                "UDPRouteNotAllowedByListeners" => {
                    let gw = "udproute-tls-only-gateway";
                    self.ready(gw).await?;
                    self.route_condition(
                        "UDPRoute",
                        "udproute-not-allowed-by-listeners",
                        gw,
                        ("Accepted", "False", "NotAllowedByListeners"),
                    )
                    .await?;
                    self.zero_routes(gw).await
                }
                "UDPRouteParentRefAttachAllListeners" => {
                    let gw = "udp-attach-all-listeners-gateway";
                    self.ready(gw).await?;
                    self.parent_accepted("UDPRoute", "udp-route-attach-all", gw)
                        .await?;
                    let each = |name| Listener {
                        name,
                        kinds: &["UDPRoute"],
                        conditions: &[("Accepted", "True", ""), ("ResolvedRefs", "True", "")],
                        attached: 1,
                    };
                    self.listeners(gw, &[each("udp-1"), each("udp-2"), each("udp-3")])
                        .await?;
                    for listener in ["udp-1", "udp-2", "udp-3"] {
                        let (ip, port) = self.address(gw, Some(listener)).await?;
                        self.udp_expect(&format!("{ip}:{port}"), Some("udp-echo-attach-all"))?;
                    }
                    Ok(())
                }
                "UDPRouteParentRefPortAndSectionName" => {
                    let gw = "udp-multi-listener-gateway";
                    self.ready(gw).await?;
                    for (route, listener, backend) in [
                        ("udp-route-by-port", "by-port", "udp-echo-by-port"),
                        ("udp-route-by-section", "by-section", "udp-echo-by-section"),
                        (
                            "udp-route-by-section-and-port",
                            "by-section-and-port",
                            "udp-echo-by-section-and-port",
                        ),
                    ] {
                        self.parent_accepted("UDPRoute", route, gw).await?;
                        let (ip, port) = self.address(gw, Some(listener)).await?;
                        self.udp_expect(&format!("{ip}:{port}"), Some(backend))?;
                    }
                    Ok(())
                }
                "UDPRouteReferenceGrant" => {
                    let gw = "udp-gateway-reference-grant";
                    self.ready(gw).await?;
                    let addr = self
                        .accepted_with_routes(gw, None, "UDPRoute", &["udp-route-reference-grant"])
                        .await?;
                    self.route_condition(
                        "UDPRoute",
                        "udp-route-reference-grant",
                        gw,
                        ("ResolvedRefs", "True", "ResolvedRefs"),
                    )
                    .await?;
                    self.udp_expect(&addr, None)?;
                    self.delete_grant("gateway-conformance-app-backend", "udp-reference-grant")
                        .await?;
                    self.route_condition(
                        "UDPRoute",
                        "udp-route-reference-grant",
                        gw,
                        ("ResolvedRefs", "False", "RefNotPermitted"),
                    )
                    .await
                }
                "UDPRoute" => {
                    let addr = self
                        .accepted_with_routes("udp-gateway", None, "UDPRoute", &["udp-coredns"])
                        .await?;
                    let (host, port) = Self::split(&addr);
                    self.echo(&["udp-any", host, port]).map(drop)
                }
                "UDPRouteWeightedRouting" => {
                    let gw = "udp-weighted-gateway";
                    self.ready(gw).await?;
                    let addr = self
                        .accepted_with_routes(gw, Some("udp"), "UDPRoute", &["udp-weighted-route"])
                        .await?;
                    self.udp_expect(&addr, None)?;
                    self.weighted(
                        "udp",
                        &addr,
                        &[
                            ("udp-backend-v1", 0.7),
                            ("udp-backend-v2", 0.3),
                            ("udp-backend-v3", 0.0),
                        ],
                    )
                }
                other => Err(format!("no steps for {other}")),
            }
        })
    }

    async fn delete_grant(&self, namespace: &str, name: &str) -> Outcome {
        self.api("ReferenceGrant", Some(namespace))
            .delete(name, &DeleteParams::default())
            .await
            .map(drop)
            .map_err(|e| format!("deleting ReferenceGrant {namespace}/{name}: {e}"))
    }

    async fn merge_patch(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Outcome {
        self.api(kind, namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
            .map_err(|e| format!("patching {kind} {name}: {e}"))
    }

    async fn gateway_infrastructure(&self) -> Outcome {
        let name = "gateway-with-infrastructure-metadata";
        self.ready(name).await?;
        self.gateway_conditions(name, &[("Accepted", "True", "")])
            .await?;
        self.eventually(STEP, || async {
            let services = self
                .api("Service", Some(INFRA))
                .list(
                    &kube::api::ListParams::default()
                        .labels(&format!("gateway.networking.k8s.io/gateway-name={name}")),
                )
                .await
                .map_err(|e| e.to_string())?;
            let first = services
                .items
                .first()
                .ok_or("no Service labelled with the Gateway's name")?;
            let labels = first.metadata.labels.clone().unwrap_or_default();
            let annotations = first.metadata.annotations.clone().unwrap_or_default();
            (labels.get("key2").map(String::as_str) == Some("value2")
                && annotations.get("key1").map(String::as_str) == Some("value1"))
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "Service {:?}: labels {labels:?}, annotations {annotations:?}",
                    first.metadata.name
                )
            })
        })
        .await
    }

    async fn gateway_unsupported_protocol(&self) -> Outcome {
        self.gateway_conditions(
            "gateway-only-unsupported-protocols",
            &[("Accepted", "False", "ListenersNotValid")],
        )
        .await?;
        self.listeners(
            "gateway-only-unsupported-protocols",
            &[Listener {
                name: "invalid",
                kinds: &[],
                conditions: &[("Accepted", "False", "UnsupportedProtocol")],
                attached: 0,
            }],
        )
        .await?;
        self.gateway_conditions(
            "gateway-supported-and-unsupported-protocols",
            &[("Accepted", "True", "ListenersNotValid")],
        )
        .await?;
        self.listeners(
            "gateway-supported-and-unsupported-protocols",
            &[
                Listener {
                    name: "http",
                    kinds: &["TCPRoute"],
                    conditions: &[("Accepted", "True", "Accepted")],
                    attached: 0,
                },
                Listener {
                    name: "invalid",
                    kinds: &[],
                    conditions: &[("Accepted", "False", "UnsupportedProtocol")],
                    attached: 0,
                },
            ],
        )
        .await
    }

    async fn gateway_invalid_route_kind(&self) -> Outcome {
        self.listeners(
            "gateway-only-invalid-route-kind",
            &[Listener {
                name: "http",
                kinds: &[],
                conditions: &[("ResolvedRefs", "False", "InvalidRouteKinds")],
                attached: 0,
            }],
        )
        .await?;
        self.listeners(
            "gateway-supported-and-invalid-route-kind",
            &[Listener {
                name: "http",
                kinds: &["TCPRoute"],
                conditions: &[("ResolvedRefs", "False", "InvalidRouteKinds")],
                attached: 0,
            }],
        )
        .await
    }

    /// Patches `spec.listeners` of Gateway `name` and waits for the Gateway
    /// to speak of the new generation, ready again.
    async fn relisten(&self, name: &str, edit: impl FnOnce(&mut Vec<Value>)) -> Result<(), String> {
        let before = self.ready(name).await?;
        let mut listeners = before["spec"]["listeners"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        edit(&mut listeners);
        self.merge_patch(
            "Gateway",
            Some(INFRA),
            name,
            json!({"spec": {"listeners": listeners}}),
        )
        .await?;
        let after = self
            .eventually(STEP, || async {
                let g = self.ready(name).await?;
                (g["metadata"]["generation"] != before["metadata"]["generation"])
                    .then_some(g)
                    .ok_or_else(|| format!("Gateway {name}: generation unchanged"))
            })
            .await?;
        latest(
            &after["status"]["conditions"],
            &after["metadata"]["generation"],
        )
        .then_some(())
        .ok_or_else(|| {
            format!(
                "Gateway {name}: stale conditions {}",
                after["status"]["conditions"]
            )
        })
    }

    async fn gateway_modify_listeners(&self) -> Outcome {
        // Upstream adds an HTTP listener with a hostname; a TCP listener has
        // none (the CRD refuses one).
        self.relisten("gateway-add-listener", |l| {
            l.push(json!({"name": "http", "port": 80, "protocol": "TCP", "allowedRoutes": {"namespaces": {"from": "All"}}}));
        })
        .await?;
        let both = |name| Listener {
            name,
            kinds: &["TCPRoute"],
            conditions: &[("Accepted", "True", ""), ("ResolvedRefs", "True", "")],
            attached: 1,
        };
        self.listeners("gateway-add-listener", &[both("https"), both("http")])
            .await?;
        let g = self
            .get("Gateway", Some(INFRA), "gateway-remove-listener")
            .await?;
        let count = g["spec"]["listeners"].as_array().map_or(0, Vec::len);
        if count != 2 {
            return Err(format!(
                "gateway-remove-listener has {count} listeners, not 2"
            ));
        }
        self.relisten("gateway-remove-listener", |l| {
            l.retain(|l| l["name"] == "http")
        })
        .await?;
        self.listeners("gateway-remove-listener", &[both("http")])
            .await
    }

    async fn gateway_observed_generation_bump(&self) -> Outcome {
        // Upstream adds a second HTTP listener on port 80 with another
        // hostname; at layer 4 a second listener is a second port.
        self.relisten("gateway-observed-generation-bump", |l| {
            l.push(json!({"name": "alternate", "port": 8081, "protocol": "TCP", "allowedRoutes": {"namespaces": {"from": "All"}}}));
        })
        .await
    }

    async fn gateway_static_addresses(&self) -> Outcome {
        let name = "gateway-static-addresses";
        let g = self
            .gateway_conditions(name, &[("Accepted", "False", "UnsupportedAddress")])
            .await?;
        let addresses = g["spec"]["addresses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if addresses.len() != 3 {
            return Err(format!("spec.addresses: {addresses:?}"));
        }
        let service = format!("{name}-ironlb-gateway");
        let asked = self.get("Service", Some(INFRA), &service).await.ok();
        if let Some(s) = asked
            .as_ref()
            .and_then(|s| s["metadata"]["annotations"]["ironlb.dev/load-balancer-ips"].as_str())
        {
            return Err(format!(
                "Service {service} of an unaccepted Gateway asks for {s}"
            ));
        }
        let without = |value: &str| -> Vec<Value> {
            addresses
                .iter()
                .filter(|a| a["value"] != value)
                .cloned()
                .collect()
        };
        self.merge_patch(
            "Gateway",
            Some(INFRA),
            name,
            json!({"spec": {"addresses": without("fake address teehee!")}}),
        )
        .await?;
        self.gateway_conditions(
            name,
            &[
                ("Accepted", "True", "Accepted"),
                ("Programmed", "False", "AddressNotUsable"),
            ],
        )
        .await?;
        let remaining: Vec<Value> = without("fake address teehee!")
            .into_iter()
            .filter(|a| a["value"] != UNUSABLE)
            .collect();
        self.merge_patch(
            "Gateway",
            Some(INFRA),
            name,
            json!({"spec": {"addresses": remaining}}),
        )
        .await?;
        self.gateway_conditions(
            name,
            &[
                ("Accepted", "True", "Accepted"),
                ("Programmed", "True", "Programmed"),
            ],
        )
        .await?;
        self.listeners(
            name,
            &[Listener {
                name: "http",
                kinds: &["TCPRoute"],
                conditions: &[("Accepted", "True", ""), ("ResolvedRefs", "True", "")],
                attached: 0,
            }],
        )
        .await?;
        self.eventually(Duration::from_secs(180), || async {
            let g = self.get("Gateway", Some(INFRA), name).await?;
            let status = g["status"]["addresses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            (status.len() == 1 && status[0]["value"] == USABLE && status[0]["type"] == "IPAddress")
                .then_some(())
                .ok_or_else(|| format!("status.addresses {status:?}"))
        })
        .await
    }

    /// Upstream's three subtests; the third's listener with an unresolved
    /// certificate has no layer-4 form, its route's missing backend does.
    async fn gateway_with_attached_routes(&self) -> Outcome {
        let resolved: &[Cond] = &[("Accepted", "True", ""), ("ResolvedRefs", "True", "")];
        self.listeners(
            "gateway-with-one-attached-route",
            &[Listener {
                name: "http",
                kinds: &["TCPRoute"],
                conditions: resolved,
                attached: 1,
            }],
        )
        .await?;
        self.listeners(
            "gateway-with-two-attached-routes",
            &[Listener {
                name: "http",
                kinds: &["TLSRoute"],
                conditions: resolved,
                attached: 2,
            }],
        )
        .await?;
        self.route_condition(
            "TLSRoute",
            "http-route-not-accepted",
            "gateway-with-two-attached-routes",
            ("Accepted", "False", "NoMatchingListenerHostname"),
        )
        .await?;
        let gw = "unresolved-gateway-with-one-attached-unresolved-route";
        self.listeners(
            gw,
            &[Listener {
                name: "tls",
                kinds: &["TLSRoute"],
                conditions: &[],
                attached: 1,
            }],
        )
        .await?;
        self.route_condition(
            "TLSRoute",
            "http-route-4",
            gw,
            ("ResolvedRefs", "False", ""),
        )
        .await
    }

    async fn gatewayclass_observed_generation_bump(&self) -> Outcome {
        let name = "gatewayclass-observed-generation-bump";
        let before = self.class_accepted(name).await?;
        self.merge_patch(
            "GatewayClass",
            None,
            name,
            json!({"spec": {"description": "ironlb conformance: the generation moves"}}),
        )
        .await?;
        self.eventually(STEP, || async {
            let c = self.class_accepted(name).await?;
            (c["metadata"]["generation"] != before["metadata"]["generation"])
                .then_some(())
                .ok_or_else(|| format!("GatewayClass {name}: generation unchanged"))
        })
        .await
    }

    /// `*RouteMultipleRoutesAttachment`: the older of two routes on one
    /// listener carries the traffic; both are accepted and counted.
    async fn multiple_routes(&self, kind: &str, protocol: &str) -> Outcome {
        let gw = format!("{protocol}-multi-route-attach-gateway");
        let (older, newer) = (
            format!("{protocol}route-attach-older"),
            format!("{protocol}route-attach-newer"),
        );
        self.ready(&gw).await?;
        let addr = self
            .accepted_with_routes(&gw, Some(protocol), kind, &[&older])
            .await?;
        // The newer route, created a second later (creation times have
        // second precision), as upstream's test creates it in code.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        self.apply_text(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\nmetadata: {{name: {newer}, namespace: {INFRA}}}\n\
             spec:\n  parentRefs: [{{name: {gw}, sectionName: {protocol}}}]\n  rules: [{{backendRefs: [{{name: {protocol}-attach-backend-2, port: {port}}}]}}]\n",
            port = if protocol == "tcp" { 3000 } else { 8080 },
        ));
        let outcome = async {
            for route in [&older, &newer] {
                self.route_condition(kind, route, &gw, ("Accepted", "True", "Accepted"))
                    .await?;
            }
            self.listeners(
                &gw,
                &[Listener {
                    name: if protocol == "tcp" { "tcp" } else { "udp" },
                    kinds: if protocol == "tcp" {
                        &["TCPRoute"]
                    } else {
                        &["UDPRoute"]
                    },
                    conditions: &[("Accepted", "True", "Accepted")],
                    attached: 2,
                }],
            )
            .await?;
            let backend = format!("{protocol}-attach-backend-1");
            if protocol == "tcp" {
                self.tcp_expect(&addr, INFRA, &backend)?;
            } else {
                self.udp_expect(&addr, None)?;
            }
            let (host, port) = Self::split(&addr);
            let out = self.echo(&[
                "weighted",
                protocol,
                host,
                port,
                "--requests",
                if protocol == "tcp" { "100" } else { "20" },
                "--concurrency",
                "1",
            ])?;
            let only_older = out
                .lines()
                .all(|l| l.starts_with(&format!("{backend}=")) || l == "errors=0");
            only_older
                .then_some(())
                .ok_or_else(|| format!("not only {backend}: {out}"))
        }
        .await;
        let _ = self
            .api(kind, Some(INFRA))
            .delete(&newer, &DeleteParams::default())
            .await;
        outcome
    }

    async fn invalid_tls_backend(&self, gw: &str, route: &str, reason: &'static str) -> Outcome {
        self.ready(gw).await?;
        let addr = self
            .accepted_with_routes(gw, None, "TLSRoute", &[route])
            .await?;
        self.route_condition("TLSRoute", route, gw, ("ResolvedRefs", "False", reason))
            .await?;
        self.tls_rejected(&addr, "example.com")
    }

    async fn tls_hostname_intersection(&self) -> Outcome {
        let groups: [Intersection; 4] = [
            (
                "gw-tlsroute-exact-hostname-x-1",
                &["tlsroute-more-specific-wc-hostname-x-1"],
                &[("abc.example.com", "tls-backend")],
                "non.matching.com",
            ),
            (
                "gw-tlsroute-more-specific-wc-hostname-x-2",
                &[
                    "tlsroute-exact-hostname-x-2",
                    "tlsroute-less-specific-wc-hostname-x-2",
                ],
                &[
                    ("abc.example.com", "tls-backend"),
                    ("other.example.com", "tls-backend-2"),
                ],
                "non.matching.com",
            ),
            (
                "gw-tlsroute-less-specific-wc-hostname-x-3",
                &[
                    "tlsroute-exact-hostname-x-3",
                    "tlsroute-more-specific-wc-hostname-x-3",
                ],
                &[
                    ("abc.example.com", "tls-backend"),
                    ("other.example.com", "tls-backend-2"),
                ],
                "non.matching.com",
            ),
            (
                "gw-tlsroute-empty-hostname-x-4",
                &[
                    "tlsroute-exact-hostname-x-4",
                    "tlsroute-less-specific-wc-hostname-x-4",
                ],
                &[
                    ("abc.example.com", "tls-backend"),
                    ("other.example.com", "tls-backend-2"),
                ],
                "non.matching.org",
            ),
        ];
        for (gw, routes, reached, refused) in groups {
            self.ready(gw).await?;
            let addr = self
                .accepted_with_routes(gw, None, "TLSRoute", routes)
                .await?;
            for route in routes {
                self.route_condition(
                    "TLSRoute",
                    route,
                    gw,
                    ("ResolvedRefs", "True", "ResolvedRefs"),
                )
                .await?;
            }
            for (name, backend) in reached {
                self.https_expect(&addr, name, backend)?;
            }
            self.tls_rejected(&addr, refused)?;
        }
        Ok(())
    }

    async fn tls_no_matching_listener(&self) -> Outcome {
        for gw in [
            "gateway-tlsroute-http-only",
            "gateway-tlsroute-https-only",
            "gateway-tlsroute-tls-passthrough-only",
        ] {
            self.ready(gw).await?;
        }
        let cases = [
            (
                "tlsroute-not-allowed-protocol-http",
                "gateway-tlsroute-http-only",
                "NotAllowedByListeners",
            ),
            (
                "tlsroute-not-allowed-protocol-https",
                "gateway-tlsroute-https-only",
                "NotAllowedByListeners",
            ),
            (
                "tlsroute-no-matching-section-name",
                "gateway-tlsroute-tls-passthrough-only",
                "NoMatchingParent",
            ),
        ];
        for (route, gw, reason) in cases {
            self.route_condition("TLSRoute", route, gw, ("Accepted", "False", reason))
                .await?;
        }
        for (route, _, _) in cases {
            self.no_accepted_parents("TLSRoute", route).await?;
        }
        for gw in ["gateway-tlsroute-http-only", "gateway-tlsroute-https-only"] {
            self.zero_routes(gw).await?;
        }
        Ok(())
    }
}

/// The profiles ironlb's features reach, with their core and extended
/// features (upstream's `conformance/utils/suite/profiles.go`).
fn profiles() -> Vec<(&'static str, Vec<&'static str>, Vec<&'static str>)> {
    let gateway_extended = vec![
        "GatewayPort8080",
        "GatewayStaticAddresses",
        "GatewayHTTPListenerIsolation",
        "GatewayHTTPSListenerDetectMisdirectedRequests",
        "GatewayInfrastructurePropagation",
        "GatewayAddressEmpty",
        "GatewayBackendClientCertificate",
        "GatewayFrontendClientCertificateValidation",
        "GatewayFrontendClientCertificateValidationInsecureFallback",
        "ListenerSet",
    ];
    let with = |extra: &[&'static str]| {
        let mut all = gateway_extended.clone();
        all.extend_from_slice(extra);
        all
    };
    vec![
        (
            "GATEWAY-TCP",
            vec!["Gateway", "TCPRoute", "ReferenceGrant"],
            with(&["TCPRoute"]),
        ),
        (
            "GATEWAY-TLS",
            vec!["Gateway", "ReferenceGrant", "TLSRoute"],
            with(&["TLSRouteModeTerminate", "TLSRouteModeMixed"]),
        ),
        (
            "GATEWAY-UDP",
            vec!["Gateway", "UDPRoute", "ReferenceGrant"],
            with(&["UDPRoute"]),
        ),
    ]
}

/// The run as upstream's `ConformanceReport`, without its date (so the
/// committed copy changes only when a result does); skipped tests carry
/// their reason as a comment.
fn report(results: &[(&Case, Verdict)], claimed: &[String]) -> String {
    let mut out = format!(
        "# Generated by tests/conformance.rs (IRONLB_WRITE_DOCS=1 cargo test --test conformance);\n\
         # the run's date is left out so that this file changes only with a result.\n\
         apiVersion: gateway.networking.k8s.io/v1\n\
         gatewayAPIChannel: standard\n\
         gatewayAPIVersion: {GATEWAY_API_VERSION}\n\
         implementation:\n  contact:\n  - https://github.com/ironlb/ironlb/issues\n  organization: ironlb\n  project: ironlb\n  url: https://github.com/ironlb/ironlb\n  version: v{}\n\
         kind: ConformanceReport\nmode: default\nprofiles:\n",
        env!("CARGO_PKG_VERSION")
    );
    for (name, core, extended) in profiles() {
        let mut blocks = Vec::new();
        for level in ["core", "extended"] {
            let mut passed = 0;
            let (mut failed, mut skipped) = (Vec::new(), Vec::new());
            for (case, verdict) in results {
                let in_profile = case.reported
                    && case
                        .features
                        .iter()
                        .all(|f| core.contains(f) || extended.contains(f));
                let is_extended = case.features.iter().any(|f| !core.contains(f));
                if !in_profile || is_extended != (level == "extended") {
                    continue;
                }
                match verdict {
                    Verdict::Passed => passed += 1,
                    Verdict::Failed(_) => failed.push(case.name.to_string()),
                    Verdict::Skipped(why) => skipped.push(format!("{}  # {why}", case.name)),
                    Verdict::NotSupported => {}
                }
            }
            if level == "extended" && passed + failed.len() + skipped.len() == 0 {
                continue;
            }
            let result = if !failed.is_empty() {
                "failure"
            } else if !skipped.is_empty() {
                "partial"
            } else {
                "success"
            };
            let mut block = format!("  {level}:\n");
            if !failed.is_empty() {
                block.push_str(&format!("    failedTests:\n{}", list(&failed, 4)));
            }
            block.push_str(&format!("    result: {result}\n"));
            if !skipped.is_empty() {
                block.push_str(&format!("    skippedTests:\n{}", list(&skipped, 4)));
            }
            block.push_str(&format!(
                "    statistics:\n      Failed: {}\n      Passed: {passed}\n      Skipped: {}\n",
                failed.len(),
                skipped.len()
            ));
            if level == "extended" {
                let (supported, unsupported): (Vec<&str>, Vec<&str>) = extended
                    .iter()
                    .partition(|f| claimed.iter().any(|c| c == *f));
                let sorted = |mut v: Vec<&str>| {
                    v.sort();
                    v.dedup();
                    v.into_iter().map(String::from).collect::<Vec<_>>()
                };
                block.push_str(&format!(
                    "    supportedFeatures:\n{}",
                    list(&sorted(supported), 4)
                ));
                block.push_str(&format!(
                    "    unsupportedFeatures:\n{}",
                    list(&sorted(unsupported), 4)
                ));
            }
            let words = match result {
                "success" => "succeeded".to_string(),
                "partial" => format!("partially succeeded with {} test skips", skipped.len()),
                _ => format!("failed with {} test failures", failed.len()),
            };
            blocks.push((
                block,
                format!(
                    "{} tests {words}",
                    if level == "core" { "Core" } else { "Extended" }
                ),
            ));
        }
        let mut first = true;
        for (block, _) in &blocks {
            let block = if first {
                block.replacen("  ", "- ", 1)
            } else {
                block.clone()
            };
            first = false;
            out.push_str(&block);
        }
        let summary: Vec<&str> = blocks.iter().map(|(_, s)| s.as_str()).collect();
        out.push_str(&format!(
            "  name: {name}\n  summary: {}.\n",
            summary.join(". ")
        ));
    }
    let mut provisional: Vec<String> = results
        .iter()
        .filter(|(c, v)| c.provisional && matches!(v, Verdict::Passed))
        .map(|(c, _)| c.name.to_string())
        .collect();
    provisional.sort();
    out.push_str(&format!(
        "succeededProvisionalTests:\n{}",
        list(&provisional, 0)
    ));
    out
}

fn list(items: &[String], indent: usize) -> String {
    items
        .iter()
        .map(|i| format!("{}- {i}\n", " ".repeat(indent)))
        .collect()
}

/// The report must be the one in docs/ (`IRONLB_WRITE_DOCS=1` writes it).
fn check_report(report: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/conformance-report.yaml");
    if std::env::var_os("IRONLB_WRITE_DOCS").is_some() {
        std::fs::write(&path, report).expect("write the report");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        committed, report,
        "docs/conformance-report.yaml differs from this run's results: regenerate it with \
         IRONLB_WRITE_DOCS=1 cargo test --test conformance"
    );
}
