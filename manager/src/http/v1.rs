//! `/v1`: threshold-native delegation and re-encryption. Every request is EIP-712 typed data
//! with a nonce and an expiry; the manager checks the signer's role, the expiry and the
//! nonce before any node is asked, and every node checks them again.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use tkms_sdk::v1::{
    self, DelegateBody, DelegateResponse, NodeFailureReport, ReencryptBody, ReencryptResponse,
    SignedV1, V1Error,
};

use super::{error::ErrorBody, ApiError, ApiResult, AppState};
use crate::cluster::{Cluster, ClusterError, NodeFailure};
use tkms_proto::{
    node::v1 as pb,
    requester::{Action, RequesterAuthorization, V1Authorization},
};

const DELEGATE: &str = "/v1/delegate";
const REENCRYPT: &str = "/v1/reencrypt";

/// Threshold delegation: each of `t` nodes' partial `D_i = s_i·K` with its proof, encrypted
/// to the requester's RSA key; the requester verifies and combines them.
#[utoipa::path(
    post,
    path = "/v1/delegate",
    tag = "v1",
    operation_id = "delegate_v1",
    params(("Authorization" = String, Header, description = "`Bearer 0x<65-byte signature>` over the EIP-712 typed request, by an authorized gateway")),
    request_body = DelegateBody,
    responses(
        (status = 200, description = "At least `t` encrypted partials and the manager's proof", body = DelegateResponse),
        (status = 400, description = "Malformed body or key", body = ErrorBody),
        (status = 401, description = "Bad signature, expired, or replayed", body = ErrorBody),
        (status = 403, description = "The signer may not delegate on this chain", body = ErrorBody),
        (status = 429, description = "Over a quota (`Retry-After`)", body = ErrorBody),
        (status = 500, description = "An internal failure", body = ErrorBody),
        (status = 503, description = "No key yet, or fewer than `t` nodes answered", body = ErrorBody),
    )
)]
pub(super) async fn delegate_v1(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = serve_delegate(&state, &headers, &body).await;
    count(&state, DELEGATE, result)
}

/// Proxy re-encryption of one or a batch of capsules to the requester's secp256k1 key; no
/// manager or node learns the shared secret.
#[utoipa::path(
    post,
    path = "/v1/reencrypt",
    tag = "v1",
    operation_id = "reencrypt_v1",
    params(("Authorization" = String, Header, description = "`Bearer 0x<65-byte signature>` over the EIP-712 typed request, by an authorized gateway or runner")),
    request_body = ReencryptBody,
    responses(
        (status = 200, description = "`K || R || C` per capsule, the partials they were combined from, and the manager's proof", body = ReencryptResponse),
        (status = 400, description = "Malformed body, key, or batch size", body = ErrorBody),
        (status = 401, description = "Bad signature, expired, or replayed", body = ErrorBody),
        (status = 403, description = "The signer may not re-encrypt on this chain", body = ErrorBody),
        (status = 429, description = "Over a quota (`Retry-After`)", body = ErrorBody),
        (status = 500, description = "An internal failure", body = ErrorBody),
        (status = 503, description = "No key yet, or fewer than `t` nodes answered", body = ErrorBody),
    )
)]
pub(super) async fn reencrypt_v1(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = serve_reencrypt(&state, &headers, &body).await;
    count(&state, REENCRYPT, result)
}

/// Count the answer in `/metrics` (by its error code) and send it.
fn count<T: IntoResponse>(state: &AppState, route: &'static str, result: ApiResult<T>) -> Response {
    match result {
        Ok(answer) => {
            state.metrics.v1(route, "ok");
            answer.into_response()
        }
        Err(e) => {
            state.metrics.v1(route, e.outcome);
            if matches!(e.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                tracing::warn!(route, error = %e.message, "refused a /v1 request");
            }
            e.into_response()
        }
    }
}

async fn serve_delegate(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Json<DelegateResponse>> {
    let (request, cluster, authorization) = admit(
        state,
        v1::DelegateV1::parse(body, authorization_header(headers)),
        Action::Delegate,
    )?;
    let digest = request.digest();
    let result = cluster
        .delegate_encrypted(
            request.ephemeral,
            digest.to_vec(),
            request.target_spki.clone(),
            authorization,
        )
        .await;
    crate::front::note_cluster(cluster.epoch(), &result, |partials| {
        Some(partials.iter().map(|(node, _)| *node).collect())
    });
    let served = result.map_err(|e| cluster_refusal(state, &e))?;
    let failures = failure_reports(state, &served.failures);
    Ok(Json(DelegateResponse::build(
        &state.wallet,
        &request,
        cluster.epoch(),
        cluster.keys().threshold(),
        served.value,
        failures,
    )))
}

async fn serve_reencrypt(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Json<ReencryptResponse>> {
    let (request, cluster, authorization) = admit(
        state,
        v1::ReencryptV1::parse(body, authorization_header(headers)),
        Action::Reencrypt,
    )?;
    let capsules = request.capsule_ids();
    crate::front::note_items(capsules.iter().map(|(id, _)| id.as_slice()));
    let result = cluster
        .reencrypt(request.target, capsules, Some(authorization))
        .await;
    crate::front::note_cluster(cluster.epoch(), &result, |r| {
        Some(r.partials.keys().copied().collect())
    });
    let served = result.map_err(|e| cluster_refusal(state, &e))?;
    let failures = failure_reports(state, &served.failures);
    Ok(Json(ReencryptResponse::build(
        &state.wallet,
        &request,
        cluster.epoch(),
        cluster.keys().threshold(),
        &served.value.capsules,
        &served.value.partials,
        failures,
    )))
}

fn authorization_header(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(header::AUTHORIZATION)
        .map(axum::http::HeaderValue::as_bytes)
}

/// Parse a `/v1` request and pass the checks every one passes before any node is asked
/// ([`V1Authorization::admit`], which the nodes run again): the signer's role, the quota, the
/// expiry and the nonce (in that order, so a refused request does not burn its nonce). The
/// request, the served cluster and the authorization to forward to the nodes.
fn admit<R: SignedV1>(
    state: &AppState,
    request: Result<R, V1Error>,
    action: Action,
) -> ApiResult<(R, Arc<Cluster>, pb::RequesterAuthorization)> {
    let request = request?;
    let signer = request.signer()?;
    crate::front::note_signer(request.chain_id(), signer);
    let authorization = V1Authorization::of(&request);
    authorization.admit(
        signer,
        action,
        state.registry.as_ref(),
        &state.nonces,
        v1::now_secs(),
        |role| {
            crate::front::note_digest(authorization.request_digest.as_slice());
            // Over its quota: refused before its nonce is spent, so it may be sent again.
            state
                .front
                .admit_requester(role, authorization.chain_id, signer)
        },
    )?;
    let cluster = state.served.cluster().ok_or_else(ApiError::no_key)?;
    let authorization = (&RequesterAuthorization::V1(authorization)).into();
    Ok((request, cluster, authorization))
}

fn failure_reports(
    state: &AppState,
    failures: &[(tkms_crypto::NodeIndex, NodeFailure)],
) -> Vec<NodeFailureReport> {
    failures
        .iter()
        .map(|(node, failure)| {
            state.metrics.node_failed(node.get(), failure);
            NodeFailureReport {
                node: node.get(),
                reason: failure.to_string(),
            }
        })
        .collect()
}

/// The answer to a request the cluster did not serve: `401 replayed` when the nodes had
/// already served its nonce (their journals remember what a restarted manager may not),
/// `403` when they refused the requester, else `503` / `500`.
fn cluster_refusal(state: &AppState, e: &ClusterError) -> ApiError {
    // A replay is the requester's fault, not the nodes': their refusals are not counted.
    if crate::front::replayed_at_nodes(e) {
        return ApiError::replayed_at_nodes();
    }
    if let ClusterError::Unavailable { failures, .. } = e {
        failure_reports(state, failures);
    }
    if e.requester_denied() {
        tracing::warn!(error = %e, "the nodes refused the requester");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the key nodes refused the requester: it may not ask for this",
        )
        .counted_as("denied_by_nodes");
    }
    tracing::error!(error = %e, "cluster unavailable");
    ApiError::from(e)
}
