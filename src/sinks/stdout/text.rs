//! The human `text` format: one line per change.

use json_patch::PatchOperation;
use serde_json::Value;

use crate::event::diff::op_path;
use crate::event::{Envelope, Op};

/// How many changed paths a line shows before summarizing.
const MAX_PATHS: usize = 8;
/// Values longer than this are shortened.
const MAX_VALUE: usize = 60;

/// `12:00:01.123 update apps/v1 Deployment default/web rv=42: /spec/replicas 1 → 3`
pub fn render_text(e: &Envelope) -> String {
    let time = e.time_rfc3339();
    let mut line = format!(
        "{} {:<6} {} {} {} rv={}",
        time,
        e.op.as_str(),
        e.api_version,
        e.kind,
        e.display_name(),
        e.resource_version
    );
    if e.initial_list {
        line.push_str(" (initial list)");
    } else if let Some(mark) = e.snapshot {
        line.push_str(&format!(" (snapshot: {})", mark.as_str()));
    }
    if let Some(by) = e.changed_by.as_deref().filter(|b| !b.is_empty()) {
        let names: Vec<&str> = by.iter().map(|w| &*w.manager).collect();
        line.push_str(&format!(" by {}", names.join(", ")));
    }
    if e.final_state_unknown {
        line.push_str(" (final state unknown)");
    }
    if e.op == Op::Update
        && let Some(patch) = &e.patch
    {
        let ops: Vec<&PatchOperation> = patch
            .0
            .iter()
            .filter(|op| op_path(op) != "/metadata/resourceVersion")
            .collect();
        line.push(':');
        for op in ops.iter().take(MAX_PATHS) {
            let path = op_path(op);
            let old = e.old.as_deref().and_then(|o| o.pointer(&path));
            let change = match op {
                PatchOperation::Add(a) => format!("{} (added)", short(&a.value)),
                PatchOperation::Remove(_) => {
                    format!("{} → (removed)", old.map_or("?".into(), short))
                }
                PatchOperation::Replace(r) => {
                    format!("{} → {}", old.map_or("?".into(), short), short(&r.value))
                }
                _ => "(moved)".into(),
            };
            line.push_str(&format!(" {path} {change};"));
        }
        if ops.len() > MAX_PATHS {
            line.push_str(&format!(" … and {} more", ops.len() - MAX_PATHS));
        }
    }
    line
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > MAX_VALUE {
        let cut: String = s.chars().take(MAX_VALUE).collect();
        format!("{cut}…")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use serde_json::json;

    use super::*;
    use crate::event::changed_by::Managers;
    use crate::event::{EnvelopeBuilder, SnapshotMark};

    #[test]
    fn a_line_names_the_writers_and_the_snapshot_a_read_belongs_to() {
        let b = EnvelopeBuilder::for_test("v1", "ConfigMap");
        let obj = Arc::new(
            json!({"metadata": {"name": "a", "namespace": "n", "resourceVersion": "2",
            "managedFields": [{"manager": "kubectl-edit", "operation": "Update"}]}}),
        );
        let mut e = b.build(Op::Add, obj.clone(), None, None, Instant::now());
        e.changed_by = Some(Managers::of(&obj).changed_since(None));
        assert!(
            render_text(&e).ends_with("n/a rv=2 by kubectl-edit"),
            "{}",
            render_text(&e)
        );
        let mut read = b.build(Op::Add, obj, None, None, Instant::now());
        read.snapshot = Some(SnapshotMark::Last);
        assert!(
            render_text(&read).ends_with("rv=2 (snapshot: last)"),
            "{}",
            render_text(&read)
        );
    }
}
