//! The engine's HTTP service (`tkms engine serve`): the CyborgDB service's REST surface
//! (DESIGN §4.4) over one storage backend.
//!
//! * Auth: every route but `GET /v1/health` needs an `X-API-Key` header equal to one of the
//!   configured keys (compared in constant time on their SHA-256); otherwise 401.
//! * Routes: `POST /v1/indexes/{create,delete,train,describe}`, `GET /v1/indexes/list`,
//!   `POST /v1/vectors/{upsert,query,get,delete,list_ids,num_vectors}`, `GET /v1/health`.
//!   Bodies are in [`api`].
//! * Keys: each request carries its index KEK (`index_key`, 64 hex characters), checked by
//!   the engine (wrong key → 401, nothing changed). An index with a KMS envelope whose
//!   provider the service was started with ([`ServiceConfig::key_providers`]) may omit it:
//!   the service unwraps the KEK through the KMS (seed 000 "A service layer can then read
//!   the envelope at request time"). KEKs are zeroized after use and never logged.
//! * Errors: JSON `{"error": "...", "code": "..."}` with 400 (bad input), 401 (API key or
//!   index key), 403 (scope), 404 (no such index or route), 409 (exists / concurrent change),
//!   413 (body too large), 500/502 (storage, KMS). Handlers never panic on input: the engine
//!   validates everything (and a panic inside an engine call would surface as a 500).
//!
//! Engine calls are CPU-bound and synchronous; they run on tokio's blocking pool. One open
//! [`Index`] handle per index is cached (keyed by name, guarded by its KEK).
//!
//! ```no_run
//! # async fn f() -> tkms_engine::Result<()> {
//! use tkms_engine::service::{ServiceConfig, run};
//! use tkms_engine::StorageConfig;
//! let config = ServiceConfig::new(
//!     "127.0.0.1:8000".parse().unwrap(),
//!     StorageConfig::disk("/var/lib/tkms-engine"),
//!     vec![zeroize::Zeroizing::new("a-long-random-api-key".to_owned())],
//! );
//! run(config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod api;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::kms::KeyProvider;
use crate::{
    Client, Include, Index, IndexConfig, IndexKey, Item, QueryParams, StorageConfig, TrainParams,
};
use api::{
    contents_json, metric_name, parse_metric, CreateIndexRequest, DeleteRequest, GetRequest,
    IndexRequest, KeyHex, QueryRequest, QueryVectors, ResultItem, SuccessResponse, TrainRequest,
    UpsertRequest,
};

/// Default largest request body: 256 MiB (an upsert of 100k × 384-d vectors as JSON is
/// about 80 MB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 << 20;
/// Default `top_k` of a query (CyborgDB's default).
pub const DEFAULT_TOP_K: usize = 100;
/// Shortest accepted API key.
pub const MIN_API_KEY_LEN: usize = 16;

/// Settings of the service.
pub struct ServiceConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Where the indexes live.
    pub storage: StorageConfig,
    /// Accepted `X-API-Key` values (at least one, each at least 16 characters).
    pub api_keys: Vec<Zeroizing<String>>,
    /// Providers that may unwrap index KEKs from KMS envelopes (e.g. `aws-kms`).
    pub key_providers: Vec<Arc<dyn KeyProvider>>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("listen", &self.listen)
            .field("storage", &self.storage)
            .field(
                "api_keys",
                &format_args!("<{} redacted>", self.api_keys.len()),
            )
            .field(
                "key_providers",
                &self
                    .key_providers
                    .iter()
                    .map(|p| p.provider().to_owned())
                    .collect::<Vec<_>>(),
            )
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

impl ServiceConfig {
    /// A configuration with no KMS provider and the default body limit.
    pub fn new(
        listen: SocketAddr,
        storage: StorageConfig,
        api_keys: Vec<Zeroizing<String>>,
    ) -> Self {
        Self {
            listen,
            storage,
            api_keys,
            key_providers: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// A bound, not yet serving, service: [`Server::local_addr`] tells the port.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// Opens the storage and binds the listener.
pub async fn bind(config: ServiceConfig) -> crate::Result<Server> {
    if config.api_keys.is_empty() {
        return Err(Error::InvalidArgument(
            "the service needs at least one API key".into(),
        ));
    }
    if let Some(k) = config.api_keys.iter().find(|k| k.len() < MIN_API_KEY_LEN) {
        return Err(Error::InvalidArgument(format!(
            "API keys must be at least {MIN_API_KEY_LEN} characters, one has {}",
            k.len()
        )));
    }
    let storage = config.storage.clone();
    let client = tokio::task::spawn_blocking(move || Client::new(storage))
        .await
        .map_err(|e| Error::Storage(format!("opening the storage panicked: {e}")))??;
    let state = Arc::new(AppState {
        client,
        api_key_digests: config
            .api_keys
            .iter()
            .map(|k| Sha256::digest(k.as_bytes()).into())
            .collect(),
        providers: config
            .key_providers
            .iter()
            .map(|p| (p.provider().to_owned(), Arc::clone(p)))
            .collect(),
        handles: Mutex::new(HashMap::new()),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::InvalidArgument(format!("cannot listen on {}: {e}", config.listen)))?;
    Ok(Server {
        listener,
        router: router(state, config.max_body_bytes),
    })
}

impl Server {
    /// The bound address.
    pub fn local_addr(&self) -> crate::Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::Storage(format!("listener address: {e}")))
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> crate::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Error::Storage(format!("HTTP server failed: {e}")))
    }
}

/// Binds and serves until `shutdown` completes (the library entry point of `tkms engine
/// serve`).
pub async fn run(
    config: ServiceConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> crate::Result<()> {
    bind(config).await?.run(shutdown).await
}

struct Cached {
    key: IndexKey,
    index: Arc<Index>,
}

struct AppState {
    client: Client,
    api_key_digests: Vec<[u8; 32]>,
    providers: HashMap<String, Arc<dyn KeyProvider>>,
    handles: Mutex<HashMap<String, Cached>>,
}

fn router(state: Arc<AppState>, max_body: usize) -> Router {
    let authed = Router::new()
        .route("/v1/indexes/create", post(create_index))
        .route("/v1/indexes/delete", post(delete_index))
        .route("/v1/indexes/train", post(train))
        .route("/v1/indexes/describe", post(describe))
        .route("/v1/indexes/list", get(list_indexes))
        .route("/v1/vectors/upsert", post(upsert))
        .route("/v1/vectors/query", post(query))
        .route("/v1/vectors/get", post(get_items))
        .route("/v1/vectors/delete", post(delete_items))
        .route("/v1/vectors/list_ids", post(list_ids))
        .route("/v1/vectors/num_vectors", post(num_vectors))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), auth));
    Router::new()
        .route("/v1/health", get(health))
        .merge(authed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------
// Errors

/// An error response `{"error": "...", "code": "..."}`.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"error": self.message, "code": self.code})),
        )
            .into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use StatusCode as S;
        let (status, code) = match &e {
            Error::WrongKey { .. } => (S::UNAUTHORIZED, "wrong_key"),
            Error::InvalidKey(_) => (S::BAD_REQUEST, "invalid_key"),
            Error::IndexNotFound(_) => (S::NOT_FOUND, "index_not_found"),
            Error::IndexExists(_) => (S::CONFLICT, "index_exists"),
            Error::KmsEnvelopeExists(_) => (S::CONFLICT, "kms_envelope_exists"),
            Error::KmsEnvelopeNotFound(_) => (S::NOT_FOUND, "kms_envelope_not_found"),
            Error::Conflict(_) => (S::CONFLICT, "conflict"),
            Error::InvalidIndexName(_) => (S::BAD_REQUEST, "invalid_index_name"),
            Error::InvalidConfig(_) => (S::BAD_REQUEST, "invalid_config"),
            Error::DimensionMismatch { .. } => (S::BAD_REQUEST, "dimension_mismatch"),
            Error::NonFiniteVector { .. } => (S::BAD_REQUEST, "non_finite_vector"),
            Error::DuplicateId(_) => (S::BAD_REQUEST, "duplicate_id"),
            Error::InvalidFilter(_) => (S::BAD_REQUEST, "invalid_filter"),
            Error::NotEnoughVectors { .. } => (S::BAD_REQUEST, "not_enough_vectors"),
            Error::PermissionDenied { .. } => (S::FORBIDDEN, "permission_denied"),
            Error::InvalidEnvelope(_) => (S::BAD_REQUEST, "invalid_kms_envelope"),
            Error::Kms(_) => (S::BAD_GATEWAY, "kms_error"),
            Error::Corrupted(_) => (S::INTERNAL_SERVER_ERROR, "corrupted"),
            Error::Storage(_) => (S::INTERNAL_SERVER_ERROR, "storage_error"),
            _ => (S::BAD_REQUEST, "invalid_argument"),
        };
        Self::new(status, code, e.to_string())
    }
}

type ApiResult<T> = Result<axum::Json<T>, ApiError>;

/// `axum::Json` with rejections turned into [`ApiError`]s.
struct Json<T>(T);

impl<S, T> FromRequest<S> for Json<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => {
                let status = rejection.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "payload_too_large"
                } else {
                    "invalid_json"
                };
                // JSON errors are reported as 400 (CyborgDB reports 422 for the same).
                let status = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    status
                } else {
                    StatusCode::BAD_REQUEST
                };
                Err(ApiError::new(status, code, rejection.body_text()))
            }
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get("x-api-key")
        .map(|v| Sha256::digest(v.as_bytes()));
    let ok = presented.is_some_and(|d| {
        state
            .api_key_digests
            .iter()
            .fold(subtle::Choice::from(0), |acc, k| {
                acc | k.ct_eq(&<[u8; 32]>::from(d))
            })
            .into()
    });
    if ok {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid X-API-Key header",
        )
        .into_response()
    }
}

/// Runs a blocking engine call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the request failed internally: {e}"),
        )
    })?
}

// ---------------------------------------------------------------------------------------
// Keys and handles

fn parse_key(hex_key: &str) -> Result<IndexKey, ApiError> {
    let hex_key = hex_key.trim();
    let hex_key = hex_key.strip_prefix("0x").unwrap_or(hex_key);
    if hex_key.len() != 64 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_key",
            format!(
                "index_key must be 32 bytes as 64 hex characters, got {} characters",
                hex_key.len()
            ),
        ));
    }
    let bytes = Zeroizing::new(hex::decode(hex_key).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_key",
            "index_key is not hexadecimal",
        )
    })?);
    Ok(IndexKey::from_bytes(&bytes)?)
}

impl AppState {
    /// The KEK of a request: `index_key`, or else the index's KMS envelope through a
    /// configured provider.
    fn request_key(&self, name: &str, key: Option<&KeyHex>) -> Result<IndexKey, ApiError> {
        if let Some(k) = key {
            return parse_key(&k.0);
        }
        let envelope = match self.client.get_index_kms(name) {
            Ok(b) => b,
            Err(Error::KmsEnvelopeNotFound(_)) => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing_key",
                    format!("index_key is required: index `{name}` has no KMS envelope"),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        let provider = self.providers.get(&envelope.provider).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_key",
                format!(
                    "index_key is required: index `{name}` is wrapped by provider {:?}, which this service is not configured with",
                    envelope.provider
                ),
            )
        })?;
        Ok(self.client.index_key_from_kms(name, provider.as_ref())?)
    }

    /// An open handle of `name`, checked against the request's key.
    fn index(&self, name: &str, key: Option<&KeyHex>) -> Result<Arc<Index>, ApiError> {
        let key = self.request_key(name, key)?;
        {
            let handles = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = handles.get(name) {
                if bool::from(c.key.ct_eq(&key)) {
                    return Ok(Arc::clone(&c.index));
                }
            }
        }
        // Not cached, or another key: the engine decides (a wrong key is refused before
        // anything is read or changed).
        let index = Arc::new(self.client.load_index(name, &key)?);
        let mut handles = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = handles.entry(name.to_owned()).or_insert_with(|| Cached {
            key: key.clone(),
            index: Arc::clone(&index),
        });
        if !bool::from(entry.key.ct_eq(&key)) {
            *entry = Cached {
                key,
                index: Arc::clone(&index),
            };
        }
        Ok(Arc::clone(&entry.index))
    }

    fn forget(&self, name: &str) {
        self.handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }
}

fn include_of(list: Option<&[String]>, default: &[&str]) -> Result<(Include, bool), ApiError> {
    let mut include = Include::default();
    let mut distance = false;
    let names: Vec<&str> = match list {
        Some(l) => l.iter().map(String::as_str).collect(),
        None => default.to_vec(),
    };
    for n in names {
        match n {
            "distance" => distance = true,
            "metadata" => include.metadata = true,
            "contents" => include.contents = true,
            "vector" => include.vector = true,
            other => {
                return Err(ApiError::bad(format!(
                    "unknown include field {other:?}: use distance, metadata, contents or vector"
                )))
            }
        }
    }
    Ok((include, distance))
}

// ---------------------------------------------------------------------------------------
// Handlers

async fn health() -> axum::Json<Value> {
    axum::Json(json!({"status": "healthy"}))
}

async fn list_indexes(State(s): State<Arc<AppState>>) -> ApiResult<Value> {
    let names = blocking(move || Ok(s.client.list_indexes()?)).await?;
    Ok(axum::Json(json!({"indexes": names})))
}

fn build_config(req: &CreateIndexRequest) -> Result<IndexConfig, ApiError> {
    if req.embedding_model.is_some() {
        return Err(ApiError::bad(
            "embedding_model is not supported: upsert vectors, not text",
        ));
    }
    let cfg = req
        .index_config
        .as_ref()
        .ok_or_else(|| ApiError::bad("index_config with a dimension is required"))?;
    let dimension = cfg
        .dimension
        .ok_or_else(|| ApiError::bad("index_config.dimension is required"))?;
    if dimension == 0 {
        // The library takes 0 as "from the first upsert"; this form requires a dimension.
        return Err(Error::InvalidConfig("dimension must be at least 1".into()).into());
    }
    if let Some(t) = &cfg.index_type {
        if !matches!(t.as_str(), "ivf" | "ivfflat" | "ivfpq" | "ivfsq8") {
            return Err(ApiError::bad(format!(
                "unknown index type {t:?}: use ivf, ivfflat, ivfpq or ivfsq8"
            )));
        }
    }
    let mut config = IndexConfig::new(dimension);
    if let Some(m) = cfg.metric.as_deref().or(req.metric.as_deref()) {
        config = config.with_metric(parse_metric(m).ok_or_else(|| {
            ApiError::bad(format!(
                "unknown metric {m:?}: use euclidean, cosine or dot_product"
            ))
        })?);
    }
    if let Some(n) = cfg.n_lists {
        config = config.with_n_lists(n);
    }
    if let Some(n) = cfg.n_probes {
        config = config.with_n_probes(n);
    }
    if let Some(n) = cfg.rerank_mult {
        config = config.with_rerank_mult(n);
    }
    Ok(config)
}

async fn create_index(
    State(s): State<Arc<AppState>>,
    Json(req): Json<CreateIndexRequest>,
) -> ApiResult<SuccessResponse> {
    let config = build_config(&req)?;
    blocking(move || {
        let name = req.index_name.as_str();
        match (&req.index_key, &req.kms) {
            (Some(k), None) => {
                let key = parse_key(&k.0)?;
                let index = s.client.create_index(name, &key, config)?;
                s.handles
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(
                        name.to_owned(),
                        Cached {
                            key,
                            index: Arc::new(index),
                        },
                    );
            }
            (None, Some(kms)) => {
                let provider = s.providers.get(&kms.provider).ok_or_else(|| {
                    ApiError::bad(format!(
                        "KMS provider {:?} is not configured on this service",
                        kms.provider
                    ))
                })?;
                let kms_name = kms.kms_name.as_deref().unwrap_or(kms.provider.as_str());
                s.client
                    .create_index_with_kms(name, provider.as_ref(), kms_name, config)?;
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::bad("give either index_key or kms, not both"))
            }
            (None, None) => return Err(ApiError::bad("index_key (64 hex characters) is required")),
        }
        Ok(axum::Json(SuccessResponse::new(format!(
            "Index '{name}' created successfully"
        ))))
    })
    .await
}

async fn delete_index(
    State(s): State<Arc<AppState>>,
    Json(req): Json<IndexRequest>,
) -> ApiResult<SuccessResponse> {
    blocking(move || {
        let key = s.request_key(&req.index_name, req.index_key.as_ref())?;
        s.client.delete_index(&req.index_name, &key)?;
        s.forget(&req.index_name);
        Ok(axum::Json(SuccessResponse::new(format!(
            "Index '{}' deleted successfully",
            req.index_name
        ))))
    })
    .await
}

async fn describe(
    State(s): State<Arc<AppState>>,
    Json(req): Json<IndexRequest>,
) -> ApiResult<Value> {
    blocking(move || {
        let index = s.index(&req.index_name, req.index_key.as_ref())?;
        let c = index.config();
        Ok(axum::Json(json!({
            "index_name": index.name(),
            "index_type": "ivfsq8",
            "is_trained": index.is_trained(),
            "num_vectors": index.len(),
            "index_config": {
                "type": "ivfsq8",
                "dimension": c.dimension,
                "metric": metric_name(c.metric),
                "n_lists": c.n_lists,
                "n_probes": c.n_probes,
                "rerank_mult": c.rerank_mult,
            },
        })))
    })
    .await
}

async fn train(
    State(s): State<Arc<AppState>>,
    Json(req): Json<TrainRequest>,
) -> ApiResult<SuccessResponse> {
    blocking(move || {
        let index = s.index(&req.index_name, req.index_key.as_ref())?;
        if let Some(n) = req.n_lists {
            if n != index.config().n_lists {
                return Err(ApiError::bad(format!(
                    "n_lists is fixed when the index is created ({}); got {n}",
                    index.config().n_lists
                )));
            }
        }
        let mut params = TrainParams::default();
        if let Some(n) = req.max_iters {
            params = params.max_iters(n);
        }
        if let Some(n) = req.sample_size {
            params = params.sample_size(n);
        }
        index.train(&params)?;
        Ok(axum::Json(SuccessResponse::new(format!(
            "Index '{}' trained successfully",
            req.index_name
        ))))
    })
    .await
}

async fn upsert(
    State(s): State<Arc<AppState>>,
    Json(req): Json<UpsertRequest>,
) -> ApiResult<SuccessResponse> {
    blocking(move || {
        let index = s.index(&req.index_name, req.index_key.as_ref())?;
        let n = req.items.len();
        let items = req
            .items
            .into_iter()
            .map(|i| Item {
                id: i.id,
                vector: i.vector,
                contents: i.contents.map(String::into_bytes),
                metadata: i.metadata,
            })
            .collect();
        index.upsert(items)?;
        Ok(axum::Json(
            SuccessResponse::new(format!("Upserted {n} vectors")).with_count(n),
        ))
    })
    .await
}

fn result_item(r: crate::QueryResult, distance: bool) -> ResultItem {
    ResultItem {
        id: r.id,
        distance: distance.then_some(r.distance),
        metadata: r.metadata,
        contents: r.contents.map(contents_json),
        vector: r.vector,
    }
}

async fn query(State(s): State<Arc<AppState>>, Json(req): Json<QueryRequest>) -> ApiResult<Value> {
    if req.query_contents.is_some() {
        return Err(ApiError::bad(
            "query_contents is not supported (no embedding model): send query_vectors",
        ));
    }
    let vectors = req
        .query_vectors
        .ok_or_else(|| ApiError::bad("query_vectors is required"))?;
    let (include, distance) = include_of(req.include.as_deref(), &["distance", "metadata"])?;
    let mut params = QueryParams::new(req.top_k.unwrap_or(DEFAULT_TOP_K)).include(include);
    if let Some(n) = req.n_probes {
        params = params.n_probes(n);
    }
    if let Some(m) = req.rerank_mult {
        params = params.rerank_mult(m);
    }
    if let Some(f) = req
        .filters
        .filter(|f| f.as_object().is_none_or(|o| !o.is_empty()))
    {
        params = params.filter(f);
    }
    let index_name = req.index_name;
    let index_key = req.index_key;
    blocking(move || {
        let index = s.index(&index_name, index_key.as_ref())?;
        let results = match vectors {
            QueryVectors::One(v) => json!(index
                .query(&v, &params)?
                .into_iter()
                .map(|r| result_item(r, distance))
                .collect::<Vec<_>>()),
            QueryVectors::Many(vs) => json!(index
                .query_batch(&vs, &params)?
                .into_iter()
                .map(|rs| rs
                    .into_iter()
                    .map(|r| result_item(r, distance))
                    .collect::<Vec<_>>())
                .collect::<Vec<_>>()),
        };
        Ok(axum::Json(json!({ "results": results })))
    })
    .await
}

async fn get_items(
    State(s): State<Arc<AppState>>,
    Json(req): Json<GetRequest>,
) -> ApiResult<Value> {
    let (include, distance) =
        include_of(req.include.as_deref(), &["vector", "contents", "metadata"])?;
    if distance {
        return Err(ApiError::bad("get has no distance to include"));
    }
    blocking(move || {
        let index = s.index(&req.index_name, req.index_key.as_ref())?;
        let items = index.get(&req.ids)?;
        let results: Vec<ResultItem> = items
            .into_iter()
            .map(|i| ResultItem {
                id: i.id,
                distance: None,
                metadata: if include.metadata { i.metadata } else { None },
                contents: if include.contents {
                    i.contents.map(contents_json)
                } else {
                    None
                },
                vector: include.vector.then_some(i.vector),
            })
            .collect();
        Ok(axum::Json(json!({ "results": results })))
    })
    .await
}

async fn delete_items(
    State(s): State<Arc<AppState>>,
    Json(req): Json<DeleteRequest>,
) -> ApiResult<SuccessResponse> {
    blocking(move || {
        let index = s.index(&req.index_name, req.index_key.as_ref())?;
        let n = index.delete(&req.ids)?;
        Ok(axum::Json(
            SuccessResponse::new(format!("Deleted {n} vectors")).with_count(n),
        ))
    })
    .await
}

#[derive(Serialize)]
struct ListIdsResponse {
    ids: Vec<String>,
    count: usize,
}

async fn list_ids(
    State(s): State<Arc<AppState>>,
    Json(req): Json<IndexRequest>,
) -> ApiResult<ListIdsResponse> {
    blocking(move || {
        let index = s.index(&req.index_name, req.index_key.as_ref())?;
        let ids = index.list_ids()?;
        Ok(axum::Json(ListIdsResponse {
            count: ids.len(),
            ids,
        }))
    })
    .await
}

async fn num_vectors(
    State(s): State<Arc<AppState>>,
    Json(req): Json<IndexRequest>,
) -> ApiResult<SuccessResponse> {
    blocking(move || {
        let index = s.index(&req.index_name, req.index_key.as_ref())?;
        let n = index.len();
        Ok(axum::Json(
            SuccessResponse::new(format!("{n} vectors")).with_count(n),
        ))
    })
    .await
}
