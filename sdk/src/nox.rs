//! The wire layer of `POST /v0/delegate`, byte-compatible with the single-key Nox KMS that
//! the Nox Handle Gateway calls (docs/ARCHITECTURE.md §4.1; the researched format is
//! `docs/NOX-COMPAT.md`, cited below as "NC §n").
//!
//! Sans-IO: these functions take the raw query string, body bytes and `Authorization` header
//! bytes and return typed values or a [`NoxError`]; the axum handler only moves bytes. The
//! flow is:
//!
//! 1. [`DelegateRequest::parse`] checks the syntax of everything (NC §3, §4.1).
//! 2. [`DelegateRequest::signer`] recovers the EIP-712 signer of the `DelegateAuthorization`
//!    (NC §1.1, §2); the handler compares it with the chain's gateway.
//! 3. The cluster computes `x(S)`; [`DelegateRequest::respond`] (or
//!    [`encrypt_shared_secret`] + [`sign_response`]) builds the [`DelegateResponse`]
//!    (NC §1.2, §3).
//!
//! Choices where Nox, docs/ARCHITECTURE.md and this module differ (each also noted where it
//! applies):
//!
//! - **`salt` may be absent** and then is `bytes32(0)` (docs/ARCHITECTURE.md §4.1 and the Nox doc
//!   comment). Nox's code requires it (NC §4.1, §7.1); defaulting is a strict superset and the
//!   gateway always sends one. A *present* but malformed or empty salt is refused, as in Nox.
//!   `chain_id` is required, as in Nox.
//! - **`chain_id` is a `u64`**; Nox parses a `u32` (NC §1.1). An id above `u32::MAX` is never
//!   a configured chain, so the handler refuses it anyway (`UnknownChain`).
//! - **Every authorization failure is [`UNAUTHORIZED_STATUS`] = 401**: a missing or
//!   malformed `Authorization`, a signature that does not recover, and a well-formed
//!   signature by an account that is not an authorized gateway (docs/ARCHITECTURE.md §4.1, §4.6; NC
//!   §4.3, §7.2 record what the Nox versions we could read answer). The code tells
//!   the cases apart (`unauthorized`, `signer_not_authorized`). The gateway treats every
//!   non-2xx alike.
//! - **`v` must be 0, 1, 27 or 28.** Nox (alloy `normalize_v`) also takes EIP-155 values
//!   35..=255 (NC §2); the gateway only sends 27/28, so the stricter rule is safe.
//! - **High-`s` signatures are accepted**, as in Nox: alloy normalises `s` before recovery
//!   (NC §2). The signer is still unique for a given signed message; malleability only
//!   yields a second encoding of the same authorization, which Nox does not replay-protect
//!   either (NC §2: no nonce, no expiry).
//! - **The RSA key must have a modulus of 2048..=4096 bits** (docs/ARCHITECTURE.md §4.1), on top of
//!   Nox's own rule "SPKI hex >= 512 characters" (NC §3, §7.6), which is also applied. Nox accepts
//!   some 1740..2047-bit keys; the gateway and SDK never send them. The 4096 cap mirrors the `rsa`
//!   crate's (NC §3, ASSUMED there). The key must be `rsaEncryption` (not RSA-PSS).
//! - **Hex prefixes** follow Nox (NC §3): keys may carry a lowercase `0x` (or none), digits of
//!   either case; the salt may carry `0x` or `0X`. Nox's decoder would also swallow a second
//!   prefix in `targetPubKey` (`0x0x…`, `0X…`) and in the signature (`Bearer 0x0x…`); that
//!   accident is not reproduced.

use std::{borrow::Cow, sync::LazyLock};

use alloy_primitives::{keccak256, Address, Keccak256, Signature, B256, U256};
use alloy_sol_types::{sol, Eip712Domain, SolStruct};
use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey, OAEP_SHA256_MGF1SHA256};
use k256::ecdsa::SigningKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tkms_crypto::{dst, Secp256k1, SharedSecret, Suite};

/// EIP-712 domain name of both the authorization and the response proof (NC §1).
pub const EIP712_DOMAIN_NAME: &str = "ProtocolDelegate";
/// EIP-712 domain version (NC §1).
pub const EIP712_DOMAIN_VERSION: &str = "1";

/// HTTP status for malformed input.
pub const MALFORMED_STATUS: u16 = 400;
/// HTTP status for a missing, malformed or wrongly signed `Authorization`, and for a valid
/// signature by an account that is not an authorized gateway (NC §4.3). The gateway treats
/// every non-2xx alike (NC §4.3).
pub const UNAUTHORIZED_STATUS: u16 = 401;

/// Required `Authorization` prefix, exact and case-sensitive (NC §2, `strip_prefix`).
pub const BEARER_PREFIX: &str = "Bearer 0x";
/// Length of an Ethereum signature `r || s || v`.
pub const SIGNATURE_LEN: usize = 65;
/// Hex length of the compressed ephemeral key after stripping `0x` (Nox
/// `EXPECTED_EPHEMERAL_PUB_KEY_HEX_LEN`, NC §3).
pub const EPHEMERAL_PUB_KEY_HEX_LEN: usize = 66;
/// Nox's minimum hex length of the target SPKI after stripping `0x` (`MIN_RSA_KEY_HEX_LEN`,
/// NC §3). It counts DER characters, not modulus bits.
pub const MIN_TARGET_PUB_KEY_HEX_LEN: usize = 512;
/// Upper bound on the target SPKI hex length, so no huge string is decoded. Any 4096-bit SPKI
/// (even with an exponent as long as the modulus) fits.
pub const MAX_TARGET_PUB_KEY_HEX_LEN: usize = 4096;
/// Smallest accepted RSA modulus (docs/ARCHITECTURE.md §4.1).
pub const MIN_RSA_MODULUS_BITS: usize = 2048;
/// Largest accepted RSA modulus (the `rsa` crate's cap, NC §3).
pub const MAX_RSA_MODULUS_BITS: usize = 4096;
/// Largest accepted request body. The real body is under 1.5 KiB; unknown fields are allowed
/// (NC §4.1), so leave room for them.
pub const MAX_BODY_LEN: usize = 64 * 1024;
/// Largest accepted query string (`chain_id` and `salt` take under 100 bytes).
pub const MAX_QUERY_LEN: usize = 4 * 1024;

/// DER of the SPKI `AlgorithmIdentifier { rsaEncryption, NULL }`.
const RSA_ENCRYPTION_ALGORITHM_ID: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

sol! {
    /// What the gateway signs to ask for a delegation (NC §1.1).
    struct DelegateAuthorization {
        string ephemeralPubKey;
        string targetPubKey;
    }

    /// What the KMS wallet signs over its answer (NC §1.2).
    struct DelegateResponseProof {
        string encryptedSharedSecret;
    }
}

/// Why a `/v0/delegate` request (or, for [`NoxError::InvalidProof`], a response) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoxError {
    /// The query string lacks `chain_id` or has a malformed `chain_id` or `salt`.
    #[error("Invalid query parameters: {0}")]
    InvalidQuery(String),
    /// `chain_id` is not a chain this manager serves (raised by the handler).
    #[error("Unknown Chain ID {0}")]
    UnknownChain(u64),
    /// The body is not JSON with string fields `ephemeralPubKey` and `targetPubKey`.
    #[error("Invalid request body: {0}")]
    InvalidBody(String),
    /// The `Authorization` header is missing or malformed, or the signature does not recover.
    #[error("Unauthorized: {0}")]
    Unauthorized(String),
    /// The signature recovers, but to an address that may not delegate on this chain (raised
    /// by the handler after [`DelegateRequest::signer`]).
    #[error("Unauthorized: signer {signer} is not an authorized gateway for chain {chain_id}")]
    SignerNotAuthorized {
        /// The recovered signer.
        signer: Address,
        /// The chain of the request.
        chain_id: u64,
    },
    /// `ephemeralPubKey` is not a compressed secp256k1 point in hex.
    #[error("Invalid ephemeralPubKey: {0}")]
    InvalidEphemeralPubKey(String),
    /// `targetPubKey` is not an acceptable RSA SubjectPublicKeyInfo in hex.
    #[error("Invalid targetPubKey: {0}")]
    InvalidTargetPubKey(String),
    /// RSA encryption failed although the key was accepted.
    #[error("RSA encryption of the shared secret failed")]
    Encryption,
    /// A response `proof` is malformed or does not recover (client side, [`verify_response`]).
    #[error("Invalid response proof: {0}")]
    InvalidProof(String),
}

impl NoxError {
    /// A stable machine-readable code for the JSON error body (`{"error", "code"}`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidQuery(_) => "invalid_query",
            Self::UnknownChain(_) => "unknown_chain",
            Self::InvalidBody(_) => "invalid_body",
            Self::Unauthorized(_) => "unauthorized",
            Self::SignerNotAuthorized { .. } => "signer_not_authorized",
            Self::InvalidEphemeralPubKey(_) => "invalid_ephemeral_pub_key",
            Self::InvalidTargetPubKey(_) => "invalid_target_pub_key",
            Self::Encryption => "encryption_failed",
            Self::InvalidProof(_) => "invalid_proof",
        }
    }

    /// The HTTP status the handler should answer with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Unauthorized(_) | Self::SignerNotAuthorized { .. } => UNAUTHORIZED_STATUS,
            Self::Encryption => 500,
            // Only a client verifying an upstream answer sees this: the upstream was bad.
            Self::InvalidProof(_) => 502,
            Self::InvalidQuery(_)
            | Self::UnknownChain(_)
            | Self::InvalidBody(_)
            | Self::InvalidEphemeralPubKey(_)
            | Self::InvalidTargetPubKey(_) => MALFORMED_STATUS,
        }
    }
}

/// The JSON body of `POST /v0/delegate` as Nox reads it: camelCase, unknown fields ignored
/// (NC §4.1).
#[derive(Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DelegateBody {
    /// `K`, the ECIES ephemeral public key, compressed `0x` hex.
    pub ephemeral_pub_key: String,
    /// The requester's RSA SubjectPublicKeyInfo DER, `0x` hex.
    pub target_pub_key: String,
}

/// The `200` body: `{"encryptedSharedSecret":"0x…","proof":"0x…"}`, in that order (NC §4.1).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DelegateResponse {
    /// `0x` + lowercase hex of RSA-OAEP-SHA256(`x(S)`).
    pub encrypted_shared_secret: String,
    /// `0x` + lowercase hex of the wallet's 65-byte EIP-712 signature (`v` = 27/28).
    pub proof: String,
}

/// A syntactically valid `/v0/delegate` request. Its signer is not checked yet: call
/// [`DelegateRequest::signer`] and compare it with the chain's gateway.
#[derive(Debug, Clone)]
pub struct DelegateRequest {
    chain_id: u64,
    salt: B256,
    ephemeral_pub_key: String,
    target_pub_key: String,
    ephemeral: <Secp256k1 as Suite>::Point,
    target_spki_der: Vec<u8>,
    signature: Signature,
}

impl DelegateRequest {
    /// Parse and check a request, in Nox's order (NC §4.2): query, body, `Authorization`
    /// header, then the two keys.
    ///
    /// - `query`: the raw query string without `?` (empty if none);
    /// - `body`: the raw body bytes (JSON);
    /// - `authorization`: the raw `Authorization` header value, if present.
    pub fn parse(query: &str, body: &[u8], authorization: Option<&[u8]>) -> Result<Self, NoxError> {
        let (chain_id, salt) = parse_query(query)?;
        let body = parse_body(body)?;
        let signature = parse_authorization(authorization)?;
        let ephemeral = parse_ephemeral_pub_key(&body.ephemeral_pub_key)?;
        let target_spki_der = parse_target_pub_key(&body.target_pub_key)?;
        Ok(Self {
            chain_id,
            salt,
            ephemeral_pub_key: body.ephemeral_pub_key,
            target_pub_key: body.target_pub_key,
            ephemeral,
            target_spki_der,
            signature,
        })
    }

    /// The EIP-712 signer of the `DelegateAuthorization` over the body strings exactly as
    /// received (NC §1.1). High-`s` signatures recover too, as in Nox (NC §2).
    pub fn signer(&self) -> Result<Address, NoxError> {
        let digest = authorization_signing_hash(
            self.chain_id,
            &self.ephemeral_pub_key,
            &self.target_pub_key,
        );
        crate::ecrecover::recover_address(&self.signature, &digest)
            .map_err(|e| NoxError::Unauthorized(format!("signature does not recover: {e}")))
    }

    /// Encrypt `x(S)` to the target key and sign the answer with the manager wallet.
    pub fn respond(
        &self,
        wallet: &SigningKey,
        shared: &SharedSecret,
    ) -> Result<DelegateResponse, NoxError> {
        let encrypted_shared_secret = encrypt_shared_secret(&self.target_spki_der, shared)?;
        let proof = sign_response(wallet, self.chain_id, self.salt, &encrypted_shared_secret);
        Ok(DelegateResponse {
            encrypted_shared_secret,
            proof,
        })
    }

    /// Rebuild a request from what a node receives with a partial request: the chain, the
    /// two body strings exactly as signed, and the signature. Checks the same syntax as
    /// [`DelegateRequest::parse`]; the salt (which only the manager's proof uses) is zero.
    pub fn from_authorization(
        chain_id: u64,
        ephemeral_pub_key: &str,
        target_pub_key: &str,
        signature: &[u8],
    ) -> Result<Self, NoxError> {
        let signature = signature_from_bytes(signature).map_err(NoxError::Unauthorized)?;
        Ok(Self {
            chain_id,
            salt: B256::ZERO,
            ephemeral: parse_ephemeral_pub_key(ephemeral_pub_key)?,
            target_spki_der: parse_target_pub_key(target_pub_key)?,
            ephemeral_pub_key: ephemeral_pub_key.to_owned(),
            target_pub_key: target_pub_key.to_owned(),
            signature,
        })
    }

    /// The request id every node's proof is bound to: `SHA-256("tkms/v0/delegate" || chain_id
    /// || ephemeralPubKey || targetPubKey || signature)`, so a partial serves only this exact
    /// authorized request.
    pub fn request_id(&self) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(dst::V0_DELEGATE);
        h.update(self.chain_id.to_be_bytes());
        h.update(self.ephemeral_pub_key.as_bytes());
        h.update(self.target_pub_key.as_bytes());
        h.update(self.signature.as_bytes());
        h.finalize().to_vec()
    }

    /// The `chain_id` query parameter.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The `salt` query parameter (`bytes32(0)` when absent).
    pub fn salt(&self) -> B256 {
        self.salt
    }

    /// `ephemeralPubKey` exactly as received.
    pub fn ephemeral_pub_key(&self) -> &str {
        &self.ephemeral_pub_key
    }

    /// `targetPubKey` exactly as received.
    pub fn target_pub_key(&self) -> &str {
        &self.target_pub_key
    }

    /// The decoded ephemeral point `K` (on the curve, not the identity).
    pub fn ephemeral(&self) -> &<Secp256k1 as Suite>::Point {
        &self.ephemeral
    }

    /// The decoded target key: RSA SubjectPublicKeyInfo DER.
    pub fn target_spki_der(&self) -> &[u8] {
        &self.target_spki_der
    }

    /// The signature from the `Authorization` header.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }
}

/// Domain of the request authorization: `{name, version, chainId}`, no salt (NC §1.1).
pub fn authorization_domain(chain_id: u64) -> Eip712Domain {
    Eip712Domain::new(
        Some(Cow::Borrowed(EIP712_DOMAIN_NAME)),
        Some(Cow::Borrowed(EIP712_DOMAIN_VERSION)),
        Some(U256::from(chain_id)),
        None,
        None,
    )
}

/// Domain of the response proof: `{name, version, chainId, salt}` (NC §1.2).
pub fn response_domain(chain_id: u64, salt: B256) -> Eip712Domain {
    Eip712Domain::new(
        Some(Cow::Borrowed(EIP712_DOMAIN_NAME)),
        Some(Cow::Borrowed(EIP712_DOMAIN_VERSION)),
        Some(U256::from(chain_id)),
        None,
        Some(salt),
    )
}

/// What the two `/v0` EIP-712 digests need that no request changes, computed once: alloy's
/// generic `eip712_signing_hash` recomputes the domain's type and field hashes and the
/// struct's type hash (4 of the authorization digest's 13 Keccak permutations) and copies
/// the strings on every call, and every node and the manager compute this digest per request.
struct Eip712Constants {
    /// `EIP712Domain(string name,string version,uint256 chainId)`.
    domain_type: B256,
    /// `EIP712Domain(string name,string version,uint256 chainId,bytes32 salt)`.
    salted_domain_type: B256,
    name: B256,
    version: B256,
    authorization_type: B256,
    response_type: B256,
}

static EIP712: LazyLock<Eip712Constants> = LazyLock::new(|| Eip712Constants {
    domain_type: authorization_domain(0).type_hash(),
    salted_domain_type: response_domain(0, B256::ZERO).type_hash(),
    name: keccak256(EIP712_DOMAIN_NAME),
    version: keccak256(EIP712_DOMAIN_VERSION),
    authorization_type: DelegateAuthorization {
        ephemeralPubKey: String::new(),
        targetPubKey: String::new(),
    }
    .eip712_type_hash(),
    response_type: DelegateResponseProof {
        encryptedSharedSecret: String::new(),
    }
    .eip712_type_hash(),
});

/// `keccak256(0x1901 ‖ domainSeparator ‖ hashStruct)` for a `{name, version, chainId[, salt]}`
/// domain and a struct of string members (EIP-712: each string member encodes as its hash).
fn signing_hash(chain_id: u64, salt: Option<B256>, struct_type: B256, members: &[&str]) -> B256 {
    let c = &*EIP712;
    let mut domain = Keccak256::new();
    domain.update(if salt.is_some() {
        c.salted_domain_type
    } else {
        c.domain_type
    });
    domain.update(c.name);
    domain.update(c.version);
    domain.update(U256::from(chain_id).to_be_bytes::<32>());
    if let Some(salt) = salt {
        domain.update(salt);
    }
    let mut message = Keccak256::new();
    message.update(struct_type);
    for member in members {
        message.update(keccak256(member));
    }
    let mut digest = Keccak256::new();
    digest.update([0x19, 0x01]);
    digest.update(domain.finalize());
    digest.update(message.finalize());
    digest.finalize()
}

/// EIP-712 digest of `DelegateAuthorization{ephemeralPubKey, targetPubKey}` (NC §1.1).
pub fn authorization_signing_hash(
    chain_id: u64,
    ephemeral_pub_key: &str,
    target_pub_key: &str,
) -> B256 {
    signing_hash(
        chain_id,
        None,
        EIP712.authorization_type,
        &[ephemeral_pub_key, target_pub_key],
    )
}

/// EIP-712 digest of `DelegateResponseProof{encryptedSharedSecret}` (NC §1.2).
pub fn response_signing_hash(chain_id: u64, salt: B256, encrypted_shared_secret: &str) -> B256 {
    signing_hash(
        chain_id,
        Some(salt),
        EIP712.response_type,
        &[encrypted_shared_secret],
    )
}

/// The gateway side: the `Authorization` header value (`Bearer 0x` + 130 lowercase hex,
/// `v` = 27/28) authorizing a delegation of these exact body strings (NC §2).
pub fn authorization_header(
    gateway: &SigningKey,
    chain_id: u64,
    ephemeral_pub_key: &str,
    target_pub_key: &str,
) -> String {
    let digest = authorization_signing_hash(chain_id, ephemeral_pub_key, target_pub_key);
    format!(
        "{BEARER_PREFIX}{}",
        hex::encode(sign_digest(gateway, &digest))
    )
}

/// RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) of the 32 bytes `x(S)` to the target key,
/// as `0x` + lowercase hex (NC §3). The output is randomised.
pub fn encrypt_shared_secret(
    target_spki_der: &[u8],
    shared: &SharedSecret,
) -> Result<String, NoxError> {
    let ciphertext = rsa_oaep_encrypt(target_spki_der, shared.as_bytes())?;
    Ok(format!("0x{}", hex::encode(ciphertext)))
}

/// RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) of `plaintext` to an `rsaEncryption` SPKI
/// with a 2048..=4096-bit modulus. The output is randomised.
pub fn rsa_oaep_encrypt(target_spki_der: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, NoxError> {
    let key = rsa_public_key(target_spki_der)?;
    let key = OaepPublicEncryptingKey::new(key).map_err(|_| NoxError::Encryption)?;
    let mut out = vec![0u8; key.ciphertext_size()];
    let ciphertext = key
        .encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut out, None)
        .map_err(|_| NoxError::Encryption)?;
    Ok(ciphertext.to_vec())
}

/// The wallet's proof over the answer: EIP-712 `DelegateResponseProof{encryptedSharedSecret}`
/// under `{name, version, chainId, salt}`, signed over the string exactly as returned, as `0x`
/// + 130 lowercase hex with `v` = 27/28 (NC §1.2, §2). Deterministic (RFC 6979), low-`s`.
pub fn sign_response(
    wallet: &SigningKey,
    chain_id: u64,
    salt: B256,
    encrypted_shared_secret: &str,
) -> String {
    let digest = response_signing_hash(chain_id, salt, encrypted_shared_secret);
    format!("0x{}", hex::encode(sign_digest(wallet, &digest)))
}

/// The client side of [`sign_response`], as the gateway does it (NC §2): the address that
/// signed `proof` over `encrypted_shared_secret`. The caller compares it with the manager
/// wallet it trusts. `proof` may carry `0x`/`0X` and digits of either case.
pub fn verify_response(
    chain_id: u64,
    salt: B256,
    encrypted_shared_secret: &str,
    proof: &str,
) -> Result<Address, NoxError> {
    let bytes = decode_hex(strip_any_0x(proof)).map_err(NoxError::InvalidProof)?;
    let signature = signature_from_bytes(&bytes).map_err(NoxError::InvalidProof)?;
    let digest = response_signing_hash(chain_id, salt, encrypted_shared_secret);
    crate::ecrecover::recover_address(&signature, &digest)
        .map_err(|e| NoxError::InvalidProof(format!("signature does not recover: {e}")))
}

/// The Ethereum address of a wallet key.
pub fn wallet_address(wallet: &SigningKey) -> Address {
    Address::from_private_key(wallet)
}

/// Sign a 32-byte digest: `r || s || v` with `v` = 27/28.
///
/// RFC 6979 ECDSA with low `s` through libsecp256k1 (about a third of k256's time); the
/// signature is the one k256 makes (`tests/nox.rs` compares them), and k256 signs in the
/// cases libsecp256k1's recovery id cannot be a parity (`R.x` above the group order,
/// probability ~2^-127).
pub(crate) fn sign_digest(key: &SigningKey, digest: &B256) -> [u8; SIGNATURE_LEN] {
    let secret = zeroize::Zeroizing::new(<[u8; 32]>::from(key.to_bytes()));
    if let Ok(mut secret) = secp256k1::SecretKey::from_byte_array(*secret) {
        let signature = secp256k1::SECP256K1
            .sign_ecdsa_recoverable(secp256k1::Message::from_digest(digest.0), &secret);
        secret.non_secure_erase();
        let (id, compact) = signature.serialize_compact();
        if let Ok(parity @ 0..=1) = u8::try_from(i32::from(id)) {
            let mut out = [0u8; SIGNATURE_LEN];
            out[..64].copy_from_slice(&compact);
            out[64] = 27 + parity;
            return out;
        }
    }
    // RFC 6979 fails only if the derived nonce gives r = 0 or s = 0: probability ~2^-256 and
    // not reachable by choosing the (hashed) message.
    let (signature, recovery_id) = key
        .sign_prehash_recoverable(digest.as_slice())
        .expect("RFC 6979 ECDSA over a 32-byte digest");
    Signature::from_signature_and_parity(signature, recovery_id.is_y_odd()).as_bytes()
}

/// `chain_id` (required, decimal) and `salt` (optional, 32 bytes of hex) from a raw query.
/// Unknown parameters are ignored and duplicates refused, as serde_urlencoded does in Nox.
fn parse_query(query: &str) -> Result<(u64, B256), NoxError> {
    if query.len() > MAX_QUERY_LEN {
        return Err(NoxError::InvalidQuery("query string too long".into()));
    }
    let mut chain_id = None;
    let mut salt = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match percent_decode(key).as_str() {
            "chain_id" => &mut chain_id,
            "salt" => &mut salt,
            _ => continue,
        };
        if slot.replace(percent_decode(value)).is_some() {
            return Err(NoxError::InvalidQuery(format!(
                "duplicate parameter `{}`",
                percent_decode(key)
            )));
        }
    }
    let chain_id = chain_id.ok_or_else(|| NoxError::InvalidQuery("missing `chain_id`".into()))?;
    let chain_id = parse_chain_id(&chain_id)?;
    let salt = match salt {
        None => B256::ZERO,
        Some(salt) => parse_salt(&salt)?,
    };
    Ok((chain_id, salt))
}

fn parse_chain_id(value: &str) -> Result<u64, NoxError> {
    let err = || NoxError::InvalidQuery("`chain_id` must be a decimal integer below 2^64".into());
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    value.parse().map_err(|_| err())
}

fn parse_salt(value: &str) -> Result<B256, NoxError> {
    let bytes = decode_hex(strip_any_0x(value))
        .map_err(|e| NoxError::InvalidQuery(format!("`salt`: {e}")))?;
    if bytes.len() != 32 {
        return Err(NoxError::InvalidQuery(
            "Salt length must be 32 bytes".into(),
        ));
    }
    Ok(B256::from_slice(&bytes))
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; a stray `%`
/// stays literal and invalid UTF-8 becomes U+FFFD (what `form_urlencoded` does).
fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let pair = bytes.get(i + 1..i + 3).and_then(|h| hex::decode(h).ok());
                if let Some(byte) = pair {
                    out.extend_from_slice(&byte);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_body(body: &[u8]) -> Result<DelegateBody, NoxError> {
    if body.len() > MAX_BODY_LEN {
        return Err(NoxError::InvalidBody(format!(
            "body is {} bytes, at most {MAX_BODY_LEN} allowed",
            body.len()
        )));
    }
    serde_json::from_slice(body).map_err(|e| NoxError::InvalidBody(e.to_string()))
}

/// `Bearer 0x` + 130 hex digits (either case) of `r || s || v` (NC §2).
fn parse_authorization(header: Option<&[u8]>) -> Result<Signature, NoxError> {
    let header =
        header.ok_or_else(|| NoxError::Unauthorized("missing Authorization header".into()))?;
    let header = std::str::from_utf8(header)
        .map_err(|_| NoxError::Unauthorized("Authorization header is not UTF-8".into()))?;
    let hex_sig = header.strip_prefix(BEARER_PREFIX).ok_or_else(|| {
        NoxError::Unauthorized(format!("Authorization must start with `{BEARER_PREFIX}`"))
    })?;
    if hex_sig.len() != 2 * SIGNATURE_LEN {
        return Err(NoxError::Unauthorized(format!(
            "signature must be {} hex digits, got {}",
            2 * SIGNATURE_LEN,
            hex_sig.len()
        )));
    }
    let bytes = decode_hex(hex_sig).map_err(NoxError::Unauthorized)?;
    signature_from_bytes(&bytes).map_err(NoxError::Unauthorized)
}

/// 65 bytes `r || s || v`, `v` in {0, 1, 27, 28}.
pub(crate) fn signature_from_bytes(bytes: &[u8]) -> Result<Signature, String> {
    let bytes: &[u8; SIGNATURE_LEN] = bytes.try_into().map_err(|_| {
        format!(
            "signature must be {SIGNATURE_LEN} bytes, got {}",
            bytes.len()
        )
    })?;
    let parity = match bytes[64] {
        0 | 27 => false,
        1 | 28 => true,
        v => return Err(format!("signature v must be 0, 1, 27 or 28, got {v}")),
    };
    Ok(Signature::from_bytes_and_parity(&bytes[..64], parity))
}

/// Optional lowercase `0x`, then exactly 66 hex digits of a compressed point on secp256k1
/// (NC §3, `hex_to_point`).
pub(crate) fn parse_ephemeral_pub_key(
    value: &str,
) -> Result<<Secp256k1 as Suite>::Point, NoxError> {
    let err = NoxError::InvalidEphemeralPubKey;
    let digits = value.strip_prefix("0x").unwrap_or(value);
    if digits.len() != EPHEMERAL_PUB_KEY_HEX_LEN {
        return Err(err(format!(
            "expected {EPHEMERAL_PUB_KEY_HEX_LEN} hex digits (33-byte compressed point), got {}",
            digits.len()
        )));
    }
    let bytes = decode_hex(digits).map_err(err)?;
    Secp256k1::decode_point(&bytes).map_err(|e| err(e.to_string()))
}

/// Optional lowercase `0x`, then the hex of an RSA SPKI DER: Nox's length rule, then a
/// modulus of 2048..=4096 bits (NC §3, §7.6).
pub(crate) fn parse_target_pub_key(value: &str) -> Result<Vec<u8>, NoxError> {
    let err = NoxError::InvalidTargetPubKey;
    let digits = value.strip_prefix("0x").unwrap_or(value);
    if digits.len() < MIN_TARGET_PUB_KEY_HEX_LEN {
        return Err(err(format!(
            "RSA key too short: {} hex digits, at least {MIN_TARGET_PUB_KEY_HEX_LEN} required",
            digits.len()
        )));
    }
    if digits.len() > MAX_TARGET_PUB_KEY_HEX_LEN {
        return Err(err(format!(
            "RSA key too long: {} hex digits, at most {MAX_TARGET_PUB_KEY_HEX_LEN} allowed",
            digits.len()
        )));
    }
    let der = decode_hex(digits).map_err(err)?;
    rsa_public_key(&der)?;
    Ok(der)
}

/// Parse an `rsaEncryption` SubjectPublicKeyInfo with a 2048..=4096-bit modulus.
pub(crate) fn rsa_public_key(der: &[u8]) -> Result<PublicEncryptingKey, NoxError> {
    let err = NoxError::InvalidTargetPubKey;
    if spki_algorithm_id(der) != Some(&RSA_ENCRYPTION_ALGORITHM_ID[..]) {
        return Err(err(
            "not a DER SubjectPublicKeyInfo of an rsaEncryption key (with nothing after it)".into(),
        ));
    }
    // aws-lc refuses moduli outside 2048..=8192 bits here.
    let key = PublicEncryptingKey::from_der(der)
        .map_err(|e| err(format!("not a usable RSA public key: {e}")))?;
    let bits = key.key_size_bits();
    if !(MIN_RSA_MODULUS_BITS..=MAX_RSA_MODULUS_BITS).contains(&bits) {
        return Err(err(format!(
            "RSA modulus is {bits} bits, {MIN_RSA_MODULUS_BITS}..={MAX_RSA_MODULUS_BITS} allowed"
        )));
    }
    Ok(key)
}

/// The first 15 bytes inside the outer SEQUENCE of a DER SPKI, where the `AlgorithmIdentifier`
/// sits; `None` unless `der` is exactly one SEQUENCE (definite length, nothing after it).
fn spki_algorithm_id(der: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (&len, rest) = rest.split_first()?;
    let (content_len, content) = match len {
        0..=0x7f => (usize::from(len), rest),
        0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
        0x82 => {
            let bytes = rest.get(..2)?;
            (
                usize::from(u16::from_be_bytes([bytes[0], bytes[1]])),
                rest.get(2..)?,
            )
        }
        _ => return None,
    };
    if content.len() != content_len {
        return None;
    }
    content.get(..RSA_ENCRYPTION_ALGORITHM_ID.len())
}

/// Strip an optional `0x` or `0X`, as const-hex does for the salt and the proof.
pub(crate) fn strip_any_0x(value: &str) -> &str {
    value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
        .unwrap_or(value)
}

/// Hex digits of either case, no prefix.
pub(crate) fn decode_hex(digits: &str) -> Result<Vec<u8>, String> {
    hex::decode(digits).map_err(|e| format!("invalid hex: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The precomputed digests equal alloy's generic EIP-712 hashing (the known-answer
        /// vectors from Nox are in manager/tests/nox.rs).
        #[test]
        fn digests_equal_alloys(
            chain_id: u64,
            salt: [u8; 32],
            first in ".{0,200}",
            second in ".{0,800}",
        ) {
            let authorization = DelegateAuthorization {
                ephemeralPubKey: first.clone(),
                targetPubKey: second.clone(),
            }
            .eip712_signing_hash(&authorization_domain(chain_id));
            prop_assert_eq!(authorization_signing_hash(chain_id, &first, &second), authorization);
            let salt = B256::from(salt);
            let response = DelegateResponseProof {
                encryptedSharedSecret: second.clone(),
            }
            .eip712_signing_hash(&response_domain(chain_id, salt));
            prop_assert_eq!(response_signing_hash(chain_id, salt, &second), response);
        }
    }
}
