//! Dead letters: events a sink rejected for good, kept as JSON lines so nobody has to dig
//! them out of logs, and so a poison event never blocks the queue behind it.
//!
//! One line per rejected event:
//! `{"time":"…","sink":"hook","reason":"HTTP 400 …","event":{<envelope>}}`.
//! The file is `<stateDir>/deadletter/<sink>.jsonl` unless the sink sets `deadLetter.path`.
//! Without either, dead letters are only logged (at error level).
//!
//! The file is created 0600 (its directory 0700): it holds whole envelopes. It rotates when
//! the next batch would take it past `deadLetter.maxBytes`: `<file>` becomes `<file>.1`, the
//! older ones shift up to `<file>.<maxFiles>`, and the oldest is deleted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::AsyncWriteExt;
use tracing::error;

use crate::event::Envelope;

/// `deadLetter:` of a sink entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeadLetterConfig {
    /// JSONL file receiving rejected events; default `<stateDir>/deadletter/<sink>.jsonl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The file is rotated before it grows past this many bytes (default 64 MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`<file>.1` … `<file>.<maxFiles>`; default 3, 0 keeps none).
    #[serde(default = "default_max_files")]
    pub max_files: u32,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        Self {
            path: None,
            max_bytes: default_max_bytes(),
            max_files: default_max_files(),
        }
    }
}

fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_max_files() -> u32 {
    3
}

/// Why dead letters could not be written (the events are then logged instead).
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The file or its directory could not be created or appended to.
    #[error("cannot write dead letters to {path}: {source}")]
    Io {
        /// The dead-letter file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
}

/// Where one sink's rejected events go.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    sink: String,
    /// `None`: log only.
    path: Option<PathBuf>,
    /// Rotation threshold.
    max_bytes: u64,
    /// Rotated files kept.
    max_files: u32,
    /// One writer at a time, so lines of concurrent batches never interleave.
    lock: Arc<tokio::sync::Mutex<()>>,
}

/// One line of the dead-letter file.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    sink: &'a str,
    reason: &'a str,
    /// The envelope exactly as the sink would have sent it (encoded once, embedded as is).
    event: &'a RawValue,
}

impl DeadLetter {
    /// The dead-letter file of `sink`: its own `path`, else below `state_dir`; `None`: log
    /// only.
    pub fn path_for(
        sink: &str,
        config: Option<&DeadLetterConfig>,
        state_dir: Option<&Path>,
    ) -> Option<PathBuf> {
        config
            .and_then(|c| c.path.clone())
            .or_else(|| state_dir.map(|d| d.join("deadletter").join(file_name(sink))))
    }

    /// Resolves the file for `sink`: the sink's own `path`, else below `state_dir`. With
    /// neither, says loudly at start that rejected events will only be logged.
    pub fn resolve(
        sink: &str,
        config: Option<&DeadLetterConfig>,
        state_dir: Option<&Path>,
    ) -> Self {
        let path = Self::path_for(sink, config, state_dir);
        if path.is_none() {
            error!(
                sink,
                "no state directory and no deadLetter.path: events this sink rejects will only \
                 be logged, not kept in a dead-letter file"
            );
        }
        let defaults = DeadLetterConfig::default();
        let config = config.unwrap_or(&defaults);
        Self {
            sink: sink.to_string(),
            path,
            max_bytes: config.max_bytes,
            max_files: config.max_files,
            lock: Arc::default(),
        }
    }

    /// Log-only dead letters without the start-up complaint, for sinks that never reject
    /// (stdout) and for drivers started without a sink config (tests).
    pub fn log_only(sink: &str) -> Self {
        Self {
            sink: sink.to_string(),
            path: None,
            max_bytes: default_max_bytes(),
            max_files: default_max_files(),
            lock: Arc::default(),
        }
    }

    /// The file, when dead letters are kept in one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Records `events` as rejected for `reason`: logs each one and appends it to the file.
    /// Returns how many lines were written to the file.
    ///
    /// # Errors
    /// When the file cannot be written; the events have been logged regardless, so the
    /// caller moves on (a broken disk must not block the queue either).
    pub async fn write(
        &self,
        events: &[&Arc<Envelope>],
        reason: &str,
    ) -> Result<usize, DeadLetterError> {
        for e in events {
            error!(sink = %self.sink, kind = %e.kind, object = %e.display_name(),
                uid = %e.uid, resource_version = %e.resource_version,
                reason = %reason, dead_letter = ?self.path, "event rejected by sink; dead-lettered");
        }
        let Some(path) = &self.path else {
            return Ok(0);
        };
        if events.is_empty() {
            return Ok(0);
        }
        let buf = self.render(events, reason);
        let io = |source| DeadLetterError::Io {
            path: path.clone(),
            source,
        };
        let _guard = self.lock.lock().await;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let mut builder = tokio::fs::DirBuilder::new();
            builder.recursive(true).mode(0o700);
            builder.create(dir).await.map_err(io)?;
        }
        let size = tokio::fs::metadata(path)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if size > 0 && size + buf.len() as u64 > self.max_bytes {
            rotate(path, self.max_files).await.map_err(io)?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .await
            .map_err(io)?;
        file.write_all(&buf).await.map_err(io)?;
        // The events are acknowledged right after this returns; the lines must be on disk.
        file.sync_data().await.map_err(io)?;
        Ok(events.len())
    }

    fn render(&self, events: &[&Arc<Envelope>], reason: &str) -> Vec<u8> {
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut buf = Vec::new();
        for e in events {
            let event: &RawValue =
                serde_json::from_slice(e.to_json()).expect("an envelope is valid JSON");
            let line = Line {
                time: time.clone(),
                sink: &self.sink,
                reason,
                event,
            };
            serde_json::to_writer(&mut buf, &line).expect("a dead-letter line serializes");
            buf.push(b'\n');
        }
        buf
    }
}

/// `<file>` → `<file>.1` → … → `<file>.<keep>`; the oldest is deleted.
async fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    let numbered = |i: u32| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    };
    if keep == 0 {
        return tokio::fs::remove_file(path).await;
    }
    match tokio::fs::remove_file(numbered(keep)).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    for i in (1..keep).rev() {
        match tokio::fs::rename(numbered(i), numbered(i + 1)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    tokio::fs::rename(path, numbered(1)).await
}

/// `<sink>.jsonl`, with anything that could leave the directory replaced by `_`.
fn file_name(sink: &str) -> String {
    let safe: String = sink
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{}.jsonl", safe.trim_start_matches('.'))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::{Value, json};

    use super::*;
    use crate::event::{EnvelopeBuilder, Op};

    fn event(name: &str) -> Arc<Envelope> {
        Arc::new(EnvelopeBuilder::test_configmaps().build(
            Op::Add,
            Arc::new(
                json!({"metadata": {"name": name, "namespace": "ns", "uid": name,
                    "resourceVersion": "1"}}),
            ),
            None,
            None,
            Instant::now(),
        ))
    }

    #[tokio::test]
    async fn rejected_events_become_one_line_each_below_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetter::resolve("hook", None, Some(dir.path()));
        let (a, b) = (event("a"), event("b"));
        assert_eq!(dl.write(&[&a, &b], "HTTP 400").await.unwrap(), 2);
        let text = std::fs::read_to_string(dir.path().join("deadletter/hook.jsonl")).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["sink"], "hook");
        assert_eq!(lines[0]["reason"], "HTTP 400");
        assert_eq!(lines[1]["event"]["name"], "b");
        assert!(humantime::parse_rfc3339(lines[0]["time"].as_str().unwrap()).is_ok());
    }

    #[tokio::test]
    async fn a_configured_path_wins_over_the_state_dir_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custom/dl.jsonl");
        let config = DeadLetterConfig {
            path: Some(path.clone()),
            ..DeadLetterConfig::default()
        };
        let dl = DeadLetter::resolve("hook", Some(&config), Some(&dir.path().join("state")));
        dl.write(&[&event("a")], "x").await.unwrap();
        dl.write(&[&event("b")], "y").await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        assert!(!dir.path().join("state").exists());
    }

    #[tokio::test]
    async fn dead_letter_files_are_private_and_rotate_at_their_size_limit() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl/hook.jsonl");
        let one_line = {
            let dl = DeadLetter::resolve("hook", None, Some(&dir.path().join("probe")));
            dl.render(&[&event("a")], "x").len() as u64
        };
        let config = DeadLetterConfig {
            path: Some(path.clone()),
            max_bytes: one_line * 2,
            max_files: 2,
        };
        let dl = DeadLetter::resolve("hook", Some(&config), None);
        for name in ["a", "b", "c", "d", "e", "f", "g"] {
            dl.write(&[&event(name)], "x").await.unwrap();
        }
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let names = |p: &Path| -> Vec<String> {
            read_lines(p)
                .iter()
                .map(|l| l["event"]["name"].as_str().unwrap().to_string())
                .collect()
        };
        // Two lines per file; .1 and .2 kept, the oldest (a, b) gone.
        assert_eq!(names(&path), ["g"]);
        assert_eq!(names(&dir.path().join("dl/hook.jsonl.1")), ["e", "f"]);
        assert_eq!(names(&dir.path().join("dl/hook.jsonl.2")), ["c", "d"]);
        assert!(!dir.path().join("dl/hook.jsonl.3").exists());
        assert_eq!(mode(&dir.path().join("dl/hook.jsonl.1")), 0o600);
    }

    fn read_lines(p: &Path) -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn without_state_dir_or_path_dead_letters_are_only_logged() {
        let dl = DeadLetter::resolve("hook", None, None);
        assert!(dl.path().is_none());
        assert_eq!(dl.write(&[&event("a")], "x").await.unwrap(), 0);
    }
}
