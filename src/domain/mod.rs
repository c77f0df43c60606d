//! The order domain: validated field types, the personal-data wrapper, and the
//! order aggregate's pure `decide`/`apply`.
//!
//! No I/O lives here (no Kafka, no RocksDB, no clock, no randomness), and no
//! technical error variants: a [`DomainError`] is a business refusal.

pub mod fixtures;
pub mod order;
pub mod personal;
pub mod validation;

#[cfg(test)]
mod order_tests;

pub use order::{
    CancelReason, Command, ContactInfo, DomainError, ErasureReason, ErasureScope, Event,
    FieldClass, Hold, NewOrder, OrderFacts, OrderPlaced, Party, PersonalData, PersonalFields,
    ShippingInfo, State, Status, apply, decide, decide_at, fold,
};
pub use personal::Personal;
pub use validation::ValidationError;
