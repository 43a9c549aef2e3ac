//! Where a speaker's view comes from: a static file, watched for changes, or
//! the cluster's objects, watched and kept in caches. Either way it ends as
//! [`Sources`] for [`super::run`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node as K8sNode;
use kube::runtime::reflector::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::{Forwards, StaticConfig};
use super::{Desired, Sources, Speaker, report, view};
use crate::ipam::ServiceKey;
use crate::k8s::Touched;
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
        announcements: view::by_address(c.announcements()),
        forwards: Forwards::new(c.frontends(), Vec::new()),
        node_objects: Default::default(),
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
        forwarding: config
            .forwarder
            .settings(crate::forwarder::open_file_limit()),
    };
    let sources = Sources {
        desired,
        cluster: false,
    };
    super::run(speaker, sources, http, None, shutdown, handover).await
}

/// What a speaker reads from the cluster besides its core kinds.
#[derive(Clone, Copy, Debug)]
pub struct ClusterOptions {
    /// Serve Services without a `loadBalancerClass`.
    pub default_class: bool,
    /// Forward Gateways' routes, computed from the Gateway API objects.
    pub gateway: bool,
}

/// Runs a speaker whose view comes from the cluster: Services with addresses,
/// pools, L2Advertisements, EndpointSlices and Nodes, watched and kept in
/// caches. When the API server is unreachable the caches keep the last view,
/// and announcement and failover go on from the gossip membership.
pub async fn run_kubernetes(
    client: kube::Client,
    speaker: Speaker,
    options: ClusterOptions,
    http: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
    handover: Option<crate::handover::Handover>,
) -> std::io::Result<()> {
    let wake = Arc::new(tokio::sync::Notify::new());
    let caches = ClusterCaches::start(&client, &wake, &shutdown);
    let restarting = handover.as_ref().is_some_and(|h| h.taken.is_some());
    let (desired_tx, desired) = watch::channel(Desired::default());
    let (report_tx, worker) = report::spawn(client.clone(), speaker.node.clone());
    let feeder = Feeder {
        client,
        options,
        restarting,
        problems: report_tx.clone(),
        wake,
        shutdown: shutdown.clone(),
    };
    tokio::spawn(feeder.run(caches, desired_tx));
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

/// The caches a speaker's view is made of.
struct ClusterCaches {
    /// Services and EndpointSlices, with what their watches touched: a
    /// change to them costs what it touches.
    services: (
        Store<k8s_openapi::api::core::v1::Service>,
        Touched<k8s_openapi::api::core::v1::Service>,
    ),
    slices: (
        Store<k8s_openapi::api::discovery::v1::EndpointSlice>,
        Touched<k8s_openapi::api::discovery::v1::EndpointSlice>,
    ),
    pools: Store<crate::api::IPAddressPool>,
    ads: Store<crate::api::L2Advertisement>,
    nodes: Store<K8sNode>,
    bgp_peers: Store<crate::api::BGPPeer>,
    bgp_ads: Store<crate::api::BGPAdvertisement>,
    bfd_profiles: Store<crate::api::BFDProfile>,
    communities: Store<crate::api::Community>,
    secrets: PasswordSecrets,
    /// Filled once the Gateway API is served (and the feature is on).
    gateways: Arc<OnceLock<crate::gateway::watch::Caches>>,
}

impl ClusterCaches {
    fn start(
        client: &kube::Client,
        wake: &Arc<tokio::sync::Notify>,
        shutdown: &CancellationToken,
    ) -> Self {
        use crate::k8s::{cache_all, cache_touched};
        use kube::Api;
        // TCP MD5 passwords: the Secrets of the speaker's own namespace that
        // BGPPeers name, each watched by name (all the speaker may read).
        let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "ironlb-system".into());
        Self {
            services: cache_touched(client, wake, shutdown),
            slices: cache_touched(client, wake, shutdown),
            pools: cache_all(client, wake, shutdown),
            ads: cache_all(client, wake, shutdown),
            nodes: cache_all(client, wake, shutdown),
            // The BGP kinds are not waited for: a cluster whose CRDs predate
            // them keeps announcing over layer 2 (their watchers log and
            // retry).
            bgp_peers: cache_all(client, wake, shutdown),
            bgp_ads: cache_all(client, wake, shutdown),
            bfd_profiles: cache_all(client, wake, shutdown),
            communities: cache_all(client, wake, shutdown),
            secrets: PasswordSecrets {
                api: Api::namespaced(client.clone(), &namespace),
                namespace,
                wake: wake.clone(),
                shutdown: shutdown.clone(),
                watched: Default::default(),
            },
            gateways: Arc::new(OnceLock::new()),
        }
    }

    /// Whether the kinds every view needs filled.
    async fn ready(&self) -> bool {
        self.services.0.wait_until_ready().await.is_ok()
            && self.pools.wait_until_ready().await.is_ok()
            && self.ads.wait_until_ready().await.is_ok()
            && self.slices.0.wait_until_ready().await.is_ok()
            && self.nodes.wait_until_ready().await.is_ok()
    }
}

/// Turns the caches into what the speaker wants, on every change.
struct Feeder {
    client: kube::Client,
    options: ClusterOptions,
    /// This speaker took over from one on the same node.
    restarting: bool,
    /// Where BGP objects that cannot be used as written are reported.
    problems: tokio::sync::mpsc::UnboundedSender<report::Report>,
    wake: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
}

impl Feeder {
    async fn run(self, mut caches: ClusterCaches, desired_tx: watch::Sender<Desired>) {
        if !caches.ready().await {
            warn!("a cluster cache could not be filled; announcing nothing from the cluster");
            return;
        }
        if self.options.gateway {
            gateway_caches(
                self.client.clone(),
                &caches.gateways,
                &self.wake,
                &self.shutdown,
            )
            .await;
        }
        info!("cluster view ready");
        let mut first = true;
        let mut kept = Kept::default();
        loop {
            let now = self.desired(&mut caches, &mut kept);
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
            if crate::k8s::next_pass(&self.wake, None, &self.shutdown)
                .await
                .is_none()
            {
                return;
            }
        }
    }

    /// The view of what the caches hold now, and what it asks of the
    /// speaker; BGP objects not used as written are reported once. A change
    /// to Services and EndpointSlices only updates the view for those
    /// Services; a change to any other kind it reads recomputes it whole.
    fn desired(&self, caches: &mut ClusterCaches, kept: &mut Kept) -> Desired {
        let c = &*caches;
        let (pl, ad) = (c.pools.state(), c.ads.state());
        let (bp, ba, bf, co) = (
            c.bgp_peers.state(),
            c.bgp_ads.state(),
            c.bfd_profiles.state(),
            c.communities.state(),
        );
        let gateway_state = c
            .gateways
            .get()
            .map(crate::gateway::watch::Caches::state)
            .unwrap_or_default();
        caches.secrets.follow(&bp);
        let se = caches.secrets.state();
        let changes = kept.objects_changed(caches);
        // Services and EndpointSlices: the update reads them from
        // `kept.objects`, by Service or all of them.
        let view = view::ClusterView {
            services: Vec::new(),
            pools: pl.iter().map(AsRef::as_ref).collect(),
            advertisements: ad.iter().map(AsRef::as_ref).collect(),
            slices: Default::default(),
            bgp: view::BgpObjects {
                peers: bp.iter().map(AsRef::as_ref).collect(),
                advertisements: ba.iter().map(AsRef::as_ref).collect(),
                bfd_profiles: bf.iter().map(AsRef::as_ref).collect(),
                communities: co.iter().map(AsRef::as_ref).collect(),
                secrets: se.iter().map(AsRef::as_ref).collect(),
            },
            gateways: gateway_state.objects(),
            default_class: self.options.default_class,
        };
        let others: Vec<usize> = [
            identities(&pl),
            identities(&ad),
            identities(&bp),
            identities(&ba),
            identities(&bf),
            identities(&co),
            identities(&se),
            gateway_state.identities(),
        ]
        .concat();
        let everything = kept.others.as_ref() != Some(&others);
        if everything {
            kept.view
                .update(&view, &kept.objects, &view::Changes::Everything);
            let (peers, mut problems) = view::bgp_peers(&view, self.restarting);
            problems.extend(view::bgp_advertisement_problems(&view));
            if problems != kept.said {
                for p in problems.iter().filter(|p| !kept.said.contains(p)) {
                    warn!(problem = %p.message, "BGP object not used as written");
                    let _ = self.problems.send(report::Report::BgpProblem(p.clone()));
                }
                kept.said = problems;
            }
            kept.peers = peers;
            kept.others = Some(others);
        } else {
            kept.view.update(&view, &kept.objects, &changes);
        }
        let nodes = caches.nodes.state();
        let node_identities = identities(&nodes);
        if node_identities != kept.node_identities {
            kept.nodes = Arc::new(nodes.iter().map(|n| (**n).clone()).collect());
            kept.node_identities = node_identities;
        }
        Desired {
            announcements: kept.view.announcements().clone(),
            forwards: kept.view.forwards().clone(),
            node_objects: kept.nodes.clone(),
            bgp_peers: kept.peers.clone(),
        }
    }
}

/// What the feeder keeps from one pass to the next.
#[derive(Default)]
struct Kept {
    view: view::IncrementalView,
    objects: view::CachedObjects,
    /// The objects of every other kind the view reads, by identity: when
    /// one changes the view is made whole again.
    others: Option<Vec<usize>>,
    /// The BGP routers, as of the last change of those kinds.
    peers: Vec<view::WantedPeer>,
    /// BGP problems reported so far.
    said: Vec<view::BgpProblem>,
    nodes: Arc<Vec<K8sNode>>,
    node_identities: Vec<usize>,
}

impl Kept {
    /// Takes in the Services and EndpointSlices their watches touched (all
    /// of them after a relist); returns which Services changed.
    fn objects_changed(&mut self, c: &ClusterCaches) -> view::Changes {
        let ((services, touched_services), (slices, touched_slices)) = (&c.services, &c.slices);
        match (
            touched_services.take_from(services),
            touched_slices.take_from(slices),
        ) {
            (Some(touched_services), Some(touched_slices)) => self.objects.apply(
                touched_services
                    .into_iter()
                    .map(|((namespace, name), now)| (ServiceKey::new(namespace, name), now)),
                touched_slices,
            ),
            _ => self.objects.read(&services.state(), &slices.state()),
        }
    }
}

/// The identities of cached objects (a cache hands out the same `Arc` for
/// an object until it changes), ending with a marker, so that lists can be
/// joined and still compared.
fn identities<K>(objects: &[Arc<K>]) -> Vec<usize> {
    crate::gateway::watch::identities(objects)
}

/// Fills `slot` with the Gateway API caches: before the first view when the
/// CRDs are installed, so a restarted speaker never serves a Gateway's
/// address without its routes; else once they appear.
/// Caches that cannot fill in time (no RBAC to read the kinds, say) hold
/// back nothing else: they join the view whenever they fill, waking the
/// feeder.
async fn gateway_caches(
    client: kube::Client,
    slot: &Arc<OnceLock<crate::gateway::watch::Caches>>,
    wake: &Arc<tokio::sync::Notify>,
    shutdown: &CancellationToken,
) {
    use crate::gateway::watch;
    let kinds = watch::installed(&client).await;
    let (slot, wake, shutdown) = (slot.clone(), wake.clone(), shutdown.clone());
    let filled = Arc::new(tokio::sync::Notify::new());
    let told = filled.clone();
    let now = kinds.is_some();
    tokio::spawn(async move {
        let kinds = match kinds {
            Some(kinds) => kinds,
            None => match watch::wait_for_crds(&client, "speaker", &shutdown).await {
                Some(kinds) => kinds,
                None => return,
            },
        };
        let caches = watch::Caches::start(&client, &kinds, &wake, &shutdown);
        if caches.ready().await {
            info!(kinds = ?kinds, "forwarding Gateways' routes");
            let _ = slot.set(caches);
            told.notify_one();
            wake.notify_one();
        }
    });
    if now
        && tokio::time::timeout(Duration::from_secs(30), filled.notified())
            .await
            .is_err()
    {
        warn!(
            "the Gateway API kinds could not be read within 30 s (is the speaker allowed to?); \
             Gateways' routes are forwarded once they can"
        );
    }
}

/// The BGP password Secrets the speaker reads: one watch per Secret a
/// BGPPeer names, since the speakers' Role grants them by name only (a watch
/// of one name, by field selector, is what such a grant allows). A watch
/// refused until the controller has granted a new name retries on its own.
struct PasswordSecrets {
    api: kube::Api<k8s_openapi::api::core::v1::Secret>,
    namespace: String,
    wake: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
    watched: std::collections::BTreeMap<
        String,
        (Store<k8s_openapi::api::core::v1::Secret>, CancellationToken),
    >,
}

impl PasswordSecrets {
    /// Watches exactly the Secrets `peers` name.
    fn follow(&mut self, peers: &[Arc<crate::api::BGPPeer>]) {
        let peers: Vec<&crate::api::BGPPeer> = peers.iter().map(AsRef::as_ref).collect();
        let wanted = crate::bgp::config::password_secrets(&peers, &self.namespace);
        self.watched.retain(|name, (_, stop)| {
            let keep = wanted.contains(name);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for name in wanted {
            if self.watched.contains_key(&name) {
                continue;
            }
            let stop = self.shutdown.child_token();
            let config =
                kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}"));
            let store =
                crate::k8s::cache_of(self.api.clone(), config, self.wake.clone(), stop.clone());
            self.watched.insert(name, (store, stop));
        }
    }

    /// The Secrets read so far.
    fn state(&self) -> Vec<Arc<k8s_openapi::api::core::v1::Secret>> {
        self.watched
            .values()
            .flat_map(|(store, _)| store.state())
            .collect()
    }
}
