//! Per-user keys over HTTP, and training status.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Per-user keys over HTTP: minted read-only or read-write, listed, revoked; a read-only
/// key is refused on every write, no user key on owner operations; a user key sees only its
/// index; revocation is immediate.
#[tokio::test]
async fn user_keys_over_http() {
    let s = Running::memory().await;
    for name in ["docs", "other"] {
        s.post_ok(
            "/v1/indexes/create",
            &json!({"index_name": name, "index_key": KEY_HEX, "dimension": 4}),
        )
        .await;
    }
    let items: Vec<Value> = (0..50)
        .map(|i| json!({"id": format!("id-{i}"), "vector": vector(i)}))
        .collect();
    s.post_ok(
        "/v1/vectors/upsert",
        &json!({"index_name": "docs", "index_key": KEY_HEX, "items": items}),
    )
    .await;
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
    s.post_ok(
        "/v1/indexes/create",
        &json!({"index_name": "big", "index_key": KEY_HEX, "dimension": 4}),
    )
    .await;
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
