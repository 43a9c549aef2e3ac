//! `ironlb status`: pools and LoadBalancer Services at a glance, from the
//! cluster — what `kubectl get ipaddresspools,svc,servicel2statuses,
//! servicebgpstatuses,events -A` says across five listings, joined: who
//! announces each address (layer 2 or BGP), and why a Service waits.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use serde::Serialize;

use crate::api::annotations::{FORWARDING, Forwarding};
use crate::api::{IPAddressPool, ServiceBGPStatus, ServiceL2Status};
use crate::ipam::Allocator;
use crate::k8s::translate;

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
    /// Interfaces they announce it on (`bgp:PEER` for a BGP peer).
    pub interfaces: Vec<String>,
    /// `kube-proxy` or `embedded`.
    pub forwarding: String,
    /// Why it waits (the controller's last warning), or that it has an
    /// address no node announces.
    pub note: Option<String>,
}

/// What the cluster says about announcements and problems.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reports<'a> {
    /// Layer-2 announcements.
    pub l2: &'a [ServiceL2Status],
    /// BGP advertisements.
    pub bgp: &'a [ServiceBGPStatus],
    /// Events (only the controller's warnings are read).
    pub events: &'a [Event],
}

/// A node announcing a Service, and where (interfaces, or `bgp:PEER`).
type Announcer = (String, Vec<String>);

/// A Service by (namespace, name).
type Key = (String, String);

/// Joins the listings. Pure.
pub fn build(
    pools: &[IPAddressPool],
    services: &[Service],
    reports: Reports<'_>,
    default_class: bool,
) -> Status {
    let specs: Vec<_> = pools
        .iter()
        .filter_map(|p| translate::pool_spec(p).ok())
        .collect();
    let (allocator, _) = Allocator::new(&specs);
    let announcers = announcers(reports);
    let warnings = last_warnings(reports.events);
    let mut pool_rows: Vec<PoolRow> = pools.iter().map(pool_row).collect();
    pool_rows.sort_by(|a, b| a.name.cmp(&b.name));
    let mut service_rows: Vec<ServiceRow> = services
        .iter()
        .filter(|s| translate::is_eligible(s, default_class))
        .map(|s| {
            let key = (s.namespace().unwrap_or_default(), s.name_any());
            let announcing = announcers.get(&key).map_or(&[][..], Vec::as_slice);
            service_row(s, key.clone(), announcing, warnings.get(&key), &allocator)
        })
        .collect();
    service_rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Status {
        pools: pool_rows,
        services: service_rows,
    }
}

/// Who announces each Service, from the layer-2 and the BGP reports.
fn announcers(reports: Reports<'_>) -> BTreeMap<Key, Vec<Announcer>> {
    let mut by_service: BTreeMap<Key, Vec<Announcer>> = BTreeMap::new();
    for r in reports.l2 {
        by_service
            .entry((r.namespace().unwrap_or_default(), r.spec.service.clone()))
            .or_default()
            .push((r.spec.node.clone(), r.spec.interfaces.clone()));
    }
    for r in reports.bgp {
        by_service
            .entry((r.namespace().unwrap_or_default(), r.spec.service.clone()))
            .or_default()
            .push((
                r.spec.node.clone(),
                r.spec.peers.iter().map(|p| format!("bgp:{p}")).collect(),
            ));
    }
    by_service
}

fn pool_row(p: &IPAddressPool) -> PoolRow {
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
}

/// One Service's row: its addresses and pool, who announces it, how it is
/// forwarded, and the controller's `warning` while it waits.
fn service_row(
    s: &Service,
    key: Key,
    announcing: &[Announcer],
    warning: Option<&String>,
    allocator: &Allocator,
) -> ServiceRow {
    let addresses = translate::status_addresses(s);
    let mut nodes: Vec<String> = announcing.iter().map(|(n, _)| n.clone()).collect();
    nodes.sort();
    nodes.dedup();
    let mut interfaces: Vec<String> = announcing
        .iter()
        .flat_map(|(_, i)| i.iter().cloned())
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
    let note = if addresses.is_empty() {
        warning.cloned()
    } else if nodes.is_empty() {
        Some(
            "not announced: no node reports announcing it (no advertisement selects its \
             pool, or no node is eligible)"
                .into(),
        )
    } else {
        None
    };
    ServiceRow {
        note,
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
}

/// The controller's last warning about each Service, as `REASON: note`.
fn last_warnings(events: &[Event]) -> BTreeMap<Key, String> {
    let mut latest: BTreeMap<Key, (Option<i64>, String)> = BTreeMap::new();
    for e in events {
        let ours = e.reporting_controller.as_deref() == Some(crate::controller::CONTROLLER_NAME);
        let (Some(regarding), true, Some("Warning")) = (&e.regarding, ours, e.type_.as_deref())
        else {
            continue;
        };
        if regarding.kind.as_deref() != Some("Service") {
            continue;
        }
        let key = (
            regarding.namespace.clone().unwrap_or_default(),
            regarding.name.clone().unwrap_or_default(),
        );
        let when = e
            .series
            .as_ref()
            .map(|s| s.last_observed_time.0.as_microsecond())
            .or(e.event_time.as_ref().map(|t| t.0.as_microsecond()))
            .or(e
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_microsecond()));
        let text = format!(
            "{}: {}",
            e.reason.as_deref().unwrap_or_default(),
            e.note.as_deref().unwrap_or_default()
        );
        if latest.get(&key).is_none_or(|(t, _)| when > *t) {
            latest.insert(key, (when, text));
        }
    }
    latest.into_iter().map(|(k, (_, text))| (k, text)).collect()
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
        "NOTE".into(),
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
            s.note.clone().unwrap_or_else(|| "-".into()),
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

/// Reads the listings from the cluster.
pub async fn fetch(client: kube::Client, default_class: bool) -> Result<Status, kube::Error> {
    use kube::Api;
    let lp = Default::default();
    let pools = Api::<IPAddressPool>::all(client.clone()).list(&lp).await?;
    let services = Api::<Service>::all(client.clone()).list(&lp).await?;
    let l2 = Api::<ServiceL2Status>::all(client.clone())
        .list(&lp)
        .await?;
    // A cluster whose CRDs predate BGP has no ServiceBGPStatus.
    let bgp = Api::<ServiceBGPStatus>::all(client.clone())
        .list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let events = Api::<Event>::all(client).list(&lp).await?;
    let reports = Reports {
        l2: &l2.items,
        bgp: &bgp,
        events: &events.items,
    };
    Ok(build(&pools.items, &services.items, reports, default_class))
}
