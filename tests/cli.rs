//! The `ironlb` command line, run as a user would run it.

use std::process::{Command, Output};

fn ironlb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .args(args)
        .output()
        .expect("run ironlb")
}

#[test]
fn version_prints_the_package_version() {
    let out = ironlb(&["version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("ironlb {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn crds_prints_one_document_per_crd() {
    let out = ironlb(&["crds"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(
        text.lines().filter(|l| *l == "---").count(),
        ironlb::api::crds().len()
    );
    for kind in [
        "IPAddressPool",
        "L2Advertisement",
        "ServiceL2Status",
        "BGPPeer",
        "BGPAdvertisement",
        "BFDProfile",
        "Community",
        "BGPSessionState",
        "ServiceBGPStatus",
    ] {
        assert!(text.contains(&format!("kind: {kind}\n")), "{kind}");
    }
}

#[test]
fn an_unknown_subcommand_fails_with_usage() {
    let out = ironlb(&["frobnicate"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unrecognized subcommand 'frobnicate'"),
        "{err}"
    );
    assert!(err.contains("Usage: ironlb"), "{err}");
}
