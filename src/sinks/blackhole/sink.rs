//! Discards batches after counting them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::event::Envelope;
use crate::sinks::{Sink, SinkError};

/// Acknowledges every batch immediately. Each envelope is encoded (as every real sink does,
/// and shared with them), so the pipeline's cost is measured whole.
#[derive(Debug, Default)]
pub struct BlackholeSink {
    /// Events accepted.
    events: AtomicU64,
    /// Bytes of their JSON encoding.
    bytes: AtomicU64,
}

impl BlackholeSink {
    /// Events accepted so far.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Bytes of the JSON envelopes accepted so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Sink for BlackholeSink {
    async fn send(&self, batch: &[Arc<Envelope>]) -> Result<(), SinkError> {
        let bytes: usize = batch.iter().map(|e| e.to_json().len()).sum();
        self.events.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(())
    }

    fn reads_trees(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::json;

    use super::*;
    use crate::event::{EnvelopeBuilder, Op};

    #[tokio::test]
    async fn accepts_and_counts_every_event() {
        let builder = EnvelopeBuilder {
            cluster: "c".into(),
            api_version: "v1".into(),
            kind: "Pod".into(),
            plural: "pods".into(),
            source: "v1/Pod".into(),
            include_old: false,
        };
        let obj = Arc::new(json!({"metadata": {"name": "p", "uid": "u", "resourceVersion": "1"}}));
        let e = Arc::new(builder.build(Op::Add, obj, None, None, Instant::now()));
        let sink = BlackholeSink::default();
        sink.send(&[e.clone(), e.clone()]).await.unwrap();
        assert_eq!(sink.events(), 2);
        assert_eq!(sink.bytes(), 2 * e.to_json().len() as u64);
    }
}
