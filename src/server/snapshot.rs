//! `POST /snapshot`: re-emit the current state of chosen resources as reads (Debezium's `r`,
//! the envelope's `snapshot` marker), to bootstrap or re-reconcile a lake without restarting
//! the agent. Live changes keep flowing meanwhile; see `informer::snapshot` for why a read
//! never overwrites a newer change downstream.
//!
//! ```text
//! POST /snapshot
//! {"resources": [{"apiVersion": "apps/v1", "kind": "Deployment"}],
//!  "namespace": "shop", "labelSelector": "app=web"}
//! → 202 {"id": "…", "resources": [{"apiVersion": …, "kind": …, "informer": …, "cached": n}]}
//! ```

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Ops;
use super::cache::{refuse_unauthorized, status};
use crate::informer::{SharedInformer, SnapshotFilter};

/// `server.snapshot:`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SnapshotApiConfig {
    /// Serve `POST /snapshot` (off by default).
    #[serde(default)]
    pub enabled: bool,
    /// When set, requests need `Authorization: Bearer <token>`. Must not be empty or blank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl SnapshotApiConfig {
    /// Checks the token, as for the cache API.
    ///
    /// # Errors
    /// `(key below server.snapshot, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        super::CacheApiConfig {
            enabled: self.enabled,
            token: self.token.clone(),
        }
        .validate()
    }
}

/// The body of `POST /snapshot`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SnapshotRequest {
    /// The resources to read: every watched informer of each `apiVersion` + `kind`.
    resources: Vec<ResourceRef>,
    /// Only this namespace.
    #[serde(default)]
    namespace: Option<String>,
    /// Only objects matching this label selector.
    #[serde(default)]
    label_selector: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResourceRef {
    api_version: String,
    kind: String,
}

/// Snapshots in progress, one at a time per informer.
#[derive(Debug, Default)]
pub struct Snapshots {
    running: Mutex<HashSet<String>>,
    /// Ends running snapshots (shutdown).
    pub cancel: CancellationToken,
    /// This replica forwards (a standby, or a replica still comparing its caches with the
    /// delivered state, would read into nothing).
    forwarding: AtomicBool,
}

impl Snapshots {
    /// Set by the pipeline when it starts and stops forwarding.
    pub fn set_forwarding(&self, on: bool) {
        self.forwarding.store(on, Ordering::Release);
    }
}

/// Releases an informer's slot when its snapshot ends.
struct Running(Arc<Ops>, String);

impl Drop for Running {
    fn drop(&mut self) {
        self.0
            .snapshots
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

/// `POST /snapshot`.
pub async fn handle(State(ops): State<Arc<Ops>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = refuse_unauthorized(ops.snapshot.token.as_deref(), &headers) {
        return refused;
    }
    if !ops.snapshots.forwarding.load(Ordering::Acquire) {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "this replica does not forward changes now (a standby, starting, or stopping)".into(),
        );
    }
    let req: SnapshotRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!(
                    "expected {{\"resources\": [{{\"apiVersion\", \"kind\"}}], \"namespace\"?, \"labelSelector\"?}}: {e}"
                ),
            );
        }
    };
    if req.resources.is_empty() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "`resources` names no resource".into(),
        );
    }
    let labels = match req.label_selector.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => match kubesim::selector::LabelSelector::parse(s) {
            Ok(sel) => Some(sel),
            Err(e) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("labelSelector: {e}"),
                );
            }
        },
        None => None,
    };
    let filter = SnapshotFilter {
        namespace: req.namespace.filter(|s| !s.is_empty()),
        labels,
    };

    let mut chosen: Vec<Arc<SharedInformer>> = Vec::new();
    for r in &req.resources {
        let found: Vec<_> = ops
            .factory
            .informers()
            .into_iter()
            .filter(|i| {
                i.key().api_version == r.api_version && i.key().kind == r.kind && i.has_handlers()
            })
            .filter(|i| {
                // An informer scoped to another namespace holds none of the objects asked for.
                match (&i.key().namespace, &filter.namespace) {
                    (Some(scope), Some(ns)) => scope == ns,
                    _ => true,
                }
            })
            .collect();
        if found.is_empty() {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!(
                    "{} {} is not forwarded by this agent",
                    r.api_version, r.kind
                ),
            );
        }
        for i in found {
            if !i.has_synced() {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!("{}: the initial list is still in progress", i.key()),
                );
            }
            if !chosen.iter().any(|c| Arc::ptr_eq(c, &i)) {
                chosen.push(i);
            }
        }
    }
    let keys: Vec<String> = chosen.iter().map(|i| i.key().to_string()).collect();
    {
        let mut running = ops
            .snapshots
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(busy) = keys.iter().find(|k| running.contains(*k)) {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                format!("{busy}: a snapshot is already in progress"),
            );
        }
        running.extend(keys.iter().cloned());
    }

    let id = uuid::Uuid::now_v7().to_string();
    let started: Vec<_> = chosen
        .iter()
        .map(|i| {
            json!({"apiVersion": i.key().api_version, "kind": i.key().kind,
                "informer": i.key().to_string(), "cached": i.store().len()})
        })
        .collect();
    for (informer, key) in chosen.into_iter().zip(keys) {
        let slot = Running(ops.clone(), key.clone());
        let (filter, id) = (filter.clone(), id.clone());
        tokio::spawn(async move {
            let ops = slot.0.clone();
            info!(snapshot = %id, informer = %key, "snapshot started");
            let read = informer.snapshot(&filter, &ops.snapshots.cancel).await;
            if ops.snapshots.cancel.is_cancelled() {
                warn!(snapshot = %id, informer = %key, read, "snapshot stopped by shutdown");
            } else {
                info!(snapshot = %id, informer = %key, read, "snapshot done");
            }
            drop(slot);
        });
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"id": id, "resources": started})),
    )
        .into_response()
}
