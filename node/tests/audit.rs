//! A node's own front door, through its public API: every partial it is asked for is in its
//! audit log (served or refused), the log holds no secret, a request it served is refused as
//! a replay after it restarts, and a partial whose entry cannot be written is not returned.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::{path::Path, sync::Arc};

use alloy_primitives::{Address, Signature, B256};
use rand_core::OsRng;
use tkms_crypto::{shamir, suite::Encoded, KeyShare, PublicKeySet, Secp256k1, SecretScalar};
use tkms_daemon::{
    audit::{self, AuditFail},
    nonces::NonceJournal,
};
use tkms_node::{
    epochs::{ActiveShare, Epochs},
    front::{AuditedNode, NodeAudit},
    service::NodeService,
};
use tkms_proto::{
    node::v1::{self as pb, node_server::Node},
    tls::TlsPeer,
};
use tkms_registry::access::StaticRegistry;
use tkms_sdk::v1;
use tonic::{Code, Request};

type S = Secp256k1;
const CHAIN: u64 = 31337;

struct Fixture {
    node: AuditedNode,
    share: KeyShare<S>,
    manager: [u8; 33],
    runner: k256::ecdsa::SigningKey,
}

/// The keys of a test node, kept across its restarts.
#[derive(Clone)]
struct Keys {
    share: KeyShare<S>,
    key_set: PublicKeySet<S>,
    manager: Encoded<S>,
    runner: k256::ecdsa::SigningKey,
}

fn keys() -> Keys {
    let secret = SecretScalar::<S>::random(&mut OsRng);
    let (shares, keys) = shamir::deal(&secret, 2, 3, &mut OsRng).unwrap();
    Keys {
        share: shares[0].clone(),
        key_set: keys,
        manager: Encoded::new(SecretScalar::<S>::random(&mut OsRng).public_point()),
        runner: k256::ecdsa::SigningKey::random(&mut OsRng),
    }
}

/// A node serving from `dir` (its replay journal and audit log).
fn fixture(dir: &Path, fail: AuditFail, k: &Keys) -> Fixture {
    let active = ActiveShare {
        epoch: 1,
        share: k.share.clone(),
        keys: k.key_set.clone(),
        transcript_hash: [1; 32],
    };
    let registry =
        StaticRegistry::default().with_runner(CHAIN, tkms_sdk::nox::wallet_address(&k.runner));
    let nonces = NonceJournal::open_cache(&dir.join("nonces.journal"), v1::now_secs()).unwrap();
    let service = NodeService::new(Arc::new(Epochs::in_memory(Some(active))), vec![k.manager])
        .with_registry(Arc::new(registry))
        .with_nonces(Arc::new(nonces));
    let audit = NodeAudit::open(dir, fail).unwrap();
    Fixture {
        node: AuditedNode::new(service, Some(Arc::new(audit))),
        share: k.share.clone(),
        manager: k.manager.bytes().as_slice().try_into().unwrap(),
        runner: k.runner.clone(),
    }
}

fn as_manager<T>(f: &Fixture, body: T) -> Request<T> {
    let mut request = Request::new(body);
    request.extensions_mut().insert(TlsPeer {
        key: f.manager,
        remote_addr: Some("127.0.0.1:4000".parse().unwrap()),
    });
    request
}

/// A re-encryption of `n` capsules signed by the runner, as the manager forwards it.
fn reencryption(f: &Fixture, n: usize) -> (pb::PartialReencryptionRequest, B256) {
    let capsules: Vec<Encoded<S>> = (0..n)
        .map(|_| Encoded::new(SecretScalar::<S>::random(&mut OsRng).public_point()))
        .collect();
    let (_, target) = v1::target_key();
    let request =
        v1::ReencryptV1::sign(&f.runner, CHAIN, target, capsules, v1::Freshness::new(60)).unwrap();
    let body = pb::PartialReencryptionRequest {
        epoch: 1,
        target: target.bytes().to_vec(),
        capsules: request
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
                    chain_id: CHAIN,
                    request_digest: request.digest().to_vec(),
                    nonce: request.freshness.nonce.to_vec(),
                    expires_at: request.freshness.expires_at,
                    signature: request.signature.clone(),
                },
            )),
        }),
    };
    (body, request.digest())
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn recover(entry: &serde_json::Map<String, serde_json::Value>) -> Address {
    let signed: B256 = entry["signed"].as_str().unwrap().parse().unwrap();
    let bytes = hex::decode(
        entry["signature"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
    )
    .unwrap();
    let signature = Signature::from_bytes_and_parity(&bytes[..64], bytes[64] == 28);
    tkms_sdk::ecrecover::recover_address(&signature, &signed).unwrap()
}

#[tokio::test]
async fn every_partial_asked_for_is_recorded_and_no_secret_is() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path(), AuditFail::Closed, &keys());
    // Served: three capsules.
    let (request, digest) = reencryption(&f, 3);
    let ids: Vec<Vec<u8>> = request
        .capsules
        .iter()
        .map(|c| c.request_id.clone())
        .collect();
    let partials = f
        .node
        .partial_reencryption(as_manager(&f, request.clone()))
        .await
        .unwrap()
        .into_inner()
        .partials;
    assert_eq!(partials.len(), 3);
    // Refused: the same request again (a replay), and a delegation batch without any
    // requester authorization.
    let err = f
        .node
        .partial_reencryption(as_manager(&f, request))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let k = Encoded::<S>::new(SecretScalar::<S>::random(&mut OsRng).public_point());
    let batch = pb::PartialDelegationBatchRequest {
        requests: (0..2u8)
            .map(|i| pb::PartialDelegationRequest {
                epoch: 1,
                request_id: vec![i; 32],
                ephemeral: k.bytes().to_vec(),
                authorization: None,
                target_rsa_spki: Vec::new(),
            })
            .collect(),
        aggregate_proof: false,
    };
    let results = f
        .node
        .partial_delegation_batch(as_manager(&f, batch))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(results.iter().all(|r| matches!(
        r.outcome,
        Some(pb::partial_delegation_result::Outcome::Error(_))
    )));

    let path = dir.path().join("audit.jsonl");
    let verified = audit::verify(std::fs::File::open(&path).unwrap()).unwrap();
    assert_eq!(verified.entries, 3 + 3 + 2);
    let entries: Vec<_> = audit::entries(std::fs::File::open(&path).unwrap())
        .map(Result::unwrap)
        .collect();
    let manager = format!("0x{}", hex::encode(f.manager));
    for (k, entry) in entries[..3].iter().enumerate() {
        assert_eq!(entry["op"], "partial_reencryption");
        assert_eq!(entry["result"], "ok");
        assert_eq!(entry["epoch"], 1);
        assert_eq!(entry["item"], k);
        assert_eq!(entry["manager"], manager.as_str());
        assert_eq!(entry["client"], "127.0.0.1");
        assert_eq!(entry["request"], format!("0x{}", hex::encode(&ids[k])));
        assert_eq!(entry["signed"], format!("{digest}"));
        assert_eq!(recover(entry), tkms_sdk::nox::wallet_address(&f.runner));
    }
    for entry in &entries[3..6] {
        assert_eq!(entry["result"], "Unauthenticated");
        assert!(entry["reason"].as_str().unwrap().starts_with("replayed: "));
    }
    for entry in &entries[6..] {
        assert_eq!(entry["op"], "partial_delegation");
        assert_eq!(entry["result"], "PermissionDenied");
    }

    // No secret: neither the share nor any partial, in bytes or hex.
    let raw = std::fs::read(&path).unwrap();
    let share = f.share.value().to_bytes();
    for secret in std::iter::once(share.to_vec()).chain(partials) {
        assert!(!find(&raw, &secret));
        assert!(!find(&raw, hex::encode(&secret).as_bytes()));
        assert!(!find(&raw, hex::encode_upper(&secret).as_bytes()));
    }
}

#[tokio::test]
async fn a_served_request_is_refused_as_replayed_after_the_node_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let k = keys();
    let f = fixture(dir.path(), AuditFail::Closed, &k);
    let (request, _) = reencryption(&f, 1);
    f.node
        .partial_reencryption(as_manager(&f, request.clone()))
        .await
        .unwrap();
    drop(f);
    // The same data directory: the journal and the audit log are read back.
    let f = fixture(dir.path(), AuditFail::Closed, &k);
    let err = f
        .node
        .partial_reencryption(as_manager(&f, request))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(v1::is_replay_refusal(err.message()), "{err:?}");
    // One chain across both runs.
    let verified = audit::verify(std::fs::File::open(dir.path().join("audit.jsonl")).unwrap());
    assert_eq!(verified.unwrap().entries, 2);
}

#[cfg(unix)]
#[tokio::test]
async fn a_partial_whose_entry_cannot_be_written_is_not_returned() {
    for (fail, served) in [(AuditFail::Closed, false), (AuditFail::Open, true)] {
        let dir = tempfile::tempdir().unwrap();
        // Every write to /dev/full fails (ENOSPC).
        std::os::unix::fs::symlink("/dev/full", dir.path().join("audit.jsonl")).unwrap();
        let f = fixture(dir.path(), fail, &keys());
        let (request, _) = reencryption(&f, 1);
        let answer = f.node.partial_reencryption(as_manager(&f, request)).await;
        match answer {
            Ok(_) => assert!(served, "{fail:?}: served without a record"),
            Err(e) => {
                assert!(!served, "{fail:?}: {e:?}");
                assert_eq!(e.code(), Code::Unavailable);
                assert!(e.message().contains("audit log"), "{e:?}");
            }
        }
    }
}

/// A batch answered under one aggregated proof (docs/PROTOCOL.md §5.1) passes the front door
/// like any other: one entry per item, the served ones marked with the kind of proof that
/// covers them, and no partial in the log.
#[tokio::test]
async fn an_aggregated_batch_is_recorded_item_by_item() {
    let dir = tempfile::tempdir().unwrap();
    let k = keys();
    // No registry: the node serves what its manager forwards.
    let service = NodeService::new(
        Arc::new(Epochs::in_memory(Some(ActiveShare {
            epoch: 1,
            share: k.share.clone(),
            keys: k.key_set.clone(),
            transcript_hash: [1; 32],
        }))),
        vec![k.manager],
    );
    let f = Fixture {
        node: AuditedNode::new(
            service,
            Some(Arc::new(
                NodeAudit::open(dir.path(), AuditFail::Closed).unwrap(),
            )),
        ),
        share: k.share.clone(),
        manager: k.manager.bytes().as_slice().try_into().unwrap(),
        runner: k.runner.clone(),
    };
    let batch = pb::PartialDelegationBatchRequest {
        requests: (0..3u8)
            .map(|i| pb::PartialDelegationRequest {
                epoch: if i == 1 { 7 } else { 1 },
                request_id: vec![i; 32],
                ephemeral: Encoded::<S>::new(SecretScalar::<S>::random(&mut OsRng).public_point())
                    .bytes()
                    .to_vec(),
                authorization: None,
                target_rsa_spki: Vec::new(),
            })
            .collect(),
        aggregate_proof: true,
    };
    let response = f
        .node
        .partial_delegation_batch(as_manager(&f, batch))
        .await
        .unwrap()
        .into_inner();
    assert!(!response.aggregate_proof.is_empty());
    let path = dir.path().join("audit.jsonl");
    assert_eq!(
        audit::verify(std::fs::File::open(&path).unwrap())
            .unwrap()
            .entries,
        3
    );
    let entries: Vec<_> = audit::entries(std::fs::File::open(&path).unwrap())
        .map(Result::unwrap)
        .collect();
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(entry["op"], "partial_delegation");
        assert_eq!(entry["item"], i);
        if i == 1 {
            assert_eq!(entry["result"], "FailedPrecondition");
            assert!(entry.get("proof").is_none());
        } else {
            assert_eq!(entry["result"], "ok");
            assert_eq!(entry["proof"], "aggregate");
        }
    }
    let raw = std::fs::read(&path).unwrap();
    for result in &response.results {
        if let Some(pb::partial_delegation_result::Outcome::Delegation(d)) = &result.outcome {
            assert!(!find(&raw, hex::encode(d).as_bytes()));
            assert!(!find(&raw, hex::encode(&d[1..33]).as_bytes()));
        }
    }
}
