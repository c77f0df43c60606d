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

/// Waits until the node has digested the fill: its reads caught up with the
/// log, the fill's memtables flushed, and RocksDB running or owing no flush
/// or compaction. Erasures timed before that measure the fill's flush and
/// compactions, not the erasure (at 1M orders the first few took 0.7-2 s,
/// then every one 150-220 ms). Gives up after ten minutes, and says so.
async fn settle(svc: &orderlog::service::Service) -> Duration {
    const BUSY: [&str; 4] = [
        "rocksdb.mem-table-flush-pending",
        "rocksdb.compaction-pending",
        "rocksdb.num-running-flushes",
        "rocksdb.num-running-compactions",
    ];
    let t = Instant::now();
    loop {
        let store = svc.store();
        let busy = orderlog::store::COLUMN_FAMILIES.iter().any(|name| {
            BUSY.iter().any(|p| {
                store
                    .db()
                    .property_int_value_cf(store.cf(name), *p)
                    .ok()
                    .flatten()
                    .is_some_and(|v| v > 0)
            })
        });
        // The fill's rows still in the memtables: a quiet node flushes them
        // after 2 s without writes (`erasure::purge`), as it would long
        // before an erasure came on a node that had gone quiet.
        let unflushed = store.unflushed_rows() >= orderlog::erasure::purge::QUIET_FLUSH_MIN_ROWS;
        if !busy && !unflushed && svc.reads_ready() {
            return t.elapsed();
        }
        if t.elapsed() > Duration::from_secs(600) {
            println!(
                "# the node did not settle within 10 minutes (RocksDB busy: {busy}, fill unflushed: {unflushed}); timing anyway"
            );
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

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
    let settled = settle(&svc).await;
    // ORDERLOG_BENCH_LOADED=N: N clients keep placing orders while the
    // erasures run one after another (erasure under load; 0: an idle node).
    let loaded: usize = std::env::var("ORDERLOG_BENCH_LOADED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let load_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = (loaded > 0).then(|| {
        let (svc, stop) = (svc.clone(), load_stop.clone());
        tokio::spawn(
            async move { place_for(&svc, loaded, Duration::from_secs(3600), Some(stop)).await },
        )
    });
    let client = reqwest::Client::new();
    let mut total = Vec::new();
    let mut disk = Vec::new();
    let mut unpurged = 0;
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
        // 0: the purge was still queued when the receipt's wait ran out.
        if purge_ms == 0.0 {
            unpurged += 1;
        } else {
            disk.push(purge_ms);
        }
    }
    load_stop.store(true, std::sync::atomic::Ordering::Release);
    let load_rate = match load {
        Some(l) => Some(l.await.unwrap()),
        None => None,
    };
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
    match load_rate {
        Some(rate) => println!(
            "# meanwhile {loaded} clients placed orders through the library API: {rate:.0} orders/s"
        ),
        None => println!("# no other load (ORDERLOG_BENCH_LOADED=N adds N placing clients)"),
    }
    println!(
        "# the node settled {:.1} s after the fill (reads caught up; the fill's memtables flushed, as a node does once quiet for 2 s; no flush or compaction pending or running)",
        settled.as_secs_f64()
    );
    println!(
        "{:<44} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
        "erase request to receipt",
        pct(&total, 0.5),
        pct(&total, 0.99),
        total[total.len() - 1]
    );
    if let Some(max) = disk.last() {
        println!(
            "{:<44} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
            "  of which: until gone from this node's disk",
            pct(&disk, 0.5),
            pct(&disk, 0.99),
            max
        );
    }
    println!(
        "{:<44} {unpurged} of {erasures} (their receipts say the purge is queued)",
        "  not purged within the receipt's wait"
    );

    // A burst of erasures sent at once, while clients keep placing orders:
    // every receipt's time, and the placements' throughput beside the same
    // clients' without the burst.
    let burst = std::env::var("ORDERLOG_BENCH_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 1_000usize } else { 10 });
    let placers = 64;
    let window = if bench {
        Duration::from_secs(5)
    } else {
        Duration::from_millis(500)
    };
    let quiet = place_for(&svc, placers, window, None).await;
    let targets: Vec<Uuid> = ids.iter().skip(erasures).take(burst).copied().collect();
    assert_eq!(targets.len(), burst, "enough live orders for the burst");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (svc_burst, stop_burst) = (svc.clone(), stop.clone());
    let placing = tokio::spawn(async move {
        place_for(
            &svc_burst,
            placers,
            Duration::from_secs(600),
            Some(stop_burst),
        )
        .await
    });
    let started = Instant::now();
    let sends: Vec<_> = targets
        .iter()
        .map(|id| {
            let (client, addr, id) = (client.clone(), app.addr, *id);
            tokio::spawn(async move {
                let t = Instant::now();
                let r = client
                    .post(format!("http://{addr}/v1/orders/{id}/erase"))
                    .bearer_auth(common::app::PRIVACY)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "erase {id}: {}", r.status());
                let body: Value = r.json().await.unwrap();
                assert!(body["receipt"].is_object(), "erase {id} has a receipt");
                t.elapsed().as_secs_f64() * 1e3
            })
        })
        .collect();
    let mut each = Vec::new();
    for s in sends {
        each.push(s.await.unwrap());
    }
    let all = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Release);
    let during = placing.await.unwrap();
    each.sort_by(f64::total_cmp);
    println!(
        "# burst: {burst} erase requests sent at once over HTTP while {placers} clients place orders through the library API"
    );
    println!(
        "{:<44} {:>7.2} s  (each: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms)",
        "every receipt of the burst in",
        all.as_secs_f64(),
        pct(&each, 0.5),
        pct(&each, 0.99),
        each[each.len() - 1]
    );
    println!(
        "{:<44} {:>7.0} orders/s during the burst, {:.0} without it ({:.2}x)",
        "place-order throughput",
        during,
        quiet,
        during / quiet
    );
    app.stop().await;
}

/// Places orders from `clients` concurrent clients for `window` (or until
/// `stop`); returns orders per second.
async fn place_for(
    svc: &orderlog::service::Service,
    clients: usize,
    window: Duration,
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (svc, stop) = (svc.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < window
                    && !stop
                        .as_ref()
                        .is_some_and(|s| s.load(std::sync::atomic::Ordering::Acquire))
                {
                    svc.execute(
                        Uuid::now_v7(),
                        Command::PlaceOrder(fixtures::new_order(
                            c as u32 * 1_000_000 + n as u32,
                            false,
                        )),
                        None,
                        None,
                    )
                    .await
                    .unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut placed = 0;
    for t in tasks {
        placed += t.await.unwrap();
    }
    placed as f64 / started.elapsed().as_secs_f64()
}
