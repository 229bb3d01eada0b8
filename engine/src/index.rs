//! An open encrypted index: IVF with an SQ8 first stage and exact re-rank over
//! forward-private segment storage (docs/ARCHITECTURE.md §4.4).
//!
//! Items are assigned to IVF lists (k-means centroids, trained by [`Index::train`]; an
//! untrained index has one list and searches it exhaustively). Every upsert writes, per list
//! it touches, one new immutable *segment* `(list, counter)` whose storage tokens and
//! encryption key derive from `HMAC(seed key, generation ‖ list)` and the list's next counter
//! — so a segment written after a query is unlinkable to that query's tokens (forward
//! privacy). A query derives tokens only for its probed lists, decrypts their compact SQ8
//! code blocks, keeps `rerank_mult · top_k` candidates and decrypts only those exact vectors.
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

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rand::rngs::{OsRng, StdRng};
use rand::{RngCore, SeedableRng};
use rayon::prelude::*;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::cache::{Decoded, SegmentCache, SegmentId};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::keys::{
    Dek, IndexKey, IndexKeys, Scope, SegmentKeys, UserKey, SEGMENT_SALT_LEN, USER_KEY_ID_LEN,
};
use crate::kmeans;
use crate::labels;
use crate::quantize::Sq8;
use crate::records::{
    catalog_key, data_key, decode, decode_vector, encode, encode_vector, index_prefix, kms_key,
    state_key, user_key, version_key, DocRecord, Garbage, IndexHeader, ListState, Location,
    SegmentBlock, SegmentCodes, SegmentIds, SegmentMeta, SegmentState, State, UserRecord,
    KIND_BLOCK, KIND_CODES, KIND_DOC, KIND_META, KIND_VECTOR, UID_LEN,
};
use crate::scan::{exact_rank, sane_rank, Block, Probe, MATCHED_TOGETHER, TILE};
use crate::store::{value_digest, Applied, Precondition, Store, WriteBatch};
use crate::types::{
    auto_n_lists, check_centroids, CompactionStats, IndexConfig, Item, QueryParams, QueryResult,
    TrainParams, AUTO, MAX_ABS_COMPONENT, MAX_CONTENTS_LEN, MAX_DIMENSION, MAX_ID_LEN, MAX_LISTS,
    MAX_METADATA_LEN, MAX_RERANK, MAX_TOP_K, MAX_TRAIN_ITERS,
};

/// Deepest accepted metadata nesting (objects and arrays).
pub const MAX_METADATA_DEPTH: usize = 32;

fn json_depth(v: &Value) -> usize {
    // Iterative, so hostile nesting cannot overflow the stack here.
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        if d > MAX_METADATA_DEPTH {
            break;
        }
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    max
}

/// A sealed record: storage key and ciphertext.
type Record = (Vec<u8>, Vec<u8>);

/// Largest number of items accepted in one upsert.
pub const MAX_BATCH: usize = 1_000_000;

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

/// An item validated and prepared for writing.
struct NewItem {
    id: String,
    vector: Vec<f32>,
    prepared: Vec<f32>,
    contents: Option<Vec<u8>>,
    metadata: Option<String>,
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

fn state_aad(uid: &[u8; UID_LEN]) -> Vec<u8> {
    [labels::STATE_AAD, uid].concat()
}

fn slot_u32(slot: usize) -> u32 {
    u32::try_from(slot).expect("segment sizes are bounded by MAX_BATCH")
}

fn list_u32(list: usize) -> u32 {
    u32::try_from(list).expect("list counts are bounded by MAX_LISTS")
}

/// Checks a vector's length and values; `position` is the item's place in its upsert batch
/// (errors never carry ids or values).
pub(crate) fn check_vector(config: &IndexConfig, v: &[f32], position: Option<usize>) -> Result<()> {
    if v.len() != config.dimension {
        return Err(Error::DimensionMismatch {
            expected: config.dimension,
            got: v.len(),
            position,
        });
    }
    check_values(v, position)
}

/// A query vector against an index that has no dimension yet: any length, finite values.
fn check_finite(v: &[f32]) -> Result<()> {
    if v.is_empty() || v.len() > MAX_DIMENSION {
        return Err(Error::InvalidArgument(format!(
            "a query vector must have 1..={MAX_DIMENSION} components, got {}",
            v.len()
        )));
    }
    check_values(v, None)
}

fn check_values(v: &[f32], position: Option<usize>) -> Result<()> {
    if v.iter().any(|x| !x.is_finite()) {
        return Err(Error::NonFiniteVector { position });
    }
    if let Some(at) = v.iter().position(|x| x.abs() > MAX_ABS_COMPONENT) {
        let whose = position.map_or_else(
            || "the query vector".to_owned(),
            |p| format!("the vector of the item at batch position {p}"),
        );
        return Err(Error::InvalidArgument(format!(
            "{whose} has a component of magnitude above {MAX_ABS_COMPONENT:e} (component {at})"
        )));
    }
    Ok(())
}

/// The configuration an upsert of `items` is checked against: `config` itself, or, while its
/// dimension is still [`AUTO`] (no upsert yet), `config` with the first item's dimension.
fn detect_dimension(config: &IndexConfig, items: &[Item]) -> Result<IndexConfig> {
    let mut config = config.clone();
    if config.dimension != AUTO {
        return Ok(config);
    }
    let Some(first) = items.first() else {
        return Ok(config);
    };
    let dim = first.vector.len();
    if dim == 0 || dim > MAX_DIMENSION {
        return Err(Error::InvalidArgument(format!(
            "the index takes its dimension from the first upserted vector, which must have \
             1..={MAX_DIMENSION} components; the item at batch position 0 has {dim}"
        )));
    }
    check_centroids(config.n_lists, dim).map_err(Error::InvalidArgument)?;
    config.dimension = dim;
    Ok(config)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn prepare_items(config: &IndexConfig, items: Vec<Item>) -> Result<Vec<NewItem>> {
    if items.len() > MAX_BATCH {
        return Err(Error::InvalidArgument(format!(
            "at most {MAX_BATCH} items per upsert, got {}",
            items.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for (pos, item) in items.into_iter().enumerate() {
        if item.id.is_empty() || item.id.len() > MAX_ID_LEN {
            return Err(Error::InvalidArgument(format!(
                "item ids must be 1..={MAX_ID_LEN} bytes, got {} bytes at batch position {pos}",
                item.id.len()
            )));
        }
        if !seen.insert(item.id.clone()) {
            return Err(Error::DuplicateId(pos));
        }
        check_vector(config, &item.vector, Some(pos))?;
        if let Some(c) = &item.contents {
            if c.len() > MAX_CONTENTS_LEN {
                return Err(Error::InvalidArgument(format!(
                    "contents of the item at batch position {pos} are {} bytes, at most \
                     {MAX_CONTENTS_LEN} are accepted",
                    c.len()
                )));
            }
        }
        let metadata = match item.metadata {
            None => None,
            Some(m @ Value::Object(_)) if json_depth(&m) <= MAX_METADATA_DEPTH => {
                let json = m.to_string();
                if json.len() > MAX_METADATA_LEN {
                    return Err(Error::InvalidArgument(format!(
                        "metadata of the item at batch position {pos} is {} bytes as JSON, at \
                         most {MAX_METADATA_LEN} are accepted",
                        json.len()
                    )));
                }
                Some(json)
            }
            Some(Value::Object(_)) => {
                return Err(Error::InvalidArgument(format!(
                    "metadata of the item at batch position {pos} is nested deeper than \
                     {MAX_METADATA_DEPTH} levels"
                )))
            }
            Some(other) => {
                return Err(Error::InvalidArgument(format!(
                    "metadata of the item at batch position {pos} must be a JSON object, got {}",
                    json_type(&other)
                )))
            }
        };
        out.push(NewItem {
            prepared: config.metric.prepare(&item.vector),
            id: item.id,
            vector: item.vector,
            contents: item.contents,
            metadata,
        });
    }
    Ok(out)
}

/// Validated query parameters.
struct Plan {
    top_k: usize,
    n_probes: usize,
    rerank: usize,
    filter: Option<Filter>,
    include: crate::types::Include,
}

impl Plan {
    fn new(config: &IndexConfig, p: &QueryParams) -> Result<Self> {
        if p.top_k == 0 || p.top_k > MAX_TOP_K {
            return Err(Error::InvalidArgument(format!(
                "top_k must be 1..={MAX_TOP_K}, got {}",
                p.top_k
            )));
        }
        let n_probes = p.n_probes.unwrap_or(config.n_probes);
        if n_probes == 0 {
            return Err(Error::InvalidArgument("n_probes must be at least 1".into()));
        }
        let mult = p.rerank_mult.unwrap_or(config.rerank_mult);
        if mult == 0 || mult > 1000 {
            return Err(Error::InvalidArgument(format!(
                "rerank_mult must be 1..=1000, got {mult}"
            )));
        }
        let rerank = p.top_k.saturating_mul(mult);
        if rerank > MAX_RERANK {
            return Err(Error::InvalidArgument(format!(
                "top_k · rerank_mult must be at most {MAX_RERANK}, got {} · {mult}",
                p.top_k
            )));
        }
        Ok(Self {
            top_k: p.top_k,
            n_probes,
            rerank,
            filter: p.filter.as_ref().map(Filter::parse).transpose()?,
            include: p.include,
        })
    }
}

/// A first-stage candidate.
struct Candidate {
    rank: f32,
    segment: usize,
    slot: u32,
}

/// A hit of the exact scan: its rank, the segment (an index into the scan's segment table)
/// and the slot.
#[derive(Clone, Copy)]
struct Hit {
    rank: f32,
    seg: u32,
    slot: u32,
}

/// One list's exact scan: its segments (state and ids) and each query's best hits in it.
struct ListScan<'s> {
    segments: Vec<(&'s SegmentState, Arc<SegmentIds>)>,
    hits: Vec<(u32, Hit)>,
}

/// Closer first; equal ranks by id bytes (the order of the final results).
fn hit_cmp<'a>(a: &Hit, b: &Hit, ids: &impl Fn(&Hit) -> &'a [u8]) -> std::cmp::Ordering {
    a.rank.total_cmp(&b.rank).then_with(|| ids(a).cmp(ids(b)))
}

/// A query's best hits: every hit ranked no worse than the `k`-th best seen (ties with it
/// included, up to `2k` of them), so that [`Best::finish`] can order them by (rank, id)
/// exactly. Hits are appended unsorted while they pass the threshold and cut back when `4k`
/// have gathered, so the scan's inner loop is one comparison per item. One `Best` is reused
/// for query after query ([`Best::reset`]).
struct Best {
    k: usize,
    hits: Vec<Hit>,
    /// Hits ranked above this cannot be among the query's best `k`: the `k`-th best rank of
    /// this list so far, or of another list already scanned for the query (see
    /// [`Threshold`]), else infinity.
    worst: f32,
}

impl Best {
    fn new(k: usize) -> Self {
        Self {
            k,
            hits: Vec::with_capacity(4 * k + 1),
            worst: f32::INFINITY,
        }
    }

    /// Empty, for a query whose best `k` rank no worse than `worst`.
    fn reset(&mut self, worst: f32) {
        self.hits.clear();
        self.worst = worst;
    }

    /// Offers every entry of `row` (the rank of slot `first + j` is `row[j]`) of segment
    /// `seg` that is not `deleted`.
    #[inline]
    fn offer_row<'a>(
        &mut self,
        row: &[f32],
        seg: u32,
        first: usize,
        deleted: impl Fn(u32) -> bool,
        ids: &impl Fn(&Hit) -> &'a [u8],
    ) {
        if self.k == 0 {
            return;
        }
        let mut worst = self.worst;
        for (j, &rank) in row.iter().enumerate() {
            if rank > worst {
                continue;
            }
            let slot = slot_u32(first + j);
            if deleted(slot) {
                continue;
            }
            self.hits.push(Hit { rank, seg, slot });
            if self.hits.len() >= 4 * self.k {
                self.cut(ids);
                worst = self.worst;
            }
        }
    }

    /// Keeps the hits ranked no worse than the `k`-th best (and than `worst`), and lowers
    /// `worst` to that rank. When more than `2k` hits tie there, ids decide which `k` stay
    /// (a hit that `k` others beat by (rank, id) cannot be among the best `k`), so many equal
    /// vectors cost amortized constant time per hit, not a cut per hit.
    fn cut<'a>(&mut self, ids: &impl Fn(&Hit) -> &'a [u8]) {
        if self.k == 0 {
            self.hits.clear();
            return;
        }
        if self.hits.len() >= self.k {
            let rank = |a: &Hit, b: &Hit| a.rank.total_cmp(&b.rank);
            let (_, kth, _) = self.hits.select_nth_unstable_by(self.k - 1, rank);
            if kth.rank.total_cmp(&self.worst).is_lt() {
                self.worst = kth.rank;
            }
        }
        let worst = self.worst;
        self.hits.retain(|h| h.rank.total_cmp(&worst).is_le());
        if self.hits.len() > 2 * self.k {
            self.hits
                .select_nth_unstable_by(self.k - 1, |a, b| hit_cmp(a, b, ids));
            self.hits.truncate(self.k);
        }
    }

    /// The `k`-th best rank, once `k` hits are held (after [`Best::cut`]).
    fn kth(&self) -> Option<f32> {
        (self.k > 0 && self.hits.len() >= self.k).then_some(self.worst)
    }

    /// Leaves the best `k`, closer first, equal ranks by id bytes.
    fn finish<'a>(&mut self, ids: &impl Fn(&Hit) -> &'a [u8]) {
        self.cut(ids);
        self.hits.sort_unstable_by(|a, b| hit_cmp(a, b, ids));
        self.hits.truncate(self.k);
    }
}

/// Each query's `k`-th best rank over the lists scanned for it so far, shared by the list
/// scans running in parallel: any list's `k`-th best bounds the query's, so a list scanned
/// later offers only hits that can still make the top `k` (exact: ties are kept). Stored as
/// order-preserving `u32` keys of the `f32` ranks.
struct Threshold(Vec<AtomicU32>);

impl Threshold {
    fn new(queries: usize) -> Self {
        Self(
            (0..queries)
                .map(|_| AtomicU32::new(Self::key(f32::INFINITY)))
                .collect(),
        )
    }

    /// `f32` ordered as `total_cmp` orders it, as a `u32`.
    fn key(r: f32) -> u32 {
        let b = r.to_bits();
        if b >> 31 == 1 {
            !b
        } else {
            b | (1 << 31)
        }
    }

    fn rank(key: u32) -> f32 {
        f32::from_bits(if key >> 31 == 1 {
            key & !(1 << 31)
        } else {
            !key
        })
    }

    fn get(&self, q: u32) -> f32 {
        self.0
            .get(q as usize)
            .map_or(f32::INFINITY, |a| Self::rank(a.load(Ordering::Relaxed)))
    }

    fn lower(&self, q: u32, r: f32) {
        if let Some(a) = self.0.get(q as usize) {
            a.fetch_min(Self::key(r), Ordering::Relaxed);
        }
    }
}

/// A probed segment's decrypted first-stage records (codes, and metadata when filtering).
struct OpenSegment {
    codes: SegmentCodes,
    meta: Option<SegmentMeta>,
}

/// Segments opened once for a whole batch of queries, by (list, counter).
type SharedSegments = HashMap<(u32, u64), OpenSegment>;

/// Queries of a list scored together, against runs of [`TILES_SCORED_TOGETHER`] tiles: the
/// score buffer holds at most `64 · 1024` ranks (256 KiB), however large a segment.
const SCORED_TOGETHER: usize = 64;
const TILES_SCORED_TOGETHER: usize = 64;

/// Queries of a batch that share their opened segments (bounds the plaintext codes held at
/// once to about `QUERY_CHUNK · n_probes` lists).
const QUERY_CHUNK: usize = 256;

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

    /// All live ids, sorted (as stored when the call began: see [`Index::query`]).
    pub fn list_ids(&self) -> Result<Vec<String>> {
        self.ensure_fresh()?;
        let mut ids: Vec<String> = self.read().state.ids.keys().cloned().collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Removes the records queued as garbage by earlier writes (deleted and overwritten
    /// items, compacted and retrained segments) in one batch that writes nothing but the
    /// state. Every upsert, delete and train also sweeps at its start; compaction does not.
    /// Returns the number of garbage entries (segments or slot groups) removed.
    pub fn sweep(&self) -> Result<usize> {
        self.require_write("sweep")?;
        let mut guard = self.write();
        if guard.state.garbage.is_empty() {
            return Ok(0);
        }
        let mut state = guard.state.clone();
        let mut b = WriteBatch::new();
        let n = self.sweep_into(&mut state, &mut b);
        self.commit(&mut guard, state, b)?;
        Ok(n)
    }

    /// Moves the garbage queued by earlier batches into `b` as deletions.
    fn sweep_into(&self, state: &mut State, b: &mut WriteBatch) -> usize {
        let garbage = std::mem::take(&mut state.garbage);
        self.delete_garbage(&garbage, b);
        garbage.len()
    }

    fn delete_garbage(&self, garbage: &[Garbage], b: &mut WriteBatch) {
        for g in garbage {
            let seg = self.segment_keys(g.generation, g.list, g.counter, &g.salt);
            for &slot in &g.slots {
                b.delete(self.record_storage_key(&seg, KIND_VECTOR, slot));
                b.delete(self.record_storage_key(&seg, KIND_DOC, slot));
            }
            if let Some(len) = g.segment_len {
                b.delete(self.record_storage_key(&seg, KIND_CODES, 0));
                b.delete(self.record_storage_key(&seg, KIND_META, 0));
                b.delete(self.record_storage_key(&seg, KIND_BLOCK, 0));
                for slot in 0..len {
                    b.delete(self.record_storage_key(&seg, KIND_VECTOR, slot));
                    b.delete(self.record_storage_key(&seg, KIND_DOC, slot));
                }
            }
        }
    }

    /// Re-reads the stored state if it differs from the one this handle holds; returns
    /// whether it was replaced.
    fn refresh_if_changed(&self) -> Result<bool> {
        let Some(sealed) = self.store.get(&state_key(&self.uid))? else {
            return Ok(false);
        };
        self.replace_if_changed(&sealed)
    }

    /// Replaces the handle's state with the stored `sealed` one if it differs; returns
    /// whether it was replaced.
    fn replace_if_changed(&self, sealed: &[u8]) -> Result<bool> {
        let digest = value_digest(sealed);
        if digest == self.read().digest {
            return Ok(false);
        }
        let fresh = open_state(&self.uid, &self.keys, sealed, digest)?;
        *self.write() = fresh;
        Ok(true)
    }

    /// Makes the handle's state the stored one before a read (see the module docs): one read
    /// of the version record when nothing changed; the state itself otherwise, or when the
    /// version record is missing (an index written before version records existed, until its
    /// next write). A deleted index gives [`Error::IndexNotFound`].
    fn ensure_fresh(&self) -> Result<()> {
        let digest = self.read().digest;
        if let Some(v) = self.store.get(&version_key(&self.uid))? {
            if v.as_slice() == digest.as_slice() {
                return Ok(());
            }
        }
        let sealed = self
            .store
            .get(&state_key(&self.uid))?
            .ok_or_else(|| Error::IndexNotFound(self.name.clone()))?;
        self.replace_if_changed(&sealed)?;
        Ok(())
    }

    /// Runs a read against the handle's state, made fresh first ([`Index::ensure_fresh`]); if
    /// a record was missing or failed authentication because another handle changed the
    /// index during the read, reloads the state and runs it once more.
    fn read_fresh<T>(&self, f: impl Fn(&Loaded) -> Result<T>) -> Result<T> {
        self.ensure_fresh()?;
        let first = f(&self.read());
        match first {
            Err(Error::Corrupted(_)) => {
                if self.refresh_if_changed()? {
                    f(&self.read())
                } else {
                    first
                }
            }
            other => other,
        }
    }

    /// Brings this handle up to date with what is stored (one 32-byte read when nothing
    /// changed), so [`Index::len`], [`Index::is_trained`] and [`Index::config`] answer for
    /// the stored index.
    pub fn refresh(&self) -> Result<()> {
        self.ensure_fresh()
    }

    /// Re-reads the index state from storage (after [`Error::Conflict`]).
    pub fn reload(&self) -> Result<()> {
        let fresh = load_state(self.store.as_ref(), &self.uid, &self.keys)?;
        *self.write() = fresh;
        Ok(())
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

    fn sealed_record(&self, seg: &SegmentKeys, kind: u8, slot: u32, plain: &[u8]) -> Record {
        let key = self.record_storage_key(seg, kind, slot);
        let sealed = seg.cipher.seal(&key, plain);
        (key, sealed)
    }

    /// Writes each `(list, items)` group as one new segment `(list, next counter)` and
    /// updates the id map; the records of the segments are built and sealed in parallel.
    fn write_segments(
        &self,
        state: &mut State,
        groups: Vec<(u32, Vec<NewItem>)>,
        b: &mut WriteBatch,
    ) {
        let mut jobs = Vec::with_capacity(groups.len());
        for (list, items) in groups {
            let ls = &mut state.lists[list as usize];
            let counter = ls.next_counter;
            ls.next_counter += 1;
            let mut salt = [0u8; SEGMENT_SALT_LEN];
            OsRng.fill_bytes(&mut salt);
            ls.segments.push(SegmentState {
                counter,
                salt,
                len: slot_u32(items.len()),
                deleted: Vec::new(),
            });
            for (slot, p) in items.iter().enumerate() {
                state.ids.insert(
                    p.id.clone(),
                    Location {
                        list,
                        counter,
                        slot: slot_u32(slot),
                    },
                );
            }
            jobs.push((list, counter, salt, items));
        }
        let generation = state.generation;
        let dim = state.config.dimension;
        let records: Vec<Vec<Record>> = jobs
            .into_par_iter()
            .map(|(list, counter, salt, items)| {
                let seg = self.segment_keys(generation, list, counter, &salt);
                self.segment_records(&seg, dim, items)
            })
            .collect();
        for (key, sealed) in records.into_iter().flatten() {
            b.put(key, sealed);
        }
    }

    /// The sealed records of one new segment: codes, metadata, block, and per slot the
    /// vector and the document.
    fn segment_records(&self, seg: &SegmentKeys, dim: usize, items: Vec<NewItem>) -> Vec<Record> {
        let mut out = Vec::with_capacity(3 + 2 * items.len());
        let quantizer = Sq8::fit(dim, items.iter().map(|p| p.prepared.as_slice()));
        let mut codes = Vec::with_capacity(items.len() * dim);
        for p in &items {
            quantizer.encode(&p.prepared, &mut codes);
        }
        let ids = || items.iter().map(|p| p.id.as_str());
        let plain = Zeroizing::new(encode(&SegmentCodes::new(ids(), quantizer, codes)));
        out.push(self.sealed_record(seg, KIND_CODES, 0, &plain));
        let metadata = items.iter().map(|p| p.metadata.clone()).collect();
        let plain = Zeroizing::new(encode(&SegmentMeta { metadata }));
        out.push(self.sealed_record(seg, KIND_META, 0, &plain));
        let block = SegmentBlock {
            ids: SegmentIds::new(ids()),
            vectors: items
                .iter()
                .flat_map(|p| p.prepared.iter().flat_map(|x| x.to_le_bytes()))
                .collect(),
        };
        let plain = Zeroizing::new(encode(&block));
        out.push(self.sealed_record(seg, KIND_BLOCK, 0, &plain));
        for (slot, p) in items.into_iter().enumerate() {
            let slot = slot_u32(slot);
            let plain = Zeroizing::new(encode_vector(&p.vector));
            out.push(self.sealed_record(seg, KIND_VECTOR, slot, &plain));
            let doc = DocRecord {
                id: p.id,
                contents: p.contents,
                metadata: p.metadata,
            };
            let plain = Zeroizing::new(encode(&doc));
            out.push(self.sealed_record(seg, KIND_DOC, slot, &plain));
        }
        out
    }

    /// Marks `loc` deleted and queues its vector and document records as garbage; drops the
    /// segment (queueing all of it) when nothing in it is live. Nothing is deleted from
    /// storage here: see [`Index::sweep`].
    fn tombstone(state: &mut State, loc: Location) {
        let generation = state.generation;
        let Some(ls) = state.lists.get_mut(loc.list as usize) else {
            return;
        };
        let Some(pos) = ls.segments.iter().position(|s| s.counter == loc.counter) else {
            return;
        };
        let s = &mut ls.segments[pos];
        if let Err(i) = s.deleted.binary_search(&loc.slot) {
            s.deleted.insert(i, loc.slot);
        }
        if s.live() == 0 {
            let s = ls.segments.remove(pos);
            queue_segment_garbage(state, generation, loc.list, &s);
            return;
        }
        let salt = s.salt;
        match state.garbage.last_mut() {
            Some(g)
                if g.generation == generation
                    && g.list == loc.list
                    && g.counter == loc.counter
                    && g.segment_len.is_none() =>
            {
                g.slots.push(loc.slot);
            }
            _ => state.garbage.push(Garbage {
                generation,
                list: loc.list,
                counter: loc.counter,
                salt,
                slots: vec![loc.slot],
                segment_len: None,
            }),
        }
    }

    /// Decrypts the live items of a segment.
    fn read_segment_items(
        &self,
        state: &State,
        list: u32,
        s: &SegmentState,
    ) -> Result<Vec<NewItem>> {
        let seg = self.segment_keys(state.generation, list, s.counter, &s.salt);
        let slots: Vec<u32> = (0..s.len).filter(|slot| !s.is_deleted(*slot)).collect();
        let keys: Vec<Vec<u8>> = slots
            .iter()
            .flat_map(|&slot| {
                [
                    self.record_storage_key(&seg, KIND_VECTOR, slot),
                    self.record_storage_key(&seg, KIND_DOC, slot),
                ]
            })
            .collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let mut values = self.store.get_many(&refs)?.into_iter();
        let mut out = Vec::with_capacity(slots.len());
        for pair in keys.chunks_exact(2) {
            let vector = decode_vector(
                &open_record(&seg, &pair[0], values.next().flatten())?,
                state.config.dimension,
            )?;
            let doc: DocRecord = decode(
                &open_record(&seg, &pair[1], values.next().flatten())?,
                "document",
            )?;
            out.push(NewItem {
                prepared: state.config.metric.prepare(&vector),
                id: doc.id,
                vector,
                contents: doc.contents,
                metadata: doc.metadata,
            });
        }
        Ok(out)
    }

    /// Persists `state` and the batch atomically, if nobody changed the index meanwhile.
    fn commit(&self, loaded: &mut Loaded, state: State, mut b: WriteBatch) -> Result<()> {
        let plain = Zeroizing::new(encode(&state));
        let sealed = self.keys.state_cipher().seal(&state_aad(&self.uid), &plain);
        let digest = value_digest(&sealed);
        let key = state_key(&self.uid);
        b.require(Precondition::Digest(key.clone(), loaded.digest));
        // The version record goes with the state in the same batch. Memory and disk apply a
        // batch atomically; S3 writes unguarded keys before the state's conditional put (its
        // commit point), so a reader may see a version naming a state not yet (or never)
        // committed, which only makes it fetch the state itself: the version record is a
        // hint that can say "unchanged" only for the state it was written with.
        b.put(version_key(&self.uid), digest.to_vec());
        b.put(key, sealed);
        match self.store.apply(b)? {
            Applied::Committed => {
                *loaded = Loaded::new(state, digest);
                Ok(())
            }
            Applied::PreconditionFailed => Err(Error::Conflict(self.name.clone())),
        }
    }

    /// The list of each item: the nearest centroid under the index metric.
    fn assign(state: &State, items: &[NewItem]) -> Vec<u32> {
        match &state.centroids {
            None => vec![0; items.len()],
            Some(c) => {
                let probe = Probe::new(c, state.config.dimension, state.config.metric);
                items
                    .par_chunks(MATCHED_TOGETHER)
                    .map_init(Vec::new, |scratch, items| {
                        let vs: Vec<&[f32]> = items.iter().map(|p| p.prepared.as_slice()).collect();
                        probe
                            .nearest_many(&vs, 1, scratch)
                            .into_iter()
                            .map(|l| l.first().copied().unwrap_or(0))
                            .collect::<Vec<u32>>()
                    })
                    .flatten_iter()
                    .collect()
            }
        }
    }

    fn write_grouped(&self, state: &mut State, items: Vec<NewItem>, b: &mut WriteBatch) {
        let lists = Self::assign(state, &items);
        let mut groups: BTreeMap<u32, Vec<NewItem>> = BTreeMap::new();
        for (p, l) in items.into_iter().zip(lists) {
            groups.entry(l).or_default().push(p);
        }
        self.write_segments(state, groups.into_iter().collect(), b);
    }

    /// Inserts or replaces items. The whole batch is validated first (dimension, finite
    /// values, unique non-empty ids, object metadata) and written atomically; items of one
    /// batch that fall in the same list share one new segment.
    pub fn upsert(&self, items: Vec<Item>) -> Result<()> {
        self.require_write("upsert")?;
        if items.is_empty() {
            return Ok(());
        }
        let mut guard = self.write();
        let config = detect_dimension(&guard.state.config, &items)?;
        let prepared = prepare_items(&config, items)?;
        let mut state = guard.state.clone();
        state.config.dimension = config.dimension;
        let mut b = WriteBatch::new();
        self.sweep_into(&mut state, &mut b);
        for p in &prepared {
            if let Some(loc) = state.ids.get(&p.id).copied() {
                Self::tombstone(&mut state, loc);
            }
        }
        self.write_grouped(&mut state, prepared, &mut b);
        self.commit(&mut guard, state, b)?;

        let max = guard.state.config.max_segments_per_list;
        let crowded: Vec<u32> = (0..guard.state.lists.len())
            .filter(|&l| guard.state.lists[l].segments.len() > max)
            .map(list_u32)
            .collect();
        if !crowded.is_empty() {
            // The upsert is committed; a failed automatic compaction leaves a valid index and
            // is retried after the next upsert, so it is not reported as an upsert failure.
            let _ = self.compact_lists(&mut guard, &crowded);
        }
        Ok(())
    }

    /// Deletes items by id; unknown ids are ignored. Returns how many were deleted.
    pub fn delete<S: AsRef<str>>(&self, ids: &[S]) -> Result<usize> {
        self.require_write("delete")?;
        let mut guard = self.write();
        let mut state = guard.state.clone();
        let mut b = WriteBatch::new();
        // Garbage of earlier batches first; this batch's own garbage waits for a later one.
        self.sweep_into(&mut state, &mut b);
        let mut n = 0;
        for id in ids {
            if let Some(loc) = state.ids.remove(id.as_ref()) {
                Self::tombstone(&mut state, loc);
                n += 1;
            }
        }
        if n > 0 {
            self.commit(&mut guard, state, b)?;
        }
        Ok(n)
    }

    /// Fetches items by id, in request order; unknown ids are skipped. Sees every write
    /// committed before the call began (see [`Index::query`]).
    pub fn get<S: AsRef<str>>(&self, ids: &[S]) -> Result<Vec<Item>> {
        self.read_fresh(|loaded| self.get_in(&loaded.state, ids))
    }

    fn get_in<S: AsRef<str>>(&self, state: &State, ids: &[S]) -> Result<Vec<Item>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(loc) = state.ids.get(id.as_ref()) else {
                continue;
            };
            let salt = state
                .lists
                .get(loc.list as usize)
                .and_then(|l| l.segments.iter().find(|s| s.counter == loc.counter))
                .map(|s| s.salt)
                .ok_or_else(|| Error::Corrupted("the id map names a missing segment".into()))?;
            let seg = self.segment_keys(state.generation, loc.list, loc.counter, &salt);
            let vk = self.record_storage_key(&seg, KIND_VECTOR, loc.slot);
            let dk = self.record_storage_key(&seg, KIND_DOC, loc.slot);
            let mut vals = self.store.get_many(&[&vk, &dk])?.into_iter();
            let vector = decode_vector(
                &open_record(&seg, &vk, vals.next().flatten())?,
                state.config.dimension,
            )?;
            let doc: DocRecord =
                decode(&open_record(&seg, &dk, vals.next().flatten())?, "document")?;
            out.push(Item {
                id: doc.id,
                vector,
                contents: doc.contents,
                metadata: parse_metadata(doc.metadata.as_deref())?,
            });
        }
        Ok(out)
    }

    /// The `top_k` nearest items to `vector`.
    ///
    /// Without a filter and with the segment cache enabled, the probed lists are scanned
    /// exactly from their decrypted vector blocks (cached); otherwise the SQ8 first stage and
    /// the exact re-rank of `rerank_mult · top_k` candidates read the fewest bytes.
    ///
    /// Sees every write committed to storage before the call began, through this or any other
    /// handle: the call first reads the index's 32-byte state version record and reloads the
    /// state if another handle changed it (so a deleted item is never returned, cache or
    /// not). [`Index::query_batch`] does this once per batch, [`Index::get`] per call.
    pub fn query(&self, vector: &[f32], params: &QueryParams) -> Result<Vec<QueryResult>> {
        let config = self.query_config()?;
        let plan = Plan::new(&config, params)?;
        if config.dimension == AUTO {
            check_finite(vector)?;
            return Ok(Vec::new());
        }
        check_vector(&config, vector, None)?;
        if plan.filter.is_none() && self.cache.enabled() {
            let one = std::slice::from_ref(&vector);
            return self
                .read_fresh(|loaded| self.exact_search(loaded, &plan, one))
                .map(|mut r| r.pop().unwrap_or_default());
        }
        self.read_fresh(|loaded| self.search(loaded, &plan, vector, None))
    }

    /// [`Index::query`] for several vectors, run in parallel. All vectors are validated
    /// before any search runs.
    ///
    /// Without a filter the batch is searched list-major: each probed segment is decrypted
    /// (or taken from the segment cache) once for the whole batch and scanned exactly for
    /// every query that probes its list, then each query's best hits are merged. With a
    /// filter, chunks of queries share their opened SQ8 segments.
    pub fn query_batch(
        &self,
        vectors: &[Vec<f32>],
        params: &QueryParams,
    ) -> Result<Vec<Vec<QueryResult>>> {
        let config = self.query_config()?;
        let plan = Plan::new(&config, params)?;
        if config.dimension == AUTO {
            for v in vectors {
                check_finite(v)?;
            }
            return Ok(vec![Vec::new(); vectors.len()]);
        }
        for v in vectors {
            check_vector(&config, v, None)?;
        }
        if plan.filter.is_none() {
            let refs: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
            return self.read_fresh(|loaded| self.exact_search(loaded, &plan, &refs));
        }
        self.read_fresh(|loaded| {
            let mut out = Vec::with_capacity(vectors.len());
            for chunk in vectors.chunks(QUERY_CHUNK) {
                let shared = self.open_for_batch(loaded, &plan, chunk)?;
                out.extend(
                    chunk
                        .par_iter()
                        .map(|v| self.search(loaded, &plan, v, Some(&shared)))
                        .collect::<Result<Vec<_>>>()?,
                );
            }
            Ok(out)
        })
    }

    /// Every live item whose metadata matches `filter` (all items when `None`), with its
    /// metadata, in storage order: a query by metadata alone, without a vector (CyborgDB's
    /// `query_metadata`). Sees every write committed before the call began.
    ///
    /// There is no metadata index: the codes and metadata records of every segment of every
    /// list are read and decrypted, so the store sees a full scan (every token of the index),
    /// and the cost is linear in the index size.
    pub fn query_metadata(&self, filter: Option<&Value>) -> Result<Vec<(String, Option<Value>)>> {
        let filter = filter.map(Filter::parse).transpose()?;
        self.read_fresh(|loaded| {
            let state = &loaded.state;
            let mut out = Vec::new();
            for list in 0..state.lists.len() {
                let segs = self.list_segments(state, list_u32(list));
                for ((s, _), open) in segs.iter().zip(self.open_segments(state, true, &segs)?) {
                    let Some(meta) = &open.meta else {
                        continue;
                    };
                    for slot in 0..s.len {
                        if s.is_deleted(slot) {
                            continue;
                        }
                        let value = parse_metadata(meta.metadata[slot as usize].as_deref())?;
                        if filter.as_ref().is_none_or(|f| f.matches(value.as_ref())) {
                            out.push((open.codes.id(slot as usize)?, value));
                        }
                    }
                }
            }
            Ok(out)
        })
    }

    /// The configuration a query is checked against. While the handle knows no dimension yet
    /// (nothing upserted when it last looked), the state is brought up to date first: another
    /// handle's first upsert may have fixed it.
    fn query_config(&self) -> Result<IndexConfig> {
        if self.read().state.config.dimension == AUTO {
            self.ensure_fresh()?;
        }
        Ok(self.config())
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

    /// The lists `query` probes.
    fn probed_lists(loaded: &Loaded, plan: &Plan, pq: &[f32], scratch: &mut Vec<f32>) -> Vec<u32> {
        Self::probed_lists_many(loaded, plan, &[pq], scratch)
            .pop()
            .unwrap_or_default()
    }

    /// The lists each of `pqs` probes (an untrained index has the one list 0).
    fn probed_lists_many(
        loaded: &Loaded,
        plan: &Plan,
        pqs: &[&[f32]],
        scratch: &mut Vec<f32>,
    ) -> Vec<Vec<u32>> {
        match &loaded.probe {
            None => vec![vec![0]; pqs.len()],
            Some(p) => p.nearest_many(pqs, plan.n_probes, scratch),
        }
    }

    /// Exact list-major search of `queries` (no filter).
    fn exact_search(
        &self,
        loaded: &Loaded,
        plan: &Plan,
        queries: &[&[f32]],
    ) -> Result<Vec<Vec<QueryResult>>> {
        let state = &loaded.state;
        let metric = state.config.metric;
        let pqs: Vec<Vec<f32>> = queries.par_iter().map(|q| metric.prepare(q)).collect();
        let mut by_list: Vec<Vec<u32>> = vec![Vec::new(); state.lists.len()];
        let probes: Vec<Vec<u32>> = pqs
            .par_chunks(MATCHED_TOGETHER)
            .map_init(Vec::new, |scratch, pqs| {
                let vs: Vec<&[f32]> = pqs.iter().map(Vec::as_slice).collect();
                Self::probed_lists_many(loaded, plan, &vs, scratch)
            })
            .flatten_iter()
            .collect();
        for (q, lists) in probes.iter().enumerate() {
            for &l in lists {
                if let Some(v) = by_list.get_mut(l as usize) {
                    v.push(slot_u32(q));
                }
            }
        }
        let work: Vec<(u32, Vec<u32>)> = by_list
            .into_iter()
            .enumerate()
            .filter(|(_, qs)| !qs.is_empty())
            .map(|(l, qs)| (list_u32(l), qs))
            .collect();
        let threshold = Threshold::new(queries.len());
        let scanned: Vec<ListScan<'_>> = work
            .par_iter()
            .map(|(list, qs)| self.scan_list(state, *list, qs, &pqs, plan.top_k, &threshold))
            .collect::<Result<_>>()?;

        // Merge: every query's hits from all its lists, in one table of segments.
        let mut table: Vec<(u32, &SegmentState, Arc<SegmentIds>)> = Vec::new();
        let mut per_query: Vec<Vec<Hit>> = vec![Vec::new(); queries.len()];
        for ((list, _), scan) in work.iter().zip(scanned) {
            let base = slot_u32(table.len());
            table.extend(scan.segments.into_iter().map(|(s, ids)| (*list, s, ids)));
            for (q, h) in scan.hits {
                per_query[q as usize].push(Hit {
                    seg: h.seg + base,
                    ..h
                });
            }
        }
        per_query
            .into_par_iter()
            .map(|hits| {
                let ids = |h: &Hit| table[h.seg as usize].2.id_bytes(h.slot as usize);
                let mut top = Best {
                    k: plan.top_k,
                    hits,
                    worst: f32::INFINITY,
                };
                top.finish(&ids);
                let top = top.hits;
                self.materialize(state, plan, &table, &top)
            })
            .collect()
    }

    /// Scans every segment of `list` for each query of `qs`; keeps each query's `top_k`.
    fn scan_list<'s>(
        &self,
        state: &'s State,
        list: u32,
        qs: &[u32],
        pqs: &[Vec<f32>],
        top_k: usize,
        threshold: &Threshold,
    ) -> Result<ListScan<'s>> {
        let metric = state.config.metric;
        let decoded = self.decoded_segments(state, list)?;
        let queries: Vec<&[f32]> = qs.iter().map(|&q| pqs[q as usize].as_slice()).collect();
        let ids = |h: &Hit| decoded[h.seg as usize].1.ids.id_bytes(h.slot as usize);
        let mut hits = Vec::with_capacity(qs.len() * top_k);
        let mut bests: Vec<Best> = (0..qs.len().min(SCORED_TOGETHER))
            .map(|_| Best::new(top_k))
            .collect();
        // A group's ranks against a run of tiles (plaintext-derived: wiped when done).
        let mut scores = Zeroizing::new(Vec::new());
        for (group, gqs) in queries
            .chunks(SCORED_TOGETHER)
            .zip(qs.chunks(SCORED_TOGETHER))
        {
            let bests = &mut bests[..gqs.len()];
            for (best, &q) in bests.iter_mut().zip(gqs) {
                best.reset(threshold.get(q));
            }
            for (si, (s, d)) in decoded.iter().enumerate() {
                let deleted = |slot| !s.deleted.is_empty() && s.is_deleted(slot);
                for start in (0..d.block.tiles()).step_by(TILES_SCORED_TOGETHER) {
                    let tiles = start..(start + TILES_SCORED_TOGETHER).min(d.block.tiles());
                    let width = tiles.len() * TILE;
                    let first = start * TILE;
                    let live = d.block.len().saturating_sub(first).min(width);
                    d.block.rank_tiles(metric, group, tiles, &mut scores);
                    for (row, best) in scores.chunks_exact(width).zip(bests.iter_mut()) {
                        best.offer_row(&row[..live], slot_u32(si), first, deleted, &ids);
                    }
                }
            }
            for (best, &q) in bests.iter_mut().zip(gqs) {
                best.finish(&ids);
                if let Some(kth) = best.kth() {
                    threshold.lower(q, kth);
                }
                hits.extend(best.hits.drain(..).map(|h| (q, h)));
            }
        }
        Ok(ListScan {
            segments: decoded
                .iter()
                .map(|(s, d)| (*s, Arc::clone(&d.ids)))
                .collect(),
            hits,
        })
    }

    /// The decrypted segments of `list`, from the cache or opened (one block record each)
    /// and cached.
    fn decoded_segments<'s>(
        &self,
        state: &'s State,
        list: u32,
    ) -> Result<Vec<(&'s SegmentState, Arc<Decoded>)>> {
        let segs = &state.lists[list as usize].segments;
        let id = |s: &SegmentState| -> SegmentId { (state.generation, list, s.counter, s.salt) };
        let mut out: Vec<Option<Arc<Decoded>>> =
            segs.iter().map(|s| self.cache.get(&id(s))).collect();
        let missing: Vec<usize> = (0..segs.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            let seed = self.keys.cluster_seed(state.generation, list);
            let keys: Vec<SegmentKeys> = missing
                .iter()
                .map(|&i| seed.segment(segs[i].counter, &segs[i].salt))
                .collect();
            let rkeys: Vec<Vec<u8>> = keys
                .iter()
                .map(|k| self.record_storage_key(k, KIND_BLOCK, 0))
                .collect();
            let refs: Vec<&[u8]> = rkeys.iter().map(Vec::as_slice).collect();
            let values = self.store.get_many(&refs)?;
            for (((&i, seg), rk), v) in missing.iter().zip(&keys).zip(&rkeys).zip(values) {
                let s = &segs[i];
                let d = Arc::new(match v {
                    Some(v) => Self::decode_block(state, s, &open_record(seg, rk, Some(v))?)?,
                    // Segments written before block records existed.
                    None => self.decode_from_slots(state, s, seg)?,
                });
                self.cache.insert(id(s), Arc::clone(&d));
                out[i] = Some(d);
            }
        }
        Ok(segs
            .iter()
            .zip(out)
            .filter_map(|(s, d)| d.map(|d| (s, d)))
            .collect())
    }

    fn decode_block(state: &State, s: &SegmentState, plain: &[u8]) -> Result<Decoded> {
        let dim = state.config.dimension;
        let len = s.len as usize;
        let mut block: SegmentBlock = decode(plain, "segment block")?;
        block.ids.validate(len)?;
        if block.vectors.len() != len * dim * 4 {
            return Err(Error::Corrupted(
                "segment block does not match the index state".into(),
            ));
        }
        let ids = std::mem::take(&mut block.ids);
        Ok(Decoded {
            ids: Arc::new(ids),
            block: Block::from_le_bytes(dim, len, &block.vectors),
        })
    }

    /// A segment without a block record: ids from its codes record, vectors from its slots.
    fn decode_from_slots(
        &self,
        state: &State,
        s: &SegmentState,
        seg: &SegmentKeys,
    ) -> Result<Decoded> {
        let dim = state.config.dimension;
        let len = s.len as usize;
        let ck = self.record_storage_key(seg, KIND_CODES, 0);
        let mut keys = vec![ck];
        keys.extend((0..s.len).map(|slot| self.record_storage_key(seg, KIND_VECTOR, slot)));
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let mut values = self.store.get_many(&refs)?.into_iter();
        let mut codes: SegmentCodes = decode(
            &open_record(seg, &keys[0], values.next().flatten())?,
            "segment codes",
        )?;
        codes.validate(len, dim)?;
        let mut rows = Vec::with_capacity(len);
        for (k, v) in keys[1..].iter().zip(values) {
            let v = Zeroizing::new(decode_vector(&open_record(seg, k, v)?, dim)?);
            rows.push(Zeroizing::new(state.config.metric.prepare(&v)));
        }
        Ok(Decoded {
            ids: Arc::new(std::mem::take(&mut codes.ids)),
            block: Block::from_rows(dim, len, rows.iter().map(|r| r.as_slice())),
        })
    }

    /// Turns a query's final hits into results, reading the vector and document records
    /// only when `include` asks for them.
    fn materialize(
        &self,
        state: &State,
        plan: &Plan,
        table: &[(u32, &SegmentState, Arc<SegmentIds>)],
        hits: &[Hit],
    ) -> Result<Vec<QueryResult>> {
        let metric = state.config.metric;
        let dim = state.config.dimension;
        let want_vec = plan.include.vector;
        let want_doc = plan.include.any_doc();
        let mut records: Vec<(Option<Vec<f32>>, Option<DocRecord>)> = Vec::new();
        if want_vec || want_doc {
            let segs: Vec<SegmentKeys> = hits
                .iter()
                .map(|h| {
                    let (list, s, _) = &table[h.seg as usize];
                    self.segment_keys(state.generation, *list, s.counter, &s.salt)
                })
                .collect();
            let mut keys = Vec::new();
            for (h, seg) in hits.iter().zip(&segs) {
                if want_vec {
                    keys.push(self.record_storage_key(seg, KIND_VECTOR, h.slot));
                }
                if want_doc {
                    keys.push(self.record_storage_key(seg, KIND_DOC, h.slot));
                }
            }
            let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            let mut values = self.store.get_many(&refs)?.into_iter();
            let mut key_iter = keys.iter();
            for seg in &segs {
                let vector = if want_vec {
                    let k = key_iter.next().map_or(&[][..], Vec::as_slice);
                    Some(decode_vector(
                        &open_record(seg, k, values.next().flatten())?,
                        dim,
                    )?)
                } else {
                    None
                };
                let doc = if want_doc {
                    let k = key_iter.next().map_or(&[][..], Vec::as_slice);
                    Some(decode(
                        &open_record(seg, k, values.next().flatten())?,
                        "document",
                    )?)
                } else {
                    None
                };
                records.push((vector, doc));
            }
        } else {
            records.resize_with(hits.len(), || (None, None));
        }
        hits.iter()
            .zip(records)
            .map(|(h, (vector, doc))| {
                let (contents, metadata) = requested_fields(doc, plan.include)?;
                Ok(QueryResult {
                    id: table[h.seg as usize].2.id(h.slot as usize)?,
                    distance: metric.finish(h.rank),
                    vector,
                    contents,
                    metadata,
                })
            })
            .collect()
    }

    /// Opens, once, every segment of every list probed by some query of `queries`, so a
    /// batch decrypts each probed segment once instead of once per query (the store sees
    /// each of the batch's tokens read once).
    fn open_for_batch(
        &self,
        loaded: &Loaded,
        plan: &Plan,
        queries: &[Vec<f32>],
    ) -> Result<SharedSegments> {
        let state = &loaded.state;
        let mut lists: Vec<u32> = queries
            .par_iter()
            .flat_map_iter(|q| {
                let pq = state.config.metric.prepare(q);
                Self::probed_lists(loaded, plan, &pq, &mut Vec::new())
            })
            .collect();
        lists.sort_unstable();
        lists.dedup();
        let opened: Vec<Vec<((u32, u64), OpenSegment)>> = lists
            .par_iter()
            .map(|&list| {
                let segs = self.list_segments(state, list);
                let open = self.open_segments(state, plan.filter.is_some(), &segs)?;
                Ok(segs
                    .iter()
                    .zip(open)
                    .map(|((s, _), o)| ((list, s.counter), o))
                    .collect())
            })
            .collect::<Result<_>>()?;
        Ok(opened.into_iter().flatten().collect())
    }

    /// Tokens of the segments of one probed list (docs/PROTOCOL.md §13: minimal key generation).
    fn list_segments<'s>(
        &self,
        state: &'s State,
        list: u32,
    ) -> Vec<(&'s SegmentState, SegmentKeys)> {
        let seed = self.keys.cluster_seed(state.generation, list);
        state.lists[list as usize]
            .segments
            .iter()
            .map(|s| (s, seed.segment(s.counter, &s.salt)))
            .collect()
    }

    /// Reads and decrypts the first-stage records of `segs`.
    fn open_segments(
        &self,
        state: &State,
        with_meta: bool,
        segs: &[(&SegmentState, SegmentKeys)],
    ) -> Result<Vec<OpenSegment>> {
        let dim = state.config.dimension;
        let mut keys = Vec::with_capacity(segs.len() * 2);
        for (_, seg) in segs {
            keys.push(self.record_storage_key(seg, KIND_CODES, 0));
            if with_meta {
                keys.push(self.record_storage_key(seg, KIND_META, 0));
            }
        }
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let mut values = self.store.get_many(&refs)?.into_iter();
        let mut key_iter = keys.iter();
        let mut out = Vec::with_capacity(segs.len());
        for (s, seg) in segs {
            let ck = key_iter.next().map_or(&[][..], Vec::as_slice);
            let codes: SegmentCodes = decode(
                &open_record(seg, ck, values.next().flatten())?,
                "segment codes",
            )?;
            let len = s.len as usize;
            codes.validate(len, dim)?;
            let meta = if with_meta {
                let mk = key_iter.next().map_or(&[][..], Vec::as_slice);
                let m: SegmentMeta = decode(
                    &open_record(seg, mk, values.next().flatten())?,
                    "segment metadata",
                )?;
                if m.metadata.len() != len {
                    return Err(Error::Corrupted("segment metadata does not match".into()));
                }
                Some(m)
            } else {
                None
            };
            out.push(OpenSegment { codes, meta });
        }
        Ok(out)
    }

    /// Stage 1: score the probed segments' SQ8 codes (metadata filter applied), keep the
    /// best `rerank_mult · top_k` candidates.
    fn first_stage(
        state: &State,
        plan: &Plan,
        pq: &[f32],
        segs: &[(&SegmentState, SegmentKeys)],
        opened: &[&OpenSegment],
    ) -> Result<Vec<Candidate>> {
        let metric = state.config.metric;
        let dim = state.config.dimension;
        let mut cands: Vec<Candidate> = Vec::new();
        for (i, ((s, _), open)) in segs.iter().zip(opened).enumerate() {
            let block = &open.codes;
            let meta = &open.meta;
            let scorer = block.quantizer.scorer(metric, pq);
            for slot in 0..s.len {
                if s.is_deleted(slot) {
                    continue;
                }
                if let (Some(f), Some(m)) = (&plan.filter, &meta) {
                    let value = parse_metadata(m.metadata[slot as usize].as_deref())?;
                    if !f.matches(value.as_ref()) {
                        continue;
                    }
                }
                let code = &block.codes[slot as usize * dim..(slot as usize + 1) * dim];
                cands.push(Candidate {
                    rank: sane_rank(scorer.rank(code)),
                    segment: i,
                    slot,
                });
            }
        }
        if cands.len() > plan.rerank {
            cands.select_nth_unstable_by(plan.rerank, |a, b| {
                a.rank
                    .total_cmp(&b.rank)
                    .then(a.segment.cmp(&b.segment))
                    .then(a.slot.cmp(&b.slot))
            });
            cands.truncate(plan.rerank);
        }
        Ok(cands)
    }

    fn search(
        &self,
        loaded: &Loaded,
        plan: &Plan,
        query: &[f32],
        shared: Option<&SharedSegments>,
    ) -> Result<Vec<QueryResult>> {
        let state = &loaded.state;
        let metric = state.config.metric;
        let dim = state.config.dimension;
        let pq = metric.prepare(query);
        let lists = Self::probed_lists(loaded, plan, &pq, &mut Vec::new());

        // Tokens for the probed lists only (docs/PROTOCOL.md §13: minimal key generation).
        let mut segs: Vec<(&SegmentState, SegmentKeys)> = Vec::new();
        let mut seg_lists = Vec::new();
        for list in lists {
            let l = self.list_segments(state, list);
            seg_lists.extend(std::iter::repeat_n(list, l.len()));
            segs.extend(l);
        }
        let own;
        let opened: Vec<&OpenSegment> = if let Some(shared) = shared {
            segs.iter()
                .zip(&seg_lists)
                .map(|((s, _), list)| {
                    shared.get(&(*list, s.counter)).ok_or_else(|| {
                        Error::Corrupted("a probed segment was not opened for the batch".into())
                    })
                })
                .collect::<Result<_>>()?
        } else {
            own = self.open_segments(state, plan.filter.is_some(), &segs)?;
            own.iter().collect()
        };
        let cands = Self::first_stage(state, plan, &pq, &segs, &opened)?;
        let blocks: Vec<&SegmentCodes> = opened.iter().map(|o| &o.codes).collect();

        // Stage 2: decrypt only the candidates' exact vectors and re-rank.
        let vkeys: Vec<Vec<u8>> = cands
            .iter()
            .map(|c| self.record_storage_key(&segs[c.segment].1, KIND_VECTOR, c.slot))
            .collect();
        let refs: Vec<&[u8]> = vkeys.iter().map(Vec::as_slice).collect();
        let vals = self.store.get_many(&refs)?;
        let mut exact: Vec<(f32, &Candidate, Vec<f32>)> = Vec::with_capacity(cands.len());
        for ((c, k), v) in cands.iter().zip(&vkeys).zip(vals) {
            let vector = decode_vector(&open_record(&segs[c.segment].1, k, v)?, dim)?;
            let rank = exact_rank(metric, &pq, &metric.prepare(&vector));
            exact.push((rank, c, vector));
        }
        exact.sort_by(|a, b| {
            a.0.total_cmp(&b.0).then_with(|| {
                blocks[a.1.segment]
                    .id_bytes(a.1.slot as usize)
                    .cmp(blocks[b.1.segment].id_bytes(b.1.slot as usize))
            })
        });
        exact.truncate(plan.top_k);

        let docs = if plan.include.any_doc() {
            let dkeys: Vec<Vec<u8>> = exact
                .iter()
                .map(|(_, c, _)| self.record_storage_key(&segs[c.segment].1, KIND_DOC, c.slot))
                .collect();
            let refs: Vec<&[u8]> = dkeys.iter().map(Vec::as_slice).collect();
            let vals = self.store.get_many(&refs)?;
            let mut docs = Vec::with_capacity(dkeys.len());
            for (((_, c, _), k), v) in exact.iter().zip(&dkeys).zip(vals) {
                let doc: DocRecord = decode(&open_record(&segs[c.segment].1, k, v)?, "document")?;
                docs.push(Some(doc));
            }
            docs
        } else {
            exact.iter().map(|_| None).collect()
        };

        exact
            .into_iter()
            .zip(docs)
            .map(|((rank, c, vector), doc)| {
                let (contents, metadata) = requested_fields(doc, plan.include)?;
                Ok(QueryResult {
                    id: blocks[c.segment].id(c.slot as usize)?,
                    distance: metric.finish(rank),
                    vector: plan.include.vector.then_some(vector),
                    contents,
                    metadata,
                })
            })
            .collect()
    }

    /// Builds the IVF lists: k-means (k-means++ seeding) on a sample of the stored vectors,
    /// then every live item is re-encrypted into new segments under a new key generation.
    /// Can be called again to retrain.
    pub fn train(&self, params: &TrainParams) -> Result<()> {
        self.require_write("train")?;
        let mut guard = self.write();
        let old = &guard.state;
        let dim = old.config.dimension;
        let live = old.ids.len();
        let n_lists = match params.n_lists.unwrap_or(old.config.n_lists) {
            AUTO => auto_n_lists(live, dim),
            n => n,
        };
        if n_lists == 0 || n_lists > MAX_LISTS {
            return Err(Error::InvalidArgument(format!(
                "n_lists must be 1..={MAX_LISTS}, got {n_lists}"
            )));
        }
        check_centroids(n_lists, dim).map_err(Error::InvalidArgument)?;
        if params.max_iters > MAX_TRAIN_ITERS {
            return Err(Error::InvalidArgument(format!(
                "max_iters must be at most {MAX_TRAIN_ITERS}, got {}",
                params.max_iters
            )));
        }
        if live < n_lists {
            return Err(Error::NotEnoughVectors {
                have: live,
                need: n_lists,
            });
        }
        let sample_n = params.sample_size.unwrap_or(256 * n_lists).min(live);
        if sample_n < n_lists {
            return Err(Error::InvalidArgument(format!(
                "sample_size {sample_n} is smaller than n_lists {n_lists}"
            )));
        }
        let generation = old
            .generation
            .checked_add(1)
            .ok_or_else(|| Error::InvalidArgument("index retrained too many times".into()))?;

        let mut items = Vec::with_capacity(live);
        for (list, ls) in old.lists.iter().enumerate() {
            for s in &ls.segments {
                items.extend(self.read_segment_items(old, list_u32(list), s)?);
            }
        }
        if items.len() != live {
            return Err(Error::Corrupted(format!(
                "the id map lists {live} items but the segments hold {}",
                items.len()
            )));
        }
        let mut rng = StdRng::seed_from_u64(params.seed);
        let picked = rand::seq::index::sample(&mut rng, items.len(), sample_n);
        let data: Vec<f32> = picked
            .iter()
            .flat_map(|i| items[i].prepared.iter().copied())
            .collect();
        let centroids = kmeans::train(&data, dim, n_lists, params.max_iters, params.seed);

        // Garbage of earlier batches is swept now; every old segment becomes garbage for a
        // later batch.
        let mut b = WriteBatch::new();
        self.delete_garbage(&old.garbage, &mut b);
        let mut state = State {
            config: IndexConfig {
                n_lists,
                ..old.config.clone()
            },
            generation,
            centroids: Some(centroids),
            lists: vec![ListState::default(); n_lists],
            ids: HashMap::with_capacity(live),
            garbage: Vec::new(),
        };
        for (list, ls) in old.lists.iter().enumerate() {
            for s in &ls.segments {
                queue_segment_garbage(&mut state, old.generation, list_u32(list), s);
            }
        }
        self.write_grouped(&mut state, items, &mut b);
        self.commit(&mut guard, state, b)
    }

    /// Merges each list's segments (dropping deleted slots) into one new segment under a new
    /// counter. Query results are unchanged. The old segments are queued as garbage and
    /// removed by a later write (or [`Index::sweep`]), never by the compaction batch itself.
    pub fn compact(&self) -> Result<CompactionStats> {
        self.require_write("compact")?;
        let mut guard = self.write();
        let lists: Vec<u32> = (0..guard.state.lists.len())
            .filter(|&l| {
                let segs = &guard.state.lists[l].segments;
                segs.len() > 1 || segs.iter().any(|s| !s.deleted.is_empty())
            })
            .map(list_u32)
            .collect();
        self.compact_lists(&mut guard, &lists)
    }

    fn compact_lists(&self, loaded: &mut Loaded, lists: &[u32]) -> Result<CompactionStats> {
        let mut stats = CompactionStats::default();
        if lists.is_empty() {
            return Ok(stats);
        }
        let mut state = loaded.state.clone();
        let mut b = WriteBatch::new();
        let mut groups = Vec::new();
        for &list in lists {
            let segs = std::mem::take(&mut state.lists[list as usize].segments);
            let mut items = Vec::new();
            for s in &segs {
                items.extend(self.read_segment_items(&loaded.state, list, s)?);
                let generation = state.generation;
                queue_segment_garbage(&mut state, generation, list, s);
                stats.tombstones_dropped += s.deleted.len();
            }
            stats.segments_before += segs.len();
            stats.lists_compacted += 1;
            if !items.is_empty() {
                groups.push((list, items));
                stats.segments_after += 1;
            }
        }
        self.write_segments(&mut state, groups, &mut b);
        self.commit(loaded, state, b)?;
        Ok(stats)
    }

    /// Mints a per-user key with `scope`. Needs a handle opened with the index key.
    ///
    /// ```
    /// use tkms_engine::{Client, IndexConfig, IndexKey, Item, Scope, StorageConfig};
    /// let client = Client::new(StorageConfig::memory())?;
    /// let key = IndexKey::generate();
    /// let admin = client.create_index("shared", &key, IndexConfig::new(2))?;
    /// let reader = admin.mint_user_key(Scope::ReadOnly)?;
    /// let as_reader = client.load_index_with_user_key("shared", &reader)?;
    /// assert!(as_reader.upsert(vec![Item::new("x", vec![1.0, 2.0])]).is_err());
    /// # Ok::<(), tkms_engine::Error>(())
    /// ```
    pub fn mint_user_key(&self, scope: Scope) -> Result<UserKey> {
        let kek = self.require_admin("mint_user_key")?;
        let mut key_id = [0u8; USER_KEY_ID_LEN];
        OsRng.fill_bytes(&mut key_id);
        let uk = UserKey::mint(kek, key_id, scope);
        let record = UserRecord {
            scope: scope.to_byte(),
            wrapped_dek: uk.wrap_cipher().seal(
                &user_wrap_aad(&self.uid, &key_id, scope),
                self.dek.as_bytes(),
            ),
        };
        let mut b = WriteBatch::new();
        b.require(Precondition::Digest(
            state_key(&self.uid),
            self.read().digest,
        ));
        b.put(user_key(&self.uid, &key_id), encode(&record));
        match self.store.apply(b)? {
            Applied::Committed => Ok(uk),
            Applied::PreconditionFailed => Err(Error::Conflict(self.name.clone())),
        }
    }

    /// The user keys minted for this index and not revoked: `(key id, scope)`, sorted by key
    /// id. Needs the index key.
    pub fn list_user_keys(&self) -> Result<Vec<([u8; USER_KEY_ID_LEN], Scope)>> {
        self.require_admin("list_user_keys")?;
        let prefix = user_key(&self.uid, &[]);
        let mut out = Vec::new();
        for (k, v) in self.store.scan_prefix(&prefix)? {
            let id: [u8; USER_KEY_ID_LEN] = k[prefix.len()..]
                .try_into()
                .map_err(|_| Error::Corrupted("a user key record has a malformed name".into()))?;
            let record: UserRecord = decode(&v, "user key record")?;
            let scope = Scope::from_byte(record.scope)
                .ok_or_else(|| Error::Corrupted("a user key record has an unknown scope".into()))?;
            out.push((id, scope));
        }
        out.sort_unstable_by_key(|a| a.0);
        Ok(out)
    }

    /// Revokes a user key by id; returns whether it existed. Needs the index key.
    pub fn revoke_user_key(&self, key_id: &[u8; USER_KEY_ID_LEN]) -> Result<bool> {
        self.require_admin("revoke_user_key")?;
        let k = user_key(&self.uid, key_id);
        let existed = self.store.get(&k)?.is_some();
        let mut b = WriteBatch::new();
        b.delete(k);
        self.store.apply(b)?;
        Ok(existed)
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

/// Queues every record of segment `s` of `list` (under `generation`) as garbage.
fn queue_segment_garbage(state: &mut State, generation: u32, list: u32, s: &SegmentState) {
    state.garbage.push(Garbage {
        generation,
        list,
        counter: s.counter,
        salt: s.salt,
        slots: Vec::new(),
        segment_len: Some(s.len),
    });
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

/// The contents and metadata of a fetched document that the query asked for.
fn requested_fields(
    doc: Option<DocRecord>,
    include: crate::types::Include,
) -> Result<(Option<Vec<u8>>, Option<Value>)> {
    let Some(d) = doc else {
        return Ok((None, None));
    };
    let metadata = if include.metadata {
        parse_metadata(d.metadata.as_deref())?
    } else {
        None
    };
    Ok((d.contents.filter(|_| include.contents), metadata))
}

fn parse_metadata(json: Option<&str>) -> Result<Option<Value>> {
    json.map(|s| {
        serde_json::from_str(s).map_err(|e| Error::Corrupted(format!("stored metadata: {e}")))
    })
    .transpose()
}

fn load_state(store: &dyn Store, uid: &[u8; UID_LEN], keys: &IndexKeys) -> Result<Loaded> {
    let sealed = store
        .get(&state_key(uid))?
        .ok_or_else(|| Error::Corrupted("the index state record is missing".into()))?;
    open_state(uid, keys, &sealed, value_digest(&sealed))
}

/// Decrypts and checks a stored state ciphertext whose [`value_digest`] is `digest`.
fn open_state(
    uid: &[u8; UID_LEN],
    keys: &IndexKeys,
    sealed: &[u8],
    digest: [u8; 32],
) -> Result<Loaded> {
    let plain = keys
        .state_cipher()
        .open(&state_aad(uid), sealed)
        .map_err(|_| Error::Corrupted("the index state failed authentication".into()))?;
    let state: State = decode(&plain, "index state")?;
    let lists_ok = match &state.centroids {
        None => state.lists.len() == 1,
        Some(c) => {
            state.lists.len() == state.config.n_lists
                && c.len() == state.config.n_lists * state.config.dimension
        }
    };
    if !lists_ok {
        return Err(Error::Corrupted("index state is inconsistent".into()));
    }
    Ok(Loaded::new(state, digest))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn nan_ranks_sort_last() {
        let mut ranks = [sane_rank(f32::NAN), 1.0, sane_rank(-f32::NAN), -3.0];
        ranks.sort_by(f32::total_cmp);
        assert_eq!(ranks[..2], [-3.0, 1.0]);
        assert!(ranks[2..].iter().all(|r| *r == f32::INFINITY));
    }

    #[test]
    fn vector_checks_name_positions_not_ids() {
        let cfg = IndexConfig::new(2);
        assert!(check_vector(&cfg, &[1e15, -1e15], Some(0)).is_ok());
        let err = check_vector(&cfg, &[0.0, 2e15], Some(4)).unwrap_err();
        assert!(err.to_string().contains("batch position 4"), "{err}");
        let err = check_vector(&cfg, &[0.0, -2e15], None).unwrap_err();
        assert!(err.to_string().contains("query vector"), "{err}");
    }

    /// Ranks drawn from a few values (many ties), signed zeros, infinities and ordinary
    /// floats.
    fn rank() -> impl Strategy<Value = f32> {
        prop_oneof![
            (0u8..4).prop_map(f32::from),
            Just(0.0f32),
            Just(-0.0f32),
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
            -1e6f32..1e6,
        ]
    }

    #[test]
    fn threshold_keys_order_the_edge_values() {
        let edges = [
            -f32::NAN,
            f32::NEG_INFINITY,
            -f32::MAX,
            -f32::MIN_POSITIVE,
            -0.0,
            0.0,
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::INFINITY,
            f32::NAN,
        ];
        for w in edges.windows(2) {
            assert!(
                Threshold::key(w[0]) < Threshold::key(w[1]),
                "{} {}",
                w[0],
                w[1]
            );
        }
        let t = Threshold::new(2);
        t.lower(1, -0.0);
        t.lower(1, 0.0);
        assert_eq!(t.get(1).to_bits(), (-0.0f32).to_bits());
        assert!(t.get(0).is_infinite() && t.get(0) > 0.0);
        assert!(t.get(9).is_infinite() && t.get(9) > 0.0);
    }

    proptest! {
        #[test]
        fn threshold_keys_order_like_total_cmp(a in any::<f32>(), b in any::<f32>()) {
            prop_assert_eq!(Threshold::key(a).cmp(&Threshold::key(b)), a.total_cmp(&b));
            prop_assert_eq!(Threshold::rank(Threshold::key(a)).to_bits(), a.to_bits());
        }

        /// Offered in rows with any starting threshold that does not exclude the true
        /// `k`-th best (as the shared [`Threshold`] never does), `Best` keeps exactly the
        /// sorted top `k` by (rank, id), ties included.
        #[test]
        fn best_is_the_sorted_top_k(
            rows in prop::collection::vec(prop::collection::vec(rank(), 0..60), 1..4),
            k in 0usize..12,
            slack in 0usize..3,
            piece in 1usize..70,
        ) {
            // Unique ids (as live items' are), ordered unlike (segment, slot).
            let ids: Vec<Vec<Vec<u8>>> = rows
                .iter()
                .enumerate()
                .map(|(s, r)| (0..r.len()).map(|j| format!("{:03}-{s}-{j}", (j * 7 + s * 13) % 101).into_bytes()).collect())
                .collect();
            let id = |h: &Hit| ids[h.seg as usize][h.slot as usize].as_slice();
            let mut all: Vec<Hit> = rows
                .iter()
                .enumerate()
                .flat_map(|(s, r)| r.iter().enumerate().map(move |(j, &rank)| Hit {
                    rank, seg: slot_u32(s), slot: slot_u32(j),
                }))
                .filter(|h| h.slot % 5 != 3) // "deleted"
                .collect();
            all.sort_by(|a, b| hit_cmp(a, b, &id));
            all.truncate(k);
            // A starting bound no tighter than the k-th best (or the loosest, with fewer).
            let start = if all.len() == k && k > 0 {
                let mut looser: Vec<f32> = rows.iter().flatten().copied().filter(|r| r.total_cmp(&all[k - 1].rank).is_ge()).collect();
                looser.sort_by(f32::total_cmp);
                looser.get(slack).copied().unwrap_or(f32::INFINITY)
            } else {
                f32::INFINITY
            };
            let mut best = Best::new(k);
            best.reset(start);
            // Each row offered in runs of `piece` slots, as a segment is in runs of tiles.
            for (s, r) in rows.iter().enumerate() {
                for (p, run) in r.chunks(piece).enumerate() {
                    best.offer_row(run, slot_u32(s), p * piece, |slot| slot % 5 == 3, &id);
                }
            }
            best.finish(&id);
            let got: Vec<(u32, u32)> = best.hits.iter().map(|h| (h.seg, h.slot)).collect();
            let want: Vec<(u32, u32)> = all.iter().map(|h| (h.seg, h.slot)).collect();
            prop_assert_eq!(got, want);
        }
    }
}
