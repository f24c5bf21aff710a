//! Preparing an object before it is cached, diffed or emitted, in two parts: what depends only
//! on the object ([`Preparer`]: type meta, the `managedFields` summary, the transforms, the
//! compact JSON) and what depends on the informer's state (which writers it already
//! attributed, kept by the informer in the order changes arrive).
//!
//! The object-local part of a watch's objects runs on the watch's parse tasks, several at once
//! on the runtime's workers ([`super::api`]). The informer handles its changes one at a time,
//! in order; every piece of work taken off that one sequential stage is work the other core
//! can do. Measured with the harness's Kafka section: while the stream's reader parsed and the
//! informer transformed and encoded, two stages in a row of about a core each, other threads
//! (the sink's client library, the broker on a small machine) preempting either one idled the
//! second core; parsing on parallel tasks alone did not help, moving the encoding too did.
//!
//! When the transform needs no tree (it does not redact or reshape), a parse task builds none:
//! [`Preparer::prepare_json`] rewrites the object's JSON from the line's bytes
//! ([`crate::event::recompact`]), summarizing `managedFields` on the way when changes are
//! attributed. The tree path below stays for the transforms that need it and for the objects
//! the rewrite leaves to it.
//!
//! A parse task also does the informer's own work on the object ahead ([`Ahead`]): it packs the
//! JSON for the cache and diffs it against the cached state it starts from. Timed stage by
//! stage on the harness's throughput bursts, the informer's ordered stage was busy about 80 %
//! of the time (the reader waited on it half of its time), and of that, the diff took 39 %,
//! packing 21 % and unpacking the base 11 %. The informer keeps a patch made ahead only if the
//! object's cache entry is still the one it was made from ([`super::store::Store::version`]).
//!
//! The tree a parse task builds also dies on that task: what leaves it is the JSON and what
//! names the object ([`Prepared`]). A tree handed to another worker is freed there, and each
//! of its hundreds of blocks then travels back between the cores through the allocator's
//! cross-thread free lists: profiled (`perf`) in bursts where the agent needed 1.6 times the
//! CPU per event, the allocator and the tree-building parse code took the extra time while
//! byte scanning did not change.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use crate::event::changed_by::Managers;
use crate::event::diff;
use crate::event::object::Ident;
use crate::event::recompact::{Options, recompact};
use crate::event::transform::ObjectTransform;
use json_patch::Patch;

use super::store::{Packed, Store};

/// The object-local part of preparing objects of one resource type.
#[derive(Debug, Clone)]
pub(super) struct Preparer {
    api_version: String,
    kind: String,
    transform: Arc<ObjectTransform>,
    /// The informer's cache, which a watch's prepared objects are packed for and diffed
    /// against ahead of the informer ([`Preparer::look_ahead`]).
    cache: Option<Arc<Store>>,
}

/// An object prepared by a [`Preparer`], without its tree (see the module documentation).
#[derive(Debug)]
pub(super) struct Prepared {
    /// What names the object, transformed (empty fields where it has none).
    pub ident: Ident,
    /// Its compact JSON (`serde_json`, as the cache and the envelope write it).
    pub json: Bytes,
    /// The summary of its `managedFields` before the transforms, when changes are attributed.
    pub managers: Option<Managers>,
    /// The informer's work on it, done ahead on the parse task ([`Preparer::look_ahead`]).
    pub ahead: Option<Box<Ahead>>,
}

/// The informer's work on a watch's object, done on its parse task beside the informer, which
/// does it in order, one object at a time: packing it for the cache, and its patch from the
/// cached state. The patch holds only if the cache entry is still the one it was made from
/// (the informer checks [`Store::version`]): an earlier change of the same object may have
/// been applied in between.
#[derive(Debug)]
pub(super) struct Ahead {
    /// The object packed for the cache (always valid).
    pub packed: Packed,
    /// The [`Store::version`] of the object's entry when the work was done (`None`: there
    /// was none; the object is new unless an earlier change added it since).
    pub version: Option<u64>,
    /// The cached state the next patch starts from and the patch from it to the object,
    /// when there was an entry and its bytes could be diffed.
    pub patch: Option<(Bytes, Patch)>,
}

impl Preparer {
    /// Prepares objects of `api_version`/`kind` with `transform`.
    pub(super) fn new(api_version: &str, kind: &str, transform: Arc<ObjectTransform>) -> Self {
        Self {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            transform,
            cache: None,
        }
    }

    /// The same preparer, doing the informer's work on `cache` ahead ([`Self::look_ahead`]).
    pub(super) fn with_cache(mut self, cache: Arc<Store>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Adds the informer's work on `prepared` done ahead, when there is a cache.
    pub(super) fn look_ahead(&self, mut prepared: Prepared) -> Prepared {
        let Some(cache) = &self.cache else {
            return prepared;
        };
        let key = prepared.ident.cache_key();
        let packed = cache.pack_json(&prepared.json);
        let ahead = match cache.versioned_base_json(&key) {
            Some((base, version)) => Ahead {
                packed,
                version: Some(version),
                patch: diff::diff_json(&base, &prepared.json).map(|p| (base, p)),
            },
            None => Ahead {
                packed,
                version: None,
                patch: None,
            },
        };
        prepared.ahead = Some(Box::new(ahead));
        prepared
    }

    /// `obj` with its type meta, its `managedFields` summary when changes are attributed (taken
    /// before the transforms drop them), then transformed.
    pub(super) fn transform(&self, mut obj: Value) -> (Value, Option<Managers>) {
        self.ensure_type_meta(&mut obj);
        let managers = self
            .transform
            .attributes_changes()
            .then(|| Managers::of(&obj));
        self.transform.apply(&mut obj);
        (obj, managers)
    }

    /// [`Self::transform`], and the result's compact JSON and name; the tree is freed here.
    pub(super) fn prepare(&self, obj: Value) -> Prepared {
        let (value, managers) = self.transform(obj);
        let json = Bytes::from(serde_json::to_vec(&value).expect("a JSON value always serializes"));
        Prepared {
            ident: Ident::of(&value),
            json,
            managers,
            ahead: None,
        }
    }

    /// [`Self::prepare`] from the object's JSON as the API server sent it, without building
    /// its tree, when the transform needs none; `None` when the tree must be built (the
    /// transform needs it, or only the tree can tell how `serde_json` writes these bytes:
    /// see [`recompact`]). The same JSON and name as [`Self::prepare`] of the parsed object.
    pub(super) fn prepare_json(&self, json: &str) -> Option<Prepared> {
        if self.transform.needs_tree() {
            return None;
        }
        let options = Options {
            drop_managed_fields: self.transform.drops_managed_fields(),
            summarize_managed_fields: self.transform.attributes_changes(),
            api_version: &self.api_version,
            kind: &self.kind,
        };
        let r = recompact(json, options)?;
        Some(Prepared {
            ident: r.ident,
            json: Bytes::from(r.json),
            managers: r.managers,
            ahead: None,
        })
    }

    /// API servers omit `apiVersion` and `kind` on list items; envelopes and transforms
    /// (Secret redaction) need them, so they are filled from the resource type.
    fn ensure_type_meta(&self, obj: &mut Value) {
        if let Some(map) = obj.as_object_mut() {
            if !map.contains_key("apiVersion") {
                map.insert("apiVersion".into(), self.api_version.clone().into());
            }
            if !map.contains_key("kind") {
                map.insert("kind".into(), self.kind.clone().into());
            }
        }
    }
}
