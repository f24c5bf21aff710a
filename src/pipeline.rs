//! Wires the agent: informers → cache/diff → router → sink queues → sinks → acknowledgement.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use json_patch::Patch;
use serde_json::Value;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::event::transform::ObjectTransform;
use crate::event::{Envelope, EnvelopeBuilder, Op};
use crate::informer::{Handler, InformerError, InformerFactory, InformerKey, SharedInformer};
use crate::router::{Route, Router};
use crate::server::{Health, Metrics, Ops};
use crate::sinks::util::spawn_driver_with_dead_letter;
use crate::sinks::{AckObserver, SinkBuildError, SinkContext};
use crate::state::{StateError, StateStore, StateWriter};

/// Why the pipeline could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A configured resource cannot be watched (kind not served, bad scope): a config error.
    #[error("config error at `resources[{index}]`: {source}")]
    Resource {
        /// Index in `resources`.
        index: usize,
        /// Why.
        #[source]
        source: InformerError,
    },
    /// A sink could not be built: a config error.
    #[error("config error at `sinks[{index}]`: {source}")]
    Sink {
        /// Index in `sinks`.
        index: usize,
        /// Why.
        #[source]
        source: SinkBuildError,
    },
    /// The transforms do not compile.
    #[error("config error at `transforms`: {0}")]
    Transform(String),
    /// The ops server cannot listen.
    #[error("config error at `server.listen`: cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The delivered-state store cannot be used (unreadable, incompatible).
    #[error("{0}")]
    State(#[from] StateError),
}

/// Turns one informer's callbacks into envelopes and routes them.
struct EmitHandler {
    builder: EnvelopeBuilder,
    router: Arc<RwLock<Option<Router>>>,
    metrics: Arc<Metrics>,
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
        let mut e = self
            .builder
            .build(Op::Add, obj.clone(), None, None, Instant::now());
        e.initial_list = initial_list;
        self.emit(e).await;
    }

    async fn on_update(&self, old: &Arc<Value>, new: &Arc<Value>, patch: Patch) {
        let e = self.builder.build(
            Op::Update,
            new.clone(),
            Some(old.clone()),
            Some(patch),
            Instant::now(),
        );
        self.emit(e).await;
    }

    async fn on_delete(&self, last_known: &Arc<Value>, final_state_unknown: bool) {
        let mut e = self
            .builder
            .build(Op::Delete, last_known.clone(), None, None, Instant::now());
        e.final_state_unknown = final_state_unknown;
        self.emit(e).await;
    }
}

/// Without a state directory, acknowledgements are only counted by the drivers.
struct NoState;

impl AckObserver for NoState {
    fn delivered(&self, _event: &Arc<Envelope>) {}
}

/// A running pipeline.
pub struct Pipeline {
    factory: Arc<InformerFactory>,
    router: Arc<RwLock<Option<Router>>>,
    abandon: CancellationToken,
    config: Config,
    /// The delivered-state writer task; ends after the last sink driver.
    state_task: Option<tokio::task::JoinHandle<()>>,
    ops: Arc<Ops>,
    listener: tokio::net::TcpListener,
    /// The Namespace informer routes read labels from, started (and synced) first.
    namespaces: Option<Arc<SharedInformer>>,
}

impl Pipeline {
    /// Builds sinks and informers (resolving every kind with the API server) without
    /// starting to watch.
    ///
    /// # Errors
    /// A [`PipelineError`] naming the config entry at fault.
    pub async fn build(
        config: Config,
        client: kube::Client,
        reset_state: bool,
    ) -> Result<Self, PipelineError> {
        let transform = Arc::new(
            ObjectTransform::new(&config.transforms, &config.cluster)
                .map_err(|e| PipelineError::Transform(e.to_string()))?,
        );
        let ctx = SinkContext {
            cluster: config.cluster.clone(),
            state_dir: config.state.dir.clone(),
        };
        let abandon = CancellationToken::new();
        let store = match &config.state.dir {
            Some(dir) => Some(Arc::new(StateStore::open(dir, reset_state)?)),
            None => None,
        };
        let (observer, state_task): (Arc<dyn AckObserver>, _) = match &store {
            Some(store) => {
                let (writer, task) = StateWriter::start(store.clone());
                (writer, Some(task))
            }
            None => (Arc::new(NoState), None),
        };
        let mut handles = Vec::new();
        for (index, sc) in config.sinks.iter().enumerate() {
            let sink = sc
                .build(&ctx)
                .await
                .map_err(|source| PipelineError::Sink { index, source })?;
            handles.push(spawn_driver_with_dead_letter(
                sc.name().to_string(),
                sink,
                sc.queue_capacity(),
                observer.clone(),
                abandon.clone(),
                sc.dead_letter(&ctx),
            ));
        }
        let monitors: Vec<_> = handles.iter().map(|h| h.monitor()).collect();
        let factory = Arc::new(InformerFactory::new(client, transform.clone()));
        let sink_names: Vec<String> = config.sinks.iter().map(|s| s.name().to_string()).collect();
        let key = config.redaction_key();
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| Route::compile(r, i, &sink_names, key.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PipelineError::Transform(format!("routes: {}: {}", e.path, e.message)))?;
        // Namespace label selectors in routes read labels from a (shared) Namespace informer.
        let namespaces = if routes.iter().any(Route::needs_namespaces) {
            let key = InformerKey {
                api_version: "v1".into(),
                kind: "Namespace".into(),
                namespace: None,
                label_selector: None,
                field_selector: None,
            };
            Some(
                factory
                    .informer(&key)
                    .await
                    .map_err(|source| PipelineError::Resource { index: 0, source })?,
            )
        } else {
            None
        };
        let router = Arc::new(RwLock::new(Some(Router::new(
            handles,
            routes,
            transform.ignore.clone(),
            namespaces.clone(),
            observer.clone(),
        ))));
        let metrics = Arc::new(Metrics::new(factory.clone(), monitors.clone()));
        let cluster: Arc<str> = config.cluster.as_str().into();
        let mut handled = std::collections::HashSet::new();
        for (index, r) in config.resources.iter().enumerate() {
            let key = InformerKey {
                api_version: r.api_version.clone(),
                kind: r.kind.clone(),
                namespace: r.namespace.clone(),
                label_selector: r.label_selector.clone().filter(|s| !s.is_empty()),
                field_selector: r.field_selector.clone().filter(|s| !s.is_empty()),
            };
            let informer = factory
                .informer(&key)
                .await
                .map_err(|source| PipelineError::Resource { index, source })?;
            // The same resource listed twice shares the informer and must not be emitted twice.
            if !handled.insert(key.clone()) {
                continue;
            }
            if let Some(store) = &store {
                let delivered = store.load(&key.to_string())?;
                info!(informer = %key, objects = delivered.len(), "resuming from delivered state");
                informer.seed(delivered);
            }
            informer.add_handler(Arc::new(EmitHandler {
                builder: EnvelopeBuilder {
                    cluster: cluster.clone(),
                    api_version: r.api_version.as_str().into(),
                    kind: r.kind.as_str().into(),
                    plural: informer.resource().plural.as_str().into(),
                    source: key.to_string().into(),
                    include_old: config.transforms.include_old,
                },
                router: router.clone(),
                metrics: metrics.clone(),
            }));
        }
        if let Some(store) = &store {
            let sources: Vec<String> = handled.iter().map(|k| k.to_string()).collect();
            let removed = store.retain_sources(&sources)?;
            if removed > 0 {
                info!(
                    removed,
                    "forgot delivered state of resources no longer configured"
                );
            }
        }
        let listen = config.server.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| PipelineError::Listen {
                addr: listen,
                source,
            })?;
        let health = Health::new(
            factory.informers(),
            monitors,
            config.server.readiness.max_silence,
        );
        let ops = Arc::new(Ops {
            health,
            metrics,
            factory: factory.clone(),
            cache: config.server.cache.clone(),
        });
        Ok(Self {
            factory,
            router,
            abandon,
            config,
            state_task,
            ops,
            listener,
            namespaces,
        })
    }

    /// The informers (for health and the cache API).
    pub fn informers(&self) -> Vec<Arc<SharedInformer>> {
        self.factory.informers()
    }

    /// Watches until `shutdown` resolves, then stops the informers, lets the sinks deliver
    /// what is queued within the grace period, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let stop_ops = CancellationToken::new();
        if let Ok(addr) = self.listener.local_addr() {
            info!(%addr, "ops server listening (/metrics, /healthz, /readyz)");
        }
        self.ops.health.spawn_sink_checks(stop_ops.clone());
        let server = tokio::spawn(crate::server::serve(
            self.listener,
            self.ops.clone(),
            stop_ops.clone().cancelled_owned(),
        ));
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
        info!(
            informers = self.factory.informers().len(),
            "watching; forwarding changes"
        );
        if !stopping {
            shutdown.await;
        }
        info!("shutting down: stopping informers");
        self.factory.stop_all().await;
        let router = self.router.write().await.take();
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
        // The drivers are gone, and with them every handle on the state writer: it writes
        // what was acknowledged last and ends.
        if let Some(task) = self.state_task {
            let _ = task.await;
        }
        stop_ops.cancel();
        let _ = server.await;
        info!("stopped");
    }
}
