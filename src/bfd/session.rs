//! One BFD session (RFC 5880, asynchronous mode, no echo, no demand) as a
//! pure state machine: packets and the clock in, packets to send and state
//! changes out.

use std::time::{Duration, Instant};

use super::packet::{Diagnostic, Packet, State};

/// The slowest a session transmits while it is not Up (RFC 5880 6.8.3: at
/// least one second).
const SLOW_TX: Duration = Duration::from_secs(1);

/// A session's settings (a `BFDProfile`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The fastest this node will send once Up.
    pub transmit_interval: Duration,
    /// The fastest it wants to receive.
    pub receive_interval: Duration,
    /// Intervals without a packet that mean down.
    pub detect_multiplier: u8,
    /// Wait for the peer to speak first.
    pub passive: bool,
    /// Packets that arrive with a lower TTL are dropped by the receiver.
    pub minimum_ttl: u8,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            transmit_interval: Duration::from_millis(300),
            receive_interval: Duration::from_millis(300),
            detect_multiplier: 3,
            passive: false,
            minimum_ttl: 254,
        }
    }
}

/// What the session asks its adapter to do or know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send this packet to the peer.
    Send(Packet),
    /// The session changed state.
    Changed {
        /// Before.
        from: State,
        /// After.
        to: State,
    },
}

/// One session's state (RFC 5880 6.8.1's variables).
#[derive(Clone, Debug)]
pub struct Session {
    settings: Settings,
    state: State,
    diagnostic: Diagnostic,
    local_discriminator: u32,
    remote_discriminator: u32,
    remote_state: State,
    remote_min_rx: Duration,
    remote_desired_tx: Duration,
    remote_detect_mult: u8,
    /// The desired transmit interval the peer has acknowledged (with a
    /// Final); a change starts a Poll until it does.
    desired_tx: Duration,
    polling: bool,
    heard: bool,
    next_tx: Option<Instant>,
    detect_at: Option<Instant>,
    rng: u64,
}

impl Session {
    /// A session in state Down. `discriminator` must be non-zero and unique
    /// on this node.
    pub fn new(settings: Settings, discriminator: u32, now: Instant) -> Self {
        let mut s = Self {
            settings,
            state: State::Down,
            diagnostic: Diagnostic::None,
            local_discriminator: discriminator.max(1),
            remote_discriminator: 0,
            remote_state: State::Down,
            remote_min_rx: Duration::from_micros(1),
            remote_desired_tx: Duration::ZERO,
            remote_detect_mult: 0,
            desired_tx: SLOW_TX,
            polling: false,
            heard: false,
            next_tx: None,
            detect_at: None,
            rng: u64::from(discriminator) | 1,
        };
        if !settings.passive {
            s.next_tx = Some(now);
        }
        s
    }

    /// The state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The detection time in force: how long the peer may be silent.
    pub fn detection_time(&self) -> Duration {
        self.settings
            .receive_interval
            .max(self.remote_desired_tx)
            .saturating_mul(self.remote_detect_mult.into())
    }

    /// When to call [`Session::timer`] next.
    pub fn deadline(&self) -> Option<Instant> {
        [self.next_tx, self.detect_at].into_iter().flatten().min()
    }

    /// A packet from the peer.
    pub fn receive(&mut self, p: &Packet, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        if p.your_discriminator == 0 && !matches!(self.state, State::Down | State::AdminDown) {
            return out;
        }
        if p.your_discriminator != 0 && p.your_discriminator != self.local_discriminator {
            return out;
        }
        self.heard = true;
        self.remote_discriminator = p.my_discriminator;
        self.remote_state = p.state;
        self.remote_min_rx = Duration::from_micros(p.required_min_rx.into());
        self.remote_desired_tx = Duration::from_micros(p.desired_min_tx.into());
        self.remote_detect_mult = p.detect_mult;
        if p.final_ && self.polling {
            self.polling = false;
        }
        let before = self.state;
        match (self.state, p.state) {
            (State::AdminDown, _) => return out,
            (s, State::AdminDown) if s != State::Down => {
                self.go(State::Down, Diagnostic::NeighborSignaledDown, &mut out);
            }
            (State::Down, State::Down) => self.go(State::Init, Diagnostic::None, &mut out),
            (State::Down, State::Init) => self.go(State::Up, Diagnostic::None, &mut out),
            (State::Init, State::Init | State::Up) => {
                self.go(State::Up, Diagnostic::None, &mut out)
            }
            (State::Up, State::Down) => {
                self.go(State::Down, Diagnostic::NeighborSignaledDown, &mut out)
            }
            _ => {}
        }
        self.detect_at = match self.state {
            State::Init | State::Up => Some(now + self.detection_time()),
            _ => None,
        };
        if self.next_tx.is_none() && self.remote_min_rx > Duration::ZERO {
            // A passive session speaks once spoken to.
            self.next_tx = Some(now);
        }
        if p.poll {
            out.push(Output::Send(self.packet(false, true)));
        }
        // A peer that now wants packets faster (its slow start over) gets
        // them at once: it times this session out on the new rate, not on
        // the one this session last scheduled with (RFC 5880 6.8.3).
        let interval = self.tx_interval();
        if let Some(t) = self.next_tx
            && t > now + interval
        {
            self.next_tx = Some(now + self.jittered(interval));
        }
        if before != self.state && self.state == State::Up {
            // Up: switch to the configured rate, with a Poll (6.8.3).
            self.desired_tx = self.settings.transmit_interval;
            self.polling = true;
            self.next_tx = Some(now);
        } else if before != self.state && self.state == State::Down {
            self.desired_tx = SLOW_TX;
        }
        out
    }

    /// The clock reached [`Session::deadline`].
    pub fn timer(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        if self.detect_at.is_some_and(|d| now >= d) {
            self.detect_at = None;
            self.remote_discriminator = 0;
            self.go(State::Down, Diagnostic::DetectionTimeExpired, &mut out);
            self.desired_tx = SLOW_TX;
        }
        if self.next_tx.is_some_and(|t| now >= t) {
            if self.remote_min_rx > Duration::ZERO && (!self.settings.passive || self.heard) {
                out.push(Output::Send(self.packet(self.polling, false)));
            }
            self.next_tx = Some(now + self.jittered(self.tx_interval()));
        }
        out
    }

    /// The packet that ends the session on purpose: AdminDown, so that the
    /// peer does not take it for a failure (RFC 5880 6.8.16).
    pub fn farewell(&self) -> Packet {
        Packet {
            state: State::AdminDown,
            diagnostic: Diagnostic::AdminDown as u8,
            ..self.packet(false, false)
        }
    }

    fn go(&mut self, to: State, why: Diagnostic, out: &mut Vec<Output>) {
        if to != self.state {
            out.push(Output::Changed {
                from: self.state,
                to,
            });
            self.state = to;
            self.diagnostic = why;
        }
    }

    /// The transmit interval (6.8.7): the larger of what this node wants and
    /// what the peer can take.
    fn tx_interval(&self) -> Duration {
        let desired = if self.state == State::Up {
            self.desired_tx
        } else {
            SLOW_TX
        };
        desired.max(self.remote_min_rx)
    }

    /// 75 to 100 % of `interval` (90 % at most with a multiplier of 1).
    fn jittered(&mut self, interval: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let top = if self.settings.detect_multiplier == 1 {
            90
        } else {
            100
        };
        let percent = 75 + (self.rng % (top - 75 + 1));
        interval * percent as u32 / 100
    }

    fn packet(&self, poll: bool, final_: bool) -> Packet {
        let desired_tx = if self.state == State::Up {
            self.desired_tx
        } else {
            SLOW_TX
        };
        Packet {
            diagnostic: self.diagnostic as u8,
            state: self.state,
            poll,
            final_,
            detect_mult: self.settings.detect_multiplier,
            my_discriminator: self.local_discriminator,
            your_discriminator: self.remote_discriminator,
            desired_min_tx: micros(desired_tx),
            required_min_rx: micros(self.settings.receive_interval),
        }
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fast() -> Settings {
        Settings {
            transmit_interval: Duration::from_millis(100),
            receive_interval: Duration::from_millis(100),
            detect_multiplier: 3,
            ..Settings::default()
        }
    }

    /// Two sessions joined by a wire that may drop packets: runs the clock
    /// to `until`, delivering each packet sent unless `lost` says so.
    fn run(
        a: &mut Session,
        b: &mut Session,
        mut now: Instant,
        until: Instant,
        mut lost: impl FnMut(Instant, bool) -> bool,
    ) -> (Instant, Vec<(Instant, bool, State)>) {
        let mut changes = Vec::new();
        while let Some(next) = [a.deadline(), b.deadline()].into_iter().flatten().min() {
            if next > until {
                break;
            }
            now = next.max(now);
            let mut queue: Vec<(bool, Output)> = Vec::new();
            queue.extend(a.timer(now).into_iter().map(|o| (true, o)));
            queue.extend(b.timer(now).into_iter().map(|o| (false, o)));
            while let Some((from_a, o)) = queue.pop() {
                match o {
                    Output::Changed { to, .. } => changes.push((now, from_a, to)),
                    Output::Send(p) => {
                        if lost(now, from_a) {
                            continue;
                        }
                        let to = if from_a { &mut *b } else { &mut *a };
                        let bytes = p.encode();
                        let p = Packet::decode(&bytes).expect("valid");
                        queue.extend(to.receive(&p, now).into_iter().map(|o| (!from_a, o)));
                    }
                }
            }
        }
        (until, changes)
    }

    #[test]
    fn two_sessions_come_up_and_settle_on_the_fast_rate() {
        let t0 = Instant::now();
        let mut a = Session::new(fast(), 1, t0);
        let mut b = Session::new(fast(), 2, t0);
        let (t, _) = run(&mut a, &mut b, t0, t0 + Duration::from_secs(3), |_, _| {
            false
        });
        assert_eq!((a.state(), b.state()), (State::Up, State::Up));
        assert_eq!(a.detection_time(), Duration::from_millis(300));
        // Up, packets go at 75-100 ms.
        let next = a.deadline().expect("a deadline");
        assert!(next - t <= Duration::from_millis(300), "{:?}", next - t);
    }

    #[test]
    fn a_peer_that_speeds_up_is_sent_to_at_the_new_rate_at_once() {
        let t0 = Instant::now();
        let mut s = Session::new(fast(), 1, t0);
        let slow = Packet {
            diagnostic: 0,
            state: State::Down,
            poll: false,
            final_: false,
            detect_mult: 3,
            my_discriminator: 9,
            your_discriminator: 0,
            desired_min_tx: 1_000_000,
            required_min_rx: 1_000_000,
        };
        s.timer(t0);
        s.receive(&slow, t0);
        assert_eq!(s.state(), State::Init);
        s.receive(
            &Packet {
                state: State::Up,
                your_discriminator: 1,
                ..slow
            },
            t0,
        );
        assert_eq!(s.state(), State::Up);
        // The peer is up and now wants a packet every 100 ms.
        let t = t0 + Duration::from_millis(50);
        s.timer(t);
        s.receive(
            &Packet {
                state: State::Up,
                poll: true,
                your_discriminator: 1,
                desired_min_tx: 100_000,
                required_min_rx: 100_000,
                ..slow
            },
            t,
        );
        let next = s.deadline().expect("a deadline");
        assert!(
            next - t <= Duration::from_millis(100),
            "next packet {:?} after the peer sped up",
            next - t
        );
    }

    #[test]
    fn a_passive_session_waits_to_be_spoken_to() {
        let t0 = Instant::now();
        let mut passive = Session::new(
            Settings {
                passive: true,
                ..fast()
            },
            1,
            t0,
        );
        assert!(passive.timer(t0).is_empty());
        assert_eq!(passive.deadline(), None);
        let mut active = Session::new(fast(), 2, t0);
        run(
            &mut passive,
            &mut active,
            t0,
            t0 + Duration::from_secs(3),
            |_, _| false,
        );
        assert_eq!(passive.state(), State::Up);
    }

    proptest! {
        /// Whatever the rates, once up, silence from the peer for one
        /// detection time brings the session down within that time, and
        /// never before it.
        #[test]
        fn silence_is_detected_within_the_detection_time(
            tx in 10u64..500, rx in 10u64..500, mult in 2u8..6, silent_after in 2_000u64..5_000,
        ) {
            let settings = Settings {
                transmit_interval: Duration::from_millis(tx),
                receive_interval: Duration::from_millis(rx),
                detect_multiplier: mult,
                ..Settings::default()
            };
            let t0 = Instant::now();
            let mut a = Session::new(settings, 11, t0);
            let mut b = Session::new(settings, 22, t0);
            let silent = t0 + Duration::from_millis(silent_after);
            let (_, changes) = run(&mut a, &mut b, t0, silent + Duration::from_secs(10), |now, from_a| {
                !from_a && now >= silent
            });
            prop_assert_ne!(b.state(), State::Up, "b hears a peer that cannot hear it");
            let down = changes
                .iter()
                .find(|(at, side_a, to)| *side_a && *to == State::Down && *at >= silent)
                .map(|(at, ..)| *at)
                .expect("a goes down");
            let detection = Duration::from_millis(tx.max(rx)) * u32::from(mult);
            prop_assert!(down - silent <= detection, "{:?} > {:?}", down - silent, detection);
            // Never down while packets still flowed.
            prop_assert!(!changes.iter().any(|(at, side_a, to)| *side_a && *to == State::Down && *at < silent));
        }
    }
}
