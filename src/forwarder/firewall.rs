//! ironlb's nftables table (`inet ironlb`): the mark of transparent
//! connections, and the filter that lets only the Services' own ports and
//! protocols reach a Service address.
//!
//! With embedded forwarding a Service address sits on the node's loopback, so
//! every program of the node listening on `0.0.0.0` (sshd, the kubelet,
//! ironlb's own metrics) would answer on it too — on an address that is often
//! public, and that `loadBalancerSourceRanges` do not guard. The input chain
//! drops everything sent to a Service address except its Services' ports
//! (and ICMP, which path MTU discovery needs), as kube-proxy's IPVS mode
//! filters its `kube-ipvs0` addresses. Lookups go through sets, so the cost
//! per packet does not grow with the number of Services.
//!
//! The table is written whole with `nft -f -` (one atomic transaction, as
//! `nft` guarantees: the netlink crates for nftables are young or
//! unmaintained) and replaced whole on every change, so applying twice never
//! duplicates a rule and a crashed run's table is replaced at the next start.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use super::plan::Protocol;

/// The nftables table ironlb owns (family `inet`).
pub const TABLE: &str = "ironlb";

/// Failure to write the table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `nft` is not installed.
    #[error(
        "the nft command is not installed: the embedded forwarder needs it to keep the node's own \
         ports off Service addresses (Debian/Ubuntu: apt-get install nftables)"
    )]
    Missing,
    /// `nft` could not run.
    #[error("running nft: {0}")]
    Nft(#[source] std::io::Error),
    /// `nft` refused the ruleset.
    #[error("nft refused the ironlb table: {0}")]
    Refused(String),
}

/// What the table holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// The mark set on packets for transparent sockets, when `Local`
    /// Services need it.
    pub mark: Option<u32>,
    /// The Service addresses the forwarder serves, with the protocols and
    /// ports open on each: everything else sent to them is dropped.
    pub open: BTreeMap<IpAddr, BTreeSet<(Protocol, u16)>>,
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// A set declaration, with its elements when it has any (`nft` refuses an
/// empty `elements` list).
fn set(name: &str, kind: &str, elements: &[String]) -> String {
    let mut out = format!("\tset {name} {{\n\t\ttype {kind}\n");
    if !elements.is_empty() {
        out.push_str(&format!("\t\telements = {{ {} }}\n", elements.join(", ")));
    }
    out.push_str("\t}\n");
    out
}

impl Ruleset {
    /// The ruleset text for `nft -f -`.
    pub fn text(&self) -> String {
        let addresses = |v4: bool| -> Vec<String> {
            self.open
                .keys()
                .filter(|ip| ip.is_ipv4() == v4)
                .map(ToString::to_string)
                .collect()
        };
        let services = |v4: bool| -> Vec<String> {
            self.open
                .iter()
                .filter(|(ip, _)| ip.is_ipv4() == v4)
                .flat_map(|(ip, ports)| {
                    ports
                        .iter()
                        .map(move |(p, port)| format!("{ip} . {} . {port}", protocol(*p)))
                })
                .collect()
        };
        let mut out =
            format!("add table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
        out.push_str(&set("addresses4", "ipv4_addr", &addresses(true)));
        out.push_str(&set("addresses6", "ipv6_addr", &addresses(false)));
        out.push_str(&set(
            "services4",
            "ipv4_addr . inet_proto . inet_service",
            &services(true),
        ));
        out.push_str(&set(
            "services6",
            "ipv6_addr . inet_proto . inet_service",
            &services(false),
        ));
        out.push_str(
            "\tchain input {\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tip daddr @addresses4 jump service_address\n\
             \t\tip6 daddr @addresses6 jump service_address\n\
             \t}\n\
             \tchain service_address {\n\
             \t\tip daddr . meta l4proto . th dport @services4 accept\n\
             \t\tip6 daddr . meta l4proto . th dport @services6 accept\n\
             \t\tmeta l4proto { icmp, ipv6-icmp } accept\n\
             \t\tdrop\n\
             \t}\n",
        );
        if let Some(mark) = self.mark {
            out.push_str(&format!(
                "\tchain prerouting {{\n\
                 \t\ttype filter hook prerouting priority mangle; policy accept;\n\
                 \t\tmeta l4proto {{ tcp, udp }} socket transparent 1 meta mark set {mark:#x}\n\
                 \t}}\n"
            ));
        }
        out.push_str("}\n");
        out
    }
}

/// Writes the table (replacing what was there).
pub async fn apply(ruleset: &Ruleset) -> Result<(), Error> {
    nft(ruleset.text()).await
}

/// Removes the table.
pub async fn remove() -> Result<(), Error> {
    nft(format!(
        "add table inet {TABLE}\ndelete table inet {TABLE}\n"
    ))
    .await
}

/// Runs `nft` on the blocking pool: it forks and waits.
async fn nft(script: String) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || nft_blocking(&script))
        .await
        .map_err(|e| Error::Nft(std::io::Error::other(e)))?
}

fn nft_blocking(script: &str) -> Result<(), Error> {
    run_nft("nft", script)
}

/// Runs `program` (nft) with `script` on its input.
fn run_nft(program: &str, script: &str) -> Result<(), Error> {
    let mut child = Command::new(program)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Missing,
            _ => Error::Nft(e),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(Error::Nft)?;
    }
    let out = child.wait_with_output().map_err(Error::Nft)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_missing_nft_is_named_with_its_package() {
        let err = run_nft("/nonexistent/nft", "").unwrap_err();
        assert!(matches!(err, Error::Missing), "{err:?}");
        let said = err.to_string();
        assert!(
            said.contains("nft command is not installed")
                && said.contains("apt-get install nftables"),
            "{said}"
        );
    }

    #[test]
    fn the_table_opens_each_port_of_each_address_and_marks_only_when_asked() {
        let v4: IpAddr = "10.0.0.100".parse().unwrap();
        let v6: IpAddr = "fd00::100".parse().unwrap();
        let rules = Ruleset {
            mark: None,
            open: [
                (v4, [(Protocol::Tcp, 53), (Protocol::Udp, 53)].into()),
                (v6, [(Protocol::Tcp, 443)].into()),
            ]
            .into(),
        };
        let text = rules.text();
        assert!(text.starts_with("add table inet ironlb\ndelete table inet ironlb\n"));
        assert!(
            text.contains("elements = { 10.0.0.100 . tcp . 53, 10.0.0.100 . udp . 53 }"),
            "{text}"
        );
        assert!(
            text.contains("elements = { fd00::100 . tcp . 443 }"),
            "{text}"
        );
        assert!(text.contains("elements = { 10.0.0.100 }"), "{text}");
        assert!(!text.contains("socket transparent"), "{text}");
        let marked = Ruleset {
            mark: Some(0x1b1b),
            ..Default::default()
        };
        let text = marked.text();
        assert!(text.contains("meta mark set 0x1b1b"), "{text}");
        assert!(
            !text.contains("elements"),
            "empty sets have no elements list: {text}"
        );
    }

    fn ruleset() -> impl Strategy<Value = Ruleset> {
        let address = prop_oneof![
            any::<u32>().prop_map(|n| IpAddr::from(std::net::Ipv4Addr::from(n))),
            any::<u128>().prop_map(|n| IpAddr::from(std::net::Ipv6Addr::from(n))),
        ];
        let ports = proptest::collection::btree_set(
            (
                prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
                any::<u16>(),
            ),
            0..4,
        );
        (
            proptest::option::of(any::<u32>()),
            proptest::collection::btree_map(address, ports, 0..6),
        )
            .prop_map(|(mark, open)| Ruleset { mark, open })
    }

    proptest! {
        /// Every open port of every address is one element of its family's
        /// set, every address is in its family's address set, and nothing
        /// else is.
        #[test]
        fn every_open_port_is_an_element_and_nothing_else(rules in ruleset()) {
            let text = rules.text();
            let elements: Vec<&str> = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("elements = { "))
                .flat_map(|l| l.trim_end_matches(" }").split(", "))
                .collect();
            let mut want: Vec<String> = rules.open.keys().map(ToString::to_string).collect();
            for (ip, ports) in &rules.open {
                for (p, port) in ports {
                    want.push(format!("{ip} . {} . {port}", protocol(*p)));
                }
            }
            let mut got: Vec<String> = elements.iter().map(|e| e.to_string()).collect();
            got.sort();
            want.sort();
            prop_assert_eq!(got, want);
            prop_assert_eq!(text.contains("socket transparent"), rules.mark.is_some());
        }
    }
}
