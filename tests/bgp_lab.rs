//! BGP against real routers in a namespace lab: FRR (zebra + bgpd, Debian's
//! `frr`) as the top-of-rack router, three nodes running `ironlb speaker
//! --static` on its LAN, and a client behind the router on a network of its
//! own, so every packet to a Service address follows the routes the router
//! learned from the speakers.
//!
//! ```text
//!   client 10.78.1.2 ── 10.78.1.1 router 10.78.0.1 ── switch ── n1 10.78.0.11
//!                                                            ├─ n2 10.78.0.12
//!                                                            ├─ n3 10.78.0.13
//!                                                            └─ backend 10.78.0.50
//! ```

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::netns::{Lab, Speakers};
use support::routers::{Frr, frr_installed, next_hops};

const SUBNET: &str = "10.78.0";
const ROUTER: &str = "10.78.0.1";
const CLIENT: &str = "10.78.1.2";
const BACKEND: &str = "10.78.0.50";
/// Advertised by every node (externalTrafficPolicy Cluster).
const VIP: &str = "10.78.9.100";
/// Advertised only by node-2, the one with the endpoint (Local).
const LOCAL_VIP: &str = "10.78.9.101";
/// The pod on node-2 behind the Local Service.
const POD: &str = "10.78.2.2";
const MY_ASN: u32 = 64512;
const ROUTER_ASN: u32 = 64513;

struct World {
    lab: Lab,
    switch: String,
    nodes: Vec<String>,
    router: String,
    client: String,
    frr: Option<Frr>,
    speakers: Vec<usize>,
}

fn peer_py() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/peer.py").to_string()
}

/// The lab, no router daemon nor speaker yet; `None` (after saying why)
/// where labs can't run or the routers are missing. The LAN has IPv6 too
/// (fd78::1 the router, fd78::1i the nodes).
fn world(test: &str) -> Option<World> {
    if !frr_installed() || !which("bird") {
        support::netns::skip(
            test,
            Some(
                "FRR or BIRD is not installed (apt-get install frr bird2; scripts/test \
                 installs them as root)"
                    .into(),
            ),
        );
        return None;
    }
    let mut lab = Lab::new(test)?;
    let switch = lab.switch();
    let nodes = lab.plug_nodes(&switch, SUBNET, 3);
    let router = lab.namespace("r");
    lab.plug(
        &switch,
        &router,
        "pr",
        &[&format!("{ROUTER}/24"), "fd78::1/64"],
    );
    for (i, n) in nodes.iter().enumerate() {
        lab.exec_ok(
            n,
            &[
                "ip",
                "addr",
                "add",
                &format!("fd78::1{}/64", i + 1),
                "dev",
                "eth0",
                "nodad",
            ],
        );
        lab.exec_ok(n, &["ip", "route", "add", "default", "via", ROUTER]);
    }
    let client = lab.namespace("c");
    lab.wire(
        &router,
        "rc",
        "10.78.1.1/24",
        &client,
        "eth0",
        &format!("{CLIENT}/24"),
    );
    lab.exec_ok(
        &client,
        &["ip", "route", "add", "default", "via", "10.78.1.1"],
    );
    lab.exec_ok(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // Hash on ports too, so one client's connections spread over the nodes
    // (the default hashes on addresses only).
    lab.exec_ok(
        &router,
        &["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"],
    );
    let backend = lab.namespace("b");
    lab.plug(&switch, &backend, "pb", &[&format!("{BACKEND}/24")]);
    let log = lab.dir().join("backend.log");
    lab.spawn(
        &backend,
        "python3",
        &[&peer_py(), "serve", BACKEND, "8080"],
        &log,
    );
    Some(World {
        lab,
        switch,
        nodes,
        router,
        client,
        frr: None,
        speakers: Vec::new(),
    })
}

fn which(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// FRR's `router bgp` block accepting eBGP sessions from any node of the
/// LAN, with ECMP over up to 8 paths; `neighbor_extra` adds lines for the
/// `nodes` peer-group.
fn frr_dynamic(neighbor_extra: &str) -> String {
    format!(
        "router bgp {ROUTER_ASN}\n bgp router-id {ROUTER}\n bgp log-neighbor-changes\n \
         no bgp ebgp-requires-policy\n neighbor nodes peer-group\n neighbor nodes remote-as {MY_ASN}\n\
         {neighbor_extra} bgp listen range {SUBNET}.0/24 peer-group nodes\n !\n address-family ipv4 unicast\n  \
         maximum-paths 8\n exit-address-family\n!\n"
    )
}

impl World {
    /// FRR in the router's namespace with `bgp` as configuration.
    fn start_frr(&mut self, bgp: &str) {
        let router = self.router.clone();
        self.frr = Some(Frr::start(&mut self.lab, &router, bgp));
    }

    /// BIRD 2 in the router's namespace with `protocols` after a common head
    /// (router id, device and kernel protocols exporting every route, ECMP
    /// merged).
    fn start_bird(&mut self, protocols: &str) {
        let d = self.lab.dir().join("bird");
        std::fs::create_dir_all(&d).expect("bird directory");
        let conf = d.join("bird.conf");
        std::fs::write(
            &conf,
            format!(
                "router id {ROUTER};\nprotocol device {{}}\n\
                 protocol kernel kernel4 {{ ipv4 {{ export all; }}; merge paths yes; }}\n\
                 protocol kernel kernel6 {{ ipv6 {{ export all; }}; merge paths yes; }}\n{protocols}"
            ),
        )
        .expect("bird.conf");
        let ctl = d.join("bird.ctl");
        let log = d.join("bird.out");
        let router = self.router.clone();
        self.lab.spawn(
            &router,
            "bird",
            &[
                "-f",
                "-c",
                conf.to_str().expect("utf-8 path"),
                "-s",
                ctl.to_str().expect("utf-8 path"),
            ],
            &log,
        );
        wait_for("BIRD's control socket", Duration::from_secs(10), || {
            self.birdc("show status")
                .contains("Daemon is up")
                .then_some(())
        });
    }

    fn birdc(&self, command: &str) -> String {
        let ctl = self.lab.dir().join("bird/bird.ctl");
        let mut args = vec!["birdc", "-s", ctl.to_str().expect("utf-8 path")];
        args.extend(command.split(' '));
        String::from_utf8_lossy(&self.lab.exec(&self.router, &args).stdout).into_owned()
    }

    fn vtysh_json(&self, command: &str) -> Option<Value> {
        self.frr.as_ref()?.json(&self.lab, command)
    }

    /// Starts every node's speaker with `node_config(i)`.
    fn start_speakers(&mut self, node_config: impl Fn(usize) -> String) {
        for i in 1..=3 {
            let config = node_config(i);
            let ns = self.nodes[i - 1].clone();
            let index = self.lab.start_speaker_with(&ns, i, &config);
            self.speakers.push(index);
        }
    }
}

/// Node `i`'s gossip settings, then `rest` (addresses, bgp, services).
fn node_config(i: usize, rest: &str) -> String {
    let seeds: Vec<String> = (1..=3)
        .filter(|j| *j != i)
        .map(|j| format!("{SUBNET}.1{j}:7946"))
        .collect();
    format!(
        "node: node-{i}\ngossip:\n  listen: {SUBNET}.1{i}:7946\n  seeds: [{}]\n  secret: lab-gossip-secret\n{rest}",
        seeds.join(", ")
    )
}

/// The first lab's nodes: both addresses over BGP only, to the router.
fn ecmp_config(i: usize) -> String {
    node_config(
        i,
        &format!(
            "addresses:\n  - address: {VIP}\n    bgp: {{communities: [\"65000:100\", \"large:64512:1:2\"]}}\n  \
             - address: {LOCAL_VIP}\n    bgp: {{}}\n\
             bgp:\n  peers:\n    - name: tor\n      spec: {{myASN: {MY_ASN}, peerASN: {ROUTER_ASN}, \
             peerAddress: {ROUTER}, holdTime: 9s}}\n\
             services:\n  - name: web\n    address: {VIP}\n    ports: [{{port: 80, targetPort: 8080}}]\n    \
             endpoints: [{{address: {BACKEND}}}]\n  - name: local\n    address: {LOCAL_VIP}\n    \
             externalTrafficPolicy: Local\n    ports: [{{port: 80, targetPort: 8081}}]\n    \
             endpoints: [{{address: {POD}, node: node-2}}]\n"
        ),
    )
}

impl World {
    fn established(&self) -> BTreeSet<String> {
        self.frr
            .as_ref()
            .map(|f| f.established(&self.lab))
            .unwrap_or_default()
    }

    fn next_hops(&self, address: &str) -> BTreeSet<String> {
        next_hops(&self.lab, &self.router, address)
    }

    /// One connection from the client to `address:80`: the backend's answer.
    fn fetch(&self, address: &str) -> String {
        let out = self.lab.exec(
            &self.client,
            &["python3", &peer_py(), "tcp", address, "80", "hello"],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        if let Some(f) = &self.frr {
            let log = f.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            out.push_str("--- frr.log\n");
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        for f in ["node-1.log", "node-2.log", "node-3.log"] {
            let text = std::fs::read_to_string(self.lab.dir().join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("--- {f}\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// Polls `f` until it gives a value or `limit` passes (then panics naming
/// `what`).
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn nodes_addresses() -> BTreeSet<String> {
    (1..=3).map(|i| format!("{SUBNET}.1{i}")).collect()
}

#[test]
fn frr_learns_every_nodes_route_and_traffic_crosses_all_three() {
    let Some(mut w) = world("frr_learns_every_nodes_route_and_traffic_crosses_all_three") else {
        return;
    };
    // A pod on node-2 (its own namespace behind a veth, as a CNI makes it:
    // the transparent replies must cross the node's prerouting) backs the
    // Local Service.
    let n2 = w.nodes[1].clone();
    let pod = w.lab.namespace("pod");
    w.lab.wire(
        &n2,
        "veth-pod",
        "10.78.2.1/24",
        &pod,
        "eth0",
        &format!("{POD}/24"),
    );
    w.lab
        .exec_ok(&pod, &["ip", "route", "add", "default", "via", "10.78.2.1"]);
    w.lab
        .exec_ok(&n2, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let log = w.lab.dir().join("pod.log");
    w.lab
        .spawn(&pod, "python3", &[&peer_py(), "serve", POD, "8081"], &log);
    w.start_frr(&frr_dynamic(""));
    w.start_speakers(ecmp_config);

    let all = nodes_addresses();
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.established() != all || w.next_hops(VIP) != all {
        assert!(
            Instant::now() < deadline,
            "sessions {:?}, next hops of {VIP} {:?}\n{}",
            w.established(),
            w.next_hops(VIP),
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each node's metrics say its session is up (what an alert reads).
    for ns in &w.nodes {
        let page = w
            .lab
            .exec_ok(ns, &["curl", "-sS", "http://127.0.0.1:9121/metrics"]);
        assert!(
            page.contains("ironlb_speaker_bgp_session_established{peer=\"tor\"} 1"),
            "{ns}:\n{page}"
        );
    }
    // Only the node with the endpoint advertises the Local Service.
    assert_eq!(
        w.next_hops(LOCAL_VIP),
        [format!("{SUBNET}.12")].into(),
        "{}",
        w.logs()
    );
    // The attributes arrive as set.
    let route = w
        .vtysh_json(&format!("show bgp ipv4 unicast {VIP}/32 json"))
        .expect("the route");
    let paths = route["paths"].as_array().expect("paths");
    assert_eq!(paths.len(), 3, "{route}");
    for p in paths {
        assert_eq!(p["community"]["string"], "65000:100", "{p}");
        assert_eq!(p["largeCommunity"]["string"], "64512:1:2", "{p}");
        assert_eq!(p["aspath"]["string"], MY_ASN.to_string(), "{p}");
    }

    // Route refresh: the router asks every node for its routes again (no
    // soft-reconfiguration kept on its side), and each sends them again.
    let stats = |w: &World| -> Vec<(u64, u64)> {
        let n = w.vtysh_json("show bgp neighbors json").unwrap_or_default();
        all.iter()
            .map(|a| {
                let m = &n[a.as_str()]["messageStats"];
                let count = |k: &str| m[k].as_u64().unwrap_or(0);
                (count("routeRefreshSent"), count("updatesRecv"))
            })
            .collect()
    };
    let before = stats(&w);
    if let Some(frr) = &w.frr {
        let out = frr.vtysh(&w.lab, "clear bgp ipv4 unicast * soft in");
        assert!(out.status.success(), "{out:?}");
    }
    wait_for(
        "every node answering the route refresh",
        Duration::from_secs(10),
        || {
            let after = stats(&w);
            before
                .iter()
                .zip(&after)
                .all(|(b, a)| a.0 > b.0 && a.1 > b.1)
                .then_some(())
        },
    );
    assert_eq!(w.next_hops(VIP), all, "{}", w.logs());

    // Traffic from behind the router reaches the Service through every node
    // (the backend sees the forwarding node's address).
    let mut via = BTreeSet::new();
    for _ in 0..60 {
        let answer = w.fetch(VIP);
        let peer = answer
            .strip_prefix("peer=")
            .and_then(|a| a.split(':').next())
            .unwrap_or_else(|| panic!("answer {answer:?}\n{}", w.logs()))
            .to_string();
        via.insert(peer);
    }
    assert_eq!(via, all, "connections went through {via:?}");
    let local = w.fetch(LOCAL_VIP);
    assert!(
        local.starts_with(&format!("peer={CLIENT}:")),
        "the Local Service sees the client: {local}"
    );

    // A speaker killed outright: its connection closes, the router drops its
    // routes, and every connection still succeeds through the other two.
    let killed = w.speakers[2];
    w.lab.kill(killed);
    let two: BTreeSet<String> = all.iter().take(2).cloned().collect();
    wait_for(
        "the killed node's route withdrawn",
        Duration::from_secs(15),
        || (w.next_hops(VIP) == two).then_some(()),
    );
    for _ in 0..30 {
        let answer = w.fetch(VIP);
        assert!(answer.starts_with("peer="), "{answer}\n{}", w.logs());
        assert!(
            !answer.starts_with(&format!("peer={SUBNET}.13")),
            "{answer}"
        );
    }

    // A speaker stopped (SIGTERM) says Cease: its routes go at once.
    w.lab.terminate(w.speakers[1]);
    wait_for("node-2's routes withdrawn", Duration::from_secs(10), || {
        (w.next_hops(VIP) == [format!("{SUBNET}.11")].into() && w.next_hops(LOCAL_VIP).is_empty())
            .then_some(())
    });
    let frr_log = w.frr.as_ref().map(Frr::log).unwrap_or_default();
    assert!(
        frr_log.contains("Cease/Administrative Shutdown"),
        "the router logged the Cease:\n{frr_log}"
    );
    assert!(w.fetch(VIP).starts_with(&format!("peer={SUBNET}.11")));
}

/// Advertised over the IPv6 sessions.
const VIP6: &str = "2001:db8:78::100";

#[test]
fn bird_takes_ibgp_with_local_pref_and_ipv6_over_ipv6_sessions() {
    let Some(mut w) = world("bird_takes_ibgp_with_local_pref_and_ipv6_over_ipv6_sessions") else {
        return;
    };
    // iBGP (one AS): BIRD accepts any node of the LAN, over IPv4 and IPv6.
    w.start_bird(&format!(
        "protocol bgp nodes4 {{ local {ROUTER} as {MY_ASN}; neighbor range {SUBNET}.0/24 as {MY_ASN}; \
         direct; ipv4 {{ import all; export none; gateway direct; }}; }}\n\
         protocol bgp nodes6 {{ local fd78::1 as {MY_ASN}; neighbor range fd78::/64 as {MY_ASN}; \
         direct; ipv6 {{ import all; export none; gateway direct; }}; }}\n"
    ));
    w.start_speakers(|i| {
        node_config(
            i,
            &format!(
                "addresses:\n  - address: {VIP}\n    bgp: {{peers: [tor4], localPref: 300}}\n  \
                 - address: {VIP6}\n    bgp: {{peers: [tor6]}}\n\
                 bgp:\n  peers:\n    - name: tor4\n      spec: {{myASN: {MY_ASN}, peerASN: {MY_ASN}, peerAddress: {ROUTER}}}\n    \
                 - name: tor6\n      spec: {{myASN: {MY_ASN}, peerASN: {MY_ASN}, peerAddress: \"fd78::1\"}}\n\
                 services:\n  - name: web\n    address: {VIP}\n    ports: [{{port: 80, targetPort: 8080}}]\n    \
                 endpoints: [{{address: {BACKEND}}}]\n"
            ),
        )
    });
    let v6_hops: BTreeSet<String> = (1..=3).map(|i| format!("fd78::1{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.next_hops(VIP) != nodes_addresses() || w.next_hops(VIP6) != v6_hops {
        assert!(
            Instant::now() < deadline,
            "next hops {:?} and {:?}\n{}\n{}",
            w.next_hops(VIP),
            w.next_hops(VIP6),
            w.birdc("show protocols"),
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let route = w.birdc(&format!("show route for {VIP} all"));
    assert_eq!(route.matches("BGP.local_pref: 300").count(), 3, "{route}");
    let route6 = w.birdc(&format!("show route for {VIP6} all"));
    for i in 1..=3 {
        assert!(
            route6.contains(&format!("BGP.next_hop: fd78::1{i}")),
            "{route6}"
        );
    }
    // No IPv6 route went over the IPv4 sessions, nor the other way round.
    assert!(!route.contains("fd78::"), "{route}");
    let answer = w.fetch(VIP);
    assert!(
        answer.starts_with("peer=10.78.0.1"),
        "{answer}\n{}",
        w.logs()
    );
}

#[test]
fn tcp_md5_lets_the_right_password_in_and_keeps_a_wrong_one_out() {
    let Some(mut w) = world("tcp_md5_lets_the_right_password_in_and_keeps_a_wrong_one_out") else {
        return;
    };
    let mut bgp = format!(
        "router bgp {ROUTER_ASN}\n bgp router-id {ROUTER}\n bgp log-neighbor-changes\n no bgp ebgp-requires-policy\n"
    );
    for i in 1..=3 {
        bgp.push_str(&format!(
            " neighbor {SUBNET}.1{i} remote-as {MY_ASN}\n neighbor {SUBNET}.1{i} password right-secret\n"
        ));
    }
    bgp.push_str(" address-family ipv4 unicast\n  maximum-paths 8\n exit-address-family\n!\n");
    w.start_frr(&bgp);
    w.start_speakers(|i| {
        // node-1 and node-3 know the password; node-2 has a wrong one.
        let password = if i == 2 { "wrong-secret" } else { "right-secret" };
        node_config(
            i,
            &format!(
                "addresses:\n  - address: {VIP}\n    bgp: {{}}\n\
                 bgp:\n  peers:\n    - name: tor\n      password: {password}\n      \
                 spec: {{myASN: {MY_ASN}, peerASN: {ROUTER_ASN}, peerAddress: {ROUTER}, connectTime: 2s}}\n\
                 services:\n  - name: web\n    address: {VIP}\n    ports: [{{port: 80, targetPort: 8080}}]\n    \
                 endpoints: [{{address: {BACKEND}}}]\n"
            ),
        )
    });
    let right: BTreeSet<String> = [format!("{SUBNET}.11"), format!("{SUBNET}.13")].into();
    wait_for(
        "the sessions with the right password",
        Duration::from_secs(15),
        || (w.established() == right && w.next_hops(VIP) == right).then_some(()),
    );
    // The wrong password never gets a session: the router's kernel drops
    // its segments, the speaker's connection attempts time out and say so.
    let log = w.lab.dir().join("node-2.log");
    wait_for(
        "node-2 to report its failing session",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log).ok().filter(|l| {
                l.contains("BGP session not established; retrying")
                    && l.contains("connect: timed out")
            })
        },
    );
    assert_eq!(w.established(), right, "{}", w.logs());
    assert_eq!(w.next_hops(VIP), right);
}

#[test]
fn bfd_withdraws_a_node_whose_link_dies_long_before_the_hold_time() {
    let Some(mut w) = world("bfd_withdraws_a_node_whose_link_dies_long_before_the_hold_time")
    else {
        return;
    };
    let bfd = "bfd\n profile fast\n  transmit-interval 100\n  receive-interval 100\n  detect-multiplier 3\n !\n!\n";
    w.start_frr(&format!(
        "{bfd}{}",
        frr_dynamic(" neighbor nodes bfd\n neighbor nodes bfd profile fast\n")
    ));
    // The default hold time (90 s): only BFD can make this quick.
    w.start_speakers(|i| {
        node_config(
            i,
            &format!(
                "addresses:\n  - address: {VIP}\n    bgp: {{}}\n\
                 bgp:\n  bfdProfiles:\n    fast: {{receiveInterval: 100, transmitInterval: 100, detectMultiplier: 3}}\n  \
                 peers:\n    - name: tor\n      spec: {{myASN: {MY_ASN}, peerASN: {ROUTER_ASN}, peerAddress: {ROUTER}, bfdProfile: fast}}\n\
                 services:\n  - name: web\n    address: {VIP}\n    ports: [{{port: 80, targetPort: 8080}}]\n    \
                 endpoints: [{{address: {BACKEND}}}]\n"
            ),
        )
    });
    let all = nodes_addresses();
    let bfd_up = |w: &World| -> BTreeSet<String> {
        w.vtysh_json("show bfd peers json")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|p| p["status"] == "up")
            .filter_map(|p| p["peer"].as_str().map(str::to_string))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.next_hops(VIP) != all || bfd_up(&w) != all {
        assert!(
            Instant::now() < deadline,
            "next hops {:?}, BFD up with {:?}\n{}",
            w.next_hops(VIP),
            bfd_up(&w),
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // node-3's speaker restarts first (a node reboot, an upgrade without
    // hand-over): BFD comes back up with the new one.
    let n3 = w.nodes[2].clone();
    w.lab.kill(w.speakers[2]);
    wait_for("node-3's BFD down", Duration::from_secs(10), || {
        (!bfd_up(&w).contains(&format!("{SUBNET}.13"))).then_some(())
    });
    let config3 = std::fs::read_to_string(w.lab.speaker_config_path(3)).expect("node-3's config");
    w.speakers[2] = w.lab.start_speaker_with(&n3, 3, &config3);
    let restarted = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.next_hops(VIP) != all || bfd_up(&w) != all {
        assert!(
            Instant::now() < deadline,
            "after the restart: next hops {:?}, BFD up with {:?}\n{}\n{}",
            w.next_hops(VIP),
            bfd_up(&w),
            w.vtysh_json("show bfd peers json").unwrap_or_default(),
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("BFD up again {:?} after the restart", restarted.elapsed());
    // node-3's link dies: no FIN, no RST, only silence.
    let sw = format!("{}sw", w.nodes[0].trim_end_matches("n1"));
    w.lab.exec_ok(&sw, &["ip", "link", "set", "p3", "down"]);
    let cut = Instant::now();
    let two: BTreeSet<String> = all.iter().take(2).cloned().collect();
    wait_for("node-3 withdrawn by BFD", Duration::from_secs(10), || {
        (w.next_hops(VIP) == two).then_some(())
    });
    let took = cut.elapsed();
    println!("withdrawn {took:?} after the link went down (hold time 90 s)");
    for _ in 0..20 {
        let answer = w.fetch(VIP);
        assert!(answer.starts_with("peer=10.78.0.1"), "{answer}");
        assert!(
            !answer.starts_with(&format!("peer={SUBNET}.13")),
            "{answer}"
        );
    }
    // The speaker saw it too, from its side.
    let log = w.lab.dir().join("node-3.log");
    wait_for(
        "node-3's speaker to see BFD down",
        Duration::from_secs(5),
        || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains("BFD session down"))
        },
    );
}

#[test]
fn a_speaker_restarted_with_graceful_restart_keeps_its_routes_at_the_router() {
    let Some(mut w) =
        world("a_speaker_restarted_with_graceful_restart_keeps_its_routes_at_the_router")
    else {
        return;
    };
    w.start_frr(&frr_dynamic(" bgp graceful-restart\n"));
    let config = |i: usize| {
        node_config(
            i,
            &format!(
                "addresses:\n  - address: {VIP}\n    bgp: {{}}\n\
                 bgp:\n  peers:\n    - name: tor\n      spec: {{myASN: {MY_ASN}, peerASN: {ROUTER_ASN}, \
                 peerAddress: {ROUTER}, enableGracefulRestart: true}}\n\
                 services:\n  - name: web\n    address: {VIP}\n    ports: [{{port: 80, targetPort: 8080}}]\n    \
                 endpoints: [{{address: {BACKEND}}}]\n"
            ),
        )
    };
    w.start_speakers(config);
    let all = nodes_addresses();
    wait_for("three next hops", Duration::from_secs(20), || {
        (w.next_hops(VIP) == all).then_some(())
    });
    // node-1's speaker dies (its connection closes, no Cease) and comes back.
    w.lab.kill(w.speakers[0]);
    let gone = Instant::now();
    let mut seen = Vec::new();
    while gone.elapsed() < Duration::from_secs(2) {
        seen.push(w.next_hops(VIP));
        std::thread::sleep(Duration::from_millis(50));
    }
    let n1 = w.nodes[0].clone();
    w.lab.start_speaker_with(&n1, 1, &config(1));
    wait_for("node-1's session back", Duration::from_secs(15), || {
        w.established()
            .contains(&format!("{SUBNET}.11"))
            .then_some(())
    });
    let back = Instant::now();
    while back.elapsed() < Duration::from_secs(2) {
        seen.push(w.next_hops(VIP));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        seen.iter().all(|hops| *hops == all),
        "the router kept node-1's route while its speaker restarted: {:?}\n{}",
        seen.iter().find(|h| **h != all),
        w.logs()
    );
}

/// The BGP part of docs/migrating-from-metallb.md: every node first
/// advertises the address through another speaker (BIRD standing in for
/// MetalLB's FRR), then node by node that speaker stops and ironlb's takes
/// the node's session over. The other nodes carry the prefix meanwhile; a
/// client behind the router polling every 100 ms loses under a second.
#[test]
fn a_node_by_node_switch_from_another_bgp_speaker_keeps_the_prefix() {
    let Some(mut w) = world("a_node_by_node_switch_from_another_bgp_speaker") else {
        return;
    };
    w.start_frr(&frr_dynamic(""));
    const PORT: &str = "5353";
    // As kube-proxy does: every node takes the Service's traffic.
    for (i, n) in w.nodes.clone().iter().enumerate() {
        w.lab.exec_ok(
            n,
            &[
                "ip", "route", "add", "table", "local", "local", VIP, "dev", "lo",
            ],
        );
        let log = w.lab.dir().join(format!("echo-{i}.log"));
        w.lab.spawn(
            n,
            env!("CARGO_BIN_EXE_ironlb"),
            &["demo-udp-echo", &format!("{VIP}:{PORT}")],
            &log,
        );
    }
    let mut old = Vec::new();
    for (i, n) in w.nodes.clone().iter().enumerate() {
        let d = w.lab.dir().join(format!("old-{i}"));
        std::fs::create_dir_all(&d).expect("directory");
        let conf = d.join("bird.conf");
        std::fs::write(
            &conf,
            format!(
                "router id {SUBNET}.1{n};\nprotocol device {{}}\n\
                 protocol static {{ ipv4; route {VIP}/32 blackhole; }}\n\
                 protocol bgp tor {{ local {SUBNET}.1{n} as {MY_ASN}; neighbor {ROUTER} as {ROUTER_ASN};\n  \
                 ipv4 {{ import none; export where net = {VIP}/32; next hop self; }}; }}\n",
                n = i + 1
            ),
        )
        .expect("bird.conf");
        let ctl = d.join("bird.ctl");
        old.push(w.lab.spawn(
            n,
            "bird",
            &[
                "-f",
                "-c",
                conf.to_str().expect("path"),
                "-s",
                ctl.to_str().expect("path"),
            ],
            &d.join("bird.out"),
        ));
    }
    let all = nodes_addresses();
    wait_for(
        "the old speakers' three next hops",
        Duration::from_secs(20),
        || (w.next_hops(VIP) == all).then_some(()),
    );
    let stop = w.lab.dir().join("stop-poller");
    let poller_log = w.lab.dir().join("poller.log");
    let client = w.client.clone();
    w.lab.spawn(
        &client,
        "python3",
        &[
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/udp_poller.py"),
            VIP,
            PORT,
            stop.to_str().expect("path"),
        ],
        &poller_log,
    );
    std::thread::sleep(Duration::from_secs(1));

    let config = |i: usize| {
        node_config(
            i,
            &format!(
                "addresses:\n  - address: {VIP}\n    bgp: {{}}\n\
                 bgp:\n  peers:\n    - name: tor\n      spec: {{myASN: {MY_ASN}, peerASN: {ROUTER_ASN}, \
                 peerAddress: {ROUTER}}}\n"
            ),
        )
    };
    let mut hops_seen = Vec::new();
    for i in 1..=3 {
        // The old speaker leaves (SIGTERM: it closes its session with a
        // Cease, as MetalLB's FRR does when its Pod goes), ironlb's comes.
        w.lab.terminate(old[i - 1]);
        let me = format!("{SUBNET}.1{i}");
        wait_for(
            "the old speaker's route withdrawn",
            Duration::from_secs(10),
            || {
                let hops = w.next_hops(VIP);
                hops_seen.push(hops.len());
                (!hops.contains(&me)).then_some(())
            },
        );
        let ns = w.nodes[i - 1].clone();
        let index = w.lab.start_speaker_with(&ns, i, &config(i));
        w.speakers.push(index);
        let started = Instant::now();
        loop {
            let hops = w.next_hops(VIP);
            hops_seen.push(hops.len());
            if hops.contains(&me) && w.established().contains(&me) && hops.len() == 3 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "node-{i}'s route back through ironlb: hops {hops:?}\n{}",
                w.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&stop, "").expect("stop");
    let report: Value = wait_for("the poller's report", Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&poller_log).ok()?;
        text.lines()
            .find(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).expect("JSON"))
    });
    let lost = report["lost"].as_array().expect("lost").len();
    eprintln!(
        "migration switch-over (BGP, FRR router, node by node): {} probes every 100 ms, \
         {lost} lost ({} ms), longest gap {} ms; fewest next hops seen {}",
        report["sent"],
        lost * 100,
        report["longest_gap_ms"],
        hops_seen.iter().min().expect("seen")
    );
    assert!(
        hops_seen.iter().all(|n| *n >= 2),
        "the prefix always had another node's path"
    );
    assert!(
        lost * 100 < 1000,
        "lost {lost} probes: {report}\n{}",
        w.logs()
    );
    // Only ironlb's speakers remain, each with its session.
    assert_eq!(w.established(), all);
}

/// A route from the router with a malformed attribute (COMMUNITIES of
/// length 3, slipped by a relay into FRR's side of the session once it is
/// up) is discarded as RFC 7606 says: the session stays Established at FRR
/// and the node's route stays installed.
#[test]
fn an_update_with_a_malformed_attribute_from_the_router_leaves_the_session_up() {
    let Some(mut w) = world("an_update_with_a_malformed_attribute") else {
        return;
    };
    w.start_frr(&frr_dynamic(""));
    // The relay is on the LAN: the speaker peers with it, it with FRR.
    const RELAY: &str = "10.78.0.60";
    let relay = w.lab.namespace("relay");
    let switch = w.switch.clone();
    w.lab
        .plug(&switch, &relay, "prl", &[&format!("{RELAY}/24")]);
    // ORIGIN IGP, empty AS_PATH, NEXT_HOP, COMMUNITIES of length 3;
    // NLRI 10.99.0.0/24.
    let attributes: [u8; 20] = [
        0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4, 10, 78, 0, 1, 0xc0, 8, 3, 0, 0, 1,
    ];
    let mut body = vec![0u8, 0, 0, 20];
    body.extend_from_slice(&attributes);
    body.extend_from_slice(&[24, 10, 99, 0]);
    let mut update = vec![0xffu8; 16];
    update.extend_from_slice(&u16::try_from(19 + body.len()).expect("short").to_be_bytes());
    update.push(2);
    update.extend_from_slice(&body);
    let hex: String = update.iter().map(|b| format!("{b:02x}")).collect();
    let relay_log = w.lab.dir().join("relay.log");
    w.lab.spawn(
        &relay,
        "python3",
        &[
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/bgp_injector.py"),
            RELAY,
            "179",
            ROUTER,
            "179",
            &hex,
        ],
        &relay_log,
    );
    wait_for("the relay to listen", Duration::from_secs(10), || {
        std::fs::read_to_string(&relay_log)
            .ok()?
            .contains("listening")
            .then_some(())
    });
    let n1 = w.nodes[0].clone();
    let config = node_config(
        1,
        &format!(
            "addresses:\n  - address: {VIP}\n    bgp: {{}}\n\
             bgp:\n  peers:\n    - name: tor\n      spec: {{myASN: {MY_ASN}, peerASN: {ROUTER_ASN}, \
             peerAddress: {RELAY}, holdTime: 9s}}\n"
        ),
    );
    w.speakers.push(w.lab.start_speaker_with(&n1, 1, &config));
    let node = format!("{SUBNET}.11");
    wait_for(
        "the malformed UPDATE to be sent",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&relay_log)
                .ok()?
                .contains("injected")
                .then_some(())
        },
    );
    let injected = Instant::now();
    while injected.elapsed() < Duration::from_secs(4) {
        assert!(
            w.established().contains(RELAY) && w.next_hops(VIP).contains(&node),
            "the session and the route stay after the malformed UPDATE: {:?} {:?}\n{}",
            w.established(),
            w.next_hops(VIP),
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(w.lab.dir().join("node-1.log")).unwrap_or_default();
    assert!(
        log.contains("BGP message discarded; the session stays up"),
        "{log}"
    );
}
