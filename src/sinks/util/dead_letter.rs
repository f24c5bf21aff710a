//! Dead letters: events a sink rejected for good, kept as JSON lines so nobody has to dig
//! them out of logs, and so a poison event never blocks the queue behind it.
//!
//! One line per rejected event:
//! `{"time":"…","sink":"hook","reason":"HTTP 400 …","event":{<envelope>}}`.
//! The file is `<stateDir>/deadletter/<sink>.jsonl` unless the sink sets `deadLetter.path`.
//! Without either, dead letters are only logged (at error level).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::AsyncWriteExt;
use tracing::error;

use crate::event::Envelope;

/// `deadLetter:` of a sink entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeadLetterConfig {
    /// JSONL file receiving rejected events; default `<stateDir>/deadletter/<sink>.jsonl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
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
        Self {
            sink: sink.to_string(),
            path,
            lock: Arc::default(),
        }
    }

    /// Log-only dead letters without the start-up complaint, for sinks that never reject
    /// (stdout) and for drivers started without a sink config (tests).
    pub fn log_only(sink: &str) -> Self {
        Self {
            sink: sink.to_string(),
            path: None,
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
            tokio::fs::create_dir_all(dir).await.map_err(io)?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
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
        Arc::new(
            EnvelopeBuilder {
                cluster: "c".into(),
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                plural: "configmaps".into(),
                source: "v1/ConfigMap".into(),
                include_old: false,
            }
            .build(
                Op::Add,
                Arc::new(
                    json!({"metadata": {"name": name, "namespace": "ns", "uid": name,
                    "resourceVersion": "1"}}),
                ),
                None,
                None,
                Instant::now(),
            ),
        )
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
        };
        let dl = DeadLetter::resolve("hook", Some(&config), Some(&dir.path().join("state")));
        dl.write(&[&event("a")], "x").await.unwrap();
        dl.write(&[&event("b")], "y").await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        assert!(!dir.path().join("state").exists());
    }

    #[tokio::test]
    async fn without_state_dir_or_path_dead_letters_are_only_logged() {
        let dl = DeadLetter::resolve("hook", None, None);
        assert!(dl.path().is_none());
        assert_eq!(dl.write(&[&event("a")], "x").await.unwrap(), 0);
    }
}
