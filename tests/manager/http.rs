//! `/v0/delegate` end to end through the manager's router and real node servers: a Nox-style
//! gateway request (EIP-712 authorization, RSA key made on the spot) yields x(S) RSA-encrypted
//! to the requester with a proof signed by the manager wallet; bad requests get clear JSON
//! errors; with too few nodes, a 503.

#![allow(clippy::unwrap_used)] // tests may panic on failure

mod common;

use std::{sync::Arc, time::Duration};

use aws_lc_rs::{
    encoding::AsDer,
    rsa::{KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA256_MGF1SHA256},
};
use axum::{
    body::{to_bytes, Body},
    http::{Request, StatusCode},
    Router,
};
use common::{encrypt, start, S};
use k256::ecdsa::SigningKey;
use tkms_crypto::{ecies, SharedSecret, Suite};
use tkms_manager::{
    http::{router, AppState, Metrics, StaticRegistry},
    nox,
};
use tower::ServiceExt;

const CHAIN: u64 = 421_614;

struct Fixture {
    app: Router,
    gateway: SigningKey,
    wallet: SigningKey,
    tc: common::TestCluster,
}

async fn fixture(liars: &[u16]) -> Fixture {
    let tc = start(3, 5, liars, 11).await;
    let gateway = SigningKey::from_slice(&[1u8; 32]).unwrap();
    let wallet = SigningKey::from_slice(&[2u8; 32]).unwrap();
    let state = AppState {
        served: tc.served(Duration::from_millis(800)),
        admin: None,
        admin_token: None,
        wallet: wallet.clone(),
        registry: Box::new(
            StaticRegistry::default().with_gateway(CHAIN, nox::wallet_address(&gateway)),
        ),
        metrics: Metrics::default(),
        nonces: tkms_sdk::v1::NonceCache::default(),
        front: Arc::default(),
    };
    Fixture {
        app: router(Arc::new(state)),
        gateway,
        wallet,
        tc,
    }
}

fn rsa_key() -> (PrivateDecryptingKey, String) {
    let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
    let spki = key.public_key().as_der().unwrap();
    let hex = format!("0x{}", hex::encode(spki.as_ref()));
    (key, hex)
}

async fn post(
    app: &Router,
    query: &str,
    body: &str,
    auth: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut request =
        Request::post(format!("/v0/delegate?{query}")).header("content-type", "application/json");
    if let Some(a) = auth {
        request = request.header("authorization", a);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

fn body(ephemeral: &str, target: &str) -> String {
    serde_json::json!({ "ephemeralPubKey": ephemeral, "targetPubKey": target }).to_string()
}

#[tokio::test]
async fn v0_delegate_serves_a_gateway_like_the_single_key_kms() {
    let f = fixture(&[4]).await;
    let ct = encrypt(&f.tc.keys, b"handle plaintext");
    let ephemeral = format!("0x{}", hex::encode(S::encode_point(ct.ephemeral())));
    let (rsa, target) = rsa_key();
    let auth = nox::authorization_header(&f.gateway, CHAIN, &ephemeral, &target);
    let salt = format!("0x{}", "11".repeat(32));
    let (status, json) = post(
        &f.app,
        &format!("chain_id={CHAIN}&salt={salt}"),
        &body(&ephemeral, &target),
        Some(&auth),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    // The requester decrypts x(S) with its RSA key and opens the ciphertext locally.
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
    assert_eq!(
        &*ecies::open_with_shared_secret(&secret, &ct).unwrap(),
        b"handle plaintext"
    );
    // The proof is the manager wallet's EIP-712 signature under the request's salt.
    let salt_bytes: [u8; 32] = [0x11; 32];
    let signer = nox::verify_response(
        CHAIN,
        salt_bytes.into(),
        json["encryptedSharedSecret"].as_str().unwrap(),
        json["proof"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(signer, nox::wallet_address(&f.wallet));
    // Health, public key and metrics.
    let (_, health) = get(&f.app, "/health").await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["threshold"], 3);
    let (_, pk) = get(&f.app, "/v0/public-key").await;
    assert_eq!(
        pk["publicKey"],
        format!(
            "0x{}",
            hex::encode(S::encode_point(&f.tc.keys.public_key()))
        )
    );
    let metrics = get_text(&f.app, "/metrics").await;
    assert!(
        metrics.contains("tkms_delegate_requests_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
}

async fn get(app: &Router, path: &str) -> (StatusCode, serde_json::Value) {
    let response = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn get_text(app: &Router, path: &str) -> String {
    let response = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    String::from_utf8(
        to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn v0_delegate_refuses_bad_requests_with_json_errors() {
    let f = fixture(&[]).await;
    let ct = encrypt(&f.tc.keys, b"x");
    let ephemeral = format!("0x{}", hex::encode(S::encode_point(ct.ephemeral())));
    let (_, target) = rsa_key();
    let good = nox::authorization_header(&f.gateway, CHAIN, &ephemeral, &target);
    let stranger = SigningKey::from_slice(&[9u8; 32]).unwrap();
    let forged = nox::authorization_header(&stranger, CHAIN, &ephemeral, &target);
    let query = format!("chain_id={CHAIN}");
    let cases = [
        (
            query.clone(),
            body(&ephemeral, &target),
            None,
            "unauthorized",
        ),
        (
            query.clone(),
            body(&ephemeral, &target),
            Some(forged.as_str()),
            "signer_not_authorized",
        ),
        (
            "chain_id=1".to_string(),
            body(&ephemeral, &target),
            Some(good.as_str()),
            "unknown_chain",
        ),
        (
            query.clone(),
            body("0x04abcd", &target),
            Some(good.as_str()),
            "invalid_ephemeral_pub_key",
        ),
        (
            query.clone(),
            body(&ephemeral, "0x3082"),
            Some(good.as_str()),
            "invalid_target_pub_key",
        ),
        (
            query.clone(),
            "{not json".to_string(),
            Some(good.as_str()),
            "invalid_body",
        ),
        (
            "chain_id=abc".to_string(),
            body(&ephemeral, &target),
            Some(good.as_str()),
            "invalid_query",
        ),
    ];
    for (query, body, auth, code) in cases {
        let (status, json) = post(&f.app, &query, &body, auth).await;
        // Any authorization failure is a 401, as in nox-kms; everything else is malformed.
        let expected = if matches!(code, "signer_not_authorized" | "unauthorized") {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        assert_eq!(status, expected, "{code}: {json}");
        assert_eq!(json["code"], code, "{json}");
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
}

#[tokio::test]
async fn v0_delegate_is_503_when_fewer_than_t_nodes_answer() {
    let f = fixture(&[1, 2, 3]).await;
    let ct = encrypt(&f.tc.keys, b"x");
    let ephemeral = format!("0x{}", hex::encode(S::encode_point(ct.ephemeral())));
    let (_, target) = rsa_key();
    let auth = nox::authorization_header(&f.gateway, CHAIN, &ephemeral, &target);
    let (status, json) = post(
        &f.app,
        &format!("chain_id={CHAIN}"),
        &body(&ephemeral, &target),
        Some(&auth),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    assert_eq!(json["code"], "cluster_unavailable");
    let metrics = get_text(&f.app, "/metrics").await;
    assert!(metrics.contains("reason=\"invalid_proof\""), "{metrics}");
}
