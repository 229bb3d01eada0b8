//! `tkms-engine`: an encrypted vector index in the manner of CyborgDB (docs/ARCHITECTURE.md
//! §4.4; its keys: docs/PROTOCOL.md §13).
//!
//! * **Keys** ([`keys`]): the caller's 32-byte KEK wraps a per-index DEK; every other key is
//!   derived from the DEK with the labelled HKDF/HMAC/SHA-3 steps of [`labels`]. A wrong KEK
//!   is refused with [`Error::WrongKey`]. Per-user keys carry a read-only or read-write
//!   [`Scope`].
//! * **Encrypted storage** ([`store`]): vectors, ids, contents and metadata are stored only as
//!   AES-256-GCM ciphertexts with random nonces, under storage keys that are derived tokens;
//!   the id → location map is itself encrypted. Backends: memory and one redb file.
//! * **Index**: IVF lists from k-means, per-list forward-private segments
//!   (`HMAC(seed key, list)` → per-counter SHA-3 lookup token and encryption key), metadata
//!   [`Filter`]s, compaction. A query searches its probed lists one of two ways: an SQ8
//!   first stage and an exact re-rank of `rerank_mult · top_k` decrypted vectors (with a
//!   filter, or a single query on a handle whose segment cache is off: the fewest bytes
//!   read), or an exact scan of the lists' decrypted vector blocks (without a filter, for a
//!   query served from the segment cache or a [`Index::query_batch`]: blocks decrypted once
//!   serve many queries, and the ranking is exact).
//! * **KMS envelopes** ([`kms`]): a `KMSBlob` FlatBuffer beside the keystore records how the
//!   KEK is wrapped by an external KMS (`none`, `aws-kms`; `tkms` plugs in as a
//!   [`kms::KeyProvider`]).
//!
//! ```
//! use serde_json::json;
//! use tkms_engine::{Client, IndexConfig, IndexKey, Item, QueryParams, StorageConfig};
//!
//! let client = Client::new(StorageConfig::memory())?;
//! let key = IndexKey::generate();
//! let index = client.create_index("songs", &key, IndexConfig::new(3).with_n_lists(2))?;
//! index.upsert(vec![
//!     Item::new("s1", vec![1.0, 0.0, 0.0]).with_metadata(json!({"genre": "jazz"})),
//!     Item::new("s2", vec![0.9, 0.1, 0.0]).with_metadata(json!({"genre": "rock"})),
//!     Item::new("s3", vec![0.0, 0.0, 1.0]).with_metadata(json!({"genre": "jazz"})),
//! ])?;
//! index.train(&Default::default())?;
//! let hits = index.query(
//!     &[1.0, 0.05, 0.0],
//!     &QueryParams::new(1).n_probes(2).filter(json!({"genre": {"$ne": "jazz"}})),
//! )?;
//! assert_eq!(hits[0].id, "s2");
//! # Ok::<(), tkms_engine::Error>(())
//! ```

mod cache;
mod client;
mod error;
mod filter;
mod index;
pub mod keys;
mod kmeans;
pub mod kms;
pub mod labels;
mod metric;
mod quantize;
mod records;
mod scan;
pub mod service;
pub mod store;
mod types;
pub mod vecfile;

pub use cache::DEFAULT_SEGMENT_CACHE_BYTES;
pub use client::{Client, MAX_INDEX_NAME_LEN};
pub use error::{Error, Result};
pub use filter::Filter;
pub use index::{Index, MAX_BATCH, MAX_METADATA_DEPTH};
pub use keys::{IndexKey, Scope, UserKey};
pub use metric::Metric;
pub use store::{S3Config, StorageConfig};
pub use types::{
    auto_n_lists, CompactionStats, Include, IndexConfig, Item, QueryParams, QueryResult,
    TrainParams, AUTO, MAX_ABS_COMPONENT, MAX_CENTROID_FLOATS, MAX_CONTENTS_LEN, MAX_DIMENSION,
    MAX_ID_LEN, MAX_LISTS, MAX_METADATA_LEN, MAX_RERANK, MAX_TOP_K, MAX_TRAIN_ITERS,
    MIN_ITEMS_PER_AUTO_LIST,
};
