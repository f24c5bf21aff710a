//! [`KubeSim`]: the handle tests hold. Object access through it has exactly
//! the HTTP write semantics (revision bump, watch events).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::config::SimConfig;
use crate::error::{ApiError, Error};
use crate::faults::{Faults, StopMode};
use crate::kinds::{KindId, KindSpec};
use crate::reqlog::RequestRecord;
use crate::server::Shared;

/// A running simulator. Cheap to clone; all clones control the same server.
#[derive(Clone)]
pub struct KubeSim {
    shared: Arc<Shared>,
}

impl KubeSim {
    /// Binds, creates the default namespaces (and seeded pods, if configured) and starts serving.
    pub async fn start(cfg: SimConfig) -> Result<KubeSim, Error> {
        let seed_pods = cfg.seed_pods;
        let sim = KubeSim {
            shared: Shared::new(cfg),
        };
        sim.shared.listen().await?;
        if seed_pods > 0 {
            let c = &sim.shared.cfg;
            crate::loadgen::LoadGen::seed(&sim, seed_pods, c.seed, c.seed_namespaces, c.seed_nodes)
                .map_err(Error::Seed)?;
        }
        Ok(sim)
    }

    /// The bound address (the real port even when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &SimConfig {
        &self.shared.cfg
    }

    /// A kubeconfig pointing at this simulator (context `kubesim`, namespace `default`, no auth).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kubesim\n  cluster:\n    server: {}\ncontexts:\n- name: kubesim\n  context:\n    cluster: kubesim\n    user: kubesim\n    namespace: default\ncurrent-context: kubesim\npreferences: {{}}\nusers:\n- name: kubesim\n  user: {{}}\n",
            self.url()
        )
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    fn kind(&self, api_version: &str, kind: &str) -> Result<KindId, ApiError> {
        self.shared.registry.by_kind(api_version, kind).ok_or_else(|| {
            ApiError::new(404, "NotFound", format!("the server could not find the requested resource (kind {kind} in {api_version} is not served)"))
        })
    }

    /// The served kind with this `apiVersion` and `Kind`, if any.
    pub fn kind_spec(&self, api_version: &str, kind: &str) -> Option<KindSpec> {
        self.shared
            .registry
            .by_kind(api_version, kind)
            .map(|k| self.shared.registry.get(k).spec.clone())
    }

    /// All served kinds (built-in and extra).
    pub fn kinds(&self) -> Vec<KindSpec> {
        self.shared
            .registry
            .kinds()
            .iter()
            .map(|k| k.spec.clone())
            .collect()
    }

    /// URL path of a kind's collection (`/api/v1/namespaces/default/pods`, `/apis/apps/v1/deployments`).
    pub fn collection_path(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
    ) -> Option<String> {
        let spec = self.kind_spec(api_version, kind)?;
        let base = if spec.group.is_empty() {
            format!("/api/{}", spec.version)
        } else {
            format!("/apis/{}/{}", spec.group, spec.version)
        };
        Some(match ns.filter(|_| spec.namespaced) {
            Some(ns) => format!("{base}/namespaces/{ns}/{}", spec.plural),
            None => format!("{base}/{}", spec.plural),
        })
    }

    /// Serves `count` generated objects as `kind`'s list, none of them stored: the `i`-th is
    /// `make(i)` (its JSON, made when a page is served). Only paginated lists (`limit`, then
    /// `continue`) see them, in index order — no watch events, gets or selectors — which
    /// is what a large initial sync needs (1M Pods would take ~25 GB as stored objects).
    /// Streaming lists are refused from now on, so clients fall back to pages.
    pub fn synthesize(
        &self,
        api_version: &str,
        kind: &str,
        count: usize,
        make: impl Fn(usize) -> bytes::Bytes + Send + Sync + 'static,
    ) -> Result<(), ApiError> {
        let k = self.kind(api_version, kind)?;
        self.shared.set_synthetic(
            k,
            crate::server::Synthetic {
                count,
                make: std::sync::Arc::new(make),
            },
        );
        self.shared.set_streaming_lists(false);
        Ok(())
    }

    /// Creates an object (namespace from `metadata.namespace`, `default` if unset).
    pub fn create(&self, api_version: &str, kind: &str, obj: Value) -> Result<Value, ApiError> {
        let k = self.kind(api_version, kind)?;
        Ok(self.shared.store().create(k, None, obj)?.value.clone())
    }

    /// Replaces an object like PUT: `metadata.resourceVersion`, when set, must match (409 otherwise).
    pub fn replace(&self, api_version: &str, kind: &str, obj: Value) -> Result<Value, ApiError> {
        let k = self.kind(api_version, kind)?;
        let info = self.shared.registry.get(k).clone();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ns = if info.spec.namespaced {
            obj.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        let (o, _) = self.shared.store().upsert(k, &ns, &name, |cur| match cur {
            Some(_) => Ok(obj),
            None => Err(ApiError::not_found(
                &info.spec.group,
                &info.spec.plural,
                &name,
            )),
        })?;
        Ok(o.value.clone())
    }

    /// Applies a JSON merge patch like `PATCH` with `application/merge-patch+json`.
    pub fn merge_patch(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Result<Value, ApiError> {
        let k = self.kind(api_version, kind)?;
        let info = self.shared.registry.get(k).clone();
        let (o, _) = self
            .shared
            .store()
            .upsert(k, ns.unwrap_or(""), name, |cur| {
                let mut v = cur
                    .ok_or_else(|| ApiError::not_found(&info.spec.group, &info.spec.plural, name))?
                    .clone();
                crate::patch::merge_patch(&mut v, &patch);
                Ok(v)
            })?;
        Ok(o.value.clone())
    }

    /// Deletes like `DELETE`: returns the deleted object (or the terminating one while finalizers remain).
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let k = self.kind(api_version, kind)?;
        Ok(self
            .shared
            .store()
            .delete(k, ns.unwrap_or(""), name, None, None)?
            .value
            .clone())
    }

    /// One object, if it exists.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let k = self.kind(api_version, kind).ok()?;
        self.shared
            .store()
            .get(k, ns.unwrap_or(""), name)
            .map(|o| o.value.clone())
    }

    /// All objects of a kind in all namespaces, in key order.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let Ok(k) = self.kind(api_version, kind) else {
            return Vec::new();
        };
        self.shared
            .store()
            .all(k, None)
            .1
            .iter()
            .map(|o| o.value.clone())
            .collect()
    }

    /// The newest resourceVersion.
    pub fn current_resource_version(&self) -> u64 {
        self.shared.store().current_rv()
    }

    /// The highest resourceVersion no longer in the history (watches from below it get 410).
    pub fn compacted_resource_version(&self) -> u64 {
        self.shared.store().compacted_rv()
    }

    /// Ends every open watch abruptly (the connection is reset mid-stream).
    pub fn drop_watches(&self) {
        self.shared.drop_watches();
    }

    /// Freezes every open watch without closing it, like a half-open TCP connection a NAT or
    /// a load balancer leaves behind: those streams send nothing more (no event, no bookmark,
    /// no end) for as long as the simulator runs. Watches opened afterwards work normally.
    pub fn freeze_watches(&self) {
        self.shared.freeze_watches();
    }

    /// Serves (`true`, the default) or refuses with 422 (`false`) watches that ask for a
    /// streaming list (`sendInitialEvents`), like a server with the `WatchList` feature off.
    pub fn set_streaming_lists(&self, enabled: bool) {
        self.shared.set_streaming_lists(enabled);
    }

    /// Forgets the event history: watches and continue tokens from older revisions get 410 Expired.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Installs request faults (replacing earlier ones).
    pub fn set_faults(&self, f: Faults) {
        self.shared.set_faults(Some(f));
    }

    /// Removes request faults.
    pub fn clear_faults(&self) {
        self.shared.set_faults(None);
    }

    /// Requests hang (unanswered) until [`Self::resume_answering`].
    pub fn stop_answering(&self) {
        self.stop_answering_with(StopMode::Hang);
    }

    /// Stops answering in the given way ([`StopMode::Hang`] or [`StopMode::Reset`]).
    pub fn stop_answering_with(&self, mode: StopMode) {
        self.shared.stop.send_replace(mode);
    }

    /// Answers again; hung requests proceed.
    pub fn resume_answering(&self) {
        self.shared.stop.send_replace(StopMode::Answering);
    }

    /// Requests handled so far (oldest first).
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared.reqlog.snapshot()
    }

    /// Empties the request log.
    pub fn clear_request_log(&self) {
        self.shared.reqlog.clear();
    }

    /// Closes every connection and listens again on the same port; `keep_state = false` starts
    /// from an empty store (default namespaces only, resourceVersion counting from 1 again).
    pub async fn restart(&self, keep_state: bool) -> Result<(), Error> {
        self.shared.restart(keep_state).await
    }

    /// Stops serving and closes every connection.
    pub async fn shutdown(&self) {
        self.shared.stop_server().await;
    }
}
