//! Which HTTP answers dead-letter a request and which are retried.
//!
//! A status dead-letters when it is in `deadLetterStatuses`; every other non-2xx status is
//! retried with backoff (counted in `lookout_sink_errors_total`, `/readyz` false meanwhile).
//! Without the key: every 4xx but 401, 403 (credentials being rotated), 408 and 429. 3xx is
//! always rejected: redirects are not followed, and asking again would not change that.

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::config::{Error, ErrorKind};

/// One entry of `deadLetterStatuses`: a status (`404`), a range (`"400-499"`) or a class
/// (`"4xx"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StatusEntry {
    /// One status.
    Code(u16),
    /// `"4xx"` or `"400-499"`.
    Range(String),
}

impl StatusEntry {
    /// The inclusive range of statuses.
    fn bounds(&self) -> Option<(u16, u16)> {
        match self {
            StatusEntry::Code(c) => Some((*c, *c)),
            StatusEntry::Range(r) => {
                let r = r.trim();
                if let Some(class) = r.strip_suffix("xx").filter(|c| c.len() == 1) {
                    let c: u16 = class.parse().ok()?;
                    return Some((c * 100, c * 100 + 99));
                }
                let (lo, hi) = r.split_once('-')?;
                let (lo, hi) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
                (lo <= hi).then_some((lo, hi))
            }
        }
    }
}

/// The compiled `deadLetterStatuses`.
#[derive(Debug, Clone)]
pub struct DeadLetterStatuses {
    /// Inclusive ranges; `None` = the default rule.
    ranges: Option<Vec<(u16, u16)>>,
}

impl DeadLetterStatuses {
    /// Compiles the configured list (`None`: the default).
    ///
    /// # Errors
    /// An entry that is not a status, range or class between 300 and 599, named by index.
    pub fn compile(entries: Option<&[StatusEntry]>) -> Result<Self, Error> {
        let Some(entries) = entries else {
            return Ok(Self { ranges: None });
        };
        let ranges = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                e.bounds()
                    .filter(|(lo, hi)| *lo >= 300 && *hi <= 599)
                    .ok_or_else(|| {
                        Error::new(
                            format!("deadLetterStatuses[{i}]"),
                            ErrorKind::Invalid(format!(
                                "expected a status, a range (\"400-499\") or a class \
                                 (\"4xx\") between 300 and 599, got {e:?}"
                            )),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            ranges: Some(ranges),
        })
    }

    /// True when an answer with `status` dead-letters the request.
    pub fn dead_letters(&self, status: StatusCode) -> bool {
        let code = status.as_u16();
        match &self.ranges {
            Some(ranges) => ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&code)),
            None => status.is_client_error() && !matches!(code, 401 | 403 | 408 | 429),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(c: u16) -> StatusCode {
        StatusCode::from_u16(c).unwrap()
    }

    #[test]
    fn by_default_client_errors_dead_letter_but_auth_throttling_and_timeouts_retry() {
        let d = DeadLetterStatuses::compile(None).unwrap();
        for c in [400, 402, 404, 409, 410, 413, 415, 422, 451, 499] {
            assert!(d.dead_letters(code(c)), "{c}");
        }
        for c in [401, 403, 408, 429, 500, 502, 503, 504] {
            assert!(!d.dead_letters(code(c)), "{c}");
        }
    }

    #[test]
    fn configured_statuses_ranges_and_classes_replace_the_default() {
        let d = DeadLetterStatuses::compile(Some(&[
            StatusEntry::Code(400),
            StatusEntry::Range("410-413".into()),
            StatusEntry::Range("5xx".into()),
        ]))
        .unwrap();
        for (c, dl) in [
            (400, true),
            (401, false),
            (404, false),
            (410, true),
            (413, true),
            (414, false),
            (500, true),
            (599, true),
        ] {
            assert_eq!(d.dead_letters(code(c)), dl, "{c}");
        }
    }

    #[test]
    fn entries_outside_300_to_599_or_malformed_are_named() {
        for bad in [
            StatusEntry::Code(200),
            StatusEntry::Range("2xx".into()),
            StatusEntry::Range("450-420".into()),
            StatusEntry::Range("four hundred".into()),
            StatusEntry::Range("4xxx".into()),
        ] {
            let e = DeadLetterStatuses::compile(Some(&[StatusEntry::Code(400), bad.clone()]))
                .unwrap_err();
            assert_eq!(e.path, "deadLetterStatuses[1]", "{bad:?}");
        }
    }
}
