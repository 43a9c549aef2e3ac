//! What a user applies: `deploy/` is complete and consistent, validates
//! offline against the Kubernetes API schemas and against ironlb's own CRD
//! schemas, and the Vagrantfile is valid.

#[path = "support/netns.rs"]
mod netns;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("deploy/ listing")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Runs `program` with `args` in `dir`; fails the test with its output when
/// it fails.
fn assert_runs<S: AsRef<std::ffi::OsStr>>(
    program: impl AsRef<std::ffi::OsStr>,
    args: &[S],
    dir: &Path,
) {
    let out = Command::new(program.as_ref())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{:?}: {e}", program.as_ref()));
    assert!(
        out.status.success(),
        "{:?}: {}{}",
        program.as_ref(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Python that has kubernetes-validate: $IRONLB_PYTHON, the test command's
/// virtualenv, or python3.
fn python() -> Option<String> {
    let candidates = [
        std::env::var("IRONLB_PYTHON").ok(),
        Some(
            root()
                .join("target/pyenv/bin/python")
                .to_string_lossy()
                .into_owned(),
        ),
        Some("python3".to_string()),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .args(["-c", "import kubernetes_validate, jsonschema, yaml"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn validate(python: &str, files: &[PathBuf]) -> std::process::Output {
    Command::new(python)
        .arg(root().join("tests/manifests/validate.py"))
        .arg(root().join("crds/ironlb.yaml"))
        .arg("1.33.0")
        .args(files)
        .output()
        .expect("running the validator")
}

#[test]
fn deploy_crds_are_what_ironlb_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .arg("crds")
        .output()
        .unwrap();
    let deployed = std::fs::read_to_string(root().join("deploy/base/crds.yaml")).unwrap();
    assert!(
        deployed == String::from_utf8_lossy(&out.stdout),
        "deploy/base/crds.yaml is stale: cargo run -- crds > deploy/base/crds.yaml"
    );
}

#[test]
fn the_kustomization_lists_every_manifest_and_one_image() {
    let deploy = root().join("deploy/base");
    let k = std::fs::read_to_string(deploy.join("kustomization.yaml")).unwrap();
    let listed: Vec<String> = k
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|l| l.ends_with(".yaml"))
        .map(str::to_string)
        .collect();
    let present: Vec<String> = yaml_files(&deploy)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| n != "kustomization.yaml")
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        sorted, present,
        "kustomization.yaml resources vs files in deploy/base/"
    );
    for f in ["controller.yaml", "speaker.yaml"] {
        let text = std::fs::read_to_string(deploy.join(f)).unwrap();
        assert!(text.contains("image: ghcr.io/ironlb/ironlb:"), "{f}");
    }
    assert!(k.contains("- name: ghcr.io/ironlb/ironlb"));
}

/// `$(POD_IP):7947` is no socket address when the pod IP is IPv6: the
/// DaemonSet passes the address and the port apart.
#[test]
fn the_speaker_gets_its_gossip_address_and_port_apart_for_ipv6_pods() {
    let text = std::fs::read_to_string(root().join("deploy/base/speaker.yaml")).unwrap();
    assert!(
        !text.contains("$(POD_IP):"),
        "no address:port glued in the manifest"
    );
    let env: Vec<&str> = text.lines().map(str::trim).collect();
    let value_of = |name: &str| {
        let i = env
            .iter()
            .position(|l| *l == format!("- name: {name}"))
            .unwrap_or_else(|| panic!("{name} is set"));
        env[i + 1].to_string()
    };
    assert_eq!(value_of("GOSSIP_ADDRESS"), "value: $(POD_IP)");
    assert_eq!(value_of("GOSSIP_PORT"), "value: \"7947\"");
    // The binary accepts what the DaemonSet gives an IPv6 pod: it fails on the
    // missing secret file, past the address.
    let out = Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .args(["speaker", "--kubeconfig", "/nonexistent"])
        .env("GOSSIP_ADDRESS", "fd00::5")
        .env("GOSSIP_PORT", "7947")
        .env_remove("GOSSIP_LISTEN")
        .env_remove("GOSSIP_SECRET_FILE")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("--gossip-secret-file"), "{said}");
    let out = Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .args(["speaker", "--kubeconfig", "/nonexistent"])
        .env("GOSSIP_ADDRESS", "fd00::5:7947:1:2:3:4:5")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("GOSSIP_ADDRESS") || said.contains("gossip-address"),
        "{said}"
    );
}

#[test]
fn every_manifest_validates_against_the_schemas_and_a_broken_one_does_not() {
    let Some(python) = python() else {
        netns::skip(
            "manifests",
            Some(
                "no Python with kubernetes-validate (./scripts/test installs it in target/pyenv)"
                    .into(),
            ),
        );
        return;
    };
    let mut files: Vec<PathBuf> = [
        "deploy/base",
        "deploy/components/gateway",
        "deploy/components/bgp",
        "deploy/examples",
    ]
    .iter()
    .flat_map(|d| yaml_files(&root().join(d)))
    .filter(|p| !p.ends_with("kustomization.yaml"))
    .collect();
    files.sort();
    let out = validate(&python, &files);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("ok      "), "{report}");
    assert!(!report.contains("INVALID"), "{report}");

    let dir = std::env::temp_dir().join(format!("ironlb-manifests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: ironlb.dev/v1alpha1\nkind: IPAddressPool\nmetadata: {name: x}\nspec: {adresses: [10.0.0.0/24]}\n\
         ---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec: {selector: {}, template: {spec: {hostNetwrok: true}}}\n",
    )
    .unwrap();
    let out = validate(&python, &[bad]);
    let report = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success(), "{report}");
    assert_eq!(report.matches("INVALID").count(), 2, "{report}");
}

#[test]
fn the_vagrantfile_is_valid() {
    let ok = Command::new("vagrant").arg("--version").output();
    if !ok.is_ok_and(|o| o.status.success()) {
        netns::skip(
            "vagrant",
            Some("vagrant is not installed (./scripts/test installs it)".into()),
        );
        return;
    }
    assert_runs(
        "vagrant",
        &["validate", "--ignore-provider"],
        &root().join("vagrant"),
    );
}

/// An upgrade runs the new speaker beside the old one on each node so it can
/// take the old one's sockets: the DaemonSet surges one pod and never takes
/// one away first, declares no host ports (the scheduler would keep the surge
/// pod off the node), shares the hand-over socket's directory, and gives the
/// old pod time to drain.
#[test]
fn the_speaker_daemonset_upgrades_by_handing_sockets_over() {
    let text = std::fs::read_to_string(root().join("deploy/base/speaker.yaml")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for want in [
        "maxSurge: 1",
        "maxUnavailable: 0",
        "value: /run/ironlb/handover.sock",
        "mountPath: /run/ironlb",
        "path: /run/ironlb",
    ] {
        assert!(lines.contains(&want), "speaker.yaml lacks {want:?}");
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("containerPort:") || l.starts_with("hostPort:")),
        "host ports keep the surge pod off the node"
    );
    let grace: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("terminationGracePeriodSeconds: "))
        .and_then(|v| v.parse().ok())
        .expect("terminationGracePeriodSeconds");
    let drain = ironlb::forwarder::Settings::default().drain.as_secs();
    assert!(
        grace > drain,
        "grace {grace} s must outlast the {drain} s drain"
    );
}

/// The release workflow (image, signatures, CLI assets) is valid GitHub
/// Actions, as actionlint reads it (with shellcheck on its scripts when
/// that is installed).
#[test]
fn the_workflows_pass_actionlint() {
    let actionlint = root().join("target/pyenv/bin/actionlint");
    if !actionlint.exists() {
        netns::skip(
            "actionlint",
            Some("actionlint is not installed (./scripts/test installs it in target/pyenv)".into()),
        );
        return;
    }
    let workflows = yaml_files(&root().join(".github/workflows"));
    assert!(!workflows.is_empty(), "no workflow in .github/workflows");
    assert_runs(&actionlint, &workflows, &root());
}

/// The monitoring component's alerts are rules Prometheus accepts, and each
/// fires on the series that should raise it, after its `for`, and on no
/// other (`promtool test rules`, tests/monitoring/alerts.test.yaml).
#[test]
fn the_alerts_pass_promtool_and_fire_when_they_should() {
    let have = Command::new("promtool").arg("--version").output();
    if !have.is_ok_and(|o| o.status.success()) {
        netns::skip(
            "alerts",
            Some("promtool is not installed (./scripts/test installs Debian's prometheus)".into()),
        );
        return;
    }
    for args in [
        [
            "check",
            "rules",
            "deploy/components/monitoring/ironlb.rules.yaml",
        ],
        ["test", "rules", "tests/monitoring/alerts.test.yaml"],
    ] {
        assert_runs("promtool", &args, &root());
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/components/monitoring/ironlb-dashboard.json"))
            .unwrap(),
    )
    .expect("the dashboard is JSON");
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(exprs.len() >= 9, "{exprs:?}");
    assert!(exprs.iter().all(|e| e.contains("ironlb_")), "{exprs:?}");
}
