//! Encoding and decoding of envelopes, and the sealing boundary: the only place
//! where domain events with personal data become bytes and back.
//!
//! Record layout: `b"OL"`, schema version (u16 big-endian), then the body of
//! that version. Version 2 (written now) is the log key's id (8 bytes), the
//! bincode envelope, and an HMAC-SHA256 tag (32 bytes) over everything before
//! it; version 1 is the bincode envelope alone. The decoder dispatches on the
//! version, so an old version is upcast to the current in-memory [`Envelope`]
//! here and nowhere else. Decoding checks the shape only; [`authenticate`]
//! (or [`decode_authentic`]) checks who wrote it.

use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::v1::{self, ClassV1, EnvelopeV1, ItemV1, PartyV1, ReasonV1, SealedV1};
use super::v3::{self, BodyV3, EnvelopeV3, ErasureReasonV3};
use crate::crypto::kek::KekId;
use crate::crypto::logkey::{Forged, LogKeys, TAG_LEN};
use crate::crypto::{self, KeyId, OpenError, OrderKey, SealContext};
use crate::domain::validation::{
    Address, ConsigneeName, Currency, Email, HoldReason, IdNumber, Item, Landline, MerchantId,
    Mobile, Money, OrderNumber, ProviderId, Sku, ValidationError,
};
use crate::domain::{
    CancelReason, ContactInfo, ErasureReason, ErasureScope, Event, FieldClass, Hold, OrderPlaced,
    Party, Personal, PersonalFields, ShippingInfo,
};

pub const MAGIC: [u8; 2] = *b"OL";
/// Schema v3: the v3 envelope (erasure reasons, legal holds) framed as v2.
pub const CURRENT_VERSION: u16 = v3::VERSION;
/// Schema v2: the v1 envelope framed with the log key's id and a MAC.
pub const V2: u16 = 2;
/// Magic, version and log key id: the bytes before a v2 or v3 record's envelope.
const V2_HEADER: usize = 4 + 8;
/// Upper bound of one encoded event; anything longer is refused before decoding.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// What an event says, in domain terms: every schema version decodes to it,
/// so the wire types (`v1`, `v3`) stay inside `events/`. Public text is as
/// the log holds it; [`public_event`] checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    OrderPlaced {
        order_number: OrderNumber,
        merchant_id: MerchantId,
        items: Vec<Item>,
        amount_minor: u64,
        currency: [u8; 3],
        /// The classes of personal data the order holds, as logged.
        classes: Vec<FieldClass>,
    },
    OrderShared {
        party: Party,
        classes: Vec<FieldClass>,
    },
    OrderCancelled {
        reason: CancelReason,
    },
    OrderErased {
        /// Empty when `whole`.
        classes: Vec<FieldClass>,
        whole: bool,
        reason: ErasureReason,
    },
    OrderHeld {
        reason: HoldReason,
        until_ms: Option<i64>,
    },
    OrderHoldReleased,
}

/// One sealed class of an `OrderPlaced`: `nonce | SIV tag | ciphertext` of
/// the class's fields. Its serde form (the class by variant index, then the
/// bytes) is the v1 wire form, and the views store it as it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sealed {
    pub class: FieldClass,
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// Hash of an encoded record: the link of the per-order hash chain.
pub type RecordHash = [u8; 32];

/// Everything about an event except what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventMeta {
    pub event_id: Uuid,
    pub order_id: Uuid,
    /// 1 for `OrderPlaced`, then +1 per event of the same order.
    pub sequence: u64,
    pub occurred_at_ms: i64,
    pub key_id: KeyId,
    /// Hash of the order's previous record; zeros for the first.
    pub prev_hash: RecordHash,
}

impl EventMeta {
    fn seal_context(&self) -> SealContext {
        SealContext {
            order_id: self.order_id,
            event_id: self.event_id,
            sequence: self.sequence,
            key_id: self.key_id,
        }
    }
}

/// A decoded envelope: public parts readable, personal parts still sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The version it was stored as (before upcasting).
    pub schema_version: u16,
    pub meta: EventMeta,
    pub body: Body,
    pub sealed: Vec<Sealed>,
}

impl Envelope {
    pub fn kind(&self) -> &'static str {
        match self.body {
            Body::OrderPlaced { .. } => "OrderPlaced",
            Body::OrderShared { .. } => "OrderShared",
            Body::OrderCancelled { .. } => "OrderCancelled",
            Body::OrderErased { .. } => "OrderErased",
            Body::OrderHeld { .. } => "OrderHeld",
            Body::OrderHoldReleased => "OrderHoldReleased",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is {0} bytes, shorter than the 4-byte header")]
    TooShort(usize),
    #[error("record does not start with the orderlog magic bytes")]
    BadMagic,
    #[error("unsupported schema version {0} (this build reads 1..={CURRENT_VERSION})")]
    UnsupportedVersion(u16),
    #[error("record is {0} bytes, over the {MAX_RECORD_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed v{version} envelope: {reason}")]
    Malformed { version: u16, reason: String },
    #[error("{0} trailing bytes after the envelope")]
    TrailingBytes(usize),
    #[error("invalid public field in envelope: {0}")]
    Invalid(ValidationError),
    #[error("forged record: {0}")]
    Forged(#[from] Forged),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenEventError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("sealed {class} field decrypted but is malformed: {reason}")]
    Malformed { class: FieldClass, reason: String },
    #[error("sealed field in a {0} event, which carries no personal data")]
    Unexpected(&'static str),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_RECORD_BYTES>()
}

fn class_v1(c: FieldClass) -> ClassV1 {
    match c {
        FieldClass::Shipping => ClassV1::Shipping,
        FieldClass::Contact => ClassV1::Contact,
        FieldClass::Identity => ClassV1::Identity,
    }
}

fn class_of(c: ClassV1) -> FieldClass {
    match c {
        ClassV1::Shipping => FieldClass::Shipping,
        ClassV1::Contact => FieldClass::Contact,
        ClassV1::Identity => FieldClass::Identity,
    }
}

fn classes_v1(c: &[FieldClass]) -> Vec<ClassV1> {
    c.iter().copied().map(class_v1).collect()
}

fn classes_of(c: Vec<ClassV1>) -> Vec<FieldClass> {
    c.into_iter().map(class_of).collect()
}

fn reason_v1(r: CancelReason) -> ReasonV1 {
    match r {
        CancelReason::CustomerRequest => ReasonV1::CustomerRequest,
        CancelReason::PaymentFailed => ReasonV1::PaymentFailed,
        CancelReason::OutOfStock => ReasonV1::OutOfStock,
        CancelReason::FraudSuspected => ReasonV1::FraudSuspected,
        CancelReason::Other => ReasonV1::Other,
    }
}

fn reason_of(r: ReasonV1) -> CancelReason {
    match r {
        ReasonV1::CustomerRequest => CancelReason::CustomerRequest,
        ReasonV1::PaymentFailed => CancelReason::PaymentFailed,
        ReasonV1::OutOfStock => CancelReason::OutOfStock,
        ReasonV1::FraudSuspected => CancelReason::FraudSuspected,
        ReasonV1::Other => CancelReason::Other,
    }
}

fn erasure_reason_v3(r: ErasureReason) -> ErasureReasonV3 {
    match r {
        ErasureReason::Request => ErasureReasonV3::Request,
        ErasureReason::Retention => ErasureReasonV3::Retention,
    }
}

fn erasure_reason_of(r: ErasureReasonV3) -> ErasureReason {
    match r {
        ErasureReasonV3::Request => ErasureReason::Request,
        ErasureReasonV3::Retention => ErasureReason::Retention,
    }
}

fn party_v1(p: &Party) -> PartyV1 {
    match p {
        Party::Logistics(id) => PartyV1::Logistics(id.as_str().to_owned()),
        Party::Merchant(id) => PartyV1::Merchant(id.as_str().to_owned()),
    }
}

fn party_of(p: PartyV1) -> Party {
    match p {
        PartyV1::Logistics(id) => Party::Logistics(ProviderId::from_log(id)),
        PartyV1::Merchant(id) => Party::Merchant(MerchantId::from_log(id)),
    }
}

fn item_v1(i: &Item) -> ItemV1 {
    ItemV1 {
        sku: i.sku.as_str().to_owned(),
        name: i.name.clone(),
        quantity: i.quantity,
        unit_price: i.unit_price,
        real_name: i.real_name,
    }
}

fn item_of(i: ItemV1) -> Item {
    Item {
        sku: Sku::from_log(i.sku),
        name: i.name,
        quantity: i.quantity,
        unit_price: i.unit_price,
        real_name: i.real_name,
    }
}

fn sealed_v1(s: &Sealed) -> SealedV1 {
    SealedV1 {
        class: class_v1(s.class),
        ciphertext: s.ciphertext.clone(),
    }
}

fn sealed_of(s: SealedV1) -> Sealed {
    Sealed {
        class: class_of(s.class),
        ciphertext: s.ciphertext,
    }
}

/// The wire body of the current version.
fn body_v3(b: &Body) -> BodyV3 {
    match b {
        Body::OrderPlaced {
            order_number,
            merchant_id,
            items,
            amount_minor,
            currency,
            classes,
        } => BodyV3::OrderPlaced {
            order_number: order_number.as_str().to_owned(),
            merchant_id: merchant_id.as_str().to_owned(),
            items: items.iter().map(item_v1).collect(),
            amount_minor: *amount_minor,
            currency: *currency,
            classes: classes_v1(classes),
        },
        Body::OrderShared { party, classes } => BodyV3::OrderShared {
            party: party_v1(party),
            classes: classes_v1(classes),
        },
        Body::OrderCancelled { reason } => BodyV3::OrderCancelled {
            reason: reason_v1(*reason),
        },
        Body::OrderErased {
            classes,
            whole,
            reason,
        } => BodyV3::OrderErased {
            classes: classes_v1(classes),
            whole: *whole,
            reason: erasure_reason_v3(*reason),
        },
        Body::OrderHeld { reason, until_ms } => BodyV3::OrderHeld {
            reason: reason.as_str().to_owned(),
            until_ms: *until_ms,
        },
        Body::OrderHoldReleased => BodyV3::OrderHoldReleased,
    }
}

/// A wire body (of any version, upcast to v3) in domain terms, the log's
/// text taken as it is ([`public_event`] checks it).
fn body_of(b: BodyV3) -> Body {
    match b {
        BodyV3::OrderPlaced {
            order_number,
            merchant_id,
            items,
            amount_minor,
            currency,
            classes,
        } => Body::OrderPlaced {
            order_number: OrderNumber::from_log(order_number),
            merchant_id: MerchantId::from_log(merchant_id),
            items: items.into_iter().map(item_of).collect(),
            amount_minor,
            currency,
            classes: classes_of(classes),
        },
        BodyV3::OrderShared { party, classes } => Body::OrderShared {
            party: party_of(party),
            classes: classes_of(classes),
        },
        BodyV3::OrderCancelled { reason } => Body::OrderCancelled {
            reason: reason_of(reason),
        },
        BodyV3::OrderErased {
            classes,
            whole,
            reason,
        } => Body::OrderErased {
            classes: classes_of(classes),
            whole,
            reason: erasure_reason_of(reason),
        },
        BodyV3::OrderHeld { reason, until_ms } => Body::OrderHeld {
            reason: HoldReason::from_log(&reason),
            until_ms,
        },
        BodyV3::OrderHoldReleased => Body::OrderHoldReleased,
    }
}

/// The bincode of a class's plaintext, in a buffer of its exact size: one
/// that grew would leave an unzeroed copy of the plaintext behind.
fn encode_plain<T: bincode::Encode>(v: &T) -> Zeroizing<Vec<u8>> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::encode_into_writer(v, &mut size, bincode_config())
        .expect("in-memory values always encode");
    let mut out = Zeroizing::new(vec![0u8; size.bytes_written]);
    bincode::encode_into_slice(v, &mut out, bincode_config())
        .expect("the buffer has the size just measured");
    out
}

/// Builds the envelope of `event`, sealing its personal fields under `key`
/// (only `OrderPlaced` has any; other events need no key).
pub fn seal_event(
    event: &Event,
    meta: EventMeta,
    key: Option<&OrderKey>,
) -> Result<Envelope, OpenError> {
    let ctx = meta.seal_context();
    let mut sealed = Vec::new();
    let body = match event {
        Event::OrderPlaced(p) => {
            let key = key.ok_or(OpenError::Shredded(FieldClass::Shipping))?;
            if let Some(s) = &p.personal.shipping {
                let s = s.expose();
                let plain = encode_plain(&v1::ShippingV1 {
                    name: s.name.as_str(),
                    province: &s.address.province,
                    city: &s.address.city,
                    district: &s.address.district,
                    street: &s.address.street,
                    postal_code: &s.address.postal_code,
                    mobile: s.mobile.as_str(),
                });
                sealed.push(Sealed {
                    class: FieldClass::Shipping,
                    ciphertext: crypto::seal(key, &ctx, FieldClass::Shipping, &plain)?,
                });
            }
            if let Some(c) = &p.personal.contact {
                let c = c.expose();
                let plain = encode_plain(&v1::ContactV1 {
                    landline: c.landline.as_ref().map(|l| l.as_str()),
                    email: c.email.as_ref().map(|e| e.as_str()),
                });
                sealed.push(Sealed {
                    class: FieldClass::Contact,
                    ciphertext: crypto::seal(key, &ctx, FieldClass::Contact, &plain)?,
                });
            }
            if let Some(id) = &p.personal.identity {
                let plain = encode_plain(&v1::IdentityV1 {
                    id_number: id.expose().as_str(),
                });
                sealed.push(Sealed {
                    class: FieldClass::Identity,
                    ciphertext: crypto::seal(key, &ctx, FieldClass::Identity, &plain)?,
                });
            }
            Body::OrderPlaced {
                order_number: p.order_number.clone(),
                merchant_id: p.merchant_id.clone(),
                items: p.items.clone(),
                amount_minor: p.amount.minor,
                currency: p
                    .amount
                    .currency
                    .as_str()
                    .as_bytes()
                    .try_into()
                    .expect("3 ASCII letters"),
                classes: p.classes.iter().copied().collect(),
            }
        }
        Event::OrderShared { party, classes } => Body::OrderShared {
            party: party.clone(),
            classes: classes.iter().copied().collect(),
        },
        Event::OrderCancelled { reason } => Body::OrderCancelled { reason: *reason },
        Event::OrderErased { scope, reason } => Body::OrderErased {
            classes: match scope {
                ErasureScope::Order => vec![],
                ErasureScope::Classes(c) => c.iter().copied().collect(),
            },
            whole: matches!(scope, ErasureScope::Order),
            reason: *reason,
        },
        Event::OrderHeld(hold) => Body::OrderHeld {
            reason: hold.reason.clone(),
            until_ms: hold.until_ms,
        },
        Event::OrderHoldReleased => Body::OrderHoldReleased,
    };
    Ok(Envelope {
        schema_version: CURRENT_VERSION,
        meta,
        body,
        sealed,
    })
}

fn wire(env: &Envelope) -> EnvelopeV3 {
    EnvelopeV3 {
        event_id: *env.meta.event_id.as_bytes(),
        order_id: *env.meta.order_id.as_bytes(),
        sequence: env.meta.sequence,
        occurred_at_ms: env.meta.occurred_at_ms,
        key_id: env.meta.key_id.0,
        prev_hash: env.meta.prev_hash,
        body: body_v3(&env.body),
        sealed: env.sealed.iter().map(sealed_v1).collect(),
    }
}

/// `EnvelopeV3`'s bytes for an envelope, written field by field in its
/// order without first copying the sealed fields into the wire types (the
/// fixtures re-encode to the same bytes; [`wire`] is the same record as a
/// value).
struct WireV3<'a>(&'a Envelope);

impl bincode::Encode for WireV3<'_> {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        e: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        let m = &self.0.meta;
        m.event_id.as_bytes().encode(e)?;
        m.order_id.as_bytes().encode(e)?;
        m.sequence.encode(e)?;
        m.occurred_at_ms.encode(e)?;
        m.key_id.0.encode(e)?;
        m.prev_hash.encode(e)?;
        body_v3(&self.0.body).encode(e)?;
        // A Vec<SealedV1>: its length, then each class and byte string.
        (self.0.sealed.len() as u64).encode(e)?;
        for s in &self.0.sealed {
            class_v1(s.class).encode(e)?;
            s.ciphertext.as_slice().encode(e)?;
        }
        Ok(())
    }
}

/// The v1 envelope of an event v1 can say.
fn wire_v1(env: &Envelope) -> EnvelopeV1 {
    let w = wire(env);
    EnvelopeV1 {
        event_id: w.event_id,
        order_id: w.order_id,
        sequence: w.sequence,
        occurred_at_ms: w.occurred_at_ms,
        key_id: w.key_id,
        prev_hash: w.prev_hash,
        body: w
            .body
            .to_v1()
            .expect("only events schema v1 can say are encoded as v1 or v2"),
        sealed: w.sealed,
    }
}

fn encode_version(env: &Envelope, version: u16, log_key: Option<KekId>) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
    if let Some(id) = log_key {
        out.extend_from_slice(&id.0);
    }
    let written = if version >= v3::VERSION {
        bincode::encode_into_std_write(WireV3(env), &mut out, bincode_config())
    } else {
        bincode::encode_into_std_write(wire_v1(env), &mut out, bincode_config())
    };
    written.expect("writing to a Vec cannot fail");
    out
}

/// Encodes an envelope in the current schema version, authenticated under
/// the current log key.
pub fn encode(env: &Envelope, keys: &LogKeys) -> Vec<u8> {
    encode_authenticated(env, CURRENT_VERSION, keys)
}

fn encode_authenticated(env: &Envelope, version: u16, keys: &LogKeys) -> Vec<u8> {
    let mut out = encode_version(env, version, Some(keys.current_id()));
    let tag = keys.tag(&out);
    out.extend_from_slice(&tag);
    out
}

/// The schema-v2 encoding, kept for fixtures and tests of the upcast.
/// Panics on an event v2 cannot say (a hold, an erasure for retention).
pub fn encode_v2(env: &Envelope, keys: &LogKeys) -> Vec<u8> {
    encode_authenticated(env, V2, keys)
}

/// The schema-v1 encoding (no log MAC), kept for fixtures and tests of the
/// upcast and of the refusal of unauthenticated records. Panics on an event
/// v1 cannot say.
pub fn encode_v1(env: &Envelope) -> Vec<u8> {
    encode_version(env, v1::VERSION, None)
}

/// Checks that a record was written by an orderlog node: a v2 record whose
/// MAC verifies under a log key this node holds (or a v1 record, where the
/// keys accept those). Checks nothing else about the record.
/// `at` is the record's (partition, offset) where the reader knows it, for
/// the bound of a retired log key.
pub fn authenticate(
    bytes: &[u8],
    keys: &LogKeys,
    at: Option<(i32, i64)>,
) -> Result<(), DecodeError> {
    let version = header(bytes)?;
    match version {
        v1::VERSION if keys.accepts_v1() => Ok(()),
        v1::VERSION => Err(Forged::Unauthenticated(version).into()),
        V2 | v3::VERSION => {
            if bytes.len() < V2_HEADER + TAG_LEN {
                return Err(Forged::Truncated.into());
            }
            let id = KekId(bytes[4..V2_HEADER].try_into().expect("8 bytes"));
            let (signed, tag) = bytes.split_at(bytes.len() - TAG_LEN);
            Ok(keys.verify(id, signed, tag, at)?)
        }
        other => Err(DecodeError::UnsupportedVersion(other)),
    }
}

/// [`authenticate`], then [`decode`]: what every reader of the log uses.
pub fn decode_authentic(
    bytes: &[u8],
    keys: &LogKeys,
    at: Option<(i32, i64)>,
) -> Result<Envelope, DecodeError> {
    authenticate(bytes, keys, at)?;
    decode(bytes)
}

/// Checks the fixed header; answers the schema version.
fn header(bytes: &[u8]) -> Result<u16, DecodeError> {
    if bytes.len() < 4 {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    if bytes[..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    Ok(u16::from_be_bytes([bytes[2], bytes[3]]))
}

fn decode_wire<W: bincode::Decode<()>>(version: u16, body: &[u8]) -> Result<W, DecodeError> {
    let (wire, n): (W, usize) =
        bincode::decode_from_slice(body, bincode_config()).map_err(|e| DecodeError::Malformed {
            version,
            reason: e.to_string(),
        })?;
    if n != body.len() {
        return Err(DecodeError::TrailingBytes(body.len() - n));
    }
    Ok(wire)
}

/// Decodes any supported schema version into the current envelope. Never
/// panics, whatever the bytes. Does not check the log MAC.
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let version = header(bytes)?;
    match version {
        v1::VERSION => Ok(upcast_v1(decode_wire(version, &bytes[4..])?)),
        V2 | v3::VERSION => {
            if bytes.len() < V2_HEADER + TAG_LEN {
                return Err(DecodeError::Malformed {
                    version,
                    reason: "shorter than the log key id and MAC".into(),
                });
            }
            let body = &bytes[V2_HEADER..bytes.len() - TAG_LEN];
            let mut env = if version == V2 {
                upcast_v1(decode_wire(version, body)?)
            } else {
                from_v3(decode_wire(version, body)?)
            };
            env.schema_version = version;
            Ok(env)
        }
        other => Err(DecodeError::UnsupportedVersion(other)),
    }
}

fn upcast_v1(w: EnvelopeV1) -> Envelope {
    from_v3(EnvelopeV3 {
        event_id: w.event_id,
        order_id: w.order_id,
        sequence: w.sequence,
        occurred_at_ms: w.occurred_at_ms,
        key_id: w.key_id,
        prev_hash: w.prev_hash,
        body: w.body.into(),
        sealed: w.sealed,
    })
}

fn from_v3(w: EnvelopeV3) -> Envelope {
    Envelope {
        schema_version: v1::VERSION,
        meta: EventMeta {
            event_id: Uuid::from_bytes(w.event_id),
            order_id: Uuid::from_bytes(w.order_id),
            sequence: w.sequence,
            occurred_at_ms: w.occurred_at_ms,
            key_id: KeyId(w.key_id),
            prev_hash: w.prev_hash,
        },
        body: body_of(w.body),
        sealed: w.sealed.into_iter().map(sealed_of).collect(),
    }
}

/// SHA-256 of an encoded record; the next event of the order names it as `prev_hash`.
pub fn record_hash(bytes: &[u8]) -> RecordHash {
    Sha256::digest(bytes).into()
}

fn invalid(e: ValidationError) -> DecodeError {
    DecodeError::Invalid(e)
}

/// The public part of an envelope as a domain event, with no personal fields.
pub fn public_event(env: &Envelope) -> Result<Event, DecodeError> {
    Ok(match &env.body {
        Body::OrderPlaced {
            order_number,
            merchant_id,
            items,
            amount_minor,
            currency,
            classes,
        } => {
            let items = items
                .iter()
                .enumerate()
                .map(|(n, i)| {
                    Ok(Item {
                        sku: Sku::parse(format_args!("items[{n}].sku"), i.sku.as_str())?,
                        name: i.name.clone(),
                        quantity: i.quantity,
                        unit_price: i.unit_price,
                        real_name: i.real_name,
                    })
                })
                .collect::<Result<Vec<_>, ValidationError>>()
                .map_err(invalid)?;
            let currency = Currency::parse("currency", std::str::from_utf8(currency).unwrap_or(""))
                .map_err(invalid)?;
            Event::OrderPlaced(OrderPlaced {
                order_number: OrderNumber::parse("order_number", order_number.as_str())
                    .map_err(invalid)?,
                merchant_id: MerchantId::parse("merchant_id", merchant_id.as_str())
                    .map_err(invalid)?,
                items,
                amount: Money {
                    minor: *amount_minor,
                    currency,
                },
                classes: classes.iter().copied().collect(),
                personal: PersonalFields::default(),
            })
        }
        Body::OrderShared { party, classes } => Event::OrderShared {
            party: match party {
                Party::Logistics(p) => {
                    Party::Logistics(ProviderId::parse("party.id", p.as_str()).map_err(invalid)?)
                }
                Party::Merchant(m) => {
                    Party::Merchant(MerchantId::parse("party.id", m.as_str()).map_err(invalid)?)
                }
            },
            classes: classes.iter().copied().collect(),
        },
        Body::OrderCancelled { reason } => Event::OrderCancelled { reason: *reason },
        Body::OrderErased {
            classes,
            whole,
            reason,
        } => Event::OrderErased {
            scope: if *whole {
                ErasureScope::Order
            } else {
                ErasureScope::Classes(classes.iter().copied().collect())
            },
            reason: *reason,
        },
        Body::OrderHeld { reason, until_ms } => Event::OrderHeld(Hold {
            reason: reason.clone(),
            until_ms: *until_ms,
        }),
        Body::OrderHoldReleased => Event::OrderHoldReleased,
    })
}

fn decode_plain<'a, T: bincode::BorrowDecode<'a, ()>>(
    class: FieldClass,
    bytes: &'a [u8],
) -> Result<T, OpenEventError> {
    bincode::borrow_decode_from_slice(bytes, bincode_config())
        .map(|(v, _)| v)
        .map_err(|e| OpenEventError::Malformed {
            class,
            reason: e.to_string(),
        })
}

/// Opens one sealed class into `out`. The fields are taken as they were
/// sealed, not validated again: the AES-SIV tag proves the bytes are what
/// an orderlog node sealed under this order's key, and a node seals only
/// parsed values. Checking them again would cost a third of opening, and
/// would make fields sealed under an earlier, looser rule unreadable.
fn open_class(
    env: &Envelope,
    key: &OrderKey,
    sealed: &Sealed,
    out: &mut PersonalFields,
) -> Result<(), OpenEventError> {
    let class = sealed.class;
    let plain = crypto::open(key, &env.meta.seal_context(), class, &sealed.ciphertext)?;
    match class {
        FieldClass::Shipping => {
            let s: v1::ShippingV1 = decode_plain(class, &plain)?;
            out.shipping = Some(Personal::new(ShippingInfo {
                name: ConsigneeName::from_sealed(s.name),
                address: Address {
                    province: s.province.to_owned(),
                    city: s.city.to_owned(),
                    district: s.district.to_owned(),
                    street: s.street.to_owned(),
                    postal_code: s.postal_code.to_owned(),
                },
                mobile: Mobile::from_sealed(s.mobile),
            }));
        }
        FieldClass::Contact => {
            let c: v1::ContactV1 = decode_plain(class, &plain)?;
            out.contact = Some(Personal::new(ContactInfo {
                landline: c.landline.map(Landline::from_sealed),
                email: c.email.map(Email::from_sealed),
            }));
        }
        FieldClass::Identity => {
            let i: v1::IdentityV1 = decode_plain(class, &plain)?;
            out.identity = Some(Personal::new(IdNumber::from_sealed(i.id_number)));
        }
    }
    Ok(())
}

/// The domain event of an envelope, with every personal class that `key` can
/// open. A class whose subkey is shredded (or with no key at all) stays
/// `None`; a ciphertext that fails authentication is an error, never ignored.
pub fn open_event(env: &Envelope, key: Option<&OrderKey>) -> Result<Event, OpenEventError> {
    let mut event = public_event(env)?;
    match &mut event {
        Event::OrderPlaced(placed) => {
            if let Some(key) = key {
                for sealed in &env.sealed {
                    if key.subkey(sealed.class).is_some() {
                        open_class(env, key, sealed, &mut placed.personal)?;
                    }
                }
            }
        }
        _ if !env.sealed.is_empty() => return Err(OpenEventError::Unexpected(env.kind())),
        _ => {}
    }
    Ok(event)
}

/// One log key for every unit test of the crate (records written with one
/// KEK do not authenticate under another).
#[cfg(test)]
pub(crate) fn test_keys() -> LogKeys {
    static KEK: std::sync::OnceLock<crate::crypto::Kek> = std::sync::OnceLock::new();
    LogKeys::from_ring(&crate::crypto::KekRing::new(
        KEK.get_or_init(crate::crypto::Kek::generate).clone(),
    ))
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
