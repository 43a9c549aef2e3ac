//! Layer 2: the ARP and Neighbor Discovery frames a speaker answers and sends
//! ([`packet`], pure), and the raw-socket [`announcer`] that does it.

pub mod announcer;
pub mod packet;
