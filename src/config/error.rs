//! The one error type of configuration: a key path and what is wrong there.
//!
//! Every part of the agent that reads configuration (the loader, sinks, routes, transforms,
//! the lease, the plan that resolves kinds with the API server) reports through
//! [`Error`], so `main` can print one line per problem and exit 2. Runtime failures keep
//! their own typed errors in their modules.

use std::fmt;
use std::path::PathBuf;

/// A configuration that cannot be used, with the key path at fault.
#[derive(Debug, thiserror::Error)]
#[error("config error at `{path}`: {kind}")]
pub struct Error {
    /// Where in the config, e.g. `sinks[0].tls.caFile` (empty for the whole file).
    pub path: String,
    /// What is wrong there.
    #[source]
    pub kind: ErrorKind,
}

/// What is wrong at a key path.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML.
    #[error("{source_name}: invalid YAML: {message}")]
    Yaml {
        /// The file (or `<inline>`).
        source_name: String,
        /// The parser's message.
        message: String,
    },
    /// A key the structure does not have (a typo, or a key of another sink type).
    #[error("unknown key `{key}`; expected one of: {}", expected.join(", "))]
    UnknownKey {
        /// The key as written.
        key: String,
        /// The keys allowed here.
        expected: Vec<String>,
    },
    /// A required key is absent.
    #[error("missing required key")]
    MissingKey,
    /// A value outside a fixed set of choices.
    #[error("unknown value `{value}`; expected one of: {}", expected.join(", "))]
    UnknownValue {
        /// The value as written.
        value: String,
        /// The values allowed here.
        expected: Vec<String>,
    },
    /// A value of the wrong type or shape (`expected a string, found a sequence`).
    #[error("{0}")]
    Type(String),
    /// A `${VAR}` reference cannot be expanded.
    #[error(transparent)]
    Expand(#[from] super::ExpandError),
    /// The value must not be empty.
    #[error("must not be empty")]
    Empty,
    /// A list needs at least one entry.
    #[error("at least one {0} is required")]
    NoneGiven(&'static str),
    /// A name used twice where names must be unique.
    #[error("duplicate {what} name `{name}`")]
    Duplicate {
        /// What is named (`sink`).
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A reference to a sink that is not configured.
    #[error("unknown sink `{name}`; configured sinks: {}", known.join(", "))]
    UnknownSink {
        /// The name referenced.
        name: String,
        /// The configured sink names.
        known: Vec<String>,
    },
    /// A number, duration or string outside what the key accepts.
    #[error("{0}")]
    Invalid(String),
    /// Settings that contradict each other, or a key that does not apply here.
    #[error("{0}")]
    Conflict(String),
    /// A JSON Pointer glob that does not parse.
    #[error(transparent)]
    Glob(#[from] crate::event::pointer::GlobError),
    /// A label or field selector that does not parse.
    #[error(transparent)]
    Selector(#[from] k8s_selector::SelectorError),
    /// A regular expression that does not compile.
    #[error("invalid regex: {0}")]
    Regex(#[from] regex::Error),
    /// An environment variable a value refers to (`valueFrom.env`) is not set.
    #[error("environment variable `{0}` is not set")]
    EnvUnset(String),
    /// A file a value refers to cannot be read or is not what the key expects.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A client library refused the settings (librdkafka, the HTTP client); its message.
    #[error("{0}")]
    Client(String),
    /// The API server answered that it does not serve a kind, or refused how it is watched.
    #[error(transparent)]
    Resource(Box<crate::informer::InformerError>),
    /// The ops server cannot listen on the address.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, kind: impl Into<ErrorKind>) -> Self {
        Self {
            path: path.into(),
            kind: kind.into(),
        }
    }

    /// The same error below `prefix` (`tls.caFile` → `sinks[0].tls.caFile`).
    pub fn within(mut self, prefix: &str) -> Self {
        self.path = join(prefix, &self.path);
        self
    }
}

/// Every problem found in one pass over a configuration, in key order.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<Error>);

impl Errors {
    /// Records `result`'s error, if any, and passes its value on.
    pub fn take<T>(&mut self, result: Result<T, Error>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }

    /// Records every error of `result`, if any, and passes its value on.
    pub fn absorb<T>(&mut self, result: Result<T, Errors>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.extend(e.0);
                None
            }
        }
    }

    /// Prefixes the path of every error recorded so far with `prefix`.
    pub fn within(mut self, prefix: &str) -> Self {
        self.0 = self.0.into_iter().map(|e| e.within(prefix)).collect();
        self
    }

    /// Records an error.
    pub fn push(&mut self, e: Error) {
        self.0.push(e);
    }

    /// `Ok(value)` when nothing was recorded.
    pub fn finish<T>(self, value: impl FnOnce() -> T) -> Result<T, Errors> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

impl From<Error> for Errors {
    fn from(e: Error) -> Self {
        Errors(vec![e])
    }
}

/// `prefix` + `key` as a key path: `sinks[0]` + `url` → `sinks[0].url`, `sinks` + `[0]` →
/// `sinks[0]`; either side may be empty.
pub fn join(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (_, true) => prefix.to_string(),
        _ if key.starts_with('[') => format!("{prefix}{key}"),
        _ => format!("{prefix}.{key}"),
    }
}

/// `["sinks", "0", "type"]` → `sinks[0].type`.
pub fn render(segments: &[String]) -> String {
    segments.iter().fold(String::new(), |out, seg| {
        if !seg.is_empty() && seg.chars().all(|c| c.is_ascii_digit()) {
            format!("{out}[{seg}]")
        } else {
            join(&out, seg)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_with_dots_and_indices_without() {
        assert_eq!(join("sinks[0]", "tls.caFile"), "sinks[0].tls.caFile");
        assert_eq!(join("sinks", "[1]"), "sinks[1]");
        assert_eq!(join("", "cluster"), "cluster");
        assert_eq!(join("transforms", ""), "transforms");
        let segs: Vec<String> = ["routes", "2", "when", "0", "path"]
            .map(String::from)
            .to_vec();
        assert_eq!(render(&segs), "routes[2].when[0].path");
    }
}
