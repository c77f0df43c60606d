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

/// Reads `topic`/`partition` from offset 0 to the high watermark.
pub fn load_partition(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<PartitionState, KafkaError> {
    let consumer: BaseConsumer = settings
        .client_config()
        .set("group.id", format!("orderlog-rebuild-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let (low, high) = crate::kafka::watermarks(&consumer, topic, partition, timeout)?;
    let mut st = PartitionState {
        next_offset: high,
        ..Default::default()
    };
    if high <= low {
        return Ok(st);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout.max(Duration::from_secs(60));
    loop {
        if Instant::now() > deadline {
            return Err(KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = match msg {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(_)) => break,
            Err(e) => return Err(e),
        };
        let offset = m.offset();
        let bytes = m.payload().unwrap_or_default();
        if crate::kafka::is_barrier(&m) {
            if offset + 1 >= high {
                break;
            }
            continue;
        }
        match events::decode(bytes) {
            Ok(env) => {
                let rec = st.orders.entry(env.meta.order_id).or_default();
                if rec.absorb(&env, bytes, offset) {
                    if let (Some(key), Some(digest)) = (
                        header32(&m, HEADER_IDEMPOTENCY_KEY),
                        header32(&m, HEADER_REQUEST_DIGEST),
                    ) {
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
                    tracing::warn!(partition, offset, order_id = %env.meta.order_id, "Record does not continue its order's chain; skipped.");
                }
            }
            Err(e) => {
                st.skipped += 1;
                tracing::warn!(partition, offset, error = %e, "Undecodable record skipped.");
            }
        }
        if offset + 1 >= high {
            break;
        }
    }
    st.orders.retain(|_, r| r.state.version > 0);
    Ok(st)
}
