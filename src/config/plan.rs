//! The compiled plan: a [`Config`] checked and built in one pass — informer keys, global
//! transforms, routes, sinks with their clients — so that `lookout check` prints exactly what
//! `lookout run` runs, and nothing is compiled twice.
//!
//! Every problem is reported at once, each at its key path. What only the API server can
//! judge (is a kind served?) is checked when the pipeline resolves the informers.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{Config, Error, ErrorKind, Errors, ResourceConfig};
use crate::event::transform::ObjectTransform;
use crate::informer::{InformerKey, InitialList};
use crate::router::Route;
use crate::sinks::{CompiledSink, DeadLetter, SinkContext};

/// Everything `lookout run` needs, checked and built.
pub struct Plan {
    /// The configuration it was compiled from (state, leader election, server, shutdown and
    /// log settings are used as they are).
    pub config: Config,
    /// One entry per distinct informer, in config order.
    pub resources: Vec<PlannedResource>,
    /// The global transforms, applied by every informer.
    pub transform: Arc<ObjectTransform>,
    /// The routes, in config order.
    pub routes: Vec<Route>,
    /// The sinks with their clients built, in config order (routes refer to them by index).
    pub sinks: Vec<CompiledSink>,
    /// The first route that selects namespaces by label: it needs an informer on
    /// Namespaces (not in `resources`), whose errors are reported at that route.
    pub namespace_route: Option<usize>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sinks: Vec<&str> = self.sinks.iter().map(|s| s.name()).collect();
        f.debug_struct("Plan")
            .field("resources", &self.resources)
            .field("routes", &self.routes.len())
            .field("sinks", &sinks)
            .field("namespace_route", &self.namespace_route)
            .finish_non_exhaustive()
    }
}

/// One informer the plan starts.
#[derive(Debug, Clone)]
pub struct PlannedResource {
    /// The first `resources[]` entry that asks for it (errors are reported there).
    pub index: usize,
    /// Later entries asking for the same informer (it is shared, and emits once).
    pub duplicates: Vec<usize>,
    /// The informer's key.
    pub key: InformerKey,
    /// How it lists (`resources[].initialList`; entries sharing the informer agree).
    pub initial_list: InitialList,
}

impl PlannedResource {
    /// The key path of its entry, e.g. `resources[1]`.
    pub fn path(&self) -> String {
        format!("resources[{}]", self.index)
    }
}

/// The informer key a `resources[]` entry describes.
fn informer_key(r: &ResourceConfig) -> InformerKey {
    InformerKey {
        api_version: r.api_version.clone(),
        kind: r.kind.clone(),
        namespace: r.namespace.clone(),
        label_selector: r.label_selector.clone().filter(|s| !s.is_empty()),
        field_selector: r.field_selector.clone().filter(|s| !s.is_empty()),
    }
}

/// The informer on Namespaces that label-selecting routes read.
pub fn namespace_key() -> InformerKey {
    InformerKey {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        namespace: None,
        label_selector: None,
        field_selector: None,
    }
}

impl Plan {
    /// Checks every setting and builds transforms, routes and sink clients.
    ///
    /// # Errors
    /// Every problem found, each at its key path.
    pub fn compile(config: Config) -> Result<Plan, Errors> {
        let mut errors = Errors::default();
        if config.cluster.trim().is_empty() {
            errors.push(Error::new("cluster", ErrorKind::Empty));
        }
        let resources = resources(&config, &mut errors);
        // Keyed for real at start (`Plan::with_redaction_key`): the key may live in the state
        // directory, which `lookout check` does not touch.
        let transform = errors.absorb(
            ObjectTransform::new(&config.transforms, b"").map_err(|e| e.within("transforms")),
        );
        if config
            .transforms
            .redaction_key
            .as_deref()
            .is_some_and(|k| k.trim().is_empty())
        {
            errors.push(Error::new(
                "transforms.redactionKey",
                ErrorKind::Invalid(
                    "must not be empty (an unset `${VAR:-}`?); remove it to have a key generated"
                        .into(),
                ),
            ));
        }
        if let Err((k, m)) = config.server.cache.validate() {
            errors.push(Error::new(
                format!("server.cache.{k}"),
                ErrorKind::Invalid(m),
            ));
        }
        if let Err((k, m)) = config.server.snapshot.validate() {
            errors.push(Error::new(
                format!("server.snapshot.{k}"),
                ErrorKind::Invalid(m),
            ));
        }
        let sinks = sinks(&config, &mut errors);
        errors.take(
            config
                .watch
                .validate()
                .map_err(|(k, m)| Error::new(format!("watch.{k}"), ErrorKind::Invalid(m))),
        );
        errors.absorb(
            config
                .leader_election
                .validate()
                .map_err(|e| e.within("leaderElection")),
        );
        let names: Vec<String> = config.sinks.iter().map(|s| s.name().to_string()).collect();
        let routes: Vec<Route> = config
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                errors.absorb(
                    Route::compile(r, i, &names, b"")
                        .map_err(|e| e.within(&format!("routes[{i}]"))),
                )
            })
            .collect();
        let namespace_route = routes.iter().position(Route::needs_namespaces);
        match (transform, errors.0.is_empty()) {
            (Some(transform), true) => Ok(Plan {
                config,
                resources,
                transform: Arc::new(transform),
                routes,
                sinks,
                namespace_route,
            }),
            _ => Err(errors),
        }
    }

    /// Keys the redaction hashes of the global transforms and of every route with `key`
    /// (resolved at start: `crate::state::RedactionKey`).
    pub fn with_redaction_key(mut self, key: &[u8]) -> Self {
        self.transform = Arc::new(self.transform.with_key(key));
        for r in &mut self.routes {
            r.set_redaction_key(key);
        }
        self
    }

    /// Where sinks put what they need from the rest of the agent.
    pub fn sink_context(&self) -> SinkContext {
        SinkContext {
            cluster: self.config.cluster.clone(),
            state_dir: self.config.state.dir.clone(),
        }
    }

    /// The plan as YAML for people, secrets masked: what `lookout check` prints.
    pub fn describe(&self) -> String {
        let mut config = serde_json::to_value(&self.config).unwrap_or_default();
        let state_dir = self.config.state.dir.as_deref();
        let mut informers: Vec<Value> = self
            .resources
            .iter()
            .map(|r| {
                let mut v = json!({"informer": r.key.to_string(), "for": r.path()});
                if !r.duplicates.is_empty() {
                    let also: Vec<String> = r
                        .duplicates
                        .iter()
                        .map(|i| format!("resources[{i}]"))
                        .collect();
                    v["sharedWith"] = json!(also);
                }
                v
            })
            .collect();
        if let Some(i) = self.namespace_route {
            informers.push(json!({
                "informer": namespace_key().to_string(),
                "for": format!("routes[{i}].namespaces.selector"),
            }));
        }
        let sinks: Vec<Value> = self
            .sinks
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(&s.config).unwrap_or_default();
                let c = &s.common;
                v["format"] = serde_json::to_value(c.payload).unwrap_or_default();
                if let Some(m) = v.as_object_mut() {
                    m.shift_remove("cloudEventsMode");
                    m.shift_remove("debezium");
                }
                v["queueCapacity"] = json!(c.queue_capacity);
                v["deadLetter"] = if !s.config.kind.accepts().rejects {
                    json!("none (never rejects an event)")
                } else {
                    match DeadLetter::path_for(&c.name, c.dead_letter.as_ref(), state_dir) {
                        Some(p) => json!(p),
                        None => json!("log only (no state.dir, no deadLetter.path)"),
                    }
                };
                v
            })
            .collect();
        if let Some(m) = config.as_object_mut() {
            m.shift_remove("resources");
            m.shift_remove("sinks");
            m.insert("informers".into(), json!(informers));
            m.insert("sinks".into(), json!(sinks));
        }
        // Routes come after the sinks they name, for reading top to bottom.
        if let Some(routes) = config
            .as_object_mut()
            .and_then(|m| m.shift_remove("routes"))
        {
            config["routes"] = routes;
        }
        super::mask_secrets(&mut config);
        let yaml = serde_yaml_ng::to_string(&config).unwrap_or_default();
        format!("# The plan `lookout run` would run (secrets masked).\n{yaml}")
    }
}

/// The distinct informers of `resources`, each entry checked.
fn resources(config: &Config, errors: &mut Errors) -> Vec<PlannedResource> {
    if config.resources.is_empty() {
        errors.push(Error::new(
            "resources",
            ErrorKind::NoneGiven("resource to watch"),
        ));
    }
    let mut planned: Vec<PlannedResource> = Vec::new();
    for (i, r) in config.resources.iter().enumerate() {
        let at = |k: &str| format!("resources[{i}].{k}");
        let before = errors.0.len();
        if r.kind.is_empty() {
            errors.push(Error::new(at("kind"), ErrorKind::Empty));
        }
        if r.api_version.is_empty() || r.api_version.split('/').count() > 2 {
            errors.push(Error::new(
                at("apiVersion"),
                ErrorKind::Invalid(format!(
                    "expected `version` or `group/version`, got `{}`",
                    r.api_version
                )),
            ));
        }
        if let Some(sel) = &r.label_selector {
            errors.take(
                k8s_selector::LabelSelector::parse(sel)
                    .map_err(|e| Error::new(at("labelSelector"), e)),
            );
        }
        if let Some(sel) = &r.field_selector {
            errors.take(
                k8s_selector::FieldSelector::parse(sel)
                    .map_err(|e| Error::new(at("fieldSelector"), e)),
            );
        }
        if errors.0.len() > before {
            continue;
        }
        let key = informer_key(r);
        match planned.iter_mut().find(|p| p.key == key) {
            Some(p) if p.initial_list != r.initial_list => errors.push(Error::new(
                at("initialList"),
                ErrorKind::Conflict(format!(
                    "`{}` conflicts with `{}` at resources[{}]: both entries share one list+watch",
                    r.initial_list.as_str(),
                    p.initial_list.as_str(),
                    p.index
                )),
            )),
            Some(p) => p.duplicates.push(i),
            None => planned.push(PlannedResource {
                index: i,
                duplicates: Vec::new(),
                key,
                initial_list: r.initial_list,
            }),
        }
    }
    planned
}

/// The sinks, each checked and built; names must be unique.
fn sinks(config: &Config, errors: &mut Errors) -> Vec<CompiledSink> {
    if config.sinks.is_empty() {
        errors.push(Error::new("sinks", ErrorKind::NoneGiven("sink")));
    }
    let ctx = SinkContext {
        cluster: config.cluster.clone(),
        state_dir: config.state.dir.clone(),
    };
    let mut names = HashSet::new();
    let mut built = Vec::new();
    for (i, s) in config.sinks.iter().enumerate() {
        let at = format!("sinks[{i}]");
        if !s.name().is_empty() && !names.insert(s.name()) {
            errors.push(Error::new(
                format!("{at}.name"),
                ErrorKind::Duplicate {
                    what: "sink",
                    name: s.name().to_string(),
                },
            ));
        }
        if let Some(sink) = errors.absorb(s.compile(&ctx).map_err(|e| e.within(&at))) {
            built.push(sink);
        }
    }
    built
}
