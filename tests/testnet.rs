//! End to end across real processes: `tkms testnet up` starts 5 node processes and a manager,
//! runs the DKG over libp2p, and writes testnet.json. A message ECIES-encrypted to the cluster
//! key is then recovered through `/v0/delegate` exactly as a Nox gateway does it (EIP-712
//! authorization, RSA key made on the spot); with `n - t` nodes killed every request still
//! succeeds; with one more, a clear 503 in under a second; a killed node restarted from its data
//! dir serves again with its stored share, whose vault file holds no plaintext share bytes.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::time::{Duration, Instant};

use aws_lc_rs::{
    encoding::AsDer,
    rsa::{KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA256_MGF1SHA256},
};
use k256::ecdsa::SigningKey;
use rand_core::OsRng;
use tkms_crypto::{ecies, Secp256k1, SharedSecret, Suite};
use tkms_e2e::{Cluster, Options, Testnet, TestnetNode};
use tkms_manager::nox;
use tkms_node::vault::{FilePassword, KdfParams, Vault};

/// A fresh RSA-2048 recipient key, as a Nox gateway makes per request. Generating one takes a
/// random, long-tailed time, so timed requests get theirs before the stopwatch starts.
fn rsa_key() -> PrivateDecryptingKey {
    PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap()
}

/// Open the killed node's vault. Retried for up to 5 s: the file stays locked until the
/// kernel has finished tearing the killed process down.
fn open_vault(node: &TestnetNode) -> Vault {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Vault::open(
            node.data_dir.join("vault.redb"),
            &FilePassword::new(node.data_dir.join("password")),
            KdfParams::insecure_for_tests(),
        ) {
            Ok(vault) => return vault,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the killed node's vault did not open within 5 s: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `/v0/delegate` round trip to the recipient key `rsa`; returns the HTTP status and, on
/// success, the plaintext.
async fn delegate(
    t: &Testnet,
    message: &[u8],
    rsa: PrivateDecryptingKey,
) -> (u16, Option<Vec<u8>>, serde_json::Value) {
    let pk = hex::decode(t.public_key.trim_start_matches("0x")).unwrap();
    let pk = Secp256k1::decode_point(&pk).unwrap();
    let ct = ecies::encrypt::<Secp256k1>(&pk, message, &mut OsRng).unwrap();
    let ephemeral = format!("0x{}", hex::encode(Secp256k1::encode_point(ct.ephemeral())));
    let target = format!(
        "0x{}",
        hex::encode(rsa.public_key().as_der().unwrap().as_ref())
    );
    let gateway = SigningKey::from_slice(
        &hex::decode(t.gateway_private_key.trim_start_matches("0x")).unwrap(),
    )
    .unwrap();
    let auth = nox::authorization_header(&gateway, t.chain_id, &ephemeral, &target);
    let response = reqwest::Client::new()
        .post(format!(
            "{}/v0/delegate?chain_id={}",
            t.manager_url, t.chain_id
        ))
        .header("authorization", auth)
        .json(&serde_json::json!({ "ephemeralPubKey": ephemeral, "targetPubKey": target }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let json: serde_json::Value = response.json().await.unwrap();
    if status != 200 {
        return (status, None, json);
    }
    let sealed = hex::decode(
        json["encryptedSharedSecret"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
    )
    .unwrap();
    let oaep = OaepPrivateDecryptingKey::new(rsa).unwrap();
    let mut out = vec![0u8; oaep.min_output_size()];
    let x = oaep
        .decrypt(&OAEP_SHA256_MGF1SHA256, &sealed, &mut out, None)
        .unwrap();
    let secret = SharedSecret::from_slice(x).unwrap();
    let signer = nox::verify_response(
        t.chain_id,
        [0u8; 32].into(),
        json["encryptedSharedSecret"].as_str().unwrap(),
        json["proof"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(signer.to_string(), t.manager_address);
    let plain = ecies::open_with_shared_secret(&secret, &ct)
        .unwrap()
        .to_vec();
    (status, Some(plain), json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_testnet_serves_survives_n_minus_t_failures_and_a_restarted_node_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), &Options::new(5, 3));
    let t = &cluster.testnet().clone();
    assert_eq!(t.threshold, 3);
    assert_eq!(t.nodes.len(), 5);

    // Served by the whole cluster.
    let (status, plain, json) = delegate(t, b"first handle", rsa_key()).await;
    assert_eq!(
        (status, plain.as_deref()),
        (200, Some(&b"first handle"[..])),
        "{json}"
    );

    // n - t = 2 nodes down: every request still succeeds.
    cluster.kill_node(0);
    cluster.kill_node(3);
    // The killed node's vault holds its share, but never in the clear.
    let node = &t.nodes[0];
    let vault = open_vault(node);
    let epoch = vault.latest_epoch().unwrap().unwrap();
    let (share, _, _) = vault.get_share::<Secp256k1>(epoch).unwrap().unwrap();
    let secret = share.value().to_bytes();
    drop(vault);
    let raw = std::fs::read(node.data_dir.join("vault.redb")).unwrap();
    assert!(
        !raw.windows(32).any(|w| w == secret.as_slice()),
        "the vault file contains the share in the clear"
    );
    for k in 0..3 {
        let msg = format!("with two nodes down #{k}");
        let (status, plain, json) = delegate(t, msg.as_bytes(), rsa_key()).await;
        assert_eq!(
            (status, plain.as_deref()),
            (200, Some(msg.as_bytes())),
            "{json}"
        );
    }

    // One more down: a clear 503, fast (the request alone is timed, not the RSA key).
    cluster.kill_node(1);
    let rsa = rsa_key();
    let started = Instant::now();
    let (status, _, json) = delegate(t, b"too few", rsa).await;
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["code"], "cluster_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "503 took {:?}",
        started.elapsed()
    );

    // Node 2 restarts from its data dir with the recorded command and serves again.
    cluster.restart_node(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, plain, _) = delegate(t, b"after restart", rsa_key()).await;
        if status == 200 {
            assert_eq!(plain.as_deref(), Some(&b"after restart"[..]));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted node did not rejoin"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
