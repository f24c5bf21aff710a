//! A scriptable HTTP(S) receiver on loopback: records every request and answers what the
//! test's responder says.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// 0 for the first request.
    pub seq: usize,
    pub method: hyper::Method,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Arrival (tokio clock, so paused-time tests measure virtual time).
    pub at: Instant,
    /// What the receiver answered.
    pub status: StatusCode,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }
}

/// Decides the answer to a request: status and extra headers.
pub type Responder =
    Arc<dyn Fn(&Received) -> (StatusCode, Vec<(&'static str, String)>) + Send + Sync>;

/// Always 200.
pub fn ok() -> Responder {
    Arc::new(|_| (StatusCode::OK, Vec::new()))
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub requests: mpsc::UnboundedReceiver<Received>,
    /// TLS handshakes that failed (the client refused our certificate or vice versa).
    pub handshake_failures: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// A plain HTTP receiver on `127.0.0.1:0`.
    pub async fn start(responder: Responder) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, responder, None)
    }

    /// Serves on an already bound listener, over TLS when `tls` is given.
    pub fn serve(listener: TcpListener, responder: Responder, tls: Option<TlsAcceptor>) -> Self {
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let handshake_failures = Arc::new(AtomicUsize::new(0));
        let failures = handshake_failures.clone();
        let seq = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (tx, responder, seq, tls, failures) = (
                    tx.clone(),
                    responder.clone(),
                    seq.clone(),
                    tls.clone(),
                    failures.clone(),
                );
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (tx, responder, seq) = (tx.clone(), responder.clone(), seq.clone());
                        async move {
                            let at = Instant::now();
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes());
                            let mut received = Received {
                                seq: seq.fetch_add(1, Ordering::SeqCst),
                                method: parts.method,
                                headers: parts.headers,
                                body: body.unwrap_or_default(),
                                at,
                                status: StatusCode::OK,
                            };
                            let (status, headers) = responder(&received);
                            received.status = status;
                            let _ = tx.send(received);
                            let mut response = Response::builder().status(status);
                            for (k, v) in headers {
                                response = response.header(k, v);
                            }
                            Ok::<_, Infallible>(
                                response.body(Full::new(Bytes::from("answer"))).unwrap(),
                            )
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                            Err(_) => {
                                failures.fetch_add(1, Ordering::SeqCst);
                            }
                        },
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            handshake_failures,
            task,
        }
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}/hook", self.addr)
    }

    /// The next request, failing the test after `within` (real or paused time).
    pub async fn next(&mut self, within: std::time::Duration) -> Received {
        tokio::time::timeout(within, self.requests.recv())
            .await
            .expect("the receiver got no request in time")
            .expect("receiver stopped")
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
