//! From the merged configuration tree to typed structs, with every error at its full key path.
//!
//! serde's `flatten` cannot be combined with `deny_unknown_fields`, and whatever serde buffers
//! (flattened or internally tagged structs) loses the key path of errors inside it. Entries
//! whose keys belong to two structs (a sink's shared options and its type's own options; the
//! transforms every transform list has and those only the global or a route list has) are
//! therefore decoded in two passes over the tree: the keys are split by the field names serde
//! derived for the shared struct ([`fields_of`]), and each half is decoded on its own with
//! `deny_unknown_fields`, so a typo is still refused, with the keys of both halves as the
//! choices, and an error inside either half keeps its path.

use std::fmt;

use figment::value::{Dict, Tag, Value};
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

use super::error::{Error, ErrorKind, render};

/// Decodes `T` from `value`, which sits at key path `at`.
///
/// # Errors
/// The first problem serde finds, at `at` plus the path inside `value`.
pub fn decode<T: DeserializeOwned>(value: &Value, at: &str) -> Result<T, Error> {
    value
        .deserialize::<T>()
        .map_err(|e| from_figment(e).within(at))
}

/// Decodes a map whose keys are split between `S` (the options several kinds of entry share)
/// and `O` (this entry's own options); keys in `skip` (e.g. a `type` tag already read) belong
/// to neither.
///
/// # Errors
/// As [`decode`]; an unknown key lists the keys of `S` and `O` as the choices.
pub fn decode_split<S: DeserializeOwned, O: DeserializeOwned>(
    value: &Value,
    at: &str,
    skip: &[&str],
) -> Result<(S, O), Error> {
    let dict = as_dict(value, at)?;
    let shared_keys = fields_of::<S>();
    let (mut shared, mut own) = (Dict::new(), Dict::new());
    for (key, v) in dict {
        if skip.contains(&key.as_str()) {
            continue;
        }
        let half = if shared_keys.contains(&key.as_str()) {
            &mut shared
        } else {
            &mut own
        };
        half.insert(key.clone(), v.clone());
    }
    let s = decode::<S>(&Value::Dict(Tag::Default, shared), at)?;
    let o = decode::<O>(&Value::Dict(Tag::Default, own), at).map_err(|mut e| {
        if let ErrorKind::UnknownKey { expected, .. } = &mut e.kind {
            expected.splice(0..0, shared_keys.iter().map(|k| k.to_string()));
        }
        e
    })?;
    Ok((s, o))
}

/// `value` as a map, or an error saying what it is instead.
///
/// # Errors
/// `value` is not a map.
pub fn as_dict<'v>(value: &'v Value, at: &str) -> Result<&'v Dict, Error> {
    value.as_dict().ok_or_else(|| {
        Error::new(
            at,
            ErrorKind::Type(format!("expected a map, found {}", describe(value))),
        )
    })
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::String(..) | Value::Char(..) => "a string",
        Value::Bool(..) => "a boolean",
        Value::Num(..) => "a number",
        Value::Empty(..) => "nothing",
        Value::Dict(..) => "a map",
        Value::Array(..) => "a sequence",
    }
}

/// A figment error as a config [`Error`]; its path is relative to the decoded value.
pub fn from_figment(err: figment::Error) -> Error {
    use figment::error::Kind;
    let mut path = err.path.clone();
    let kind = match err.kind {
        // figment's path already ends with the unknown key.
        Kind::UnknownField(key, expected) => ErrorKind::UnknownKey {
            key,
            expected: expected.iter().map(|s| s.to_string()).collect(),
        },
        Kind::MissingField(field) => {
            if path.last().map(String::as_str) != Some(field.as_ref()) {
                path.push(field.to_string());
            }
            ErrorKind::MissingKey
        }
        Kind::UnknownVariant(value, expected) => ErrorKind::UnknownValue {
            value,
            expected: expected.iter().map(|s| s.to_string()).collect(),
        },
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            ErrorKind::Type(format!("expected {expected}, found {actual}"))
        }
        other => ErrorKind::Type(other.to_string()),
    };
    Error::new(render(&path), kind)
}

/// The field names serde derived for struct `T` (its `Deserialize` asks the deserializer
/// for a struct with these fields): the keys a user can write, from the struct itself.
/// Empty for anything that is not a derived struct.
pub fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    match T::deserialize(FieldProbe) {
        Err(Probed(Some(fields))) => fields,
        _ => &[],
    }
}

/// A deserializer that only answers "which fields?" and then stops.
struct FieldProbe;

/// What [`FieldProbe`] found (its "error", to stop deserializing).
#[derive(Debug)]
struct Probed(Option<&'static [&'static str]>);

impl fmt::Display for Probed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field probe")
    }
}

impl std::error::Error for Probed {}

impl de::Error for Probed {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Probed(None)
    }
}

impl<'de> Deserializer<'de> for FieldProbe {
    type Error = Probed;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Probed> {
        Err(Probed(None))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Probed> {
        Err(Probed(Some(fields)))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Shared {
        name: String,
        #[serde(default)]
        queue_capacity: usize,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Own {
        url: String,
        #[serde(default)]
        #[allow(dead_code)]
        tls: Tls,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Tls {
        #[allow(dead_code)]
        ca_file: Option<String>,
    }

    fn tree(yaml: &str) -> Value {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn fields_come_from_the_derived_struct() {
        assert_eq!(fields_of::<Shared>(), ["name", "queueCapacity"]);
        assert!(fields_of::<String>().is_empty());
    }

    #[test]
    fn split_keys_go_to_their_half() {
        let v = tree("{name: a, queueCapacity: 3, url: 'http://x', type: webhook}");
        let (s, o): (Shared, Own) = decode_split(&v, "sinks[0]", &["type"]).unwrap();
        assert_eq!((s.name.as_str(), s.queue_capacity), ("a", 3));
        assert_eq!(o.url, "http://x");
    }

    #[test]
    fn a_typo_is_refused_with_the_keys_of_both_halves() {
        let v = tree("{name: a, url: 'http://x', colour: red}");
        let e = decode_split::<Shared, Own>(&v, "sinks[0]", &[]).unwrap_err();
        assert_eq!(e.path, "sinks[0].colour", "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("name") && msg.contains("queueCapacity") && msg.contains("url"),
            "{msg}"
        );
    }

    #[test]
    fn errors_deep_in_a_half_keep_their_path() {
        let v = tree("{name: a, url: 'http://x', tls: {caFile: [1]}}");
        let e = decode_split::<Shared, Own>(&v, "sinks[2]", &[]).unwrap_err();
        assert_eq!(e.path, "sinks[2].tls.caFile", "{e}");
        let v = tree("{name: a, url: 'http://x', tls: {cafile: x}}");
        let e = decode_split::<Shared, Own>(&v, "sinks[2]", &[]).unwrap_err();
        assert_eq!(e.path, "sinks[2].tls.cafile", "{e}");
        let v = tree("{url: 'http://x'}");
        let e = decode_split::<Shared, Own>(&v, "sinks[2]", &[]).unwrap_err();
        assert_eq!(e.path, "sinks[2].name", "{e}");
    }
}
