//! Speakers' gossip membership over real UDP sockets on loopback.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ironlb::membership::{Config, Membership};
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
