//! `ironlb migrate metallb` on MetalLB's own examples (`tests/metallb/`):
//! every sample converts, the converted objects are ironlb objects that mean
//! what MetalLB's meant, and what cannot keep its meaning is refused naming
//! the object and the field.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ironlb::api::{
    BFDProfile, BGPAdvertisement, BGPPeer, Community, IPAddressPool, L2Advertisement,
};
use ironlb::migrate::{Fate, Line, Migration, Options, convert, kind_of, parse_objects};
use serde_json::{Value, json};

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/metallb/configsamples")
}

fn sample(name: &str) -> Vec<Value> {
    let path = samples_dir().join(name);
    let text = std::fs::read_to_string(&path).expect("read sample");
    parse_objects(&text, name).expect("parse sample")
}

fn options() -> Options {
    Options {
        namespace: "ironlb-system".into(),
        skip: BTreeSet::new(),
    }
}

fn migrate(objects: &[Value]) -> Migration {
    convert(objects, &options())
}

/// The one converted object of `kind`.
fn one<T: serde::de::DeserializeOwned>(m: &Migration, kind: &str) -> T {
    let found: Vec<&Value> = m.objects.iter().filter(|o| kind_of(o) == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} in {:#?}", m.objects);
    serde_json::from_value(found[0].clone())
        .unwrap_or_else(|e| panic!("{kind} is an ironlb object: {e}: {}", found[0]))
}

fn line<'a>(m: &'a Migration, field: &str) -> &'a Line {
    m.lines
        .iter()
        .find(|l| l.field == field)
        .unwrap_or_else(|| panic!("a line for {field} in:\n{}", m.table()))
}

#[test]
fn every_sample_but_the_vrf_one_converts_into_ironlb_objects() {
    let mut files: Vec<String> = std::fs::read_dir(samples_dir())
        .expect("samples")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 18, "MetalLB's configsamples/ has 18 files");
    for file in &files {
        let input = sample(file);
        let m = migrate(&input);
        let refused = m.refused();
        if file == "bgppeer_with_vrf.yaml" {
            assert_eq!(refused.len(), 1, "{file}:\n{}", m.table());
            continue;
        }
        assert!(refused.is_empty(), "{file}:\n{}", m.table());
        // Every field of every MetalLB object has its line.
        for object in input.iter().filter(|o| {
            o["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("metallb.io/"))
        }) {
            for field in object["spec"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
            {
                let name = format!("spec.{field}");
                assert!(
                    m.lines.iter().any(|l| l.field == name),
                    "{file}: no line for {name}:\n{}",
                    m.table()
                );
            }
        }
        // Each converted object is one of ironlb's, cluster-scoped.
        for object in &m.objects {
            assert_eq!(object["apiVersion"], "ironlb.dev/v1alpha1", "{file}");
            assert!(object["metadata"].get("namespace").is_none(), "{file}");
            let parsed = match kind_of(object).as_str() {
                "IPAddressPool" => serde_json::from_value::<IPAddressPool>(object.clone()).err(),
                "L2Advertisement" => {
                    serde_json::from_value::<L2Advertisement>(object.clone()).err()
                }
                "BGPAdvertisement" => {
                    serde_json::from_value::<BGPAdvertisement>(object.clone()).err()
                }
                "BGPPeer" => serde_json::from_value::<BGPPeer>(object.clone()).err(),
                "BFDProfile" => serde_json::from_value::<BFDProfile>(object.clone()).err(),
                "Community" => serde_json::from_value::<Community>(object.clone()).err(),
                other => panic!("{file}: unexpected kind {other}"),
            };
            assert!(parsed.is_none(), "{file}: {parsed:?}: {object}");
        }
        // The Deployment and Service of the deployment samples are not
        // MetalLB's and are said to be left alone.
        if file.starts_with("deployment_") {
            assert!(
                m.lines.iter().any(|l| l.object == "Deployment nginx"
                    && l.fate == Fate::Implied("not a MetalLB object: left as it is".into())),
                "{}",
                m.table()
            );
        }
    }
}

#[test]
fn pools_keep_addresses_and_service_allocation() {
    let m = migrate(&sample("ipaddresspool_with_selector.yaml"));
    let pool: IPAddressPool = one(&m, "IPAddressPool");
    assert_eq!(
        pool.metadata.name.as_deref(),
        Some("ippool-ns-service-alloc-sample")
    );
    assert_eq!(pool.spec.addresses, ["192.168.20.0/24"]);
    assert!(pool.spec.avoid_buggy_ips);
    assert!(pool.spec.auto_assign, "MetalLB's default, and ironlb's");
    let alloc = pool.spec.service_allocation.expect("serviceAllocation");
    assert_eq!(alloc.priority, Some(50));
    assert_eq!(alloc.namespaces, ["namespace-a", "namespace-b"]);
    assert_eq!(
        alloc.namespace_selectors[0].match_labels,
        Some([("foo".to_string(), "bar".to_string())].into())
    );
    let expr = &alloc.service_selectors[0]
        .match_expressions
        .as_ref()
        .expect("expressions")[0];
    assert_eq!(
        (
            expr.key.as_str(),
            expr.operator.as_str(),
            expr.values.clone()
        ),
        ("app", "In", Some(vec!["bar".to_string()]))
    );
    let m = migrate(&sample("ipaddresspool_simple.yaml"));
    let pool: IPAddressPool = one(&m, "IPAddressPool");
    assert_eq!(
        pool.spec.addresses,
        [
            "192.168.10.0/24",
            "192.168.9.1-192.168.9.5",
            "fc00:f853:0ccd:e799::/124"
        ]
    );
}

#[test]
fn an_advertisement_without_spec_means_every_pool_and_node() {
    for (file, kind) in [
        ("simple_pool_adv_l2.yaml", "L2Advertisement"),
        ("simple_pool_adv_bgp.yaml", "BGPAdvertisement"),
    ] {
        let m = migrate(&sample(file));
        let ad = m
            .objects
            .iter()
            .find(|o| kind_of(o) == kind)
            .expect("advertisement");
        assert_eq!(ad["spec"], json!({}), "{file}");
        assert!(
            matches!(&line(&m, "spec").fate, Fate::Kept(why) if why.contains("every pool")),
            "{}",
            m.table()
        );
    }
    let m = migrate(&sample("l2adv_with_node_selector.yaml"));
    let ad: L2Advertisement = one(&m, "L2Advertisement");
    assert_eq!(
        ad.spec.node_selectors[0].match_labels,
        Some(
            [(
                "kubernetes.io/hostname".to_string(),
                "kind-control-plane".to_string()
            )]
            .into()
        )
    );
    assert!(ad.spec.ip_address_pools.is_empty());
}

#[test]
fn bgp_advertisements_keep_aggregation_local_pref_communities_and_peers() {
    let m = migrate(&sample("bgpadvertisement_with_node_selector.yaml"));
    let ad: BGPAdvertisement = one(&m, "BGPAdvertisement");
    assert_eq!(
        (ad.spec.aggregation_length, ad.spec.aggregation_length_v6),
        (Some(32), Some(128))
    );
    assert_eq!(ad.spec.ip_address_pools, ["first-pool"]);
    assert_eq!(ad.spec.node_selectors.len(), 2);

    let m = migrate(&sample("bgpadvertisement_communities_localpref.yaml"));
    let ad: BGPAdvertisement = one(&m, "BGPAdvertisement");
    assert_eq!(ad.spec.local_pref, Some(150));
    assert_eq!(ad.spec.communities, ["65535:65282"]);

    // The alias resolves through ironlb's own Community to the same value.
    let m = migrate(&sample("bgpadvertisement_community_alias.yaml"));
    let ad: BGPAdvertisement = one(&m, "BGPAdvertisement");
    let community: Community = one(&m, "Community");
    assert_eq!(ad.spec.communities, ["NO_ADVERTISE"]);
    let aliases = community
        .spec
        .communities
        .iter()
        .map(|a| (a.name.clone(), a.value.clone()))
        .collect();
    let (prefix, attributes) = ironlb::bgp::config::advertisement(
        "advertisement",
        &ad.spec,
        "192.168.10.1".parse().expect("ip"),
        &aliases,
    )
    .expect("the alias resolves");
    assert_eq!(prefix.to_string(), "192.168.10.1/32");
    assert_eq!(
        attributes.communities,
        [(65535 << 16) | 65282].into(),
        "NO_ADVERTISE, as MetalLB's sample defines it"
    );

    let m = migrate(&sample("bgpadv_selectspool_by_list.yaml"));
    let ad: BGPAdvertisement = one(&m, "BGPAdvertisement");
    assert_eq!(ad.spec.peers, ["ebgp-single-hop0"]);
    let m = migrate(&sample("bgpadv_selectspool_by_label.yaml"));
    let ad: BGPAdvertisement = one(&m, "BGPAdvertisement");
    assert_eq!(
        ad.spec.ip_address_pool_selectors[0].match_labels,
        Some([("test".to_string(), "bgp-with-advertisement".to_string())].into())
    );
}

#[test]
fn peers_keep_their_session_and_bfd_profile() {
    let m = migrate(&sample("bgppeer_with_bfdprofile.yaml"));
    let profile: BFDProfile = one(&m, "BFDProfile");
    assert_eq!(
        (
            profile.spec.receive_interval,
            profile.spec.transmit_interval
        ),
        (Some(380), Some(270))
    );
    let peer: BGPPeer = one(&m, "BGPPeer");
    assert_eq!(peer.spec.bfd_profile.as_deref(), Some("testbfdprofile"));
    let session = ironlb::bgp::config::peer_spec("peer", &peer.spec, None, None, false)
        .expect("a peer ironlb can run");
    assert_eq!(session.address, "172.30.0.3:179".parse().expect("addr"));
    assert_eq!(
        (session.session.my_asn, session.session.peer_asn),
        (64512, 64512)
    );

    let m = migrate(&sample("bgppeer_with_session_options.yaml"));
    let peer: BGPPeer = one(&m, "BGPPeer");
    let session =
        ironlb::bgp::config::peer_spec("peer", &peer.spec, None, None, false).expect("valid");
    assert_eq!(session.session.connect_time.as_secs(), 120);
}

#[test]
fn a_password_secret_is_copied_to_ironlbs_namespace_or_left_by_hand() {
    let mut input = sample("bgppeer_withsecret.yaml");
    let m = migrate(&input);
    let peer: BGPPeer = one(&m, "BGPPeer");
    assert_eq!(
        peer.spec.password_secret.expect("secret").name,
        "secretname"
    );
    assert_eq!(peer.spec.hold_time.as_deref(), Some("9m0s"));
    // keepaliveTime 0s: left to the hold time, which a router expects.
    assert_eq!(peer.spec.keepalive_time, None);
    assert!(matches!(
        line(&m, "spec.keepaliveTime").fate,
        Fate::Implied(_)
    ));
    assert!(
        matches!(&line(&m, "spec.passwordSecret").fate,
            Fate::ByHand(what) if what.contains("copy Secret metallb-system/secretname to ironlb-system")),
        "{}",
        m.table()
    );
    assert!(m.objects.iter().all(|o| kind_of(o) != "Secret"));

    input.push(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
        "metadata": {"name": "secretname", "namespace": "metallb-system", "uid": "x"},
        "data": {"password": "c2VjcmV0"},
    }));
    let m = migrate(&input);
    let secret = m
        .objects
        .iter()
        .find(|o| kind_of(o) == "Secret")
        .expect("copied");
    assert_eq!(
        secret["metadata"],
        json!({"name": "secretname", "namespace": "ironlb-system"})
    );
    assert_eq!(secret["data"], json!({"password": "c2VjcmV0"}));
    assert_eq!(secret["type"], "kubernetes.io/basic-auth");
    assert_eq!(kind_of(&m.objects[0]), "Secret", "created before the peer");

    // A plain-text password becomes a Secret of ironlb's, never a field.
    let m = migrate(&[json!({
        "apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
        "metadata": {"name": "tor", "namespace": "metallb-system"},
        "spec": {"myASN": 64512, "peerASN": 64513, "peerAddress": "10.0.0.1", "password": "hunter2"},
    })]);
    let peer: BGPPeer = one(&m, "BGPPeer");
    assert_eq!(
        peer.spec.password_secret.expect("secret").name,
        "tor-bgp-password"
    );
    assert_eq!(line(&m, "spec.password").value, "(hidden)");
    assert!(!m.table().contains("hunter2"));
}

#[test]
fn exported_peers_with_metallbs_defaults_convert() {
    // What `kubectl get bgppeers.metallb.io -o yaml` shows: the API server
    // wrote MetalLB's defaults, and kubectl a List with status and metadata.
    let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: metallb.io/v1beta2
  kind: BGPPeer
  metadata: {name: peer, namespace: metallb-system, uid: 1, resourceVersion: "7", generation: 1,
             annotations: {kubectl.kubernetes.io/last-applied-configuration: "{}"}}
  spec: {myASN: 64512, peerASN: 64512, peerAddress: 172.30.0.3, peerPort: 179,
         disableMP: false, dualStackAddressFamily: false, vrf: "", ebgpMultiHop: false}
  status: {}
"#;
    let m = migrate(&parse_objects(text, "list.yaml").expect("parse"));
    assert!(m.refused().is_empty(), "{}", m.table());
    let peer = &m.objects[0];
    assert_eq!(peer["metadata"], json!({"name": "peer"}));
    assert!(peer.get("status").is_none());
    for field in ["spec.disableMP", "spec.dualStackAddressFamily", "spec.vrf"] {
        assert!(matches!(line(&m, field).fate, Fate::Implied(_)), "{field}");
    }
}

/// MetalLB objects that cannot keep their meaning: each refusal names the
/// object and the field, and says why.
#[test]
fn what_cannot_keep_its_meaning_is_refused_naming_object_and_field() {
    let peer = |extra: Value| {
        let mut spec = json!({"myASN": 64512, "peerASN": 64513, "peerAddress": "10.0.0.1"});
        spec.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        json!({"apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
               "metadata": {"name": "tor", "namespace": "metallb-system"}, "spec": spec})
    };
    let cases = [
        (peer(json!({"vrf": "red"})), "spec.vrf", "default VRF"),
        (
            peer(json!({"dualStackAddressFamily": true})),
            "spec.dualStackAddressFamily",
            "add a BGPPeer for the other family",
        ),
        (
            peer(json!({"dynamicASN": "external"})),
            "spec.dynamicASN",
            "spec.peerASN",
        ),
        (
            peer(json!({"localASN": 65001})),
            "spec.localASN",
            "local-as",
        ),
        (
            peer(json!({"interface": "eth1"})),
            "spec.interface",
            "unnumbered",
        ),
        (
            peer(json!({"someFutureField": 1})),
            "spec.someFutureField",
            "knows no field someFutureField",
        ),
        (
            json!({"apiVersion": "metallb.io/v1beta1", "kind": "BFDProfile",
                   "metadata": {"name": "fast", "namespace": "metallb-system"},
                   "spec": {"echoMode": true, "echoInterval": 50}}),
            "spec.echoMode",
            "no echo mode",
        ),
    ];
    for (object, field, because) in cases {
        let m = migrate(std::slice::from_ref(&object));
        let refused = m.refused();
        assert!(
            refused.iter().any(|l| l.field == field
                && l.object.ends_with("metallb-system/tor")
                    | l.object.ends_with("metallb-system/fast")
                && matches!(&l.fate, Fate::Refused(why) if why.contains(because))),
            "{field}: {}",
            m.table()
        );
        // --skip leaves it out and lets the rest through.
        let kind = object["kind"].as_str().expect("kind");
        let skip = Options {
            skip: refused.iter().map(|l| l.skip_name()).collect(),
            ..options()
        };
        let m = convert(std::slice::from_ref(&object), &skip);
        assert!(m.refused().is_empty(), "{}", m.table());
        let out = &m.objects[0];
        let short = field.trim_start_matches("spec.");
        assert!(out["spec"].get(short).is_none(), "{kind}: {short} left out");
        assert!(
            matches!(line(&m, field).fate, Fate::Skipped(_)),
            "{}",
            m.table()
        );
    }
    // A v1beta1 peer without timers runs with none once MetalLB converts it.
    let m = migrate(&[
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "BGPPeer",
        "metadata": {"name": "old", "namespace": "metallb-system"},
        "spec": {"myASN": 64512, "peerASN": 64513, "peerAddress": "10.0.0.1"}}),
    ]);
    let peer: BGPPeer = one(&m, "BGPPeer");
    assert_eq!(peer.spec.hold_time.as_deref(), Some("0s"));
    let session =
        ironlb::bgp::config::peer_spec("old", &peer.spec, None, None, false).expect("valid");
    assert_eq!(
        (session.session.hold_time, session.session.keepalive),
        (0, None)
    );
    // dynamicASN internal is iBGP: the peer's AS is ours.
    let m = migrate(&[
        json!({"apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
        "metadata": {"name": "tor", "namespace": "metallb-system"},
        "spec": {"myASN": 64512, "peerAddress": "10.0.0.1", "dynamicASN": "internal"}}),
    ]);
    let peer: BGPPeer = one(&m, "BGPPeer");
    assert_eq!(peer.spec.peer_asn, 64512);
    // Two MetalLB namespaces with a pool of one name: ironlb's pools are
    // cluster-scoped, so one must be renamed.
    let pool = |ns: &str| {
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
               "metadata": {"name": "default", "namespace": ns}, "spec": {"addresses": ["10.0.0.0/24"]}})
    };
    let m = migrate(&[pool("metallb-system"), pool("metallb-two")]);
    assert!(
        m.refused()
            .iter()
            .any(|l| l.object == "IPAddressPool metallb-two/default"
                && l.field == "metadata.name"
                && matches!(&l.fate, Fate::Refused(why) if why.contains("metallb-system/default"))),
        "{}",
        m.table()
    );
}

#[test]
fn services_sharing_across_namespaces_get_the_pool_to_allow_it() {
    let pool = json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
        "metadata": {"name": "lan", "namespace": "metallb-system"},
        "spec": {"addresses": ["192.168.10.0/24"]}});
    let svc = |ns: &str, name: &str, ip: &str, key: &str, pool: Option<&str>| {
        let mut notes = json!({"metallb.universe.tf/allow-shared-ip": key});
        if let Some(p) = pool {
            notes["metallb.io/ip-allocated-from-pool"] = p.into();
        }
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": ns, "annotations": notes},
               "spec": {"type": "LoadBalancer"},
               "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})
    };
    let input = [
        pool,
        svc("dns", "tcp", "192.168.10.53", "dns", Some("lan")),
        svc("dns-udp", "udp", "192.168.10.53", "dns", None),
        // Sharing within one namespace needs nothing.
        svc("web", "a", "192.168.10.80", "web", None),
        svc("web", "b", "192.168.10.80", "web", None),
        // An address no migrated pool holds: by hand.
        svc("x", "a", "10.9.9.9", "k", None),
        svc("y", "b", "10.9.9.9", "k", None),
    ];
    let m = migrate(&input);
    let pool: IPAddressPool = one(&m, "IPAddressPool");
    let sharing = pool.spec.cross_namespace_sharing.expect("opt-in written");
    assert_eq!(sharing.namespaces, ["dns", "dns-udp"]);
    assert!(sharing.namespace_selectors.is_empty());
    let optin = line(&m, "spec.crossNamespaceSharing");
    assert!(
        matches!(&optin.fate, Fate::OptIn(why) if why.contains("dns, dns-udp share 192.168.10.53")),
        "{}",
        m.table()
    );
    assert!(
        m.lines
            .iter()
            .any(|l| l.object == "Service address 10.9.9.9"
                && matches!(&l.fate, Fate::ByHand(what) if what.contains("x, y"))),
        "{}",
        m.table()
    );
    // Services are inputs, not objects to write.
    assert!(m.objects.iter().all(|o| kind_of(o) != "Service"));
}

fn ironlb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .args(args)
        .output()
        .expect("run ironlb")
}

#[test]
fn the_command_prints_objects_on_stdout_and_the_table_on_stderr() {
    let file = samples_dir().join("bgppeer_with_bfdprofile.yaml");
    let out = ironlb(&["migrate", "metallb", "-f", file.to_str().expect("path")]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let objects = parse_objects(&stdout, "stdout").expect("YAML on stdout");
    let kinds: Vec<String> = objects.iter().map(kind_of).collect();
    assert_eq!(
        kinds,
        ["BFDProfile", "BGPPeer"],
        "profile first: the peer names it"
    );
    assert!(stderr.starts_with("OBJECT"), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("BFDProfile metallb-system/testbfdprofile")
                && l.contains("spec.receiveInterval")
                && l.contains("380")
                && l.contains("kept")),
        "{stderr}"
    );

    let vrf = samples_dir().join("bgppeer_with_vrf.yaml");
    let out = ironlb(&["migrate", "metallb", "-f", vrf.to_str().expect("path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing printed to apply");
    assert!(
        stderr.contains("nothing migrated: 1 field(s)")
            && stderr.contains("BGPPeer metallb-system/peer spec.vrf: ironlb opens sessions in the node's default VRF only")
            && stderr.contains("--skip KIND.FIELD"),
        "{stderr}"
    );
    let out = ironlb(&[
        "migrate",
        "metallb",
        "-f",
        vrf.to_str().expect("path"),
        "--skip",
        "BGPPeer.spec.vrf",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ironlb(&[
        "migrate",
        "metallb",
        "-f",
        vrf.to_str().expect("path"),
        "--skip",
        "BGPPeer.spec.vfr",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--skip BGPPeer.spec.vfr: no refused field"),
        "a mistyped --skip is an error"
    );
    let bad = samples_dir().join("no-such-file.yaml");
    let out = ironlb(&["migrate", "metallb", "-f", bad.to_str().expect("path")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-file.yaml"));
}

/// docs/metallb-samples.md: what `ironlb migrate metallb -f` prints for each
/// of MetalLB's samples, as it prints it now.
fn samples_page() -> String {
    let mut files: Vec<String> = std::fs::read_dir(samples_dir())
        .expect("samples")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut page = String::from(
        "# MetalLB's samples, migrated\n\n\
         What `ironlb migrate metallb -f FILE` prints for each file of MetalLB's\n\
         `configsamples/` (copied in `tests/metallb/configsamples`). Generated by\n\
         `IRONLB_WRITE_DOCS=1 cargo test --test migrate`; a test fails when it is stale.\n",
    );
    for file in files {
        let m = migrate(&sample(&file));
        page.push_str(&format!("\n## `{file}`\n\n```\n{}```\n", m.table()));
        if m.refused().is_empty() {
            page.push_str(&format!("\n```yaml\n{}```\n", m.yaml().expect("yaml")));
        } else {
            page.push_str("\nRefused: nothing is printed or applied without `--skip`.\n");
        }
    }
    page
}

#[test]
fn the_samples_page_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metallb-samples.md");
    let page = samples_page();
    if std::env::var_os("IRONLB_WRITE_DOCS").is_some() {
        std::fs::write(&path, &page).expect("write docs/metallb-samples.md");
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == page,
        "docs/metallb-samples.md is stale: IRONLB_WRITE_DOCS=1 cargo test --test migrate the_samples_page"
    );
}
