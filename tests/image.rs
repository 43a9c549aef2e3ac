//! The container image, built as `scripts/build-image` builds it here
//! (Debian root filesystem, OCI layout, no Docker): `ironlb --version` and
//! `nft --version` run inside it, and its config is what `deploy/` expects
//! (the entrypoint, a non-root user for the controller).

#[path = "support/netns.rs"]
mod netns;

use std::process::Command;

/// Why the image can't be built here, or `None`.
fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("building the image's root filesystem needs root".into());
    }
    ["mmdebstrap", "umoci", "skopeo"]
        .iter()
        .find(|cmd| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {cmd}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|cmd| format!("{cmd} is not installed (./scripts/test installs it)"))
}

#[test]
fn the_image_runs_ironlb_and_nft_and_says_who_runs_it() {
    if netns::skip("image", unavailable()) {
        return;
    }
    let out_dir = std::env::temp_dir().join(format!("ironlb-image-{}", std::process::id()));
    let tag = format!("test-{}", std::process::id());
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-image"))
        .args([
            "--binary",
            env!("CARGO_BIN_EXE_ironlb"),
            "--tag",
            &tag,
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .expect("scripts/build-image");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let archive = out_dir.join(format!("ironlb-{tag}.oci.tar"));
    let inspect = Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci-archive:{}:{tag}", archive.display()))
        .output()
        .expect("skopeo");
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("ironlb {}", env!("CARGO_PKG_VERSION"))),
        "ironlb --version inside the image:\n{said}"
    );
    assert!(
        said.contains("nftables v"),
        "nft --version inside the image:\n{said}"
    );
    let config: serde_json::Value = serde_json::from_slice(&inspect.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&inspect.stderr)));
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/ironlb"])
    );
    assert_eq!(
        config["config"]["User"], "65532:65532",
        "the controller runs as non-root"
    );
    assert_eq!(config["os"], "linux");
}
