//! A ceremony still running at a node when the manager starts a newer one: the node was cut
//! off from the older one's end, and the manager's word that its epoch was committed has not
//! reached it (docs/RELIABILITY.md, "A member cut off in the middle of a reshare"). The older
//! one is abandoned and the newer one starts, instead of the node answering "another ceremony
//! is in progress on this node" and being dropped from the new committee. A start of the
//! same epoch, or an older one, or of one this node is not part of, is still refused while
//! one runs, and leaves it running.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::{sync::Arc, time::Duration};

use libp2p::{identity::Keypair, Multiaddr, PeerId};
use rand_core::OsRng;
use tkms_crypto::{suite::Encoded, NodeIndex, Secp256k1, SecretScalar};
use tkms_node::{
    ceremony::{Ceremonies, CeremonyError, Member, Spec},
    epochs::Epochs,
    p2p::P2p,
    vault::{KdfParams, StaticPassword, Vault},
};
use tokio::sync::{mpsc, oneshot};

type S = Secp256k1;

/// A DKG of `epoch` between this node (1) and a peer that never answers (2): it runs until
/// its deadline (minutes with these rounds) unless it is abandoned.
fn dkg(epoch: u64, me: &Member, silent: &Member) -> Spec {
    Spec {
        previous: None,
        epoch,
        threshold: 2,
        dealers: vec![me.clone(), silent.clone()],
        recipients: vec![me.clone(), silent.clone()],
        round_timeout: Duration::from_secs(30),
    }
}

async fn wait_until(what: &str, check: impl Fn() -> bool) {
    let since = tokio::time::Instant::now();
    while !check() {
        assert!(since.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_of_a_newer_epoch_abandons_the_ceremony_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(
        Vault::open(
            dir.path().join("vault.redb"),
            &StaticPassword::new("ceremony test password"),
            KdfParams::insecure_for_tests(),
        )
        .unwrap(),
    );
    let epochs = Arc::new(Epochs::load(vault).unwrap());
    let (inbox, _incoming) = mpsc::channel(16);
    let (_stop, shutdown) = oneshot::channel();
    let p2p = P2p::start(
        Keypair::generate_ed25519(),
        "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        None,
        inbox,
        shutdown,
    )
    .await
    .unwrap();
    let node_key = SecretScalar::<S>::random(&mut OsRng);
    let me = Member {
        index: NodeIndex::new(1).unwrap(),
        node_key: Encoded::new(node_key.public_point()),
        peer: p2p.peer_id(),
        addr: p2p.address(),
    };
    let silent = Member {
        index: NodeIndex::new(2).unwrap(),
        node_key: Encoded::new(SecretScalar::<S>::random(&mut OsRng).public_point()),
        peer: PeerId::random(),
        // Nothing listens there: every message to it fails, and it sends nothing.
        addr: "/ip4/127.0.0.1/tcp/9".parse::<Multiaddr>().unwrap(),
    };
    let ceremonies = Arc::new(Ceremonies::new(p2p, node_key, epochs));

    let older = tokio::spawn({
        let (ceremonies, spec) = (Arc::clone(&ceremonies), dkg(3, &me, &silent));
        async move { ceremonies.run(spec).await }
    });
    wait_until("the first ceremony starts", || {
        ceremonies.in_progress().is_some()
    })
    .await;

    // The same epoch, or an older one, is refused at once while it runs; so is a newer one
    // this node is not part of.
    for epoch in [2, 3] {
        let refused = ceremonies.run(dkg(epoch, &me, &silent)).await;
        assert!(
            matches!(&refused, Err(CeremonyError::Precondition(m)) if m.contains("another ceremony")),
            "epoch {epoch}: {refused:?}"
        );
    }
    let stranger = Member {
        node_key: Encoded::new(SecretScalar::<S>::random(&mut OsRng).public_point()),
        ..me.clone()
    };
    // Until the running ceremony has begun its epoch (a vault write after `in_progress` shows
    // it), any start is refused as busy; after, this one is checked and refused on its own.
    let since = tokio::time::Instant::now();
    let refused = loop {
        let refused = ceremonies.run(dkg(5, &stranger, &silent)).await;
        match &refused {
            Err(CeremonyError::Precondition(m))
                if m.contains("another ceremony") && since.elapsed() < Duration::from_secs(10) =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => break refused,
        }
    };
    assert!(
        matches!(&refused, Err(CeremonyError::Precondition(m)) if m.contains("not in the ceremony's committee")),
        "{refused:?}"
    );
    // Longer than a ceremony's check interval (500 ms): a refused start left it alone.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !older.is_finished(),
        "a refused start leaves the running one alone"
    );

    // A newer one: the running one gives up, and the newer one takes its place.
    let newer = tokio::spawn({
        let (ceremonies, spec) = (Arc::clone(&ceremonies), dkg(4, &me, &silent));
        async move { ceremonies.run(spec).await }
    });
    let ended = tokio::time::timeout(Duration::from_secs(5), older)
        .await
        .expect("the older ceremony is abandoned within a few checks")
        .unwrap();
    assert!(
        matches!(&ended, Err(CeremonyError::Failed(m)) if m.contains("newer ceremony")),
        "{ended:?}"
    );
    wait_until("the newer ceremony starts", || {
        ceremonies.in_progress().is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !newer.is_finished(),
        "the newer ceremony runs (it was not refused as busy): {:?}",
        newer.await
    );
}
