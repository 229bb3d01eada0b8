//! The entry point: a [`Client`] over one storage backend that creates, loads, lists and
//! deletes indexes (the CyborgDB `Client` surface; docs/ARCHITECTURE.md §4.4).
//!
//! Creating an index draws a random DEK and a random uid and stores, under `c/<name>`, only
//! the uid and the DEK wrapped under the caller's KEK. Loading unwraps it; AES-GCM
//! authentication failure means the KEK is wrong and the load is refused with
//! [`Error::WrongKey`] before anything else is read or changed.

use std::sync::Arc;

use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::cache::DEFAULT_SEGMENT_CACHE_BYTES;
use crate::error::{Error, Result};
use crate::index::{dek_wrap_aad, user_wrap_aad, Index};
use crate::keys::{kek_wrap_cipher, Dek, IndexKey, Scope, UserKey};
use crate::records::{
    catalog_key, decode, encode, user_key, version_key, IndexHeader, UserRecord, CATALOG_PREFIX,
    HEADER_VERSION, UID_LEN,
};
use crate::store::{
    value_digest, Applied, DiskStore, MemoryStore, Precondition, S3Store, StorageConfig, Store,
    WriteBatch,
};
use crate::types::IndexConfig;

/// Longest accepted index name.
pub const MAX_INDEX_NAME_LEN: usize = 128;

/// A handle on one storage backend.
///
/// ```
/// use tkms_engine::{Client, Error, IndexConfig, IndexKey, StorageConfig};
///
/// let dir = std::env::temp_dir().join(format!("tkms-doc-{}", std::process::id()));
/// let key = IndexKey::generate();
/// {
///     let client = Client::new(StorageConfig::disk(&dir))?;
///     client.create_index("notes", &key, IndexConfig::new(4))?;
///     assert_eq!(client.list_indexes()?, vec!["notes".to_string()]);
/// }
/// let client = Client::new(StorageConfig::disk(&dir))?;
/// let index = client.load_index("notes", &key)?;
/// assert!(matches!(
///     client.load_index("notes", &IndexKey::generate()),
///     Err(Error::WrongKey { .. })
/// ));
/// client.delete_index("notes", &key)?;
/// # drop(index); drop(client); std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), tkms_engine::Error>(())
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) store: Arc<dyn Store>,
    segment_cache_bytes: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_INDEX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidIndexName(name.to_owned()))
    }
}

impl Client {
    /// Opens the storage described by `config`.
    pub fn new(config: StorageConfig) -> Result<Self> {
        let store: Arc<dyn Store> = match config {
            StorageConfig::Memory => Arc::new(MemoryStore::new()),
            StorageConfig::Disk(dir) => Arc::new(DiskStore::open(&dir)?),
            StorageConfig::S3(config) => Arc::new(S3Store::open(&config)?),
        };
        Ok(Self {
            store,
            segment_cache_bytes: DEFAULT_SEGMENT_CACHE_BYTES,
        })
    }

    /// A client over a custom [`Store`] implementation.
    pub fn with_store(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            segment_cache_bytes: DEFAULT_SEGMENT_CACHE_BYTES,
        }
    }

    /// Sets the plaintext budget, in bytes, of the segment cache of every index handle this
    /// client opens afterwards (default [`DEFAULT_SEGMENT_CACHE_BYTES`]; 0 disables it).
    ///
    /// Each handle keeps recently scanned segments (ids and prepared vectors) decrypted in
    /// process memory, least recently used evicted first and wiped when dropped, so repeated
    /// queries neither read nor decrypt them again. The store never sees plaintext either
    /// way; the cache only trades process memory (which holds the keys anyway) for storage
    /// reads and AES-GCM opens. See also [`Index::set_segment_cache_bytes`].
    #[must_use]
    pub fn with_segment_cache_bytes(mut self, bytes: usize) -> Self {
        self.segment_cache_bytes = bytes;
        self
    }

    /// The underlying store (for inspection and tests: it only ever holds ciphertext).
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    fn header(&self, name: &str) -> Result<IndexHeader> {
        check_name(name)?;
        let raw = self
            .store
            .get(&catalog_key(name))?
            .ok_or_else(|| Error::IndexNotFound(name.to_owned()))?;
        let header: IndexHeader = decode(&raw, "index header")?;
        if header.version != HEADER_VERSION {
            return Err(Error::Corrupted(format!(
                "index `{name}` has unsupported header version {}",
                header.version
            )));
        }
        Ok(header)
    }

    /// Creates an index; fails with [`Error::IndexExists`] if the name is taken.
    pub fn create_index(&self, name: &str, key: &IndexKey, config: IndexConfig) -> Result<Index> {
        self.create_index_with(name, key, config, |_| {})
    }

    /// [`Client::create_index`] with extra writes (and preconditions) committed in the same
    /// batch; a failed extra precondition is reported as [`Error::KmsEnvelopeExists`] when the
    /// index name itself is free.
    pub(crate) fn create_index_with(
        &self,
        name: &str,
        key: &IndexKey,
        config: IndexConfig,
        extra: impl FnOnce(&mut WriteBatch),
    ) -> Result<Index> {
        check_name(name)?;
        config.validate()?;
        let mut uid = [0u8; UID_LEN];
        OsRng.fill_bytes(&mut uid);
        let dek = Dek::generate();
        let header = IndexHeader {
            version: HEADER_VERSION,
            uid,
            wrapped_dek: kek_wrap_cipher(key).seal(&dek_wrap_aad(name, &uid), dek.as_bytes()),
        };
        let (state_key, state) = Index::initial_state_record(&uid, &dek, config);
        let mut b = WriteBatch::new();
        b.require(Precondition::Absent(catalog_key(name)));
        b.put(catalog_key(name), encode(&header));
        b.put(version_key(&uid), value_digest(&state).to_vec());
        b.put(state_key, state);
        extra(&mut b);
        match self.store.apply(b)? {
            Applied::Committed => Index::open(
                name.to_owned(),
                uid,
                Arc::clone(&self.store),
                dek,
                Some(key.clone()),
                Scope::ReadWrite,
                self.segment_cache_bytes,
            ),
            Applied::PreconditionFailed if self.store.get(&catalog_key(name))?.is_none() => {
                Err(Error::KmsEnvelopeExists(name.to_owned()))
            }
            Applied::PreconditionFailed => Err(Error::IndexExists(name.to_owned())),
        }
    }

    /// Loads an index with its KEK; a wrong KEK is refused with [`Error::WrongKey`].
    pub fn load_index(&self, name: &str, key: &IndexKey) -> Result<Index> {
        let header = self.header(name)?;
        let plain = kek_wrap_cipher(key)
            .open(&dek_wrap_aad(name, &header.uid), &header.wrapped_dek)
            .map_err(|_| Error::WrongKey {
                index: name.to_owned(),
            })?;
        self.open_with_dek(
            name,
            header.uid,
            &plain,
            Some(key.clone()),
            Scope::ReadWrite,
        )
    }

    /// Loads an index with a per-user key; the handle is limited to the key's [`Scope`].
    /// An unknown, revoked or forged user key is refused with [`Error::WrongKey`].
    pub fn load_index_with_user_key(&self, name: &str, key: &UserKey) -> Result<Index> {
        let (header, plain) = self.user_dek(name, key)?;
        self.open_with_dek(name, header.uid, &plain, None, key.scope())
    }

    /// Checks that a user key still opens `name` (its record exists, has the key's scope and
    /// unwraps under it) without loading the index: two small reads. A service holding an
    /// open handle for the key calls it on every request, so a revoked key stops working
    /// at once. Refused keys give [`Error::WrongKey`].
    pub fn check_user_key(&self, name: &str, key: &UserKey) -> Result<()> {
        self.user_dek(name, key).map(|_| ())
    }

    /// The index header and the DEK unwrapped with a user key.
    fn user_dek(&self, name: &str, key: &UserKey) -> Result<(IndexHeader, Zeroizing<Vec<u8>>)> {
        let header = self.header(name)?;
        let wrong = || Error::WrongKey {
            index: name.to_owned(),
        };
        let raw = self
            .store
            .get(&user_key(&header.uid, &key.key_id()))?
            .ok_or_else(wrong)?;
        let record: UserRecord = decode(&raw, "user key record")?;
        if record.scope != key.scope().to_byte() {
            return Err(wrong());
        }
        let plain = key
            .wrap_cipher()
            .open(
                &user_wrap_aad(&header.uid, &key.key_id(), key.scope()),
                &record.wrapped_dek,
            )
            .map_err(|_| wrong())?;
        Ok((header, plain))
    }

    /// Open an index handle from its unwrapped DEK bytes.
    fn open_with_dek(
        &self,
        name: &str,
        uid: [u8; UID_LEN],
        plain: &[u8],
        index_key: Option<IndexKey>,
        scope: Scope,
    ) -> Result<Index> {
        let dek = Dek::from_plaintext(plain)
            .ok_or_else(|| Error::Corrupted("wrapped DEK has the wrong length".into()))?;
        Index::open(
            name.to_owned(),
            uid,
            Arc::clone(&self.store),
            dek,
            index_key,
            scope,
            self.segment_cache_bytes,
        )
    }

    /// Whether an index of this name exists (an invalid name is an error).
    pub fn contains_index(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        Ok(self.store.get(&catalog_key(name))?.is_some())
    }

    /// Names of all indexes, sorted.
    pub fn list_indexes(&self) -> Result<Vec<String>> {
        self.store
            .scan_prefix(CATALOG_PREFIX)?
            .into_iter()
            .map(|(k, _)| {
                String::from_utf8(k[CATALOG_PREFIX.len()..].to_vec())
                    .map_err(|_| Error::Corrupted("index name is not UTF-8".into()))
            })
            .collect()
    }

    /// Deletes an index and all its data; needs the index KEK.
    pub fn delete_index(&self, name: &str, key: &IndexKey) -> Result<()> {
        self.load_index(name, key)?.delete_index()
    }
}
