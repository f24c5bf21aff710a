//! What a user can set for `type: file`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{Error, ErrorKind};

/// `type: file`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileSinkConfig {
    /// The JSONL file to append to (created if missing; its directory must exist).
    pub path: PathBuf,
    /// fsync after every batch before acknowledging it (durable, slower).
    #[serde(default)]
    pub fsync: bool,
}

impl FileSinkConfig {
    /// Checks the file's directory exists; the file itself is opened when the sink starts,
    /// so `lookout check` creates nothing.
    ///
    /// # Errors
    /// The directory is missing or the path is a directory (at `path`).
    pub fn compile(&self) -> Result<FileSinkConfig, Error> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        let problem = if self.path.is_dir() {
            Some("is a directory".to_string())
        } else if !dir.is_dir() {
            Some(format!("directory {} does not exist", dir.display()))
        } else {
            None
        };
        match problem {
            Some(message) => Err(Error::new(
                "path",
                ErrorKind::File {
                    path: self.path.clone(),
                    message,
                },
            )),
            None => Ok(self.clone()),
        }
    }
}
