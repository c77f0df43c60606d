//! Which partitions this node writes, decided by Kafka: every node joins the
//! writers' consumer group of the topic (cooperative-sticky assignment) and
//! writes exactly the partitions the group assigns it.
//!
//! - **Assigned**: the partition's transactional producer is created with the
//!   partition's `transactional.id` (the same on every node) and
//!   `init_transactions` fences the previous owner, aborting what it left
//!   open. A barrier is committed, the stored order state is caught up to it
//!   (read committed), the vault to the end of the key topic, and only then
//!   are commands taken ([`acquire`]).
//! - **Revoked or lost**: no new command is taken; the batch in flight is
//!   answered; the producer is dropped.
//! - **Fenced** (a new owner took over while this node was paused or cut
//!   off): the commit fails, the batch is answered 503 and the partition is
//!   dropped here. It is taken again only when the group assigns it again.
//!
//! The group's consumer never reads records: its partitions are paused as
//! soon as they are assigned. It only carries membership and heartbeats.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::watch;

use super::partition::{self, PartitionState};
use super::{ServiceError, Shared, delivery_timeout};
use crate::shutdown::{self, CancellationToken, Retry};

/// Where a partition stands on this node.
#[derive(Clone, Default)]
pub enum Phase {
    /// Another node (or none) owns it: commands are forwarded.
    #[default]
    Unowned,
    /// Assigned here, being taken over: commands wait (within their
    /// deadline) or are answered `partition_moving`.
    Acquiring(u64),
    /// Written by this node, through this producer.
    Owned(Owned),
}

/// An owned partition: its transactional producer and the generation of the
/// take-over that created it.
#[derive(Clone)]
pub struct Owned {
    pub generation: u64,
    pub producer: FutureProducer,
}

impl std::fmt::Debug for Owned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Owned({})", self.generation)
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({:?})", self.phase())
    }
}

impl std::fmt::Debug for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Unowned => f.write_str("Unowned"),
            Phase::Acquiring(g) => write!(f, "Acquiring({g})"),
            Phase::Owned(o) => write!(f, "Owned({})", o.generation),
        }
    }
}

/// One partition's ownership on this node.
pub struct Slot {
    phase: watch::Sender<Phase>,
    /// The writers' group gives this partition to this node now.
    pub(super) assigned: AtomicBool,
    /// Held by the writer while a batch is in flight; a release waits for it.
    pub(super) batch: tokio::sync::Mutex<()>,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            phase: watch::Sender::new(Phase::Unowned),
            assigned: AtomicBool::new(false),
            batch: tokio::sync::Mutex::new(()),
        }
    }
}

/// How a command for a partition not owned here is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotOwned {
    /// Another node owns it (or should): forward.
    Elsewhere,
    /// It is being taken over here and was not ready in time.
    Moving,
}

impl Slot {
    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    pub fn owned(&self) -> Option<Owned> {
        match &*self.phase.borrow() {
            Phase::Owned(o) => Some(o.clone()),
            _ => None,
        }
    }

    pub fn is_owned(&self) -> bool {
        matches!(&*self.phase.borrow(), Phase::Owned(_))
    }

    pub(super) fn set(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// Moves to `next` only if the slot is still in the take-over `generation`
    /// (a revocation meanwhile wins).
    fn set_if_generation(&self, generation: u64, next: Phase) -> bool {
        self.phase.send_if_modified(|p| {
            let current = match p {
                Phase::Acquiring(g) => *g,
                Phase::Owned(o) => o.generation,
                Phase::Unowned => return false,
            };
            if current != generation {
                return false;
            }
            *p = next;
            true
        })
    }

    /// Drops ownership taken in `generation`, if it still is (a fenced or
    /// failed producer). True when it was dropped.
    pub(super) fn drop_generation(&self, generation: u64) -> bool {
        self.set_if_generation(generation, Phase::Unowned)
    }

    /// Waits until the partition is owned here, or says why not.
    pub async fn wait_owned(&self, deadline: tokio::time::Instant) -> Result<(), NotOwned> {
        let mut rx = self.phase.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Phase::Owned(_) => return Ok(()),
                Phase::Unowned => return Err(NotOwned::Elsewhere),
                Phase::Acquiring(_) => {}
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(NotOwned::Moving),
            }
        }
    }
}

/// Take-over generations, unique within the process.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Starts taking `partition` over, in the background.
pub(super) fn assign(shared: &Arc<Shared>, partition: usize) {
    shared.slots[partition]
        .assigned
        .store(true, Ordering::Release);
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    shared.slots[partition].set(Phase::Acquiring(generation));
    tracing::info!(partition, generation, "Partition assigned; taking it over.");
    let sh = shared.clone();
    shared.tasks.spawn_on(
        async move { acquire_until_done(sh, partition, generation).await },
        &shared.runtime,
    );
}

/// Takes a partition this node owns over again (a new producer fences the
/// old one, settling whatever transaction it left), if it is still owned in
/// `generation`: after a commit whose outcome is unknown, or when the effects
/// of a batch could not be stored.
pub(super) fn retake(shared: &Arc<Shared>, partition: usize, generation: u64) {
    let next = GENERATION.fetch_add(1, Ordering::Relaxed);
    if shared.slots[partition].set_if_generation(generation, Phase::Acquiring(next)) {
        tracing::warn!(
            partition,
            generation = next,
            "Taking the partition over again to settle it."
        );
        let sh = shared.clone();
        shared.tasks.spawn_on(
            async move { acquire_until_done(sh, partition, next).await },
            &shared.runtime,
        );
    }
}

/// Gives `partitions` up (blocking; called from the group's rebalance
/// callback): none takes a new command from now on, the batches in flight are
/// answered, the producers are dropped. Bounded by the command timeout, for
/// all of them together.
pub(super) fn release(shared: &Shared, partitions: &[usize], lost: bool) {
    for p in partitions {
        let slot = &shared.slots[*p];
        slot.assigned.store(false, Ordering::Release);
        slot.set(Phase::Unowned);
    }
    shared.members.changed();
    let deadline = Instant::now() + shared.command_timeout;
    for p in partitions {
        let slot = &shared.slots[*p];
        loop {
            if let Ok(guard) = slot.batch.try_lock() {
                drop(guard);
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(
                    partition = p,
                    "A batch was still in flight when the partition was released."
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::info!(partition = p, lost, "Partition released.");
    }
}

/// After a fenced or failed commit: take the partition over again if the
/// writers' group still gives it to this node (another node's stale
/// take-over may have fenced it), else drop it.
pub(super) fn fenced(shared: &Arc<Shared>, partition: usize, generation: u64) {
    if shared.slots[partition].assigned.load(Ordering::Acquire) {
        retake(shared, partition, generation);
    } else if shared.slots[partition].drop_generation(generation) {
        tracing::warn!(
            partition,
            "Fenced by a newer owner; the partition is dropped here."
        );
    }
}

async fn acquire_until_done(shared: Arc<Shared>, partition: usize, generation: u64) {
    let mut retry = Retry::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        if shared.closing.is_cancelled() {
            return;
        }
        match &shared.slots[partition].phase() {
            Phase::Acquiring(g) if *g == generation => {}
            _ => return, // revoked meanwhile
        }
        let started = Instant::now();
        match acquire(&shared, partition, generation).await {
            Ok(producer) => {
                if shared.slots[partition].set_if_generation(
                    generation,
                    Phase::Owned(Owned {
                        generation,
                        producer,
                    }),
                ) {
                    metrics::counter!(crate::telemetry::PARTITIONS_TAKEN).increment(1);
                    shared.members.changed();
                    tracing::info!(
                        partition,
                        generation,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "Partition taken over; writing it."
                    );
                }
                return;
            }
            Err(e) => {
                tracing::warn!(partition, generation, error = %e, "Taking the partition over failed; retrying.");
                if shutdown::pause(&shared.closing, retry.pause()).await {
                    return;
                }
            }
        }
    }
}

fn kafka(e: KafkaError) -> ServiceError {
    ServiceError::Unavailable(crate::error::Cause::of(e))
}

/// Creates the partition's transactional producer and fences every earlier
/// one.
pub(super) async fn fencing_producer(
    shared: &Shared,
    partition: usize,
) -> Result<FutureProducer, ServiceError> {
    let producer: FutureProducer = shared
        .settings
        .transactional_producer_config(
            &crate::kafka::transactional_id(&shared.topic, partition),
            delivery_timeout(shared.command_timeout),
        )
        .create()
        .map_err(kafka)?;
    let (p, timeout) = (
        producer.clone(),
        shared.command_timeout.max(Duration::from_secs(10)),
    );
    tokio::task::spawn_blocking(move || p.init_transactions(timeout))
        .await
        .map_err(|e| ServiceError::Internal(crate::error::Cause::of(e)))?
        .map_err(kafka)?;
    Ok(producer)
}

/// Commits a barrier record alone in a transaction; returns its offset.
pub(super) async fn commit_barrier(
    shared: &Shared,
    producer: &FutureProducer,
    partition: usize,
) -> Result<i64, ServiceError> {
    producer.begin_transaction().map_err(kafka)?;
    let headers = OwnedHeaders::new().insert(Header {
        key: crate::kafka::HEADER_BARRIER,
        value: Some(&b"1"[..]),
    });
    let record = FutureRecord::<[u8], [u8]>::to(&shared.topic)
        .partition(partition as i32)
        .headers(headers);
    let delivery = producer.send_result(record).map_err(|(e, _)| kafka(e))?;
    // Delivered before the commit (see [`commit`]).
    let offset = match delivery.await {
        Ok(Ok(d)) => Ok(d.offset),
        Ok(Err((e, _))) => Err(kafka(e)),
        Err(_) => Err(ServiceError::Unavailable(crate::error::Cause::msg(
            "barrier delivery canceled",
        ))),
    };
    let committed = match offset {
        Ok(o) => commit(producer, shared.command_timeout)
            .await
            .map(|()| o)
            .map_err(kafka),
        Err(e) => Err(e),
    };
    if committed.is_err() {
        let (p, timeout) = (producer.clone(), shared.command_timeout);
        let _ = tokio::task::spawn_blocking(move || p.abort_transaction(timeout)).await;
    }
    committed
}

/// Commits the open transaction, once every record of it was delivered.
///
/// rust-rdkafka's `commit_transaction` first flushes, and its flush waits in
/// polls of up to 100 ms while any record is still counted in flight (the
/// delivery reports are served by the producer's own thread). A record stays
/// counted for a moment after its delivery future resolved, so wait for the
/// count to reach zero first: a commit then costs its round trip, not 100 ms.
pub(super) async fn commit(producer: &FutureProducer, timeout: Duration) -> Result<(), KafkaError> {
    let p = producer.clone();
    tokio::task::spawn_blocking(move || {
        let until = Instant::now() + timeout;
        while p.in_flight_count() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_micros(100));
        }
        p.commit_transaction(until.saturating_duration_since(Instant::now()))
    })
    .await
    .unwrap_or(Err(KafkaError::Canceled))
}

/// Takes the partition over: fences the previous owner, commits a barrier,
/// brings the vault to the end of the key topic and the stored order state to
/// the barrier, and finishes this node's erase intents of the partition.
/// Returns the producer the writer then uses.
async fn acquire(
    shared: &Arc<Shared>,
    partition: usize,
    generation: u64,
) -> Result<FutureProducer, ServiceError> {
    // Nothing is taken over before the start's catch-up (a rebuild of the
    // order state from the log) is done.
    while !shared.ready.load(Ordering::Acquire) {
        if shared.closing.is_cancelled() {
            return Err(ServiceError::ShuttingDown);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Revoked while waiting: fencing now would fence the partition's new
    // owner.
    if !matches!(shared.slots[partition].phase(), Phase::Acquiring(g) if g == generation) {
        return Err(ServiceError::PartitionMoving { partition });
    }
    let producer = fencing_producer(shared, partition).await?;
    let barrier = commit_barrier(shared, &producer, partition).await?;
    // Every key its orders need: the key rows of the previous owner's
    // transactions are committed (or aborted) by now.
    if let Some(follower) = &shared.keys {
        let (s, t, f, timeout) = (
            shared.settings.clone(),
            shared.keys_topic.clone(),
            follower.clone(),
            shared.command_timeout.max(Duration::from_secs(30)),
        );
        let caught = tokio::task::spawn_blocking(move || {
            crate::crypto::follow::ends(&s, &t, timeout).map(|ends| f.wait_for(&ends, timeout))
        })
        .await
        .map_err(|e| ServiceError::Internal(crate::error::Cause::of(e)))?
        .map_err(kafka)?;
        if !caught {
            return Err(ServiceError::Unavailable(crate::error::Cause::msg(
                "the vault did not catch up with the key topic",
            )));
        }
    }
    let sh = shared.clone();
    let until = barrier + 1;
    let report = tokio::task::spawn_blocking(move || {
        partition::follow(
            &sh.settings,
            &sh.topic,
            &sh.store,
            &sh.vault.log_keys(),
            sh.partitions.len(),
            sh.idempotency_ttl,
            partition as i32,
            until,
            Duration::from_secs(60),
            &sh.closing,
        )
    })
    .await
    .map_err(|e| ServiceError::Internal(crate::error::Cause::of(e)))?
    .map_err(|e| match e {
        partition::CatchUpError::Kafka(e) => kafka(e),
        partition::CatchUpError::Store(e) => e.into(),
    })?;
    tracing::debug!(
        partition,
        generation,
        barrier,
        records = report.records,
        "Partition state caught up to the take-over barrier."
    );
    // Other nodes wrote since this node last had the partition: start
    // with an empty cache.
    *shared.partition(partition) =
        PartitionState::new(shared.per_partition_cache, until.max(report.end));
    super::recovery::finish_intents(shared, partition).await?;
    Ok(producer)
}

/// The writers' group consumer's callbacks: revocations release partitions,
/// assignments take them over.
pub(super) struct GroupContext {
    pub(super) shared: std::sync::Weak<Shared>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        if let Rebalance::Revoke(tpl) = rebalance {
            let lost = _consumer.assignment_lost();
            let parts: Vec<usize> = tpl
                .elements()
                .iter()
                .map(|e| e.partition() as usize)
                .collect();
            release(&shared, &parts, lost);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        match rebalance {
            Rebalance::Assign(tpl) => {
                // Never read: the group only says who writes what.
                if let Err(e) = consumer.pause(tpl) {
                    tracing::debug!(error = %e, "Pausing the writers' group partitions failed.");
                }
                for e in tpl.elements() {
                    assign(&shared, e.partition() as usize);
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "Writers' group rebalance error."),
        }
    }
}

/// Joins the writers' group and serves its callbacks until `stop`; then
/// leaves it (releasing every partition, so another node takes them at once).
pub(super) fn run_group(
    shared: std::sync::Weak<Shared>,
    stop: CancellationToken,
    session_timeout: Duration,
) {
    // Not before the start's catch-up is done: a node rebuilding its order
    // state from the whole log would hold partitions it cannot write yet.
    loop {
        let Some(sh) = shared.upgrade() else { return };
        if sh.ready.load(Ordering::Acquire) {
            break;
        }
        drop(sh);
        if shutdown::sleep(&stop, Duration::from_millis(50)) {
            return;
        }
    }
    let Some(sh) = shared.upgrade() else { return };
    let group = crate::kafka::writers_group(&sh.topic);
    let consumer: Result<BaseConsumer<GroupContext>, KafkaError> = sh
        .settings
        .client_config()
        .set("group.id", &group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest")
        .set(
            "session.timeout.ms",
            session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (session_timeout.as_millis() / 4).max(100).to_string(),
        )
        .create_with_context(GroupContext {
            shared: shared.clone(),
        });
    let topic = sh.topic.clone();
    drop(sh);
    let consumer = match consumer.and_then(|c| c.subscribe(&[&topic]).map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, group, "Joining the writers' group failed; this node writes nothing.");
            return;
        }
    };
    tracing::info!(group, "Joined the writers' group.");
    while !stop.is_cancelled() {
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
            tracing::debug!(error = %e, "Writers' group consumer error.");
        }
    }
    // Leave the group: the revocation releases every partition here.
    consumer.unsubscribe();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until && consumer.assignment().is_ok_and(|a| a.count() > 0) {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    drop(consumer);
    tracing::info!(group, "Left the writers' group.");
}

/// The partitions this node writes now.
pub fn owned_partitions(slots: &[Slot]) -> Vec<i32> {
    slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_owned())
        .map(|(p, _)| p as i32)
        .collect()
}

/// Per partition, its phase (for `/readyz` and the members topic).
pub fn phases(slots: &[Slot]) -> BTreeMap<i32, &'static str> {
    slots
        .iter()
        .enumerate()
        .map(|(p, s)| {
            (
                p as i32,
                match s.phase() {
                    Phase::Unowned => "elsewhere",
                    Phase::Acquiring(_) => "taking_over",
                    Phase::Owned(_) => "owned",
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn producer() -> FutureProducer {
        // Never connects: nothing is sent through it here.
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create()
            .unwrap()
    }

    #[tokio::test]
    async fn commands_wait_for_a_take_over_and_learn_where_the_partition_went() {
        let slot = Slot::default();
        let soon = || tokio::time::Instant::now() + Duration::from_millis(50);
        // Not assigned here: forward.
        assert_eq!(slot.wait_owned(soon()).await, Err(NotOwned::Elsewhere));
        // Being taken over: wait, and say "moving" at the deadline.
        slot.set(Phase::Acquiring(7));
        assert_eq!(slot.wait_owned(soon()).await, Err(NotOwned::Moving));
        // A command waiting while the take-over finishes goes through.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let waiting = slot.wait_owned(deadline);
        let finish = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(slot.set_if_generation(
                7,
                Phase::Owned(Owned {
                    generation: 7,
                    producer: producer(),
                })
            ));
        };
        let (r, ()) = tokio::join!(waiting, finish);
        assert_eq!(r, Ok(()));
        assert_eq!(owned_partitions(std::slice::from_ref(&slot)), vec![0]);
    }

    #[tokio::test]
    async fn a_revocation_wins_over_a_take_over_that_finishes_late() {
        let slot = Slot::default();
        slot.set(Phase::Acquiring(3));
        // Revoked while taking over...
        slot.set(Phase::Unowned);
        // ... so the late end of that take-over must not claim the partition.
        assert!(!slot.set_if_generation(
            3,
            Phase::Owned(Owned {
                generation: 3,
                producer: producer(),
            })
        ));
        assert!(!slot.is_owned());
        // A waiting command learns the partition is elsewhere.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        assert_eq!(slot.wait_owned(deadline).await, Err(NotOwned::Elsewhere));
        // A fenced producer drops only its own generation.
        slot.set(Phase::Owned(Owned {
            generation: 4,
            producer: producer(),
        }));
        assert!(!slot.drop_generation(3));
        assert!(slot.is_owned());
        assert!(slot.drop_generation(4));
        assert!(!slot.is_owned());
    }

    #[tokio::test]
    async fn a_command_waiting_on_a_take_over_learns_of_its_revocation() {
        let slot = Slot::default();
        slot.set(Phase::Acquiring(9));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let revoke = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            slot.set(Phase::Unowned);
        };
        let (r, ()) = tokio::join!(slot.wait_owned(deadline), revoke);
        assert_eq!(r, Err(NotOwned::Elsewhere));
    }
}
