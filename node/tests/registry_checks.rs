//! The node's own checks against its registry: it serves only the share of the epoch the
//! registry publishes, and takes part only in ceremonies whose members the registry lists
//! with those node keys (so a compromised manager can neither serve a stale key nor reshare
//! the key to nodes it controls).

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::sync::{Arc, Mutex};

use alloy_primitives::{Address, Bytes, B256};
use rand_core::OsRng;
use tkms_crypto::{
    aggregate::{AggregateProof, BatchPartials},
    delegation::{DelegationRequest, PartialDelegation},
    shamir,
    suite::Encoded,
    Secp256k1, SecretScalar, Suite,
};
use tkms_node::{
    epochs::{ActiveShare, Epochs},
    service::NodeService,
};
use tkms_proto::{
    node::v1::{self as pb, node_server::Node},
    tls::TlsPeer,
    SignedRequest,
};
use tkms_registry::{
    access::{public_shares_hash, Published, Registered, Registry},
    EpochPublication,
};
use tkms_sdk::v1;
use tonic::{Code, Request};

type S = Secp256k1;

/// A registered node: index and node key.
type NodeKey = (u16, Vec<u8>);

/// A registry whose answers the test sets.
#[derive(Default)]
struct Fake {
    published: Mutex<Option<Published>>,
    nodes: Mutex<Option<Vec<NodeKey>>>,
    runner: Mutex<Option<Address>>,
}

const CHAIN: u64 = 31337;

impl Registry for Fake {
    fn gateway(&self, _chain_id: u64) -> Option<Address> {
        None
    }
    fn is_runner(&self, chain_id: u64, account: Address) -> bool {
        chain_id == CHAIN && Some(account) == *self.runner.lock().unwrap()
    }
    fn published_epoch(&self) -> Published {
        self.published
            .lock()
            .unwrap()
            .clone()
            .unwrap_or(Published::NotTracked)
    }
    fn registered_node_key(&self, index: u16) -> Registered {
        match &*self.nodes.lock().unwrap() {
            None => Registered::NotTracked,
            Some(nodes) => nodes
                .iter()
                .find(|(i, _)| *i == index)
                .map_or(Registered::Absent, |(_, k)| Registered::Key(k.clone())),
        }
    }
}

struct Fixture {
    service: NodeService,
    epochs: Arc<Epochs>,
    secret: SecretScalar<S>,
    registry: Arc<Fake>,
    manager: SecretScalar<S>,
    publication: EpochPublication,
}

fn fixture() -> Fixture {
    let secret = SecretScalar::<S>::random(&mut OsRng);
    let (shares, keys) = shamir::deal(&secret, 2, 3, &mut OsRng).unwrap();
    let shares_enc: Vec<(u16, [u8; 33])> = keys
        .public_shares()
        .map(|(i, p)| (i.get(), S::encode_point(p)))
        .collect();
    let publication = EpochPublication {
        epoch: 1,
        t: 2,
        n: 3,
        public_key: Bytes::copy_from_slice(keys.public_key_encoded().bytes()),
        public_shares_hash: public_shares_hash(shares_enc.iter().map(|(i, p)| (*i, &p[..]))),
        transcript_hash: B256::repeat_byte(1),
    };
    let active = ActiveShare {
        epoch: 1,
        share: shares[0].clone(),
        keys,
        transcript_hash: [1; 32],
    };
    let manager = SecretScalar::<S>::random(&mut OsRng);
    let registry = Arc::new(Fake::default());
    let epochs = Arc::new(Epochs::in_memory(Some(active)));
    let service = NodeService::new(
        Arc::clone(&epochs),
        vec![Encoded::new(manager.public_point())],
    )
    .with_registry(Arc::clone(&registry) as Arc<dyn Registry>);
    Fixture {
        service,
        epochs,
        secret,
        registry,
        manager,
        publication,
    }
}

/// A re-encryption request by an authorized runner, as the manager signs it.
fn reencryption(f: &Fixture) -> pb::PartialReencryptionRequest {
    let runner = k256::ecdsa::SigningKey::random(&mut OsRng);
    *f.registry.runner.lock().unwrap() = Some(tkms_sdk::nox::wallet_address(&runner));
    let k = Encoded::<S>::new(SecretScalar::<S>::random(&mut OsRng).public_point());
    let (_, target) = v1::target_key();
    let request =
        v1::ReencryptV1::sign(&runner, CHAIN, target, vec![k], v1::Freshness::new(60)).unwrap();
    pb::PartialReencryptionRequest {
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
    }
}

/// `body` as it arrives over the manager's authenticated TLS connection.
fn as_manager<T>(f: &Fixture, body: T) -> Request<T> {
    let mut request = Request::new(body);
    let key: [u8; 33] = Encoded::<S>::new(f.manager.public_point())
        .bytes()
        .as_slice()
        .try_into()
        .unwrap();
    request.extensions_mut().insert(TlsPeer {
        key,
        remote_addr: None,
    });
    request
}

#[tokio::test]
async fn a_node_serves_only_the_published_epoch() {
    let f = fixture();
    let mut other = f.publication.clone();
    other.public_shares_hash = B256::repeat_byte(9);
    let mut later = f.publication.clone();
    later.epoch = 2;
    let mut other_key = f.publication.clone();
    other_key.public_key = Bytes::copy_from_slice(&S::encode_point(
        &SecretScalar::<S>::random(&mut OsRng).public_point(),
    ));
    for published in [
        Published::Nothing,
        Published::Unknown,
        Published::Epoch(other),
        Published::Epoch(other_key),
    ] {
        *f.registry.published.lock().unwrap() = Some(published.clone());
        let err = f
            .service
            .partial_reencryption(as_manager(&f, reencryption(&f)))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::FailedPrecondition,
            "{published:?}: {err:?}"
        );
    }
    // A later epoch of the same key is published that this node took no part in (not its
    // committee's, e.g. a wrong publication by the manager's wallet): refused.
    *f.registry.published.lock().unwrap() = Some(Published::Epoch(later.clone()));
    let err = f
        .service
        .partial_reencryption(as_manager(&f, reencryption(&f)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("took no part"), "{err:?}");
    // Once this node took part in the reshare to epoch 2 (a leaver that dealt, or a member
    // whose new share is held beside): its share of epoch 1 is still served until the
    // manager's commit erases it, so that requests in flight across the switch succeed.
    f.epochs.begin_ceremony(2).unwrap();
    let answer = f
        .service
        .partial_reencryption(as_manager(&f, reencryption(&f)))
        .await
        .unwrap();
    assert_eq!(answer.into_inner().partials.len(), 1);
    // This node holds its share of epoch 2 beside epoch 1: a publication of epoch 2 must be
    // that share's (here its public shares differ from the published ones): refused, and
    // served again once the publication is the held epoch's.
    let (new_shares, new_keys) = shamir::deal(&f.secret, 2, 3, &mut OsRng).unwrap();
    f.epochs
        .adopt(ActiveShare {
            epoch: 2,
            share: new_shares[0].clone(),
            keys: new_keys.clone(),
            transcript_hash: [2; 32],
        })
        .unwrap();
    let err = f
        .service
        .partial_reencryption(as_manager(&f, reencryption(&f)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let new_enc: Vec<(u16, [u8; 33])> = new_keys
        .public_shares()
        .map(|(i, p)| (i.get(), S::encode_point(p)))
        .collect();
    let mut held = later.clone();
    held.public_shares_hash = public_shares_hash(new_enc.iter().map(|(i, p)| (*i, &p[..])));
    *f.registry.published.lock().unwrap() = Some(Published::Epoch(held));
    let answer = f
        .service
        .partial_reencryption(as_manager(&f, reencryption(&f)))
        .await
        .unwrap();
    assert_eq!(answer.into_inner().partials.len(), 1);
    // The published epoch matches: served.
    *f.registry.published.lock().unwrap() = Some(Published::Epoch(f.publication.clone()));
    let answer = f
        .service
        .partial_reencryption(as_manager(&f, reencryption(&f)))
        .await
        .unwrap();
    assert_eq!(answer.into_inner().partials.len(), 1);
    // The same signed request again: a replay, refused by the node itself.
    let request = reencryption(&f);
    f.service
        .partial_reencryption(as_manager(&f, request.clone()))
        .await
        .unwrap();
    let err = f
        .service
        .partial_reencryption(as_manager(&f, request))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}

fn member(index: u32, key: &SecretScalar<S>) -> pb::CommitteeMember {
    pb::CommitteeMember {
        index,
        node_key: S::encode_point(&key.public_point()).to_vec(),
        p2p_addr: "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWPWb72M7batiyyDeK2qSivL4bbHLELRFGcoFTfHED8kx8"
            .into(),
    }
}

#[tokio::test]
async fn a_node_joins_only_ceremonies_among_registered_nodes() {
    let f = fixture();
    let keys: Vec<SecretScalar<S>> = (0..4).map(|_| SecretScalar::random(&mut OsRng)).collect();
    *f.registry.nodes.lock().unwrap() = Some(
        keys[..3]
            .iter()
            .enumerate()
            .map(|(i, k)| {
                (
                    u16::try_from(i + 1).unwrap(),
                    S::encode_point(&k.public_point()).to_vec(),
                )
            })
            .collect(),
    );
    let request = |members: Vec<pb::CommitteeMember>| {
        let mut r = pb::StartCeremonyRequest {
            kind: pb::CeremonyKind::Reshare as i32,
            epoch: 2,
            threshold: 2,
            dealers: members.clone(),
            recipients: members,
            manager: None,
            previous_commitment: Vec::new(),
            previous_epoch: 1,
            round_timeout_ms: 0,
        };
        r.sign(&f.manager);
        r
    };
    // A member whose key is not the registered one, and one not registered at all.
    for members in [
        vec![member(1, &keys[0]), member(2, &keys[3])],
        vec![member(1, &keys[0]), member(4, &keys[3])],
    ] {
        let err = f
            .service
            .start_ceremony(as_manager(&f, request(members)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    // Registered members pass this check (and then fail for want of a ceremony channel).
    let err = f
        .service
        .start_ceremony(as_manager(
            &f,
            request(vec![member(1, &keys[0]), member(2, &keys[1])]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
}

/// Partial requests are authenticated by the connection: none arriving outside an
/// authenticated TLS connection, or on one whose key is not an accepted manager, is served.
#[tokio::test]
async fn partials_need_a_connection_authenticated_as_a_manager() {
    let f = fixture();
    let err = f
        .service
        .partial_reencryption(Request::new(reencryption(&f)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let mut request = Request::new(reencryption(&f));
    let stranger: [u8; 33] =
        Encoded::<S>::new(SecretScalar::<S>::random(&mut OsRng).public_point())
            .bytes()
            .as_slice()
            .try_into()
            .unwrap();
    request.extensions_mut().insert(TlsPeer {
        key: stranger,
        remote_addr: None,
    });
    let err = f.service.partial_reencryption(request).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}

fn delegation_item(epoch: u64, id: &[u8], ephemeral: Vec<u8>) -> pb::PartialDelegationRequest {
    pb::PartialDelegationRequest {
        epoch,
        request_id: id.to_vec(),
        ephemeral,
        authorization: None,
        target_rsa_spki: Vec::new(),
    }
}

/// A batch of delegations: every item is checked and answered on its own (a bad item is
/// refused with the status the single call would give, the others are served), and the batch
/// itself is bounded and needs the manager's connection.
#[tokio::test]
async fn a_delegation_batch_answers_each_item_on_its_own() {
    let f = fixture();
    *f.registry.published.lock().unwrap() = Some(Published::Epoch(f.publication.clone()));
    let k = Encoded::<S>::new(SecretScalar::<S>::random(&mut OsRng).public_point());
    let good = || delegation_item(1, b"r", k.bytes().to_vec());
    let call = |requests: Vec<pb::PartialDelegationRequest>| {
        f.service.partial_delegation_batch(as_manager(
            &f,
            pb::PartialDelegationBatchRequest {
                requests,
                aggregate_proof: false,
            },
        ))
    };
    let mut encrypted = good();
    encrypted.target_rsa_spki = vec![0x30];
    let batch = vec![
        good(),
        delegation_item(1, b"r", vec![5; 33]),
        delegation_item(1, &[7; 65], k.bytes().to_vec()),
        encrypted,
    ];
    let results = call(batch).await.unwrap().into_inner().results;
    // With a registry, every item needs its requester's authorization.
    let codes: Vec<_> = results
        .iter()
        .map(|r| match &r.outcome {
            Some(pb::partial_delegation_result::Outcome::Error(e)) => Code::from(e.code),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        [
            Code::PermissionDenied,
            Code::InvalidArgument,
            Code::InvalidArgument,
            Code::InvalidArgument
        ]
    );
    // Bounds, and the manager's connection.
    assert_eq!(
        call(Vec::new()).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let err = call(vec![good(); 257]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let request = Request::new(pb::PartialDelegationBatchRequest {
        requests: vec![good()],
        aggregate_proof: false,
    });
    let err = f
        .service
        .partial_delegation_batch(request)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // Without a registry the node trusts the manager's check: good items are served, each
    // with a partial that verifies for its own request; a wrong epoch is refused alone.
    let secret = SecretScalar::<S>::random(&mut OsRng);
    let (shares, keys) = shamir::deal(&secret, 2, 3, &mut OsRng).unwrap();
    let plain = NodeService::new(
        Arc::new(Epochs::in_memory(Some(ActiveShare {
            epoch: 1,
            share: shares[1].clone(),
            keys: keys.clone(),
            transcript_hash: [1; 32],
        }))),
        vec![Encoded::new(f.manager.public_point())],
    );
    let batch = vec![
        delegation_item(1, b"a", k.bytes().to_vec()),
        delegation_item(2, b"b", k.bytes().to_vec()),
        delegation_item(1, b"c", k.bytes().to_vec()),
    ];
    let results = plain
        .partial_delegation_batch(as_manager(
            &f,
            pb::PartialDelegationBatchRequest {
                requests: batch,
                aggregate_proof: false,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 3);
    for (result, id) in [(&results[0], b"a"), (&results[2], b"c")] {
        let Some(pb::partial_delegation_result::Outcome::Partial(bytes)) = &result.outcome else {
            panic!("{result:?}")
        };
        let partial = PartialDelegation::<S>::from_bytes(bytes).unwrap();
        partial
            .verify(&keys, &DelegationRequest::with_encoded(1, id.to_vec(), k))
            .unwrap();
    }
    let Some(pb::partial_delegation_result::Outcome::Error(e)) = &results[1].outcome else {
        panic!("{:?}", results[1])
    };
    assert_eq!(Code::from(e.code), Code::FailedPrecondition, "{e:?}");
}

/// Asked for one aggregated proof (docs/PROTOCOL.md §5.1), the node answers every served item
/// with its `D_i` alone and one proof that covers exactly those, in request order; a refused
/// item takes no part. Not asked, it answers as the earlier version did (one proof per item).
#[tokio::test]
async fn a_delegation_batch_asked_for_an_aggregate_proves_its_answered_items_at_once() {
    let f = fixture();
    let secret = SecretScalar::<S>::random(&mut OsRng);
    let (shares, keys) = shamir::deal(&secret, 2, 3, &mut OsRng).unwrap();
    let plain = NodeService::new(
        Arc::new(Epochs::in_memory(Some(ActiveShare {
            epoch: 1,
            share: shares[2].clone(),
            keys: keys.clone(),
            transcript_hash: [1; 32],
        }))),
        vec![Encoded::new(f.manager.public_point())],
    );
    let ks: Vec<_> = (0..5)
        .map(|_| Encoded::<S>::new(SecretScalar::<S>::random(&mut OsRng).public_point()))
        .collect();
    let mut batch: Vec<_> = ks
        .iter()
        .enumerate()
        .map(|(j, k)| delegation_item(1, &[u8::try_from(j).unwrap()], k.bytes().to_vec()))
        .collect();
    batch[1].epoch = 2;
    batch[3].ephemeral = vec![5; 33];
    let ask = |aggregate_proof| {
        plain.partial_delegation_batch(as_manager(
            &f,
            pb::PartialDelegationBatchRequest {
                requests: batch.clone(),
                aggregate_proof,
            },
        ))
    };
    let response = ask(true).await.unwrap().into_inner();
    let mut answered = Vec::new();
    let mut partials = Vec::new();
    for (j, result) in response.results.iter().enumerate() {
        match &result.outcome {
            Some(pb::partial_delegation_result::Outcome::Delegation(bytes)) => {
                assert_eq!(bytes.len(), 65, "uncompressed");
                partials.push(Encoded::<S>::from_uncompressed(bytes).unwrap());
                answered.push(DelegationRequest::with_encoded(
                    1,
                    vec![u8::try_from(j).unwrap()],
                    ks[j],
                ));
            }
            Some(pb::partial_delegation_result::Outcome::Error(_)) => {
                assert!(j == 1 || j == 3, "item {j} refused");
            }
            other => panic!("item {j}: {other:?}"),
        }
    }
    assert_eq!(answered.len(), 3);
    let proof = AggregateProof::<S>::from_bytes(&response.aggregate_proof).unwrap();
    assert_eq!(proof.index(), shares[2].index());
    let requests: Vec<_> = answered.iter().collect();
    let verified = BatchPartials::new(proof, partials.clone())
        .verify(&keys, &requests, &mut OsRng)
        .unwrap();
    assert_eq!(verified.len(), 3);
    // The proof covers these requests only: not one left out, not another order.
    assert!(BatchPartials::new(proof, partials[..2].to_vec())
        .verify(&keys, &requests[..2], &mut OsRng)
        .is_err());

    // Not asked: per-item proofs, no aggregate.
    let response = ask(false).await.unwrap().into_inner();
    assert!(response.aggregate_proof.is_empty());
    assert!(matches!(
        response.results[0].outcome,
        Some(pb::partial_delegation_result::Outcome::Partial(_))
    ));
}
