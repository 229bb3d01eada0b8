//! KMS envelopes (docs/ARCHITECTURE.md §4.4 "KMS envelopes"): a per-index record of
//! how the index KEK is wrapped by an external KMS, stored as a FlatBuffer ([`KmsBlob`])
//! beside the index keystore, and the [`KeyProvider`]s that wrap and unwrap the KEK.
//!
//! * Storage: the envelope of index `name` is the value of key `k/<name>` in the index's
//!   storage backend (memory, disk or S3), next to the keystore entry `c/<name>`. It holds
//!   only the *wrapped* KEK. [`Client::create_index_kms`] (strict insert),
//!   [`Client::push_index_kms`] (upsert), [`Client::get_index_kms`],
//!   [`Client::delete_index_kms`] (idempotent). Deleting the index deletes its envelope.
//! * Providers: `none` (nothing stored; the caller supplies the KEK), `aws-kms`
//!   ([`AwsKmsProvider`]: `kms:Encrypt` / `kms:Decrypt` through the AWS SDK, any endpoint),
//!   and `tkms` ([`TkmsProvider`]: the KEK ECIES-encrypted to the cluster key, unwrapped
//!   through the cluster's `/v1/reencrypt` to a key held only in this process).
//! * Loading: [`Client::load_index_kms`] reads the envelope, asks the provider to unwrap the
//!   KEK, and opens the index with it; a missing envelope, a provider mismatch, a KMS refusal
//!   or an unwrapped key that does not open the index are each a clear error.
//!
//! ```
//! use tkms_engine::kms::KmsBlob;
//! use tkms_engine::{Client, Error, IndexConfig, IndexKey, StorageConfig};
//!
//! let client = Client::new(StorageConfig::memory())?;
//! client.create_index("docs", &IndexKey::generate(), IndexConfig::new(4))?;
//! client.create_index_kms("docs", &KmsBlob::none("local"))?;
//! assert!(matches!(
//!     client.create_index_kms("docs", &KmsBlob::none("local")),
//!     Err(Error::KmsEnvelopeExists(_))
//! ));
//! assert_eq!(client.get_index_kms("docs")?.provider, "none");
//! client.delete_index_kms("docs")?;
//! client.delete_index_kms("docs")?; // idempotent
//! # Ok::<(), tkms_engine::Error>(())
//! ```

mod aws;
mod blob;
mod runtime;
mod tkms;

pub use aws::{AwsCredentials, AwsKmsConfig, AwsKmsProvider};
pub use blob::{
    KmsBlob, KMS_BLOB_IDENTIFIER, MAX_KMS_BLOB_LEN, MAX_KMS_FIELD_LEN, MAX_WRAPPED_KEK_LEN,
    PROVIDER_AWS_KMS, PROVIDER_NONE, PROVIDER_TKMS,
};
pub use tkms::{TkmsConfig, TkmsProvider};

use crate::client::{check_name, Client};
use crate::error::{Error, Result};
use crate::index::Index;
use crate::keys::IndexKey;
use crate::records::kms_key;
use crate::store::{Applied, Precondition, WriteBatch};
use crate::types::IndexConfig;

/// What a [`KeyProvider`] returns when it wraps a KEK: the fields of the envelope it fills.
#[derive(Clone, PartialEq, Eq)]
pub struct Wrapped {
    /// The KMS key the KEK was wrapped under (id or ARN).
    pub key_id: String,
    /// The region of that key (empty when not applicable).
    pub region: String,
    /// The wrapped KEK.
    pub wrapped_kek: Vec<u8>,
}

impl std::fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wrapped")
            .field("key_id", &self.key_id)
            .field("region", &self.region)
            .field("wrapped_kek_len", &self.wrapped_kek.len())
            .finish()
    }
}

/// An external KMS that wraps and unwraps index KEKs.
///
/// Implemented here by [`AwsKmsProvider`] (`aws-kms`) and [`TkmsProvider`] (`tkms`: KEK
/// ECIES-encrypted to the cluster public key, unwrapped at load through the cluster's
/// `/v1/reencrypt` with the engine authenticated as a runner or gateway).
///
/// Implementations are synchronous (the engine's API is) and must be callable from inside a
/// tokio runtime without panicking (run their async I/O on a private runtime, as both
/// providers do). An envelope copied onto another index must not open it: `aws-kms` binds
/// the wrap to the index name (an encryption context); a `tkms` envelope unwraps to a KEK
/// that the other index's keystore refuses ([`Error::WrongKey`]).
pub trait KeyProvider: Send + Sync {
    /// The envelope `provider` value this provider handles (e.g. `"aws-kms"`).
    fn provider(&self) -> &str;

    /// Wraps `kek` for the index `index`.
    fn wrap(&self, index: &str, kek: &IndexKey) -> Result<Wrapped>;

    /// Unwraps the KEK of `index` from its envelope. A KMS refusal (wrong key, wrong
    /// encryption context, tampered blob, missing permission) is [`Error::Kms`].
    fn unwrap(&self, index: &str, blob: &KmsBlob) -> Result<IndexKey>;
}

impl KmsBlob {
    /// Wraps `kek` with `provider` and builds the envelope (version 1, created now).
    pub fn wrap(
        provider: &dyn KeyProvider,
        kms_name: impl Into<String>,
        index: &str,
        kek: &IndexKey,
    ) -> Result<Self> {
        let Wrapped {
            key_id,
            region,
            wrapped_kek,
        } = provider.wrap(index, kek)?;
        let blob = Self {
            kms_name: kms_name.into(),
            provider: provider.provider().to_owned(),
            key_id,
            region,
            wrapped_kek,
            version: 1,
            created_at: blob::now_unix(),
        };
        blob.validate()?;
        Ok(blob)
    }
}

impl Client {
    /// Stores the envelope of index `name`; fails with [`Error::KmsEnvelopeExists`] if one is
    /// already stored (strict insert). The index itself need not exist yet.
    pub fn create_index_kms(&self, name: &str, blob: &KmsBlob) -> Result<()> {
        check_name(name)?;
        let value = blob.to_flatbuffer()?;
        let mut b = WriteBatch::new();
        b.require(Precondition::Absent(kms_key(name)));
        b.put(kms_key(name), value);
        match self.store.apply(b)? {
            Applied::Committed => Ok(()),
            Applied::PreconditionFailed => Err(Error::KmsEnvelopeExists(name.to_owned())),
        }
    }

    /// Stores or replaces the envelope of index `name` (idempotent upsert).
    pub fn push_index_kms(&self, name: &str, blob: &KmsBlob) -> Result<()> {
        check_name(name)?;
        let value = blob.to_flatbuffer()?;
        let mut b = WriteBatch::new();
        b.put(kms_key(name), value);
        self.store.apply(b).map(|_| ())
    }

    /// The envelope of index `name`; [`Error::KmsEnvelopeNotFound`] when none is stored.
    pub fn get_index_kms(&self, name: &str) -> Result<KmsBlob> {
        check_name(name)?;
        let raw = self
            .store
            .get(&kms_key(name))?
            .ok_or_else(|| Error::KmsEnvelopeNotFound(name.to_owned()))?;
        KmsBlob::from_flatbuffer(&raw)
    }

    /// Removes the envelope of index `name`; no error when there is none (idempotent).
    pub fn delete_index_kms(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let mut b = WriteBatch::new();
        b.delete(kms_key(name));
        self.store.apply(b).map(|_| ())
    }

    /// Reads the envelope of `name` and unwraps its KEK with `provider`.
    ///
    /// Errors: [`Error::KmsEnvelopeNotFound`]; [`Error::InvalidEnvelope`] when the envelope
    /// names another provider (for `none`: the caller must supply the KEK); [`Error::Kms`]
    /// when the KMS refuses.
    pub fn index_key_from_kms(&self, name: &str, provider: &dyn KeyProvider) -> Result<IndexKey> {
        let blob = self.get_index_kms(name)?;
        if blob.provider == PROVIDER_NONE {
            return Err(Error::InvalidEnvelope(format!(
                "index `{name}` uses provider \"none\": nothing is stored, supply its KEK directly"
            )));
        }
        if blob.provider != provider.provider() {
            return Err(Error::InvalidEnvelope(format!(
                "index `{name}` is wrapped by provider {:?}, not {:?}",
                blob.provider,
                provider.provider()
            )));
        }
        provider.unwrap(name, &blob)
    }

    /// Loads index `name` through its envelope: unwraps the KEK with `provider` and opens
    /// the index with it ([`Error::WrongKey`] if the unwrapped key does not open it).
    pub fn load_index_kms(&self, name: &str, provider: &dyn KeyProvider) -> Result<Index> {
        let key = self.index_key_from_kms(name, provider)?;
        self.load_index(name, &key)
    }

    /// Creates index `name` under a fresh random KEK wrapped by `provider`, and stores its
    /// envelope in the same batch: both exist or neither does. Fails with
    /// [`Error::IndexExists`] or [`Error::KmsEnvelopeExists`]. The KEK never leaves this
    /// call unwrapped.
    pub fn create_index_with_kms(
        &self,
        name: &str,
        provider: &dyn KeyProvider,
        kms_name: &str,
        config: IndexConfig,
    ) -> Result<Index> {
        check_name(name)?;
        config.validate()?;
        let key = IndexKey::generate();
        let blob = KmsBlob::wrap(provider, kms_name, name, &key)?;
        let value = blob.to_flatbuffer()?;
        if self.store.get(&kms_key(name))?.is_some() {
            return Err(Error::KmsEnvelopeExists(name.to_owned()));
        }
        self.create_index_with(name, &key, config, |b| {
            b.require(Precondition::Absent(kms_key(name)));
            b.put(kms_key(name), value);
        })
    }
}
