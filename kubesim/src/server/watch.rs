//! Watch streams: one `{"type":..,"object":..}` line per event, written by
//! concatenating pre-serialized object bytes; replayed from the store's
//! history so a slow watcher costs no memory beyond the bounded history.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::table::{IncludeObject, table};
use crate::error::ApiError;
use crate::kinds::KindId;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{EventType, HistEvent, Store, StoredObj};

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Synthetic ADDED for every current object, then changes.
    Initial,
    /// Changes after this revision.
    From(u64),
}

/// Everything a watch stream filters and paces by.
pub(crate) struct WatchSpec {
    pub kind: KindId,
    pub kind_name: String,
    pub api_version: String,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub labels: Option<LabelSelector>,
    pub fields: Option<FieldSelector>,
    pub start: Start,
    pub bookmarks: bool,
    /// Send the `k8s.io/initial-events-end` bookmark after the initial ADDED events.
    pub initial_end: bool,
    pub timeout: Duration,
    pub bookmark_interval: Duration,
    pub table: Option<IncludeObject>,
}

enum Phase {
    Error(ApiError),
    Initial(std::vec::IntoIter<Arc<StoredObj>>),
    InitialEnd,
    Live,
    Done,
}

struct W {
    store: Arc<Store>,
    spec: WatchSpec,
    cursor: u64,
    phase: Phase,
    rv_rx: watch::Receiver<u64>,
    drop_rx: watch::Receiver<u64>,
    freeze_rx: watch::Receiver<u64>,
    /// The freeze generation when the watch started; a newer one silences it.
    opened_at: u64,
    deadline: Instant,
    next_bookmark: Instant,
}

/// Batches stay around this size so one frame carries many events without huge allocations.
const FRAME_BYTES: usize = 256 * 1024;
const BATCH_EVENTS: usize = 2048;

type Item = Result<Frame<Bytes>, std::io::Error>;

/// The body stream of a watch. The drop receiver ends it abruptly (an I/O error resets the
/// connection); the freeze receiver silences it for good without ending it (a half-open
/// connection: the client keeps waiting for bytes that never come).
pub(crate) fn stream(
    store: Arc<Store>,
    spec: WatchSpec,
    drop_rx: watch::Receiver<u64>,
    freeze_rx: watch::Receiver<u64>,
) -> impl Stream<Item = Item> + Send {
    let now = Instant::now();
    let mut rv_rx = store.subscribe();
    rv_rx.mark_unchanged();
    let (cursor, phase) = match spec.start {
        Start::Initial => {
            let (rv, items) = store.all(spec.kind, spec.ns.as_deref());
            (rv, Phase::Initial(items.into_iter()))
        }
        Start::From(rv) => {
            let compacted = store.compacted_rv();
            if rv < compacted {
                (rv, Phase::Error(ApiError::too_old(rv, compacted)))
            } else {
                (rv, Phase::Live)
            }
        }
    };
    let opened_at = *freeze_rx.borrow();
    let w = W {
        opened_at,
        deadline: now + spec.timeout,
        next_bookmark: now + spec.bookmark_interval,
        store,
        spec,
        cursor,
        phase,
        rv_rx,
        drop_rx,
        freeze_rx,
    };
    futures::stream::unfold(w, |mut w| async move {
        let item = w.next_frame().await?;
        Some((item, w))
    })
}

impl W {
    async fn next_frame(&mut self) -> Option<Item> {
        loop {
            if *self.freeze_rx.borrow() != self.opened_at {
                // Nothing reaches the client any more, not even the end of the stream.
                return std::future::pending().await;
            }
            if self.drop_rx.has_changed().unwrap_or(false) {
                self.phase = Phase::Done;
                return Some(Err(dropped_error()));
            }
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return None,
                Phase::Error(e) => {
                    let mut buf = BytesMut::new();
                    line(
                        &mut buf,
                        "ERROR",
                        &serde_json::to_vec(&e.to_status()).unwrap_or_default(),
                    );
                    return Some(Ok(Frame::data(buf.freeze())));
                }
                Phase::Initial(mut it) => {
                    let mut buf = BytesMut::new();
                    let mut more = false;
                    for o in it.by_ref() {
                        if self.selects(&o) {
                            self.write_obj(&mut buf, "ADDED", &o);
                        }
                        if buf.len() >= FRAME_BYTES {
                            more = true;
                            break;
                        }
                    }
                    self.phase = if more {
                        Phase::Initial(it)
                    } else if self.spec.initial_end {
                        Phase::InitialEnd
                    } else {
                        Phase::Live
                    };
                    if !buf.is_empty() {
                        return Some(Ok(Frame::data(buf.freeze())));
                    }
                }
                Phase::InitialEnd => {
                    self.phase = Phase::Live;
                    return Some(Ok(Frame::data(self.bookmark(true))));
                }
                Phase::Live => {
                    self.phase = Phase::Live;
                    let now = Instant::now();
                    if now >= self.deadline {
                        self.phase = Phase::Done;
                        return None;
                    }
                    if self.spec.bookmarks && now >= self.next_bookmark {
                        self.next_bookmark = now + self.spec.bookmark_interval;
                        return Some(Ok(Frame::data(self.bookmark(false))));
                    }
                    self.rv_rx.borrow_and_update();
                    match self.store.events_after(self.cursor, BATCH_EVENTS) {
                        // Fell out of the history (too slow, or compacted under us): close, as the
                        // watch cache does; the client re-watches and learns about the 410 then.
                        Err(_) => {
                            self.phase = Phase::Done;
                            return None;
                        }
                        Ok((evs, seen)) => {
                            self.cursor = seen;
                            let mut buf = BytesMut::new();
                            for e in &evs {
                                self.write_event(&mut buf, e);
                                // A frame stays near FRAME_BYTES: a backlog of 2048 Pods is
                                // 12 MB, and growing a buffer that large page-faults fresh
                                // memory on every frame (a fifth of a benchmark's CPU).
                                if buf.len() >= FRAME_BYTES {
                                    self.cursor = e.rv;
                                    break;
                                }
                            }
                            if !buf.is_empty() {
                                return Some(Ok(Frame::data(buf.freeze())));
                            }
                            if !evs.is_empty() {
                                continue;
                            }
                        }
                    }
                    let bookmark_at = if self.spec.bookmarks {
                        self.next_bookmark
                    } else {
                        self.deadline
                    };
                    let dropped = tokio::select! {
                        _ = self.drop_rx.changed() => true,
                        // Back to the top of the loop, where a frozen stream goes silent.
                        _ = self.freeze_rx.changed() => false,
                        _ = self.rv_rx.changed() => false,
                        _ = tokio::time::sleep_until(bookmark_at.min(self.deadline)) => false,
                    };
                    if dropped {
                        self.phase = Phase::Done;
                        return Some(Err(dropped_error()));
                    }
                }
            }
        }
    }

    fn selects(&self, o: &StoredObj) -> bool {
        if self.spec.ns.as_deref().is_some_and(|n| n != o.namespace()) {
            return false;
        }
        if self.spec.name.as_deref().is_some_and(|n| n != o.name()) {
            return false;
        }
        self.spec
            .labels
            .as_ref()
            .is_none_or(|l| l.matches_object(&o.value))
            && self
                .spec
                .fields
                .as_ref()
                .is_none_or(|f| f.matches(&o.value, &self.spec.kind_name))
    }

    fn write_event(&self, buf: &mut BytesMut, e: &HistEvent) {
        if e.kind != self.spec.kind {
            return;
        }
        let filtered = self.spec.labels.is_some() || self.spec.fields.is_some();
        if !filtered {
            if self.selects(&e.obj) {
                self.write_obj(buf, e.etype.as_str(), &e.obj);
            }
            return;
        }
        let now = self.selects(&e.obj);
        let before = e.prev.as_ref().is_some_and(|p| self.selects(p));
        match (e.etype, before, now) {
            (EventType::Added, _, true) => self.write_obj(buf, "ADDED", &e.obj),
            (EventType::Deleted, _, true) => self.write_obj(buf, "DELETED", &e.obj),
            (EventType::Modified, true, true) => self.write_obj(buf, "MODIFIED", &e.obj),
            (EventType::Modified, false, true) => self.write_obj(buf, "ADDED", &e.obj),
            (EventType::Modified, true, false) => {
                // Stopped matching: the client sees it deleted, as the previous state at the new revision.
                let mut v = e.prev.as_ref().expect("checked above").value.clone();
                v["metadata"]["resourceVersion"] = json!(e.rv.to_string());
                let bytes = serde_json::to_vec(&v).unwrap_or_default();
                self.write_raw(buf, "DELETED", &v, &bytes);
            }
            _ => {}
        }
    }

    fn write_obj(&self, buf: &mut BytesMut, etype: &str, o: &StoredObj) {
        self.write_raw(buf, etype, &o.value, &o.bytes);
    }

    fn write_raw(&self, buf: &mut BytesMut, etype: &str, value: &Value, bytes: &[u8]) {
        match self.spec.table {
            None => line(buf, etype, bytes),
            Some(inc) => {
                let rv = value
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let t = table(&[value], rv, None, inc);
                line(buf, etype, &serde_json::to_vec(&t).unwrap_or_default());
            }
        }
    }

    fn bookmark(&self, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": self.cursor.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.spec.kind_name, "apiVersion": self.spec.api_version, "metadata": meta});
        let mut buf = BytesMut::new();
        line(
            &mut buf,
            "BOOKMARK",
            &serde_json::to_vec(&obj).unwrap_or_default(),
        );
        buf.freeze()
    }
}

fn dropped_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "kubesim: watches dropped",
    )
}

fn line(buf: &mut BytesMut, etype: &str, obj: &[u8]) {
    buf.reserve(obj.len() + 32);
    buf.extend_from_slice(b"{\"type\":\"");
    buf.extend_from_slice(etype.as_bytes());
    buf.extend_from_slice(b"\",\"object\":");
    buf.extend_from_slice(obj);
    buf.extend_from_slice(b"}\n");
}
