//! Operations: readiness turns true only once the projector has caught up,
//! health answers, and the Prometheus metrics count what a scenario did (on
//! a node in a process of its own, so the counts are its own).

use crate::common;
use common::metric_sample as sample;

use std::time::{Duration, Instant};

use common::app::{CHECKOUT, PRIVACY};
use common::orders::{Area, Line, OrderBody};
use orderlog::app::App;
use orderlog::crypto::Kek;
use orderlog::kafka::{KafkaSettings, TopicSpec, ensure_topics};
use serde_json::{Value, json};

/// An order whose number starts with `prefix` (and is unique), as JSON.
fn order_json(prefix: &str) -> Value {
    OrderBody::new(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()))
        .lines(&[Line::new("TEA", "Tea", 1, 8800)])
        .consignee("黄月英", "13700137000")
        .address(
            Area {
                province: "湖北省",
                city: "襄阳市",
                district: "襄城区",
                postal_code: "441000",
            },
            "隆中路 1 号",
        )
        .json()
}

#[tokio::test]
async fn readiness_turns_true_only_once_the_projector_has_caught_up() {
    // A log with a backlog the projector needs a moment for.
    let brokers = common::brokers();
    let topic = common::unique("orders.events");
    let settings = KafkaSettings::new(&brokers);
    ensure_topics(&settings, &[TopicSpec::events(&topic, 3, 1)])
        .await
        .unwrap();
    let kek = Kek::generate();
    let total = common::prefill(&brokers, &topic, 3, 60_000, &kek).await;

    let data = tempfile::tempdir().unwrap();
    let mut config = common::app::config(&topic, data.path(), &kek, 3);
    config.topic = topic.clone();
    let app = App::start(&config).await.unwrap();
    let client = reqwest::Client::new();
    let health = client
        .get(format!("http://{}/healthz", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let status = app.projector.as_ref().unwrap().status.clone();
    let mut saw_not_ready = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = client
            .get(format!("http://{}/readyz", app.addr))
            .send()
            .await
            .unwrap();
        let code = r.status();
        let body: Value = r.json().await.unwrap();
        if code == 200 {
            let projected: i64 = status
                .positions
                .lock()
                .values()
                .map(|(next, _)| *next)
                .sum();
            // Everything up to the end of the log: the prefilled records,
            // and the barrier (and its transaction's commit marker) each
            // partition got when the node took it over.
            let ends: i64 = orderlog::service::log_reader::log_ends(
                &settings,
                &topic,
                3,
                Duration::from_secs(10),
            )
            .unwrap()
            .iter()
            .sum();
            assert!(projected as usize > total, "{body}");
            assert_eq!(
                projected, ends,
                "ready only with every record projected: {body}"
            );
            assert!(
                body["lag"].as_object().unwrap().values().all(|l| l == 0),
                "{body}"
            );
            break;
        }
        assert_eq!(code, 503);
        assert_eq!(body["status"], "not_ready");
        saw_not_ready = true;
        assert!(Instant::now() < deadline, "never became ready: {body}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        saw_not_ready,
        "readiness was true before the projector had caught up"
    );
    app.stop().await;
}

/// `orderlog serve` as its own process against the test broker, so its
/// metrics are its own (a test process shares one recorder among every app
/// it starts). Killed on drop.
struct Served {
    child: std::process::Child,
    base: String,
    client: reqwest::Client,
    _data: tempfile::TempDir,
}

impl Served {
    fn start() -> Self {
        use std::io::{BufRead, BufReader};
        let data = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_orderlog"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("ORDERLOG_BROKERS", common::brokers())
            .env("ORDERLOG_TOPIC", common::unique("orders.events"))
            .env("ORDERLOG_PARTITIONS", "3")
            .env("ORDERLOG_REPLICATION", "1")
            .env("ORDERLOG_DATA_DIR", data.path())
            .env("ORDERLOG_KEK", &*Kek::generate().to_text())
            .env(
                "ORDERLOG_TOKENS",
                format!("{CHECKOUT}=checkout,{PRIVACY}=privacy"),
            )
            .env("ORDERLOG_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut base = None;
        for line in stdout.lines() {
            if let Some(addr) = line.unwrap().strip_prefix("orderlog listening on ") {
                base = Some(addr.trim().to_owned());
                break;
            }
        }
        Self {
            child,
            base: base.expect("serve prints its address"),
            client: reqwest::Client::new(),
            _data: data,
        }
    }

    fn post(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
    }

    async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn metrics_count_what_a_scenario_did() {
    let app = Served::start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(Instant::now() < deadline, "the node never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = app.metrics().await;
    let order = |n: u32| order_json(&format!("ON-M-{n}"));
    let mut ids = Vec::new();
    for n in 0..3 {
        let r: Value = app
            .post("/v1/orders", CHECKOUT)
            .json(&order(n))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(r["order_id"].as_str().unwrap().to_owned());
    }
    app.post(&format!("/v1/orders/{}/cancel", ids[0]), CHECKOUT)
        .json(&json!({"reason": "other"}))
        .send()
        .await
        .unwrap();
    let again = app
        .post(&format!("/v1/orders/{}/cancel", ids[0]), CHECKOUT)
        .json(&json!({"reason": "other"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    let erased = app
        .post(&format!("/v1/orders/{}/erase", ids[1]), PRIVACY)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 200);
    let bad = app
        .post("/v1/orders", CHECKOUT)
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let after = app.metrics().await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };

    use orderlog::telemetry as t;
    assert_eq!(
        delta(t::COMMANDS, &[("command", "place"), ("outcome", "ok")]),
        3.0
    );
    assert_eq!(
        delta(t::COMMANDS, &[("command", "cancel"), ("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        delta(
            t::COMMANDS,
            &[("command", "cancel"), ("outcome", "refused")]
        ),
        1.0
    );
    assert_eq!(delta(t::ERASURES, &[("scope", "order")]), 1.0);
    assert_eq!(delta(&format!("{}_count", t::ERASE_LATENCY), &[]), 1.0);
    assert_eq!(
        delta(
            t::HTTP_REQUESTS,
            &[("route", "/v1/orders"), ("status", "400")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            t::HTTP_REQUESTS,
            &[("route", "/v1/orders/{id}/cancel"), ("status", "409")]
        ),
        1.0
    );
    assert!(delta(&format!("{}_count", t::PRODUCE_LATENCY), &[]) >= 1.0);
    assert!(
        delta(&format!("{}_sum", t::BATCH_SIZE), &[]) >= 5.0,
        "five commands went through group commit"
    );
    // The projector saw the 5 events (3 placed, 1 cancel, 1 erase).
    let deadline = Instant::now() + Duration::from_secs(10);
    let latest = loop {
        let now = app.metrics().await;
        // The lag watcher publishes a few times a second, once the
        // projector has flushed its first batch.
        if sample(&now, t::EVENTS_PROJECTED, &[]) - sample(&before, t::EVENTS_PROJECTED, &[]) >= 5.0
            && now.contains(t::PROJECTOR_LAG)
        {
            assert!(sample(&now, t::LIVE_KEYS, &[]) >= 2.0);
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "events_projected did not move, or lag per partition is not exported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // RocksDB's memory, read at the scrape, by kind: each listed, and each
    // within what the node is configured for (a 128 MiB block cache; 64 MiB
    // of memtables, which a flush under way can pass for a moment).
    for (kind, most) in [
        ("block_cache", 160u64 << 20),
        ("memtables", 256 << 20),
        ("table_readers", 64 << 20),
    ] {
        assert!(
            latest
                .lines()
                .any(|l| l.starts_with(t::STORE_MEMORY) && l.contains(&format!("kind=\"{kind}\""))),
            "store memory {kind} is not listed"
        );
        let bytes = sample(&latest, t::STORE_MEMORY, &[("kind", kind)]);
        assert!(bytes <= most as f64, "store memory {kind}: {bytes} bytes");
    }
    // An active memtable always holds its first arena block: a gauge that
    // was never set would read 0.
    assert!(sample(&latest, t::STORE_MEMORY, &[("kind", "memtables")]) > 0.0);
    for name in t::ALL {
        assert!(
            // Nothing is dead-lettered or forwarded on one healthy node.
            latest.contains(name) || *name == t::DEAD_LETTERED || *name == t::FORWARDED,
            "{name} is exported"
        );
    }
    for secret in ["黄月英", "13700137000", CHECKOUT] {
        assert!(!after.contains(secret));
    }
}

/// A node with nothing to do stops writing to its store. The purger flushes
/// the memtables of a store that has gone quiet (`erasure::purge`), so that
/// an erasure on a quiet node does not pay for a backlog; a reader writing
/// on a timer (the key follower once stored a time at every empty poll, ten
/// times a second) keeps that from ever happening.
#[tokio::test]
async fn an_idle_node_stops_writing_to_its_store() {
    let t = common::app::TestApp::spawn().await;
    let placed = t
        .client
        .post(format!("{}/v1/orders", t.base))
        .bearer_auth(CHECKOUT)
        .json(&order_json("ON-Q"))
        .send()
        .await
        .unwrap();
    assert!(placed.status().is_success(), "{}", placed.status());
    let store = t.app.service.store().clone();
    let quiet_for = Duration::from_secs(3);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seq = store.db().latest_sequence_number();
    let mut since = Instant::now();
    while since.elapsed() < quiet_for {
        assert!(
            Instant::now() < deadline,
            "the idle node kept writing to its store (sequence number {seq})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = store.db().latest_sequence_number();
        if now != seq {
            seq = now;
            since = Instant::now();
        }
    }
    t.app.stop().await;
}

#[tokio::test]
async fn a_fresh_node_lists_its_metrics_before_the_first_command() {
    use orderlog::telemetry as t;
    // Its own process: nothing else has moved its metrics.
    let app = Served::start();
    let text = app.metrics().await;
    for name in t::ALL {
        // These two take their labels from their first measurement.
        if *name == t::HTTP_REQUESTS || *name == t::PROJECTOR_LAG {
            continue;
        }
        assert!(text.contains(name), "{name} is not listed:\n{text}");
    }
    // Series no command has raised yet: registered at zero.
    for (command, outcome) in [("share", "moving"), ("erase", "unknown"), ("place", "ok")] {
        assert!(
            text.lines().any(|l| l.starts_with(t::COMMANDS)
                && l.contains(&format!("command=\"{command}\""))
                && l.contains(&format!("outcome=\"{outcome}\""))
                && l.ends_with(" 0")),
            "{} {command}/{outcome} is not listed at 0",
            t::COMMANDS
        );
    }
}
