//! The embedded forwarder in a namespace lab: a client namespace connects to an
//! address owned by a node namespace running a real `ironlb speaker --static`,
//! which forwards to backends in other namespaces — HAProxy and nginx from
//! Debian reading the PROXY protocol, and small Python peers
//! (`tests/peers/peer.py`) that report the address they saw.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::netns::{Lab, Speakers};

const VIP: &str = "10.77.0.100";
const CLIENT: &str = "10.77.0.2";
const OUTSIDER: &str = "10.77.0.60";

struct World {
    lab: Lab,
    /// Namespaces of node-1 and node-2.
    nodes: Vec<String>,
    client: String,
    switch: String,
}

/// A switch, `nodes` nodes (10.77.0.1i) and a client (10.77.0.2).
fn world(test: &str, nodes: usize) -> Option<World> {
    let mut lab = Lab::new(test)?;
    let switch = lab.switch();
    let names = lab.plug_nodes(&switch, "10.77.0", nodes);
    let client = lab.namespace("client");
    lab.plug(&switch, &client, "pc", &[&format!("{CLIENT}/24")]);
    Some(World {
        lab,
        nodes: names,
        client,
        switch,
    })
}

impl World {
    /// A backend host on the switch at `address` (10.77.0.x).
    fn backend_host(&mut self, short: &str, port: &str, address: &str) -> String {
        let ns = self.lab.namespace(short);
        let sw = self.switch.clone();
        self.lab.plug(&sw, &ns, port, &[&format!("{address}/24")]);
        ns
    }

    /// A client outside the lab's usual ranges, at [`OUTSIDER`].
    fn outsider(&mut self) -> String {
        let outsider = self.lab.namespace("outsider");
        let sw = self.switch.clone();
        self.lab
            .plug(&sw, &outsider, "po", &[&format!("{OUTSIDER}/24")]);
        outsider
    }

    /// A "pod" behind node `i` on its own link (10.88.i.2), its default
    /// route via the node, as a CNI would wire it, serving `peer.py` on
    /// port 5000.
    fn pod(&mut self, i: usize) -> String {
        let pod = self.lab.namespace(&format!("pod{i}"));
        let node = self.nodes[i - 1].clone();
        self.lab.wire(
            &node,
            "veth-pod",
            &format!("10.88.{i}.1/24"),
            &pod,
            "eth0",
            &format!("10.88.{i}.2/24"),
        );
        let gateway = format!("10.88.{i}.1");
        self.lab
            .exec_ok(&pod, &["ip", "route", "add", "default", "via", &gateway]);
        self.peer_server(&pod, &format!("10.88.{i}.2"), 5000);
        pod
    }

    /// Runs `peer.py serve` in `ns` on `address:port`.
    fn peer_server(&mut self, ns: &str, address: &str, port: u16) {
        let log = self.lab.dir().join(format!("peer-{address}-{port}.log"));
        self.lab.spawn(
            ns,
            "python3",
            &[&peer(), "serve", address, &port.to_string()],
            &log,
        );
        self.wait_listening(ns, port);
    }

    /// A host at `address` sending `size` bytes slowly (about 3 s) to each
    /// connection on port 9000 (`peer.py stream`); returns the file where it
    /// writes what it sent ("<len> <sha256>").
    fn stream_backend(&mut self, short: &str, port: &str, address: &str, size: usize) -> PathBuf {
        let ns = self.backend_host(short, port, address);
        let sent = self.lab.dir().join(format!("sent-{address}.log"));
        let log = self.lab.dir().join(format!("{short}.out"));
        self.lab.spawn(
            &ns,
            "python3",
            &[
                &peer(),
                "stream",
                address,
                "9000",
                &size.to_string(),
                sent.to_str().expect("utf-8 path"),
            ],
            &log,
        );
        self.wait_listening(&ns, 9000);
        sent
    }

    /// Starts a speaker in node `i`'s namespace from the static file `config`,
    /// offering and taking sockets at `handover`, logging to `log` in the lab
    /// directory.
    fn handover_speaker(&mut self, i: usize, config: &Path, handover: &Path, log: &str) -> usize {
        let ns = self.nodes[i - 1].clone();
        let log = self.lab.dir().join(log);
        self.lab.spawn(
            &ns,
            env!("CARGO_BIN_EXE_ironlb"),
            &[
                "speaker",
                "--static",
                config.to_str().expect("utf-8 path"),
                "--handover-socket",
                handover.to_str().expect("utf-8 path"),
            ],
            &log,
        )
    }

    /// `peer.py fetch` from the client to `VIP:9000`, in the background.
    fn fetch(&self) -> std::process::Child {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.client,
                "python3",
                &peer(),
                "fetch",
                VIP,
                "9000",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn peer.py fetch")
    }

    /// Waits until something in `ns` listens on TCP `port`.
    fn wait_listening(&self, ns: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let filter = format!("sport = :{port}");
        while self
            .lab
            .exec_ok(ns, &["ss", "-Htln", &filter])
            .trim()
            .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "nothing listens on {port} in {ns}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts node `i`'s speaker owning [`VIP`] with `services` (YAML list
    /// items, indented by two spaces).
    fn speaker(&mut self, i: usize, services: &str) -> usize {
        let config = self.config(i, services);
        let ns = self.nodes[i - 1].clone();
        self.lab.start_speaker_with(&ns, i, &config)
    }

    fn config(&self, i: usize, services: &str) -> String {
        // Gossip seeds are the other nodes of this world only.
        let peers = self.nodes.len();
        let seeds: Vec<String> = (1..=peers)
            .filter(|j| *j != i)
            .map(|j| format!("10.77.0.1{j}:7946"))
            .collect();
        format!(
            "node: node-{i}\ngossip:\n  listen: 10.77.0.1{i}:7946\n  seeds: [{}]\n  secret: lab-gossip-secret\n\
             addresses:\n  - address: {VIP}\n    interfaces: [eth0]\n  - address: 10.77.0.101\n    interfaces: [eth0]\n\
             services:\n{services}",
            seeds.join(", ")
        )
    }

    /// `peer.py tcp` from the client.
    fn tcp(&self, address: &str, port: u16, message: &str) -> String {
        self.tcp_from(&self.client, address, port, message)
    }

    fn tcp_from(&self, ns: &str, address: &str, port: u16, message: &str) -> String {
        self.lab
            .exec_ok(
                ns,
                &[
                    "python3",
                    &peer(),
                    "tcp",
                    address,
                    &port.to_string(),
                    message,
                ],
            )
            .trim()
            .to_string()
    }

    fn udp(&self, ns: &str, address: &str, port: u16, message: &str) -> String {
        self.lab
            .exec_ok(
                ns,
                &[
                    "python3",
                    &peer(),
                    "udp",
                    address,
                    &port.to_string(),
                    message,
                ],
            )
            .trim()
            .to_string()
    }

    /// Waits until a datagram from the client to the Service address's
    /// UDP `port` is answered.
    fn wait_udp(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.udp(&self.client, VIP, port, "hi").contains("got=hi") {
            assert!(
                Instant::now() < deadline,
                "never answered:\n{}",
                self.logs()
            );
        }
    }

    /// Waits until a TCP request to `address:port` is answered with something
    /// other than a refusal, and returns the answer.
    fn wait_tcp(&self, address: &str, port: u16) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = self.tcp(address, port, "hello");
            if !matches!(out.as_str(), "REFUSED" | "RESET" | "TIMEOUT" | "EMPTY")
                && !out.starts_with("UNREACHABLE")
            {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "{address}:{port} never answered (last: {out}); speaker logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The speakers' logs, for failure messages.
    fn logs(&self) -> String {
        (1..=self.nodes.len())
            .map(|i| {
                let log = self.lab.dir().join(format!("node-{i}.log"));
                format!(
                    "--- node-{i}\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .collect()
    }

    fn metrics(&self, node: usize) -> String {
        self.lab.exec_ok(
            &self.nodes[node - 1],
            &[
                "python3",
                "-c",
                "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9121/metrics').read().decode())",
            ],
        )
    }
}

fn peer() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers/peer.py")
        .to_string_lossy()
        .into_owned()
}

/// The value of the metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn wait_for_file(path: &std::path::Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn service(name: &str, port: u16, backend: &str, target: u16, extra: &str) -> String {
    format!(
        "  - name: {name}\n    address: {VIP}\n    ports: [{{port: {port}, targetPort: {target}}}]\n    endpoints: [{{address: {backend}}}]\n{extra}"
    )
}

#[test]
fn proxy_protocol_v1_and_v2_reach_haproxy_and_nginx_with_the_client_address() {
    let Some(mut w) = world("proxy_protocol_peers", 1) else {
        return;
    };
    // HAProxy in TCP mode, accept-proxy, in front of an echo server.
    let hap = w.backend_host("hap", "ph", "10.77.0.21");
    w.peer_server(&hap, "127.0.0.1", 9000);
    let hap_cfg = w.lab.dir().join("haproxy.cfg");
    std::fs::write(
        &hap_cfg,
        "global\n  log stdout format raw local0\ndefaults\n  mode tcp\n  log global\n  \
         timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend fe\n  bind 10.77.0.21:8080 accept-proxy\n  log-format \"haproxy client=%ci\"\n  default_backend be\n\
         backend be\n  server echo 127.0.0.1:9000\n",
    )
    .unwrap();
    let hap_log = w.lab.dir().join("haproxy.log");
    w.lab.spawn(
        &hap,
        "haproxy",
        &["-db", "-f", hap_cfg.to_str().unwrap()],
        &hap_log,
    );
    // nginx: stream and http, both with proxy_protocol.
    let ngx = w.backend_host("ngx", "pn", "10.77.0.22");
    let dir = w.lab.dir().to_path_buf();
    let d = dir.display();
    let temp = w.lab.nginx_temp_paths("nginx");
    w.lab.nginx(
        &ngx,
        "nginx",
        &format!(
            "stream {{\n  log_format pp 'stream client=$proxy_protocol_addr';\n\
               server {{ listen 10.77.0.22:8081 proxy_protocol; return \"stream client=$proxy_protocol_addr\\n\";\n\
               access_log {d}/nginx-stream.log pp; }}\n}}\n\
             http {{\n  log_format pp 'http client=$proxy_protocol_addr';\n{temp}\
               server {{ listen 10.77.0.22:8082 proxy_protocol; access_log {d}/nginx-http.log pp;\n\
               location / {{ return 200 \"http client=$proxy_protocol_addr\\n\"; }} }}\n}}\n"
        ),
    );
    let mut services = String::new();
    for (v, base) in [("v1", 1000), ("v2", 2000)] {
        let pp = format!("    proxyProtocol: {v}\n");
        services += &service(&format!("hap-{v}"), base + 80, "10.77.0.21", 8080, &pp);
        services += &service(&format!("stream-{v}"), base + 81, "10.77.0.22", 8081, &pp);
        services += &service(&format!("http-{v}"), base + 82, "10.77.0.22", 8082, &pp);
    }
    w.speaker(1, &services);

    for (v, base) in [("v1", 1000u16), ("v2", 2000u16)] {
        // HAProxy passes the bytes on to the echo server and logs the client.
        let echoed = w.wait_tcp(VIP, base + 80);
        assert!(echoed.ends_with("got=hello"), "{v} via HAProxy: {echoed}");
        let stream = w.wait_tcp(VIP, base + 81);
        assert_eq!(
            stream,
            format!("stream client={CLIENT}"),
            "{v} nginx stream"
        );
        let http = w.lab.exec_ok(
            &w.client,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                &format!("http://{VIP}:{}/", base + 82),
            ],
        );
        assert_eq!(
            http.trim(),
            format!("http client={CLIENT}"),
            "{v} nginx http"
        );
    }
    let hap_lines = wait_for_file(&hap_log, "haproxy client=");
    assert_eq!(
        hap_lines
            .matches(&format!("haproxy client={CLIENT}"))
            .count(),
        2,
        "HAProxy's log:\n{hap_lines}"
    );
    for log in ["nginx-stream.log", "nginx-http.log"] {
        let text = wait_for_file(&dir.join(log), CLIENT);
        // A retry of the first request may have reached nginx too.
        assert!(
            text.lines().count() >= 2
                && text
                    .lines()
                    .all(|l| l.ends_with(&format!("client={CLIENT}"))),
            "{log}:\n{text}"
        );
    }
}

#[test]
fn local_policy_uses_the_local_endpoint_only_and_it_sees_the_client() {
    let Some(mut w) = world("local_policy", 2) else {
        return;
    };
    for i in 1..=2 {
        w.pod(i);
    }
    // web: endpoints on both nodes. only-2: an address whose one endpoint is on
    // node-2, so only node-2 may announce it.
    let services = format!(
        "  - name: web\n    address: {VIP}\n    externalTrafficPolicy: Local\n    ports: [{{port: 80, targetPort: 5000}}, {{port: 53, protocol: UDP, targetPort: 5000}}]\n    \
         endpoints: [{{address: 10.88.1.2, node: node-1}}, {{address: 10.88.2.2, node: node-2}}]\n\
         \x20 - name: only-2\n    address: 10.77.0.101\n    externalTrafficPolicy: Local\n    ports: [{{port: 80, targetPort: 5000}}]\n    \
         endpoints: [{{address: 10.88.2.2, node: node-2}}]\n"
    );
    w.speaker(1, &services);
    w.speaker(2, &services);

    let first = w.wait_tcp(VIP, 80);
    // The owner forwards to its own pod only, and the pod sees the client's
    // own address, with no header.
    assert!(first.starts_with(&format!("peer={CLIENT}:")), "{first}");
    let pod_of = |reply: &str| {
        reply
            .split_whitespace()
            .find_map(|f| f.strip_prefix("at="))
            .unwrap_or_default()
            .to_string()
    };
    let owner_pod = pod_of(&first);
    for _ in 0..5 {
        let out = w.tcp(VIP, 80, "again");
        assert!(out.starts_with(&format!("peer={CLIENT}:")), "{out}");
        assert_eq!(
            pod_of(&out),
            owner_pod,
            "a connection left the owner's node"
        );
    }
    let web = "ironlb_speaker_forwarder_connections_total{namespace=\"static\",service=\"web\"}";
    let counts: Vec<f64> = (1..=2).map(|n| metric(&w.metrics(n), web)).collect();
    let owner = if counts[0] > 0.0 { 1 } else { 2 };
    assert_eq!(
        counts[owner - 1],
        6.0,
        "every connection through the owner: {counts:?}"
    );
    assert_eq!(
        counts[2 - owner],
        0.0,
        "the other node forwarded: {counts:?}"
    );
    assert_eq!(
        owner_pod,
        format!("10.88.{owner}.2"),
        "the owner used another node's pod"
    );
    // UDP keeps the client's address and port too, and replies come from the
    // Service's address.
    let udp = w.udp(&w.client, VIP, 53, "q");
    assert!(
        udp.starts_with(&format!("from={VIP}:53 peer={CLIENT}:")) && udp.ends_with("got=q"),
        "{udp}"
    );
    // only-2 is answered by node-2's pod, whatever the hash would prefer.
    let only2 = w.wait_tcp("10.77.0.101", 80);
    assert!(only2.starts_with(&format!("peer={CLIENT}:")), "{only2}");
    let n2 = metric(
        &w.metrics(2),
        "ironlb_speaker_forwarder_connections_total{namespace=\"static\",service=\"only-2\"}",
    );
    assert!(n2 >= 1.0, "only-2 went through node-2\n{}", w.logs());
}

#[test]
fn tcp_and_udp_share_one_address_like_dns() {
    let Some(mut w) = world("dns_shared", 1) else {
        return;
    };
    let be = w.backend_host("dns", "pd", "10.77.0.21");
    w.peer_server(&be, "10.77.0.21", 5353);
    let services = format!(
        "  - name: dns-tcp\n    address: {VIP}\n    ports: [{{port: 53, protocol: TCP, targetPort: 5353}}]\n    endpoints: [{{address: 10.77.0.21}}]\n\
         \x20 - name: dns-udp\n    address: {VIP}\n    ports: [{{port: 53, protocol: UDP, targetPort: 5353}}]\n    endpoints: [{{address: 10.77.0.21}}]\n"
    );
    w.speaker(1, &services);
    let tcp = w.wait_tcp(VIP, 53);
    assert!(
        tcp.starts_with("peer=10.77.0.11:") && tcp.ends_with("got=hello"),
        "{tcp}"
    );
    for q in ["a", "bb", "ccc"] {
        let udp = w.udp(&w.client, VIP, 53, q);
        assert!(
            udp.starts_with(&format!("from={VIP}:53 peer=10.77.0.11:"))
                && udp.ends_with(&format!("got={q}")),
            "{udp}"
        );
    }
    let m = w.metrics(1);
    assert!(
        metric(
            &m,
            "ironlb_speaker_forwarder_udp_datagrams_total{namespace=\"static\",service=\"dns-udp\"}"
        ) >= 3.0,
        "{m}"
    );
}

/// A client with 48 datagrams of one size in flight: the node sends each
/// run on in one segmented send (UDP GSO), and the backend and client get
/// every datagram whole. Then with a path MTU below the datagrams' size,
/// where the kernel refuses such segments: the node sends them one by one
/// (the kernel fragments each), and none is lost.
#[test]
fn runs_of_datagrams_arrive_whole_even_where_the_path_refuses_segments() {
    let Some(mut w) = world("udp_runs", 1) else {
        return;
    };
    let be = w.backend_host("echo", "pe", "10.77.0.21");
    w.peer_server(&be, "10.77.0.21", 5353);
    let services = format!(
        "  - name: game\n    address: {VIP}\n    ports: [{{port: 7777, protocol: UDP, targetPort: 5353}}]\n    endpoints: [{{address: 10.77.0.21}}]\n"
    );
    w.speaker(1, &services);
    w.wait_udp(7777);
    let burst = format!(
        "import socket\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(2.0)\n\
         s.connect(('{VIP}',7777))\n\
         sent=[b'run%04d' % i + b'x' * 1093 for i in range(48)]\n\
         for m in sent: s.send(m)\n\
         got=set()\n\
         try:\n\
         \x20 while len(got) < len(sent):\n\
         \x20   a=s.recv(65535)\n\
         \x20   got.add(a[a.index(b'got=') + 4:])\n\
         except Exception: pass\n\
         print('whole', len(got & set(sent)), 'other', len(got - set(sent)), flush=True)\n"
    );
    let client = w.client.clone();
    let out = w.lab.exec_ok(&client, &["python3", "-c", &burst]);
    assert_eq!(out.trim(), "whole 48 other 0", "with segments");
    // Routes with an MTU of 1,000 to the backend and the client: 1,100
    // bytes no longer fit one packet.
    let node = w.nodes[0].clone();
    for host in ["10.77.0.21", CLIENT] {
        w.lab.exec_ok(
            &node,
            &["ip", "route", "add", host, "dev", "eth0", "mtu", "1000"],
        );
    }
    let out = w.lab.exec_ok(&client, &["python3", "-c", &burst]);
    assert_eq!(
        out.trim(),
        "whole 48 other 0",
        "on a path with a smaller MTU"
    );
}

#[test]
fn source_ranges_refuse_outsiders_and_a_dead_backend_falls_through() {
    let Some(mut w) = world("ranges_and_resets", 1) else {
        return;
    };
    let outsider = w.outsider();
    let be = w.backend_host("be", "pb", "10.77.0.21");
    w.peer_server(&be, "10.77.0.21", 7000);
    // 10.77.0.22 exists but listens on nothing: every connect is reset.
    w.backend_host("dead", "pz", "10.77.0.22");
    let services = format!(
        "  - name: db\n    address: {VIP}\n    ports: [{{port: 5432, targetPort: 7000}}, {{port: 5433, protocol: UDP, targetPort: 7000}}]\n    \
         sourceRanges: [10.77.0.0/28]\n    endpoints: [{{address: 10.77.0.22}}, {{address: 10.77.0.21}}]\n"
    );
    w.speaker(1, &services);
    w.wait_tcp(VIP, 5432);
    for _ in 0..6 {
        let out = w.tcp(VIP, 5432, "q");
        assert!(
            out.ends_with("got=q"),
            "a connection failed over badly: {out}"
        );
    }
    let refused = w.tcp_from(&outsider, VIP, 5432, "q");
    assert!(
        matches!(refused.as_str(), "RESET" | "EMPTY"),
        "outsider got: {refused}"
    );
    assert_eq!(w.udp(&outsider, VIP, 5433, "q"), "TIMEOUT");
    assert!(w.udp(&w.client, VIP, 5433, "q").ends_with("got=q"));
    let m = w.metrics(1);
    let failures = metric(
        &m,
        "ironlb_speaker_forwarder_backend_connect_failures_total{namespace=\"static\",service=\"db\"}",
    );
    assert!(
        failures >= 3.0,
        "round robin tried the dead backend: {failures}\n{m}"
    );
    assert_eq!(
        metric(
            &m,
            "ironlb_speaker_forwarder_refused_total{namespace=\"static\",service=\"db\",reason=\"source_range\"}"
        ),
        2.0,
        "{m}"
    );
}

#[test]
fn a_transfer_completes_when_its_endpoint_is_removed() {
    let Some(mut w) = world("drain", 1) else {
        return;
    };
    let size = 8 * 1024 * 1024;
    let mut sent_logs = Vec::new();
    for (short, port, addr) in [("s1", "p1s", "10.77.0.21"), ("s2", "p2s", "10.77.0.22")] {
        sent_logs.push(w.stream_backend(short, port, addr, size));
    }
    let bulk = |endpoints: &str| {
        format!(
            "  - name: bulk\n    address: {VIP}\n    ports: [{{port: 9000}}]\n    endpoints: [{endpoints}]\n"
        )
    };
    w.speaker(1, &bulk("{address: 10.77.0.21}, {address: 10.77.0.22}"));
    // No probe connection: the first connection goes to the first backend.
    wait_for_file(&w.lab.dir().join("node-1.log"), "listening");
    let fetched = |child: std::process::Child| {
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let started = Instant::now();
    let transfer = w.fetch();
    std::thread::sleep(Duration::from_millis(700));
    // Its endpoint leaves mid-transfer.
    std::fs::write(
        w.lab.speaker_config_path(1),
        w.config(1, &bulk("{address: 10.77.0.22}")),
    )
    .unwrap();
    wait_for_file(&w.lab.dir().join("node-1.log"), "configuration reloaded");
    let received = fetched(transfer);
    let sent = wait_for_file(&sent_logs[0], " ");
    let outputs: String = ["s1.out", "s2.out", "sent-10.77.0.22.log"]
        .iter()
        .map(|f| {
            format!(
                "--- {f}\n{}",
                std::fs::read_to_string(w.lab.dir().join(f)).unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        received,
        sent.trim(),
        "checksums differ\n{}{outputs}",
        w.logs()
    );
    assert!(received.starts_with(&format!("{size} ")), "{received}");
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the transfer was not slow enough to overlap"
    );
    // New connections go to the endpoint that is left.
    let again = fetched(w.fetch());
    let sent2 = wait_for_file(&sent_logs[1], " ");
    assert_eq!(again, sent2.trim());
}

#[test]
fn the_node_gets_marked_addresses_and_routing_and_loses_them_on_exit() {
    let Some(mut w) = world("node_state", 1) else {
        return;
    };
    let node = w.nodes[0].clone();
    // An operator's own address on lo, which ironlb must never remove.
    w.lab
        .exec_ok(&node, &["ip", "addr", "add", "10.77.0.198/32", "dev", "lo"]);
    // A speaker forwarding 10.77.0.101 crashes (SIGKILL): its address stays
    // behind, marked as ironlb's.
    let be = w.backend_host("be", "pb", "10.77.0.21");
    w.peer_server(&be, "10.77.0.21", 5000);
    let crashed = w.speaker(
        1,
        "  - name: gone\n    address: 10.77.0.101\n    ports: [{port: 80, targetPort: 5000}]\n    endpoints: [{address: 10.77.0.21}]\n",
    );
    w.wait_tcp("10.77.0.101", 80);
    w.lab.kill(crashed);
    let lo = w
        .lab
        .exec_ok(&node, &["ip", "-o", "addr", "show", "dev", "lo"]);
    assert!(lo.contains("10.77.0.101/32"), "{lo}");
    let pod = w.lab.namespace("pod");
    w.lab.wire(
        &node,
        "veth-pod",
        "10.88.1.1/24",
        &pod,
        "eth0",
        "10.88.1.2/24",
    );
    w.lab
        .exec_ok(&pod, &["ip", "route", "add", "default", "via", "10.88.1.1"]);
    w.peer_server(&pod, "10.88.1.2", 5000);
    let services = format!(
        "  - name: web\n    address: {VIP}\n    externalTrafficPolicy: Local\n    ports: [{{port: 80, targetPort: 5000}}]\n    \
         endpoints: [{{address: 10.88.1.2, node: node-1}}]\n"
    );
    let speaker = w.speaker(1, &services);
    w.wait_tcp(VIP, 80);
    let lo = w
        .lab
        .exec_ok(&node, &["ip", "-o", "addr", "show", "dev", "lo"]);
    assert!(lo.contains(&format!("inet {VIP}/32")), "{lo}");
    // 10.77.0.101 is still owned but carries no forwarded Service now: the
    // crashed run's address is gone; the operator's stays.
    assert!(
        !lo.contains("10.77.0.101"),
        "the stale address stayed: {lo}"
    );
    assert!(
        lo.contains("10.77.0.198"),
        "an address not ours was removed: {lo}"
    );
    for key in ["arp_ignore", "arp_announce"] {
        let v = w.lab.exec_ok(
            &node,
            &["sysctl", "-n", &format!("net.ipv4.conf.eth0.{key}")],
        );
        let want = if key == "arp_ignore" { "1" } else { "2" };
        assert_eq!(v.trim(), want, "{key}");
    }
    let rules = w.lab.exec_ok(&node, &["ip", "rule"]);
    assert_eq!(
        rules.matches("fwmark 0x1b1b lookup 2727").count(),
        1,
        "{rules}"
    );
    let rules6 = w.lab.exec_ok(&node, &["ip", "-6", "rule"]);
    assert_eq!(
        rules6.matches("fwmark 0x1b1b lookup 2727").count(),
        1,
        "{rules6}"
    );
    let table = w
        .lab
        .exec_ok(&node, &["ip", "route", "show", "table", "2727"]);
    assert!(table.contains("local default dev lo"), "{table}");
    let nft = w
        .lab
        .exec_ok(&node, &["nft", "list", "table", "inet", "ironlb"]);
    assert_eq!(nft.matches("socket transparent 1").count(), 1, "{nft}");

    w.lab.terminate(speaker);
    let lo = w
        .lab
        .exec_ok(&node, &["ip", "-o", "addr", "show", "dev", "lo"]);
    assert!(
        !lo.contains(VIP),
        "the Service address outlived the speaker: {lo}"
    );
    assert!(lo.contains("10.77.0.198"), "{lo}");
    assert!(!w.lab.exec_ok(&node, &["ip", "rule"]).contains("0x1b1b"));
    assert!(
        !w.lab
            .exec_ok(&node, &["ip", "-6", "rule"])
            .contains("0x1b1b")
    );
    assert!(
        w.lab
            .exec(&node, &["nft", "list", "table", "inet", "ironlb"])
            .status
            .code()
            != Some(0)
    );
}

#[test]
fn udp_flows_follow_live_backends_and_affinity_limits_and_idle_hold() {
    let Some(mut w) = world("flows_affinity_limits", 1) else {
        return;
    };
    for (short, port, addr) in [("b1", "pb1", "10.77.0.21"), ("b2", "pb2", "10.77.0.22")] {
        let ns = w.backend_host(short, port, addr);
        w.peer_server(&ns, addr, 6000);
    }
    let both = "{address: 10.77.0.21}, {address: 10.77.0.22}";
    let services = |udp_endpoints: &str| {
        format!(
            "forwarder:\n  maxConnections: 1\n  tcpIdleSeconds: 1\n\
             services:\n\
             \x20 - name: game\n    address: {VIP}\n    ports: [{{port: 7777, protocol: UDP, targetPort: 6000}}]\n    endpoints: [{udp_endpoints}]\n\
             \x20 - name: sticky\n    address: {VIP}\n    sessionAffinitySeconds: 600\n    ports: [{{port: 80, targetPort: 6000}}]\n    endpoints: [{both}]\n\
             \x20 - name: limited\n    address: {VIP}\n    ports: [{{port: 81, targetPort: 6000}}]\n    endpoints: [{both}]\n"
        )
    };
    // `services:` is appended after the addresses; the forwarder section may
    // come anywhere in the file.
    let base = w.config(1, "");
    let config = |udp: &str| base.replace("services:\n", &services(udp));
    let first = config(both);
    let ns = w.nodes[0].clone();
    w.lab.start_speaker_with(&ns, 1, &first);
    w.wait_tcp(VIP, 80);

    // Affinity: every connection of this client lands on one backend.
    let at = |reply: &str| {
        reply
            .split_whitespace()
            .find_map(|f| f.strip_prefix("at="))
            .unwrap_or_default()
            .to_string()
    };
    let sticky: BTreeSet<String> = (0..6).map(|_| at(&w.tcp(VIP, 80, "s"))).collect();
    assert_eq!(sticky.len(), 1, "affinity did not hold: {sticky:?}");

    // One UDP client socket (one flow): its backend is removed, and its next
    // datagram is answered by the other backend at once.
    let script = format!(
        "import socket,sys,time\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(2)\n\
         def ask(m):\n  s.sendto(m,('{VIP}',7777));return s.recvfrom(65535)[0].decode()\n\
         print(ask(b'one'),flush=True)\n\
         sys.stdin.readline()\n\
         print(ask(b'two'),flush=True)\n"
    );
    let mut game = std::process::Command::new("ip")
        .args(["netns", "exec", &w.client, "python3", "-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(game.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let before = at(&line);
    assert!(line.contains("got=one"), "{line}");
    let keep = if before == "10.77.0.21" {
        "10.77.0.22"
    } else {
        "10.77.0.21"
    };
    std::fs::write(
        w.lab.speaker_config_path(1),
        config(&format!("{{address: {keep}}}")),
    )
    .unwrap();
    wait_for_file(&w.lab.dir().join("node-1.log"), "configuration reloaded");
    std::thread::sleep(Duration::from_millis(300));
    std::io::Write::write_all(game.stdin.as_mut().unwrap(), b"\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let _ = game.wait();
    assert!(
        line.contains("got=two"),
        "the flow's second datagram was lost: {line}"
    );
    assert_eq!(at(&line), keep, "the flow stayed on its removed backend");

    // maxConnections 1: a second connection while one is open is reset; the
    // first is closed by the 1 s idle timeout.
    let held = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &w.client,
            "python3",
            "-c",
            &format!(
                "import socket,time\ns=socket.create_connection(('{VIP}',81))\nt=time.time()\n\
                 print('closed' if s.recv(1)==b'' else 'data', round(time.time()-t,1))"
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let second = w.tcp(VIP, 81, "x");
    assert!(
        matches!(second.as_str(), "RESET" | "EMPTY"),
        "over the limit: {second}"
    );
    let held = held.wait_with_output().unwrap();
    let held = String::from_utf8_lossy(&held.stdout);
    assert!(held.starts_with("closed"), "idle connection: {held}");
    let m = w.metrics(1);
    assert_eq!(
        metric(
            &m,
            "ironlb_speaker_forwarder_refused_total{namespace=\"static\",service=\"limited\",reason=\"connection_limit\"}"
        ),
        1.0,
        "{m}"
    );
    // Once it is closed, the port takes a connection again.
    assert!(w.tcp(VIP, 81, "y").ends_with("got=y"));
}

/// A speaker in cluster mode, fed by the test API server inside the lab:
/// `ironlb.dev/forwarding: embedded` and an EndpointSlice are enough to be
/// forwarded, endpoint changes follow, and a Service whose PROXY setting is
/// unreadable gets a warning event from the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_services_with_embedded_forwarding_are_forwarded() {
    use ironlb::api::{L2Advertisement, L2AdvertisementSpec};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::Api;
    use kube::api::{Patch, PatchParams, PostParams};
    use support::{ApiServer, Svc, create_pool, create_service, pool};

    let Some(mut w) = world("cluster_forward", 1) else {
        return;
    };
    let control = w.lab.namespace("ctl");
    let sw = w.switch.clone();
    w.lab.plug(&sw, &control, "pctl", &["10.77.0.3/24"]);
    for (short, port, addr) in [("b1", "pb1", "10.77.0.21"), ("b2", "pb2", "10.77.0.22")] {
        let ns = w.backend_host(short, port, addr);
        w.peer_server(&ns, addr, 6000);
    }
    let server = ApiServer::start_in_namespace(&control, "10.77.0.3:6443".parse().unwrap()).await;
    let client = server.client();
    create_pool(&client, pool("lab", &["10.77.0.100-10.77.0.110"])).await;
    Api::<L2Advertisement>::all(client.clone())
        .create(
            &PostParams::default(),
            &L2Advertisement::new("lab", L2AdvertisementSpec::default()),
        )
        .await
        .unwrap();
    // The speaker's own Node: only members that are nodes may own addresses.
    let node: k8s_openapi::api::core::v1::Node =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "node-1"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let status = |ip: &str| serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "Proxy"}]}}});
    for (name, ip, proxy) in [("web", VIP, None), ("bad", "10.77.0.101", Some("v3"))] {
        let mut svc = Svc::lb("default", name).annotation("ironlb.dev/forwarding", "embedded");
        if let Some(p) = proxy {
            svc = svc.annotation("ironlb.dev/proxy-protocol", p);
        }
        create_service(&client, svc.build()).await;
        services
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status(ip)))
            .await
            .unwrap();
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice = |address: &str| -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"port": 6000, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address], "nodeName": "node-1", "conditions": {"ready": true}}],
        }))
        .unwrap()
    };
    slices
        .create(&PostParams::default(), &slice("10.77.0.21"))
        .await
        .unwrap();

    let kubeconfig = server.lab_kubeconfig(w.lab.dir());
    let ns = w.nodes[0].clone();
    w.lab.start_cluster_speaker(&ns, 1, "10.77.0", &kubeconfig);
    let first = w.wait_tcp(VIP, 80);
    assert!(
        first.starts_with("peer=10.77.0.11:") && first.contains("at=10.77.0.21"),
        "{first}"
    );
    let note = support::wait_for_event(&client, "default", "bad", "NotForwarded").await;
    assert!(
        note.contains("node-1")
            && note.contains("ironlb.dev/proxy-protocol")
            && note.contains("\"v3\""),
        "{note}"
    );

    // The endpoint moves: new connections follow within moments.
    let mut moved = slice("10.77.0.22");
    moved.metadata.resource_version = slices.get("web-1").await.unwrap().metadata.resource_version;
    slices
        .replace("web-1", &PostParams::default(), &moved)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = w.tcp(VIP, 80, "again");
        if out.contains("at=10.77.0.22") {
            break;
        }
        assert!(Instant::now() < deadline, "still {out}\n{}", w.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop();
}

#[test]
fn ipv6_addresses_are_forwarded_in_user_space_with_proxy_v2_and_in_the_kernel() {
    let Some(mut w) = world("ipv6", 1) else {
        return;
    };
    // The world is IPv4; add IPv6 to the node, the client and a backend.
    let node = w.nodes[0].clone();
    w.lab.exec_ok(
        &node,
        &["ip", "addr", "add", "fd77::11/64", "dev", "eth0", "nodad"],
    );
    let client = w.client.clone();
    w.lab.exec_ok(
        &client,
        &["ip", "addr", "add", "fd77::2/64", "dev", "eth0", "nodad"],
    );
    let ngx = w.backend_host("ngx6", "pn6", "10.77.0.22");
    w.lab.exec_ok(
        &ngx,
        &["ip", "addr", "add", "fd77::22/64", "dev", "eth0", "nodad"],
    );
    let temp = w.lab.nginx_temp_paths("nginx6");
    w.lab.nginx(
        &ngx,
        "nginx6",
        &format!(
            "http {{\n  access_log off;\n{temp}\
             server {{ listen [fd77::22]:8082 proxy_protocol;\n\
             location / {{ return 200 \"http client=$proxy_protocol_addr\\n\"; }} }}\n}}\n"
        ),
    );
    w.peer_server(&ngx, "fd77::22", 5353);
    // The node forwards IPv6, so the Services without a PROXY header take
    // the kernel path.
    w.lab
        .exec_ok(&node, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let config = "node: node-1\ngossip:\n  listen: 10.77.0.11:7946\n  secret: lab-gossip-secret\n\
         addresses:\n  - address: fd77::100\n    interfaces: [eth0]\n\
         services:\n\
         \x20 - name: web6\n    address: fd77::100\n    proxyProtocol: v2\n    ports: [{port: 80, targetPort: 8082}]\n    endpoints: [{address: fd77::22}]\n\
         \x20 - name: dns6\n    address: fd77::100\n    ports: [{port: 53, protocol: UDP, targetPort: 5353}, {port: 5000, targetPort: 5353}]\n    endpoints: [{address: fd77::22}]\n";
    w.lab.start_speaker_with(&node, 1, config);
    let deadline = Instant::now() + Duration::from_secs(15);
    let http = loop {
        let out = w.lab.exec(
            &client,
            &["curl", "-sS", "--max-time", "2", "http://[fd77::100]:80/"],
        );
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no answer over IPv6\n{}",
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        http, "http client=fd77::2",
        "the PROXY v2 header carried the IPv6 client"
    );
    let script = "import socket\n\
                  s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM);s.settimeout(2)\n\
                  s.sendto(b'q',('fd77::100',53));d,a=s.recvfrom(2048)\n\
                  print(a[0],a[1],d.decode())";
    let udp = w.lab.exec_ok(&client, &["python3", "-c", script]);
    assert!(
        udp.starts_with("fd77::100 53 peer=fd77::11:") && udp.trim().ends_with("got=q"),
        "{udp}"
    );
    // TCP on the kernel path too, masqueraded to the node's address as the
    // Service is `Cluster`.
    let tcp = w.tcp("fd77::100", 5000, "hello");
    assert!(
        tcp.starts_with("peer=fd77::11:") && tcp.ends_with("got=hello"),
        "{tcp}"
    );
    let table = w
        .lab
        .exec_ok(&node, &["nft", "list", "table", "inet", "ironlb"]);
    assert!(
        table.contains("fd77::100 . udp . 53 : jump route_")
            && table.contains("fd77::100 . tcp . 5000 : jump route_")
            && table.contains("dnat ip6 to numgen random mod 1 map { 0 : fd77::22 . 5353 }")
            && !table.contains("fd77::100 . tcp . 80 : jump"),
        "dns6 in the kernel, web6 (PROXY v2) in user space:\n{table}"
    );
}

/// A node that cannot open a Service's listener (another program of the node
/// holds the port) gives the address up to a node that can, and takes it back
/// once the port is free, after its hold-down.
#[test]
fn a_node_whose_listener_cannot_start_gives_the_address_up_and_retries() {
    let Some(mut w) = world("listener_cannot_start", 2) else {
        return;
    };
    let be = w.backend_host("be", "pb", "10.77.0.21");
    w.peer_server(&be, "10.77.0.21", 8080);
    let owner = support::netns::expected_owner(&["node-1", "node-2"], VIP);
    let (owner_i, other_i) = if owner == "node-1" { (1, 2) } else { (2, 1) };
    // A program of the owner's node listening on every address, port 80.
    let hog = w.lab.spawn(
        &w.nodes[owner_i - 1].clone(),
        "python3",
        &[
            "-c",
            "import socket, time\ns = socket.socket()\ns.bind(('0.0.0.0', 80))\ns.listen()\ntime.sleep(3600)",
        ],
        &w.lab.dir().join("hog.log"),
    );
    w.wait_listening(&w.nodes[owner_i - 1].clone(), 80);
    let services = service("web", 80, "10.77.0.21", 8080, "");
    w.speaker(1, &services);
    w.speaker(2, &services);
    let answer = w.wait_tcp(VIP, 80);
    assert!(
        answer.starts_with(&format!("peer=10.77.0.1{other_i}:")),
        "forwarded by node-{other_i}, since node-{owner_i} cannot listen: {answer}\n{}",
        w.logs()
    );
    let log = w.lab.dir().join(format!("node-{owner_i}.log"));
    let text = wait_for_file(&log, "cannot serve");
    assert!(text.contains("cannot serve"), "{text}");

    // The port is freed: once the hold-down is over the owner tries again,
    // succeeds, and the address comes back.
    w.lab.kill(hog);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = w.tcp(VIP, 80, "hello");
        if answer.starts_with(&format!("peer=10.77.0.1{owner_i}:")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node-{owner_i} never took {VIP} back (last: {answer}):\n{}",
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Only the Services' ports answer on a Service address: the node's own
/// programs listening on every address (an sshd stand-in on 22, ironlb's
/// metrics on 9121) do not, though they still answer on the node's own
/// address; and a Service asking for a port the node keeps is refused,
/// naming the port and whose it is.
#[test]
fn only_the_services_ports_answer_on_its_address() {
    let Some(mut w) = world("only_service_ports", 1) else {
        return;
    };
    let be = w.backend_host("be", "pb", "10.77.0.21");
    w.peer_server(&be, "10.77.0.21", 8080);
    let node = w.nodes[0].clone();
    w.peer_server(&node.clone(), "0.0.0.0", 22);
    let services = service("web", 80, "10.77.0.21", 8080, "")
        + &format!(
            "  - name: clash\n    address: {VIP}\n    ports: [{{port: 9121, targetPort: 8080}}]\n    endpoints: [{{address: 10.77.0.21}}]\n"
        );
    w.speaker(1, &services);
    let answer = w.wait_tcp(VIP, 80);
    assert!(answer.ends_with("got=hello"), "{answer}");
    for port in [22, 9121] {
        let out = w.tcp(VIP, port, "hello");
        assert_eq!(
            out,
            "TIMEOUT",
            "{VIP}:{port} must not answer:\n{}",
            w.logs()
        );
        let own = w.tcp("10.77.0.11", port, "hello");
        assert_ne!(own, "TIMEOUT", "the node's own address still serves {port}");
    }
    let log = w.lab.dir().join("node-1.log");
    let text = wait_for_file(&log, "TCP port 9121 is the node's own (ironlb's metrics)");
    assert!(
        text.contains("TCP port 9121 is the node's own (ironlb's metrics)"),
        "{text}"
    );
    let table = w
        .lab
        .exec_ok(&node, &["nft", "list", "table", "inet", "ironlb"]);
    assert!(table.contains(&format!("{VIP} . tcp . 80")), "{table}");
    assert!(!table.contains("9121"), "{table}");
}

/// Open file descriptors and resident memory (KiB) of process `pid`.
fn process_usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (fds, rss)
}

/// A real UDP client asking `count` times, each from a new socket (a new
/// flow) with a one-second deadline: prints how many were answered.
fn udp_client_script(port: u16, count: usize) -> String {
    format!(
        "import socket,time\nok=0\n\
         for i in range({count}):\n\
         \x20 s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(1.0)\n\
         \x20 s.sendto(b'real%d'%i,('{VIP}',{port}))\n\
         \x20 try:\n\
         \x20   if b'got=real' in s.recvfrom(65535)[0]: ok+=1\n\
         \x20 except Exception: pass\n\
         \x20 s.close();time.sleep(0.1)\n\
         print('answered',ok,flush=True)\n"
    )
}

/// A flood of datagrams from thousands of spoofed sources fills the flow
/// table, yet a real client is answered every time within a second: new
/// clients evict flows instead of being refused. Then 200,000 distinct
/// sources against a Service with `sessionAffinity: ClientIP`: the flows, the
/// speaker's sockets, its memory and the affinity table stay within their
/// caps, and the node can still open UDP sockets of its own.
#[test]
fn a_spoofed_udp_flood_neither_starves_real_clients_nor_grows_without_bound() {
    let Some(mut w) = world("udp_flood", 1) else {
        return;
    };
    let be = w.backend_host("be", "pb", "10.77.0.21");
    w.peer_server(&be, "10.77.0.21", 6000);
    let node = w.nodes[0].clone();
    // Replies to the spoofed sources go to the client's host, which drops
    // them (it does not forward): they stay inside the lab.
    w.lab.exec_ok(
        &node,
        &["ip", "route", "add", "10.200.0.0/14", "via", CLIENT],
    );
    // The affinity cap is below what a debug build takes in during one
    // flood (8,000 to 12,000 of the 200,000 datagrams; the rest overflow the
    // socket's buffer), so the cap is reached.
    let (flows, clients) = (500, 5_000);
    let base = w.config(1, "");
    let config = base.replace(
        "services:\n",
        &format!(
            "forwarder:\n  maxFlows: {flows}\n  maxAffinityClients: {clients}\n\
             services:\n\
             \x20 - name: dns\n    address: {VIP}\n    sessionAffinitySeconds: 600\n    ports: [{{port: 53, protocol: UDP, targetPort: 6000}}]\n    endpoints: [{{address: 10.77.0.21}}]\n"
        ),
    );
    let speaker = w.lab.start_speaker_with(&node, 1, &config);
    w.wait_udp(53);
    let pid = w.lab.pid(speaker);
    let (fds_before, rss_before) = process_usage(pid);

    // 1. 3,000 spoofed sources at 2,000 a second, six times the table: a real
    // client asking meanwhile gets every answer.
    let flood = |count: usize, rate: usize| {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &w.client,
                "python3",
                &peer(),
                "flood",
                VIP,
                "53",
            ])
            .args([count.to_string(), rate.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let paced = flood(3_000, 2_000);
    std::thread::sleep(Duration::from_millis(400));
    let real = w
        .lab
        .exec_ok(&w.client, &["python3", "-c", &udp_client_script(53, 10)]);
    let paced = paced.wait_with_output().unwrap();
    assert!(paced.status.success(), "{paced:?}");
    assert_eq!(
        real.trim(),
        "answered 10",
        "a real client was starved by the flood:\n{}",
        w.logs()
    );
    let m = w.metrics(1);
    let evicted = metric(
        &m,
        "ironlb_speaker_forwarder_udp_flows_evicted_total{namespace=\"static\",service=\"dns\",reason=\"least_recent\"}",
    ) + metric(
        &m,
        "ironlb_speaker_forwarder_udp_flows_evicted_total{namespace=\"static\",service=\"dns\",reason=\"unanswered\"}",
    );
    assert!(evicted >= 2_000.0, "flows evicted: {evicted}\n{m}");
    assert!(
        metric(
            &m,
            "ironlb_speaker_forwarder_udp_flows{namespace=\"static\",service=\"dns\"}"
        ) <= flows as f64
    );

    // 2. 200,000 distinct sources as fast as they can be sent, again until
    // the forwarder took in twice the affinity cap: how much of a flood
    // gets past the socket's buffer depends on the machine's speed.
    let mut peak_fds = 0;
    let mut rounds = 0;
    let (out, m) = loop {
        rounds += 1;
        let mut unpaced = flood(200_000, 0);
        while unpaced.try_wait().unwrap().is_none() {
            peak_fds = peak_fds.max(process_usage(pid).0);
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = unpaced.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let m = w.metrics(1);
        let seen = metric(
            &m,
            "ironlb_speaker_forwarder_udp_datagrams_total{namespace=\"static\",service=\"dns\"}",
        );
        if seen >= (2 * clients) as f64 || rounds == 5 {
            break (out, m);
        }
    };
    let (_, rss_after) = process_usage(pid);
    eprintln!(
        "{} datagrams ({rounds} rounds): descriptors {fds_before} -> peak {peak_fds}, RSS {rss_before} -> {rss_after} KiB, {}",
        String::from_utf8_lossy(&out.stdout).trim(),
        m.lines()
            .filter(|l| l.contains("service=\"dns\"") && !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let remembered = metric(
        &m,
        "ironlb_speaker_forwarder_affinity_clients{namespace=\"static\",service=\"dns\"}",
    );
    let seen = metric(
        &m,
        "ironlb_speaker_forwarder_udp_datagrams_total{namespace=\"static\",service=\"dns\"}",
    );
    assert!(
        seen >= (2 * clients) as f64,
        "only {seen} datagrams reached the forwarder"
    );
    assert_eq!(
        remembered, clients as f64,
        "affinity remembers {remembered} clients of {seen} (cap {clients})"
    );
    // One socket per flow, besides the speaker's own.
    assert!(
        peak_fds <= fds_before + flows + 32,
        "{peak_fds} descriptors open (before the flood: {fds_before}, flow cap {flows})"
    );
    // About 120 bytes per remembered client and 1 KiB per flow
    // (docs/forwarder.md), with room for the allocator's slack.
    let grown = rss_after.saturating_sub(rss_before);
    assert!(
        grown < 16 * 1024,
        "resident memory grew by {grown} KiB for {clients} clients and {flows} flows"
    );
    // The node's own programs still get UDP sockets.
    let own = w.lab.exec_ok(
        &node,
        &[
            "python3",
            "-c",
            "import socket\nss=[socket.socket(socket.AF_INET,socket.SOCK_DGRAM) for _ in range(200)]\n\
             [s.bind(('0.0.0.0',0)) for s in ss]\nprint('bound',len(ss))",
        ],
    );
    assert_eq!(own.trim(), "bound 200");
    let real = w
        .lab
        .exec_ok(&w.client, &["python3", "-c", &udp_client_script(53, 3)]);
    assert_eq!(real.trim(), "answered 3", "{}", w.logs());
}

/// A burst of connections to a backend slow to accept: its queue overflows,
/// SYNs are dropped, and TCP retransmits them after 1 s and 3 s. The connect
/// timeout outlasts the second retransmission, so every connection reaches
/// the backend, as through HAProxy or nginx.
#[test]
fn a_burst_reaches_a_backend_slow_to_accept() {
    let Some(mut w) = world("connect_burst", 1) else {
        return;
    };
    let be = w.backend_host("be", "pb", "10.77.0.21");
    w.speaker(1, &service("db", 80, "10.77.0.21", 7000, ""));
    wait_for_file(&w.lab.dir().join("node-1.log"), "listening");
    // The backend listens (backlog 128) but accepts nothing for 2.5 s.
    w.lab.spawn(
        &be,
        "python3",
        &[&peer(), "slowaccept", "10.77.0.21", "7000", "2.5"],
        &w.lab.dir().join("slow.log"),
    );
    w.wait_listening(&be, 7000);
    let out = w.lab.exec_ok(
        &w.client,
        &["python3", &peer(), "burst", VIP, "80", "300", "300", "20"],
    );
    let m = w.metrics(1);
    assert_eq!(
        out.trim(),
        "answered=300",
        "{}\n{}",
        m.lines()
            .filter(|l| l.contains("service=\"db\"") && !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n"),
        w.logs()
    );
    assert_eq!(
        metric(
            &m,
            "ironlb_speaker_forwarder_backend_connect_timeouts_total{namespace=\"static\",service=\"db\"}"
        ),
        0.0
    );
}

/// A speaker whose open-file limit holds fewer connections than a client
/// opens: the connections that fit are carried, the rest are reset at once
/// (`open_file_limit`) instead of waiting in an accept queue that EMFILE
/// stalls, and once they close the Service serves again. One client address
/// is not limited by default.
#[test]
fn a_node_out_of_descriptors_refuses_cleanly_and_serves_again() {
    let Some(mut w) = world("out_of_descriptors", 1) else {
        return;
    };
    let be = w.backend_host("be", "pb", "10.77.0.21");
    w.peer_server(&be, "10.77.0.21", 5432);
    let config = w.config(1, &service("db", 5432, "10.77.0.21", 5432, ""));
    let path = w.lab.speaker_config_path(1);
    std::fs::write(&path, config).unwrap();
    let log = w.lab.dir().join("node-1.log");
    let node = w.nodes[0].clone();
    // 400 descriptors: 256 kept for the speaker, 144 for 72 connections.
    w.lab.spawn(
        &node,
        "prlimit",
        &[
            "--nofile=400:400",
            env!("CARGO_BIN_EXE_ironlb"),
            "speaker",
            "--static",
            path.to_str().unwrap(),
        ],
        &log,
    );
    w.wait_tcp(VIP, 5432);
    // A refusal's reset can beat the client's own wake-up from connect: then
    // connect itself reports it, which counts as the same refusal.
    let burst = format!(
        "import socket,time\nss=[]\nopen_=reset=0\n\
         for i in range(100):\n\
         \x20 try: s=socket.create_connection(('{VIP}',5432),timeout=3);ss.append(s)\n\
         \x20 except ConnectionResetError: reset+=1\n\
         time.sleep(1)\n\
         for s in ss:\n\
         \x20 s.settimeout(0.05)\n\
         \x20 try: s.recv(1)\n\
         \x20 except socket.timeout: open_+=1\n\
         \x20 except ConnectionResetError: reset+=1\n\
         print('open',open_,'reset',reset,flush=True)\n\
         for s in ss: s.close()\n"
    );
    let out = w.lab.exec_ok(&w.client, &["python3", "-c", &burst]);
    assert_eq!(out.trim(), "open 72 reset 28", "{}", w.logs());
    let m = w.metrics(1);
    assert_eq!(
        metric(
            &m,
            "ironlb_speaker_forwarder_refused_total{namespace=\"static\",service=\"db\",reason=\"open_file_limit\"}"
        ),
        28.0,
        "{m}"
    );
    assert!(
        !w.logs().contains("accept failed"),
        "accepts failed instead of being refused:\n{}",
        w.logs()
    );
    // The closed connections gave their descriptors back.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let served = w.tcp(VIP, 5432, "query");
        if served.ends_with("got=query") {
            break;
        }
        assert!(Instant::now() < deadline, "not served again: {served}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One client opens many connections and sends nothing: beyond its
/// per-source limit it is reset at once, another client is still served, and
/// the silent connections are closed by the handshake timeout.
#[test]
fn silent_connections_are_limited_per_source_and_closed_on_time() {
    let Some(mut w) = world("silent_connections", 1) else {
        return;
    };
    let be = w.backend_host("be", "pb", "10.77.0.21");
    w.peer_server(&be, "10.77.0.21", 5432);
    let other = w.lab.namespace("other");
    let sw = w.switch.clone();
    w.lab.plug(&sw, &other, "po", &["10.77.0.61/24"]);
    let base = w.config(1, "");
    let config = base.replace(
        "services:\n",
        &format!(
            "forwarder:\n  maxConnectionsPerSource: 20\n  tcpHandshakeSeconds: 2\nservices:\n{}",
            service("db", 5432, "10.77.0.21", 5432, "")
        ),
    );
    let node = w.nodes[0].clone();
    w.lab.start_speaker_with(&node, 1, &config);
    w.wait_tcp(VIP, 5432);
    // 30 silent connections from the client; each line says how it ended
    // and when, in seconds after it was opened.
    let silent = format!(
        "import socket,select,time\nss=[]\n\
         for i in range(30):\n\
         \x20 s=socket.create_connection(('{VIP}',5432));ss.append((s,time.time()))\n\
         open_=dict((s.fileno(),t) for s,t in ss)\nleft=[s for s,_ in ss]\n\
         while left:\n\
         \x20 r,_,_=select.select(left,[],[],15)\n\
         \x20 if not r: break\n\
         \x20 for s in r:\n\
         \x20   try: how='closed' if s.recv(1)==b'' else 'data'\n\
         \x20   except ConnectionResetError: how='reset'\n\
         \x20   print(how,round(time.time()-open_[s.fileno()],1),flush=True);left.remove(s)\n\
         for s in left: print('open',flush=True)\n"
    );
    let flood = std::process::Command::new("ip")
        .args(["netns", "exec", &w.client, "python3", "-c", &silent])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let served = w.tcp_from(&other, VIP, 5432, "query");
    assert!(
        served.starts_with("peer=10.77.0.11:") && served.ends_with("got=query"),
        "another client was not served: {served}"
    );
    let out = flood.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let ends: Vec<(&str, f64)> = out
        .lines()
        .filter_map(|l| {
            let (how, t) = l.split_once(' ')?;
            Some((how, t.parse().ok()?))
        })
        .collect();
    let reset = ends.iter().filter(|(how, _)| *how == "reset").count();
    let closed: Vec<f64> = ends
        .iter()
        .filter(|(how, _)| *how == "closed")
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(reset, 10, "beyond the per-source limit of 20:\n{out}");
    assert_eq!(closed.len(), 20, "{out}");
    assert!(
        closed.iter().all(|t| (1.5..=6.0).contains(t)),
        "the silent connections were not closed by the 2 s handshake timeout: {closed:?}"
    );
    let m = w.metrics(1);
    let series = |name: &str, label: &str| {
        metric(
            &m,
            &format!(
                "ironlb_speaker_forwarder_{name}{{namespace=\"static\",service=\"db\",{label}}}"
            ),
        )
    };
    assert_eq!(
        series("refused_total", "reason=\"source_limit\""),
        10.0,
        "{m}"
    );
    assert_eq!(
        series("timeouts_total", "timeout=\"handshake\""),
        20.0,
        "{m}"
    );
}

/// Backends that misbehave, through ironlb and, side by side, directly and
/// through HAProxy in TCP mode on the node's own address with the same
/// timeouts. A backend that resets mid-stream: the client gets the bytes sent
/// before, then the reset — as directly, or through kube-proxy's NAT; HAProxy
/// turns it into a FIN, which hides that the answer was cut short. A backend
/// that accepts and never answers: closed by the timeout, through both alike.
#[test]
fn misbehaving_backends_look_to_the_client_as_through_haproxy() {
    let Some(mut w) = world("misbehaving_backends", 1) else {
        return;
    };
    let be = w.backend_host("be", "pb", "10.77.0.21");
    for (port, how) in [("7001", "reset"), ("7002", "silent")] {
        w.lab.spawn(
            &be,
            "python3",
            &[&peer(), "misbehave", "10.77.0.21", port, how],
            &w.lab.dir().join(format!("{how}.log")),
        );
        w.wait_listening(&be, port.parse().unwrap());
    }
    let node = w.nodes[0].clone();
    let hap_cfg = w.lab.dir().join("haproxy.cfg");
    std::fs::write(
        &hap_cfg,
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 2s\n  timeout server 2s\n\
         listen reset\n  bind 10.77.0.11:8001\n  server be 10.77.0.21:7001\n\
         listen silent\n  bind 10.77.0.11:8002\n  server be 10.77.0.21:7002\n",
    )
    .unwrap();
    w.lab.spawn(
        &node,
        "haproxy",
        &["-db", "-f", hap_cfg.to_str().unwrap()],
        &w.lab.dir().join("haproxy.log"),
    );
    w.wait_listening(&node, 8002);
    let base = w.config(1, "");
    let config = base.replace(
        "services:\n",
        &format!(
            "forwarder:\n  tcpIdleSeconds: 2\n  tcpHandshakeSeconds: 2\nservices:\n{}{}",
            service("reset", 81, "10.77.0.21", 7001, ""),
            service("silent", 82, "10.77.0.21", 7002, "")
        ),
    );
    w.lab.start_speaker_with(&node, 1, &config);
    wait_for_file(&w.lab.dir().join("node-1.log"), "listening");
    let outcome = |address: &str, port: u16| {
        let out = w.lab.exec_ok(
            &w.client,
            &["python3", &peer(), "outcome", address, &port.to_string()],
        );
        let fields: Vec<String> = out.split_whitespace().map(str::to_string).collect();
        (out.trim().to_string(), fields)
    };
    // Resets mid-stream: the bytes sent before, then the reset passed on.
    let (ours, o) = outcome(VIP, 81);
    let (direct, d) = outcome("10.77.0.21", 7001);
    let (theirs, t) = outcome("10.77.0.11", 8001);
    eprintln!("reset mid-stream: ironlb {ours}; direct {direct}; HAProxy {theirs}");
    assert_eq!(o[..2], d[..2], "ironlb: {ours}; direct: {direct}");
    assert_eq!(o[..2], ["bytes=1000", "end=reset"], "{ours}");
    assert_eq!(o[0], t[0], "ironlb: {ours}; HAProxy: {theirs}");
    // Accepts and never answers: closed by the 2 s timeout.
    let (ours, o) = outcome(VIP, 82);
    let (theirs, t) = outcome("10.77.0.11", 8002);
    eprintln!("never answers: ironlb {ours}; HAProxy {theirs}");
    assert_eq!(o[..2], t[..2], "ironlb: {ours}; HAProxy: {theirs}");
    let after = |f: &[String]| -> f64 {
        f[2].trim_start_matches("after=")
            .parse()
            .unwrap_or(f64::MAX)
    };
    assert!(
        (1.5..=4.0).contains(&after(&o)),
        "ironlb closed after {ours}"
    );
}

/// A backend whose endpoint leaves the EndpointSlice in the middle of a
/// connection (its pod terminating): the connection goes on past the drain
/// period until it ends, as through kube-proxy; new connections go to the
/// endpoint left.
#[test]
fn a_connection_outlives_its_endpoint_until_it_ends() {
    let Some(mut w) = world("endpoint_leaves", 1) else {
        return;
    };
    for (short, port, addr) in [("l1", "pl1", "10.77.0.21"), ("l2", "pl2", "10.77.0.22")] {
        let ns = w.backend_host(short, port, addr);
        w.lab.spawn(
            &ns,
            "python3",
            &[&peer(), "lines", addr, "7100"],
            &w.lab.dir().join(format!("{short}.log")),
        );
        w.wait_listening(&ns, 7100);
    }
    let base = w.config(1, "");
    let services = |endpoints: &str| {
        base.replace(
            "services:\n",
            &format!(
                "forwarder:\n  drainSeconds: 1\nservices:\n  - name: chat\n    address: {VIP}\n    ports: [{{port: 7100}}]\n    endpoints: [{endpoints}]\n"
            ),
        )
    };
    let node = w.nodes[0].clone();
    w.lab.start_speaker_with(
        &node,
        1,
        &services("{address: 10.77.0.21}, {address: 10.77.0.22}"),
    );
    wait_for_file(&w.lab.dir().join("node-1.log"), "listening");
    let script = format!(
        "import socket,sys\ns=socket.create_connection(('{VIP}',7100),timeout=10)\nf=s.makefile('rb')\n\
         for line in sys.stdin:\n  s.sendall(line.encode());print(f.readline().decode().strip(),flush=True)\n"
    );
    let mut chat = std::process::Command::new("ip")
        .args(["netns", "exec", &w.client, "python3", "-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut replies = std::io::BufReader::new(chat.stdout.take().unwrap());
    let mut say = |line: &str| {
        std::io::Write::write_all(chat.stdin.as_mut().unwrap(), format!("{line}\n").as_bytes())
            .unwrap();
        let mut reply = String::new();
        std::io::BufRead::read_line(&mut replies, &mut reply).unwrap();
        reply.trim().to_string()
    };
    let first = say("one");
    let at = first
        .strip_prefix("at=")
        .and_then(|r| r.split(' ').next())
        .unwrap_or_default()
        .to_string();
    assert!(first.ends_with(" one"), "{first}");
    let left = if at == "10.77.0.21" {
        "10.77.0.22"
    } else {
        "10.77.0.21"
    };
    std::fs::write(
        w.lab.speaker_config_path(1),
        services(&format!("{{address: {left}}}")),
    )
    .unwrap();
    wait_for_file(&w.lab.dir().join("node-1.log"), "configuration reloaded");
    // Well past the 1 s drain.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(say("two"), format!("at={at} two"), "{}", w.logs());
    let _ = chat.kill();
    let _ = chat.wait();
    let fresh = w.lab.exec_ok(
        &w.client,
        &[
            "python3",
            "-c",
            &format!(
                "import socket\ns=socket.create_connection(('{VIP}',7100),timeout=5)\ns.sendall(b'new\\n')\nprint(s.makefile('rb').readline().decode().strip())"
            ),
        ],
    );
    assert_eq!(fresh.trim(), format!("at={left} new"));
}

/// An upgrade: a new speaker starts beside the old one on the owner's node
/// (a DaemonSet with `maxSurge: 1`), takes its sockets over, and the old one
/// is terminated. A long transfer goes on through it with its checksum
/// intact, a UDP exchange gets every answer, nothing is reset, the node keeps
/// its address throughout (the other node never announces it), and the old
/// speaker exits once its connection is done, leaving the address and the
/// filter in place for its successor.
#[test]
fn an_upgrade_hands_the_sockets_over_and_resets_no_connection() {
    upgrade("handover", false);
}

/// The same upgrade on nodes that forward IP, where both Services take the
/// kernel path: the connection and the flow live in conntrack, the old
/// speaker leaves the table for its successor, which writes the same rules.
#[test]
fn an_upgrade_resets_no_connection_on_the_kernel_path() {
    upgrade("handover_kernel", true);
}

fn upgrade(test: &str, kernel: bool) {
    let Some(mut w) = world(test, 2) else {
        return;
    };
    if kernel {
        for node in w.nodes.clone() {
            w.lab
                .exec_ok(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        }
    }
    let size = 8 * 1024 * 1024;
    let sent = w.stream_backend("s1", "p1s", "10.77.0.21", size);
    let udp_be = w.backend_host("u1", "p1u", "10.77.0.22");
    w.peer_server(&udp_be, "10.77.0.22", 6000);
    let services = "  - name: bulk\n    address: 10.77.0.100\n    ports: [{port: 9000}]\n    endpoints: [{address: 10.77.0.21}]\n\
                    \x20 - name: game\n    address: 10.77.0.100\n    ports: [{port: 7777, protocol: UDP, targetPort: 6000}]\n    endpoints: [{address: 10.77.0.22}]\n";
    let start = |w: &mut World, i: usize, log: &str| {
        let config = w.config(i, services);
        let path = w.lab.speaker_config_path(i);
        std::fs::write(&path, config).expect("lab step");
        let socket = w.lab.dir().join(format!("handover-{i}.sock"));
        w.handover_speaker(i, &path, &socket, log)
    };
    let first = start(&mut w, 1, "node-1.log");
    let second = start(&mut w, 2, "node-2.log");
    let owner = support::netns::expected_owner(&["node-1", "node-2"], VIP);
    let (o, other) = if owner == "node-1" { (1, 2) } else { (2, 1) };
    let old = if o == 1 { first } else { second };
    w.wait_udp(7777);
    let transfer = w.fetch();
    // A datagram every 50 ms for 5 s, each answered within a second.
    let exchange = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &w.client,
            "python3",
            "-c",
            &format!(
                "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(1)\nok=0\n\
                 for i in range(100):\n  s.sendto(b'd%d'%i,('{VIP}',7777))\n  try:\n    ok+=b'got=d%d'%i in s.recvfrom(65535)[0]\n  except OSError: pass\n  time.sleep(0.05)\n\
                 print('answered',ok,'of',100)"
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("lab step");
    std::thread::sleep(Duration::from_millis(700));
    let new = start(&mut w, o, &format!("node-{o}-new.log"));
    let new_log = w.lab.dir().join(format!("node-{o}-new.log"));
    let text = wait_for_file(&new_log, "took over the sockets");
    assert!(
        text.contains("took over the sockets"),
        "{text}\n{}",
        w.logs()
    );
    // Kubernetes terminates the old pod once the new one is ready.
    let old_pid = w.lab.pid(old).to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &old_pid])
        .output();

    let received = transfer.wait_with_output().expect("lab step");
    let received = String::from_utf8_lossy(&received.stdout).trim().to_string();
    let sent = wait_for_file(&sent, " ");
    assert_eq!(received, sent.trim(), "the transfer broke:\n{}", w.logs());
    assert!(received.starts_with(&format!("{size} ")), "{received}");
    let exchange = exchange.wait_with_output().expect("lab step");
    let exchange = String::from_utf8_lossy(&exchange.stdout);
    assert_eq!(exchange.trim(), "answered 100 of 100", "{}", w.logs());

    // The old speaker exits once its connection is done, well before the
    // 30 s drain.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(format!("/proc/{old_pid}")).is_ok()
        && !std::fs::read_to_string(format!("/proc/{old_pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(Instant::now() < deadline, "the old speaker never exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    let old_log =
        std::fs::read_to_string(w.lab.dir().join(format!("node-{o}.log"))).expect("lab step");
    assert!(
        old_log.contains("speaker stopped after handing over"),
        "{old_log}"
    );
    // The node kept its address: the other node never announced it, and the
    // address and the filter are still there for the new speaker.
    let other_log = plain(
        &std::fs::read_to_string(w.lab.dir().join(format!("node-{other}.log"))).expect("lab step"),
    );
    assert!(
        !other_log
            .lines()
            .any(|l| l.contains("announcing") && l.contains(&format!("address={VIP} "))),
        "node-{other} announced {VIP} during the upgrade:\n{other_log}"
    );
    assert!(
        other_log
            .lines()
            .filter(|l| l.contains("membership members="))
            .all(|l| l.contains(&format!("\"node-{o}\""))),
        "node-{other} saw node-{o} leave:\n{other_log}"
    );
    let node = w.nodes[o - 1].clone();
    let lo = w
        .lab
        .exec_ok(&node, &["ip", "-o", "addr", "show", "dev", "lo"]);
    assert!(lo.contains(&format!("inet {VIP}/32")), "{lo}");
    let table = w
        .lab
        .exec_ok(&node, &["nft", "list", "table", "inet", "ironlb"]);
    assert_eq!(
        table.contains(&format!("{VIP} . tcp . 9000 : jump route_"))
            && table.contains(&format!("{VIP} . udp . 7777 : jump route_")),
        kernel,
        "{table}"
    );
    let again = w.udp(&w.client, VIP, 7777, "after");
    assert!(again.contains("got=after"), "{again}");
    let _ = new;
}

/// A log without its colours.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A speaker stopped with no successor (SIGTERM) leaves the group and
/// withdraws at once, but keeps its address until the transfer in flight is
/// done (up to the drain period), then removes it and exits.
#[test]
fn a_stopped_speaker_lets_a_transfer_in_flight_finish() {
    let Some(mut w) = world("stop_drains", 1) else {
        return;
    };
    let size = 8 * 1024 * 1024;
    let sent = w.stream_backend("s1", "p1s", "10.77.0.21", size);
    let speaker = w.speaker(
        1,
        &format!("  - name: bulk\n    address: {VIP}\n    ports: [{{port: 9000}}]\n    endpoints: [{{address: 10.77.0.21}}]\n"),
    );
    wait_for_file(&w.lab.dir().join("node-1.log"), "listening");
    let transfer = w.fetch();
    std::thread::sleep(Duration::from_millis(700));
    let stopped = Instant::now();
    w.lab.terminate(speaker);
    let waited = stopped.elapsed();
    let received = transfer.wait_with_output().unwrap();
    let received = String::from_utf8_lossy(&received.stdout).trim().to_string();
    let sent = wait_for_file(&sent, " ");
    assert_eq!(received, sent.trim(), "the transfer broke:\n{}", w.logs());
    let log = plain(&std::fs::read_to_string(w.lab.dir().join("node-1.log")).unwrap());
    assert!(log.contains("connections drained"), "{log}");
    assert!(
        waited > Duration::from_secs(1) && waited < Duration::from_secs(20),
        "the speaker exited after {waited:?}, not when the transfer ended:\n{log}"
    );
    let node = w.nodes[0].clone();
    let lo = w
        .lab
        .exec_ok(&node, &["ip", "-o", "addr", "show", "dev", "lo"]);
    assert!(!lo.contains(VIP), "{lo}");
}

/// A new speaker that takes the sockets and dies before it is ready (a bad
/// configuration, a crash-looping pod): the old one carries on serving and
/// gossiping, and a later successor still takes over.
#[test]
fn a_successor_that_dies_before_it_is_ready_leaves_the_old_speaker_serving() {
    let Some(mut w) = world("handover_dies", 1) else {
        return;
    };
    let be = w.backend_host("be", "pb", "10.77.0.21");
    w.peer_server(&be, "10.77.0.21", 8080);
    let config = w.config(1, &service("web", 80, "10.77.0.21", 8080, ""));
    let path = w.lab.speaker_config_path(1);
    std::fs::write(&path, config).unwrap();
    let socket = w.lab.dir().join("handover.sock");
    let speaker = |w: &mut World, config: &std::path::Path, log: &str| {
        w.handover_speaker(1, config, &socket, log)
    };
    speaker(&mut w, &path, "node-1.log");
    w.wait_tcp(VIP, 80);
    // Its static file does not parse: it takes the sockets, then exits.
    let broken = w.lab.dir().join("broken.yaml");
    std::fs::write(&broken, "node: [").unwrap();
    let dead = speaker(&mut w, &broken, "broken.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{}/stat", w.lab.pid(dead)))
        .is_ok_and(|s| !s.contains(") Z"))
    {
        assert!(Instant::now() < deadline, "the broken speaker did not exit");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = w.lab.dir().join("node-1.log");
    let text = plain(&wait_for_file(&log, "carries on"));
    assert!(text.contains("took this one's sockets"), "{text}");
    assert!(text.contains("this one carries on"), "{text}");
    let answer = w.tcp(VIP, 80, "still");
    assert!(answer.ends_with("got=still"), "{answer}");
    // A good successor later still takes over.
    speaker(&mut w, &path, "node-1-new.log");
    let new_log = w.lab.dir().join("node-1-new.log");
    let text = wait_for_file(&new_log, "took over the sockets");
    assert!(text.contains("took over the sockets"), "{text}");
    let answer = w.tcp(VIP, 80, "after");
    assert!(answer.ends_with("got=after"), "{answer}");
}

/// Services that need nothing of user space are forwarded by the kernel
/// (nftables DNAT) on a node that forwards IP: the pod still sees the
/// client's own address, the node's own ports and outsiders are still
/// refused, a Service asking for `user` stays in user space, and when the
/// owner dies the other node takes the address and forwards it the same way.
#[test]
fn the_kernel_path_keeps_the_client_refuses_the_rest_and_fails_over() {
    let Some(mut w) = world("kernel_path", 2) else {
        return;
    };
    let outsider = w.outsider();
    for i in 1..=2 {
        w.pod(i);
        let node = w.nodes[i - 1].clone();
        w.lab
            .exec_ok(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // A program of the node's own, on every address.
        w.peer_server(&node, "0.0.0.0", 2222);
    }
    let be = w.backend_host("be", "pb", "10.77.0.21");
    w.peer_server(&be, "10.77.0.21", 7000);
    let services = format!(
        "  - name: web\n    address: {VIP}\n    externalTrafficPolicy: Local\n    \
         ports: [{{port: 80, targetPort: 5000}}, {{port: 53, protocol: UDP, targetPort: 5000}}]\n    \
         endpoints: [{{address: 10.88.1.2, node: node-1}}, {{address: 10.88.2.2, node: node-2}}]\n\
         \x20 - name: db\n    address: 10.77.0.101\n    sourceRanges: [10.77.0.0/28]\n    \
         ports: [{{port: 5432, targetPort: 7000}}]\n    endpoints: [{{address: 10.77.0.21}}]\n\
         \x20 - name: pinned\n    address: 10.77.0.101\n    forwardingPath: user\n    \
         ports: [{{port: 8080, targetPort: 7000}}]\n    endpoints: [{{address: 10.77.0.21}}]\n"
    );
    let speakers = [w.speaker(1, &services), w.speaker(2, &services)];

    let first = w.wait_tcp(VIP, 80);
    assert!(first.starts_with(&format!("peer={CLIENT}:")), "{first}");
    let owner: usize = if first.contains("at=10.88.1.2") { 1 } else { 2 };
    for _ in 0..4 {
        let out = w.tcp(VIP, 80, "again");
        assert!(
            out.starts_with(&format!("peer={CLIENT}:"))
                && out.contains(&format!("at=10.88.{owner}.2")),
            "a Local connection left the owner or lost the client's address: {out}"
        );
    }
    let udp = w.udp(&w.client, VIP, 53, "q");
    assert!(
        udp.starts_with(&format!("from={VIP}:53 peer={CLIENT}:")) && udp.ends_with("got=q"),
        "{udp}"
    );
    let table = w.lab.exec_ok(
        &w.nodes[owner - 1],
        &["nft", "list", "table", "inet", "ironlb"],
    );
    assert!(
        table.contains(&format!("{VIP} . tcp . 80 : jump route_"))
            && table.contains("dnat ip to numgen random mod 1 map")
            && !table.contains("10.77.0.101 . tcp . 8080 : jump"),
        "web and db in the kernel, pinned not:\n{table}"
    );
    // The Cluster Service reaches a backend off the node, which answers the
    // node (masqueraded), as through user space; outsiders are refused.
    let db = w.wait_tcp("10.77.0.101", 5432);
    assert!(db.ends_with("got=hello"), "{db}");
    let refused = w.tcp_from(&outsider, "10.77.0.101", 5432, "q");
    assert!(
        matches!(refused.as_str(), "REFUSED" | "RESET" | "EMPTY"),
        "an outsider got: {refused}"
    );
    let pinned = w.wait_tcp("10.77.0.101", 8080);
    assert!(pinned.ends_with("got=hello"), "{pinned}");
    // The node's own program never answers on a Service address.
    assert_eq!(w.tcp(VIP, 2222, "hello"), "TIMEOUT");
    assert_ne!(
        w.tcp(&format!("10.77.0.1{owner}"), 2222, "hello"),
        "TIMEOUT"
    );
    let m = w.metrics(owner);
    let kernel = |service: &str| {
        metric(
            &m,
            &format!(
                "ironlb_speaker_forwarder_kernel_connections_total{{namespace=\"static\",service=\"{service}\"}}"
            ),
        )
    };
    let user = |service: &str| {
        metric(
            &m,
            &format!(
                "ironlb_speaker_forwarder_connections_total{{namespace=\"static\",service=\"{service}\"}}"
            ),
        )
    };
    assert!(kernel("web") >= 6.0, "5 connections and a flow: {m}");
    assert!(kernel("db") >= 1.0 && user("db") == 0.0, "{m}");
    assert!(user("web") == 0.0 && user("pinned") >= 1.0, "{m}");

    // The owner dies: the other node answers, in the kernel, with the
    // client's address.
    let killed = std::time::Instant::now();
    w.lab.kill(speakers[owner - 1]);
    let survivor = 3 - owner;
    let deadline = killed + Duration::from_secs(15);
    let after = loop {
        let out = w.tcp(VIP, 80, "after");
        if out.contains(&format!("at=10.88.{survivor}.2")) {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "node-{survivor} never took over (last: {out}):\n{}",
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "kernel path: answered by node-{survivor} {} ms after node-{owner}'s speaker was killed",
        killed.elapsed().as_millis()
    );
    assert!(after.starts_with(&format!("peer={CLIENT}:")), "{after}");
    let m = w.metrics(survivor);
    assert!(
        metric(
            &m,
            "ironlb_speaker_forwarder_kernel_connections_total{namespace=\"static\",service=\"web\"}"
        ) >= 1.0,
        "{m}"
    );
}
