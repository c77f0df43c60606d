//! Erase intents: written (fsynced) before an `OrderErased` record is sent,
//! one per erasure (keyed by order id and the event's sequence number, so
//! two erasures of one order never clear each other's),
//! removed once the key is destroyed and its replica row acknowledged, or
//! once the record is known not to be in the log. A writer that takes a
//! partition finishes every intent it finds, so a crash anywhere between the
//! record and the key destruction never leaves a live key behind an erasure,
//! however far the projector has read meanwhile.

use std::collections::BTreeSet;

use rocksdb::{IteratorMode, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::FieldClass;
use crate::store::{CF_ERASE_INTENTS, Store, StoreError, decode_value, encode_value};

/// Which erasure an intent is for: the order and the sequence number its
/// `OrderErased` event takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IntentId {
    pub order_id: Uuid,
    pub sequence: u64,
}

impl IntentId {
    fn key(&self) -> [u8; 24] {
        let mut k = [0u8; 24];
        k[..16].copy_from_slice(self.order_id.as_bytes());
        k[16..].copy_from_slice(&self.sequence.to_be_bytes());
        k
    }

    fn from_key(k: &[u8]) -> Option<Self> {
        let k = <&[u8; 24]>::try_from(k).ok()?;
        Some(Self {
            order_id: Uuid::from_bytes(k[..16].try_into().expect("16 bytes")),
            sequence: u64::from_be_bytes(k[16..].try_into().expect("8 bytes")),
        })
    }
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
        batch.put_cf(store.cf(CF_ERASE_INTENTS), id.key(), encode_value(intent));
    }
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    store.db().write_opt(batch, &opts)?;
    Ok(())
}

pub fn clear(store: &Store, id: &IntentId) -> Result<(), StoreError> {
    store.db().delete_cf(store.cf(CF_ERASE_INTENTS), id.key())?;
    Ok(())
}

/// Every intent not yet cleared.
pub fn pending(store: &Store) -> Result<Vec<(IntentId, EraseIntent)>, StoreError> {
    let mut out = Vec::new();
    for item in store
        .db()
        .iterator_cf(store.cf(CF_ERASE_INTENTS), IteratorMode::Start)
    {
        let (k, v) = item?;
        let id = IntentId::from_key(&k).ok_or_else(|| StoreError::Corrupt {
            cf: CF_ERASE_INTENTS,
            reason: format!("key of {} bytes", k.len()),
        })?;
        out.push((id, decode_value(CF_ERASE_INTENTS, &v)?));
    }
    Ok(out)
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
