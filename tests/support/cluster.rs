//! A real Kubernetes cluster for the end-to-end tests: the one
//! `IRONLB_E2E_KUBECONFIG` names (in CI, the control plane `.ci/run` starts).
//!
//! The tests share it, so they take [`Cluster::lock`] for their whole run and
//! leave nothing behind: what they create carries the test process's id and is
//! deleted at the end, even when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// One end-to-end test at a time: controllers watch every pool in the cluster,
/// so two tests' controllers would judge each other's pools.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The cluster under test.
pub struct Cluster {
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    kubectl: PathBuf,
    /// `https://host:port` of the API server.
    pub server: String,
    ca_data: String,
    /// The API server's process, when it is the local control plane
    /// (`IRONLB_K8S_DIR`): tests can freeze it.
    apiserver_pid: Option<u32>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    /// The cluster `IRONLB_E2E_KUBECONFIG` names, once no other test of this
    /// process uses it; `None` (after printing why) when the variable is not
    /// set. With `CI=true` that is a failure, never a skip.
    pub async fn lock(test: &str) -> Option<Self> {
        let Ok(path) = std::env::var("IRONLB_E2E_KUBECONFIG") else {
            super::netns::skip(
                test,
                Some(
                    "IRONLB_E2E_KUBECONFIG is not set (point it at a cluster's kubeconfig, \
                     or run .ci/run, which starts a control plane)"
                        .into(),
                ),
            );
            return None;
        };
        let turn = ONE_AT_A_TIME.lock().await;
        let kubeconfig = PathBuf::from(path);
        let kc = Kubeconfig::read_from(&kubeconfig)
            .unwrap_or_else(|e| panic!("reading {}: {e}", kubeconfig.display()));
        let cluster = kc
            .clusters
            .first()
            .and_then(|c| c.cluster.clone())
            .expect("the kubeconfig names a cluster");
        let kubectl = std::env::var_os("IRONLB_K8S_KUBECTL")
            .map(PathBuf::from)
            .unwrap_or_else(|| "kubectl".into());
        let apiserver_pid = std::env::var_os("IRONLB_K8S_DIR").and_then(|dir| {
            let pid = std::fs::read_to_string(Path::new(&dir).join("run/kube-apiserver.pid"));
            pid.ok()?.trim().parse().ok()
        });
        Some(Self {
            kubeconfig,
            kubectl,
            server: cluster.server.expect("the cluster has a server"),
            ca_data: cluster
                .certificate_authority_data
                .expect("the cluster's certificate-authority-data"),
            apiserver_pid,
            _turn: turn,
        })
    }

    /// An admin client.
    pub async fn client(&self) -> kube::Client {
        self.client_from(&self.kubeconfig).await
    }

    /// A client using `kubeconfig`.
    pub async fn client_from(&self, kubeconfig: &Path) -> kube::Client {
        let kc = Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        kube::Client::try_from(config).expect("client")
    }

    /// Runs kubectl as admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.kubeconfig, args)
    }

    /// Whether this is the local control plane (`IRONLB_K8S_DIR`), which the
    /// tests may change beyond their own objects.
    pub fn is_local(&self) -> bool {
        self.apiserver_pid.is_some()
    }

    /// The kubectl binary the tests run.
    pub fn kubectl_program(&self) -> &Path {
        &self.kubectl
    }

    /// Runs kubectl as whoever `kubeconfig` names.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{} {args:?}: {e}", self.kubectl.display()))
    }

    /// Runs kubectl as admin; panics with its output when it fails, returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a kubeconfig into `dir` that authenticates as ServiceAccount
    /// `namespace/name` with a fresh token (`kubectl create token`), never as
    /// admin, reaching the API server at `server` (default: the admin's).
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        dir: &Path,
        server: Option<&str>,
    ) -> PathBuf {
        let token =
            self.kubectl_ok(&["create", "token", name, "-n", namespace, "--duration", "1h"]);
        self.token_kubeconfig(&format!("{namespace}-{name}"), token.trim(), dir, server)
    }

    /// The host and port of the API server.
    pub fn server_addr(&self) -> std::net::SocketAddr {
        let hostport = self
            .server
            .trim_start_matches("https://")
            .trim_end_matches('/');
        use std::net::ToSocketAddrs;
        hostport
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("API server address {hostport}"))
    }

    /// Stops the API server's process (SIGSTOP) until the guard is dropped, as a
    /// control plane that hangs; `None` when the cluster is not the local one.
    pub fn freeze(&self) -> Option<Frozen> {
        let pid = self.apiserver_pid?;
        signal(pid, "STOP");
        Some(Frozen { pid })
    }

    /// Applies `deploy/` server-side, as a user installs ironlb, refusing any
    /// warning, and waits until its CRDs are served. Dropped, the guard deletes
    /// everything it applied.
    pub fn install(&self) -> Installed<'_> {
        self.install_kustomization("deploy")
    }

    /// [`Cluster::install`] with the Gateway API feature: the overlay
    /// `deploy/overlays/gateway` (the base and the component).
    pub fn install_with_gateway(&self) -> Installed<'_> {
        self.install_kustomization("deploy/overlays/gateway")
    }

    /// `deploy/` with `components` of `deploy/components/`, as a user's own
    /// overlay lists them (written under `target/e2e-overlays/`: kustomize
    /// takes only relative paths).
    pub fn install_with(&self, components: &[&str]) -> Installed<'_> {
        self.install_kustomization(&overlay(components))
    }

    fn install_kustomization(&self, dir: &str) -> Installed<'_> {
        self.wait_for_terminating_crds();
        let path = self.apply_kustomization(dir);
        self.wait_for_crds();
        Installed {
            cluster: self,
            path,
        }
    }

    /// Waits until ironlb's CRDs that a previous test deleted are gone: the
    /// API server's CRD cleanup backs off while a CRD's storage
    /// re-initialises, and on a control plane that churned them many times
    /// it can outlast the previous test's uninstall; applying then would
    /// keep the terminating CRD, which refuses every create.
    fn wait_for_terminating_crds(&self) {
        let terminating = self.kubectl_ok(&[
            "get",
            "crd",
            "-o",
            r#"jsonpath={range .items[?(@.metadata.deletionTimestamp)]}{.metadata.name}{"\n"}{end}"#,
        ]);
        let names: Vec<String> = terminating
            .lines()
            .filter(|n| n.ends_with(".ironlb.dev"))
            .map(|n| format!("crd/{n}"))
            .collect();
        if names.is_empty() {
            return;
        }
        eprintln!("waiting for the terminating CRDs {names:?} to go");
        let mut wait = vec!["wait", "--for=delete", "--timeout=300s"];
        wait.extend(names.iter().map(String::as_str));
        let out = self.kubectl(&wait);
        // Gone between the list and the wait is fine too.
        if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("NotFound") {
            panic!(
                "the CRDs {names:?} stayed terminating: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Waits until ironlb's CRDs are served.
    fn wait_for_crds(&self) {
        let crds: Vec<String> = ironlb::api::crds()
            .iter()
            .map(|c| format!("crd/{}", c.metadata.name.as_deref().unwrap_or_default()))
            .collect();
        let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        wait.extend(crds.iter().map(String::as_str));
        self.kubectl_ok(&wait);
    }

    /// Applies `dir` (of this repository) server-side, as a user does,
    /// refusing any warning; returns its path.
    fn apply_kustomization(&self, dir: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let path = path.to_str().expect("utf-8 path").to_string();
        self.kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--warnings-as-errors",
            "-k",
            &path,
        ]);
        path
    }

    /// A kubeconfig for the speaker of node `node`, as the kubelet gives a
    /// speaker Pod: a token of the ServiceAccount `ironlb-speaker` bound to a
    /// Pod on that node, so the API server knows the node
    /// (`authentication.kubernetes.io/node-name`), which the policy
    /// `ironlb-speaker-writes-own-node` holds the speaker to. The Pod (which
    /// no kubelet runs) goes with the install.
    pub fn speaker_kubeconfig(&self, node: &str, dir: &Path, server: Option<&str>) -> PathBuf {
        let pod = format!("{SPEAKER_TOKEN_POD}-{node}");
        let manifest = dir.join(format!("{pod}.yaml"));
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: ironlb-system\n  \
                 labels: {{{SPEAKER_TOKEN_LABEL}: \"true\"}}\nspec:\n  nodeName: {node}\n  \
                 serviceAccountName: ironlb-speaker\n  containers: [{{name: speaker, image: ironlb-e2e/none}}]\n"
            ),
        )
        .expect("write the Pod");
        self.kubectl_ok(&["apply", "-f", manifest.to_str().expect("utf-8 path")]);
        let uid = self.kubectl_ok(&[
            "get",
            "pod",
            &pod,
            "-n",
            "ironlb-system",
            "-o",
            "jsonpath={.metadata.uid}",
        ]);
        let token = self.kubectl_ok(&[
            "create",
            "token",
            "ironlb-speaker",
            "-n",
            "ironlb-system",
            "--duration",
            "1h",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            &pod,
            "--bound-object-uid",
            uid.trim(),
        ]);
        self.token_kubeconfig(&format!("ironlb-speaker-{node}"), token.trim(), dir, server)
    }

    fn token_kubeconfig(
        &self,
        user: &str,
        token: &str,
        dir: &Path,
        server: Option<&str>,
    ) -> PathBuf {
        let path = dir.join(format!("{user}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    \
             user: {user}\ncurrent-context: e2e\nusers:\n- name: {user}\n  user:\n    token: {token}\n",
            server.unwrap_or(&self.server),
            self.ca_data,
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }
}

/// Writes an overlay of `deploy/base` with `components`; returns its
/// directory, relative to the repository.
fn overlay(components: &[&str]) -> String {
    let dir = format!("target/e2e-overlays/{}", components.join("-"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(root.join(&dir)).expect("the overlay's directory");
    let listed: Vec<String> = components
        .iter()
        .map(|c| format!("../../../deploy/components/{c}"))
        .collect();
    std::fs::write(
        root.join(&dir).join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources: [../../../deploy/base]\ncomponents: [{}]\n",
            listed.join(", ")
        ),
    )
    .expect("write the overlay");
    dir
}

/// The Pods [`Cluster::speaker_kubeconfig`] binds tokens to: name prefix and
/// label.
const SPEAKER_TOKEN_POD: &str = "ironlb-e2e-speaker";
const SPEAKER_TOKEN_LABEL: &str = "ironlb.dev/e2e-speaker-token";

/// `deploy/` (or an overlay of it) applied to the cluster; dropped, it is
/// deleted again.
pub struct Installed<'a> {
    cluster: &'a Cluster,
    path: String,
}

impl Cluster {
    /// The guard of an install made from `dir` (applied by the caller, for
    /// manifests older than today's, which may not pass
    /// `--warnings-as-errors`); [`Installed::upgrade`] applies today's over it.
    pub fn install_previous(&self, dir: &str) -> Installed<'_> {
        Installed {
            cluster: self,
            path: dir.to_string(),
        }
    }
}

impl Installed<'_> {
    /// Applies today's `deploy/` over what is installed, as an upgrade does,
    /// and waits until its CRDs are served.
    pub fn upgrade(&mut self) {
        self.path = self.cluster.apply_kustomization("deploy");
        self.cluster.wait_for_crds();
    }

    /// Adds `components` to what is installed, as a user applies an overlay
    /// with them over `deploy/`.
    pub fn add_components(&mut self, components: &[&str]) {
        self.path = self.cluster.apply_kustomization(&overlay(components));
    }
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        // The controller is gone by now, so nobody would release the pools
        // that still protect addresses: do it as an operator uninstalling
        // ironlb would (docs/install.md).
        let pools = self
            .cluster
            .kubectl(&["get", "ipaddresspools.ironlb.dev", "-o", "name"]);
        for pool in String::from_utf8_lossy(&pools.stdout).lines() {
            let _ = self.cluster.kubectl(&[
                "patch",
                pool,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        }
        // Pods on a node wait for its kubelet to confirm their end; these
        // have none.
        let _ = self.cluster.kubectl(&[
            "delete",
            "pods",
            "-n",
            "ironlb-system",
            "-l",
            SPEAKER_TOKEN_LABEL,
            "--grace-period=0",
            "--force",
        ]);
        let out = self.cluster.kubectl(&[
            "delete",
            "--ignore-not-found",
            "--wait=true",
            "--timeout=120s",
            "-k",
            &self.path,
        ]);
        if !out.status.success() {
            eprintln!(
                "removing {} failed: {}",
                self.path,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A frozen API server; dropped (even by a failing test), it runs again.
pub struct Frozen {
    pid: u32,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.pid, "CONT");
    }
}

fn signal(pid: u32, name: &str) {
    let out = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .output()
        .expect("kill");
    assert!(out.status.success(), "kill -{name} {pid}");
}

/// How long the real API server may take to show a change the tests wait for.
pub const PATIENCE: Duration = Duration::from_secs(30);
