//! ironlb gives `type: LoadBalancer` Services real external addresses on clusters
//! that have no cloud load balancer.
//!
//! # Layout
//!
//! Lowest layer first; a module imports only from layers below its own
//! (`tests/layers.rs` holds the list and fails on an arrow up). The picture,
//! and what each component reads and writes: `docs/architecture.md`.
//!
//! Domain types and pure cores:
//! - [`api`]: the custom resources, the Gateway API kinds, annotation names
//!   and formats, and Gateway API hostname matching: the Kubernetes edge.
//! - [`ipam`]: pools, address ranges and the allocator. Pure: no I/O and no
//!   Kubernetes types, so property tests drive it directly.
//! - [`l2`]: ARP and Neighbor Discovery frames (pure codecs) and the raw-socket
//!   announcer.
//! - [`bfd`]: BFD sessions (a pure state machine) over UDP.
//! - [`http`]: `/healthz`, `/readyz` and `/metrics` for every process.
//!
//! Protocols and the edge that reads the cluster:
//! - [`election`]: which node announces an address: eligibility and rendezvous
//!   hashing. Pure.
//! - [`netlink`]: the node's interfaces over rtnetlink, and which of them
//!   announce an address.
//! - [`bgp`]: BGP sessions (a pure state machine per peer), the wire format,
//!   TCP MD5, and peers and advertisements as the speaker uses them.
//! - [`k8s`]: caches and the pass rhythm, the leader's fence and write
//!   discipline, and the translation of Services, pools and EndpointSlices
//!   into domain types.
//!
//! Components:
//! - [`forwarder`]: the embedded L4 forwarder: listener plan (pure), TCP and
//!   UDP proxying, PROXY protocol headers, transparent connections.
//! - [`gateway`]: Gateway API at layer 4: the spec's rules (pure), the
//!   controller's plan (pure) and its adapter.
//! - [`membership`]: SWIM gossip among speakers over authenticated UDP.
//! - [`controller`]: watches Services and pools, drives the allocator, writes
//!   Service status, pool status and events. Its decisions are a pure pass
//!   ([`controller::plan`]); the rest is I/O.
//!
//! Assemblies and tools:
//! - [`handover`]: the socket hand-over between an old and a new speaker.
//! - [`control_plane`]: what `ironlb controller` runs while its replica leads.
//! - [`status`], [`uninstall`], [`migrate`]: `ironlb status`, `ironlb
//!   uninstall`, `ironlb migrate`.
//! - [`speaker`]: decides which addresses this node owns and announces,
//!   advertises and forwards them.
//!
//! `ironlb demo` lives in the `ironlb-lab` crate (`lab/`), with the
//! network-namespace lab the tests and benchmarks share.

pub mod api;
pub mod bfd;
pub mod bgp;
pub mod control_plane;
pub mod controller;
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
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod uninstall;
