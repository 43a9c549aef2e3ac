//! The edge between Kubernetes objects and the allocator: Services and pools in,
//! plain [`ipam`] types out, and the Service status the allocator's answer means.
//!
//! Pure: every function takes objects and returns data or an error that names
//! the object and the field, so a user can act on it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector as K8sSelector, Time};
use kube::ResourceExt;

use crate::api::annotations::{
    self, ADDRESS_POOL_KEYS, ALLOW_SHARED_IP_KEYS, Forwarding, LOAD_BALANCER_IPS_KEYS,
};
use crate::api::{CONDITION_VALID, IPAddressPool, LOAD_BALANCER_CLASS};
use crate::ipam::{self, Family, FamilyPolicy, Labels, Operator, Port, Protocol, ServiceKey};

/// A field of a Service that ironlb could not read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("service {service}: {field}: {problem}")]
pub struct FieldError {
    /// The Service.
    pub service: ServiceKey,
    /// The field or annotation, as the user wrote it (`spec.loadBalancerIP`,
    /// `metadata.annotations[ironlb.dev/load-balancer-ips]`).
    pub field: String,
    /// What is wrong with its value.
    pub problem: String,
}

impl FieldError {
    /// The event and metric reason.
    pub fn reason(&self) -> &'static str {
        "InvalidRequest"
    }
}

/// The key of a Service object.
pub fn service_key(svc: &Service) -> ServiceKey {
    ServiceKey::new(svc.namespace().unwrap_or_default(), svc.name_any())
}

/// Whether ironlb serves this Service: `type: LoadBalancer`, and its
/// `loadBalancerClass` is ours, or unset when ironlb is the default class.
pub fn is_eligible(svc: &Service, default_class: bool) -> bool {
    let Some(spec) = &svc.spec else {
        return false;
    };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return false;
    }
    match spec.load_balancer_class.as_deref() {
        None => default_class,
        Some(class) => class == LOAD_BALANCER_CLASS,
    }
}

/// Seconds since the epoch, 0 when unknown.
pub fn seconds(time: Option<&Time>) -> i64 {
    time.map_or(0, |t| t.0.as_second())
}

/// Whether an EndpointSlice endpoint is ready and serving, as the
/// EndpointSlice API reads them: an unset `ready` is ready, an unset
/// `serving` is as `ready`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// Takes new connections.
    pub ready: bool,
    /// Can serve (a terminating endpoint may still be serving).
    pub serving: bool,
}

/// An endpoint's [`Readiness`].
pub fn readiness(endpoint: &k8s_openapi::api::discovery::v1::Endpoint) -> Readiness {
    let conditions = endpoint.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    Readiness {
        ready,
        serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
    }
}

/// What a Service asks the allocator for, and how its traffic is forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The allocator's view of the Service.
    pub service: ipam::Service,
    /// The forwarding mode, which sets the status' `ipMode`.
    pub forwarding: Forwarding,
}

/// A field, and what is wrong with its value.
type Problem = (String, String);

/// Reads everything the allocator needs from a Service. `namespace_labels` are
/// the labels of its Namespace.
pub fn request(svc: &Service, namespace_labels: &Labels) -> Result<Request, FieldError> {
    let key = service_key(svc);
    let fail = |(field, problem): Problem| FieldError {
        service: key.clone(),
        field,
        problem,
    };
    let spec = svc.spec.clone().unwrap_or_default();
    let annotations = svc.annotations();

    let mut out = ipam::Service::new(&key.namespace, &key.name)
        .created_at(seconds(svc.metadata.creation_timestamp.as_ref()));
    out.labels = svc.labels().clone();
    out.namespace_labels = namespace_labels.clone();
    if let Some(families) = families(&spec).map_err(fail)? {
        out.families = families;
    }
    out.family_policy = family_policy(&spec).map_err(fail)?;
    out.addresses = addresses(annotations, &spec).map_err(fail)?;
    if let Some((name, pool)) = annotations::lookup(annotations, &ADDRESS_POOL_KEYS) {
        let pool = pool.trim();
        if pool.is_empty() {
            return Err(fail((
                annotation_field(name),
                "is empty; name an IPAddressPool".into(),
            )));
        }
        out.pool = Some(pool.to_string());
    }
    if let Some((_, key)) = annotations::lookup(annotations, &ALLOW_SHARED_IP_KEYS) {
        out.sharing_key = Some(key.trim().to_string()).filter(|k| !k.is_empty());
    }
    out.ports = ports(&spec).map_err(fail)?;
    out.backend = match spec.external_traffic_policy.as_deref() {
        Some("Local") => ipam::Backend::Local {
            selector: spec.selector.clone().unwrap_or_default(),
        },
        _ => ipam::Backend::Cluster,
    };
    let forwarding = match annotations.get(annotations::FORWARDING) {
        Some(value) => Forwarding::parse(value)
            .map_err(|p| fail((annotation_field(annotations::FORWARDING), p)))?,
        None => Forwarding::default(),
    };
    Ok(Request {
        service: out,
        forwarding,
    })
}

fn annotation_field(name: &str) -> String {
    format!("metadata.annotations[{name}]")
}

/// `spec.ipFamilies`, when set (an empty list is IPv4).
fn families(spec: &ServiceSpec) -> Result<Option<Vec<Family>>, Problem> {
    let Some(families) = &spec.ip_families else {
        return Ok(None);
    };
    let mut out = families
        .iter()
        .enumerate()
        .map(|(i, f)| match f.as_str() {
            "IPv4" => Ok(Family::V4),
            "IPv6" => Ok(Family::V6),
            other => Err((
                format!("spec.ipFamilies[{i}]"),
                format!("{other:?} is not IPv4 or IPv6"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if out.is_empty() {
        out = vec![Family::V4];
    }
    Ok(Some(out))
}

fn family_policy(spec: &ServiceSpec) -> Result<FamilyPolicy, Problem> {
    match spec.ip_family_policy.as_deref() {
        None | Some("SingleStack") => Ok(FamilyPolicy::SingleStack),
        Some("PreferDualStack") => Ok(FamilyPolicy::PreferDualStack),
        Some("RequireDualStack") => Ok(FamilyPolicy::RequireDualStack),
        Some(other) => Err((
            "spec.ipFamilyPolicy".into(),
            format!("{other:?} is not SingleStack, PreferDualStack or RequireDualStack"),
        )),
    }
}

/// The addresses asked for, by annotation or `spec.loadBalancerIP` (both
/// only when they agree).
fn addresses(
    annotations: &BTreeMap<String, String>,
    spec: &ServiceSpec,
) -> Result<Vec<IpAddr>, Problem> {
    let from_annotation = annotations::lookup(annotations, &LOAD_BALANCER_IPS_KEYS)
        .map(|(name, value)| {
            parse_addresses(value)
                .map_err(|p| (annotation_field(name), p))
                .map(|a| (name, a))
        })
        .transpose()?;
    let from_spec = spec
        .load_balancer_ip
        .as_deref()
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            v.trim().parse::<IpAddr>().map_err(|_| {
                (
                    "spec.loadBalancerIP".to_string(),
                    format!("{v:?} is not an IP address"),
                )
            })
        })
        .transpose()?;
    match (from_annotation, from_spec) {
        (Some((name, addrs)), Some(ip)) if addrs != [ip] => Err((
            annotation_field(name),
            format!(
                "asks for {} but spec.loadBalancerIP asks for {ip}; set only one of them",
                join(&addrs, ",")
            ),
        )),
        (Some((_, addrs)), _) => Ok(addrs),
        (None, Some(ip)) => Ok(vec![ip]),
        (None, None) => Ok(Vec::new()),
    }
}

fn ports(spec: &ServiceSpec) -> Result<Vec<Port>, Problem> {
    spec.ports
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, port)| {
            let protocol = Protocol::of_port(port.protocol.as_deref())
                .map_err(|e| (format!("spec.ports[{i}].protocol"), e))?;
            let number = u16::try_from(port.port).map_err(|_| {
                (
                    format!("spec.ports[{i}].port"),
                    format!("{} is not a port number", port.port),
                )
            })?;
            Ok(Port {
                protocol,
                port: number,
            })
        })
        .collect()
}

fn parse_addresses(value: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        out.push(part.parse().map_err(|_| {
            format!("{part:?} is not an IP address (expected a comma-separated list)")
        })?);
    }
    if out.is_empty() {
        return Err("is empty; list one address per family, comma-separated".into());
    }
    Ok(out)
}

/// Addresses as text, separated by `sep`.
pub(crate) fn join(addrs: &[IpAddr], sep: &str) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

/// The addresses in a Service's status (`status.loadBalancer.ingress[].ip`).
/// Entries that are hostnames or not addresses are not ironlb's and are skipped.
pub fn status_addresses(svc: &Service) -> Vec<IpAddr> {
    current_ingress(svc)
        .iter()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

/// The ingress entries a Service should show for `addresses`.
pub fn ingress(addresses: &[IpAddr], forwarding: Forwarding) -> Vec<LoadBalancerIngress> {
    addresses
        .iter()
        .map(|ip| LoadBalancerIngress {
            ip: Some(ip.to_string()),
            ip_mode: Some(forwarding.ip_mode().to_string()),
            ..Default::default()
        })
        .collect()
}

/// The Service's current ingress entries.
pub fn current_ingress(svc: &Service) -> Vec<LoadBalancerIngress> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default()
}

/// A pool as the allocator sees it, or why it can't be read (a selector with an
/// unknown operator). Entry syntax is checked by the allocator itself.
pub fn pool_spec(pool: &IPAddressPool) -> Result<ipam::PoolSpec, String> {
    let spec = &pool.spec;
    let allocation = spec
        .service_allocation
        .as_ref()
        .map(|sa| -> Result<ipam::AllocationRules, String> {
            let convert = |field: &str, selectors: &[K8sSelector]| {
                selectors
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        selector(s).map_err(|e| format!("spec.serviceAllocation.{field}[{i}].{e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            Ok(ipam::AllocationRules {
                priority: sa.priority,
                namespaces: sa.namespaces.clone(),
                namespace_selectors: convert("namespaceSelectors", &sa.namespace_selectors)?,
                service_selectors: convert("serviceSelectors", &sa.service_selectors)?,
            })
        })
        .transpose()?;
    let cross_namespace = spec
        .cross_namespace_sharing
        .as_ref()
        .map(|c| -> Result<ipam::NamespaceMatch, String> {
            let namespace_selectors = c
                .namespace_selectors
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    selector(s).map_err(|e| {
                        format!("spec.crossNamespaceSharing.namespaceSelectors[{i}].{e}")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ipam::NamespaceMatch {
                namespaces: c.namespaces.clone(),
                namespace_selectors,
            })
        })
        .transpose()?;
    Ok(ipam::PoolSpec {
        cross_namespace,
        name: pool.name_any(),
        created_at: seconds(pool.metadata.creation_timestamp.as_ref()),
        established: is_established(pool),
        addresses: spec.addresses.clone(),
        auto_assign: spec.auto_assign,
        avoid_buggy_ips: spec.avoid_buggy_ips,
        allocation,
    })
}

/// Whether `pool` was accepted in its current form: its `Valid` condition is
/// true and was computed for its current `metadata.generation`.
pub fn is_established(pool: &IPAddressPool) -> bool {
    pool.status.iter().flat_map(|s| &s.conditions).any(|c| {
        c.type_ == CONDITION_VALID
            && c.status == "True"
            && c.observed_generation.is_some()
            && c.observed_generation == pool.metadata.generation
    })
}

/// Whether `pool` is being deleted (it waits for its finalizer).
pub fn is_terminating(pool: &IPAddressPool) -> bool {
    pool.metadata.deletion_timestamp.is_some()
}

/// The pool a Service's addresses were recorded to come from
/// ([`annotations::ALLOCATED_FROM_POOL`], else MetalLB's spelling).
pub fn recorded_pool(svc: &Service) -> Option<&str> {
    annotations::lookup(svc.annotations(), &annotations::ALLOCATED_FROM_POOL_KEYS)
        .map(|(_, pool)| pool)
        .filter(|pool| !pool.is_empty())
}

/// Whether `ip` lies in one of `pool`'s entries as written (valid or not).
pub fn pool_contains(pool: &IPAddressPool, ip: IpAddr) -> bool {
    pool.spec
        .addresses
        .iter()
        .filter_map(|e| ipam::AddressRange::parse(e).ok())
        .any(|r| r.contains(ip))
}

/// A Kubernetes label selector as a plain one; the error names the field inside
/// the selector.
pub fn selector(s: &K8sSelector) -> Result<ipam::LabelSelector, String> {
    let match_expressions = s
        .match_expressions
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, e)| {
            let operator = match e.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(format!(
                        "matchExpressions[{i}].operator: {other:?} is not one of In, NotIn, Exists, DoesNotExist"
                    ));
                }
            };
            Ok(ipam::Requirement {
                key: e.key.clone(),
                operator,
                values: e.values.clone().unwrap_or_default(),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(ipam::LabelSelector {
        match_labels: s.match_labels.clone().unwrap_or_default(),
        match_expressions,
    })
}

/// Labels of each Namespace, by name.
pub type NamespaceLabels = BTreeMap<String, Labels>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::IPAddressPoolSpec;
    use crate::api::ServiceAllocation;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use kube::api::ObjectMeta;

    fn svc(annotations: &[(&str, &str)], spec: ServiceSpec) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some("web".into()),
                name: Some("front".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                ..spec
            }),
            status: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn eligibility_follows_type_and_class() {
        let mut s = svc(&[], ServiceSpec::default());
        assert!(is_eligible(&s, true));
        assert!(
            !is_eligible(&s, false),
            "no class and not the default class"
        );
        s.spec.as_mut().unwrap().load_balancer_class = Some(LOAD_BALANCER_CLASS.into());
        assert!(is_eligible(&s, false));
        s.spec.as_mut().unwrap().load_balancer_class = Some("other.io/lb".into());
        assert!(!is_eligible(&s, true));
        s.spec.as_mut().unwrap().load_balancer_class = None;
        s.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        assert!(!is_eligible(&s, true));
    }

    #[test]
    fn ours_win_over_metallb_annotations() {
        let s = svc(
            &[
                ("metallb.io/loadBalancerIPs", "10.0.0.1"),
                ("ironlb.dev/load-balancer-ips", "10.0.0.2, fd00::2"),
                ("metallb.universe.tf/address-pool", "legacy"),
                ("metallb.io/allow-shared-ip", "dns"),
            ],
            ServiceSpec::default(),
        );
        let r = request(&s, &Labels::new()).unwrap().service;
        assert_eq!(r.addresses, [ip("10.0.0.2"), ip("fd00::2")]);
        assert_eq!(r.pool.as_deref(), Some("legacy"));
        assert_eq!(r.sharing_key.as_deref(), Some("dns"));
    }

    #[test]
    fn a_bad_annotation_names_the_service_and_the_annotation() {
        let s = svc(
            &[("metallb.io/loadBalancerIPs", "10.0.0.300")],
            ServiceSpec::default(),
        );
        let err = request(&s, &Labels::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "service web/front: metadata.annotations[metallb.io/loadBalancerIPs]: \"10.0.0.300\" is not an \
             IP address (expected a comma-separated list)"
        );
        let s = svc(&[("ironlb.dev/forwarding", "ebpf")], ServiceSpec::default());
        assert!(
            request(&s, &Labels::new())
                .unwrap_err()
                .to_string()
                .contains("ironlb.dev/forwarding")
        );
    }

    #[test]
    fn load_balancer_ip_and_the_annotation_must_agree() {
        let spec = || ServiceSpec {
            load_balancer_ip: Some("10.0.0.5".into()),
            ..Default::default()
        };
        let agree = svc(&[("ironlb.dev/load-balancer-ips", "10.0.0.5")], spec());
        assert_eq!(
            request(&agree, &Labels::new()).unwrap().service.addresses,
            [ip("10.0.0.5")]
        );
        let only_spec = svc(&[], spec());
        assert_eq!(
            request(&only_spec, &Labels::new())
                .unwrap()
                .service
                .addresses,
            [ip("10.0.0.5")]
        );
        let disagree = svc(&[("ironlb.dev/load-balancer-ips", "10.0.0.6")], spec());
        let err = request(&disagree, &Labels::new()).unwrap_err();
        assert!(
            err.problem
                .contains("spec.loadBalancerIP asks for 10.0.0.5"),
            "{err}"
        );
    }

    #[test]
    fn ports_families_and_traffic_policy_are_read() {
        let s = svc(
            &[],
            ServiceSpec {
                ip_families: Some(vec!["IPv6".into(), "IPv4".into()]),
                ip_family_policy: Some("PreferDualStack".into()),
                external_traffic_policy: Some("Local".into()),
                selector: Some([("app".to_string(), "dns".to_string())].into()),
                ports: Some(vec![
                    ServicePort {
                        port: 53,
                        protocol: Some("UDP".into()),
                        ..Default::default()
                    },
                    ServicePort {
                        port: 53,
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            },
        );
        let r = request(&s, &Labels::new()).unwrap().service;
        assert_eq!(r.families, [Family::V6, Family::V4]);
        assert_eq!(r.family_policy, FamilyPolicy::PreferDualStack);
        assert_eq!(
            r.ports,
            [
                Port {
                    protocol: Protocol::Udp,
                    port: 53
                },
                Port {
                    protocol: Protocol::Tcp,
                    port: 53
                }
            ]
        );
        assert!(matches!(r.backend, ipam::Backend::Local { .. }));
    }

    #[test]
    fn embedded_forwarding_shows_ip_mode_proxy() {
        let s = svc(
            &[("ironlb.dev/forwarding", "embedded")],
            ServiceSpec::default(),
        );
        let r = request(&s, &Labels::new()).unwrap();
        let ingress = ingress(&[ip("10.0.0.1")], r.forwarding);
        assert_eq!(ingress[0].ip_mode.as_deref(), Some("Proxy"));
        assert_eq!(ingress[0].ip.as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn a_selector_with_an_unknown_operator_names_the_field() {
        let pool = IPAddressPool::new(
            "lan",
            IPAddressPoolSpec {
                addresses: vec!["10.0.0.0/24".into()],
                auto_assign: true,
                avoid_buggy_ips: false,
                service_allocation: Some(ServiceAllocation {
                    service_selectors: vec![K8sSelector {
                        match_expressions: Some(vec![LabelSelectorRequirement {
                            key: "app".into(),
                            operator: "Inn".into(),
                            values: None,
                        }]),
                        match_labels: None,
                    }],
                    ..Default::default()
                }),
                cross_namespace_sharing: None,
            },
        );
        assert_eq!(
            pool_spec(&pool).unwrap_err(),
            "spec.serviceAllocation.serviceSelectors[0].matchExpressions[0].operator: \"Inn\" is not one of \
             In, NotIn, Exists, DoesNotExist"
        );
    }
}
