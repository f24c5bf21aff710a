//! Snapshots on demand: the cache's current state re-emitted as reads (`POST /snapshot`).
//!
//! Each object is read **through the informer's processing order**: under the lock that live
//! changes take on their way from the cache to the handlers. A read therefore reflects every
//! live change handed on before it and precedes every later one, and one object's events keep
//! one order all the way to each sink (and Kafka partition). That is Debezium's watermarking
//! guarantee — a live change of an object the snapshot has not reached yet supersedes the
//! snapshot's read of it — obtained without watermark events, because the cache is the one
//! serialization point of live changes.
//!
//! Live changes keep flowing in between reads: the lock is taken per object. A read is an
//! emission like any other: the object's emitted state becomes the state read, so the next
//! update's patch and `before` start from it, and it is recorded as delivered only once
//! acknowledged.

use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::SharedInformer;
use crate::event::object;
use crate::event::{Doc, SnapshotMark};

/// Which of an informer's objects a snapshot reads.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    /// Only this namespace; `None`: all the informer caches.
    pub namespace: Option<String>,
    /// Only objects whose labels match.
    pub labels: Option<kubesim::selector::LabelSelector>,
}

impl SnapshotFilter {
    fn matches(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| object::namespace(obj) == Some(ns))
            && self.labels.as_ref().is_none_or(|s| s.matches_object(obj))
    }

    /// Cheap pre-selection on the cache key (`namespace/name`).
    fn may_match_key(&self, key: &str) -> bool {
        match &self.namespace {
            Some(ns) => key
                .split_once('/')
                .is_some_and(|(key_ns, _)| key_ns == ns.as_str()),
            None => true,
        }
    }
}

impl SharedInformer {
    /// True when some handler receives this informer's changes (it forwards).
    pub fn has_handlers(&self) -> bool {
        !self.handlers().is_empty()
    }

    /// Re-emits the current state of the objects `filter` selects as reads marked `first` …
    /// `last` (see the module doc); returns how many were read. Objects deleted meanwhile
    /// are skipped; objects created meanwhile arrive as live adds. Stops early (without a
    /// `last`) when `cancel` fires.
    pub async fn snapshot(&self, filter: &SnapshotFilter, cancel: &CancellationToken) -> usize {
        let mut keys: Vec<String> = self
            .store()
            .keys()
            .into_iter()
            .filter(|k| filter.may_match_key(k))
            .collect();
        keys.sort();
        let mut read = 0usize;
        let mut emitted: Vec<usize> = Vec::new();
        let mut ended = false;
        let mut i = 0;
        while i < keys.len() && !cancel.is_cancelled() {
            let held = self.hold().await;
            let Some(obj) = self.current_matching(&keys[i], filter) else {
                drop(held);
                i += 1;
                continue;
            };
            // The read is last when no later object of the snapshot is still there. Looking
            // ahead under the same lock keeps the answer true when the read is handed on.
            let next =
                (i + 1..keys.len()).find(|&j| self.current_matching(&keys[j], filter).is_some());
            let mark = match (read, next) {
                (_, None) => SnapshotMark::Last,
                (0, Some(_)) => SnapshotMark::First,
                _ => SnapshotMark::True,
            };
            self.read_once(&keys[i], &obj, mark).await;
            drop(held);
            read += 1;
            emitted.push(i);
            ended = next.is_none();
            i = next.unwrap_or(keys.len());
        }
        // The object promised as next was deleted before it was read, and nothing after it
        // remains: the last object still there that was read is read again, as the last.
        if !ended && !cancel.is_cancelled() {
            let _held = self.hold().await;
            if let Some((k, obj)) = emitted
                .iter()
                .rev()
                .find_map(|&k| self.current_matching(&keys[k], filter).map(|o| (k, o)))
            {
                self.read_once(&keys[k], &obj, SnapshotMark::Last).await;
                read += 1;
            }
        }
        read
    }

    fn current_matching(&self, key: &str, filter: &SnapshotFilter) -> Option<Arc<Value>> {
        self.store()
            .get(key)
            .map(|e| e.current)
            .filter(|o| filter.matches(o))
    }

    /// Hands a read to the handlers; the state read becomes the emitted state.
    async fn read_once(&self, key: &str, obj: &Arc<Value>, mark: SnapshotMark) {
        if self.store().get(key).is_some_and(|e| e.emitted.is_some()) {
            self.store().update(key.to_string(), obj, false);
        }
        // The next change is attributed against the state read.
        self.attribute(key, false);
        self.emit_read(&Doc::new(obj.clone()), mark, false).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use json_patch::Patch;
    use serde_json::json;

    use super::*;
    use crate::informer::{Entry, Handler};

    #[derive(Default)]
    struct Reads(Mutex<Vec<(String, String, SnapshotMark)>>);

    impl Reads {
        /// (cache key, mark) of every read so far.
        fn marks(&self) -> Vec<(String, SnapshotMark)> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|r| (r.0.clone(), r.2))
                .collect()
        }
    }

    #[async_trait]
    impl Handler for Reads {
        async fn on_add(&self, _: &Arc<Doc>, _: bool) {}
        async fn on_update(&self, _: &Arc<Doc>, _: &Arc<Doc>, _: Patch) {}
        async fn on_delete(&self, _: &Arc<Doc>, _: crate::informer::Gone<'_>) {}
        async fn on_read(&self, obj: &Arc<Doc>, mark: SnapshotMark, _: bool) {
            self.0.lock().unwrap().push((
                object::cache_key(obj),
                object::resource_version(obj).to_string(),
                mark,
            ));
        }
    }

    fn cm(ns: &str, name: &str, rv: &str, app: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns,
            "uid": format!("u-{ns}-{name}"), "resourceVersion": rv, "labels": {"app": app}}})
    }

    fn informer_with(objects: &[Value]) -> (Arc<SharedInformer>, Arc<Reads>) {
        let informer = crate::informer::testing_informer();
        for o in objects {
            informer.store().insert(
                object::cache_key(o),
                Entry {
                    current: Arc::new(o.clone()),
                    emitted: None,
                },
            );
        }
        let reads = Arc::new(Reads::default());
        informer.add_handler(reads.clone());
        (informer, reads)
    }

    #[tokio::test]
    async fn a_snapshot_reads_every_selected_object_between_first_and_last() {
        let (informer, reads) = informer_with(&[
            cm("a", "x", "1", "web"),
            cm("a", "y", "2", "db"),
            cm("a", "z", "3", "web"),
            cm("b", "x", "4", "web"),
        ]);
        assert_eq!(
            informer
                .snapshot(&SnapshotFilter::default(), &CancellationToken::new())
                .await,
            4
        );
        let marks: Vec<SnapshotMark> = reads.0.lock().unwrap().iter().map(|r| r.2).collect();
        use SnapshotMark::*;
        assert_eq!(marks, vec![First, True, True, Last]);

        reads.0.lock().unwrap().clear();
        let filter = SnapshotFilter {
            namespace: Some("a".into()),
            labels: Some(kubesim::selector::LabelSelector::parse("app=web").unwrap()),
        };
        assert_eq!(
            informer.snapshot(&filter, &CancellationToken::new()).await,
            2
        );
        assert_eq!(
            reads.marks(),
            vec![("a/x".into(), First), ("a/z".into(), Last)]
        );
    }

    /// Deletes `victim` from the cache when the first read is handed on (as a live delete
    /// between two reads would).
    struct DeleteOnFirstRead(Arc<SharedInformer>, &'static str, Arc<Reads>);

    #[async_trait]
    impl Handler for DeleteOnFirstRead {
        async fn on_add(&self, _: &Arc<Doc>, _: bool) {}
        async fn on_update(&self, _: &Arc<Doc>, _: &Arc<Doc>, _: Patch) {}
        async fn on_delete(&self, _: &Arc<Doc>, _: crate::informer::Gone<'_>) {}
        async fn on_read(&self, obj: &Arc<Doc>, mark: SnapshotMark, _: bool) {
            if self.2.0.lock().unwrap().len() == 1 {
                self.0.store().remove(self.1);
            }
            let _ = (obj, mark);
        }
    }

    #[tokio::test]
    async fn when_the_object_after_a_read_vanishes_the_last_one_read_is_read_again_as_last() {
        let (informer, reads) =
            informer_with(&[cm("a", "x", "1", "web"), cm("a", "y", "2", "web")]);
        informer.add_handler(Arc::new(DeleteOnFirstRead(
            informer.clone(),
            "a/y",
            reads.clone(),
        )));
        assert_eq!(
            informer
                .snapshot(&SnapshotFilter::default(), &CancellationToken::new())
                .await,
            2
        );
        assert_eq!(
            reads.marks(),
            vec![
                ("a/x".into(), SnapshotMark::First),
                ("a/x".into(), SnapshotMark::Last)
            ]
        );
    }

    #[tokio::test]
    async fn a_single_read_is_last_and_an_empty_snapshot_reads_nothing() {
        let (informer, reads) = informer_with(&[cm("a", "x", "1", "web")]);
        assert_eq!(
            informer
                .snapshot(&SnapshotFilter::default(), &CancellationToken::new())
                .await,
            1
        );
        assert_eq!(reads.0.lock().unwrap()[0].2, SnapshotMark::Last);
        let none = SnapshotFilter {
            namespace: Some("nope".into()),
            labels: None,
        };
        assert_eq!(informer.snapshot(&none, &CancellationToken::new()).await, 0);
    }

    #[tokio::test]
    async fn a_read_becomes_the_emitted_state_the_next_patch_starts_from() {
        let (informer, _reads) = informer_with(&[]);
        let emitted = cm("a", "x", "1", "web");
        let current = cm("a", "x", "2", "web");
        informer.store().insert(
            "a/x".into(),
            Entry {
                current: Arc::new(current.clone()),
                emitted: Some(Arc::new(emitted)),
            },
        );
        informer
            .snapshot(&SnapshotFilter::default(), &CancellationToken::new())
            .await;
        let base = informer.store().base_json("a/x").unwrap();
        assert_eq!(base, serde_json::to_vec(&current).unwrap());
    }
}
