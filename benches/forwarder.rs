//! Forwarder benchmark: `cargo bench --bench forwarder` (root; not a test).
//!
//! One namespace lab, one run, side by side: a client namespace, a proxy
//! namespace and a backend namespace, routed (client 10.50.1.2 — proxy — backend
//! 10.50.2.2). The same backend serves every path:
//!
//! - **direct**: the client talks to the backend, routed by the proxy
//!   namespace's kernel;
//! - **HAProxy** 2.6 in TCP mode, `nbthread 1`, `option splice-auto`, no logs;
//! - **nginx** `stream`, one worker, no logs;
//! - **ironlb**: a real `ironlb speaker --static` with embedded forwarding, one
//!   runtime worker (`TOKIO_WORKER_THREADS=1`), its address announced on the
//!   client link, its Services pinned to the user-space path;
//! - **kernel**: the same speaker's Services on the kernel path (nftables DNAT
//!   and masquerade, conntrack), on other ports of the same address.
//!
//! The kernel path reaches the backend on an address of its own: NAT reuses
//! the client's port, and a 4-tuple the backend still holds in TIME_WAIT
//! from another path (whose TCP timestamps run on another clock) answers the
//! new SYN with a stale ACK, costing a one-second retransmission — an
//! artefact of one client opening 20,000 connections a second through four
//! paths to one backend, not of the kernel path.
//!
//! The kernel path turns connection tracking on in the proxy namespace, for
//! every path through it (as on a Kubernetes node, where kube-proxy has it
//! on anyway); its TIME_WAIT timeout there is 1 s, so that the millions of
//! short connections a run opens do not fill the host's conntrack table
//! (`nf_conntrack_max`, 262,144 here, shared by every namespace).
//!
//! Measured: bulk TCP throughput (iperf3, one stream), short connections per
//! second and latency percentiles (wrk, `Connection: close`, against nginx),
//! memory per idle proxied connection (RSS growth of the proxy with N idle
//! connections open through it), and UDP request/response datagrams per second
//! (a windowed echo; HAProxy has no UDP).
//!
//! `IRONLB_BENCH_PROFILE=FILE` records a `perf` profile of ironlb during its
//! short-connection measurement (`perf report -i FILE`), and
//! `IRONLB_BENCH_PROFILE_UDP=FILE` one during its UDP measurement, and
//! `IRONLB_BENCH_PROFILE_SNI=FILE` one of each proxy (`FILE.haproxy`,
//! `FILE.ironlb`) while it routes TLS by server name;
//! `IRONLB_BENCH_ONLY=haproxy,ironlb` measures only those paths.
//!
//! Throughput and short-connection figures are medians of
//! `IRONLB_BENCH_ROUNDS` (default 3) interleaved rounds.
//!
//! `IRONLB_BENCH_SECONDS` (default 8), `IRONLB_BENCH_IDLE` (default 9000) and
//! `IRONLB_BENCH_BURST` (default 9000) shrink it for a smoke run. The idle count stays under half the open-file
//! hard limit (20,000 on the machines this was written on, and not raisable
//! there): each proxied connection is two sockets in the proxy.

#[path = "../tests/support/netns.rs"]
mod netns;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use ironlb_lab::in_netns;
use netns::Lab;

const CLIENT: &str = "10.50.1.2";
const PROXY: &str = "10.50.1.1";
const VIP: &str = "10.50.1.100";
const BACKEND: &str = "10.50.2.2";
/// The backend's second address, for the kernel path only (see the module
/// documentation).
const KERNEL_BACKEND: &str = "10.50.2.3";
/// The lab's small network peers (`slowaccept`, `burst`).
const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/peer.py");

/// Ports on each proxy: iperf3, http (wrk and idle), udp echo, the burst.
struct Ports {
    iperf: u16,
    http: u16,
    udp: Option<u16>,
    burst: u16,
    /// TLS passthrough routed by server name; `None`: not measured there.
    sni: Option<u16>,
}

#[derive(Default, Clone)]
struct Row {
    tput_gbps: f64,
    cps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Connections of the burst that reached the backend and got its answer.
    burst_ok: Option<usize>,
    mem_per_conn_kib: Option<f64>,
    udp_pps: Option<f64>,
    /// New connections per second and p99 (ms) of ClientHellos routed by
    /// server name.
    sni: Option<(f64, f64)>,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn have(cmd: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let missing: Vec<&str> = ["iperf3", "wrk", "haproxy", "nginx"]
        .into_iter()
        .filter(|c| !have(c))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "forwarder bench needs {}: apt-get install iperf3 wrk haproxy nginx libnginx-mod-stream",
            missing.join(", ")
        );
        return;
    }
    let Some(mut lab) = Lab::new("forwarder_bench") else {
        return;
    };
    let seconds = env_u64("IRONLB_BENCH_SECONDS", 8);
    let idle = env_u64("IRONLB_BENCH_IDLE", 9_000) as usize;
    let burst_total = env_u64("IRONLB_BENCH_BURST", 9_000) as usize;
    raise_nofile();

    let client = lab.namespace("client");
    let proxy = lab.namespace("proxy");
    let backend = lab.namespace("backend");
    lab.wire(
        &proxy,
        "c0",
        "10.50.1.1/24",
        &client,
        "eth0",
        "10.50.1.2/24",
    );
    lab.wire(
        &proxy,
        "b0",
        "10.50.2.1/24",
        &backend,
        "eth0",
        "10.50.2.2/24",
    );
    lab.exec_ok(&client, &["ip", "route", "add", "default", "via", PROXY]);
    lab.exec_ok(
        &backend,
        &["ip", "route", "add", "default", "via", "10.50.2.1"],
    );
    lab.exec_ok(
        &backend,
        &[
            "ip",
            "addr",
            "add",
            &format!("{KERNEL_BACKEND}/24"),
            "dev",
            "eth0",
        ],
    );
    lab.exec_ok(&proxy, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // Loads conntrack in the namespace, so its timeout can be set.
    lab.exec_ok(&proxy, &["nft", "add", "table", "ip", "bench"]);
    lab.exec_ok(
        &proxy,
        &[
            "nft",
            "add chain ip bench track { type filter hook prerouting priority 0; }",
        ],
    );
    lab.exec_ok(
        &proxy,
        &["nft", "add rule ip bench track ct state new counter"],
    );
    lab.exec_ok(
        &proxy,
        &[
            "sysctl",
            "-qw",
            "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1",
        ],
    );
    for ns in [&client, &proxy, &backend] {
        lab.exec_ok(
            ns,
            &["sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65000"],
        );
    }
    let dir = lab.dir().to_path_buf();

    // The backend: iperf3, nginx (http for wrk; holds idle connections), a
    // UDP echo.
    for address in [BACKEND, KERNEL_BACKEND] {
        lab.spawn(
            &backend,
            "iperf3",
            &["-s", "-B", address],
            &dir.join(format!("iperf3-{address}.log")),
        );
        lab.spawn(
            &backend,
            env!("CARGO_BIN_EXE_ironlb"),
            &["demo-udp-echo", &format!("{address}:9000")],
            &dir.join(format!("echo-{address}.log")),
        );
        lab.spawn(
            &backend,
            "python3",
            &[PEER, "slowaccept", address, "7000", "0"],
            &dir.join(format!("slowaccept-{address}.log")),
        );
    }
    let backend_conf = dir.join("backend-nginx.conf");
    std::fs::write(&backend_conf, backend_nginx(&dir)).expect("write");
    lab.spawn(
        &backend,
        "nginx",
        &["-c", backend_conf.to_str().expect("utf-8")],
        &dir.join("backend-nginx.out"),
    );

    // The proxies.
    let hap_conf = dir.join("haproxy.cfg");
    std::fs::write(&hap_conf, haproxy_conf()).expect("write");
    let hap = lab.spawn(
        &proxy,
        "haproxy",
        &["-db", "-f", hap_conf.to_str().expect("utf-8")],
        &dir.join("haproxy.log"),
    );
    let ngx_conf = dir.join("proxy-nginx.conf");
    std::fs::write(&ngx_conf, proxy_nginx(&dir)).expect("write");
    let ngx = lab.spawn(
        &proxy,
        "nginx",
        &["-c", ngx_conf.to_str().expect("utf-8")],
        &dir.join("proxy-nginx.out"),
    );
    let ilb_conf = dir.join("ironlb.yaml");
    std::fs::write(&ilb_conf, ironlb_conf()).expect("write");
    let ilb = spawn_ironlb(&mut lab, &proxy, &ilb_conf, &dir);

    let targets: Vec<(&str, String, Ports, Option<usize>)> = vec![
        (
            "direct",
            BACKEND.to_string(),
            Ports {
                iperf: 5201,
                http: 8080,
                udp: Some(9000),
                burst: 7000,
                sni: Some(8443),
            },
            None,
        ),
        (
            "haproxy",
            PROXY.to_string(),
            Ports {
                iperf: 8001,
                http: 8081,
                udp: None,
                burst: 8004,
                sni: Some(8007),
            },
            Some(hap),
        ),
        (
            "nginx",
            PROXY.to_string(),
            Ports {
                iperf: 8002,
                http: 8082,
                udp: Some(9002),
                burst: 8005,
                sni: None,
            },
            Some(ngx),
        ),
        (
            "ironlb",
            VIP.to_string(),
            Ports {
                iperf: 8003,
                http: 8083,
                udp: Some(9003),
                burst: 8006,
                sni: Some(8008),
            },
            Some(ilb),
        ),
        (
            "kernel",
            VIP.to_string(),
            Ports {
                iperf: 8013,
                http: 8093,
                udp: Some(9013),
                burst: 8016,
                sni: None,
            },
            None,
        ),
    ];
    for (_, host, ports, _) in &targets {
        wait_tcp(&client, host, ports.http);
    }
    let only = std::env::var("IRONLB_BENCH_ONLY").ok();
    let targets: Vec<_> = targets
        .into_iter()
        .filter(|(name, ..)| {
            only.as_ref()
                .is_none_or(|o| o.split(',').any(|n| n == *name))
        })
        .collect();
    let rounds = env_u64("IRONLB_BENCH_ROUNDS", 3).max(1);
    // Throughput and short connections: the paths take turns, round after
    // round, so a noisy moment on the shared machine hits them all alike;
    // each figure is the median of its rounds.
    let mut samples: BTreeMap<&str, Vec<(f64, f64, f64, f64)>> = BTreeMap::new();
    let mut sni_samples: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for round in 1..=rounds {
        for (name, host, ports, process) in &targets {
            eprintln!("round {round}/{rounds}: {name} …");
            let tput = iperf(&lab, &client, host, ports.iperf, seconds);
            let profile = match process {
                Some(index) if *name == "ironlb" && round == 1 => {
                    profile(&lab, *index, "IRONLB_BENCH_PROFILE", seconds)
                }
                _ => None,
            };
            let (cps, p50, p99) = wrk(&lab, &client, host, ports.http, seconds);
            if let Some(mut p) = profile {
                let _ = p.wait();
            }
            eprintln!("  {tput:.2} Gb/s, {cps:.0} conn/s, p50 {p50:.2} ms, p99 {p99:.2} ms");
            samples.entry(name).or_default().push((tput, cps, p50, p99));
            if let Some(port) = ports.sni {
                // Every proxy's, beside ironlb's: the row compares them.
                let profile = match (process, std::env::var("IRONLB_BENCH_PROFILE_SNI")) {
                    (Some(index), Ok(file)) if round == 1 => {
                        record(&lab, *index, &format!("{file}.{name}"), seconds)
                    }
                    _ => None,
                };
                let (cps, p99) = sni_rate(&client, host, port, seconds);
                if let Some(mut p) = profile {
                    let _ = p.wait();
                }
                eprintln!("  TLS by server name: {cps:.0} conn/s, p99 {p99:.2} ms");
                sni_samples.entry(name).or_default().push((cps, p99));
            }
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut rows: BTreeMap<&str, Row> = BTreeMap::new();
    for (name, host, ports, process) in &targets {
        eprintln!("memory and UDP: {name} …");
        let s = &samples[name];
        let mut row = Row {
            tput_gbps: median(s.iter().map(|x| x.0).collect()),
            cps: median(s.iter().map(|x| x.1).collect()),
            p50_ms: median(s.iter().map(|x| x.2).collect()),
            p99_ms: median(s.iter().map(|x| x.3).collect()),
            sni: sni_samples.get(name).map(|s| {
                (
                    median(s.iter().map(|x| x.0).collect()),
                    median(s.iter().map(|x| x.1).collect()),
                )
            }),
            ..Row::default()
        };
        if let Some(index) = process {
            row.mem_per_conn_kib = Some(idle_memory(&lab, &client, host, ports.http, *index, idle));
        }
        if let Some(port) = ports.udp {
            let profile = match process {
                Some(index) if *name == "ironlb" => {
                    profile(&lab, *index, "IRONLB_BENCH_PROFILE_UDP", seconds)
                }
                _ => None,
            };
            row.udp_pps = Some(udp_rate(&client, host, port, seconds));
            if let Some(mut p) = profile {
                let _ = p.wait();
            }
        }
        if burst_total > 0 {
            row.burst_ok = Some(burst(&lab, &client, host, ports.burst, burst_total));
        }
        rows.insert(name, row);
    }
    println!("\n(medians of {rounds} rounds)");
    report(&rows, seconds, idle, burst_total);
}

/// A `perf` profile of process `index` of the lab for `seconds`, into the
/// file the environment variable `var` names, if it names one.
fn profile(lab: &Lab, index: usize, var: &str, seconds: u64) -> Option<std::process::Child> {
    record(lab, index, &std::env::var(var).ok()?, seconds)
}

/// A `perf` profile of process `index` of the lab for `seconds`, into `file`.
fn record(lab: &Lab, index: usize, file: &str, seconds: u64) -> Option<std::process::Child> {
    std::process::Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "999",
            "-g",
            "-o",
            file,
            "-p",
        ])
        .arg(lab.pid(index).to_string())
        .args(["--", "sleep", &seconds.to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()
}

/// Opens `total` connections to `host:port`, 200 at a time, each sending a
/// line and reading the answer; returns how many were answered.
fn burst(lab: &Lab, ns: &str, host: &str, port: u16, total: usize) -> usize {
    let out = lab.exec_ok(
        ns,
        &[
            "python3",
            PEER,
            "burst",
            host,
            &port.to_string(),
            &total.to_string(),
            "200",
            "60",
        ],
    );
    out.split_whitespace()
        .find_map(|f| f.strip_prefix("answered="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn spawn_ironlb(lab: &mut Lab, ns: &str, conf: &std::path::Path, dir: &std::path::Path) -> usize {
    let log = dir.join("ironlb.log");
    let file = std::fs::File::create(&log).expect("log");
    // Lab::spawn sets RUST_LOG=info; the forwarder logs nothing per connection
    // at that level. One runtime worker, like HAProxy's nbthread 1.
    let child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "env",
            "TOKIO_WORKER_THREADS=1",
            "RUST_LOG=warn",
        ])
        .arg(env!("CARGO_BIN_EXE_ironlb"))
        .args(["speaker", "--static", conf.to_str().expect("utf-8")])
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .spawn()
        .expect("spawn ironlb");
    lab.adopt(child)
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn backend_nginx(dir: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
         daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 20000;\npid {d}/backend-nginx.pid;\n\
         error_log {d}/backend-nginx-error.log;\nevents {{ worker_connections 19500; }}\n\
         http {{\n  access_log off;\n  keepalive_timeout 600s;\n  client_header_timeout 600s;\n\
         client_body_temp_path {d}/b1; proxy_temp_path {d}/b2; fastcgi_temp_path {d}/b3;\n\
         uwsgi_temp_path {d}/b4; scgi_temp_path {d}/b5;\n\
         server {{ listen {BACKEND}:8080 backlog=4096; listen {KERNEL_BACKEND}:8080 backlog=4096;\n\
         location / {{ return 200 \"ok\\n\"; }} }}\n}}\n\
         stream {{ server {{ listen {BACKEND}:8443 backlog=4096; listen {BACKEND}:8444 backlog=4096;\n\
         ssl_preread on; return \"ok $ssl_preread_server_name\\n\"; }} }}\n"
    )
}

/// HAProxy at its best for this test: splice, one thread (as ironlb), no logs,
/// timeouts long enough for the idle connections.
fn haproxy_conf() -> String {
    format!(
        "global\n  nbthread 1\n  maxconn 9200\n  maxpipes 200\n\
         defaults\n  mode tcp\n  option splice-auto\n  timeout connect 5s\n  timeout client 600s\n  timeout server 600s\n\
         listen iperf\n  bind {PROXY}:8001\n  server b {BACKEND}:5201\n\
         listen http\n  bind {PROXY}:8081\n  server b {BACKEND}:8080\n\
         listen burst\n  bind {PROXY}:8004\n  server b {BACKEND}:7000\n\
         frontend sni\n  bind {PROXY}:8007\n  tcp-request inspect-delay 5s\n\
         \x20 tcp-request content accept if {{ req.ssl_hello_type 1 }}\n\
         \x20 use_backend sni_exact if {{ req.ssl_sni -i {SNI_NAME} }}\n\
         \x20 use_backend sni_wildcard if {{ req.ssl_sni -m end .example.com }}\n\
         backend sni_exact\n  server a {BACKEND}:8443\n\
         backend sni_wildcard\n  server b {BACKEND}:8444\n"
    )
}

fn proxy_nginx(dir: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
         daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 20000;\npid {d}/proxy-nginx.pid;\n\
         error_log {d}/proxy-nginx-error.log;\nevents {{ worker_connections 19500; }}\n\
         stream {{\n  proxy_timeout 600s;\n\
         server {{ listen {PROXY}:8002; proxy_pass {BACKEND}:5201; }}\n\
         server {{ listen {PROXY}:8082 backlog=4096; proxy_pass {BACKEND}:8080; }}\n\
         server {{ listen {PROXY}:9002 udp; proxy_pass {BACKEND}:9000; }}\n\
         server {{ listen {PROXY}:8005; proxy_half_close on; proxy_pass {BACKEND}:7000; }}\n}}\n"
    )
}

fn ironlb_conf() -> String {
    format!(
        "node: proxy\ngossip:\n  listen: {PROXY}:7947\n  secret: bench-gossip-secret\n\
         addresses:\n  - address: {VIP}\n    interfaces: [c0]\n\
         forwarder:\n  tcpIdleSeconds: 600\n  tcpHandshakeSeconds: 600\n\
         services:\n\
         \x20 - name: iperf\n    address: {VIP}\n    forwardingPath: user\n    ports: [{{port: 8003, targetPort: 5201}}]\n    endpoints: [{{address: {BACKEND}}}]\n\
         \x20 - name: http\n    address: {VIP}\n    forwardingPath: user\n    ports: [{{port: 8083, targetPort: 8080}}]\n    endpoints: [{{address: {BACKEND}}}]\n\
         \x20 - name: udp\n    address: {VIP}\n    forwardingPath: user\n    ports: [{{port: 9003, protocol: UDP, targetPort: 9000}}]\n    endpoints: [{{address: {BACKEND}}}]\n\
         \x20 - name: burst\n    address: {VIP}\n    forwardingPath: user\n    ports: [{{port: 8006, targetPort: 7000}}]\n    endpoints: [{{address: {BACKEND}}}]\n\
         \x20 - name: kernel\n    address: {VIP}\n    forwardingPath: kernel\n    endpoints: [{{address: {KERNEL_BACKEND}}}]\n    ports:\n\
         \x20     - {{port: 8013, targetPort: 5201}}\n      - {{port: 8093, targetPort: 8080}}\n\
         \x20     - {{port: 9013, protocol: UDP, targetPort: 9000}}\n      - {{port: 8016, targetPort: 7000}}\n\
         \x20 - name: sni\n    address: {VIP}\n    endpoints: []\n    ports:\n\
         \x20     - port: 8008\n        tlsRoutes:\n\
         \x20         - {{hostnames: [{SNI_NAME}], endpoints: [{{address: {BACKEND}}}], targetPort: 8443}}\n\
         \x20         - {{hostnames: [\"*.example.com\"], endpoints: [{{address: {BACKEND}}}], targetPort: 8444}}\n"
    )
}

fn wait_tcp(ns: &str, host: &str, port: u16) {
    let addr: SocketAddr = format!("{host}:{port}").parse().expect("address");
    let deadline = Instant::now() + Duration::from_secs(20);
    in_netns(ns, || {
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "{addr} never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

fn iperf(lab: &Lab, ns: &str, host: &str, port: u16, seconds: u64) -> f64 {
    let out = lab.exec_ok(
        ns,
        &[
            "iperf3",
            "-c",
            host,
            "-p",
            &port.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e9
}

/// Requests per second and p50/p99 latency in ms, every request on a new
/// connection.
fn wrk(lab: &Lab, ns: &str, host: &str, port: u16, seconds: u64) -> (f64, f64, f64) {
    let out = lab.exec_ok(
        ns,
        &[
            "wrk",
            "-t1",
            "-c32",
            &format!("-d{seconds}s"),
            "--latency",
            "-H",
            "Connection: close",
            &format!("http://{host}:{port}/"),
        ],
    );
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let pct = |p: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .map(|v| latency_ms(v.trim()))
            .unwrap_or(f64::NAN)
    };
    (rps, pct("50%"), pct("99%"))
}

fn latency_ms(v: &str) -> f64 {
    let (number, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
    let n: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// RSS growth of the proxy per idle connection, with `n` connections open
/// through it to the backend's nginx.
fn idle_memory(lab: &Lab, ns: &str, host: &str, port: u16, process: usize, n: usize) -> f64 {
    let pid = lab.pid(process);
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(pid);
    let addr: SocketAddr = format!("{host}:{port}").parse().expect("address");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<usize>();
    let ns = ns.to_string();
    let holder = std::thread::spawn(move || {
        in_netns(&ns, move || {
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(s) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            let _ = ready_tx.send(held.len());
            let _ = rx.recv();
        })
    });
    let opened = ready_rx.recv().unwrap_or(0);
    // Let the proxy finish its backend connects.
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(pid);
    let _ = tx.send(());
    let _ = holder.join();
    std::thread::sleep(Duration::from_secs(1));
    let _ = lab;
    if opened == 0 {
        return f64::NAN;
    }
    (after - before).max(0.0) / opened as f64
}

/// Datagrams per second through a request/response echo with 64 requests in
/// flight.
fn udp_rate(ns: &str, host: &str, port: u16, seconds: u64) -> f64 {
    let target: SocketAddr = format!("{host}:{port}").parse().expect("address");
    in_netns(ns, || {
        let s = UdpSocket::bind(format!("{CLIENT}:0")).expect("bind");
        s.connect(target).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let payload = [7u8; 64];
        let mut buf = [0u8; 2048];
        let start = Instant::now();
        let mut received = 0u64;
        while start.elapsed() < Duration::from_secs(seconds) {
            for _ in 0..64 {
                let _ = s.send(&payload);
            }
            let mut outstanding = 64;
            while outstanding > 0 && start.elapsed() < Duration::from_secs(seconds) {
                match s.recv(&mut buf) {
                    Ok(_) => {
                        received += 1;
                        let _ = s.send(&payload);
                    }
                    // Losses: refill the window.
                    Err(_) => outstanding = 0,
                }
                outstanding = outstanding.min(64);
            }
        }
        received as f64 / start.elapsed().as_secs_f64()
    })
}

/// The server name the SNI row's clients ask for: the exact route, beside a
/// wildcard one, on every proxy.
const SNI_NAME: &str = "a.example.com";

/// New connections per second and p99 latency (ms) of clients that each send
/// a ClientHello naming [`SNI_NAME`] and read the backend's answer to the
/// end, 32 at a time. The backend (nginx `ssl_preread`) answers once it has
/// read the ClientHello, without a handshake: the row measures the proxies'
/// routing by server name, not TLS cryptography, which passthrough leaves to
/// the endpoints.
fn sni_rate(ns: &str, host: &str, port: u16, seconds: u64) -> (f64, f64) {
    use std::io::{Read, Write};
    let target: SocketAddr = format!("{host}:{port}").parse().expect("address");
    let hello = ironlb::forwarder::sni::client_hello(Some(SNI_NAME));
    let expected = format!("ok {SNI_NAME}\n");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let (mut latencies, failed) = in_netns(ns, || {
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..32)
                .map(|_| {
                    scope.spawn(|| {
                        let (mut took, mut failed) = (Vec::new(), 0usize);
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            let answer = (|| -> std::io::Result<String> {
                                let mut c =
                                    TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
                                c.set_read_timeout(Some(Duration::from_secs(5)))?;
                                c.write_all(&hello)?;
                                let mut out = String::new();
                                c.read_to_string(&mut out)?;
                                Ok(out)
                            })();
                            match answer {
                                Ok(a) if a == expected => took.push(t.elapsed()),
                                _ => failed += 1,
                            }
                        }
                        (took, failed)
                    })
                })
                .collect();
            workers
                .into_iter()
                .fold((Vec::new(), 0), |(mut all, f), w| {
                    let (took, failed) = w.join().expect("SNI client");
                    all.extend(took);
                    (all, f + failed)
                })
        })
    });
    let elapsed = start.elapsed().as_secs_f64();
    if failed > 0 {
        eprintln!("  {failed} SNI connections to {target} failed or got a wrong answer");
    }
    latencies.sort();
    let p99 = latencies
        .get(latencies.len().saturating_sub(1) * 99 / 100)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    (latencies.len() as f64 / elapsed, p99)
}

fn report(rows: &BTreeMap<&str, Row>, seconds: u64, idle: usize, burst: usize) {
    let get = |n: &str| rows.get(n).cloned().unwrap_or_default();
    let (direct, hap, ngx, ilb, kernel) = (
        get("direct"),
        get("haproxy"),
        get("nginx"),
        get("ironlb"),
        get("kernel"),
    );
    println!();
    println!(
        "forwarder: {seconds} s per measurement, {idle} idle connections, a burst of {burst}, one proxy worker each"
    );
    println!(
        "{:<8} {:>10} {:>10} {:>9} {:>9} {:>16} {:>12} {:>10} {:>11} {:>11}",
        "path",
        "tput Gb/s",
        "conn/s",
        "p50 ms",
        "p99 ms",
        "KiB/idle conn",
        "udp dgram/s",
        "burst ok",
        "sni conn/s",
        "sni p99 ms"
    );
    for (name, r) in [
        ("direct", &direct),
        ("haproxy", &hap),
        ("nginx", &ngx),
        ("ironlb", &ilb),
        ("kernel", &kernel),
    ] {
        println!(
            "{:<8} {:>10.2} {:>10.0} {:>9.3} {:>9.3} {:>16} {:>12} {:>10} {:>11} {:>11}",
            name,
            r.tput_gbps,
            r.cps,
            r.p50_ms,
            r.p99_ms,
            r.mem_per_conn_kib.map_or("-".into(), |m| format!("{m:.1}")),
            r.udp_pps.map_or("-".into(), |u| format!("{u:.0}")),
            r.burst_ok.map_or("-".into(), |b| b.to_string()),
            r.sni.map_or("-".into(), |(c, _)| format!("{c:.0}")),
            r.sni.map_or("-".into(), |(_, p)| format!("{p:.3}")),
        );
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!(
        "forwarder tput_vs_haproxy={:.2} tput_vs_direct={:.2} cps_vs_haproxy={:.2} p99_vs_haproxy={:.2} mem_per_conn_vs_haproxy={:.2} udp_vs_nginx={:.2} burst_vs_haproxy={:.2} tls_sni_cps_vs_haproxy={:.2} tls_sni_p99_vs_haproxy={:.2}",
        ratio(ilb.tput_gbps, hap.tput_gbps),
        ratio(ilb.tput_gbps, direct.tput_gbps),
        ratio(ilb.cps, hap.cps),
        ratio(ilb.p99_ms, hap.p99_ms),
        ratio(
            ilb.mem_per_conn_kib.unwrap_or(f64::NAN),
            hap.mem_per_conn_kib.unwrap_or(f64::NAN)
        ),
        ratio(
            ilb.udp_pps.unwrap_or(f64::NAN),
            ngx.udp_pps.unwrap_or(f64::NAN)
        ),
        ratio(
            ilb.burst_ok.map_or(f64::NAN, |b| b as f64),
            hap.burst_ok.map_or(f64::NAN, |b| b as f64)
        ),
        ratio(
            ilb.sni.map_or(f64::NAN, |s| s.0),
            hap.sni.map_or(f64::NAN, |s| s.0)
        ),
        ratio(
            ilb.sni.map_or(f64::NAN, |s| s.1),
            hap.sni.map_or(f64::NAN, |s| s.1)
        ),
    );
    let udp = |r: &Row| r.udp_pps.unwrap_or(f64::NAN);
    println!(
        "forwarder udp_vs_direct={:.2} kernel_tput_vs_direct={:.2} kernel_cps_vs_direct={:.2} kernel_p99_vs_direct={:.2} kernel_udp_vs_direct={:.2} kernel_burst={}",
        ratio(udp(&ilb), udp(&direct)),
        ratio(kernel.tput_gbps, direct.tput_gbps),
        ratio(kernel.cps, direct.cps),
        ratio(kernel.p99_ms, direct.p99_ms),
        ratio(udp(&kernel), udp(&direct)),
        kernel.burst_ok.map_or("-".into(), |b| b.to_string()),
    );
}
