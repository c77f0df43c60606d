//! Crash test: a real `orderlog serve` process under load, killed with
//! SIGKILL at random moments and restarted on the same topic, data dir and
//! port. Every command it acknowledged must be in the log exactly once, each
//! order's events must chain without gaps, the node's views must equal a
//! clean rebuild, and no erased order may be readable.
//!
//! Short form: 3 kills. `ORDERLOG_CRASH_ROUNDS=N` for a long form;
//! `ORDERLOG_CRASH_SEED=S` repeats a logged run's kill moments.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::load::{
    Acks, LOAD_TASKS, Node, Seen, check_erased_unreadable, check_key_replica_shredded, check_log,
    load, stop_and_compare_with_rebuild, wait_ready,
};
use rand::{Rng, SeedableRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_commands_survive_sigkill_exactly_once_and_views_equal_a_rebuild() {
    let rounds: u32 = std::env::var("ORDERLOG_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("ORDERLOG_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test: {rounds} kills, ORDERLOG_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data = tempfile::tempdir().unwrap();
    let node = Node::new(&common::brokers(), 1, data.path());
    let base = node.base();
    let client = reqwest::Client::new();
    let t0 = Instant::now();

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Acks::default()));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut child = node.spawn();
    wait_ready(&client, &base, &mut child).await;
    let tasks: Vec<_> = (0..LOAD_TASKS as u64)
        .map(|t| {
            tokio::spawn(load(
                t,
                seed,
                base.clone(),
                stop.clone(),
                acks.clone(),
                seen.clone(),
            ))
        })
        .collect();
    for round in 0..rounds {
        let wait = Duration::from_millis(rng.gen_range(500..2500));
        tokio::time::sleep(wait).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked = acks.lock().unwrap().acked.len();
        eprintln!(
            "kill {round} after {wait:?} of load: {acked} commands acknowledged so far ({:?})",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..500))).await;
        child = node.spawn();
        wait_ready(&client, &base, &mut child).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    eprintln!(
        "load done: {} commands acknowledged, {} orders erased ({:?})",
        acks.acked.len(),
        acks.erased.len(),
        t0.elapsed()
    );
    assert!(
        acks.duplicates.is_empty(),
        "two acknowledged commands answered the same version: {:?}",
        acks.duplicates
    );
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    eprintln!(
        "answers (count, slowest): {:?}; erasure receipts with views pending: {}",
        seen.by_status, seen.erasures_views_pending
    );
    assert!(
        seen.errors.is_empty(),
        "5xx other than 503: {:?}",
        seen.errors
    );

    let log = check_log(&node.brokers, &node.topic, &acks);
    eprintln!(
        "log checked: {} records ({:?} never acknowledged), {} orders ({:?})",
        log.records,
        log.unacked,
        log.per_order.len(),
        t0.elapsed()
    );
    check_erased_unreadable(&client, &base, &acks, &log).await;
    check_key_replica_shredded(&node.brokers, &node.topic, &log).await;
    stop_and_compare_with_rebuild(&client, &node, child, &log, &format!("{rounds} kills")).await;
    eprintln!("done in {:?}", t0.elapsed());
}
