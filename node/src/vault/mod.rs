//! The encrypted share vault of a node (docs/ARCHITECTURE.md §4.2 "Share vault": password
//! providers, encrypted shares, backups; docs/PROTOCOL.md §10 "Secrets").
//!
//! A node keeps its Shamir share of each epoch in one [redb] file. Every value is
//! AES-256-GCM-encrypted under a 32-byte key derived with Argon2id from a password that a
//! [`PasswordProvider`] hands over at start; the password and the key live only in memory, in
//! [`Zeroizing`] buffers. A restarted node reopens the file with the same password and resumes
//! with its share; a wrong password is refused at [`Vault::open`] before the file is opened for
//! writing, so nothing changes.
//!
//! # File format (version 1)
//!
//! One redb database with two tables:
//!
//! - `meta` (`&str -> &[u8]`):
//!   - `"header"`: `version (u8 = 1) || memory_kib (u32 BE) || iterations (u32 BE) ||
//!     parallelism (u32 BE) || salt (16 bytes)`: the Argon2id parameters and salt the key was
//!     derived with. They are chosen when the file is created and reused at every reopen.
//!   - `"key-check"`: `nonce (12) || AES-256-GCM(key, "tkms/vault/v1/key-check")` with AAD
//!     `aad("meta", "key-check") || header`; if it does not open, the password is wrong (or the
//!     header was altered) and [`VaultError::WrongPassword`] is returned.
//! - `shares` (`u64 -> &[u8]`): epoch → `nonce (12) || AES-256-GCM(key, record)`, AAD
//!   `aad("shares", epoch as u64 BE)`, so a record cannot be moved to another epoch. Keys are
//!   epoch numbers only; nothing secret is ever a key.
//!
//! - `identity` (`&str -> &[u8]`): the node's long-term keys, each `nonce (12) ||
//!   AES-256-GCM(key, secret (32))` with AAD `aad("identity", name)`: `"node-key"` (the
//!   secp256k1 node key that signs ceremony messages and receives encrypted shares) and
//!   `"p2p-key"` (the ed25519 libp2p identity seed). Created on first use.
//!
//! where `aad(table, key) = "tkms/vault/v1" || len(table) (u8) || table || key` and every nonce is
//! 96 random bits from the OS. A record (the plaintext, see [`StoredShare`]) is
//! `version (u8 = 1) || epoch (u64) || len(suite) (u8) || suite || index (u16) || share (32) ||
//! threshold (u16) || len(commitment) (u32) || commitment (33·t, compressed Feldman points) ||
//! n (u16) || committee indices (u16 each) || transcript_hash (32)`, integers big-endian.
//!
//! # Backups
//!
//! [`Vault::export_backup`] writes one epoch's record as a self-describing file:
//! `"TKMSBAK1" || version (u8 = 1) || memory_kib || iterations || parallelism (u32 BE each) ||
//! salt (16) || nonce (12) || AES-256-GCM(Argon2id(backup password), record)`, with the header
//! (everything before the ciphertext) as AAD. [`Vault::import_backup`] checks the format,
//! decrypts, validates the share against its Feldman commitment and stores it.
//!
//! # Erasure
//!
//! [`Vault::delete_epoch`] removes an epoch's record once a reshare is confirmed. redb is
//! copy-on-write, so a removed value would survive in a free page where the vault password
//! still opens it: the vault is rewritten without the record, renamed into place, and the old
//! file is overwritten with zeros.
//!
//! # Layout
//!
//! [`password`] (where the password comes from, AWS KMS included), [`kdf`] (Argon2id),
//! [`seal`] (AES-256-GCM and the AAD of every value), [`format`] (the header and the share
//! record, byte by byte), [`store`] (the redb file: shares, identity, markers, erasure) and
//! [`backup`] (the backup file).
//!
//! [redb]: https://docs.rs/redb

mod backup;
mod format;
mod kdf;
mod password;
mod seal;
mod store;

pub use format::StoredShare;
pub use kdf::KdfParams;
pub use password::aws_kms::{AwsKmsPassword, AwsKmsPasswordConfig};
pub use password::{EnvPassword, FilePassword, PasswordProvider, StaticPassword};
pub use store::{EpochShare, Marker, NodeIdentity, Vault};

/// Names in the vault formats (tables, keys, the backup magic), in one place; its
/// domain-separation tags are with every other tag of tkms, in [`tkms_crypto::dst::vault`].
/// Changing one breaks existing files.
mod labels {
    pub use tkms_crypto::dst::vault::{AAD_PREFIX, KEY_CHECK_PLAINTEXT};
    /// Magic of a backup file.
    pub const BACKUP_MAGIC: &[u8; 8] = b"TKMSBAK1";
    /// Table of the KDF header and key-check value.
    pub const META_TABLE: &str = "meta";
    /// Table of the encrypted share records.
    pub const SHARES_TABLE: &str = "shares";
    /// `meta` key of the KDF header.
    pub const HEADER_KEY: &str = "header";
    /// `meta` key of the key-check value.
    pub const KEY_CHECK_KEY: &str = "key-check";
    /// Table of the node's long-term keys.
    pub const IDENTITY_TABLE: &str = "identity";
    /// `identity` key of the secp256k1 node key.
    pub const NODE_KEY: &str = "node-key";
    /// `identity` key of the ed25519 libp2p identity seed.
    pub const P2P_KEY: &str = "p2p-key";
    /// `meta` key of the newest epoch the manager committed.
    pub const COMMITTED_EPOCH_KEY: &str = "committed-epoch";
    /// `meta` key of the newest epoch a ceremony was started for.
    pub const LAST_CEREMONY_KEY: &str = "last-ceremony-epoch";
}

/// Errors of the vault. Messages never contain secret bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The password does not unlock this vault (its key-check value did not decrypt).
    #[error(
        "wrong vault password (the key-check value did not decrypt); the vault was not changed"
    )]
    WrongPassword,
    /// Stored data failed authentication or does not decode: tampering or disk corruption.
    #[error("vault data is corrupted or was tampered with: {0}")]
    Corrupted(String),
    /// The storage layer failed.
    #[error("vault storage error: {0}")]
    Storage(String),
    /// A backup file is malformed (truncated, bad magic, unsupported version, bad parameters).
    #[error("invalid share backup: {0}")]
    Backup(String),
    /// A backup did not decrypt.
    #[error("cannot decrypt the share backup: wrong backup password, or the file was modified")]
    BackupDecryption,
    /// A password provider could not produce a password.
    #[error("password provider: {0}")]
    Password(String),
    /// The epoch is already stored with a different share.
    #[error("epoch {0} is already stored with a different share; nothing was changed")]
    EpochExists(u64),
    /// No share is stored for the epoch.
    #[error("no share stored for epoch {0}")]
    UnknownEpoch(u64),
    /// A record names a suite this build does not know.
    #[error("unknown suite {0:?} (known: \"secp256k1\", \"P-256\")")]
    UnknownSuite(String),
    /// The share was stored for another suite than the one asked for.
    #[error("the share of this epoch is for suite {stored:?}, not {requested:?}")]
    SuiteMismatch {
        /// The suite of the stored share.
        stored: String,
        /// The suite asked for.
        requested: &'static str,
    },
    /// A share does not match its public key set.
    #[error("invalid share: {0}")]
    InvalidShare(String),
    /// Argon2id parameters out of the accepted range.
    #[error("invalid KDF parameters: {0}")]
    InvalidKdfParams(String),
}

fn storage(error: impl Into<redb::Error>) -> VaultError {
    match error.into() {
        redb::Error::Corrupted(what) => VaultError::Corrupted(format!("storage: {what}")),
        other => VaultError::Storage(other.to_string()),
    }
}
