//! What the views store, and the pure function that folds one event into them.
//!
//! The stored types reuse the frozen v1 wire types for classes, parties and
//! items, so a view row's encoding is as stable as the log's. Personal fields
//! are kept exactly as sealed in the `OrderPlaced` event (under the order's
//! key) and are opened on read; erasure drops them from the row.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::v1::{BodyV1, ClassV1, ItemV1, PartyV1, ReasonV1, SealedV1};
use crate::events::{self, Envelope};

/// Status as downstream parties see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ViewStatus {
    Active,
    Cancelled,
    Erased,
}

impl ViewStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ViewStatus::Active => "active",
            ViewStatus::Cancelled => "cancelled",
            ViewStatus::Erased => "erased",
        }
    }
}

/// One share as the views remember it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareRow {
    pub party: PartyV1,
    pub classes: Vec<ClassV1>,
    pub at_ms: i64,
}

/// An order as the views know it (row of `view_orders`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectedOrder {
    pub order_id: [u8; 16],
    pub partition: u32,
    pub version: u64,
    pub last_hash: [u8; 32],
    pub order_number: String,
    pub merchant_id: String,
    pub items: Vec<ItemV1>,
    pub amount_minor: u64,
    pub currency: [u8; 3],
    pub classes: Vec<ClassV1>,
    pub status: ViewStatus,
    pub cancel_reason: Option<ReasonV1>,
    pub erased: Vec<ClassV1>,
    pub shares: Vec<ShareRow>,
    pub placed_at_ms: i64,
    pub updated_at_ms: i64,
    pub key_id: [u8; 16],
    /// Event id and sequence the sealed fields are bound to.
    pub sealed_event_id: [u8; 16],
    pub sealed_sequence: u64,
    /// Sealed personal fields; purged on erasure.
    pub sealed: Vec<SealedV1>,
}

impl ProjectedOrder {
    pub fn id(&self) -> Uuid {
        Uuid::from_bytes(self.order_id)
    }

    /// Classes shared with `party` and not erased.
    pub fn classes_for(&self, party: &PartyV1) -> Vec<ClassV1> {
        let mut out: Vec<ClassV1> = Vec::new();
        for s in self.shares.iter().filter(|s| &s.party == party) {
            for c in &s.classes {
                if !out.contains(c) {
                    out.push(*c);
                }
            }
        }
        out.sort_by_key(|c| *c as u8);
        out
    }

    pub fn shared_with(&self, party: &PartyV1) -> bool {
        self.shares.iter().any(|s| &s.party == party)
    }

    /// The sealed `OrderPlaced` envelope rebuilt from the row, for opening.
    pub fn sealed_envelope(&self) -> Envelope {
        Envelope {
            schema_version: events::CURRENT_VERSION,
            meta: events::EventMeta {
                event_id: Uuid::from_bytes(self.sealed_event_id),
                order_id: self.id(),
                sequence: self.sealed_sequence,
                occurred_at_ms: self.placed_at_ms,
                key_id: crate::crypto::KeyId(self.key_id),
                prev_hash: [0; 32],
            },
            body: BodyV1::OrderPlaced {
                order_number: self.order_number.clone(),
                merchant_id: self.merchant_id.clone(),
                items: self.items.clone(),
                amount_minor: self.amount_minor,
                currency: self.currency,
                classes: self.classes.clone(),
            },
            sealed: self.sealed.clone(),
        }
    }
}

/// What changed, as a feed tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    Placed,
    Shared,
    Cancelled,
    Erased,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Placed => "placed",
            ChangeKind::Shared => "shared",
            ChangeKind::Cancelled => "cancelled",
            ChangeKind::Erased => "erased",
        }
    }
}

/// One entry of a shipping or merchant change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEntry {
    pub order_id: [u8; 16],
    pub change: ChangeKind,
    /// Classes the change is about (shared or erased); empty otherwise.
    pub classes: Vec<ClassV1>,
    /// The order's version after the change.
    pub version: u64,
    pub at_ms: i64,
}

/// Whose feed an entry goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedTarget {
    Shipping(String),
    Merchant(String),
}

/// Why a record cannot be projected (it goes to the dead-letter topic).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectError {
    #[error("undecodable record: {0}")]
    Decode(String),
    #[error("event {got} of order {order} arrived when {expected} was expected")]
    OutOfSequence {
        order: Uuid,
        expected: u64,
        got: u64,
    },
    #[error("event {sequence} of order {order} does not chain to the previous event's hash")]
    BrokenChain { order: Uuid, sequence: u64 },
    #[error("record key is not the order id of its envelope")]
    KeyMismatch,
    /// Not written by an orderlog node (the message says why).
    #[error("{0}")]
    Forged(String),
    #[error("a record of order {0} outside the partition its id maps to")]
    WrongPartition(Uuid),
}

/// The result of folding one event: the order's new row and the feed entries.
#[derive(Debug, Clone)]
pub struct Projection {
    pub order: ProjectedOrder,
    pub feeds: Vec<(FeedTarget, FeedEntry)>,
}

fn party_id(p: &PartyV1) -> FeedTarget {
    match p {
        PartyV1::Logistics(id) => FeedTarget::Shipping(id.clone()),
        PartyV1::Merchant(id) => FeedTarget::Merchant(id.clone()),
    }
}

/// Folds one stored event into the order's row. Pure: the reference fold,
/// record by record, that the projector's batched path must agree with.
pub fn project(
    current: Option<&ProjectedOrder>,
    bytes: &[u8],
    record_key: Option<&[u8]>,
    partition: u32,
) -> Result<Projection, ProjectError> {
    let env = events::decode(bytes).map_err(|e| ProjectError::Decode(e.to_string()))?;
    events::public_event(&env).map_err(|e| ProjectError::Decode(e.to_string()))?;
    check(current, &env, record_key)?;
    let hash = events::record_hash(bytes);
    let mut feeds = Vec::new();
    let order = match current {
        None => apply(None, &env, hash, partition, &mut feeds)
            .expect("a checked event without an order is its placement"),
        Some(cur) => {
            let mut o = cur.clone();
            apply(Some(&mut o), &env, hash, partition, &mut feeds);
            o
        }
    };
    Ok(Projection { order, feeds })
}

/// Whether `env` (keyed `record_key`) is the next event of `current`: the
/// order's id as key, the next sequence, the previous record's hash, and a
/// placement first and only first. Pure.
pub fn check(
    current: Option<&ProjectedOrder>,
    env: &Envelope,
    record_key: Option<&[u8]>,
) -> Result<(), ProjectError> {
    let order_id = env.meta.order_id;
    if record_key.is_some_and(|k| k != order_id.as_bytes()) {
        return Err(ProjectError::KeyMismatch);
    }
    let expected = current.map_or(1, |c| c.version + 1);
    if env.meta.sequence != expected {
        return Err(ProjectError::OutOfSequence {
            order: order_id,
            expected,
            got: env.meta.sequence,
        });
    }
    let prev = current.map_or([0; 32], |c| c.last_hash);
    if env.meta.prev_hash != prev {
        return Err(ProjectError::BrokenChain {
            order: order_id,
            sequence: env.meta.sequence,
        });
    }
    if matches!(env.body, BodyV1::OrderPlaced { .. }) != current.is_none() {
        // Sequence 1 must be OrderPlaced and nothing else.
        return Err(ProjectError::OutOfSequence {
            order: order_id,
            expected,
            got: env.meta.sequence,
        });
    }
    Ok(())
}

/// Applies an event [`check`] accepted (`hash`: its record's hash) to the
/// order's row in place, adding the feed entries to `feeds`. A placement
/// (`current` is `None`) returns the new row.
pub fn apply(
    current: Option<&mut ProjectedOrder>,
    env: &Envelope,
    hash: events::RecordHash,
    partition: u32,
    feeds: &mut Vec<(FeedTarget, FeedEntry)>,
) -> Option<ProjectedOrder> {
    let order_id = env.meta.order_id;
    let at = env.meta.occurred_at_ms;
    let entry = |change, classes: Vec<ClassV1>| FeedEntry {
        order_id: *order_id.as_bytes(),
        change,
        classes,
        version: env.meta.sequence,
        at_ms: at,
    };
    let mut placed = None;
    let o = match (&env.body, current) {
        (
            BodyV1::OrderPlaced {
                order_number,
                merchant_id,
                items,
                amount_minor,
                currency,
                classes,
            },
            None,
        ) => {
            feeds.push((
                FeedTarget::Merchant(merchant_id.clone()),
                entry(ChangeKind::Placed, vec![]),
            ));
            placed.insert(ProjectedOrder {
                order_id: *order_id.as_bytes(),
                partition,
                version: 0,
                last_hash: [0; 32],
                order_number: order_number.clone(),
                merchant_id: merchant_id.clone(),
                items: items.clone(),
                amount_minor: *amount_minor,
                currency: *currency,
                classes: classes.clone(),
                status: ViewStatus::Active,
                cancel_reason: None,
                erased: vec![],
                shares: vec![],
                placed_at_ms: at,
                updated_at_ms: at,
                key_id: env.meta.key_id.0,
                sealed_event_id: *env.meta.event_id.as_bytes(),
                sealed_sequence: env.meta.sequence,
                sealed: env.sealed.clone(),
            })
        }
        // [`check`] refuses these.
        (_, None) | (BodyV1::OrderPlaced { .. }, Some(_)) => return None,
        (BodyV1::OrderShared { party, classes }, Some(o)) => {
            o.shares.push(ShareRow {
                party: party.clone(),
                classes: classes.clone(),
                at_ms: at,
            });
            feeds.push((party_id(party), entry(ChangeKind::Shared, classes.clone())));
            o
        }
        (BodyV1::OrderCancelled { reason }, Some(o)) => {
            if o.status == ViewStatus::Active {
                o.status = ViewStatus::Cancelled;
            }
            o.cancel_reason = Some(*reason);
            for target in parties(o) {
                feeds.push((target, entry(ChangeKind::Cancelled, vec![])));
            }
            o
        }
        (BodyV1::OrderErased { classes, whole }, Some(o)) => {
            let gone: Vec<ClassV1> = if *whole {
                vec![ClassV1::Shipping, ClassV1::Contact, ClassV1::Identity]
            } else {
                classes.clone()
            };
            for c in &gone {
                if !o.erased.contains(c) {
                    o.erased.push(*c);
                }
            }
            o.sealed.retain(|s| !gone.contains(&s.class));
            if *whole {
                o.status = ViewStatus::Erased;
                o.sealed.clear();
            }
            for target in parties(o) {
                feeds.push((target, entry(ChangeKind::Erased, gone.clone())));
            }
            o
        }
    };
    o.version = env.meta.sequence;
    o.last_hash = hash;
    o.updated_at_ms = at;
    placed
}

/// The merchant and every logistics provider the order was shared with.
fn parties(o: &ProjectedOrder) -> Vec<FeedTarget> {
    let mut out = vec![FeedTarget::Merchant(o.merchant_id.clone())];
    for s in &o.shares {
        if let PartyV1::Logistics(p) = &s.party {
            let t = FeedTarget::Shipping(p.clone());
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

/// Key of a feed entry: `len(id) | id | partition (u32 BE) | offset (u64 BE)`.
pub fn feed_key(id: &str, partition: u32, offset: u64) -> Vec<u8> {
    let mut k = feed_prefix(id);
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// Prefix of every feed key of one party.
pub fn feed_prefix(id: &str) -> Vec<u8> {
    let b = id.as_bytes();
    let mut k = Vec::with_capacity(1 + b.len() + 12);
    k.push(b.len() as u8);
    k.extend_from_slice(b);
    k
}

/// Partition and offset of a feed key with the given prefix.
pub fn feed_position(prefix_len: usize, key: &[u8]) -> Option<(u32, u64)> {
    let rest = key.get(prefix_len..)?;
    if rest.len() != 12 {
        return None;
    }
    Some((
        u32::from_be_bytes(rest[..4].try_into().ok()?),
        u64::from_be_bytes(rest[4..].try_into().ok()?),
    ))
}
