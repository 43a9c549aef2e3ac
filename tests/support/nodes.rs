//! Real Kubernetes nodes for tests, as kind makes them but with network
//! namespaces instead of containers: each node is a namespace on the lab's
//! switch running its own containerd (own root, state and socket), kubelet
//! and kube-proxy, so a `hostNetwork` Pod shares the node's namespace and a
//! Pod with its own network hangs off the node's CNI bridge. The API server
//! of the local control plane (`../shared/k8s/up`) stays on the root
//! namespace's loopback: the lab relays it onto each node's loopback (for
//! the node's own components) and onto a lab address that the `kubernetes`
//! Service's endpoints name, so Pods reach it through `10.96.0.1` as on any
//! cluster. kube-scheduler runs in that address's namespace.
//!
//! Everything a node runs shares one mount namespace, held by a process
//! started with the node: Pod volumes, container root filesystems, Pod
//! network namespaces and CNI state are mounted there and vanish with it.
//! Its cgroups hang under a root named after the node. Stopping a node kills
//! every process of its mount namespace, its network namespace and its
//! cgroups (containerd's shims and the Pods' processes included); dropping
//! [`Nodes`] does that for every node, removes the cgroups, the Node objects
//! and the `kubernetes` endpoints it wrote, then the lab. Nothing is added
//! to the root namespace's interfaces, routes or iptables.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::Cluster;
use super::netns::{Lab, relay};

/// The lab's segment: nodes at `.11`, `.12`…, the API server's relay at
/// [`API_ADDRESS`]; tests plug clients elsewhere in it.
pub const SUBNET: &str = "10.77.0";

/// Where Pods reach the API server (behind `10.96.0.1`).
pub const API_ADDRESS: &str = "10.77.0.250";

/// Node `i`'s Pod network (1-based).
pub fn pod_cidr(i: usize) -> String {
    format!("10.244.{i}.0/24")
}

/// A search path with the sbin directories: containerd looks up `runc`,
/// kube-proxy `iptables`, kubelet `mount`.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Debian packages the nodes need, by a command each provides.
const PACKAGES: &[(&str, &str)] = &[
    ("containerd", "containerd"),
    ("ctr", "containerd"),
    ("runc", "runc"),
    ("conntrack", "conntrack"),
    ("iptables", "iptables"),
    ("umoci", "umoci"),
    ("nsenter", "util-linux"),
    ("gcc", "gcc"),
    ("xz", "xz-utils"),
];

/// Why real nodes can't run here, or `None` when they can.
pub fn unavailable() -> Option<String> {
    if let Some(why) = super::netns::unavailable() {
        return Some(why);
    }
    if let Some((cmd, package)) = PACKAGES.iter().find(|(cmd, _)| !on_path(cmd)) {
        return Some(format!(
            "{cmd} is not installed (Debian package {package}; ./scripts/test installs it)"
        ));
    }
    let cni = Path::new("/usr/lib/cni/bridge");
    if !cni.exists() {
        return Some(format!(
            "{} is missing (Debian package containernetworking-plugins)",
            cni.display()
        ));
    }
    if !node_binaries_dir().join("SHA256SUMS").exists() {
        return Some(format!(
            "{} holds no kubelet (the shared node binaries)",
            node_binaries_dir().display()
        ));
    }
    None
}

fn on_path(cmd: &str) -> bool {
    PATH.split(':').any(|dir| Path::new(dir).join(cmd).exists())
}

fn node_binaries_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/k8s/node/bin")
}

/// An image to load on every node: an OCI archive and the name it gets.
struct Image {
    /// The archive (an OCI layout in a tar file), tagged inside.
    pub archive: PathBuf,
    /// The name without the tag, e.g. `ghcr.io/ironlb/ironlb`.
    pub name: String,
}

/// A set of running nodes and the lab they live in.
pub struct Nodes {
    /// The lab: its namespaces and processes.
    pub lab: Lab,
    /// The switch every node, the API relay and the tests' clients plug into.
    pub switch: String,
    /// The nodes' names (also their namespaces'), node 1 first.
    pub names: Vec<String>,
    /// What every node shares with the test: how to reach the API server.
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    /// Per node: its mount namespace (`mnt:[…]`) and network namespace.
    namespaces: Vec<(String, String)>,
    relays: Vec<tokio::task::JoinHandle<()>>,
    /// Directories of [`WRITTEN_OUTSIDE`] made for the nodes.
    made: Vec<PathBuf>,
}

/// What stays the same for every node of a set.
struct Shared<'a> {
    bin: &'a Path,
    images: &'a [Image],
    cgroups: &'a Path,
    holder: &'a Path,
}

impl Nodes {
    /// Starts `count` nodes (1 to 9) holding the sandbox image, ironlb's
    /// image (built from the binary under test, named as `deploy/` names
    /// it) and the backend image ([`ECHO_IMAGE`]), once the API server's
    /// relays and kube-scheduler run; returns when every Node is Ready.
    /// `None` (after printing why) where nodes can't run; with `CI=true`
    /// that is a failure.
    pub fn start(cluster: &Cluster, test: &str, count: usize) -> Option<Self> {
        assert!((1..=9).contains(&count), "1 to 9 nodes");
        let why = unavailable().or_else(|| {
            (!cluster.is_local()).then(|| {
                "real nodes run only on the local control plane (../shared/k8s/up): they \
                 register Nodes and point the kubernetes Service at the lab"
                    .to_string()
            })
        });
        if super::netns::skip(test, why) {
            return None;
        }
        let mut lab = Lab::new(test)?;
        let bin = node_binaries();
        let images_all = [
            static_image(lab.dir(), "pause", "registry.k8s.io/pause:3.9"),
            static_image(lab.dir(), "echo", ECHO_IMAGE),
            ironlb_image(lab.dir()),
        ];
        let switch = lab.switch();
        let api = lab.namespace("api");
        lab.plug(&switch, &api, "papi", &[&format!("{API_ADDRESS}/24")]);
        let names = lab.plug_nodes(&switch, SUBNET, count);
        let mut nodes = Self {
            lab,
            switch,
            names,
            kubectl: cluster.kubectl_program().to_path_buf(),
            kubeconfig: cluster.kubeconfig.clone(),
            namespaces: Vec::new(),
            relays: Vec::new(),
            made: Vec::new(),
        };
        nodes.route_pods(&api);
        nodes.relay_api(cluster, &api);
        for dir in WRITTEN_OUTSIDE
            .map(Path::new)
            .iter()
            .filter(|d| !d.exists())
        {
            std::fs::create_dir_all(dir).expect("a directory the nodes hide");
            nodes.made.push(dir.to_path_buf());
        }
        let cgroups = nodes.lab.dir().join("cgroups.list");
        std::fs::write(&cgroups, cgroup_mounts()).expect("write the cgroup list");
        let holder = nodes.lab.dir().join("holder.sh");
        std::fs::write(&holder, HOLDER).expect("write the holder script");
        let shared = Shared {
            bin: &bin,
            images: &images_all,
            cgroups: &cgroups,
            holder: &holder,
        };
        for i in 1..=count {
            nodes.start_node(i, &shared);
        }
        let log = nodes.lab.dir().join("kube-scheduler.log");
        let scheduler = bin.join("kube-scheduler");
        let kubeconfig = nodes.kubeconfig.to_str().expect("utf-8 path").to_string();
        nodes.lab.spawn(
            &api,
            scheduler.to_str().expect("utf-8 path"),
            &[
                "--kubeconfig",
                &kubeconfig,
                "--authentication-kubeconfig",
                &kubeconfig,
                "--authorization-kubeconfig",
                &kubeconfig,
                "--leader-elect=false",
            ],
            &log,
        );
        nodes.wait_ready(cluster);
        Some(nodes)
    }

    /// Waits until every node registered its Node object and says Ready.
    fn wait_ready(&self, cluster: &Cluster) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let ready = |name: &str| {
            let out = cluster.kubectl(&[
                "get",
                "node",
                name,
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
            ]);
            out.status.success() && String::from_utf8_lossy(&out.stdout) == "True"
        };
        while !self.names.iter().all(|n| ready(n)) {
            assert!(
                Instant::now() < deadline,
                "the nodes did not become Ready in 90 s\n{}",
                self.logs(1, "kubelet")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The address of node `i` (1-based) on the switch.
    pub fn address(&self, i: usize) -> String {
        format!("{SUBNET}.1{i}")
    }

    /// The last lines of node `i`'s `component` log (`kubelet`,
    /// `containerd`, `kube-proxy`).
    pub fn logs(&self, i: usize, component: &str) -> String {
        let path = self.node_dir(i).join(format!("{component}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} (last 30 lines)\n{}",
            path.display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    /// The last `lines` lines of every container log of the Pods whose
    /// namespace and name start with `prefix` (`NAMESPACE_NAME`), on every
    /// node. Read from the nodes' log directories: the API server cannot
    /// reach a kubelet inside the lab, so `kubectl logs` does not work.
    pub fn pod_logs(&self, prefix: &str, lines: usize) -> String {
        let mut out = String::new();
        for i in 1..=self.names.len() {
            let Ok(pods) = std::fs::read_dir(self.node_dir(i).join("pod-logs")) else {
                continue;
            };
            for pod in pods
                .flatten()
                .filter(|p| p.file_name().to_string_lossy().starts_with(prefix))
            {
                for container in std::fs::read_dir(pod.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    for file in std::fs::read_dir(container.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                    {
                        let text = std::fs::read_to_string(file.path()).unwrap_or_default();
                        let all: Vec<&str> = text.lines().collect();
                        out.push_str(&format!(
                            "--- {} ({})\n{}\n",
                            file.path().display(),
                            self.names[i - 1],
                            all[all.len().saturating_sub(lines)..].join("\n")
                        ));
                    }
                }
            }
        }
        out
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.lab.dir().join(format!("n{i}"))
    }

    /// Each node routes the other nodes' Pod networks to them, and the API
    /// relay's namespace routes every Pod network back (CNI masquerades
    /// nothing, so Pods keep their addresses across the switch). A node's
    /// default route leads to the API relay's namespace, which forwards
    /// nothing: a connection from the node itself to `10.96.0.1` needs a
    /// route before kube-proxy rewrites it, as on any node. Nodes forward
    /// IP, as kubeadm requires.
    fn route_pods(&mut self, api: &str) {
        for i in 1..=self.names.len() {
            self.lab.exec_ok(
                &self.names[i - 1],
                &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
            );
            self.lab.exec_ok(
                &self.names[i - 1],
                &["ip", "route", "add", "default", "via", API_ADDRESS],
            );
            for j in (1..=self.names.len()).filter(|j| *j != i) {
                self.lab.exec_ok(
                    &self.names[i - 1],
                    &["ip", "route", "add", &pod_cidr(j), "via", &self.address(j)],
                );
            }
            self.lab.exec_ok(
                api,
                &["ip", "route", "add", &pod_cidr(i), "via", &self.address(i)],
            );
        }
    }

    /// The API server, relayed onto every node's loopback and the API
    /// namespace's (same port, so the admin kubeconfig works unchanged), and
    /// onto [`API_ADDRESS`], which the `kubernetes` Service's endpoints name.
    fn relay_api(&mut self, cluster: &Cluster, api: &str) {
        let target = cluster.server_addr();
        let port = target.port();
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        for ns in self.names.iter().chain([&api.to_string()]) {
            self.relays.push(relay(ns, loopback, target));
        }
        let lab_address = format!("{API_ADDRESS}:{port}").parse().expect("address");
        self.relays.push(relay(api, lab_address, target));
        let slice = format!(
            r#"{{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {{"name": "{ENDPOINTS}", "namespace": "default",
                  "labels": {{"kubernetes.io/service-name": "kubernetes",
                             "endpointslice.kubernetes.io/managed-by": "lab.ironlb.dev"}}}},
                "addressType": "IPv4",
                "endpoints": [{{"addresses": ["{API_ADDRESS}"], "conditions": {{"ready": true}}}}],
                "ports": [{{"name": "https", "port": {port}, "protocol": "TCP"}}]}}"#
        );
        let file = self.lab.dir().join("kubernetes-endpoints.json");
        std::fs::write(&file, slice).expect("write the endpoints");
        cluster.kubectl_ok(&["apply", "-f", file.to_str().expect("utf-8 path")]);
    }

    fn start_node(&mut self, i: usize, shared: &Shared<'_>) {
        let name = self.names[i - 1].clone();
        let dir = self.node_dir(i);
        std::fs::create_dir_all(dir.join("cni")).expect("node directory");
        for path in cgroup_paths(shared.cgroups, &name) {
            std::fs::create_dir_all(&path)
                .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        }
        // A new cpuset cgroup may use no CPU until told which.
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let parent = Path::new("/sys/fs/cgroup/cpuset").join(file);
            if let Ok(value) = std::fs::read_to_string(&parent) {
                let _ = std::fs::write(
                    Path::new("/sys/fs/cgroup/cpuset").join(&name).join(file),
                    value,
                );
            }
        }
        let holder = self.lab.spawn(
            &name,
            "/bin/sh",
            &[
                shared.holder.to_str().expect("utf-8 path"),
                shared.cgroups.to_str().expect("utf-8 path"),
            ],
            &dir.join("holder.log"),
        );
        let holder = self.lab.pid(holder);
        wait_until(&format!("{name}'s mount namespace"), || {
            std::fs::read_to_string(format!("/proc/{holder}/comm"))
                .is_ok_and(|c| c.trim() == "sleep")
        });
        let ns_of = |kind: &str| {
            std::fs::read_link(format!("/proc/{holder}/ns/{kind}"))
                .map(|l| l.display().to_string())
                .unwrap_or_else(|e| panic!("{name}'s {kind} namespace: {e}"))
        };
        self.namespaces.push((ns_of("mnt"), ns_of("net")));
        let config = NodeConfig {
            index: i,
            name: &name,
            dir: &dir,
            kubeconfig: &self.kubeconfig,
        };
        for (file, text) in [
            ("containerd.toml", config.containerd()),
            ("kubelet.yaml", config.kubelet()),
            ("kube-proxy.yaml", config.kube_proxy()),
            ("cni/10-lab.conflist", config.cni()),
        ] {
            std::fs::write(dir.join(file), text).expect("write a node's configuration");
        }
        let path = |file: &str| dir.join(file).to_str().expect("utf-8 path").to_string();
        self.run_on(
            holder,
            &dir,
            "containerd",
            "containerd",
            &["--config", &path("containerd.toml")],
        );
        let socket = dir.join("containerd.sock");
        wait_until(&format!("containerd of {name}"), || socket.exists());
        for image in shared.images {
            let out = Command::new("ctr")
                .args([
                    "-a",
                    &path("containerd.sock"),
                    "-n",
                    "k8s.io",
                    "images",
                    "import",
                ])
                .args(["--base-name", &image.name])
                .arg(&image.archive)
                .output()
                .expect("ctr");
            assert!(
                out.status.success(),
                "importing {} on {name}: {}",
                image.archive.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let kubelet = shared.bin.join("kubelet");
        let kubeconfig = self.kubeconfig.to_str().expect("utf-8 path").to_string();
        self.run_on(
            holder,
            &dir,
            "kubelet",
            kubelet.to_str().expect("utf-8 path"),
            &[
                "--config",
                &path("kubelet.yaml"),
                "--kubeconfig",
                &kubeconfig,
                "--root-dir",
                &path("kubelet"),
                "--cert-dir",
                &path("kubelet/pki"),
                "--hostname-override",
                &name,
                "--node-ip",
                &self.address(i),
            ],
        );
        let proxy = shared.bin.join("kube-proxy");
        self.run_on(
            holder,
            &dir,
            "kube-proxy",
            proxy.to_str().expect("utf-8 path"),
            &["--config", &path("kube-proxy.yaml")],
        );
    }

    /// Starts `program` in the namespaces of node process `holder`; its
    /// output goes to `dir/{log}.log`.
    fn run_on(&mut self, holder: u32, dir: &Path, log: &str, program: &str, args: &[&str]) {
        let file = std::fs::File::create(dir.join(format!("{log}.log"))).expect("log file");
        let child = Command::new("nsenter")
            .args(["-t", &holder.to_string(), "-m", "-n", "--", program])
            .args(args)
            .env("PATH", PATH)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        self.lab.adopt(child);
    }

    /// Every process of node `i`: in its mount or network namespace or
    /// under its cgroups.
    fn processes(&self, i: usize) -> Vec<u32> {
        let (mnt, net) = &self.namespaces[i - 1];
        let name = &self.names[i - 1];
        let mut pids: Vec<u32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let ns = |kind: &str| {
                    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
                        .map(|l| l.display().to_string())
                        .unwrap_or_default()
                };
                ns("mnt") == *mnt
                    || ns("net") == *net
                    || std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                        .is_ok_and(|c| c.lines().any(|l| l.contains(&format!(":/{name}/"))))
            })
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Node `i` loses its power: every process it runs (kubelet,
    /// containerd, kube-proxy, the Pods and their shims) is killed at once.
    /// Its namespace and links stay, silent.
    /// Returns once the first SIGKILL went out to all of them (the node is
    /// dead from then on); what a kill missed (a process forked meanwhile)
    /// is killed before the next power-off or the end.
    pub fn power_off(&self, i: usize) {
        kill(&self.processes(i));
    }

    /// Removes node `i` from the cluster, as an operator removes a node
    /// that will not come back: its Node object, then its Pods, at once.
    /// The node-lifecycle controller is off here: without this, the Pods
    /// would wait forever for their kubelet (and so would the deletion of
    /// their namespace), and the controllers would place new ones on the
    /// dead node.
    pub fn remove(&self, i: usize) {
        let name = &self.names[i - 1];
        self.kubectl(&["delete", "node", name, "--ignore-not-found", "--wait=false"]);
        self.kubectl(&[
            "delete",
            "pods",
            "--all-namespaces",
            "--field-selector",
            &format!("spec.nodeName={name}"),
            "--grace-period=0",
            "--force",
        ]);
    }

    /// Runs kubectl as admin, whatever it says.
    fn kubectl(&self, args: &[&str]) {
        let _ = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output();
    }

    /// Kills node `i`'s processes until none is left.
    fn kill_all(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pids = self.processes(i);
            if pids.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "processes of node {i} outlive SIGKILL: {pids:?}"
            );
            kill(&pids);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        // Only the nodes that got as far as their namespaces are known.
        for i in 1..=self.namespaces.len() {
            self.kill_all(i);
        }
        let cgroups = self.lab.dir().join("cgroups.list");
        for name in &self.names {
            for root in cgroup_paths(&cgroups, name) {
                remove_cgroup(&root);
            }
        }
        for dir in &self.made {
            let _ = std::fs::remove_dir(dir);
        }
        for r in &self.relays {
            r.abort();
        }
        // What the test left on the nodes goes with them, so that its
        // namespaces finish terminating.
        for i in 1..=self.names.len() {
            self.remove(i);
        }
        self.kubectl(&[
            "delete",
            "endpointslice",
            "-n",
            "default",
            ENDPOINTS,
            "--ignore-not-found",
        ]);
    }
}

/// Where containerd (CNI results), and kubelet (Pod log links) write
/// whatever they are configured with; each node hides them under a tmpfs of
/// its own. The ones missing here are made for the nodes and removed after.
const WRITTEN_OUTSIDE: [&str; 3] = ["/var/lib/cni", "/var/log/pods", "/var/log/containers"];

/// The `kubernetes` Service's endpoints the lab writes.
const ENDPOINTS: &str = "kubernetes-lab-nodes";

/// Sends SIGKILL to `pids`, at once.
fn kill(pids: &[u32]) {
    if !pids.is_empty() {
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(u32::to_string))
            .output();
    }
}

/// Removes a cgroup and everything under it, deepest first.
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Runs in `ip netns exec NODE`, which gives it a mount namespace of its
/// own with the node's `/sys` but without the cgroup hierarchies: mounts
/// them again from the list (`path type options`), gives the node a `/run`
/// of its own (hostPath volumes there, such as the speakers' hand-over
/// socket, are per node as on a real cluster) and hides the places
/// containerd, CNI and kubelet write outside their configured directories
/// ([`WRITTEN_OUTSIDE`]) under private tmpfs, then holds the namespace.
const HOLDER: &str = r#"set -e
mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
while read -r path type opts; do
    mkdir -p "$path"
    if [ "$type" = cgroup2 ]; then
        mount -t cgroup2 cgroup2 "$path"
    else
        mount -t cgroup -o "$opts" cgroup "$path"
    fi
done < "$1"
for dir in /run /var/lib/cni /var/log/pods /var/log/containers; do
    mount -t tmpfs -o mode=755 tmpfs "$dir"
done
exec sleep infinity
"#;

/// This machine's cgroup hierarchies, a line each: `path type options`.
fn cgroup_mounts() -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mut out = String::new();
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(kind), Some(options)) = (fields.get(dash + 1), fields.get(dash + 3)) else {
            continue;
        };
        if *kind != "cgroup" && *kind != "cgroup2" {
            continue;
        }
        let options: Vec<&str> = options.split(',').filter(|o| *o != "rw").collect();
        out.push_str(&format!("{} {kind} {}\n", fields[4], options.join(",")));
    }
    assert!(!out.is_empty(), "no cgroup hierarchy is mounted");
    out
}

/// Node `name`'s cgroup root in every hierarchy of `list`.
fn cgroup_paths(list: &Path, name: &str) -> Vec<PathBuf> {
    std::fs::read_to_string(list)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').next())
        .map(|mount| Path::new(mount).join(name))
        .collect()
}

/// What one node's components are told.
struct NodeConfig<'a> {
    index: usize,
    name: &'a str,
    dir: &'a Path,
    kubeconfig: &'a Path,
}

impl NodeConfig<'_> {
    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// containerd's own root, state and socket; the lab's pause image;
    /// `restrict_oom_score_adj`, since root here lacks CAP_SYS_RESOURCE;
    /// Pod network namespaces under the state directory.
    fn containerd(&self) -> String {
        format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = self.path("containerd/root"),
            state = self.path("containerd/state"),
            socket = self.path("containerd.sock"),
            cni = self.path("cni"),
            opt = self.path("containerd/opt"),
        )
    }

    /// kubelet as the nodes' README found it must be on this kind of host:
    /// cgroup v1 allowed, cgroupfs, anonymous access (the API server has no
    /// client certificate for it), no cluster DNS, no image garbage
    /// collection (no registry to pull back from), no eviction.
    fn kubelet(&self) -> String {
        format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{name}
containerRuntimeEndpoint: unix://{socket}
imageServiceEndpoint: unix://{socket}
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
authorization: {{mode: AlwaysAllow}}
failSwapOn: false
podCIDR: {cidr}
clusterDNS: []
resolvConf: ""
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "1Mi", nodefs.available: "0%", imagefs.available: "0%", nodefs.inodesFree: "0%"}}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
podLogsDir: {logs}
"#,
            name = self.name,
            socket = self.path("containerd.sock"),
            cidr = pod_cidr(self.index),
            logs = self.path("pod-logs"),
        )
    }

    fn kube_proxy(&self) -> String {
        format!(
            r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {{kubeconfig: {kubeconfig}}}
hostnameOverride: {name}
clusterCIDR: 10.244.0.0/16
conntrack: {{maxPerCore: 0}}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
"#,
            kubeconfig = self.kubeconfig.display(),
            name = self.name,
        )
    }

    /// A bridge with the node's Pod network; no masquerade, so Pods keep
    /// their addresses and never send off the lab.
    fn cni(&self) -> String {
        format!(
            r#"{{"cniVersion": "0.4.0", "name": "lab", "plugins": [
  {{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{cidr}"}}]],
             "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{ipam}"}}}},
  {{"type": "portmap", "capabilities": {{"portMappings": true}}}}]}}
"#,
            cidr = pod_cidr(self.index),
            ipam = self.path("cni-ipam"),
        )
    }
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// kubelet, kube-proxy and kube-scheduler, unpacked once per checksum file
/// under the build's scratch directory.
fn node_binaries() -> PathBuf {
    let src = node_binaries_dir();
    let sums = std::fs::read_to_string(src.join("SHA256SUMS")).expect("SHA256SUMS");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("k8s-node");
    if std::fs::read_to_string(dir.join("SHA256SUMS")).is_ok_and(|s| s == sums) {
        return dir;
    }
    std::fs::create_dir_all(&dir).expect("node binaries directory");
    for name in ["kubelet", "kube-proxy", "kube-scheduler"] {
        let out = dir.join(name);
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        let status = Command::new("sh")
            .arg("-c")
            .arg(r#"xz -dc "$1" > "$2" && chmod 755 "$2" && mv -f "$2" "$3""#)
            .args(["sh"])
            .arg(src.join(format!("{name}.xz")))
            .arg(&tmp)
            .arg(&out)
            .status()
            .expect("xz");
        assert!(status.success(), "unpacking {name}");
    }
    std::fs::write(dir.join("SHA256SUMS"), sums).expect("write SHA256SUMS");
    dir
}

/// The backend image: `tests/nodes/echo.c` (Pods run it with
/// `imagePullPolicy: Never`).
pub const ECHO_IMAGE: &str = "lab.ironlb.dev/echo:1";

/// Image `reference` holding only `/PROGRAM`, compiled statically from
/// `tests/nodes/PROGRAM.c`, as its entrypoint; built into `dir`.
fn static_image(dir: &Path, program: &str, reference: &str) -> Image {
    let (name, tag) = reference.rsplit_once(':').expect("a tagged image");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/nodes/{program}.c"));
    let work = dir.join(format!("image-{program}"));
    let layout = work.join("layout");
    let bundle = work.join("bundle");
    let archive = dir.join(format!("{program}.oci.tar"));
    let script = r#"set -e
mkdir -p "$W"
gcc -static -Os -o "$W/$P" "$SRC"
umoci init --layout "$L"
umoci new --image "$L:$T"
umoci unpack --image "$L:$T" "$B" >/dev/null
install -m 0755 "$W/$P" "$B/rootfs/$P"
umoci repack --image "$L:$T" "$B"
umoci config --image "$L:$T" --config.entrypoint "/$P"
tar -C "$L" -cf "$A" .
"#;
    let out = Command::new("sh")
        .args(["-c", script])
        .env("W", &work)
        .env("P", program)
        .env("SRC", &source)
        .env("L", &layout)
        .env("T", tag)
        .env("B", &bundle)
        .env("A", &archive)
        .env("PATH", PATH)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "building the {program} image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&work);
    Image {
        archive,
        name: name.to_string(),
    }
}

/// ironlb's image, built by `scripts/build-image` from the binary under
/// test, named as `deploy/` names it.
fn ironlb_image(dir: &Path) -> Image {
    let deployed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/base/speaker.yaml"
    ))
    .expect("deploy/base/speaker.yaml");
    let reference = deployed
        .lines()
        .find_map(|l| l.trim().strip_prefix("image: "))
        .expect("the speaker's image")
        .to_string();
    let (name, tag) = reference.rsplit_once(':').expect("a tagged image");
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-image"))
        .args([
            "--binary",
            env!("CARGO_BIN_EXE_ironlb"),
            "--tag",
            tag,
            "--out",
        ])
        .arg(dir)
        .env("PATH", PATH)
        .output()
        .expect("scripts/build-image");
    assert!(
        out.status.success(),
        "scripts/build-image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Image {
        archive: dir.join(format!("ironlb-{tag}.oci.tar")),
        name: name.to_string(),
    }
}
