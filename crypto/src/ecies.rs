//! ECIES, byte-compatible with the Nox KMS (docs/PROTOCOL.md §3).
//!
//! `k` random, `K = k·G`, `S = k·PK`; `key = HKDF-SHA256(salt = 32 zero bytes, ikm = x(S),
//! info = "ECIES:AES_GCM:v1", L = 32)`; a random 12-byte nonce; AES-256-GCM with empty AAD.
//! The container is `K(33) || nonce(12) || ct||tag`. Decryption computes `S = sk·K`; a holder
//! of a delegated [`SharedSecret`] `x(S)` opens the same container without the private key.

use aes_gcm::{
    aead::{Aead, KeyInit},
    Aes256Gcm, Nonce,
};
use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{
    dst,
    error::Error,
    secret::{SecretScalar, SharedSecret},
    suite::{Encoded, Suite, POINT_LEN, SCALAR_LEN},
};

/// AES-GCM nonce length.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Smallest container: `K || nonce || tag` (empty plaintext).
pub const MIN_CONTAINER_LEN: usize = POINT_LEN + NONCE_LEN + TAG_LEN;

/// An ECIES ciphertext: ephemeral key `K`, nonce, and AES-GCM output (`ct || tag`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ciphertext<S: Suite> {
    ephemeral: S::Point,
    nonce: [u8; NONCE_LEN],
    sealed: Vec<u8>,
}

impl<S: Suite> Ciphertext<S> {
    /// Assemble from parts (e.g. a re-encrypted capsule's `K` with the untouched body).
    pub fn from_parts(ephemeral: S::Point, nonce: [u8; NONCE_LEN], sealed: Vec<u8>) -> Self {
        Self {
            ephemeral,
            nonce,
            sealed,
        }
    }

    /// The ephemeral public key `K`, which delegation and re-encryption operate on.
    pub fn ephemeral(&self) -> &S::Point {
        &self.ephemeral
    }

    /// The AES-GCM nonce.
    pub fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }

    /// `ct || tag`.
    pub fn sealed(&self) -> &[u8] {
        &self.sealed
    }

    /// The container `K(33) || nonce(12) || ct||tag`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(POINT_LEN + NONCE_LEN + self.sealed.len());
        out.extend_from_slice(&S::encode_point(&self.ephemeral));
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.sealed);
        out
    }

    /// Strict decoding of a container.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < MIN_CONTAINER_LEN {
            return Err(Error::CiphertextTooShort {
                minimum: MIN_CONTAINER_LEN,
                actual: bytes.len(),
            });
        }
        let ephemeral = S::decode_point(&bytes[..POINT_LEN])?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[POINT_LEN..POINT_LEN + NONCE_LEN]);
        Ok(Self {
            ephemeral,
            nonce,
            sealed: bytes[POINT_LEN + NONCE_LEN..].to_vec(),
        })
    }
}

/// Encrypt `plaintext` to `public_key`.
pub fn encrypt<S: Suite>(
    public_key: &S::Point,
    plaintext: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<Ciphertext<S>, Error> {
    let k = SecretScalar::<S>::random(rng);
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    encrypt_with(public_key, plaintext, &k, nonce)
}

/// Encrypt with a caller-chosen ephemeral secret and nonce. Both must be fresh per message;
/// this exists for known-answer tests and deterministic simulation.
pub fn encrypt_with<S: Suite>(
    public_key: &S::Point,
    plaintext: &[u8],
    ephemeral_secret: &SecretScalar<S>,
    nonce: [u8; NONCE_LEN],
) -> Result<Ciphertext<S>, Error> {
    let shared = shared_secret::<S>(&(*public_key * ephemeral_secret.expose()))?;
    let sealed = cipher(&shared)?
        .encrypt(&Nonce::from(nonce), plaintext)
        .map_err(|_| Error::Decryption)?;
    Ok(Ciphertext {
        ephemeral: ephemeral_secret.public_point(),
        nonce,
        sealed,
    })
}

/// Decrypt with the full private key: `S = sk·K`.
pub fn decrypt<S: Suite>(
    secret_key: &SecretScalar<S>,
    ciphertext: &Ciphertext<S>,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let shared = diffie_hellman(secret_key, &Encoded::new(ciphertext.ephemeral));
    open_with_shared_secret(&shared, ciphertext)
}

/// `x(sk·K)`: the shared secret of a private key and a public point, through the suite's
/// constant-time [`Suite::mul_secret`] (libsecp256k1 on secp256k1). `K` is a valid point of
/// prime order and `sk` is not zero, so the product is never the identity.
pub fn diffie_hellman<S: Suite>(secret_key: &SecretScalar<S>, point: &Encoded<S>) -> SharedSecret {
    let product = S::mul_secret(point, secret_key);
    let mut x = Zeroizing::new([0u8; SCALAR_LEN]);
    x.copy_from_slice(&product.bytes()[1..]);
    SharedSecret::from_bytes(*x)
}

/// Open a ciphertext with a delegated shared secret `x(S)` (the output of `/delegate`).
pub fn open_with_shared_secret<S: Suite>(
    shared: &SharedSecret,
    ciphertext: &Ciphertext<S>,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    cipher(shared)?
        .decrypt(&Nonce::from(ciphertext.nonce), ciphertext.sealed.as_slice())
        .map(Zeroizing::new)
        .map_err(|_| Error::Decryption)
}

/// `x(S)` of a shared point, the ECIES key material.
pub fn shared_secret<S: Suite>(point: &S::Point) -> Result<SharedSecret, Error> {
    S::x_coordinate(point)
        .map(SharedSecret::from_bytes)
        .ok_or(Error::Encoding(crate::error::EncodingError::Identity))
}

/// `HKDF-SHA256(salt = 0^32, ikm = x(S), info = "ECIES:AES_GCM:v1")` → AES-256-GCM.
fn cipher(shared: &SharedSecret) -> Result<Aes256Gcm, Error> {
    let hkdf = Hkdf::<Sha256>::new(Some(&dst::ECIES_SALT), shared.as_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf.expand(dst::ECIES_INFO, key.as_mut())
        .map_err(|_| Error::Decryption)?;
    Aes256Gcm::new_from_slice(key.as_ref()).map_err(|_| Error::Decryption)
}
