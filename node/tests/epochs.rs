//! A node's key epochs through its gRPC service and its vault (docs/RELIABILITY.md "Epoch
//! handover"): a reshare's share is held beside the committed one and both are served; the
//! manager's signed commit erases the older share from memory and from the vault (across a
//! restart too); a node without a share of the committed epoch is retired and refuses to
//! serve; an uncommitted epoch can be rolled back, a committed one cannot; commits and aborts
//! need the manager's signature.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::sync::Arc;

use rand_core::OsRng;
use tkms_crypto::{
    delegation::PartialDelegation, shamir, suite::Encoded, KeyShare, PublicKeySet, Secp256k1,
    SecretScalar,
};
use tkms_node::{
    epochs::{ActiveShare, Epochs},
    service::NodeService,
    vault::{KdfParams, StaticPassword, Vault},
};
use tkms_proto::{
    node::v1::{self as pb, node_server::Node},
    tls::TlsPeer,
    SignedRequest,
};
use tonic::{Code, Request};

type S = Secp256k1;

/// `body` as it arrives over the manager's authenticated TLS connection.
fn as_manager<T>(manager: &SecretScalar<S>, body: T) -> Request<T> {
    let mut request = Request::new(body);
    let key: [u8; 33] = Encoded::<S>::new(manager.public_point())
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

fn share(epoch: u64, share: &KeyShare<S>, keys: &PublicKeySet<S>) -> ActiveShare {
    ActiveShare {
        epoch,
        share: share.clone(),
        keys: keys.clone(),
        transcript_hash: [u8::try_from(epoch).unwrap(); 32],
    }
}

fn delegation(epoch: u64) -> pb::PartialDelegationRequest {
    let k = Encoded::<S>::new(SecretScalar::<S>::random(&mut OsRng).public_point());
    pb::PartialDelegationRequest {
        epoch,
        request_id: b"r".to_vec(),
        ephemeral: k.bytes().to_vec(),
        authorization: None,
        target_rsa_spki: Vec::new(),
    }
}

/// Ask `service` for a partial of `epoch`; the node's refusal, if any.
async fn partial(service: &NodeService, manager: &SecretScalar<S>, epoch: u64) -> Option<String> {
    match service
        .partial_delegation(as_manager(manager, delegation(epoch)))
        .await
    {
        Ok(answer) => {
            let partial = PartialDelegation::<S>::from_bytes(&answer.into_inner().partial).unwrap();
            assert_eq!(partial.index().get(), 1);
            None
        }
        Err(status) => {
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            Some(status.message().to_string())
        }
    }
}

fn commit(manager: &SecretScalar<S>, epoch: u64) -> Request<pb::CommitEpochRequest> {
    let mut request = pb::CommitEpochRequest {
        epoch,
        transcript_hash: vec![u8::try_from(epoch).unwrap(); 32],
        manager: None,
    };
    request.sign(manager);
    as_manager(manager, request)
}

fn open(path: &std::path::Path) -> Arc<Vault> {
    Arc::new(
        Vault::open(
            path,
            &StaticPassword::new("epochs test password"),
            KdfParams::insecure_for_tests(),
        )
        .unwrap(),
    )
}

#[tokio::test]
async fn a_reshared_share_is_served_beside_the_old_until_the_commit_erases_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.redb");
    let secret = SecretScalar::<S>::random(&mut OsRng);
    let (old, old_keys) = shamir::deal(&secret, 2, 3, &mut OsRng).unwrap();
    let (new, new_keys) = shamir::deal(&secret, 3, 4, &mut OsRng).unwrap();
    let manager = SecretScalar::<S>::random(&mut OsRng);
    let managers = vec![Encoded::new(manager.public_point())];
    {
        let vault = open(&path);
        let epochs = Arc::new(Epochs::load(Arc::clone(&vault)).unwrap());
        epochs.begin_ceremony(1).unwrap();
        epochs.adopt(share(1, &old[0], &old_keys)).unwrap();
        let service = NodeService::new(Arc::clone(&epochs), managers.clone());
        service.commit_epoch(commit(&manager, 1)).await.unwrap();
        // The reshare to epoch 2: held beside epoch 1, both served.
        epochs.begin_ceremony(2).unwrap();
        assert!(
            epochs.begin_ceremony(2).is_err(),
            "an epoch number is never reused"
        );
        epochs.adopt(share(2, &new[0], &new_keys)).unwrap();
        assert_eq!(partial(&service, &manager, 1).await, None);
        assert_eq!(partial(&service, &manager, 2).await, None);
        let status = service
            .status(Request::new(pb::StatusRequest {}))
            .await
            .unwrap()
            .into_inner();
        let held: Vec<(u64, bool)> = status.held.iter().map(|h| (h.epoch, h.committed)).collect();
        assert_eq!(held, vec![(1, true), (2, false)]);
        assert_eq!(status.committed_epoch, 1);
        assert!(!status.retired);
        // A commit with another transcript, or unsigned, changes nothing.
        let mut wrong = pb::CommitEpochRequest {
            epoch: 2,
            transcript_hash: vec![9; 32],
            manager: None,
        };
        wrong.sign(&manager);
        let err = service
            .commit_epoch(as_manager(&manager, wrong))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let unsigned = pb::CommitEpochRequest {
            epoch: 2,
            transcript_hash: vec![2; 32],
            manager: None,
        };
        let err = service
            .commit_epoch(as_manager(&manager, unsigned))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        assert_eq!(vault.list_epochs().unwrap(), vec![1, 2]);
        // The commit: epoch 1 is erased, from the vault too.
        let answer = service
            .commit_epoch(commit(&manager, 2))
            .await
            .unwrap()
            .into_inner();
        assert!(answer.holds_share);
        assert_eq!(answer.erased, vec![1]);
        assert_eq!(vault.list_epochs().unwrap(), vec![2]);
        let refused = partial(&service, &manager, 1).await.unwrap();
        assert!(refused.contains("serves epoch 2, not 1"), "{refused}");
        assert_eq!(partial(&service, &manager, 2).await, None);
        // A committed epoch cannot be rolled back.
        let mut abort = pb::AbortEpochRequest {
            epoch: 2,
            manager: None,
        };
        abort.sign(&manager);
        let err = service
            .abort_epoch(as_manager(&manager, abort))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    }
    // After a restart: the same state.
    let vault = open(&path);
    let epochs = Arc::new(Epochs::load(vault).unwrap());
    let snapshot = epochs.snapshot();
    assert_eq!(snapshot.committed, 2);
    assert_eq!(snapshot.last_ceremony, 2);
    assert_eq!(
        snapshot.held.iter().map(|s| s.epoch).collect::<Vec<_>>(),
        vec![2]
    );
    assert!(epochs.begin_ceremony(2).is_err());
}

#[tokio::test]
async fn a_node_that_missed_the_reshare_is_retired_and_refuses_to_serve() {
    let secret = SecretScalar::<S>::random(&mut OsRng);
    let (old, old_keys) = shamir::deal(&secret, 2, 3, &mut OsRng).unwrap();
    let manager = SecretScalar::<S>::random(&mut OsRng);
    let epochs = Arc::new(Epochs::in_memory(Some(share(1, &old[0], &old_keys))));
    let service = NodeService::new(
        Arc::clone(&epochs),
        vec![Encoded::new(manager.public_point())],
    );
    assert_eq!(partial(&service, &manager, 1).await, None);
    // Epoch 2 was committed without this node: told so, it erases epoch 1 and retires.
    let answer = service
        .commit_epoch(commit(&manager, 2))
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.holds_share);
    assert_eq!(answer.erased, vec![1]);
    let refused = partial(&service, &manager, 1).await.unwrap();
    assert!(refused.contains("retired"), "{refused}");
    let refused = partial(&service, &manager, 2).await.unwrap();
    assert!(refused.contains("retired"), "{refused}");
    let status = service
        .status(Request::new(pb::StatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(status.retired && status.held.is_empty());
    assert_eq!(status.committed_epoch, 2);
}

#[tokio::test]
async fn an_uncommitted_epoch_is_rolled_back_and_the_old_one_stays() {
    let secret = SecretScalar::<S>::random(&mut OsRng);
    let (old, old_keys) = shamir::deal(&secret, 2, 3, &mut OsRng).unwrap();
    let (new, new_keys) = shamir::deal(&secret, 2, 3, &mut OsRng).unwrap();
    let manager = SecretScalar::<S>::random(&mut OsRng);
    let epochs = Arc::new(Epochs::in_memory(Some(share(1, &old[0], &old_keys))));
    let service = NodeService::new(
        Arc::clone(&epochs),
        vec![Encoded::new(manager.public_point())],
    );
    epochs.begin_ceremony(2).unwrap();
    epochs.adopt(share(2, &new[0], &new_keys)).unwrap();
    let mut abort = pb::AbortEpochRequest {
        epoch: 2,
        manager: None,
    };
    abort.sign(&manager);
    let answer = service
        .abort_epoch(as_manager(&manager, abort))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.erased);
    assert_eq!(partial(&service, &manager, 1).await, None);
    let refused = partial(&service, &manager, 2).await.unwrap();
    assert!(refused.contains("serves epoch 1, not 2"), "{refused}");
    // The number is not reused by the next ceremony.
    assert!(epochs.begin_ceremony(2).is_err());
    epochs.begin_ceremony(3).unwrap();
}
