//! The change-event envelope: one JSON object per change. A public contract — see the README
//! section "Event envelope" before changing anything here.

use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use json_patch::Patch;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::changed_by::ManagerEntry;
use super::doc::Doc;

/// What happened to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// The object appeared (or was listed for the first time).
    Add,
    /// The object changed; the envelope carries a patch.
    Update,
    /// The object is gone; `object` is its last known state.
    Delete,
}

impl Op {
    /// `add`, `update` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// Where a read stands in a snapshot: the initial list of a resource, or a snapshot asked for
/// on the ops server (`POST /snapshot`). Debezium's `source.snapshot` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMark {
    /// The first read of the snapshot of one resource.
    First,
    /// A read between the first and the last.
    True,
    /// The last read of the snapshot of one resource (also when it is the only one).
    Last,
}

impl SnapshotMark {
    /// The mark of read `index` of a snapshot whose last read is `last`.
    pub fn at(index: usize, last: usize) -> Self {
        match index {
            i if i == last => SnapshotMark::Last,
            0 => SnapshotMark::First,
            _ => SnapshotMark::True,
        }
    }

    /// `first`, `true` or `last`.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMark::First => "first",
            SnapshotMark::True => "true",
            SnapshotMark::Last => "last",
        }
    }
}

/// One change of one object, as sinks receive it.
///
/// Built once per change and shared (`Arc`) by every sink it is routed to; the JSON encoding
/// is computed once, on first use.
#[derive(Debug)]
pub struct Envelope {
    /// UUID v7: time-ordered, unique per change.
    pub id: Uuid,
    /// What happened.
    pub op: Op,
    /// When the agent saw the change (RFC 3339).
    pub time: SystemTime,
    /// `cluster` from the config.
    pub cluster: Arc<str>,
    /// The object's `apiVersion`.
    pub api_version: Arc<str>,
    /// The object's kind.
    pub kind: Arc<str>,
    /// The resource's plural name (URL path segment); not serialized.
    pub plural: Arc<str>,
    /// The informer this change came from (its key); where delivered state is filed.
    pub source: Arc<str>,
    /// Namespace; `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`: the Kafka key, and with `resource_version` the deduplication key.
    pub uid: String,
    /// `metadata.resourceVersion` of `object`.
    pub resource_version: String,
    /// The object after the change (for deletes, the last known state), transformed.
    pub object: Arc<Doc>,
    /// For updates: the RFC 6902 patch from the previously emitted object of this uid.
    pub patch: Option<Patch>,
    /// The previous object. Always kept for updates (text output, coalescing); serialized
    /// only when `include_old` is set.
    pub old: Option<Arc<Doc>>,
    /// Serialize `old`.
    pub include_old: bool,
    /// The add comes from the first list of this run.
    pub initial_list: bool,
    /// A delete the agent inferred (the object vanished while the watch was down).
    pub final_state_unknown: bool,
    /// Set on reads of current state (the initial list, an on-demand snapshot): the add is
    /// a snapshot read, and where it stands in its snapshot.
    pub snapshot: Option<SnapshotMark>,
    /// Who made the change (managers whose `managedFields` entry is new or advanced);
    /// `None` when not attributed (reads, deletes, `transforms.changedBy: false`).
    pub changed_by: Option<Arc<[ManagerEntry]>>,
    /// When the change arrived from the API server (end-to-end latency starts here).
    pub observed: Instant,
    encoded: OnceLock<Bytes>,
}

/// The wire form's fields before `object`: field order and names are the contract. The
/// object and the previous state are written from their compact JSON (the cache's encoding,
/// when it made one), so the envelope never serializes an object tree the cache already did.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Head<'a> {
    id: &'a Uuid,
    op: Op,
    time: String,
    cluster: &'a str,
    api_version: &'a str,
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    name: &'a str,
    uid: &'a str,
    resource_version: &'a str,
}

/// The wire form's fields after `old`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Tail<'a> {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    initial_list: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    final_state_unknown: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<SnapshotMark>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changed_by: Option<&'a [ManagerEntry]>,
}

/// Appends `,"name":` and `json` to an object being written.
fn member(out: &mut Vec<u8>, name: &str, json: &[u8]) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(json);
}

impl Envelope {
    /// The envelope as one JSON object (no trailing newline), encoded once.
    pub fn to_json(&self) -> &Bytes {
        self.encoded.get_or_init(|| {
            let head = Head {
                id: &self.id,
                op: self.op,
                time: rfc3339(self.time),
                cluster: &self.cluster,
                api_version: &self.api_version,
                kind: &self.kind,
                namespace: self.namespace.as_deref(),
                name: &self.name,
                uid: &self.uid,
                resource_version: &self.resource_version,
            };
            let object = self.object.json();
            let mut out = Vec::with_capacity(object.len() + 512);
            serde_json::to_writer(&mut out, &head).expect("the head always serializes");
            out.pop(); // its closing brace: more members follow
            member(&mut out, "object", object);
            if let Some(patch) = &self.patch {
                let patch = serde_json::to_vec(patch).expect("a patch always serializes");
                member(&mut out, "patch", &patch);
            }
            if let Some(old) = self.old.as_ref().filter(|_| self.include_old) {
                member(&mut out, "old", old.json());
            }
            let tail = Tail {
                initial_list: self.initial_list,
                final_state_unknown: self.final_state_unknown,
                snapshot: self.snapshot,
                changed_by: self.changed_by.as_deref(),
            };
            let tail = serde_json::to_vec(&tail).expect("the tail always serializes");
            // `{}` when every member is left out; else its members follow ours.
            if tail.len() > 2 {
                out.push(b',');
                out.extend_from_slice(&tail[1..tail.len() - 1]);
            }
            out.push(b'}');
            Bytes::from(out)
        })
    }

    /// The API group (`""` for the core group), for topic templates and CloudEvents.
    pub fn group(&self) -> &str {
        self.api_version
            .split_once('/')
            .map(|(g, _)| g)
            .unwrap_or("")
    }

    /// The time as RFC 3339 with milliseconds.
    pub fn time_rfc3339(&self) -> String {
        rfc3339(self.time)
    }

    /// True for a read of current state rather than a change: an add of the initial list or
    /// of a snapshot (Debezium's `r`).
    pub fn is_read(&self) -> bool {
        self.op == Op::Add && (self.snapshot.is_some() || self.initial_list)
    }

    /// Lets go of the trees of `object` and `old` when `e` is the only handle of the envelope and
    /// of each state, and each state is known as JSON too (see [`Doc::release_tree`]).
    pub fn release_trees(e: &mut Arc<Envelope>) {
        if let Some(e) = Arc::get_mut(e) {
            Doc::release_tree(&mut e.object);
            if let Some(old) = &mut e.old {
                Doc::release_tree(old);
            }
        }
    }

    /// `namespace/name` or `name`.
    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// A new change of the same object with another op, base and patch (coalescing);
    /// identity, object, id and times are taken from `self`.
    pub fn rederive(&self, op: Op, old: Option<Arc<Doc>>, patch: Option<Patch>) -> Envelope {
        Envelope {
            id: self.id,
            op,
            time: self.time,
            cluster: self.cluster.clone(),
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            plural: self.plural.clone(),
            source: self.source.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            resource_version: self.resource_version.clone(),
            object: self.object.clone(),
            patch,
            old,
            include_old: self.include_old,
            initial_list: false,
            final_state_unknown: self.final_state_unknown,
            snapshot: self.snapshot,
            changed_by: self.changed_by.clone(),
            observed: self.observed,
            encoded: OnceLock::new(),
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Builds envelopes for one resource type of one cluster.
#[derive(Debug, Clone)]
pub struct EnvelopeBuilder {
    /// `cluster` from the config.
    pub cluster: Arc<str>,
    /// `apiVersion` of the resource type.
    pub api_version: Arc<str>,
    /// Kind of the resource type.
    pub kind: Arc<str>,
    /// Plural of the resource type (`deployments`).
    pub plural: Arc<str>,
    /// The informer's key (see [`Envelope::source`]).
    pub source: Arc<str>,
    /// Serialize `old` on updates.
    pub include_old: bool,
}

impl EnvelopeBuilder {
    /// A new envelope for `object`; identity fields are read from its metadata.
    pub fn build(
        &self,
        op: Op,
        object: Arc<Value>,
        old: Option<Arc<Value>>,
        patch: Option<Patch>,
        observed: Instant,
    ) -> Envelope {
        self.build_doc(op, Doc::new(object), old.map(Doc::new), patch, observed)
    }

    /// A delete that was inferred, not seen (`finalStateUnknown`): `last_known` is the last
    /// state known of the object, and the envelope's resourceVersion is `gone_at`, the one at
    /// which the object was found gone (newer than all its states; the last known state's
    /// when empty). Consumers that order by resourceVersion then apply it even if they hold
    /// a newer state than `last_known`, and (uid, resourceVersion) names no earlier change.
    pub fn build_unseen_delete(
        &self,
        last_known: Arc<Doc>,
        gone_at: &str,
        observed: Instant,
    ) -> Envelope {
        let mut e = self.build_doc(Op::Delete, last_known, None, None, observed);
        e.final_state_unknown = true;
        if !gone_at.is_empty() {
            gone_at.clone_into(&mut e.resource_version);
        }
        e
    }

    /// [`EnvelopeBuilder::build`] from states that may be known as compact JSON already
    /// (the cache's), which the envelope then writes as they are.
    pub fn build_doc(
        &self,
        op: Op,
        object: Arc<Doc>,
        old: Option<Arc<Doc>>,
        patch: Option<Patch>,
        observed: Instant,
    ) -> Envelope {
        let ident = object.ident().clone();
        Envelope {
            id: Uuid::now_v7(),
            op,
            time: SystemTime::now(),
            cluster: self.cluster.clone(),
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            plural: self.plural.clone(),
            source: self.source.clone(),
            namespace: ident.namespace,
            name: ident.name,
            uid: ident.uid,
            resource_version: ident.resource_version,
            object,
            patch,
            old,
            include_old: self.include_old,
            initial_list: false,
            final_state_unknown: false,
            snapshot: None,
            changed_by: None,
            observed,
            encoded: OnceLock::new(),
        }
    }
}

#[cfg(test)]
impl EnvelopeBuilder {
    /// A builder for `kind` of `api_version` in cluster `c` (the plural is `<kind>s`).
    pub(crate) fn for_test(api_version: &str, kind: &str) -> Self {
        EnvelopeBuilder {
            cluster: "c".into(),
            api_version: api_version.into(),
            kind: kind.into(),
            plural: format!("{}s", kind.to_ascii_lowercase()).as_str().into(),
            source: format!("{api_version}/{kind}").as_str().into(),
            include_old: false,
        }
    }

    /// ConfigMaps of cluster `c` from informer `v1/ConfigMap`: the unit tests' builder.
    pub(crate) fn test_configmaps() -> Self {
        Self::for_test("v1", "ConfigMap")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn builder() -> EnvelopeBuilder {
        EnvelopeBuilder {
            cluster: "c1".into(),
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            plural: "deployments".into(),
            source: "apps/v1/Deployment".into(),
            include_old: false,
        }
    }

    #[test]
    fn envelope_json_has_the_documented_fields() {
        let obj = Arc::new(json!({"metadata": {"name": "web", "namespace": "default",
            "uid": "u1", "resourceVersion": "7"}}));
        let mut e = builder().build(Op::Add, obj, None, None, Instant::now());
        e.initial_list = true;
        let v: Value = serde_json::from_slice(e.to_json()).unwrap();
        crate::event::schema_check::envelope(&v);
        assert_eq!(v["op"], "add");
        assert_eq!(v["cluster"], "c1");
        assert_eq!(v["apiVersion"], "apps/v1");
        assert_eq!(v["kind"], "Deployment");
        assert_eq!(v["namespace"], "default");
        assert_eq!(v["name"], "web");
        assert_eq!(v["uid"], "u1");
        assert_eq!(v["resourceVersion"], "7");
        assert_eq!(v["initialList"], true);
        assert!(v.get("finalStateUnknown").is_none());
        assert!(v.get("patch").is_none());
        assert!(v.get("old").is_none());
        assert!(v.get("snapshot").is_none() && v.get("changedBy").is_none());
        assert_eq!(
            Uuid::parse_str(v["id"].as_str().unwrap())
                .unwrap()
                .get_version_num(),
            7
        );
        assert!(humantime::parse_rfc3339(v["time"].as_str().unwrap()).is_ok());
        assert_eq!(e.group(), "apps");
    }

    #[test]
    fn snapshot_reads_and_attributed_changes_carry_their_fields() {
        let obj =
            Arc::new(json!({"metadata": {"name": "web", "uid": "u1", "resourceVersion": "7"}}));
        let mut e = builder().build(Op::Add, obj, None, None, Instant::now());
        e.snapshot = Some(SnapshotMark::Last);
        e.changed_by = Some(
            crate::event::changed_by::Managers::of(&json!({"metadata": {"managedFields": [
                {"manager": "kubectl", "operation": "Apply", "time": "2024-05-01T10:00:00Z"}]}}))
            .changed_since(None),
        );
        assert!(e.is_read());
        let v: Value = serde_json::from_slice(e.to_json()).unwrap();
        crate::event::schema_check::envelope(&v);
        assert_eq!(v["snapshot"], "last");
        assert_eq!(
            v["changedBy"],
            json!([{"manager": "kubectl", "operation": "Apply", "time": "2024-05-01T10:00:00Z"}])
        );
        assert!(
            v.get("initialList").is_none(),
            "an on-demand snapshot is not the initial list"
        );
    }

    #[test]
    fn the_published_schemas_refuse_undocumented_or_malformed_fields() {
        let obj =
            Arc::new(json!({"metadata": {"name": "web", "uid": "u1", "resourceVersion": "7"}}));
        let e = builder().build(Op::Add, obj, None, None, Instant::now());
        let good: Value = serde_json::from_slice(e.to_json()).unwrap();
        crate::event::schema_check::envelope(&good);
        let mut extra = good.clone();
        extra["surprise"] = json!(1);
        let mut bad_op = good.clone();
        bad_op["op"] = json!("upsert");
        let mut patch_on_add = good.clone();
        patch_on_add["patch"] = json!([]);
        for bad in [extra, bad_op, patch_on_add] {
            let refused = std::panic::catch_unwind(|| crate::event::schema_check::envelope(&bad));
            assert!(refused.is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn cluster_scoped_objects_have_no_namespace_field() {
        let obj = Arc::new(json!({"metadata": {"name": "n1", "uid": "u", "resourceVersion": "1"}}));
        let e = builder().build(Op::Delete, obj, None, None, Instant::now());
        let v: Value = serde_json::from_slice(e.to_json()).unwrap();
        crate::event::schema_check::envelope(&v);
        assert!(v.get("namespace").is_none());
    }

    #[test]
    fn old_is_serialized_only_when_asked() {
        let obj = Arc::new(json!({"metadata": {"name": "a"}}));
        let old = Some(Arc::new(json!({"metadata": {"name": "a", "x": 1}})));
        let e = builder().build(Op::Update, obj.clone(), old.clone(), None, Instant::now());
        assert!(!String::from_utf8_lossy(e.to_json()).contains("\"old\""));
        let mut b = builder();
        b.include_old = true;
        let e = b.build(Op::Update, obj, old, None, Instant::now());
        let v: Value = serde_json::from_slice(e.to_json()).unwrap();
        crate::event::schema_check::envelope(&v);
        assert_eq!(v["old"]["metadata"]["x"], 1);
    }

    /// The wire form as a single serde struct (how it was written before the object was
    /// copied from its compact JSON): the contract the spliced encoding must equal.
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Reference<'a> {
        #[serde(flatten)]
        head: Head<'a>,
        object: &'a Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        patch: Option<&'a Patch>,
        #[serde(skip_serializing_if = "Option::is_none")]
        old: Option<&'a Value>,
        #[serde(flatten)]
        tail: Tail<'a>,
    }

    fn reference(e: &Envelope) -> Vec<u8> {
        serde_json::to_vec(&Reference {
            head: Head {
                id: &e.id,
                op: e.op,
                time: rfc3339(e.time),
                cluster: &e.cluster,
                api_version: &e.api_version,
                kind: &e.kind,
                namespace: e.namespace.as_deref(),
                name: &e.name,
                uid: &e.uid,
                resource_version: &e.resource_version,
            },
            object: &e.object,
            patch: e.patch.as_ref(),
            old: e.old.as_deref().filter(|_| e.include_old).map(|o| &**o),
            tail: Tail {
                initial_list: e.initial_list,
                final_state_unknown: e.final_state_unknown,
                snapshot: e.snapshot,
                changed_by: e.changed_by.as_deref(),
            },
        })
        .unwrap()
    }

    #[test]
    fn the_envelope_is_byte_for_byte_what_one_serde_struct_writes() {
        let old = Arc::new(
            json!({"metadata": {"name": "a", "namespace": "n", "uid": "u"}, "x": "é\"\n"}),
        );
        let new = Arc::new(
            json!({"metadata": {"name": "a", "namespace": "n", "uid": "u"}, "y": [1, 2.5, null]}),
        );
        let patch = crate::event::diff::diff(&old, &new);
        let cluster_scoped = Arc::new(json!({"metadata": {"name": "node-1"}}));
        let json = |v: &Arc<Value>| Bytes::from(serde_json::to_vec(&**v).unwrap());
        for include_old in [false, true] {
            let mut b = builder();
            b.include_old = include_old;
            let mut cases = vec![
                b.build(Op::Add, new.clone(), None, None, Instant::now()),
                b.build(
                    Op::Delete,
                    cluster_scoped.clone(),
                    None,
                    None,
                    Instant::now(),
                ),
                b.build(
                    Op::Update,
                    new.clone(),
                    Some(old.clone()),
                    Some(patch.clone()),
                    Instant::now(),
                ),
                // States known only as compact JSON (the cache's) are written as they are.
                b.build_doc(
                    Op::Update,
                    Doc::with_json(new.clone(), json(&new)),
                    Some(Doc::from_json(json(&old))),
                    Some(patch.clone()),
                    Instant::now(),
                ),
            ];
            let mut read = b.build(Op::Add, new.clone(), None, None, Instant::now());
            read.initial_list = true;
            read.snapshot = Some(SnapshotMark::Last);
            cases.push(read);
            let mut gone = b.build(Op::Delete, new.clone(), None, None, Instant::now());
            gone.final_state_unknown = true;
            cases.push(gone);
            for e in cases {
                assert_eq!(
                    String::from_utf8_lossy(e.to_json()),
                    String::from_utf8_lossy(&reference(&e))
                );
            }
        }
    }
}
