//! Many datagrams per system call (`recvmmsg`, `sendmmsg`). A flow's
//! datagrams come in bursts — a game tick, a resolver's retries, a client
//! with requests in flight — and for a small datagram the system calls, not
//! the copies, are most of what forwarding costs.

use std::cell::RefCell;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmsg,
};
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};
use tracing::debug;

/// The most datagrams taken or given in one system call.
pub(super) const BATCH: usize = 16;

/// The largest UDP payload.
pub(super) const DATAGRAM: usize = 65_535;

/// Room for [`BATCH`] datagrams of any size, and what the last receive put
/// there.
pub(super) struct Batch {
    /// [`BATCH`] slots of [`DATAGRAM`] bytes. Zeroed memory the kernel
    /// maps lazily, so a slot costs resident memory only for the bytes
    /// datagrams wrote into it.
    slots: Box<[u8]>,
    /// Each received datagram's length and source.
    received: Vec<(usize, Option<SocketAddr>)>,
}

thread_local! {
    /// One batch per worker thread, shared by every listener and flow: each
    /// uses it between two suspension points only, so no flow holds buffers
    /// of its own.
    pub(super) static BATCHES: RefCell<Batch> = RefCell::new(Batch::new());
}

impl Batch {
    fn new() -> Self {
        Self {
            slots: vec![0u8; BATCH * DATAGRAM].into_boxed_slice(),
            received: Vec::with_capacity(BATCH),
        }
    }

    /// Takes what `fd` holds, up to [`BATCH`] datagrams, without waiting;
    /// returns how many. `WouldBlock` when it holds none.
    pub(super) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.received.clear();
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .slots
            .chunks_mut(DATAGRAM)
            .map(|slot| [IoSliceMut::new(slot)])
            .collect();
        // Fresh headers each time: a receive leaves each source's length
        // as it found it (a `sockaddr_in`'s, too short for the IPv6 source
        // of a later one).
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let got = recvmmsg(
            fd,
            &mut headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )?;
        self.received
            .extend(got.map(|m| (m.bytes, m.address.and_then(|a| socket_addr(&a)))));
        Ok(self.received.len())
    }

    /// Datagram `i` of the last receive and where it came from.
    pub(super) fn datagram(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let (len, from) = self.received[i];
        let at = i * DATAGRAM;
        (&self.slots[at..at + len], from)
    }

    /// The bytes of datagrams `range` of the last receive.
    pub(super) fn bytes(&self, range: Range<usize>) -> u64 {
        self.received[range]
            .iter()
            .map(|(len, _)| *len as u64)
            .sum()
    }

    /// Sends datagrams `range` of the last receive on `fd`, to `to` (on a
    /// connected socket, `None`), in as few system calls as the socket
    /// takes them; returns how many left. An error after some left is
    /// not returned: the next send meets it again.
    ///
    /// A run of datagrams of one size goes down as one segmented send
    /// (UDP GSO): the kernel routes, filters and hands it to the next hop
    /// once, and cuts it into the datagrams only where it must — on the
    /// wire, or at the receiving socket. The others go in one `sendmmsg`.
    pub(super) fn send(
        &self,
        fd: BorrowedFd<'_>,
        range: Range<usize>,
        to: Option<SocketAddr>,
    ) -> io::Result<usize> {
        let mut sent = 0;
        // Datagrams from `next` on are not sent yet; those before `at`
        // belong to no run and go one message each.
        let (mut next, mut at) = (range.start, range.start);
        while at < range.end {
            let run = self.segmentable(at..range.end);
            if run.len() < 2 {
                at += 1;
                continue;
            }
            if next < at && !tally(&mut sent, next..at, self.send_each(fd, next..at, to))? {
                return Ok(sent);
            }
            let result = match self.send_segmented(fd, run.clone(), to) {
                Err(e) if refuses_segments(&e) => {
                    // No segments on this path (EIO: IPsec, or a device
                    // without checksum offload on older kernels) or none
                    // of this size (a smaller MTU): this thread sends none,
                    // or only smaller ones, from now on; these go one by one.
                    let size = self.received[run.start].0;
                    let io_error = e.raw_os_error() == Some(libc::EIO);
                    SEGMENT_LIMIT.set(if io_error { 0 } else { size - 1 });
                    debug!(size, error = %e, "a path refused segmented UDP sends");
                    self.send_each(fd, run.clone(), to)
                }
                other => other,
            };
            if !tally(&mut sent, run.clone(), result)? {
                return Ok(sent);
            }
            (next, at) = (run.end, run.end);
        }
        if next < range.end {
            tally(
                &mut sent,
                next..range.end,
                self.send_each(fd, next..range.end, to),
            )?;
        }
        Ok(sent)
    }

    /// The datagrams from `range.start` that one segmented send can carry:
    /// of one size within [`SEGMENT_LIMIT`], the last maybe shorter, all
    /// within the largest datagram the kernel builds.
    fn segmentable(&self, range: Range<usize>) -> Range<usize> {
        let size = self.received[range.start].0;
        if size == 0 || size > SEGMENT_LIMIT.get() {
            return range.start..range.start + 1;
        }
        let (mut end, mut total) = (range.start, 0);
        while end < range.end && total + self.received[end].0 <= SEGMENTED_MAX {
            let len = self.received[end].0;
            if len > size || len == 0 {
                break;
            }
            total += len;
            end += 1;
            if len < size {
                break;
            }
        }
        range.start..end
    }

    /// Datagrams `run`, one size but maybe the last, as one send that the
    /// kernel cuts into them; returns how many left.
    ///
    /// Through nix, which has the segment-size control message that
    /// rustix lacks; its `sendmsg` returns a count and reads nothing back.
    fn send_segmented(
        &self,
        fd: BorrowedFd<'_>,
        run: Range<usize>,
        to: Option<SocketAddr>,
    ) -> io::Result<usize> {
        let slices: Vec<IoSlice<'_>> = run
            .clone()
            .map(|i| IoSlice::new(self.datagram(i).0))
            .collect();
        let segment = u16::try_from(self.received[run.start].0)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let to = to.map(SockaddrStorage::from);
        sendmsg(
            fd.as_raw_fd(),
            &slices,
            &[ControlMessage::UdpGsoSegments(&segment)],
            MsgFlags::MSG_DONTWAIT,
            to.as_ref(),
        )?;
        Ok(run.len())
    }

    /// Datagrams `range`, a message each, in as few `sendmmsg` calls as
    /// the socket takes them; returns how many left.
    ///
    /// Through rustix, not nix: nix's `sendmmsg` results read back a source
    /// address per message, which a send never writes.
    fn send_each(
        &self,
        fd: BorrowedFd<'_>,
        range: Range<usize>,
        to: Option<SocketAddr>,
    ) -> io::Result<usize> {
        let to = to.map(SocketAddrAny::from);
        let slices: Vec<[IoSlice<'_>; 1]> =
            range.map(|i| [IoSlice::new(self.datagram(i).0)]).collect();
        // No ancillary data, but each message takes a buffer of its own.
        let mut none: Vec<SendAncillaryBuffer<'_, '_, '_>> = slices
            .iter()
            .map(|_| SendAncillaryBuffer::default())
            .collect();
        let mut messages: Vec<MMsgHdr<'_>> = slices
            .iter()
            .zip(&mut none)
            .map(|(slice, control)| match &to {
                Some(to) => MMsgHdr::new_with_addr(to, slice, control),
                None => MMsgHdr::new(slice, control),
            })
            .collect();
        let mut sent = 0;
        while sent < messages.len() {
            match sendmmsg(fd, &mut messages[sent..], SendFlags::DONTWAIT) {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(e) if sent == 0 => return Err(e.into()),
                Err(_) => break,
            }
        }
        Ok(sent)
    }
}

/// Adds what a send of `part` left to `sent`; whether all of it left. Its
/// error only when nothing left before it.
fn tally(sent: &mut usize, part: Range<usize>, result: io::Result<usize>) -> io::Result<bool> {
    match result {
        Ok(n) => {
            *sent += n;
            Ok(n == part.len())
        }
        Err(e) if *sent == 0 => Err(e),
        Err(_) => Ok(false),
    }
}

/// The most bytes one segmented send carries: a datagram's 65,535 less
/// the largest IP and UDP headers, rounded down.
const SEGMENTED_MAX: usize = 65_000;

thread_local! {
    /// The largest datagram this thread sends as a segment. A segment must
    /// fit the path's MTU whole, so it starts at what an Ethernet MTU of
    /// 1,500 carries over IPv6; a path that refuses segments lowers it.
    static SEGMENT_LIMIT: std::cell::Cell<usize> = const { std::cell::Cell::new(1_452) };
}

/// Whether a segmented send failed because the path cannot take segments,
/// not because the socket is full or the peer gone.
fn refuses_segments(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EIO | libc::EMSGSIZE | libc::EOPNOTSUPP)
    )
}

fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd};

    fn socket() -> std::net::UdpSocket {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_nonblocking(true).unwrap();
        s
    }

    /// A non-blocking socket on the IPv6 loopback; `None`, saying that
    /// `test` skips, where there is none (a failure in CI).
    fn v6_socket(test: &str) -> Option<std::net::UdpSocket> {
        let Ok(s) = std::net::UdpSocket::bind("[::1]:0") else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test} cannot run in CI: no IPv6 loopback"
            );
            println!("skipping {test}: no IPv6 loopback");
            return None;
        };
        s.set_nonblocking(true).unwrap();
        Some(s)
    }

    /// Waits for `n` datagrams to be queued on `s`, then takes them.
    fn recv_all(batch: &mut Batch, s: &std::net::UdpSocket, n: usize) -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match batch.recv(s.as_raw_fd()) {
                Ok(got) if got >= n || std::time::Instant::now() > deadline => return got,
                Ok(_) | Err(_) if std::time::Instant::now() > deadline => return 0,
                _ => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
    }

    #[test]
    fn a_batch_keeps_each_datagram_whole_with_its_source() {
        let (a, b, rx) = (socket(), socket(), socket());
        let to = rx.local_addr().unwrap();
        // The largest datagram beside small ones: no slot cuts one short.
        let big = vec![9u8; 65_507];
        a.send_to(b"one", to).unwrap();
        b.send_to(&big, to).unwrap();
        a.send_to(b"three", to).unwrap();
        let mut batch = Batch::new();
        assert_eq!(recv_all(&mut batch, &rx, 3), 3);
        assert_eq!(
            batch.datagram(0),
            (&b"one"[..], Some(a.local_addr().unwrap()))
        );
        assert_eq!(batch.datagram(1), (&big[..], Some(b.local_addr().unwrap())));
        assert_eq!(
            batch.datagram(2),
            (&b"three"[..], Some(a.local_addr().unwrap()))
        );
        assert_eq!(batch.bytes(0..3), 3 + 65_507 + 5);
        assert_eq!(
            batch.recv(rx.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn a_batch_is_sent_on_as_the_datagrams_it_received() {
        let (from, relay, out) = (socket(), socket(), socket());
        let connected = socket();
        connected.connect(out.local_addr().unwrap()).unwrap();
        for i in 0..BATCH + 4 {
            from.send_to(
                format!("datagram {i}").as_bytes(),
                relay.local_addr().unwrap(),
            )
            .unwrap();
        }
        let mut batch = Batch::new();
        assert_eq!(recv_all(&mut batch, &relay, BATCH), BATCH);
        // Part to an address, part on a connected socket.
        assert_eq!(
            batch
                .send(relay.as_fd(), 0..3, Some(out.local_addr().unwrap()))
                .unwrap(),
            3
        );
        assert_eq!(
            batch.send(connected.as_fd(), 3..BATCH, None).unwrap(),
            BATCH - 3
        );
        let mut seen = Batch::new();
        assert_eq!(recv_all(&mut seen, &out, BATCH), BATCH);
        for i in 0..BATCH {
            assert_eq!(seen.datagram(i).0, format!("datagram {i}").as_bytes());
        }
        assert_eq!(seen.datagram(0).1, Some(relay.local_addr().unwrap()));
        assert_eq!(seen.datagram(3).1, Some(connected.local_addr().unwrap()));
        // What did not fit in one batch is still queued.
        assert_eq!(recv_all(&mut batch, &relay, 4), 4);
    }

    #[test]
    fn runs_of_one_size_arrive_as_the_datagrams_they_were() {
        let (from, relay, out) = (socket(), socket(), socket());
        // Runs of one size, a shorter end to one, sizes no run shares, and
        // one too large to be a segment: each arrives as it was sent.
        let sizes = [40, 40, 40, 12, 7, 300, 300, 1_452, 1_453, 1_453, 1, 1, 1, 5];
        for (i, size) in sizes.iter().enumerate() {
            from.send_to(&vec![i as u8; *size], relay.local_addr().unwrap())
                .unwrap();
        }
        let mut batch = Batch::new();
        assert_eq!(recv_all(&mut batch, &relay, sizes.len()), sizes.len());
        let to = Some(out.local_addr().unwrap());
        assert_eq!(
            batch.send(relay.as_fd(), 0..sizes.len(), to).unwrap(),
            sizes.len()
        );
        let mut seen = Batch::new();
        assert_eq!(recv_all(&mut seen, &out, sizes.len()), sizes.len());
        for (i, size) in sizes.iter().enumerate() {
            assert_eq!(
                seen.datagram(i).0,
                &vec![i as u8; *size][..],
                "datagram {i}"
            );
        }
    }

    #[test]
    fn a_run_of_one_size_leaves_as_one_segmented_send() {
        assert_eq!(segmented_arrival(socket), [3u8; 400]);
        if v6_socket("a_run_of_one_size_leaves_as_one_segmented_send over IPv6").is_some() {
            let v6 = || v6_socket("").unwrap();
            assert_eq!(segmented_arrival(v6), [3u8; 400]);
        }
    }

    /// Four datagrams of 100 bytes relayed as one run to a receiver that
    /// takes segmented datagrams whole: what its first receive gets, all
    /// 400 bytes when they left as one send.
    fn segmented_arrival(socket: impl Fn() -> std::net::UdpSocket) -> Vec<u8> {
        let (from, relay, out) = (socket(), socket(), socket());
        nix::sys::socket::setsockopt(&out, nix::sys::socket::sockopt::UdpGroSegment, &true)
            .unwrap();
        for _ in 0..4 {
            from.send_to(&[3u8; 100], relay.local_addr().unwrap())
                .unwrap();
        }
        let mut batch = Batch::new();
        assert_eq!(recv_all(&mut batch, &relay, 4), 4);
        let to = Some(out.local_addr().unwrap());
        assert_eq!(batch.send(relay.as_fd(), 0..4, to).unwrap(), 4);
        let mut seen = Batch::new();
        assert_eq!(recv_all(&mut seen, &out, 1), 1);
        seen.datagram(0).0.to_vec()
    }

    fn with_sizes(sizes: &[usize]) -> Batch {
        let mut batch = Batch::new();
        batch.received = sizes.iter().map(|len| (*len, None)).collect();
        batch
    }

    proptest::proptest! {
        /// The runs a batch is cut into cover it in order, and each is
        /// what one segmented send may carry.
        #[test]
        fn segmentable_runs_are_ones_the_kernel_takes(
            sizes in proptest::collection::vec(
                proptest::prop_oneof![0usize..4, 1_450usize..1_455, 4_000usize..30_000],
                1..BATCH,
            ),
        ) {
            let batch = with_sizes(&sizes);
            let mut at = 0;
            while at < sizes.len() {
                let run = batch.segmentable(at..sizes.len());
                proptest::prop_assert_eq!(run.start, at);
                proptest::prop_assert!(run.end > at && run.end <= sizes.len());
                let part = &sizes[run.clone()];
                if part.len() > 1 {
                    let size = part[0];
                    proptest::prop_assert!(size > 0 && size <= SEGMENT_LIMIT.get());
                    proptest::prop_assert!(part[..part.len() - 1].iter().all(|s| *s == size));
                    proptest::prop_assert!(part[part.len() - 1] > 0 && part[part.len() - 1] <= size);
                    proptest::prop_assert!(part.iter().sum::<usize>() <= SEGMENTED_MAX);
                }
                // A run ends only where the next datagram cannot join it.
                if let Some(next) = sizes.get(run.end) {
                    let size = part[0];
                    let joins = (1..=SEGMENT_LIMIT.get()).contains(&size)
                        && part[part.len() - 1] == size
                        && (1..=size).contains(next)
                        && part.iter().sum::<usize>() + next <= SEGMENTED_MAX;
                    proptest::prop_assert!(!joins, "{:?} stopped before {}", part, next);
                }
                at = run.end;
            }
        }
    }

    #[test]
    fn an_ipv6_source_after_an_ipv4_one_comes_whole() {
        // One batch serves every listener of a thread, of either family.
        let Some(v6) = v6_socket("an_ipv6_source_after_an_ipv4_one_comes_whole") else {
            return;
        };
        let (a4, rx4) = (socket(), socket());
        let a6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let mut batch = Batch::new();
        a4.send_to(b"4", rx4.local_addr().unwrap()).unwrap();
        assert_eq!(recv_all(&mut batch, &rx4, 1), 1);
        a6.send_to(b"6", v6.local_addr().unwrap()).unwrap();
        assert_eq!(recv_all(&mut batch, &v6, 1), 1);
        assert_eq!(
            batch.datagram(0),
            (&b"6"[..], Some(a6.local_addr().unwrap()))
        );
    }

    #[test]
    fn a_refused_send_says_so() {
        let (from, relay) = (socket(), socket());
        let gone = socket();
        let connected = socket();
        connected.connect(gone.local_addr().unwrap()).unwrap();
        drop(gone);
        from.send_to(b"x", relay.local_addr().unwrap()).unwrap();
        let mut batch = Batch::new();
        assert_eq!(recv_all(&mut batch, &relay, 1), 1);
        // The first send draws the port-unreachable; a later one reports it.
        let _ = batch.send(connected.as_fd(), 0..1, None);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let err = batch.send(connected.as_fd(), 0..1, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }
}
