//! The current API form: binary routes and metadata queries.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The current (API 0.17) form: flat create body, dimension from the first upsert, lists
/// chosen at training, squared Euclidean, binary upserts and queries, metadata queries.
#[tokio::test]
async fn current_api_form_binary_routes_and_metadata_queries() {
    let s = Running::memory().await;
    let key = json!({"index_name": "auto", "index_key": KEY_HEX});
    s.post_ok(
        "/v1/indexes/create",
        &json!({"index_name": "auto", "index_key": KEY_HEX, "metric": "squared_euclidean"}),
    )
    .await;
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
    s.post_ok(
        "/v1/indexes/train",
        &json!({"index_name": "auto", "index_key": KEY_HEX}),
    )
    .await;
    assert_eq!(
        s.post("/v1/indexes/describe", &key).await.1["n_lists"],
        tkms_engine::auto_n_lists(n, 4)
    );
    assert_eq!(tkms_engine::auto_n_lists(n, 4), 10);
    // Retraining with another count is allowed.
    s.post_ok(
        "/v1/indexes/train",
        &json!({"index_name": "auto", "index_key": KEY_HEX, "n_lists": 6}),
    )
    .await;
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
        .post_ok(
            "/v1/vectors/query_metadata",
            &mq(json!({"filters": {"kind": "x", "rank": {"$gt": 390}}})),
        )
        .await;
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
