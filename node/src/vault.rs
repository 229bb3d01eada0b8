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
//! copy-on-write: the old ciphertext may survive in a free page until it is reused, but it is
//! only readable with the vault password.
//!
//! [redb]: https://docs.rs/redb

use std::{
    fmt,
    fs::File,
    io::Read,
    path::{Path, PathBuf},
};

use aes_gcm::{
    aead::{Aead, Payload},
    Aes256Gcm, KeyInit, Nonce,
};
use argon2::{Algorithm, Argon2, Version};
use rand_core::{OsRng, RngCore};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableError,
};
use subtle::ConstantTimeEq;
use tkms_crypto::{
    shamir::Commitment, KeyShare, NodeIndex, PublicKeySet, Secp256k1, SecretScalar, Suite, P256,
};
use zeroize::Zeroizing;

/// Labels and tags of the vault formats, in one place. Changing one breaks existing files.
mod labels {
    /// Prefix of every AAD of the vault.
    pub const AAD_PREFIX: &[u8] = b"tkms/vault/v1";
    /// Plaintext of the key-check value.
    pub const KEY_CHECK_PLAINTEXT: &[u8] = b"tkms/vault/v1/key-check";
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

/// A sealed epoch number the vault keeps beside the shares (not secret, but authenticated
/// under the vault key so that nobody without the password can move it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// The newest epoch the manager committed (older shares are erased).
    CommittedEpoch,
    /// The newest epoch a ceremony was started for (epoch numbers are never reused).
    LastCeremonyEpoch,
}

impl Marker {
    fn key(self) -> &'static str {
        match self {
            Self::CommittedEpoch => labels::COMMITTED_EPOCH_KEY,
            Self::LastCeremonyEpoch => labels::LAST_CEREMONY_KEY,
        }
    }
}

const META: TableDefinition<&str, &[u8]> = TableDefinition::new(labels::META_TABLE);
const SHARES: TableDefinition<u64, &[u8]> = TableDefinition::new(labels::SHARES_TABLE);
const IDENTITY: TableDefinition<&str, &[u8]> = TableDefinition::new(labels::IDENTITY_TABLE);

/// A node's long-term keys, kept in the vault.
pub struct NodeIdentity {
    /// The secp256k1 node key: signs ceremony messages, receives encrypted shares.
    pub node_key: SecretScalar<Secp256k1>,
    /// The ed25519 seed of the libp2p identity (peer id).
    pub p2p_seed: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeIdentity(..)")
    }
}

const FORMAT_VERSION: u8 = 1;
const RECORD_VERSION: u8 = 1;
const BACKUP_VERSION: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
const SCALAR_LEN: usize = 32;
const POINT_LEN: usize = 33;
const HEADER_LEN: usize = 1 + 12 + SALT_LEN;
const BACKUP_HEADER_LEN: usize = 8 + 1 + 12 + SALT_LEN + NONCE_LEN;
/// Largest password a provider may return (a password file larger than this is refused).
const MAX_PASSWORD_LEN: usize = 64 * 1024;

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

// ---------------------------------------------------------------------------------------------
// Password providers
// ---------------------------------------------------------------------------------------------

/// Where the vault password comes from (docs/ARCHITECTURE.md §4.2 "Share vault").
///
/// Implementations here: [`FilePassword`] (a Kubernetes secret mounted as a file),
/// [`EnvPassword`] (development only) and [`StaticPassword`] (a password already in memory);
/// and [`AwsKmsPassword`](crate::kms_password::AwsKmsPassword), which keeps the password as a
/// KMS-encrypted ciphertext in the configuration and calls `kms:Decrypt` at start. Since the
/// AWS SDK is async and this trait is not, it decrypts once in an async constructor and
/// implements this trait over the result.
pub trait PasswordProvider: Send + Sync {
    /// The password. Never empty.
    fn password(&self) -> Result<Zeroizing<Vec<u8>>, VaultError>;

    /// A description for logs and errors, without the secret (`"file /etc/tkms/password"`).
    fn describe(&self) -> String;
}

/// The password from an environment variable.
///
/// **Development only.** Environment variables leak through `/proc/<pid>/environ`, crash
/// dumps, `docker inspect` and child processes; every use logs a loud warning. Production uses
/// [`FilePassword`] (Kubernetes secret) or the `aws-kms` provider
/// ([`AwsKmsPassword`](crate::kms_password::AwsKmsPassword)).
#[derive(Clone, Debug)]
pub struct EnvPassword {
    /// The variable's name.
    pub var: String,
}

impl EnvPassword {
    /// Read the password from the variable `var` (development only).
    pub fn new(var: impl Into<String>) -> Self {
        Self { var: var.into() }
    }
}

impl PasswordProvider for EnvPassword {
    fn password(&self) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        tracing::warn!(
            var = %self.var,
            "vault password taken from an environment variable: DEVELOPMENT ONLY, never in \
             production (environment variables leak through /proc, crash dumps and container \
             inspection); use a password file or aws-kms"
        );
        let value = match std::env::var(&self.var) {
            Ok(value) => Zeroizing::new(value.into_bytes()),
            Err(std::env::VarError::NotPresent) => {
                return Err(VaultError::Password(format!(
                    "environment variable {} is not set",
                    self.var
                )))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(VaultError::Password(format!(
                    "environment variable {} is not valid UTF-8",
                    self.var
                )))
            }
        };
        non_empty(value, &self.describe())
    }

    fn describe(&self) -> String {
        format!("environment variable {} (development only)", self.var)
    }
}

/// The password from a file, typically a Kubernetes secret mounted into the pod.
///
/// One trailing newline (`\n` or `\r\n`) is removed; an empty password is refused. A file
/// readable by group or others is accepted with a warning, since Kubernetes mounts secrets
/// `0644` unless the volume sets `defaultMode: 0400`, which it should.
#[derive(Clone, Debug)]
pub struct FilePassword {
    /// The file's path.
    pub path: PathBuf,
}

impl FilePassword {
    /// Read the password from the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl PasswordProvider for FilePassword {
    fn password(&self) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let unreadable = |e: std::io::Error| {
            VaultError::Password(format!(
                "cannot read password file {}: {e}",
                self.path.display()
            ))
        };
        let file = File::open(&self.path).map_err(unreadable)?;
        let metadata = file.metadata().map_err(unreadable)?;
        if !metadata.is_file() {
            return Err(VaultError::Password(format!(
                "password file {} is not a regular file",
                self.path.display()
            )));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %self.path.display(),
                    mode = format_args!("{mode:o}"),
                    "vault password file is readable beyond its owner; make it 0400 or 0600 \
                     (Kubernetes: defaultMode: 0400 on the secret volume)"
                );
            }
        }
        let capacity = usize::try_from(metadata.len())
            .unwrap_or(MAX_PASSWORD_LEN)
            .min(MAX_PASSWORD_LEN)
            + 1;
        let mut value = Zeroizing::new(Vec::with_capacity(capacity));
        file.take(MAX_PASSWORD_LEN as u64 + 1)
            .read_to_end(&mut value)
            .map_err(unreadable)?;
        if value.len() > MAX_PASSWORD_LEN {
            return Err(VaultError::Password(format!(
                "password file {} is larger than {MAX_PASSWORD_LEN} bytes",
                self.path.display()
            )));
        }
        if value.last() == Some(&b'\n') {
            value.pop();
            if value.last() == Some(&b'\r') {
                value.pop();
            }
        }
        non_empty(value, &self.describe())
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// A password already in memory: one fetched by an async provider (such as `kms:Decrypt`) before
/// the vault is opened, or a test's.
pub struct StaticPassword(Zeroizing<Vec<u8>>);

impl StaticPassword {
    /// Wrap a password.
    pub fn new(password: impl Into<Vec<u8>>) -> Self {
        Self(Zeroizing::new(password.into()))
    }
}

impl fmt::Debug for StaticPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticPassword(..)")
    }
}

impl PasswordProvider for StaticPassword {
    fn password(&self) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        non_empty(self.0.clone(), &self.describe())
    }

    fn describe(&self) -> String {
        "in-memory password".to_owned()
    }
}

fn non_empty(value: Zeroizing<Vec<u8>>, source: &str) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    if value.is_empty() {
        return Err(VaultError::Password(format!(
            "{source} gave an empty password"
        )));
    }
    Ok(value)
}

// ---------------------------------------------------------------------------------------------
// Key derivation
// ---------------------------------------------------------------------------------------------

/// Argon2id parameters. The ones a vault was created with are stored in it and reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism (lanes).
    pub parallelism: u32,
}

impl KdfParams {
    /// Below this memory cost (OWASP's Argon2id minimum, 19 MiB) creating a vault logs a warning.
    const PRODUCTION_FLOOR_KIB: u32 = 19 * 1024;
    /// Ceilings that bound the work a tampered header or a hostile backup can demand.
    const MAX_MEMORY_KIB: u32 = 1024 * 1024;
    const MAX_ITERATIONS: u32 = 64;
    const MAX_PARALLELISM: u32 = 64;

    /// Production parameters: 64 MiB, 3 passes, 1 lane.
    pub const fn production() -> Self {
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }

    /// Tiny parameters for tests: fast, and no protection against password guessing.
    pub const fn insecure_for_tests() -> Self {
        Self {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    fn validate(self) -> Result<argon2::Params, VaultError> {
        if self.memory_kib > Self::MAX_MEMORY_KIB
            || self.iterations > Self::MAX_ITERATIONS
            || self.parallelism > Self::MAX_PARALLELISM
        {
            return Err(VaultError::InvalidKdfParams(format!(
                "{self:?} exceeds the maximum (memory {} KiB, {} iterations, parallelism {})",
                Self::MAX_MEMORY_KIB,
                Self::MAX_ITERATIONS,
                Self::MAX_PARALLELISM
            )));
        }
        argon2::Params::new(
            self.memory_kib,
            self.iterations,
            self.parallelism,
            Some(KEY_LEN),
        )
        .map_err(|e| VaultError::InvalidKdfParams(format!("{self:?}: {e}")))
    }

    fn to_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..4].copy_from_slice(&self.memory_kib.to_be_bytes());
        out[4..8].copy_from_slice(&self.iterations.to_be_bytes());
        out[8..].copy_from_slice(&self.parallelism.to_be_bytes());
        out
    }

    fn from_reader(reader: &mut Reader<'_>) -> Result<Self, String> {
        Ok(Self {
            memory_kib: reader.u32()?,
            iterations: reader.u32()?,
            parallelism: reader.u32()?,
        })
    }
}

fn derive_key(
    password: &[u8],
    salt: &[u8; SALT_LEN],
    params: KdfParams,
) -> Result<Zeroizing<[u8; KEY_LEN]>, VaultError> {
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.validate()?);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    argon
        .hash_password_into(password, salt, &mut *key)
        .map_err(|e| VaultError::InvalidKdfParams(format!("Argon2id failed: {e}")))?;
    Ok(key)
}

// ---------------------------------------------------------------------------------------------
// AEAD
// ---------------------------------------------------------------------------------------------

/// `"tkms/vault/v1" || len(table) || table || key`.
fn aad(table: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(labels::AAD_PREFIX.len() + 1 + table.len() + key.len());
    out.extend_from_slice(labels::AAD_PREFIX);
    out.push(u8::try_from(table.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(table.as_bytes());
    out.extend_from_slice(key);
    out
}

fn random_array<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    OsRng.fill_bytes(&mut out);
    out
}

fn encrypt_with_nonce(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, VaultError> {
    // `new_from_slice` reads the key in place: no unzeroized copy of it.
    Aes256Gcm::new_from_slice(key)
        .map_err(|_| VaultError::Storage("AES-256-GCM key setup failed".to_owned()))?
        .encrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| VaultError::Storage("AES-256-GCM encryption failed".to_owned()))
}

fn decrypt_with_nonce(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    Aes256Gcm::new_from_slice(key)
        .ok()?
        .decrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

/// `nonce || AES-256-GCM(key, plaintext)` with a fresh random nonce.
fn seal(key: &[u8; KEY_LEN], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
    let nonce = random_array::<NONCE_LEN>();
    let ciphertext = encrypt_with_nonce(key, &nonce, aad, plaintext)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Inverse of [`seal`]; `None` if the value is too short or fails authentication.
fn unseal(key: &[u8; KEY_LEN], aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    decrypt_with_nonce(key, &nonce, aad, ciphertext)
}

// ---------------------------------------------------------------------------------------------
// Encoding helpers
// ---------------------------------------------------------------------------------------------

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!(
                "truncated: {n} more bytes expected, {} left",
                self.bytes.len()
            ));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn finish(&self) -> Result<(), String> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(format!("{} trailing bytes", self.bytes.len()))
        }
    }
}

/// The vault header: the Argon2id parameters and salt of the vault key.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Header {
    params: KdfParams,
    salt: [u8; SALT_LEN],
}

impl Header {
    fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = FORMAT_VERSION;
        out[1..13].copy_from_slice(&self.params.to_bytes());
        out[13..].copy_from_slice(&self.salt);
        out
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, VaultError> {
        let parse = || -> Result<Self, String> {
            let mut reader = Reader { bytes };
            let version = reader.u8()?;
            if version != FORMAT_VERSION {
                return Err(format!("unsupported vault format version {version}"));
            }
            let params = KdfParams::from_reader(&mut reader)?;
            let salt = reader.array()?;
            reader.finish()?;
            Ok(Self { params, salt })
        };
        let header = parse().map_err(|e| VaultError::Corrupted(format!("vault header: {e}")))?;
        header
            .params
            .validate()
            .map_err(|e| VaultError::Corrupted(format!("vault header: {e}")))?;
        Ok(header)
    }

    fn key_check_aad(self) -> Vec<u8> {
        let mut out = aad(labels::META_TABLE, labels::KEY_CHECK_KEY.as_bytes());
        out.extend_from_slice(&self.to_bytes());
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// One epoch's share as stored: the node's index and share, the epoch's public key set
/// (threshold, Feldman commitment, committee) and the DKG/reshare transcript hash.
///
/// Its `Debug` shows everything but the share.
pub struct StoredShare {
    epoch: u64,
    suite: String,
    index: NodeIndex,
    share: Zeroizing<[u8; SCALAR_LEN]>,
    threshold: u16,
    commitment: Vec<u8>,
    committee: Vec<NodeIndex>,
    transcript_hash: [u8; 32],
}

impl fmt::Debug for StoredShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredShare")
            .field("epoch", &self.epoch)
            .field("suite", &self.suite)
            .field("index", &self.index)
            .field("share", &"..")
            .field("threshold", &self.threshold)
            .field("commitment", &hex::encode(&self.commitment))
            .field("committee", &self.committee)
            .field("transcript_hash", &hex::encode(self.transcript_hash))
            .finish()
    }
}

impl StoredShare {
    /// Build a record from a share and its public key set, checking that they match.
    pub fn new<S: Suite>(
        epoch: u64,
        share: &KeyShare<S>,
        keys: &PublicKeySet<S>,
        transcript_hash: [u8; 32],
    ) -> Result<Self, VaultError> {
        let index = share.index();
        let expected = keys.public_share(index).map_err(|_| {
            VaultError::InvalidShare(format!("node {index} is not in the epoch's committee"))
        })?;
        if expected != share.public_share() {
            return Err(VaultError::InvalidShare(format!(
                "share of node {index} does not match its public share"
            )));
        }
        let committee: Vec<NodeIndex> = keys.public_shares().map(|(i, _)| i).collect();
        if committee.len() > usize::from(u16::MAX) {
            return Err(VaultError::InvalidShare("committee too large".to_owned()));
        }
        Ok(Self {
            epoch,
            suite: S::NAME.to_owned(),
            index,
            share: share.value().to_bytes(),
            threshold: keys.threshold(),
            commitment: keys.commitment().to_bytes(),
            committee,
            transcript_hash,
        })
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The suite's name (`"secp256k1"`, `"P-256"`).
    pub fn suite(&self) -> &str {
        &self.suite
    }

    /// This node's index.
    pub fn index(&self) -> NodeIndex {
        self.index
    }

    /// The threshold `t`.
    pub fn threshold(&self) -> u16 {
        self.threshold
    }

    /// The Feldman commitment, concatenated compressed points.
    pub fn commitment_bytes(&self) -> &[u8] {
        &self.commitment
    }

    /// The committee's indices.
    pub fn committee(&self) -> &[NodeIndex] {
        &self.committee
    }

    /// The DKG / reshare transcript hash the epoch was agreed on.
    pub fn transcript_hash(&self) -> [u8; 32] {
        self.transcript_hash
    }

    /// The typed share and public key set, after checking the suite and that `share·G` is the
    /// public share the commitment gives for this node.
    pub fn to_typed<S: Suite>(&self) -> Result<(KeyShare<S>, PublicKeySet<S>), VaultError> {
        if self.suite != S::NAME {
            return Err(VaultError::SuiteMismatch {
                stored: self.suite.clone(),
                requested: S::NAME,
            });
        }
        self.check_typed::<S>().map_err(VaultError::InvalidShare)
    }

    fn check_typed<S: Suite>(&self) -> Result<(KeyShare<S>, PublicKeySet<S>), String> {
        let value = SecretScalar::<S>::from_bytes(&*self.share)
            .map_err(|_| "the share is not a valid non-zero scalar".to_owned())?;
        let commitment = Commitment::<S>::from_bytes(&self.commitment)
            .map_err(|e| format!("Feldman commitment: {e}"))?;
        if commitment.threshold() != self.threshold {
            return Err(format!(
                "threshold {} but {} commitments",
                self.threshold,
                commitment.threshold()
            ));
        }
        if usize::from(self.threshold) > self.committee.len() {
            return Err(format!(
                "threshold {} above committee size {}",
                self.threshold,
                self.committee.len()
            ));
        }
        if !self.committee.windows(2).all(|w| w[0] < w[1]) {
            return Err("committee indices are not strictly increasing".to_owned());
        }
        let keys = PublicKeySet::new(commitment, self.committee.iter().copied());
        let expected = keys
            .public_share(self.index)
            .map_err(|_| format!("node {} is not in the committee", self.index))?;
        let share = KeyShare::new(self.index, value);
        if expected != share.public_share() {
            return Err(format!(
                "share·G of node {} does not equal its public share from the commitment",
                self.index
            ));
        }
        Ok((share, keys))
    }

    /// Check the record whatever its suite.
    fn validate(&self) -> Result<(), VaultError> {
        let checked = match self.suite.as_str() {
            Secp256k1::NAME => self.check_typed::<Secp256k1>().map(drop),
            P256::NAME => self.check_typed::<P256>().map(drop),
            other => return Err(VaultError::UnknownSuite(other.to_owned())),
        };
        checked.map_err(VaultError::InvalidShare)
    }

    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(
            1 + 8
                + 1
                + self.suite.len()
                + 2
                + SCALAR_LEN
                + 2
                + 4
                + self.commitment.len()
                + 2
                + 2 * self.committee.len()
                + 32,
        ));
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.push(u8::try_from(self.suite.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.suite.as_bytes());
        out.extend_from_slice(&self.index.to_bytes());
        out.extend_from_slice(&*self.share);
        out.extend_from_slice(&self.threshold.to_be_bytes());
        out.extend_from_slice(
            &u32::try_from(self.commitment.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&self.commitment);
        out.extend_from_slice(
            &u16::try_from(self.committee.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        for i in &self.committee {
            out.extend_from_slice(&i.to_bytes());
        }
        out.extend_from_slice(&self.transcript_hash);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut reader = Reader { bytes };
        let version = reader.u8()?;
        if version != RECORD_VERSION {
            return Err(format!("unsupported record version {version}"));
        }
        let epoch = reader.u64()?;
        let suite_len = usize::from(reader.u8()?);
        let suite = std::str::from_utf8(reader.take(suite_len)?)
            .map_err(|_| "suite name is not UTF-8".to_owned())?
            .to_owned();
        let index = NodeIndex::from_bytes(reader.take(2)?).map_err(|e| format!("index: {e}"))?;
        let share = Zeroizing::new(reader.array::<SCALAR_LEN>()?);
        let threshold = reader.u16()?;
        let commitment_len = usize::try_from(reader.u32()?).unwrap_or(usize::MAX);
        if commitment_len != usize::from(threshold) * POINT_LEN {
            return Err(format!(
                "commitment of {commitment_len} bytes for threshold {threshold}"
            ));
        }
        let commitment = reader.take(commitment_len)?.to_vec();
        let n = reader.u16()?;
        let committee = (0..n)
            .map(|_| NodeIndex::from_bytes(reader.take(2)?).map_err(|e| format!("committee: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let transcript_hash = reader.array()?;
        reader.finish()?;
        Ok(Self {
            epoch,
            suite,
            index,
            share,
            threshold,
            commitment,
            committee,
            transcript_hash,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The vault
// ---------------------------------------------------------------------------------------------

/// Overwrite `file` with zeros, durably.
fn wipe(mut file: std::fs::File) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    let len = file.metadata()?.len();
    file.seek(std::io::SeekFrom::Start(0))?;
    let zeros = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

/// One epoch's share as [`Vault::get_share`] returns it: this node's share, the epoch's public
/// key set and the transcript hash the epoch was agreed on.
pub type EpochShare<S> = (KeyShare<S>, PublicKeySet<S>, [u8; 32]);

/// The encrypted share vault: one redb file, values AES-256-GCM-encrypted under an Argon2id key.
pub struct Vault {
    /// Behind a lock so that [`Vault::delete_epoch`] can swap in a rewritten file.
    db: std::sync::RwLock<Database>,
    key: Zeroizing<[u8; KEY_LEN]>,
    path: PathBuf,
    params: KdfParams,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.path)
            .field("kdf", &self.params)
            .finish_non_exhaustive()
    }
}

/// The header and sealed key-check value, if the vault was initialized.
fn read_meta(db: &impl ReadableDatabase) -> Result<Option<(Header, Vec<u8>)>, VaultError> {
    let txn = db.begin_read().map_err(storage)?;
    let table = match txn.open_table(META) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(storage(e)),
    };
    let header = table.get(labels::HEADER_KEY).map_err(storage)?;
    let check = table.get(labels::KEY_CHECK_KEY).map_err(storage)?;
    match (header, check) {
        (None, None) => Ok(None),
        (Some(header), Some(check)) => Ok(Some((
            Header::from_bytes(header.value())?,
            check.value().to_vec(),
        ))),
        _ => Err(VaultError::Corrupted(
            "vault header or key-check value missing".to_owned(),
        )),
    }
}

fn unlock(
    password: &[u8],
    header: Header,
    check: &[u8],
) -> Result<Zeroizing<[u8; KEY_LEN]>, VaultError> {
    let key = derive_key(password, &header.salt, header.params)?;
    let plaintext =
        unseal(&key, &header.key_check_aad(), check).ok_or(VaultError::WrongPassword)?;
    if !bool::from(plaintext.as_slice().ct_eq(labels::KEY_CHECK_PLAINTEXT)) {
        return Err(VaultError::WrongPassword);
    }
    Ok(key)
}

impl Vault {
    /// Open the vault at `path`, creating it if the file does not exist (or is empty).
    ///
    /// At creation, a random salt is drawn, the key is derived with `params` and the parameters
    /// are stored; at reopen the stored parameters are used and `params` is ignored. A wrong
    /// password is [`VaultError::WrongPassword`] and the file is left untouched: it is checked
    /// on a read-only open before the file is opened for writing.
    pub fn open(
        path: impl AsRef<Path>,
        provider: &dyn PasswordProvider,
        params: KdfParams,
    ) -> Result<Self, VaultError> {
        let path = path.as_ref();
        let password = provider.password()?;
        let source = provider.describe();

        // Check the password without opening the file for writing.
        let mut unlocked: Option<(Header, Zeroizing<[u8; KEY_LEN]>)> = None;
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            // A file that needs crash recovery cannot be opened read-only; the read-write open
            // below recovers it and checks the password then.
            if let Ok(read_only) = redb::ReadOnlyDatabase::open(path) {
                if let Some((header, check)) = read_meta(&read_only)? {
                    let key = unlock(&password, header, &check)?;
                    unlocked = Some((header, key));
                }
            }
        }

        let db = Database::create(path).map_err(storage)?;
        let (header, key) = match (read_meta(&db)?, unlocked) {
            (Some((header, _)), Some((checked, key))) if header == checked => (header, key),
            (Some((header, check)), _) => (header, unlock(&password, header, &check)?),
            (None, _) => Self::initialize(&db, &password, params)?,
        };
        tracing::info!(
            path = %path.display(),
            password = %source,
            kdf = ?header.params,
            "share vault opened"
        );
        Ok(Self {
            db: std::sync::RwLock::new(db),
            key,
            path: path.to_owned(),
            params: header.params,
        })
    }

    fn initialize(
        db: &Database,
        password: &[u8],
        params: KdfParams,
    ) -> Result<(Header, Zeroizing<[u8; KEY_LEN]>), VaultError> {
        params.validate()?;
        if params.memory_kib < KdfParams::PRODUCTION_FLOOR_KIB {
            tracing::warn!(
                kdf = ?params,
                "creating a share vault with Argon2id parameters below the production floor \
                 (19 MiB): acceptable for tests only"
            );
        }
        let header = Header {
            params,
            salt: random_array(),
        };
        let key = derive_key(password, &header.salt, params)?;
        let check = seal(&key, &header.key_check_aad(), labels::KEY_CHECK_PLAINTEXT)?;
        let txn = db.begin_write().map_err(storage)?;
        {
            let shares = txn.open_table(SHARES).map_err(storage)?;
            if !shares.is_empty().map_err(storage)? {
                return Err(VaultError::Corrupted(
                    "share records present but the vault header is missing".to_owned(),
                ));
            }
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(labels::HEADER_KEY, header.to_bytes().as_slice())
                .map_err(storage)?;
            meta.insert(labels::KEY_CHECK_KEY, check.as_slice())
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok((header, key))
    }

    /// The vault file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The Argon2id parameters the vault key was derived with.
    pub fn kdf_params(&self) -> KdfParams {
        self.params
    }

    /// Store the share of `epoch`. Storing the identical record again is a no-op; a different
    /// record for a stored epoch is [`VaultError::EpochExists`] (delete it first).
    pub fn put_share<S: Suite>(
        &self,
        epoch: u64,
        share: &KeyShare<S>,
        keys: &PublicKeySet<S>,
        transcript_hash: [u8; 32],
    ) -> Result<(), VaultError> {
        let record = StoredShare::new(epoch, share, keys, transcript_hash)?;
        self.put_record(&record)
    }

    /// The share of `epoch`, its public key set and transcript hash, checked (suite, and
    /// `share·G` against the commitment).
    pub fn get_share<S: Suite>(&self, epoch: u64) -> Result<Option<EpochShare<S>>, VaultError> {
        let Some(record) = self.get_record(epoch)? else {
            return Ok(None);
        };
        let (share, keys) = record.to_typed::<S>().map_err(|e| match e {
            VaultError::InvalidShare(what) => {
                VaultError::Corrupted(format!("epoch {epoch}: {what}"))
            }
            other => other,
        })?;
        Ok(Some((share, keys, record.transcript_hash)))
    }

    /// The record of `epoch`, decrypted, whatever its suite (to learn the suite at start).
    pub fn get_record(&self, epoch: u64) -> Result<Option<StoredShare>, VaultError> {
        let txn = self.db().begin_read().map_err(storage)?;
        let table = match txn.open_table(SHARES) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage(e)),
        };
        let Some(sealed) = table.get(epoch).map_err(storage)? else {
            return Ok(None);
        };
        self.open_record(epoch, sealed.value()).map(Some)
    }

    fn open_record(&self, epoch: u64, sealed: &[u8]) -> Result<StoredShare, VaultError> {
        let plaintext = unseal(
            &self.key,
            &aad(labels::SHARES_TABLE, &epoch.to_be_bytes()),
            sealed,
        )
        .ok_or_else(|| {
            VaultError::Corrupted(format!("the record of epoch {epoch} failed authentication"))
        })?;
        let record = StoredShare::decode(&plaintext)
            .map_err(|e| VaultError::Corrupted(format!("the record of epoch {epoch}: {e}")))?;
        if record.epoch != epoch {
            return Err(VaultError::Corrupted(format!(
                "the record stored under epoch {epoch} is for epoch {}",
                record.epoch
            )));
        }
        Ok(record)
    }

    fn put_record(&self, record: &StoredShare) -> Result<(), VaultError> {
        let epoch = record.epoch;
        let plaintext = record.encode();
        let record_aad = aad(labels::SHARES_TABLE, &epoch.to_be_bytes());
        let txn = self.db().begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(SHARES).map_err(storage)?;
            if let Some(existing) = table.get(epoch).map_err(storage)? {
                let stored = self.open_record(epoch, existing.value())?.encode();
                if bool::from(stored.as_slice().ct_eq(plaintext.as_slice())) {
                    return Ok(());
                }
                return Err(VaultError::EpochExists(epoch));
            }
            let sealed = seal(&self.key, &record_aad, &plaintext)?;
            table.insert(epoch, sealed.as_slice()).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        tracing::info!(epoch, suite = %record.suite, index = %record.index, "share stored");
        Ok(())
    }

    /// The node's long-term keys, created (from the OS RNG) and stored on first use.
    pub fn identity(&self) -> Result<NodeIdentity, VaultError> {
        let node_key = self.identity_secret(labels::NODE_KEY, |bytes| {
            SecretScalar::<Secp256k1>::from_bytes(bytes).is_ok()
        })?;
        let p2p_seed = self.identity_secret(labels::P2P_KEY, |_| true)?;
        let node_key = SecretScalar::from_bytes(node_key.as_slice()).map_err(|e| {
            VaultError::Corrupted(format!("the stored node key does not decode: {e}"))
        })?;
        Ok(NodeIdentity { node_key, p2p_seed })
    }

    /// The 32-byte secret `name` of the identity table, drawn until `valid` and stored if absent.
    fn identity_secret(
        &self,
        name: &str,
        valid: impl Fn(&[u8]) -> bool,
    ) -> Result<Zeroizing<[u8; 32]>, VaultError> {
        let secret_aad = aad(labels::IDENTITY_TABLE, name.as_bytes());
        let txn = self.db().begin_write().map_err(storage)?;
        let secret = {
            let mut table = txn.open_table(IDENTITY).map_err(storage)?;
            let existing = table
                .get(name)
                .map_err(storage)?
                .map(|v| v.value().to_vec());
            if let Some(sealed) = existing {
                let plain = unseal(&self.key, &secret_aad, &sealed).ok_or_else(|| {
                    VaultError::Corrupted(format!("the stored {name} failed authentication"))
                })?;
                let mut out = Zeroizing::new([0u8; 32]);
                if plain.len() != 32 || !valid(plain.as_slice()) {
                    return Err(VaultError::Corrupted(format!(
                        "the stored {name} is invalid"
                    )));
                }
                out.copy_from_slice(&plain);
                return Ok(out);
            }
            let mut fresh = Zeroizing::new(random_array::<32>());
            while !valid(fresh.as_slice()) {
                *fresh = random_array();
            }
            let sealed = seal(&self.key, &secret_aad, fresh.as_slice())?;
            table.insert(name, sealed.as_slice()).map_err(storage)?;
            fresh
        };
        txn.commit().map_err(storage)?;
        tracing::info!(key = name, "node identity key created in the vault");
        Ok(secret)
    }

    /// The highest stored epoch.
    pub fn latest_epoch(&self) -> Result<Option<u64>, VaultError> {
        let txn = self.db().begin_read().map_err(storage)?;
        let table = match txn.open_table(SHARES) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage(e)),
        };
        let last = table.last().map_err(storage)?;
        Ok(last.map(|(epoch, _)| epoch.value()))
    }

    /// Every stored epoch, ascending.
    pub fn list_epochs(&self) -> Result<Vec<u64>, VaultError> {
        let txn = self.db().begin_read().map_err(storage)?;
        let table = match txn.open_table(SHARES) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        table
            .iter()
            .map_err(storage)?
            .map(|entry| entry.map(|(epoch, _)| epoch.value()).map_err(storage))
            .collect()
    }

    /// The value of `marker` (0 when it was never set).
    pub fn marker(&self, marker: Marker) -> Result<u64, VaultError> {
        let txn = self.db().begin_read().map_err(storage)?;
        let table = match txn.open_table(META) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(storage(e)),
        };
        let Some(sealed) = table.get(marker.key()).map_err(storage)? else {
            return Ok(0);
        };
        let plain = unseal(
            &self.key,
            &aad(labels::META_TABLE, marker.key().as_bytes()),
            sealed.value(),
        )
        .ok_or_else(|| {
            VaultError::Corrupted(format!("the {} failed authentication", marker.key()))
        })?;
        let bytes: [u8; 8] = plain
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::Corrupted(format!("the {} is not 8 bytes", marker.key())))?;
        Ok(u64::from_be_bytes(bytes))
    }

    /// Set `marker` to `value`, durably.
    pub fn set_marker(&self, marker: Marker, value: u64) -> Result<(), VaultError> {
        let sealed = seal(
            &self.key,
            &aad(labels::META_TABLE, marker.key().as_bytes()),
            &value.to_be_bytes(),
        )?;
        let txn = self.db().begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(META).map_err(storage)?;
            table
                .insert(marker.key(), sealed.as_slice())
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    fn db(&self) -> std::sync::RwLockReadGuard<'_, Database> {
        self.db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Delete the share of `epoch` (once a reshare to a later epoch is committed). Returns
    /// whether it was stored.
    ///
    /// redb is copy-on-write: a removed value stays in the file's free pages, where the vault
    /// password would still open it. So the vault is rewritten without it: every other record
    /// is copied (still sealed) into a new file, which is synced and renamed over the old one;
    /// then the old file's bytes are overwritten with zeros and synced. (On a copy-on-write
    /// file system or a flash device that remaps blocks, overwriting is best effort.)
    pub fn delete_epoch(&self, epoch: u64) -> Result<bool, VaultError> {
        let mut db = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let existed = {
            let txn = db.begin_read().map_err(storage)?;
            match txn.open_table(SHARES) {
                Ok(table) => table.get(epoch).map_err(storage)?.is_some(),
                Err(TableError::TableDoesNotExist(_)) => false,
                Err(e) => return Err(storage(e)),
            }
        };
        if !existed {
            return Ok(false);
        }
        let fresh = self.path.with_extension("redb.rewrite");
        let _ = std::fs::remove_file(&fresh);
        {
            let copy = Database::create(&fresh).map_err(storage)?;
            let read = db.begin_read().map_err(storage)?;
            let write = copy.begin_write().map_err(storage)?;
            for table in [META, IDENTITY] {
                let from = match read.open_table(table) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => continue,
                    Err(e) => return Err(storage(e)),
                };
                let mut to = write.open_table(table).map_err(storage)?;
                for entry in from.iter().map_err(storage)? {
                    let (k, v) = entry.map_err(storage)?;
                    to.insert(k.value(), v.value()).map_err(storage)?;
                }
            }
            if let Ok(from) = read.open_table(SHARES) {
                let mut to = write.open_table(SHARES).map_err(storage)?;
                for entry in from.iter().map_err(storage)? {
                    let (k, v) = entry.map_err(storage)?;
                    if k.value() != epoch {
                        to.insert(k.value(), v.value()).map_err(storage)?;
                    }
                }
            }
            write.commit().map_err(storage)?;
        }
        let io = |e: std::io::Error| VaultError::Storage(format!("{}: {e}", self.path.display()));
        std::fs::File::open(&fresh)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        // Keep a handle on the old file, atomically put the rewritten one in its place (a
        // crash leaves one complete vault or the other), then zero the old file's bytes through
        // the handle.
        let old = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(io)?;
        std::fs::rename(&fresh, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        drop(std::mem::replace(
            &mut *db,
            Database::create(&self.path).map_err(storage)?,
        ));
        wipe(old).map_err(io)?;
        tracing::info!(epoch, "share erased from the vault");
        Ok(true)
    }

    /// Export the share of `epoch` as an encrypted backup file under a backup password (see
    /// the module docs for the format).
    pub fn export_backup(
        &self,
        epoch: u64,
        backup_password: &dyn PasswordProvider,
        params: KdfParams,
    ) -> Result<Vec<u8>, VaultError> {
        let record = self
            .get_record(epoch)?
            .ok_or(VaultError::UnknownEpoch(epoch))?;
        params.validate()?;
        let password = backup_password.password()?;
        let salt = random_array::<SALT_LEN>();
        let nonce = random_array::<NONCE_LEN>();
        let mut out = Vec::with_capacity(BACKUP_HEADER_LEN + 256);
        out.extend_from_slice(labels::BACKUP_MAGIC);
        out.push(BACKUP_VERSION);
        out.extend_from_slice(&params.to_bytes());
        out.extend_from_slice(&salt);
        out.extend_from_slice(&nonce);
        let key = derive_key(&password, &salt, params)?;
        let ciphertext = encrypt_with_nonce(&key, &nonce, &out, &record.encode())?;
        out.extend_from_slice(&ciphertext);
        tracing::info!(
            epoch,
            password = %backup_password.describe(),
            "share backup exported"
        );
        Ok(out)
    }

    /// Decrypt a backup, validate the share against its commitment and store it. Returns the
    /// epoch. An epoch already stored with a different share is [`VaultError::EpochExists`];
    /// on any error nothing is changed.
    pub fn import_backup(
        &self,
        backup: &[u8],
        backup_password: &dyn PasswordProvider,
    ) -> Result<u64, VaultError> {
        if backup.len() < BACKUP_HEADER_LEN + TAG_LEN {
            return Err(VaultError::Backup(format!(
                "truncated: {} bytes, a backup has at least {}",
                backup.len(),
                BACKUP_HEADER_LEN + TAG_LEN
            )));
        }
        let (header, ciphertext) = backup.split_at(BACKUP_HEADER_LEN);
        let mut reader = Reader { bytes: header };
        let magic = reader.take(8).map_err(VaultError::Backup)?;
        if magic != labels::BACKUP_MAGIC {
            return Err(VaultError::Backup(
                "not a tkms share backup (bad magic)".to_owned(),
            ));
        }
        let version = reader.u8().map_err(VaultError::Backup)?;
        if version != BACKUP_VERSION {
            return Err(VaultError::Backup(format!(
                "unsupported backup version {version}"
            )));
        }
        let params = KdfParams::from_reader(&mut reader).map_err(VaultError::Backup)?;
        params
            .validate()
            .map_err(|e| VaultError::Backup(e.to_string()))?;
        let salt = reader.array::<SALT_LEN>().map_err(VaultError::Backup)?;
        let nonce = reader.array::<NONCE_LEN>().map_err(VaultError::Backup)?;
        let password = backup_password.password()?;
        let key = derive_key(&password, &salt, params)?;
        let plaintext = decrypt_with_nonce(&key, &nonce, header, ciphertext)
            .ok_or(VaultError::BackupDecryption)?;
        let record = StoredShare::decode(&plaintext)
            .map_err(|e| VaultError::Backup(format!("the decrypted record: {e}")))?;
        record.validate()?;
        self.put_record(&record)?;
        tracing::info!(epoch = record.epoch, "share backup imported");
        Ok(record.epoch)
    }
}
