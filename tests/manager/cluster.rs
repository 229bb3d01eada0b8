//! The manager's fan-out against real node gRPC servers on loopback sockets: delegation and
//! re-encryption succeed with up to `n - t` nodes down or lying, name the culprits, and fail
//! fast and clearly with more down.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tkms_crypto::{ecies, shamir, suite::Encoded, NodeIndex, SecretScalar, SharedSecret};
use tkms_manager::cluster::{
    Batching, Cluster, ClusterError, DelegationProofs, Fanout, Hedge, NodeEndpoint, NodeFailure,
    Served,
};

mod common;

use common::{encrypt, start, start_versions, start_with, Version, S};

#[tokio::test]
async fn delegation_through_real_sockets_matches_the_full_key() {
    let tc = start(3, 5, &[], 1).await;
    let cluster = tc.cluster(Duration::from_secs(2));
    let ct = encrypt(&tc.keys, b"hello through the cluster");
    let served = cluster
        .delegate(Encoded::new(*ct.ephemeral()), b"req-1".to_vec(), None)
        .await
        .unwrap();
    assert!(served.failures.is_empty(), "{:?}", served.failures);
    let direct = ecies::shared_secret::<S>(&(*ct.ephemeral() * tc.sk.expose())).unwrap();
    assert_eq!(served.value.as_bytes(), direct.as_bytes());
    assert_eq!(
        &*ecies::open_with_shared_secret(&served.value, &ct).unwrap(),
        b"hello through the cluster"
    );
}

#[tokio::test]
async fn n_minus_t_nodes_down_still_serves_and_one_more_fails_fast() {
    let tc = start(3, 5, &[], 2).await;
    tc.kill(1);
    tc.kill(4);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cluster = tc.cluster(Duration::from_millis(500));
    let ct = encrypt(&tc.keys, b"still served");
    let served = cluster
        .delegate(Encoded::new(*ct.ephemeral()), b"r".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(
        &*ecies::open_with_shared_secret(&served.value, &ct).unwrap(),
        b"still served"
    );

    // Aborting a server stops new connections; a fresh cluster view (new connections, as
    // after a manager restart) sees node 5 down. Process-level kills are in the e2e tests.
    tc.kill(5);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let timeout = Duration::from_millis(500);
    let cluster = tc.cluster(timeout);
    // Cold (TLS handshakes with the live nodes first): the documented bound is the per-node
    // timeout, plus a margin for a loaded 2-core CI machine.
    let started = Instant::now();
    let err = cluster
        .delegate(Encoded::new(*ct.ephemeral()), b"r".to_vec(), None)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < timeout + MARGIN, "cold: took {took:?}");
    assert_three_down(err);
    // Warm (connections to the live nodes established, as in a running manager): the issue's
    // requirement, with n - t + 1 nodes down a clear 503 in under a second.
    let started = Instant::now();
    let err = cluster
        .delegate(Encoded::new(*ct.ephemeral()), b"r".to_vec(), None)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "warm: took {took:?}");
    assert_three_down(err);
}

/// Margin over a configured node timeout for a bound on a loaded 2-core CI machine.
const MARGIN: Duration = Duration::from_millis(1_500);

/// The cluster of 5 with `t = 3` is unavailable, and names nodes 1, 4 and 5.
fn assert_three_down(err: ClusterError) {
    match err {
        // The request fails as soon as three nodes failed, whether or not the partials of the
        // two live ones were checked by then.
        ClusterError::Unavailable {
            threshold: 3,
            verified: 0..=2,
            failures,
        } => {
            let down: Vec<u16> = failures.iter().map(|(i, _)| i.get()).collect();
            assert_eq!(down.len(), 3, "{failures:?}");
            for i in [1, 4, 5] {
                assert!(down.contains(&i), "{failures:?}");
            }
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn lying_nodes_are_named_and_change_nothing() {
    let tc = start(3, 5, &[2, 5], 3).await;
    let cluster = tc.cluster(Duration::from_secs(2));
    let ct = encrypt(&tc.keys, b"liars cannot change this");
    // Several requests: the liars answer at various positions among the first t.
    for r in 0..4u8 {
        let served = cluster
            .delegate(Encoded::new(*ct.ephemeral()), vec![r], None)
            .await
            .unwrap();
        assert_eq!(
            &*ecies::open_with_shared_secret(&served.value, &ct).unwrap(),
            b"liars cannot change this"
        );
        for (index, failure) in &served.failures {
            assert!(
                [2, 5].contains(&index.get()),
                "honest node {index} blamed: {failure}"
            );
            assert_eq!(*failure, NodeFailure::InvalidProof);
        }
    }
    // Re-encryption too: a batch of two capsules to a target key.
    let target = SecretScalar::<S>::random(&mut rand::rngs::OsRng);
    let other = encrypt(&tc.keys, b"second capsule");
    let capsules = vec![
        (b"c1".to_vec(), Encoded::new(*ct.ephemeral())),
        (b"c2".to_vec(), Encoded::new(*other.ephemeral())),
    ];
    let served = cluster
        .reencrypt(Encoded::new(target.public_point()), capsules, None)
        .await
        .unwrap();
    assert_eq!(
        &*served.value.capsules[0].decrypt(&target, &ct).unwrap(),
        b"liars cannot change this"
    );
    assert_eq!(
        &*served.value.capsules[1].decrypt(&target, &other).unwrap(),
        b"second capsule"
    );
    for (index, _) in &served.failures {
        assert!([2, 5].contains(&index.get()));
    }
}

#[tokio::test]
async fn nodes_refuse_connections_not_authenticated_as_an_accepted_manager() {
    let tc = start(2, 3, &[], 4).await;
    let impostor = SecretScalar::<S>::random(&mut rand::rngs::OsRng);
    let cluster = Cluster::new(
        &tc.endpoints,
        tc.keys.clone(),
        1,
        &impostor,
        Duration::from_secs(2),
    )
    .unwrap();
    let ct = encrypt(&tc.keys, b"x");
    let err = cluster
        .delegate(Encoded::new(*ct.ephemeral()), b"r".to_vec(), None)
        .await
        .unwrap_err();
    let ClusterError::Unavailable { failures, .. } = err else {
        panic!("{err:?}")
    };
    // Unavailable as soon as n - t + 1 = 2 nodes refused; each one named says why.
    assert!((2..=3).contains(&failures.len()), "{failures:?}");
    for (_, failure) in failures {
        assert_eq!(
            failure,
            NodeFailure::Refused("the connection's key is not an accepted manager".into())
        );
    }
    // A wrong epoch is refused by every node with a clear reason.
    let stale = Cluster::new(
        &tc.endpoints,
        tc.keys.clone(),
        7,
        &tc.manager,
        Duration::from_secs(2),
    )
    .unwrap();
    let err = stale
        .delegate(Encoded::new(*ct.ephemeral()), b"r".to_vec(), None)
        .await
        .unwrap_err();
    let ClusterError::Unavailable { failures, .. } = err else {
        panic!("{err:?}")
    };
    assert!(failures
        .iter()
        .all(|(_, f)| *f == NodeFailure::Refused("this node serves epoch 1, not 7".into())));
}

#[test]
fn unknown_nodes_are_refused_at_setup() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let sk = SecretScalar::<S>::random(&mut rng);
    let (_, keys) = shamir::deal(&sk, 2, 3, &mut rng).unwrap();
    let endpoints = [NodeEndpoint {
        index: NodeIndex::new(9).unwrap(),
        url: "http://127.0.0.1:1".into(),
        key: None,
    }];
    let err = Cluster::new(&endpoints, keys, 1, &sk, Duration::from_secs(1))
        .err()
        .unwrap();
    assert_eq!(
        err,
        ClusterError::Invalid("node 9 is not in the key set".into())
    );
}

/// A hedged fan-out asks only `t` nodes, in turn, and replaces a liar or a dead node at once
/// with the next one: every request is served, the culprit named, and the load rotates.
///
/// "At once" is checked as "well before the node timeout": a replacement that waited for the
/// timeout would take all of it, so each request must take less than half. (Timeout plus a
/// margin would not tell the two apart; the timeout is long instead, so that half of it is a
/// generous bound on a loaded CI machine.)
#[tokio::test]
async fn hedged_fanout_replaces_liars_and_dead_nodes_and_rotates() {
    let tc = start(3, 5, &[2], 4).await;
    tc.kill(4);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let timeout = Duration::from_secs(5);
    let cluster = tc.cluster(timeout).with_fanout(Fanout::Hedged {
        extra: 0,
        // Longer than the test: any extra node asked here was asked because one failed.
        hedge: Hedge::After(Duration::from_secs(30)),
    });
    let ct = encrypt(&tc.keys, b"hedged");
    let mut blamed = std::collections::BTreeSet::new();
    for r in 0..5u8 {
        let served = opened_within(&cluster, &ct, r, timeout / 2, b"hedged", "hedged").await;
        for (index, failure) in &served.failures {
            match index.get() {
                2 => assert_eq!(*failure, NodeFailure::InvalidProof),
                4 => assert!(matches!(failure, NodeFailure::Unreachable(_))),
                other => panic!("honest node {other} blamed: {failure}"),
            }
            blamed.insert(index.get());
        }
    }
    // Five requests starting at five different nodes meet both culprits.
    assert_eq!(blamed, [2, 4].into());
    let target = SecretScalar::<S>::random(&mut rand::rngs::OsRng);
    let served = cluster
        .reencrypt(
            Encoded::new(target.public_point()),
            vec![(b"c".to_vec(), Encoded::new(*ct.ephemeral()))],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        &*served.value.capsules[0].decrypt(&target, &ct).unwrap(),
        b"hedged"
    );
}

/// Delegation `r` of `ct`'s key, served in less than `bound` and opening `ct` to `plain`;
/// `label` names the case in a failure.
async fn opened_within(
    cluster: &Cluster,
    ct: &ecies::Ciphertext<S>,
    r: u8,
    bound: Duration,
    plain: &[u8],
    label: &str,
) -> Served<SharedSecret> {
    let started = Instant::now();
    let served = cluster
        .delegate(Encoded::new(*ct.ephemeral()), vec![r], None)
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(took < bound, "request {r} took {took:?}, {label}");
    assert_eq!(
        &*ecies::open_with_shared_secret(&served.value, ct).unwrap(),
        plain
    );
    served
}

/// A slow node (its server stopped accepting, so its call hangs until the timeout) is covered
/// by the hedge: another node is asked after the hedge delay, well before the node timeout,
/// with a fixed delay and with the adaptive one.
///
/// Checked as less than half the node timeout, not timeout plus a margin: without the hedge,
/// the silent node's failure at the timeout would trigger the replacement and the request
/// would still finish within timeout plus a margin. The timeout is long, so that half of it is
/// a generous bound on a loaded CI machine.
#[tokio::test]
async fn hedge_delay_covers_a_silent_node() {
    let tc = start(3, 4, &[], 5).await;
    let ct = encrypt(&tc.keys, b"silent");
    // Node 1's address is a listener that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut endpoints = tc.endpoints.clone();
    endpoints[0] = NodeEndpoint {
        index: endpoints[0].index,
        url: format!("http://{}", silent.local_addr().unwrap()),
        key: None,
    };
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let timeout = Duration::from_secs(10);
    for hedge in [Hedge::After(Duration::from_millis(50)), Hedge::Auto] {
        let cluster = Cluster::new(&endpoints, tc.keys.clone(), 1, &tc.manager, timeout)
            .unwrap()
            .with_fanout(Fanout::Hedged { extra: 0, hedge });
        for r in 0..4u8 {
            opened_within(&cluster, &ct, r, timeout / 2, b"silent", &hedge.to_string()).await;
        }
    }
}

/// The adaptive hedge fits the network (issue 19: no fixed timeouts): with every node
/// answering 150 ms after it is asked, as across a WAN, a `t` fan-out asks exactly `t` nodes
/// per request once it has seen their answer times. The fixed 100 ms delay of before hedged
/// every request (four nodes asked for three partials, a third more node work).
#[tokio::test]
async fn the_adaptive_hedge_asks_no_extra_node_on_a_slow_network() {
    let slow = Duration::from_millis(150);
    let versions: Vec<(u16, Version)> = (1..=5).map(|i| (i, Version::Slow(slow))).collect();
    let tc = start_versions(3, 5, &[], &versions, 9).await;
    let cluster = tc
        .cluster(Duration::from_secs(5))
        .with_fanout("t".parse().unwrap());
    let ct = encrypt(&tc.keys, b"far away");
    let delegate = |r: u8| cluster.delegate(Encoded::new(*ct.ephemeral()), vec![r], None);
    // Two rounds of the five nodes: each has answered twice.
    for r in 0..4u8 {
        delegate(r).await.unwrap();
    }
    let before = tc.batch_calls();
    let requests = 10u8;
    for r in 0..requests {
        let served = delegate(100 + r).await.unwrap();
        assert_eq!(
            &*ecies::open_with_shared_secret(&served.value, &ct).unwrap(),
            b"far away"
        );
    }
    let asked = tc.batch_calls() - before;
    // One spare call for a scheduling hiccup on a loaded machine; a fixed 100 ms hedge asks
    // one extra node on every request.
    assert!(
        asked <= 3 * u64::from(requests) + 1,
        "{asked} node calls for {requests} requests"
    );
}

/// Concurrent delegations leave in a few batches, each still answered on its own: the liars'
/// partials are named per request, and a request the nodes refuse (an over-long request id)
/// fails alone.
#[tokio::test]
async fn concurrent_delegations_are_batched_and_answered_each_on_its_own() {
    let tc = start(3, 5, &[4], 6).await;
    let cluster = tc.cluster(Duration::from_secs(5));
    let cts: Vec<_> = (0..40u8).map(|r| encrypt(&tc.keys, &[r; 3])).collect();
    let calls = cts.iter().enumerate().map(|(r, ct)| {
        let id = if r == 17 {
            vec![1; 65]
        } else {
            vec![u8::try_from(r).unwrap()]
        };
        cluster.delegate(Encoded::new(*ct.ephemeral()), id, None)
    });
    let answers = futures::future::join_all(calls).await;
    let (batches, batched) = cluster.delegation_batches();
    assert_eq!(batched, 40);
    assert!(batches <= 4, "{batches} batches for 40 concurrent requests");
    // Every node is of the current version: each batch answer is proved by one aggregate
    // proof (at least t of them verified per batch), no partial by its own.
    let (aggregated, per_item) = cluster.delegation_proofs();
    assert_eq!(per_item, 0);
    assert!(
        aggregated >= 3 * batches,
        "{aggregated} aggregates, {batches} batches"
    );
    for (r, (answer, ct)) in answers.into_iter().zip(&cts).enumerate() {
        if r == 17 {
            let Err(ClusterError::Unavailable {
                verified: 0,
                failures,
                ..
            }) = answer
            else {
                panic!("request 17: {answer:?}")
            };
            // Every node refuses it; it fails once n - t + 1 = 3 have.
            assert!((3..=5).contains(&failures.len()), "{failures:?}");
            assert!(failures
                .iter()
                .all(|(_, f)| matches!(f, NodeFailure::Refused(m) if m.contains("request id"))));
            continue;
        }
        let served = answer.unwrap();
        let r = u8::try_from(r).unwrap();
        assert_eq!(
            &*ecies::open_with_shared_secret(&served.value, ct).unwrap(),
            &[r; 3]
        );
        assert!(
            served
                .failures
                .iter()
                .all(|(i, f)| i.get() == 4 && *f == NodeFailure::InvalidProof),
            "request {r}: {:?}",
            served.failures
        );
    }
}

/// During a rolling upgrade, nodes of the version before batch calls still serve: the manager
/// falls back to one call per delegation for them.
#[tokio::test]
async fn nodes_without_batch_calls_are_asked_one_delegation_at_a_time() {
    let tc = start_with(3, 4, &[], &[1, 2, 3], 8).await;
    let cluster = tc.cluster(Duration::from_secs(5));
    let cts: Vec<_> = (0..6u8).map(|r| encrypt(&tc.keys, &[r; 2])).collect();
    let calls = cts.iter().enumerate().map(|(r, ct)| {
        cluster.delegate(
            Encoded::new(*ct.ephemeral()),
            vec![u8::try_from(r).unwrap()],
            None,
        )
    });
    for (r, (answer, ct)) in futures::future::join_all(calls)
        .await
        .into_iter()
        .zip(&cts)
        .enumerate()
    {
        let served = answer.unwrap();
        assert!(served.failures.is_empty(), "{:?}", served.failures);
        let r = u8::try_from(r).unwrap();
        assert_eq!(
            &*ecies::open_with_shared_secret(&served.value, ct).unwrap(),
            &[r; 2]
        );
    }
    assert!(cluster.delegation_batches().0 < 6);
}

/// A rolling upgrade: nodes of the version with one proof per batch item (which ignore the
/// request's `aggregate_proof`), a node without batch calls at all, and current nodes sending
/// one aggregated proof, in one cluster. Each kind is verified its own way, in the same
/// batches; the liars among them (a per-item node and an aggregating node) are named per
/// request and no request fails, with every node asked and with `t` asked at a time.
#[tokio::test]
async fn a_rolling_upgrade_verifies_per_item_and_aggregated_answers_together() {
    use common::Version::{NoBatch, PerItemProofs};
    let tc = common::start_versions(
        3,
        6,
        &[2, 5],
        &[(1, PerItemProofs), (2, PerItemProofs), (3, NoBatch)],
        21,
    )
    .await;
    for fanout in [Fanout::All, "t".parse().unwrap()] {
        let cluster = tc.cluster(Duration::from_secs(5)).with_fanout(fanout);
        let cts: Vec<_> = (0..24u8).map(|r| encrypt(&tc.keys, &[r; 5])).collect();
        let calls = cts.iter().enumerate().map(|(r, ct)| {
            cluster.delegate(
                Encoded::new(*ct.ephemeral()),
                vec![u8::try_from(r).unwrap()],
                None,
            )
        });
        for (r, (answer, ct)) in futures::future::join_all(calls)
            .await
            .into_iter()
            .zip(&cts)
            .enumerate()
        {
            let served = answer.unwrap_or_else(|e| panic!("{fanout}, request {r}: {e:?}"));
            assert_eq!(
                &*ecies::open_with_shared_secret(&served.value, ct).unwrap(),
                &[u8::try_from(r).unwrap(); 5]
            );
            for (index, failure) in &served.failures {
                assert!(
                    [2, 5].contains(&index.get()),
                    "{fanout}: node {index} blamed"
                );
                assert_eq!(*failure, NodeFailure::InvalidProof);
            }
        }
        // Every request needs one of the aggregating honest nodes (4, 6) and one of the
        // earlier ones (1, 3): both kinds of proof were verified.
        let (aggregated, per_item) = cluster.delegation_proofs();
        assert!(
            aggregated > 0 && per_item > 0,
            "{fanout}: {aggregated}, {per_item}"
        );
    }
}

/// A node whose batch answer has one wrong partial under an otherwise honest aggregate proof
/// is refused for the whole batch and named in every request it answered; the collector asks
/// another node, so every request is served with the right secret.
#[tokio::test]
async fn one_wrong_partial_under_an_aggregate_proof_names_its_node() {
    use common::Version::OneWrongPartial;
    let tc = common::start_versions(3, 5, &[], &[(3, OneWrongPartial(2))], 22).await;
    for fanout in [Fanout::All, "t".parse().unwrap()] {
        let cluster = tc.cluster(Duration::from_secs(5)).with_fanout(fanout);
        let mut named = 0;
        // Rounds of concurrent requests: a batch of one, then the rest together; with `t`,
        // each batch starts at the next node, so node 3 answers several batches of seven.
        for round in 0..5u8 {
            let cts: Vec<_> = (0..8u8).map(|r| encrypt(&tc.keys, &[round, r])).collect();
            let calls = cts.iter().enumerate().map(|(r, ct)| {
                cluster.delegate(
                    Encoded::new(*ct.ephemeral()),
                    vec![round, u8::try_from(r).unwrap()],
                    None,
                )
            });
            for (r, (answer, ct)) in futures::future::join_all(calls)
                .await
                .into_iter()
                .zip(&cts)
                .enumerate()
            {
                let served = answer.unwrap();
                assert_eq!(
                    &*ecies::open_with_shared_secret(&served.value, ct).unwrap(),
                    &[round, u8::try_from(r).unwrap()]
                );
                for (index, failure) in &served.failures {
                    assert_eq!(index.get(), 3, "{fanout}: honest node {index} blamed");
                    assert_eq!(*failure, NodeFailure::InvalidProof);
                    named += 1;
                }
            }
        }
        if fanout != Fanout::All {
            assert!(named >= 7, "node 3 named {named} times");
        }
    }
}

/// With `--delegation-proofs per-item` the manager asks for one proof per partial, as before
/// aggregated proofs: current nodes answer so, and a liar is still named.
#[tokio::test]
async fn per_item_proofs_can_be_asked_for() {
    let tc = start(3, 5, &[2], 23).await;
    let cluster = tc.cluster(Duration::from_secs(5)).with_batching(
        Batching::new(64, 1)
            .unwrap()
            .with_proofs(DelegationProofs::PerItem),
    );
    let cts: Vec<_> = (0..10u8).map(|r| encrypt(&tc.keys, &[r; 2])).collect();
    let calls = cts.iter().enumerate().map(|(r, ct)| {
        cluster.delegate(
            Encoded::new(*ct.ephemeral()),
            vec![u8::try_from(r).unwrap()],
            None,
        )
    });
    for (r, (answer, ct)) in futures::future::join_all(calls)
        .await
        .into_iter()
        .zip(&cts)
        .enumerate()
    {
        let served = answer.unwrap();
        assert_eq!(
            &*ecies::open_with_shared_secret(&served.value, ct).unwrap(),
            &[u8::try_from(r).unwrap(); 2]
        );
        assert!(served
            .failures
            .iter()
            .all(|(i, f)| i.get() == 2 && *f == NodeFailure::InvalidProof));
    }
    let (aggregated, per_item) = cluster.delegation_proofs();
    assert_eq!(aggregated, 0);
    assert!(per_item >= 30, "{per_item}");
}

/// The operator's batch bounds hold: with at most 3 delegations per call and one batch in
/// flight, 12 concurrent requests leave in at least 4 calls, each answered on its own.
#[tokio::test]
async fn operator_batch_bounds_are_kept() {
    let tc = start(2, 3, &[], 12).await;
    let cluster = tc
        .cluster(Duration::from_secs(5))
        .with_batching(Batching::new(3, 1).unwrap());
    let cts: Vec<_> = (0..12u8).map(|r| encrypt(&tc.keys, &[r; 4])).collect();
    let calls = cts.iter().enumerate().map(|(r, ct)| {
        cluster.delegate(
            Encoded::new(*ct.ephemeral()),
            vec![u8::try_from(r).unwrap()],
            None,
        )
    });
    let answers = futures::future::join_all(calls).await;
    for (r, (answer, ct)) in answers.into_iter().zip(&cts).enumerate() {
        let secret = answer.unwrap().value;
        let r = u8::try_from(r).unwrap();
        assert_eq!(
            &*ecies::open_with_shared_secret(&secret, ct).unwrap(),
            &[r; 4]
        );
    }
    let (batches, batched) = cluster.delegation_batches();
    assert_eq!(batched, 12);
    assert!(
        batches >= 4,
        "{batches} batches of at most 3 for 12 requests"
    );
}

#[test]
fn batch_bounds_are_checked() {
    assert_eq!(Batching::default(), Batching::new(64, 1).unwrap());
    assert_eq!(Batching::new(256, 1024).unwrap().max(), 256);
    for (max, in_flight) in [(0, 1), (257, 1), (64, 0), (64, 1025)] {
        let err = Batching::new(max, in_flight).unwrap_err();
        assert!(err.contains("1..="), "{err}");
    }
}

#[test]
fn fanout_parses() {
    assert_eq!("all".parse::<Fanout>().unwrap(), Fanout::All);
    assert!(matches!(
        "t".parse::<Fanout>().unwrap(),
        Fanout::Hedged { extra: 0, .. }
    ));
    assert!(matches!(
        "t+2".parse::<Fanout>().unwrap(),
        Fanout::Hedged { extra: 2, .. }
    ));
    for bad in ["", "t+", "t+x", "3", "t-1", "all+1"] {
        assert!(bad.parse::<Fanout>().is_err(), "{bad}");
    }
    assert_eq!("t+1".parse::<Fanout>().unwrap().to_string(), "t+1");
    assert_eq!(
        "t".parse::<Fanout>().unwrap(),
        Fanout::Hedged {
            extra: 0,
            hedge: Hedge::Auto
        }
    );
    assert_eq!("auto".parse::<Hedge>().unwrap(), Hedge::Auto);
    assert_eq!(
        "250".parse::<Hedge>().unwrap(),
        Hedge::After(Duration::from_millis(250))
    );
    for bad in ["", "fast", "-1", "1.5"] {
        assert!(bad.parse::<Hedge>().is_err(), "{bad}");
    }
}

/// The manager pins each node's TLS key: a server at a node's address that holds another key
/// (here: node 2's address given with node 1's key) is never asked, and is named as a failed
/// connection, while the other nodes serve.
#[tokio::test]
async fn a_node_answering_with_another_key_is_not_used() {
    let tc = start(2, 3, &[], 8).await;
    let ct = encrypt(&tc.keys, b"pinned");
    let mut endpoints = tc.endpoints.clone();
    endpoints[1].key = endpoints[0].key;
    let ephemeral = Encoded::new(*ct.ephemeral());
    let delegate = |r: u8| {
        let cluster = Cluster::new(
            &endpoints,
            tc.keys.clone(),
            1,
            &tc.manager,
            Duration::from_secs(2),
        )
        .unwrap();
        async move { cluster.delegate(ephemeral, vec![r], None).await }
    };
    let served = delegate(1).await.unwrap();
    assert_eq!(
        &*ecies::open_with_shared_secret(&served.value, &ct).unwrap(),
        b"pinned"
    );
    // With node 1 down too, only the wrongly keyed address and node 3 are left: below t = 2
    // if the manager refuses the wrong key, as it must; node 2's address is among the failures.
    tc.kill(1);
    let err = delegate(2).await.unwrap_err();
    let ClusterError::Unavailable { failures, .. } = err else {
        panic!("{err:?}")
    };
    assert!(failures.iter().any(|(i, _)| i.get() == 2), "{failures:?}");
}
