//! The second home of wrapped order keys: a compacted Kafka topic.
//!
//! A lost key store is an accidental shred of everything, so every wrapped
//! key written to the vault is also written to `orders.keys` (record key:
//! order id; value: the vault row, wrapped under the KEK) before any event
//! that needs it is appended. Erasure writes a tombstone (or the reduced row
//! after a class erasure). A node whose data directory is empty restores its
//! vault from this topic.
//!
//! How long an erased wrapped key may still exist in Kafka: the record that
//! held it stays until its segment is closed and the log cleaner compacts it.
//! The topic sets `segment.ms` and `max.compaction.lag.ms` to one hour, so it
//! is gone about an hour after the tombstone (plus the cleaner's back-off of
//! seconds); the tombstone itself, which holds no key, stays for
//! `delete.retention.ms`. Rotating the KEK and destroying the old one closes
//! even that window: a leftover copy wrapped under a destroyed KEK is
//! unreadable.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

use super::vault::{KeyVault, StoredKey, VaultError};
use crate::kafka::scan::Scan;
use crate::kafka::{KafkaSettings, TopicSpec};
use crate::shutdown::CancellationToken;
use crate::store::{CF_ORDER_KEYS, decode_value, encode_value};

/// `orders.events` -> `orders.keys`; any other name gets `.keys` appended.
pub fn keys_topic_for(events_topic: &str) -> String {
    match events_topic.strip_suffix(".events") {
        Some(base) => format!("{base}.keys"),
        None => format!("{events_topic}.keys"),
    }
}

/// Topic settings of the key replica (see the module docs for the window).
pub fn keys_topic_spec(name: &str, partitions: i32, replication: i32) -> TopicSpec {
    TopicSpec {
        name: name.to_owned(),
        partitions,
        replication,
        config: vec![
            ("cleanup.policy", "compact".into()),
            ("segment.ms", "3600000".into()),
            ("max.compaction.lag.ms", "3600000".into()),
            ("min.cleanable.dirty.ratio", "0.01".into()),
            ("delete.retention.ms", "86400000".into()),
        ],
    }
}

/// Writes wrapped keys and tombstones to the replica topic.
#[derive(Clone)]
pub struct KeyReplica {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl std::fmt::Debug for KeyReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyReplica")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KeyReplica {
    pub fn new(
        settings: &KafkaSettings,
        topic: &str,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let producer = settings.reliable_producer_config(timeout).create()?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            timeout,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes rows (`None` = tombstone) and waits for every acknowledgement.
    pub async fn publish(&self, rows: &[(Uuid, Option<&StoredKey>)]) -> Result<(), KafkaError> {
        let encoded: Vec<(Uuid, Option<Vec<u8>>)> = rows
            .iter()
            .map(|(id, row)| (*id, row.map(encode_value)))
            .collect();
        let sends = encoded.iter().map(|(id, value)| {
            let mut r =
                FutureRecord::<[u8], Vec<u8>>::to(&self.topic).key(id.as_bytes().as_slice());
            if let Some(v) = value {
                r = r.payload(v);
            }
            self.producer.send(r, self.timeout)
        });
        for res in join_all(sends).await {
            res.map_err(|(e, _)| e)?;
        }
        Ok(())
    }
}

impl KeyReplica {
    /// Publishes retired log keys (see [`super::logkey`]) and waits for the
    /// acknowledgements.
    pub async fn publish_log_keys(
        &self,
        rows: &[super::logkey::WrappedLogKey],
    ) -> Result<(), KafkaError> {
        let encoded: Vec<(String, Vec<u8>)> = rows
            .iter()
            .map(|r| (r.record_key(), encode_value(r)))
            .collect();
        let sends = encoded.iter().map(|(key, value)| {
            self.producer.send(
                FutureRecord::<[u8], Vec<u8>>::to(&self.topic)
                    .key(key.as_bytes())
                    .payload(value),
                self.timeout,
            )
        });
        for res in join_all(sends).await {
            res.map_err(|(e, _)| e)?;
        }
        Ok(())
    }
}

/// Counts of a restore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreReport {
    pub restored: u64,
    pub shredded: u64,
}

/// Fills an empty vault from the replica topic (last record per order wins;
/// a tombstone means the key was shredded), without following it: what a
/// node restored from the replica alone would hold. A node restores with its
/// key follower ([`super::KeyFollower`]), which also stays current. Blocking.
pub fn restore(
    settings: &KafkaSettings,
    topic: &str,
    vault: &KeyVault,
    now_ms: i64,
) -> Result<RestoreReport, VaultError> {
    let kafka = |e: KafkaError| VaultError::Replica(crate::error::Cause::of(e));
    let timeout = Duration::from_secs(30);
    let partitions = crate::kafka::partition_count(settings, topic, timeout).map_err(kafka)?;
    let reader = Scan::new(settings, topic, "restore").map_err(kafka)?;
    let mut ranges = BTreeMap::new();
    for p in 0..partitions as i32 {
        ranges.insert(p, reader.watermarks(p, timeout).map_err(kafka)?);
    }
    let mut latest: HashMap<Uuid, Option<StoredKey>> = HashMap::new();
    let mut undecodable = None;
    reader
        .read(&ranges, timeout, &CancellationToken::new(), |m| {
            let Some(id) = m.key().and_then(|k| Uuid::from_slice(k).ok()) else {
                return; // a retired log key's row (see `logkey`)
            };
            let row = match m
                .payload()
                .map(|v| decode_value::<StoredKey>(CF_ORDER_KEYS, v))
            {
                None => None,
                Some(Ok(row)) => Some(row),
                Some(Err(e)) => {
                    undecodable.get_or_insert(e);
                    return;
                }
            };
            latest.insert(id, row);
        })
        .map_err(kafka)?;
    if let Some(e) = undecodable {
        return Err(e.into());
    }
    let mut report = RestoreReport::default();
    for (id, row) in latest {
        match row {
            Some(row) => {
                vault.restore_row(id, &row)?;
                report.restored += 1;
            }
            None => {
                vault.mark_shredded(id, now_ms)?;
                report.shredded += 1;
            }
        }
    }
    Ok(report)
}

/// Counts of a KEK rotation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RotationReport {
    pub rewrapped: u64,
    pub already_current: u64,
    pub republished: u64,
}

/// Re-wraps every live key under `new` in the vault, then republishes every
/// row to the replica topic so its newest record per order is under `new`
/// too (older records are compacted away). The event log is not touched.
/// `retire_until`: the events topic's end per partition (see
/// [`KeyVault::rotate`]).
pub async fn rotate_kek(
    vault: &KeyVault,
    replica: Option<&KeyReplica>,
    new: super::Kek,
    retire_until: &std::collections::BTreeMap<i32, i64>,
) -> Result<RotationReport, VaultError> {
    let r = vault.rotate(new, retire_until)?;
    let mut report = RotationReport {
        rewrapped: r.rewrapped,
        already_current: r.already_current,
        republished: 0,
    };
    if let Some(replica) = replica {
        let rows = vault.all_rows()?;
        for chunk in rows.chunks(1000) {
            let refs: Vec<(Uuid, Option<&StoredKey>)> =
                chunk.iter().map(|(id, row)| (*id, Some(row))).collect();
            replica
                .publish(&refs)
                .await
                .map_err(|e| VaultError::Replica(crate::error::Cause::of(e)))?;
            report.republished += chunk.len() as u64;
        }
    }
    if let Some(replica) = replica {
        replica
            .publish_log_keys(&vault.retired_log_keys()?)
            .await
            .map_err(|e| VaultError::Replica(crate::error::Cause::of(e)))?;
    }
    vault.forget_old_keks();
    Ok(report)
}
