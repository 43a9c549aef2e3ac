//! The view kept up to date one change at a time: a change to one Service
//! or to its EndpointSlices recomputes that Service's frontend and the
//! announcements of its addresses, not the cluster's. The result is, by
//! construction and by test, what [`announcements`] and [`frontends`] give
//! for the whole cluster.

use std::sync::Arc;

use super::frontends::{Programs, frontend_of, gateway_programs, services_by_key};
use super::l2::{Announcements, Context, by_address};
use super::*;
use crate::speaker::config::Forwards;

/// What changed since the last update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changes {
    /// Anything may have: a relist, or a kind every Service reads (pools,
    /// advertisements, the BGP and Gateway API kinds).
    Everything,
    /// Only these Services and the EndpointSlices of these Services.
    Services {
        /// Services added, changed or deleted.
        services: BTreeSet<ServiceKey>,
        /// Services whose EndpointSlices were.
        slices: BTreeSet<ServiceKey>,
    },
}

/// Where an update reads the cluster's Services and EndpointSlices by
/// Service, without a scan.
pub trait Lookup {
    /// Service `key`, if it exists.
    fn service(&self, key: &ServiceKey) -> Option<&Service>;
    /// The EndpointSlices of Service `key`.
    fn slices(&self, key: &ServiceKey) -> Vec<&EndpointSlice>;
    /// Every Service and every EndpointSlice, for an update that decides
    /// everything again.
    fn every(&self) -> (Vec<&Service>, Vec<&EndpointSlice>);
}

/// The view as of the last update, with what it takes to update it.
#[derive(Clone, Debug, Default)]
pub struct IncrementalView {
    announcements: Announcements,
    forwards: Forwards,
    /// Each eligible Service's addresses, as filed in `on_address`.
    filed: HashMap<ServiceKey, Vec<IpAddr>>,
    /// Address → the eligible Services with it.
    on_address: HashMap<IpAddr, BTreeSet<ServiceKey>>,
    /// The Gateways' Services' programs, as of the last full update.
    programs: Programs,
    /// The Services those programs name as backends.
    backends: BTreeSet<ServiceKey>,
    /// Services a Gateway's rules read besides backends: each Gateway's
    /// own Service (by name, owned or not), and whatever shares an address
    /// with one (its ports are taken).
    gateway_services: BTreeSet<ServiceKey>,
}

impl IncrementalView {
    /// The addresses to announce.
    pub fn announcements(&self) -> &Announcements {
        &self.announcements
    }

    /// What the forwarder carries.
    pub fn forwards(&self) -> &Forwards {
        &self.forwards
    }

    /// Brings the view up to date. `view` holds every kind but Services
    /// and EndpointSlices: its `services` and `slices` are never read, since
    /// a change that turns out to need everything decided again (one a
    /// Gateway's rules read) must see all of them, and only `lookup` holds
    /// them all.
    pub fn update(&mut self, view: &ClusterView<'_>, lookup: &dyn Lookup, changes: &Changes) {
        let (services, slices) = match changes {
            Changes::Services { services, slices }
                if !self.gateway_reads(view, lookup, services) =>
            {
                (services, slices)
            }
            _ => return self.rebuild(&Part::every(lookup).view(view)),
        };
        // A backend's endpoints change its Gateways' frontends, not their
        // programs.
        let mut frontends: BTreeSet<ServiceKey> = services | slices;
        if slices.iter().any(|s| self.backends.contains(s)) {
            frontends.extend(self.programs.keys().cloned());
        }
        let mut addresses: BTreeSet<IpAddr> = BTreeSet::new();
        for key in &frontends {
            addresses.extend(self.refile(key, lookup.service(key), view.default_class));
        }
        self.update_announcements(view, lookup, &addresses);
        self.update_frontends(view, lookup, &frontends);
    }

    /// Whether a Gateway's rules read one of `changed`: then every program
    /// is decided again, from the whole cluster.
    fn gateway_reads(
        &self,
        view: &ClusterView<'_>,
        lookup: &dyn Lookup,
        changed: &BTreeSet<ServiceKey>,
    ) -> bool {
        if view.gateways.gateways.is_empty() && self.programs.is_empty() {
            return false;
        }
        let shares_with_a_gateway = |ip: &IpAddr| {
            self.on_address
                .get(ip)
                .is_some_and(|on| on.iter().any(|k| self.gateway_services.contains(k)))
        };
        changed.iter().any(|key| {
            let now = lookup.service(key).map(translate::status_addresses);
            self.backends.contains(key)
                || self.gateway_services.contains(key)
                || self.programs.contains_key(key)
                || self
                    .filed
                    .get(key)
                    .into_iter()
                    .flatten()
                    .any(shares_with_a_gateway)
                || now.iter().flatten().any(shares_with_a_gateway)
        })
    }

    /// Files Service `key` under the addresses it has now (none when it is
    /// gone or not eligible); returns the addresses it had or has.
    fn refile(
        &mut self,
        key: &ServiceKey,
        svc: Option<&Service>,
        default_class: bool,
    ) -> Vec<IpAddr> {
        let now = svc
            .filter(|s| translate::is_eligible(s, default_class))
            .map(translate::status_addresses)
            .unwrap_or_default();
        let before = self.filed.remove(key).unwrap_or_default();
        for ip in &before {
            if let Some(on) = self.on_address.get_mut(ip) {
                on.remove(key);
                if on.is_empty() {
                    self.on_address.remove(ip);
                }
            }
        }
        for ip in &now {
            self.on_address.entry(*ip).or_default().insert(key.clone());
        }
        let mut touched = before;
        touched.extend(&now);
        if !now.is_empty() {
            self.filed.insert(key.clone(), now);
        }
        touched
    }

    /// Recomputes the announcements of `addresses` from the Services filed
    /// under each.
    fn update_announcements(
        &mut self,
        view: &ClusterView<'_>,
        lookup: &dyn Lookup,
        addresses: &BTreeSet<IpAddr>,
    ) {
        if addresses.is_empty() {
            return;
        }
        let keys: BTreeSet<&ServiceKey> = addresses
            .iter()
            .filter_map(|ip| self.on_address.get(ip))
            .flatten()
            .collect();
        let part = Part::of(lookup, keys.iter().copied());
        let part_view = part.view(view);
        let context = Context::of(view);
        for ip in addresses {
            // In the order of the whole view: the Services' order there.
            let on: Vec<&Service> = part_view
                .services
                .iter()
                .copied()
                .filter(|s| {
                    self.on_address
                        .get(ip)
                        .is_some_and(|on| on.contains(&translate::service_key(s)))
                })
                .collect();
            match (!on.is_empty())
                .then(|| context.announcement(&part_view, *ip, &on))
                .flatten()
            {
                Some(a) => {
                    if self.announcements.get(ip).is_none_or(|old| **old != a) {
                        self.announcements.insert(*ip, Arc::new(a));
                    }
                }
                None => {
                    self.announcements.remove(ip);
                }
            }
        }
    }

    /// Recomputes the frontends of `services`.
    fn update_frontends(
        &mut self,
        view: &ClusterView<'_>,
        lookup: &dyn Lookup,
        services: &BTreeSet<ServiceKey>,
    ) {
        let gateways = services.iter().any(|s| self.programs.contains_key(s));
        let backends = gateways.then_some(&self.backends).into_iter().flatten();
        let part = Part::of(lookup, services.iter().chain(backends));
        let part_view = part.view(view);
        let by_key = services_by_key(&part_view, &self.programs);
        for key in services {
            let (frontend, errors) = match lookup.service(key) {
                Some(svc) => frontend_of(svc, &part_view, &self.programs, &by_key),
                None => (None, Vec::new()),
            };
            self.forwards.set_frontend(key.clone(), frontend);
            self.forwards.set_invalid(key.clone(), errors);
        }
    }

    /// Recomputes everything from the whole view.
    fn rebuild(&mut self, view: &ClusterView<'_>) {
        let (frontends, invalid) = frontends(view);
        *self = Self {
            announcements: by_address(announcements(view)),
            forwards: Forwards::new(frontends, invalid),
            programs: gateway_programs(view),
            ..Self::default()
        };
        for svc in &view.services {
            self.refile(&translate::service_key(svc), Some(svc), view.default_class);
        }
        self.backends = self
            .programs
            .values()
            .flat_map(|p| &p.ports)
            .flat_map(|p| &p.routes)
            .flat_map(|r| &r.backends)
            .map(|b| ServiceKey::new(&b.namespace, &b.name))
            .collect();
        let named: BTreeSet<ServiceKey> = view
            .gateways
            .gateways
            .iter()
            .map(|g| {
                ServiceKey::new(
                    g.namespace().unwrap_or_default(),
                    crate::gateway::snapshot::service_name(&g.name_any()),
                )
            })
            .collect();
        let sharing: BTreeSet<ServiceKey> = named
            .iter()
            .filter_map(|k| self.filed.get(k))
            .flatten()
            .flat_map(|ip| &self.on_address[ip])
            .cloned()
            .collect();
        self.gateway_services = &named | &sharing;
    }
}

/// Some Services and their EndpointSlices, in the order the whole view
/// lists Services (by key), so a part decides as the whole does.
struct Part<'a> {
    services: Vec<&'a Service>,
    slices: Vec<&'a EndpointSlice>,
}

impl<'a> Part<'a> {
    fn of<'k>(lookup: &'a dyn Lookup, keys: impl Iterator<Item = &'k ServiceKey>) -> Self {
        let keys: BTreeSet<&ServiceKey> = keys.collect();
        Self {
            services: keys.iter().filter_map(|k| lookup.service(k)).collect(),
            slices: keys.iter().flat_map(|k| lookup.slices(k)).collect(),
        }
    }

    /// Every Service and EndpointSlice `lookup` holds.
    fn every(lookup: &'a dyn Lookup) -> Self {
        let (services, slices) = lookup.every();
        Self { services, slices }
    }

    /// `whole` with only this part's Services and EndpointSlices.
    fn view<'v>(&'v self, whole: &ClusterView<'v>) -> ClusterView<'v>
    where
        'a: 'v,
    {
        ClusterView {
            services: self.services.clone(),
            pools: whole.pools.clone(),
            advertisements: whole.advertisements.clone(),
            slices: self.slices.iter().copied().collect(),
            default_class: whole.default_class,
            bgp: whole.bgp.clone(),
            gateways: whole.gateways.clone(),
        }
    }
}

/// The Services and EndpointSlices of the caches, by Service, and which
/// changed. The watches say which objects they touched, and a cache hands
/// out the same `Arc` for an object until it changes, so an update looks
/// only at those and compares pointers: no object is compared or copied.
#[derive(Debug, Default)]
pub struct CachedObjects {
    services: HashMap<ServiceKey, Arc<Service>>,
    /// By Service, then by name (the order the whole view lists them in).
    slices: HashMap<ServiceKey, BTreeMap<String, Arc<EndpointSlice>>>,
    /// An EndpointSlice (namespace, name) → the Service it belongs to, to
    /// find it again when it is deleted or changes hands.
    slice_owner: HashMap<(String, String), ServiceKey>,
}

/// The Service an EndpointSlice belongs to.
fn owner_of(slice: &EndpointSlice) -> Option<ServiceKey> {
    Some(ServiceKey::new(
        slice.metadata.namespace.as_ref()?,
        slice.labels().get("kubernetes.io/service-name")?,
    ))
}

/// An EndpointSlice's (namespace, name).
pub type SliceName = (String, String);

impl CachedObjects {
    /// Takes in the objects a watch touched: each Service and EndpointSlice
    /// as the cache holds it now (`None`: deleted). Returns what changed,
    /// by Service; an object handed out again unchanged is no change.
    pub fn apply(
        &mut self,
        services: impl IntoIterator<Item = (ServiceKey, Option<Arc<Service>>)>,
        slices: impl IntoIterator<Item = (SliceName, Option<Arc<EndpointSlice>>)>,
    ) -> Changes {
        let mut changed_services = BTreeSet::new();
        for (key, now) in services {
            let before = self.services.get(&key);
            if before.map(Arc::as_ptr) == now.as_ref().map(Arc::as_ptr) {
                continue;
            }
            match now {
                Some(now) => self.services.insert(key.clone(), now),
                None => self.services.remove(&key),
            };
            changed_services.insert(key);
        }
        let mut changed_slices = BTreeSet::new();
        for (name, now) in slices {
            let owner = self.slice_owner.get(&name);
            let before = owner
                .and_then(|o| self.slices.get(o)?.get(&name.1))
                .map(Arc::as_ptr);
            if before == now.as_ref().map(Arc::as_ptr) {
                continue;
            }
            if let Some(owner) = self.slice_owner.remove(&name) {
                if let Some(of) = self.slices.get_mut(&owner) {
                    of.remove(&name.1);
                    if of.is_empty() {
                        self.slices.remove(&owner);
                    }
                }
                changed_slices.insert(owner);
            }
            if let Some(now) = now
                && let Some(owner) = owner_of(&now)
            {
                self.slices
                    .entry(owner.clone())
                    .or_default()
                    .insert(name.1.clone(), now);
                self.slice_owner.insert(name, owner.clone());
                changed_slices.insert(owner);
            }
        }
        Changes::Services {
            services: changed_services,
            slices: changed_slices,
        }
    }

    /// Takes in the caches whole (after a relist, when the watches cannot
    /// say what they touched); returns what changed, by Service.
    pub fn read(&mut self, services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Changes {
        let services: HashMap<ServiceKey, Arc<Service>> = services
            .iter()
            .map(|s| (translate::service_key(s), s.clone()))
            .collect();
        let slices: HashMap<SliceName, Arc<EndpointSlice>> = slices
            .iter()
            .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), s.clone()))
            .collect();
        let gone_services: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !services.contains_key(*k))
            .cloned()
            .collect();
        let gone_slices: Vec<SliceName> = self
            .slice_owner
            .keys()
            .filter(|k| !slices.contains_key(*k))
            .cloned()
            .collect();
        self.apply(
            services
                .into_iter()
                .map(|(k, s)| (k, Some(s)))
                .chain(gone_services.into_iter().map(|k| (k, None))),
            slices
                .into_iter()
                .map(|(k, s)| (k, Some(s)))
                .chain(gone_slices.into_iter().map(|k| (k, None))),
        )
    }
}

impl Lookup for CachedObjects {
    fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.services.get(key).map(AsRef::as_ref)
    }

    fn slices(&self, key: &ServiceKey) -> Vec<&EndpointSlice> {
        self.slices
            .get(key)
            .into_iter()
            .flat_map(|s| s.values().map(AsRef::as_ref))
            .collect()
    }

    fn every(&self) -> (Vec<&Service>, Vec<&EndpointSlice>) {
        let services = self.services.values().map(AsRef::as_ref).collect();
        let slices = self
            .slices
            .values()
            .flat_map(|s| s.values().map(AsRef::as_ref))
            .collect();
        (services, slices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::L2AdvertisementSpec;
    use crate::api::annotations::{FORWARDING, PROXY_PROTOCOL};
    use crate::testkit::{self, Svc, object};
    use proptest::prelude::*;
    use serde_json::json;

    /// The sixth Service: Gateway `gw`'s, on one of the three addresses.
    const GATEWAY: usize = 5;

    fn service_name(i: usize) -> String {
        if i == GATEWAY {
            crate::gateway::snapshot::service_name("gw")
        } else {
            format!("svc-{i}")
        }
    }

    /// Service `i` (of five, and the Gateway's) as one of eight variants:
    /// two of three addresses (so Services share), embedded or not, Local
    /// or not, a bad annotation or a UDP port.
    fn service(i: usize, variant: u8) -> Service {
        if i == GATEWAY {
            return object(json!({
                "metadata": {"namespace": "apps", "name": service_name(i),
                    "annotations": {FORWARDING: "embedded"},
                    "ownerReferences": [{"apiVersion": "gateway.networking.k8s.io/v1",
                        "kind": "Gateway", "name": "gw", "uid": "u", "controller": true}]},
                "spec": {"type": "LoadBalancer",
                    "ports": [{"name": "tcp-5432", "port": 5432, "protocol": "TCP"}]},
                "status": {"loadBalancer": {"ingress": [{"ip": format!("10.0.0.{}", 1 + variant % 3)}]}},
            }));
        }
        let mut s = Svc::lb("apps", &service_name(i))
            .port("http", 80, "TCP")
            .ingress(&format!("10.0.0.{}", 1 + (usize::from(variant) + i) % 3));
        if variant & 1 != 0 {
            s = s.annotation(FORWARDING, "embedded");
        }
        if variant & 2 != 0 {
            s = s.external_traffic_policy("Local");
        }
        if variant == 4 {
            s = s
                .annotation(FORWARDING, "embedded")
                .annotation(PROXY_PROTOCOL, "v9");
        }
        if variant == 6 {
            s = s.port("dns", 53, "UDP");
        }
        s.build()
    }

    /// EndpointSlice `j` of Service `i` (of the next Service when `moved`,
    /// as a relabelled slice is): endpoints on the nodes `nodes` (a bit
    /// each of three), ready as `ready` says.
    fn slice(i: usize, j: usize, nodes: u8, ready: bool, moved: bool) -> EndpointSlice {
        let owner = if moved { (i + 1) % 5 } else { i };
        let endpoints: Vec<_> = (0..3)
            .filter(|n| nodes & (1 << n) != 0)
            .map(|n| {
                json!({"addresses": [format!("10.1.{i}.{n}")], "nodeName": format!("n{n}"),
                            "conditions": {"ready": ready}})
            })
            .collect();
        object(json!({
            "metadata": {"namespace": "apps", "name": format!("svc-{i}-{j}"),
                         "labels": {"kubernetes.io/service-name": format!("svc-{owner}")}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
    }

    #[derive(Clone, Debug)]
    enum Change {
        Service(usize, Option<u8>),
        Slice(usize, usize, Option<(u8, bool, bool)>),
    }

    /// How the change reaches the kept view: as what the watch touched, as
    /// that plus objects handed out again unchanged, or as a relist.
    #[derive(Clone, Copy, Debug)]
    enum Told {
        Touched,
        WithUnchanged,
        Relist,
    }

    /// Gateway `gw` of an ironlb class, with a TCPRoute to Services 0 and 1.
    struct GatewayWorld {
        class: crate::api::gateway::GatewayClass,
        gateway: crate::api::gateway::Gateway,
        route: crate::api::gateway::TCPRoute,
    }

    impl GatewayWorld {
        fn new() -> Self {
            let v1 = "gateway.networking.k8s.io/v1";
            Self {
                class: object(json!({"apiVersion": v1, "kind": "GatewayClass",
                    "metadata": {"name": "ironlb"},
                    "spec": {"controllerName": crate::gateway::attach::CONTROLLER_NAME}})),
                gateway: object(json!({"apiVersion": v1, "kind": "Gateway",
                    "metadata": {"namespace": "apps", "name": "gw", "uid": "u"},
                    "spec": {"gatewayClassName": "ironlb",
                        "listeners": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}})),
                route: object(json!({"apiVersion": v1, "kind": "TCPRoute",
                    "metadata": {"namespace": "apps", "name": "pg"},
                    "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [
                        {"name": "svc-0", "port": 80, "weight": 3},
                        {"name": "svc-1", "port": 80, "weight": 1}]}]}})),
            }
        }

        fn objects(&self) -> crate::gateway::snapshot::Objects<'_> {
            crate::gateway::snapshot::Objects {
                classes: vec![&self.class],
                gateways: vec![&self.gateway],
                tcp: vec![&self.route],
                ..Default::default()
            }
        }
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (0..6usize, proptest::option::of(0..8u8)).prop_map(|(i, v)| Change::Service(i, v)),
            (
                0..5usize,
                0..2usize,
                proptest::option::of((0..8u8, any::<bool>(), any::<bool>()))
            )
                .prop_map(|(i, j, e)| Change::Slice(i, j, e)),
        ]
    }

    fn told() -> impl Strategy<Value = Told> {
        prop_oneof![
            4 => Just(Told::Touched),
            1 => Just(Told::WithUnchanged),
            1 => Just(Told::Relist),
        ]
    }

    proptest! {
        /// Change after change, however it is told, with or without a
        /// Gateway whose rules read some of the Services, the view kept per
        /// Service is the view of the whole cluster. The update is handed
        /// the other kinds only, as the speaker's feeder hands them.
        #[test]
        fn the_view_kept_per_service_is_the_view_of_the_whole_cluster(
            changes in proptest::collection::vec((change(), told()), 1..30),
            with_gateway in any::<bool>(),
        ) {
            let pools = [testkit::pool("lan", &["10.0.0.0/24"])];
            let ads = [L2Advertisement::new("all", L2AdvertisementSpec::default())];
            let world = GatewayWorld::new();
            let gateways = || if with_gateway { world.objects() } else { Default::default() };
            let mut services: BTreeMap<usize, Arc<Service>> = BTreeMap::new();
            let mut slices: BTreeMap<(usize, usize), Arc<EndpointSlice>> = BTreeMap::new();
            let mut kept = IncrementalView::default();
            let mut objects = CachedObjects::default();
            let service_key = |i: usize| ServiceKey::new("apps", service_name(i));
            let slice_name = |i: usize, j: usize| ("apps".to_string(), format!("svc-{i}-{j}"));
            for (n, (c, told)) in changes.iter().enumerate() {
                match c {
                    Change::Service(i, None) => { services.remove(i); }
                    Change::Service(i, Some(v)) => { services.insert(*i, Arc::new(service(*i, *v))); }
                    Change::Slice(i, j, None) => { slices.remove(&(*i, *j)); }
                    Change::Slice(i, j, Some((nodes, ready, moved))) => {
                        slices.insert((*i, *j), Arc::new(slice(*i, *j, *nodes, *ready, *moved)));
                    }
                }
                // Objects the watch hands out again as they were.
                let unchanged: Vec<usize> = match told {
                    Told::WithUnchanged => services.keys().copied().collect(),
                    _ => Vec::new(),
                };
                let all_services: Vec<Arc<Service>> = services.values().cloned().collect();
                let all_slices: Vec<Arc<EndpointSlice>> = slices.values().cloned().collect();
                let whole = ClusterView {
                    services: all_services.iter().map(AsRef::as_ref).collect(),
                    pools: pools.iter().collect(),
                    advertisements: ads.iter().collect(),
                    slices: all_slices.iter().map(AsRef::as_ref).collect(),
                    default_class: true,
                    bgp: Default::default(),
                    gateways: gateways(),
                };
                let others = ClusterView {
                    services: Vec::new(),
                    slices: Default::default(),
                    pools: whole.pools.clone(),
                    advertisements: whole.advertisements.clone(),
                    default_class: true,
                    bgp: Default::default(),
                    gateways: gateways(),
                };
                let changes = match (told, c) {
                    (Told::Relist, _) => objects.read(&all_services, &all_slices),
                    (_, Change::Service(i, _)) => objects.apply(
                        std::iter::once(*i)
                            .chain(unchanged)
                            .map(|i| (service_key(i), services.get(&i).cloned())),
                        [],
                    ),
                    (_, Change::Slice(i, j, _)) => objects.apply(
                        unchanged
                            .into_iter()
                            .map(|i| (service_key(i), services.get(&i).cloned())),
                        [(slice_name(*i, *j), slices.get(&(*i, *j)).cloned())],
                    ),
                };
                // The first update sees everything, as the speaker's does.
                let changes = if n == 0 { Changes::Everything } else { changes };
                kept.update(&others, &objects, &changes);
                let (frontends, invalid) = frontends(&whole);
                prop_assert_eq!(kept.announcements(), &by_address(announcements(&whole)), "after {:?}", c);
                prop_assert_eq!(kept.forwards(), &Forwards::new(frontends, invalid), "after {:?}", c);
            }
        }
    }
}
