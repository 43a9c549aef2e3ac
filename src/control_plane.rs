//! What `ironlb controller` runs: one replica at a time, elected through a
//! `coordination.k8s.io` Lease, runs the Service controller
//! ([`crate::controller`]), the Gateway controller ([`crate::gateway`]) and
//! the housekeeping of the speakers' reports and Secret grants
//! ([`crate::controller::reports`]); a standby takes over when the leader's
//! lease expires, and starts by restoring every address from Service status.
//!
//! Every writer of a term checks the same [`Fence`] before it writes, so a
//! replica that lost the lease while paused writes nothing.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::controller::metrics::Metrics;
use crate::controller::{self, CONTROLLER_NAME, reports};
use crate::k8s::Fence;

/// How the control plane runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The Service controller's own settings (its `fence` is set per term).
    pub service: controller::Config,
    /// Run the Gateway API controller beside the Service one.
    pub gateway: bool,
    /// The namespace of the leader-election Lease.
    pub lease_namespace: String,
    /// How long a leader's lease lasts without renewal.
    pub lease_duration: Duration,
    /// How long before expiry the leader renews.
    pub lease_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            service: controller::Config::default(),
            gateway: true,
            lease_namespace: "ironlb-system".into(),
            lease_duration: Duration::from_secs(15),
            lease_grace: Duration::from_secs(5),
        }
    }
}

/// Why the control plane stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Service controller stopped.
    #[error(transparent)]
    Controller(#[from] controller::Error),
    /// Leader election failed.
    #[error("leader election on Lease {namespace}/{name}: {source}")]
    LeaderElection {
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// What failed.
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
}

/// Runs every controller while this replica holds the Lease, stands by
/// otherwise, until `shutdown`.
pub async fn run_with_leader_election(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let identity = config.service.identity.clone();
    let election_error = |source| Error::LeaderElection {
        namespace: config.lease_namespace.clone(),
        name: CONTROLLER_NAME.into(),
        source,
    };
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), CONTROLLER_NAME)
        .with_namespace(config.lease_namespace.clone())
        .with_identity(identity.clone())
        .with_duration(config.lease_duration.as_secs().max(1))
        .with_grace(config.lease_grace.as_secs().max(1))
        .build()
        .await
        .map_err(election_error)?;
    let (mut leading, task) = manager.watch().await;
    metrics.set_ready(true);
    loop {
        metrics.set_leader(false);
        info!(%identity, "standing by for the leader lease");
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = leading.wait_for(|l| *l) => if changed.is_err() { break },
        }
        info!(%identity, "acquired the leader lease");
        metrics.set_leader(true);
        let term = shutdown.child_token();
        let fence = Fence {
            namespace: config.lease_namespace.clone(),
            name: CONTROLLER_NAME.into(),
            identity: identity.clone(),
            // Renewals are due `lease_grace` before expiry; half of that is
            // the margin for clock skew and a write in flight.
            max_age: config.lease_duration.saturating_sub(config.lease_grace / 2),
        };
        let mut work = Box::pin(run(
            client.clone(),
            config.clone(),
            Some(fence),
            metrics.clone(),
            term.clone(),
        ));
        tokio::select! {
            result = &mut work => {
                result?;
                break;
            }
            _ = leading.wait_for(|l| !*l) => {
                warn!(%identity, "lost the leader lease; stopping");
                term.cancel();
                let _ = work.await;
            }
        }
    }
    drop(leading);
    // Closing the channel makes the manager release the lease, so a standby
    // takes over at once instead of after the lease expires.
    match task.await {
        Ok(Ok(manager)) => manager.release().await.map_err(election_error)?,
        Ok(Err(e)) => return Err(election_error(e)),
        Err(e) => warn!(error = %e, "leader election task ended abnormally"),
    }
    Ok(())
}

/// One term: every controller, each writing only while `fence` holds (always,
/// without one), until `shutdown` or the Service controller stops.
pub async fn run(
    client: Client,
    config: Config,
    fence: Option<Fence>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // The Gateway controller and the housekeeping wait for their own caches;
    // they start at once so they are not held up by the Service controller's.
    let companions = shutdown.child_token();
    let mut tasks = Vec::new();
    if config.gateway {
        tasks.push(tokio::spawn(crate::gateway::controller::run(
            client.clone(),
            fence.clone(),
            companions.clone(),
        )));
    }
    tasks.push(tokio::spawn(reports::run(
        client.clone(),
        config.lease_namespace.clone(),
        fence.clone(),
        companions.clone(),
    )));
    let service = controller::Config {
        fence,
        ..config.service
    };
    let result = controller::run(client, service, metrics, shutdown).await;
    companions.cancel();
    for task in tasks {
        let _ = task.await;
    }
    Ok(result?)
}
