//! Reflector caches whose every change wakes a pass.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, future};
use kube::runtime::reflector::{self, ObjectRef, Store};
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
    watched(api, config, wake, shutdown, |_| {})
}

/// A cache of every `K` of the cluster, as [`cache_all`], that also says
/// which objects its watch touched: a pass can then look at those alone.
pub(crate) fn cache_touched<K: Watched>(
    client: &Client,
    wake: &Arc<Notify>,
    shutdown: &CancellationToken,
) -> (Store<K>, Touched<K>) {
    let touched = Touched {
        since: Arc::new(Mutex::new(TouchedSince {
            relisted: true,
            objects: HashSet::new(),
        })),
    };
    let noted = touched.clone();
    let store = watched(
        Api::all(client.clone()),
        watcher::Config::default(),
        wake.clone(),
        shutdown.clone(),
        move |event| noted.note(event),
    );
    (store, touched)
}

/// A touched object's (namespace, name), and the object as the cache holds
/// it now (`None`: deleted).
pub(crate) type NamedNow<K> = ((String, String), Option<Arc<K>>);

/// The objects a watch touched since a pass last asked.
pub(crate) struct Touched<K: Watched> {
    since: Arc<Mutex<TouchedSince<K>>>,
}

impl<K: Watched> Clone for Touched<K> {
    fn clone(&self) -> Self {
        Self {
            since: self.since.clone(),
        }
    }
}

struct TouchedSince<K: Watched> {
    /// The watch listed everything again (or nobody asked yet): which
    /// objects changed, only the whole cache can say.
    relisted: bool,
    objects: HashSet<ObjectRef<K>>,
}

impl<K: Watched> Touched<K> {
    /// The objects touched since the last call, to be read from the cache
    /// (gone from it: deleted); `None` after a relist. The reflector has
    /// applied an event to the cache before it is noted here, so what is
    /// read is at least as new as what is named.
    pub(crate) fn take(&self) -> Option<Vec<ObjectRef<K>>> {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        let objects = std::mem::take(&mut since.objects);
        (!std::mem::replace(&mut since.relisted, false)).then(|| objects.into_iter().collect())
    }

    /// [`Touched::take`], each object as `store` holds it now (`None`:
    /// deleted), by namespace and name.
    pub(crate) fn take_from(&self, store: &Store<K>) -> Option<Vec<NamedNow<K>>> {
        let touched = self.take()?;
        Some(
            touched
                .into_iter()
                .map(|r| {
                    let now = store.get(&r);
                    ((r.namespace.unwrap_or_default(), r.name), now)
                })
                .collect(),
        )
    }

    fn note(&self, event: &watcher::Event<K>) {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                since
                    .objects
                    .insert(ObjectRef::from_obj_with(o, Default::default()));
            }
            // The cache swaps in the new list at its end.
            watcher::Event::InitDone => {
                since.relisted = true;
                since.objects.clear();
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }
}

/// Runs a watch of `api` into a cache, telling `note` of each event once
/// the cache holds it and waking the pass.
fn watched<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
    mut note: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> Store<K> {
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .for_each(move |event| {
            match event {
                Ok(event) => note(&event),
                Err(e) => warn!(error = %e, "watch failed; retrying"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use kube::api::ObjectMeta;

    fn service(name: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some("apps".into()),
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(objects: Option<Vec<ObjectRef<Service>>>) -> Option<Vec<String>> {
        objects.map(|o| {
            let mut names: Vec<String> = o.into_iter().map(|r| r.name).collect();
            names.sort();
            names
        })
    }

    #[test]
    fn touched_names_what_changed_since_asked_and_a_relist_names_nothing() {
        let touched = Touched::<Service> {
            since: Arc::new(Mutex::new(TouchedSince {
                relisted: true,
                objects: HashSet::new(),
            })),
        };
        touched.note(&watcher::Event::Apply(service("a")));
        assert_eq!(names(touched.take()), None, "nobody asked yet");
        assert_eq!(names(touched.take()), Some(vec![]));

        touched.note(&watcher::Event::Apply(service("a")));
        touched.note(&watcher::Event::Apply(service("a")));
        touched.note(&watcher::Event::Delete(service("b")));
        assert_eq!(names(touched.take()), Some(vec!["a".into(), "b".into()]));

        touched.note(&watcher::Event::Apply(service("c")));
        touched.note(&watcher::Event::Init);
        touched.note(&watcher::Event::InitApply(service("d")));
        assert_eq!(
            names(touched.take()),
            Some(vec!["c".into()]),
            "the cache swaps at the end of the list, not before"
        );
        touched.note(&watcher::Event::Init);
        touched.note(&watcher::Event::InitApply(service("d")));
        touched.note(&watcher::Event::InitDone);
        touched.note(&watcher::Event::Apply(service("e")));
        assert_eq!(names(touched.take()), None, "after a relist");
        assert_eq!(names(touched.take()), Some(vec![]));
    }
}
