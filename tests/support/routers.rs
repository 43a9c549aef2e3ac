//! Real BGP routers in a lab namespace: FRR (zebra, bfdd, bgpd) run in the
//! foreground, so the lab kills them with everything else.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::netns::Lab;

/// Whether FRR's daemons are installed.
pub fn frr_installed() -> bool {
    Path::new("/usr/lib/frr/bgpd").exists()
}

/// An FRR instance in a namespace.
pub struct Frr {
    /// Its namespace.
    pub ns: String,
    /// Its files: configuration, sockets, `frr.log`.
    pub dir: PathBuf,
}

impl Frr {
    /// Starts zebra, bfdd and bgpd in `ns` with `config` (after `hostname`
    /// and `log file` lines), and waits until bgpd answers.
    pub fn start(lab: &mut Lab, ns: &str, config: &str) -> Self {
        let dir = lab.dir().join(format!("frr-{ns}"));
        std::fs::create_dir_all(&dir).expect("frr directory");
        let conf = dir.join("frr.conf");
        std::fs::write(
            &conf,
            format!(
                "hostname r\nlog file {}\n!\n{config}",
                dir.join("frr.log").display()
            ),
        )
        .expect("frr.conf");
        let p = dir.to_str().expect("utf-8 path").to_string();
        std::process::Command::new("chown")
            .args(["-R", "frr:frr", &p])
            .status()
            .expect("chown");
        let conf = conf.to_str().expect("utf-8 path").to_string();
        let zserv = format!("{p}/zserv.api");
        for daemon in ["zebra", "bfdd", "bgpd"] {
            let log = dir.join(format!("{daemon}.out"));
            lab.spawn(
                ns,
                &format!("/usr/lib/frr/{daemon}"),
                &[
                    "-i",
                    &format!("{p}/{daemon}.pid"),
                    "-z",
                    &zserv,
                    "--vty_socket",
                    &p,
                    "-f",
                    &conf,
                    "-u",
                    "frr",
                    "-g",
                    "frr",
                ],
                &log,
            );
            if daemon == "zebra" {
                wait_until("zebra's socket", Duration::from_secs(10), || {
                    Path::new(&zserv).exists()
                });
            }
        }
        let frr = Self {
            ns: ns.to_string(),
            dir,
        };
        wait_until("bgpd's vty", Duration::from_secs(10), || {
            frr.json(lab, "show bgp summary json").is_some()
        });
        frr
    }

    /// The JSON `vtysh -c command` prints.
    pub fn json(&self, lab: &Lab, command: &str) -> Option<Value> {
        serde_json::from_slice(&self.vtysh(lab, command).stdout).ok()
    }

    /// Runs one vtysh command.
    pub fn vtysh(&self, lab: &Lab, command: &str) -> std::process::Output {
        let socket = self.dir.to_string_lossy();
        lab.exec(&self.ns, &["vtysh", "--vty_socket", &socket, "-c", command])
    }

    /// The neighbors with an established IPv4 session.
    pub fn established(&self, lab: &Lab) -> BTreeSet<String> {
        let Some(summary) = self.json(lab, "show bgp ipv4 unicast summary json") else {
            return BTreeSet::new();
        };
        summary["peers"]
            .as_object()
            .map(|peers| {
                peers
                    .iter()
                    .filter(|(_, p)| p["state"] == "Established")
                    .map(|(a, _)| a.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What FRR logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("frr.log")).unwrap_or_default()
    }
}

/// The next hops of `address` in `ns`'s kernel routing table.
pub fn next_hops(lab: &Lab, ns: &str, address: &str) -> BTreeSet<String> {
    let family = if address.contains(':') { "-6" } else { "-4" };
    let out = lab.exec(ns, &["ip", family, "-j", "route", "show", address]);
    let routes: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut hops = BTreeSet::new();
    for r in routes.as_array().into_iter().flatten() {
        if let Some(g) = r["gateway"].as_str() {
            hops.insert(g.to_string());
        }
        for n in r["nexthops"].as_array().into_iter().flatten() {
            if let Some(g) = n["gateway"].as_str() {
                hops.insert(g.to_string());
            }
        }
    }
    hops
}

/// Polls `f` until true, or panics naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
