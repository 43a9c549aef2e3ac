//! Where a speaker's view comes from: a static file, watched for changes, or
//! the cluster's objects, watched and kept in caches. Either way it ends as
//! [`Sources`] for [`super::run`].

use std::time::Duration;

use k8s_openapi::api::core::v1::Node as K8sNode;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::{Forwards, StaticConfig};
use super::{Desired, Sources, Speaker, report, view};
use crate::membership;

/// Runs a speaker from a static configuration until `shutdown`, then withdraws
/// every address and leaves the group. When `path` is given, the file is read
/// again whenever it changes: addresses, services and endpoints follow it
/// (gossip settings need a restart); a file that no longer parses is logged
/// and the last good one stays.
pub async fn run_static(
    config: StaticConfig,
    path: Option<String>,
    node: String,
    http: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
    handover: Option<crate::handover::Handover>,
) -> std::io::Result<()> {
    let desired_of = |c: &StaticConfig| Desired {
        announcements: c.announcements(),
        forwards: Forwards {
            frontends: c.frontends(),
            invalid: Vec::new(),
        },
        node_objects: Vec::new(),
        bgp_peers: c.bgp_peers(),
    };
    let (desired_tx, desired) = watch::channel(desired_of(&config));
    if let Some(path) = path {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let modified = |p: &str| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut seen = modified(&path);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                let now = modified(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                match StaticConfig::load(&path) {
                    Ok(c) => {
                        info!(%path, "configuration reloaded");
                        desired_tx.send_replace(desired_of(&c));
                    }
                    Err(e) => {
                        warn!(error = %e, "configuration not reloaded; keeping the last good one")
                    }
                }
            }
        });
    }
    let gossip = membership::Config::lan(
        node.clone(),
        membership::keys_from(config.gossip.secret.as_bytes()),
        config.gossip.seeds.clone(),
    );
    let speaker = Speaker {
        node,
        listen: config.gossip.listen,
        gossip,
        timing: config.timing(),
        forwarding: config.forwarder.settings(),
    };
    let sources = Sources {
        desired,
        cluster: false,
    };
    super::run(speaker, sources, http, None, shutdown, handover).await
}

/// Runs a speaker whose view comes from the cluster: Services with addresses,
/// pools, L2Advertisements, EndpointSlices and Nodes, watched and kept in
/// caches. When the API server is unreachable the caches keep the last view,
/// and announcement and failover go on from the gossip membership.
pub async fn run_kubernetes(
    client: kube::Client,
    speaker: Speaker,
    default_class: bool,
    http: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
    handover: Option<crate::handover::Handover>,
) -> std::io::Result<()> {
    use crate::api::{IPAddressPool, L2Advertisement};
    use crate::controller::cache;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::Api;

    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let services = cache::<Service>(Api::all(client.clone()), wake.clone(), shutdown.clone());
    let pools = cache::<IPAddressPool>(Api::all(client.clone()), wake.clone(), shutdown.clone());
    let ads = cache::<L2Advertisement>(Api::all(client.clone()), wake.clone(), shutdown.clone());
    let slices = cache::<EndpointSlice>(Api::all(client.clone()), wake.clone(), shutdown.clone());
    // The BGP kinds are not waited for: a cluster whose CRDs predate them
    // keeps announcing over layer 2 (their watchers log and retry).
    let bgp_peers =
        cache::<crate::api::BGPPeer>(Api::all(client.clone()), wake.clone(), shutdown.clone());
    let bgp_ads = cache::<crate::api::BGPAdvertisement>(
        Api::all(client.clone()),
        wake.clone(),
        shutdown.clone(),
    );
    let bfd_profiles =
        cache::<crate::api::BFDProfile>(Api::all(client.clone()), wake.clone(), shutdown.clone());
    let communities =
        cache::<crate::api::Community>(Api::all(client.clone()), wake.clone(), shutdown.clone());
    // TCP MD5 passwords: Secrets of the speaker's own namespace only.
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "ironlb-system".into());
    let secrets = cache::<k8s_openapi::api::core::v1::Secret>(
        Api::namespaced(client.clone(), &namespace),
        wake.clone(),
        shutdown.clone(),
    );
    let restarting = handover.as_ref().is_some_and(|h| h.taken.is_some());
    let report_client = client.clone();
    let nodes = cache::<K8sNode>(Api::all(client), wake.clone(), shutdown.clone());
    let (desired_tx, desired) = watch::channel(Desired::default());
    let (report_tx, worker) = report::spawn(report_client, speaker.node.clone());
    let problem_tx = report_tx.clone();
    let feeder_stop = shutdown.clone();
    tokio::spawn(async move {
        for ready in [
            services.wait_until_ready().await,
            pools.wait_until_ready().await,
            ads.wait_until_ready().await,
            slices.wait_until_ready().await,
            nodes.wait_until_ready().await,
        ] {
            if ready.is_err() {
                warn!("a cluster cache could not be filled; announcing nothing from the cluster");
                return;
            }
        }
        info!("cluster view ready");
        let mut first = true;
        let mut said: Vec<view::BgpProblem> = Vec::new();
        loop {
            let (svc, pl, ad, sl) = (services.state(), pools.state(), ads.state(), slices.state());
            let (bp, ba, bf, co, se) = (
                bgp_peers.state(),
                bgp_ads.state(),
                bfd_profiles.state(),
                communities.state(),
                secrets.state(),
            );
            let view = view::ClusterView {
                services: svc.iter().map(AsRef::as_ref).collect(),
                pools: pl.iter().map(AsRef::as_ref).collect(),
                advertisements: ad.iter().map(AsRef::as_ref).collect(),
                slices: sl.iter().map(AsRef::as_ref).collect(),
                default_class,
                bgp: view::BgpObjects {
                    peers: bp.iter().map(AsRef::as_ref).collect(),
                    advertisements: ba.iter().map(AsRef::as_ref).collect(),
                    bfd_profiles: bf.iter().map(AsRef::as_ref).collect(),
                    communities: co.iter().map(AsRef::as_ref).collect(),
                    secrets: se.iter().map(AsRef::as_ref).collect(),
                },
            };
            let (frontends, invalid) = view::frontends(&view);
            let (peers, mut problems) = view::bgp_peers(&view, restarting);
            problems.extend(view::bgp_advertisement_problems(&view));
            if problems != said {
                for p in problems.iter().filter(|p| !said.contains(p)) {
                    warn!(problem = %p.message, "BGP object not used as written");
                    let _ = problem_tx.send(report::Report::BgpProblem(p.clone()));
                }
                said = problems;
            }
            let now = Desired {
                announcements: view::announcements(&view),
                forwards: Forwards { frontends, invalid },
                node_objects: nodes.state().iter().map(|n| (**n).clone()).collect(),
                bgp_peers: peers,
            };
            // The first value is always sent, even for an empty cluster: it
            // tells `run` that the view is synced and the speaker may join
            // the group.
            desired_tx.send_if_modified(|current| {
                let changed = first || *current != now;
                if changed {
                    *current = now;
                }
                changed
            });
            first = false;
            tokio::select! {
                _ = feeder_stop.cancelled() => return,
                _ = wake.notified() => {}
            }
            // Let a burst of events land before looking again.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let sources = Sources {
        desired,
        cluster: true,
    };
    let result = super::run(speaker, sources, http, Some(report_tx), shutdown, handover).await;
    // The last reports (withdrawals) go out before the process ends, if the
    // API server answers in time.
    let _ = tokio::time::timeout(Duration::from_secs(3), worker).await;
    result
}
