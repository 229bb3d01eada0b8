//! `/v1/reencrypt`: the signed request (one capsule or a batch), the manager's answer, and
//! the client's check of it (every node's partials verified and recombined).

use std::collections::BTreeMap;

use alloy_primitives::{keccak256, Address, Bytes, B256};
use alloy_sol_types::SolStruct;
use k256::ecdsa::SigningKey;
use serde::{Deserialize, Serialize};
use tkms_crypto::{
    dst,
    pre::{self, PartialReencryption, ReencryptedCapsule, ReencryptionRequest},
    suite::Encoded,
    ClusterSuite as S, PublicKeySet,
};

use super::{
    bearer, domain, hex0x, nonce, parse_authorization, parse_json, point, proof_signer, recover,
    sign, sign_proof, unhex, Freshness, NodeFailureReport, ReencryptRequestV1, V1Error, MAX_BATCH,
};

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
        buf.extend_from_slice(dst::V1_REENCRYPT_RESPONSE);
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
