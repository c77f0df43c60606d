//! One partition as its writer holds it: where its knowledge of the log ends
//! and a bounded cache of hot orders over the stored order state; and the
//! catch-up that brings the stored state of a partition to the end of the
//! log before the writer decides anything on it.
//!
//! The cache never holds anything newer than the store: the writer stores the
//! effects of an acknowledged batch before it caches them, and what the
//! projector stores is never newer than what the log holds. So an evicted
//! order is read back from RocksDB as it was.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use lru::LruCache;
use rocksdb::WriteBatch;
use uuid::Uuid;

use super::log_reader::{RawRecord, scan};
use super::state::{Absorbed, OrderRecord, StateFolder, load_order};
use crate::crypto::LogKeys;
use crate::events;
use crate::kafka::KafkaSettings;
use crate::shutdown::CancellationToken;
use crate::store::{Store, StoreError};

/// Default number of orders the writers keep in memory, all partitions together.
pub const DEFAULT_CACHE_ORDERS: usize = 50_000;

/// Records folded per RocksDB WriteBatch during a catch-up.
const CATCH_UP_BATCH: usize = 5_000;

/// A tail up to this long a writer folds itself; a longer one it leaves to
/// the projector, which folds the order state anyway (with the views), and
/// waits for.
const OWN_FOLD_MAX: i64 = 20_000;

/// How long the projector may make no progress on a partition before the
/// writer folds the rest of the tail itself.
const PROJECTOR_STALL: Duration = Duration::from_secs(10);

/// What a writer keeps in memory for its partition.
#[derive(Debug)]
pub struct PartitionState {
    cache: LruCache<Uuid, OrderRecord>,
    /// Next offset the writer has not folded: the end of its catch-up, then
    /// past its own acknowledged records and anything it settled.
    pub next_offset: i64,
    /// The stored state may lag what the writer knows is in the log (a
    /// store write failed): the partition is settled again before the next
    /// batch is decided.
    pub stale: bool,
}

impl PartitionState {
    pub fn new(capacity: usize, next_offset: i64) -> Self {
        Self {
            cache: LruCache::new(NonZeroUsize::new(capacity.max(1)).expect("at least 1")),
            next_offset,
            stale: false,
        }
    }

    /// The order as commands are decided against it: cached, or read from
    /// the store (and cached). `None` when it was never placed.
    pub fn order(
        &mut self,
        store: &Store,
        order_id: &Uuid,
    ) -> Result<Option<OrderRecord>, StoreError> {
        if let Some(r) = self.cache.get(order_id) {
            return Ok(Some(r.clone()));
        }
        let r = load_order(store, order_id)?;
        if let Some(r) = &r {
            self.cache.put(*order_id, r.clone());
        }
        Ok(r)
    }

    /// The cached order, without touching the store or the LRU order.
    pub fn peek(&self, order_id: &Uuid) -> Option<&OrderRecord> {
        self.cache.peek(order_id)
    }

    /// Caches an order whose state is stored.
    pub fn remember(&mut self, order_id: Uuid, rec: OrderRecord) {
        self.cache.put(order_id, rec);
    }

    /// Drops an order from the cache: its stored state changed underneath.
    pub fn forget(&mut self, order_id: &Uuid) {
        self.cache.pop(order_id);
    }
}

/// What folding a stretch of the log into the stored state found.
#[derive(Debug, Default)]
pub struct CatchUp {
    /// Records read (barriers included).
    pub records: u64,
    /// Events applied to an order (the rest were already stored).
    pub applied: u64,
    /// Records that do not decode or do not continue their order's chain.
    pub skipped: u64,
    /// Orders touched, in the order first seen (only when asked for with
    /// [`StoreFolder::tracking_touched`]: a rebuild of the whole log would
    /// hold every order id).
    pub touched: Vec<Uuid>,
    /// Orders whose erasure (of some classes or all) was folded.
    pub erased: Vec<Uuid>,
    /// Next offset after what was read.
    pub end: i64,
}

/// Folds records into the stored order state, `CATCH_UP_BATCH` records per
/// WriteBatch. Writes no checkpoint: the projector's offsets, written with
/// the views, stay the only one, and folding a record twice changes nothing.
#[derive(Debug)]
pub struct StoreFolder {
    store: Store,
    keys: Arc<LogKeys>,
    /// Partitions of the topic, which say each order's partition.
    partitions: usize,
    folder: StateFolder,
    batch_records: usize,
    partition: i32,
    pub report: CatchUp,
    seen: Option<std::collections::HashSet<Uuid>>,
    erased_seen: std::collections::HashSet<Uuid>,
}

impl StoreFolder {
    pub fn new(
        store: Store,
        keys: Arc<LogKeys>,
        partitions: usize,
        idempotency_ttl: Duration,
        partition: i32,
        from: i64,
    ) -> Self {
        Self {
            folder: StateFolder::new(store.clone(), idempotency_ttl),
            store,
            keys,
            partitions,
            batch_records: 0,
            partition,
            report: CatchUp {
                end: from,
                ..CatchUp::default()
            },
            seen: None,
            erased_seen: std::collections::HashSet::new(),
        }
    }

    /// Also lists the orders touched (for a writer whose cache must forget them).
    pub fn tracking_touched(mut self) -> Self {
        self.seen = Some(std::collections::HashSet::new());
        self
    }

    pub fn fold(&mut self, r: &RawRecord) -> Result<(), StoreError> {
        self.report.records += 1;
        self.report.end = self.report.end.max(r.offset + 1);
        if r.barrier {
            return Ok(());
        }
        let partition = self.partition;
        match events::decode_authentic(&r.payload, &self.keys, Some((self.partition, r.offset))) {
            // A record of an order that belongs to another partition: a copy
            // produced there (the projector dead-letters it too).
            Ok(env)
                if crate::kafka::partition_of(&env.meta.order_id, self.partitions)
                    != partition as usize =>
            {
                self.report.skipped += 1;
                tracing::warn!(partition, offset = r.offset, order_id = %env.meta.order_id, "Record outside its order's partition; skipped.");
            }
            // The projector refuses (dead-letters) a record keyed to another
            // order; so does the state, on either side.
            Ok(env)
                if r.key
                    .as_deref()
                    .is_some_and(|k| k != env.meta.order_id.as_bytes()) =>
            {
                self.report.skipped += 1;
                tracing::warn!(partition, offset = r.offset, order_id = %env.meta.order_id, "Record keyed to another order; skipped.");
            }
            Ok(env) => {
                let f = self
                    .folder
                    .fold(&env, &r.payload, r.offset, r.idempotency)?;
                match f.absorbed {
                    Absorbed::Applied => self.report.applied += 1,
                    Absorbed::Already => {}
                    Absorbed::Broken => {
                        self.report.skipped += 1;
                        tracing::warn!(partition, offset = r.offset, order_id = %f.order_id, "Record does not continue its order's chain; skipped.");
                    }
                }
                if let Some(seen) = &mut self.seen
                    && seen.insert(f.order_id)
                {
                    self.report.touched.push(f.order_id);
                }
                // Erased orders, whoever folded the erasure first (the
                // projector folds the same records meanwhile).
                if f.erased && f.absorbed != Absorbed::Broken && self.erased_seen.insert(f.order_id)
                {
                    self.report.erased.push(f.order_id);
                }
            }
            Err(e) => {
                self.report.skipped += 1;
                tracing::warn!(partition, offset = r.offset, error = %e, "Undecodable or forged record skipped.");
            }
        }
        self.batch_records += 1;
        if self.batch_records >= CATCH_UP_BATCH {
            self.write()?;
        }
        Ok(())
    }

    fn write(&mut self) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        self.folder.stage(&mut batch, crate::clock::now_ms());
        self.store.db().write(batch)?;
        self.batch_records = 0;
        Ok(())
    }

    pub fn finish(mut self) -> Result<CatchUp, StoreError> {
        self.write()?;
        Ok(self.report)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Brings the stored state of `partition` up to `until` (exclusive; a barrier
/// the caller appended and Kafka acknowledged, so nothing before it can still
/// change): reads the log from `from` and folds every record. Blocking.
#[allow(clippy::too_many_arguments)]
pub fn catch_up(
    settings: &KafkaSettings,
    topic: &str,
    store: &Store,
    keys: &Arc<LogKeys>,
    partitions: usize,
    idempotency_ttl: Duration,
    partition: i32,
    from: i64,
    until: i64,
    stall: Duration,
    stop: &CancellationToken,
) -> Result<CatchUp, CatchUpError> {
    let mut folder = StoreFolder::new(
        store.clone(),
        keys.clone(),
        partitions,
        idempotency_ttl,
        partition,
        from,
    );
    let mut failed = None;
    let end = scan(
        settings,
        topic,
        partition,
        from,
        Some(until),
        stall,
        stop,
        |r| {
            if failed.is_none()
                && let Err(e) = folder.fold(&r)
            {
                failed = Some(e);
            }
        },
    )?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    let mut report = folder.finish()?;
    report.end = report.end.max(end);
    Ok(report)
}

/// Brings the stored state of `partition` up to `until` when it already
/// covers the log up to the views' checkpoint: a short tail is folded here;
/// a long one (a new node, a node that was down long) is left to the
/// projector, which is folding it anyway, and this waits until the
/// checkpoint passes `until`. Should the projector stop making progress,
/// the rest is folded here. Blocking.
#[allow(clippy::too_many_arguments)]
pub fn follow(
    settings: &KafkaSettings,
    topic: &str,
    store: &Store,
    keys: &Arc<LogKeys>,
    partitions: usize,
    idempotency_ttl: Duration,
    partition: i32,
    until: i64,
    stall: Duration,
    stop: &CancellationToken,
) -> Result<CatchUp, CatchUpError> {
    let mut at = store.view_offset(partition)?;
    let mut progress = std::time::Instant::now();
    let mut logged = std::time::Instant::now();
    loop {
        if stop.is_cancelled() {
            return Err(CatchUpError::Kafka(rdkafka::error::KafkaError::Canceled));
        }
        if at >= until {
            return Ok(CatchUp {
                end: at,
                ..CatchUp::default()
            });
        }
        if until - at <= OWN_FOLD_MAX || progress.elapsed() > PROJECTOR_STALL {
            if progress.elapsed() > PROJECTOR_STALL {
                tracing::warn!(
                    partition,
                    at,
                    until,
                    "The projector makes no progress; the writer folds the tail itself."
                );
            }
            return catch_up(
                settings,
                topic,
                store,
                keys,
                partitions,
                idempotency_ttl,
                partition,
                at,
                until,
                stall,
                stop,
            );
        }
        if logged.elapsed() > Duration::from_secs(10) {
            tracing::info!(
                partition,
                at,
                until,
                "Waiting for the projector to fold the partition's tail."
            );
            logged = std::time::Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
        let now = store.view_offset(partition)?;
        if now > at {
            at = now;
            progress = std::time::Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Command, State, decide, fixtures};
    use crate::events::EventMeta;

    /// A record of the log: order `n`'s event `seq`, chained on `prev`.
    fn record(
        order_id: Uuid,
        command: Command,
        state: &State,
        prev: &[u8],
        offset: i64,
    ) -> RawRecord {
        let key = crate::crypto::OrderKey::generate();
        let event = decide(state, command).unwrap().remove(0);
        let meta = EventMeta {
            event_id: Uuid::now_v7(),
            order_id,
            sequence: state.version + 1,
            occurred_at_ms: crate::clock::now_ms(),
            key_id: key.id(),
            prev_hash: if prev.is_empty() {
                [0; 32]
            } else {
                events::record_hash(prev)
            },
        };
        let env = events::seal_event(&event, meta, Some(&key)).unwrap();
        RawRecord {
            offset,
            key: Some(order_id.as_bytes().to_vec()),
            payload: events::encode(&env, &events::codec::test_keys()),
            idempotency: None,
            barrier: false,
        }
    }

    #[test]
    fn a_catch_up_applies_the_tail_once_and_a_second_pass_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = Uuid::now_v7();
        let placed = record(
            id,
            Command::PlaceOrder(fixtures::new_order(1, false)),
            &State::default(),
            &[],
            0,
        );
        let mut s1 = OrderRecord::default();
        s1.absorb(
            &events::decode(&placed.payload).unwrap(),
            &placed.payload,
            0,
        );
        let cancel = record(
            id,
            Command::CancelOrder {
                reason: crate::domain::CancelReason::CustomerRequest,
            },
            &s1.state,
            &placed.payload,
            2,
        );
        let barrier = RawRecord {
            offset: 1,
            key: None,
            payload: Vec::new(),
            idempotency: None,
            barrier: true,
        };
        let garbage = RawRecord {
            offset: 3,
            key: Some(id.as_bytes().to_vec()),
            payload: b"not an envelope".to_vec(),
            idempotency: None,
            barrier: false,
        };
        let tail = [placed, barrier, cancel, garbage];
        let run = |records: &[RawRecord]| {
            let mut f = StoreFolder::new(
                store.clone(),
                Arc::new(events::codec::test_keys()),
                1,
                Duration::from_secs(60),
                0,
                0,
            )
            .tracking_touched();
            for r in records {
                f.fold(r).unwrap();
            }
            f.finish().unwrap()
        };
        let first = run(&tail);
        assert_eq!(
            (first.records, first.applied, first.skipped, first.end),
            (4, 2, 1, 4)
        );
        assert_eq!(first.touched, vec![id]);
        let stored = load_order(&store, &id).unwrap().unwrap();
        assert_eq!(stored.state.version, 2);
        assert_eq!(stored.last_offset, 2);
        // A crash before the checkpoint moved: the same tail is read again.
        let second = run(&tail);
        assert_eq!((second.applied, second.skipped), (0, 1));
        assert_eq!(load_order(&store, &id).unwrap().unwrap(), stored);
    }

    #[test]
    fn the_cache_is_bounded_and_falls_back_to_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut p = PartitionState::new(2, 0);
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        for (n, id) in ids.iter().enumerate() {
            let rec = OrderRecord {
                last_offset: n as i64,
                state: State {
                    version: 1,
                    order: None,
                },
                ..OrderRecord::default()
            };
            let mut b = WriteBatch::default();
            super::super::state::stage_order(&store, &mut b, id, &rec, None);
            store.db().write(b).unwrap();
            p.remember(*id, rec);
        }
        assert!(p.peek(&ids[0]).is_none(), "the oldest order was evicted");
        let back = p.order(&store, &ids[0]).unwrap().unwrap();
        assert_eq!(back.last_offset, 0);
        assert!(p.order(&store, &Uuid::now_v7()).unwrap().is_none());
    }
}
