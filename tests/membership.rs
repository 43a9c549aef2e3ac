//! Speakers' gossip membership over real UDP sockets on loopback.

mod support;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ironlb::membership::{Config, Health, MAX_HEALTH_LEN, Membership, Unservable};
use support::wait_for;
use tokio::net::UdpSocket;

const SECRET: &[u8] = b"test-gossip-secret";

async fn speaker(node: &str, secret: &[u8], seeds: Vec<SocketAddr>) -> Membership {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind loopback");
    Membership::start(socket, Config::lan(node, vec![secret.to_vec()], seeds)).expect("start")
}

fn set(nodes: &[&str]) -> BTreeSet<String> {
    nodes.iter().map(|n| n.to_string()).collect()
}

async fn wait_members(m: &Membership, expected: &[&str], what: &str) -> Duration {
    let started = Instant::now();
    let expected = set(expected);
    let rx = m.members();
    wait_for(what, Duration::from_secs(5), || {
        let ok = *rx.borrow() == expected;
        async move { ok.then_some(()) }
    })
    .await;
    started.elapsed()
}

async fn trio() -> (Membership, Membership, Membership) {
    let a = speaker("a", SECRET, vec![]).await;
    let b = speaker("b", SECRET, vec![a.local_addr()]).await;
    let c = speaker("c", SECRET, vec![a.local_addr()]).await;
    for m in [&a, &b, &c] {
        wait_members(m, &["a", "b", "c"], "all three to see each other").await;
    }
    (a, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speakers_find_each_other_through_a_seed() {
    let (a, b, c) = trio().await;
    for m in [a, b, c] {
        m.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_speaker_is_declared_down() {
    let (a, b, c) = trio().await;
    c.abort();
    let ta = wait_members(&a, &["a", "b"], "a to see c down").await;
    let tb = wait_members(&b, &["a", "b"], "b to see c down").await;
    eprintln!("crash detected after {ta:?} (a) and {tb:?} (b)");
    a.leave().await;
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_speaker_is_gone_without_detection() {
    let (a, b, c) = trio().await;
    let before = Instant::now();
    c.leave().await;
    wait_members(&a, &["a", "b"], "a to see c leave").await;
    wait_members(&b, &["a", "b"], "b to see c leave").await;
    let took = before.elapsed();
    eprintln!("leave seen after {took:?}");
    // A leave is announced, not detected: faster than the suspicion timeout
    // that a crash has to wait out.
    assert!(
        took < Config::lan("x", vec![SECRET.to_vec()], vec![]).suspect_to_down_after,
        "took {took:?}"
    );
    a.leave().await;
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speaker_with_the_wrong_secret_never_joins() {
    let (a, b, c) = trio().await;
    let intruder = speaker(
        "d",
        b"wrong-gossip-secret",
        vec![a.local_addr(), b.local_addr()],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for m in [&a, &b, &c] {
        assert_eq!(*m.members().borrow(), set(&["a", "b", "c"]));
    }
    assert_eq!(*intruder.members().borrow(), set(&["d"]));
    let dropped: u64 = [&a, &b].iter().map(|m| m.counters().bad_tag.get()).sum();
    assert!(
        dropped > 0,
        "the intruder's datagrams are counted as dropped"
    );
    for m in [a, b, c, intruder] {
        m.leave().await;
    }
}

#[tokio::test]
async fn an_empty_or_short_secret_is_refused_with_how_to_make_one() {
    for secret in [&b""[..], b"short-secret"] {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind loopback");
        let Err(err) = Membership::start(socket, Config::lan("a", vec![secret.to_vec()], vec![]))
        else {
            panic!("a {}-byte secret was accepted", secret.len());
        };
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        let said = err.to_string();
        assert!(
            said.contains(&format!("{} bytes", secret.len()))
                && said.contains("at least 16")
                && said.contains("head -c 32 /dev/urandom | base64"),
            "{said}"
        );
    }
}

async fn wait_health(m: &Membership, node: &str, expected: Option<Unservable>, what: &str) {
    let rx = m.health();
    wait_for(what, Duration::from_secs(5), || {
        let ok = rx.borrow().get(node).cloned() == expected;
        async move { ok.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_speaker_cannot_serve_reaches_every_peer_and_latecomers() {
    let (a, b, c) = trio().await;
    let x: IpAddr = "10.0.0.100".parse().unwrap();
    let y: IpAddr = "fd00::100".parse().unwrap();
    a.set_unservable([x, y].into());
    let both = Unservable::Addresses([x, y].into());
    wait_health(
        &b,
        "a",
        Some(both.clone()),
        "b to learn what a cannot serve",
    )
    .await;
    wait_health(
        &c,
        "a",
        Some(both.clone()),
        "c to learn what a cannot serve",
    )
    .await;
    // A speaker that joins later is told too, though the first record was
    // spread before it came.
    let d = speaker("d", SECRET, vec![b.local_addr()]).await;
    wait_health(
        &d,
        "a",
        Some(both),
        "a latecomer to learn what a cannot serve",
    )
    .await;
    a.set_unservable([y].into());
    for (m, name) in [(&b, "b"), (&c, "c"), (&d, "d")] {
        let only_y = Some(Unservable::Addresses([y].into()));
        wait_health(
            m,
            "a",
            only_y,
            &format!("{name} to learn that a serves x again"),
        )
        .await;
    }
    // A restarted speaker's first record replaces its earlier run's.
    a.abort();
    let a2 = speaker("a", SECRET, vec![b.local_addr()]).await;
    let nothing = Some(Unservable::Addresses(BTreeSet::new()));
    wait_health(&c, "a", nothing, "c to forget what a's earlier run said").await;
    for m in [a2, b, c, d] {
        m.leave().await;
    }
}

#[test]
fn a_health_record_too_long_for_a_datagram_says_everything() {
    let many: BTreeSet<IpAddr> = (0..1000u32)
        .map(|i| IpAddr::V6(std::net::Ipv6Addr::from(u128::from(i) + 1)))
        .collect();
    let record = Health {
        node: "a".into(),
        epoch: 1,
        version: 1,
        unservable: many,
        everything: false,
    };
    let wire = record.encode();
    assert!(wire.len() <= MAX_HEALTH_LEN, "{} bytes", wire.len());
    let decoded = Health::decode(&wire).unwrap();
    assert!(decoded.everything && decoded.unservable.is_empty());
    let few = Health {
        unservable: [IpAddr::from([10, 0, 0, 1])].into(),
        ..record.clone()
    };
    assert_eq!(
        Health::decode(&few.encode()).unwrap(),
        few,
        "a short list stays a list"
    );
    assert!(Health::decode(b"\xff\xff").is_err());
}
