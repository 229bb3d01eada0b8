//! The engine's `tkms` KMS provider against a real cluster (`tkms testnet up`, 3 nodes,
//! t = 2), as a user runs it:
//!
//! - an index created under a fresh KEK ECIES-encrypted to the cluster key, filled, dropped,
//!   and loaded again from disk with the KEK unwrapped through `/v1/reencrypt` (as the
//!   runner, then the gateway) answers queries;
//! - the same through `tkms engine serve --tkms-manager-url ...` (no `index_key` in requests);
//! - a requester the registry does not authorize, a manager that is not the expected one,
//!   and an envelope copied onto another index each give a clear error and open nothing;
//! - with 2 of the 3 nodes killed (more than n - t) unwrapping fails with a clear error.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::{path::Path, process::Stdio};

use k256::ecdsa::SigningKey;
use rand_core::OsRng;
use serde_json::{json, Value};
use tkms_e2e::{tkms, Cluster, Options, Testnet};
use tkms_engine::kms::{KeyProvider, TkmsConfig, TkmsProvider, PROVIDER_TKMS};
use tkms_engine::{Client, Error, IndexConfig, Item, QueryParams, StorageConfig};

fn provider(t: &Testnet, requester: SigningKey, manager: &str) -> TkmsProvider {
    TkmsProvider::new(TkmsConfig {
        manager_url: t.manager_url.clone(),
        chain_id: t.chain_id,
        requester,
        manager_address: Some(manager.parse().unwrap()),
    })
    .unwrap()
}

fn key(hex_text: &str) -> SigningKey {
    TkmsConfig::requester_from_hex(hex_text).unwrap()
}

fn vector(i: usize) -> Vec<f32> {
    #[allow(clippy::cast_precision_loss)]
    let x = i as f32;
    vec![x, (x * 0.37).sin(), (x * 0.11).cos(), 1.0]
}

fn kms_error(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::Kms(message)) => {
            eprintln!("refused as expected: {message}");
            message
        }
        other => panic!("expected a KMS error, got {other:?}"),
    }
}

/// `tkms engine serve` over memory storage with the tkms provider; its base URL.
fn serve(cluster: &mut Cluster, dir: &Path) -> String {
    let t = cluster.testnet();
    let key_file = dir.join("runner.key");
    std::fs::write(&key_file, format!("{}\n", t.runner_private_key)).unwrap();
    let mut child = tkms()
        .args([
            "engine",
            "serve",
            "--storage",
            "memory",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--tkms-manager-url", &t.manager_url])
        .args(["--tkms-chain-id", &t.chain_id.to_string()])
        .arg("--tkms-requester-key-file")
        .arg(&key_file)
        .args(["--tkms-manager-address", &t.manager_address])
        .env("TKMS_ENGINE_API_KEY", "engine-test-api-key")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let url = tkms_e2e::engine_url(&mut child);
    cluster.adopt(child);
    url
}

async fn post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("X-API-Key", "engine-test-api-key")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_kek_wrapped_to_the_cluster_and_unwrapped_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), &Options::new(3, 2));
    let t = cluster.testnet().clone();
    let runner = provider(&t, key(&t.runner_private_key), &t.manager_address);
    let storage = StorageConfig::disk(dir.path().join("engine"));

    // Create under a KEK wrapped to the cluster key, fill, drop everything.
    {
        let client = Client::new(storage.clone()).unwrap();
        let index = client
            .create_index_with_kms("docs", &runner, &t.manager_url, IndexConfig::new(4))
            .unwrap();
        let items = (0..300).map(|i| Item::new(format!("id-{i}"), vector(i)));
        index.upsert(items.collect()).unwrap();
        let blob = client.get_index_kms("docs").unwrap();
        assert_eq!(blob.provider, PROVIDER_TKMS);
        assert_eq!(blob.key_id, t.public_key);
        assert_eq!(blob.region, format!("eip155:{}", t.chain_id));
        assert_eq!(blob.kms_name, t.manager_url);
        // K(33) || nonce(12) || KEK(32) || tag(16)
        assert_eq!(blob.wrapped_kek.len(), 33 + 12 + 32 + 16);
    }

    // Load from disk in a fresh client: the KEK comes back through the cluster.
    let client = Client::new(storage).unwrap();
    let index = client.load_index_kms("docs", &runner).unwrap();
    let hits = index.query(&vector(42), &QueryParams::new(3)).unwrap();
    assert_eq!(hits[0].id, "id-42");
    assert_eq!(
        index.get(&["id-7".to_owned()]).unwrap()[0].vector,
        vector(7)
    );
    drop(index);
    // A gateway may re-encrypt too.
    let gateway = provider(&t, key(&t.gateway_private_key), &t.manager_address);
    client.load_index_kms("docs", &gateway).unwrap();

    refusals(&client, &t, &runner);
    let base = serve(&mut cluster, dir.path());
    through_the_service(&base).await;

    // More than n - t = 1 nodes down: the cluster cannot unwrap; a clear error.
    for i in 0..2 {
        cluster.kill_node(i);
    }
    let message = kms_error(client.load_index_kms("docs", &runner));
    assert!(message.contains("too few nodes"), "{message}");
    let r = post(
        &base,
        "/v1/vectors/num_vectors",
        &json!({"index_name": "vault"}),
    )
    .await;
    assert_eq!(
        (r.0, r.1["code"].as_str()),
        (502, Some("kms_error")),
        "{}",
        r.1
    );

    // The manager gone: unreachable.
    cluster.kill_manager();
    let message = kms_error(client.load_index_kms("docs", &runner));
    assert!(message.contains("cannot reach"), "{message}");
}

/// Refusals: each a clear error, and nothing opened.
fn refusals(client: &Client, t: &Testnet, runner: &TkmsProvider) {
    // A requester without a role: refused by the cluster, nothing opened.
    let stranger = provider(t, SigningKey::random(&mut OsRng), &t.manager_address);
    let message = kms_error(client.load_index_kms("docs", &stranger));
    assert!(message.contains("refused requester"), "{message}");
    assert!(
        message.contains(&stranger.requester_address().to_string()),
        "{message}"
    );
    // Answers signed by another manager wallet are not accepted.
    let other_manager = "0x000000000000000000000000000000000000dEaD";
    let message = kms_error(client.load_index_kms(
        "docs",
        &provider(t, key(&t.runner_private_key), other_manager),
    ));
    assert!(message.contains("failed verification"), "{message}");
    // The envelope of `docs` copied onto another index unwraps to a KEK that index refuses.
    client
        .create_index_with_kms("notes", runner, "tkms", IndexConfig::new(4))
        .unwrap();
    let docs_envelope = client.get_index_kms("docs").unwrap();
    client.push_index_kms("notes", &docs_envelope).unwrap();
    assert!(matches!(
        client.load_index_kms("notes", runner),
        Err(Error::WrongKey { index }) if index == "notes"
    ));
    // A wrap for another chain is refused before any request.
    let mut foreign = docs_envelope;
    foreign.region = "eip155:1".into();
    assert!(matches!(
        runner.unwrap("docs", &foreign),
        Err(Error::InvalidEnvelope(_))
    ));
}

/// `tkms engine serve --tkms-manager-url ...`: no index_key in any request.
async fn through_the_service(base: &str) {
    let r = post(
        base,
        "/v1/indexes/create",
        // The body the cyborgdb SDK sends for create_index(name, kms_name="tkms", dimension=4).
        &json!({"index_name": "vault", "dimension": 4, "kms_name": "tkms"}),
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let items: Vec<Value> = (0..50)
        .map(|i| json!({"id": format!("v-{i}"), "vector": vector(i)}))
        .collect();
    let r = post(
        base,
        "/v1/vectors/upsert",
        &json!({"index_name": "vault", "items": items}),
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let r = post(
        base,
        "/v1/vectors/query",
        &json!({"index_name": "vault", "query_vectors": vector(9), "top_k": 1}),
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.1);
    // One list of hits per query vector.
    assert_eq!(r.1["results"][0][0]["id"], "v-9");
}
