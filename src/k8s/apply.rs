//! The discipline every writer of the control plane keeps: writes carry the
//! `resourceVersion` they were decided from, a 409 means "look again soon",
//! and failures are retried with a jittered, growing back-off.

use std::time::Duration;

/// What became of a pass's writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Writes that failed (retried by a later pass, with backoff).
    pub failed: usize,
    /// Writes refused with 409 because the object changed since the snapshot:
    /// the next pass, on a fresher view, decides again.
    pub conflicts: usize,
}

impl Written {
    /// What one write's result means: a 409 is a conflict, any other error
    /// a failure, logged with `what` was written.
    pub fn of<T>(result: Result<T, kube::Error>, what: impl std::fmt::Display) -> Self {
        match result {
            Ok(_) => Self::default(),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!(%what, "conflict: the object changed since it was read; looking again");
                Self {
                    failed: 0,
                    conflicts: 1,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed");
                Self {
                    failed: 1,
                    conflicts: 0,
                }
            }
        }
    }
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, other: Self) {
        self.failed += other.failed;
        self.conflicts += other.conflicts;
    }
}

/// How long until the next pass when nothing wakes it: soon after failed
/// writes (with back-off) or a conflict, else the resync period.
pub fn idle_until_retry(written: Written, backoff: &mut Backoff, resync: Duration) -> Duration {
    if written.failed > 0 {
        return backoff.delay();
    }
    backoff.reset();
    if written.conflicts > 0 {
        // A 409: the view was stale; look again once the watch has caught up.
        Duration::from_millis(200)
    } else {
        resync
    }
}

/// Delays between retries of failed writes: doubling from 500 ms to 30 s, each
/// drawn at random between half and all of it, so replicas and controllers
/// hitting one struggling API server do not retry in step.
#[derive(Debug)]
pub struct Backoff {
    upcoming: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            upcoming: Backoff::FIRST,
        }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const CAP: Duration = Duration::from_secs(30);

    /// The next delay.
    pub fn delay(&mut self) -> Duration {
        use rand::RngExt;
        let full = self.upcoming;
        self.upcoming = (self.upcoming * 2).min(Backoff::CAP);
        full.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.upcoming = Backoff::FIRST;
    }
}

/// A delete of what is already gone did what it was for.
pub fn gone_is_fine<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_a_cap_and_resets() {
        let mut b = Backoff::default();
        let mut full = Backoff::FIRST;
        for _ in 0..10 {
            let d = b.delay();
            assert!(
                d >= full / 2 && d <= full,
                "{d:?} within half and all of {full:?}"
            );
            full = (full * 2).min(Backoff::CAP);
        }
        assert_eq!(full, Backoff::CAP);
        b.reset();
        assert!(b.delay() <= Backoff::FIRST);
    }
}
