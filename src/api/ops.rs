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
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::auth::{Caller, Role};
use super::error::{ApiError, AuthErrors};
use crate::service::membership::ClusterStatus;
use crate::telemetry;

/// What `GET /healthz` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(schema_with = ok_schema)]
    pub status: &'static str,
}

fn ok_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(["ok"]))
        .build()
}

/// What `GET /readyz` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub status: ReadyStatus,
    /// Why not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reason: Option<&'static str>,
    /// Partition -> records the projector has not read (absent where this
    /// node runs no projector).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<BTreeMap<String, i64>>, nullable = false)]
    pub lag: Option<BTreeMap<i32, i64>>,
    /// This node's membership: partitions it writes, positions, heartbeat.
    pub cluster: ClusterStatus,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadyStatus {
    Ready,
    NotReady,
}

/// The process is up and serving HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    summary = "Liveness: the process is up",
    security(()),
    responses((status = 200, description = "up", body = Health))
)]
pub async fn healthz() -> Response {
    (StatusCode::OK, Json(Health { status: "ok" })).into_response()
}

/// Connected to Kafka and caught up with the log: the writers' stored state
/// has caught up since the start, and the projector has read the end of
/// every assigned partition within the last few seconds and has projected up
/// to it.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    summary = "Readiness: connected to Kafka, the key vault and the projector caught up",
    security(()),
    responses(
        (status = 200, description = "ready, with lag per partition", body = Readiness),
        (status = 503, description = "not ready, with the reason and lag per partition", body = Readiness),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let writers = state.service.ready();
    let cluster = state.service.cluster_status();
    let not_writing = if state.service.ready_to_start() {
        "waiting for the writers' group to give every partition a writer"
    } else {
        "writers are catching up with the log"
    };
    let answer = |status: StatusCode, reason: Option<&'static str>, lag| {
        let ready = if status == StatusCode::OK {
            ReadyStatus::Ready
        } else {
            ReadyStatus::NotReady
        };
        let body = Readiness {
            status: ready,
            reason,
            lag,
            cluster,
        };
        (status, Json(body)).into_response()
    };
    let Some(status) = &state.projector else {
        return if writers {
            answer(StatusCode::OK, None, None)
        } else {
            answer(StatusCode::SERVICE_UNAVAILABLE, Some(not_writing), None)
        };
    };
    let lag = status.lag();
    // A node that was down applies what the key topic got meanwhile (an
    // erasure's tombstone) before it answers reads.
    let vault = state
        .service
        .tracker()
        .is_none_or(|t| t.keys.current(Duration::from_secs(5)));
    // The lag must be of a reading of the log's end made after the writers
    // were all in place: a reading from before the last take-over barrier
    // shows no lag while the barrier is still to be projected.
    let fresh = status.caught_up_since(state.service.writers_ready_at_ms());
    if writers && vault && fresh && status.ready(Duration::from_secs(5)) {
        answer(StatusCode::OK, None, Some(lag))
    } else {
        let why = if !writers {
            not_writing
        } else if !vault {
            "the key vault is catching up with the key topic"
        } else if !status.assigned.load(std::sync::atomic::Ordering::Acquire) {
            "no partitions assigned yet"
        } else if !fresh {
            "projector is catching up with the log"
        } else {
            "cannot read the end of the log from Kafka"
        };
        answer(StatusCode::SERVICE_UNAVAILABLE, Some(why), Some(lag))
    }
}

/// What `GET /v1/cluster` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cluster {
    /// The node that answered.
    pub node_id: String,
    pub topic: String,
    pub members: Vec<ClusterMember>,
    /// Partition -> the live node that writes it (null: none right now).
    #[schema(value_type = BTreeMap<String, Option<String>>)]
    pub partition_owners: BTreeMap<i32, Option<String>>,
}

/// A node this one knows of, live or not.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterMember {
    pub node_id: String,
    pub url: String,
    pub this_node: bool,
    pub live: bool,
    #[schema(format = DateTime)]
    pub last_heartbeat: String,
    pub heartbeat_age_ms: u64,
    /// The partitions it writes.
    pub partitions: Vec<i32>,
    pub vault: VaultPositions,
    pub views: ViewPositions,
}

/// How far a node's key vault has applied and purged the key topic, per
/// partition (partition -> next offset), and its lag behind the topic's end.
#[derive(Debug, Serialize, ToSchema)]
pub struct VaultPositions {
    #[schema(value_type = BTreeMap<String, i64>)]
    pub applied: BTreeMap<i32, i64>,
    #[schema(value_type = BTreeMap<String, i64>)]
    pub purged: BTreeMap<i32, i64>,
    #[schema(value_type = BTreeMap<String, i64>)]
    pub lag: BTreeMap<i32, i64>,
}

/// How far a node's views have projected and purged the event log, per
/// partition (partition -> next offset), and their lag behind its end.
#[derive(Debug, Serialize, ToSchema)]
pub struct ViewPositions {
    #[schema(value_type = BTreeMap<String, i64>)]
    pub projected: BTreeMap<i32, i64>,
    #[schema(value_type = BTreeMap<String, i64>)]
    pub purged: BTreeMap<i32, i64>,
    #[schema(value_type = BTreeMap<String, i64>)]
    pub lag: BTreeMap<i32, i64>,
}

/// `GET /v1/cluster`: every node this one knows of (live or not), which
/// partitions each writes, and how far its vault and views have read and
/// purged, with the lag behind the ends of the topics as this node last read
/// them.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    operation_id = "cluster",
    summary = "The cluster: members, partition owners, each node's positions and lag [auditor, privacy]",
    responses(
        (status = 200, description = "Members (live or not), partition owners, and per node its \
            vault and view positions, purged positions, lag and last heartbeat", body = Cluster),
        AuthErrors
    )
)]
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
        members.push(ClusterMember {
            node_id: m.node_id.clone(),
            url: m.url.clone(),
            this_node: m.node_id == state.service.node_id(),
            live: k.live,
            last_heartbeat: crate::clock::rfc3339(m.heartbeat_ms),
            heartbeat_age_ms: k.age.as_millis() as u64,
            partitions: m.partitions.clone(),
            vault: VaultPositions {
                applied: pos.keys_applied.clone(),
                purged: pos.keys_purged.clone(),
                lag: lag(&key_ends, &pos.keys_applied),
            },
            views: ViewPositions {
                projected: pos.views_projected.clone(),
                purged: pos.views_purged.clone(),
                lag: lag(&log_ends, &pos.views_projected),
            },
        });
    }
    Ok(Json(Cluster {
        node_id: state.service.node_id().to_owned(),
        topic: state.topic.to_string(),
        members,
        partition_owners: owners,
    })
    .into_response())
}

/// Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    security(()),
    responses((status = 200, description = "Prometheus text exposition format", body = String,
        content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    metrics::gauge!(telemetry::LIVE_KEYS).set(state.service.vault().live_count() as f64);
    for (kind, bytes) in state.service.store().memory().by_kind() {
        metrics::gauge!(telemetry::STORE_MEMORY, "kind" => kind).set(bytes as f64);
    }
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
