//! JSON Pointer globs: RFC 6901 pointers whose segments may contain `*` wildcards
//! (`/status/conditions/*/lastHeartbeatTime`, `/metadata/annotations/*token*`).

use serde_json::{Map, Value};

/// A pointer whose segments may contain `*` (any run of characters within one segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointerGlob {
    segments: Vec<String>,
    source: String,
}

/// A pointer glob that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid JSON Pointer glob `{glob}`: {reason}")]
pub struct GlobError {
    glob: String,
    reason: &'static str,
}

impl PointerGlob {
    /// Parses `/a/*/b` (RFC 6901 escapes `~0` and `~1` allowed).
    pub fn parse(s: &str) -> Result<Self, GlobError> {
        if !s.starts_with('/') {
            return Err(GlobError {
                glob: s.into(),
                reason: "must start with `/`",
            });
        }
        let mut segments = Vec::new();
        for raw in s[1..].split('/') {
            if raw.contains('~') && !valid_escapes(raw) {
                return Err(GlobError {
                    glob: s.into(),
                    reason: "`~` must be followed by 0 or 1",
                });
            }
            segments.push(unescape(raw));
        }
        Ok(Self {
            segments,
            source: s.to_string(),
        })
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when this glob matches `pointer` or a prefix of it, segment by segment
    /// (so `/metadata/managedFields` covers `/metadata/managedFields/0/manager`).
    pub fn matches_prefix_of(&self, pointer: &str) -> bool {
        let mut parts = pointer.split('/').skip(1);
        for seg in &self.segments {
            match parts.next() {
                Some(p) if segment_matches(seg, &unescape(p)) => {}
                _ => return false,
            }
        }
        true
    }

    /// True when some change at `pointer` may affect what this glob selects: the pointer is
    /// at, below or above a matched location (`/spec` changes affect `/spec/replicas`).
    pub fn overlaps(&self, pointer: &str) -> bool {
        let parts: Vec<String> = pointer.split('/').skip(1).map(unescape).collect();
        self.segments
            .iter()
            .zip(parts.iter())
            .all(|(g, p)| segment_matches(g, p))
    }

    /// Calls `f` on every location the glob selects in `value`.
    pub fn for_each_mut(&self, value: &mut Value, f: &mut dyn FnMut(&mut Value)) {
        visit_mut(&self.segments, value, f);
    }

    /// Every value the glob selects (read-only).
    pub fn select<'a>(&self, value: &'a Value) -> Vec<&'a Value> {
        let mut out = Vec::new();
        select(&self.segments, value, &mut out);
        out
    }

    /// Removes every location the glob selects.
    pub fn remove_from(&self, value: &mut Value) {
        remove(&self.segments, value);
    }

    /// Copies the locations the glob selects from `from` into `into` (same paths).
    pub fn copy_into(&self, from: &Value, into: &mut Value) {
        copy(&self.segments, from, into);
    }
}

fn valid_escapes(raw: &str) -> bool {
    let b = raw.as_bytes();
    b.iter()
        .enumerate()
        .all(|(i, c)| *c != b'~' || matches!(b.get(i + 1), Some(b'0') | Some(b'1')))
}

fn unescape(raw: &str) -> String {
    if raw.contains('~') {
        raw.replace("~1", "/").replace("~0", "~")
    } else {
        raw.to_string()
    }
}

/// Shell-style match of one segment: `*` matches any run of characters.
pub fn segment_matches(glob: &str, key: &str) -> bool {
    if !glob.contains('*') {
        return glob == key;
    }
    let parts: Vec<&str> = glob.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !key.starts_with(first) || key.len() < first.len() + last.len() || !key.ends_with(last) {
        return false;
    }
    let mut rest = &key[first.len()..key.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

fn visit_mut(segs: &[String], value: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    let Some((seg, rest)) = segs.split_first() else {
        f(value);
        return;
    };
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if segment_matches(seg, k) {
                    visit_mut(rest, v, f);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                if segment_matches(seg, &i.to_string()) {
                    visit_mut(rest, v, f);
                }
            }
        }
        _ => {}
    }
}

fn select<'a>(segs: &[String], value: &'a Value, out: &mut Vec<&'a Value>) {
    let Some((seg, rest)) = segs.split_first() else {
        out.push(value);
        return;
    };
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if segment_matches(seg, k) {
                    select(rest, v, out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                if segment_matches(seg, &i.to_string()) {
                    select(rest, v, out);
                }
            }
        }
        _ => {}
    }
}

fn remove(segs: &[String], value: &mut Value) {
    let Some((seg, rest)) = segs.split_first() else {
        return;
    };
    match value {
        Value::Object(map) => {
            if rest.is_empty() {
                map.retain(|k, _| !segment_matches(seg, k));
            } else {
                for (k, v) in map.iter_mut() {
                    if segment_matches(seg, k) {
                        remove(rest, v);
                    }
                }
            }
        }
        Value::Array(items) => {
            if rest.is_empty() {
                let mut i = 0;
                items.retain(|_| {
                    let keep = !segment_matches(seg, &i.to_string());
                    i += 1;
                    keep
                });
            } else {
                for (i, v) in items.iter_mut().enumerate() {
                    if segment_matches(seg, &i.to_string()) {
                        remove(rest, v);
                    }
                }
            }
        }
        _ => {}
    }
}

fn copy(segs: &[String], from: &Value, into: &mut Value) {
    let Some((seg, rest)) = segs.split_first() else {
        *into = from.clone();
        return;
    };
    match from {
        Value::Object(map) => {
            if !into.is_object() {
                *into = Value::Object(Map::new());
            }
            let target = into.as_object_mut().expect("object");
            for (k, v) in map {
                if segment_matches(seg, k) {
                    let slot = target.entry(k.clone()).or_insert(Value::Null);
                    copy(rest, v, slot);
                }
            }
        }
        // Arrays are kept whole once selected into: projecting inside arrays would renumber
        // their elements.
        Value::Array(_) if (!rest.is_empty() || seg != "*") && into.is_null() => {
            *into = from.clone()
        }
        Value::Array(_) if !rest.is_empty() || seg != "*" => {}
        Value::Array(_) => *into = from.clone(),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn globs_match_segments_and_prefixes() {
        let g = PointerGlob::parse("/status/conditions/*/lastHeartbeatTime").unwrap();
        assert!(g.matches_prefix_of("/status/conditions/3/lastHeartbeatTime"));
        assert!(!g.matches_prefix_of("/status/conditions/3/status"));
        assert!(!g.matches_prefix_of("/status/conditions"));
        let m = PointerGlob::parse("/metadata/managedFields").unwrap();
        assert!(m.matches_prefix_of("/metadata/managedFields/0/manager"));
        let esc = PointerGlob::parse("/metadata/annotations/a~1b").unwrap();
        assert!(esc.matches_prefix_of("/metadata/annotations/a~1b"));
        assert!(PointerGlob::parse("metadata").is_err());
        assert!(PointerGlob::parse("/a/~2").is_err());
    }

    #[test]
    fn wildcards_inside_segments_match_key_patterns() {
        let g = PointerGlob::parse("/metadata/annotations/*token*").unwrap();
        assert!(g.matches_prefix_of("/metadata/annotations/my-token-x"));
        assert!(!g.matches_prefix_of("/metadata/annotations/other"));
        assert!(segment_matches("a*c*e", "abcde"));
        assert!(!segment_matches("a*c*e", "abde"));
    }

    #[test]
    fn overlap_covers_parents_and_children() {
        let g = PointerGlob::parse("/spec/replicas").unwrap();
        assert!(g.overlaps("/spec"));
        assert!(g.overlaps("/spec/replicas"));
        assert!(!g.overlaps("/status"));
        assert!(!g.overlaps("/spec/template"));
    }

    #[test]
    fn remove_and_visit_reach_every_match() {
        let mut v = json!({"spec": {"containers": [
            {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"env": [{"name": "C", "value": "3"}]}]}});
        let g = PointerGlob::parse("/spec/containers/*/env/*/value").unwrap();
        let mut n = 0;
        g.for_each_mut(&mut v, &mut |x| {
            *x = json!("x");
            n += 1;
        });
        assert_eq!(n, 3);
        g.remove_from(&mut v);
        assert_eq!(v["spec"]["containers"][0]["env"][0], json!({"name": "A"}));
    }

    #[test]
    fn copy_projects_selected_subtrees() {
        let v = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"big": [1, 2]}});
        let mut out = Value::Null;
        PointerGlob::parse("/metadata/labels")
            .unwrap()
            .copy_into(&v, &mut out);
        assert_eq!(out, json!({"metadata": {"labels": {"x": "1"}}}));
    }
}
