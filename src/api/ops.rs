//! Operational endpoints: liveness, readiness, Prometheus metrics. No
//! authentication (they are scraped by infrastructure) and no personal data.

use std::time::Duration;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::telemetry;

/// The process is up and serving HTTP.
pub async fn healthz() -> Response {
    (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
}

/// Connected to Kafka and caught up with the log: the writers' stored state
/// has caught up since the start, and the projector has read the end of
/// every assigned partition within the last few seconds and has projected up
/// to it.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let writers = state.service.ready();
    let cluster = state.service.cluster_status();
    let not_writing = if state.service.ready_to_start() {
        "waiting for the writers' group to give every partition a writer"
    } else {
        "writers are catching up with the log"
    };
    let Some(status) = &state.projector else {
        return if writers {
            (
                StatusCode::OK,
                Json(json!({"status": "ready", "cluster": cluster})),
            )
                .into_response()
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "not_ready", "reason": not_writing, "cluster": cluster})),
            )
                .into_response()
        };
    };
    let lag = status.lag();
    if writers && status.ready(Duration::from_secs(5)) {
        (
            StatusCode::OK,
            Json(json!({"status": "ready", "lag": lag, "cluster": cluster})),
        )
            .into_response()
    } else {
        let why = if !writers {
            not_writing
        } else if !status.assigned.load(std::sync::atomic::Ordering::Acquire) {
            "no partitions assigned yet"
        } else if !status.caught_up() {
            "projector is catching up with the log"
        } else {
            "cannot read the end of the log from Kafka"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": why, "lag": lag, "cluster": cluster})),
        )
            .into_response()
    }
}

/// Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    metrics::gauge!(telemetry::LIVE_KEYS).set(state.service.vault().live_count() as f64);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        telemetry::prometheus().render(),
    )
        .into_response()
}

/// Counts every request by its route pattern (never the concrete path, which
/// holds ids) and status.
pub async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    metrics::counter!(telemetry::HTTP_REQUESTS, "route" => route, "status" => response.status().as_u16().to_string())
        .increment(1);
    response
}
