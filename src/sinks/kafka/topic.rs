//! Topic templates: `k8s.{kind}`, `{cluster}.{namespace}.{group}.{kind}`, ...
//!
//! Values are normalized so that every rendered name is a legal Kafka topic name
//! (`[a-zA-Z0-9._-]`, at most 249 characters):
//!
//! | placeholder   | value                                                                 |
//! |---------------|-----------------------------------------------------------------------|
//! | `{kind}`      | the kind, lowercased: `deployment`                                    |
//! | `{group}`     | the API group, `core` for the core (empty) group: `apps`, `core`      |
//! | `{namespace}` | the namespace, `_cluster` for cluster-scoped objects                  |
//! | `{cluster}`   | `cluster` from the config, lowercased                                 |
//!
//! Every value is lowercased and any character outside `[a-z0-9._-]` becomes `_`.

use crate::event::Envelope;

/// Kafka's limit on topic name length.
const MAX_TOPIC_LEN: usize = 249;

/// The `{namespace}` value of cluster-scoped objects. A leading underscore cannot clash
/// with a real namespace: namespaces are DNS labels.
pub const CLUSTER_SCOPED_NAMESPACE: &str = "_cluster";

/// The `{group}` value of the core API group (`v1`).
pub const CORE_GROUP: &str = "core";

/// Why a topic template is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicTemplateError {
    /// The template is empty.
    #[error("topic must not be empty")]
    Empty,
    /// A placeholder this sink does not know.
    #[error(
        "unknown placeholder `{{{0}}}` in topic; known: {{kind}}, {{namespace}}, {{group}}, {{cluster}}"
    )]
    UnknownPlaceholder(String),
    /// A `{` without `}` or a stray `}`.
    #[error("unbalanced `{{` or `}}` in topic")]
    Unbalanced,
    /// Literal text Kafka does not allow in topic names.
    #[error("character {0:?} is not allowed in Kafka topic names (allowed: a-z A-Z 0-9 . _ -)")]
    IllegalCharacter(char),
    /// A fixed topic name longer than Kafka allows.
    #[error("topic is longer than Kafka's limit of {MAX_TOPIC_LEN} characters")]
    TooLong,
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Kind,
    Namespace,
    Group,
}

/// A parsed topic template; `{cluster}` is substituted once, when the sink is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    parts: Vec<Part>,
}

impl TopicTemplate {
    /// Parses `template`, substituting `{cluster}` with `cluster` (normalized).
    ///
    /// # Errors
    /// Unknown placeholders, unbalanced braces, illegal literal characters, an empty or a
    /// too long fixed name.
    pub fn parse(template: &str, cluster: &str) -> Result<Self, TopicTemplateError> {
        if template.is_empty() {
            return Err(TopicTemplateError::Empty);
        }
        let mut parts: Vec<Part> = Vec::new();
        let mut literal = String::new();
        let mut rest = template;
        while let Some(c) = rest.chars().next() {
            match c {
                '{' => {
                    let end = rest.find('}').ok_or(TopicTemplateError::Unbalanced)?;
                    let name = &rest[1..end];
                    if name.contains('{') {
                        return Err(TopicTemplateError::Unbalanced);
                    }
                    let part = match name {
                        "kind" => Part::Kind,
                        "namespace" => Part::Namespace,
                        "group" => Part::Group,
                        // Known when the sink is built; a literal from then on.
                        "cluster" => Part::Literal(normalize(cluster)),
                        other => {
                            return Err(TopicTemplateError::UnknownPlaceholder(other.to_string()));
                        }
                    };
                    match part {
                        Part::Literal(s) => literal.push_str(&s),
                        part => {
                            if !literal.is_empty() {
                                parts.push(Part::Literal(std::mem::take(&mut literal)));
                            }
                            parts.push(part);
                        }
                    }
                    rest = &rest[end + 1..];
                }
                '}' => return Err(TopicTemplateError::Unbalanced),
                c if is_topic_char(c) => {
                    literal.push(c);
                    rest = &rest[c.len_utf8()..];
                }
                c => return Err(TopicTemplateError::IllegalCharacter(c)),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if let [Part::Literal(fixed)] = parts.as_slice()
            && fixed.len() > MAX_TOPIC_LEN
        {
            return Err(TopicTemplateError::TooLong);
        }
        Ok(Self { parts })
    }

    /// Checks a template's syntax without knowing the cluster (for `lookout check`).
    ///
    /// # Errors
    /// As [`TopicTemplate::parse`].
    pub fn check(template: &str) -> Result<(), TopicTemplateError> {
        Self::parse(template, "cluster").map(|_| ())
    }

    /// True when every event goes to the same topic.
    pub fn is_fixed(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The topic of `e`.
    pub fn render(&self, e: &Envelope) -> String {
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Kind => push_normalized(&mut out, &e.kind),
                Part::Namespace => match &e.namespace {
                    Some(ns) if !ns.is_empty() => push_normalized(&mut out, ns),
                    _ => out.push_str(CLUSTER_SCOPED_NAMESPACE),
                },
                Part::Group => match e.group() {
                    "" => out.push_str(CORE_GROUP),
                    g => push_normalized(&mut out, g),
                },
            }
        }
        // Kafka refuses longer names; cutting keeps the message deliverable and the name
        // stable per object type (the tail is usually the least specific part).
        if out.len() > MAX_TOPIC_LEN {
            out.truncate(MAX_TOPIC_LEN);
        }
        out
    }
}

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn push_normalized(out: &mut String, value: &str) {
    out.extend(value.chars().map(|c| {
        if is_topic_char(c) {
            c.to_ascii_lowercase()
        } else {
            '_'
        }
    }));
}

fn normalize(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    push_normalized(&mut s, value);
    s
}
