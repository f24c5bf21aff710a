//! Finding the external programs the test suites and the benchmark harness run against
//! (kubectl, the tansu broker): through the variable the Makefile exports, else `PATH`.
//!
//! A missing tool is a failure with the command that installs it, never a silent pass: a
//! test that cannot run has proven nothing. Skipping tool-dependent tests is an explicit,
//! visible choice made with nextest's `no-tools` profile (see `.config/nextest.toml`),
//! whose summary counts them as skipped.

use std::path::{Path, PathBuf};

/// An external program a test needs.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// The program's file name on `PATH` (`kubectl`).
    pub name: &'static str,
    /// The variable that names its path (`KUBECTL`); set by the Makefile.
    pub var: &'static str,
    /// How to get it.
    pub install: &'static str,
}

/// Debian's kubectl (client-go v1.20): `$KUBECTL`, else `kubectl` on `PATH`.
pub const KUBECTL: Tool = Tool {
    name: "kubectl",
    var: "KUBECTL",
    install: "`make kubectl` (or `make tools`) unpacks Debian's kubectl and `make test` exports $KUBECTL",
};

/// The tansu Kafka-protocol broker: `$TANSU`, else `tansu` on `PATH`.
pub const TANSU: Tool = Tool {
    name: "tansu",
    var: "TANSU",
    install: "`make tansu` (or `make tools`) builds it once (about 15 minutes) and `make test` exports $TANSU",
};

/// Why a tool was not found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// The variable names a path that is not a file.
    #[error(
        "${var}={path} is not a file; {install}. To leave out the tests that need external tools, run `cargo nextest run --profile no-tools` (they are then counted as skipped)"
    )]
    NotAFile {
        /// The variable.
        var: &'static str,
        /// What it said.
        path: String,
        /// How to install the tool.
        install: &'static str,
    },
    /// Neither the variable nor `PATH` has it.
    #[error(
        "{name} not found: ${var} is unset and no `{name}` is on PATH; {install}. To leave out the tests that need external tools, run `cargo nextest run --profile no-tools` (they are then counted as skipped)"
    )]
    Missing {
        /// The program.
        name: &'static str,
        /// The variable.
        var: &'static str,
        /// How to install the tool.
        install: &'static str,
    },
}

impl Tool {
    /// The tool's path: the variable when set (it must name a file), else `PATH`.
    ///
    /// # Errors
    /// [`ToolError`] says what was looked at and how to install the tool.
    pub fn find(&self) -> Result<PathBuf, ToolError> {
        self.find_in(
            std::env::var_os(self.var).map(PathBuf::from),
            std::env::var_os("PATH"),
        )
    }

    /// [`Tool::find`] with the variable's value and `PATH` given (testable).
    pub fn find_in(
        &self,
        var: Option<PathBuf>,
        path: Option<std::ffi::OsString>,
    ) -> Result<PathBuf, ToolError> {
        if let Some(p) = var.filter(|p| !p.as_os_str().is_empty()) {
            return if p.is_file() {
                Ok(p)
            } else {
                Err(ToolError::NotAFile {
                    var: self.var,
                    path: p.display().to_string(),
                    install: self.install,
                })
            };
        }
        path.iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join(self.name))
            .find(|p| is_executable(p))
            .ok_or(ToolError::Missing {
                name: self.name,
                var: self.var,
                install: self.install,
            })
    }

    /// The tool's path, or a panic whose message says how to install it (for tests).
    pub fn require(&self) -> PathBuf {
        self.find().unwrap_or_else(|e| panic!("\n{e}\n"))
    }
}

/// kubectl (found as [`KUBECTL`], panicking with how to install it when missing: for tests)
/// run against `kubeconfig` alone, with `home` as its HOME and discovery cache, and a 20 s
/// request timeout. kubectl caches discovery per server under `~/.kube/cache`: a test must
/// neither share nor pollute the user's.
pub fn kubectl_command(home: &Path, kubeconfig: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(KUBECTL.require());
    c.env("HOME", home)
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(home.join("cache"))
        .arg("--request-timeout=20s");
    c
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_variable_naming_a_missing_file_is_an_error_that_says_how_to_install() {
        let e = KUBECTL
            .find_in(Some("/nonexistent/kubectl".into()), None)
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("$KUBECTL=/nonexistent/kubectl"), "{text}");
        assert!(text.contains("make kubectl"), "{text}");
        assert!(text.contains("--profile no-tools"), "{text}");
    }

    #[test]
    fn without_the_variable_the_tool_is_looked_up_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("tansu");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        let mut perms = std::fs::metadata(&bin).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&bin, perms).unwrap();
        let path = std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(TANSU.find_in(None, Some(path.clone())).unwrap(), bin);
        assert_eq!(
            TANSU.find_in(Some("".into()), Some(path)).unwrap(),
            bin,
            "an empty variable counts as unset"
        );
    }

    #[test]
    fn a_tool_on_neither_the_variable_nor_path_is_missing() {
        let e = TANSU
            .find_in(None, Some("/nonexistent".into()))
            .unwrap_err();
        assert!(matches!(e, ToolError::Missing { name: "tansu", .. }));
        assert!(e.to_string().contains("make tansu"), "{e}");
    }
}
