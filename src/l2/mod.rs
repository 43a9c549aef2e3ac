//! Layer 2: the ARP and Neighbor Discovery frames a speaker answers and sends.

pub mod packet;
