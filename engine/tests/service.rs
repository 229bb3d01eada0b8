//! The HTTP service (CyborgDB REST surface, docs/ARCHITECTURE.md §4.4) against a real server bound
//! to `127.0.0.1:0`: auth, the full index and vector life cycle, every error path's status and JSON
//! body (with the index unchanged afterwards), and KMS-envelope keys through a local moto KMS.
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

/// Asserts an error response: status, `code`, and a non-empty `error` message.
fn assert_error(resp: &(u16, Value), status: u16, code: &str) {
    assert_eq!(resp.0, status, "{}", resp.1);
    assert_eq!(resp.1["code"], code, "{}", resp.1);
    assert!(
        resp.1["error"].as_str().is_some_and(|m| !m.is_empty()),
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
    assert_eq!(d.1["index_config"]["dimension"], 4);
    assert_eq!(d.1["index_config"]["n_lists"], 4);
    assert_eq!(d.1["num_vectors"], 200);

    // Single query: exact match first, default include = distance + metadata.
    let r = s
        .post(
            "/v1/vectors/query",
            &json!({"index_name": "docs", "index_key": KEY_HEX, "query_vectors": vector(7),
                    "top_k": 3, "n_probes": 4}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let hits = r.1["results"].as_array().unwrap();
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0]["id"], "id-7");
    assert_eq!(hits[0]["metadata"]["i"], 7);
    assert!(hits[0]["distance"].as_f64().unwrap() < 1e-3);
    assert!(hits[0].get("vector").is_none() && hits[0].get("contents").is_none());

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
            assert!(h.get("distance").is_none());
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
        // Bad vectors and items.
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
                "items": [{"id": "b", "vector": [1.0, 2.0], "metadata": [1]}]}),
            400,
            "invalid_argument",
        ),
        (
            "/v1/vectors/upsert",
            json!({"index_name": "docs", "index_key": KEY_HEX,
                "items": [{"id": "b", "vector": "x"}]}),
            400,
            "invalid_json",
        ),
        (
            "/v1/vectors/upsert",
            json!({"index_name": "docs", "index_key": KEY_HEX, "items": [], "extra": 1}),
            400,
            "invalid_json",
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
            400,
            "invalid_request",
        ),
        (
            "/v1/vectors/query",
            json!({"index_name": "docs", "index_key": KEY_HEX, "query_contents": "hello"}),
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
            json!({"index_name": "../etc", "index_key": KEY_HEX, "query_vectors": [1.0, 2.0]}),
            400,
            "invalid_index_name",
        ),
        // Bad creates and trains.
        (
            "/v1/indexes/create",
            json!({"index_name": "x", "index_key": KEY_HEX, "index_config": {"dimension": 0}}),
            400,
            "invalid_config",
        ),
        (
            "/v1/indexes/create",
            json!({"index_name": "x", "index_key": KEY_HEX}),
            400,
            "invalid_request",
        ),
        (
            "/v1/indexes/create",
            json!({"index_name": "x", "index_key": KEY_HEX,
                "index_config": {"dimension": 2, "metric": "hamming"}}),
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
            "/v1/indexes/train",
            json!({"index_name": "docs", "index_key": KEY_HEX, "n_lists": 7}),
            400,
            "invalid_request",
        ),
        (
            "/v1/indexes/train",
            json!({"index_name": "docs", "index_key": KEY_HEX}),
            400,
            "not_enough_vectors",
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
    assert_error(&resp, 400, "invalid_json");
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
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_envelope_keys_through_the_service() {
    let moto = Moto::start();
    let endpoint = moto.endpoint();
    let kms_conf = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(endpoint.clone())
        .build();
    let key_id = aws_sdk_kms::Client::from_conf(kms_conf)
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;
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
