//! This speaker's side of an upgrade as the one that goes: where it offers
//! its sockets, the successor that took them, and the end of the hand-over
//! ([`crate::handover`] holds the protocol).

use std::os::fd::{AsFd, OwnedFd};

use tracing::{info, warn};

use super::executor::Executor;
use crate::handover::{Kind, Offer, Said, Successor};
use crate::membership::Membership;

/// What the speaker keeps to pass on, and to whom.
pub(super) struct Handoff {
    /// Where successors ask; `None` without `--handover-socket`, or when it
    /// could not be opened.
    offer: Option<Offer>,
    /// The successor holding this speaker's sockets, once one took them.
    successor: Option<Successor>,
    /// Copies of the gossip socket and metrics listener, to pass on.
    gossip: OwnedFd,
    metrics: Option<OwnedFd>,
}

/// What a successor's word means for the speaker.
pub(super) enum Step {
    /// A successor took the sockets, or one went away: the speaker goes on.
    Continue,
    /// The successor gossips now: the speaker ends by handing over.
    HandOver,
}

impl Handoff {
    /// Offers at `path` (if any) the sockets `gossip` and `metrics`, and
    /// later the forwarder's listeners.
    pub(super) fn new(
        path: Option<&std::path::Path>,
        gossip: &impl AsFd,
        metrics: Option<&impl AsFd>,
    ) -> std::io::Result<Self> {
        let gossip = gossip.as_fd().try_clone_to_owned()?;
        let metrics = metrics
            .map(|m| m.as_fd().try_clone_to_owned())
            .transpose()?;
        let offer = match path.map(Offer::listen) {
            Some(Ok(offer)) => Some(offer),
            Some(Err(e)) => {
                warn!(error = %e, "cannot offer this speaker's sockets to a successor; an upgrade will reset connections");
                None
            }
            None => None,
        };
        Ok(Self {
            offer,
            successor: None,
            gossip,
            metrics,
        })
    }

    /// Whether a successor holds this speaker's sockets: stopping now would
    /// withdraw its addresses under it.
    pub(super) fn passed(&self) -> bool {
        self.successor.is_some()
    }

    /// Waits for what happens next: a successor asking (given every socket
    /// at once) or the successor's next word. Never returns without an offer.
    pub(super) async fn next(&mut self, executor: &Executor, membership: &Membership) -> Step {
        match &mut self.successor {
            None => {
                let Some(mut next) = next_successor(&mut self.offer).await else {
                    return std::future::pending().await;
                };
                let mut sockets = vec![(Kind::Gossip, self.gossip.as_fd())];
                if let Some(fd) = &self.metrics {
                    sockets.push((Kind::Metrics, fd.as_fd()));
                }
                sockets.extend(
                    executor
                        .listener_sockets()
                        .into_iter()
                        .map(|((address, protocol), fd)| {
                            (Kind::Listener { address, protocol }, fd)
                        }),
                );
                match next.give(membership.generation(), &sockets) {
                    Ok(()) => {
                        info!(
                            sockets = sockets.len(),
                            "a new speaker on this node took this one's sockets"
                        );
                        self.successor = Some(next);
                    }
                    Err(e) => warn!(error = %e, "cannot hand the sockets over to a new speaker"),
                }
                Step::Continue
            }
            Some(successor) => match successor.said().await {
                Said::Gossip => Step::HandOver,
                _ => {
                    warn!("the new speaker went away before it took over; this one carries on");
                    self.successor = None;
                    Step::Continue
                }
            },
        }
    }

    /// Ends the hand-over once the successor gossips: tells it this speaker
    /// has stopped gossiping and waits until it is ready. Whether it is.
    pub(super) async fn finish(self) -> bool {
        let Some(mut successor) = self.successor else {
            return false;
        };
        successor.gossip_stopped();
        successor.said().await == Said::Ready
    }
}

/// The next successor to connect, or never without an offer.
async fn next_successor(offer: &mut Option<Offer>) -> Option<Successor> {
    match offer {
        Some(offer) => offer.successor().await,
        None => std::future::pending().await,
    }
}
