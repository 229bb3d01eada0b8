//! `POST /v0/delegate`, byte-compatible with the single-key Nox KMS (see [`crate::nox`] and
//! `docs/NOX-COMPAT.md`): every authorization failure is a 401, malformed input a 400.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{RawQuery, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use tkms_crypto::suite::Encoded;
use tkms_proto::requester::{Action, RequesterAuthorization};

use super::{error::ErrorBody, ApiError, ApiResult, AppState};
use crate::{
    cluster::ClusterError,
    nox::{DelegateBody, DelegateRequest, DelegateResponse, NoxError},
};

/// The query of `POST /v0/delegate` (documentation: [`DelegateRequest::parse`] reads it, as
/// Nox does).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read through the raw query string
pub(super) struct DelegateQuery {
    /// Chain whose registry authorizes the gateway.
    chain_id: u64,
    /// 32 bytes, `0x` hex, bound into the response proof (default: 32 zero bytes).
    #[param(pattern = "^0[xX][0-9a-fA-F]{64}$")]
    salt: Option<String>,
}

/// The Nox KMS delegation: `x(S)` for the ECIES ephemeral key `K`, RSA-OAEP-encrypted to
/// the gateway's key, with the manager wallet's EIP-712 proof.
#[utoipa::path(
    post,
    path = "/v0/delegate",
    tag = "v0",
    operation_id = "delegate_v0",
 params(
        DelegateQuery,
        ("Authorization" = String, Header, description = "`Bearer 0x<65-byte EIP-712 signature>` by an authorized gateway over `(ephemeralPubKey, targetPubKey)`"),
    ),
    request_body = DelegateBody,
    responses(
        (status = 200, description = "The shared secret, encrypted to `targetPubKey`", body = DelegateResponse),
        (status = 400, description = "Malformed query, body or key", body = ErrorBody),
        (status = 401, description = "Missing, malformed or unauthorized signature", body = ErrorBody),
        (status = 429, description = "Over a quota (`Retry-After`)", body = ErrorBody),
        (status = 500, description = "The shared secret could not be encrypted, or an internal failure", body = ErrorBody),
        (status = 503, description = "No key yet, or fewer than `t` nodes answered", body = ErrorBody),
    )
)]
pub(super) async fn delegate(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = serve(&state, query.as_deref().unwrap_or(""), &headers, &body).await;
    state.metrics.v0(match &result {
        Ok(_) => "ok",
        Err(e) => outcome(e),
    });
    result.into_response()
}

/// The metrics outcome of an error answer.
fn outcome(e: &ApiError) -> &'static str {
    match e.status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

async fn serve(
    state: &AppState,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Json<DelegateResponse>> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(axum::http::HeaderValue::as_bytes);
    let request = DelegateRequest::parse(query, body, authorization)?;
    let chain_id = request.chain_id();
    let signer = request.signer()?;
    crate::front::note_signer(chain_id, signer);
    let Some(role) = Action::Delegate.role(state.registry.as_ref(), chain_id, signer) else {
        if state.registry.gateway(chain_id).is_none() {
            return Err(NoxError::UnknownChain(chain_id).into());
        }
        tracing::warn!(%signer, chain_id, "refused /v0/delegate from a signer that is not a gateway");
        return Err(NoxError::SignerNotAuthorized { signer, chain_id }.into());
    };
    // The request id binds every node's proof to this exact authorized request.
    let request_id = request.request_id();
    crate::front::note_digest(&request_id);
    state.front.admit_requester(role, chain_id, signer)?;
    let cluster = state.served.cluster().ok_or_else(ApiError::no_key)?;
    let authorization = (&RequesterAuthorization::Nox(Box::new(request.clone()))).into();
    let result = cluster
        .delegate(
            Encoded::new(*request.ephemeral()),
            request_id,
            Some(authorization),
        )
        .await;
    crate::front::note_cluster(cluster.epoch(), &result, |_| None);
    let served = match result {
        Ok(served) => served,
        Err(e) => {
            if let ClusterError::Unavailable { failures, .. } = &e {
                for (node, failure) in failures {
                    state.metrics.node_failed(node.get(), failure);
                }
            }
            if e.requester_denied() {
                tracing::warn!(%signer, chain_id, error = %e, "the nodes refused the /v0/delegate signer");
                return Err(NoxError::SignerNotAuthorized { signer, chain_id }.into());
            }
            tracing::error!(error = %e, "cluster unavailable for /v0/delegate");
            return Err(ApiError::from(&e));
        }
    };
    for (node, failure) in &served.failures {
        state.metrics.node_failed(node.get(), failure);
    }
    Ok(Json(request.respond(&state.wallet, &served.value)?))
}
