//! Handlers of the vector routes: upsert (JSON and binary), query (JSON, binary, metadata
//! only), get, delete, list_ids, num_vectors.

use std::cmp::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::Extension;
use base64::Engine;
use serde_json::Value;

use super::api::{
    contents_string, BinaryQueryRequest, BinaryUpsertRequest, DeleteRequest, GetInclude,
    GetRequest, GetResponse, GetResultItem, IndexRequest, ListIdsResponse, MetadataResult, Object,
    OrderBy, QueryInclude, QueryMetadataRequest, QueryMetadataResponse, QueryParamsModel,
    QueryRequest, QueryResponse, QueryResultItem, QueryVectors, SuccessResponse, UpsertRequest,
};
use super::error::{ApiError, ApiResult, ErrorResponses, Json};
use super::{blocking_json, AppState, Caller, DEFAULT_TOP_K};
use crate::{Include, Item, QueryParams, MAX_DIMENSION};

/// Contents as stored: empty means none (CyborgDB's convention).
fn contents_bytes(c: Option<String>) -> Option<Vec<u8>> {
    c.filter(|c| !c.is_empty()).map(String::into_bytes)
}

/// Upserts items given as JSON (`{id, vector, contents, metadata}`); an index created
/// without a dimension takes it from the first item.
#[utoipa::path(
    post,
    path = "/v1/vectors/upsert",
    tag = "vectors",
    operation_id = "upsert_vectors_v1_vectors_upsert_post",
    security(("APIKeyHeader" = [])),
    request_body = UpsertRequest,
    responses((status = 200, description = "Upserted", body = SuccessResponse), ErrorResponses)
)]
pub(super) async fn upsert(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<UpsertRequest>,
) -> ApiResult<SuccessResponse> {
    blocking_json(move || {
        let index = s.open(&caller, &req.index_name, req.index_key.as_ref())?;
        let n = req.items.len();
        let items = req
            .items
            .into_iter()
            .map(|i| Item {
                id: i.id,
                vector: i.vector,
                contents: contents_bytes(i.contents),
                metadata: i.metadata.map(Value::Object),
            })
            .collect();
        index.upsert(items)?;
        Ok(SuccessResponse::new(format!("Upserted {n} vectors")).with_count(n))
    })
    .await
}

/// Rows of `dimension` little-endian float32 values from base64.
fn decode_rows(b64: &str, dimension: usize) -> Result<Vec<Vec<f32>>, ApiError> {
    if dimension == 0 || dimension > MAX_DIMENSION {
        return Err(ApiError::bad(format!(
            "dimension must be 1..={MAX_DIMENSION}, got {dimension}"
        )));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| ApiError::bad(format!("vectors_b64 is not base64: {e}")))?;
    let row = 4 * dimension;
    if bytes.len() % row != 0 {
        return Err(ApiError::bad(format!(
            "vectors_b64 holds {} bytes, not a whole number of rows of {dimension} float32 values ({row} bytes)",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(row)
        .map(|r| {
            r.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect())
}

/// Upserts items given as one base64 block of float32 vectors (the SDK's path for numpy
/// arrays), with optional per-row metadata and contents.
#[utoipa::path(
    post,
    path = "/v1/vectors/upsert_binary",
    tag = "vectors",
    operation_id = "upsert_vectors_binary_v1_vectors_upsert_binary_post",
    security(("APIKeyHeader" = [])),
    request_body = BinaryUpsertRequest,
    responses((status = 200, description = "Upserted", body = SuccessResponse), ErrorResponses)
)]
pub(super) async fn upsert_binary(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<BinaryUpsertRequest>,
) -> ApiResult<SuccessResponse> {
    let batch = req.batch;
    let rows = decode_rows(&batch.vectors_b64, batch.dimension)?;
    let n = batch.ids.len();
    if rows.len() != n {
        return Err(ApiError::bad(format!(
            "{n} ids but {} vectors of dimension {}",
            rows.len(),
            batch.dimension
        )));
    }
    let metadata = batch.metadata.unwrap_or_else(|| vec![None; n]);
    let contents = batch.contents.unwrap_or_else(|| vec![None; n]);
    if metadata.len() != n || contents.len() != n {
        return Err(ApiError::bad(format!(
            "{n} ids but {} metadata and {} contents entries (give one per id, or none)",
            metadata.len(),
            contents.len()
        )));
    }
    let items: Vec<Item> = batch
        .ids
        .into_iter()
        .zip(rows)
        .zip(metadata.into_iter().zip(contents))
        .map(|((id, vector), (m, c))| Item {
            id,
            vector,
            contents: contents_bytes(c),
            metadata: m.map(Value::Object),
        })
        .collect();
    blocking_json(move || {
        let index = s.open(&caller, &req.index_name, req.index_key.as_ref())?;
        index.upsert(items)?;
        Ok(SuccessResponse::new(format!("Upserted {n} vectors")).with_count(n))
    })
    .await
}

/// Search parameters checked, and which fields to return.
fn query_params(p: QueryParamsModel) -> Result<QueryParams, ApiError> {
    if p.hybrid {
        return Err(ApiError::unsupported(
            "text, text_fields, text_field_weights, require_all_terms, alpha, rrf_k and \
             window_mult are not supported: the engine has no full-text (hybrid) search",
        ));
    }
    let mut include = Include::default();
    for f in p.include.unwrap_or_default() {
        match f {
            // The distance is always returned.
            QueryInclude::Distance => {}
            QueryInclude::Metadata => include.metadata = true,
            QueryInclude::Contents => include.contents = true,
            QueryInclude::Vector => include.vector = true,
        }
    }
    let mut params = QueryParams::new(p.top_k.unwrap_or(DEFAULT_TOP_K)).include(include);
    if let Some(n) = p.n_probes {
        params = params.n_probes(n);
    }
    if let Some(m) = p.rerank_mult {
        params = params.rerank_mult(m);
    }
    if let Some(f) = p.filters.filter(|f| !f.is_empty()) {
        params = params.filter(Value::Object(f));
    }
    Ok(params)
}

fn result_item(r: crate::QueryResult) -> QueryResultItem {
    QueryResultItem {
        id: r.id,
        distance: r.distance,
        metadata: r.metadata,
        contents: r.contents.map(contents_string),
        vector: r.vector,
    }
}

fn batch_results(results: Vec<Vec<crate::QueryResult>>) -> QueryResponse {
    QueryResponse {
        results: results
            .into_iter()
            .map(|rs| rs.into_iter().map(result_item).collect())
            .collect(),
    }
}

/// The nearest items to one query vector or to each of a batch (JSON arrays). The answer
/// always holds one list of hits per query vector, with distances.
#[utoipa::path(
    post,
    path = "/v1/vectors/query",
    tag = "vectors",
    operation_id = "query_vectors_v1_vectors_query_post",
    security(("APIKeyHeader" = [])),
    request_body = QueryRequest,
    responses((status = 200, description = "One list of hits per query vector", body = QueryResponse), ErrorResponses)
)]
pub(super) async fn query(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Json(mut req): Json<QueryRequest>,
) -> ApiResult<QueryResponse> {
    if req.query_contents.is_some() {
        return Err(ApiError::unsupported(
            "query_contents is not supported (no embedding model): send query_vectors",
        ));
    }
    let params = query_params(req.take_params())?;
    let vectors = req
        .query_vectors
        .take()
        .ok_or_else(|| ApiError::bad("query_vectors is required"))?;
    blocking_json(move || {
        let index = s.open(&caller, &req.index_name, req.index_key.as_ref())?;
        let results = match vectors {
            QueryVectors::One(v) => vec![index.query(&v, &params)?],
            QueryVectors::Many(vs) => index.query_batch(&vs, &params)?,
        };
        Ok(batch_results(results))
    })
    .await
}

/// The nearest items to each query vector given as one base64 block of float32 values (the
/// SDK's path for numpy arrays).
#[utoipa::path(
    post,
    path = "/v1/vectors/query_binary",
    tag = "vectors",
    operation_id = "query_vectors_binary_v1_vectors_query_binary_post",
    security(("APIKeyHeader" = [])),
    request_body = BinaryQueryRequest,
    responses((status = 200, description = "One list of hits per query vector", body = QueryResponse), ErrorResponses)
)]
pub(super) async fn query_binary(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Json(mut req): Json<BinaryQueryRequest>,
) -> ApiResult<QueryResponse> {
    let params = query_params(req.take_params())?;
    let vectors = decode_rows(&req.batch.vectors_b64, req.batch.dimension)?;
    blocking_json(move || {
        let index = s.open(&caller, &req.index_name, req.index_key.as_ref())?;
        Ok(batch_results(index.query_batch(&vectors, &params)?))
    })
    .await
}

/// The value at a dot path of a metadata object.
fn field<'a>(metadata: Option<&'a Value>, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(metadata?, |v, part| v.as_object()?.get(part))
}

/// Order of two sort keys: numbers by value, strings lexicographically, booleans false
/// first; numbers before strings before booleans. `None` (missing or not a scalar) sorts
/// after every value, whatever the direction.
fn key_order(a: Option<&Value>, b: Option<&Value>, ascending: bool) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Number(_) => 0,
            Value::String(_) => 1,
            _ => 2,
        }
    }
    fn scalar(v: Option<&Value>) -> Option<&Value> {
        v.filter(|v| matches!(v, Value::Number(_) | Value::String(_) | Value::Bool(_)))
    }
    match (scalar(a), scalar(b)) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => {
            let o = rank(x).cmp(&rank(y)).then_with(|| match (x, y) {
                (Value::Number(p), Value::Number(q)) => p
                    .as_f64()
                    .unwrap_or(f64::NAN)
                    .total_cmp(&q.as_f64().unwrap_or(f64::NAN)),
                (Value::String(p), Value::String(q)) => p.cmp(q),
                (Value::Bool(p), Value::Bool(q)) => p.cmp(q),
                _ => Ordering::Equal,
            });
            if ascending {
                o
            } else {
                o.reverse()
            }
        }
    }
}

/// The sort field and direction of a metadata query.
fn order_of(
    order_by: Option<OrderBy>,
    ascending: bool,
) -> Result<Option<(String, bool)>, ApiError> {
    match order_by {
        None => Ok(None),
        Some(OrderBy::Field(f)) if !f.is_empty() => Ok(Some((f, ascending))),
        Some(OrderBy::Field(_)) => Err(ApiError::bad("order_by must name a metadata field")),
        Some(OrderBy::Directed(map)) => {
            let mut it = map.into_iter();
            match (it.next(), it.next()) {
                (Some((f, d)), None) if !f.is_empty() && (d == 1 || d == -1) => {
                    Ok(Some((f, d == 1)))
                }
                _ => Err(ApiError::bad(
                    "order_by as an object must be {\"field\": 1} or {\"field\": -1}",
                )),
            }
        }
    }
}

/// The items whose metadata matches a filter, without a vector: every segment is read (the
/// engine has no metadata index). Sorted by `order_by` when given (items missing the field
/// last, then by id), else in id order; `top_k` applies after sorting.
#[utoipa::path(
    post,
    path = "/v1/vectors/query_metadata",
    tag = "vectors",
    operation_id = "query_metadata_v1_vectors_query_metadata_post",
    security(("APIKeyHeader" = [])),
    request_body = QueryMetadataRequest,
    responses((status = 200, description = "Matching items", body = QueryMetadataResponse), ErrorResponses)
)]
pub(super) async fn query_metadata(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<QueryMetadataRequest>,
) -> ApiResult<QueryMetadataResponse> {
    if req.text.is_some()
        || req.text_fields.is_some()
        || req.text_field_weights.is_some()
        || req.require_all_terms.is_some()
    {
        return Err(ApiError::unsupported(
            "text, text_fields, text_field_weights and require_all_terms are not supported: the \
             engine has no full-text search",
        ));
    }
    if req.top_k == Some(0) {
        return Err(ApiError::bad(
            "top_k must be at least 1 (omit it for every match)",
        ));
    }
    let order = order_of(req.order_by, req.ascending.unwrap_or(true))?;
    let filter: Option<Object> = req.filters.filter(|f| !f.is_empty());
    blocking_json(move || {
        let index = s.open(&caller, &req.index_name, req.index_key.as_ref())?;
        let filter = filter.map(Value::Object);
        let mut hits = index.query_metadata(filter.as_ref())?;
        match &order {
            Some((f, asc)) => hits.sort_by(|a, b| {
                key_order(field(a.1.as_ref(), f), field(b.1.as_ref(), f), *asc)
                    .then_with(|| a.0.cmp(&b.0))
            }),
            None => hits.sort_by(|a, b| a.0.cmp(&b.0)),
        }
        if let Some(k) = req.top_k {
            hits.truncate(k);
        }
        let ids: Vec<String> = hits.into_iter().map(|(id, _)| id).collect();
        Ok(QueryMetadataResponse {
            results: ids
                .iter()
                .map(|id| MetadataResult { id: id.clone() })
                .collect(),
            count: ids.len(),
            ids,
        })
    })
    .await
}

/// Items by id, in request order (unknown ids are skipped).
#[utoipa::path(
    post,
    path = "/v1/vectors/get",
    tag = "vectors",
    operation_id = "get_vectors_v1_vectors_get_post",
    security(("APIKeyHeader" = [])),
    request_body = GetRequest,
    responses((status = 200, description = "The items found", body = GetResponse), ErrorResponses)
)]
pub(super) async fn get_items(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<GetRequest>,
) -> ApiResult<GetResponse> {
    let include = req.include.as_deref().map_or(Include::all(), |fields| {
        let mut inc = Include::default();
        for f in fields {
            match f {
                GetInclude::Metadata => inc.metadata = true,
                GetInclude::Contents => inc.contents = true,
                GetInclude::Vector => inc.vector = true,
            }
        }
        inc
    });
    blocking_json(move || {
        let index = s.open(&caller, &req.index_name, req.index_key.as_ref())?;
        let results = index
            .get(&req.ids)?
            .into_iter()
            .map(|i| GetResultItem {
                id: i.id,
                metadata: if include.metadata { i.metadata } else { None },
                contents: if include.contents {
                    i.contents.map(contents_string)
                } else {
                    None
                },
                vector: include.vector.then_some(i.vector),
            })
            .collect();
        Ok(GetResponse { results })
    })
    .await
}

/// Deletes items by id (unknown ids are ignored); `count` says how many were deleted.
#[utoipa::path(
    post,
    path = "/v1/vectors/delete",
    tag = "vectors",
    operation_id = "delete_vectors_v1_vectors_delete_post",
    security(("APIKeyHeader" = [])),
    request_body = DeleteRequest,
    responses((status = 200, description = "Deleted", body = SuccessResponse), ErrorResponses)
)]
pub(super) async fn delete_items(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<DeleteRequest>,
) -> ApiResult<SuccessResponse> {
    blocking_json(move || {
        let index = s.open(&caller, &req.index_name, req.index_key.as_ref())?;
        let n = index.delete(&req.ids)?;
        Ok(SuccessResponse::new(format!("Deleted {n} vectors")).with_count(n))
    })
    .await
}

/// Every id in the index, sorted.
#[utoipa::path(
    post,
    path = "/v1/vectors/list_ids",
    tag = "vectors",
    operation_id = "list_ids_v1_vectors_list_ids_post",
    security(("APIKeyHeader" = [])),
    request_body = IndexRequest,
    responses((status = 200, description = "The ids", body = ListIdsResponse), ErrorResponses)
)]
pub(super) async fn list_ids(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<IndexRequest>,
) -> ApiResult<ListIdsResponse> {
    blocking_json(move || {
        let index = s.open(&caller, &req.index_name, req.index_key.as_ref())?;
        let ids = index.list_ids()?;
        Ok(ListIdsResponse {
            count: ids.len(),
            ids,
        })
    })
    .await
}

/// The number of items (`count`).
#[utoipa::path(
    post,
    path = "/v1/vectors/num_vectors",
    tag = "vectors",
    operation_id = "get_index_size_v1_vectors_num_vectors_post",
    security(("APIKeyHeader" = [])),
    request_body = IndexRequest,
    responses((status = 200, description = "The number of items", body = SuccessResponse), ErrorResponses)
)]
pub(super) async fn num_vectors(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<IndexRequest>,
) -> ApiResult<SuccessResponse> {
    blocking_json(move || {
        let index = s.open(&caller, &req.index_name, req.index_key.as_ref())?;
        index.refresh()?;
        let n = index.len();
        Ok(SuccessResponse::new(format!("{n} vectors")).with_count(n))
    })
    .await
}
