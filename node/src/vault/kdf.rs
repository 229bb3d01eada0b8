//! The vault key: Argon2id over the password, with parameters stored in the vault (or backup)
//! header.

use argon2::{Algorithm, Argon2, Version};
use zeroize::Zeroizing;

use super::format::{Reader, SALT_LEN};
use super::seal::KEY_LEN;
use super::VaultError;

/// Argon2id parameters. The ones a vault was created with are stored in it and reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism (lanes).
    pub parallelism: u32,
}

impl KdfParams {
    /// Below this memory cost (OWASP's Argon2id minimum, 19 MiB) creating a vault logs a warning.
    pub(super) const PRODUCTION_FLOOR_KIB: u32 = 19 * 1024;
    /// Ceilings that bound the work a tampered header or a hostile backup can demand.
    const MAX_MEMORY_KIB: u32 = 1024 * 1024;
    const MAX_ITERATIONS: u32 = 64;
    const MAX_PARALLELISM: u32 = 64;

    /// Production parameters: 64 MiB, 3 passes, 1 lane.
    pub const fn production() -> Self {
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }

    /// Tiny parameters for tests: fast, and no protection against password guessing.
    pub const fn insecure_for_tests() -> Self {
        Self {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    pub(super) fn validate(self) -> Result<argon2::Params, VaultError> {
        if self.memory_kib > Self::MAX_MEMORY_KIB
            || self.iterations > Self::MAX_ITERATIONS
            || self.parallelism > Self::MAX_PARALLELISM
        {
            return Err(VaultError::InvalidKdfParams(format!(
                "{self:?} exceeds the maximum (memory {} KiB, {} iterations, parallelism {})",
                Self::MAX_MEMORY_KIB,
                Self::MAX_ITERATIONS,
                Self::MAX_PARALLELISM
            )));
        }
        argon2::Params::new(
            self.memory_kib,
            self.iterations,
            self.parallelism,
            Some(KEY_LEN),
        )
        .map_err(|e| VaultError::InvalidKdfParams(format!("{self:?}: {e}")))
    }

    pub(super) fn to_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..4].copy_from_slice(&self.memory_kib.to_be_bytes());
        out[4..8].copy_from_slice(&self.iterations.to_be_bytes());
        out[8..].copy_from_slice(&self.parallelism.to_be_bytes());
        out
    }

    pub(super) fn from_reader(reader: &mut Reader<'_>) -> Result<Self, String> {
        Ok(Self {
            memory_kib: reader.u32()?,
            iterations: reader.u32()?,
            parallelism: reader.u32()?,
        })
    }
}

pub(super) fn derive_key(
    password: &[u8],
    salt: &[u8; SALT_LEN],
    params: KdfParams,
) -> Result<Zeroizing<[u8; KEY_LEN]>, VaultError> {
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.validate()?);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    argon
        .hash_password_into(password, salt, &mut *key)
        .map_err(|e| VaultError::InvalidKdfParams(format!("Argon2id failed: {e}")))?;
    Ok(key)
}
