//! Property-based HTTP fuzz of the manager driven by its own OpenAPI document (schemathesis,
//! pinned in the root `requirements-test.txt`): every operation gets the coverage phase's
//! boundary and invalid values and random valid and invalid inputs. Nothing may answer a 5xx
//! the document does not give, every answer's status, content type and body must be the ones
//! the document gives, input that violates the document must be refused (4xx), and
//! unsupported methods answer 405.
//!
//! The manager serves a real 3-node cluster (node gRPC servers on loopback, t = 2), so the
//! key routes reach their signature, role and node checks, not only the body parser. The admin
//! API is on with an operator token schemathesis does not have, so no ceremony runs. Bounded by
//! `TKMS_FUZZ_EXAMPLES` generated cases per operation (default 40).
#![allow(clippy::unwrap_used)] // tests may panic on failure

mod common;

use std::{net::SocketAddr, process::Command, sync::Arc, time::Duration};

use k256::ecdsa::SigningKey;
use rand::SeedableRng;
use tkms_manager::{
    admin::Admin,
    http::{router, AppState, Metrics, StaticRegistry},
};
use zeroize::Zeroizing;

const SCHEMATHESIS: &str = "4.32.5";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_undocumented_answer() {
    tkms_testkit::require_python_module("schemathesis", "schemathesis");
    let python = tkms_testkit::python();
    let check = format!(
        "import importlib.metadata as m; assert m.version('schemathesis') == '{SCHEMATHESIS}'"
    );
    let pinned = Command::new(&python)
        .args(["-c", &check])
        .output()
        .is_ok_and(|o| o.status.success());
    if !pinned {
        tkms_testkit::missing(&format!("schemathesis {SCHEMATHESIS}"));
    }

    let tc = common::start(2, 3, &[], 16).await;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(16);
    let gateway = SigningKey::random(&mut rng);
    let served = tc.served(Duration::from_millis(800));
    // The admin API is on, with a token schemathesis is not given: every admin call is
    // refused (401) and no ceremony runs.
    let admin = Admin::new(
        tc.manager.clone(),
        Vec::new(),
        Duration::from_secs(1),
        Duration::from_secs(1),
        None,
        Arc::clone(&served),
    )
    .unwrap();
    let state = AppState {
        served,
        admin: Some(Arc::new(admin)),
        admin_token: Some(Zeroizing::new("fuzz-operator-token-0123456789".into())),
        wallet: SigningKey::random(&mut rng),
        registry: Box::new(
            StaticRegistry::default().with_gateway(1, tkms_manager::nox::wallet_address(&gateway)),
        ),
        metrics: Metrics::default(),
        nonces: tkms_sdk::v1::NonceCache::default(),
        front: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(Arc::new(state)).into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let examples = std::env::var("TKMS_FUZZ_EXAMPLES").unwrap_or_else(|_| "40".into());
    let work = tempfile::tempdir().unwrap();
    let report = work.path().join("report");
    let cwd = work.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .args([
                "-c",
                "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
                "run",
            ])
            .arg(format!("http://{addr}/openapi.json"))
            .args(["--checks", "all"])
            // Need stateful links between operations (the document has none), or expect a
            // random valid body to be served: a well-formed request without a valid
            // signature by an authorized gateway is refused, as it must be.
            .args([
                "--exclude-checks",
                "use_after_free,ensure_resource_availability,positive_data_acceptance,ignored_auth",
            ])
            .args(["--phases", "coverage,fuzzing"])
            .args(["--max-examples", &examples])
            // One worker: hypothesis describes strategies through a cache that two threads can
            // corrupt ("AST constructor recursion depth mismatch", a runtime error, not a finding).
            .args(["--seed", "16", "--workers", "1", "--no-shrink"])
            .args(["--suppress-health-check", "all"])
            .arg("--report-dir")
            .arg(&report)
            // schemathesis keeps a cache in its working directory: not in the repository.
            .current_dir(&cwd)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    server.abort();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis found problems ({}):\n{stdout}\n{stderr}",
        output.status
    );
}
