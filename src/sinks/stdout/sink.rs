//! Writes batches to standard output.

use std::io::Write;
use std::sync::Arc;

use async_trait::async_trait;

use super::config::StdoutFormat;
use super::text::render_text;
use crate::event::{Envelope, debezium};
use crate::sinks::{Sink, SinkError};

/// Writes each batch with one locked, buffered write and a flush, so lines of concurrent
/// writers never interleave and a batch is on stdout when `send` returns.
pub struct StdoutSink {
    format: StdoutFormat,
    /// How `format: debezium` lines are framed.
    debezium: debezium::Encoding,
}

impl StdoutSink {
    /// A sink writing `format`.
    pub fn new(format: StdoutFormat, debezium: debezium::Encoding) -> Self {
        Self { format, debezium }
    }

    fn render(&self, batch: &[Arc<Envelope>]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(batch.iter().map(|e| e.to_json().len() + 1).sum());
        for e in batch {
            match self.format {
                StdoutFormat::Json => buf.extend_from_slice(e.to_json()),
                StdoutFormat::Text => buf.extend_from_slice(render_text(e).as_bytes()),
                StdoutFormat::Debezium => buf.extend_from_slice(&self.debezium.value(e)),
            }
            buf.push(b'\n');
        }
        buf
    }
}

#[async_trait]
impl Sink for StdoutSink {
    async fn send(&self, batch: &[Arc<Envelope>]) -> Result<(), SinkError> {
        let buf = self.render(batch);
        // Writing to a pipe can block; keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            let mut out = std::io::stdout().lock();
            out.write_all(&buf)?;
            out.flush()
        })
        .await
        .map_err(|e| SinkError::retriable(format!("stdout writer task failed: {e}")))?
        .map_err(|e| SinkError::retriable(format!("cannot write to stdout: {e}")))
    }
}
