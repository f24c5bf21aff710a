//! Writes batches to standard output.

use std::io::Write;
use std::sync::Arc;

use async_trait::async_trait;

use super::text::{TextStyle, render_line};
use crate::event::{Envelope, debezium};
use crate::sinks::{Sink, SinkError};

/// How the stdout sink writes an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdoutFormat {
    /// One JSON envelope per line.
    Json,
    /// One human-readable line per change.
    Text,
    /// One Debezium change event per line.
    Debezium(debezium::Encoding),
}

/// Writes each batch with one locked, buffered write and a flush, so lines of concurrent
/// writers never interleave and a batch is on stdout when `send` returns.
pub struct StdoutSink {
    format: StdoutFormat,
    /// Width and colour of `text` lines, from the terminal at start.
    style: TextStyle,
}

impl StdoutSink {
    /// A sink writing `format`.
    pub fn new(format: StdoutFormat) -> Self {
        Self {
            format,
            style: TextStyle::for_stdout(),
        }
    }

    fn render(&self, batch: &[Arc<Envelope>]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(batch.iter().map(|e| e.to_json().len() + 1).sum());
        for e in batch {
            match self.format {
                StdoutFormat::Json => buf.extend_from_slice(e.to_json()),
                StdoutFormat::Text => buf.extend_from_slice(render_line(e, self.style).as_bytes()),
                StdoutFormat::Debezium(d) => buf.extend_from_slice(&d.value(e)),
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
        let written = tokio::task::spawn_blocking(move || {
            let mut out = std::io::stdout().lock();
            out.write_all(&buf)?;
            out.flush()
        })
        .await
        .map_err(|e| SinkError::retriable(format!("stdout writer task failed: {e}")))?;
        match written {
            Ok(()) => Ok(()),
            // The reader is gone (`lookout demo | head`): end quietly, as a Unix filter does
            // on SIGPIPE, but with status 0. Nothing unacknowledged is lost for good: the
            // delivered-state store is crash-safe, so the next start sends it again.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
            Err(e) => Err(SinkError::retriable(format!("cannot write to stdout: {e}"))),
        }
    }

    fn reads_trees(&self) -> bool {
        !matches!(self.format, StdoutFormat::Json)
    }
}
