//! A 5/3 cluster across hosts, emulated (issue 19): `tkms testnet up --netns` puts every node
//! and the manager in a network namespace of its own, with its own address on a bridge, and
//! every link at 50 ms round trip with 1 % of the packets lost. Through that network: the DKG,
//! `/v0` and `/v1` delegation and proxy re-encryption through the `tkms` CLI, a node
//! partitioned away (every request still served, a reshare completes without it and retires
//! it), healed and reshared back in; a node cut off in the middle of a reshare (the ceremony
//! completes without it), healed and reshared back in; every node on the same epoch at the end.
//! And, at 150 ms RTT, a node cut off in the middle of the DKG: the DKG completes without it,
//! and a reshare after the heal takes it in.
//!
//! Needs root (or CAP_NET_ADMIN), iproute2 and iptables (`./test.sh` installs iptables where
//! it is missing); it fails with a message naming what is missing, never skips silently.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tkms_e2e::{tkms, Cluster, Options};

/// Round trip of every link (50 ms, as the issue asks for CI; `WAN_RTT_MS` runs the same story
/// at another, e.g. 20 or 150 for docs/BENCHMARKS.md), and loss of each direction.
fn rtt_ms() -> u64 {
    env_ms("WAN_RTT_MS", 50)
}
/// Round trip of the DKG test's links (`WAN_DKG_RTT_MS`, 150 ms by default).
fn dkg_rtt_ms() -> u64 {
    env_ms("WAN_DKG_RTT_MS", 150)
}
const LOSS_PCT: &str = "1";

fn env_ms(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: milliseconds expected"))
    })
}

/// Runs `tkms testnet down` when dropped: the namespaces go even if the test fails.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = tkms()
            .args(["testnet", "down", "--data-dir"])
            .arg(self.0.join("data"))
            .arg("--out")
            .arg(self.0.join("testnet.json"))
            .status();
    }
}

fn require_network_tools() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    assert!(
        root,
        "tests/wan.rs runs network namespaces: run it as root (CI does)"
    );
    for tool in ["ip", "iptables"] {
        assert!(
            Command::new(tool)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok(),
            "{tool} is missing: `./test.sh --setup` installs it (apt-get install iproute2 iptables)"
        );
    }
}

/// `tkms --testnet FILE ARGS` with `stdin`; its stdout, or a panic with its stderr.
fn cli(testnet: &Path, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut child = tkms()
        .arg("--testnet")
        .arg(testnet)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tkms {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Every reachable node holds exactly `epoch`, and `expect_reachable` nodes answered.
async fn epochs_agree(cluster: &Cluster, epoch: u64, expect_reachable: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = cluster.admin_get("/admin/nodes").await;
        let nodes = body["nodes"].as_array().cloned().unwrap_or_default();
        let reachable: Vec<&Value> = nodes
            .iter()
            .filter(|n| n["reachable"].as_bool().unwrap_or(false))
            .collect();
        let agree = reachable.iter().all(|n| {
            n["committed_epoch"] == epoch
                && n["ceremony"] == ""
                && n["held"]
                    .as_array()
                    .is_some_and(|h| h.iter().all(|e| e["epoch"] == epoch))
        });
        if status == 200 && agree && reachable.len() == expect_reachable {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes do not agree on epoch {epoch} ({expect_reachable} reachable): {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[allow(clippy::too_many_lines)] // one cluster, one story told in order
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_across_namespaces_at_50ms_rtt_and_1pct_loss() {
    let rtt_ms = rtt_ms();
    require_network_tools();
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let _down = Down(dir.path().to_path_buf());
    let started = Instant::now();
    let options = Options {
        round_timeout_ms: 10_000,
        ..Options::new(5, 3)
    }
    .arg("--netns")
    .arg("--rtt-ms")
    .arg(rtt_ms.to_string())
    .arg("--loss-pct")
    .arg(LOSS_PCT);
    let cluster = Cluster::start(dir.path(), &options);
    let up = started.elapsed();
    let t = cluster.testnet().clone();
    let testnet = cluster.testnet_json();
    eprintln!("up (5 namespaces, DKG at {rtt_ms} ms RTT): {up:.2?}");
    assert!(
        t.manager_url.starts_with("http://10.213."),
        "the manager is not in a namespace of its own: {}",
        t.manager_url
    );
    for node in &t.nodes {
        assert!(
            node.grpc_addr.starts_with("10.213."),
            "node {} is not in a namespace of its own: {}",
            node.index,
            node.grpc_addr
        );
    }

    // The links are shaped: a /v0 delegation is a client -> manager -> nodes -> manager ->
    // client trip: at least one RTT between manager and nodes and half of one to the client.
    let ct = cli(&testnet, &["encrypt"], b"across the WAN");
    let mut latencies = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let plain = cli(&testnet, &["delegate", "--api", "v0"], &ct);
        latencies.push(started.elapsed());
        assert_eq!(plain, b"across the WAN");
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    eprintln!("/v0/delegate through the tkms CLI: p50 {p50:.2?}");
    assert!(
        p50 >= Duration::from_millis(rtt_ms * 3 / 2),
        "a delegation took {p50:?}: the links are not shaped to {rtt_ms} ms"
    );
    assert_eq!(cli(&testnet, &["delegate"], &ct), b"across the WAN");

    // Proxy re-encryption to a key of our own, opened offline.
    let keys: Value = serde_json::from_slice(&cli(&testnet, &["ecies", "keygen"], b"")).unwrap();
    let key_file = dir.path().join("target.key");
    std::fs::write(&key_file, keys["secret_key"].as_str().unwrap()).unwrap();
    let re = cli(
        &testnet,
        &[
            "reencrypt",
            "--target-public-key",
            keys["public_key"].as_str().unwrap(),
        ],
        &ct,
    );
    let opened = cli(
        &testnet,
        &["decrypt", "--secret-key-file", key_file.to_str().unwrap()],
        &re,
    );
    assert_eq!(opened, b"across the WAN");

    // The manager cut off from n - t = 2 nodes under load: no request fails.
    let data = dir.path().join("data");
    let link = |verb: &str, node: u16| link(&data, verb, node);
    let load = std::thread::spawn({
        let testnet = testnet.clone();
        move || {
            let out = cli(
                &testnet,
                &[
                    "bench",
                    "delegate",
                    "--api",
                    "v0",
                    "--concurrency",
                    "8",
                    "--duration",
                    "6",
                ],
                b"",
            );
            serde_json::from_slice::<Value>(&out).unwrap()
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    link("partition", 4);
    link("partition", 5);
    let report = load.join().unwrap();
    eprintln!("/v0 load while nodes 4 and 5 were cut off: {report}");
    assert_eq!(
        report["errors"], 0,
        "requests failed under the partition: {report}"
    );
    assert!(report["requests_ok"].as_u64().unwrap() > 0, "{report}");

    // Node 4 back; node 5 stays away: every request is still served by the other four.
    link("heal", 4);
    for _ in 0..5 {
        assert_eq!(
            cli(&testnet, &["delegate", "--api", "v0"], &ct),
            b"across the WAN"
        );
    }

    // A reshare to the four reachable nodes completes without node 5, which is retired.
    let four: Vec<String> = cluster.node_urls().into_iter().take(4).collect();
    let all: Vec<String> = cluster.node_urls();
    let started = Instant::now();
    let (status, body) = cluster.reshare(3, &four).await;
    assert_eq!(status, 200, "reshare without the partitioned node: {body}");
    eprintln!(
        "reshare 5 -> 4 at {rtt_ms} ms RTT: {:.2?}",
        started.elapsed()
    );
    let epoch = body["epoch"].as_u64().unwrap();
    epochs_agree(&cluster, epoch, 4, Duration::from_secs(30)).await;

    // Healed and reshared back in at once: all five on one epoch, the key unchanged. (The
    // manager's channel to node 5 died during the partition; HTTP/2 keep-alive dropped it
    // then, so the reshare's first call dials anew instead of waiting out TCP's backoff.)
    link("heal", 5);
    let started = Instant::now();
    reshared_back_to_five(&cluster).await;
    eprintln!(
        "reshare 4 -> 5 at {rtt_ms} ms RTT: {:.2?}",
        started.elapsed()
    );
    assert_eq!(
        cli(&testnet, &["delegate", "--api", "v0"], &ct),
        b"across the WAN"
    );
    assert_eq!(cli(&testnet, &["delegate"], &ct), b"across the WAN");

    // Node 2 cut off in the middle of a reshare (once it has started the ceremony): the
    // ceremony completes without it and retires it. Healed, the next reshare takes it back at
    // once: its peers dropped the connections whose messages went unacknowledged, which TCP
    // would otherwise have held in retransmission backoff past the heal (before that, node 2
    // got "only 1 confirmations of the transcript" and was dropped again).
    let started = Instant::now();
    let ((status, body), ()) =
        tokio::join!(cluster.reshare(3, &all), cut_off_once_running(&data, 2));
    assert_eq!(status, 200, "reshare with node 2 cut off during it: {body}");
    eprintln!(
        "reshare 5 -> 5 with node 2 cut off during it, at {rtt_ms} ms RTT: {:.2?}",
        started.elapsed()
    );
    assert_eq!(members(&body), [1, 3, 4, 5], "{body}");
    let epoch = body["epoch"].as_u64().unwrap();
    epochs_agree(&cluster, epoch, 4, Duration::from_secs(30)).await;
    link("heal", 2);
    reshared_back_to_five(&cluster).await;
    // How node 2's stale ceremony ended: told of the commit by the manager's catch-up, or
    // given up when the newer ceremony's start reached it first.
    let log = std::fs::read_to_string(data.join("node-2").join("node.log")).unwrap_or_default();
    for line in log.lines().filter(|l| l.contains("abandon")) {
        eprintln!("node 2: {line}");
    }
    assert_eq!(
        cli(&testnet, &["delegate", "--api", "v0"], &ct),
        b"across the WAN"
    );
}

/// A node cut off in the middle of the DKG (once its log says the ceremony started): the DKG
/// completes without it, and a reshare right after the heal takes it in. At 150 ms RTT (the
/// issue's slowest link), so that the DKG lasts long enough for the cut (a log read and an
/// iptables call) to land well inside it. The registry is a local chain, as in a
/// deployment: the nodes and the manager reach anvil on the host through their shaped links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_during_the_dkg_is_left_out_and_reshared_in_after_the_heal() {
    let dkg_rtt_ms = dkg_rtt_ms();
    require_network_tools();
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let _down = Down(dir.path().to_path_buf());
    let options = Options {
        round_timeout_ms: 10_000,
        ..Options::new(5, 3).chain()
    }
    .arg("--netns")
    .arg("--rtt-ms")
    .arg(dkg_rtt_ms.to_string())
    .arg("--loss-pct")
    .arg(LOSS_PCT)
    .arg("--no-dkg");
    let cluster = Cluster::start(dir.path(), &options);
    let data = dir.path().join("data");
    let started = Instant::now();
    let three = serde_json::json!({ "threshold": 3 });
    let ((status, body), ()) = tokio::join!(
        cluster.admin_post("/admin/dkg", &three),
        cut_off_once_running(&data, 2)
    );
    assert_eq!(status, 200, "DKG with node 2 cut off during it: {body}");
    eprintln!(
        "DKG 3 of 5 with node 2 cut off during it, at {dkg_rtt_ms} ms RTT: {:.2?}",
        started.elapsed()
    );
    assert_eq!(
        members(&body),
        [1, 3, 4, 5],
        "node 2 should have been cut off before it finished the DKG: {body}"
    );
    let epoch = body["epoch"].as_u64().unwrap();
    epochs_agree(&cluster, epoch, 4, Duration::from_secs(60)).await;
    link(&data, "heal", 2);
    let key = body["publicKey"].clone();
    let body = reshared_back_to_five(&cluster).await;
    assert_eq!(
        body["publicKey"], key,
        "the reshare changed the key: {body}"
    );
    let testnet = cluster.testnet_json();
    let ct = cli(&testnet, &["encrypt"], b"after the DKG");
    assert_eq!(
        cli(&testnet, &["delegate", "--api", "v0"], &ct),
        b"after the DKG"
    );
}

/// One cluster across namespaces at a time: two starting at once could pick one subnet. (This
/// holds while the tests of this file run as threads of one process, as `cargo test` runs
/// them; the guard is dropped after `Down` has torn the namespaces down.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `tkms testnet partition|heal --node NODE` for the testnet in `data`.
fn link(data: &Path, verb: &str, node: u16) {
    let status = tkms()
        .args(["testnet", verb, "--node", &node.to_string(), "--data-dir"])
        .arg(data)
        .status()
        .unwrap();
    assert!(status.success(), "tkms testnet {verb} --node {node}");
}

/// Cut node `node` off as soon as its log says a ceremony started (one more than when this
/// is first polled, which is before the manager can have started one: it surveys the nodes
/// first). The node's own log says so at once; asking the manager cost a survey round trip,
/// and a reshare, down to a few round trips across the WAN, could finish before the cut.
async fn cut_off_once_running(data: &Path, node: u16) {
    let log = data.join(format!("node-{node}")).join("node.log");
    // Counted over the raw bytes (a read may end inside a character being written); a failed
    // read counts as no change.
    let needle: &[u8] = b"ceremony started";
    let started = |previous: usize| {
        std::fs::read(&log).map_or(previous, |bytes| {
            bytes.windows(needle.len()).filter(|w| *w == needle).count()
        })
    };
    let before = started(0);
    let since = Instant::now();
    while started(before) == before {
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "node {node} never started the ceremony (see {})",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    link(data, "partition", node);
}

/// The indices of a ceremony's members.
fn members(body: &Value) -> Vec<u64> {
    body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["index"].as_u64().unwrap())
        .collect()
}

/// A reshare to every node of the testnet, which must take all five; its answer.
async fn reshared_back_to_five(cluster: &Cluster) -> Value {
    let (status, body) = cluster.reshare(3, &cluster.node_urls()).await;
    assert_eq!(status, 200, "reshare back to five after the heal: {body}");
    assert_eq!(
        members(&body),
        [1, 2, 3, 4, 5],
        "the healed node was not taken back: {body}"
    );
    let epoch = body["epoch"].as_u64().unwrap();
    epochs_agree(cluster, epoch, 5, Duration::from_secs(30)).await;
    body
}
