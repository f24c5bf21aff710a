//! Shared informers: one list+watch per distinct (kind, namespace, selectors), a local cache,
//! and add / update / delete callbacks to every registered handler.
//!
//! `api` (the requests, typed) → `machine` (the list/watch protocol as a state machine) →
//! `informer` (cache swap and diff, handlers) over `store` (the compact cache).

mod api;
mod config;
mod factory;
// `informer::informer` is the shared informer itself; the module is the informer room.
#[allow(clippy::module_inception)]
mod informer;
mod machine;
mod raw;
mod store;
#[cfg(test)]
mod testing;

use std::sync::Arc;

use async_trait::async_trait;
use json_patch::Patch;
use serde_json::Value;

pub use api::RequestError;
pub use config::{CONNECT_TIMEOUT, ClientError, InitialList, WatchConfig, client};
pub use factory::{InformerError, InformerFactory};
pub use informer::{InformerSettings, InformerStats, Problem, RestartCounts, SharedInformer};
pub use machine::{RestartReason, Verb, WatchError};
pub use raw::{DropManagedFields, KeepAll, ParsePolicy, RawObject};
pub use store::{Entry, Store};

/// Identifies a shared informer: two registrations with equal keys share one list+watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InformerKey {
    /// `v1`, `apps/v1`, ...
    pub api_version: String,
    /// Kind, e.g. `Pod`.
    pub kind: String,
    /// Namespace scope; `None` = all namespaces.
    pub namespace: Option<String>,
    /// Label selector sent to the API server.
    pub label_selector: Option<String>,
    /// Field selector sent to the API server.
    pub field_selector: Option<String>,
}

impl From<&crate::config::ResourceConfig> for InformerKey {
    /// The informer a `resources[]` entry describes (empty selectors count as none).
    fn from(r: &crate::config::ResourceConfig) -> Self {
        InformerKey {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: r.namespace.clone(),
            label_selector: r.label_selector.clone().filter(|s| !s.is_empty()),
            field_selector: r.field_selector.clone().filter(|s| !s.is_empty()),
        }
    }
}

impl InformerKey {
    /// Entries that share an informer must agree on how it lists: the index of the first
    /// one that does not, with the reason.
    pub fn check_initial_lists(
        resources: &[crate::config::ResourceConfig],
    ) -> Result<(), (usize, String)> {
        let mut seen: std::collections::HashMap<InformerKey, (usize, InitialList)> =
            std::collections::HashMap::new();
        for (i, r) in resources.iter().enumerate() {
            match seen.entry(InformerKey::from(r)) {
                std::collections::hash_map::Entry::Occupied(e) if e.get().1 != r.initial_list => {
                    let (first, mode) = *e.get();
                    return Err((
                        i,
                        format!(
                            "`{}` conflicts with `{}` in resources[{first}]: both entries share one list+watch",
                            r.initial_list.as_str(),
                            mode.as_str()
                        ),
                    ));
                }
                std::collections::hash_map::Entry::Occupied(_) => {}
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert((i, r.initial_list));
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for InformerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.api_version, self.kind)?;
        if let Some(ns) = &self.namespace {
            write!(f, " ns={ns}")?;
        }
        if let Some(l) = &self.label_selector {
            write!(f, " labels={l}")?;
        }
        if let Some(fs) = &self.field_selector {
            write!(f, " fields={fs}")?;
        }
        Ok(())
    }
}

/// Receives an informer's changes, in order, one object at a time.
///
/// Calls are awaited one after the other: a handler that waits (a full sink queue) slows the
/// informer down, which is the backpressure that keeps memory bounded.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// An object appeared. `initial_list`: it comes from the first list of this run.
    async fn on_add(&self, obj: &Arc<Value>, initial_list: bool);
    /// An object changed; `patch` turns `old` (the last emitted state) into `new`.
    async fn on_update(&self, old: &Arc<Value>, new: &Arc<Value>, patch: Patch);
    /// An object is gone; `last_known` is its final (or last seen) state.
    /// `final_state_unknown`: inferred from a re-list, the delete itself was not seen.
    async fn on_delete(&self, last_known: &Arc<Value>, final_state_unknown: bool);
}
