//! Error answers of the service: CyborgDB's `{"status_code", "detail"}` body (which its
//! SDK's exceptions read), plus a stable machine-readable `code`; and their OpenAPI entries.

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::ToSchema;

use crate::error::Error;

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    /// The HTTP status, repeated.
    pub status_code: u16,
    /// What was wrong, in words a caller can act on.
    pub detail: String,
    /// A stable name of the error (`wrong_key`, `index_not_found`, `invalid_json`, ...).
    pub code: String,
}

/// An error answer.
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: a well-formed request the service refuses.
    pub(super) fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 400: a feature of the CyborgDB service tkms does not have.
    pub(super) fn unsupported(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "not_supported", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(ErrorResponse {
                status_code: self.status.as_u16(),
                detail: self.message,
                code: self.code.to_owned(),
            }),
        )
            .into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use StatusCode as S;
        let (status, code) = match &e {
            Error::WrongKey { .. } => (S::UNAUTHORIZED, "wrong_key"),
            Error::InvalidKey(_) => (S::BAD_REQUEST, "invalid_key"),
            Error::IndexNotFound(_) => (S::NOT_FOUND, "index_not_found"),
            Error::IndexExists(_) => (S::CONFLICT, "index_exists"),
            Error::KmsEnvelopeExists(_) => (S::CONFLICT, "kms_envelope_exists"),
            Error::KmsEnvelopeNotFound(_) => (S::NOT_FOUND, "kms_envelope_not_found"),
            Error::Conflict(_) => (S::CONFLICT, "conflict"),
            Error::InvalidIndexName(_) => (S::BAD_REQUEST, "invalid_index_name"),
            Error::InvalidConfig(_) => (S::BAD_REQUEST, "invalid_config"),
            Error::DimensionMismatch { .. } => (S::BAD_REQUEST, "dimension_mismatch"),
            Error::NonFiniteVector { .. } => (S::BAD_REQUEST, "non_finite_vector"),
            Error::DuplicateId(_) => (S::BAD_REQUEST, "duplicate_id"),
            Error::InvalidFilter(_) => (S::BAD_REQUEST, "invalid_filter"),
            Error::NotEnoughVectors { .. } => (S::BAD_REQUEST, "not_enough_vectors"),
            Error::PermissionDenied { .. } => (S::FORBIDDEN, "permission_denied"),
            Error::InvalidEnvelope(_) => (S::BAD_REQUEST, "invalid_kms_envelope"),
            Error::Kms(_) => (S::BAD_GATEWAY, "kms_error"),
            Error::Corrupted(_) => (S::INTERNAL_SERVER_ERROR, "corrupted"),
            Error::Storage(_) => (S::INTERNAL_SERVER_ERROR, "storage_error"),
            _ => (S::BAD_REQUEST, "invalid_argument"),
        };
        Self::new(status, code, e.to_string())
    }
}

pub(super) type ApiResult<T> = Result<axum::Json<T>, ApiError>;

/// `axum::Json` with rejections turned into [`ApiError`]s: 422 for a body that does not
/// match the document (as CyborgDB), 413 too large, 415 not declared as JSON.
pub(super) struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    rejection.body_text(),
                ),
                StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    rejection.body_text(),
                ),
                _ => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_json",
                    rejection.body_text(),
                ),
            }),
        }
    }
}

pub(super) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take this method",
    )
}

/// The error answers a route documents, by status.
const ERRORS: &[(u16, &str)] = &[
    (
        400,
        "A well-formed request the engine refuses (bad key format, dimension, filter, ...)",
    ),
    (
        401,
        "Missing or invalid API key; wrong, missing or revoked index or user key",
    ),
    (
        403,
        "The key's scope does not allow this (read-only user key, user key on an owner operation)",
    ),
    (404, "No such index or user key"),
    (
        409,
        "The index exists, changed concurrently, or is being trained",
    ),
    (413, "The body is larger than the service accepts"),
    (415, "The body is not declared as application/json"),
    (422, "The body does not match this document"),
    (500, "Storage failed or holds corrupted data"),
    (502, "The KMS failed or refused"),
];

/// Every error answer of an authenticated JSON route, for `#[utoipa::path(responses(...))]`.
pub(super) struct ErrorResponses;

impl utoipa::IntoResponses for ErrorResponses {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::response::Response>> {
        ERRORS
            .iter()
            .map(|(status, description)| {
                let content = ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(ErrorResponse::name())))
                    .build();
                let response = ResponseBuilder::new()
                    .description(*description)
                    .content("application/json", content)
                    .build();
                (status.to_string(), RefOr::T(response))
            })
            .collect()
    }
}

/// [`ErrorResponses`] for a route without a body (no 413, 415 or 422).
pub(super) struct BodylessErrorResponses;

impl utoipa::IntoResponses for BodylessErrorResponses {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::response::Response>> {
        let mut all = ErrorResponses::responses();
        for status in ["413", "415", "422"] {
            all.remove(status);
        }
        all
    }
}
