//! Handlers for object requests: list, watch, get, create, update, patch, delete.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::route::ResourceRoute;
use super::table::{self, IncludeObject};
use super::watch::{self, Start, WatchSpec};
use super::{Body, Shared, Synthetic, full, json_response};
use crate::error::ApiError;
use crate::kinds::KindInfo;
use crate::patch::{self, PatchKind};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{ObjKey, Store, StoredObj};

/// Query parameters, last occurrence wins.
pub(crate) struct Query<'a>(pub &'a [(String, String)]);

impl Query<'_> {
    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
    pub(crate) fn flag(&self, k: &str) -> bool {
        matches!(
            self.get(k),
            Some("true" | "1" | "True" | "TRUE" | "t" | "T")
        )
    }
    fn nonempty(&self, k: &str) -> Option<&str> {
        self.get(k).filter(|s| !s.is_empty())
    }
}

/// Everything about the request a handler needs besides the route.
pub(crate) struct Ctx<'a> {
    pub shared: &'a Shared,
    pub store: Arc<Store>,
    pub method: Method,
    pub query: Query<'a>,
    pub body: Bytes,
    pub content_type: String,
    pub accept: String,
    /// `User-Agent`: names the field manager of writes without `fieldManager`.
    pub user_agent: String,
    pub watch: bool,
}

impl Ctx<'_> {
    /// The field manager of a write, as the API server picks it: `fieldManager`, else the
    /// User-Agent up to its first `/` (`kubectl/v1.30.0 (linux/amd64) …` → `kubectl`).
    fn field_manager(&self) -> Option<&str> {
        self.query.nonempty("fieldManager").or_else(|| {
            self.user_agent
                .split('/')
                .next()
                .map(str::trim)
                .filter(|s| !s.is_empty())
        })
    }

    /// Records an `Update` operation's ownership on `new` (see [`patch::record_update`]).
    fn record_update(
        &self,
        info: &KindInfo,
        current: Option<&Value>,
        new: &mut Value,
        status: bool,
    ) {
        if let Some(manager) = self.field_manager() {
            let sub = status.then_some("status");
            patch::record_update(current, new, manager, sub, &info.api_version);
        }
    }
}

pub(crate) async fn handle(ctx: Ctx<'_>, r: ResourceRoute) -> Result<Response<Body>, ApiError> {
    let info = ctx.store.registry.get(r.kind).clone();
    let ns = r.ns.clone().unwrap_or_default();
    match (&ctx.method, &r.name) {
        (&Method::GET, _) if ctx.watch || r.legacy_watch => watch(&ctx, &info, &r),
        (&Method::GET, None) => list(&ctx, &info, &r).await,
        (&Method::GET, Some(name)) => {
            let obj = ctx
                .store
                .get(r.kind, &ns, name)
                .ok_or_else(|| ApiError::not_found(&info.spec.group, &info.spec.plural, name))?;
            Ok(object_response(&ctx, StatusCode::OK, &obj))
        }
        (&Method::POST, None) => {
            let mut body = parse_json(&ctx.body)?;
            ctx.record_update(&info, None, &mut body, false);
            let obj = ctx.store.create(r.kind, r.ns.as_deref(), body)?;
            Ok(object_response(&ctx, StatusCode::CREATED, &obj))
        }
        (&Method::PUT, Some(name)) => {
            let body = parse_json(&ctx.body)?;
            let status_only = r.sub.is_some();
            let (group, plural) = (info.spec.group.clone(), info.spec.plural.clone());
            let (obj, _) = ctx.store.upsert(r.kind, &ns, name, |cur| {
                let cur = cur.ok_or_else(|| ApiError::not_found(&group, &plural, name))?;
                let mut new = if status_only {
                    with_status_of(cur, &body)
                } else {
                    body
                };
                ctx.record_update(&info, Some(cur), &mut new, status_only);
                Ok(new)
            })?;
            Ok(object_response(&ctx, StatusCode::OK, &obj))
        }
        (&Method::PATCH, Some(name)) => patch(&ctx, &info, &r, name),
        (&Method::DELETE, Some(name)) => {
            let opts: Value = if ctx.body.is_empty() {
                json!({})
            } else {
                parse_json(&ctx.body)?
            };
            let pre_rv = opts
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str);
            let pre_uid = opts.pointer("/preconditions/uid").and_then(Value::as_str);
            let obj = ctx.store.delete(r.kind, &ns, name, pre_rv, pre_uid)?;
            Ok(object_response(&ctx, StatusCode::OK, &obj))
        }
        (&Method::DELETE, None) => {
            let (labels, fields) = selectors(&ctx, &info)?;
            let (_, all) = ctx.store.all(r.kind, r.ns.as_deref());
            let mut deleted = Vec::new();
            for o in all.iter().filter(|o| matches(o, &info, &labels, &fields)) {
                if let Ok(d) = ctx
                    .store
                    .delete(r.kind, o.namespace(), o.name(), None, None)
                {
                    deleted.push(d);
                }
            }
            let rv = ctx.store.current_rv();
            Ok(full(
                StatusCode::OK,
                "application/json",
                list_bytes(&info, &deleted, rv, None, None),
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })
}

/// The current object with only `.status` taken from `new` (status subresource writes).
fn with_status_of(cur: &Value, new: &Value) -> Value {
    let mut out = cur.clone();
    match new.get("status") {
        Some(s) => out["status"] = s.clone(),
        None => {
            if let Some(o) = out.as_object_mut() {
                o.remove("status");
            }
        }
    }
    if let Some(rv) = new.pointer("/metadata/resourceVersion") {
        out["metadata"]["resourceVersion"] = rv.clone();
    }
    out
}

fn patch(
    ctx: &Ctx<'_>,
    info: &KindInfo,
    r: &ResourceRoute,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let kind = PatchKind::from_content_type(&ctx.content_type)
        .ok_or_else(|| ApiError::unsupported_media_type(&ctx.content_type))?;
    let ns = r.ns.clone().unwrap_or_default();
    let status_only = r.sub.is_some();
    let (group, plural) = (info.spec.group.clone(), info.spec.plural.clone());
    let not_found = || ApiError::not_found(&group, &plural, name);
    let (obj, created) = match kind {
        PatchKind::Apply => {
            let cfg = patch::parse_apply_body(&ctx.body)?;
            let manager = ctx.query.nonempty("fieldManager").ok_or_else(|| {
                ApiError::invalid(
                    "meta.k8s.io",
                    "PatchOptions",
                    "",
                    "fieldManager",
                    "FieldValueRequired",
                    "Required value: is required for apply patch",
                )
            })?;
            let force = ctx.query.flag("force");
            let api_version = info.api_version.clone();
            ctx.store.upsert(r.kind, &ns, name, |cur| {
                let mut cfg = cfg;
                if cur.is_none() {
                    // Creating: identity comes from the URL like for any create.
                    if cfg.get("metadata").is_none_or(|m| !m.is_object()) {
                        cfg["metadata"] = json!({});
                    }
                    cfg["metadata"]["name"] = json!(name);
                }
                let sub = status_only.then_some("status");
                let out =
                    patch::server_side_apply_to(cur, &cfg, manager, force, &api_version, sub)?;
                Ok(match (status_only, cur) {
                    (true, Some(c)) => {
                        let mut o = with_status_of(c, &out);
                        o["metadata"]["managedFields"] = out["metadata"]["managedFields"].clone();
                        o
                    }
                    _ => out,
                })
            })?
        }
        _ => {
            let p = parse_json(&ctx.body)?;
            if kind != PatchKind::Json && !p.is_object() {
                return Err(ApiError::bad_request("patch body must be a JSON object"));
            }
            ctx.store.upsert(r.kind, &ns, name, |cur| {
                let cur = cur.ok_or_else(not_found)?;
                let mut v = cur.clone();
                match kind {
                    PatchKind::Merge => patch::merge_patch(&mut v, &p),
                    PatchKind::Strategic => patch::strategic_merge_patch(&mut v, &p),
                    _ => patch::json_patch(&mut v, &p)?,
                }
                let mut new = if status_only {
                    with_status_of(cur, &v)
                } else {
                    v
                };
                ctx.record_update(info, Some(cur), &mut new, status_only);
                Ok(new)
            })?
        }
    };
    Ok(object_response(
        ctx,
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &obj,
    ))
}

fn object_response(ctx: &Ctx<'_>, code: StatusCode, obj: &StoredObj) -> Response<Body> {
    if table::wants_table(&ctx.accept) {
        let inc = IncludeObject::parse(ctx.query.get("includeObject"));
        let t = table::table(&[&obj.value], &obj.rv.to_string(), None, inc);
        return json_response(code, &t);
    }
    full(code, "application/json", obj.bytes.clone())
}

fn selectors(
    ctx: &Ctx<'_>,
    info: &KindInfo,
) -> Result<(Option<LabelSelector>, Option<FieldSelector>), ApiError> {
    let labels = match ctx.query.nonempty("labelSelector") {
        Some(s) => Some(LabelSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?)
            .filter(|l| !l.is_empty()),
        None => None,
    };
    let fields = match ctx.query.nonempty("fieldSelector") {
        Some(s) => {
            let f = FieldSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?;
            for r in &f.requirements {
                if !info.supports_field(&r.field) {
                    return Err(ApiError::bad_request(format!(
                        "field label not supported: {}",
                        r.field
                    )));
                }
            }
            Some(f).filter(|f| !f.is_empty())
        }
        None => None,
    };
    Ok((labels, fields))
}

fn matches(
    o: &StoredObj,
    info: &KindInfo,
    l: &Option<LabelSelector>,
    f: &Option<FieldSelector>,
) -> bool {
    l.as_ref().is_none_or(|l| l.matches_object(&o.value))
        && f.as_ref()
            .is_none_or(|f| f.matches(&o.value, &info.spec.kind))
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>().map_err(|_| {
        ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            "resourceVersion",
            "FieldValueInvalid",
            &format!("Invalid value: {s:?}: must be a non-negative integer"),
        )
        .tap_code(400, "BadRequest")
    })
}

trait TapCode {
    fn tap_code(self, code: u16, reason: &str) -> Self;
}
impl TapCode for ApiError {
    fn tap_code(mut self, code: u16, reason: &str) -> Self {
        self.code = code;
        self.reason = reason.to_string();
        self.details = None;
        self
    }
}

fn list_options_invalid(field: &str, detail: &str) -> ApiError {
    ApiError::invalid(
        "meta.k8s.io",
        "ListOptions",
        "",
        field,
        "FieldValueForbidden",
        detail,
    )
}

/// The continue token: base64 of `{"v":"meta.k8s.io/v1","rv":N,"start":"ns/name\u0000"}` like upstream.
fn encode_continue(rv: u64, key: &ObjKey) -> String {
    let start = format!("{}/{}\u{0}", key.0, key.1);
    base64::engine::general_purpose::URL_SAFE
        .encode(json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start}).to_string())
}

fn decode_continue(tok: &str) -> Result<(u64, ObjKey), ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(tok)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(tok))
        .map_err(|_| bad("illegal base64 data"))?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad("not a JSON continue token"))?;
    if v.get("v").and_then(Value::as_str) != Some("meta.k8s.io/v1") {
        return Err(bad(
            "incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        ));
    }
    let rv = v
        .get("rv")
        .and_then(Value::as_u64)
        .filter(|rv| *rv > 0)
        .ok_or_else(|| bad("incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))?;
    let start = v
        .get("start")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing start key"))?;
    let start = start.strip_suffix('\u{0}').unwrap_or(start);
    let (ns, name) = start
        .split_once('/')
        .ok_or_else(|| bad("invalid start key"))?;
    Ok((rv, (ns.to_string(), name.to_string())))
}

fn list_bytes(
    info: &KindInfo,
    items: &[Arc<StoredObj>],
    rv: u64,
    cont: Option<&str>,
    remaining: Option<usize>,
) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    if let Some(r) = remaining {
        meta["remainingItemCount"] = json!(r);
    }
    let head = format!(
        "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
        info.spec.kind, info.api_version, meta
    );
    let total: usize = items.iter().map(|o| o.bytes.len() + 1).sum();
    let mut buf = BytesMut::with_capacity(head.len() + total + 4);
    buf.extend_from_slice(head.as_bytes());
    for (i, o) in items.iter().enumerate() {
        if i > 0 {
            buf.extend_from_slice(b",");
        }
        buf.extend_from_slice(&o.bytes);
    }
    buf.extend_from_slice(b"]}");
    buf.freeze()
}

async fn list(
    ctx: &Ctx<'_>,
    info: &KindInfo,
    r: &ResourceRoute,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(ctx, info)?;
    let rv = ctx.query.nonempty("resourceVersion");
    let rvm = ctx.query.nonempty("resourceVersionMatch");
    let cont = ctx.query.nonempty("continue");
    let limit = match ctx.query.nonempty("limit") {
        Some(l) => Some(
            l.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        )
        .filter(|l| *l > 0)
        .map(|l| l as usize),
        None => None,
    };
    if rvm.is_some() && rv.is_none() {
        return Err(list_options_invalid(
            "resourceVersionMatch",
            "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
        ));
    }
    if rvm.is_some() && cont.is_some() {
        return Err(list_options_invalid(
            "resourceVersionMatch",
            "Forbidden: resourceVersionMatch is forbidden when continue is provided",
        ));
    }
    let (at, start) = if let Some(tok) = cont {
        if rv.is_some_and(|v| v != "0") {
            return Err(list_options_invalid(
                "resourceVersion",
                "Forbidden: specifying resource version is not allowed when using continue",
            ));
        }
        let (at, key) = decode_continue(tok)?;
        if at < ctx.store.compacted_rv() {
            return Err(ApiError::new(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
            ));
        }
        (Some(at), Some(key))
    } else {
        match (rv, rvm) {
            (None, _) => (None, None),
            (Some(v), Some("Exact")) => {
                let n = parse_rv(v)?;
                if n == 0 {
                    return Err(list_options_invalid(
                        "resourceVersionMatch",
                        "Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                    ));
                }
                wait_for_rv(&ctx.store, n).await?;
                (Some(n), None)
            }
            (Some(v), None | Some("NotOlderThan")) => {
                let n = parse_rv(v)?;
                wait_for_rv(&ctx.store, n).await?;
                (None, None)
            }
            (Some(_), Some(other)) => {
                return Err(ApiError::invalid(
                    "meta.k8s.io",
                    "ListOptions",
                    "",
                    "resourceVersionMatch",
                    "FieldValueNotSupported",
                    &format!(
                        "Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\", \"\""
                    ),
                ));
            }
        }
    };
    if let Some(syn) = ctx.shared.synthetic(r.kind) {
        return synthetic_list(ctx, info, r, &syn, start.as_ref(), limit, (labels, fields));
    }
    let filter = |o: &StoredObj| matches(o, info, &labels, &fields);
    let page = ctx
        .store
        .list_page(r.kind, r.ns.as_deref(), at, start.as_ref(), limit, &filter)?;
    let cont = page.next.as_ref().map(|k| encode_continue(page.rv, k));
    let remaining = cont.as_ref().map(|_| page.remaining);
    if table::wants_table(&ctx.accept) {
        let inc = IncludeObject::parse(ctx.query.get("includeObject"));
        let vals: Vec<&Value> = page.items.iter().map(|o| &o.value).collect();
        return Ok(json_response(
            StatusCode::OK,
            &table::table(&vals, &page.rv.to_string(), cont.as_deref(), inc),
        ));
    }
    Ok(full(
        StatusCode::OK,
        "application/json",
        list_bytes(info, &page.items, page.rv, cont.as_deref(), remaining),
    ))
}

/// A page of a [`Synthetic`] kind: objects `start..start + limit` of its generator, the
/// continue token naming the next index.
fn synthetic_list(
    ctx: &Ctx<'_>,
    info: &KindInfo,
    r: &ResourceRoute,
    syn: &Synthetic,
    start: Option<&ObjKey>,
    limit: Option<usize>,
    (labels, fields): (Option<LabelSelector>, Option<FieldSelector>),
) -> Result<Response<Body>, ApiError> {
    if labels.is_some() || fields.is_some() || r.ns.is_some() {
        return Err(ApiError::bad_request(format!(
            "{} is synthetic here: listed whole, without selectors or namespace",
            info.spec.plural
        )));
    }
    let from = match start {
        Some((_, i)) => {
            i.parse::<usize>()
                .map_err(|_| ApiError::bad_request("continue key is not valid: not an index"))?
                + 1
        }
        None => 0,
    };
    let to = limit.map_or(syn.count, |l| (from + l).min(syn.count));
    let rv = ctx.store.current_rv();
    let mut head = format!(
        "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{{\"resourceVersion\":\"{rv}\"",
        info.spec.kind, info.api_version
    );
    if to < syn.count {
        let last = (String::new(), (to - 1).to_string());
        head.push_str(&format!(
            ",\"continue\":\"{}\",\"remainingItemCount\":{}",
            encode_continue(rv, &last),
            syn.count - to
        ));
    }
    head.push_str("},\"items\":[");
    let mut buf = BytesMut::from(head.as_bytes());
    for i in from..to {
        if i > from {
            buf.extend_from_slice(b",");
        }
        buf.extend_from_slice(&(syn.make)(i));
    }
    buf.extend_from_slice(b"]}");
    Ok(full(StatusCode::OK, "application/json", buf.freeze()))
}

/// A list "not older than" a revision the store has not reached yet waits for it, then gives up like upstream.
async fn wait_for_rv(store: &Store, rv: u64) -> Result<(), ApiError> {
    let mut rx = store.subscribe();
    let reached = tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|cur| *cur >= rv)).await;
    if store.current_rv() >= rv || matches!(reached, Ok(Ok(_))) {
        return Ok(());
    }
    let mut e = ApiError::new(504, "Timeout", format!("Too large resource version: {rv}, current: {}", store.current_rv()))
        .with_details(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}));
    e.retry_after = Some(1);
    Err(e)
}

fn watch(ctx: &Ctx<'_>, info: &KindInfo, r: &ResourceRoute) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(ctx, info)?;
    let rv = ctx.query.get("resourceVersion");
    let rvm = ctx.query.nonempty("resourceVersionMatch");
    let send_initial = ctx
        .query
        .get("sendInitialEvents")
        .map(|v| matches!(v, "true" | "1" | "True"));
    let bookmarks = ctx.query.flag("allowWatchBookmarks");
    if send_initial.is_some() && !ctx.shared.streaming_lists() {
        return Err(list_options_invalid(
            "sendInitialEvents",
            "Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
        ));
    }
    if send_initial.is_some() && rvm != Some("NotOlderThan") {
        return Err(list_options_invalid(
            "resourceVersionMatch",
            "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ));
    }
    if send_initial == Some(true) && !bookmarks {
        return Err(list_options_invalid(
            "allowWatchBookmarks",
            "Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
        ));
    }
    if rvm.is_some() && send_initial.is_none() {
        return Err(list_options_invalid(
            "resourceVersionMatch",
            "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ));
    }
    let start = match (rv.filter(|s| !s.is_empty()), send_initial) {
        (_, Some(true)) => Start::Initial,
        (None, Some(false)) => Start::From(ctx.store.current_rv()),
        (None, None) | (Some("0"), None) => Start::Initial,
        (Some(v), _) => Start::From(parse_rv(v)?),
    };
    let timeout = match ctx.query.nonempty("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => ctx.shared.cfg.default_watch_timeout,
    };
    let name = r.name.clone().or_else(|| {
        fields
            .as_ref()
            .and_then(|f| f.required_name().map(str::to_string))
    });
    let spec = WatchSpec {
        kind: r.kind,
        kind_name: info.spec.kind.clone(),
        api_version: info.api_version.clone(),
        ns: r.ns.clone(),
        name,
        labels,
        fields,
        start,
        bookmarks,
        initial_end: send_initial == Some(true),
        timeout,
        bookmark_interval: ctx.shared.cfg.bookmark_interval,
        table: table::wants_table(&ctx.accept)
            .then(|| IncludeObject::parse(ctx.query.get("includeObject"))),
    };
    let stream = watch::stream(
        ctx.store.clone(),
        spec,
        ctx.shared.drop_rx(),
        ctx.shared.freeze_rx(),
    );
    let body = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(stream));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(body)
        .expect("static response parts are valid"))
}
