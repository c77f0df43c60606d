//! Reading the event log from Kafka for an audit: every record of the chosen
//! partitions from the log's start to the high watermark seen when the scan
//! began, with a plain consumer (a throw-away group id, nothing committed).
//! Records come in offset order within a partition.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use super::{AuditError, Source};

/// How long a scan may go without a record before it gives up.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// One record of the event topic, raw.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// Number of partitions of the source topic.
pub fn partition_count(source: &Source) -> Result<usize, AuditError> {
    match crate::kafka::partition_count(&source.settings, &source.topic, METADATA_TIMEOUT) {
        Ok(0) | Err(KafkaError::MetadataFetch(_)) => Err(AuditError::NoTopic(source.topic.clone())),
        Ok(n) => Ok(n),
        Err(e) => Err(e.into()),
    }
}

/// Per partition, `(low, high)` watermarks.
pub fn watermarks(
    source: &Source,
    partitions: &[i32],
) -> Result<BTreeMap<i32, (i64, i64)>, AuditError> {
    let consumer = consumer(source)?;
    let mut out = BTreeMap::new();
    for p in partitions {
        out.insert(
            *p,
            consumer.fetch_watermarks(&source.topic, *p, METADATA_TIMEOUT)?,
        );
    }
    Ok(out)
}

fn consumer(source: &Source) -> Result<BaseConsumer, AuditError> {
    Ok(source
        .settings
        .reader_config()
        .set("group.id", format!("orderlog-audit-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()?)
}

/// Calls `f` with every record of `partitions` (all of the topic with `None`)
/// up to the high watermarks of the moment the scan starts. Returns those
/// watermarks.
pub fn scan(
    source: &Source,
    partitions: Option<&[i32]>,
    mut f: impl FnMut(LogRecord),
) -> Result<BTreeMap<i32, (i64, i64)>, AuditError> {
    let all: Vec<i32>;
    let partitions = match partitions {
        Some(p) => p,
        None => {
            all = (0..partition_count(source)? as i32).collect();
            &all
        }
    };
    let marks = watermarks(source, partitions)?;
    let consumer = consumer(source)?;
    let mut tpl = TopicPartitionList::new();
    // Per partition, the offset at which it is read to its end.
    let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, (low, high)) in &marks {
        if high > low {
            tpl.add_partition_offset(&source.topic, *p, Offset::Offset(*low))?;
            remaining.insert(*p, *high);
        }
    }
    if remaining.is_empty() {
        return Ok(marks);
    }
    consumer.assign(&tpl)?;
    let mut last_progress = Instant::now();
    while !remaining.is_empty() {
        if last_progress.elapsed() > STALL_LIMIT {
            return Err(AuditError::Stalled(STALL_LIMIT));
        }
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            crate::kafka::drop_reached(&consumer, &source.topic, &mut remaining);
            continue;
        };
        let m = match msg {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(_)) => {
                crate::kafka::drop_reached(&consumer, &source.topic, &mut remaining);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Consume error during an audit scan; retrying.");
                continue;
            }
        };
        last_progress = Instant::now();
        let (partition, offset) = (m.partition(), m.offset());
        let Some(end) = remaining.get(&partition).copied() else {
            continue;
        };
        if offset < end && !crate::kafka::is_barrier(&m) {
            f(LogRecord {
                partition,
                offset,
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
            });
        }
        if offset + 1 >= end {
            remaining.remove(&partition);
        }
    }
    Ok(marks)
}
