//! Every command error mapped once: to a gRPC status with a `google.rpc.ErrorInfo` reason (and a
//! `BadRequest` for invalid fields), or to an HTTP status with a JSON body. Internal details are
//! logged, never returned.

use axum::{Json, http::StatusCode, response::IntoResponse};
use serde_json::json;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{commands::CommandError, store::StoreError};

pub const ERROR_DOMAIN: &str = "billing.v1";
pub const REASON_INVALID_ARGUMENT: &str = "INVALID_ARGUMENT";
pub const REASON_INSUFFICIENT_QUOTA: &str = "INSUFFICIENT_QUOTA";
pub const REASON_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";
pub const REASON_ORDER_NOT_FOUND: &str = "ORDER_NOT_FOUND";
pub const REASON_BALANCE_LIMIT: &str = "BALANCE_LIMIT";
pub const REASON_CHARGE_NOT_FOUND: &str = "CHARGE_NOT_FOUND";
pub const REASON_REFUND_EXCEEDS_CHARGE: &str = "REFUND_EXCEEDS_CHARGE";
pub const REASON_RESERVATION_NOT_FOUND: &str = "RESERVATION_NOT_FOUND";
pub const REASON_SETTLE_EXCEEDS_HOLD: &str = "SETTLE_EXCEEDS_HOLD";
pub const REASON_UNPRICED: &str = "UNPRICED";
pub const REASON_AMOUNT_LIMIT: &str = "AMOUNT_LIMIT";
pub const REASON_PRICE_LIST_NOT_FOUND: &str = "PRICE_LIST_NOT_FOUND";
pub const REASON_SPEND_LIMIT_REACHED: &str = "SPEND_LIMIT_REACHED";
pub const REASON_SCOPE: &str = "SCOPE";
pub const REASON_UNAUTHENTICATED: &str = "UNAUTHENTICATED";
pub const REASON_STORE_UNAVAILABLE: &str = "STORE_UNAVAILABLE";
pub const REASON_INTERNAL: &str = "INTERNAL";

pub fn status_with_reason(code: Code, message: impl Into<String>, reason: &str) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new()),
    )
}

impl CommandError {
    /// The gRPC code and the `ErrorInfo` reason of this error.
    pub fn code_and_reason(&self) -> (Code, &'static str) {
        match self {
            CommandError::Invalid(_) => (Code::InvalidArgument, REASON_INVALID_ARGUMENT),
            CommandError::InsufficientQuota => {
                (Code::FailedPrecondition, REASON_INSUFFICIENT_QUOTA)
            }
            CommandError::BalanceLimit => (Code::FailedPrecondition, REASON_BALANCE_LIMIT),
            CommandError::KeyReused { .. } => (Code::AlreadyExists, REASON_KEY_REUSED),
            CommandError::OrderNotFound => (Code::NotFound, REASON_ORDER_NOT_FOUND),
            CommandError::ChargeNotFound => (Code::NotFound, REASON_CHARGE_NOT_FOUND),
            CommandError::RefundExceedsCharge => {
                (Code::FailedPrecondition, REASON_REFUND_EXCEEDS_CHARGE)
            }
            CommandError::ReservationNotFound => (Code::NotFound, REASON_RESERVATION_NOT_FOUND),
            CommandError::SettleExceedsHold => {
                (Code::FailedPrecondition, REASON_SETTLE_EXCEEDS_HOLD)
            }
            CommandError::Unpriced { .. } => (Code::FailedPrecondition, REASON_UNPRICED),
            CommandError::AmountLimit => (Code::FailedPrecondition, REASON_AMOUNT_LIMIT),
            CommandError::PriceListNotFound(_) => (Code::NotFound, REASON_PRICE_LIST_NOT_FOUND),
            CommandError::SpendLimitReached(_) => {
                (Code::FailedPrecondition, REASON_SPEND_LIMIT_REACHED)
            }
            CommandError::Store(StoreError::Unavailable(_) | StoreError::Conflict(_)) => {
                (Code::Unavailable, REASON_STORE_UNAVAILABLE)
            }
            CommandError::Store(StoreError::Internal(_)) => (Code::Internal, REASON_INTERNAL),
        }
    }

    /// What the caller is told; storage faults are logged here and described generically.
    fn public_message(&self) -> String {
        match self {
            CommandError::Store(error @ (StoreError::Unavailable(_) | StoreError::Conflict(_))) => {
                tracing::warn!(%error, "store unavailable");
                "the store is unavailable; the outcome is unknown: retry with the same key".into()
            }
            CommandError::Store(error @ StoreError::Internal(_)) => {
                tracing::error!(%error, "internal store error");
                "internal error".into()
            }
            other => other.to_string(),
        }
    }
}

impl From<CommandError> for Status {
    fn from(error: CommandError) -> Status {
        let (code, reason) = error.code_and_reason();
        let message = error.public_message();
        let mut details =
            ErrorDetails::with_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new());
        match &error {
            CommandError::Invalid(violations) => {
                for violation in violations {
                    details
                        .add_bad_request_violation(violation.field, violation.description.clone());
                }
            }
            CommandError::KeyReused { key } => {
                details.set_error_info(
                    reason,
                    ERROR_DOMAIN,
                    std::collections::HashMap::from([("key".to_owned(), (*key).to_owned())]),
                );
            }
            CommandError::Unpriced {
                api_id,
                list,
                version,
                missing,
            } => {
                let metadata = [
                    ("api_id", api_id.clone()),
                    ("meters", missing.join(",")),
                    ("price_list", list.clone()),
                    ("price_version", version.to_string()),
                ];
                let metadata: std::collections::HashMap<String, String> = metadata
                    .into_iter()
                    .map(|(key, value)| (key.to_owned(), value))
                    .collect();
                details.set_error_info(reason, ERROR_DOMAIN, metadata);
            }
            CommandError::SpendLimitReached(reached) => {
                let metadata = [
                    ("scope", reached.scope.to_string()),
                    ("window", reached.window.as_str().to_owned()),
                    ("remaining_micros", reached.remaining.get().to_string()),
                ];
                let metadata: std::collections::HashMap<String, String> = metadata
                    .into_iter()
                    .map(|(key, value)| (key.to_owned(), value))
                    .collect();
                details.set_error_info(reason, ERROR_DOMAIN, metadata);
            }
            _ => {}
        }
        Status::with_error_details(code, message, details)
    }
}

/// An HTTP error with the JSON body every endpoint uses:
/// `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl HttpError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        HttpError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<CommandError> for HttpError {
    fn from(error: CommandError) -> Self {
        let (code, reason) = error.code_and_reason();
        let status = match code {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::FailedPrecondition => StatusCode::UNPROCESSABLE_ENTITY,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        HttpError::new(status, reason, error.public_message())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> axum::response::Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}
