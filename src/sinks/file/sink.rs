//! Appends batches to a JSONL file.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
    /// Opens the file for appending, created with (and set to) the configured mode, 0600
    /// by default: the envelopes are the cluster's objects.
    ///
    /// # Errors
    /// The file cannot be opened (at `path`).
    pub fn open(config: &FileSinkConfig, payload: Payload) -> Result<Self, Error> {
        let fail = |message: String| {
            Error::new(
                "path",
                ErrorKind::File {
                    path: config.path.clone(),
                    message,
                },
            )
        };
        let mode = config.file_mode()?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(mode)
            .open(&config.path)
            .map_err(|e| fail(format!("cannot open: {e}")))?;
        // The mode at creation is narrowed by the umask, and an existing file keeps its own:
        // set it exactly (regular files only; `/dev/stdout` or a FIFO is left alone).
        let meta = file
            .metadata()
            .map_err(|e| fail(format!("cannot stat: {e}")))?;
        if meta.is_file() && meta.permissions().mode() & 0o777 != mode {
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| fail(format!("cannot set mode {mode:o}: {e}")))?;
        }
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

    fn reads_trees(&self) -> bool {
        self.payload.reads_trees()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: &std::path::Path, mode: Option<&str>) -> FileSinkConfig {
        FileSinkConfig {
            path: path.to_path_buf(),
            fsync: false,
            mode: mode.map(Into::into),
        }
    }

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_output_is_private_unless_a_wider_mode_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        FileSink::open(&config(&path, None), Payload::Envelope).unwrap();
        assert_eq!(mode(&path), 0o600);
        FileSink::open(&config(&path, Some("0640")), Payload::Envelope).unwrap();
        assert_eq!(mode(&path), 0o640);
        // An existing world-readable file is narrowed back at the next start.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        FileSink::open(&config(&path, None), Payload::Envelope).unwrap();
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn modes_with_execute_bits_or_not_octal_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["0755", "640x", "9", "01600"] {
            let e = config(&dir.path().join("x"), Some(bad))
                .file_mode()
                .unwrap_err();
            assert_eq!(e.path, "mode", "{bad}");
        }
        assert_eq!(
            config(&dir.path().join("x"), Some("0o644"))
                .file_mode()
                .unwrap(),
            0o644
        );
    }
}
