//! Reading serialized JSON without building a tree: the extent of a value, the members of
//! an object, the elements of an array, a value by path.
//!
//! Made for the compact JSON the cache keeps (serde_json's own serialization of a `Value`),
//! where an object's members can be compared by their bytes: equal text is an equal value,
//! and a subtree whose bytes did not change needs no parse at all. Whitespace between
//! tokens is tolerated. Malformed input is an error ([`Malformed`]), never a panic; the
//! scanner does not validate what it skips (a string's escapes, a number's digits), the
//! parse of the parts that are used does.

use std::borrow::Cow;

/// The bytes are not the JSON the scanner expected (truncated, or not JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed JSON at byte {0}")]
pub struct Malformed(pub usize);

/// What a value is, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `{…}`
    Object,
    /// `[…]`
    Array,
    /// A string, number, `true`, `false` or `null`.
    Scalar,
}

/// The kind of the value `v` (a slice from [`value_len`], [`members`] or [`elements`]).
pub fn kind(v: &[u8]) -> Kind {
    match v.first() {
        Some(b'{') => Kind::Object,
        Some(b'[') => Kind::Array,
        _ => Kind::Scalar,
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

/// The index just past the string whose opening quote is at `b[i]`.
fn string_end(b: &[u8], i: usize) -> Result<usize, Malformed> {
    let mut j = i + 1;
    loop {
        let Some(at) = b.get(j..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) else {
            return Err(Malformed(i));
        };
        j += at;
        if b[j] == b'"' {
            return Ok(j + 1);
        }
        // An escape: the next byte is escaped (`\"` does not close the string).
        j += 2;
    }
}

/// The index just past the value starting at `b[i]` (no leading whitespace).
fn value_end(b: &[u8], i: usize) -> Result<usize, Malformed> {
    match b.get(i) {
        Some(b'"') => string_end(b, i),
        Some(&open @ (b'{' | b'[')) => {
            // Outside strings, the brackets of the other kind nest inside this one's, so
            // only this kind is counted (and strings skipped).
            let close = if open == b'{' { b'}' } else { b']' };
            let mut depth = 0usize;
            let mut j = i;
            loop {
                let Some(at) = b.get(j..).and_then(|rest| memchr::memchr3(b'"', open, close, rest))
                else {
                    return Err(Malformed(i));
                };
                j += at;
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    c if c == open => depth += 1,
                    _ => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(j + 1);
                        }
                    }
                }
                j += 1;
            }
        }
        Some(_) => {
            let mut j = i;
            while let Some(c) = b.get(j) {
                if matches!(c, b',' | b']' | b'}' | b' ' | b'\n' | b'\r' | b'\t') {
                    break;
                }
                j += 1;
            }
            if j == i { Err(Malformed(i)) } else { Ok(j) }
        }
        None => Err(Malformed(i)),
    }
}

/// `b` with surrounding whitespace cut, checked to be exactly one value.
pub fn value(b: &[u8]) -> Result<&[u8], Malformed> {
    let start = skip_ws(b, 0);
    let end = value_end(b, start)?;
    if skip_ws(b, end) != b.len() {
        return Err(Malformed(end));
    }
    Ok(&b[start..end])
}

/// Calls `f` for each item of the container `v` (`{` or `[` at `v[0]`, no surrounding
/// whitespace): with the member's key (the bytes between its quotes, still escaped) for an
/// object, `None` for an array, and the item's value; until `f` answers `true` (found: the
/// rest is not read).
fn items<'a>(
    v: &'a [u8],
    object: bool,
    mut f: impl FnMut(Option<&'a [u8]>, &'a [u8]) -> bool,
) -> Result<(), Malformed> {
    let close = if object { b'}' } else { b']' };
    let mut i = skip_ws(v, 1);
    if v.get(i) == Some(&close) {
        return Ok(());
    }
    loop {
        let key = if object {
            if v.get(i) != Some(&b'"') {
                return Err(Malformed(i));
            }
            let end = string_end(v, i)?;
            let key = &v[i + 1..end - 1];
            i = skip_ws(v, end);
            if v.get(i) != Some(&b':') {
                return Err(Malformed(i));
            }
            i = skip_ws(v, i + 1);
            Some(key)
        } else {
            None
        };
        let end = value_end(v, i)?;
        if f(key, &v[i..end]) {
            return Ok(());
        }
        i = skip_ws(v, end);
        match v.get(i) {
            Some(b',') => i = skip_ws(v, i + 1),
            Some(c) if *c == close => return Ok(()),
            _ => return Err(Malformed(i)),
        }
    }
}

/// The members of the object `v`, in order: (key as written between its quotes, value).
pub fn members(v: &[u8]) -> Result<Vec<(&[u8], &[u8])>, Malformed> {
    let mut out = Vec::new();
    items(v, true, |k, val| {
        out.push((k.unwrap_or_default(), val));
        false
    })?;
    Ok(out)
}

/// The elements of the array `v`, in order.
pub fn elements(v: &[u8]) -> Result<Vec<&[u8]>, Malformed> {
    let mut out = Vec::new();
    items(v, false, |_, val| {
        out.push(val);
        false
    })?;
    Ok(out)
}

/// A key as written between its quotes, unescaped.
pub fn key(raw: &[u8]) -> Result<Cow<'_, str>, Malformed> {
    if !raw.contains(&b'\\') {
        return std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|e| Malformed(e.valid_up_to()));
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted)
        .map(Cow::Owned)
        .map_err(|e| Malformed(e.column()))
}

/// The value at `path` (object keys that need no escape) in the object `v`, e.g.
/// `["metadata", "uid"]`; `None` when a step is missing or not an object. Reads each level
/// only up to the member it looks for.
pub fn get<'a>(v: &'a [u8], path: &[&str]) -> Result<Option<&'a [u8]>, Malformed> {
    let mut at = v;
    for step in path {
        if kind(at) != Kind::Object {
            return Ok(None);
        }
        let mut found = None;
        items(at, true, |k, val| {
            let hit = k == Some(step.as_bytes());
            if hit {
                found = Some(val);
            }
            hit
        })?;
        match found {
            Some(val) => at = val,
            None => return Ok(None),
        }
    }
    Ok(Some(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_elements_are_the_bytes_of_each_item() {
        let v = br#"{"a":1,"b\"c":[1,{"d":"}"}],"e":{},"f":"x\\"}"#;
        let m = members(v).unwrap();
        let keys: Vec<&[u8]> = m.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, [&b"a"[..], br#"b\"c"#, b"e", b"f"]);
        assert_eq!(m[1].1, br#"[1,{"d":"}"}]"#);
        assert_eq!(key(m[1].0).unwrap(), "b\"c");
        assert_eq!(m[3].1, br#""x\\""#);
        assert_eq!(elements(m[1].1).unwrap(), [&b"1"[..], br#"{"d":"}"}"#]);
        assert!(elements(b"[]").unwrap().is_empty());
        assert!(members(b"{ }").unwrap().is_empty());
        assert_eq!(kind(m[2].1), Kind::Object);
    }

    #[test]
    fn whitespace_between_tokens_is_tolerated() {
        let v = value(b" { \"a\" : [ 1 , 2 ] , \"b\" : null } ").unwrap();
        let m = members(v).unwrap();
        assert_eq!(m[0].1, b"[ 1 , 2 ]");
        assert_eq!(elements(m[0].1).unwrap(), [&b"1"[..], b"2"]);
        assert_eq!(m[1].1, b"null");
    }

    #[test]
    fn a_value_is_found_by_its_path() {
        let v = br#"{"kind":"Pod","metadata":{"name":"p","uid":"u-1"}}"#;
        assert_eq!(get(v, &["metadata", "uid"]).unwrap(), Some(&br#""u-1""#[..]));
        assert_eq!(get(v, &["metadata", "x"]).unwrap(), None);
        assert_eq!(get(v, &["kind", "x"]).unwrap(), None);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"{",
            b"[1,",
            b"{\"a\"}",
            b"{\"a\":1,}",
            b"\"abc",
            b"[1 2]",
            b"{1:2}",
            b"]",
            b"1 2",
        ] {
            let r = value(bad).and_then(|v| match kind(v) {
                Kind::Object => members(v).map(drop),
                Kind::Array => elements(v).map(drop),
                Kind::Scalar => Ok(()),
            });
            assert!(r.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
