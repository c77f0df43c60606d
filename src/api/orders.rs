//! The command API: place, share, cancel, erase, and read one order.

use std::collections::BTreeSet;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Caller, Role};
use super::error::{ApiError, ErrorBody};
use super::{AppState, parse_body};
use crate::domain::validation::{
    Address, ConsigneeName, Currency, Email, HoldReason, IdNumber, Item, Landline, MerchantId,
    Mobile, OrderNumber, ProviderId, ValidationError,
};
use crate::domain::{
    CancelReason, Command, ContactInfo, ErasureScope, FieldClass, Hold, NewOrder, Party,
    PersonalData, PersonalFields, ShippingInfo, Status,
};
use crate::service::{Idempotency, OrderView, Outcome, ServiceError};

// Request bodies. They hold personal data as plain strings for the moment of
// parsing only, so they derive no Debug. Their `#[schema]` attributes
// describe, for the OpenAPI document, the rules the domain's parsing applies;
// that parsing, not serde, is what refuses a value, naming the field.

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PlaceOrder)]
pub(crate) struct PlaceOrderBody {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    order_number: String,
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    merchant_id: String,
    #[schema(min_items = 1, max_items = 200)]
    items: Vec<ItemBody>,
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: String,
    /// Sum of quantity x unit_price, minor units.
    #[schema(minimum = 0)]
    amount: i64,
    #[schema(inline)]
    consignee: ConsigneeBody,
    #[serde(default)]
    #[schema(inline)]
    contact: Option<ContactBody>,
    /// 18-character PRC resident ID with a real birth date and a valid ISO
    /// 7064 MOD 11-2 check character; required exactly when an item is
    /// real_name.
    #[serde(default)]
    #[schema(pattern = "^[0-9]{17}[0-9Xx]$")]
    id_number: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Item)]
struct ItemBody {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    sku: String,
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    #[schema(minimum = 1, maximum = 100000)]
    quantity: i64,
    /// Minor units (fen).
    #[schema(minimum = 0)]
    unit_price: i64,
    #[serde(default)]
    #[schema(default = false)]
    real_name: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ConsigneeBody {
    #[schema(min_length = 1, max_length = 64)]
    name: String,
    address: AddressBody,
    /// PRC 11-digit mobile or E.164.
    #[schema(pattern = r"^(1[3-9][0-9]{9}|\+[1-9][0-9]{7,14})$")]
    mobile: String,
}

/// A delivery address. Also how an answer shows it.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Address)]
pub struct AddressBody {
    #[schema(min_length = 1, max_length = 64)]
    province: String,
    #[schema(min_length = 1, max_length = 64)]
    city: String,
    #[schema(min_length = 1, max_length = 64)]
    district: String,
    #[schema(min_length = 1, max_length = 200)]
    street: String,
    #[schema(pattern = "^[0-9]{6}$")]
    postal_code: String,
}

impl AddressBody {
    pub(crate) fn of(a: &Address) -> Self {
        Self {
            province: a.province.clone(),
            city: a.city.clone(),
            district: a.district.clone(),
            street: a.street.clone(),
            postal_code: a.postal_code.clone(),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ContactBody {
    /// PRC landline with area code (010-12345678, 0755-1234567-88) or E.164.
    #[serde(default)]
    landline: Option<String>,
    #[serde(default)]
    #[schema(format = Email)]
    email: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Share)]
pub(crate) struct ShareBody {
    #[schema(inline)]
    party: PartyBody,
    #[schema(value_type = Vec<FieldClass>, min_items = 1)]
    fields: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PartyBody {
    #[schema(value_type = PartyKind)]
    kind: String,
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    id: String,
}

/// Who an order is shared with.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PartyKind {
    Logistics,
    Merchant,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Cancel)]
pub(crate) struct CancelBody {
    #[schema(value_type = CancelReason)]
    reason: String,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Erase)]
pub(crate) struct EraseBody {
    /// Only these classes; absent = the whole order.
    #[serde(default)]
    #[schema(value_type = Option<Vec<FieldClass>>, min_items = 1)]
    fields: Option<Vec<String>>,
}

impl PlaceOrderBody {
    pub fn into_new_order(self) -> Result<NewOrder, ValidationError> {
        let items = self
            .items
            .iter()
            .enumerate()
            .map(|(n, i)| {
                Item::parse(
                    &format!("items[{n}]"),
                    &i.sku,
                    &i.name,
                    i.quantity,
                    i.unit_price,
                    i.real_name,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let a = &self.consignee.address;
        let shipping = ShippingInfo {
            name: ConsigneeName::parse("consignee.name", &self.consignee.name)?,
            address: Address::parse(
                "consignee.address",
                &a.province,
                &a.city,
                &a.district,
                &a.street,
                &a.postal_code,
            )?,
            mobile: Mobile::parse("consignee.mobile", &self.consignee.mobile)?,
        };
        let contact = match &self.contact {
            Some(c) => ContactInfo {
                landline: c
                    .landline
                    .as_deref()
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| Landline::parse("contact.landline", s))
                    .transpose()?,
                email: c
                    .email
                    .as_deref()
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| Email::parse("contact.email", s))
                    .transpose()?,
            },
            None => ContactInfo::default(),
        };
        let identity = self
            .id_number
            .as_deref()
            .map(|s| IdNumber::parse("id_number", s))
            .transpose()?;
        NewOrder::new(
            OrderNumber::parse("order_number", &self.order_number)?,
            MerchantId::parse("merchant_id", &self.merchant_id)?,
            items,
            Currency::parse("currency", &self.currency)?,
            self.amount,
            PersonalData {
                shipping,
                contact,
                identity,
            },
        )
    }
}

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

/// A command's answer: the order and its version once the command's events
/// are acknowledged by Kafka.
#[derive(Debug, Serialize, ToSchema)]
pub struct Written {
    pub order_id: Uuid,
    #[schema(minimum = 1)]
    pub version: u64,
}

/// An erase request's answer: the order's version and the erasure's receipt.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Erased {
    pub order_id: Uuid,
    #[schema(minimum = 1)]
    pub version: u64,
    pub receipt: crate::erasure::Receipt,
}

/// A hold request's answer: the order's version and its hold (null once
/// released).
#[derive(Debug, Serialize, ToSchema)]
pub struct Held {
    pub order_id: Uuid,
    #[schema(minimum = 1)]
    pub version: u64,
    #[schema(required)]
    pub hold: Option<HoldState>,
}

/// A legal hold in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct HoldState {
    pub reason: String,
    /// When the hold ends by itself; null: until released.
    #[schema(required, format = DateTime)]
    pub until: Option<String>,
}

impl HoldState {
    pub fn of(hold: &Hold) -> Self {
        Self {
            reason: hold.reason.as_str().to_owned(),
            until: hold.until_ms.map(crate::clock::rfc3339),
        }
    }
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
        (status = 400, response = ErrorBody),
        (status = 401, response = ErrorBody),
        (status = 403, response = ErrorBody),
        (status = 409, response = ErrorBody),
        (status = 413, response = ErrorBody),
        (status = 422, response = ErrorBody),
        (status = 503, response = ErrorBody)
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
        (status = 400, response = ErrorBody),
        (status = 401, response = ErrorBody),
        (status = 403, response = ErrorBody),
        (status = 404, response = ErrorBody),
        (status = 409, response = ErrorBody),
        (status = 412, response = ErrorBody),
        (status = 413, response = ErrorBody),
        (status = 422, response = ErrorBody),
        (status = 503, response = ErrorBody)
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
        (status = 400, response = ErrorBody),
        (status = 401, response = ErrorBody),
        (status = 403, response = ErrorBody),
        (status = 404, response = ErrorBody),
        (status = 409, response = ErrorBody),
        (status = 412, response = ErrorBody),
        (status = 413, response = ErrorBody),
        (status = 422, response = ErrorBody),
        (status = 503, response = ErrorBody)
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
        (status = 400, response = ErrorBody),
        (status = 401, response = ErrorBody),
        (status = 403, response = ErrorBody),
        (status = 404, response = ErrorBody),
        (status = 409, response = ErrorBody),
        (status = 412, response = ErrorBody),
        (status = 413, response = ErrorBody),
        (status = 422, response = ErrorBody),
        (status = 500, response = ErrorBody),
        (status = 503, response = ErrorBody)
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

/// A legal hold. Its reason is public (stored in clear in the log), so text
/// that looks like personal data is refused: an '@', or a run of digits
/// (spaces and dashes inside joined) that is a PRC mobile, a landline with
/// area code, an E.164 number or an ID number; dates and case numbers pass.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Hold)]
pub struct HoldBody {
    #[schema(min_length = 1, max_length = 200)]
    reason: String,
    /// When the hold ends by itself, in the future: an RFC 3339 time, or a
    /// date (its start, UTC); absent: until released.
    #[serde(default)]
    until: Option<String>,
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
        (status = 400, response = ErrorBody),
        (status = 401, response = ErrorBody),
        (status = 403, response = ErrorBody),
        (status = 404, response = ErrorBody),
        (status = 409, response = ErrorBody),
        (status = 412, response = ErrorBody),
        (status = 413, response = ErrorBody),
        (status = 422, response = ErrorBody),
        (status = 503, response = ErrorBody)
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
        (status = 400, response = ErrorBody),
        (status = 401, response = ErrorBody),
        (status = 403, response = ErrorBody),
        (status = 404, response = ErrorBody),
        (status = 409, response = ErrorBody),
        (status = 412, response = ErrorBody),
        (status = 413, response = ErrorBody),
        (status = 422, response = ErrorBody),
        (status = 503, response = ErrorBody)
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

/// The answer of `GET /v1/orders/{id}/erasure`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasureStatus {
    pub receipt: crate::erasure::Receipt,
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
        (status = 400, response = ErrorBody),
        (status = 401, response = ErrorBody),
        (status = 403, response = ErrorBody),
        (status = 404, response = ErrorBody),
        (status = 500, response = ErrorBody),
        (status = 503, response = ErrorBody)
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
        (status = 400, response = ErrorBody),
        (status = 401, response = ErrorBody),
        (status = 403, response = ErrorBody),
        (status = 404, response = ErrorBody),
        (status = 500, response = ErrorBody),
        (status = 503, response = ErrorBody)
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

/// An order as `GET /v1/orders/{id}` answers it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Order)]
pub struct OrderBody {
    pub order_id: Uuid,
    pub version: u64,
    pub status: Status,
    pub order_number: String,
    pub merchant_id: String,
    pub items: Vec<OrderItem>,
    /// Minor units.
    pub amount: u64,
    pub currency: String,
    #[schema(format = DateTime)]
    pub placed_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[schema(required)]
    pub cancel_reason: Option<CancelReason>,
    pub shares: Vec<ShareState>,
    pub erased_fields: Vec<FieldClass>,
    /// The legal hold in force, if any.
    #[schema(required)]
    pub hold: Option<HoldState>,
    /// Present only while the order's key lives; for an auditor only with
    /// ?reveal=true.
    #[schema(required)]
    pub personal: Option<Personal>,
}

/// One line of an order as answers show it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderItem {
    pub sku: String,
    pub name: String,
    #[schema(minimum = 1)]
    pub quantity: u32,
    /// Minor units (fen).
    pub unit_price: u64,
    pub real_name: bool,
}

impl OrderItem {
    fn of(i: &Item) -> Self {
        Self {
            sku: i.sku.as_str().to_owned(),
            name: i.name.clone(),
            quantity: i.quantity,
            unit_price: i.unit_price,
            real_name: i.real_name,
        }
    }
}

/// A party the order was shared with and the field classes it received.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShareState {
    pub party: PartyState,
    pub fields: Vec<FieldClass>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PartyState {
    pub kind: PartyKind,
    pub id: String,
}

/// The personal fields of the classes readable here.
#[derive(Serialize, ToSchema)]
pub struct Personal {
    /// Null unless the shipping class is readable here.
    #[schema(required)]
    pub consignee: Option<Consignee>,
    /// Null unless the contact class is readable here.
    #[schema(required)]
    pub contact: Option<Contact>,
    /// Null unless the identity class is readable here.
    #[schema(required)]
    pub id_number: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Consignee {
    pub name: String,
    pub address: AddressBody,
    pub mobile: String,
}

#[derive(Serialize, ToSchema)]
pub struct Contact {
    #[schema(required)]
    pub landline: Option<String>,
    #[schema(required)]
    pub email: Option<String>,
}

// The answer's personal fields, in plain text for the moment of answering.
crate::redacted_debug!(AddressBody, Personal, Consignee, Contact);

impl Contact {
    pub(crate) fn of(c: &ContactInfo) -> Self {
        Self {
            landline: c.landline.as_ref().map(|l| l.as_str().to_owned()),
            email: c.email.as_ref().map(|e| e.as_str().to_owned()),
        }
    }
}

impl OrderBody {
    /// The order `view` shows, with its personal fields while readable;
    /// none for a view with no placed order.
    pub fn of(view: &OrderView) -> Option<Self> {
        let o = view.record.state.order.as_ref()?;
        let p = &view.personal;
        let personal = (!p.is_empty()).then(|| Personal {
            consignee: p.shipping.as_ref().map(|s| {
                let s = s.expose();
                Consignee {
                    name: s.name.as_str().to_owned(),
                    address: AddressBody::of(&s.address),
                    mobile: s.mobile.as_str().to_owned(),
                }
            }),
            contact: p.contact.as_ref().map(|c| Contact::of(c.expose())),
            id_number: p.identity.as_ref().map(|i| i.expose().as_str().to_owned()),
        });
        Some(Self {
            order_id: view.order_id,
            version: view.record.state.version,
            status: o.status(),
            order_number: o.order_number.as_str().to_owned(),
            merchant_id: o.merchant_id.as_str().to_owned(),
            items: o.items.iter().map(OrderItem::of).collect(),
            amount: o.amount.minor,
            currency: o.amount.currency.as_str().to_owned(),
            placed_at: crate::clock::rfc3339(view.record.placed_at_ms),
            updated_at: crate::clock::rfc3339(view.record.updated_at_ms),
            cancel_reason: o.cancelled,
            shares: o
                .shares
                .iter()
                .map(|(party, classes)| ShareState {
                    party: match party {
                        Party::Logistics(p) => PartyState {
                            kind: PartyKind::Logistics,
                            id: p.as_str().to_owned(),
                        },
                        Party::Merchant(m) => PartyState {
                            kind: PartyKind::Merchant,
                            id: m.as_str().to_owned(),
                        },
                    },
                    fields: classes.iter().copied().collect(),
                })
                .collect(),
            erased_fields: o.erased.iter().copied().collect(),
            hold: o.hold_at(crate::clock::now_ms()).map(HoldState::of),
            personal,
        })
    }
}
