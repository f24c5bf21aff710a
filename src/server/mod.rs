//! The ops HTTP server: `/metrics` (Prometheus text), `/healthz` (process alive), `/readyz`
//! (watches alive and sinks accepting, each failing reason named).

mod cache;
mod health;
mod metrics;
mod snapshot;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use cache::CacheApiConfig;
pub use health::Health;
pub use metrics::Metrics;
pub use snapshot::{SnapshotApiConfig, Snapshots};

/// `server:` in the config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerConfig {
    /// Address of the ops server (metrics, probes); port 0 picks a free one.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Readiness rules.
    #[serde(default)]
    pub readiness: ReadinessConfig,
    /// The read-only cache query API.
    #[serde(default)]
    pub cache: CacheApiConfig,
    /// Snapshots on demand (`POST /snapshot`).
    #[serde(default)]
    pub snapshot: SnapshotApiConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            readiness: ReadinessConfig::default(),
            cache: CacheApiConfig::default(),
            snapshot: SnapshotApiConfig::default(),
        }
    }
}

/// `server.readiness:`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReadinessConfig {
    /// An informer that has heard nothing from the API server (no event, no bookmark) for
    /// longer is reported not ready: its watch is presumed dead. API servers send bookmarks
    /// about once a minute, so keep this above a minute.
    #[serde(default = "default_max_silence", with = "humantime_serde")]
    pub max_silence: Duration,
}

impl Default for ReadinessConfig {
    fn default() -> Self {
        Self {
            max_silence: default_max_silence(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9090))
}
fn default_max_silence() -> Duration {
    Duration::from_secs(120)
}

/// Everything the routes read.
pub struct Ops {
    /// Readiness.
    pub health: Health,
    /// Prometheus registry and direct metrics.
    pub metrics: Arc<Metrics>,
    /// The informers, for the cache API.
    pub factory: Arc<crate::informer::InformerFactory>,
    /// Cache API settings.
    pub cache: CacheApiConfig,
    /// Snapshot API settings.
    pub snapshot: SnapshotApiConfig,
    /// Snapshots in progress.
    pub snapshots: Snapshots,
}

/// True when `token` is unset, or the request carries `Authorization: Bearer <token>`.
fn authorized(headers: &axum::http::HeaderMap, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        == Some(token)
}

/// Serves the ops routes on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    ops: Arc<Ops>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text));
    if ops.cache.enabled {
        app = app.route("/cache/{*rest}", get(cache::handle));
    }
    if ops.snapshot.enabled {
        app = app.route("/snapshot", post(snapshot::handle));
    }
    let app = app.with_state(ops);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "ops server failed");
    }
}

async fn readyz(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    let reasons = ops.health.not_ready_reasons();
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n- {}\n", reasons.join("\n- ")),
        )
    }
}

async fn metrics_text(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    match ops.metrics.encode() {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
