//! Running the pipeline: its phases, one cancellation tree, and a shutdown that always ends.
//!
//! ```text
//! root ─┬─ intake    cancelled first on SIGTERM or a lost lease: every sink queue closes
//!       │            (a handler waiting for room returns at once), the gate closes
//!       ├─ delivery  the drivers give up: grace period over, or at once on a lost lease
//!       ├─ election  the elector releases the lease and ends
//!       └─ ops       the ops server and the sink health checks end
//! ```
//!
//! SIGTERM: close the queues to new changes, stop the informers, let the drivers drain what
//! is queued for at most `shutdown.gracePeriod`, record the acknowledgements, release the
//! lease, stop the ops server — every task joined, each wait bounded. A lost lease cancels
//! in-flight sends and closes the queues before anything else: nothing is delivered after it.

use std::future::Future;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::takeover::{Delivery, TakeoverError};
use super::{Parts, Pipeline, StateAccess};
use crate::leader::Role;

/// How long the ops server and other helper tasks get to end once told to.
const HELPER_JOIN: Duration = Duration::from_secs(1);

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Shutdown was requested; queued events were given the grace period.
    Stopped,
    /// This replica lost the lease and stopped forwarding at once.
    LostLeadership,
    /// This replica won the lease but the state directory stayed locked; it gave the lease up.
    TakeoverFailed,
}

/// The cancellation tree (see the module docs).
struct Tree {
    /// Cancelled last: anything still running stops.
    root: CancellationToken,
    /// Shutdown requested (a signal): an event, not a subtree.
    stop: CancellationToken,
    /// The lease was lost: an event, not a subtree.
    lost: CancellationToken,
    /// No more changes into the queues (they close, and the gate with them).
    intake: CancellationToken,
    /// The drivers give up.
    delivery: CancellationToken,
    /// The elector releases the lease and ends.
    election: CancellationToken,
    /// The ops server and the sink health checks end.
    ops: CancellationToken,
}

impl Tree {
    /// A tree whose `ops` branch is the token the ops server already serves under (it
    /// starts at build, before the run).
    fn new(ops: CancellationToken) -> Self {
        let root = CancellationToken::new();
        Self {
            stop: root.child_token(),
            lost: root.child_token(),
            intake: root.child_token(),
            delivery: root.child_token(),
            election: root.child_token(),
            ops,
            root,
        }
    }
}

/// Where a run is.
enum Phase {
    /// Informers list and watch; nothing is forwarded (a standby, or a single replica before
    /// its start-up comparison).
    Warming,
    /// This replica forwards.
    Forwarding(Delivery),
    /// Forwarding is over (or never began); tear down in order.
    Stopping {
        /// What was forwarding, if anything.
        delivery: Option<Delivery>,
        /// How the run ends.
        outcome: RunOutcome,
    },
}

impl Pipeline {
    /// Watches until `shutdown` resolves, then stops the informers, lets the sinks deliver
    /// what is queued within the grace period, and returns. With leader election, forwards
    /// only while holding the lease, and returns at once when the lease is lost.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> RunOutcome {
        let Pipeline {
            parts,
            server,
            stop_ops,
        } = self;
        let tree = Tree::new(stop_ops);
        let signal = async {
            shutdown.await;
            // First of all: nothing more into the queues, so a handler blocked on a full
            // queue returns and the informers can stop.
            tree.stop.cancel();
            tree.intake.cancel();
            std::future::pending::<()>().await;
        };
        tokio::select! {
            outcome = parts.run_phases(&tree, server) => outcome,
            _ = signal => unreachable!("the signal future never ends"),
        }
    }
}

impl Parts {
    async fn run_phases(self, tree: &Tree, server: JoinHandle<()>) -> RunOutcome {
        let mut helpers: Vec<(&'static str, JoinHandle<()>)> = vec![
            ("intake closer", self.spawn_intake_closer(&tree.intake)),
            ("ops server", server),
        ];
        let mut election: Option<JoinHandle<()>> = None;
        let mut phase = Phase::Warming;
        let outcome = loop {
            phase = match phase {
                Phase::Warming => self.warm(tree, &mut helpers, &mut election).await,
                Phase::Forwarding(delivery) => {
                    info!(
                        informers = self.factory.informers().len(),
                        "watching; forwarding changes"
                    );
                    tokio::select! {
                        _ = tree.stop.cancelled() => Phase::Stopping {
                            delivery: Some(delivery),
                            outcome: RunOutcome::Stopped,
                        },
                        _ = tree.lost.cancelled() => Phase::Stopping {
                            delivery: Some(delivery),
                            outcome: RunOutcome::LostLeadership,
                        },
                    }
                }
                Phase::Stopping { delivery, outcome } => {
                    self.stop(tree, delivery, outcome, election.take()).await;
                    break outcome;
                }
            };
        };
        tree.ops.cancel();
        join_bounded(helpers, HELPER_JOIN).await;
        tree.root.cancel();
        info!("stopped");
        outcome
    }

    /// Closes every sink queue and the gate once `intake` is cancelled.
    fn spawn_intake_closer(&self, intake: &CancellationToken) -> JoinHandle<()> {
        let queues: Vec<_> = self.lanes.iter().map(|l| l.queue.clone()).collect();
        let gate = self.gate.clone();
        let ops = self.ops.clone();
        let intake = intake.clone();
        tokio::spawn(async move {
            intake.cancelled().await;
            gate.send_replace(None);
            ops.snapshots.set_forwarding(false);
            for q in &queues {
                q.close();
            }
        })
    }

    /// The warming phase: ops server up, informers started, and — as the mode wants — the
    /// start of forwarding: at once (no delivered state), once the caches are synced (a single
    /// replica with delivered state), or once this replica leads.
    async fn warm(
        &self,
        tree: &Tree,
        helpers: &mut Vec<(&'static str, JoinHandle<()>)>,
        election: &mut Option<JoinHandle<()>>,
    ) -> Phase {
        for task in self.ops.health.spawn_sink_checks(tree.ops.clone()) {
            helpers.push(("sink health check", task));
        }
        if let Some(ns) = &self.namespaces {
            ns.start();
            // Routes that select namespaces by label must not judge events before the
            // labels are known.
            if !wait_synced(std::slice::from_ref(ns), &tree.stop).await {
                return stopping(None);
            }
        }
        let leader_election = self.config.leader_election.enabled;
        if !leader_election && matches!(self.state, StateAccess::Nothing) {
            // Nothing to compare with: forward the informers' first lists as they come.
            let delivery = match self.take_over(&tree.intake, &tree.delivery).await {
                Ok(d) => d,
                Err(e) => return self.takeover_failed(e),
            };
            self.factory.start_all();
            return Phase::Forwarding(delivery);
        }
        self.factory.start_all();
        if leader_election {
            let (mut role, task) = crate::leader::spawn(
                self.client.clone(),
                self.config.leader_election.clone(),
                tree.election.clone(),
            );
            *election = Some(task);
            helpers.push(("leadership watcher", spawn_lost_watcher(role.clone(), tree)));
            info!(
                informers = self.factory.informers().len(),
                "standby: informers warm, forwarding nothing"
            );
            tokio::select! {
                _ = tree.stop.cancelled() => return stopping(None),
                _ = tree.lost.cancelled() => return Phase::Stopping {
                    delivery: None,
                    outcome: RunOutcome::LostLeadership,
                },
                r = role.wait_for(|r| *r == Role::Leader) => {
                    if r.is_err() {
                        return stopping(None);
                    }
                }
            }
        } else {
            let informers: Vec<_> = self.intakes.iter().map(|i| i.informer.clone()).collect();
            if !wait_synced(&informers, &tree.stop).await {
                return stopping(None);
            }
        }
        match self.take_over(&tree.intake, &tree.delivery).await {
            Ok(d) => Phase::Forwarding(d),
            Err(e) => self.takeover_failed(e),
        }
    }

    fn takeover_failed(&self, e: TakeoverError) -> Phase {
        match e {
            TakeoverError::Stopped => stopping(None),
            e @ TakeoverError::StillLocked { .. } => {
                error!(error = %e, "cannot take over");
                Phase::Stopping {
                    delivery: None,
                    outcome: RunOutcome::TakeoverFailed,
                }
            }
        }
    }

    /// The stopping phase, in order: queues closed (already, by the intake closer), informers
    /// stopped, queues drained within the grace period (or abandoned at once after a lost
    /// lease), acknowledgements recorded, the lease released.
    async fn stop(
        &self,
        tree: &Tree,
        delivery: Option<Delivery>,
        outcome: RunOutcome,
        election: Option<JoinHandle<()>>,
    ) {
        if outcome == RunOutcome::LostLeadership {
            error!("lost the lease: stopping forwarding now");
            tree.delivery.cancel();
        }
        tree.intake.cancel();
        info!("shutting down: stopping informers");
        self.ops.snapshots.cancel.cancel();
        self.factory.stop_all().await;
        if let Some(Delivery {
            forwarding,
            drivers,
            writer,
        }) = delivery
        {
            let grace = self.config.shutdown.grace_period;
            // One join of every driver, given the grace period, then (if need be) told to
            // give up and awaited to the end.
            let mut drained = join_all(drivers);
            if tokio::time::timeout(grace, &mut drained).await.is_err() {
                warn!(
                    ?grace,
                    "grace period over; undelivered events will be re-emitted on the next start"
                );
                tree.delivery.cancel();
                drained.await;
            }
            // The drivers are gone, and the gate is closed: this is the tracker's last owner.
            // Dropping it closes the writer's channel; the writer records the last
            // acknowledgements and ends.
            drop(forwarding);
            if let Some(writer) = writer {
                let _ = writer.await;
            }
        }
        // Release the lease after the last delivery, so the next leader starts from
        // everything this one acknowledged.
        tree.election.cancel();
        if let Some(task) = election {
            let _ = task.await;
        }
    }
}

fn stopping(delivery: Option<Delivery>) -> Phase {
    Phase::Stopping {
        delivery,
        outcome: RunOutcome::Stopped,
    }
}

/// Turns a lost lease into cancellations at once — in-flight sends first, then the queues —
/// whatever phase the run is in.
fn spawn_lost_watcher(mut role: watch::Receiver<Role>, tree: &Tree) -> JoinHandle<()> {
    let (lost, delivery, intake, root) = (
        tree.lost.clone(),
        tree.delivery.clone(),
        tree.intake.clone(),
        tree.root.clone(),
    );
    tokio::spawn(async move {
        tokio::select! {
            r = role.wait_for(|r| *r == Role::Lost) => {
                if r.is_ok() {
                    delivery.cancel();
                    intake.cancel();
                    lost.cancel();
                }
            }
            _ = root.cancelled() => {}
        }
    })
}

/// Waits until every informer has finished its first list; false when `stop` came first.
async fn wait_synced(
    informers: &[std::sync::Arc<crate::informer::SharedInformer>],
    stop: &CancellationToken,
) -> bool {
    while !informers.iter().all(|i| i.has_synced()) {
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    true
}

/// Joins helper tasks, giving them `bound` in all; the ones still running are aborted (an ops
/// connection kept alive by a client must not hold the process).
async fn join_bounded(tasks: Vec<(&'static str, JoinHandle<()>)>, bound: Duration) {
    let deadline = tokio::time::Instant::now() + bound;
    for (name, mut task) in tasks {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            warn!(task = name, "did not stop in time; aborted");
            task.abort();
        }
    }
}
