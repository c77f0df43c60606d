//! Start cost of `orderlog serve` against the size of the log. For each size,
//! a topic is pre-filled with the projection bench's generator (placed,
//! shared twice, some cancelled, some erased), then a real `serve` process:
//!
//! 1. starts on an empty data directory (everything is rebuilt from the log);
//! 2. is stopped and started again on its full data directory;
//! 3. takes 100k more orders over HTTP.
//!
//! Printed per size: time from process start to `/healthz` and to `/readyz`
//! answering 200, and resident memory (VmRSS) once ready and after the extra
//! orders, with RocksDB's part of it (the node's `orderlog_store_memory_bytes`).
//!
//! Run: `cargo bench --profile dev --bench start` (1M, 3M and 10M events;
//! `ORDERLOG_BENCH_START_EVENTS=1000000,3000000` to choose;
//! `ORDERLOG_BENCH_START_ORDERS` for the extra orders, default 100000;
//! `ORDERLOG_BENCH_SERVE_BIN=/path/to/orderlog` measures another build;
//! `ORDERLOG_BENCH_BASELINE_BIN=/path/to/orderlog` also measures that build
//! (for example the previous release) on the same topic first, with its own
//! empty data directory: empty start and restart, without the extra
//! orders). Under `cargo test`: 3,000 events, 200 orders.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use orderlog::kafka::{KafkaSettings, TopicSpec, ensure_topics};

const PARTITIONS: usize = 3;

struct Started {
    child: Child,
    base: String,
    health: Duration,
    ready: Duration,
}

fn serve(bin: &str, brokers: &str, topic: &str, dir: &Path, listen: &str, kek: &str) -> Child {
    Command::new(bin)
        .args(["serve", "--brokers", brokers, "--topic", topic])
        .args([
            "--partitions",
            &PARTITIONS.to_string(),
            "--replication",
            "1",
        ])
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", listen])
        .env("ORDERLOG_KEK", kek)
        .env(
            "ORDERLOG_TOKENS",
            format!("{}=checkout", common::app::CHECKOUT),
        )
        .env("ORDERLOG_LOG", "warn")
        .env_remove("ORDERLOG_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn orderlog serve")
}

async fn start(
    client: &reqwest::Client,
    bin: &str,
    brokers: &str,
    topic: &str,
    dir: &Path,
    kek: &str,
) -> Started {
    let listen = format!("127.0.0.1:{}", common::load::free_port());
    let t0 = Instant::now();
    let mut child = serve(bin, brokers, topic, dir, &listen, kek);
    let base = format!("http://{listen}");
    let mut health = None;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("serve exited during start: {s:?}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1800),
            "serve not ready in 30 min"
        );
        let ok = |path: &'static str| {
            let url = format!("{base}{path}");
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        };
        if health.is_none() && ok("/healthz").await {
            health = Some(t0.elapsed());
        }
        if let Some(health) = health
            && ok("/readyz").await
        {
            return Started {
                child,
                base,
                health,
                ready: t0.elapsed(),
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rss_mb(child: &Child) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// RocksDB's share of the node's memory, from its `/metrics`.
async fn store_memory(client: &reqwest::Client, base: &str) -> String {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mb = |kind: &str| -> f64 {
        common::metric_sample(&text, orderlog::telemetry::STORE_MEMORY, &[("kind", kind)])
            / (1u64 << 20) as f64
    };
    format!(
        "of which RocksDB: block cache {:.0} MB, memtables {:.0} MB, table readers {:.0} MB",
        mb("block_cache"),
        mb("memtables"),
        mb("table_readers")
    )
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Places `orders` orders over HTTP, 64 at a time; returns orders/s.
async fn place(client: &reqwest::Client, base: &str, orders: u64) -> f64 {
    let next = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let workers = (0..64).map(|_| {
        let (client, base, next) = (client.clone(), base.to_owned(), next.clone());
        tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= orders {
                    return;
                }
                let r = client
                    .post(format!("{base}/v1/orders"))
                    .bearer_auth(common::app::CHECKOUT)
                    .json(&common::load::order_body(n))
                    .send()
                    .await
                    .expect("place order");
                assert!(r.status().is_success(), "place answered {}", r.status());
            }
        })
    });
    for w in futures::future::join_all(workers).await {
        w.unwrap();
    }
    orders as f64 / t.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let sizes: Vec<usize> = std::env::var("ORDERLOG_BENCH_START_EVENTS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| {
            if bench {
                vec![1_000_000, 3_000_000, 10_000_000]
            } else {
                vec![3_000]
            }
        });
    let extra: u64 = std::env::var("ORDERLOG_BENCH_START_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 100_000 } else { 200 });
    let bin = std::env::var("ORDERLOG_BENCH_SERVE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_orderlog").to_owned());
    let brokers = common::brokers();
    let client = reqwest::Client::new();
    println!(
        "# start: orderlog serve ({bin}) on one local Kafka broker, {PARTITIONS} partitions; \
         events from the projection bench's generator; {} cores; profile {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if cfg!(debug_assertions) {
            "dev (deps -O3, orderlog -O2)"
        } else {
            "release"
        }
    );
    println!(
        "{:>10}  {:<22} {:>9} {:>9} {:>9}",
        "events", "start", "healthz", "readyz", "RSS MB"
    );
    for size in sizes {
        let topic = common::unique("bench.start");
        ensure_topics(
            &KafkaSettings::new(&brokers),
            &[TopicSpec::events(&topic, PARTITIONS as i32, 1)],
        )
        .await
        .unwrap();
        let t = Instant::now();
        let node_kek = orderlog::crypto::Kek::generate();
        let written = common::prefill(&brokers, &topic, PARTITIONS, size, &node_kek).await;
        eprintln!(
            "# {written} events pre-filled in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("node");
        let kek = node_kek.to_text().to_string();
        let row = |what: &str, s: &Started, rss: f64| {
            println!(
                "{written:>10}  {what:<22} {:>8.2}s {:>8.2}s {rss:>9.0}",
                s.health.as_secs_f64(),
                s.ready.as_secs_f64()
            );
        };
        if let Ok(baseline) = std::env::var("ORDERLOG_BENCH_BASELINE_BIN") {
            let data = dir.path().join("baseline");
            for what in ["baseline: empty dir", "baseline: restart"] {
                let s = start(&client, &baseline, &brokers, &topic, &data, &kek).await;
                let rss = rss_mb(&s.child);
                row(what, &s, rss);
                stop(s.child);
            }
        }

        let cold = start(&client, &bin, &brokers, &topic, &data, &kek).await;
        let rss = rss_mb(&cold.child);
        row("empty data dir", &cold, rss);
        println!("{:>10}  {}", "", store_memory(&client, &cold.base).await);
        stop(cold.child);

        let warm = start(&client, &bin, &brokers, &topic, &data, &kek).await;
        let rss = rss_mb(&warm.child);
        row("restart, full data dir", &warm, rss);
        let rate = place(&client, &warm.base, extra).await;
        println!(
            "{written:>10}  {:<22} {:>9} {:>9} {:>9.0}   ({extra} orders at {rate:.0}/s)",
            format!("+{extra} orders"),
            "",
            "",
            rss_mb(&warm.child)
        );
        println!("{:>10}  {}", "", store_memory(&client, &warm.base).await);
        stop(warm.child);
    }
}
