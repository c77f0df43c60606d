//! Schema version 1 of the stored event envelope: the exact shape on the wire.
//!
//! These types are frozen. Changing a field, its type or its order, or the
//! order of enum variants, changes the bytes and breaks stored events; the
//! golden fixtures in `schemas/fixtures/` catch that. A new schema version gets
//! a new module and an upcast from this one in `codec`.
//!
//! bincode (standard configuration: varint integers, enum variants as varint
//! indices, length-prefixed sequences) encodes fields in declaration order.
//! Records are written and read with bincode's own derive (`Encode`,
//! `Decode`), which gives the same bytes as its serde path but copies byte
//! arrays and byte strings in one piece instead of a call per byte; the serde
//! derives remain for the view rows that hold these types, and the fixtures
//! hold both to the same bytes.

use bincode::{BorrowDecode, Decode, Encode};
use serde::{Deserialize, Serialize};

pub const VERSION: u16 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct EnvelopeV1 {
    pub event_id: [u8; 16],
    pub order_id: [u8; 16],
    pub sequence: u64,
    pub occurred_at_ms: i64,
    pub key_id: [u8; 16],
    pub prev_hash: [u8; 32],
    pub body: BodyV1,
    pub sealed: Vec<SealedV1>,
}

/// Field classes, by variant index: 0 shipping, 1 contact, 2 identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub enum ClassV1 {
    Shipping,
    Contact,
    Identity,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct SealedV1 {
    pub class: ClassV1,
    /// `nonce | SIV tag | ciphertext` of the class's bincode-encoded fields.
    /// bincode writes a byte string and a `u8` sequence alike (length, then
    /// the bytes); `serde_bytes` only spares a call per byte.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub enum BodyV1 {
    OrderPlaced {
        order_number: String,
        merchant_id: String,
        items: Vec<ItemV1>,
        amount_minor: u64,
        currency: [u8; 3],
        classes: Vec<ClassV1>,
    },
    OrderShared {
        party: PartyV1,
        classes: Vec<ClassV1>,
    },
    OrderCancelled {
        reason: ReasonV1,
    },
    OrderErased {
        /// Empty means the whole order.
        classes: Vec<ClassV1>,
        whole: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ItemV1 {
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    pub unit_price: u64,
    pub real_name: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub enum PartyV1 {
    Logistics(String),
    Merchant(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub enum ReasonV1 {
    CustomerRequest,
    PaymentFailed,
    OutOfStock,
    FraudSuspected,
    Other,
}

// The sealed plaintexts borrow their text: from the domain value a field
// is sealed from, or from the opened (zeroed on drop) buffer it is read
// from, so no copy of personal data is left to zero. bincode writes a `&str`
// as it writes a `String` (length, then the bytes), and reads it back
// checked as UTF-8.

/// Sealed plaintext of the shipping class.
#[derive(Encode, BorrowDecode)]
pub struct ShippingV1<'a> {
    pub name: &'a str,
    pub province: &'a str,
    pub city: &'a str,
    pub district: &'a str,
    pub street: &'a str,
    pub postal_code: &'a str,
    pub mobile: &'a str,
}

/// Sealed plaintext of the contact class.
#[derive(Encode, BorrowDecode)]
pub struct ContactV1<'a> {
    pub landline: Option<&'a str>,
    pub email: Option<&'a str>,
}

/// Sealed plaintext of the identity class.
#[derive(Encode, BorrowDecode)]
pub struct IdentityV1<'a> {
    pub id_number: &'a str,
}

crate::redacted_debug!(ShippingV1<'_>, ContactV1<'_>, IdentityV1<'_>);
