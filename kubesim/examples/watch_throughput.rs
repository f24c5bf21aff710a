//! Benchmark: how many watch events per second one kubesim serves to one watcher (~1 KB objects).
//!
//! `cargo run --release -p kubesim --example watch_throughput -- [EVENTS] [JSON_OUT]`
//!
//! Two measurements:
//! - replay: EVENTS changes are written first, then one watcher streams them all from the history
//!   (pure serving throughput);
//! - live: the watcher is connected first and a writer task makes EVENTS changes concurrently
//!   (end-to-end, bounded by the write path too).

use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use kubesim::{KubeSim, SimConfig};
use serde_json::json;

const OBJECTS: usize = 16;

fn object(i: usize) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("bench-{i}"), "namespace": "default", "labels": {"app": "bench", "tier": "backend"},
            "annotations": {"example.com/note": "x".repeat(200)}},
        "data": {"payload": "y".repeat(600), "counter": "0"}})
}

/// Makes `n` real changes (every value unique, so none is a no-op write).
async fn write(sim: &KubeSim, n: usize, round: usize) {
    for i in 0..n {
        sim.merge_patch(
            "v1",
            "ConfigMap",
            Some("default"),
            &format!("bench-{}", i % OBJECTS),
            json!({"data": {"counter": format!("{round}-{i}")}}),
        )
        .expect("patch");
        if i % 4096 == 0 {
            tokio::task::yield_now().await;
        }
    }
}

/// Streams a watch from `rv` and returns when `n` events arrived.
async fn watch_count(sim: &KubeSim, rv: u64, n: usize) -> usize {
    let stream = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!(
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}"
        ))
        .header("host", "kubesim")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let mut body = send.send_request(req).await.unwrap().into_body();
    let (mut events, mut bytes) = (0usize, 0usize);
    while events < n {
        let Some(Ok(frame)) = body.frame().await else {
            break;
        };
        if let Ok(d) = frame.into_data() {
            bytes += d.len();
            events += d.iter().filter(|b| **b == b'\n').count();
        }
    }
    bytes / events.max(1)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let json_out = args.next();
    let sim = KubeSim::start(SimConfig {
        history_limit: n + 1000,
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..OBJECTS {
        sim.create("v1", "ConfigMap", object(i)).unwrap();
    }

    let start_rv = sim.current_resource_version();
    let t = Instant::now();
    write(&sim, n, 1).await;
    let write_rate = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let avg = watch_count(&sim, start_rv, n).await;
    let replay = n as f64 / t.elapsed().as_secs_f64();

    let live_rv = sim.current_resource_version();
    let t = Instant::now();
    let watcher = tokio::spawn({
        let sim = sim.clone();
        async move { watch_count(&sim, live_rv, n).await }
    });
    write(&sim, n, 2).await;
    watcher.await.unwrap();
    let live = n as f64 / t.elapsed().as_secs_f64();

    println!("kubesim watch throughput: {replay:.0} events/s");
    println!(
        "  replay of {n} events of ~{avg} bytes per watch line to one watcher: {replay:.0} events/s"
    );
    println!(
        "  live (writer and watcher concurrently): {live:.0} events/s; write path alone: {write_rate:.0} writes/s"
    );
    if let Some(path) = json_out {
        let report = json!({"events": n, "avg_event_bytes": avg, "replay_events_per_sec": replay.round(), "live_events_per_sec": live.round(), "writes_per_sec": write_rate.round()});
        std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
        println!("  wrote {path}");
    }
    sim.shutdown().await;
}
