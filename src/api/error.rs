//! Errors as the HTTP API answers them: `{"error": {"code", "message", "field"?}}`
//! with the fitting status. Messages never contain request values (they may
//! be personal data) or tokens.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{DomainError, ValidationError};
use crate::service::ServiceError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, for a program (`code`) and for a person (`message`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    #[schema(example = "invalid_field")]
    pub code: String,
    pub message: String,
    /// The request field, header or query parameter at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "consignee.mobile", nullable = false)]
    pub field: Option<String>,
}

/// Declares a set of error statuses a group of operations answers, each
/// with the shared `Error` response, for `responses(...)` in their
/// `#[utoipa::path]`.
macro_rules! error_responses {
    ($($(#[$doc:meta])* $name:ident: $($status:literal),+;)+) => {
        $(
            $(#[$doc])*
            #[derive(Debug)]
            pub struct $name;

            impl utoipa::IntoResponses for $name {
                fn responses() -> std::collections::BTreeMap<
                    String,
                    utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
                > {
                    [$($status),+]
                        .into_iter()
                        .map(|status: u16| {
                            (
                                status.to_string(),
                                utoipa::openapi::Ref::from_response_name("Error").into(),
                            )
                        })
                        .collect()
                }
            }
        )+
    };
}

error_responses! {
    /// Placing an order.
    PlaceErrors: 400, 401, 403, 409, 413, 422, 503;
    /// A command on an existing order.
    OrderCommandErrors: 400, 401, 403, 404, 409, 412, 413, 422, 503;
    /// Erasing an order (its receipt may fail to be checked: 500).
    EraseErrors: 400, 401, 403, 404, 409, 412, 413, 422, 500, 503;
    /// Reading an order or its erasure.
    OrderReadErrors: 400, 401, 403, 404, 500, 503;
    /// A subject request.
    SubjectErrors: 400, 401, 403, 413, 422, 500, 503;
    /// Reading a feed.
    FeedErrors: 400, 401, 403, 422, 500, 503;
    /// Reading one order of a view.
    ViewOrderErrors: 400, 401, 403, 404, 422, 500, 503;
    /// An authenticated read of the node's own state.
    AuthErrors: 401, 403;
}

/// The one error response every operation refers to
/// (`#/components/responses/Error`).
impl<'s> utoipa::ToResponse<'s> for ErrorBody {
    fn response() -> (
        &'s str,
        utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
    ) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        (
            "Error",
            ResponseBuilder::new()
                .description(ERROR_RESPONSE)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Error")))
                        .build(),
                )
                .build()
                .into(),
        )
    }
}

const ERROR_RESPONSE: &str = "An error: 400 malformed request, 401 no or unknown token, 403 wrong role, \
404 unknown order or route, 409 conflicts with the order's state, 412 version mismatch, 413 body over \
64 KiB, 422 invalid field, 503 retry: log_unavailable (nothing written), outcome_unknown (sent, not \
confirmed within --produce-timeout-ms; retry with the same Idempotency-Key), partition_moving (the \
order's partition is changing writer node; nothing written), shutting_down, view_lagging.";

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unprocessable(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).field(field)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::unprocessable(e.field, e.problem)
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        use DomainError::*;
        let (status, code) = match &e {
            NotFound => (StatusCode::NOT_FOUND, "order_not_found"),
            AlreadyPlaced => (StatusCode::CONFLICT, "already_placed"),
            ShareOfCancelled => (StatusCode::CONFLICT, "order_cancelled"),
            ShareOfErased | CancelOfErased => (StatusCode::CONFLICT, "order_erased"),
            ShareOfErasedClass(_) => (StatusCode::CONFLICT, "field_class_erased"),
            AlreadyCancelled => (StatusCode::CONFLICT, "already_cancelled"),
            AlreadyErased => (StatusCode::CONFLICT, "already_erased"),
            NoFieldClasses => (StatusCode::UNPROCESSABLE_ENTITY, "no_field_classes"),
            ForeignMerchant { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "foreign_merchant"),
            IdentityNotApplicable => (StatusCode::UNPROCESSABLE_ENTITY, "identity_not_applicable"),
            NoContactFields => (StatusCode::UNPROCESSABLE_ENTITY, "no_contact_fields"),
            NoClassesToErase => (StatusCode::UNPROCESSABLE_ENTITY, "no_field_classes"),
            LegalHold(_) => (StatusCode::CONFLICT, "legal_hold"),
            HoldOfErased => (StatusCode::CONFLICT, "order_erased"),
            NotHeld => (StatusCode::CONFLICT, "not_held"),
        };
        let field = match &e {
            NoFieldClasses
            | IdentityNotApplicable
            | NoContactFields
            | ShareOfErasedClass(_)
            | NoClassesToErase => Some("fields"),
            ForeignMerchant { .. } => Some("party.id"),
            _ => None,
        };
        let mut err = ApiError::new(status, code, e.to_string());
        err.field = field.map(str::to_owned);
        err
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Domain(d) => d.into(),
            ServiceError::VersionMismatch { .. } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "version_mismatch",
                e.to_string(),
            ),
            ServiceError::IdempotencyMismatch => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                e.to_string(),
            )
            .field("Idempotency-Key"),
            ServiceError::IdempotencyInFlight => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_flight",
                e.to_string(),
            ),
            ServiceError::IdempotencyErased => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_erased",
                e.to_string(),
            ),
            ServiceError::Unavailable(_) => {
                tracing::warn!(error = %e, "Command failed: event log unavailable.");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "log_unavailable",
                    "the event log did not acknowledge the command; nothing was written; retry",
                )
            }
            ServiceError::OutcomeUnknown(limit) => {
                tracing::warn!(error = %e, "Command timed out after it was sent.");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "outcome_unknown",
                    format!(
                        "the event log did not acknowledge the command within {} ms; it may or may not \
                         have been written; retry with the same Idempotency-Key to learn its outcome",
                        limit.as_millis()
                    ),
                )
            }
            ServiceError::NotOwner { partition } | ServiceError::PartitionMoving { partition } => {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "partition_moving",
                    format!(
                        "partition {partition} of the order is moving between nodes and has no writer right now; \
                         nothing was written; retry"
                    ),
                )
            }
            ServiceError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the service is shutting down; retry",
            ),
            ServiceError::Internal(detail) => {
                tracing::error!(%detail, "Internal error.");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

/// Turns a serde error into a 400 (not JSON) or a 422 (JSON of the wrong
/// shape) that names the field, without echoing any value.
pub fn json_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = err.path().to_string();
    let inner = err.inner();
    match inner.classify() {
        serde_json::error::Category::Data => {}
        _ => {
            return ApiError::bad_request(
                "invalid_json",
                format!(
                    "request body is not valid JSON (line {}, column {})",
                    inner.line(),
                    inner.column()
                ),
            );
        }
    }
    let text = inner.to_string();
    let text = text.split(" at line ").next().unwrap_or("");
    let expected = text.split_once(", expected ").map(|(_, e)| e);
    let (field, message) = if let Some(rest) = text.strip_prefix("missing field `") {
        let name = rest.trim_end_matches('`');
        let field = if path == "." {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        };
        (field, "is required".to_owned())
    } else if text.starts_with("unknown field") {
        (
            path,
            format!(
                "is not a known field{}",
                expected
                    .map(|e| format!("; expected {e}"))
                    .unwrap_or_default()
            ),
        )
    } else if text.starts_with("invalid type") {
        (
            path,
            format!(
                "has the wrong type{}",
                expected
                    .map(|e| format!("; expected {e}"))
                    .unwrap_or_default()
            ),
        )
    } else if text.starts_with("invalid length") {
        (
            path,
            format!(
                "has the wrong length{}",
                expected
                    .map(|e| format!("; expected {e}"))
                    .unwrap_or_default()
            ),
        )
    } else if text.contains("out of range") || text.starts_with("invalid value") {
        (
            path,
            format!(
                "has an invalid value{}",
                expected
                    .map(|e| format!("; expected {e}"))
                    .unwrap_or_default()
            ),
        )
    } else {
        (path, "is invalid".to_owned())
    };
    let field = if field == "." || field.is_empty() {
        "body".to_owned()
    } else {
        field
    };
    ApiError::unprocessable(field, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        amount: u64,
        consignee: C,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct C {
        name: String,
        mobile: String,
    }

    fn parse(s: &str) -> ApiError {
        let mut de = serde_json::Deserializer::from_str(s);
        json_error(serde_path_to_error::deserialize::<_, T>(&mut de).unwrap_err())
    }

    #[test]
    fn shape_errors_name_the_field_and_never_echo_the_value() {
        let e = parse(r#"{"amount": "13800138000", "consignee": {"name": "x", "mobile": "y"}}"#);
        assert_eq!(
            (e.status, e.field.as_deref()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("amount"))
        );
        assert!(!e.message.contains("13800138000"), "{}", e.message);
        let e = parse(r#"{"amount": 1, "consignee": {"name": "x"}}"#);
        assert_eq!(e.field.as_deref(), Some("consignee.mobile"));
        assert_eq!(e.message, "is required");
        let e =
            parse(r#"{"amount": 1, "consignee": {"name": "x", "mobile": "y", "secret": "Zhang"}}"#);
        assert_eq!(e.field.as_deref(), Some("consignee.secret"));
        assert!(!e.message.contains("Zhang"));
        let e = parse(r#"{"amount": -5, "consignee": {"name": "x", "mobile": "y"}}"#);
        assert_eq!(e.field.as_deref(), Some("amount"));
        let e = parse(
            r#"{"amount": 99999999999999999999999, "consignee": {"name": "x", "mobile": "y"}}"#,
        );
        assert_eq!(e.field.as_deref(), Some("amount"));
    }

    #[test]
    fn syntax_errors_are_400() {
        let e = parse(r#"{"amount": 1,"#);
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_json")
        );
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(parse(&deep).status.is_client_error());
    }
}
