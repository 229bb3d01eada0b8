//! Property-based HTTP fuzz of the engine service driven by its own OpenAPI document
//! (schemathesis, pinned in the root `requirements-test.txt`): every operation gets the
//! document's examples, the coverage phase's boundary and invalid values, and random
//! valid and invalid bodies. Nothing may answer 5xx, every answer's status, content type and
//! body must be the ones the document gives, bodies that violate the document must be
//! refused (4xx), unsupported methods answer 405, and no secured route works without the
//! API key.
//!
//! The service runs in process on a memory store holding the index the document's examples
//! name (`docs`, the all-zero example key, dimension 4), so the examples reach the engine
//! rather than only its refusals. Bounded by `TKMS_FUZZ_EXAMPLES` generated cases per
//! operation (default 40).
//!
//! Python: `TKMS_PYTHON`, else `<repo>/.venv/bin/python`, else `python3`, which must import
//! schemathesis 4.32.5.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use tkms_engine::service::{bind, ServiceConfig};
use tkms_engine::{Client, IndexConfig, IndexKey, Item, StorageConfig};
use zeroize::Zeroizing;

const API_KEY: &str = "fuzz-api-key-0123456789";
const SCHEMATHESIS: &str = "4.32.5";

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TKMS_PYTHON").filter(|p| !p.is_empty()) {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

fn env_number(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_5xx_and_no_answer_outside_the_document() {
    let python = python();
    let check = format!(
        "import importlib.metadata as m, schemathesis; assert m.version('schemathesis') == '{SCHEMATHESIS}'"
    );
    let ok = Command::new(&python)
        .args(["-c", &check])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "schemathesis {SCHEMATHESIS} is not importable by {}: run `python3 -m venv .venv && .venv/bin/pip install -r requirements-test.txt`",
        python.display()
    );

    // The index the document's examples name.
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig::disk(dir.path());
    {
        let client = Client::new(storage.clone()).unwrap();
        let index = client
            .create_index(
                "docs",
                &IndexKey::from_bytes(&[0; 32]).unwrap(),
                IndexConfig::new(4),
            )
            .unwrap();
        index
            .upsert(
                (0..64)
                    .map(|i| {
                        let x = i as f32;
                        Item::new(format!("doc-{i}"), vec![x.sin(), x.cos(), x / 64.0, 1.0])
                            .with_contents(format!("document {i}"))
                            .with_metadata(serde_json::json!({"i": i}))
                    })
                    .collect(),
            )
            .unwrap();
    }
    let mut config = ServiceConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        storage,
        vec![Zeroizing::new(API_KEY.to_owned())],
    );
    config.max_body_bytes = 1 << 20;
    let server = bind(config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let examples = env_number("TKMS_FUZZ_EXAMPLES", 40).to_string();
    let report = dir.path().join("report");
    let work = dir.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .args([
                "-c",
                "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
                "run",
            ])
            .arg(format!("http://{addr}/openapi.json"))
            .args(["--header", &format!("X-API-Key: {API_KEY}")])
            .args(["--checks", "all"])
            // Need stateful links between operations (the document has none), or expect an
            // API without side effects to every valid body (a valid body can still name a
            // missing index: 404 is the right answer, not a 2xx).
            .args([
                "--exclude-checks",
                "use_after_free,ensure_resource_availability,positive_data_acceptance",
            ])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--max-examples", &examples])
            // One worker: hypothesis describes strategies through a cache that two threads can
            // corrupt ("AST constructor recursion depth mismatch", a runtime error, not a finding).
            .args(["--seed", "16", "--workers", "1", "--no-shrink"])
            .args(["--suppress-health-check", "all"])
            .arg("--report-dir")
            .arg(&report)
            // schemathesis keeps a cache in its working directory: not in the repository.
            .current_dir(&work)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis found problems ({}):\n{stdout}\n{stderr}",
        output.status
    );
}
