//! One proof for a node's whole batch of delegation partials (docs/PROTOCOL.md §5.1).
//!
//! A node answering `m` delegation requests `(id_j, K_j)` computes every `D_j = share_i·K_j`
//! first, then one Chaum–Pedersen proof for all of them:
//!
//! - `τ = SHA-256(frame("tkms/v1/dleq-batch") || frame(suite) || epoch(8) || i(2) || PK_i ||
//!   m(4) || Σ_j frame(id_j) || K_j || D_j)`, the transcript digest, taken once every `D_j`
//!   is fixed;
//! - weights `w_1 = 1` and, for `j ≥ 2`, `w_j` = the first 16 bytes (big-endian) of
//!   `SHA-256("tkms/v1/dleq-batch-weight" || τ || j(4))`;
//! - `K* = Σ w_j·K_j`, `D* = Σ w_j·D_j`, and a DLEQ proof that `log_G PK_i = log_{K*} D*`:
//!   `r` random, `T1 = r·G`, `T2 = r·K*`, `c = H("tkms/v1/dleq-batch"; epoch || i || τ, PK_i,
//!   T1, T2)`, `z = r + c·share_i`.
//!
//! The verifier checks `z·G = T1 + c·PK_i` and `z·K* = T2 + c·D*`, for the proofs of several
//! nodes in one variable-time multi-scalar multiplication ([`verify_batches`]) in which each
//! request's `K_j` appears once. A batch with any wrong `D_j` passes with probability about
//! `2^-128` per hash the node tries (the soundness argument is in the document). Only a
//! successful check turns partials into [`VerifiedPartialDelegation`]s, the type
//! [`crate::delegation::combine`] accepts.

use std::collections::HashMap;

use ff::{Field, PrimeField};
use group::Group;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

use crate::{
    delegation::{DelegationRequest, VerifiedPartialDelegation},
    dleq::{random_weight, DleqProof, PROOF_LEN},
    dst,
    error::{EncodingError, Error},
    hash::hash_to_scalar,
    msm::msm_vartime,
    secret::SecretScalar,
    shamir::{KeyShare, NodeIndex, PublicKeySet},
    suite::{Encoded, Suite, POINT_LEN, UNCOMPRESSED_POINT_LEN},
};

/// Encoded aggregate proof length: `index(2) || T1(33) || T2(33) || z(32)`.
pub const AGGREGATE_PROOF_LEN: usize = 2 + PROOF_LEN;

/// A node's one proof for a batch of partials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AggregateProof<S: Suite> {
    index: NodeIndex,
    proof: DleqProof<S>,
}

impl<S: Suite> AggregateProof<S> {
    /// The node that claims to have produced it.
    pub fn index(&self) -> NodeIndex {
        self.index
    }

    /// `index || T1 || T2 || z`.
    pub fn to_bytes(&self) -> [u8; AGGREGATE_PROOF_LEN] {
        crate::codec::concat(&[&self.index.to_bytes(), &self.proof.to_bytes()])
    }

    /// Strict decoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EncodingError> {
        let bytes = crate::codec::exact::<AGGREGATE_PROOF_LEN>(bytes)?;
        Ok(Self {
            index: NodeIndex::from_bytes(&bytes[..2])?,
            proof: DleqProof::from_bytes(&bytes[2..])?,
        })
    }
}

/// A node's partials `D_j` for a batch of requests, in request order, under one
/// [`AggregateProof`]: as received, not yet trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchPartials<S: Suite> {
    proof: AggregateProof<S>,
    partials: Vec<Encoded<S>>,
}

/// `D = share_i·K` for one request of a batch, with no proof of its own (the batch's
/// [`AggregateProof`] covers it). Constant-time in the share.
pub fn partial<S: Suite>(share: &KeyShare<S>, request: &DelegationRequest<S>) -> Encoded<S> {
    S::mul_secret(request.ephemeral_encoded(), share.value())
}

/// [`partial`], with its SEC1 uncompressed encoding for the wire (so the verifier checks
/// the curve equation instead of computing a square root).
pub fn partial_uncompressed<S: Suite>(
    share: &KeyShare<S>,
    request: &DelegationRequest<S>,
) -> (Encoded<S>, [u8; UNCOMPRESSED_POINT_LEN]) {
    S::mul_secret_uncompressed(request.ephemeral_encoded(), share.value())
}

impl<S: Suite> BatchPartials<S> {
    /// Node side: `D_j = share_i·K_j` for every request, then one proof for all of them.
    pub fn create(
        share: &KeyShare<S>,
        requests: &[&DelegationRequest<S>],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, Error> {
        let partials = requests.iter().map(|r| partial(share, r)).collect();
        Self::prove(share, requests, partials, rng)
    }

    /// Node side: the proof for `partials` (one per request, in order, from [`partial`]).
    /// Fails if the requests are of several epochs, if the counts differ or are zero, and
    /// (with probability about `2^-128`) on a [`Error::DegenerateBatch`], whose partials
    /// are then proved one by one.
    pub fn prove(
        share: &KeyShare<S>,
        requests: &[&DelegationRequest<S>],
        partials: Vec<Encoded<S>>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, Error> {
        Self::prove_with_nonce(share, requests, partials, &SecretScalar::random(rng))
    }

    /// [`Self::prove`] with a caller-chosen nonce `r` (known-answer tests only; `r` must never
    /// repeat).
    pub fn prove_with_nonce(
        share: &KeyShare<S>,
        requests: &[&DelegationRequest<S>],
        partials: Vec<Encoded<S>>,
        nonce: &SecretScalar<S>,
    ) -> Result<Self, Error> {
        let epoch = batch_epoch(requests, partials.len())?;
        let index = share.index();
        let public = share.public_share_encoded();
        let tau = transcript(epoch, index, public, requests, &partials);
        let weights = weights::<S>(&tau, requests.len());
        // K* = Σ w_j·K_j: public points and public weights.
        let terms: Vec<_> = requests
            .iter()
            .zip(&weights)
            .skip(1)
            .map(|(r, w)| (*r.ephemeral(), *w))
            .collect();
        let first = requests.first().map(|r| *r.ephemeral());
        let aggregate = msm_vartime::<S>(&terms) + first.unwrap_or_else(S::Point::identity);
        if bool::from(aggregate.is_identity()) {
            return Err(Error::DegenerateBatch);
        }
        let base = Encoded::new(aggregate);
        let t1 = nonce.public_encoded();
        let t2 = S::mul_secret(&base, nonce);
        let c = challenge::<S>(epoch, index, &tau, public, &t1, &t2);
        let z = *nonce.expose() + c * share.value().expose();
        Ok(Self {
            proof: AggregateProof {
                index,
                proof: DleqProof { t1, t2, z },
            },
            partials,
        })
    }

    /// A batch as received: the partials in request order, and their proof.
    pub fn new(proof: AggregateProof<S>, partials: Vec<Encoded<S>>) -> Self {
        Self { proof, partials }
    }

    /// The node that claims to have produced it.
    pub fn index(&self) -> NodeIndex {
        self.proof.index
    }

    /// The partials `D_j`, in request order.
    pub fn partials(&self) -> &[Encoded<S>] {
        &self.partials
    }

    /// The proof.
    pub fn proof(&self) -> &AggregateProof<S> {
        &self.proof
    }

    /// Check the proof against the node's public share in `keys`: every partial verified, or
    /// [`Error::InvalidProof`] naming the node.
    pub fn verify(
        self,
        keys: &PublicKeySet<S>,
        requests: &[&DelegationRequest<S>],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<VerifiedPartialDelegation<S>>, Error> {
        verify_batches(vec![(self, requests)], keys, rng)
            .pop()
            .unwrap_or(Err(Error::BatchShape {
                partials: 0,
                requests: 0,
            }))
    }
}

/// The epoch every request of a batch names, once the shape is checked.
fn batch_epoch<S: Suite>(
    requests: &[&DelegationRequest<S>],
    partials: usize,
) -> Result<u64, Error> {
    let Some(first) = requests.first() else {
        return Err(Error::BatchShape {
            partials,
            requests: 0,
        });
    };
    if partials != requests.len() {
        return Err(Error::BatchShape {
            partials,
            requests: requests.len(),
        });
    }
    if requests.iter().any(|r| r.epoch() != first.epoch()) {
        return Err(Error::MixedRequests);
    }
    Ok(first.epoch())
}

/// `τ`: the digest of everything the proof is about, taken after every `D_j` is fixed.
fn transcript<S: Suite>(
    epoch: u64,
    index: NodeIndex,
    public: &Encoded<S>,
    requests: &[&DelegationRequest<S>],
    partials: &[Encoded<S>],
) -> [u8; 32] {
    let mut h = Sha256::new();
    frame(&mut h, dst::DLEQ_BATCH);
    frame(&mut h, S::NAME.as_bytes());
    h.update(epoch.to_be_bytes());
    h.update(index.to_bytes());
    h.update(public.bytes());
    h.update(length(requests.len()));
    for (request, partial) in requests.iter().zip(partials) {
        frame(&mut h, request.request_id());
        h.update(request.ephemeral_encoded().bytes());
        h.update(partial.bytes());
    }
    h.finalize().into()
}

fn frame(h: &mut Sha256, part: &[u8]) {
    h.update(length(part.len()));
    h.update(part);
}

fn length(len: usize) -> [u8; 4] {
    u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()
}

/// `w_1 = 1`, then 128-bit weights from `τ`.
fn weights<S: Suite>(tau: &[u8; 32], count: usize) -> Vec<S::Scalar> {
    let mut out = Vec::with_capacity(count);
    out.push(S::Scalar::ONE);
    for j in 2..=count {
        let mut h = Sha256::new();
        h.update(dst::DLEQ_BATCH_WEIGHT);
        h.update(tau);
        h.update(length(j));
        let digest: [u8; 32] = h.finalize().into();
        let mut half = [0u8; 16];
        half.copy_from_slice(&digest[..16]);
        out.push(S::Scalar::from_u128(u128::from_be_bytes(half)));
    }
    out.truncate(count);
    out
}

fn challenge<S: Suite>(
    epoch: u64,
    index: NodeIndex,
    tau: &[u8; 32],
    public: &Encoded<S>,
    t1: &Encoded<S>,
    t2: &Encoded<S>,
) -> S::Scalar {
    let mut context = [0u8; 8 + 2 + 32];
    context[..8].copy_from_slice(&epoch.to_be_bytes());
    context[8..10].copy_from_slice(&index.to_bytes());
    context[10..].copy_from_slice(tau);
    hash_to_scalar::<S>(
        dst::DLEQ_BATCH,
        &[&context, public.bytes(), t1.bytes(), t2.bytes()],
    )
}

/// A batch whose shape is checked and whose weights and challenge are computed.
struct Prepared<'a, S: Suite> {
    batch: BatchPartials<S>,
    requests: &'a [&'a DelegationRequest<S>],
    public: &'a Encoded<S>,
    weights: Vec<S::Scalar>,
    c: S::Scalar,
}

/// Verify the batches of several nodes (each with the requests it answers, in order) in one
/// multi-scalar multiplication: with random 128-bit `ρ_i`, `δ_i`,
/// `Σ_i ρ_i(z_i·G − T1_i − c_i·PK_i) + δ_i(z_i·K*_i − T2_i − c_i·D*_i) = 0`, where the `G`
/// terms collapse into one and each request's `K_j` (shared by every node that answered it)
/// into one. If that fails, each node is checked on its own, so every bad batch is named.
/// Returns, per batch in input order, its verified partials or the error naming its node.
pub fn verify_batches<'a, S: Suite>(
    batches: Vec<(BatchPartials<S>, &'a [&'a DelegationRequest<S>])>,
    keys: &'a PublicKeySet<S>,
    rng: &mut impl CryptoRngCore,
) -> Vec<Result<Vec<VerifiedPartialDelegation<S>>, Error>> {
    let mut results: Vec<Option<Result<Vec<VerifiedPartialDelegation<S>>, Error>>> =
        Vec::with_capacity(batches.len());
    let mut prepared = Vec::with_capacity(batches.len());
    for (batch, requests) in batches {
        match prepare(batch, requests, keys) {
            Ok(p) => {
                prepared.push((results.len(), p));
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    let valid = prepared.is_empty() || check(prepared.iter().map(|(_, p)| p), rng);
    for (slot, p) in prepared {
        let ok = valid || check(std::iter::once(&p), rng);
        results[slot] = Some(if ok {
            Ok(verified(p))
        } else {
            Err(Error::InvalidProof {
                culprit: p.batch.index(),
            })
        });
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or(Err(Error::BatchShape {
                partials: 0,
                requests: 0,
            }))
        })
        .collect()
}

fn prepare<'a, S: Suite>(
    batch: BatchPartials<S>,
    requests: &'a [&'a DelegationRequest<S>],
    keys: &'a PublicKeySet<S>,
) -> Result<Prepared<'a, S>, Error> {
    let epoch = batch_epoch(requests, batch.partials.len())?;
    let index = batch.index();
    let public = keys.public_share_encoded(index)?;
    let tau = transcript(epoch, index, public, requests, &batch.partials);
    let weights = weights::<S>(&tau, requests.len());
    let proof = &batch.proof.proof;
    let c = challenge::<S>(epoch, index, &tau, public, &proof.t1, &proof.t2);
    Ok(Prepared {
        batch,
        requests,
        public,
        weights,
        c,
    })
}

/// One multi-scalar multiplication over `batches`; `true` if every proof holds (except with
/// probability about `2^-128` over the verifier's weights).
fn check<'p, 'a: 'p, S: Suite>(
    batches: impl Iterator<Item = &'p Prepared<'a, S>>,
    rng: &mut impl CryptoRngCore,
) -> bool {
    let mut g_coefficient = S::Scalar::ZERO;
    // Each distinct K_j once, found by its (canonical) encoding.
    let mut shared: HashMap<[u8; POINT_LEN], usize> = HashMap::new();
    let mut bases: Vec<(S::Point, S::Scalar)> = Vec::new();
    let mut terms = Vec::new();
    for p in batches {
        let proof = &p.batch.proof.proof;
        let rho = random_weight::<S>(rng);
        let delta = random_weight::<S>(rng);
        g_coefficient += rho * proof.z;
        terms.push((*p.public.point(), -(rho * p.c)));
        terms.push((*proof.t1.point(), -rho));
        terms.push((*proof.t2.point(), -delta));
        let on_base = delta * proof.z;
        let on_image = -(delta * p.c);
        for ((request, partial), w) in p.requests.iter().zip(&p.batch.partials).zip(&p.weights) {
            let k = request.ephemeral_encoded();
            let slot = *shared.entry(*k.bytes()).or_insert_with(|| {
                bases.push((*k.point(), S::Scalar::ZERO));
                bases.len() - 1
            });
            bases[slot].1 += on_base * w;
            terms.push((*partial.point(), on_image * w));
        }
    }
    terms.extend(bases);
    let sum = msm_vartime::<S>(&terms) + S::mul_by_generator(&g_coefficient);
    bool::from(sum.is_identity())
}

fn verified<S: Suite>(p: Prepared<'_, S>) -> Vec<VerifiedPartialDelegation<S>> {
    let index = p.batch.index();
    p.batch
        .partials
        .into_iter()
        .zip(p.requests)
        .map(|(partial, request)| {
            VerifiedPartialDelegation::checked(index, *partial.point(), request)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rand_core::OsRng;

    use super::*;
    use crate::{
        shamir::{self, Commitment},
        Secp256k1, P256,
    };

    fn roundtrip<S: Suite>() {
        let sk = SecretScalar::<S>::random(&mut OsRng);
        let (shares, keys) = shamir::deal(&sk, 2, 3, &mut OsRng).unwrap();
        let requests: Vec<_> = (0..5u8)
            .map(|j| {
                DelegationRequest::<S>::new(
                    3,
                    vec![j],
                    SecretScalar::<S>::random(&mut OsRng).public_point(),
                )
            })
            .collect();
        let refs: Vec<_> = requests.iter().collect();
        let batch = BatchPartials::create(&shares[1], &refs, &mut OsRng).unwrap();
        let proof = AggregateProof::<S>::from_bytes(&batch.proof().to_bytes()).unwrap();
        assert_eq!(&proof, batch.proof());
        let verified = batch.clone().verify(&keys, &refs, &mut OsRng).unwrap();
        assert_eq!(verified.len(), 5);
        // Bound to the node, the epoch, the order and the ids.
        let other = BatchPartials::new(
            AggregateProof {
                index: shares[0].index(),
                ..proof
            },
            batch.partials().to_vec(),
        );
        assert!(other.verify(&keys, &refs, &mut OsRng).is_err());
        let mut swapped = refs.clone();
        swapped.swap(0, 1);
        let mut partials = batch.partials().to_vec();
        partials.swap(0, 1);
        assert!(BatchPartials::new(proof, partials)
            .verify(&keys, &swapped, &mut OsRng)
            .is_err());
        let renamed: Vec<_> = requests
            .iter()
            .map(|r| DelegationRequest::with_encoded(3, b"x".to_vec(), *r.ephemeral_encoded()))
            .collect();
        let renamed: Vec<_> = renamed.iter().collect();
        assert!(batch.clone().verify(&keys, &renamed, &mut OsRng).is_err());
        let later: Vec<_> = requests
            .iter()
            .map(|r| {
                DelegationRequest::with_encoded(4, r.request_id().to_vec(), *r.ephemeral_encoded())
            })
            .collect();
        let later: Vec<_> = later.iter().collect();
        assert!(batch.verify(&keys, &later, &mut OsRng).is_err());
    }

    #[test]
    fn a_batch_proof_verifies_and_is_bound_to_its_node_order_ids_and_epoch() {
        roundtrip::<Secp256k1>();
        roundtrip::<P256>();
    }

    #[test]
    fn shapes_are_checked() {
        let sk = SecretScalar::<Secp256k1>::random(&mut OsRng);
        let (shares, _) = shamir::deal(&sk, 1, 1, &mut OsRng).unwrap();
        assert_eq!(
            BatchPartials::create(&shares[0], &[], &mut OsRng).unwrap_err(),
            Error::BatchShape {
                partials: 0,
                requests: 0
            }
        );
        let k = sk.public_point();
        let a = DelegationRequest::new(1, b"a".to_vec(), k);
        let b = DelegationRequest::new(2, b"b".to_vec(), k);
        assert_eq!(
            BatchPartials::create(&shares[0], &[&a, &b], &mut OsRng).unwrap_err(),
            Error::MixedRequests
        );
        let batch = BatchPartials::create(&shares[0], &[&a], &mut OsRng).unwrap();
        assert_eq!(
            BatchPartials::new(*batch.proof(), Vec::new())
                .verify(
                    &PublicKeySet::new(Commitment::new(vec![k]).unwrap(), [shares[0].index()]),
                    &[&a],
                    &mut OsRng
                )
                .unwrap_err(),
            Error::BatchShape {
                partials: 0,
                requests: 1
            }
        );
    }
}
