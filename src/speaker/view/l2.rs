//! Layer 2: the addresses to announce, from Services, pools and
//! L2Advertisements, and who may announce each.

use super::*;

/// One address to announce, and the rules for who may.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The address.
    pub address: IpAddr,
    /// Its pool.
    pub pool: String,
    /// The Services on it.
    pub services: Vec<ServiceKey>,
    /// Interfaces named by the advertisements; empty: choose by subnet.
    pub interfaces: Vec<String>,
    /// Node selectors and local endpoints.
    pub constraints: Constraints,
    /// Announced on the LAN (ARP/NDP) by one elected node.
    pub l2: bool,
    /// Advertised over BGP by every eligible node, once per advertisement.
    pub bgp: Vec<BgpAdvertisement>,
}

/// The addresses to announce. An address's pool is the one the controller
/// recorded on its Service ([`crate::api::annotations::ALLOCATED_FROM_POOL`]),
/// never re-validated here: an address keeps answering while its pool is
/// edited, shrunk, overlapped, invalid or being deleted, exactly as long as the
/// controller lets the Service keep it. Only a Service with no record (written
/// before records existed) is matched against the valid pools' ranges. An
/// address whose pool no advertisement selects is allocated but not announced,
/// as in MetalLB; so is one with neither a record nor a pool.
pub fn announcements(view: &ClusterView<'_>) -> Vec<Announcement> {
    let context = Context::of(view);
    let mut by_address: BTreeMap<IpAddr, Vec<&Service>> = BTreeMap::new();
    for svc in &view.services {
        if translate::is_eligible(svc, view.default_class) {
            for ip in translate::status_addresses(svc) {
                by_address.entry(ip).or_default().push(svc);
            }
        }
    }
    by_address
        .into_iter()
        .filter_map(|(address, mut services)| {
            // Listed in one order whatever order the cache hands them in.
            services.sort_by_key(|s| translate::service_key(s));
            context.announcement(view, address, &services)
        })
        .collect()
}

/// The addresses to announce, by address: shared between the view and the
/// transitions that read it, not copied (a persistent map: a copy costs
/// nothing and a change O(log n)).
pub type Announcements = imbl::OrdMap<IpAddr, std::sync::Arc<Announcement>>;

/// `list` (one announcement per address) by address.
pub fn by_address(list: Vec<Announcement>) -> Announcements {
    list.into_iter()
        .map(|a| (a.address, std::sync::Arc::new(a)))
        .collect()
}

/// What every address's announcement reads besides its Services: the
/// pools, their labels and the BGP community aliases.
pub(super) struct Context {
    pools: Allocator,
    pool_labels: BTreeMap<String, BTreeMap<String, String>>,
    aliases: BTreeMap<String, String>,
}

impl Context {
    pub(super) fn of(view: &ClusterView<'_>) -> Self {
        let specs: Vec<_> = view
            .pools
            .iter()
            .filter_map(|p| translate::pool_spec(p).ok())
            .collect();
        let (pools, _) = Allocator::new(&specs);
        let pool_labels = view
            .pools
            .iter()
            .map(|p| (p.name_any(), p.labels().clone()))
            .collect();
        Self {
            pools,
            pool_labels,
            aliases: view.bgp.aliases(),
        }
    }

    /// The announcement of `address`, held by `services` (every eligible
    /// Service with it), if it is announced at all.
    pub(super) fn announcement(
        &self,
        view: &ClusterView<'_>,
        address: IpAddr,
        services: &[&Service],
    ) -> Option<Announcement> {
        let no_labels = BTreeMap::new();
        let recorded = services.iter().find_map(|s| translate::recorded_pool(s));
        let pool = recorded
            .or_else(|| self.pools.pool_of(address))
            .map(str::to_string)?;
        let labels = self.pool_labels.get(&pool).unwrap_or(&no_labels);
        let ads: Vec<&&L2Advertisement> = view
            .advertisements
            .iter()
            .filter(|ad| selects_pool(ad, &pool, labels))
            .collect();
        let bgp = bgp_advertisements(view, &pool, labels, address, &self.aliases);
        if ads.is_empty() && bgp.is_empty() {
            return None;
        }
        let mut interfaces: BTreeSet<String> = BTreeSet::new();
        let mut node_selectors = Vec::new();
        let mut any_ad_selects_all_nodes = false;
        for ad in &ads {
            interfaces.extend(ad.spec.interfaces.iter().cloned());
            if ad.spec.node_selectors.is_empty() {
                any_ad_selects_all_nodes = true;
            }
            node_selectors.extend(
                ad.spec
                    .node_selectors
                    .iter()
                    .filter_map(|s| translate::selector(s).ok()),
            );
        }
        if any_ad_selects_all_nodes {
            node_selectors.clear();
        } else if node_selectors.is_empty() {
            // Every selector was unreadable: nobody may announce.
            node_selectors.push(nothing());
        }
        // Every Service with externalTrafficPolicy Local needs a ready endpoint
        // on the announcing node.
        let local_endpoints = services
            .iter()
            .filter(|s| {
                s.spec
                    .as_ref()
                    .and_then(|sp| sp.external_traffic_policy.as_deref())
                    == Some("Local")
            })
            .map(|s| ready_nodes(s, &view.slices))
            .reduce(|a, b| a.intersection(&b).cloned().collect());
        Some(Announcement {
            address,
            pool,
            services: services.iter().map(|s| translate::service_key(s)).collect(),
            interfaces: interfaces.into_iter().collect(),
            constraints: Constraints {
                node_selectors,
                local_endpoints,
                allowed_nodes: None,
            },
            l2: !ads.is_empty(),
            bgp,
        })
    }
}

fn selects_pool(ad: &L2Advertisement, pool: &str, labels: &BTreeMap<String, String>) -> bool {
    let spec = &ad.spec;
    if spec.ip_address_pools.is_empty() && spec.ip_address_pool_selectors.is_empty() {
        return true;
    }
    spec.ip_address_pools.iter().any(|p| p == pool)
        || spec
            .ip_address_pool_selectors
            .iter()
            .filter_map(|s| translate::selector(s).ok())
            .any(|s| s.matches(labels))
}

/// Nodes with a ready endpoint of `svc`; serving-but-terminating endpoints
/// count only when no endpoint is ready, as kube-proxy does.
fn ready_nodes(svc: &Service, slices: &Slices<'_>) -> BTreeSet<String> {
    let key = translate::service_key(svc);
    let with_node: Vec<_> = slices
        .of(&key)
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.node_name.is_some())
        .collect();
    crate::forwarder::plan::usable(with_node, |e| {
        let c = e.conditions.as_ref();
        (
            c.and_then(|c| c.ready).unwrap_or(true),
            c.and_then(|c| c.serving) == Some(true),
        )
    })
    .into_iter()
    .filter_map(|e| e.node_name.clone())
    .collect()
}
