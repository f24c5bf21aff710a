//! The blackhole sink: accepts every batch at once and only counts it. For benchmarks and for
//! measuring the pipeline without a real destination.

mod config;
mod sink;

pub use config::BlackholeSinkConfig;
pub use sink::BlackholeSink;
