//! Gateway API at layer 4: ironlb as the implementation of GatewayClasses
//! whose `controllerName` is [`attach::CONTROLLER_NAME`], carrying
//! `TCPRoute`, `UDPRoute` and `TLSRoute` (passthrough) on its own forwarder.
//!
//! [`attach`] holds the spec's attachment and status rules as a pure
//! function; [`hostname`] the hostname matching they and the SNI router
//! share.

pub mod attach;
pub mod controller;
pub mod hostname;
