//! Failover benchmark: `cargo bench --bench failover` (root; not a test).
//!
//! Layer 2 first, then BGP (when FRR is installed): the same nodes' speakers
//! advertise the address to an FRR router, a client behind the router
//! connects through ECMP, and each trial kills a node's speaker and listener
//! or takes its link down; the time measured runs to the last failed connect
//! before a second of only successful ones. BFD (100 ms × 3) rows, and rows
//! without BFD at the default hold time (90 s, so one trial each by default:
//! `IRONLB_FAILOVER_HOLD_TRIALS`).
//!
//! Three nodes run real `ironlb speaker --static` processes in a namespace lab;
//! each holds the Service address on its loopback with `arp_ignore=1` (the
//! kernel accepts traffic for it but never answers ARP for it, as kube-proxy's
//! IPVS mode does) and runs a tiny TCP listener on it. A client connects in a
//! loop. Each trial SIGKILLs the owner's speaker together with its listener
//! (the node dies), or takes the owner's link down, and measures the time from that moment to the client's first
//! successful TCP connect: the failover a user sees.

#[path = "../tests/support/netns.rs"]
mod netns;
#[allow(dead_code)] // the bench uses a part of it
#[path = "../tests/support/routers.rs"]
mod routers;

use std::process::Command;
use std::time::Duration;

use netns::{Lab, Speakers};

const ADDRESS: &str = "10.88.0.100";

/// Measures, from inside the client namespace, the time from the disruption to
/// the first TCP connect that succeeds. It runs the disruption itself so both
/// ends of the interval are read from one clock.
const PROBER: &str = r#"
import os, signal, socket, subprocess, sys, time
addr, mode, arg = sys.argv[1], sys.argv[2], sys.argv[3]
def connect():
    s = socket.socket(); s.settimeout(0.02)
    try:
        s.connect((addr, 8080)); return True
    except OSError:
        return False
    finally:
        s.close()
deadline = time.monotonic() + 5
while not connect():
    if time.monotonic() > deadline: print("never-connected"); sys.exit(1)
    time.sleep(0.01)
t0 = time.monotonic()
def dead(pid):
    # The kernel completes handshakes for a listening socket until its owner
    # is gone: wait for the processes to be zombies or reaped.
    try:
        with open(f"/proc/{pid}/stat") as f: return f.read().split(") ")[1][0] == "Z"
    except FileNotFoundError:
        return True
if mode == "kill":
    pids = arg.split(",")
    for pid in pids: os.kill(int(pid), signal.SIGKILL)
    while not all(dead(p) for p in pids): time.sleep(0.001)
else: subprocess.run(arg.split(), check=True)
while not connect():
    if time.monotonic() - t0 > 10: print("timeout"); sys.exit(1)
print(round((time.monotonic() - t0) * 1000, 1))
"#;

const LISTENER: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 8080)); s.listen(128)
while True:
    c, _ = s.accept(); c.close()
"#;

struct Bench {
    lab: Lab,
    switch: String,
    client: String,
    nodes: Vec<String>,
    speakers: Vec<usize>,
    listeners: Vec<usize>,
}

fn owner(alive: &[String]) -> usize {
    let alive: Vec<&str> = alive.iter().map(String::as_str).collect();
    netns::expected_owner(&alive, ADDRESS)
        .trim_start_matches("node-")
        .parse::<usize>()
        .expect("index")
        - 1
}

fn start_speaker(b: &mut Bench, i: usize) -> usize {
    let ns = b.nodes[i].clone();
    b.lab.start_speaker(&ns, i + 1, "10.88.0", &[ADDRESS])
}

fn start_listener(b: &mut Bench, i: usize) -> usize {
    let log = b.lab.dir().join(format!("listener-{}.log", i + 1));
    let ns = b.nodes[i].clone();
    b.lab
        .spawn(&ns, "python3", &["-c", LISTENER, ADDRESS], &log)
}

fn setup() -> Option<Bench> {
    let mut lab = Lab::new("failover bench")?;
    let switch = lab.switch();
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let ns = lab.namespace(&format!("n{i}"));
        lab.plug(
            &switch,
            &ns,
            &format!("p{i}"),
            &[&format!("10.88.0.1{i}/24")],
        );
        for (key, value) in [
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
        ] {
            lab.exec_ok(&ns, &["sysctl", "-qw", &format!("{key}={value}")]);
        }
        lab.exec_ok(
            &ns,
            &["ip", "addr", "add", &format!("{ADDRESS}/32"), "dev", "lo"],
        );
        nodes.push(ns);
    }
    let client = lab.namespace("client");
    lab.plug(&switch, &client, "pc", &["10.88.0.50/24"]);
    let mut b = Bench {
        lab,
        switch,
        client,
        nodes,
        speakers: Vec::new(),
        listeners: Vec::new(),
    };
    for i in 0..3 {
        let s = start_speaker(&mut b, i);
        b.speakers.push(s);
        let l = start_listener(&mut b, i);
        b.listeners.push(l);
    }
    std::thread::sleep(Duration::from_secs(2));
    Some(b)
}

fn trial(b: &mut Bench, mode: &str) -> f64 {
    let names: Vec<String> = (1..=3).map(|i| format!("node-{i}")).collect();
    let o = owner(&names);
    let arg = match mode {
        // The node dies: its speaker and what it serves, at the same instant.
        "kill" => format!("{},{}", b.lab.pid(b.speakers[o]), b.lab.pid(b.listeners[o])),
        _ => format!("ip netns exec {} ip link set p{} down", b.switch, o + 1),
    };
    let out = b
        .lab
        .exec(&b.client, &["python3", "-c", PROBER, ADDRESS, mode, &arg]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let ms: f64 = text.parse().unwrap_or_else(|_| {
        panic!(
            "{mode} trial failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // Put the world back: restart the speaker or replug the node, and let the
    // group settle so the same node owns the address again.
    match mode {
        "kill" => {
            b.lab.kill(b.speakers[o]);
            b.lab.kill(b.listeners[o]);
            b.speakers[o] = start_speaker(b, o);
            b.listeners[o] = start_listener(b, o);
        }
        _ => {
            let sw = b.switch.clone();
            b.lab
                .exec_ok(&sw, &["ip", "link", "set", &format!("p{}", o + 1), "up"]);
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    ms
}

/// Prints one row of the table; returns its p50 and p99.
fn print_row(name: &str, sorted: &[f64]) -> (f64, f64) {
    let (p50, p99) = (percentile(sorted, 0.5), percentile(sorted, 0.99));
    println!(
        "{:<18} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
        name,
        p50,
        p99,
        sorted.last().copied().unwrap_or_default(),
        sorted.first().copied().unwrap_or_default()
    );
    (p50, p99)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    if Command::new("python3").arg("-V").output().is_err() {
        eprintln!("SKIPPED failover bench: python3 (the probe and listener) is not installed");
        return;
    }
    let trials: usize = std::env::var("IRONLB_FAILOVER_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let Some(mut b) = setup() else {
        return;
    };
    let mut results = Vec::new();
    for mode in ["kill", "linkdown"] {
        let mut times: Vec<f64> = (0..trials).map(|_| trial(&mut b, mode)).collect();
        times.sort_by(f64::total_cmp);
        results.push((mode, times));
    }
    println!(
        "failover: time from the owner's loss to the client's first TCP connect, {trials} trials each\n"
    );
    println!(
        "{:<18} {:>9} {:>9} {:>9} {:>9}",
        "mode", "p50_ms", "p99_ms", "max_ms", "min_ms"
    );
    let mut line = Vec::new();
    for (mode, times) in &results {
        let (p50, p99) = print_row(mode, times);
        line.push(format!("{mode}_p50_ms={p50:.0} {mode}_p99_ms={p99:.0}"));
    }
    match bgp_rows(trials) {
        Some(rows) => {
            for (key, times) in &rows {
                print_row(key, times);
            }
            for (key, times) in &rows {
                if let Some(short) = key.strip_suffix("_bfd") {
                    line.push(format!("{short}_p99_ms={:.0}", percentile(times, 0.99)));
                }
            }
        }
        None => println!("(BGP rows skipped: FRR is not installed)"),
    }
    println!("\nfailover {}", line.join(" "));
}

const BGP_VIP: &str = "10.89.9.100";

/// From the client behind the router: the time from the disruption to the
/// last failed connect before a full second of successful ones.
const BGP_PROBER: &str = r#"
import os, signal, socket, subprocess, sys, time
addr, mode, arg, limit = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
def connect():
    s = socket.socket(); s.settimeout(0.05)
    try:
        s.connect((addr, 8080)); return True
    except OSError:
        return False
    finally:
        s.close()
ok = 0
deadline = time.monotonic() + 10
while ok < 50:
    ok = ok + 1 if connect() else 0
    if time.monotonic() > deadline: print("never-stable"); sys.exit(1)
t0 = time.monotonic()
if mode == "kill":
    for pid in arg.split(","): os.kill(int(pid), signal.SIGKILL)
else: subprocess.run(arg.split(), check=True)
last_fail = None
while True:
    now = time.monotonic()
    if not connect(): last_fail = time.monotonic()
    elif last_fail is not None and now - last_fail > 1.0: break
    # Withdrawn before any connect hashed to the lost node.
    elif last_fail is None and now - t0 > 2.0: break
    if now - t0 > limit: print("timeout"); sys.exit(1)
print(round(((last_fail or t0) - t0) * 1000, 1))
"#;

/// The BGP lab: FRR (10.89.0.1) between a client (10.89.1.2) and three
/// nodes (10.89.0.1i); each node holds the address on its loopback with a
/// listener, and its speaker advertises it. Returns the rows, or `None`
/// without FRR.
fn bgp_rows(trials: usize) -> Option<Vec<(String, Vec<f64>)>> {
    if !routers::frr_installed() {
        return None;
    }
    let hold_trials: usize = std::env::var("IRONLB_FAILOVER_HOLD_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut rows = Vec::new();
    for bfd in [true, false] {
        let mut lab = Lab::new("bgp failover bench")?;
        let switch = lab.switch();
        let nodes = lab.plug_nodes(&switch, "10.89.0", 3);
        let router = lab.namespace("r");
        lab.plug(&switch, &router, "pr", &["10.89.0.1/24"]);
        let client = lab.namespace("c");
        lab.wire(
            &router,
            "rc",
            "10.89.1.1/24",
            &client,
            "eth0",
            "10.89.1.2/24",
        );
        lab.exec_ok(
            &client,
            &["ip", "route", "add", "default", "via", "10.89.1.1"],
        );
        lab.exec_ok(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        lab.exec_ok(
            &router,
            &["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"],
        );
        let frr_bfd = if bfd {
            "bfd\n profile fast\n  transmit-interval 100\n  receive-interval 100\n !\n!\n"
        } else {
            ""
        };
        let neighbor_bfd = if bfd {
            " neighbor nodes bfd\n neighbor nodes bfd profile fast\n"
        } else {
            ""
        };
        let frr = routers::Frr::start(
            &mut lab,
            &router,
            &format!(
                "{frr_bfd}router bgp 64513\n no bgp ebgp-requires-policy\n neighbor nodes peer-group\n \
                 neighbor nodes remote-as 64512\n{neighbor_bfd} bgp listen range 10.89.0.0/24 peer-group nodes\n \
                 address-family ipv4 unicast\n  maximum-paths 8\n exit-address-family\n"
            ),
        );
        let config = |i: usize| {
            let seeds: Vec<String> = (1..=3)
                .filter(|j| *j != i)
                .map(|j| format!("10.89.0.1{j}:7946"))
                .collect();
            let profile = if bfd { ", bfdProfile: fast" } else { "" };
            format!(
                "node: node-{i}\ngossip:\n  listen: 10.89.0.1{i}:7946\n  seeds: [{}]\n  secret: lab-gossip-secret\n\
                 addresses:\n  - address: {BGP_VIP}\n    bgp: {{}}\n\
                 bgp:\n  bfdProfiles:\n    fast: {{receiveInterval: 100, transmitInterval: 100}}\n  \
                 peers:\n    - name: tor\n      spec: {{myASN: 64512, peerASN: 64513, peerAddress: 10.89.0.1{profile}}}\n",
                seeds.join(", ")
            )
        };
        let mut speakers = Vec::new();
        let mut listeners = Vec::new();
        for (i, ns) in nodes.iter().enumerate() {
            lab.exec_ok(
                ns,
                &["ip", "addr", "add", &format!("{BGP_VIP}/32"), "dev", "lo"],
            );
            lab.exec_ok(ns, &["ip", "route", "add", "default", "via", "10.89.0.1"]);
            speakers.push(lab.start_speaker_with(ns, i + 1, &config(i + 1)));
            let log = lab.dir().join(format!("listener-{}.log", i + 1));
            listeners.push(lab.spawn(ns, "python3", &["-c", LISTENER, BGP_VIP], &log));
        }
        let all: std::collections::BTreeSet<String> =
            (1..=3).map(|i| format!("10.89.0.1{i}")).collect();
        // Three paths, and with BFD, BFD up with all three (it comes up a
        // few seconds after the session: one packet a second until up).
        let settled = |lab: &Lab| {
            routers::wait_until("three next hops", Duration::from_secs(60), || {
                routers::next_hops(lab, &router, BGP_VIP) == all
                    && (!bfd
                        || frr
                            .json(lab, "show bfd peers json")
                            .and_then(|v| v.as_array().cloned())
                            .is_some_and(|peers| {
                                peers.iter().filter(|p| p["status"] == "up").count() == 3
                            }))
            })
        };
        settled(&lab);
        for mode in ["kill", "linkdown"] {
            let n = if bfd || mode == "kill" {
                trials
            } else {
                hold_trials
            };
            let limit = if bfd { "30" } else { "200" };
            let mut times = Vec::new();
            for t in 0..n {
                let o = t % 3;
                let arg = match mode {
                    "kill" => format!("{},{}", lab.pid(speakers[o]), lab.pid(listeners[o])),
                    _ => format!("ip netns exec {switch} ip link set p{} down", o + 1),
                };
                let out = lab.exec(
                    &client,
                    &["python3", "-c", BGP_PROBER, BGP_VIP, mode, &arg, limit],
                );
                let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
                let ms: f64 = text.parse().unwrap_or_else(|_| {
                    panic!(
                        "bgp {mode} trial failed: {text} {}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                });
                times.push(ms);
                match mode {
                    "kill" => {
                        lab.kill(speakers[o]);
                        lab.kill(listeners[o]);
                        let ns = nodes[o].clone();
                        speakers[o] = lab.start_speaker_with(&ns, o + 1, &config(o + 1));
                        let log = lab.dir().join(format!("listener-{}.log", o + 1));
                        listeners[o] = lab.spawn(&ns, "python3", &["-c", LISTENER, BGP_VIP], &log);
                    }
                    _ => {
                        lab.exec_ok(
                            &switch,
                            &["ip", "link", "set", &format!("p{}", o + 1), "up"],
                        );
                    }
                }
                settled(&lab);
                // Let BFD settle on its fast rate again.
                std::thread::sleep(Duration::from_secs(3));
            }
            times.sort_by(f64::total_cmp);
            let key = format!("bgp_{mode}{}", if bfd { "_bfd" } else { "_hold" });
            rows.push((key, times));
        }
    }
    Some(rows)
}
