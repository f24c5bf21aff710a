//! Hands out one [`SharedInformer`] per [`InformerKey`], resolving its kind with the API
//! server first (discovery), and waiting out an API server that cannot be reached yet.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use kube::core::GroupVersionKind;
use kube::{Api, Client};
use tracing::{info, warn};

use super::config::{InitialList, WatchConfig};
use super::informer::InformerSettings;
use super::{InformerKey, RawObject, SharedInformer};
use crate::backoff::BackoffPolicy;
use crate::event::transform::ObjectTransform;

/// Why an informer could not be created.
#[derive(Debug, thiserror::Error)]
pub enum InformerError {
    /// The API server does not serve this kind: a configuration error.
    #[error("the API server does not serve {api_version} {kind}: {source}")]
    UnknownKind {
        /// Requested apiVersion.
        api_version: String,
        /// Requested kind.
        kind: String,
        /// What discovery answered.
        #[source]
        source: kube::Error,
    },
    /// A namespace was given for a cluster-scoped kind.
    #[error("{kind} is cluster-scoped; `namespace` cannot be set")]
    NamespaceOnClusterScoped {
        /// The kind.
        kind: String,
    },
    /// The API server could not be asked (unreachable, failing, or refusing our
    /// credentials): not a configuration error. [`InformerFactory::informer`] retries it;
    /// only [`InformerFactory::try_informer`] returns it.
    #[error(
        "cannot ask the API server about {api_version} {kind}: {}",
        super::api::chain(source)
    )]
    Unreachable {
        /// Requested apiVersion.
        api_version: String,
        /// Requested kind.
        kind: String,
        /// What went wrong.
        #[source]
        source: kube::Error,
    },
}

/// Creates informers on demand and shares them: registering the same key twice returns the
/// same informer, so the API server sees one list+watch however many consumers there are.
pub struct InformerFactory {
    client: Client,
    transform: Arc<ObjectTransform>,
    watch: WatchConfig,
    /// `resources[].initialList` by informer key (absent: `auto`).
    initial_lists: HashMap<InformerKey, InitialList>,
    informers: Mutex<BTreeMap<InformerKey, Arc<SharedInformer>>>,
    /// Kinds still waiting for the API server, with the last reason (for `/readyz`).
    pending: Mutex<BTreeMap<InformerKey, String>>,
}

impl InformerFactory {
    /// A factory whose informers apply `transform` (made specific to each informer's resource
    /// by [`ObjectTransform::for_resource`]) to every object before caching it.
    pub fn new(client: Client, transform: Arc<ObjectTransform>) -> Self {
        Self {
            client,
            transform,
            watch: WatchConfig::default(),
            initial_lists: HashMap::new(),
            informers: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(BTreeMap::new()),
        }
    }

    /// Informers follow `watch`, and list as `initial_lists` says for their key (`auto`
    /// for keys it does not name).
    pub fn configure(
        mut self,
        watch: &WatchConfig,
        initial_lists: impl IntoIterator<Item = (InformerKey, InitialList)>,
    ) -> Self {
        self.watch = watch.clone();
        self.initial_lists = initial_lists.into_iter().collect();
        self
    }

    /// The shared informer for `key`, created (not started) on first request. An API server
    /// that cannot be reached (or answers 5xx, 429, 401/403) is asked again with backoff,
    /// for as long as it takes; [`InformerFactory::pending`] says why meanwhile.
    ///
    /// # Errors
    /// [`InformerError::UnknownKind`] when the server does not serve the kind,
    /// [`InformerError::NamespaceOnClusterScoped`] for a namespace on a cluster-scoped kind.
    pub async fn informer(&self, key: &InformerKey) -> Result<Arc<SharedInformer>, InformerError> {
        let mut backoff = BackoffPolicy::INFORMER.start();
        let mut forbidden = BackoffPolicy::FORBIDDEN.start();
        loop {
            match self.try_informer(key).await {
                Err(e @ InformerError::Unreachable { .. }) => {
                    let slow = matches!(&e, InformerError::Unreachable { source: kube::Error::Api(s), .. }
                        if s.code == 401 || s.code == 403);
                    let delay = if slow {
                        forbidden.next_delay()
                    } else {
                        backoff.next_delay()
                    };
                    warn!(informer = %key, error = %e, retry_in = ?delay,
                        "the API server cannot be asked yet; retrying (not ready meanwhile)");
                    self.pending
                        .lock()
                        .expect("pending lock")
                        .insert(key.clone(), e.to_string());
                    tokio::time::sleep(delay).await;
                }
                other => {
                    if self
                        .pending
                        .lock()
                        .expect("pending lock")
                        .remove(key)
                        .is_some()
                        && other.is_ok()
                    {
                        info!(informer = %key, "the API server answers; kind resolved");
                    }
                    return other;
                }
            }
        }
    }

    /// As [`InformerFactory::informer`], asking the API server once.
    ///
    /// # Errors
    /// As `informer`, and [`InformerError::Unreachable`] when the server could not be asked.
    pub async fn try_informer(
        &self,
        key: &InformerKey,
    ) -> Result<Arc<SharedInformer>, InformerError> {
        if let Some(existing) = self.informers.lock().expect("informers lock").get(key) {
            return Ok(existing.clone());
        }
        let (group, version) = match key.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", key.api_version.as_str()),
        };
        let gvk = GroupVersionKind::gvk(group, version, &key.kind);
        let (resource, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|source| {
                let (api_version, kind) = (key.api_version.clone(), key.kind.clone());
                if not_served(&source) {
                    InformerError::UnknownKind {
                        api_version,
                        kind,
                        source,
                    }
                } else {
                    InformerError::Unreachable {
                        api_version,
                        kind,
                        source,
                    }
                }
            })?;
        let namespaced = caps.scope == kube::discovery::Scope::Namespaced;
        let api = match (&key.namespace, namespaced) {
            (Some(ns), true) => {
                Api::<RawObject>::namespaced_with(self.client.clone(), ns, &resource)
            }
            (Some(_), false) => {
                return Err(InformerError::NamespaceOnClusterScoped {
                    kind: key.kind.clone(),
                });
            }
            (None, _) => Api::<RawObject>::all_with(self.client.clone(), &resource),
        };
        let settings = InformerSettings {
            idle_timeout: self.watch.idle_timeout,
            initial_list: self.initial_lists.get(key).copied().unwrap_or_default(),
        };
        // Whether objects hold credentials is decided here, by the resource discovery
        // resolved, never by each object's own `kind`.
        let transform = Arc::new(self.transform.for_resource(&resource.group, &resource.kind));
        let mut informers = self.informers.lock().expect("informers lock");
        // Another caller may have raced us through discovery; keep the first.
        let informer = informers
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(SharedInformer::new(
                    key.clone(),
                    resource,
                    namespaced,
                    api,
                    transform,
                    settings,
                ))
            })
            .clone();
        Ok(informer)
    }

    /// Why kinds are still unresolved: one line per kind waiting for the API server.
    pub fn pending(&self) -> Vec<String> {
        self.pending
            .lock()
            .expect("pending lock")
            .iter()
            .map(|(key, why)| format!("informer {key} is waiting for the API server: {why}"))
            .collect()
    }

    /// Every informer created so far.
    pub fn informers(&self) -> Vec<Arc<SharedInformer>> {
        self.informers
            .lock()
            .expect("informers lock")
            .values()
            .cloned()
            .collect()
    }

    /// Starts every informer.
    pub fn start_all(&self) {
        for i in self.informers() {
            i.start();
        }
    }

    /// Stops every informer and waits for their loops to end.
    pub async fn stop_all(&self) {
        for i in self.informers() {
            i.stop().await;
        }
    }
}

/// Discovery's answer means "not served" (a configuration error), not "could not ask".
fn not_served(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 404,
        kube::Error::Discovery(_) => true,
        _ => false,
    }
}
