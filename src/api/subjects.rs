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
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{Caller, Role};
use super::error::{ApiError, ErrorBody, ErrorDetail, SubjectErrors};
use super::orders::{Erased, OrderBody};
use super::{AppState, parse_body};
use crate::domain::{ErasureScope, FieldClass, Status};
use crate::erasure::Receipt;
use crate::projections::subjects::{Identifier, Kind, SubjectIndex};

fn internal(e: impl std::error::Error + Send + Sync + 'static) -> ApiError {
    crate::service::ServiceError::Internal(crate::error::Cause::of(e)).into()
}

/// One person, named by one or more identifiers. Spellings are normalized:
/// spaces, dashes, dots and brackets in a mobile number are ignored, and
/// +86, 0086 or 86 before an 11-digit PRC mobile is the same number without
/// it; an email compares without regard to case; an ID number ignores
/// spaces, and x is X. Identifiers travel in this body only, never in a
/// URL, and are never logged.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Subject, min_properties = 1)]
pub struct SubjectBody {
    /// 11-digit PRC mobile (any country-code spelling) or E.164.
    #[serde(default)]
    mobile: Option<String>,
    #[serde(default)]
    email: Option<String>,
    /// 18-character PRC resident ID (ISO 7064 MOD 11-2).
    #[serde(default)]
    id_number: Option<String>,
}

/// Which identifier of the person matched.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IdentifierKind {
    Mobile,
    Email,
    IdNumber,
}

impl From<Kind> for IdentifierKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Mobile => IdentifierKind::Mobile,
            Kind::Email => IdentifierKind::Email,
            Kind::IdNumber => IdentifierKind::IdNumber,
        }
    }
}

fn kinds(matched: &BTreeSet<Kind>) -> Vec<IdentifierKind> {
    matched.iter().map(|k| (*k).into()).collect()
}

/// What `POST /v1/subjects/search` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubjectSearch {
    /// Also in this node's log, with the caller's token name.
    pub request_id: Uuid,
    pub orders: Vec<SubjectOrder>,
    /// Orders this node could not index yet because their key has not
    /// reached it (normally 0).
    pub orders_not_indexed_yet: u64,
}

/// One of the person's orders, as a search lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubjectOrder {
    pub order_id: Uuid,
    pub order_number: String,
    pub merchant_id: String,
    pub status: Status,
    #[schema(format = DateTime)]
    pub placed_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// The identifiers that found it.
    pub matched: Vec<IdentifierKind>,
    pub erased_fields: Vec<FieldClass>,
}

/// What `POST /v1/subjects/export` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubjectExport {
    pub request_id: Uuid,
    #[schema(format = DateTime)]
    pub generated_at: String,
    /// The kinds of identifier the request named.
    pub identifiers: Vec<IdentifierKind>,
    pub orders: Vec<ExportedOrder>,
    pub orders_not_indexed_yet: u64,
}

/// The order as `GET /v1/orders/{id}` answers it to checkout (personal
/// fields opened while readable), with what matched, who received which
/// fields when, and its erasure.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportedOrder {
    #[serde(flatten)]
    pub order: OrderBody,
    /// The identifiers that found it.
    pub matched: Vec<IdentifierKind>,
    pub share_history: Vec<ShareRecord>,
    /// Null if never erased.
    #[schema(required)]
    pub erasure: Option<ErasureRecord>,
}

/// One share: the party, the field classes it received, when.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShareRecord {
    /// `logistics:<id>` or `merchant:<id>`.
    pub party: String,
    pub fields: Vec<FieldClass>,
    #[schema(format = DateTime)]
    pub at: String,
}

/// The order's erasure: the classes erased, whether the whole order, when.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasureRecord {
    pub fields: Vec<FieldClass>,
    pub whole_order: bool,
    #[schema(format = DateTime)]
    pub at: String,
}

/// What `POST /v1/subjects/erase` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubjectErasure {
    pub request_id: Uuid,
    pub erased: u64,
    pub refused: u64,
    /// Every order erased, every receipt complete (purged on every live
    /// node), and no order left unindexed.
    pub complete: bool,
    pub orders: Vec<SubjectErasureOrder>,
    /// Orders this node could not index because their key is missing from
    /// its vault although its key follower is current (a lost key: verify
    /// reports key_lost); complete is then false.
    pub orders_not_indexed_yet: u64,
}

/// One order of a subject erasure: erased, with its receipt, or refused
/// (say already erased meanwhile), with the status and error its erase
/// request got.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SubjectErasureOrder {
    Erased {
        order_id: Uuid,
        /// The order's erasure receipt, as POST /v1/orders/{id}/erase
        /// answers it under receipt.
        #[schema(required)]
        receipt: Option<Box<Receipt>>,
    },
    Refused {
        order_id: Uuid,
        status: u16,
        #[schema(required)]
        error: Option<ErrorDetail>,
    },
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

macro_rules! waits {
    () => {
        "Waits until this node's views cover the log as it was when the request came in, so \
        every order placed before it is found; 503 index_lagging if they do not within the \
        command timeout."
    };
}

const WAITS: &str = waits!();

const ERASE_WAITS: &str = concat!(
    waits!(),
    " 503 index_incomplete when some order's key has not reached this node yet (its owner \
    cannot be told): retry."
);

/// One subject request as it came in.
struct Request {
    id: Uuid,
    ids: Vec<Identifier>,
    index: Arc<SubjectIndex>,
}

impl Request {
    fn kinds(&self) -> Vec<IdentifierKind> {
        kinds(&self.ids.iter().map(Identifier::kind).collect())
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
fn listed(full: OrderBody, matched: &BTreeSet<Kind>) -> SubjectOrder {
    SubjectOrder {
        order_id: full.order_id,
        order_number: full.order_number,
        merchant_id: full.merchant_id,
        status: full.status,
        placed_at: full.placed_at,
        updated_at: full.updated_at,
        matched: kinds(matched),
        erased_fields: full.erased_fields,
    }
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
#[utoipa::path(
    post,
    path = "/v1/subjects/search",
    operation_id = "subjectSearch",
    summary = "Find a person's orders [privacy]",
    description = WAITS,
    request_body = SubjectBody,
    responses(
        (status = 200, description = "The person's orders (with a class not erased that holds the identifier), with their status.", body = SubjectSearch),
        SubjectErrors
    )
)]
pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = begin(&state, &caller, body, "search").await?;
    let (orders, waiting) = found(&state, &request).await?;
    let mut listed_orders = Vec::new();
    for (order_id, matched) in &orders {
        if let Some(full) = state
            .service
            .get(*order_id)?
            .as_ref()
            .and_then(OrderBody::of)
        {
            listed_orders.push(listed(full, matched));
        }
    }
    tracing::info!(request_id = %request.id, token_name = caller.token_name(), orders = listed_orders.len(), "Subject search answered.");
    Ok(Json(SubjectSearch {
        request_id: request.id,
        orders: listed_orders,
        orders_not_indexed_yet: waiting,
    })
    .into_response())
}

/// `POST /v1/subjects/export`: everything orderlog holds about the person,
/// for the right to a copy: each order with its personal fields opened,
/// who received which fields when, and what was erased when.
#[utoipa::path(
    post,
    path = "/v1/subjects/export",
    operation_id = "subjectExport",
    summary = "Everything held about a person, for the right to a copy [privacy]",
    description = WAITS,
    request_body = SubjectBody,
    responses(
        (status = 200, description = "The person's orders with personal fields opened, who received which fields when, and erasures.", body = SubjectExport),
        SubjectErrors
    )
)]
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
        let Some(order) = OrderBody::of(&view) else {
            continue;
        };
        let row =
            crate::projections::query::order(state.service.store(), *order_id).map_err(internal)?;
        let share_history = row
            .iter()
            .flat_map(|r| r.shares.iter())
            .map(|s| ShareRecord {
                party: crate::audit::shares::party_text(&s.party),
                fields: s.classes.clone(),
                at: crate::clock::rfc3339(s.at_ms),
            })
            .collect();
        let erasure = view.shredded.as_ref().map(|s| ErasureRecord {
            fields: s.classes.iter().copied().collect(),
            whole_order: s.whole,
            at: crate::clock::rfc3339(s.at_ms),
        });
        exported.push(ExportedOrder {
            order,
            matched: kinds(matched),
            share_history,
            erasure,
        });
    }
    tracing::info!(request_id = %request.id, token_name = caller.token_name(), orders = exported.len(), "Subject data exported.");
    Ok(Json(SubjectExport {
        request_id: request.id,
        generated_at: crate::clock::rfc3339(crate::clock::now_ms()),
        identifiers: request.kinds(),
        orders: exported,
        orders_not_indexed_yet: waiting,
    })
    .into_response())
}

/// `POST /v1/subjects/erase`: erases every order of the person, each
/// through the normal erasure path, and answers each order's receipt.
#[utoipa::path(
    post,
    path = "/v1/subjects/erase",
    operation_id = "subjectErase",
    summary = "Erase every order of a person [privacy]",
    description = ERASE_WAITS,
    request_body = SubjectBody,
    responses(
        (status = 200, description = "Each order erased through the normal erasure path, with its receipt; a refused one (say already erased meanwhile) with its error.", body = SubjectErasure),
        SubjectErrors
    )
)]
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
            .ok();
        if status.is_success() {
            let receipt = body
                .and_then(|b| serde_json::from_slice::<Erased>(&b).ok())
                .map(|e| Box::new(e.receipt));
            erased += 1;
            complete &= receipt.as_ref().is_some_and(|r| r.complete);
            results.push(SubjectErasureOrder::Erased { order_id, receipt });
        } else {
            let error = body
                .and_then(|b| serde_json::from_slice::<ErrorBody>(&b).ok())
                .map(|e| e.error);
            refused += 1;
            complete = false;
            results.push(SubjectErasureOrder::Refused {
                order_id,
                status: status.as_u16(),
                error,
            });
        }
    }
    tracing::info!(request_id = %request.id, token_name = caller.token_name(), erased, refused, "Subject erased.");
    Ok(Json(SubjectErasure {
        request_id: request.id,
        erased,
        refused,
        complete,
        orders: results,
        orders_not_indexed_yet: waiting,
    })
    .into_response())
}
