//! The HTTP service (CyborgDB service API 0.17 and the older `index_config` form, docs/ARCHITECTURE.md
//! §4.4) against a real server bound to `127.0.0.1:0`: auth, the full index and vector life
//! cycle in both forms, binary upserts and queries, metadata queries, automatic dimension
//! and list count, squared Euclidean, per-user keys, every error path's status and JSON body
//! (with the index unchanged afterwards), the served OpenAPI document, and KMS-envelope keys
//! through a local moto KMS. The official Python SDKs run against the real process in
//! `tests/sdk.rs`.
#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::moto::Moto;
use serde_json::{json, Value};
use tkms_engine::kms::{AwsCredentials, AwsKmsConfig, AwsKmsProvider};
use tkms_engine::service::{bind, ServiceConfig};
use tkms_engine::{Error, StorageConfig};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

const API_KEY: &str = "test-api-key-0123456789";
const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const OTHER_KEY_HEX: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<tkms_engine::Result<()>>,
    http: reqwest::Client,
}

impl Running {
    async fn start(config: ServiceConfig) -> Self {
        let server = bind(config).await.unwrap();
        let addr = server.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Self {
            addr,
            stop: Some(tx),
            task,
            http: reqwest::Client::new(),
        }
    }

    async fn memory() -> Self {
        Self::start(config(StorageConfig::memory())).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POST with the API key; returns (status, JSON body).
    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .header("X-API-Key", API_KEY)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .header("X-API-Key", API_KEY)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

fn config(storage: StorageConfig) -> ServiceConfig {
    ServiceConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        storage,
        vec![Zeroizing::new(API_KEY.to_owned())],
    )
}

/// Asserts an error response: status, CyborgDB's `{status_code, detail}` body with a
/// non-empty detail, and our `code`.
fn assert_error(resp: &(u16, Value), status: u16, code: &str) {
    assert_eq!(resp.0, status, "{}", resp.1);
    assert_eq!(resp.1["status_code"], status, "{}", resp.1);
    assert_eq!(resp.1["code"], code, "{}", resp.1);
    assert!(
        resp.1["detail"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        resp.1
    );
}

fn vector(i: usize) -> Vec<f32> {
    let x = i as f32;
    vec![
        (x * 0.37).sin() * 10.0,
        (x * 0.11).cos() * 10.0,
        x / 20.0,
        1.0,
    ]
}

/// Little-endian float32 values, base64 (the SDK's binary form).
fn b64(values: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn auth_health_and_unknown_routes() {
    let s = Running::memory().await;
    // Health needs no key.
    let r = s.http.get(s.url("/v1/health")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "healthy");
    // Everything else does.
    for (method, path) in [
        ("GET", "/v1/indexes/list"),
        ("POST", "/v1/indexes/create"),
        ("POST", "/v1/vectors/query"),
    ] {
        for key in [None, Some("wrong-key-0123456789"), Some("")] {
            let mut req = s.http.request(method.parse().unwrap(), s.url(path));
            if let Some(k) = key {
                req = req.header("X-API-Key", k);
            }
            let r = req.json(&json!({})).send().await.unwrap();
            let resp = (r.status().as_u16(), r.json::<Value>().await.unwrap());
            assert_error(&resp, 401, "unauthorized");
        }
    }
    assert_error(&s.get("/v1/nothing").await, 404, "not_found");
    // A known route with another method: 405, same error body.
    let r = s
        .http
        .put(s.url("/v1/indexes/create"))
        .header("X-API-Key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_error(
        &(r.status().as_u16(), r.json::<Value>().await.unwrap()),
        405,
        "method_not_allowed",
    );
    // A random user key (well-formed or not) is refused wherever it names an index, and
    // sees no index.
    let forged = format!("cdbk_{}", "A".repeat(67));
    for key in [forged.as_str(), "cdbk_not-base64!"] {
        let r = s
            .http
            .post(s.url("/v1/vectors/list_ids"))
            .header("X-API-Key", key)
            .json(&json!({"index_name": "docs"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
    // The OpenAPI document is public and is the generated one.
    let r = s.http.get(s.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        tkms_engine::service::openapi_json_text()
    );
    // A service without API keys, or with a short one, is refused at start.
    let mut c = config(StorageConfig::memory());
    c.api_keys.clear();
    assert!(matches!(bind(c).await, Err(Error::InvalidArgument(_))));
    let mut c = config(StorageConfig::memory());
    c.api_keys = vec![Zeroizing::new("short".into())];
    assert!(matches!(bind(c).await, Err(Error::InvalidArgument(_))));
    s.stop().await;
}

#[tokio::test]
async fn index_and_vector_life_cycle() {
    let s = Running::memory().await;
    let create = json!({
        "index_name": "docs",
        "index_key": KEY_HEX,
        "index_config": {"type": "ivfflat", "dimension": 4, "n_lists": 4, "metric": "euclidean"},
    });
    let r = s.post("/v1/indexes/create", &create).await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["status"], "success");
    assert_error(
        &s.post("/v1/indexes/create", &create).await,
        409,
        "index_exists",
    );
    assert_eq!(
        s.get("/v1/indexes/list").await.1["indexes"],
        json!(["docs"])
    );

    let items: Vec<Value> = (0..200)
        .map(|i| {
            json!({
                "id": format!("id-{i}"),
                "vector": vector(i),
                "contents": format!("document number {i}"),
                "metadata": {"parity": if i % 2 == 0 {"even"} else {"odd"}, "i": i},
            })
        })
        .collect();
    let r = s
        .post(
            "/v1/vectors/upsert",
            &json!({"index_name": "docs", "index_key": KEY_HEX, "items": items}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["count"], 200);
    let key = json!({"index_name": "docs", "index_key": KEY_HEX});
    assert_eq!(
        s.post("/v1/vectors/num_vectors", &key).await.1["count"],
        200
    );
    let d = s.post("/v1/indexes/describe", &key).await;
    assert_eq!(
        (d.1["is_trained"].clone(), d.1["n_lists"].clone()),
        (json!(false), json!(1))
    );

    let r = s
        .post(
            "/v1/indexes/train",
            &json!({"index_name": "docs", "index_key": KEY_HEX, "max_iters": 10}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let d = s.post("/v1/indexes/describe", &key).await;
    assert_eq!(d.0, 200);
    assert_eq!(d.1["is_trained"], true);
    // Both SDK generations' fields: top level (0.17) and index_config (0.12).
    for c in [&d.1, &d.1["index_config"]] {
        assert_eq!(c["dimension"], 4);
        assert_eq!(c["n_lists"], 4);
        assert_eq!(c["metric"], "euclidean");
    }
    assert_eq!(d.1["index_type"], "ivfsq8");
    assert_eq!(d.1["num_vectors"], 200);

    // Single query: one list of hits (a batch of one), exact match first; without include
    // only ids and distances.
    let r = s
        .post(
            "/v1/vectors/query",
            &json!({"index_name": "docs", "index_key": KEY_HEX, "query_vectors": vector(7),
                    "top_k": 3, "n_probes": 4}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["results"].as_array().unwrap().len(), 1);
    let hits = r.1["results"][0].as_array().unwrap();
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0]["id"], "id-7");
    assert!(hits[0]["distance"].as_f64().unwrap() < 1e-3);
    assert_eq!(hits[0].as_object().unwrap().len(), 2, "{}", hits[0]);

    // Batch query with a filter and include.
    let r = s
        .post(
            "/v1/vectors/query",
            &json!({"index_name": "docs", "index_key": KEY_HEX,
                    "query_vectors": [vector(7), vector(8)], "top_k": 5, "n_probes": 4,
                    "filters": {"parity": {"$eq": "odd"}, "i": {"$lt": 100}},
                    "include": ["contents", "vector"]}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let batches = r.1["results"].as_array().unwrap();
    assert_eq!(batches.len(), 2);
    for hits in batches {
        let hits = hits.as_array().unwrap();
        assert_eq!(hits.len(), 5);
        for h in hits {
            let i: usize = h["id"].as_str().unwrap()[3..].parse().unwrap();
            assert!(i % 2 == 1 && i < 100, "{h}");
            assert_eq!(h["contents"], format!("document number {i}"));
            assert_eq!(h["vector"].as_array().unwrap().len(), 4);
            // The distance is always returned.
            assert!(h["distance"].is_number());
            assert!(h.get("metadata").is_none());
        }
    }
    assert_eq!(batches[0][0]["id"], "id-7");

    // Get (unknown ids skipped), delete, list_ids.
    let r = s
        .post(
            "/v1/vectors/get",
            &json!({"index_name": "docs", "index_key": KEY_HEX, "ids": ["id-3", "nope"],
                    "include": ["metadata"]}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(
        r.1["results"],
        json!([{"id": "id-3", "metadata": {"parity": "odd", "i": 3}}])
    );
    let r = s
        .post(
            "/v1/vectors/delete",
            &json!({"index_name": "docs", "index_key": KEY_HEX, "ids": ["id-3", "id-4", "nope"]}),
        )
        .await;
    assert_eq!(r.1["count"], 2);
    let r = s.post("/v1/vectors/list_ids", &key).await;
    assert_eq!(r.1["count"], 198);
    assert!(!r.1["ids"].as_array().unwrap().contains(&json!("id-3")));

    // Delete the index.
    assert_eq!(s.post("/v1/indexes/delete", &key).await.0, 200);
    assert_error(
        &s.post("/v1/indexes/describe", &key).await,
        404,
        "index_not_found",
    );
    assert_eq!(s.get("/v1/indexes/list").await.1["indexes"], json!([]));
    s.stop().await;
}

#[tokio::test]
async fn bad_requests_are_clear_errors_and_change_nothing() {
    let mut c = config(StorageConfig::memory());
    c.max_body_bytes = 64 * 1024;
    let s = Running::start(c).await;
    let r = s
        .post(
            "/v1/indexes/create",
            &json!({"index_name": "docs", "index_key": KEY_HEX, "index_config": {"dimension": 2}}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let ok_upsert = json!({"index_name": "docs", "index_key": KEY_HEX,
                           "items": [{"id": "a", "vector": [1.0, 2.0]}]});
    assert_eq!(s.post("/v1/vectors/upsert", &ok_upsert).await.0, 200);

    let cases: Vec<(&str, Value, u16, &str)> = vec![
        // Wrong index key: refused, nothing changed.
        (
            "/v1/vectors/upsert",
            json!({"index_name": "docs", "index_key": OTHER_KEY_HEX,
                "items": [{"id": "b", "vector": [1.0, 2.0]}]}),
            401,
            "wrong_key",
        ),
        (
            "/v1/vectors/delete",
            json!({"index_name": "docs", "index_key": OTHER_KEY_HEX, "ids": ["a"]}),
            401,
            "wrong_key",
        ),
        (
            "/v1/indexes/delete",
            json!({"index_name": "docs", "index_key": OTHER_KEY_HEX}),
            401,
            "wrong_key",
        ),
        (
            "/v1/vectors/upsert",
            json!({"index_name": "docs", "index_key": "abcd", "items": []}),
            400,
            "invalid_key",
        ),
        (
            "/v1/vectors/upsert",
            json!({"index_name": "docs", "index_key": "zz".repeat(32), "items": []}),
            400,
            "invalid_key",
        ),
        (
            "/v1/vectors/upsert",
            json!({"index_name": "docs", "items": []}),
            401,
            "missing_key",
        ),
        // Bad vectors and items: the engine's refusals are 400, bodies that do not match
        // the OpenAPI document 422 (as CyborgDB).
        (
            "/v1/vectors/upsert",
            json!({"index_name": "docs", "index_key": KEY_HEX,
                "items": [{"id": "b", "vector": [1.0, 2.0, 3.0]}]}),
            400,
            "dimension_mismatch",
        ),
        (
            "/v1/vectors/upsert",
            json!({"index_name": "docs", "index_key": KEY_HEX,
                "items": [{"id": "b", "vector": [1.0, 2.0]}, {"id": "b", "vector": [1.0, 2.0]}]}),
            400,
            "duplicate_id",
        ),
        (
            "/v1/vectors/upsert",
            json!({"index_name": "docs", "index_key": KEY_HEX,
                "items": [{"id": "", "vector": [1.0, 2.0]}]}),
            400,
            "invalid_argument",
        ),
        (
            "/v1/vectors/upsert",
            json!({"index_name": "docs", "index_key": KEY_HEX,
                "items": [{"id": "b", "vector": [1.0, 2.0], "metadata": [1]}]}),
            422,
            "invalid_json",
        ),
        (
            "/v1/vectors/upsert",
            json!({"index_name": "docs", "index_key": KEY_HEX,
                "items": [{"id": "b", "vector": "x"}]}),
            422,
            "invalid_json",
        ),
        (
            "/v1/vectors/upsert",
            json!({"index_name": "docs", "index_key": KEY_HEX, "items": [], "extra": 1}),
            422,
            "invalid_json",
        ),
        (
            "/v1/vectors/upsert_binary",
            json!({"index_name": "docs", "index_key": KEY_HEX,
                "batch": {"ids": ["b"], "vectors_b64": "not base64!", "dimension": 2}}),
            400,
            "invalid_request",
        ),
        (
            "/v1/vectors/upsert_binary",
            json!({"index_name": "docs", "index_key": KEY_HEX,
                "batch": {"ids": ["b", "c"], "vectors_b64": b64(&[1.0, 2.0]), "dimension": 2}}),
            400,
            "invalid_request",
        ),
        (
            "/v1/vectors/upsert_binary",
            json!({"index_name": "docs", "index_key": KEY_HEX,
                "batch": {"ids": ["b"], "vectors_b64": b64(&[1.0, 2.0, 3.0]), "dimension": 2}}),
            400,
            "invalid_request",
        ),
        (
            "/v1/vectors/upsert_binary",
            json!({"index_name": "docs", "index_key": KEY_HEX,
                "batch": {"ids": ["b"], "vectors_b64": b64(&[1.0, 2.0]), "dimension": 2,
                          "metadata": [{"a": 1}, {"a": 2}]}}),
            400,
            "invalid_request",
        ),
        (
            "/v1/vectors/upsert_binary",
            json!({"index_name": "docs", "index_key": KEY_HEX,
                "batch": {"ids": ["b"], "vectors_b64": b64(&[1.0, f32::NAN]), "dimension": 2}}),
            400,
            "non_finite_vector",
        ),
        // Bad queries.
        (
            "/v1/vectors/query",
            json!({"index_name": "docs", "index_key": KEY_HEX, "query_vectors": [1.0]}),
            400,
            "dimension_mismatch",
        ),
        (
            "/v1/vectors/query",
            json!({"index_name": "docs", "index_key": KEY_HEX, "query_vectors": [1.0, 2.0],
                "top_k": 0}),
            400,
            "invalid_argument",
        ),
        (
            "/v1/vectors/query",
            json!({"index_name": "docs", "index_key": KEY_HEX, "query_vectors": [1.0, 2.0],
                "filters": {"x": {"$regex": "a"}}}),
            400,
            "invalid_filter",
        ),
        (
            "/v1/vectors/query",
            json!({"index_name": "docs", "index_key": KEY_HEX, "query_vectors": [1.0, 2.0],
                "include": ["everything"]}),
            422,
            "invalid_json",
        ),
        (
            "/v1/vectors/query",
            json!({"index_name": "docs", "index_key": KEY_HEX, "query_contents": "hello"}),
            400,
            "not_supported",
        ),
        (
            "/v1/vectors/query",
            json!({"index_name": "docs", "index_key": KEY_HEX, "query_vectors": [1.0, 2.0],
                "text": "hello"}),
            400,
            "not_supported",
        ),
        (
            "/v1/vectors/query",
            json!({"index_name": "docs", "index_key": KEY_HEX}),
            400,
            "invalid_request",
        ),
        (
            "/v1/vectors/query_binary",
            json!({"index_name": "docs", "index_key": KEY_HEX,
                "batch": {"vectors_b64": b64(&[1.0, 2.0]), "dimension": 0}}),
            400,
            "invalid_request",
        ),
        (
            "/v1/vectors/query_metadata",
            json!({"index_name": "docs", "index_key": KEY_HEX, "order_by": {"a": 2}}),
            400,
            "invalid_request",
        ),
        (
            "/v1/vectors/query_metadata",
            json!({"index_name": "docs", "index_key": KEY_HEX, "top_k": 0}),
            400,
            "invalid_request",
        ),
        (
            "/v1/vectors/query",
            json!({"index_name": "nope", "index_key": KEY_HEX, "query_vectors": [1.0, 2.0]}),
            404,
            "index_not_found",
        ),
        (
            "/v1/vectors/query",
            json!({"index_name": "nope", "query_vectors": [1.0, 2.0]}),
            404,
            "index_not_found",
        ),
        (
            "/v1/vectors/query",
            json!({"index_name": "../etc", "index_key": KEY_HEX, "query_vectors": [1.0, 2.0]}),
            400,
            "invalid_index_name",
        ),
        // Bad creates and trains.
        (
            "/v1/indexes/create",
            json!({"index_name": "x", "index_key": KEY_HEX, "dimension": 0}),
            400,
            "invalid_request",
        ),
        (
            "/v1/indexes/create",
            json!({"index_name": "x", "index_key": KEY_HEX, "dimension": 4,
                "index_config": {"dimension": 5}}),
            400,
            "invalid_request",
        ),
        (
            "/v1/indexes/create",
            json!({"index_name": "x", "index_key": KEY_HEX, "dimension": 70_000}),
            400,
            "invalid_config",
        ),
        (
            "/v1/indexes/create",
            json!({"index_name": "x", "index_key": KEY_HEX,
                "index_config": {"dimension": 2, "metric": "hamming"}}),
            422,
            "invalid_json",
        ),
        (
            "/v1/indexes/create",
            json!({"index_name": "x", "index_key": KEY_HEX, "storage_precision": "tq4"}),
            400,
            "not_supported",
        ),
        (
            "/v1/indexes/create",
            json!({"index_name": "x", "index_key": KEY_HEX, "embedding_model": "m"}),
            400,
            "not_supported",
        ),
        (
            "/v1/indexes/create",
            json!({"index_name": "x", "index_key": KEY_HEX, "text_fields": ["body"]}),
            400,
            "not_supported",
        ),
        (
            "/v1/indexes/create",
            json!({"index_name": "x", "dimension": 2}),
            400,
            "invalid_request",
        ),
        (
            "/v1/indexes/create",
            json!({"index_name": "x", "index_config": {"dimension": 2},
                "kms": {"provider": "aws-kms"}}),
            400,
            "invalid_request",
        ),
        (
            "/v1/indexes/create",
            json!({"index_name": "x", "dimension": 2, "kms_name": "aws-kms"}),
            400,
            "invalid_request",
        ),
        (
            "/v1/indexes/create",
            json!({"index_name": "x", "index_key": KEY_HEX, "dimension": 2,
                "kms_name": "aws-kms"}),
            400,
            "invalid_request",
        ),
        (
            "/v1/indexes/train",
            json!({"index_name": "docs", "index_key": KEY_HEX, "n_lists": 7}),
            400,
            "not_enough_vectors",
        ),
        (
            "/v1/indexes/train",
            json!({"index_name": "docs", "index_key": KEY_HEX, "n_lists": 0}),
            400,
            "invalid_request",
        ),
        (
            "/v1/indexes/train",
            json!({"index_name": "docs", "index_key": KEY_HEX, "max_iters": 5000}),
            400,
            "invalid_argument",
        ),
        // User-key routes: owner operations need the index key.
        (
            "/v1/indexes/docs/users",
            json!({"permissions": []}),
            400,
            "invalid_request",
        ),
        (
            "/v1/indexes/docs/users",
            json!({"permissions": ["admin"], "index_key": KEY_HEX}),
            422,
            "invalid_json",
        ),
        (
            "/v1/indexes/docs/users",
            json!({"permissions": ["read"], "index_key": OTHER_KEY_HEX}),
            401,
            "wrong_key",
        ),
        (
            "/v1/indexes/docs/users",
            json!({"permissions": ["read"]}),
            401,
            "missing_key",
        ),
    ];
    for (path, body, status, code) in cases {
        let r = s.post(path, &body).await;
        assert_eq!(r.0, status, "{path} {body}: {}", r.1);
        assert_eq!(r.1["code"], code, "{path} {body}: {}", r.1);
    }

    // Not JSON at all, and a body over the limit.
    let r = s
        .http
        .post(s.url("/v1/vectors/upsert"))
        .header("X-API-Key", API_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let resp = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_error(&resp, 422, "invalid_json");
    // JSON not declared as such.
    let r = s
        .http
        .post(s.url("/v1/vectors/upsert"))
        .header("X-API-Key", API_KEY)
        .body(ok_upsert.to_string())
        .send()
        .await
        .unwrap();
    let resp = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_error(&resp, 415, "unsupported_media_type");
    let big = json!({"index_name": "docs", "index_key": KEY_HEX,
                     "items": [{"id": "big", "vector": [1.0, 2.0], "contents": "x".repeat(100_000)}]});
    assert_error(
        &s.post("/v1/vectors/upsert", &big).await,
        413,
        "payload_too_large",
    );

    // Nothing changed: one item, index still opens with its key.
    let key = json!({"index_name": "docs", "index_key": KEY_HEX});
    let r = s.post("/v1/vectors/list_ids", &key).await;
    assert_eq!(r.1["ids"], json!(["a"]));
    assert_eq!(
        s.get("/v1/indexes/list").await.1["indexes"],
        json!(["docs"])
    );
    let d = s.post("/v1/indexes/describe", &key).await;
    assert_eq!(d.1["is_trained"], false);
    let r = s
        .http
        .get(s.url("/v1/indexes/docs/users"))
        .header("X-API-Key", API_KEY)
        .header("X-Index-Key", KEY_HEX)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["users"], json!([]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_envelope_keys_through_the_service() {
    let moto = Moto::start();
    let endpoint = moto.endpoint();
    let key_id = moto.create_kms_key().await;
    let provider = tokio::task::spawn_blocking(move || {
        AwsKmsProvider::new(AwsKmsConfig {
            key_id,
            region: "us-east-1".into(),
            endpoint: Some(endpoint),
            credentials: Some(AwsCredentials {
                access_key_id: "test".into(),
                secret_access_key: Zeroizing::new("test".into()),
                session_token: None,
            }),
        })
    })
    .await
    .unwrap()
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(StorageConfig::disk(dir.path()));
    c.key_providers = vec![Arc::new(provider)];
    let s = Running::start(c).await;

    let r = s
        .post(
            "/v1/indexes/create",
            &json!({"index_name": "vault", "index_config": {"dimension": 2},
                    "kms": {"provider": "aws-kms", "kms_name": "moto"}}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    // No index_key: the service unwraps the KEK from the envelope through KMS.
    let r = s
        .post(
            "/v1/vectors/upsert",
            &json!({"index_name": "vault", "items": [{"id": "a", "vector": [1.0, 2.0]}]}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let r = s
        .post("/v1/vectors/num_vectors", &json!({"index_name": "vault"}))
        .await;
    assert_eq!(r.1["count"], 1);
    // A wrong explicit key is still refused.
    let r = s
        .post(
            "/v1/vectors/num_vectors",
            &json!({"index_name": "vault", "index_key": KEY_HEX}),
        )
        .await;
    assert_error(&r, 401, "wrong_key");
    // The current SDK's form: kms_name names the provider; user keys need no index key.
    let r = s
        .post(
            "/v1/indexes/create",
            &json!({"index_name": "vault2", "dimension": 2, "kms_name": "aws-kms"}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let r = s
        .post(
            "/v1/vectors/upsert",
            &json!({"index_name": "vault2", "items": [{"id": "b", "vector": [3.0, 4.0]}]}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let r = s
        .post(
            "/v1/indexes/vault2/users",
            &json!({"permissions": ["read"]}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let user = r.1["api_key"].as_str().unwrap().to_owned();
    let r = s
        .http
        .post(s.url("/v1/vectors/get"))
        .header("X-API-Key", &user)
        .json(&json!({"index_name": "vault2", "ids": ["b"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["results"][0]["vector"],
        json!([3.0, 4.0])
    );
    // An index without an envelope still needs its key.
    let r = s
        .post(
            "/v1/indexes/create",
            &json!({"index_name": "plain", "index_key": KEY_HEX, "index_config": {"dimension": 2}}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let r = s
        .post("/v1/vectors/num_vectors", &json!({"index_name": "plain"}))
        .await;
    assert_error(&r, 401, "missing_key");
    s.stop().await;
}

/// The current (API 0.17) form: flat create body, dimension from the first upsert, lists
/// chosen at training, squared Euclidean, binary upserts and queries, metadata queries.
#[tokio::test]
async fn current_api_form_binary_routes_and_metadata_queries() {
    let s = Running::memory().await;
    let key = json!({"index_name": "auto", "index_key": KEY_HEX});
    let r = s
        .post(
            "/v1/indexes/create",
            &json!({"index_name": "auto", "index_key": KEY_HEX, "metric": "squared_euclidean"}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let d = s.post("/v1/indexes/describe", &key).await.1;
    assert_eq!(
        (&d["dimension"], &d["n_lists"], &d["metric"]),
        (&json!(0), &json!(1), &json!("squared_euclidean"))
    );
    // Before the first upsert any query finds nothing; the first upsert fixes the dimension.
    let r = s
        .post(
            "/v1/vectors/query",
            &json!({"index_name": "auto", "index_key": KEY_HEX, "query_vectors": [1.0, 2.0, 3.0]}),
        )
        .await;
    assert_eq!(r.1["results"], json!([[]]), "{}", r.1);
    let n = 400;
    let flat: Vec<f32> = (0..n).flat_map(vector).collect();
    let ids: Vec<String> = (0..n).map(|i| format!("b-{i}")).collect();
    let metadata: Vec<Value> = (0..n)
        .map(|i| {
            if i % 10 == 0 {
                Value::Null
            } else {
                json!({"rank": n - i, "kind": if i % 3 == 0 {"x"} else {"y"}})
            }
        })
        .collect();
    let contents: Vec<Value> = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                json!(format!("c{i}"))
            } else {
                json!("")
            }
        })
        .collect();
    let r = s
        .post(
            "/v1/vectors/upsert_binary",
            &json!({"index_name": "auto", "index_key": KEY_HEX, "batch": {
                "ids": ids, "vectors_b64": b64(&flat), "dimension": 4,
                "metadata": metadata, "contents": contents}}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["count"], n);
    let d = s.post("/v1/indexes/describe", &key).await.1;
    assert_eq!((&d["dimension"], &d["num_vectors"]), (&json!(4), &json!(n)));
    assert_error(
        &s.post(
            "/v1/vectors/upsert",
            &json!({"index_name": "auto", "index_key": KEY_HEX,
                    "items": [{"id": "wide", "vector": [1.0, 2.0, 3.0]}]}),
        )
        .await,
        400,
        "dimension_mismatch",
    );
    // Training without n_lists picks it from the item count: min(√400, 400 / 39) = 10.
    let r = s
        .post(
            "/v1/indexes/train",
            &json!({"index_name": "auto", "index_key": KEY_HEX}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(
        s.post("/v1/indexes/describe", &key).await.1["n_lists"],
        tkms_engine::auto_n_lists(n, 4)
    );
    assert_eq!(tkms_engine::auto_n_lists(n, 4), 10);
    // Retraining with another count is allowed.
    let r = s
        .post(
            "/v1/indexes/train",
            &json!({"index_name": "auto", "index_key": KEY_HEX, "n_lists": 6}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(s.post("/v1/indexes/describe", &key).await.1["n_lists"], 6);

    // Binary query: one list per row, squared distances.
    // 0.01 off item 5 in the constant component: squared distance 1e-4 (Euclidean: 1e-2).
    let mut q = vector(5);
    q[3] += 0.01;
    let mut rows = q.clone();
    rows.extend(vector(6));
    let r = s
        .post(
            "/v1/vectors/query_binary",
            &json!({"index_name": "auto", "index_key": KEY_HEX, "top_k": 2, "n_probes": 6,
                    "batch": {"vectors_b64": b64(&rows), "dimension": 4},
                    "include": ["metadata", "contents"]}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let results = r.1["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0][0]["id"], "b-5");
    let d = results[0][0]["distance"].as_f64().unwrap();
    assert!((d - 1e-4).abs() < 1e-6, "{d}");
    assert_eq!(
        results[0][0]["metadata"],
        json!({"rank": n - 5, "kind": "y"})
    );
    assert!(
        results[0][0].get("contents").is_none(),
        "empty contents is none"
    );
    assert_eq!(results[1][0]["id"], "b-6");
    assert_eq!(results[1][0]["contents"], "c6");

    // Metadata-only queries: filter, order (missing field last), top_k.
    let mq = |body: Value| {
        let mut b = body;
        b["index_name"] = json!("auto");
        b["index_key"] = json!(KEY_HEX);
        b
    };
    let r = s
        .post(
            "/v1/vectors/query_metadata",
            &mq(json!({"filters": {"kind": "x", "rank": {"$gt": 390}}})),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    // kind x: i % 3 == 0 and i % 10 != 0; rank > 390: i < 10 → i in {3, 6, 9}.
    assert_eq!(r.1["ids"], json!(["b-3", "b-6", "b-9"]));
    assert_eq!(r.1["count"], 3);
    assert_eq!(r.1["results"][0], json!({"id": "b-3"}));
    let r = s
        .post(
            "/v1/vectors/query_metadata",
            &mq(json!({"order_by": "rank", "ascending": false, "top_k": 2})),
        )
        .await;
    assert_eq!(r.1["ids"], json!(["b-1", "b-2"]), "{}", r.1);
    let r = s
        .post(
            "/v1/vectors/query_metadata",
            &mq(json!({"order_by": {"rank": 1}})),
        )
        .await;
    let all = r.1["ids"].as_array().unwrap();
    assert_eq!(all.len(), n);
    assert_eq!(all[0], "b-399");
    // The 40 items without metadata come last, by id.
    assert_eq!(all[n - 40], "b-0");
    assert_eq!(all[n - 39], "b-10");
    s.stop().await;
}

/// Per-user keys over HTTP: minted read-only or read-write, listed, revoked; a read-only
/// key is refused on every write, no user key on owner operations; a user key sees only its
/// index; revocation is immediate.
#[tokio::test]
async fn user_keys_over_http() {
    let s = Running::memory().await;
    for name in ["docs", "other"] {
        let r = s
            .post(
                "/v1/indexes/create",
                &json!({"index_name": name, "index_key": KEY_HEX, "dimension": 4}),
            )
            .await;
        assert_eq!(r.0, 200, "{}", r.1);
    }
    let items: Vec<Value> = (0..50)
        .map(|i| json!({"id": format!("id-{i}"), "vector": vector(i)}))
        .collect();
    let r = s
        .post(
            "/v1/vectors/upsert",
            &json!({"index_name": "docs", "index_key": KEY_HEX, "items": items}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let mint = |perms: Value| json!({"permissions": perms, "index_key": KEY_HEX});
    let ro = s
        .post("/v1/indexes/docs/users", &mint(json!(["read"])))
        .await;
    assert_eq!(ro.0, 200, "{}", ro.1);
    let rw = s
        .post("/v1/indexes/docs/users", &mint(json!(["write", "read"])))
        .await;
    assert_eq!(rw.0, 200, "{}", rw.1);
    let (ro_key, ro_id) = (
        ro.1["api_key"].as_str().unwrap().to_owned(),
        ro.1["user_id"].as_str().unwrap().to_owned(),
    );
    let rw_key = rw.1["api_key"].as_str().unwrap().to_owned();
    assert!(ro_key.starts_with("cdbk_") && ro_id.len() == 32);

    let users = s
        .http
        .get(s.url("/v1/indexes/docs/users"))
        .header("X-API-Key", API_KEY)
        .header("X-Index-Key", KEY_HEX)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let mut listed: Vec<(String, Value)> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["user_id"].as_str().unwrap().to_owned(),
                u["permissions"].clone(),
            )
        })
        .collect();
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = vec![
        (ro_id.clone(), json!(["read"])),
        (
            rw.1["user_id"].as_str().unwrap().to_owned(),
            json!(["read", "write"]),
        ),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(listed, want);

    let as_user = |key: &str, method: &str, path: &str, body: Value| {
        let req = s
            .http
            .request(method.parse().unwrap(), s.url(path))
            .header("X-API-Key", key)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let docs = json!({"index_name": "docs"});
    // Reads work without any index key.
    let r = as_user(
        &ro_key,
        "POST",
        "/v1/vectors/query",
        json!({"index_name": "docs", "query_vectors": vector(3), "top_k": 1}),
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["results"][0][0]["id"], "id-3");
    for path in [
        "/v1/vectors/list_ids",
        "/v1/indexes/describe",
        "/v1/vectors/num_vectors",
        "/v1/vectors/query_metadata",
    ] {
        let r = as_user(&ro_key, "POST", path, docs.clone()).await;
        assert_eq!(r.0, 200, "{path}: {}", r.1);
    }
    let r = as_user(&ro_key, "GET", "/v1/indexes/list", Value::Null).await;
    assert_eq!(r.1["indexes"], json!(["docs"]));
    // Every write is refused for the read-only key, and nothing changed.
    let writes = [
        (
            "/v1/vectors/upsert",
            json!({"index_name": "docs", "items": [{"id": "z", "vector": vector(1)}]}),
        ),
        (
            "/v1/vectors/upsert_binary",
            json!({"index_name": "docs", "batch": {"ids": ["z"], "vectors_b64": b64(&vector(1)), "dimension": 4}}),
        ),
        (
            "/v1/vectors/delete",
            json!({"index_name": "docs", "ids": ["id-1"]}),
        ),
        ("/v1/indexes/train", docs.clone()),
        ("/v1/indexes/delete", docs.clone()),
        ("/v1/indexes/docs/users", json!({"permissions": ["read"]})),
        (
            "/v1/indexes/create",
            json!({"index_name": "mine", "index_key": KEY_HEX, "dimension": 4}),
        ),
    ];
    for (path, body) in &writes {
        assert_error(
            &as_user(&ro_key, "POST", path, body.clone()).await,
            403,
            "permission_denied",
        );
    }
    for method in ["GET", "DELETE"] {
        let path = if method == "GET" {
            "/v1/indexes/docs/users".to_owned()
        } else {
            format!("/v1/indexes/docs/users/{ro_id}")
        };
        assert_error(
            &as_user(&ro_key, method, &path, Value::Null).await,
            403,
            "permission_denied",
        );
    }
    assert_eq!(
        s.post(
            "/v1/vectors/num_vectors",
            &json!({"index_name": "docs", "index_key": KEY_HEX})
        )
        .await
        .1["count"],
        50
    );
    // A user request must not carry an index key; the key opens no other index.
    assert_error(
        &as_user(
            &ro_key,
            "POST",
            "/v1/vectors/list_ids",
            json!({"index_name": "docs", "index_key": KEY_HEX}),
        )
        .await,
        400,
        "invalid_request",
    );
    assert_error(
        &as_user(
            &ro_key,
            "POST",
            "/v1/vectors/list_ids",
            json!({"index_name": "other"}),
        )
        .await,
        401,
        "wrong_key",
    );
    assert_error(
        &as_user(
            &ro_key,
            "POST",
            "/v1/vectors/list_ids",
            json!({"index_name": "gone"}),
        )
        .await,
        401,
        "wrong_key",
    );

    // The read-write key writes, but cannot delete the index or manage users.
    let r = as_user(
        &rw_key,
        "POST",
        "/v1/vectors/upsert",
        json!({"index_name": "docs", "items": [{"id": "w", "vector": vector(60)}]}),
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let r = as_user(&rw_key, "POST", "/v1/indexes/train", docs.clone()).await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_error(
        &as_user(&rw_key, "POST", "/v1/indexes/delete", docs.clone()).await,
        403,
        "permission_denied",
    );

    // Revocation: the next request with the key is refused, a second revocation is a 404.
    let revoke = || {
        s.http
            .delete(s.url(&format!("/v1/indexes/docs/users/{ro_id}")))
            .header("X-API-Key", API_KEY)
            .header("X-Index-Key", KEY_HEX)
            .send()
    };
    assert_eq!(revoke().await.unwrap().status().as_u16(), 204);
    assert_error(
        &as_user(&ro_key, "POST", "/v1/vectors/list_ids", docs.clone()).await,
        401,
        "wrong_key",
    );
    let r = revoke().await.unwrap();
    assert_error(
        &(r.status().as_u16(), r.json().await.unwrap()),
        404,
        "user_not_found",
    );
    let r = s
        .http
        .delete(s.url("/v1/indexes/docs/users/xyz"))
        .header("X-API-Key", API_KEY)
        .header("X-Index-Key", KEY_HEX)
        .send()
        .await
        .unwrap();
    assert_error(
        &(r.status().as_u16(), r.json().await.unwrap()),
        400,
        "invalid_request",
    );
    // Deleting the index ends the other key too.
    assert_eq!(
        s.post(
            "/v1/indexes/delete",
            &json!({"index_name": "docs", "index_key": KEY_HEX})
        )
        .await
        .0,
        200
    );
    assert_error(
        &as_user(&rw_key, "POST", "/v1/vectors/list_ids", docs.clone()).await,
        401,
        "wrong_key",
    );
    s.stop().await;
}

/// Training status: the index is listed while its training runs, and a second train request
/// meanwhile is a 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_status_and_concurrent_training() {
    let s = Running::memory().await;
    let r = s
        .post(
            "/v1/indexes/create",
            &json!({"index_name": "big", "index_key": KEY_HEX, "dimension": 4}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let flat: Vec<f32> = (0..20_000).flat_map(vector).collect();
    let ids: Vec<String> = (0..20_000).map(|i| format!("i{i}")).collect();
    let r = s
        .post(
            "/v1/vectors/upsert_binary",
            &json!({"index_name": "big", "index_key": KEY_HEX,
                    "batch": {"ids": ids, "vectors_b64": b64(&flat), "dimension": 4}}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let status = s.get("/v1/indexes/training-status").await;
    assert_eq!(status.0, 200);
    assert_eq!(status.1["training_indexes"], json!([]));
    assert_eq!(status.1["worker_pid"], 0);

    let train = json!({"index_name": "big", "index_key": KEY_HEX, "n_lists": 64, "max_iters": 200});
    let first = {
        let http = s.http.clone();
        let url = s.url("/v1/indexes/train");
        let body = train.clone();
        tokio::spawn(async move {
            let r = http
                .post(url)
                .header("X-API-Key", API_KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        })
    };
    // Wait until the training shows, then try a second one.
    let mut seen = false;
    for _ in 0..400 {
        let st = s.get("/v1/indexes/training-status").await.1;
        if st["training_indexes"] == json!(["big"]) {
            assert_eq!(st["currently_training"], "big");
            seen = true;
            break;
        }
        if first.is_finished() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(
        seen,
        "the training never showed in /v1/indexes/training-status"
    );
    assert_error(
        &s.post("/v1/indexes/train", &train).await,
        409,
        "training_in_progress",
    );
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(
        s.get("/v1/indexes/training-status").await.1["training_indexes"],
        json!([])
    );
    assert_eq!(
        s.post(
            "/v1/indexes/describe",
            &json!({"index_name": "big", "index_key": KEY_HEX})
        )
        .await
        .1["n_lists"],
        64
    );
    s.stop().await;
}
