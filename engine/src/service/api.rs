//! Wire types of the engine's HTTP service: the JSON bodies of the CyborgDB service's REST
//! surface (DESIGN §4.4), and their checked conversion to engine types.
//!
//! Every request names its index (`index_name`) and carries the index KEK as 64 hex
//! characters (`index_key`), as CyborgDB's service does; an index with a KMS envelope whose
//! provider the service was started with may omit `index_key`. Unknown fields are refused,
//! so a misspelled option is an error rather than silently ignored.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::metric::Metric;

/// An index KEK as hex, zeroized on drop (the request body buffer itself is not under our
/// control).
pub struct KeyHex(pub Zeroizing<String>);

impl<'de> Deserialize<'de> for KeyHex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| KeyHex(Zeroizing::new(s)))
    }
}

/// `POST /v1/indexes/create`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateIndexRequest {
    pub index_name: String,
    pub index_key: Option<KeyHex>,
    pub index_config: Option<IndexConfigModel>,
    /// Top-level metric (CyborgDB accepts it here or in `index_config`).
    pub metric: Option<String>,
    /// Not supported: the engine stores the vectors it is given.
    pub embedding_model: Option<String>,
    /// Create the index under a fresh KEK wrapped by this KMS provider instead of `index_key`.
    pub kms: Option<KmsCreateModel>,
}

/// Index configuration of a create request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfigModel {
    pub dimension: Option<usize>,
    /// `ivf`, `ivfflat`, `ivfpq` or `ivfsq8`: all are served by the engine's one design
    /// (IVF lists, SQ8 first stage, exact re-rank), reported as `ivfsq8` by describe.
    #[serde(rename = "type")]
    pub index_type: Option<String>,
    pub metric: Option<String>,
    pub n_lists: Option<usize>,
    pub n_probes: Option<usize>,
    pub rerank_mult: Option<usize>,
    /// Accepted for CyborgDB compatibility (`ivfpq`); the first stage is SQ8, not PQ.
    pub pq_dim: Option<usize>,
    /// Accepted for CyborgDB compatibility (`ivfpq`).
    pub pq_bits: Option<usize>,
}

/// `kms` option of a create request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsCreateModel {
    /// Provider name, e.g. `aws-kms` (must be configured on the service).
    pub provider: String,
    /// The operator's name for the KMS, stored in the envelope.
    pub kms_name: Option<String>,
}

/// Requests that only name an index: delete, describe, list_ids, num_vectors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexRequest {
    pub index_name: String,
    pub index_key: Option<KeyHex>,
}

/// `POST /v1/indexes/train`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    pub index_name: String,
    pub index_key: Option<KeyHex>,
    /// Must equal the index's `n_lists` when given (fixed at creation).
    pub n_lists: Option<usize>,
    pub max_iters: Option<usize>,
    /// Vectors sampled for k-means.
    pub sample_size: Option<usize>,
    /// Accepted for CyborgDB compatibility; k-means here runs on one in-memory sample.
    pub batch_size: Option<usize>,
    /// Accepted for CyborgDB compatibility; k-means stops after `max_iters`.
    pub tolerance: Option<f64>,
    /// Accepted for CyborgDB compatibility.
    pub max_memory: Option<usize>,
}

/// One item of an upsert.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemModel {
    pub id: String,
    pub vector: Vec<f32>,
    pub contents: Option<String>,
    pub metadata: Option<Value>,
}

/// `POST /v1/vectors/upsert`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpsertRequest {
    pub index_name: String,
    pub index_key: Option<KeyHex>,
    pub items: Vec<ItemModel>,
}

/// One vector or a batch of vectors.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum QueryVectors {
    One(Vec<f32>),
    Many(Vec<Vec<f32>>),
}

/// `POST /v1/vectors/query`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub index_name: String,
    pub index_key: Option<KeyHex>,
    pub query_vectors: Option<QueryVectors>,
    /// Not supported (no embedding model): refused when set.
    pub query_contents: Option<String>,
    pub top_k: Option<usize>,
    pub n_probes: Option<usize>,
    pub rerank_mult: Option<usize>,
    /// Accepted for CyborgDB compatibility; the probe count is `n_probes`.
    pub greedy: Option<bool>,
    pub filters: Option<Value>,
    /// Any of `distance`, `metadata`, `contents`, `vector` (default `distance`, `metadata`).
    pub include: Option<Vec<String>>,
}

/// `POST /v1/vectors/get`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetRequest {
    pub index_name: String,
    pub index_key: Option<KeyHex>,
    pub ids: Vec<String>,
    /// Any of `vector`, `contents`, `metadata` (default all three).
    pub include: Option<Vec<String>>,
}

/// `POST /v1/vectors/delete`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    pub index_name: String,
    pub index_key: Option<KeyHex>,
    pub ids: Vec<String>,
}

/// `{"status":"success","message":...}` (CyborgDB's success model), plus a count where one
/// applies.
#[derive(Serialize, Deserialize)]
pub struct SuccessResponse {
    pub status: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
}

impl SuccessResponse {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            status: "success".into(),
            message: message.into(),
            count: None,
        }
    }

    #[must_use]
    pub fn with_count(mut self, n: usize) -> Self {
        self.count = Some(n);
        self
    }
}

/// A result item of query or get; absent fields were not requested.
#[derive(Serialize, Deserialize)]
pub struct ResultItem {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contents: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

/// Contents as JSON: a string when UTF-8, else `{"base64": "..."}` (written through the Rust
/// API with binary contents).
pub fn contents_json(bytes: Vec<u8>) -> Value {
    match String::from_utf8(bytes) {
        Ok(s) => Value::String(s),
        Err(e) => {
            use base64::Engine;
            serde_json::json!({"base64": base64::engine::general_purpose::STANDARD.encode(e.as_bytes())})
        }
    }
}

/// Parses a metric name (CyborgDB's names and ours).
pub fn parse_metric(s: &str) -> Option<Metric> {
    match s.to_ascii_lowercase().as_str() {
        "euclidean" | "l2" => Some(Metric::Euclidean),
        "squared_euclidean" => Some(Metric::SquaredEuclidean),
        "cosine" => Some(Metric::Cosine),
        "dot" | "dot_product" | "inner_product" | "ip" => Some(Metric::DotProduct),
        _ => None,
    }
}

/// The name describe reports for a metric.
pub fn metric_name(m: Metric) -> &'static str {
    match m {
        Metric::Euclidean => "euclidean",
        Metric::SquaredEuclidean => "squared_euclidean",
        Metric::Cosine => "cosine",
        Metric::DotProduct => "dot_product",
    }
}
