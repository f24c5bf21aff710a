//! Shared informers: one list+watch per distinct (kind, namespace, selectors), a local cache,
//! and add / update / delete callbacks to every registered handler.
//!
//! `api` (the requests, typed; each watch parsed ahead on a task of its own, `ahead`) →
//! `machine` (the list/watch protocol as a state machine) → `informer` (cache swap and diff,
//! handlers) over `store` (the compact cache).

mod ahead;
mod api;
mod config;
mod factory;
// `informer::informer` is the shared informer itself; the module is the informer room.
#[allow(clippy::module_inception)]
mod informer;
mod machine;
mod prepare;
mod raw;
mod snapshot;
mod store;
#[cfg(test)]
mod testing;

use std::sync::Arc;

use async_trait::async_trait;
use json_patch::Patch;

use crate::event::changed_by::ManagerEntry;
use crate::event::{Doc, SnapshotMark};

/// Who made a change (see [`crate::event::changed_by`]); `None` when not known.
pub type ChangedBy = Option<Arc<[ManagerEntry]>>;

pub use api::RequestError;
pub use config::{CONNECT_TIMEOUT, ClientError, InitialList, WatchConfig, client};
pub use factory::{InformerError, InformerFactory};
pub use informer::{Held, InformerSettings, InformerStats, Problem, RestartCounts, SharedInformer};
pub use machine::{RestartReason, Verb, WatchError};
pub use raw::{DropManagedFields, KeepAll, ParsePolicy, RawObject, SummarizeManagedFields};
pub use snapshot::SnapshotFilter;
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

tokio::task_local! {
    /// When the watch event being handed to the handlers arrived (set around handler calls).
    static ARRIVAL: std::time::Instant;
}

/// When the watch event being handled arrived: its line was read, not yet parsed (then come
/// transform, cache and diff); `None` outside a watch event (list pages, re-syncs). Handlers
/// call it; delivery latency starts there.
pub fn arrival() -> Option<std::time::Instant> {
    ARRIVAL.try_with(|a| *a).ok()
}

/// Runs `f` (handler calls for one watch event) with [`arrival`] answering `at`.
pub(crate) async fn arrived_at<F: std::future::Future>(at: std::time::Instant, f: F) -> F::Output {
    ARRIVAL.scope(at, f).await
}

/// How an informer learned that an object is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone<'a> {
    /// Its DELETED event: the last known state is the final one, at the deletion's
    /// resourceVersion.
    Seen,
    /// Inferred, its DELETED event never seen (`finalStateUnknown`): it was missing from a
    /// list, or replaced by an object of another uid, whose resourceVersion is `at`. `at` is
    /// newer than the deletion, so newer than every state of the object: a consumer that
    /// orders changes by resourceVersion applies the delete, and one that deduplicates by
    /// (uid, resourceVersion) never takes it for a state it already has.
    Unseen {
        /// The resourceVersion at which the object was found gone.
        at: &'a str,
    },
}

impl Gone<'_> {
    /// The delete was inferred.
    pub fn final_state_unknown(self) -> bool {
        matches!(self, Gone::Unseen { .. })
    }
}

/// Receives an informer's changes, in order, one object at a time.
///
/// Calls are awaited one after the other: a handler that waits (a full sink queue) slows the
/// informer down, which is the backpressure that keeps memory bounded.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// An object appeared. `initial_list`: it comes from the first list of this run.
    async fn on_add(&self, obj: &Arc<Doc>, initial_list: bool);
    /// An object changed; `patch` turns `old` (the last emitted state) into `new`.
    async fn on_update(&self, old: &Arc<Doc>, new: &Arc<Doc>, patch: Patch);
    /// An object is gone; `last_known` is its final (or last seen) state, and `gone` says
    /// how that was learned.
    async fn on_delete(&self, last_known: &Arc<Doc>, gone: Gone<'_>);
    /// A read of the object's current state (the initial list, or a snapshot), not a change;
    /// `mark` tells where it stands in its snapshot. Handlers that do not tell reads apart
    /// see an add.
    async fn on_read(&self, obj: &Arc<Doc>, mark: SnapshotMark, initial_list: bool) {
        let _ = mark;
        self.on_add(obj, initial_list).await;
    }
    /// [`Handler::on_add`] with the writers of the new object, when attributed.
    async fn on_add_by(&self, obj: &Arc<Doc>, initial_list: bool, changed_by: ChangedBy) {
        let _ = changed_by;
        self.on_add(obj, initial_list).await;
    }
    /// [`Handler::on_update`] with the writers of the change, when attributed.
    async fn on_update_by(
        &self,
        old: &Arc<Doc>,
        new: &Arc<Doc>,
        patch: Patch,
        changed_by: ChangedBy,
    ) {
        let _ = changed_by;
        self.on_update(old, new, patch).await;
    }
}

/// An informer that asks nothing of any server, for tests of what it does with its cache.
#[cfg(test)]
pub(crate) fn testing_informer() -> Arc<SharedInformer> {
    use crate::event::transform::{ObjectTransform, TransformConfig};
    let (key, resource) = testing::configmaps();
    let transform = ObjectTransform::new(&TransformConfig::default(), "test").expect("defaults");
    Arc::new(SharedInformer::with_api(
        key,
        resource,
        "configmaps".into(),
        Box::new(testing::Script::default()),
        Arc::new(transform),
        InformerSettings::default(),
    ))
}
