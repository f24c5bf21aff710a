//! The ops HTTP server: `/metrics` (Prometheus text), `/healthz` (process alive), `/readyz`
//! (watches alive and sinks accepting, each failing reason named), and the cache API.
//!
//! Its own accept loop bounds what a client can hold: at most [`MAX_CONNECTIONS`] open
//! connections (more are closed at once), request headers within [`HEADER_READ_TIMEOUT`], a
//! response within [`REQUEST_TIMEOUT`], and a connection for at most [`CONNECTION_LIFETIME`].

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

/// Open connections at most; a connection beyond them is closed when accepted.
pub const MAX_CONNECTIONS: usize = 128;
/// A client must send its request headers within this long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A request not answered within this long gets 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A (keep-alive) connection is closed after this long.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// The routes.
fn router(ops: Arc<Ops>) -> Router {
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(ops.clone());
    if ops.cache.enabled {
        let state = cache::CacheState {
            ops: ops.clone(),
            limit: Arc::new(tokio::sync::Semaphore::new(cache::MAX_CONCURRENT)),
        };
        app = app.merge(
            Router::new()
                .route("/cache/{*rest}", get(cache::handle))
                .with_state(state),
        );
    }
    if ops.snapshot.enabled {
        app = app.merge(
            Router::new()
                .route("/snapshot", post(snapshot::handle))
                .with_state(ops.clone()),
        );
    }
    app.layer(axum::middleware::from_fn(request_timeout))
}

async fn request_timeout(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no answer within {REQUEST_TIMEOUT:?}\n"),
        )
            .into_response(),
    }
}

/// Serves the ops routes on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    ops: Arc<Ops>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    ops.cache.warn_if_open();
    if ops.snapshot.enabled && ops.snapshot.token.is_none() {
        tracing::warn!(
            "POST /snapshot is enabled without server.snapshot.token: anyone who can reach the \
             ops port can make the agent re-send resources"
        );
    }
    let app = router(ops);
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut open = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        while open.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(error = %e, "ops server cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!("ops server at its connection limit; closing a new connection");
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        open.spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
            }
            // Let the request in flight finish, briefly.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        });
    }
    stop.cancel();
    while open.join_next().await.is_some() {}
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
