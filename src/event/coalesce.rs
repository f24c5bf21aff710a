//! Merging two queued changes of one object into one (see `sinks::util::queue`).

use std::sync::Arc;

use super::{Envelope, Op, SnapshotMark, changed_by, diff};

/// The result of merging a newer change into an older queued one.
#[derive(Debug)]
pub enum Merged {
    /// One new envelope replaces both.
    Into(Arc<Envelope>),
    /// The newer envelope replaces the older as it is.
    Keep,
}

/// Merges `next` into `prev` (the queued change of the same uid). The result describes the
/// change from what the sink last received to `next`.
///
/// An add then a delete is the delete, not nothing: the add may re-send an object the sink
/// already holds (a restart after a crash re-sends what was in flight, a snapshot reads what
/// the sink has), and only the delete tells it the object is gone. A sink may therefore get
/// the delete of an object it never saw.
pub fn merge(prev: &Arc<Envelope>, next: &Arc<Envelope>) -> Merged {
    // A snapshot's first and last reads bound it for consumers: a merge keeps them.
    let bound = prev
        .snapshot
        .filter(|m| matches!(m, SnapshotMark::First | SnapshotMark::Last));
    match (prev.op, next.op) {
        // The sink never saw the object (or saw it before this read): it gets one add (or
        // read) of the newest state.
        (Op::Add, Op::Update) => {
            let mut e = next.rederive(Op::Add, None, None);
            e.initial_list = prev.initial_list;
            e.snapshot = prev.snapshot;
            e.changed_by = if prev.is_read() {
                None
            } else {
                merged_changed_by(prev, next)
            };
            Merged::Into(Arc::new(e))
        }
        (Op::Add, Op::Delete) if bound.is_some() => {
            let mut e = next.rederive(Op::Delete, None, None);
            e.snapshot = bound;
            Merged::Into(Arc::new(e))
        }
        // A later snapshot's read in the middle of it replaces an earlier snapshot's first or
        // last read, and keeps that bound.
        (Op::Add, Op::Add) if bound.is_some() && next.snapshot == Some(SnapshotMark::True) => {
            let mut e = next.rederive(Op::Add, None, None);
            e.initial_list = next.initial_list;
            e.snapshot = bound;
            Merged::Into(Arc::new(e))
        }
        // One update from the state before `prev` to the newest.
        (Op::Update, Op::Update) => {
            let base = prev.old.clone().expect("updates keep their old object");
            let patch = diff::diff(&base, &next.object);
            let mut e = next.rederive(Op::Update, Some(base), Some(patch));
            e.changed_by = merged_changed_by(prev, next);
            Merged::Into(Arc::new(e))
        }
        _ => Merged::Keep,
    }
}

/// Both changes' writers, when either was attributed.
fn merged_changed_by(
    prev: &Envelope,
    next: &Envelope,
) -> Option<std::sync::Arc<[changed_by::ManagerEntry]>> {
    match (&prev.changed_by, &next.changed_by) {
        (Some(a), Some(b)) => Some(changed_by::merge(a, b)),
        (a, b) => b.clone().or_else(|| a.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::{Value, json};

    use super::*;
    use crate::event::{Doc, EnvelopeBuilder};

    fn builder() -> EnvelopeBuilder {
        EnvelopeBuilder::test_configmaps()
    }

    fn obj(v: u32) -> Arc<Value> {
        Arc::new(
            json!({"metadata": {"name": "a", "uid": "u", "resourceVersion": v.to_string()},
            "data": {"v": v}}),
        )
    }

    fn update(from: u32, to: u32) -> Arc<Envelope> {
        let patch = diff::diff(&obj(from), &obj(to));
        Arc::new(builder().build(
            Op::Update,
            obj(to),
            Some(obj(from)),
            Some(patch),
            Instant::now(),
        ))
    }

    #[test]
    fn two_updates_become_one_patch_from_the_first_base() {
        let merged = match merge(&update(1, 2), &update(2, 3)) {
            Merged::Into(e) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(merged.op, Op::Update);
        let mut doc = (*obj(1)).clone();
        json_patch::patch(&mut doc, merged.patch.as_ref().unwrap()).unwrap();
        assert_eq!(doc, *obj(3));
        assert_eq!(merged.old.as_deref().map(|o| &**o), Some(&*obj(1)));
    }

    #[test]
    fn add_then_update_is_an_add_of_the_newest_state() {
        let add = Arc::new(builder().build(Op::Add, obj(1), None, None, Instant::now()));
        match merge(&add, &update(1, 2)) {
            Merged::Into(e) => {
                assert_eq!(e.op, Op::Add);
                assert_eq!(**e.object, *obj(2));
                assert!(e.patch.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    fn read(rv: u32, mark: SnapshotMark, initial: bool) -> Arc<Envelope> {
        let mut e = builder().build(Op::Add, obj(rv), None, None, Instant::now());
        e.snapshot = Some(mark);
        e.initial_list = initial;
        Arc::new(e)
    }

    #[test]
    fn a_read_merged_with_an_update_is_a_read_of_the_newest_state_with_its_mark() {
        match merge(&read(1, SnapshotMark::Last, false), &update(1, 2)) {
            Merged::Into(e) => {
                assert!(e.is_read());
                assert_eq!(e.snapshot, Some(SnapshotMark::Last));
                assert_eq!(**e.object, *obj(2));
                assert!(e.changed_by.is_none(), "a read names no writer");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_delete_after_a_snapshot_read_reaches_the_sink_and_keeps_the_snapshot_bound() {
        let del = Arc::new(builder().build(Op::Delete, obj(2), None, None, Instant::now()));
        // The sink has the object: the delete replaces the read.
        assert!(matches!(
            merge(&read(1, SnapshotMark::True, false), &del),
            Merged::Keep
        ));
        for initial in [true, false] {
            match merge(&read(1, SnapshotMark::Last, initial), &del) {
                Merged::Into(e) => {
                    assert_eq!(e.op, Op::Delete);
                    assert_eq!(e.snapshot, Some(SnapshotMark::Last));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_later_snapshot_read_keeps_the_bound_of_the_earlier_read_it_replaces() {
        match merge(
            &read(1, SnapshotMark::Last, false),
            &read(2, SnapshotMark::True, false),
        ) {
            Merged::Into(e) => {
                assert_eq!(e.snapshot, Some(SnapshotMark::Last));
                assert_eq!(**e.object, *obj(2));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            merge(
                &read(1, SnapshotMark::True, false),
                &read(2, SnapshotMark::True, false)
            ),
            Merged::Keep
        ));
    }

    #[test]
    fn merged_updates_name_the_writers_of_both() {
        use crate::event::changed_by::Managers;
        let by = |m: &str, t: &str| {
            Managers::of(&json!({"metadata": {"managedFields": [
                {"manager": m, "operation": "Update", "time": t}]}}))
            .changed_since(None)
        };
        let mut a = (*update(1, 2)).rederive(Op::Update, Some(Doc::new(obj(1))), None);
        a.changed_by = Some(by("kubectl-edit", "2024-05-01T10:00:00Z"));
        let mut b = (*update(2, 3)).rederive(Op::Update, Some(Doc::new(obj(2))), None);
        b.changed_by = Some(by("kubelet", "2024-05-01T10:00:01Z"));
        match merge(&Arc::new(a), &Arc::new(b)) {
            Merged::Into(e) => {
                let names: Vec<&str> = e
                    .changed_by
                    .as_deref()
                    .unwrap()
                    .iter()
                    .map(|m| &*m.manager)
                    .collect();
                assert_eq!(names, vec!["kubelet", "kubectl-edit"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_delete_after_an_add_or_an_update_keeps_the_delete() {
        let add = Arc::new(builder().build(Op::Add, obj(1), None, None, Instant::now()));
        let del = Arc::new(builder().build(Op::Delete, obj(2), None, None, Instant::now()));
        assert!(matches!(merge(&add, &del), Merged::Keep));
        assert!(matches!(merge(&update(1, 2), &del), Merged::Keep));
    }
}
