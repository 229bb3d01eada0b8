//! Every domain-separation tag and KDF label of tkms, in one place (as rust-umbral's
//! `hashing_ds.rs`). A tag is the `DST` of RFC 9380 `hash_to_field`; changing one is a breaking
//! change to the wire protocol.

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

/// ECIES: HKDF-SHA256 `info`, as in the Nox KMS (`ECIES:AES_GCM:v1`).
pub const ECIES_INFO: &[u8] = b"ECIES:AES_GCM:v1";
/// ECIES: HKDF-SHA256 salt, 32 zero bytes, as in the Nox KMS.
pub const ECIES_SALT: [u8; 32] = [0u8; 32];
