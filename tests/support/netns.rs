//! Network-namespace labs: hosts on one Ethernet segment, entirely inside
//! namespaces the test creates (the bridge too), so nothing touches the root
//! namespace's interfaces or routes. Every name carries the process id and a
//! counter, so runs can overlap; everything is removed on drop, even when the
//! test panics.

#![allow(dead_code)] // shared by tests and the failover bench, each using a part

use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A lab of namespaces; dropped, it kills its processes and deletes them.
pub struct Lab {
    prefix: String,
    dir: std::path::PathBuf,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

/// Why a lab can't be built here, or `None` when it can.
pub fn unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    if euid != "0" {
        return Some("network namespace labs need root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("the `ip` command (iproute2) is not installed".into()),
    }
}

/// Whether `test` skips because of `why`: prints the reason, and fails
/// instead under `CI=true`, where nothing may be skipped.
pub fn skip(test: &str, why: Option<String>) -> bool {
    let Some(why) = why else {
        return false;
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: {why}, and CI=true does not allow skipping"
    );
    eprintln!("SKIPPED {test}: {why}");
    true
}

impl Lab {
    /// A new lab, or `None` (after printing why) where labs can't run. With
    /// `CI=true` that is a failure, not a skip.
    pub fn new(test: &str) -> Option<Self> {
        if skip(test, unavailable()) {
            return None;
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("ilb{}x{n}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).expect("lab scratch directory");
        Some(Self {
            dir,
            prefix,
            namespaces: Vec::new(),
            children: Vec::new(),
        })
    }

    /// A scratch directory for configurations and logs, removed with the lab.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Creates a namespace with its loopback up; returns its full name.
    pub fn namespace(&mut self, short: &str) -> String {
        let name = format!("{}-{short}", self.prefix);
        run("ip", &["netns", "add", &name]);
        self.namespaces.push(name.clone());
        self.exec_ok(&name, &["ip", "link", "set", "lo", "up"]);
        name
    }

    /// A namespace holding bridge `br0`, the lab's Ethernet segment.
    pub fn switch(&mut self) -> String {
        self.switch_named("sw")
    }

    /// Another segment, in namespace `short`.
    pub fn switch_named(&mut self, short: &str) -> String {
        let sw = self.namespace(short);
        self.exec_ok(&sw, &["ip", "link", "add", "br0", "type", "bridge"]);
        self.exec_ok(&sw, &["ip", "link", "set", "br0", "up"]);
        sw
    }

    /// Plugs `host` into the switch: its `eth0` is one end of a veth pair whose
    /// other end (`port`) is a port of `br0`. `addresses` go on `eth0`.
    pub fn plug(&mut self, switch: &str, host: &str, port: &str, addresses: &[&str]) {
        self.plug_as(switch, host, port, "eth0", addresses);
    }

    /// [`Lab::plug`], with the host's end named `link`.
    pub fn plug_as(
        &mut self,
        switch: &str,
        host: &str,
        port: &str,
        link: &str,
        addresses: &[&str],
    ) {
        self.exec_ok(
            switch,
            &[
                "ip", "link", "add", port, "type", "veth", "peer", "name", link, "netns", host,
            ],
        );
        self.exec_ok(switch, &["ip", "link", "set", port, "master", "br0", "up"]);
        for a in addresses {
            self.exec_ok(host, &["ip", "addr", "add", a, "dev", link, "nodad"]);
        }
        self.exec_ok(host, &["ip", "link", "set", link, "up"]);
    }

    /// `count` nodes plugged into `switch`: namespaces `n1`… with `eth0` at
    /// `{subnet}.1{i}/24` (port `p{i}`); returns their namespaces.
    pub fn plug_nodes(&mut self, switch: &str, subnet: &str, count: usize) -> Vec<String> {
        (1..=count)
            .map(|i| {
                let ns = self.namespace(&format!("n{i}"));
                self.plug(
                    switch,
                    &ns,
                    &format!("p{i}"),
                    &[&format!("{subnet}.1{i}/24")],
                );
                ns
            })
            .collect()
    }

    /// Runs `cmd` inside `ns` and returns its output.
    pub fn exec(&self, ns: &str, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {ns} {cmd:?}: {e}"))
    }

    /// Runs `cmd` inside `ns`; panics with its stderr when it fails.
    pub fn exec_ok(&self, ns: &str, cmd: &[&str]) -> String {
        let out = self.exec(ns, cmd);
        assert!(
            out.status.success(),
            "in {ns}: {cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `program args…` inside `ns` in the background, its output going
    /// to `log`; it is killed with the lab. Returns its index for [`Lab::kill`].
    pub fn spawn(
        &mut self,
        ns: &str,
        program: &str,
        args: &[&str],
        log: &std::path::Path,
    ) -> usize {
        let file = std::fs::File::create(log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("spawn in namespace");
        self.children.push(child);
        self.children.len() - 1
    }

    /// Starts `ironlb speaker --static` in `ns` as `node-{i}` (1 to 3) of a
    /// three-node group whose members gossip on `{subnet}.1{i}:7946`, announcing
    /// `addresses` on `eth0`. Its configuration and log go to [`Lab::dir`].
    pub fn start_speaker(&mut self, ns: &str, i: usize, subnet: &str, addresses: &[&str]) -> usize {
        let config = self.speaker_config(i, subnet, addresses, "");
        self.start_speaker_with(ns, i, &config)
    }

    /// The static configuration [`Lab::start_speaker`] writes, with `extra`
    /// (YAML, e.g. a `services:` block) appended.
    pub fn speaker_config(
        &self,
        i: usize,
        subnet: &str,
        addresses: &[&str],
        extra: &str,
    ) -> String {
        let seeds: Vec<String> = (1..=3)
            .filter(|j| *j != i)
            .map(|j| format!("{subnet}.1{j}:7946"))
            .collect();
        let mut config = format!(
            "node: node-{i}\ngossip:\n  listen: {subnet}.1{i}:7946\n  seeds: [{}]\n  secret: lab-gossip-secret\naddresses:\n",
            seeds.join(", ")
        );
        for a in addresses {
            config.push_str(&format!("  - address: {a}\n    interfaces: [eth0]\n"));
        }
        config.push_str(extra);
        config
    }

    /// Where node `i`'s static configuration lives; the speaker reloads it
    /// when it changes.
    pub fn speaker_config_path(&self, i: usize) -> std::path::PathBuf {
        self.dir.join(format!("node-{i}.yaml"))
    }

    /// Starts `ironlb speaker --static` in `ns` as `node-{i}` with `config`.
    pub fn start_speaker_with(&mut self, ns: &str, i: usize, config: &str) -> usize {
        let path = self.speaker_config_path(i);
        std::fs::write(&path, config).expect("write speaker config");
        let log = self.dir.join(format!("node-{i}.log"));
        self.spawn(
            ns,
            env!("CARGO_BIN_EXE_ironlb"),
            &["speaker", "--static", path.to_str().expect("utf-8 path")],
            &log,
        )
    }

    /// Starts `ironlb speaker` in cluster mode in `ns` as `node-{i}`, gossiping
    /// on `{subnet}.1{i}:7946` and reading the cluster through `kubeconfig`
    /// (peers found at the Nodes' addresses). The gossip secret is written to
    /// [`Lab::dir`]; the log goes to `node-{i}.log` there.
    pub fn start_cluster_speaker(
        &mut self,
        ns: &str,
        i: usize,
        subnet: &str,
        kubeconfig: &std::path::Path,
    ) -> usize {
        let secret = self.dir.join("secret");
        // Written once: rewriting it for the next node could truncate it under
        // a speaker that is reading it (which then sees an empty secret).
        if !secret.exists() {
            std::fs::write(&secret, "cluster-lab-secret\n").expect("write gossip secret");
        }
        let log = self.dir.join(format!("node-{i}.log"));
        self.spawn(
            ns,
            env!("CARGO_BIN_EXE_ironlb"),
            &[
                "speaker",
                "--kubeconfig",
                kubeconfig.to_str().expect("utf-8 path"),
                "--node",
                &format!("node-{i}"),
                "--gossip-listen",
                &format!("{subnet}.1{i}:7946"),
                "--gossip-secret-file",
                secret.to_str().expect("utf-8 path"),
            ],
            &log,
        )
    }

    /// Connects `a` and `b` with a veth pair: `a_if` with `a_addr` in `a`,
    /// `b_if` with `b_addr` in `b` (addresses with their prefix length).
    pub fn wire(&mut self, a: &str, a_if: &str, a_addr: &str, b: &str, b_if: &str, b_addr: &str) {
        self.exec_ok(
            a,
            &[
                "ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b,
            ],
        );
        self.exec_ok(a, &["ip", "addr", "add", a_addr, "dev", a_if, "nodad"]);
        self.exec_ok(b, &["ip", "addr", "add", b_addr, "dev", b_if, "nodad"]);
        self.exec_ok(a, &["ip", "link", "set", a_if, "up"]);
        self.exec_ok(b, &["ip", "link", "set", b_if, "up"]);
    }

    /// Starts nginx in `ns` as `name` with `blocks` (its `http {}` / `stream {}`
    /// configuration); the stream module is loaded, files go to [`Lab::dir`].
    pub fn nginx(&mut self, ns: &str, name: &str, blocks: &str) {
        let dir = self.dir.clone();
        let d = dir.display();
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
                 daemon off;\nmaster_process off;\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log;\n\
                 events {{}}\n{blocks}"
            ),
        )
        .expect("write nginx configuration");
        let error_log = format!("{d}/{name}-error.log");
        self.spawn(
            ns,
            "nginx",
            &["-c", conf.to_str().expect("utf-8 path"), "-e", &error_log],
            &dir.join(format!("{name}.out")),
        );
    }

    /// The temporary directories nginx's `http` module must be able to write,
    /// inside [`Lab::dir`].
    pub fn nginx_temp_paths(&self, name: &str) -> String {
        let d = self.dir.join(name);
        let d = d.display();
        format!(
            "client_body_temp_path {d}-body; proxy_temp_path {d}-proxy; fastcgi_temp_path {d}-fcgi;\n\
             uwsgi_temp_path {d}-uwsgi; scgi_temp_path {d}-scgi;\n"
        )
    }

    /// Takes `child` (started by the caller, e.g. with its own environment) into
    /// the lab: it is killed with it. Returns its index, as [`Lab::spawn`].
    pub fn adopt(&mut self, child: Child) -> usize {
        self.children.push(child);
        self.children.len() - 1
    }

    /// The process id of a process started with [`Lab::spawn`].
    pub fn pid(&self, index: usize) -> u32 {
        self.children[index].id()
    }

    /// Sends SIGTERM to a process started with [`Lab::spawn`] and waits for it.
    pub fn terminate(&mut self, index: usize) {
        let pid = self.children[index].id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).output();
        let _ = self.children[index].wait();
    }

    /// Kills a process started with [`Lab::spawn`] with SIGKILL.
    pub fn kill(&mut self, index: usize) {
        let _ = self.children[index].kill();
        let _ = self.children[index].wait();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting a namespace deletes its links; veth peers go with them.
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A listening TCP socket at `addr` inside network namespace `ns`, made in a
/// thread that enters it: the socket stays in that namespace while this process
/// serves it from its own.
pub fn bind_in_namespace(ns: &str, addr: std::net::SocketAddr) -> std::net::TcpListener {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open the namespace");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("enter the namespace");
        let l = std::net::TcpListener::bind(addr).expect("bind in the namespace");
        l.set_nonblocking(true).expect("non-blocking");
        l
    })
    .join()
    .expect("namespace thread")
}

/// Relays TCP from `listen` inside namespace `ns` to `target` in this process's
/// namespace, until the returned task is aborted: hosts of a lab reach a server
/// of the root namespace (a real API server on 127.0.0.1) at their own
/// `listen`, and a TLS name that says 127.0.0.1 still matches.
pub fn relay(
    ns: &str,
    listen: std::net::SocketAddr,
    target: std::net::SocketAddr,
) -> tokio::task::JoinHandle<()> {
    let listener =
        tokio::net::TcpListener::from_std(bind_in_namespace(ns, listen)).expect("tokio listener");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The node that owns `address` when `alive` are the live speakers and
/// nothing else constrains it: what every speaker computes.
pub fn expected_owner(alive: &[&str], address: &str) -> String {
    use ironlb::election::{self, Constraints, Node};
    let nodes: Vec<Node> = alive
        .iter()
        .map(|n| Node {
            name: n.to_string(),
            labels: Default::default(),
            alive: true,
            network_unavailable: false,
            cannot_serve: Default::default(),
        })
        .collect();
    let ip: std::net::IpAddr = address.parse().expect("address");
    election::owner(ip, &nodes, &Constraints::default())
        .expect("an owner")
        .name
        .clone()
}
