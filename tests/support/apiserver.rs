//! An in-process Kubernetes API server for tests.
//!
//! No real API server can be installed on the machines these tests run on, so
//! this one speaks just enough of the real REST and watch protocol for the real
//! `kube::Client` to run against it unmodified:
//!
//! - list (with the collection's `resourceVersion`) and watch (newline-delimited
//!   `ADDED` / `MODIFIED` / `DELETED` events after a given `resourceVersion`; an
//!   `ERROR` event with a 410 `Expired` status for one older than the history);
//! - get, create (409 `AlreadyExists`, `generateName`), replace (409 `Conflict`
//!   on a stale `resourceVersion`), delete (404 `NotFound`);
//! - merge, strategic-merge (as merge: the objects used here have no lists that
//!   strategic merge treats differently), JSON patch, and server-side apply with
//!   per-field ownership and 409 conflicts between field managers (`force`
//!   overrides) — what leader election relies on;
//! - the status subresource: writes to `/status` change only `status`, other
//!   writes never change it, and a create drops it;
//! - a write that changes nothing keeps the `resourceVersion` and sends no event.
//!
//! Resources: Services (with the defaults the real server fills in), Namespaces,
//! Nodes, Leases, Events, EndpointSlices, and ironlb's CRDs.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// One kind of resource the server knows.
#[derive(Clone, Copy, Debug)]
struct Kind {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status_subresource: bool,
}

const KINDS: &[Kind] = &[
    Kind {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
        status_subresource: true,
    },
    Kind {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        status_subresource: false,
    },
    Kind {
        group: "",
        version: "v1",
        plural: "nodes",
        kind: "Node",
        namespaced: false,
        status_subresource: true,
    },
    Kind {
        group: "",
        version: "v1",
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
        status_subresource: false,
    },
    Kind {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        status_subresource: false,
    },
    Kind {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        status_subresource: false,
    },
    Kind {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
        status_subresource: false,
    },
    Kind {
        group: "ironlb.dev",
        version: "v1alpha1",
        plural: "ipaddresspools",
        kind: "IPAddressPool",
        namespaced: false,
        status_subresource: true,
    },
    Kind {
        group: "ironlb.dev",
        version: "v1alpha1",
        plural: "servicel2statuses",
        kind: "ServiceL2Status",
        namespaced: true,
        status_subresource: false,
    },
    Kind {
        group: "ironlb.dev",
        version: "v1alpha1",
        plural: "servicebgpstatuses",
        kind: "ServiceBGPStatus",
        namespaced: true,
        status_subresource: false,
    },
    Kind {
        group: "ironlb.dev",
        version: "v1alpha1",
        plural: "l2advertisements",
        kind: "L2Advertisement",
        namespaced: false,
        status_subresource: true,
    },
    // Gateway API, as the upstream standard-channel CRDs serve it (without
    // their schemas' defaults and validation: the real server's are tested
    // in e2e.rs).
    Kind {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "gatewayclasses",
        kind: "GatewayClass",
        namespaced: false,
        status_subresource: true,
    },
    Kind {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "gateways",
        kind: "Gateway",
        namespaced: true,
        status_subresource: true,
    },
    Kind {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "tcproutes",
        kind: "TCPRoute",
        namespaced: true,
        status_subresource: true,
    },
    Kind {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "udproutes",
        kind: "UDPRoute",
        namespaced: true,
        status_subresource: true,
    },
    Kind {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "tlsroutes",
        kind: "TLSRoute",
        namespaced: true,
        status_subresource: true,
    },
    Kind {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "referencegrants",
        kind: "ReferenceGrant",
        namespaced: true,
        status_subresource: false,
    },
];

impl Kind {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// How many changes a watch can resume across.
const HISTORY: usize = 200_000;

/// (plural, namespace or "", name)
type ObjectKey = (&'static str, String, String);

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    plural: &'static str,
    namespace: String,
    type_: &'static str,
    object: Value,
}

struct Db {
    rv: u64,
    objects: BTreeMap<ObjectKey, Value>,
    /// Field path → manager, per object: server-side apply's ownership.
    managers: BTreeMap<ObjectKey, BTreeMap<String, String>>,
    /// Changes a watch can resume from; older ones are compacted away.
    history: Vec<Change>,
    /// The oldest resourceVersion a watch may resume from.
    oldest: u64,
    /// Counts requests per verb and resource, for tests that check what was sent.
    requests: BTreeMap<String, u64>,
    next_uid: u64,
}

struct Shared {
    db: Mutex<Db>,
    changes: broadcast::Sender<Change>,
    /// Cancelling it ends every open watch (the client then reconnects).
    watches: Mutex<CancellationToken>,
    /// While set, every request is answered 500, as an API server whose etcd
    /// is unreachable does. (Not 503: kube's client retries 503 itself, for
    /// minutes, which would hide what a test wants to see.)
    failing: std::sync::atomic::AtomicBool,
}

/// The running server.
pub struct ApiServer {
    /// Where it listens: loopback first, then the lab address if any.
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl ApiServer {
    /// Starts a server on a free loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        Self::serve(vec![listener])
    }

    /// Starts a server on a loopback port, as [`ApiServer::start`], and also on
    /// `addr` inside the network namespace `ns`, so hosts of a namespace lab can
    /// reach it (that socket is made in a thread that enters the namespace; the
    /// server runs here). [`ApiServer::lab_kubeconfig`] points there.
    pub async fn start_in_namespace(ns: &str, addr: std::net::SocketAddr) -> Self {
        let loopback = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let listener = super::netns::bind_in_namespace(ns, addr);
        let lab = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        Self::serve(vec![loopback, lab])
    }

    fn serve(listeners: Vec<tokio::net::TcpListener>) -> Self {
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr().expect("local addr"))
            .collect();
        let (changes, _) = broadcast::channel(65536);
        let shared = Arc::new(Shared {
            db: Mutex::new(Db {
                rv: 1,
                objects: BTreeMap::new(),
                managers: BTreeMap::new(),
                history: Vec::new(),
                oldest: 1,
                requests: BTreeMap::new(),
                next_uid: 1,
            }),
            changes,
            watches: Mutex::new(CancellationToken::new()),
            failing: std::sync::atomic::AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        for listener in listeners {
            let app = Router::new().fallback(handle).with_state(shared.clone());
            let until = stop.clone();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { until.cancelled().await })
                    .await
                    .expect("test API server");
            });
        }
        let server = Self {
            addrs,
            shared,
            stop,
        };
        for ns in ["default", "ironlb-system"] {
            server.create_namespace(ns, &[]);
        }
        server
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addrs[0])
    }

    /// A client talking to this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("url"));
        kube::Client::try_from(config).expect("client")
    }

    /// Writes a kubeconfig for this server into `dir`, for subprocesses.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        self.write_kubeconfig(dir, &self.url())
    }

    /// Writes a kubeconfig pointing at the lab address into `dir`, for
    /// processes inside the lab.
    pub fn lab_kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let addr = self.addrs.get(1).expect("started with start_in_namespace");
        self.write_kubeconfig(dir, &format!("http://{addr}"))
    }

    /// Stops serving, as an API server that went away: open watches end and new
    /// connections are refused.
    pub fn stop(&self) {
        self.end_watches();
        self.stop.cancel();
    }

    fn write_kubeconfig(&self, dir: &std::path::Path, url: &str) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
             current-context: test\nusers:\n- name: test\n  user: {{}}\n",
            url
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Answers every request with 500 until called again with `false`; open
    /// watches end, and their reconnections fail too.
    pub fn set_failing(&self, failing: bool) {
        self.shared
            .failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
        if failing {
            self.end_watches();
        }
    }

    /// Creates a Namespace with labels, directly.
    pub fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
        let kind = find_kind("", "namespaces").expect("namespaces");
        let mut db = self.shared.db.lock().expect("db");
        create(&mut db, &self.shared.changes, kind, "", obj).expect("create namespace");
    }

    /// Forgets all watch history: a watch resuming from an older resourceVersion
    /// now gets 410 Gone. Open watches are ended so clients must resume.
    pub fn compact(&self) {
        {
            let mut db = self.shared.db.lock().expect("db");
            db.history.clear();
            db.oldest = db.rv + 1;
        }
        self.end_watches();
    }

    /// Ends every open watch, as an API server restart or a load balancer would.
    pub fn end_watches(&self) {
        let mut watches = self.shared.watches.lock().expect("watches");
        watches.cancel();
        *watches = CancellationToken::new();
    }

    /// How many requests of `verb` (`get`, `list`, `watch`, `create`, `update`,
    /// `patch`, `delete`) reached `plural` (with `/status` for the subresource).
    pub fn requests(&self, verb: &str, plural: &str) -> u64 {
        let db = self.shared.db.lock().expect("db");
        db.requests
            .get(&format!("{verb} {plural}"))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.end_watches();
        self.stop.cancel();
    }
}

fn find_kind(group: &str, plural: &str) -> Option<Kind> {
    KINDS
        .iter()
        .copied()
        .find(|k| k.group == group && k.plural == plural)
}

/// Discovery of one group version (`/api/v1`, `/apis/GROUP/VERSION`): the
/// resources the server serves there, with their status subresources, as
/// the real server lists them.
fn resource_list(path: &str) -> Option<Value> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version) = match segs.as_slice() {
        ["api", version] => ("", *version),
        ["apis", group, version] => (*group, *version),
        _ => return None,
    };
    let kinds: Vec<&Kind> = KINDS
        .iter()
        .filter(|k| k.group == group && k.version == version)
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for k in kinds {
        resources.push(json!({
            "name": k.plural, "singularName": k.kind.to_ascii_lowercase(),
            "namespaced": k.namespaced, "kind": k.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        }));
        if k.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", k.plural), "singularName": "",
                "namespaced": k.namespaced, "kind": k.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": group_version, "resources": resources,
    }))
}

/// What a request path names.
struct Target {
    kind: Kind,
    namespace: String,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if find_kind(group, plural).is_some() => {
            (ns.to_string(), {
                let mut v = vec![*plural];
                v.extend_from_slice(tail);
                v
            })
        }
        other => (String::new(), other.to_vec()),
    };
    let kind = find_kind(group, rest.first()?)?;
    // A named namespaced object needs its namespace; a cluster-scoped one has none.
    if (kind.namespaced && namespace.is_empty() && rest.len() > 1)
        || (!kind.namespaced && !namespace.is_empty())
    {
        return None;
    }
    let status = match rest.get(2) {
        None => false,
        Some(&"status") => true,
        Some(_) => return None,
    };
    Some(Target {
        kind,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        status,
    })
}

/// A failed request, answered as a `metav1.Status`.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
}

fn status_error(code: u16, reason: &'static str, message: String) -> ApiError {
    ApiError {
        code,
        reason,
        message,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        (
            StatusCode::from_u16(self.code).expect("status code"),
            axum::Json(body),
        )
            .into_response()
    }
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == Method::GET
        && let Some(list) = resource_list(uri.path())
    {
        return (StatusCode::OK, axum::Json(list)).into_response();
    }
    let Some(target) = parse_path(uri.path()) else {
        return status_error(
            404,
            "NotFound",
            format!(
                "the server could not find the requested resource ({})",
                uri.path()
            ),
        )
        .into_response();
    };
    if shared.failing.load(std::sync::atomic::Ordering::SeqCst) {
        return status_error(
            500,
            "InternalError",
            "Internal error occurred: etcdserver: request timed out".into(),
        )
        .into_response();
    }
    let q = query(&uri);
    let sub = if target.status { "/status" } else { "" };
    let verb = match (&method, &target.name) {
        (&Method::GET, None)
            if matches!(q.get("watch").map(String::as_str), Some("1" | "true")) =>
        {
            "watch"
        }
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, _) => "delete",
        _ => {
            return status_error(
                405,
                "MethodNotAllowed",
                format!("{method} is not supported"),
            )
            .into_response();
        }
    };
    shared
        .db
        .lock()
        .expect("db")
        .requests
        .entry(format!("{verb} {}{sub}", target.kind.plural))
        .and_modify(|n| *n += 1)
        .or_insert(1);
    if verb == "watch" {
        return match field_selector(&q) {
            Ok(fields) => watch(shared, target, q, fields),
            Err(e) => e.into_response(),
        };
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let mut db = shared.db.lock().expect("db");
    let result = match verb {
        "list" => field_selector(&q).map(|fields| {
            list(
                &db,
                target.kind,
                &target.namespace,
                q.get("labelSelector").map(String::as_str),
                &fields,
            )
        }),
        "get" => get(&db, &target).map(|o| (StatusCode::OK, o)),
        "create" => parse_body(&body, &content_type)
            .and_then(|obj| {
                create(
                    &mut db,
                    &shared.changes,
                    target.kind,
                    &target.namespace,
                    obj,
                )
            })
            .map(|o| (StatusCode::CREATED, o)),
        "update" => parse_body(&body, &content_type)
            .and_then(|obj| update(&mut db, &shared.changes, &target, obj, &q)),
        "patch" => patch(&mut db, &shared.changes, &target, &body, &content_type, &q),
        "delete" => delete(&mut db, &shared.changes, &target).map(|o| (StatusCode::OK, o)),
        _ => unreachable!("verbs are matched above"),
    };
    match result {
        Ok((code, obj)) => (code, axum::Json(obj)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn parse_body(body: &Bytes, content_type: &str) -> Result<Value, ApiError> {
    if content_type.contains("yaml") {
        serde_saphyr::from_slice(body)
            .map_err(|e| status_error(400, "BadRequest", format!("bad YAML body: {e}")))
    } else {
        serde_json::from_slice(body)
            .map_err(|e| status_error(400, "BadRequest", format!("bad JSON body: {e}")))
    }
}

fn key_of(kind: Kind, namespace: &str, name: &str) -> ObjectKey {
    (kind.plural, namespace.to_string(), name.to_string())
}

fn not_found(kind: Kind, name: &str) -> ApiError {
    status_error(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", kind.plural),
    )
}

fn list(
    db: &Db,
    kind: Kind,
    namespace: &str,
    selector: Option<&str>,
    fields: &[FieldRequirement],
) -> (StatusCode, Value) {
    let items: Vec<Value> = db
        .objects
        .iter()
        .filter(|((p, ns, _), _)| *p == kind.plural && (namespace.is_empty() || ns == namespace))
        .filter(|(_, o)| selector.is_none_or(|s| labels_match(o, s)))
        .filter(|(_, o)| fields_match(o, fields))
        .map(|(_, o)| o.clone())
        .collect();
    (
        StatusCode::OK,
        json!({
            "apiVersion": kind.api_version(), "kind": format!("{}List", kind.kind),
            "metadata": {"resourceVersion": db.rv.to_string()}, "items": items,
        }),
    )
}

/// One term of a field selector: the field's JSON pointer, the value, and
/// whether it must equal (`=`, `==`) or differ (`!=`).
#[derive(Clone, Debug)]
struct FieldRequirement {
    pointer: &'static str,
    value: String,
    equal: bool,
}

/// Parses `fieldSelector`. Every kind can select on `metadata.name` and
/// `metadata.namespace`; a real server answers 400 for a field the kind does
/// not support, and so does this one for any other field.
fn field_selector(q: &BTreeMap<String, String>) -> Result<Vec<FieldRequirement>, ApiError> {
    let Some(selector) = q.get("fieldSelector") else {
        return Ok(Vec::new());
    };
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|term| {
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, v, true)
            } else {
                return Err(status_error(
                    400,
                    "BadRequest",
                    format!("invalid field selector: {term}"),
                ));
            };
            let pointer = match field {
                "metadata.name" => "/metadata/name",
                "metadata.namespace" => "/metadata/namespace",
                other => {
                    return Err(status_error(
                        400,
                        "BadRequest",
                        format!("field label not supported: {other}"),
                    ));
                }
            };
            Ok(FieldRequirement {
                pointer,
                value: value.to_string(),
                equal,
            })
        })
        .collect()
}

fn fields_match(obj: &Value, fields: &[FieldRequirement]) -> bool {
    fields.iter().all(|f| {
        let actual = obj.pointer(f.pointer).and_then(Value::as_str).unwrap_or("");
        (actual == f.value) == f.equal
    })
}

/// Equality-based label selectors (`a=b,c!=d,e,!f`), the forms clients here use.
fn labels_match(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .all(|req| {
            if let Some((k, v)) = req.split_once("!=") {
                labels[k].as_str() != Some(v)
            } else if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
                labels[k].as_str() == Some(v)
            } else if let Some(k) = req.strip_prefix('!') {
                labels.get(k).is_none()
            } else {
                labels.get(req).is_some()
            }
        })
}

fn get(db: &Db, t: &Target) -> Result<Value, ApiError> {
    let name = t.name.as_deref().unwrap_or_default();
    db.objects
        .get(&key_of(t.kind, &t.namespace, name))
        .cloned()
        .ok_or_else(|| not_found(t.kind, name))
}

fn record(
    db: &mut Db,
    changes: &broadcast::Sender<Change>,
    kind: Kind,
    namespace: &str,
    type_: &'static str,
    object: Value,
) {
    let change = Change {
        rv: db.rv,
        plural: kind.plural,
        namespace: namespace.to_string(),
        type_,
        object,
    };
    db.history.push(change.clone());
    if db.history.len() > HISTORY {
        // Compact the older half, as etcd does: resuming from before it is 410 Gone.
        let cut = db.history.len() / 2;
        db.oldest = db.history[cut].rv;
        db.history.drain(..cut);
    }
    let _ = changes.send(change);
}

fn create(
    db: &mut Db,
    changes: &broadcast::Sender<Change>,
    kind: Kind,
    namespace: &str,
    mut obj: Value,
) -> Result<Value, ApiError> {
    let meta = obj
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| status_error(400, "BadRequest", "metadata is required".into()))?;
    let name = match (
        meta.get("name").and_then(Value::as_str),
        meta.get("generateName").and_then(Value::as_str),
    ) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(prefix)) => format!("{prefix}{:05x}", db.next_uid),
        _ => {
            return Err(status_error(
                422,
                "Invalid",
                "metadata.name: Required value".into(),
            ));
        }
    };
    let key = key_of(kind, namespace, &name);
    if db.objects.contains_key(&key) {
        return Err(status_error(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", kind.plural),
        ));
    }
    db.rv += 1;
    db.next_uid += 1;
    meta.insert("name".into(), json!(name));
    if kind.namespaced {
        meta.insert("namespace".into(), json!(namespace));
    }
    meta.insert(
        "uid".into(),
        json!(format!("00000000-0000-0000-0000-{:012}", db.next_uid)),
    );
    meta.insert("resourceVersion".into(), json!(db.rv.to_string()));
    meta.insert("generation".into(), json!(1));
    meta.insert("creationTimestamp".into(), json!(now()));
    let obj_map = obj.as_object_mut().expect("object");
    obj_map.insert("apiVersion".into(), json!(kind.api_version()));
    obj_map.insert("kind".into(), json!(kind.kind));
    if kind.status_subresource {
        obj_map.remove("status");
    }
    if kind.plural == "services" {
        default_service(&mut obj);
    }
    db.objects.insert(key, obj.clone());
    record(db, changes, kind, namespace, "ADDED", obj.clone());
    Ok(obj)
}

/// The defaults a real API server fills into a Service.
fn default_service(obj: &mut Value) {
    let spec = obj
        .as_object_mut()
        .expect("object")
        .entry("spec")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("spec is an object");
    spec.entry("type").or_insert(json!("ClusterIP"));
    spec.entry("sessionAffinity").or_insert(json!("None"));
    spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
    spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
    if spec.get("type") == Some(&json!("LoadBalancer")) {
        spec.entry("externalTrafficPolicy")
            .or_insert(json!("Cluster"));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports {
            if let Some(p) = port.as_object_mut() {
                p.entry("protocol").or_insert(json!("TCP"));
                let number = p.get("port").cloned().unwrap_or(json!(0));
                p.entry("targetPort").or_insert(number);
            }
        }
    }
}

fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    k8s_openapi::jiff::Timestamp::from_second(secs as i64)
        .expect("time")
        .to_string()
}

/// Stores `new` in place of `old` (same key) under subresource rules; no change,
/// no new resourceVersion.
fn commit(
    db: &mut Db,
    changes: &broadcast::Sender<Change>,
    t: &Target,
    old: &Value,
    mut new: Value,
) -> Value {
    if t.kind.plural == "services" {
        default_ip_mode(&mut new);
    }
    let obj = new.as_object_mut().expect("object");
    // Identity and bookkeeping are the server's.
    obj.insert(
        "metadata".into(),
        merge_meta(
            &old["metadata"],
            &obj.get("metadata").cloned().unwrap_or(json!({})),
        ),
    );
    obj.insert("apiVersion".into(), old["apiVersion"].clone());
    obj.insert("kind".into(), old["kind"].clone());
    if t.kind.status_subresource {
        if t.status {
            for (k, v) in old.as_object().expect("object") {
                if k != "status" {
                    obj.insert(k.clone(), v.clone());
                }
            }
        } else {
            match old.get("status") {
                Some(s) => obj.insert("status".into(), s.clone()),
                None => obj.remove("status"),
            };
        }
    }
    if new == *old {
        return new;
    }
    db.rv += 1;
    let meta = new["metadata"].as_object_mut().expect("metadata");
    meta.insert("resourceVersion".into(), json!(db.rv.to_string()));
    if old.get("spec") != new.get("spec") {
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        new["metadata"]["generation"] = json!(generation);
    }
    let name = new["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let key = key_of(t.kind, &t.namespace, &name);
    db.objects.insert(key.clone(), new.clone());
    if new["metadata"].get("deletionTimestamp").is_some() && !has_finalizers(&new) {
        // The last finalizer of a Terminating object is gone: so is the object.
        return remove(db, changes, t.kind, &t.namespace, key);
    }
    record(db, changes, t.kind, &t.namespace, "MODIFIED", new.clone());
    new
}

/// The real server defaults `ipMode` to `VIP` for an ingress with an `ip` of a
/// LoadBalancer Service.
fn default_ip_mode(svc: &mut Value) {
    if svc["spec"]["type"] != json!("LoadBalancer") {
        return;
    }
    if let Some(ingress) = svc
        .pointer_mut("/status/loadBalancer/ingress")
        .and_then(Value::as_array_mut)
    {
        for i in ingress.iter_mut().filter_map(Value::as_object_mut) {
            if i.contains_key("ip") {
                i.entry("ipMode").or_insert(json!("VIP"));
            }
        }
    }
}

/// Clients may change labels, annotations and the like, never identity.
fn merge_meta(old: &Value, new: &Value) -> Value {
    let mut out = new.as_object().cloned().unwrap_or_default();
    for fixed in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "generation",
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old.get(fixed) {
            Some(v) => out.insert(fixed.into(), v.clone()),
            None => out.remove(fixed),
        };
    }
    out.remove("managedFields");
    Value::Object(out)
}

fn update(
    db: &mut Db,
    changes: &broadcast::Sender<Change>,
    t: &Target,
    obj: Value,
    q: &BTreeMap<String, String>,
) -> Result<(StatusCode, Value), ApiError> {
    let old = get(db, t)?;
    if let Some(rv) = obj["metadata"]["resourceVersion"].as_str()
        && rv
            != old["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
    {
        return Err(conflict(t));
    }
    let new = commit(db, changes, t, &old, obj);
    take_ownership(db, t, &old, &new, q);
    Ok((StatusCode::OK, new))
}

/// The 409 a write gets when its `resourceVersion` is not the object's.
fn conflict(t: &Target) -> ApiError {
    status_error(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your \
             changes to the latest version and try again",
            t.kind.plural,
            t.name.as_deref().unwrap_or_default()
        ),
    )
}

/// Lists that a strategic-merge patch merges by a key instead of replacing,
/// by their path from the object's root; among the kinds served here only a
/// Service's ports are written that way.
const MERGE_KEYS: &[(&str, &str)] = &[("/spec/ports", "port")];

/// A strategic-merge patch (no `$patch` directives): a merge patch, except that
/// a keyed list's entries merge with the entry of the same key, and the
/// patch's entries come first, then the others in their old order.
fn strategic_merge(target: &mut Value, patch: &Value, path: &str) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let obj = target.as_object_mut().expect("object");
    for (k, v) in fields {
        let here = format!("{path}/{k}");
        let key = MERGE_KEYS.iter().find(|(p, _)| *p == here).map(|(_, k)| *k);
        match (v, obj.get_mut(k), key) {
            (Value::Null, _, _) => {
                obj.remove(k);
            }
            (Value::Array(new), Some(Value::Array(old)), Some(key)) => {
                let mut merged = Vec::new();
                for entry in new {
                    let mut e = old
                        .iter()
                        .find(|o| o.get(key) == entry.get(key))
                        .cloned()
                        .unwrap_or(json!({}));
                    strategic_merge(&mut e, entry, &here);
                    merged.push(e);
                }
                merged.extend(
                    old.iter()
                        .filter(|o| !new.iter().any(|n| n.get(key) == o.get(key)))
                        .cloned(),
                );
                *old = merged;
            }
            (Value::Object(_), Some(existing), _) => strategic_merge(existing, v, &here),
            _ => {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
}

fn patch(
    db: &mut Db,
    changes: &broadcast::Sender<Change>,
    t: &Target,
    body: &Bytes,
    content_type: &str,
    q: &BTreeMap<String, String>,
) -> Result<(StatusCode, Value), ApiError> {
    let name = t.name.clone().unwrap_or_default();
    if content_type.starts_with("application/apply-patch") {
        let applied = parse_body(body, content_type)?;
        let manager = q.get("fieldManager").cloned().ok_or_else(|| {
            status_error(422, "Invalid", "fieldManager is required for apply".into())
        })?;
        let force = q.get("force").map(String::as_str) == Some("true");
        let key = key_of(t.kind, &t.namespace, &name);
        let old = match db.objects.get(&key) {
            Some(o) => o.clone(),
            // Applying a new object needs its name in the body; an existing
            // one is named by the URL alone.
            None if applied["metadata"]["name"].as_str() != Some(name.as_str()) => {
                return Err(status_error(
                    400,
                    "BadRequest",
                    format!(
                        "the name of the object ({name} based on URL) was undeterminable: name must be provided"
                    ),
                ));
            }
            None => {
                let mut obj = applied.clone();
                obj["metadata"]["name"] = json!(name);
                let created = create(db, changes, t.kind, &t.namespace, obj)?;
                claim(db, &key, &applied, &manager);
                return Ok((StatusCode::CREATED, created));
            }
        };
        let mut conflicts = Vec::new();
        let owners = db.managers.get(&key).cloned().unwrap_or_default();
        let old_leaves: BTreeMap<String, Value> = leaves(&old).into_iter().collect();
        for (path, value) in leaves(&applied) {
            if let Some(owner) = owners.get(&path)
                && *owner != manager
                && old_leaves.get(&path) != Some(&value)
            {
                conflicts.push(format!("conflict with \"{owner}\": {path}"));
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(status_error(
                409,
                "Conflict",
                format!(
                    "Apply failed with {} conflict(s): {}",
                    conflicts.len(),
                    conflicts.join("; ")
                ),
            ));
        }
        let mut new = old.clone();
        json_patch::merge(&mut new, &applied);
        for path in SET_LISTS {
            if let (Some(Value::Array(mine)), Some(Value::Array(before))) =
                (applied.pointer(path), old.pointer(path))
            {
                // Each element is owned on its own: keep what another manager
                // owns, drop what only this one applied before and no longer
                // does, add what it applies now.
                let others = |e: &Value| {
                    owners
                        .get(&element_path(path, e))
                        .is_some_and(|o| *o != manager)
                };
                let mut merged: Vec<Value> = before
                    .iter()
                    .filter(|e| mine.contains(e) || others(e))
                    .cloned()
                    .collect();
                merged.extend(mine.iter().filter(|e| !before.contains(e)).cloned());
                if let Some(slot) = new.pointer_mut(path) {
                    *slot = Value::Array(merged);
                }
            }
        }
        let new = commit(db, changes, t, &old, new);
        claim(db, &key, &applied, &manager);
        let present: BTreeMap<String, Value> = leaves(&new).into_iter().collect();
        if let Some(owners) = db.managers.get_mut(&key) {
            owners.retain(|path, _| present.contains_key(path));
        }
        return Ok((StatusCode::OK, new));
    }
    let old = get(db, t)?;
    let mut new = old.clone();
    if content_type.starts_with("application/json-patch") {
        let ops: json_patch::Patch = serde_json::from_slice(body)
            .map_err(|e| status_error(400, "BadRequest", format!("bad JSON patch: {e}")))?;
        json_patch::patch(&mut new, &ops)
            .map_err(|e| status_error(422, "Invalid", format!("JSON patch failed: {e}")))?;
    } else if content_type.starts_with("application/merge-patch") {
        let p: Value = serde_json::from_slice(body)
            .map_err(|e| status_error(400, "BadRequest", format!("bad merge patch: {e}")))?;
        json_patch::merge(&mut new, &p);
    } else if content_type.starts_with("application/strategic-merge-patch") {
        if t.kind.group == "ironlb.dev" {
            // Custom resources carry no patch strategies: a real server refuses.
            return Err(status_error(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
                    .into(),
            ));
        }
        let p: Value = serde_json::from_slice(body).map_err(|e| {
            status_error(400, "BadRequest", format!("bad strategic merge patch: {e}"))
        })?;
        strategic_merge(&mut new, &p, "");
    } else {
        return Err(status_error(
            415,
            "UnsupportedMediaType",
            format!("unsupported patch type {content_type}"),
        ));
    }
    // A resourceVersion in the patch is a precondition, as on a real server.
    if let Some(rv) = new["metadata"]["resourceVersion"].as_str()
        && Some(rv) != old["metadata"]["resourceVersion"].as_str()
    {
        return Err(conflict(t));
    }
    let new = commit(db, changes, t, &old, new);
    take_ownership(db, t, &old, &new, q);
    Ok((StatusCode::OK, new))
}

fn claim(db: &mut Db, key: &ObjectKey, applied: &Value, manager: &str) {
    let owners = db.managers.entry(key.clone()).or_default();
    for (path, _) in leaves(applied) {
        owners.insert(path, manager.to_string());
    }
}

/// An update makes its manager the owner of every field it changed, and drops
/// ownership of fields it removed, as server-side apply's bookkeeping does.
fn take_ownership(db: &mut Db, t: &Target, old: &Value, new: &Value, q: &BTreeMap<String, String>) {
    let manager = q
        .get("fieldManager")
        .cloned()
        .unwrap_or_else(|| "before-first-apply".into());
    let key = key_of(t.kind, &t.namespace, t.name.as_deref().unwrap_or_default());
    let new_leaves: BTreeMap<String, Value> = leaves(new).into_iter().collect();
    let old_leaves: BTreeMap<String, Value> = leaves(old).into_iter().collect();
    let owners = db.managers.entry(key).or_default();
    owners.retain(|path, _| new_leaves.contains_key(path));
    for (path, value) in new_leaves {
        if old_leaves.get(&path) != Some(&value) {
            owners.insert(path, manager.clone());
        }
    }
}

/// Every leaf under `spec`, `status`, `data` and the like, as JSON pointers;
/// identity fields are not owned by anyone.
/// Lists of `x-kubernetes-list-type: set` in the kinds served here: server-side
/// apply owns each element on its own, so two managers' elements add up where
/// an atomic list would conflict.
const SET_LISTS: &[&str] = &["/spec/addresses"];

/// The field path of one element of a set list, as managed fields spell it.
fn element_path(list: &str, element: &Value) -> String {
    format!("{list}/v:{element}")
}

/// Every leaf field of an object but its identity, by path; a set list's
/// elements are leaves of their own. One manager owns a leaf here (a real
/// server lets several share one).
fn leaves(v: &Value) -> Vec<(String, Value)> {
    fn walk(path: String, v: &Value, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    walk(format!("{path}/{k}"), child, out);
                }
            }
            Value::Array(items) if SET_LISTS.contains(&path.as_str()) => {
                for item in items {
                    out.push((element_path(&path, item), Value::Bool(true)));
                }
            }
            other => out.push((path, other.clone())),
        }
    }
    let mut out = Vec::new();
    if let Some(m) = v.as_object() {
        for (k, child) in m {
            if !matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                walk(format!("/{k}"), child, &mut out);
            }
        }
    }
    out
}

/// Deletes an object; one with finalizers only gets its `deletionTimestamp`
/// (Terminating) and goes when the last finalizer is removed.
fn delete(db: &mut Db, changes: &broadcast::Sender<Change>, t: &Target) -> Result<Value, ApiError> {
    let name = t.name.as_deref().unwrap_or_default();
    let key = key_of(t.kind, &t.namespace, name);
    let mut obj = db
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| not_found(t.kind, name))?;
    if has_finalizers(&obj) {
        if obj["metadata"].get("deletionTimestamp").is_none() {
            db.rv += 1;
            obj["metadata"]["deletionTimestamp"] = json!(now());
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            obj["metadata"]["resourceVersion"] = json!(db.rv.to_string());
            db.objects.insert(key, obj.clone());
            record(db, changes, t.kind, &t.namespace, "MODIFIED", obj.clone());
        }
        return Ok(obj);
    }
    Ok(remove(db, changes, t.kind, &t.namespace, key))
}

fn has_finalizers(obj: &Value) -> bool {
    obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

fn remove(
    db: &mut Db,
    changes: &broadcast::Sender<Change>,
    kind: Kind,
    namespace: &str,
    key: ObjectKey,
) -> Value {
    let mut obj = db.objects.remove(&key).expect("the object exists");
    db.managers.remove(&key);
    db.rv += 1;
    obj["metadata"]["resourceVersion"] = json!(db.rv.to_string());
    record(db, changes, kind, namespace, "DELETED", obj.clone());
    obj
}

fn watch(
    shared: Arc<Shared>,
    t: Target,
    q: BTreeMap<String, String>,
    fields: Vec<FieldRequirement>,
) -> Response {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_secs)
        .unwrap_or(std::time::Duration::from_secs(300));
    let ends = shared.watches.lock().expect("watches").clone();
    let (plural, namespace) = (t.kind.plural, t.namespace.clone());
    let labels = q.get("labelSelector").cloned();
    // Selectors judge the object as the event carries it (the real server also
    // turns an object leaving a label selector into DELETED; nothing here
    // relabels a watched object, so that transition is not modelled).
    let selected = move |p: &str, ns: &str, object: &Value| {
        p == plural
            && (namespace.is_empty() || ns == namespace)
            && labels.as_deref().is_none_or(|s| labels_match(object, s))
            && fields_match(object, &fields)
    };
    let matches = {
        let selected = selected.clone();
        move |c: &Change| selected(c.plural, &c.namespace, &c.object)
    };
    // Read the backlog and subscribe under one lock, so nothing falls between.
    let (backlog, mut live, start) = {
        let db = shared.db.lock().expect("db");
        let live = shared.changes.subscribe();
        if from != 0 && from + 1 < db.oldest {
            let gone = json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from} ({})", db.oldest - 1),
                "reason": "Expired", "code": 410}});
            return Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(format!("{gone}\n")))
                .expect("response");
        }
        let backlog: Vec<Value> = if from == 0 {
            db.objects
                .iter()
                .filter(|((p, ns, _), o)| selected(p, ns, o))
                .map(|(_, o)| json!({"type": "ADDED", "object": o}))
                .collect()
        } else {
            db.history
                .iter()
                .filter(|c| c.rv > from && matches(c))
                .map(|c| json!({"type": c.type_, "object": c.object}))
                .collect()
        };
        (backlog, live, db.rv.max(from))
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1024);
    tokio::spawn(async move {
        for line in backlog {
            if tx.send(Ok(Bytes::from(format!("{line}\n")))).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = ends.cancelled() => return,
                _ = &mut deadline => return,
                change = live.recv() => match change {
                    Ok(c) if c.rv > start && matches(&c) => {
                        let line = json!({"type": c.type_, "object": c.object});
                        if tx.send(Ok(Bytes::from(format!("{line}\n")))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // A reader too slow for the channel must resume, as from a real server.
                    Err(_) => return,
                },
            }
        }
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("response")
}
