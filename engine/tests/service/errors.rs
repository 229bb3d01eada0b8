//! Every error path's status and JSON body, with the index unchanged afterwards.

#[allow(clippy::wildcard_imports)]
use super::*;

#[tokio::test]
async fn bad_requests_are_clear_errors_and_change_nothing() {
    let mut c = config(StorageConfig::memory());
    c.max_body_bytes = 64 * 1024;
    let s = Running::start(c).await;
    s.post_ok(
        "/v1/indexes/create",
        &json!({"index_name": "docs", "index_key": KEY_HEX, "index_config": {"dimension": 2}}),
    )
    .await;
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
