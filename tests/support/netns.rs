//! The namespace lab the tests and benchmarks share (`ironlb-lab`), with
//! what only ironlb's own tests need: starting the `ironlb` binary built for
//! them as a speaker, and the owner every speaker computes.

#![allow(dead_code, unused_imports)] // shared by tests and benches, each using a part

pub use ironlb_lab::{Lab, bind_in_namespace, in_netns, relay, skip, unavailable};

/// Starting speakers from the `ironlb` binary this test was built with.
pub trait Speakers {
    /// Starts `ironlb speaker --static` in `ns` as `node-{i}` (1 to 3) of a
    /// three-node group whose members gossip on `{subnet}.1{i}:7946`,
    /// announcing `addresses` on `eth0`. Its configuration and log go to
    /// [`Lab::dir`].
    fn start_speaker(&mut self, ns: &str, i: usize, subnet: &str, addresses: &[&str]) -> usize;

    /// The static configuration [`Speakers::start_speaker`] writes, with
    /// `extra` (YAML, e.g. a `services:` block) appended.
    fn speaker_config(&self, i: usize, subnet: &str, addresses: &[&str], extra: &str) -> String;

    /// Where node `i`'s static configuration lives; the speaker reloads it
    /// when it changes.
    fn speaker_config_path(&self, i: usize) -> std::path::PathBuf;

    /// Starts `ironlb speaker --static` in `ns` as `node-{i}` with `config`.
    fn start_speaker_with(&mut self, ns: &str, i: usize, config: &str) -> usize;

    /// Starts `ironlb speaker` in cluster mode in `ns` as `node-{i}`,
    /// gossiping on `{subnet}.1{i}:7946` and reading the cluster through
    /// `kubeconfig` (peers found at the Nodes' addresses). The gossip secret
    /// is written to [`Lab::dir`]; the log goes to `node-{i}.log` there.
    fn start_cluster_speaker(
        &mut self,
        ns: &str,
        i: usize,
        subnet: &str,
        kubeconfig: &std::path::Path,
    ) -> usize;
}

impl Speakers for Lab {
    fn start_speaker(&mut self, ns: &str, i: usize, subnet: &str, addresses: &[&str]) -> usize {
        let config = self.speaker_config(i, subnet, addresses, "");
        self.start_speaker_with(ns, i, &config)
    }

    fn speaker_config(&self, i: usize, subnet: &str, addresses: &[&str], extra: &str) -> String {
        let seeds: Vec<String> = (1..=3)
            .filter(|j| *j != i)
            .map(|j| format!("{subnet}.1{j}:7946"))
            .collect();
        let mut config = format!(
            "node: node-{i}\ngossip:\n  listen: {subnet}.1{i}:7946\n  seeds: [{}]\n  secret: lab-gossip-secret\naddresses:\n",
            seeds.join(", ")
        );
        for a in addresses {
            config.push_str(&format!("  - address: {a}\n    interfaces: [eth0]\n"));
        }
        config.push_str(extra);
        config
    }

    fn speaker_config_path(&self, i: usize) -> std::path::PathBuf {
        self.dir().join(format!("node-{i}.yaml"))
    }

    fn start_speaker_with(&mut self, ns: &str, i: usize, config: &str) -> usize {
        let path = self.speaker_config_path(i);
        std::fs::write(&path, config).expect("write speaker config");
        let log = self.dir().join(format!("node-{i}.log"));
        self.spawn(
            ns,
            env!("CARGO_BIN_EXE_ironlb"),
            &["speaker", "--static", path.to_str().expect("utf-8 path")],
            &log,
        )
    }

    fn start_cluster_speaker(
        &mut self,
        ns: &str,
        i: usize,
        subnet: &str,
        kubeconfig: &std::path::Path,
    ) -> usize {
        let secret = self.dir().join("secret");
        // Written once: rewriting it for the next node could truncate it under
        // a speaker that is reading it (which then sees an empty secret).
        if !secret.exists() {
            std::fs::write(&secret, "cluster-lab-secret\n").expect("write gossip secret");
        }
        let log = self.dir().join(format!("node-{i}.log"));
        self.spawn(
            ns,
            env!("CARGO_BIN_EXE_ironlb"),
            &[
                "speaker",
                "--kubeconfig",
                kubeconfig.to_str().expect("utf-8 path"),
                "--node",
                &format!("node-{i}"),
                "--gossip-listen",
                &format!("{subnet}.1{i}:7946"),
                "--gossip-secret-file",
                secret.to_str().expect("utf-8 path"),
            ],
            &log,
        )
    }
}

/// The node that owns `address` when `alive` are the live speakers and
/// nothing else constrains it: what every speaker computes.
pub fn expected_owner(alive: &[&str], address: &str) -> String {
    use ironlb::election::{self, Constraints, Node};
    let nodes: Vec<Node> = alive
        .iter()
        .map(|n| Node {
            name: n.to_string(),
            labels: Default::default(),
            alive: true,
            network_unavailable: false,
            cannot_serve: Default::default(),
        })
        .collect();
    let ip: std::net::IpAddr = address.parse().expect("address");
    election::owner(ip, &nodes, &Constraints::default())
        .expect("an owner")
        .name
        .clone()
}
