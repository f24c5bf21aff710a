//! Read-only queries on the informers' local cache, with Kubernetes selector syntax:
//!
//! - `GET /cache/{apiVersion}/{kind}?namespace=&labelSelector=&fieldSelector=&limit=&continue=`
//!   → a `v1 List`, in pages like the API server's (`metadata.continue`)
//! - `GET /cache/{apiVersion}/{kind}/{namespace}/{name}` (or `/{name}` when cluster-scoped)
//!
//! Answers come from memory — the API server is not asked again — and hold the transformed
//! objects, so redacted values are never served.
//!
//! Security model: off by default; with `token`, every request needs `Authorization: Bearer
//! <token>` (compared in constant time); without one, anyone who reaches the port reads the
//! cache, and the agent says so at every start. The work is bounded: a single-object GET
//! decodes that one object, a list decodes one object at a time and stops at a page of
//! [`MAX_PAGE_ITEMS`] objects or [`MAX_PAGE_BYTES`] bytes, and all decoding runs on the
//! blocking pool, at most [`MAX_CONCURRENT`] requests at once (others get 429), so the async
//! workers that renew the lease and answer the probes never wait behind it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::Ops;
use crate::event::object;
use crate::informer::SharedInformer;

/// Cache requests decoding objects at the same time; more are answered 429.
pub const MAX_CONCURRENT: usize = 2;
/// Objects in one list page at most (also the page size when `limit` is not given).
pub const MAX_PAGE_ITEMS: usize = 500;
/// Bytes of objects in one list page at most; a page ends early (with a `continue` token)
/// rather than grow past it. A single larger object is still served alone.
pub const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// `server.cache:`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CacheApiConfig {
    /// Serve `/cache/...` (off by default).
    #[serde(default)]
    pub enabled: bool,
    /// When set, requests need `Authorization: Bearer <token>`. Must not be empty or blank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl CacheApiConfig {
    /// Checks the token.
    ///
    /// # Errors
    /// `(key below server.cache, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err((
                "token",
                "must not be empty or blank (an unset `${VAR:-}`?): an empty bearer token \
                 would let anyone in; remove `token` to run without one, or set it"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Says at start what the configuration exposes.
    pub fn warn_if_open(&self) {
        if self.enabled && self.token.is_none() {
            tracing::warn!(
                "the cache API is enabled without server.cache.token: anyone who can reach the \
                 ops port can read every cached object (redacted values stay redacted)"
            );
        }
    }
}

/// What the cache route reads: the ops state and the concurrency limit.
#[derive(Clone)]
pub struct CacheState {
    /// Informers and settings.
    pub ops: Arc<Ops>,
    /// Permits for decoding work.
    pub limit: Arc<Semaphore>,
}

/// Query parameters of a list.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    namespace: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    continue_: Option<String>,
}

/// A Kubernetes `Status` error answer.
pub(super) fn status(code: StatusCode, reason: &str, message: String) -> Response {
    (
        code,
        axum::Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()})),
    )
        .into_response()
}

/// The 401 answer when a token is configured and `headers` do not carry it.
pub(super) fn refuse_unauthorized(token: Option<&str>, headers: &HeaderMap) -> Option<Response> {
    let token = token?;
    (!authorized(token, headers)).then(|| {
        status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "bearer token required".into(),
        )
    })
}

/// True when `headers` carry `Bearer <expected>`. Both sides are hashed first, so the
/// comparison takes the same time whatever the length or content of the guess.
pub(super) fn authorized(expected: &str, headers: &HeaderMap) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(expected.as_bytes()),
    );
    a.ct_eq(&b).into()
}

/// `GET /cache/{*rest}`.
pub async fn handle(
    State(state): State<CacheState>,
    headers: HeaderMap,
    Path(rest): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    let ops = &state.ops;
    if let Some(refused) = refuse_unauthorized(ops.cache.token.as_deref(), &headers) {
        return refused;
    }
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    // Core versions have no group: /cache/v1/Pod; others do: /cache/apps/v1/Deployment.
    let (api_version, tail) = match segments.as_slice() {
        [v, rest @ ..] if is_version(v) => (v.to_string(), rest),
        [g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "expected /cache/{apiVersion}/{kind}".into(),
            );
        }
    };
    let Some((kind, ident)) = tail.split_first() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "expected /cache/{apiVersion}/{kind}".into(),
        );
    };
    let kind = kind.to_string();
    let informers: Vec<_> = ops
        .factory
        .informers()
        .into_iter()
        .filter(|i| i.key().api_version == api_version && i.key().kind == kind)
        .collect();
    if informers.is_empty() {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{api_version} {kind} is not watched by this agent"),
        );
    }
    let key = match ident {
        [] => None,
        [name] => Some(name.to_string()),
        [ns, name] => Some(format!("{ns}/{name}")),
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "too many path segments".into(),
            );
        }
    };
    let work: Box<dyn FnOnce() -> Response + Send> = match key {
        Some(key) => Box::new(move || one(&informers, &key, &kind)),
        None => {
            let list = match ListRequest::parse(&query) {
                Ok(l) => l,
                Err(response) => return *response,
            };
            Box::new(move || list.run(&informers, &kind))
        }
    };
    let Ok(permit) = state.limit.clone().try_acquire_owned() else {
        let mut r = status(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            format!("at most {MAX_CONCURRENT} cache requests at once; retry"),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    // Decoding and encoding objects is CPU work: off the async workers. The permit moves
    // into the task, so a request that timed out still counts until its work is done.
    match tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    {
        Ok(r) => r,
        Err(e) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("cache query failed: {e}"),
        ),
    }
}

fn is_version(s: &str) -> bool {
    s.strip_prefix('v')
        .is_some_and(|r| r.chars().next().is_some_and(|c| c.is_ascii_digit()))
}

fn json_response(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// One object: decoded from the first informer that caches it, and only that one.
fn one(informers: &[Arc<SharedInformer>], key: &str, kind: &str) -> Response {
    match informers.iter().find_map(|i| i.store().current(key)) {
        Some(o) => json_response(serde_json::to_vec(o.as_ref()).unwrap_or_default()),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{kind} \"{key}\" not found in the cache"),
        ),
    }
}

/// A parsed list request.
struct ListRequest {
    namespace: Option<String>,
    labels: Option<k8s_selector::LabelSelector>,
    fields: Option<k8s_selector::FieldSelector>,
    limit: usize,
    /// Resume after this cache key.
    after: Option<String>,
}

impl ListRequest {
    fn parse(q: &ListQuery) -> Result<Self, Box<Response>> {
        let bad = |m: String| Box::new(status(StatusCode::BAD_REQUEST, "BadRequest", m));
        let labels = q
            .label_selector
            .as_deref()
            .map(k8s_selector::LabelSelector::parse)
            .transpose()
            .map_err(|e| bad(format!("labelSelector: {e}")))?;
        let fields = q
            .field_selector
            .as_deref()
            .map(k8s_selector::FieldSelector::parse)
            .transpose()
            .map_err(|e| bad(format!("fieldSelector: {e}")))?;
        let after = match q.continue_.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(token) => Some(
                hex::decode(token)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| bad("continue: not a token this agent issued".into()))?,
            ),
        };
        Ok(Self {
            namespace: q.namespace.clone().filter(|ns| !ns.is_empty()),
            labels,
            fields,
            // `limit=0` or none: the largest page, like an unlimited list cut into pages.
            limit: q
                .limit
                .filter(|l| *l > 0)
                .map_or(MAX_PAGE_ITEMS, |l| l.min(MAX_PAGE_ITEMS)),
            after,
        })
    }

    fn matches(&self, o: &Value, kind: &str) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| object::namespace(o) == Some(ns))
            && self.labels.as_ref().is_none_or(|s| s.matches_object(o))
            && self.fields.as_ref().is_none_or(|s| s.matches(o, kind))
    }

    /// One page, read again (up to twice) when a re-list was swapped into a cache while the
    /// page was being read: read object by object, it would mix the old list with the new.
    fn run(&self, informers: &[Arc<SharedInformer>], kind: &str) -> Response {
        let generations =
            || -> Vec<u64> { informers.iter().map(|i| i.store().generation()).collect() };
        let mut attempts = 0;
        loop {
            let before = generations();
            let page = self.read_page(informers, kind);
            attempts += 1;
            if attempts == 3 || generations() == before {
                return page;
            }
        }
    }

    /// One page: keys in order after the `continue` point, each object decoded, tested and
    /// encoded on its own, so memory holds the keys and the page, never the whole kind.
    fn read_page(&self, informers: &[Arc<SharedInformer>], kind: &str) -> Response {
        // Several informers (different selectors) may cache the same kind: merged by key,
        // the last informer's copy winning like a map insert.
        let mut keys: BTreeMap<String, usize> = BTreeMap::new();
        for (i, informer) in informers.iter().enumerate() {
            for k in informer.store().keys() {
                if self.after.as_ref().is_none_or(|a| k > *a) {
                    keys.insert(k, i);
                }
            }
        }
        let mut items = Vec::new();
        let mut count = 0;
        let mut last_covered: Option<&String> = None;
        let mut continue_after = None;
        for (key, i) in &keys {
            if count == self.limit || (count > 0 && items.len() >= MAX_PAGE_BYTES) {
                continue_after = last_covered;
                break;
            }
            last_covered = Some(key);
            // The namespace filter needs no decoding: it is the key's prefix.
            if let Some(ns) = &self.namespace
                && key.split_once('/').is_none_or(|(k, _)| k != ns)
            {
                continue;
            }
            let Some(o) = informers[*i].store().current(key) else {
                continue;
            };
            if !self.matches(&o, kind) {
                continue;
            }
            if count > 0 {
                items.push(b',');
            }
            serde_json::to_writer(&mut items, o.as_ref()).unwrap_or_default();
            count += 1;
        }
        let continue_token = continue_after.map(|k| hex::encode(k.as_bytes()));
        let metadata = match &continue_token {
            Some(c) => json!({"resourceVersion": "", "continue": c}),
            None => json!({"resourceVersion": ""}),
        };
        let mut body = Vec::with_capacity(items.len() + 128);
        body.extend_from_slice(br#"{"apiVersion":"v1","kind":"List","metadata":"#);
        serde_json::to_writer(&mut body, &metadata).unwrap_or_default();
        body.extend_from_slice(br#","items":["#);
        body.extend_from_slice(&items);
        body.extend_from_slice(b"]}");
        json_response(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        let mut h = HeaderMap::new();
        assert!(!authorized("s3cret", &h));
        for (value, ok) in [
            ("Bearer s3cret", true),
            ("Bearer s3cre", false),
            ("Bearer s3cret ", false),
            ("Bearer ", false),
            ("bearer s3cret", false),
            ("s3cret", false),
        ] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            assert_eq!(authorized("s3cret", &h), ok, "{value:?}");
        }
    }

    #[test]
    fn blank_tokens_are_refused_by_validation() {
        let c = |t: &str| CacheApiConfig {
            enabled: true,
            token: Some(t.into()),
        };
        assert_eq!(c("").validate().unwrap_err().0, "token");
        assert_eq!(c(" \t").validate().unwrap_err().0, "token");
        assert!(c("x").validate().is_ok());
    }
}
