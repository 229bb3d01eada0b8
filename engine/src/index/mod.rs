//! An open encrypted index: IVF lists searched by an SQ8 first stage and exact re-rank, or by
//! an exact scan, over forward-private segment storage (docs/ARCHITECTURE.md §4.4).
//!
//! Items are assigned to IVF lists (k-means centroids, trained by [`Index::train`]; an
//! untrained index has one list and searches it exhaustively). Every upsert writes, per list
//! it touches, one new immutable *segment* `(list, counter)` whose storage tokens and
//! encryption key derive from `HMAC(seed key, generation ‖ list)` and the list's next counter
//! — so a segment written after a query is unlinkable to that query's tokens (forward
//! privacy). A query derives tokens only for its probed lists and searches them with one of
//! two strategies, chosen in the open by [`search::Strategy::choose`]: the *two-stage* search
//! decrypts their compact SQ8 code blocks, keeps `rerank_mult · top_k` candidates and
//! decrypts only those exact vectors; the *exact* scan ranks every item of the probed
//! segments' decrypted vector blocks (held in the segment cache, or read once for a batch).
//! Deletes tombstone slots; [`Index::compact`] rewrites a list's live items into one segment
//! under a new counter. Records that become unreferenced (deleted or overwritten slots,
//! compacted or retrained segments) are never deleted in the batch that made them garbage:
//! they are queued in the encrypted state and removed by a later write batch (or
//! [`Index::sweep`]), so the batch writing a merged or replacing segment does not name the
//! tokens past queries fetched.
//!
//! A handle's reads use its in-memory state, checked first against storage: every batch that
//! writes the state also writes a small *version record* (the SHA-256 of the new state
//! ciphertext), and every read (`query`, one `query_batch`, `get`, `list_ids`) begins by
//! fetching it. If it names the state this handle holds, the handle is current; otherwise
//! the handle fetches the state itself and reloads it if it changed. So a read never misses
//! a write committed before it began — in particular it never returns an item another handle
//! deleted, even from the decrypted-segment cache, which serves segments by their immutable
//! storage names and filters deleted slots with the (now fresh) state. The check costs one
//! 32-byte read instead of reading and hashing the whole state (megabytes for a large id
//! map). If a record a read expects is still missing or fails authentication (a write raced
//! with the read), the handle re-reads the state and retries once.
//!
//! The decrypted index state (config, centroids, counters, id → location map) is held in
//! memory and persisted encrypted under the DEK-derived state key on every write.
//!
//! The code is split by job: [`validate`] (what an upsert or query may carry), [`freshness`]
//! (the version record, reloads and commits), [`write`] (upsert, delete, segments and
//! garbage), [`read`] (reads by id and by metadata), [`search`] (vector queries and their
//! strategy), [`maintain`] (train and compact) and [`users`] (per-user keys).

mod freshness;
mod maintain;
mod read;
mod search;
mod users;
mod validate;
mod write;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::Value;
use zeroize::Zeroizing;

use crate::cache::SegmentCache;
use crate::error::{Error, Result};
use crate::keys::{Dek, IndexKey, IndexKeys, Scope, SegmentKeys, SEGMENT_SALT_LEN};
use crate::labels;
use crate::records::{
    catalog_key, data_key, decode, encode, index_prefix, kms_key, state_key, IndexHeader,
    ListState, State, UID_LEN,
};
use crate::scan::Probe;
use crate::store::{value_digest, Applied, Precondition, Store, WriteBatch};
use crate::types::IndexConfig;

use freshness::{load_state, state_aad};
pub(crate) use validate::check_vector;
pub use validate::{MAX_BATCH, MAX_METADATA_DEPTH};

/// A sealed record: storage key and ciphertext.
type Record = (Vec<u8>, Vec<u8>);

/// What a handle was opened with.
enum Access {
    /// The index KEK: everything, including minting user keys and deleting the index.
    Admin(IndexKey),
    /// A minted user key.
    User(Scope),
}

struct Loaded {
    state: State,
    /// SHA-256 of the stored state ciphertext this handle last saw (optimistic concurrency).
    digest: [u8; 32],
    /// The centroids prepared for probe selection (`None` before training).
    probe: Option<Probe>,
}

impl Loaded {
    fn new(state: State, digest: [u8; 32]) -> Self {
        let probe = state
            .centroids
            .as_ref()
            .map(|c| Probe::new(c, state.config.dimension, state.config.metric));
        Self {
            state,
            digest,
            probe,
        }
    }
}

/// An open encrypted index. Cheap to share between threads (`&Index` is `Sync`); queries run
/// concurrently, writes are serialized.
///
/// ```
/// use tkms_engine::{Client, IndexConfig, IndexKey, Item, QueryParams, StorageConfig};
///
/// let client = Client::new(StorageConfig::memory())?;
/// let key = IndexKey::generate();
/// let index = client.create_index("docs", &key, IndexConfig::new(2).with_n_lists(2))?;
/// index.upsert(vec![
///     Item::new("a", vec![0.0, 0.0]),
///     Item::new("b", vec![10.0, 10.0]),
///     Item::new("c", vec![10.0, 11.0]),
/// ])?;
/// index.train(&Default::default())?;
/// let hits = index.query(&[9.0, 9.5], &QueryParams::new(2).n_probes(2))?;
/// assert_eq!(hits[0].id, "b");
/// # Ok::<(), tkms_engine::Error>(())
/// ```
pub struct Index {
    name: String,
    uid: [u8; UID_LEN],
    store: Arc<dyn Store>,
    dek: Dek,
    keys: IndexKeys,
    access: Access,
    state: RwLock<Loaded>,
    cache: SegmentCache,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("name", &self.name)
            .field("access", &self.access_name())
            .finish_non_exhaustive()
    }
}

pub(crate) fn dek_wrap_aad(name: &str, uid: &[u8; UID_LEN]) -> Vec<u8> {
    let len = u32::try_from(name.len()).unwrap_or(u32::MAX).to_be_bytes();
    [labels::DEK_WRAP_AAD, &len, name.as_bytes(), uid].concat()
}

pub(crate) fn user_wrap_aad(uid: &[u8; UID_LEN], key_id: &[u8], scope: Scope) -> Vec<u8> {
    [labels::USER_WRAP_AAD, uid, key_id, &[scope.to_byte()]].concat()
}

fn slot_u32(slot: usize) -> u32 {
    u32::try_from(slot).expect("segment sizes are bounded by MAX_BATCH")
}

fn list_u32(list: usize) -> u32 {
    u32::try_from(list).expect("list counts are bounded by MAX_LISTS")
}

impl Index {
    pub(crate) fn open(
        name: String,
        uid: [u8; UID_LEN],
        store: Arc<dyn Store>,
        dek: Dek,
        key: Option<IndexKey>,
        scope: Scope,
        cache_bytes: usize,
    ) -> Result<Self> {
        let keys = IndexKeys::derive(&dek);
        let loaded = load_state(store.as_ref(), &uid, &keys)?;
        Ok(Self {
            name,
            uid,
            store,
            dek,
            keys,
            access: key.map_or(Access::User(scope), Access::Admin),
            state: RwLock::new(loaded),
            cache: SegmentCache::new(cache_bytes),
        })
    }

    /// Writes the initial (empty, untrained) state of a new index into `batch`.
    pub(crate) fn initial_state_record(
        uid: &[u8; UID_LEN],
        dek: &Dek,
        config: IndexConfig,
    ) -> (Vec<u8>, Vec<u8>) {
        let state = State {
            config,
            generation: 0,
            centroids: None,
            lists: vec![ListState::default()],
            ids: HashMap::new(),
            garbage: Vec::new(),
        };
        let keys = IndexKeys::derive(dek);
        let plain = Zeroizing::new(encode(&state));
        (
            state_key(uid),
            keys.state_cipher().seal(&state_aad(uid), &plain),
        )
    }

    fn read(&self) -> RwLockReadGuard<'_, Loaded> {
        // State is only replaced after a successful commit, so a poisoned lock still guards a
        // consistent value.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Loaded> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn access_name(&self) -> &'static str {
        match self.access {
            Access::Admin(_) => "the index key",
            Access::User(Scope::ReadWrite) => "a read-write user key",
            Access::User(Scope::ReadOnly) => "a read-only user key",
        }
    }

    fn require_write(&self, operation: &'static str) -> Result<()> {
        match self.access {
            Access::Admin(_) | Access::User(Scope::ReadWrite) => Ok(()),
            Access::User(Scope::ReadOnly) => Err(Error::PermissionDenied {
                operation,
                needed: "read-write access",
                held: self.access_name(),
            }),
        }
    }

    fn require_admin(&self, operation: &'static str) -> Result<&IndexKey> {
        match &self.access {
            Access::Admin(k) => Ok(k),
            Access::User(_) => Err(Error::PermissionDenied {
                operation,
                needed: "the index key",
                held: self.access_name(),
            }),
        }
    }

    /// The index name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The index configuration.
    pub fn config(&self) -> IndexConfig {
        self.read().state.config.clone()
    }

    /// `None` when opened with the index key, else the user key's scope.
    pub fn user_scope(&self) -> Option<Scope> {
        match self.access {
            Access::Admin(_) => None,
            Access::User(s) => Some(s),
        }
    }

    /// Number of IVF lists the index has now: 1 before training, the trained number after.
    pub fn n_lists(&self) -> usize {
        self.read().state.lists.len()
    }

    /// Whether [`Index::train`] has built IVF lists.
    pub fn is_trained(&self) -> bool {
        self.read().state.centroids.is_some()
    }

    /// Number of live items, as of this handle's last read or write (no storage access; a
    /// `get`, `query` or `list_ids` first brings the handle up to date).
    pub fn len(&self) -> usize {
        self.read().state.ids.len()
    }

    /// True when the index holds no item.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of stored segments (all lists), for monitoring compaction.
    pub fn segment_count(&self) -> usize {
        self.read()
            .state
            .lists
            .iter()
            .map(|l| l.segments.len())
            .sum()
    }

    /// Plaintext budget of this handle's segment cache, in bytes (0: disabled).
    pub fn segment_cache_bytes(&self) -> usize {
        self.cache.budget()
    }

    /// Plaintext bytes currently held by this handle's segment cache.
    pub fn segment_cache_used(&self) -> usize {
        self.cache.bytes()
    }

    /// Sets the plaintext budget of this handle's segment cache (0 disables it and wipes
    /// every entry no query is using). See [`crate::Client::with_segment_cache_bytes`].
    pub fn set_segment_cache_bytes(&self, bytes: usize) {
        self.cache.set_budget(bytes);
    }

    fn segment_keys(
        &self,
        generation: u32,
        list: u32,
        counter: u64,
        salt: &[u8; SEGMENT_SALT_LEN],
    ) -> SegmentKeys {
        self.keys
            .cluster_seed(generation, list)
            .segment(counter, salt)
    }

    fn record_storage_key(&self, seg: &SegmentKeys, kind: u8, slot: u32) -> Vec<u8> {
        data_key(&self.uid, &seg.record_key(kind, slot))
    }

    /// Deletes the index and all its data. Needs the index key. Refused with
    /// [`Error::IndexNotFound`] when the catalog entry of this name no longer belongs to this
    /// handle's index (it was deleted, and perhaps recreated, through another handle).
    pub fn delete_index(self) -> Result<()> {
        self.require_admin("delete_index")?;
        let ck = catalog_key(&self.name);
        let raw = self.store.get(&ck)?;
        let ours = match &raw {
            Some(raw) => decode::<IndexHeader>(raw, "index header")?.uid == self.uid,
            None => false,
        };
        let Some(raw) = raw.filter(|_| ours) else {
            return Err(Error::IndexNotFound(self.name.clone()));
        };
        let mut b = WriteBatch::new();
        b.require(Precondition::Digest(ck.clone(), value_digest(&raw)));
        b.delete(ck);
        b.delete(kms_key(&self.name));
        b.delete_prefix(index_prefix(&self.uid));
        match self.store.apply(b)? {
            Applied::Committed => Ok(()),
            Applied::PreconditionFailed => Err(Error::Conflict(self.name.clone())),
        }
    }
}

fn open_record(
    seg: &SegmentKeys,
    key: &[u8],
    value: Option<Vec<u8>>,
) -> Result<Zeroizing<Vec<u8>>> {
    let sealed = value.ok_or_else(|| Error::Corrupted("a segment record is missing".into()))?;
    seg.cipher
        .open(key, &sealed)
        .map_err(|_| Error::Corrupted("a segment record failed authentication".into()))
}

fn parse_metadata(json: Option<&str>) -> Result<Option<Value>> {
    json.map(|s| {
        serde_json::from_str(s).map_err(|e| Error::Corrupted(format!("stored metadata: {e}")))
    })
    .transpose()
}
