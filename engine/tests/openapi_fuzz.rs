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
//! Python and schemathesis as `tkms_testkit::schemathesis` finds them (`./test.sh --setup`
//! installs them).
#![allow(clippy::unwrap_used)]

use tkms_engine::service::{bind, ServiceConfig};
use tkms_engine::{Client, IndexConfig, IndexKey, Item, StorageConfig};
use zeroize::Zeroizing;

const API_KEY: &str = "fuzz-api-key-0123456789";
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_5xx_and_no_answer_outside_the_document() {
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

    let work = dir.path().to_path_buf();
    let (passed, report) = tokio::task::spawn_blocking(move || {
        tkms_testkit::schemathesis(
            &format!("http://{addr}/openapi.json"),
            // Need stateful links between operations (the document has none), or expect an
            // API without side effects to every valid body (a valid body can still name a
            // missing index: 404 is the right answer, not a 2xx).
            &[
                "use_after_free",
                "ensure_resource_availability",
                "positive_data_acceptance",
            ],
            &[
                "--header",
                &format!("X-API-Key: {API_KEY}"),
                "--phases",
                "examples,coverage,fuzzing",
            ],
            &work,
        )
    })
    .await
    .unwrap();
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    println!("{report}");
    assert!(passed, "schemathesis found problems:\n{report}");
}
