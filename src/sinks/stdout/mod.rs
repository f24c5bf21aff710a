//! The stdout sink: one JSON envelope per line, or a human line per change.

mod config;
mod sink;
mod text;

pub use config::StdoutSinkConfig;
pub use sink::{StdoutFormat, StdoutSink};
pub use text::{TextStyle, render_line, render_text};
