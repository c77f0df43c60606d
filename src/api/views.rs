//! The query API over the views: a logistics provider reads the orders shared
//! with it, a merchant its own orders, each as a change feed with a cursor
//! and one order at a time.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::auth::{Caller, Role};
use super::error::ApiError;
use crate::clock::rfc3339;
use crate::crypto::VaultError;
use crate::domain::validation::{MerchantId, ProviderId};
use crate::domain::{Event, FieldClass, Party, PersonalFields};
use crate::projections::FeedEntry;
use crate::projections::ProjectedOrder;
use crate::projections::query::{self, Cursor, FeedItem};
use crate::store::schema::{FeedKey, MerchantFeed, Schema, ShippingFeed};

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
/// Longest a read waits for `min_version`.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedParams {
    after: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderParams {
    min_version: Option<u64>,
}

/// The query parameters, or a 400 `invalid_query` naming the problem.
pub(super) fn params<T>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(p)| p).map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            format!(
                "invalid query string: {}",
                e.body_text().split(": ").last().unwrap_or("bad parameter")
            ),
        )
    })
}

fn cursor(after: Option<&str>) -> Result<Cursor, ApiError> {
    match after {
        None | Some("") => Ok(Cursor::default()),
        Some(s) => s.parse().map_err(|_| {
            ApiError::bad_request(
                "invalid_cursor",
                "after must be a cursor returned by this API",
            )
            .field("after")
        }),
    }
}

fn limit(l: Option<usize>) -> Result<usize, ApiError> {
    match l.unwrap_or(DEFAULT_LIMIT) {
        0 => Err(ApiError::bad_request("invalid_query", "limit must be at least 1").field("limit")),
        n => Ok(n.min(MAX_LIMIT)),
    }
}

/// The personal fields of `classes` that can still be opened.
fn personal(
    state: &AppState,
    order: &ProjectedOrder,
    classes: &[FieldClass],
) -> Result<PersonalFields, ApiError> {
    if order.sealed.is_empty() || classes.is_empty() {
        return Ok(PersonalFields::default());
    }
    let key = match state.service.vault().get(order.id()) {
        Ok(k) => k,
        Err(VaultError::Shredded { .. } | VaultError::NotFound(_)) => {
            return Ok(PersonalFields::default());
        }
        Err(e) => return Err(crate::service::ServiceError::from(e).into()),
    };
    let mut env = order.sealed_envelope();
    env.sealed.retain(|s| classes.contains(&s.class));
    match crate::events::open_event(&env, Some(&key)) {
        Ok(Event::OrderPlaced(p)) => Ok(p.personal),
        Ok(_) => Ok(PersonalFields::default()),
        Err(e) => {
            tracing::error!(order_id = %order.id(), error = %e, "Sealed view fields failed to open.");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            ))
        }
    }
}

fn personal_json(p: &PersonalFields) -> Value {
    json!({
        "consignee": p.shipping.as_ref().map(|s| {
            let s = s.expose();
            json!({
                "name": s.name.as_str(),
                "address": {"province": s.address.province, "city": s.address.city, "district": s.address.district,
                            "street": s.address.street, "postal_code": s.address.postal_code},
                "mobile": s.mobile.as_str(),
                "mobile_masked": s.mobile.masked(),
            })
        }),
        "contact": p.contact.as_ref().map(|c| {
            let c = c.expose();
            json!({"landline": c.landline.as_ref().map(|l| l.as_str()), "email": c.email.as_ref().map(|e| e.as_str())})
        }),
        "id_number": p.identity.as_ref().map(|i| i.expose().as_str()),
    })
}

fn class_names(c: &[FieldClass]) -> Vec<&'static str> {
    c.iter().map(|c| c.as_str()).collect()
}

fn shipping_json(
    state: &AppState,
    o: &ProjectedOrder,
    provider: &Party,
) -> Result<Value, ApiError> {
    let classes: Vec<FieldClass> = o
        .classes_for(provider)
        .into_iter()
        .filter(|c| !o.erased.contains(c))
        .collect();
    let p = personal(state, o, &classes)?;
    let mut v = json!({
        "order_id": o.id(),
        "order_number": o.order_number,
        "status": o.status.as_str(),
        "version": o.version,
        "fields": class_names(&classes),
        "erased_fields": class_names(&o.erased),
        "updated_at": rfc3339(o.updated_at_ms),
    });
    merge(&mut v, personal_json(&p));
    Ok(v)
}

fn merchant_json(state: &AppState, o: &ProjectedOrder) -> Result<Value, ApiError> {
    let me = Party::Merchant(o.merchant_id.clone());
    let classes: Vec<FieldClass> = o
        .classes_for(&me)
        .into_iter()
        .filter(|c| !o.erased.contains(c))
        .collect();
    let p = personal(state, o, &classes)?;
    let mut v = json!({
        "order_id": o.id(),
        "order_number": o.order_number,
        "status": o.status.as_str(),
        "version": o.version,
        "items": o.items.iter().map(|i| json!({"sku": i.sku, "name": i.name, "quantity": i.quantity, "unit_price": i.unit_price, "real_name": i.real_name})).collect::<Vec<_>>(),
        "amount": o.amount_minor,
        "currency": String::from_utf8_lossy(&o.currency),
        "fields": class_names(&classes),
        "erased_fields": class_names(&o.erased),
        "placed_at": rfc3339(o.placed_at_ms),
        "updated_at": rfc3339(o.updated_at_ms),
    });
    merge(&mut v, personal_json(&p));
    Ok(v)
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        a.extend(b);
    }
}

fn feed_json(
    state: &AppState,
    items: Vec<FeedItem>,
    next: Cursor,
    render: impl Fn(&ProjectedOrder) -> Result<Value, ApiError>,
) -> Result<Value, ApiError> {
    let mut changes = Vec::with_capacity(items.len());
    for it in items {
        let id = Uuid::from_bytes(it.entry.order_id);
        let order = query::order(&state.store, id).map_err(internal)?;
        changes.push(json!({
            "position": format!("{}-{}", it.partition, it.offset),
            "order_id": id,
            "change": it.entry.change.as_str(),
            "fields": class_names(&it.entry.classes),
            "version": it.entry.version,
            "at": rfc3339(it.entry.at_ms),
            "order": order.as_ref().map(&render).transpose()?,
        }));
    }
    Ok(json!({ "changes": changes, "next_cursor": next.to_string() }))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "View read failed.");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
}

/// The order's view row if the caller's party may see it (`visible`),
/// waiting up to [`MAX_WAIT`] for `min_version`.
///
/// Access comes first, on every look: an order the party may not see
/// (another party's, or one whose share this node has not projected yet)
/// is `None` at once, exactly as one that does not exist, whatever
/// `min_version` says; neither a wait nor a 503 tells that it exists or
/// which version it has. So a party that reads right after a write
/// retries a 404 until the share (or the placing, for a merchant) is
/// visible; `min_version` then waits for the later versions.
async fn visible_order(
    state: &AppState,
    id: Uuid,
    min_version: Option<u64>,
    visible: impl Fn(&ProjectedOrder) -> bool,
) -> Result<Option<ProjectedOrder>, ApiError> {
    let deadline = Instant::now() + MAX_WAIT;
    loop {
        let Some(o) = query::order(&state.store, id)
            .map_err(internal)?
            .filter(&visible)
        else {
            return Ok(None);
        };
        match min_version {
            Some(v) if o.version < v => {
                if Instant::now() >= deadline {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "view_lagging",
                        format!("this node's view has no version {v} of this order yet; retry"),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => return Ok(Some(o)),
        }
    }
}

fn provider_role(caller: &Caller, provider: &str) -> Result<Party, ApiError> {
    let id = ProviderId::parse("provider", provider)?;
    caller.require(&[Role::Logistics(id.clone())])?;
    Ok(Party::Logistics(id))
}

fn merchant_role(caller: &Caller, merchant: &str) -> Result<(), ApiError> {
    let id = MerchantId::parse("merchant", merchant)?;
    caller.require(&[Role::Merchant(id)])
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::bad_request("invalid_order_id", "order id must be a UUID").field("id")
    })
}

/// Waits up to [`MAX_WAIT`] until this node has projected every partition
/// as far as `after` says the client has read (a cursor another node gave),
/// so a page never shows an order older than one already seen; else 503
/// `view_lagging`.
async fn wait_for_cursor(state: &AppState, after: &Cursor) -> Result<(), ApiError> {
    let partitions = state.service.partitions();
    if after.0.keys().any(|p| *p as usize >= partitions) {
        return Err(ApiError::bad_request(
            "invalid_cursor",
            format!("after names a partition the topic does not have (it has {partitions})"),
        )
        .field("after"));
    }
    let deadline = Instant::now() + MAX_WAIT;
    loop {
        let mut behind = None;
        for (p, next) in &after.0 {
            let have = state.store.view_offset(*p as i32).map_err(internal)?;
            if have < *next as i64 {
                behind = Some((*p, have, *next));
                break;
            }
        }
        let Some((p, have, want)) = behind else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "view_lagging",
                format!(
                    "this node has projected partition {p} up to offset {have}, not yet {want} as the cursor says; retry"
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One page of a party's feed, as the query string asks.
async fn read_feed<S: Schema<Key = FeedKey, Value = FeedEntry>>(
    state: &AppState,
    party: &str,
    q: Result<Query<FeedParams>, axum::extract::rejection::QueryRejection>,
) -> Result<(Vec<FeedItem>, Cursor), ApiError> {
    let p = params(q)?;
    let after = cursor(p.after.as_deref())?;
    let limit = limit(p.limit)?;
    wait_for_cursor(state, &after).await?;
    query::feed::<S>(&state.store, party, &after, limit).map_err(internal)
}

pub async fn shipping_feed(
    State(state): State<AppState>,
    caller: Caller,
    Path(provider): Path<String>,
    q: Result<Query<FeedParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let party = provider_role(&caller, &provider)?;
    let (items, next) = read_feed::<ShippingFeed>(&state, &provider, q).await?;
    Ok(Json(feed_json(&state, items, next, |o| {
        shipping_json(&state, o, &party)
    })?))
}

pub async fn shipping_order(
    State(state): State<AppState>,
    caller: Caller,
    Path((provider, id)): Path<(String, String)>,
    q: Result<Query<OrderParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let party = provider_role(&caller, &provider)?;
    let id = parse_id(&id)?;
    let p = params(q)?;
    match visible_order(&state, id, p.min_version, |o| o.shared_with(&party)).await? {
        Some(o) => Ok(Json(shipping_json(&state, &o, &party)?)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "order_not_found",
            "no order with this id was shared with this provider",
        )),
    }
}

pub async fn merchant_feed(
    State(state): State<AppState>,
    caller: Caller,
    Path(merchant): Path<String>,
    q: Result<Query<FeedParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    merchant_role(&caller, &merchant)?;
    let (items, next) = read_feed::<MerchantFeed>(&state, &merchant, q).await?;
    Ok(Json(feed_json(&state, items, next, |o| {
        merchant_json(&state, o)
    })?))
}

pub async fn merchant_order(
    State(state): State<AppState>,
    caller: Caller,
    Path((merchant, id)): Path<(String, String)>,
    q: Result<Query<OrderParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    merchant_role(&caller, &merchant)?;
    let id = parse_id(&id)?;
    let p = params(q)?;
    match visible_order(&state, id, p.min_version, |o| {
        o.merchant_id.as_str() == merchant
    })
    .await?
    {
        Some(o) => Ok(Json(merchant_json(&state, &o)?)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "order_not_found",
            "this merchant has no order with this id",
        )),
    }
}
