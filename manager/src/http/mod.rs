//! The manager's HTTP API (docs/ARCHITECTURE.md §4.1), axum: `GET /`, `/health`, `/metrics`,
//! `/openapi.json`, `/v0/public-key`; `POST /v0/delegate` byte-compatible with the single-key
//! Nox KMS ([`v0`], `docs/NOX-COMPAT.md`); `POST /v1/delegate` and `/v1/reencrypt` ([`v1`]);
//! the operator's `/admin/*` ([`admin`]).
//!
//! Every error is one [`ApiError`]: JSON `{"error": "...", "code": "..."}` (Nox clients read
//! `error`) with its status. Malformed input is a 400, an unauthorized signer a 401 on `/v0`
//! ([`crate::nox::UNAUTHORIZED_STATUS`]) and a 401/403 on `/v1`, a quota a 429 with
//! `Retry-After`, and fewer than `t` usable nodes a 503, as soon as that is certain.
//!
//! The OpenAPI document ([`openapi`]) is generated from the handlers' annotations, collected
//! with the routes themselves, served at `/openapi.json` and committed as
//! `docs/openapi/manager.json` (`tests/openapi.rs` keeps the two equal).

mod admin;
mod error;
mod metrics;
mod v0;
mod v1;

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    extract::{RawQuery, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json, Router,
};
use k256::ecdsa::SigningKey;
use serde::{Deserialize, Serialize};
use tkms_crypto::{Secp256k1, Suite};
use tkms_sdk::v1::{NonceCache, PublicKeyResponse};
use utoipa::{
    openapi::security::{Http, HttpAuthScheme, SecurityScheme},
    OpenApi,
};
use utoipa_axum::{router::OpenApiRouter, routes};
use zeroize::Zeroizing;

pub use self::{
    error::{ApiError, ApiResult, ErrorBody},
    metrics::Metrics,
};
use crate::{admin::Admin, admin::Served};
pub use tkms_registry::access::{Registry, StaticRegistry};

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

// ---------------------------------------------------------------------------------------------
// Routes and the OpenAPI document
// ---------------------------------------------------------------------------------------------

/// Document-level parts of the OpenAPI document; the paths and schemas come from the
/// handlers' `#[utoipa::path]` attributes, collected with the routes ([`routes`]), so the
/// document cannot list a route the manager does not serve or miss one it does.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tkms manager",
        description = "The threshold KMS's front: `/v0/delegate` byte-compatible with the \
                       single-key Nox KMS, threshold-native `/v1` delegation and proxy \
                       re-encryption, and the operator's ceremonies. Errors are \
                       `{\"error\", \"code\"}`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorBody)),
    modifiers(&OperatorScheme),
    tags(
        (name = "v0", description = "The Nox KMS interface"),
        (name = "v1", description = "Threshold-native requests, EIP-712 signed"),
        (name = "admin", description = "Ceremonies and the cluster's state, for the operator"),
        (name = "service", description = "Health, metrics, the public key and this document")
    )
)]
struct ApiDoc;

struct OperatorScheme;

impl utoipa::Modify for OperatorScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "operator",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(root))
        .routes(routes!(health))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(public_key))
        .routes(routes!(v0::delegate))
        .routes(routes!(v1::delegate_v1))
        .routes(routes!(v1::reencrypt_v1))
        .routes(routes!(admin::admin_dkg))
        .routes(routes!(admin::admin_reshare))
        .routes(routes!(admin::admin_nodes))
        .routes(routes!(admin::admin_epochs))
}

/// The router, ready to serve.
pub fn router(state: Arc<AppState>) -> Router {
    let (router, _) = routes().split_for_parts();
    router.with_state(state)
}

/// The manager's OpenAPI 3 document, generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = routes().split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    front_door_answers(&mut doc);
    doc
}

/// What the front door ([`crate::front::layer`]) may answer before a handler runs: `429` on
/// every route (the per-client-address quota, and the admin quota), and `503
/// audit_unavailable` on every audited route (key uses and admin actions).
fn front_door_answers(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for (path, item) in &mut doc.paths.paths {
        let audited =
            path.starts_with("/admin") || path.starts_with("/v1/") || path == "/v0/delegate";
        let operations = [&mut item.get, &mut item.post].into_iter().flatten();
        for operation in operations {
            let responses = &mut operation.responses.responses;
            responses
                .entry("429".into())
                .or_insert_with(|| error("Over a quota (`Retry-After`)").into());
            if audited {
                responses.entry("503".into()).or_insert_with(|| {
                    error("The audit log cannot be written (`audit_unavailable`)").into()
                });
            }
        }
    }
}

/// [`openapi`] as pretty JSON with a final newline, as `docs/openapi/manager.json` holds it.
pub fn openapi_json_text() -> String {
    let mut text = openapi().to_pretty_json().unwrap_or_else(|e| {
        format!("{{\"error\": \"the OpenAPI document failed to serialize: {e}\"}}")
    });
    text.push('\n');
    text
}

// ---------------------------------------------------------------------------------------------
// Service routes
// ---------------------------------------------------------------------------------------------

/// `GET /`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceInfo {
    /// `tkms-manager`.
    pub service: &'static str,
    /// The manager's version.
    pub version: &'static str,
}

/// What this service is.
#[utoipa::path(get, path = "/", tag = "service", operation_id = "root",
    responses((status = 200, description = "The service and its version", body = ServiceInfo)))]
async fn root() -> Json<ServiceInfo> {
    Json(ServiceInfo {
        service: "tkms-manager",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// `GET /health`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthResponse {
    /// `ok`, `degraded` (fewer than `t` reachable holders: nothing can be served) or `no-key`
    /// (before the first DKG).
    pub status: &'static str,
    /// The served epoch (0 before the first DKG).
    pub epoch: u64,
    /// Its threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u16>,
    /// Its committee size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// Nodes that answered the last survey.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reachable: Option<usize>,
    /// Reachable nodes holding the served epoch's share.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holders: Option<usize>,
}

/// `ok` while at least `t` reachable nodes hold the served epoch's share; `degraded` (503)
/// when fewer do, so the manager cannot serve; `no-key` before a DKG.
#[utoipa::path(get, path = "/health", tag = "service", operation_id = "health",
    responses(
        (status = 200, description = "Serving (or no key yet)", body = HealthResponse),
        (status = 503, description = "Degraded: fewer than `t` reachable holders", body = HealthResponse),
    ))]
async fn health(State(state): State<Arc<AppState>>) -> (StatusCode, Json<HealthResponse>) {
    let Some(cluster) = state.served.cluster() else {
        let body = HealthResponse {
            status: "no-key",
            epoch: 0,
            threshold: None,
            n: None,
            reachable: None,
            holders: None,
        };
        return (StatusCode::OK, Json(body));
    };
    let keys = cluster.keys();
    let health = match &state.admin {
        Some(admin) => Some(admin.health().await),
        None => None,
    };
    let servable = health.as_ref().is_none_or(|h| h.servable);
    let body = HealthResponse {
        status: if servable { "ok" } else { "degraded" },
        epoch: cluster.epoch(),
        threshold: Some(keys.threshold()),
        n: Some(keys.committee_size()),
        reachable: health.as_ref().map(|h| h.reachable),
        holders: health.as_ref().map(|h| h.holders),
    };
    let status = if servable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Prometheus counters: requests by route and outcome, node failures, quotas, connections,
/// the audit log.
#[utoipa::path(get, path = "/metrics", tag = "service", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render() + &state.front.render_metrics(),
    )
        .into_response()
}

/// This service's OpenAPI 3 document.
#[utoipa::path(get, path = "/openapi.json", tag = "service", operation_id = "openapi_json",
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json", body = Object)))]
async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi_json_text(),
    )
        .into_response()
}

/// `GET /v0/public-key` query (documentation: the handler reads `epoch=N` itself).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PublicKeyQuery {
    /// An earlier committed epoch (default: the served one), for a client checking an answer
    /// to a request that was in flight across an epoch switch.
    pub epoch: Option<u64>,
}

/// The served key set (public key, public shares, Feldman commitment), or that of an
/// earlier committed epoch.
#[utoipa::path(get, path = "/v0/public-key", tag = "service", operation_id = "public_key",
    params(PublicKeyQuery),
    responses(
        (status = 200, description = "The key set", body = PublicKeyResponse),
        (status = 400, description = "`epoch` is not a number", body = ErrorBody),
        (status = 404, description = "Not a committed epoch this manager recorded", body = ErrorBody),
        (status = 503, description = "No key yet", body = ErrorBody),
    ))]
async fn public_key(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<PublicKeyResponse>> {
    let cluster = state.served.cluster().ok_or_else(ApiError::no_key)?;
    // Only `epoch=N` is read; other parameters are ignored.
    let asked = query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("epoch=")))
        .map(|n| {
            n.parse::<u64>().map_err(|e| {
                ApiError::bad_request("invalid_query", format!("epoch must be a number: {e}"))
            })
        })
        .transpose()?;
    let (epoch, keys) = match asked {
        None => (cluster.epoch(), cluster.keys().clone()),
        Some(epoch) if epoch == cluster.epoch() => (epoch, cluster.keys().clone()),
        Some(epoch) => {
            let record = state
                .admin
                .as_ref()
                .and_then(|a| a.epoch(epoch).ok().flatten());
            let keys = record.and_then(|r| r.keys().ok()).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_epoch",
                    format!("epoch {epoch} is not a committed epoch this manager recorded"),
                )
            })?;
            (epoch, keys)
        }
    };
    let hex_point = |p| format!("0x{}", hex::encode(Secp256k1::encode_point(p)));
    let public_shares: BTreeMap<String, String> = keys
        .public_shares()
        .map(|(i, p)| (i.get().to_string(), hex_point(p)))
        .collect();
    Ok(Json(PublicKeyResponse {
        public_key: format!("0x{}", hex::encode(keys.public_key_encoded().bytes())),
        epoch,
        threshold: keys.threshold(),
        n: keys.committee_size(),
        public_shares,
        commitment: keys.commitment().points().iter().map(hex_point).collect(),
    }))
}
