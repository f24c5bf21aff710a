//! The delivered-state store: for each object and each sink, the state the sink is known to
//! hold (its *base*), and which sinks may hold something newer (in-flight markers).
//!
//! It is what "downstream has seen". Only the acknowledgement tracker
//! ([`crate::delivery::Tracker`]) writes it, through the [`StateWriter`]; it is read when this
//! replica starts forwarding, to compare the informers' caches with what every sink holds (no
//! duplicate flood on restart; changes and deletes made while the agent was down are sent).
//!
//! Storage is redb: an embedded, pure-Rust, ACID key-value store with copy-on-write B-trees, so
//! a SIGKILL or power loss mid-write leaves the last committed transaction intact, and there is
//! no server to run. Three tables:
//!
//! - `objects`: `<informer key>\0<namespace/name>` → the object's JSON: the base of every sink
//!   that has no row of its own in `sink_bases` (usually all of them: sinks agree whenever
//!   nothing is owed, so an object is stored once).
//! - `sink_bases`: `<sink>\0<informer key>\0<namespace/name>` → the base of one sink that
//!   differs from `objects` (an empty value: the sink holds nothing of the object).
//! - `owing`: `<sink>\0<informer key>\0<namespace/name>` → the identities (a JSON array, one
//!   per uid) of what the sink was, or was about to be, sent beyond its base without
//!   acknowledging it: an object deleted and re-created while the sink owed has several.
//!
//! Format 1 (one shared state per object) is format 2 without the last two tables; it is
//! upgraded in place on open.
//!
//! The objects are stored as emitted, so redacted; the store file (0600) and the directory
//! (0700 when the agent creates it) are private to the agent's user all the same. The
//! directory also keeps the redaction key ([`RedactionKey`]).

mod key;
mod writer;

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use key::{KEY_FILE, KeyOrigin, RedactionKey};
pub use writer::{Recorder, StateWriter};

/// The on-disk format this build writes (it also reads, and upgrades, format 1).
pub const FORMAT_VERSION: u32 = 2;
/// Marks a store written since redaction is decided by resource. Stores without it were
/// written by builds that forwarded a Secret's last-applied-configuration (plaintext) and
/// keyed hashes with the cluster name; they are discarded, not migrated.
const REDACTION_MARK: &str = "by-resource-1";
const FILE_NAME: &str = "delivered.redb";
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const SINK_BASES: TableDefinition<&str, &[u8]> = TableDefinition::new("sink_bases");
const OWING: TableDefinition<&str, &[u8]> = TableDefinition::new("owing");

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

/// One change to the delivered state, as the acknowledgement tracker decides it.
#[derive(Debug)]
pub enum StateOp {
    /// Sink `sink` is about to be sent a change of the object newer than its base: the
    /// identity joins the sink's in-flight marker (one per uid). Must be on disk before the
    /// sink receives the change (registration `reg` is reported durable then).
    Owing {
        /// Registration id (increasing).
        reg: u64,
        /// Index into the configured sinks.
        sink: usize,
        /// Informer key.
        source: Arc<str>,
        /// `namespace/name`.
        key: Arc<str>,
        /// The object's identity (`apiVersion`, `kind`, `metadata` name, namespace, uid,
        /// resourceVersion): enough for a delete if the object is gone at the next start.
        identity: Arc<Value>,
    },
    /// Sink `sink` holds `state` of the object (`None`: nothing, or its delete) and owes
    /// nothing of it: its base moves there and its in-flight marker is cleared.
    Base {
        /// Index into the configured sinks.
        sink: usize,
        /// Informer key.
        source: Arc<str>,
        /// `namespace/name`.
        key: Arc<str>,
        /// The state, as its compact JSON (serde_json's encoding, as the cache and the
        /// envelope have it): written as it is.
        state: Option<Bytes>,
    },
}

/// What the store says one sink holds of one object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkBase {
    /// The state the sink acknowledged last (`None`: nothing, or a delete).
    pub base: Option<Value>,
    /// Not empty when the sink may hold a newer state than `base` (a change was in flight):
    /// the identity of each incarnation (uid) of the object it may hold.
    pub owing: Vec<Value>,
}

/// The store.
pub struct StateStore {
    db: Database,
    path: PathBuf,
}

fn object_key(source: &str, key: &str) -> String {
    format!("{source}\0{key}")
}

fn sink_key(sink: &str, source: &str, key: &str) -> String {
    format!("{sink}\0{source}\0{key}")
}

/// The `[start, end)` range of keys below `prefix` (which ends with `\0`).
fn prefix_range(prefix: &str) -> (String, String) {
    let end = format!("{}\u{1}", &prefix[..prefix.len() - 1]);
    (prefix.to_string(), end)
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
            // Format 1 is format 2 with every sink at the shared state and nothing in flight.
            Some(v) if v == "1" => {
                let tx = self.db.begin_write().map_err(|e| unreadable(&e))?;
                {
                    let mut meta = tx.open_table(META).map_err(|e| unreadable(&e))?;
                    meta.insert("format", FORMAT_VERSION.to_string().as_str())
                        .map_err(|e| unreadable(&e))?;
                    tx.open_table(SINK_BASES).map_err(|e| unreadable(&e))?;
                    tx.open_table(OWING).map_err(|e| unreadable(&e))?;
                }
                tx.commit().map_err(|e| unreadable(&e))?;
                tracing::info!(path = %self.path.display(), "state store upgraded from format 1 to 2");
                Ok(())
            }
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
                    tx.open_table(SINK_BASES).map_err(|e| unreadable(&e))?;
                    tx.open_table(OWING).map_err(|e| unreadable(&e))?;
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

    /// The shared state of every object of one informer, as `(namespace/name, object)`
    /// (what every sink without a row of its own holds).
    pub fn load(&self, source: &str) -> Result<Vec<(String, Value)>, StateError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let table = tx.open_table(OBJECTS).map_err(store_err)?;
        let (start, end) = prefix_range(&object_key(source, ""));
        let mut out = Vec::new();
        for row in table
            .range(start.as_str()..end.as_str())
            .map_err(store_err)?
        {
            let (k, v) = row.map_err(store_err)?;
            let key = k.value()[start.len()..].to_string();
            out.push((key.clone(), self.parse(&key, v.value())?));
        }
        Ok(out)
    }

    fn parse(&self, key: &str, bytes: &[u8]) -> Result<Value, StateError> {
        serde_json::from_slice(bytes).map_err(|e| StateError::Unreadable {
            path: self.path.clone(),
            message: format!("object {key}: {e}"),
        })
    }

    /// A consistent view of what `sinks` hold of one informer's objects.
    pub fn baseline(&self, source: &str, sinks: &[String]) -> Result<Baseline<'_>, StateError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        Ok(Baseline {
            store: self,
            source: source.to_string(),
            sinks: sinks.to_vec(),
            objects: tx.open_table(OBJECTS).map_err(store_err)?,
            bases: tx.open_table(SINK_BASES).map_err(store_err)?,
            owing: tx.open_table(OWING).map_err(store_err)?,
        })
    }

    /// Removes the rows of informers that are no longer configured (their deletes must not
    /// be emitted: nobody watches them any more) and of sinks that are no longer configured.
    /// Returns how many rows were removed.
    pub fn retain(&self, sources: &[String], sinks: &[String]) -> Result<usize, StateError> {
        let tx = self.db.begin_write().map_err(store_err)?;
        let mut removed = 0;
        {
            let known_source = |s: &str| sources.iter().any(|k| k == s);
            let known_sink = |s: &str| sinks.iter().any(|k| k == s);
            let mut objects = tx.open_table(OBJECTS).map_err(store_err)?;
            removed += remove_where(&mut objects, |k| {
                !known_source(k.split('\0').next().unwrap_or_default())
            })?;
            for table in [SINK_BASES, OWING] {
                let mut t = tx.open_table(table).map_err(store_err)?;
                removed += remove_where(&mut t, |k| {
                    let mut parts = k.split('\0');
                    let sink = parts.next().unwrap_or_default();
                    let source = parts.next().unwrap_or_default();
                    !known_sink(sink) || !known_source(source)
                })?;
            }
        }
        tx.commit().map_err(store_err)?;
        Ok(removed)
    }

    /// Applies the tracker's writes in one durable transaction; `sinks` names the sink
    /// indices in them.
    pub fn apply(&self, ops: &[StateOp], sinks: &[String]) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(store_err)?;
        {
            let mut objects = tx.open_table(OBJECTS).map_err(store_err)?;
            let mut bases = tx.open_table(SINK_BASES).map_err(store_err)?;
            let mut owing = tx.open_table(OWING).map_err(store_err)?;
            for op in ops {
                match op {
                    StateOp::Owing {
                        sink,
                        source,
                        key,
                        identity,
                        ..
                    } => {
                        let at = sink_key(&sinks[*sink], source, key);
                        let mut ids: Vec<Value> = match owing.get(at.as_str()).map_err(store_err)? {
                            Some(v) => serde_json::from_slice(v.value()).unwrap_or_default(),
                            None => Vec::new(),
                        };
                        if !ids
                            .iter()
                            .any(|i| i["metadata"]["uid"] == identity["metadata"]["uid"])
                        {
                            ids.push((**identity).clone());
                        }
                        let bytes = serde_json::to_vec(&ids).map_err(store_err)?;
                        owing
                            .insert(at.as_str(), bytes.as_slice())
                            .map_err(store_err)?;
                    }
                    StateOp::Base {
                        sink,
                        source,
                        key,
                        state,
                    } => {
                        owing
                            .remove(sink_key(&sinks[*sink], source, key).as_str())
                            .map_err(store_err)?;
                        set_base(
                            &mut objects,
                            &mut bases,
                            sinks,
                            *sink,
                            source,
                            key,
                            state.as_deref(),
                        )?;
                    }
                }
            }
        }
        tx.commit().map_err(store_err)
    }
}

type Table<'t> = redb::Table<'t, &'static str, &'static [u8]>;

fn remove_where(table: &mut Table<'_>, stale: impl Fn(&str) -> bool) -> Result<usize, StateError> {
    let keys: Vec<String> = table
        .iter()
        .map_err(store_err)?
        .filter_map(|row| row.ok())
        .map(|(k, _)| k.value().to_string())
        .filter(|k| stale(k))
        .collect();
    for k in &keys {
        table.remove(k.as_str()).map_err(store_err)?;
    }
    Ok(keys.len())
}

/// Sets one sink's base and keeps the object stored once when every sink agrees: the shared
/// row holds the common state, `sink_bases` only the sinks that differ from it.
fn set_base(
    objects: &mut Table<'_>,
    bases: &mut Table<'_>,
    sinks: &[String],
    sink: usize,
    source: &str,
    key: &str,
    state: Option<&[u8]>,
) -> Result<(), StateError> {
    let okey = object_key(source, key);
    let shared: Option<Vec<u8>> = objects
        .get(okey.as_str())
        .map_err(store_err)?
        .map(|v| v.value().to_vec());
    let mut rows: Vec<Option<Vec<u8>>> = Vec::with_capacity(sinks.len());
    for name in sinks {
        rows.push(
            bases
                .get(sink_key(name, source, key).as_str())
                .map_err(store_err)?
                .map(|v| v.value().to_vec()),
        );
    }
    // A row with an empty value: the sink holds nothing although the shared row has a state.
    let logical = |t: usize| -> Option<&[u8]> {
        if t == sink {
            return state;
        }
        match &rows[t] {
            Some(r) if r.is_empty() => None,
            Some(r) => Some(r.as_slice()),
            None => shared.as_deref(),
        }
    };
    let all_agree = (0..sinks.len()).all(|t| logical(t) == state);
    if all_agree {
        match state {
            Some(bytes) => objects
                .insert(okey.as_str(), bytes)
                .map(drop)
                .map_err(store_err)?,
            None => objects.remove(okey.as_str()).map(drop).map_err(store_err)?,
        }
        for (name, row) in sinks.iter().zip(&rows) {
            if row.is_some() {
                bases
                    .remove(sink_key(name, source, key).as_str())
                    .map_err(store_err)?;
            }
        }
        return Ok(());
    }
    let own = sink_key(&sinks[sink], source, key);
    if state == shared.as_deref() {
        bases.remove(own.as_str()).map_err(store_err)?;
    } else {
        let bytes: &[u8] = state.unwrap_or_default();
        bases.insert(own.as_str(), bytes).map_err(store_err)?;
    }
    Ok(())
}

/// What the configured sinks hold of one informer's objects, read in one transaction (see
/// [`StateStore::baseline`]).
pub struct Baseline<'s> {
    /// For error messages (the file's path).
    store: &'s StateStore,
    /// The informer key.
    source: String,
    /// The configured sinks, in order.
    sinks: Vec<String>,
    /// The shared states.
    objects: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    /// The sinks' own states, where they differ.
    bases: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    /// The in-flight markers.
    owing: redb::ReadOnlyTable<&'static str, &'static [u8]>,
}

impl Baseline<'_> {
    /// True when nothing of this informer was ever recorded for any sink (first start).
    pub fn is_empty(&self) -> Result<bool, StateError> {
        Ok(self.keys()?.is_empty())
    }

    /// Every `namespace/name` some sink holds or may hold.
    pub fn keys(&self) -> Result<std::collections::BTreeSet<String>, StateError> {
        let mut keys = std::collections::BTreeSet::new();
        let (start, end) = prefix_range(&object_key(&self.source, ""));
        for row in self
            .objects
            .range(start.as_str()..end.as_str())
            .map_err(store_err)?
        {
            let (k, _) = row.map_err(store_err)?;
            keys.insert(k.value()[start.len()..].to_string());
        }
        for sink in &self.sinks {
            let (start, end) = prefix_range(&sink_key(sink, &self.source, ""));
            for table in [&self.bases, &self.owing] {
                for row in table
                    .range(start.as_str()..end.as_str())
                    .map_err(store_err)?
                {
                    let (k, _) = row.map_err(store_err)?;
                    keys.insert(k.value()[start.len()..].to_string());
                }
            }
        }
        Ok(keys)
    }

    /// What each configured sink (in order) holds of the object at `key`.
    pub fn get(&self, key: &str) -> Result<Vec<SinkBase>, StateError> {
        let shared = match self
            .objects
            .get(object_key(&self.source, key).as_str())
            .map_err(store_err)?
        {
            Some(v) => Some(self.store.parse(key, v.value())?),
            None => None,
        };
        let mut out = Vec::with_capacity(self.sinks.len());
        for sink in &self.sinks {
            let at = sink_key(sink, &self.source, key);
            let base = match self.bases.get(at.as_str()).map_err(store_err)? {
                Some(v) if v.value().is_empty() => None,
                Some(v) => Some(self.store.parse(key, v.value())?),
                None => shared.clone(),
            };
            let owing = match self.owing.get(at.as_str()).map_err(store_err)? {
                Some(v) => {
                    serde_json::from_slice(v.value()).map_err(|e| StateError::Unreadable {
                        path: self.store.path.clone(),
                        message: format!("in-flight marker of {key}: {e}"),
                    })?
                }
                None => Vec::new(),
            };
            out.push(SinkBase { base, owing });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn base(sink: usize, source: &str, key: &str, state: Option<Value>) -> StateOp {
        StateOp::Base {
            sink,
            source: source.into(),
            key: key.into(),
            state: state.map(|v| Bytes::from(serde_json::to_vec(&v).unwrap())),
        }
    }

    fn sinks(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn writes_survive_reopening_and_are_filed_per_informer() {
        let dir = tempfile::tempdir().unwrap();
        let one = sinks(&["out"]);
        {
            let s = StateStore::open(dir.path(), false).unwrap();
            s.apply(
                &[
                    base(0, "v1/Pod", "ns/a", Some(json!({"a": 1}))),
                    base(0, "v1/Pod", "ns/b", Some(json!({"b": 1}))),
                    base(0, "v1/Node", "n1", Some(json!({"n": 1}))),
                ],
                &one,
            )
            .unwrap();
            s.apply(&[base(0, "v1/Pod", "ns/b", None)], &one).unwrap();
        }
        let s = StateStore::open(dir.path(), false).unwrap();
        assert_eq!(
            s.load("v1/Pod").unwrap(),
            vec![("ns/a".to_string(), json!({"a": 1}))]
        );
        assert_eq!(s.load("v1/Node").unwrap().len(), 1);
        assert_eq!(s.retain(&["v1/Pod".into()], &one).unwrap(), 1);
        assert!(s.load("v1/Node").unwrap().is_empty());
    }

    #[test]
    fn sinks_that_agree_share_one_row_and_a_sink_that_differs_gets_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let two = sinks(&["lake", "hook"]);
        let s = StateStore::open(dir.path(), false).unwrap();
        let v = |n: u32| Some(json!({"v": n}));
        s.apply(
            &[base(0, "cm", "ns/a", v(1)), base(1, "cm", "ns/a", v(1))],
            &two,
        )
        .unwrap();
        let rows = |s: &StateStore| {
            use redb::ReadableTableMetadata;
            let tx = s.db.begin_read().unwrap();
            let n = tx.open_table(SINK_BASES).unwrap().len().unwrap();
            let o = tx.open_table(OBJECTS).unwrap().len().unwrap();
            (o, n)
        };
        assert_eq!(rows(&s), (1, 0), "one shared row");
        // The lake moves on; the hook still has version 1 (it owes a change).
        s.apply(&[base(0, "cm", "ns/a", v(2))], &two).unwrap();
        let b = s.baseline("cm", &two).unwrap().get("ns/a").unwrap();
        assert_eq!(b[0].base, v(2));
        assert_eq!(b[1].base, v(1));
        assert_eq!(rows(&s), (1, 1));
        // The lake acknowledges a delete; then the hook catches up with it: one state again.
        s.apply(&[base(0, "cm", "ns/a", None)], &two).unwrap();
        let b = s.baseline("cm", &two).unwrap().get("ns/a").unwrap();
        assert_eq!((b[0].base.clone(), b[1].base.clone()), (None, v(1)));
        s.apply(&[base(1, "cm", "ns/a", None)], &two).unwrap();
        assert_eq!(rows(&s), (0, 0), "nothing left of a deleted object");
        assert!(s.baseline("cm", &two).unwrap().keys().unwrap().is_empty());
    }

    #[test]
    fn an_in_flight_marker_lasts_until_the_sink_has_a_base_again() {
        let dir = tempfile::tempdir().unwrap();
        let two = sinks(&["lake", "hook"]);
        let s = StateStore::open(dir.path(), false).unwrap();
        let identity = json!({"metadata": {"name": "a", "uid": "u1"}});
        s.apply(
            &[StateOp::Owing {
                reg: 1,
                sink: 1,
                source: "cm".into(),
                key: "ns/a".into(),
                identity: Arc::new(identity.clone()),
            }],
            &two,
        )
        .unwrap();
        let view = s.baseline("cm", &two).unwrap();
        assert_eq!(
            view.keys().unwrap().len(),
            1,
            "a marker alone names the object"
        );
        let b = view.get("ns/a").unwrap();
        assert_eq!(b[1].owing, vec![identity]);
        assert_eq!(b[0], SinkBase::default());
        drop(view);
        s.apply(&[base(1, "cm", "ns/a", Some(json!({"v": 1})))], &two)
            .unwrap();
        let b = s.baseline("cm", &two).unwrap().get("ns/a").unwrap();
        assert!(b[1].owing.is_empty());
        assert_eq!(b[1].base, Some(json!({"v": 1})));
        assert_eq!(b[0].base, None, "the lake holds nothing of it");
        assert_eq!(
            s.retain(&["cm".into()], &sinks(&["lake"])).unwrap(),
            1,
            "rows of a sink no longer configured go"
        );
    }

    #[test]
    fn an_object_re_created_while_in_flight_is_named_in_the_marker_under_each_uid() {
        let dir = tempfile::tempdir().unwrap();
        let one = sinks(&["hook"]);
        let s = StateStore::open(dir.path(), false).unwrap();
        let owing = |reg, uid: &str| StateOp::Owing {
            reg,
            sink: 0,
            source: "cm".into(),
            key: "ns/a".into(),
            identity: Arc::new(json!({"metadata": {"name": "a", "uid": uid}})),
        };
        s.apply(&[owing(1, "u1"), owing(2, "u2"), owing(3, "u1")], &one)
            .unwrap();
        let b = s.baseline("cm", &one).unwrap().get("ns/a").unwrap();
        let uids: Vec<&Value> = b[0].owing.iter().map(|i| &i["metadata"]["uid"]).collect();
        assert_eq!(uids, vec!["u1", "u2"]);
    }

    #[test]
    fn a_format_1_store_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = StateStore::open(dir.path(), false).unwrap();
            s.apply(
                &[base(0, "cm", "ns/a", Some(json!({"v": 1})))],
                &sinks(&["x"]),
            )
            .unwrap();
            let tx = s.db.begin_write().unwrap();
            tx.open_table(META).unwrap().insert("format", "1").unwrap();
            tx.delete_table(SINK_BASES).unwrap();
            tx.delete_table(OWING).unwrap();
            tx.commit().unwrap();
        }
        let s = StateStore::open(dir.path(), false).unwrap();
        let b = s
            .baseline("cm", &sinks(&["x", "y"]))
            .unwrap()
            .get("ns/a")
            .unwrap();
        assert_eq!(b[0].base, Some(json!({"v": 1})));
        assert_eq!(
            b[1].base,
            Some(json!({"v": 1})),
            "every sink at the shared state"
        );
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
        let one = sinks(&["out"]);
        {
            let s = StateStore::open(dir.path(), false).unwrap();
            s.apply(
                &[base(
                    0,
                    "v1/Secret",
                    "ns/a",
                    Some(json!({"plaintext": "hunter2"})),
                )],
                &one,
            )
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
        s.apply(&[base(0, "v1/Pod", "ns/p", Some(json!({"a": 1})))], &one)
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
