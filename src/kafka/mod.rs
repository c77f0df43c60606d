//! Kafka plumbing: client configuration, topics, and the embedded broker.
//!
//! Topic names and their settings live here as constants, so the code, the
//! ops scripts and the docs agree on them.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// The event log: one record per event, keyed by order id, kept forever.
pub const TOPIC_EVENTS: &str = "orders.events";

/// The consumer group the writers of `topic` join: partitions assigned to a
/// node in it are the partitions that node writes.
pub fn writers_group(topic: &str) -> String {
    format!("orderlog-writers.{topic}")
}

/// The `transactional.id` of the writer of `partition`: the same on every
/// node, so whoever takes the partition fences whoever had it.
pub fn transactional_id(topic: &str, partition: usize) -> String {
    format!("orderlog-writer.{topic}.{partition}")
}

/// `orders.events` -> `orders.members`: where nodes announce themselves.
pub fn members_topic_for(events_topic: &str) -> String {
    match events_topic.strip_suffix(".events") {
        Some(base) => format!("{base}.members"),
        None => format!("{events_topic}.members"),
    }
}

/// The members topic: one compacted partition, a row per node.
pub fn members_topic_spec(name: &str, replication: i32) -> TopicSpec {
    TopicSpec {
        name: name.to_owned(),
        partitions: 1,
        replication,
        config: vec![
            ("cleanup.policy", "compact".into()),
            ("segment.ms", "600000".into()),
            ("min.cleanable.dirty.ratio", "0.1".into()),
        ],
    }
}

/// Header of a barrier record: a record without key or value that a writer
/// appends to its partition to settle what an unanswered produce left behind
/// (see `service`). Every reader of the event log skips it.
pub const HEADER_BARRIER: &str = "orderlog-barrier";

/// True for a barrier record: no key, no value, and the barrier header.
pub fn is_barrier(m: &impl rdkafka::message::Message) -> bool {
    use rdkafka::message::Headers;
    m.key().is_none()
        && m.payload().is_none_or(<[u8]>::is_empty)
        && m.headers()
            .is_some_and(|h| h.iter().any(|h| h.key == HEADER_BARRIER))
}

/// librdkafka settings passed through as they are (security.protocol,
/// sasl.*, ssl.*, ...). Its `Debug` prints the value of every setting that
/// holds a secret (a password, a private key, a token) as `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct KafkaExtra(pub BTreeMap<String, String>);

/// True for a librdkafka setting whose value is a secret.
pub fn is_secret_setting(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "key.pem",
        "private",
        "token",
        "jaas",
        "credential",
        // sasl.oauthbearer.config / .extensions may carry client secrets.
        "oauthbearer",
    ]
    .iter()
    .any(|w| name.contains(w))
}

impl std::fmt::Debug for KafkaExtra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret_setting(k) {
                        "[redacted]"
                    } else {
                        v.as_str()
                    },
                )
            }))
            .finish()
    }
}

impl KafkaExtra {
    /// Adds every `ORDERLOG_KAFKA_<SETTING>` of `env` as a librdkafka setting,
    /// over what is there: `ORDERLOG_KAFKA_SECURITY_PROTOCOL=SSL` gives
    /// `security.protocol=SSL`. The one mapping of these variables.
    pub fn add_env<'a>(&mut self, env: impl IntoIterator<Item = (&'a String, &'a String)>) {
        for (k, v) in env {
            if let Some(rest) = k.strip_prefix("ORDERLOG_KAFKA_") {
                self.0
                    .insert(rest.to_ascii_lowercase().replace('_', "."), v.clone());
            }
        }
    }
}

impl std::ops::Deref for KafkaExtra {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KafkaExtra {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<'a> IntoIterator for &'a KafkaExtra {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<BTreeMap<String, String>> for KafkaExtra {
    fn from(m: BTreeMap<String, String>) -> Self {
        Self(m)
    }
}

/// Where a Kafka cluster is and how to talk to it.
#[derive(Debug, Clone, Default)]
pub struct KafkaSettings {
    /// `host:port,host:port`.
    pub brokers: String,
    /// Passed through to librdkafka as is.
    pub extra: KafkaExtra,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            extra: KafkaExtra::default(),
        }
    }

    /// A librdkafka configuration with the bootstrap servers and pass-through settings.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }

    /// The producer every write of orderlog goes through: idempotent (no
    /// duplicates or reordering on retry), `acks=all` (acknowledged means in
    /// every in-sync replica), and a delivery time limit, after which a record
    /// fails instead of hanging.
    ///
    /// Two defaults (a pass-through setting wins) keep a producer from
    /// sticking to a broker that stopped answering: a request gets no longer
    /// than the delivery time limit (`socket.timeout.ms`, 60 s by default),
    /// and partition leaders are re-read every 2 s
    /// (`topic.metadata.refresh.interval.ms`, 5 min by default), so a leader
    /// that moved off a paused broker is found in seconds.
    pub fn reliable_producer_config(&self, delivery_timeout: Duration) -> ClientConfig {
        let mut c = self.client_config();
        for (k, v) in [
            (
                "socket.timeout.ms",
                delivery_timeout.as_millis().max(1000).to_string(),
            ),
            ("topic.metadata.refresh.interval.ms", "2000".to_owned()),
        ] {
            if !self.extra.contains_key(k) {
                c.set(k, v);
            }
        }
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("compression.type", "lz4")
            .set(
                "message.timeout.ms",
                delivery_timeout.as_millis().to_string(),
            );
        c
    }

    /// A consumer of the event log or the key replica. Reads only what
    /// transactions committed (`isolation.level=read_committed`): a record of
    /// an aborted or still open transaction (a fenced writer's) is never seen.
    ///
    /// A reader slower than the fetcher fills librdkafka's local queue to
    /// `queued.min.messages` (100,000), and each partition's next fetch then
    /// waits `fetch.queue.backoff.ms`, 1 s by default: long enough for the
    /// projector (about 110k events/s) to empty the queue and wait for a
    /// fetch a fifth of the time. 20 ms keeps the queue topped up.
    pub fn reader_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("isolation.level", "read_committed");
        if !self.extra.contains_key("fetch.queue.backoff.ms") {
            c.set("fetch.queue.backoff.ms", "20");
        }
        c
    }

    /// The transactional producer of one partition's writer: the
    /// [`reliable_producer_config`](Self::reliable_producer_config) with a
    /// `transactional.id` that is the same on every node, so a new owner's
    /// `init_transactions` fences the previous one. A transaction left open
    /// (its owner paused or cut off) is aborted by the coordinator after
    /// `transaction.timeout.ms`, or at once when the next owner takes over.
    pub fn transactional_producer_config(
        &self,
        transactional_id: &str,
        delivery_timeout: Duration,
    ) -> ClientConfig {
        let mut c = self.reliable_producer_config(delivery_timeout);
        c.set("transactional.id", transactional_id);
        // Right after a commit, the coordinator answers the next
        // transaction's first request with CONCURRENT_TRANSACTIONS until its
        // markers are written (a few ms); librdkafka retries after
        // `retry.backoff.ms`, 100 ms by default, which would put a floor of
        // 100 ms under every batch that follows another.
        if !self.extra.contains_key("retry.backoff.ms") {
            c.set("retry.backoff.ms", "5");
        }
        if !self.extra.contains_key("transaction.timeout.ms") {
            c.set(
                "transaction.timeout.ms",
                (delivery_timeout.as_millis() * 2).max(10_000).to_string(),
            );
        }
        c
    }

    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
        self.client_config().create()
    }
}

/// Settings of a topic to create.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    pub config: Vec<(&'static str, String)>,
}

impl TopicSpec {
    /// The event log: retention forever, never compacted (every event matters).
    pub fn events(name: impl Into<String>, partitions: i32, replication: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication,
            config: vec![
                ("retention.ms", "-1".into()),
                ("retention.bytes", "-1".into()),
                ("cleanup.policy", "delete".into()),
            ],
        }
    }
}

/// Creates the topics that do not exist yet; existing ones are left as they are.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    specs: &[TopicSpec],
) -> Result<(), KafkaError> {
    let admin = settings.admin()?;
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            let mut t = NewTopic::new(
                &s.name,
                s.partitions,
                TopicReplication::Fixed(s.replication),
            );
            for (k, v) in &s.config {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(new.iter(), &opts).await? {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(%topic, ?code, "Topic creation failed.");
                });
            }
        }
    }
    Ok(())
}

pub mod embedded;
pub mod scan;

/// Number of partitions of an existing topic.
pub fn partition_count(
    settings: &KafkaSettings,
    topic: &str,
    timeout: Duration,
) -> Result<usize, KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = settings.client_config().create()?;
    // Right after creating a topic, brokers may not know it yet: retry
    // transient answers until `timeout`.
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let attempt = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .and_then(|md| {
                let t = md.topics().iter().find(|t| t.name() == topic).ok_or(
                    KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition),
                )?;
                match t.error() {
                    Some(err) => Err(KafkaError::MetadataFetch(err.into())),
                    None if t.partitions().is_empty() => Err(KafkaError::MetadataFetch(
                        RDKafkaErrorCode::UnknownTopicOrPartition,
                    )),
                    None => Ok(t.partitions().len()),
                }
            });
        match attempt {
            Err(e) if is_transient(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// True for errors a freshly created topic or a leader election causes for
/// a moment (no leader yet, metadata not yet propagated).
pub fn is_transient(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::NotCoordinator
        )
    )
}

/// Drops from `remaining` (partition -> end offset) every partition the
/// consumer's position has reached. A read-committed consumer is never handed
/// the commit and abort markers of transactions, nor aborted records, but its
/// position moves past them: a partition ending with a marker is read to its
/// end once the position says so, not when a record at `end - 1` arrives.
pub fn drop_reached<C: rdkafka::consumer::Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    topic: &str,
    remaining: &mut BTreeMap<i32, i64>,
) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    for e in positions.elements_for_topic(topic) {
        if let rdkafka::Offset::Offset(pos) = e.offset()
            && remaining.get(&e.partition()).is_some_and(|end| pos >= *end)
        {
            remaining.remove(&e.partition());
        }
    }
}

/// `fetch_watermarks`, retried on transient errors until `timeout`.
pub fn watermarks<C: rdkafka::consumer::Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64), KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // No attempt outlasts `timeout`.
        match consumer.fetch_watermarks(topic, partition, timeout.min(Duration::from_secs(5))) {
            Ok(w) => return Ok(w),
            Err(e) if is_transient(&e) && std::time::Instant::now() < deadline => {
                tracing::debug!(topic, partition, error = %e, "Watermarks not available yet; retrying.");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The partition an order's events go to. Chosen by orderlog rather than by
/// the client's partitioner, so writer routing and Kafka placement always
/// agree: the last 8 bytes of the id (UUIDv7's random part) modulo the count.
pub fn partition_of(order_id: &uuid::Uuid, partitions: usize) -> usize {
    let b = order_id.as_bytes();
    let tail = u64::from_be_bytes(b[8..16].try_into().expect("8 bytes"));
    (tail % partitions as u64) as usize
}
