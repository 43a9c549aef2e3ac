//! Reading the cluster and writing to it safely, shared by every component
//! that talks to the API server (the controller, the Gateway controller, the
//! speakers, `ironlb status`):
//!
//! - [`cache`]: reflector caches whose every change wakes a pass, and the
//!   one rhythm every pass loop keeps ([`cache::next_pass`]);
//! - [`fence`]: the check a leader makes before it writes, and [`apply`]:
//!   what a 409 or a failed write means for the next pass;
//! - [`translate`]: Services, pools and EndpointSlices into the plain types
//!   of [`crate::ipam`], with errors that name the object and the field.
//!
//! Above [`crate::api`] and [`crate::ipam`], below every component: nothing
//! here knows which component reads it.

pub mod apply;
pub mod cache;
pub mod fence;
pub mod translate;

pub(crate) use cache::{Touched, cache_all, cache_of, cache_touched};
pub use cache::{Woken, next_pass};
pub use fence::Fence;
