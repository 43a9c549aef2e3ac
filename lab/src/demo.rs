//! `ironlb demo`: ironlb working on one Linux box, in two minutes.
//!
//! It builds network namespaces on one bridge — three nodes, a client, an nginx
//! that reads the PROXY protocol and a UDP echo — runs three real `ironlb
//! speaker --static` processes forwarding one address to them, shows who owns
//! the address and what client address nginx saw, kills the owner, measures how
//! long the client is without service, and cleans everything up.
//!
//! Everything lives in namespaces it creates (bridge included); the root
//! namespace's interfaces and routes are never touched.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Cleanup, Report, in_netns, is_root, run};

/// The demo's lab reports a failed step to the newcomer running it.
type Lab = crate::Lab<Report>;

/// The address the demo's Service gets.
pub const ADDRESS: &str = "10.99.0.100";
const CLIENT: &str = "10.99.0.2";
const NGINX: &str = "10.99.0.21";
const ECHO: &str = "10.99.0.22";
const STEPS: usize = 7;

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Prefix of every namespace name (`PREFIX-client`, …).
    pub prefix: String,
    /// Leave the lab up at the end.
    pub keep: bool,
    /// Install missing Debian packages with apt-get.
    pub install: bool,
    /// The BGP story: an FRR router in front, every node advertising the
    /// address, BFD taking a dead node out.
    pub bgp: bool,
}

/// What the demo measured.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The first owner.
    pub owner: String,
    /// The owner after the first was killed.
    pub new_owner: String,
    /// From the kill to the client's first answered request.
    pub failover: Duration,
    /// The client address nginx reported.
    pub backend_saw: String,
    /// Whether the UDP echo answered from the Service's address.
    pub udp_ok: bool,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "summary: owner={} new_owner={} failover_ms={} backend_saw={} udp_echo={}",
            self.owner,
            self.new_owner,
            self.failover.as_millis(),
            self.backend_saw,
            if self.udp_ok { "ok" } else { "failed" }
        )
    }
}

/// Removes a kept lab: every namespace named `PREFIX-…` and the processes in it.
pub fn clean(prefix: &str) -> anyhow::Result<usize> {
    let mut removed = 0;
    let entries = match std::fs::read_dir("/run/netns") {
        Ok(e) => e,
        Err(_) => return Ok(0),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{prefix}-")) {
            continue;
        }
        let pids = run_out("ip", &["netns", "pids", &name]).unwrap_or_default();
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-TERM", pid]).output();
        }
        std::thread::sleep(Duration::from_millis(300));
        let pids = run_out("ip", &["netns", "pids", &name]).unwrap_or_default();
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).output();
        }
        run("ip", &["netns", "del", &name])?;
        removed += 1;
    }
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(prefix));
    Ok(removed)
}

/// Runs the demo, printing each step; `cleanup` holds what to undo (the caller
/// runs it, also on Ctrl-C).
pub fn run_demo(opts: &Options, cleanup: &Cleanup) -> anyhow::Result<Summary> {
    preflight(opts)?;
    let exe = std::env::current_exe()?;
    let exe = path(&exe);
    let mut lab = open(opts, cleanup)?;
    let dir = lab.dir().to_path_buf();
    if opts.bgp {
        return bgp_demo(opts, &mut lab, exe);
    }

    step(
        1,
        &format!(
            "building the lab: bridge in {p}-sw; node-1..3 at 10.99.0.11-13; client {CLIENT}; \
             nginx {NGINX}; UDP echo {ECHO}",
            p = opts.prefix
        ),
    );
    let (_, hosts) = lab.switch_with(&[
        ("node1", "p1", "10.99.0.11/24"),
        ("node2", "p2", "10.99.0.12/24"),
        ("node3", "p3", "10.99.0.13/24"),
        ("client", "pc", &format!("{CLIENT}/24")),
        ("nginx", "pn", &format!("{NGINX}/24")),
        ("echo", "pe", &format!("{ECHO}/24")),
    ])?;
    let (nodes, client, nginx, echo) = (&hosts[..3], &hosts[3], &hosts[4], &hosts[5]);

    step(
        2,
        "starting the backends: nginx (http, listen … proxy_protocol) and a UDP echo",
    );
    backends(&mut lab, nginx, echo, exe)?;
    wait_until("nginx to listen", Duration::from_secs(10), || {
        in_netns(client, || TcpStream::connect((NGINX, 8080)).ok().map(drop))
    })?;

    step(
        3,
        &format!(
            "starting 3 speakers (ironlb speaker --static): Service web {ADDRESS}:80 → nginx \
             with PROXY protocol v2, echo {ADDRESS}:7/udp → UDP echo"
        ),
    );
    let speakers = speakers(&mut lab, nodes, exe, L2_ANNOUNCE, true)?;
    let owner = wait_until("a node to own the address", Duration::from_secs(15), || {
        owner_of(nodes)
    })
    .map_err(|e| explained(e, &dir))?;
    detail(&format!(
        "{owner} owns {ADDRESS}: it answers ARP for it and forwards its traffic"
    ));

    step(4, &format!("the client asks http://{ADDRESS}/"));
    let (backend_saw, udp_ok) = ask(client, &dir)?;
    if backend_saw == CLIENT {
        detail(&format!(
            "the client is {CLIENT}: the backend saw the client's own address"
        ));
    }

    step(
        5,
        &format!("killing {owner}'s speaker (SIGKILL), as a node crash would"),
    );
    let failover = kill_and_wait(&mut lab, client, speakers[node_index(&owner)?])?;
    step(
        6,
        &format!(
            "failover: the client was served again {:.2} s after the kill",
            failover.as_secs_f64()
        ),
    );
    let new_owner = new_owner(nodes, &owner, client)?;

    let summary = Summary {
        owner,
        new_owner,
        failover,
        backend_saw,
        udp_ok,
    };
    keep_or_clean(
        &lab,
        opts.keep,
        &l2_hints(&opts.prefix, &summary.new_owner, &dir),
        "cleaning up: speakers stopped, namespaces deleted",
    );
    Ok(summary)
}

/// What to try in a kept layer-2 demo lab whose address `owner` holds.
fn l2_hints(p: &str, owner: &str, dir: &Path) -> Vec<String> {
    let n = owner.replace("node-", "node");
    let i = owner.trim_start_matches("node-");
    vec![
        format!("ip netns exec {p}-client curl -s http://{ADDRESS}/"),
        format!("ip netns exec {p}-client ip neigh show {ADDRESS}"),
        format!("ip netns exec {p}-{n} ip addr show dev lo"),
        format!("ip netns exec {p}-{n} curl -s http://10.99.0.1{i}:9121/metrics | grep forwarder"),
        format!("cat {}/speaker-node-*.log", dir.display()),
        format!("ironlb demo --clean{}", prefix_flag(p)),
    ]
}

/// The node that owns the address once `owner` is gone, and what nginx
/// sees of the client now.
fn new_owner(nodes: &[String], owner: &str, client: &str) -> anyhow::Result<String> {
    let alive: Vec<String> = nodes
        .iter()
        .filter(|ns| !ns.ends_with(&owner.replace("node-", "node")))
        .cloned()
        .collect();
    let new_owner = wait_until("the new owner", Duration::from_secs(5), || owner_of(&alive))?;
    let again = in_netns(client, || http_get(ADDRESS, Duration::from_secs(1))).unwrap_or_default();
    detail(&format!(
        "{new_owner} owns {ADDRESS} now; nginx still sees client {again}"
    ));
    Ok(new_owner)
}

/// The client's HTTP request and UDP datagram to the address: what nginx
/// says it saw, and whether the echo answered.
fn ask(client: &str, dir: &Path) -> anyhow::Result<(String, bool)> {
    let backend_saw = wait_until("an answer", Duration::from_secs(10), || {
        in_netns(client, || http_get(ADDRESS, Duration::from_secs(1)))
    })
    .map_err(|e| explained(e, dir))?;
    detail(&format!(
        "nginx answered: \"nginx saw client {backend_saw}\""
    ));
    let udp_ok = in_netns(client, udp_echo);
    detail(&format!(
        "UDP to {ADDRESS}:7: {}",
        if udp_ok {
            "the echo answered, from the Service's address"
        } else {
            "no answer"
        }
    ));
    Ok((backend_saw, udp_ok))
}

/// Kills the owner's `speaker` and measures, from the client, how long until it
/// is served again.
fn kill_and_wait(lab: &mut Lab, client: &str, speaker: usize) -> anyhow::Result<Duration> {
    let client = client.to_string();
    let (start_tx, start_rx) = std::sync::mpsc::channel::<Instant>();
    let probe = std::thread::spawn(move || {
        in_netns(&client, move || {
            let Ok(start) = start_rx.recv() else {
                return None;
            };
            let mut last = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if http_get(ADDRESS, Duration::from_millis(100)).is_some() {
                    return Some(start.elapsed());
                }
                if last.elapsed() > Duration::from_secs(1) {
                    detail("still waiting for an answer…");
                    last = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        })
    });
    let start = Instant::now();
    lab.kill(speaker);
    let _ = start_tx.send(start);
    probe
        .join()
        .ok()
        .flatten()
        .ok_or_else(|| anyhow::anyhow!("the client was not served again within 30 s"))
}

/// The client's network behind the router in the BGP demo.
const BGP_CLIENT: &str = "10.99.1.2";

/// `ironlb demo --bgp`: the same Service, advertised over BGP by all three
/// nodes to an FRR router (with BFD, 100 ms × 3); the client sits behind the
/// router, so its traffic follows the routes; one node's link is cut.
fn bgp_demo(opts: &Options, lab: &mut Lab, exe: &str) -> anyhow::Result<Summary> {
    let dir = &lab.dir().to_path_buf();
    step(
        1,
        &format!(
            "building the lab: bridge in {p}-sw; FRR router 10.99.0.1; node-1..3 at \
             10.99.0.11-13; nginx {NGINX}; UDP echo {ECHO}; client {BGP_CLIENT} behind the router",
            p = opts.prefix
        ),
    );
    let (sw, hosts) = lab.switch_with(&[
        ("node1", "p1", "10.99.0.11/24"),
        ("node2", "p2", "10.99.0.12/24"),
        ("node3", "p3", "10.99.0.13/24"),
        ("router", "pr", "10.99.0.1/24"),
        ("nginx", "pn", &format!("{NGINX}/24")),
        ("echo", "pe", &format!("{ECHO}/24")),
    ])?;
    let (nodes, router) = (&hosts[..3], &hosts[3]);
    let client = route_through(lab, nodes, router)?;

    step(
        2,
        "starting the backends (nginx with PROXY protocol, a UDP echo) and FRR (zebra, bfdd, bgpd)",
    );
    backends(lab, &hosts[4], &hosts[5], exe)?;
    let frr = start_frr(lab, router)?;

    step(
        3,
        &format!(
            "starting 3 speakers: each opens a BGP session (AS 64512 → 64513) with BFD and \
             advertises {ADDRESS}/32; web {ADDRESS}:80 → nginx, echo {ADDRESS}:7/udp"
        ),
    );
    speakers(lab, nodes, exe, BGP_ANNOUNCE, false)?;
    wait_until(
        "the router to learn three paths",
        Duration::from_secs(30),
        || (paths(router) == 3).then_some(()),
    )
    .map_err(|e| explained(e, dir))?;
    detail(&format!(
        "the router's table (ECMP over the three nodes):\n        {}",
        router_table(router).trim().replace('\n', "\n        ")
    ));

    wait_for_bfd(router, &frr)?;

    step(
        4,
        &format!("the client ({BGP_CLIENT}, behind the router) asks http://{ADDRESS}/"),
    );
    let (backend_saw, udp_ok) = ask(&client, dir)?;

    step(
        5,
        "cutting node-3's link (no FIN, no RST: only BFD can tell)",
    );
    let failover = cut_and_wait(lab, &sw, &client)?;
    step(
        6,
        &format!(
            "failover: BFD took node-3 out; the last failed request was {:.2} s after the cut",
            failover.as_secs_f64()
        ),
    );
    wait_until("the router to drop node-3", Duration::from_secs(5), || {
        (paths(router) == 2).then_some(())
    })?;
    detail(&format!(
        "the router's table now:\n        {}",
        router_table(router).trim().replace('\n', "\n        ")
    ));

    let summary = Summary {
        owner: "node-1,node-2,node-3".into(),
        new_owner: "node-1,node-2".into(),
        failover,
        backend_saw,
        udp_ok,
    };
    keep_or_clean(
        lab,
        opts.keep,
        &bgp_hints(&opts.prefix, &frr),
        "cleaning up: speakers and FRR stopped, namespaces deleted",
    );
    Ok(summary)
}

/// What to try in a BGP demo lab kept up.
fn bgp_hints(p: &str, frr: &Path) -> Vec<String> {
    let vtysh = |command: &str| {
        format!(
            "ip netns exec {p}-router vtysh --vty_socket {} -c '{command}'",
            path(frr)
        )
    };
    vec![
        format!("ip netns exec {p}-client curl -s http://{ADDRESS}/"),
        vtysh("show bgp summary"),
        vtysh("show bfd peers"),
        format!("ip netns exec {p}-router ip route show {ADDRESS}"),
        format!("ironlb demo --clean{}", prefix_flag(p)),
    ]
}

/// The router's route to the address, as `ip route` shows it.
fn router_table(router: &str) -> String {
    run_out(
        "ip",
        &["netns", "exec", router, "ip", "route", "show", ADDRESS],
    )
    .unwrap_or_default()
}

/// How many next hops the router has for the address.
fn paths(router: &str) -> usize {
    router_table(router).matches(" via ").count()
}

/// Waits until the router's BFD sessions with the three nodes are up. BFD
/// starts slow (one packet a second) and speeds up once up.
fn wait_for_bfd(router: &str, frr: &Path) -> anyhow::Result<()> {
    let bfd_up = || {
        run_out(
            "ip",
            &[
                "netns",
                "exec",
                router,
                "vtysh",
                "--vty_socket",
                path(frr),
                "-c",
                "show bfd peers json",
            ],
        )
        .map(|j| j.matches("\"status\":\"up\"").count())
        .unwrap_or(0)
    };
    wait_until(
        "BFD up with the three nodes",
        Duration::from_secs(30),
        || (bfd_up() == 3).then_some(()),
    )?;
    detail("BFD is up with the three nodes (100 ms × 3)");
    std::thread::sleep(Duration::from_secs(1));
    Ok(())
}

/// The nodes' default route through `router`, and a client namespace
/// behind it on 10.99.1.0/24, whose traffic to the address follows the
/// router's routes.
fn route_through(lab: &mut Lab, nodes: &[String], router: &str) -> anyhow::Result<String> {
    for n in nodes {
        lab.exec_ok(n, &["ip", "route", "add", "default", "via", "10.99.0.1"])?;
    }
    let client = lab.namespace("client")?;
    lab.exec_ok(
        router,
        &[
            "ip", "link", "add", "rc", "type", "veth", "peer", "name", "eth0", "netns", &client,
        ],
    )?;
    lab.exec_ok(router, &["ip", "addr", "add", "10.99.1.1/24", "dev", "rc"])?;
    lab.exec_ok(router, &["ip", "link", "set", "rc", "up"])?;
    lab.exec_ok(
        &client,
        &[
            "ip",
            "addr",
            "add",
            &format!("{BGP_CLIENT}/24"),
            "dev",
            "eth0",
        ],
    )?;
    lab.exec_ok(&client, &["ip", "link", "set", "eth0", "up"])?;
    lab.exec_ok(
        &client,
        &["ip", "route", "add", "default", "via", "10.99.1.1"],
    )?;
    lab.exec_ok(router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    // Spread one client's connections over the nodes by port as well.
    lab.exec_ok(
        router,
        &["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"],
    )?;
    Ok(client)
}

/// FRR on `router` (zebra, bfdd, bgpd): AS 64513, taking BGP sessions with
/// BFD (100 ms × 3) from the nodes' subnet. Returns its directory.
fn start_frr(lab: &mut Lab, router: &str) -> anyhow::Result<PathBuf> {
    let dir = &lab.dir().to_path_buf();
    let frr = dir.join("frr");
    std::fs::create_dir_all(&frr)?;
    let frr_conf = frr.join("frr.conf");
    std::fs::write(
        &frr_conf,
        format!(
            "hostname tor\nlog file {}\n!\nbfd\n profile fast\n  transmit-interval 100\n  \
             receive-interval 100\n !\n!\nrouter bgp 64513\n bgp router-id 10.99.0.1\n \
             no bgp ebgp-requires-policy\n neighbor nodes peer-group\n neighbor nodes remote-as 64512\n \
             neighbor nodes bfd\n neighbor nodes bfd profile fast\n bgp listen range 10.99.0.0/24 peer-group nodes\n \
             address-family ipv4 unicast\n  maximum-paths 8\n exit-address-family\n",
            path(&frr.join("frr.log"))
        ),
    )?;
    run("chown", &["-R", "frr:frr", path(&frr)])?;
    let zserv = frr.join("zserv.api");
    for daemon in ["zebra", "bfdd", "bgpd"] {
        lab.spawn(
            router,
            &format!("/usr/lib/frr/{daemon}"),
            &[
                "-i",
                path(&frr.join(format!("{daemon}.pid"))),
                "-z",
                path(&zserv),
                "--vty_socket",
                path(&frr),
                "-f",
                path(&frr_conf),
                "-u",
                "frr",
                "-g",
                "frr",
            ],
            &dir.join(format!("{daemon}.log")),
        )?;
        if daemon == "zebra" {
            wait_until("zebra", Duration::from_secs(10), || {
                zserv.exists().then_some(())
            })?;
        }
    }
    Ok(frr)
}

/// Cuts node-3's link and measures, from the client, the last failed
/// request before a second of answers.
fn cut_and_wait(lab: &Lab, switch: &str, client: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    lab.exec_ok(switch, &["ip", "link", "set", "p3", "down"])?;
    let failover = in_netns(client, || {
        // Served again: the last failed request before a second of answers.
        let mut last_fail = None;
        let mut ok_since = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if http_get(ADDRESS, Duration::from_millis(100)).is_some() {
                // A second of answers after the last failure, or two without
                // any (the route went before a request hashed to node-3).
                let quiet = if last_fail.is_some() { 1 } else { 2 };
                if ok_since.elapsed() > Duration::from_secs(quiet) {
                    break;
                }
            } else {
                last_fail = Some(start.elapsed());
                ok_since = Instant::now();
            }
        }
        last_fail.unwrap_or_default()
    });
    Ok(failover)
}

fn prefix_flag(p: &str) -> String {
    if p == "ilbdemo" {
        String::new()
    } else {
        format!(" --prefix {p}")
    }
}

fn step(n: usize, text: &str) {
    println!("[{n}/{STEPS}] {text}");
}

fn detail(text: &str) {
    println!("      {text}");
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// The demo's lab, refused when a lab of that prefix is already up.
fn open(opts: &Options, cleanup: &Cleanup) -> anyhow::Result<Lab> {
    if Path::new(&format!("/run/netns/{}-sw", opts.prefix)).exists() {
        anyhow::bail!(
            "a demo lab named {0} is already up; remove it with `ironlb demo --clean` \
             (or pick another --prefix)",
            opts.prefix
        );
    }
    Ok(Lab::open(&opts.prefix, cleanup.clone())?)
}

/// nginx (reading the PROXY protocol) in `nginx`, the UDP echo in `echo`.
fn backends(lab: &mut Lab, nginx: &str, echo: &str, exe: &str) -> anyhow::Result<()> {
    let dir = lab.dir().to_path_buf();
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(&dir))?;
    let error_log = dir.join("nginx-error.log");
    lab.spawn(
        nginx,
        "nginx",
        &["-c", path(&conf), "-e", path(&error_log)],
        &dir.join("nginx.log"),
    )?;
    lab.spawn(
        echo,
        exe,
        &["demo-udp-echo", &format!("{ECHO}:5353")],
        &dir.join("udp-echo.log"),
    )?;
    Ok(())
}

/// A static speaker on each of the three `nodes`, announcing as `announce`
/// says; `metrics` serves each one's `/metrics` on its node. Returns their
/// indexes in the lab, node-1 first.
fn speakers(
    lab: &mut Lab,
    nodes: &[String],
    exe: &str,
    announce: &str,
    metrics: bool,
) -> anyhow::Result<Vec<usize>> {
    let dir = lab.dir().to_path_buf();
    let mut started = Vec::new();
    for (i, node) in (1..=3).zip(nodes) {
        let config = dir.join(format!("node-{i}.yaml"));
        std::fs::write(&config, speaker_config(i, announce))?;
        let metrics_addr = format!("10.99.0.1{i}:9121");
        let mut args = vec!["speaker", "--static", path(&config)];
        if metrics {
            args.extend(["--metrics-addr", &metrics_addr]);
        }
        let log = dir.join(format!("speaker-node-{i}.log"));
        started.push(lab.spawn(node, exe, &args, &log)?);
    }
    Ok(started)
}

/// Where node `node-N`'s speaker is in what [`speakers`] returned.
fn node_index(node: &str) -> anyhow::Result<usize> {
    node.strip_prefix("node-")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| (1..=3).contains(n))
        .map(|n| n - 1)
        .ok_or_else(|| anyhow::anyhow!("{node} is none of the demo's nodes"))
}

/// With `keep`, leaves the lab up and prints `explore`; else says the lab
/// goes (`cleaning`).
fn keep_or_clean(lab: &Lab, keep: bool, explore: &[String], cleaning: &str) {
    if !keep {
        step(7, cleaning);
        return;
    }
    step(7, "keeping the lab up (--keep); explore it:");
    for line in explore {
        println!("      {line}");
    }
    lab.keep();
}

fn run_out(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks root and the commands the lab needs; installs missing Debian
/// packages when allowed.
fn preflight(opts: &Options) -> anyhow::Result<()> {
    if !is_root() {
        anyhow::bail!("the demo builds network namespaces: run it as root (sudo)");
    }
    let have = |cmd: &str| run_out("sh", &["-c", &format!("command -v {cmd}")]).is_some();
    let mut missing = Vec::new();
    if !have("ip") {
        missing.push("iproute2");
    }
    if !have("nginx") {
        missing.push("nginx");
    }
    // The speakers keep the node's own ports off the Service address with
    // nftables; without it they give the address up.
    if !have("nft") {
        missing.push("nftables");
    }
    if opts.bgp && !Path::new("/usr/lib/frr/bgpd").exists() {
        missing.push("frr");
    }
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!(
        "apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !opts.install || !have("apt-get") {
        anyhow::bail!("the demo needs {}: {command}", missing.join(", "));
    }
    println!("[0/{STEPS}] installing {} ({command})", missing.join(", "));
    let ok = Command::new("sh")
        .args(["-c", &format!("apt-get update -qq && {command} -qq")])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("RUNLEVEL", "1")
        .status()?
        .success();
    if !ok {
        anyhow::bail!("installing failed; run `{command}` yourself and try again");
    }
    Ok(())
}

fn nginx_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
         events {{}}\n\
         http {{\n  access_log {d}/nginx-access.log;\n\
         client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
         uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
         server {{\n    listen {NGINX}:8080 proxy_protocol;\n\
         location / {{ return 200 \"nginx saw client $proxy_protocol_addr\\n\"; }}\n  }}\n}}\n"
    )
}

/// Node `i`'s static file: the demo's gossip group and Services, with
/// `announce` saying how the address goes out (the address entry's own
/// fields, then any top-level block such as `bgp:`).
fn speaker_config(i: usize, announce: &str) -> String {
    let seeds: Vec<String> = (1..=3)
        .filter(|j| *j != i)
        .map(|j| format!("10.99.0.1{j}:7946"))
        .collect();
    format!(
        "node: node-{i}\n\
         gossip:\n  listen: 10.99.0.1{i}:7946\n  seeds: [{}]\n  secret: demo-gossip-secret\n\
         addresses:\n  - address: {ADDRESS}\n{announce}\
         services:\n\
         \x20 - name: web\n    address: {ADDRESS}\n    proxyProtocol: v2\n    ports: [{{port: 80, targetPort: 8080}}]\n    endpoints: [{{address: {NGINX}}}]\n\
         \x20 - name: echo\n    address: {ADDRESS}\n    ports: [{{port: 7, protocol: UDP, targetPort: 5353}}]\n    endpoints: [{{address: {ECHO}}}]\n",
        seeds.join(", ")
    )
}

/// Over layer 2, on the nodes' `eth0`.
const L2_ANNOUNCE: &str = "    interfaces: [eth0]\n";

/// Over BGP only, to the FRR router, with BFD at 100 ms × 3.
const BGP_ANNOUNCE: &str = "    bgp: {}\n\
     bgp:\n  bfdProfiles:\n    fast: {receiveInterval: 100, transmitInterval: 100}\n  \
     peers:\n    - name: tor\n      spec: {myASN: 64512, peerASN: 64513, peerAddress: 10.99.0.1, bfdProfile: fast}\n";

/// The node whose speaker announces the address now, from the speakers'
/// metrics.
fn owner_of(nodes: &[String]) -> Option<String> {
    let owners: Vec<String> = nodes
        .iter()
        .filter_map(|ns| {
            let i = ns.chars().last()?;
            let metrics = in_netns(ns, || {
                let addr: SocketAddr = format!("10.99.0.1{i}:9121").parse().ok()?;
                get(addr, "/metrics", Duration::from_millis(300))
            })?;
            metrics
                .lines()
                .any(|l| l == "ironlb_speaker_announced_addresses 1")
                .then(|| format!("node-{i}"))
        })
        .collect();
    (owners.len() == 1).then(|| owners[0].clone())
}

/// GET http://ADDRESS/ and the client address nginx reports.
fn http_get(address: &str, timeout: Duration) -> Option<String> {
    let addr: SocketAddr = format!("{address}:80").parse().ok()?;
    let body = get(addr, "/", timeout)?;
    body.trim()
        .strip_prefix("nginx saw client ")
        .map(str::to_string)
}

fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut req = String::new();
    let _ = write!(
        req,
        "GET {path} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
        addr.ip()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.")
        .then_some(())
        .filter(|_| head.contains(" 200 "))?;
    Some(body.to_string())
}

fn udp_echo() -> bool {
    let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let target: SocketAddr = match format!("{ADDRESS}:7").parse() {
        Ok(t) => t,
        Err(_) => return false,
    };
    for _ in 0..3 {
        if s.send_to(b"ping", target).is_err() {
            continue;
        }
        let mut buf = [0u8; 64];
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            return &buf[..n] == b"ping" && from == target;
        }
    }
    false
}

/// `err` with what the speakers warned of in their logs (`dir`), so a wait
/// that timed out says why: a node that cannot filter or listen says so.
fn explained(err: anyhow::Error, dir: &Path) -> anyhow::Error {
    let said = speaker_warnings(dir);
    if said.is_empty() {
        return err;
    }
    anyhow::anyhow!(
        "{err}; the speakers said:\n  {}\n(their logs: {}/speaker-node-*.log)",
        said.join("\n  "),
        dir.display()
    )
}

/// The distinct warnings and errors of the speakers' logs in `dir`, as
/// `node-N: message`, at most eight.
fn speaker_warnings(dir: &Path) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for i in 1..=3 {
        let log = std::fs::read_to_string(dir.join(format!("speaker-node-{i}.log")));
        for line in log.unwrap_or_default().lines() {
            // `<time>  WARN target: message fields`: keep from the level on.
            let Some(at) = line.find(" WARN ").or_else(|| line.find(" ERROR ")) else {
                continue;
            };
            let message = line[at..].trim().to_string();
            if out.len() < 8 && seen.insert(message.clone()) {
                out.push(format!("node-{i}: {message}"));
            }
        }
    }
    out
}

/// Polls `f` until it returns something, printing a line every second so no
/// step is silent.
fn wait_until<T>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut said = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > limit {
            anyhow::bail!("timed out after {} s waiting for {what}", limit.as_secs());
        }
        if said.elapsed() >= Duration::from_secs(1) {
            detail(&format!("waiting for {what}…"));
            said = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The demo's UDP echo backend: answers every datagram with itself.
pub fn udp_echo_server(listen: SocketAddr) -> std::io::Result<()> {
    let socket = UdpSocket::bind(listen)?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        socket.send_to(&buf[..n], from)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wait that timed out carries the speakers' warnings, once each.
    #[test]
    fn a_timeout_says_what_the_speakers_warned_of() {
        let dir = std::env::temp_dir().join(format!("ironlb-demo-warn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let warning = "2026-12-04T10:00:00.000000Z  WARN ironlb::speaker::executor: cannot write the \
                       nftables table error=the nft command is not installed";
        std::fs::write(
            dir.join("speaker-node-1.log"),
            format!("2026-12-04T10:00:00.000000Z  INFO ironlb: starting\n{warning}\n{warning}\n"),
        )
        .unwrap();
        let err = explained(
            anyhow::anyhow!("timed out after 10 s waiting for an answer"),
            &dir,
        );
        let said = err.to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            said.starts_with("timed out after 10 s waiting for an answer; the speakers said:"),
            "{said}"
        );
        assert_eq!(
            said.matches("the nft command is not installed").count(),
            1,
            "{said}"
        );
        assert!(!said.contains("starting"), "{said}");
    }
}
