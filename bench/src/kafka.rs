//! Kafka: lookout's Kafka sink against a raw rdkafka producer, same broker, same payloads.

use std::path::Path;

use crate::Args;
use crate::report::Target;

/// (name, value, unit, target) figures.
pub type Figures = Vec<(String, f64, &'static str, Option<Target>)>;

/// Runs the comparison, or says why it cannot run here.
pub fn compare(
    _args: &Args,
    _lookout: &Path,
    _rt: &tokio::runtime::Runtime,
    _dir: &Path,
) -> Result<Figures, String> {
    Err("the Kafka sink (`type: kafka`) is not on this branch yet".into())
}
