//! Reads a stretch of one partition of the event log, as the write side needs
//! it: the tail after the stored state's checkpoint when a writer takes the
//! partition, or the records up to a barrier when it settles a failed produce.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use uuid::Uuid;

use crate::kafka::KafkaSettings;
use crate::kafka::scan::Scan;
use crate::shutdown::CancellationToken;

pub const HEADER_IDEMPOTENCY_KEY: &str = "orderlog-idempotency-key";
pub const HEADER_REQUEST_DIGEST: &str = "orderlog-request-digest";

fn header32(m: &impl Message, name: &str) -> Option<[u8; 32]> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
}

/// The idempotency key and request digest a record carries, if any.
pub fn idempotency_headers(m: &impl Message) -> Option<([u8; 32], [u8; 32])> {
    header32(m, HEADER_IDEMPOTENCY_KEY).zip(header32(m, HEADER_REQUEST_DIGEST))
}

/// One record of the event log as the write side needs it.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub offset: i64,
    /// The record key (the order id, on every event orderlog writes).
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Idempotency key and request digest headers, when present.
    pub idempotency: Option<([u8; 32], [u8; 32])>,
    pub barrier: bool,
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
    let never = CancellationToken::new();
    scan(
        settings,
        topic,
        partition,
        from,
        Some(until),
        stall,
        &never,
        |r| out.push(r),
    )?;
    Ok(out)
}

/// Calls `f` with every record from `from` to the end: the high watermark of
/// the moment the scan starts, or `until` if that is further. Returns the end,
/// or `Canceled` once `stop` is cancelled.
/// Fails when no record arrives for `stall`, not when a long partition takes
/// long.
#[allow(clippy::too_many_arguments)] // one read's whole range, limits and stop token
pub fn scan(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    from: i64,
    until: Option<i64>,
    stall: Duration,
    stop: &CancellationToken,
    mut f: impl FnMut(RawRecord),
) -> Result<i64, KafkaError> {
    let reader = Scan::new(settings, topic, "rebuild")?;
    let (low, high) = reader.watermarks(partition, stall)?;
    let end = high.max(until.unwrap_or(0));
    let from = from.max(low);
    if end <= from {
        return Ok(end);
    }
    let range = BTreeMap::from([(partition, (from, end))]);
    reader.read(&range, stall, stop, |m| {
        f(RawRecord {
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            idempotency: idempotency_headers(m),
            barrier: crate::kafka::is_barrier(m),
        })
    })?;
    Ok(end)
}

/// The end of every partition of `topic` as a read-committed reader sees it
/// now (the last stable offset).
pub fn log_ends(
    settings: &KafkaSettings,
    topic: &str,
    partitions: usize,
    timeout: Duration,
) -> Result<Vec<i64>, KafkaError> {
    let consumer: BaseConsumer = settings
        .reader_config()
        .set("group.id", format!("orderlog-ends-{}", Uuid::new_v4()))
        .create()?;
    (0..partitions as i32)
        .map(|p| crate::kafka::watermarks(&consumer, topic, p, timeout).map(|(_, high)| high))
        .collect()
}
