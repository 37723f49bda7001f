//! Every REST failure, mapped once to an HTTP status and the JSON body the contract gives every
//! error: `{"error": {"code": "INVALID_ARGUMENT", "message": "..."}}`. The framework's own
//! rejections (bad JSON, wrong content type, bad query or path) and command-svc's gRPC errors come
//! through here too. Internal details are logged, never returned.

use axum::{
    Json,
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tonic::Code;
use tonic_types::StatusExt;

pub const INVALID_ARGUMENT: &str = "INVALID_ARGUMENT";
pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
pub const NOT_FOUND: &str = "NOT_FOUND";
pub const ORDER_NOT_FOUND: &str = "ORDER_NOT_FOUND";
pub const METHOD_NOT_ALLOWED: &str = "METHOD_NOT_ALLOWED";
pub const PAYLOAD_TOO_LARGE: &str = "PAYLOAD_TOO_LARGE";
pub const UNSUPPORTED_MEDIA_TYPE: &str = "UNSUPPORTED_MEDIA_TYPE";
pub const UNAVAILABLE: &str = "UNAVAILABLE";
pub const INTERNAL: &str = "INTERNAL";

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A word in capitals: `INVALID_ARGUMENT`, `UNAUTHENTICATED`, `NOT_FOUND`,
    /// `ORDER_NOT_FOUND`, `METHOD_NOT_ALLOWED`, `PAYLOAD_TOO_LARGE`, `UNSUPPORTED_MEDIA_TYPE`,
    /// `UNAVAILABLE`, `INTERNAL`, or command-svc's reason (`IDEMPOTENCY_KEY_REUSED`,
    /// `BALANCE_LIMIT`, `STORE_UNAVAILABLE` ...).
    #[schema(example = "INVALID_ARGUMENT")]
    pub code: String,
    /// What is wrong, for a person; never internal details.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A parameter, body field or cursor the contract does not accept (400).
    #[error("{0}")]
    Invalid(String),
    /// No valid bearer token (401). The reason is for the log and the caller alike: it names
    /// what is wrong with the token, never a secret.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// No route at this path (404).
    #[error("no such route")]
    NoRoute,
    /// The order does not exist, or is another user's: the two are indistinguishable (404).
    #[error("no such recharge order")]
    OrderNotFound,
    /// The route exists, not with this method (405).
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The body is larger than the API accepts (413).
    #[error("{0}")]
    TooLarge(String),
    /// The body is not `application/json` (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// command-svc refused because of what already exists (409), e.g. an idempotency key
    /// reused with another amount. `reason` is its `ErrorInfo` reason.
    #[error("{message}")]
    Conflict { reason: String, message: String },
    /// command-svc refused the request in the account's current state (422), e.g. an order
    /// that would take the balance past its limit.
    #[error("{message}")]
    Refused { reason: String, message: String },
    /// MySQL or command-svc cannot answer now (503). For a recharge the outcome is unknown:
    /// the caller retries with the same idempotency key.
    #[error("{message}")]
    Unavailable { reason: String, message: String },
    /// Anything else (500). The detail is logged; the caller gets a plain message.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::Invalid(message.into())
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        ApiError::Internal(detail.into())
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::NoRoute | ApiError::OrderNotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Refused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The word in capitals the body carries as `error.code`.
    pub fn code(&self) -> &str {
        match self {
            ApiError::Invalid(_) => INVALID_ARGUMENT,
            ApiError::Unauthenticated(_) => UNAUTHENTICATED,
            ApiError::NoRoute => NOT_FOUND,
            ApiError::OrderNotFound => ORDER_NOT_FOUND,
            ApiError::MethodNotAllowed => METHOD_NOT_ALLOWED,
            ApiError::TooLarge(_) => PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => UNSUPPORTED_MEDIA_TYPE,
            ApiError::Conflict { reason, .. }
            | ApiError::Refused { reason, .. }
            | ApiError::Unavailable { reason, .. } => reason,
            ApiError::Internal(_) => INTERNAL,
        }
    }

    fn unavailable(message: impl Into<String>) -> Self {
        ApiError::Unavailable {
            reason: UNAVAILABLE.to_owned(),
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(detail) => tracing::error!(%detail, "internal error"),
            ApiError::Unavailable { message, .. } => tracing::warn!(%message, "unavailable"),
            _ => {}
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
            },
        };
        let mut response = (self.status_code(), Json(body)).into_response();
        if matches!(self, ApiError::Unauthenticated(_)) {
            // RFC 6750: say which scheme would get in.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A MySQL that cannot be reached is a 503 (the frontend retries); any other database error is
/// a fault of ours.
impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => {
                tracing::warn!(%error, "MySQL unavailable");
                ApiError::unavailable("the read model is unavailable; retry shortly")
            }
            other => ApiError::internal(format!("MySQL: {other}")),
        }
    }
}

/// Bad JSON is a 400 whether it is malformed or of the wrong shape (a string or a float where
/// an integer amount belongs): axum's own 422 for the latter would clash with the contract's 422,
/// which means "refused in the account's state".
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(r) => {
                ApiError::UnsupportedMediaType(r.body_text())
            }
            JsonRejection::JsonDataError(r) => ApiError::Invalid(r.body_text()),
            JsonRejection::JsonSyntaxError(r) => ApiError::Invalid(r.body_text()),
            JsonRejection::BytesRejection(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::TooLarge(
                    "the body is larger than this service accepts (listeners.max_body_bytes)"
                        .to_owned(),
                )
            }
            JsonRejection::BytesRejection(r) => ApiError::Invalid(r.body_text()),
            other => ApiError::Invalid(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::Invalid(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::Invalid(rejection.body_text())
    }
}

/// command-svc's answer, by gRPC code; `error.code` is its `ErrorInfo` reason when it gave one.
/// A deadline or a connection that cannot be made means the outcome is unknown: 503, so the
/// caller retries with the same key. Our own client cancels a call only at its timeout, so
/// CANCELLED is the same case. UNAUTHENTICATED or PERMISSION_DENIED mean query-svc's own
/// token is misconfigured: a 500 for the user, an error in the log.
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let reason = status.get_details_error_info().map(|info| info.reason);
        let with_reason = |default: &str| reason.clone().unwrap_or_else(|| default.to_owned());
        match status.code() {
            Code::InvalidArgument => {
                let violations: Vec<String> = status
                    .get_details_bad_request()
                    .map(|bad| {
                        bad.field_violations
                            .into_iter()
                            .map(|v| format!("{}: {}", v.field, v.description))
                            .collect()
                    })
                    .unwrap_or_default();
                if violations.is_empty() {
                    ApiError::Invalid(status.message().to_owned())
                } else {
                    ApiError::Invalid(violations.join("; "))
                }
            }
            Code::NotFound => ApiError::OrderNotFound,
            Code::AlreadyExists => ApiError::Conflict {
                reason: with_reason("ALREADY_EXISTS"),
                message: status.message().to_owned(),
            },
            Code::FailedPrecondition => ApiError::Refused {
                reason: with_reason("FAILED_PRECONDITION"),
                message: status.message().to_owned(),
            },
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                tracing::warn!(code = ?status.code(), message = status.message(), "command-svc unavailable");
                ApiError::Unavailable {
                    reason: with_reason(UNAVAILABLE),
                    message: "command-svc is unavailable; the outcome is unknown: retry with the \
                              same idempotency key"
                        .to_owned(),
                }
            }
            code => ApiError::internal(format!(
                "command-svc answered {code:?}: {}",
                status.message()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    fn status(code: Code, reason: &str) -> tonic::Status {
        tonic::Status::with_error_details(
            code,
            "refused",
            ErrorDetails::with_error_info(reason, "billing.v1", std::collections::HashMap::new()),
        )
    }

    #[test]
    fn grpc_errors_keep_their_reason_as_the_code() {
        let limit = ApiError::from(status(Code::FailedPrecondition, "BALANCE_LIMIT"));
        assert_eq!(
            (limit.status_code(), limit.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "BALANCE_LIMIT")
        );
        let reused = ApiError::from(status(Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED"));
        assert_eq!(
            (reused.status_code(), reused.code()),
            (StatusCode::CONFLICT, "IDEMPOTENCY_KEY_REUSED")
        );
        let down = ApiError::from(tonic::Status::unavailable("connection refused"));
        assert_eq!(
            (down.status_code(), down.code()),
            (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE)
        );
        let timeout = ApiError::from(tonic::Status::cancelled("Timeout expired"));
        assert_eq!(timeout.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        let scope = ApiError::from(status(Code::PermissionDenied, "SCOPE"));
        assert_eq!(
            (scope.status_code(), scope.code()),
            (StatusCode::INTERNAL_SERVER_ERROR, INTERNAL)
        );
        assert_eq!(scope.to_string(), "internal error");
    }

    #[test]
    fn field_violations_become_the_message() {
        let mut details = ErrorDetails::with_error_info(
            "INVALID_ARGUMENT",
            "billing.v1",
            std::collections::HashMap::new(),
        );
        details.add_bad_request_violation("amount_micros", "must be between 1 and 10^12");
        let error = ApiError::from(tonic::Status::with_error_details(
            Code::InvalidArgument,
            "invalid",
            details,
        ));
        assert_eq!(error.status_code(), StatusCode::BAD_REQUEST);
        assert_eq!(
            error.to_string(),
            "amount_micros: must be between 1 and 10^12"
        );
    }
}
