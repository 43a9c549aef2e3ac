//! The check a leader makes before it writes.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};

/// Keeps a replica that was paused or cut off from writing after its lease
/// could have passed to another: before a pass writes, the Lease must name this
/// replica and have been renewed less than `max_age` ago (the lease duration
/// less a safety margin), by this replica's clock, which also wrote the
/// renewal time. Elections alone cannot promise that: a leader frozen past its
/// lease still believes it leads for the moment after it resumes.
#[derive(Clone, Debug)]
pub struct Fence {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity in it.
    pub identity: String,
    /// How old the last renewal may be.
    pub max_age: Duration,
}

impl Fence {
    /// Whether this replica may write now; the error says why not.
    pub async fn check(&self, client: &Client) -> Result<(), String> {
        use k8s_openapi::api::coordination::v1::Lease;
        let lease = Api::<Lease>::namespaced(client.clone(), &self.namespace)
            .get(&self.name)
            .await
            .map_err(|e| format!("reading Lease {}/{}: {e}", self.namespace, self.name))?;
        let spec = lease.spec.unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Err(format!(
                "Lease {}/{} is held by {:?}",
                self.namespace, self.name, spec.holder_identity
            ));
        }
        let renewed = spec
            .renew_time
            .map(|t| t.0)
            .ok_or("the Lease has no renewTime")?;
        let age = Timestamp::now().duration_since(renewed);
        let max = k8s_openapi::jiff::SignedDuration::try_from(self.max_age).unwrap_or_default();
        if age > max {
            return Err(format!(
                "the Lease was last renewed {age:#} ago, more than the {max:#} a writer may rely on"
            ));
        }
        Ok(())
    }
}
