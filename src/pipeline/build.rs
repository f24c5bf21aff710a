//! From config to parts: sinks, lanes, router, informers, ops server. Nothing watches or
//! forwards yet; every config problem found here names its key path (exit 2).

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::info;

use super::emit::EmitHandler;
use super::{Intake, Parts, Pipeline, PipelineError, StateAccess};
use crate::config::Config;
use crate::event::EnvelopeBuilder;
use crate::event::transform::ObjectTransform;
use crate::informer::{InformerFactory, InformerKey};
use crate::router::{Route, Router};
use crate::server::{Health, Metrics, Ops};
use crate::sinks::{SinkContext, SinkLane};
use crate::state::StateStore;

/// The informer key a `resources[]` entry describes.
fn informer_key(r: &crate::config::ResourceConfig) -> InformerKey {
    InformerKey {
        api_version: r.api_version.clone(),
        kind: r.kind.clone(),
        namespace: r.namespace.clone(),
        label_selector: r.label_selector.clone().filter(|s| !s.is_empty()),
        field_selector: r.field_selector.clone().filter(|s| !s.is_empty()),
    }
}

fn transform(config: &Config) -> Result<Arc<ObjectTransform>, PipelineError> {
    ObjectTransform::new(&config.transforms, &config.cluster)
        .map(Arc::new)
        .map_err(|e| PipelineError::Transform(e.to_string()))
}

/// Asks the API server whether it serves every configured kind (for `lookout check
/// --server`), without opening state, binding ports or starting sinks.
///
/// # Errors
/// [`PipelineError::Resource`] for the first kind that cannot be watched.
pub async fn verify_resources(config: &Config, client: kube::Client) -> Result<(), PipelineError> {
    let factory = InformerFactory::new(client, transform(config)?);
    for (index, r) in config.resources.iter().enumerate() {
        factory
            .informer(&informer_key(r))
            .await
            .map_err(|source| PipelineError::Resource { index, source })?;
    }
    Ok(())
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
        let transform = transform(&config)?;
        let ctx = SinkContext {
            cluster: config.cluster.clone(),
            state_dir: config.state.dir.clone(),
        };
        // A standby must not open the store: the leader holds it (shared volume); it is
        // opened on takeover.
        let state = match (&config.state.dir, config.leader_election.enabled) {
            (None, _) => StateAccess::Nothing,
            (Some(dir), false) => StateAccess::Open(Arc::new(StateStore::open(dir, reset_state)?)),
            (Some(dir), true) => StateAccess::OnTakeover(dir.clone()),
        };
        let mut lanes = Vec::new();
        let mut dead_letters = Vec::new();
        for (index, sc) in config.sinks.iter().enumerate() {
            let sink = sc
                .build(&ctx)
                .await
                .map_err(|source| PipelineError::Sink { index, source })?;
            lanes.push(SinkLane::new(
                sc.name().to_string(),
                sink,
                sc.queue_capacity(),
            ));
            dead_letters.push(sc.dead_letter(&ctx));
        }
        let monitors: Vec<_> = lanes.iter().map(SinkLane::monitor).collect();
        let factory = Arc::new(InformerFactory::new(client.clone(), transform.clone()));
        let sink_names: Vec<String> = lanes.iter().map(|l| l.name.clone()).collect();
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
        let router = Arc::new(Router::new(
            lanes.len(),
            routes,
            transform.ignore.clone(),
            namespaces.clone(),
        ));
        let gate = Arc::new(watch::channel(None).0);
        let metrics = Arc::new(Metrics::new(factory.clone(), monitors.clone()));
        let cluster: Arc<str> = config.cluster.as_str().into();
        let mut handled = HashSet::new();
        let mut intakes = Vec::new();
        for (index, r) in config.resources.iter().enumerate() {
            let key = informer_key(r);
            let informer = factory
                .informer(&key)
                .await
                .map_err(|source| PipelineError::Resource { index, source })?;
            // The same resource listed twice shares the informer and must not be emitted twice.
            if !handled.insert(key.clone()) {
                continue;
            }
            let builder = EnvelopeBuilder {
                cluster: cluster.clone(),
                api_version: r.api_version.as_str().into(),
                kind: r.kind.as_str().into(),
                plural: informer.resource().plural.as_str().into(),
                source: key.to_string().into(),
                include_old: config.transforms.include_old,
            };
            informer.add_handler(Arc::new(EmitHandler {
                builder: builder.clone(),
                gate: gate.subscribe(),
                metrics: metrics.clone(),
            }));
            intakes.push(Intake {
                key,
                informer,
                builder,
            });
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
        info!(
            sinks = lanes.len(),
            informers = intakes.len(),
            "pipeline built"
        );
        Ok(Self {
            parts: Parts {
                config,
                client,
                factory,
                lanes,
                dead_letters,
                router,
                intakes,
                namespaces,
                state,
                ops,
                gate,
            },
            listener,
        })
    }
}
