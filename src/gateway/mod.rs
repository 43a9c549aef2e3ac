//! Gateway API at layer 4: ironlb as the implementation of GatewayClasses
//! whose `controllerName` is [`attach::CONTROLLER_NAME`], carrying
//! `TCPRoute`, `UDPRoute` and `TLSRoute` (passthrough) on its own forwarder.
//!
//! [`attach`] holds the spec's attachment and status rules as a pure
//! function; [`plan`] the writes that bring the cluster to its outcome; [`snapshot`] what they read, built alike by the controller
//! (which writes the statuses) and every speaker (which forwards the routes);
//! [`watch`] the caches both fill. Hostname matching, which the rules and
//! the SNI router share, is [`crate::api::hostname`].

pub mod attach;
pub mod controller;
pub mod plan;
pub mod reads;
pub mod snapshot;
pub mod watch;

pub use snapshot::service_name;
