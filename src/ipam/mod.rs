//! Address management: pools, address ranges and the allocator.
//!
//! Pure: no I/O, no clock, no Kubernetes types. The controller turns
//! `IPAddressPool`s and Services into [`PoolSpec`]s and [`Service`]s at the edge,
//! and writes back what [`Allocator`] decides.
//!
//! The one idea: the allocator is a state machine over plain data whose every
//! decision is deterministic (lowest free address, pools tried in a fixed order),
//! and whose state can be rebuilt from the addresses already recorded on Services
//! ([`Allocator::restore`]), so a restarted controller moves nothing.

mod allocator;
mod free;
mod pool;
mod range;
mod selector;
mod service;

pub use allocator::{AllocError, AllocErrorKind, Allocator, Assignment, FamilyUsage, PoolUsage};
pub use pool::{AllocationRules, NamespaceMatch, PoolError, PoolSpec};
pub use range::{AddressRange, EntryError, Family};
pub use selector::{LabelSelector, Labels, Operator, Requirement};
pub use service::{
    Backend, FamilyPolicy, Holder, Port, Protocol, Service, ServiceKey, SharingRefusal,
};
