//! Reading the cluster and writing to it safely, shared by every component
//! that talks to the API server (the controller, the Gateway controller, the
//! speakers): caches whose every change wakes a pass, and the fence a leader
//! checks before it writes. Nothing here knows what a Service means.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, future};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// A kind a cache can hold: any API object of a statically known kind.
pub(crate) trait Watched:
    kube::Resource<DynamicType: Default + Eq + std::hash::Hash + Clone>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource<DynamicType: Default + Eq + std::hash::Hash + Clone>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// Keeps a replica that was paused or cut off from writing after its lease
/// could have passed to another: before a pass writes, the Lease must name this
/// replica and have been renewed less than `max_age` ago (the lease duration
/// less a safety margin), by this replica's clock, which also wrote the
/// renewal time. Elections alone cannot promise that: a leader frozen past its
/// lease still believes it leads for the moment after it resumes.
#[derive(Clone, Debug)]
pub struct Fence {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity in it.
    pub identity: String,
    /// How old the last renewal may be.
    pub max_age: Duration,
}

impl Fence {
    /// Whether this replica may write now; the error says why not.
    pub async fn check(&self, client: &Client) -> Result<(), String> {
        use k8s_openapi::api::coordination::v1::Lease;
        let lease = Api::<Lease>::namespaced(client.clone(), &self.namespace)
            .get(&self.name)
            .await
            .map_err(|e| format!("reading Lease {}/{}: {e}", self.namespace, self.name))?;
        let spec = lease.spec.unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Err(format!(
                "Lease {}/{} is held by {:?}",
                self.namespace, self.name, spec.holder_identity
            ));
        }
        let renewed = spec
            .renew_time
            .map(|t| t.0)
            .ok_or("the Lease has no renewTime")?;
        let age = Timestamp::now().duration_since(renewed);
        let max = k8s_openapi::jiff::SignedDuration::try_from(self.max_age).unwrap_or_default();
        if age > max {
            return Err(format!(
                "the Lease was last renewed {age:#} ago, more than the {max:#} a writer may rely on"
            ));
        }
        Ok(())
    }
}

/// A reflector cache of every `K` of the cluster whose every change wakes
/// the pass.
pub(crate) fn cache_all<K: Watched>(
    client: &Client,
    wake: &Arc<Notify>,
    shutdown: &CancellationToken,
) -> Store<K> {
    cache_of(
        Api::all(client.clone()),
        watcher::Config::default(),
        wake.clone(),
        shutdown.clone(),
    )
}

/// A cache, as [`cache_all`], of the objects of `api` that `config` selects.
pub(crate) fn cache_of<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> Store<K> {
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .touched_objects()
        .for_each(move |event| {
            if let Err(e) = event {
                warn!(error = %e, "watch failed; retrying");
            }
            wake.notify_one();
            future::ready(())
        });
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = stream => {}
        }
    });
    store
}
