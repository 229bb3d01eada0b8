//! End to end across real processes (`tkms testnet up`, 5 nodes, t = 3):
//!
//! - `/v1/delegate` and `/v1/reencrypt` (single and batch) recover messages encrypted to the
//!   cluster key, through the SDK, which verifies every proof;
//! - forged, replayed, expired and unauthorized requests are refused with 401/403;
//!   malformed ones (bad JSON, bad points, short RSA keys, oversized batches) with 400;
//! - a node refuses a partial request that its (compromised) manager signed but the
//!   requester did not authorize;
//! - a reshare to a new committee of 7 with t = 4 keeps the public key, old ciphertexts still
//!   open, and the new committee survives 3 nodes down.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::path::Path;

use k256::ecdsa::SigningKey;
use rand_core::OsRng;
use serde_json::{json, Value};
use tkms_crypto::{ecies, suite::Encoded, Secp256k1, SecretScalar};
use tkms_e2e::{Cluster, Options, Testnet};
use tkms_proto::{
    node::v1::{self as pb, node_client::NodeClient},
    tls::ManagerTls,
};
use tkms_sdk::{
    nox,
    v1::{self, DelegateV1, Freshness, ReencryptV1, RsaRecipient},
    Client, ClientError,
};

type S = Secp256k1;

fn key(hex_text: &str) -> SigningKey {
    SigningKey::from_slice(&hex::decode(hex_text.trim_start_matches("0x")).unwrap()).unwrap()
}

fn client(t: &Testnet) -> Client {
    Client::new(&t.manager_url)
        .unwrap()
        .with_manager(t.manager_address.parse().unwrap())
}

fn encrypt(key: &tkms_sdk::ClusterKey, message: &[u8]) -> ecies::Ciphertext<S> {
    ecies::encrypt::<S>(key.public_key().point(), message, &mut OsRng).unwrap()
}

/// POST raw bytes; the status and JSON body.
async fn post(url: &str, auth: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn refused(result: Result<impl std::fmt::Debug, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Refused { status, code, .. }) => (status, code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_delegate_and_reencrypt_refusals_node_checks_and_reshare() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Cluster::start(dir.path(), &Options::new(5, 3));
    let t = net.testnet().clone();
    let gateway = key(&t.gateway_private_key);
    let runner = key(&t.runner_private_key);
    let c = client(&t);
    let cluster = c.public_key().await.unwrap();
    assert_eq!(cluster.keys.threshold(), 3);

    // /v1/delegate: the partials come encrypted to our RSA key; the SDK verifies them.
    let ct = encrypt(&cluster, b"through /v1/delegate");
    let recipient = RsaRecipient::generate().unwrap();
    let ephemeral = Encoded::new(*ct.ephemeral());
    let opened = c
        .delegate(&gateway, t.chain_id, &cluster, &ephemeral, &recipient)
        .await
        .unwrap();
    assert!(opened.rejected.is_empty(), "{:?}", opened.rejected);
    let plain = ecies::open_with_shared_secret(&opened.value, &ct).unwrap();
    assert_eq!(&*plain, b"through /v1/delegate");

    // /v1/reencrypt, single (as the runner) and a batch of 32 (as the gateway).
    let plain = c.decrypt(&runner, t.chain_id, &cluster, &ct).await.unwrap();
    assert_eq!(&*plain, b"through /v1/delegate");
    let messages: Vec<Vec<u8>> = (0..32).map(|k| format!("batch item {k}").into()).collect();
    let cts: Vec<_> = messages.iter().map(|m| encrypt(&cluster, m)).collect();
    let (b, target) = v1::target_key();
    let capsules = c
        .reencrypt(
            &gateway,
            t.chain_id,
            &cluster,
            target,
            cts.iter().map(|ct| Encoded::new(*ct.ephemeral())).collect(),
        )
        .await
        .unwrap();
    for ((capsule, ct), m) in capsules.iter().zip(&cts).zip(&messages) {
        assert_eq!(&*capsule.decrypt(&b, ct).unwrap(), m.as_slice());
    }

    refusals(&t, &c, &cluster, &gateway, &runner).await;
    malformed(&t, &gateway).await;
    nodes_recheck_the_requester(&t, &net.manager_dir(), &gateway).await;
    reshare(&mut net, &cluster, &gateway, &ct).await;
}

/// Forged, unauthorized, replayed and expired requests: 401/403, nothing served.
async fn refusals(
    t: &Testnet,
    c: &Client,
    cluster: &tkms_sdk::ClusterKey,
    gateway: &SigningKey,
    runner: &SigningKey,
) {
    let ct = encrypt(cluster, b"x");
    let ephemeral = Encoded::new(*ct.ephemeral());
    let recipient = RsaRecipient::generate().unwrap();
    let stranger = SigningKey::random(&mut OsRng);

    // A signer without a role: 403.
    let (status, code) = refused(
        c.delegate(&stranger, t.chain_id, cluster, &ephemeral, &recipient)
            .await,
    );
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    // A runner may re-encrypt but not delegate.
    let (status, code) = refused(
        c.delegate(runner, t.chain_id, cluster, &ephemeral, &recipient)
            .await,
    );
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    let (_, target) = v1::target_key();
    let (status, _) = refused(
        c.reencrypt(&stranger, t.chain_id, cluster, target, vec![ephemeral])
            .await,
    );
    assert_eq!(status, 403);
    // Another chain: nobody is a gateway there.
    let (status, _) = refused(
        c.delegate(gateway, t.chain_id + 1, cluster, &ephemeral, &recipient)
            .await,
    );
    assert_eq!(status, 403);

    // Forged: a request signed by the gateway whose body is then altered (another K) no
    // longer recovers to the gateway.
    let mut forged = DelegateV1::sign(
        gateway,
        t.chain_id,
        ephemeral,
        recipient.spki_der().to_vec(),
        Freshness::new(60),
    );
    forged.ephemeral = Encoded::new(*ct.ephemeral() + *ct.ephemeral());
    let (status, _) = refused(c.send_delegate(&forged).await);
    assert_eq!(status, 403);
    // Missing and malformed signatures: 401.
    let request = DelegateV1::sign(
        gateway,
        t.chain_id,
        ephemeral,
        recipient.spki_der().to_vec(),
        Freshness::new(60),
    );
    let (body, _) = request.to_http();
    let url = format!("{}/v1/delegate", t.manager_url);
    let (status, json) = post(&url, None, serde_json::to_vec(&body).unwrap()).await;
    assert_eq!((status, json["code"].as_str()), (401, Some("unauthorized")));
    let (status, _) = post(
        &url,
        Some("Bearer 0x1234"),
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
    assert_eq!(status, 401);

    // Replay: the same signed request twice.
    c.send_delegate(&request).await.unwrap();
    let (status, code) = refused(c.send_delegate(&request).await);
    assert_eq!((status, code.as_str()), (401, "replayed"));
    let reencrypt = ReencryptV1::sign(
        runner,
        t.chain_id,
        target,
        vec![ephemeral],
        Freshness::new(60),
    )
    .unwrap();
    c.send_reencrypt(&reencrypt).await.unwrap();
    let (status, code) = refused(c.send_reencrypt(&reencrypt).await);
    assert_eq!((status, code.as_str()), (401, "replayed"));

    // Expired, and valid for far too long.
    for expires_at in [v1::now_secs() - 1, v1::now_secs() + 3600] {
        let fresh = Freshness {
            expires_at,
            ..Freshness::new(60)
        };
        let request = DelegateV1::sign(
            gateway,
            t.chain_id,
            ephemeral,
            recipient.spki_der().to_vec(),
            fresh,
        );
        let (status, code) = refused(c.send_delegate(&request).await);
        assert_eq!((status, code.as_str()), (401, "expired"));
    }

    // The refusals are counted.
    let metrics = reqwest::get(format!("{}/metrics", t.manager_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"tkms_v1_requests_total{route="/v1/delegate",outcome="replayed"} 1"#),
        "{metrics}"
    );
}

/// Malformed bodies, bad points, short RSA keys, oversized batches: 400 with a JSON error.
async fn malformed(t: &Testnet, gateway: &SigningKey) {
    let sig = format!("Bearer 0x{}", "11".repeat(65));
    let delegate = format!("{}/v1/delegate", t.manager_url);
    let reencrypt = format!("{}/v1/reencrypt", t.manager_url);
    let recipient = RsaRecipient::generate().unwrap();
    let k = Encoded::<S>::new(SecretScalar::<S>::random(&mut OsRng).public_point());
    let good = DelegateV1::sign(
        gateway,
        t.chain_id,
        k,
        recipient.spki_der().to_vec(),
        Freshness::new(60),
    )
    .to_http()
    .0;
    let mut cases: Vec<(String, Vec<u8>, &str)> = vec![
        (delegate.clone(), b"{not json".to_vec(), "invalid_body"),
        (delegate.clone(), b"[]".to_vec(), "invalid_body"),
        (delegate.clone(), vec![b'{'; 70_000], "invalid_body"),
    ];
    let mut bad_point = good.clone();
    bad_point.ephemeral_pub_key = format!("0x02{}", "ff".repeat(32));
    let mut short_rsa = good.clone();
    // A real 1024-bit key (made with Python's `cryptography`; aws-lc refuses to make one).
    short_rsa.target_pub_key = format!("0x{SPKI_1024}");
    let mut bad_nonce = good.clone();
    bad_nonce.nonce = "0x1234".into();
    for (body, code) in [
        (bad_point, "invalid_key"),
        (short_rsa, "invalid_key"),
        (bad_nonce, "invalid_body"),
    ] {
        cases.push((delegate.clone(), serde_json::to_vec(&body).unwrap(), code));
    }
    let point_hex = format!("0x{}", hex::encode(k.bytes()));
    let batch = |n: usize| {
        json!({
            "chainId": t.chain_id, "targetPubKey": point_hex,
            "capsules": vec![point_hex.clone(); n],
            "nonce": format!("0x{}", "00".repeat(32)), "expiresAt": v1::now_secs() + 60,
        })
    };
    cases.push((
        reencrypt.clone(),
        serde_json::to_vec(&batch(v1::MAX_BATCH + 1)).unwrap(),
        "batch_size",
    ));
    cases.push((
        reencrypt.clone(),
        serde_json::to_vec(&batch(0)).unwrap(),
        "batch_size",
    ));
    let mut both = batch(1);
    both["capsule"] = json!(point_hex);
    cases.push((
        reencrypt.clone(),
        serde_json::to_vec(&both).unwrap(),
        "invalid_body",
    ));
    let mut identity = batch(1);
    identity["targetPubKey"] = json!("0x00");
    cases.push((
        reencrypt,
        serde_json::to_vec(&identity).unwrap(),
        "invalid_key",
    ));
    for (url, body, code) in cases {
        let (status, json) = post(&url, Some(&sig), body).await;
        assert_eq!(status, 400, "{code}: {json}");
        assert_eq!(json["code"], code, "{json}");
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
}

/// A valid 1024-bit RSA SubjectPublicKeyInfo (too short to accept).
#[rustfmt::skip]
const SPKI_1024: &str = "30819f300d06092a864886f70d010101050003818d0030818902818100acf6967e988df13ed9f13c00fbcc816f195e99482f97df971f38ddfe2b01e604ae5a1d67c8b2808b68341be7e6bd52e928068793564746fdbcbb75cd5ef76b198443ad54d4d5bcbf8a483f354be8a0cba26352b3634e46b62c19417ba055a1fe6d1f436178d8f991acbfee6c8f526f4c0965702345fa9022fd9597e837dc4ae50203010001";

/// The manager's key towards the nodes, from the manager's directory.
fn manager_node_key(manager_dir: &Path) -> SecretScalar<S> {
    let hex_key = std::fs::read_to_string(manager_dir.join("node-request.key")).unwrap();
    SecretScalar::<S>::from_bytes(&hex::decode(hex_key.trim().trim_start_matches("0x")).unwrap())
        .unwrap()
}

/// A gRPC client to the node at `addr` over TLS as `key`.
fn tls_client(key: &SecretScalar<S>, addr: &str) -> NodeClient<tonic::transport::Channel> {
    let tls = ManagerTls::new(key).unwrap();
    NodeClient::new(tls.channel(&tls.endpoint(&format!("http://{addr}")).unwrap()))
}

/// A compromised manager (here: the test, holding the manager's node-request key, over the
/// manager's TLS identity) sends node requests the requester never authorized; each node
/// refuses them itself. Without that key, nothing is served at all.
async fn nodes_recheck_the_requester(t: &Testnet, manager_dir: &Path, gateway: &SigningKey) {
    // The manager's side of the TLS channel, with its key.
    let mut node = tls_client(&manager_node_key(manager_dir), &t.nodes[0].grpc_addr);
    let status: pb::StatusResponse = node
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    // Without the manager's key, a client gets no partial: a plaintext client cannot even
    // connect, and a TLS client with another key is refused.
    let plaintext_refused =
        match NodeClient::connect(format!("http://{}", t.nodes[0].grpc_addr)).await {
            Err(_) => true,
            Ok(mut plain) => plain.status(pb::StatusRequest {}).await.is_err(),
        };
    assert!(plaintext_refused);
    let mut outsider = tls_client(
        &SecretScalar::<S>::random(&mut OsRng),
        &t.nodes[0].grpc_addr,
    );
    let k1 = Encoded::<S>::new(SecretScalar::<S>::random(&mut OsRng).public_point());
    let k2 = Encoded::<S>::new(SecretScalar::<S>::random(&mut OsRng).public_point());
    let recipient = RsaRecipient::generate().unwrap();
    let eph1 = format!("0x{}", hex::encode(k1.bytes()));
    let authorized = nox::DelegateRequest::from_authorization(
        t.chain_id,
        &eph1,
        &recipient.spki_hex(),
        &hex::decode(
            nox::authorization_header(gateway, t.chain_id, &eph1, &recipient.spki_hex())
                .trim_start_matches("Bearer 0x"),
        )
        .unwrap(),
    )
    .unwrap();
    let v0 = |ephemeral: Encoded<S>, request_id: Vec<u8>| pb::PartialDelegationRequest {
        epoch: status.epoch,
        request_id,
        ephemeral: ephemeral.bytes().to_vec(),
        authorization: Some(pb::RequesterAuthorization {
            scheme: Some(pb::requester_authorization::Scheme::Eip712Delegate(
                pb::Eip712Delegate {
                    chain_id: t.chain_id,
                    ephemeral_pub_key: eph1.clone(),
                    target_pub_key: recipient.spki_hex(),
                    signature: authorized.signature().as_bytes().to_vec(),
                },
            )),
        }),
        target_rsa_spki: Vec::new(),
    };
    // The authorized request is served, to the manager's key only.
    node.partial_delegation(v0(k1, authorized.request_id()))
        .await
        .unwrap();
    let err = outsider
        .partial_delegation(v0(k1, authorized.request_id()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    // The same authorization presented for another K is refused by the node.
    let err = node
        .partial_delegation(v0(k2, authorized.request_id()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // No authorization at all.
    let mut bare = v0(k1, authorized.request_id());
    bare.authorization = None;
    let err = node.partial_delegation(bare).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // A /v1 re-encryption the manager made up, signed by a non-runner: refused.
    let stranger = SigningKey::random(&mut OsRng);
    let (_, target) = v1::target_key();
    let forged =
        ReencryptV1::sign(&stranger, t.chain_id, target, vec![k1], Freshness::new(60)).unwrap();
    let digest = forged.digest();
    let r = pb::PartialReencryptionRequest {
        epoch: status.epoch,
        target: target.bytes().to_vec(),
        capsules: forged
            .capsule_ids()
            .into_iter()
            .map(|(id, k)| pb::Capsule {
                request_id: id,
                ephemeral: k.bytes().to_vec(),
            })
            .collect(),
        authorization: Some(pb::RequesterAuthorization {
            scheme: Some(pb::requester_authorization::Scheme::Eip712Request(
                pb::Eip712Request {
                    chain_id: t.chain_id,
                    request_digest: digest.to_vec(),
                    nonce: forged.freshness.nonce.to_vec(),
                    expires_at: forged.freshness.expires_at,
                    signature: forged.signature.clone(),
                },
            )),
        }),
    };
    let err = node.partial_reencryption(r).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
}

/// Reshare 5/3 → 7/4: same public key, old ciphertexts open, 3 of 7 down still serves.
async fn reshare(
    cluster: &mut Cluster,
    before: &tkms_sdk::ClusterKey,
    gateway: &SigningKey,
    old: &ecies::Ciphertext<S>,
) {
    let mut urls = cluster.node_urls();
    urls.push(cluster.start_extra_node());
    urls.push(cluster.start_extra_node());
    let t = cluster.testnet().clone();
    let (status, body) = cluster.reshare(4, &urls).await;
    assert!(status.is_success(), "{body}");
    assert_eq!(body["publicKey"], t.public_key, "{body}");
    assert_eq!(body["threshold"], 4, "{body}");

    let c = client(&t);
    let after = c.public_key().await.unwrap();
    assert_eq!(after.public_key(), before.public_key());
    assert_eq!(after.keys.threshold(), 4);
    assert_eq!(after.keys.committee_size(), 7);
    assert!(after.epoch > before.epoch);

    // The old ciphertext still opens, through both APIs, with 3 of the 7 nodes down (two old
    // ones and a new one).
    cluster.kill_node(0);
    cluster.kill_node(1);
    cluster.kill_extra_node(0);
    let plain = c.decrypt(gateway, t.chain_id, &after, old).await.unwrap();
    assert_eq!(&*plain, b"through /v1/delegate");
    let recipient = RsaRecipient::generate().unwrap();
    let opened = c
        .delegate(
            gateway,
            t.chain_id,
            &after,
            &Encoded::new(*old.ephemeral()),
            &recipient,
        )
        .await
        .unwrap();
    assert_eq!(
        &*ecies::open_with_shared_secret(&opened.value, old).unwrap(),
        b"through /v1/delegate"
    );
    // One more down: fewer than t = 4, a clear 503.
    cluster.kill_node(2);
    let (status, code) = refused(c.decrypt(gateway, t.chain_id, &after, old).await);
    assert_eq!((status, code.as_str()), (503, "cluster_unavailable"));
}
