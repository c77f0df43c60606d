//! Every node's vault follows the key replica topic (`orders.keys`), read
//! committed, for as long as it runs: keys placed through any node arrive,
//! and an erasure's tombstone (or reduced row), committed in the same
//! transaction as its `OrderErased` event, destroys the key on every node.
//! Destroyed rows are then purged from disk (memtable flush and compaction of
//! their ranges), batched so a burst of erasures costs one purge.
//!
//! The consumed offsets are stored in RocksDB (`meta`), so a restart reads
//! only what it has not applied; applying a row twice changes nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use super::replica::RestoreReport;
use super::vault::{KeyVault, StoredKey, VaultError};
use crate::kafka::KafkaSettings;
use crate::store::{CF_META, CF_ORDER_KEYS, Store, decode_value};

const OFFSET_PREFIX: &[u8] = b"keys-offset/";
/// Destroyed rows are purged from disk at most this often.
const PURGE_EVERY: Duration = Duration::from_millis(500);

/// What the follower has applied, per partition of the key topic.
#[derive(Debug, Default)]
pub struct FollowStatus {
    positions: Mutex<BTreeMap<i32, i64>>,
    /// Keys destroyed by rows other nodes wrote (or this one, again).
    pub destroyed: std::sync::atomic::AtomicU64,
    changed: std::sync::Condvar,
}

impl FollowStatus {
    /// Next offset to apply, per partition.
    pub fn positions(&self) -> BTreeMap<i32, i64> {
        self.positions.lock().expect("positions lock").clone()
    }

    /// True once every partition of `ends` is applied up to its end.
    pub fn reached(&self, ends: &BTreeMap<i32, i64>) -> bool {
        let pos = self.positions.lock().expect("positions lock");
        ends.iter()
            .all(|(p, end)| pos.get(p).copied().unwrap_or(0) >= *end)
    }

    /// Waits (blocking) until [`FollowStatus::reached`] or `timeout`.
    pub fn wait_for(&self, ends: &BTreeMap<i32, i64>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut pos = self.positions.lock().expect("positions lock");
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
            pos = self
                .changed
                .wait_timeout(pos, left.min(Duration::from_millis(200)))
                .expect("positions lock")
                .0;
        }
    }

    fn publish(&self, positions: BTreeMap<i32, i64>) {
        *self.positions.lock().expect("positions lock") = positions;
        self.changed.notify_all();
    }
}

/// The running follower of the key topic.
pub struct KeyFollower {
    pub status: Arc<FollowStatus>,
    settings: KafkaSettings,
    topic: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for KeyFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFollower")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

fn offset_key(partition: i32) -> Vec<u8> {
    let mut k = OFFSET_PREFIX.to_vec();
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k
}

fn stored_offset(store: &Store, partition: i32) -> Result<i64, VaultError> {
    let v = store
        .db()
        .get_cf(store.cf(CF_META), offset_key(partition))
        .map_err(crate::store::StoreError::from)?;
    Ok(v.and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(i64::from_be_bytes)
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
    let mut out = BTreeMap::new();
    for p in 0..n as i32 {
        let (_, high) = crate::kafka::watermarks(&consumer, topic, p, timeout)?;
        out.insert(p, high);
    }
    Ok(out)
}

struct Run {
    consumer: BaseConsumer,
    topic: String,
    vault: Arc<KeyVault>,
    store: Store,
    status: Arc<FollowStatus>,
    /// Next offset per partition, applied but maybe not stored yet.
    next: BTreeMap<i32, i64>,
    dirty: bool,
    report: RestoreReport,
    to_purge: Vec<Uuid>,
    last_purge: Instant,
    last_checkpoint: Instant,
}

impl Run {
    fn apply(&mut self, m: &rdkafka::message::OwnedMessage) -> Result<(), VaultError> {
        if let Some(id) = m.key().and_then(|k| Uuid::from_slice(k).ok()) {
            let row = match m.payload() {
                None => None,
                Some(v) => Some(decode_value::<StoredKey>(CF_ORDER_KEYS, v)?),
            };
            let destroyed =
                self.vault
                    .apply_replica_row(id, row.as_ref(), crate::service::now_ms())?;
            match (&row, destroyed) {
                (_, true) => {
                    self.report.shredded += 1;
                    self.status.destroyed.fetch_add(1, Ordering::Relaxed);
                    self.to_purge.push(id);
                }
                (Some(_), false) => self.report.restored += 1,
                (None, false) => {}
            }
        }
        self.next.insert(m.partition(), m.offset() + 1);
        self.dirty = true;
        Ok(())
    }

    /// Stores the offsets (past transaction markers too) and publishes them.
    fn checkpoint(&mut self) -> Result<(), VaultError> {
        if let Ok(positions) = self.consumer.position() {
            for e in positions.elements_for_topic(&self.topic) {
                if let Offset::Offset(pos) = e.offset() {
                    let next = self.next.entry(e.partition()).or_insert(0);
                    if pos > *next {
                        *next = pos;
                        self.dirty = true;
                    }
                }
            }
        }
        if self.dirty {
            let mut batch = rocksdb::WriteBatch::default();
            for (p, next) in &self.next {
                batch.put_cf(self.store.cf(CF_META), offset_key(*p), next.to_be_bytes());
            }
            self.store
                .db()
                .write(batch)
                .map_err(crate::store::StoreError::from)?;
            self.dirty = false;
        }
        self.status.publish(self.next.clone());
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    fn purge(&mut self, force: bool) {
        if self.to_purge.is_empty() || (!force && self.last_purge.elapsed() < PURGE_EVERY) {
            return;
        }
        let ranges: Vec<(&'static str, Vec<u8>)> = self
            .to_purge
            .drain(..)
            .map(|id| (CF_ORDER_KEYS, id.as_bytes().to_vec()))
            .collect();
        match self.store.purge(&ranges) {
            Ok(r) => tracing::debug!(
                keys = ranges.len(),
                elapsed_ms = r.elapsed.as_millis() as u64,
                "Destroyed keys purged from disk."
            ),
            Err(e) => tracing::error!(error = %e, "Purging destroyed keys from disk failed."),
        }
        self.last_purge = Instant::now();
    }

    /// Polls once; true when a record was applied.
    fn step(&mut self, wait: Duration) -> Result<bool, VaultError> {
        match self.consumer.poll(wait) {
            None => {
                self.checkpoint()?;
                self.purge(false);
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
                    self.checkpoint()?;
                    self.purge(false);
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
        timeout: Duration,
    ) -> Result<(Self, RestoreReport), VaultError> {
        let kafka = |e: KafkaError| VaultError::Replica(e.to_string());
        let consumer: BaseConsumer = settings
            .reader_config()
            .set("group.id", format!("orderlog-keys-{}", Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(kafka)?;
        let ends = ends(settings, topic, timeout).map_err(kafka)?;
        let mut tpl = TopicPartitionList::new();
        let mut next = BTreeMap::new();
        for p in ends.keys() {
            let from = stored_offset(&store, *p)?;
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
            next,
            dirty: false,
            report: RestoreReport::default(),
            to_purge: Vec::new(),
            last_purge: Instant::now(),
            last_checkpoint: Instant::now(),
        };
        run.checkpoint()?;
        let mut last_progress = Instant::now();
        let mut applied: u64 = 0;
        while !status.reached(&ends) {
            if last_progress.elapsed() > timeout {
                return Err(VaultError::Replica(format!(
                    "no progress reading the key topic {topic} for {timeout:?}"
                )));
            }
            if run.step(Duration::from_millis(100))? {
                last_progress = Instant::now();
                applied += 1;
                if applied.is_multiple_of(10_000) {
                    run.checkpoint()?;
                }
            }
        }
        run.checkpoint()?;
        run.purge(true);
        let report = run.report;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_t = stop.clone();
        let thread = std::thread::Builder::new()
            .name("key-follower".into())
            .spawn(move || {
                let mut pause = Duration::from_millis(100);
                while !stop_t.load(Ordering::Acquire) {
                    match run.step(Duration::from_millis(100)) {
                        Ok(_) => pause = Duration::from_millis(100),
                        Err(e) => {
                            tracing::error!(error = %e, "Applying the key topic failed; retrying.");
                            std::thread::sleep(pause);
                            pause = (pause * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                let _ = run.checkpoint();
                run.purge(true);
            })
            .expect("spawn key follower thread");
        Ok((
            Self {
                status,
                settings: settings.clone(),
                topic: topic.to_owned(),
                stop,
                thread: Some(thread),
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

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("The key follower thread panicked.");
        }
    }
}

impl Drop for KeyFollower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}
