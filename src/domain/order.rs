//! The order aggregate: commands, events, state, and the pure `decide`/`apply`.
//!
//! Nothing here does I/O, reads a clock or draws random numbers: the service
//! layer supplies ids and times, so every rule is testable in given/when/then
//! form. Personal data only ever appears inside [`Personal`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::personal::Personal;
use super::validation::{
    Address, ConsigneeName, Currency, Email, HoldReason, IdNumber, Item, Landline, MAX_ITEMS,
    MerchantId, Mobile, Money, OrderNumber, ProviderId, ValidationError,
};

/// The classes of personal data, each sealed under its own subkey so it can be
/// shared and shredded on its own.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
    utoipa::ToSchema,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum FieldClass {
    /// Consignee name, delivery address, mobile.
    Shipping,
    /// Landline, email.
    Contact,
    /// National ID number (real-name goods only).
    Identity,
}

impl FieldClass {
    pub const ALL: [FieldClass; 3] = [
        FieldClass::Shipping,
        FieldClass::Contact,
        FieldClass::Identity,
    ];

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(raw: &str) -> Option<Self> {
        raw.parse().ok()
    }
}

impl fmt::Display for FieldClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Someone an order is shared with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Party {
    Logistics(ProviderId),
    Merchant(MerchantId),
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Party::Logistics(p) => write!(f, "logistics:{p}"),
            Party::Merchant(m) => write!(f, "merchant:{m}"),
        }
    }
}

/// Why an order was cancelled. A closed list rather than free text, so a
/// cancellation can never carry personal data into the clear part of the log.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
    utoipa::ToSchema,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    CustomerRequest,
    PaymentFailed,
    OutOfStock,
    FraudSuspected,
    Other,
}

impl CancelReason {
    pub const ALL: [CancelReason; 5] = [
        CancelReason::CustomerRequest,
        CancelReason::PaymentFailed,
        CancelReason::OutOfStock,
        CancelReason::FraudSuspected,
        CancelReason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(raw: &str) -> Option<Self> {
        raw.parse().ok()
    }
}

/// What an erasure covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErasureScope {
    /// Every class: the order key itself is destroyed.
    Order,
    /// Only these classes: their subkeys are shredded, the rest stays readable.
    Classes(BTreeSet<FieldClass>),
}

impl ErasureScope {
    pub fn classes(&self) -> BTreeSet<FieldClass> {
        match self {
            ErasureScope::Order => FieldClass::ALL.into_iter().collect(),
            ErasureScope::Classes(c) => c.clone(),
        }
    }
}

/// Why personal data was erased.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    utoipa::ToSchema,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ErasureReason {
    /// A privacy officer asked (for one order, or for a person).
    #[default]
    Request,
    /// The retention policy's period ran out.
    Retention,
}

impl ErasureReason {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A legal hold: while in force, the order's personal data may not be
/// erased (a dispute, an authority's request). Its reason is public (it is
/// stored in clear in the log), so it is checked to hold no personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub reason: HoldReason,
    /// When the hold ends by itself (Unix ms); none: until released.
    pub until_ms: Option<i64>,
}

impl Hold {
    /// In force at `at_ms`. An unknown time (`i64::MIN`) counts every hold.
    pub fn in_force(&self, at_ms: i64) -> bool {
        self.until_ms.is_none_or(|until| at_ms < until)
    }
}

crate::redacted_debug!(ShippingInfo, ContactInfo, PersonalData);

/// Shipping class: what a logistics provider needs to deliver.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize)]
pub struct ShippingInfo {
    pub name: ConsigneeName,
    pub address: Address,
    pub mobile: Mobile,
}

/// Contact class: optional extra ways to reach the consignee.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, Zeroize)]
pub struct ContactInfo {
    pub landline: Option<Landline>,
    pub email: Option<Email>,
}

impl ContactInfo {
    pub fn is_empty(&self) -> bool {
        self.landline.is_none() && self.email.is_none()
    }
}

/// All personal data of one order, grouped by class.
#[derive(Clone, PartialEq, Eq, Zeroize)]
pub struct PersonalData {
    pub shipping: ShippingInfo,
    pub contact: ContactInfo,
    pub identity: Option<IdNumber>,
}

impl PersonalData {
    /// The classes this order holds data of: shipping always, the others when filled in.
    pub fn classes(&self) -> BTreeSet<FieldClass> {
        let mut c = BTreeSet::from([FieldClass::Shipping]);
        if !self.contact.is_empty() {
            c.insert(FieldClass::Contact);
        }
        if self.identity.is_some() {
            c.insert(FieldClass::Identity);
        }
        c
    }
}

/// The personal fields of a recorded order as far as they can be read: a class
/// is `None` when the order has no data of it, or when its key is shredded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersonalFields {
    pub shipping: Option<Personal<ShippingInfo>>,
    pub contact: Option<Personal<ContactInfo>>,
    pub identity: Option<Personal<IdNumber>>,
}

impl PersonalFields {
    pub fn from_data(data: &PersonalData) -> Self {
        Self {
            shipping: Some(Personal::new(data.shipping.clone())),
            contact: (!data.contact.is_empty()).then(|| Personal::new(data.contact.clone())),
            identity: data.identity.clone().map(Personal::new),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.shipping.is_none() && self.contact.is_none() && self.identity.is_none()
    }
}

/// The `OrderPlaced` event. Public facts stay readable forever; `personal` is
/// what could be opened (everything, at the time of placing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPlaced {
    pub order_number: OrderNumber,
    pub merchant_id: MerchantId,
    pub items: Vec<Item>,
    pub amount: Money,
    /// Which classes of personal data the order holds. Public, so state can be
    /// rebuilt from the log after the data itself is shredded.
    pub classes: BTreeSet<FieldClass>,
    pub personal: PersonalFields,
}

impl OrderPlaced {
    pub fn is_real_name(&self) -> bool {
        self.items.iter().any(|i| i.real_name)
    }
}

/// A new order, valid as a whole: lines add up to the amount, real-name goods
/// come with an ID number. Only [`NewOrder::new`] builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub order_number: OrderNumber,
    pub merchant_id: MerchantId,
    pub items: Vec<Item>,
    pub amount: Money,
    pub personal: Personal<PersonalData>,
}

impl NewOrder {
    pub fn new(
        order_number: OrderNumber,
        merchant_id: MerchantId,
        items: Vec<Item>,
        currency: Currency,
        amount: i64,
        personal: PersonalData,
    ) -> Result<Self, ValidationError> {
        if items.is_empty() {
            return Err(ValidationError::new("items", "must list at least one item"));
        }
        if items.len() > MAX_ITEMS {
            return Err(ValidationError::new(
                "items",
                format!("must list at most {MAX_ITEMS} items"),
            ));
        }
        let sum = items
            .iter()
            .try_fold(0u64, |acc, i| {
                i.line_total().and_then(|t| acc.checked_add(t))
            })
            .ok_or_else(|| ValidationError::new("items", "line totals overflow"))?;
        if amount < 0 {
            return Err(ValidationError::new("amount", "must not be negative"));
        }
        if amount as u64 != sum {
            return Err(ValidationError::new(
                "amount",
                format!("must equal the sum of quantity x unit_price over the items ({sum})"),
            ));
        }
        let real_name = items.iter().any(|i| i.real_name);
        if real_name && personal.identity.is_none() {
            return Err(ValidationError::new(
                "id_number",
                "is required: the order contains real-name goods",
            ));
        }
        if !real_name && personal.identity.is_some() {
            return Err(ValidationError::new(
                "id_number",
                "must be absent: no item is real-name registered, so it may not be collected",
            ));
        }
        Ok(Self {
            order_number,
            merchant_id,
            items,
            amount: Money {
                minor: sum,
                currency,
            },
            personal: Personal::new(personal),
        })
    }

    pub fn is_real_name(&self) -> bool {
        self.items.iter().any(|i| i.real_name)
    }
}

/// What checkout services ask for.
// Commands and events live for one request and are moved, not stored in
// bulk; boxing the large variant would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    PlaceOrder(NewOrder),
    ShareOrder {
        party: Party,
        classes: BTreeSet<FieldClass>,
    },
    CancelOrder {
        reason: CancelReason,
    },
    EraseOrder {
        scope: ErasureScope,
        reason: ErasureReason,
    },
    /// Puts the order under a legal hold (or changes the hold it is under).
    HoldOrder(Hold),
    /// Ends the order's legal hold.
    ReleaseHold,
}

impl Command {
    pub fn kind(&self) -> &'static str {
        match self {
            Command::PlaceOrder(_) => "place",
            Command::ShareOrder { .. } => "share",
            Command::CancelOrder { .. } => "cancel",
            Command::EraseOrder { .. } => "erase",
            Command::HoldOrder(_) => "hold",
            Command::ReleaseHold => "release_hold",
        }
    }

    /// A request erasure of `scope`.
    pub fn erase(scope: ErasureScope) -> Self {
        Command::EraseOrder {
            scope,
            reason: ErasureReason::Request,
        }
    }
}

/// What happened. `OrderPlaced` is the only event that carries personal data.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    OrderPlaced(OrderPlaced),
    OrderShared {
        party: Party,
        classes: BTreeSet<FieldClass>,
    },
    OrderCancelled {
        reason: CancelReason,
    },
    OrderErased {
        scope: ErasureScope,
        reason: ErasureReason,
    },
    OrderHeld(Hold),
    OrderHoldReleased,
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::OrderPlaced(_) => "OrderPlaced",
            Event::OrderShared { .. } => "OrderShared",
            Event::OrderCancelled { .. } => "OrderCancelled",
            Event::OrderErased { .. } => "OrderErased",
            Event::OrderHeld(_) => "OrderHeld",
            Event::OrderHoldReleased => "OrderHoldReleased",
        }
    }
}

/// A refusal. Messages are lowercase, name the rule, and hold no personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("order does not exist")]
    NotFound,
    #[error("order already exists")]
    AlreadyPlaced,
    #[error("order is cancelled: it can no longer be shared")]
    ShareOfCancelled,
    #[error("order is erased: it can no longer be shared")]
    ShareOfErased,
    #[error("field class {0} of this order is erased: it can no longer be shared")]
    ShareOfErasedClass(FieldClass),
    #[error("a share must name at least one field class")]
    NoFieldClasses,
    #[error("a merchant share may only go to the order's own merchant ({own})")]
    ForeignMerchant { own: MerchantId },
    #[error("the identity class applies only to orders with real-name goods")]
    IdentityNotApplicable,
    #[error("the order has no contact fields to share")]
    NoContactFields,
    #[error("order is already cancelled")]
    AlreadyCancelled,
    #[error("order is erased: it can no longer be cancelled")]
    CancelOfErased,
    #[error("order is already erased")]
    AlreadyErased,
    #[error("an erasure must name at least one field class")]
    NoClassesToErase,
    #[error("order is under legal hold ({}): it cannot be erased until the hold is released{}", .0.reason, .0.until_ms.map(|u| format!(" or ends at {}", crate::clock::rfc3339(u))).unwrap_or_default())]
    LegalHold(Hold),
    #[error("order is erased: there is nothing left to hold")]
    HoldOfErased,
    #[error("order is not under legal hold")]
    NotHeld,
}

/// Lifecycle status as downstream parties see it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    utoipa::ToSchema,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Cancelled,
    Erased,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The public facts of a placed order: everything `decide` needs, no personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderFacts {
    pub order_number: OrderNumber,
    pub merchant_id: MerchantId,
    pub items: Vec<Item>,
    pub amount: Money,
    pub real_name: bool,
    pub has_contact: bool,
    pub cancelled: Option<CancelReason>,
    /// Classes whose data has been shredded; all three after a whole-order erasure.
    pub erased: BTreeSet<FieldClass>,
    pub fully_erased: bool,
    pub shares: BTreeMap<Party, BTreeSet<FieldClass>>,
    /// The legal hold last placed and not released (it may have ended).
    pub hold: Option<Hold>,
}

impl OrderFacts {
    /// The hold in force at `at_ms`, if any.
    pub fn hold_at(&self, at_ms: i64) -> Option<&Hold> {
        self.hold.as_ref().filter(|h| h.in_force(at_ms))
    }

    pub fn status(&self) -> Status {
        if self.fully_erased {
            Status::Erased
        } else if self.cancelled.is_some() {
            Status::Cancelled
        } else {
            Status::Active
        }
    }
}

/// An order's state: how many events it has (its version) and, once placed, its facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub version: u64,
    pub order: Option<OrderFacts>,
}

/// Decides what a command does to an order. Pure; an empty result means the
/// command changes nothing (sharing what was already shared). The time is
/// unknown here, so a legal hold with an end counts as in force: see
/// [`decide_at`].
pub fn decide(state: &State, command: Command) -> Result<Vec<Event>, DomainError> {
    decide_at(state, command, i64::MIN)
}

/// [`decide`] at a given time (Unix ms, from the caller's clock), which
/// says whether a legal hold with an end is still in force.
pub fn decide_at(state: &State, command: Command, at_ms: i64) -> Result<Vec<Event>, DomainError> {
    let order = match (&state.order, command) {
        (None, Command::PlaceOrder(new)) => {
            let data = new.personal.expose();
            return Ok(vec![Event::OrderPlaced(OrderPlaced {
                classes: data.classes(),
                personal: PersonalFields::from_data(data),
                order_number: new.order_number,
                merchant_id: new.merchant_id,
                items: new.items,
                amount: new.amount,
            })]);
        }
        (Some(_), Command::PlaceOrder(_)) => return Err(DomainError::AlreadyPlaced),
        (None, _) => return Err(DomainError::NotFound),
        (Some(order), command) => (order, command),
    };
    match order {
        (o, Command::ShareOrder { party, classes }) => {
            if o.fully_erased {
                return Err(DomainError::ShareOfErased);
            }
            if o.cancelled.is_some() {
                return Err(DomainError::ShareOfCancelled);
            }
            if classes.is_empty() {
                return Err(DomainError::NoFieldClasses);
            }
            if let Party::Merchant(m) = &party
                && *m != o.merchant_id
            {
                return Err(DomainError::ForeignMerchant {
                    own: o.merchant_id.clone(),
                });
            }
            if classes.contains(&FieldClass::Identity) && !o.real_name {
                return Err(DomainError::IdentityNotApplicable);
            }
            if classes.contains(&FieldClass::Contact) && !o.has_contact {
                return Err(DomainError::NoContactFields);
            }
            if let Some(c) = classes.iter().find(|c| o.erased.contains(c)) {
                return Err(DomainError::ShareOfErasedClass(*c));
            }
            let already = o.shares.get(&party);
            let new: BTreeSet<FieldClass> = classes
                .into_iter()
                .filter(|c| already.is_none_or(|a| !a.contains(c)))
                .collect();
            if new.is_empty() {
                return Ok(vec![]);
            }
            Ok(vec![Event::OrderShared {
                party,
                classes: new,
            }])
        }
        (o, Command::CancelOrder { reason }) => {
            if o.fully_erased {
                return Err(DomainError::CancelOfErased);
            }
            if o.cancelled.is_some() {
                return Err(DomainError::AlreadyCancelled);
            }
            Ok(vec![Event::OrderCancelled { reason }])
        }
        (o, Command::EraseOrder { scope, reason }) => {
            if o.fully_erased {
                return Err(DomainError::AlreadyErased);
            }
            if let ErasureScope::Classes(classes) = &scope {
                if classes.is_empty() {
                    return Err(DomainError::NoClassesToErase);
                }
                if classes.is_subset(&o.erased) {
                    return Err(DomainError::AlreadyErased);
                }
            }
            if let Some(hold) = o.hold_at(at_ms) {
                return Err(DomainError::LegalHold(hold.clone()));
            }
            Ok(vec![Event::OrderErased { scope, reason }])
        }
        (o, Command::HoldOrder(hold)) => {
            if o.fully_erased {
                return Err(DomainError::HoldOfErased);
            }
            if o.hold.as_ref() == Some(&hold) {
                return Ok(vec![]);
            }
            Ok(vec![Event::OrderHeld(hold)])
        }
        (o, Command::ReleaseHold) => {
            if o.hold_at(at_ms).is_none() {
                return Err(DomainError::NotHeld);
            }
            Ok(vec![Event::OrderHoldReleased])
        }
        (_, Command::PlaceOrder(_)) => unreachable!("handled above"),
    }
}

/// Folds one event into the state. Total: an event the state machine would not
/// have produced is still applied as faithfully as possible, because the log is
/// the truth and replay must not stop.
pub fn apply(mut state: State, event: &Event) -> State {
    state.version += 1;
    match (event, state.order.as_mut()) {
        (Event::OrderPlaced(new), _) => {
            state.order = Some(OrderFacts {
                order_number: new.order_number.clone(),
                merchant_id: new.merchant_id.clone(),
                items: new.items.clone(),
                amount: new.amount,
                real_name: new.is_real_name(),
                has_contact: new.classes.contains(&FieldClass::Contact),
                cancelled: None,
                erased: BTreeSet::new(),
                fully_erased: false,
                shares: BTreeMap::new(),
                hold: None,
            });
        }
        (Event::OrderShared { party, classes }, Some(o)) => {
            o.shares
                .entry(party.clone())
                .or_default()
                .extend(classes.iter().copied());
        }
        (Event::OrderCancelled { reason }, Some(o)) => {
            o.cancelled.get_or_insert(*reason);
        }
        (Event::OrderErased { scope, .. }, Some(o)) => {
            o.erased.extend(scope.classes());
            if *scope == ErasureScope::Order {
                o.fully_erased = true;
            }
        }
        (Event::OrderHeld(hold), Some(o)) => {
            o.hold = Some(hold.clone());
        }
        (Event::OrderHoldReleased, Some(o)) => {
            o.hold = None;
        }
        (_, None) => {}
    }
    state
}

/// Replays events from the start.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> State {
    events.into_iter().fold(State::default(), apply)
}
