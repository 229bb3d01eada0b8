//! The `tkms` [`KeyProvider`] (docs/ARCHITECTURE.md §4.4): the index KEK is ECIES-encrypted to the
//! tkms cluster public key, and unwrapped at load through the cluster, which never holds the whole
//! private key.
//!
//! * **Wrap** (no cluster private key involved): fetch the cluster key set from the manager
//!   (`GET /v0/public-key`, public shares checked against the commitment), then
//!   `ecies::encrypt::<Secp256k1>(PK, KEK)`. The envelope holds the container
//!   `K(33) || nonce(12) || ct || tag` as `wrapped_kek`, the cluster public key (compressed,
//!   `0x`-hex) as `key_id`, and the chain as `region` (`eip155:<chain id>`, CAIP-2).
//! * **Unwrap**: [`tkms_sdk::Client::decrypt`] signs a `/v1/reencrypt` request with the
//!   configured requester key (a runner or gateway of the chain), asking the cluster to
//!   re-encrypt the capsule `K` to a fresh key pair generated for this one call and held only
//!   in this process; every node's partial is verified (DLEQ proofs) before the threshold
//!   combination, and the answer must be signed by the expected manager wallet when one is
//!   configured. The opened KEK goes straight into a zeroized [`IndexKey`].
//!
//! The plaintext is exactly the 32-byte KEK, so any tkms client can open an envelope
//! (interoperable, like a Nox ciphertext). It is not bound to the index name: an envelope
//! copied onto another index unwraps to a KEK that does not open that index, which
//! [`Client::load_index_kms`](crate::Client::load_index_kms) reports as
//! [`Error::WrongKey`] before anything is decrypted.
//!
//! Failures are [`Error::Kms`] naming the cause: the cluster unreachable, the requester not
//! authorized (403), fewer than `t` nodes able to answer (503), an answer that fails
//! verification, or a cluster whose key is not the one the KEK was wrapped to.
//!
//! The SDK is async and the engine API synchronous: calls run on a private one-thread tokio
//! runtime, as in the `aws-kms` provider.

use std::fmt;
use std::path::Path;

use alloy_primitives::Address;
use k256::ecdsa::SigningKey;
use tkms_crypto::{ecies, Secp256k1};
use tkms_sdk::{ClientError, ClusterKey};
use zeroize::Zeroizing;

use super::runtime::PrivateRuntime;
use super::{KeyProvider, KmsBlob, Wrapped, PROVIDER_TKMS};
use crate::error::{Error, Result};
use crate::keys::IndexKey;

/// Settings of a [`TkmsProvider`].
pub struct TkmsConfig {
    /// Base URL of the tkms manager, e.g. `http://127.0.0.1:8600`.
    pub manager_url: String,
    /// The chain whose registry authorizes the requester.
    pub chain_id: u64,
    /// The secp256k1 key that signs `/v1/reencrypt` requests: a runner or gateway of the
    /// chain (zeroized on drop, never printed).
    pub requester: SigningKey,
    /// Accept only answers signed by this manager wallet (recommended).
    pub manager_address: Option<Address>,
}

impl fmt::Debug for TkmsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TkmsConfig")
            .field("manager_url", &self.manager_url)
            .field("chain_id", &self.chain_id)
            .field("requester", &Address::from_private_key(&self.requester))
            .field("manager_address", &self.manager_address)
            .finish()
    }
}

impl TkmsConfig {
    /// Reads a requester key from a file holding it as 64 hex characters (`0x` optional,
    /// surrounding whitespace ignored). Errors never include the file's contents.
    pub fn requester_from_file(path: &Path) -> Result<SigningKey> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            Error::InvalidKey(format!(
                "cannot read the tkms requester key file {}: {e}",
                path.display()
            ))
        })?);
        Self::requester_from_hex(&text).map_err(|_| {
            Error::InvalidKey(format!(
                "the tkms requester key file {} does not hold a secp256k1 private key as 64 hex characters",
                path.display()
            ))
        })
    }

    /// Parses a requester key given as 64 hex characters (`0x` optional).
    pub fn requester_from_hex(text: &str) -> Result<SigningKey> {
        let text = text.trim();
        let text = text.strip_prefix("0x").unwrap_or(text);
        let bytes = Zeroizing::new(hex::decode(text).map_err(|_| {
            Error::InvalidKey("a tkms requester key must be 64 hex characters".into())
        })?);
        if bytes.len() != 32 {
            return Err(Error::InvalidKey(
                "a tkms requester key must be 64 hex characters".into(),
            ));
        }
        SigningKey::from_slice(&bytes).map_err(|_| {
            Error::InvalidKey("the tkms requester key is not a valid secp256k1 scalar".into())
        })
    }
}

/// The tkms cluster as a [`KeyProvider`] (`provider = "tkms"`).
pub struct TkmsProvider {
    client: tkms_sdk::Client,
    manager_url: String,
    chain_id: u64,
    requester: SigningKey,
    requester_address: Address,
    runtime: PrivateRuntime,
}

impl fmt::Debug for TkmsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TkmsProvider")
            .field("manager_url", &self.manager_url)
            .field("chain_id", &self.chain_id)
            .field("requester", &self.requester_address)
            .finish_non_exhaustive()
    }
}

impl TkmsProvider {
    /// Builds the client. No request is made until the first wrap or unwrap.
    pub fn new(config: TkmsConfig) -> Result<Self> {
        let TkmsConfig {
            manager_url,
            chain_id,
            requester,
            manager_address,
        } = config;
        if !(manager_url.starts_with("http://") || manager_url.starts_with("https://")) {
            return Err(Error::InvalidArgument(format!(
                "tkms: the manager URL must start with http:// or https://, got {manager_url:?}"
            )));
        }
        let mut client = tkms_sdk::Client::new(&manager_url)
            .map_err(|e| Error::Kms(format!("tkms: cannot build the HTTP client: {e}")))?;
        if let Some(address) = manager_address {
            client = client.with_manager(address);
        }
        Ok(Self {
            client,
            requester_address: Address::from_private_key(&requester),
            manager_url,
            chain_id,
            requester,
            runtime: PrivateRuntime::new("tkms-kms")?,
        })
    }

    /// The envelope `region` of KEKs wrapped for this chain (`eip155:<chain id>`).
    pub fn region(&self) -> String {
        format!("eip155:{}", self.chain_id)
    }

    /// The address of the requester key (as the cluster's registry knows it).
    pub fn requester_address(&self) -> Address {
        self.requester_address
    }

    /// The cluster key, fetched from the manager and checked for consistency.
    pub fn cluster_key(&self) -> Result<ClusterKey> {
        let client = self.client.clone();
        self.runtime
            .run(async move { client.public_key().await })?
            .map_err(|e| self.cluster_error("fetching the cluster public key", e))
    }

    /// A clear error for a failed cluster call.
    fn cluster_error(&self, what: &str, e: ClientError) -> Error {
        let url = &self.manager_url;
        Error::Kms(match e {
            ClientError::Transport(m) => {
                format!("tkms: {what}: cannot reach the cluster manager at {url}: {m}")
            }
            ClientError::Refused {
                status: 401 | 403,
                code,
                message,
            } => format!(
                "tkms: {what}: the cluster at {url} refused requester {} on chain {} \
                 (is it a runner or gateway there?): {code}: {message}",
                self.requester_address, self.chain_id
            ),
            ClientError::Refused {
                status: 503,
                code,
                message,
            } => format!(
                "tkms: {what}: the cluster at {url} cannot answer now, too few nodes are \
                 available (fewer than the threshold): {code}: {message}"
            ),
            ClientError::Refused {
                status,
                code,
                message,
            } => format!("tkms: {what}: the cluster at {url} answered {status} {code}: {message}"),
            ClientError::V1(e) => {
                format!("tkms: {what}: the answer of the cluster at {url} failed verification: {e}")
            }
            ClientError::Decrypt(m) => format!(
                "tkms: {what}: the re-encrypted capsule does not open the wrapped KEK \
                 (was the envelope altered?): {m}"
            ),
            other => format!("tkms: {what}: {other}"),
        })
    }
}

/// `0x` + the compressed cluster public key in hex: the envelope's `key_id`.
fn key_id(key: &ClusterKey) -> String {
    format!("0x{}", hex::encode(key.public_key().bytes()))
}

impl KeyProvider for TkmsProvider {
    fn provider(&self) -> &str {
        PROVIDER_TKMS
    }

    fn wrap(&self, index: &str, kek: &IndexKey) -> Result<Wrapped> {
        let key = self.cluster_key()?;
        let ciphertext = ecies::encrypt::<Secp256k1>(
            key.public_key().point(),
            kek.expose_secret(),
            &mut rand::rngs::OsRng,
        )
        .map_err(|e| Error::Kms(format!("tkms: wrapping the KEK of index `{index}`: {e}")))?;
        Ok(Wrapped {
            key_id: key_id(&key),
            region: self.region(),
            wrapped_kek: ciphertext.to_bytes(),
        })
    }

    fn unwrap(&self, index: &str, blob: &KmsBlob) -> Result<IndexKey> {
        if blob.provider != PROVIDER_TKMS {
            return Err(Error::InvalidEnvelope(format!(
                "the envelope of index `{index}` is for provider {:?}, not \"tkms\"",
                blob.provider
            )));
        }
        if !blob.region.is_empty() && blob.region != self.region() {
            return Err(Error::InvalidEnvelope(format!(
                "the KEK of index `{index}` is wrapped for {:?}; this provider is configured for {:?}",
                blob.region,
                self.region()
            )));
        }
        let ciphertext =
            ecies::Ciphertext::<Secp256k1>::from_bytes(&blob.wrapped_kek).map_err(|e| {
                Error::InvalidEnvelope(format!(
                    "the wrapped KEK of index `{index}` is not an ECIES container: {e}"
                ))
            })?;
        let key = self.cluster_key()?;
        let current = key_id(&key);
        if !blob.key_id.is_empty() && !blob.key_id.eq_ignore_ascii_case(&current) {
            return Err(Error::Kms(format!(
                "tkms: the KEK of index `{index}` is wrapped to cluster key {}, but the cluster at {} has key {current}",
                blob.key_id, self.manager_url
            )));
        }
        let client = self.client.clone();
        let requester = self.requester.clone();
        let chain_id = self.chain_id;
        let plain = self
            .runtime
            .run(async move {
                client
                    .decrypt(&requester, chain_id, &key, &ciphertext)
                    .await
            })?
            .map_err(|e| {
                self.cluster_error(
                    &format!("unwrapping the KEK of index `{index}` (/v1/reencrypt)"),
                    e,
                )
            })?;
        IndexKey::from_bytes(&plain).map_err(|_| {
            Error::Kms(format!(
                "tkms: the wrapped KEK of index `{index}` opened to {} bytes, not a 32-byte KEK",
                plain.len()
            ))
        })
    }
}
