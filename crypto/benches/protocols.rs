//! Criterion benchmarks of every protocol operation (secp256k1, the production suite; P-256
//! for the main ones). Run: `cargo bench -p tkms-crypto --bench protocols`.
//! Results and the machine they were measured on: `docs/BENCHMARKS.md`.

#![allow(
    clippy::unwrap_used,
    clippy::semicolon_if_nothing_returned,
    missing_docs
)] // benchmark harness

use std::collections::BTreeMap;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use k256::elliptic_curve::sec1::FromEncodedPoint;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tkms_crypto::{
    aggregate,
    delegation::{self, DelegationRequest, PartialDelegation},
    dkg::{self, CeremonyConfig, Dealing},
    ecies, pre, shamir,
    suite::Encoded,
    KeyShare, NodeIndex, PublicKeySet, Secp256k1, SecretScalar, Suite, P256,
};

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(42)
}

fn setup<S: Suite>(t: u16, n: u16) -> (Vec<KeyShare<S>>, PublicKeySet<S>, S::Point) {
    let mut rng = rng();
    let sk = SecretScalar::<S>::random(&mut rng);
    let (shares, keys) = shamir::deal(&sk, t, n, &mut rng).unwrap();
    let k = SecretScalar::<S>::random(&mut rng).public_point();
    (shares, keys, k)
}

fn baseline(c: &mut Criterion) {
    let mut rng = rng();
    let mut group = c.benchmark_group("baseline/secp256k1");
    let s1 = SecretScalar::<Secp256k1>::random(&mut rng);
    let s2 = SecretScalar::<Secp256k1>::random(&mut rng);
    let p = SecretScalar::<Secp256k1>::random(&mut rng).public_point();
    group.bench_function("scalar_mul", |b| b.iter(|| black_box(p) * s1.expose()));
    group.bench_function("two_scalar_muls", |b| {
        b.iter(|| (black_box(p) * s1.expose(), black_box(p) * s2.expose()))
    });
    let q = SecretScalar::<Secp256k1>::random(&mut rng).public_point();
    let r = SecretScalar::<Secp256k1>::random(&mut rng).public_point();
    group.bench_function("lincomb_2", |b| {
        b.iter(|| Secp256k1::lincomb(&[(black_box(p), *s1.expose()), (q, *s2.expose())]))
    });
    group.bench_function("lincomb_3", |b| {
        b.iter(|| {
            Secp256k1::lincomb(&[
                (black_box(p), *s1.expose()),
                (q, *s2.expose()),
                (r, *s1.expose()),
            ])
        })
    });
    group.bench_function("encode_point", |b| {
        b.iter(|| Secp256k1::encode_point(&black_box(p)))
    });
    group.bench_function("decode_point", |b| {
        let bytes = Secp256k1::encode_point(&p);
        b.iter(|| Secp256k1::decode_point(&black_box(bytes)).unwrap())
    });
    group.bench_function("hash_to_scalar_5_points", |b| {
        let bytes = Secp256k1::encode_point(&p);
        b.iter(|| {
            tkms_crypto::hash::hash_to_scalar::<Secp256k1>(
                b"tkms/v1/dleq",
                &[b"ctx", &bytes, &bytes, &bytes, &bytes, &bytes],
            )
        })
    });
    group.bench_function("mul_by_generator", |b| {
        b.iter(|| Secp256k1::mul_by_generator(black_box(s1.expose())))
    });
    // The node's secret multiplications, encoded: k256 and the libsecp256k1 path the suite
    // uses (`Suite::mul_secret`, `Suite::mul_generator_secret`).
    let encoded = Encoded::<Secp256k1>::new(p);
    group.bench_function("secret multiplication s·P encoded/k256", |b| {
        b.iter(|| Encoded::<Secp256k1>::new(*black_box(&encoded).point() * s1.expose()))
    });
    group.bench_function("secret multiplication s·P encoded/libsecp256k1", |b| {
        b.iter(|| Secp256k1::mul_secret(black_box(&encoded), &s1))
    });
    group.bench_function("secret multiplication s·G encoded/k256", |b| {
        b.iter(|| Encoded::<Secp256k1>::new(black_box(&s1).public_point()))
    });
    group.bench_function("secret multiplication s·G encoded/libsecp256k1", |b| {
        b.iter(|| Secp256k1::mul_generator_secret(black_box(&s1)))
    });
    // Decompressing a point: k256's square root, and the suite's (libsecp256k1's).
    let compressed = *encoded.bytes();
    group.bench_function("point decompression/k256", |b| {
        b.iter(|| {
            let sec1 = k256::EncodedPoint::from_bytes(black_box(compressed)).unwrap();
            Option::<k256::AffinePoint>::from(k256::AffinePoint::from_encoded_point(&sec1)).unwrap()
        })
    });
    group.bench_function("point decompression/libsecp256k1", |b| {
        b.iter(|| Secp256k1::decode_point(black_box(&compressed)).unwrap())
    });
    group.finish();
}

fn ecies_ops<S: Suite>(c: &mut Criterion) {
    let mut rng = rng();
    let sk = SecretScalar::<S>::random(&mut rng);
    let pk = sk.public_point();
    let msg = [7u8; 32];
    let ct = ecies::encrypt::<S>(&pk, &msg, &mut rng).unwrap();
    let mut group = c.benchmark_group(format!("ecies/{}", S::NAME));
    group.bench_function("encrypt_32B", |b| {
        b.iter(|| ecies::encrypt::<S>(&pk, &msg, &mut rng).unwrap())
    });
    group.bench_function("decrypt_32B", |b| {
        b.iter(|| ecies::decrypt(&sk, &ct).unwrap())
    });
    group.finish();
}

fn delegation_ops<S: Suite>(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("delegation/{}", S::NAME));
    let (shares, keys, k) = setup::<S>(3, 5);
    let request = DelegationRequest::new(1, b"bench".to_vec(), k);
    let mut rng = rng();
    group.bench_function("partial_with_proof", |b| {
        b.iter(|| PartialDelegation::create(&shares[0], &request, &mut rng))
    });
    let partial = PartialDelegation::create(&shares[0], &request, &mut rng);
    group.bench_function("verify_one", |b| {
        b.iter_batched(
            || partial.clone(),
            |p| p.verify(&keys, &request).unwrap(),
            BatchSize::SmallInput,
        )
    });
    for t in [3u16, 7, 11] {
        let n = t + t / 2;
        let (shares, keys, k) = setup::<S>(t, n);
        let request = DelegationRequest::new(1, b"bench".to_vec(), k);
        let partials: Vec<_> = shares[..usize::from(t)]
            .iter()
            .map(|s| PartialDelegation::create(s, &request, &mut rng))
            .collect();
        group.bench_with_input(
            BenchmarkId::new("verify_batch", t),
            &partials,
            |b, partials| {
                b.iter_batched(
                    || partials.clone(),
                    |p| {
                        let (ok, errors) = delegation::verify_all(p, &keys, &request, &mut rng);
                        assert!(errors.is_empty());
                        ok
                    },
                    BatchSize::SmallInput,
                )
            },
        );
        let verified = delegation::verify_all(partials, &keys, &request, &mut rng).0;
        group.bench_with_input(BenchmarkId::new("combine", t), &verified, |b, v| {
            b.iter(|| delegation::combine(v, &keys).unwrap())
        });
        if t == 3 {
            // Nodes 1, 2 and 5 of five: weights 15/6, -10/6, 1/6, so one multiplication by 6⁻¹
            // after the integer sum.
            let (shares, keys, k) = setup::<S>(3, 5);
            let request = DelegationRequest::new(1, b"bench".to_vec(), k);
            let partials: Vec<_> = [&shares[0], &shares[1], &shares[4]]
                .into_iter()
                .map(|s| PartialDelegation::create(s, &request, &mut rng))
                .collect();
            let verified = delegation::verify_all(partials, &keys, &request, &mut rng).0;
            group.bench_with_input(
                BenchmarkId::new("combine nodes 1 2 5", t),
                &verified,
                |b, v| b.iter(|| delegation::combine(v, &keys).unwrap()),
            );
        }
    }
    group.finish();
}

/// `m` delegation requests of epoch 1 with random ephemeral keys.
fn batch_requests<S: Suite>(m: usize, rng: &mut ChaCha20Rng) -> Vec<DelegationRequest<S>> {
    (0..m)
        .map(|j| {
            DelegationRequest::new(
                1,
                format!("request {j}").into_bytes(),
                SecretScalar::<S>::random(rng).public_point(),
            )
        })
        .collect()
}

/// A batch of `m` delegations answered by `t = 3` nodes, from and to wire bytes as the node
/// and the manager handle them: per node, `m` partials each with its proof against `m`
/// partials (65-byte uncompressed) under one aggregated proof (docs/PROTOCOL.md §5.1); per
/// manager, the three nodes' answers decoded and checked per item (one MSM for the whole
/// batch, as `delegation::verify_requests`) against one aggregate proof per node (one MSM).
fn batch_ops(c: &mut Criterion) {
    type S = Secp256k1;
    let mut group = c.benchmark_group("delegation batch/secp256k1");
    let mut rng = rng();
    let (shares, keys, _) = setup::<S>(3, 5);
    for m in [1usize, 8, 64] {
        if m == 64 {
            group.sample_size(20);
        }
        let requests = batch_requests::<S>(m, &mut rng);
        let refs: Vec<&DelegationRequest<S>> = requests.iter().collect();
        group.bench_function(
            BenchmarkId::new("node, per item: partials with proofs", m),
            |b| {
                b.iter(|| {
                    requests
                        .iter()
                        .map(|r| PartialDelegation::create(&shares[0], r, &mut rng).to_bytes())
                        .collect::<Vec<_>>()
                })
            },
        );
        let aggregated = |share: &KeyShare<S>, rng: &mut ChaCha20Rng| {
            let (partials, wire): (Vec<_>, Vec<_>) = requests
                .iter()
                .map(|r| aggregate::partial_uncompressed(share, r))
                .unzip();
            let batch = aggregate::BatchPartials::prove(share, &refs, partials, rng).unwrap();
            (batch.proof().to_bytes(), wire)
        };
        group.bench_function(
            BenchmarkId::new("node, aggregated: partials, one proof", m),
            |b| b.iter(|| aggregated(&shares[0], &mut rng)),
        );
        let per_item: Vec<Vec<_>> = requests
            .iter()
            .map(|r| {
                shares[..3]
                    .iter()
                    .map(|s| PartialDelegation::create(s, r, &mut rng).to_bytes())
                    .collect()
            })
            .collect();
        group.bench_function(
            BenchmarkId::new("manager, per item: decode, verify 3 nodes", m),
            |b| {
                b.iter(|| {
                    let requests = requests
                        .iter()
                        .zip(&per_item)
                        .map(|(r, answers)| {
                            let partials = answers
                                .iter()
                                .map(|a| PartialDelegation::<S>::from_bytes(a).unwrap())
                                .collect();
                            (r, partials)
                        })
                        .collect();
                    let results = delegation::verify_requests(requests, &keys, &mut rng);
                    assert!(results.iter().all(|(_, bad)| bad.is_empty()));
                    results
                })
            },
        );
        let answers: Vec<_> = shares[..3]
            .iter()
            .map(|s| aggregated(s, &mut rng))
            .collect();
        group.bench_function(
            BenchmarkId::new("manager, aggregated: decode, verify 3 nodes", m),
            |b| {
                b.iter(|| {
                    let batches = answers
                        .iter()
                        .map(|(proof, wire)| {
                            let proof = aggregate::AggregateProof::<S>::from_bytes(proof).unwrap();
                            let partials = wire
                                .iter()
                                .map(|d| Encoded::<S>::from_uncompressed(d).unwrap())
                                .collect();
                            (
                                aggregate::BatchPartials::new(proof, partials),
                                refs.as_slice(),
                            )
                        })
                        .collect();
                    let results = aggregate::verify_batches(batches, &keys, &mut rng);
                    assert!(results.iter().all(Result::is_ok));
                    results
                })
            },
        );
    }
    group.finish();
}

fn reencryption_ops<S: Suite>(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("reencryption/{}", S::NAME));
    let mut rng = rng();
    let target = SecretScalar::<S>::random(&mut rng);
    for t in [3u16, 7, 11] {
        let n = t + t / 2;
        let (shares, keys, k) = setup::<S>(t, n);
        let request = pre::ReencryptionRequest::new(1, b"bench".to_vec(), k, target.public_point());
        if t == 3 {
            group.bench_function("partial_with_proof", |b| {
                b.iter(|| pre::PartialReencryption::create(&shares[0], &request, &mut rng))
            });
            let p = pre::PartialReencryption::create(&shares[0], &request, &mut rng);
            group.bench_function("verify_one", |b| {
                b.iter_batched(
                    || p.clone(),
                    |p| p.verify(&keys, &request, &mut rng).unwrap(),
                    BatchSize::SmallInput,
                )
            });
        }
        let partials: Vec<_> = shares[..usize::from(t)]
            .iter()
            .map(|s| pre::PartialReencryption::create(s, &request, &mut rng))
            .collect();
        let verified = pre::verify_all(partials, &keys, &request, &mut rng).0;
        group.bench_with_input(BenchmarkId::new("combine", t), &verified, |b, v| {
            b.iter(|| pre::combine(v, &keys).unwrap())
        });
        if t == 3 {
            let capsule = pre::combine(&verified, &keys).unwrap();
            group.bench_function("open", |b| b.iter(|| capsule.open(&target).unwrap()));
        }
    }
    group.finish();
}

type Nodes<S> = BTreeMap<NodeIndex, SecretScalar<S>>;

fn ceremony<S: Suite>(n: u16) -> (CeremonyConfig<S>, Nodes<S>) {
    let mut rng = rng();
    let nodes: Nodes<S> = (1..=n)
        .map(|i| (NodeIndex::new(i).unwrap(), SecretScalar::random(&mut rng)))
        .collect();
    let committee = nodes.iter().map(|(i, k)| (*i, k.public_point())).collect();
    (
        CeremonyConfig::dkg(1, n * 2 / 3 + 1, committee).unwrap(),
        nodes,
    )
}

fn dkg_ops(c: &mut Criterion) {
    let mut group = c.benchmark_group("dkg/secp256k1");
    group.sample_size(10);
    for n in [5u16, 16] {
        let (config, nodes) = ceremony::<Secp256k1>(n);
        let mut rng = rng();
        let first = NodeIndex::new(1).unwrap();
        // Per node, per round.
        group.bench_function(BenchmarkId::new("deal_one_node", n), |b| {
            b.iter(|| dkg::deal(&config, first, &nodes[&first], None, &mut rng).unwrap())
        });
        let dealings: Vec<Dealing<Secp256k1>> = nodes
            .iter()
            .map(|(i, k)| dkg::deal(&config, *i, k, None, &mut rng).unwrap())
            .collect();
        group.bench_function(BenchmarkId::new("respond_one_node", n), |b| {
            b.iter(|| dkg::respond(&config, first, &nodes[&first], &dealings, &mut rng).unwrap())
        });
        let responses: Vec<_> = nodes
            .iter()
            .map(|(j, k)| dkg::respond(&config, *j, k, &dealings, &mut rng).unwrap().0)
            .collect();
        group.bench_function(BenchmarkId::new("finalize_one_node", n), |b| {
            b.iter_batched(
                || {
                    dkg::respond(&config, first, &nodes[&first], &dealings, &mut rng)
                        .unwrap()
                        .1
                },
                |received| {
                    let mut rng = ChaCha20Rng::seed_from_u64(7);
                    dkg::finalize(
                        &config,
                        &nodes[&first],
                        &received,
                        &dealings,
                        &responses,
                        &mut rng,
                    )
                    .unwrap()
                },
                BatchSize::SmallInput,
            )
        });
        // The whole ceremony, every node's work in sequence (CPU total of the committee).
        group.bench_function(BenchmarkId::new("all_rounds_all_nodes", n), |b| {
            b.iter(|| {
                let dealings: Vec<_> = nodes
                    .iter()
                    .map(|(i, k)| dkg::deal(&config, *i, k, None, &mut rng).unwrap())
                    .collect();
                let (responses, states): (Vec<_>, Vec<_>) = nodes
                    .iter()
                    .map(|(j, k)| dkg::respond(&config, *j, k, &dealings, &mut rng).unwrap())
                    .unzip();
                let results: Vec<_> = nodes
                    .iter()
                    .zip(states)
                    .map(|((_, k), s)| {
                        dkg::finalize(&config, k, &s, &dealings, &responses, &mut rng).unwrap()
                    })
                    .collect();
                let confirmations: Vec<_> = results.iter().filter_map(|(_, c)| *c).collect();
                for (output, _) in &results {
                    dkg::confirm(&config, output, &confirmations).unwrap();
                }
            });
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    baseline(c);
    ecies_ops::<Secp256k1>(c);
    ecies_ops::<P256>(c);
    delegation_ops::<Secp256k1>(c);
    delegation_ops::<P256>(c);
    batch_ops(c);
    reencryption_ops::<Secp256k1>(c);
    reencryption_ops::<P256>(c);
    dkg_ops(c);
}

criterion_group!(protocol_benches, benches);
criterion_main!(protocol_benches);
