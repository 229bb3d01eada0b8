//! `/v1/delegate`: the signed request, the manager's answer, and the client's opening of it
//! (each node's partial, RSA-OAEP-encrypted to the requester, verified and combined).

use alloy_primitives::{keccak256, Address, Bytes, B256};
use alloy_sol_types::SolStruct;
use aws_lc_rs::{
    encoding::AsDer,
    rsa::{OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA256_MGF1SHA256},
};
use k256::ecdsa::SigningKey;
use serde::{Deserialize, Serialize};
use tkms_crypto::{
    delegation::{self, DelegationRequest, PartialDelegation},
    dst,
    suite::Encoded,
    ClusterSuite as S, PublicKeySet, SharedSecret,
};
use zeroize::Zeroizing;

use super::{
    bearer, domain, hex0x, nonce, parse_authorization, parse_json, point, proof_signer, recover,
    sign, sign_proof, unhex, DelegateRequestV1, Freshness, V1Error,
};
use crate::nox;

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
        buf.extend_from_slice(dst::V1_DELEGATE_RESPONSE);
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
