//! One group-commit batch of a partition's writer: decide every command
//! against the stored state (through the cache), seal and chain the events,
//! make new keys and erase intents durable, send everything in one produce
//! round trip, store the acknowledged effects, then answer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rocksdb::WriteBatch;
use uuid::Uuid;

use super::intents::{self, EraseIntent, IntentId};
use super::log_reader::{HEADER_IDEMPOTENCY_KEY, HEADER_REQUEST_DIGEST};
use super::settle::resync;
use super::state::{self, Absorbed, IdempotentOutcome, OrderRecord};
use super::{
    Job, Outcome, QUEUED, ServiceError, Shared, TAKEN, delivery_timeout, finish_intents, now_ms,
    publish_replica_row, replay, republish_replica_row,
};
use crate::crypto::{KeyId, OrderKey};
use crate::domain::{self, Command, ErasureScope, FieldClass};
use crate::events::{self, EventMeta};

/// A command decided and sealed, waiting for Kafka.
struct Pending {
    job: Job,
    records: Vec<(Vec<u8>, i64)>,
    new_key: Option<OrderKey>,
    outcome: Outcome,
    /// The order after the command, as it is stored once acknowledged.
    record: OrderRecord,
}

/// A pending command with where its last record landed, or why it did not.
type Acked = (Pending, Result<(i32, i64), String>);

fn refuse_all(jobs: impl IntoIterator<Item = Job>, e: impl Fn() -> ServiceError) {
    for job in jobs {
        let _ = job.reply.send(Err(e()));
    }
}

/// Test hook: `ORDERLOG_TEST_ABORT_AFTER_ACKS=N` aborts the process once its
/// N-th acknowledged batch is in the log and before its effects are stored,
/// so the crash test can hit that moment on purpose.
fn abort_point() {
    static AFTER: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    static SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let after = AFTER.get_or_init(|| {
        std::env::var("ORDERLOG_TEST_ABORT_AFTER_ACKS")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(n) = after
        && SEEN.fetch_add(1, Ordering::Relaxed) + 1 >= *n
    {
        tracing::error!(
            "ORDERLOG_TEST_ABORT_AFTER_ACKS: aborting between an acknowledgement and its state write."
        );
        std::process::abort();
    }
}

pub(super) async fn write_batch(shared: &Arc<Shared>, partition: usize, jobs: Vec<Job>) {
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
    if jobs.is_empty() {
        return;
    }
    let stale = shared.partition(partition).stale;
    let jobs = if stale {
        if !resync(shared, partition).await {
            refuse_all(jobs, || {
                ServiceError::Unavailable("the order state could not be brought up to date".into())
            });
            return;
        }
        // Erasures answered `outcome_unknown` are known now: finish those
        // that landed.
        if let Err(e) = finish_intents(shared, partition).await {
            tracing::warn!(partition, error = %e, "Finishing erase intents failed; retried at next start.");
        }
        // A key the settled records carried was not stored when these jobs
        // looked it up: look again.
        recheck_idempotency(shared, jobs)
    } else {
        jobs
    };
    let now = now_ms();
    // Tentative copies of the orders this batch touches.
    let mut tentative: HashMap<Uuid, OrderRecord> = HashMap::new();
    let mut unreadable = HashSet::new();
    {
        let mut st = shared.partition(partition);
        for job in &jobs {
            match st.order(&shared.store, &job.order_id) {
                Ok(Some(r)) => {
                    tentative.insert(job.order_id, r);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(order_id = %job.order_id, error = %e, "Reading the order state failed.");
                    unreadable.insert(job.order_id);
                }
            }
        }
    }
    let mut pending: Vec<Pending> = Vec::new();
    let mut noop_keys = WriteBatch::default();
    let mut noop_replies = Vec::new();
    for job in jobs {
        if unreadable.contains(&job.order_id) {
            let _ = job.reply.send(Err(ServiceError::Internal(
                "reading the order state failed".into(),
            )));
            continue;
        }
        let mut rec = tentative.remove(&job.order_id).unwrap_or_default();
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
            // Nothing to write, so no record carries the key: it is stored
            // here only, so a retry answers the same and another request
            // under it is refused, until it expires.
            if let Some(idem) = job.idempotency {
                state::stage_idempotency(
                    &shared.store,
                    &mut noop_keys,
                    &idem.key,
                    &IdempotentOutcome {
                        request_digest: idem.request,
                        order_id: job.order_id,
                        version: outcome.version,
                    },
                    now.saturating_add(shared.idempotency_ttl.as_millis() as i64),
                );
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
                    debug_assert_eq!(
                        absorbed,
                        Absorbed::Applied,
                        "a fresh event always continues its chain"
                    );
                    records.push((bytes, now));
                }
                Err(e) => {
                    failed = Some(ServiceError::Internal(e.to_string()));
                    break;
                }
            }
        }
        if let Some(e) = failed {
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
            record: rec,
        });
    }
    if !noop_replies.is_empty() {
        if let Err(e) = shared.store.db().write(noop_keys) {
            tracing::error!(error = %e, "Storing idempotency keys failed.");
            refuse_all(noop_replies.into_iter().map(|(j, _)| j), || {
                ServiceError::Internal("storing the idempotency key failed".into())
            });
        } else {
            // Answered once their keys are stored, so a retry finds them.
            for (job, outcome) in noop_replies {
                let _ = job.reply.send(Ok(outcome));
            }
        }
    }
    if pending.is_empty() {
        return;
    }

    // Erase intents, then new order keys, each in one fsynced batch: an
    // event must never reach the log without its key being safe, nor an
    // erasure without the promise to destroy the key.
    let erase_intents: Vec<(IntentId, EraseIntent)> = pending
        .iter()
        .filter_map(|p| match &p.job.command {
            Command::EraseOrder { scope } => Some((
                IntentId {
                    order_id: p.job.order_id,
                    sequence: p.outcome.version,
                },
                EraseIntent {
                    classes: match scope {
                        ErasureScope::Order => None,
                        ErasureScope::Classes(c) => Some(c.clone()),
                    },
                    at_ms: now,
                },
            )),
            _ => None,
        })
        .collect();
    if let Err(e) = intents::record(&shared.store, &erase_intents) {
        tracing::error!(error = %e, "Storing erase intents failed; batch refused.");
        refuse_all(pending.into_iter().map(|p| p.job), || {
            ServiceError::Internal("storing the erase intent failed".into())
        });
        return;
    }
    let new_keys: Vec<(Uuid, &OrderKey)> = pending
        .iter()
        .filter_map(|p| p.new_key.as_ref().map(|k| (p.job.order_id, k)))
        .collect();
    if let Err(e) = shared.vault.store_new(&new_keys, now) {
        tracing::error!(error = %e, "Storing new order keys failed; batch refused.");
        clear_intents(shared, &erase_intents);
        refuse_all(pending.into_iter().map(|p| p.job), || {
            ServiceError::Internal("storing the order key failed".into())
        });
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
            clear_intents(shared, &erase_intents);
            let msg = format!("key replica: {e}");
            refuse_all(pending.into_iter().map(|p| p.job), || {
                ServiceError::Unavailable(msg.clone())
            });
            return;
        }
    }

    let (acked, any_failed) = produce(shared, partition, pending).await;

    // Some records were not acknowledged. Kafka may still hold some of them
    // (a leader can append a record and commit it after the producer gave
    // up), so settle the partition and fold it into the stored state: the
    // store must match the log before the next command of these orders is
    // decided, and each answer says whether its command is in the log.
    // `Some(false)`: the service is stopping (or the store failed) and what
    // became of the failed records is not known.
    let settled = if any_failed {
        tracing::warn!(
            partition,
            "Some records were not acknowledged; settling the partition."
        );
        let ok = resync(shared, partition).await;
        let mut st = shared.partition(partition);
        for (p, _) in &acked {
            st.forget(&p.job.order_id);
        }
        Some(ok)
    } else {
        None
    };
    let mut stored = WriteBatch::default();
    // Idempotency keys stay in flight until their outcome is stored.
    let mut guards = Vec::new();
    let mut to_shred: Vec<(Uuid, Option<BTreeSet<FieldClass>>, IntentId, usize)> = Vec::new();
    let mut replies = Vec::with_capacity(acked.len());
    let mut remember = Vec::new();
    let mut known_gone = Vec::new();
    let expires = now.saturating_add(shared.idempotency_ttl.as_millis() as i64);
    for (mut p, res) in acked {
        guards.push(p.job._in_flight.take());
        let intent = IntentId {
            order_id: p.job.order_id,
            sequence: p.outcome.version,
        };
        let res = match (res, settled) {
            (Ok(pos), _) => Ok(pos),
            (Err(e), Some(true)) => match landed(shared, partition, &p) {
                Ok(Some(pos)) => Ok(pos),
                Ok(None) => Err(ServiceError::Unavailable(e)),
                Err(_) => Err(ServiceError::OutcomeUnknown(shared.command_timeout)),
            },
            (Err(_), _) => Err(ServiceError::OutcomeUnknown(shared.command_timeout)),
        };
        match res {
            Ok(pos) => {
                p.outcome.position = Some(pos);
                if settled.is_none() {
                    // Everything acknowledged: store the effects as they are
                    // in the log. (A settled partition is stored already.)
                    p.record.last_offset = pos.1;
                    let placed = matches!(p.job.command, Command::PlaceOrder(_))
                        .then(|| p.records[0].0.as_slice());
                    state::stage_order(
                        &shared.store,
                        &mut stored,
                        &p.job.order_id,
                        &p.record,
                        placed,
                    );
                    if let Some(idem) = p.job.idempotency {
                        state::stage_idempotency(
                            &shared.store,
                            &mut stored,
                            &idem.key,
                            &IdempotentOutcome {
                                request_digest: idem.request,
                                order_id: p.job.order_id,
                                version: p.outcome.version,
                            },
                            expires,
                        );
                    }
                    remember.push((p.job.order_id, p.record.clone(), pos.1));
                }
                if let Command::EraseOrder { scope } = &p.job.command {
                    let classes = match scope {
                        ErasureScope::Order => None,
                        ErasureScope::Classes(c) => Some(c.clone()),
                    };
                    to_shred.push((p.job.order_id, classes, intent, replies.len()));
                }
                replies.push((p.job.reply, Ok(p.outcome)));
            }
            Err(e) => {
                if matches!(e, ServiceError::Unavailable(_)) {
                    // Known not to be in the log: a new key is discarded, an
                    // erase intent cleared.
                    if p.new_key.is_some() {
                        let _ = shared.vault.discard(p.job.order_id);
                    }
                    if matches!(p.job.command, Command::EraseOrder { .. }) {
                        known_gone.push(intent);
                    }
                }
                replies.push((p.job.reply, Err(e)));
            }
        }
    }
    for id in known_gone {
        if let Err(e) = intents::clear(&shared.store, &id) {
            tracing::warn!(order_id = %id.order_id, error = %e, "Clearing an erase intent failed; it is resolved at next start.");
        }
    }
    if !remember.is_empty() {
        abort_point();
        let written = shared.store.db().write(stored);
        let mut st = shared.partition(partition);
        match written {
            Ok(()) => {
                for (id, rec, offset) in remember {
                    st.next_offset = st.next_offset.max(offset + 1);
                    st.remember(id, rec);
                }
            }
            Err(e) => {
                // The commands are in the log and are answered as such; the
                // partition is settled before its next batch is decided.
                tracing::error!(partition, error = %e, "Storing acknowledged effects failed; the partition will be settled.");
                for (id, _, _) in &remember {
                    st.forget(id);
                }
                st.stale = true;
            }
        }
    }
    // Erasure: the OrderErased event is in the log; now destroy the key.
    for (order_id, classes, intent, idx) in to_shred {
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
            Ok(()) => {
                if let Err(e) = intents::clear(&shared.store, &intent) {
                    tracing::warn!(%order_id, error = %e, "Clearing an erase intent failed; it is finished again at next start.");
                }
                false
            }
            Err(e) => {
                tracing::warn!(%order_id, error = %e, "The key replica did not acknowledge an erasure's row; retrying in the background.");
                tokio::spawn(republish_replica_row(shared.clone(), order_id, intent));
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
    drop(guards);
}

/// Answers the jobs whose idempotency key is stored by now, and returns the rest.
fn recheck_idempotency(shared: &Shared, jobs: Vec<Job>) -> Vec<Job> {
    let now = now_ms();
    let mut rest = Vec::with_capacity(jobs.len());
    for job in jobs {
        let Some(idem) = job.idempotency else {
            rest.push(job);
            continue;
        };
        match state::lookup_idempotency(&shared.store, &idem.key, now) {
            Ok(Some(prev)) => {
                let _ = job.reply.send(replay(prev, idem));
            }
            Ok(None) => rest.push(job),
            Err(e) => {
                let _ = job.reply.send(Err(e.into()));
            }
        }
    }
    rest
}

fn clear_intents(shared: &Shared, erase_intents: &[(IntentId, EraseIntent)]) {
    for (id, _) in erase_intents {
        let _ = intents::clear(&shared.store, id);
    }
}

/// Sends every pending command's records, then waits for all
/// acknowledgements: one round trip. Returns each command with where its
/// last record landed, and whether any record failed.
async fn produce(shared: &Shared, partition: usize, pending: Vec<Pending>) -> (Vec<Acked>, bool) {
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
    (acked, any_failed)
}

/// Where the record of a command that was not acknowledged landed in the
/// settled partition, if it did. (A batch holds one command per order, and
/// every command writes one event: the order's last record is its record or
/// not.)
fn landed(
    shared: &Shared,
    partition: usize,
    p: &Pending,
) -> Result<Option<(i32, i64)>, crate::store::StoreError> {
    debug_assert_eq!(p.records.len(), 1, "one event per command");
    let rec = shared
        .partition(partition)
        .order(&shared.store, &p.job.order_id)?;
    Ok(rec.and_then(|rec| {
        (rec.state.version == p.outcome.version && rec.last_hash == p.record.last_hash)
            .then_some((partition as i32, rec.last_offset))
    }))
}
