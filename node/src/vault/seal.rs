//! AES-256-GCM sealing of every vault value, with random 96-bit nonces, and the AAD that binds
//! a value to its table and key.

use aes_gcm::{
    aead::{Aead, Payload},
    Aes256Gcm, KeyInit, Nonce,
};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use super::{labels, VaultError};

pub(super) const NONCE_LEN: usize = 12;
pub(super) const TAG_LEN: usize = 16;
pub(super) const KEY_LEN: usize = 32;

/// `"tkms/vault/v1" || len(table) || table || key`.
pub(super) fn aad(table: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(labels::AAD_PREFIX.len() + 1 + table.len() + key.len());
    out.extend_from_slice(labels::AAD_PREFIX);
    out.push(u8::try_from(table.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(table.as_bytes());
    out.extend_from_slice(key);
    out
}

pub(super) fn random_array<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    OsRng.fill_bytes(&mut out);
    out
}

pub(super) fn encrypt_with_nonce(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, VaultError> {
    // `new_from_slice` reads the key in place: no unzeroized copy of it.
    Aes256Gcm::new_from_slice(key)
        .map_err(|_| VaultError::Storage("AES-256-GCM key setup failed".to_owned()))?
        .encrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| VaultError::Storage("AES-256-GCM encryption failed".to_owned()))
}

pub(super) fn decrypt_with_nonce(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    Aes256Gcm::new_from_slice(key)
        .ok()?
        .decrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

/// `nonce || AES-256-GCM(key, plaintext)` with a fresh random nonce.
pub(super) fn seal(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, VaultError> {
    let nonce = random_array::<NONCE_LEN>();
    let ciphertext = encrypt_with_nonce(key, &nonce, aad, plaintext)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Inverse of [`seal`]; `None` if the value is too short or fails authentication.
pub(super) fn unseal(key: &[u8; KEY_LEN], aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    decrypt_with_nonce(key, &nonce, aad, ciphertext)
}
