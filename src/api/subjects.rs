//! Subject requests (role `privacy`): find, export and erase every order of
//! one person, named by a mobile number, an email address or an ID number.
//!
//! Identifiers come in a POST body, never in a URL, and are never logged:
//! each request is logged with the caller's token name, a request id (also
//! in the answer) and counts. Before answering, a request waits for this
//! node's views to cover the log as it was when the request came in and for
//! the subject index to take what they folded, so an order placed before
//! the request is never missed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::auth::{Caller, Role};
use super::error::ApiError;
use super::{AppState, parse_body};
use crate::domain::ErasureScope;
use crate::projections::subjects::{Identifier, Kind, SubjectIndex};

fn internal(e: impl std::error::Error + Send + Sync + 'static) -> ApiError {
    crate::service::ServiceError::Internal(crate::error::Cause::of(e)).into()
}

/// The body of every subject request: one or more identifiers of the person.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectBody {
    #[serde(default)]
    mobile: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    id_number: Option<String>,
}

impl SubjectBody {
    /// The identifiers, normalized, or a 422 naming the one at fault.
    fn identifiers(&self) -> Result<Vec<Identifier>, ApiError> {
        let mut ids = Vec::new();
        if let Some(m) = &self.mobile {
            ids.push(Identifier::mobile(m)?);
        }
        if let Some(e) = &self.email {
            ids.push(Identifier::email(e)?);
        }
        if let Some(i) = &self.id_number {
            ids.push(Identifier::id_number(i)?);
        }
        if ids.is_empty() {
            return Err(ApiError::unprocessable(
                "body",
                "must name the person by at least one of mobile, email, id_number",
            ));
        }
        Ok(ids)
    }
}

/// Parses the body of a subject request.
pub fn parse_subject(bytes: &[u8]) -> Result<Vec<Identifier>, ApiError> {
    parse_body::<SubjectBody>(bytes)?.identifiers()
}

/// One subject request as it came in.
struct Request {
    id: Uuid,
    ids: Vec<Identifier>,
    index: Arc<SubjectIndex>,
}

impl Request {
    fn kinds(&self) -> Vec<&'static str> {
        let kinds: BTreeSet<Kind> = self.ids.iter().map(Identifier::kind).collect();
        kinds.into_iter().map(Kind::as_str).collect()
    }
}

async fn begin(
    state: &AppState,
    caller: &Caller,
    body: Result<Bytes, BytesRejection>,
    what: &'static str,
) -> Result<Request, ApiError> {
    caller.require(&[Role::Privacy])?;
    let bytes = super::body_bytes(body)?;
    let ids = parse_subject(&bytes)?;
    let index = state.subjects.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "subject_index_unavailable",
            "this node keeps no subject index",
        )
    })?;
    let request = Request {
        id: Uuid::now_v7(),
        ids,
        index,
    };
    metrics::counter!(crate::telemetry::SUBJECT_REQUESTS, "request" => what).increment(1);
    tracing::info!(request_id = %request.id, token_name = caller.token_name(), request = what, identifiers = ?request.kinds(), "Subject request.");
    Ok(request)
}

/// Waits until this node's views cover the log as it was when the request
/// came in, then brings the index up to them. Answers the orders still
/// waiting for their key on this node (their entries are not known yet).
async fn index_current(state: &AppState, index: &Arc<SubjectIndex>) -> Result<u64, ApiError> {
    let came_in = crate::clock::now_ms();
    let deadline = tokio::time::Instant::now() + state.service.command_timeout();
    let lagging = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "index_lagging",
            "this node's views have not caught up with the log yet; retry",
        )
    };
    state
        .service
        .wait_reads_ready()
        .await
        .map_err(|_| lagging())?;
    if let Some(p) = &state.projector {
        while p.covered_ms.load(std::sync::atomic::Ordering::Acquire) < came_in {
            if tokio::time::Instant::now() >= deadline {
                return Err(lagging());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    loop {
        let index = index.clone();
        let pass = tokio::task::spawn_blocking(move || index.catch_up())
            .await
            .map_err(internal)?
            .map_err(internal)?;
        // An order whose key has not reached this node yet: the key
        // follower brings it within moments.
        if pass.waiting == 0 || tokio::time::Instant::now() >= deadline {
            return Ok(pass.waiting);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// What one order is, as a search lists it.
fn listed(view: &crate::service::OrderView, matched: &BTreeSet<Kind>) -> Value {
    let full = super::orders::order_json(view);
    json!({
        "order_id": view.order_id,
        "order_number": full["order_number"],
        "merchant_id": full["merchant_id"],
        "status": full["status"],
        "placed_at": full["placed_at"],
        "updated_at": full["updated_at"],
        "matched": matched.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        "erased_fields": full["erased_fields"],
    })
}

async fn found(
    state: &AppState,
    request: &Request,
) -> Result<(BTreeMap<Uuid, BTreeSet<Kind>>, u64), ApiError> {
    let waiting = index_current(state, &request.index).await?;
    let index = request.index.clone();
    let ids = request.ids.clone();
    let orders = tokio::task::spawn_blocking(move || index.find(&ids))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    Ok((orders, waiting))
}

/// `POST /v1/subjects/search`: the person's orders with their status.
pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = begin(&state, &caller, body, "search").await?;
    let (orders, waiting) = found(&state, &request).await?;
    let mut listed_orders = Vec::new();
    for (order_id, matched) in &orders {
        if let Some(view) = state.service.get(*order_id)? {
            listed_orders.push(listed(&view, matched));
        }
    }
    tracing::info!(request_id = %request.id, token_name = caller.token_name(), orders = listed_orders.len(), "Subject search answered.");
    Ok(Json(json!({
        "request_id": request.id,
        "orders": listed_orders,
        "orders_not_indexed_yet": waiting,
    }))
    .into_response())
}

/// `POST /v1/subjects/export`: everything orderlog holds about the person,
/// for the right to a copy: each order with its personal fields opened,
/// who received which fields when, and what was erased when.
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = begin(&state, &caller, body, "export").await?;
    let (orders, waiting) = found(&state, &request).await?;
    let mut exported = Vec::new();
    for (order_id, matched) in &orders {
        let Some(view) = state.service.get(*order_id)? else {
            continue;
        };
        let mut order = super::orders::order_json(&view);
        let row =
            crate::projections::query::order(state.service.store(), *order_id).map_err(internal)?;
        let shares: Vec<Value> = row
            .iter()
            .flat_map(|r| r.shares.iter())
            .map(|s| {
                json!({
                    "party": crate::audit::shares::party_text(&s.party),
                    "fields": s.classes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                    "at": crate::clock::rfc3339(s.at_ms),
                })
            })
            .collect();
        let erasure = view.shredded.as_ref().map(|s| {
            json!({
                "fields": s.classes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                "whole_order": s.whole,
                "at": crate::clock::rfc3339(s.at_ms),
            })
        });
        if let Value::Object(o) = &mut order {
            o.insert(
                "matched".into(),
                json!(matched.iter().map(|k| k.as_str()).collect::<Vec<_>>()),
            );
            o.insert("share_history".into(), Value::Array(shares));
            o.insert("erasure".into(), erasure.unwrap_or(Value::Null));
        }
        exported.push(order);
    }
    tracing::info!(request_id = %request.id, token_name = caller.token_name(), orders = exported.len(), "Subject data exported.");
    Ok(Json(json!({
        "request_id": request.id,
        "generated_at": crate::clock::rfc3339(crate::clock::now_ms()),
        "identifiers": request.kinds(),
        "orders": exported,
        "orders_not_indexed_yet": waiting,
    }))
    .into_response())
}

/// `POST /v1/subjects/erase`: erases every order of the person, each
/// through the normal erasure path, and answers each order's receipt.
pub async fn erase(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = begin(&state, &caller, body, "erase").await?;
    let (orders, waiting) = found(&state, &request).await?;
    // An order waiting for its key may be this person's: erasing what is
    // found would leave it. Once this node's key follower is current with
    // the key topic, a key still missing is lost (`verify` says
    // `key_lost`) and nothing here can read that order: the erasure goes
    // on, reported incomplete.
    let keys_current = state
        .service
        .tracker()
        .is_some_and(|t| t.keys.current(std::time::Duration::from_secs(2)));
    if waiting > 0 && !keys_current {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "index_incomplete",
            format!(
                "{waiting} orders are not indexed on this node yet (their keys have not arrived); retry"
            ),
        ));
    }
    // Each order as its own erase request: only the request id is passed on.
    let mut passed = HeaderMap::new();
    if let Some(v) = headers.get("x-request-id") {
        passed.insert("x-request-id", v.clone());
    }
    let erasures = orders.keys().map(|order_id| {
        let (state, caller, passed) = (&state, &caller, &passed);
        async move {
            let uri: Uri = format!("/v1/orders/{order_id}/erase")
                .parse()
                .expect("a path of ASCII");
            let answer = super::orders::erase(
                state,
                caller,
                &uri,
                passed,
                &Bytes::new(),
                *order_id,
                ErasureScope::Order,
            )
            .await;
            (*order_id, answer)
        }
    });
    let answers = futures::future::join_all(erasures).await;
    let mut results = Vec::new();
    let (mut erased, mut refused, mut complete) = (0, 0, waiting == 0);
    for (order_id, answer) in answers {
        let response = match answer {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .unwrap_or(Value::Null);
        if status.is_success() {
            erased += 1;
            complete &= body["receipt"]["complete"].as_bool().unwrap_or(false);
            results.push(json!({
                "order_id": order_id,
                "outcome": "erased",
                "receipt": body["receipt"],
            }));
        } else {
            refused += 1;
            complete = false;
            results.push(json!({
                "order_id": order_id,
                "outcome": "refused",
                "status": status.as_u16(),
                "error": body["error"],
            }));
        }
    }
    tracing::info!(request_id = %request.id, token_name = caller.token_name(), erased, refused, "Subject erased.");
    Ok(Json(json!({
        "request_id": request.id,
        "erased": erased,
        "refused": refused,
        "complete": complete,
        "orders": results,
        "orders_not_indexed_yet": waiting,
    }))
    .into_response())
}
