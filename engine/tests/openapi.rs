//! The committed OpenAPI document of the engine service (`docs/openapi/engine.json`) is the
//! one the code generates (`tkms_engine::service::openapi`, from the handlers' annotations),
//! and it describes every route the service serves.
//!
//! After changing the service, regenerate the file with
//! `TKMS_UPDATE_OPENAPI=1 cargo test --workspace --test openapi` (or
//! `tkms engine openapi > docs/openapi/engine.json`) and commit it.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use serde_json::Value;

const REGENERATE: &str = "TKMS_UPDATE_OPENAPI=1 cargo test --workspace --test openapi";

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi/engine.json")
}

#[test]
fn committed_document_is_the_generated_one() {
    tkms_testkit::check_generated_file(
        &committed_path(),
        &tkms_engine::service::openapi_json_text(),
        REGENERATE,
    );
}

#[test]
fn document_lists_every_route_with_its_errors() {
    let doc: Value = serde_json::from_str(&tkms_engine::service::openapi_json_text()).unwrap();
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
            "DELETE /v1/indexes/{index_name}/users/{user_id}",
            "GET /openapi.json",
            "GET /v1/health",
            "GET /v1/indexes/list",
            "GET /v1/indexes/training-status",
            "GET /v1/indexes/{index_name}/users",
            "POST /v1/indexes/create",
            "POST /v1/indexes/delete",
            "POST /v1/indexes/describe",
            "POST /v1/indexes/train",
            "POST /v1/indexes/{index_name}/users",
            "POST /v1/vectors/delete",
            "POST /v1/vectors/get",
            "POST /v1/vectors/list_ids",
            "POST /v1/vectors/num_vectors",
            "POST /v1/vectors/query",
            "POST /v1/vectors/query_binary",
            "POST /v1/vectors/query_metadata",
            "POST /v1/vectors/upsert",
            "POST /v1/vectors/upsert_binary",
        ]
    );
    // Every authenticated operation names the X-API-Key scheme and documents 401 and 422
    // (422 only with a body) with the error schema.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if path == "/v1/health" || path == "/openapi.json" {
                assert!(op.get("security").is_none(), "{method} {path}");
                continue;
            }
            assert_eq!(
                op["security"][0]["APIKeyHeader"],
                serde_json::json!([]),
                "{method} {path}"
            );
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("401"), "{method} {path}");
            assert_eq!(
                responses.contains_key("422"),
                op.get("requestBody").is_some(),
                "{method} {path}"
            );
            assert_eq!(
                responses["401"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorResponse"
            );
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["APIKeyHeader"]["name"],
        "X-API-Key"
    );
}
