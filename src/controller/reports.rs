//! What the controller keeps in order on the speakers' behalf, since a
//! speaker may write only its own node's objects:
//!
//! - **Superseded layer-2 reports.** One node announces an address at a
//!   time; a node that stops announcing deletes its own `ServiceL2Status`,
//!   but one that died cannot, and the node that took over may not touch
//!   another node's report. Of a Service's reports from several nodes, all
//!   but the one written last are removed.
//! - **The Secrets speakers may read.** With `deploy/components/bgp`, the
//!   Role `ironlb-speaker-bgp-passwords` grants the speakers exactly the
//!   Secrets `BGPPeer`s name as `passwordSecret` (by `resourceNames`), so a
//!   compromised node reads no other Secret of ironlb's namespace.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{PolicyRule, Role};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{BGPPeer, ServiceL2Status};
use crate::k8s::{self, Fence, Woken, cache_all};

/// The Role whose rules the controller keeps equal to the Secrets BGPPeers
/// name; `deploy/` binds it to the speakers' ServiceAccount.
pub const PASSWORD_ROLE: &str = "ironlb-speaker-bgp-passwords";

/// The field manager of these writes.
const FIELD_MANAGER: &str = "ironlb-controller";

/// The reports (namespace, name) whose every address a newer report of the
/// same Service from another node claims. "Newer" is the last write the API
/// server stamped (`managedFields` times, else the creation time): one
/// clock, the server's. Per address, since a dual-stack Service's two
/// addresses may well be announced by two nodes at once.
pub fn superseded(reports: &[&ServiceL2Status]) -> Vec<(String, String)> {
    let mut by_service: BTreeMap<(String, &str), Vec<&ServiceL2Status>> = BTreeMap::new();
    for r in reports {
        by_service
            .entry((r.namespace().unwrap_or_default(), r.spec.service.as_str()))
            .or_default()
            .push(r);
    }
    let mut out = Vec::new();
    for ((namespace, _), of_service) in by_service {
        for r in &of_service {
            let newer = |a: &String| {
                of_service.iter().any(|o| {
                    o.spec.node != r.spec.node
                        && o.spec.addresses.contains(a)
                        && (last_written(o), &o.spec.node) > (last_written(r), &r.spec.node)
                })
            };
            if !r.spec.addresses.is_empty() && r.spec.addresses.iter().all(newer) {
                out.push((namespace.clone(), r.name_any()));
            }
        }
    }
    out
}

fn last_written(r: &ServiceL2Status) -> Option<Time> {
    let meta = &r.metadata;
    meta.managed_fields
        .iter()
        .flatten()
        .filter_map(|f| f.time.clone())
        .chain(meta.creation_timestamp.clone())
        .max_by_key(|t| t.0)
}

/// The rules of [`PASSWORD_ROLE`]: `get`, `list` and `watch` on the Secrets
/// of `namespace` that `peers` name, by name. None when no peer names one:
/// a rule with empty `resourceNames` would grant every Secret.
pub fn password_rules(peers: &[&BGPPeer], namespace: &str) -> Vec<PolicyRule> {
    let names = crate::bgp::config::password_secrets(peers, namespace);
    if names.is_empty() {
        return Vec::new();
    }
    vec![PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["secrets".into()]),
        resource_names: Some(names.into_iter().collect()),
        verbs: vec!["get".into(), "list".into(), "watch".into()],
        non_resource_urls: None,
    }]
}

/// Keeps both in order while this replica leads, until `shutdown`.
pub async fn run(
    client: Client,
    namespace: String,
    fence: Option<Fence>,
    shutdown: CancellationToken,
) {
    let wake = Arc::new(Notify::new());
    let reports = cache_all::<ServiceL2Status>(&client, &wake, &shutdown);
    if reports.wait_until_ready().await.is_err() {
        warn!("the ServiceL2Status cache did not fill; superseded reports are not removed");
        return;
    }
    let mut role = PasswordRole::new(&client, namespace);
    loop {
        let report_state = reports.state();
        let stale = superseded(&report_state.iter().map(AsRef::as_ref).collect::<Vec<_>>());
        role.look_for_grant(&client, &wake, &shutdown).await;
        let rules = role.due();
        if !stale.is_empty() || rules.is_some() {
            match &fence {
                Some(fence) if let Err(why) = fence.check(&client).await => {
                    warn!(%why, "not tidying reports: this replica cannot be sure it leads");
                }
                _ => {
                    remove(&client, stale).await;
                    if let Some(rules) = rules {
                        role.write(rules).await;
                    }
                }
            }
        }
        // A Role changed by hand is put right within a minute.
        match k8s::next_pass(&wake, Some(Duration::from_secs(60)), &shutdown).await {
            None => return,
            Some(Woken::Idle) => role.forget(),
            Some(Woken::Changed) => {}
        }
    }
}

/// Deletes the reports `stale` names (ones already gone are fine).
async fn remove(client: &Client, stale: Vec<(String, String)>) {
    for (ns, name) in stale {
        let api: Api<ServiceL2Status> = Api::namespaced(client.clone(), &ns);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => info!(namespace = %ns, %name, "removed a report another node's supersedes"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => warn!(namespace = %ns, %name, error = %e, "removing a superseded report"),
        }
    }
}

/// [`PASSWORD_ROLE`] as the controller keeps it. The grant to keep it is an
/// optional part of the install (deploy/components/bgp): looked for at once,
/// then each minute until found; only then are the BGPPeers watched.
struct PasswordRole {
    roles: Api<Role>,
    namespace: String,
    peers: Option<Store<BGPPeer>>,
    /// When to ask again whether the grant is there.
    next_look: tokio::time::Instant,
    said_absent: bool,
    /// The rules last written; `None`: write them whatever they are.
    written: Option<Vec<PolicyRule>>,
    /// After a failed write, the next try waits: a pass runs on every
    /// report change.
    retry: tokio::time::Instant,
}

impl PasswordRole {
    fn new(client: &Client, namespace: String) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            roles: Api::namespaced(client.clone(), &namespace),
            namespace,
            peers: None,
            next_look: now,
            said_absent: false,
            written: None,
            retry: now,
        }
    }

    /// Starts watching the BGPPeers once this controller may keep the Role.
    async fn look_for_grant(
        &mut self,
        client: &Client,
        wake: &Arc<Notify>,
        shutdown: &CancellationToken,
    ) {
        if self.peers.is_some() || tokio::time::Instant::now() < self.next_look {
            return;
        }
        self.next_look = tokio::time::Instant::now() + Duration::from_secs(60);
        if may_grant_passwords(client, &self.namespace).await {
            info!(
                role = PASSWORD_ROLE,
                "granting the speakers the Secrets BGPPeers name"
            );
            self.peers = Some(cache_all::<BGPPeer>(client, wake, shutdown));
        } else if !self.said_absent {
            info!(
                "BGP password Secrets are not granted to the speakers (deploy/components/bgp is \
                 not installed); BGPPeers with a passwordSecret need it"
            );
            self.said_absent = true;
        }
    }

    /// The rules to write now, if the Role is kept and they changed. Peers
    /// are not waited for: a cluster whose CRDs predate BGP has none.
    fn due(&self) -> Option<Vec<PolicyRule>> {
        let peers = self.peers.as_ref()?.state();
        let rules = password_rules(
            &peers.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            &self.namespace,
        );
        (self.written.as_ref() != Some(&rules) && tokio::time::Instant::now() >= self.retry)
            .then_some(rules)
    }

    async fn write(&mut self, rules: Vec<PolicyRule>) {
        let patch = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": PASSWORD_ROLE, "namespace": self.namespace},
            "rules": rules,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match self
            .roles
            .patch(PASSWORD_ROLE, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => self.written = Some(rules),
            Err(e) => {
                warn!(
                    role = PASSWORD_ROLE,
                    error = %e,
                    "cannot grant the speakers the BGP password Secrets; retrying in 30 s"
                );
                self.retry = tokio::time::Instant::now() + Duration::from_secs(30);
            }
        }
    }

    /// Writes the rules on the next pass even if unchanged here.
    fn forget(&mut self) {
        self.written = None;
    }
}

/// Whether this controller may keep [`PASSWORD_ROLE`] (asked of the API
/// server itself: the grant comes with deploy/components/bgp).
async fn may_grant_passwords(client: &Client, namespace: &str) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.into()),
                verb: Some("patch".into()),
                group: Some("rbac.authorization.k8s.io".into()),
                resource: Some("roles".into()),
                name: Some(PASSWORD_ROLE.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&Default::default(), &review)
        .await
        .ok()
        .and_then(|r| r.status)
        .is_some_and(|s| s.allowed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ServiceL2StatusSpec;
    use k8s_openapi::jiff::Timestamp;

    fn report(service: &str, node: &str, written: i64) -> ServiceL2Status {
        report_of(service, node, "10.0.0.1", written)
    }

    fn report_of(service: &str, node: &str, address: &str, written: i64) -> ServiceL2Status {
        let mut r = ServiceL2Status::new(
            &format!("{service}-{node}"),
            ServiceL2StatusSpec {
                service: service.into(),
                node: node.into(),
                addresses: vec![address.into()],
                interfaces: vec!["eth0".into()],
            },
        );
        r.metadata.namespace = Some("apps".into());
        r.metadata.creation_timestamp =
            Some(Time(Timestamp::from_second(written).expect("a time")));
        r
    }

    #[test]
    fn of_one_services_reports_only_the_last_written_stays() {
        let (old, new, other) = (
            report("web", "node-a", 100),
            report("web", "node-b", 200),
            report("db", "node-a", 50),
        );
        assert_eq!(
            superseded(&[&new, &old, &other]),
            [("apps".to_string(), "web-node-a".to_string())]
        );
        assert!(superseded(&[&old, &other]).is_empty(), "one report each");
        // A later write of the old one (it announces again) makes it the newest.
        let mut rewritten = old.clone();
        rewritten.metadata.managed_fields = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                manager: Some("ironlb-speaker".into()),
                time: Some(Time(Timestamp::from_second(300).expect("a time"))),
                ..Default::default()
            },
        ]);
        assert_eq!(
            superseded(&[&new, &rewritten]),
            [("apps".to_string(), "web-node-b".to_string())]
        );
        // A dual-stack Service's two addresses on two nodes: both stay.
        let v6 = report_of("web", "node-c", "fd00::1", 400);
        assert!(superseded(&[&old, &v6]).is_empty());
        assert_eq!(
            superseded(&[&old, &v6, &new]),
            [("apps".to_string(), "web-node-a".to_string())]
        );
    }

    #[test]
    fn the_role_names_exactly_the_secrets_peers_use_and_never_none() {
        let peer = |name: &str, secret: Option<(&str, Option<&str>)>| -> BGPPeer {
            let mut spec =
                serde_json::json!({"myASN": 64512, "peerASN": 64513, "peerAddress": "10.0.0.1"});
            if let Some((secret, ns)) = secret {
                spec["passwordSecret"] = serde_json::json!({"name": secret, "namespace": ns});
            }
            BGPPeer::new(name, serde_json::from_value(spec).expect("a peer"))
        };
        let (a, b, c, d, e) = (
            peer("a", Some(("pw-1", None))),
            peer("b", Some(("pw-1", Some("ironlb-system")))),
            peer("c", Some(("pw-2", Some("ironlb-system")))),
            peer("d", Some(("elsewhere", Some("kube-system")))),
            peer("e", None),
        );
        let rules = password_rules(&[&a, &b, &c, &d, &e], "ironlb-system");
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].resource_names.as_deref(),
            Some(&["pw-1".to_string(), "pw-2".to_string()][..])
        );
        assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
        assert!(
            password_rules(&[&d, &e], "ironlb-system").is_empty(),
            "no rule rather than one with empty resourceNames (every Secret)"
        );
    }
}
