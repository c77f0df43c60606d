//! Operational endpoints: liveness, readiness, Prometheus metrics (no
//! authentication: they are scraped by infrastructure), and the cluster's
//! state for auditors. No personal data.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::auth::{Caller, Role};
use super::error::ApiError;
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
    // A node that was down applies what the key topic got meanwhile (an
    // erasure's tombstone) before it answers reads.
    let vault = state
        .service
        .tracker()
        .is_none_or(|t| t.keys.current(Duration::from_secs(5)));
    if writers && vault && status.ready(Duration::from_secs(5)) {
        (
            StatusCode::OK,
            Json(json!({"status": "ready", "lag": lag, "cluster": cluster})),
        )
            .into_response()
    } else {
        let why = if !writers {
            not_writing
        } else if !vault {
            "the key vault is catching up with the key topic"
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

/// `GET /v1/cluster`: every node this one knows of (live or not), which
/// partitions each writes, and how far its vault and views have read and
/// purged, with the lag behind the ends of the topics as this node last read
/// them.
pub async fn cluster(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(&[Role::Auditor, Role::Privacy])?;
    let tracker = state.service.tracker();
    let key_ends = tracker.map(|t| t.keys.ends()).unwrap_or_default();
    let log_ends: BTreeMap<i32, i64> = state
        .projector
        .as_ref()
        .map(|p| {
            p.positions
                .lock()
                .iter()
                .map(|(p, (_, high))| (*p, *high))
                .collect()
        })
        .unwrap_or_default();
    let lag = |ends: &BTreeMap<i32, i64>, at: &BTreeMap<i32, i64>| -> BTreeMap<i32, i64> {
        ends.iter()
            .map(|(p, end)| (*p, (end - at.get(p).copied().unwrap_or(0)).max(0)))
            .collect()
    };
    let known = state.service.members();
    let mut owners: BTreeMap<i32, Option<String>> = (0..state.service.partitions() as i32)
        .map(|p| (p, None))
        .collect();
    let mut members = Vec::with_capacity(known.len());
    for k in &known {
        let m = &k.member;
        if k.live {
            for p in &m.partitions {
                owners.insert(*p, Some(m.node_id.clone()));
            }
        }
        let pos = &m.positions;
        members.push(json!({
            "node_id": m.node_id,
            "url": m.url,
            "this_node": m.node_id == state.service.node_id(),
            "live": k.live,
            "last_heartbeat": crate::clock::rfc3339(m.heartbeat_ms),
            "heartbeat_age_ms": k.age.as_millis() as u64,
            "partitions": m.partitions,
            "vault": {
                "applied": pos.keys_applied,
                "purged": pos.keys_purged,
                "lag": lag(&key_ends, &pos.keys_applied),
            },
            "views": {
                "projected": pos.views_projected,
                "purged": pos.views_purged,
                "lag": lag(&log_ends, &pos.views_projected),
            },
        }));
    }
    Ok(Json(json!({
        "node_id": state.service.node_id(),
        "topic": &*state.topic,
        "members": members,
        "partition_owners": owners,
    }))
    .into_response())
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
