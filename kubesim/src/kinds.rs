//! The kinds kubesim serves: the built-in set plus extra (CRD-style) kinds
//! given at start, and the lookups routing and discovery need.

use std::collections::HashMap;

/// One served kind, as given on the command line (`--kind`) or in [`crate::SimConfig`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KindSpec {
    /// API group, empty for the core group.
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Widget`.
    pub kind: String,
    /// Resource name used in URLs, e.g. `widgets`.
    pub plural: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
}

/// A `--kind` spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid kind spec {spec:?}: {why} (expected group/version/Kind[:plural][:cluster], e.g. example.com/v1/Widget:widgets:cluster; core group as core/v1/Kind)"
)]
pub struct KindSpecError {
    /// The spec as given.
    pub spec: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl KindSpec {
    /// A namespaced or cluster-scoped kind with the default plural (lowercase kind + `s`).
    pub fn new(group: &str, version: &str, kind: &str, namespaced: bool) -> Self {
        KindSpec {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural: default_plural(kind),
            namespaced,
        }
    }

    /// Parses `group/version/Kind[:plural][:cluster]` (`core` or an empty group means the core group).
    pub fn parse(spec: &str) -> Result<KindSpec, KindSpecError> {
        let err = |why| KindSpecError {
            spec: spec.to_string(),
            why,
        };
        let mut parts = spec.split(':');
        let gvk = parts.next().unwrap_or_default();
        let segs: Vec<&str> = gvk.split('/').collect();
        if segs.len() != 3 {
            return Err(err("need exactly group/version/Kind"));
        }
        let group = if segs[0] == "core" { "" } else { segs[0] };
        let (version, kind) = (segs[1], segs[2]);
        if version.is_empty() || kind.is_empty() {
            return Err(err("version and kind must not be empty"));
        }
        if !kind.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
            return Err(err("kind must start with a letter"));
        }
        let mut out = KindSpec::new(group, version, kind, true);
        for p in parts {
            match p {
                "cluster" => out.namespaced = false,
                "namespaced" => out.namespaced = true,
                "" => return Err(err("empty segment")),
                plural
                    if plural.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'
                    }) =>
                {
                    out.plural = plural.to_string()
                }
                _ => return Err(err("plural must be lowercase")),
            }
        }
        Ok(out)
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// `Widget` → `widgets`, `Policy` → `policies`, `Ingress` → `ingresses`.
fn default_plural(kind: &str) -> String {
    let l = kind.to_ascii_lowercase();
    if l.ends_with('y') && !l.ends_with("ey") && !l.ends_with("ay") && !l.ends_with("oy") {
        format!("{}ies", &l[..l.len() - 1])
    } else if l.ends_with('s') || l.ends_with('x') || l.ends_with("ch") || l.ends_with("sh") {
        format!("{l}es")
    } else {
        format!("{l}s")
    }
}

/// A served kind plus what discovery and field selectors need to know about it.
#[derive(Debug, Clone)]
pub struct KindInfo {
    /// Group/version/kind/plural/scope.
    pub spec: KindSpec,
    /// `apiVersion` string as written in objects.
    pub api_version: String,
    /// Short names for discovery (`po`, `cm`, ...).
    pub short_names: Vec<String>,
    /// Field labels accepted in `fieldSelector` beyond `metadata.name`/`metadata.namespace`.
    pub field_labels: Vec<&'static str>,
}

impl KindInfo {
    /// Singular lowercase resource name.
    pub fn singular(&self) -> String {
        self.spec.kind.to_ascii_lowercase()
    }

    /// Whether `label` may appear in a field selector for this kind (400 otherwise, like upstream).
    pub fn supports_field(&self, label: &str) -> bool {
        label == "metadata.name"
            || (self.spec.namespaced && label == "metadata.namespace")
            || self.field_labels.contains(&label)
    }
}

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];
const CORE_EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];
const EVENTS_V1_FIELDS: &[&str] = &[
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "regarding.apiVersion",
    "regarding.resourceVersion",
    "regarding.fieldPath",
    "reason",
    "reportingController",
    "deprecatedSource",
    "type",
    // The real server stores events.k8s.io Events as core Events and accepts these too.
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "source",
];

/// (group, version, kind, plural, namespaced, short names, field labels)
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
    &'static [&'static str],
);

const BUILTINS: &[Builtin] = &[
    (
        "",
        "v1",
        "Namespace",
        "namespaces",
        false,
        &["ns"],
        &["status.phase"],
    ),
    (
        "",
        "v1",
        "Node",
        "nodes",
        false,
        &["no"],
        &["spec.unschedulable"],
    ),
    ("", "v1", "Pod", "pods", true, &["po"], POD_FIELDS),
    ("", "v1", "ConfigMap", "configmaps", true, &["cm"], &[]),
    ("", "v1", "Secret", "secrets", true, &[], &["type"]),
    (
        "",
        "v1",
        "Service",
        "services",
        true,
        &["svc"],
        &["spec.clusterIP", "spec.type"],
    ),
    (
        "",
        "v1",
        "Event",
        "events",
        true,
        &["ev"],
        CORE_EVENT_FIELDS,
    ),
    (
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        true,
        &["sa"],
        &[],
    ),
    ("", "v1", "Endpoints", "endpoints", true, &["ep"], &[]),
    (
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
        &["pvc"],
        &[],
    ),
    (
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        false,
        &["pv"],
        &[],
    ),
    (
        "",
        "v1",
        "ReplicationController",
        "replicationcontrollers",
        true,
        &["rc"],
        &["status.replicas"],
    ),
    ("", "v1", "PodTemplate", "podtemplates", true, &[], &[]),
    (
        "",
        "v1",
        "LimitRange",
        "limitranges",
        true,
        &["limits"],
        &[],
    ),
    (
        "",
        "v1",
        "ResourceQuota",
        "resourcequotas",
        true,
        &["quota"],
        &[],
    ),
    (
        "apps",
        "v1",
        "Deployment",
        "deployments",
        true,
        &["deploy"],
        &[],
    ),
    (
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        true,
        &["sts"],
        &[],
    ),
    ("apps", "v1", "DaemonSet", "daemonsets", true, &["ds"], &[]),
    (
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        true,
        &["rs"],
        &["status.replicas"],
    ),
    (
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        true,
        &[],
        &[],
    ),
    (
        "batch",
        "v1",
        "Job",
        "jobs",
        true,
        &[],
        &["status.successful"],
    ),
    ("batch", "v1", "CronJob", "cronjobs", true, &["cj"], &[]),
    (
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        true,
        &[],
        &[],
    ),
    (
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        true,
        &["ev"],
        EVENTS_V1_FIELDS,
    ),
];

/// Index of a kind inside a [`Registry`].
pub type KindId = usize;

/// All served kinds with lookups by (apiVersion, Kind) and (group, version, plural).
#[derive(Debug, Clone)]
pub struct Registry {
    kinds: Vec<KindInfo>,
    by_gvk: HashMap<(String, String), KindId>,
    by_gvr: HashMap<(String, String, String), KindId>,
}

impl Registry {
    /// Built-in kinds plus `extra` (an extra kind with the same group/version/plural replaces a built-in).
    pub fn new(extra: &[KindSpec]) -> Registry {
        let mut reg = Registry {
            kinds: Vec::new(),
            by_gvk: HashMap::new(),
            by_gvr: HashMap::new(),
        };
        for (g, v, k, p, ns, short, fields) in BUILTINS {
            reg.add(KindInfo {
                spec: KindSpec {
                    group: g.to_string(),
                    version: v.to_string(),
                    kind: k.to_string(),
                    plural: p.to_string(),
                    namespaced: *ns,
                },
                api_version: String::new(),
                short_names: short.iter().map(|s| s.to_string()).collect(),
                field_labels: fields.to_vec(),
            });
        }
        for spec in extra {
            reg.add(KindInfo {
                spec: spec.clone(),
                api_version: String::new(),
                short_names: vec![],
                field_labels: vec![],
            });
        }
        reg
    }

    fn add(&mut self, mut info: KindInfo) {
        info.api_version = info.spec.api_version();
        let gvr = (
            info.spec.group.clone(),
            info.spec.version.clone(),
            info.spec.plural.clone(),
        );
        let gvk = (info.api_version.clone(), info.spec.kind.clone());
        if let Some(&id) = self.by_gvr.get(&gvr) {
            self.by_gvk.retain(|_, v| *v != id);
            self.kinds[id] = info;
            self.by_gvk.insert(gvk, id);
            return;
        }
        let id = self.kinds.len();
        self.kinds.push(info);
        self.by_gvr.insert(gvr, id);
        self.by_gvk.insert(gvk, id);
    }

    /// All kinds, indexable by [`KindId`].
    pub fn kinds(&self) -> &[KindInfo] {
        &self.kinds
    }

    /// The kind with this id.
    pub fn get(&self, id: KindId) -> &KindInfo {
        &self.kinds[id]
    }

    /// Looks a kind up by `apiVersion` and `Kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<KindId> {
        self.by_gvk
            .get(&(api_version.to_string(), kind.to_string()))
            .copied()
    }

    /// Looks a kind up by URL parts.
    pub fn by_resource(&self, group: &str, version: &str, plural: &str) -> Option<KindId> {
        self.by_gvr
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .copied()
    }

    /// The id of core/v1 Namespace (always served).
    pub fn namespace_kind(&self) -> KindId {
        self.by_kind("v1", "Namespace")
            .expect("Namespace is built in")
    }

    /// Groups (excluding core) in first-seen order, each with its versions in first-seen order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for k in &self.kinds {
            if k.spec.group.is_empty() {
                continue;
            }
            match out.iter_mut().find(|(g, _)| *g == k.spec.group) {
                Some((_, vs)) => {
                    if !vs.contains(&k.spec.version) {
                        vs.push(k.spec.version.clone())
                    }
                }
                None => out.push((k.spec.group.clone(), vec![k.spec.version.clone()])),
            }
        }
        out
    }

    /// Kinds served under one group/version.
    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a KindInfo> + 'a {
        self.kinds
            .iter()
            .filter(move |k| k.spec.group == group && k.spec.version == version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_spec_parses_plural_and_scope() {
        let k = KindSpec::parse("example.com/v1/Widget:widgetz:cluster").unwrap();
        assert_eq!(
            (k.group.as_str(), k.plural.as_str(), k.namespaced),
            ("example.com", "widgetz", false)
        );
        let k = KindSpec::parse("example.com/v1alpha1/Policy").unwrap();
        assert_eq!((k.plural.as_str(), k.namespaced), ("policies", true));
        assert_eq!(
            KindSpec::parse("core/v1/Thing").unwrap().api_version(),
            "v1"
        );
        assert!(KindSpec::parse("nope").is_err());
    }

    #[test]
    fn registry_resolves_both_event_kinds_separately() {
        let r = Registry::new(&[]);
        let a = r.by_kind("v1", "Event").unwrap();
        let b = r.by_kind("events.k8s.io/v1", "Event").unwrap();
        assert_ne!(a, b);
        assert_eq!(r.by_resource("events.k8s.io", "v1", "events"), Some(b));
    }
}
