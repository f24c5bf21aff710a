//! RFC 6902 diffs between two states of an object, and the "only ignored paths changed" test.

use json_patch::{Patch, PatchOperation};
use serde_json::Value;

use super::transform::PointerGlob;

/// The JSON Patch that turns `old` into `new`.
pub fn diff(old: &Value, new: &Value) -> Patch {
    json_patch::diff(old, new)
}

/// The path a patch operation writes to.
pub fn op_path(op: &PatchOperation) -> String {
    match op {
        PatchOperation::Add(o) => o.path.to_string(),
        PatchOperation::Remove(o) => o.path.to_string(),
        PatchOperation::Replace(o) => o.path.to_string(),
        PatchOperation::Move(o) => o.path.to_string(),
        PatchOperation::Copy(o) => o.path.to_string(),
        PatchOperation::Test(o) => o.path.to_string(),
    }
}

/// True when every operation of `patch` touches only paths matched by `ignored`
/// (an empty patch counts as "nothing to emit" too).
pub fn only_ignored_changes(patch: &Patch, ignored: &[PointerGlob]) -> bool {
    patch.0.iter().all(|op| {
        let path = op_path(op);
        ignored.iter().any(|g| g.matches_prefix_of(&path))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn applying_the_diff_to_old_gives_new() {
        let old = json!({"a": 1, "b": [1, 2, 3], "c": {"d": "x"}});
        let new = json!({"a": 2, "b": [1, 3], "c": {"e": "y"}, "f": null});
        let p = diff(&old, &new);
        let mut doc = old.clone();
        json_patch::patch(&mut doc, &p).unwrap();
        assert_eq!(doc, new);
    }

    #[test]
    fn resource_version_only_changes_are_ignored() {
        let old = json!({"metadata": {"resourceVersion": "1", "name": "a"}});
        let new = json!({"metadata": {"resourceVersion": "2", "name": "a"}});
        let ignored = vec![PointerGlob::parse("/metadata/resourceVersion").unwrap()];
        assert!(only_ignored_changes(&diff(&old, &new), &ignored));
        let new2 = json!({"metadata": {"resourceVersion": "2", "name": "b"}});
        assert!(!only_ignored_changes(&diff(&old, &new2), &ignored));
    }
}
