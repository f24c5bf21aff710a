//! PATCH semantics: JSON merge patch, JSON patch, strategic merge patch (merge
//! patch plus merge-by-key for the well-known lists) and server-side apply with
//! field-manager ownership tracking in `metadata.managedFields`.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::time::now_rfc3339;

/// The patch flavours the API server accepts, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchKind {
    /// Picks the flavour from a Content-Type header value.
    pub fn from_content_type(ct: &str) -> Option<PatchKind> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchKind::Apply)
            }
            _ => None,
        }
    }
}

/// Applies an RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Applies an RFC 6902 JSON patch given as raw JSON.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    json_patch::patch(target, &ops).map_err(|e| {
        ApiError::new(
            422,
            "Invalid",
            format!("the server rejected our request due to an error in our request: {e}"),
        )
    })
}

/// The merge key of a list field under strategic merge patch, if the field merges by key.
fn merge_key(field: &str, sample: &[Value]) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "hostAliases" => Some("ip"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "ports" => {
            if sample.iter().any(|p| p.get("containerPort").is_some()) {
                Some("containerPort")
            } else {
                Some("port")
            }
        }
        _ => None,
    }
}

/// Lists of scalars that strategic merge treats as sets.
fn is_set_list(field: &str) -> bool {
    field == "finalizers"
}

/// Applies a strategic merge patch (the subset kubectl apply/edit/patch produce).
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    smp_object(target, patch);
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn smp_object(target: &mut Value, patch: &Value) {
    let Some(pm) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if pm.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(patch);
        return;
    }
    if !target.is_object() {
        *target = json!({});
    }
    let tm = target.as_object_mut().expect("just made an object");
    if let Some(keep) = pm.get("$retainKeys").and_then(Value::as_array) {
        let keep: BTreeSet<&str> = keep.iter().filter_map(Value::as_str).collect();
        tm.retain(|k, _| keep.contains(k.as_str()));
    }
    for (k, pv) in pm {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(del)) = (tm.get_mut(field), pv.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        match pv {
            Value::Null => {
                tm.remove(k);
            }
            Value::Object(_) => {
                if pv.get("$patch").and_then(Value::as_str) == Some("delete") {
                    tm.remove(k);
                    continue;
                }
                smp_object(tm.entry(k.clone()).or_insert(Value::Null), pv);
            }
            Value::Array(items) => {
                let cur = tm
                    .get(k)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if let Some(key) =
                    merge_key(k, items).filter(|_| items.iter().all(Value::is_object))
                {
                    tm.insert(k.clone(), Value::Array(merge_by_key(cur, items, key)));
                } else if is_set_list(k) {
                    let mut out = cur;
                    for it in items {
                        if !out.contains(it) {
                            out.push(it.clone());
                        }
                    }
                    tm.insert(k.clone(), Value::Array(out));
                } else {
                    tm.insert(k.clone(), strip_directives(pv));
                }
            }
            _ => {
                tm.insert(k.clone(), pv.clone());
            }
        }
    }
}

fn merge_by_key(mut cur: Vec<Value>, patch: &[Value], key: &str) -> Vec<Value> {
    if patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return patch
            .iter()
            .filter(|p| p.get("$patch").is_none())
            .map(strip_directives)
            .collect();
    }
    for p in patch {
        let kv = p.get(key);
        let pos = kv.and_then(|kv| cur.iter().position(|c| c.get(key) == Some(kv)));
        if p.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = pos {
                cur.remove(i);
            }
            continue;
        }
        match pos {
            Some(i) => smp_object(&mut cur[i], p),
            None => cur.push(strip_directives(p)),
        }
    }
    cur
}

/// Parses an apply body: YAML (JSON is YAML too).
pub fn parse_apply_body(body: &[u8]) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    serde_yaml_ng::from_slice::<Value>(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

/// A leaf path in an object (lists are atomic leaves).
type FieldPath = Vec<String>;

fn leaves(v: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                prefix.push(k.clone());
                leaves(c, prefix, out);
                prefix.pop();
            }
        }
        _ => {
            out.insert(prefix.clone());
        }
    }
}

/// Fields an applied configuration sets (identity fields excluded: everyone "owns" those).
fn applied_fields(cfg: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    leaves(cfg, &mut Vec::new(), &mut out);
    out.retain(|p| {
        let s: Vec<&str> = p.iter().map(String::as_str).collect();
        !matches!(
            s.as_slice(),
            ["apiVersion"]
                | ["kind"]
                | ["metadata", "name"]
                | ["metadata", "namespace"]
                | ["metadata", "resourceVersion"]
                | ["metadata", "managedFields", ..]
                | ["metadata", "uid"]
                | ["metadata", "creationTimestamp"]
                | ["metadata", "generation"]
        )
    });
    out
}

/// `fieldsV1` tree (`{"f:spec":{"f:holderIdentity":{}}}`) from paths.
fn to_fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut cur = &mut root;
        for seg in p {
            cur = cur
                .entry(format!("f:{seg}"))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("fieldsV1 nodes are objects");
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value) -> BTreeSet<FieldPath> {
    fn walk(v: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        let m = match v.as_object() {
            Some(m) if !m.is_empty() => m,
            _ => {
                if !prefix.is_empty() {
                    out.insert(prefix.clone());
                }
                return;
            }
        };
        for (k, c) in m {
            if k == "." {
                continue;
            }
            // Only `f:` (field) keys are understood; `k:`/`v:`/`i:` list entries are owned as the whole list.
            let Some(name) = k.strip_prefix("f:") else {
                if !prefix.is_empty() {
                    out.insert(prefix.clone());
                }
                continue;
            };
            prefix.push(name.to_string());
            walk(c, prefix, out);
            prefix.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn get_path<'a>(v: &'a Value, p: &FieldPath) -> Option<&'a Value> {
    p.iter().try_fold(v, |cur, seg| cur.get(seg))
}

fn remove_path(v: &mut Value, p: &FieldPath) {
    let Some((last, parents)) = p.split_last() else {
        return;
    };
    let mut cur = v;
    for seg in parents {
        match cur.get_mut(seg) {
            Some(c) => cur = c,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

/// Deep merge for apply: maps merge recursively, everything else (lists included) replaces.
fn apply_merge(target: &mut Value, cfg: &Value) {
    match (target.as_object_mut(), cfg.as_object()) {
        (Some(t), Some(c)) => {
            for (k, v) in c {
                match t.get_mut(k) {
                    Some(tv) if tv.is_object() && v.is_object() => apply_merge(tv, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        _ => *target = cfg.clone(),
    }
}

fn dotted(p: &FieldPath) -> String {
    p.iter().map(|s| format!(".{s}")).collect()
}

/// Ownership after an `Update` operation (create, update, or a non-apply patch) by
/// `manager`, as the API server records it: the fields this write added or changed become
/// `manager`'s (taken from whoever owned them: updates never conflict), fields it removed are
/// nobody's, and the entry of (`manager`, `Update`, `subresource`) gets the current time.
/// A write that adds or changes nothing leaves `managedFields` as they were, so its time does
/// not advance. `new` is the object about to be stored; `current` the stored one (None: create).
pub fn record_update(
    current: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    api_version: &str,
) {
    let empty = json!({});
    let before = current.unwrap_or(&empty);
    let server_owned = |p: &FieldPath| {
        matches!(
            p.iter().map(String::as_str).collect::<Vec<_>>().as_slice(),
            [
                "metadata",
                "selfLink" | "deletionTimestamp" | "deletionGracePeriodSeconds"
            ]
        )
    };
    let changed: BTreeSet<FieldPath> = applied_fields(new)
        .into_iter()
        .filter(|p| !server_owned(p) && get_path(before, p) != get_path(new, p))
        .collect();
    let mut removed = applied_fields(before);
    removed.retain(|p| !server_owned(p) && get_path(new, p).is_none());
    let mut entries: Vec<Value> = before
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !changed.is_empty() {
        let touched = |p: &FieldPath| {
            changed
                .iter()
                .chain(&removed)
                .any(|c| c.starts_with(p) || p.starts_with(c))
        };
        let same_writer = |e: &Value| {
            e.get("manager").and_then(Value::as_str) == Some(manager)
                && e.get("operation").and_then(Value::as_str) == Some("Update")
                && e.get("subresource").and_then(Value::as_str) == subresource
        };
        let mut mine = BTreeSet::new();
        for e in entries.iter_mut() {
            let owned = e.get("fieldsV1").map(from_fields_v1).unwrap_or_default();
            if same_writer(e) {
                mine = owned;
                continue;
            }
            let kept: BTreeSet<FieldPath> = owned.into_iter().filter(|p| !touched(p)).collect();
            if e.get("fieldsV1").is_some() {
                e["fieldsV1"] = to_fields_v1(&kept);
            }
        }
        mine.retain(|p| !removed.contains(p));
        mine.extend(changed);
        entries.retain(|e| !same_writer(e));
        push_entry(
            &mut entries,
            manager,
            "Update",
            api_version,
            &mine,
            subresource,
        );
    }
    if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        if entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(entries));
        }
    }
}

/// Server-side apply of `cfg` by `manager` onto `current` (None: create).
///
/// Conflicts: a leaf the config sets to a different value than the object holds, owned by another
/// manager, is a 409 Conflict unless `force` (then ownership moves to `manager`). Fields `manager`
/// applied before but no longer sets are removed unless someone else owns them.
pub fn server_side_apply(
    current: Option<&Value>,
    cfg: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
) -> Result<Value, ApiError> {
    server_side_apply_to(current, cfg, manager, force, api_version, None)
}

/// [`server_side_apply`] to a subresource (`status`): the manager's entry for it is its own
/// (`subresource: status`), apart from its entry for the main resource.
pub fn server_side_apply_to(
    current: Option<&Value>,
    cfg: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    subresource: Option<&str>,
) -> Result<Value, ApiError> {
    let is_mine = |e: &Value| {
        e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Apply")
            && e.get("subresource").and_then(Value::as_str) == subresource
    };
    if !cfg.is_object() {
        return Err(ApiError::bad_request("apply patch must be an object"));
    }
    let mine = applied_fields(cfg);
    let mut obj = current.cloned().unwrap_or_else(|| json!({}));
    let mut entries: Vec<Value> = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut conflicts: Vec<(String, FieldPath)> = Vec::new();
    let mut previously_mine = BTreeSet::new();
    let mut others_after: BTreeSet<FieldPath> = BTreeSet::new();
    for e in entries.iter_mut() {
        let who = e
            .get("manager")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let owned = e.get("fieldsV1").map(from_fields_v1).unwrap_or_default();
        if is_mine(e) {
            previously_mine = owned;
            continue;
        }
        let mut kept = owned.clone();
        for p in &owned {
            let overlaps = mine.iter().any(|m| m.starts_with(p) || p.starts_with(m));
            if !overlaps {
                continue;
            }
            let differs = mine
                .iter()
                .filter(|m| m.starts_with(p) || p.starts_with(m))
                .any(|m| get_path(&obj, m) != get_path(cfg, m));
            if differs {
                if force {
                    kept.remove(p);
                } else {
                    conflicts.push((who.clone(), p.clone()));
                }
            }
        }
        others_after.extend(kept.iter().cloned());
        if e.get("fieldsV1").is_some() {
            e["fieldsV1"] = to_fields_v1(&kept);
        }
    }
    if !conflicts.is_empty() {
        let n = conflicts.len();
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(who, p)| json!({"type": "FieldManagerConflict", "message": format!("conflict with \"{who}\""), "field": dotted(p)}))
            .collect();
        let list: Vec<String> = conflicts
            .iter()
            .map(|(who, p)| format!("conflict with \"{who}\": {}", dotted(p)))
            .collect();
        let msg = if n == 1 {
            format!("Apply failed with 1 conflict: {}", list[0])
        } else {
            format!("Apply failed with {n} conflicts: {}", list.join("\n"))
        };
        return Err(ApiError::new(409, "Conflict", msg).with_details(json!({"causes": causes})));
    }
    for p in previously_mine.difference(&mine) {
        if !others_after
            .iter()
            .any(|o| o.starts_with(p) || p.starts_with(o))
        {
            remove_path(&mut obj, p);
        }
    }
    let mut cfg_clean = cfg.clone();
    if let Some(m) = cfg_clean.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    apply_merge(&mut obj, &cfg_clean);
    entries.retain(|e| !is_mine(e));
    push_entry(
        &mut entries,
        manager,
        "Apply",
        api_version,
        &mine,
        subresource,
    );
    obj["metadata"]["managedFields"] = Value::Array(entries);
    Ok(obj)
}

/// Drops entries that own nothing any more, then adds `manager`'s entry for `operation`,
/// owning `fields`, stamped now.
fn push_entry(
    entries: &mut Vec<Value>,
    manager: &str,
    operation: &str,
    api_version: &str,
    fields: &BTreeSet<FieldPath>,
    subresource: Option<&str>,
) {
    entries.retain(|e| {
        e.get("fieldsV1")
            .is_none_or(|f| f.as_object().is_none_or(|m| !m.is_empty()))
    });
    let mut entry = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(fields),
    });
    if let Some(sub) = subresource {
        entry["subresource"] = json!(sub);
    }
    entries.push(entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        let patch = json!({"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "spec": {"containers": [{"name": "b", "image": "z"}, {"name": "a", "$patch": "delete"}]}});
        strategic_merge_patch(&mut pod, &patch);
        assert_eq!(
            pod,
            json!({"spec": {"containers": [{"name": "b", "image": "z"}]}})
        );
    }

    #[test]
    fn apply_by_another_manager_conflicts_unless_forced() {
        let cfg_a = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}});
        let obj = server_side_apply(None, &cfg_a, "a", false, "coordination.k8s.io/v1").unwrap();
        let cfg_b = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": {"holderIdentity": "b"}});
        let err = server_side_apply(Some(&obj), &cfg_b, "b", false, "v").unwrap_err();
        assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
        assert!(
            err.message
                .contains("conflict with \"a\": .spec.holderIdentity"),
            "{}",
            err.message
        );
        let forced = server_side_apply(Some(&obj), &cfg_b, "b", true, "v").unwrap();
        assert_eq!(forced["spec"]["holderIdentity"], "b");
        // Same value by another manager is shared ownership, not a conflict.
        assert!(server_side_apply(Some(&obj), &cfg_a, "c", false, "v").is_ok());
    }

    #[test]
    fn apply_removes_fields_the_manager_stopped_setting() {
        let c1 = json!({"metadata": {"name": "l", "labels": {"x": "1", "y": "2"}}});
        let o = server_side_apply(None, &c1, "m", false, "v").unwrap();
        let c2 = json!({"metadata": {"name": "l", "labels": {"x": "1"}}});
        let o = server_side_apply(Some(&o), &c2, "m", false, "v").unwrap();
        assert_eq!(o["metadata"]["labels"], json!({"x": "1"}));
    }

    fn entry<'a>(obj: &'a Value, manager: &str) -> Option<&'a Value> {
        obj["metadata"]["managedFields"]
            .as_array()?
            .iter()
            .find(|e| e["manager"] == manager)
    }

    #[test]
    fn an_update_takes_the_fields_it_changed_and_records_its_time() {
        let mut created = json!({"metadata": {"name": "d", "labels": {"app": "web"}},
            "spec": {"replicas": 1}});
        record_update(None, &mut created, "kubectl-create", None, "apps/v1");
        let e = entry(&created, "kubectl-create").expect("creator's entry");
        assert_eq!(e["operation"], "Update");
        assert_eq!(e["apiVersion"], "apps/v1");
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            e["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:replicas": {}}})
        );

        // A status writer: its own entry, for the status subresource.
        let mut status = created.clone();
        status["status"] = json!({"readyReplicas": 1});
        record_update(
            Some(&created),
            &mut status,
            "ctrl",
            Some("status"),
            "apps/v1",
        );
        let e = entry(&status, "ctrl").unwrap();
        assert_eq!(e["subresource"], "status");
        assert_eq!(e["fieldsV1"], json!({"f:status": {"f:readyReplicas": {}}}));

        // Another manager changing spec.replicas takes it from the creator.
        let mut scaled = status.clone();
        scaled["spec"]["replicas"] = json!(3);
        record_update(Some(&status), &mut scaled, "kubectl-scale", None, "apps/v1");
        assert_eq!(
            entry(&scaled, "kubectl-create").unwrap()["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:app": {}}}})
        );
        assert_eq!(
            entry(&scaled, "kubectl-scale").unwrap()["fieldsV1"],
            json!({"f:spec": {"f:replicas": {}}})
        );
    }

    #[test]
    fn a_write_that_changes_nothing_leaves_managed_fields_alone() {
        let mut obj = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1}});
        record_update(None, &mut obj, "a", None, "v1");
        let before = obj.clone();
        let mut same = obj.clone();
        same["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("managedFields");
        record_update(Some(&before), &mut same, "b", None, "v1");
        assert_eq!(same, before, "no entry for b, a's entry untouched");
    }

    #[test]
    fn apply_to_the_status_subresource_is_an_entry_of_its_own() {
        let cfg = json!({"metadata": {"name": "d"}, "status": {"phase": "Ready"}});
        let o = server_side_apply_to(None, &cfg, "m", false, "v1", Some("status")).unwrap();
        let o = server_side_apply(
            Some(&o),
            &json!({"metadata": {"name": "d"}, "spec": {"x": 1}}),
            "m",
            false,
            "v1",
        )
        .unwrap();
        let entries = o["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!(
            o["status"]["phase"], "Ready",
            "the main-resource apply keeps status"
        );
    }
}
