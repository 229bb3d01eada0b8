//! The committed OpenAPI document of the manager (`docs/openapi/manager.json`) is the one the
//! code generates (`tkms_manager::http::openapi`, from the handlers' annotations), the one it
//! serves at `/openapi.json`, and it describes every route the manager serves.
//!
//! After changing the API, regenerate the file with
//! `TKMS_UPDATE_OPENAPI=1 cargo test --workspace --test openapi` and commit it.
#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::{path::PathBuf, sync::Arc};

use axum::{body::Body, http::Request};
use k256::ecdsa::SigningKey;
use serde_json::Value;
use tkms_manager::{
    admin::Served,
    http::{openapi_json_text, router, AppState, Metrics, StaticRegistry},
};
use tower::ServiceExt;

const REGENERATE: &str = "TKMS_UPDATE_OPENAPI=1 cargo test --workspace --test openapi";

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi/manager.json")
}

#[test]
fn committed_document_is_the_generated_one() {
    let generated = openapi_json_text();
    let path = committed_path();
    if std::env::var_os("TKMS_UPDATE_OPENAPI").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi/manager.json is not the document the code generates: regenerate it with `{REGENERATE}`"
    );
}

#[tokio::test]
async fn the_manager_serves_its_document() {
    let state = AppState {
        served: Arc::new(Served::new(None)),
        admin: None,
        admin_token: None,
        wallet: SigningKey::from_slice(&[7; 32]).unwrap(),
        registry: Box::new(StaticRegistry::default()),
        metrics: Metrics::default(),
        nonces: tkms_sdk::v1::NonceCache::default(),
        front: Arc::default(),
    };
    let response = router(Arc::new(state))
        .oneshot(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(std::str::from_utf8(&body).unwrap(), openapi_json_text());
}

#[test]
fn document_lists_every_route_with_its_errors() {
    let doc: Value = serde_json::from_str(&openapi_json_text()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut routes: Vec<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    routes.sort();
    assert_eq!(
        routes,
        [
            "GET /",
            "GET /admin/epochs",
            "GET /admin/nodes",
            "GET /health",
            "GET /metrics",
            "GET /openapi.json",
            "GET /v0/public-key",
            "POST /admin/dkg",
            "POST /admin/reshare",
            "POST /v0/delegate",
            "POST /v1/delegate",
            "POST /v1/reencrypt",
        ]
    );
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            // Admin operations name the operator's bearer scheme and document 401.
            if path.starts_with("/admin") {
                assert_eq!(
                    op["security"][0]["operator"],
                    serde_json::json!([]),
                    "{method} {path}"
                );
                assert!(responses.contains_key("401"), "{method} {path}");
            }
            // Key uses document their refusals with the error schema: 401 and 429 (quota).
            if path.starts_with("/v0/delegate") || path.starts_with("/v1") {
                for status in ["400", "401", "429", "503"] {
                    assert_eq!(
                        responses[status]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["operator"]["scheme"],
        "bearer"
    );
}
