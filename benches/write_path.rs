//! Write-path throughput against a real Kafka broker, in one run:
//!
//! 1. the baseline: Kafka's own `ProducerPerformance` (from the `kafka-tools`
//!    jar `ops/kafka` resolves) with records of the size of an encoded
//!    `OrderPlaced`, acks=all and idempotence, on a topic with the same
//!    partitions on the same broker: what the broker takes from a producer
//!    at full throughput;
//! 2. the library API: `Service::execute(PlaceOrder)` from C concurrent tasks;
//! 3. HTTP: `POST /v1/orders` from C concurrent clients over loopback;
//!
//! each at 64 and 512 concurrent clients, for one node and for three nodes
//! (three `App`s in this process on one topic, each writing the partitions
//! the writers' group gave it; clients spread round-robin over them).
//!
//! Run: `cargo bench --profile dev --bench write_path` (uses
//! ORDERLOG_TEST_BROKERS or starts the test broker; the Kafka classpath is
//! found next to that broker, or given as ORDERLOG_KAFKA_CLASSPATH, a file).
//! `ORDERLOG_BENCH_ORDERS` sets the orders per measurement (default 20000).
//! Under `cargo test` it runs a few orders only, as a smoke test.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use orderlog::app::App;
use orderlog::crypto::{Kek, OrderKey};
use orderlog::domain::{Command, State, decide, fixtures};
use orderlog::events::{self, EventMeta};
use serde_json::json;
use tokio::sync::Semaphore;
use uuid::Uuid;

fn order_json(n: u32) -> serde_json::Value {
    json!({
        "order_number": format!("ON-BENCH-{n:09}"),
        "merchant_id": "m-1",
        "items": [{"sku": "SKU-TEA-250", "name": "Longjing tea 250 g", "quantity": 2, "unit_price": 8800},
                  {"sku": "SKU-DRILL-18V", "name": "Cordless drill 18 V", "quantity": 1, "unit_price": 39900, "real_name": true}],
        "currency": "CNY",
        "amount": 57500,
        "consignee": {
            "name": format!("张三丰{n}"),
            "address": {"province": "广东省", "city": "深圳市", "district": "南山区",
                        "street": format!("科技园南区高新南七道{n}号 深圳湾科技生态园10栋B座{}室", 1000 + n % 9000), "postal_code": "518057"},
            "mobile": format!("138{:08}", n),
        },
        "contact": {"landline": format!("0755-{:08}", 26_000_000 + n % 1_000_000), "email": format!("zhang.sanfeng{n}@example.com")},
        "id_number": fixtures::id_number(n),
    })
}

fn report(name: &str, n: usize, elapsed: Duration, baseline: Option<f64>) -> f64 {
    let rate = n as f64 / elapsed.as_secs_f64();
    let vs = baseline
        .map(|b| format!("  ({:.2}x ProducerPerformance)", rate / b))
        .unwrap_or_default();
    println!(
        "{name:<52} {n:>7} in {:>7.2} s = {rate:>9.0} /s{vs}",
        elapsed.as_secs_f64()
    );
    rate
}

/// The Kafka classpath `ops/kafka/start.sh` resolved, if it can be found.
fn kafka_classpath() -> Option<String> {
    let mut candidates: Vec<std::path::PathBuf> = Vec::new();
    if let Ok(f) = std::env::var("ORDERLOG_KAFKA_CLASSPATH") {
        candidates.push(f.into());
    }
    for var in [
        "ORDERLOG_TEST_KAFKA_DIR",
        "ORDERLOG_TEST_CLUSTER3_DIR",
        "ORDERLOG_KAFKA_DIR",
    ] {
        if let Ok(d) = std::env::var(var) {
            candidates.push(std::path::Path::new(&d).join("classpath"));
        }
    }
    candidates.push(common::kafka_dir("kafka").join("classpath"));
    candidates.push("/tmp/orderlog-kafka/classpath".into());
    candidates
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Runs Kafka's ProducerPerformance; returns records/s and its summary line.
fn producer_performance(
    classpath: &str,
    brokers: &str,
    topic: &str,
    records: usize,
    record_size: usize,
) -> Option<(f64, String)> {
    let out = std::process::Command::new("java")
        .args(["-Xmx512m", "-cp", classpath])
        .arg("org.apache.kafka.tools.ProducerPerformance")
        .args(["--topic", topic])
        .args(["--num-records", &records.to_string()])
        .args(["--record-size", &record_size.to_string()])
        .args(["--throughput", "-1"])
        .arg("--producer-props")
        .arg(format!("bootstrap.servers={brokers}"))
        .args([
            "acks=all",
            "enable.idempotence=true",
            "compression.type=lz4",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "N records sent, X records/sec (Y MB/sec), ..." is the last line.
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("records sent"))?
        .to_owned();
    let rate: f64 = line
        .split(", ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((rate, line))
}

/// Places `n` orders through the library API of `services` (round-robin),
/// `concurrency` at a time; each order goes to a partition its service writes.
async fn library(
    services: &[orderlog::service::Service],
    n: usize,
    concurrency: usize,
) -> Duration {
    let sem = Arc::new(Semaphore::new(concurrency));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let service = services[i % services.len()].clone();
        tasks.push(tokio::spawn(async move {
            // A partition this node writes; if it moved meanwhile, another.
            let r = loop {
                let order = fixtures::new_order(i as u32, true);
                let p = service.partition_for_new_order(None);
                let id = orderlog::service::order_id_in(p, service.partitions());
                match service
                    .execute(id, Command::PlaceOrder(order), None, None)
                    .await
                {
                    Err(orderlog::service::ServiceError::NotOwner { .. }) => continue,
                    r => break r,
                }
            };
            drop(permit);
            r.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// Posts `n` orders over HTTP to `urls` (round-robin), `concurrency` at a time.
async fn http(urls: &[String], n: usize, concurrency: usize, first: u32) -> Duration {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| serde_json::to_vec(&order_json(first + i as u32)).unwrap())
        .collect();
    let sem = Arc::new(Semaphore::new(concurrency));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (i, body) in bodies.into_iter().enumerate() {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (client, url) = (client.clone(), urls[i % urls.len()].clone());
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(&url)
                .bearer_auth(common::app::CHECKOUT)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            drop(permit);
            assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n: usize = if bench {
        std::env::var("ORDERLOG_BENCH_ORDERS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(20_000)
    } else {
        200
    };
    let concurrencies: &[usize] = if bench { &[64, 512] } else { &[16] };
    let partitions = 6;
    let brokers = common::brokers();

    // Size of a real encoded OrderPlaced.
    let key = OrderKey::generate();
    let event = decide(
        &State::default(),
        Command::PlaceOrder(fixtures::new_order(1, true)),
    )
    .unwrap()
    .remove(0);
    let meta = EventMeta {
        event_id: Uuid::now_v7(),
        order_id: Uuid::now_v7(),
        sequence: 1,
        occurred_at_ms: 0,
        key_id: key.id(),
        prev_hash: [0; 32],
    };
    let log_keys =
        orderlog::crypto::LogKeys::from_ring(&orderlog::crypto::KekRing::new(Kek::generate()));
    let record_len = events::encode(
        &events::seal_event(&event, meta, Some(&key)).unwrap(),
        &log_keys,
    )
    .len();

    println!(
        "# write path: {n} orders per line, topic with {partitions} partitions, one local Kafka broker at {brokers}, on {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "# record size {record_len} bytes (encoded, sealed OrderPlaced); orderlog: one transaction per batch per partition, acks=all; profile {}",
        if cfg!(debug_assertions) {
            "dev (deps -O3, orderlog -O2)"
        } else {
            "release"
        }
    );

    // 1. Kafka's ProducerPerformance, same size, same partitions.
    let topic = common::unique("bench.raw");
    let settings = orderlog::kafka::KafkaSettings::new(&brokers);
    orderlog::kafka::ensure_topics(
        &settings,
        &[orderlog::kafka::TopicSpec::events(&topic, partitions, 1)],
    )
    .await
    .unwrap();
    let baseline = match kafka_classpath() {
        Some(cp) => {
            let records = (n * 5).max(1000);
            match producer_performance(&cp, &brokers, &topic, records, record_len) {
                Some((rate, line)) => {
                    println!("{:<52} {line}", "ProducerPerformance (baseline):");
                    Some(rate)
                }
                None => {
                    println!("# ProducerPerformance did not run; no baseline");
                    None
                }
            }
        }
        None => {
            println!("# the Kafka classpath was not found (ORDERLOG_KAFKA_CLASSPATH); no baseline");
            None
        }
    };

    // 2 and 3: orderlog, one node then three.
    let topic_one = common::unique("bench.orders");
    let topic_three = common::unique("bench.orders3");
    let mut next_body = 1_000_000u32;
    for (nodes, topic) in [(1usize, &topic_one), (3, &topic_three)] {
        let kek = Kek::generate();
        let mut dirs = Vec::new();
        let mut apps = Vec::new();
        for _ in 0..nodes {
            let data = tempfile::tempdir().unwrap();
            let config = common::app::config(topic, data.path(), &kek, partitions);
            apps.push(App::start(&config).await.unwrap());
            dirs.push(data);
        }
        // Before the clock starts: every node writes some partitions, and
        // every partition has exactly one writer (the group has settled).
        let ready = Instant::now() + Duration::from_secs(60);
        loop {
            let owned: Vec<usize> = apps
                .iter()
                .map(|a| {
                    a.service
                        .cluster_status()
                        .partitions
                        .values()
                        .filter(|p| **p == "owned")
                        .count()
                })
                .collect();
            if apps.iter().all(|a| a.service.ready())
                && owned.iter().all(|n| *n > 0)
                && owned.iter().sum::<usize>() == partitions as usize
            {
                break;
            }
            assert!(
                Instant::now() < ready,
                "the nodes did not settle: {owned:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let services: Vec<_> = apps.iter().map(|a| a.service.clone()).collect();
        let urls: Vec<String> = apps
            .iter()
            .map(|a| format!("http://{}/v1/orders", a.addr))
            .collect();
        let label = if nodes == 1 { "1 node" } else { "3 nodes" };
        for &c in concurrencies {
            let took = library(&services, n, c).await;
            report(
                &format!("orderlog library API, {label}, {c} clients"),
                n,
                took,
                baseline,
            );
            let took = http(&urls, n, c, next_body).await;
            next_body += n as u32;
            report(
                &format!("orderlog HTTP POST /v1/orders, {label}, {c} clients"),
                n,
                took,
                baseline,
            );
        }
        for app in apps {
            app.stop().await;
        }
        drop(dirs);
    }
}
