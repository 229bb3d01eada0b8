//! Handlers of the index routes: life cycle, training, health, and per-user keys.

use std::sync::{Arc, PoisonError};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Extension;
use serde_json::Map;

use super::api::{
    CreateIndexRequest, CreateUserRequest, CreateUserResponse, DescribeResponse, HealthResponse,
    IndexConfigInfo, IndexListResponse, IndexRequest, KeyHex, ListUsersResponse, MetricName,
    Permission, StoragePrecision, SuccessResponse, TrainRequest, TrainingStatusResponse, UserInfo,
};
use super::error::{ApiError, ApiResult, BodylessErrorResponses, ErrorResponses, Json};
use super::{blocking, blocking_json, user_api_key, AppState, Cached, Caller, API_VERSION};
use crate::keys::USER_KEY_ID_LEN;
use crate::{IndexConfig, Scope, TrainParams, AUTO};

/// The index type every index reports.
const INDEX_TYPE: &str = "ivfsq8";

/// Health check.
#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "service",
    operation_id = "health_check_v1_health_get",
    responses((status = 200, description = "The service is up", body = HealthResponse))
)]
pub(super) async fn health() -> axum::Json<HealthResponse> {
    axum::Json(HealthResponse {
        status: "healthy".into(),
        api_version: API_VERSION.into(),
    })
}

/// The indexes the caller may see (a user key: the index it opens).
#[utoipa::path(
    get,
    path = "/v1/indexes/list",
    tag = "indexes",
    operation_id = "list_indexes_v1_indexes_list_get",
    security(("APIKeyHeader" = [])),
    responses((status = 200, description = "Index names, sorted", body = IndexListResponse), BodylessErrorResponses)
)]
pub(super) async fn list_indexes(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<IndexListResponse> {
    blocking_json(move || {
        let mut indexes = s.client.list_indexes()?;
        indexes.retain(|name| s.visible(&caller, name));
        Ok(IndexListResponse { indexes })
    })
    .await
}

/// One of two optional values that must agree when both are given.
fn one_of<T: PartialEq + Copy + std::fmt::Debug>(
    what: &str,
    top: Option<T>,
    nested: Option<T>,
) -> Result<Option<T>, ApiError> {
    match (top, nested) {
        (Some(a), Some(b)) if a != b => Err(ApiError::bad(format!(
            "{what} is given twice with different values ({a:?} and index_config.{what} {b:?})"
        ))),
        (a, b) => Ok(a.or(b)),
    }
}

/// The index configuration of a create request (either form).
fn build_config(req: &CreateIndexRequest) -> Result<IndexConfig, ApiError> {
    if req.embedding_model.is_some() {
        return Err(ApiError::unsupported(
            "embedding_model is not supported: upsert vectors, not text",
        ));
    }
    if let Some(p) = req.storage_precision {
        if p != StoragePrecision::Float32 {
            return Err(ApiError::unsupported(format!(
                "storage_precision {p:?} is not supported: the engine stores float32 vectors"
            )));
        }
    }
    if req.metadata_schema.is_some() {
        return Err(ApiError::unsupported(
            "metadata_schema is not supported: every metadata field can be filtered on",
        ));
    }
    if req.text_fields.is_some() || req.bm25_k1.is_some() || req.bm25_b.is_some() {
        return Err(ApiError::unsupported(
            "text_fields, bm25_k1 and bm25_b are not supported: the engine has no full-text search",
        ));
    }
    let nested = req.index_config.as_ref();
    let dimension = one_of("dimension", req.dimension, nested.and_then(|c| c.dimension))?;
    if dimension == Some(0) {
        return Err(ApiError::bad(
            "dimension must be at least 1 (omit it to take it from the first upsert)",
        ));
    }
    let metric = one_of("metric", req.metric, nested.and_then(|c| c.metric))?;
    let mut config = IndexConfig::new(dimension.unwrap_or(AUTO)).with_n_lists(AUTO);
    if let Some(m) = metric {
        config = config.with_metric(m.into());
    }
    if let Some(c) = nested {
        if let Some(n) = c.n_lists {
            if n == 0 {
                return Err(ApiError::bad(
                    "index_config.n_lists must be at least 1 (omit it to choose at training)",
                ));
            }
            config = config.with_n_lists(n);
        }
        if let Some(n) = c.n_probes {
            config = config.with_n_probes(n);
        }
        if let Some(n) = c.rerank_mult {
            config = config.with_rerank_mult(n);
        }
    }
    Ok(config)
}

/// Creates an index: under the caller's `index_key`, or under a fresh KEK wrapped by the KMS
/// provider `kms_name` (then later requests omit the key).
#[utoipa::path(
    post,
    path = "/v1/indexes/create",
    tag = "indexes",
    operation_id = "create_index_v1_indexes_create_post",
    security(("APIKeyHeader" = [])),
    request_body = CreateIndexRequest,
    responses((status = 200, description = "Created", body = SuccessResponse), ErrorResponses)
)]
pub(super) async fn create_index(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<CreateIndexRequest>,
) -> ApiResult<SuccessResponse> {
    if matches!(caller, Caller::User(_)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "creating an index needs a service API key, not a user key",
        ));
    }
    let config = build_config(&req)?;
    let kms = match (&req.kms_name, &req.kms) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad("give kms_name or kms, not both"));
        }
        (Some(name), None) => Some((name.clone(), name.clone())),
        (None, Some(k)) => Some((
            k.provider.clone(),
            k.kms_name.clone().unwrap_or_else(|| k.provider.clone()),
        )),
        (None, None) => None,
    };
    blocking_json(move || {
        let name = req.index_name.as_str();
        match (&req.index_key, kms) {
            (Some(k), None) => {
                let key = super::parse_key(&k.0)?;
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
            (None, Some((provider, kms_name))) => {
                let p = s.providers.get(&provider).ok_or_else(|| {
                    let mut known: Vec<&str> = s.providers.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    ApiError::bad(format!(
                        "KMS provider {provider:?} is not configured on this service (configured: {known:?})"
                    ))
                })?;
                s.client
                    .create_index_with_kms(name, p.as_ref(), &kms_name, config)?;
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::bad(
                    "give either index_key or kms_name, not both: the KMS draws the key",
                ))
            }
            (None, None) => {
                return Err(ApiError::bad(
                    "index_key (64 hex characters) or kms_name is required",
                ))
            }
        }
        Ok(SuccessResponse::new(format!(
            "Index '{name}' created successfully"
        )))
    })
    .await
}

/// Deletes an index and all its data (needs the index key; refused for user keys).
#[utoipa::path(
    post,
    path = "/v1/indexes/delete",
    tag = "indexes",
    operation_id = "delete_index_v1_indexes_delete_post",
    security(("APIKeyHeader" = [])),
    request_body = IndexRequest,
    responses((status = 200, description = "Deleted", body = SuccessResponse), ErrorResponses)
)]
pub(super) async fn delete_index(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<IndexRequest>,
) -> ApiResult<SuccessResponse> {
    blocking_json(move || {
        let key = s.admin_key(
            &caller,
            &req.index_name,
            req.index_key.as_ref(),
            "deleting an index",
        )?;
        s.client.delete_index(&req.index_name, &key)?;
        s.forget(&req.index_name);
        Ok(SuccessResponse::new(format!(
            "Index '{}' deleted successfully",
            req.index_name
        )))
    })
    .await
}

/// Describes an index (the fields of both SDK generations).
#[utoipa::path(
    post,
    path = "/v1/indexes/describe",
    tag = "indexes",
    operation_id = "get_index_info_v1_indexes_describe_post",
    security(("APIKeyHeader" = [])),
    request_body = IndexRequest,
    responses((status = 200, description = "The index", body = DescribeResponse), ErrorResponses)
)]
pub(super) async fn describe(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<IndexRequest>,
) -> ApiResult<DescribeResponse> {
    blocking_json(move || {
        let index = s.open(&caller, &req.index_name, req.index_key.as_ref())?;
        index.refresh()?;
        let c = index.config();
        let n_lists = index.n_lists();
        let metric = MetricName::from(c.metric);
        Ok(DescribeResponse {
            index_name: index.name().to_owned(),
            index_type: INDEX_TYPE.into(),
            is_trained: index.is_trained(),
            dimension: c.dimension,
            metric,
            n_lists,
            num_vectors: index.len(),
            index_config: IndexConfigInfo {
                index_type: INDEX_TYPE.into(),
                dimension: c.dimension,
                metric,
                n_lists,
                n_probes: c.n_probes,
                rerank_mult: c.rerank_mult,
            },
        })
    })
    .await
}

/// Removes an index name from the training set when dropped.
struct Training<'a> {
    state: &'a AppState,
    name: String,
}

impl Drop for Training<'_> {
    fn drop(&mut self) {
        self.state
            .training
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.name);
    }
}

/// Trains the index (k-means IVF lists) before answering. `n_lists` omitted: the number set
/// at creation, else (first training) one chosen from the item count, else (retraining) the
/// number built last time.
#[utoipa::path(
    post,
    path = "/v1/indexes/train",
    tag = "indexes",
    operation_id = "train_index_v1_indexes_train_post",
    security(("APIKeyHeader" = [])),
    request_body = TrainRequest,
    responses((status = 200, description = "Trained", body = SuccessResponse), ErrorResponses)
)]
pub(super) async fn train(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<TrainRequest>,
) -> ApiResult<SuccessResponse> {
    let mut params = TrainParams::default();
    if let Some(n) = req.n_lists {
        if n == 0 {
            return Err(ApiError::bad(
                "n_lists must be at least 1 (omit it to let the service choose)",
            ));
        }
        params = params.n_lists(n);
    }
    if let Some(n) = req.max_iters {
        params = params.max_iters(n);
    }
    if let Some(n) = req.sample_size {
        params = params.sample_size(n);
    }
    blocking_json(move || {
        let index = s.open(&caller, &req.index_name, req.index_key.as_ref())?;
        let _training = {
            let mut set = s.training.lock().unwrap_or_else(PoisonError::into_inner);
            if !set.insert(req.index_name.clone()) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "training_in_progress",
                    format!("index '{}' is being trained", req.index_name),
                ));
            }
            Training {
                state: &s,
                name: req.index_name.clone(),
            }
        };
        index.train(&params)?;
        Ok(SuccessResponse::new(format!(
            "Index '{}' trained successfully with {} lists",
            req.index_name,
            index.n_lists()
        )))
    })
    .await
}

/// Which indexes are being trained now (training runs inside the train request; the service
/// never trains on its own).
#[utoipa::path(
    get,
    path = "/v1/indexes/training-status",
    tag = "indexes",
    operation_id = "get_training_status_v1_indexes_training_status_get",
    security(("APIKeyHeader" = [])),
    responses((status = 200, description = "Training status", body = TrainingStatusResponse), BodylessErrorResponses)
)]
pub(super) async fn training_status(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<TrainingStatusResponse> {
    blocking_json(move || {
        let names: Vec<String> = s
            .training
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        let training_indexes: Vec<String> = names
            .into_iter()
            .filter(|n| s.visible(&caller, n))
            .collect();
        Ok(TrainingStatusResponse {
            currently_training: training_indexes.first().cloned(),
            worker_running: !training_indexes.is_empty(),
            training_indexes,
            retrain_threshold: 0,
            queued_indexes: Vec::new(),
            worker_pid: 0,
            global_training: Map::new(),
        })
    })
    .await
}

/// The scope of a permission set.
fn scope_of(permissions: &[Permission]) -> Result<Scope, ApiError> {
    let read = permissions.contains(&Permission::Read);
    let write = permissions.contains(&Permission::Write);
    match (read, write) {
        (true, false) => Ok(Scope::ReadOnly),
        (true, true) => Ok(Scope::ReadWrite),
        (false, true) => Err(ApiError::bad(
            "permissions [\"write\"] alone is not supported: use [\"read\"] or [\"read\", \"write\"]",
        )),
        (false, false) => Err(ApiError::bad(
            "permissions must be [\"read\"] or [\"read\", \"write\"]",
        )),
    }
}

fn permissions_of(scope: Scope) -> Vec<Permission> {
    match scope {
        Scope::ReadOnly => vec![Permission::Read],
        Scope::ReadWrite => vec![Permission::Read, Permission::Write],
    }
}

/// The `X-Index-Key` header of the user routes.
fn header_key(headers: &HeaderMap) -> Result<Option<KeyHex>, ApiError> {
    headers
        .get("x-index-key")
        .map(|v| {
            v.to_str()
                .map(|s| KeyHex(zeroize::Zeroizing::new(s.to_owned())))
                .map_err(|_| ApiError::bad("X-Index-Key is not 64 hex characters"))
        })
        .transpose()
}

/// Mints a per-user API key for the index: read-only (`["read"]`) or read-write. The key
/// is returned once and never stored; it opens only this index, within its scope, and needs
/// no index key. Needs a service API key and the index key (or the index's KMS envelope).
#[utoipa::path(
    post,
    path = "/v1/indexes/{index_name}/users",
    tag = "indexes",
    operation_id = "create_user_v1_indexes_index_name_users_post",
    security(("APIKeyHeader" = [])),
    params(("index_name" = String, Path, description = "The index")),
    request_body = CreateUserRequest,
    responses((status = 200, description = "The new user key", body = CreateUserResponse), ErrorResponses)
)]
pub(super) async fn create_user(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(index_name): Path<String>,
    Json(req): Json<CreateUserRequest>,
) -> ApiResult<CreateUserResponse> {
    let scope = scope_of(&req.permissions)?;
    blocking_json(move || {
        let key = s.admin_key(
            &caller,
            &index_name,
            req.index_key.as_ref(),
            "minting a user key",
        )?;
        let index = s.index_with(&index_name, key)?;
        let user = index.mint_user_key(scope)?;
        Ok(CreateUserResponse {
            user_id: hex::encode(user.key_id()),
            api_key: user_api_key(&user).to_string(),
        })
    })
    .await
}

/// The user keys of the index. Needs a service API key and the index key (`X-Index-Key`,
/// or the index's KMS envelope).
#[utoipa::path(
    get,
    path = "/v1/indexes/{index_name}/users",
    tag = "indexes",
    operation_id = "list_users_v1_indexes_index_name_users_get",
    security(("APIKeyHeader" = [])),
    params(
        ("index_name" = String, Path, description = "The index"),
        ("X-Index-Key" = Option<String>, Header, description = "The index key (64 hex characters)")
    ),
    responses((status = 200, description = "The user keys", body = ListUsersResponse), BodylessErrorResponses)
)]
pub(super) async fn list_users(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(index_name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<ListUsersResponse> {
    let key = header_key(&headers)?;
    blocking_json(move || {
        let key = s.admin_key(&caller, &index_name, key.as_ref(), "listing user keys")?;
        let index = s.index_with(&index_name, key)?;
        let users = index
            .list_user_keys()?
            .into_iter()
            .map(|(id, scope)| UserInfo {
                user_id: hex::encode(id),
                permissions: permissions_of(scope),
            })
            .collect();
        Ok(ListUsersResponse { users })
    })
    .await
}

/// Revokes a user key: it is refused from the next request on. Needs a service API key and
/// the index key (`X-Index-Key`, or the index's KMS envelope).
#[utoipa::path(
    delete,
    path = "/v1/indexes/{index_name}/users/{user_id}",
    tag = "indexes",
    operation_id = "delete_user_v1_indexes_index_name_users_user_id_delete",
    security(("APIKeyHeader" = [])),
    params(
        ("index_name" = String, Path, description = "The index"),
        ("user_id" = String, Path, description = "The user key's id (32 hex characters)"),
        ("X-Index-Key" = Option<String>, Header, description = "The index key (64 hex characters)")
    ),
    responses((status = 204, description = "Revoked"), BodylessErrorResponses)
)]
pub(super) async fn delete_user(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path((index_name, user_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let key = header_key(&headers)?;
    let id: [u8; USER_KEY_ID_LEN] = hex::decode(&user_id)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            ApiError::bad(format!(
                "user_id must be {} hex characters",
                2 * USER_KEY_ID_LEN
            ))
        })?;
    blocking(move || {
        let key = s.admin_key(&caller, &index_name, key.as_ref(), "revoking a user key")?;
        let index = s.index_with(&index_name, key)?;
        let existed = index.revoke_user_key(&id)?;
        s.forget_user(&index_name, &id);
        if existed {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "user_not_found",
                format!("index '{index_name}' has no user key {user_id}"),
            ))
        }
    })
    .await
}
