//! DKG ceremonies driven round by round, with silent, cheating and equivocating dealers and
//! false accusers: with up to `n - t` faulty dealers every honest node finishes with the same
//! key and transcript; with more, every honest node fails with `NotEnoughDealers`. A frozen
//! transcript (`tests/vectors/dkg.json`) pins the wire-visible results.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::collections::BTreeMap;

use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::json;
use tkms_crypto::{
    dkg::{self, byzantine, CeremonyConfig, CeremonyOutput, Dealing, Fault},
    shamir::lagrange_coefficients,
    Error, NodeIndex, Secp256k1, SecretScalar, Suite, P256,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Honest,
    /// Crashed: sends nothing at all.
    Silent,
    /// Deals shares that do not match its commitments to two recipients.
    BadShares,
    /// Deals undecodable ciphertext plaintext to one recipient.
    Garbage,
    /// Deals with an invalid proof of possession.
    BadProofOfPossession,
    /// Sends one dealing to odd recipients and another to even ones.
    Equivocate,
    /// Deals honestly but falsely accuses dealer 1.
    FalseAccuser,
}

impl Behaviour {
    fn faulty_dealer(self) -> bool {
        !matches!(self, Self::Honest | Self::FalseAccuser)
    }
}

/// The recipients a cheating dealer gives bad shares to (`Garbage` uses only the first).
fn victims_of(dealer: NodeIndex, n: u16) -> [NodeIndex; 2] {
    [idx(1 + dealer.get() % n), idx(1 + (dealer.get() + 1) % n)]
}

fn idx(i: u16) -> NodeIndex {
    NodeIndex::new(i).unwrap()
}

struct Run<S: Suite> {
    config: CeremonyConfig<S>,
    outputs: BTreeMap<NodeIndex, Result<CeremonyOutput<S>, Error>>,
}

fn run<S: Suite>(
    n: u16,
    t: u16,
    behaviour: &BTreeMap<NodeIndex, Behaviour>,
    rng: &mut ChaCha20Rng,
) -> Run<S> {
    let keys: BTreeMap<NodeIndex, SecretScalar<S>> = (1..=n)
        .map(|i| (idx(i), SecretScalar::random(rng)))
        .collect();
    let committee = keys.iter().map(|(i, k)| (*i, k.public_point())).collect();
    let config = CeremonyConfig::<S>::dkg(9, t, committee).unwrap();
    let role = |i: &NodeIndex| behaviour.get(i).copied().unwrap_or(Behaviour::Honest);

    // Round 1. `view[j]` is what recipient j received.
    let mut view: BTreeMap<NodeIndex, Vec<Dealing<S>>> =
        keys.keys().map(|j| (*j, Vec::new())).collect();
    for (i, key) in &keys {
        let victims = victims_of(*i, n);
        let broadcast = |view: &mut BTreeMap<NodeIndex, Vec<Dealing<S>>>, d: &Dealing<S>| {
            for v in view.values_mut() {
                v.push(d.clone());
            }
        };
        match role(i) {
            Behaviour::Silent => {}
            Behaviour::Honest | Behaviour::FalseAccuser => {
                broadcast(&mut view, &dkg::deal(&config, *i, key, None, rng).unwrap());
            }
            Behaviour::BadShares => {
                let d = byzantine::deal_bad_shares(&config, *i, key, None, &victims, false, rng)
                    .unwrap();
                broadcast(&mut view, &d);
            }
            Behaviour::Garbage => {
                let d =
                    byzantine::deal_bad_shares(&config, *i, key, None, &victims[..1], true, rng)
                        .unwrap();
                broadcast(&mut view, &d);
            }
            Behaviour::BadProofOfPossession => {
                broadcast(
                    &mut view,
                    &byzantine::deal_bad_proof_of_possession(&config, *i, key, rng).unwrap(),
                );
            }
            Behaviour::Equivocate => {
                let a = dkg::deal(&config, *i, key, None, rng).unwrap();
                let b = dkg::deal(&config, *i, key, None, rng).unwrap();
                for (j, v) in &mut view {
                    v.push(if j.get() % 2 == 0 {
                        a.clone()
                    } else {
                        b.clone()
                    });
                }
            }
        }
    }

    // Round 2.
    let mut responses = Vec::new();
    let mut states = BTreeMap::new();
    for (j, key) in &keys {
        match role(j) {
            Behaviour::Silent => {}
            Behaviour::FalseAccuser => {
                let r = byzantine::respond_with_false_complaint(
                    &config,
                    *j,
                    key,
                    &view[j],
                    idx(1),
                    rng,
                )
                .unwrap();
                responses.push(r);
                states.insert(*j, dkg::respond(&config, *j, key, &view[j], rng).unwrap().1);
            }
            _ => {
                let (r, s) = dkg::respond(&config, *j, key, &view[j], rng).unwrap();
                responses.push(r);
                states.insert(*j, s);
            }
        }
    }

    // Rounds 3 and 4, for every node that is still running.
    let mut results = BTreeMap::new();
    let mut confirmations = Vec::new();
    for (j, received) in states {
        match dkg::finalize(&config, &keys[&j], &received, &view[&j], &responses, rng) {
            Ok((output, confirmation)) => {
                confirmations.extend(confirmation);
                results.insert(j, Ok(output));
            }
            Err(e) => {
                results.insert(j, Err(e));
            }
        }
    }
    let outputs = results
        .into_iter()
        .map(|(j, r)| {
            (
                j,
                r.and_then(|o| dkg::confirm(&config, &o, &confirmations).map(|()| o)),
            )
        })
        .collect();
    Run { config, outputs }
}

/// Honest nodes agree on the key and the transcript, their shares interpolate to a secret
/// matching the public key, and each faulty dealer is out of QUAL.
fn check_success<S: Suite>(run: &Run<S>, behaviour: &BTreeMap<NodeIndex, Behaviour>) {
    let honest: Vec<(&NodeIndex, &CeremonyOutput<S>)> = run
        .outputs
        .iter()
        .filter(|(j, _)| !behaviour.contains_key(j))
        .map(|(j, r)| {
            (
                j,
                r.as_ref()
                    .unwrap_or_else(|e| panic!("honest node {j} failed: {e}")),
            )
        })
        .collect();
    let (_, first) = honest[0];
    for (_, o) in &honest {
        assert_eq!(o.public(), first.public());
        assert_eq!(o.transcript_hash(), first.transcript_hash());
        assert_eq!(o.qualified(), first.qualified());
    }
    let n = u16::try_from(run.config.recipients().len()).unwrap();
    for (i, b) in behaviour {
        // A bad share is only exposed if its victim is alive to complain.
        let victims = victims_of(*i, n);
        let victims: &[NodeIndex] = if *b == Behaviour::Garbage {
            &victims[..1]
        } else {
            &victims
        };
        let responds = |v: &NodeIndex| behaviour.get(v) != Some(&Behaviour::Silent);
        let exposed = match b {
            Behaviour::BadShares | Behaviour::Garbage => victims.iter().any(responds),
            // Two dealings are only seen to differ if a node on each side responds; if every
            // responder holds the same one, the dealer is consistent for all live nodes.
            Behaviour::Equivocate => {
                let responders: Vec<NodeIndex> = (1..=n).map(idx).filter(responds).collect();
                responders.iter().any(|v| v.get() % 2 == 0)
                    && responders.iter().any(|v| v.get() % 2 == 1)
            }
            _ => b.faulty_dealer(),
        };
        if exposed {
            assert!(
                !first.qualified().contains(i),
                "{b:?} dealer {i} stayed in QUAL"
            );
        }
        if *b == Behaviour::BadShares && exposed {
            assert!(
                first.faults().contains(&(*i, Fault::BadShare)),
                "{:?}",
                first.faults()
            );
        }
        if *b == Behaviour::Equivocate && exposed {
            assert!(
                first.faults().contains(&(*i, Fault::Equivocation)),
                "{:?}",
                first.faults()
            );
        }
        if *b == Behaviour::FalseAccuser && first.qualified().contains(&idx(1)) {
            assert!(
                first.faults().contains(&(*i, Fault::FalseComplaint)),
                "{:?}",
                first.faults()
            );
        }
    }
    // Any t honest shares reconstruct the secret behind the public key.
    let t = usize::from(run.config.threshold());
    let shares: Vec<_> = honest
        .iter()
        .take(t)
        .map(|(_, o)| o.share().unwrap())
        .collect();
    let indices: Vec<NodeIndex> = shares.iter().map(|s| s.index()).collect();
    let secret = lagrange_coefficients::<S>(&indices)
        .unwrap()
        .into_iter()
        .zip(&shares)
        .fold(S::Scalar::from(0u64), |acc, (l, s)| {
            acc + l * s.value().expose()
        });
    assert_eq!(S::mul_by_generator(&secret), first.public().public_key());
}

fn faults_strategy() -> impl Strategy<Value = (u16, u16, Vec<(u16, Behaviour)>, u64)> {
    let behaviour = prop_oneof![
        Just(Behaviour::Silent),
        Just(Behaviour::BadShares),
        Just(Behaviour::Garbage),
        Just(Behaviour::BadProofOfPossession),
        Just(Behaviour::Equivocate),
    ];
    (2u16..=7)
        .prop_flat_map(|n| (Just(n), 1..=n))
        .prop_flat_map(move |(n, t)| {
            let faulty =
                proptest::sample::subsequence((1..=n).collect::<Vec<_>>(), 0..=usize::from(n - t));
            (
                Just(n),
                Just(t),
                faulty,
                proptest::collection::vec(behaviour.clone(), usize::from(n)),
                any::<u64>(),
            )
        })
        .prop_map(|(n, t, faulty, kinds, seed)| {
            (n, t, faulty.into_iter().zip(kinds).collect(), seed)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn dkg_completes_with_up_to_n_minus_t_faulty_dealers((n, t, faulty, seed) in faults_strategy()) {
        let behaviour: BTreeMap<_, _> = faulty.into_iter().map(|(i, b)| (idx(i), b)).collect();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        check_success(&run::<Secp256k1>(n, t, &behaviour, &mut rng), &behaviour);
        check_success(&run::<P256>(n, t, &behaviour, &mut rng), &behaviour);
    }

    #[test]
    fn dkg_fails_clearly_with_more_than_n_minus_t_faulty(n in 2u16..=7, seed in any::<u64>(), silent in any::<bool>()) {
        let t = n / 2 + 1;
        let kind = if silent { Behaviour::Silent } else { Behaviour::BadShares };
        let behaviour: BTreeMap<_, _> = (1..=n - t + 1).map(|i| (idx(i), kind)).collect();
        let run = run::<Secp256k1>(n, t, &behaviour, &mut ChaCha20Rng::seed_from_u64(seed));
        for (j, result) in &run.outputs {
            if !behaviour.contains_key(j) {
                prop_assert!(matches!(result, Err(Error::NotEnoughDealers { .. })), "node {j}: {result:?}");
            }
        }
    }
}

/// Found by CI: an equivocation no live node can see (every even recipient crashed) is not a
/// fault; the dealer's one visible dealing is consistent and it stays in QUAL.
#[test]
fn equivocation_seen_by_no_live_node_is_harmless() {
    let behaviour = BTreeMap::from([(idx(1), Behaviour::Equivocate), (idx(2), Behaviour::Silent)]);
    let run = run::<Secp256k1>(3, 1, &behaviour, &mut ChaCha20Rng::seed_from_u64(7));
    check_success(&run, &behaviour);
    let output = run.outputs[&idx(3)].as_ref().unwrap();
    assert!(output.qualified().contains(&idx(1)));
    assert!(output.faults().is_empty(), "{:?}", output.faults());
}

#[test]
fn false_accusation_is_caught_and_the_accused_stays() {
    let behaviour = BTreeMap::from([(idx(4), Behaviour::FalseAccuser)]);
    let run = run::<Secp256k1>(5, 3, &behaviour, &mut ChaCha20Rng::seed_from_u64(4));
    check_success(&run, &behaviour);
    let output = run.outputs[&idx(2)].as_ref().unwrap();
    assert!(output.qualified().contains(&idx(1)));
    assert_eq!(output.faults(), &[(idx(4), Fault::FalseComplaint)]);
}

#[test]
fn messages_round_trip_through_bytes_and_reject_garbage() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let keys: Vec<SecretScalar<Secp256k1>> =
        (0..3).map(|_| SecretScalar::random(&mut rng)).collect();
    let committee = (1..=3)
        .map(|i| (idx(i), keys[usize::from(i - 1)].public_point()))
        .collect();
    let config = CeremonyConfig::dkg(1, 2, committee).unwrap();
    let dealing = dkg::deal(&config, idx(1), &keys[0], None, &mut rng).unwrap();
    let bytes = dealing.to_bytes();
    assert_eq!(Dealing::from_bytes(&bytes).unwrap(), dealing);
    for cut in [0, 1, 2, 40, bytes.len() - 1] {
        assert!(Dealing::<Secp256k1>::from_bytes(&bytes[..cut]).is_err());
    }
    assert!(Dealing::<Secp256k1>::from_bytes(&[bytes.as_slice(), &[0]].concat()).is_err());
    let (response, _) = dkg::respond(
        &config,
        idx(2),
        &keys[1],
        std::slice::from_ref(&dealing),
        &mut rng,
    )
    .unwrap();
    assert_eq!(
        dkg::Response::from_bytes(&response.to_bytes()).unwrap(),
        response
    );
    // A dealing signed for another config (next attempt) does not validate.
    let restarted = config.restart(&[]).unwrap();
    assert!(dealing.validate(&restarted).is_err());
    // The wrong node key cannot deal for index 1.
    assert_eq!(
        dkg::deal(&config, idx(1), &keys[1], None, &mut rng).unwrap_err(),
        Error::NotAParticipant(idx(1))
    );
}

#[test]
fn invalid_configs_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let committee: BTreeMap<_, _> = (1..=3)
        .map(|i| {
            (
                idx(i),
                SecretScalar::<Secp256k1>::random(&mut rng).public_point(),
            )
        })
        .collect();
    assert_eq!(
        CeremonyConfig::<Secp256k1>::dkg(1, 0, committee.clone()).unwrap_err(),
        Error::InvalidThreshold { threshold: 0, n: 3 }
    );
    assert_eq!(
        CeremonyConfig::<Secp256k1>::dkg(1, 4, committee.clone()).unwrap_err(),
        Error::InvalidThreshold { threshold: 4, n: 3 }
    );
    let config = CeremonyConfig::<Secp256k1>::dkg(1, 3, committee).unwrap();
    assert!(matches!(
        config.restart(&[idx(1)]),
        Err(Error::NotEnoughDealers { .. })
    ));
}

/// Frozen transcript: the same seed must give the same public results. Regenerate with
/// `TKMS_UPDATE_VECTORS=1 cargo test -p tkms-crypto --test dkg` after a deliberate change.
#[test]
fn dkg_transcript_vectors() {
    let mut vectors = Vec::new();
    for (n, t, seed) in [(4u16, 3u16, 1u64), (5, 3, 2), (7, 5, 3)] {
        for suite in ["secp256k1", "P-256"] {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let none = BTreeMap::new();
            let entry = match suite {
                "secp256k1" => summary(&run::<Secp256k1>(n, t, &none, &mut rng)),
                _ => summary(&run::<P256>(n, t, &none, &mut rng)),
            };
            vectors.push(json!({"curve": suite, "n": n, "t": t, "seed": seed, "rng": "ChaCha20Rng::seed_from_u64", "result": entry}));
        }
    }
    let doc = json!({
        "generator": "crypto/tests/dkg.rs (dkg_transcript_vectors)",
        "description": "Honest DKG runs driven by the test harness with a seeded ChaCha20 RNG: config digest, QUAL, public key, public shares and transcript hash.",
        "vectors": vectors,
    });
    let path = format!("{}/tests/vectors/dkg.json", env!("CARGO_MANIFEST_DIR"));
    let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    if std::env::var_os("TKMS_UPDATE_VECTORS").is_some() {
        std::fs::write(&path, text).unwrap();
    } else {
        let frozen = std::fs::read_to_string(&path)
            .expect("dkg.json missing: run with TKMS_UPDATE_VECTORS=1");
        assert_eq!(frozen, text, "DKG transcript changed");
    }
}

fn summary<S: Suite>(run: &Run<S>) -> serde_json::Value {
    let output = run.outputs.values().next().unwrap().as_ref().unwrap();
    json!({
        "config_digest": hex::encode(run.config.digest()),
        "qualified": output.qualified().iter().map(|i| i.get()).collect::<Vec<_>>(),
        "public_key": hex::encode(S::encode_point(&output.public().public_key())),
        "public_shares": output.public().public_shares()
            .map(|(i, p)| (i.get().to_string(), hex::encode(S::encode_point(p))))
            .collect::<BTreeMap<_, _>>(),
        "transcript_hash": hex::encode(output.transcript_hash()),
    })
}

#[test]
fn a_node_that_missed_a_dealing_absorbs_it_when_relayed() {
    let mut rng = ChaCha20Rng::seed_from_u64(31);
    let keys: BTreeMap<NodeIndex, SecretScalar<Secp256k1>> = (1..=4)
        .map(|i| (idx(i), SecretScalar::random(&mut rng)))
        .collect();
    let committee = keys.iter().map(|(i, k)| (*i, k.public_point())).collect();
    let config = CeremonyConfig::dkg(3, 3, committee).unwrap();
    let dealings: Vec<_> = keys
        .iter()
        .map(|(i, k)| dkg::deal(&config, *i, k, None, &mut rng).unwrap())
        .collect();
    // Node 4 never received dealer 2's dealing; everyone else did.
    let late = &dealings[1];
    let partial_view: Vec<_> = dealings
        .iter()
        .filter(|d| d.dealer() != idx(2))
        .cloned()
        .collect();
    let mut responses = Vec::new();
    let mut states = BTreeMap::new();
    for (j, k) in &keys {
        let view = if *j == idx(4) {
            &partial_view
        } else {
            &dealings
        };
        let (response, received) = dkg::respond(&config, *j, k, view, &mut rng).unwrap();
        responses.push(response);
        states.insert(*j, (received, view.clone()));
    }
    let (mut received, view) = states.remove(&idx(4)).unwrap();
    let result = dkg::finalize(
        &config,
        &keys[&idx(4)],
        &received,
        &view,
        &responses,
        &mut rng,
    );
    assert_eq!(
        result.unwrap_err(),
        Error::MissingDealing { dealer: idx(2) }
    );
    // A peer relays the signed dealing; node 4 absorbs it and finalizes like everyone else.
    assert!(received.absorb(&config, &keys[&idx(4)], late).unwrap());
    assert!(!received.absorb(&config, &keys[&idx(4)], late).unwrap());
    let view: Vec<_> = view.into_iter().chain([late.clone()]).collect();
    let (mine, _) = dkg::finalize(
        &config,
        &keys[&idx(4)],
        &received,
        &view,
        &responses,
        &mut rng,
    )
    .unwrap();
    let (received_1, view_1) = &states[&idx(1)];
    let (theirs, _) = dkg::finalize(
        &config,
        &keys[&idx(1)],
        received_1,
        view_1,
        &responses,
        &mut rng,
    )
    .unwrap();
    assert_eq!(mine.transcript_hash(), theirs.transcript_hash());
    assert_eq!(mine.public(), theirs.public());
    // A dealing signed for another ceremony is refused.
    let other = config.restart(&[]).unwrap();
    let foreign = dkg::deal(&other, idx(2), &keys[&idx(2)], None, &mut rng).unwrap();
    let (_, mut fresh) =
        dkg::respond(&config, idx(4), &keys[&idx(4)], &partial_view, &mut rng).unwrap();
    assert!(fresh.absorb(&config, &keys[&idx(4)], &foreign).is_err());
}
