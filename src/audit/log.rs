//! Reading the event log from Kafka for an audit: every record of the chosen
//! partitions from the log's start to the high watermark seen when the scan
//! began, with a plain consumer (a throw-away group id, nothing committed).
//! Records come in offset order within a partition.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use uuid::Uuid;

use super::{AuditError, Source};
use crate::kafka::scan::Scan;
use crate::shutdown::CancellationToken;

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
    let reader = Scan::new(&source.settings, &source.topic, "audit")?;
    let never = CancellationToken::new();
    reader
        .read(&marks, STALL_LIMIT, &never, |m| {
            if !crate::kafka::is_barrier(m) {
                f(LogRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or_default().to_vec(),
                });
            }
        })
        .map_err(|e| {
            if crate::kafka::scan::is_stalled(&e) {
                AuditError::Stalled(STALL_LIMIT)
            } else {
                e.into()
            }
        })?;
    Ok(marks)
}
