//! One way to read a stretch of a topic to an end: the writer's catch-up
//! and settle reads ([`crate::service::log_reader`]) and the audits' log
//! scans ([`crate::audit::log`]) all go through [`Scan`].
//!
//! A read-committed consumer is never handed transaction markers or aborted
//! records, but its position moves past them: a partition is done once its
//! position reaches the end, not only when a record at `end - 1` arrives.
//! What must never live here: what a record means (decoding, barriers,
//! chains); a scan hands over the broker's messages as they are.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use super::KafkaSettings;
use crate::shutdown::CancellationToken;

/// A read-committed reader of one topic, outside any consumer group.
pub struct Scan {
    consumer: BaseConsumer,
    topic: String,
}

impl std::fmt::Debug for Scan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Scan {
    /// `purpose` names the client in the broker's logs
    /// (`orderlog-<purpose>-<uuid>`).
    pub fn new(settings: &KafkaSettings, topic: &str, purpose: &str) -> Result<Self, KafkaError> {
        let consumer: BaseConsumer = settings
            .reader_config()
            .set("group.id", format!("orderlog-{purpose}-{}", Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .create()?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
        })
    }

    /// The partition's low and high watermarks (the high one is the last
    /// stable offset for this read-committed reader), retried on transient
    /// errors until `timeout`.
    pub fn watermarks(&self, partition: i32, timeout: Duration) -> Result<(i64, i64), KafkaError> {
        super::watermarks(&self.consumer, &self.topic, partition, timeout)
    }

    /// Calls `f` with every record of `ranges` (partition → `from..end`),
    /// each partition's in order, and returns once every partition is read
    /// to its end.
    ///
    /// Fails with [`stalled`] when no record arrives for `stall` (a long
    /// partition may take long; a silent one may not), and with
    /// `KafkaError::Canceled` once `stop` is cancelled. Consume errors (a
    /// broker going away, a leader moving) are retried within the stall
    /// limit: the client reconnects.
    pub fn read(
        self,
        ranges: &BTreeMap<i32, (i64, i64)>,
        stall: Duration,
        stop: &CancellationToken,
        mut f: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        // Per partition, the offset at which it is read to its end.
        let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
        for (p, (from, end)) in ranges {
            if end > from {
                tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*from))?;
                remaining.insert(*p, *end);
            }
        }
        if remaining.is_empty() {
            return Ok(());
        }
        self.consumer.assign(&tpl)?;
        let mut last_progress = Instant::now();
        while !remaining.is_empty() {
            if stop.is_cancelled() {
                return Err(KafkaError::Canceled);
            }
            if last_progress.elapsed() > stall {
                return Err(stalled());
            }
            let m = match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => m,
                // The end was read from the leader; a record before it may
                // take a moment to be fetchable: keep polling until the
                // stall limit, unless the position says the end is reached.
                None | Some(Err(KafkaError::PartitionEOF(_))) => {
                    super::drop_reached(&self.consumer, &self.topic, &mut remaining);
                    continue;
                }
                Some(Err(e)) => {
                    tracing::debug!(topic = %self.topic, error = %e, "Consume error during a scan; retrying.");
                    continue;
                }
            };
            last_progress = Instant::now();
            let (partition, offset) = (m.partition(), m.offset());
            let Some(end) = remaining.get(&partition).copied() else {
                continue;
            };
            if offset < end {
                f(&m);
            }
            if offset + 1 >= end {
                remaining.remove(&partition);
            }
        }
        Ok(())
    }
}

/// The error [`Scan::read`] fails with when no record arrived for its stall
/// limit.
pub fn stalled() -> KafkaError {
    KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut)
}

/// True for the error [`Scan::read`] fails with when it stalled.
pub fn is_stalled(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut)
    )
}
