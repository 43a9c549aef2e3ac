//! Two real `ironlb controller` processes against the test API server: one leads,
//! the other stands by; SIGKILL the leader and the standby takes over.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use support::*;

/// A controller process, killed and its scratch directory removed on drop.
struct Process {
    child: Child,
    identity: &'static str,
    metrics_port: u16,
    log: PathBuf,
}

impl Process {
    fn spawn(server: &ApiServer, dir: &std::path::Path, identity: &'static str) -> Self {
        let metrics_port = free_port();
        let log = dir.join(format!("{identity}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_ironlb"))
            .args(["controller", "--kubeconfig"])
            .arg(server.kubeconfig(dir))
            .args(["--identity", identity, "--lease-namespace", "ironlb-system"])
            .args([
                "--lease-duration-seconds",
                "3",
                "--lease-grace-seconds",
                "1",
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn ironlb controller");
        Self {
            child,
            identity,
            metrics_port,
            log,
        }
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.metrics_port, path)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A minimal HTTP/1.0 GET to loopback: (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

async fn holder(client: &Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), "ironlb-system")
        .get_opt("ironlb-controller")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn when_the_leader_is_killed_the_standby_allocates() {
    let server = ApiServer::start().await;
    let client = server.client();
    let dir = ScratchDir(std::env::temp_dir().join(format!(
        "ironlb-leader-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    create_pool(&client, pool("lan", &["10.0.0.0/24"])).await;
    let mut procs = vec![
        Process::spawn(&server, &dir.0, "ctl-a"),
        Process::spawn(&server, &dir.0, "ctl-b"),
    ];

    let leader = wait_for("a leader", Duration::from_secs(15), || async {
        holder(&client).await
    })
    .await;
    create_service(&client, Svc::lb("default", "before").build()).await;
    assert_eq!(
        wait_for_addresses(&client, "default", "before", 1).await,
        ["10.0.0.0"]
    );

    let (index, standby) = if leader == "ctl-a" {
        (0, "ctl-b")
    } else {
        (1, "ctl-a")
    };
    let other = &procs[1 - index];
    for path in ["/healthz", "/readyz"] {
        let (code, _) = wait_for(
            &format!("{path} on the standby"),
            Duration::from_secs(5),
            || async { other.get(path) },
        )
        .await;
        assert_eq!(code, 200, "{path} on the standby");
    }
    // The gauges follow the status writes of the same pass.
    let assigned =
        "ironlb_controller_pool_addresses{pool=\"lan\",family=\"ipv4\",state=\"assigned\"} 1";
    let metrics = wait_for(
        "the leader's metrics to count the address",
        Duration::from_secs(5),
        || async {
            procs[index]
                .get("/metrics")
                .map(|(_, body)| body)
                .filter(|b| b.contains(assigned))
        },
    )
    .await;
    assert!(metrics.contains("ironlb_controller_leader 1"), "{metrics}");

    let mut killed = procs.remove(index);
    killed.child.kill().expect("SIGKILL the leader");
    killed.child.wait().expect("reap");
    assert_eq!(killed.identity, leader);

    create_service(&client, Svc::lb("default", "after").build()).await;
    let survivor = &procs[0];
    let ips = wait_for(
        "the standby to allocate",
        Duration::from_secs(20),
        || async {
            ingress_ips(&client, "default", "after")
                .await
                .filter(|i| !i.is_empty())
        },
    )
    .await;
    assert_eq!(
        ips,
        ["10.0.0.1"],
        "log of {}:\n{}",
        survivor.identity,
        survivor.log()
    );
    assert_eq!(holder(&client).await.as_deref(), Some(standby));
    assert_eq!(
        ingress_ips(&client, "default", "before").await.unwrap(),
        ["10.0.0.0"],
        "nothing moved"
    );
}
