//! The one error type of the manager's HTTP API: every refusal is `{"error": "...", "code":
//! "..."}` with its status (Nox clients read `error`), and, for a quota, `Retry-After`.
//! Handlers return [`ApiResult`] and use `?`; each error source converts here, once.

use std::time::Duration;

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use tkms_sdk::v1::V1Error;

use crate::{admin::AdminError, cluster::ClusterError, nox::NoxError};

/// The JSON body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person (Nox's `Unauthorized: …` texts on `/v0`).
    pub error: String,
    /// A stable machine-readable code (`invalid_body`, `unauthorized`, `rate_limited`,
    /// `cluster_unavailable`, …).
    pub code: String,
}

/// An error answer: status, code, message, and for a quota the seconds to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code of the body.
    pub code: &'static str,
    /// The message of the body.
    pub message: String,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
}

/// What a handler returns.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error answer with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `400` with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// `503 no_key`: no DKG has run yet.
    pub fn no_key() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_key",
            "the cluster has no key yet: an operator must run a DKG (POST /admin/dkg)",
        )
    }

    /// `503 cluster_unavailable`: fewer than `threshold` nodes gave a verified partial.
    pub fn cluster_unavailable(threshold: u16, verified: usize) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            format!(
                "only {verified} of the {threshold} required key nodes answered; try again later"
            ),
        )
    }

    /// `401 replayed`: the key nodes have already served the request's nonce.
    pub fn replayed_at_nodes() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "replayed",
            "replayed: the key nodes have already served this request's nonce",
        )
    }

    /// `429 rate_limited` with `Retry-After` (whole seconds, at least 1).
    pub fn rate_limited(wait: Duration, what: &str) -> Self {
        let secs = crate::quota::retry_after_secs(wait);
        Self {
            retry_after: Some(secs),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("{what}; retry after {secs} s"),
            )
        }
    }

    /// `503 audit_unavailable`: key uses are refused while the audit log cannot be written.
    pub fn audit_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the audit log cannot be written; key uses are refused until it can",
        )
    }

    /// `500 internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            code: self.code.to_string(),
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
}

impl From<&NoxError> for ApiError {
    fn from(e: &NoxError) -> Self {
        Self::new(status(e.status()), e.code(), e.to_string())
    }
}

impl From<NoxError> for ApiError {
    fn from(e: NoxError) -> Self {
        Self::from(&e)
    }
}

impl From<&V1Error> for ApiError {
    fn from(e: &V1Error) -> Self {
        Self::new(status(e.status()), e.code(), e.to_string())
    }
}

impl From<V1Error> for ApiError {
    fn from(e: V1Error) -> Self {
        Self::from(&e)
    }
}

impl From<&AdminError> for ApiError {
    fn from(e: &AdminError) -> Self {
        let (status, code) = match e {
            AdminError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            AdminError::Node(_) => (StatusCode::SERVICE_UNAVAILABLE, "node_unavailable"),
            AdminError::Ceremony(_) => (StatusCode::BAD_GATEWAY, "ceremony_failed"),
            AdminError::Busy => (StatusCode::CONFLICT, "ceremony_in_progress"),
            AdminError::State(_) => (StatusCode::INTERNAL_SERVER_ERROR, "state"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        Self::from(&e)
    }
}

/// A cluster failure that is not a refusal of the requester: `503` when too few nodes
/// answered, `500` otherwise. (A requester the nodes refused is the route's own answer.)
impl From<&ClusterError> for ApiError {
    fn from(e: &ClusterError) -> Self {
        match e {
            ClusterError::Unavailable {
                threshold,
                verified,
                ..
            } => Self::cluster_unavailable(*threshold, *verified),
            e => Self::internal(e.to_string()),
        }
    }
}
