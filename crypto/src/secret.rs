//! Secret values: zeroized on drop, no value in `Debug`, constant-time equality
//! (modelled on RustCrypto `elliptic-curve/src/secret_key.rs`).

use core::fmt;

use rand_core::CryptoRngCore;
use subtle::{Choice, ConstantTimeEq};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{
    error::EncodingError,
    suite::{Encoded, Suite, SCALAR_LEN},
};

/// A non-zero secret scalar: a private key, a key share, a nonce.
pub struct SecretScalar<S: Suite>(S::Scalar);

impl<S: Suite> SecretScalar<S> {
    /// A uniformly random non-zero scalar.
    pub fn random(rng: &mut impl CryptoRngCore) -> Self {
        loop {
            let s = <S::Scalar as ff::Field>::random(&mut *rng);
            if !bool::from(ff::Field::is_zero(&s)) {
                return Self(s);
            }
        }
    }

    /// Wrap a scalar; `None` if it is zero.
    pub fn new(value: S::Scalar) -> Option<Self> {
        if bool::from(ff::Field::is_zero(&value)) {
            None
        } else {
            Some(Self(value))
        }
    }

    /// Strict decoding of 32 big-endian bytes (below the order, non-zero).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EncodingError> {
        let s = S::decode_scalar(bytes)?;
        Self::new(s).ok_or(EncodingError::ZeroScalar)
    }

    /// The 32-byte big-endian encoding, zeroized when dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; SCALAR_LEN]> {
        Zeroizing::new(S::encode_scalar(&self.0))
    }

    /// The public point `self·G`.
    pub fn public_point(&self) -> S::Point {
        S::mul_by_generator(&self.0)
    }

    /// The public point `self·G` with its encoding.
    pub fn public_encoded(&self) -> Encoded<S> {
        S::mul_generator_secret(self)
    }

    /// The scalar, for protocol arithmetic inside this crate and its drivers.
    pub fn expose(&self) -> &S::Scalar {
        &self.0
    }
}

impl<S: Suite> Clone for SecretScalar<S> {
    fn clone(&self) -> Self {
        Self(self.0)
    }
}

impl<S: Suite> Drop for SecretScalar<S> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<S: Suite> ZeroizeOnDrop for SecretScalar<S> {}

impl<S: Suite> ConstantTimeEq for SecretScalar<S> {
    fn ct_eq(&self, other: &Self) -> Choice {
        self.0.ct_eq(&other.0)
    }
}

impl<S: Suite> fmt::Debug for SecretScalar<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretScalar<{}>(..)", S::NAME)
    }
}

/// The ECIES shared secret `x(S)`: the 32-byte x-coordinate of `S = K·sk`, which is what
/// `/delegate` hands (RSA-encrypted) to the requester and what the AES key is derived from.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SharedSecret([u8; SCALAR_LEN]);

impl SharedSecret {
    /// Wrap the 32-byte x-coordinate of a shared point.
    pub fn from_bytes(bytes: [u8; SCALAR_LEN]) -> Self {
        Self(bytes)
    }

    /// Decode from a slice of exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, EncodingError> {
        let array: [u8; SCALAR_LEN] = bytes.try_into().map_err(|_| EncodingError::Length {
            expected: SCALAR_LEN,
            actual: bytes.len(),
        })?;
        Ok(Self(array))
    }

    /// The x-coordinate, to encrypt to a requester or derive the AES key from.
    pub fn as_bytes(&self) -> &[u8; SCALAR_LEN] {
        &self.0
    }
}

impl ConstantTimeEq for SharedSecret {
    fn ct_eq(&self, other: &Self) -> Choice {
        self.0.ct_eq(&other.0)
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}
