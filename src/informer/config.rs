//! What a user can set about list+watch: `watch:` (every informer) and
//! `resources[].initialList` (one resource), plus the timeouts the kube client gets.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `watch:` in the config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WatchConfig {
    /// A watch that hears nothing for this long (no event, no bookmark) is presumed dead — a
    /// half-open connection that a NAT or a load balancer left behind never ends by itself —
    /// and is opened again from its last resourceVersion: no re-list, nothing emitted.
    ///
    /// The API server sends a bookmark on every watch about once a minute, so a live watch is
    /// never quiet for much longer than that. The default (90 s) tolerates one late bookmark
    /// and still heals well before `server.readiness.maxSilence` (120 s) reports the informer
    /// not ready. Against a server that sends no bookmarks (watch cache disabled) a quiet watch
    /// is re-opened every `idleTimeout`, which costs one watch request and nothing else.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            idle_timeout: default_idle_timeout(),
        }
    }
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(90)
}

/// The shortest `watch.idleTimeout` accepted: below it, ordinary gaps between bookmarks
/// would restart watches for nothing.
const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

impl WatchConfig {
    /// Checks what serde cannot; the error is `(key under watch., message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.idle_timeout < MIN_IDLE_TIMEOUT {
            return Err((
                "idleTimeout",
                format!(
                    "must be at least {}s (the API server sends bookmarks about once a minute)",
                    MIN_IDLE_TIMEOUT.as_secs()
                ),
            ));
        }
        Ok(())
    }

    /// The read timeout of every API request: longer than `idleTimeout`, so a quiet but live
    /// watch is ended by the informer's idle timer (which resumes it) and never by the client;
    /// a socket that goes dead mid-request still errors out instead of hanging forever.
    pub fn read_timeout(&self) -> Duration {
        self.idle_timeout + READ_TIMEOUT_MARGIN
    }

    /// Sets connect and read timeouts on a kube client configuration, and turns off kube's
    /// own retries of 429/503/504: the informer's state machine retries with the shared
    /// backoff policy and honours `Retry-After` itself, so there is one retry loop, not two
    /// nested ones.
    pub fn tune_client(&self, config: &mut kube::Config) {
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.read_timeout = Some(self.read_timeout());
        // Time spent idle in the connection pool must not count against the read timeout.
        config.reset_reader_on_write = true;
        config.default_retry = false;
    }
}

/// How long a TCP (and TLS) connection to the API server may take to establish.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read timeout beyond `idleTimeout` (see [`WatchConfig::read_timeout`]).
const READ_TIMEOUT_MARGIN: Duration = Duration::from_secs(30);

/// `resources[].initialList`: how an informer gets the current objects, at start and after a
/// 410 Gone.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum InitialList {
    /// A streaming list, and paginated lists from the first time the server refuses one.
    #[default]
    Auto,
    /// A streaming list only (KEP-3157: a watch with `sendInitialEvents=true`,
    /// `resourceVersionMatch=NotOlderThan` and bookmarks, complete at the
    /// `k8s.io/initial-events-end` bookmark). A server that refuses it is an error, retried.
    Stream,
    /// Paginated lists (`limit` + `continue`), then a watch from the list's resourceVersion.
    Paginate,
}

impl InitialList {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            InitialList::Auto => "auto",
            InitialList::Stream => "stream",
            InitialList::Paginate => "paginate",
        }
    }
}

/// Builds the kube client the agent talks to the API server with: the kubeconfig (or the
/// in-cluster service account) as kube infers it, tuned by [`WatchConfig::tune_client`].
///
/// # Errors
/// No kubeconfig and not in a cluster, or an unusable kubeconfig.
pub async fn client(watch: &WatchConfig) -> Result<kube::Client, ClientError> {
    let mut config = kube::Config::infer().await?;
    watch.tune_client(&mut config);
    Ok(kube::Client::try_from(config)?)
}

/// Why no kube client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Neither a kubeconfig nor an in-cluster configuration was found or usable.
    #[error("cannot find the API server: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The configuration was found but a client cannot be built from it (TLS material).
    #[error("cannot build an API client: {0}")]
    Build(#[from] kube::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_timeout_outlasts_the_idle_timeout_so_the_idle_timer_heals_first() {
        let w = WatchConfig {
            idle_timeout: Duration::from_secs(5),
        };
        assert!(w.read_timeout() > w.idle_timeout);
        let mut c = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        w.tune_client(&mut c);
        assert_eq!(c.read_timeout, Some(w.read_timeout()));
        assert_eq!(c.connect_timeout, Some(CONNECT_TIMEOUT));
        assert!(!c.default_retry, "one retry loop: the informer's");
    }

    #[test]
    fn an_idle_timeout_below_a_second_is_refused() {
        let w = WatchConfig {
            idle_timeout: Duration::from_millis(200),
        };
        assert_eq!(w.validate().unwrap_err().0, "idleTimeout");
        assert!(WatchConfig::default().validate().is_ok());
    }
}
