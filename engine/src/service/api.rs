//! Wire types of the engine's HTTP service: the JSON bodies of the CyborgDB service API 0.17
//! (the `cyborgdb` 0.18 Python SDK) and of the older generation (service API 0.12,
//! `index_config` bodies), with their OpenAPI schemas (docs/ARCHITECTURE.md §4.4).
//!
//! Every request names its index (`index_name`) and, for an index created with a caller's
//! key, carries the index KEK as 64 hex characters (`index_key`); an index whose KMS envelope
//! names a provider the service was started with may omit it, and so does a caller
//! authenticated with a per-user key. Unknown fields are refused, so a misspelled option is
//! an error rather than silently ignored. The schemas say exactly what deserializes: a body
//! the document rejects, the service rejects (422).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
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

/// A JSON object (metadata, filters).
pub type Object = Map<String, Value>;

/// Distance metric names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MetricName {
    /// L2 distance.
    Euclidean,
    /// Squared L2 distance (ranks as `euclidean`).
    SquaredEuclidean,
    /// `1 - cosine similarity`.
    Cosine,
    /// Negated inner product (a tkms extension).
    DotProduct,
}

impl From<MetricName> for Metric {
    fn from(m: MetricName) -> Self {
        match m {
            MetricName::Euclidean => Metric::Euclidean,
            MetricName::SquaredEuclidean => Metric::SquaredEuclidean,
            MetricName::Cosine => Metric::Cosine,
            MetricName::DotProduct => Metric::DotProduct,
        }
    }
}

impl From<Metric> for MetricName {
    fn from(m: Metric) -> Self {
        match m {
            Metric::Euclidean => MetricName::Euclidean,
            Metric::SquaredEuclidean => MetricName::SquaredEuclidean,
            Metric::Cosine => MetricName::Cosine,
            Metric::DotProduct => MetricName::DotProduct,
        }
    }
}

/// Index type names of the older `index_config` form. All are served by the engine's one
/// design (IVF lists, SQ8 first stage, exact re-rank), reported as `ivfsq8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum IndexTypeName {
    Ivf,
    Ivfflat,
    Ivfpq,
    Ivfsq,
    Ivfsq8,
}

/// On-disk precision of the stored vectors (CyborgDB's names). The engine stores float32
/// vectors; the other values are refused with 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StoragePrecision {
    Float32,
    Float16,
    Tq12,
    Tq8,
    Tq6,
    Tq4,
}

/// `POST /v1/indexes/create`. Give exactly one of `index_key` (the caller's KEK) and
/// `kms_name` / `kms` (the service draws a KEK and wraps it with that KMS provider).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIndexRequest {
    /// 1-128 characters from `[A-Za-z0-9_.-]`.
    #[schema(example = "docs")]
    pub index_name: String,
    /// The index KEK: 32 bytes as 64 hex characters.
    #[schema(value_type = Option<String>, example = "0000000000000000000000000000000000000000000000000000000000000000")]
    pub index_key: Option<KeyHex>,
    /// Create the index under a fresh KEK wrapped by the KMS provider of this name
    /// (`aws-kms` or `tkms`, as configured on the service); later requests omit `index_key`.
    pub kms_name: Option<String>,
    /// The same as `kms_name`, in the form of tkms's earlier API.
    pub kms: Option<KmsCreateModel>,
    /// Vector dimension; omitted: taken from the first upsert.
    pub dimension: Option<usize>,
    pub metric: Option<MetricName>,
    /// Not supported (the engine stores the vectors it is given): refused when set.
    pub embedding_model: Option<String>,
    /// Only `float32` is accepted.
    pub storage_precision: Option<StoragePrecision>,
    /// Not supported (every metadata field is filterable): refused when set.
    #[schema(value_type = Option<Object>)]
    pub metadata_schema: Option<Object>,
    /// Not supported (no BM25 full-text search): refused when set.
    pub text_fields: Option<Vec<String>>,
    /// Not supported: refused when set.
    pub bm25_k1: Option<f64>,
    /// Not supported: refused when set.
    pub bm25_b: Option<f64>,
    /// The older form (service API 0.12): configuration nested here.
    pub index_config: Option<IndexConfigModel>,
}

/// Index configuration of the older create form.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IndexConfigModel {
    /// Vector dimension; omitted: taken from the first upsert.
    pub dimension: Option<usize>,
    #[serde(rename = "type")]
    pub index_type: Option<IndexTypeName>,
    pub metric: Option<MetricName>,
    /// IVF lists training builds unless the train request says otherwise (omitted: chosen
    /// from the item count at training).
    pub n_lists: Option<usize>,
    /// Lists a query probes by default (16).
    pub n_probes: Option<usize>,
    /// Candidates re-ranked exactly per result (8).
    pub rerank_mult: Option<usize>,
    /// Accepted for compatibility (`ivfpq`); the first stage is SQ8, not PQ.
    pub pq_dim: Option<usize>,
    /// Accepted for compatibility (`ivfpq`).
    pub pq_bits: Option<usize>,
}

/// `kms` option of a create request (tkms's earlier form of `kms_name`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KmsCreateModel {
    /// Provider name, e.g. `aws-kms` or `tkms` (must be configured on the service).
    pub provider: String,
    /// The operator's name for the KMS, stored in the envelope (default: the provider).
    pub kms_name: Option<String>,
}

/// Requests that only name an index: delete, describe, list_ids, num_vectors.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IndexRequest {
    #[schema(example = "docs")]
    pub index_name: String,
    #[schema(value_type = Option<String>, example = "0000000000000000000000000000000000000000000000000000000000000000")]
    pub index_key: Option<KeyHex>,
}

/// `POST /v1/indexes/train`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    #[schema(example = "docs")]
    pub index_name: String,
    #[schema(value_type = Option<String>, example = "0000000000000000000000000000000000000000000000000000000000000000")]
    pub index_key: Option<KeyHex>,
    /// Lists to build; omitted: the number set at creation, else (first training) one chosen
    /// from the item count (about √n, at least 39 items per list), else (retraining) the
    /// number built last time.
    pub n_lists: Option<usize>,
    /// k-means iterations (default 20).
    pub max_iters: Option<usize>,
    /// Vectors sampled for k-means (default `min(items, 256 · n_lists)`).
    pub sample_size: Option<usize>,
    /// Accepted for compatibility; k-means here runs on one in-memory sample.
    pub batch_size: Option<usize>,
    /// Accepted for compatibility; k-means stops after `max_iters`.
    pub tolerance: Option<f64>,
    /// Accepted for compatibility.
    pub max_memory: Option<usize>,
}

/// Contents of an item: a string (the SDK sends bytes base64-encoded, as a string).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemModel {
    #[schema(example = "doc-1")]
    pub id: String,
    #[schema(example = json!([0.1, 0.2, 0.3, 0.4]))]
    pub vector: Vec<f32>,
    pub contents: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Object>,
}

/// `POST /v1/vectors/upsert`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertRequest {
    #[schema(example = "docs")]
    pub index_name: String,
    #[schema(value_type = Option<String>, example = "0000000000000000000000000000000000000000000000000000000000000000")]
    pub index_key: Option<KeyHex>,
    pub items: Vec<ItemModel>,
}

/// A batch of vectors as one base64 string of little-endian float32 values, row after row.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BinaryVectorBatch {
    /// One id per row.
    pub ids: Vec<String>,
    /// `len(ids) · dimension` little-endian float32 values, base64.
    pub vectors_b64: String,
    pub dimension: usize,
    /// One metadata object (or null) per row.
    #[schema(value_type = Option<Vec<Option<Object>>>)]
    pub metadata: Option<Vec<Option<Object>>>,
    /// One contents string (or null; empty means none) per row.
    pub contents: Option<Vec<Option<String>>>,
}

/// `POST /v1/vectors/upsert_binary` (the SDK's path for numpy input).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BinaryUpsertRequest {
    #[schema(example = "docs")]
    pub index_name: String,
    #[schema(value_type = Option<String>, example = "0000000000000000000000000000000000000000000000000000000000000000")]
    pub index_key: Option<KeyHex>,
    pub batch: BinaryVectorBatch,
}

/// One vector or a batch of vectors.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum QueryVectors {
    One(Vec<f32>),
    Many(Vec<Vec<f32>>),
}

/// Fields a query may return besides id and distance (the distance is always returned;
/// `distance` is accepted for compatibility).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueryInclude {
    Distance,
    Metadata,
    Contents,
    Vector,
}

/// Fields `get` may return besides the id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GetInclude {
    Metadata,
    Contents,
    Vector,
}

/// Declares a query request struct with the search parameters shared by the query routes
/// (serde's `flatten` cannot be combined with `deny_unknown_fields`), and `take_params`.
macro_rules! query_request {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Deserialize, ToSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// Results per query (default 100).
            pub top_k: Option<usize>,
            /// Lists to probe (default: the index's, 16).
            pub n_probes: Option<usize>,
            /// Candidates re-ranked exactly per result (default: the index's, 8).
            pub rerank_mult: Option<usize>,
            /// Accepted for compatibility; the probe count is `n_probes`.
            pub greedy: Option<bool>,
            /// MongoDB-style metadata filter: `$eq $ne $gt $gte $lt $lte $in $nin $exists
            /// $and`.
            #[schema(value_type = Option<Object>)]
            pub filters: Option<Object>,
            /// Fields to return (default: none besides id and distance).
            pub include: Option<Vec<QueryInclude>>,
            /// Not supported (no BM25 full-text search): refused when set.
            pub text: Option<String>,
            /// Not supported: refused when set.
            pub text_fields: Option<Vec<String>>,
            /// Not supported: refused when set.
            pub text_field_weights: Option<Vec<f64>>,
            /// Not supported: refused when set.
            pub require_all_terms: Option<bool>,
            /// Not supported: refused when set.
            pub alpha: Option<f64>,
            /// Not supported: refused when set.
            pub rrf_k: Option<f64>,
            /// Not supported: refused when set.
            pub window_mult: Option<usize>,
        }

        impl $name {
            /// Moves the search parameters out.
            pub fn take_params(&mut self) -> QueryParamsModel {
                QueryParamsModel {
                    top_k: self.top_k.take(),
                    n_probes: self.n_probes.take(),
                    rerank_mult: self.rerank_mult.take(),
                    filters: self.filters.take(),
                    include: self.include.take(),
                    hybrid: self.text.is_some()
                        || self.text_fields.is_some()
                        || self.text_field_weights.is_some()
                        || self.require_all_terms.is_some()
                        || self.alpha.is_some()
                        || self.rrf_k.is_some()
                        || self.window_mult.is_some(),
                }
            }
        }
    };
}

query_request! {
    /// `POST /v1/vectors/query`: one vector (`QueryRequest`) or a batch (`BatchQueryRequest`).
    pub struct QueryRequest {
        #[schema(example = "docs")]
        pub index_name: String,
        #[schema(value_type = Option<String>, example = "0000000000000000000000000000000000000000000000000000000000000000")]
        pub index_key: Option<KeyHex>,
        #[schema(example = json!([0.1, 0.2, 0.3, 0.4]))]
        pub query_vectors: Option<QueryVectors>,
        /// Not supported (no embedding model): refused when set.
        pub query_contents: Option<String>,
    }
}

query_request! {
    /// `POST /v1/vectors/query_binary` (the SDK's path for numpy input).
    pub struct BinaryQueryRequest {
        #[schema(example = "docs")]
        pub index_name: String,
        #[schema(value_type = Option<String>, example = "0000000000000000000000000000000000000000000000000000000000000000")]
        pub index_key: Option<KeyHex>,
        pub batch: BinaryQueryBatch,
    }
}

/// Query vectors as one base64 string of little-endian float32 values.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BinaryQueryBatch {
    /// `n · dimension` little-endian float32 values, base64.
    pub vectors_b64: String,
    pub dimension: usize,
}

/// The search parameters of a query request.
pub struct QueryParamsModel {
    pub top_k: Option<usize>,
    pub n_probes: Option<usize>,
    pub rerank_mult: Option<usize>,
    pub filters: Option<Object>,
    pub include: Option<Vec<QueryInclude>>,
    /// Whether any hybrid (BM25) field was set.
    pub hybrid: bool,
}

/// Sort key of a metadata query: a field name (direction from `ascending`) or
/// `{"field": 1 | -1}`.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OrderBy {
    Field(String),
    Directed(std::collections::BTreeMap<String, i64>),
}

/// `POST /v1/vectors/query_metadata`: items by metadata alone, no vector.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryMetadataRequest {
    #[schema(example = "docs")]
    pub index_name: String,
    #[schema(value_type = Option<String>, example = "0000000000000000000000000000000000000000000000000000000000000000")]
    pub index_key: Option<KeyHex>,
    /// Filter (omitted or `{}`: every item).
    #[schema(value_type = Option<Object>)]
    pub filters: Option<Object>,
    /// At most this many results, after ordering (omitted: all).
    pub top_k: Option<usize>,
    pub order_by: Option<OrderBy>,
    /// Direction of a field-name `order_by` (default true).
    pub ascending: Option<bool>,
    /// Not supported (no BM25 full-text search): refused when set.
    pub text: Option<String>,
    /// Not supported: refused when set.
    pub text_fields: Option<Vec<String>>,
    /// Not supported: refused when set.
    pub text_field_weights: Option<Vec<f64>>,
    /// Not supported: refused when set.
    pub require_all_terms: Option<bool>,
}

/// `POST /v1/vectors/get`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GetRequest {
    #[schema(example = "docs")]
    pub index_name: String,
    #[schema(value_type = Option<String>, example = "0000000000000000000000000000000000000000000000000000000000000000")]
    pub index_key: Option<KeyHex>,
    pub ids: Vec<String>,
    /// Fields to return (default all three).
    pub include: Option<Vec<GetInclude>>,
}

/// `POST /v1/vectors/delete`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    #[schema(example = "docs")]
    pub index_name: String,
    #[schema(value_type = Option<String>, example = "0000000000000000000000000000000000000000000000000000000000000000")]
    pub index_key: Option<KeyHex>,
    pub ids: Vec<String>,
}

/// What a per-user key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Read,
    Write,
}

/// `POST /v1/indexes/{index_name}/users`: mint a user API key scoped to the index.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// `["read"]` (read-only) or `["read", "write"]`.
    pub permissions: Vec<Permission>,
    /// The index KEK; omitted for an index whose KMS envelope the service can open.
    #[schema(value_type = Option<String>, example = "0000000000000000000000000000000000000000000000000000000000000000")]
    pub index_key: Option<KeyHex>,
}

/// A minted user key.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreateUserResponse {
    /// The key's id (32 hex characters), for listing and revoking.
    pub user_id: String,
    /// The user's API key (`cdbk_…`), returned once and never stored: send it as
    /// `X-API-Key`. It carries the user's own key to the index (no index key needed).
    pub api_key: String,
}

/// One user key of an index.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct UserInfo {
    pub user_id: String,
    pub permissions: Vec<Permission>,
}

/// `GET /v1/indexes/{index_name}/users`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ListUsersResponse {
    pub users: Vec<UserInfo>,
}

/// `{"status":"success","message":...}` (CyborgDB's success model), plus a count where one
/// applies.
#[derive(Serialize, Deserialize, ToSchema)]
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

/// `GET /v1/health`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// `healthy`.
    pub status: String,
    /// The CyborgDB service API version served.
    pub api_version: String,
}

/// `GET /v1/indexes/list`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct IndexListResponse {
    pub indexes: Vec<String>,
}

/// `POST /v1/indexes/describe`: the fields of both SDK generations.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct DescribeResponse {
    pub index_name: String,
    /// Always `ivfsq8`: IVF lists, SQ8 first stage, exact re-rank.
    pub index_type: String,
    pub is_trained: bool,
    /// 0 until the first upsert of an index created without a dimension.
    pub dimension: usize,
    pub metric: MetricName,
    /// IVF lists the index has: 1 before training.
    pub n_lists: usize,
    pub num_vectors: usize,
    /// The same, in the older nested form.
    pub index_config: IndexConfigInfo,
}

/// The configuration as the older SDK generation reads it.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct IndexConfigInfo {
    #[serde(rename = "type")]
    pub index_type: String,
    pub dimension: usize,
    pub metric: MetricName,
    pub n_lists: usize,
    pub n_probes: usize,
    pub rerank_mult: usize,
}

/// `GET /v1/indexes/training-status`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TrainingStatusResponse {
    /// Indexes being trained now (training runs inside the train request).
    pub training_indexes: Vec<String>,
    /// 0: the service never trains on its own.
    pub retrain_threshold: usize,
    pub currently_training: Option<String>,
    pub queued_indexes: Vec<String>,
    pub worker_running: bool,
    pub worker_pid: u32,
    #[schema(value_type = Object)]
    pub global_training: Object,
}

/// A query hit; `distance` is always present, the other fields when requested.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct QueryResultItem {
    pub id: String,
    pub distance: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contents: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

/// Query results: one list of hits per query vector (a single query is a batch of one).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct QueryResponse {
    pub results: Vec<Vec<QueryResultItem>>,
}

/// An item returned by `get`; absent fields were not requested (or not stored).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct GetResultItem {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contents: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

/// `POST /v1/vectors/get`: found items in request order (unknown ids are skipped).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct GetResponse {
    pub results: Vec<GetResultItem>,
}

/// One row of a metadata query.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct MetadataResult {
    pub id: String,
}

/// `POST /v1/vectors/query_metadata`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct QueryMetadataResponse {
    pub results: Vec<MetadataResult>,
    /// The same ids, for callers that read only ids.
    pub ids: Vec<String>,
    pub count: usize,
}

/// `POST /v1/vectors/list_ids`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ListIdsResponse {
    pub ids: Vec<String>,
    pub count: usize,
}

/// Contents as a JSON string: the text when UTF-8, else base64 (contents written as bytes
/// through the Rust API; the SDK itself sends bytes base64-encoded).
pub fn contents_string(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(e.as_bytes())
        }
    }
}
