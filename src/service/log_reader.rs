//! Reads a partition of the event log from the start to its end, to rebuild
//! the write side's state: the log is the truth.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use super::state::{IdempotentOutcome, PartitionState};
use crate::events;
use crate::kafka::KafkaSettings;

pub const HEADER_IDEMPOTENCY_KEY: &str = "orderlog-idempotency-key";
pub const HEADER_REQUEST_DIGEST: &str = "orderlog-request-digest";

fn header32(m: &impl Message, name: &str) -> Option<[u8; 32]> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
}

/// One record of the event log as the write side needs it.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub offset: i64,
    pub payload: Vec<u8>,
    /// Idempotency key and request digest headers, when present.
    pub idempotency: Option<([u8; 32], [u8; 32])>,
    pub barrier: bool,
}

/// Reads `topic`/`partition` from offset 0 to the high watermark.
pub fn load_partition(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<PartitionState, KafkaError> {
    let mut st = PartitionState::default();
    let stall = timeout.max(Duration::from_secs(60));
    let end = scan(settings, topic, partition, 0, None, stall, |r| {
        fold(&mut st, partition, &r)
    })?;
    st.next_offset = st.next_offset.max(end);
    st.orders.retain(|_, r| r.state.version > 0);
    Ok(st)
}

/// The records of `topic`/`partition` from offset `from` up to the high
/// watermark, and at least up to `until` (exclusive): a writer settling its
/// partition reads up to its barrier this way. Fails when no record arrives
/// for `stall` (the caller tries again with a fresh client).
pub fn read_range(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    from: i64,
    until: i64,
    stall: Duration,
) -> Result<Vec<RawRecord>, KafkaError> {
    let mut out = Vec::new();
    scan(settings, topic, partition, from, Some(until), stall, |r| {
        out.push(r)
    })?;
    Ok(out)
}

/// Folds one record into the partition's state: an event that continues its
/// order's chain is applied (with its idempotency key); anything else is
/// counted as skipped. Barriers carry nothing.
pub fn fold(st: &mut PartitionState, partition: i32, r: &RawRecord) {
    st.next_offset = st.next_offset.max(r.offset + 1);
    if r.barrier {
        return;
    }
    match events::decode(&r.payload) {
        Ok(env) => {
            let rec = st.orders.entry(env.meta.order_id).or_default();
            if rec.absorb(&env, &r.payload, r.offset) {
                if let Some((key, digest)) = r.idempotency {
                    st.idempotency.insert(
                        key,
                        IdempotentOutcome {
                            request_digest: digest,
                            order_id: env.meta.order_id,
                            version: rec.state.version,
                        },
                    );
                }
            } else {
                st.skipped += 1;
                tracing::warn!(partition, offset = r.offset, order_id = %env.meta.order_id, "Record does not continue its order's chain; skipped.");
            }
        }
        Err(e) => {
            st.skipped += 1;
            tracing::warn!(partition, offset = r.offset, error = %e, "Undecodable record skipped.");
        }
    }
}

/// Calls `f` with every record from `from` to the end: the high watermark of
/// the moment the scan starts, or `until` if that is further. Returns the end.
/// Fails when no record arrives for `stall`, not when a long partition takes
/// long.
fn scan(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    from: i64,
    until: Option<i64>,
    stall: Duration,
    mut f: impl FnMut(RawRecord),
) -> Result<i64, KafkaError> {
    let consumer: BaseConsumer = settings
        .client_config()
        .set("group.id", format!("orderlog-rebuild-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let (low, high) = crate::kafka::watermarks(&consumer, topic, partition, stall)?;
    let end = high.max(until.unwrap_or(0));
    let from = from.max(low);
    if end <= from {
        return Ok(end);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
    consumer.assign(&tpl)?;
    let mut last_progress = Instant::now();
    let mut next = from;
    while next < end {
        if last_progress.elapsed() > stall {
            return Err(KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = match msg {
            Ok(m) => m,
            // The end was read from the leader; a record before it may take
            // a moment to be fetchable: keep polling until the stall limit.
            Err(KafkaError::PartitionEOF(_)) => continue,
            // A broker going away, a leader moving: the client reconnects;
            // the stall limit bounds how long that may take.
            Err(e) => {
                tracing::debug!(partition, error = %e, "Consume error while reading the partition; retrying.");
                continue;
            }
        };
        last_progress = Instant::now();
        next = m.offset() + 1;
        if m.offset() >= end {
            break;
        }
        f(RawRecord {
            offset: m.offset(),
            payload: m.payload().unwrap_or_default().to_vec(),
            idempotency: header32(&m, HEADER_IDEMPOTENCY_KEY)
                .zip(header32(&m, HEADER_REQUEST_DIGEST)),
            barrier: crate::kafka::is_barrier(&m),
        });
    }
    Ok(end)
}
