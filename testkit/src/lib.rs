//! Test-only helpers shared by every crate's tests: where the tools that `./test.sh` installs
//! are found, and a one-line failure when one is missing.
//!
//! `./test.sh` (and `./test.sh --setup`, which only installs) puts the test tools in
//! project-local folders, never in the system:
//!
//! - Python with the pinned packages of `requirements-test.txt` in `<repo>/.venv`;
//! - anvil, forge and solc from npm in `contracts/node_modules` (found by
//!   `tkms_registry::anvil::anvil_path`, not here).
//!
//! The lookup convention, which every test follows:
//!
//! - Python: `$TKMS_PYTHON` if set, else `<repo>/.venv/bin/python` if it exists, else
//!   `python3` on `PATH` ([`python`]);
//! - a Python tool such as `moto_server`: `<repo>/.venv/bin/<name>` if it exists, else
//!   `<name>` on `PATH` ([`python_tool`]).
//!
//! A test that needs a missing tool fails through [`missing`] with one line that names the
//! command to run, rather than a panic with a path list or a Python traceback.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Environment variable naming the Python interpreter the tests use.
pub const PYTHON_ENV: &str = "TKMS_PYTHON";

/// The command that installs every test tool (and runs nothing else).
pub const SETUP_COMMAND: &str = "./test.sh --setup";

/// The repository root (this crate lives in `<repo>/testkit`).
#[must_use]
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The project's Python virtual environment, `<repo>/.venv`.
#[must_use]
pub fn venv() -> PathBuf {
    repo_root().join(".venv")
}

/// The Python interpreter for tests: `$TKMS_PYTHON`, else `<repo>/.venv/bin/python`, else
/// `python3` from `PATH`.
#[must_use]
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(python);
    }
    let venv_python = venv().join("bin/python");
    if venv_python.is_file() {
        return venv_python;
    }
    PathBuf::from("python3")
}

/// A command-line tool installed by a Python package (e.g. `moto_server`):
/// `<repo>/.venv/bin/<name>` if it exists, else `<name>` if it is on `PATH`, else `None`.
#[must_use]
pub fn python_tool(name: &str) -> Option<PathBuf> {
    let in_venv = venv().join("bin").join(name);
    if in_venv.is_file() {
        return Some(in_venv);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Whether [`python`] runs and can import `module`.
#[must_use]
pub fn python_has(module: &str) -> bool {
    Command::new(python())
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Fails the test with one line: `what` is missing, and the command that installs it.
///
/// # Panics
/// Always; that is its purpose.
#[track_caller]
pub fn missing(what: &str) -> ! {
    panic!("{what} is not installed: run `{SETUP_COMMAND}` (installs the pinned test tools into the repository)")
}

/// Fails the test with one line (see [`missing`]) unless [`python`] can import `module`,
/// which the PyPI package `package` provides (listed in `requirements-test.txt`).
#[track_caller]
pub fn require_python_module(module: &str, package: &str) {
    if !python_has(module) {
        missing(&format!(
            "the Python package `{package}` (for {})",
            python().display()
        ));
    }
}
