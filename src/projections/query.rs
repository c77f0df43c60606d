//! Reading the views: change feeds with cursors, single orders, and the
//! digest that proves two view stores equal.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::model::{FeedEntry, ProjectedOrder};
use crate::store::schema::{FeedKey, Schema, ViewOffsets, ViewOrders};
use crate::store::{Store, StoreError, VIEW_COLUMN_FAMILIES};

/// Where a feed reader is: per partition, the next offset it has not seen.
/// Opaque to clients: `c1.<partition>-<offset>.<partition>-<offset>...`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(pub BTreeMap<u32, u64>);

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("c1")?;
        for (p, o) in &self.0 {
            write!(f, ".{p}-{o}")?;
        }
        Ok(())
    }
}

impl FromStr for Cursor {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.split('.');
        if parts.next() != Some("c1") {
            return Err(());
        }
        let mut map = BTreeMap::new();
        for part in parts {
            let (p, o) = part.split_once('-').ok_or(())?;
            map.insert(p.parse().map_err(|_| ())?, o.parse().map_err(|_| ())?);
        }
        Ok(Cursor(map))
    }
}

/// One feed entry with its position.
#[derive(Debug, Clone)]
pub struct FeedItem {
    pub partition: u32,
    pub offset: u64,
    pub entry: FeedEntry,
}

/// Partitions the views have projected anything of.
pub fn partitions(store: &Store) -> Result<Vec<u32>, StoreError> {
    store
        .table::<ViewOffsets>()
        .keys()
        .map(|p| p.map(|p| p as u32))
        .collect()
}

/// Up to `limit` entries of `party`'s feed after `after`, and the cursor to
/// pass next time. Entries come in log order within each partition.
pub fn feed<S: Schema<Key = FeedKey, Value = FeedEntry>>(
    store: &Store,
    party: &str,
    after: &Cursor,
    limit: usize,
) -> Result<(Vec<FeedItem>, Cursor), StoreError> {
    let mut next = after.clone();
    let mut items = Vec::new();
    let table = store.table::<S>();
    for p in partitions(store)? {
        if items.len() >= limit {
            break;
        }
        let start = FeedKey {
            party: party.to_owned(),
            partition: p,
            offset: after.0.get(&p).copied().unwrap_or(0),
        };
        for row in table.rows_while(&start, |k| k.party == party && k.partition == p) {
            let (key, entry) = row?;
            items.push(FeedItem {
                partition: p,
                offset: key.offset,
                entry,
            });
            next.0.insert(p, key.offset + 1);
            if items.len() >= limit {
                break;
            }
        }
    }
    Ok((items, next))
}

pub fn order(store: &Store, id: Uuid) -> Result<Option<ProjectedOrder>, StoreError> {
    store.table::<ViewOrders>().get(&id)
}

/// SHA-256 of every view column family, row by row in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewDigest {
    pub per_view: BTreeMap<&'static str, (u64, String)>,
    pub total: String,
}

pub fn digest(store: &Store) -> Result<ViewDigest, StoreError> {
    let mut total = Sha256::new();
    let mut per_view = BTreeMap::new();
    for cf in VIEW_COLUMN_FAMILIES {
        let (rows, d) = store.digest(cf)?;
        let d = hex::encode(d);
        total.update(cf.as_bytes());
        total.update(&d);
        per_view.insert(*cf, (rows, d));
    }
    Ok(ViewDigest {
        per_view,
        total: hex::encode(total.finalize()),
    })
}
