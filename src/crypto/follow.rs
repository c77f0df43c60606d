//! Every node's vault follows the key replica topic (`orders.keys`), read
//! committed, for as long as it runs: keys placed through any node arrive,
//! and an erasure's tombstone (or reduced row), committed in the same
//! transaction as its `OrderErased` event, destroys the key on every node.
//!
//! Each row is applied in one RocksDB WriteBatch with the next offset of its
//! partition (`meta`, `keys-offset/<p>`) and, for an erasure, the row of the
//! purge queue ([`crate::erasure::purge`]) that gets the destroyed bytes off
//! the disk, batched with every other erasure queued meanwhile. A restart
//! reads only what it has not applied; applying a row twice changes nothing.
//! The batches are not fsynced: RocksDB loses only a suffix of unsynced
//! writes, so a row lost with a machine's crash is lost with its offset, and
//! read again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use super::replica::RestoreReport;
use super::vault::{KeyVault, VaultError};
use crate::domain::FieldClass;
use crate::erasure::purge::{self, PurgeStatus, Source};
use crate::kafka::KafkaSettings;
use crate::shutdown::{self, CancellationToken, Panicked, Retry, Worker};
use crate::store::Store;
use crate::store::schema::{KeyTopicOffsets, KeysCurrentAt, OrderKeys, RetiredLogKeys, Schema};
/// A vault last current longer ago than this is reconciled with the whole
/// key topic at start: the log cleaner drops a tombstone `delete.retention.ms`
/// (one day) after it was written, so a node down that long could miss one.
pub const RECONCILE_AFTER: Duration = Duration::from_secs(6 * 3600);

/// How often the time the vault was last current is stored while nothing
/// else changes. It only decides whether a start reconciles (after
/// [`RECONCILE_AFTER`]), and a stored time that is older errs towards
/// reconciling; storing it at every empty poll kept an idle node writing
/// ten times a second, so its store was never quiet (see
/// `erasure::purge`).
const STORE_CURRENT_AT_EVERY: Duration = Duration::from_secs(60);

/// Whether a checkpoint stores when the vault was last current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CurrentAt {
    /// Always: at start, once caught up, at stop.
    Store,
    /// Only if it moved [`STORE_CURRENT_AT_EVERY`] since last stored.
    IfStale,
}

/// What the follower has applied, per partition of the key topic.
#[derive(Debug, Default)]
pub struct FollowStatus {
    positions: Mutex<BTreeMap<i32, i64>>,
    /// The end of the key topic as last read, and when (Unix ms) the
    /// follower last had applied everything up to the end read before.
    ends: Mutex<BTreeMap<i32, i64>>,
    pub(crate) current_at_ms: std::sync::atomic::AtomicI64,
    /// Keys destroyed by rows other nodes wrote (or this one, again).
    pub destroyed: std::sync::atomic::AtomicU64,
    changed: parking_lot::Condvar,
}

impl FollowStatus {
    /// Next offset to apply, per partition.
    pub fn positions(&self) -> BTreeMap<i32, i64> {
        self.positions.lock().clone()
    }

    /// True once every partition of `ends` is applied up to its end.
    pub fn reached(&self, ends: &BTreeMap<i32, i64>) -> bool {
        let pos = self.positions.lock();
        ends.iter()
            .all(|(p, end)| pos.get(p).copied().unwrap_or(0) >= *end)
    }

    /// Waits (blocking) until [`FollowStatus::reached`] or `timeout`.
    pub fn wait_for(&self, ends: &BTreeMap<i32, i64>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut pos = self.positions.lock();
        loop {
            if ends
                .iter()
                .all(|(p, end)| pos.get(p).copied().unwrap_or(0) >= *end)
            {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.changed
                .wait_for(&mut pos, left.min(Duration::from_millis(200)));
        }
    }

    /// The end of each partition of the key topic, as last read.
    pub fn ends(&self) -> BTreeMap<i32, i64> {
        self.ends.lock().clone()
    }

    /// Rows behind the end of the key topic (as last read), per partition.
    pub fn lag(&self) -> BTreeMap<i32, i64> {
        let pos = self.positions();
        self.ends
            .lock()
            .iter()
            .map(|(p, end)| (*p, (end - pos.get(p).copied().unwrap_or(0)).max(0)))
            .collect()
    }

    /// The vault had applied the key topic up to its end within `max_age`
    /// (what was at the end half a second earlier counts, so a busy topic
    /// does not make a node that keeps up look behind).
    pub fn current(&self, max_age: Duration) -> bool {
        let age = crate::clock::now_ms() - self.current_at_ms.load(Ordering::Acquire);
        age >= 0 && (age as u128) <= max_age.as_millis()
    }

    /// Records the end of the key topic just read.
    fn saw_ends(&self, ends: BTreeMap<i32, i64>) {
        let mut last = self.ends.lock();
        if !last.is_empty() && self.reached(&last) {
            self.current_at_ms
                .store(crate::clock::now_ms(), Ordering::Release);
        }
        *last = ends;
    }

    fn publish(&self, positions: BTreeMap<i32, i64>) {
        *self.positions.lock() = positions;
        self.changed.notify_all();
    }
}

/// The running follower of the key topic.
pub struct KeyFollower {
    pub status: Arc<FollowStatus>,
    settings: KafkaSettings,
    topic: String,
    worker: Worker,
    /// Reads the end of the key topic; under a child of `worker`'s token.
    lag: Worker,
}

impl std::fmt::Debug for KeyFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFollower")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

fn stored_offset(store: &Store, partition: i32) -> Result<i64, VaultError> {
    Ok(store
        .table::<KeyTopicOffsets>()
        .get(&partition)?
        .unwrap_or(0))
}

/// The end of every partition of the key topic, as a read-committed reader
/// sees it now. A writer taking a partition over waits for the follower to
/// reach these, so it holds every key its orders need.
pub fn ends(
    settings: &KafkaSettings,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, KafkaError> {
    let consumer: BaseConsumer = settings
        .reader_config()
        .set("group.id", format!("orderlog-keys-ends-{}", Uuid::new_v4()))
        .create()?;
    let n = crate::kafka::partition_count(settings, topic, timeout)?;
    read_ends(&consumer, topic, 0..n as i32, timeout)
}

/// The high watermark of each of `partitions`, through `consumer`.
fn read_ends(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, KafkaError> {
    partitions
        .into_iter()
        .map(|p| crate::kafka::watermarks(consumer, topic, p, timeout).map(|(_, high)| (p, high)))
        .collect()
}

struct Run {
    consumer: BaseConsumer,
    topic: String,
    vault: Arc<KeyVault>,
    store: Store,
    status: Arc<FollowStatus>,
    purge: Arc<PurgeStatus>,
    /// Next offset per partition, as stored.
    next: BTreeMap<i32, i64>,
    report: RestoreReport,
    last_checkpoint: Instant,
    /// The time last stored as when the vault was current (Unix ms).
    stored_current_at: i64,
    /// While reconciling: the orders the key topic holds a live row for.
    live: Option<std::collections::HashSet<Uuid>>,
}

impl Run {
    /// Applies one row, its offset and (for an erasure) its purge in one
    /// WriteBatch.
    fn apply(&mut self, m: &rdkafka::message::OwnedMessage) -> Result<(), VaultError> {
        let vault = self.vault.clone();
        let _rows = vault.lock_rows();
        let mut batch = rocksdb::WriteBatch::default();
        let mut queued = None;
        let mut applied = None;
        if let (Some(key), Some(v)) = (m.key(), m.payload())
            && is_log_key(key)
        {
            take_log_key_row(&self.vault, m.partition(), m.offset(), v);
        } else if let Some(id) = m.key().and_then(|k| Uuid::from_slice(k).ok()) {
            let row = match m.payload() {
                None => None,
                // The replica's rows are the vault's, byte for byte.
                Some(v) => Some(OrderKeys::decode(v)?),
            };
            let a = self.vault.stage_replica_row(
                &mut batch,
                id,
                row.as_ref(),
                crate::clock::now_ms(),
            )?;
            // A tombstone or a reduced row (keys are made with every class)
            // is an erasure: its rows are purged here even when an earlier
            // read already destroyed the key (a restart re-reads it).
            let erasure = row
                .as_ref()
                .is_none_or(|r| r.wrapped.len() < FieldClass::ALL.len());
            if let Some(live) = &mut self.live {
                if row.as_ref().is_some_and(|r| !r.wrapped.is_empty()) {
                    live.insert(id);
                } else {
                    live.remove(&id);
                }
            }
            if a.destroyed {
                self.report.shredded += 1;
                self.status.destroyed.fetch_add(1, Ordering::Relaxed);
            } else if !erasure {
                self.report.restored += 1;
            }
            if erasure || a.destroyed {
                let entry = purge::Entry {
                    source: Source::Keys,
                    partition: m.partition(),
                    offset: m.offset(),
                    order_id: id,
                };
                purge::stage(
                    &self.store,
                    &mut batch,
                    &entry,
                    m.timestamp().to_millis().unwrap_or(0),
                );
                queued = Some(entry);
            }
            applied = Some(a);
        }
        self.store
            .table::<KeyTopicOffsets>()
            .put(&mut batch, &m.partition(), &(m.offset() + 1));
        let queued: Vec<purge::Entry> = queued.into_iter().collect();
        self.purge.noted(&queued);
        if let Err(e) = self.store.db().write(batch) {
            self.purge.forget(&queued);
            return Err(crate::store::StoreError::from(e).into());
        }
        if let Some(a) = &applied {
            self.vault.applied(a);
        }
        self.next.insert(m.partition(), m.offset() + 1);
        Ok(())
    }

    /// Moves the stored offsets past transaction markers (which no record
    /// is delivered at) and publishes the positions; stores when the vault
    /// was last current as `rule` says.
    fn checkpoint(&mut self, rule: CurrentAt) -> Result<(), VaultError> {
        let mut batch = rocksdb::WriteBatch::default();
        if let Ok(positions) = self.consumer.position() {
            for e in positions.elements_for_topic(&self.topic) {
                if let Offset::Offset(pos) = e.offset() {
                    let next = self.next.entry(e.partition()).or_insert(0);
                    if pos > *next {
                        *next = pos;
                        self.store
                            .table::<KeyTopicOffsets>()
                            .put(&mut batch, &e.partition(), &pos);
                    }
                }
            }
        }
        let current_at = self.status.current_at_ms.load(Ordering::Acquire);
        let store_current_at = current_at > 0
            && (rule == CurrentAt::Store
                || current_at - self.stored_current_at
                    >= STORE_CURRENT_AT_EVERY.as_millis() as i64);
        if store_current_at {
            self.store
                .table::<KeysCurrentAt>()
                .put(&mut batch, &(), &current_at);
        }
        if !batch.is_empty() {
            self.store
                .db()
                .write(batch)
                .map_err(crate::store::StoreError::from)?;
        }
        if store_current_at {
            self.stored_current_at = current_at;
        }
        self.status.publish(self.next.clone());
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// After reading the whole key topic: a key this vault holds that the
    /// topic has no live row for was erased, its tombstone since compacted
    /// away. Destroyed and queued for the purge like any other erasure.
    fn reconcile(&mut self, live: &std::collections::HashSet<Uuid>) -> Result<u64, VaultError> {
        let mut gone = Vec::new();
        for id in self.store.table::<OrderKeys>().keys() {
            match id {
                Ok(id) if !live.contains(&id) => gone.push(id),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "Unreadable key row skipped."),
            }
        }
        for id in &gone {
            let vault = self.vault.clone();
            let _rows = vault.lock_rows();
            let mut batch = rocksdb::WriteBatch::default();
            let a = self
                .vault
                .stage_replica_row(&mut batch, *id, None, crate::clock::now_ms())?;
            // No position in the topic: partition -1 holds no watermark back.
            let entry = purge::Entry {
                source: Source::Keys,
                partition: -1,
                offset: 0,
                order_id: *id,
            };
            purge::stage(&self.store, &mut batch, &entry, crate::clock::now_ms());
            self.purge.noted(&[entry]);
            if let Err(e) = self.store.db().write(batch) {
                self.purge.forget(&[entry]);
                return Err(crate::store::StoreError::from(e).into());
            }
            self.vault.applied(&a);
            self.report.shredded += 1;
        }
        Ok(gone.len() as u64)
    }

    /// Polls once; true when a record was applied.
    fn step(&mut self, wait: Duration) -> Result<bool, VaultError> {
        match self.consumer.poll(wait) {
            None => {
                self.checkpoint(CurrentAt::IfStale)?;
                Ok(false)
            }
            Some(Ok(m)) => {
                let m = m.detach();
                if let Err(e) = self.apply(&m) {
                    // Not applied: read it again rather than skip it (a
                    // skipped tombstone would leave an erased key here).
                    let _ = self.consumer.seek(
                        &self.topic,
                        m.partition(),
                        Offset::Offset(m.offset()),
                        Duration::from_secs(5),
                    );
                    return Err(e);
                }
                // Under steady traffic the poll is never empty: store and
                // publish the position on a timer too, so a take-over
                // waiting for it sees it move.
                if self.last_checkpoint.elapsed() >= Duration::from_millis(100) {
                    self.checkpoint(CurrentAt::IfStale)?;
                }
                Ok(true)
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "Key topic consume error; the client retries.");
                Ok(false)
            }
        }
    }
}

impl KeyFollower {
    /// Applies the key topic from the stored offsets to its end (blocking; a
    /// node whose vault is empty restores it this way), then follows it in a
    /// thread. The report counts what the first read brought.
    pub fn start(
        settings: &KafkaSettings,
        topic: &str,
        vault: Arc<KeyVault>,
        store: Store,
        purge: Arc<PurgeStatus>,
        timeout: Duration,
        stop: CancellationToken,
    ) -> Result<(Self, RestoreReport), VaultError> {
        let kafka = |e: KafkaError| VaultError::Replica(crate::error::Cause::of(e));
        let consumer: BaseConsumer = settings
            .reader_config()
            .set("group.id", format!("orderlog-keys-{}", Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(kafka)?;
        let ends = ends(settings, topic, timeout).map_err(kafka)?;
        // A vault that has not been current for a long time may have missed
        // tombstones the cleaner has dropped since: read the whole topic
        // and reconcile. So does a data directory of an earlier version,
        // which kept no such time.
        let mut stored = BTreeMap::new();
        for p in ends.keys() {
            stored.insert(*p, stored_offset(&store, *p)?);
        }
        let current_at = store.table::<KeysCurrentAt>().get(&())?;
        let reconcile = stored.values().any(|o| *o > 0)
            && current_at
                .is_none_or(|t| crate::clock::now_ms() - t > RECONCILE_AFTER.as_millis() as i64);
        if reconcile {
            tracing::warn!(
                topic,
                "The key vault was not current for a long time (or never recorded when): reading the whole key topic to find keys whose tombstone was compacted away."
            );
        }
        let mut tpl = TopicPartitionList::new();
        let mut next = BTreeMap::new();
        for p in ends.keys() {
            let from = if reconcile { 0 } else { stored[p] };
            next.insert(*p, from);
            tpl.add_partition_offset(topic, *p, Offset::Offset(from))
                .map_err(kafka)?;
        }
        consumer.assign(&tpl).map_err(kafka)?;
        let status = Arc::new(FollowStatus::default());
        let mut run = Run {
            consumer,
            topic: topic.to_owned(),
            vault,
            store,
            status: status.clone(),
            purge,
            next,
            report: RestoreReport::default(),
            last_checkpoint: Instant::now(),
            stored_current_at: current_at.unwrap_or(0),
            live: reconcile.then(Default::default),
        };
        run.checkpoint(CurrentAt::Store)?;
        let mut last_progress = Instant::now();
        while !status.reached(&ends) {
            if last_progress.elapsed() > timeout {
                return Err(VaultError::Replica(crate::error::Cause::msg(format!(
                    "no progress reading the key topic {topic} for {timeout:?}"
                ))));
            }
            if run.step(Duration::from_millis(100))? {
                last_progress = Instant::now();
            }
        }
        if let Some(live) = run.live.take() {
            let n = run.reconcile(&live)?;
            tracing::warn!(
                destroyed = n,
                "Key vault reconciled with the whole key topic."
            );
        }
        // Caught up at start: the vault is current as of the ends just read
        // (given twice: `current` compares with the ends read the time before).
        status.saw_ends(ends.clone());
        status.saw_ends(ends);
        run.checkpoint(CurrentAt::Store)?;
        let report = run.report;
        let lag = {
            let watcher: BaseConsumer = settings
                .reader_config()
                .set("group.id", format!("orderlog-keys-lag-{}", Uuid::new_v4()))
                .create()
                .map_err(kafka)?;
            let partitions: Vec<i32> = status.positions().into_keys().collect();
            let (topic, status) = (topic.to_owned(), status.clone());
            Worker::spawn("key-follower-lag", stop.child_token(), move |stop| {
                while !shutdown::sleep(&stop, Duration::from_millis(500)) {
                    // A short limit per partition: a stop waits for the
                    // round in progress, also while Kafka is down.
                    match read_ends(
                        &watcher,
                        &topic,
                        partitions.iter().copied(),
                        Duration::from_secs(1),
                    ) {
                        Ok(ends) => status.saw_ends(ends),
                        Err(e) => {
                            tracing::debug!(error = %e, "Reading the end of the key topic failed.")
                        }
                    }
                }
            })
            .expect("spawn key follower lag thread")
        };
        let worker = Worker::spawn("key-follower", stop, move |stop| {
            let mut retry = Retry::new(Duration::from_millis(100), Duration::from_secs(5));
            // Right after a record, only take what is already fetched: an
            // empty poll stores and publishes the position at once, so an
            // erase request waiting on it sees the tombstone applied within
            // milliseconds, not after the next poll's wait.
            let mut applied = false;
            while !stop.is_cancelled() {
                let wait = if applied {
                    Duration::ZERO
                } else {
                    Duration::from_millis(100)
                };
                match run.step(wait) {
                    Ok(a) => {
                        applied = a;
                        retry.reset();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "Applying the key topic failed; retrying.");
                        shutdown::sleep(&stop, retry.pause());
                    }
                }
            }
            if let Err(e) = run.checkpoint(CurrentAt::Store) {
                tracing::warn!(error = %e, "Storing the key follower's position at stop failed; the next start reads from the one before.");
            }
        })
        .expect("spawn key follower thread");
        Ok((
            Self {
                status,
                settings: settings.clone(),
                topic: topic.to_owned(),
                worker,
                lag,
            },
            report,
        ))
    }

    /// Waits (blocking) until the follower has applied the key topic up to
    /// its end as of now.
    pub fn catch_up(&self, timeout: Duration) -> Result<bool, KafkaError> {
        let ends = ends(&self.settings, &self.topic, timeout)?;
        Ok(self.status.wait_for(&ends, timeout))
    }

    /// Stops both threads (the lag reader's Kafka client must not outlive
    /// the call); a panic is an error.
    pub fn stop(self) -> Result<(), Panicked> {
        let applied = self.worker.stop();
        let lag = self.lag.stop();
        applied.and(lag)
    }
}

/// True for the record key of a retired log key's row.
fn is_log_key(key: &[u8]) -> bool {
    key.starts_with(super::logkey::RECORD_PREFIX.as_bytes())
}

/// Stores a retired log key row (written by `keys rotate`) in `vault`; true
/// once taken. One that does not unwrap under this node's KEKs is kept for a
/// later KEK, or was not written by orderlog.
fn take_log_key_row(vault: &KeyVault, partition: i32, offset: i64, value: &[u8]) -> bool {
    let stored = RetiredLogKeys::decode(value)
        .map_err(VaultError::from)
        .and_then(|row| vault.store_log_key(&row));
    if let Err(e) = &stored {
        tracing::warn!(partition, offset, error = %e, "Log key row not taken now (kept if it may unwrap under a later KEK).");
    }
    stored.is_ok()
}

/// Reads every retired log key row of the key topic into `vault` (see
/// [`super::logkey`]): for a reader that projects the log without a key
/// follower (`orderlog project` on a fresh directory), so the records
/// written before a KEK rotation still authenticate. Answers how many rows
/// it took. Blocking.
pub fn load_retired_log_keys(
    settings: &KafkaSettings,
    keys_topic: &str,
    vault: &KeyVault,
) -> Result<usize, VaultError> {
    let kafka = |e: KafkaError| VaultError::Replica(crate::error::Cause::of(e));
    let unknown = rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition;
    let partitions =
        match crate::kafka::partition_count(settings, keys_topic, Duration::from_secs(10)) {
            Ok(n) => n,
            // No key topic: no orderlog node ever ran on this log, so no
            // key was ever retired.
            Err(KafkaError::MetadataFetch(code)) if code == unknown => {
                tracing::warn!(
                    topic = keys_topic,
                    "No key topic: no retired log keys to read."
                );
                return Ok(0);
            }
            Err(e) => return Err(kafka(e)),
        };
    let never = CancellationToken::new();
    let mut taken = 0;
    for p in 0..partitions as i32 {
        crate::service::log_reader::scan(
            settings,
            keys_topic,
            p,
            0,
            None,
            Duration::from_secs(60),
            &never,
            |r| {
                if r.key.as_deref().is_some_and(is_log_key)
                    && !r.payload.is_empty()
                    && take_log_key_row(vault, p, r.offset, &r.payload)
                {
                    taken += 1;
                }
            },
        )
        .map_err(kafka)?;
    }
    Ok(taken)
}
