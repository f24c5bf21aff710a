//! The file sink: one JSON envelope per line appended to a file (JSONL).

mod config;
mod sink;

pub use config::FileSinkConfig;
pub use sink::FileSink;
