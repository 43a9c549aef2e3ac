//! The Gateway API kinds as caches, once the API server serves them: shared
//! by the Gateway controller and the speakers, which both run the rules on
//! what these hold.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::Store;
use kube::{Client, Resource};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::snapshot::Objects;
use crate::api::gateway::{
    GATEWAY_GROUP, Gateway, GatewayClass, ReferenceGrant, TCPRoute, TLSRoute, UDPRoute,
};
use crate::k8s::cache_all as watch;

/// How often a controller or speaker looks again for the Gateway API CRDs
/// while they are not installed: one discovery request, cheap on the API
/// server even from every node.
pub const CRD_RECHECK: Duration = Duration::from_secs(15);

/// The resources of `gateway.networking.k8s.io/v1` the API server serves,
/// when Gateways and GatewayClasses are among them.
pub async fn installed(client: &Client) -> Option<BTreeSet<String>> {
    let list = client
        .list_api_group_resources(&format!("{GATEWAY_GROUP}/v1"))
        .await
        .ok()?;
    let kinds: BTreeSet<String> = list.resources.into_iter().map(|r| r.name).collect();
    (kinds.contains("gateways") && kinds.contains("gatewayclasses")).then_some(kinds)
}

/// The served kinds once [`installed`] finds them, checking every
/// [`CRD_RECHECK`]; `None` at `shutdown`. Says once (as `who`) that it
/// waits.
pub async fn wait_for_crds(
    client: &Client,
    who: &str,
    shutdown: &CancellationToken,
) -> Option<BTreeSet<String>> {
    let mut told = false;
    loop {
        match installed(client).await {
            Some(kinds) => return Some(kinds),
            None if !told => {
                info!(
                    "Gateway API CRDs (gateway.networking.k8s.io/v1) are not installed; the {who} waits for them"
                );
                told = true;
            }
            _ => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(CRD_RECHECK) => {}
        }
    }
}

/// Caches of the kinds [`Objects`] holds; the route kinds and ReferenceGrant
/// only when served (an API server may serve some of them).
pub struct Caches {
    classes: Store<GatewayClass>,
    gateways: Store<Gateway>,
    namespaces: Store<Namespace>,
    grants: Option<Store<ReferenceGrant>>,
    tcp: Option<Store<TCPRoute>>,
    udp: Option<Store<UDPRoute>>,
    tls: Option<Store<TLSRoute>>,
}

/// The caches' objects at one moment, shared with the caches, never copied.
#[derive(Default)]
pub struct State {
    classes: Vec<Arc<GatewayClass>>,
    gateways: Vec<Arc<Gateway>>,
    namespaces: Vec<Arc<Namespace>>,
    grants: Vec<Arc<ReferenceGrant>>,
    tcp: Vec<Arc<TCPRoute>>,
    udp: Vec<Arc<UDPRoute>>,
    tls: Vec<Arc<TLSRoute>>,
}

impl Caches {
    /// Starts watching the `kinds` served; every change wakes `wake`.
    pub fn start(
        client: &Client,
        kinds: &BTreeSet<String>,
        wake: &Arc<Notify>,
        shutdown: &CancellationToken,
    ) -> Self {
        let optional = |kind: &str| kinds.contains(kind);
        Self {
            classes: watch(client, wake, shutdown),
            gateways: watch(client, wake, shutdown),
            namespaces: watch(client, wake, shutdown),
            grants: optional("referencegrants").then(|| watch(client, wake, shutdown)),
            tcp: optional("tcproutes").then(|| watch(client, wake, shutdown)),
            udp: optional("udproutes").then(|| watch(client, wake, shutdown)),
            tls: optional("tlsroutes").then(|| watch(client, wake, shutdown)),
        }
    }

    /// Whether every cache filled.
    pub async fn ready(&self) -> bool {
        self.classes.wait_until_ready().await.is_ok()
            && self.gateways.wait_until_ready().await.is_ok()
            && self.namespaces.wait_until_ready().await.is_ok()
            && ready_if_watched(&self.grants).await
            && ready_if_watched(&self.tcp).await
            && ready_if_watched(&self.udp).await
            && ready_if_watched(&self.tls).await
    }

    /// What the caches hold now.
    pub fn state(&self) -> State {
        fn all<K>(store: &Option<Store<K>>) -> Vec<Arc<K>>
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            store.as_ref().map(Store::state).unwrap_or_default()
        }
        State {
            classes: self.classes.state(),
            gateways: self.gateways.state(),
            namespaces: self.namespaces.state(),
            grants: all(&self.grants),
            tcp: all(&self.tcp),
            udp: all(&self.udp),
            tls: all(&self.tls),
        }
    }
}

impl State {
    /// The objects, as the rules read them.
    pub fn objects(&self) -> Objects<'_> {
        Objects {
            classes: refs(&self.classes),
            gateways: refs(&self.gateways),
            tcp: refs(&self.tcp),
            udp: refs(&self.udp),
            tls: refs(&self.tls),
            grants: refs(&self.grants),
            namespaces: refs(&self.namespaces),
            pools: None,
        }
    }
}

impl State {
    /// The identities of the objects (see [`identities`]), every kind.
    pub fn identities(&self) -> Vec<usize> {
        [
            identities(&self.classes),
            identities(&self.gateways),
            identities(&self.namespaces),
            identities(&self.grants),
            identities(&self.tcp),
            identities(&self.udp),
            identities(&self.tls),
        ]
        .concat()
    }
}

/// The identities of cached objects (a cache hands out the same `Arc` for
/// an object until it changes), ending with a marker, so that lists can be
/// joined and still compared.
pub(crate) fn identities<K>(objects: &[Arc<K>]) -> Vec<usize> {
    objects
        .iter()
        .map(|o| Arc::as_ptr(o) as usize)
        .chain(std::iter::once(0))
        .collect()
}

/// A cache's objects, borrowed.
pub(crate) fn refs<K>(objects: &[Arc<K>]) -> Vec<&K> {
    objects.iter().map(AsRef::as_ref).collect()
}

/// Whether an optional cache, if there is one, filled.
async fn ready_if_watched<K>(store: &Option<Store<K>>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    match store {
        Some(s) => s.wait_until_ready().await.is_ok(),
        None => true,
    }
}
