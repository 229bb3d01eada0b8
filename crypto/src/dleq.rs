//! Chaum–Pedersen proofs of discrete-log equality, `log_G X = log_H Y` (docs/PROTOCOL.md
//! §5 "Delegation partial"; Chaum & Pedersen, "Wallet databases with observers", CRYPTO '92).
//!
//! Prover: `w` random, `T1 = w·G`, `T2 = w·H`,
//! `c = H("tkms/v1/dleq", ctx, X, H, Y, T1, T2)`, `z = w + c·x`.
//! Verifier: `z·G = T1 + c·X` and `z·H = T2 + c·Y`.
//!
//! The proof carries the commitments `(T1, T2, z)` rather than `(c, z)`, so the two equations
//! — and many proofs — are checked in one variable-time multi-scalar multiplication with
//! 128-bit weights ([`verify_batch`]); a single proof's weight is derived by hashing the proof
//! (sound in the random-oracle model), so [`DleqProof::verify`] needs no randomness.

use ff::{Field, PrimeField};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

use crate::{
    dst,
    error::EncodingError,
    hash::hash_to_scalar,
    msm::msm_vartime,
    secret::SecretScalar,
    suite::{Encoded, Suite, POINT_LEN, SCALAR_LEN},
};

/// Encoded proof length: `T1(33) || T2(33) || z(32)`.
pub const PROOF_LEN: usize = 2 * POINT_LEN + SCALAR_LEN;

/// A DLEQ proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DleqProof<S: Suite> {
    pub(crate) t1: Encoded<S>,
    pub(crate) t2: Encoded<S>,
    pub(crate) z: S::Scalar,
}

/// The public statement a proof is about: `X = x·G`, `Y = x·H`, under context `ctx`.
#[derive(Clone, Copy, Debug)]
pub struct Statement<'a, S: Suite> {
    /// Domain-separating context (epoch, node index, request id...).
    pub context: &'a [u8],
    /// The second base `H`.
    pub base: &'a Encoded<S>,
    /// `X = x·G`.
    pub public: &'a Encoded<S>,
    /// `Y = x·H`.
    pub image: &'a Encoded<S>,
}

impl<S: Suite> DleqProof<S> {
    /// Prove knowledge of `x` with `X = x·G` and `Y = x·H`.
    pub fn prove(
        secret: &SecretScalar<S>,
        statement: &Statement<'_, S>,
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        Self::prove_with_nonce(secret, statement, &SecretScalar::random(rng))
    }

    /// Prove with a caller-chosen nonce `w` (known-answer tests only; `w` must never repeat).
    pub fn prove_with_nonce(
        secret: &SecretScalar<S>,
        statement: &Statement<'_, S>,
        nonce: &SecretScalar<S>,
    ) -> Self {
        let t1 = nonce.public_encoded();
        let t2 = S::mul_secret(statement.base, nonce);
        let c = challenge(statement, &t1, &t2);
        let z = *nonce.expose() + c * secret.expose();
        Self { t1, t2, z }
    }

    /// Verify the proof for `statement`.
    pub fn verify(&self, statement: &Statement<'_, S>) -> bool {
        let c = challenge(statement, &self.t1, &self.t2);
        // z·G - T1 - c·X + δ(z·H - c·Y - T2) = 0, δ a 128-bit weight bound to the proof.
        let mut h = Sha256::new();
        h.update(dst::BATCH);
        h.update(S::encode_scalar(&c));
        h.update(S::encode_scalar(&self.z));
        let digest: [u8; 32] = h.finalize().into();
        let mut weight = [0u8; 16];
        weight.copy_from_slice(&digest[..16]);
        let delta = S::Scalar::from_u128(u128::from_be_bytes(weight));
        let sum = S::mul_by_generator(&self.z) - self.t1.point()
            + msm_vartime::<S>(&[
                (*statement.public.point(), -c),
                (*statement.base.point(), delta * self.z),
                (*statement.image.point(), -(delta * c)),
                (*self.t2.point(), -delta),
            ]);
        bool::from(group::Group::is_identity(&sum))
    }

    /// The challenge `c` this proof answers (for known-answer tests).
    pub fn challenge(&self, statement: &Statement<'_, S>) -> S::Scalar {
        challenge(statement, &self.t1, &self.t2)
    }

    /// The response `z`.
    pub fn response(&self) -> &S::Scalar {
        &self.z
    }

    /// `T1 || T2 || z`.
    pub fn to_bytes(&self) -> [u8; PROOF_LEN] {
        crate::codec::concat(&[self.t1.bytes(), self.t2.bytes(), &S::encode_scalar(&self.z)])
    }

    /// Strict decoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EncodingError> {
        let bytes = crate::codec::exact::<PROOF_LEN>(bytes)?;
        Ok(Self {
            t1: Encoded::from_bytes(&bytes[..POINT_LEN])?,
            t2: Encoded::from_bytes(&bytes[POINT_LEN..2 * POINT_LEN])?,
            z: S::decode_scalar(&bytes[2 * POINT_LEN..])?,
        })
    }
}

fn challenge<S: Suite>(
    statement: &Statement<'_, S>,
    t1: &Encoded<S>,
    t2: &Encoded<S>,
) -> S::Scalar {
    hash_to_scalar::<S>(
        dst::DLEQ,
        &[
            statement.context,
            statement.public.bytes(),
            statement.base.bytes(),
            statement.image.bytes(),
            t1.bytes(),
            t2.bytes(),
        ],
    )
}

/// Check many proofs at once: with random 128-bit weights `ρ_j`, `δ_j`,
/// `Σ_j ρ_j(z_j·G - c_j·X_j - T1_j) + δ_j(z_j·H_j - c_j·Y_j - T2_j) = 0`, where all `G` terms
/// collapse into one generator multiplication, and the terms of a point several proofs share
/// (the `K` of one request, a node's public share `X` across requests) into one. `true` means
/// every proof is valid except with probability about `2^-128`; on `false`, check proofs one
/// by one to find the culprits.
pub fn verify_batch<S: Suite>(
    items: &[(Statement<'_, S>, &DleqProof<S>)],
    rng: &mut impl CryptoRngCore,
) -> bool {
    let mut g_coefficient = S::Scalar::ZERO;
    // Shared points, found by their (canonical) encoding.
    let mut shared: Vec<(&Encoded<S>, S::Scalar)> = Vec::new();
    let mut terms = Vec::with_capacity(items.len() * 3 + 8);
    for (statement, proof) in items {
        let c = challenge(statement, &proof.t1, &proof.t2);
        let rho = random_weight::<S>(rng);
        let delta = random_weight::<S>(rng);
        g_coefficient += rho * proof.z;
        add_shared(&mut shared, statement.base, delta * proof.z);
        add_shared(&mut shared, statement.public, -(rho * c));
        terms.push((*proof.t1.point(), -rho));
        terms.push((*statement.image.point(), -(delta * c)));
        terms.push((*proof.t2.point(), -delta));
    }
    terms.extend(shared.into_iter().map(|(p, c)| (*p.point(), c)));
    let sum = msm_vartime::<S>(&terms) + S::mul_by_generator(&g_coefficient);
    bool::from(group::Group::is_identity(&sum))
}

/// Add `coefficient·point` to the shared points' terms.
fn add_shared<'a, S: Suite>(
    shared: &mut Vec<(&'a Encoded<S>, S::Scalar)>,
    point: &'a Encoded<S>,
    coefficient: S::Scalar,
) {
    match shared.iter_mut().find(|(p, _)| p.bytes() == point.bytes()) {
        Some((_, sum)) => *sum += coefficient,
        None => shared.push((point, coefficient)),
    }
}

/// A random 128-bit weight (enough for 2^-128 batch soundness; half the cost of a full scalar
/// in the variable-time multi-scalar multiplication).
pub(crate) fn random_weight<S: Suite>(rng: &mut impl CryptoRngCore) -> S::Scalar {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    S::Scalar::from_u128(u128::from_be_bytes(bytes))
}
