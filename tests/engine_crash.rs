//! Crash safety of the service on disk storage (issue 6 "kill -9 the service during
//! upserts"): the real `tkms engine serve` process is killed with SIGKILL while concurrent
//! upserts are in flight, then restarted on the same directory, three times. Every upsert
//! the service acknowledged must be there after the restart, a batch that was not
//! acknowledged is there entirely or not at all, and the store opens cleanly and takes
//! writes again.
//!
//! Runs the `tkms` binary that cargo built (see [`tkms_e2e::tkms_bin`]).
#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

const API_KEY: &str = "crash-test-api-key-0123456789";
const KEY_HEX: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const BATCH: usize = 40;
const DIM: usize = 8;

struct Service {
    child: Child,
    url: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, key_file: &Path) -> Service {
    let mut child = tkms_e2e::tkms()
        .args([
            "engine",
            "serve",
            "--storage",
            "disk",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .arg("--api-key-file")
        .arg(key_file)
        .env_remove("TKMS_ENGINE_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let url = tkms_e2e::engine_url(&mut child);
    Service { child, url }
}

fn item(batch: usize, i: usize) -> Value {
    let v: Vec<f32> = (0..DIM)
        .map(|d| ((batch * 31 + i * 7 + d) % 97) as f32)
        .collect();
    json!({"id": format!("b{batch:05}-{i:03}"), "vector": v, "metadata": {"batch": batch}})
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    path: &str,
    body: &Value,
) -> Result<Value, String> {
    let r = http
        .post(format!("{url}{path}"))
        .header("X-API-Key", API_KEY)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(v)
    } else {
        Err(format!("{status}: {v}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_upserts_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key_file = dir.path().join("api-keys");
    std::fs::write(&key_file, format!("{API_KEY}\n")).unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    let mut svc = start(&data, &key_file);
    post(
        &http,
        &svc.url,
        "/v1/indexes/create",
        &json!({"index_name": "crash", "index_key": KEY_HEX,
                "index_config": {"dimension": DIM, "n_lists": 4}}),
    )
    .await
    .unwrap();

    let acked: Arc<Mutex<HashSet<usize>>> = Arc::default();
    let mut sent: HashSet<usize> = HashSet::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for round in 0..3 {
        // Two writers upsert batches until the service dies under them.
        let alive = Arc::new(AtomicBool::new(true));
        let mut writers = Vec::new();
        for _ in 0..2 {
            let (http, url, acked, next, alive) = (
                http.clone(),
                svc.url.clone(),
                Arc::clone(&acked),
                Arc::clone(&next),
                Arc::clone(&alive),
            );
            writers.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while alive.load(Ordering::SeqCst) {
                    let b = next.fetch_add(1, Ordering::SeqCst);
                    mine.push(b);
                    let items: Vec<Value> = (0..BATCH).map(|i| item(b, i)).collect();
                    let body = json!({"index_name": "crash", "index_key": KEY_HEX, "items": items});
                    match post(&http, &url, "/v1/vectors/upsert", &body).await {
                        Ok(_) => {
                            acked.lock().unwrap().insert(b);
                        }
                        Err(_) => break,
                    }
                }
                mine
            }));
        }
        // Let some writes land, then SIGKILL in the middle of the stream.
        let target = acked.lock().unwrap().len() + 20 + 7 * round;
        while acked.lock().unwrap().len() < target {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        svc.child.kill().unwrap(); // SIGKILL on Unix
        svc.child.wait().unwrap();
        alive.store(false, Ordering::SeqCst);
        for w in writers {
            sent.extend(w.await.unwrap());
        }

        // Restart on the same directory: the store opens cleanly.
        svc = start(&data, &key_file);
        let ids = post(
            &http,
            &svc.url,
            "/v1/vectors/list_ids",
            &json!({"index_name": "crash", "index_key": KEY_HEX}),
        )
        .await
        .unwrap();
        let present: HashSet<String> = ids["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids["count"].as_u64().unwrap(), present.len() as u64);
        let acked_now = acked.lock().unwrap().clone();
        for b in &sent {
            let have = (0..BATCH)
                .filter(|i| present.contains(item(*b, *i)["id"].as_str().unwrap()))
                .count();
            if acked_now.contains(b) {
                assert_eq!(
                    have, BATCH,
                    "round {round}: acknowledged batch {b} lost items"
                );
            } else {
                assert!(
                    have == 0 || have == BATCH,
                    "round {round}: unacknowledged batch {b} is half there ({have}/{BATCH})"
                );
            }
        }
        let unacked_present = sent
            .iter()
            .filter(|b| !acked_now.contains(b))
            .filter(|b| present.contains(item(**b, 0)["id"].as_str().unwrap()))
            .count();
        eprintln!(
            "round {round}: {} batches acknowledged, {} sent, {} unacknowledged but committed",
            acked_now.len(),
            sent.len(),
            unacked_present
        );
        assert!(acked_now.len() >= target);
        // Data is readable, not just listed.
        let b = *acked_now.iter().max().unwrap();
        let got = post(
            &http,
            &svc.url,
            "/v1/vectors/get",
            &json!({"index_name": "crash", "index_key": KEY_HEX,
                    "ids": [item(b, 3)["id"]], "include": ["vector", "metadata"]}),
        )
        .await
        .unwrap();
        assert_eq!(got["results"][0]["vector"], item(b, 3)["vector"]);
        assert_eq!(got["results"][0]["metadata"]["batch"], b);
    }

    // After the last restart the index still trains, answers and takes writes.
    let first = *acked.lock().unwrap().iter().min().unwrap();
    post(
        &http,
        &svc.url,
        "/v1/indexes/train",
        &json!({"index_name": "crash", "index_key": KEY_HEX}),
    )
    .await
    .unwrap();
    let q = post(
        &http,
        &svc.url,
        "/v1/vectors/query",
        &json!({"index_name": "crash", "index_key": KEY_HEX,
                "query_vectors": item(first, 1)["vector"], "top_k": 1, "n_probes": 4}),
    )
    .await
    .unwrap();
    // One list of hits per query vector.
    assert_eq!(q["results"][0][0]["distance"], 0.0);
    post(
        &http,
        &svc.url,
        "/v1/vectors/upsert",
        &json!({"index_name": "crash", "index_key": KEY_HEX, "items": [item(999_999, 0)]}),
    )
    .await
    .unwrap();
}
