//! `ironlb migrate metallb`: MetalLB's objects in, ironlb's out, and one line
//! for every field saying what became of it. Pure: the caller gathers the
//! objects (from files or the cluster, see [`cluster`]) and applies or prints
//! the result.
//!
//! Nothing is dropped silently. A field either keeps its meaning under the
//! same name, is what ironlb does anyway (MetalLB's API server writes its
//! defaults into every exported object), needs an opt-in here that the
//! migration writes (namespaces sharing an address), or is refused with the
//! reason; a refused field stops the migration unless `--skip` names it.

pub mod cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::{Map, Value, json};

use crate::api::{GROUP, annotations};
use crate::ipam::AddressRange;

/// MetalLB's API group.
pub const METALLB_GROUP: &str = "metallb.io";

/// The field manager of the objects `--apply` writes.
pub const FIELD_MANAGER: &str = "ironlb-migrate";

/// What the migration does.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where ironlb runs: BGP password Secrets are copied there.
    pub namespace: String,
    /// Refused fields to leave out instead, as `Kind.spec.field`
    /// (`BGPPeer.spec.vrf`).
    pub skip: BTreeSet<String>,
}

/// What became of one MetalLB field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Written to this ironlb field with the same meaning.
    Kept(String),
    /// What ironlb does without being told; not written. Says why.
    Implied(String),
    /// Something MetalLB allowed that ironlb allows only when asked: the
    /// migration asks, in the named field. Says what and why.
    OptIn(String),
    /// Something the migration cannot do for you. Says what to do.
    ByHand(String),
    /// Refused, and left out because `--skip` named it.
    Skipped(String),
    /// Cannot be migrated with its meaning. Says why.
    Refused(String),
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// `BGPPeer metallb-system/peer`.
    pub object: String,
    /// `spec.vrf`.
    pub field: String,
    /// The value as MetalLB had it, in short.
    pub value: String,
    /// What became of it.
    pub fate: Fate,
}

impl Line {
    /// A line about a whole object rather than one of its fields.
    fn whole(object: String, fate: Fate) -> Self {
        Self {
            object,
            field: "-".into(),
            value: "-".into(),
            fate,
        }
    }

    /// How `--skip` names this line's field: `BGPPeer.spec.vrf`.
    pub fn skip_name(&self) -> String {
        let kind = self.object.split(' ').next().unwrap_or_default();
        format!("{kind}.{}", self.field)
    }
}

/// The migration: ironlb's objects, in the order to create them, and the
/// table.
#[derive(Clone, Debug, Default)]
pub struct Migration {
    /// ironlb's objects, Secrets first and advertisements last.
    pub objects: Vec<Value>,
    /// One per MetalLB field (and per object left alone or opted in).
    pub lines: Vec<Line>,
}

impl Migration {
    /// The lines that stop the migration.
    pub fn refused(&self) -> Vec<&Line> {
        self.lines
            .iter()
            .filter(|l| matches!(l.fate, Fate::Refused(_)))
            .collect()
    }

    /// The table, one line per field, aligned.
    pub fn table(&self) -> String {
        let rows: Vec<[String; 4]> = self
            .lines
            .iter()
            .map(|l| {
                let (word, why) = match &l.fate {
                    Fate::Kept(to) => ("kept", to.clone()),
                    Fate::Implied(why) => ("implied", why.clone()),
                    Fate::OptIn(why) => ("opt-in", why.clone()),
                    Fate::ByHand(what) => ("BY HAND", what.clone()),
                    Fate::Skipped(why) => ("skipped", why.clone()),
                    Fate::Refused(why) => ("REFUSED", why.clone()),
                };
                [
                    l.object.clone(),
                    l.field.clone(),
                    l.value.clone(),
                    format!("{word}: {why}"),
                ]
            })
            .collect();
        let header = [
            "OBJECT".to_string(),
            "FIELD".into(),
            "VALUE".into(),
            "IN IRONLB".into(),
        ];
        let mut widths = [0usize; 3];
        for row in std::iter::once(&header).chain(&rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&rows) {
            let _ = writeln!(
                out,
                "{:<w0$}  {:<w1$}  {:<w2$}  {}",
                row[0],
                row[1],
                row[2],
                row[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            );
        }
        out
    }

    /// The objects as one multi-document YAML stream, for `kubectl apply -f`.
    pub fn yaml(&self) -> Result<String, serde_saphyr::SerializeError> {
        let mut out = String::from("# Written by `ironlb migrate metallb`.\n");
        for object in &self.objects {
            out.push_str("---\n");
            out.push_str(&serde_saphyr::to_string(object)?);
        }
        Ok(out)
    }
}

/// The kinds, in the order their objects are created: what others refer to
/// comes first.
const KINDS: [&str; 7] = [
    "Secret",
    "Community",
    "BFDProfile",
    "IPAddressPool",
    "BGPPeer",
    "L2Advertisement",
    "BGPAdvertisement",
];

/// Converts MetalLB's objects. `input` may hold anything: MetalLB's kinds are
/// converted, Services are read for the sharing they rely on, Secrets are
/// copied when a BGPPeer names them, other objects are listed as left alone.
pub fn convert(input: &[Value], options: &Options) -> Migration {
    let mut m = Migration::default();
    let secrets: BTreeMap<(String, String), &Value> = input
        .iter()
        .filter(|o| kind_of(o) == "Secret" && api_version_of(o) == "v1")
        .map(|o| ((namespace_of(o), name_of(o)), o))
        .collect();
    let mut seen = BTreeMap::<(String, String), String>::new();
    for object in input {
        let kind = kind_of(object);
        let id = format!("{kind} {}", qualified(object));
        if !is_metallb(object) {
            if !matches!(kind.as_str(), "Service" | "Secret") {
                m.lines.push(Line::whole(
                    id,
                    Fate::Implied("not a MetalLB object: left as it is".into()),
                ));
            }
            continue;
        }
        if matches!(
            kind.as_str(),
            "ServiceL2Status" | "ServiceBGPStatus" | "ConfigurationState"
        ) {
            m.lines.push(Line::whole(
                id,
                Fate::Implied("MetalLB's own report; ironlb's speakers write theirs".into()),
            ));
            continue;
        }
        if let Some(other) = seen.insert((kind.clone(), name_of(object)), qualified(object)) {
            m.lines.push(Line {
                object: id,
                field: "metadata.name".into(),
                value: name_of(object),
                fate: Fate::Refused(format!(
                    "{other} has the same name; ironlb's {kind} objects are cluster-scoped, \
                     so one of them must be renamed first"
                )),
            });
            continue;
        }
        let o = Object::new(object, &id, options, &mut m.lines);
        let spec = match kind.as_str() {
            "IPAddressPool" => o.pool(),
            "L2Advertisement" => o.l2_advertisement(),
            "BGPAdvertisement" => o.bgp_advertisement(),
            "BFDProfile" => o.bfd_profile(),
            "Community" => o.community(),
            "BGPPeer" => o.bgp_peer(&secrets, &mut m.objects),
            _ => {
                let why = format!("ironlb knows no MetalLB kind {kind}");
                m.lines.push(Line::whole(id, Fate::Refused(why)));
                continue;
            }
        };
        m.objects.push(json!({
            "apiVersion": format!("{GROUP}/v1alpha1"),
            "kind": kind,
            "metadata": metadata_of(object),
            "spec": spec,
        }));
    }
    share_across_namespaces(input, &mut m);
    m.objects.sort_by_key(|o| {
        let kind = kind_of(o);
        KINDS.iter().position(|k| *k == kind).unwrap_or(KINDS.len())
    });
    m
}

/// One MetalLB object being converted: each field of its spec is taken by
/// exactly one rule, and [`Object::finish`] refuses the ones none took.
struct Object<'a> {
    source: &'a Value,
    id: &'a str,
    kind: String,
    spec: Map<String, Value>,
    out: Map<String, Value>,
    options: &'a Options,
    lines: &'a mut Vec<Line>,
}

impl<'a> Object<'a> {
    fn new(source: &'a Value, id: &'a str, options: &'a Options, lines: &'a mut Vec<Line>) -> Self {
        Self {
            source,
            id,
            kind: kind_of(source),
            spec: source
                .get("spec")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            out: Map::new(),
            options,
            lines,
        }
    }

    fn line(&mut self, field: &str, value: String, fate: Fate) {
        let fate = match fate {
            Fate::Refused(why)
                if self
                    .options
                    .skip
                    .contains(&format!("{}.{field}", self.kind)) =>
            {
                Fate::Skipped(why)
            }
            fate => fate,
        };
        self.lines.push(Line {
            object: self.id.to_string(),
            field: field.to_string(),
            value,
            fate,
        });
    }

    /// Takes `field` out of the spec, with its value for the table.
    fn take(&mut self, field: &str) -> Option<(Value, String)> {
        self.spec.remove(field).map(|v| {
            let shown = short(&v);
            (v, shown)
        })
    }

    /// Fields that mean the same here, under the same name.
    fn keep(&mut self, fields: &[&str]) {
        for field in fields {
            if let Some((value, shown)) = self.take(field) {
                self.out.insert(field.to_string(), value);
                self.line(&format!("spec.{field}"), shown, Fate::Kept("same".into()));
            }
        }
    }

    /// A field whose value `harmless` accepts means what ironlb does anyway
    /// (`because`); any other value is refused, saying `refused`.
    fn implied(
        &mut self,
        field: &str,
        harmless: impl Fn(&Value) -> bool,
        because: &str,
        refused: &str,
    ) {
        if let Some((value, shown)) = self.take(field) {
            let fate = if harmless(&value) {
                Fate::Implied(because.into())
            } else {
                Fate::Refused(refused.into())
            };
            self.line(&format!("spec.{field}"), shown, fate);
        }
    }

    /// Refuses every field no rule took, and returns the converted spec.
    fn finish(mut self) -> Value {
        let left: Vec<(String, Value)> = std::mem::take(&mut self.spec).into_iter().collect();
        for (field, value) in left {
            let why = format!(
                "ironlb knows no field {field} of MetalLB's {}; nothing of it can be kept",
                self.kind
            );
            self.line(&format!("spec.{field}"), short(&value), Fate::Refused(why));
        }
        Value::Object(std::mem::take(&mut self.out))
    }

    fn pool(mut self) -> Value {
        self.keep(&[
            "addresses",
            "autoAssign",
            "avoidBuggyIPs",
            "serviceAllocation",
        ]);
        self.finish()
    }

    fn l2_advertisement(mut self) -> Value {
        self.no_spec_means_everything("every pool, from every node");
        self.keep(&[
            "ipAddressPools",
            "ipAddressPoolSelectors",
            "nodeSelectors",
            "interfaces",
        ]);
        self.service_selectors();
        self.implied(
            "preferredNodeSelectors",
            |v| v.as_array().is_some_and(Vec::is_empty),
            "none",
            "ironlb chooses the announcing node by a hash over the eligible nodes; it has no \
             weighted preference",
        );
        self.finish()
    }

    fn bgp_advertisement(mut self) -> Value {
        self.no_spec_means_everything("every pool, from every node, to every peer");
        self.keep(&[
            "ipAddressPools",
            "ipAddressPoolSelectors",
            "nodeSelectors",
            "peers",
            "aggregationLength",
            "aggregationLengthV6",
            "localPref",
            "communities",
        ]);
        self.service_selectors();
        self.finish()
    }

    fn service_selectors(&mut self) {
        self.implied(
            "serviceSelectors",
            |v| v.as_array().is_some_and(Vec::is_empty),
            "none",
            "ironlb advertises a pool's addresses for every Service; choose Services by pool \
             (serviceAllocation) instead",
        );
    }

    fn no_spec_means_everything(&mut self, what: &str) {
        if self.spec.is_empty() {
            self.line(
                "spec",
                "(none)".into(),
                Fate::Kept(format!("spec: {{}}: {what}, as in MetalLB")),
            );
        }
    }

    fn bfd_profile(mut self) -> Value {
        self.keep(&[
            "receiveInterval",
            "transmitInterval",
            "detectMultiplier",
            "passiveMode",
            "minimumTtl",
        ]);
        let echo = self.spec.get("echoMode").and_then(Value::as_bool) == Some(true);
        self.implied(
            "echoMode",
            |v| v.as_bool() != Some(true),
            "echo mode off, as in ironlb",
            "ironlb's BFD has no echo mode (RFC 5880 6.4); without it the profile detects \
             a failure in detectMultiplier × the receive interval",
        );
        self.implied(
            "echoInterval",
            |_| !echo,
            "used only with echoMode, which is off",
            "ironlb's BFD has no echo mode",
        );
        self.finish()
    }

    fn community(mut self) -> Value {
        self.keep(&["communities"]);
        self.finish()
    }

    fn bgp_peer(
        mut self,
        secrets: &BTreeMap<(String, String), &Value>,
        created: &mut Vec<Value>,
    ) -> Value {
        self.keep(&[
            "myASN",
            "peerASN",
            "peerAddress",
            "peerPort",
            "sourceAddress",
            "holdTime",
            "connectTime",
            "routerID",
            "nodeSelectors",
            "bfdProfile",
            "ebgpMultiHop",
            "enableGracefulRestart",
        ]);
        self.v1beta1_hold_time();
        self.keepalive();
        self.dynamic_asn();
        self.implied(
            "vrf",
            |v| v.as_str().is_none_or(str::is_empty),
            "the default VRF, as in ironlb",
            "ironlb opens sessions in the node's default VRF only",
        );
        self.families();
        self.implied(
            "interface",
            |v| v.as_str().is_none_or(str::is_empty),
            "unset: the session goes to peerAddress",
            "ironlb opens sessions to an address; unnumbered BGP over an interface is not \
             supported",
        );
        if let Some((_, shown)) = self.take("localASN") {
            let why = "ironlb presents myASN to every peer; it has no per-session local-as";
            self.line("spec.localASN", shown, Fate::Refused(why.into()));
        }
        self.password(secrets, created);
        self.finish()
    }

    /// A `v1beta1` BGPPeer's timers are plain durations, not optional ones:
    /// MetalLB's conversion to `v1beta2` (the version it stores and runs)
    /// writes an unset hold time as `0s`, no hold timer and no keepalives.
    /// Migrated from the cluster such a peer already reads `0s`; from a file
    /// it means the same.
    fn v1beta1_hold_time(&mut self) {
        if api_version_of(self.source) != format!("{METALLB_GROUP}/v1beta1")
            || self.out.contains_key("holdTime")
        {
            return;
        }
        self.out
            .insert("holdTime".into(), Value::String("0s".into()));
        self.line(
            "spec.holdTime",
            "(unset, v1beta1)".into(),
            Fate::Kept(
                "0s: what MetalLB runs for it once converted to v1beta2 (no hold timer, no \
                 keepalives); set holdTime to have one"
                    .into(),
            ),
        );
    }

    /// MetalLB's timers as its parser reads them: a keepalive alone sets
    /// the hold time to three times it (so `keepaliveTime: 0s` alone means
    /// no hold timer and no keepalives), and a keepalive of a third of the
    /// hold time or more comes to a third of it (FRR clamps it; the native
    /// speaker ignores the field). ironlb's `keepaliveTime` is therefore
    /// written only when it is shorter than that third.
    fn keepalive(&mut self) {
        let Some((value, shown)) = self.take("keepaliveTime") else {
            return;
        };
        let secs = |v: &Value| {
            v.as_str()
                .and_then(|t| crate::bgp::config::parse_duration(t).ok())
                .map(|d| d.as_secs())
        };
        let Some(keepalive) = secs(&value) else {
            self.out.insert("keepaliveTime".into(), value);
            self.line("spec.keepaliveTime", shown, Fate::Kept("same".into()));
            return;
        };
        let hold = match self.out.get("holdTime").and_then(secs) {
            Some(hold) => hold,
            None => {
                let hold = keepalive * 3;
                self.out
                    .insert("holdTime".into(), Value::String(format!("{hold}s")));
                self.line(
                    "spec.holdTime",
                    "(unset)".into(),
                    Fate::Kept(format!(
                        "{hold}s: three times keepaliveTime, as MetalLB derives it"
                    )),
                );
                hold
            }
        };
        if keepalive > 0 && keepalive < hold / 3 {
            self.out.insert("keepaliveTime".into(), value);
            self.line("spec.keepaliveTime", shown, Fate::Kept("same".into()));
        } else if hold == 0 {
            self.line(
                "spec.keepaliveTime",
                shown,
                Fate::Implied("holdTime 0s: no keepalives and no hold timer".into()),
            );
        } else if keepalive == 0 {
            self.line(
                "spec.keepaliveTime",
                shown,
                Fate::Implied(format!(
                    "left out: keepalives every third of the hold time ({}s), as MetalLB's \
                     native speaker sends them (with FRR, 0s sends none, and a router ends \
                     the session after the hold time)",
                    hold / 3
                )),
            );
        } else {
            self.line(
                "spec.keepaliveTime",
                shown,
                Fate::Implied(format!(
                    "left out: keepalives every third of the hold time ({}s), which is what \
                     FRR clamps a longer one to (MetalLB's native speaker ignores the field)",
                    hold / 3
                )),
            );
        }
    }

    /// `dynamicASN: internal` is iBGP: the peer's AS is ours.
    fn dynamic_asn(&mut self) {
        let Some((value, shown)) = self.take("dynamicASN") else {
            return;
        };
        match value.as_str().unwrap_or_default() {
            "" => self.line(
                "spec.dynamicASN",
                shown,
                Fate::Implied("unset: peerASN is used".into()),
            ),
            "internal" if !self.out.contains_key("peerASN") => {
                let mine = self.out.get("myASN").cloned().unwrap_or(Value::Null);
                self.out.insert("peerASN".into(), mine);
                self.line(
                    "spec.dynamicASN",
                    shown,
                    Fate::Kept("spec.peerASN = spec.myASN (iBGP)".into()),
                );
            }
            _ => self.line(
                "spec.dynamicASN",
                shown,
                Fate::Refused(
                    "ironlb needs the peer's AS in spec.peerASN; it does not learn it from \
                     the peer's OPEN"
                        .into(),
                ),
            ),
        }
    }

    /// ironlb speaks one address family per session, the family of the
    /// peer's address. In MetalLB that is what both values of the deprecated
    /// `disableMP` come to unless `dualStackAddressFamily` asks for the other
    /// family's routes on the session too.
    fn families(&mut self) {
        if let Some((_, shown)) = self.take("disableMP") {
            let why = "each session carries its peer address's family only (an IPv6 pool \
                       needs an IPv6 peer), as MetalLB does without dualStackAddressFamily";
            self.line("spec.disableMP", shown, Fate::Implied(why.into()));
        }
        self.implied(
            "dualStackAddressFamily",
            |v| v.as_bool() != Some(true),
            "off, as in ironlb",
            "ironlb sends only the routes of the peer address's family on a session; add a \
             BGPPeer for the other family",
        );
    }

    /// MetalLB's `password` is plain text in the spec, and its
    /// `passwordSecret` a Secret in MetalLB's namespace. ironlb reads the
    /// password only from a Secret in its own namespace: the migration
    /// writes one.
    fn password(&mut self, secrets: &BTreeMap<(String, String), &Value>, created: &mut Vec<Value>) {
        let peer = name_of(self.source);
        if let Some((value, _)) = self.take("password") {
            let secret = format!("{peer}-bgp-password");
            let password = value.as_str().unwrap_or_default();
            created.push(basic_auth_secret(
                &secret,
                &self.options.namespace,
                json!({"username": "", "password": password}),
                false,
            ));
            self.out
                .insert("passwordSecret".into(), json!({"name": secret}));
            self.line(
                "spec.password",
                "(hidden)".into(),
                Fate::Kept(format!(
                    "spec.passwordSecret {secret}, a Secret written to {}",
                    self.options.namespace
                )),
            );
        }
        let Some((value, shown)) = self.take("passwordSecret") else {
            return;
        };
        let name = value
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let from = value
            .get("namespace")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| namespace_of(self.source));
        self.out
            .insert("passwordSecret".into(), json!({"name": name}));
        let fate = match secrets.get(&(from.clone(), name.clone())) {
            Some(found) => {
                let data = found.get("data").cloned().unwrap_or_else(|| json!({}));
                created.push(basic_auth_secret(
                    &name,
                    &self.options.namespace,
                    data,
                    true,
                ));
                Fate::Kept(format!(
                    "same; Secret {from}/{name} copied to {}",
                    self.options.namespace
                ))
            }
            None => Fate::ByHand(format!(
                "copy Secret {from}/{name} to {ns}: kubectl create secret generic {name} -n {ns} \
                 --type=kubernetes.io/basic-auth --from-literal=password=\"$(kubectl get secret \
                 -n {from} {name} -o jsonpath='{{.data.password}}' | base64 -d)\"",
                ns = self.options.namespace
            )),
        };
        self.line("spec.passwordSecret", shown, fate);
    }
}

/// Name and labels (pool and node selectors match labels); no namespace,
/// since ironlb's configuration kinds are cluster-scoped.
fn metadata_of(source: &Value) -> Value {
    let mut meta = json!({"name": name_of(source)});
    if let Some(labels) = source.pointer("/metadata/labels")
        && labels.as_object().is_some_and(|l| !l.is_empty())
    {
        meta["labels"] = labels.clone();
    }
    meta
}

/// A `kubernetes.io/basic-auth` Secret; `encoded` says whether `data` is
/// already base64 (copied) or plain (`stringData`).
fn basic_auth_secret(name: &str, namespace: &str, data: Value, encoded: bool) -> Value {
    let field = if encoded { "data" } else { "stringData" };
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/basic-auth",
        field: data,
    })
}

/// MetalLB lets Services of any namespaces share an address with one
/// `allow-shared-ip` key; ironlb only where the pool says so. For each
/// address Services of several namespaces share today, the pool it came from
/// lists those namespaces in `spec.crossNamespaceSharing`.
fn share_across_namespaces(input: &[Value], m: &mut Migration) {
    let mut by_address: BTreeMap<IpAddr, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    let mut pool_of: BTreeMap<IpAddr, String> = BTreeMap::new();
    for svc in input.iter().filter(|o| kind_of(o) == "Service") {
        let notes = svc
            .pointer("/metadata/annotations")
            .and_then(Value::as_object);
        let key = notes.and_then(|n| {
            annotations::ALLOW_SHARED_IP_KEYS
                .iter()
                .find_map(|k| n.get(*k).and_then(Value::as_str))
        });
        let Some(key) = key else { continue };
        let ingress = svc
            .pointer("/status/loadBalancer/ingress")
            .and_then(Value::as_array);
        for ip in ingress.into_iter().flatten() {
            let Some(ip) = ip
                .get("ip")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
            else {
                continue;
            };
            let entry = by_address.entry(ip).or_default();
            entry.0.insert(namespace_of(svc));
            entry.1.insert(key.to_string());
            if let Some(pool) = notes.and_then(|n| {
                annotations::ALLOCATED_FROM_POOL_KEYS
                    .iter()
                    .find_map(|k| n.get(*k).and_then(Value::as_str))
            }) {
                pool_of.insert(ip, pool.to_string());
            }
        }
    }
    let mut grants: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (ip, (namespaces, keys)) in by_address.iter().filter(|(_, (ns, _))| ns.len() > 1) {
        let pool = pool_of
            .get(ip)
            .cloned()
            .or_else(|| pool_holding(&m.objects, *ip));
        let listed = namespaces.iter().cloned().collect::<Vec<_>>().join(", ");
        let keys = keys.iter().cloned().collect::<Vec<_>>().join(", ");
        match pool {
            Some(pool) => {
                grants
                    .entry(pool.clone())
                    .or_default()
                    .extend(namespaces.clone());
                m.lines.push(Line {
                    object: format!("IPAddressPool {pool}"),
                    field: "spec.crossNamespaceSharing".into(),
                    value: format!("{ip} (key {keys})"),
                    fate: Fate::OptIn(format!(
                        "Services of namespaces {listed} share {ip}; ironlb shares across \
                         namespaces only where the pool lists them"
                    )),
                });
            }
            None => m.lines.push(Line {
                object: format!("Service address {ip}"),
                field: "-".into(),
                value: format!("key {keys}"),
                fate: Fate::ByHand(format!(
                    "Services of namespaces {listed} share {ip}, which no migrated pool holds: \
                     add a pool with it and crossNamespaceSharing for {listed}"
                )),
            }),
        }
    }
    for object in &mut m.objects {
        if kind_of(object) != "IPAddressPool" {
            continue;
        }
        if let Some(namespaces) = grants.get(&name_of(object)) {
            object["spec"]["crossNamespaceSharing"] = json!({"namespaces": namespaces});
        }
    }
}

/// The converted pool whose addresses hold `ip`.
fn pool_holding(objects: &[Value], ip: IpAddr) -> Option<String> {
    objects
        .iter()
        .filter(|o| kind_of(o) == "IPAddressPool")
        .find(|pool| {
            pool.pointer("/spec/addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter_map(|e| AddressRange::parse(e).ok())
                .any(|r| r.contains(ip))
        })
        .map(name_of)
}

fn is_metallb(object: &Value) -> bool {
    api_version_of(object)
        .split_once('/')
        .is_some_and(|(group, _)| group == METALLB_GROUP)
}

fn api_version_of(object: &Value) -> String {
    field_str(object, "/apiVersion")
}

/// The object's kind (empty when it has none).
pub fn kind_of(object: &Value) -> String {
    field_str(object, "/kind")
}

fn name_of(object: &Value) -> String {
    field_str(object, "/metadata/name")
}

fn namespace_of(object: &Value) -> String {
    field_str(object, "/metadata/namespace")
}

fn qualified(object: &Value) -> String {
    match namespace_of(object) {
        ns if ns.is_empty() => name_of(object),
        ns => format!("{ns}/{}", name_of(object)),
    }
}

fn field_str(object: &Value, pointer: &str) -> String {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// A value on one short line for the table.
fn short(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match text.char_indices().nth(48) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The objects in a YAML or JSON file: documents separated by `---`, and the
/// items of a `kind: List` (what `kubectl get -o yaml` writes).
pub fn parse_objects(text: &str, file: &str) -> Result<Vec<Value>, String> {
    let documents: Vec<Value> =
        serde_saphyr::from_str_multiple(text).map_err(|e| format!("{file}: {e}"))?;
    let mut out = Vec::new();
    for document in documents {
        match document {
            Value::Null => {}
            list if kind_of(&list) == "List" => {
                let items = list.get("items").and_then(Value::as_array).cloned();
                out.extend(items.unwrap_or_default());
            }
            object if object.is_object() && !kind_of(&object).is_empty() => out.push(object),
            other => {
                return Err(format!(
                    "{file}: a document that is not a Kubernetes object (no kind): {}",
                    short(&other)
                ));
            }
        }
    }
    Ok(out)
}
