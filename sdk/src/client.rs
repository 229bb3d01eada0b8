//! [`Client`]: a manager's HTTP API, with every answer verified before it is used.

use alloy_primitives::{Address, B256};
use k256::ecdsa::SigningKey;
use serde::de::DeserializeOwned;
use tkms_crypto::{
    ecies::Ciphertext, pre::ReencryptedCapsule, suite::Encoded, ClusterSuite as S, PublicKeySet,
    SharedSecret,
};
use zeroize::Zeroizing;

use crate::{
    nox::{self, NoxError},
    v1::{self, Freshness, Opened, RsaRecipient, V1Error},
};

/// How long a request signed by the client stays valid.
pub const DEFAULT_TTL_SECS: u64 = 60;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The manager could not be reached or sent something that is not HTTP/JSON.
    #[error("transport: {0}")]
    Transport(String),
    /// The manager answered with an error.
    #[error("{status} {code}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The `code` of the JSON error.
        code: String,
        /// The `error` of the JSON error.
        message: String,
    },
    /// A `/v1` request could not be built, or its answer failed verification.
    #[error(transparent)]
    V1(#[from] V1Error),
    /// A `/v0` request could not be built, or its answer failed verification.
    #[error(transparent)]
    Nox(#[from] NoxError),
    /// The answer is well-formed but does not open the ciphertext.
    #[error("decryption: {0}")]
    Decrypt(String),
}

/// The cluster key as published by the manager, checked for consistency.
#[derive(Debug, Clone)]
pub struct ClusterKey {
    /// Key epoch.
    pub epoch: u64,
    /// The public key set (threshold, commitment, public shares).
    pub keys: PublicKeySet<S>,
}

impl ClusterKey {
    /// The cluster public key `PK`.
    pub fn public_key(&self) -> &Encoded<S> {
        self.keys.public_key_encoded()
    }
}

/// A tkms manager, over HTTP.
///
/// Answers name the key epoch their partials belong to. When that is not the epoch of the
/// [`ClusterKey`] a call was given (the cluster was reshared since), the client fetches that
/// epoch's key set once (`/v0/public-key?epoch=N`), checks it is the same public key, keeps it,
/// and verifies against it: a long-lived client follows reshares without failing.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    manager: Option<Address>,
    epochs: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<u64, PublicKeySet<S>>>>,
}

impl Client {
    /// A client for the manager at `url` (`http://127.0.0.1:8600`).
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(Self {
            base: url.trim_end_matches('/').to_string(),
            http,
            manager: None,
            epochs: std::sync::Arc::default(),
        })
    }

    /// Accept only answers signed by this manager wallet.
    #[must_use]
    pub fn with_manager(mut self, manager: Address) -> Self {
        self.manager = Some(manager);
        self
    }

    fn check_manager(&self, signer: Address) -> Result<Address, ClientError> {
        if let Some(expected) = self.manager {
            v1::check_manager(signer, expected)?;
        }
        Ok(signer)
    }

    async fn answer<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ClientError> {
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if !status.is_success() {
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(ClientError::Refused {
                status: status.as_u16(),
                code: body["code"].as_str().unwrap_or("").to_string(),
                message: body["error"].as_str().map_or_else(
                    || String::from_utf8_lossy(&bytes).into_owned(),
                    str::to_string,
                ),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Transport(format!("answer: {e}")))
    }

    /// POST a JSON body with its `Authorization` header; the decoded answer.
    async fn post_signed<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        authorization: String,
    ) -> Result<T, ClientError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Authorization", authorization)
            .json(body)
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Self::answer(response).await
    }

    /// `GET /v0/public-key`, with the public shares checked against the commitment.
    pub async fn public_key(&self) -> Result<ClusterKey, ClientError> {
        self.fetch_key(None).await
    }

    async fn fetch_key(&self, epoch: Option<u64>) -> Result<ClusterKey, ClientError> {
        let query = epoch.map(|e| format!("?epoch={e}")).unwrap_or_default();
        let response = self
            .http
            .get(format!("{}/v0/public-key{query}", self.base))
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let body: v1::PublicKeyResponse = Self::answer(response).await?;
        let key = ClusterKey {
            epoch: body.epoch,
            keys: body.key_set()?,
        };
        self.remember(&key);
        Ok(key)
    }

    fn remember(&self, key: &ClusterKey) {
        self.epochs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.epoch, key.keys.clone());
    }

    /// The key set of `epoch`, for an answer made with it: `key`'s own, one seen before, or
    /// fetched now; refused unless it has `key`'s public key (a reshare keeps it).
    async fn key_set(&self, epoch: u64, key: &ClusterKey) -> Result<PublicKeySet<S>, ClientError> {
        if epoch == key.epoch {
            return Ok(key.keys.clone());
        }
        let known = self
            .epochs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&epoch)
            .cloned();
        let keys = if let Some(keys) = known {
            keys
        } else {
            let fetched = self.fetch_key(Some(epoch)).await?;
            if fetched.epoch != epoch {
                return Err(ClientError::V1(V1Error::InvalidResponse(format!(
                    "asked for the key set of epoch {epoch}, got epoch {}",
                    fetched.epoch
                ))));
            }
            fetched.keys
        };
        if keys.public_key_encoded() != key.keys.public_key_encoded() {
            return Err(ClientError::V1(V1Error::InvalidResponse(format!(
                "epoch {epoch} has another public key than epoch {}",
                key.epoch
            ))));
        }
        Ok(keys)
    }

    /// `POST /v0/delegate` (Nox-compatible): `x(S)` for `ephemeral`, RSA-decrypted by
    /// `recipient`, and the manager wallet that signed the answer.
    pub async fn delegate_v0(
        &self,
        gateway: &SigningKey,
        chain_id: u64,
        salt: B256,
        ephemeral: &Encoded<S>,
        recipient: &RsaRecipient,
    ) -> Result<(SharedSecret, Address), ClientError> {
        let ephemeral_hex = format!("0x{}", hex::encode(ephemeral.bytes()));
        let target_hex = recipient.spki_hex();
        let authorization =
            nox::authorization_header(gateway, chain_id, &ephemeral_hex, &target_hex);
        let response = self
            .http
            .post(format!(
                "{}/v0/delegate?chain_id={chain_id}&salt=0x{}",
                self.base,
                hex::encode(salt)
            ))
            .header("Authorization", authorization)
            .json(&serde_json::json!({
                "ephemeralPubKey": ephemeral_hex,
                "targetPubKey": target_hex,
            }))
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let body: nox::DelegateResponse = Self::answer(response).await?;
        let signer =
            nox::verify_response(chain_id, salt, &body.encrypted_shared_secret, &body.proof)?;
        let signer = self.check_manager(signer)?;
        let ciphertext = hex::decode(body.encrypted_shared_secret.trim_start_matches("0x"))
            .map_err(|e| ClientError::Transport(format!("encryptedSharedSecret: {e}")))?;
        let plain = recipient.decrypt(&ciphertext)?;
        let secret = SharedSecret::from_slice(&plain)
            .map_err(|e| ClientError::Decrypt(format!("shared secret: {e}")))?;
        Ok((secret, signer))
    }

    /// `POST /v1/delegate`: every node's partial, decrypted and verified here, combined into
    /// `x(S)`. The manager never sees `S`.
    pub async fn delegate(
        &self,
        gateway: &SigningKey,
        chain_id: u64,
        key: &ClusterKey,
        ephemeral: &Encoded<S>,
        recipient: &RsaRecipient,
    ) -> Result<Opened<SharedSecret>, ClientError> {
        let request = v1::DelegateV1::sign(
            gateway,
            chain_id,
            *ephemeral,
            recipient.spki_der().to_vec(),
            Freshness::new(DEFAULT_TTL_SECS),
        );
        let response = self.send_delegate(&request).await?;
        self.check_manager(response.manager(&request)?)?;
        let keys = self.key_set(response.epoch, key).await?;
        Ok(v1::open_delegation(&response, &request, recipient, &keys)?)
    }

    /// Send a signed `/v1/delegate` request as it is (for tests and tools that need to send
    /// exactly these bytes, e.g. twice).
    pub async fn send_delegate(
        &self,
        request: &v1::DelegateV1,
    ) -> Result<v1::DelegateResponse, ClientError> {
        let (body, authorization) = request.to_http();
        self.post_signed("/v1/delegate", &body, authorization).await
    }

    /// `POST /v1/reencrypt`: the capsules re-encrypted to `target`, with every node's
    /// partials verified and recombined here.
    pub async fn reencrypt(
        &self,
        requester: &SigningKey,
        chain_id: u64,
        key: &ClusterKey,
        target: Encoded<S>,
        capsules: Vec<Encoded<S>>,
    ) -> Result<Vec<ReencryptedCapsule<S>>, ClientError> {
        let request = v1::ReencryptV1::sign(
            requester,
            chain_id,
            target,
            capsules,
            Freshness::new(DEFAULT_TTL_SECS),
        )?;
        let response = self.send_reencrypt(&request).await?;
        self.check_manager(response.manager(&request)?)?;
        let keys = self.key_set(response.epoch, key).await?;
        Ok(v1::open_reencryption(&response, &request, &keys)?)
    }

    /// Send a signed `/v1/reencrypt` request as it is.
    pub async fn send_reencrypt(
        &self,
        request: &v1::ReencryptV1,
    ) -> Result<v1::ReencryptResponse, ClientError> {
        let (body, authorization) = request.to_http();
        self.post_signed("/v1/reencrypt", &body, authorization)
            .await
    }

    /// Decrypt an ECIES ciphertext made to the cluster key: re-encrypt its capsule to a
    /// fresh key held only here, open it, and decrypt.
    pub async fn decrypt(
        &self,
        requester: &SigningKey,
        chain_id: u64,
        key: &ClusterKey,
        ciphertext: &Ciphertext<S>,
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let (b, target) = v1::target_key();
        let capsule = Encoded::new(*ciphertext.ephemeral());
        let capsules = self
            .reencrypt(requester, chain_id, key, target, vec![capsule])
            .await?;
        let first = capsules
            .first()
            .ok_or_else(|| ClientError::Decrypt("no capsule in the answer".into()))?;
        first
            .decrypt(&b, ciphertext)
            .map_err(|e| ClientError::Decrypt(e.to_string()))
    }
}
