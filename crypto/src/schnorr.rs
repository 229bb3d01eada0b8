//! Schnorr signatures and proofs of possession over a [`Suite`].
//!
//! `r` random, `R = r·G`, `c = H(dst, R, X, msg)`, `z = r + c·x`; verify `z·G = R + c·X`.
//! Used for a dealer's proof of knowledge of its constant term (docs/PROTOCOL.md §7 step 1,
//! tag `tkms/v1/pok`) and for node-key signatures on ceremony messages (tag `tkms/v1/sig`),
//! so a transcript can be relayed by anyone and equivocation proven.

use rand_core::CryptoRngCore;

use crate::{
    error::EncodingError,
    hash::hash_to_scalar,
    secret::SecretScalar,
    suite::{Suite, POINT_LEN, SCALAR_LEN},
};

/// Encoded signature length: `R(33) || z(32)`.
pub const SIGNATURE_LEN: usize = POINT_LEN + SCALAR_LEN;

/// A Schnorr signature (or proof of possession when `msg` is the context).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signature<S: Suite> {
    r: S::Point,
    z: S::Scalar,
}

impl<S: Suite> Signature<S> {
    /// Sign `msg` under tag `dst` with secret `x`.
    pub fn sign(
        dst: &[u8],
        secret: &SecretScalar<S>,
        msg: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        let nonce = SecretScalar::<S>::random(rng);
        let r = nonce.public_point();
        let c = challenge::<S>(dst, &r, &secret.public_point(), msg);
        Self {
            r,
            z: *nonce.expose() + c * secret.expose(),
        }
    }

    /// Verify against public key `X`.
    pub fn verify(&self, dst: &[u8], public: &S::Point, msg: &[u8]) -> bool {
        let c = challenge::<S>(dst, &self.r, public, msg);
        S::mul_by_generator(&self.z) - *public * c == self.r
    }

    /// `R || z`.
    pub fn to_bytes(&self) -> [u8; SIGNATURE_LEN] {
        crate::codec::concat(&[&S::encode_point(&self.r), &S::encode_scalar(&self.z)])
    }

    /// Strict decoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EncodingError> {
        let bytes = crate::codec::exact::<SIGNATURE_LEN>(bytes)?;
        Ok(Self {
            r: S::decode_point(&bytes[..POINT_LEN])?,
            z: S::decode_scalar(&bytes[POINT_LEN..])?,
        })
    }
}

fn challenge<S: Suite>(dst: &[u8], r: &S::Point, public: &S::Point, msg: &[u8]) -> S::Scalar {
    hash_to_scalar::<S>(dst, &[&S::encode_point(r), &S::encode_point(public), msg])
}
