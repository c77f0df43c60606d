//! Erasure latency: time from `POST /v1/orders/{id}/erase` to its receipt
//! (OrderErased acknowledged by Kafka, key destroyed in the vault and its
//! replica, views purged, memtables and WAL flushed, key ranges compacted), and
//! the part of it spent making the key physically gone from disk. Orders are
//! erased one after another in a store that also holds live orders.
//!
//! Run: `cargo bench --profile dev --bench erasure`. Under `cargo test`: 5 erasures.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use orderlog::app::App;
use orderlog::crypto::Kek;
use orderlog::domain::{Command, fixtures};
use serde_json::Value;
use uuid::Uuid;

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (live, erasures) = if bench {
        (20_000u32, 300usize)
    } else {
        (50, 5)
    };
    let live = std::env::var("ORDERLOG_BENCH_LIVE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(live);
    let erasures = std::env::var("ORDERLOG_BENCH_ERASURES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(erasures);
    if std::env::var_os("ORDERLOG_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("ORDERLOG_LOG"))
            .init();
    }
    let data = tempfile::tempdir().unwrap();
    let config = common::app::config(
        &common::unique("bench.erase"),
        data.path(),
        &Kek::generate(),
        6,
    );
    let app = App::start(&config).await.unwrap();
    let svc = app.service.clone();
    let mut ids = Vec::new();
    let mut tasks = Vec::new();
    for n in 0..live {
        let svc = svc.clone();
        let id = Uuid::now_v7();
        ids.push(id);
        tasks.push(tokio::spawn(async move {
            svc.execute(
                id,
                Command::PlaceOrder(fixtures::new_order(n, n % 3 == 0)),
                None,
                None,
            )
            .await
            .unwrap()
        }));
        if tasks.len() >= 256 {
            for t in tasks.drain(..) {
                t.await.unwrap();
            }
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let client = reqwest::Client::new();
    let mut total = Vec::new();
    let mut disk = Vec::new();
    for id in ids.iter().take(erasures) {
        let t = Instant::now();
        let r: Value = client
            .post(format!("http://{}/v1/orders/{id}/erase", app.addr))
            .bearer_auth(common::app::PRIVACY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        total.push(t.elapsed().as_secs_f64() * 1e3);
        if std::env::var_os("ORDERLOG_BENCH_VERBOSE").is_some() {
            eprintln!(
                "{:.1} ms {}",
                t.elapsed().as_secs_f64() * 1e3,
                r["receipt"]["timings_ms"]
            );
        }
        let purge_ms = r["receipt"]["timings_ms"]["purged_here"]
            .as_f64()
            .expect("receipt times this node's purge");
        disk.push(purge_ms);
    }
    total.sort_by(f64::total_cmp);
    disk.sort_by(f64::total_cmp);
    println!(
        "# erasure: {erasures} erasures one after another, {live} orders in the store, 6 partitions, one local Kafka broker; profile {}",
        if cfg!(debug_assertions) {
            "dev (deps -O3, orderlog -O2)"
        } else {
            "release"
        }
    );
    println!(
        "{:<44} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
        "erase request to receipt",
        pct(&total, 0.5),
        pct(&total, 0.99),
        total[total.len() - 1]
    );
    println!(
        "{:<44} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
        "  of which: until gone from this node's disk",
        pct(&disk, 0.5),
        pct(&disk, 0.99),
        disk[disk.len() - 1]
    );
    let _ = Duration::ZERO;
    app.stop().await;
}
