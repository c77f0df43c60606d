//! How nodes find each other: a small compacted topic (`orders.members`)
//! where every node keeps one row (its id, advertised URL, the partitions it
//! writes, a heartbeat time, and how far its vault and views have read and
//! purged: [`crate::erasure::Positions`]), refreshed every heartbeat, at
//! every ownership change, at once when its purger has purged (so an
//! erasure's receipt learns soon that every node did), and within
//! [`POSITIONS_EVERY`] when its positions move otherwise. Every node reads the topic from its start and keeps the
//! newest row per node. A node whose row this node has not received for
//! [`DEAD_AFTER_HEARTBEATS`] heartbeats is dead (judged by the local clock).
//! A node that stops leaves a tombstone.
//!
//! The topic only says where to forward a command: who may write a
//! partition is decided by the writers' group and enforced by transactions
//! ([`super::ownership`]), so a stale row costs a `partition_moving` answer,
//! never a wrong write.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ClusterOptions, Shared, ownership};
use crate::clock::now_ms;
use crate::erasure::Positions;
use crate::kafka::KafkaSettings;
use crate::shutdown::{CancellationToken, Worker};

/// A node whose row is older than this many heartbeats is dead.
pub const DEAD_AFTER_HEARTBEATS: u32 = 3;
/// A row whose positions moved is written again at most this often; at
/// once when the node's purger has just purged (an erasure's receipt waits
/// for that).
pub const POSITIONS_EVERY: Duration = Duration::from_millis(500);
/// How often the heartbeat task looks for a change to publish.
const LOOK_EVERY: Duration = Duration::from_millis(20);

/// One node's row in the members topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Member {
    pub node_id: String,
    /// Base URL of the node's API, as other nodes reach it.
    pub url: String,
    /// Partitions the node writes.
    pub partitions: Vec<i32>,
    pub heartbeat_ms: i64,
    /// How often the node writes its row (so any reader can judge it dead).
    #[serde(default)]
    pub heartbeat_every_ms: u64,
    /// How far its vault and views have read and purged.
    #[serde(default)]
    pub positions: Positions,
}

/// A row as this node knows it, for `GET /v1/cluster`.
#[derive(Debug, Clone)]
pub struct Known {
    pub member: Member,
    /// Since this node received the row.
    pub age: Duration,
    pub live: bool,
}

/// This node and what it knows of the others (for `/readyz`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    pub node_id: String,
    pub url: String,
    /// Per partition: `owned`, `taking_over` or `elsewhere`.
    #[schema(value_type = BTreeMap<String, String>)]
    pub partitions: BTreeMap<i32, &'static str>,
    /// Live nodes, this one included.
    pub members: Vec<Member>,
}

/// The members topic, written and read.
pub struct Members {
    me: ClusterOptions,
    topic: String,
    producer: FutureProducer,
    /// Per node: its newest row and when this node received it (liveness
    /// is judged by this node's clock, not the sender's).
    rows: Arc<RwLock<HashMap<String, (Member, Instant)>>>,
    /// Set once every partition was seen owned (here or by a live node).
    covered: AtomicBool,
    /// When `covered` was set (Unix ms).
    covered_at_ms: std::sync::atomic::AtomicI64,
    wake: tokio::sync::Notify,
    /// Follows the members topic until `leave`.
    reader: parking_lot::Mutex<Option<Worker>>,
}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Members")
            .field("node_id", &self.me.node_id)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Members {
    /// Starts reading the members topic of `events_topic` (which must exist).
    pub async fn start(
        settings: &KafkaSettings,
        events_topic: &str,
        me: &ClusterOptions,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, KafkaError> {
        let topic = crate::kafka::members_topic_for(events_topic);
        let producer: FutureProducer = settings
            .reliable_producer_config(me.heartbeat.max(Duration::from_secs(5)))
            .create()?;
        let consumer: BaseConsumer = settings
            .client_config()
            .set("group.id", format!("orderlog-members-{}", Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        let rows = Arc::new(RwLock::new(HashMap::new()));
        let rows_t = rows.clone();
        let reader = Worker::spawn("members", stop, move |stop| follow(consumer, rows_t, stop))
            .map_err(|_| KafkaError::Canceled)?;
        Ok(Arc::new(Self {
            me: me.clone(),
            topic,
            producer,
            rows,
            covered: AtomicBool::new(false),
            covered_at_ms: std::sync::atomic::AtomicI64::new(i64::MAX),
            wake: tokio::sync::Notify::new(),
            reader: parking_lot::Mutex::new(Some(reader)),
        }))
    }

    pub fn node_id(&self) -> &str {
        &self.me.node_id
    }

    /// Live rows of other nodes.
    fn live_others(&self) -> Vec<Member> {
        let max_age = self.me.heartbeat * DEAD_AFTER_HEARTBEATS;
        self.rows
            .read()
            .values()
            .filter(|(m, at)| m.node_id != self.me.node_id && at.elapsed() <= max_age)
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// Every row received (this node's own included), live or not.
    pub fn known(&self) -> Vec<Known> {
        let max_age = self.me.heartbeat * DEAD_AFTER_HEARTBEATS;
        self.rows
            .read()
            .values()
            .map(|(m, at)| Known {
                member: m.clone(),
                age: at.elapsed(),
                live: at.elapsed() <= max_age,
            })
            .collect()
    }

    /// Live rows of the other nodes, with their positions.
    pub fn live_peers(&self) -> Vec<Member> {
        self.live_others()
    }

    /// The live node (other than this one) that says it writes `partition`.
    pub fn owner_of(&self, partition: i32) -> Option<Member> {
        self.live_others()
            .into_iter()
            .filter(|m| m.partitions.contains(&partition))
            .max_by_key(|m| m.heartbeat_ms)
    }

    /// True once every partition has been seen owned since the start: the
    /// node can then carry out (or forward) any command.
    pub fn covered(&self) -> bool {
        self.covered.load(Ordering::Acquire)
    }

    /// When (Unix ms) every partition first had a writer: every take-over
    /// barrier of that start is in the log by then. `i64::MAX` before.
    pub fn covered_at_ms(&self) -> i64 {
        self.covered_at_ms.load(Ordering::Acquire)
    }

    /// Asks for this node's row to be written now (ownership changed).
    pub fn changed(&self) {
        self.wake.notify_one();
    }

    pub fn status(&self, slots: &[ownership::Slot], positions: Positions) -> ClusterStatus {
        let mut members = self.live_others();
        members.push(self.row(slots, positions));
        members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        ClusterStatus {
            node_id: self.me.node_id.clone(),
            url: self.me.advertise_url.clone(),
            partitions: ownership::phases(slots),
            members,
        }
    }

    pub(super) fn row(&self, slots: &[ownership::Slot], positions: Positions) -> Member {
        Member {
            node_id: self.me.node_id.clone(),
            url: self.me.advertise_url.clone(),
            partitions: ownership::owned_partitions(slots),
            heartbeat_ms: now_ms(),
            heartbeat_every_ms: self.me.heartbeat.as_millis() as u64,
            positions,
        }
    }

    async fn publish(&self, row: Option<&Member>) -> Result<(), KafkaError> {
        let value = row.map(|r| serde_json::to_vec(r).expect("a member row serializes"));
        let mut record = FutureRecord::<str, Vec<u8>>::to(&self.topic)
            .partition(0)
            .key(&self.me.node_id);
        if let Some(v) = &value {
            record = record.payload(v);
        }
        self.producer
            .send(record, self.me.heartbeat)
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }

    fn check_covered(&self, slots: &[ownership::Slot]) -> bool {
        if self.covered() {
            return false;
        }
        let others = self.live_others();
        let all = slots.iter().enumerate().all(|(p, s)| {
            s.is_owned() || others.iter().any(|m| m.partitions.contains(&(p as i32)))
        });
        if all {
            self.covered_at_ms
                .store(crate::clock::now_ms(), Ordering::Release);
            self.covered.store(true, Ordering::Release);
        }
        all
    }

    /// Writes this node's tombstone and stops reading the topic.
    pub async fn leave(&self) {
        let reader = self.reader.lock().take();
        if let Some(reader) = reader {
            // The reader ends within one poll.
            reader.stop_from_task().await;
        }
        if let Err(e) = self.publish(None).await {
            tracing::debug!(error = %e, "Writing this node's members tombstone failed.");
        }
    }
}

fn follow(
    consumer: BaseConsumer,
    rows: Arc<RwLock<HashMap<String, (Member, Instant)>>>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let Some(node) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            continue;
        };
        let mut rows = rows.write();
        match m.payload().map(serde_json::from_slice::<Member>) {
            None => {
                rows.remove(node);
            }
            Some(Ok(row)) => {
                rows.insert(node.to_owned(), (row, Instant::now()));
            }
            Some(Err(e)) => tracing::debug!(error = %e, "Unreadable members row skipped."),
        }
    }
}

/// Keeps this node's row fresh: every heartbeat, at once when its
/// partitions change, and within [`POSITIONS_EVERY`] when its positions move.
/// Also opens readiness once every partition has an owner.
pub(super) async fn heartbeat(members: Arc<Members>, shared: Weak<Shared>) {
    let mut last: Option<Member> = None;
    let mut sent_at = Instant::now();
    let mut purges_sent = 0;
    loop {
        let wake = members.wake.notified();
        let Some(sh) = shared.upgrade() else { return };
        if sh.closing.is_cancelled() {
            return;
        }
        let purges = sh.purges();
        let row = members.row(&sh.slots, sh.positions());
        let due = match &last {
            None => true,
            Some(l) => {
                l.partitions != row.partitions
                    || purges != purges_sent
                    || sent_at.elapsed() >= members.me.heartbeat
                    || (l.positions != row.positions && sent_at.elapsed() >= POSITIONS_EVERY)
            }
        };
        if due {
            match members.publish(Some(&row)).await {
                Err(e) => tracing::debug!(error = %e, "Writing this node's members row failed."),
                Ok(()) => {
                    if last.as_ref().is_none_or(|l| l.partitions != row.partitions) {
                        tracing::info!(node_id = %row.node_id, partitions = ?row.partitions, "Members row written.");
                    }
                    sent_at = Instant::now();
                    purges_sent = purges;
                    last = Some(row);
                }
            }
        }
        if members.check_covered(&sh.slots) {
            sh.started.notify_waiters();
            tracing::info!("Every partition has a writer; ready.");
        }
        let period = if members.covered() {
            LOOK_EVERY
        } else {
            Duration::from_millis(200)
        };
        drop(sh);
        let _ = tokio::time::timeout(period, wake).await;
    }
}
