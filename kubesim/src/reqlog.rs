//! The request log tests read to assert what a client did.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// One handled request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Decoded query parameters in order.
    pub query: Vec<(String, String)>,
    /// Kubernetes verb (`list`, `watch`, `get`, `create`, ..., `discovery`, `admin`, `unknown`).
    pub verb: String,
    /// Whether it was a watch.
    pub watch: bool,
    /// When it arrived.
    #[serde(serialize_with = "ser_time")]
    pub time: SystemTime,
    /// HTTP status answered (for watches: the status the stream started with; 0 if never answered).
    pub status: u16,
}

impl RequestRecord {
    /// The value of a query parameter, if present.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    s.serialize_f64(d.as_secs_f64())
}

/// Bounded, shared request log.
pub(crate) struct RequestLog {
    limit: usize,
    records: Mutex<VecDeque<RequestRecord>>,
}

impl RequestLog {
    pub(crate) fn new(limit: usize) -> Self {
        RequestLog {
            limit: limit.max(1),
            records: Mutex::new(VecDeque::new()),
        }
    }

    pub(crate) fn push(&self, r: RequestRecord) {
        let mut g = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() >= self.limit {
            g.pop_front();
        }
        g.push_back(r);
    }

    pub(crate) fn snapshot(&self) -> Vec<RequestRecord> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub(crate) fn clear(&self) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
