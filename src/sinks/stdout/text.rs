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
