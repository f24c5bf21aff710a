//! The requests the informer's state machine makes, as a trait ([`ListWatch`]) with typed
//! answers, and the implementation over kube's `Api`. The machine never sees a kube type, so
//! its unit tests script the answers ([`super::machine`]) without a server.
//!
//! Decoding happens here: kube parses list pages into [`RawObject`]s, and each watch line into
//! an [`Unparsed`] object whose parsing and preparing then run on tasks of their own, several
//! at once, handed over in order. A line or an object that does not decode is an item of the
//! stream ([`RawEvent::Undecodable`]), not the end of it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use kube::Api;
use kube::api::{ListParams, WatchEvent, WatchParams};
use serde_json::Value;

use super::InformerKey;
use super::prepare::{Prepared, Preparer};
use super::raw::{
    DropManagedFields, KeepAll, ParsePolicy, RawObject, SummarizeManagedFields, Unparsed,
};

/// Server-side watch timeout: the server ends the stream after it and the informer resumes
/// from the last resourceVersion (no re-list). kube-apiserver caps it at about 5 minutes.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// How long a list page or the start of a watch may take to answer.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The bookmark annotation that ends a streaming list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";
/// Watch events whose objects are being parsed at once, ahead of the informer: enough to
/// keep both cores of a small machine parsing while the informer works through earlier ones.
const PARSING: usize = 16;

/// One page of a list.
#[derive(Debug, Default)]
pub(super) struct ListPage {
    /// The objects, as the server sent them.
    pub items: Vec<Value>,
    /// The list's resourceVersion (the snapshot every page belongs to).
    pub resource_version: String,
    /// Where the next page starts; `None` on the last page.
    pub continue_token: Option<String>,
}

/// Where a watch starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum WatchFrom {
    /// Changes after this resourceVersion.
    Version(String),
    /// A streaming list: every current object as ADDED, the `k8s.io/initial-events-end`
    /// bookmark, then changes (`sendInitialEvents=true`, `resourceVersionMatch=NotOlderThan`,
    /// no resourceVersion: a consistent read of the newest state).
    InitialEvents,
}

/// One item of a watch stream.
#[derive(Debug)]
pub(super) enum RawEvent {
    /// ADDED, not prepared: what scripted watches deliver in tests (the real watch prepares
    /// its objects, [`RawEvent::Applied`]); the machine prepares it.
    #[cfg(test)]
    Added(Value),
    /// MODIFIED, not prepared (see `Added`).
    #[cfg(test)]
    Modified(Value),
    /// DELETED (the object's last state).
    Deleted(Value),
    /// ADDED or MODIFIED, already prepared (by the watch's parse tasks; see
    /// [`super::prepare`]): only the informer's own bookkeeping is left to do.
    Applied(Prepared),
    /// BOOKMARK: no change, only a resourceVersion to resume from.
    Bookmark {
        /// Where a watch can resume.
        resource_version: String,
        /// The bookmark that ends a streaming list's initial events.
        initial_events_end: bool,
    },
    /// A line that could not be decoded; skipped.
    Undecodable(String),
}

/// A watch: events until the server ends it (`None`), or an error.
///
/// Each item comes with the instant its line arrived, before it was parsed (where delivery
/// latency starts).
pub(super) type EventStream = BoxStream<'static, Item>;

/// One item of an [`EventStream`].
type Item = (std::time::Instant, Result<RawEvent, RequestError>);

/// Why a request (or an open watch) failed, by what the informer does about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// 410 Gone (or Expired): the resourceVersion or continue token is older than the
    /// server's history.
    #[error("410 Gone: {0}")]
    Gone(String),
    /// 401 or 403: credentials or RBAC; retrying soon will not help.
    #[error("{code} {}: {message}", if *code == 401 { "Unauthorized" } else { "Forbidden" })]
    Forbidden {
        /// 401 or 403.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// 429: the server asks clients to slow down.
    #[error("429 Too Many Requests: {message}")]
    Throttled {
        /// How long the server asked to wait (`details.retryAfterSeconds`).
        retry_after: Option<Duration>,
        /// The server's message.
        message: String,
    },
    /// Another 4xx: the request itself was refused (a streaming list the server does not
    /// serve answers 400 or 422).
    #[error("{code}: {message}")]
    Rejected {
        /// The status code.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// 5xx.
    #[error("{code}: {message}")]
    Server {
        /// The status code.
        code: u16,
        /// The server's message.
        message: String,
        /// How long the server asked to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// No answer in time.
    #[error("no answer within {}s", .0.as_secs())]
    Timeout(Duration),
    /// The connection could not be made or broke (refused, reset, DNS, TLS).
    #[error("{0}")]
    Transport(String),
    /// The answer was not what a Kubernetes API server sends.
    #[error("undecodable answer: {0}")]
    Decode(String),
}

impl RequestError {
    /// The typed error for a `Status` the server answered (a response or a watch ERROR event).
    pub(super) fn from_status(code: u16, message: &str, retry_after_seconds: u32) -> Self {
        let message = message.to_string();
        let retry_after =
            (retry_after_seconds > 0).then(|| Duration::from_secs(retry_after_seconds.into()));
        match code {
            410 => RequestError::Gone(message),
            401 | 403 => RequestError::Forbidden { code, message },
            429 => RequestError::Throttled {
                retry_after,
                message,
            },
            500..=599 => RequestError::Server {
                code,
                message,
                retry_after,
            },
            _ => RequestError::Rejected { code, message },
        }
    }

    /// How long the server asked to wait before the next attempt.
    pub(super) fn retry_after(&self) -> Option<Duration> {
        match self {
            RequestError::Throttled { retry_after, .. }
            | RequestError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<kube::Error> for RequestError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => RequestError::from_status(
                s.code,
                &s.message,
                s.details.as_ref().map_or(0, |d| d.retry_after_seconds),
            ),
            kube::Error::SerdeError(e) => RequestError::Decode(e.to_string()),
            other => RequestError::Transport(chain(&other)),
        }
    }
}

/// An error and its sources, `a: b: c` (kube's transport errors say little at the top).
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// What the state machine asks of the API server.
#[async_trait]
pub(super) trait ListWatch: Send + Sync {
    /// One page of a list (the first page when `continue_token` is `None`).
    async fn list(&self, continue_token: Option<String>) -> Result<ListPage, RequestError>;
    /// Opens a watch; events follow on the stream.
    async fn watch(&self, from: WatchFrom) -> Result<EventStream, RequestError>;
}

/// [`ListWatch`] over kube's `Api`, with the informer's selectors and timeouts.
pub(super) struct KubeListWatch {
    /// Every field kept.
    api: Api<RawObject>,
    /// The same resource parsed without `metadata.managedFields` (when the transforms drop
    /// it anyway): list and watch go through it then.
    trimmed: Option<Api<RawObject<DropManagedFields>>>,
    /// The same, keeping only the summary of `managedFields` that `changedBy` needs (when
    /// the transforms drop them and changes are attributed).
    summarized: Option<Api<RawObject<SummarizeManagedFields>>>,
    /// The resource, for the watch's `Api` (see [`Unparsed`]).
    resource: kube::core::ApiResource,
    /// What the watch's parse tasks do to each ADDED or MODIFIED object.
    preparer: Arc<Preparer>,
    label_selector: Option<String>,
    field_selector: Option<String>,
    page_size: u32,
}

impl KubeListWatch {
    /// Lists and watches through `api`, parsing without `managedFields` when `trim` (but
    /// their summary when `summarize`).
    pub(super) fn new(
        key: &InformerKey,
        resource: &kube::core::ApiResource,
        api: Api<RawObject>,
        trim: bool,
        summarize: bool,
        page_size: u32,
        preparer: Preparer,
    ) -> Self {
        let trimmed = (trim && !summarize).then(|| reparsed(&api, resource));
        let summarized = (trim && summarize).then(|| reparsed(&api, resource));
        Self {
            api,
            trimmed,
            summarized,
            resource: resource.clone(),
            preparer: Arc::new(preparer),
            label_selector: key.label_selector.clone(),
            field_selector: key.field_selector.clone(),
            page_size,
        }
    }
}

/// `api`'s client and namespace, decoding objects as `K`.
fn reparsed<K>(api: &Api<RawObject>, resource: &kube::core::ApiResource) -> Api<K>
where
    K: kube::Resource<
            DynamicType = kube::core::ApiResource,
            Scope = kube::core::DynamicResourceScope,
        >,
{
    let client = api.clone().into_client();
    match api.namespace() {
        Some(ns) => Api::namespaced_with(client, ns, resource),
        None => Api::all_with(client, resource),
    }
}

/// A request with the informer's deadline.
async fn bounded<T>(f: impl Future<Output = Result<T, kube::Error>>) -> Result<T, RequestError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r.map_err(RequestError::from),
        Err(_) => Err(RequestError::Timeout(REQUEST_TIMEOUT)),
    }
}

#[async_trait]
impl ListWatch for KubeListWatch {
    async fn list(&self, continue_token: Option<String>) -> Result<ListPage, RequestError> {
        let params = ListParams {
            label_selector: self.label_selector.clone(),
            field_selector: self.field_selector.clone(),
            limit: Some(self.page_size),
            continue_token,
            ..ListParams::default()
        };
        match (&self.summarized, &self.trimmed) {
            (Some(api), _) => bounded(api.list(&params)).await.map(page),
            (None, Some(api)) => bounded(api.list(&params)).await.map(page),
            (None, None) => bounded(self.api.list(&params)).await.map(page),
        }
    }

    async fn watch(&self, from: WatchFrom) -> Result<EventStream, RequestError> {
        let params = WatchParams {
            label_selector: self.label_selector.clone(),
            field_selector: self.field_selector.clone(),
            timeout: Some(WATCH_TIMEOUT_SECS),
            bookmarks: true,
            send_initial_events: from == WatchFrom::InitialEvents,
        };
        let rv = match &from {
            WatchFrom::Version(rv) => rv.as_str(),
            WatchFrom::InitialEvents => "",
        };
        // Objects are parsed apart from the reading of the stream (see `Unparsed`), with the
        // same policy as the lists.
        let (api, resource, preparer) = (&self.api, &self.resource, &self.preparer);
        match (&self.summarized, &self.trimmed) {
            (Some(_), _) => {
                let api = reparsed::<Unparsed<SummarizeManagedFields>>(api, resource);
                bounded(api.watch(&params, rv))
                    .await
                    .map(|s| events(s, preparer.clone()))
            }
            (None, Some(_)) => {
                let api = reparsed::<Unparsed<DropManagedFields>>(api, resource);
                bounded(api.watch(&params, rv))
                    .await
                    .map(|s| events(s, preparer.clone()))
            }
            (None, None) => {
                let api = reparsed::<Unparsed<KeepAll>>(api, resource);
                bounded(api.watch(&params, rv))
                    .await
                    .map(|s| events(s, preparer.clone()))
            }
        }
    }
}

fn page<P: ParsePolicy>(l: kube::core::ObjectList<RawObject<P>>) -> ListPage {
    ListPage {
        items: l.items.into_iter().map(|o| o.value).collect(),
        resource_version: l.metadata.resource_version.unwrap_or_default(),
        continue_token: l.metadata.continue_.filter(|c| !c.is_empty()),
    }
}

/// The watch as the informer reads it: lines read and parsed ahead, on tasks of their own,
/// and handed over in order.
fn events<P: ParsePolicy>(
    s: impl futures::Stream<Item = Result<WatchEvent<Unparsed<P>>, kube::Error>> + Send + 'static,
    preparer: Arc<Preparer>,
) -> EventStream {
    let parsed = s.map(move |r| event(r, &preparer)).buffered(PARSING);
    super::ahead::read_ahead(parsed.boxed())
}

/// One watch line, decoded; an object is parsed (an added or modified one also prepared) on
/// a task of its own, so that the next lines' objects are parsed beside it. Each comes with
/// when its line arrived (objects: before they were parsed).
fn event<P: ParsePolicy>(
    r: Result<WatchEvent<Unparsed<P>>, kube::Error>,
    preparer: &Arc<Preparer>,
) -> BoxFuture<'static, Item> {
    let now = std::time::Instant::now;
    let ready = |item: Item| futures::future::ready(item).boxed();
    match r {
        Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => {
            let preparer = preparer.clone();
            apart(o, move |o| {
                let prepared = match preparer.prepare_json(o.json()) {
                    // No tree needed: the JSON is rewritten from the line's bytes.
                    Some(prepared) => prepared,
                    None => preparer.prepare(o.parse()?.value),
                };
                Ok(RawEvent::Applied(preparer.look_ahead(prepared)))
            })
        }
        Ok(WatchEvent::Deleted(o)) => parse_apart(o, RawEvent::Deleted),
        Ok(WatchEvent::Bookmark(b)) => ready((
            now(),
            Ok(RawEvent::Bookmark {
                initial_events_end: b.metadata.annotations.contains_key(INITIAL_EVENTS_END),
                resource_version: b.metadata.resource_version,
            }),
        )),
        Ok(WatchEvent::Error(s)) => ready((
            now(),
            Err(RequestError::from_status(
                s.code,
                &s.message,
                s.details.as_ref().map_or(0, |d| d.retry_after_seconds),
            )),
        )),
        Err(kube::Error::SerdeError(e)) => ready((now(), Ok(RawEvent::Undecodable(e.to_string())))),
        Err(e) => ready((now(), Err(e.into()))),
    }
}

/// Parses `o` and makes it an `event` on a task of its own; an object that does not decode is
/// an item of the stream like a line that does not.
fn parse_apart<P: ParsePolicy>(
    o: Unparsed<P>,
    event: impl FnOnce(Value) -> RawEvent + Send + 'static,
) -> BoxFuture<'static, Item> {
    apart(o, move |o| o.parse().map(|object| event(object.value)))
}

/// Makes `o` an event with `decode` on a task of its own.
fn apart<P: ParsePolicy>(
    o: Unparsed<P>,
    decode: impl FnOnce(Unparsed<P>) -> Result<RawEvent, serde_json::Error> + Send + 'static,
) -> BoxFuture<'static, Item> {
    let arrived = o.arrived();
    let parsing = tokio::spawn(async move { decode(o) });
    async move {
        let item = match parsing.await {
            Ok(Ok(event)) => Ok(event),
            Ok(Err(e)) => Ok(RawEvent::Undecodable(e.to_string())),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down: so is the watch.
            Err(e) => Err(RequestError::Transport(format!("watch abandoned: {e}"))),
        };
        (arrived, item)
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_what_the_informer_does_about_them() {
        assert_eq!(
            RequestError::from_status(410, "too old", 0),
            RequestError::Gone("too old".into())
        );
        assert!(matches!(
            RequestError::from_status(403, "no", 0),
            RequestError::Forbidden { code: 403, .. }
        ));
        let throttled = RequestError::from_status(429, "slow down", 7);
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(7)));
        assert!(matches!(
            RequestError::from_status(422, "sendInitialEvents is forbidden", 0),
            RequestError::Rejected { code: 422, .. }
        ));
        assert!(matches!(
            RequestError::from_status(503, "busy", 0),
            RequestError::Server {
                code: 503,
                retry_after: None,
                ..
            }
        ));
        assert_eq!(
            RequestError::from_status(401, "who", 0).to_string(),
            "401 Unauthorized: who"
        );
    }

    #[tokio::test]
    async fn a_watch_line_that_does_not_decode_is_an_item_not_the_end_of_the_stream() {
        let bad = serde_json::from_str::<Value>("{").unwrap_err();
        let (_, item) = event::<KeepAll>(Err(kube::Error::SerdeError(bad)), &preparer()).await;
        assert!(matches!(item, Ok(RawEvent::Undecodable(_))), "{item:?}");
    }

    /// Prepares ConfigMaps with the default transforms (`managedFields` dropped).
    fn preparer() -> Arc<Preparer> {
        use crate::event::transform::{ObjectTransform, TransformConfig};
        let transform = ObjectTransform::new(&TransformConfig::default(), "t").expect("defaults");
        Arc::new(Preparer::new("v1", "ConfigMap", Arc::new(transform)))
    }

    /// A watch line as kube decodes it.
    fn line<P: ParsePolicy>(json: &str) -> Result<WatchEvent<Unparsed<P>>, kube::Error> {
        serde_json::from_str(json).map_err(kube::Error::SerdeError)
    }

    #[tokio::test]
    async fn watch_objects_are_parsed_and_prepared_apart_and_handed_over_in_order() {
        let lines: Vec<_> = (0..100)
            .map(|i| {
                line::<DropManagedFields>(&format!(
                    r#"{{"type":"MODIFIED","object":{{"kind":"ConfigMap","metadata":{{"name":"c{i}","managedFields":[{{"manager":"m"}}]}},"data":{{"k":"<&>\u003c"}}}}}}"#
                ))
            })
            .collect();
        let preparer = preparer();
        let items: Vec<Item> = events(futures::stream::iter(lines), preparer.clone())
            .collect()
            .await;
        assert_eq!(items.len(), 100);
        for (i, (_, item)) in items.into_iter().enumerate() {
            let Ok(RawEvent::Applied(p)) = item else {
                panic!("event {i}: {item:?}")
            };
            // The type meta filled in, managedFields dropped: what the informer's own
            // preparation makes of the same object.
            let raw = serde_json::json!({"kind": "ConfigMap", "metadata": {"name": format!("c{i}")},
                "data": {"k": "<&><"}});
            let (expected, managers) = preparer.transform(raw);
            assert_eq!(expected["apiVersion"], "v1");
            assert_eq!(p.managers.is_some(), managers.is_some());
            assert_eq!(
                p.json,
                serde_json::to_vec(&expected).unwrap(),
                "the JSON is the prepared object's, as the cache and the envelope encode it"
            );
            assert_eq!(p.ident, crate::event::object::Ident::of(&expected));
            assert_eq!(p.ident.name, format!("c{i}"));
        }
    }

    #[tokio::test]
    async fn a_watch_object_that_does_not_parse_is_an_item_that_does_not_quote_it() {
        let items: Vec<Item> = events(
            futures::stream::iter(vec![
                line::<DropManagedFields>(r#"{"type":"ADDED","object":"password=hunter2"}"#),
                line::<DropManagedFields>(
                    r#"{"type":"ADDED","object":{"metadata":{"name":"ok"}}}"#,
                ),
            ]),
            preparer(),
        )
        .collect()
        .await;
        match &items[0].1 {
            Ok(RawEvent::Undecodable(e)) => assert!(!e.contains("hunter2"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&items[1].1, Ok(RawEvent::Applied(_))),
            "{:?}",
            items[1].1
        );
    }
}
