//! Cluster test: three `orderlog serve` processes on one topic of the real
//! three-broker cluster (RF 3, `min.insync.replicas=2`), each on its own data
//! directory, with clients spreading every request round-robin over them
//! (place, share, cancel, erase, retries with `Idempotency-Key`), leaving out
//! a node while it is being killed, paused or restarted, as a load balancer's
//! health check would. A node that does not write an order's partition
//! forwards the command to the one that does.
//!
//! Faults during the load, each round:
//! - SIGKILL of one node, restarted a moment later;
//! - SIGSTOP of one node past its writers' group session timeout, then
//!   SIGCONT: it must have been fenced, and it must never append after.
//!
//! And, once, a rolling restart of all three.
//!
//! Afterwards: every acknowledged command is in the log exactly once at the
//! version it answered, no order has a sequence number twice (no fork) and
//! every chain is whole, no order number is placed twice, `orderlog verify` is
//! clean, and an erased order is unreadable through every node.
//!
//! Three nodes started at the same moment on the fresh topic must all be
//! ready within 30 s.
//!
//! Short form: 1 round. `ORDERLOG_CLUSTER_ROUNDS=N` for a long form;
//! `ORDERLOG_CLUSTER_SEED=S` repeats a logged run's choices.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::load::{Load, Node, check_erased_unreadable, check_key_replica_shredded, check_log};
use common::load::{env_or, seed, wait_ready};
use rand::{Rng, SeedableRng};

const NODES: usize = 3;
/// The writers' group session timeout the nodes run with (the brokers'
/// minimum by default).
const SESSION_MS: u64 = 6000;

fn signal(child: &Child, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// The partitions a node says it writes (`/readyz`).
async fn owned(client: &reqwest::Client, base: &str) -> BTreeSet<usize> {
    let Ok(r) = client.get(format!("{base}/readyz")).send().await else {
        return BTreeSet::new();
    };
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    body["cluster"]["partitions"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| *v == "owned")
                .filter_map(|(k, _)| k.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A node that writes at least one partition (the group may still be
/// moving partitions to a node that just rejoined), and what it writes.
async fn writing_node(
    client: &reqwest::Client,
    bases: &[String],
    rng: &mut rand::rngs::StdRng,
) -> (usize, BTreeSet<usize>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let k = rng.gen_range(0..bases.len());
        let parts = owned(client, &bases[k]).await;
        if !parts.is_empty() {
            return (k, parts);
        }
        assert!(Instant::now() < deadline, "no node writes any partition");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// From `since`, how long until every partition of `partitions` had an
/// acknowledged command again.
fn failover(load: &Load, since: Instant, partitions: &BTreeSet<usize>) -> Option<Duration> {
    let parts: usize = common::load::PARTITIONS.parse().unwrap();
    let acks = load.acks.lock().unwrap();
    let mut worst = Duration::ZERO;
    for p in partitions {
        let first = acks
            .times
            .iter()
            .filter(|(t, id)| *t > since && orderlog::service::partition_of(id, parts) == *p)
            .map(|(t, _)| *t - since)
            .min()?;
        worst = worst.max(first);
    }
    Some(worst)
}

async fn wait_failover(load: &Load, since: Instant, partitions: &BTreeSet<usize>) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(d) = failover(load, since, partitions) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "partitions {partitions:?} took no command for 60 s after the fault"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_take_writes_through_kills_pauses_and_a_rolling_restart_exactly_once() {
    let rounds: u32 = env_or("ORDERLOG_CLUSTER_ROUNDS", 1);
    let seed = seed("ORDERLOG_CLUSTER_SEED");
    eprintln!("cluster test: {rounds} round(s), ORDERLOG_CLUSTER_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (_dir, brokers) = common::cluster3();
    let data = tempfile::tempdir().unwrap();
    let first = Node::new(&brokers, 3, &data.path().join("n0"));
    let nodes: Vec<Node> = (0..NODES)
        .map(|i| {
            let mut n = Node::new(&brokers, 3, &data.path().join(format!("n{i}")));
            n.topic = first.topic.clone();
            n.kek = first.kek.clone();
            if let Ok(level) = std::env::var("ORDERLOG_CLUSTER_NODE_LOG") {
                n.env.push(("ORDERLOG_LOG".into(), level));
            }
            n.args = vec![
                "--writer-session-timeout-ms".into(),
                SESSION_MS.to_string(),
                "--produce-timeout-ms".into(),
                "4000".into(),
            ];
            n
        })
        .collect();
    let bases: Vec<String> = nodes.iter().map(Node::base).collect();
    let client = reqwest::Client::new();
    let t0 = Instant::now();

    // All three at the same moment, on a fresh topic.
    let mut children: Vec<Child> = nodes.iter().map(Node::spawn).collect();
    for (child, base) in children.iter_mut().zip(&bases) {
        wait_ready(&client, base, child).await;
    }
    let ready_in = t0.elapsed();
    eprintln!("three nodes started together, all ready in {ready_in:?}");
    assert!(
        ready_in < Duration::from_secs(30),
        "three nodes started together were not all ready within 30 s: {ready_in:?}"
    );

    let load = Load::start_on(&bases, seed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut failovers = Vec::new();
    for round in 0..rounds {
        // SIGKILL, then a restart.
        let (k, parts) = writing_node(&client, &bases, &mut rng).await;
        load.down.lock().unwrap().insert(k);
        let killed = Instant::now();
        children[k].kill().unwrap();
        children[k].wait().unwrap();
        let took = wait_failover(&load, killed, &parts).await;
        eprintln!(
            "round {round}: node {k} SIGKILLed (it wrote {parts:?}); its partitions took commands again after {took:?} ({} acknowledged, {:?})",
            load.acked(),
            t0.elapsed()
        );
        failovers.push(took);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2000))).await;
        children[k] = nodes[k].spawn();
        wait_ready(&client, &bases[k], &mut children[k]).await;
        load.down.lock().unwrap().remove(&k);

        // SIGSTOP past the session timeout, then SIGCONT: fenced.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (s, parts) = writing_node(&client, &bases, &mut rng).await;
        load.down.lock().unwrap().insert(s);
        let stopped = Instant::now();
        signal(&children[s], "-STOP");
        let took = wait_failover(&load, stopped, &parts).await;
        tokio::time::sleep(
            Duration::from_millis(SESSION_MS + 2000).saturating_sub(stopped.elapsed()),
        )
        .await;
        signal(&children[s], "-CONT");
        eprintln!(
            "round {round}: node {s} SIGSTOPped for {:?} (it wrote {parts:?}); its partitions took commands again after {took:?}",
            stopped.elapsed()
        );
        failovers.push(took);
        wait_ready(&client, &bases[s], &mut children[s]).await;
        load.down.lock().unwrap().remove(&s);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // A rolling restart of all three.
    for (i, node) in nodes.iter().enumerate() {
        load.down.lock().unwrap().insert(i);
        signal(&children[i], "-TERM");
        let status = children[i].wait().unwrap();
        assert!(
            status.success(),
            "node {i} exit status on SIGTERM: {status:?}"
        );
        children[i] = node.spawn();
        wait_ready(&client, &bases[i], &mut children[i]).await;
        load.down.lock().unwrap().remove(&i);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "rolling restart done ({} acknowledged, {:?})",
        load.acked(),
        t0.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (acks, seen) = load.finish().await;
    eprintln!(
        "load done: {} commands acknowledged, {} orders erased; answers (count, slowest): {:?}; 503 by code: {:?}",
        acks.acked.len(),
        acks.erased.len(),
        seen.by_status,
        seen.unavailable
    );
    assert!(
        acks.duplicates.is_empty(),
        "two acknowledged commands answered the same version: {:?}",
        acks.duplicates
    );
    seen.assert_only_retryable_failures();
    assert!(acks.acked.len() > 100, "the load got too little through");

    // The log: every acknowledgement exactly once, chains whole, no forks,
    // no order number placed twice.
    let log = check_log(&brokers, &nodes[0].topic, &acks);
    failovers.sort();
    eprintln!(
        "log checked: {} records, {} orders, {:?} never acknowledged; lost 0, duplicated 0; failover p50 {:?}, p99 {:?} over {} faults ({:?})",
        log.records,
        log.per_order.len(),
        log.unacked,
        percentile(&failovers, 0.5),
        percentile(&failovers, 0.99),
        failovers.len(),
        t0.elapsed()
    );
    // Erased orders: unreadable through every node, tombstoned in the key topic.
    for base in &bases {
        check_erased_unreadable(&client, base, &log).await;
    }
    check_key_replica_shredded(&brokers, &nodes[0].topic, &log).await;
    // The topics the cluster added hold no personal data in plaintext: the
    // members topic (node rows) and the key topic (wrapped keys), aborted
    // transactions' records included.
    for topic in [
        orderlog::kafka::members_topic_for(&nodes[0].topic),
        orderlog::crypto::keys_topic_for(&nodes[0].topic),
    ] {
        let records = common::raw_records(&brokers, &topic);
        assert!(!records.is_empty(), "{topic} holds rows");
        for (k, v) in records {
            for needle in ["13800138000", "张三", "zhang.san@example.com", "科技园路"] {
                assert!(
                    !k.windows(needle.len()).any(|w| w == needle.as_bytes())
                        && !v.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{topic} holds {needle} in plaintext"
                );
            }
        }
    }
    for child in &children {
        signal(child, "-TERM");
    }
    for (i, child) in children.iter_mut().enumerate() {
        let status = child.wait().unwrap();
        assert!(status.success(), "node {i} exit status: {status:?}");
    }
    // `orderlog verify` on one node's data directory: clean.
    let out = Command::new(env!("CARGO_BIN_EXE_orderlog"))
        .args(["verify", "--brokers", &brokers, "--topic", &nodes[0].topic])
        .arg("--data-dir")
        .arg(&nodes[0].data_dir)
        .env("ORDERLOG_KEK", &nodes[0].kek)
        .env("ORDERLOG_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("verify clean; done in {:?}", t0.elapsed());
}

/// Commands in flight while partitions move between two in-process nodes (a
/// second node joins, so the first has partitions revoked with commands
/// queued; then it leaves, so they are assigned back): every command is
/// answered, 2xx or a retryable 503, and every acknowledged one is in the log
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_in_flight_while_partitions_move_are_answered_and_written_once() {
    use common::app::TestApp;
    let a = TestApp::spawn_with_partitions(3).await;
    let owned_by = |app: &orderlog::app::App| {
        app.service
            .cluster_status()
            .partitions
            .values()
            .filter(|p| **p == "owned")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while owned_by(&a.app) < 3 {
        assert!(
            Instant::now() < deadline,
            "the first node never wrote every partition"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let load = Load::start_on(std::slice::from_ref(&a.base), seed("ORDERLOG_CLUSTER_SEED"));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A second node joins: some partitions are revoked from the first.
    let dir = tempfile::tempdir().unwrap();
    let mut config = a.config.clone();
    config.data_dir = dir.path().to_owned();
    let b = orderlog::app::App::start(&config).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while owned_by(&b) == 0 || owned_by(&a.app) == 3 {
        assert!(
            Instant::now() < deadline,
            "no partition moved to the second node"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = load.acked();
    eprintln!(
        "second node writes {} partition(s), the first {} ({moved} acknowledged)",
        owned_by(&b),
        owned_by(&a.app)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // It leaves: its partitions are assigned back, commands still arriving.
    b.stop().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while owned_by(&a.app) < 3 {
        assert!(
            Instant::now() < deadline,
            "the partitions did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (acks, seen) = load.finish().await;
    eprintln!(
        "{} acknowledged; answers {:?}; 503 by code {:?}",
        acks.acked.len(),
        seen.by_status,
        seen.unavailable
    );
    assert!(
        acks.acked.len() > moved,
        "commands were acknowledged after the moves"
    );
    assert!(acks.duplicates.is_empty(), "{:?}", acks.duplicates);
    seen.assert_only_retryable_failures();
    check_log(&a.app.kafka.brokers, &a.app.topic, &acks);
}
