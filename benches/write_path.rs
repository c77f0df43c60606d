//! Write-path throughput against a real Kafka broker, three ways in one run:
//!
//! 1. raw librdkafka: idempotent producer, acks=all, records of the same size
//!    as an encoded `OrderPlaced`, the same number in flight (the baseline);
//! 2. the library API: `Service::execute(PlaceOrder)` from C concurrent tasks;
//! 3. HTTP: `POST /v1/orders` from C concurrent clients over loopback.
//!
//! Run: `cargo bench --profile dev --bench write_path` (uses
//! ORDERLOG_TEST_BROKERS or starts the test broker). Under `cargo test` it runs
//! a few orders only, as a smoke test.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use orderlog::app::App;
use orderlog::crypto::{Kek, OrderKey};
use orderlog::domain::{Command, State, decide, fixtures};
use orderlog::events::{self, EventMeta};
use rdkafka::producer::{FutureProducer, FutureRecord};
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
        .map(|b| format!("  ({:.2}x raw produce)", rate / b))
        .unwrap_or_default();
    println!(
        "{name:<44} {n:>7} in {:>7.2} s = {rate:>9.0} /s{vs}",
        elapsed.as_secs_f64()
    );
    rate
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n: usize = if bench { 20_000 } else { 200 };
    let concurrency: usize = std::env::var("ORDERLOG_BENCH_CONCURRENCY")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
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
    let record_len = events::encode(&events::seal_event(&event, meta, Some(&key)).unwrap()).len();

    println!(
        "# write path: {n} orders per mode, {concurrency} concurrent, topic with {partitions} partitions, one local Kafka broker at {brokers}"
    );
    println!(
        "# record size {record_len} bytes (encoded, sealed OrderPlaced); idempotent producer, acks=all; profile {}",
        if cfg!(debug_assertions) {
            "dev (deps -O3, orderlog -O1)"
        } else {
            "release"
        }
    );

    // 1. Raw librdkafka produce, same size, same concurrency.
    let topic = common::unique("bench.raw");
    let settings = orderlog::kafka::KafkaSettings::new(&brokers);
    orderlog::kafka::ensure_topics(
        &settings,
        &[orderlog::kafka::TopicSpec::events(&topic, partitions, 1)],
    )
    .await
    .unwrap();
    // The same producer settings orderlog writes with.
    let producer: FutureProducer = settings
        .reliable_producer_config(Duration::from_secs(30))
        .create()
        .unwrap();
    let payload: Vec<u8> = (0..record_len).map(|i| (i * 7919 % 251) as u8).collect();
    let sem = Arc::new(Semaphore::new(concurrency));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (producer, topic, payload) = (producer.clone(), topic.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let key = Uuid::now_v7();
            let r = producer
                .send(
                    FutureRecord::to(&topic)
                        .key(key.as_bytes().as_slice())
                        .payload(&payload)
                        .partition((i % 6) as i32),
                    Duration::from_secs(30),
                )
                .await;
            drop(permit);
            r.map_err(|(e, _)| e).unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let raw = report(
        "raw librdkafka produce (baseline)",
        n,
        start.elapsed(),
        None,
    );

    // 2 and 3: orderlog.
    let data = tempfile::tempdir().unwrap();
    let kek = Kek::generate();
    let config = common::app::config(
        &common::unique("bench.orders"),
        data.path(),
        &kek,
        partitions,
    );
    let app = App::start(&config).await.unwrap();
    let service = app.service.clone();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let order = fixtures::new_order(i as u32, true);
            let r = service
                .execute(Uuid::now_v7(), Command::PlaceOrder(order), None, None)
                .await;
            drop(permit);
            r.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    report(
        "orderlog library API: place order",
        n,
        start.elapsed(),
        Some(raw),
    );

    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/orders", app.addr);
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| serde_json::to_vec(&order_json(1_000_000 + i as u32)).unwrap())
        .collect();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for body in bodies {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (client, url) = (client.clone(), url.clone());
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
    report(
        &format!("orderlog HTTP: POST /v1/orders, {concurrency} clients"),
        n,
        start.elapsed(),
        Some(raw),
    );
    app.stop().await;
}
