//! Appends batches to a JSONL file.

use std::io::Write;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::FileSinkConfig;
use crate::config::{Error, ErrorKind};
use crate::event::Envelope;
use crate::sinks::{Payload, Sink, SinkError};

/// Appends one envelope (or Debezium change event) per line; a batch is one write (and one
/// fsync when asked).
pub struct FileSink {
    file: Arc<Mutex<std::fs::File>>,
    fsync: bool,
    /// What each line holds.
    payload: Payload,
}

impl FileSink {
    /// Opens the file for appending.
    ///
    /// # Errors
    /// The file cannot be opened (at `path`).
    pub fn open(config: &FileSinkConfig, payload: Payload) -> Result<Self, Error> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)
            .map_err(|e| {
                Error::new(
                    "path",
                    ErrorKind::File {
                        path: config.path.clone(),
                        message: format!("cannot open: {e}"),
                    },
                )
            })?;
        Ok(Self {
            file: Arc::new(Mutex::new(file)),
            fsync: config.fsync,
            payload,
        })
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn send(&self, batch: &[Arc<Envelope>]) -> Result<(), SinkError> {
        let mut buf = Vec::with_capacity(batch.iter().map(|e| e.to_json().len() + 1).sum());
        for e in batch {
            buf.extend_from_slice(&self.payload.encode(e));
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
