//! Chaos across real processes (docs/RELIABILITY.md): a 5/3 testnet under `/v0/delegate` and
//! `/v1/reencrypt` load while nodes are `kill -9`'d and restarted at random (never more than
//! `n - t` down), the key is reshared to 7/4 and back to 5/3, and the manager is `kill -9`'d a
//! few milliseconds into a third reshare and restarted with its recorded command. Every request
//! the manager answers succeeds; the public key never changes; an old ciphertext still opens;
//! at the end every node is on the one committed epoch, the members that left hold nothing,
//! and no vault holds a superseded share. With `n - t + 1` nodes down a request gets a clear
//! 503 within a second, and is served again within a second of one node coming back.
//!
//! Seeded and bounded for CI (about a minute); `TKMS_CHAOS_SEED` and `TKMS_CHAOS_CHURN_SECS`
//! run it longer (docs/RELIABILITY.md has the figures of longer runs).

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use alloy_primitives::B256;
use k256::ecdsa::SigningKey;
use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};
use tkms_crypto::{ecies, suite::Encoded, Secp256k1};
use tkms_e2e::{Cluster, Options, Testnet};
use tkms_node::vault::{FilePassword, KdfParams, Vault};
use tkms_sdk::{v1::RsaRecipient, Client, ClientError, ClusterKey};

type S = Secp256k1;

/// What the load saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Not answered because the manager process was down (connection refused or cut).
    interrupted: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failures.lock().unwrap();
        if f.len() < 20 {
            f.push(what);
        }
    }
}

fn key(hex_text: &str) -> SigningKey {
    SigningKey::from_slice(&hex::decode(hex_text.trim_start_matches("0x")).unwrap()).unwrap()
}

/// Load: `/v0/delegate` and `/v1/reencrypt` in turns, each answer checked by opening the
/// ciphertext, until `stop`.
async fn load(
    t: Testnet,
    key0: ClusterKey,
    ct: ecies::Ciphertext<S>,
    manager_down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    worker: u64,
) {
    let client = Client::new(&t.manager_url)
        .unwrap()
        .with_manager(t.manager_address.parse().unwrap());
    let gateway = key(&t.gateway_private_key);
    let runner = key(&t.runner_private_key);
    let recipient = RsaRecipient::generate().unwrap();
    let ephemeral = Encoded::new(*ct.ephemeral());
    let mut turn = worker;
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        let down_before = manager_down.load(Ordering::SeqCst);
        let outcome: Result<bool, ClientError> = if turn.is_multiple_of(2) {
            client
                .delegate_v0(&gateway, t.chain_id, B256::ZERO, &ephemeral, &recipient)
                .await
                .map(|(secret, _)| {
                    ecies::open_with_shared_secret(&secret, &ct).is_ok_and(|m| &*m == b"chaos")
                })
        } else {
            client
                .decrypt(&runner, t.chain_id, &key0, &ct)
                .await
                .map(|m| &*m == b"chaos")
        };
        match outcome {
            Ok(true) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => tally.fail("an answer that does not open the ciphertext".into()),
            Err(ClientError::Transport(e))
                if down_before || manager_down.load(Ordering::SeqCst) =>
            {
                let _ = e;
                tally.interrupted.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => tally.fail(e.to_string()),
        }
    }
}

async fn admin(t: &Testnet, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let http = reqwest::Client::new();
    let url = format!("{}{path}", t.manager_url);
    let mut request = match method {
        "POST" => http.post(url),
        _ => http.get(url),
    }
    .bearer_auth(&t.admin_token)
    .timeout(Duration::from_secs(120));
    if let Some(body) = body {
        request = request.json(&body);
    }
    match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, json!({ "error": e.to_string() })),
    }
}

/// Wait until every reachable node reports `epoch` committed and holds only it (or nothing,
/// for those outside its committee).
async fn settled(t: &Testnet, epoch: u64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = admin(t, "GET", "/admin/nodes", None).await;
        if status == 200 {
            let nodes = body["nodes"].as_array().cloned().unwrap_or_default();
            let done = nodes.iter().all(|n| {
                !n["reachable"].as_bool().unwrap_or(false)
                    || (n["committed_epoch"] == epoch
                        && n["held"]
                            .as_array()
                            .is_some_and(|h| h.iter().all(|e| e["epoch"] == epoch)))
            });
            if done {
                return body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the nodes did not settle on epoch {epoch}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn reshare(t: &Testnet, urls: &[String], threshold: u16) -> Value {
    let (status, body) = admin(
        t,
        "POST",
        "/admin/reshare",
        Some(json!({ "threshold": threshold, "nodes": urls })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["publicKey"], t.public_key, "{body}");
    body
}

fn env_or(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn churn_reshares_and_a_manager_crash_lose_no_request() {
    let seed = env_or("TKMS_CHAOS_SEED", 20_261_202);
    let churn_secs = env_or("TKMS_CHAOS_CHURN_SECS", 12);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    // TKMS_CHAOS_KEEP=1 keeps the data dir (logs, vaults) for a look afterwards.
    let tmp = tempfile::TempDir::with_prefix("tkms-chaos-").unwrap();
    eprintln!("chaos data dir: {}", tmp.path().display());
    let (dir, _tmp) = if std::env::var_os("TKMS_CHAOS_KEEP").is_some() {
        (tmp.keep(), None)
    } else {
        (tmp.path().to_path_buf(), Some(tmp))
    };
    let mut c = Cluster::start(&dir, &Options::new(5, 3));
    let t = c.testnet().clone();
    let client = Client::new(&t.manager_url).unwrap();
    let key0 = client.public_key().await.unwrap();
    let ct = ecies::encrypt::<S>(key0.public_key().point(), b"chaos", &mut OsRng).unwrap();

    let manager_down = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let workers: Vec<_> = (0..6)
        .map(|w| {
            tokio::spawn(load(
                t.clone(),
                key0.clone(),
                ct.clone(),
                Arc::clone(&manager_down),
                Arc::clone(&stop),
                Arc::clone(&tally),
                w,
            ))
        })
        .collect();

    let kills = churn(&mut c, &mut rng, churn_secs).await;
    settled(&t, 1, Duration::from_secs(20)).await;
    let (e2, e3) = reshare_out_and_back(&mut c).await;
    let five = c.node_urls();
    let final_epoch = manager_crash_in_a_reshare(&mut c, &mut rng, &manager_down, &five, e3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let interrupted = tally.interrupted.load(Ordering::Relaxed);
    eprintln!(
        "chaos seed {seed}: {ok} served, {failed} failed, {interrupted} not answered while the \
         manager was down, {kills} node kills, epochs 1 -> {e2} -> {e3} -> {final_epoch}"
    );
    assert_eq!(failed, 0, "failures: {:?}", tally.failures.lock().unwrap());
    assert!(ok > 100, "only {ok} requests served");

    // The public key never changed, and the old ciphertext still opens.
    let now = client.public_key().await.unwrap();
    assert_eq!(now.public_key(), key0.public_key());
    let plain = client
        .decrypt(&key(&t.runner_private_key), t.chain_id, &key0, &ct)
        .await
        .unwrap();
    assert_eq!(&*plain, b"chaos");

    below_threshold_fails_fast_and_recovers(&mut c, &client, &ct).await;
    no_vault_holds_a_superseded_share(&mut c, final_epoch);
}

/// Kill -9 a random node now and then, restarting it 0.5-2.5 s later; at most n - t = 2
/// down. The number of kills.
async fn churn(c: &mut Cluster, rng: &mut ChaCha20Rng, secs: u64) -> u64 {
    let n = c.testnet().nodes.len();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut down: Vec<(usize, Instant)> = Vec::new();
    let mut kills = 0;
    while Instant::now() < until {
        down.retain(|(node, back)| {
            if Instant::now() >= *back {
                c.restart_node(*node);
                false
            } else {
                true
            }
        });
        if down.len() < 2 && rng.next_u32().is_multiple_of(3) {
            let node = rng.next_u32() as usize % n;
            if c.node_pid(node).is_some() {
                c.kill_node(node);
                kills += 1;
                let back =
                    Instant::now() + Duration::from_millis(500 + u64::from(rng.next_u32() % 2000));
                down.push((node, back));
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for (node, _) in down {
        c.restart_node(node);
    }
    assert!(kills >= secs / 4, "{kills} kills: not much of a churn");
    kills
}

/// Reshare 5/3 -> 7/4 (two new node processes), then back to 5/3: the two leave, retired
/// and holding nothing. The two new epochs.
async fn reshare_out_and_back(c: &mut Cluster) -> (u64, u64) {
    let t = c.testnet().clone();
    let mut urls = c.node_urls();
    let six = c.start_extra_node();
    let seven = c.start_extra_node();
    urls.push(six.clone());
    urls.push(seven.clone());
    let body = reshare(&t, &urls, 4).await;
    assert_eq!(body["nodes"].as_array().unwrap().len(), 7, "{body}");
    assert!(body["dropped"].as_array().unwrap().is_empty(), "{body}");
    let e2 = body["epoch"].as_u64().unwrap();
    settled(&t, e2, Duration::from_secs(20)).await;
    let five = c.node_urls();
    let body = reshare(&t, &five, 3).await;
    let e3 = body["epoch"].as_u64().unwrap();
    let nodes = settled(&t, e3, Duration::from_secs(20)).await;
    for url in [&six, &seven] {
        let n = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["url"] == **url)
            .unwrap();
        assert_eq!(n["retired"], true, "{n}");
        assert!(n["held"].as_array().unwrap().is_empty(), "{n}");
    }
    (e2, e3)
}

/// Kill -9 the manager at a random point of a reshare's ceremony and restart it with its
/// recorded command: the interrupted reshare is finished or rolled back, and the nodes settle
/// on one committed epoch, which the manager serves. A member the reshare dropped is retired;
/// running the reshare again brings it back. The final epoch.
async fn manager_crash_in_a_reshare(
    c: &mut Cluster,
    rng: &mut ChaCha20Rng,
    manager_down: &AtomicBool,
    five: &[String],
    before: u64,
) -> u64 {
    let t = c.testnet().clone();
    let (t2, urls) = (t.clone(), five.to_vec());
    let started_before = ceremonies_started(c);
    let pending = tokio::spawn(async move {
        admin(
            &t2,
            "POST",
            "/admin/reshare",
            Some(json!({ "threshold": 3, "nodes": urls })),
        )
        .await
    });
    // Once the nodes have started the ceremony, at a random point of it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ceremonies_started(c) == started_before {
        assert!(Instant::now() < deadline, "the reshare did not start");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(u64::from(rng.next_u32() % 40))).await;
    manager_down.store(true, Ordering::SeqCst);
    c.kill_manager();
    let _ = pending.await;
    c.restart_manager();
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{}/health", t.manager_url))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the restarted manager does not answer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    manager_down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    let final_epoch = loop {
        let (_, pk) = admin(&t, "GET", "/v0/public-key", None).await;
        let served = pk["epoch"].as_u64().unwrap_or(0);
        let (_, nodes) = admin(&t, "GET", "/admin/nodes", None).await;
        let quiet = nodes["nodes"].as_array().is_some_and(|ns| {
            ns.iter().all(|n| {
                n["ceremony"] == ""
                    && n["held"]
                        .as_array()
                        .is_some_and(|h| h.iter().all(|e| e["epoch"] == served))
            })
        });
        if quiet && served >= before {
            break served;
        }
        assert!(
            Instant::now() < deadline,
            "no settled epoch after the manager crash: {nodes}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let nodes = settled(&t, final_epoch, Duration::from_secs(20)).await;
    let retired: Vec<&str> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["retired"] == true)
        .filter_map(|n| n["url"].as_str())
        .filter(|url| five.iter().any(|u| u == url))
        .collect();
    if retired.is_empty() {
        return final_epoch;
    }
    eprintln!("retired by the interrupted reshare: {retired:?}; resharing them back in");
    let body = reshare(&t, five, 3).await;
    assert_eq!(body["nodes"].as_array().unwrap().len(), 5, "{body}");
    let epoch = body["epoch"].as_u64().unwrap();
    settled(&t, epoch, Duration::from_secs(20)).await;
    epoch
}

/// With n - t + 1 = 3 of 5 down, a request gets a clear 503 within a second and /health says
/// degraded; one back, requests are served within a second of its port opening.
async fn below_threshold_fails_fast_and_recovers(
    c: &mut Cluster,
    client: &Client,
    ct: &ecies::Ciphertext<S>,
) {
    let t = c.testnet().clone();
    let gateway = key(&t.gateway_private_key);
    let recipient = RsaRecipient::generate().unwrap();
    let ephemeral = Encoded::new(*ct.ephemeral());
    for node in 0..3 {
        c.kill_node(node);
    }
    let started = Instant::now();
    let refused = client
        .delegate_v0(&gateway, t.chain_id, B256::ZERO, &ephemeral, &recipient)
        .await;
    let took = started.elapsed();
    assert!(
        matches!(&refused, Err(ClientError::Refused { status: 503, code, .. }) if code == "cluster_unavailable"),
        "{refused:?}"
    );
    assert!(took < Duration::from_secs(1), "the 503 took {took:?}");
    // /health follows within a reconciliation or two.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (status, body) = admin(&t, "GET", "/health", None).await;
        if status == 503 {
            assert_eq!(body["status"], "degraded", "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/health still says {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.restart_node(0);
    let node_up = wait_grpc(&c.node_urls()[0]).await;
    let deadline = node_up + Duration::from_secs(1);
    loop {
        let answer = client
            .delegate_v0(&gateway, t.chain_id, B256::ZERO, &ephemeral, &recipient)
            .await;
        if answer.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not served within a second of the node coming back: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "served again {:?} after the node's port opened",
        node_up.elapsed()
    );
}

/// No vault holds a share of a superseded epoch (the nodes are stopped to open them).
fn no_vault_holds_a_superseded_share(c: &mut Cluster, epoch: u64) {
    for i in 0..c.testnet().nodes.len() {
        c.kill_node(i);
    }
    for k in 0..c.extra_nodes().len() {
        c.kill_extra_node(k);
    }
    for dir in node_dirs(c) {
        let vault = Vault::open(
            dir.join("vault.redb"),
            &FilePassword::new(dir.join("password")),
            KdfParams::insecure_for_tests(),
        )
        .unwrap();
        let epochs = vault.list_epochs().unwrap();
        assert!(
            epochs.iter().all(|e| *e == epoch),
            "{} still stores epochs {epochs:?} (committed: {epoch})",
            dir.display()
        );
    }
}

/// Every node's data directory, the extra ones included.
fn node_dirs(c: &Cluster) -> Vec<std::path::PathBuf> {
    c.testnet()
        .nodes
        .iter()
        .map(|n| n.data_dir.clone())
        .chain(c.extra_nodes().iter().map(|e| e.data_dir.clone()))
        .collect()
}

/// Ceremonies the nodes logged as started so far.
fn ceremonies_started(c: &Cluster) -> usize {
    node_dirs(c)
        .iter()
        .flat_map(|dir| ["node.log", "restart.log"].map(|log| dir.join(log)))
        .map(|log| {
            std::fs::read_to_string(log).map_or(0, |text| text.matches("ceremony started").count())
        })
        .sum()
}

/// When the node at `url` accepts TCP connections again.
async fn wait_grpc(url: &str) -> Instant {
    let addr = url.trim_start_matches("http://").to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{url} did not come back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
