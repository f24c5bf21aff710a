//! The stdout sink: one JSON envelope per line, or a human line per change.

mod config;
mod sink;
mod text;

pub use config::{StdoutFormat, StdoutSinkConfig};
pub use sink::StdoutSink;
pub use text::render_text;
