//! Property tests of the threshold algebra, on both suites: any `t` of `n` verified partials
//! combine to what the full key gives; `t-1` cannot; a tampered partial is rejected and its
//! node named; re-encryption opens for the target; a reshared committee serves the same key.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::collections::BTreeMap;

use proptest::prelude::*;
use rand::{seq::SliceRandom, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tkms_crypto::{
    delegation::{self, DelegationRequest, PartialDelegation},
    dkg::{self, CeremonyConfig},
    ecies, pre,
    shamir::{self, lagrange_coefficients},
    Error, KeyShare, NodeIndex, Secp256k1, SecretScalar, Suite, P256,
};

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// `(n, t)` with `1 <= t <= n <= 10`.
fn committee() -> impl Strategy<Value = (u16, u16)> {
    (1u16..=10).prop_flat_map(|n| (Just(n), 1..=n))
}

fn delegation_any_t_of_n<S: Suite>(n: u16, t: u16, seed: u64) {
    let mut rng = rng(seed);
    let sk = SecretScalar::<S>::random(&mut rng);
    let (mut shares, keys) = shamir::deal(&sk, t, n, &mut rng).unwrap();
    assert_eq!(keys.public_key(), sk.public_point());
    let ct = ecies::encrypt::<S>(&keys.public_key(), b"threshold", &mut rng).unwrap();
    let request = DelegationRequest::new(7, b"req".to_vec(), *ct.ephemeral());
    shares.shuffle(&mut rng);
    let partials: Vec<_> = shares[..usize::from(t)]
        .iter()
        .map(|s| PartialDelegation::create(s, &request, &mut rng))
        .collect();
    // Each partial verifies on its own and in a batch.
    for p in &partials {
        p.clone().verify(&keys, &request).unwrap();
    }
    let (verified, errors) = delegation::verify_all(partials, &keys, &request, &mut rng);
    assert!(errors.is_empty());
    let combined = delegation::combine_point(&verified, &keys).unwrap();
    assert_eq!(combined, *ct.ephemeral() * sk.expose());
    let secret = delegation::combine(&verified, &keys).unwrap();
    assert_eq!(
        &*ecies::open_with_shared_secret(&secret, &ct).unwrap(),
        b"threshold"
    );

    // t-1 partials are refused, and t-1 shares interpolate to something else than sk.
    let short = &verified[..usize::from(t) - 1];
    assert_eq!(
        delegation::combine(short, &keys).unwrap_err(),
        Error::NotEnoughPartials {
            got: usize::from(t) - 1,
            threshold: t
        }
    );
    if t >= 2 {
        let subset: Vec<NodeIndex> = shares[..usize::from(t) - 1]
            .iter()
            .map(KeyShare::index)
            .collect();
        let lambdas = lagrange_coefficients::<S>(&subset).unwrap();
        let guess = shares[..usize::from(t) - 1]
            .iter()
            .zip(lambdas)
            .fold(S::Scalar::from(0u64), |acc, (s, l)| {
                acc + l * s.value().expose()
            });
        assert_ne!(S::encode_scalar(&guess), *sk.to_bytes());
    }
}

fn tampered_partial_is_named<S: Suite>(n: u16, t: u16, seed: u64, victim: usize, byte: usize) {
    let mut rng = rng(seed);
    let sk = SecretScalar::<S>::random(&mut rng);
    let (shares, keys) = shamir::deal(&sk, t, n, &mut rng).unwrap();
    let k = SecretScalar::<S>::random(&mut rng).public_point();
    let request = DelegationRequest::new(1, b"r".to_vec(), k);
    let victim = victim % shares.len();
    let mut partials: Vec<_> = shares
        .iter()
        .map(|s| PartialDelegation::create(s, &request, &mut rng))
        .collect();
    // Flip one byte after the index (in D_i or the proof); keep it only if it still decodes.
    let mut bytes = partials[victim].to_bytes();
    let at = 2 + byte % (bytes.len() - 2);
    bytes[at] ^= 0x01;
    let culprit = partials[victim].index();
    match PartialDelegation::<S>::from_bytes(&bytes) {
        Err(_) => return, // rejected at decoding: the strict decoder did its job
        Ok(tampered) => partials[victim] = tampered,
    }
    assert_eq!(
        partials[victim]
            .clone()
            .verify(&keys, &request)
            .unwrap_err(),
        Error::InvalidProof { culprit }
    );
    let (verified, errors) = delegation::verify_all(partials, &keys, &request, &mut rng);
    assert_eq!(errors, vec![Error::InvalidProof { culprit }]);
    assert_eq!(verified.len(), shares.len() - 1);
    if verified.len() >= usize::from(t) {
        assert_eq!(
            delegation::combine_point(&verified, &keys).unwrap(),
            k * sk.expose()
        );
    }
}

fn partial_for_other_request_is_rejected<S: Suite>(seed: u64) {
    let mut rng = rng(seed);
    let sk = SecretScalar::<S>::random(&mut rng);
    let (shares, keys) = shamir::deal(&sk, 2, 3, &mut rng).unwrap();
    let k = SecretScalar::<S>::random(&mut rng).public_point();
    let a = DelegationRequest::new(1, b"a".to_vec(), k);
    let b = DelegationRequest::new(1, b"b".to_vec(), k);
    let other_epoch = DelegationRequest::new(2, b"a".to_vec(), k);
    let p = PartialDelegation::create(&shares[0], &a, &mut rng);
    assert!(p.clone().verify(&keys, &b).is_err());
    assert!(p.clone().verify(&keys, &other_epoch).is_err());
    // Verified partials of different requests do not mix.
    let va = p.verify(&keys, &a).unwrap();
    let vb = PartialDelegation::create(&shares[1], &b, &mut rng)
        .verify(&keys, &b)
        .unwrap();
    assert_eq!(
        delegation::combine(&[va, vb], &keys).unwrap_err(),
        Error::MixedRequests
    );
    // A node cannot answer with another node's index.
    let forged = PartialDelegation::<S>::from_bytes(
        &[
            &2u16.to_be_bytes()[..],
            &PartialDelegation::create(&shares[0], &a, &mut rng).to_bytes()[2..],
        ]
        .concat(),
    )
    .unwrap();
    assert_eq!(
        forged.verify(&keys, &a).unwrap_err(),
        Error::InvalidProof {
            culprit: NodeIndex::new(2).unwrap()
        }
    );
}

fn reencryption_any_t_of_n<S: Suite>(n: u16, t: u16, seed: u64, tamper: bool) {
    let mut rng = rng(seed);
    let sk = SecretScalar::<S>::random(&mut rng);
    let (mut shares, keys) = shamir::deal(&sk, t, n, &mut rng).unwrap();
    let message = b"re-encrypt me to the target";
    let ct = ecies::encrypt::<S>(&keys.public_key(), message, &mut rng).unwrap();
    let target = SecretScalar::<S>::random(&mut rng);
    let request =
        pre::ReencryptionRequest::new(3, b"pre".to_vec(), *ct.ephemeral(), target.public_point());
    shares.shuffle(&mut rng);
    let mut partials: Vec<_> = shares
        .iter()
        .map(|s| pre::PartialReencryption::create(s, &request, &mut rng))
        .collect();
    let mut culprit = None;
    if tamper {
        // Replace node 0's C_i with another node's: a well-formed but wrong partial.
        let mut bytes = partials[0].to_bytes();
        let other = pre::PartialReencryption::create(&shares[0], &request, &mut rng).to_bytes();
        bytes[35..68].copy_from_slice(&other[35..68]);
        partials[0] = pre::PartialReencryption::from_bytes(&bytes).unwrap();
        culprit = Some(partials[0].index());
    }
    let (verified, errors) = pre::verify_all(partials, &keys, &request, &mut rng);
    match culprit {
        Some(c) => assert_eq!(errors, vec![Error::InvalidProof { culprit: c }]),
        None => assert!(errors.is_empty()),
    }
    if verified.len() < usize::from(t) {
        assert!(matches!(
            pre::combine(&verified, &keys),
            Err(Error::NotEnoughPartials { .. })
        ));
        return;
    }
    let capsule = pre::combine(&verified, &keys).unwrap();
    let decoded = pre::ReencryptedCapsule::<S>::from_bytes(&capsule.to_bytes()).unwrap();
    assert_eq!(&*decoded.decrypt(&target, &ct).unwrap(), message);
    // The capsule is useless without the target key.
    let stranger = SecretScalar::<S>::random(&mut rng);
    assert_eq!(
        decoded.decrypt(&stranger, &ct).unwrap_err(),
        Error::Decryption
    );
    // And the combined shared secret equals the full key's.
    let direct = ecies::shared_secret::<S>(&(*ct.ephemeral() * sk.expose())).unwrap();
    assert_eq!(decoded.open(&target).unwrap().as_bytes(), direct.as_bytes());
}

fn node_keys<S: Suite>(
    indices: &[u16],
    rng: &mut ChaCha20Rng,
) -> BTreeMap<NodeIndex, SecretScalar<S>> {
    indices
        .iter()
        .map(|i| (NodeIndex::new(*i).unwrap(), SecretScalar::random(rng)))
        .collect()
}

fn publics<S: Suite>(keys: &BTreeMap<NodeIndex, SecretScalar<S>>) -> BTreeMap<NodeIndex, S::Point> {
    keys.iter().map(|(i, k)| (*i, k.public_point())).collect()
}

fn reshare_keeps_public_key<S: Suite>(seed: u64) {
    // 5/3 → 7/4 with a partly new committee, then old ciphertexts still open through it.
    let mut rng = rng(seed);
    let sk = SecretScalar::<S>::random(&mut rng);
    let (old_shares, old_keys) = shamir::deal(&sk, 3, 5, &mut rng).unwrap();
    let ct = ecies::encrypt::<S>(&old_keys.public_key(), b"old ciphertext", &mut rng).unwrap();
    let old_nodes = node_keys::<S>(&[1, 2, 3, 4, 5], &mut rng);
    let new_nodes = node_keys::<S>(&[3, 4, 5, 6, 7, 8, 9], &mut rng);
    // Only 4 of the 5 old holders take part (node 2 is down).
    let dealers: BTreeMap<_, _> = publics(&old_nodes)
        .into_iter()
        .filter(|(i, _)| i.get() != 2)
        .collect();
    let config =
        CeremonyConfig::reshare(2, 4, old_keys.clone(), dealers.clone(), publics(&new_nodes))
            .unwrap();
    let dealings: Vec<_> = dealers
        .keys()
        .map(|i| {
            let share = old_shares.iter().find(|s| s.index() == *i).unwrap();
            dkg::deal(&config, *i, &old_nodes[i], Some(share), &mut rng).unwrap()
        })
        .collect();
    let mut states = Vec::new();
    let mut responses = Vec::new();
    for (j, key) in &new_nodes {
        let (response, received) = dkg::respond(&config, *j, key, &dealings, &mut rng).unwrap();
        responses.push(response);
        states.push((*j, received));
    }
    let mut outputs = Vec::new();
    let mut confirmations = Vec::new();
    for (j, received) in states {
        let (output, confirmation) = dkg::finalize(
            &config,
            &new_nodes[&j],
            &received,
            &dealings,
            &responses,
            &mut rng,
        )
        .unwrap();
        confirmations.push(confirmation.unwrap());
        outputs.push(output);
    }
    for output in &outputs {
        dkg::confirm(&config, output, &confirmations).unwrap();
        assert_eq!(output.public().public_key(), old_keys.public_key());
        assert_eq!(output.public().threshold(), 4);
        assert_eq!(output.transcript_hash(), outputs[0].transcript_hash());
    }
    let new_keys = outputs[0].public().clone();
    let new_shares: Vec<KeyShare<S>> = outputs
        .into_iter()
        .map(|o| o.into_share().unwrap())
        .collect();
    let request = DelegationRequest::new(2, b"after".to_vec(), *ct.ephemeral());
    let partials: Vec<_> = new_shares[3..]
        .iter()
        .map(|s| PartialDelegation::create(s, &request, &mut rng))
        .collect();
    let (verified, errors) = delegation::verify_all(partials, &new_keys, &request, &mut rng);
    assert!(errors.is_empty());
    let secret = delegation::combine(&verified, &new_keys).unwrap();
    assert_eq!(
        &*ecies::open_with_shared_secret(&secret, &ct).unwrap(),
        b"old ciphertext"
    );
    // Old shares are useless against the new public shares.
    let stale = PartialDelegation::create(&old_shares[3], &request, &mut rng);
    assert!(stale.verify(&new_keys, &request).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn delegation_combines_any_t_of_n((n, t) in committee(), seed in any::<u64>()) {
        delegation_any_t_of_n::<Secp256k1>(n, t, seed);
        delegation_any_t_of_n::<P256>(n, t, seed);
    }

    #[test]
    fn tampered_delegation_partial_names_its_node(
        (n, t) in committee(), seed in any::<u64>(), victim in any::<usize>(), byte in any::<usize>()
    ) {
        tampered_partial_is_named::<Secp256k1>(n, t, seed, victim, byte);
        tampered_partial_is_named::<P256>(n, t, seed, victim, byte);
    }

    #[test]
    fn reencryption_combines_any_t_of_n((n, t) in committee(), seed in any::<u64>(), tamper in any::<bool>()) {
        reencryption_any_t_of_n::<Secp256k1>(n, t, seed, tamper);
        reencryption_any_t_of_n::<P256>(n, t, seed, tamper);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn reshare_keeps_the_public_key_and_old_ciphertexts_open(seed in any::<u64>()) {
        reshare_keeps_public_key::<Secp256k1>(seed);
        reshare_keeps_public_key::<P256>(seed);
    }
}

/// Several requests verified in one batch: all honest ones verify and combine; a tampered
/// partial, or an honest partial presented for another request, is named and blocks only
/// its own request.
fn requests_verify_together<S: Suite>(requests: usize, seed: u64, fault: Option<(usize, bool)>) {
    let mut rng = rng(seed);
    let sk = SecretScalar::<S>::random(&mut rng);
    let (shares, keys) = shamir::deal(&sk, 3, 5, &mut rng).unwrap();
    let domains: Vec<_> = (0..requests)
        .map(|r| {
            let k = SecretScalar::<S>::random(&mut rng).public_point();
            DelegationRequest::new(1, vec![u8::try_from(r).unwrap()], k)
        })
        .collect();
    let mut batches: Vec<Vec<_>> = domains
        .iter()
        .map(|d| {
            shares[..3]
                .iter()
                .map(|s| PartialDelegation::create(s, d, &mut rng))
                .collect()
        })
        .collect();
    let faulty = fault.map(|(victim, swap)| {
        let victim = victim % requests;
        let culprit = batches[victim][1].index();
        if swap && requests > 1 {
            // Node 2's honest partial for the next request, presented for this one.
            let other = batches[(victim + 1) % requests][1].clone();
            batches[victim][1] = other;
        } else {
            let mut bytes = batches[victim][1].to_bytes();
            bytes[2 + 33 + 66 + 10] ^= 1; // inside the proof's response z
            batches[victim][1] = PartialDelegation::from_bytes(&bytes).unwrap();
        }
        (victim, culprit)
    });
    let results =
        delegation::verify_requests(domains.iter().zip(batches).collect(), &keys, &mut rng);
    assert_eq!(results.len(), requests);
    for (r, (verified, errors)) in results.iter().enumerate() {
        if let Some((victim, culprit)) = faulty.filter(|(v, _)| *v == r) {
            assert_eq!(
                errors,
                &vec![Error::InvalidProof { culprit }],
                "request {victim}"
            );
            assert_eq!(verified.len(), 2);
        } else {
            assert!(errors.is_empty(), "request {r}: {errors:?}");
            let point = delegation::combine_point(verified, &keys).unwrap();
            assert_eq!(point, *domains[r].ephemeral() * sk.expose());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn requests_batched_together_verify_and_name_bad_partials(
        requests in 1usize..=12, seed in any::<u64>(), fault in proptest::option::of((any::<usize>(), any::<bool>()))
    ) {
        requests_verify_together::<Secp256k1>(requests, seed, fault);
        requests_verify_together::<P256>(requests, seed, fault);
    }
}

#[test]
fn partials_are_bound_to_their_request() {
    partial_for_other_request_is_rejected::<Secp256k1>(1);
    partial_for_other_request_is_rejected::<P256>(2);
}

/// Run a reshare among `dealers` (old holders, by index) to `recipients`, with `cheater`
/// (if any) dealing bad shares to every recipient. Returns every recipient's output.
fn reshare<S: Suite>(
    old_shares: &[KeyShare<S>],
    old_keys: &tkms_crypto::PublicKeySet<S>,
    dealers: &[u16],
    recipients: &[u16],
    threshold: u16,
    cheater: Option<u16>,
    rng: &mut ChaCha20Rng,
) -> Vec<Result<dkg::CeremonyOutput<S>, Error>> {
    let old_nodes = node_keys::<S>(dealers, rng);
    let new_nodes = node_keys::<S>(recipients, rng);
    let config = CeremonyConfig::reshare(
        5,
        threshold,
        old_keys.clone(),
        publics(&old_nodes),
        publics(&new_nodes),
    )
    .unwrap();
    let victims: Vec<NodeIndex> = new_nodes.keys().copied().collect();
    let dealings: Vec<_> = old_nodes
        .iter()
        .map(|(i, key)| {
            let share = old_shares.iter().find(|s| s.index() == *i).unwrap();
            if Some(i.get()) == cheater {
                dkg::byzantine::deal_bad_shares(&config, *i, key, Some(share), &victims, false, rng)
                    .unwrap()
            } else {
                dkg::deal(&config, *i, key, Some(share), rng).unwrap()
            }
        })
        .collect();
    let (responses, states): (Vec<_>, Vec<_>) = new_nodes
        .iter()
        .map(|(j, key)| {
            let (response, received) = dkg::respond(&config, *j, key, &dealings, rng).unwrap();
            (response, (*j, received))
        })
        .unzip();
    states
        .into_iter()
        .map(|(j, received)| {
            dkg::finalize(
                &config,
                &new_nodes[&j],
                &received,
                &dealings,
                &responses,
                rng,
            )
            .map(|(output, _)| output)
        })
        .collect()
}

#[test]
fn proactive_refresh_changes_every_share_but_not_the_key() {
    let mut rng = rng(21);
    let sk = SecretScalar::<Secp256k1>::random(&mut rng);
    let (old_shares, old_keys) = shamir::deal(&sk, 3, 5, &mut rng).unwrap();
    let outputs = reshare(
        &old_shares,
        &old_keys,
        &[1, 2, 3, 4, 5],
        &[1, 2, 3, 4, 5],
        3,
        None,
        &mut rng,
    );
    for output in outputs.iter().map(|o| o.as_ref().unwrap()) {
        assert_eq!(output.public().public_key(), old_keys.public_key());
        let new = output.share().unwrap();
        let old = old_shares
            .iter()
            .find(|s| s.index() == new.index())
            .unwrap();
        // Same index, new value: a share stolen before the refresh is useless after it.
        assert_ne!(new.public_share(), old.public_share());
        assert_ne!(
            output.public().public_share(new.index()).unwrap(),
            old_keys.public_share(new.index()).unwrap()
        );
    }
}

#[test]
fn reshare_excludes_a_cheating_old_holder() {
    let mut rng = rng(22);
    let sk = SecretScalar::<P256>::random(&mut rng);
    let (old_shares, old_keys) = shamir::deal(&sk, 3, 5, &mut rng).unwrap();
    let outputs = reshare(
        &old_shares,
        &old_keys,
        &[1, 2, 3, 4, 5],
        &[6, 7, 8, 9],
        3,
        Some(2),
        &mut rng,
    );
    for output in outputs.iter().map(|o| o.as_ref().unwrap()) {
        assert_eq!(output.public().public_key(), old_keys.public_key());
        assert!(!output.qualified().contains(&NodeIndex::new(2).unwrap()));
        assert!(output
            .faults()
            .contains(&(NodeIndex::new(2).unwrap(), dkg::Fault::BadShare)));
    }
    // With only the old threshold of dealers and one of them cheating, the reshare must fail.
    let outputs = reshare(
        &old_shares,
        &old_keys,
        &[1, 2, 3],
        &[6, 7, 8],
        2,
        Some(1),
        &mut rng,
    );
    for result in outputs {
        assert!(
            matches!(
                result,
                Err(Error::NotEnoughDealers {
                    qualified: 2,
                    required: 3,
                    ..
                })
            ),
            "{result:?}"
        );
    }
}

#[test]
fn reshare_config_is_validated() {
    let mut rng = rng(23);
    let sk = SecretScalar::<Secp256k1>::random(&mut rng);
    let (_, old_keys) = shamir::deal(&sk, 3, 5, &mut rng).unwrap();
    let two = publics(&node_keys::<Secp256k1>(&[1, 2], &mut rng));
    let outsider = publics(&node_keys::<Secp256k1>(&[1, 2, 9], &mut rng));
    let new = publics(&node_keys::<Secp256k1>(&[6, 7, 8], &mut rng));
    // Fewer dealers than the old threshold; a dealer that held no share.
    assert!(matches!(
        CeremonyConfig::reshare(2, 2, old_keys.clone(), two, new.clone()),
        Err(Error::NotEnoughDealers {
            qualified: 2,
            required: 3,
            ..
        })
    ));
    assert_eq!(
        CeremonyConfig::reshare(2, 2, old_keys, outsider, new).unwrap_err(),
        Error::UnknownNode(NodeIndex::new(9).unwrap())
    );
}
