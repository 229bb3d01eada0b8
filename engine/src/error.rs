//! The crate's single error type.
//!
//! Every bad input is reported as one of these variants *before* anything is changed
//! (docs/ARCHITECTURE.md §8: "Every malformed input gets a clear error and changes nothing").

use thiserror::Error;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The key does not open this index (wrong KEK, wrong or revoked user key). Nothing was
    /// decrypted and nothing was changed.
    #[error("wrong key: the supplied key does not unlock index `{index}`")]
    WrongKey {
        /// Name of the index the key was tried on.
        index: String,
    },
    /// A key was not 32 bytes, or a user key blob was malformed.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// No index of this name exists in the store.
    #[error("index `{0}` does not exist")]
    IndexNotFound(String),
    /// `create_index` was called with a name that is already taken.
    #[error("index `{0}` already exists")]
    IndexExists(String),
    /// The index name is empty, too long, or uses characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid index name `{0}`: use 1-128 characters from [A-Za-z0-9_.-]")]
    InvalidIndexName(String),
    /// The index configuration is not usable.
    #[error("invalid index configuration: {0}")]
    InvalidConfig(String),
    /// A vector does not have the index dimension.
    #[error("dimension mismatch{}: expected {expected}, got {got}", position_suffix(*.position))]
    DimensionMismatch {
        /// The index dimension.
        expected: usize,
        /// The length of the offending vector.
        got: usize,
        /// Position of the item in its upsert batch, when the vector belongs to an item
        /// (the id itself is never put in an error: it may be sensitive).
        position: Option<usize>,
    },
    /// A vector contains NaN or an infinity.
    #[error("vector{} contains NaN or infinite values", position_suffix(*.position))]
    NonFiniteVector {
        /// Position of the item in its upsert batch, when the vector belongs to an item.
        position: Option<usize>,
    },
    /// The same id appears more than once in one upsert batch; the position is that of the
    /// repeated occurrence (the id itself is not reported).
    #[error("duplicate id at batch position {0}: the same id appears earlier in the batch")]
    DuplicateId(usize),
    /// A malformed argument (empty id, `top_k = 0`, oversized payload, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A metadata filter is not valid.
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    /// The operation needs a scope the key does not grant.
    #[error("permission denied: {operation} needs {needed}, this handle was opened with {held}")]
    PermissionDenied {
        /// What was attempted.
        operation: &'static str,
        /// What it needs (`read-write` or `index key`).
        needed: &'static str,
        /// What the handle holds.
        held: &'static str,
    },
    /// `train` was asked for more lists than there are vectors.
    #[error("not enough vectors to train: have {have}, need at least {need}")]
    NotEnoughVectors {
        /// Live vectors in the index.
        have: usize,
        /// Vectors needed (the number of lists).
        need: usize,
    },
    /// Another handle changed the index since this one loaded it; reload and retry.
    #[error("index `{0}` was modified by another handle; reload it and retry")]
    Conflict(String),
    /// Stored data failed authentication or decoding (tampering or corruption).
    #[error("stored data is corrupted or was tampered with: {0}")]
    Corrupted(String),
    /// A KMS envelope is malformed or does not fit the request (unknown provider, provider
    /// mismatch, `wrapped_kek` set for provider `none`, oversized field).
    #[error("invalid KMS envelope: {0}")]
    InvalidEnvelope(String),
    /// `create_index_kms` found an envelope already stored for this index.
    #[error("a KMS envelope for index `{0}` already exists")]
    KmsEnvelopeExists(String),
    /// No KMS envelope is stored for this index.
    #[error("no KMS envelope is stored for index `{0}`")]
    KmsEnvelopeNotFound(String),
    /// The external KMS failed or refused to wrap or unwrap a KEK (wrong key, wrong
    /// encryption context, tampered blob, missing permission, unreachable endpoint).
    #[error("KMS error: {0}")]
    Kms(String),
    /// The storage backend failed.
    #[error("storage error: {0}")]
    Storage(String),
}

fn position_suffix(position: Option<usize>) -> String {
    position
        .map(|p| format!(" of the item at batch position {p}"))
        .unwrap_or_default()
}
