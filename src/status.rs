//! `ironlb status`: pools and LoadBalancer Services at a glance, from the
//! cluster — what `kubectl get ipaddresspools,svc,servicel2statuses -A` says
//! across three listings, joined.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use serde::Serialize;

use crate::api::annotations::{FORWARDING, Forwarding};
use crate::api::{IPAddressPool, ServiceL2Status};
use crate::controller::translate;
use crate::ipam::Allocator;

/// Everything `ironlb status` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Every pool.
    pub pools: Vec<PoolRow>,
    /// Every LoadBalancer Service ironlb serves.
    pub services: Vec<ServiceRow>,
}

/// One pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolRow {
    /// Its name.
    pub name: String,
    /// Its `spec.addresses`.
    pub addresses: Vec<String>,
    /// IPv4 addresses held.
    #[serde(rename = "assignedIPv4")]
    pub assigned_ipv4: u64,
    /// IPv4 addresses free.
    #[serde(rename = "availableIPv4")]
    pub available_ipv4: u64,
    /// IPv6 addresses held.
    #[serde(rename = "assignedIPv6")]
    pub assigned_ipv6: u64,
    /// IPv6 addresses free (decimal; may exceed 64 bits).
    #[serde(rename = "availableIPv6")]
    pub available_ipv6: String,
    /// The `Valid` condition's message when the pool is not valid.
    pub problem: Option<String>,
}

/// One LoadBalancer Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRow {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its addresses; empty while pending.
    pub addresses: Vec<String>,
    /// The pool of its first address, when one holds it.
    pub pool: Option<String>,
    /// Nodes announcing it (one, normally).
    pub nodes: Vec<String>,
    /// Interfaces they announce it on.
    pub interfaces: Vec<String>,
    /// `kube-proxy` or `embedded`.
    pub forwarding: String,
}

/// Joins the three listings. Pure.
pub fn build(
    pools: &[IPAddressPool],
    services: &[Service],
    reports: &[ServiceL2Status],
    default_class: bool,
) -> Status {
    let specs: Vec<_> = pools
        .iter()
        .filter_map(|p| translate::pool_spec(p).ok())
        .collect();
    let (allocator, _) = Allocator::new(&specs);
    let mut by_service: BTreeMap<(String, String), Vec<&ServiceL2Status>> = BTreeMap::new();
    for r in reports {
        by_service
            .entry((r.namespace().unwrap_or_default(), r.spec.service.clone()))
            .or_default()
            .push(r);
    }
    let mut pool_rows: Vec<PoolRow> = pools
        .iter()
        .map(|p| {
            let status = p.status.clone().unwrap_or_default();
            PoolRow {
                name: p.name_any(),
                addresses: p.spec.addresses.clone(),
                assigned_ipv4: status.assigned_ipv4,
                available_ipv4: status.available_ipv4,
                assigned_ipv6: status.assigned_ipv6,
                available_ipv6: if status.available_ipv6.is_empty() {
                    "0".into()
                } else {
                    status.available_ipv6.clone()
                },
                problem: status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == crate::api::CONDITION_VALID && c.status == "False")
                    .map(|c| c.message.clone()),
            }
        })
        .collect();
    pool_rows.sort_by(|a, b| a.name.cmp(&b.name));
    let mut service_rows: Vec<ServiceRow> = services
        .iter()
        .filter(|s| translate::is_eligible(s, default_class))
        .map(|s| {
            let addresses = translate::status_addresses(s);
            let key = (s.namespace().unwrap_or_default(), s.name_any());
            let announcing = by_service.get(&key).cloned().unwrap_or_default();
            let mut nodes: Vec<String> = announcing.iter().map(|r| r.spec.node.clone()).collect();
            nodes.sort();
            nodes.dedup();
            let mut interfaces: Vec<String> = announcing
                .iter()
                .flat_map(|r| r.spec.interfaces.iter().cloned())
                .collect();
            interfaces.sort();
            interfaces.dedup();
            let forwarding = match s
                .annotations()
                .get(FORWARDING)
                .map(|v| Forwarding::parse(v))
            {
                Some(Ok(Forwarding::Embedded)) => "embedded",
                Some(Err(_)) => "invalid",
                _ => "kube-proxy",
            };
            ServiceRow {
                pool: addresses
                    .first()
                    .and_then(|ip| allocator.pool_of(*ip))
                    .map(str::to_string),
                namespace: key.0,
                name: key.1,
                addresses: addresses.iter().map(ToString::to_string).collect(),
                nodes,
                interfaces,
                forwarding: forwarding.into(),
            }
        })
        .collect();
    service_rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Status {
        pools: pool_rows,
        services: service_rows,
    }
}

/// The two tables, as `kubectl` prints them.
pub fn table(status: &Status) -> String {
    let dash = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(",")
        }
    };
    let mut pools = vec![vec![
        "POOL".to_string(),
        "ADDRESSES".into(),
        "ASSIGNED".into(),
        "AVAILABLE".into(),
        "PROBLEM".into(),
    ]];
    for p in &status.pools {
        pools.push(vec![
            p.name.clone(),
            dash(&p.addresses),
            format!("{} v4, {} v6", p.assigned_ipv4, p.assigned_ipv6),
            format!("{} v4, {} v6", p.available_ipv4, p.available_ipv6),
            p.problem.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut services = vec![vec![
        "NAMESPACE".to_string(),
        "SERVICE".into(),
        "ADDRESS".into(),
        "POOL".into(),
        "NODE".into(),
        "INTERFACE".into(),
        "FORWARDING".into(),
    ]];
    for s in &status.services {
        services.push(vec![
            s.namespace.clone(),
            s.name.clone(),
            if s.addresses.is_empty() {
                "<pending>".into()
            } else {
                s.addresses.join(",")
            },
            s.pool.clone().unwrap_or_else(|| "-".into()),
            dash(&s.nodes),
            dash(&s.interfaces),
            s.forwarding.clone(),
        ]);
    }
    format!("{}\n{}", render(&pools), render(&services))
}

fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// Reads the three listings from the cluster.
pub async fn fetch(client: kube::Client, default_class: bool) -> Result<Status, kube::Error> {
    use kube::Api;
    let lp = Default::default();
    let pools = Api::<IPAddressPool>::all(client.clone()).list(&lp).await?;
    let services = Api::<Service>::all(client.clone()).list(&lp).await?;
    let reports = Api::<ServiceL2Status>::all(client).list(&lp).await?;
    Ok(build(
        &pools.items,
        &services.items,
        &reports.items,
        default_class,
    ))
}
