//! What the forwarder carries: Services with embedded forwarding and their
//! endpoints, and the Gateway routes decoded onto their ports.

use super::*;

/// A Service the forwarder can't serve as asked, and why (names the field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendError {
    /// The Service.
    pub service: ServiceKey,
    /// Its addresses: the owner of one reports the error.
    pub addresses: Vec<IpAddr>,
    /// What is wrong, naming the annotation or field.
    pub message: String,
}

/// A Service's PROXY protocol version, forwarding path and source ranges,
/// or what is wrong with them (naming the annotation or field).
fn options(
    spec: &ServiceSpec,
    annotations: &BTreeMap<String, String>,
) -> Result<
    (
        Option<crate::api::annotations::ProxyVersion>,
        crate::api::annotations::ForwardingPath,
        Vec<ipnetwork::IpNetwork>,
    ),
    String,
> {
    use crate::api::annotations::{FORWARDING_PATH, ForwardingPath, PROXY_PROTOCOL, ProxyVersion};
    let proxy = annotations
        .get(PROXY_PROTOCOL)
        .map(|v| ProxyVersion::parse(v))
        .transpose()
        .map_err(|e| format!("annotation {PROXY_PROTOCOL}: {e}"))?;
    let path = annotations
        .get(FORWARDING_PATH)
        .map(|v| ForwardingPath::parse(v))
        .transpose()
        .map_err(|e| format!("annotation {FORWARDING_PATH}: {e}"))?
        .unwrap_or_default();
    Ok((proxy, path, source_ranges(spec, annotations)?))
}

/// A Service that asks for the kernel path and for something only user space
/// does is refused whole: serving it either way would ignore half of what
/// was asked.
pub fn kernel_path_fits(policy: &Policy, routed: bool) -> Result<(), String> {
    use crate::api::annotations::ForwardingPath;
    match crate::forwarder::plan::user_space_need(policy, routed) {
        Some(need) if policy.path == ForwardingPath::Kernel => Err(format!(
            "\"kernel\" cannot {need}; remove one of the two or ask for \"user\""
        )),
        _ => Ok(()),
    }
}

/// The Services with `ironlb.dev/forwarding: embedded` and an address, as the
/// forwarder sees them, with their endpoints from the EndpointSlices. A Service
/// with an unreadable setting is left out and named in the errors (a listener
/// that ignores the PROXY protocol or the source ranges the user asked for
/// would be worse than none).
pub fn frontends(view: &ClusterView<'_>) -> (Vec<Frontend>, Vec<FrontendError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let programs = gateway_programs(view);
    let services = services_by_key(view, &programs);
    for svc in &view.services {
        let (frontend, mut e) = frontend_of(svc, view, &programs, &services);
        out.extend(frontend);
        errors.append(&mut e);
    }
    (out, errors)
}

/// Routes name their backend Services: found by key, not by a scan each.
pub(super) fn services_by_key<'a>(
    view: &ClusterView<'a>,
    programs: &Programs,
) -> HashMap<ServiceKey, &'a Service> {
    if programs.is_empty() {
        return HashMap::new();
    }
    view.services
        .iter()
        .map(|s| (translate::service_key(s), *s))
        .collect()
}

/// The Gateways' Services' programs, by Service.
pub(super) type Programs = BTreeMap<ServiceKey, crate::gateway::attach::Program>;

/// One Service's frontend, if the forwarder carries it, and what keeps it
/// (or one of its ports) from being carried as asked.
pub(super) fn frontend_of(
    svc: &Service,
    view: &ClusterView<'_>,
    programs: &Programs,
    services: &HashMap<ServiceKey, &Service>,
) -> (Option<Frontend>, Vec<FrontendError>) {
    use crate::api::annotations::{FORWARDING, FORWARDING_PATH, Forwarding};
    let mut errors = Vec::new();
    if !translate::is_eligible(svc, view.default_class) {
        return (None, errors);
    }
    let addresses = translate::status_addresses(svc);
    let annotations = svc.annotations();
    let embedded = annotations
        .get(FORWARDING)
        .and_then(|v| Forwarding::parse(v).ok())
        == Some(Forwarding::Embedded);
    if addresses.is_empty() || !embedded {
        return (None, errors);
    }
    let key = translate::service_key(svc);
    let fail = |message: String| FrontendError {
        service: key.clone(),
        addresses: addresses.clone(),
        message,
    };
    let Some(spec) = &svc.spec else {
        return (None, errors);
    };
    let (proxy, path, source_ranges) = match options(spec, annotations) {
        Ok(options) => options,
        Err(m) => return (None, vec![fail(m)]),
    };
    let mut routing = programs
        .get(&key)
        .map(|program| gateway_routing(program, view, services));
    let mut ports = Vec::new();
    for p in spec.ports.iter().flatten() {
        let protocol = match Protocol::of_port(p.protocol.as_deref()) {
            Ok(protocol @ (Protocol::Tcp | Protocol::Udp)) => protocol,
            _ => {
                errors.push(fail(format!(
                    "spec.ports[{}]: protocol {} is not forwarded (TCP and UDP are)",
                    p.name.as_deref().unwrap_or(&p.port.to_string()),
                    p.protocol.as_deref().unwrap_or_default()
                )));
                continue;
            }
        };
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        ports.push(FrontendPort {
            name: p.name.clone().unwrap_or_default(),
            port,
            protocol,
            routing: routing.as_mut().map(|r| {
                r.remove(&(port, protocol)).unwrap_or(FrontendRouting {
                    sni: false,
                    routes: Vec::new(),
                })
            }),
        });
    }
    let policy = Policy {
        local: spec.external_traffic_policy.as_deref() == Some("Local"),
        affinity: affinity(spec),
        proxy,
        source_ranges,
        path,
    };
    if let Err(e) = kernel_path_fits(&policy, routing.is_some()) {
        errors.push(fail(format!("annotation {FORWARDING_PATH}: {e}")));
        return (None, errors);
    }
    let frontend = Frontend {
        endpoints: endpoints_of(&key, &view.slices),
        service: key,
        addresses,
        ports,
        policy,
    };
    (Some(frontend), errors)
}

/// A Gateway's routes by port and transport.
type GatewayPorts = BTreeMap<(u16, Protocol), FrontendRouting>;

/// The programs of the Gateways' Services, from the Gateway API objects by
/// the rules the controller's statuses follow: a speaker trusts no route
/// table written on any object, since whoever may edit a Service could
/// write one naming another namespace's backends.
pub(super) fn gateway_programs(view: &ClusterView<'_>) -> Programs {
    use crate::gateway::{attach, snapshot};
    if view.gateways.gateways.is_empty() {
        return BTreeMap::new();
    }
    let snap = snapshot::snapshot(&view.gateways, &view.services);
    snapshot::programs(attach::decide(&snap), &view.gateways, &view.services)
}

/// The source ranges a Service admits: the field, or else the older
/// annotation, as kube-proxy reads them (a Gateway's infrastructure
/// annotations can set only the latter). The error names the bad one.
fn source_ranges(
    spec: &ServiceSpec,
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<ipnetwork::IpNetwork>, String> {
    use crate::api::annotations::SOURCE_RANGES;
    let (ranges, where_): (Vec<&str>, String) = match spec.load_balancer_source_ranges.as_deref() {
        Some(r) if !r.is_empty() => (
            r.iter().map(String::as_str).collect(),
            "spec.loadBalancerSourceRanges".into(),
        ),
        _ => (
            annotations
                .get(SOURCE_RANGES)
                .map(|v| v.split(',').filter(|r| !r.trim().is_empty()).collect())
                .unwrap_or_default(),
            format!("annotation {SOURCE_RANGES}"),
        ),
    };
    let mut source_ranges = Vec::new();
    let mut bad_range = None;
    for r in ranges {
        match r.trim().parse::<ipnetwork::IpNetwork>() {
            Ok(n) => source_ranges.push(n),
            Err(e) => bad_range = Some(format!("{where_}: {r:?}: {e}")),
        }
    }
    match bad_range {
        Some(m) => Err(m),
        None => Ok(source_ranges),
    }
}

/// `sessionAffinity: ClientIP`'s timeout (Kubernetes' default: 3 hours).
fn affinity(spec: &ServiceSpec) -> Option<std::time::Duration> {
    (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let seconds = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .unwrap_or(10_800);
        std::time::Duration::from_secs(u64::try_from(seconds.max(1)).unwrap_or(1))
    })
}

/// A Gateway's routes by port and transport, with each backend resolved to
/// its endpoints.
fn gateway_routing(
    program: &crate::gateway::attach::Program,
    view: &ClusterView<'_>,
    services: &HashMap<ServiceKey, &Service>,
) -> GatewayPorts {
    use crate::gateway::attach;
    let mut out = BTreeMap::new();
    for p in &program.ports {
        let (protocol, sni) = match p.protocol {
            attach::ListenerProtocol::Tcp => (Protocol::Tcp, false),
            attach::ListenerProtocol::Tls => (Protocol::Tcp, true),
            attach::ListenerProtocol::Udp => (Protocol::Udp, false),
        };
        let routes = p
            .routes
            .iter()
            .map(|r| FrontendRoute {
                name: r.route.clone(),
                hostnames: r.hostnames.clone(),
                shares: r
                    .backends
                    .iter()
                    .map(|b| backend_share(b, protocol, view, services))
                    .collect(),
            })
            .collect();
        out.insert((p.port, protocol), FrontendRouting { sni, routes });
    }
    out
}

/// A route's backend Service port as a share: its endpoints, found by the
/// Service port's name as its EndpointSlices list it. A backend that is not
/// usable, or whose Service or port is gone, keeps its weight with no
/// endpoint port: its share is refused.
fn backend_share(
    b: &crate::gateway::attach::ProgramBackend,
    protocol: Protocol,
    view: &ClusterView<'_>,
    services: &HashMap<ServiceKey, &Service>,
) -> FrontendShare {
    let key = ServiceKey::new(&b.namespace, &b.name);
    let port = services
        .get(&key)
        .filter(|_| b.usable)
        .and_then(|s| s.spec.as_ref()?.ports.as_ref())
        .and_then(|ports| {
            ports.iter().find(|p| {
                i32::from(b.port) == p.port
                    && Protocol::of_port(p.protocol.as_deref()) == Ok(protocol)
            })
        })
        .map(|p| p.name.clone().unwrap_or_default());
    FrontendShare {
        weight: b.weight,
        endpoints: match port {
            Some(_) => endpoints_of(&key, &view.slices),
            None => Vec::new(),
        },
        port,
    }
}

/// The endpoints of Service `key` from its EndpointSlices.
fn endpoints_of(key: &ServiceKey, slices: &Slices<'_>) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for slice in slices.of(key) {
        let ports: BTreeMap<(String, Protocol), u16> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let protocol = Protocol::of_port(p.protocol.as_deref()).ok()?;
                let port = u16::try_from(p.port?).ok()?;
                Some(((p.name.clone().unwrap_or_default(), protocol), port))
            })
            .collect();
        for e in &slice.endpoints {
            let translate::Readiness { ready, serving } = translate::readiness(e);
            for a in &e.addresses {
                let Ok(address) = a.parse::<IpAddr>() else {
                    continue;
                };
                out.push(Endpoint {
                    address,
                    node: e.node_name.clone(),
                    ready,
                    serving,
                    ports: ports.clone(),
                });
            }
        }
    }
    out
}
