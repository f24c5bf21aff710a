//! The list/watch protocol of one informer as a state machine: a private [`State`] and
//! [`Machine::step`], which makes one request (or reads one watch event) and returns what
//! happened and the next state — the shape of kube-runtime's `watcher`, driven by the
//! informer's task ([`super::informer`]).
//!
//! ```text
//!             ┌──────────── 410 / idle / error (initial stream) ───────────────┐
//!             ▼                                                                │
//!   Empty ──(paginate, or refused)──► Paging ──last page──► Resuming ──► Watching
//!     │                               │  ▲ 410 on continue:                ▲   │
//!     │                               └──┘ start over, fresh buffer        │   │ closed / idle:
//!     └─(stream)─► Streaming ──initial-events-end bookmark─────────────────┘   │ resume at once;
//!                                                                          │   │ error: backoff;
//!                  any failed request ──► Waiting(backoff) ──► same state  └───┘ 410: Empty
//! ```
//!
//! Errors are values ([`WatchError`]); recovery is a transition, always through `Waiting`
//! with a delay from the shared backoff policy (`BackoffPolicy::INFORMER`,
//! `BackoffPolicy::FORBIDDEN` for 401/403, `Retry-After` as a floor). A list — paginated or
//! streamed — is collected in a [`Staging`] and handed over whole ([`Output::Listed`]), so
//! a list that starts over (expired continue token, broken stream) starts from an empty
//! buffer and readers never see half of one.
//!
//! The machine keeps the informer's protocol counters (events, decode errors, restarts by
//! reason, last heard) and its readiness problem; the cache and the handlers are the
//! driver's.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tokio::time::{Instant, Sleep};
use tracing::{info, warn};

use super::api::{EventStream, ListWatch, RawEvent, RequestError, WatchFrom};
use super::config::InitialList;
use super::informer::InformerStats;
use super::prepare::{Ahead, Prepared};
use super::store::{Staging, Store};
use crate::backoff::{Backoff, BackoffPolicy};
use crate::event::Doc;
use crate::event::object::{self, Ident};

/// Where an informer is in its list/watch protocol.
pub(super) enum State {
    /// Nothing listed (start, or after 410 Gone): begin a list, streamed or paginated.
    Empty,
    /// A paginated list: the pages so far, and where the next one starts.
    Paging {
        /// `None`: the first page.
        continue_token: Option<String>,
        /// The objects of the pages so far.
        staged: Staging,
    },
    /// A streaming list: initial ADDED events collected until the
    /// `k8s.io/initial-events-end` bookmark; the same stream then carries the changes.
    Streaming {
        /// The watch with `sendInitialEvents`.
        stream: EventStream,
        /// The initial objects so far.
        staged: Staging,
    },
    /// Listed, or a watch ended: open a watch from this resourceVersion.
    Resuming {
        /// The last resourceVersion seen (list, event or bookmark).
        resource_version: String,
    },
    /// Watching; every event and bookmark moves `resource_version`.
    Watching {
        /// The last resourceVersion seen.
        resource_version: String,
        /// The open watch.
        stream: EventStream,
    },
    /// After a failure: wait, then go on with `next`.
    Waiting {
        /// How long.
        delay: Duration,
        /// The state to retry.
        next: Box<State>,
    },
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Empty => f.write_str("Empty"),
            State::Paging {
                continue_token,
                staged,
            } => f
                .debug_struct("Paging")
                .field("continue_token", continue_token)
                .field("staged", &staged.len())
                .finish(),
            State::Streaming { staged, .. } => f
                .debug_struct("Streaming")
                .field("staged", &staged.len())
                .finish(),
            State::Resuming { resource_version } => f
                .debug_struct("Resuming")
                .field("resource_version", resource_version)
                .finish(),
            State::Watching {
                resource_version, ..
            } => f
                .debug_struct("Watching")
                .field("resource_version", resource_version)
                .finish(),
            State::Waiting { delay, next } => f
                .debug_struct("Waiting")
                .field("delay", delay)
                .field("next", next)
                .finish(),
        }
    }
}

/// What one step produced.
#[derive(Debug)]
pub(super) enum Output {
    /// A complete list (transformed objects): swap it in and announce the differences.
    Listed {
        /// The objects.
        staged: Staging,
        /// The list's resourceVersion: the cache is this state once swapped in.
        resource_version: String,
    },
    /// A change from the watch (transformed object).
    Changed(Change),
    /// An open watch was abandoned and will be opened again.
    Restarted(RestartReason),
    /// A request failed; the next state waits `retry_in`, then retries.
    Failed {
        /// What failed.
        error: WatchError,
        /// The backoff before the retry.
        retry_in: Duration,
    },
    /// An event that could not be decoded was skipped (and counted).
    Skipped,
}

/// A watch event for the cache.
#[derive(Debug)]
pub(super) enum Change {
    /// ADDED or MODIFIED: the object as it is now (known only as JSON and its name when the
    /// watch's parse task prepared it), and the informer's work on it done ahead there.
    Applied(Arc<Doc>, Option<Box<Ahead>>),
    /// DELETED: the object's last state.
    Deleted(Value),
}

/// Why an open watch was abandoned (`lookout_watch_restarts_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// Nothing heard for `watch.idleTimeout`; resumed from the last resourceVersion.
    Idle,
    /// The server ended the stream (its timeout, or a connection closed cleanly); resumed.
    Closed,
    /// The stream broke or carried an ERROR event; resumed after a backoff.
    Error,
    /// 410 Gone: the resourceVersion left the server's history; re-listed.
    Gone,
}

impl RestartReason {
    /// Every reason, in metric order.
    pub const ALL: [RestartReason; 4] = [
        RestartReason::Idle,
        RestartReason::Closed,
        RestartReason::Error,
        RestartReason::Gone,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Idle => "idle",
            RestartReason::Closed => "closed",
            RestartReason::Error => "error",
            RestartReason::Gone => "gone",
        }
    }

    /// Position in [`RestartReason::ALL`].
    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// The request verb, as RBAC names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// A list page.
    List,
    /// A watch (a streaming list is a watch too).
    Watch,
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verb::List => "list",
            Verb::Watch => "watch",
        })
    }
}

/// Why a list or watch request failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// 401/403: the agent's credentials or RBAC do not allow the request.
    #[error(
        "not allowed to {verb} {resource} ({source}); grant the agent's service account \
         `{verb}` on {resource}, the informer retries slowly until then"
    )]
    Forbidden {
        /// What was asked.
        verb: Verb,
        /// Resource and scope, e.g. `configmaps in all namespaces`.
        resource: String,
        /// The server's answer.
        #[source]
        source: RequestError,
    },
    /// Any other failure (unreachable, 5xx, 429, timeout, broken stream).
    #[error("cannot {verb} {resource}: {source}")]
    Request {
        /// What was asked.
        verb: Verb,
        /// Resource and scope.
        resource: String,
        /// What went wrong.
        #[source]
        source: RequestError,
    },
    /// `initialList: stream`, and the server answered a streaming list with a plain watch.
    #[error(
        "the API server does not stream the initial list of {resource} (a plain bookmark \
         came before `k8s.io/initial-events-end`); set `initialList: paginate` or `auto`"
    )]
    NotStreamed {
        /// Resource and scope.
        resource: String,
    },
}

impl WatchError {
    fn new(verb: Verb, resource: &str, source: RequestError) -> Self {
        let resource = resource.to_string();
        match source {
            RequestError::Forbidden { .. } => WatchError::Forbidden {
                verb,
                resource,
                source,
            },
            source => WatchError::Request {
                verb,
                resource,
                source,
            },
        }
    }

    /// 401/403.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, WatchError::Forbidden { .. })
    }
}

/// What an informer's machine is told at start.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    /// `watch.idleTimeout`.
    pub idle_timeout: Duration,
    /// `resources[].initialList`.
    pub initial_list: InitialList,
}

/// How an open watch's next read ended.
enum Next {
    Item(Result<RawEvent, RequestError>),
    Closed,
    Idle,
}

/// The state machine's context: the API, how objects are prepared and staged, counters,
/// the backoff, and the idle timer.
pub(super) struct Machine<'a> {
    api: &'a dyn ListWatch,
    /// The informer's one transform helper (type meta, then the object transform).
    prepare: &'a (dyn Fn(Value) -> Value + Send + Sync),
    /// What is left of preparing an object the watch prepared: the informer's bookkeeping.
    observe: &'a Observe<'a>,
    store: &'a Store,
    stats: &'a InformerStats,
    /// `configmaps in all namespaces`: the resource in messages.
    resource: &'a str,
    settings: Settings,
    /// The server refused a streaming list (`auto`): paginate from now on.
    streaming_refused: bool,
    backoff: Backoff,
    forbidden: Backoff,
    /// Last time the open watch was heard from.
    heard_at: Instant,
    /// Fires at (or after) `heard_at + idle_timeout`; re-armed only when it fires early, so
    /// events do not pay for a timer each.
    idle: Pin<Box<Sleep>>,
    /// The open watch delivered something (a watch closed without delivering anything is
    /// re-opened after a backoff, not at once).
    delivered: bool,
    /// When the last watch item read arrived, before it was parsed ([`Machine::arrival`]).
    arrived: std::time::Instant,
}

/// See [`Machine::observe`]: an object's cache key and the summary of its `managedFields`.
pub(super) type Observe<'a> =
    dyn Fn(&str, Option<crate::event::changed_by::Managers>) + Send + Sync + 'a;

impl<'a> Machine<'a> {
    /// A machine over `api` staging into `store`'s codec and counting into `stats`.
    pub(super) fn new(
        api: &'a dyn ListWatch,
        prepare: &'a (dyn Fn(Value) -> Value + Send + Sync),
        observe: &'a Observe<'a>,
        store: &'a Store,
        stats: &'a InformerStats,
        resource: &'a str,
        settings: Settings,
    ) -> Self {
        Self {
            api,
            prepare,
            observe,
            store,
            stats,
            resource,
            settings,
            streaming_refused: false,
            backoff: BackoffPolicy::INFORMER.start(),
            forbidden: BackoffPolicy::FORBIDDEN.start(),
            heard_at: Instant::now(),
            idle: Box::pin(tokio::time::sleep(settings.idle_timeout)),
            delivered: false,
            arrived: std::time::Instant::now(),
        }
    }

    /// Makes one request, or reads one event, and returns what happened and where to go next.
    pub(super) async fn step(&mut self, state: State) -> (Option<Output>, State) {
        match state {
            State::Empty => self.start_list().await,
            State::Paging {
                continue_token,
                staged,
            } => self.next_page(continue_token, staged).await,
            State::Streaming { stream, staged } => self.stream_initial(stream, staged).await,
            State::Resuming { resource_version } => self.resume(resource_version).await,
            State::Watching {
                resource_version,
                stream,
            } => self.watch(resource_version, stream).await,
            State::Waiting { delay, next } => {
                tokio::time::sleep(delay).await;
                (None, *next)
            }
        }
    }

    async fn start_list(&mut self) -> (Option<Output>, State) {
        let stream = match self.settings.initial_list {
            InitialList::Paginate => false,
            InitialList::Auto => !self.streaming_refused,
            InitialList::Stream => true,
        };
        if !stream {
            return (None, self.first_page());
        }
        match self.api.watch(WatchFrom::InitialEvents).await {
            Ok(stream) => {
                self.opened();
                let staged = self.store.staging();
                (None, State::Streaming { stream, staged })
            }
            Err(RequestError::Rejected { code, message })
                if self.settings.initial_list == InitialList::Auto =>
            {
                self.streaming_refused = true;
                info!(resource = self.resource, code, %message,
                    "the API server refuses streaming lists; listing page by page from now on");
                (None, self.first_page())
            }
            Err(e) => self.fail(Verb::Watch, e, State::Empty),
        }
    }

    fn first_page(&self) -> State {
        State::Paging {
            continue_token: None,
            staged: self.store.staging(),
        }
    }

    async fn next_page(
        &mut self,
        continue_token: Option<String>,
        mut staged: Staging,
    ) -> (Option<Output>, State) {
        let restarting = continue_token.is_some();
        let page = match self.api.list(continue_token.clone()).await {
            Ok(page) => page,
            // The continue token outlived the server's history: the pages so far belong to a
            // snapshot that is gone, so they go too.
            Err(RequestError::Gone(_)) if restarting => {
                info!(
                    resource = self.resource,
                    "list continue token expired (410); listing again from the first page"
                );
                return (None, self.first_page());
            }
            Err(e) => {
                return self.fail(
                    Verb::List,
                    e,
                    State::Paging {
                        continue_token,
                        staged,
                    },
                );
            }
        };
        self.heard();
        self.succeeded();
        for obj in page.items {
            self.stage(&mut staged, obj);
        }
        match page.continue_token {
            Some(token) => (
                None,
                State::Paging {
                    continue_token: Some(token),
                    staged,
                },
            ),
            None if page.resource_version.is_empty() => self.fail(
                Verb::List,
                RequestError::Decode("a list without a resourceVersion".into()),
                State::Empty,
            ),
            None => (
                Some(Output::Listed {
                    staged,
                    resource_version: page.resource_version.clone(),
                }),
                State::Resuming {
                    resource_version: page.resource_version,
                },
            ),
        }
    }

    async fn stream_initial(
        &mut self,
        mut stream: EventStream,
        mut staged: Staging,
    ) -> (Option<Output>, State) {
        match self.next_or_idle(&mut stream).await {
            #[cfg(test)]
            Next::Item(Ok(RawEvent::Added(obj) | RawEvent::Modified(obj))) => {
                self.delivered();
                self.stage(&mut staged, obj);
                (None, State::Streaming { stream, staged })
            }
            Next::Item(Ok(RawEvent::Applied(prepared))) => {
                self.delivered();
                let mut ignored = String::new();
                if let Some((ident, json, ahead)) = self.accept_prepared(prepared, &mut ignored) {
                    match ahead {
                        Some(ahead) => staged.insert_packed(ident.cache_key(), ahead.packed),
                        None => staged.insert_json(ident.cache_key(), &json),
                    }
                }
                (None, State::Streaming { stream, staged })
            }
            Next::Item(Ok(RawEvent::Deleted(obj))) => {
                // Not sent during initial events (KEP-3157); harmless if it is.
                self.delivered();
                staged.remove(&object::cache_key(&obj));
                (None, State::Streaming { stream, staged })
            }
            Next::Item(Ok(RawEvent::Bookmark {
                resource_version,
                initial_events_end: true,
            })) => {
                self.delivered();
                (
                    Some(Output::Listed {
                        staged,
                        resource_version: resource_version.clone(),
                    }),
                    State::Watching {
                        resource_version,
                        stream,
                    },
                )
            }
            Next::Item(Ok(RawEvent::Bookmark { .. })) => {
                // A server that ignores `sendInitialEvents` watches from "now" and sends
                // ordinary bookmarks, never the end marker.
                if self.settings.initial_list == InitialList::Auto {
                    self.streaming_refused = true;
                    warn!(
                        resource = self.resource,
                        "the API server ignored the streaming list request; listing page by page from now on"
                    );
                    return (None, self.first_page());
                }
                let error = WatchError::NotStreamed {
                    resource: self.resource.to_string(),
                };
                let delay = self.backoff.next_delay();
                self.report(&error);
                (
                    Some(Output::Failed {
                        error,
                        retry_in: delay,
                    }),
                    State::Waiting {
                        delay,
                        next: Box::new(State::Empty),
                    },
                )
            }
            Next::Item(Ok(RawEvent::Undecodable(why))) => {
                self.skipped(&why);
                (Some(Output::Skipped), State::Streaming { stream, staged })
            }
            Next::Item(Err(e)) => {
                self.restarted(if matches!(e, RequestError::Gone(_)) {
                    RestartReason::Gone
                } else {
                    RestartReason::Error
                });
                self.fail(Verb::Watch, e, State::Empty)
            }
            Next::Closed => {
                self.restarted(RestartReason::Closed);
                let e = RequestError::Transport(
                    "the stream ended before the initial-events-end bookmark".into(),
                );
                self.fail(Verb::Watch, e, State::Empty)
            }
            Next::Idle => {
                self.restarted(RestartReason::Idle);
                (Some(Output::Restarted(RestartReason::Idle)), State::Empty)
            }
        }
    }

    async fn resume(&mut self, resource_version: String) -> (Option<Output>, State) {
        match self
            .api
            .watch(WatchFrom::Version(resource_version.clone()))
            .await
        {
            Ok(stream) => {
                self.opened();
                (
                    None,
                    State::Watching {
                        resource_version,
                        stream,
                    },
                )
            }
            Err(RequestError::Gone(message)) => {
                info!(resource = self.resource, rv = %resource_version, %message,
                    "watch history expired (410); re-listing");
                (None, State::Empty)
            }
            Err(e) => self.fail(Verb::Watch, e, State::Resuming { resource_version }),
        }
    }

    async fn watch(
        &mut self,
        mut resource_version: String,
        mut stream: EventStream,
    ) -> (Option<Output>, State) {
        let (output, state) = match self.next_or_idle(&mut stream).await {
            #[cfg(test)]
            Next::Item(Ok(RawEvent::Added(obj) | RawEvent::Modified(obj))) => {
                self.delivered();
                match self.accept(obj, &mut resource_version) {
                    Some(obj) => (
                        Some(Output::Changed(Change::Applied(
                            Doc::new(Arc::new(obj)),
                            None,
                        ))),
                        None,
                    ),
                    None => (Some(Output::Skipped), None),
                }
            }
            Next::Item(Ok(RawEvent::Applied(prepared))) => {
                self.delivered();
                match self.accept_prepared(prepared, &mut resource_version) {
                    Some((ident, json, ahead)) => (
                        Some(Output::Changed(Change::Applied(
                            Doc::named(json, ident),
                            ahead,
                        ))),
                        None,
                    ),
                    None => (Some(Output::Skipped), None),
                }
            }
            Next::Item(Ok(RawEvent::Deleted(obj))) => {
                self.delivered();
                match self.accept(obj, &mut resource_version) {
                    Some(obj) => (Some(Output::Changed(Change::Deleted(obj))), None),
                    None => (Some(Output::Skipped), None),
                }
            }
            Next::Item(Ok(RawEvent::Bookmark {
                resource_version: rv,
                ..
            })) => {
                self.delivered();
                if !rv.is_empty() {
                    resource_version = rv;
                }
                (None, None)
            }
            Next::Item(Ok(RawEvent::Undecodable(why))) => {
                self.skipped(&why);
                (Some(Output::Skipped), None)
            }
            Next::Item(Err(RequestError::Gone(message))) => {
                self.restarted(RestartReason::Gone);
                info!(resource = self.resource, rv = %resource_version, %message,
                    "watch history expired (410); re-listing");
                (
                    Some(Output::Restarted(RestartReason::Gone)),
                    Some(State::Empty),
                )
            }
            Next::Item(Err(e)) => {
                self.restarted(RestartReason::Error);
                let (output, state) =
                    self.fail(Verb::Watch, e, State::Resuming { resource_version });
                return (output, state);
            }
            Next::Closed => {
                self.restarted(RestartReason::Closed);
                let resume = State::Resuming { resource_version };
                let state = if self.delivered {
                    resume
                } else {
                    State::Waiting {
                        delay: self.backoff.next_delay(),
                        next: Box::new(resume),
                    }
                };
                return (Some(Output::Restarted(RestartReason::Closed)), state);
            }
            Next::Idle => {
                self.restarted(RestartReason::Idle);
                return (
                    Some(Output::Restarted(RestartReason::Idle)),
                    State::Resuming { resource_version },
                );
            }
        };
        let state = state.unwrap_or(State::Watching {
            resource_version,
            stream,
        });
        (output, state)
    }

    /// Prepares a listed object and stages it.
    fn stage(&self, staged: &mut Staging, obj: Value) {
        let mut ignored = String::new();
        if let Some(obj) = self.accept(obj, &mut ignored) {
            staged.insert(object::cache_key(&obj), &obj);
        }
    }

    /// Checks that an object is one (a JSON object with a name), moves the resume point to
    /// its resourceVersion and prepares it; `None` (counted) for anything else.
    fn accept(&self, obj: Value, resource_version: &mut String) -> Option<Value> {
        self.identified(&obj, resource_version)
            .then(|| (self.prepare)(obj))
    }

    /// True when `obj` is an object with a name (its resourceVersion is then the resume
    /// point); else counted as skipped.
    fn identified(&self, obj: &Value, resource_version: &mut String) -> bool {
        // Anything but an object has no name either.
        self.named(
            object::name(obj),
            object::resource_version(obj),
            resource_version,
        )
    }

    /// [`Machine::identified`] from an object's name and resourceVersion.
    fn named(&self, name: &str, rv: &str, resource_version: &mut String) -> bool {
        if name.is_empty() {
            self.skipped("an object without metadata.name");
            return false;
        }
        if !rv.is_empty() {
            rv.clone_into(resource_version);
        }
        true
    }

    /// [`Machine::accept`] for an object the watch prepared: only the informer's bookkeeping
    /// is left; the object and its JSON.
    fn accept_prepared(
        &self,
        prepared: Prepared,
        resource_version: &mut String,
    ) -> Option<(Ident, Bytes, Option<Box<Ahead>>)> {
        let Prepared {
            ident,
            json,
            managers,
            ahead,
        } = prepared;
        if !self.named(&ident.name, &ident.resource_version, resource_version) {
            return None;
        }
        (self.observe)(&ident.cache_key(), managers);
        Some((ident, json, ahead))
    }

    /// The next item of an open watch, or why there is none.
    async fn next_or_idle(&mut self, stream: &mut EventStream) -> Next {
        loop {
            tokio::select! {
                biased;
                item = stream.next() => {
                    return match item {
                        Some((arrived, item)) => {
                            self.arrived = arrived;
                            self.heard();
                            self.stats.events_received.fetch_add(1, Ordering::Relaxed);
                            Next::Item(item)
                        }
                        None => Next::Closed,
                    };
                }
                () = self.idle.as_mut() => {
                    let deadline = self.heard_at + self.settings.idle_timeout;
                    if Instant::now() >= deadline {
                        return Next::Idle;
                    }
                    self.idle.as_mut().reset(deadline);
                }
            }
        }
    }

    /// When the watch event behind the last [`Output::Changed`] arrived: its line was read,
    /// not yet parsed.
    pub(super) fn arrival(&self) -> std::time::Instant {
        self.arrived
    }

    /// The server answered.
    fn heard(&mut self) {
        self.heard_at = Instant::now();
        self.stats.heard();
    }

    /// A watch was opened: its idle time counts from now.
    fn opened(&mut self) {
        self.heard();
        self.delivered = false;
        self.succeeded();
    }

    /// The open watch delivered something: it works, so the backoff starts over.
    fn delivered(&mut self) {
        if !self.delivered {
            self.delivered = true;
            self.succeeded();
        }
    }

    /// A request worked: failures start from the first delay again, and a readiness problem
    /// they reported is over.
    fn succeeded(&mut self) {
        self.backoff.reset();
        self.forbidden.reset();
        self.stats.clear_problem();
    }

    fn skipped(&self, why: &str) {
        self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
        warn!(
            resource = self.resource,
            why, "skipped a watch event that does not decode"
        );
    }

    fn restarted(&self, reason: RestartReason) {
        self.stats.watch_restarts.inc(reason);
    }

    /// A failed request: report it and wait before `next`.
    fn fail(&mut self, verb: Verb, e: RequestError, next: State) -> (Option<Output>, State) {
        let error = WatchError::new(verb, self.resource, e);
        let delay = match &error {
            WatchError::Forbidden { .. } => self.forbidden.next_delay(),
            WatchError::Request { source, .. } => {
                self.backoff.next_delay_at_least(source.retry_after())
            }
            WatchError::NotStreamed { .. } => self.backoff.next_delay(),
        };
        self.report(&error);
        (
            Some(Output::Failed {
                error,
                retry_in: delay,
            }),
            State::Waiting {
                delay,
                next: Box::new(next),
            },
        )
    }

    /// 401/403 make the informer not ready even after its first list: it is blind.
    fn report(&self, error: &WatchError) {
        self.stats
            .set_problem(error.to_string(), error.is_forbidden());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::informer::testing::{Script, Then, cm, page};

    const IDLE: Duration = Duration::from_secs(30);

    /// A machine's borrowed parts.
    struct Rig {
        script: Script,
        store: Store,
        stats: InformerStats,
        prepare: Box<dyn Fn(Value) -> Value + Send + Sync>,
        /// What the machine observed of prepared objects: their names and summaries.
        observed: std::sync::Arc<std::sync::Mutex<Vec<(String, bool)>>>,
        observe: Box<Observe<'static>>,
    }

    impl Rig {
        fn new(script: Script) -> Self {
            Self {
                script,
                store: Store::default(),
                stats: InformerStats::default(),
                // Stands in for the object transform: visible in what comes out.
                prepare: Box::new(|mut v: Value| {
                    v["prepared"] = json!(true);
                    v
                }),
                observed: Default::default(),
                observe: Box::new(|_, _| {}),
            }
        }

        /// Records what the machine observes of prepared objects.
        fn observing(mut self) -> Self {
            let observed = self.observed.clone();
            self.observe = Box::new(move |key: &str, m| {
                observed
                    .lock()
                    .unwrap()
                    .push((key.to_string(), m.is_some()));
            });
            self
        }

        fn machine(&self, initial_list: InitialList) -> Machine<'_> {
            Machine::new(
                &self.script,
                &*self.prepare,
                &*self.observe,
                &self.store,
                &self.stats,
                "configmaps in all namespaces",
                Settings {
                    idle_timeout: IDLE,
                    initial_list,
                },
            )
        }
    }

    /// An ordinary BOOKMARK at `rv`.
    fn bookmark(rv: &str) -> Result<RawEvent, RequestError> {
        Ok(RawEvent::Bookmark {
            resource_version: rv.into(),
            initial_events_end: false,
        })
    }

    fn names(staged: Staging, store: &Store) -> Vec<String> {
        let mut swapped = store.swap_in(staged);
        swapped.changed().iter().map(|k| k.to_string()).collect()
    }

    fn listed(out: Option<Output>) -> Staging {
        match out {
            Some(Output::Listed { staged, .. }) => staged,
            other => panic!("expected a list, got {other:?}"),
        }
    }

    fn failed(out: Option<Output>) -> WatchError {
        match out {
            Some(Output::Failed { error, .. }) => error,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    fn waiting(state: State) -> (Duration, State) {
        match state {
            State::Waiting { delay, next } => (delay, *next),
            other => panic!("expected Waiting, got {other:?}"),
        }
    }

    async fn watching(m: &mut Machine<'_>, rv: &str) -> State {
        let (out, state) = m
            .step(State::Resuming {
                resource_version: rv.into(),
            })
            .await;
        assert!(out.is_none());
        assert!(matches!(state, State::Watching { .. }), "{state:?}");
        state
    }

    #[tokio::test]
    async fn an_empty_informer_lists_page_by_page_and_hands_over_the_whole_list_at_the_end() {
        let rig = Rig::new(
            Script::default()
                .list(Ok(page(&[cm("a", "1"), cm("b", "2")], "", Some("t1"))))
                .list(Ok(page(&[cm("c", "3")], "9", None))),
        );
        let mut m = rig.machine(InitialList::Paginate);
        let (out, state) = m.step(State::Empty).await;
        assert!(out.is_none());
        let (out, state) = m.step(state).await;
        assert!(out.is_none(), "nothing handed over after the first page");
        assert!(
            matches!(&state, State::Paging { continue_token: Some(t), staged } if t == "t1" && staged.len() == 2),
            "{state:?}"
        );
        let (out, state) = m.step(state).await;
        let staged = listed(out);
        assert!(
            matches!(&state, State::Resuming { resource_version } if resource_version == "9"),
            "{state:?}"
        );
        assert_eq!(
            names(staged, &rig.store),
            ["default/a", "default/b", "default/c"]
        );
        assert_eq!(rig.store.current("default/a").unwrap()["prepared"], true);
        assert_eq!(rig.script.calls(), ["list(-)", "list(t1)"]);
    }

    #[tokio::test]
    async fn a_410_in_the_middle_of_pagination_starts_the_list_over_with_an_empty_buffer() {
        let rig = Rig::new(
            Script::default()
                .list(Ok(page(&[cm("a", "1"), cm("gone", "2")], "", Some("t1"))))
                .list(Err(RequestError::Gone("continue token expired".into())))
                .list(Ok(page(&[cm("a", "1")], "", Some("t2"))))
                .list(Ok(page(&[cm("c", "5")], "12", None))),
        );
        let mut m = rig.machine(InitialList::Paginate);
        let mut state = State::Empty;
        let mut out = None;
        for _ in 0..5 {
            let (o, s) = m.step(state).await;
            state = s;
            if o.is_some() {
                out = o;
                break;
            }
        }
        assert_eq!(
            names(listed(out), &rig.store),
            ["default/a", "default/c"],
            "only the second snapshot, each object once"
        );
        assert_eq!(
            rig.script.calls(),
            ["list(-)", "list(t1)", "list(-)", "list(t2)"]
        );
        assert!(matches!(state, State::Resuming { .. }));
    }

    #[tokio::test]
    async fn a_failed_page_is_retried_after_a_backoff_keeping_the_pages_so_far() {
        let rig = Rig::new(
            Script::default()
                .list(Ok(page(&[cm("a", "1")], "", Some("t1"))))
                .list(Err(RequestError::Transport("connection reset".into()))),
        );
        let mut m = rig.machine(InitialList::Paginate);
        let (_, state) = m.step(State::Empty).await;
        let (_, state) = m.step(state).await;
        let (out, state) = m.step(state).await;
        let e = failed(out);
        assert!(e.to_string().contains("cannot list configmaps"), "{e}");
        let (delay, next) = waiting(state);
        assert!(delay <= BackoffPolicy::INFORMER.min_delay, "{delay:?}");
        assert!(
            matches!(&next, State::Paging { continue_token: Some(t), staged } if t == "t1" && staged.len() == 1),
            "{next:?}"
        );
        assert!(rig.stats.problem().is_some(), "reported");
    }

    #[tokio::test]
    async fn a_listed_informer_watches_from_the_lists_resource_version() {
        let rig = Rig::new(Script::default().watch(Ok((vec![], Then::Hang))));
        let mut m = rig.machine(InitialList::Paginate);
        watching(&mut m, "9").await;
        assert_eq!(rig.script.calls(), ["watch(9)"]);
    }

    #[tokio::test]
    async fn watch_events_come_out_prepared_and_move_the_resume_point() {
        let rig = Rig::new(Script::default().watch(Ok((
            vec![
                Ok(RawEvent::Added(cm("a", "10"))),
                Ok(RawEvent::Modified(cm("a", "11"))),
                Ok(RawEvent::Deleted(cm("a", "12"))),
            ],
            Then::Hang,
        ))));
        let mut m = rig.machine(InitialList::Paginate);
        let mut state = watching(&mut m, "9").await;
        let mut seen = Vec::new();
        for _ in 0..3 {
            let (out, s) = m.step(state).await;
            state = s;
            match out {
                Some(Output::Changed(Change::Applied(o, _))) => {
                    assert_eq!(o["prepared"], true);
                    seen.push(format!("apply {}", object::resource_version(&o)));
                }
                Some(Output::Changed(Change::Deleted(o))) => {
                    seen.push(format!("delete {}", object::resource_version(&o)));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, ["apply 10", "apply 11", "delete 12"]);
        assert!(
            matches!(&state, State::Watching { resource_version, .. } if resource_version == "12")
        );
        assert_eq!(rig.stats.events_received.load(Ordering::Relaxed), 3);
    }

    /// `obj` as the watch's parse tasks hand it over: prepared, with its JSON and a summary
    /// of its writers.
    fn prepared(obj: Value) -> Result<RawEvent, RequestError> {
        let json = Bytes::from(serde_json::to_vec(&obj).unwrap());
        Ok(RawEvent::Applied(Prepared {
            ident: Ident::of(&obj),
            json,
            managers: Some(crate::event::changed_by::Managers::default()),
            ahead: None,
        }))
    }

    #[tokio::test]
    async fn prepared_watch_events_are_only_observed_and_keep_their_json() {
        let rig = Rig::new(Script::default().watch(Ok((
            vec![
                prepared(cm("a", "10")),
                prepared(json!({"metadata": {"namespace": "default"}})),
                prepared(cm("b", "11")),
            ],
            Then::Hang,
        ))))
        .observing();
        let mut m = rig.machine(InitialList::Paginate);
        let mut state = watching(&mut m, "9").await;
        let mut applied = Vec::new();
        for _ in 0..3 {
            let (out, s) = m.step(state).await;
            state = s;
            match out {
                Some(Output::Changed(Change::Applied(doc, _))) => {
                    assert!(
                        !doc.has_tree(),
                        "handed over as the watch's JSON, its tree not rebuilt"
                    );
                    assert!(doc.get("prepared").is_none(), "not prepared twice: {doc:?}");
                    applied.push(doc.ident().name.clone());
                }
                Some(Output::Skipped) => applied.push("skipped".into()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(applied, ["a", "skipped", "b"]);
        assert_eq!(
            *rig.observed.lock().unwrap(),
            [
                ("default/a".to_string(), true),
                ("default/b".to_string(), true)
            ],
            "the informer's bookkeeping sees each named object once, in order"
        );
        assert!(
            matches!(&state, State::Watching { resource_version, .. } if resource_version == "11")
        );
    }

    #[tokio::test]
    async fn a_streaming_list_stages_prepared_objects_and_observes_them() {
        let rig = Rig::new(Script::default().watch(Ok((
            vec![
                prepared(cm("a", "4")),
                Ok(RawEvent::Bookmark {
                    resource_version: "8".into(),
                    initial_events_end: true,
                }),
            ],
            Then::Hang,
        ))))
        .observing();
        let mut m = rig.machine(InitialList::Auto);
        let (_, mut state) = m.step(State::Empty).await;
        let staged = loop {
            let (out, s) = m.step(state).await;
            state = s;
            if let Some(o) = out {
                break listed(Some(o));
            }
        };
        assert_eq!(names(staged, &rig.store), ["default/a"]);
        assert_eq!(
            *rig.observed.lock().unwrap(),
            [("default/a".to_string(), true)]
        );
    }

    #[tokio::test]
    async fn bookmarks_move_the_resume_point_and_emit_nothing() {
        let rig = Rig::new(Script::default().watch(Ok((vec![bookmark("40")], Then::Hang))));
        let mut m = rig.machine(InitialList::Paginate);
        let state = watching(&mut m, "9").await;
        let (out, state) = m.step(state).await;
        assert!(out.is_none());
        assert!(
            matches!(&state, State::Watching { resource_version, .. } if resource_version == "40")
        );
        assert!(rig.stats.last_heard_ms.load(Ordering::Relaxed) > 0);
    }

    #[tokio::test]
    async fn a_410_on_the_watch_goes_back_to_listing_and_counts_a_gone_restart() {
        let rig = Rig::new(Script::default().watch(Ok((
            vec![Err(RequestError::Gone("too old resource version".into()))],
            Then::Hang,
        ))));
        let mut m = rig.machine(InitialList::Paginate);
        let state = watching(&mut m, "9").await;
        let (out, state) = m.step(state).await;
        assert!(matches!(out, Some(Output::Restarted(RestartReason::Gone))));
        assert!(matches!(state, State::Empty), "{state:?}");
        assert_eq!(rig.stats.watch_restarts.get(RestartReason::Gone), 1);
    }

    #[tokio::test]
    async fn a_410_when_opening_the_watch_re_lists_at_once() {
        let rig = Rig::new(
            Script::default().watch(Err(RequestError::Gone("too old resource version".into()))),
        );
        let mut m = rig.machine(InitialList::Paginate);
        let (out, state) = m
            .step(State::Resuming {
                resource_version: "3".into(),
            })
            .await;
        assert!(out.is_none());
        assert!(matches!(state, State::Empty), "{state:?}");
    }

    #[tokio::test]
    async fn a_dropped_connection_resumes_from_the_last_resource_version_after_a_backoff() {
        let rig = Rig::new(Script::default().watch(Ok((
            vec![
                Ok(RawEvent::Modified(cm("a", "10"))),
                Err(RequestError::Transport("connection reset by peer".into())),
            ],
            Then::Hang,
        ))));
        let mut m = rig.machine(InitialList::Paginate);
        let state = watching(&mut m, "9").await;
        let (_, state) = m.step(state).await;
        let (out, state) = m.step(state).await;
        let e = failed(out);
        assert!(e.to_string().contains("cannot watch configmaps"), "{e}");
        let (_, next) = waiting(state);
        assert!(
            matches!(&next, State::Resuming { resource_version } if resource_version == "10"),
            "{next:?}"
        );
        assert_eq!(rig.stats.watch_restarts.get(RestartReason::Error), 1);
    }

    #[tokio::test]
    async fn an_error_event_restarts_the_watch_after_a_backoff_without_a_relist() {
        let rig = Rig::new(Script::default().watch(Ok((
            vec![Err(RequestError::from_status(500, "etcd is sad", 0))],
            Then::Hang,
        ))));
        let mut m = rig.machine(InitialList::Paginate);
        let state = watching(&mut m, "9").await;
        let (out, state) = m.step(state).await;
        failed(out);
        let (_, next) = waiting(state);
        assert!(matches!(next, State::Resuming { .. }), "{next:?}");
        assert_eq!(rig.stats.watch_restarts.get(RestartReason::Error), 1);
    }

    #[tokio::test]
    async fn a_watch_the_server_ends_resumes_at_once_if_it_delivered_and_after_a_backoff_if_not() {
        let rig = Rig::new(
            Script::default()
                .watch(Ok((vec![Ok(RawEvent::Modified(cm("a", "10")))], Then::End)))
                .watch(Ok((vec![], Then::End))),
        );
        let mut m = rig.machine(InitialList::Paginate);
        let state = watching(&mut m, "9").await;
        let (_, state) = m.step(state).await;
        let (out, state) = m.step(state).await;
        assert!(matches!(
            out,
            Some(Output::Restarted(RestartReason::Closed))
        ));
        assert!(
            matches!(&state, State::Resuming { resource_version } if resource_version == "10"),
            "{state:?}"
        );
        let (_, state) = m.step(state).await;
        let (out, state) = m.step(state).await;
        assert!(matches!(
            out,
            Some(Output::Restarted(RestartReason::Closed))
        ));
        let (_, next) = waiting(state);
        assert!(matches!(next, State::Resuming { .. }));
        assert_eq!(rig.stats.watch_restarts.get(RestartReason::Closed), 2);
    }

    #[tokio::test]
    async fn an_event_that_does_not_decode_is_counted_and_skipped_and_the_watch_goes_on() {
        let rig = Rig::new(Script::default().watch(Ok((
            vec![
                Ok(RawEvent::Undecodable("expected value at line 1".into())),
                Ok(RawEvent::Added(
                    json!({"kind": "ConfigMap", "metadata": {}}),
                )),
                Ok(RawEvent::Added(json!(5))),
                Ok(RawEvent::Added(cm("a", "10"))),
            ],
            Then::Hang,
        ))));
        let mut m = rig.machine(InitialList::Paginate);
        let mut state = watching(&mut m, "9").await;
        for _ in 0..3 {
            let (out, s) = m.step(state).await;
            assert!(matches!(out, Some(Output::Skipped)), "{out:?}");
            state = s;
        }
        let (out, state) = m.step(state).await;
        assert!(matches!(out, Some(Output::Changed(Change::Applied(..)))));
        assert!(matches!(state, State::Watching { .. }));
        assert_eq!(rig.stats.decode_errors.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_watch_is_abandoned_after_the_idle_timeout_and_resumed_without_a_relist() {
        let rig = Rig::new(Script::default().watch(Ok((vec![bookmark("20")], Then::Hang))));
        let mut m = rig.machine(InitialList::Paginate);
        let state = watching(&mut m, "9").await;
        let (_, state) = m.step(state).await;
        let start = Instant::now();
        let (out, state) = m.step(state).await;
        assert!(matches!(out, Some(Output::Restarted(RestartReason::Idle))));
        assert_eq!(
            start.elapsed(),
            IDLE,
            "exactly idleTimeout after the last bookmark"
        );
        assert!(
            matches!(&state, State::Resuming { resource_version } if resource_version == "20"),
            "resumes from the bookmark, no re-list: {state:?}"
        );
        assert_eq!(rig.stats.watch_restarts.get(RestartReason::Idle), 1);
        assert_eq!(rig.script.calls(), ["watch(9)"]);
    }

    #[tokio::test(start_paused = true)]
    async fn events_keep_a_watch_alive_past_the_idle_timeout() {
        let rig = Rig::new(Script::default().watch(Ok((
            vec![Ok(RawEvent::Modified(cm("a", "10")))],
            Then::LateEvent(IDLE - Duration::from_secs(1)),
        ))));
        let mut m = rig.machine(InitialList::Paginate);
        let state = watching(&mut m, "9").await;
        tokio::time::sleep(IDLE / 2).await;
        let (_, state) = m.step(state).await;
        // The timer armed at open fires halfway through the new silence, and waits on.
        let start = Instant::now();
        let (out, _) = m.step(state).await;
        assert!(matches!(out, Some(Output::Changed(_))), "{out:?}");
        assert_eq!(start.elapsed(), IDLE - Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_429_waits_at_least_as_long_as_the_server_asked() {
        let rig = Rig::new(Script::default().list(Err(RequestError::from_status(
            429,
            "too many requests",
            7,
        ))));
        let mut m = rig.machine(InitialList::Paginate);
        let (_, state) = m.step(State::Empty).await;
        let (out, state) = m.step(state).await;
        failed(out);
        let (delay, next) = waiting(state);
        assert!(delay >= Duration::from_secs(7), "{delay:?}");
        assert!(matches!(next, State::Paging { .. }));
    }

    #[tokio::test]
    async fn a_403_names_the_verb_and_resource_backs_off_slowly_and_makes_the_informer_not_ready() {
        let rig = Rig::new(
            Script::default()
                .list(Err(RequestError::from_status(
                    403,
                    "configmaps is forbidden",
                    0,
                )))
                .watch(Err(RequestError::from_status(401, "Unauthorized", 0))),
        );
        let mut m = rig.machine(InitialList::Paginate);
        let (_, state) = m.step(State::Empty).await;
        let (out, state) = m.step(state).await;
        let e = failed(out);
        assert!(e.is_forbidden());
        let text = e.to_string();
        assert!(
            text.contains("not allowed to list configmaps in all namespaces")
                && text.contains("403 Forbidden"),
            "{text}"
        );
        let (delay, _) = waiting(state);
        assert!(
            delay >= BackoffPolicy::FORBIDDEN.min_delay / 2,
            "slow, not a tight loop: {delay:?}"
        );
        let problem = rig.stats.problem().unwrap();
        assert!(problem.blocking && problem.message.contains("list configmaps"));
        let (out, _) = m
            .step(State::Resuming {
                resource_version: "1".into(),
            })
            .await;
        let e = failed(out);
        assert!(
            e.to_string().contains("not allowed to watch") && e.to_string().contains("401"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_success_after_failures_clears_the_problem_and_restarts_the_backoff() {
        let rig = Rig::new(
            Script::default()
                .list(Err(RequestError::Transport("connection refused".into())))
                .list(Err(RequestError::Transport("connection refused".into())))
                .list(Ok(page(&[], "3", None)))
                .list(Err(RequestError::Transport("connection refused".into()))),
        );
        let policy = BackoffPolicy::INFORMER;
        let mut m = rig.machine(InitialList::Paginate);
        let first = waiting(m.step(rig_paging(&rig)).await.1).0;
        let second = waiting(m.step(rig_paging(&rig)).await.1).0;
        assert!(second > policy.min_delay / 2 && first <= policy.min_delay);
        let (out, _) = m.step(rig_paging(&rig)).await;
        listed(out);
        assert!(rig.stats.problem().is_none());
        let again = waiting(m.step(rig_paging(&rig)).await.1).0;
        assert!(again <= policy.min_delay, "{again:?}");
    }

    fn rig_paging(rig: &Rig) -> State {
        State::Paging {
            continue_token: None,
            staged: rig.store.staging(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_sleeps_its_delay_then_goes_on() {
        let rig = Rig::new(Script::default());
        let mut m = rig.machine(InitialList::Paginate);
        let start = Instant::now();
        let (out, state) = m
            .step(State::Waiting {
                delay: Duration::from_secs(5),
                next: Box::new(State::Empty),
            })
            .await;
        assert!(out.is_none() && matches!(state, State::Empty));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_streaming_list_stages_the_initial_events_until_the_end_bookmark_then_watches_on() {
        let rig = Rig::new(Script::default().watch(Ok((
            vec![
                Ok(RawEvent::Added(cm("a", "4"))),
                Ok(RawEvent::Added(cm("b", "7"))),
                Ok(RawEvent::Bookmark {
                    resource_version: "8".into(),
                    initial_events_end: true,
                }),
                Ok(RawEvent::Modified(cm("a", "9"))),
            ],
            Then::Hang,
        ))));
        let mut m = rig.machine(InitialList::Auto);
        let (out, mut state) = m.step(State::Empty).await;
        assert!(out.is_none() && matches!(state, State::Streaming { .. }));
        let staged = loop {
            let (out, s) = m.step(state).await;
            state = s;
            if let Some(o) = out {
                break listed(Some(o));
            }
        };
        assert_eq!(names(staged, &rig.store), ["default/a", "default/b"]);
        assert!(
            matches!(&state, State::Watching { resource_version, .. } if resource_version == "8"),
            "the same stream carries on: {state:?}"
        );
        let (out, _) = m.step(state).await;
        assert!(matches!(out, Some(Output::Changed(Change::Applied(..)))));
        assert_eq!(rig.script.calls(), ["watch(initial-events)"]);
    }

    #[tokio::test]
    async fn a_server_that_refuses_streaming_lists_is_listed_page_by_page_from_then_on() {
        let rig = Rig::new(
            Script::default()
                .watch(Err(RequestError::from_status(
                    422,
                    "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
                    0,
                )))
                .list(Ok(page(&[cm("a", "1")], "5", None))),
        );
        let mut m = rig.machine(InitialList::Auto);
        let (out, state) = m.step(State::Empty).await;
        assert!(out.is_none());
        assert!(matches!(state, State::Paging { .. }), "{state:?}");
        listed(m.step(state).await.0);
        // A later re-list does not ask again.
        let (_, state) = m.step(State::Empty).await;
        assert!(matches!(state, State::Paging { .. }));
        assert_eq!(rig.script.calls(), ["watch(initial-events)", "list(-)"]);
    }

    #[tokio::test]
    async fn a_plain_bookmark_during_a_streaming_list_means_the_server_ignored_it() {
        let ignored = || Ok((vec![bookmark("8")], Then::Hang));
        let rig = Rig::new(Script::default().watch(ignored()).watch(ignored()));
        let mut m = rig.machine(InitialList::Auto);
        let (_, state) = m.step(State::Empty).await;
        let (out, state) = m.step(state).await;
        assert!(out.is_none());
        assert!(
            matches!(state, State::Paging { .. }),
            "auto falls back: {state:?}"
        );
        let mut m = rig.machine(InitialList::Stream);
        let (_, state) = m.step(State::Empty).await;
        let (out, state) = m.step(state).await;
        assert!(matches!(failed(out), WatchError::NotStreamed { .. }));
        assert!(matches!(waiting(state).1, State::Empty));
    }

    #[tokio::test]
    async fn stream_mode_treats_a_refused_streaming_list_as_an_error_and_retries_it() {
        let rig =
            Rig::new(Script::default().watch(Err(RequestError::from_status(422, "forbidden", 0))));
        let mut m = rig.machine(InitialList::Stream);
        let (out, state) = m.step(State::Empty).await;
        let e = failed(out);
        assert!(e.to_string().contains("cannot watch configmaps"), "{e}");
        assert!(matches!(waiting(state).1, State::Empty));
    }

    #[tokio::test(start_paused = true)]
    async fn a_streaming_list_that_goes_silent_or_breaks_starts_over_from_nothing() {
        let rig = Rig::new(
            Script::default()
                .watch(Ok((vec![Ok(RawEvent::Added(cm("a", "4")))], Then::Hang)))
                .watch(Ok((vec![Ok(RawEvent::Added(cm("a", "4")))], Then::End))),
        );
        let mut m = rig.machine(InitialList::Stream);
        let (_, state) = m.step(State::Empty).await;
        let (_, state) = m.step(state).await;
        let (out, state) = m.step(state).await;
        assert!(matches!(out, Some(Output::Restarted(RestartReason::Idle))));
        assert!(matches!(state, State::Empty));
        let (_, state) = m.step(state).await;
        let (_, state) = m.step(state).await;
        let (out, state) = m.step(state).await;
        failed(out);
        assert!(matches!(waiting(state).1, State::Empty));
        assert_eq!(rig.stats.watch_restarts.get(RestartReason::Idle), 1);
        assert_eq!(rig.stats.watch_restarts.get(RestartReason::Closed), 1);
    }

    #[tokio::test]
    async fn a_list_without_a_resource_version_is_an_error_not_a_watch_from_nowhere() {
        let rig = Rig::new(Script::default().list(Ok(page(&[cm("a", "1")], "", None))));
        let mut m = rig.machine(InitialList::Paginate);
        let (_, state) = m.step(State::Empty).await;
        let (out, state) = m.step(state).await;
        assert!(
            failed(out)
                .to_string()
                .contains("without a resourceVersion")
        );
        assert!(matches!(waiting(state).1, State::Empty));
    }

    #[test]
    fn restart_reasons_are_the_documented_metric_labels() {
        let labels: Vec<_> = RestartReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels, ["idle", "closed", "error", "gone"]);
        for (i, r) in RestartReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
