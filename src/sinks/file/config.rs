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
    /// File mode, octal, as a string (`"0640"` lets the group read). Default `"0600"`:
    /// envelopes are the cluster's objects. Applied at every start, to a new or an existing
    /// file alike; at most `"0666"` (no execute bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// The file sink's default mode: owner read/write only.
pub const DEFAULT_MODE: u32 = 0o600;

impl FileSinkConfig {
    /// The file mode to apply.
    ///
    /// # Errors
    /// `mode` is not an octal string up to `0666` (at `mode`).
    pub fn file_mode(&self) -> Result<u32, Error> {
        let Some(text) = &self.mode else {
            return Ok(DEFAULT_MODE);
        };
        u32::from_str_radix(text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| m & !0o666 == 0)
            .ok_or_else(|| {
                Error::new(
                    "mode",
                    ErrorKind::Invalid(format!(
                        "expected an octal file mode up to \"0666\" (e.g. \"0640\"), got `{text}`"
                    )),
                )
            })
    }

    /// Checks the file's directory exists; the file itself is opened when the sink starts,
    /// so `lookout check` creates nothing.
    ///
    /// # Errors
    /// The directory is missing or the path is a directory (at `path`).
    pub fn compile(&self) -> Result<FileSinkConfig, Error> {
        self.file_mode()?;
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
