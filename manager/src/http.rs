//! The manager's HTTP API (DESIGN.md §4.1), axum: `GET /`, `GET /health`, `GET /metrics`,
//! `GET /v0/public-key`, and `POST /v0/delegate`, byte-compatible with the single-key Nox KMS
//! (see [`crate::nox`] and `docs/NOX-COMPAT.md`).
//!
//! Every error is JSON `{"error": "...", "code": "..."}` (Nox clients read `error`); malformed
//! input is a 400, an unauthorized signer the status of [`crate::nox::UNAUTHORIZED_STATUS`], and fewer
//! than `t` usable nodes a 503, as soon as that is certain.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use alloy_primitives::Address;
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
use sha2::{Digest, Sha256};
use tkms_crypto::{suite::Encoded, Secp256k1, Suite};
use tkms_proto::node::v1 as pb;

use crate::{
    cluster::{Cluster, ClusterError, NodeFailure},
    nox::{DelegateRequest, NoxError},
};

/// Who may call the cluster: the on-chain registry (registry issue) or an embedded list.
pub trait Registry: Send + Sync + 'static {
    /// The gateway authorized for `/v0/delegate` on `chain_id`, if that chain is served.
    fn gateway(&self, chain_id: u64) -> Option<Address>;

    /// Whether `account` holds the gateway role on `chain_id`. A registry with several
    /// gateways (the on-chain one) answers for each of them; by default an account is a
    /// gateway when it is [`Registry::gateway`].
    fn is_gateway(&self, chain_id: u64, account: Address) -> bool {
        self.gateway(chain_id) == Some(account)
    }
}

/// An embedded registry: one gateway per served chain, from configuration.
#[derive(Debug, Clone, Default)]
pub struct StaticRegistry {
    gateways: BTreeMap<u64, Address>,
}

impl StaticRegistry {
    /// Serve `chain_id` for `gateway`.
    #[must_use]
    pub fn with_gateway(mut self, chain_id: u64, gateway: Address) -> Self {
        self.gateways.insert(chain_id, gateway);
        self
    }
}

impl Registry for StaticRegistry {
    fn gateway(&self, chain_id: u64) -> Option<Address> {
        self.gateways.get(&chain_id).copied()
    }
}

/// Prometheus counters.
#[derive(Debug, Default)]
pub struct Metrics {
    delegate_ok: AtomicU64,
    delegate_bad_request: AtomicU64,
    delegate_unauthorized: AtomicU64,
    delegate_unavailable: AtomicU64,
    node_failures: Mutex<BTreeMap<(u16, &'static str), u64>>,
}

impl Metrics {
    fn node_failed(&self, node: u16, failure: &NodeFailure) {
        let kind = match failure {
            NodeFailure::Timeout => "timeout",
            NodeFailure::Unreachable(_) => "unreachable",
            NodeFailure::Refused(_) => "refused",
            NodeFailure::Malformed(_) => "malformed",
            NodeFailure::InvalidProof => "invalid_proof",
        };
        if let Ok(mut map) = self.node_failures.lock() {
            *map.entry((node, kind)).or_default() += 1;
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
    /// The nodes of the current epoch.
    pub cluster: Cluster,
    /// The manager wallet that signs `/v0/delegate` proofs.
    pub wallet: SigningKey,
    /// Who may call.
    pub registry: Box<dyn Registry>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
}

/// The router, ready to serve.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v0/public-key", get(public_key))
        .route("/v0/delegate", post(delegate))
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

async fn health(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let keys = state.cluster.keys();
    Json(json!({
        "status": "ok",
        "epoch": state.cluster.epoch(),
        "threshold": keys.threshold(),
        "n": keys.committee_size(),
    }))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn public_key(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let keys = state.cluster.keys();
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
        "epoch": state.cluster.epoch(),
        "threshold": keys.threshold(),
        "n": keys.committee_size(),
        "publicShares": shares,
    }))
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
    let Some(gateway) = state.registry.gateway(chain_id) else {
        return nox_error(&state, &NoxError::UnknownChain(chain_id));
    };
    let signer = match request.signer() {
        Ok(s) => s,
        Err(e) => return nox_error(&state, &e),
    };
    if signer != gateway {
        tracing::warn!(%signer, chain_id, "refused /v0/delegate from a signer that is not the gateway");
        return nox_error(&state, &NoxError::SignerNotAuthorized { signer, chain_id });
    }
    // The request id binds every node's proof to this exact authorized request.
    let request_id: Vec<u8> = {
        let mut h = Sha256::new();
        h.update(b"tkms/v0/delegate");
        h.update(chain_id.to_be_bytes());
        h.update(request.ephemeral_pub_key().as_bytes());
        h.update(request.target_pub_key().as_bytes());
        h.update(request.signature().as_bytes());
        h.finalize().to_vec()
    };
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
    match state
        .cluster
        .delegate(ephemeral, request_id, Some(authorization))
        .await
    {
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
