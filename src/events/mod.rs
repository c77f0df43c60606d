//! Events as stored: the versioned envelope, its bincode codec with upcasting,
//! and the per-order hash chain. Personal fields are sealed here, at the codec
//! boundary, and nowhere else.
//!
//! The Kafka record key is the order id (16 bytes); record headers carry
//! nothing personal.

pub mod chain;
pub mod codec;
pub mod v1;
pub mod v3;

pub use codec::{
    Body, CURRENT_VERSION, DecodeError, Envelope, EventMeta, OpenEventError, RecordHash, Sealed,
    authenticate, decode, decode_authentic, encode, encode_v1, encode_v2, open_event, public_event,
    record_hash, seal_event,
};
