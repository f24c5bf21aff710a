//! Readiness that tells the truth: an informer whose watch went quiet is not ready, and
//! neither is a sink that cannot deliver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::informer::InformerFactory;
use crate::sinks::SinkMonitor;

/// How often each sink's health check runs.
const SINK_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Readiness inputs.
pub struct Health {
    /// The informers (read at each probe: kinds still being resolved show as pending).
    informers: Arc<InformerFactory>,
    sinks: Vec<(SinkMonitor, Arc<Mutex<Option<String>>>)>,
    max_silence: Duration,
}

impl Health {
    /// Readiness over these informers and sinks.
    pub fn new(
        informers: Arc<InformerFactory>,
        sinks: Vec<SinkMonitor>,
        max_silence: Duration,
    ) -> Self {
        Self {
            informers,
            sinks: sinks
                .into_iter()
                .map(|s| (s, Arc::new(Mutex::new(None))))
                .collect(),
            max_silence,
        }
    }

    /// Runs every sink's health check periodically until `cancel`; results feed `/readyz`.
    /// Returns the tasks, for joining.
    pub fn spawn_sink_checks(&self, cancel: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for (monitor, slot) in &self.sinks {
            let sink = monitor.sink.clone();
            let name = monitor.name.clone();
            let slot = slot.clone();
            let cancel = cancel.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let result = tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = tokio::time::timeout(SINK_CHECK_EVERY, sink.healthcheck()) => r,
                    };
                    let problem = match result {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(_) => Some("health check timed out".to_string()),
                    };
                    if let Some(p) = &problem {
                        tracing::warn!(sink = %name, problem = %p, "sink health check failed");
                    }
                    *slot.lock().expect("health lock") = problem;
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(SINK_CHECK_EVERY) => {}
                    }
                }
            }));
        }
        tasks
    }

    /// Why the agent is not ready; empty when it is.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons = self.informers.pending();
        for i in &self.informers.informers() {
            let problem = i.stats().problem();
            if !i.has_synced() {
                reasons.push(match problem {
                    Some(p) => format!(
                        "informer {} has not finished its initial list: {}",
                        i.key(),
                        p.message
                    ),
                    None => format!("informer {} has not finished its initial list", i.key()),
                });
                continue;
            }
            if let Some(p) = problem.filter(|p| p.blocking) {
                reasons.push(format!("informer {}: {}", i.key(), p.message));
                continue;
            }
            match i.since_last_heard() {
                Some(quiet) if quiet > self.max_silence => reasons.push(format!(
                    "informer {} has heard nothing from the API server for {}s (limit {}s)",
                    i.key(),
                    quiet.as_secs(),
                    self.max_silence.as_secs()
                )),
                None => reasons.push(format!(
                    "informer {} has not heard from the API server",
                    i.key()
                )),
                _ => {}
            }
        }
        for (monitor, check) in &self.sinks {
            if monitor
                .stats
                .failing
                .load(std::sync::atomic::Ordering::Relaxed)
                == 1
            {
                reasons.push(format!(
                    "sink {} is failing to deliver (retrying)",
                    monitor.name
                ));
            } else if let Some(problem) = check.lock().expect("health lock").as_ref() {
                reasons.push(format!("sink {}: {problem}", monitor.name));
            }
        }
        reasons
    }
}
