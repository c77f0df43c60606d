//! orderlog on a broker that authenticates and authorizes (issue 16, item
//! 4): SASL_SSL with SCRAM-SHA-512 and ACLs, started by
//! `ops/kafka/start.sh --secure` with a CA made here by rcgen (the same code
//! as `orderlog tls-certs`). The node runs as principal `orderlog` and
//! works end to end; an `outsider` with valid credentials but no ACL can
//! neither append events nor read keys; an `auditor` reads the events but
//! not `orders.keys`; a client without TLS and credentials gets nothing.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

/// The secure broker of this test: a fresh directory every run.
struct SecureBroker {
    dir: std::path::PathBuf,
    bootstrap: String,
    passwords: BTreeMap<String, String>,
}

impl SecureBroker {
    fn start() -> Self {
        let dir = common::kafka_dir("secure");
        let stop = common::repo().join("ops/kafka/stop.sh");
        let _ = std::process::Command::new(&stop)
            .args(["--purge", "--dir"])
            .arg(&dir)
            .output();
        let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
        orderlog::api::tls::write_test_ca(&dir.join("tls"), &hosts).unwrap();
        let port = std::env::var("ORDERLOG_TEST_SECURE_PORT").unwrap_or_else(|_| "27092".into());
        let bootstrap = common::start_broker(&dir, &["--secure", "--port", &port]);
        let passwords = std::fs::read_to_string(dir.join("secure.env"))
            .unwrap()
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                let user = k.strip_prefix("KAFKA_")?.strip_suffix("_PASSWORD")?;
                Some((user.to_ascii_lowercase(), v.to_owned()))
            })
            .collect();
        Self {
            dir,
            bootstrap,
            passwords,
        }
    }

    /// librdkafka settings of `user`.
    fn settings(&self, user: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("security.protocol".into(), "SASL_SSL".into()),
            ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
            ("sasl.username".into(), user.into()),
            ("sasl.password".into(), self.passwords[user].clone()),
            (
                "ssl.ca.location".into(),
                self.dir.join("tls/ca.pem").display().to_string(),
            ),
        ])
    }

    fn client(&self, user: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in self.settings(user) {
            c.set(k, v);
        }
        c
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        let _ = std::process::Command::new(common::repo().join("ops/kafka/stop.sh"))
            .args(["--purge", "--dir"])
            .arg(&self.dir)
            .output();
    }
}

/// The error the broker answers `config`'s principal about `topic`, in
/// its metadata (where Kafka says whether the principal may describe it).
fn topic_error(config: &ClientConfig, topic: &str) -> Option<RDKafkaErrorCode> {
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", common::unique("secure-reader"))
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata answered");
    md.topics()[0].error().map(RDKafkaErrorCode::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderlog_runs_on_sasl_ssl_with_acls_and_nobody_else_touches_its_keys() {
    let broker = SecureBroker::start();

    // A node as principal `orderlog`, on the default topic names the ACLs
    // are written for; it creates them itself.
    let data = tempfile::tempdir().unwrap();
    let kek = orderlog::crypto::Kek::generate();
    let mut config = common::app::config("orders.events", data.path(), &kek, 2);
    config.brokers = Some(broker.bootstrap.clone());
    for (k, v) in broker.settings("orderlog") {
        config.kafka.0.insert(k, v);
    }
    let app = orderlog::app::App::start(&config).await.unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://{}", app.addr);
    let placed = client
        .post(format!("{base}/v1/orders"))
        .bearer_auth(common::app::CHECKOUT)
        .json(&json!({
            "order_number": "ON-SECURE-1",
            "merchant_id": "m-1", "currency": "CNY", "amount": 17600,
            "items": [{"sku": "TEA", "name": "Tea", "quantity": 2, "unit_price": 8800}],
            "consignee": {"name": "诸葛亮", "mobile": "13800138001",
                "address": {"province": "四川省", "city": "成都市", "district": "武侯区",
                            "street": "武侯祠大街231号", "postal_code": "610041"}},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 201, "{}", placed.text().await.unwrap());
    let id = placed.json::<Value>().await.unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let order: Value = client
        .get(format!("{base}/v1/orders/{id}"))
        .bearer_auth(common::app::CHECKOUT)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(order["personal"]["consignee"]["name"], "诸葛亮", "{order}");

    // The outsider: valid credentials, no ACL.
    let outsider = broker.client("outsider");
    let producer: FutureProducer = outsider
        .clone()
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    let appended = producer
        .send(
            FutureRecord::to("orders.events")
                .key(&[0u8; 16][..])
                .payload(&b"forged"[..]),
            Duration::from_secs(10),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e);
    assert!(
        matches!(
            appended
                .as_ref()
                .err()
                .and_then(KafkaError::rdkafka_error_code),
            Some(RDKafkaErrorCode::TopicAuthorizationFailed)
        ),
        "an outsider appended to orders.events: {appended:?}"
    );
    let refused = Some(RDKafkaErrorCode::TopicAuthorizationFailed);
    for topic in ["orders.keys", "orders.events"] {
        let e = tokio::task::block_in_place(|| topic_error(&outsider, topic));
        assert_eq!(e, refused, "an outsider may describe {topic}");
    }

    // The auditor reads the events, not the keys.
    let auditor = broker.client("auditor");
    let events = tokio::task::block_in_place(|| {
        let partition = orderlog::kafka::partition_of(&uuid::Uuid::parse_str(&id).unwrap(), 2);
        let consumer: BaseConsumer = auditor
            .clone()
            .set("group.id", common::unique("secure-auditor"))
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(
            "orders.events",
            partition as i32,
            rdkafka::Offset::Beginning,
        )
        .unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match consumer.poll(Duration::from_millis(200)) {
                Some(r) => break r.map(|_| ()),
                None if std::time::Instant::now() > deadline => panic!("no event read"),
                None => {}
            }
        }
    });
    assert!(
        events.is_ok(),
        "the auditor reads orders.events: {events:?}"
    );
    let keys = tokio::task::block_in_place(|| topic_error(&auditor, "orders.keys"));
    assert_eq!(keys, refused, "the auditor may describe orders.keys");

    // Without TLS and credentials: not even metadata.
    let plain: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", common::unique("plain"))
        .create()
        .unwrap();
    let md = tokio::task::block_in_place(|| {
        plain.fetch_metadata(Some("orders.events"), Duration::from_secs(5))
    });
    assert!(md.is_err(), "a plaintext client read metadata");

    app.stop().await;
}
