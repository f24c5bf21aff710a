//! Errors: [`ApiError`] is what the API server answers (always rendered as a
//! `v1 Status`); [`Error`] is what starting or restarting the simulator can fail with.

use serde_json::{Value, json};

/// A Kubernetes API error, rendered on the wire as a `v1 Status` object.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code (also `Status.code`).
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`, `AlreadyExists`, `Expired`.
    pub reason: String,
    /// `Status.message`, worded like the real API server's.
    pub message: String,
    /// `Status.details`, when the real server fills it (boxed: keeps `Result<_, ApiError>` small).
    pub details: Option<Box<Value>>,
    /// Seconds for a `Retry-After` header (429/504), if any.
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    /// Attaches `Status.details`.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 for an object: `pods "x" not found`, details name the resource (plural).
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        let qualified = qualified(plural, group);
        let mut details = json!({"name": name});
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        details["kind"] = json!(plural);
        Self::new(404, "NotFound", format!("{qualified} \"{name}\" not found"))
            .with_details(details)
    }

    /// 404 for a path nothing serves.
    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    /// 409 AlreadyExists on create.
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        let mut details = json!({"name": name});
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        details["kind"] = json!(plural);
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(plural, group)),
        )
        .with_details(details)
    }

    /// 409 Conflict for an optimistic-concurrency failure.
    pub fn conflict(group: &str, plural: &str, name: &str) -> Self {
        let mut details = json!({"name": name});
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        details["kind"] = json!(plural);
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(plural, group)
            ),
        )
        .with_details(details)
    }

    /// 422 Invalid with one field cause; details name the Kind (not the resource), as upstream does.
    pub fn invalid(
        group: &str,
        kind: &str,
        name: &str,
        field: &str,
        cause_reason: &str,
        detail: &str,
    ) -> Self {
        let qualified_kind = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let mut details = json!({"name": name});
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        details["kind"] = json!(kind);
        details["causes"] = json!([{"reason": cause_reason, "message": detail, "field": field}]);
        Self::new(
            422,
            "Invalid",
            format!("{qualified_kind} \"{name}\" is invalid: {field}: {detail}"),
        )
        .with_details(details)
    }

    /// 410 Expired for a watch or list from a compacted resourceVersion.
    pub fn too_old(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .with_details(json!({}))
    }

    /// 415 UnsupportedMediaType for an unknown patch content type.
    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json; got {ct:?}"))
            .with_details(json!({}))
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `v1 Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        });
        if let Some(d) = &self.details {
            s["details"] = (**d).clone();
        }
        s["code"] = json!(self.code);
        s
    }
}

/// `pods` or `leases.coordination.k8s.io`: the way error messages name a resource.
fn qualified(plural: &str, group: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

/// Failures starting, restarting or configuring the simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// Address we tried to bind.
        addr: std::net::SocketAddr,
        /// Underlying socket error.
        #[source]
        source: std::io::Error,
    },
    /// A `--kind` spec did not parse.
    #[error(transparent)]
    KindSpec(#[from] crate::kinds::KindSpecError),
    /// Seeding objects failed.
    #[error("seeding failed: {0}")]
    Seed(#[source] ApiError),
}
