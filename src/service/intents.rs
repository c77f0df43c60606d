//! Erase intents: written (fsynced) before an `OrderErased` record is sent,
//! one per erasure (keyed by order id and the event's sequence number, so
//! two erasures of one order never clear each other's),
//! removed once the key is destroyed and its replica row acknowledged, or
//! once the record is known not to be in the log. A writer that takes a
//! partition finishes every intent it finds, so a crash anywhere between the
//! record and the key destruction never leaves a live key behind an erasure,
//! however far the projector has read meanwhile.

use std::collections::BTreeSet;

use rocksdb::{WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::FieldClass;
use crate::store::schema::EraseIntents;
use crate::store::{Store, StoreError};

/// Which erasure an intent is for: the order and the sequence number its
/// `OrderErased` event takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IntentId {
    pub order_id: Uuid,
    pub sequence: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EraseIntent {
    /// `None`: the whole order.
    pub classes: Option<BTreeSet<FieldClass>>,
    pub at_ms: i64,
}

/// Records intents durably (one fsynced batch).
pub fn record(store: &Store, intents: &[(IntentId, EraseIntent)]) -> Result<(), StoreError> {
    if intents.is_empty() {
        return Ok(());
    }
    let mut batch = WriteBatch::default();
    for (id, intent) in intents {
        store.table::<EraseIntents>().put(&mut batch, id, intent);
    }
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    store.db().write_opt(batch, &opts)?;
    Ok(())
}

pub fn clear(store: &Store, id: &IntentId) -> Result<(), StoreError> {
    store
        .table::<EraseIntents>()
        .delete_now(id, &WriteOptions::default())
}

/// Every intent not yet cleared.
pub fn pending(store: &Store) -> Result<Vec<(IntentId, EraseIntent)>, StoreError> {
    store.table::<EraseIntents>().rows().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_are_listed_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let order = Uuid::now_v7();
        let (a, b) = (
            IntentId {
                order_id: order,
                sequence: 3,
            },
            IntentId {
                order_id: order,
                sequence: 5,
            },
        );
        let classes = Some(BTreeSet::from([FieldClass::Identity]));
        record(
            &store,
            &[
                (
                    a,
                    EraseIntent {
                        classes: None,
                        at_ms: 1,
                    },
                ),
                (
                    b,
                    EraseIntent {
                        classes: classes.clone(),
                        at_ms: 2,
                    },
                ),
            ],
        )
        .unwrap();
        let mut got = pending(&store).unwrap();
        got.sort_by_key(|(id, _)| id.sequence);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].1.classes, classes);
        // Two erasures of one order: clearing one keeps the other.
        clear(&store, &a).unwrap();
        assert_eq!(
            pending(&store)
                .unwrap()
                .iter()
                .map(|(id, _)| *id)
                .collect::<Vec<_>>(),
            vec![b]
        );
    }
}
