//! One group-commit batch of a partition's writer: decide every command
//! against the stored state (through the cache), seal and chain the events,
//! make new keys and erase intents durable locally, then send the batch's
//! events and key rows (new keys, and the tombstone or reduced row of each
//! erasure) in one Kafka transaction, store the committed effects, then
//! answer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rocksdb::WriteBatch;
use uuid::Uuid;

use super::decide::{Decided, Pending, decide_batch};
use super::intents::{self, EraseIntent, IntentId};
use super::log_reader::{HEADER_IDEMPOTENCY_KEY, HEADER_REQUEST_DIGEST};
use super::ownership::{self, Owned};
use super::state::{self, IdempotentOutcome, OrderRecord};
use super::{Job, QUEUED, ServiceError, Shared, TAKEN, delivery_timeout, replay};
use crate::clock::now_ms;
use crate::crypto::{OrderKey, StoredKey};
use crate::domain::{Command, ErasureScope, FieldClass};
use crate::store::encode_value;

/// A pending command with where its last record landed, or why it did not.
type Acked = (Pending, Result<(i32, i64), String>);

pub(super) fn refuse_all(jobs: impl IntoIterator<Item = Job>, e: impl Fn() -> ServiceError) {
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

pub(super) async fn write_batch(
    shared: &Arc<Shared>,
    partition: usize,
    owned: &Owned,
    jobs: Vec<Job>,
) {
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
    if shared.partition(partition).stale {
        // The effects of an earlier batch could not be stored: take the
        // partition over again (which folds the log into the store) before
        // deciding anything on it.
        ownership::retake(shared, partition, owned.generation);
        refuse_all(jobs, || ServiceError::PartitionMoving { partition });
        return;
    }
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
    let Decided {
        pending,
        unchanged,
        refused,
    } = decide_batch(jobs, tentative, &unreadable, now, &shared.vault.log_keys());
    for (job, e) in refused {
        let _ = job.reply.send(Err(e));
    }
    // Commands that write nothing: no record carries their idempotency key,
    // so it is stored here only, so a retry answers the same and another
    // request under it is refused, until it expires.
    let mut noop_keys = WriteBatch::default();
    for (job, outcome) in &unchanged {
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
    }
    let noop_replies = unchanged;
    if !noop_replies.is_empty() {
        if let Err(e) = shared.store.db().write(noop_keys) {
            tracing::error!(error = %e, "Storing idempotency keys failed.");
            refuse_all(noop_replies.into_iter().map(|(j, _)| j), || {
                ServiceError::Internal(crate::error::Cause::msg(
                    "storing the idempotency key failed",
                ))
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
            Command::EraseOrder { scope, .. } => Some((
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
            ServiceError::Internal(crate::error::Cause::msg("storing the erase intent failed"))
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
            ServiceError::Internal(crate::error::Cause::msg("storing the order key failed"))
        });
        return;
    }
    // Erasures: the key topic's row once the classes are destroyed goes in
    // the same transaction as the `OrderErased` event.
    let mut key_rows: Vec<(Uuid, Option<StoredKey>)> = Vec::new();
    for (id, _) in &new_keys {
        match shared.vault.stored(*id) {
            Ok(row) => key_rows.push((*id, row)),
            Err(e) => tracing::error!(order_id = %id, error = %e, "Reading a new key back failed."),
        }
    }
    let new_key_rows = key_rows.len();
    for (id, intent) in &erase_intents {
        match shared
            .vault
            .row_after_destroy(id.order_id, intent.classes.as_ref())
        {
            Ok(row) => key_rows.push((id.order_id, row)),
            Err(e) => {
                tracing::error!(order_id = %id.order_id, error = %e, "Reading the key of an erasure failed; a tombstone is sent.");
                key_rows.push((id.order_id, None));
            }
        }
    }

    let (acked, key_positions, failure) =
        produce(shared, partition, owned, pending, &key_rows).await;
    // Where each erasure's key row landed (they follow the new keys' rows).
    let mut erasure_rows = key_positions.into_iter().skip(new_key_rows);
    if let Some(failure) = &failure {
        tracing::warn!(partition, error = %failure.error, fenced = failure.fenced, "The batch's transaction did not commit.");
        if failure.fenced {
            // Another producer of the partition's transactional id took
            // over: drop the partition, or take it back if the group still
            // gives it to this node (a stale take-over fenced it).
            if owned_by(shared, partition, owned.generation) {
                ownership::fenced(shared, partition, owned.generation);
            }
        } else if failure.unknown {
            // Whether it committed is not known: take the partition over
            // again, which settles the transaction and folds what it wrote.
            ownership::retake(shared, partition, owned.generation);
        }
    }
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
        let res = match (res, &failure) {
            (Ok(pos), None) => Ok(pos),
            (_, Some(f)) if !f.unknown => Err(ServiceError::Unavailable(crate::error::Cause::msg(
                f.error.clone(),
            ))),
            _ => Err(ServiceError::OutcomeUnknown(shared.command_timeout)),
        };
        match res {
            Ok(pos) => {
                p.outcome.position = Some(pos);
                {
                    // Committed: store the effects as they are in the log.
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
                if let Command::EraseOrder { scope, .. } = &p.job.command {
                    p.outcome.key_row = erasure_rows.next().filter(|(_, o)| *o >= 0);
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
                    if p.new_key.is_some()
                        && let Err(error) = shared.vault.discard(p.job.order_id)
                    {
                        // Harmless (a key with no event seals nothing a
                        // reader can find), but it counts as live until the
                        // next start and should be seen.
                        tracing::warn!(order_id = %p.job.order_id, %error, "Discarding the key of a placement that never reached the log failed.");
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
        // A batch that outlived its take-over must not fill the cache of
        // the next one (the store keeps the highest version anyway).
        let current = owned_by(shared, partition, owned.generation);
        let mut st = shared.partition(partition);
        match written {
            Ok(()) if !current => {}
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
    // Erasure: the OrderErased event and the key topic's row are committed;
    // now destroy the key here (every other node does on the row).
    for (order_id, classes, intent, idx) in to_shred {
        let rec = match shared.vault.destroy(order_id, classes.as_ref(), now) {
            Ok(rec) => rec,
            Err(e) => {
                tracing::error!(%order_id, error = %e, "Key destruction failed after OrderErased; the key topic's row destroys it.");
                continue;
            }
        };
        if let Err(e) = intents::clear(&shared.store, &intent) {
            tracing::warn!(%order_id, error = %e, "Clearing an erase intent failed; it is finished again at the next take-over.");
        }
        if let Ok(outcome) = &mut replies[idx].1 {
            outcome.shredded = Some(rec);
        }
    }
    for (reply, res) in replies {
        let _ = reply.send(res);
    }
    drop(guards);
}

/// Answers the jobs whose idempotency key is stored by now, and returns the rest.
pub(super) fn recheck_idempotency(shared: &Shared, jobs: Vec<Job>) -> Vec<Job> {
    let now = now_ms();
    let mut rest = Vec::with_capacity(jobs.len());
    for job in jobs {
        let Some(idem) = job.idempotency else {
            rest.push(job);
            continue;
        };
        match state::lookup_idempotency(&shared.store, &idem.key, now) {
            Ok(Some(prev)) => {
                let _ = job.reply.send(replay(prev, idem, &shared.vault));
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

/// Why a batch's transaction did not commit.
struct Failure {
    error: String,
    /// A newer owner fenced this producer.
    fenced: bool,
    /// It may have committed (a commit without an answer).
    unknown: bool,
}

fn owned_by(shared: &Shared, partition: usize, generation: u64) -> bool {
    shared.slots[partition]
        .owned()
        .is_some_and(|o| o.generation == generation)
}

fn is_fenced(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::InvalidProducerIdMapping
                | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
        )
    ) || matches!(e, KafkaError::Transaction(t) if t.is_fatal())
}

/// Sends every pending command's records and the batch's key rows in one
/// transaction and commits it. Returns each command with where its last
/// record landed, and why the transaction failed, if it did.
async fn produce(
    shared: &Shared,
    partition: usize,
    owned: &Owned,
    pending: Vec<Pending>,
    key_rows: &[(Uuid, Option<StoredKey>)],
) -> (Vec<Acked>, Vec<(i32, i64)>, Option<Failure>) {
    let producer = &owned.producer;
    metrics::histogram!(crate::telemetry::BATCH_SIZE).record(pending.len() as f64);
    let started = std::time::Instant::now();
    let result = transact(shared, partition, producer, &pending, key_rows).await;
    metrics::histogram!(crate::telemetry::PRODUCE_LATENCY).record(started.elapsed().as_secs_f64());
    match result {
        Ok((positions, key_positions)) => {
            let acked = pending
                .into_iter()
                .zip(positions)
                .map(|(p, pos)| (p, Ok(pos)))
                .collect();
            (acked, key_positions, None)
        }
        Err(failure) => {
            let acked = pending
                .into_iter()
                .map(|p| (p, Err(failure.error.clone())))
                .collect();
            (acked, Vec::new(), Some(failure))
        }
    }
}

async fn transact(
    shared: &Shared,
    partition: usize,
    producer: &FutureProducer,
    pending: &[Pending],
    key_rows: &[(Uuid, Option<StoredKey>)],
) -> Result<(Vec<(i32, i64)>, Vec<(i32, i64)>), Failure> {
    let failed = |e: KafkaError, unknown: bool| Failure {
        fenced: is_fenced(&e),
        error: e.to_string(),
        unknown,
    };
    // A producer that cannot begin (its last abort did not complete) is
    // replaced: report it as unknown, which takes the partition over again.
    producer.begin_transaction().map_err(|e| failed(e, true))?;
    let mut sent = Vec::with_capacity(pending.len() + key_rows.len());
    let mut last_of = Vec::with_capacity(pending.len());
    let mut error = None;
    'send: for (id, row) in key_rows {
        let value = row.as_ref().map(encode_value);
        let mut r = FutureRecord::<[u8], Vec<u8>>::to(&shared.keys_topic).key(id.as_bytes());
        if let Some(v) = &value {
            r = r.payload(v);
        }
        match producer.send_result(r) {
            Ok(d) => sent.push(d),
            Err((e, _)) => {
                error = Some(e);
                break 'send;
            }
        }
    }
    if error.is_none() {
        'events: for p in pending {
            let key: &[u8] = p.job.order_id.as_bytes();
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
                match producer.send_result(record) {
                    Ok(d) => sent.push(d),
                    Err((e, _)) => {
                        error = Some(e);
                        break 'events;
                    }
                }
            }
            last_of.push(sent.len() - 1);
        }
    }
    let timeout = delivery_timeout(shared.command_timeout);
    if let Some(e) = error {
        let confirmed = abort(producer, timeout).await;
        return Err(failed(e, !confirmed));
    }
    // Every delivery report first (each record has `message.timeout.ms`):
    // committing with records in flight would make rust-rdkafka's flush
    // wait in 100 ms polls.
    let mut offsets = Vec::with_capacity(sent.len());
    let mut undelivered = None;
    for d in join_all(sent).await {
        match d {
            Ok(Ok(d)) => offsets.push((d.partition, d.offset)),
            Ok(Err((e, _))) => {
                undelivered.get_or_insert(e);
                offsets.push((partition as i32, -1));
            }
            Err(_) => {
                undelivered.get_or_insert(KafkaError::Canceled);
                offsets.push((partition as i32, -1));
            }
        }
    }
    if let Some(e) = undelivered {
        // Not committed, so never read: abort, and if Kafka confirms,
        // nothing of the batch was written.
        let confirmed = abort(producer, timeout).await;
        return Err(failed(e, !confirmed));
    }
    let committed = ownership::commit(producer, timeout).await;
    if let Err(e) = committed {
        let requires_abort = matches!(&e, KafkaError::Transaction(t) if t.txn_requires_abort());
        if requires_abort && abort(producer, timeout).await {
            return Err(failed(e, false));
        }
        return Err(failed(e, true));
    }
    let keys = offsets[..key_rows.len()].to_vec();
    Ok((last_of.into_iter().map(|i| offsets[i]).collect(), keys))
}

/// Aborts the open transaction; true when Kafka confirmed it (nothing of it
/// will ever be read).
async fn abort(producer: &FutureProducer, timeout: std::time::Duration) -> bool {
    let p = producer.clone();
    match tokio::task::spawn_blocking(move || p.abort_transaction(timeout)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Aborting the transaction failed.");
            false
        }
        Err(_) => false,
    }
}
