//! Builders for the Kubernetes objects tests feed ironlb: one place that
//! knows how a LoadBalancer Service, a pool or an EndpointSlice is spelled,
//! so a test says only what matters to it. The unit tests use it, and the
//! integration tests and benchmarks through the `testkit` feature (which
//! ironlb's own dev-dependency on itself turns on); a release build has none
//! of it.

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use kube::api::ObjectMeta;
use serde_json::Value;

use crate::api::{IPAddressPool, IPAddressPoolSpec, ServiceAllocation};

/// Any object, from its JSON (as `kubectl` would show it).
pub fn object<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

/// A `type: LoadBalancer` Service, built up field by field.
#[derive(Clone, Debug)]
pub struct Svc(Service);

impl Svc {
    /// `namespace/name`, no ports, no status.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self(Service {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                ..Default::default()
            }),
            status: None,
        })
    }

    /// `namespace/name` selecting Pods labelled `app: name`, with one port,
    /// 80/TCP: what most tests of the whole controller start from.
    pub fn lb(namespace: &str, name: &str) -> Self {
        let mut svc = Self::new(namespace, name).port("", 80, "TCP");
        svc.spec().selector = Some([("app".to_string(), name.to_string())].into());
        svc
    }

    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.get_or_insert_with(Default::default)
    }

    /// The ports replaced by one unnamed `port`/`protocol`.
    pub fn only_port(mut self, protocol: &str, port: i32) -> Self {
        self.spec().ports = None;
        self.port("", port, protocol)
    }

    /// A label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(key.into(), value.into());
        self
    }

    /// `spec.loadBalancerClass`.
    pub fn class(mut self, class: &str) -> Self {
        self.spec().load_balancer_class = Some(class.into());
        self
    }

    /// `spec.ipFamilyPolicy` and `spec.ipFamilies`.
    pub fn families(mut self, policy: &str, families: &[&str]) -> Self {
        self.spec().ip_family_policy = Some(policy.into());
        self.spec().ip_families = Some(families.iter().map(|f| f.to_string()).collect());
        self
    }

    /// `spec.type`.
    pub fn type_(mut self, type_: &str) -> Self {
        self.spec().type_ = Some(type_.into());
        self
    }

    /// A port (`name` empty: unnamed).
    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> Self {
        self.spec()
            .ports
            .get_or_insert_with(Vec::new)
            .push(ServicePort {
                name: (!name.is_empty()).then(|| name.into()),
                port,
                protocol: Some(protocol.into()),
                ..Default::default()
            });
        self
    }

    /// An annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(key.into(), value.into());
        self
    }

    /// `externalTrafficPolicy`.
    pub fn external_traffic_policy(mut self, policy: &str) -> Self {
        self.spec().external_traffic_policy = Some(policy.into());
        self
    }

    /// An address in its status (`ipMode: VIP`, as ironlb writes it).
    pub fn ingress(mut self, ip: &str) -> Self {
        self.0
            .status
            .get_or_insert_with(ServiceStatus::default)
            .load_balancer
            .get_or_insert_with(LoadBalancerStatus::default)
            .ingress
            .get_or_insert_with(Vec::new)
            .push(LoadBalancerIngress {
                ip: Some(ip.into()),
                ip_mode: Some("VIP".into()),
                ..Default::default()
            });
        self
    }

    /// The Service.
    pub fn build(self) -> Service {
        self.0
    }
}

/// A pool of `addresses` (ranges or CIDRs), auto-assigning.
pub fn pool(name: &str, addresses: &[&str]) -> IPAddressPool {
    IPAddressPool::new(
        name,
        IPAddressPoolSpec {
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            service_allocation: None,
            cross_namespace_sharing: None,
        },
    )
}

/// A pool of `addresses` for the Services `allocation` selects.
pub fn pool_for(name: &str, addresses: &[&str], allocation: ServiceAllocation) -> IPAddressPool {
    let mut p = pool(name, addresses);
    p.spec.service_allocation = Some(allocation);
    p
}

/// An EndpointSlice `name` of Service `namespace/service` with one port
/// and endpoints `(address, ready)` (`None`: the condition unset).
pub fn slice(
    namespace: &str,
    service: &str,
    name: &str,
    port: (&str, i32, &str),
    endpoints: &[(&str, Option<bool>)],
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            labels: Some(
                [(
                    "kubernetes.io/service-name".to_string(),
                    service.to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some(port.0.into()),
            port: Some(port.1),
            protocol: Some(port.2.into()),
            ..Default::default()
        }]),
        endpoints: endpoints
            .iter()
            .map(|(address, ready)| Endpoint {
                addresses: vec![address.to_string()],
                conditions: Some(EndpointConditions {
                    ready: *ready,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
    }
}
