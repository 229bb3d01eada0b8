//! The manager's front door in front of real node servers: a requester over its quota gets
//! 429 with `Retry-After` and costs no node work while another is served; every request,
//! served or refused, leaves one audit entry (one per batch item) with who, what, the epoch,
//! the digest, the result and the culprits; a log that cannot be written refuses key uses
//! (or not, with `--audit-fail open`).

#![allow(clippy::unwrap_used)] // tests may panic on failure

mod common;

use std::{path::Path, sync::Arc, time::Duration};

use axum::{
    body::{to_bytes, Body},
    http::{header, Request, StatusCode},
    Router,
};
use common::{encrypt, start, S};
use k256::ecdsa::SigningKey;
use rand_core::OsRng;
use tkms_crypto::{suite::Encoded, Suite};
use tkms_daemon::audit::{self, AuditFail};
use tkms_manager::{
    front::{self, FrontDoor, FrontDoorArgs},
    http::{router, AppState, Metrics, StaticRegistry},
    nox,
    quota::QuotaArgs,
};
use tkms_sdk::v1::{self, Freshness, ReencryptV1};
use tower::ServiceExt;

const CHAIN: u64 = 421_614;

struct Fixture {
    app: Router,
    gateway: SigningKey,
    runner: SigningKey,
    tc: common::TestCluster,
}

async fn fixture(liars: &[u16], args: &FrontDoorArgs) -> Fixture {
    let tc = start(3, 5, liars, 21).await;
    let gateway = SigningKey::from_slice(&[1u8; 32]).unwrap();
    let runner = SigningKey::from_slice(&[5u8; 32]).unwrap();
    let (front, nonces, _) = FrontDoor::open(args).unwrap();
    let state = AppState {
        served: tc.served(Duration::from_millis(800)),
        admin: None,
        admin_token: None,
        wallet: SigningKey::from_slice(&[2u8; 32]).unwrap(),
        registry: Box::new(
            StaticRegistry::default()
                .with_gateway(CHAIN, nox::wallet_address(&gateway))
                .with_runner(CHAIN, nox::wallet_address(&runner)),
        ),
        metrics: Metrics::default(),
        nonces,
        front: Arc::clone(&front),
    };
    Fixture {
        app: front::layer(router(Arc::new(state)), front),
        gateway,
        runner,
        tc,
    }
}

fn args(dir: &Path) -> FrontDoorArgs {
    FrontDoorArgs {
        audit_log: Some(dir.join("audit.jsonl")),
        ..FrontDoorArgs::default()
    }
}

async fn call(
    app: &Router,
    request: Request<Body>,
) -> (StatusCode, Option<String>, serde_json::Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let retry = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (
        status,
        retry,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// A `/v0/delegate` request signed by `signer`.
fn v0(f: &Fixture, signer: &SigningKey) -> Request<Body> {
    let ct = encrypt(&f.tc.keys, b"x");
    let ephemeral = format!("0x{}", hex::encode(S::encode_point(ct.ephemeral())));
    let target = v1::RsaRecipient::generate().unwrap().spki_hex();
    let auth = nox::authorization_header(signer, CHAIN, &ephemeral, &target);
    let body = serde_json::json!({ "ephemeralPubKey": ephemeral, "targetPubKey": target });
    Request::post(format!("/v0/delegate?chain_id={CHAIN}"))
        .header("content-type", "application/json")
        .header("authorization", auth)
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// A `/v1/reencrypt` request of `n` capsules signed by `signer`.
fn reencrypt(f: &Fixture, signer: &SigningKey, n: usize) -> (Request<Body>, ReencryptV1) {
    let capsules = (0..n)
        .map(|_| Encoded::new(*encrypt(&f.tc.keys, b"y").ephemeral()))
        .collect();
    let (_, target) = v1::target_key();
    let request = ReencryptV1::sign(signer, CHAIN, target, capsules, Freshness::new(60)).unwrap();
    let (body, auth) = request.to_http();
    let http = Request::post("/v1/reencrypt")
        .header("content-type", "application/json")
        .header("authorization", auth)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    (http, request)
}

fn entries(dir: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let path = dir.join("audit.jsonl");
    audit::verify(std::fs::File::open(&path).unwrap()).unwrap();
    audit::entries(std::fs::File::open(&path).unwrap())
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn over_quota_is_429_with_retry_after_and_every_request_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(
        &[],
        &FrontDoorArgs {
            quotas: QuotaArgs {
                quota_gateway: "0.2:2".parse().unwrap(),
                ..QuotaArgs::default()
            },
            ..args(dir.path())
        },
    )
    .await;
    // The gateway's burst of 2 is served, the third is refused.
    for _ in 0..2 {
        let (status, _, json) = call(&f.app, v0(&f, &f.gateway)).await;
        assert_eq!(status, StatusCode::OK, "{json}");
    }
    let (status, retry, json) = call(&f.app, v0(&f, &f.gateway)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
    assert_eq!(json["code"], "rate_limited");
    let retry: u64 = retry.unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    // The runner is unaffected: a batch of 3 capsules, served.
    let (request, signed) = reencrypt(&f, &f.runner, 3);
    let (status, _, json) = call(&f.app, request).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    // A stranger: refused, and recorded with its address.
    let stranger = SigningKey::random(&mut OsRng);
    let (status, _, _) = call(&f.app, v0(&f, &stranger)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Counted by requester.
    let (_, _, _) = call(&f.app, Request::get("/health").body(Body::empty()).unwrap()).await;
    let metrics = f
        .app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let metrics = String::from_utf8(
        to_bytes(metrics.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    let gateway = nox::wallet_address(&f.gateway);
    assert!(
        metrics.contains(&format!(
            "tkms_quota_refused_total{{scope=\"requester\",requester=\"{gateway}\",role=\"gateway\"}} 1"
        )),
        "{metrics}"
    );

    // One entry per request (per capsule), in order; /health is not a key use.
    let log = entries(dir.path());
    let ops: Vec<(&str, &str)> = log
        .iter()
        .map(|e| (e["op"].as_str().unwrap(), e["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ops,
        [
            ("v0/delegate", "ok"),
            ("v0/delegate", "ok"),
            ("v0/delegate", "rate_limited"),
            ("v1/reencrypt", "ok"),
            ("v1/reencrypt", "ok"),
            ("v1/reencrypt", "ok"),
            ("v0/delegate", "signer_not_authorized"),
        ]
    );
    for e in &log[..3] {
        assert_eq!(e["requester"], gateway.to_string());
        assert_eq!(e["role"], "gateway");
        assert_eq!(e["chain_id"], CHAIN);
        assert!(e["digest"].as_str().unwrap().len() == 66);
    }
    assert_eq!(log[0]["epoch"], 1);
    assert_eq!(log[2]["status"], 429);
    // The refused request reached no node: its entry names no epoch and no node.
    assert!(log[2].get("epoch").is_none() && log[2].get("nodes").is_none());
    let digest = format!("{}", signed.digest());
    for (k, (e, (id, _))) in log[3..6].iter().zip(signed.capsule_ids()).enumerate() {
        assert_eq!(e["role"], "runner");
        assert_eq!(e["request"], digest.as_str());
        assert_eq!(e["digest"], format!("0x{}", hex::encode(id)));
        assert_eq!(
            (e["item"].as_u64(), e["items"].as_u64()),
            (Some(k as u64), Some(3))
        );
        assert_eq!(e["nodes"].as_array().unwrap().len(), 3);
    }
    assert_eq!(
        log[6]["requester"],
        nox::wallet_address(&stranger).to_string()
    );
    assert_eq!(log[6]["status"], 401);
}

#[tokio::test]
async fn culprits_are_named_in_the_audit_entry() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(&[1, 2, 3], &args(dir.path())).await;
    let (status, _, json) = call(&f.app, v0(&f, &f.gateway)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    let log = entries(dir.path());
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["result"], "cluster_unavailable");
    assert_eq!(log[0]["culprits"], serde_json::json!([1, 2, 3]));
    assert_eq!(log[0]["failed"]["1"], "invalid_proof");
}

#[cfg(unix)]
#[tokio::test]
async fn an_unwritable_audit_log_refuses_key_uses_unless_told_otherwise() {
    for (fail, expected) in [
        (AuditFail::Closed, StatusCode::SERVICE_UNAVAILABLE),
        (AuditFail::Open, StatusCode::OK),
    ] {
        let dir = tempfile::tempdir().unwrap();
        // Every write to /dev/full fails (ENOSPC).
        std::os::unix::fs::symlink("/dev/full", dir.path().join("audit.jsonl")).unwrap();
        let f = fixture(
            &[],
            &FrontDoorArgs {
                audit_fail: fail,
                ..args(dir.path())
            },
        )
        .await;
        let (status, _, json) = call(&f.app, v0(&f, &f.gateway)).await;
        assert_eq!(status, expected, "{fail:?}: {json}");
        if fail == AuditFail::Closed {
            assert_eq!(json["code"], "audit_unavailable");
            // Refused up front now, before any node is asked.
            let (status, _, _) = call(&f.app, v0(&f, &f.gateway)).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        }
    }
}
