//! Property tests of the aggregated delegation proof (docs/PROTOCOL.md §5.1): an honest
//! node's batch verifies and combines to the full key's answer; a batch with one wrong
//! `D_j` is refused and its node named, whatever the item, the batch size or how the node
//! cheats; a cheating node is named without failing the honest ones verified beside it.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tkms_crypto::{
    aggregate::{self, verify_batches, BatchPartials},
    delegation::{self, DelegationRequest},
    shamir,
    suite::Encoded,
    Error, KeyShare, PublicKeySet, Secp256k1, SecretScalar, Suite, P256,
};

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

struct Setup<S: Suite> {
    sk: SecretScalar<S>,
    shares: Vec<KeyShare<S>>,
    keys: PublicKeySet<S>,
    requests: Vec<DelegationRequest<S>>,
}

fn setup<S: Suite>(m: usize, seed: u64) -> Setup<S> {
    let mut rng = rng(seed);
    let sk = SecretScalar::<S>::random(&mut rng);
    let (shares, keys) = shamir::deal(&sk, 3, 5, &mut rng).unwrap();
    let requests = (0..m)
        .map(|j| {
            DelegationRequest::new(
                9,
                format!("request {j}").into_bytes(),
                SecretScalar::<S>::random(&mut rng).public_point(),
            )
        })
        .collect();
    Setup {
        sk,
        shares,
        keys,
        requests,
    }
}

/// How a node gets one wrong `D_k` past an aggregate proof, if it can.
#[derive(Clone, Copy, Debug)]
enum Cheat {
    /// `D_k + E` for a random `E`, proved with the real share over the altered list.
    Offset,
    /// `D_k` from another share value, proved with the real share.
    OtherShare,
    /// Another request's `D`, proved with the real share.
    Swapped,
    /// The honest proof, sent with an altered `D_k`.
    HonestProofAlteredPartial,
    /// Every `D_j` from one wrong share, and a proof made with that wrong share.
    ConsistentWrongShare,
}

fn cheat() -> impl Strategy<Value = Cheat> {
    prop_oneof![
        Just(Cheat::Offset),
        Just(Cheat::OtherShare),
        Just(Cheat::Swapped),
        Just(Cheat::HonestProofAlteredPartial),
        Just(Cheat::ConsistentWrongShare),
    ]
}

fn cheating_batch<S: Suite>(
    share: &KeyShare<S>,
    requests: &[&DelegationRequest<S>],
    k: usize,
    how: Cheat,
    rng: &mut ChaCha20Rng,
) -> BatchPartials<S> {
    let mut partials: Vec<Encoded<S>> = requests
        .iter()
        .map(|r| aggregate::partial(share, r))
        .collect();
    let offset = SecretScalar::<S>::random(rng).public_point();
    match how {
        Cheat::Offset => {
            partials[k] = Encoded::new(*partials[k].point() + offset);
            BatchPartials::prove(share, requests, partials, rng).unwrap()
        }
        Cheat::OtherShare => {
            let other = KeyShare::new(share.index(), SecretScalar::random(rng));
            partials[k] = aggregate::partial(&other, requests[k]);
            BatchPartials::prove(share, requests, partials, rng).unwrap()
        }
        Cheat::Swapped => {
            // With one request, "another request's D" is the partial for another key.
            partials[k] = if requests.len() > 1 {
                partials[(k + 1) % requests.len()]
            } else {
                Encoded::new(*partials[k].point() + offset)
            };
            BatchPartials::prove(share, requests, partials, rng).unwrap()
        }
        Cheat::HonestProofAlteredPartial => {
            let honest = BatchPartials::prove(share, requests, partials.clone(), rng).unwrap();
            partials[k] = Encoded::new(*partials[k].point() + partials[k].point());
            BatchPartials::new(*honest.proof(), partials)
        }
        Cheat::ConsistentWrongShare => {
            let wrong = KeyShare::new(share.index(), SecretScalar::random(rng));
            BatchPartials::create(&wrong, requests, rng).unwrap()
        }
    }
}

fn one_wrong_partial_is_refused<S: Suite>(m: usize, k: usize, how: Cheat, seed: u64) {
    let s = setup::<S>(m, seed);
    let mut rng = rng(seed ^ 0x5eed);
    let requests: Vec<_> = s.requests.iter().collect();
    let liar = &s.shares[1];
    let bad = cheating_batch(liar, &requests, k % m, how, &mut rng);
    assert_eq!(
        bad.clone()
            .verify(&s.keys, &requests, &mut rng)
            .unwrap_err(),
        Error::InvalidProof {
            culprit: liar.index()
        },
        "{how:?}, item {k} of {m}"
    );
    // Beside two honest nodes in one check: the liar is named, the honest ones pass.
    let honest: Vec<_> = [&s.shares[0], &s.shares[3]]
        .iter()
        .map(|share| BatchPartials::create(share, &requests, &mut rng).unwrap())
        .collect();
    let mut all = vec![(honest[0].clone(), requests.as_slice())];
    all.push((bad, requests.as_slice()));
    all.push((honest[1].clone(), requests.as_slice()));
    let results = verify_batches(all, &s.keys, &mut rng);
    assert!(results[0].is_ok() && results[2].is_ok(), "{how:?}");
    assert_eq!(
        results[1].as_ref().unwrap_err(),
        &Error::InvalidProof {
            culprit: liar.index()
        }
    );
}

fn honest_batches_combine<S: Suite>(m: usize, seed: u64) {
    let s = setup::<S>(m, seed);
    let mut rng = rng(seed);
    let requests: Vec<_> = s.requests.iter().collect();
    let batches: Vec<_> = s.shares[1..4]
        .iter()
        .map(|share| {
            (
                BatchPartials::create(share, &requests, &mut rng).unwrap(),
                requests.as_slice(),
            )
        })
        .collect();
    let verified: Vec<Vec<_>> = verify_batches(batches, &s.keys, &mut rng)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for (j, request) in s.requests.iter().enumerate() {
        let column: Vec<_> = verified.iter().map(|v| v[j].clone()).collect();
        let combined = delegation::combine_point(&column, &s.keys).unwrap();
        assert_eq!(combined, *request.ephemeral() * s.sk.expose());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// One wrong `D_k` anywhere in a batch of 1 to 64 is refused, however the node cheats.
    #[test]
    fn one_wrong_partial_in_a_batch_is_refused_secp256k1(
        m in 1usize..=64, k in 0usize..64, how in cheat(), seed in any::<u64>()
    ) {
        one_wrong_partial_is_refused::<Secp256k1>(m, k, how, seed);
    }

    /// Honest batches of three nodes verify together and combine to `sk·K_j` for every `j`.
    #[test]
    fn honest_batches_verify_and_combine_secp256k1(m in 1usize..=32, seed in any::<u64>()) {
        honest_batches_combine::<Secp256k1>(m, seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn one_wrong_partial_in_a_batch_is_refused_p256(
        m in 1usize..=8, k in 0usize..8, how in cheat(), seed in any::<u64>()
    ) {
        one_wrong_partial_is_refused::<P256>(m, k, how, seed);
    }

    #[test]
    fn honest_batches_verify_and_combine_p256(m in 1usize..=8, seed in any::<u64>()) {
        honest_batches_combine::<P256>(m, seed);
    }
}

/// The verifier accepts the partials of requests the node answered in the order it answered
/// them, and a batch proof says nothing about requests left out of it.
#[test]
fn a_proof_covers_exactly_the_requests_it_was_made_for() {
    let s = setup::<Secp256k1>(4, 1);
    let mut rng = rng(2);
    let requests: Vec<_> = s.requests.iter().collect();
    let batch = BatchPartials::create(&s.shares[2], &requests, &mut rng).unwrap();
    let fewer = BatchPartials::new(*batch.proof(), batch.partials()[..3].to_vec());
    assert!(fewer.verify(&s.keys, &requests[..3], &mut rng).is_err());
    assert_eq!(
        batch.verify(&s.keys, &requests[..3], &mut rng).unwrap_err(),
        Error::BatchShape {
            partials: 4,
            requests: 3
        }
    );
}
