//! `ironlb interfaces` reads the real interfaces of a namespace over rtnetlink
//! and picks the ones that announce an address.

mod support;

use serde_json::Value;
use support::netns::Lab;

fn verdicts(lab: &Lab, ns: &str, args: &[&str]) -> Vec<(String, bool, Option<String>)> {
    let mut cmd = vec![env!("CARGO_BIN_EXE_ironlb"), "interfaces", "--json"];
    cmd.extend_from_slice(args);
    let out = lab.exec_ok(ns, &cmd);
    let rows: Vec<Value> = serde_json::from_str(&out).expect("JSON");
    rows.into_iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                r["announces"].as_bool().unwrap_or(false),
                r["reason"].as_str().map(String::from),
            )
        })
        .collect()
}

fn verdict<'a>(
    rows: &'a [(String, bool, Option<String>)],
    name: &str,
) -> &'a (String, bool, Option<String>) {
    rows.iter()
        .find(|r| r.0 == name)
        .unwrap_or_else(|| panic!("no interface {name} in {rows:?}"))
}

#[test]
fn the_bridge_announces_and_its_ports_do_not() {
    let Some(mut lab) = Lab::new("the_bridge_announces_and_its_ports_do_not") else {
        return;
    };
    let sw = lab.switch();
    lab.exec_ok(&sw, &["ip", "addr", "add", "10.77.0.1/24", "dev", "br0"]);
    let node = lab.namespace("node");
    lab.plug(&sw, &node, "p1", &["10.77.0.11/24"]);

    let rows = verdicts(&lab, &sw, &["--address", "10.77.0.100"]);
    assert!(verdict(&rows, "br0").1, "{rows:?}");
    let port = verdict(&rows, "p1");
    assert!(!port.1);
    assert_eq!(port.2.as_deref(), Some("no subnet of it holds the address"));
    assert_eq!(
        verdict(&rows, "lo").2.as_deref(),
        Some("no subnet of it holds the address")
    );

    // The node's eth0 is a veth: never chosen unless named.
    let rows = verdicts(&lab, &node, &["--address", "10.77.0.100"]);
    assert_eq!(
        verdict(&rows, "eth0").2.as_deref(),
        Some("it is a container or CNI link")
    );
    let rows = verdicts(
        &lab,
        &node,
        &["--address", "10.77.0.100", "--interface", "eth0"],
    );
    assert!(verdict(&rows, "eth0").1, "{rows:?}");
}

#[test]
fn a_down_interface_never_announces() {
    let Some(mut lab) = Lab::new("a_down_interface_never_announces") else {
        return;
    };
    let sw = lab.switch();
    let node = lab.namespace("node");
    lab.plug(&sw, &node, "p1", &["10.78.0.11/24"]);
    lab.exec_ok(&node, &["ip", "link", "set", "eth0", "down"]);
    let rows = verdicts(
        &lab,
        &node,
        &["--address", "10.78.0.100", "--interface", "eth0"],
    );
    assert_eq!(verdict(&rows, "eth0").2.as_deref(), Some("it is down"));
}
