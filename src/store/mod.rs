//! RocksDB: one database per node, one column family per kind of row.
//!
//! ```text
//! column family    key                          value
//! order_keys       order id (16 bytes)          StoredKey (bincode): KEK id, key id, wrapped class subkeys
//! shredded_keys    order id (16 bytes)          Shredded (bincode): key id, classes, when
//! view_orders      order id (16 bytes)          ProjectedOrder (bincode): public facts, sealed fields, shares
//! shipping_feed    provider | partition | offset   FeedEntry (bincode): order id, change
//! merchant_feed    merchant | partition | offset   FeedEntry (bincode)
//! view_offsets     partition (u32 BE)           next offset to project (u64 BE)
//! ```
//!
//! `provider` and `merchant` are length-prefixed (one byte) ids; partition is
//! u32 and offset u64, big-endian, so a feed scans in log order per partition.
//! A view change and the offset it came from are written in one WriteBatch.
//!
//! Keys are big-endian byte strings so scans come out in order. Plaintext
//! personal data and unwrapped keys never live here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, Options};

pub const CF_ORDER_KEYS: &str = "order_keys";
pub const CF_SHREDDED_KEYS: &str = "shredded_keys";
pub const CF_VIEW_ORDERS: &str = "view_orders";
pub const CF_SHIPPING_FEED: &str = "shipping_feed";
pub const CF_MERCHANT_FEED: &str = "merchant_feed";
pub const CF_VIEW_OFFSETS: &str = "view_offsets";

/// The column families that make up the views (digested by audits).
pub const VIEW_COLUMN_FAMILIES: &[&str] = &[CF_VIEW_ORDERS, CF_SHIPPING_FEED, CF_MERCHANT_FEED];

/// Every column family this version knows; all are created when missing.
pub const COLUMN_FAMILIES: &[&str] = &[
    CF_ORDER_KEYS,
    CF_SHREDDED_KEYS,
    CF_VIEW_ORDERS,
    CF_SHIPPING_FEED,
    CF_MERCHANT_FEED,
    CF_VIEW_OFFSETS,
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb at {path}: {source}")]
    Open {
        path: String,
        source: rocksdb::Error,
    },
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("no orderlog database at {0}")]
    NotFound(String),
    #[error("corrupt {cf} row: {reason}")]
    Corrupt { cf: &'static str, reason: String },
}

/// A shared handle on the node's RocksDB.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Obsolete WAL files are deleted at once rather than archived, so
        // erased data does not linger in old logs.
        opts.set_wal_ttl_seconds(0);
        opts.set_wal_size_limit_mb(0);
        opts.set_keep_log_file_num(5);
        let cfs = COLUMN_FAMILIES
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            db: Arc::new(db),
            path: path.to_owned(),
        })
    }

    /// Opens an existing database read-only, every column family, without
    /// taking its lock: audits read a node's keys and views while `serve` may
    /// be running (they then see the state as of this open, WAL included).
    /// Nothing is created and nothing is written.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        // RocksDB would create a missing directory even in read-only mode.
        if !path.join("CURRENT").is_file() {
            return Err(StoreError::NotFound(path.display().to_string()));
        }
        let opts = Options::default();
        let cfs = COLUMN_FAMILIES
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let db = DB::open_cf_descriptors_read_only(&opts, path, cfs, false).map_err(|source| {
            StoreError::Open {
                path: path.display().to_string(),
                source,
            }
        })?;
        Ok(Self {
            db: Arc::new(db),
            path: path.to_owned(),
        })
    }

    pub fn db(&self) -> &DB {
        &self.db
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The handle of a column family this module declares.
    pub fn cf(&self, name: &'static str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} is created at open"))
    }
}

/// What a physical purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    /// WAL files left after the purge (only the live one should remain).
    pub wal_files: usize,
    pub elapsed: std::time::Duration,
}

impl Store {
    /// Makes deleted rows really gone from disk. RocksDB keeps a deleted value
    /// in the memtable, in older SST files and in the WAL until compaction, so:
    /// flush every column family (the WAL that held the value becomes
    /// obsolete and is deleted at once, as WAL archiving is off), then compact
    /// each given key range down to the bottom level, which drops the old
    /// value together with its tombstone and deletes the SST files that held it.
    pub fn purge(&self, ranges: &[(&'static str, Vec<u8>)]) -> Result<PurgeReport, StoreError> {
        let started = std::time::Instant::now();
        let db = self.db();
        let mut flush = rocksdb::FlushOptions::default();
        flush.set_wait(true);
        let cfs: Vec<&ColumnFamily> = COLUMN_FAMILIES.iter().map(|n| self.cf(n)).collect();
        db.flush_cfs_opt(&cfs, &flush)?;
        db.flush_wal(true)?;
        let mut compact = rocksdb::CompactOptions::default();
        compact.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        compact.set_exclusive_manual_compaction(false);
        // One compaction per column family over the span of the given keys:
        // each compaction rewrites whole SST files, so many small ranges
        // (a rebuild that met thousands of erasures) would rewrite the same
        // files again and again.
        let mut spans: std::collections::BTreeMap<&'static str, (Vec<u8>, Vec<u8>)> =
            std::collections::BTreeMap::new();
        for (cf, key) in ranges {
            let mut end = key.clone();
            end.push(0xff);
            let span = spans
                .entry(cf)
                .or_insert_with(|| (key.clone(), end.clone()));
            if *key < span.0 {
                span.0 = key.clone();
            }
            if end > span.1 {
                span.1 = end;
            }
        }
        for (cf, (start, end)) in &spans {
            db.compact_range_cf_opt(
                self.cf(cf),
                Some(start.as_slice()),
                Some(end.as_slice()),
                &compact,
            );
        }
        let wal_files = std::fs::read_dir(&self.path)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .count()
            })
            .unwrap_or(0);
        Ok(PurgeReport {
            wal_files,
            elapsed: started.elapsed(),
        })
    }
}

/// bincode configuration for every stored value: varint integers, with a size
/// limit so a corrupt length prefix cannot make us allocate gigabytes.
pub fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 4 * 1024 * 1024 }>()
}

pub fn encode_value<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode_config()).expect("in-memory values always encode")
}

pub fn decode_value<T: serde::de::DeserializeOwned>(
    cf: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    let (v, n) = bincode::serde::decode_from_slice(bytes, bincode_config()).map_err(|e| {
        StoreError::Corrupt {
            cf,
            reason: e.to_string(),
        }
    })?;
    if n != bytes.len() {
        return Err(StoreError::Corrupt {
            cf,
            reason: format!("{} trailing bytes", bytes.len() - n),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_open_sees_the_rows_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let rw = Store::open(dir.path()).unwrap();
        rw.db()
            .put_cf(
                rw.cf(CF_VIEW_OFFSETS),
                7u32.to_be_bytes(),
                9u64.to_be_bytes(),
            )
            .unwrap();
        // The writer still holds the lock: a read-only open works beside it.
        let ro = Store::open_read_only(dir.path()).unwrap();
        let v = ro
            .db()
            .get_cf(ro.cf(CF_VIEW_OFFSETS), 7u32.to_be_bytes())
            .unwrap();
        assert_eq!(v.as_deref(), Some(&9u64.to_be_bytes()[..]));
        assert!(
            ro.db()
                .put_cf(ro.cf(CF_VIEW_OFFSETS), 1u32.to_be_bytes(), [0u8; 8])
                .is_err()
        );
        let missing = dir.path().join("nothing-here");
        assert!(matches!(
            Store::open_read_only(&missing),
            Err(StoreError::NotFound(_))
        ));
        assert!(!missing.exists(), "a read-only open creates nothing");
    }
}
