//! Wires the agent: informers → cache/diff → router → sink queues → sinks → acknowledgement.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use json_patch::Patch;
use serde_json::Value;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::plan::namespace_key;
use crate::config::{Config, Error, ErrorKind, Plan};
use crate::event::{Envelope, EnvelopeBuilder, Op, SnapshotMark};
use crate::informer::{
    ChangedBy, Handler, InformerError, InformerFactory, InformerKey, SharedInformer,
};
use crate::leader::Role;
use crate::router::Router;
use crate::server::{Health, Metrics, Ops};
use crate::sinks::AckObserver;
use crate::sinks::util::spawn_driver_with_dead_letter;
use crate::state::{RedactionKey, StateError, StateStore, StateWriter};

/// Why the pipeline could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Something in the configuration cannot be used (a kind the server does not serve, a
    /// file sink's file, the listen address): exit 2.
    #[error(transparent)]
    Config(#[from] Error),
    /// The API server cannot be reached or refused us (not a config error: retry later).
    #[error("cannot resolve `{at}` with the API server: {}", server_cause(.source))]
    Server {
        /// The config entry being resolved.
        at: String,
        /// What failed.
        #[source]
        source: InformerError,
    },
    /// The delivered-state store cannot be used (unreadable, incompatible).
    #[error("{0}")]
    State(#[from] StateError),
}

/// Resolves one informer; a kind the server answered it does not serve is a config error
/// at `at`, anything else (unreachable, refused) is not. `wait`: ask until the server
/// answers (`run`), else once (`check --server`).
async fn resolve(
    factory: &InformerFactory,
    key: &InformerKey,
    at: &str,
    wait: bool,
) -> Result<Arc<SharedInformer>, PipelineError> {
    let resolved = if wait {
        factory.informer(key).await
    } else {
        factory.try_informer(key).await
    };
    resolved.map_err(|source| {
        if is_config_error(&source) {
            PipelineError::Config(Error::new(at, ErrorKind::Resource(Box::new(source))))
        } else {
            PipelineError::Server {
                at: at.to_string(),
                source,
            }
        }
    })
}

/// What went wrong talking to the server, without the informer's "does not serve" framing,
/// which is only true of config errors.
fn server_cause(e: &InformerError) -> String {
    match e {
        InformerError::UnknownKind {
            api_version,
            kind,
            source,
        } => format!("{api_version} {kind}: {source}"),
        other => other.to_string(),
    }
}

/// True when the API server answered and the answer condemns the configuration: the kind is
/// not served (discovery found no such kind or group, or 404), or a namespace was set for a
/// cluster-scoped kind. Connection failures, timeouts, 401/403 and 5xx are not.
fn is_config_error(e: &InformerError) -> bool {
    match e {
        InformerError::UnknownKind { source, .. } => match source {
            kube::Error::Discovery(_) => true,
            kube::Error::Api(status) => status.code == 404,
            _ => false,
        },
        InformerError::NamespaceOnClusterScoped { .. } => true,
        InformerError::Unreachable { .. } => false,
    }
}

/// Turns one informer's callbacks into envelopes and routes them.
struct EmitHandler {
    builder: EnvelopeBuilder,
    router: Arc<RwLock<Option<Router>>>,
    metrics: Arc<Metrics>,
}

/// When the change arrived from the API server: the watch event's arrival (before parsing),
/// else now (list pages, re-syncs).
fn arrival() -> Instant {
    crate::informer::arrival().unwrap_or_else(Instant::now)
}

impl EmitHandler {
    async fn emit(&self, envelope: Envelope) {
        self.metrics.observed(&envelope.kind, envelope.op);
        if let Some(router) = self.router.read().await.as_ref() {
            router.dispatch(envelope).await;
        }
    }
}

#[async_trait]
impl Handler for EmitHandler {
    async fn on_add(&self, obj: &Arc<Value>, initial_list: bool) {
        self.on_add_by(obj, initial_list, None).await;
    }

    async fn on_update(&self, old: &Arc<Value>, new: &Arc<Value>, patch: Patch) {
        self.on_update_by(old, new, patch, None).await;
    }

    async fn on_delete(&self, last_known: &Arc<Value>, final_state_unknown: bool) {
        let mut e = self
            .builder
            .build(Op::Delete, last_known.clone(), None, None, arrival());
        e.final_state_unknown = final_state_unknown;
        self.emit(e).await;
    }

    async fn on_read(&self, obj: &Arc<Value>, mark: SnapshotMark, initial_list: bool) {
        let mut e = self
            .builder
            .build(Op::Add, obj.clone(), None, None, arrival());
        e.snapshot = Some(mark);
        e.initial_list = initial_list;
        self.emit(e).await;
    }

    async fn on_add_by(&self, obj: &Arc<Value>, initial_list: bool, changed_by: ChangedBy) {
        let mut e = self
            .builder
            .build(Op::Add, obj.clone(), None, None, arrival());
        e.initial_list = initial_list;
        e.changed_by = changed_by;
        self.emit(e).await;
    }

    async fn on_update_by(
        &self,
        old: &Arc<Value>,
        new: &Arc<Value>,
        patch: Patch,
        changed_by: ChangedBy,
    ) {
        let mut e = self.builder.build(
            Op::Update,
            new.clone(),
            Some(old.clone()),
            Some(patch),
            arrival(),
        );
        e.changed_by = changed_by;
        self.emit(e).await;
    }
}

/// Where acknowledgements go: the delivered-state writer once there is one (at start, or
/// when this replica becomes leader); until then, and without a state directory, nowhere.
#[derive(Default)]
struct Acks {
    writer: std::sync::OnceLock<Arc<StateWriter>>,
}

impl AckObserver for Acks {
    fn delivered(&self, event: &Arc<Envelope>) {
        if let Some(w) = self.writer.get() {
            w.delivered(event);
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Shutdown was requested; queued events were given the grace period.
    Stopped,
    /// This replica lost the lease and stopped forwarding at once.
    LostLeadership,
}

/// A running pipeline.
pub struct Pipeline {
    factory: Arc<InformerFactory>,
    router: Arc<RwLock<Option<Router>>>,
    abandon: CancellationToken,
    config: Config,
    /// The delivered-state writer task; ends after the last sink driver.
    state_task: Option<tokio::task::JoinHandle<()>>,
    /// Acknowledgement target shared by drivers and router.
    acks: Arc<Acks>,
    /// With leader election: the router waits here until this replica leads.
    standby_router: Option<Router>,
    /// The informers that forward, with their keys (= delivered-state sources).
    forwarding: Vec<(InformerKey, Arc<SharedInformer>)>,
    client: kube::Client,
    ops: Arc<Ops>,
    /// The ops server, serving from the start of `build` (probes answer while kinds are
    /// resolved against an API server that may not be reachable yet), until `stop_ops`.
    server: Option<tokio::task::JoinHandle<()>>,
    stop_ops: CancellationToken,
    /// The Namespace informer routes read labels from, started (and synced) first.
    namespaces: Option<Arc<SharedInformer>>,
}

/// Asks the API server whether it serves every planned kind (for `lookout check
/// --server`), without opening state, binding ports or starting sinks.
///
/// # Errors
/// The first kind that cannot be watched.
pub async fn verify_resources(plan: &Plan, client: kube::Client) -> Result<(), PipelineError> {
    let factory = InformerFactory::new(client, plan.transform.clone());
    for r in &plan.resources {
        resolve(&factory, &r.key, &r.path(), false).await?;
    }
    if let Some(i) = plan.namespace_route {
        resolve(&factory, &namespace_key(), &namespace_path(i), false).await?;
    }
    Ok(())
}

/// Where errors of the implicit Namespace informer are reported.
fn namespace_path(route: usize) -> String {
    format!("routes[{route}].namespaces.selector")
}

impl Pipeline {
    /// Starts the plan's sinks and resolves its informers with the API server, without
    /// starting to watch.
    ///
    /// # Errors
    /// A [`PipelineError`] naming the config entry at fault.
    pub async fn build(
        plan: Plan,
        client: kube::Client,
        reset_state: bool,
    ) -> Result<Self, PipelineError> {
        // The redaction key may live in the state directory: resolved here, at start, not
        // when the plan is compiled (`lookout check` creates nothing).
        let key = RedactionKey::resolve(
            plan.config.transforms.redaction_key.as_deref(),
            plan.config.state.dir.as_deref(),
        )?;
        let plan = plan.with_redaction_key(key.as_ref());
        let ctx = plan.sink_context();
        let Plan {
            config,
            resources,
            transform,
            routes,
            sinks,
            namespace_route,
        } = plan;
        let abandon = CancellationToken::new();
        let standby = config.leader_election.enabled;
        // A standby must not open the store: the leader holds it (shared volume); it is
        // opened on takeover.
        let store = match (&config.state.dir, standby) {
            (Some(dir), false) => Some(Arc::new(StateStore::open(dir, reset_state)?)),
            _ => None,
        };
        let acks = Arc::new(Acks::default());
        let mut state_task = None;
        if let Some(store) = &store {
            let (writer, task) = StateWriter::start(store.clone());
            let _ = acks.writer.set(writer);
            state_task = Some(task);
        }
        let observer: Arc<dyn AckObserver> = acks.clone();
        let mut handles = Vec::new();
        for (index, compiled) in sinks.into_iter().enumerate() {
            let (name, capacity) = (compiled.name().to_string(), compiled.common.queue_capacity);
            let started = compiled
                .start(&ctx)
                .map_err(|e| e.within(&format!("sinks[{index}]")))?;
            handles.push(spawn_driver_with_dead_letter(
                name,
                started.sink,
                capacity,
                observer.clone(),
                abandon.clone(),
                started.dead_letter,
            ));
        }
        let monitors: Vec<_> = handles.iter().map(|h| h.monitor()).collect();
        let factory = Arc::new(
            InformerFactory::new(client.clone(), transform.clone()).configure(
                &config.watch,
                resources.iter().map(|r| (r.key.clone(), r.initial_list)),
            ),
        );
        let metrics = Arc::new(Metrics::new(factory.clone(), monitors.clone()));
        let listen = config.server.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| {
                Error::new(
                    "server.listen",
                    ErrorKind::Listen {
                        addr: listen,
                        source,
                    },
                )
            })?;
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "ops server listening (/metrics, /healthz, /readyz)");
        }
        let health = Health::new(
            factory.clone(),
            monitors,
            config.server.readiness.max_silence,
        );
        let ops = Arc::new(Ops {
            health,
            metrics: metrics.clone(),
            factory: factory.clone(),
            cache: config.server.cache.clone(),
            snapshot: config.server.snapshot.clone(),
            snapshots: Default::default(),
        });
        let stop_ops = CancellationToken::new();
        let server = tokio::spawn(crate::server::serve(
            listener,
            ops.clone(),
            stop_ops.clone().cancelled_owned(),
        ));
        // Namespace label selectors in routes read labels from a (shared) Namespace informer.
        let namespaces = match namespace_route {
            Some(i) => Some(resolve(&factory, &namespace_key(), &namespace_path(i), true).await?),
            None => None,
        };
        let built = Router::new(
            handles,
            routes,
            transform.ignore.clone(),
            namespaces.clone(),
            observer.clone(),
        );
        let (router, standby_router) = if standby {
            (Arc::new(RwLock::new(None)), Some(built))
        } else {
            (Arc::new(RwLock::new(Some(built))), None)
        };
        let cluster: Arc<str> = config.cluster.as_str().into();
        let mut forwarding = Vec::new();
        // The plan lists each informer once: a resource listed twice shares it and is not
        // emitted twice.
        for r in &resources {
            let key = &r.key;
            let informer = resolve(&factory, key, &r.path(), true).await?;
            forwarding.push((key.clone(), informer.clone()));
            if let Some(store) = &store {
                let delivered = store.load(&key.to_string())?;
                info!(informer = %key, objects = delivered.len(), "resuming from delivered state");
                informer.seed(delivered);
            }
            informer.add_handler(Arc::new(EmitHandler {
                builder: EnvelopeBuilder {
                    cluster: cluster.clone(),
                    api_version: key.api_version.as_str().into(),
                    kind: key.kind.as_str().into(),
                    plural: informer.resource().plural.as_str().into(),
                    source: key.to_string().into(),
                    include_old: config.transforms.include_old,
                },
                router: router.clone(),
                metrics: metrics.clone(),
            }));
        }
        if let Some(store) = &store {
            let sources: Vec<String> = resources.iter().map(|r| r.key.to_string()).collect();
            let removed = store.retain_sources(&sources)?;
            if removed > 0 {
                info!(
                    removed,
                    "forgot delivered state of resources no longer configured"
                );
            }
        }
        Ok(Self {
            factory,
            router,
            abandon,
            config,
            state_task,
            acks,
            standby_router,
            forwarding,
            client,
            ops,
            server: Some(server),
            stop_ops,
            namespaces,
        })
    }

    /// Leader takeover: open the delivered state, start forwarding, and bring downstream
    /// from what it acknowledged to the warm caches' current state.
    async fn take_over(&mut self, shutdown: &mut (impl Future<Output = ()> + Unpin)) -> bool {
        let mut store = None;
        if let Some(dir) = &self.config.state.dir {
            // A previous leader on a shared volume may still hold the store for a moment.
            loop {
                match StateStore::open(dir, false) {
                    Ok(s) => {
                        store = Some(Arc::new(s));
                        break;
                    }
                    Err(StateError::Locked { .. }) => {
                        tokio::select! {
                            _ = &mut *shutdown => return false,
                            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot open the delivered state; forwarding a full snapshot");
                        break;
                    }
                }
            }
        } else {
            warn!("no state.dir: the new leader sends every object as an add (a snapshot)");
        }
        if let Some(store) = &store {
            let (writer, task) = StateWriter::start(store.clone());
            let _ = self.acks.writer.set(writer);
            self.state_task = Some(task);
        }
        let mut held = Vec::new();
        for (_, informer) in &self.forwarding {
            held.push(informer.hold().await);
        }
        *self.router.write().await = self.standby_router.take();
        for ((key, informer), guard) in self.forwarding.iter().zip(&held) {
            let delivered = match &store {
                Some(s) => s.load(&key.to_string()).unwrap_or_else(|e| {
                    warn!(error = %e, informer = %key, "cannot read delivered state");
                    Vec::new()
                }),
                None => Vec::new(),
            };
            info!(informer = %key, delivered = delivered.len(), cached = informer.store().len(),
                "leader: resuming from delivered state");
            informer.resync(guard, delivered).await;
        }
        true
    }

    /// Watches until `shutdown` resolves, then stops the informers, lets the sinks deliver
    /// what is queued within the grace period, and returns. With leader election, forwards
    /// only while holding the lease, and returns at once when the lease is lost.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> RunOutcome {
        let stop_ops = self.stop_ops.clone();
        let server = self.server.take().expect("run once");
        self.ops.health.spawn_sink_checks(stop_ops.clone());
        tokio::pin!(shutdown);
        let mut stopping = false;
        if let Some(ns) = &self.namespaces {
            ns.start();
            // Routes that select namespaces by label must not judge events before the
            // labels are known.
            while !ns.has_synced() && !stopping {
                tokio::select! {
                    _ = &mut shutdown => stopping = true,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
                }
            }
        }
        if !stopping {
            self.factory.start_all();
        }
        let stop_election = CancellationToken::new();
        let mut outcome = RunOutcome::Stopped;
        if self.config.leader_election.enabled && !stopping {
            let mut role = crate::leader::spawn(
                self.client.clone(),
                self.config.leader_election.clone(),
                stop_election.clone(),
            );
            info!(
                informers = self.factory.informers().len(),
                "standby: informers warm, forwarding nothing"
            );
            loop {
                tokio::select! {
                    _ = &mut shutdown => break,
                    changed = role.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let now = *role.borrow_and_update();
                        match now {
                            Role::Leader => {
                                if !self.take_over(&mut shutdown).await {
                                    break;
                                }
                            }
                            Role::Lost => {
                                // Stop forwarding at once; whatever is queued is re-sent by
                                // the next leader from the delivered state.
                                error!("lost the lease: stopping forwarding now");
                                *self.router.write().await = None;
                                self.abandon.cancel();
                                outcome = RunOutcome::LostLeadership;
                                break;
                            }
                            Role::Standby => {}
                        }
                    }
                }
            }
        } else {
            info!(
                informers = self.factory.informers().len(),
                "watching; forwarding changes"
            );
            if !stopping {
                shutdown.await;
            }
        }
        info!("shutting down: stopping informers");
        self.ops.snapshots.cancel.cancel();
        self.factory.stop_all().await;
        let router = self.router.write().await.take();
        drop(self.standby_router.take());
        if let Some(router) = router {
            let grace = self.config.shutdown.grace_period;
            let abandon = self.abandon.clone();
            let drained = tokio::time::timeout(grace, router.close_and_drain());
            tokio::pin!(drained);
            if drained.as_mut().await.is_err() {
                warn!(
                    ?grace,
                    "grace period over; undelivered events will be re-emitted on the next start"
                );
                abandon.cancel();
            }
        }
        // Release the lease after the last delivery, so the next leader starts from
        // everything this one acknowledged.
        stop_election.cancel();
        // The drivers are gone, and with them every handle on the state writer but ours:
        // drop it, and the writer records what was acknowledged last and ends.
        drop(self.acks);
        if let Some(task) = self.state_task {
            let _ = task.await;
        }
        stop_ops.cancel();
        let _ = server.await;
        info!("stopped");
        outcome
    }
}
