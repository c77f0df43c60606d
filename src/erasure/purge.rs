//! The purge queue: a destroyed key or a view row that dropped its sealed
//! fields is still on disk (memtable, WAL, older SST files) until RocksDB
//! compacts it away. Whoever destroys (the key follower, the projector) puts
//! a row in `purge_queue` in the same WriteBatch as the destruction, so the
//! promise to purge is as durable as the destruction itself. One background
//! thread drains the queue: it flushes the memtables and the WAL, compacts the
//! ranges of every queued order at once (a burst of erasures costs one
//! purge), and only then deletes the queue rows. Rows left by a crash are
//! drained at the next start.
//!
//! The queue also tells how far this node's disk is clean: per source and
//! partition, every destruction read before the first offset still queued is
//! purged ([`PurgeStatus::purged_up_to`]).
//!
//! Between purges, the same thread flushes the memtables of a store that has
//! gone quiet, so the next erasure's flush holds only its own rows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rocksdb::WriteBatch;
use uuid::Uuid;

use crate::shutdown::{CancellationToken, Panicked, Retry, Worker};
use crate::store::schema::{Erasures, PurgeQueue};
use crate::store::{
    CF_ORDER_KEYS, CF_ORDER_PLACED, CF_SUBJECT_ORDERS, CF_VIEW_ORDERS, Store, StoreError,
};

/// How long the purger waits after the first entry for more to join.
const LINGER: Duration = Duration::from_millis(5);

/// How long the store goes without a write before the purger flushes its
/// memtables (see [`QuietFlush`]).
const QUIET: Duration = Duration::from_secs(2);

/// Memtables holding fewer rows than this (every column family together;
/// an order placed and projected writes about ten) are not worth a quiet
/// flush: an erasure flushes that few in milliseconds, and a node with
/// little traffic would otherwise leave a tiny level-0 file in every column
/// family after each pause.
pub const QUIET_FLUSH_MIN_ROWS: u64 = 10_000;

/// Which reader met the destruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// The key follower, reading `orders.keys`: a tombstone or reduced row.
    Keys,
    /// The projector, reading the event log: an `OrderErased` event.
    Views,
}

impl Source {
    pub(crate) fn tag(self) -> u8 {
        match self {
            Source::Keys => b'k',
            Source::Views => b'v',
        }
    }

    pub(crate) fn from_tag(t: u8) -> Option<Self> {
        match t {
            b'k' => Some(Source::Keys),
            b'v' => Some(Source::Views),
            _ => None,
        }
    }
}

/// One queued purge: the order and where its destruction was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub source: Source,
    pub partition: i32,
    pub offset: i64,
    pub order_id: Uuid,
}

/// Stages the purge of `entry` (and the mark of where the erasure, made at
/// `at_ms`, was read) in `batch`, which the caller writes with the
/// destruction. Call [`PurgeStatus::noted`] before writing the batch (so the
/// purger never drains a row it does not count as pending) and
/// [`PurgeStatus::forget`] if the write fails.
pub fn stage(store: &Store, batch: &mut WriteBatch, entry: &Entry, at_ms: i64) {
    store.table::<PurgeQueue>().put(batch, entry, &());
    if entry.partition < 0 {
        return; // read nowhere (a reconciliation): no mark
    }
    store.table::<Erasures>().put(
        batch,
        &(entry.order_id, entry.source),
        &(entry.partition, entry.offset, at_ms),
    );
}

/// Where this node read the order's latest erasure from `source`:
/// `(partition, offset, made at ms)`, if it did.
pub fn mark(
    store: &Store,
    order_id: &Uuid,
    source: Source,
) -> Result<Option<(i32, i64, i64)>, StoreError> {
    store.table::<Erasures>().get(&(*order_id, source))
}

/// What is queued and what was purged, shared with the readers and the API.
#[derive(Debug, Default)]
pub struct PurgeStatus {
    /// Queued (written) and not purged yet.
    pending: Mutex<BTreeSet<Entry>>,
    wake: Condvar,
    /// Told after every purge: an erase request waiting for its rows to be
    /// gone from disk looks again at once (the purge is almost always the
    /// last of its steps).
    drained: tokio::sync::Notify,
    /// Purges run (each one flush and one compaction per column family).
    pub purges: AtomicU64,
    /// Orders whose rows were purged.
    pub purged: AtomicU64,
}

impl PurgeStatus {
    /// Records entries whose batch is about to be written (a pending entry
    /// whose row is not written yet only holds the watermark back a moment),
    /// and wakes the purger.
    pub fn noted(&self, entries: &[Entry]) {
        if entries.is_empty() {
            return;
        }
        self.pending.lock().extend(entries.iter().copied());
        self.wake.notify_all();
    }

    /// Takes back entries whose batch failed to be written.
    pub fn forget(&self, entries: &[Entry]) {
        let mut pending = self.pending.lock();
        for e in entries {
            pending.remove(e);
        }
    }

    /// Per partition: the offset before which every destruction read from
    /// `source` is purged from disk, given how far that source has `applied`.
    pub fn purged_up_to(&self, source: Source, applied: &BTreeMap<i32, i64>) -> BTreeMap<i32, i64> {
        let pending = self.pending.lock();
        let mut out = applied.clone();
        for (p, at) in out.iter_mut() {
            // Entries sort by source, partition, offset: the first one of
            // this partition is the lowest offset still queued.
            let from = Entry {
                source,
                partition: *p,
                offset: i64::MIN,
                order_id: Uuid::nil(),
            };
            if let Some(e) = pending.range(from..).next()
                && e.source == source
                && e.partition == *p
            {
                *at = (*at).min(e.offset);
            }
        }
        out
    }

    /// Completes after the next purge that ends once it is created
    /// (`notify_waiters` reaches every `Notified` from its creation): a
    /// waiter creates it before it looks at the positions, so a purge that
    /// ends meanwhile still wakes it.
    pub fn drained(&self) -> tokio::sync::futures::Notified<'_> {
        self.drained.notified()
    }

    /// Queued purges not run yet.
    pub fn queued(&self) -> usize {
        self.pending.lock().len()
    }
}

/// Flushes the memtables once the store has gone [`QUIET`] without a write.
///
/// A purge flushes every memtable, so an erasure pays for flushing whatever
/// was written since the last flush: up to the memtables' limit (64 MiB),
/// and the compactions that the new level-0 files start compete with its
/// range compactions for seconds after. On a node that has gone quiet, that
/// work is done before any erasure needs it: the first erasures after a
/// bulk load of a million orders took 100-340 ms instead of the 40-60 ms of
/// the ones after them. An erasure that comes sooner, or under a steady
/// write load (the store is then never quiet), still pays it.
#[derive(Debug)]
struct QuietFlush {
    /// RocksDB's last sequence number when last looked at (every write
    /// moves it; a flush does not).
    seq: u64,
    since: Instant,
    flushed: bool,
}

impl QuietFlush {
    fn new(store: &Store) -> Self {
        Self {
            seq: store.db().latest_sequence_number(),
            since: Instant::now(),
            flushed: false,
        }
    }

    /// Flushes if the store was quiet long enough, once per quiet spell.
    fn tick(&mut self, store: &Store) -> Result<bool, StoreError> {
        let seq = store.db().latest_sequence_number();
        if seq != self.seq {
            self.seq = seq;
            self.since = Instant::now();
            self.flushed = false;
            return Ok(false);
        }
        if self.flushed || self.since.elapsed() < QUIET {
            return Ok(false);
        }
        self.flushed = true;
        let rows = store.unflushed_rows();
        if rows < QUIET_FLUSH_MIN_ROWS {
            return Ok(false);
        }
        // Not waited for: an erasure that comes meanwhile waits for it in
        // its own flush, which would have had to write these rows anyway.
        store.flush_in_background()?;
        tracing::debug!(rows, "Store quiet: memtables flushed ahead of erasures.");
        Ok(true)
    }
}

/// The background purger.
#[derive(Debug)]
pub struct Purger {
    pub status: Arc<PurgeStatus>,
    worker: Worker,
}

/// The rows of an order a purge compacts away: those that held key bytes,
/// sealed fields or blind ids (`order_state` holds none).
fn ranges(ids: &BTreeSet<Uuid>) -> Vec<(&'static str, Vec<u8>)> {
    ids.iter()
        .flat_map(|id| {
            [
                CF_ORDER_KEYS,
                CF_VIEW_ORDERS,
                CF_ORDER_PLACED,
                CF_SUBJECT_ORDERS,
            ]
            .map(|cf| (cf, id.as_bytes().to_vec()))
        })
        .collect()
}

fn queued_rows(store: &Store) -> Result<Vec<Entry>, StoreError> {
    let mut out = Vec::new();
    for entry in store.table::<PurgeQueue>().keys() {
        match entry {
            Ok(e) => out.push(e),
            Err(StoreError::Corrupt { .. }) => {
                tracing::warn!("Unreadable purge queue row skipped.")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Purges every queued order once; returns how many.
fn drain(store: &Store, status: &PurgeStatus) -> Result<usize, StoreError> {
    let rows = queued_rows(store)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: BTreeSet<Uuid> = rows.iter().map(|e| e.order_id).collect();
    let report = store.purge(&ranges(&ids))?;
    let mut batch = WriteBatch::default();
    let queue = store.table::<PurgeQueue>();
    for e in &rows {
        queue.delete(&mut batch, e);
    }
    store.db().write(batch)?;
    {
        let mut pending = status.pending.lock();
        for e in &rows {
            pending.remove(e);
        }
    }
    status.drained.notify_waiters();
    status.purges.fetch_add(1, Ordering::Relaxed);
    status.purged.fetch_add(ids.len() as u64, Ordering::Relaxed);
    metrics::counter!(crate::telemetry::PURGES).increment(1);
    tracing::debug!(
        orders = ids.len(),
        elapsed_ms = report.elapsed.as_millis() as u64,
        flush_ms = report.flush.as_millis() as u64,
        compactions_ms = ?report
            .compactions
            .iter()
            .map(|(cf, t)| (*cf, t.as_millis() as u64))
            .collect::<Vec<_>>(),
        "Erased rows purged from disk."
    );
    Ok(ids.len())
}

impl Purger {
    /// Starts the purger, under `stop`; rows a crash left in the queue are
    /// purged first.
    pub fn start(store: Store, stop: CancellationToken) -> Result<Self, StoreError> {
        let status = Arc::new(PurgeStatus::default());
        status.noted(&queued_rows(&store)?);
        let status_t = status.clone();
        let worker = Worker::spawn("purger", stop, move |stop| {
            let mut retry = Retry::new(Duration::from_millis(100), Duration::from_secs(5));
            let mut quiet = QuietFlush::new(&store);
            loop {
                // Every queued row is pending (announced before it is
                // written, leftovers at start), so an empty set means
                // nothing to read: the queue is only scanned when there is
                // something to purge.
                let idle = {
                    let mut pending = status_t.pending.lock();
                    if pending.is_empty() && !stop.is_cancelled() {
                        status_t
                            .wake
                            .wait_for(&mut pending, Duration::from_millis(200));
                    }
                    pending.is_empty()
                };
                if idle {
                    if stop.is_cancelled() {
                        return;
                    }
                    if let Err(e) = quiet.tick(&store) {
                        tracing::warn!(error = %e, "Flushing a quiet store failed.");
                    }
                    continue;
                }
                // A moment more, so the other reader's half of the same
                // erasure (its key row and its event commit together) joins
                // this purge rather than costing a second one.
                std::thread::sleep(LINGER);
                let started = Instant::now();
                match drain(&store, &status_t) {
                    Ok(0) => {}
                    Ok(_) => {
                        retry.reset();
                        metrics::histogram!(crate::telemetry::PURGE_LATENCY)
                            .record(started.elapsed().as_secs_f64());
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "Purging erased rows from disk failed; retrying.");
                        // A stop drains what is queued: the pause is not cut.
                        std::thread::sleep(retry.pause());
                    }
                }
                if stop.is_cancelled() {
                    return;
                }
            }
        })
        .expect("spawn purger thread");
        Ok(Self { status, worker })
    }

    /// Drains what is queued, then stops.
    pub fn stop(self) -> Result<(), Panicked> {
        self.worker.token().cancel();
        self.status.wake.notify_all();
        self.worker.stop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Schema;

    #[test]
    fn queue_keys_round_trip_and_sort_by_source_partition_offset() {
        let a = Entry {
            source: Source::Keys,
            partition: 2,
            offset: 7,
            order_id: Uuid::now_v7(),
        };
        let key = |e: &Entry| PurgeQueue::key(e).as_ref().to_vec();
        assert_eq!(PurgeQueue::decode_key(&key(&a)).unwrap(), a);
        let b = Entry { offset: 300, ..a };
        assert!(key(&a) < key(&b));
    }

    #[test]
    fn purged_watermark_stops_at_the_first_queued_entry() {
        let status = PurgeStatus::default();
        let applied = BTreeMap::from([(0, 100), (1, 50)]);
        let e = |p, o| Entry {
            source: Source::Keys,
            partition: p,
            offset: o,
            order_id: Uuid::now_v7(),
        };
        status.noted(&[e(0, 40), e(0, 60)]);
        status.noted(&[Entry {
            source: Source::Views,
            ..e(1, 10)
        }]);
        assert_eq!(
            status.purged_up_to(Source::Keys, &applied),
            BTreeMap::from([(0, 40), (1, 50)])
        );
        assert_eq!(
            status.purged_up_to(Source::Views, &applied),
            BTreeMap::from([(0, 100), (1, 10)])
        );
    }

    /// Waits for the background flushes a tick started.
    fn settled(store: &Store) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.unflushed_rows() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        store.unflushed_rows()
    }

    #[test]
    fn a_quiet_store_has_its_memtables_flushed_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let put = |n: u64| {
            store
                .db()
                .put_cf(store.cf(CF_VIEW_ORDERS), n.to_be_bytes(), [7u8; 100])
                .unwrap()
        };
        // A few rows (a node with little traffic) are left for the next
        // erasure's flush.
        put(0);
        let mut quiet = QuietFlush::new(&store);
        quiet.since -= QUIET;
        assert!(!quiet.tick(&store).unwrap());
        assert_eq!(store.unflushed_rows(), 1);

        for n in 1..QUIET_FLUSH_MIN_ROWS {
            put(n);
        }
        assert_eq!(store.unflushed_rows(), QUIET_FLUSH_MIN_ROWS);
        let mut quiet = QuietFlush::new(&store);
        // Not quiet long enough yet.
        assert!(!quiet.tick(&store).unwrap());
        assert_eq!(store.unflushed_rows(), QUIET_FLUSH_MIN_ROWS);
        quiet.since -= QUIET;
        assert!(quiet.tick(&store).unwrap());
        assert_eq!(settled(&store), 0, "rows left in the memtables");
        // Once per quiet spell; a write starts a new one.
        quiet.since -= QUIET;
        assert!(!quiet.tick(&store).unwrap());
        put(u64::MAX);
        assert!(!quiet.tick(&store).unwrap());
        assert!(!quiet.flushed);
    }

    #[test]
    fn drained_entries_are_purged_and_leave_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = Uuid::now_v7();
        store
            .db()
            .put_cf(store.cf(CF_ORDER_KEYS), id.as_bytes(), b"wrapped")
            .unwrap();
        store
            .db()
            .delete_cf(store.cf(CF_ORDER_KEYS), id.as_bytes())
            .unwrap();
        let entry = Entry {
            source: Source::Keys,
            partition: 0,
            offset: 5,
            order_id: id,
        };
        let mut batch = WriteBatch::default();
        stage(&store, &mut batch, &entry, 42);
        store.db().write(batch).unwrap();
        let status = PurgeStatus::default();
        status.noted(&[entry]);
        assert_eq!(drain(&store, &status).unwrap(), 1);
        assert_eq!(status.queued(), 0);
        assert!(queued_rows(&store).unwrap().is_empty());
        assert_eq!(mark(&store, &id, Source::Keys).unwrap(), Some((0, 5, 42)));
        assert_eq!(drain(&store, &status).unwrap(), 0);
    }
}
