//! # tkms-sdk
//!
//! The client side of the tkms cluster, and the wire formats the manager and the nodes share
//! with it:
//!
//! - [`nox`]: `POST /v0/delegate`, byte-compatible with the single-key Nox KMS (request
//!   authorization, RSA-OAEP of `x(S)`, the manager's response proof);
//! - [`v1`]: the threshold-native `POST /v1/delegate` (each node's partial encrypted to the
//!   requester; the client verifies and combines) and `POST /v1/reencrypt` (the target opens
//!   the re-encrypted capsule with its own key), with nonces and expiries;
//! - [`Client`] (feature `http`, on by default): calls a manager over HTTP, verifies every
//!   proof, and returns the shared secret or the plaintext.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tkms_sdk::ClientError> {
//! use tkms_sdk::{Client, v1::RsaRecipient};
//! let client = Client::new("http://127.0.0.1:8600")?;
//! let key = client.public_key().await?;
//! # let gateway = k256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
//! # let ct: tkms_crypto::ecies::Ciphertext<tkms_crypto::Secp256k1> = unimplemented!();
//! let plaintext = client.decrypt(&gateway, 31337, &key, &ct).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "http")]
mod client;
pub mod ecrecover;
pub mod nox;
pub mod v1;

#[cfg(feature = "http")]
pub use client::{Client, ClientError, ClusterKey};
