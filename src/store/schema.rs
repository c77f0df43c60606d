//! Typed column families: a [`Schema`] names a column family, writes its
//! key and reads and writes its value; a [`Table`] reads and writes rows of
//! one schema. Code outside `store/` goes through these rather than raw
//! `get_cf`/`put_cf` with keys it builds itself.
//!
//! Every column family has a schema here. `meta` holds rows of several
//! kinds, each a schema of its own with its key prefix ([`Schema::PREFIX`]).
//! Values whose codec belongs to their module (the order state's row
//! formats, the idempotency row) are encoded there and named here. Raw
//! access outside `store/` is left to what is raw by nature: the view
//! digests and the purges, which read or compact whole key ranges.

use std::marker::PhantomData;

use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};
use uuid::Uuid;

use super::{Store, StoreError, decode_value, encode_value};

/// One column family's layout.
pub trait Schema {
    /// The column family's name.
    const CF: &'static str;
    type Key;
    type Value;
    /// What every key of this schema starts with: empty for a column family
    /// of its own, a row kind's prefix in one it shares (`meta`). Scans stop
    /// at its end.
    const PREFIX: &'static [u8] = b"";
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

/// Schemas keyed by order id (16 bytes), whose value is bincode unless
/// the schema names its own codec.
macro_rules! by_order_id {
    ($(#[$doc:meta])* $name:ident, $cf:expr, $value:ty) => {
        by_order_id!(
            $(#[$doc])* $name, $cf, $value,
            encode_value,
            |bytes| decode_value(Self::CF, bytes)
        );
    };
    ($(#[$doc:meta])* $name:ident, $cf:expr, $value:ty, $encode:expr, $decode:expr) => {
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
                #[allow(clippy::redundant_closure_call)]
                ($encode)(value)
            }

            fn decode(bytes: &[u8]) -> Result<$value, StoreError> {
                #[allow(clippy::redundant_closure_call)]
                ($decode)(bytes)
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

by_order_id!(
    /// `order_state`: what the writers decide an order's commands against
    /// (its version, facts, last hash, key id). The row codec (format byte,
    /// version, record) is [`crate::service::state`]'s; the column family's
    /// merge operator keeps the highest version.
    OrderStates,
    super::CF_ORDER_STATE,
    crate::service::state::OrderRecord,
    crate::service::state::encode_state,
    crate::service::state::decode_state
);
by_order_id!(
    /// `order_placed`: an order's sealed `OrderPlaced` record, for reads,
    /// replaced by an empty marker once the whole order is erased. Merged
    /// like `order_state`: the highest version wins.
    OrderPlacements,
    super::CF_ORDER_PLACED,
    crate::service::state::PlacedRow,
    crate::service::state::PlacedRow::encode,
    crate::service::state::PlacedRow::decode
);

/// `idempotency`: the stored answer to an `Idempotency-Key` (its 32-byte
/// digest), with its expiry; a compaction filter drops expired rows.
#[derive(Debug)]
pub struct Idempotency;

impl Schema for Idempotency {
    const CF: &'static str = super::CF_IDEMPOTENCY;
    type Key = [u8; 32];
    type Value = crate::service::state::StoredOutcome;

    fn key(key: &[u8; 32]) -> impl AsRef<[u8]> {
        *key
    }

    fn decode_key(bytes: &[u8]) -> Result<[u8; 32], StoreError> {
        fixed::<32>(Self::CF, bytes)
    }

    fn encode(value: &Self::Value) -> Vec<u8> {
        value.encode().to_vec()
    }

    fn decode(bytes: &[u8]) -> Result<Self::Value, StoreError> {
        crate::service::state::StoredOutcome::decode(bytes)
    }
}

/// Where a feed entry sits: the party's id, then the partition and offset
/// of the event that made it (so a party's entries read in log order per
/// partition). Stored `len(id) | id | partition (u32 BE) | offset (u64 BE)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedKey {
    pub party: String,
    pub partition: u32,
    pub offset: u64,
}

fn feed_key(k: &FeedKey) -> Vec<u8> {
    let id = k.party.as_bytes();
    let mut out = Vec::with_capacity(1 + id.len() + 12);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out.extend_from_slice(&k.partition.to_be_bytes());
    out.extend_from_slice(&k.offset.to_be_bytes());
    out
}

fn decode_feed_key(cf: &'static str, bytes: &[u8]) -> Result<FeedKey, StoreError> {
    let bad = || corrupt(cf, "malformed feed key".into());
    let (&len, rest) = bytes.split_first().ok_or_else(bad)?;
    let len = usize::from(len);
    if rest.len() != len + 12 {
        return Err(bad());
    }
    Ok(FeedKey {
        party: String::from_utf8(rest[..len].to_vec()).map_err(|_| bad())?,
        partition: u32::from_be_bytes(rest[len..len + 4].try_into().expect("4 bytes")),
        offset: u64::from_be_bytes(rest[len + 4..].try_into().expect("8 bytes")),
    })
}

macro_rules! feed {
    ($(#[$doc:meta])* $name:ident, $cf:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl Schema for $name {
            const CF: &'static str = $cf;
            type Key = FeedKey;
            type Value = crate::projections::FeedEntry;

            fn key(key: &FeedKey) -> impl AsRef<[u8]> {
                feed_key(key)
            }

            fn decode_key(bytes: &[u8]) -> Result<FeedKey, StoreError> {
                decode_feed_key(Self::CF, bytes)
            }

            fn encode(value: &Self::Value) -> Vec<u8> {
                encode_value(value)
            }

            fn decode(bytes: &[u8]) -> Result<Self::Value, StoreError> {
                decode_value(Self::CF, bytes)
            }
        }
    };
}

feed!(
    /// `shipping_feed`: a logistics provider's change feed.
    ShippingFeed,
    super::CF_SHIPPING_FEED
);
feed!(
    /// `merchant_feed`: a merchant's change feed.
    MerchantFeed,
    super::CF_MERCHANT_FEED
);

/// A `meta` row of which there is one, at the key `PREFIX`.
macro_rules! meta_row {
    ($(#[$doc:meta])* $name:ident, $key:expr, $value:ty, $encode:expr, $decode:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl Schema for $name {
            const CF: &'static str = super::CF_META;
            const PREFIX: &'static [u8] = $key;
            type Key = ();
            type Value = $value;

            fn key(_: &()) -> impl AsRef<[u8]> {
                Self::PREFIX
            }

            fn decode_key(bytes: &[u8]) -> Result<(), StoreError> {
                if bytes == Self::PREFIX {
                    Ok(())
                } else {
                    Err(corrupt(Self::CF, "not this row's key".into()))
                }
            }

            fn encode(value: &$value) -> Vec<u8> {
                #[allow(clippy::redundant_closure_call)]
                ($encode)(value)
            }

            fn decode(bytes: &[u8]) -> Result<$value, StoreError> {
                #[allow(clippy::redundant_closure_call)]
                ($decode)(bytes)
            }
        }
    };
}

meta_row!(
    /// `meta`: the format of the order state this data directory holds,
    /// once it covers the log from its start.
    StateFormat,
    b"order_state.format",
    u8,
    |v: &u8| vec![*v],
    |b: &[u8]| fixed::<1>(super::CF_META, b).map(|[v]| v)
);
meta_row!(
    /// `meta`: when the vault was last current with the key topic (Unix ms).
    KeysCurrentAt,
    b"keys-current-at",
    i64,
    |v: &i64| v.to_be_bytes().to_vec(),
    |b: &[u8]| fixed::<8>(super::CF_META, b).map(i64::from_be_bytes)
);
meta_row!(
    /// `meta`: the KEK the subject index's key derives from.
    SubjectIndexKek,
    b"subject_index.kek",
    crate::crypto::kek::KekId,
    |v: &crate::crypto::kek::KekId| v.0.to_vec(),
    |b: &[u8]| fixed::<8>(super::CF_META, b).map(crate::crypto::kek::KekId)
);
meta_row!(
    /// `meta`: present while removed subject entries may still be on disk
    /// (a purge to finish at start).
    SubjectIndexPurging,
    b"subject_index.purging",
    (),
    |_: &()| vec![1],
    |_: &[u8]| Ok(())
);

/// `meta`: per partition of the key topic, the next offset the key follower
/// has not applied.
#[derive(Debug)]
pub struct KeyTopicOffsets;

impl Schema for KeyTopicOffsets {
    const CF: &'static str = super::CF_META;
    const PREFIX: &'static [u8] = b"keys-offset/";
    type Key = i32;
    type Value = i64;

    fn key(partition: &i32) -> impl AsRef<[u8]> {
        let mut k = Self::PREFIX.to_vec();
        k.extend_from_slice(&(*partition as u32).to_be_bytes());
        k
    }

    fn decode_key(bytes: &[u8]) -> Result<i32, StoreError> {
        fixed::<4>(Self::CF, unprefixed::<Self>(bytes)?).map(|b| u32::from_be_bytes(b) as i32)
    }

    fn encode(next: &i64) -> Vec<u8> {
        next.to_be_bytes().to_vec()
    }

    fn decode(bytes: &[u8]) -> Result<i64, StoreError> {
        fixed::<8>(Self::CF, bytes).map(i64::from_be_bytes)
    }
}

/// `meta`: a retired log key read from the key topic, still wrapped, by its
/// id (`log-key/<hex id>`, as on the topic).
#[derive(Debug)]
pub struct RetiredLogKeys;

impl Schema for RetiredLogKeys {
    const CF: &'static str = super::CF_META;
    const PREFIX: &'static [u8] = crate::crypto::logkey::RECORD_PREFIX.as_bytes();
    type Key = crate::crypto::kek::KekId;
    type Value = crate::crypto::logkey::WrappedLogKey;

    fn key(id: &Self::Key) -> impl AsRef<[u8]> {
        format!("{}{id}", crate::crypto::logkey::RECORD_PREFIX).into_bytes()
    }

    fn decode_key(bytes: &[u8]) -> Result<Self::Key, StoreError> {
        let hex_id = unprefixed::<Self>(bytes)?;
        let mut id = [0u8; 8];
        hex::decode_to_slice(hex_id, &mut id)
            .map_err(|e| corrupt(Self::CF, format!("log key id: {e}")))?;
        Ok(crate::crypto::kek::KekId(id))
    }

    fn encode(value: &Self::Value) -> Vec<u8> {
        encode_value(value)
    }

    fn decode(bytes: &[u8]) -> Result<Self::Value, StoreError> {
        decode_value(Self::CF, bytes)
    }
}

/// `subject_pending`: an order to (re)index, queued by the event that calls
/// for it (its sequence; 0 for a rebuild); no value.
#[derive(Debug)]
pub struct SubjectPending;

impl Schema for SubjectPending {
    const CF: &'static str = super::CF_SUBJECT_PENDING;
    type Key = (Uuid, u64);
    type Value = ();

    fn key((order_id, sequence): &Self::Key) -> impl AsRef<[u8]> {
        let mut k = [0u8; 24];
        k[..16].copy_from_slice(order_id.as_bytes());
        k[16..].copy_from_slice(&sequence.to_be_bytes());
        k
    }

    fn decode_key(bytes: &[u8]) -> Result<Self::Key, StoreError> {
        let k = fixed::<24>(Self::CF, bytes)?;
        Ok((
            Uuid::from_bytes(k[..16].try_into().expect("16 bytes")),
            u64::from_be_bytes(k[16..].try_into().expect("8 bytes")),
        ))
    }

    fn encode(_: &()) -> Vec<u8> {
        Vec::new()
    }

    fn decode(_: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A key of the subject index: the identifier's kind, the first two bytes
/// of its blind id (the bucket a lookup scans; RocksDB copies keys into its
/// MANIFEST and LOG, so keys hold no more of it), and the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubjectEntry {
    pub kind: crate::projections::subjects::Kind,
    pub bucket: [u8; 2],
    pub order_id: Uuid,
}

/// `subject_index`: which orders hold an identifier, by bucket; no value.
/// The whole blind id is in `subject_orders`.
#[derive(Debug)]
pub struct SubjectIndexRows;

impl Schema for SubjectIndexRows {
    const CF: &'static str = super::CF_SUBJECT_INDEX;
    type Key = SubjectEntry;
    type Value = ();

    fn key(e: &SubjectEntry) -> impl AsRef<[u8]> {
        let mut k = [0u8; 19];
        k[0] = e.kind.tag();
        k[1..3].copy_from_slice(&e.bucket);
        k[3..].copy_from_slice(e.order_id.as_bytes());
        k
    }

    fn decode_key(bytes: &[u8]) -> Result<SubjectEntry, StoreError> {
        let k = fixed::<19>(Self::CF, bytes)?;
        Ok(SubjectEntry {
            kind: subject_kind(Self::CF, k[0])?,
            bucket: [k[1], k[2]],
            order_id: Uuid::from_bytes(k[3..].try_into().expect("16 bytes")),
        })
    }

    fn encode(_: &()) -> Vec<u8> {
        Vec::new()
    }

    fn decode(_: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
}

/// `subject_orders`: an order's entry per identifier kind, with its whole
/// blind id; by order, so an erasure finds and purges them.
#[derive(Debug)]
pub struct SubjectOrders;

impl Schema for SubjectOrders {
    const CF: &'static str = super::CF_SUBJECT_ORDERS;
    type Key = (Uuid, crate::projections::subjects::Kind);
    type Value = crate::projections::subjects::Blind;

    fn key((order_id, kind): &Self::Key) -> impl AsRef<[u8]> {
        let mut k = [0u8; 17];
        k[..16].copy_from_slice(order_id.as_bytes());
        k[16] = kind.tag();
        k
    }

    fn decode_key(bytes: &[u8]) -> Result<Self::Key, StoreError> {
        let k = fixed::<17>(Self::CF, bytes)?;
        Ok((
            Uuid::from_bytes(k[..16].try_into().expect("16 bytes")),
            subject_kind(Self::CF, k[16])?,
        ))
    }

    fn encode(blind: &Self::Value) -> Vec<u8> {
        blind.to_vec()
    }

    fn decode(bytes: &[u8]) -> Result<Self::Value, StoreError> {
        fixed::<32>(Self::CF, bytes)
    }
}

/// A `meta` key without its schema's prefix.
fn unprefixed<S: Schema>(bytes: &[u8]) -> Result<&[u8], StoreError> {
    bytes
        .strip_prefix(S::PREFIX)
        .ok_or_else(|| corrupt(S::CF, "key without the row kind's prefix".into()))
}

fn subject_kind(
    cf: &'static str,
    tag: u8,
) -> Result<crate::projections::subjects::Kind, StoreError> {
    crate::projections::subjects::Kind::from_tag(tag)
        .ok_or_else(|| corrupt(cf, format!("unknown identifier kind {tag}")))
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

/// A row's key and value as stored.
type RawRow = (Box<[u8]>, Box<[u8]>);

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

    /// Stages a merge operand in `batch` (column families with a merge
    /// operator: `order_state`, `order_placed`).
    pub fn merge(&self, batch: &mut WriteBatch, key: &S::Key, value: &S::Value) {
        batch.merge_cf(self.cf(), S::key(key), S::encode(value));
    }

    /// The rows of `keys`, in their order, with one multi-get (`sorted`:
    /// the keys come in key order, which lets RocksDB skip a sort).
    pub fn get_many(
        &self,
        keys: &[S::Key],
        sorted: bool,
    ) -> Result<Vec<Option<S::Value>>, StoreError> {
        let raw: Vec<_> = keys.iter().map(S::key).collect();
        debug_assert!(
            !sorted || raw.windows(2).all(|w| w[0].as_ref() <= w[1].as_ref()),
            "get_many with sorted = true needs keys in key order"
        );
        self.store
            .db()
            .batched_multi_get_cf(self.cf(), raw.iter().map(AsRef::as_ref), sorted)
            .into_iter()
            .map(|row| match row? {
                Some(bytes) => S::decode(&bytes).map(Some),
                None => Ok(None),
            })
            .collect()
    }

    /// Raw rows from `from` (or the schema's first) to the end of its prefix.
    fn scan(&self, from: Option<Vec<u8>>) -> impl Iterator<Item = Result<RawRow, StoreError>> + '_ {
        let from = from.unwrap_or_else(|| S::PREFIX.to_vec());
        self.store
            .db()
            .iterator_cf(self.cf(), IteratorMode::From(&from, Direction::Forward))
            .map(|item| item.map_err(StoreError::from))
            .take_while(|item| {
                item.as_ref()
                    .map_or(true, |(k, _)| k.starts_with(S::PREFIX))
            })
    }

    /// Stages the deletion of every row in `batch` (keys are not decoded,
    /// so a row no codec reads goes too); answers how many.
    pub fn clear(&self, batch: &mut WriteBatch) -> Result<u64, StoreError> {
        let mut n = 0;
        for item in self.scan(None) {
            batch.delete_cf(self.cf(), item?.0);
            n += 1;
        }
        Ok(n)
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.scan(None).next().transpose()?.is_none())
    }

    /// Every row, in key order.
    pub fn rows(&self) -> impl Iterator<Item = Result<(S::Key, S::Value), StoreError>> + '_ {
        self.scan(None).map(decode_row::<S>)
    }

    /// The rows from `from` on (included), in key order, while `within`
    /// holds for their key: the row that ends the range has only its key
    /// read, not its value.
    pub fn rows_while<'t>(
        &'t self,
        from: &S::Key,
        mut within: impl FnMut(&S::Key) -> bool + 't,
    ) -> impl Iterator<Item = Result<(S::Key, S::Value), StoreError>> + 't {
        self.scan(Some(S::key(from).as_ref().to_vec()))
            .map_while(move |item| {
                let (k, v) = match item {
                    Ok(row) => row,
                    Err(e) => return Some(Err(e)),
                };
                match S::decode_key(&k) {
                    Ok(key) if within(&key) => Some(S::decode(&v).map(|value| (key, value))),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                }
            })
    }

    /// The rows whose key `keep` takes, in key order; the value of a row
    /// it does not take is not decoded.
    pub fn rows_if<'t>(
        &'t self,
        mut keep: impl FnMut(&S::Key) -> bool + 't,
    ) -> impl Iterator<Item = Result<(S::Key, S::Value), StoreError>> + 't {
        self.scan(None).filter_map(move |item| {
            let (k, v) = match item {
                Ok(row) => row,
                Err(e) => return Some(Err(e)),
            };
            match S::decode_key(&k) {
                Ok(key) if keep(&key) => Some(S::decode(&v).map(|value| (key, value))),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        })
    }

    /// Every key, in order (values are not decoded).
    pub fn keys(&self) -> impl Iterator<Item = Result<S::Key, StoreError>> + '_ {
        self.scan(None).map(|item| S::decode_key(&item?.0))
    }

    /// The keys from `from` on (included), in order.
    pub fn keys_from(
        &self,
        from: &S::Key,
    ) -> impl Iterator<Item = Result<S::Key, StoreError>> + '_ {
        self.scan(Some(S::key(from).as_ref().to_vec()))
            .map(|item| S::decode_key(&item?.0))
    }

    /// How many rows (reads every key).
    pub fn count(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        for item in self.scan(None) {
            item?;
            n += 1;
        }
        Ok(n)
    }
}

fn decode_row<S: Schema>(
    item: Result<RawRow, StoreError>,
) -> Result<(S::Key, S::Value), StoreError> {
    let (k, v) = item?;
    Ok((S::decode_key(&k)?, S::decode(&v)?))
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

    #[test]
    fn schemas_sharing_meta_see_only_their_own_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let w = WriteOptions::default();
        let offsets = store.table::<KeyTopicOffsets>();
        offsets.put_now(&2, &70, &w).unwrap();
        offsets.put_now(&0, &5, &w).unwrap();
        store
            .table::<KeysCurrentAt>()
            .put_now(&(), &123, &w)
            .unwrap();
        store.table::<StateFormat>().put_now(&(), &1, &w).unwrap();
        store
            .table::<SubjectIndexKek>()
            .put_now(&(), &crate::crypto::kek::KekId([7; 8]), &w)
            .unwrap();
        let rows: Vec<(i32, i64)> = offsets.rows().collect::<Result<_, _>>().unwrap();
        assert_eq!(rows, vec![(0, 5), (2, 70)]);
        assert_eq!(store.table::<KeysCurrentAt>().get(&()).unwrap(), Some(123));
        assert_eq!(store.table::<KeysCurrentAt>().count().unwrap(), 1);
        assert!(store.table::<RetiredLogKeys>().is_empty().unwrap());
        assert!(!store.table::<SubjectIndexPurging>().contains(&()).unwrap());
        // The layout of the rows already on disk: prefix, then the partition.
        let raw = store
            .db()
            .get_cf(store.cf(super::super::CF_META), b"keys-offset/\0\0\0\x02")
            .unwrap();
        assert_eq!(raw, Some(70i64.to_be_bytes().to_vec()));
    }

    #[test]
    fn feed_keys_scan_from_a_position_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let feed = store.table::<ShippingFeed>();
        let entry = |version| crate::projections::FeedEntry {
            order_id: [1; 16],
            change: crate::projections::model::ChangeKind::Placed,
            classes: vec![],
            version,
            at_ms: 5,
        };
        let key = |party: &str, partition, offset| FeedKey {
            party: party.into(),
            partition,
            offset,
        };
        let mut batch = WriteBatch::default();
        for (party, partition, offset) in [("sf", 0, 3), ("sf", 0, 9), ("sf", 1, 2), ("zto", 0, 1)]
        {
            feed.put(&mut batch, &key(party, partition, offset), &entry(offset));
        }
        store.db().write(batch).unwrap();
        let from: Vec<FeedKey> = feed
            .keys_from(&key("sf", 0, 4))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            from,
            vec![key("sf", 0, 9), key("sf", 1, 2), key("zto", 0, 1)]
        );
        let got = feed
            .get_many(&[key("sf", 1, 2), key("sf", 1, 3), key("zto", 0, 1)], true)
            .unwrap();
        assert_eq!(got, vec![Some(entry(2)), None, Some(entry(1))]);
        let zto: Vec<(FeedKey, _)> = feed
            .rows_if(|k| k.party == "zto")
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(zto, vec![(key("zto", 0, 1), entry(1))]);
        // `len(id) | id | partition | offset`, as feeds were always written.
        let mut raw = vec![2u8];
        raw.extend_from_slice(b"sf");
        raw.extend_from_slice(&1u32.to_be_bytes());
        raw.extend_from_slice(&2u64.to_be_bytes());
        assert_eq!(feed_key(&key("sf", 1, 2)), raw);
        assert!(decode_feed_key("shipping_feed", &raw[..raw.len() - 1]).is_err());
    }

    #[test]
    fn no_meta_row_kind_reads_another_kinds_rows() {
        let prefixes = [
            StateFormat::PREFIX,
            KeysCurrentAt::PREFIX,
            SubjectIndexKek::PREFIX,
            SubjectIndexPurging::PREFIX,
            KeyTopicOffsets::PREFIX,
            RetiredLogKeys::PREFIX,
        ];
        for (i, a) in prefixes.iter().enumerate() {
            for (j, b) in prefixes.iter().enumerate() {
                assert!(i == j || !b.starts_with(a), "{a:?} is a prefix of {b:?}");
            }
        }
    }
}
