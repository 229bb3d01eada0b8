//! The official CyborgDB Python SDKs against the real `tkms engine serve --storage disk`
//! process (issue 16): both generations, one server.
//!
//! * `tests/sdk/quickstart_current.py` — cyborgdb 0.18.0 (service API 0.17): CyborgDB's
//!   quickstart and the rest of the SDK surface (create with and without a dimension, upsert
//!   as dicts and numpy, train, single and batch queries, filters, every `include`, get,
//!   delete, list_ids, query_metadata, describe, load with a wrong key, per-user keys,
//!   a KMS-backed index through `kms_name`, delete_index).
//! * `tests/sdk/quickstart_012.py` — cyborgdb 0.12.0 (service API 0.12, `index_config`
//!   bodies), the same flow as that SDK offers it.
//!
//! Pythons: the current SDK from `TKMS_PYTHON`, else `<repo>/.venv/bin/python` (created from
//! the root `requirements-test.txt`), else `python3`; the older one from
//! `TKMS_CYBORGDB_012_PYTHON`, else `<repo>/.venv-cyborgdb-0.12/bin/python` (created by
//! `tests/sdk/setup.sh`). A missing SDK fails the test with the command that installs it.
//! The KMS-backed part uses the service's `aws-kms` provider against a local `moto_server`
//! (`pip install "moto[server]"`), as the other KMS tests do. Needs the `tkms` binary
//! (`cargo test --workspace` builds it; else `cargo build -p tkms-cli`).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::moto::Moto;
use common::process::{serve_disk, Service};

const API_KEY: &str = "sdk-test-api-key-0123456789";
/// Longest a script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Python of `var`, else the venv's if it exists, else `fallback`.
fn python(var: &str, venv: &Path, fallback: Option<&str>) -> PathBuf {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return p.into();
    }
    let in_venv = venv.join("bin").join("python");
    match fallback {
        Some(f) if !in_venv.exists() => f.into(),
        _ => in_venv,
    }
}

/// Fails with one line naming `install` unless `python` imports cyborgdb `version` and numpy.
fn require_sdk(python: &Path, version: &str, install: &str) {
    let check = format!(
        "import importlib.metadata as m, numpy, cyborgdb; assert m.version('cyborgdb') == '{version}'"
    );
    let ok = Command::new(python)
        .args(["-c", &check])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "cyborgdb {version} is not importable by {}: run `{install}`",
        python.display()
    );
}

fn serve(data: &Path, key_file: &Path, kms_key_id: &str, kms_endpoint: &str) -> Service {
    serve_disk(data, key_file, |cmd| {
        cmd.args([
            "--aws-kms-key-id",
            kms_key_id,
            "--aws-kms-region",
            "us-east-1",
        ])
        .args(["--aws-kms-endpoint", kms_endpoint])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    })
}

/// Runs a script to its end (killed after [`SCRIPT_TIMEOUT`]); panics with its output
/// unless it exits 0.
fn run_script(python: &Path, script: &str, args: &[&str]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let mut child = Command::new(python)
        .arg(&path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain both pipes while waiting, so a chatty script cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out_thread.join().unwrap();
    let stderr = err_thread.join().unwrap();
    print!("{stdout}");
    assert!(
        status.is_some_and(|s| s.success()) && stdout.trim_end().ends_with("OK"),
        "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        status.map_or_else(|| "timed out".to_owned(), |s| s.to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_cyborgdb_sdk_generations_against_tkms_engine_serve() {
    let root = repo_root();
    let current = python("TKMS_PYTHON", &root.join(".venv"), Some("python3"));
    require_sdk(
        &current,
        "0.18.0",
        "python3 -m venv .venv && .venv/bin/pip install -r requirements-test.txt",
    );
    let older = python(
        "TKMS_CYBORGDB_012_PYTHON",
        &root.join(".venv-cyborgdb-0.12"),
        None,
    );
    require_sdk(&older, "0.12.0", "bash engine/tests/sdk/setup.sh");

    // A local KMS for the KMS-backed index (kms_name = "aws-kms").
    let moto = Moto::start();
    let key_id = moto.create_kms_key().await;

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("api-keys");
    std::fs::write(&key_file, format!("{API_KEY}\n")).unwrap();
    let service = serve(
        &dir.path().join("data"),
        &key_file,
        &key_id,
        &moto.endpoint(),
    );

    run_script(
        &current,
        "quickstart_current.py",
        &[&service.url, API_KEY, "aws-kms"],
    );
    run_script(&older, "quickstart_012.py", &[&service.url, API_KEY]);
}
