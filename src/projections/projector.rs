//! The projector: consumes the event log and keeps the views in RocksDB.
//!
//! It runs on its own OS thread with a blocking consumer. Messages are folded
//! in batches; each batch is one RocksDB WriteBatch holding the view changes
//! *and* the next offset of every partition it covers, so a crash at any
//! point never applies an event twice or skips one: on restart the projector
//! resumes from the offsets in RocksDB (seeking back if Kafka's committed
//! offset, kept only as a hint, is ahead of them). A record that cannot be
//! projected goes to the dead-letter topic with the reason, and projection
//! goes on.
//!
//! The same fold keeps the order state commands are decided against
//! ([`crate::service::state`]): its rows go into the same WriteBatch as the
//! views and the offsets.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use rocksdb::WriteBatch;
use uuid::Uuid;

use super::model::{FeedTarget, ProjectError, ProjectedOrder};
use crate::kafka::KafkaSettings;
use crate::service::state::StateFolder;
use crate::shutdown::{self, CancellationToken, Panicked, Retry, Worker};
use crate::store::schema::{FeedKey, MerchantFeed, ShippingFeed, ViewOffsets, ViewOrders};
use crate::store::{Store, StoreError};

/// Suffix of the dead-letter topic: `<events topic>.dead-letter`.
pub const DEAD_LETTER_SUFFIX: &str = ".dead-letter";
pub const HEADER_DLQ_REASON: &str = "orderlog-dlq-reason";
pub const HEADER_DLQ_SOURCE: &str = "orderlog-dlq-source";

/// How the projector gets its partitions.
#[derive(Debug, Clone)]
pub enum Assignment {
    /// Join this consumer group and share the partitions with its other members.
    Group(String),
    /// Read every partition of the topic (a single instance, or an audit replay).
    All,
}

#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    pub settings: KafkaSettings,
    pub topic: String,
    pub assignment: Assignment,
    /// Most messages folded into one WriteBatch.
    pub batch_max: usize,
    /// Upper bound on events per second (0 = none), so a rebuild can run
    /// beside live traffic without starving it.
    pub max_rate: u32,
    /// Send records that cannot be projected to the dead-letter topic. Off
    /// for audit replays, which must change nothing in Kafka: such a record
    /// is then only logged and counted (in `dead_lettered`).
    pub dead_letter: bool,
    /// Expiry of the idempotency keys folded into the order state.
    pub idempotency_ttl: Duration,
    /// The purger told of each erasure's queued purge (without one, the
    /// queue is drained by the next `serve` on this data directory).
    pub purge: Option<Arc<crate::erasure::PurgeStatus>>,
    /// The keys that tell records written by orderlog from forgeries, as
    /// the node learns them.
    pub log_keys: Arc<crate::crypto::logkey::SharedLogKeys>,
}

impl ProjectorConfig {
    pub fn dead_letter_topic(&self) -> String {
        format!("{}{DEAD_LETTER_SUFFIX}", self.topic)
    }
}

/// Live figures of a running projector, for metrics and readiness.
#[derive(Debug, Default)]
pub struct ProjectorStatus {
    /// Per partition: (next offset to project, high watermark).
    pub positions: Mutex<BTreeMap<i32, (i64, i64)>>,
    pub projected: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub batches: AtomicU64,
    pub assigned: AtomicBool,
    /// When (Unix ms) the last reading of the log's end from Kafka began:
    /// the ends in `positions` are the log's as of then or later.
    pub refreshed_at_ms: std::sync::atomic::AtomicI64,
    /// Next offset per assigned partition as written to RocksDB, published by
    /// the projector thread (no I/O) for the watermark watcher.
    pub flushed: Mutex<BTreeMap<i32, i64>>,
    /// When (Unix ms) the views last covered every partition up to the end
    /// of the log as read the time before (a quarter second earlier).
    pub current_at_ms: std::sync::atomic::AtomicI64,
    /// The latest time (Unix ms) at which the end of the log was read and
    /// the views have since covered everything before that end: a request
    /// that came in before it sees every event acknowledged before it came.
    pub covered_ms: std::sync::atomic::AtomicI64,
}

impl ProjectorStatus {
    /// Records behind the end of the log, per assigned partition.
    pub fn lag(&self) -> BTreeMap<i32, i64> {
        self.positions
            .lock()
            .iter()
            .map(|(p, (next, high))| (*p, (high - next).max(0)))
            .collect()
    }

    /// Caught up, and the end of the log was read from Kafka within `max_age`:
    /// connected and current.
    pub fn ready(&self, max_age: Duration) -> bool {
        let age = crate::clock::now_ms() - self.refreshed_at_ms.load(Ordering::Acquire);
        self.caught_up() && age >= 0 && (age as u128) <= max_age.as_millis()
    }

    /// The views covered, within `max_age`, the log as it was a quarter
    /// second before: a node that keeps up under steady writes counts.
    pub fn current(&self, max_age: Duration) -> bool {
        let age = crate::clock::now_ms() - self.current_at_ms.load(Ordering::Acquire);
        age >= 0 && (age as u128) <= max_age.as_millis()
    }

    /// True once partitions are assigned and none lags.
    pub fn caught_up(&self) -> bool {
        self.assigned.load(Ordering::Acquire) && self.lag().values().all(|l| *l == 0)
    }

    /// Caught up with an end of the log read after `since_ms` (Unix ms):
    /// everything in the log by then is projected.
    pub fn caught_up_since(&self, since_ms: i64) -> bool {
        self.caught_up() && self.refreshed_at_ms.load(Ordering::Acquire) > since_ms
    }
}

/// A running projector; [`Projector::stop`] ends it after its current batch.
#[derive(Debug)]
pub struct Projector {
    pub status: Arc<ProjectorStatus>,
    main: Option<Worker<Result<(), ProjectorError>>>,
    /// Under a child of the main worker's token.
    watcher: Option<Worker>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the projector's writer thread ended")]
    WriterGone,
    #[error("stopped while a record could not be dead-lettered: {0}")]
    StoppedDeadLettering(String),
    #[error(transparent)]
    Panicked(#[from] Panicked),
}

impl From<rocksdb::Error> for ProjectorError {
    fn from(e: rocksdb::Error) -> Self {
        Self::Store(StoreError::Rocks(e))
    }
}

impl Projector {
    /// Starts projecting, under `stop`: cancelling it ends the projector
    /// after its current batch (as [`Projector::stop`] does).
    pub fn start(
        store: Store,
        config: ProjectorConfig,
        stop: CancellationToken,
    ) -> Result<Self, ProjectorError> {
        let status = Arc::new(ProjectorStatus::default());
        let watcher: BaseConsumer = config
            .settings
            .reader_config()
            .set("group.id", format!("orderlog-lag-watch-{}", Uuid::new_v4()))
            .create()?;
        let topic = config.topic.clone();
        let mut run = Run::new(store.clone(), config.clone(), status.clone(), stop.clone())?;
        let status_w = status.clone();
        let watcher = Worker::spawn("projector-lag", stop.child_token(), move |stop| {
            watch_lag(&watcher, &topic, &status_w, &stop)
        })
        .expect("spawn lag watcher thread");
        let status_r = status.clone();
        let main = Worker::spawn("projector", stop, move |stop| {
            // An error (Kafka unreachable, a store write failing) does not
            // stop projection for good: what was not written is dropped,
            // and a fresh run resumes from the stored offsets.
            let mut retry = Retry::new(Duration::from_millis(500), Duration::from_secs(10));
            loop {
                let r = run.run(&stop);
                let Err(e) = r else { return Ok(()) };
                if stop.is_cancelled() {
                    return Err(e);
                }
                tracing::error!(error = %e, "Projector error; resuming from the stored offsets.");
                loop {
                    if shutdown::sleep(&stop, retry.pause()) {
                        return Err(e);
                    }
                    match Run::new(store.clone(), config.clone(), status_r.clone(), stop.clone()) {
                        Ok(r) => {
                            run = r;
                            break;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "Restarting the projector failed; retrying.")
                        }
                    }
                }
            }
        })
        .expect("spawn projector thread");
        Ok(Self {
            status,
            main: Some(main),
            watcher: Some(watcher),
        })
    }

    /// Blocks until every assigned partition is projected to its end, or `timeout`.
    pub fn wait_caught_up(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        // Only an end of the log read after this call counts.
        let since = crate::clock::now_ms();
        while Instant::now() < deadline {
            if self.status.caught_up_since(since) {
                return true;
            }
            if !self.is_running() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// False once the projector's thread has ended (stopped, or on an error
    /// that [`Projector::stop`] returns).
    pub fn is_running(&self) -> bool {
        self.main.as_ref().is_some_and(|w| !w.is_finished())
    }

    /// Ends the projector after its current batch and waits for its
    /// threads: its own error, or a panic, is the answer.
    pub fn stop(mut self) -> Result<(), ProjectorError> {
        self.stop_all()
    }

    /// Joins the lag watcher too: a Kafka client still in use as the
    /// process exits aborts it.
    fn stop_all(&mut self) -> Result<(), ProjectorError> {
        let result = match self.main.take() {
            Some(w) => w.stop().map_err(ProjectorError::from).and_then(|r| r),
            None => Ok(()),
        };
        if let Some(w) = self.watcher.take()
            && let Err(e) = w.stop()
        {
            tracing::error!(error = %e, "Stopping the lag watcher failed.");
        }
        result
    }
}

impl Drop for Projector {
    fn drop(&mut self) {
        let _ = self.stop_all();
    }
}

/// Reads the end of every assigned partition a few times a second and
/// publishes positions, lag and readiness. Runs beside the projector thread.
fn watch_lag(
    consumer: &BaseConsumer,
    topic: &str,
    status: &ProjectorStatus,
    stop: &CancellationToken,
) {
    let mut previous: BTreeMap<i32, i64> = BTreeMap::new();
    let mut previous_read_ms = 0;
    while !shutdown::sleep(stop, Duration::from_millis(250)) {
        let read_ms = crate::clock::now_ms();
        // The flushed offsets are read before the ends, so lag is never
        // under-stated by events projected in between.
        let flushed = status.flushed.lock().clone();
        if flushed.is_empty() {
            continue;
        }
        let mut positions = BTreeMap::new();
        for (p, next) in &flushed {
            match consumer.fetch_watermarks(topic, *p, Duration::from_secs(2)) {
                Ok((_, high)) => {
                    positions.insert(*p, (*next, high));
                }
                Err(e) => {
                    tracing::debug!(partition = p, error = %e, "Reading the end of the log failed.");
                    positions.clear();
                    break;
                }
            }
        }
        if positions.is_empty() {
            continue;
        }
        for (p, (next, high)) in &positions {
            metrics::gauge!(crate::telemetry::PROJECTOR_LAG, "partition" => p.to_string())
                .set((high - next).max(0) as f64);
        }
        if !previous.is_empty()
            && positions
                .iter()
                .all(|(p, (next, _))| previous.get(p).is_some_and(|end| next >= end))
        {
            status
                .current_at_ms
                .store(crate::clock::now_ms(), Ordering::Release);
            status
                .covered_ms
                .fetch_max(previous_read_ms, Ordering::AcqRel);
        }
        previous = positions.iter().map(|(p, (_, high))| (*p, *high)).collect();
        previous_read_ms = read_ms;
        *status.positions.lock() = positions;
        status.refreshed_at_ms.store(read_ms, Ordering::Release);
        status.assigned.store(true, Ordering::Release);
    }
}

struct Run {
    /// The projector's token, for the waits inside a batch.
    stop: CancellationToken,
    store: Store,
    config: ProjectorConfig,
    status: Arc<ProjectorStatus>,
    /// Shared so that a batch of borrowed messages can be held while the
    /// run's other fields change.
    consumer: Arc<BaseConsumer>,
    dlq: FutureProducer,
    /// Next offset per partition, as stored (or about to be, in the batch).
    next: HashMap<i32, i64>,
    overlay: HashMap<[u8; 16], ProjectedOrder>,
    batch: WriteBatch,
    dirty: HashMap<i32, i64>,
    pending: usize,
    /// Partitions whose first record was checked against the stored offset.
    checked: std::collections::HashSet<i32>,
    /// Purges of erased orders staged in the current batch, announced to
    /// the purger once it is written.
    queued: Vec<crate::erasure::purge::Entry>,
    /// The order state's share of the fold.
    state: StateFolder,
    /// Partitions of the topic, which say each order's partition.
    partitions: usize,
    /// View rows read ahead (one multi-get per polled batch) for the orders
    /// the batch folds into; taken into the overlay as they are folded.
    fetched: HashMap<[u8; 16], ProjectedOrder>,
    /// Reused for the feed entries of one event.
    feeds: Vec<(FeedTarget, super::model::FeedEntry)>,
    /// The thread that writes batches to RocksDB.
    writer: Writer,
    /// The batch the writer has, until it says it is written.
    inflight: Option<Inflight>,
    /// Threads that authenticate and decode a polled batch side by side.
    decoders: Arc<rayon::ThreadPool>,
}

/// A batch handed to the writer thread: what to publish once it is written,
/// and its view rows, which the next batch reads instead of the store's.
struct Inflight {
    views: Arc<HashMap<[u8; 16], ProjectedOrder>>,
    offsets: Vec<(i32, i64)>,
    queued: Vec<crate::erasure::purge::Entry>,
    tpl: TopicPartitionList,
}

/// A batch for the writer thread: the feed entries, offsets and queue rows
/// staged while folding, and the view rows and order states it encodes
/// into the batch itself (a third of the folding thread's time when the
/// folding thread did it).
struct ToWrite {
    batch: WriteBatch,
    views: Arc<HashMap<[u8; 16], ProjectedOrder>>,
    state: Arc<crate::service::state::StagedRows>,
}

/// The projector's writer thread: writes each batch it is handed and
/// answers with the result, in order. It ends when the run is dropped.
struct Writer {
    batches: Option<std::sync::mpsc::SyncSender<ToWrite>>,
    done: std::sync::mpsc::Receiver<Result<(), rocksdb::Error>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    /// Ends the thread once the batch it holds is written (at most one is
    /// in flight, and its answer has room in the channel): it holds the
    /// store, which must not outlive the run's end.
    fn drop(&mut self) {
        self.batches.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Writer {
    fn start(store: Store) -> Self {
        let (batches, todo) = std::sync::mpsc::sync_channel::<ToWrite>(1);
        let (tell, done) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("projector-write".into())
            .spawn(move || {
                let orders = store.table::<ViewOrders>();
                for ToWrite {
                    mut batch,
                    views,
                    state,
                } in todo
                {
                    for (id, o) in views.iter() {
                        orders.put(&mut batch, &Uuid::from_bytes(*id), o);
                    }
                    state.stage(&store, &mut batch);
                    // The folding thread holds them too, and frees them.
                    drop((views, state));
                    if tell.send(store.db().write(batch)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn projector writer thread");
        Self {
            batches: Some(batches),
            done,
            thread: Some(thread),
        }
    }

    fn send(&self, batch: ToWrite) -> Result<(), ()> {
        match &self.batches {
            Some(b) => b.send(batch).map_err(|_| ()),
            None => Err(()),
        }
    }
}

/// Most messages taken from the consumer's queue at once: decoded together
/// in parallel, then folded in order.
const POLL_BATCH: usize = 4096;

/// One polled message, borrowed from the consumer's queue.
struct Polled<'m> {
    partition: i32,
    offset: i64,
    key: Option<&'m [u8]>,
    payload: &'m [u8],
    head: Head,
}

/// What a message's headers say: read once, by the decoding threads (a
/// message's headers are parsed on first use, which took a tenth of the
/// folding thread's time).
#[derive(Clone, Copy)]
struct Head {
    barrier: bool,
    idempotency: Option<([u8; 32], [u8; 32])>,
}

impl Head {
    fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        Self {
            barrier: crate::kafka::is_barrier(m),
            idempotency: crate::service::log_reader::idempotency_headers(m),
        }
    }
}

impl<'m> Polled<'m> {
    fn of(m: &'m rdkafka::message::BorrowedMessage<'_>, head: Head) -> Self {
        Self {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key(),
            payload: m.payload().unwrap_or_default(),
            head,
        }
    }
}

/// What the parallel stage made of one record: authenticated, decoded and
/// hashed, or the reason it cannot be projected.
enum Prepared {
    Barrier,
    Record(Box<Decoded>),
    Refused(ProjectError),
}

struct Decoded {
    env: crate::events::Envelope,
    /// Its public event; `Err` (the reason) when it does not convert.
    event: Result<crate::domain::Event, String>,
    hash: crate::events::RecordHash,
}

/// The pure, per-record work: no state, so records of every partition are
/// prepared side by side.
fn prepare(m: &Polled<'_>, keys: &crate::crypto::LogKeys, partitions: usize) -> Prepared {
    if m.head.barrier {
        return Prepared::Barrier;
    }
    // A record not written by an orderlog node (no valid log MAC) is
    // dead-lettered; neither the state nor the views see it.
    match crate::events::authenticate(m.payload, keys, Some((m.partition, m.offset))) {
        Ok(()) => {}
        Err(e @ crate::events::DecodeError::Forged(_)) => {
            return Prepared::Refused(ProjectError::Forged(e.to_string()));
        }
        Err(e) => return Prepared::Refused(ProjectError::Decode(e.to_string())),
    }
    let env = match crate::events::decode(m.payload) {
        Ok(env) => env,
        Err(e) => return Prepared::Refused(ProjectError::Decode(e.to_string())),
    };
    if crate::kafka::partition_of(&env.meta.order_id, partitions) != m.partition as usize {
        // A copy of a real record produced elsewhere: taken, it could come
        // before the original.
        return Prepared::Refused(ProjectError::WrongPartition(env.meta.order_id));
    }
    let event = crate::events::public_event(&env).map_err(|e| e.to_string());
    Prepared::Record(Box::new(Decoded {
        hash: crate::events::record_hash(m.payload),
        env,
        event,
    }))
}

impl Run {
    fn new(
        store: Store,
        config: ProjectorConfig,
        status: Arc<ProjectorStatus>,
        stop: CancellationToken,
    ) -> Result<Self, ProjectorError> {
        let group = match &config.assignment {
            Assignment::Group(g) => g.clone(),
            Assignment::All => format!("orderlog-projector-{}", Uuid::new_v4()),
        };
        let consumer: BaseConsumer = config
            .settings
            .reader_config()
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .create()?;
        // Every order belongs in one partition: a record elsewhere is refused.
        let partitions = crate::kafka::partition_count(
            &config.settings,
            &config.topic,
            Duration::from_secs(30),
        )?;
        match &config.assignment {
            Assignment::Group(_) => consumer.subscribe(&[&config.topic])?,
            Assignment::All => {
                // From the stored offsets: a restart reads only the tail.
                let mut tpl = TopicPartitionList::new();
                for p in 0..partitions as i32 {
                    let next = store.view_offset(p)?;
                    tpl.add_partition_offset(&config.topic, p, Offset::Offset(next))?;
                }
                consumer.assign(&tpl)?;
            }
        }
        let dlq: FutureProducer = config
            .settings
            .reliable_producer_config(Duration::from_secs(30))
            .create()?;
        let state = StateFolder::new(store.clone(), config.idempotency_ttl);
        let store_w = store.clone();
        Ok(Self {
            stop,
            state,
            partitions,
            store,
            config,
            status,
            consumer: Arc::new(consumer),
            dlq,
            next: HashMap::new(),
            overlay: HashMap::new(),
            batch: WriteBatch::default(),
            dirty: HashMap::new(),
            pending: 0,
            queued: Vec::new(),
            checked: std::collections::HashSet::new(),
            fetched: HashMap::new(),
            feeds: Vec::new(),
            writer: Writer::start(store_w),
            inflight: None,
            decoders: Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .thread_name(|i| format!("projector-decode-{i}"))
                    .build()
                    .expect("start the projector's decoding threads"),
            ),
        })
    }

    fn stored_next(&mut self, partition: i32) -> Result<i64, ProjectorError> {
        if let Some(n) = self.next.get(&partition) {
            return Ok(*n);
        }
        let n = self.store.view_offset(partition)?;
        self.next.insert(partition, n);
        Ok(n)
    }

    /// Reads the view rows and order states of the records of a prepared
    /// batch that are not in memory yet, one multi-get per column family.
    fn prefetch(
        &mut self,
        polled: &[Polled<'_>],
        prepared: &[Prepared],
    ) -> Result<(), ProjectorError> {
        let mut ids: Vec<Uuid> = Vec::new();
        for (m, p) in polled.iter().zip(prepared) {
            if let Prepared::Record(d) = p
                && self.next.get(&m.partition).is_none_or(|n| m.offset >= *n)
            {
                ids.push(d.env.meta.order_id);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        self.state.prefetch(&ids)?;
        let missing: Vec<Uuid> = ids
            .iter()
            .filter(|id| {
                let id = id.as_bytes();
                !self.overlay.contains_key(id)
                    && !self.fetched.contains_key(id)
                    && !self
                        .inflight
                        .as_ref()
                        .is_some_and(|f| f.views.contains_key(id))
            })
            .copied()
            .collect();
        let rows = self.store.table::<ViewOrders>().get_many(&missing, true)?;
        for (id, row) in missing.into_iter().zip(rows) {
            if let Some(row) = row {
                self.fetched.insert(*id.as_bytes(), row);
            }
        }
        Ok(())
    }

    /// Brings the order's view row into the overlay (from the read-ahead, or
    /// the store), if it has one.
    fn load_order(&mut self, id: &[u8; 16]) -> Result<(), ProjectorError> {
        if self.overlay.contains_key(id) {
            return Ok(());
        }
        let row = match self
            .inflight
            .as_ref()
            .and_then(|f| f.views.get(id).cloned())
            .or_else(|| self.fetched.remove(id))
        {
            Some(o) => Some(o),
            None => self
                .store
                .table::<ViewOrders>()
                .get(&Uuid::from_bytes(*id))?,
        };
        if let Some(o) = row {
            self.overlay.insert(*id, o);
        }
        Ok(())
    }

    fn run(&mut self, stop: &CancellationToken) -> Result<(), ProjectorError> {
        let mut last_positions = Instant::now() - Duration::from_secs(10);
        // The rate clock starts at the first event, not while joining the group.
        let mut started: Option<Instant> = None;
        let mut folded: u64 = 0;
        let consumer = self.consumer.clone();
        let decoders = self.decoders.clone();
        // A batch is polled and decoded while the one before it is folded:
        // `ahead` is polled and decoded, not folded yet.
        let mut ahead = Vec::new();
        let mut ahead_prepared: Vec<(Head, Prepared)> = Vec::new();
        // Partitions sought back while folding the batch before: their
        // records in the batch polled meanwhile are stale.
        let mut sought: Vec<i32> = Vec::new();
        while !stop.is_cancelled() {
            // With events folded but not yet written, only take what is
            // already fetched: flush as soon as the fetch queue is empty, so a
            // view trails its write by milliseconds, not a poll interval.
            let mut wait = if self.pending > 0 || !ahead.is_empty() {
                Duration::ZERO
            } else {
                Duration::from_millis(100)
            };
            let mut batch = Vec::with_capacity(POLL_BATCH);
            while batch.len() < POLL_BATCH {
                match consumer.poll(wait) {
                    None => break,
                    Some(Err(e)) => tracing::warn!(error = %e, "Projector consume error."),
                    Some(Ok(m)) => batch.push(m),
                }
                wait = Duration::ZERO;
            }
            let keys = self.config.log_keys.get();
            let partitions = self.partitions;
            let mut prepared = Vec::new();
            let result = decoders.in_place_scope(|s| {
                let (out, polled, keys) = (&mut prepared, &batch, &keys);
                s.spawn(move |_| {
                    use rayon::prelude::*;
                    *out = polled
                        .par_iter()
                        .with_min_len(64)
                        .map(|m| {
                            let head = Head::of(m);
                            (head, prepare(&Polled::of(m, head), keys, partitions))
                        })
                        .collect();
                });
                if ahead.is_empty() {
                    return Ok(Vec::new());
                }
                let (heads, ahead_prepared): (Vec<Head>, Vec<Prepared>) =
                    std::mem::take(&mut ahead_prepared).into_iter().unzip();
                let folding: Vec<Polled<'_>> = ahead
                    .iter()
                    .zip(heads)
                    .map(|(m, head)| Polled::of(m, head))
                    .collect();
                self.fold_batch(
                    &folding,
                    ahead_prepared,
                    &sought,
                    stop,
                    &mut started,
                    &mut folded,
                )
            });
            self.fetched.clear();
            self.state.clear_prefetched();
            sought = result?;
            ahead = batch;
            ahead_prepared = prepared;
            if ahead.is_empty() {
                // Nothing polled and not folded: the consumer's position is
                // what is folded.
                self.flush()?;
                self.advance_past_markers()?;
            }
            if last_positions.elapsed() > Duration::from_millis(100) && self.refresh_positions() {
                last_positions = Instant::now();
            }
        }
        // What was polled ahead and not folded is read again from the
        // stored offsets.
        self.flush()?;
        Ok(())
    }

    /// Folds a polled batch in order, each partition's records in their
    /// order, flushing every `batch_max` records.
    /// Returns the partitions it sought back: their records in a batch
    /// polled before the seek are stale.
    fn fold_batch(
        &mut self,
        polled: &[Polled<'_>],
        prepared: Vec<Prepared>,
        stale: &[i32],
        stop: &CancellationToken,
        started: &mut Option<Instant>,
        folded: &mut u64,
    ) -> Result<Vec<i32>, ProjectorError> {
        self.prefetch(polled, &prepared)?;
        // Partitions sought back in this batch (or the one before): their
        // later records in it come again from the new position.
        let mut skip: Vec<i32> = stale.to_vec();
        let mut sought: Vec<i32> = Vec::new();
        let mut projected = 0u64;
        for (m, p) in polled.iter().zip(prepared) {
            if stop.is_cancelled() {
                break; // the rest is read again from the stored offsets
            }
            let partition = m.partition;
            let offset = m.offset;
            if skip.contains(&partition) {
                continue;
            }
            let expected = self.stored_next(partition)?;
            if offset < expected {
                continue; // already in the views
            }
            // Past the stored offset. In a consumer group, Kafka's committed
            // offset may have run ahead of RocksDB (say the data dir was
            // wiped): checked once per partition. A transaction's commit
            // marker takes an offset no record is delivered at, so a gap is
            // normal otherwise, and an assignment from the stored offsets
            // needs no check.
            if offset > expected
                && matches!(self.config.assignment, Assignment::Group(_))
                && self.checked.insert(partition)
            {
                match crate::kafka::watermarks(
                    self.consumer.as_ref(),
                    &self.config.topic,
                    partition,
                    Duration::from_secs(30),
                ) {
                    Ok((low, _)) if low <= expected => {
                        self.flush()?;
                        tracing::info!(
                            partition,
                            from = offset,
                            to = expected,
                            "Seeking back to the views' offset."
                        );
                        if let Err(e) = self.consumer.seek(
                            &self.config.topic,
                            partition,
                            Offset::Offset(expected),
                            Duration::from_secs(5),
                        ) {
                            // Checked again at the next record.
                            self.checked.remove(&partition);
                            tracing::warn!(partition, error = %e, "Seeking back failed; retrying.");
                        }
                        skip.push(partition);
                        sought.push(partition);
                        continue;
                    }
                    Ok((low, _)) => tracing::warn!(
                        partition,
                        expected,
                        low,
                        "Records before the log's start are gone (retention); projecting from what is left."
                    ),
                    Err(e) => {
                        // Kafka unreachable for now: do not fold past the
                        // gap unchecked; look again.
                        self.checked.remove(&partition);
                        tracing::warn!(partition, error = %e, "Reading the start of the log failed; retrying.");
                        let _ = self.consumer.seek(
                            &self.config.topic,
                            partition,
                            Offset::Offset(offset),
                            Duration::from_secs(5),
                        );
                        std::thread::sleep(Duration::from_millis(200));
                        skip.push(partition);
                        sought.push(partition);
                        continue;
                    }
                }
            }
            if self.config.max_rate > 0 {
                let due = Duration::from_secs_f64(*folded as f64 / f64::from(self.config.max_rate));
                if let Some(wait) =
                    due.checked_sub(started.get_or_insert_with(Instant::now).elapsed())
                {
                    std::thread::sleep(wait);
                }
            }
            match p {
                Prepared::Barrier => {}
                Prepared::Refused(reason) => {
                    *folded += 1;
                    self.refuse(partition, offset, m.key, m.payload, reason)?;
                }
                Prepared::Record(d) => {
                    *folded += 1;
                    if self.fold(m, &d)? {
                        projected += 1;
                    }
                }
            }
            self.next.insert(partition, offset + 1);
            self.dirty.insert(partition, offset + 1);
            self.pending += 1;
            if self.pending >= self.config.batch_max {
                self.send()?;
            }
        }
        self.status
            .projected
            .fetch_add(projected, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::EVENTS_PROJECTED).increment(projected);
        Ok(sought)
    }

    /// Folds one authenticated, decoded record into the order state and the
    /// views (or dead-letters it). True when the views took it.
    fn fold(&mut self, m: &Polled<'_>, d: &Decoded) -> Result<bool, ProjectorError> {
        let (partition, offset, key) = (m.partition, m.offset, m.key);
        let env = &d.env;
        // A record keyed to another order is refused by the views (and
        // dead-lettered) below; the state ignores it too.
        if key.is_none_or(|k| k == env.meta.order_id.as_bytes()) {
            self.state.fold_decoded(
                env,
                d.event.as_ref().ok(),
                d.hash,
                m.payload,
                offset,
                m.head.idempotency,
            )?;
        }
        let id = *env.meta.order_id.as_bytes();
        self.load_order(&id)?;
        let checked = match &d.event {
            Err(e) => Err(ProjectError::Decode(e.clone())),
            Ok(_) => super::model::check(self.overlay.get(&id), env, key),
        };
        if let Err(reason) = checked {
            self.refuse(partition, offset, key, m.payload, reason)?;
            return Ok(false);
        }
        let mut feeds = std::mem::take(&mut self.feeds);
        feeds.clear();
        let current = self.overlay.get_mut(&id);
        if let Some(new) = super::model::apply(current, env, d.hash, partition as u32, &mut feeds) {
            self.overlay.insert(id, new);
        }
        let mut erased = false;
        for (target, entry) in feeds.drain(..) {
            erased |= entry.change == super::model::ChangeKind::Erased;
            let at = |party| FeedKey {
                party,
                partition: partition as u32,
                offset: offset as u64,
            };
            match target {
                FeedTarget::Shipping(p) => {
                    self.store
                        .table::<ShippingFeed>()
                        .put(&mut self.batch, &at(p), &entry)
                }
                FeedTarget::Merchant(p) => {
                    self.store
                        .table::<MerchantFeed>()
                        .put(&mut self.batch, &at(p), &entry)
                }
            }
        }
        self.feeds = feeds;
        if matches!(
            env.body,
            crate::events::Body::OrderPlaced { .. } | crate::events::Body::OrderErased { .. }
        ) {
            // The subject index follows placements and erasures.
            super::subjects::stage_pending(
                &self.store,
                &mut self.batch,
                &env.meta.order_id,
                env.meta.sequence,
            );
        }
        if erased {
            // The old row (with the sealed fields) leaves the disk once this
            // batch is written: queued in the same batch.
            let entry = crate::erasure::purge::Entry {
                source: crate::erasure::Source::Views,
                partition,
                offset,
                order_id: env.meta.order_id,
            };
            // The subject index entries of the erased classes go in the
            // same batch, and with the same purge.
            if let Ok(crate::domain::Event::OrderErased { scope, .. }) = &d.event {
                super::subjects::stage_removal(
                    &self.store,
                    &mut self.batch,
                    &env.meta.order_id,
                    &scope.classes(),
                )?;
            }
            crate::erasure::purge::stage(
                &self.store,
                &mut self.batch,
                &entry,
                env.meta.occurred_at_ms,
            );
            self.queued.push(entry);
        }
        Ok(true)
    }

    /// Dead-letters a record that cannot be projected (only logs and counts
    /// it where this run does no dead-lettering), and only then moves on:
    /// the record must be somewhere before its offset is passed.
    fn refuse(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        reason: ProjectError,
    ) -> Result<(), ProjectorError> {
        let reason = reason.to_string();
        if !self.config.dead_letter {
            tracing::warn!(partition, offset, %reason, "Record not projectable; skipped (no dead-lettering in this run).");
            self.status.dead_lettered.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        // Dead-letter it, and only then move on: the record must be
        // somewhere before its offset is passed.
        self.flush()?;
        tracing::warn!(partition, offset, %reason, "Record dead-lettered.");
        let source = format!("{}/{partition}/{offset}", self.config.topic);
        let topic = self.config.dead_letter_topic();
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: HEADER_DLQ_REASON,
                    value: Some(reason.as_bytes()),
                })
                .insert(Header {
                    key: HEADER_DLQ_SOURCE,
                    value: Some(source.as_bytes()),
                });
            let mut record = FutureRecord::to(&topic).payload(payload).headers(headers);
            if let Some(k) = key {
                record = record.key(k);
            }
            let sent = match self.dlq.send_result(record) {
                Ok(fut) => futures::executor::block_on(fut)
                    .map_err(|_| "delivery cancelled".to_owned())
                    .and_then(|r| r.map(|_| ()).map_err(|(e, _)| e.to_string())),
                Err((e, _)) => Err(e.to_string()),
            };
            match sent {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, %topic, "Dead-letter produce failed; retrying.");
                    if shutdown::sleep(&self.stop, Duration::from_secs(1)) {
                        // Not passed: the record comes again at the next start.
                        return Err(ProjectorError::StoppedDeadLettering(e));
                    }
                }
            }
        }
        self.status.dead_lettered.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::DEAD_LETTERED).increment(1);
        Ok(())
    }

    /// With nothing left to fold, moves the stored offsets up to the
    /// consumer's position: past the commit and abort markers (and aborted
    /// records) a read-committed consumer never delivers, so a partition
    /// whose last record is a marker counts as projected.
    fn advance_past_markers(&mut self) -> Result<(), ProjectorError> {
        if self.pending > 0 {
            return Ok(());
        }
        let Ok(positions) = self.consumer.position() else {
            return Ok(());
        };
        for e in positions.elements() {
            if let Offset::Offset(pos) = e.offset()
                && pos > self.stored_next(e.partition())?
            {
                self.next.insert(e.partition(), pos);
                self.dirty.insert(e.partition(), pos);
            }
        }
        self.flush()
    }

    /// Writes the batch and waits for it: nothing folded is left unwritten.
    fn flush(&mut self) -> Result<(), ProjectorError> {
        self.send()?;
        self.written()
    }

    /// Hands the batch (view rows, feed entries and offsets together) to the
    /// writer thread, which writes it while the next batch is folded. At most
    /// one batch is in flight: this first waits for the one before.
    fn send(&mut self) -> Result<(), ProjectorError> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        self.written()?;
        let mut batch = std::mem::take(&mut self.batch);
        let state = self.state.take_in_flight(crate::clock::now_ms());
        let offsets_cf = self.store.table::<ViewOffsets>();
        let capacity = self.overlay.len();
        let views = Arc::new(std::mem::replace(
            &mut self.overlay,
            HashMap::with_capacity(capacity),
        ));
        let mut tpl = TopicPartitionList::new();
        let offsets: Vec<(i32, i64)> = self.dirty.drain().collect();
        for (p, next) in &offsets {
            offsets_cf.put(&mut batch, p, next);
            tpl.add_partition_offset(&self.config.topic, *p, Offset::Offset(*next))?;
        }
        // Announced before the write, so the purger never drains a row it
        // does not count as pending; taken back if the write fails.
        let queued = std::mem::take(&mut self.queued);
        if let Some(purge) = &self.config.purge {
            purge.noted(&queued);
        }
        self.pending = 0;
        let sent = self.writer.send(ToWrite {
            batch,
            views: views.clone(),
            state,
        });
        self.inflight = Some(Inflight {
            views,
            offsets,
            queued,
            tpl,
        });
        if sent.is_err() {
            return self.written(); // reports the writer's end
        }
        Ok(())
    }

    /// Waits for the batch in flight, then publishes what it wrote.
    fn written(&mut self) -> Result<(), ProjectorError> {
        let Some(inflight) = self.inflight.take() else {
            return Ok(());
        };
        let result = match self.writer.done.recv() {
            Ok(r) => r.map_err(ProjectorError::from),
            Err(_) => Err(ProjectorError::WriterGone),
        };
        // Freed here rather than on the writer: mostly memory this thread
        // allocated, which mimalloc frees faster on the thread that owns it.
        self.state.release_staged();
        drop(inflight.views);
        if let Err(e) = result {
            if let Some(purge) = &self.config.purge {
                purge.forget(&inflight.queued);
            }
            return Err(e);
        }
        {
            // Published at once (an erase request waits for it), for the
            // partitions already published: the set of assigned partitions
            // is `refresh_positions`' to give, or readiness would be judged
            // on the partitions written so far.
            let mut flushed = self.status.flushed.lock();
            for (p, next) in &inflight.offsets {
                if let Some(at) = flushed.get_mut(p) {
                    *at = *next;
                }
            }
        }
        self.status.batches.fetch_add(1, Ordering::Relaxed);
        if matches!(self.config.assignment, Assignment::Group(_)) {
            // A hint for the next start; RocksDB's offsets are the truth.
            if let Err(e) = self.consumer.commit(&inflight.tpl, CommitMode::Async) {
                tracing::debug!(error = %e, "Offset commit hint failed.");
            }
        }
        Ok(())
    }

    /// Publishes the flushed offsets of the assigned partitions. No network
    /// I/O: the watermark watcher thread reads the end of the log, so a slow
    /// broker answer never holds up projection.
    /// True when it ran (nothing pending: only flushed offsets count).
    fn refresh_positions(&mut self) -> bool {
        if self.pending > 0 || self.inflight.is_some() {
            return false; // only flushed offsets count
        }
        let Ok(assignment) = self.consumer.assignment() else {
            return true;
        };
        let parts: Vec<i32> = assignment
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        if parts.is_empty() {
            return true;
        }
        let mut flushed = BTreeMap::new();
        for p in parts {
            let Ok(next) = self.stored_next(p) else {
                return true;
            };
            flushed.insert(p, next);
        }
        *self.status.flushed.lock() = flushed;
        true
    }
}
