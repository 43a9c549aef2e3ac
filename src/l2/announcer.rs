//! The announcer: a raw Ethernet socket on one interface that answers ARP and
//! Neighbor Solicitations for the addresses this node owns, and sends
//! gratuitous ARP / unsolicited Neighbor Advertisements on takeover.
//!
//! The socket is promiscuous, so solicitations sent to an address's
//! solicited-node multicast group reach it without joining the group (a
//! group nobody joined is filtered by some NICs; promiscuous mode is not).

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::counter::Counter;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use pnet::datalink::{self, Channel, DataLinkSender};
use tracing::{debug, warn};

use super::packet::{self, ArpOp, MacAddr, Message};

/// An `AF_PACKET` socket that the kernel lets only ARP and Neighbor
/// Solicitations through. Without the filter every frame on the interface —
/// the forwarder's own traffic included, both ways — would be copied to this
/// socket and woken up for, which cost the forwarder a tenth of its CPU.
fn filtered_packet_socket() -> io::Result<i32> {
    use socket2::{Domain, SockFilter, Socket, Type};
    use std::os::fd::IntoRawFd;
    const ETH_P_ALL: i32 = 0x0003;
    // Classic BPF: ethertype ARP → accept; IPv6 with next header ICMPv6 and
    // type 135 (Neighbor Solicitation) → accept; anything else → drop.
    let program = [
        SockFilter::new(0x28, 0, 0, 12),       // ldh [12]          ethertype
        SockFilter::new(0x15, 5, 0, 0x0806),   // jeq ARP           → accept
        SockFilter::new(0x15, 0, 5, 0x86dd),   // jeq IPv6, else    → drop
        SockFilter::new(0x30, 0, 0, 20),       // ldb [20]          next header
        SockFilter::new(0x15, 0, 3, 58),       // jeq ICMPv6, else  → drop
        SockFilter::new(0x30, 0, 0, 54),       // ldb [54]          ICMPv6 type
        SockFilter::new(0x15, 0, 1, 135),      // jeq NS, else      → drop
        SockFilter::new(0x06, 0, 0, 0x4_0000), // accept
        SockFilter::new(0x06, 0, 0, 0),        // drop
    ];
    let protocol = socket2::Protocol::from(i32::from((ETH_P_ALL as u16).to_be()));
    let socket = Socket::new(Domain::PACKET, Type::RAW, Some(protocol))?;
    socket.attach_filter(&program)?;
    Ok(socket.into_raw_fd())
}

/// What the announcer did, for metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// ARP requests answered.
    pub arp_answered: Counter,
    /// Neighbor Solicitations answered.
    pub ns_answered: Counter,
    /// Gratuitous ARP and unsolicited advertisements sent.
    pub gratuitous_sent: Counter,
    /// Frames that could not be read.
    pub malformed: Counter,
}

/// Answers for owned addresses on one interface until stopped.
pub struct Announcer {
    interface: String,
    mac: MacAddr,
    owned: Arc<RwLock<BTreeSet<IpAddr>>>,
    tx: Arc<Mutex<Box<dyn DataLinkSender>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Announcer {
    /// Opens a raw socket on `interface` (needs `CAP_NET_RAW`); its work is
    /// counted in `counters`.
    pub fn start(interface: &str, counters: Counters) -> io::Result<Self> {
        let iface = datalink::interfaces()
            .into_iter()
            .find(|i| i.name == interface)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("no interface {interface}"))
            })?;
        let mac = iface.mac.filter(|m| *m != MacAddr::zero()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{interface} has no Ethernet address"),
            )
        })?;
        let config = datalink::Config {
            read_timeout: Some(Duration::from_millis(100)),
            promiscuous: true,
            socket_fd: Some(filtered_packet_socket()?),
            ..Default::default()
        };
        let (tx, mut rx) = match datalink::channel(&iface, config)? {
            Channel::Ethernet(tx, rx) => (tx, rx),
            _ => {
                return Err(io::Error::other(format!(
                    "{interface}: not an Ethernet channel"
                )));
            }
        };
        let owned = Arc::new(RwLock::new(BTreeSet::new()));
        let tx = Arc::new(Mutex::new(tx));
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(counters);
        let thread = {
            let (owned, tx, stop, counters) =
                (owned.clone(), tx.clone(), stop.clone(), counters.clone());
            let name = interface.to_string();
            std::thread::Builder::new()
                .name(format!("announce-{interface}"))
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let frame = match rx.next() {
                            Ok(frame) => frame,
                            Err(e) if e.kind() == io::ErrorKind::TimedOut => continue,
                            Err(e) => {
                                warn!(interface = %name, error = %e, "reading frames");
                                std::thread::sleep(Duration::from_millis(100));
                                continue;
                            }
                        };
                        let reply = match Message::decode(frame) {
                            Ok(m) => answer(mac, &m, &owned),
                            // Ordinary traffic on the segment, not ours to read.
                            Err(
                                packet::DropReason::OtherEtherType
                                | packet::DropReason::NotIcmpv6
                                | packet::DropReason::NotNeighborDiscovery,
                            ) => None,
                            Err(reason) => {
                                counters.malformed.inc();
                                debug!(interface = %name, reason = reason.label(), "dropped a frame");
                                None
                            }
                        };
                        if let Some(reply) = reply {
                            let counter = match reply {
                                Message::Arp(_) => &counters.arp_answered,
                                _ => &counters.ns_answered,
                            };
                            counter.inc();
                            send(&tx, &reply.encode(), &name);
                        }
                    }
                })?
        };
        Ok(Self {
            interface: interface.to_string(),
            mac,
            owned,
            tx,
            stop,
            thread: Some(thread),
            counters,
        })
    }

    /// The interface's name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The interface's Ethernet address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// Starts answering for `ip`.
    pub fn own(&self, ip: IpAddr) {
        self.owned.write().expect("owned set").insert(ip);
    }

    /// Whether it answers for `ip`.
    pub fn owns(&self, ip: &IpAddr) -> bool {
        self.owned.read().expect("owned set").contains(ip)
    }

    /// Whether it answers for no address.
    pub fn owns_nothing(&self) -> bool {
        self.owned.read().expect("owned set").is_empty()
    }

    /// The addresses it answers for.
    pub fn owned(&self) -> Vec<IpAddr> {
        self.owned
            .read()
            .expect("owned set")
            .iter()
            .copied()
            .collect()
    }

    /// Stops answering for `ip`, at once.
    pub fn disown(&self, ip: IpAddr) {
        self.owned.write().expect("owned set").remove(&ip);
    }

    /// Sends one gratuitous ARP (IPv4) or unsolicited advertisement (IPv6) for `ip`.
    pub fn announce(&self, ip: IpAddr) {
        let frame = match ip {
            IpAddr::V4(v4) => Message::Arp(packet::gratuitous_arp(self.mac, v4)),
            IpAddr::V6(v6) => Message::NeighborAdvert(packet::unsolicited_advert(self.mac, v6)),
        };
        self.counters.gratuitous_sent.inc();
        send(&self.tx, &frame.encode(), &self.interface);
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn send(tx: &Mutex<Box<dyn DataLinkSender>>, frame: &[u8], interface: &str) {
    let mut tx = tx.lock().expect("sender");
    match tx.send_to(frame, None) {
        Some(Ok(())) => {}
        Some(Err(e)) => warn!(%interface, error = %e, "sending a frame"),
        None => warn!(%interface, "sending a frame: no room"),
    }
}

/// The reply a frame calls for, if any. Pure, apart from reading the owned set.
fn answer(mac: MacAddr, message: &Message, owned: &RwLock<BTreeSet<IpAddr>>) -> Option<Message> {
    let owned = owned.read().expect("owned set");
    match message {
        Message::Arp(a)
            if a.op == ArpOp::Request
                && a.eth_src != mac
                && owned.contains(&IpAddr::V4(a.target_ip)) =>
        {
            // A gratuitous ARP from someone else for our address is not a question.
            (a.sender_ip != a.target_ip).then(|| Message::Arp(packet::arp_reply(mac, a)))
        }
        Message::NeighborSolicit(ns)
            if ns.eth_src != mac && owned.contains(&IpAddr::V6(ns.target)) =>
        {
            Some(Message::NeighborAdvert(packet::neighbor_advert_for(
                mac, ns,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const OURS: MacAddr = MacAddr(2, 0, 0, 0, 0, 1);
    const CLIENT: MacAddr = MacAddr(2, 0, 0, 0, 0, 9);

    fn owned(ips: &[&str]) -> RwLock<BTreeSet<IpAddr>> {
        RwLock::new(ips.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn answers_arp_only_for_owned_addresses() {
        let set = owned(&["10.0.0.100"]);
        let ask = |target| {
            Message::Arp(packet::arp_request(
                CLIENT,
                Ipv4Addr::new(10, 0, 0, 50),
                target,
            ))
        };
        let reply = answer(OURS, &ask(Ipv4Addr::new(10, 0, 0, 100)), &set).expect("a reply");
        match reply {
            Message::Arp(r) => assert_eq!(
                (r.op, r.sender_mac, r.eth_dst),
                (ArpOp::Reply, OURS, CLIENT)
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(answer(OURS, &ask(Ipv4Addr::new(10, 0, 0, 101)), &set), None);
        let garp = Message::Arp(packet::gratuitous_arp(CLIENT, Ipv4Addr::new(10, 0, 0, 100)));
        assert_eq!(
            answer(OURS, &garp, &set),
            None,
            "someone else's announcement is no question"
        );
    }

    #[test]
    fn answers_solicitations_with_or_without_a_source_link_layer_option() {
        let target: Ipv6Addr = "fd00::100".parse().unwrap();
        let set = owned(&["fd00::100"]);
        let mut ns = packet::neighbor_solicit(CLIENT, "fd00::50".parse().unwrap(), target);
        assert!(matches!(
            answer(OURS, &Message::NeighborSolicit(ns), &set),
            Some(Message::NeighborAdvert(_))
        ));
        ns.source_ll = None;
        assert!(matches!(
            answer(OURS, &Message::NeighborSolicit(ns), &set),
            Some(Message::NeighborAdvert(_))
        ));
        let own = packet::neighbor_solicit(OURS, "fd00::1".parse().unwrap(), target);
        assert_eq!(
            answer(OURS, &Message::NeighborSolicit(own), &set),
            None,
            "never our own frames"
        );
    }
}
