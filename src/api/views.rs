//! The query API over the views: a logistics provider reads the orders shared
//! with it, a merchant its own orders, each as a change feed with a cursor
//! and one order at a time.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::auth::{Caller, Role};
use super::error::{ApiError, FeedErrors, ViewOrderErrors};
use super::orders::{AddressBody, Contact, OrderItem};
use crate::clock::rfc3339;
use crate::crypto::VaultError;
use crate::domain::validation::{MerchantId, ProviderId};
use crate::domain::{Event, FieldClass, Party, PersonalFields, Status};
use crate::projections::query::{self, Cursor, FeedItem};
use crate::projections::{ChangeKind, FeedEntry, ProjectedOrder, ViewStatus};
use crate::store::schema::{self, FeedKey, Schema};

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
/// Longest a read waits for `min_version`.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// The query of a feed.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FeedParams {
    /// Cursor from the previous page's next_cursor; absent = from the
    /// beginning. Polling with the last cursor returns every change exactly
    /// once.
    after: Option<String>,
    /// Changes per page; a larger limit is served as 1000.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<usize>,
}

/// The query of one order's view.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OrderParams {
    /// Wait up to 5 s until the view has at least this version of the order
    /// (the version a write answered); 503 view_lagging otherwise. An order
    /// this party cannot see (yet) is 404 at once, whatever min_version
    /// says: retry a 404 right after a share.
    #[param(minimum = 1)]
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

/// The consignee as a view party reads it.
#[derive(Serialize, ToSchema)]
pub struct ViewConsignee {
    pub name: String,
    pub address: AddressBody,
    pub mobile: String,
    /// The mobile masked, for display.
    #[schema(example = "138****8000")]
    pub mobile_masked: String,
}

// They hold personal fields in plain text for the moment of answering.
crate::redacted_debug!(ViewConsignee, ShippingOrder, MerchantOrder);

/// The personal fields a view party may read, each null unless its class
/// is shared with the party, not erased, and readable here.
#[derive(Serialize)]
struct ViewPersonal {
    consignee: Option<ViewConsignee>,
    contact: Option<Contact>,
    id_number: Option<String>,
}

impl ViewPersonal {
    fn of(p: &PersonalFields) -> Self {
        Self {
            consignee: p.shipping.as_ref().map(|s| {
                let s = s.expose();
                ViewConsignee {
                    name: s.name.as_str().to_owned(),
                    address: AddressBody::of(&s.address),
                    mobile: s.mobile.as_str().to_owned(),
                    mobile_masked: s.mobile.masked(),
                }
            }),
            contact: p.contact.as_ref().map(|c| Contact::of(c.expose())),
            id_number: p.identity.as_ref().map(|i| i.expose().as_str().to_owned()),
        }
    }
}

/// An order as a logistics provider reads it: only the field classes shared
/// with the provider and not erased; no prices.
#[derive(Serialize, ToSchema)]
pub struct ShippingOrder {
    pub order_id: Uuid,
    pub order_number: String,
    pub status: Status,
    pub version: u64,
    /// The classes shared with this party and not erased.
    pub fields: Vec<FieldClass>,
    pub erased_fields: Vec<FieldClass>,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// Null unless the shipping class is readable here.
    #[schema(required)]
    pub consignee: Option<ViewConsignee>,
    /// Null unless the contact class is readable here.
    #[schema(required)]
    pub contact: Option<Contact>,
    /// Null unless the identity class is readable here.
    #[schema(required)]
    pub id_number: Option<String>,
}

/// An order as its merchant reads it: items, amount and status, and the
/// field classes shared with the merchant and not erased.
#[derive(Serialize, ToSchema)]
pub struct MerchantOrder {
    pub order_id: Uuid,
    pub order_number: String,
    pub status: Status,
    pub version: u64,
    pub items: Vec<OrderItem>,
    /// Minor units.
    pub amount: u64,
    pub currency: String,
    /// The classes shared with this party and not erased.
    pub fields: Vec<FieldClass>,
    pub erased_fields: Vec<FieldClass>,
    #[schema(format = DateTime)]
    pub placed_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// Null unless the shipping class is readable here.
    #[schema(required)]
    pub consignee: Option<ViewConsignee>,
    /// Null unless the contact class is readable here.
    #[schema(required)]
    pub contact: Option<Contact>,
    /// Null unless the identity class is readable here.
    #[schema(required)]
    pub id_number: Option<String>,
}

fn status(s: ViewStatus) -> Status {
    match s {
        ViewStatus::Active => Status::Active,
        ViewStatus::Cancelled => Status::Cancelled,
        ViewStatus::Erased => Status::Erased,
    }
}

fn shipping_view(
    state: &AppState,
    o: &ProjectedOrder,
    provider: &Party,
) -> Result<ShippingOrder, ApiError> {
    let shared = o.classes_for(provider);
    let p = ViewPersonal::of(&personal(state, o, &shared)?);
    Ok(ShippingOrder {
        order_id: o.id(),
        order_number: o.order_number.to_string(),
        status: status(o.status),
        version: o.version,
        fields: shared,
        erased_fields: o.erased.clone(),
        updated_at: rfc3339(o.updated_at_ms),
        consignee: p.consignee,
        contact: p.contact,
        id_number: p.id_number,
    })
}

fn merchant_view(state: &AppState, o: &ProjectedOrder) -> Result<MerchantOrder, ApiError> {
    let me = Party::Merchant(o.merchant_id.clone());
    let shared = o.classes_for(&me);
    let p = ViewPersonal::of(&personal(state, o, &shared)?);
    Ok(MerchantOrder {
        order_id: o.id(),
        order_number: o.order_number.to_string(),
        status: status(o.status),
        version: o.version,
        items: o
            .items
            .iter()
            .map(|i| OrderItem {
                sku: i.sku.to_string(),
                name: i.name.clone(),
                quantity: i.quantity,
                unit_price: i.unit_price,
                real_name: i.real_name,
            })
            .collect(),
        amount: o.amount_minor,
        currency: String::from_utf8_lossy(&o.currency).into_owned(),
        fields: shared,
        erased_fields: o.erased.clone(),
        placed_at: rfc3339(o.placed_at_ms),
        updated_at: rfc3339(o.updated_at_ms),
        consignee: p.consignee,
        contact: p.contact,
        id_number: p.id_number,
    })
}

/// What changed, as a feed tells it.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Placed,
    Shared,
    Cancelled,
    Erased,
}

impl From<ChangeKind> for Change {
    fn from(c: ChangeKind) -> Self {
        match c {
            ChangeKind::Placed => Change::Placed,
            ChangeKind::Shared => Change::Shared,
            ChangeKind::Cancelled => Change::Cancelled,
            ChangeKind::Erased => Change::Erased,
        }
    }
}

/// A feed's page and change types for one kind of view order, with the
/// page's reading: concrete types (not generic ones) so that the OpenAPI
/// document names each and keeps `order` nullable.
macro_rules! feed_types {
    ($(#[$doc:meta])* $feed:ident, $change:ident, $order:ty) => {
        $(#[$doc])*
        #[derive(Debug, Serialize, ToSchema)]
        pub struct $feed {
            pub changes: Vec<$change>,
            /// Where the next page starts: pass it as `after`.
            pub next_cursor: String,
        }

        /// One change of an order, with the order as the party reads it now.
        #[derive(Debug, Serialize, ToSchema)]
        pub struct $change {
            /// partition-offset of the event.
            pub position: String,
            pub order_id: Uuid,
            pub change: Change,
            /// The classes the change is about (shared or erased); empty
            /// otherwise.
            pub fields: Vec<FieldClass>,
            /// The order's version after the change.
            pub version: u64,
            #[schema(format = DateTime)]
            pub at: String,
            /// The order as the party reads it now; null if this node has no
            /// row for it.
            #[schema(required)]
            pub order: Option<$order>,
        }

        impl $feed {
            fn read(
                state: &AppState,
                items: Vec<FeedItem>,
                next: Cursor,
                render: impl Fn(&ProjectedOrder) -> Result<$order, ApiError>,
            ) -> Result<Self, ApiError> {
                let mut changes = Vec::with_capacity(items.len());
                for it in items {
                    let id = Uuid::from_bytes(it.entry.order_id);
                    let order = query::order(&state.store, id).map_err(internal)?;
                    changes.push($change {
                        position: format!("{}-{}", it.partition, it.offset),
                        order_id: id,
                        change: it.entry.change.into(),
                        fields: it.entry.classes.clone(),
                        version: it.entry.version,
                        at: rfc3339(it.entry.at_ms),
                        order: order.as_ref().map(&render).transpose()?,
                    });
                }
                Ok(Self {
                    changes,
                    next_cursor: next.to_string(),
                })
            }
        }
    };
}

feed_types!(
    /// A page of a logistics provider's change feed.
    ShippingFeed,
    ShippingChange,
    ShippingOrder
);

feed_types!(
    /// A page of a merchant's change feed.
    MerchantFeed,
    MerchantChange,
    MerchantOrder
);

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

#[utoipa::path(
    get,
    path = "/v1/shipping/{provider}/orders",
    operation_id = "shippingFeed",
    summary = "Change feed of the orders shared with a logistics provider [logistics:{provider}]",
    params(
        ("provider" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$"),
        FeedParams,
    ),
    responses(
        (status = 200, description = "A page of changes", body = ShippingFeed),
        FeedErrors
    )
)]
pub async fn shipping_feed(
    State(state): State<AppState>,
    caller: Caller,
    Path(provider): Path<String>,
    q: Result<Query<FeedParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ShippingFeed>, ApiError> {
    let party = provider_role(&caller, &provider)?;
    let (items, next) = read_feed::<schema::ShippingFeed>(&state, &provider, q).await?;
    Ok(Json(ShippingFeed::read(&state, items, next, |o| {
        shipping_view(&state, o, &party)
    })?))
}

#[utoipa::path(
    get,
    path = "/v1/shipping/{provider}/orders/{id}",
    operation_id = "shippingOrder",
    summary = "One order shared with a logistics provider [logistics:{provider}]",
    params(
        ("provider" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$"),
        ("id" = Uuid, Path),
        OrderParams,
    ),
    responses(
        (status = 200, description = "The order", body = ShippingOrder),
        ViewOrderErrors
    )
)]
pub async fn shipping_order(
    State(state): State<AppState>,
    caller: Caller,
    Path((provider, id)): Path<(String, String)>,
    q: Result<Query<OrderParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ShippingOrder>, ApiError> {
    let party = provider_role(&caller, &provider)?;
    let id = parse_id(&id)?;
    let p = params(q)?;
    match visible_order(&state, id, p.min_version, |o| o.shared_with(&party)).await? {
        Some(o) => Ok(Json(shipping_view(&state, &o, &party)?)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "order_not_found",
            "no order with this id was shared with this provider",
        )),
    }
}

#[utoipa::path(
    get,
    path = "/v1/merchants/{merchant}/orders",
    operation_id = "merchantFeed",
    summary = "Change feed of a merchant's orders [merchant:{merchant}]",
    params(
        ("merchant" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$"),
        FeedParams,
    ),
    responses(
        (status = 200, description = "A page of changes", body = MerchantFeed),
        FeedErrors
    )
)]
pub async fn merchant_feed(
    State(state): State<AppState>,
    caller: Caller,
    Path(merchant): Path<String>,
    q: Result<Query<FeedParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<MerchantFeed>, ApiError> {
    merchant_role(&caller, &merchant)?;
    let (items, next) = read_feed::<schema::MerchantFeed>(&state, &merchant, q).await?;
    Ok(Json(MerchantFeed::read(&state, items, next, |o| {
        merchant_view(&state, o)
    })?))
}

#[utoipa::path(
    get,
    path = "/v1/merchants/{merchant}/orders/{id}",
    operation_id = "merchantOrder",
    summary = "One of a merchant's orders: items, amount, status, and the fields shared with it [merchant:{merchant}]",
    params(
        ("merchant" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$"),
        ("id" = Uuid, Path),
        OrderParams,
    ),
    responses(
        (status = 200, description = "The order", body = MerchantOrder),
        ViewOrderErrors
    )
)]
pub async fn merchant_order(
    State(state): State<AppState>,
    caller: Caller,
    Path((merchant, id)): Path<(String, String)>,
    q: Result<Query<OrderParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<MerchantOrder>, ApiError> {
    merchant_role(&caller, &merchant)?;
    let id = parse_id(&id)?;
    let p = params(q)?;
    match visible_order(&state, id, p.min_version, |o| {
        o.merchant_id.as_str() == merchant
    })
    .await?
    {
        Some(o) => Ok(Json(merchant_view(&state, &o)?)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "order_not_found",
            "this merchant has no order with this id",
        )),
    }
}
