//! From config to parts: sinks, lanes, router, informers, ops server. Nothing watches or
//! forwards yet; every config problem found here names its key path (exit 2).

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::emit::EmitHandler;
use super::{Intake, Parts, Pipeline, PipelineError, StateAccess};
use crate::config::plan::namespace_key;
use crate::config::{Error, ErrorKind, Plan};
use crate::event::EnvelopeBuilder;
use crate::informer::{InformerError, InformerFactory, InformerKey, SharedInformer};
use crate::router::Router;
use crate::server::{Health, Metrics, Ops};
use crate::sinks::SinkLane;
use crate::state::{RedactionKey, StateStore};

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
pub(super) fn server_cause(e: &InformerError) -> String {
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
        // A standby must not open the store: the leader holds it (shared volume); it is
        // opened on takeover.
        let state = match (&config.state.dir, config.leader_election.enabled) {
            (None, _) => StateAccess::Nothing,
            (Some(dir), false) => StateAccess::Open(Arc::new(StateStore::open(dir, reset_state)?)),
            (Some(dir), true) => StateAccess::OnTakeover(dir.clone()),
        };
        let mut lanes = Vec::new();
        let mut dead_letters = Vec::new();
        for (index, compiled) in sinks.into_iter().enumerate() {
            let (name, capacity) = (compiled.name().to_string(), compiled.common.queue_capacity);
            let started = compiled
                .start(&ctx)
                .map_err(|e| e.within(&format!("sinks[{index}]")))?;
            lanes.push(SinkLane::new(name, started.sink, capacity));
            dead_letters.push(started.dead_letter);
        }
        let monitors: Vec<_> = lanes.iter().map(SinkLane::monitor).collect();
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
        // Serving from here on: probes answer while kinds are resolved against an API server
        // that may not be reachable yet.
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
        let router = Arc::new(Router::new(
            lanes.len(),
            routes,
            transform.ignore.clone(),
            namespaces.clone(),
        ));
        let gate = Arc::new(watch::channel(None).0);
        let cluster: Arc<str> = config.cluster.as_str().into();
        let mut intakes = Vec::new();
        // The plan lists each informer once: a resource listed twice shares it and is not
        // emitted twice.
        for r in &resources {
            let key = &r.key;
            let informer = resolve(&factory, key, &r.path(), true).await?;
            let builder = EnvelopeBuilder {
                cluster: cluster.clone(),
                api_version: key.api_version.as_str().into(),
                kind: key.kind.as_str().into(),
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
                key: key.clone(),
                informer,
                builder,
            });
        }
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
            server,
            stop_ops,
        })
    }
}
