//! Sends batches as HTTP requests and classifies the answers for the driver: reject
//! (`deadLetterStatuses`, by default every 4xx but 401, 403, 408 and 429; and 3xx) or retry
//! (every other answer, timeouts, connection and TLS failures).

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use reqwest::header::{CONTENT_TYPE, HeaderMap, LOCATION, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};

use super::config::{Resolved, WebhookMethod};
use super::encoding::{Encoding, Request};
use super::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use super::status::DeadLetterStatuses;
use crate::event::Envelope;
use crate::sinks::{Batching, Sink, SinkError};

/// A receiver asking for more than this is asked again after this long: a typo'd or hostile
/// `Retry-After` must not park the sink for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// How much of an error response body ends up in logs and dead letters.
const BODY_EXCERPT: usize = 256;

/// Delivers batches to one URL.
pub struct WebhookSink {
    name: String,
    client: reqwest::Client,
    method: Method,
    url: Url,
    /// `url` without query and credentials, for messages (queries often carry tokens).
    display_url: String,
    headers: HeaderMap,
    secret: Option<Vec<u8>>,
    encoding: Encoding,
    batching: Batching,
    dead_letter_statuses: DeadLetterStatuses,
}

impl WebhookSink {
    pub(super) fn new(
        name: String,
        client: reqwest::Client,
        method: WebhookMethod,
        resolved: Resolved,
        encoding: Encoding,
        batching: Batching,
    ) -> Self {
        let mut display = resolved.url.clone();
        display.set_query(None);
        let _ = display.set_password(None);
        let _ = display.set_username("");
        Self {
            name,
            client,
            method: match method {
                WebhookMethod::Post => Method::POST,
                WebhookMethod::Put => Method::PUT,
            },
            display_url: display.to_string(),
            url: resolved.url,
            dead_letter_statuses: resolved.dead_letter_statuses,
            headers: resolved.headers,
            secret: resolved.secret,
            encoding,
            batching,
        }
    }

    /// The sink's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn post(&self, request: Request) -> Result<(), SinkError> {
        let mut builder = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, request.content_type);
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        if let Some(secret) = &self.secret {
            // Signed at each attempt, so a retry after a long outage is not refused as stale.
            let timestamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            builder = builder
                .header(TIMESTAMP_HEADER, timestamp)
                .header(SIGNATURE_HEADER, sign(secret, timestamp, &request.body));
        }
        let response = builder
            .body(request.body)
            .send()
            .await
            // Without reqwest's copy of the URL: its query may carry a token.
            .map_err(|e| {
                let e = e.without_url();
                SinkError::retriable(format!("{}: {}", self.display_url, chain(&e)))
            })?;
        classify(response, &self.display_url, &self.dead_letter_statuses).await
    }
}

#[async_trait]
impl Sink for WebhookSink {
    async fn send(&self, batch: &[Arc<Envelope>]) -> Result<(), SinkError> {
        let mut rejected = Vec::new();
        let mut reason = String::new();
        let mut requests = self.encoding.requests(batch).into_iter();
        let mut delivered_any = false;
        while let Some(request) = requests.next() {
            let indices = request.indices.clone();
            match self.post(request).await {
                Ok(()) => delivered_any = true,
                Err(SinkError::Rejected { message, .. }) => {
                    rejected.extend(indices);
                    reason = message;
                }
                Err(SinkError::Retriable {
                    message,
                    retry_after,
                }) if delivered_any || !rejected.is_empty() => {
                    // Earlier requests got through: only this one and the rest go again.
                    let mut retry = indices;
                    retry.extend(requests.flat_map(|r| r.indices));
                    return Err(SinkError::Partial {
                        message,
                        retry,
                        rejected,
                        retry_after,
                    });
                }
                Err(retriable) => return Err(retriable),
            }
        }
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Rejected {
                message: reason,
                indices: (rejected.len() < batch.len()).then_some(rejected),
            })
        }
    }

    fn batching(&self) -> Batching {
        self.batching
    }

    fn reads_trees(&self) -> bool {
        matches!(self.encoding, Encoding::Debezium { .. })
    }
}

/// An error with its causes (`error sending request: connection refused`), since reqwest's
/// own message hides the interesting part (refused, timed out, unknown CA) in the sources.
fn chain(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        format!("timed out: {e}")
    } else {
        e.to_string()
    };
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

async fn classify(
    response: reqwest::Response,
    url: &str,
    dead_letter: &DeadLetterStatuses,
) -> Result<(), SinkError> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Read the body in any case so the connection can be reused.
    let body = response.bytes().await.unwrap_or_default();
    if status.is_success() {
        return Ok(());
    }
    let excerpt = excerpt(&body);
    let mut message = format!("{url} answered HTTP {status}{excerpt}");
    if status.is_redirection() {
        Err(SinkError::Rejected {
            message: format!(
                "{message}: redirects are not followed; set `url` to the final location{}",
                location.map(|l| format!(" ({l})")).unwrap_or_default()
            ),
            indices: None,
        })
    } else if dead_letter.dead_letters(status) {
        Err(SinkError::Rejected {
            message,
            indices: None,
        })
    } else {
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            // Usually a credential being rotated: retried, so nothing is lost meanwhile.
            message.push_str(" (credentials refused; retrying until they are accepted)");
        }
        Err(SinkError::Retriable {
            message,
            retry_after,
        })
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let cut: String = text.chars().take(BODY_EXCERPT).collect();
    let more = if cut.len() < text.len() { "…" } else { "" };
    format!(": {cut}{more}")
}

/// `Retry-After` as delta-seconds (`120`) or an HTTP-date (`Wed, 21 Oct 2015 07:28:00 GMT`,
/// relative to `now`; a date in the past means now), capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(value.parse().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_delta_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
