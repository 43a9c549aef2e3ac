//! The gossip task: runs `foca` on the socket, its timers and the
//! speaker's own health record until stopped, then leaves the group.

use super::*;

/// How often a speaker that cannot serve some address says so again, for
/// speakers that joined since (`foca` spreads each record a few times only).
const HEALTH_REPEAT: Duration = Duration::from_secs(5);

/// The group as `foca` runs it, for this speaker.
type Group = Foca<Peer, PostcardCodec, StdRng, HealthHandler>;

/// This speaker's `foca`, whose random choices are seeded from its name and
/// port, and whose health records go to `health`.
fn group(config: &Config, me: Peer, health: watch::Sender<HealthMap>) -> Group {
    let seed = config.node.bytes().fold(u64::from(me.addr.port()), |h, b| {
        h.rotate_left(5) ^ u64::from(b)
    });
    Foca::with_custom_broadcast(
        me,
        config.foca(),
        StdRng::seed_from_u64(seed),
        PostcardCodec,
        HealthHandler {
            me: config.node.clone(),
            newest: BTreeMap::new(),
            out: health,
        },
    )
}

/// Spreads a new version of this speaker's health record.
fn publish(foca: &mut Group, record: &mut Health) {
    record.version += 1;
    if let Err(e) = foca.add_broadcast(&record.encode()) {
        warn!(error = %e, "spreading this speaker's health");
    }
}

/// Asks the speaker at `addr` to let this one in; its name is learnt from
/// its answer.
fn announce(foca: &mut Group, runtime: &mut AccumulatingRuntime<Peer>, addr: SocketAddr) {
    let placeholder = Peer {
        node: String::new(),
        addr,
        generation: 0,
    };
    if let Err(e) = foca.announce(placeholder, runtime) {
        warn!(error = %e, %addr, "announce failed");
    }
}

/// A ticker that skips the ticks it missed rather than bursting.
fn every(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

pub(super) async fn run(
    socket: UdpSocket,
    config: Config,
    me: Peer,
    channels: Channels,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let Channels {
        members,
        health,
        mut own,
        mut joins,
    } = channels;
    let mut foca = group(&config, me, health);
    let mut record = Health::first(&config.node);
    // Said once at start, even empty: it replaces what an earlier run of this
    // speaker said.
    publish(&mut foca, &mut record);
    let mut repeat = every(HEALTH_REPEAT);
    let mut runtime = AccumulatingRuntime::new();
    let (timer_tx, mut timers) = mpsc::unbounded_channel::<Timer<Peer>>();
    let mut buf = vec![0u8; 65536];
    let mut wire = Wire {
        socket,
        keys: config.keys.clone(),
        incarnation: rand::random(),
        seq: 0,
        guard: ReplayGuard::default(),
        timers: timer_tx,
        members,
        counters,
    };
    let mut membership_changes = wire.members.subscribe();
    let mut seeds: BTreeSet<SocketAddr> = config.seeds.iter().copied().collect();
    for addr in &seeds {
        announce(&mut foca, &mut runtime, *addr);
    }
    let mut rejoin = every(REJOIN_PERIOD);
    loop {
        wire.flush(&mut runtime, &foca).await;
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(addr) = joins.recv() => {
                seeds.insert(addr);
                announce(&mut foca, &mut runtime, addr);
            }
            // A speaker cut off from all its peers, whose identity was then
            // renewed (the others declared it down), has nobody left to talk
            // to: `foca` waits for someone to announce, and the others may
            // have given up on it. It announces itself to the seeds until it
            // is back in the group.
            _ = rejoin.tick(), if foca.iter_members().next().is_none() && !seeds.is_empty() => {
                for addr in &seeds {
                    announce(&mut foca, &mut runtime, *addr);
                }
            }
            changed = own.changed() => {
                if changed.is_ok() {
                    record.unservable = own.borrow_and_update().clone();
                    publish(&mut foca, &mut record);
                }
            }
            // A newcomer learns what the others cannot serve from their next
            // record, not from history.
            _ = membership_changes.changed() => {
                membership_changes.borrow_and_update();
                if !record.unservable.is_empty() {
                    publish(&mut foca, &mut record);
                }
            }
            _ = repeat.tick(), if !record.unservable.is_empty() => publish(&mut foca, &mut record),
            timer = timers.recv() => {
                let Some(timer) = timer else { break };
                if let Err(e) = foca.handle_timer(timer, &mut runtime) {
                    debug!(error = %e, "timer");
                }
            }
            received = wire.socket.recv_from(&mut buf) => {
                let Ok((len, from)) = received else { continue };
                let Some(payload) = wire.admit(&buf[..len], from) else { continue };
                if foca.handle_data(payload, &mut runtime).is_err() {
                    wire.counters.rejected.inc();
                }
            }
        }
    }
    if let Err(e) = foca.leave_cluster(&mut runtime) {
        warn!(error = %e, "leaving the group");
    }
    wire.flush(&mut runtime, &foca).await;
}

/// Where `foca`'s output goes: the socket, the timer queue, the member list.
struct Wire {
    socket: UdpSocket,
    keys: Vec<Vec<u8>>,
    incarnation: u64,
    seq: u64,
    guard: ReplayGuard,
    timers: mpsc::UnboundedSender<Timer<Peer>>,
    members: watch::Sender<BTreeSet<String>>,
    counters: Arc<Counters>,
}

impl Wire {
    /// The payload of a datagram sealed with one of the group's keys and
    /// not seen before; anything else is counted and dropped.
    fn admit<'d>(&mut self, datagram: &'d [u8], from: SocketAddr) -> Option<&'d [u8]> {
        let Some((header, payload)) = open(&self.keys, datagram) else {
            self.counters.bad_tag.inc();
            debug!(%from, "dropped a datagram with a bad tag");
            return None;
        };
        if let Err(why) = self.guard.admit(header, now_ms()) {
            self.counters.replayed.inc();
            if why == Replay::Stale {
                warn!(%from, skew_ms = header.sent_ms as i64 - now_ms() as i64,
                    "dropped a gossip datagram sent too far from this node's clock \
                     (a replay, or clocks out of step: check NTP)");
            } else {
                debug!(%from, "dropped a replayed gossip datagram");
            }
            return None;
        }
        Some(payload)
    }

    /// Sends what `foca` queued, schedules its timers, and publishes the
    /// member list when it changed.
    async fn flush(
        &mut self,
        runtime: &mut AccumulatingRuntime<Peer>,
        foca: &Foca<Peer, PostcardCodec, StdRng, HealthHandler>,
    ) {
        while let Some((to, data)) = runtime.to_send() {
            self.seq += 1;
            let header = Header {
                incarnation: self.incarnation,
                sent_ms: now_ms(),
                seq: self.seq,
            };
            let datagram = seal(&self.keys[0], header, &data);
            if let Err(e) = self.socket.send_to(&datagram, to.addr).await {
                debug!(error = %e, to = %to.addr, "send failed");
            }
        }
        while let Some((after, timer)) = runtime.to_schedule() {
            let timers = self.timers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = timers.send(timer);
            });
        }
        let mut changed = false;
        while runtime.to_notify().is_some() {
            changed = true;
        }
        if changed {
            self.counters.changes.inc();
            let mut alive: BTreeSet<String> =
                foca.iter_members().map(|m| m.id().node.clone()).collect();
            alive.insert(foca.identity().node.clone());
            alive.remove("");
            self.members.send_if_modified(|current| {
                if *current == alive {
                    false
                } else {
                    *current = alive;
                    true
                }
            });
        }
    }
}
