//! Sends batches as HTTP requests and classifies the answers for the driver: retry
//! (5xx, 408, 429, timeouts, connection and TLS failures) or reject (other 4xx, 3xx).

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use reqwest::header::{CONTENT_TYPE, HeaderMap, LOCATION, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};

use super::config::{Resolved, WebhookMethod};
use super::encoding::{Encoding, Request};
use super::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
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
        classify(response, &self.display_url).await
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

async fn classify(response: reqwest::Response, url: &str) -> Result<(), SinkError> {
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
    let message = format!("{url} answered HTTP {status}{excerpt}");
    if retriable_status(status) {
        Err(SinkError::Retriable {
            message,
            retry_after,
        })
    } else if status.is_redirection() {
        Err(SinkError::Rejected {
            message: format!(
                "{message}: redirects are not followed; set `url` to the final location{}",
                location.map(|l| format!(" ({l})")).unwrap_or_default()
            ),
            indices: None,
        })
    } else {
        Err(SinkError::Rejected {
            message,
            indices: None,
        })
    }
}

/// 5xx, 408 Request Timeout and 429 Too Many Requests may succeed later; other answers
/// will not change by asking again.
pub fn retriable_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
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

    #[test]
    fn server_errors_throttling_and_timeouts_are_retried_other_client_errors_are_not() {
        for code in [500, 502, 503, 504, 408, 429] {
            assert!(
                retriable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 409, 413, 422, 301] {
            assert!(
                !retriable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
    }
}
