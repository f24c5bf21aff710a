//! The agent's configuration: built-in defaults < YAML file < `LOOKOUT_*` environment.
//!
//! Every struct here is exactly what a user can write: `deny_unknown_fields`, camelCase keys,
//! a doc on every field, defaults as small named functions. [`Config::load`] decodes a file
//! into a [`Config`] (or an [`Error`] naming the key path, so `main` can exit 2);
//! [`Plan::compile`] then checks and builds everything in one pass.

pub mod decode;
mod error;
mod expand;
pub mod plan;
mod yaml;

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format};
use figment::value::{Tag, Value};
use serde::{Deserialize, Serialize};

pub use error::{Error, ErrorKind, Errors, join, render};
pub use expand::{ExpandError, expand_str};
pub use plan::Plan;
pub use yaml::Yaml;

use crate::event::transform::{ShapeConfig, TransformConfig};
use crate::informer::{InitialList, WatchConfig};
use crate::leader::LeaderElectionConfig;
use crate::router::RouteConfig;
use crate::server::ServerConfig;
use crate::sinks::SinkConfig;
use crate::state::StateConfig;

/// The whole configuration file.
///
/// Decoded by [`Config::decode`]: its derived `Deserialize` covers every key but `sinks`,
/// `routes` and `transforms`, whose entries split their keys between structs (see
/// [`decode`]) and are decoded with their full key paths there.
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
    #[serde(default, skip_deserializing)]
    pub sinks: Vec<SinkConfig>,
    /// Which sinks get which events; without routes every event goes to every sink.
    #[serde(default, skip_deserializing, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// How watches are kept alive (every informer).
    #[serde(default)]
    pub watch: WatchConfig,
    /// Transforms applied to every object before it is cached and diffed.
    #[serde(default, skip_deserializing)]
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
    /// How the current objects are listed, at start and after a 410 Gone: `auto` (a
    /// streaming list, paginated lists once the server refuses one), `stream` or `paginate`.
    #[serde(default)]
    pub initial_list: InitialList,
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

/// Every camelCase key of the config, from the structs' own serde field names, so
/// `LOOKOUT_A__B` environment overrides (which arrive without case: environment variable
/// names are conventionally upper case) find their key.
fn camel_keys() -> &'static [&'static str] {
    static KEYS: OnceLock<Vec<&'static str>> = OnceLock::new();
    KEYS.get_or_init(|| {
        use crate::router::{Condition, NamespaceMatch, RouteTransforms};
        use crate::sinks::{file, kafka, options, util, webhook};
        use decode::fields_of as f;
        let structs = [
            f::<Config>(),
            f::<ResourceConfig>(),
            f::<WatchConfig>(),
            f::<ShutdownConfig>(),
            f::<LogConfig>(),
            f::<TransformConfig>(),
            f::<ShapeConfig>(),
            f::<crate::event::transform::RedactRule>(),
            f::<StateConfig>(),
            f::<LeaderElectionConfig>(),
            f::<ServerConfig>(),
            f::<crate::server::ReadinessConfig>(),
            f::<crate::server::CacheApiConfig>(),
            f::<options::SinkOptions>(),
            f::<util::DeadLetterConfig>(),
            f::<file::FileSinkConfig>(),
            f::<webhook::WebhookSinkConfig>(),
            f::<webhook::TlsConfig>(),
            f::<webhook::WebhookBatchConfig>(),
            f::<webhook::ValueFrom>(),
            f::<kafka::KafkaSinkConfig>(),
            f::<RouteConfig>(),
            f::<NamespaceMatch>(),
            f::<Condition>(),
            f::<RouteTransforms>(),
        ];
        let mut keys: Vec<&'static str> = structs
            .concat()
            .into_iter()
            .filter(|k| k.chars().any(|c| c.is_ascii_uppercase()))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    })
}

fn restore_case(segment: &str) -> String {
    camel_keys()
        .iter()
        .find(|k| k.eq_ignore_ascii_case(segment))
        .map(|k| k.to_string())
        .unwrap_or_else(|| segment.to_ascii_lowercase())
}

/// Environment variables with the `LOOKOUT_` prefix that are CLI options, not config keys.
const NON_CONFIG_ENV: &[&str] = &["CONFIG", "LOG"];

impl Config {
    /// Loads `path` (optional) merged over the defaults and under the environment and
    /// expands `${VAR}` references. [`Plan::compile`] checks the rest.
    ///
    /// # Errors
    /// An [`Error`] naming the key path of the first problem found.
    pub fn load(path: Option<&Path>) -> Result<Config, Error> {
        Self::load_with_env(path, &|name| std::env::var(name).ok(), true)
    }

    /// As [`Config::load`], with an explicit environment lookup (tests) and the option to skip
    /// `LOOKOUT_*` overrides.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn load_with_env(
        path: Option<&Path>,
        lookup: &dyn Fn(&str) -> Option<String>,
        env_overrides: bool,
    ) -> Result<Config, Error> {
        let source = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| {
                    Error::new(
                        "",
                        ErrorKind::ReadFile {
                            path: path.to_path_buf(),
                            source,
                        },
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
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_yaml_str(text: &str) -> Result<Config, Error> {
        Self::from_source(Some(("<inline>", text)), &|n| std::env::var(n).ok(), false)
    }

    fn from_source(
        source: Option<(&str, &str)>,
        lookup: &dyn Fn(&str) -> Option<String>,
        env_overrides: bool,
    ) -> Result<Config, Error> {
        let mut figment = Figment::new();
        if let Some((name, text)) = source {
            // Parse errors are reported with the source name; the data then merges like
            // any other figment provider.
            let provider = Yaml::string(text);
            use figment::Provider;
            provider.data().map_err(|e| {
                Error::new(
                    "",
                    ErrorKind::Yaml {
                        source_name: name.to_string(),
                        message: e.to_string(),
                    },
                )
            })?;
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
        let mut merged: Value = figment.extract().map_err(decode::from_figment)?;
        expand::expand_value(&mut merged, &mut Vec::new(), lookup)
            .map_err(|(path, e)| Error::new(render_dotted(&path), e))?;
        Self::decode(&merged)
    }

    /// Decodes the merged tree: everything but `sinks`, `routes` and `transforms` in one
    /// serde pass, then those, entry by entry, with their keys split between structs.
    ///
    /// # Errors
    /// The first problem, at its full key path.
    pub fn decode(tree: &Value) -> Result<Config, Error> {
        let mut rest = match tree {
            // An empty file is an empty config (which then fails its checks by key path).
            Value::Empty(..) => figment::value::Dict::new(),
            other => decode::as_dict(other, "")?.clone(),
        };
        let sinks = rest.remove("sinks");
        let routes = rest.remove("routes");
        let transforms = rest.remove("transforms");
        let mut config: Config = decode::decode(&Value::Dict(Tag::Default, rest), "")?;
        if let Some(v) = sinks {
            config.sinks = list(&v, "sinks", SinkConfig::decode)?;
        }
        if let Some(v) = routes {
            config.routes = list(&v, "routes", RouteConfig::decode)?;
        }
        if let Some(v) = transforms {
            let (shape, mut own): (ShapeConfig, TransformConfig) =
                decode::decode_split(&v, "transforms", &[])?;
            own.shape = shape;
            config.transforms = own;
        }
        Ok(config)
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
        || k == "redactionkey"
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

/// Decodes each entry of the sequence at `at` with `entry`.
fn list<T>(
    value: &Value,
    at: &str,
    entry: impl Fn(&Value, &str) -> Result<T, Error>,
) -> Result<Vec<T>, Error> {
    match value {
        Value::Array(_, items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| entry(v, &format!("{at}[{i}]")))
            .collect(),
        Value::Empty(..) => Ok(Vec::new()),
        _ => Err(Error::new(
            at,
            ErrorKind::Type("expected a sequence".into()),
        )),
    }
}

/// `sinks.0.type` → `sinks[0].type`.
fn render_dotted(dotted: &str) -> String {
    let parts: Vec<String> = dotted.split('.').map(str::to_string).collect();
    render(&parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads and compiles `yaml`; the first error of either step.
    fn parse(yaml: &str) -> Result<Plan, Error> {
        let config = Config::from_yaml_str(yaml)?;
        Plan::compile(config).map_err(|mut e| e.0.remove(0))
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
        let c = parse(MINIMAL).unwrap().config;
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
        assert!(e.to_string().contains("carrier-pigeon"), "{e}");
        assert!(e.to_string().contains("stdout"), "{e}");
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
        assert!(e.to_string().contains("string"), "{e}");
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
        assert!(e.to_string().contains("NODE_NAME"), "{e}");
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
    fn the_redaction_key_is_masked_in_the_printed_config() {
        let c = parse(&format!(
            "{MINIMAL}transforms:\n  redactionKey: do-not-print-me-0123456789\n"
        ))
        .unwrap();
        let out = c.describe();
        assert!(!out.contains("do-not-print-me"), "{out}");
        assert!(out.contains("redactionKey: '***'"), "{out}");
    }

    #[test]
    fn empty_or_blank_tokens_and_keys_are_config_errors_naming_the_key() {
        for token in ["''", "'   '", "'${LOOKOUT_TEST_SURELY_UNSET_TOKEN:-}'"] {
            let e = parse(&format!(
                "{MINIMAL}server:\n  cache:\n    enabled: true\n    token: {token}\n"
            ))
            .unwrap_err();
            assert_eq!(e.path, "server.cache.token", "{token}: {e}");
        }
        let e = parse(&format!("{MINIMAL}transforms:\n  redactionKey: ' '\n")).unwrap_err();
        assert_eq!(e.path, "transforms.redactionKey", "{e}");
        let e = parse(&format!(
            "{MINIMAL}transforms:\n  secretKinds:\n    - {{group: x.io, kind: K, paths: [nope]}}\n"
        ))
        .unwrap_err();
        assert_eq!(e.path, "transforms.secretKinds[0].paths[0]", "{e}");
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
        assert!(e.to_string().contains("LOOKOUT_TEST_UNSET_TOKEN"), "{e}");
        let plan = parse(&yaml.replace("LOOKOUT_TEST_UNSET_TOKEN", "PATH")).unwrap();
        let out = plan.describe();
        assert!(!out.contains("s3cr3t") && !out.contains("k3y"), "{out}");
        assert!(out.contains("env: PATH"), "{out}");
    }

    #[test]
    fn every_problem_is_reported_at_once_each_at_its_path() {
        let yaml = "cluster: ''\nresources: [{apiVersion: a/b/c, kind: Pod}]\nsinks:\n  \
                    - {name: a, type: stdout, queueCapacity: 0}\n  \
                    - {name: a, type: file, path: /nonexistent-dir/x.jsonl}\n\
                    routes: [{sinks: [nope]}]\ntransforms: {dropPaths: [x]}\n";
        let config = Config::from_yaml_str(yaml).unwrap();
        let paths: Vec<String> = Plan::compile(config)
            .err()
            .unwrap()
            .0
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            [
                "cluster",
                "resources[0].apiVersion",
                "transforms.dropPaths[0]",
                "sinks[0].queueCapacity",
                "sinks[1].name",
                "sinks[1].path",
                "routes[0].sinks[0]",
            ]
        );
    }

    #[test]
    fn environment_override_keys_come_from_the_structs() {
        let keys = camel_keys();
        for k in [
            "apiVersion",
            "gracePeriod",
            "dropManagedFields",
            "keepPaths",
            "leaderElection",
            "renewDeadline",
            "queueCapacity",
            "deadLetter",
            "cloudEventsMode",
            "maxEvents",
            "insecureSkipVerify",
            "valueFrom",
            "maxSilence",
            "ignorePaths",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        assert!(
            keys.iter()
                .all(|k| k.chars().any(|c| c.is_ascii_uppercase()))
        );
    }

    #[test]
    fn every_camel_case_key_of_the_annotated_example_can_be_overridden() {
        let text = include_str!("../../config/lookout.yaml");
        let tree: serde_json::Value = serde_yaml_ng::from_str(text).unwrap();
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        out.push(k.clone());
                        walk(v, out);
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut keys = Vec::new();
        walk(&tree, &mut keys);
        for k in keys.iter().filter(|k| {
            k.starts_with(|c: char| c.is_ascii_lowercase())
                && k.chars().any(|c| c.is_ascii_uppercase())
        }) {
            assert!(camel_keys().contains(&k.as_str()), "`{k}`");
        }
    }
}
