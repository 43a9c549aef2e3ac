//! A Gateway port's routing in the running forwarder, on loopback (no root):
//! TLS passthrough hands the backend the client's bytes untouched, and
//! clients that send no usable ClientHello — silent, half a hello, plain
//! text, a forged record length — are turned away cleanly and counted;
//! an unusable backend's share is refused, not spread.

use std::net::SocketAddr;
use std::time::Duration;

use ironlb::forwarder::metrics::Metrics;
use ironlb::forwarder::plan::{Backend, Listener, Policy, Protocol};
use ironlb::forwarder::routing::{Route, Routing, Share};
use ironlb::forwarder::sni;
use ironlb::forwarder::{Forwarder, Settings};
use ironlb::ipam::ServiceKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend on loopback that records the first bytes of each connection
/// and answers `name`.
struct Recorder {
    address: SocketAddr,
    seen: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
}

async fn recorder(name: &'static str) -> Recorder {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let n = c.read(&mut buf).await.unwrap_or(0);
                let _ = tx.send(buf[..n].to_vec());
                let _ = c.write_all(name.as_bytes()).await;
            });
        }
    });
    Recorder { address, seen }
}

fn backend(address: SocketAddr) -> Backend {
    Backend {
        address,
        node: None,
    }
}

fn route(name: &str, hostnames: &[&str], shares: Vec<Share>) -> Route {
    Route {
        name: name.into(),
        hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
        shares,
    }
}

fn share(weight: u32, backends: Vec<Backend>) -> Share {
    Share { weight, backends }
}

/// Runs one routed listener on a free loopback port.
fn listen(forwarder: &mut Forwarder, routing: Routing) -> SocketAddr {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let backends = routing.backends();
    let errors = forwarder.apply(&[Listener {
        address,
        protocol: Protocol::Tcp,
        service: ServiceKey::new("infra", "edge-ironlb-gateway"),
        backends,
        policy: Policy::default(),
        routing: Some(routing),
    }]);
    assert!(errors.is_empty(), "{errors:?}");
    address
}

/// Sends `bytes` (then, unless `hold`, half-closes) and reads to the end.
async fn exchange(to: SocketAddr, bytes: &[u8], hold: bool) -> Vec<u8> {
    let mut c = TcpStream::connect(to).await.expect("connect");
    c.write_all(bytes).await.expect("write");
    if !hold {
        let _ = c.shutdown().await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out))
        .await
        .expect("the forwarder ends the connection");
    out
}

/// The sum of the forwarder's counters whose lines contain `name` and
/// `label`.
fn counted(metrics: &Metrics, name: &str, label: &str) -> u64 {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn tls_passthrough_routes_by_name_and_turns_away_what_it_cannot_route() {
    let mut exact = recorder("exact").await;
    let mut wild = recorder("wild").await;
    let settings = Settings {
        tcp_handshake: Duration::from_millis(300),
        ..Settings::default()
    };
    let metrics = Metrics::default();
    let mut forwarder = Forwarder::new(settings, metrics.clone());
    let vip = listen(
        &mut forwarder,
        Routing {
            sni: true,
            routes: vec![
                route(
                    "wild",
                    &["*.example.com"],
                    vec![share(1, vec![backend(wild.address)])],
                ),
                route(
                    "exact",
                    &["db.example.com"],
                    vec![share(1, vec![backend(exact.address)])],
                ),
            ],
        },
    );

    // The backend gets the ClientHello byte for byte, whichever way it came.
    let hello = sni::client_hello(Some("db.example.com"));
    assert_eq!(exchange(vip, &hello, false).await, b"exact");
    assert_eq!(exact.seen.recv().await.unwrap(), hello);
    let mut split = TcpStream::connect(vip).await.unwrap();
    for chunk in hello.chunks(7) {
        split.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut answer = Vec::new();
    split.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"exact", "a hello sent in pieces is read whole");
    assert_eq!(exact.seen.recv().await.unwrap(), hello);
    let other = sni::client_hello(Some("web.example.com"));
    assert_eq!(exchange(vip, &other, false).await, b"wild");
    assert_eq!(wild.seen.recv().await.unwrap(), other);

    // A name no route takes, plain text, a hello without a name (no route
    // takes every name here), a forged record length: the alert, then EOF.
    let mut forged = hello.clone();
    forged[3..5].copy_from_slice(&[0xff, 0xff]);
    // A record length within TLS's limit but past the one-record read:
    // turned away once that much has come, not waited for.
    let mut oversized = vec![0x16, 0x03, 0x01, 0x40, 0xff, 0x01];
    oversized.resize(20_000, 0x42);
    for (what, bytes) in [
        ("unknown name", sni::client_hello(Some("db.other.org"))),
        (
            "plain text",
            b"GET / HTTP/1.1\r\nHost: db.example.com\r\n\r\n".to_vec(),
        ),
        ("no name", sni::client_hello(None)),
        ("forged length", forged),
        ("past one record", oversized),
    ] {
        assert_eq!(
            exchange(vip, &bytes, true).await,
            b"",
            "{what}: closed, nothing sent back"
        );
    }
    assert_eq!(counted(&metrics, "refused", "reason=\"no_route\""), 5);

    // Silence, or half a hello, until the handshake timeout: closed with
    // nothing sent on, no backend reached, counted as a handshake timeout.
    for bytes in [&[][..], &hello[..hello.len() / 2]] {
        assert_eq!(exchange(vip, bytes, true).await, b"");
    }
    assert!(exact.seen.try_recv().is_err() && wild.seen.try_recv().is_err());
    assert_eq!(counted(&metrics, "timeouts", "timeout=\"handshake\""), 2);
    // A client that closes before its hello is gone, not timed out.
    drop(TcpStream::connect(vip).await.unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(counted(&metrics, "timeouts", "timeout=\"handshake\""), 2);
}

/// A TCP port of a Gateway with no route attached resets its clients, as a
/// Service without endpoints does: no TLS alert to a client that speaks no
/// TLS.
#[tokio::test]
async fn a_tcp_port_without_a_route_resets_without_an_alert() {
    let metrics = Metrics::default();
    let mut forwarder = Forwarder::new(Settings::default(), metrics.clone());
    let vip = listen(
        &mut forwarder,
        Routing {
            sni: false,
            routes: vec![],
        },
    );
    assert_eq!(exchange(vip, b"SELECT 1;", true).await, b"");
    assert_eq!(counted(&metrics, "refused", "reason=\"no_route\""), 1);
}

#[tokio::test]
async fn an_unusable_backends_share_is_refused_not_spread() {
    let mut live = recorder("live").await;
    let metrics = Metrics::default();
    let mut forwarder = Forwarder::new(Settings::default(), metrics.clone());
    let vip = listen(
        &mut forwarder,
        Routing {
            sni: false,
            routes: vec![route(
                "db",
                &[],
                vec![share(3, vec![backend(live.address)]), share(1, vec![])],
            )],
        },
    );
    let mut answered = 0;
    for _ in 0..400 {
        let mut c = TcpStream::connect(vip).await.unwrap();
        let _ = c.write_all(b"q").await;
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out).await;
        if out == b"live" {
            answered += 1;
            live.seen.recv().await.unwrap();
        }
    }
    assert!(
        (290..=310).contains(&answered),
        "{answered} of 400 answered, 300 expected"
    );
    assert_eq!(
        counted(&metrics, "refused", "reason=\"no_backend\""),
        400 - answered
    );
}
