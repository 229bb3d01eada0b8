//! The front door across real processes (issue 15): `tkms testnet up` (3 nodes, t = 2) and
//! `tkms engine serve`, attacked and used from the outside.
//!
//! - An unauthenticated client holding thousands of idle connections and re-opening
//!   slow-loris ones (from other loopback addresses) while the runner's and the gateway's
//!   requests are all served; the attacker's sockets are closed at accept or at the header
//!   deadline. The same for the engine service.
//! - The gateway over its quota gets 429 with `Retry-After` while the runner is unaffected;
//!   no node saw the refused requests; guessing the operator token is rate-limited.
//! - A `/v1` request replayed after restarting the manager, then every node (and the
//!   manager again without its journal), is refused with 401 `replayed`.
//! - The manager's audit log has one entry per request served or refused; `tkms audit verify`
//!   passes, and fails naming the entry once one is edited, deleted or reordered; every node's
//!   log shows each partial it served; no secret appears in any log.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use k256::ecdsa::SigningKey;
use rand_core::OsRng;
use serde_json::{json, Value};
use tkms_cli::testnet::Testnet;
use tkms_crypto::{ecies, suite::Encoded, Secp256k1};
use tkms_sdk::{
    nox,
    v1::{self, Freshness, ReencryptV1, RsaRecipient},
    Client, ClientError,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpSocket,
};

use tkms_e2e::{tkms as tkms_command, Cluster, KillOnDrop, Options};

type S = Secp256k1;

fn key(hex_text: &str) -> SigningKey {
    SigningKey::from_slice(&hex::decode(hex_text.trim_start_matches("0x")).unwrap()).unwrap()
}

/// A flood from `from` (another loopback address): `idle` connections that send nothing,
/// held, and `slow` ones that send a request head a byte at a time and are re-opened when
/// the server closes them, until `stop`. Counts the connections the server closed.
struct Flood {
    stop: Arc<AtomicBool>,
    closed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Flood {
    async fn start(addr: SocketAddr, from: &str, idle: usize, slow: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicU64::new(0));
        let from: SocketAddr = format!("{from}:0").parse().unwrap();
        let mut tasks = Vec::new();
        let connect = move || async move {
            let socket = TcpSocket::new_v4()?;
            socket.bind(from)?;
            socket.connect(addr).await
        };
        for _ in 0..idle {
            let Ok(mut stream) = connect().await else {
                continue;
            };
            let closed = Arc::clone(&closed);
            tasks.push(tokio::spawn(async move {
                let mut buf = [0u8; 64];
                // Held until the server closes it.
                if matches!(stream.read(&mut buf).await, Ok(0) | Err(_)) {
                    closed.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for _ in 0..slow {
            let (stop, closed) = (Arc::clone(&stop), Arc::clone(&closed));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut stream) = connect().await {
                        let _ = stream.write_all(b"POST /v0/delegate HTTP/1.1\r\n").await;
                        while !stop.load(Ordering::Relaxed) {
                            if stream.write_all(b"x").await.is_err() {
                                break;
                            }
                            let mut buf = [0u8; 64];
                            let read = stream.read(&mut buf);
                            let answer =
                                tokio::time::timeout(Duration::from_millis(300), read).await;
                            if let Ok(Ok(0) | Err(_)) = answer {
                                break;
                            }
                        }
                        closed.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }));
        }
        Self {
            stop,
            closed,
            tasks,
        }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.closed.load(Ordering::Relaxed)
    }
}

async fn metrics(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the metric line that starts with `name` (its labels included).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Wait until the manager answers `/health` with every node reachable.
async fn wait_ready(url: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("{url}/health")).await {
            if let Ok(h) = r.json::<Value>().await {
                if h["reachable"].as_u64() == Some(n) {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "{url} did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A signed `/v0/delegate` request (raw, to read the status and `Retry-After`).
async fn v0_raw(
    t: &Testnet,
    gateway: &SigningKey,
    cluster: &tkms_sdk::ClusterKey,
) -> (u16, Option<u64>, Value, String) {
    let ct = ecies::encrypt::<S>(cluster.public_key().point(), b"q", &mut OsRng).unwrap();
    let ephemeral = format!(
        "0x{}",
        hex::encode(Encoded::<S>::new(*ct.ephemeral()).bytes())
    );
    let target = RsaRecipient::generate().unwrap().spki_hex();
    let auth = nox::authorization_header(gateway, t.chain_id, &ephemeral, &target);
    let response = reqwest::Client::new()
        .post(format!(
            "{}/v0/delegate?chain_id={}",
            t.manager_url, t.chain_id
        ))
        .header("authorization", auth)
        .json(&json!({ "ephemeralPubKey": ephemeral, "targetPubKey": target }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (
        status,
        retry,
        response.json().await.unwrap_or(Value::Null),
        target,
    )
}

fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Refused { status, code, .. }) => (status, code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn tkms(args: &[&str]) -> (bool, String) {
    let out = tkms_command().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn log_entries(path: &Path) -> Vec<serde_json::Map<String, Value>> {
    tkms_daemon::audit::entries(std::fs::File::open(path).unwrap())
        .map(Result::unwrap)
        .collect()
}

/// A text field of an entry ("" when absent).
fn field<'a>(entry: &'a serde_json::Map<String, Value>, key: &str) -> &'a str {
    entry.get(key).and_then(Value::as_str).unwrap_or("")
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one testnet, used phase after phase
async fn the_front_door_of_a_running_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Cluster::start(
        dir.path(),
        &Options::new(3, 2)
            .arg("--manager-arg=--header-timeout-ms=1500")
            .arg("--manager-arg=--quota-gateway=1:4")
            .arg("--manager-arg=--quota-admin=1:2"),
    );
    let t = net.testnet().clone();
    let gateway = key(&t.gateway_private_key);
    let runner = key(&t.runner_private_key);
    let c = Client::new(&t.manager_url)
        .unwrap()
        .with_manager(t.manager_address.parse().unwrap());
    let cluster = c.public_key().await.unwrap();
    let manager_addr: SocketAddr = t.manager_url.trim_start_matches("http://").parse().unwrap();
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    let mut served_v0 = 0;
    let mut refused_v0: usize = 0;

    // 1. A flood: 3,000 idle connections from 127.0.0.2 and 200 slow-loris ones from
    //    127.0.0.3, while the runner and the gateway are served from 127.0.0.1.
    let idle = Flood::start(manager_addr, "127.0.0.2", 3000, 0).await;
    let slow = Flood::start(manager_addr, "127.0.0.3", 0, 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    for k in 0..20 {
        let message = format!("during the flood {k}");
        let ct = ecies::encrypt::<S>(cluster.public_key().point(), message.as_bytes(), &mut OsRng)
            .unwrap();
        let plain = tokio::time::timeout(
            Duration::from_secs(10),
            c.decrypt(&runner, t.chain_id, &cluster, &ct),
        )
        .await
        .expect("a runner request timed out during the flood")
        .unwrap();
        assert_eq!(&*plain, message.as_bytes());
    }
    for _ in 0..4 {
        let ct = ecies::encrypt::<S>(cluster.public_key().point(), b"v0", &mut OsRng).unwrap();
        let recipient = RsaRecipient::generate().unwrap();
        let (secret, _) = tokio::time::timeout(
            Duration::from_secs(10),
            c.delegate_v0(
                &gateway,
                t.chain_id,
                alloy_primitives::B256::ZERO,
                &Encoded::new(*ct.ephemeral()),
                &recipient,
            ),
        )
        .await
        .expect("a gateway request timed out during the flood")
        .unwrap();
        assert_eq!(
            &*ecies::open_with_shared_secret(&secret, &ct).unwrap(),
            b"v0"
        );
        secrets.push(secret.as_bytes().to_vec());
        secrets.push(
            recipient
                .spki_hex()
                .trim_start_matches("0x")
                .as_bytes()
                .to_vec(),
        );
        served_v0 += 1;
    }
    let during = started.elapsed();
    let text = metrics(&t.manager_url).await;
    let refused_connections = metric(
        &text,
        "tkms_http_connections_refused_total{reason=\"per_address\"}",
    );
    assert!(refused_connections >= 3000 - 128, "{text}");
    // Every idle connection is closed, at accept or at the header deadline; so are the
    // slow-loris ones, again and again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let slow_closed = slow.stop().await;
    let idle_closed = idle.stop().await;
    assert!(
        idle_closed >= 2990,
        "{idle_closed} of 3000 idle connections closed"
    );
    assert!(
        slow_closed >= 200,
        "{slow_closed} slow-loris connections closed"
    );
    let text = metrics(&t.manager_url).await;
    assert!(
        metric(
            &text,
            "tkms_http_connections_timed_out_total{reason=\"header\"}"
        ) >= 128,
        "{text}"
    );
    eprintln!("24 authorized requests during the flood took {during:?}");

    // 2. Quotas: the gateway (1/s, burst 4) is refused with 429 and Retry-After; the runner
    //    is not; nothing of a refused request reaches a node.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for _ in 0..8 {
        let (status, retry, json, target) = v0_raw(&t, &gateway, &cluster).await;
        match status {
            200 => served_v0 += 1,
            429 => {
                assert_eq!(json["code"], "rate_limited", "{json}");
                assert!(retry.unwrap() >= 1);
                refused_v0 += 1;
            }
            other => panic!("{other}: {json}"),
        }
        secrets.push(target.trim_start_matches("0x").as_bytes().to_vec());
    }
    assert!(
        refused_v0 >= 2,
        "{refused_v0} of 8 over-quota requests refused"
    );
    for _ in 0..5 {
        let ct = ecies::encrypt::<S>(cluster.public_key().point(), b"runner", &mut OsRng).unwrap();
        c.decrypt(&runner, t.chain_id, &cluster, &ct).await.unwrap();
    }
    let text = metrics(&t.manager_url).await;
    let gateway_address = nox::wallet_address(&gateway);
    assert_eq!(
        metric(
            &text,
            &format!("tkms_quota_refused_total{{scope=\"requester\",requester=\"{gateway_address}\",role=\"gateway\"}}")
        ),
        u64::try_from(refused_v0).unwrap()
    );
    // The operator polls more often than the admin quota (1:2) allows: only wrong tokens
    // count against it.
    for _ in 0..6 {
        let r = reqwest::Client::new()
            .get(format!("{}/admin/nodes", t.manager_url))
            .bearer_auth(&t.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    // Guessing the operator token: 401, 401, then 429.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = reqwest::Client::new()
            .get(format!("{}/admin/nodes", t.manager_url))
            .bearer_auth("not-the-operator-token-0123456789")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 429]);

    // 3. Replay across restarts: a /v1/reencrypt served once is refused after the manager
    //    restarts (its journal), then after every node restarts and the manager comes back
    //    without its journal (the nodes' journals; 401, not 503).
    let (b, target) = v1::target_key();
    secrets.push(b.to_bytes().to_vec());
    let ct = ecies::encrypt::<S>(cluster.public_key().point(), b"once", &mut OsRng).unwrap();
    let request = ReencryptV1::sign(
        &runner,
        t.chain_id,
        target,
        vec![Encoded::new(*ct.ephemeral())],
        Freshness::new(240),
    )
    .unwrap();
    c.send_reencrypt(&request).await.unwrap();
    let mdir = dir.path().join("data").join("manager");
    net.kill_manager();
    net.restart_manager();
    wait_ready(&t.manager_url, 3).await;
    assert_eq!(
        refused(c.send_reencrypt(&request).await),
        (401, "replayed".into())
    );
    for (i, node) in t.nodes.iter().enumerate() {
        net.kill_node(i);
        let _ = std::fs::remove_file(node.data_dir.join("node.json"));
        net.restart_node(i);
    }
    net.kill_manager();
    for name in ["nonces.journal", "nonces.journal.prev"] {
        let _ = std::fs::remove_file(mdir.join(name));
    }
    net.restart_manager();
    wait_ready(&t.manager_url, 3).await;
    assert_eq!(
        refused(c.send_reencrypt(&request).await),
        (401, "replayed".into())
    );
    // A fresh request is served.
    let plain = c.decrypt(&runner, t.chain_id, &cluster, &ct).await.unwrap();
    assert_eq!(&*plain, b"once");

    // 4. The audit logs.
    let manager_log = mdir.join("audit.jsonl");
    let (ok, out) = tkms(&["audit", "verify", manager_log.to_str().unwrap()]);
    assert!(ok, "{out}");
    let entries = log_entries(&manager_log);
    let count = |op: &str, result: &str| {
        entries
            .iter()
            .filter(|e| field(e, "op") == op && field(e, "result") == result)
            .count()
    };
    assert_eq!(count("v0/delegate", "ok"), served_v0);
    assert_eq!(count("v0/delegate", "rate_limited"), refused_v0);
    // 20 + 5 decryptions, 1 + 1 fresh, each one capsule; two replays refused.
    assert_eq!(count("v1/reencrypt", "ok"), 27);
    assert_eq!(count("v1/reencrypt", "replayed"), 2);
    assert_eq!(count("admin/dkg", "ok"), 1);
    assert_eq!(count("admin/nodes", "ok"), 6);
    assert_eq!(count("admin/nodes", "unauthorized"), 2);
    assert_eq!(count("admin/nodes", "rate_limited"), 1);
    // The manager started three times, its chain unbroken.
    assert_eq!(
        entries
            .iter()
            .filter(|e| field(e, "op") == "manager_start")
            .count(),
        3
    );
    let (ok, shown) = tkms(&[
        "audit",
        "show",
        manager_log.to_str().unwrap(),
        "--op",
        "v0/delegate",
        "--requester",
        &gateway_address.to_string(),
        "--result",
        "rate_limited",
    ]);
    assert!(ok, "{shown}");
    assert_eq!(shown.lines().count(), refused_v0);
    // Every node's log verifies and shows each partial it served: each key use the manager
    // served is in at least t = 2 of them, and no refused request is in any.
    let node_logs: Vec<Vec<serde_json::Map<String, Value>>> = t
        .nodes
        .iter()
        .map(|n| {
            let path = n.data_dir.join("audit.jsonl");
            let (ok, out) = tkms(&["audit", "verify", path.to_str().unwrap()]);
            assert!(ok, "{out}");
            log_entries(&path)
        })
        .collect();
    for e in entries.iter().filter(|e| {
        field(e, "result") == "ok" && matches!(field(e, "op"), "v0/delegate" | "v1/reencrypt")
    }) {
        let digest = field(e, "digest");
        let holders = node_logs
            .iter()
            .filter(|log| {
                log.iter()
                    .any(|n| field(n, "request") == digest && field(n, "result") == "ok")
            })
            .count();
        assert!(holders >= 2, "{digest} served by {holders} nodes: {e:?}");
    }
    for e in entries
        .iter()
        .filter(|e| field(e, "result") == "rate_limited")
    {
        let digest = field(e, "digest");
        assert!(node_logs
            .iter()
            .flatten()
            .all(|n| field(n, "request") != digest || digest.is_empty()));
    }
    // The node logs name the requester (recovered by `show`).
    let (ok, shown) = tkms(&[
        "audit",
        "show",
        t.nodes[0].data_dir.join("audit.jsonl").to_str().unwrap(),
        "--requester",
        &nox::wallet_address(&runner).to_string(),
        "--op",
        "partial_reencryption",
    ]);
    assert!(ok, "{shown}");
    assert!(shown.lines().count() >= 20, "{shown}");

    // Edited, deleted, reordered: `verify` fails and names the entry.
    let lines: Vec<String> = std::fs::read_to_string(&manager_log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let broken = dir.path().join("broken.jsonl");
    let check = |lines: &[String], expected: &str| {
        std::fs::write(&broken, lines.join("\n") + "\n").unwrap();
        let (ok, out) = tkms(&["audit", "verify", broken.to_str().unwrap()]);
        assert!(!ok, "{out}");
        assert!(out.contains(expected), "{expected}: {out}");
    };
    let mut edited = lines.clone();
    edited[4] = edited[4].replacen("\"result\":\"ok\"", "\"result\":\"no\"", 1);
    edited[4] = edited[4].replacen("\"status\":200", "\"status\":201", 1);
    assert_ne!(edited[4], lines[4]);
    check(&edited, "line 5: edited");
    let mut deleted = lines.clone();
    deleted.remove(4);
    check(&deleted, "line 5 (seq 6)");
    let mut reordered = lines.clone();
    reordered.swap(4, 5);
    check(&reordered, "line 5 (seq 6)");

    // No secret in any log: shared secrets, RSA keys, the re-encryption target's secret,
    // and every key, token and password of the testnet.
    for file in [
        "node-request.key",
        "wallet.key",
        "gateway.key",
        "runner.key",
        "admin.token",
    ] {
        secrets.push(
            std::fs::read_to_string(mdir.join(file))
                .unwrap()
                .trim()
                .as_bytes()
                .to_vec(),
        );
    }
    for node in &t.nodes {
        secrets.push(
            std::fs::read_to_string(node.data_dir.join("password"))
                .unwrap()
                .trim()
                .as_bytes()
                .to_vec(),
        );
    }
    let logs: Vec<PathBuf> = std::iter::once(manager_log.clone())
        .chain(t.nodes.iter().map(|n| n.data_dir.join("audit.jsonl")))
        .collect();
    for log in &logs {
        let raw = std::fs::read(log).unwrap();
        for secret in &secrets {
            assert!(!find(&raw, secret), "{} holds a secret", log.display());
            assert!(
                !find(&raw, hex::encode(secret).as_bytes()),
                "{} holds a secret",
                log.display()
            );
        }
    }
    drop(net);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_service_serves_through_a_flood() {
    let mut child = tkms_command()
        .args([
            "engine",
            "serve",
            "--storage",
            "memory",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--header-timeout-ms", "1000"])
        .env("TKMS_ENGINE_API_KEY", "engine-test-api-key")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let base = tkms_e2e::engine_url(&mut child);
    let _engine = KillOnDrop(child);
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let idle = Flood::start(addr, "127.0.0.2", 3000, 0).await;
    let slow = Flood::start(addr, "127.0.0.3", 0, 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let post = |path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .header("X-API-Key", "engine-test-api-key")
            .json(&body)
            .send()
    };
    let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let r = post(
        "/v1/indexes/create",
        json!({"index_name": "docs", "index_key": key,
               "index_config": {"type": "ivfflat", "dimension": 2, "n_lists": 1, "metric": "euclidean"}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    for i in 0..30 {
        let r = post(
            "/v1/vectors/upsert",
            json!({"index_name": "docs", "index_key": key,
                   "items": [{"id": format!("id-{i}"), "vector": [i as f32, 1.0]}]}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
        let r = post(
            "/v1/vectors/query",
            json!({"index_name": "docs", "index_key": key, "query_vectors": [i as f32, 1.0], "top_k": 1}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
        let hits: Value = r.json().await.unwrap();
        // A single query is answered nested, as CyborgDB does: one list of hits per query.
        assert_eq!(hits["results"][0][0]["id"], format!("id-{i}"), "{hits}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let slow_closed = slow.stop().await;
    let idle_closed = idle.stop().await;
    assert!(
        idle_closed >= 2990,
        "{idle_closed} of 3000 idle connections closed"
    );
    assert!(slow_closed >= 200, "{slow_closed}");
}
