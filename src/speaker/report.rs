//! What a speaker tells the cluster: `ServiceL2Status` objects and events on
//! the Services. Written off the announcement path: an unreachable API server
//! delays reports, never announcements.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use crate::ipam::ServiceKey;
use crate::k8s::apply::gone_is_fine;

/// What a speaker tells the cluster about its announcements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// This node now announces `address` for `services` on `interfaces`.
    Announcing {
        /// The address.
        address: IpAddr,
        /// The Services on it.
        services: Vec<ServiceKey>,
        /// Where it is announced.
        interfaces: Vec<String>,
    },
    /// This node no longer announces `address`.
    Withdrawn {
        /// The address.
        address: IpAddr,
        /// The Services that were on it.
        services: Vec<ServiceKey>,
    },
    /// This node owns an address of `service` but can't forward it as asked.
    NotForwarded {
        /// The Service.
        service: ServiceKey,
        /// Why, naming the annotation or field.
        message: String,
    },
    /// This node advertises `address` for `services` over BGP to `peers`.
    BgpAdvertising {
        /// The address.
        address: IpAddr,
        /// The Services on it.
        services: Vec<ServiceKey>,
        /// The `BGPPeer`s it goes to.
        peers: Vec<String>,
    },
    /// This node no longer advertises `address` over BGP.
    BgpWithdrawn {
        /// The address.
        address: IpAddr,
        /// The Services that were on it.
        services: Vec<ServiceKey>,
    },
    /// A BGP object cannot be used as written: a warning event on it.
    BgpProblem(super::view::BgpProblem),
    /// A BGP session of this node changed (`None`: it is no longer
    /// configured).
    BgpSession {
        /// The `BGPPeer`'s name.
        peer: String,
        /// The router's address.
        peer_address: IpAddr,
        /// What the session says now.
        status: Option<BgpSessionStatus>,
    },
    /// This node would announce `address` but cannot serve it, so it leaves
    /// it to another node.
    GaveUp {
        /// The address.
        address: IpAddr,
        /// The Services on it.
        services: Vec<ServiceKey>,
        /// Why it cannot serve it.
        reason: String,
    },
}

/// A BGP session's state, as `BGPSessionState` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpSessionStatus {
    /// The RFC 4271 state.
    pub state: String,
    /// The BFD state, with BFD.
    pub bfd: Option<String>,
    /// When the session reached its state.
    pub since: std::time::SystemTime,
    /// Why it last failed.
    pub last_error: Option<String>,
    /// Prefixes advertised.
    pub prefixes_sent: u64,
}

impl Report {
    /// What a later report supersedes: the address, or the Service's problem.
    fn key(&self) -> String {
        match self {
            Report::Announcing { address, .. } | Report::Withdrawn { address, .. } => {
                address.to_string()
            }
            Report::NotForwarded { service, message } => format!("{service} {message}"),
            Report::GaveUp { address, .. } => format!("{address} given up"),
            Report::BgpSession { peer, .. } => format!("bgp {peer}"),
            Report::BgpProblem(p) => format!("{} {} {}", p.kind, p.name, p.message),
            Report::BgpAdvertising { address, .. } | Report::BgpWithdrawn { address, .. } => {
                format!("bgp {address}")
            }
        }
    }
}

/// Writes [`Report`]s as `ServiceL2Status` objects and events on the Services.
/// Runs off the announcement path: an unreachable API server delays reports,
/// never announcements.
struct ClusterReporter {
    client: kube::Client,
    node: String,
    recorder: kube::runtime::events::Recorder,
}

impl ClusterReporter {
    fn new(client: kube::Client, node: String) -> Self {
        let recorder = kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "ironlb-speaker".into(),
                instance: Some(node.clone()),
            },
        );
        Self {
            client,
            node,
            recorder,
        }
    }

    /// Writes one report; false when a write must be tried again.
    async fn report(&self, report: &Report) -> bool {
        match report {
            Report::BgpSession {
                peer,
                peer_address,
                status,
            } => self.session(peer, *peer_address, status.as_ref()).await,
            Report::BgpAdvertising {
                address,
                services,
                peers,
            } => self.advertising(*address, services, Some(peers)).await,
            Report::BgpWithdrawn { address, services } => {
                self.advertising(*address, services, None).await
            }
            Report::BgpProblem(p) => self.bgp_problem(p).await,
            Report::Announcing {
                address,
                services,
                interfaces,
            } => {
                self.announcement(*address, services, Some(interfaces))
                    .await
            }
            Report::Withdrawn { address, services } => {
                self.announcement(*address, services, None).await
            }
            Report::NotForwarded { service, message } => {
                let note = format!("node {}: {message}", self.node);
                self.warn(service, "NotForwarded", "Forward", note).await
            }
            Report::GaveUp {
                address,
                services,
                reason,
            } => {
                let note = format!(
                    "node {} cannot serve {address} ({reason}); another node announces it",
                    self.node
                );
                let mut landed = true;
                for service in services {
                    landed &= self
                        .warn(service, "AddressGivenUp", "Announce", note.clone())
                        .await;
                }
                landed
            }
        }
    }

    /// This node's ServiceL2Status for each of `services`: written with the
    /// `interfaces` announcing `address`, deleted without; and an event.
    async fn announcement(
        &self,
        address: IpAddr,
        services: &[ServiceKey],
        interfaces: Option<&Vec<String>>,
    ) -> bool {
        use crate::api::l2status::{NODE_LABEL, SERVICE_NAME_LABEL};
        use crate::api::{ServiceL2Status, ServiceL2StatusSpec};
        use kube::api::{DeleteParams, Patch, PatchParams};
        use kube::runtime::events::{Event, EventType};

        let mut landed = true;
        for svc in services {
            let api: kube::Api<ServiceL2Status> =
                kube::Api::namespaced(self.client.clone(), &svc.namespace);
            let name = format!("{}-{}", svc.name, self.node);
            let result = match interfaces {
                Some(interfaces) => {
                    let mut status = ServiceL2Status::new(
                        &name,
                        ServiceL2StatusSpec {
                            service: svc.name.clone(),
                            node: self.node.clone(),
                            addresses: vec![address.to_string()],
                            interfaces: interfaces.clone(),
                        },
                    );
                    status.metadata.labels = Some(
                        [
                            (SERVICE_NAME_LABEL.to_string(), svc.name.clone()),
                            (NODE_LABEL.to_string(), self.node.clone()),
                        ]
                        .into(),
                    );
                    // A dead node's report of the same Service is the
                    // controller's to remove: a speaker may write only its
                    // own node's (the policy ironlb-speaker-writes-own-node).
                    api.patch(
                        &name,
                        &PatchParams::apply("ironlb-speaker").force(),
                        &Patch::Apply(&status),
                    )
                    .await
                    .map(|_| ())
                }
                None => gone_is_fine(api.delete(&name, &DeleteParams::default()).await),
            };
            if let Err(e) = result {
                warn!(service = %svc, error = %e, "reporting the announcement; will retry");
                landed = false;
                // The event waits for the status write, so a retry does not
                // repeat it.
                continue;
            }
            let (reason, note) = match interfaces {
                Some(i) => (
                    "Announcing",
                    format!("node {} announces {address} on {}", self.node, i.join(", ")),
                ),
                None => (
                    "Withdrawn",
                    format!("node {} no longer announces {address}", self.node),
                ),
            };
            let event = Event {
                type_: EventType::Normal,
                reason: reason.into(),
                note: Some(note),
                action: "Announce".into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, &service_reference(svc)).await {
                warn!(service = %svc, error = %e, "recording an event");
            }
        }
        landed
    }
}

impl ClusterReporter {
    /// A warning event on the BGP object concerned (cluster-scoped: the
    /// event goes to the `default` namespace, as for Nodes).
    async fn bgp_problem(&self, p: &super::view::BgpProblem) -> bool {
        use kube::runtime::events::{Event, EventType};
        let event = Event {
            type_: EventType::Warning,
            reason: "InvalidConfiguration".into(),
            note: Some(format!("node {}: {}", self.node, p.message)),
            action: "Configure".into(),
            secondary: None,
        };
        let regarding = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(format!("{}/v1alpha1", crate::api::GROUP)),
            kind: Some(p.kind.into()),
            name: Some(p.name.clone()),
            ..Default::default()
        };
        match self.recorder.publish(&event, &regarding).await {
            Ok(()) => true,
            Err(e) => {
                warn!(object = %p.name, error = %e, "recording an event; will retry");
                false
            }
        }
    }

    /// Writes (with `peers`) or deletes this node's `ServiceBGPStatus` of
    /// each of `services`; false when a write must be tried again.
    async fn advertising(
        &self,
        address: IpAddr,
        services: &[ServiceKey],
        peers: Option<&Vec<String>>,
    ) -> bool {
        use crate::api::bgp::BGP_NODE_LABEL;
        use crate::api::l2status::SERVICE_NAME_LABEL;
        use crate::api::{ServiceBGPStatus, ServiceBGPStatusSpec};
        use kube::api::{DeleteParams, Patch, PatchParams};
        let mut landed = true;
        for svc in services {
            let api: kube::Api<ServiceBGPStatus> =
                kube::Api::namespaced(self.client.clone(), &svc.namespace);
            let name = format!("{}-{}", svc.name, self.node);
            let result = match peers {
                Some(peers) => {
                    let mut status = ServiceBGPStatus::new(
                        &name,
                        ServiceBGPStatusSpec {
                            service: svc.name.clone(),
                            node: self.node.clone(),
                            peers: peers.clone(),
                            addresses: vec![address.to_string()],
                        },
                    );
                    status.metadata.labels = Some(
                        [
                            (SERVICE_NAME_LABEL.to_string(), svc.name.clone()),
                            (BGP_NODE_LABEL.to_string(), self.node.clone()),
                        ]
                        .into(),
                    );
                    api.patch(
                        &name,
                        &PatchParams::apply("ironlb-speaker").force(),
                        &Patch::Apply(&status),
                    )
                    .await
                    .map(|_| ())
                }
                None => gone_is_fine(api.delete(&name, &DeleteParams::default()).await),
            };
            if let Err(e) = result {
                warn!(service = %svc, error = %e, "reporting the BGP advertisement; will retry");
                landed = false;
            }
        }
        landed
    }

    /// Writes (or deletes) this node's `BGPSessionState` for `peer`; false
    /// when it must be tried again.
    async fn session(
        &self,
        peer: &str,
        peer_address: IpAddr,
        status: Option<&BgpSessionStatus>,
    ) -> bool {
        use crate::api::bgp::{BGP_NODE_LABEL, BGP_PEER_LABEL};
        use crate::api::{BGPSessionState, BGPSessionStateSpec};
        use kube::api::{DeleteParams, Patch, PatchParams};
        let api: kube::Api<BGPSessionState> = kube::Api::all(self.client.clone());
        let name = format!("{peer}-{}", self.node);
        let Some(status) = status else {
            return match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => true,
                Err(kube::Error::Api(e)) if e.code == 404 => true,
                Err(e) => {
                    warn!(%peer, error = %e, "removing the BGP session report; will retry");
                    false
                }
            };
        };
        let mut object = BGPSessionState::new(
            &name,
            BGPSessionStateSpec {
                node: self.node.clone(),
                peer: peer.to_string(),
                peer_address: peer_address.to_string(),
            },
        );
        object.metadata.labels = Some(
            [
                (BGP_NODE_LABEL.to_string(), self.node.clone()),
                (BGP_PEER_LABEL.to_string(), peer.to_string()),
            ]
            .into(),
        );
        let params = PatchParams::apply("ironlb-speaker").force();
        let since = k8s_openapi::jiff::Timestamp::try_from(status.since)
            .ok()
            .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time);
        let patch = serde_json::json!({
            "apiVersion": "ironlb.dev/v1alpha1",
            "kind": "BGPSessionState",
            "status": crate::api::BGPSessionStateStatus {
                state: status.state.clone(),
                bfd_state: status.bfd.clone(),
                since,
                last_error: status.last_error.clone(),
                prefixes_sent: status.prefixes_sent,
            },
        });
        let result = async {
            api.patch(&name, &params, &Patch::Apply(&object)).await?;
            api.patch_status(&name, &params, &Patch::Apply(&patch))
                .await
        }
        .await;
        match result {
            Ok(_) => true,
            Err(e) => {
                warn!(%peer, error = %e, "reporting the BGP session; will retry");
                false
            }
        }
    }

    /// Records a warning event on `service`; false when it must be tried again.
    async fn warn(&self, service: &ServiceKey, reason: &str, action: &str, note: String) -> bool {
        use kube::runtime::events::{Event, EventType};
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        match self
            .recorder
            .publish(&event, &service_reference(service))
            .await
        {
            Ok(()) => true,
            Err(e) => {
                warn!(%service, error = %e, "recording an event; will retry");
                false
            }
        }
    }
}

fn service_reference(svc: &ServiceKey) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some(svc.name.clone()),
        namespace: Some(svc.namespace.clone()),
        ..Default::default()
    }
}

/// Starts writing the reports sent on the returned channel for `node`. Reports
/// that did not land (API server unreachable or overloaded) are tried again
/// every two seconds; a newer report about the same address or Service
/// replaces an older one still waiting. The task ends when the sender is
/// dropped and what it holds was tried once more.
pub fn spawn(
    client: kube::Client,
    node: String,
) -> (mpsc::UnboundedSender<Report>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Report>();
    let reporter = ClusterReporter::new(client, node);
    let worker = tokio::spawn(async move {
        let mut pending: BTreeMap<String, Report> = BTreeMap::new();
        loop {
            tokio::select! {
                received = rx.recv() => {
                    let Some(r) = received else { break };
                    let key = r.key();
                    pending.remove(&key);
                    if !reporter.report(&r).await {
                        pending.insert(key, r);
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(2)), if !pending.is_empty() => {
                    for (key, r) in std::mem::take(&mut pending) {
                        if !reporter.report(&r).await {
                            pending.insert(key, r);
                        }
                    }
                }
            }
        }
    });
    (tx, worker)
}
