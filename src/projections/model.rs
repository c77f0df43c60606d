//! What the views store, and the pure function that folds one event into them.
//!
//! The stored rows hold domain types (classes, parties, items, reasons) whose
//! bincode form is the one the rows were first written in: enums by variant
//! index, ids as their text (a test pins it). Personal fields
//! are kept exactly as sealed in the `OrderPlaced` event (under the order's
//! key) and are opened on read; erasure drops them from the row.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::validation::{Item, MerchantId, OrderNumber};
use crate::domain::{CancelReason, FieldClass, Party};
use crate::events::Body;
use crate::events::chain::{self, Link};
use crate::events::{self, Envelope, Sealed};

/// Status as downstream parties see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum ViewStatus {
    Active,
    Cancelled,
    Erased,
}

impl ViewStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One share as the views remember it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareRow {
    #[serde(with = "crate::store::schema::stored_party")]
    pub party: Party,
    pub classes: Vec<FieldClass>,
    pub at_ms: i64,
}

/// An order as the views know it (row of `view_orders`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectedOrder {
    pub order_id: [u8; 16],
    pub partition: u32,
    pub version: u64,
    pub last_hash: [u8; 32],
    pub order_number: OrderNumber,
    pub merchant_id: MerchantId,
    pub items: Vec<Item>,
    pub amount_minor: u64,
    pub currency: [u8; 3],
    pub classes: Vec<FieldClass>,
    pub status: ViewStatus,
    pub cancel_reason: Option<CancelReason>,
    pub erased: Vec<FieldClass>,
    pub shares: Vec<ShareRow>,
    pub placed_at_ms: i64,
    pub updated_at_ms: i64,
    pub key_id: [u8; 16],
    /// Event id and sequence the sealed fields are bound to.
    pub sealed_event_id: [u8; 16],
    pub sealed_sequence: u64,
    /// Sealed personal fields; purged on erasure.
    pub sealed: Vec<Sealed>,
}

impl ProjectedOrder {
    pub fn id(&self) -> Uuid {
        Uuid::from_bytes(self.order_id)
    }

    /// Classes shared with `party` and not erased.
    pub fn classes_for(&self, party: &Party) -> Vec<FieldClass> {
        let mut out: Vec<FieldClass> = Vec::new();
        for s in self.shares.iter().filter(|s| &s.party == party) {
            for c in &s.classes {
                if !out.contains(c) && !self.erased.contains(c) {
                    out.push(*c);
                }
            }
        }
        out.sort();
        out
    }

    pub fn shared_with(&self, party: &Party) -> bool {
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
            body: Body::OrderPlaced {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum ChangeKind {
    Placed,
    Shared,
    Cancelled,
    Erased,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One entry of a shipping or merchant change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEntry {
    pub order_id: [u8; 16],
    pub change: ChangeKind,
    /// Classes the change is about (shared or erased); empty otherwise.
    pub classes: Vec<FieldClass>,
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

fn party_id(p: &Party) -> FeedTarget {
    match p {
        Party::Logistics(id) => FeedTarget::Shipping(id.as_str().to_owned()),
        Party::Merchant(id) => FeedTarget::Merchant(id.as_str().to_owned()),
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
    let head = current.map_or(chain::Head::EMPTY, |c| chain::Head {
        sequence: c.version,
        hash: c.last_hash,
    });
    let placement = matches!(env.body, Body::OrderPlaced { .. });
    match chain::link(head, env.meta.sequence, &env.meta.prev_hash, placement) {
        Link::Next => Ok(()),
        Link::WrongHash => Err(ProjectError::BrokenChain {
            order: order_id,
            sequence: env.meta.sequence,
        }),
        // Sequence 1 must be OrderPlaced and nothing else.
        Link::Repeat | Link::Gap { .. } | Link::Misplaced => Err(ProjectError::OutOfSequence {
            order: order_id,
            expected: head.sequence + 1,
            got: env.meta.sequence,
        }),
    }
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
    let entry = |change, classes: Vec<FieldClass>| FeedEntry {
        order_id: *order_id.as_bytes(),
        change,
        classes,
        version: env.meta.sequence,
        at_ms: at,
    };
    let mut placed = None;
    let o = match (&env.body, current) {
        (
            Body::OrderPlaced {
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
                FeedTarget::Merchant(merchant_id.as_str().to_owned()),
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
        (_, None) | (Body::OrderPlaced { .. }, Some(_)) => return None,
        (Body::OrderShared { party, classes }, Some(o)) => {
            o.shares.push(ShareRow {
                party: party.clone(),
                classes: classes.clone(),
                at_ms: at,
            });
            feeds.push((party_id(party), entry(ChangeKind::Shared, classes.clone())));
            o
        }
        (Body::OrderCancelled { reason }, Some(o)) => {
            if o.status == ViewStatus::Active {
                o.status = ViewStatus::Cancelled;
            }
            o.cancel_reason = Some(*reason);
            for target in parties(o) {
                feeds.push((target, entry(ChangeKind::Cancelled, vec![])));
            }
            o
        }
        // A legal hold changes no view (the order's version and chain do).
        (Body::OrderHeld { .. } | Body::OrderHoldReleased, Some(o)) => o,
        (Body::OrderErased { classes, whole, .. }, Some(o)) => {
            let gone: Vec<FieldClass> = if *whole {
                FieldClass::ALL.to_vec()
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
    let mut out = vec![FeedTarget::Merchant(o.merchant_id.as_str().to_owned())];
    for s in &o.shares {
        if let Party::Logistics(p) = &s.party {
            let t = FeedTarget::Shipping(p.as_str().to_owned());
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::validation::ProviderId;
    use crate::domain::{Command, ErasureScope, State};
    use crate::domain::{decide, fixtures};
    use crate::events::EventMeta;

    /// One order's records: placed, shared with sf-express, cancelled, erased.
    fn records() -> Vec<Vec<u8>> {
        let key = crate::crypto::OrderKey::generate();
        let order_id = Uuid::now_v7();
        let commands = [
            Command::PlaceOrder(fixtures::new_order(7, true)),
            Command::ShareOrder {
                party: Party::Logistics(ProviderId::parse("p", "sf-express").unwrap()),
                classes: [FieldClass::Shipping].into(),
            },
            Command::CancelOrder {
                reason: CancelReason::OutOfStock,
            },
            Command::EraseOrder {
                scope: ErasureScope::Order,
                reason: crate::domain::ErasureReason::Request,
            },
        ];
        let (mut state, mut prev, mut out) = (State::default(), [0u8; 32], Vec::new());
        for cmd in commands {
            for e in decide(&state, cmd).unwrap() {
                let meta = EventMeta {
                    event_id: Uuid::now_v7(),
                    order_id,
                    sequence: state.version + 1,
                    occurred_at_ms: 1_000 * (state.version as i64 + 1),
                    key_id: key.id(),
                    prev_hash: prev,
                };
                let env = events::seal_event(&e, meta, Some(&key)).unwrap();
                let bytes = events::encode(&env, &events::codec::test_keys());
                prev = events::record_hash(&bytes);
                state = crate::domain::apply(state, &e);
                out.push(bytes);
            }
        }
        out
    }

    fn fold(records: &[Vec<u8>]) -> (Option<ProjectedOrder>, Vec<Vec<(FeedTarget, FeedEntry)>>) {
        let (mut order, mut feeds) = (None, Vec::new());
        for r in records {
            let p = project(order.as_ref(), r, None, 3).unwrap();
            feeds.push(p.feeds);
            order = Some(p.order);
        }
        (order, feeds)
    }

    /// A view row as rows were first written: the same fields with the v1
    /// wire types. The domain types must encode to exactly these bytes, or
    /// rows already on disk stop reading.
    #[derive(serde::Serialize)]
    struct RowAsFirstWritten {
        order_id: [u8; 16],
        partition: u32,
        version: u64,
        last_hash: [u8; 32],
        order_number: String,
        merchant_id: String,
        items: Vec<crate::events::v1::ItemV1>,
        amount_minor: u64,
        currency: [u8; 3],
        classes: Vec<crate::events::v1::ClassV1>,
        status: ViewStatus,
        cancel_reason: Option<crate::events::v1::ReasonV1>,
        erased: Vec<crate::events::v1::ClassV1>,
        shares: Vec<(
            crate::events::v1::PartyV1,
            Vec<crate::events::v1::ClassV1>,
            i64,
        )>,
        placed_at_ms: i64,
        updated_at_ms: i64,
        key_id: [u8; 16],
        sealed_event_id: [u8; 16],
        sealed_sequence: u64,
        sealed: Vec<crate::events::v1::SealedV1>,
    }

    #[test]
    fn a_view_row_keeps_the_bytes_it_was_first_written_in() {
        use crate::events::v1::{ClassV1, ItemV1, PartyV1, ReasonV1, SealedV1};
        let old = RowAsFirstWritten {
            order_id: [7; 16],
            partition: 2,
            version: 5,
            last_hash: [9; 32],
            order_number: "SO-1".into(),
            merchant_id: "m-1".into(),
            items: vec![ItemV1 {
                sku: "sku-1".into(),
                name: "tea".into(),
                quantity: 3,
                unit_price: 1250,
                real_name: true,
            }],
            amount_minor: 3750,
            currency: *b"CNY",
            classes: vec![ClassV1::Shipping, ClassV1::Contact, ClassV1::Identity],
            status: ViewStatus::Cancelled,
            cancel_reason: Some(ReasonV1::FraudSuspected),
            erased: vec![ClassV1::Contact],
            shares: vec![
                (
                    PartyV1::Logistics("sf-express".into()),
                    vec![ClassV1::Shipping],
                    11,
                ),
                (PartyV1::Merchant("m-1".into()), vec![ClassV1::Identity], 12),
            ],
            placed_at_ms: 10,
            updated_at_ms: 13,
            key_id: [4; 16],
            sealed_event_id: [5; 16],
            sealed_sequence: 1,
            sealed: vec![SealedV1 {
                class: ClassV1::Identity,
                ciphertext: vec![1, 2, 3],
            }],
        };
        let new = ProjectedOrder {
            order_id: [7; 16],
            partition: 2,
            version: 5,
            last_hash: [9; 32],
            order_number: OrderNumber::parse("n", "SO-1").unwrap(),
            merchant_id: MerchantId::parse("m", "m-1").unwrap(),
            items: vec![Item::parse("i", "sku-1", "tea", 3, 1250, true).unwrap()],
            amount_minor: 3750,
            currency: *b"CNY",
            classes: FieldClass::ALL.to_vec(),
            status: ViewStatus::Cancelled,
            cancel_reason: Some(CancelReason::FraudSuspected),
            erased: vec![FieldClass::Contact],
            shares: vec![
                ShareRow {
                    party: Party::Logistics(ProviderId::parse("p", "sf-express").unwrap()),
                    classes: vec![FieldClass::Shipping],
                    at_ms: 11,
                },
                ShareRow {
                    party: Party::Merchant(MerchantId::parse("p", "m-1").unwrap()),
                    classes: vec![FieldClass::Identity],
                    at_ms: 12,
                },
            ],
            placed_at_ms: 10,
            updated_at_ms: 13,
            key_id: [4; 16],
            sealed_event_id: [5; 16],
            sealed_sequence: 1,
            sealed: vec![Sealed {
                class: FieldClass::Identity,
                ciphertext: vec![1, 2, 3],
            }],
        };
        let old_bytes = crate::store::encode_value(&old);
        assert_eq!(crate::store::encode_value(&new), old_bytes);
        let read: ProjectedOrder = crate::store::decode_value("view_orders", &old_bytes).unwrap();
        assert_eq!(read, new);
        let feed = FeedEntry {
            order_id: [7; 16],
            change: ChangeKind::Erased,
            classes: vec![FieldClass::Contact, FieldClass::Identity],
            version: 5,
            at_ms: 13,
        };
        let old_feed = (
            [7u8; 16],
            ChangeKind::Erased,
            vec![ClassV1::Contact, ClassV1::Identity],
            5u64,
            13i64,
        );
        assert_eq!(
            crate::store::encode_value(&feed),
            crate::store::encode_value(&old_feed)
        );
    }

    #[test]
    fn a_placed_order_is_active_with_its_sealed_fields_and_tells_its_merchant() {
        let r = records();
        let (order, feeds) = fold(&r[..1]);
        let o = order.unwrap();
        assert_eq!(
            (o.version, o.status, o.partition),
            (1, ViewStatus::Active, 3)
        );
        assert_eq!(o.last_hash, events::record_hash(&r[0]));
        assert_eq!(o.sealed.len(), 3);
        assert_eq!(feeds[0].len(), 1);
        assert_eq!(
            feeds[0][0].0,
            FeedTarget::Merchant(o.merchant_id.to_string())
        );
        assert_eq!(feeds[0][0].1.change, ChangeKind::Placed);
    }

    #[test]
    fn shares_cancellation_and_erasure_change_the_row_and_reach_every_party() {
        let r = records();
        let (order, feeds) = fold(&r);
        let o = order.unwrap();
        assert_eq!((o.version, o.status), (4, ViewStatus::Erased));
        assert!(o.sealed.is_empty(), "erasure drops every sealed field");
        assert_eq!(o.erased.len(), 3);
        assert_eq!(o.cancel_reason, Some(CancelReason::OutOfStock));
        let sf = Party::Logistics(ProviderId::parse("p", "sf-express").unwrap());
        assert!(o.shared_with(&sf));
        // Shared shipping, then erased: nothing left to read for the provider.
        assert_eq!(o.shares[0].classes, vec![FieldClass::Shipping]);
        assert!(o.classes_for(&sf).is_empty());
        assert_eq!(feeds[1][0].0, FeedTarget::Shipping("sf-express".into()));
        // The cancellation and the erasure go to the merchant and the provider.
        for f in &feeds[2..] {
            let targets: Vec<&FeedTarget> = f.iter().map(|(t, _)| t).collect();
            assert_eq!(targets.len(), 2, "{targets:?}");
        }
        assert_eq!(feeds[3][0].1.change, ChangeKind::Erased);
        assert_eq!(feeds[3][0].1.classes.len(), 3);
    }

    #[test]
    fn check_refuses_gaps_replays_broken_chains_and_foreign_keys() {
        let r = records();
        let (placed, _) = fold(&r[..1]);
        let placed = placed.unwrap();
        let env = |i: usize| events::decode(&r[i]).unwrap();
        // A later event before the placement, and the placement again.
        assert!(matches!(
            check(None, &env(1), None),
            Err(ProjectError::OutOfSequence {
                expected: 1,
                got: 2,
                ..
            })
        ));
        assert!(matches!(
            check(Some(&placed), &env(0), None),
            Err(ProjectError::OutOfSequence {
                expected: 2,
                got: 1,
                ..
            })
        ));
        // A gap.
        assert!(matches!(
            check(Some(&placed), &env(2), None),
            Err(ProjectError::OutOfSequence {
                expected: 2,
                got: 3,
                ..
            })
        ));
        // The right sequence with another hash before it.
        let mut forked = placed.clone();
        forked.last_hash = [9; 32];
        assert!(matches!(
            check(Some(&forked), &env(1), None),
            Err(ProjectError::BrokenChain { sequence: 2, .. })
        ));
        // A record keyed to another order.
        assert_eq!(
            check(Some(&placed), &env(1), Some(Uuid::now_v7().as_bytes())),
            Err(ProjectError::KeyMismatch)
        );
        assert_eq!(
            check(Some(&placed), &env(1), Some(placed.order_id.as_slice())),
            Ok(())
        );
    }

    #[test]
    fn apply_in_place_equals_the_reference_projection() {
        let r = records();
        let (reference, _) = fold(&r);
        let mut order: Option<ProjectedOrder> = None;
        let mut feeds = Vec::new();
        for bytes in &r {
            let env = events::decode(bytes).unwrap();
            check(order.as_ref(), &env, None).unwrap();
            if let Some(new) = apply(
                order.as_mut(),
                &env,
                events::record_hash(bytes),
                3,
                &mut feeds,
            ) {
                order = Some(new);
            }
        }
        assert_eq!(order, reference);
        assert_eq!(feeds.len(), 1 + 1 + 2 + 2);
    }
}
