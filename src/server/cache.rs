//! Read-only queries on the informers' local cache, with Kubernetes selector syntax:
//!
//! - `GET /cache/{apiVersion}/{kind}?namespace=&labelSelector=&fieldSelector=` → a `v1 List`
//! - `GET /cache/{apiVersion}/{kind}/{namespace}/{name}` (or `/{name}` when cluster-scoped)
//!
//! Answers come from memory — the API server is not asked again — and hold the transformed
//! objects, so redacted values are never served.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Ops;
use crate::event::object;

/// `server.cache:`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CacheApiConfig {
    /// Serve `/cache/...` (off by default).
    #[serde(default)]
    pub enabled: bool,
    /// When set, requests need `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Query parameters of a list.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    namespace: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
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

/// `GET /cache/{*rest}`.
pub async fn handle(
    State(ops): State<Arc<Ops>>,
    headers: HeaderMap,
    Path(rest): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    if !super::authorized(&headers, ops.cache.token.as_deref()) {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "bearer token required".into(),
        );
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
    let informers: Vec<_> = ops
        .factory
        .informers()
        .into_iter()
        .filter(|i| i.key().api_version == api_version && i.key().kind == *kind)
        .collect();
    if informers.is_empty() {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{api_version} {kind} is not watched by this agent"),
        );
    }
    // Several informers (different selectors) may cache the same kind: merge by key.
    let mut objects: BTreeMap<String, Arc<Value>> = BTreeMap::new();
    for i in &informers {
        for o in i.store().objects() {
            objects.insert(object::cache_key(&o), o);
        }
    }
    match ident {
        [] => list(&objects, kind, &query),
        [name] => one(&objects, name.to_string(), kind),
        [ns, name] => one(&objects, format!("{ns}/{name}"), kind),
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "too many path segments".into(),
        ),
    }
}

fn is_version(s: &str) -> bool {
    s.strip_prefix('v')
        .is_some_and(|r| r.chars().next().is_some_and(|c| c.is_ascii_digit()))
}

fn one(objects: &BTreeMap<String, Arc<Value>>, key: String, kind: &str) -> Response {
    match objects.get(&key) {
        Some(o) => axum::Json(o.as_ref().clone()).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{kind} \"{key}\" not found in the cache"),
        ),
    }
}

fn list(objects: &BTreeMap<String, Arc<Value>>, kind: &str, q: &ListQuery) -> Response {
    let labels = match q
        .label_selector
        .as_deref()
        .map(k8s_selector::LabelSelector::parse)
    {
        Some(Err(e)) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("labelSelector: {e}"),
            );
        }
        Some(Ok(s)) => Some(s),
        None => None,
    };
    let fields = match q
        .field_selector
        .as_deref()
        .map(k8s_selector::FieldSelector::parse)
    {
        Some(Err(e)) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("fieldSelector: {e}"),
            );
        }
        Some(Ok(s)) => Some(s),
        None => None,
    };
    let items: Vec<Value> = objects
        .values()
        .filter(|o| {
            q.namespace
                .as_deref()
                .is_none_or(|ns| ns.is_empty() || object::namespace(o) == Some(ns))
        })
        .filter(|o| labels.as_ref().is_none_or(|s| s.matches_object(o)))
        .filter(|o| fields.as_ref().is_none_or(|s| s.matches(o, kind)))
        .map(|o| o.as_ref().clone())
        .collect();
    axum::Json(
        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
        "items": items}),
    )
    .into_response()
}
