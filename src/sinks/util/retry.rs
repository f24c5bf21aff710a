//! Sending one batch until each event is delivered or rejected for good: only what failed is
//! sent again, after a delay from [`BackoffPolicy::SINK`] (a `Retry-After` the receiver asked
//! for is the floor).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::driver::SinkStats;
use crate::backoff::BackoffPolicy;
use crate::event::Envelope;
use crate::sinks::{Sink, SinkError};

/// What became of one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Accepted downstream.
    Delivered,
    /// Rejected for good (the sink's reason): dead-letter it.
    Rejected(String),
    /// Not known to be delivered: the driver gave up first.
    Unsent,
}

/// How a batch ended.
#[derive(Debug)]
pub struct BatchReport {
    /// One fate per event of the batch, in order.
    pub fates: Vec<Fate>,
    /// Shutdown's grace period ran out (or the lease was lost) while retrying.
    pub abandoned: bool,
}

/// Sends `batch` until every event is delivered or rejected, or `abandon` fires. Retriable
/// failures are retried forever: a receiver that is down must not lose events, and the bounded
/// queue in front of this call turns the wait into backpressure. After a partial success only
/// the failed events are sent again — each with every later event of the same object in the
/// batch, even if that one got through, so that the object's last delivered state is its newest.
pub async fn send_with_retry(
    sink: &dyn Sink,
    sink_name: &str,
    batch: &[Arc<Envelope>],
    stats: &SinkStats,
    abandon: &CancellationToken,
) -> BatchReport {
    let mut fates = vec![Fate::Unsent; batch.len()];
    let mut pending: Vec<usize> = (0..batch.len()).collect();
    let mut backoff = BackoffPolicy::SINK.start();
    loop {
        let attempt: Vec<Arc<Envelope>> = pending.iter().map(|&i| batch[i].clone()).collect();
        let result = tokio::select! {
            _ = abandon.cancelled() => return BatchReport { fates, abandoned: true },
            r = sink.send(&attempt) => r,
        };
        // `at(j)`: the batch index of the attempt's j-th event.
        let at = |j: usize| pending.get(j).copied();
        let (message, retry_after, retry) = match result {
            Ok(()) => {
                stats.failing.store(0, Ordering::Relaxed);
                for &i in &pending {
                    fates[i] = Fate::Delivered;
                }
                return BatchReport {
                    fates,
                    abandoned: false,
                };
            }
            Err(SinkError::Rejected { message, indices }) => {
                stats.failing.store(0, Ordering::Relaxed);
                let rejected: HashSet<usize> = match indices {
                    Some(js) => js.into_iter().filter_map(at).collect(),
                    None => pending.iter().copied().collect(),
                };
                for &i in &pending {
                    fates[i] = if rejected.contains(&i) {
                        Fate::Rejected(message.clone())
                    } else {
                        Fate::Delivered
                    };
                }
                return BatchReport {
                    fates,
                    abandoned: false,
                };
            }
            Err(SinkError::Retriable {
                message,
                retry_after,
            }) => (message, retry_after, pending.clone()),
            Err(SinkError::Partial {
                message,
                retry,
                rejected,
                retry_after,
            }) => {
                let rejected: HashSet<usize> = rejected.into_iter().filter_map(at).collect();
                let failed: HashSet<usize> = retry.into_iter().filter_map(at).collect();
                let again = resend_set(batch, &pending, &failed, &rejected);
                for &i in &pending {
                    fates[i] = if rejected.contains(&i) {
                        Fate::Rejected(message.clone())
                    } else if again.contains(&i) {
                        Fate::Unsent
                    } else {
                        Fate::Delivered
                    };
                }
                let again: Vec<usize> = pending
                    .iter()
                    .copied()
                    .filter(|i| again.contains(i))
                    .collect();
                if again.is_empty() {
                    return BatchReport {
                        fates,
                        abandoned: false,
                    };
                }
                (message, retry_after, again)
            }
        };
        stats.errors.fetch_add(1, Ordering::Relaxed);
        stats.retries.fetch_add(1, Ordering::Relaxed);
        stats.failing.store(1, Ordering::Relaxed);
        let delay = backoff.next_delay_at_least(retry_after);
        warn!(sink = sink_name, error = %message, events = retry.len(),
            retry_in = ?delay, "sink send failed; retrying");
        pending = retry;
        tokio::select! {
            _ = abandon.cancelled() => return BatchReport { fates, abandoned: true },
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The events of `pending` to send again: the failed ones, and every later one of an object
/// with a failed event (unless rejected), so the object's changes arrive in order.
fn resend_set(
    batch: &[Arc<Envelope>],
    pending: &[usize],
    failed: &HashSet<usize>,
    rejected: &HashSet<usize>,
) -> HashSet<usize> {
    let mut again = HashSet::new();
    let mut behind: HashSet<(&str, &str)> = HashSet::new();
    for &i in pending {
        let e = &batch[i];
        let object = (&*e.source, e.uid.as_str());
        if failed.contains(&i) || (behind.contains(&object) && !rejected.contains(&i)) {
            again.insert(i);
            behind.insert(object);
        }
    }
    again
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use async_trait::async_trait;
    use serde_json::json;

    use super::*;
    use crate::event::{EnvelopeBuilder, Op};

    fn event(uid: &str, rv: u32) -> Arc<Envelope> {
        let object =
            json!({"metadata": {"name": uid, "uid": uid, "resourceVersion": rv.to_string()}});
        let e = EnvelopeBuilder::test_configmaps();
        Arc::new(e.build(Op::Add, Arc::new(object), None, None, Instant::now()))
    }

    /// Answers each attempt from a script and records what each attempt carried.
    struct Scripted {
        answers: Mutex<Vec<Result<(), SinkError>>>,
        attempts: Mutex<Vec<Vec<String>>>,
    }

    #[async_trait]
    impl Sink for Scripted {
        async fn send(&self, batch: &[Arc<Envelope>]) -> Result<(), SinkError> {
            self.attempts.lock().unwrap().push(
                batch
                    .iter()
                    .map(|e| format!("{}@{}", e.uid, e.resource_version))
                    .collect(),
            );
            let mut answers = self.answers.lock().unwrap();
            if answers.is_empty() {
                Ok(())
            } else {
                answers.remove(0)
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_partial_success_only_the_failed_events_and_their_objects_later_changes_go_again()
     {
        let sink = Scripted {
            answers: Mutex::new(vec![Err(SinkError::Partial {
                message: "b@1 timed out, d rejected".into(),
                retry: vec![1],
                rejected: vec![3],
                retry_after: Some(Duration::from_secs(7)),
            })]),
            attempts: Mutex::new(Vec::new()),
        };
        let batch = [
            event("a", 1),
            event("b", 1),
            event("c", 1),
            event("d", 1),
            event("b", 2),
        ];
        let stats = SinkStats::default();
        let started = tokio::time::Instant::now();
        let report = send_with_retry(&sink, "s", &batch, &stats, &CancellationToken::new()).await;
        assert_eq!(
            *sink.attempts.lock().unwrap(),
            vec![
                vec!["a@1", "b@1", "c@1", "d@1", "b@2"],
                // b@2 got through, but b@1 must not arrive after it.
                vec!["b@1", "b@2"],
            ]
        );
        assert!(
            started.elapsed() >= Duration::from_secs(7),
            "Retry-After is a floor"
        );
        assert!(!report.abandoned);
        assert_eq!(
            report.fates,
            vec![
                Fate::Delivered,
                Fate::Delivered,
                Fate::Delivered,
                Fate::Rejected("b@1 timed out, d rejected".into()),
                Fate::Delivered,
            ]
        );
        assert_eq!(stats.retries.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn giving_up_while_retrying_leaves_the_undelivered_events_unsent() {
        let sink = Scripted {
            answers: Mutex::new(
                (0..100)
                    .map(|_| Err(SinkError::retriable("down")))
                    .collect(),
            ),
            attempts: Mutex::new(Vec::new()),
        };
        let abandon = CancellationToken::new();
        let stop = abandon.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            stop.cancel();
        });
        let stats = SinkStats::default();
        let report = send_with_retry(&sink, "s", &[event("a", 1)], &stats, &abandon).await;
        assert!(report.abandoned);
        assert_eq!(report.fates, vec![Fate::Unsent]);
        assert_eq!(stats.failing.load(Ordering::Relaxed), 1);
    }
}
