//! An object's compact JSON written straight from the bytes the API server sent, without
//! building its tree: byte for byte what `serde_json` writes for the parsed object (less
//! `metadata.managedFields`, with the type meta filled in), in one pass.
//!
//! Building the tree costs an allocation per map, key and string, and the tree is freed
//! again as soon as its JSON is written: most of a watch event's cost when no transform needs
//! the tree. The bytes need only what `serde_json` changes when it writes a parsed value
//! again: the whitespace dropped, strings with escapes decoded and escaped its way (Go writes
//! `<`, `>` and `&` as `\u003c`, `\u003e`, `\u0026`; `serde_json` writes them as they are).
//!
//! Everything this pass cannot reproduce exactly is left to the tree (the answer is `None`):
//! numbers that are not plain integers (a float is printed as `serde_json` rounds it), keys
//! with escapes, a key repeated in one object (the tree keeps the last value, at the first
//! key's place), a top level that is not an object, nesting deeper than `serde_json` accepts,
//! or bytes that are not valid JSON. The callers then parse the tree, which gives the same
//! JSON or the same error.

use super::changed_by::Managers;
use super::compact;
use super::object::Ident;

/// `serde_json`'s recursion limit: deeper input is an error there, so it is left to it.
const MAX_DEPTH: usize = 127;

/// What a watch object becomes without its tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recompacted {
    /// `serde_json::to_vec` of the parsed object (see the module documentation).
    pub json: Vec<u8>,
    /// What names it, as [`Ident::of`] reads it from the tree.
    pub ident: Ident,
    /// The summary of its `managedFields` when asked for, as [`Managers::of`] reads it from
    /// the tree (empty when it has none).
    pub managers: Option<Managers>,
}

/// What [`recompact`] does besides rewriting.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// Leave `metadata.managedFields` out.
    pub drop_managed_fields: bool,
    /// Summarize `metadata.managedFields` (`changedBy`).
    pub summarize_managed_fields: bool,
    /// The type meta to fill in when the object lacks it.
    pub api_version: &'a str,
    /// See `api_version`.
    pub kind: &'a str,
}

/// The compact JSON of the object `json`, `metadata.managedFields` summarized and left out
/// as `options` say, and `apiVersion` then `kind` appended when the object lacks them, as the
/// informer's preparation does; `None` when only the tree can tell (see the module
/// documentation).
pub fn recompact(json: &str, options: Options<'_>) -> Option<Recompacted> {
    let Options {
        api_version, kind, ..
    } = options;
    let mut w = Writer {
        b: json.as_bytes(),
        i: 0,
        out: Vec::with_capacity(json.len()),
        keys: Vec::new(),
        options,
        meta: Meta::default(),
        managers: None,
    };
    w.ws();
    if w.peek()? != b'{' {
        return None;
    }
    let present = w.object(0, Level::Top)?;
    w.ws();
    if w.i != w.b.len() {
        return None;
    }
    // `serde_json`'s map keeps insertion order: missing type meta goes at the end.
    if !present.api_version || !present.kind {
        w.out.pop(); // the closing brace
        let mut first = w.out.last() == Some(&b'{');
        for (missing, key, value) in [
            (!present.api_version, "apiVersion", api_version),
            (!present.kind, "kind", kind),
        ] {
            if missing {
                if !first {
                    w.out.push(b',');
                }
                first = false;
                w.out.extend_from_slice(b"\"");
                w.out.extend_from_slice(key.as_bytes());
                w.out.extend_from_slice(b"\":");
                serde_json::to_writer(&mut w.out, value).ok()?;
            }
        }
        w.out.push(b'}');
    }
    let meta = w.meta;
    let managers = options
        .summarize_managed_fields
        .then(|| w.managers.unwrap_or_default());
    Some(Recompacted {
        managers,
        json: w.out,
        ident: Ident {
            namespace: meta.namespace.filter(|s| !s.is_empty()),
            name: meta.name.unwrap_or_default(),
            uid: meta.uid.unwrap_or_default(),
            resource_version: meta.resource_version.unwrap_or_default(),
        },
    })
}

/// Where an object sits: the top level and its `metadata` are read for more than their JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Top,
    Metadata,
    Other,
}

/// The top level's type meta, seen or not (whatever its value).
#[derive(Debug, Default)]
struct Present {
    api_version: bool,
    kind: bool,
}

/// The string members of `metadata` an [`Ident`] holds.
#[derive(Debug, Default)]
struct Meta {
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
}

struct Writer<'a> {
    b: &'a [u8],
    i: usize,
    out: Vec<u8>,
    /// The names of the members of every object open, innermost last (byte ranges of `b`,
    /// quotes excluded), to find a repeated one.
    keys: Vec<(usize, usize)>,
    options: Options<'a>,
    meta: Meta,
    managers: Option<Managers>,
}

impl Writer<'_> {
    /// Reads the summary of the `managedFields` value at `i` (not moving past it).
    fn summarize(&mut self) -> Option<()> {
        let end = compact::value_end(self.b, self.i)?;
        let managers = match serde_json::from_slice::<Managers>(&self.b[self.i..end]) {
            Ok(m) => m,
            // Dropped anyway, they are summarized while parsing, which then fails: the tree
            // path reports it. Kept, the tree reads them afterwards and finds no summary.
            Err(_) if self.options.drop_managed_fields => return None,
            Err(_) => Managers::default(),
        };
        self.managers = Some(managers);
        Some(())
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    /// Writes the value at `i`; a string's decoded text when `want_text`.
    fn value(&mut self, depth: usize, want_text: bool) -> Option<Option<String>> {
        match self.peek()? {
            b'{' => self.object(depth + 1, Level::Other).map(|_| None),
            b'[' => self.array(depth + 1).map(|()| None),
            b'"' => self.string(want_text),
            b't' => self.literal(b"true").map(|()| None),
            b'f' => self.literal(b"false").map(|()| None),
            b'n' => self.literal(b"null").map(|()| None),
            b'-' | b'0'..=b'9' => self.integer().map(|()| None),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if !self.b[self.i..].starts_with(word) {
            return None;
        }
        self.out.extend_from_slice(word);
        self.i += word.len();
        Some(())
    }

    /// A plain integer that both `i64` and `u64` hold whatever its sign (at most 18 digits),
    /// so `serde_json` prints it as written; anything else is left to the tree.
    fn integer(&mut self) -> Option<()> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        let digits_at = start + usize::from(negative);
        let digits = self.b[digits_at..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        let end = digits_at + digits;
        let plain = match (digits, self.b.get(digits_at)) {
            (0, _) => false,
            // `-0` parses as the float -0.0; `01` is not JSON.
            (1, Some(b'0')) => !negative,
            (_, Some(b'0')) => false,
            (n, _) => n <= 18,
        };
        if !plain || matches!(self.b.get(end), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        self.out.extend_from_slice(&self.b[start..end]);
        self.i = end;
        Some(())
    }

    /// The string at `i` (the opening quote): its end, and whether it holds an escape.
    fn string_span(&self) -> Option<(usize, bool)> {
        let mut j = self.i + 1;
        let mut escaped = false;
        loop {
            match *self.b.get(j)? {
                b'"' => return Some((j + 1, escaped)),
                b'\\' => {
                    escaped = true;
                    j += 2;
                }
                // Not JSON; `serde_json` reports it.
                0..=0x1f => return None,
                _ => j += 1,
            }
        }
    }

    /// Writes the string at `i` as `serde_json` writes it; its text when `want_text`.
    fn string(&mut self, want_text: bool) -> Option<Option<String>> {
        let (end, escaped) = self.string_span()?;
        let raw = &self.b[self.i..end];
        self.i = end;
        if !escaped {
            // No escape and no control character: `serde_json` writes it as it is.
            self.out.extend_from_slice(raw);
            let text = want_text.then(|| {
                std::str::from_utf8(&raw[1..raw.len() - 1])
                    .ok()
                    .map(str::to_string)
            });
            return text.map_or(Some(None), |t| t.map(Some));
        }
        let text: String = serde_json::from_slice(raw).ok()?;
        serde_json::to_writer(&mut self.out, &text).ok()?;
        Some(want_text.then_some(text))
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.i += 1;
        self.out.push(b'[');
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            self.out.push(b']');
            return Some(());
        }
        loop {
            self.ws();
            self.value(depth, false)?;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.out.push(b',');
                }
                b']' => {
                    self.i += 1;
                    self.out.push(b']');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Writes the object at `i`; at the top level, whether it has its type meta.
    fn object(&mut self, depth: usize, level: Level) -> Option<Present> {
        if depth > MAX_DEPTH {
            return None;
        }
        let mut present = Present::default();
        self.i += 1;
        self.out.push(b'{');
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            self.out.push(b'}');
            return Some(present);
        }
        let first_key = self.keys.len();
        let mut written = 0usize;
        loop {
            self.ws();
            if self.peek()? != b'"' {
                return None;
            }
            let (end, escaped) = self.string_span()?;
            // A key with an escape may equal another spelled differently: the tree knows.
            if escaped {
                return None;
            }
            let key = (self.i + 1, end - 1);
            let name = &self.b[key.0..key.1];
            if self.keys[first_key..]
                .iter()
                .any(|&(s, e)| &self.b[s..e] == name)
            {
                return None;
            }
            self.keys.push(key);
            self.i = end;
            self.ws();
            if self.peek()? != b':' {
                return None;
            }
            self.i += 1;
            self.ws();
            let managed_fields = level == Level::Metadata && name == b"managedFields";
            if managed_fields && self.options.summarize_managed_fields {
                self.summarize()?;
            }
            if managed_fields && self.options.drop_managed_fields {
                self.i = compact::value_end(self.b, self.i)?;
            } else {
                if written > 0 {
                    self.out.push(b',');
                }
                written += 1;
                self.out.push(b'"');
                self.out.extend_from_slice(name);
                self.out.extend_from_slice(b"\":");
                self.member(depth, level, name, &mut present)?;
            }
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    self.out.push(b'}');
                    self.keys.truncate(first_key);
                    return Some(present);
                }
                _ => return None,
            }
        }
    }

    /// Writes the value of member `name` of an object at `level`, noting what that level
    /// reads from it.
    fn member(
        &mut self,
        depth: usize,
        level: Level,
        name: &[u8],
        present: &mut Present,
    ) -> Option<()> {
        match (level, name) {
            (Level::Top, b"metadata") if self.peek()? == b'{' => {
                self.object(depth + 1, Level::Metadata)?;
            }
            (Level::Top, b"apiVersion" | b"kind") => {
                if name == b"kind" {
                    present.kind = true;
                } else {
                    present.api_version = true;
                }
                self.value(depth, false)?;
            }
            (Level::Metadata, b"name" | b"namespace" | b"uid" | b"resourceVersion") => {
                let text = self.value(depth, true)?;
                let slot = match name {
                    b"name" => &mut self.meta.name,
                    b"namespace" => &mut self.meta.namespace,
                    b"uid" => &mut self.meta.uid,
                    _ => &mut self.meta.resource_version,
                };
                *slot = text;
            }
            _ => {
                self.value(depth, false)?;
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::{Value, json};

    use super::*;

    /// What the tree path writes: parse (with the summary of `managedFields` when asked;
    /// dropped, they must then have its shape), drop `managedFields`, fill the type meta,
    /// serialize.
    fn by_tree(json: &str, drop: bool, summarize: bool) -> Option<(Vec<u8>, Recompacted)> {
        let mut v: Value = serde_json::from_str(json).ok()?;
        let managers = summarize.then(|| Managers::of(&v));
        let list = v.pointer("/metadata/managedFields");
        if drop && summarize && list.is_some_and(|l| Managers::deserialize(l).is_err()) {
            return None;
        }
        let map = v.as_object_mut()?;
        if drop && let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.shift_remove("managedFields");
        }
        if !map.contains_key("apiVersion") {
            map.insert("apiVersion".into(), "v1".into());
        }
        if !map.contains_key("kind") {
            map.insert("kind".into(), "Pod".into());
        }
        let json = serde_json::to_vec(&v).unwrap();
        let ident = Ident::of(&v);
        Some((
            json.clone(),
            Recompacted {
                json,
                ident,
                managers,
            },
        ))
    }

    fn options(drop: bool, summarize: bool) -> Options<'static> {
        Options {
            drop_managed_fields: drop,
            summarize_managed_fields: summarize,
            api_version: "v1",
            kind: "Pod",
        }
    }

    /// The bytes path agrees with the tree path, or leaves `json` to it; true when it took
    /// it without summarizing (with a summary it is checked too).
    fn agrees(json: &str, drop: bool) -> bool {
        let mut taken = false;
        for summarize in [true, false] {
            taken = match recompact(json, options(drop, summarize)) {
                Some(r) => {
                    let (tree, expected) =
                        by_tree(json, drop, summarize).expect("the bytes path took bad JSON");
                    assert_eq!(
                        String::from_utf8_lossy(&r.json),
                        String::from_utf8_lossy(&tree),
                        "for {json}"
                    );
                    assert_eq!(r, expected, "for {json}");
                    true
                }
                None => false,
            };
        }
        taken
    }

    #[test]
    fn managed_fields_are_summarized_from_their_bytes() {
        let text = r#"{"metadata":{"name":"x","managedFields":[
            {"manager":"kubectl","operation":"Update","time":"2025-01-01T00:00:00Z",
             "fieldsV1":{"f:metadata":{"k:{\"uid\":\"o\"}":{}}}},
            {"manager":"kubelet","operation":"Update","subresource":"status"}]}}"#;
        assert!(agrees(text, true));
        // Kept, their keys with escapes (`k:{\"uid\":…}`) are the tree's to write.
        assert!(!agrees(text, false));
        let r = recompact(text, options(true, true)).unwrap();
        assert_eq!(r.managers.unwrap().entries().len(), 2);
        assert!(!String::from_utf8(r.json).unwrap().contains("managedFields"));
    }

    #[test]
    fn managed_fields_that_are_no_list_are_left_to_the_tree_when_dropped() {
        let text = r#"{"metadata":{"managedFields":7}}"#;
        assert!(recompact(text, options(true, true)).is_none());
        let kept = recompact(text, options(false, true)).unwrap();
        assert!(kept.managers.unwrap().is_empty());
        assert!(agrees(text, false));
        let none = recompact(r#"{"metadata":{}}"#, options(true, true)).unwrap();
        assert_eq!(none.managers, Some(Managers::default()));
    }

    #[test]
    fn pretty_printed_objects_come_out_as_serde_json_writes_them() {
        let obj = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1",
                "resourceVersion": "42", "labels": {"app": "web"},
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 8080}],
                "args": [], "env": {}}], "priority": -5, "enabled": true, "x": null},
        });
        for text in [
            serde_json::to_string_pretty(&obj).unwrap(),
            serde_json::to_string(&obj).unwrap(),
        ] {
            assert!(agrees(&text, true));
            assert!(agrees(&text, false));
        }
    }

    #[test]
    fn go_escapes_are_decoded_and_written_the_way_serde_json_writes_them() {
        let text = r#"{"metadata":{"name":"a\u003cb","annotations":{"x":"\u0026\/\"\\\n\u00e9\ud83d\ude00\u2028"}}}"#;
        assert!(agrees(text, true));
        let r = recompact(text, options(true, false)).unwrap();
        assert_eq!(r.ident.name, "a<b");
    }

    #[test]
    fn missing_type_meta_is_appended_in_the_order_the_tree_appends_it() {
        assert!(agrees(r#"{"metadata":{"name":"x"}}"#, true));
        assert!(agrees(r#"{"kind":"Pod"}"#, true));
        assert!(agrees(r#"{"apiVersion":"v1"}"#, true));
        assert!(agrees(r#"{}"#, true));
        assert!(agrees(r#"{"metadata":{"managedFields":[]}}"#, true));
        assert!(agrees(
            r#" { "metadata" : { "managedFields" : [ ] , "name" : "n" } } "#,
            true
        ));
    }

    #[test]
    fn what_only_the_tree_can_tell_is_left_to_it() {
        for text in [
            r#"{"a":1.5}"#,
            r#"{"a":1e3}"#,
            r#"{"a":-0}"#,
            r#"{"a":1234567890123456789}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"metadata":{"name":"x","name":"y"}}"#,
            r#"{"a\u0062":1}"#,
            r#"[1]"#,
            r#""x""#,
            r#"{"a":1} x"#,
            r#"{"a":tru}"#,
            r#"{"a":"x"#,
            "{\"a\":\"\u{1}\"}",
            "",
        ] {
            assert!(!agrees(text, true), "took {text}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(!agrees(&deep, true));
    }

    #[test]
    fn plain_integers_of_either_sign_are_kept_as_written() {
        assert!(agrees(
            r#"{"a":0,"b":-1,"c":123456789012345678,"d":-123456789012345678,"e":[0,10]}"#,
            true
        ));
    }

    #[test]
    fn metadata_that_is_not_an_object_passes_through() {
        assert!(agrees(r#"{"metadata":"x","kind":"K"}"#, true));
        assert!(agrees(r#"{"metadata":{"name":7,"namespace":""}}"#, true));
        assert!(agrees(
            r#"{"spec":{"metadata":{"managedFields":[1]}}}"#,
            true
        ));
    }

    #[test]
    fn every_kubernetes_fixture_agrees_with_the_tree_or_is_left_to_it() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/k8s-api");
        let mut taken = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for drop in [true, false] {
                taken += usize::from(agrees(&text, drop));
            }
        }
        assert!(taken > 100, "only {taken} fixtures took the bytes path");
    }

    mod generated {
        use proptest::prelude::*;
        use serde_json::{Map, Value};

        use super::agrees;

        /// The largest magnitude the bytes path keeps as written (18 digits).
        const PLAIN: i64 = 999_999_999_999_999_999;

        fn value() -> impl Strategy<Value = Value> {
            // Mostly what the bytes path takes; now and then what it leaves to the tree.
            let leaf = prop_oneof![
                3 => Just(Value::Null),
                3 => any::<bool>().prop_map(Value::Bool),
                6 => (-PLAIN..=PLAIN).prop_map(Value::from),
                1 => any::<u64>().prop_map(Value::from),
                1 => (-1e6f64..1e6).prop_map(Value::from),
                12 => "[a-z<>&\"\\\\/\u{e9}\u{2028}\u{1}\n ]{0,6}".prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    prop::collection::vec(
                        ("(metadata|managedFields|name|uid|kind|[a-c]{1,2})", inner),
                        0..6
                    )
                    .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
                ]
            })
        }

        /// Escapes the way Go does (`<`, `>`, `&`, U+2028 as `\u00XX`), or not at all.
        fn go_escaped(compact: &str) -> String {
            compact
                .replace('<', "\\u003c")
                .replace('>', "\\u003e")
                .replace('&', "\\u0026")
                .replace('\u{2028}', "\\u2028")
        }

        /// A float or a number of more than 18 digits somewhere in `v`.
        fn only_the_tree_tells(v: &Value) -> bool {
            match v {
                Value::Number(n) => n.as_i64().is_none_or(|i| i.unsigned_abs() > PLAIN as u64),
                Value::Array(a) => a.iter().any(only_the_tree_tells),
                Value::Object(m) => m.values().any(only_the_tree_tells),
                _ => false,
            }
        }

        proptest! {
            #[test]
            fn generated_objects_agree_with_the_tree(
                members in prop::collection::vec(
                    ("(metadata|apiVersion|kind|spec|[a-c])", value()), 0..6),
                pretty in any::<bool>(),
                go in any::<bool>(),
                drop in any::<bool>(),
            ) {
                let object = Value::Object(members.into_iter().collect());
                let mut text = if pretty {
                    serde_json::to_string_pretty(&object).unwrap()
                } else {
                    serde_json::to_string(&object).unwrap()
                };
                if go {
                    text = go_escaped(&text);
                }
                let taken = agrees(&text, drop);
                prop_assert!(taken || only_the_tree_tells(&object), "left to the tree: {}", text);
            }
        }
    }
}
