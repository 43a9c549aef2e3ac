//! Failover benchmark: `cargo bench --bench failover` (root; not a test).
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

use std::process::Command;
use std::time::Duration;

use netns::Lab;

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
        "{:<10} {:>9} {:>9} {:>9} {:>9}",
        "mode", "p50_ms", "p99_ms", "max_ms", "min_ms"
    );
    let mut line = Vec::new();
    for (mode, times) in &results {
        let (p50, p99) = (percentile(times, 0.5), percentile(times, 0.99));
        println!(
            "{:<10} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
            mode,
            p50,
            p99,
            times.last().copied().unwrap_or_default(),
            times.first().copied().unwrap_or_default()
        );
        line.push(format!("{mode}_p50_ms={p50:.0} {mode}_p99_ms={p99:.0}"));
    }
    println!("\nfailover {}", line.join(" "));
}
