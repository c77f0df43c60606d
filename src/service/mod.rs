//! The write side: commands in, events appended to Kafka, answers out.
//!
//! Each partition of the event topic has one writer task (single writer per
//! partition, so commands for one order are serialized). A writer takes every
//! command waiting in its queue, decides them against the current state,
//! seals and chains their events, persists new order keys in one fsynced
//! RocksDB batch, sends all records in one go through the idempotent
//! producer (acks=all), and answers each command only after Kafka acknowledged
//! its records: group commit.
//!
//! What commands are decided against lives in RocksDB ([`state`]), kept from
//! the log by the projector; a writer reads it through a bounded cache of
//! hot orders ([`partition`]) and stores the effects of its own acknowledged
//! batches ([`commit`]). Taking a partition costs only the log after the
//! stored checkpoint: the writer appends a barrier and folds the tail up to
//! it ([`partition::follow`], [`partition::catch_up`]). Failed produces are settled the same way
//! ([`settle`]).

mod commit;
pub mod intents;
pub mod log_reader;
pub mod partition;
mod settle;
pub mod state;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::crypto::{KeyId, KeyReplica, KeyVault, Shredded, VaultError};
use crate::domain::{Command, DomainError, Event, FieldClass, PersonalFields};
use crate::events;
use crate::kafka::KafkaSettings;
use crate::store::{Store, StoreError};
use partition::PartitionState;
use state::{IdempotentOutcome, OrderRecord};

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

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        ServiceError::Internal(e.to_string())
    }
}

/// Where the write side keeps its state, and how much of it in memory.
#[derive(Debug, Clone)]
pub struct StateOptions {
    pub store: Store,
    /// Orders kept in memory, all partitions together.
    pub cache_orders: usize,
    /// How long an idempotency key answers a retry.
    pub idempotency_ttl: Duration,
    /// Fold the whole log in the writers, checking every erasure it holds
    /// against the vault: after the vault was restored from the replica
    /// topic, which may have brought back a key whose tombstone a crash kept
    /// from being written.
    pub rebuild: bool,
}

impl StateOptions {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache_orders: partition::DEFAULT_CACHE_ORDERS,
            idempotency_ttl: state::DEFAULT_IDEMPOTENCY_TTL,
            rebuild: false,
        }
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
    /// Set once every partition's state has caught up after the start.
    ready: AtomicBool,
    /// Notified when `ready` is set.
    started: tokio::sync::Notify,
    vault: Arc<KeyVault>,
    replica: Option<KeyReplica>,
    store: Store,
    idempotency_ttl: Duration,
    partitions: Vec<Mutex<PartitionState>>,
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

    fn partition(&self, p: usize) -> std::sync::MutexGuard<'_, PartitionState> {
        self.partitions[p].lock().expect("partition lock")
    }
}

impl Service {
    /// Appends a barrier to every partition (failing fast when Kafka cannot
    /// be written), then starts the writers. Each partition's stored state is
    /// caught up with the log up to its barrier in the background, and
    /// erasures a crash interrupted are finished; until then
    /// [`Service::ready`] is false and commands wait (within the command
    /// timeout) for it.
    pub async fn start(
        settings: KafkaSettings,
        topic: String,
        partitions: usize,
        vault: Arc<KeyVault>,
        replica: Option<KeyReplica>,
        command_timeout: Duration,
        options: StateOptions,
    ) -> Result<Self, ServiceError> {
        let producer: FutureProducer = settings
            .reliable_producer_config(delivery_timeout(command_timeout))
            .create()
            .map_err(|e| kafka_unavailable(&e))?;
        // A barrier first, so whatever an earlier process left unanswered on
        // the partition is settled before the state is read (see `settle`).
        let barriers =
            (0..partitions).map(|p| settle::barrier(&producer, &topic, p, command_timeout));
        let mut ends = Vec::with_capacity(partitions);
        for (p, r) in join_all(barriers).await.into_iter().enumerate() {
            ends.push(
                r.map_err(|e| ServiceError::Unavailable(format!("barrier on partition {p}: {e}")))?
                    + 1,
            );
        }
        let store = options.store.clone();
        // The whole log when the stored state does not cover it yet (a data
        // directory of an earlier version) or every erasure must be checked;
        // otherwise only the tail after the stored checkpoint.
        let from_zero = !state::prepare(&store)? || options.rebuild;
        let per_partition = options.cache_orders.div_ceil(partitions.max(1));
        let shared = Arc::new(Shared {
            settings,
            topic,
            producer: RwLock::new(producer),
            closing: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            started: tokio::sync::Notify::new(),
            vault,
            replica,
            store,
            idempotency_ttl: options.idempotency_ttl,
            partitions: ends
                .iter()
                .map(|end| Mutex::new(PartitionState::new(per_partition, *end)))
                .collect(),
            in_flight: Mutex::new(HashSet::new()),
            command_timeout,
        });
        let mut queues = Vec::with_capacity(partitions);
        let mut writers = Vec::with_capacity(partitions + 1);
        writers.push(tokio::spawn(catch_up_all(shared.clone(), ends, from_zero)));
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

    /// True once every partition's stored state has caught up with the log
    /// (as of the start) and the writers take commands.
    pub fn ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    /// Waits until [`Service::ready`], or `deadline`.
    async fn wait_ready(&self, deadline: tokio::time::Instant) -> Result<(), ServiceError> {
        loop {
            let started = self.shared.started.notified();
            if self.ready() {
                return Ok(());
            }
            if self.shared.closing.load(Ordering::Acquire) {
                return Err(ServiceError::ShuttingDown);
            }
            if tokio::time::timeout_at(deadline, started).await.is_err() {
                return Err(ServiceError::Unavailable(
                    "the write side is still catching up with the log after a start".into(),
                ));
            }
        }
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
        // One deadline for the whole command, waiting for the start included.
        let deadline = tokio::time::Instant::now() + self.shared.command_timeout;
        // Until the tail is folded, an idempotency key written there would
        // not be found.
        if !self.ready() {
            self.wait_ready(deadline).await?;
        }
        let mut guard = None;
        if let Some(idem) = idempotency {
            if let Some(prev) = self.known(&idem.key)? {
                return replay(prev, idem);
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
            if let Some(prev) = self.known(&idem.key)? {
                drop(g);
                return replay(prev, idem);
            }
            guard = Some(g);
        }
        let kind = command.kind();
        let result = self
            .dispatch(
                order_id,
                command,
                expected_version,
                idempotency,
                guard,
                deadline,
            )
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

    /// The stored answer to an idempotency key, unless it has expired: one
    /// point read (a place command's order id is new on every attempt, so
    /// keys are not kept per order or partition).
    fn known(&self, key: &[u8; 32]) -> Result<Option<IdempotentOutcome>, ServiceError> {
        Ok(state::lookup_idempotency(
            &self.shared.store,
            key,
            now_ms(),
        )?)
    }

    async fn dispatch(
        &self,
        order_id: Uuid,
        command: Command,
        expected_version: Option<u64>,
        idempotency: Option<Idempotency>,
        in_flight: Option<InFlight>,
        deadline: tokio::time::Instant,
    ) -> Result<Outcome, ServiceError> {
        let p = partition_of(&order_id, self.partitions());
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

    /// [`Service::get`] once the stored state has caught up after a start
    /// (an order in the tail not yet folded would read as missing), waiting
    /// for that within the command timeout.
    pub async fn get_when_ready(&self, order_id: Uuid) -> Result<Option<OrderView>, ServiceError> {
        if !self.ready() {
            self.wait_ready(tokio::time::Instant::now() + self.shared.command_timeout)
                .await?;
        }
        self.get(order_id)
    }

    /// The order's state and, when its key lives, its personal fields, as
    /// stored now.
    pub fn get(&self, order_id: Uuid) -> Result<Option<OrderView>, ServiceError> {
        let p = partition_of(&order_id, self.partitions());
        let cached = self.shared.partition(p).peek(&order_id).cloned();
        let record = match cached {
            Some(r) => r,
            None => match state::load_order(&self.shared.store, &order_id)? {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        let key = match self.shared.vault.get(order_id) {
            Ok(k) => Some(k),
            Err(VaultError::Shredded { .. } | VaultError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let mut personal = PersonalFields::default();
        if let Some(key) = &key
            && let Some(env) = state::load_placed(&self.shared.store, &order_id)?
            && let Event::OrderPlaced(p) = events::open_event(&env, Some(key))
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

    /// The order's sealed `OrderPlaced` envelope (personal fields still
    /// encrypted), until the whole order is erased.
    pub fn placed(&self, order_id: Uuid) -> Result<Option<events::Envelope>, ServiceError> {
        Ok(state::load_placed(&self.shared.store, &order_id)?)
    }

    /// Stops taking commands, lets the writers finish what they hold, and
    /// flushes the producer, within `limit`.
    pub async fn shutdown(&self, limit: Duration) {
        self.queues.write().expect("queues lock").take();
        self.shared.closing.store(true, Ordering::Release);
        // Requests waiting for the start to finish give up.
        self.shared.started.notify_waiters();
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

/// The answer to a request whose idempotency key is already stored: the
/// first outcome, or a refusal when the key came with another request.
fn replay(prev: IdempotentOutcome, idem: Idempotency) -> Result<Outcome, ServiceError> {
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

/// Finishes an erasure the log holds (the order's stored state says which
/// classes): destroys what the vault still holds of them and re-sends the
/// replica row. With `intent`, the order had an erase intent: it is cleared
/// once done, or at once when the log holds no erasure (the record never
/// landed); without, the replica row is re-sent only when something was
/// destroyed.
async fn finish_erasure(
    vault: &KeyVault,
    replica: Option<&KeyReplica>,
    store: &Store,
    order_id: Uuid,
    intent: Option<intents::IntentId>,
) -> Result<(), ServiceError> {
    let rec = state::load_order(store, &order_id)?;
    let erased = rec.as_ref().and_then(|r| {
        r.state
            .order
            .as_ref()
            .filter(|o| !o.erased.is_empty())
            .map(|o| (o, r.updated_at_ms))
    });
    if let Some((o, at)) = erased {
        let live = vault
            .stored(order_id)?
            .is_some_and(|row| row.wrapped.iter().any(|(c, _)| o.erased.contains(c)));
        if live {
            let classes = (!o.fully_erased).then(|| o.erased.clone());
            shred(vault, replica, order_id, classes.as_ref(), at).await?;
            tracing::warn!(%order_id, "Finished an interrupted erasure.");
        } else if intent.is_some() {
            // A crash between the vault and the replica could leave a
            // wrapped key in the replica: send its row again.
            publish_replica_row(vault, replica, order_id).await?;
        }
    }
    if let Some(id) = intent {
        intents::clear(store, &id)?;
    }
    Ok(())
}

/// Finishes the erase intents of `partition` left by erasures whose outcome
/// was not known when they were answered (idempotent for any other).
async fn finish_intents(shared: &Shared, partition: usize) -> Result<(), ServiceError> {
    let n = shared.partitions.len();
    for (id, _) in intents::pending(&shared.store)? {
        if partition_of(&id.order_id, n) == partition {
            finish_erasure(
                &shared.vault,
                shared.replica.as_ref(),
                &shared.store,
                id.order_id,
                Some(id),
            )
            .await?;
        }
    }
    Ok(())
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
async fn republish_replica_row(shared: Arc<Shared>, order_id: Uuid, intent: intents::IntentId) {
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
                if let Err(e) = intents::clear(&shared.store, &intent) {
                    tracing::warn!(%order_id, error = %e, "Clearing the erase intent failed; it is finished again at next start.");
                }
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

/// Catches every partition's stored state up to `ends` (its start barrier)
/// and finishes interrupted erasures, then opens the writers. Each step is
/// retried until it succeeds or the service stops.
async fn catch_up_all(shared: Arc<Shared>, ends: Vec<i64>, from_zero: bool) {
    let started = Instant::now();
    let mut pause = Duration::from_millis(500);
    let erased = loop {
        if shared.closing.load(Ordering::Acquire) {
            return;
        }
        match catch_up_partitions(&shared, &ends, from_zero).await {
            Ok(erased) => break erased,
            Err(e) => {
                tracing::error!(error = %e, "Catching up with the log failed; retrying.");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    };
    loop {
        if shared.closing.load(Ordering::Acquire) {
            return;
        }
        match finish_erasures(&shared, &erased).await {
            Ok(()) => break,
            Err(e) => {
                tracing::error!(error = %e, "Finishing interrupted erasures failed; retrying.");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
    shared.ready.store(true, Ordering::Release);
    shared.started.notify_waiters();
    tracing::info!(
        partitions = ends.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Write side ready."
    );
}

/// Folds every partition up to its barrier; returns the erased orders the
/// folds met (every one when folding from 0).
async fn catch_up_partitions(
    shared: &Arc<Shared>,
    ends: &[i64],
    from_zero: bool,
) -> Result<Vec<Uuid>, ServiceError> {
    let catch_ups = ends.iter().enumerate().map(|(p, until)| {
        let (sh, until) = (shared.clone(), *until);
        tokio::task::spawn_blocking(move || {
            let (s, t, st) = (&sh.settings, &sh.topic, &sh.store);
            let (ttl, stall, stop) = (sh.idempotency_ttl, Duration::from_secs(60), &sh.closing);
            let from = if from_zero {
                0
            } else {
                st.view_offset(p as i32)?
            };
            let t0 = Instant::now();
            let caught = if from_zero {
                partition::catch_up(s, t, st, ttl, p as i32, 0, until, stall, stop)
            } else {
                partition::follow(s, t, st, ttl, p as i32, until, stall, stop)
            };
            caught.map(|r| (from, r, t0.elapsed()))
        })
    });
    let mut erased = Vec::new();
    for (p, r) in join_all(catch_ups).await.into_iter().enumerate() {
        let (from, report, took) = r
            .map_err(|e| ServiceError::Internal(e.to_string()))?
            .map_err(|e| match e {
                partition::CatchUpError::Kafka(e) => kafka_unavailable(&e),
                partition::CatchUpError::Store(e) => e.into(),
            })?;
        tracing::info!(
            partition = p,
            from,
            to = report.end,
            records = report.records,
            applied = report.applied,
            skipped = report.skipped,
            elapsed_ms = took.as_millis() as u64,
            "Partition state caught up with the log."
        );
        erased.extend(report.erased);
    }
    if from_zero {
        state::mark_built(&shared.store)?;
    }
    Ok(erased)
}

/// An erasure is appended before the key is destroyed: finishes those a
/// crash interrupted (the intents), and those the log holds whose key is
/// still in the vault (a vault restored from the replica topic).
async fn finish_erasures(shared: &Shared, erased: &[Uuid]) -> Result<(), ServiceError> {
    let (vault, replica, store) = (&shared.vault, shared.replica.as_ref(), &shared.store);
    for (id, _) in intents::pending(store)? {
        finish_erasure(vault, replica, store, id.order_id, Some(id)).await?;
    }
    for order_id in erased {
        finish_erasure(vault, replica, store, *order_id, None).await?;
    }
    Ok(())
}

async fn writer(shared: Arc<Shared>, partition: usize, mut rx: mpsc::Receiver<Job>) {
    // Nothing is decided before the partition's stored state has caught up.
    loop {
        let started = shared.started.notified();
        if shared.ready.load(Ordering::Acquire) || shared.closing.load(Ordering::Acquire) {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), started).await;
    }
    if !shared.ready.load(Ordering::Acquire) {
        // Stopped before the state caught up: nothing may be decided on it.
        while let Some(job) = rx.recv().await {
            let _ = job.reply.send(Err(ServiceError::ShuttingDown));
        }
        return;
    }
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
        commit::write_batch(&shared, partition, batch).await;
    }
    tracing::debug!(partition, "Writer stopped.");
}
