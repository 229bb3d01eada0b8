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
    collections::HashMap,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::{sol, Eip712Domain, SolStruct};
use k256::ecdsa::SigningKey;
use serde::Deserialize;
use tkms_crypto::{suite::Encoded, ClusterSuite as S};

use crate::nox;

mod delegate;
mod public_key;
mod reencrypt;

pub use delegate::{
    open_delegation, DelegateBody, DelegateResponse, DelegateV1, EncryptedPartial,
    NodeFailureReport, Opened, RsaRecipient,
};
pub use public_key::{check_manager, target_key, PublicKeyResponse};
pub use reencrypt::{
    open_reencryption, NodePartials, ReencryptBody, ReencryptResponse, ReencryptV1,
};

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

/// The address whose 65-byte `signature` (`r || s || v`) signed `digest`.
pub fn recover(signature: &[u8], digest: &B256) -> Result<Address, V1Error> {
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

/// The manager wallet's `V1ResponseProof` over a request and its answer.
fn sign_proof(wallet: &SigningKey, chain_id: u64, request: B256, response: B256) -> [u8; 65] {
    let digest = V1ResponseProof {
        requestDigest: request,
        responseHash: response,
    }
    .eip712_signing_hash(&domain(chain_id));
    sign(wallet, &digest)
}

/// The manager wallet that signed a `V1ResponseProof`.
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
