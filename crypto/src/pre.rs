//! Threshold proxy re-encryption to a target EC key (docs/PROTOCOL.md §6).
//!
//! For a ciphertext with ephemeral key `K` under the cluster key and a target `B = b·G`, node
//! `i` returns `R_i = r_i·G`, `C_i = share_i·K + r_i·B` and a proof of knowledge of
//! `(share_i, r_i)` for the three relations `PK_i = share_i·G`, `R_i = r_i·G`,
//! `C_i = share_i·K + r_i·B` (`a, b'` random; `T1 = a·G`, `T2 = b'·G`, `T3 = a·K + b'·B`;
//! `c = H(...)`; `z1 = a + c·share_i`, `z2 = b' + c·r_i`). Combining `t` verified partials
//! gives `R = Σ λ_i·R_i`, `C = Σ λ_i·C_i = S + r·B`; the target opens with `S = C - b·R`.
//! The combiner never learns `S`.

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::{
    delegation::{proof_context, select},
    dleq::random_weight,
    dst,
    ecies::{self, Ciphertext},
    error::Error,
    hash::hash_to_scalar,
    msm::msm_vartime,
    secret::{SecretScalar, SharedSecret},
    shamir::{KeyShare, NodeIndex, PublicKeySet, ZeroInterpolation},
    suite::{Encoded, Suite, POINT_LEN, SCALAR_LEN},
};

/// What a re-encryption partial is bound to: epoch, request id, capsule `K`, target `B`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReencryptionRequest<S: Suite> {
    epoch: u64,
    request_id: Vec<u8>,
    ephemeral: Encoded<S>,
    target: Encoded<S>,
}

impl<S: Suite> ReencryptionRequest<S> {
    /// Re-encrypt the capsule `K` to `target` under `epoch`.
    pub fn new(
        epoch: u64,
        request_id: impl Into<Vec<u8>>,
        ephemeral: S::Point,
        target: S::Point,
    ) -> Self {
        Self::with_encoded(
            epoch,
            request_id,
            Encoded::new(ephemeral),
            Encoded::new(target),
        )
    }

    /// Like [`ReencryptionRequest::new`] with points as decoded from the wire.
    pub fn with_encoded(
        epoch: u64,
        request_id: impl Into<Vec<u8>>,
        ephemeral: Encoded<S>,
        target: Encoded<S>,
    ) -> Self {
        Self {
            epoch,
            request_id: request_id.into(),
            ephemeral,
            target,
        }
    }

    /// The capsule `K`.
    pub fn ephemeral(&self) -> &S::Point {
        self.ephemeral.point()
    }

    /// The target key `B`.
    pub fn target(&self) -> &S::Point {
        self.target.point()
    }
}

/// Encoded proof length: `T1, T2, T3 (33 each) || z1, z2 (32 each)`.
pub const PROOF_LEN: usize = 3 * POINT_LEN + 2 * SCALAR_LEN;
/// Encoded partial length: `index(2) || R_i(33) || C_i(33) || proof`.
pub const PARTIAL_LEN: usize = 2 + 2 * POINT_LEN + PROOF_LEN;

/// Proof of knowledge of `(share_i, r_i)` for the three relations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReencryptionProof<S: Suite> {
    t1: Encoded<S>,
    t2: Encoded<S>,
    t3: Encoded<S>,
    z1: S::Scalar,
    z2: S::Scalar,
}

/// A node's re-encryption partial as received: not yet trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialReencryption<S: Suite> {
    index: NodeIndex,
    r: Encoded<S>,
    c: Encoded<S>,
    proof: ReencryptionProof<S>,
}

/// A re-encryption partial whose proof has been checked; the only kind [`combine`] accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPartialReencryption<S: Suite> {
    index: NodeIndex,
    r: S::Point,
    c: S::Point,
    request: ReencryptionRequest<S>,
}

impl<S: Suite> VerifiedPartialReencryption<S> {
    /// The node that produced it.
    pub fn index(&self) -> NodeIndex {
        self.index
    }
}

/// `e = H("tkms/v1/pre", ctx, PK_i, K, B, R_i, C_i, T1, T2, T3)`.
fn challenge<S: Suite>(
    context: &[u8],
    public_share: &Encoded<S>,
    request: &ReencryptionRequest<S>,
    r: &Encoded<S>,
    c: &Encoded<S>,
    t: [&Encoded<S>; 3],
) -> S::Scalar {
    hash_to_scalar::<S>(
        dst::PRE,
        &[
            context,
            public_share.bytes(),
            request.ephemeral.bytes(),
            request.target.bytes(),
            r.bytes(),
            c.bytes(),
            t[0].bytes(),
            t[1].bytes(),
            t[2].bytes(),
        ],
    )
}

impl<S: Suite> PartialReencryption<S> {
    /// Node side: `R_i`, `C_i` and the proof.
    pub fn create(
        share: &KeyShare<S>,
        request: &ReencryptionRequest<S>,
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        let r_secret = SecretScalar::<S>::random(rng);
        let a = SecretScalar::<S>::random(rng);
        let b = SecretScalar::<S>::random(rng);
        let (k, target) = (*request.ephemeral(), *request.target());
        // Secret scalars: constant-time. The two-term sums stay with k256's GLV `lincomb`,
        // as fast as two libsecp256k1 ladders and an addition (`cargo bench -p tkms-crypto
        // --bench protocols -- 'secret multiplication'`); the `·G` ones use libsecp256k1.
        let r = r_secret.public_encoded();
        let c = Encoded::new(S::lincomb(&[
            (k, *share.value().expose()),
            (target, *r_secret.expose()),
        ]));
        let t1 = a.public_encoded();
        let t2 = b.public_encoded();
        let t3 = Encoded::new(S::lincomb(&[(k, *a.expose()), (target, *b.expose())]));
        let context = proof_context(request.epoch, share.index(), &request.request_id);
        let public_share = *share.public_share_encoded();
        let e = challenge(&context, &public_share, request, &r, &c, [&t1, &t2, &t3]);
        let proof = ReencryptionProof {
            t1,
            t2,
            t3,
            z1: *a.expose() + e * share.value().expose(),
            z2: *b.expose() + e * r_secret.expose(),
        };
        Self {
            index: share.index(),
            r,
            c,
            proof,
        }
    }

    /// The node that claims to have produced it.
    pub fn index(&self) -> NodeIndex {
        self.index
    }

    fn check(
        &self,
        public_share: &Encoded<S>,
        request: &ReencryptionRequest<S>,
        rng: &mut impl CryptoRngCore,
    ) -> bool {
        let p = &self.proof;
        let context = proof_context(request.epoch, self.index, &request.request_id);
        let e = challenge(
            &context,
            public_share,
            request,
            &self.r,
            &self.c,
            [&p.t1, &p.t2, &p.t3],
        );
        // z1·G = T1 + e·PK_i ; z2·G = T2 + e·R_i ; z1·K + z2·B = T3 + e·C_i, checked at once
        // with weights (1, ρ, δ): one generator multiplication and one variable-time MSM of
        // public values. Unit coefficients are added outside the MSM.
        let rho = random_weight::<S>(rng);
        let delta = random_weight::<S>(rng);
        let sum = S::mul_by_generator(&(p.z1 + rho * p.z2)) - p.t1.point()
            + msm_vartime::<S>(&[
                (*public_share.point(), -e),
                (*p.t2.point(), -rho),
                (*self.r.point(), -(rho * e)),
                (*request.ephemeral(), delta * p.z1),
                (*request.target(), delta * p.z2),
                (*p.t3.point(), -delta),
                (*self.c.point(), -(delta * e)),
            ]);
        bool::from(group::Group::is_identity(&sum))
    }

    /// Check the proof against the node's public share in `keys`.
    pub fn verify(
        self,
        keys: &PublicKeySet<S>,
        request: &ReencryptionRequest<S>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<VerifiedPartialReencryption<S>, Error> {
        let public = keys.public_share_encoded(self.index)?;
        if self.check(public, request, rng) {
            Ok(VerifiedPartialReencryption {
                index: self.index,
                r: *self.r.point(),
                c: *self.c.point(),
                request: request.clone(),
            })
        } else {
            Err(Error::InvalidProof {
                culprit: self.index,
            })
        }
    }

    /// `index || R_i || C_i || T1 || T2 || T3 || z1 || z2`.
    pub fn to_bytes(&self) -> [u8; PARTIAL_LEN] {
        crate::codec::concat(&[
            &self.index.to_bytes(),
            self.r.bytes(),
            self.c.bytes(),
            self.proof.t1.bytes(),
            self.proof.t2.bytes(),
            self.proof.t3.bytes(),
            &S::encode_scalar(&self.proof.z1),
            &S::encode_scalar(&self.proof.z2),
        ])
    }

    /// Strict decoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let bytes = crate::codec::exact::<PARTIAL_LEN>(bytes)?;
        let point =
            |k: usize| Encoded::from_bytes(&bytes[2 + k * POINT_LEN..2 + (k + 1) * POINT_LEN]);
        let scalars = 2 + 5 * POINT_LEN;
        Ok(Self {
            index: NodeIndex::from_bytes(&bytes[..2])?,
            r: point(0)?,
            c: point(1)?,
            proof: ReencryptionProof {
                t1: point(2)?,
                t2: point(3)?,
                t3: point(4)?,
                z1: S::decode_scalar(&bytes[scalars..scalars + SCALAR_LEN])?,
                z2: S::decode_scalar(&bytes[scalars + SCALAR_LEN..])?,
            },
        })
    }
}

/// Verify many partials for one request; every bad one is named by its error.
pub fn verify_all<S: Suite>(
    partials: Vec<PartialReencryption<S>>,
    keys: &PublicKeySet<S>,
    request: &ReencryptionRequest<S>,
    rng: &mut impl CryptoRngCore,
) -> (Vec<VerifiedPartialReencryption<S>>, Vec<Error>) {
    let mut verified = Vec::with_capacity(partials.len());
    let mut errors = Vec::new();
    for p in partials {
        match p.verify(keys, request, rng) {
            Ok(v) => verified.push(v),
            Err(e) => errors.push(e),
        }
    }
    (verified, errors)
}

/// The combined capsule `(K, R, C)`, openable only by the target's secret `b`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReencryptedCapsule<S: Suite> {
    ephemeral: S::Point,
    r: S::Point,
    c: S::Point,
}

/// Encoded capsule length: `K || R || C`.
pub const CAPSULE_LEN: usize = 3 * POINT_LEN;

impl<S: Suite> ReencryptedCapsule<S> {
    /// Target side: `S = C - b·R`, returned as `x(S)`.
    pub fn open(&self, target_secret: &SecretScalar<S>) -> Result<SharedSecret, Error> {
        ecies::shared_secret::<S>(&(self.c - self.r * target_secret.expose()))
    }

    /// Open and decrypt the original ciphertext body.
    pub fn decrypt(
        &self,
        target_secret: &SecretScalar<S>,
        ciphertext: &Ciphertext<S>,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        if *ciphertext.ephemeral() != self.ephemeral {
            return Err(Error::MixedRequests);
        }
        ecies::open_with_shared_secret(&self.open(target_secret)?, ciphertext)
    }

    /// The capsule `K`.
    pub fn ephemeral(&self) -> &S::Point {
        &self.ephemeral
    }

    /// `K || R || C`.
    pub fn to_bytes(&self) -> [u8; CAPSULE_LEN] {
        crate::codec::concat(&[
            &S::encode_point(&self.ephemeral),
            &S::encode_point(&self.r),
            &S::encode_point(&self.c),
        ])
    }

    /// Strict decoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let bytes = crate::codec::exact::<CAPSULE_LEN>(bytes)?;
        Ok(Self {
            ephemeral: S::decode_point(&bytes[..POINT_LEN])?,
            r: S::decode_point(&bytes[POINT_LEN..2 * POINT_LEN])?,
            c: S::decode_point(&bytes[2 * POINT_LEN..])?,
        })
    }
}

/// Combine `t = keys.threshold()` verified partials of one request into `(K, R, C)`.
pub fn combine<S: Suite>(
    partials: &[VerifiedPartialReencryption<S>],
    keys: &PublicKeySet<S>,
) -> Result<ReencryptedCapsule<S>, Error> {
    let chosen = select(partials, keys.threshold(), |p| p.index)?;
    let request = &chosen[0].request;
    if chosen.iter().any(|p| p.request != *request) {
        return Err(Error::MixedRequests);
    }
    let indices: Vec<NodeIndex> = chosen.iter().map(|p| p.index).collect();
    let interpolation = ZeroInterpolation::<S>::new(&indices)?;
    Ok(ReencryptedCapsule {
        ephemeral: *request.ephemeral(),
        r: interpolation.apply(&chosen.iter().map(|p| p.r).collect::<Vec<_>>())?,
        c: interpolation.apply(&chosen.iter().map(|p| p.c).collect::<Vec<_>>())?,
    })
}
