//! The HTTP/JSON API (axum): routes, authentication, error mapping.
//!
//! Every route is declared once in [`routes`]; the router and the route list
//! that the OpenAPI test checks are both built from it. Each handler carries
//! its `#[utoipa::path]`, from which [`openapi`] generates the document. Handlers validate,
//! call the service, and shape the answer; no business rule lives here.

pub mod auth;
pub mod error;
pub mod forward;
pub mod openapi;
pub mod ops;
pub mod orders;
pub mod server;
pub mod subjects;
pub mod tls;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::routing::{MethodRouter, delete, get, post};

use crate::service::Service;
use auth::Tokens;
use error::ApiError;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub service: Service,
    pub tokens: Arc<Tokens>,
    pub topic: Arc<str>,
    /// The node's RocksDB, holding the views.
    pub store: crate::store::Store,
    /// The in-process projector's figures (readiness, lag).
    pub projector: Option<Arc<crate::projections::ProjectorStatus>>,
    /// Sends commands to the node that writes their partition.
    pub forwarder: Arc<forward::Forwarder>,
    /// How long an erase waits for every live node to purge (`--erasure-wait-ms`).
    pub erasure_wait: std::time::Duration,
    /// The node's subject index (none where it is not kept).
    pub subjects: Option<Arc<crate::projections::subjects::SubjectIndex>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

/// Every route: method, path (axum syntax), handler. A route added here
/// needs its handler listed in [`openapi`] too (a test fails otherwise).
pub fn routes() -> Vec<(&'static str, &'static str, MethodRouter<AppState>)> {
    vec![
        ("POST", "/v1/orders", post(orders::place_order)),
        ("GET", "/v1/orders/{id}", get(orders::get_order)),
        ("POST", "/v1/orders/{id}/shares", post(orders::share_order)),
        ("POST", "/v1/orders/{id}/cancel", post(orders::cancel_order)),
        ("POST", "/v1/orders/{id}/erase", post(orders::erase_order)),
        ("POST", "/v1/orders/{id}/hold", post(orders::hold_order)),
        (
            "DELETE",
            "/v1/orders/{id}/hold",
            delete(orders::release_hold),
        ),
        (
            "GET",
            "/v1/orders/{id}/erasure",
            get(orders::erasure_status),
        ),
        ("POST", "/v1/subjects/search", post(subjects::search)),
        ("POST", "/v1/subjects/export", post(subjects::export)),
        ("POST", "/v1/subjects/erase", post(subjects::erase)),
        ("GET", "/v1/cluster", get(ops::cluster)),
        (
            "GET",
            "/v1/shipping/{provider}/orders",
            get(views::shipping_feed),
        ),
        (
            "GET",
            "/v1/shipping/{provider}/orders/{id}",
            get(views::shipping_order),
        ),
        (
            "GET",
            "/v1/merchants/{merchant}/orders",
            get(views::merchant_feed),
        ),
        (
            "GET",
            "/v1/merchants/{merchant}/orders/{id}",
            get(views::merchant_order),
        ),
        ("GET", "/healthz", get(ops::healthz)),
        ("GET", "/readyz", get(ops::readyz)),
        ("GET", "/metrics", get(ops::metrics)),
    ]
}

/// `(method, path)` of every route, for documentation checks.
pub fn route_list() -> Vec<(&'static str, &'static str)> {
    routes().into_iter().map(|(m, p, _)| (m, p)).collect()
}

pub fn router(state: AppState) -> Router {
    let mut r = Router::new();
    for (_, path, handler) in routes() {
        r = r.route(path, handler);
    }
    r.fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(ops::count_requests))
        .with_state(state)
}

/// The body, or a 413 / 400 naming the problem.
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body is larger than {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::bad_request("unreadable_body", "request body could not be read")
        }
    })
}

/// Parses JSON into `T`, naming the field at fault on error.
pub fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "empty_body",
            "request body is empty; a JSON object is expected",
        ));
    }
    // serde's derived structs also accept a JSON array of their fields in
    // declaration order; the API takes objects only, so an array is refused
    // before it could be read positionally.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::unprocessable("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = serde_path_to_error::deserialize(&mut de).map_err(error::json_error)?;
    de.end().map_err(|_| {
        ApiError::bad_request("invalid_json", "trailing characters after the JSON body")
    })?;
    Ok(v)
}

/// Parses any JSON value (for canonical digests).
pub fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!(
                "request body is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })
}
