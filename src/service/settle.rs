//! Settling a partition: after a produce failed, or when the stored state
//! could not be written, the writer appends a barrier, re-reads the
//! partition from where its knowledge ends through the barrier, and folds
//! what it finds into the stored state before it decides anything else.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::log_reader::{RawRecord, read_range};
use super::partition::StoreFolder;
use super::{Shared, delivery_timeout};

/// Appends a barrier record (no key, no value, a header every reader skips)
/// to `partition` and waits for Kafka's acknowledgement; returns its offset.
pub(super) async fn barrier(
    producer: &FutureProducer,
    topic: &str,
    partition: usize,
    timeout: Duration,
) -> Result<i64, KafkaError> {
    let headers = OwnedHeaders::new().insert(Header {
        key: crate::kafka::HEADER_BARRIER,
        value: Some(&b"1"[..]),
    });
    let record = FutureRecord::<[u8], [u8]>::to(topic)
        .partition(partition as i32)
        .headers(headers);
    producer
        .send(record, timeout)
        .await
        .map(|d| d.offset)
        .map_err(|(e, _)| e)
}

/// Brings a partition whose produce failed back to a known state: returns
/// the records from `from` (the state's next offset) through a barrier, to be
/// folded into the state. A barrier appended and acknowledged (acks=all)
/// after the failed records means every record before it in the partition is
/// committed or gone for good: the idempotent producer keeps a partition's
/// records in order, so none of the failed ones can land after it. Retries
/// until Kafka answers (commands for this partition wait meanwhile, and time
/// out to their callers); `None` once the service is stopping.
async fn settle(shared: &Shared, partition: usize, from: i64) -> Option<Vec<RawRecord>> {
    let mut pause = Duration::from_millis(100);
    let started = Instant::now();
    loop {
        if shared.closing.load(Ordering::Acquire) {
            return None;
        }
        let producer = shared.producer();
        if let Some((code, reason)) = producer.client().fatal_error() {
            // The producer cannot go on (librdkafka says so): a new one, with
            // a new producer id, takes over.
            tracing::error!(?code, %reason, "Fatal producer error; replacing the producer.");
            match shared
                .settings
                .reliable_producer_config(delivery_timeout(shared.command_timeout))
                .create::<FutureProducer>()
            {
                Ok(p) => *shared.producer.write().expect("producer lock") = p,
                Err(e) => tracing::error!(error = %e, "Creating a new producer failed."),
            }
            continue;
        }
        match barrier(
            &producer,
            &shared.topic,
            partition,
            delivery_timeout(shared.command_timeout),
        )
        .await
        {
            Ok(offset) => {
                let (s, t) = (shared.settings.clone(), shared.topic.clone());
                // A reader stuck on a leader that went away gives up after
                // this, and the next round starts with a fresh client.
                let stall = shared.command_timeout;
                let read = tokio::task::spawn_blocking(move || {
                    read_range(&s, &t, partition as i32, from, offset + 1, stall)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
                match read {
                    Ok(records) => {
                        tracing::info!(
                            partition,
                            barrier = offset,
                            records = records.len(),
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "Partition settled."
                        );
                        return Some(records);
                    }
                    Err(e) => {
                        tracing::warn!(partition, error = %e, "Re-reading the partition failed; retrying.")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(partition, error = %e, "Barrier not acknowledged; retrying.")
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Settles `partition` and folds what it holds into the stored state, so the
/// store (and the cache, which forgets what changed) matches the log up to a
/// fresh barrier. False when the service is stopping, or the store failed:
/// the partition then stays marked stale, and its next batch tries again
/// before deciding anything.
pub(super) async fn resync(shared: &Shared, partition: usize) -> bool {
    let from = shared.partition(partition).next_offset;
    let Some(records) = settle(shared, partition, from).await else {
        // Stopping: what the log holds past `from` is not folded, so no
        // later batch may be decided on this partition's state.
        shared.partition(partition).stale = true;
        return false;
    };
    let (store, ttl) = (shared.store.clone(), shared.idempotency_ttl);
    let folded = tokio::task::spawn_blocking(move || {
        let mut folder = StoreFolder::new(store, ttl, partition as i32, from).tracking_touched();
        records
            .iter()
            .try_for_each(|r| folder.fold(r))
            .and_then(|()| folder.finish())
    })
    .await
    .map_err(|e| format!("the folding task failed: {e}"))
    .and_then(|r| r.map_err(|e| e.to_string()));
    let mut st = shared.partition(partition);
    match folded {
        Ok(report) => {
            for id in &report.touched {
                st.forget(id);
            }
            st.next_offset = st.next_offset.max(report.end);
            st.stale = false;
            true
        }
        Err(e) => {
            tracing::error!(partition, error = %e, "Storing the settled partition's state failed.");
            st.stale = true;
            false
        }
    }
}
