//! Fault injection settings: which requests to slow down or fail, and how.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Faults applied to incoming API requests (admin paths are never affected).
///
/// JSON form (for `POST /_kubesim/faults`):
/// `{"error_rate":0.5,"error_code":429,"retry_after_seconds":1,"delay_rate":0,"delay_ms":0,"verbs":["list"],"watch":null}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Fraction (0..=1) of matching requests answered with `error_code`.
    pub error_rate: f64,
    /// 500 (InternalError), 429 (TooManyRequests, with `Retry-After`), 503 or 504.
    pub error_code: u16,
    /// `Retry-After` seconds for 429/503.
    pub retry_after_seconds: u32,
    /// Fraction (0..=1) of matching requests delayed by `delay_ms` first.
    pub delay_rate: f64,
    /// Delay in milliseconds.
    pub delay_ms: u64,
    /// Verbs the faults apply to (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, `discovery`); empty means all.
    pub verbs: Vec<String>,
    /// `Some(true)`: only watch requests; `Some(false)`: only non-watch requests; `None`: both.
    pub watch: Option<bool>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            error_rate: 0.0,
            error_code: 500,
            retry_after_seconds: 1,
            delay_rate: 0.0,
            delay_ms: 0,
            verbs: Vec::new(),
            watch: None,
        }
    }
}

impl Faults {
    /// Fail this fraction of requests with 500.
    pub fn fail(rate: f64) -> Self {
        Faults {
            error_rate: rate,
            ..Default::default()
        }
    }

    /// Fail this fraction of requests with 429 and `Retry-After: secs`.
    pub fn throttle(rate: f64, secs: u32) -> Self {
        Faults {
            error_rate: rate,
            error_code: 429,
            retry_after_seconds: secs,
            ..Default::default()
        }
    }

    /// Delay this fraction of requests.
    pub fn delay(rate: f64, by: Duration) -> Self {
        Faults {
            delay_rate: rate,
            delay_ms: by.as_millis() as u64,
            ..Default::default()
        }
    }

    /// Restrict to these verbs.
    pub fn for_verbs(mut self, verbs: &[&str]) -> Self {
        self.verbs = verbs.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Restrict to watches (`true`) or non-watches (`false`).
    pub fn only_watch(mut self, watch: bool) -> Self {
        self.watch = Some(watch);
        self
    }

    /// Whether these faults apply to a request with this verb.
    pub fn applies(&self, verb: &str, is_watch: bool) -> bool {
        (self.verbs.is_empty() || self.verbs.iter().any(|v| v == verb))
            && self.watch.is_none_or(|w| w == is_watch)
    }
}

/// How a simulator that "stops answering" behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StopMode {
    /// Serve normally.
    #[default]
    Answering,
    /// Accept requests but never answer until resumed (clients see timeouts).
    Hang,
    /// Close each connection without an answer (clients see connection resets / EOF).
    Reset,
}
