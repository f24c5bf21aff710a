//! The webhook sink against real HTTP(S) receivers on loopback, driven by the real driver
//! (`spawn_driver_with_dead_letter`), so batching, retries, dead letters and acknowledgement
//! are the production ones.

mod certs;
mod receiver;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant as StdInstant, SystemTime};

use hyper::StatusCode;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::receiver::{Received, Receiver, Responder, ok};
use super::{SignatureError, verify};
use crate::event::{Envelope, EnvelopeBuilder, Op};
use crate::sinks::util::spawn_driver_with_dead_letter;
use crate::sinks::{AckObserver, Sink, SinkConfig, SinkContext, SinkError, SinkHandle, Slot};

/// Generous bound for anything that should happen "soon" in real time.
const SOON: Duration = Duration::from_secs(10);

struct Acks(mpsc::UnboundedSender<Arc<Envelope>>);

impl AckObserver for Acks {
    fn delivered(&self, slot: Slot) {
        let _ = self.0.send(slot.deliver);
    }
}

/// A running driver over a webhook sink, plus the acknowledgements it makes.
struct Harness {
    handle: Arc<SinkHandle>,
    acks: mpsc::UnboundedReceiver<Arc<Envelope>>,
    _abandon: CancellationToken,
}

impl Harness {
    fn start(config: &SinkConfig, state_dir: Option<&Path>) -> Self {
        let ctx = SinkContext {
            cluster: "test".into(),
            state_dir: state_dir.map(Path::to_path_buf),
        };
        let compiled = config.compile(&ctx).expect("sink compiles");
        let (name, capacity) = (compiled.common.name.clone(), compiled.common.queue_capacity);
        let started = compiled.start(&ctx).expect("sink starts");
        let (tx, acks) = mpsc::unbounded_channel();
        let abandon = CancellationToken::new();
        let handle = spawn_driver_with_dead_letter(
            name,
            started.sink,
            capacity,
            Arc::new(Acks(tx)),
            abandon.clone(),
            started.dead_letter,
        );
        Self {
            handle: Arc::new(handle),
            acks,
            _abandon: abandon,
        }
    }

    async fn send_all(&self, events: &[Arc<Envelope>]) {
        for e in events {
            assert!(self.handle.send(e.clone()).await);
        }
    }

    /// Waits until `n` events are acknowledged; returns them in acknowledgement order.
    async fn acked(&mut self, n: usize, within: Duration) -> Vec<Arc<Envelope>> {
        let mut out = Vec::new();
        tokio::time::timeout(within, async {
            while out.len() < n {
                out.push(self.acks.recv().await.expect("driver alive"));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("only {} of {n} events acknowledged in time", out.len()));
        out
    }
}

fn config(url: &str, extra: &str) -> SinkConfig {
    let yaml = format!("name: hook\ntype: webhook\nurl: {url}\n{extra}");
    let c: SinkConfig = serde_yaml_ng::from_str(&yaml).expect("test config parses");
    c.compile(&SinkContext::default())
        .expect("test config is valid");
    c
}

/// The sink alone, without a driver.
fn direct(config: &SinkConfig) -> Arc<dyn Sink> {
    let ctx = SinkContext::default();
    config
        .compile(&ctx)
        .expect("compiles")
        .start(&ctx)
        .expect("starts")
        .sink
}

/// A ConfigMap change: `object` is its name and uid, `rv` its resourceVersion.
fn event(object: &str, rv: u64) -> Arc<Envelope> {
    let e = EnvelopeBuilder {
        cluster: "test".into(),
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        plural: "configmaps".into(),
        source: "v1/ConfigMap".into(),
        include_old: false,
    }
    .build(
        if rv == 1 { Op::Add } else { Op::Update },
        Arc::new(json!({
            "metadata": {"name": object, "namespace": "default", "uid": object,
                "resourceVersion": rv.to_string()},
            "data": {"v": rv.to_string()},
        })),
        None,
        None,
        std::time::Instant::now(),
    );
    Arc::new(e)
}

/// `objects` × `versions` events, versions of each object in order, objects interleaved.
fn changes(objects: usize, versions: u64) -> Vec<Arc<Envelope>> {
    (1..=versions)
        .flat_map(|rv| (0..objects).map(move |o| event(&format!("cm-{o}"), rv)))
        .collect()
}

/// The envelopes a request carried (an array, or one object).
fn envelopes(r: &Received) -> Vec<Value> {
    let items = match r.json() {
        Value::Array(items) => items,
        one => vec![one],
    };
    items.iter().for_each(crate::event::schema_check::any);
    items
}

/// Every delivered (2xx-answered) envelope; fails on a request that was not.
async fn drain_delivered(rx: &mut Receiver, n: usize, within: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    tokio::time::timeout(within, async {
        while out.len() < n {
            let r = rx.requests.recv().await.expect("receiver alive");
            if r.status.is_success() {
                out.extend(envelopes(&r));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {n} events delivered in time", out.len()));
    out
}

/// Each object's resourceVersions in the order first delivered (retries may repeat).
fn versions_per_object(delivered: &[Value]) -> BTreeMap<String, Vec<u64>> {
    let mut seen = HashSet::new();
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in delivered {
        if seen.insert(e["id"].as_str().unwrap().to_string()) {
            out.entry(e["uid"].as_str().unwrap().to_string())
                .or_default()
                .push(e["resourceVersion"].as_str().unwrap().parse().unwrap());
        }
    }
    out
}

fn assert_every_version_in_order(delivered: &[Value], objects: usize, versions: u64) {
    let per_object = versions_per_object(delivered);
    assert_eq!(per_object.len(), objects, "{per_object:?}");
    for (uid, rvs) in per_object {
        assert_eq!(rvs, (1..=versions).collect::<Vec<_>>(), "{uid}");
    }
}

// --- batching -------------------------------------------------------------------------

#[tokio::test]
async fn events_are_batched_by_count_into_json_arrays() {
    let mut rx = Receiver::start(ok()).await;
    let sink = config(&rx.url("http"), "batch: {maxEvents: 3, maxWait: 300ms}");
    let mut h = Harness::start(&sink, None);
    let events = changes(7, 1);
    h.send_all(&events).await;
    let mut sizes = Vec::new();
    while sizes.iter().sum::<usize>() < 7 {
        let r = rx.next(SOON).await;
        assert_eq!(r.method, hyper::Method::POST);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.json().is_array());
        sizes.push(envelopes(&r).len());
    }
    assert_eq!(sizes, vec![3, 3, 1]);
    h.acked(7, SOON).await;
}

#[tokio::test]
async fn events_are_batched_by_bytes() {
    let mut rx = Receiver::start(ok()).await;
    let events = changes(5, 1);
    let size = events[0].to_json().len();
    let sink = config(
        &rx.url("http"),
        &format!(
            "batch: {{maxEvents: 100, maxBytes: {}, maxWait: 300ms}}",
            size * 5 / 2
        ),
    );
    let mut h = Harness::start(&sink, None);
    h.send_all(&events).await;
    let mut sizes = Vec::new();
    while sizes.iter().sum::<usize>() < 5 {
        let r = rx.next(SOON).await;
        assert!(
            r.body.len() <= size * 5 / 2 + 2,
            "body of {} bytes",
            r.body.len()
        );
        sizes.push(envelopes(&r).len());
    }
    assert_eq!(sizes, vec![2, 2, 1]);
    h.acked(5, SOON).await;
}

#[tokio::test]
async fn a_partial_batch_is_sent_when_max_wait_expires() {
    let mut rx = Receiver::start(ok()).await;
    let sink = config(&rx.url("http"), "batch: {maxEvents: 10, maxWait: 500ms}");
    let h = Harness::start(&sink, None);
    let started = StdInstant::now();
    h.send_all(&[event("a", 1)]).await;
    // The second event is input timing, not a wait for an outcome.
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.send_all(&[event("b", 1)]).await;
    let r = rx.next(SOON).await;
    let waited = started.elapsed();
    assert_eq!(envelopes(&r).len(), 2);
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

#[tokio::test]
async fn max_events_1_sends_single_objects_not_arrays() {
    let mut rx = Receiver::start(ok()).await;
    let sink = config(&rx.url("http"), "batch: {maxEvents: 1}");
    let mut h = Harness::start(&sink, None);
    let events = changes(3, 1);
    h.send_all(&events).await;
    for e in &events {
        let r = rx.next(SOON).await;
        let body = r.json();
        assert!(body.is_object());
        assert_eq!(body["id"], e.id.to_string());
        assert_eq!(
            &r.body[..],
            &e.to_json()[..],
            "the body is the envelope as encoded"
        );
    }
    h.acked(3, SOON).await;
}

#[tokio::test]
async fn debezium_batches_are_arrays_of_change_events_framed_when_asked() {
    let mut rx = Receiver::start(ok()).await;
    let sink = config(
        &rx.url("http"),
        "format: debezium\nbatch: {maxEvents: 10, maxWait: 300ms}",
    );
    let mut h = Harness::start(&sink, None);
    h.send_all(&[event("cm-a", 1), event("cm-b", 1)]).await;
    let r = rx.next(SOON).await;
    assert_eq!(r.header("content-type"), Some("application/json"));
    let items = envelopes(&r);
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["op"], "c");
    assert_eq!(items[0]["after"]["metadata"]["name"], "cm-a");
    assert_eq!(items[1]["source"]["objectName"], "cm-b");
    h.acked(2, SOON).await;

    let mut rx = Receiver::start(ok()).await;
    let sink = config(
        &rx.url("http"),
        "format: debezium\ndebezium: {schemas: true}\nbatch: {maxEvents: 1}",
    );
    let mut h = Harness::start(&sink, None);
    h.send_all(&[event("cm-a", 1)]).await;
    let body = rx.next(SOON).await.json();
    assert_eq!(body["schema"]["type"], "struct");
    assert_eq!(body["payload"]["after"]["name"], "cm-a");
    h.acked(1, SOON).await;
}

// --- CloudEvents ----------------------------------------------------------------------

/// The REQUIRED attributes of CloudEvents 1.0 plus the OPTIONAL ones we set, checked for
/// presence and form (spec section 3.1 and the JSON format), against the envelope.
fn assert_cloudevent(ce: &Value, e: &Envelope) {
    assert_eq!(ce["specversion"], "1.0");
    let id = ce["id"].as_str().expect("id is a string");
    assert!(!id.is_empty());
    assert_eq!(id, e.id.to_string());
    let source = ce["source"].as_str().expect("source is a string");
    // A URI-reference; ours is absolute.
    let url = reqwest::Url::parse(source).expect("source is a URI");
    assert_eq!(url.scheme(), "k8s");
    assert_eq!(source, "k8s://test/api/v1/namespaces/default/configmaps");
    let ty = ce["type"].as_str().expect("type is a string");
    assert_eq!(ty, format!("io.k8s.configmap.{}", e.op.as_str()));
    assert_eq!(ce["subject"], format!("default/{}", e.name));
    let time = ce["time"].as_str().expect("time is a string");
    assert!(
        humantime::parse_rfc3339(time).is_ok(),
        "RFC 3339 time: {time}"
    );
    assert_eq!(ce["datacontenttype"], "application/json");
    assert_eq!(ce["partitionkey"], e.uid);
    let envelope: Value = serde_json::from_slice(e.to_json()).unwrap();
    assert_eq!(ce["data"], envelope, "data is the envelope");
    for (k, _) in ce.as_object().unwrap() {
        // Attribute names: lowercase a-z and 0-9 only (section 3.1.1).
        assert!(
            k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "{k}"
        );
    }
}

#[tokio::test]
async fn structured_cloudevents_carry_every_required_attribute() {
    let mut rx = Receiver::start(ok()).await;
    let sink = config(
        &rx.url("http"),
        "format: cloudevents\ncloudEventsMode: structured\nbatch: {maxEvents: 1}",
    );
    let h = Harness::start(&sink, None);
    let e = event("cm", 2);
    h.send_all(std::slice::from_ref(&e)).await;
    let r = rx.next(SOON).await;
    assert_eq!(
        r.header("content-type"),
        Some("application/cloudevents+json")
    );
    assert!(r.headers.keys().all(|k| !k.as_str().starts_with("ce-")));
    assert_cloudevent(&r.json(), &e);
}

#[tokio::test]
async fn structured_batches_are_cloudevents_batch_arrays() {
    let mut rx = Receiver::start(ok()).await;
    let sink = config(
        &rx.url("http"),
        "format: cloudevents\nbatch: {maxEvents: 10, maxWait: 300ms}",
    );
    let h = Harness::start(&sink, None);
    let events = changes(3, 1);
    h.send_all(&events).await;
    let r = rx.next(SOON).await;
    assert_eq!(
        r.header("content-type"),
        Some("application/cloudevents-batch+json")
    );
    let items = r
        .json()
        .as_array()
        .cloned()
        .expect("a batch is a JSON array");
    assert_eq!(items.len(), 3);
    for (ce, e) in items.iter().zip(&events) {
        assert_cloudevent(ce, e);
    }
}

#[tokio::test]
async fn binary_cloudevents_put_attributes_in_ce_headers_and_the_envelope_in_the_body() {
    let mut rx = Receiver::start(ok()).await;
    let sink = config(
        &rx.url("http"),
        "format: cloudevents\ncloudEventsMode: binary\nbatch: {maxWait: 300ms}",
    );
    let mut h = Harness::start(&sink, None);
    let events = changes(3, 1);
    h.send_all(&events).await;
    for e in &events {
        let r = rx.next(SOON).await;
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(&r.body[..], &e.to_json()[..], "the body is the envelope");
        assert_eq!(r.header("ce-specversion"), Some("1.0"));
        assert_eq!(r.header("ce-id"), Some(e.id.to_string().as_str()));
        assert_eq!(
            r.header("ce-source"),
            Some("k8s://test/api/v1/namespaces/default/configmaps")
        );
        assert_eq!(r.header("ce-type"), Some("io.k8s.configmap.add"));
        assert_eq!(
            r.header("ce-subject"),
            Some(format!("default/{}", e.name).as_str())
        );
        let time = r.header("ce-time").expect("ce-time");
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        assert_eq!(r.header("ce-partitionkey"), Some(e.uid.as_str()));
        // datacontenttype travels as Content-Type, never as a ce- header (HTTP binding 3.1.1).
        assert!(r.header("ce-datacontenttype").is_none());
    }
    h.acked(3, SOON).await;
}

// --- signatures and headers -------------------------------------------------------------

#[tokio::test]
async fn the_receiver_verifies_the_signature_and_refuses_a_tampered_body() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "hook-secret\n").unwrap();
    let mut rx = Receiver::start(ok()).await;
    let sink = config(
        &rx.url("http"),
        &format!("secret: {{valueFrom: {{file: {}}}}}", secret_file.display()),
    );
    let h = Harness::start(&sink, None);
    h.send_all(&[event("cm", 1)]).await;
    let r = rx.next(SOON).await;
    let ts = r.header("x-lookout-timestamp").expect("timestamp header");
    let sig = r.header("x-lookout-signature").expect("signature header");
    assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64, "{sig}");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tolerance = Duration::from_secs(300);
    assert_eq!(
        verify(b"hook-secret", ts, sig, &r.body, now, tolerance),
        Ok(())
    );
    let mut tampered = r.body.to_vec();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    assert_eq!(
        verify(b"hook-secret", ts, sig, &tampered, now, tolerance),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify(b"wrong-secret", ts, sig, &r.body, now, tolerance),
        Err(SignatureError::Mismatch)
    );
}

#[tokio::test]
async fn put_with_configured_headers_reaches_the_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let mut rx = Receiver::start(ok()).await;
    let sink = config(
        &rx.url("http"),
        &format!(
            "method: PUT\nheaders:\n  Authorization: {{valueFrom: {{file: {}}}, prefix: 'Bearer '}}\n  X-Team: blue",
            token.display()
        ),
    );
    let h = Harness::start(&sink, None);
    h.send_all(&[event("cm", 1)]).await;
    let r = rx.next(SOON).await;
    assert_eq!(r.method, hyper::Method::PUT);
    assert_eq!(r.header("authorization"), Some("Bearer t0ken"));
    assert_eq!(r.header("x-team"), Some("blue"));
    assert!(r.header("x-lookout-signature").is_none());
}

// --- retries, dead letters, backpressure ---------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_receiver_answering_503_for_10s_gets_every_event_in_per_object_order() {
    let started = tokio::time::Instant::now();
    let responder: Responder = Arc::new(move |r: &Received| {
        if r.at.duration_since(started) < Duration::from_secs(10) {
            (StatusCode::SERVICE_UNAVAILABLE, Vec::new())
        } else {
            (StatusCode::OK, Vec::new())
        }
    });
    let mut rx = Receiver::start(responder).await;
    // A long timeout: with the clock paused, only the backoff should move time.
    let sink = config(&rx.url("http"), "timeout: 1h\nbatch: {maxEvents: 5}");
    let mut h = Harness::start(&sink, None);
    let events = changes(4, 5);
    h.send_all(&events).await;
    h.acked(events.len(), Duration::from_secs(600)).await;
    let mut delivered = Vec::new();
    let mut refused = 0;
    let mut first_ok = None;
    while let Ok(r) = rx.requests.try_recv() {
        if r.status.is_success() {
            first_ok.get_or_insert(r.at.duration_since(started));
            delivered.extend(envelopes(&r));
        } else {
            refused += 1;
        }
    }
    eprintln!(
        "503 phase: {refused} refused attempts; first 200 at {:?} (virtual)",
        first_ok.unwrap()
    );
    assert!(
        refused >= 3,
        "retried while the receiver was failing: {refused}"
    );
    assert!(first_ok.unwrap() >= Duration::from_secs(10));
    assert_every_version_in_order(&delivered, 4, 5);
    assert_eq!(h.handle.stats.rejected.load(Ordering::Relaxed), 0);
    assert_eq!(h.handle.stats.sent.load(Ordering::Relaxed), 20);
}

async fn gap_between_first_two_attempts(
    retry_after: impl Fn() -> String + Send + Sync + 'static,
) -> Duration {
    let responder: Responder = Arc::new(move |r: &Received| {
        if r.seq == 0 {
            (
                StatusCode::TOO_MANY_REQUESTS,
                vec![("retry-after", retry_after())],
            )
        } else {
            (StatusCode::OK, Vec::new())
        }
    });
    let mut rx = Receiver::start(responder).await;
    let sink = config(&rx.url("http"), "");
    let mut h = Harness::start(&sink, None);
    h.send_all(&[event("cm", 1)]).await;
    let first = rx.next(SOON).await;
    let second = rx.next(SOON).await;
    assert_eq!(first.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(first.body, second.body);
    h.acked(1, SOON).await;
    second.at.duration_since(first.at)
}

#[tokio::test]
async fn a_429_with_retry_after_2_makes_the_sink_wait_2s() {
    let gap = gap_between_first_two_attempts(|| "2".to_string()).await;
    eprintln!("Retry-After: 2 -> gap between attempts {gap:?}");
    assert!(gap >= Duration::from_millis(1950), "{gap:?}");
    assert!(gap < Duration::from_secs(5), "{gap:?}");
}

#[tokio::test]
async fn a_retry_after_http_date_is_honoured() {
    let gap = gap_between_first_two_attempts(|| {
        httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3))
    })
    .await;
    eprintln!("Retry-After: <now + 3 s as HTTP-date> -> gap between attempts {gap:?}");
    // The date has whole-second resolution: between 2 and 3 s from the answer.
    assert!(gap >= Duration::from_millis(1950), "{gap:?}");
    assert!(gap < Duration::from_secs(6), "{gap:?}");
}

#[tokio::test]
async fn a_400_dead_letters_the_batch_and_later_events_still_flow() {
    let state = tempfile::tempdir().unwrap();
    let responder: Responder = Arc::new(|r: &Received| {
        if String::from_utf8_lossy(&r.body).contains("poison") {
            (StatusCode::BAD_REQUEST, Vec::new())
        } else {
            (StatusCode::OK, Vec::new())
        }
    });
    let mut rx = Receiver::start(responder).await;
    let sink = config(&rx.url("http"), "batch: {maxEvents: 1}");
    let mut h = Harness::start(&sink, Some(state.path()));
    let poison = event("poison", 1);
    let later = changes(3, 1);
    h.send_all(std::slice::from_ref(&poison)).await;
    h.send_all(&later).await;
    let delivered = drain_delivered(&mut rx, 3, SOON).await;
    assert_every_version_in_order(&delivered, 3, 1);
    // Rejected events are acknowledged too: the queue moves on.
    let acked = h.acked(4, SOON).await;
    assert_eq!(acked[0].id, poison.id);

    let file = state.path().join("deadletter/hook.jsonl");
    let text = std::fs::read_to_string(&file).expect("dead-letter file");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["sink"], "hook");
    assert!(
        lines[0]["reason"].as_str().unwrap().contains("400"),
        "{}",
        lines[0]["reason"]
    );
    assert_eq!(lines[0]["event"]["id"], poison.id.to_string());
    assert!(humantime::parse_rfc3339(lines[0]["time"].as_str().unwrap()).is_ok());
    let stats = &h.handle.stats;
    assert_eq!(stats.rejected.load(Ordering::Relaxed), 1);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 1);
    assert_eq!(stats.sent.load(Ordering::Relaxed), 3);
    assert_eq!(
        stats.retries.load(Ordering::Relaxed),
        0,
        "a 400 is not retried"
    );
}

#[tokio::test]
async fn a_401_or_403_is_retried_with_the_sink_failing_until_the_credentials_are_accepted() {
    let accept = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = accept.clone();
    let responder: Responder = Arc::new(move |r: &Received| {
        if flag.load(Ordering::SeqCst) {
            (StatusCode::OK, Vec::new())
        } else if r.seq.is_multiple_of(2) {
            (StatusCode::UNAUTHORIZED, Vec::new())
        } else {
            (StatusCode::FORBIDDEN, Vec::new())
        }
    });
    let mut rx = Receiver::start(responder).await;
    let sink = config(&rx.url("http"), "");
    let mut h = Harness::start(&sink, None);
    h.send_all(&[event("cm", 1)]).await;
    assert_eq!(rx.next(SOON).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(rx.next(SOON).await.status, StatusCode::FORBIDDEN);
    // While refused, the sink reports failing (what makes /readyz answer 503).
    let handle = h.handle.clone();
    let stats = &handle.stats;
    tokio::time::timeout(SOON, async {
        while stats.failing.load(Ordering::Relaxed) != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the sink reports failing");
    accept.store(true, Ordering::SeqCst);
    let acked = h.acked(1, Duration::from_secs(60)).await;
    assert_eq!(acked.len(), 1);
    assert_eq!(stats.failing.load(Ordering::Relaxed), 0);
    assert_eq!(
        stats.rejected.load(Ordering::Relaxed),
        0,
        "never dead-lettered"
    );
    assert!(
        stats.errors.load(Ordering::Relaxed) >= 2,
        "counted as errors"
    );
    assert!(stats.retries.load(Ordering::Relaxed) >= 2);
}

#[tokio::test]
async fn dead_letter_statuses_are_configurable() {
    let state = tempfile::tempdir().unwrap();
    let responder: Responder = Arc::new(|r: &Received| match r.seq {
        0 => (StatusCode::UNAUTHORIZED, Vec::new()),
        1 => (StatusCode::CONFLICT, Vec::new()),
        _ => (StatusCode::OK, Vec::new()),
    });
    let mut rx = Receiver::start(responder).await;
    let sink = config(
        &rx.url("http"),
        "batch: {maxEvents: 1}\ndeadLetterStatuses: [401, \"500-599\"]",
    );
    let mut h = Harness::start(&sink, Some(state.path()));
    h.send_all(&[event("a", 1), event("b", 1)]).await;
    h.acked(2, SOON).await;
    let statuses: Vec<StatusCode> = [
        rx.next(SOON).await,
        rx.next(SOON).await,
        rx.next(SOON).await,
    ]
    .iter()
    .map(|r| r.status)
    .collect();
    // a: 401 dead-letters (configured); b: 409 is not listed, so it is retried, then 200.
    assert_eq!(
        statuses,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::CONFLICT,
            StatusCode::OK
        ]
    );
    let text = std::fs::read_to_string(state.path().join("deadletter/hook.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("401"), "{text}");
    assert_eq!(h.handle.stats.rejected.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn while_the_receiver_is_down_the_queue_stays_bounded_and_nothing_is_lost() {
    // A port nobody listens on (yet): connections are refused.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let capacity = 4;
    let max_events = 2;
    let sink = config(
        &format!("http://{addr}/hook"),
        &format!("timeout: 1h\nqueueCapacity: {capacity}\nbatch: {{maxEvents: {max_events}}}"),
    );
    let mut h = Harness::start(&sink, None);
    let events = changes(5, 6);
    let total = events.len();
    let produced = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (handle, produced) = (h.handle.clone(), produced.clone());
        tokio::spawn(async move {
            for e in events {
                assert!(handle.send(e).await);
                produced.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    let mut max_depth = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        max_depth = max_depth.max(h.handle.queue_depth());
    }
    let stats = &h.handle.stats;
    assert!(stats.retries.load(Ordering::Relaxed) >= 3, "kept retrying");
    assert_eq!(
        max_depth, capacity,
        "the queue filled up to its capacity, not beyond"
    );
    let waiting = produced.load(Ordering::SeqCst);
    eprintln!(
        "after 30 s down: {} retries, queue depth {max_depth}/{capacity}, {waiting} of {total} \
         events accepted by send",
        stats.retries.load(Ordering::Relaxed)
    );
    assert!(
        waiting <= capacity + max_events,
        "the producer is held back: {waiting} of {total} queued"
    );
    assert!(
        !producer.is_finished(),
        "send waits while the queue is full"
    );

    // The receiver comes back on the same port.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let mut rx = Receiver::serve(listener, ok(), None);
    // Changes merged while the queue was full are acknowledged with the newest one, so wait
    // for the last version of every object.
    let mut last_acked = HashSet::new();
    tokio::time::timeout(Duration::from_secs(600), async {
        while last_acked.len() < 5 {
            let e = h.acks.recv().await.expect("driver alive");
            if e.resource_version == "6" {
                last_acked.insert(e.uid.clone());
            }
        }
    })
    .await
    .expect("the newest change of every object is delivered");
    producer.await.unwrap();
    let coalesced = h.handle.coalesced() as usize;
    let delivered = drain_delivered(&mut rx, total - coalesced, Duration::from_secs(60)).await;
    eprintln!(
        "after recovery: {} delivered, {coalesced} coalesced",
        delivered.len()
    );
    assert_eq!(
        delivered.len() + coalesced,
        total,
        "every change delivered or merged into a later one; refusals cause no duplicates"
    );
    for (uid, rvs) in versions_per_object(&delivered) {
        assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{uid}: {rvs:?}");
        assert_eq!(rvs.last(), Some(&6), "{uid} ends at its newest version");
    }
    assert!(rx.requests.try_recv().is_err(), "nothing more arrives");
}

// --- TLS --------------------------------------------------------------------------------------

#[tokio::test]
async fn an_https_receiver_with_a_private_ca_works_when_the_ca_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::Pki::generate(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut rx = Receiver::serve(listener, ok(), Some(pki.acceptor(false)));
    let sink = config(
        &rx.url("https"),
        &format!("tls: {{caFile: {}}}", pki.ca_file.display()),
    );
    let mut h = Harness::start(&sink, None);
    h.send_all(&[event("cm", 1)]).await;
    let r = rx.next(SOON).await;
    assert_eq!(envelopes(&r).len(), 1);
    h.acked(1, SOON).await;
}

#[tokio::test]
async fn without_the_ca_the_sink_refuses_the_receiver_and_keeps_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::Pki::generate(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rx = Receiver::serve(listener, ok(), Some(pki.acceptor(false)));
    let sink = config(&rx.url("https"), "");

    // One attempt, to see the error the operator sees in the log.
    let direct = direct(&sink);
    match direct.send(&[event("cm", 1)]).await {
        Err(SinkError::Retriable { message, .. }) => {
            eprintln!("untrusted receiver: {message}");
            assert!(
                message.contains("certificate") || message.contains("UnknownIssuer"),
                "{message}"
            );
        }
        other => panic!("expected a retriable TLS failure, got {other:?}"),
    }

    let h = Harness::start(&sink, None);
    h.send_all(&[event("cm", 2)]).await;
    tokio::time::timeout(SOON, async {
        while h.handle.stats.retries.load(Ordering::Relaxed) < 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the driver keeps retrying");
    assert!(rx.handshake_failures.load(Ordering::SeqCst) >= 3);
    assert_eq!(h.handle.stats.sent.load(Ordering::Relaxed), 0);
    assert_eq!(h.handle.stats.rejected.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::Pki::generate(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut rx = Receiver::serve(listener, ok(), Some(pki.acceptor(true)));

    let without = config(
        &rx.url("https"),
        &format!("tls: {{caFile: {}}}", pki.ca_file.display()),
    );
    let refused = direct(&without).send(&[event("cm", 1)]).await;
    assert!(
        matches!(refused, Err(SinkError::Retriable { .. })),
        "{refused:?}"
    );

    let with = config(
        &rx.url("https"),
        &format!(
            "tls: {{caFile: {}, certFile: {}, keyFile: {}}}",
            pki.ca_file.display(),
            pki.client_cert_file.display(),
            pki.client_key_file.display()
        ),
    );
    let mut h = Harness::start(&with, None);
    h.send_all(&[event("cm", 2)]).await;
    let r = rx.next(SOON).await;
    assert_eq!(envelopes(&r)[0]["resourceVersion"], "2");
    h.acked(1, SOON).await;
}
