//! Test harness shared by the black-box tests: a real Kafka broker, started
//! once per test run and reused by every test binary, and unique names so
//! tests never see each other's data.
//!
//! `ORDERLOG_TEST_BROKERS=host:port` points the tests at an existing cluster.
//! Otherwise the first test that needs Kafka starts one with
//! `ops/kafka/start.sh` (under a file lock, so parallel test binaries share
//! it) and leaves it running for the next run. A test that needs Kafka never
//! skips: without a broker it fails and says how to get one.

#![allow(dead_code)]

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

pub mod cases;
pub mod load;
pub mod orders;

pub const DEFAULT_TEST_PORT: u16 = 19092;

/// Every log line a test binary writes, kept in memory, so a test can check
/// what the logs say (and that they hold no personal data).
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Installs a subscriber writing into a new capture at `level` (the
    /// binary's first one wins; later calls capture nothing).
    pub fn install(level: tracing::Level) -> Self {
        let logs = Self::default();
        let writer = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(move || writer.clone())
            .try_init();
        logs
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Directory of the broker the harness starts.
pub fn kafka_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("orderlog-test-{name}"))
}

/// Runs `ops/kafka/start.sh` with `args` under a lock; returns the bootstrap servers.
pub fn start_broker(dir: &std::path::Path, args: &[&str]) -> String {
    std::fs::create_dir_all(dir).expect("create kafka test dir");
    let lock = File::create(dir.with_extension("lock")).expect("create lock file");
    lock.lock().expect("lock kafka test dir");
    let out = Command::new(repo().join("ops/kafka/start.sh"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ops/kafka/start.sh: {e}"));
    if !out.status.success() {
        panic!(
            "These tests need a real Kafka broker and none could be started.\n\
             ops/kafka/start.sh said:\n{}\n\
             Fix that (it needs Java 17 and Maven: run ops/bootstrap.sh), or point the tests at a \
             running cluster with ORDERLOG_TEST_BROKERS=host:port.",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .last()
        .expect("start.sh prints the bootstrap servers")
        .trim()
        .to_owned()
}

/// The bootstrap servers of the test cluster, starting a broker if needed.
pub fn brokers() -> String {
    static BROKERS: OnceLock<String> = OnceLock::new();
    BROKERS
        .get_or_init(|| {
            if let Ok(b) = std::env::var("ORDERLOG_TEST_BROKERS")
                && !b.trim().is_empty()
            {
                return b;
            }
            let port = std::env::var("ORDERLOG_TEST_KAFKA_PORT")
                .unwrap_or_else(|_| DEFAULT_TEST_PORT.to_string());
            start_broker(&kafka_dir("kafka"), &["--port", &port])
        })
        .clone()
}

pub const DEFAULT_CLUSTER3_PORT: u16 = 29092;

/// The three-broker cluster of the broker-fault tests (replication factor 3,
/// min.insync.replicas 2): its directory (where each node's pid is) and its
/// bootstrap servers. `ORDERLOG_TEST_CLUSTER3_DIR` names the directory of a
/// cluster started with `ops/kafka/start.sh --brokers 3` (ops/test.sh starts
/// one); otherwise one is started on `ORDERLOG_TEST_CLUSTER3_PORT` (default
/// 29092) and left running for the next run. Calling it again restarts any
/// node that is down.
pub fn cluster3() -> (PathBuf, String) {
    match std::env::var("ORDERLOG_TEST_CLUSTER3_DIR") {
        Ok(dir) if !dir.trim().is_empty() => {
            let dir = PathBuf::from(dir);
            let b = start_broker(&dir, &[]);
            (dir, b)
        }
        _ => {
            let dir = kafka_dir("kafka3");
            let port = std::env::var("ORDERLOG_TEST_CLUSTER3_PORT")
                .unwrap_or_else(|_| DEFAULT_CLUSTER3_PORT.to_string());
            let b = start_broker(&dir, &["--brokers", "3", "--port", &port]);
            (dir, b)
        }
    }
}

/// Sends `sig` (`KILL`, `STOP`, `CONT`, `TERM`) to process `pid`.
pub fn signal(pid: impl std::fmt::Display, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// A name no other test (in this run or an earlier one) uses.
/// In Prometheus text `text`: the sum of the samples of `name` whose labels
/// include all of `labels`.
pub fn metric_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        uuid::Uuid::new_v4().simple()
    )
}

pub mod app {
    //! Spawns orderlog in process on port 0 against the test broker.

    use std::collections::BTreeMap;

    use orderlog::app::App;
    use orderlog::config::{Config, Overrides};
    use orderlog::crypto::Kek;

    pub const CHECKOUT: &str = "test-token-checkout-0001";
    pub const LOGISTICS_SF: &str = "test-token-logistics-sf-express";
    pub const MERCHANT_M1: &str = "test-token-merchant-m-1";
    pub const PRIVACY: &str = "test-token-privacy-0001";
    pub const AUDITOR: &str = "test-token-auditor-0001";
    /// The name [`AUDITOR`] is configured with (`token=auditor@name`): what
    /// access logs show in its place.
    pub const AUDITOR_NAME: &str = "audit-desk";

    pub struct TestApp {
        pub app: App,
        pub base: String,
        pub client: reqwest::Client,
        pub data_dir: tempfile::TempDir,
        pub kek: Kek,
        pub config: Config,
    }

    pub fn config(topic: &str, data_dir: &std::path::Path, kek: &Kek, partitions: i32) -> Config {
        let env: BTreeMap<String, String> = [
            (
                "ORDERLOG_TOKENS".to_string(),
                format!(
                    "{CHECKOUT}=checkout,{LOGISTICS_SF}=logistics:sf-express,{MERCHANT_M1}=merchant:m-1,{PRIVACY}=privacy,{AUDITOR}=auditor@{AUDITOR_NAME}"
                ),
            ),
            ("ORDERLOG_KEK".to_string(), kek.to_text().to_string()),
        ]
        .into_iter()
        .collect();
        let o = Overrides {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            brokers: Some(super::brokers()),
            data_dir: Some(data_dir.to_owned()),
            topic: Some(topic.to_owned()),
            partitions: Some(partitions),
            replication: Some(1),
            ..Default::default()
        };
        Config::resolve(&o, &env).unwrap()
    }

    impl TestApp {
        pub async fn spawn() -> Self {
            Self::spawn_with_partitions(3).await
        }

        pub async fn spawn_with_partitions(partitions: i32) -> Self {
            Self::spawn_configured(partitions, |_| {}).await
        }

        /// [`TestApp::spawn_with_partitions`], with `adjust` applied to the
        /// configuration first.
        pub async fn spawn_configured(partitions: i32, adjust: impl FnOnce(&mut Config)) -> Self {
            let data_dir = tempfile::tempdir().unwrap();
            let kek = Kek::generate();
            let mut config = config(
                &super::unique("orders.events"),
                data_dir.path(),
                &kek,
                partitions,
            );
            adjust(&mut config);
            let app = App::start(&config)
                .await
                .expect("orderlog starts against the test broker");
            let base = format!("http://{}", app.addr);
            Self {
                app,
                base,
                client: reqwest::Client::new(),
                data_dir,
                kek,
                config,
            }
        }

        /// Stops this instance and starts a new one on the same topic and data dir.
        pub async fn restart(self) -> Self {
            self.restart_after(|_| {}).await
        }

        /// As [`TestApp::restart`], with `between` run on the data dir while
        /// no instance has it open.
        pub async fn restart_after(self, between: impl FnOnce(&std::path::Path)) -> Self {
            let TestApp {
                app,
                client,
                data_dir,
                kek,
                config,
                ..
            } = self;
            app.stop().await;
            between(&config.data_dir);
            let app = App::start(&config).await.expect("orderlog restarts");
            let base = format!("http://{}", app.addr);
            Self {
                app,
                base,
                client,
                data_dir,
                kek,
                config,
            }
        }

        pub fn post(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
            self.client
                .post(format!("{}{path}", self.base))
                .bearer_auth(token)
        }

        pub fn get(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
            self.client
                .get(format!("{}{path}", self.base))
                .bearer_auth(token)
        }

        /// Every record of the app's topic, raw.
        pub fn raw_records(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
            super::raw_records(&self.app.kafka.brokers, &self.app.topic)
        }
    }
}

/// Reads every record of `topic` from the start, raw (key, value), headers
/// appended to the value; writers' barrier records (empty) are left out.
/// Records of aborted transactions are read too: a scan for plaintext must
/// see everything the topic holds.
pub fn raw_records(brokers: &str, topic: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    read_records(brokers, topic, "read_uncommitted")
}

/// [`raw_records`] as orderlog's readers see the log: committed records only.
pub fn committed_records(brokers: &str, topic: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    read_records(brokers, topic, "read_committed")
}

fn read_records(brokers: &str, topic: &str, isolation: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use std::time::Duration;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("raw-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let parts = md.topics()[0].partitions().len() as i32;
    let mut tpl = rdkafka::TopicPartitionList::new();
    // Per partition, the end to read to. Transactions' markers take offsets
    // no record is delivered at: the consumer's position says when the end
    // is reached. (Read uncommitted: aborted records are scanned too.)
    let mut remaining = std::collections::BTreeMap::new();
    for p in 0..parts {
        let (lo, hi) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        if hi > lo {
            remaining.insert(p, hi);
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
                .unwrap();
        }
    }
    if remaining.is_empty() {
        return vec![];
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !remaining.is_empty() && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if orderlog::kafka::is_barrier(&m) {
                    // A writer's barrier: no key, no value, nothing of an order.
                    continue;
                }
                let mut value = m.payload().unwrap_or_default().to_vec();
                if let Some(h) = m.headers() {
                    for h in h.iter() {
                        value.extend_from_slice(h.key.as_bytes());
                        value.extend_from_slice(h.value.unwrap_or_default());
                    }
                }
                out.push((m.key().unwrap_or_default().to_vec(), value));
            }
            _ => orderlog::kafka::drop_reached(&consumer, topic, &mut remaining),
        }
    }
    assert!(
        remaining.is_empty(),
        "read every record of {topic}: {remaining:?} left"
    );
    out
}

/// Encoded events of one realistic order, as the service would write them:
/// placed, shared with a provider and with the merchant, and for some orders
/// cancelled (every 5th) and erased (every 10th).
pub fn order_events(n: u32, log_keys: &orderlog::crypto::LogKeys) -> Vec<(uuid::Uuid, Vec<u8>)> {
    use orderlog::crypto::OrderKey;
    use orderlog::domain::validation::{MerchantId, ProviderId};
    use orderlog::domain::{
        CancelReason, Command, ErasureScope, FieldClass, Party, State, apply, decide, fixtures,
    };
    use orderlog::events::{self, EventMeta};
    let key = OrderKey::generate();
    let order_id = uuid::Uuid::now_v7();
    let mut cmds = vec![
        Command::PlaceOrder(fixtures::new_order(n, n.is_multiple_of(4))),
        Command::ShareOrder {
            party: Party::Logistics(
                ProviderId::parse("p", ["sf-express", "yto", "zto"][n as usize % 3]).unwrap(),
            ),
            classes: [FieldClass::Shipping].into(),
        },
        Command::ShareOrder {
            party: Party::Merchant(MerchantId::parse("m", "m-1").unwrap()),
            classes: [FieldClass::Contact].into(),
        },
    ];
    if n.is_multiple_of(5) {
        cmds.push(Command::CancelOrder {
            reason: CancelReason::OutOfStock,
        });
    }
    if n.is_multiple_of(10) {
        cmds.push(Command::EraseOrder {
            scope: ErasureScope::Order,
            reason: orderlog::domain::ErasureReason::Request,
        });
    }
    let mut state = State::default();
    let mut prev = [0u8; 32];
    let mut out = Vec::new();
    for cmd in cmds {
        for e in decide(&state, cmd).unwrap() {
            let meta = EventMeta {
                event_id: uuid::Uuid::now_v7(),
                order_id,
                sequence: state.version + 1,
                occurred_at_ms: 1_733_000_000_000,
                key_id: key.id(),
                prev_hash: prev,
            };
            let bytes =
                events::encode(&events::seal_event(&e, meta, Some(&key)).unwrap(), log_keys);
            prev = events::record_hash(&bytes);
            state = apply(state, &e);
            out.push((order_id, bytes));
        }
    }
    out
}

/// Writes at least `events` events of `order_events` orders to `topic`
/// (which has `partitions` partitions), each to its order's partition,
/// authenticated under the log key of `kek` (the nodes' KEK).
pub async fn prefill(
    brokers: &str,
    topic: &str,
    partitions: usize,
    events: usize,
    kek: &orderlog::crypto::Kek,
) -> usize {
    let log_keys =
        orderlog::crypto::LogKeys::from_ring(&orderlog::crypto::KekRing::new(kek.clone()));
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let mut written = 0;
    let mut n = 0;
    while written < events {
        let mut batch = Vec::new();
        while batch.len() < 20_000 && written + batch.len() < events {
            batch.extend(order_events(n, &log_keys));
            n += 1;
        }
        let mut futs = Vec::new();
        for (id, bytes) in &batch {
            let p = orderlog::kafka::partition_of(id, partitions) as i32;
            futs.push(
                producer.send(
                    FutureRecord::to(topic)
                        .key(id.as_bytes().as_slice())
                        .payload(bytes)
                        .partition(p),
                    std::time::Duration::from_secs(60),
                ),
            );
        }
        for r in futures::future::join_all(futs).await {
            r.map_err(|(e, _)| e).unwrap();
        }
        written += batch.len();
    }
    written
}
