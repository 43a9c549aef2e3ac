//! Three nodes running real `ironlb speaker --static` processes and a client, on
//! one Ethernet segment built from network namespaces: the client's kernel
//! resolves the address, and follows it when the owner dies.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::netns::{Lab, Speakers, expected_owner};

const V4: &str = "10.77.0.100";
const V6: &str = "fd77::100";

struct World {
    lab: Lab,
    nodes: Vec<(String, String)>, // (node name, namespace)
    speakers: Vec<Option<usize>>,
    client: String,
    switch: String,
}

fn world(test: &str) -> Option<World> {
    let mut w = topology(test)?;
    for i in 0..3 {
        let idx = start_speaker(&mut w, i);
        w.speakers.push(Some(idx));
    }
    Some(w)
}

/// The switch, three nodes and the client, with no speaker yet.
fn topology(test: &str) -> Option<World> {
    let mut lab = Lab::new(test)?;
    let sw = lab.switch();
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let ns = lab.namespace(&format!("n{i}"));
        lab.plug(
            &sw,
            &ns,
            &format!("p{i}"),
            &[&format!("10.77.0.1{i}/24"), &format!("fd77::1{i}/64")],
        );
        nodes.push((format!("node-{i}"), ns));
    }
    let client = lab.namespace("client");
    lab.plug(&sw, &client, "pc", &["10.77.0.50/24", "fd77::50/64"]);
    Some(World {
        lab,
        nodes,
        speakers: Vec::new(),
        client,
        switch: sw,
    })
}

fn start_speaker(w: &mut World, i: usize) -> usize {
    let ns = w.nodes[i].1.clone();
    w.lab.start_speaker(&ns, i + 1, "10.77.0", &[V4, V6])
}

fn mac_of(w: &World, ns: &str) -> String {
    let out = w.lab.exec_ok(ns, &["ip", "-o", "link", "show", "eth0"]);
    out.split("link/ether ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("MAC")
        .to_string()
}

/// The MAC the client's kernel has for `address`, after asking for it.
fn resolve(w: &World, address: &str) -> Option<String> {
    // A datagram to the address makes the client's kernel resolve it; nobody
    // needs to receive it.
    let send = format!("echo probe > /dev/udp/{address}/9");
    let _ = w.lab.exec(&w.client, &["bash", "-c", &send]);
    let out = w.lab.exec_ok(&w.client, &["ip", "neigh", "show", address]);
    out.split("lladdr ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .map(String::from)
}

fn ns_of<'a>(w: &'a World, node: &str) -> &'a str {
    &w.nodes.iter().find(|(n, _)| n == node).expect("node").1
}

fn wait_mac(w: &World, address: &str, want: &str, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        if resolve(w, address).as_deref() == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}: the client has {:?}, wanted {want}; logs:\n{}",
            resolve(w, address),
            logs(w)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn logs(w: &World) -> String {
    (1..=3)
        .map(|i| {
            let text = std::fs::read_to_string(w.lab.dir().join(format!("node-{i}.log")))
                .unwrap_or_default();
            format!("--- node-{i}\n{text}")
        })
        .collect()
}

fn owner_resolves_then_moves(
    test: &str,
    stop: impl Fn(&mut World, usize),
) -> Option<(World, String)> {
    let mut w = world(test)?;
    let all = ["node-1", "node-2", "node-3"];
    for address in [V4, V6] {
        let owner = expected_owner(&all, address);
        let mac = mac_of(&w, ns_of(&w, &owner));
        wait_mac(
            &w,
            address,
            &mac,
            &format!("{address} to resolve to {owner}"),
        );
    }
    let owner = expected_owner(&all, V4);
    let index = w
        .nodes
        .iter()
        .position(|(n, _)| *n == owner)
        .expect("owner");
    let stopped = Instant::now();
    stop(&mut w, index);
    let alive: Vec<&str> = all.iter().copied().filter(|n| *n != owner).collect();
    let next = expected_owner(&alive, V4);
    let mac = mac_of(&w, ns_of(&w, &next));
    wait_mac(
        &w,
        V4,
        &mac,
        &format!("{V4} to move from {owner} to {next}"),
    );
    eprintln!(
        "{test}: {V4} moved from {owner} to {next} {:?} after the stop",
        stopped.elapsed()
    );
    // IPv6 follows through Neighbor Discovery the same way.
    let next6 = expected_owner(&alive, V6);
    let mac6 = mac_of(&w, ns_of(&w, &next6));
    wait_mac(&w, V6, &mac6, &format!("{V6} to be announced by {next6}"));
    let seen: BTreeSet<String> = [V4, V6].iter().filter_map(|a| resolve(&w, a)).collect();
    assert!(
        !seen.contains(&mac_of(&w, ns_of(&w, &owner))),
        "nothing resolves to the stopped node"
    );
    Some((w, owner))
}

#[test]
fn the_owner_answers_and_a_killed_owner_is_replaced() {
    let _ = owner_resolves_then_moves("killed", |w, i| {
        let idx = w.speakers[i].take().expect("running");
        w.lab.kill(idx);
    });
}

#[test]
fn a_stopped_speaker_hands_over() {
    let _ = owner_resolves_then_moves("stopped", |w, i| {
        let idx = w.speakers[i].take().expect("running");
        w.lab.terminate(idx);
    });
}

#[test]
fn an_owner_whose_link_goes_down_is_replaced() {
    let _ = owner_resolves_then_moves("linkdown", |w, i| {
        // Unplug the node: its switch port goes down, the process lives on.
        let sw = w.switch.clone();
        w.lab
            .exec_ok(&sw, &["ip", "link", "set", &format!("p{}", i + 1), "down"]);
    });
}

#[test]
fn when_the_link_comes_back_the_owner_takes_its_address_back() {
    let Some((w, owner)) = owner_resolves_then_moves("heal", |w, i| {
        let sw = w.switch.clone();
        w.lab
            .exec_ok(&sw, &["ip", "link", "set", &format!("p{}", i + 1), "down"]);
    }) else {
        return;
    };
    let index = w
        .nodes
        .iter()
        .position(|(n, _)| *n == owner)
        .expect("owner");
    w.lab.exec_ok(
        &w.switch,
        &["ip", "link", "set", &format!("p{}", index + 1), "up"],
    );
    let mac = mac_of(&w, ns_of(&w, &owner));
    let took = wait_mac(
        &w,
        V4,
        &mac,
        &format!("{V4} to return to {owner} once the partition heals"),
    );
    eprintln!("heal: {V4} back on {owner} {took:?} after the link came up");
}

/// Gossip on one segment, announcement on another (as with a dedicated
/// management network): the owner's announcing link goes down, or loses its
/// carrier, while its speaker stays in the group. It must give the address up
/// to a node that can serve it, and take it back once its link is back.
#[test]
fn an_owner_whose_announcing_link_fails_while_gossip_goes_on_gives_the_address_up() {
    let Some(mut w) = topology("announcing_link_fails_gossip_goes_on") else {
        return;
    };
    let gossip = w.lab.switch_named("gsw");
    for i in 1..=3 {
        let ns = w.nodes[i - 1].1.clone();
        w.lab.plug_as(
            &gossip,
            &ns,
            &format!("g{i}"),
            "gossip",
            &[&format!("10.78.0.1{i}/24")],
        );
    }
    for i in 1..=3 {
        let seeds: Vec<String> = (1..=3)
            .filter(|j| *j != i)
            .map(|j| format!("10.78.0.1{j}:7946"))
            .collect();
        let config = format!(
            "node: node-{i}\ngossip:\n  listen: 10.78.0.1{i}:7946\n  seeds: [{}]\n  secret: lab-gossip-secret\naddresses:\n  - address: {V4}\n    interfaces: [eth0]\n",
            seeds.join(", ")
        );
        let ns = w.nodes[i - 1].1.clone();
        let idx = w.lab.start_speaker_with(&ns, i, &config);
        w.speakers.push(Some(idx));
    }
    let all = ["node-1", "node-2", "node-3"];
    let owner = expected_owner(&all, V4);
    let others: Vec<&str> = all.iter().copied().filter(|n| *n != owner).collect();
    let next = expected_owner(&others, V4);
    let owner_ns = ns_of(&w, &owner).to_string();
    let owner_mac = mac_of(&w, &owner_ns);
    let next_mac = mac_of(&w, ns_of(&w, &next));
    wait_mac(&w, V4, &owner_mac, &format!("{V4} to resolve to {owner}"));
    let index = w
        .nodes
        .iter()
        .position(|(n, _)| *n == owner)
        .expect("owner")
        + 1;
    let membership_before = membership_changes(&w, index);

    w.lab
        .exec_ok(&owner_ns, &["ip", "link", "set", "eth0", "down"]);
    let took = wait_mac(
        &w,
        V4,
        &next_mac,
        &format!("{next} to take {V4} from {owner} whose eth0 is down"),
    );
    eprintln!("announcing link down: {V4} on {next} after {took:?}");
    let log = std::fs::read_to_string(w.lab.dir().join(format!("{owner}.log"))).unwrap_or_default();
    assert_eq!(
        value(
            &metrics_of(&w, &owner_ns),
            "ironlb_speaker_unservable_addresses"
        ),
        1.0,
        "{owner} counts the address it cannot serve"
    );
    assert!(
        log.contains("cannot serve"),
        "{owner} says why it gave {V4} up:\n{log}"
    );
    assert_eq!(
        arp_answerers(&w, V4, 1.0),
        BTreeSet::from([next_mac.clone()]),
        "only {next} answers while {owner}'s link is down"
    );

    w.lab
        .exec_ok(&owner_ns, &["ip", "link", "set", "eth0", "up"]);
    let back = wait_mac(&w, V4, &owner_mac, &format!("{V4} to return to {owner}"));
    eprintln!("announcing link up again: {V4} back on {owner} after {back:?}");

    // The switch's end of the link goes down: up on the node, no carrier.
    let sw = w.switch.clone();
    w.lab
        .exec_ok(&sw, &["ip", "link", "set", &format!("p{index}"), "down"]);
    let took = wait_mac(
        &w,
        V4,
        &next_mac,
        &format!("{next} to take {V4} from {owner} without carrier"),
    );
    eprintln!("announcing link without carrier: {V4} on {next} after {took:?}");
    w.lab
        .exec_ok(&sw, &["ip", "link", "set", &format!("p{index}"), "up"]);
    wait_mac(
        &w,
        V4,
        &owner_mac,
        &format!("{V4} to return to {owner} with its carrier"),
    );
    assert_eq!(
        arp_answerers(&w, V4, 1.0),
        BTreeSet::from([owner_mac]),
        "one answer once it is over"
    );
    assert_eq!(
        membership_changes(&w, index),
        membership_before,
        "{owner} stayed in the group all along: only health moved the address"
    );
}

/// Asks for `address` every 100 ms for `seconds` from the client's eth0 with
/// raw ARP requests, and returns every MAC that answered.
fn arp_answerers(w: &World, address: &str, seconds: f64) -> BTreeSet<String> {
    const SAMPLER: &str = r#"
import socket, struct, sys, time
target, seconds = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("eth0", 0)); s.settimeout(0.05)
mac = s.getsockname()[4]
me = socket.inet_aton("10.77.0.50"); want = socket.inet_aton(target)
req = b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + me + b"\x00" * 6 + want
seen = set(); end = time.monotonic() + seconds; next_ask = 0
while time.monotonic() < end:
    if time.monotonic() >= next_ask:
        s.send(req); next_ask = time.monotonic() + 0.1
    try:
        f = s.recv(128)
    except socket.timeout:
        continue
    if len(f) >= 42 and f[20:22] == b"\x00\x02" and f[28:32] == want:
        seen.add(":".join("%02x" % b for b in f[22:28]))
print(" ".join(sorted(seen)))
"#;
    let out = w.lab.exec_ok(
        &w.client,
        &["python3", "-c", SAMPLER, address, &seconds.to_string()],
    );
    out.split_whitespace().map(String::from).collect()
}

#[test]
fn in_steady_state_exactly_one_node_answers() {
    let Some((mut w, owner)) = owner_resolves_then_moves("steady", |w, i| {
        let idx = w.speakers[i].take().expect("running");
        w.lab.kill(idx);
    }) else {
        return;
    };
    let all = ["node-1", "node-2", "node-3"];
    let alive: Vec<&str> = all.iter().copied().filter(|n| *n != owner).collect();
    let next = expected_owner(&alive, V4);
    assert_eq!(
        arp_answerers(&w, V4, 10.0),
        BTreeSet::from([mac_of(&w, ns_of(&w, &next))])
    );

    // The killed speaker comes back: the address returns to it, and again only
    // one node answers.
    let index = w
        .nodes
        .iter()
        .position(|(n, _)| *n == owner)
        .expect("owner");
    let idx = start_speaker(&mut w, index);
    w.speakers[index] = Some(idx);
    let mac = mac_of(&w, ns_of(&w, &owner));
    wait_mac(&w, V4, &mac, &format!("{V4} to return to {owner}"));
    assert_eq!(arp_answerers(&w, V4, 10.0), BTreeSet::from([mac]));
}

#[test]
fn five_percent_packet_loss_causes_no_false_failover() {
    let Some(w) = world("lossy") else {
        return;
    };
    let all = ["node-1", "node-2", "node-3"];
    let owner = expected_owner(&all, V4);
    let mac = mac_of(&w, ns_of(&w, &owner));
    wait_mac(&w, V4, &mac, &format!("{V4} to resolve to {owner}"));
    // Every node drops 5 % of the gossip datagrams it receives.
    for (_, ns) in &w.nodes {
        w.lab.exec_ok(ns, &["nft", "add", "table", "inet", "lossy"]);
        w.lab.exec_ok(
            ns,
            &[
                "nft",
                "add chain inet lossy input { type filter hook input priority 0 ; }",
            ],
        );
        w.lab.exec_ok(
            ns,
            &[
                "nft",
                "add rule inet lossy input udp dport 7946 numgen random mod 100 < 5 counter drop",
            ],
        );
    }
    let before: Vec<usize> = (1..=3).map(|i| membership_changes(&w, i)).collect();
    std::thread::sleep(std::time::Duration::from_secs(20));
    let after: Vec<usize> = (1..=3).map(|i| membership_changes(&w, i)).collect();
    let dropped: usize = w
        .nodes
        .iter()
        .map(|(_, ns)| {
            let rules = w
                .lab
                .exec_ok(ns, &["nft", "list", "table", "inet", "lossy"]);
            rules
                .split("packets ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert!(
        dropped > 0,
        "the loss rule dropped nothing: the test would prove nothing"
    );
    assert_eq!(
        before,
        after,
        "membership changed under 5 % loss ({dropped} datagrams dropped); logs:\n{}",
        logs(&w)
    );
    assert_eq!(
        resolve(&w, V4).as_deref(),
        Some(mac.as_str()),
        "the address stayed on {owner}"
    );
    eprintln!("lossy: {dropped} gossip datagrams dropped in 20 s, no membership change");
}

/// How many times node `i`'s speaker has logged a membership change.
fn membership_changes(w: &World, i: usize) -> usize {
    std::fs::read_to_string(w.lab.dir().join(format!("node-{i}.log")))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("membership"))
        .count()
}

/// The speaker's metrics page in `ns`.
const FETCH: &str = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9121/metrics').read().decode())";

fn metrics_of(w: &World, ns: &str) -> String {
    w.lab.exec_ok(ns, &["python3", "-c", FETCH])
}

fn series(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn value(metrics: &str, name: &str) -> f64 {
    series(metrics, name).unwrap_or_else(|| panic!("no series {name} in:\n{metrics}"))
}

#[test]
fn metrics_show_who_announces_and_who_answered() {
    let Some(w) = world("metrics") else {
        return;
    };
    let all = ["node-1", "node-2", "node-3"];
    let owner = expected_owner(&all, V4);
    let v6_owner = expected_owner(&all, V6);
    let mac = mac_of(&w, ns_of(&w, &owner));
    wait_mac(&w, V4, &mac, &format!("{V4} to resolve to {owner}"));
    // The first resolution may have been settled by the takeover burst; ask
    // again, now that it is over, so the answer has to come from the owner.
    std::thread::sleep(std::time::Duration::from_millis(500));
    w.lab
        .exec_ok(&w.client, &["ip", "neigh", "flush", "dev", "eth0"]);
    wait_mac(&w, V4, &mac, &format!("{V4} to resolve to {owner} again"));
    for (name, ns) in &w.nodes {
        let m = metrics_of(&w, ns);
        // Every speaker series an alert reads is exported (BGP's only with a
        // session: the BGP lab checks it).
        for metric in support::alerted_metrics("ironlb_speaker_") {
            assert!(
                metric.contains("bgp") || m.contains(&format!("{metric} ")),
                "{name} exports no {metric}"
            );
        }
        let expected = usize::from(*name == owner) + usize::from(*name == v6_owner);
        assert_eq!(
            value(&m, "ironlb_speaker_announced_addresses"),
            expected as f64,
            "{name}"
        );
        assert_eq!(value(&m, "ironlb_speaker_members"), 3.0, "{name}");
        // An interface appears in the metrics once it has announced something.
        let answered =
            series(&m, "ironlb_speaker_arp_answered_total{interface=\"eth0\"}").unwrap_or(0.0);
        if *name == owner {
            assert!(answered >= 1.0, "{name} answered the client");
            assert!(
                value(
                    &m,
                    "ironlb_speaker_gratuitous_sent_total{interface=\"eth0\"}"
                ) >= 3.0
            );
        } else {
            assert_eq!(
                answered, 0.0,
                "{name} does not own {V4} and must not answer"
            );
        }
    }
}

/// Gossip captured on the wire and replayed later changes nothing: node-2's
/// "leave" replayed after it rejoined does not evict it, and node-3's datagrams
/// replayed after it left for good do not bring it back. The replays are
/// counted.
#[test]
fn replayed_gossip_neither_evicts_nor_resurrects() {
    let Some(mut w) = world("replay") else {
        return;
    };
    let tap = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/gossip_tap.py");
    let node1 = w.nodes[0].1.clone();
    let members = |w: &World| value(&metrics_of(w, &node1), "ironlb_speaker_members");
    let wait_members = |w: &World, n: f64, what: &str| {
        let started = Instant::now();
        while members(w) != n {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}; logs:\n{}",
                logs(w)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_members(&w, 3.0, "node-1 to see all three");

    // Record what node-1 receives while node-2 leaves and comes back.
    let capture = w.lab.dir().join("gossip.hex");
    let log = w.lab.dir().join("tap.log");
    let capture_arg = capture.to_str().expect("utf-8 path").to_string();
    let started = Instant::now();
    w.lab.spawn(
        &node1,
        "python3",
        &[
            tap,
            "capture",
            "eth0",
            "10.77.0.11",
            "7946",
            "5",
            &capture_arg,
        ],
        &log,
    );
    std::thread::sleep(Duration::from_millis(500));
    let idx = w.speakers[1].take().expect("node-2's speaker");
    w.lab.terminate(idx);
    wait_members(&w, 2.0, "node-1 to see node-2 leave");
    w.speakers[1] = Some(start_speaker(&mut w, 1));
    wait_members(&w, 3.0, "node-1 to see node-2 back");
    std::thread::sleep(
        Duration::from_secs(5).saturating_sub(started.elapsed()) + Duration::from_millis(500),
    );

    let replay = |w: &World| -> usize {
        let out = w.lab.exec_ok(
            &w.client,
            &["python3", tap, "replay", &capture_arg, "10.77.0.11", "7946"],
        );
        out.trim().parse().expect("count of replayed datagrams")
    };
    let hold = |w: &World, n: f64, what: &str| {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(2) {
            assert_eq!(members(w), n, "{what}; logs:\n{}", logs(w));
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let sent = replay(&w);
    assert!(sent > 20, "only {sent} datagrams captured");
    hold(&w, 3.0, "node-2's replayed leave must not evict it");
    let replayed = value(
        &metrics_of(&w, &node1),
        "ironlb_speaker_gossip_replayed_total",
    );
    assert!(
        replayed >= sent as f64 * 0.9,
        "{replayed} of {sent} replays counted"
    );

    // node-3 leaves for good; its recorded datagrams come back.
    let idx = w.speakers[2].take().expect("node-3's speaker");
    w.lab.terminate(idx);
    wait_members(&w, 2.0, "node-1 to see node-3 leave");
    replay(&w);
    hold(
        &w,
        2.0,
        "node-3's replayed datagrams must not bring it back",
    );
}

/// The announcing interface appears after the speaker starts, is deleted and
/// re-created, and goes down and up: each time the speaker announces there
/// again within seconds, without a restart (it gossips on the loopback, so
/// nothing else changes to wake it).
#[test]
fn an_interface_that_appears_late_or_is_recreated_is_announced_on() {
    let Some(mut lab) = Lab::new("an_interface_that_appears_late_or_is_recreated") else {
        return;
    };
    let switch = lab.switch();
    let node = lab.namespace("n1");
    let client = lab.namespace("client");
    lab.plug(&switch, &client, "pc", &["10.77.0.50/24"]);
    let config = "node: node-1\ngossip:\n  listen: 127.0.0.1:7946\n  secret: lab-gossip-secret\n\
                  addresses:\n  - address: 10.77.0.100\n    interfaces: [eth0]\n";
    lab.start_speaker_with(&node, 1, config);
    let log = lab.dir().join("node-1.log");
    let resolves_to = |lab: &Lab, what: &str| {
        let out = lab.exec_ok(&node, &["ip", "-o", "link", "show", "eth0"]);
        let mac = out
            .split("link/ether ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("MAC")
            .to_string();
        let started = Instant::now();
        loop {
            lab.exec_ok(&client, &["ip", "neigh", "flush", "dev", "eth0"]);
            let _ = lab.exec(
                &client,
                &["bash", "-c", "echo probe > /dev/udp/10.77.0.100/9"],
            );
            std::thread::sleep(Duration::from_millis(100));
            let seen = lab.exec_ok(&client, &["ip", "neigh", "show", "10.77.0.100"]);
            if seen.contains(&mac) {
                eprintln!("interfaces: {what}: answered after {:?}", started.elapsed());
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{what}: 10.77.0.100 does not resolve to {mac} ({seen:?}); log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    };
    std::thread::sleep(Duration::from_secs(5));
    lab.plug(&switch, &node, "p1", &["10.77.0.11/24"]);
    resolves_to(&lab, "eth0 created 5 s after the start");
    lab.exec_ok(&node, &["ip", "link", "del", "eth0"]);
    lab.plug(&switch, &node, "p1", &["10.77.0.11/24"]);
    resolves_to(&lab, "eth0 deleted and re-created");
    lab.exec_ok(&node, &["ip", "link", "set", "eth0", "down"]);
    std::thread::sleep(Duration::from_millis(1500));
    lab.exec_ok(&node, &["ip", "link", "set", "eth0", "up"]);
    resolves_to(&lab, "eth0 down and up again");
}

/// A speaker announcing on two interfaces serves a `/metrics` page Prometheus
/// accepts: one HELP and TYPE per metric, the interfaces as label values.
#[test]
fn metrics_with_two_announcing_interfaces_pass_promtool() {
    let Some(mut lab) = Lab::new("metrics_with_two_announcing_interfaces") else {
        return;
    };
    let ns = lab.namespace("n1");
    // Two links of the node, the ends of one veth pair: each gets an announcer.
    lab.exec_ok(
        &ns,
        &[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ],
    );
    for (link, address) in [("eth0", "10.77.0.11/24"), ("eth1", "10.78.0.11/24")] {
        lab.exec_ok(&ns, &["ip", "addr", "add", address, "dev", link]);
        lab.exec_ok(&ns, &["ip", "link", "set", link, "up"]);
    }
    let config = "node: node-1\ngossip:\n  listen: 10.77.0.11:7946\n  secret: lab-gossip-secret\n\
                  addresses:\n  - address: 10.77.0.100\n    interfaces: [eth0]\n\
                  \x20 - address: 10.78.0.100\n    interfaces: [eth1]\n";
    lab.start_speaker_with(&ns, 1, config);
    let started = Instant::now();
    let page = loop {
        let out = lab.exec(&ns, &["python3", "-c", FETCH]);
        let page = String::from_utf8_lossy(&out.stdout).into_owned();
        if page.contains("interface=\"eth0\"") && page.contains("interface=\"eth1\"") {
            break page;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "both interfaces in the metrics; got:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        page.matches("# HELP ironlb_speaker_gratuitous_sent_total ")
            .count(),
        1,
        "{page}"
    );
    if let Some(verdict) = support::promtool_check("metrics_with_two_announcing_interfaces", &page)
    {
        verdict.unwrap_or_else(|said| panic!("promtool check metrics: {said}\n{page}"));
    }
}

/// Speakers in cluster mode, fed by the test API server running inside the lab.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_announces_from_the_api_and_fails_over_without_it() {
    use ironlb::api::{L2Advertisement, L2AdvertisementSpec};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::Api;
    use kube::api::{Patch, PatchParams, PostParams};
    use support::{ApiServer, Svc, create_pool, create_service, pool};

    let Some(mut w) = topology("cluster") else {
        return;
    };
    let control = w.lab.namespace("ctl");
    let sw = w.switch.clone();
    w.lab.plug(&sw, &control, "pctl", &["10.77.0.2/24"]);
    let server = ApiServer::start_in_namespace(&control, "10.77.0.2:6443".parse().unwrap()).await;
    let client = server.client();

    create_pool(&client, pool("lab", &["10.77.0.100-10.77.0.110"])).await;
    let ad = L2Advertisement::new(
        "lab",
        L2AdvertisementSpec {
            interfaces: vec!["eth0".into()],
            ..Default::default()
        },
    );
    Api::<L2Advertisement>::all(client.clone())
        .create(&PostParams::default(), &ad)
        .await
        .unwrap();
    let status = |ip: &str| serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}});
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    create_service(&client, Svc::lb("default", "web").build()).await;
    services
        .patch_status("web", &PatchParams::default(), &Patch::Merge(status(V4)))
        .await
        .unwrap();
    // externalTrafficPolicy Local with its only ready endpoint on node-3.
    let mut local = Svc::lb("default", "local").build();
    local.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
    create_service(&client, local).await;
    services
        .patch_status(
            "local",
            &PatchParams::default(),
            &Patch::Merge(status("10.77.0.101")),
        )
        .await
        .unwrap();
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "local-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "local"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.42.3.7"], "nodeName": "node-3", "conditions": {"ready": true}}],
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &slice)
        .await
        .unwrap();

    // No --gossip-seeds: the speakers find each other at their Nodes'
    // InternalIPs, as in a DaemonSet.
    for i in 1..=3 {
        support::create_node(&client, &format!("node-{i}"), &format!("10.77.0.1{i}")).await;
    }
    let kubeconfig = server.lab_kubeconfig(w.lab.dir());
    for i in 1..=3 {
        let ns = w.nodes[i - 1].1.clone();
        let idx = w.lab.start_cluster_speaker(&ns, i, "10.77.0", &kubeconfig);
        w.speakers.push(Some(idx));
    }

    let all = ["node-1", "node-2", "node-3"];
    let owner = expected_owner(&all, V4);
    let mac = mac_of(&w, ns_of(&w, &owner));
    wait_mac(&w, V4, &mac, &format!("{V4} to resolve to {owner}"));
    let node3 = mac_of(&w, ns_of(&w, "node-3"));
    wait_mac(
        &w,
        "10.77.0.101",
        &node3,
        "the Local Service's address to resolve to node-3, the node with its endpoint",
    );

    // Who announces is visible with kubectl: a ServiceL2Status per Service and
    // an event on the Service, both naming node and interface.
    let reports: Api<ironlb::api::ServiceL2Status> = Api::namespaced(client.clone(), "default");
    for (service, node) in [("web", owner.as_str()), ("local", "node-3")] {
        let report = support::wait_for(
            &format!("a ServiceL2Status for {service} from {node} only"),
            std::time::Duration::from_secs(5),
            || async {
                let list = reports.list(&Default::default()).await.ok()?;
                let mine: Vec<_> = list
                    .items
                    .into_iter()
                    .filter(|s| s.spec.service == service)
                    .collect();
                (mine.len() == 1 && mine[0].spec.node == node).then(|| mine[0].spec.clone())
            },
        )
        .await;
        assert_eq!(report.interfaces, ["eth0"]);
        let note = support::wait_for_event(&client, "default", service, "Announcing").await;
        assert!(
            note.contains(&format!("node {node} announces")) && note.ends_with("on eth0"),
            "{note}"
        );
    }

    // The endpoint moves to node-1: so does the Local Service's address.
    let moved = serde_json::json!({"endpoints": [{"addresses": ["10.42.1.7"], "nodeName": "node-1", "conditions": {"ready": true}}]});
    Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .patch("local-1", &PatchParams::default(), &Patch::Merge(moved))
        .await
        .unwrap();
    let node1 = mac_of(&w, ns_of(&w, "node-1"));
    wait_mac(
        &w,
        "10.77.0.101",
        &node1,
        "the Local Service's address to follow its endpoint to node-1",
    );

    // The API server fails every request (500); the owner dies; the address
    // still moves.
    server.set_failing(true);
    let index = w.nodes.iter().position(|(n, _)| *n == owner).unwrap();
    let idx = w.speakers[index].take().unwrap();
    w.lab.kill(idx);
    let alive: Vec<&str> = all.iter().copied().filter(|n| *n != owner).collect();
    let next = expected_owner(&alive, V4);
    let mac = mac_of(&w, ns_of(&w, &next));
    let took = wait_mac(
        &w,
        V4,
        &mac,
        &format!("{V4} to move to {next} with the API server down"),
    );
    eprintln!(
        "cluster: {V4} moved from {owner} to {next} {took:?} after the kill, API server down"
    );

    // The new owner's report could not be written then; once the API server
    // answers again it lands (retried), and the controller removes the dead
    // owner's (a speaker may write only its own node's).
    server.set_failing(false);
    let controller = support::Controller::start(&client);
    support::wait_for(
        &format!("the ServiceL2Status of web to name {next} only, after the outage"),
        std::time::Duration::from_secs(15),
        || async {
            let list = reports.list(&Default::default()).await.ok()?;
            let web: Vec<_> = list
                .items
                .iter()
                .filter(|s| s.spec.service == "web")
                .map(|s| s.spec.node.clone())
                .collect();
            (web == [next.clone()]).then_some(())
        },
    )
    .await;
    controller.stop().await;

    // The owner's speaker comes back while the API server fails again: with
    // no view it must not join the group, or its peers would withdraw the
    // address it cannot announce. The address stays with {next}.
    server.set_failing(true);
    let ns = ns_of(&w, &owner).to_string();
    w.speakers[index] = Some(
        w.lab
            .start_cluster_speaker(&ns, index + 1, "10.77.0", &kubeconfig),
    );
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        w.lab
            .exec_ok(&w.client, &["ip", "neigh", "flush", "dev", "eth0"]);
        let _ = resolve(&w, V4);
        std::thread::sleep(Duration::from_millis(150));
        let out = w.lab.exec_ok(&w.client, &["ip", "neigh", "show", V4]);
        assert!(
            out.contains(&mac),
            "{V4} must keep answering from {next} while the restarted {owner} has no view; \
             the client's neighbour entry: {out:?}; logs:\n{}",
            logs(&w)
        );
    }
    // Once the API server answers, it syncs, joins, and takes its address back.
    server.set_failing(false);
    let owner_mac = mac_of(&w, ns_of(&w, &owner));
    wait_mac(
        &w,
        V4,
        &owner_mac,
        &format!("{owner} to take {V4} back once it has a view"),
    );
    server.stop();
}

/// A takeover burst runs beside the speaker's loop, never in it: an address
/// withdrawn in the middle of a long burst gets no further packet, and
/// SIGTERM ends the speaker long before the burst would have.
#[test]
fn a_long_burst_delays_neither_a_withdrawal_nor_shutdown() {
    let Some(mut lab) = Lab::new("a_long_burst_delays_nothing") else {
        return;
    };
    let switch = lab.switch();
    let node = lab.namespace("n1");
    lab.plug(&switch, &node, "p1", &["10.77.0.11/24"]);
    // 200 packets 100 ms apart: a 20 s burst.
    let config = |addresses: &str| {
        format!(
            "node: node-1\ngossip:\n  listen: 10.77.0.11:7946\n  secret: lab-gossip-secret\n\
             announceCount: 200\nannounceIntervalMs: 100\naddresses:{addresses}"
        )
    };
    let with = "\n  - address: 10.77.0.100\n    interfaces: [eth0]\n";
    let speaker = lab.start_speaker_with(&node, 1, &config(with));
    let sent = |lab: &Lab| -> f64 {
        let out = lab.exec(&node, &["python3", "-c", FETCH]);
        series(
            &String::from_utf8_lossy(&out.stdout),
            "ironlb_speaker_gratuitous_sent_total{interface=\"eth0\"}",
        )
        .unwrap_or(0.0)
    };
    let log = lab.dir().join("node-1.log");
    let started = Instant::now();
    while sent(&lab) < 3.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the burst never started:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Withdrawn mid-burst: not one more packet for it.
    std::fs::write(lab.speaker_config_path(1), config(" []\n")).expect("rewrite");
    let started = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("withdrawn")
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the withdrawal waited for the burst:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let after_withdrawal = sent(&lab);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        sent(&lab),
        after_withdrawal,
        "gratuitous packets went on for a withdrawn address"
    );
    // A new burst, then SIGTERM in the middle of it.
    std::fs::write(lab.speaker_config_path(1), config(with)).expect("rewrite");
    let started = Instant::now();
    while sent(&lab) < after_withdrawal + 3.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no second burst"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopping = Instant::now();
    lab.terminate(speaker);
    let took = stopping.elapsed();
    eprintln!("burst: stopped {took:?} after SIGTERM, mid-burst");
    assert!(
        took < Duration::from_secs(10),
        "SIGTERM waited {took:?}, as long as the 20 s burst"
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("speaker stopped"),
        "a clean stop"
    );
}

/// A node cut off long enough for the others to declare it down (and it
/// them) rejoins every time its link comes back, however often that happens:
/// left alone, it announces itself to its seeds until it is back. Before that
/// it could stay alone for good after a short flap, holding its addresses in
/// a group of one while the others held them too.
#[test]
fn a_node_whose_link_flaps_rejoins_the_group_every_time() {
    let Some(w) = world("link_flaps_rejoin") else {
        return;
    };
    let members = |ns: &str| -> f64 {
        let page =
            String::from_utf8_lossy(&w.lab.exec(ns, &["python3", "-c", FETCH]).stdout).into_owned();
        series(&page, "ironlb_speaker_members").unwrap_or(0.0)
    };
    let wait_members = |ns: &str, want: f64, what: &str| {
        let started = Instant::now();
        while members(ns) != want {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{what}: {ns} sees {} members, not {want}; logs:\n{}",
                members(ns),
                logs(&w)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        started.elapsed()
    };
    let ns = w.nodes[2].1.clone();
    wait_members(&ns, 3.0, "the group forms");
    for flap in 1..=4 {
        w.lab
            .exec_ok(&w.switch, &["ip", "link", "set", "p3", "down"]);
        wait_members(&ns, 1.0, &format!("flap {flap}: node-3 alone"));
        w.lab.exec_ok(&w.switch, &["ip", "link", "set", "p3", "up"]);
        let took = wait_members(&ns, 3.0, &format!("flap {flap}: node-3 back in the group"));
        for (_, other) in &w.nodes[..2] {
            wait_members(
                other,
                3.0,
                &format!("flap {flap}: the others see node-3 again"),
            );
        }
        eprintln!("flap {flap}: node-3 rejoined {took:?} after its link came back");
    }
}
