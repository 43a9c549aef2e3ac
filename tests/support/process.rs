//! `ironlb controller` as a separate process, as a Deployment runs it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

/// A controller process with leader election (Lease
/// `ironlb-system/ironlb-controller`, 3 s, renewed 1 s before expiry); killed on
/// drop.
pub struct ControllerProcess {
    /// The process.
    pub child: Child,
    /// Its identity in the Lease.
    pub identity: String,
    metrics_port: u16,
    log: PathBuf,
}

impl ControllerProcess {
    /// Starts `ironlb controller --kubeconfig kubeconfig … extra…`, its log in
    /// `dir`.
    pub fn spawn(kubeconfig: &Path, dir: &Path, identity: &str, extra: &[&str]) -> Self {
        let metrics_port = free_port();
        let log = dir.join(format!("{identity}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ironlb"))
            .args(["controller", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--identity", identity, "--lease-namespace", "ironlb-system"])
            .args([
                "--lease-duration-seconds",
                "3",
                "--lease-grace-seconds",
                "1",
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            // tracing writes to stdout; panics go to stderr.
            .stdout(Stdio::from(file.try_clone().expect("log file")))
            .stderr(file)
            .spawn()
            .expect("spawn ironlb controller");
        Self {
            child,
            identity: identity.into(),
            metrics_port,
            log,
        }
    }

    /// GET `path` from its metrics listener: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.metrics_port, path)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILLs it and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the controller");
        self.child.wait().expect("reap");
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A minimal HTTP/1.0 GET to loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
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

/// Who holds the controller's Lease.
pub async fn holder(client: &Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), "ironlb-system")
        .get_opt("ironlb-controller")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// A scratch directory, removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    /// A new, empty one under the temporary directory, named after `what`.
    pub fn new(what: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "ironlb-{what}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos()
        ));
        std::fs::create_dir_all(&path).expect("scratch directory");
        Self(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
