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

/// The schemathesis version `requirements-test.txt` pins.
pub const SCHEMATHESIS: &str = "4.32.5";

/// Environment variable that makes [`check_generated_file`] write the file instead.
pub const UPDATE_ENV: &str = "TKMS_UPDATE_OPENAPI";

/// A committed generated file (an OpenAPI document) must be what the code generates now;
/// with `$TKMS_UPDATE_OPENAPI` set it is written instead. `regenerate` is the command named
/// in the failure.
///
/// # Panics
/// If the file differs from `generated` (or cannot be written when updating).
#[track_caller]
pub fn check_generated_file(path: &Path, generated: &str, regenerate: &str) {
    if std::env::var_os(UPDATE_ENV).is_some() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("creating the file's folder");
        }
        std::fs::write(path, generated).expect("writing the generated file");
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is not what the code generates: regenerate it with `{regenerate}`",
        path.display()
    );
}

/// Run `schemathesis run` against the OpenAPI document at `schema_url`: every check but
/// `excluded`, `$TKMS_FUZZ_EXAMPLES` cases per operation (default 40), a fixed seed, one
/// worker (hypothesis describes strategies through a cache that two threads can corrupt:
/// "AST constructor recursion depth mismatch", a runtime error, not a finding), no shrinking,
/// plus `args` (e.g. `--phases`, `--header`). Its cache and report go to `work`. Whether it
/// passed, and what it printed.
///
/// Fails the test through [`missing`] unless [`python`] imports schemathesis [`SCHEMATHESIS`].
#[must_use]
pub fn schemathesis(
    schema_url: &str,
    excluded: &[&str],
    args: &[&str],
    work: &Path,
) -> (bool, String) {
    let check = format!(
        "import importlib.metadata as m; assert m.version('schemathesis') == '{SCHEMATHESIS}'"
    );
    let pinned = Command::new(python())
        .args(["-c", &check])
        .output()
        .is_ok_and(|o| o.status.success());
    if !pinned {
        missing(&format!(
            "schemathesis {SCHEMATHESIS} (for {})",
            python().display()
        ));
    }
    let examples = std::env::var("TKMS_FUZZ_EXAMPLES").unwrap_or_else(|_| "40".into());
    let output = Command::new(python())
        .args([
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
            "run",
            schema_url,
            "--checks",
            "all",
        ])
        .args(["--exclude-checks", &excluded.join(",")])
        .args(["--max-examples", &examples])
        .args(["--seed", "16", "--workers", "1", "--no-shrink"])
        .args(["--suppress-health-check", "all"])
        .args(args)
        .arg("--report-dir")
        .arg(work.join("report"))
        // schemathesis keeps a cache in its working directory: not in the repository.
        .current_dir(work)
        .env("NO_COLOR", "1")
        .output()
        .expect("running schemathesis");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}
