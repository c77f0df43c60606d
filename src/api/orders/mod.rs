//! The command API: place, share, cancel, erase, and read one order. The
//! request bodies are in [`bodies`], the answers in [`answers`]; here the
//! handlers and their `#[utoipa::path]`.

mod answers;
mod bodies;

pub use answers::{
    Consignee, Contact, Erased, ErasureStatus, Held, HoldState, OrderBody, OrderItem, PartyState,
    Personal, ShareState, Written,
};
pub use bodies::{AddressBody, HoldBody, PartyKind};
pub(crate) use bodies::{CancelBody, EraseBody, PlaceOrderBody, ShareBody};

use std::collections::BTreeSet;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::IntoParams;
use uuid::Uuid;

use super::auth::{Caller, Role};
use super::error::{ApiError, EraseErrors, OrderCommandErrors, OrderReadErrors, PlaceErrors};
use super::{AppState, parse_body};
use crate::domain::validation::{HoldReason, MerchantId, ProviderId};
use crate::domain::{
    CancelReason, Command, ErasureScope, FieldClass, Hold, NewOrder, Party, PersonalFields,
};
use crate::service::{Idempotency, Outcome, ServiceError};

/// The field classes named in `raw`, or a 422 naming the one at fault.
fn parse_classes(field: &str, raw: &[String]) -> Result<BTreeSet<FieldClass>, ApiError> {
    raw.iter()
        .enumerate()
        .map(|(n, s)| {
            FieldClass::parse(s).ok_or_else(|| {
                ApiError::unprocessable(
                    format!("{field}[{n}]"),
                    "must be one of shipping, contact, identity",
                )
            })
        })
        .collect()
}

// Parameter descriptions several operations share.

const IF_MATCH: &str =
    "Expected order version (optimistic concurrency); 412 when the order has moved on.";

macro_rules! command_idempotency {
    () => {
        "A retry with the same key and body returns the first answer and writes nothing; the \
        same key with another body is refused (422 idempotency_key_reused). Keys are kept for \
        --idempotency-ttl-hours (they also travel in the event's record). Any node answers a \
        retry: a new order goes to the partition its key maps to, whose writer knows the key. \
        After 503 outcome_unknown, retry with the same key to learn the outcome (409 \
        idempotency_key_in_flight while it is still being settled)."
    };
}

const COMMAND_IDEMPOTENCY: &str = command_idempotency!();

const PLACE_IDEMPOTENCY: &str = concat!(
    command_idempotency!(),
    " If the order was erased since, a retry is refused with 409 idempotency_key_erased: the \
    request's digest was keyed by the order's key, which the erasure destroyed, so nothing can \
    tell whether it is the same request."
);

const HOLD_IDEMPOTENCY: &str =
    "A retry with the same key and body returns the first answer and writes nothing.";

/// `If-Match: 3` or `If-Match: "3"`.
fn expected_version(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get("if-match") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .map(|s| s.trim().trim_matches('"'))
        .and_then(|s| s.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request("invalid_header", "If-Match must be an order version number")
                .field("If-Match")
        })
}

/// The route whose request digest is keyed by the new order's key.
const PLACE_ROUTE: &str = "POST /v1/orders";

fn idempotency(
    caller: &Role,
    headers: &HeaderMap,
    route: &str,
    body: &[u8],
) -> Result<Option<Idempotency>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_header",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
            .field("Idempotency-Key")
        })?;
    // The digest covers the meaning of the body, not its spacing (an empty
    // body, which only an erase accepts, means `{}`).
    let canonical: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        super::parse_json(body)?
    };
    Ok(Some(Idempotency {
        key: crate::service::key_digest(&caller.to_string(), key),
        request: crate::service::request_hash(route, &canonical.to_string()),
        // Only a placement's body holds personal data.
        personal: route == PLACE_ROUTE,
    }))
}

/// A command carried out here, or the answer of the node that carried it out.
enum Done {
    Here(Outcome),
    There(Response),
}

/// Carries the command out here when this node writes the order's
/// partition; otherwise forwards the request to the node that does. While
/// the partition has no writer (it is moving), tries again until the command
/// timeout, then answers 503 `partition_moving`.
#[allow(clippy::too_many_arguments)] // one request, as it came in
async fn execute_or_forward(
    state: &AppState,
    caller: &Caller,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    order_id: Uuid,
    command: Command,
    expected_version: Option<u64>,
    idem: Option<Idempotency>,
) -> Result<Done, ApiError> {
    if caller.1.0 {
        // A forwarded call: its body and headers are the ones signed.
        state.forwarder.check_digest(headers, body)?;
    }
    let deadline = tokio::time::Instant::now() + state.service.command_timeout();
    loop {
        let partition = match state
            .service
            .execute_by(deadline, order_id, command.clone(), expected_version, idem)
            .await
        {
            Ok(o) => return Ok(Done::Here(o)),
            Err(ServiceError::NotOwner { partition }) => partition,
            Err(e) => return Err(e.into()),
        };
        // A forwarded command is not forwarded again.
        if !caller.1.0
            && let Some(owner) = state.service.owner_elsewhere(partition)
            && let Some(resp) = state
                .forwarder
                .forward(
                    state.service.node_id(),
                    &owner,
                    &caller.0,
                    method,
                    uri.path(),
                    headers,
                    body.clone(),
                    deadline,
                )
                .await?
        {
            return Ok(Done::There(resp));
        }
        if tokio::time::Instant::now() + std::time::Duration::from_millis(100) >= deadline {
            return Err(ServiceError::PartitionMoving { partition }.into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A command on an existing order as its route received it: the
/// idempotency key and expected version read from the headers, then carried
/// out here or at the node that writes the order's partition.
#[allow(clippy::too_many_arguments)] // one request, as it came in
async fn command_on(
    state: &AppState,
    caller: &Caller,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    order_id: Uuid,
    route: &str,
    command: Command,
) -> Result<Done, ApiError> {
    let idem = idempotency(&caller.0, headers, route, body)?;
    execute_or_forward(
        state,
        caller,
        method,
        uri,
        headers,
        body,
        order_id,
        command,
        expected_version(headers)?,
        idem,
    )
    .await
}

fn parse_order_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::bad_request("invalid_order_id", "order id must be a UUID").field("id")
    })
}

/// `body` with `status`, the order's version as its ETag, and
/// `Idempotent-Replayed` on a replayed answer.
fn written(status: StatusCode, outcome: &Outcome, body: impl Serialize) -> Response {
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut().insert(
        "etag",
        format!("\"{}\"", outcome.version).parse().expect("digits"),
    );
    if outcome.replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", "true".parse().expect("ascii"));
    }
    resp
}

fn written_body(outcome: &Outcome) -> Written {
    Written {
        order_id: outcome.order_id,
        version: outcome.version,
    }
}

/// The body of `POST /v1/orders`, parsed and validated: a new order, or a
/// 400 naming the first problem. Never panics, whatever the bytes (a fuzz
/// target drives it).
pub fn parse_place_order(bytes: &[u8]) -> Result<NewOrder, ApiError> {
    let parsed: PlaceOrderBody = parse_body(bytes)?;
    Ok(parsed.into_new_order()?)
}

#[utoipa::path(
    post,
    path = "/v1/orders",
    operation_id = "placeOrder",
    summary = "Place an order [checkout]",
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255,
        description = PLACE_IDEMPOTENCY)),
    request_body = PlaceOrderBody,
    responses(
        (status = 201, description = "Written: the order's events are acknowledged by Kafka.",
            body = Written, headers(
                ("ETag" = String, description = "The order's version, quoted."),
                ("Location" = String, description = "The order's URL."),
                ("Idempotent-Replayed" = String, description = "`true` when the answer is the first answer to an earlier request with the same Idempotency-Key."))),
        PlaceErrors
    )
)]
pub async fn place_order(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Checkout])?;
    let bytes = super::body_bytes(body)?;
    let order = parse_place_order(&bytes)?;
    let idem = idempotency(&caller.0, &headers, PLACE_ROUTE, &bytes)?;
    // The partition decides the id: the one an idempotency key maps to (so
    // a retry through any node reaches the writer that knows the key), or
    // one this node writes.
    let partition = state.service.partition_for_new_order(idem.as_ref());
    let order_id = crate::service::order_id_in(partition, state.service.partitions());
    let outcome = match execute_or_forward(
        &state,
        &caller,
        &Method::POST,
        &uri,
        &headers,
        &bytes,
        order_id,
        Command::PlaceOrder(order),
        None,
        idem,
    )
    .await?
    {
        Done::Here(o) => o,
        Done::There(resp) => return Ok(resp),
    };
    tracing::info!(order_id = %outcome.order_id, version = outcome.version, replayed = outcome.replayed, "Order placed.");
    let mut resp = written(StatusCode::CREATED, &outcome, written_body(&outcome));
    resp.headers_mut().insert(
        "location",
        format!("/v1/orders/{}", outcome.order_id)
            .parse()
            .expect("ascii"),
    );
    Ok(resp)
}

#[utoipa::path(
    post,
    path = "/v1/orders/{id}/shares",
    operation_id = "shareOrder",
    summary = "Record that the order was shared with a party [checkout]",
    params(
        ("id" = Uuid, Path),
        ("If-Match" = Option<String>, Header, nullable = false, description = IF_MATCH),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255,
            description = COMMAND_IDEMPOTENCY),
    ),
    request_body = ShareBody,
    responses(
        (status = 200, description = "Written: the order's events are acknowledged by Kafka.",
            body = Written, headers(
                ("ETag" = String, description = "The order's version, quoted."),
                ("Idempotent-Replayed" = String, description = "`true` when the answer is the first answer to an earlier request with the same Idempotency-Key."))),
        OrderCommandErrors
    )
)]
pub async fn share_order(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Checkout])?;
    let order_id = parse_order_id(&id)?;
    let bytes = super::body_bytes(body)?;
    let parsed: ShareBody = parse_body(&bytes)?;
    let party = match parsed.party.kind.as_str() {
        "logistics" => Party::Logistics(ProviderId::parse("party.id", &parsed.party.id)?),
        "merchant" => Party::Merchant(MerchantId::parse("party.id", &parsed.party.id)?),
        _ => {
            return Err(ApiError::unprocessable(
                "party.kind",
                "must be logistics or merchant",
            ));
        }
    };
    let classes = parse_classes("fields", &parsed.fields)?;
    let outcome = match command_on(
        &state,
        &caller,
        &Method::POST,
        &uri,
        &headers,
        &bytes,
        order_id,
        &format!("POST /v1/orders/{order_id}/shares"),
        Command::ShareOrder {
            party: party.clone(),
            classes,
        },
    )
    .await?
    {
        Done::Here(o) => o,
        Done::There(resp) => return Ok(resp),
    };
    tracing::info!(%order_id, %party, version = outcome.version, "Order shared.");
    Ok(written(StatusCode::OK, &outcome, written_body(&outcome)))
}

#[utoipa::path(
    post,
    path = "/v1/orders/{id}/cancel",
    operation_id = "cancelOrder",
    summary = "Cancel the order [checkout]",
    params(
        ("id" = Uuid, Path),
        ("If-Match" = Option<String>, Header, nullable = false, description = IF_MATCH),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255,
            description = COMMAND_IDEMPOTENCY),
    ),
    request_body = CancelBody,
    responses(
        (status = 200, description = "Written: the order's events are acknowledged by Kafka.",
            body = Written, headers(
                ("ETag" = String, description = "The order's version, quoted."),
                ("Idempotent-Replayed" = String, description = "`true` when the answer is the first answer to an earlier request with the same Idempotency-Key."))),
        OrderCommandErrors
    )
)]
pub async fn cancel_order(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Checkout])?;
    let order_id = parse_order_id(&id)?;
    let bytes = super::body_bytes(body)?;
    let parsed: CancelBody = parse_body(&bytes)?;
    let reason = CancelReason::parse(&parsed.reason).ok_or_else(|| {
        ApiError::unprocessable(
            "reason",
            "must be one of customer_request, payment_failed, out_of_stock, fraud_suspected, other",
        )
    })?;
    let outcome = match command_on(
        &state,
        &caller,
        &Method::POST,
        &uri,
        &headers,
        &bytes,
        order_id,
        &format!("POST /v1/orders/{order_id}/cancel"),
        Command::CancelOrder { reason },
    )
    .await?
    {
        Done::Here(o) => o,
        Done::There(resp) => return Ok(resp),
    };
    tracing::info!(%order_id, reason = reason.as_str(), version = outcome.version, "Order cancelled.");
    Ok(written(StatusCode::OK, &outcome, written_body(&outcome)))
}

#[utoipa::path(
    post,
    path = "/v1/orders/{id}/erase",
    operation_id = "eraseOrder",
    summary = "Erase the order's personal data by destroying its key [privacy]",
    params(
        ("id" = Uuid, Path),
        ("If-Match" = Option<String>, Header, nullable = false, description = IF_MATCH),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255,
            description = "Retries of the same erasure answer its receipt as it stands (not 409 already_erased)."),
    ),
    request_body(content = EraseBody, description = "Absent or `{}`: the whole order."),
    responses(
        (status = 200, description = "Erasure receipt", body = Erased, headers(
            ("ETag" = String, description = "The order's version, quoted."),
            ("Idempotent-Replayed" = String, description = "`true` when the answer is the first answer to an earlier request with the same Idempotency-Key."))),
        EraseErrors
    )
)]
pub async fn erase_order(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Privacy])?;
    let order_id = parse_order_id(&id)?;
    let bytes = super::body_bytes(body)?;
    let parsed: EraseBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        EraseBody::default()
    } else {
        parse_body(&bytes)?
    };
    let scope = match &parsed.fields {
        None => ErasureScope::Order,
        Some(f) => ErasureScope::Classes(parse_classes("fields", f)?),
    };
    erase(&state, &caller, &uri, &headers, &bytes, order_id, scope).await
}

/// Erases one order through the write path (here, or at the node that
/// writes its partition) and answers with its receipt: `POST
/// /v1/orders/{id}/erase` once its body is read, and each order of a
/// subject erasure.
pub(super) async fn erase(
    state: &AppState,
    caller: &Caller,
    uri: &Uri,
    headers: &HeaderMap,
    bytes: &Bytes,
    order_id: Uuid,
    scope: ErasureScope,
) -> Result<Response, ApiError> {
    // A retry with the same Idempotency-Key (say after a timeout) gets the
    // erasure's receipt as it stands, not 409 `already_erased`.
    let started = std::time::Instant::now();
    let outcome = match command_on(
        state,
        caller,
        &Method::POST,
        uri,
        headers,
        bytes,
        order_id,
        &format!("POST /v1/orders/{order_id}/erase"),
        Command::erase(scope.clone()),
    )
    .await?
    {
        Done::Here(o) => o,
        Done::There(resp) => return Ok(resp),
    };
    let receipt = crate::erasure::receipt::of_request(
        &state.service,
        &state.topic,
        &scope,
        &outcome,
        started,
        state.erasure_wait,
    )
    .await
    .map_err(receipt_error)?;
    Ok(written(
        StatusCode::OK,
        &outcome,
        Erased {
            order_id: outcome.order_id,
            version: outcome.version,
            receipt,
        },
    ))
}

/// `POST /v1/orders/{id}/hold`: puts the order under legal hold (or
/// changes its hold). While the hold is in force, erasure is refused (409
/// `legal_hold`) and retention passes the order by.
#[utoipa::path(
    post,
    path = "/v1/orders/{id}/hold",
    operation_id = "holdOrder",
    summary = "Put the order under legal hold, or change its hold [privacy]",
    description = "While the hold is in force, erasure of the order (by request, by subject or by \
        retention) is refused with 409 legal_hold naming the hold; retention passes the order by \
        until the hold is released or ends. 409 order_erased on an erased order.",
    params(
        ("id" = Uuid, Path),
        ("If-Match" = Option<String>, Header, nullable = false, description = IF_MATCH),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255,
            description = HOLD_IDEMPOTENCY),
    ),
    request_body = HoldBody,
    responses(
        (status = 200, description = "Written: the hold's event is acknowledged by Kafka.",
            body = Held, headers(
                ("ETag" = String, description = "The order's version, quoted."),
                ("Idempotent-Replayed" = String, description = "`true` when the answer is the first answer to an earlier request with the same Idempotency-Key."))),
        OrderCommandErrors
    )
)]
pub async fn hold_order(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Privacy])?;
    let order_id = parse_order_id(&id)?;
    let bytes = super::body_bytes(body)?;
    let parsed: HoldBody = parse_body(&bytes)?;
    let reason = HoldReason::parse("reason", &parsed.reason)?;
    let until_ms = match &parsed.until {
        None => None,
        Some(text) => {
            let ms = crate::clock::parse_time(text).ok_or_else(|| {
                ApiError::unprocessable(
                    "until",
                    "must be an RFC 3339 time such as 2027-01-31T00:00:00Z, or a date such as 2027-01-31 (its start, UTC)",
                )
            })?;
            if ms <= crate::clock::now_ms() {
                return Err(ApiError::unprocessable("until", "must be in the future"));
            }
            Some(ms)
        }
    };
    let hold = Hold { reason, until_ms };
    let outcome = match command_on(
        &state,
        &caller,
        &Method::POST,
        &uri,
        &headers,
        &bytes,
        order_id,
        &format!("POST /v1/orders/{order_id}/hold"),
        Command::HoldOrder(hold.clone()),
    )
    .await?
    {
        Done::Here(o) => o,
        Done::There(resp) => return Ok(resp),
    };
    tracing::info!(%order_id, token_name = caller.token_name(), version = outcome.version, "Legal hold placed.");
    Ok(written(
        StatusCode::OK,
        &outcome,
        Held {
            order_id: outcome.order_id,
            version: outcome.version,
            hold: Some(HoldState::of(&hold)),
        },
    ))
}

/// `DELETE /v1/orders/{id}/hold`: ends the order's legal hold.
#[utoipa::path(
    delete,
    path = "/v1/orders/{id}/hold",
    operation_id = "releaseHold",
    summary = "Release the order's legal hold [privacy]",
    description = "409 not_held when the order is under no hold in force. Takes no body.",
    params(
        ("id" = Uuid, Path),
        ("If-Match" = Option<String>, Header, nullable = false, description = IF_MATCH),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255,
            description = HOLD_IDEMPOTENCY),
    ),
    responses(
        (status = 200, description = "Written: the hold's event is acknowledged by Kafka.",
            body = Held, headers(
                ("ETag" = String, description = "The order's version, quoted."),
                ("Idempotent-Replayed" = String, description = "`true` when the answer is the first answer to an earlier request with the same Idempotency-Key."))),
        OrderCommandErrors
    )
)]
pub async fn release_hold(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Privacy])?;
    let order_id = parse_order_id(&id)?;
    let bytes = super::body_bytes(body)?;
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "unexpected_body",
            "DELETE /v1/orders/{id}/hold takes no body",
        ));
    }
    let outcome = match command_on(
        &state,
        &caller,
        &Method::DELETE,
        &uri,
        &headers,
        &bytes,
        order_id,
        &format!("DELETE /v1/orders/{order_id}/hold"),
        Command::ReleaseHold,
    )
    .await?
    {
        Done::Here(o) => o,
        Done::There(resp) => return Ok(resp),
    };
    tracing::info!(%order_id, token_name = caller.token_name(), version = outcome.version, "Legal hold released.");
    Ok(written(
        StatusCode::OK,
        &outcome,
        Held {
            order_id: outcome.order_id,
            version: outcome.version,
            hold: None,
        },
    ))
}

/// `GET /v1/orders/{id}/erasure`: the order's latest erasure as it stands
/// now on every live node, so completion can be confirmed after the receipt.
#[utoipa::path(
    get,
    path = "/v1/orders/{id}/erasure",
    operation_id = "erasureStatus",
    summary = "Where an erasure stands on every live node [privacy, auditor]",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "The order's latest erasure as it stands now on every live \
            node (404 not_erased when it was never erased; 503 view_lagging when this node has not \
            read it yet)", body = ErasureStatus),
        OrderReadErrors
    )
)]
pub async fn erasure_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Privacy, Role::Auditor])?;
    let order_id = parse_order_id(&id)?;
    if !state.service.reads_ready() {
        state.service.get_when_ready(order_id).await?;
    }
    let receipt = crate::erasure::receipt::current(&state.service, &state.topic, order_id)
        .map_err(receipt_error)?;
    Ok(Json(ErasureStatus { receipt }).into_response())
}

fn receipt_error(e: crate::erasure::receipt::ReceiptError) -> ApiError {
    use crate::erasure::receipt::ReceiptError as E;
    match e {
        E::Unverified => {
            tracing::error!("Erasure could not be verified in the vault.");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "erasure_unverified",
                "the erasure event is logged but key destruction could not be verified; the key topic's row destroys it",
            )
        }
        E::NoOrder => ApiError::new(
            StatusCode::NOT_FOUND,
            "order_not_found",
            "order does not exist",
        ),
        E::NotErased => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_erased",
            "order has not been erased",
        ),
        E::Lagging => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "view_lagging",
            "this node has not read the order's erasure yet; retry",
        ),
        E::Service(e) => e.into(),
    }
}

/// The query of `GET /v1/orders/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetOrderParams {
    // An auditor opens the personal fields only by asking, and the reveal
    // is logged with the token's name (as `orderlog history --reveal
    // --actor` does on the command line). Checkout reads them without it.
    /// Auditors only: answer the personal fields (otherwise `personal` is
    /// null for an auditor). Each reveal is logged with the token's name,
    /// never the data. Checkout always gets them.
    #[serde(default)]
    #[param(default = false)]
    reveal: bool,
}

#[utoipa::path(
    get,
    path = "/v1/orders/{id}",
    operation_id = "getOrder",
    summary = "Read an order [checkout, auditor]",
    params(("id" = Uuid, Path), GetOrderParams),
    responses(
        (status = 200, description = "The order", body = OrderBody, headers(
            ("ETag" = String, description = "The order's version, quoted."))),
        OrderReadErrors
    )
)]
pub async fn get_order(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<GetOrderParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Checkout, Role::Auditor])?;
    let order_id = parse_order_id(&id)?;
    let params = super::views::params(q)?;
    let mut view = state
        .service
        .get_when_ready(order_id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "order_not_found",
                "order does not exist",
            )
        })?;
    if caller.0 == Role::Auditor {
        if params.reveal {
            // Logged whatever could be opened (an erased order opens
            // nothing): who asked, for which order, which classes.
            let classes = readable_classes(&view.personal);
            tracing::info!(%order_id, token_name = caller.token_name(), classes = ?classes, "Personal fields revealed for audit.");
        } else {
            view.personal = PersonalFields::default();
        }
    } else if !view.personal.is_empty() {
        tracing::info!(%order_id, role = %caller.0, "Personal fields read.");
    }
    // A stored order always begins with its placing.
    let body = OrderBody::of(&view).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "order_not_found",
            "order does not exist",
        )
    })?;
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(
        "etag",
        format!("\"{}\"", view.record.state.version)
            .parse()
            .expect("digits"),
    );
    Ok(resp)
}

/// The field classes of `p` that are open, by name.
fn readable_classes(p: &PersonalFields) -> Vec<&'static str> {
    [
        (FieldClass::Shipping, p.shipping.is_some()),
        (FieldClass::Contact, p.contact.is_some()),
        (FieldClass::Identity, p.identity.is_some()),
    ]
    .into_iter()
    .filter(|(_, open)| *open)
    .map(|(class, _)| class.as_str())
    .collect()
}
