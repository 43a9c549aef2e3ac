//! ironlb gives `type: LoadBalancer` Services real external addresses on clusters
//! that have no cloud load balancer.
//!
//! # Layout
//!
//! - [`api`]: the custom resources and annotation names: the Kubernetes edge.
//! - [`ipam`]: pools, address ranges and the allocator. Pure: no I/O and no
//!   Kubernetes types, so property tests drive it directly.

pub mod api;
pub mod ipam;
