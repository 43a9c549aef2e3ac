//! Speaker scale benchmark: `cargo bench --bench speaker_scale`.
//!
//! Clusters of three sizes, up to 10,000 LoadBalancer Services, 50,000
//! endpoints and 1,000 nodes, and the largest's Services on the smallest's
//! 100 nodes, fed to what a speaker computes on every change,
//! as its feeder and loop do: the objects the watches touched taken in
//! (`view::CachedObjects`), the view kept per Service (`view::IncrementalView`:
//! what to announce and what to forward) and the transition
//! (`transition::step`: who owns what, what to do). Measured per change, the
//! median of several: one endpoint becomes unready, one Service gains an
//! annotation, one node leaves the group; for the first two, the part spent
//! finding the change and updating the view. Plus the resident memory the
//! cluster's objects and the view take. Not a test: the figures depend on the
//! machine.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ironlb::api::annotations::{ALLOCATED_FROM_POOL, FORWARDING};
use ironlb::api::{L2Advertisement, L2AdvertisementSpec};
use ironlb::ipam::ServiceKey;
use ironlb::speaker::Timing;
use ironlb::speaker::transition::{self, Cause, Settings, State, World};
use ironlb::speaker::view::{CachedObjects, Changes, ClusterView, IncrementalView};
use ironlb::testkit::{Svc, object, pool};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

/// Endpoints per Service.
const ENDPOINTS: usize = 5;

/// Changes timed per kind; the median is printed.
const REPEATS: usize = 50;

/// The cluster as the speaker's caches hold it: an `Arc` per object, new
/// when the object changes.
struct Cluster {
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    nodes: Vec<Node>,
    pools: Vec<ironlb::api::IPAddressPool>,
    ads: Vec<L2Advertisement>,
}

fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// `services` Services, every second one forwarded by ironlb and every
/// third with `externalTrafficPolicy: Local`, each with [`ENDPOINTS`]
/// endpoints spread over `nodes` nodes.
fn cluster(services: usize, nodes: usize) -> Cluster {
    let address = |i: usize| format!("10.{}.{}.{}", 100 + i / 65_536, (i / 256) % 256, i % 256);
    let services_v = (0..services)
        .map(|i| {
            let mut s = Svc::lb("apps", &format!("svc-{i}"))
                .annotation(ALLOCATED_FROM_POOL, "lan")
                .ingress(&address(i));
            if i % 2 == 0 {
                s = s.annotation(FORWARDING, "embedded");
            }
            if i % 3 == 0 {
                s = s.external_traffic_policy("Local");
            }
            Arc::new(s.build())
        })
        .collect();
    let slices = (0..services)
        .map(|i| Arc::new(slice(i, nodes, |_| true)))
        .collect::<Vec<_>>();
    let nodes_v = (0..nodes)
        .map(|i| object(json!({"metadata": {"name": node_name(i), "labels": {"kubernetes.io/hostname": node_name(i)}}})))
        .collect();
    Cluster {
        services: services_v,
        slices,
        nodes: nodes_v,
        pools: vec![pool("lan", &["10.100.0.0/14"])],
        ads: vec![L2Advertisement::new("all", L2AdvertisementSpec::default())],
    }
}

/// Service `i`'s EndpointSlice; endpoint `e` is ready when `ready(e)`.
fn slice(i: usize, nodes: usize, ready: impl Fn(usize) -> bool) -> EndpointSlice {
    let endpoints: Vec<_> = (0..ENDPOINTS)
        .map(|e| {
            let n = (i * ENDPOINTS + e) % nodes;
            json!({
                "addresses": [format!("10.{}.{}.{}", 200 + n / 256 % 50, n % 256, e + 1)],
                "nodeName": node_name(n),
                "conditions": {"ready": ready(e)},
            })
        })
        .collect();
    object(json!({
        "metadata": {
            "namespace": "apps",
            "name": format!("svc-{i}-abcde"),
            "labels": {"kubernetes.io/service-name": format!("svc-{i}")},
        },
        "addressType": "IPv4",
        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
}

/// The speaker's view, kept per Service: what its feeder does on every
/// change of the caches.
struct Feeder {
    objects: CachedObjects,
    view: IncrementalView,
}

/// What the watches touched: Service `i`, EndpointSlice `i`.
enum Touched {
    Service(usize),
    Slice(usize),
}

impl Feeder {
    /// Takes in the objects the watches touched (`None`: the first list,
    /// everything) and updates the view.
    fn update(&mut self, c: &Cluster, touched: Option<Touched>) {
        let v = ClusterView {
            services: Vec::new(),
            pools: c.pools.iter().collect(),
            advertisements: c.ads.iter().collect(),
            slices: Default::default(),
            default_class: true,
            bgp: Default::default(),
            gateways: Default::default(),
        };
        let key = |i: usize| ServiceKey::new("apps", format!("svc-{i}"));
        let changes = match touched {
            None => {
                self.objects.read(&c.services, &c.slices);
                Changes::Everything
            }
            Some(Touched::Service(i)) => self
                .objects
                .apply([(key(i), Some(c.services[i].clone()))], []),
            Some(Touched::Slice(i)) => self.objects.apply(
                [],
                [(
                    ("apps".to_string(), format!("svc-{i}-abcde")),
                    Some(c.slices[i].clone()),
                )],
            ),
        };
        self.view.update(&v, &self.objects, &changes);
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

struct Row {
    services: usize,
    endpoints: usize,
    nodes: usize,
    endpoint_change: Duration,
    service_change: Duration,
    node_loss: Duration,
    /// Of a Service or endpoint change, the part spent finding what changed
    /// and updating the view (the rest is the transition).
    view_part: Duration,
    memory_mib: f64,
}

/// `start`: the process's resident KiB before the first cluster. The
/// memory is what it holds above that once this cluster is taken in, an
/// upper bound of the cluster's own: what earlier ones freed may stay with
/// the allocator.
fn measure(services: usize, nodes: usize, start: u64) -> Row {
    let mut c = cluster(services, nodes);
    let mut feeder = Feeder {
        objects: CachedObjects::default(),
        view: IncrementalView::default(),
    };
    feeder.update(&c, None);
    let memory_mib = rss_kib().saturating_sub(start) as f64 / 1024.0;

    // A speaker on node 1, settled on the whole cluster.
    let settings = Settings {
        node: node_name(1),
        cluster: true,
        timing: Timing {
            announce_count: 3,
            announce_interval: Duration::from_millis(200),
            reannounce: Duration::ZERO,
        },
        reserved: Default::default(),
    };
    let world = World {
        members: Arc::new((0..nodes).map(node_name).collect::<BTreeSet<String>>()),
        health: Default::default(),
        desired: feeder.view.announcements().clone(),
        node_objects: Arc::new(c.nodes.clone()),
        bgp_peers: Vec::new(),
        links: vec![ironlb::netlink::test_link("eth0", 2, "10.100.0.1/14")],
        forwards: feeder.view.forwards().clone(),
        faults: Default::default(),
        broken: Default::default(),
        now: Instant::now(),
    };
    let mut state = State::default();
    transition::step(&settings, &mut state, &world, Cause::Start);

    // One change, handled as the speaker does: the feeder finds what changed
    // and updates the view, then the loop steps from where it was.
    let mut view_part = Vec::new();
    let mut handle = |c: &Cluster, touched: Touched, state: &mut State| {
        let start = Instant::now();
        feeder.update(c, Some(touched));
        view_part.push(start.elapsed());
        let w = World {
            desired: feeder.view.announcements().clone(),
            forwards: feeder.view.forwards().clone(),
            now: Instant::now(),
            ..world.clone()
        };
        std::hint::black_box(transition::step(&settings, state, &w, Cause::View));
        start.elapsed()
    };
    let mut endpoint_change = Vec::new();
    let mut service_change = Vec::new();
    for r in 0..REPEATS {
        let i = (r * 7_919) % services;
        c.slices[i] = Arc::new(slice(i, nodes, |e| e != r % ENDPOINTS));
        endpoint_change.push(handle(&c, Touched::Slice(i), &mut state));

        let mut changed = (*c.services[i]).clone();
        changed
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("example.com/changed".into(), r.to_string());
        c.services[i] = Arc::new(changed);
        service_change.push(handle(&c, Touched::Service(i), &mut state));
    }

    let view_part = median(view_part);
    // A node leaves: the transition of a surviving node, from a settled
    // state, with the view as it is.
    let world = World {
        desired: feeder.view.announcements().clone(),
        forwards: feeder.view.forwards().clone(),
        ..world
    };
    transition::step(&settings, &mut state, &world, Cause::View);
    // Each time from the settled state: the node leaves (timed), then
    // comes back (not timed), as a speaker's state lives on, not a copy.
    let mut node_loss = Vec::new();
    for r in 0..REPEATS {
        let mut w = world.clone();
        Arc::make_mut(&mut w.members).remove(&node_name(2 + r % (nodes - 2)));
        w.now = Instant::now();
        let start = Instant::now();
        std::hint::black_box(transition::step(
            &settings,
            &mut state,
            &w,
            Cause::Membership,
        ));
        node_loss.push(start.elapsed());
        transition::step(&settings, &mut state, &world, Cause::Membership);
    }
    Row {
        services,
        endpoints: services * ENDPOINTS,
        nodes,
        endpoint_change: median(endpoint_change),
        service_change: median(service_change),
        node_loss: median(node_loss),
        view_part,
        memory_mib,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // The three sizes grow together; the last keeps the first's nodes with
    // the largest's Services, to tell what a node loss's cost follows.
    let sizes = [(1_000, 100), (3_000, 300), (10_000, 1_000), (10_000, 100)];
    println!(
        "speaker scale: per-change cost (median of {REPEATS}) of the view and the transition\n"
    );
    println!(
        "{:>8} {:>9} {:>6} {:>12} {:>11} {:>8} {:>13} {:>8}",
        "services",
        "endpoints",
        "nodes",
        "endpoint_ms",
        "service_ms",
        "view_ms",
        "node_loss_ms",
        "mem_MiB"
    );
    let mut rows = Vec::new();
    let start = rss_kib();
    for (services, nodes) in sizes {
        let r = measure(services, nodes, start);
        println!(
            "{:>8} {:>9} {:>6} {:>12.2} {:>11.2} {:>8.2} {:>13.2} {:>8.0}",
            r.services,
            r.endpoints,
            r.nodes,
            ms(r.endpoint_change),
            ms(r.service_change),
            ms(r.view_part),
            ms(r.node_loss),
            r.memory_mib
        );
        rows.push(r);
    }
    let (small, large, few_nodes) = (&rows[0], &rows[2], &rows[3]);
    let growth = |a: Duration, b: Duration| ms(b) / ms(a).max(1e-6);
    println!(
        "\nspeaker_scale endpoint_change_ms={:.2} service_change_ms={:.2} node_loss_ms={:.2} \
         memory_mib={:.0} growth_10x_endpoint={:.1} growth_10x_node_loss={:.1} \
         node_loss_10x_services_same_nodes={:.1}",
        ms(large.endpoint_change),
        ms(large.service_change),
        ms(large.node_loss),
        large.memory_mib,
        growth(small.endpoint_change, large.endpoint_change),
        growth(small.node_loss, large.node_loss),
        growth(small.node_loss, few_nodes.node_loss),
    );
}
