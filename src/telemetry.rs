//! Logging setup: tracing to stderr (stdout belongs to the stdout sink).
//!
//! Response bodies never reach the log, whatever `log.level` or `RUST_LOG` say. kube's client
//! logs the whole body of a response it cannot parse (at `warn`, and again at `debug` /
//! `trace` for error answers and statuses) — for a Secret list, an unredacted page. Events of
//! the target `kube_client::client` are therefore let through at `error` only (those carry
//! status codes, not bodies), and a parse failure is reported in its place by
//! [`BodyGuard`]: the body's size and the serde error with every quoted value elided — never
//! the body. (The caller's own error, e.g. the informer's `list failed`, names the resource.)

use std::fmt::Write as _;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Level, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// The log target of kube's client, whose `warn`, `debug` and `trace` events carry bodies.
const KUBE_CLIENT: &str = "kube_client::client";
/// Where [`BodyGuard`] reports.
const GUARD_TARGET: &str = "lookout::telemetry";

/// Installs the global subscriber. `RUST_LOG` overrides `level` (but never lets a response
/// body through).
pub fn init(format: LogFormat, level: &str) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    // Also routes `log` records (librdkafka via rdkafka, reqwest) through the same filters.
    let _ = dispatch(format, filter, ansi, std::io::stderr).try_init();
}

/// The dispatcher `init` installs, writing to `writer` (tests capture it).
///
/// [`BodyGuard`]'s reports are logged from a thread of their own: an event logged while
/// the subscriber is still handling kube's event would be filtered with that event's
/// per-layer filter state.
pub fn dispatch<W>(format: LogFormat, filter: EnvFilter, ansi: bool, writer: W) -> Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer);
    let fmt: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let (tx, rx) = std::sync::mpsc::channel::<Report>();
    let dispatch = Dispatch::new(
        tracing_subscriber::registry()
            .with(fmt.with_filter(filter.and(filter_fn(carries_no_body))))
            .with(
                BodyGuard {
                    reports: Mutex::new(tx),
                }
                .with_filter(filter_fn(BodyGuard::wants)),
            ),
    );
    let weak = dispatch.downgrade();
    // Ends when the dispatcher (and with it the sender) is dropped.
    let _ = std::thread::Builder::new()
        .name("log-body-guard".into())
        .spawn(move || {
            for report in rx {
                let Some(dispatch) = weak.upgrade() else {
                    return;
                };
                tracing::dispatcher::with_default(&dispatch, || report.log());
            }
        });
    dispatch
}

/// What [`BodyGuard`] logs in place of kube's warning.
enum Report {
    /// A response that did not parse.
    Unparsable {
        /// Size of the body.
        bytes: usize,
        /// The serde error, quoted values elided.
        error: String,
    },
    /// A kube warning without a body (`timeout in poll`).
    Other {
        /// kube's message.
        message: String,
    },
}

impl Report {
    fn log(self) {
        match self {
            // The request it answered is named by the caller's own error right after
            // (e.g. `list failed` with the informer).
            Report::Unparsable { bytes, error } => tracing::warn!(
                target: GUARD_TARGET,
                bytes,
                error,
                "the API server sent a response that does not parse; its body is not logged"
            ),
            Report::Other { message } => tracing::warn!(target: GUARD_TARGET, "kube: {message}"),
        }
    }
}

/// False for the events that may hold a response body.
fn carries_no_body(meta: &Metadata<'_>) -> bool {
    !(meta.target().starts_with(KUBE_CLIENT) && *meta.level() > Level::ERROR)
}

/// Replaces kube's body-carrying parse-failure warning by one without the body, and names
/// the request it belonged to (from kube's `HTTP` span).
pub struct BodyGuard {
    reports: Mutex<std::sync::mpsc::Sender<Report>>,
}

impl BodyGuard {
    /// kube's client warnings (to replace).
    fn wants(meta: &Metadata<'_>) -> bool {
        meta.is_event() && meta.target() == KUBE_CLIENT && *meta.level() == Level::WARN
    }
}

/// Collects one field's text.
struct FieldText<'a> {
    name: &'a str,
    out: Option<String>,
}

impl Visit for FieldText<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == self.name {
            self.out = Some(value.to_string());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == self.name {
            self.out = Some(format!("{value:?}"));
        }
    }
}

impl<S> Layer<S> for BodyGuard
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut message = FieldText {
            name: "message",
            out: None,
        };
        event.record(&mut message);
        let message = message.out.unwrap_or_default();
        // kube writes `"{body}, {serde error:?}"`; the serde error's Debug is
        // `Error("<message>", line: 1, column: 9)`.
        let report = match message.rsplit_once(", Error(\"") {
            Some((body, error)) => Report::Unparsable {
                bytes: body.len(),
                error: scrub(
                    &error
                        .trim_end_matches(')')
                        .replacen("\", line: ", " at line ", 1),
                )
                .replacen(", column: ", " column ", 1),
            },
            None => Report::Other { message },
        };
        let _ = self.reports.lock().map(|tx| tx.send(report));
    }
}

/// A serde error's text with every quoted value (`"…"`, or `` `…` `` after `variant`,
/// `integer`, …) elided: `invalid type: string "hunter2", expected u32` → `invalid type: string "…",
/// expected u32`. Positions and expectations stay.
pub fn scrub(error: &str) -> String {
    let mut out = String::with_capacity(error.len());
    let mut chars = error.chars().peekable();
    // The Debug form escapes the quotes inside the message as `\"`.
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'"') => {
                chars.next();
                out.push_str("\"…\"");
                // Skip to the closing `\"`.
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if c == '"' && prev == '\\' {
                        break;
                    }
                    prev = c;
                }
            }
            '`' => {
                let word = out.trim_end().rsplit(' ').next().unwrap_or_default();
                // `unknown variant `X``, `integer `7``: X came from the body. Field names
                // and expectations are the schema's.
                if matches!(
                    word,
                    "variant" | "integer" | "point" | "character" | "boolean"
                ) {
                    out.push_str("`…`");
                    for c in chars.by_ref() {
                        if c == '`' {
                            break;
                        }
                    }
                } else {
                    out.push('`');
                }
            }
            c => {
                let _ = out.write_char(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::routing::get;
    use kube::api::ListParams;
    use kube::core::ApiResource;

    use super::*;
    use crate::informer::RawObject;

    /// Captured log output.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[test]
    fn quoted_values_are_elided_from_serde_errors() {
        assert_eq!(
            scrub(r#""invalid type: string \"hunter2\", expected u32", line: 1, column: 9"#),
            r#""invalid type: string "…", expected u32", line: 1, column: 9"#
        );
        assert_eq!(
            scrub(r#""unknown variant `SECRET`, expected `ADDED`", line: 1, column: 2"#),
            r#""unknown variant `…`, expected `ADDED`", line: 1, column: 2"#
        );
    }

    /// kube's client against a server answering a Secret list it cannot parse (a numeric
    /// resourceVersion), logging at trace level: the body (with the Secret's value) must not
    /// appear; the path, size and error must.
    #[tokio::test]
    async fn an_unparsable_secret_list_is_reported_without_its_body_even_at_trace_level() {
        const BODY: &str = r#"{"apiVersion":"v1","kind":"SecretList","metadata":{"resourceVersion":7},"items":[{"metadata":{"name":"db"},"data":{"password":"c3VwZXItc2VjcmV0LXZhbHVl"}}]}"#;
        let app = axum::Router::new().route("/api/v1/secrets", get(|| async { BODY }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let captured = Captured::default();
        let dispatch = dispatch(
            LogFormat::Text,
            EnvFilter::new("trace"),
            false,
            captured.clone(),
        );
        let _guard = tracing::dispatcher::set_default(&dispatch);
        let client =
            kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
                .unwrap();
        let secrets = ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&());
        let api = kube::Api::<RawObject>::all_with(client, &secrets);
        let err = api.list(&ListParams::default()).await.unwrap_err();
        assert!(matches!(err, kube::Error::SerdeError(_)), "{err}");
        server.abort();

        let log = || String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !log().contains("does not parse") && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let log = log();
        assert!(
            !log.contains("c3VwZXItc2VjcmV0LXZhbHVl") && !log.contains("super-secret-value"),
            "a body reached the log:\n{log}"
        );
        let line = log
            .lines()
            .find(|l| l.contains("does not parse"))
            .unwrap_or_else(|| panic!("no parse-failure report:\n{log}"));
        assert!(line.contains(&format!("bytes={}", BODY.len())), "{line}");
        assert!(
            line.contains("invalid type: integer `…`, expected a string at line 1 column"),
            "{line}"
        );
    }
}
