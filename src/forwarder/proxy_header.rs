//! PROXY protocol headers (HAProxy's spec, versions 1 and 2): pure.
//!
//! The encoding itself is the `ppp` crate's; this decides what goes in it.

use std::net::{IpAddr, SocketAddr};

use crate::api::annotations::ProxyVersion;

/// The header announcing a TCP connection from `client` to `service` (the
/// address and port the client connected to). A pair of different families,
/// which the forwarder never produces, is sent as `UNKNOWN` (v1) or `LOCAL`
/// (v2), as the spec asks of a proxy that can't tell.
pub fn tcp(version: ProxyVersion, client: SocketAddr, service: SocketAddr) -> Vec<u8> {
    let (client, service) = (unmapped(client), unmapped(service));
    match version {
        ProxyVersion::V1 => ppp::v1::Addresses::from((client, service))
            .to_string()
            .into_bytes(),
        ProxyVersion::V2 => {
            let same_family = client.is_ipv4() == service.is_ipv4();
            let builder = if same_family {
                ppp::v2::Builder::with_addresses(
                    ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                    ppp::v2::Protocol::Stream,
                    (client, service),
                )
            } else {
                ppp::v2::Builder::new(
                    ppp::v2::Version::Two | ppp::v2::Command::Local,
                    ppp::v2::AddressFamily::Unspecified | ppp::v2::Protocol::Unspecified,
                )
            };
            // Building into memory fails only past 64 KiB of TLVs; we add none.
            builder.build().unwrap_or_default()
        }
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`: a dual-stack socket reports IPv4 clients so,
/// and backends expect `TCP4` for them.
fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_is_the_text_line_of_the_spec() {
        let h = tcp(ProxyVersion::V1, sa("10.9.0.5:40000"), sa("10.0.0.1:80"));
        assert_eq!(h, b"PROXY TCP4 10.9.0.5 10.0.0.1 40000 80\r\n");
        let h = tcp(ProxyVersion::V1, sa("[fd00::5]:40000"), sa("[fd00::1]:443"));
        assert_eq!(h, b"PROXY TCP6 fd00::5 fd00::1 40000 443\r\n");
    }

    #[test]
    fn v2_ipv4_is_the_binary_header_of_the_spec() {
        let h = tcp(ProxyVersion::V2, sa("10.9.0.5:40000"), sa("10.0.0.1:80"));
        let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        // version 2 / PROXY, TCP over IPv4, 12 bytes of addresses
        want.extend([0x21, 0x11, 0x00, 0x0c]);
        want.extend([10, 9, 0, 5, 10, 0, 0, 1]);
        want.extend(40000u16.to_be_bytes());
        want.extend(80u16.to_be_bytes());
        assert_eq!(h, want);
    }

    #[test]
    fn v2_ipv6_carries_36_bytes_of_addresses() {
        let h = tcp(ProxyVersion::V2, sa("[fd00::5]:1"), sa("[fd00::1]:2"));
        assert_eq!(&h[12..16], &[0x21, 0x21, 0x00, 36]);
        assert_eq!(h.len(), 16 + 36);
    }

    #[test]
    fn mapped_ipv4_clients_are_sent_as_ipv4() {
        let h = tcp(
            ProxyVersion::V1,
            sa("[::ffff:10.9.0.5]:7"),
            sa("[::ffff:10.0.0.1]:80"),
        );
        assert_eq!(h, b"PROXY TCP4 10.9.0.5 10.0.0.1 7 80\r\n");
    }
}
