//! Public request and response types of the index API (items, configuration, query
//! parameters), modelled on CyborgDB's `{id, vector, contents, metadata}` items and
//! `{top_k, n_probes, filters, include}` queries (docs/ARCHITECTURE.md §4.4).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::metric::Metric;

/// Longest accepted item id, in bytes.
pub const MAX_ID_LEN: usize = 1024;
/// Largest accepted dimension.
pub const MAX_DIMENSION: usize = 65_536;
/// Largest accepted number of IVF lists.
pub const MAX_LISTS: usize = 65_536;
/// Largest accepted `top_k`.
pub const MAX_TOP_K: usize = 10_000;
/// Largest accepted `top_k · rerank_mult` (exact vectors decrypted per query).
pub const MAX_RERANK: usize = 100_000;
/// Largest accepted `n_lists · dimension` (centroid floats held in the index state).
pub const MAX_CENTROID_FLOATS: usize = 1 << 24;
/// Largest accepted item contents, in bytes.
pub const MAX_CONTENTS_LEN: usize = 16 << 20;
/// Largest accepted item metadata, serialized as JSON, in bytes.
pub const MAX_METADATA_LEN: usize = 64 << 10;
/// Largest accepted number of k-means iterations.
pub const MAX_TRAIN_ITERS: usize = 1_000;
/// Largest accepted magnitude of a vector component: keeps every distance finite in `f32`
/// (`(2 · 1e15)² · MAX_DIMENSION` is far below `f32::MAX`).
pub const MAX_ABS_COMPONENT: f32 = 1e15;
/// The value of [`IndexConfig::dimension`] and [`IndexConfig::n_lists`] that leaves them to be
/// decided later (dimension: at the first upsert; lists: at training).
pub const AUTO: usize = 0;
/// Fewest items per list [`auto_n_lists`] aims for, so k-means has points to fit each centroid
/// (FAISS warns below 39 training points per centroid).
pub const MIN_ITEMS_PER_AUTO_LIST: usize = 39;

/// The number of IVF lists training picks for `items` vectors of `dimension` when none is
/// given: about `√items` (so the default 16 probes scan a few percent of a large index),
/// with at least [`MIN_ITEMS_PER_AUTO_LIST`] items per list, at least 1, and within
/// [`MAX_LISTS`] and [`MAX_CENTROID_FLOATS`].
///
/// ```
/// use tkms_engine::auto_n_lists;
/// assert_eq!(auto_n_lists(0, 8), 1);
/// assert_eq!(auto_n_lists(200, 8), 5);          // 200 / 39
/// assert_eq!(auto_n_lists(10_000, 8), 100);     // √10,000
/// assert_eq!(auto_n_lists(1_000_000, 8), 1000);
/// ```
pub fn auto_n_lists(items: usize, dimension: usize) -> usize {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let root = (items as f64).sqrt().round() as usize;
    let by_floats = MAX_CENTROID_FLOATS / dimension.max(1);
    root.min(items / MIN_ITEMS_PER_AUTO_LIST)
        .min(MAX_LISTS)
        .min(by_floats)
        .max(1)
}

/// `n_lists · dimension` within [`MAX_CENTROID_FLOATS`] (either may still be [`AUTO`]).
pub(crate) fn check_centroids(n_lists: usize, dimension: usize) -> std::result::Result<(), String> {
    if n_lists.saturating_mul(dimension) > MAX_CENTROID_FLOATS {
        return Err(format!(
            "n_lists · dimension must be at most {MAX_CENTROID_FLOATS}, got {n_lists} · {dimension}"
        ));
    }
    Ok(())
}

/// How an index is built. Construct with [`IndexConfig::new`] and the `with_*` methods.
///
/// Two values are decided later rather than at creation (CyborgDB's behaviour):
/// `dimension` [`AUTO`] (0) is taken from the first upsert, and `n_lists` [`AUTO`] is chosen by
/// [`Index::train`](crate::Index::train) from the number of items ([`auto_n_lists`]).
///
/// ```
/// use tkms_engine::{IndexConfig, Metric};
/// let cfg = IndexConfig::new(384).with_metric(Metric::Cosine).with_n_lists(256);
/// assert_eq!(cfg.n_lists, 256);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct IndexConfig {
    /// Vector dimension; [`AUTO`] (0): taken from the first upsert.
    pub dimension: usize,
    /// Distance metric.
    pub metric: Metric,
    /// Number of IVF lists (k-means clusters) [`Index::train`](crate::Index::train) creates
    /// unless told otherwise ([`TrainParams::n_lists`]); [`AUTO`] (0): chosen from the number
    /// of items at training ([`auto_n_lists`]). After training, the number of lists built.
    pub n_lists: usize,
    /// Default number of lists a query probes (overridable per query).
    pub n_probes: usize,
    /// The first stage keeps `rerank_mult · top_k` candidates whose exact vectors are then
    /// decrypted for re-ranking.
    pub rerank_mult: usize,
    /// A list with more segments than this is compacted automatically after an upsert.
    pub max_segments_per_list: usize,
}

impl IndexConfig {
    /// Defaults: Euclidean, 128 lists, 16 probes, `rerank_mult` 8, at most 32 segments per list.
    pub fn new(dimension: usize) -> Self {
        Self {
            dimension,
            metric: Metric::Euclidean,
            n_lists: 128,
            n_probes: 16,
            rerank_mult: 8,
            max_segments_per_list: 32,
        }
    }

    /// Sets the metric.
    #[must_use]
    pub fn with_metric(mut self, metric: Metric) -> Self {
        self.metric = metric;
        self
    }

    /// Sets the number of IVF lists ([`AUTO`]: chosen at training from the item count).
    #[must_use]
    pub fn with_n_lists(mut self, n_lists: usize) -> Self {
        self.n_lists = n_lists;
        self
    }

    /// Sets the default number of probed lists.
    #[must_use]
    pub fn with_n_probes(mut self, n_probes: usize) -> Self {
        self.n_probes = n_probes;
        self
    }

    /// Sets the re-rank multiplier.
    #[must_use]
    pub fn with_rerank_mult(mut self, rerank_mult: usize) -> Self {
        self.rerank_mult = rerank_mult;
        self
    }

    /// Sets the automatic compaction threshold.
    #[must_use]
    pub fn with_max_segments_per_list(mut self, max: usize) -> Self {
        self.max_segments_per_list = max;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.dimension > MAX_DIMENSION {
            return bad(format!(
                "dimension must be 1..={MAX_DIMENSION} (or 0: taken from the first upsert), got {}",
                self.dimension
            ));
        }
        if self.n_lists > MAX_LISTS {
            return bad(format!(
                "n_lists must be 1..={MAX_LISTS} (or 0: chosen at training), got {}",
                self.n_lists
            ));
        }
        check_centroids(self.n_lists, self.dimension).map_err(Error::InvalidConfig)?;
        if self.n_probes == 0 {
            return bad("n_probes must be at least 1".into());
        }
        if self.rerank_mult == 0 || self.rerank_mult > 1000 {
            return bad(format!(
                "rerank_mult must be 1..=1000, got {}",
                self.rerank_mult
            ));
        }
        if self.max_segments_per_list == 0 {
            return bad("max_segments_per_list must be at least 1".into());
        }
        Ok(())
    }
}

/// One stored item.
///
/// ```
/// use serde_json::json;
/// use tkms_engine::Item;
/// let item = Item::new("doc-1", vec![0.1, 0.2])
///     .with_contents("hello")
///     .with_metadata(json!({"lang": "en"}));
/// assert_eq!(item.id, "doc-1");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Caller-chosen unique id (1..=1024 bytes).
    pub id: String,
    /// The embedding (length = index dimension, finite values).
    pub vector: Vec<f32>,
    /// Optional opaque contents (the document text or bytes).
    pub contents: Option<Vec<u8>>,
    /// Optional metadata; must be a JSON object. Filters run on it.
    pub metadata: Option<Value>,
}

impl Item {
    /// An item with an id and a vector.
    pub fn new(id: impl Into<String>, vector: Vec<f32>) -> Self {
        Self {
            id: id.into(),
            vector,
            contents: None,
            metadata: None,
        }
    }

    /// Sets the contents.
    #[must_use]
    pub fn with_contents(mut self, contents: impl Into<Vec<u8>>) -> Self {
        self.contents = Some(contents.into());
        self
    }

    /// Sets the metadata (a JSON object).
    #[must_use]
    pub fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }
}

/// Which stored fields a query returns besides id and distance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)]
pub struct Include {
    /// Return the stored vector.
    pub vector: bool,
    /// Return the contents.
    pub contents: bool,
    /// Return the metadata.
    pub metadata: bool,
}

impl Include {
    /// Everything.
    pub fn all() -> Self {
        Self {
            vector: true,
            contents: true,
            metadata: true,
        }
    }

    pub(crate) fn any_doc(self) -> bool {
        self.contents || self.metadata
    }
}

/// Parameters of [`Index::query`](crate::Index::query).
///
/// ```
/// use serde_json::json;
/// use tkms_engine::{Include, QueryParams};
/// let p = QueryParams::new(10)
///     .n_probes(8)
///     .filter(json!({"lang": "en"}))
///     .include(Include { metadata: true, ..Include::default() });
/// assert_eq!(p.top_k, 10);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct QueryParams {
    /// Number of results.
    pub top_k: usize,
    /// Lists to probe (`None`: the index's configured `n_probes`).
    pub n_probes: Option<usize>,
    /// Optional MongoDB-style metadata filter (see [`Filter`](crate::Filter)).
    pub filter: Option<Value>,
    /// Fields to return.
    pub include: Include,
    /// Re-rank multiplier (`None`: the index's configured `rerank_mult`).
    pub rerank_mult: Option<usize>,
}

impl QueryParams {
    /// `top_k` results with the index defaults.
    pub fn new(top_k: usize) -> Self {
        Self {
            top_k,
            n_probes: None,
            filter: None,
            include: Include::default(),
            rerank_mult: None,
        }
    }

    /// Sets the number of probed lists.
    #[must_use]
    pub fn n_probes(mut self, n: usize) -> Self {
        self.n_probes = Some(n);
        self
    }

    /// Sets a metadata filter.
    #[must_use]
    pub fn filter(mut self, filter: Value) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Sets the returned fields.
    #[must_use]
    pub fn include(mut self, include: Include) -> Self {
        self.include = include;
        self
    }

    /// Sets the re-rank multiplier.
    #[must_use]
    pub fn rerank_mult(mut self, m: usize) -> Self {
        self.rerank_mult = Some(m);
        self
    }
}

/// One query hit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryResult {
    /// Item id.
    pub id: String,
    /// Exact distance (see [`Metric`]).
    pub distance: f32,
    /// The vector, when requested.
    pub vector: Option<Vec<f32>>,
    /// The contents, when requested.
    pub contents: Option<Vec<u8>>,
    /// The metadata, when requested.
    pub metadata: Option<Value>,
}

/// Parameters of [`Index::train`](crate::Index::train).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TrainParams {
    /// Lists to build (`None`: the index's configured `n_lists`, or [`auto_n_lists`] when that
    /// is [`AUTO`]). Retraining may change the number of lists.
    pub n_lists: Option<usize>,
    /// Lloyd iterations.
    pub max_iters: usize,
    /// Vectors sampled for k-means (`None`: `min(live, 256 · n_lists)`).
    pub sample_size: Option<usize>,
    /// RNG seed for sampling and k-means++ (training is deterministic for a seed).
    pub seed: u64,
}

impl Default for TrainParams {
    fn default() -> Self {
        Self {
            n_lists: None,
            max_iters: 20,
            sample_size: None,
            seed: 0x7b5e_ed00,
        }
    }
}

impl TrainParams {
    /// Defaults: the index's lists, 20 iterations, sample `min(live, 256 · n_lists)`, fixed
    /// seed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the number of lists to build.
    #[must_use]
    pub fn n_lists(mut self, n: usize) -> Self {
        self.n_lists = Some(n);
        self
    }

    /// Sets the number of Lloyd iterations.
    #[must_use]
    pub fn max_iters(mut self, n: usize) -> Self {
        self.max_iters = n;
        self
    }

    /// Sets the k-means sample size.
    #[must_use]
    pub fn sample_size(mut self, n: usize) -> Self {
        self.sample_size = Some(n);
        self
    }

    /// Sets the RNG seed.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// What [`Index::compact`](crate::Index::compact) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// Lists rewritten.
    pub lists_compacted: usize,
    /// Segments before, in the rewritten lists.
    pub segments_before: usize,
    /// Segments after, in the rewritten lists.
    pub segments_after: usize,
    /// Deleted slots dropped.
    pub tombstones_dropped: usize,
}
