//! What a Gateway pass reads of the cluster's Services and EndpointSlices.
//! Every Service and EndpointSlice change in the cluster wakes the Gateway
//! controller, and a pass indexes them all: with thousands of Services
//! being given addresses, most passes were woken by Services no Gateway
//! reads. A pass whose Services and EndpointSlices all lie outside what the
//! last one read, with every other kind as it was, would plan the same
//! writes, so the controller skips it.

use std::collections::HashSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use super::attach::Snapshot;
use super::plan::{SERVICE_NAME_LABEL, is_managed, is_mirror};
use super::service_name;
use crate::k8s::translate;

/// A Service's or an EndpointSlice's (namespace, name).
pub type Name = (String, String);

/// What one pass read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    /// Services read: each Gateway's (by name, whether it exists, is ours
    /// or not), every route's backends (whatever their kind, found or not),
    /// the Services ironlb's Gateway controller manages, and every Service
    /// on the address of a Gateway's Service.
    services: HashSet<Name>,
    /// The addresses of the Gateways' Services: a Service that comes onto
    /// one takes ports there.
    addresses: HashSet<IpAddr>,
    /// EndpointSlices read: those of the Services read, and the mirrored
    /// ones.
    slices: HashSet<Name>,
}

impl Reads {
    /// What a pass over `snap`, `services` and `slices` reads of them.
    pub fn of(snap: &Snapshot<'_>, services: &[&Service], slices: &[&EndpointSlice]) -> Self {
        let gateways: HashSet<Name> = snap
            .gateways
            .iter()
            .map(|g| {
                (
                    g.namespace().unwrap_or_default(),
                    service_name(&g.name_any()),
                )
            })
            .collect();
        let mut read = gateways.clone();
        for route in &snap.routes {
            for b in route.rules.iter().flat_map(|r| &r.backend_refs) {
                let namespace = b.namespace.as_ref().unwrap_or(&route.namespace);
                read.insert((namespace.clone(), b.name.clone()));
            }
        }
        let key = |s: &Service| (s.namespace().unwrap_or_default(), s.name_any());
        let addresses: HashSet<IpAddr> = services
            .iter()
            .filter(|s| gateways.contains(&key(s)))
            .flat_map(|s| translate::status_addresses(s))
            .collect();
        for s in services {
            if is_managed(s) || on(s, &addresses) {
                read.insert(key(s));
            }
        }
        let slices = slices
            .iter()
            .filter(|s| is_mirror(s) || owner(s).is_some_and(|o| read.contains(&o)))
            .map(|s| (s.namespace().unwrap_or_default(), s.name_any()))
            .collect();
        Self {
            services: read,
            addresses,
            slices,
        }
    }

    /// Whether a pass would read one of these Services or EndpointSlices,
    /// each as the cache holds it now (`None`: deleted).
    pub fn touched_by<'a>(
        &self,
        services: impl IntoIterator<Item = (&'a Name, Option<&'a Service>)>,
        slices: impl IntoIterator<Item = (&'a Name, Option<&'a EndpointSlice>)>,
    ) -> bool {
        services.into_iter().any(|(name, now)| {
            self.services.contains(name)
                || now.is_some_and(|s| is_managed(s) || on(s, &self.addresses))
        }) || slices.into_iter().any(|(name, now)| {
            self.slices.contains(name)
                || now.is_some_and(|s| {
                    is_mirror(s) || owner(s).is_some_and(|o| self.services.contains(&o))
                })
        })
    }
}

fn on(s: &Service, addresses: &HashSet<IpAddr>) -> bool {
    !addresses.is_empty()
        && translate::status_addresses(s)
            .iter()
            .any(|a| addresses.contains(a))
}

/// The Service an EndpointSlice belongs to.
fn owner(s: &EndpointSlice) -> Option<Name> {
    Some((s.namespace()?, s.labels().get(SERVICE_NAME_LABEL)?.clone()))
}
