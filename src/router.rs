//! Routes: which sinks get which events, reshaped how.
//!
//! Drop routes are evaluated first: an event any of them matches goes nowhere. Then every
//! matching forward route sends the event to its sinks; a sink gets an event once, shaped by
//! the first matching route that names it. With no routes configured every event goes to
//! every sink; with routes, an event no route matches goes nowhere.
//!
//! The router only decides (which sinks, shaped how); it holds no queue and no lock, so
//! deciding never waits. Delivering the decision is [`crate::pipeline`]'s job.

use std::collections::BTreeMap;
use std::sync::Arc;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Error, ErrorKind, Errors, decode};
use crate::event::pointer::{PointerGlob, segment_matches};
use crate::event::transform::{Shape, ShapeConfig, globs};
use crate::event::{Doc, Envelope, Op, diff};
use crate::informer::SharedInformer;

/// One entry of `routes:`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteConfig {
    /// A name for logs and metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Drop matching events instead of forwarding them (drop routes are evaluated first).
    #[serde(default)]
    pub drop: bool,
    /// apiVersion globs (`apps/*`); empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_versions: Vec<String>,
    /// Kind globs (`Deploy*`); empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// Namespace filters.
    #[serde(default)]
    pub namespaces: NamespaceMatch,
    /// Ops (`add`, `update`, `delete`); empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<OpName>,
    /// Conditions on the object (for deletes, its last state); all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
    /// Updates only: forward only when the patch touches one of these pointer globs
    /// (a change at, above or below the path counts). Adds and deletes pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// Sinks that get matching events (forward routes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<String>,
    /// Reshaping for this route's sinks (decoded by [`RouteConfig::decode`]: its keys are
    /// split between [`RouteTransforms`] and the shared [`ShapeConfig`]).
    #[serde(default, skip_deserializing)]
    pub transforms: RouteTransforms,
}

impl RouteConfig {
    /// Decodes one `routes[]` entry at key path `at`.
    ///
    /// # Errors
    /// The first problem, at its full key path.
    pub fn decode(value: &figment::value::Value, at: &str) -> Result<Self, Error> {
        let mut dict = decode::as_dict(value, at)?.clone();
        let transforms = dict.remove("transforms");
        let mut route: RouteConfig = decode::decode(
            &figment::value::Value::Dict(figment::value::Tag::Default, dict),
            at,
        )?;
        if let Some(t) = transforms {
            let at = crate::config::join(at, "transforms");
            let (shape, mut own): (ShapeConfig, RouteTransforms) =
                decode::decode_split(&t, &at, &[])?;
            own.shape = shape;
            route.transforms = own;
        }
        Ok(route)
    }
}

/// `routes[].namespaces`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceMatch {
    /// Namespace globs to include; empty = any. Cluster-scoped objects never match a
    /// non-empty include list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Namespace globs to exclude.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Label selector on the Namespace object (needs a Namespace informer, started
    /// automatically). Cluster-scoped objects never match it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// An op name in a route.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OpName {
    /// `add`.
    Add,
    /// `update`.
    Update,
    /// `delete`.
    Delete,
}

impl OpName {
    fn matches(self, op: Op) -> bool {
        matches!(
            (self, op),
            (OpName::Add, Op::Add) | (OpName::Update, Op::Update) | (OpName::Delete, Op::Delete)
        )
    }
}

/// A condition on a JSON Pointer of the object; exactly one test.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    /// A plain JSON Pointer (`/spec/replicas`).
    pub path: String,
    /// The value there equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    /// Something is (true) or is not (false) there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    /// The value there, a string (or a number/bool as text), matches this regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
}

/// `routes[].transforms`: the shared [`ShapeConfig`] keys, plus `ignorePaths`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteTransforms {
    /// Updates touching only these pointer globs are not sent by this route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_paths: Vec<String>,
    /// `dropPaths`, `keepPaths`, `redact`, for this route's sinks only.
    #[serde(flatten, skip_deserializing)]
    pub shape: ShapeConfig,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> Error {
    Error::new(path, ErrorKind::Conflict(message.into()))
}

enum Test {
    Equals(Value),
    Exists(bool),
    Matches(Regex),
}

/// Compiles `when[i]`.
fn condition(c: &Condition, i: usize) -> Result<Test, Error> {
    if !c.path.starts_with('/') && !c.path.is_empty() {
        return Err(err(
            format!("when[{i}].path"),
            "a JSON Pointer must start with `/`",
        ));
    }
    let tests = [c.equals.is_some(), c.exists.is_some(), c.matches.is_some()];
    if tests.iter().filter(|t| **t).count() != 1 {
        return Err(err(
            format!("when[{i}]"),
            "exactly one of `equals`, `exists`, `matches` is required",
        ));
    }
    Ok(if let Some(v) = &c.equals {
        Test::Equals(v.clone())
    } else if let Some(e) = c.exists {
        Test::Exists(e)
    } else {
        let re = c.matches.as_deref().unwrap_or_default();
        Test::Matches(Regex::new(re).map_err(|e| Error::new(format!("when[{i}].matches"), e))?)
    })
}

/// A compiled route.
pub struct Route {
    name: String,
    drop: bool,
    api_versions: Vec<String>,
    kinds: Vec<String>,
    ns_include: Vec<String>,
    ns_exclude: Vec<String>,
    ns_selector: Option<k8s_selector::LabelSelector>,
    ops: Vec<OpName>,
    when: Vec<(String, Test)>,
    changed: Vec<PointerGlob>,
    ignore: Vec<PointerGlob>,
    shape: Shape,
    /// Indices into the router's sinks.
    sinks: Vec<usize>,
}

impl Route {
    /// Compiles `config`; `sink_names` resolves sink names to indices.
    ///
    /// # Errors
    /// Every problem found, with key paths below the route entry.
    pub fn compile(
        config: &RouteConfig,
        index: usize,
        sink_names: &[String],
        redaction_key: &[u8],
    ) -> Result<Route, Errors> {
        let mut errors = Errors::default();
        let mut when = Vec::new();
        for (i, c) in config.when.iter().enumerate() {
            if let Some(test) = errors.take(condition(c, i)) {
                when.push((c.path.clone(), test));
            }
        }
        let mut sinks = Vec::new();
        for (i, s) in config.sinks.iter().enumerate() {
            match sink_names.iter().position(|n| n == s) {
                Some(idx) => sinks.push(idx),
                None => errors.push(Error::new(
                    format!("sinks[{i}]"),
                    ErrorKind::UnknownSink {
                        name: s.clone(),
                        known: sink_names.to_vec(),
                    },
                )),
            }
        }
        if !config.drop && config.sinks.is_empty() {
            errors.push(err(
                "sinks",
                "a forwarding route needs at least one sink (or `drop: true`)",
            ));
        }
        if config.drop && !config.sinks.is_empty() {
            errors.push(err(
                "sinks",
                "a drop route forwards nowhere; remove `sinks` or `drop`",
            ));
        }
        let ns_selector = config.namespaces.selector.as_ref().and_then(|s| {
            errors.take(
                k8s_selector::LabelSelector::parse(s)
                    .map_err(|e| Error::new("namespaces.selector", e)),
            )
        });
        let t = &config.transforms;
        let shape = errors.absorb(
            t.shape
                .compile(redaction_key)
                .map_err(|e| e.within("transforms")),
        );
        let changed = globs("changed", &config.changed, &mut errors);
        let ignore = globs("transforms.ignorePaths", &t.ignore_paths, &mut errors);
        errors.finish(|| Route {
            name: config
                .name
                .clone()
                .unwrap_or_else(|| format!("routes[{index}]")),
            drop: config.drop,
            api_versions: config.api_versions.clone(),
            kinds: config.kinds.clone(),
            ns_include: config.namespaces.include.clone(),
            ns_exclude: config.namespaces.exclude.clone(),
            ns_selector,
            ops: config.ops.clone(),
            when,
            changed,
            ignore,
            shape: shape.unwrap_or_default(),
            sinks,
        })
    }

    /// Keys this route's redaction hashes with `key` (resolved at start).
    pub fn set_redaction_key(&mut self, key: &[u8]) {
        self.shape.set_key(key);
    }

    /// True when the route needs Namespace labels.
    pub fn needs_namespaces(&self) -> bool {
        self.ns_selector.is_some()
    }

    /// Everything but the state- and diff-dependent tests: apiVersion, kind, namespace, op.
    fn matches_static(&self, e: &Envelope, namespaces: Option<&SharedInformer>) -> bool {
        let any = |globs: &[String], s: &str| globs.iter().any(|g| segment_matches(g, s));
        if !self.api_versions.is_empty() && !any(&self.api_versions, &e.api_version) {
            return false;
        }
        if !self.kinds.is_empty() && !any(&self.kinds, &e.kind) {
            return false;
        }
        match &e.namespace {
            Some(ns) => {
                if !self.ns_include.is_empty() && !any(&self.ns_include, ns) {
                    return false;
                }
                if any(&self.ns_exclude, ns) {
                    return false;
                }
                if let Some(sel) = &self.ns_selector {
                    let labels = namespaces
                        .and_then(|i| i.store().get(ns))
                        .map(|entry| entry.current["metadata"]["labels"].clone())
                        .unwrap_or(Value::Null);
                    if !sel.matches_object(&serde_json::json!({"metadata": {"labels": labels}})) {
                        return false;
                    }
                }
            }
            None => {
                if !self.ns_include.is_empty() || self.ns_selector.is_some() {
                    return false;
                }
            }
        }
        self.ops.is_empty() || self.ops.iter().any(|o| o.matches(e.op))
    }

    /// The tests on the object's state (`when`) and on the change (`changed`, ignore paths).
    fn matches_content(&self, e: &Envelope) -> bool {
        for (path, test) in &self.when {
            // Read from the object's JSON when its tree was never built (a watched object).
            let at = e.object.lookup(path);
            let at = at.as_deref();
            let ok = match test {
                Test::Equals(v) => at == Some(v),
                Test::Exists(want) => at.is_some_and(|v| !v.is_null()) == *want,
                Test::Matches(re) => match at {
                    Some(Value::String(s)) => re.is_match(s),
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => re.is_match(&v.to_string()),
                    _ => false,
                },
            };
            if !ok {
                return false;
            }
        }
        if e.op == Op::Update
            && let Some(patch) = &e.patch
        {
            if !self.changed.is_empty() {
                let touched = patch.0.iter().any(|op| {
                    let p = diff::op_path(op);
                    self.changed.iter().any(|g| g.overlaps(&p))
                });
                if !touched {
                    return false;
                }
            }
            if !self.ignore.is_empty() && diff::only_ignored_changes(patch, &self.ignore) {
                return false;
            }
        }
        true
    }

    fn matches(&self, e: &Envelope, namespaces: Option<&SharedInformer>, forced: bool) -> bool {
        self.matches_static(e, namespaces) && (forced || self.matches_content(e))
    }

    /// The event as this route's sinks get it; `None` when the reshaped update changes
    /// nothing but ignored paths (`ignore`: the global ignore paths), unless `forced`.
    fn reshape(
        &self,
        e: &Arc<Envelope>,
        ignore: &[PointerGlob],
        forced: bool,
    ) -> Option<Arc<Envelope>> {
        if self.shape.is_identity() {
            return Some(e.clone());
        }
        let mut object = Value::clone(&e.object);
        self.shape.apply(&mut object);
        let mut old = e.old.as_ref().map(|o| Value::clone(o));
        if let Some(o) = old.as_mut() {
            self.shape.apply(o);
        }
        let patch = match (&old, e.op) {
            (Some(o), Op::Update) => {
                let p = diff::diff(o, &object);
                if !forced
                    && (diff::only_ignored_changes(&p, ignore)
                        || (!self.ignore.is_empty()
                            && diff::only_ignored_changes(&p, &self.ignore)))
                {
                    return None;
                }
                Some(p)
            }
            _ => None,
        };
        let mut shaped = e.rederive(e.op, old.map(|o| Doc::new(Arc::new(o))), patch);
        shaped.object = Doc::new(Arc::new(object));
        shaped.initial_list = e.initial_list;
        Some(Arc::new(shaped))
    }
}

/// Decides which sinks get an event, and in which shape.
pub struct Router {
    /// How many sinks there are (routes name them by index).
    sinks: usize,
    routes: Vec<Route>,
    /// The global `transforms.ignorePaths`, applied to reshaped updates too.
    ignore: Vec<PointerGlob>,
    namespaces: Option<Arc<SharedInformer>>,
}

impl Router {
    /// A router over `sinks` sinks and the compiled routes.
    pub fn new(
        sinks: usize,
        routes: Vec<Route>,
        ignore: Vec<PointerGlob>,
        namespaces: Option<Arc<SharedInformer>>,
    ) -> Self {
        Self {
            sinks,
            routes,
            ignore,
            namespaces,
        }
    }

    /// How many sinks the router routes to.
    pub fn sinks(&self) -> usize {
        self.sinks
    }

    /// The global `transforms.ignorePaths`: a change touching only these is no change.
    pub fn ignore(&self) -> &[PointerGlob] {
        &self.ignore
    }

    /// The sinks `event` goes to (ascending), each with the event as that sink gets it.
    pub fn route(&self, event: &Arc<Envelope>) -> Vec<(usize, Arc<Envelope>)> {
        self.route_to(event, &|_| true, false)
    }

    /// As [`Router::route`], among the sinks `only` accepts. `forced`: the event re-sends an
    /// object's current state to sinks that may have missed a change of it (a crash with the
    /// change in flight), so only what a route says about the object and the op counts —
    /// apiVersion, kind, namespace, op — not what it says about the change or the state
    /// (`changed`, `when`, ignore paths), which were judged against a state the sink may not have.
    pub fn route_to(
        &self,
        event: &Arc<Envelope>,
        only: &dyn Fn(usize) -> bool,
        forced: bool,
    ) -> Vec<(usize, Arc<Envelope>)> {
        if self.routes.is_empty() {
            return (0..self.sinks)
                .filter(|&s| only(s))
                .map(|s| (s, event.clone()))
                .collect();
        }
        let ns = self.namespaces.as_deref();
        // Drop routes are judged whole even for a forced event: they say what must never go.
        if let Some(r) = self
            .routes
            .iter()
            .find(|r| r.drop && r.matches(event, ns, false))
        {
            tracing::trace!(route = %r.name, uid = %event.uid, "dropped by route");
            return Vec::new();
        }
        let mut chosen: BTreeMap<usize, Arc<Envelope>> = BTreeMap::new();
        for route in self.routes.iter().filter(|r| !r.drop) {
            let wanted = |s: &usize| only(*s) && !chosen.contains_key(s);
            if !route.sinks.iter().any(wanted) || !route.matches(event, ns, forced) {
                continue;
            }
            let Some(shaped) = route.reshape(event, &self.ignore, forced) else {
                continue;
            };
            for &s in &route.sinks {
                if only(s) {
                    chosen.entry(s).or_insert_with(|| shaped.clone());
                }
            }
        }
        chosen.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::event::object::Ident;
    use crate::event::{EnvelopeBuilder, Op};

    #[test]
    fn when_conditions_read_a_watched_object_from_its_json_without_building_its_tree() {
        let config: RouteConfig = serde_yaml_ng::from_str(
            "sinks: [lake]\nwhen:\n  - {path: /spec/replicas, equals: 3}\n  - {path: /metadata/labels/app~1tier, matches: '^fr'}\n  - {path: /status/gone, exists: false}\n",
        )
        .unwrap();
        let route = Route::compile(&config, 0, &["lake".to_string()], b"k").unwrap();
        let event = |replicas: u32| {
            let v = json!({"metadata": {"name": "web", "namespace": "shop",
                "labels": {"app/tier": "front"}}, "spec": {"replicas": replicas}, "status": {}});
            let mut e = EnvelopeBuilder::for_test("apps/v1", "Deployment").build(
                Op::Add,
                Arc::new(json!({})),
                None,
                None,
                Instant::now(),
            );
            // As the informer hands a watched object over: its JSON and its name.
            e.object = Doc::named(Bytes::from(serde_json::to_vec(&v).unwrap()), Ident::of(&v));
            e
        };
        let (three, two) = (event(3), event(2));
        assert!(route.matches_content(&three));
        assert!(!route.matches_content(&two), "replicas is 2");
        assert!(!three.object.has_tree() && !two.object.has_tree());
    }
}
