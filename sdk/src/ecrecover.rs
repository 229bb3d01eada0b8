//! Ethereum `ecrecover` of the EIP-712 signatures on every request, through libsecp256k1.
//!
//! alloy's `Signature::recover_address_from_prehash` goes through k256's
//! `VerifyingKey::recover_from_prehash`, which computes `Q = r⁻¹(s·R − z·G)` with a
//! constant-time linear combination and then verifies the signature against `Q` with a
//! second one. That check cannot fail for a key recovered this way
//! (`z·s⁻¹·G + r·s⁻¹·Q = R`, whose x-coordinate is `r`); its only effect is k256's refusal
//! of high `s`, which alloy undoes beforehand by normalising `s` (and `R`'s parity) — the
//! normalised pair recovers the same `Q`. Every input here is public, so one variable-time
//! double multiplication is enough: libsecp256k1's `secp256k1_ecdsa_recover` (Bitcoin
//! Core's, `ecmult` with precomputed generator tables) does exactly that, in about a quarter
//! of alloy's time (`cargo bench -p tkms-sdk --bench ecrecover`). The manager and every
//! asked node recover a signer per request.
//!
//! Accepts and refuses exactly what alloy does: `tests/ecrecover.rs` compares the two on
//! random valid signatures and on every kind of malformed one (high `s`, `r` or `s` zero or
//! not below the group order, `r` not an x-coordinate, the wrong parity).

use alloy_primitives::{Address, Signature, B256};
use secp256k1::{
    ecdsa::{RecoverableSignature, RecoveryId},
    Message, SECP256K1,
};

/// Why a signature recovers no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecoverError {
    /// `r` or `s` is zero or not below the group order.
    #[error("r or s is out of range")]
    OutOfRange,
    /// `r` is not the x-coordinate of a curve point, or the key would be the point at
    /// infinity.
    #[error("the signature recovers no public key")]
    NoKey,
}

/// The address whose key signed `prehash` with `signature` (any `s`, as alloy).
pub fn recover_address(signature: &Signature, prehash: &B256) -> Result<Address, RecoverError> {
    let (r, s) = (signature.r(), signature.s());
    if r.is_zero() || s.is_zero() {
        return Err(RecoverError::OutOfRange);
    }
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&r.to_be_bytes::<32>());
    compact[32..].copy_from_slice(&s.to_be_bytes::<32>());
    let parity = if signature.v() {
        RecoveryId::One
    } else {
        RecoveryId::Zero
    };
    // Refuses r or s not below the group order.
    let signature = RecoverableSignature::from_compact(&compact, parity)
        .map_err(|_| RecoverError::OutOfRange)?;
    let key = SECP256K1
        .recover_ecdsa(Message::from_digest(prehash.0), &signature)
        .map_err(|_| RecoverError::NoKey)?;
    Ok(Address::from_raw_public_key(
        &key.serialize_uncompressed()[1..],
    ))
}
