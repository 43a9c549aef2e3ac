//! Allocator benchmark: `cargo bench --bench ipam`.
//!
//! Allocates 100,000 Services from one pool and prints ns per allocation and
//! memory. Each case runs in a child process of its own so that its peak RSS is
//! its own. Not a test: the figures depend on the machine.

use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use ironlb::ipam::{AllocErrorKind, Allocator, Family, FamilyPolicy, PoolSpec, Protocol, Service};

const SERVICES: usize = 100_000;

struct Case {
    name: &'static str,
    about: &'static str,
    pool: &'static str,
    family: Family,
    /// Services come in TCP/UDP pairs sharing one address under a per-pair key.
    paired: bool,
}

const CASES: [Case; 3] = [
    Case {
        name: "v4_16",
        about: "IPv4 /16: 65,536 fit, the rest are refused as exhausted",
        pool: "10.0.0.0/16",
        family: Family::V4,
        paired: false,
    },
    Case {
        name: "v6_64",
        about: "IPv6 /64",
        pool: "fd00:1:2:3::/64",
        family: Family::V6,
        paired: false,
    },
    Case {
        name: "v4_16_shared",
        about: "IPv4 /16, TCP/UDP pairs sharing an address",
        pool: "10.0.0.0/16",
        family: Family::V4,
        paired: true,
    },
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let name = args.get(i + 1).expect("--case NAME");
        let case = CASES.iter().find(|c| c.name == name).expect("known case");
        run_case(case);
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    println!("ipam: {SERVICES} Services per case, each case in a fresh process\n");
    println!(
        "{:<14} {:>9} {:>9} {:>12} {:>12} {:>14} {:>13}  case",
        "case", "assigned", "refused", "ns/op(all)", "ns/op(ok)", "allocator_MiB", "peak_rss_MiB"
    );
    let mut summary = Vec::new();
    for case in &CASES {
        let out = Command::new(&exe)
            .args(["--case", case.name])
            .output()
            .expect("run case");
        assert!(
            out.status.success(),
            "case {} failed: {}",
            case.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).expect("utf-8");
        let fields: Vec<&str> = line.split_whitespace().collect();
        println!(
            "{:<14} {:>9} {:>9} {:>12} {:>12} {:>14} {:>13}  {}",
            case.name, fields[0], fields[1], fields[2], fields[3], fields[4], fields[5], case.about
        );
        summary.push(format!("{}_ns_per_op={}", case.name, fields[2]));
    }
    println!("\nipam {}", summary.join(" "));
}

fn run_case(case: &Case) {
    let services: Vec<Service> = (0..SERVICES)
        .map(|i| {
            let svc = Service::new("bench", &format!("svc-{i}"))
                .families(FamilyPolicy::SingleStack, &[case.family]);
            if !case.paired {
                return svc.port(Protocol::Tcp, 80);
            }
            let protocol = if i % 2 == 0 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            };
            svc.sharing(&format!("pair-{}", i / 2)).port(protocol, 53)
        })
        .collect();
    let (mut alloc, errors) = Allocator::new(&[PoolSpec::new("bench", &[case.pool])]);
    assert!(errors.is_empty());
    let rss_before = rss_kib("VmRSS");

    let mut ok_nanos = 0u128;
    let mut assigned = 0usize;
    let mut refused = 0usize;
    let start = Instant::now();
    for svc in &services {
        let t = Instant::now();
        match black_box(alloc.allocate(svc)) {
            Ok(_) => {
                ok_nanos += t.elapsed().as_nanos();
                assigned += 1;
            }
            Err(e) => {
                assert!(matches!(e.kind, AllocErrorKind::Exhausted { .. }), "{e}");
                refused += 1;
            }
        }
    }
    let all_nanos = start.elapsed().as_nanos();
    let allocator_mib = rss_kib("VmRSS").saturating_sub(rss_before) as f64 / 1024.0;
    let peak_mib = rss_kib("VmHWM") as f64 / 1024.0;
    black_box(&alloc);
    println!(
        "{assigned} {refused} {:.0} {:.0} {allocator_mib:.1} {peak_mib:.1}",
        all_nanos as f64 / SERVICES as f64,
        ok_nanos as f64 / assigned.max(1) as f64,
    );
}

/// A field of /proc/self/status, in KiB.
fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field present")
}
