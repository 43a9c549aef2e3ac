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
//! Services on the kernel path are forwarded here too: a `nat` chain sends
//! a new connection to a backend chosen at random (DNAT; connection
//! tracking carries the rest of it), keeping the client's address for
//! `Local` Services and masquerading for `Cluster` ones, as the user-space
//! forwarder connects from the node. A client outside the source ranges, or
//! a Service without a backend, is left alone: it reaches the input chain,
//! where no socket listens, and is refused (TCP reset, ICMP unreachable). A
//! named counter per Service counts what the `nat` chain sees: the first
//! packet of each connection or flow.
//!
//! The table is written whole with `nft -f -` (one atomic transaction, as
//! `nft` guarantees: the netlink crates for nftables are young or
//! unmaintained) and replaced whole on every change, so applying twice never
//! duplicates a rule and a crashed run's table is replaced at the next start.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

use ipnetwork::IpNetwork;

use super::plan::{Listener, Protocol};
use crate::ipam::ServiceKey;

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
    /// The listeners forwarded in the kernel (their ports are in `open`
    /// too).
    pub kernel: Vec<KernelRoute>,
}

/// A listener forwarded by the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    /// The Service.
    pub service: ServiceKey,
    /// The Service address and port.
    pub address: SocketAddr,
    /// The protocol.
    pub protocol: Protocol,
    /// Where connections go, one chosen at random per connection.
    pub backends: Vec<SocketAddr>,
    /// `Cluster` policy: the backend sees the node's address, so that its
    /// replies come back through the node whichever node it runs on.
    pub masquerade: bool,
    /// `loadBalancerSourceRanges`; empty: everyone.
    pub source_ranges: Vec<IpNetwork>,
}

impl KernelRoute {
    /// The route of `l`.
    pub fn of(l: &Listener) -> Self {
        Self {
            service: l.service.clone(),
            address: l.address,
            protocol: l.protocol,
            backends: l.backends.iter().map(|b| b.address).collect(),
            masquerade: !l.policy.local,
            source_ranges: l.policy.source_ranges.clone(),
        }
    }

    /// The chain `route_{i}`: clients outside the source ranges go on to the
    /// input chain (refused there), the others are counted in `counter` and
    /// sent to a backend at random.
    fn chain(&self, i: usize, counter: &str) -> String {
        let ip = if self.address.is_ipv4() { "ip" } else { "ip6" };
        let mut out = format!("\tchain route_{i} {{\n");
        if let Some(ranges) = self.admitted().filter(|r| !r.is_empty()) {
            out.push_str(&format!(
                "\t\t{ip} saddr != {{ {} }} return\n",
                ranges.join(", ")
            ));
        }
        let backends: Vec<String> = self
            .backends
            .iter()
            .enumerate()
            .map(|(n, b)| format!("{n} : {} . {}", b.ip(), b.port()))
            .collect();
        out.push_str(&format!(
            "\t\tcounter name \"{counter}\"\n\t\tmeta l4proto {} dnat {ip} to numgen random mod {} map {{ {} }}\n\t}}\n",
            protocol(self.protocol),
            backends.len(),
            backends.join(", ")
        ));
        out
    }

    /// Who may connect, of the address's family: `None` when nobody may
    /// (the ranges name only the other family).
    fn admitted(&self) -> Option<Vec<String>> {
        if self.source_ranges.is_empty() {
            return Some(Vec::new());
        }
        let ranges: Vec<String> = self
            .source_ranges
            .iter()
            .filter(|r| r.is_ipv4() == self.address.is_ipv4())
            .map(ToString::to_string)
            .collect();
        (!ranges.is_empty()).then_some(ranges)
    }
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
    declaration("set", name, kind, elements)
}

/// A set or map (`keyword`) declaration.
fn declaration(keyword: &str, name: &str, kind: &str, elements: &[String]) -> String {
    let mut out = format!("\t{keyword} {name} {{\n\t\ttype {kind}\n");
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
        out.push_str(&self.kernel_text());
        out.push_str(
            "\tchain input {\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tip daddr @addresses4 jump service_address\n\
             \t\tip6 daddr @addresses6 jump service_address\n\
             \t}\n\
             \tchain service_address {\n\
             \t\tip daddr . meta l4proto . th dport @services4 accept\n\
             \t\tip6 daddr . meta l4proto . th dport @services6 accept\n\
             \t\tmeta l4proto { icmp, icmpv6 } accept\n\
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

    /// The named counter of each Service forwarded in the kernel.
    pub fn counters(&self) -> BTreeMap<String, ServiceKey> {
        let services: BTreeSet<&ServiceKey> = self.kernel.iter().map(|k| &k.service).collect();
        services
            .into_iter()
            .enumerate()
            .map(|(i, s)| (format!("service_{i}"), s.clone()))
            .collect()
    }

    /// The kernel path's sets, chains and counters; nothing when no Service
    /// takes it, so a node without one registers no `nat` hook.
    fn kernel_text(&self) -> String {
        let routes: Vec<(usize, &KernelRoute)> = self
            .kernel
            .iter()
            .enumerate()
            .filter(|(_, k)| !k.backends.is_empty() && k.admitted().is_some())
            .collect();
        if routes.is_empty() {
            return String::new();
        }
        let counters: BTreeMap<ServiceKey, String> = self
            .counters()
            .into_iter()
            .map(|(name, service)| (service, name))
            .collect();
        let mut out = String::new();
        for name in counters.values() {
            out.push_str(&format!("\tcounter {name} {{\n\t}}\n"));
        }
        for (v4, family) in [(true, "4"), (false, "6")] {
            let addr = if v4 { "ipv4_addr" } else { "ipv6_addr" };
            let of_family = || {
                routes
                    .iter()
                    .filter(move |(_, k)| k.address.is_ipv4() == v4)
            };
            let jumps: Vec<String> = of_family()
                .map(|(i, k)| {
                    format!(
                        "{} . {} . {} : jump route_{i}",
                        k.address.ip(),
                        protocol(k.protocol),
                        k.address.port()
                    )
                })
                .collect();
            out.push_str(&declaration(
                "map",
                &format!("kernel{family}"),
                &format!("{addr} . inet_proto . inet_service : verdict"),
                &jumps,
            ));
            let masquerade: Vec<String> = of_family()
                .filter(|(_, k)| k.masquerade)
                .flat_map(|(_, k)| {
                    k.backends.iter().map(|b| {
                        format!(
                            "{} . {} . {} . {}",
                            k.address.ip(),
                            b.ip(),
                            protocol(k.protocol),
                            b.port()
                        )
                    })
                })
                .collect();
            out.push_str(&set(
                &format!("masquerade{family}"),
                &format!("{addr} . {addr} . inet_proto . inet_service"),
                &masquerade,
            ));
        }
        for (i, k) in &routes {
            out.push_str(&k.chain(*i, &counters[&k.service]));
        }
        // From the network, and from the node itself (host-network Pods).
        let lookup = "\t\tip daddr . meta l4proto . th dport vmap @kernel4\n\
                      \t\tip6 daddr . meta l4proto . th dport vmap @kernel6\n";
        out.push_str(&format!(
            "\tchain kernel_prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n{lookup}\t}}\n\
             \tchain kernel_output {{\n\
             \t\ttype nat hook output priority -100; policy accept;\n{lookup}\t}}\n\
             \tchain kernel_postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tct status dnat ct original ip daddr . ip daddr . meta l4proto . th dport @masquerade4 masquerade\n\
             \t\tct status dnat ct original ip6 daddr . ip6 daddr . meta l4proto . th dport @masquerade6 masquerade\n\
             \t}}\n"
        ));
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

/// The packets each named counter of the table has seen; empty when there
/// is no table. Blocks while `nft` runs (a few milliseconds).
pub fn counters() -> Result<BTreeMap<String, u64>, Error> {
    let out = Command::new("nft")
        .args(["-j", "list", "counters", "table", "inet", TABLE])
        .stdin(Stdio::null())
        .output()
        .map_err(not_started)?;
    if !out.status.success() {
        // No table (yet, or any more): nothing counted.
        return Ok(BTreeMap::new());
    }
    parse_counters(&out.stdout)
}

/// Reads `nft -j list counters`.
fn parse_counters(json: &[u8]) -> Result<BTreeMap<String, u64>, Error> {
    let doc: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| Error::Refused(format!("unreadable counter listing: {e}")))?;
    Ok(doc["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let c = item.get("counter")?;
            Some((c["name"].as_str()?.to_string(), c["packets"].as_u64()?))
        })
        .collect())
}

/// Why `nft` did not start: not installed, or another failure.
fn not_started(e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::Missing,
        _ => Error::Nft(e),
    }
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
        .map_err(not_started)?;
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
            kernel: Vec::new(),
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

    /// ironlb's image has no `/etc/protocols` (Debian's `netbase` is not
    /// essential), so `nft` may resolve no protocol name through it: the
    /// whole table, every chain included, is checked by `nft -c` with that
    /// file empty. Needs root (`nft -c` asks the kernel); elsewhere it says
    /// why it skips, and with `CI=true` it fails instead.
    #[test]
    fn the_table_needs_no_protocol_database() {
        let uid = Command::new("id").arg("-u").output();
        let why = if !uid.is_ok_and(|o| o.stdout.trim_ascii() == b"0") {
            Some("nft -c needs root")
        } else if Command::new("nft").arg("--version").output().is_err() {
            Some("nft is not installed")
        } else {
            None
        };
        if let Some(why) = why {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "the_table_needs_no_protocol_database cannot run in CI: {why}"
            );
            println!("skipping the_table_needs_no_protocol_database: {why}");
            return;
        }
        let mut kernel = route("web", "10.0.0.1:80", &["10.1.0.2:8080"], true);
        kernel.source_ranges = vec!["192.168.0.0/16".parse().unwrap()];
        let mut udp = route("dns", "[fd00::1]:53", &["[fd01::2]:53"], false);
        udp.protocol = Protocol::Udp;
        let rules = Ruleset {
            mark: Some(0x1b1b),
            open: [(
                "10.0.0.100".parse().unwrap(),
                [(Protocol::Tcp, 53), (Protocol::Udp, 53)].into(),
            )]
            .into(),
            kernel: vec![kernel, udp],
        };
        // A new table name: checking never touches a running speaker's.
        let text = rules.text().replace(&format!(" {TABLE}"), " ironlb_check");
        let mut child = Command::new("unshare")
            .args(["-m", "sh", "-c"])
            .arg("mount --bind /dev/null /etc/protocols && exec nft -c -f -")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft without /etc/protocols: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn route(service: &str, address: &str, backends: &[&str], masquerade: bool) -> KernelRoute {
        KernelRoute {
            service: ServiceKey::new("default", service),
            address: address.parse().unwrap(),
            protocol: Protocol::Tcp,
            backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
            masquerade,
            source_ranges: Vec::new(),
        }
    }

    #[test]
    fn kernel_routes_dnat_at_random_masquerade_only_cluster_and_count_per_service() {
        let mut local = route(
            "web",
            "10.0.0.1:80",
            &["10.1.0.2:8080", "10.1.0.3:8080"],
            false,
        );
        local.source_ranges = vec![
            "192.168.0.0/16".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ];
        let rules = Ruleset {
            kernel: vec![
                local,
                route("web", "10.0.0.1:443", &["10.1.0.2:8443"], true),
                route("db", "[fd00::1]:5432", &["[fd01::2]:5432"], true),
                route("empty", "10.0.0.2:80", &[], true),
            ],
            ..Default::default()
        };
        let text = rules.text();
        assert!(text.contains("counter service_0 {"), "{text}");
        assert_eq!(
            rules
                .counters()
                .into_values()
                .map(|s| s.name)
                .collect::<Vec<_>>(),
            ["db", "empty", "web"]
        );
        assert!(
            text.contains("elements = { 10.0.0.1 . tcp . 80 : jump route_0, 10.0.0.1 . tcp . 443 : jump route_1 }"),
            "{text}"
        );
        assert!(
            text.contains("ip saddr != { 192.168.0.0/16 } return\n\t\tcounter name \"service_2\"\n\t\tmeta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.1.0.2 . 8080, 1 : 10.1.0.3 . 8080 }"),
            "{text}"
        );
        assert!(
            text.contains("elements = { 10.0.0.1 . 10.1.0.2 . tcp . 8443 }"),
            "only the Cluster route masquerades: {text}"
        );
        assert!(
            text.contains(
                "meta l4proto tcp dnat ip6 to numgen random mod 1 map { 0 : fd01::2 . 5432 }"
            ),
            "{text}"
        );
        assert!(!text.contains("route_3"), "no backend, no route: {text}");
        let none = Ruleset::default().text();
        assert!(!none.contains("type nat"), "{none}");
    }

    #[test]
    fn ranges_of_the_other_family_only_admit_nobody() {
        let mut r = route("web", "10.0.0.1:80", &["10.1.0.2:8080"], true);
        r.source_ranges = vec!["fd00::/8".parse().unwrap()];
        let text = Ruleset {
            kernel: vec![r],
            ..Default::default()
        }
        .text();
        assert!(!text.contains("jump route_0"), "{text}");
    }

    #[test]
    fn counters_are_read_from_nfts_listing() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"family": "inet", "name": "service_0", "table": "ironlb", "handle": 5, "packets": 7, "bytes": 420}}]}"#;
        assert_eq!(
            parse_counters(json).unwrap(),
            [("service_0".to_string(), 7)].into()
        );
        let err = parse_counters(b"garbage").unwrap_err();
        assert!(
            err.to_string().contains("unreadable counter listing"),
            "{err}"
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
            .prop_map(|(mark, open)| Ruleset {
                mark,
                open,
                kernel: Vec::new(),
            })
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
