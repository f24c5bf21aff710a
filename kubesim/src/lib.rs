//! kubesim: a Kubernetes API server simulator over plain HTTP on loopback,
//! faithful enough for kube-rs and kubectl (discovery, list/watch with
//! resourceVersion semantics, writes, patches, server-side apply), with fault
//! injection and a load generator. See the crate README.

pub mod cli;
pub mod config;
pub mod error;
pub mod faults;
pub mod kinds;
pub mod loadgen;
pub mod patch;
pub mod reqlog;
mod server;
mod sim;
pub mod store;
pub mod story;
pub mod time;
pub mod tools;

/// Label and field selectors, shared with the agent (the `k8s-selector` crate).
pub use k8s_selector as selector;

pub use cli::{Cli, run_cli};
pub use config::SimConfig;
pub use error::{ApiError, Error};
pub use faults::{Faults, StopMode};
pub use kinds::KindSpec;
pub use reqlog::RequestRecord;
pub use sim::KubeSim;
