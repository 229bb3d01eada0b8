//! Ethereum `ecrecover` of the EIP-712 signatures on every request, as one variable-time
//! double-scalar multiplication.
//!
//! alloy's `Signature::recover_address_from_prehash` goes through k256's
//! `VerifyingKey::recover_from_prehash`, which computes `Q = r⁻¹(s·R − z·G)` with a
//! constant-time linear combination and then verifies the signature against `Q` with a
//! second one. That check cannot fail for a key recovered this way
//! (`z·s⁻¹·G + r·s⁻¹·Q = R`, whose x-coordinate is `r`); its only effect is k256's refusal
//! of high `s`, which alloy undoes beforehand by normalising `s` (and `R`'s parity) — the
//! normalised pair recovers the same `Q`. Every input here is public (the signature and
//! the digest), so one variable-time multi-scalar multiplication
//! ([`tkms_crypto::suite::msm_vartime`]) gives the same address for about half the work.
//! The manager and every asked node recover a signer per request.
//!
//! Accepts and refuses exactly what alloy does: `tests/ecrecover.rs` compares the two on
//! random valid signatures and on every kind of malformed one (high `s`, `r` or `s` zero or
//! not below the group order, `r` not an x-coordinate, the wrong parity).

use alloy_primitives::{Address, Signature, B256};
use k256::{
    elliptic_curve::{
        ops::Reduce, point::DecompressPoint, sec1::ToEncodedPoint, subtle::Choice, Group,
        PrimeField,
    },
    AffinePoint, FieldBytes, ProjectivePoint, Scalar, U256,
};
use tkms_crypto::{suite::msm_vartime, Secp256k1};

/// Why a signature recovers no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecoverError {
    /// `r` or `s` is zero or not below the group order.
    #[error("r or s is out of range")]
    OutOfRange,
    /// `r` is not the x-coordinate of a curve point.
    #[error("r is not the x-coordinate of a curve point")]
    NotOnCurve,
    /// The signature recovers the point at infinity.
    #[error("the signature recovers no public key")]
    Identity,
}

/// The address whose key signed `prehash` with `signature` (any `s`, as alloy).
pub fn recover_address(signature: &Signature, prehash: &B256) -> Result<Address, RecoverError> {
    let r = nonzero_scalar(signature.r().to_be_bytes::<32>())?;
    let s = nonzero_scalar(signature.s().to_be_bytes::<32>())?;
    let big_r = Option::<AffinePoint>::from(AffinePoint::decompress(
        &r.to_repr(),
        Choice::from(u8::from(signature.v())),
    ))
    .ok_or(RecoverError::NotOnCurve)?;
    let z = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(prehash.0));
    // `r` is nonzero, so it is invertible.
    let r_inv = Option::<Scalar>::from(r.invert()).ok_or(RecoverError::OutOfRange)?;
    let q = msm_vartime::<Secp256k1>(&[
        (ProjectivePoint::GENERATOR, -(z * r_inv)),
        (ProjectivePoint::from(big_r), s * r_inv),
    ]);
    if bool::from(q.is_identity()) {
        return Err(RecoverError::Identity);
    }
    let encoded = q.to_affine().to_encoded_point(false);
    Ok(Address::from_raw_public_key(&encoded.as_bytes()[1..]))
}

fn nonzero_scalar(bytes: [u8; 32]) -> Result<Scalar, RecoverError> {
    Option::<Scalar>::from(Scalar::from_repr(bytes.into()))
        .filter(|x| !bool::from(x.is_zero()))
        .ok_or(RecoverError::OutOfRange)
}
