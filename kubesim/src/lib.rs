//! kubesim: a Kubernetes API server simulator. See the crate README.
pub mod selector;
