//! The threshold-native API, sans-IO: `POST /v1/delegate` and `POST /v1/reencrypt`
//! (docs/ARCHITECTURE.md §4.1). The manager, the nodes and clients all use these types, so a
//! request is signed, checked and answered from one definition.
//!
//! **Requests** are EIP-712 typed data under the domain `{name: "tkms", version: "1",
//! chainId}`, signed by a gateway (delegation) or a gateway or runner (re-encryption), sent
//! as JSON with `Authorization: Bearer 0x<65-byte signature>`. Each carries a 32-byte `nonce`
//! and an `expiresAt` (Unix seconds, at most [`MAX_TTL_SECS`] ahead): the manager and every
//! node refuse an expired request and a second use of a `(signer, nonce)` pair
//! ([`NonceCache`]). The request's EIP-712 digest is its request id, so every node proof is
//! bound to exactly the request the requester signed: a node recomputes the digest from what
//! it is asked to compute and checks the signer itself, so a compromised manager cannot
//! obtain partials for a request nobody authorized.
//!
//! - `/v1/delegate` ([`DelegateV1`]): each node computes `D_i = share_i·K` with its DLEQ
//!   proof and RSA-OAEP-encrypts the partial to the requester's RSA key, so the manager (and
//!   anyone on the way) never sees `D_i` or `S`; the client decrypts, verifies each proof
//!   against the public key set, and combines any `t` ([`open_delegation`]).
//! - `/v1/reencrypt` ([`ReencryptV1`]): for each capsule `K_j` the nodes return
//!   `(R_i, C_i)` with proofs; the manager verifies and combines them into `(K, R, C)`; the
//!   client, holding `b`, recomputes the combination from the returned partials
//!   ([`open_reencryption`]) and opens `S = C - b·R`. Nobody but the holder of `b` learns
//!   `S`.
//!
//! Responses carry the manager wallet's EIP-712 signature `V1ResponseProof{requestDigest,
//! responseHash}`, so a client can check which manager served it.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use alloy_primitives::{keccak256, Address, Bytes, B256, U256};
use alloy_sol_types::{sol, Eip712Domain, SolStruct};
use aws_lc_rs::{
    encoding::AsDer,
    rsa::{OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA256_MGF1SHA256},
};
use k256::ecdsa::SigningKey;
use serde::{Deserialize, Serialize};
use tkms_crypto::{
    delegation::{self, DelegationRequest, PartialDelegation},
    pre::{self, PartialReencryption, ReencryptedCapsule, ReencryptionRequest},
    suite::Encoded,
    NodeIndex, PublicKeySet, Secp256k1, SecretScalar, SharedSecret,
};
use zeroize::Zeroizing;

use crate::nox;

/// The cluster suite.
type S = Secp256k1;

/// EIP-712 domain name of `/v1` requests and response proofs.
pub const DOMAIN_NAME: &str = "tkms";
/// EIP-712 domain version.
pub const DOMAIN_VERSION: &str = "1";
/// Longest accepted validity of a request: `expiresAt` at most this far after "now".
pub const MAX_TTL_SECS: u64 = 300;
/// Clock difference tolerated between requester and servers, on top of [`MAX_TTL_SECS`].
pub const CLOCK_SKEW_SECS: u64 = 30;
/// Most capsules in one `/v1/reencrypt` request.
pub const MAX_BATCH: usize = 256;
/// Largest accepted `/v1` request body (a full batch is about 17 KiB of JSON).
pub const MAX_BODY_LEN: usize = 64 * 1024;
/// Most `(signer, nonce)` pairs a [`NonceCache`] remembers before it refuses new requests.
pub const MAX_REMEMBERED_NONCES: usize = 1 << 20;

sol! {
    /// What a gateway signs to ask for a threshold-native delegation.
    struct DelegateRequestV1 {
        bytes ephemeralPubKey;
        bytes targetPubKey;
        bytes32 nonce;
        uint64 expiresAt;
    }

    /// What a gateway or runner signs to ask for re-encryptions to its key.
    struct ReencryptRequestV1 {
        bytes targetPubKey;
        bytes[] capsules;
        bytes32 nonce;
        uint64 expiresAt;
    }

    /// What the manager wallet signs over a `/v1` answer.
    struct V1ResponseProof {
        bytes32 requestDigest;
        bytes32 responseHash;
    }
}

/// Why a `/v1` request or response was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum V1Error {
    /// The body is not the expected JSON, or a field is malformed.
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    /// A key or capsule is not a valid point, or the RSA key is not acceptable.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The batch is empty or larger than [`MAX_BATCH`].
    #[error("a batch holds 1..={MAX_BATCH} capsules, got {0}")]
    BatchSize(usize),
    /// The `Authorization` header is missing or the signature is malformed.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The request expired, or expires too far in the future.
    #[error("expired: {0}")]
    Expired(String),
    /// This `(signer, nonce)` was already used.
    #[error("replayed: nonce {nonce} of {signer} was already used")]
    Replayed {
        /// The signer.
        signer: Address,
        /// The reused nonce.
        nonce: B256,
    },
    /// The signer does not hold the role the request needs.
    #[error("forbidden: {signer} may not {action} on chain {chain_id}")]
    Forbidden {
        /// The recovered signer.
        signer: Address,
        /// What it asked for.
        action: &'static str,
        /// The chain of the request.
        chain_id: u64,
    },
    /// Too many live nonces are remembered; try again shortly.
    #[error("too many requests in flight; try again shortly")]
    Busy,
    /// The nonce could not be recorded durably ([`NonceStore`]), so the request is not
    /// served: serving it would let it be replayed after a restart.
    #[error("the replay journal cannot be written: {0}")]
    ReplayStore(String),
    /// A response does not decode, its proofs fail, or it has fewer than `t` usable partials.
    #[error("invalid response: {0}")]
    InvalidResponse(String),
}

impl V1Error {
    /// A stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidBody(_) => "invalid_body",
            Self::InvalidKey(_) => "invalid_key",
            Self::BatchSize(_) => "batch_size",
            Self::Unauthorized(_) => "unauthorized",
            Self::Expired(_) => "expired",
            Self::Replayed { .. } => "replayed",
            Self::Forbidden { .. } => "forbidden",
            Self::Busy => "busy",
            Self::ReplayStore(_) => "replay_store_unavailable",
            Self::InvalidResponse(_) => "invalid_response",
        }
    }

    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidBody(_) | Self::InvalidKey(_) | Self::BatchSize(_) => 400,
            Self::Unauthorized(_) | Self::Expired(_) | Self::Replayed { .. } => 401,
            Self::Forbidden { .. } => 403,
            Self::Busy | Self::ReplayStore(_) => 503,
            Self::InvalidResponse(_) => 502,
        }
    }
}

/// Whether a node's refusal message is a [`V1Error::Replayed`]: a node refuses a request
/// whose nonce it saw already with its `Display`, which starts with `replayed: `. The manager
/// answers such a refusal with 401 `replayed`, as if it had seen the nonce itself (after a
/// manager-only restart, the nodes may remember a nonce the manager forgot).
pub fn is_replay_refusal(message: &str) -> bool {
    message.starts_with("replayed: ")
}

/// The EIP-712 domain of `/v1` requests and proofs on `chain_id`.
pub fn domain(chain_id: u64) -> Eip712Domain {
    Eip712Domain::new(
        Some(Cow::Borrowed(DOMAIN_NAME)),
        Some(Cow::Borrowed(DOMAIN_VERSION)),
        Some(U256::from(chain_id)),
        None,
        None,
    )
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Replay protection shared by every `/v1` request: a random nonce and an expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// 32 random bytes, never reused by the same signer.
    pub nonce: B256,
    /// Unix seconds after which the request is refused.
    pub expires_at: u64,
}

impl Freshness {
    /// A fresh nonce and an expiry `ttl_secs` from now.
    pub fn new(ttl_secs: u64) -> Self {
        let mut nonce = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        Self {
            nonce: B256::from(nonce),
            expires_at: now_secs().saturating_add(ttl_secs),
        }
    }

    /// Refuse an expired request, or one valid for longer than [`MAX_TTL_SECS`], at `now`.
    pub fn check(&self, now: u64) -> Result<(), V1Error> {
        if now > self.expires_at {
            return Err(V1Error::Expired(format!(
                "the request expired at {}, it is now {now}",
                self.expires_at
            )));
        }
        if self.expires_at > now + MAX_TTL_SECS + CLOCK_SKEW_SECS {
            return Err(V1Error::Expired(format!(
                "expiresAt {} is more than {MAX_TTL_SECS} s ahead",
                self.expires_at
            )));
        }
        Ok(())
    }
}

/// Where a [`NonceCache`] records each first use, so that it is still refused after a
/// restart (the manager's and nodes' journal: `tkms_daemon::nonces`). Sans-IO here: the
/// cache only calls it.
pub trait NonceStore: Send + Sync {
    /// Record that `signer` used `nonce`, valid until `expires_at`; the use is refused if
    /// this fails.
    fn record(&self, signer: Address, nonce: B256, expires_at: u64) -> Result<(), String>;
}

/// Remembers every `(signer, nonce)` until its request expires, and refuses a second use.
/// With a [`NonceStore`], every first use is recorded there before it is accepted.
#[derive(Default)]
pub struct NonceCache {
    seen: Mutex<HashMap<(Address, B256), u64>>,
    store: Option<Box<dyn NonceStore>>,
}

impl std::fmt::Debug for NonceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceCache")
            .field("persistent", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl NonceCache {
    /// A cache that records first uses in `store`, starting with the uses `remembered`
    /// there (`(signer, nonce, expires_at)`, read back at start).
    pub fn with_store(
        store: Box<dyn NonceStore>,
        remembered: impl IntoIterator<Item = (Address, B256, u64)>,
    ) -> Self {
        let seen = remembered
            .into_iter()
            .map(|(signer, nonce, expires)| ((signer, nonce), expires))
            .collect();
        Self {
            seen: Mutex::new(seen),
            store: Some(store),
        }
    }

    /// Record a use at `now`; `Replayed` if the pair was seen and has not expired.
    pub fn use_once(&self, signer: Address, fresh: &Freshness, now: u64) -> Result<(), V1Error> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() >= MAX_REMEMBERED_NONCES {
            seen.retain(|_, expires| *expires >= now);
            if seen.len() >= MAX_REMEMBERED_NONCES {
                return Err(V1Error::Busy);
            }
        }
        let key = (signer, fresh.nonce);
        if seen.get(&key).is_some_and(|expires| *expires >= now) {
            return Err(V1Error::Replayed {
                signer,
                nonce: fresh.nonce,
            });
        }
        if let Some(store) = &self.store {
            store
                .record(signer, fresh.nonce, fresh.expires_at)
                .map_err(V1Error::ReplayStore)?;
        }
        seen.insert(key, fresh.expires_at);
        Ok(())
    }

    /// Forget expired entries (call now and then).
    pub fn prune(&self, now: u64) {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, expires| *expires >= now);
    }
}

/// Sign a 32-byte digest as `r || s || v` (`v` = 27/28).
fn sign(key: &SigningKey, digest: &B256) -> [u8; nox::SIGNATURE_LEN] {
    nox::sign_digest(key, digest)
}

fn recover(signature: &[u8], digest: &B256) -> Result<Address, V1Error> {
    let signature = nox::signature_from_bytes(signature).map_err(V1Error::Unauthorized)?;
    crate::ecrecover::recover_address(&signature, digest)
        .map_err(|e| V1Error::Unauthorized(format!("signature does not recover: {e}")))
}

fn parse_authorization(header: Option<&[u8]>) -> Result<Vec<u8>, V1Error> {
    let header = header.ok_or_else(|| {
        V1Error::Unauthorized("missing `Authorization: Bearer 0x<signature>`".into())
    })?;
    let header = std::str::from_utf8(header)
        .map_err(|_| V1Error::Unauthorized("Authorization header is not UTF-8".into()))?;
    let digits = header.strip_prefix(nox::BEARER_PREFIX).ok_or_else(|| {
        V1Error::Unauthorized("Authorization must be `Bearer 0x<signature>`".into())
    })?;
    let bytes = nox::decode_hex(digits).map_err(V1Error::Unauthorized)?;
    if bytes.len() != nox::SIGNATURE_LEN {
        return Err(V1Error::Unauthorized(format!(
            "signature must be {} bytes, got {}",
            nox::SIGNATURE_LEN,
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn bearer(signature: &[u8]) -> String {
    format!("{}{}", nox::BEARER_PREFIX, hex::encode(signature))
}

/// `0x` + lowercase hex.
fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

fn unhex(value: &str, what: &str) -> Result<Vec<u8>, V1Error> {
    let digits = value.strip_prefix("0x").unwrap_or(value);
    hex::decode(digits).map_err(|e| V1Error::InvalidBody(format!("{what}: invalid hex: {e}")))
}

fn point(value: &str, what: &str) -> Result<Encoded<S>, V1Error> {
    let bytes = unhex(value, what)?;
    Encoded::from_bytes(&bytes).map_err(|e| V1Error::InvalidKey(format!("{what}: {e}")))
}

fn nonce(value: &str) -> Result<B256, V1Error> {
    let bytes = unhex(value, "nonce")?;
    B256::try_from(bytes.as_slice())
        .map_err(|_| V1Error::InvalidBody(format!("nonce must be 32 bytes, got {}", bytes.len())))
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, V1Error> {
    if body.len() > MAX_BODY_LEN {
        return Err(V1Error::InvalidBody(format!(
            "body of {} bytes exceeds {MAX_BODY_LEN}",
            body.len()
        )));
    }
    serde_json::from_slice(body).map_err(|e| V1Error::InvalidBody(e.to_string()))
}

/// What every signed `/v1` request has: the servers' checks are written once against this.
pub trait SignedV1 {
    /// Chain whose registry authorizes the signer.
    fn chain_id(&self) -> u64;
    /// Nonce and expiry.
    fn freshness(&self) -> &Freshness;
    /// The requester's 65-byte signature.
    fn signature(&self) -> &[u8];
    /// The EIP-712 signing hash.
    fn digest(&self) -> B256;
    /// The signer (not yet checked against any role).
    fn signer(&self) -> Result<Address, V1Error> {
        recover(self.signature(), &self.digest())
    }
}

macro_rules! signed_v1 {
    ($ty:ty) => {
        impl SignedV1 for $ty {
            fn chain_id(&self) -> u64 {
                self.chain_id
            }
            fn freshness(&self) -> &Freshness {
                &self.freshness
            }
            fn signature(&self) -> &[u8] {
                &self.signature
            }
            fn digest(&self) -> B256 {
                <$ty>::digest(self)
            }
        }
    };
}

signed_v1!(DelegateV1);
signed_v1!(ReencryptV1);

// ---------------------------------------------------------------------------------------------
// /v1/delegate
// ---------------------------------------------------------------------------------------------

/// The JSON body of `POST /v1/delegate`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DelegateBody {
    /// Chain whose registry authorizes the signer.
    pub chain_id: u64,
    /// `K`, compressed, `0x` hex.
    pub ephemeral_pub_key: String,
    /// RSA SubjectPublicKeyInfo DER (2048..=4096 bits), `0x` hex.
    pub target_pub_key: String,
    /// 32 bytes, `0x` hex.
    pub nonce: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// A signed `/v1/delegate` request.
#[derive(Debug, Clone)]
pub struct DelegateV1 {
    /// Chain whose registry authorizes the signer.
    pub chain_id: u64,
    /// `K`.
    pub ephemeral: Encoded<S>,
    /// The requester's RSA SPKI DER: every node encrypts its partial to it.
    pub target_spki: Vec<u8>,
    /// Nonce and expiry.
    pub freshness: Freshness,
    /// The requester's 65-byte signature.
    pub signature: Vec<u8>,
}

impl DelegateV1 {
    /// Build and sign a request as `requester`.
    pub fn sign(
        requester: &SigningKey,
        chain_id: u64,
        ephemeral: Encoded<S>,
        target_spki: Vec<u8>,
        freshness: Freshness,
    ) -> Self {
        let mut request = Self {
            chain_id,
            ephemeral,
            target_spki,
            freshness,
            signature: Vec::new(),
        };
        request.signature = sign(requester, &request.digest()).to_vec();
        request
    }

    /// Assemble a request from its parts (as a node receives them) and check their syntax:
    /// the RSA key must be acceptable.
    pub fn from_parts(
        chain_id: u64,
        ephemeral: Encoded<S>,
        target_spki: Vec<u8>,
        freshness: Freshness,
        signature: Vec<u8>,
    ) -> Result<Self, V1Error> {
        nox::rsa_public_key(&target_spki).map_err(|e| V1Error::InvalidKey(e.to_string()))?;
        Ok(Self {
            chain_id,
            ephemeral,
            target_spki,
            freshness,
            signature,
        })
    }

    /// Parse the HTTP body and `Authorization` header.
    pub fn parse(body: &[u8], authorization: Option<&[u8]>) -> Result<Self, V1Error> {
        let body: DelegateBody = parse_json(body)?;
        let signature = parse_authorization(authorization)?;
        let ephemeral = point(&body.ephemeral_pub_key, "ephemeralPubKey")?;
        let target_spki = unhex(&body.target_pub_key, "targetPubKey")?;
        let freshness = Freshness {
            nonce: nonce(&body.nonce)?,
            expires_at: body.expires_at,
        };
        Self::from_parts(body.chain_id, ephemeral, target_spki, freshness, signature)
    }

    /// The JSON body and the `Authorization` header value.
    pub fn to_http(&self) -> (DelegateBody, String) {
        (
            DelegateBody {
                chain_id: self.chain_id,
                ephemeral_pub_key: hex0x(self.ephemeral.bytes()),
                target_pub_key: hex0x(&self.target_spki),
                nonce: hex0x(self.freshness.nonce.as_slice()),
                expires_at: self.freshness.expires_at,
            },
            bearer(&self.signature),
        )
    }

    /// The EIP-712 signing hash: the request id every node proof is bound to.
    pub fn digest(&self) -> B256 {
        DelegateRequestV1 {
            ephemeralPubKey: Bytes::copy_from_slice(self.ephemeral.bytes()),
            targetPubKey: Bytes::copy_from_slice(&self.target_spki),
            nonce: self.freshness.nonce,
            expiresAt: self.freshness.expires_at,
        }
        .eip712_signing_hash(&domain(self.chain_id))
    }

    /// The signer (not yet checked against any role).
    pub fn signer(&self) -> Result<Address, V1Error> {
        recover(&self.signature, &self.digest())
    }

    /// The delegation request the nodes prove against, for `epoch`.
    pub fn delegation_request(&self, epoch: u64) -> DelegationRequest<S> {
        DelegationRequest::with_encoded(epoch, self.digest().to_vec(), self.ephemeral)
    }
}

/// One node's encrypted partial in a `/v1/delegate` answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptedPartial {
    /// The node index.
    pub node: u16,
    /// RSA-OAEP-SHA256 of the node's `PartialDelegation` bytes (`index || D_i || proof`).
    pub encrypted_partial: String,
}

/// A node that did not contribute, and why (as the manager saw it).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFailureReport {
    /// The node index.
    pub node: u16,
    /// Why.
    pub reason: String,
}

/// The `200` body of `POST /v1/delegate`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DelegateResponse {
    /// The key epoch the partials belong to.
    pub epoch: u64,
    /// Partials needed.
    pub threshold: u16,
    /// The request's EIP-712 digest (its request id), `0x` hex.
    pub request_digest: String,
    /// At least `threshold` encrypted partials, when the cluster could answer.
    pub partials: Vec<EncryptedPartial>,
    /// Nodes that did not answer in time or refused.
    pub failures: Vec<NodeFailureReport>,
    /// The manager wallet's EIP-712 `V1ResponseProof`, `0x` hex.
    pub proof: String,
}

impl DelegateResponse {
    /// The hash the manager's proof covers: every `(node, ciphertext)` in order.
    pub fn response_hash(epoch: u64, partials: &[(u16, Vec<u8>)]) -> B256 {
        let mut buf = Vec::with_capacity(8 + partials.len() * 300);
        buf.extend_from_slice(b"tkms/v1/delegate-response");
        buf.extend_from_slice(&epoch.to_be_bytes());
        for (node, ciphertext) in partials {
            buf.extend_from_slice(&node.to_be_bytes());
            buf.extend_from_slice(
                &u32::try_from(ciphertext.len())
                    .unwrap_or(u32::MAX)
                    .to_be_bytes(),
            );
            buf.extend_from_slice(ciphertext);
        }
        keccak256(&buf)
    }

    /// Build and sign the answer (manager side).
    pub fn build(
        wallet: &SigningKey,
        request: &DelegateV1,
        epoch: u64,
        threshold: u16,
        partials: Vec<(u16, Vec<u8>)>,
        failures: Vec<NodeFailureReport>,
    ) -> Self {
        let digest = request.digest();
        let hash = Self::response_hash(epoch, &partials);
        Self {
            epoch,
            threshold,
            request_digest: hex0x(digest.as_slice()),
            proof: hex0x(&sign_proof(wallet, request.chain_id, digest, hash)),
            partials: partials
                .into_iter()
                .map(|(node, c)| EncryptedPartial {
                    node,
                    encrypted_partial: hex0x(&c),
                })
                .collect(),
            failures,
        }
    }

    fn decoded_partials(&self) -> Result<Vec<(u16, Vec<u8>)>, V1Error> {
        self.partials
            .iter()
            .map(|p| {
                let bytes = unhex(&p.encrypted_partial, "encryptedPartial")
                    .map_err(|e| V1Error::InvalidResponse(e.to_string()))?;
                Ok((p.node, bytes))
            })
            .collect()
    }

    /// The manager wallet that signed this answer to `request`.
    pub fn manager(&self, request: &DelegateV1) -> Result<Address, V1Error> {
        let partials = self.decoded_partials()?;
        proof_signer(
            &self.proof,
            request.chain_id,
            request.digest(),
            Self::response_hash(self.epoch, &partials),
        )
    }
}

fn sign_proof(wallet: &SigningKey, chain_id: u64, request: B256, response: B256) -> [u8; 65] {
    let digest = V1ResponseProof {
        requestDigest: request,
        responseHash: response,
    }
    .eip712_signing_hash(&domain(chain_id));
    sign(wallet, &digest)
}

fn proof_signer(
    proof: &str,
    chain_id: u64,
    request: B256,
    response: B256,
) -> Result<Address, V1Error> {
    let bytes = unhex(proof, "proof").map_err(|e| V1Error::InvalidResponse(e.to_string()))?;
    let digest = V1ResponseProof {
        requestDigest: request,
        responseHash: response,
    }
    .eip712_signing_hash(&domain(chain_id));
    recover(&bytes, &digest).map_err(|e| V1Error::InvalidResponse(format!("proof: {e}")))
}

/// An RSA key pair for `/v1/delegate` (and `/v0/delegate`) answers.
pub struct RsaRecipient {
    key: PrivateDecryptingKey,
    spki: Vec<u8>,
}

impl RsaRecipient {
    /// A fresh 2048-bit key.
    pub fn generate() -> Result<Self, V1Error> {
        let key = PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|e| V1Error::InvalidKey(format!("RSA key generation: {e}")))?;
        Self::from_key(key)
    }

    /// From a PKCS#8 DER private key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, V1Error> {
        let key = PrivateDecryptingKey::from_pkcs8(der)
            .map_err(|e| V1Error::InvalidKey(format!("RSA private key: {e}")))?;
        Self::from_key(key)
    }

    fn from_key(key: PrivateDecryptingKey) -> Result<Self, V1Error> {
        let spki = key
            .public_key()
            .as_der()
            .map_err(|e| V1Error::InvalidKey(format!("RSA public key: {e}")))?
            .as_ref()
            .to_vec();
        Ok(Self { key, spki })
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// The public key as `0x` hex of the SPKI (the `targetPubKey` string).
    pub fn spki_hex(&self) -> String {
        hex0x(&self.spki)
    }

    /// RSA-OAEP-SHA256 decryption.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, V1Error> {
        let oaep = OaepPrivateDecryptingKey::new(self.key.clone())
            .map_err(|e| V1Error::InvalidKey(format!("RSA key: {e}")))?;
        let mut out = Zeroizing::new(vec![0u8; oaep.min_output_size()]);
        let len = oaep
            .decrypt(&OAEP_SHA256_MGF1SHA256, ciphertext, &mut out, None)
            .map_err(|_| V1Error::InvalidResponse("RSA-OAEP decryption failed".into()))?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

/// What a client got out of a threshold answer: the value, and the nodes whose partials were
/// refused (their proofs failed or they did not decrypt).
#[derive(Debug)]
pub struct Opened<T> {
    /// The result.
    pub value: T,
    /// Nodes whose partials were refused, and why.
    pub rejected: Vec<(u16, String)>,
}

/// Client side of `/v1/delegate`: decrypt each node's partial, verify its DLEQ proof against
/// `keys`, and combine `t` valid ones into `x(S)`.
pub fn open_delegation(
    response: &DelegateResponse,
    request: &DelegateV1,
    recipient: &RsaRecipient,
    keys: &PublicKeySet<S>,
) -> Result<Opened<SharedSecret>, V1Error> {
    let digest = request.digest();
    if unhex(&response.request_digest, "requestDigest")? != digest.as_slice() {
        return Err(V1Error::InvalidResponse(
            "the answer is for another request".into(),
        ));
    }
    let domain = request.delegation_request(response.epoch);
    let mut verified = Vec::new();
    let mut rejected = Vec::new();
    for (node, ciphertext) in response.decoded_partials()? {
        let outcome = recipient
            .decrypt(&ciphertext)
            .and_then(|plain| {
                PartialDelegation::<S>::from_bytes(&plain)
                    .map_err(|e| V1Error::InvalidResponse(e.to_string()))
            })
            .and_then(|partial| {
                if partial.index().get() == node {
                    Ok(partial)
                } else {
                    Err(V1Error::InvalidResponse(format!(
                        "partial claims node {}",
                        partial.index()
                    )))
                }
            })
            .and_then(|partial| {
                partial
                    .verify(keys, &domain)
                    .map_err(|e| V1Error::InvalidResponse(e.to_string()))
            });
        match outcome {
            Ok(v) => verified.push(v),
            Err(e) => rejected.push((node, e.to_string())),
        }
        if verified.len() == usize::from(keys.threshold()) {
            break;
        }
    }
    if verified.len() < usize::from(keys.threshold()) {
        return Err(V1Error::InvalidResponse(format!(
            "{} valid partials, {} needed; refused: {rejected:?}",
            verified.len(),
            keys.threshold()
        )));
    }
    let value = delegation::combine(&verified, keys)
        .map_err(|e| V1Error::InvalidResponse(e.to_string()))?;
    Ok(Opened { value, rejected })
}

// ---------------------------------------------------------------------------------------------
// /v1/reencrypt
// ---------------------------------------------------------------------------------------------

/// The JSON body of `POST /v1/reencrypt`: one `capsule` or a batch of `capsules`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReencryptBody {
    /// Chain whose registry authorizes the signer.
    pub chain_id: u64,
    /// `B`, the requester's secp256k1 key, compressed `0x` hex.
    pub target_pub_key: String,
    /// One capsule `K`, compressed `0x` hex (or use `capsules`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capsule: Option<String>,
    /// Capsules `K_j` (1..=[`MAX_BATCH`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capsules: Vec<String>,
    /// 32 bytes, `0x` hex.
    pub nonce: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// A signed `/v1/reencrypt` request.
#[derive(Debug, Clone)]
pub struct ReencryptV1 {
    /// Chain whose registry authorizes the signer.
    pub chain_id: u64,
    /// `B`.
    pub target: Encoded<S>,
    /// The capsules `K_j`.
    pub capsules: Vec<Encoded<S>>,
    /// Nonce and expiry.
    pub freshness: Freshness,
    /// The requester's 65-byte signature.
    pub signature: Vec<u8>,
}

impl ReencryptV1 {
    /// Build and sign a request as `requester`.
    pub fn sign(
        requester: &SigningKey,
        chain_id: u64,
        target: Encoded<S>,
        capsules: Vec<Encoded<S>>,
        freshness: Freshness,
    ) -> Result<Self, V1Error> {
        let mut request = Self::from_parts(chain_id, target, capsules, freshness, Vec::new())?;
        request.signature = sign(requester, &request.digest()).to_vec();
        Ok(request)
    }

    /// Assemble a request from its parts and check the batch size.
    pub fn from_parts(
        chain_id: u64,
        target: Encoded<S>,
        capsules: Vec<Encoded<S>>,
        freshness: Freshness,
        signature: Vec<u8>,
    ) -> Result<Self, V1Error> {
        if capsules.is_empty() || capsules.len() > MAX_BATCH {
            return Err(V1Error::BatchSize(capsules.len()));
        }
        Ok(Self {
            chain_id,
            target,
            capsules,
            freshness,
            signature,
        })
    }

    /// Parse the HTTP body and `Authorization` header.
    pub fn parse(body: &[u8], authorization: Option<&[u8]>) -> Result<Self, V1Error> {
        let body: ReencryptBody = parse_json(body)?;
        let signature = parse_authorization(authorization)?;
        let target = point(&body.target_pub_key, "targetPubKey")?;
        let texts: Vec<&String> = match (&body.capsule, body.capsules.is_empty()) {
            (Some(c), true) => vec![c],
            (None, false) => body.capsules.iter().collect(),
            (Some(_), false) => {
                return Err(V1Error::InvalidBody(
                    "give `capsule` or `capsules`, not both".into(),
                ))
            }
            (None, true) => return Err(V1Error::BatchSize(0)),
        };
        if texts.len() > MAX_BATCH {
            return Err(V1Error::BatchSize(texts.len()));
        }
        let capsules = texts
            .iter()
            .enumerate()
            .map(|(k, c)| point(c, &format!("capsule {k}")))
            .collect::<Result<Vec<_>, _>>()?;
        let freshness = Freshness {
            nonce: nonce(&body.nonce)?,
            expires_at: body.expires_at,
        };
        Self::from_parts(body.chain_id, target, capsules, freshness, signature)
    }

    /// The JSON body and the `Authorization` header value.
    pub fn to_http(&self) -> (ReencryptBody, String) {
        (
            ReencryptBody {
                chain_id: self.chain_id,
                target_pub_key: hex0x(self.target.bytes()),
                capsule: None,
                capsules: self.capsules.iter().map(|c| hex0x(c.bytes())).collect(),
                nonce: hex0x(self.freshness.nonce.as_slice()),
                expires_at: self.freshness.expires_at,
            },
            bearer(&self.signature),
        )
    }

    /// The EIP-712 signing hash.
    pub fn digest(&self) -> B256 {
        ReencryptRequestV1 {
            targetPubKey: Bytes::copy_from_slice(self.target.bytes()),
            capsules: self
                .capsules
                .iter()
                .map(|c| Bytes::copy_from_slice(c.bytes()))
                .collect(),
            nonce: self.freshness.nonce,
            expiresAt: self.freshness.expires_at,
        }
        .eip712_signing_hash(&domain(self.chain_id))
    }

    /// The signer (not yet checked against any role).
    pub fn signer(&self) -> Result<Address, V1Error> {
        recover(&self.signature, &self.digest())
    }

    /// Request id of capsule `k`: the digest followed by `k` (big-endian u16).
    pub fn request_id(digest: &B256, k: usize) -> Vec<u8> {
        let mut id = digest.to_vec();
        id.extend_from_slice(&u16::try_from(k).unwrap_or(u16::MAX).to_be_bytes());
        id
    }

    /// The `(request id, K)` of every capsule, in order.
    pub fn capsule_ids(&self) -> Vec<(Vec<u8>, Encoded<S>)> {
        let digest = self.digest();
        self.capsules
            .iter()
            .enumerate()
            .map(|(k, c)| (Self::request_id(&digest, k), *c))
            .collect()
    }

    /// The re-encryption requests the nodes prove against, for `epoch`.
    pub fn reencryption_requests(&self, epoch: u64) -> Vec<ReencryptionRequest<S>> {
        self.capsule_ids()
            .into_iter()
            .map(|(id, k)| ReencryptionRequest::with_encoded(epoch, id, k, self.target))
            .collect()
    }
}

/// One node's partials for the whole batch.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePartials {
    /// The node index.
    pub node: u16,
    /// `PartialReencryption` bytes (`index || R_i || C_i || proof`), `0x` hex, one per capsule.
    pub partials: Vec<String>,
}

/// The `200` body of `POST /v1/reencrypt`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReencryptResponse {
    /// The key epoch.
    pub epoch: u64,
    /// Partials combined per capsule.
    pub threshold: u16,
    /// The request's EIP-712 digest, `0x` hex.
    pub request_digest: String,
    /// `K || R || C` per capsule, `0x` hex, in request order.
    pub capsules: Vec<String>,
    /// The `t` nodes' verified partials the capsules were combined from.
    pub partials: Vec<NodePartials>,
    /// Nodes that did not contribute.
    pub failures: Vec<NodeFailureReport>,
    /// The manager wallet's EIP-712 `V1ResponseProof`, `0x` hex.
    pub proof: String,
}

impl ReencryptResponse {
    /// The hash the manager's proof covers: epoch, capsules and partials.
    pub fn response_hash(&self) -> B256 {
        let mut buf = Vec::new();
        buf.extend_from_slice(b"tkms/v1/reencrypt-response");
        buf.extend_from_slice(&self.epoch.to_be_bytes());
        for c in &self.capsules {
            buf.extend_from_slice(c.as_bytes());
            buf.push(0);
        }
        for p in &self.partials {
            buf.extend_from_slice(&p.node.to_be_bytes());
            for q in &p.partials {
                buf.extend_from_slice(q.as_bytes());
                buf.push(0);
            }
        }
        keccak256(&buf)
    }

    /// Build and sign the answer (manager side).
    pub fn build(
        wallet: &SigningKey,
        request: &ReencryptV1,
        epoch: u64,
        threshold: u16,
        capsules: &[ReencryptedCapsule<S>],
        partials: &BTreeMap<u16, Vec<Vec<u8>>>,
        failures: Vec<NodeFailureReport>,
    ) -> Self {
        let digest = request.digest();
        let mut response = Self {
            epoch,
            threshold,
            request_digest: hex0x(digest.as_slice()),
            capsules: capsules.iter().map(|c| hex0x(&c.to_bytes())).collect(),
            partials: partials
                .iter()
                .map(|(node, ps)| NodePartials {
                    node: *node,
                    partials: ps.iter().map(|p| hex0x(p)).collect(),
                })
                .collect(),
            failures,
            proof: String::new(),
        };
        response.proof = hex0x(&sign_proof(
            wallet,
            request.chain_id,
            digest,
            response.response_hash(),
        ));
        response
    }

    /// The manager wallet that signed this answer to `request`.
    pub fn manager(&self, request: &ReencryptV1) -> Result<Address, V1Error> {
        proof_signer(
            &self.proof,
            request.chain_id,
            request.digest(),
            self.response_hash(),
        )
    }
}

/// Client side of `/v1/reencrypt`: verify every node's partials against `keys`, recombine
/// `(K, R, C)` per capsule, check it equals the manager's, and return the capsules (open
/// each with [`ReencryptedCapsule::open`] or [`ReencryptedCapsule::decrypt`] and `b`).
pub fn open_reencryption(
    response: &ReencryptResponse,
    request: &ReencryptV1,
    keys: &PublicKeySet<S>,
) -> Result<Vec<ReencryptedCapsule<S>>, V1Error> {
    let bad = |m: String| V1Error::InvalidResponse(m);
    let digest = request.digest();
    if unhex(&response.request_digest, "requestDigest")? != digest.as_slice() {
        return Err(bad("the answer is for another request".into()));
    }
    let domains = request.reencryption_requests(response.epoch);
    if response.capsules.len() != domains.len() {
        return Err(bad(format!(
            "{} capsules for {} requested",
            response.capsules.len(),
            domains.len()
        )));
    }
    let mut columns: Vec<Vec<pre::VerifiedPartialReencryption<S>>> =
        vec![Vec::new(); domains.len()];
    for node in &response.partials {
        if node.partials.len() != domains.len() {
            return Err(bad(format!(
                "node {} sent {} partials",
                node.node,
                node.partials.len()
            )));
        }
        for (k, (text, domain)) in node.partials.iter().zip(&domains).enumerate() {
            let bytes = unhex(text, "partial").map_err(|e| bad(e.to_string()))?;
            let partial = PartialReencryption::<S>::from_bytes(&bytes)
                .map_err(|e| bad(format!("node {} capsule {k}: {e}", node.node)))?;
            if partial.index().get() != node.node {
                return Err(bad(format!(
                    "node {} sent a partial of node {}",
                    node.node,
                    partial.index()
                )));
            }
            let verified = partial
                .verify(keys, domain, &mut rand_core::OsRng)
                .map_err(|e| bad(format!("node {} capsule {k}: {e}", node.node)))?;
            columns[k].push(verified);
        }
    }
    let mut out = Vec::with_capacity(domains.len());
    for (k, column) in columns.iter().enumerate() {
        let combined = pre::combine(column, keys).map_err(|e| bad(format!("capsule {k}: {e}")))?;
        let sent = unhex(&response.capsules[k], "capsule").map_err(|e| bad(e.to_string()))?;
        if sent != combined.to_bytes() {
            return Err(bad(format!(
                "capsule {k} differs from the combination of the partials"
            )));
        }
        out.push(combined);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The cluster key as `/v0/public-key` publishes it
// ---------------------------------------------------------------------------------------------

/// `GET /v0/public-key`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicKeyResponse {
    /// `PK`, compressed `0x` hex.
    pub public_key: String,
    /// Key epoch.
    pub epoch: u64,
    /// Threshold.
    pub threshold: u16,
    /// Committee size.
    pub n: usize,
    /// `PK_i` by node index.
    pub public_shares: BTreeMap<String, String>,
    /// The Feldman commitment `A_0..A_{t-1}`, compressed `0x` hex.
    #[serde(default)]
    pub commitment: Vec<String>,
}

impl PublicKeyResponse {
    /// The public key set, derived from the commitment and checked against `publicKey` and
    /// every listed public share.
    pub fn key_set(&self) -> Result<PublicKeySet<S>, V1Error> {
        let bad = |m: String| V1Error::InvalidResponse(m);
        let points = self
            .commitment
            .iter()
            .map(|p| point(p, "commitment").map(|e| *e.point()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let commitment = tkms_crypto::shamir::Commitment::new(points)
            .map_err(|e| bad(format!("commitment: {e}")))?;
        let committee = self
            .public_shares
            .keys()
            .map(|i| {
                i.parse::<u16>()
                    .ok()
                    .and_then(NodeIndex::new)
                    .ok_or_else(|| bad(format!("bad node index {i:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = PublicKeySet::new(commitment, committee);
        if keys.threshold() != self.threshold {
            return Err(bad("threshold differs from the commitment's".into()));
        }
        let pk = point(&self.public_key, "publicKey").map_err(|e| bad(e.to_string()))?;
        if keys.public_key_encoded() != &pk {
            return Err(bad("publicKey differs from the commitment's".into()));
        }
        for (i, share) in &self.public_shares {
            let share = point(share, "publicShare").map_err(|e| bad(e.to_string()))?;
            let index = i
                .parse::<u16>()
                .ok()
                .and_then(NodeIndex::new)
                .ok_or_else(|| bad(format!("bad node index {i:?}")))?;
            if keys.public_share(index).ok() != Some(*share.point()) {
                return Err(bad(format!(
                    "public share {i} differs from the commitment's"
                )));
            }
        }
        Ok(keys)
    }
}

/// Check the manager's answer came from `expected` (the manager wallet the client trusts).
pub fn check_manager(signer: Address, expected: Address) -> Result<(), V1Error> {
    if signer == expected {
        Ok(())
    } else {
        Err(V1Error::InvalidResponse(format!(
            "signed by {signer}, not the manager {expected}"
        )))
    }
}

/// A fresh target key pair for `/v1/reencrypt`.
pub fn target_key() -> (SecretScalar<S>, Encoded<S>) {
    let b = SecretScalar::<S>::random(&mut rand_core::OsRng);
    let public = Encoded::new(b.public_point());
    (b, public)
}
