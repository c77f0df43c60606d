//! What the command API answers: a command's outcome, an erasure's
//! receipt, an order. Serde gives their wire form, `ToSchema` their schema in
//! the OpenAPI document. Those holding personal fields print `[redacted]`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::bodies::{AddressBody, PartyKind};
use crate::domain::validation::Item;
use crate::domain::{CancelReason, ContactInfo, FieldClass, Hold, Party, Status};
use crate::service::OrderView;

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

/// The answer of `GET /v1/orders/{id}/erasure`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasureStatus {
    pub receipt: crate::erasure::Receipt,
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
crate::redacted_debug!(Personal, Consignee, Contact);

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
