//! Hands out one [`SharedInformer`] per [`InformerKey`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kube::core::GroupVersionKind;
use kube::{Api, Client};

use super::{InformerKey, RawObject, SharedInformer};
use crate::event::transform::ObjectTransform;

/// Why an informer could not be created.
#[derive(Debug, thiserror::Error)]
pub enum InformerError {
    /// The API server does not serve this kind (or discovery failed).
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
}

/// Creates informers on demand and shares them: registering the same key twice returns the
/// same informer, so the API server sees one list+watch however many consumers there are.
pub struct InformerFactory {
    client: Client,
    transform: Arc<ObjectTransform>,
    informers: Mutex<BTreeMap<InformerKey, Arc<SharedInformer>>>,
}

impl InformerFactory {
    /// A factory whose informers apply `transform` (made specific to each informer's resource
    /// by [`ObjectTransform::for_resource`]) to every object before caching it.
    pub fn new(client: Client, transform: Arc<ObjectTransform>) -> Self {
        Self {
            client,
            transform,
            informers: Mutex::new(BTreeMap::new()),
        }
    }

    /// The shared informer for `key`, created (not started) on first request.
    ///
    /// # Errors
    /// [`InformerError::UnknownKind`] when discovery cannot resolve the kind.
    pub async fn informer(&self, key: &InformerKey) -> Result<Arc<SharedInformer>, InformerError> {
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
            .map_err(|source| InformerError::UnknownKind {
                api_version: key.api_version.clone(),
                kind: key.kind.clone(),
                source,
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
        // Whether objects hold credentials is decided here, by the resource discovery
        // resolved, never by each object's own `kind`.
        let transform = Arc::new(self.transform.for_resource(&resource.group, &resource.kind));
        let mut informers = self.informers.lock().expect("informers lock");
        // Another caller may have raced us through discovery; keep the first.
        let informer = informers
            .entry(key.clone())
            .or_insert_with(|| Arc::new(SharedInformer::new(key.clone(), resource, api, transform)))
            .clone();
        Ok(informer)
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
