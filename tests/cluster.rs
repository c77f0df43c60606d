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
//! Then every node as a complete read replica: the merchant and shipping
//! feeds read through a round-robin of the nodes give, entry for entry, what
//! one node's feed gives; an order erased through one node is unreadable on
//! the others within the erase request (its receipt lists every live node
//! as purged); a node stopped during an erasure applies it before it is
//! ready again; a node on an empty data directory catches up and becomes
//! ready (time printed). Finally no data directory holds an erased order's
//! wrapped key, sealed fields or personal plaintext.
//!
//! Short form: 1 round. `ORDERLOG_CLUSTER_ROUNDS=N` for a long form;
//! `ORDERLOG_CLUSTER_SEED=S` repeats a logged run's choices.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::app::{AUDITOR, CHECKOUT, LOGISTICS_SF, MERCHANT_M1, PRIVACY};
use common::load::{Load, Node, check_erased_unreadable, check_key_replica_shredded, check_log};
use common::load::{env_or, seed, wait_ready};
use common::orders::{Area, Line, OrderBody};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const NODES: usize = 3;
/// The writers' group session timeout the nodes run with (the brokers'
/// minimum by default).
const SESSION_MS: u64 = 6000;

/// The node processes; killed if the test panics, so none outlives it.
struct Children(Vec<Child>);

impl std::ops::Deref for Children {
    type Target = Vec<Child>;
    fn deref(&self) -> &Vec<Child> {
        &self.0
    }
}

impl std::ops::DerefMut for Children {
    fn deref_mut(&mut self) -> &mut Vec<Child> {
        &mut self.0
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn signal(child: &Child, sig: &str) {
    common::signal(child.id(), sig);
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
            .filter(|(t, id)| *t > since && orderlog::kafka::partition_of(id, parts) == *p)
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
    let mut children = Children(nodes.iter().map(Node::spawn).collect());
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
        signal(&children[s], "STOP");
        let took = wait_failover(&load, stopped, &parts).await;
        tokio::time::sleep(
            Duration::from_millis(SESSION_MS + 2000).saturating_sub(stopped.elapsed()),
        )
        .await;
        signal(&children[s], "CONT");
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
        signal(&children[i], "TERM");
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
    // Every node a complete read replica, and erasures reach every node.
    let replicas = replicas(
        &client,
        &nodes,
        &bases,
        &mut children,
        log.records,
        data.path(),
    )
    .await;
    for child in children.iter() {
        signal(child, "TERM");
    }
    for (i, child) in children.iter_mut().enumerate() {
        let status = child.wait().unwrap();
        assert!(status.success(), "node {i} exit status: {status:?}");
    }
    // No file of any node's data directory (the node that joined last
    // included) holds the erased orders' wrapped keys, their sealed fields
    // or their personal data in plaintext.
    let mut dirs: Vec<&std::path::Path> = nodes.iter().map(|n| n.data_dir.as_path()).collect();
    dirs.push(&replicas.new_node_dir);
    let scanned = scan_dirs(&dirs, &replicas.secrets);
    eprintln!(
        "data directories scanned: {scanned} bytes, none holds the erased orders' key, sealed or plaintext bytes"
    );
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

/// What the replica checks leave for the data directory scan.
struct Replicas {
    new_node_dir: std::path::PathBuf,
    /// Byte strings no data directory may hold: erased orders' wrapped
    /// subkeys, sealed fields, and their personal data in plaintext.
    secrets: Vec<Vec<u8>>,
}

/// A place-order body with personal data of its own (`n` makes it unique).
fn replica_order(n: u32) -> Value {
    OrderBody::new(format!("ON-REPLICA-{n}"))
        .lines(&[Line::new("TEA-250", "Longjing tea", 1, 8800)])
        .consignee(format!("诸葛亮{n}"), format!("1391234{n:04}"))
        .address(
            Area {
                province: "湖北省",
                city: "襄阳市",
                district: "隆中区",
                postal_code: "441000",
            },
            format!("卧龙岗路 {n} 号"),
        )
        .email(format!("kongming{n}@example.com"))
        .json()
}

fn plaintext(n: u32) -> Vec<Vec<u8>> {
    let b = replica_order(n);
    [
        &b["consignee"]["name"],
        &b["consignee"]["mobile"],
        &b["consignee"]["address"]["street"],
        &b["contact"]["email"],
    ]
    .iter()
    .map(|v| v.as_str().unwrap().as_bytes().to_vec())
    .collect()
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Places order `n` through `base` and shares it with sf-express.
async fn place_shared(client: &reqwest::Client, base: &str, n: u32) -> String {
    let (s, placed) = send(
        client
            .post(format!("{base}/v1/orders"))
            .bearer_auth(CHECKOUT)
            .json(&replica_order(n)),
    )
    .await;
    assert_eq!(s, 201, "{placed}");
    let id = placed["order_id"].as_str().unwrap().to_owned();
    let (s, shared) = send(
        client
            .post(format!("{base}/v1/orders/{id}/shares"))
            .bearer_auth(CHECKOUT)
            .json(&json!({"party": {"kind": "logistics", "id": "sf-express"}, "fields": ["shipping", "contact"]})),
    )
    .await;
    assert_eq!(s, 200, "{shared}");
    id
}

/// The shipping view of `id` on `base` once it has version `min` or more
/// (404 until `base` has projected the share: a view answers at once for an
/// order the party cannot see yet; 503 while it waits for `min`).
async fn shipping_view(client: &reqwest::Client, base: &str, id: &str, min: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = send(
            client
                .get(format!(
                    "{base}/v1/shipping/sf-express/orders/{id}?min_version={min}"
                ))
                .bearer_auth(LOGISTICS_SF),
        )
        .await;
        if s == 200 {
            return v;
        }
        assert!(
            (s == 503 || s == 404) && Instant::now() < deadline,
            "shipping view of {id} on {base}: {s} {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every entry of a feed, page by page, each page from the next node of
/// `bases` in turn: (position, order id, change, version).
async fn walk_feed(
    client: &reqwest::Client,
    bases: &[String],
    path: &str,
    token: &str,
    limit: usize,
) -> Vec<(String, String, String, u64)> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    let mut turn = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let base = &bases[turn % bases.len()];
        let (s, page) = send(
            client
                .get(format!("{base}{path}?limit={limit}&after={cursor}"))
                .bearer_auth(token),
        )
        .await;
        assert!(Instant::now() < deadline, "walking {path} took too long");
        if s == 503 {
            continue; // view_lagging on this node: ask it again
        }
        assert_eq!(s, 200, "{base}{path}: {page}");
        turn += 1;
        let changes = page["changes"].as_array().unwrap();
        if changes.is_empty() {
            return out;
        }
        for c in changes {
            out.push((
                c["position"].as_str().unwrap().to_owned(),
                c["order_id"].as_str().unwrap().to_owned(),
                c["change"].as_str().unwrap().to_owned(),
                c["version"].as_u64().unwrap(),
            ));
        }
        cursor = page["next_cursor"].as_str().unwrap().to_owned();
    }
}

/// `GET /v1/cluster` on `base`.
async fn cluster_view(client: &reqwest::Client, base: &str) -> Value {
    let (s, v) = send(
        client
            .get(format!("{base}/v1/cluster"))
            .bearer_auth(AUDITOR),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v
}

/// Waits until every live node of the cluster (as `base` sees it) has
/// projected as far as `base` itself.
async fn converged(client: &reqwest::Client, base: &str, nodes: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = cluster_view(client, base).await;
        let live: Vec<&Value> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["live"] == true)
            .collect();
        let mine = live
            .iter()
            .find(|m| m["this_node"] == true)
            .map(|m| m["views"]["projected"].clone());
        if live.len() == nodes
            && live
                .iter()
                .all(|m| Some(&m["views"]["projected"]) == mine.as_ref())
        {
            return;
        }
        assert!(Instant::now() < deadline, "the nodes did not converge: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wrapped subkeys of `id` from the key topic, and its sealed fields from
/// the event log.
fn key_and_sealed_bytes(brokers: &str, topic: &str, id: &str) -> Vec<Vec<u8>> {
    let id = uuid::Uuid::parse_str(id).unwrap();
    let mut out = Vec::new();
    for (k, v) in common::raw_records(brokers, &orderlog::crypto::keys_topic_for(topic)) {
        if k == id.as_bytes() && !v.is_empty() {
            let row: orderlog::crypto::StoredKey =
                orderlog::store::decode_value(orderlog::store::CF_ORDER_KEYS, &v).unwrap();
            out.extend(row.wrapped.into_iter().map(|(_, w)| w));
        }
    }
    for (k, v) in common::raw_records(brokers, topic) {
        if k == id.as_bytes()
            && let Ok(env) = orderlog::events::decode(&v)
        {
            out.extend(env.sealed.into_iter().map(|s| s.ciphertext));
        }
    }
    assert!(out.len() >= 3, "found {id}'s wrapped key and sealed fields");
    out
}

/// Polls `GET /v1/orders/{id}/erasure` on `base` until it says every one
/// of `nodes` live nodes destroyed the key and purged its disk.
async fn erasure_complete(client: &reqwest::Client, base: &str, id: &str, nodes: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, st) = send(
            client
                .get(format!("{base}/v1/orders/{id}/erasure"))
                .bearer_auth(PRIVACY),
        )
        .await;
        let listed = st["receipt"]["nodes"].as_array().map_or(0, Vec::len);
        if s == 200 && st["receipt"]["complete"] == true && listed == nodes {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base} does not confirm the erasure of {id} on {nodes} nodes: {s} {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts a node no longer shows `id`'s personal data anywhere.
async fn unreadable_on(client: &reqwest::Client, base: &str, id: &str) {
    let (s, o) = send(
        client
            .get(format!("{base}/v1/orders/{id}"))
            .bearer_auth(CHECKOUT),
    )
    .await;
    assert_eq!(s, 200, "{o}");
    assert_eq!(o["status"], "erased", "{base}: {o}");
    assert_eq!(o["personal"], Value::Null, "{base}: {o}");
    let v = shipping_view(client, base, id, 3).await;
    assert_eq!(
        (
            &v["consignee"],
            &v["contact"],
            v["fields"].as_array().map(Vec::len)
        ),
        (&Value::Null, &Value::Null, Some(0)),
        "{base}: {v}"
    );
}

async fn replicas(
    client: &reqwest::Client,
    nodes: &[Node],
    bases: &[String],
    children: &mut [Child],
    events: usize,
    data_root: &std::path::Path,
) -> Replicas {
    let brokers = &nodes[0].brokers;
    let topic = &nodes[0].topic;
    let mut secrets = Vec::new();
    converged(client, &bases[0], NODES).await;
    let c = cluster_view(client, &bases[1]).await;
    let owners = c["partition_owners"].as_object().unwrap();
    assert!(
        owners.values().all(Value::is_string),
        "every partition has a live owner: {c}"
    );

    // Feeds: a round-robin of the nodes, page by page, gives what one node gives.
    let merchant = "/v1/merchants/m-1/orders";
    let one = walk_feed(client, &bases[..1], merchant, MERCHANT_M1, 50).await;
    let spread = walk_feed(client, bases, merchant, MERCHANT_M1, 37).await;
    assert!(one.len() > 100, "the merchant feed holds the load's orders");
    assert_eq!(spread, one, "the merchant feed through three nodes");
    let shared: Vec<String> = {
        let mut ids = Vec::new();
        for n in 0..12 {
            ids.push(place_shared(client, &bases[n as usize % NODES], n).await);
        }
        ids
    };
    converged(client, &bases[0], NODES).await;
    let shipping = "/v1/shipping/sf-express/orders";
    // The members' heartbeats may all still show the positions from just
    // before the last share: the feed is read until it has caught up.
    let deadline = Instant::now() + Duration::from_secs(20);
    let one = loop {
        let one = walk_feed(client, &bases[..1], shipping, LOGISTICS_SF, 5).await;
        if one.len() >= shared.len() || Instant::now() >= deadline {
            break one;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Likewise through the other nodes.
    let spread = loop {
        let spread = walk_feed(client, bases, shipping, LOGISTICS_SF, 3).await;
        if spread == one || Instant::now() >= deadline {
            break spread;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        one.len(),
        shared.len(),
        "one shipping entry per shared order"
    );
    assert_eq!(spread, one, "the shipping feed through three nodes");
    eprintln!("feeds through a round-robin of the nodes equal one node's: merchant and shipping");

    // Erasure on every node: erased through node 0, unreadable on 1 and 2
    // once the receipt is answered, which lists all three as purged.
    let x = &shared[0];
    for base in bases {
        let v = shipping_view(client, base, x, 2).await;
        assert!(v["consignee"]["name"].is_string(), "{base} reads {x}: {v}");
    }
    secrets.extend(key_and_sealed_bytes(brokers, topic, x));
    secrets.extend(plaintext(0));
    let t = Instant::now();
    let (s, r) = send(
        client
            .post(format!("{}/v1/orders/{x}/erase", bases[0]))
            .bearer_auth(PRIVACY),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let receipt = &r["receipt"];
    let done: Vec<bool> = receipt["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["done"] == true)
        .collect();
    assert_eq!(
        (done, &receipt["complete"]),
        (vec![true; NODES], &Value::Bool(true)),
        "the receipt lists every live node as purged: {receipt}"
    );
    eprintln!(
        "erased through node 0; every node destroyed and purged in {:?} (receipt timings {})",
        t.elapsed(),
        receipt["timings_ms"]
    );
    for base in &bases[1..] {
        unreadable_on(client, base, x).await;
        erasure_complete(client, base, x, NODES).await;
    }

    // A node that was down: node 2 stops, an order it holds is erased, it
    // starts again and applies the erasure before it is ready.
    let y = &shared[1];
    shipping_view(client, &bases[2], y, 2).await;
    secrets.extend(key_and_sealed_bytes(brokers, topic, y));
    secrets.extend(plaintext(1));
    signal(&children[2], "TERM");
    assert!(children[2].wait().unwrap().success());
    let (s, r) = send(
        client
            .post(format!("{}/v1/orders/{y}/erase", bases[1]))
            .bearer_auth(PRIVACY),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let listed: Vec<&str> = r["receipt"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), NODES - 1, "a stopped node is not listed: {r}");
    assert_eq!(r["receipt"]["complete"], true, "{r}");
    children[2] = nodes[2].spawn();
    wait_ready(client, &bases[2], &mut children[2]).await;
    unreadable_on(client, &bases[2], y).await;
    erasure_complete(client, &bases[2], y, NODES).await;
    eprintln!("node 2, down during an erasure, applied it before it was ready");

    // A new node on an empty data directory: it catches up and becomes
    // ready, then answers any read in full.
    let mut fresh = Node::new(brokers, 3, &data_root.join("n-new"));
    fresh.topic = topic.clone();
    fresh.kek = nodes[0].kek.clone();
    fresh.args = nodes[0].args.clone();
    let t = Instant::now();
    let mut child = Children(vec![fresh.spawn()]);
    wait_ready(client, &fresh.base(), &mut child[0]).await;
    let ready_in = t.elapsed();
    eprintln!(
        "a new node on an empty data directory was ready in {ready_in:?} ({events} events in the log)"
    );
    unreadable_on(client, &fresh.base(), x).await;
    unreadable_on(client, &fresh.base(), y).await;
    let z = &shared[2];
    let v = shipping_view(client, &fresh.base(), z, 2).await;
    assert!(v["consignee"]["name"].is_string(), "{v}");
    let all: Vec<String> = bases.iter().cloned().chain([fresh.base()]).collect();
    converged(client, &bases[0], NODES + 1).await;
    let one = walk_feed(client, &bases[..1], merchant, MERCHANT_M1, 50).await;
    let spread = walk_feed(client, &all, merchant, MERCHANT_M1, 41).await;
    assert_eq!(spread, one, "the merchant feed through four nodes");
    signal(&child[0], "TERM");
    assert!(child[0].wait().unwrap().success());
    Replicas {
        new_node_dir: fresh.data_dir.clone(),
        secrets,
    }
}

/// Bytes scanned; panics on the first file that holds one of `secrets`.
fn scan_dirs(dirs: &[&std::path::Path], secrets: &[Vec<u8>]) -> usize {
    let mut scanned = 0;
    let mut stack: Vec<std::path::PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        scanned += bytes.len();
        for s in secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_slice()),
                "{} holds an erased order's bytes ({} bytes long)",
                path.display(),
                s.len()
            );
        }
    }
    assert!(scanned > 0);
    scanned
}
