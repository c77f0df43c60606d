//! What the write side remembers per order, rebuilt from the log at start.

use std::collections::HashMap;

use uuid::Uuid;

use crate::crypto::KeyId;
use crate::domain::{State, apply};
use crate::events::{self, Envelope, RecordHash};

/// One order as the writer knows it: enough to decide the next command and
/// chain the next event, plus the sealed `OrderPlaced` envelope for reads.
#[derive(Debug, Clone, Default)]
pub struct OrderRecord {
    pub state: State,
    pub last_hash: RecordHash,
    pub key_id: Option<KeyId>,
    /// The sealed `OrderPlaced` envelope (personal fields still encrypted).
    pub placed: Option<Envelope>,
    pub placed_at_ms: i64,
    pub updated_at_ms: i64,
    /// Offset of the order's latest event.
    pub last_offset: i64,
}

impl OrderRecord {
    /// Folds one stored record into the order. Returns false (and changes
    /// nothing) when the record is not the order's next event.
    pub fn absorb(&mut self, env: &Envelope, bytes: &[u8], offset: i64) -> bool {
        let Ok(event) = events::public_event(env) else {
            return false;
        };
        if env.meta.sequence != self.state.version + 1 || env.meta.prev_hash != self.last_hash {
            return false;
        }
        if matches!(event, crate::domain::Event::OrderPlaced(_)) {
            self.placed = Some(env.clone());
            self.key_id = Some(env.meta.key_id);
            self.placed_at_ms = env.meta.occurred_at_ms;
        }
        self.state = apply(std::mem::take(&mut self.state), &event);
        self.last_hash = events::record_hash(bytes);
        self.updated_at_ms = env.meta.occurred_at_ms;
        self.last_offset = offset;
        true
    }
}

/// The outcome of an idempotent request, kept so a retry gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentOutcome {
    pub request_digest: [u8; 32],
    pub order_id: Uuid,
    pub version: u64,
}

/// Orders and idempotency records of one partition.
#[derive(Debug, Default)]
pub struct PartitionState {
    pub orders: HashMap<Uuid, OrderRecord>,
    pub idempotency: HashMap<[u8; 32], IdempotentOutcome>,
    /// Records that could not be decoded or did not chain (left to audit).
    pub skipped: u64,
    /// Next offset to read.
    pub next_offset: i64,
}
