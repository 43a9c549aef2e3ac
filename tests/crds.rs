//! The generated CRDs: checked in, loadable by Kubernetes types, structural, and
//! with CEL rules that accept good pools and reject bad ones as an API server
//! would.

use std::process::Command;

use ironlb::api::{IPAddressPool, IPAddressPoolSpec, crds, crds_yaml};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::core::cel::{Validator, compile_schema, estimate_rule_cost};
use serde_json::{Value, json};

const CHECKED_IN: &str = "crds/ironlb.yaml";

#[test]
fn the_checked_in_crds_are_what_ironlb_crds_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .arg("crds")
        .output()
        .expect("run ironlb crds");
    assert!(
        out.status.success(),
        "ironlb crds failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(CHECKED_IN);
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        printed == checked_in,
        "{CHECKED_IN} is stale: regenerate it with `cargo run -- crds > {CHECKED_IN}`"
    );
    assert_eq!(printed, crds_yaml().unwrap());
}

fn checked_in_crds() -> Vec<CustomResourceDefinition> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(CHECKED_IN);
    let text = std::fs::read_to_string(path).expect("crds/ironlb.yaml");
    serde_saphyr::from_str_multiple(&text)
        .expect("the CRDs deserialise into CustomResourceDefinition")
}

#[test]
fn the_crds_deserialise_into_kubernetes_types() {
    let loaded = checked_in_crds();
    let names: Vec<&str> = loaded
        .iter()
        .map(|c| c.metadata.name.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(
        names,
        [
            "ipaddresspools.ironlb.dev",
            "l2advertisements.ironlb.dev",
            "servicel2statuses.ironlb.dev",
            "bgppeers.ironlb.dev",
            "bgpadvertisements.ironlb.dev",
            "bfdprofiles.ironlb.dev",
            "communities.ironlb.dev",
            "bgpsessionstates.ironlb.dev",
            "servicebgpstatuses.ironlb.dev",
        ]
    );
    for crd in &loaded {
        assert_eq!(crd.spec.group, "ironlb.dev");
        let kind = crd.spec.names.kind.as_str();
        let scope = if ["ServiceL2Status", "ServiceBGPStatus"].contains(&kind) {
            "Namespaced"
        } else {
            "Cluster"
        };
        assert_eq!(crd.spec.scope, scope);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        // Kinds whose status something writes have the status subresource;
        // the Service reports are themselves reports, and the BGP kinds'
        // problems go to events.
        if ["IPAddressPool", "L2Advertisement", "BGPSessionState"].contains(&kind) {
            let sub = version.subresources.as_ref().expect("subresources");
            assert!(
                sub.status.is_some(),
                "{}: status subresource",
                crd.spec.names.kind
            );
        }
    }
    assert_eq!(loaded, crds(), "YAML round trip loses nothing");
}

/// Kubernetes' structural-schema rules, the parts a derive can get wrong: every
/// node has a type (or says it is int-or-string / preserves unknown fields), and
/// no `$ref` or `*Of` carries types of its own.
fn assert_structural(path: &str, node: &Value) {
    let obj = node
        .as_object()
        .unwrap_or_else(|| panic!("{path}: schema is not an object"));
    let typed = obj.contains_key("type")
        || obj.get("x-kubernetes-int-or-string") == Some(&json!(true))
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    assert!(
        typed,
        "{path}: no type (a bare {{}} is not structural): {node}"
    );
    for banned in ["$ref", "oneOf", "anyOf", "allOf", "not"] {
        assert!(!obj.contains_key(banned), "{path}: uses {banned}");
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            assert_structural(&format!("{path}.{name}"), child);
        }
    }
    if let Some(items) = obj.get("items") {
        assert_structural(&format!("{path}[]"), items);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        assert_structural(&format!("{path}{{}}"), extra);
    }
}

fn schema_of(kind: &str) -> Value {
    let crd = crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .expect("kind");
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("openAPIV3Schema");
    serde_json::to_value(schema).expect("schema to JSON")
}

#[test]
fn every_schema_is_structural() {
    for kind in ["IPAddressPool", "L2Advertisement", "ServiceL2Status"] {
        assert_structural(kind, &schema_of(kind));
    }
}

#[test]
fn the_pool_shows_useful_printer_columns() {
    let crd = IPAddressPool::crd();
    let columns: Vec<String> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    for wanted in [
        "Addresses",
        "Auto Assign",
        "Assigned v4",
        "Available v4",
        "Assigned v6",
        "Available v6",
        "Age",
    ] {
        assert!(
            columns.iter().any(|c| c == wanted),
            "missing column {wanted}: {columns:?}"
        );
    }
}

fn pool(addresses: &[&str]) -> Value {
    json!({
        "apiVersion": "ironlb.dev/v1alpha1",
        "kind": "IPAddressPool",
        "metadata": {"name": "lan"},
        "spec": {"addresses": addresses},
    })
}

fn cel_errors(object: &Value) -> Vec<String> {
    match Validator::new().validate(&schema_of("IPAddressPool"), object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

#[test]
fn cel_rules_compile_and_fit_the_cost_budget() {
    let schema = schema_of("IPAddressPool");
    let compiled = compile_schema(&schema);
    assert!(
        !compiled.has_errors(),
        "CEL compilation errors: {:?}",
        compiled.compilation_errors()
    );
    let entry = compiled.properties["spec"].properties["addresses"]
        .items
        .as_deref()
        .expect("addresses has items");
    assert_eq!(
        entry.validations.len(),
        6,
        "the syntax, host-bits and four special-purpose rules sit on the items"
    );
    for rule in entry.validations.iter().flatten() {
        let warnings = estimate_rule_cost(&rule.rule.rule, entry);
        assert!(warnings.is_empty(), "{}: {warnings:?}", rule.rule.rule);
    }
}

/// Formats the Kubernetes API server knows (k8s.io/kube-openapi's strfmt
/// registry); any other draws a warning on every `kubectl apply`.
const KNOWN_FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "binary",
    "password",
    "date",
    "date-time",
    "datetime",
    "duration",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uri",
    "bsonobjectid",
    "hexcolor",
    "rgbcolor",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
];

/// What the API server's CEL cost estimator needs to keep a rule inside its
/// budget: every list, map and string a rule can reach is bounded. Kubernetes
/// estimates an unbounded string at the request size limit (3 MiB) and an
/// unbounded list at as many items as fit in it, and refuses a CRD whose rules'
/// estimate is over budget; `ruled` says whether a rule sits at this node or
/// above it.
fn lint(path: &str, node: &Value, ruled: bool, problems: &mut Vec<String>) {
    let ruled = ruled || node.get("x-kubernetes-validations").is_some();
    if let Some(format) = node.get("format").and_then(Value::as_str)
        && !KNOWN_FORMATS.contains(&format)
    {
        problems.push(format!(
            "{path}: format {format:?} is unknown to Kubernetes"
        ));
    }
    let bounded = |key: &str| node.get(key).is_some() || node.get("enum").is_some();
    match node.get("type").and_then(Value::as_str) {
        Some("array") if ruled && !bounded("maxItems") => problems.push(format!(
            "{path}: a CEL rule reaches this list: set maxItems"
        )),
        Some("string") if ruled && !bounded("maxLength") && node.get("format").is_none() => {
            problems.push(format!(
                "{path}: a CEL rule reaches this string: set maxLength"
            ))
        }
        Some("object")
            if ruled && node.get("additionalProperties").is_some() && !bounded("maxProperties") =>
        {
            problems.push(format!(
                "{path}: a CEL rule reaches this map: set maxProperties"
            ))
        }
        _ => {}
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            lint(&format!("{path}.{name}"), child, ruled, problems);
        }
    }
    if let Some(items) = node.get("items") {
        lint(&format!("{path}[]"), items, ruled, problems);
    }
    if let Some(extra) = node.get("additionalProperties").filter(|v| v.is_object()) {
        lint(&format!("{path}{{}}"), extra, ruled, problems);
    }
}

#[test]
fn every_rule_reaches_only_bounded_fields_and_every_format_is_known() {
    let mut problems = Vec::new();
    for kind in ["IPAddressPool", "L2Advertisement", "ServiceL2Status"] {
        lint(kind, &schema_of(kind), false, &mut problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every `operator` of a label selector requirement, by path.
fn operators(path: &str, node: &Value, out: &mut Vec<(String, Value)>) {
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        if ["key", "operator", "values"]
            .iter()
            .all(|k| props.contains_key(*k))
        {
            out.push((format!("{path}.operator"), props["operator"].clone()));
        }
        for (name, child) in props {
            operators(&format!("{path}.{name}"), child, out);
        }
    }
    if let Some(items) = node.get("items") {
        operators(&format!("{path}[]"), items, out);
    }
}

#[test]
fn every_selector_operator_is_an_enum_the_api_server_enforces() {
    let mut found = Vec::new();
    for kind in ["IPAddressPool", "L2Advertisement"] {
        operators(kind, &schema_of(kind), &mut found);
    }
    let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "IPAddressPool.spec.crossNamespaceSharing.namespaceSelectors[].matchExpressions[].operator",
            "IPAddressPool.spec.serviceAllocation.namespaceSelectors[].matchExpressions[].operator",
            "IPAddressPool.spec.serviceAllocation.serviceSelectors[].matchExpressions[].operator",
            "L2Advertisement.spec.ipAddressPoolSelectors[].matchExpressions[].operator",
            "L2Advertisement.spec.nodeSelectors[].matchExpressions[].operator",
        ]
    );
    for (path, schema) in found {
        assert_eq!(
            schema["enum"],
            json!(["In", "NotIn", "Exists", "DoesNotExist"]),
            "{path}"
        );
    }
}

#[test]
fn the_lint_catches_an_unbounded_list_under_a_rule_and_an_unknown_format() {
    let schema = json!({"type": "object", "properties": {
        "spec": {"type": "object", "x-kubernetes-validations": [{"rule": "true"}], "properties": {
            "names": {"type": "array", "items": {"type": "string", "maxLength": 5}},
            "count": {"type": "integer", "format": "uint64"},
        }},
    }});
    let mut problems = Vec::new();
    lint("T", &schema, false, &mut problems);
    assert_eq!(
        problems,
        [
            "T.spec.count: format \"uint64\" is unknown to Kubernetes",
            "T.spec.names: a CEL rule reaches this list: set maxItems",
        ]
    );
}

#[test]
fn cel_accepts_cidrs_ranges_and_addresses_of_both_families() {
    let good = pool(&[
        "192.168.10.0/24",
        "fd00::/120",
        "10.0.0.10-10.0.0.20",
        "fd01::1 - fd01::9",
        "10.9.9.9",
    ]);
    assert_eq!(cel_errors(&good), Vec::<String>::new());
}

#[test]
fn cel_rejects_garbage_and_mixed_ranges() {
    for bad in [
        "ten.0.0.0/8",
        "10.0.0.1-fd00::1",
        "10.0.0.1-",
        "10.0.0.0/33",
    ] {
        let errors = cel_errors(&pool(&["10.0.0.0/24", bad]));
        assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
        assert!(errors[0].starts_with("must be a CIDR"), "{bad}: {errors:?}");
    }
}

#[test]
fn cel_rejects_host_bits_and_names_the_network_meant() {
    let errors = cel_errors(&pool(&["10.0.0.0/24", "10.1.0.9/16"]));
    assert_eq!(
        errors,
        [
            "host bits are set in 10.1.0.9/16: write the network address with /16 \
          (the whole network) or 10.1.0.9/32 (one address)"
        ]
    );
}

#[test]
fn cel_rejects_special_purpose_addresses_naming_the_kind() {
    for (bad, kind) in [
        ("0.0.0.0/0", "the unspecified address"),
        ("127.0.0.1", "a loopback address"),
        ("10.0.0.250-127.0.0.1", "a loopback address"),
        ("169.254.1.0/24", "a link-local address"),
        ("224.0.0.0/4", "a multicast or broadcast address"),
        ("255.255.255.255", "a multicast or broadcast address"),
        ("::/0", "the unspecified address"),
        ("::1", "a loopback address"),
        ("fe80::/64", "a link-local address"),
        ("ff02::1", "a multicast or broadcast address"),
    ] {
        let errors = cel_errors(&pool(&["10.0.0.0/24", bad]));
        assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
        assert!(
            errors[0].starts_with(&format!("{bad} is or holds {kind} (")),
            "{bad}: {errors:?}"
        );
    }
}

#[test]
fn defaults_apply_when_fields_are_omitted() {
    let spec: IPAddressPoolSpec =
        serde_json::from_value(json!({"addresses": ["10.0.0.0/24"]})).unwrap();
    assert!(spec.auto_assign, "autoAssign defaults to true");
    assert!(!spec.avoid_buggy_ips);
    assert!(spec.service_allocation.is_none());
    let schema = schema_of("IPAddressPool");
    assert_eq!(
        schema["properties"]["spec"]["properties"]["autoAssign"]["default"],
        json!(true)
    );
}
