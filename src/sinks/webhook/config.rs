//! What a user can set for `type: webhook`, and turning it into a running [`WebhookSink`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

pub use crate::event::cloudevents::{CloudEventsMode, EventFormat as WebhookFormat};
pub use crate::event::debezium::DebeziumOptions;
use tracing::warn;

use super::encoding::Encoding;
use super::sink::WebhookSink;
use crate::sinks::util::DeadLetterConfig;
use crate::sinks::{Batching, SinkBuildError, SinkConfigError, default_queue_capacity};

/// `type: webhook`: HTTP(S) requests to one URL.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookSinkConfig {
    /// Unique sink name (used in routes, metrics, logs and the dead-letter file name).
    pub name: String,
    /// `http://` or `https://` URL receiving the requests. Redirects are not followed.
    pub url: String,
    /// `POST` (default) or `PUT`.
    #[serde(default)]
    pub method: WebhookMethod,
    /// Extra request headers: a literal string, or `{valueFrom: {env: NAME}}` /
    /// `{valueFrom: {file: /path}}` with an optional `prefix` (e.g. `"Bearer "`), read once
    /// at start. Literal values are masked in `lookout check` output.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, ValueSource>,
    /// Per-request timeout (connect + send + response); a timeout is retried.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// TLS settings for `https://` URLs.
    #[serde(default)]
    pub tls: TlsConfig,
    /// How events are grouped into requests.
    #[serde(default)]
    pub batch: WebhookBatchConfig,
    /// Body format: `envelope` (our JSON, the default), `cloudevents` or `debezium`.
    #[serde(default)]
    pub format: WebhookFormat,
    /// With `format: debezium`: Kafka Connect framing (`schemas: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debezium: Option<DebeziumOptions>,
    /// With `format: cloudevents`: `structured` (default; the event is the body) or
    /// `binary` (attributes in `ce-*` headers, the envelope is the body, one event per
    /// request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_events_mode: Option<CloudEventsMode>,
    /// Shared secret for HMAC-SHA256 request signatures (`X-Lookout-Signature`); a literal,
    /// or `{valueFrom: …}` like a header. No signature when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ValueSource>,
    /// Where events the receiver rejects (4xx) are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterConfig>,
    /// Events the sink's queue holds before the informers wait.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
}

/// HTTP method of the requests.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum WebhookMethod {
    /// `POST`.
    #[default]
    #[serde(alias = "post")]
    #[serde(rename = "POST")]
    Post,
    /// `PUT`.
    #[serde(alias = "put")]
    #[serde(rename = "PUT")]
    Put,
}

/// `tls:` of a webhook sink.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsConfig {
    /// PEM file with CA certificates trusted in addition to the built-in web roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; requires `keyFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `certFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate. For experiments only: logged as a warning at every
    /// start. Prefer `caFile`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// `batch:` of a webhook sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookBatchConfig {
    /// Events per request; `1` sends single JSON objects, more sends JSON arrays (even when
    /// only one event is ready, so receivers always see the same shape). Default 100;
    /// binary CloudEvents mode sends one event per request and allows only 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events: Option<usize>,
    /// A request's events stay under this many envelope bytes (a larger single event is
    /// still sent alone). CloudEvents attributes add a few hundred bytes per event.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// After the first event, wait this long for more before sending; `0s` (default) sends
    /// what is queued at once, so batches only form under load.
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for WebhookBatchConfig {
    fn default() -> Self {
        Self {
            max_events: None,
            max_bytes: default_max_bytes(),
            max_wait: default_max_wait(),
        }
    }
}

/// A header value or secret: literal, or read at start from the environment or a file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ValueSource {
    /// The value itself (`${VAR}` references are expanded when the config is loaded).
    Literal(String),
    /// A reference, resolved when the sink starts.
    From(ValueFrom),
}

/// `{valueFrom: {env: NAME}, prefix: "Bearer "}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ValueFrom {
    /// Where the value comes from.
    pub value_from: ValueRef,
    /// Put in front of the value read (e.g. `"Bearer "` for a token file from a Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// `{env: NAME}` or `{file: /path}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum ValueRef {
    /// An environment variable (e.g. from `secretKeyRef`).
    Env(String),
    /// A file (e.g. a mounted Secret); trailing whitespace and newlines are dropped.
    File(PathBuf),
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_events() -> usize {
    100
}
fn default_max_bytes() -> usize {
    1024 * 1024
}
fn default_max_wait() -> Duration {
    Duration::ZERO
}

/// Headers the sink sets itself; a configured value would be overwritten or contradict them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "x-lookout-signature",
    "x-lookout-timestamp",
];

impl ValueSource {
    /// The value, reading the environment or file it refers to.
    ///
    /// # Errors
    /// A message naming the variable or file when it cannot be read.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            ValueSource::Literal(s) => Ok(s.clone()),
            ValueSource::From(from) => {
                let value = match &from.value_from {
                    ValueRef::Env(name) => std::env::var(name)
                        .map_err(|_| format!("environment variable `{name}` is not set"))?,
                    ValueRef::File(path) => std::fs::read_to_string(path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                        .trim_end()
                        .to_string(),
                };
                Ok(format!("{}{value}", from.prefix.as_deref().unwrap_or("")))
            }
        }
    }
}

/// Everything `build` needs, checked and read from the environment and files.
pub(super) struct Resolved {
    pub url: reqwest::Url,
    pub headers: HeaderMap,
    pub secret: Option<Vec<u8>>,
    pub ca: Vec<reqwest::Certificate>,
    pub identity: Option<reqwest::Identity>,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> SinkConfigError {
    SinkConfigError {
        path: path.into(),
        message: message.into(),
    }
}

fn read_pem(path: &Path, key: &str) -> Result<Vec<u8>, SinkConfigError> {
    std::fs::read(path).map_err(|e| err(key, format!("cannot read {}: {e}", path.display())))
}

impl WebhookSinkConfig {
    /// Events per request after defaults.
    pub fn max_events(&self) -> usize {
        match (self.format, self.cloud_events_mode) {
            (WebhookFormat::Cloudevents, Some(CloudEventsMode::Binary)) => 1,
            _ => self.batch.max_events.unwrap_or_else(default_max_events),
        }
    }

    /// The driver's batching for this sink.
    pub fn batching(&self) -> Batching {
        Batching {
            max_events: self.max_events(),
            max_bytes: self.batch.max_bytes,
            max_wait: self.batch.max_wait,
        }
    }

    pub(super) fn encoding(&self) -> Encoding {
        let array = self.max_events() > 1;
        match (self.format, self.cloud_events_mode.unwrap_or_default()) {
            (WebhookFormat::Envelope, _) => Encoding::Envelope { array },
            (WebhookFormat::Debezium, _) => Encoding::Debezium {
                array,
                encoding: self.debezium.unwrap_or_default().into(),
            },
            (WebhookFormat::Cloudevents, CloudEventsMode::Structured) => {
                Encoding::Structured { array }
            }
            (WebhookFormat::Cloudevents, CloudEventsMode::Binary) => Encoding::Binary,
        }
    }

    /// Checks what serde cannot, including that referenced variables and files exist.
    ///
    /// # Errors
    /// The first problem, with its key path below the sink entry.
    pub fn validate(&self) -> Result<(), SinkConfigError> {
        self.resolve().map(|_| ())
    }

    pub(super) fn resolve(&self) -> Result<Resolved, SinkConfigError> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| err("url", format!("{e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(err(
                "url",
                format!("expected an http:// or https:// URL, got `{}`", self.url),
            ));
        }
        if self.timeout.is_zero() {
            return Err(err("timeout", "must be greater than 0"));
        }
        if self.cloud_events_mode.is_some() && self.format != WebhookFormat::Cloudevents {
            return Err(err(
                "cloudEventsMode",
                "only applies with `format: cloudevents`",
            ));
        }
        crate::sinks::check_debezium_options(
            self.debezium.as_ref(),
            self.format == WebhookFormat::Debezium,
        )?;
        if self.format == WebhookFormat::Cloudevents
            && self.cloud_events_mode == Some(CloudEventsMode::Binary)
            && self.batch.max_events.is_some_and(|n| n != 1)
        {
            return Err(err(
                "batch.maxEvents",
                "binary CloudEvents mode carries one event per request; set 1 or remove it \
                 (or use `cloudEventsMode: structured` for batches)",
            ));
        }
        if self.batch.max_events == Some(0) {
            return Err(err("batch.maxEvents", "must be at least 1"));
        }
        if self.batch.max_bytes == 0 {
            return Err(err("batch.maxBytes", "must be at least 1"));
        }
        if self.queue_capacity == 0 {
            return Err(err("queueCapacity", "must be at least 1"));
        }

        let mut headers = HeaderMap::new();
        for (name, source) in &self.headers {
            let key = format!("headers.{name}");
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| err(&key, format!("`{name}` is not a valid header name")))?;
            if RESERVED_HEADERS.contains(&header.as_str()) || header.as_str().starts_with("ce-") {
                return Err(err(
                    &key,
                    "set by the sink itself (format, signature); remove it",
                ));
            }
            let value = source.resolve().map_err(|m| err(&key, m))?;
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| err(&key, "value contains characters not allowed in a header"))?;
            value.set_sensitive(true);
            headers.append(header, value);
        }

        let secret = match &self.secret {
            Some(source) => {
                let s = source.resolve().map_err(|m| err("secret", m))?;
                if s.is_empty() {
                    return Err(err("secret", "must not be empty"));
                }
                Some(s.into_bytes())
            }
            None => None,
        };

        let mut ca = Vec::new();
        if let Some(path) = &self.tls.ca_file {
            let pem = read_pem(path, "tls.caFile")?;
            ca = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| err("tls.caFile", format!("{}: {e}", path.display())))?;
            if ca.is_empty() {
                return Err(err(
                    "tls.caFile",
                    format!("{}: no PEM certificate found", path.display()),
                ));
            }
        }
        let identity = match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(cert), Some(key)) => {
                let mut pem = read_pem(cert, "tls.certFile")?;
                pem.push(b'\n');
                pem.extend(read_pem(key, "tls.keyFile")?);
                Some(reqwest::Identity::from_pem(&pem).map_err(|e| {
                    err(
                        "tls.certFile",
                        format!("client certificate and key are not usable: {e}"),
                    )
                })?)
            }
            (Some(_), None) => return Err(err("tls.keyFile", "required with `certFile`")),
            (None, Some(_)) => return Err(err("tls.certFile", "required with `keyFile`")),
            (None, None) => None,
        };
        Ok(Resolved {
            url,
            headers,
            secret,
            ca,
            identity,
        })
    }

    /// The running sink.
    ///
    /// # Errors
    /// When the settings are invalid (see [`validate`](Self::validate)) or the HTTP client
    /// cannot be created.
    pub fn build(&self) -> Result<WebhookSink, SinkBuildError> {
        let build_err = |message: String| SinkBuildError {
            name: self.name.clone(),
            message,
        };
        let resolved = self
            .resolve()
            .map_err(|e| build_err(format!("{}: {}", e.path, e.message)))?;
        let mut client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .user_agent(concat!("lookout/", env!("CARGO_PKG_VERSION")))
            // A 301/302 would turn the POST into a body-less GET that "succeeds": events
            // would vanish. Redirects are answered as rejections instead.
            .redirect(reqwest::redirect::Policy::none());
        for cert in resolved.ca.iter().cloned() {
            client = client.add_root_certificate(cert);
        }
        if let Some(identity) = resolved.identity.clone() {
            client = client.identity(identity);
        }
        if self.tls.insecure_skip_verify {
            warn!(
                sink = %self.name,
                url = %self.url,
                "TLS CERTIFICATE VERIFICATION IS DISABLED (tls.insecureSkipVerify): anyone on \
                 the network path can read and forge these requests; use tls.caFile instead"
            );
            client = client.danger_accept_invalid_certs(true);
        }
        let client = client
            .build()
            .map_err(|e| build_err(format!("cannot create the HTTP client: {e}")))?;
        Ok(WebhookSink::new(
            self.name.clone(),
            client,
            self.method,
            resolved,
            self.encoding(),
            self.batching(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<WebhookSinkConfig, SinkConfigError> {
        let yaml = format!("name: hook\nurl: https://example.com/hook\n{extra}");
        let c: WebhookSinkConfig = serde_yaml_ng::from_str(&yaml).map_err(|e| SinkConfigError {
            path: String::new(),
            message: e.to_string(),
        })?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_post_envelopes_in_batches_of_up_to_100() {
        let c = parse("").unwrap();
        assert_eq!(c.method, WebhookMethod::Post);
        assert_eq!(c.format, WebhookFormat::Envelope);
        assert_eq!(c.batching().max_events, 100);
        assert_eq!(c.batching().max_wait, Duration::ZERO);
        assert_eq!(c.timeout, Duration::from_secs(10));
    }

    #[test]
    fn a_bad_url_is_named() {
        let c: WebhookSinkConfig = serde_yaml_ng::from_str("name: h\nurl: 'not a url'").unwrap();
        assert_eq!(c.validate().unwrap_err().path, "url");
        let c: WebhookSinkConfig = serde_yaml_ng::from_str("name: h\nurl: 'ftp://x/y'").unwrap();
        assert_eq!(c.validate().unwrap_err().path, "url");
    }

    #[test]
    fn an_unreadable_ca_file_is_named() {
        let e = parse("tls: {caFile: /nonexistent/ca.pem}").unwrap_err();
        assert_eq!(e.path, "tls.caFile");
        assert!(e.message.contains("/nonexistent/ca.pem"), "{}", e.message);
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = parse(&format!("tls: {{caFile: {}}}", junk.display())).unwrap_err();
        assert_eq!(e.path, "tls.caFile", "{}", e.message);
    }

    #[test]
    fn a_missing_env_var_for_a_header_names_the_header() {
        let e = parse(
            "headers:\n  Authorization: {valueFrom: {env: LOOKOUT_TEST_SURELY_UNSET}, prefix: 'Bearer '}",
        )
        .unwrap_err();
        assert_eq!(e.path, "headers.Authorization");
        assert!(
            e.message.contains("LOOKOUT_TEST_SURELY_UNSET"),
            "{}",
            e.message
        );
    }

    #[test]
    fn header_values_come_from_files_with_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cr3t\n").unwrap();
        let c = parse(&format!(
            "headers:\n  Authorization: {{valueFrom: {{file: {}}}, prefix: 'Bearer '}}\n  X-Team: blue",
            token.display()
        ))
        .unwrap();
        let r = c.resolve().unwrap();
        assert_eq!(r.headers["authorization"], "Bearer s3cr3t");
        assert_eq!(r.headers["x-team"], "blue");
    }

    #[test]
    fn binary_cloudevents_refuse_batches_and_send_single_events() {
        let e = parse("format: cloudevents\ncloudEventsMode: binary\nbatch: {maxEvents: 10}")
            .unwrap_err();
        assert_eq!(e.path, "batch.maxEvents");
        let c = parse("format: cloudevents\ncloudEventsMode: binary").unwrap();
        assert_eq!(c.batching().max_events, 1);
        assert!(matches!(c.encoding(), Encoding::Binary));
    }

    #[test]
    fn cloudevents_mode_without_cloudevents_format_is_refused() {
        let e = parse("cloudEventsMode: binary").unwrap_err();
        assert_eq!(e.path, "cloudEventsMode");
    }

    #[test]
    fn headers_the_sink_owns_are_refused() {
        let e = parse("headers: {Content-Type: text/plain}").unwrap_err();
        assert_eq!(e.path, "headers.Content-Type");
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let e = parse("tls: {certFile: /x.pem}").unwrap_err();
        assert_eq!(e.path, "tls.keyFile");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(parse("retries: 3").is_err());
        assert!(parse("tls: {verify: false}").is_err());
    }
}
