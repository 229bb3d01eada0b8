//! Secret values: zeroized on drop, no value in `Debug`, constant-time equality
//! (modelled on RustCrypto `elliptic-curve/src/secret_key.rs`).
//!
//! [`SecretScalar`] is defined beside the [`Suite`](crate::Suite) trait (`crate::suite`),
//! whose constant-time multiplications take it, and re-exported here; [`SharedSecret`] is
//! defined here.

use core::fmt;

use subtle::{Choice, ConstantTimeEq};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::codec::EncodingError;
pub use crate::suite::SecretScalar;
use crate::suite::SCALAR_LEN;

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
        Ok(Self(*crate::codec::exact::<SCALAR_LEN>(bytes)?))
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
