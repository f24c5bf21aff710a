//! Request bodies and content headers for each format, per the CloudEvents 1.0 HTTP protocol
//! binding where CloudEvents are asked for. The attribute mapping itself lives in
//! [`crate::event::cloudevents`], shared with the Kafka sink.

use std::sync::Arc;

use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue};

use crate::event::{Envelope, cloudevents, debezium};

/// How a batch becomes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Envelope JSON; `array` when batches are configured (`maxEvents` > 1).
    Envelope {
        /// Send a JSON array, even of one event.
        array: bool,
    },
    /// CloudEvents structured mode; `array` sends `application/cloudevents-batch+json`.
    Structured {
        /// Send a JSON batch, even of one event.
        array: bool,
    },
    /// CloudEvents binary mode: one event per request.
    Binary,
    /// Debezium change events; `array` when batches are configured.
    Debezium {
        /// Send a JSON array, even of one event.
        array: bool,
        /// Connect framing or not.
        encoding: debezium::Encoding,
    },
}

/// One HTTP request's worth of a batch.
#[derive(Debug)]
pub struct Request {
    /// Indices into the batch of the events this request carries.
    pub indices: Vec<usize>,
    /// The exact body (what is signed).
    pub body: Bytes,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Format headers beyond `Content-Type` (`ce-*` in binary mode).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Encoding {
    /// The requests carrying `batch`: one, except in binary mode (one per event; the driver
    /// hands binary sinks single events anyway).
    pub fn requests(self, batch: &[Arc<Envelope>]) -> Vec<Request> {
        let all = || (0..batch.len()).collect::<Vec<_>>();
        match self {
            Encoding::Envelope { array: false }
            | Encoding::Structured { array: false }
            | Encoding::Debezium { array: false, .. }
                if batch.len() > 1 =>
            {
                // The driver never batches when maxEvents is 1; stay correct regardless.
                batch
                    .iter()
                    .enumerate()
                    .flat_map(|(i, e)| {
                        self.requests(std::slice::from_ref(e))
                            .into_iter()
                            .map(move |mut r| {
                                r.indices = vec![i];
                                r
                            })
                    })
                    .collect()
            }
            Encoding::Envelope { array } => vec![Request {
                indices: all(),
                body: if array {
                    json_array(batch.iter().map(|e| e.to_json().clone()))
                } else {
                    batch[0].to_json().clone()
                },
                content_type: "application/json",
                headers: Vec::new(),
            }],
            Encoding::Debezium { array, encoding } => vec![Request {
                indices: all(),
                body: if array {
                    json_array(batch.iter().map(|e| encoding.value(e)))
                } else {
                    encoding.value(&batch[0])
                },
                content_type: "application/json",
                headers: Vec::new(),
            }],
            Encoding::Structured { array: true } => vec![Request {
                indices: all(),
                body: cloudevents::structured_batch(batch),
                content_type: cloudevents::BATCH_CONTENT_TYPE,
                headers: Vec::new(),
            }],
            Encoding::Structured { array: false } => vec![Request {
                indices: all(),
                body: cloudevents::structured(&batch[0]),
                content_type: cloudevents::STRUCTURED_CONTENT_TYPE,
                headers: Vec::new(),
            }],
            Encoding::Binary => batch
                .iter()
                .enumerate()
                .map(|(i, e)| Request {
                    indices: vec![i],
                    body: e.to_json().clone(),
                    content_type: cloudevents::DATA_CONTENT_TYPE,
                    headers: binary_headers(e),
                })
                .collect(),
        }
    }
}

fn json_array(items: impl Iterator<Item = Bytes>) -> Bytes {
    let mut out = vec![b'['];
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&item);
    }
    out.push(b']');
    Bytes::from(out)
}

/// `ce-<attribute>` headers for binary mode. `datacontenttype` is not among them: the HTTP
/// binding maps it to `Content-Type` (section 3.1.1).
pub fn binary_headers(e: &Envelope) -> Vec<(HeaderName, HeaderValue)> {
    cloudevents::attributes(e)
        .into_iter()
        .map(|(name, value)| {
            let name = HeaderName::try_from(format!("ce-{name}"))
                .expect("attribute names are lowercase alphanumerics");
            let value = HeaderValue::try_from(percent_encode(&value))
                .expect("percent-encoded values are visible ASCII");
            (name, value)
        })
        .collect()
}

/// Percent-encodes a header value as the HTTP binding requires (section 3.1.3.2): space,
/// `"`, `%` and everything outside printable ASCII, byte by byte of the UTF-8 encoding.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_percent_encoded_as_the_http_binding_requires() {
        assert_eq!(percent_encode("ns/web"), "ns/web");
        assert_eq!(percent_encode("a b\"c%"), "a%20b%22c%25");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }
}
