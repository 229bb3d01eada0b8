//! The operator's endpoints, behind `Authorization: Bearer <operator token>`: run a DKG or a
//! reshare, survey the nodes, list the epochs.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::State,
    http::{header, HeaderMap, StatusCode},
    Json,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::{error::ErrorBody, ApiError, ApiResult, AppState};
use crate::admin::{Admin, DroppedMember, EpochNode, EpochRecord, NodeView};

/// Body of `POST /admin/dkg` and `/admin/reshare`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CeremonyBody {
    /// The new threshold `t`.
    pub threshold: u16,
    /// The committee's gRPC URLs (for a reshare, default: the served epoch's nodes).
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
}

/// A key epoch, as a ceremony's answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EpochResponse {
    /// The epoch number.
    pub epoch: u64,
    /// Its threshold.
    pub threshold: u16,
    /// The cluster public key, compressed `0x` hex (unchanged by a reshare).
    pub public_key: String,
    /// The ceremony's agreed transcript hash, `0x` hex.
    pub transcript_hash: String,
    /// The nodes holding shares.
    pub nodes: Vec<EpochNode>,
    /// Every index the ceremony dealt a share to.
    pub committee: Vec<u16>,
    /// Members of the committee that hold no share, and why.
    pub dropped: Vec<DroppedMember>,
}

impl TryFrom<&EpochRecord> for EpochResponse {
    type Error = ApiError;

    fn try_from(record: &EpochRecord) -> Result<Self, ApiError> {
        Ok(Self {
            epoch: record.epoch,
            threshold: record.threshold,
            public_key: format!("0x{}", record.public_key_hex()?),
            transcript_hash: format!("0x{}", record.transcript_hash),
            nodes: record.nodes.clone(),
            committee: record.committee_indices(),
            dropped: record.dropped.clone(),
        })
    }
}

/// `GET /admin/nodes`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NodesResponse {
    /// Every node the manager knows of, as it describes itself.
    pub nodes: Vec<NodeView>,
}

/// `GET /admin/epochs`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EpochsResponse {
    /// Every committed epoch the manager recorded, oldest first.
    pub epochs: Vec<EpochRecord>,
}

/// The admin service, if the presented operator token is the configured one.
fn operator(state: &AppState, headers: &HeaderMap) -> ApiResult<Arc<Admin>> {
    let (Some(admin), Some(token)) = (&state.admin, &state.admin_token) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "admin_disabled",
            "this manager was started without an admin token",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
        tracing::warn!("admin request with a missing or wrong operator token refused");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin endpoints need `Authorization: Bearer <operator token>`",
        ));
    }
    Ok(Arc::clone(admin))
}

fn ceremony_body(body: &[u8]) -> ApiResult<CeremonyBody> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("expected {{\"threshold\": t, \"nodes\": [urls]}}: {e}"),
        )
    })
}

/// Run a distributed key generation over `nodes`: the first epoch of a new cluster key.
#[utoipa::path(
    post,
    path = "/admin/dkg",
    tag = "admin",
    operation_id = "admin_dkg",
    security(("operator" = [])),
    request_body = CeremonyBody,
    responses(
        (status = 200, description = "The new epoch, committed", body = EpochResponse),
        (status = 400, description = "Invalid body or committee", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "Admin API disabled", body = ErrorBody),
        (status = 409, description = "Another ceremony is running", body = ErrorBody),
        (status = 502, description = "The ceremony failed", body = ErrorBody),
        (status = 503, description = "A node needed is unreachable", body = ErrorBody),
    )
)]
pub(super) async fn admin_dkg(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<EpochResponse>> {
    let admin = operator(&state, &headers)?;
    let body = ceremony_body(&body)?;
    let record = admin.dkg(body.nodes, body.threshold).await?;
    Ok(Json(EpochResponse::try_from(&record)?))
}

/// Re-share the cluster key to a new committee and threshold; the public key stays.
#[utoipa::path(
    post,
    path = "/admin/reshare",
    tag = "admin",
    operation_id = "admin_reshare",
    security(("operator" = [])),
    request_body = CeremonyBody,
    responses(
        (status = 200, description = "The new epoch, committed", body = EpochResponse),
        (status = 400, description = "Invalid body or committee", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "Admin API disabled", body = ErrorBody),
        (status = 409, description = "Another ceremony is running", body = ErrorBody),
        (status = 502, description = "The ceremony failed", body = ErrorBody),
        (status = 503, description = "A node needed is unreachable", body = ErrorBody),
    )
)]
pub(super) async fn admin_reshare(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<EpochResponse>> {
    let admin = operator(&state, &headers)?;
    let body = ceremony_body(&body)?;
    let nodes = body.nodes.unwrap_or_else(|| admin.node_urls().to_vec());
    let record = admin.reshare(nodes, body.threshold).await?;
    Ok(Json(EpochResponse::try_from(&record)?))
}

/// Every node the manager knows of (served, recorded, dropped), as each describes itself.
#[utoipa::path(
    get,
    path = "/admin/nodes",
    tag = "admin",
    operation_id = "admin_nodes",
    security(("operator" = [])),
    responses(
        (status = 200, description = "The nodes' self-descriptions", body = NodesResponse),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "Admin API disabled", body = ErrorBody),
    )
)]
pub(super) async fn admin_nodes(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> ApiResult<Json<NodesResponse>> {
    let admin = operator(&state, &headers)?;
    let nodes = admin.survey(&admin.known_urls()).await;
    Ok(Json(NodesResponse { nodes }))
}

/// Every committed epoch the manager recorded.
#[utoipa::path(
    get,
    path = "/admin/epochs",
    tag = "admin",
    operation_id = "admin_epochs",
    security(("operator" = [])),
    responses(
        (status = 200, description = "The recorded epochs", body = EpochsResponse),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "Admin API disabled", body = ErrorBody),
        (status = 500, description = "The state file cannot be read", body = ErrorBody),
    )
)]
pub(super) async fn admin_epochs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> ApiResult<Json<EpochsResponse>> {
    let admin = operator(&state, &headers)?;
    Ok(Json(EpochsResponse {
        epochs: admin.epochs()?,
    }))
}
