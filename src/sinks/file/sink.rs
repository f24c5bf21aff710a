//! Appends batches to a JSONL file.

use std::io::Write;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::FileSinkConfig;
use crate::event::Envelope;
use crate::event::cloudevents::EventFormat;
use crate::event::debezium;
use crate::sinks::{Sink, SinkBuildError, SinkError};

/// Appends one envelope per line; a batch is one write (and one fsync when asked).
pub struct FileSink {
    file: Arc<Mutex<std::fs::File>>,
    fsync: bool,
    /// What each line holds.
    format: EventFormat,
    /// How Debezium lines are framed.
    debezium: debezium::Encoding,
}

impl FileSink {
    /// Opens the file for appending.
    pub fn open(config: &FileSinkConfig) -> Result<Self, SinkBuildError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)
            .map_err(|e| SinkBuildError {
                name: config.name.clone(),
                message: format!("cannot open {}: {e}", config.path.display()),
            })?;
        Ok(Self {
            file: Arc::new(Mutex::new(file)),
            fsync: config.fsync,
            format: config.format,
            debezium: config.debezium.unwrap_or_default().into(),
        })
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn send(&self, batch: &[Arc<Envelope>]) -> Result<(), SinkError> {
        let mut buf = Vec::with_capacity(batch.iter().map(|e| e.to_json().len() + 1).sum());
        for e in batch {
            buf.extend_from_slice(&self.format.encode(e, self.debezium));
            buf.push(b'\n');
        }
        let file = self.file.clone();
        let fsync = self.fsync;
        tokio::task::spawn_blocking(move || {
            let mut f = file.lock().expect("file lock");
            f.write_all(&buf)?;
            if fsync {
                f.sync_data()?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|e| SinkError::retriable(format!("file writer task failed: {e}")))?
        .map_err(|e| SinkError::retriable(format!("cannot write: {e}")))
    }
}
