//! The HTTP service (CyborgDB service API 0.17 and the older `index_config` form, docs/ARCHITECTURE.md
//! §4.4) against a real server bound to `127.0.0.1:0`: auth, the full index and vector life
//! cycle in both forms, binary upserts and queries, metadata queries, automatic dimension
//! and list count, squared Euclidean, per-user keys, every error path's status and JSON body
//! (with the index unchanged afterwards), the served OpenAPI document, and KMS-envelope keys
//! through a local moto KMS. The official Python SDKs run against the real process in
//! `tests/sdk.rs`.
#![allow(clippy::unwrap_used, clippy::too_many_lines)]

#[path = "../common/mod.rs"]
mod common;

// The tests, by subject (one test binary).
mod errors;
mod forms;
mod users;

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

    /// POST that must succeed (200); returns it as [`Running::post`] does.
    async fn post_ok(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.post(path, body).await;
        assert_eq!(r.0, 200, "{path}: {}", r.1);
        r
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
    let r = s.post_ok("/v1/indexes/create", &create).await;
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
        .post_ok(
            "/v1/vectors/upsert",
            &json!({"index_name": "docs", "index_key": KEY_HEX, "items": items}),
        )
        .await;
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

    s.post_ok(
        "/v1/indexes/train",
        &json!({"index_name": "docs", "index_key": KEY_HEX, "max_iters": 10}),
    )
    .await;
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
    s.post_ok(
        "/v1/vectors/upsert",
        &json!({"index_name": "vault", "items": [{"id": "a", "vector": [1.0, 2.0]}]}),
    )
    .await;
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
    s.post_ok(
        "/v1/indexes/create",
        &json!({"index_name": "vault2", "dimension": 2, "kms_name": "aws-kms"}),
    )
    .await;
    s.post_ok(
        "/v1/vectors/upsert",
        &json!({"index_name": "vault2", "items": [{"id": "b", "vector": [3.0, 4.0]}]}),
    )
    .await;
    let r = s
        .post_ok(
            "/v1/indexes/vault2/users",
            &json!({"permissions": ["read"]}),
        )
        .await;
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
    s.post_ok(
        "/v1/indexes/create",
        &json!({"index_name": "plain", "index_key": KEY_HEX, "index_config": {"dimension": 2}}),
    )
    .await;
    let r = s
        .post("/v1/vectors/num_vectors", &json!({"index_name": "plain"}))
        .await;
    assert_error(&r, 401, "missing_key");
    s.stop().await;
}
