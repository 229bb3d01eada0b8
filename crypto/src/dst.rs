//! Every domain-separation tag and KDF label of tkms, in one place (as rust-umbral's
//! `hashing_ds.rs`). A tag is the `DST` of RFC 9380 `hash_to_field`; changing one is a breaking
//! change to the wire protocol (or, for [`vault`], to the node's vault files).
//!
//! One family lives apart, in its own single home: the labels of the search engine's key
//! hierarchy (docs/PROTOCOL.md §13), in `engine/src/labels.rs`, which only the engine uses.

/// Chaum–Pedersen DLEQ challenges (delegation partials, DKG complaint reveals).
pub const DLEQ: &[u8] = b"tkms/v1/dleq";
/// Proxy re-encryption partial proofs.
pub const PRE: &[u8] = b"tkms/v1/pre";
/// Schnorr proofs of possession of a dealer's constant term.
pub const POK: &[u8] = b"tkms/v1/pok";
/// Schnorr signatures by node keys over DKG messages.
pub const SIGNATURE: &[u8] = b"tkms/v1/sig";
/// The manager's signature over a request it sends to a node (mutual authentication: nodes
/// accept only pinned or registered manager keys).
pub const NODE_REQUEST: &[u8] = b"tkms/v1/node-request";
/// The DKG / reshare transcript hash.
pub const DKG_TRANSCRIPT: &[u8] = b"tkms/v1/dkg-transcript";
/// Random weights for batch verification (derived from the batch, plus fresh randomness).
pub const BATCH: &[u8] = b"tkms/v1/batch";
/// One DLEQ proof for a node's batch of delegation partials (docs/PROTOCOL.md §5.1): the
/// transcript digest over every `(request id, K_j, D_j)` of the batch, and the challenge.
pub const DLEQ_BATCH: &[u8] = b"tkms/v1/dleq-batch";
/// The weights `w_j` of an aggregated delegation proof, derived from its transcript digest.
pub const DLEQ_BATCH_WEIGHT: &[u8] = b"tkms/v1/dleq-batch-weight";

/// Message kinds signed by node keys during a ceremony.
pub mod message {
    /// A dealer's round-1 broadcast (commitments and proof of possession).
    pub const DEALING: &[u8] = b"dealing";
    /// A dealer's encrypted share for one recipient.
    pub const ENCRYPTED_SHARE: &[u8] = b"encrypted-share";
    /// A recipient's round-3 complaints.
    pub const COMPLAINTS: &[u8] = b"complaints";
    /// A recipient's confirmation of the transcript hash.
    pub const CONFIRMATION: &[u8] = b"confirmation";
}

/// The `/v0/delegate` request id, `SHA-256(tag ‖ chain id ‖ ephemeral key ‖ target key ‖
/// signature)`, that every node's proof is bound to.
pub const V0_DELEGATE: &[u8] = b"tkms/v0/delegate";
/// The hash of a `/v1/delegate` answer that the manager's proof covers.
pub const V1_DELEGATE_RESPONSE: &[u8] = b"tkms/v1/delegate-response";
/// The hash of a `/v1/reencrypt` answer that the manager's proof covers.
pub const V1_REENCRYPT_RESPONSE: &[u8] = b"tkms/v1/reencrypt-response";

/// Kinds of the admin requests the manager signs for a node (under [`NODE_REQUEST`]).
pub mod node_request {
    /// Start a DKG or reshare ceremony.
    pub const START_CEREMONY: &[u8] = b"tkms.node.v1.StartCeremony";
    /// Commit an epoch.
    pub const COMMIT_EPOCH: &[u8] = b"tkms.node.v1.CommitEpoch";
    /// Abort an epoch.
    pub const ABORT_EPOCH: &[u8] = b"tkms.node.v1.AbortEpoch";
}

/// The node's share vault (`tkms_node::vault`).
pub mod vault {
    /// Prefix of the AAD of every sealed vault value (`prefix ‖ len(table) ‖ table ‖ key`).
    pub const AAD_PREFIX: &[u8] = b"tkms/vault/v1";
    /// The plaintext of the key-check value, which tells a wrong password.
    pub const KEY_CHECK_PLAINTEXT: &[u8] = b"tkms/vault/v1/key-check";
}

/// ECIES: HKDF-SHA256 `info`, as in the Nox KMS (`ECIES:AES_GCM:v1`).
pub const ECIES_INFO: &[u8] = b"ECIES:AES_GCM:v1";
/// ECIES: HKDF-SHA256 salt, 32 zero bytes, as in the Nox KMS.
pub const ECIES_SALT: [u8; 32] = [0u8; 32];
