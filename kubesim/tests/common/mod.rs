//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kubesim::{KubeSim, SimConfig};
use serde_json::Value;

pub async fn start() -> KubeSim {
    start_with(SimConfig::default()).await
}

pub async fn start_with(cfg: SimConfig) -> KubeSim {
    KubeSim::start(cfg).await.expect("kubesim starts")
}

/// A kube client built from the kubeconfig the simulator writes, like a user's would be.
pub async fn client(sim: &KubeSim) -> kube::Client {
    let kc = Kubeconfig::from_yaml(&sim.kubeconfig_yaml()).expect("kubeconfig parses");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    kube::Client::try_from(cfg).expect("kube client")
}

/// A raw HTTP response.
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One raw HTTP/1.1 request (no client-side interpretation of error codes).
pub async fn http(
    sim: &KubeSim,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> Resp {
    http_with(
        sim,
        method,
        path,
        &[("content-type", content_type.unwrap_or("application/json"))],
        body,
    )
    .await
}

pub async fn http_with(
    sim: &KubeSim,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let stream = tokio::net::TcpStream::connect(sim.addr())
        .await
        .expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", sim.addr().to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Resp {
        status,
        headers,
        body,
    }
}

/// Reads a watch stream's lines until `n` lines arrived or the stream ends (bounded by a timeout).
pub async fn watch_lines(sim: &KubeSim, path: &str, n: usize) -> Vec<Value> {
    let stream = tokio::net::TcpStream::connect(sim.addr())
        .await
        .expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(path)
        .header("host", "x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.expect("request");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while out.len() < n {
            let Some(Ok(frame)) = body.frame().await else {
                break;
            };
            if let Ok(d) = frame.into_data() {
                buf.extend_from_slice(&d);
                while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    out.push(serde_json::from_slice(&line).expect("watch line is JSON"));
                }
            }
        }
    })
    .await;
    out
}

pub fn cm(name: &str, ns: &str, data: &str) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns, "labels": {"app": "demo"}}, "data": {"k": data}})
}
