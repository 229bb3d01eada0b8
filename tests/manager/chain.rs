//! `/v0/delegate` authorized from the on-chain registry: a real anvil (started here) with the
//! registry deployed, a real node cluster (`common`), and the manager's router with a
//! [`ChainRegistry`]. The epoch the manager serves is published on chain and read back; a
//! gateway the owner revokes is refused within one block (one more tolerated for polling on
//! a loaded machine). The manager's own publication ([`Admin::publish_served`]) is what a
//! node checks its share against, and a publication the registry refuses is reported.

#![allow(clippy::unwrap_used)] // tests may panic on failure

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use alloy_primitives::{keccak256, Address, Bytes, B256};
use aws_lc_rs::{encoding::AsDer, rsa::KeySize, rsa::PrivateDecryptingKey};
use axum::{
    body::{to_bytes, Body},
    http::{Request, StatusCode},
    Router,
};
use common::{encrypt, start, S};
use k256::ecdsa::SigningKey;
use tkms_crypto::Suite;
use tkms_manager::{
    admin::{Admin, EpochNode, EpochRecord, Served},
    chain::ChainRegistry,
    http::{router, AppState, Metrics, Registry},
    nox,
};
use tkms_registry::{
    anvil, deploy_local, CacheConfig, EpochPublication, LocalSetup, NodeRecord, PrivateKeySigner,
    RegistryCache, RegistryClient, Role,
};
use tower::ServiceExt;

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, serde_json::Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// A recipient's RSA-2048 public key as `targetPubKey` (DER, hex with 0x). Made once per test
/// rather than per request: its random, long-tailed generation time would otherwise delay the
/// requests sent while waiting for the registry to change.
fn rsa_target() -> String {
    let rsa = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
    format!(
        "0x{}",
        hex::encode(rsa.public_key().as_der().unwrap().as_ref())
    )
}

/// A `/v0/delegate` request as the Nox gateway sends it, signed by `gateway`, to `target`.
fn delegate_request(
    gateway: &SigningKey,
    chain_id: u64,
    ephemeral: &str,
    target: &str,
) -> Request<Body> {
    let auth = nox::authorization_header(gateway, chain_id, ephemeral, target);
    let body = serde_json::json!({ "ephemeralPubKey": ephemeral, "targetPubKey": target });
    Request::post(format!("/v0/delegate?chain_id={chain_id}"))
        .header("content-type", "application/json")
        .header("authorization", auth)
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // one end-to-end story, told in order
async fn published_key_matches_and_a_revoked_gateway_is_refused_within_one_block() {
    let tc = start(3, 5, &[], 31).await;
    let wallet = SigningKey::from_slice(&[2u8; 32]).unwrap();
    let gateways = [
        SigningKey::from_slice(&[1u8; 32]).unwrap(),
        SigningKey::from_slice(&[3u8; 32]).unwrap(),
    ];
    let gateway_addresses: Vec<Address> = gateways.iter().map(nox::wallet_address).collect();

    // The chain: the registry, the manager wallet as manager, two gateways (the first is
    // primary), and the cluster's five nodes with their public shares as node keys.
    let anvil = anvil::spawn_or_fail();
    let nodes = node_records(&tc);
    let d = deploy_local(
        &anvil,
        &LocalSetup {
            manager: Some(nox::wallet_address(&wallet)),
            gateways: gateway_addresses.clone(),
            runners: vec![],
            nodes,
        },
    )
    .await
    .unwrap();

    let registry = ChainRegistry::new(
        RegistryCache::start(
            RegistryClient::connect(&d.rpc_url, d.address, None).unwrap(),
            CacheConfig {
                poll_interval: Duration::from_millis(100),
                ..CacheConfig::default()
            },
        )
        .await
        .unwrap(),
        tkms_manager::chain::DEFAULT_MAX_STALENESS,
    );
    let chain_id = registry.cache().chain_id();
    assert_eq!(chain_id, d.chain_id);
    let app = router(Arc::new(AppState {
        served: tc.served(Duration::from_millis(800)),
        admin: None,
        admin_token: None,
        wallet: wallet.clone(),
        registry: Box::new(registry),
        metrics: Metrics::default(),
        nonces: tkms_sdk::v1::NonceCache::default(),
        front: Arc::default(),
    }));

    // The manager publishes the epoch it serves, with its own wallet key (the same k256 type
    // signs EIP-712 proofs and chain transactions); kmsPublicKey() then equals /v0/public-key.
    let (status, served) = call(
        &app,
        Request::get("/v0/public-key").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let served_key = hex::decode(
        served["publicKey"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
    )
    .unwrap();
    let mut shares = Vec::new();
    for (_, share) in tc.keys.public_shares() {
        shares.extend_from_slice(&S::encode_point(share));
    }
    let manager = RegistryClient::connect(
        &d.rpc_url,
        d.address,
        Some(PrivateKeySigner::from_signing_key(wallet.clone())),
    )
    .unwrap();
    manager
        .publish_epoch(&EpochPublication {
            epoch: served["epoch"].as_u64().unwrap(),
            t: 3,
            n: 5,
            public_key: Bytes::from(served_key.clone()),
            public_shares_hash: keccak256(&shares),
            transcript_hash: keccak256(b"test dealer transcript"),
        })
        .await
        .unwrap();
    assert_eq!(
        d.owner.kms_public_key().await.unwrap().unwrap().to_vec(),
        served_key
    );

    // One block per second from here, as on a real chain.
    anvil::set_block_time(&anvil, 1).await.unwrap();
    let ct = encrypt(&tc.keys, b"handle");
    let ephemeral = format!("0x{}", hex::encode(S::encode_point(ct.ephemeral())));
    let target = rsa_target();
    let request =
        |gateway: usize| delegate_request(&gateways[gateway], chain_id, &ephemeral, &target);

    let (status, json) = call(&app, request(0)).await;
    assert_eq!(status, StatusCode::OK, "{json}");

    // The owner revokes the primary gateway: the other becomes primary, then the first goes,
    // refused within one block (one more tolerated, see `first_answer_after`).
    d.owner
        .set_primary_gateway(gateway_addresses[1])
        .await
        .unwrap();
    let revoked = d
        .owner
        .revoke(Role::Gateway, gateway_addresses[0])
        .await
        .unwrap();
    let unauthorized = StatusCode::from_u16(nox::UNAUTHORIZED_STATUS).unwrap();
    let json = first_answer_after(&app, &d.owner, revoked.block, || request(0), unauthorized).await;
    assert_eq!(json["code"], "signer_not_authorized", "{json}");
    let (status, json) = call(&app, request(1)).await;
    assert_eq!(status, StatusCode::OK, "{json}");

    // The last gateway revoked: nobody may delegate on this chain any more.
    let revoked = d
        .owner
        .revoke(Role::Gateway, gateway_addresses[1])
        .await
        .unwrap();
    // With no gateway left the chain is not served at all.
    let malformed = StatusCode::from_u16(nox::MALFORMED_STATUS).unwrap();
    let json = first_answer_after(&app, &d.owner, revoked.block, || request(1), malformed).await;
    assert_eq!(json["code"], "unknown_chain", "{json}");
}

/// The first `expected` answer to `request()` after a registry change mined in block
/// `changed`: sent again while it still gets 200 (the change not yet seen by the manager's
/// registry cache), for up to 10 s; any other answer fails.
///
/// The first `expected` must come before the chain is 2 blocks past `changed`. The issue asks
/// for "revoke a gateway and see its next /v0/delegate refused within one block" (with 401,
/// as every /v0 authorization failure; the cache polls every 100 ms, one block per second);
/// one more block is tolerated for polling on a loaded CI machine (2 cores, several RPC calls
/// per poll, other tests running alongside).
async fn first_answer_after(
    app: &Router,
    chain: &RegistryClient,
    changed: u64,
    request: impl Fn() -> Request<Body>,
    expected: StatusCode,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, json) = call(app, request()).await;
        if status == expected {
            let head = chain.block_number().await.unwrap();
            assert!(
                head <= changed + 2,
                "the first {expected} came at block {head}, the change was mined in {changed}"
            );
            return json;
        }
        assert_eq!(status, StatusCode::OK, "{json}");
        assert!(
            Instant::now() < deadline,
            "still 200 instead of {expected} 10 s after block {changed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn chain_registry_answers_only_for_its_chain_and_fails_closed_when_stale() {
    let anvil = anvil::spawn_or_fail();
    let gateway = Address::repeat_byte(0x61);
    let runner = Address::repeat_byte(0x71);
    let d = deploy_local(
        &anvil,
        &LocalSetup {
            gateways: vec![gateway],
            runners: vec![runner],
            ..LocalSetup::default()
        },
    )
    .await
    .unwrap();
    let cache = RegistryCache::start(
        RegistryClient::connect(&d.rpc_url, d.address, None).unwrap(),
        CacheConfig {
            poll_interval: Duration::from_millis(100),
            ..CacheConfig::default()
        },
    )
    .await
    .unwrap();
    let registry = ChainRegistry::new(cache, Duration::from_millis(500));
    let chain = d.chain_id;
    assert_eq!(registry.gateway(chain), Some(gateway));
    assert!(registry.is_gateway(chain, gateway));
    assert!(!registry.is_gateway(chain, runner));
    assert!(registry.is_runner(chain, runner));
    assert_eq!(registry.gateway(chain + 1), None);
    assert!(!registry.is_gateway(chain + 1, gateway));

    // The chain goes away: after the staleness bound, nobody is a gateway any more.
    drop(anvil);
    let deadline = Instant::now() + Duration::from_secs(5);
    while registry.is_gateway(chain, gateway) {
        assert!(
            Instant::now() < deadline,
            "a stale registry still authorizes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(registry.gateway(chain), None);
    assert!(registry.cache().age() > Duration::from_millis(500));
}

/// The cluster's nodes as registry records (their public shares stand in for node keys).
fn node_records(tc: &common::TestCluster) -> Vec<NodeRecord> {
    tc.keys
        .public_shares()
        .zip(&tc.endpoints)
        .map(|((index, share), endpoint)| NodeRecord {
            index: index.get(),
            peer_id: Bytes::from(
                [
                    &[0x00, 0x24, 0x08, 0x01, 0x12, 0x20][..],
                    &[u8::try_from(index.get()).unwrap(); 32],
                ]
                .concat(),
            ),
            endpoints: vec![endpoint.url.clone()],
            public_key: Bytes::from(S::encode_point(share).to_vec()),
            attestation_digest: B256::ZERO,
        })
        .collect()
}

#[tokio::test]
async fn the_manager_publishes_what_nodes_check_and_reports_a_refused_publication() {
    let tc = start(3, 5, &[], 32).await;
    let wallet = SigningKey::from_slice(&[2u8; 32]).unwrap();
    let anvil = anvil::spawn_or_fail();
    let d = deploy_local(
        &anvil,
        &LocalSetup {
            manager: Some(nox::wallet_address(&wallet)),
            nodes: node_records(&tc),
            ..LocalSetup::default()
        },
    )
    .await
    .unwrap();
    let record = EpochRecord {
        epoch: 1,
        threshold: 3,
        commitment: hex::encode(tc.keys.commitment().to_bytes()),
        transcript_hash: hex::encode([0x11; 32]),
        nodes: tc
            .endpoints
            .iter()
            .map(|e| EpochNode {
                index: e.index.get(),
                url: e.url.clone(),
                node_key: e
                    .key
                    .as_ref()
                    .map(|k| hex::encode(k.bytes()))
                    .unwrap_or_default(),
            })
            .collect(),
        committee: Vec::new(),
        dropped: Vec::new(),
    };
    let admin = |key: PrivateKeySigner| {
        Admin::new(
            tc.manager.clone(),
            Vec::new(),
            Duration::from_secs(1),
            Duration::from_secs(1),
            None,
            Arc::new(Served::new(Some((
                tc.cluster(Duration::from_secs(1)),
                record.clone(),
            )))),
        )
        .unwrap()
        .with_publisher(RegistryClient::connect(&d.rpc_url, d.address, Some(key)).unwrap())
    };

    // Signed by an account that is not the manager (here the owner): refused, and said so.
    let err = admin(d.owner_key.clone())
        .publish_served()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("NotManager"), "{err}");
    assert!(err.contains("epoch 1 is adopted"), "{err}");
    assert_eq!(d.owner.current_epoch().await.unwrap(), 0);

    // Signed by the manager wallet: published once, and a node holding a share of this key
    // set accepts the publication.
    let manager = admin(PrivateKeySigner::from_signing_key(wallet));
    assert!(manager.publish_served().await.unwrap().is_some());
    assert!(manager.publish_served().await.unwrap().is_none());
    let published = d.owner.epoch(1).await.unwrap().unwrap().publication;
    let shares: Vec<(u16, [u8; 33])> = tc
        .keys
        .public_shares()
        .map(|(i, p)| (i.get(), S::encode_point(p)))
        .collect();
    tkms_registry::access::check_publication(
        &published,
        1,
        3,
        tc.keys.public_key_encoded().bytes(),
        shares.iter().map(|(i, p)| (*i, p.as_slice())),
    )
    .unwrap();
    assert_eq!(published.transcript_hash, B256::repeat_byte(0x11));
}
