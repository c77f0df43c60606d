//! Projection throughput: a topic pre-filled with realistic order events
//! (placed, shared with a provider and the merchant, some cancelled, some
//! erased) is read twice in the same run:
//!
//! 1. raw librdkafka consumption of every record (the baseline);
//! 2. the projector folding every event into both views in RocksDB, with
//!    offsets in the same WriteBatch.
//!
//! Run: `cargo bench --profile dev --bench projection` (1M events; set
//! ORDERLOG_BENCH_EVENTS to change). Under `cargo test`: 2,000 events.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use orderlog::kafka::{KafkaSettings, TopicSpec, ensure_topics};
use orderlog::projections::{Assignment, Projector, ProjectorConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

const PARTITIONS: i32 = 6;

fn partition_of(id: &Uuid) -> i32 {
    orderlog::kafka::partition_of(id, PARTITIONS as usize) as i32
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let target: usize = std::env::var("ORDERLOG_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 1_000_000 } else { 2_000 });
    let brokers = common::brokers();
    let settings = KafkaSettings::new(&brokers);
    let topic = common::unique("bench.projection");
    ensure_topics(&settings, &[TopicSpec::events(&topic, PARTITIONS, 1)])
        .await
        .unwrap();

    // Pre-fill, authenticated under the log key of this run's KEK.
    let log_keys = std::sync::Arc::new(orderlog::crypto::LogKeys::from_ring(
        &orderlog::crypto::KekRing::new(orderlog::crypto::Kek::generate()),
    ));
    let t = Instant::now();
    let producer: FutureProducer = settings
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let mut n = 0u32;
    let mut written = 0usize;
    let mut bytes_total = 0usize;
    while written < target {
        let mut batch = Vec::new();
        while batch.len() < 20_000 && written + batch.len() < target {
            batch.extend(common::order_events(n, &log_keys));
            n += 1;
        }
        let mut futs = Vec::new();
        for (id, bytes) in &batch {
            bytes_total += bytes.len();
            futs.push(
                producer.send(
                    FutureRecord::to(&topic)
                        .key(id.as_bytes().as_slice())
                        .payload(bytes)
                        .partition(partition_of(id)),
                    Duration::from_secs(60),
                ),
            );
        }
        for r in futures::future::join_all(futs).await {
            r.map_err(|(e, _)| e).unwrap();
        }
        written += batch.len();
    }
    let fill = t.elapsed();
    println!(
        "# projection: {written} events of {n} orders ({:.0} bytes/event avg), {PARTITIONS} partitions, one local Kafka broker; profile {}",
        bytes_total as f64 / written as f64,
        if cfg!(debug_assertions) {
            "dev (deps -O3, orderlog -O2)"
        } else {
            "release"
        }
    );
    println!("# pre-fill took {:.1} s", fill.as_secs_f64());

    // 1. Raw consumption.
    let consumer: BaseConsumer = settings
        .client_config()
        .set("group.id", common::unique("bench-raw"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let t = Instant::now();
    let mut seen = 0usize;
    let mut sum = 0usize;
    while seen < written {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            use rdkafka::Message;
            sum += m.payload().map_or(0, <[u8]>::len);
            seen += 1;
        }
    }
    let raw = t.elapsed();
    std::hint::black_box(sum);
    let raw_rate = written as f64 / raw.as_secs_f64();
    println!(
        "{:<46} {:>9.0} events/s ({:.2} s)",
        "raw librdkafka consume (baseline)",
        raw_rate,
        raw.as_secs_f64()
    );
    drop(consumer);

    // 2. Projector into both views.
    let dir = tempfile::tempdir().unwrap();
    let store = orderlog::store::Store::open(dir.path()).unwrap();
    let t = Instant::now();
    let projector = Projector::start(
        store.clone(),
        ProjectorConfig {
            settings: settings.clone(),
            topic: topic.clone(),
            assignment: Assignment::All,
            batch_max: 4096,
            max_rate: 0,
            dead_letter: true,
            idempotency_ttl: orderlog::service::state::DEFAULT_IDEMPOTENCY_TTL,
            purge: None,
            log_keys: std::sync::Arc::new(orderlog::crypto::logkey::SharedLogKeys::new(
                (*log_keys).clone(),
            )),
        },
        orderlog::shutdown::CancellationToken::new(),
    )
    .unwrap();
    while projector
        .status
        .projected
        .load(std::sync::atomic::Ordering::Relaxed)
        + projector
            .status
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed)
        < written as u64
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Until the last batch is in RocksDB.
    assert!(projector.wait_caught_up(Duration::from_secs(60)));
    let proj = t.elapsed();
    let dead = projector
        .status
        .dead_lettered
        .load(std::sync::atomic::Ordering::Relaxed);
    projector.stop().unwrap();
    let rate = written as f64 / proj.as_secs_f64();
    println!(
        "{:<46} {:>9.0} events/s ({:.2} s, {:.2}x raw consume)",
        "projector into shipping + merchant views",
        rate,
        proj.as_secs_f64(),
        rate / raw_rate
    );
    assert_eq!(dead, 0, "no event was dead-lettered");
    let d = orderlog::projections::query::digest(&store).unwrap();
    for (view, (rows, _)) in &d.per_view {
        println!("#   {view:<14} {rows:>9} rows");
    }

    // 3. The auditor's `orderlog replay`: the same fold into a fresh directory,
    // with its own start-up and catch-up detection; its digest must match.
    let replay_dir = tempfile::tempdir().unwrap();
    let source = orderlog::audit::Source {
        settings: settings.clone(),
        topic: topic.clone(),
        log_keys: Some(log_keys.clone()),
    };
    let report = orderlog::audit::replay::run(
        &source,
        &replay_dir.path().join("views"),
        orderlog::audit::log::STALL_LIMIT,
        |_| {},
    )
    .unwrap();
    let replay_rate = report.projected as f64 / report.elapsed.as_secs_f64();
    println!(
        "{:<46} {:>9.0} events/s ({:.2} s, {:.2}x raw consume)",
        "orderlog replay (audit rebuild)",
        replay_rate,
        report.elapsed.as_secs_f64(),
        replay_rate / raw_rate
    );
    assert_eq!(
        report.digest.total, d.total,
        "a replay rebuilds identical views"
    );
}
