//! Reading compact JSON that `serde_json` wrote (no whitespace): where a value, an object's
//! members and an array's elements begin and end, found by scanning bytes, never decoding.
//!
//! The cache keeps objects in this form and the informer encodes every new state in it, so
//! two states can be compared a subtree at a time with `memcmp` ([`super::diff::diff_json`]).
//! Every function answers `None` for bytes that are not such JSON, and never panics on them.

use std::ops::Range;

/// The end (exclusive) of the value that starts at `at`.
pub fn value_end(b: &[u8], at: usize) -> Option<usize> {
    match *b.get(at)? {
        b'"' => string_end(b, at),
        b'{' => container_end(b, at, b'{', b'}'),
        b'[' => container_end(b, at, b'[', b']'),
        _ => {
            // A number, `true`, `false` or `null`: the run of the characters they are made of.
            let len = b[at..]
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')))
                .unwrap_or(b.len() - at);
            (len > 0).then_some(at + len)
        }
    }
}

/// The end (exclusive) of the string whose opening quote is at `at`. Most strings of an
/// object are short names and values: a plain loop beats a vectorized search per string.
fn string_end(b: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            // An escape: the character after the backslash is never the closing quote.
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// The end (exclusive) of the object or array opened at `at`: brackets of its own kind are
/// balanced inside it, outside strings.
fn container_end(b: &[u8], at: usize, open: u8, close: u8) -> Option<usize> {
    let (mut i, mut depth) = (at + 1, 1usize);
    loop {
        let c = *b.get(i)?;
        if c == b'"' {
            i = string_end(b, i)?;
            continue;
        }
        i += 1;
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
    }
}

/// The members of the object `b` (exactly one object): each name as written (quotes and
/// escapes included) and its value.
pub fn members(b: &[u8]) -> Option<Vec<(Range<usize>, Range<usize>)>> {
    items(b, b'{', b'}', |i| {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let name_end = string_end(b, i)?;
        if b.get(name_end) != Some(&b':') {
            return None;
        }
        let end = value_end(b, name_end + 1)?;
        Some(((i..name_end, name_end + 1..end), end))
    })
}

/// The elements of the array `b` (exactly one array).
pub fn elements(b: &[u8]) -> Option<Vec<Range<usize>>> {
    items(b, b'[', b']', |i| {
        let end = value_end(b, i)?;
        Some((i..end, end))
    })
}

/// The span of the value at the JSON Pointer `path` (RFC 6901) in the compact JSON `b`,
/// found as `serde_json::Value::pointer` finds it in `b`'s tree: `None` when nothing is
/// there (or `b` is not such JSON). Only the containers on the way are scanned.
pub fn pointer(b: &[u8], path: &str) -> Option<Range<usize>> {
    if path.is_empty() {
        return Some(0..b.len());
    }
    let mut at = 0..b.len();
    for token in path.strip_prefix('/')?.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        let v = &b[at.clone()];
        let inner = match v.first()? {
            b'{' => {
                members(v)?
                    .into_iter()
                    .find(|(name, _)| name_is(&v[name.clone()], &token))?
                    .1
            }
            b'[' => elements(v)?.get(index(&token)?)?.clone(),
            _ => return None,
        };
        at = at.start + inner.start..at.start + inner.end;
    }
    Some(at)
}

/// Whether the member name `name` (as written: quoted, maybe escaped) is `key`.
fn name_is(name: &[u8], key: &str) -> bool {
    let Some(inner) = name.get(1..name.len().saturating_sub(1)) else {
        return false;
    };
    if inner.contains(&b'\\') {
        serde_json::from_slice::<String>(name).is_ok_and(|n| n == key)
    } else {
        inner == key.as_bytes()
    }
}

/// An array index token, read as `serde_json` reads it (no sign, no leading zeros).
fn index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

/// The comma-separated items of the container `b` (exactly one, from `open` to `close`);
/// `item` reads the one that starts at its argument and says where it ends.
fn items<T>(
    b: &[u8],
    open: u8,
    close: u8,
    mut item: impl FnMut(usize) -> Option<(T, usize)>,
) -> Option<Vec<T>> {
    let mut out = Vec::new();
    if b.first() != Some(&open) {
        return None;
    }
    if b.get(1) == Some(&close) {
        return (b.len() == 2).then_some(out);
    }
    let mut i = 1;
    loop {
        let (it, end) = item(i)?;
        out.push(it);
        match b.get(end) {
            Some(b',') => i = end + 1,
            Some(&c) if c == close && end + 1 == b.len() => return Some(out),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_and_elements_are_found_around_strings_that_look_like_json() {
        let v = json!({"a\"}": "x\\\"]}", "b": [1, {"c": "[{"}, [], {}], "d": -1.5e3, "e": null});
        let b = serde_json::to_vec(&v).unwrap();
        let m = members(&b).unwrap();
        let names: Vec<&[u8]> = m.iter().map(|(k, _)| &b[k.clone()]).collect();
        assert_eq!(names, [&br#""a\"}""#[..], br#""b""#, br#""d""#, br#""e""#]);
        let b_value = &b[m[1].1.clone()];
        assert_eq!(b_value, br#"[1,{"c":"[{"},[],{}]"#);
        let e = elements(b_value).unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(&b_value[e[1].clone()], br#"{"c":"[{"}"#);
        assert_eq!(&b[m[2].1.clone()], b"-1500.0");
        assert_eq!(members(b"{}"), Some(vec![]));
        assert_eq!(elements(b"[]"), Some(vec![]));
    }

    #[test]
    fn bytes_that_are_not_compact_json_are_refused_without_a_panic() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"a\"",
            b"{\"a\":",
            b"{\"a\":1",
            b"{\"a\":1}x",
            b"{\"a\\",
            b"[1,",
            b"[\"]",
            b"{a:1}",
            b"[1 2]",
        ] {
            let shown = String::from_utf8_lossy(bad);
            assert_eq!(members(bad), None, "{shown}");
            assert_eq!(elements(bad), None, "{shown}");
        }
    }

    #[test]
    fn a_pointer_finds_in_the_bytes_what_it_finds_in_the_tree() {
        let v = json!({"metadata": {"name": "a", "labels": {"app/x": "1", "t~y": "2", "q\"": 3}},
            "spec": {"items": [{"n": 0}, {"n": 1}], "empty": {}, "z": null}, "": 5});
        let b = serde_json::to_vec(&v).unwrap();
        for path in [
            "",
            "/metadata",
            "/metadata/name",
            "/metadata/labels/app~1x",
            "/metadata/labels/t~0y",
            "/metadata/labels/q\"",
            "/spec/items/1/n",
            "/spec/items/01",
            "/spec/items/+1",
            "/spec/items/2",
            "/spec/empty",
            "/spec/empty/x",
            "/spec/z",
            "/spec/z/a",
            "/",
            "/x",
            "metadata",
            "/metadata/name/more",
        ] {
            let found = pointer(&b, path)
                .map(|r| serde_json::from_slice::<serde_json::Value>(&b[r]).unwrap());
            assert_eq!(found.as_ref(), v.pointer(path), "{path}");
        }
    }
}
