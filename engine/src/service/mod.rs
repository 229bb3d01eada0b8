//! The engine's HTTP service (`tkms engine serve`): the CyborgDB service API 0.17 (what the
//! `cyborgdb` 0.18 Python SDK speaks), keeping the older `index_config` form (API 0.12)
//! working, over one storage backend (docs/ARCHITECTURE.md §4.4).
//!
//! * Auth: every route but `GET /v1/health` and `GET /openapi.json` needs an `X-API-Key`
//!   header: one of the configured service keys (compared in constant time on their
//!   SHA-256), or a per-user key (`cdbk_…`, minted by `POST /v1/indexes/{name}/users`),
//!   which carries the user's own key to one index and grants only its scope.
//! * Routes and bodies: [`api`]; the OpenAPI 3 document, generated from the handlers, is
//!   [`openapi`] (served at `/openapi.json`, committed as `docs/openapi/engine.json`).
//! * Keys: each request carries its index KEK (`index_key`, 64 hex characters), checked by
//!   the engine (wrong key → 401, nothing changed). An index with a KMS envelope whose
//!   provider the service was started with ([`ServiceConfig::key_providers`]) may omit it:
//!   the service unwraps the KEK through the KMS when the request arrives (docs/PROTOCOL.md
//!   §13). KEKs are zeroized after use and never logged.
//! * Errors: CyborgDB's body `{"status_code", "detail"}` plus a stable `code`: 400 (bad
//!   input the engine refuses), 401 (API key or index key), 403 (scope), 404 (no such
//!   index, user or route), 405, 409 (exists / concurrent change / training running), 413
//!   (body too large), 415 (not JSON), 422 (body does not match the document), 500/502
//!   (storage, KMS). Handlers never panic on input: the engine validates everything (and a
//!   panic inside an engine call would surface as a 500).
//!
//! Engine calls are CPU-bound and synchronous; they run on tokio's blocking pool. One open
//! [`Index`] handle per index is cached (keyed by name, guarded by its KEK), and one per
//! user key (re-checked against storage on every request, so a revoked key stops at once).
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
mod error;
mod indexes;
mod vectors;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tkms_daemon::http::HttpLimits;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::keys::{UserKey, USER_KEY_ID_LEN};
use crate::kms::KeyProvider;
use crate::{Client, Index, IndexKey, StorageConfig};
use api::KeyHex;
pub use error::ErrorResponse;
use error::{ApiError, ApiResult};

/// Default largest request body: 256 MiB (an upsert of 100k × 384-d vectors as JSON is
/// about 80 MB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 << 20;
/// Default `top_k` of a query (CyborgDB's default).
pub const DEFAULT_TOP_K: usize = 100;
/// Shortest accepted API key.
pub const MIN_API_KEY_LEN: usize = 16;
/// The CyborgDB service API version served (`cyborgdb` Python SDK 0.18).
pub const API_VERSION: &str = "0.17.0";
/// Prefix of a per-user API key (CyborgDB's).
pub const USER_API_KEY_PREFIX: &str = "cdbk_";

/// Settings of the service.
pub struct ServiceConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Where the indexes live.
    pub storage: StorageConfig,
    /// Accepted `X-API-Key` values (at least one, each at least 16 characters).
    pub api_keys: Vec<Zeroizing<String>>,
    /// Providers that may wrap and unwrap index KEKs in KMS envelopes (`aws-kms`, `tkms`);
    /// a create request names one with `kms_name`.
    pub key_providers: Vec<Arc<dyn KeyProvider>>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Connection bounds and header, body and idle deadlines of the listener (its
    /// `max_body_bytes` is replaced by the one above).
    pub listener: HttpLimits,
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
            .field("listener", &self.listener)
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
            listener: HttpLimits::with_max_body(DEFAULT_MAX_BODY_BYTES),
        }
    }
}

/// A bound, not yet serving, service: [`Server::local_addr`] tells the port.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
    limits: HttpLimits,
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
    if config
        .api_keys
        .iter()
        .any(|k| k.starts_with(USER_API_KEY_PREFIX))
    {
        return Err(Error::InvalidArgument(format!(
            "service API keys must not start with {USER_API_KEY_PREFIX:?} (the prefix of per-user keys)"
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
        user_handles: Mutex::new(HashMap::new()),
        training: Mutex::new(BTreeSet::new()),
        openapi: openapi_json_text(),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::InvalidArgument(format!("cannot listen on {}: {e}", config.listen)))?;
    Ok(Server {
        listener,
        router: router(state, config.max_body_bytes),
        limits: HttpLimits {
            max_body_bytes: config.max_body_bytes,
            ..config.listener
        },
    })
}

impl Server {
    /// The bound address.
    pub fn local_addr(&self) -> crate::Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::Storage(format!("listener address: {e}")))
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight. Connections
    /// are bounded and timed as [`ServiceConfig::listener`] says ([`tkms_daemon::http`]).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> crate::Result<()> {
        tkms_daemon::http::serve(
            self.listener,
            self.router,
            self.limits,
            Arc::default(),
            shutdown,
        )
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

// ---------------------------------------------------------------------------------------
// Routes and the OpenAPI document

/// Document-level parts of the OpenAPI document; the paths and schemas come from the
/// handlers' `#[utoipa::path]` attributes, collected with the routes themselves
/// ([`public_routes`], [`authed_routes`]), so the document cannot list a route the service
/// does not serve or miss one it does.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tkms engine service",
        version = "0.17.0",
        description = "Encrypted vector search (tkms-engine) behind the CyborgDB service API \
                       0.17 (the `cyborgdb` 0.18 Python SDK), which also accepts the older \
                       `index_config` bodies of API 0.12. Errors are \
                       `{\"status_code\", \"detail\", \"code\"}`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorResponse)),
    modifiers(&ApiKeyScheme),
    tags(
        (name = "indexes", description = "Index life cycle, training and per-user keys"),
        (name = "vectors", description = "Items and queries"),
        (name = "service", description = "Health and this document")
    )
)]
struct ApiDoc;

/// Name of the `X-API-Key` security scheme in the document (CyborgDB's).
const API_KEY_SCHEME: &str = "APIKeyHeader";

struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY_SCHEME,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "A service API key, or a per-user key (`cdbk_…`) minted for one index",
            ))),
        );
    }
}

/// Routes that need no API key.
fn public_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(indexes::health))
        .routes(routes!(openapi_json))
}

/// Routes behind the `X-API-Key` check.
fn authed_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(indexes::create_index))
        .routes(routes!(indexes::delete_index))
        .routes(routes!(indexes::describe))
        .routes(routes!(indexes::train))
        .routes(routes!(indexes::list_indexes))
        .routes(routes!(indexes::training_status))
        .routes(routes!(indexes::create_user, indexes::list_users))
        .routes(routes!(indexes::delete_user))
        .routes(routes!(vectors::upsert))
        .routes(routes!(vectors::upsert_binary))
        .routes(routes!(vectors::query))
        .routes(routes!(vectors::query_binary))
        .routes(routes!(vectors::query_metadata))
        .routes(routes!(vectors::get_items))
        .routes(routes!(vectors::delete_items))
        .routes(routes!(vectors::list_ids))
        .routes(routes!(vectors::num_vectors))
}

/// The OpenAPI 3 document of the service, generated from the handlers (the committed copy is
/// `docs/openapi/engine.json`; `tests/openapi.rs` keeps them equal).
pub fn openapi() -> utoipa::openapi::OpenApi {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(public_routes())
        .merge(authed_routes())
        .into_openapi()
}

/// [`openapi`] as pretty-printed JSON with a final newline (the committed file's form).
pub fn openapi_json_text() -> String {
    let mut text = openapi().to_pretty_json().unwrap_or_else(|e| {
        format!("{{\"error\": \"the OpenAPI document failed to serialize: {e}\"}}")
    });
    text.push('\n');
    text
}

/// This service's OpenAPI 3 document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "service",
    operation_id = "openapi_json",
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json", body = Object))
)]
async fn openapi_json(State(s): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        s.openapi.clone(),
    )
        .into_response()
}

fn router(state: Arc<AppState>, max_body: usize) -> Router {
    let (public, _) = public_routes().split_for_parts();
    let (authed, _) = authed_routes()
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), auth))
        .split_for_parts();
    Router::new()
        .merge(public)
        .merge(authed)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------
// State, callers and keys

struct Cached {
    key: IndexKey,
    index: Arc<Index>,
}

struct UserCached {
    key: UserKey,
    index: Arc<Index>,
}

struct AppState {
    client: Client,
    api_key_digests: Vec<[u8; 32]>,
    providers: HashMap<String, Arc<dyn KeyProvider>>,
    /// Handles opened with an index KEK, by index name.
    handles: Mutex<HashMap<String, Cached>>,
    /// Handles opened with a user key, by index name and key id.
    user_handles: Mutex<HashMap<(String, [u8; USER_KEY_ID_LEN]), UserCached>>,
    /// Indexes whose training is running.
    training: Mutex<BTreeSet<String>>,
    /// The OpenAPI document, served as is.
    openapi: String,
}

/// Who sent a request (set by [`auth`]).
#[derive(Clone)]
enum Caller {
    /// A service API key: everything, with the index key (or a KMS envelope) per request.
    Service,
    /// A per-user key: the reads (and, read-write, the writes) of the one index it opens.
    User(Arc<UserKey>),
}

/// The `X-API-Key` check: a service key, or a well-formed user key (whether it opens the
/// index a request names is decided per request by the engine).
async fn auth(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get("x-api-key")
        .map(|v| v.as_bytes().to_vec());
    let caller = match presented {
        Some(p) if p.starts_with(USER_API_KEY_PREFIX.as_bytes()) => {
            parse_user_api_key(&p[USER_API_KEY_PREFIX.len()..]).map(|k| Caller::User(Arc::new(k)))
        }
        Some(p) => {
            let d: [u8; 32] = Sha256::digest(&p).into();
            let ok: bool = state
                .api_key_digests
                .iter()
                .fold(subtle::Choice::from(0), |acc, k| acc | k.ct_eq(&d))
                .into();
            ok.then_some(Caller::Service)
        }
        None => None,
    };
    match caller {
        Some(c) => {
            req.extensions_mut().insert(c);
            next.run(req).await
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid X-API-Key header",
        )
        .into_response(),
    }
}

/// The user key inside `cdbk_<base64url>`.
fn parse_user_api_key(b64: &[u8]) -> Option<UserKey> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .ok()?,
    );
    UserKey::from_bytes(&bytes).ok()
}

/// The API key handed to a user: `cdbk_` and the serialized user key, base64url.
fn user_api_key(key: &UserKey) -> Zeroizing<String> {
    Zeroizing::new(format!(
        "{USER_API_KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.to_bytes().as_slice())
    ))
}

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
                // An unknown index is a 404, not a missing key.
                if !self.client.contains_index(name)? {
                    return Err(Error::IndexNotFound(name.to_owned()).into());
                }
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing_key",
                    format!("index_key is required: index `{name}` has no KMS envelope"),
                ));
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

    /// An open handle of `name` for `caller`: with the request's key (or KMS envelope) for
    /// the service, with its own key for a user.
    fn open(
        &self,
        caller: &Caller,
        name: &str,
        key: Option<&KeyHex>,
    ) -> Result<Arc<Index>, ApiError> {
        match caller {
            Caller::Service => self.index(name, key),
            Caller::User(uk) => {
                if key.is_some() {
                    return Err(ApiError::bad(
                        "a request authenticated with a user key must not carry index_key: \
                         the user key opens the index",
                    ));
                }
                self.user_index(name, uk)
            }
        }
    }

    /// The KEK of an operation only the index's owner may do (delete the index, manage user
    /// keys): refused for user keys.
    fn admin_key(
        &self,
        caller: &Caller,
        name: &str,
        key: Option<&KeyHex>,
        operation: &str,
    ) -> Result<IndexKey, ApiError> {
        match caller {
            Caller::Service => self.request_key(name, key),
            Caller::User(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_denied",
                format!("{operation} needs a service API key and the index key, not a user key"),
            )),
        }
    }

    /// An open handle of `name` under its KEK, checked against the request's key.
    fn index(&self, name: &str, key: Option<&KeyHex>) -> Result<Arc<Index>, ApiError> {
        let key = self.request_key(name, key)?;
        self.index_with(name, key)
    }

    fn index_with(&self, name: &str, key: IndexKey) -> Result<Arc<Index>, ApiError> {
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

    /// An open handle of `name` under a user key. The key is checked against storage on
    /// every call (two small reads), so a revoked key is refused even where a handle is
    /// cached.
    fn user_index(&self, name: &str, key: &UserKey) -> Result<Arc<Index>, ApiError> {
        // Anyone can make up a well-formed user key: it must not tell which indexes exist.
        self.client.check_user_key(name, key).map_err(|e| match e {
            Error::IndexNotFound(_) => Error::WrongKey {
                index: name.to_owned(),
            },
            e => e,
        })?;
        let id = (name.to_owned(), key.key_id());
        {
            let handles = self
                .user_handles
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = handles.get(&id) {
                if bool::from(c.key.ct_eq(key)) {
                    return Ok(Arc::clone(&c.index));
                }
            }
        }
        let index = Arc::new(self.client.load_index_with_user_key(name, key)?);
        self.user_handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                id,
                UserCached {
                    key: key.clone(),
                    index: Arc::clone(&index),
                },
            );
        Ok(index)
    }

    /// Drops every cached handle of `name` (after its deletion).
    fn forget(&self, name: &str) {
        self.handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        self.user_handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(n, _), _| n != name);
    }

    /// Drops the cached handle of one user key (after its revocation).
    fn forget_user(&self, name: &str, key_id: &[u8; USER_KEY_ID_LEN]) {
        self.user_handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(name.to_owned(), *key_id));
    }

    /// Whether `caller` may see that index `name` exists (a user key only sees the index it
    /// opens).
    fn visible(&self, caller: &Caller, name: &str) -> bool {
        match caller {
            Caller::Service => true,
            Caller::User(uk) => self.client.check_user_key(name, uk).is_ok(),
        }
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

/// [`blocking`] for a handler answering JSON.
async fn blocking_json<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> ApiResult<T> {
    blocking(f).await.map(axum::Json)
}
