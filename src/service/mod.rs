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
mod decide;
pub mod intents;
pub mod log_reader;
pub mod membership;
pub mod ownership;
pub mod partition;
mod recovery;
pub mod state;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use futures::future::join_all;
use parking_lot::{Mutex, RwLock};
use rdkafka::error::KafkaError;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::crypto::follow::FollowStatus;
use crate::crypto::{KeyId, KeyReplica, KeyVault, Shredded, VaultError};
use crate::domain::{Command, DomainError, Event, PersonalFields};
use crate::events;
use crate::kafka::KafkaSettings;
use crate::shutdown::{CancellationToken, Worker};
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
    #[error(
        "the order placed under this idempotency key was erased: the request it came with can no longer be compared"
    )]
    IdempotencyErased,
    #[error("event log unavailable, nothing was acknowledged; retry later: {0}")]
    Unavailable(#[source] crate::error::Cause),
    /// No answer from the event log within the command timeout, and the
    /// command had already been sent: it may or may not be in the log. A
    /// retry with the same idempotency key answers the first outcome.
    #[error("no acknowledgement within {0:?}; the command may or may not have been written")]
    OutcomeUnknown(Duration),
    #[error("the service is shutting down")]
    ShuttingDown,
    /// Another node writes this partition: the command is to be forwarded
    /// there. Nothing was sent.
    #[error("partition {partition} is written by another node")]
    NotOwner { partition: usize },
    /// The partition is changing owner (a node joined, left or failed) and
    /// no node takes its commands right now. Nothing was sent; retry.
    #[error("partition {partition} is moving to another node; retry shortly")]
    PartitionMoving { partition: usize },
    #[error("internal error: {0}")]
    Internal(#[source] crate::error::Cause),
}

impl From<VaultError> for ServiceError {
    fn from(e: VaultError) -> Self {
        ServiceError::Internal(crate::error::Cause::of(e))
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        ServiceError::Internal(crate::error::Cause::of(e))
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

/// An idempotency key and the digest of the request it came with.
///
/// Both are stored (in the log's record headers and the idempotency rows)
/// and must not change when the KEK rotates, or a retry after a rotation
/// would act twice: so neither is keyed by the KEK. The key is a SHA-256 of
/// the caller's role and key ([`key_digest`]). A request digest is a SHA-256
/// of the route and canonical body ([`request_hash`]), except for a body
/// with personal data (a placement): a plain hash of it could be tested
/// against guesses, so it is stored only keyed by the order's own key
/// ([`OrderKey::request_digest`]), which erasure destroys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotency {
    pub key: [u8; 32],
    pub request: [u8; 32],
    /// `request` is still the plain hash of a body with personal data: it
    /// is keyed with the order's key before it is stored or compared.
    pub personal: bool,
}

impl Idempotency {
    /// The digest as stored, for an order whose key is `key`. `None` when a
    /// personal request has no key to be keyed by (its order was erased).
    pub fn stored_digest(&self, key: Option<&crate::crypto::OrderKey>) -> Option<[u8; 32]> {
        if self.personal {
            key.and_then(|k| k.request_digest(&self.request))
        } else {
            Some(self.request)
        }
    }
}

fn labelled_sha256(label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(label);
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// The stored form of a caller's idempotency key.
pub fn key_digest(role: &str, key: &str) -> [u8; 32] {
    labelled_sha256(
        b"orderlog/v2/idempotency-key",
        &[role.as_bytes(), key.as_bytes()],
    )
}

/// The plain hash of a request: its route and canonical body.
pub fn request_hash(route: &str, canonical_body: &str) -> [u8; 32] {
    labelled_sha256(
        b"orderlog/v2/request",
        &[route.as_bytes(), canonical_body.as_bytes()],
    )
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
    /// For erasures: where the key's tombstone (or reduced row) landed in
    /// the key topic, committed with the event.
    pub key_row: Option<(i32, i64)>,
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
        self.shared.in_flight.lock().remove(&self.key);
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
    keys_topic: String,
    /// The service's token, cancelled by `shutdown` (or by the node's):
    /// a writer taking a partition over gives up.
    closing: CancellationToken,
    /// Set once the start's catch-up is done (nothing to do unless the order
    /// state is rebuilt from the whole log).
    ready: AtomicBool,
    /// Notified when `ready` is set.
    started: tokio::sync::Notify,
    vault: Arc<KeyVault>,
    /// Writes repairs to the key topic outside the writers' transactions
    /// (an erasure of a log written before them whose tombstone is missing).
    replica: Option<KeyReplica>,
    /// How far the vault has applied the key topic.
    keys: Option<Arc<FollowStatus>>,
    /// This node's readers, once they run (for its members row).
    tracker: std::sync::OnceLock<crate::erasure::Tracker>,
    /// Set once the readers have caught up since the start.
    reads_ready: AtomicBool,
    store: Store,
    idempotency_ttl: Duration,
    per_partition_cache: usize,
    partitions: Vec<Mutex<PartitionState>>,
    /// Which partitions this node writes.
    slots: Vec<ownership::Slot>,
    /// Where nodes find each other.
    members: Arc<membership::Members>,
    in_flight: Mutex<HashSet<[u8; 32]>>,
    /// Every command is answered within this (`--produce-timeout-ms`).
    command_timeout: Duration,
    runtime: tokio::runtime::Handle,
    /// Take-overs in progress; shutdown waits for them.
    tasks: tokio_util::task::TaskTracker,
}

/// The write service. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    shared: Arc<Shared>,
    queues: Arc<RwLock<Option<Vec<mpsc::Sender<Job>>>>>,
    writers: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// The writers' group thread, under a child of the service's token.
    group: Arc<Mutex<Option<Worker>>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("topic", &self.shared.topic)
            .finish_non_exhaustive()
    }
}

/// A new order id (UUIDv7) whose events go to `partition`.
pub fn order_id_in(partition: usize, partitions: usize) -> Uuid {
    loop {
        let id = Uuid::now_v7();
        if crate::kafka::partition_of(&id, partitions) == partition {
            return id;
        }
    }
}

fn kafka_unavailable(e: &KafkaError) -> ServiceError {
    ServiceError::Unavailable(crate::error::Cause::of(e.clone()))
}

impl Shared {
    fn partition(&self, p: usize) -> parking_lot::MutexGuard<'_, PartitionState> {
        self.partitions[p].lock()
    }

    /// Purges this node's purger has run (0 until it runs).
    fn purges(&self) -> u64 {
        self.tracker
            .get()
            .map_or(0, |t| t.purge.purges.load(Ordering::Relaxed))
    }

    /// How far this node's readers are (empty until they run).
    fn positions(&self) -> crate::erasure::Positions {
        self.tracker
            .get()
            .map(crate::erasure::Tracker::positions)
            .unwrap_or_default()
    }
}

/// How this node takes part in the cluster of writers.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub node_id: String,
    /// Where other nodes reach this one's API (`--advertise-url`).
    pub advertise_url: String,
    /// The writers' group session timeout: how long a node that stopped
    /// answering keeps its partitions.
    pub session_timeout: Duration,
    /// How often this node's row in the members topic is refreshed.
    pub heartbeat: Duration,
}

impl ClusterOptions {
    pub fn single(url: impl Into<String>) -> Self {
        Self {
            node_id: Uuid::new_v4().to_string(),
            advertise_url: url.into(),
            session_timeout: Duration::from_secs(6),
            heartbeat: Duration::from_secs(1),
        }
    }
}

impl Service {
    /// Starts the writers of `topic`: joins the writers' group, which assigns
    /// this node the partitions it writes (each taken over in the background,
    /// see [`ownership`]), and the members topic. When the stored order state
    /// does not cover the log (an older data directory, or a vault restored
    /// from the key topic) it is rebuilt first, in the background; until then
    /// [`Service::ready`] is false and commands wait (within the command
    /// timeout) for it.
    #[allow(clippy::too_many_arguments)] // the write side's whole wiring
    pub async fn start(
        settings: KafkaSettings,
        topic: String,
        partitions: usize,
        vault: Arc<KeyVault>,
        replica: Option<KeyReplica>,
        keys: Option<Arc<FollowStatus>>,
        command_timeout: Duration,
        options: StateOptions,
        cluster: ClusterOptions,
        stop: CancellationToken,
    ) -> Result<Self, ServiceError> {
        let store = options.store.clone();
        // The whole log when the stored state does not cover it yet (a data
        // directory of an earlier version) or every erasure must be checked;
        // otherwise each partition's tail when it is taken over.
        let from_zero = !state::prepare(&store)? || options.rebuild;
        let per_partition = options.cache_orders.div_ceil(partitions.max(1));
        let members = membership::Members::start(&settings, &topic, &cluster, stop.child_token())
            .await
            .map_err(|e| {
                ServiceError::Unavailable(crate::error::Cause::context("members topic", e))
            })?;
        let shared = Arc::new(Shared {
            settings,
            keys_topic: crate::crypto::keys_topic_for(&topic),
            topic,
            closing: stop.clone(),
            ready: AtomicBool::new(false),
            started: tokio::sync::Notify::new(),
            vault,
            replica,
            keys,
            tracker: std::sync::OnceLock::new(),
            reads_ready: AtomicBool::new(false),
            store,
            idempotency_ttl: options.idempotency_ttl,
            per_partition_cache: per_partition,
            partitions: (0..partitions)
                .map(|_| Mutex::new(PartitionState::new(per_partition, 0)))
                .collect(),
            slots: (0..partitions)
                .map(|_| ownership::Slot::default())
                .collect(),
            members,
            in_flight: Mutex::new(HashSet::new()),
            command_timeout,
            runtime: tokio::runtime::Handle::current(),
            tasks: tokio_util::task::TaskTracker::new(),
        });
        let mut queues = Vec::with_capacity(partitions);
        let mut writers = Vec::with_capacity(partitions + 2);
        writers.push(tokio::spawn(recovery::catch_up_all(
            shared.clone(),
            from_zero,
        )));
        writers.push(tokio::spawn(membership::heartbeat(
            shared.members.clone(),
            std::sync::Arc::downgrade(&shared),
        )));
        for p in 0..partitions {
            let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
            queues.push(tx);
            writers.push(tokio::spawn(writer(shared.clone(), p, rx)));
        }
        let (weak, session) = (Arc::downgrade(&shared), cluster.session_timeout);
        let group = Worker::spawn("writers-group", stop.child_token(), move |stop| {
            ownership::run_group(weak, stop, session)
        })
        .map_err(|e| ServiceError::Internal(crate::error::Cause::of(e)))?;
        Ok(Self {
            shared,
            queues: Arc::new(RwLock::new(Some(queues))),
            writers: Arc::new(Mutex::new(writers)),
            group: Arc::new(Mutex::new(Some(group))),
        })
    }

    /// The partition a new order goes to: with an idempotency key, the one
    /// the key decides (so a retry through any node reaches the writer that
    /// knows the key); without, one this node writes, if any.
    pub fn partition_for_new_order(&self, idempotency: Option<&Idempotency>) -> usize {
        let n = self.partitions();
        if let Some(idem) = idempotency {
            let h = u64::from_be_bytes(idem.key[..8].try_into().expect("8 bytes"));
            return (h % n as u64) as usize;
        }
        let owned = ownership::owned_partitions(&self.shared.slots);
        let pick = rand::random::<u64>() as usize;
        if owned.is_empty() {
            pick % n
        } else {
            owned[pick % owned.len()] as usize
        }
    }

    /// Every command is answered within this.
    pub fn command_timeout(&self) -> Duration {
        self.shared.command_timeout
    }

    pub fn node_id(&self) -> &str {
        self.shared.members.node_id()
    }

    /// This node's id and how the partitions stand here.
    pub fn cluster_status(&self) -> membership::ClusterStatus {
        self.shared
            .members
            .status(&self.shared.slots, self.shared.positions())
    }

    /// Hands over this node's readers, whose positions its members row
    /// carries from now on.
    pub fn set_tracker(&self, tracker: crate::erasure::Tracker) {
        let _ = self.shared.tracker.set(tracker);
    }

    pub fn tracker(&self) -> Option<&crate::erasure::Tracker> {
        self.shared.tracker.get()
    }

    /// This node (its positions as of now) and every live node (as its
    /// members row says).
    pub fn nodes(&self) -> Vec<crate::erasure::NodeRow> {
        let me = self
            .shared
            .members
            .row(&self.shared.slots, self.shared.positions());
        std::iter::once(crate::erasure::NodeRow {
            node_id: me.node_id,
            url: me.url,
            this_node: true,
            positions: me.positions,
        })
        .chain(
            self.shared
                .members
                .live_peers()
                .into_iter()
                .map(|m| crate::erasure::NodeRow {
                    node_id: m.node_id,
                    url: m.url,
                    this_node: false,
                    positions: m.positions,
                }),
        )
        .collect()
    }

    /// Every members row this node has received (its own as of now), live
    /// or not.
    pub fn members(&self) -> Vec<membership::Known> {
        let me = self
            .shared
            .members
            .row(&self.shared.slots, self.shared.positions());
        let mut out: Vec<membership::Known> = self
            .shared
            .members
            .known()
            .into_iter()
            .filter(|k| k.member.node_id != me.node_id)
            .collect();
        out.push(membership::Known {
            member: me,
            age: Duration::ZERO,
            live: true,
        });
        out.sort_by(|a, b| a.member.node_id.cmp(&b.member.node_id));
        out
    }

    /// The node that writes `partition`, as the members topic says (never
    /// this one).
    pub fn owner_elsewhere(&self, partition: usize) -> Option<membership::Member> {
        self.shared.members.owner_of(partition as i32)
    }

    /// True once every partition's stored state has caught up with the log
    /// (as of the start) and the writers take commands.
    /// The partitions this node writes now.
    pub fn owned_partitions(&self) -> Vec<i32> {
        ownership::owned_partitions(&self.shared.slots)
    }

    pub fn ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire) && self.shared.members.covered()
    }

    /// When (Unix ms) every partition first had a writer, so every
    /// take-over barrier of this start was in the log (`i64::MAX` before).
    pub fn writers_ready_at_ms(&self) -> i64 {
        self.shared.members.covered_at_ms()
    }

    /// True once the start's catch-up is done (the order state covers the
    /// log; partitions are then taken over as the writers' group assigns them).
    pub fn ready_to_start(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    /// Waits until [`Service::ready`], or `deadline`.
    async fn wait_ready(&self, deadline: tokio::time::Instant) -> Result<(), ServiceError> {
        loop {
            let started = self.shared.started.notified();
            if self.ready() {
                return Ok(());
            }
            if self.shared.closing.is_cancelled() {
                return Err(ServiceError::ShuttingDown);
            }
            if tokio::time::timeout_at(deadline, started).await.is_err() {
                return Err(ServiceError::Unavailable(crate::error::Cause::msg(
                    if self.shared.ready.load(Ordering::Acquire) {
                        "the writers' group has not assigned every partition yet"
                    } else {
                        "the write side is still catching up with the log after a start"
                    },
                )));
            }
        }
    }

    pub fn partitions(&self) -> usize {
        self.shared.partitions.len()
    }

    /// The node's RocksDB.
    pub fn store(&self) -> &Store {
        &self.shared.store
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
        self.execute_by(deadline, order_id, command, expected_version, idempotency)
            .await
    }

    /// [`Service::execute`] with the caller's deadline (a command that was
    /// tried once already, say while its partition moved).
    pub async fn execute_by(
        &self,
        deadline: tokio::time::Instant,
        order_id: Uuid,
        command: Command,
        expected_version: Option<u64>,
        idempotency: Option<Idempotency>,
    ) -> Result<Outcome, ServiceError> {
        // Until the tail is folded, an idempotency key written there would
        // not be found.
        if !self.ready() {
            self.wait_ready(deadline).await?;
        }
        let mut guard = None;
        if let Some(idem) = idempotency {
            if let Some(prev) = self.known(&idem.key)? {
                return replay(prev, idem, &self.shared.vault);
            }
            if !self.shared.in_flight.lock().insert(idem.key) {
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
                return replay(prev, idem, &self.shared.vault);
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
            Err(ServiceError::NotOwner { .. }) => "forwarded",
            Err(ServiceError::PartitionMoving { .. }) => "moving",
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
            crate::clock::now_ms(),
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
        let p = crate::kafka::partition_of(&order_id, self.partitions());
        match self.shared.slots[p].wait_owned(deadline).await {
            Ok(()) => {}
            Err(ownership::NotOwned::Elsewhere) => {
                return Err(ServiceError::NotOwner { partition: p });
            }
            Err(ownership::NotOwned::Moving) => {
                return Err(ServiceError::PartitionMoving { partition: p });
            }
        }
        let tx = {
            let q = self.queues.read();
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
            ServiceError::Unavailable(crate::error::Cause::msg(format!(
                "the writer of partition {p} did not take the command within {:?}",
                self.shared.command_timeout
            )))
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
        self.wait_reads_ready().await?;
        self.get(order_id)
    }

    /// Waits, within the command timeout, until [`Service::reads_ready`]:
    /// for reads that must reflect every erasure made while the node was
    /// down.
    pub async fn wait_reads_ready(&self) -> Result<(), ServiceError> {
        if self.reads_ready() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.shared.command_timeout;
        self.wait_ready(deadline).await?;
        while !self.reads_ready() {
            if tokio::time::Instant::now() >= deadline {
                return Err(ServiceError::Unavailable(crate::error::Cause::msg(
                    "this node is still reading the log and the key topic after a start",
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// True once the writers are ready and, since the start, the vault and
    /// the projector have caught up with their topics once: from then on
    /// this node's reads reflect every erasure made while it was down.
    pub fn reads_ready(&self) -> bool {
        if !self.ready() {
            return false;
        }
        if self.shared.reads_ready.load(Ordering::Acquire) {
            return true;
        }
        let caught_up = self
            .shared
            .tracker
            .get()
            .is_none_or(|t| t.views.caught_up() && t.keys.current(Duration::from_secs(5)));
        if caught_up {
            self.shared.reads_ready.store(true, Ordering::Release);
        }
        caught_up
    }

    /// The order's state and, when its key lives, its personal fields, as
    /// stored now.
    pub fn get(&self, order_id: Uuid) -> Result<Option<OrderView>, ServiceError> {
        let p = crate::kafka::partition_of(&order_id, self.partitions());
        // The writer's cache is ahead of the store while this node writes
        // the partition; after the partition moved, the projector brings the
        // store past it (erasures other nodes wrote included): the newer wins.
        let cached = self.shared.partition(p).peek(&order_id).cloned();
        let stored = state::load_order(&self.shared.store, &order_id)?;
        let record = match (cached, stored) {
            (Some(c), Some(s)) if s.state.version > c.state.version => s,
            (Some(c), _) => c,
            (None, Some(s)) => s,
            (None, None) => return Ok(None),
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
                .map_err(|e| ServiceError::Internal(crate::error::Cause::of(e)))?
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
        // Leave the writers' group first: the partitions move to other nodes
        // at once instead of after the session timeout.
        let group = self.group.lock().take();
        if let Some(group) = group {
            group.stop_from_task().await;
        }
        self.shared.members.leave().await;
        self.queues.write().take();
        self.shared.closing.cancel();
        // Requests waiting for the start to finish give up.
        self.shared.started.notify_waiters();
        let writers: Vec<_> = std::mem::take(&mut *self.writers.lock());
        self.shared.tasks.close();
        let all = async {
            join_all(writers).await;
            self.shared.tasks.wait().await;
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!(?limit, "Writers did not finish in time.");
        }
    }
}

/// The answer to a request whose idempotency key is already stored: the
/// first outcome, or a refusal when the key came with another request.
fn replay(
    prev: IdempotentOutcome,
    idem: Idempotency,
    vault: &KeyVault,
) -> Result<Outcome, ServiceError> {
    // Only a placement carries personal data, and a placement's outcome is
    // its order's first version: a key first used for any other command
    // came with another request, whatever became of that order since.
    if idem.personal && prev.version != 1 {
        return Err(ServiceError::IdempotencyMismatch);
    }
    let digest = if idem.personal {
        match vault.get(prev.order_id) {
            // Nothing can tell whether this is the same request any more
            // (some class, or the whole order, was erased).
            Ok(key) => match idem.stored_digest(Some(&key)) {
                Some(d) => Some(d),
                None => return Err(ServiceError::IdempotencyErased),
            },
            Err(crate::crypto::VaultError::Shredded { .. }) => {
                return Err(ServiceError::IdempotencyErased);
            }
            // A node whose key follower has not read the order's key yet.
            Err(crate::crypto::VaultError::NotFound(_)) => {
                return Err(ServiceError::Unavailable(crate::error::Cause::msg(
                    "this node has not received the order's key yet; retry",
                )));
            }
            Err(e) => return Err(ServiceError::Internal(crate::error::Cause::of(e))),
        }
    } else {
        Some(idem.request)
    };
    if digest != Some(prev.request_digest) {
        return Err(ServiceError::IdempotencyMismatch);
    }
    Ok(Outcome {
        order_id: prev.order_id,
        version: prev.version,
        position: None,
        occurred_at_ms: 0,
        replayed: true,
        shredded: None,
        key_row: None,
        key_id: None,
    })
}

/// How long a writer lets a committed transaction settle before it sends the
/// next one (see `writer`). Measured with the write bench on one local
/// broker: 0 ms gave 2.6k orders/s at 64 clients and 7.1k at 512; 5 ms gave
/// 2.9k and 11.0k; 10 ms gave 2.8k and 9.7k.
const TXN_PAUSE: Duration = Duration::from_millis(5);

async fn writer(shared: Arc<Shared>, partition: usize, mut rx: mpsc::Receiver<Job>) {
    // Jobs waiting for a later batch, in arrival order.
    let mut waiting: std::collections::VecDeque<Job> = std::collections::VecDeque::new();
    let mut open = true;
    let mut last_commit: Option<std::time::Instant> = None;
    while open || !waiting.is_empty() {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(job) => waiting.push_back(job),
                None => break,
            }
        }
        // Right after a commit the transaction coordinator is still writing
        // its markers, and the next transaction's first request would be
        // answered CONCURRENT_TRANSACTIONS, which librdkafka retries after
        // a fixed 20 ms. Waiting out those few ms gathers a larger batch
        // instead.
        if let Some(at) = last_commit
            && let Some(rest) = TXN_PAUSE.checked_sub(at.elapsed())
        {
            tokio::time::sleep(rest).await;
        }
        while open && waiting.len() < MAX_BATCH * 2 {
            match rx.try_recv() {
                Ok(job) => waiting.push_back(job),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        let slot = &shared.slots[partition];
        let batch_lock = slot.batch.lock().await;
        let Some(owned) = slot.owned() else {
            // Released (revoked, lost or fenced) after these were queued:
            // none was sent; the caller may retry, reaching the new owner.
            commit::refuse_all(waiting.drain(..), || ServiceError::PartitionMoving {
                partition,
            });
            continue;
        };
        // At most one command per order in a batch: if a later command of
        // an order were decided on an earlier one that then failed, it would
        // be acknowledged on a chain with a hole.
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
        // A job's idempotency key was looked up when it arrived, maybe
        // before a take-over folded the record that holds it (a retry of a
        // command whose commit had no answer): look again, for every job
        // (one point read each).
        let batch = commit::recheck_idempotency(&shared, batch);
        commit::write_batch(&shared, partition, &owned, batch).await;
        last_commit = Some(std::time::Instant::now());
        drop(batch_lock);
    }
    tracing::debug!(partition, "Writer stopped.");
}
