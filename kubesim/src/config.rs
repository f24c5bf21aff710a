//! What a simulator is started with.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::kinds::KindSpec;

/// Simulator settings. `SimConfig::default()` serves on a free loopback port.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Listen address; port 0 picks a free one (`127.0.0.1:0` by default).
    pub addr: SocketAddr,
    /// How many change events the history keeps; older watch/list resourceVersions get 410 Expired.
    pub history_limit: usize,
    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Extra (CRD-style) kinds to serve besides the built-in ones.
    pub extra_kinds: Vec<KindSpec>,
    /// Number of realistic Pods to create at start (see [`crate::loadgen`]).
    pub seed_pods: usize,
    /// Seed for the load generator (same seed, same objects and churn sequence).
    pub seed: u64,
    /// Namespaces the seeded pods spread over (created if missing).
    pub seed_namespaces: usize,
    /// Nodes the seeded pods spread over (Node objects are created too).
    pub seed_nodes: usize,
    /// Server-side watch timeout when the client sends no `timeoutSeconds`.
    pub default_watch_timeout: Duration,
    /// How many request records the request log keeps (oldest dropped first).
    pub request_log_limit: usize,
    /// Serve streaming lists (watches with `sendInitialEvents`, the `WatchList` feature of
    /// Kubernetes 1.27+, on by default since 1.32). `false` answers them 422 Invalid like a
    /// server with the feature gate off, so clients' fallback to paginated lists can be tested.
    pub streaming_lists: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(1),
            extra_kinds: Vec::new(),
            seed_pods: 0,
            seed: 1,
            seed_namespaces: 3,
            seed_nodes: 3,
            default_watch_timeout: Duration::from_secs(1800),
            request_log_limit: 100_000,
            streaming_lists: true,
        }
    }
}
