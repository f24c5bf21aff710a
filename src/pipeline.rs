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
use crate::router::Router;
use crate::sinks::util::spawn_driver_with_dead_letter;
use crate::sinks::{AckObserver, SinkBuildError, SinkContext};

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
}

/// Turns one informer's callbacks into envelopes and routes them.
struct EmitHandler {
    builder: EnvelopeBuilder,
    router: Arc<RwLock<Option<Router>>>,
}

impl EmitHandler {
    async fn emit(&self, envelope: Envelope) {
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

/// Acknowledgements land here; the delivered-state store hooks in at this point.
struct LogAcks;

impl AckObserver for LogAcks {
    fn delivered(&self, _event: &Arc<Envelope>) {}
}

/// A running pipeline.
pub struct Pipeline {
    factory: Arc<InformerFactory>,
    router: Arc<RwLock<Option<Router>>>,
    abandon: CancellationToken,
    config: Config,
}

impl Pipeline {
    /// Builds sinks and informers (resolving every kind with the API server) without
    /// starting to watch.
    ///
    /// # Errors
    /// A [`PipelineError`] naming the config entry at fault.
    pub async fn build(config: Config, client: kube::Client) -> Result<Self, PipelineError> {
        let transform = Arc::new(
            ObjectTransform::new(&config.transforms, &config.cluster)
                .map_err(|e| PipelineError::Transform(e.to_string()))?,
        );
        let ctx = SinkContext {
            cluster: config.cluster.clone(),
            state_dir: None,
        };
        let abandon = CancellationToken::new();
        let observer: Arc<dyn AckObserver> = Arc::new(LogAcks);
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
        let router = Arc::new(RwLock::new(Some(Router::new(handles))));
        let factory = Arc::new(InformerFactory::new(client, transform));
        let cluster: Arc<str> = config.cluster.as_str().into();
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
            informer.add_handler(Arc::new(EmitHandler {
                builder: EnvelopeBuilder {
                    cluster: cluster.clone(),
                    api_version: r.api_version.as_str().into(),
                    kind: r.kind.as_str().into(),
                    plural: informer.resource().plural.as_str().into(),
                    include_old: config.transforms.include_old,
                },
                router: router.clone(),
            }));
        }
        Ok(Self {
            factory,
            router,
            abandon,
            config,
        })
    }

    /// The informers (for health and the cache API).
    pub fn informers(&self) -> Vec<Arc<SharedInformer>> {
        self.factory.informers()
    }

    /// Watches until `shutdown` resolves, then stops the informers, lets the sinks deliver
    /// what is queued within the grace period, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.factory.start_all();
        info!(
            informers = self.factory.informers().len(),
            "watching; forwarding changes"
        );
        shutdown.await;
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
        info!("stopped");
    }
}
