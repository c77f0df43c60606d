//! Schema version 3 of the stored event envelope: v1's envelope with a body
//! that also says why an erasure happened and carries legal holds. Framed as
//! v2 (log key id, envelope, HMAC tag).
//!
//! Frozen like v1: changing a field, its type or its order, or the order of
//! enum variants, changes the bytes; `schemas/fixtures/v3/` catches that.
//! Everything not redefined here (items, parties, classes, cancellation
//! reasons, sealed fields and their plaintexts) is v1's, unchanged.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use super::v1::{BodyV1, ClassV1, ItemV1, PartyV1, ReasonV1, SealedV1};

pub const VERSION: u16 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct EnvelopeV3 {
    pub event_id: [u8; 16],
    pub order_id: [u8; 16],
    pub sequence: u64,
    pub occurred_at_ms: i64,
    pub key_id: [u8; 16],
    pub prev_hash: [u8; 32],
    pub body: BodyV3,
    pub sealed: Vec<SealedV1>,
}

/// v1's four bodies (the erasure with its reason), then the legal hold's two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub enum BodyV3 {
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
        reason: ErasureReasonV3,
    },
    OrderHeld {
        /// Public text, checked to hold no personal data.
        reason: String,
        /// When the hold ends by itself (Unix ms); none: until released.
        until_ms: Option<i64>,
    },
    OrderHoldReleased,
}

/// Why an erasure happened, by variant index: 0 request, 1 retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub enum ErasureReasonV3 {
    Request,
    Retention,
}

/// A v1 (or v2) body as v3 reads it: an erasure then was always a request.
impl From<BodyV1> for BodyV3 {
    fn from(b: BodyV1) -> Self {
        match b {
            BodyV1::OrderPlaced {
                order_number,
                merchant_id,
                items,
                amount_minor,
                currency,
                classes,
            } => BodyV3::OrderPlaced {
                order_number,
                merchant_id,
                items,
                amount_minor,
                currency,
                classes,
            },
            BodyV1::OrderShared { party, classes } => BodyV3::OrderShared { party, classes },
            BodyV1::OrderCancelled { reason } => BodyV3::OrderCancelled { reason },
            BodyV1::OrderErased { classes, whole } => BodyV3::OrderErased {
                classes,
                whole,
                reason: ErasureReasonV3::Request,
            },
        }
    }
}

impl BodyV3 {
    /// The v1 body, for the bodies v1 can say (fixtures and tests of older
    /// versions); `None` for a hold, or an erasure for retention.
    pub fn to_v1(&self) -> Option<BodyV1> {
        Some(match self.clone() {
            BodyV3::OrderPlaced {
                order_number,
                merchant_id,
                items,
                amount_minor,
                currency,
                classes,
            } => BodyV1::OrderPlaced {
                order_number,
                merchant_id,
                items,
                amount_minor,
                currency,
                classes,
            },
            BodyV3::OrderShared { party, classes } => BodyV1::OrderShared { party, classes },
            BodyV3::OrderCancelled { reason } => BodyV1::OrderCancelled { reason },
            BodyV3::OrderErased {
                classes,
                whole,
                reason: ErasureReasonV3::Request,
            } => BodyV1::OrderErased { classes, whole },
            BodyV3::OrderErased { .. } | BodyV3::OrderHeld { .. } | BodyV3::OrderHoldReleased => {
                return None;
            }
        })
    }
}
