//! Storage backends behind one small key-value [`Store`] trait (docs/ARCHITECTURE.md
//! §4.4 "Storage backends: memory, disk, S3-compatible").
//!
//! The engine only ever hands a store opaque keys (derived tokens, random uids, index names) and
//! AES-256-GCM ciphertexts; a backend never sees plaintext ids, vectors or metadata
//! (docs/PROTOCOL.md §13). Writes are grouped in a [`WriteBatch`] that a backend applies
//! atomically, with optional preconditions so two handles cannot silently overwrite each other's
//! index state. Backends here: [`MemoryStore`], [`DiskStore`] (one redb file) and [`S3Store`]
//! (`object_store` over S3; batches there are crash-ordered with a conditional-put commit point,
//! not atomic across keys: see [`s3`]).

mod disk;
mod memory;
pub mod s3;

use std::path::PathBuf;

pub use disk::DiskStore;
pub use memory::MemoryStore;
pub use s3::{S3Config, S3Store};

use crate::error::Result;

/// One mutation in a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Insert or overwrite `key`.
    Put(Vec<u8>, Vec<u8>),
    /// Remove `key` (no error when absent).
    Delete(Vec<u8>),
    /// Remove every key starting with the prefix.
    DeletePrefix(Vec<u8>),
}

/// A condition checked, atomically with the writes, before a [`WriteBatch`] is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// `key` must not exist.
    Absent(Vec<u8>),
    /// `key` must exist and the SHA-256 of its value must equal the digest.
    Digest(Vec<u8>, [u8; 32]),
}

/// Writes applied all-or-nothing by [`Store::apply`].
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
    preconditions: Vec<Precondition>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an insert/overwrite.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.ops.push(WriteOp::Put(key.into(), value));
    }

    /// Adds a removal.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Delete(key.into()));
    }

    /// Adds a removal of every key under `prefix`.
    pub fn delete_prefix(&mut self, prefix: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::DeletePrefix(prefix.into()));
    }

    /// Adds a precondition.
    pub fn require(&mut self, precondition: Precondition) {
        self.preconditions.push(precondition);
    }

    /// The mutations, in order.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// The preconditions.
    pub fn preconditions(&self) -> &[Precondition] {
        &self.preconditions
    }

    /// Number of mutations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch has no mutation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Outcome of [`Store::apply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Every precondition held and every write was made.
    Committed,
    /// A precondition failed; nothing was written.
    PreconditionFailed,
}

/// A byte-keyed store with atomic batches. Implementations must be safe to share between
/// threads.
pub trait Store: Send + Sync {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Values under several keys: exactly one entry per key, in order (one read transaction
    /// where the backend has them).
    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Checks the preconditions and applies the writes, all or nothing.
    fn apply(&self, batch: WriteBatch) -> Result<Applied>;
}

/// SHA-256 of a stored value, for [`Precondition::Digest`].
pub fn value_digest(value: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(value).into()
}

/// Where a [`Client`](crate::Client) keeps its indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageConfig {
    /// In-process memory; gone when the client is dropped.
    Memory,
    /// One redb file, `tkms-engine.redb`, in this directory (created if missing).
    Disk(PathBuf),
    /// Objects in an S3 (or S3-compatible) bucket; see [`S3Store`] for what is atomic.
    S3(S3Config),
}

impl StorageConfig {
    /// In-process memory storage.
    pub fn memory() -> Self {
        StorageConfig::Memory
    }

    /// Durable storage in one ACID redb file inside directory `path`.
    pub fn disk(path: impl Into<PathBuf>) -> Self {
        StorageConfig::Disk(path.into())
    }

    /// Storage in an S3 bucket (which must exist).
    pub fn s3(config: S3Config) -> Self {
        StorageConfig::S3(config)
    }
}

/// File name of the redb database inside a [`StorageConfig::Disk`] directory.
pub const DISK_FILE_NAME: &str = "tkms-engine.redb";

/// Checks preconditions against a lookup function (shared by the backends).
pub(crate) fn preconditions_hold(
    preconditions: &[Precondition],
    mut lookup: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>>,
) -> Result<bool> {
    for p in preconditions {
        let ok = match p {
            Precondition::Absent(k) => lookup(k)?.is_none(),
            Precondition::Digest(k, d) => lookup(k)?.is_some_and(|v| value_digest(&v) == *d),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}
