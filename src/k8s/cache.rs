//! Reflector caches whose every change wakes a pass.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, future};
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

/// How long a pass waits after the first change for the rest of a burst
/// (a rollout, a `kubectl apply` of many objects) to land, so the burst
/// costs one pass, not one per object.
pub const SETTLE: Duration = Duration::from_millis(20);

/// Why the wait before a pass ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Woken {
    /// A cache changed.
    Changed,
    /// Nothing changed for the whole `idle` period.
    Idle,
}

/// The rhythm of every pass loop: waits until a cache wakes `wake` or `idle`
/// passes, then lets a burst settle. `None` once `shutdown` is cancelled.
pub async fn next_pass(
    wake: &Notify,
    idle: Option<Duration>,
    shutdown: &CancellationToken,
) -> Option<Woken> {
    let timer = async {
        match idle {
            Some(idle) => tokio::time::sleep(idle).await,
            None => std::future::pending().await,
        }
    };
    let woken = tokio::select! {
        _ = shutdown.cancelled() => return None,
        _ = wake.notified() => Woken::Changed,
        _ = timer => Woken::Idle,
    };
    if woken == Woken::Changed {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(SETTLE) => {}
        }
    }
    Some(woken)
}
