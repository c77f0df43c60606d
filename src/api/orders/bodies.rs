//! The request bodies of the command API, and their reading into the
//! domain's types. They hold personal data as plain strings for the moment
//! of parsing only, so they derive no Debug (the address, which answers
//! show too, prints `[redacted]`). Their `#[schema]` attributes
//! describe, for the OpenAPI document, the rules the domain's parsing
//! applies; that parsing, not serde, is what refuses a value, naming the
//! field.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::validation::{
    Address, ConsigneeName, Currency, Email, IdNumber, Item, Landline, MerchantId, Mobile,
    OrderNumber, ValidationError,
};
use crate::domain::{CancelReason, ContactInfo, FieldClass, NewOrder, PersonalData, ShippingInfo};

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

// It holds personal fields in plain text for the moment of answering.
crate::redacted_debug!(AddressBody);

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
    pub(super) party: PartyBody,
    #[schema(value_type = Vec<FieldClass>, min_items = 1)]
    pub(super) fields: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PartyBody {
    #[schema(value_type = PartyKind)]
    pub(super) kind: String,
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub(super) id: String,
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
    pub(super) reason: String,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Erase)]
pub(crate) struct EraseBody {
    /// Only these classes; absent = the whole order.
    #[serde(default)]
    #[schema(value_type = Option<Vec<FieldClass>>, min_items = 1)]
    pub(super) fields: Option<Vec<String>>,
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

/// A legal hold. Its reason is public (stored in clear in the log), so text
/// that looks like personal data is refused: an '@', or a run of digits
/// (spaces and dashes inside joined) that is a PRC mobile, a landline with
/// area code, an E.164 number or an ID number; dates and case numbers pass.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Hold)]
pub struct HoldBody {
    #[schema(min_length = 1, max_length = 200)]
    pub(super) reason: String,
    /// When the hold ends by itself, in the future: an RFC 3339 time, or a
    /// date (its start, UTC); absent: until released.
    #[serde(default)]
    pub(super) until: Option<String>,
}
