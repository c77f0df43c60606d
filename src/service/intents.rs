//! Erase intents: written (fsynced) before an `OrderErased` record is sent,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EraseIntent {
    /// `None`: the whole order.
    pub classes: Option<BTreeSet<FieldClass>>,
    pub at_ms: i64,
}

/// Records intents durably (one fsynced batch).
pub fn record(store: &Store, intents: &[(Uuid, EraseIntent)]) -> Result<(), StoreError> {
    if intents.is_empty() {
        return Ok(());
    }
    let mut batch = WriteBatch::default();
    for (id, intent) in intents {
        batch.put_cf(
            store.cf(CF_ERASE_INTENTS),
            id.as_bytes(),
            encode_value(intent),
        );
    }
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    store.db().write_opt(batch, &opts)?;
    Ok(())
}

pub fn clear(store: &Store, order_id: &Uuid) -> Result<(), StoreError> {
    store
        .db()
        .delete_cf(store.cf(CF_ERASE_INTENTS), order_id.as_bytes())?;
    Ok(())
}

/// Every intent not yet cleared.
pub fn pending(store: &Store) -> Result<Vec<(Uuid, EraseIntent)>, StoreError> {
    let mut out = Vec::new();
    for item in store
        .db()
        .iterator_cf(store.cf(CF_ERASE_INTENTS), IteratorMode::Start)
    {
        let (k, v) = item?;
        let id = <[u8; 16]>::try_from(&k[..]).map_err(|_| StoreError::Corrupt {
            cf: CF_ERASE_INTENTS,
            reason: format!("key of {} bytes", k.len()),
        })?;
        out.push((Uuid::from_bytes(id), decode_value(CF_ERASE_INTENTS, &v)?));
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
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
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
        got.sort_by_key(|(id, _)| *id);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].1.classes, classes);
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
