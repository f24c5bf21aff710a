//! Leader election on a `coordination.k8s.io/v1` Lease, client-go style: optimistic
//! concurrency on the Lease's resourceVersion, expiry judged by this replica's own clock
//! (how long the record has gone unchanged), never by comparing timestamps across machines.
//!
//! Only the leader forwards. Standbys keep their informers warm. A leader that cannot renew
//! within `renewDeadline` has lost the lease and must stop forwarding at once: the deadline is
//! a timer, and every lease request is bounded by [`call_timeout`]. Retries after a failed
//! request follow [`BackoffPolicy::LEASE`], never slower than `retryPeriod`.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::BackoffPolicy;

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

/// How long each lease request (get, create, replace) may take: half the renew deadline, so
/// a renewal (a get and a replace) fits in it. A request that takes longer is abandoned.
pub fn call_timeout(config: &LeaderElectionConfig) -> Duration {
    config.renew_deadline / 2
}

/// Runs the election until `cancel`; the role is published on the returned channel, and the
/// task is returned for joining. On shutdown a leader releases the lease so a standby takes
/// over without waiting.
///
/// A leader's renew deadline is a timer, not a check made after a request returns: when the
/// API server stops answering, [`Role::Lost`] is published `renewDeadline` after the last
/// successful renewal even while a request hangs — before any standby can take over (they wait
/// for `leaseDuration`, which is longer).
pub fn spawn(
    client: kube::Client,
    config: LeaderElectionConfig,
    cancel: CancellationToken,
) -> (watch::Receiver<Role>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Role::Standby);
    let task = tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &config.namespace());
        let mut elector = Elector {
            api,
            identity: config.identity(),
            timeout: call_timeout(&config),
            config,
            observed: None,
        };
        info!(identity = %elector.identity, lease = %elector.config.lease_name, "leader election: standing by");
        let mut backoff = BackoffPolicy::LEASE.start();
        // While leading: when the lease counts as lost unless renewed before.
        let mut deadline: Option<tokio::time::Instant> = None;
        let lost = |tx: &watch::Sender<Role>, identity: &str| {
            warn!(identity = %identity, "leader election: could not renew the lease in time; stopping");
            let _ = tx.send(Role::Lost);
        };
        loop {
            let expiry = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let attempt = tokio::select! {
                _ = cancel.cancelled() => {
                    if deadline.is_some() {
                        elector.release().await;
                    }
                    return;
                }
                _ = expiry => return lost(&tx, &elector.identity),
                a = elector.try_acquire_or_renew() => a,
            };
            let wait = match attempt {
                Ok(Attempt::Holding) => {
                    backoff.reset();
                    if deadline.is_none() {
                        info!(identity = %elector.identity, "leader election: acquired the lease; forwarding");
                        let _ = tx.send(Role::Leader);
                    }
                    deadline = Some(tokio::time::Instant::now() + elector.config.renew_deadline);
                    elector.config.retry_period
                }
                Ok(Attempt::HeldByOther(holder)) => {
                    if deadline.is_some() {
                        warn!(holder = ?holder, "leader election: another replica holds the lease now");
                        return lost(&tx, &elector.identity);
                    }
                    elector.config.retry_period
                }
                // Someone wrote the lease between our read and our write: try again soon.
                Ok(Attempt::Conflict) => backoff.next_delay().min(elector.config.retry_period),
                Err(e) => {
                    warn!(error = %e, "leader election: lease request failed");
                    backoff.next_delay().min(elector.config.retry_period)
                }
            };
            let expiry = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {
                    if deadline.is_some() {
                        elector.release().await;
                    }
                    return;
                }
                _ = expiry => return lost(&tx, &elector.identity),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
    (rx, task)
}

/// What one acquire-or-renew round found.
#[derive(Debug)]
enum Attempt {
    /// This replica holds the lease (acquired or renewed).
    Holding,
    /// Another replica holds it and it has not expired.
    HeldByOther(Option<String>),
    /// The lease changed between read and write (409): another round decides.
    Conflict,
}

/// Why a lease request failed.
#[derive(Debug, thiserror::Error)]
enum LeaseError {
    /// The API server answered with an error.
    #[error("{0}")]
    Api(#[from] kube::Error),
    /// The API server did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

struct Elector {
    /// Leases in the configured namespace.
    api: Api<Lease>,
    /// Who this replica is in the Lease.
    identity: String,
    /// The settings.
    config: LeaderElectionConfig,
    /// Each request's bound ([`call_timeout`]).
    timeout: Duration,
    /// The last lease record seen and when this replica first saw it.
    observed: Option<(LeaseRecord, Instant)>,
}

/// What identifies one write of the lease: (holder, renewTime).
type LeaseRecord = (Option<String>, Option<String>);

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

    /// One request, abandoned after [`call_timeout`].
    async fn bounded<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(r) => r.map_err(LeaseError::Api),
            Err(_) => Err(LeaseError::Timeout(self.timeout)),
        }
    }

    /// One acquire-or-renew round.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, LeaseError> {
        let name = self.config.lease_name.clone();
        let current = match self.bounded(self.api.get_opt(&name)).await? {
            Some(l) => l,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(0, None)),
                };
                return match self
                    .bounded(self.api.create(&PostParams::default(), &lease))
                    .await
                {
                    Ok(_) => Ok(Attempt::Holding),
                    Err(LeaseError::Api(kube::Error::Api(s))) if s.code == 409 => {
                        Ok(Attempt::Conflict)
                    }
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
            return Ok(Attempt::HeldByOther(holder));
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
            .bounded(self.api.replace(&name, &PostParams::default(), &lease))
            .await
        {
            Ok(_) => Ok(Attempt::Holding),
            Err(LeaseError::Api(kube::Error::Api(s))) if s.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (holder cleared) so a standby need not wait for expiry. Each
    /// request is bounded: shutdown never waits on an API server that does not answer.
    async fn release(&self) {
        let name = &self.config.lease_name;
        if let Ok(Some(mut lease)) = self.bounded(self.api.get_opt(name)).await
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
            match self
                .bounded(self.api.replace(name, &PostParams::default(), &lease))
                .await
            {
                Ok(_) => info!("leader election: released the lease"),
                Err(e) => warn!(error = %e, "leader election: could not release the lease"),
            }
        }
    }
}
