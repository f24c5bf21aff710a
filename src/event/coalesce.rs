//! Merging two queued changes of one object into one (see `sinks::util::queue`).

use std::sync::Arc;

use super::{Envelope, Op, diff};

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
/// already holds (a restart after a crash re-sends what was in flight), and only the delete
/// tells it the object is gone. A sink may therefore get the delete of an object it never saw.
pub fn merge(prev: &Arc<Envelope>, next: &Arc<Envelope>) -> Merged {
    match (prev.op, next.op) {
        // The sink never saw the object: it gets one add of the newest state.
        (Op::Add, Op::Update) => {
            let mut e = next.rederive(Op::Add, None, None);
            e.initial_list = prev.initial_list;
            Merged::Into(Arc::new(e))
        }
        // One update from the state before `prev` to the newest.
        (Op::Update, Op::Update) => {
            let base = prev.old.clone().expect("updates keep their old object");
            let patch = diff::diff(&base, &next.object);
            Merged::Into(Arc::new(next.rederive(Op::Update, Some(base), Some(patch))))
        }
        _ => Merged::Keep,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::{Value, json};

    use super::*;
    use crate::event::EnvelopeBuilder;

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
        assert_eq!(merged.old.as_deref(), Some(&*obj(1)));
    }

    #[test]
    fn add_then_update_is_an_add_of_the_newest_state() {
        let add = Arc::new(builder().build(Op::Add, obj(1), None, None, Instant::now()));
        match merge(&add, &update(1, 2)) {
            Merged::Into(e) => {
                assert_eq!(e.op, Op::Add);
                assert_eq!(*e.object, *obj(2));
                assert!(e.patch.is_none());
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
