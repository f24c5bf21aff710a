//! The agent's configuration: built-in defaults < YAML file < `LOOKOUT_*` environment.
//!
//! Every struct here is exactly what a user can write: `deny_unknown_fields`, camelCase keys,
//! a doc on every field, defaults as small named functions. `load` turns a file into a
//! validated [`Config`] or a [`ConfigError`] that names the key path, so `main` can exit 2.

mod expand;
mod yaml;

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized};
use serde::{Deserialize, Serialize};

pub use expand::{ExpandError, expand_str};
pub use yaml::Yaml;

use crate::event::transform::{ObjectTransform, TransformConfig, TransformError};
use crate::leader::LeaderElectionConfig;
use crate::router::{Route, RouteConfig};
use crate::server::ServerConfig;
use crate::sinks::SinkConfig;
use crate::state::StateConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Name of the cluster, copied into every envelope (`cluster`).
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// The resources to watch; one shared informer per distinct entry.
    #[serde(default)]
    pub resources: Vec<ResourceConfig>,
    /// Where change events go. At least one.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    /// Which sinks get which events; without routes every event goes to every sink.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// Transforms applied to every object before it is cached and diffed.
    #[serde(default)]
    pub transforms: TransformConfig,
    /// Where delivered state is kept across restarts.
    #[serde(default)]
    pub state: StateConfig,
    /// Several replicas, one forwarding (Deployment mode).
    #[serde(default)]
    pub leader_election: LeaderElectionConfig,
    /// The ops HTTP server (metrics, probes).
    #[serde(default)]
    pub server: ServerConfig,
    /// Shutdown behaviour.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// One watched resource type and the server-side filters of its list+watch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceConfig {
    /// `v1`, `apps/v1`, `example.com/v1alpha1`, ...
    pub api_version: String,
    /// The kind, e.g. `Deployment`.
    pub kind: String,
    /// Only this namespace; all namespaces when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Kubernetes label selector sent to the API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// Kubernetes field selector sent to the API server (`${ENV}` expanded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_selector: Option<String>,
}

/// What happens on SIGTERM / Ctrl-C.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ShutdownConfig {
    /// How long sinks get to flush their queues before the process exits anyway.
    /// Well under Kubernetes' default 30 s termination grace period.
    #[serde(default = "default_grace_period", with = "humantime_serde")]
    pub grace_period: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_period: default_grace_period(),
        }
    }
}

/// Log output (always stderr; stdout belongs to the stdout sink).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogConfig {
    /// `text` for people, `json` for log collectors.
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `lookout=debug,kube=info`; `RUST_LOG` wins.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

fn default_cluster() -> String {
    "default".to_string()
}
fn default_grace_period() -> Duration {
    Duration::from_secs(10)
}
fn default_log_level() -> String {
    "info".to_string()
}

/// A configuration that cannot be used, with the key path at fault.
#[derive(Debug, thiserror::Error)]
#[error("config error at `{path}`: {message}")]
pub struct ConfigError {
    /// Where in the config, e.g. `sinks[0].type` (empty for the whole file).
    pub path: String,
    /// What was wrong and what was expected.
    pub message: String,
}

impl ConfigError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every camelCase key of the config, so `LOOKOUT_A__B` environment overrides (which arrive
/// without case) find their key: environment variable names are conventionally upper case.
const CAMEL_KEYS: &[&str] = &[
    "apiVersion",
    "labelSelector",
    "fieldSelector",
    "gracePeriod",
    "dropManagedFields",
    "redactSecrets",
    "ignorePaths",
    "includeOld",
    "changedBy",
    "dropPaths",
    "leaderElection",
    "leaseName",
    "leaseNamespace",
    "leaseDuration",
    "renewDeadline",
    "retryPeriod",
    "apiVersions",
    "keepPaths",
    "redactionKey",
    "queueCapacity",
    "maxEvents",
    "maxBytes",
    "maxWait",
    "deadLetter",
    "caFile",
    "maxSilence",
    "certFile",
    "keyFile",
    "insecureSkipVerify",
    "cloudEventsMode",
    "valueFrom",
];

fn restore_case(segment: &str) -> String {
    CAMEL_KEYS
        .iter()
        .find(|k| k.eq_ignore_ascii_case(segment))
        .map(|k| k.to_string())
        .unwrap_or_else(|| segment.to_ascii_lowercase())
}

/// Environment variables with the `LOOKOUT_` prefix that are CLI options, not config keys.
const NON_CONFIG_ENV: &[&str] = &["CONFIG", "LOG"];

impl Config {
    /// Loads `path` (optional) merged over the defaults and under the environment, expands
    /// `${VAR}` references and validates the result.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path of the first problem found.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, &|name| std::env::var(name).ok(), true)
    }

    /// As [`Config::load`], with an explicit environment lookup (tests) and the option to skip
    /// `LOOKOUT_*` overrides.
    pub fn load_with_env(
        path: Option<&Path>,
        lookup: &dyn Fn(&str) -> Option<String>,
        env_overrides: bool,
    ) -> Result<Config, ConfigError> {
        let source = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new(
                        "",
                        format!("cannot read config file {}: {e}", path.display()),
                    )
                })?;
                Some((path.display().to_string(), text))
            }
            None => None,
        };
        Self::from_source(
            source.as_ref().map(|(n, t)| (n.as_str(), t.as_str())),
            lookup,
            env_overrides,
        )
    }

    /// Parses a YAML string (tests, the embedded demo config) without environment overrides.
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        Self::from_source(Some(("<inline>", text)), &|n| std::env::var(n).ok(), false)
    }

    fn from_source(
        source: Option<(&str, &str)>,
        lookup: &dyn Fn(&str) -> Option<String>,
        env_overrides: bool,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some((name, text)) = source {
            // Parse errors are reported with the source name; the data then merges like
            // any other figment provider.
            let provider = Yaml::string(text);
            use figment::Provider;
            provider
                .data()
                .map_err(|e| ConfigError::new("", format!("{name}: invalid YAML: {e}")))?;
            figment = figment.merge(provider);
        }
        if env_overrides {
            figment = figment.merge(
                Env::prefixed("LOOKOUT_")
                    .ignore(NON_CONFIG_ENV)
                    .split("__")
                    .map(|key| {
                        key.as_str()
                            .split('.')
                            .map(restore_case)
                            .collect::<Vec<_>>()
                            .join(".")
                            .into()
                    })
                    // Last: every other builder method resets it to `true`.
                    .lowercase(false),
            );
        }
        let mut merged: figment::value::Value = figment.extract().map_err(figment_error)?;
        expand::expand_value(&mut merged, &mut Vec::new(), lookup)
            .map_err(|(path, e)| ConfigError::new(render_path_str(&path), e.to_string()))?;
        let config: Config = Figment::from(Serialized::defaults(merged))
            .extract()
            .map_err(figment_error)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: cross-field rules and values with their own syntax.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster.trim().is_empty() {
            return Err(ConfigError::new("cluster", "must not be empty"));
        }
        if self.resources.is_empty() {
            return Err(ConfigError::new(
                "resources",
                "at least one resource to watch is required",
            ));
        }
        for (i, r) in self.resources.iter().enumerate() {
            let at = |k: &str| format!("resources[{i}].{k}");
            if r.kind.is_empty() {
                return Err(ConfigError::new(at("kind"), "must not be empty"));
            }
            if r.api_version.is_empty() || r.api_version.split('/').count() > 2 {
                return Err(ConfigError::new(
                    at("apiVersion"),
                    format!(
                        "expected `version` or `group/version`, got `{}`",
                        r.api_version
                    ),
                ));
            }
            if let Some(sel) = &r.label_selector {
                kubesim::selector::LabelSelector::parse(sel)
                    .map_err(|e| ConfigError::new(at("labelSelector"), e.to_string()))?;
            }
            if let Some(sel) = &r.field_selector {
                kubesim::selector::FieldSelector::parse(sel)
                    .map_err(|e| ConfigError::new(at("fieldSelector"), e.to_string()))?;
            }
        }
        if self.sinks.is_empty() {
            return Err(ConfigError::new("sinks", "at least one sink is required"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.sinks.iter().enumerate() {
            if s.name().is_empty() {
                return Err(ConfigError::new(
                    format!("sinks[{i}].name"),
                    "must not be empty",
                ));
            }
            if !names.insert(s.name()) {
                return Err(ConfigError::new(
                    format!("sinks[{i}].name"),
                    format!("duplicate sink name `{}`", s.name()),
                ));
            }
            s.validate()
                .map_err(|e| ConfigError::new(format!("sinks[{i}].{}", e.path), e.message))?;
        }
        self.leader_election
            .validate()
            .map_err(|(k, m)| ConfigError::new(format!("leaderElection.{k}"), m))?;
        let sink_names: Vec<String> = self.sinks.iter().map(|s| s.name().to_string()).collect();
        for (i, r) in self.routes.iter().enumerate() {
            Route::compile(r, i, &sink_names, self.redaction_key().as_bytes())
                .map_err(|e| ConfigError::new(format!("routes[{i}].{}", e.path), e.message))?;
        }
        ObjectTransform::new(&self.transforms, &self.cluster).map_err(|e| {
            let (path, message) = match &e {
                TransformError::Ignore(i, g) => (format!("ignorePaths[{i}]"), g.to_string()),
                TransformError::Shape(s) => {
                    (format!("{}[{}]", s.field, s.index), s.source.to_string())
                }
            };
            ConfigError::new(format!("transforms.{path}"), message)
        })?;
        Ok(())
    }

    /// The key of redaction hashes: `transforms.redactionKey`, else the cluster name.
    pub fn redaction_key(&self) -> String {
        self.transforms
            .redaction_key
            .clone()
            .unwrap_or_else(|| self.cluster.clone())
    }

    /// The effective configuration as YAML with secret values masked, for `lookout check`.
    pub fn to_masked_yaml(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        mask_secrets(&mut value);
        serde_yaml_ng::to_string(&value).unwrap_or_default()
    }
}

/// Keys whose values are credentials wherever they appear.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k.contains("token")
        || k == "authorization"
        || k.ends_with("sasl.password")
}

fn mask_secrets(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if k == "headers"
                    && let serde_json::Value::Object(headers) = v
                {
                    // Header values are often credentials whatever the header is called;
                    // `valueFrom` references (names, paths) stay visible.
                    for value in headers.values_mut().filter(|v| v.is_string()) {
                        *value = serde_json::Value::String("***".into());
                    }
                } else if is_secret_key(k) && !v.is_null() && !v.is_object() {
                    *v = serde_json::Value::String("***".into());
                } else {
                    mask_secrets(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}

/// `sinks.0.type` → `sinks[0].type`.
fn render_path(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if seg.chars().all(|c| c.is_ascii_digit()) && !seg.is_empty() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

fn render_path_str(dotted: &str) -> String {
    let parts: Vec<String> = dotted.split('.').map(str::to_string).collect();
    render_path(&parts)
}

fn figment_error(err: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let mut path = err.path.clone();
    let message = match &err.kind {
        Kind::UnknownField(field, expected) => {
            // figment's path already ends with the unknown key.
            format!(
                "unknown key `{field}`; expected one of: {}",
                expected.join(", ")
            )
        }
        Kind::MissingField(field) => {
            if path.last().map(String::as_str) != Some(field.as_ref()) {
                path.push(field.to_string());
            }
            "missing required key".to_string()
        }
        Kind::UnknownVariant(v, expected) => {
            format!(
                "unknown value `{v}`; expected one of: {}",
                expected.join(", ")
            )
        }
        Kind::InvalidType(actual, expected) => format!("expected {expected}, found {actual}"),
        Kind::InvalidValue(actual, expected) => format!("expected {expected}, found {actual}"),
        other => other.to_string(),
    };
    ConfigError::new(render_path(&path), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str(yaml)
    }

    const MINIMAL: &str = "
cluster: c1
resources:
  - apiVersion: v1
    kind: Pod
sinks:
  - name: out
    type: stdout
";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.cluster, "c1");
        assert!(c.transforms.drop_managed_fields);
        assert!(c.transforms.redact_secrets);
        assert_eq!(c.shutdown.grace_period, Duration::from_secs(10));
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let e = parse(&format!("{MINIMAL}\nbogus: 1\n")).unwrap_err();
        assert_eq!(e.path, "bogus", "{e}");
    }

    #[test]
    fn unknown_resource_key_is_named_with_its_index() {
        let yaml = MINIMAL.replace("kind: Pod", "kind: Pod\n    nmespace: x");
        let e = parse(&yaml).unwrap_err();
        assert_eq!(e.path, "resources[0].nmespace", "{e}");
    }

    #[test]
    fn unknown_sink_type_is_rejected_with_the_choices() {
        let yaml = MINIMAL.replace("type: stdout", "type: carrier-pigeon");
        let e = parse(&yaml).unwrap_err();
        assert!(e.path.starts_with("sinks[0]"), "{e}");
        assert!(e.message.contains("carrier-pigeon"), "{e}");
        assert!(e.message.contains("stdout"), "{e}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let yaml = MINIMAL.replace("    kind: Pod\n", "");
        let e = parse(&yaml).unwrap_err();
        assert_eq!(e.path, "resources[0].kind", "{e}");
    }

    #[test]
    fn wrong_type_names_the_key_and_expectation() {
        let yaml = MINIMAL.replace("cluster: c1", "cluster: [1, 2]");
        let e = parse(&yaml).unwrap_err();
        assert_eq!(e.path, "cluster", "{e}");
        assert!(e.message.contains("string"), "{e}");
    }

    #[test]
    fn bad_label_selector_is_rejected() {
        let yaml = MINIMAL.replace("kind: Pod", "kind: Pod\n    labelSelector: 'app in (a'");
        let e = parse(&yaml).unwrap_err();
        assert_eq!(e.path, "resources[0].labelSelector", "{e}");
    }

    #[test]
    fn field_selector_expands_environment_variables() {
        let yaml = MINIMAL.replace(
            "kind: Pod",
            "kind: Pod\n    fieldSelector: spec.nodeName=${NODE_NAME}",
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, yaml).unwrap();
        let c = Config::load_with_env(
            Some(&file),
            &|n| (n == "NODE_NAME").then(|| "node-7".into()),
            false,
        )
        .unwrap();
        assert_eq!(
            c.resources[0].field_selector.as_deref(),
            Some("spec.nodeName=node-7")
        );
        let e = Config::load_with_env(Some(&file), &|_| None, false).unwrap_err();
        assert_eq!(e.path, "resources[0].fieldSelector", "{e}");
        assert!(e.message.contains("NODE_NAME"), "{e}");
    }

    #[test]
    fn empty_sinks_and_resources_are_rejected() {
        let e = parse("cluster: x\nresources: []\nsinks: []\n").unwrap_err();
        assert_eq!(e.path, "resources");
    }

    #[test]
    fn secrets_are_masked_in_the_printed_config() {
        let mut v = serde_json::json!({"a": {"sasl.password": "hunter2", "token": "t", "x": 1}});
        mask_secrets(&mut v);
        assert_eq!(v["a"]["sasl.password"], "***");
        assert_eq!(v["a"]["token"], "***");
        assert_eq!(v["a"]["x"], 1);
    }

    #[test]
    fn webhook_header_values_and_secret_are_masked_but_references_are_not() {
        let yaml = MINIMAL.replace(
            "    type: stdout\n",
            "    type: stdout\n  - name: hook\n    type: webhook\n    url: https://h/x\n    \
             secret: s3cr3t\n    headers:\n      X-Api-Key: k3y\n      Authorization:\n        \
             valueFrom: {env: LOOKOUT_TEST_UNSET_TOKEN}\n        prefix: 'Bearer '\n",
        );
        let e = parse(&yaml).unwrap_err();
        assert_eq!(e.path, "sinks[1].headers.Authorization", "{e}");
        assert!(e.message.contains("LOOKOUT_TEST_UNSET_TOKEN"), "{e}");
        let c = parse(&yaml.replace("LOOKOUT_TEST_UNSET_TOKEN", "PATH")).unwrap();
        let out = c.to_masked_yaml();
        assert!(!out.contains("s3cr3t") && !out.contains("k3y"), "{out}");
        assert!(out.contains("env: PATH"), "{out}");
    }
}
