//! The write side: commands in, events appended to Kafka, answers out.
//!
//! Each partition of the event topic has one writer task (single writer per
//! partition, so commands for one order are serialized). A writer takes every
//! command waiting in its queue, decides them against the current state,
//! seals and chains their events, persists new order keys in one fsynced
//! RocksDB batch, sends all records in one go through the idempotent
//! producer (acks=all), and answers each command only after Kafka acknowledged
//! its records: group commit. State lives in memory and is rebuilt from the
//! log at start.

pub mod log_reader;
pub mod state;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::crypto::{KeyId, KeyReplica, KeyVault, OrderKey, Shredded, VaultError};
use crate::domain::{self, Command, DomainError, ErasureScope, Event, FieldClass, PersonalFields};
use crate::events::{self, EventMeta};
use crate::kafka::KafkaSettings;
use log_reader::{
    HEADER_IDEMPOTENCY_KEY, HEADER_REQUEST_DIGEST, RawRecord, load_partition, read_range,
};
use state::{IdempotentOutcome, OrderRecord, PartitionState};

/// Most commands one writer puts into one produce round trip.
pub const MAX_BATCH: usize = 512;
const QUEUE_DEPTH: usize = 4096;

/// Why a command was not carried out. Only `Unavailable` is worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("the order is at version {actual}, not {expected}")]
    VersionMismatch { expected: u64, actual: u64 },
    #[error("this idempotency key was used with a different request")]
    IdempotencyMismatch,
    #[error("a request with this idempotency key is still in progress")]
    IdempotencyInFlight,
    #[error("event log unavailable, nothing was acknowledged; retry later: {0}")]
    Unavailable(String),
    /// No answer from the event log within the command timeout, and the
    /// command had already been sent: it may or may not be in the log. A
    /// retry with the same idempotency key answers the first outcome.
    #[error("no acknowledgement within {0:?}; the command may or may not have been written")]
    OutcomeUnknown(Duration),
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<VaultError> for ServiceError {
    fn from(e: VaultError) -> Self {
        ServiceError::Internal(e.to_string())
    }
}

/// An idempotency key and the digest of the request it came with, both as
/// keyed MACs (a plain hash of a body full of personal data could be guessed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotency {
    pub key: [u8; 32],
    pub request: [u8; 32],
}

/// What a carried-out command answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub order_id: Uuid,
    /// The order's version after the command (its number of events).
    pub version: u64,
    /// Where the command's last event landed; `None` if it wrote nothing.
    pub position: Option<(i32, i64)>,
    pub occurred_at_ms: i64,
    /// True when this is the stored answer to an earlier identical request.
    pub replayed: bool,
    /// Set for erasures: the shred record of the vault.
    pub shredded: Option<Shredded>,
    /// For erasures: Kafka has not acknowledged the key replica's tombstone
    /// (or reduced row) yet; it is retried in the background until it does.
    pub replica_pending: bool,
    pub key_id: Option<KeyId>,
}

/// An order as a reader with the right to see its personal data gets it.
#[derive(Debug, Clone)]
pub struct OrderView {
    pub order_id: Uuid,
    pub record: OrderRecord,
    /// Readable personal fields; empty after erasure.
    pub personal: PersonalFields,
    pub shredded: Option<Shredded>,
}

struct Job {
    order_id: Uuid,
    command: Command,
    expected_version: Option<u64>,
    idempotency: Option<Idempotency>,
    reply: oneshot::Sender<Result<Outcome, ServiceError>>,
    /// `QUEUED` until the writer takes the job or its caller gives up on it.
    claim: Arc<AtomicU8>,
    /// Holds the command's idempotency key in flight until the job is
    /// dropped: once the writer is done with it (and has recorded the key),
    /// or unsent. Whatever the caller does meanwhile, even go away, no second
    /// request under the key can start before that.
    _in_flight: Option<InFlight>,
}

/// An idempotency key in flight; released on drop.
struct InFlight {
    shared: Arc<Shared>,
    key: [u8; 32],
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared
            .in_flight
            .lock()
            .expect("in-flight lock")
            .remove(&self.key);
    }
}

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

/// The share of the command timeout a record may take to be acknowledged by
/// Kafka (librdkafka's `message.timeout.ms`); the rest is for settling a
/// failed batch so the answer can say whether it was written.
pub fn delivery_timeout(command_timeout: Duration) -> Duration {
    command_timeout * 3 / 4
}

struct Shared {
    settings: KafkaSettings,
    topic: String,
    /// Replaced when librdkafka reports a fatal error.
    producer: RwLock<FutureProducer>,
    /// Set by `shutdown`: a writer settling its partition gives up.
    closing: AtomicBool,
    vault: Arc<KeyVault>,
    replica: Option<KeyReplica>,
    partitions: Vec<RwLock<PartitionState>>,
    in_flight: Mutex<HashSet<[u8; 32]>>,
    /// Every command is answered within this (`--produce-timeout-ms`).
    command_timeout: Duration,
}

/// The write service. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    shared: Arc<Shared>,
    queues: Arc<RwLock<Option<Vec<mpsc::Sender<Job>>>>>,
    writers: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("topic", &self.shared.topic)
            .finish_non_exhaustive()
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The partition an order's events go to. Chosen here rather than by the
/// client's partitioner, so writer routing and Kafka placement always agree.
pub fn partition_of(order_id: &Uuid, partitions: usize) -> usize {
    let b = order_id.as_bytes();
    let tail = u64::from_be_bytes(b[8..16].try_into().expect("8 bytes"));
    (tail % partitions as u64) as usize
}

fn kafka_unavailable(e: &KafkaError) -> ServiceError {
    ServiceError::Unavailable(e.to_string())
}

impl Shared {
    fn producer(&self) -> FutureProducer {
        self.producer.read().expect("producer lock").clone()
    }
}

impl Service {
    /// Rebuilds state from the log, finishes erasures a crash interrupted,
    /// and starts one writer per partition.
    pub async fn start(
        settings: KafkaSettings,
        topic: String,
        partitions: usize,
        vault: Arc<KeyVault>,
        replica: Option<KeyReplica>,
        command_timeout: Duration,
    ) -> Result<Self, ServiceError> {
        let producer: FutureProducer = settings
            .reliable_producer_config(delivery_timeout(command_timeout))
            .create()
            .map_err(|e| kafka_unavailable(&e))?;
        // A barrier first, so whatever an earlier process left unanswered on
        // the partition is settled before the state is read (see `settle`).
        let barriers = (0..partitions).map(|p| barrier(&producer, &topic, p, command_timeout));
        for (p, r) in join_all(barriers).await.into_iter().enumerate() {
            r.map_err(|e| ServiceError::Unavailable(format!("barrier on partition {p}: {e}")))?;
        }
        let mut states = Vec::with_capacity(partitions);
        for p in 0..partitions {
            let (s, t) = (settings.clone(), topic.clone());
            let st = tokio::task::spawn_blocking(move || {
                load_partition(&s, &t, p as i32, Duration::from_secs(30))
            })
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?
            .map_err(|e| kafka_unavailable(&e))?;
            tracing::info!(
                partition = p,
                orders = st.orders.len(),
                skipped = st.skipped,
                "Partition state rebuilt from the log."
            );
            states.push(st);
        }
        // An erasure is appended before the key is destroyed; finish any that
        // a crash interrupted (or that a restore from the replica brought back).
        let mut interrupted = Vec::new();
        for st in &states {
            for (order_id, rec) in &st.orders {
                if let Some(o) = &rec.state.order
                    && !o.erased.is_empty()
                    && let Some(row) = vault.stored(*order_id)?
                    && row.wrapped.iter().any(|(c, _)| o.erased.contains(c))
                {
                    let classes = (!o.fully_erased).then(|| o.erased.clone());
                    interrupted.push((*order_id, classes, rec.updated_at_ms));
                }
            }
        }
        for (order_id, classes, at) in interrupted {
            shred(&vault, replica.as_ref(), order_id, classes.as_ref(), at).await?;
            tracing::warn!(%order_id, "Finished an interrupted erasure.");
        }
        // A crash between the vault and the replica could leave a wrapped key
        // in the replica after an erasure: re-send the erased orders' rows
        // (tombstones, or reduced rows). Compaction makes repeats free.
        if let Some(replica) = &replica {
            let mut rows = Vec::new();
            for st in &states {
                for (order_id, rec) in &st.orders {
                    if rec
                        .state
                        .order
                        .as_ref()
                        .is_some_and(|o| !o.erased.is_empty())
                    {
                        rows.push((*order_id, vault.stored(*order_id)?));
                    }
                }
            }
            for chunk in rows.chunks(1000) {
                let refs: Vec<_> = chunk.iter().map(|(id, r)| (*id, r.as_ref())).collect();
                replica
                    .publish(&refs)
                    .await
                    .map_err(|e| kafka_unavailable(&e))?;
            }
        }
        let shared = Arc::new(Shared {
            settings,
            topic,
            producer: RwLock::new(producer),
            closing: AtomicBool::new(false),
            vault,
            replica,
            partitions: states.into_iter().map(RwLock::new).collect(),
            in_flight: Mutex::new(HashSet::new()),
            command_timeout,
        });
        let mut queues = Vec::with_capacity(partitions);
        let mut writers = Vec::with_capacity(partitions);
        for p in 0..partitions {
            let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
            queues.push(tx);
            writers.push(tokio::spawn(writer(shared.clone(), p, rx)));
        }
        Ok(Self {
            shared,
            queues: Arc::new(RwLock::new(Some(queues))),
            writers: Arc::new(Mutex::new(writers)),
        })
    }

    pub fn partitions(&self) -> usize {
        self.shared.partitions.len()
    }

    pub fn vault(&self) -> &Arc<KeyVault> {
        &self.shared.vault
    }

    /// Carries out a command; answers once its events are acknowledged by Kafka.
    pub async fn execute(
        &self,
        order_id: Uuid,
        command: Command,
        expected_version: Option<u64>,
        idempotency: Option<Idempotency>,
    ) -> Result<Outcome, ServiceError> {
        let p = partition_of(&order_id, self.partitions());
        let mut guard = None;
        if let Some(idem) = idempotency {
            if let Some(prev) = self.known(p, &idem.key) {
                return self.replay(prev, idem);
            }
            if !self
                .shared
                .in_flight
                .lock()
                .expect("in-flight lock")
                .insert(idem.key)
            {
                return Err(ServiceError::IdempotencyInFlight);
            }
            let g = InFlight {
                shared: self.shared.clone(),
                key: idem.key,
            };
            // The first request under this key may have finished between the
            // look-up above and the insert: look again, now that no other
            // request under it can start.
            if let Some(prev) = self.known(p, &idem.key) {
                drop(g);
                return self.replay(prev, idem);
            }
            guard = Some(g);
        }
        let kind = command.kind();
        let result = self
            .dispatch(p, order_id, command, expected_version, idempotency, guard)
            .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ServiceError::Domain(_)) => "refused",
            Err(ServiceError::VersionMismatch { .. }) => "version_mismatch",
            Err(ServiceError::Unavailable(_) | ServiceError::ShuttingDown) => "unavailable",
            Err(ServiceError::OutcomeUnknown(_)) => "unknown",
            Err(_) => "error",
        };
        metrics::counter!(crate::telemetry::COMMANDS, "command" => kind, "outcome" => outcome)
            .increment(1);
        result
    }

    /// The stored answer to an idempotency key: on the command's partition,
    /// or on any (a place command's order id is new on every attempt).
    fn known(&self, p: usize, key: &[u8; 32]) -> Option<IdempotentOutcome> {
        let look = |st: &RwLock<PartitionState>| {
            st.read()
                .expect("partition lock")
                .idempotency
                .get(key)
                .cloned()
        };
        look(&self.shared.partitions[p]).or_else(|| {
            self.shared
                .partitions
                .iter()
                .enumerate()
                .filter(|(q, _)| *q != p)
                .find_map(|(_, st)| look(st))
        })
    }

    fn replay(&self, prev: IdempotentOutcome, idem: Idempotency) -> Result<Outcome, ServiceError> {
        if prev.request_digest != idem.request {
            return Err(ServiceError::IdempotencyMismatch);
        }
        Ok(Outcome {
            order_id: prev.order_id,
            version: prev.version,
            position: None,
            occurred_at_ms: 0,
            replayed: true,
            shredded: None,
            replica_pending: false,
            key_id: None,
        })
    }

    async fn dispatch(
        &self,
        p: usize,
        order_id: Uuid,
        command: Command,
        expected_version: Option<u64>,
        idempotency: Option<Idempotency>,
        in_flight: Option<InFlight>,
    ) -> Result<Outcome, ServiceError> {
        let deadline = tokio::time::Instant::now() + self.shared.command_timeout;
        let tx = {
            let q = self.queues.read().expect("queues lock");
            q.as_ref().ok_or(ServiceError::ShuttingDown)?[p].clone()
        };
        let (reply, rx) = oneshot::channel();
        let claim = Arc::new(AtomicU8::new(QUEUED));
        let job = Job {
            order_id,
            command,
            expected_version,
            idempotency,
            reply,
            claim: claim.clone(),
            _in_flight: in_flight,
        };
        let not_sent = || {
            ServiceError::Unavailable(format!(
                "the writer of partition {p} did not take the command within {:?}",
                self.shared.command_timeout
            ))
        };
        match tokio::time::timeout_at(deadline, tx.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ServiceError::ShuttingDown),
            Err(_) => return Err(not_sent()),
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(r) => r.map_err(|_| ServiceError::ShuttingDown)?,
            Err(_) => {
                if claim
                    .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    // Still in the queue: the writer will drop it unsent.
                    return Err(not_sent());
                }
                // The writer has it; its idempotency key stays in flight
                // until the writer is done with it (the job holds it).
                Err(ServiceError::OutcomeUnknown(self.shared.command_timeout))
            }
        }
    }

    /// The order's state and, when its key lives, its personal fields.
    pub fn get(&self, order_id: Uuid) -> Result<Option<OrderView>, ServiceError> {
        let p = partition_of(&order_id, self.partitions());
        let Some(record) = self.shared.partitions[p]
            .read()
            .expect("partition lock")
            .orders
            .get(&order_id)
            .cloned()
        else {
            return Ok(None);
        };
        let key = match self.shared.vault.get(order_id) {
            Ok(k) => Some(k),
            Err(VaultError::Shredded { .. } | VaultError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let mut personal = PersonalFields::default();
        if let (Some(env), Some(key)) = (&record.placed, &key)
            && let Event::OrderPlaced(p) = events::open_event(env, Some(key))
                .map_err(|e| ServiceError::Internal(e.to_string()))?
        {
            personal = p.personal;
        }
        let shredded = self.shared.vault.shredded(order_id)?;
        Ok(Some(OrderView {
            order_id,
            record,
            personal,
            shredded,
        }))
    }

    /// Every order id the writer knows (for tests and audits of small logs).
    pub fn order_ids(&self) -> Vec<Uuid> {
        self.shared
            .partitions
            .iter()
            .flat_map(|p| {
                p.read()
                    .expect("partition lock")
                    .orders
                    .keys()
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Stops taking commands, lets the writers finish what they hold, and
    /// flushes the producer, within `limit`.
    pub async fn shutdown(&self, limit: Duration) {
        self.queues.write().expect("queues lock").take();
        self.shared.closing.store(true, Ordering::Release);
        let writers: Vec<_> = std::mem::take(&mut *self.writers.lock().expect("writers lock"));
        if tokio::time::timeout(limit, join_all(writers))
            .await
            .is_err()
        {
            tracing::warn!(?limit, "Writers did not finish in time.");
        }
        let producer = self.shared.producer();
        let _ = tokio::task::spawn_blocking(move || producer.flush(limit)).await;
    }
}

/// A command decided and sealed, waiting for Kafka.
struct Pending {
    job: Job,
    records: Vec<(Vec<u8>, i64)>,
    new_key: Option<OrderKey>,
    outcome: Outcome,
    /// Hash of the command's last record: how a settled partition tells
    /// whether the command landed.
    last_hash: events::RecordHash,
}

/// Destroys an order's key (or some classes of it) in the vault, then
/// replaces its replica row with the reduced row or a tombstone.
async fn shred(
    vault: &KeyVault,
    replica: Option<&KeyReplica>,
    order_id: Uuid,
    classes: Option<&BTreeSet<FieldClass>>,
    now: i64,
) -> Result<Shredded, ServiceError> {
    let record = vault.destroy(order_id, classes, now)?;
    publish_replica_row(vault, replica, order_id).await?;
    Ok(record)
}

/// Writes an order's current vault row (a tombstone once it is shredded) to
/// the key replica.
async fn publish_replica_row(
    vault: &KeyVault,
    replica: Option<&KeyReplica>,
    order_id: Uuid,
) -> Result<(), ServiceError> {
    let Some(replica) = replica else {
        return Ok(());
    };
    let row = vault.stored(order_id)?;
    replica
        .publish(&[(order_id, row.as_ref())])
        .await
        .map_err(|e| ServiceError::Unavailable(format!("key replica: {e}")))
}

/// Retries [`publish_replica_row`] until Kafka acknowledges it: an erased
/// order's wrapped key must not stay in the replica topic for longer than the
/// outage. (A crash before that is covered at the next start.)
async fn republish_replica_row(shared: Arc<Shared>, order_id: Uuid) {
    let mut pause = Duration::from_millis(200);
    loop {
        tokio::time::sleep(pause).await;
        let before = shared.vault.stored(order_id).ok().flatten();
        match publish_replica_row(&shared.vault, shared.replica.as_ref(), order_id).await {
            // Done only if the row did not change meanwhile: a later erasure
            // of the order may have published its row before this one
            // landed; publishing again puts the latest row last.
            Ok(()) if shared.vault.stored(order_id).ok().flatten() == before => {
                tracing::info!(%order_id, "Key replica row of an erasure written after a retry.");
                return;
            }
            Ok(()) => {}
            Err(e) => {
                tracing::debug!(%order_id, error = %e, "Key replica row still not acknowledged.")
            }
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Where the record of a command that was not acknowledged landed in the
/// settled partition, if it did. (A batch holds one command per order, and
/// every command writes one event: the order's last record is its record or
/// not.)
fn landed(st: &PartitionState, p: &Pending, partition: usize) -> Option<(i32, i64)> {
    debug_assert_eq!(p.records.len(), 1, "one event per command");
    let rec = st.orders.get(&p.job.order_id)?;
    (rec.state.version == p.outcome.version && rec.last_hash == p.last_hash)
        .then_some((partition as i32, rec.last_offset))
}

/// Appends a barrier record (no key, no value, a header every reader skips)
/// to `partition` and waits for Kafka's acknowledgement; returns its offset.
async fn barrier(
    producer: &FutureProducer,
    topic: &str,
    partition: usize,
    timeout: Duration,
) -> Result<i64, KafkaError> {
    let headers = OwnedHeaders::new().insert(Header {
        key: crate::kafka::HEADER_BARRIER,
        value: Some(&b"1"[..]),
    });
    let record = FutureRecord::<[u8], [u8]>::to(topic)
        .partition(partition as i32)
        .headers(headers);
    producer
        .send(record, timeout)
        .await
        .map(|d| d.offset)
        .map_err(|(e, _)| e)
}

/// Brings a partition whose produce failed back to a known state: returns
/// the records from `from` (the state's next offset) through a barrier, to be
/// folded into the state. A barrier appended and acknowledged (acks=all)
/// after the failed records means every record before it in the partition is
/// committed or gone for good: the idempotent producer keeps a partition's
/// records in order, so none of the failed ones can land after it. Retries
/// until Kafka answers (commands for this partition wait meanwhile, and time
/// out to their callers); `None` once the service is stopping.
async fn settle(shared: &Shared, partition: usize, from: i64) -> Option<Vec<RawRecord>> {
    let mut pause = Duration::from_millis(100);
    let started = Instant::now();
    loop {
        if shared.closing.load(Ordering::Acquire) {
            return None;
        }
        let producer = shared.producer();
        if let Some((code, reason)) = producer.client().fatal_error() {
            // The producer cannot go on (librdkafka says so): a new one, with
            // a new producer id, takes over.
            tracing::error!(?code, %reason, "Fatal producer error; replacing the producer.");
            match shared
                .settings
                .reliable_producer_config(delivery_timeout(shared.command_timeout))
                .create::<FutureProducer>()
            {
                Ok(p) => *shared.producer.write().expect("producer lock") = p,
                Err(e) => tracing::error!(error = %e, "Creating a new producer failed."),
            }
            continue;
        }
        match barrier(
            &producer,
            &shared.topic,
            partition,
            delivery_timeout(shared.command_timeout),
        )
        .await
        {
            Ok(offset) => {
                let (s, t) = (shared.settings.clone(), shared.topic.clone());
                // A reader stuck on a leader that went away gives up after
                // this, and the next round starts with a fresh client.
                let stall = shared.command_timeout;
                let read = tokio::task::spawn_blocking(move || {
                    read_range(&s, &t, partition as i32, from, offset + 1, stall)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
                match read {
                    Ok(records) => {
                        tracing::info!(
                            partition,
                            barrier = offset,
                            records = records.len(),
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "Partition settled."
                        );
                        return Some(records);
                    }
                    Err(e) => {
                        tracing::warn!(partition, error = %e, "Re-reading the partition failed; retrying.")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(partition, error = %e, "Barrier not acknowledged; retrying.")
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// A pending command with where its last record landed, or why it did not.
type Acked = (Pending, Result<(i32, i64), String>);

async fn writer(shared: Arc<Shared>, partition: usize, mut rx: mpsc::Receiver<Job>) {
    // Jobs waiting for a later batch, in arrival order.
    let mut waiting: std::collections::VecDeque<Job> = std::collections::VecDeque::new();
    let mut open = true;
    while open || !waiting.is_empty() {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(job) => waiting.push_back(job),
                None => break,
            }
        }
        while open && waiting.len() < MAX_BATCH * 2 {
            match rx.try_recv() {
                Ok(job) => waiting.push_back(job),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        // At most one command per order in a batch: if Kafka failed one
        // record of a batch and acknowledged a later one, a later command of
        // the same order would be acknowledged on a chain with a hole.
        let mut orders = HashSet::new();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut later = std::collections::VecDeque::new();
        for job in waiting.drain(..) {
            if batch.len() < MAX_BATCH && orders.insert(job.order_id) {
                batch.push(job);
            } else {
                later.push_back(job);
            }
        }
        waiting = later;
        write_batch(&shared, partition, batch).await;
    }
    tracing::debug!(partition, "Writer stopped.");
}

async fn write_batch(shared: &Arc<Shared>, partition: usize, jobs: Vec<Job>) {
    // A job whose caller stopped waiting before it was taken is dropped
    // unsent; the caller was told nothing was written.
    let jobs: Vec<Job> = jobs
        .into_iter()
        .filter(|j| {
            j.claim
                .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
        .collect();
    let now = now_ms();
    // Tentative copies of the orders this batch touches.
    let mut tentative: HashMap<Uuid, OrderRecord> = HashMap::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut noop_keys: Vec<([u8; 32], IdempotentOutcome)> = Vec::new();
    let mut noop_replies = Vec::new();
    {
        let st = shared.partitions[partition].read().expect("partition lock");
        for job in &jobs {
            if let Some(r) = st.orders.get(&job.order_id) {
                tentative.entry(job.order_id).or_insert_with(|| r.clone());
            }
        }
    }
    for job in jobs {
        let rec = tentative.entry(job.order_id).or_default();
        if let Some(expected) = job.expected_version
            && expected != rec.state.version
        {
            let _ = job.reply.send(Err(ServiceError::VersionMismatch {
                expected,
                actual: rec.state.version,
            }));
            continue;
        }
        let events = match domain::decide(&rec.state, job.command.clone()) {
            Ok(e) => e,
            Err(e) => {
                let _ = job.reply.send(Err(e.into()));
                continue;
            }
        };
        let mut outcome = Outcome {
            order_id: job.order_id,
            version: rec.state.version,
            position: None,
            occurred_at_ms: now,
            replayed: false,
            shredded: None,
            replica_pending: false,
            key_id: rec.key_id,
        };
        if events.is_empty() {
            // Nothing to write, so no record carries the key: it is kept in
            // memory only (a retry answers the same; another request under
            // it is refused), until the next start.
            if let Some(idem) = job.idempotency {
                noop_keys.push((
                    idem.key,
                    IdempotentOutcome {
                        request_digest: idem.request,
                        order_id: job.order_id,
                        version: outcome.version,
                    },
                ));
            }
            noop_replies.push((job, outcome));
            continue;
        }
        let new_key = matches!(job.command, Command::PlaceOrder(_)).then(OrderKey::generate);
        let mut records = Vec::with_capacity(events.len());
        let mut failed = None;
        for event in &events {
            let key_id = new_key
                .as_ref()
                .map(OrderKey::id)
                .or(rec.key_id)
                .unwrap_or(KeyId([0; 16]));
            let meta = EventMeta {
                event_id: Uuid::now_v7(),
                order_id: job.order_id,
                sequence: rec.state.version + 1,
                occurred_at_ms: now,
                key_id,
                prev_hash: rec.last_hash,
            };
            match events::seal_event(event, meta, new_key.as_ref()) {
                Ok(env) => {
                    let bytes = events::encode(&env);
                    let absorbed = rec.absorb(&env, &bytes, -1);
                    debug_assert!(absorbed, "a fresh event always continues its chain");
                    records.push((bytes, now));
                }
                Err(e) => {
                    failed = Some(ServiceError::Internal(e.to_string()));
                    break;
                }
            }
        }
        if let Some(e) = failed {
            // Undo the tentative changes of this job: reload from shared state.
            let st = shared.partitions[partition].read().expect("partition lock");
            match st.orders.get(&job.order_id) {
                Some(r) => *rec = r.clone(),
                None => *rec = OrderRecord::default(),
            }
            let _ = job.reply.send(Err(e));
            continue;
        }
        outcome.version = rec.state.version;
        outcome.key_id = rec.key_id;
        pending.push(Pending {
            job,
            records,
            new_key,
            outcome,
            last_hash: rec.last_hash,
        });
    }
    if !noop_keys.is_empty() {
        let mut st = shared.partitions[partition]
            .write()
            .expect("partition lock");
        st.idempotency.extend(noop_keys);
    }
    // Answered once their keys are known, so a retry finds them.
    for (job, outcome) in noop_replies {
        let _ = job.reply.send(Ok(outcome));
    }
    if pending.is_empty() {
        return;
    }

    // New order keys first, in one fsynced batch: an event must never reach
    // the log without its key being safe.
    let new_keys: Vec<(Uuid, &OrderKey)> = pending
        .iter()
        .filter_map(|p| p.new_key.as_ref().map(|k| (p.job.order_id, k)))
        .collect();
    if let Err(e) = shared.vault.store_new(&new_keys, now) {
        tracing::error!(error = %e, "Storing new order keys failed; batch refused.");
        for p in pending {
            let _ = p.job.reply.send(Err(ServiceError::Internal(
                "storing the order key failed".into(),
            )));
        }
        return;
    }
    // ... and in their second home, the replica topic, before any event that needs them.
    if let Some(replica) = &shared.replica
        && !new_keys.is_empty()
    {
        let rows: Vec<(Uuid, Option<crate::crypto::StoredKey>)> = new_keys
            .iter()
            .map(|(id, _)| (*id, shared.vault.stored(*id).ok().flatten()))
            .collect();
        let refs: Vec<(Uuid, Option<&crate::crypto::StoredKey>)> =
            rows.iter().map(|(id, r)| (*id, r.as_ref())).collect();
        if let Err(e) = replica.publish(&refs).await {
            tracing::warn!(error = %e, "Replicating new order keys failed; batch refused.");
            for (id, _) in &new_keys {
                let _ = shared.vault.discard(*id);
            }
            for p in pending {
                let _ = p
                    .job
                    .reply
                    .send(Err(ServiceError::Unavailable(format!("key replica: {e}"))));
            }
            return;
        }
    }

    // Send everything, then wait for all acknowledgements: one round trip.
    let producer = shared.producer();
    let mut deliveries = Vec::with_capacity(pending.len());
    for p in &pending {
        let key: &[u8] = p.job.order_id.as_bytes();
        let mut futs = Vec::with_capacity(p.records.len());
        for (n, (bytes, ts)) in p.records.iter().enumerate() {
            let mut headers = OwnedHeaders::new();
            if let Some(idem) = &p.job.idempotency
                && n + 1 == p.records.len()
            {
                headers = headers
                    .insert(Header {
                        key: HEADER_IDEMPOTENCY_KEY,
                        value: Some(&idem.key[..]),
                    })
                    .insert(Header {
                        key: HEADER_REQUEST_DIGEST,
                        value: Some(&idem.request[..]),
                    });
            }
            let record = FutureRecord::to(&shared.topic)
                .partition(partition as i32)
                .key(key)
                .payload(bytes)
                .timestamp(*ts)
                .headers(headers);
            futs.push(producer.send(record, delivery_timeout(shared.command_timeout)));
        }
        deliveries.push(join_all(futs));
    }
    metrics::histogram!(crate::telemetry::BATCH_SIZE).record(pending.len() as f64);
    let produce_started = std::time::Instant::now();
    let results = join_all(deliveries).await;
    metrics::histogram!(crate::telemetry::PRODUCE_LATENCY)
        .record(produce_started.elapsed().as_secs_f64());

    let mut any_failed = false;
    let mut acked: Vec<Acked> = Vec::with_capacity(pending.len());
    for (p, res) in pending.into_iter().zip(results) {
        let mut last = Ok((partition as i32, -1));
        for r in res {
            match r {
                Ok(delivery) => {
                    if last.is_ok() {
                        last = Ok((delivery.partition, delivery.offset));
                    }
                }
                Err((e, _)) => {
                    any_failed = true;
                    last = Err(e.to_string());
                }
            }
        }
        acked.push((p, last));
    }

    // Some records were not acknowledged. Kafka may still hold some of them
    // (a leader can append a record and commit it after the producer gave
    // up), so settle the partition and re-read it: memory must match the log
    // before the next command of these orders is decided, and each answer
    // says whether its command is in the log.
    // `Some(None)`: the service is stopping and the partition was not
    // settled, so what became of the failed records is not known.
    let settled = if any_failed {
        tracing::warn!(
            partition,
            "Some records were not acknowledged; settling the partition."
        );
        let from = shared.partitions[partition]
            .read()
            .expect("partition lock")
            .next_offset;
        Some(settle(shared, partition, from).await)
    } else {
        None
    };
    let mut to_shred: Vec<(Uuid, Option<BTreeSet<FieldClass>>, usize)> = Vec::new();
    let mut replies = Vec::with_capacity(acked.len());
    {
        let mut st = shared.partitions[partition]
            .write()
            .expect("partition lock");
        if let Some(Some(records)) = &settled {
            for r in records {
                log_reader::fold(&mut st, partition as i32, r);
            }
        }
        for (mut p, res) in acked {
            let res = match (res, &settled) {
                (Ok(pos), _) => Ok(pos),
                (Err(e), Some(Some(_))) => {
                    landed(&st, &p, partition).ok_or(ServiceError::Unavailable(e))
                }
                (Err(_), _) => Err(ServiceError::OutcomeUnknown(shared.command_timeout)),
            };
            match res {
                Ok(pos) => {
                    p.outcome.position = Some(pos);
                    if !any_failed {
                        let mut rec = tentative.get(&p.job.order_id).cloned().unwrap_or_default();
                        rec.last_offset = pos.1;
                        st.orders.insert(p.job.order_id, rec);
                        st.next_offset = st.next_offset.max(pos.1 + 1);
                    }
                    if let Some(idem) = p.job.idempotency {
                        st.idempotency.insert(
                            idem.key,
                            IdempotentOutcome {
                                request_digest: idem.request,
                                order_id: p.job.order_id,
                                version: p.outcome.version,
                            },
                        );
                    }
                    if let Command::EraseOrder { scope } = &p.job.command {
                        let classes = match scope {
                            ErasureScope::Order => None,
                            ErasureScope::Classes(c) => Some(c.clone()),
                        };
                        to_shred.push((p.job.order_id, classes, replies.len()));
                    }
                    replies.push((p.job.reply, Ok(p.outcome)));
                }
                Err(e) => {
                    // A key is discarded only when its placement is known
                    // not to be in the log.
                    if matches!(e, ServiceError::Unavailable(_))
                        && p.new_key.is_some()
                        && !st.orders.contains_key(&p.job.order_id)
                    {
                        let _ = shared.vault.discard(p.job.order_id);
                    }
                    replies.push((p.job.reply, Err(e)));
                }
            }
        }
    }
    // Erasure: the OrderErased event is in the log; now destroy the key.
    for (order_id, classes, idx) in to_shred {
        let rec = match shared.vault.destroy(order_id, classes.as_ref(), now) {
            Ok(rec) => rec,
            Err(e) => {
                tracing::error!(%order_id, error = %e, "Key destruction failed after OrderErased; it is retried at next start.");
                continue;
            }
        };
        let replica_pending = match publish_replica_row(
            &shared.vault,
            shared.replica.as_ref(),
            order_id,
        )
        .await
        {
            Ok(()) => false,
            Err(e) => {
                tracing::warn!(%order_id, error = %e, "The key replica did not acknowledge an erasure's row; retrying in the background.");
                tokio::spawn(republish_replica_row(shared.clone(), order_id));
                true
            }
        };
        if let Ok(outcome) = &mut replies[idx].1 {
            outcome.shredded = Some(rec);
            outcome.replica_pending = replica_pending;
        }
    }
    for (reply, res) in replies {
        let _ = reply.send(res);
    }
}
