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
//! order_state      order id (16 bytes)          format (1) | version (u64 BE) | StateRow (bincode)
//! order_placed     order id (16 bytes)          format (1) | version (u64 BE) | the sealed `OrderPlaced` record as in the log (empty once erased)
//! idempotency      key MAC (32 bytes)           expires at ms (i64 BE) | request digest (32) | order id (16) | version (u64 BE)
//! erase_intents    order id (16 bytes)          EraseIntent (bincode): classes (none = whole order), when
//! meta             name (UTF-8)                 small facts about the database itself (see below)
//! purge_queue      source (1) | partition (u32 BE) | offset (u64 BE) | order id (16)   empty: rows of this order to purge from disk
//! erasures         order id (16) | source (1)   partition (i32 BE) | offset (i64 BE): where this node read the order's last erasure
//! subject_index    kind (1) | bucket (2) | order id (16)   empty: an order holding an identifier of that kind whose blind id starts with the bucket
//! subject_orders   order id (16) | kind (1)     blind id (32): the reverse of `subject_index`, to remove an order's entries
//! subject_pending  order id (16) | sequence (u64 BE)   empty: an order whose index entries must be (re)computed
//! ```
//!
//! The `subject_*` column families are the blind subject index (see
//! [`crate::projections::subjects`]): HMACs under a key derived from the KEK,
//! never an identifier in clear. The projector queues `subject_pending` rows
//! in the batch of every placement and erasure it folds; the indexer turns
//! them into entries (opening the sealed fields with the vault) and removes,
//! and purges from disk, the entries of erased classes.
//!
//! `purge_queue` and `erasures` rows are written in the same WriteBatch as
//! the change that destroyed a key (source `k`, from `orders.keys`) or dropped
//! a view's sealed fields (source `v`, from the event log); see
//! [`crate::erasure`].
//!
//! `meta` rows: `order_state.format` (one byte) is written once the order
//! state has been built from the start of the log; a data directory of an
//! earlier version, whose views are current but which has no order state
//! yet, lacks it, and the writers then build the state from offset 0.
//!
//! `order_state` is what commands are decided against (see
//! [`crate::service::state`]). Two writers keep it: the projector, in the same
//! WriteBatch as the views and `view_offsets` (so it is exactly-once and
//! survives crashes), and the writer, which stores the effects of its own
//! acknowledged batches before answering. Both derive every row from the log,
//! so a row with the same version is the same row; the column family's merge
//! operator keeps the highest version, and neither writer can move an order
//! back in time whatever order their writes land in. Rows are written with
//! `merge`, never `put`. `order_placed` works the same way: its placement
//! (version 1) gives way to the empty marker of the erasure (a higher
//! version), so the sealed bytes cannot come back.
//!
//! `idempotency` rows expire: a lookup ignores an expired row, and a
//! compaction filter drops it from disk.
//!
//! `provider` and `merchant` are length-prefixed (one byte) ids; partition is
//! u32 and offset u64, big-endian, so a feed scans in log order per partition.
//! A view change and the offset it came from are written in one WriteBatch.
//!
//! Keys are big-endian byte strings so scans come out in order. Plaintext
//! personal data and unwrapped keys never live here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, IteratorMode, Options};

pub mod schema;

pub use schema::{Schema, Table};

pub const CF_ORDER_KEYS: &str = "order_keys";
pub const CF_SHREDDED_KEYS: &str = "shredded_keys";
pub const CF_VIEW_ORDERS: &str = "view_orders";
pub const CF_SHIPPING_FEED: &str = "shipping_feed";
pub const CF_MERCHANT_FEED: &str = "merchant_feed";
pub const CF_VIEW_OFFSETS: &str = "view_offsets";
pub const CF_ORDER_STATE: &str = "order_state";
pub const CF_ORDER_PLACED: &str = "order_placed";
pub const CF_IDEMPOTENCY: &str = "idempotency";
pub const CF_ERASE_INTENTS: &str = "erase_intents";
pub const CF_META: &str = "meta";
pub const CF_PURGE_QUEUE: &str = "purge_queue";
pub const CF_ERASURES: &str = "erasures";
pub const CF_SUBJECT_INDEX: &str = "subject_index";
pub const CF_SUBJECT_ORDERS: &str = "subject_orders";
pub const CF_SUBJECT_PENDING: &str = "subject_pending";

/// The column families derived from the log at `view_offsets`: the views and
/// the order state (digested by audits, which compare them with a replay).
pub const VIEW_COLUMN_FAMILIES: &[&str] = &[
    CF_VIEW_ORDERS,
    CF_SHIPPING_FEED,
    CF_MERCHANT_FEED,
    CF_ORDER_STATE,
    CF_ORDER_PLACED,
];

/// Every column family this version knows; all are created when missing.
pub const COLUMN_FAMILIES: &[&str] = &[
    CF_ORDER_KEYS,
    CF_SHREDDED_KEYS,
    CF_VIEW_ORDERS,
    CF_SHIPPING_FEED,
    CF_MERCHANT_FEED,
    CF_VIEW_OFFSETS,
    CF_ORDER_STATE,
    CF_ORDER_PLACED,
    CF_IDEMPOTENCY,
    CF_ERASE_INTENTS,
    CF_META,
    CF_PURGE_QUEUE,
    CF_ERASURES,
    CF_SUBJECT_INDEX,
    CF_SUBJECT_ORDERS,
    CF_SUBJECT_PENDING,
];

/// Memory RocksDB may use, whatever the number of orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreTuning {
    /// One LRU block cache shared by every column family (uncompressed
    /// blocks, index and filter blocks included).
    pub block_cache_bytes: usize,
    /// Memtable size per column family; at most two per column family live
    /// at once.
    pub write_buffer_bytes: usize,
    /// All memtables together: past this, the largest is flushed.
    pub memtables_total_bytes: usize,
}

pub const DEFAULT_BLOCK_CACHE_MB: usize = 128;

/// SST file size of the column families an erasure purges (RocksDB's
/// default is 64 MiB).
const PURGED_FILE_BYTES: u64 = 1 << 20;

/// Target size of the first level below level 0 in those column families
/// (RocksDB's default is 256 MiB; the levels below grow tenfold each).
const PURGED_LEVEL_BASE_BYTES: u64 = 2 << 20;

/// RocksDB's background flushes and compactions (a quarter of them flushes).
const BACKGROUND_JOBS: i32 = 8;

impl Default for StoreTuning {
    fn default() -> Self {
        Self {
            block_cache_bytes: DEFAULT_BLOCK_CACHE_MB << 20,
            write_buffer_bytes: 16 << 20,
            memtables_total_bytes: 64 << 20,
        }
    }
}

impl StoreTuning {
    fn cf_options(&self, name: &str, cache: &rocksdb::Cache) -> Options {
        let mut block = rocksdb::BlockBasedOptions::default();
        block.set_block_cache(cache);
        // Index and filter blocks count against the cache, so memory stays
        // bounded as SST files accumulate.
        block.set_cache_index_and_filter_blocks(true);
        block.set_pin_l0_filter_and_index_blocks_in_cache(true);
        block.set_bloom_filter(10.0, false);
        let mut opts = Options::default();
        opts.set_block_based_table_factory(&block);
        opts.set_write_buffer_size(self.write_buffer_bytes);
        opts.set_max_write_buffer_number(2);
        if matches!(
            name,
            CF_ORDER_KEYS | CF_VIEW_ORDERS | CF_ORDER_PLACED | CF_SUBJECT_ORDERS
        ) {
            // An erasure's purge compacts its order's range out of these,
            // rewriting every SST file the range touches: small files keep
            // that rewrite (and the erase request's wait) short however
            // many orders the store holds.
            opts.set_target_file_size_base(PURGED_FILE_BYTES);
            // A purge's flush puts the erasure's tombstone in a level-0 file
            // with every order written since the last flush (the newest
            // ids), so that file spans from the erased id to the newest, and
            // the range compaction takes along every file of the level below
            // in that span. A small base level keeps that level small: below
            // it, the compaction narrows to the files holding the order.
            opts.set_max_bytes_for_level_base(PURGED_LEVEL_BASE_BYTES);
        }
        if matches!(name, CF_VIEW_ORDERS | CF_ORDER_STATE | CF_ORDER_PLACED) {
            // Folding a batch looks up every order it touches, mostly in
            // the memtables, and mostly new orders: a bloom filter over the
            // memtable's keys answers a miss without walking the skip list.
            opts.set_memtable_prefix_bloom_ratio(0.05);
            opts.set_memtable_whole_key_filtering(true);
        }
        match name {
            CF_ORDER_STATE | CF_ORDER_PLACED => {
                opts.set_merge_operator_associative(
                    "orderlog-highest-version",
                    crate::service::state::merge_highest_version,
                );
            }
            CF_IDEMPOTENCY => {
                opts.set_compaction_filter("orderlog-expired", |_level, _key, value| {
                    if crate::service::state::idempotency_expired(value, crate::clock::now_ms()) {
                        rocksdb::CompactionDecision::Remove
                    } else {
                        rocksdb::CompactionDecision::Keep
                    }
                });
            }
            _ => {}
        }
        opts
    }

    fn descriptors(&self) -> Vec<ColumnFamilyDescriptor> {
        let cache = rocksdb::Cache::new_lru_cache(self.block_cache_bytes);
        COLUMN_FAMILIES
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, self.cf_options(name, &cache)))
            .collect()
    }
}

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

impl StoreError {
    /// A row no codec reads (as opposed to RocksDB failing).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::Corrupt { .. })
    }
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
        Self::open_with(path, StoreTuning::default())
    }

    pub fn open_with(path: &Path, tuning: StoreTuning) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Obsolete WAL files are deleted at once rather than archived, so
        // erased data does not linger in old logs.
        opts.set_wal_ttl_seconds(0);
        opts.set_wal_size_limit_mb(0);
        opts.set_keep_log_file_num(5);
        // RocksDB's default of two background jobs is one flush thread and
        // one compaction thread: an erasure's purge (a flush of every column
        // family, then a range compaction in four of them) would queue its
        // four compactions behind each other and behind the projector's.
        // The jobs mostly wait on the disk, so more threads than cores pay.
        opts.set_max_background_jobs(BACKGROUND_JOBS);
        opts.set_write_buffer_manager(&rocksdb::WriteBufferManager::new_write_buffer_manager(
            tuning.memtables_total_bytes,
            false,
        ));
        let db = DB::open_cf_descriptors(&opts, path, tuning.descriptors()).map_err(|source| {
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
        let cfs = StoreTuning::default().descriptors();
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

    /// Next offset of `partition` the views (and the order state, written in
    /// the same batch) have not folded; 0 when nothing is stored.
    pub fn view_offset(&self, partition: i32) -> Result<i64, StoreError> {
        Ok(self
            .table::<schema::ViewOffsets>()
            .get(&partition)?
            .unwrap_or(0))
    }

    /// The handle of a column family this module declares.
    pub fn cf(&self, name: &'static str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} is created at open"))
    }
}

/// A compaction that takes a range down to the bottom level, dropping deleted
/// values with their tombstones. The files it writes into the bottom level
/// already had the range merged, so they are not compacted a second time
/// (`ForceOptimized`); automatic compactions go on meanwhile.
fn purge_compaction() -> rocksdb::CompactOptions {
    let mut compact = rocksdb::CompactOptions::default();
    compact.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::ForceOptimized);
    compact.set_exclusive_manual_compaction(false);
    compact
}

/// RocksDB's memory by kind, in bytes (see [`Store::memory`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreMemory {
    /// Blocks, index and filter blocks in the shared cache (held near
    /// `--block-cache-mb`; pinned blocks can take it past that).
    pub block_cache: u64,
    /// Every column family's memtables, the active and those being flushed,
    /// as allocated (an empty memtable counts its first arena block, and
    /// one with a bloom filter its filter). The write buffer manager flushes
    /// past 64 MiB without stalling writes, so this can pass it while the
    /// flush runs.
    pub memtables: u64,
    /// SST readers' memory outside the cache.
    pub table_readers: u64,
}

impl StoreMemory {
    /// The kinds, named as the metric labels them; they add up.
    pub fn by_kind(&self) -> [(&'static str, u64); 3] {
        [
            ("block_cache", self.block_cache),
            ("memtables", self.memtables),
            ("table_readers", self.table_readers),
        ]
    }
}

/// What a physical purge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeReport {
    /// WAL files left after the purge (only the live one should remain).
    pub wal_files: usize,
    pub elapsed: std::time::Duration,
    /// Of `elapsed`, the flush of the memtables and the WAL.
    pub flush: std::time::Duration,
    /// Of `elapsed`, each column family's range compaction (side by side).
    pub compactions: Vec<(&'static str, std::time::Duration)>,
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
        self.flush_everything()?;
        let flush = started.elapsed();
        let compact = purge_compaction();
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
        // The column families' compactions run side by side: each is mostly
        // waiting on its own files.
        let compactions = std::thread::scope(|s| {
            let running: Vec<_> = spans
                .iter()
                .map(|(name, (start, end))| {
                    let (cf, compact) = (self.cf(name), &compact);
                    s.spawn(move || {
                        let t = std::time::Instant::now();
                        db.compact_range_cf_opt(
                            cf,
                            Some(start.as_slice()),
                            Some(end.as_slice()),
                            compact,
                        );
                        (*name, t.elapsed())
                    })
                })
                .collect();
            running
                .into_iter()
                .map(|h| h.join().expect("a range compaction does not panic"))
                .collect()
        });
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
            flush,
            compactions,
        })
    }

    /// Flushes every column family's memtables, then the WAL: what was
    /// deleted is then only in SST files (the WAL that held it is obsolete,
    /// and deleted at once as archiving is off).
    fn flush_everything(&self) -> Result<(), StoreError> {
        self.flush_memtables(true)?;
        self.db().flush_wal(true)?;
        Ok(())
    }

    /// Flushes every column family's memtables, waiting for it or not.
    fn flush_memtables(&self, wait: bool) -> Result<(), StoreError> {
        let mut flush = rocksdb::FlushOptions::default();
        flush.set_wait(wait);
        let cfs: Vec<&ColumnFamily> = COLUMN_FAMILIES.iter().map(|n| self.cf(n)).collect();
        self.db().flush_cfs_opt(&cfs, &flush)?;
        Ok(())
    }

    /// An integer property of RocksDB's, summed over every column family.
    fn sum_property(&self, property: &str) -> u64 {
        COLUMN_FAMILIES
            .iter()
            .filter_map(|name| {
                self.db()
                    .property_int_value_cf(self.cf(name), property)
                    .ok()
                    .flatten()
            })
            .sum()
    }

    /// Rows written to the memtables and not flushed yet, every column
    /// family together (what a flush now would write out).
    pub fn unflushed_rows(&self) -> u64 {
        self.sum_property("rocksdb.num-entries-active-mem-table")
            + self.sum_property("rocksdb.num-entries-imm-mem-tables")
    }

    /// Starts a flush of every column family's memtables and returns:
    /// housekeeping, not a purge (the WAL is neither waited for nor synced).
    pub(crate) fn flush_in_background(&self) -> Result<(), StoreError> {
        self.flush_memtables(false)
    }

    /// [`Store::purge`] of whole column families: flushed with the WAL, then
    /// every key range compacted to the bottom level.
    pub fn purge_all(&self, names: &[&'static str]) -> Result<(), StoreError> {
        let db = self.db();
        self.flush_everything()?;
        let compact = purge_compaction();
        for name in names {
            db.compact_range_cf_opt(self.cf(name), None::<&[u8]>, None::<&[u8]>, &compact);
        }
        Ok(())
    }

    /// What RocksDB holds in memory now, from its own accounting.
    pub fn memory(&self) -> StoreMemory {
        StoreMemory {
            // One cache serves every column family: any of them reports it
            // whole.
            block_cache: self
                .db()
                .property_int_value_cf(self.cf(COLUMN_FAMILIES[0]), "rocksdb.block-cache-usage")
                .ok()
                .flatten()
                .unwrap_or(0),
            memtables: self.sum_property("rocksdb.cur-size-all-mem-tables"),
            table_readers: self.sum_property("rocksdb.estimate-table-readers-mem"),
        }
    }

    /// SHA-256 over a column family's rows in key order (each key and value
    /// length-prefixed), and how many rows: equal on two stores exactly
    /// when the column family's bytes are.
    pub fn digest(&self, name: &'static str) -> Result<(u64, [u8; 32]), StoreError> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut rows = 0u64;
        for item in self.db().iterator_cf(self.cf(name), IteratorMode::Start) {
            let (k, v) = item?;
            for part in [&k[..], &v[..]] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part);
            }
            rows += 1;
        }
        Ok((rows, h.finalize().into()))
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
