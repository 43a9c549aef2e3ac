//! ironlb gives `type: LoadBalancer` Services real external addresses on clusters
//! that have no cloud load balancer.
//!
//! # Layout
//!
//! - [`api`]: the custom resources and annotation names: the Kubernetes edge.
//! - [`ipam`]: pools, address ranges and the allocator. Pure: no I/O and no
//!   Kubernetes types, so property tests drive it directly.
//! - [`controller`]: watches Services and pools, drives the allocator, writes
//!   Service status, pool status and events. Its decisions are a pure pass
//!   ([`controller::plan`]); the rest is I/O.
//! - [`http`]: `/healthz`, `/readyz` and `/metrics` for every process.
//! - [`demo`]: `ironlb demo`, the whole thing in network namespaces on one box.
//! - [`election`]: which node announces an address: eligibility and rendezvous
//!   hashing. Pure.
//! - [`l2`]: ARP and Neighbor Discovery frames (pure codecs) and the raw-socket
//!   announcer.
//! - [`membership`]: SWIM gossip among speakers over authenticated UDP.
//! - [`netlink`]: the node's interfaces over rtnetlink, and which of them
//!   announce an address.
//! - [`forwarder`]: the embedded L4 forwarder: listener plan (pure), TCP and
//!   UDP proxying, PROXY protocol headers, transparent connections.
//! - [`status`]: `ironlb status`, pools and Services at a glance.
//! - [`speaker`]: decides which addresses this node owns and announces them.

pub mod api;
pub mod bfd;
pub mod bgp;
pub mod controller;
pub mod demo;
pub mod election;
pub mod forwarder;
pub mod gateway;
pub mod handover;
pub mod http;
pub mod ipam;
pub mod k8s;
pub mod l2;
pub mod membership;
pub mod migrate;
pub mod netlink;
pub mod speaker;
pub mod status;
pub mod uninstall;
