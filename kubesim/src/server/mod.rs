//! The HTTP side: accept loop, request dispatch, fault injection, request log.

mod admin;
mod discovery;
pub(crate) mod resources;
mod route;
mod table;
mod watch;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch as tokio_watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::config::SimConfig;
use crate::error::{ApiError, Error};
use crate::faults::{Faults, StopMode};
use crate::kinds::{KindId, Registry};
use crate::reqlog::{RequestLog, RequestRecord};
use crate::store::Store;
use resources::{Ctx, Query};
use route::Route;

/// Response body type for everything we serve.
pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

/// The real server's request body limit.
const MAX_BODY: usize = 3 * 1024 * 1024;

pub(crate) fn full(code: StatusCode, ct: &str, b: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", ct)
        .body(
            Full::new(b.into())
                .map_err(|e: Infallible| match e {})
                .boxed(),
        )
        .expect("static response parts are valid")
}

pub(crate) fn json_response(code: StatusCode, v: &serde_json::Value) -> Response<Body> {
    full(
        code,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.to_status(),
    );
    if let Some(s) = e.retry_after {
        r.headers_mut().insert("retry-after", s.into());
    }
    r
}

/// A running accept loop.
struct ServerTask {
    shutdown: oneshot::Sender<()>,
    join: JoinHandle<()>,
}

/// A kind whose objects are generated when listed, never stored: `count` objects, the
/// `i`-th one's JSON made by `make(i)`. It lets one machine serve a list far larger than it
/// could hold as stored objects (a 1M-Pod initial sync). Only paginated lists see them:
/// no watch events, no gets, no selectors.
#[derive(Clone)]
pub(crate) struct Synthetic {
    pub count: usize,
    pub make: Arc<dyn Fn(usize) -> Bytes + Send + Sync>,
}

/// State shared by the handle, the accept loop and every connection.
pub(crate) struct Shared {
    pub cfg: SimConfig,
    pub registry: Arc<Registry>,
    store: RwLock<Arc<Store>>,
    faults: Mutex<Option<Faults>>,
    pub stop: tokio_watch::Sender<StopMode>,
    drop_tx: tokio_watch::Sender<u64>,
    /// Bumped to freeze every watch open at that moment (a half-open connection).
    freeze_tx: tokio_watch::Sender<u64>,
    /// Whether watches with `sendInitialEvents` are served (the `WatchList` feature).
    streaming_lists: std::sync::atomic::AtomicBool,
    /// Kinds whose list is generated on request instead of stored ([`Synthetic`]).
    synthetic: Mutex<HashMap<KindId, Synthetic>>,
    pub reqlog: RequestLog,
    addr: Mutex<SocketAddr>,
    server: tokio::sync::Mutex<Option<ServerTask>>,
}

impl Shared {
    pub(crate) fn new(cfg: SimConfig) -> Arc<Shared> {
        let registry = Arc::new(Registry::new(&cfg.extra_kinds));
        Arc::new(Shared {
            store: RwLock::new(Arc::new(Store::new(registry.clone(), cfg.history_limit))),
            registry,
            faults: Mutex::new(None),
            stop: tokio_watch::channel(StopMode::Answering).0,
            drop_tx: tokio_watch::channel(0).0,
            freeze_tx: tokio_watch::channel(0).0,
            streaming_lists: std::sync::atomic::AtomicBool::new(cfg.streaming_lists),
            synthetic: Mutex::new(HashMap::new()),
            reqlog: RequestLog::new(cfg.request_log_limit),
            addr: Mutex::new(cfg.addr),
            server: tokio::sync::Mutex::new(None),
            cfg,
        })
    }

    pub(crate) fn store(&self) -> Arc<Store> {
        self.store.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        *self.addr.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn faults(&self) -> Option<Faults> {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_faults(&self, f: Option<Faults>) {
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }

    pub(crate) fn drop_rx(&self) -> tokio_watch::Receiver<u64> {
        self.drop_tx.subscribe()
    }

    pub(crate) fn drop_watches(&self) {
        self.drop_tx.send_modify(|g| *g += 1);
    }

    pub(crate) fn freeze_rx(&self) -> tokio_watch::Receiver<u64> {
        self.freeze_tx.subscribe()
    }

    pub(crate) fn freeze_watches(&self) {
        self.freeze_tx.send_modify(|g| *g += 1);
    }

    pub(crate) fn streaming_lists(&self) -> bool {
        self.streaming_lists
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set_streaming_lists(&self, on: bool) {
        self.streaming_lists
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn synthetic(&self, kind: KindId) -> Option<Synthetic> {
        self.synthetic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&kind)
            .cloned()
    }

    pub(crate) fn set_synthetic(&self, kind: KindId, s: Synthetic) {
        self.synthetic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind, s);
    }

    /// Binds (the configured address first time, the same port afterwards) and starts accepting.
    pub(crate) async fn listen(self: &Arc<Self>) -> Result<(), Error> {
        let addr = self.addr();
        let listener = bind(addr).map_err(|source| Error::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        *self.addr.lock().unwrap_or_else(|e| e.into_inner()) = bound;
        let (tx, rx) = oneshot::channel();
        let join = tokio::spawn(serve(self.clone(), listener, rx));
        *self.server.lock().await = Some(ServerTask { shutdown: tx, join });
        tracing::info!(addr = %bound, "kubesim listening");
        Ok(())
    }

    /// Stops accepting and aborts every open connection (watches included).
    pub(crate) async fn stop_server(&self) {
        if let Some(t) = self.server.lock().await.take() {
            let _ = t.shutdown.send(());
            let _ = t.join.await;
        }
    }

    /// Boxed so the accept loop's future type does not contain itself (admin restart → listen → serve).
    pub(crate) fn restart(
        self: &Arc<Self>,
        keep_state: bool,
    ) -> futures::future::BoxFuture<'static, Result<(), Error>> {
        let sh = self.clone();
        Box::pin(async move {
            sh.stop_server().await;
            if !keep_state {
                *sh.store.write().unwrap_or_else(|e| e.into_inner()) =
                    Arc::new(Store::new(sh.registry.clone(), sh.cfg.history_limit));
            }
            sh.listen().await
        })
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Restarts rebind the same port while old connections sit in TIME_WAIT.
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

async fn serve(sh: Arc<Shared>, listener: TcpListener, mut shutdown: oneshot::Receiver<()>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let sh = sh.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(sh.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// The verb the real API server's authorizer would see.
fn verb_of(method: &Method, route: &Route, q: &Query<'_>) -> (&'static str, bool) {
    match route {
        Route::Resource(r) => {
            let watch = r.legacy_watch || (method == Method::GET && q.flag("watch"));
            let verb = match (method.as_str(), r.name.is_some()) {
                _ if watch => "watch",
                ("GET", false) => "list",
                ("GET", true) => "get",
                ("POST", _) => "create",
                ("PUT", _) => "update",
                ("PATCH", _) => "patch",
                ("DELETE", true) => "delete",
                ("DELETE", false) => "deletecollection",
                _ => "unknown",
            };
            (verb, watch)
        }
        Route::Admin(_) => ("admin", false),
        Route::NotFound => ("unknown", false),
        _ => ("discovery", false),
    }
}

async fn handle(sh: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
    let time = SystemTime::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = route::parse_query(req.uri().query());
    let route = route::parse(&path, &sh.registry);
    let q = Query(&query);
    let (verb, watch) = verb_of(&method, &route, &q);
    let record = |status: u16| RequestRecord {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        verb: verb.to_string(),
        watch,
        time,
        status,
    };
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (accept, content_type) = (header("accept"), header("content-type"));
    let user_agent = header("user-agent");

    if !matches!(route, Route::Admin(_)) {
        loop {
            let mode = *sh.stop.borrow();
            match mode {
                StopMode::Answering => break,
                StopMode::Reset => {
                    sh.reqlog.push(record(0));
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "kubesim: not answering",
                    ));
                }
                StopMode::Hang => {
                    let mut rx = sh.stop.subscribe();
                    let _ = rx.wait_for(|m| *m != StopMode::Hang).await;
                }
            }
        }
        if let Some(f) = sh.faults().filter(|f| f.applies(verb, watch)) {
            let (delay, fail) = {
                let mut rng = rand::rng();
                (
                    rng.random_bool(f.delay_rate.clamp(0.0, 1.0)),
                    rng.random_bool(f.error_rate.clamp(0.0, 1.0)),
                )
            };
            if delay {
                tokio::time::sleep(Duration::from_millis(f.delay_ms)).await;
            }
            if fail {
                let e = injected_error(&f);
                sh.reqlog.push(record(e.code));
                return Ok(error_response(&e));
            }
        }
    }

    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let e = ApiError::new(
                413,
                "RequestEntityTooLarge",
                "Request entity too large: limit is 3145728",
            );
            sh.reqlog.push(record(413));
            return Ok(error_response(&e));
        }
    };
    let resp = match dispatch(
        &sh,
        route,
        method.clone(),
        q,
        body,
        accept,
        content_type,
        user_agent,
        watch,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    sh.reqlog.push(record(resp.status().as_u16()));
    Ok(resp)
}

fn injected_error(f: &Faults) -> ApiError {
    let mut e = match f.error_code {
        429 => ApiError::new(429, "TooManyRequests", "the server has received too many requests and has asked us to try again later (injected by kubesim)")
            .with_details(serde_json::json!({"retryAfterSeconds": f.retry_after_seconds})),
        503 => ApiError::new(503, "ServiceUnavailable", "the server is currently unable to handle the request (injected by kubesim)"),
        504 => ApiError::new(504, "Timeout", "the server was unable to return a response in the time allotted (injected by kubesim)"),
        code => ApiError { code, ..ApiError::internal("an error on the server (\"injected by kubesim\") has prevented the request from succeeding") },
    };
    if matches!(f.error_code, 429 | 503) {
        e.retry_after = Some(f.retry_after_seconds);
    }
    e
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    sh: &Arc<Shared>,
    route: Route,
    method: Method,
    q: Query<'_>,
    body: Bytes,
    accept: String,
    content_type: String,
    user_agent: String,
    watch: bool,
) -> Result<Response<Body>, ApiError> {
    let get_only = |v: serde_json::Value| {
        if method == Method::GET {
            Ok(json_response(StatusCode::OK, &v))
        } else {
            Err(ApiError::method_not_allowed())
        }
    };
    let aggregated = |core: bool| {
        let v = discovery::aggregated(&sh.registry, core);
        let mut r = full(
            StatusCode::OK,
            discovery::AGGREGATED_CT,
            serde_json::to_vec(&v).unwrap_or_default(),
        );
        r.headers_mut()
            .insert("vary", http::HeaderValue::from_static("Accept"));
        r
    };
    match route {
        Route::Version => get_only(discovery::version()),
        Route::Health => Ok(full(StatusCode::OK, "text/plain; charset=utf-8", "ok")),
        Route::CoreVersions if method == Method::GET && discovery::wants_aggregated(&accept) => {
            Ok(aggregated(true))
        }
        Route::CoreVersions => get_only(discovery::core_versions(&sh.addr().to_string())),
        Route::Groups if method == Method::GET && discovery::wants_aggregated(&accept) => {
            Ok(aggregated(false))
        }
        Route::Groups => get_only(discovery::groups(&sh.registry)),
        Route::Group(g) => get_only(discovery::group(&sh.registry, &g)),
        Route::Resources(g, v) => get_only(discovery::resources(&sh.registry, &g, &v)),
        Route::Admin(p) => admin::handle(sh, &method, &p, q, body),
        Route::NotFound => Err(ApiError::path_not_found()),
        Route::Resource(r) => {
            let ctx = Ctx {
                shared: sh,
                store: sh.store(),
                method,
                query: q,
                body,
                content_type,
                accept,
                user_agent,
                watch,
            };
            resources::handle(ctx, r).await
        }
    }
}
