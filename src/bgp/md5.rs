//! TCP MD5 signatures (RFC 2385) on a BGP socket: what a router with a
//! `password` on its neighbor expects.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;

// nix's macro calls itself and `setsockopt_impl!` unqualified. It writes the
// one `setsockopt` call (and its `unsafe`) inside nix, so ironlb's own code
// stays safe; libc has the option's number but not its struct.
use nix::{setsockopt_impl, sockopt_impl};

sockopt_impl!(
    /// `TCP_MD5SIG`: the key the kernel signs and checks segments with, for
    /// one peer address.
    TcpMd5Sig,
    SetOnly,
    libc::IPPROTO_TCP,
    libc::TCP_MD5SIG,
    Md5Sig
);

/// The longest key Linux takes (`TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_KEY: usize = 80;

/// `struct sockaddr_storage`: 128 bytes, aligned for any address.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Storage([u8; 128]);

/// `struct tcp_md5sig` of `<linux/tcp.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Md5Sig {
    addr: Storage,
    flags: u8,
    prefix_len: u8,
    key_len: u16,
    ifindex: u32,
    key: [u8; MAX_KEY],
}

impl Md5Sig {
    /// The key for segments to and from `peer`; an empty key removes it.
    pub fn new(peer: IpAddr, key: &[u8]) -> Result<Self, String> {
        if key.len() > MAX_KEY {
            return Err(format!(
                "the TCP MD5 password is {} bytes; Linux takes at most {MAX_KEY}",
                key.len()
            ));
        }
        let mut addr = [0u8; 128];
        match peer {
            IpAddr::V4(a) => {
                addr[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
                addr[4..8].copy_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                addr[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
                addr[8..24].copy_from_slice(&a.octets());
            }
        }
        let mut sig = Self {
            addr: Storage(addr),
            flags: 0,
            prefix_len: 0,
            key_len: key.len() as u16,
            ifindex: 0,
            key: [0; MAX_KEY],
        };
        sig.key[..key.len()].copy_from_slice(key);
        Ok(sig)
    }
}

/// Signs the connection `socket` is about to make to `peer` with `password`.
pub fn set(socket: &impl AsFd, peer: SocketAddr, password: &str) -> Result<(), String> {
    let sig = Md5Sig::new(peer.ip(), password.as_bytes())?;
    nix::sys::socket::setsockopt(socket, TcpMd5Sig, &sig)
        .map_err(|e| format!("cannot set the TCP MD5 password: {e}"))
}
