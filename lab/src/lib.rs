//! Network-namespace labs for ironlb.
//!
//! [`Lab`] builds hosts, bridges and links inside namespaces it creates and
//! removes them again; [`demo`] is `ironlb demo`, the whole product on one
//! box, built on it. Tests and benchmarks build their topologies with the same
//! [`Lab`]: a test's lab panics on a failed step ([`Panic`]), the demo's hands
//! the failure back to say it to the person running it ([`Report`]).
//!
//! This crate is for trying ironlb out and testing it; the product itself
//! (`ironlb` the library) does not depend on it, only the `ironlb` binary's
//! `demo` commands do.

pub mod demo;
mod netns;

pub use netns::{
    Cleanup, Error, Failure, Lab, Panic, Report, bind_in_namespace, in_netns, is_root, relay, run,
    skip, unavailable,
};
