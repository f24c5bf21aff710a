//! Leader election on a `coordination.k8s.io/v1` Lease, client-go style: optimistic
//! concurrency on the Lease's resourceVersion, expiry judged by this replica's own clock
//! (how long the record has gone unchanged), never by comparing timestamps across machines.
//!
//! Only the leader forwards. Standbys keep their informers warm. A leader that cannot renew
//! within `renewDeadline` has lost the lease and must stop forwarding at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// `leaderElection:` in the config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LeaderElectionConfig {
    /// Run as one of several replicas, only the lease holder forwarding.
    #[serde(default)]
    pub enabled: bool,
    /// Name of the Lease.
    #[serde(default = "default_lease_name")]
    pub lease_name: String,
    /// Namespace of the Lease (default: `$POD_NAMESPACE`, else `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_namespace: Option<String>,
    /// This replica's identity (default: `$POD_NAME`, else the host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// How long a lease is valid without renewal; a standby takes over after it.
    #[serde(default = "default_lease_duration", with = "humantime_serde")]
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long gives up (must be < leaseDuration).
    #[serde(default = "default_renew_deadline", with = "humantime_serde")]
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    #[serde(default = "default_retry_period", with = "humantime_serde")]
    pub retry_period: Duration,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            lease_name: default_lease_name(),
            lease_namespace: None,
            identity: None,
            lease_duration: default_lease_duration(),
            renew_deadline: default_renew_deadline(),
            retry_period: default_retry_period(),
        }
    }
}

fn default_lease_name() -> String {
    "lookout".into()
}
fn default_lease_duration() -> Duration {
    Duration::from_secs(15)
}
fn default_renew_deadline() -> Duration {
    Duration::from_secs(10)
}
fn default_retry_period() -> Duration {
    Duration::from_secs(2)
}

impl LeaderElectionConfig {
    /// Cross-field rules; paths relative to `leaderElection`.
    ///
    /// # Errors
    /// Every rule broken.
    pub fn validate(&self) -> Result<(), crate::config::Errors> {
        use crate::config::{Error, ErrorKind, Errors};
        let mut errors = Errors::default();
        let shorter = |key: &str, than: &str| {
            Error::new(
                key,
                ErrorKind::Conflict(format!("must be shorter than {than}")),
            )
        };
        if self.renew_deadline >= self.lease_duration {
            errors.push(shorter("renewDeadline", "leaseDuration"));
        }
        if self.retry_period >= self.renew_deadline {
            errors.push(shorter("retryPeriod", "renewDeadline"));
        }
        errors.finish(|| ())
    }

    /// The identity to hold the lease as.
    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| format!("lookout-{}", uuid::Uuid::new_v4()))
    }

    /// The namespace of the Lease.
    pub fn namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".to_string())
    }
}

/// Where this replica stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not (yet) holding the lease: keep informers warm, forward nothing.
    Standby,
    /// Holding the lease: forward.
    Leader,
    /// Held the lease and could not renew it in time: stop forwarding now.
    Lost,
}

/// Runs the election until `cancel`; the role is published on the returned channel.
/// On shutdown a leader releases the lease so a standby takes over without waiting.
pub fn spawn(
    client: kube::Client,
    config: LeaderElectionConfig,
    cancel: CancellationToken,
) -> watch::Receiver<Role> {
    let (tx, rx) = watch::channel(Role::Standby);
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &config.namespace());
        let mut elector = Elector {
            api,
            identity: config.identity(),
            config,
            observed: None,
            last_renew: None,
        };
        info!(identity = %elector.identity, lease = %elector.config.lease_name, "leader election: standing by");
        loop {
            let leading = *tx.borrow() == Role::Leader;
            match elector.try_acquire_or_renew().await {
                Ok(true) => {
                    elector.last_renew = Some(Instant::now());
                    if !leading {
                        info!(identity = %elector.identity, "leader election: acquired the lease; forwarding");
                        let _ = tx.send(Role::Leader);
                    }
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election: lease request failed"),
            }
            if leading
                && elector
                    .last_renew
                    .is_none_or(|t| t.elapsed() > elector.config.renew_deadline)
            {
                warn!(identity = %elector.identity, "leader election: could not renew the lease in time; stopping");
                let _ = tx.send(Role::Lost);
                return;
            }
            tokio::select! {
                _ = cancel.cancelled() => {
                    if *tx.borrow() == Role::Leader {
                        elector.release().await;
                    }
                    return;
                }
                _ = tokio::time::sleep(elector.config.retry_period) => {}
            }
        }
    });
    rx
}

struct Elector {
    api: Api<Lease>,
    identity: String,
    config: LeaderElectionConfig,
    /// The last lease record seen (holder, renewTime) and when this replica first saw it.
    observed: Option<((Option<String>, Option<String>), Instant)>,
    last_renew: Option<Instant>,
}

impl Elector {
    fn spec(&self, transitions: i32, acquire: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs() as i32),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Ok(true) when this replica holds the lease after the call.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let name = self.config.lease_name.clone();
        let current = match self.api.get_opt(&name).await? {
            Some(l) => l,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(0, None)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        let record = (
            spec.holder_identity.clone(),
            spec.renew_time.as_ref().map(|t| t.0.to_string()),
        );
        let now = Instant::now();
        let first_seen = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                self.observed = Some((record.clone(), now));
                now
            }
        };
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(self.config.lease_duration);
        let expired = holder.is_none() || now.duration_since(first_seen) > duration;
        if !ours && !expired {
            debug!(holder = ?holder, "leader election: lease held by another replica");
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquire = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        let mut lease = current;
        lease.spec = Some(self.spec(transitions, acquire));
        // `replace` carries the resourceVersion we read: if another replica wrote in
        // between, the API server answers 409 and we lost this round.
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (holder cleared) so a standby need not wait for expiry.
    async fn release(&self) {
        let name = &self.config.lease_name;
        if let Ok(Some(mut lease)) = self.api.get_opt(name).await
            && lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str())
        {
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
                spec.renew_time = None;
            }
            match self.api.replace(name, &PostParams::default(), &lease).await {
                Ok(_) => info!("leader election: released the lease"),
                Err(e) => warn!(error = %e, "leader election: could not release the lease"),
            }
        }
    }
}
