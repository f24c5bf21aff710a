//! What a user can set for `type: webhook`, and turning it into a running [`WebhookSink`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

pub use crate::event::cloudevents::CloudEventsMode;
use tracing::warn;

use super::encoding::Encoding;
use super::sink::WebhookSink;
use super::status::{DeadLetterStatuses, StatusEntry};
use crate::config::{Error, ErrorKind, Errors};
use crate::sinks::{Batching, Common, Payload};

/// `type: webhook`: HTTP(S) requests to one URL. The body is the envelope JSON or a
/// CloudEvents event (`format`, `cloudEventsMode`: shared sink options).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookSinkConfig {
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
    /// Shared secret for HMAC-SHA256 request signatures (`X-Lookout-Signature`); a literal,
    /// or `{valueFrom: …}` like a header. No signature when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ValueSource>,
    /// Statuses that dead-letter a request (`404`, `"400-499"`, `"4xx"`); every other
    /// non-2xx answer is retried. Default: every 4xx but 401, 403, 408 and 429. 3xx always
    /// dead-letters (redirects are not followed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_statuses: Option<Vec<StatusEntry>>,
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
    /// The variable is not set or the file cannot be read.
    pub fn resolve(&self) -> Result<String, ErrorKind> {
        match self {
            ValueSource::Literal(s) => Ok(s.clone()),
            ValueSource::From(from) => {
                let value = match &from.value_from {
                    ValueRef::Env(name) => {
                        std::env::var(name).map_err(|_| ErrorKind::EnvUnset(name.clone()))?
                    }
                    ValueRef::File(path) => std::fs::read_to_string(path)
                        .map_err(|e| ErrorKind::File {
                            path: path.clone(),
                            message: format!("cannot read: {e}"),
                        })?
                        .trim_end()
                        .to_string(),
                };
                Ok(format!("{}{value}", from.prefix.as_deref().unwrap_or("")))
            }
        }
    }
}

fn invalid(path: &str, message: impl Into<String>) -> Error {
    Error::new(path, ErrorKind::Invalid(message.into()))
}

fn conflict(path: &str, message: impl Into<String>) -> Error {
    Error::new(path, ErrorKind::Conflict(message.into()))
}

fn read_pem(path: &Path, key: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| {
        Error::new(
            key,
            ErrorKind::File {
                path: path.to_path_buf(),
                message: format!("cannot read: {e}"),
            },
        )
    })
}

fn pem_error(path: &Path, key: &str, message: String) -> Error {
    Error::new(
        key,
        ErrorKind::File {
            path: path.to_path_buf(),
            message,
        },
    )
}

impl WebhookSinkConfig {
    /// Events per request after defaults (binary CloudEvents carry one per request).
    pub fn max_events(&self, payload: Payload) -> usize {
        match payload {
            Payload::Cloudevents(CloudEventsMode::Binary) => 1,
            _ => self.batch.max_events.unwrap_or_else(default_max_events),
        }
    }

    /// The driver's batching for this sink.
    pub fn batching(&self, payload: Payload) -> Batching {
        Batching {
            max_events: self.max_events(payload),
            max_bytes: self.batch.max_bytes,
            max_wait: self.batch.max_wait,
        }
    }

    pub(super) fn encoding(&self, payload: Payload) -> Encoding {
        let array = self.max_events(payload) > 1;
        match payload {
            Payload::Cloudevents(CloudEventsMode::Structured) => Encoding::Structured { array },
            Payload::Cloudevents(CloudEventsMode::Binary) => Encoding::Binary,
            Payload::Debezium(encoding) => Encoding::Debezium { array, encoding },
            Payload::Envelope | Payload::Text => Encoding::Envelope { array },
        }
    }

    /// Checks every setting, reads referenced variables and files, and builds the HTTP
    /// client: the sink, ready to send.
    ///
    /// # Errors
    /// Every problem found, with key paths below the sink entry.
    pub fn compile(&self, common: &Common) -> Result<WebhookSink, Errors> {
        let mut errors = Errors::default();
        let url = errors.take(self.url());
        if self.timeout.is_zero() {
            errors.push(invalid("timeout", "must be greater than 0"));
        }
        if common.payload == Payload::Cloudevents(CloudEventsMode::Binary)
            && self.batch.max_events.is_some_and(|n| n != 1)
        {
            errors.push(conflict(
                "batch.maxEvents",
                "binary CloudEvents mode carries one event per request; set 1 or remove it \
                 (or use `cloudEventsMode: structured` for batches)",
            ));
        }
        if self.batch.max_events == Some(0) {
            errors.push(invalid("batch.maxEvents", "must be at least 1"));
        }
        if self.batch.max_bytes == 0 {
            errors.push(invalid("batch.maxBytes", "must be at least 1"));
        }
        let mut headers = HeaderMap::new();
        for (name, source) in &self.headers {
            if let Some((header, value)) = errors.take(header(name, source)) {
                headers.append(header, value);
            }
        }
        let secret = match &self.secret {
            Some(source) => errors.take(match source.resolve() {
                Ok(s) if s.is_empty() => Err(Error::new("secret", ErrorKind::Empty)),
                Ok(s) => Ok(Some(s.into_bytes())),
                Err(kind) => Err(Error::new("secret", kind)),
            }),
            None => Some(None),
        };
        let dead_letter_statuses = errors.take(DeadLetterStatuses::compile(
            self.dead_letter_statuses.as_deref(),
        ));
        let tls = errors.take(self.tls.compile());
        let client = tls
            .as_ref()
            .and_then(|(ca, identity)| errors.take(self.client(&common.name, ca, identity)));
        match (url, secret, tls, client, dead_letter_statuses) {
            (Some(url), Some(secret), Some((_, _)), Some(client), Some(dead_letter_statuses))
                if errors.0.is_empty() =>
            {
                Ok(WebhookSink::new(
                    common.name.clone(),
                    client,
                    self.method,
                    Resolved {
                        url,
                        headers,
                        secret,
                        dead_letter_statuses,
                    },
                    self.encoding(common.payload),
                    self.batching(common.payload),
                ))
            }
            _ => Err(errors),
        }
    }

    fn url(&self) -> Result<reqwest::Url, Error> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| invalid("url", e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(invalid(
                "url",
                format!("expected an http:// or https:// URL, got `{}`", self.url),
            ));
        }
        Ok(url)
    }

    fn client(
        &self,
        name: &str,
        ca: &[reqwest::Certificate],
        identity: &Option<reqwest::Identity>,
    ) -> Result<reqwest::Client, Error> {
        let mut client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .user_agent(concat!("lookout/", env!("CARGO_PKG_VERSION")))
            // A 301/302 would turn the POST into a body-less GET that "succeeds": events
            // would vanish. Redirects are answered as rejections instead.
            .redirect(reqwest::redirect::Policy::none());
        for cert in ca.iter().cloned() {
            client = client.add_root_certificate(cert);
        }
        if let Some(identity) = identity.clone() {
            client = client.identity(identity);
        }
        if self.tls.insecure_skip_verify {
            warn!(
                sink = %name,
                url = %self.url,
                "TLS CERTIFICATE VERIFICATION IS DISABLED (tls.insecureSkipVerify): anyone on \
                 the network path can read and forge these requests; use tls.caFile instead"
            );
            client = client.danger_accept_invalid_certs(true);
        }
        client.build().map_err(|e| {
            Error::new(
                "",
                ErrorKind::Client(format!("cannot create the HTTP client: {e}")),
            )
        })
    }
}

/// One configured header, checked and with its value read.
fn header(name: &str, source: &ValueSource) -> Result<(HeaderName, HeaderValue), Error> {
    let key = format!("headers.{name}");
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| invalid(&key, format!("`{name}` is not a valid header name")))?;
    if RESERVED_HEADERS.contains(&header.as_str()) || header.as_str().starts_with("ce-") {
        return Err(conflict(
            &key,
            "set by the sink itself (format, signature); remove it",
        ));
    }
    let value = source.resolve().map_err(|kind| Error::new(&key, kind))?;
    let mut value = HeaderValue::from_str(&value)
        .map_err(|_| invalid(&key, "value contains characters not allowed in a header"))?;
    value.set_sensitive(true);
    Ok((header, value))
}

impl TlsConfig {
    /// The extra CA certificates and the client identity, read from their files.
    fn compile(&self) -> Result<(Vec<reqwest::Certificate>, Option<reqwest::Identity>), Error> {
        let mut ca = Vec::new();
        if let Some(path) = &self.ca_file {
            let pem = read_pem(path, "tls.caFile")?;
            ca = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| pem_error(path, "tls.caFile", e.to_string()))?;
            if ca.is_empty() {
                return Err(pem_error(
                    path,
                    "tls.caFile",
                    "no PEM certificate found".into(),
                ));
            }
        }
        let identity = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let mut pem = read_pem(cert, "tls.certFile")?;
                pem.push(b'\n');
                pem.extend(read_pem(key, "tls.keyFile")?);
                Some(reqwest::Identity::from_pem(&pem).map_err(|e| {
                    pem_error(
                        cert,
                        "tls.certFile",
                        format!("client certificate and key are not usable: {e}"),
                    )
                })?)
            }
            (Some(_), None) => return Err(conflict("tls.keyFile", "required with `certFile`")),
            (None, Some(_)) => return Err(conflict("tls.certFile", "required with `keyFile`")),
            (None, None) => None,
        };
        Ok((ca, identity))
    }
}

/// What the sink needs at run time, read from the environment and files.
pub(super) struct Resolved {
    pub url: reqwest::Url,
    pub headers: HeaderMap,
    pub secret: Option<Vec<u8>>,
    pub dead_letter_statuses: DeadLetterStatuses,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::{SinkConfig, SinkKind};

    /// A webhook entry with `extra` keys: its own options and its checked shared options.
    fn entry(extra: &str) -> (WebhookSinkConfig, Common) {
        let yaml = format!("name: hook\ntype: webhook\nurl: https://example.com/hook\n{extra}");
        let c: SinkConfig = serde_yaml_ng::from_str(&yaml).expect("entry parses");
        let common = c
            .options
            .check("webhook", c.kind.accepts())
            .expect("shared options");
        match c.kind {
            SinkKind::Webhook(w) => (*w, common),
            other => panic!("not a webhook: {other:?}"),
        }
    }

    /// The first error of compiling an entry with `extra` keys.
    fn error(extra: &str) -> Error {
        let (c, common) = entry(extra);
        match c.compile(&common) {
            Ok(_) => panic!("`{extra}` compiles"),
            Err(mut e) => e.0.remove(0),
        }
    }

    #[test]
    fn defaults_post_envelopes_in_batches_of_up_to_100() {
        let (c, common) = entry("");
        assert_eq!(c.method, WebhookMethod::Post);
        assert_eq!(common.payload, Payload::Envelope);
        assert_eq!(c.batching(common.payload).max_events, 100);
        assert_eq!(c.batching(common.payload).max_wait, Duration::ZERO);
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert!(c.compile(&common).is_ok());
    }

    #[test]
    fn a_bad_url_is_named() {
        assert_eq!(error("url: 'not a url'").path, "url");
        assert_eq!(error("url: 'ftp://x/y'").path, "url");
    }

    #[test]
    fn an_unreadable_ca_file_is_named() {
        let e = error("tls: {caFile: /nonexistent/ca.pem}");
        assert_eq!(e.path, "tls.caFile");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = error(&format!("tls: {{caFile: {}}}", junk.display()));
        assert_eq!(e.path, "tls.caFile", "{e}");
    }

    #[test]
    fn a_missing_env_var_for_a_header_names_the_header() {
        let e = error(
            "headers:\n  Authorization: {valueFrom: {env: LOOKOUT_TEST_SURELY_UNSET}, prefix: 'Bearer '}",
        );
        assert_eq!(e.path, "headers.Authorization");
        assert!(e.to_string().contains("LOOKOUT_TEST_SURELY_UNSET"), "{e}");
    }

    #[test]
    fn header_values_come_from_files_with_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cr3t\n").unwrap();
        let (c, _) = entry(&format!(
            "headers:\n  Authorization: {{valueFrom: {{file: {}}}, prefix: 'Bearer '}}\n  X-Team: blue",
            token.display()
        ));
        let (name, value) = header("Authorization", &c.headers["Authorization"]).unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("authorization", "Bearer s3cr3t")
        );
        let (_, value) = header("X-Team", &c.headers["X-Team"]).unwrap();
        assert_eq!(value, "blue");
    }

    #[test]
    fn binary_cloudevents_refuse_batches_and_send_single_events() {
        let e = error("format: cloudevents\ncloudEventsMode: binary\nbatch: {maxEvents: 10}");
        assert_eq!(e.path, "batch.maxEvents");
        let (c, common) = entry("format: cloudevents\ncloudEventsMode: binary");
        assert_eq!(c.batching(common.payload).max_events, 1);
        assert!(matches!(c.encoding(common.payload), Encoding::Binary));
    }

    #[test]
    fn headers_the_sink_owns_are_refused() {
        assert_eq!(
            error("headers: {Content-Type: text/plain}").path,
            "headers.Content-Type"
        );
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        assert_eq!(error("tls: {certFile: /x.pem}").path, "tls.keyFile");
    }

    #[test]
    fn every_problem_of_an_entry_is_reported_at_once() {
        let (c, common) = entry("url: nope\ntimeout: 0s\nbatch: {maxBytes: 0}");
        let paths: Vec<String> = c
            .compile(&common)
            .err()
            .unwrap()
            .0
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(paths, ["url", "timeout", "batch.maxBytes"]);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let parse = |extra: &str| {
            serde_yaml_ng::from_str::<SinkConfig>(&format!(
                "name: h\ntype: webhook\nurl: https://x/\n{extra}"
            ))
        };
        assert!(parse("retries: 3").is_err());
        assert!(parse("tls: {verify: false}").is_err());
        assert!(parse("").is_ok());
    }
}
