//! The command API: place, share, cancel, erase, and read one order.

use std::collections::BTreeSet;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::auth::{Caller, Role};
use super::error::ApiError;
use super::{AppState, parse_body};
use crate::domain::validation::{
    Address, ConsigneeName, Currency, Email, HoldReason, IdNumber, Item, Landline, MerchantId,
    Mobile, OrderNumber, ProviderId, ValidationError,
};
use crate::domain::{
    CancelReason, Command, ContactInfo, ErasureScope, FieldClass, Hold, NewOrder, Party,
    PersonalData, PersonalFields, ShippingInfo,
};
use crate::service::{Idempotency, OrderView, Outcome, ServiceError};

// Request bodies. They hold personal data as plain strings for the moment of
// parsing only, so they derive no Debug.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlaceOrderBody {
    order_number: String,
    merchant_id: String,
    items: Vec<ItemBody>,
    currency: String,
    amount: i64,
    consignee: ConsigneeBody,
    #[serde(default)]
    contact: Option<ContactBody>,
    #[serde(default)]
    id_number: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemBody {
    sku: String,
    name: String,
    quantity: i64,
    unit_price: i64,
    #[serde(default)]
    real_name: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsigneeBody {
    name: String,
    address: AddressBody,
    mobile: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddressBody {
    province: String,
    city: String,
    district: String,
    street: String,
    postal_code: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactBody {
    #[serde(default)]
    landline: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShareBody {
    party: PartyBody,
    fields: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartyBody {
    kind: String,
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelBody {
    reason: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct EraseBody {
    /// Only these field classes; absent = the whole order.
    #[serde(default)]
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

fn written(status: StatusCode, outcome: &Outcome, extra: Value) -> Response {
    let mut body = json!({ "order_id": outcome.order_id, "version": outcome.version });
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
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

/// The body of `POST /v1/orders`, parsed and validated: a new order, or a
/// 400 naming the first problem. Never panics, whatever the bytes (a fuzz
/// target drives it).
pub fn parse_place_order(bytes: &[u8]) -> Result<NewOrder, ApiError> {
    let parsed: PlaceOrderBody = parse_body(bytes)?;
    Ok(parsed.into_new_order()?)
}

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
    let mut resp = written(StatusCode::CREATED, &outcome, json!({}));
    resp.headers_mut().insert(
        "location",
        format!("/v1/orders/{}", outcome.order_id)
            .parse()
            .expect("ascii"),
    );
    Ok(resp)
}

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
    Ok(written(StatusCode::OK, &outcome, json!({})))
}

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
    Ok(written(StatusCode::OK, &outcome, json!({})))
}

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
        json!({ "receipt": receipt }),
    ))
}

/// The body of `POST /v1/orders/{id}/hold`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldBody {
    reason: String,
    /// RFC 3339; none: until released.
    #[serde(default)]
    until: Option<String>,
}

/// `POST /v1/orders/{id}/hold`: puts the order under legal hold (or
/// changes its hold). While the hold is in force, erasure is refused (409
/// `legal_hold`) and retention passes the order by.
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
        json!({ "hold": hold_json(&hold) }),
    ))
}

/// `DELETE /v1/orders/{id}/hold`: ends the order's legal hold.
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
    Ok(written(StatusCode::OK, &outcome, json!({ "hold": null })))
}

/// A hold as the API shows it.
pub fn hold_json(hold: &Hold) -> Value {
    json!({
        "reason": hold.reason.as_str(),
        "until": hold.until_ms.map(crate::clock::rfc3339),
    })
}

/// `GET /v1/orders/{id}/erasure`: the order's latest erasure as it stands
/// now on every live node, so completion can be confirmed after the receipt.
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
    Ok(Json(json!({ "receipt": receipt })).into_response())
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetOrderParams {
    /// An auditor opens the personal fields only by asking, and the reveal
    /// is logged with the token's name (as `orderlog history --reveal
    /// --actor` does on the command line). Checkout reads them without it.
    #[serde(default)]
    reveal: bool,
}

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
    let mut resp = Json(order_json(&view)).into_response();
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

/// The JSON form of an order. Personal fields appear only while readable.
pub fn order_json(view: &OrderView) -> Value {
    let Some(o) = &view.record.state.order else {
        return json!({ "order_id": view.order_id });
    };
    let p = &view.personal;
    let personal = (!p.is_empty()).then(|| {
        json!({
            "consignee": p.shipping.as_ref().map(|s| {
                let s = s.expose();
                json!({
                    "name": s.name.as_str(),
                    "address": {
                        "province": s.address.province, "city": s.address.city, "district": s.address.district,
                        "street": s.address.street, "postal_code": s.address.postal_code,
                    },
                    "mobile": s.mobile.as_str(),
                })
            }),
            "contact": p.contact.as_ref().map(|c| {
                let c = c.expose();
                json!({
                    "landline": c.landline.as_ref().map(|l| l.as_str()),
                    "email": c.email.as_ref().map(|e| e.as_str()),
                })
            }),
            "id_number": p.identity.as_ref().map(|i| i.expose().as_str()),
        })
    });
    json!({
        "order_id": view.order_id,
        "version": view.record.state.version,
        "status": o.status().as_str(),
        "order_number": o.order_number.as_str(),
        "merchant_id": o.merchant_id.as_str(),
        "items": o.items.iter().map(|i| json!({
            "sku": i.sku.as_str(), "name": i.name, "quantity": i.quantity,
            "unit_price": i.unit_price, "real_name": i.real_name,
        })).collect::<Vec<_>>(),
        "amount": o.amount.minor,
        "currency": o.amount.currency.as_str(),
        "placed_at": crate::clock::rfc3339(view.record.placed_at_ms),
        "updated_at": crate::clock::rfc3339(view.record.updated_at_ms),
        "cancel_reason": o.cancelled.map(|r| r.as_str()),
        "shares": o.shares.iter().map(|(party, classes)| json!({
            "party": match party {
                Party::Logistics(p) => json!({"kind": "logistics", "id": p.as_str()}),
                Party::Merchant(m) => json!({"kind": "merchant", "id": m.as_str()}),
            },
            "fields": classes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "erased_fields": o.erased.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "hold": o.hold_at(crate::clock::now_ms()).map(hold_json),
        "personal": personal,
    })
}
