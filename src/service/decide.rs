//! Deciding a batch: the pure phase of a writer's group commit. Each command
//! is checked against its order's state (the stored state, or the state the
//! batch's earlier commands left), decided by the domain, and its events are
//! sealed and chained. Nothing here does I/O; what Kafka and RocksDB do with
//! the result is [`super::commit`]'s.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::state::{Absorbed, OrderRecord};
use super::{Idempotency, Job, Outcome, ServiceError};
use crate::crypto::{KeyId, LogKeys, OrderKey};
use crate::domain::{self, Command};
use crate::events::{self, EventMeta};

/// A command decided and sealed, waiting for Kafka.
pub(super) struct Pending {
    pub job: Job,
    /// Encoded records and their timestamps.
    pub records: Vec<(Vec<u8>, i64)>,
    /// The key of a new order.
    pub new_key: Option<OrderKey>,
    pub outcome: Outcome,
    /// The order after the command, as it is stored once committed.
    pub record: OrderRecord,
}

/// A batch, decided.
pub(super) struct Decided {
    /// Commands with events to write, in batch order.
    pub pending: Vec<Pending>,
    /// Commands that change nothing (a share of what is already shared),
    /// answered with the order's current version.
    pub unchanged: Vec<(Job, Outcome)>,
    /// Commands refused, with why.
    pub refused: Vec<(Job, ServiceError)>,
}

/// Decides every job against `orders` (the state of the orders the batch
/// touches; an order missing is new). `unreadable` orders are refused.
pub(super) fn decide_batch(
    jobs: Vec<Job>,
    mut orders: HashMap<Uuid, OrderRecord>,
    unreadable: &HashSet<Uuid>,
    now: i64,
    keys: &LogKeys,
) -> Decided {
    let mut out = Decided {
        pending: Vec::new(),
        unchanged: Vec::new(),
        refused: Vec::new(),
    };
    for job in jobs {
        if unreadable.contains(&job.order_id) {
            out.refused.push((
                job,
                ServiceError::Internal(crate::error::Cause::msg("reading the order state failed")),
            ));
            continue;
        }
        let rec = orders.remove(&job.order_id).unwrap_or_default();
        match decide_one(&job, rec, now, keys) {
            Ok(One::Write {
                records,
                new_key,
                outcome,
                record,
            }) => out.pending.push(Pending {
                // A placement's request digest is stored keyed by its new
                // order key (see `Idempotency`).
                job: Job {
                    idempotency: job.idempotency.map(|i| Idempotency {
                        // (never the plain hash of personal data)
                        request: i.stored_digest(new_key.as_ref()).unwrap_or([0; 32]),
                        personal: false,
                        ..i
                    }),
                    ..job
                },
                records,
                new_key,
                outcome,
                record,
            }),
            Ok(One::Unchanged(outcome)) => out.unchanged.push((job, outcome)),
            Err(e) => out.refused.push((job, e)),
        }
    }
    out
}

/// One command, decided.
#[allow(clippy::large_enum_variant)] // built once per command, moved once
enum One {
    Write {
        records: Vec<(Vec<u8>, i64)>,
        new_key: Option<OrderKey>,
        outcome: Outcome,
        record: OrderRecord,
    },
    Unchanged(Outcome),
}

fn decide_one(
    job: &Job,
    mut rec: OrderRecord,
    now: i64,
    keys: &LogKeys,
) -> Result<One, ServiceError> {
    if let Some(expected) = job.expected_version
        && expected != rec.state.version
    {
        return Err(ServiceError::VersionMismatch {
            expected,
            actual: rec.state.version,
        });
    }
    let events = domain::decide_at(&rec.state, job.command.clone(), now)?;
    let mut outcome = Outcome {
        order_id: job.order_id,
        version: rec.state.version,
        position: None,
        occurred_at_ms: now,
        replayed: false,
        shredded: None,
        key_row: None,
        key_id: rec.key_id,
    };
    if events.is_empty() {
        return Ok(One::Unchanged(outcome));
    }
    let new_key = matches!(job.command, Command::PlaceOrder(_)).then(OrderKey::generate);
    let mut records = Vec::with_capacity(events.len());
    for event in &events {
        let key_id = new_key
            .as_ref()
            .map(OrderKey::id)
            .or(rec.key_id)
            .unwrap_or(KeyId([0; 16]));
        let meta = EventMeta {
            event_id: Uuid::now_v7(),
            order_id: job.order_id,
            sequence: rec.state.version + 1,
            occurred_at_ms: now,
            key_id,
            prev_hash: rec.last_hash,
        };
        let env = events::seal_event(event, meta, new_key.as_ref())
            .map_err(|e| ServiceError::Internal(crate::error::Cause::of(e)))?;
        let bytes = events::encode(&env, keys);
        let absorbed = rec.absorb(&env, &bytes, -1);
        debug_assert_eq!(
            absorbed,
            Absorbed::Applied,
            "a fresh event always continues its chain"
        );
        records.push((bytes, now));
    }
    outcome.version = rec.state.version;
    outcome.key_id = rec.key_id;
    Ok(One::Write {
        records,
        new_key,
        outcome,
        record: rec,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU8;

    use tokio::sync::oneshot;

    use super::*;
    use crate::domain::validation::ProviderId;
    use crate::domain::{CancelReason, DomainError, FieldClass, Party, fixtures};

    fn keys() -> LogKeys {
        LogKeys::from_ring(&crate::crypto::KekRing::new(crate::crypto::Kek::generate()))
    }

    fn job(order_id: Uuid, command: Command, expected: Option<u64>) -> Job {
        let (reply, _) = oneshot::channel();
        Job {
            order_id,
            command,
            expected_version: expected,
            idempotency: None,
            reply,
            claim: Arc::new(AtomicU8::new(super::super::TAKEN)),
            _in_flight: None,
        }
    }

    fn share(provider: &str) -> Command {
        Command::ShareOrder {
            party: Party::Logistics(ProviderId::parse("party.id", provider).unwrap()),
            classes: BTreeSet::from([FieldClass::Shipping]),
        }
    }

    /// The state after `pending`'s command, as the next batch would find it.
    fn after(d: &Decided, i: usize) -> OrderRecord {
        d.pending[i].record.clone()
    }

    #[test]
    fn a_placement_gets_a_new_key_and_the_first_link_of_its_chain() {
        let id = Uuid::now_v7();
        let d = decide_batch(
            vec![job(
                id,
                Command::PlaceOrder(fixtures::new_order(1, true)),
                None,
            )],
            HashMap::new(),
            &HashSet::new(),
            1_000,
            &keys(),
        );
        assert!(d.refused.is_empty() && d.unchanged.is_empty());
        let p = &d.pending[0];
        assert_eq!(p.outcome.version, 1);
        let key = p.new_key.as_ref().expect("a new order gets a key");
        assert_eq!(p.outcome.key_id, Some(key.id()));
        let env = events::decode(&p.records[0].0).unwrap();
        assert_eq!(env.meta.sequence, 1);
        assert_eq!(env.meta.prev_hash, [0; 32]);
        assert_eq!(env.meta.order_id, id);
        assert_eq!(p.records[0].1, 1_000);
        // The personal fields are sealed: they open with the new key only.
        assert!(events::open_event(&env, Some(key)).is_ok());
        assert!(events::open_event(&env, Some(&OrderKey::generate())).is_err());
    }

    #[test]
    fn later_commands_chain_on_the_stored_state_and_refusals_say_why() {
        let id = Uuid::now_v7();
        let placed = decide_batch(
            vec![job(
                id,
                Command::PlaceOrder(fixtures::new_order(2, false)),
                None,
            )],
            HashMap::new(),
            &HashSet::new(),
            1,
            &keys(),
        );
        let stored = after(&placed, 0);
        let hash_of_placed = events::record_hash(&placed.pending[0].records[0].0);
        let other = Uuid::now_v7();
        let unreadable = Uuid::now_v7();
        let d = decide_batch(
            vec![
                job(id, share("sf-express"), Some(1)),
                // Cancelling an order that does not exist.
                job(
                    other,
                    Command::CancelOrder {
                        reason: CancelReason::parse("customer_request").unwrap(),
                    },
                    None,
                ),
                job(unreadable, share("sf-express"), None),
            ],
            HashMap::from([(id, stored.clone())]),
            &HashSet::from([unreadable]),
            2,
            &keys(),
        );
        assert_eq!(d.pending.len(), 1);
        let env = events::decode(&d.pending[0].records[0].0).unwrap();
        assert_eq!((env.meta.sequence, env.meta.prev_hash), (2, hash_of_placed));
        assert_eq!(d.pending[0].outcome.version, 2);
        assert!(
            d.pending[0].new_key.is_none(),
            "only a placement makes a key"
        );
        assert_eq!(d.refused.len(), 2);
        assert!(
            matches!(d.refused[0].1, ServiceError::Domain(DomainError::NotFound)),
            "{:?}",
            d.refused[0].1
        );
        assert!(matches!(d.refused[1].1, ServiceError::Internal(_)));

        // A stale If-Match, and a share that changes nothing.
        let shared = after(&d, 0);
        let d = decide_batch(
            vec![job(id, share("sf-express"), Some(1))],
            HashMap::from([(id, shared.clone())]),
            &HashSet::new(),
            3,
            &keys(),
        );
        assert!(matches!(
            d.refused[0].1,
            ServiceError::VersionMismatch {
                expected: 1,
                actual: 2
            }
        ));
        let d = decide_batch(
            vec![job(id, share("sf-express"), None)],
            HashMap::from([(id, shared)]),
            &HashSet::new(),
            4,
            &keys(),
        );
        assert!(d.pending.is_empty());
        assert_eq!(d.unchanged[0].1.version, 2, "answers the current version");
    }
}
