//! Prometheus metrics. Counters the pipeline already keeps (informer and sink stats) are read
//! at scrape time by a collector, so the hot path pays nothing extra for them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::event::Op;
use crate::informer::{InformerFactory, RestartReason, SharedInformer};
use crate::sinks::SinkMonitor;

type Labels = Vec<(String, String)>;

/// The agent's metrics, prefixed `lookout_`.
pub struct Metrics {
    registry: Registry,
    events_observed: Family<Labels, Counter>,
}

impl Metrics {
    /// Registers every metric over these informers and sinks.
    pub fn new(informers: Arc<InformerFactory>, sinks: Vec<SinkMonitor>) -> Self {
        let mut registry = Registry::with_prefix("lookout");
        let events_observed = Family::<Labels, Counter>::default();
        registry.register(
            "events_observed",
            "Changes seen, by kind and op (before routing)",
            events_observed.clone(),
        );
        registry.register_collector(Box::new(PipelineCollector { informers, sinks }));
        Self {
            registry,
            events_observed,
        }
    }

    /// Counts one observed change.
    pub fn observed(&self, kind: &str, op: Op) {
        self.events_observed
            .get_or_create(&vec![
                ("kind".to_string(), kind.to_string()),
                ("op".to_string(), op.as_str().to_string()),
            ])
            .inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[derive(Debug)]
struct PipelineCollector {
    informers: Arc<InformerFactory>,
    sinks: Vec<SinkMonitor>,
}

impl std::fmt::Debug for SinkMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkMonitor")
            .field("name", &self.name)
            .finish()
    }
}

impl std::fmt::Debug for InformerFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InformerFactory").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SharedInformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedInformer")
            .field("key", &self.key().to_string())
            .finish()
    }
}

fn counter<T>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[T],
    label: &str,
    value: impl Fn(&T) -> (String, u64),
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for row in rows {
        let (l, v) = value(row);
        let labels = vec![(label.to_string(), l)];
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<T>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[T],
    label: &str,
    value: impl Fn(&T) -> (String, f64),
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for row in rows {
        let (l, v) = value(row);
        let labels = vec![(label.to_string(), l)];
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for PipelineCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let inf = &self.informers.informers();
        let key = |i: &Arc<SharedInformer>| i.key().to_string();
        {
            let mut restarts = e.encode_descriptor(
                "watch_restarts",
                "Open watches abandoned and opened again (or re-listed), per informer and reason: \
                 idle (nothing heard for watch.idleTimeout), closed (the server ended it), error \
                 (broken stream or ERROR event), gone (410: re-listed)",
                None,
                MetricType::Counter,
            )?;
            for i in inf {
                for reason in RestartReason::ALL {
                    let labels = vec![
                        ("informer".to_string(), key(i)),
                        ("reason".to_string(), reason.as_str().to_string()),
                    ];
                    ConstCounter::new(i.stats().watch_restarts.get(reason))
                        .encode(restarts.encode_family(&labels)?)?;
                }
            }
        }
        counter(
            &mut e,
            "watch_decode_errors",
            "Watch events that could not be decoded and were skipped, per informer",
            inf,
            "informer",
            |i| (key(i), i.stats().decode_errors.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut e,
            "relists",
            "Full re-lists after 410 Gone, per informer",
            inf,
            "informer",
            |i| (key(i), i.stats().relists.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut e,
            "watch_events_received",
            "Watch events received (bookmarks included), per informer",
            inf,
            "informer",
            |i| (key(i), i.stats().events_received.load(Ordering::Relaxed)),
        )?;
        gauge(
            &mut e,
            "cached_objects",
            "Objects in the informer's cache",
            inf,
            "informer",
            |i| (key(i), i.store().len() as f64),
        )?;
        gauge(
            &mut e,
            "seconds_since_last_watch_event",
            "Seconds since the API server was last heard from (event or bookmark); -1 before the first answer",
            inf,
            "informer",
            |i| {
                (
                    key(i),
                    i.since_last_heard().map_or(-1.0, |d| d.as_secs_f64()),
                )
            },
        )?;
        gauge(
            &mut e,
            "informer_synced",
            "1 once the informer's first list completed",
            inf,
            "informer",
            |i| (key(i), if i.has_synced() { 1.0 } else { 0.0 }),
        )?;
        let sinks = &self.sinks;
        let name = |s: &SinkMonitor| s.name.clone();
        counter(
            &mut e,
            "events_emitted",
            "Events accepted by the sink",
            sinks,
            "sink",
            |s| (name(s), s.stats.sent.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut e,
            "sink_errors",
            "Failed send attempts",
            sinks,
            "sink",
            |s| (name(s), s.stats.errors.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut e,
            "sink_retries",
            "Retries after failed sends",
            sinks,
            "sink",
            |s| (name(s), s.stats.retries.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut e,
            "sink_dead_letters",
            "Events rejected for good and dead-lettered",
            sinks,
            "sink",
            |s| (name(s), s.stats.rejected.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut e,
            "sink_dead_letters_written",
            "Dead letters written to the sink's dead-letter file (the rest were only logged)",
            sinks,
            "sink",
            |s| (name(s), s.stats.dead_lettered.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut e,
            "sink_coalesced",
            "Changes merged into a queued change of the same object (queue full)",
            sinks,
            "sink",
            |s| (name(s), s.queue.coalesced()),
        )?;
        gauge(
            &mut e,
            "sink_queue_depth",
            "Entries waiting in the sink's queue",
            sinks,
            "sink",
            |s| (name(s), s.queue.len() as f64),
        )?;
        {
            let mut latency = e.encode_descriptor(
                "delivery_latency_seconds",
                "Seconds from a change's arrival from the API server to its acknowledgement by the sink",
                None,
                MetricType::Histogram,
            )?;
            for s in sinks {
                let labels = vec![("sink".to_string(), name(s))];
                s.stats.latency.encode(latency.encode_family(&labels)?)?;
            }
        }
        gauge(
            &mut e,
            "sink_failing",
            "1 while the sink is failing and retrying",
            sinks,
            "sink",
            |s| (name(s), s.stats.failing.load(Ordering::Relaxed) as f64),
        )?;
        Ok(())
    }
}
