//! The delivered-state store: for each object, the state every sink has acknowledged.
//!
//! It is what "downstream has seen". It is written only after acknowledgement, and read once
//! at start: each informer's cache is seeded from it, so the first list is compared with what
//! was delivered instead of being emitted wholesale (no duplicate flood on restart, deletes that
//! happened while the agent was down are noticed).
//!
//! Storage is redb: an embedded, pure-Rust, ACID key-value store with copy-on-write B-trees, so
//! a SIGKILL or power loss mid-write leaves the last committed transaction intact, and there is
//! no server to run. Keys are `<informer key>\0<namespace/name>`, values the object's JSON.
//!
//! The objects are stored as emitted, so redacted; the store file (0600) and the directory
//! (0700 when the agent creates it) are private to the agent's user all the same. The
//! directory also keeps the redaction key ([`RedactionKey`]).

mod key;
mod writer;

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use key::{KEY_FILE, KeyOrigin, RedactionKey};
pub use writer::StateWriter;

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Marks a store written since redaction is decided by resource. Stores without it were
/// written by builds that forwarded a Secret's last-applied-configuration (plaintext) and
/// keyed hashes with the cluster name; they are discarded, not migrated.
const REDACTION_MARK: &str = "by-resource-1";
const FILE_NAME: &str = "delivered.redb";
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");

/// `state:` in the config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StateConfig {
    /// Directory of the delivered-state store (and dead letters). Without it, every start
    /// re-emits every object as an add and nothing is remembered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

/// Why the state store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory or file cannot be created or read.
    #[error("state directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a readable store (corrupted, or not ours).
    #[error(
        "state store {path} is unreadable: {message}; move it away or start with --reset-state \
         (every object is then sent again as an add)"
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the store said.
        message: String,
    },
    /// Another process has the store open (another lookout with the same `state.dir`).
    #[error(
        "state store {path} is in use by another process (another lookout with the same state.dir?)"
    )]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// Written by an incompatible version.
    #[error(
        "state store {path} has format {found}, this lookout reads format {FORMAT_VERSION}; \
         move it away or start with --reset-state (every object is then sent again as an add)"
    )]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// The format found.
        found: String,
    },
    /// A read or write failed while running.
    #[error("state store: {0}")]
    Store(String),
}

/// Creates `dir` (and its parents) as 0700 when missing; an existing directory (a volume
/// mount) keeps its mode.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StateError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Creates `path` empty with mode 0600 when missing, and narrows an existing file to 0600.
fn create_private_file(path: &Path) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    let mode = file.metadata().map_err(io)?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    Ok(())
}

fn remove(path: &Path) -> Result<(), StateError> {
    std::fs::remove_file(path).map_err(|source| StateError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// True when the store at `path` carries [`REDACTION_MARK`]; a store that cannot be read
/// counts as marked here, so that opening it reports what is wrong instead of deleting it.
fn has_redaction_mark(path: &Path) -> bool {
    let Ok(db) = Database::open(path) else {
        return true;
    };
    let Ok(tx) = db.begin_read() else {
        return true;
    };
    match tx.open_table(META) {
        Ok(t) => match t.get("redaction") {
            Ok(Some(v)) => v.value() == REDACTION_MARK,
            Ok(None) => false,
            Err(_) => true,
        },
        Err(redb::TableError::TableDoesNotExist(_)) => false,
        Err(_) => true,
    }
}

fn store_err(e: impl std::fmt::Display) -> StateError {
    StateError::Store(e.to_string())
}

/// One change to the delivered state.
#[derive(Debug)]
pub enum StateWrite {
    /// The object as delivered.
    Put {
        /// Informer key.
        source: Arc<str>,
        /// `namespace/name`.
        key: String,
        /// The delivered object.
        object: Arc<Value>,
    },
    /// The object's delete was delivered.
    Delete {
        /// Informer key.
        source: Arc<str>,
        /// `namespace/name`.
        key: String,
    },
}

/// The store.
pub struct StateStore {
    db: Database,
    path: PathBuf,
}

fn object_key(source: &str, key: &str) -> String {
    format!("{source}\0{key}")
}

impl StateStore {
    /// Opens (or creates) the store in `dir`. With `reset`, an existing store is deleted first.
    ///
    /// # Errors
    /// [`StateError`] with a recovery hint when the store is unreadable or incompatible;
    /// nothing is ever wiped without `reset`.
    pub fn open(dir: &Path, reset: bool) -> Result<Self, StateError> {
        create_private_dir(dir)?;
        let path = dir.join(FILE_NAME);
        if reset && path.exists() {
            remove(&path)?;
            tracing::warn!(path = %path.display(), "state reset: every object will be sent as an add");
        }
        let fresh = !path.exists();
        if !fresh && !has_redaction_mark(&path) {
            // Written before redaction by resource: it may hold plaintext (a Secret's
            // last-applied-configuration). Removed whole so the plaintext leaves the disk.
            remove(&path)?;
            tracing::warn!(path = %path.display(),
                "the delivered state was recorded by a build that did not redact Secrets' \
                 last-applied-configuration; discarded: every object will be sent as an add");
            return Self::open(dir, false);
        }
        create_private_file(&path)?;
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StateError::Locked { path: path.clone() },
            e => StateError::Unreadable {
                path: path.clone(),
                message: e.to_string(),
            },
        })?;
        let store = Self { db, path };
        store.check_format(fresh)?;
        Ok(store)
    }

    fn check_format(&self, fresh: bool) -> Result<(), StateError> {
        let unreadable = |e: &dyn std::fmt::Display| StateError::Unreadable {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let found = {
            let tx = self.db.begin_read().map_err(|e| unreadable(&e))?;
            match tx.open_table(META) {
                Ok(t) => t
                    .get("format")
                    .map_err(|e| unreadable(&e))?
                    .map(|v| v.value().to_string()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(unreadable(&e)),
            }
        };
        match found {
            Some(v) if v == FORMAT_VERSION.to_string() => Ok(()),
            Some(v) => Err(StateError::Incompatible {
                path: self.path.clone(),
                found: v,
            }),
            None if fresh => {
                let tx = self.db.begin_write().map_err(|e| unreadable(&e))?;
                {
                    let mut meta = tx.open_table(META).map_err(|e| unreadable(&e))?;
                    meta.insert("format", FORMAT_VERSION.to_string().as_str())
                        .map_err(|e| unreadable(&e))?;
                    meta.insert("writer", concat!("lookout ", env!("CARGO_PKG_VERSION")))
                        .map_err(|e| unreadable(&e))?;
                    meta.insert("redaction", REDACTION_MARK)
                        .map_err(|e| unreadable(&e))?;
                    tx.open_table(OBJECTS).map_err(|e| unreadable(&e))?;
                }
                tx.commit().map_err(|e| unreadable(&e))?;
                Ok(())
            }
            None => Err(StateError::Incompatible {
                path: self.path.clone(),
                found: "none (no format marker)".into(),
            }),
        }
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every delivered object of one informer, as `(namespace/name, object)`.
    pub fn load(&self, source: &str) -> Result<Vec<(String, Value)>, StateError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let table = tx.open_table(OBJECTS).map_err(store_err)?;
        let start = object_key(source, "");
        let end = format!("{source}\u{1}");
        let mut out = Vec::new();
        for row in table
            .range(start.as_str()..end.as_str())
            .map_err(store_err)?
        {
            let (k, v) = row.map_err(store_err)?;
            let key = k.value()[start.len()..].to_string();
            let object: Value =
                serde_json::from_slice(v.value()).map_err(|e| StateError::Unreadable {
                    path: self.path.clone(),
                    message: format!("object {key}: {e}"),
                })?;
            out.push((key, object));
        }
        Ok(out)
    }

    /// Removes the objects of informers that are no longer configured (their deletes must not
    /// be emitted: nobody watches them any more). Returns how many were removed.
    pub fn retain_sources(&self, sources: &[String]) -> Result<usize, StateError> {
        let tx = self.db.begin_write().map_err(store_err)?;
        let mut removed = 0;
        {
            let mut table = tx.open_table(OBJECTS).map_err(store_err)?;
            let stale: Vec<String> = table
                .iter()
                .map_err(store_err)?
                .filter_map(|row| row.ok())
                .map(|(k, _)| k.value().to_string())
                .filter(|k| {
                    let source = k.split('\0').next().unwrap_or_default();
                    !sources.iter().any(|s| s == source)
                })
                .collect();
            for k in stale {
                table.remove(k.as_str()).map_err(store_err)?;
                removed += 1;
            }
        }
        tx.commit().map_err(store_err)?;
        Ok(removed)
    }

    /// Applies writes in one durable transaction.
    pub fn apply(&self, writes: &[StateWrite]) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(store_err)?;
        {
            let mut table = tx.open_table(OBJECTS).map_err(store_err)?;
            for w in writes {
                match w {
                    StateWrite::Put {
                        source,
                        key,
                        object,
                    } => {
                        let bytes = serde_json::to_vec(object.as_ref()).map_err(store_err)?;
                        table
                            .insert(object_key(source, key).as_str(), bytes.as_slice())
                            .map_err(store_err)?;
                    }
                    StateWrite::Delete { source, key } => {
                        table
                            .remove(object_key(source, key).as_str())
                            .map_err(store_err)?;
                    }
                }
            }
        }
        tx.commit().map_err(store_err)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn writes_survive_reopening_and_are_filed_per_informer() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = StateStore::open(dir.path(), false).unwrap();
            s.apply(&[
                StateWrite::Put {
                    source: "v1/Pod".into(),
                    key: "ns/a".into(),
                    object: Arc::new(json!({"a": 1})),
                },
                StateWrite::Put {
                    source: "v1/Pod".into(),
                    key: "ns/b".into(),
                    object: Arc::new(json!({"b": 1})),
                },
                StateWrite::Put {
                    source: "v1/Node".into(),
                    key: "n1".into(),
                    object: Arc::new(json!({"n": 1})),
                },
            ])
            .unwrap();
            s.apply(&[StateWrite::Delete {
                source: "v1/Pod".into(),
                key: "ns/b".into(),
            }])
            .unwrap();
        }
        let s = StateStore::open(dir.path(), false).unwrap();
        assert_eq!(
            s.load("v1/Pod").unwrap(),
            vec![("ns/a".to_string(), json!({"a": 1}))]
        );
        assert_eq!(s.load("v1/Node").unwrap().len(), 1);
        assert_eq!(s.retain_sources(&["v1/Pod".into()]).unwrap(), 1);
        assert!(s.load("v1/Node").unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_store_is_an_error_until_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"this is not a database at all").unwrap();
        let err = StateStore::open(dir.path(), false).err().expect("refused");
        assert!(err.to_string().contains("--reset-state"), "{err}");
        assert!(dir.path().join(FILE_NAME).exists(), "never wiped silently");
        StateStore::open(dir.path(), true).expect("reset recovers");
    }

    #[test]
    fn the_store_file_and_a_new_directory_are_private_to_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("new-state");
        StateStore::open(&state, false).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state.join(FILE_NAME)), 0o600);
        assert_eq!(mode(&state), 0o700);
        // A store left 0644 by an older build is narrowed.
        std::fs::set_permissions(
            state.join(FILE_NAME),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        StateStore::open(&state, false).unwrap();
        assert_eq!(mode(&state.join(FILE_NAME)), 0o600);
    }

    #[test]
    fn a_store_recorded_before_redaction_by_resource_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = StateStore::open(dir.path(), false).unwrap();
            s.apply(&[StateWrite::Put {
                source: "v1/Secret".into(),
                key: "ns/a".into(),
                object: Arc::new(json!({"plaintext": "hunter2"})),
            }])
            .unwrap();
            let tx = s.db.begin_write().unwrap();
            tx.open_table(META).unwrap().remove("redaction").unwrap();
            tx.commit().unwrap();
        }
        let s = StateStore::open(dir.path(), false).unwrap();
        assert!(s.load("v1/Secret").unwrap().is_empty());
        drop(s);
        let bytes = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        assert!(
            !bytes.windows(7).any(|w| w == b"hunter2"),
            "plaintext left on disk"
        );
        // Marked now: the next open keeps what is written.
        let s = StateStore::open(dir.path(), false).unwrap();
        s.apply(&[StateWrite::Put {
            source: "v1/Pod".into(),
            key: "ns/p".into(),
            object: Arc::new(json!({"a": 1})),
        }])
        .unwrap();
        drop(s);
        assert_eq!(
            StateStore::open(dir.path(), false)
                .unwrap()
                .load("v1/Pod")
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn an_incompatible_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = StateStore::open(dir.path(), false).unwrap();
            let tx = s.db.begin_write().unwrap();
            tx.open_table(META).unwrap().insert("format", "99").unwrap();
            tx.commit().unwrap();
        }
        let err = StateStore::open(dir.path(), false).err().expect("refused");
        assert!(matches!(err, StateError::Incompatible { .. }), "{err}");
    }
}
