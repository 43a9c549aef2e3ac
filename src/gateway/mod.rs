//! Gateway API at layer 4: ironlb as the implementation of GatewayClasses
//! whose `controllerName` is [`attach::CONTROLLER_NAME`], carrying
//! `TCPRoute`, `UDPRoute` and `TLSRoute` (passthrough) on its own forwarder.
//!
//! [`attach`] holds the spec's attachment and status rules as a pure
//! function; [`snapshot`] what they read, built alike by the controller
//! (which writes the statuses) and every speaker (which forwards the routes);
//! [`watch`] the caches both fill; [`hostname`] the hostname matching the
//! rules and the SNI router share.

pub mod attach;
pub mod controller;
pub mod hostname;
pub mod snapshot;
pub mod watch;

pub use snapshot::service_name;
