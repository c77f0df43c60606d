//! Crash test: a real `orderlog serve` process under load, killed with
//! SIGKILL at random moments and restarted on the same topic, data dir and
//! port. Every command it acknowledged must be in the log exactly once, each
//! order's events must chain without gaps, the node's views must equal a
//! clean rebuild, and no erased order may be readable.
//!
//! Every other round the node is not killed from outside: it is started with
//! `ORDERLOG_TEST_ABORT_AFTER_ACKS=n` and aborts itself after its n-th
//! acknowledged batch, between Kafka's acknowledgement and the write of the
//! batch's effects to the stored order state, the one moment a random kill
//! rarely hits. The restart must find those events from the log's tail.
//!
//! Short form: 4 rounds. `ORDERLOG_CRASH_ROUNDS=N` for a long form;
//! `ORDERLOG_CRASH_SEED=S` repeats a logged run's kill moments.

mod common;

use std::time::{Duration, Instant};

use common::load::{Load, Node, check_after_load, env_or, seed, wait_ready};
use rand::{Rng, SeedableRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_commands_survive_sigkill_exactly_once_and_views_equal_a_rebuild() {
    let rounds: u32 = env_or("ORDERLOG_CRASH_ROUNDS", 4);
    let seed = seed("ORDERLOG_CRASH_SEED");
    eprintln!("crash test: {rounds} kills, ORDERLOG_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data = tempfile::tempdir().unwrap();
    let mut node = Node::new(&common::brokers(), 1, data.path());
    let base = node.base();
    let client = reqwest::Client::new();
    let t0 = Instant::now();

    let mut child = node.spawn();
    wait_ready(&client, &base, &mut child).await;
    let load = Load::start(&base, seed);
    let mut aborts = 0;
    for round in 0..rounds {
        let aborting = !node.env.is_empty();
        let wait = Duration::from_millis(rng.gen_range(500..2500));
        let how = if aborting {
            // The node aborts itself; a kill only if it has not after 20 s.
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            match child.try_wait().unwrap() {
                Some(_) => {
                    aborts += 1;
                    "aborted itself between an acknowledgement and its state write"
                }
                None => {
                    child.kill().unwrap();
                    "did not reach its abort point; killed"
                }
            }
        } else {
            tokio::time::sleep(wait).await;
            child.kill().unwrap(); // SIGKILL
            "SIGKILL"
        };
        child.wait().unwrap();
        let acked = load.acked();
        eprintln!(
            "round {round}: {how} ({acked} commands acknowledged so far, {:?})",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..500))).await;
        node.env.clear();
        if round % 2 == 0 && round + 1 < rounds {
            let after: u32 = rng.gen_range(20..200);
            node.env
                .push(("ORDERLOG_TEST_ABORT_AFTER_ACKS".into(), after.to_string()));
        }
        child = node.spawn();
        wait_ready(&client, &base, &mut child).await;
    }
    assert!(
        rounds < 2 || aborts > 0,
        "no round aborted between an acknowledgement and its state write"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (acks, seen) = load.finish().await;
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
    eprintln!(
        "answers (count, slowest): {:?}; erasure receipts with views pending: {}",
        seen.by_status, seen.erasures_views_pending
    );
    assert!(
        seen.errors.is_empty(),
        "5xx other than 503: {:?}",
        seen.errors
    );

    check_after_load(&client, &node, child, &acks, &format!("{rounds} kills"), t0).await;
    eprintln!("done in {:?}", t0.elapsed());
}
