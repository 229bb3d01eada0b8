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

use std::{net::SocketAddr, sync::Arc, time::Duration};

use k256::ecdsa::SigningKey;
use rand::SeedableRng;
use tkms_manager::{
    admin::Admin,
    front::FrontDoor,
    http::{router, AppState, Metrics, StaticRegistry},
};
use zeroize::Zeroizing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_undocumented_answer() {
    let tc = common::start(2, 3, &[], 16).await;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(16);
    let gateway = SigningKey::random(&mut rng);
    let served = tc.served(Duration::from_millis(800));
    // The front door as the daemon puts it in front of the router (its default quotas).
    let front: Arc<FrontDoor> = Arc::default();
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
        front: Arc::clone(&front),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = tkms_manager::front::layer(router(Arc::new(state)), front)
        .into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let work = tempfile::tempdir().unwrap();
    let cwd = work.path().to_path_buf();
    let (passed, report) = tokio::task::spawn_blocking(move || {
        tkms_testkit::schemathesis(
            &format!("http://{addr}/openapi.json"),
            // Need stateful links between operations (the document has none), or expect a
            // random valid body to be served: a well-formed request without a valid
            // signature by an authorized gateway is refused, as it must be.
            &[
                "use_after_free",
                "ensure_resource_availability",
                "positive_data_acceptance",
                "ignored_auth",
            ],
            &["--phases", "coverage,fuzzing"],
            &cwd,
        )
    })
    .await
    .unwrap();
    server.abort();
    println!("{report}");
    assert!(passed, "schemathesis found problems:\n{report}");
}
