//! A webhook receiver on loopback that can go down and come back, for the spine and fault
//! model tests: it answers 200, 503, swallows requests (takes them, never answers), or closes
//! its port altogether, and keeps every envelope it took in.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How the receiver treats requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200, envelopes kept.
    Up,
    /// 503 Service Unavailable, nothing kept.
    Unavailable,
    /// The envelopes are kept (the consumer has them) but no answer ever comes: the sender
    /// cannot know they arrived.
    Swallow,
    /// Nothing listens: connections are refused.
    Closed,
}

struct Shared {
    /// Every envelope taken in (answered 200, or swallowed), in arrival order.
    received: Mutex<Vec<Value>>,
    /// Requests of any outcome.
    requests: Mutex<usize>,
    mode: watch::Sender<Mode>,
}

/// The receiver; dropping it stops it.
pub struct Hook {
    /// Where it listens (kept across a close and a reopen).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: Mutex<Option<JoinSet<()>>>,
}

impl Hook {
    /// A receiver on a free loopback port, up.
    pub async fn start() -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hook = Hook {
            addr,
            shared: Arc::new(Shared {
                received: Mutex::new(Vec::new()),
                requests: Mutex::new(0),
                mode: watch::channel(Mode::Up).0,
            }),
            server: Mutex::new(None),
        };
        hook.serve(listener);
        hook
    }

    /// The sink URL.
    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    fn serve(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let mut set = JoinSet::new();
        set.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        *self.server.lock().unwrap() = Some(set);
    }

    /// Changes how requests are treated; `Closed` stops listening (and drops every open
    /// connection), leaving `Closed` listens again on the same port.
    pub async fn set(&self, mode: Mode) {
        let was = *self.shared.mode.borrow();
        self.shared.mode.send_replace(mode);
        if mode == Mode::Closed && was != Mode::Closed {
            if let Some(mut set) = self.server.lock().unwrap().take() {
                set.abort_all();
            }
        } else if mode != Mode::Closed && was == Mode::Closed {
            let listener = loop {
                match TcpListener::bind(self.addr).await {
                    Ok(l) => break l,
                    // The old socket may linger for a moment.
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                }
            };
            self.serve(listener);
        }
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// Every envelope taken in so far.
    pub fn received(&self) -> Vec<Value> {
        let received = self.shared.received.lock().unwrap().clone();
        received.into_iter().map(crate::common::checked).collect()
    }

    /// Requests seen so far (any outcome).
    pub fn requests(&self) -> usize {
        *self.shared.requests.lock().unwrap()
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    *shared.requests.lock().unwrap() += 1;
    let mode = *shared.mode.borrow();
    let take = || {
        let items = match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(items)) => items,
            Ok(one) => vec![one],
            Err(_) => Vec::new(),
        };
        shared.received.lock().unwrap().extend(items);
    };
    let status = match mode {
        Mode::Up => {
            take();
            StatusCode::OK
        }
        Mode::Unavailable | Mode::Closed => StatusCode::SERVICE_UNAVAILABLE,
        Mode::Swallow => {
            take();
            // Never answers; the sender gives up on its own (timeout, or its process dies).
            std::future::pending::<()>().await;
            unreachable!()
        }
    };
    Ok(Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .unwrap())
}
