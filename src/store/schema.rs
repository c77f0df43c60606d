//! Typed column families: a [`Schema`] names a column family, writes its
//! key and reads and writes its value; a [`Table`] reads and writes rows of
//! one schema. Code outside `store/` goes through these rather than raw
//! `get_cf`/`put_cf` with keys it builds itself.
//!
//! So far `order_keys`, `shredded_keys`, `view_orders`, `view_offsets`,
//! `erase_intents`, `purge_queue` and `erasures` have schemas. Still read
//! with raw keys where they are used: the feeds, the order state rows (whose
//! codecs live in `service::state`), `idempotency`, `meta` and the subject
//! index.

use std::marker::PhantomData;

use rocksdb::{IteratorMode, WriteBatch, WriteOptions};
use uuid::Uuid;

use super::{Store, StoreError, decode_value, encode_value};

/// One column family's layout.
pub trait Schema {
    /// The column family's name.
    const CF: &'static str;
    type Key;
    type Value;
    /// The key as stored (big-endian, so scans come out in order).
    fn key(key: &Self::Key) -> impl AsRef<[u8]>;
    fn decode_key(bytes: &[u8]) -> Result<Self::Key, StoreError>;
    fn encode(value: &Self::Value) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Result<Self::Value, StoreError>;
}

/// A [`Party`](crate::domain::Party) in a stored row, for
/// `#[serde(with = "crate::store::schema::stored_party")]`: externally
/// tagged (variant index, then the id), which bincode reads. The domain
/// type's own serde form is adjacently tagged, for JSON, and bincode cannot
/// read that back.
pub mod stored_party {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::domain::Party;
    use crate::domain::validation::{MerchantId, ProviderId};

    #[derive(Serialize)]
    #[serde(rename = "StoredParty")]
    enum Ref<'a> {
        Logistics(&'a ProviderId),
        Merchant(&'a MerchantId),
    }

    #[derive(Deserialize)]
    #[serde(rename = "StoredParty")]
    enum Owned {
        Logistics(ProviderId),
        Merchant(MerchantId),
    }

    pub fn serialize<S: Serializer>(party: &Party, s: S) -> Result<S::Ok, S::Error> {
        match party {
            Party::Logistics(id) => Ref::Logistics(id),
            Party::Merchant(id) => Ref::Merchant(id),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Party, D::Error> {
        Ok(match Owned::deserialize(d)? {
            Owned::Logistics(id) => Party::Logistics(id),
            Owned::Merchant(id) => Party::Merchant(id),
        })
    }
}

/// Schemas keyed by order id (16 bytes) whose value is bincode.
macro_rules! by_order_id {
    ($(#[$doc:meta])* $name:ident, $cf:expr, $value:ty) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl Schema for $name {
            const CF: &'static str = $cf;
            type Key = Uuid;
            type Value = $value;

            fn key(key: &Uuid) -> impl AsRef<[u8]> {
                *key.as_bytes()
            }

            fn decode_key(bytes: &[u8]) -> Result<Uuid, StoreError> {
                Uuid::from_slice(bytes).map_err(|e| corrupt(Self::CF, e.to_string()))
            }

            fn encode(value: &$value) -> Vec<u8> {
                encode_value(value)
            }

            fn decode(bytes: &[u8]) -> Result<$value, StoreError> {
                decode_value(Self::CF, bytes)
            }
        }
    };
}

by_order_id!(
    /// `order_keys`: the order's key, its class subkeys wrapped under a KEK.
    OrderKeys,
    super::CF_ORDER_KEYS,
    crate::crypto::StoredKey
);
by_order_id!(
    /// `shredded_keys`: what remains of an order's key after a shred.
    ShreddedKeys,
    super::CF_SHREDDED_KEYS,
    crate::crypto::Shredded
);
by_order_id!(
    /// `view_orders`: the order as the shipping and merchant views hold it.
    ViewOrders,
    super::CF_VIEW_ORDERS,
    crate::projections::ProjectedOrder
);

/// `view_offsets`: per partition (u32), the next offset the views have not
/// folded (u64; the same batch writes the views).
#[derive(Debug)]
pub struct ViewOffsets;

impl Schema for ViewOffsets {
    const CF: &'static str = super::CF_VIEW_OFFSETS;
    type Key = i32;
    type Value = i64;

    fn key(partition: &i32) -> impl AsRef<[u8]> {
        (*partition as u32).to_be_bytes()
    }

    fn decode_key(bytes: &[u8]) -> Result<i32, StoreError> {
        fixed::<4>(Self::CF, bytes).map(|b| u32::from_be_bytes(b) as i32)
    }

    fn encode(next: &i64) -> Vec<u8> {
        next.to_be_bytes().to_vec()
    }

    fn decode(bytes: &[u8]) -> Result<i64, StoreError> {
        fixed::<8>(Self::CF, bytes).map(i64::from_be_bytes)
    }
}

/// `erase_intents`: an erasure a writer has decided and not yet seen
/// committed, by order and sequence (see [`crate::service::intents`]).
#[derive(Debug)]
pub struct EraseIntents;

impl Schema for EraseIntents {
    const CF: &'static str = super::CF_ERASE_INTENTS;
    type Key = crate::service::intents::IntentId;
    type Value = crate::service::intents::EraseIntent;

    fn key(id: &Self::Key) -> impl AsRef<[u8]> {
        let mut k = [0u8; 24];
        k[..16].copy_from_slice(id.order_id.as_bytes());
        k[16..].copy_from_slice(&id.sequence.to_be_bytes());
        k
    }

    fn decode_key(bytes: &[u8]) -> Result<Self::Key, StoreError> {
        let k = fixed::<24>(Self::CF, bytes)?;
        Ok(crate::service::intents::IntentId {
            order_id: Uuid::from_bytes(k[..16].try_into().expect("16 bytes")),
            sequence: u64::from_be_bytes(k[16..].try_into().expect("8 bytes")),
        })
    }

    fn encode(value: &Self::Value) -> Vec<u8> {
        encode_value(value)
    }

    fn decode(bytes: &[u8]) -> Result<Self::Value, StoreError> {
        decode_value(Self::CF, bytes)
    }
}

/// `purge_queue`: an order whose erased rows are still to be purged from
/// disk, keyed `source (1) | partition (u32) | offset (u64) | order id (16)`
/// so the queue reads in the order its destructions were read; no value.
#[derive(Debug)]
pub struct PurgeQueue;

impl Schema for PurgeQueue {
    const CF: &'static str = super::CF_PURGE_QUEUE;
    type Key = crate::erasure::purge::Entry;
    type Value = ();

    fn key(e: &Self::Key) -> impl AsRef<[u8]> {
        let mut k = [0u8; 29];
        k[0] = e.source.tag();
        k[1..5].copy_from_slice(&(e.partition as u32).to_be_bytes());
        k[5..13].copy_from_slice(&(e.offset as u64).to_be_bytes());
        k[13..].copy_from_slice(e.order_id.as_bytes());
        k
    }

    fn decode_key(bytes: &[u8]) -> Result<Self::Key, StoreError> {
        let k = fixed::<29>(Self::CF, bytes)?;
        Ok(crate::erasure::purge::Entry {
            source: source(Self::CF, k[0])?,
            partition: u32::from_be_bytes(k[1..5].try_into().expect("4 bytes")) as i32,
            offset: u64::from_be_bytes(k[5..13].try_into().expect("8 bytes")) as i64,
            order_id: Uuid::from_bytes(k[13..].try_into().expect("16 bytes")),
        })
    }

    fn encode(_: &()) -> Vec<u8> {
        Vec::new()
    }

    fn decode(_: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
}

/// `erasures`: where this node read an order's latest erasure, per source:
/// `(partition, offset, made at ms)`, keyed `order id (16) | source (1)`.
#[derive(Debug)]
pub struct Erasures;

impl Schema for Erasures {
    const CF: &'static str = super::CF_ERASURES;
    type Key = (Uuid, crate::erasure::purge::Source);
    type Value = (i32, i64, i64);

    fn key((order_id, source): &Self::Key) -> impl AsRef<[u8]> {
        let mut k = [0u8; 17];
        k[..16].copy_from_slice(order_id.as_bytes());
        k[16] = source.tag();
        k
    }

    fn decode_key(bytes: &[u8]) -> Result<Self::Key, StoreError> {
        let k = fixed::<17>(Self::CF, bytes)?;
        Ok((
            Uuid::from_bytes(k[..16].try_into().expect("16 bytes")),
            source(Self::CF, k[16])?,
        ))
    }

    fn encode((partition, offset, at_ms): &Self::Value) -> Vec<u8> {
        let mut v = Vec::with_capacity(20);
        v.extend_from_slice(&partition.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&at_ms.to_be_bytes());
        v
    }

    fn decode(bytes: &[u8]) -> Result<Self::Value, StoreError> {
        let v = fixed::<20>(Self::CF, bytes)?;
        Ok((
            i32::from_be_bytes(v[..4].try_into().expect("4 bytes")),
            i64::from_be_bytes(v[4..12].try_into().expect("8 bytes")),
            i64::from_be_bytes(v[12..].try_into().expect("8 bytes")),
        ))
    }
}

fn source(cf: &'static str, tag: u8) -> Result<crate::erasure::purge::Source, StoreError> {
    crate::erasure::purge::Source::from_tag(tag)
        .ok_or_else(|| corrupt(cf, format!("unknown source {tag}")))
}

fn corrupt(cf: &'static str, reason: String) -> StoreError {
    StoreError::Corrupt { cf, reason }
}

/// `bytes` as an array of exactly `N` bytes.
fn fixed<const N: usize>(cf: &'static str, bytes: &[u8]) -> Result<[u8; N], StoreError> {
    <[u8; N]>::try_from(bytes).map_err(|_| corrupt(cf, format!("{} bytes, not {N}", bytes.len())))
}

/// The rows of one schema's column family.
pub struct Table<'a, S> {
    store: &'a Store,
    schema: PhantomData<S>,
}

impl<S: Schema> std::fmt::Debug for Table<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("cf", &S::CF).finish()
    }
}

impl Store {
    pub fn table<S: Schema>(&self) -> Table<'_, S> {
        Table {
            store: self,
            schema: PhantomData,
        }
    }
}

impl<S: Schema> Table<'_, S> {
    fn cf(&self) -> &rocksdb::ColumnFamily {
        self.store.cf(S::CF)
    }

    pub fn get(&self, key: &S::Key) -> Result<Option<S::Value>, StoreError> {
        match self.store.db().get_pinned_cf(self.cf(), S::key(key))? {
            Some(bytes) => S::decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    pub fn contains(&self, key: &S::Key) -> Result<bool, StoreError> {
        Ok(self
            .store
            .db()
            .get_pinned_cf(self.cf(), S::key(key))?
            .is_some())
    }

    /// Stages the row in `batch`.
    pub fn put(&self, batch: &mut WriteBatch, key: &S::Key, value: &S::Value) {
        batch.put_cf(self.cf(), S::key(key), S::encode(value));
    }

    /// Stages the row's deletion in `batch`.
    pub fn delete(&self, batch: &mut WriteBatch, key: &S::Key) {
        batch.delete_cf(self.cf(), S::key(key));
    }

    /// Writes the row at once, with `options`.
    pub fn put_now(
        &self,
        key: &S::Key,
        value: &S::Value,
        options: &WriteOptions,
    ) -> Result<(), StoreError> {
        Ok(self
            .store
            .db()
            .put_cf_opt(self.cf(), S::key(key), S::encode(value), options)?)
    }

    /// Deletes the row at once, with `options`.
    pub fn delete_now(&self, key: &S::Key, options: &WriteOptions) -> Result<(), StoreError> {
        Ok(self
            .store
            .db()
            .delete_cf_opt(self.cf(), S::key(key), options)?)
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self
            .store
            .db()
            .iterator_cf(self.cf(), IteratorMode::Start)
            .next()
            .transpose()?
            .is_none())
    }

    /// Every row, in key order.
    pub fn rows(&self) -> impl Iterator<Item = Result<(S::Key, S::Value), StoreError>> + '_ {
        self.store
            .db()
            .iterator_cf(self.cf(), IteratorMode::Start)
            .map(|item| {
                let (k, v) = item?;
                Ok((S::decode_key(&k)?, S::decode(&v)?))
            })
    }

    /// Every key, in order (values are not decoded).
    pub fn keys(&self) -> impl Iterator<Item = Result<S::Key, StoreError>> + '_ {
        self.store
            .db()
            .iterator_cf(self.cf(), IteratorMode::Start)
            .map(|item| S::decode_key(&item?.0))
    }

    /// How many rows (reads every key).
    pub fn count(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        for item in self.store.db().iterator_cf(self.cf(), IteratorMode::Start) {
            item?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyId, Shredded};
    use crate::domain::FieldClass;

    #[test]
    fn a_table_writes_reads_and_lists_typed_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let table = store.table::<ShreddedKeys>();
        assert!(table.is_empty().unwrap());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let row = |whole| Shredded {
            key_id: KeyId([3; 16]),
            classes: [FieldClass::Identity].into(),
            whole,
            at_ms: 9,
        };
        let mut batch = WriteBatch::default();
        table.put(&mut batch, &b, &row(true));
        table.put(&mut batch, &a, &row(false));
        store.db().write(batch).unwrap();
        assert_eq!(table.get(&a).unwrap(), Some(row(false)));
        assert!(table.contains(&b).unwrap());
        let rows: Vec<(Uuid, Shredded)> = table.rows().collect::<Result<_, _>>().unwrap();
        assert_eq!(rows, vec![(a, row(false)), (b, row(true))]);
        table.delete_now(&a, &WriteOptions::default()).unwrap();
        assert_eq!(table.get(&a).unwrap(), None);
        assert_eq!(table.count().unwrap(), 1);
        // The raw row is where the layout says: the order id's 16 bytes.
        let raw = store
            .db()
            .get_cf(store.cf(super::super::CF_SHREDDED_KEYS), b.as_bytes())
            .unwrap();
        assert!(raw.is_some());
    }
}
