//! The manager's HTTP API (docs/ARCHITECTURE.md §4.1), axum: `GET /`, `GET /health`, `GET
//! /metrics`, `GET /v0/public-key`, and `POST /v0/delegate`, byte-compatible with the single-key
//! Nox KMS (see [`crate::nox`] and `docs/NOX-COMPAT.md`).
//!
//! Every error is JSON `{"error": "...", "code": "..."}` (Nox clients read `error`); malformed
//! input is a 400, an unauthorized signer the status of [`crate::nox::UNAUTHORIZED_STATUS`], and
//! fewer than `t` usable nodes a 503, as soon as that is certain.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use axum::{
    body::Bytes,
    extract::{RawQuery, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use k256::ecdsa::SigningKey;
use serde_json::json;
use subtle::ConstantTimeEq;
use tkms_crypto::{suite::Encoded, Secp256k1, Suite};
use tkms_proto::node::v1 as pb;
use zeroize::Zeroizing;

use crate::{
    admin::{Admin, AdminError, Served},
    cluster::{ClusterError, NodeFailure},
    nox::{DelegateRequest, NoxError},
};
use tkms_sdk::v1::{self, NodeFailureReport, NonceCache, SignedV1, V1Error};

pub use tkms_registry::access::{Registry, StaticRegistry};

/// Prometheus counters.
#[derive(Debug, Default)]
pub struct Metrics {
    delegate_ok: AtomicU64,
    delegate_bad_request: AtomicU64,
    delegate_unauthorized: AtomicU64,
    delegate_unavailable: AtomicU64,
    node_failures: Mutex<BTreeMap<(u16, &'static str), u64>>,
    v1_requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    fn node_failed(&self, node: u16, failure: &NodeFailure) {
        let kind = crate::front::failure_kind(failure);
        if let Ok(mut map) = self.node_failures.lock() {
            *map.entry((node, kind)).or_default() += 1;
        }
    }

    fn v1(&self, route: &'static str, outcome: &'static str) {
        if let Ok(mut map) = self.v1_requests.lock() {
            *map.entry((route, outcome)).or_default() += 1;
        }
    }

    fn render(&self) -> String {
        let mut out = String::from(
            "# HELP tkms_delegate_requests_total /v0/delegate requests by outcome.\n\
             # TYPE tkms_delegate_requests_total counter\n",
        );
        for (outcome, counter) in [
            ("ok", &self.delegate_ok),
            ("bad_request", &self.delegate_bad_request),
            ("unauthorized", &self.delegate_unauthorized),
            ("unavailable", &self.delegate_unavailable),
        ] {
            let _ = writeln!(
                out,
                "tkms_delegate_requests_total{{outcome=\"{outcome}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP tkms_v1_requests_total /v1 requests by route and outcome.\n\
             # TYPE tkms_v1_requests_total counter\n",
        );
        if let Ok(map) = self.v1_requests.lock() {
            for ((route, outcome), count) in map.iter() {
                let _ = writeln!(
                    out,
                    "tkms_v1_requests_total{{route=\"{route}\",outcome=\"{outcome}\"}} {count}"
                );
            }
        }
        out.push_str(
            "# HELP tkms_node_failures_total Partials a node failed to contribute, by reason.\n\
             # TYPE tkms_node_failures_total counter\n",
        );
        if let Ok(map) = self.node_failures.lock() {
            for ((node, kind), count) in map.iter() {
                let _ = writeln!(
                    out,
                    "tkms_node_failures_total{{node=\"{node}\",reason=\"{kind}\"}} {count}"
                );
            }
        }
        out
    }
}

/// Shared state of the HTTP handlers.
pub struct AppState {
    /// The epoch served and its nodes (none before the first DKG).
    pub served: Arc<Served>,
    /// Ceremonies and epochs, for the admin endpoints (absent: no admin API).
    pub admin: Option<Arc<Admin>>,
    /// The operator's bearer token for the admin endpoints.
    pub admin_token: Option<Zeroizing<String>>,
    /// The manager wallet that signs `/v0/delegate` proofs.
    pub wallet: SigningKey,
    /// Who may call.
    pub registry: Box<dyn Registry>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// `(signer, nonce)` pairs of `/v1` requests not yet expired (replay protection).
    pub nonces: NonceCache,
    /// Quotas and the audit log ([`crate::front`]).
    pub front: Arc<crate::front::FrontDoor>,
}

/// The router, ready to serve.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v0/public-key", get(public_key))
        .route("/v0/delegate", post(delegate))
        .route("/v1/delegate", post(delegate_v1))
        .route("/v1/reencrypt", post(reencrypt_v1))
        .route("/admin/dkg", post(admin_dkg))
        .route("/admin/reshare", post(admin_reshare))
        .route("/admin/nodes", get(admin_nodes))
        .route("/admin/epochs", get(admin_epochs))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": message.into(), "code": code })),
    )
        .into_response()
}

async fn root() -> Json<serde_json::Value> {
    Json(json!({ "service": "tkms-manager", "version": env!("CARGO_PKG_VERSION") }))
}

/// `{"status": "ok"}` while at least `t` reachable nodes hold the served epoch's share;
/// `"degraded"` (503) when fewer do, so the manager cannot serve; `"no-key"` before a DKG.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let Some(cluster) = state.served.cluster() else {
        return Json(json!({ "status": "no-key", "epoch": 0 })).into_response();
    };
    let keys = cluster.keys();
    let health = match &state.admin {
        Some(admin) => Some(admin.health().await),
        None => None,
    };
    let servable = health.as_ref().is_none_or(|h| h.servable);
    let body = Json(json!({
        "status": if servable { "ok" } else { "degraded" },
        "epoch": cluster.epoch(),
        "threshold": keys.threshold(),
        "n": keys.committee_size(),
        "reachable": health.as_ref().map(|h| h.reachable),
        "holders": health.as_ref().map(|h| h.holders),
    }));
    if servable {
        body.into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

fn no_key() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_key",
        "the cluster has no key yet: an operator must run a DKG (POST /admin/dkg)",
    )
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render() + &state.front.render_metrics(),
    )
        .into_response()
}

/// The served key set, or with `?epoch=N` the key set of an earlier committed epoch (a client
/// checking an answer for a request that was in flight across an epoch switch).
async fn public_key(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Response {
    let Some(cluster) = state.served.cluster() else {
        return no_key();
    };
    let asked = query.as_deref().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("epoch="))
            .map(str::parse::<u64>)
    });
    let (epoch, keys) = match asked {
        None => (cluster.epoch(), cluster.keys().clone()),
        Some(Ok(epoch)) if epoch == cluster.epoch() => (epoch, cluster.keys().clone()),
        Some(Ok(epoch)) => {
            let record = state
                .admin
                .as_ref()
                .and_then(|a| a.epoch(epoch).ok().flatten());
            match record.map(|r| r.keys()) {
                Some(Ok(keys)) => (epoch, keys),
                _ => {
                    return error(
                        StatusCode::NOT_FOUND,
                        "unknown_epoch",
                        format!("epoch {epoch} is not a committed epoch this manager recorded"),
                    )
                }
            }
        }
        Some(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("epoch must be a number: {e}"),
            )
        }
    };
    let shares: BTreeMap<String, String> = keys
        .public_shares()
        .map(|(i, p)| {
            (
                i.get().to_string(),
                format!("0x{}", hex::encode(Secp256k1::encode_point(p))),
            )
        })
        .collect();
    Json(json!({
        "publicKey": format!("0x{}", hex::encode(keys.public_key_encoded().bytes())),
        "epoch": epoch,
        "threshold": keys.threshold(),
        "n": keys.committee_size(),
        "publicShares": shares,
        "commitment": keys
            .commitment()
            .points()
            .iter()
            .map(|p| format!("0x{}", hex::encode(Secp256k1::encode_point(p))))
            .collect::<Vec<_>>(),
    }))
    .into_response()
}

fn nox_error(state: &AppState, e: &NoxError) -> Response {
    let counter = match e {
        NoxError::Unauthorized(_) | NoxError::SignerNotAuthorized { .. } => {
            &state.metrics.delegate_unauthorized
        }
        _ => &state.metrics.delegate_bad_request,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    error(status, e.code(), e.to_string())
}

async fn delegate(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(axum::http::HeaderValue::as_bytes);
    let request = match DelegateRequest::parse(query.as_deref().unwrap_or(""), &body, authorization)
    {
        Ok(r) => r,
        Err(e) => return nox_error(&state, &e),
    };
    let chain_id = request.chain_id();
    let signer = match request.signer() {
        Ok(s) => s,
        Err(e) => return nox_error(&state, &e),
    };
    crate::front::note_signer(chain_id, signer);
    if !state.registry.is_gateway(chain_id, signer) {
        if state.registry.gateway(chain_id).is_none() {
            return nox_error(&state, &NoxError::UnknownChain(chain_id));
        }
        tracing::warn!(%signer, chain_id, "refused /v0/delegate from a signer that is not a gateway");
        return nox_error(&state, &NoxError::SignerNotAuthorized { signer, chain_id });
    }
    // The request id binds every node's proof to this exact authorized request.
    let request_id = request.request_id();
    crate::front::note_digest(&request_id);
    if let Err(refusal) =
        state
            .front
            .admit_requester(state.registry.as_ref(), true, chain_id, signer)
    {
        return refusal;
    }
    let authorization = pb::RequesterAuthorization {
        scheme: Some(pb::requester_authorization::Scheme::Eip712Delegate(
            pb::Eip712Delegate {
                chain_id,
                ephemeral_pub_key: request.ephemeral_pub_key().to_string(),
                target_pub_key: request.target_pub_key().to_string(),
                signature: request.signature().as_bytes().to_vec(),
            },
        )),
    };
    let ephemeral = Encoded::new(*request.ephemeral());
    let Some(cluster) = state.served.cluster() else {
        return no_key();
    };
    let result = cluster
        .delegate(ephemeral, request_id, Some(authorization))
        .await;
    crate::front::note_cluster(cluster.epoch(), &result, |_| None);
    match result {
        Ok(served) => {
            for (node, failure) in &served.failures {
                state.metrics.node_failed(node.get(), failure);
            }
            match request.respond(&state.wallet, &served.value) {
                Ok(response) => {
                    state.metrics.delegate_ok.fetch_add(1, Ordering::Relaxed);
                    Json(response).into_response()
                }
                Err(e) => nox_error(&state, &e),
            }
        }
        Err(e) if e.requester_denied() => {
            if let ClusterError::Unavailable { failures, .. } = &e {
                for (node, failure) in failures {
                    state.metrics.node_failed(node.get(), failure);
                }
            }
            tracing::warn!(%signer, chain_id, error = %e, "the nodes refused the /v0/delegate signer");
            nox_error(&state, &NoxError::SignerNotAuthorized { signer, chain_id })
        }
        Err(ClusterError::Unavailable {
            threshold,
            verified,
            failures,
        }) => {
            for (node, failure) in &failures {
                state.metrics.node_failed(node.get(), failure);
            }
            state
                .metrics
                .delegate_unavailable
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                threshold,
                verified,
                ?failures,
                "cluster unavailable for /v0/delegate"
            );
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                format!("only {verified} of the {threshold} required key nodes answered; try again later"),
            )
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// /v1: threshold-native delegation and re-encryption
// ---------------------------------------------------------------------------------------------

fn v1_error(state: &AppState, route: &'static str, e: &V1Error) -> Response {
    state.metrics.v1(route, e.code());
    if matches!(e.status(), 401 | 403) {
        tracing::warn!(route, error = %e, "refused a /v1 request");
    }
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    error(status, e.code(), e.to_string())
}

/// Parse a `/v1` request and pass the checks every one passes before any node is asked: the
/// signer's role, the expiry, and the nonce (in that order, so a refused request does not burn
/// its nonce). The request, the served cluster and the authorization to forward to the nodes.
#[allow(clippy::result_large_err)] // the refusal is the HTTP response itself, built once
fn admit<R: SignedV1>(
    state: &AppState,
    route: &'static str,
    request: Result<R, V1Error>,
    action: &'static str,
    allowed: impl Fn(u64, alloy_primitives::Address) -> bool,
) -> Result<(R, Arc<crate::cluster::Cluster>, pb::RequesterAuthorization), Response> {
    let checked = request.and_then(|request| {
        let chain_id = request.chain_id();
        let signer = request.signer()?;
        crate::front::note_signer(chain_id, signer);
        if !allowed(chain_id, signer) {
            return Err(V1Error::Forbidden {
                signer,
                action,
                chain_id,
            });
        }
        Ok((request, signer))
    });
    let (request, signer) = checked.map_err(|e| v1_error(state, route, &e))?;
    let digest = request.digest();
    crate::front::note_digest(digest.as_slice());
    // Over its quota: refused before its nonce is spent, so it may be sent again.
    state.front.admit_requester(
        state.registry.as_ref(),
        action == "delegate",
        request.chain_id(),
        signer,
    )?;
    let now = v1::now_secs();
    request
        .freshness()
        .check(now)
        .and_then(|()| state.nonces.use_once(signer, request.freshness(), now))
        .map_err(|e| v1_error(state, route, &e))?;
    let cluster = state.served.cluster().ok_or_else(no_key)?;
    let authorization = eip712_authorization(
        request.chain_id(),
        digest,
        request.freshness(),
        request.signature(),
    );
    Ok((request, cluster, authorization))
}

fn eip712_authorization(
    chain_id: u64,
    digest: alloy_primitives::B256,
    freshness: &v1::Freshness,
    signature: &[u8],
) -> pb::RequesterAuthorization {
    pb::RequesterAuthorization {
        scheme: Some(pb::requester_authorization::Scheme::Eip712Request(
            pb::Eip712Request {
                chain_id,
                request_digest: digest.to_vec(),
                nonce: freshness.nonce.to_vec(),
                expires_at: freshness.expires_at,
                signature: signature.to_vec(),
            },
        )),
    }
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

fn unavailable(state: &AppState, route: &'static str, e: ClusterError) -> Response {
    if crate::front::replayed_at_nodes(&e) {
        state.metrics.v1(route, "replayed");
        return crate::front::replayed_response();
    }
    if e.requester_denied() {
        if let ClusterError::Unavailable { failures, .. } = &e {
            failure_reports(state, failures);
        }
        state.metrics.v1(route, "denied_by_nodes");
        tracing::warn!(route, error = %e, "the nodes refused the requester");
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the key nodes refused the requester: it may not ask for this".to_string(),
        );
    }
    match e {
        ClusterError::Unavailable {
            threshold,
            verified,
            failures,
        } => {
            failure_reports(state, &failures);
            state.metrics.v1(route, "unavailable");
            tracing::error!(route, threshold, verified, ?failures, "cluster unavailable");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                format!("only {verified} of the {threshold} required key nodes answered; try again later"),
            )
        }
        e => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

async fn delegate_v1(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    const ROUTE: &str = "/v1/delegate";
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(axum::http::HeaderValue::as_bytes);
    let (request, cluster, authorization) = match admit(
        &state,
        ROUTE,
        v1::DelegateV1::parse(&body, authorization),
        "delegate",
        |chain_id, signer| state.registry.is_gateway(chain_id, signer),
    ) {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
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
    match result {
        Ok(served) => {
            let failures = failure_reports(&state, &served.failures);
            state.metrics.v1(ROUTE, "ok");
            Json(v1::DelegateResponse::build(
                &state.wallet,
                &request,
                cluster.epoch(),
                cluster.keys().threshold(),
                served.value,
                failures,
            ))
            .into_response()
        }
        Err(e) => unavailable(&state, ROUTE, e),
    }
}

async fn reencrypt_v1(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    const ROUTE: &str = "/v1/reencrypt";
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(axum::http::HeaderValue::as_bytes);
    let (request, cluster, authorization) = match admit(
        &state,
        ROUTE,
        v1::ReencryptV1::parse(&body, authorization),
        "reencrypt",
        |chain_id, signer| {
            state.registry.is_gateway(chain_id, signer)
                || state.registry.is_runner(chain_id, signer)
        },
    ) {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let capsules = request.capsule_ids();
    crate::front::note_items(capsules.iter().map(|(id, _)| id.as_slice()));
    let result = cluster
        .reencrypt(request.target, capsules, Some(authorization))
        .await;
    crate::front::note_cluster(cluster.epoch(), &result, |r| {
        Some(r.partials.keys().copied().collect())
    });
    match result {
        Ok(served) => {
            let failures = failure_reports(&state, &served.failures);
            state.metrics.v1(ROUTE, "ok");
            Json(v1::ReencryptResponse::build(
                &state.wallet,
                &request,
                cluster.epoch(),
                cluster.keys().threshold(),
                &served.value.capsules,
                &served.value.partials,
                failures,
            ))
            .into_response()
        }
        Err(e) => unavailable(&state, ROUTE, e),
    }
}

// ---------------------------------------------------------------------------------------------
// Admin (operator) endpoints
// ---------------------------------------------------------------------------------------------

/// An error response, small enough to return in a `Result`.
struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1, self.2)
    }
}

/// The admin service and the operator check.
fn operator(state: &AppState, headers: &HeaderMap) -> Result<Arc<Admin>, ApiError> {
    let (Some(admin), Some(token)) = (&state.admin, &state.admin_token) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "admin_disabled",
            "this manager was started without an admin token".into(),
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
        tracing::warn!("admin request with a missing or wrong operator token refused");
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin endpoints need `Authorization: Bearer <operator token>`".into(),
        ));
    }
    Ok(Arc::clone(admin))
}

fn admin_error(e: &AdminError) -> Response {
    let (status, code) = match e {
        AdminError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        AdminError::Node(_) => (StatusCode::SERVICE_UNAVAILABLE, "node_unavailable"),
        AdminError::Ceremony(_) => (StatusCode::BAD_GATEWAY, "ceremony_failed"),
        AdminError::Busy => (StatusCode::CONFLICT, "ceremony_in_progress"),
        AdminError::State(_) => (StatusCode::INTERNAL_SERVER_ERROR, "state"),
    };
    error(status, code, e.to_string())
}

/// Body of `POST /admin/dkg` and `/admin/reshare`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CeremonyBody {
    threshold: u16,
    #[serde(default)]
    nodes: Option<Vec<String>>,
}

fn ceremony_body(body: &Bytes) -> Result<CeremonyBody, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("expected {{\"threshold\": t, \"nodes\": [urls]}}: {e}"),
        )
    })
}

fn epoch_json(record: &crate::admin::EpochRecord) -> Response {
    match record.public_key_hex() {
        Ok(pk) => Json(json!({
            "epoch": record.epoch,
            "threshold": record.threshold,
            "publicKey": format!("0x{pk}"),
            "transcriptHash": format!("0x{}", record.transcript_hash),
            "nodes": record.nodes,
            "committee": record.committee_indices(),
            "dropped": record.dropped,
        }))
        .into_response(),
        Err(e) => admin_error(&e),
    }
}

async fn admin_dkg(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let admin = match operator(&state, &headers) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let body = match ceremony_body(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    match admin.dkg(body.nodes, body.threshold).await {
        Ok(record) => epoch_json(&record),
        Err(e) => admin_error(&e),
    }
}

async fn admin_reshare(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let admin = match operator(&state, &headers) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let body = match ceremony_body(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let nodes = body.nodes.unwrap_or_else(|| admin.node_urls().to_vec());
    match admin.reshare(nodes, body.threshold).await {
        Ok(record) => epoch_json(&record),
        Err(e) => admin_error(&e),
    }
}

async fn admin_nodes(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let admin = match operator(&state, &headers) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let views = admin.survey(&admin.known_urls()).await;
    Json(json!({ "nodes": views })).into_response()
}

async fn admin_epochs(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let admin = match operator(&state, &headers) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    match admin.epochs() {
        Ok(epochs) => Json(json!({ "epochs": epochs })).into_response(),
        Err(e) => admin_error(&e),
    }
}
