//! Wire types of tkms: the gRPC schema between the manager and the nodes
//! (`proto/tkms/node/v1/node.proto`), generated with tonic and prost. Conversions to the
//! domain types of `tkms-crypto` are explicit and validating, in the crates that use them;
//! the requester authorization, which the manager and the nodes both check, is defined here
//! once with its wire form ([`requester`]).

/// `tkms.node.v1`: the node service.
pub mod node {
    /// Version 1 of the node service.
    #[allow(clippy::pedantic, missing_docs)] // generated code
    pub mod v1 {
        tonic::include_proto!("tkms.node.v1");
    }
}

pub mod requester;
pub mod tls;

/// The suite the cluster runs (secp256k1), next to [`MAX_BATCH`]: defined once, in
/// `tkms-crypto` (the one crate every other depends on; the SDK and the simulator depend on no
/// other), and re-exported here for the crates that speak gRPC.
pub use tkms_crypto::ClusterSuite;

/// Most items in one batch call (`PartialDelegationBatch`'s requests,
/// `PartialReencryptionBatch`'s capsules): a node refuses a larger batch.
pub const MAX_BATCH: usize = 256;

impl node::v1::ItemError {
    /// One batch item's refusal, as the status the single call would have answered.
    pub fn from_status(status: &tonic::Status) -> Self {
        Self {
            code: status.code().into(),
            message: status.message().to_string(),
        }
    }

    /// The status the single call would have answered.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(tonic::Code::from(self.code), self.message.clone())
    }
}

use node::v1::{AbortEpochRequest, CommitEpochRequest, ManagerSignature, StartCeremonyRequest};
use prost::Message;
use rand_core::OsRng;
use sha2::{Digest, Sha256};
use tkms_crypto::{dst, schnorr::Signature, suite::Encoded, Secp256k1, SecretScalar, Suite};

/// Why a node refused a request's manager signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The request carries no manager signature.
    #[error("missing manager signature")]
    Missing,
    /// The signing key is not one this node accepts.
    #[error("manager key is not accepted by this node")]
    UnknownManager,
    /// The signature bytes do not decode.
    #[error("malformed manager signature")]
    Malformed,
    /// The signature does not verify.
    #[error("invalid manager signature")]
    Invalid,
}

/// A node request the manager signs: the digest covers the whole message except the
/// manager's signature itself (prost's encoding is deterministic for these messages, which
/// have no map fields).
pub trait SignedRequest: Message + Clone + Default {
    /// Domain-separating label of the request kind.
    const KIND: &'static [u8];

    /// The manager signature field.
    fn manager(&self) -> Option<&ManagerSignature>;

    /// Set the manager signature field.
    fn set_manager(&mut self, manager: Option<ManagerSignature>);

    /// `SHA-256(kind || len || encoding without the signature || manager key)`: what the
    /// manager signs and the node checks. The manager key is bound so a signature cannot be
    /// replayed under another claimed key.
    fn signing_digest(&self, manager_key: &[u8]) -> [u8; 32] {
        let mut unsigned = self.clone();
        unsigned.set_manager(None);
        let body = unsigned.encode_to_vec();
        let mut h = Sha256::new();
        h.update(Self::KIND);
        h.update(u64::try_from(body.len()).unwrap_or(u64::MAX).to_be_bytes());
        h.update(&body);
        h.update(manager_key);
        h.finalize().into()
    }

    /// Sign as the manager (Schnorr over secp256k1, tag `tkms/v1/node-request`).
    fn sign(&mut self, manager_key: &SecretScalar<Secp256k1>) {
        let public = Secp256k1::encode_point(&manager_key.public_point());
        let digest = self.signing_digest(&public);
        let signature = Signature::sign(dst::NODE_REQUEST, manager_key, &digest, &mut OsRng);
        self.set_manager(Some(ManagerSignature {
            manager_key: public.to_vec(),
            signature: signature.to_bytes().to_vec(),
        }));
    }

    /// Check the manager signature against the keys this node accepts.
    fn verify_manager(&self, accepted: &[Encoded<Secp256k1>]) -> Result<(), AuthError> {
        let manager = self.manager().ok_or(AuthError::Missing)?;
        let key = accepted
            .iter()
            .find(|k| k.bytes().as_slice() == manager.manager_key.as_slice())
            .ok_or(AuthError::UnknownManager)?;
        let signature = Signature::<Secp256k1>::from_bytes(&manager.signature)
            .map_err(|_| AuthError::Malformed)?;
        let digest = self.signing_digest(key.bytes());
        if signature.verify(dst::NODE_REQUEST, key.point(), &digest) {
            Ok(())
        } else {
            Err(AuthError::Invalid)
        }
    }
}

impl SignedRequest for StartCeremonyRequest {
    const KIND: &'static [u8] = dst::node_request::START_CEREMONY;

    fn manager(&self) -> Option<&ManagerSignature> {
        self.manager.as_ref()
    }

    fn set_manager(&mut self, manager: Option<ManagerSignature>) {
        self.manager = manager;
    }
}

impl SignedRequest for CommitEpochRequest {
    const KIND: &'static [u8] = dst::node_request::COMMIT_EPOCH;

    fn manager(&self) -> Option<&ManagerSignature> {
        self.manager.as_ref()
    }

    fn set_manager(&mut self, manager: Option<ManagerSignature>) {
        self.manager = manager;
    }
}

impl SignedRequest for AbortEpochRequest {
    const KIND: &'static [u8] = dst::node_request::ABORT_EPOCH;

    fn manager(&self) -> Option<&ManagerSignature> {
        self.manager.as_ref()
    }

    fn set_manager(&mut self, manager: Option<ManagerSignature>) {
        self.manager = manager;
    }
}
