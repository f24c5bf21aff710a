//! Scripted API answers for the informer's unit tests: every list page and watch the state
//! machine asks for is taken, in order, from the script.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{Value, json};

use super::api::{EventStream, ListPage, ListWatch, RawEvent, RequestError, WatchFrom};

/// What a scripted watch does after its events.
#[derive(Debug, Clone, Copy)]
pub(super) enum Then {
    /// The server ends the stream.
    End,
    /// Nothing more, ever (a half-open connection).
    Hang,
    /// After this long, one more MODIFIED event (`default/late`), then nothing.
    LateEvent(Duration),
}

/// One scripted watch: its events, then what happens.
pub(super) type ScriptedWatch = (Vec<Result<RawEvent, RequestError>>, Then);

/// One scripted list answer, given once its gate (if any) is notified.
type ScriptedList = (
    Option<Arc<tokio::sync::Notify>>,
    Result<ListPage, RequestError>,
);

/// Answers in order; records what was asked.
#[derive(Default)]
pub(super) struct Script {
    lists: Mutex<VecDeque<ScriptedList>>,
    watches: Mutex<VecDeque<Result<ScriptedWatch, RequestError>>>,
    calls: Mutex<Vec<String>>,
}

impl Script {
    /// The answer to the next list request.
    pub(super) fn list(self, answer: Result<ListPage, RequestError>) -> Self {
        self.lists.lock().unwrap().push_back((None, answer));
        self
    }

    /// The answer to the next list request, given only once `gate` is notified.
    pub(super) fn list_after(
        self,
        gate: Arc<tokio::sync::Notify>,
        answer: Result<ListPage, RequestError>,
    ) -> Self {
        self.lists.lock().unwrap().push_back((Some(gate), answer));
        self
    }

    /// The answer to the next watch request.
    pub(super) fn watch(self, answer: Result<ScriptedWatch, RequestError>) -> Self {
        self.watches.lock().unwrap().push_back(answer);
        self
    }

    /// The requests so far: `list(-)`, `list(<token>)`, `watch(<rv>)`, `watch(initial-events)`.
    pub(super) fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

fn exhausted() -> RequestError {
    RequestError::Transport("the script has no more answers".into())
}

#[async_trait]
impl ListWatch for Script {
    async fn list(&self, continue_token: Option<String>) -> Result<ListPage, RequestError> {
        self.calls.lock().unwrap().push(format!(
            "list({})",
            continue_token.as_deref().unwrap_or("-")
        ));
        let next = self.lists.lock().unwrap().pop_front();
        let Some((gate, answer)) = next else {
            return Err(exhausted());
        };
        if let Some(gate) = gate {
            gate.notified().await;
        }
        answer
    }

    async fn watch(&self, from: WatchFrom) -> Result<EventStream, RequestError> {
        self.calls.lock().unwrap().push(match &from {
            WatchFrom::Version(rv) => format!("watch({rv})"),
            WatchFrom::InitialEvents => "watch(initial-events)".into(),
        });
        let next = self.watches.lock().unwrap().pop_front();
        let (events, then) = next.unwrap_or_else(|| Err(exhausted()))?;
        let head = futures::stream::iter(events).map(arrived_now);
        Ok(match then {
            Then::End => head.boxed(),
            Then::Hang => head.chain(futures::stream::pending()).boxed(),
            Then::LateEvent(after) => head
                .chain(futures::stream::once(async move {
                    tokio::time::sleep(after).await;
                    arrived_now(Ok(RawEvent::Modified(cm("late", "99"))))
                }))
                .chain(futures::stream::pending())
                .boxed(),
        })
    }
}

/// A scripted watch item, arriving as it is read.
fn arrived_now(
    item: Result<RawEvent, RequestError>,
) -> (std::time::Instant, Result<RawEvent, RequestError>) {
    (std::time::Instant::now(), item)
}

/// A script the test keeps a handle on (to read [`Script::calls`]).
#[async_trait]
impl ListWatch for Arc<Script> {
    async fn list(&self, continue_token: Option<String>) -> Result<ListPage, RequestError> {
        self.as_ref().list(continue_token).await
    }

    async fn watch(&self, from: WatchFrom) -> Result<EventStream, RequestError> {
        self.as_ref().watch(from).await
    }
}

/// A ConfigMap `default/<name>` at `rv`, uid `uid-<name>`, as a server sends it.
pub(super) fn cm(name: &str, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
            "resourceVersion": rv},
        "data": {"rv": rv}})
}

/// A list page.
pub(super) fn page(items: &[Value], rv: &str, continue_token: Option<&str>) -> ListPage {
    ListPage {
        items: items.to_vec(),
        resource_version: rv.to_string(),
        continue_token: continue_token.map(str::to_string),
    }
}

/// The ConfigMap informer's key and resource.
pub(crate) fn configmaps() -> (super::InformerKey, kube::core::ApiResource) {
    let key = super::InformerKey {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: None,
        label_selector: None,
        field_selector: None,
    };
    let resource = kube::core::ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        plural: "configmaps".into(),
    };
    (key, resource)
}
