//! Label and field selectors with the API server's syntax and semantics.
//!
//! ```
//! use k8s_selector::{LabelSelector, FieldSelector};
//! let sel = LabelSelector::parse("app in (web,api),tier!=db,!legacy").unwrap();
//! let labels = [("app".to_string(), "web".to_string())].into_iter().collect();
//! assert!(sel.matches(&labels));
//! let fs = FieldSelector::parse("spec.nodeName=node-1,status.phase!=Failed").unwrap();
//! let pod = serde_json::json!({"spec": {"nodeName": "node-1"}, "status": {"phase": "Running"}});
//! assert!(fs.matches(&pod, "Pod"));
//! ```

use std::collections::BTreeMap;

use serde_json::Value;

/// A selector string that does not parse; the message follows the API server's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A label selector requirement is malformed.
    #[error("unable to parse requirement: {0}")]
    Label(String),
    /// A field selector term is malformed.
    #[error("invalid selector: '{0}'; can't understand '{1}'")]
    Field(String, String),
}

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRequirement {
    /// `key=value` / `key==value`.
    Equals(String, String),
    /// `key!=value` (also true when the key is absent).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)` (also true when the key is absent).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
    /// `key>n` (integer comparison).
    GreaterThan(String, i64),
    /// `key<n` (integer comparison).
    LessThan(String, i64),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    /// All requirements must hold.
    pub requirements: Vec<LabelRequirement>,
}

impl LabelSelector {
    /// Parses the `labelSelector` query syntax.
    pub fn parse(s: &str) -> Result<LabelSelector, SelectorError> {
        let mut p = Parser {
            s: s.as_bytes(),
            i: 0,
            src: s,
        };
        let mut requirements = Vec::new();
        p.ws();
        if p.done() {
            return Ok(LabelSelector { requirements });
        }
        loop {
            requirements.push(p.requirement()?);
            p.ws();
            if p.done() {
                break;
            }
            if !p.eat(b',') {
                return Err(p.err("expected ','"));
            }
            p.ws();
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether the selector selects nothing-in-particular (matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether `labels` satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    /// Matches against `metadata.labels` of a JSON object.
    pub fn matches_object(&self, obj: &Value) -> bool {
        let labels = obj.get("metadata").and_then(|m| m.get("labels"));
        self.matches_with(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
    }

    fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => get(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v),
            LabelRequirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelRequirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::DoesNotExist(k) => get(k).is_none(),
            LabelRequirement::GreaterThan(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            LabelRequirement::LessThan(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    src: &'a str,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn err(&self, why: &str) -> SelectorError {
        SelectorError::Label(format!("{why} at position {} in {:?}", self.i, self.src))
    }
    fn word(&mut self) -> &str {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'/') {
                self.i += 1;
            } else {
                break;
            }
        }
        std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default()
    }
    fn key(&mut self) -> Result<String, SelectorError> {
        let k = self.word().to_string();
        validate_key(&k).map_err(|why| self.err(&why))?;
        Ok(k)
    }
    fn value(&mut self) -> Result<String, SelectorError> {
        let v = self.word().to_string();
        validate_value(&v).map_err(|why| self.err(&why))?;
        Ok(v)
    }
    fn requirement(&mut self) -> Result<LabelRequirement, SelectorError> {
        if self.eat(b'!') {
            self.ws();
            return Ok(LabelRequirement::DoesNotExist(self.key()?));
        }
        let key = self.key()?;
        self.ws();
        match self.peek() {
            None | Some(b',') => Ok(LabelRequirement::Exists(key)),
            Some(b'=') => {
                self.i += 1;
                self.eat(b'=');
                self.ws();
                Ok(LabelRequirement::Equals(key, self.value()?))
            }
            Some(b'!') => {
                self.i += 1;
                if !self.eat(b'=') {
                    return Err(self.err("expected '=' after '!'"));
                }
                self.ws();
                Ok(LabelRequirement::NotEquals(key, self.value()?))
            }
            Some(c @ (b'>' | b'<')) => {
                self.i += 1;
                self.ws();
                let v = self.value()?;
                let n = v.parse::<i64>().map_err(|_| {
                    self.err("for 'Gt', 'Lt' operators, the value must be an integer")
                })?;
                Ok(if c == b'>' {
                    LabelRequirement::GreaterThan(key, n)
                } else {
                    LabelRequirement::LessThan(key, n)
                })
            }
            _ => {
                let op = self.word().to_string();
                let notin = match op.as_str() {
                    "in" => false,
                    "notin" => true,
                    _ => return Err(self.err("found unexpected operator, expected one of '=', '==', '!=', 'in', 'notin', '>', '<'")),
                };
                self.ws();
                if !self.eat(b'(') {
                    return Err(self.err("found '(' expected"));
                }
                let mut vals = Vec::new();
                loop {
                    self.ws();
                    if self.eat(b')') {
                        break;
                    }
                    vals.push(self.value()?);
                    self.ws();
                    if self.eat(b')') {
                        break;
                    }
                    if !self.eat(b',') {
                        return Err(self.err("expected ',' or ')'"));
                    }
                }
                if vals.is_empty() {
                    return Err(self.err("for 'in', 'notin' operators, values set can't be empty"));
                }
                Ok(if notin {
                    LabelRequirement::NotIn(key, vals)
                } else {
                    LabelRequirement::In(key, vals)
                })
            }
        }
    }
}

fn is_name_part(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn validate_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && (p.is_empty()
            || p.len() > 253
            || !p
                .split('.')
                .all(|l| is_name_part(l, 63) && !l.contains('_')))
    {
        return Err(format!(
            "invalid label key {k:?}: prefix part must be a DNS-1123 subdomain"
        ));
    }
    if !is_name_part(name, 63) {
        return Err(format!(
            "invalid label key {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

fn validate_value(v: &str) -> Result<(), String> {
    if v.is_empty() || is_name_part(v, 63) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ))
    }
}

/// One field requirement: `field=value` (`==` too) or `field!=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Field label, e.g. `spec.nodeName`.
    pub field: String,
    /// Value to compare with (unescaped).
    pub value: String,
    /// `!=` rather than `=`.
    pub negated: bool,
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    /// All requirements must hold.
    pub requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parses the `fieldSelector` query syntax (`\` escapes `,`, `=`, `!` and `\`).
    pub fn parse(s: &str) -> Result<FieldSelector, SelectorError> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector { requirements });
        }
        for term in split_unescaped(s, ',') {
            let bad = || SelectorError::Field(s.to_string(), term.clone());
            let (field, value, negated) = if let Some(i) = find_unescaped(&term, "!=") {
                (&term[..i], &term[i + 2..], true)
            } else if let Some(i) = find_unescaped(&term, "==") {
                (&term[..i], &term[i + 2..], false)
            } else if let Some(i) = find_unescaped(&term, "=") {
                (&term[..i], &term[i + 1..], false)
            } else {
                return Err(bad());
            };
            let field = field.trim();
            if field.is_empty() {
                return Err(bad());
            }
            requirements.push(FieldRequirement {
                field: field.to_string(),
                value: unescape(value),
                negated,
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// Whether there are no requirements.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// If the selector pins `metadata.name` to one value, that value (lets the server skip a scan).
    pub fn required_name(&self) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == "metadata.name" && !r.negated)
            .map(|r| r.value.as_str())
    }

    /// Whether `obj` (a full JSON object of Kind `kind`) satisfies every requirement.
    pub fn matches(&self, obj: &Value, kind: &str) -> bool {
        self.requirements
            .iter()
            .all(|r| (field_value(obj, kind, &r.field) == r.value) != r.negated)
    }
}

/// The string value of a field label, as the API server's field-set functions compute it.
pub fn field_value(obj: &Value, kind: &str, field: &str) -> String {
    let path: &str = match (kind, field) {
        // Core Events expose `source` as the reporting component.
        ("Event", "source") => "source.component",
        ("Event", "deprecatedSource") => "deprecatedSource.component",
        _ => field,
    };
    let mut cur = obj;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => {
                // events.k8s.io Events answer the core field names from their own fields.
                return match field.strip_prefix("involvedObject.") {
                    Some(rest) if obj.get("regarding").is_some() => {
                        field_value(obj, kind, &format!("regarding.{rest}"))
                    }
                    _ if field == "source" && obj.get("deprecatedSource").is_some() => {
                        field_value(obj, kind, "deprecatedSource")
                    }
                    // Unset booleans read as "false", like the Go zero value.
                    _ if matches!(field, "spec.unschedulable" | "spec.hostNetwork") => {
                        "false".into()
                    }
                    _ => String::new(),
                };
            }
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut esc = false;
    for c in s.chars() {
        if esc {
            out.last_mut().unwrap().push('\\');
            out.last_mut().unwrap().push(c);
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else if c == sep {
            out.push(String::new());
        } else {
            out.last_mut().unwrap().push(c);
        }
    }
    out
}

fn find_unescaped(s: &str, pat: &str) -> Option<usize> {
    // Walk by characters, not bytes: an escaped character may be several bytes long, and
    // stepping over "one byte after the backslash" would land inside it.
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            chars.next();
            continue;
        }
        if s[i..].starts_with(pat) {
            return Some(i);
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for c in s.chars() {
        if esc {
            out.push(c);
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_supports_every_operator() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("app in (api, web)", true),
            ("app notin (api,web)", false),
            ("missing notin (a)", true),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("n>4,n<6", true),
            ("app=web,tier=back", false),
            ("example.com/role", false),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&l),
                want,
                "{sel}"
            );
        }
    }

    #[test]
    fn malformed_label_selectors_are_rejected() {
        for bad in [
            "app=",
            "=x",
            "app in ()",
            "app in (a",
            "a b",
            "app=web,",
            "app~x",
            "-bad=1",
            "a=b c",
        ] {
            if bad == "app=" {
                // an empty value is legal
                assert!(LabelSelector::parse(bad).is_ok());
                continue;
            }
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_selector_matches_nested_and_special_fields() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert!(
            FieldSelector::parse("metadata.name=p,spec.nodeName==n1")
                .unwrap()
                .matches(&pod, "Pod")
        );
        assert!(
            !FieldSelector::parse("status.phase!=Running")
                .unwrap()
                .matches(&pod, "Pod")
        );
        assert!(
            FieldSelector::parse("spec.nodeName=")
                .unwrap()
                .matches(&json!({}), "Pod")
        );
        let ev = json!({"source": {"component": "kubelet"}, "involvedObject": {"kind": "Pod"}});
        assert!(
            FieldSelector::parse("source=kubelet,involvedObject.kind=Pod")
                .unwrap()
                .matches(&ev, "Event")
        );
        let ev2 = json!({"regarding": {"name": "x"}});
        assert!(
            FieldSelector::parse("involvedObject.name=x")
                .unwrap()
                .matches(&ev2, "Event")
        );
        assert!(FieldSelector::parse("a\\=b=c").unwrap().requirements[0].field == "a\\=b");
        assert!(FieldSelector::parse("nonsense").is_err());
    }

    #[test]
    fn a_backslash_before_a_multibyte_character_is_an_escape_not_a_panic() {
        let s = FieldSelector::parse("a\\é=b").unwrap();
        assert_eq!(s.requirements[0].field, "a\\é");
        assert_eq!(s.requirements[0].value, "b");
        assert!(FieldSelector::parse("\\€").is_err());
        assert!(FieldSelector::parse("x=\\日本").is_ok());
        assert!(LabelSelector::parse("a\\é=b").is_err());
    }
}
