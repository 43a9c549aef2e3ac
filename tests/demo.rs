//! `ironlb demo`, run as a newcomer would (non-interactively): its summary
//! names the real client address at the backend and a failover time, and it
//! leaves nothing behind — also when interrupted with Ctrl-C.

#[path = "support/netns.rs"]
mod netns;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Why the demo can't run here, or `None`.
fn unavailable() -> Option<String> {
    netns::unavailable().or_else(|| {
        let nginx = Command::new("sh").args(["-c", "command -v nginx"]).output();
        (!nginx.is_ok_and(|o| o.status.success()))
            .then(|| "nginx is not installed (./scripts/test installs it)".into())
    })
}

fn skip(test: &str) -> bool {
    netns::skip(test, unavailable())
}

fn namespaces_with(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{prefix}-")))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_demo_shows_the_client_address_and_a_failover_and_cleans_up() {
    if skip("demo") {
        return;
    }
    let prefix = format!("ilbd{}", std::process::id());
    let out = Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .args(["demo", "--no-install", "--prefix", &prefix])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in 1..=7 {
        assert!(
            text.contains(&format!("[{n}/7] ")),
            "step {n} missing:\n{text}"
        );
    }
    let summary = text
        .lines()
        .find(|l| l.starts_with("summary: "))
        .unwrap_or_else(|| panic!("no summary:\n{text}"));
    let field = |k: &str| {
        summary
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing: {summary}"))
            .to_string()
    };
    assert_eq!(field("backend_saw"), "10.99.0.2", "{summary}");
    assert_eq!(field("udp_echo"), "ok", "{summary}");
    assert!(field("failover_ms").parse::<u64>().is_ok(), "{summary}");
    assert_ne!(field("owner"), field("new_owner"), "{summary}");
    assert!(
        namespaces_with(&prefix).is_empty(),
        "namespaces left behind"
    );
}

#[test]
fn an_interrupted_demo_cleans_up() {
    if skip("demo_interrupted") {
        return;
    }
    let prefix = format!("ilbi{}", std::process::id());
    let mut child = Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .args(["demo", "--no-install", "--prefix", &prefix])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    // Interrupt once the speakers are starting: the lab is at its fullest.
    for line in lines.by_ref() {
        if line.unwrap().starts_with("[3/7]") {
            break;
        }
    }
    assert!(!namespaces_with(&prefix).is_empty());
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .output();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "an interrupted demo reports failure");
    assert!(
        namespaces_with(&prefix).is_empty(),
        "namespaces left behind: {:?}",
        namespaces_with(&prefix)
    );
    assert!(!std::path::Path::new(&std::env::temp_dir().join(&prefix)).exists());
}

#[test]
fn the_bgp_demo_routes_through_every_node_and_bfd_takes_a_cut_node_out() {
    if skip("demo_bgp") {
        return;
    }
    if !std::path::Path::new("/usr/lib/frr/bgpd").exists() {
        netns::skip(
            "demo_bgp",
            Some("FRR is not installed (./scripts/test installs it)".into()),
        );
        return;
    }
    let prefix = format!("ilbb{}", std::process::id());
    let out = Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .args(["demo", "--bgp", "--no-install", "--prefix", &prefix])
        .output()
        .expect("run the demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("nexthop via 10.99.0.11")
            && text.contains("nexthop via 10.99.0.12")
            && text.contains("nexthop via 10.99.0.13"),
        "three paths:\n{text}"
    );
    let summary = text
        .lines()
        .find(|l| l.starts_with("summary: "))
        .unwrap_or_else(|| panic!("no summary:\n{text}"));
    assert!(
        summary.contains("backend_saw=10.99.1.2") && summary.contains("udp_echo=ok"),
        "{summary}"
    );
    let after = text
        .split("the router's table now:")
        .nth(1)
        .unwrap_or_default();
    assert!(
        !after.contains("10.99.0.13") && after.contains("10.99.0.11"),
        "node-3 withdrawn:\n{text}"
    );
    assert!(
        namespaces_with(&prefix).is_empty(),
        "namespaces left behind"
    );
}

/// Without nftables, which the speakers filter a Service address's ports
/// with, and told not to install anything, the demo stops before it starts
/// and names the package, rather than timing out without a reason.
#[test]
fn without_nft_the_demo_names_the_package_instead_of_timing_out() {
    if skip("demo-without-nft") {
        return;
    }
    let prefix = format!("ilbn{}", std::process::id());
    // A PATH with what the demo needs but nft.
    let bin = std::env::temp_dir().join(format!("{prefix}-bin"));
    std::fs::create_dir_all(&bin).unwrap();
    for cmd in ["sh", "ip", "nginx"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .output()
            .unwrap();
        let target = String::from_utf8_lossy(&found.stdout).trim().to_string();
        assert!(!target.is_empty(), "{cmd} is installed");
        let _ = std::os::unix::fs::symlink(target, bin.join(cmd));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .args(["demo", "--no-install", "--prefix", &prefix])
        .env("PATH", &bin)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&bin);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("the demo needs nftables")
            && said.contains("apt-get install")
            && said.contains("nftables"),
        "{said}"
    );
    assert!(
        namespaces_with(&prefix).is_empty(),
        "nothing is left behind"
    );
}
