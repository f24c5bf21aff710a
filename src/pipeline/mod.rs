//! Wires the agent: informers → cache/diff → router → sink queues → sinks → acknowledgement
//! tracker → delivered state.
//!
//! - [`build`](self::build): the config becomes parts — sink lanes (queue + counters), the
//!   router, informers with their handlers, the ops server — without watching anything yet.
//! - `emit`: what an informer callback does: build the envelope, ask the router, register the
//!   change with the tracker, push one slot (with its token) per sink.
//! - `takeover`: what starting to forward does: open the delivered state (waiting, bounded,
//!   for a previous leader to let go of it), start the state writer and the drivers, and bring
//!   every sink from what it holds to the informers' current state.
//! - `run`: the phases (warming, forwarding, stopping), the cancellation tree, and the
//!   shutdown order.

mod build;
mod emit;
mod run;
mod takeover;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

pub use build::verify_resources;
pub use run::RunOutcome;

use crate::config::{Config, Error};
use crate::event::EnvelopeBuilder;
use crate::informer::{InformerError, InformerFactory, InformerKey, SharedInformer};
use crate::router::Router;
use crate::server::Ops;
use crate::sinks::{DeadLetter, SinkLane};
use crate::state::{StateError, StateStore};

use self::emit::Forwarding;

/// Why the pipeline could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Something in the configuration cannot be used (a kind the server does not serve, a
    /// file sink's file, the listen address): exit 2.
    #[error(transparent)]
    Config(#[from] Error),
    /// The API server cannot be reached or refused us (not a config error: retry later).
    #[error("cannot resolve `{at}` with the API server: {}", build::server_cause(.source))]
    Server {
        /// The config entry being resolved.
        at: String,
        /// What failed.
        #[source]
        source: InformerError,
    },
    /// The delivered-state store cannot be used (unreadable, incompatible).
    #[error("{0}")]
    State(#[from] StateError),
}

/// How this replica gets at the delivered state.
enum StateAccess {
    /// No `state.dir`: nothing is remembered; every start sends every object as an add.
    Nothing,
    /// A single replica: opened at start (a store that cannot be used is a config error).
    Open(Arc<StateStore>),
    /// With leader election: opened on takeover (until then the leader holds it).
    OnTakeover(PathBuf),
}

/// One forwarded informer: what it watches, the informer, and how its envelopes are built.
struct Intake {
    /// What it watches; as a string, the source its delivered state is filed under.
    key: InformerKey,
    /// The shared informer.
    informer: Arc<SharedInformer>,
    /// Builds its envelopes (live, and in the start-up comparison).
    builder: EnvelopeBuilder,
}

/// A built pipeline, ready to [`run`](Pipeline::run).
pub struct Pipeline {
    parts: Parts,
    /// The ops server, serving from the start of `build` (probes answer while kinds are
    /// resolved against an API server that may not be reachable yet).
    server: tokio::task::JoinHandle<()>,
    /// Stops the ops server (and, in `run`, the sink health checks).
    stop_ops: tokio_util::sync::CancellationToken,
}

/// Everything a run works with.
struct Parts {
    /// The effective config.
    config: Config,
    /// The API server connection (leader election).
    client: kube::Client,
    /// Every informer (forwarded ones and the Namespace informer routes read).
    factory: Arc<InformerFactory>,
    /// One lane per sink, in `sinks` order (the index is the sink's id everywhere).
    lanes: Vec<SinkLane>,
    /// Where each sink's rejected events go, in `sinks` order.
    dead_letters: Vec<DeadLetter>,
    /// Which sinks get which changes.
    router: Arc<Router>,
    /// The informers that forward (each distinct resource once).
    intakes: Vec<Intake>,
    /// The Namespace informer routes read labels from, started (and synced) first.
    namespaces: Option<Arc<SharedInformer>>,
    /// How the delivered state is reached.
    state: StateAccess,
    /// What the ops server reads.
    ops: Arc<Ops>,
    /// What the informers' handlers forward through: `Some` only while this replica forwards.
    gate: Arc<watch::Sender<Option<Arc<Forwarding>>>>,
}

impl Parts {
    /// The configured sink names, in order.
    fn sink_names(&self) -> Vec<String> {
        self.lanes.iter().map(|l| l.name.clone()).collect()
    }
}
