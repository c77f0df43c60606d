//! A load generator for black-box reliability tests: tasks that place
//! orders and move each on (share, cancel, erase) against a running `orderlog
//! serve`, record every acknowledged command, and the checks that every
//! acknowledged command is in the log exactly once and the views equal a
//! clean rebuild. Used by the crash and broker-fault tests.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orderlog::events;
use orderlog::service::log_reader::HEADER_IDEMPOTENCY_KEY;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::app::{AUDITOR, CHECKOUT, LOGISTICS_SF, MERCHANT_M1, PRIVACY};

pub const PARTITIONS: &str = "3";

/// `name` from the environment, parsed, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A seed from `name`, or from the clock (print it, so a run can be repeated).
pub fn seed(name: &str) -> u64 {
    env_or(
        name,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    )
}

/// `LOAD_TASKS` load tasks running against a node.
pub struct Load {
    /// Nodes (indexes into the bases) the load leaves out, as a load
    /// balancer's health check would: a node being killed or paused.
    pub down: Arc<Mutex<BTreeSet<usize>>>,
    stop: Arc<AtomicBool>,
    pub acks: Arc<Mutex<Acks>>,
    pub seen: Arc<Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(base: &str, seed: u64) -> Self {
        Self::start_on(&[base.to_owned()], seed)
    }

    /// Load tasks spreading their requests round-robin over `bases`.
    pub fn start_on(bases: &[String], seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Acks::default()));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let down = Arc::new(Mutex::new(BTreeSet::new()));
        let tasks = (0..LOAD_TASKS as u64)
            .map(|t| {
                tokio::spawn(load(
                    t,
                    seed,
                    (bases.to_vec(), down.clone()),
                    stop.clone(),
                    acks.clone(),
                    seen.clone(),
                ))
            })
            .collect();
        Load {
            down,
            stop,
            acks,
            seen,
            tasks,
        }
    }

    /// Commands acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acks.lock().unwrap().acked.len()
    }

    /// Stops the tasks (each finishes its order) and hands over what they saw.
    pub async fn finish(self) -> (Acks, Seen) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acks = std::mem::take(&mut *self.acks.lock().unwrap());
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        (acks, seen)
    }
}
pub const LOAD_TASKS: usize = 6;

/// What an acknowledged command did, as its event kind in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum What {
    Placed,
    Shared,
    Cancelled,
    Erased,
}

impl What {
    fn kind(self) -> &'static str {
        match self {
            What::Placed => "OrderPlaced",
            What::Shared => "OrderShared",
            What::Cancelled => "OrderCancelled",
            What::Erased => "OrderErased",
        }
    }
}

#[derive(Debug, Default)]
pub struct Acks {
    /// (order id, version it answered) -> what.
    pub acked: BTreeMap<(uuid::Uuid, u64), What>,
    pub erased: BTreeSet<uuid::Uuid>,
    /// Order number -> the order id its acknowledged placement answered.
    pub placed: BTreeMap<String, uuid::Uuid>,
    /// Two acknowledged commands that answered the same order version.
    pub duplicates: Vec<(uuid::Uuid, u64, What, What)>,
    /// When each acknowledgement arrived, and for which order.
    pub times: Vec<(Instant, uuid::Uuid)>,
}

impl Acks {
    fn record(&mut self, id: uuid::Uuid, version: u64, what: What) {
        self.times.push((Instant::now(), id));
        if let Some(before) = self.acked.insert((id, version), what) {
            self.duplicates.push((id, version, before, what));
        }
        if what == What::Erased {
            self.erased.insert(id);
        }
    }
}

pub struct Node {
    pub brokers: String,
    pub replication: u32,
    pub topic: String,
    pub data_dir: std::path::PathBuf,
    pub listen: String,
    pub kek: String,
    pub tokens: String,
    /// More `serve` arguments.
    pub args: Vec<String>,
    /// More environment variables for `serve`.
    pub env: Vec<(String, String)>,
}

impl Node {
    /// A node on a new topic, a free port and a new data dir under `dir`.
    pub fn new(brokers: &str, replication: u32, dir: &std::path::Path) -> Self {
        Node {
            brokers: brokers.to_owned(),
            replication,
            topic: super::unique("orders.load"),
            data_dir: dir.join("node"),
            listen: format!("127.0.0.1:{}", free_port()),
            kek: orderlog::crypto::Kek::generate().to_text().to_string(),
            tokens: format!(
                "{CHECKOUT}=checkout,{LOGISTICS_SF}=logistics:sf-express,{MERCHANT_M1}=merchant:m-1,{PRIVACY}=privacy,{AUDITOR}=auditor"
            ),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn spawn(&self) -> Child {
        Command::new(env!("CARGO_BIN_EXE_orderlog"))
            .args(["serve", "--brokers", &self.brokers, "--topic"])
            .arg(&self.topic)
            .args(["--partitions", PARTITIONS, "--replication"])
            .arg(self.replication.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", &self.listen])
            .args(&self.args)
            .env("ORDERLOG_KEK", &self.kek)
            .env("ORDERLOG_TOKENS", &self.tokens)
            .env("ORDERLOG_LOG", "warn")
            .env_remove("ORDERLOG_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn wait_ready(client: &reqwest::Client, base: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("serve exited during start: {s:?}");
        }
        let r = client
            .get(format!("{base}/v1/orders/{}", uuid::Uuid::now_v7()))
            .bearer_auth(CHECKOUT)
            .send()
            .await;
        if let Ok(r) = r
            && r.status() == 404
        {
            return;
        }
        assert!(Instant::now() < deadline, "serve did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn order_body(n: u64) -> Value {
    super::orders::OrderBody::new(format!("ON-CRASH-{n}"))
        .email("zhang.san@example.com")
        .json()
}

/// What the load saw: answers by status (and slowest), and the 5xx that
/// are not an outage's 503.
#[derive(Debug, Default)]
pub struct Seen {
    pub by_status: BTreeMap<String, (u64, Duration)>,
    /// 503 answers by error code.
    pub unavailable: BTreeMap<String, u64>,
    /// The slowest answer (of any kind) per command.
    pub slowest: BTreeMap<What, Duration>,
    /// Erasure receipts that say the views had not dropped the fields yet.
    pub erasures_views_pending: u64,
    pub errors: Vec<String>,
}

impl Seen {
    /// Every answer was a success, a refusal, or a retryable 503 whose code
    /// says nothing was written, the outcome is unknown, or the partition is
    /// moving between nodes; no other 5xx.
    pub fn assert_only_retryable_failures(&self) {
        assert!(
            self.errors.is_empty(),
            "5xx other than 503: {:?}",
            self.errors
        );
        assert!(
            self.unavailable.keys().all(|c| {
                ["log_unavailable", "outcome_unknown", "partition_moving"].contains(&c.as_str())
            }),
            "503 codes: {:?}",
            self.unavailable
        );
    }
}

/// What became of one attempt.
pub enum Answer {
    Acked(u64, Value),
    /// No answer, or one saying try again (outage, 503, key in flight).
    Retry,
    Refused,
}

/// Sends one command once. Connection errors and 503 during an outage are
/// expected; any other 5xx is a bug and recorded as one.
pub async fn send(req: reqwest::RequestBuilder, what: What, seen: &Mutex<Seen>) -> Answer {
    let t = Instant::now();
    let r = req.timeout(Duration::from_secs(15)).send().await;
    let label = match &r {
        Ok(r) => r.status().as_u16().to_string(),
        Err(e) if e.is_timeout() => "timeout".to_owned(),
        Err(_) => "connection error".to_owned(),
    };
    {
        let mut s = seen.lock().unwrap();
        let e = s.by_status.entry(label).or_default();
        e.0 += 1;
        e.1 = e.1.max(t.elapsed());
        let slowest = s.slowest.entry(what).or_default();
        *slowest = (*slowest).max(t.elapsed());
    }
    let Ok(r) = r else { return Answer::Retry };
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return match body["version"].as_u64() {
            Some(v) => Answer::Acked(v, body),
            None => Answer::Retry,
        };
    }
    if status == 503 {
        let code = body["error"]["code"].as_str().unwrap_or("?").to_owned();
        *seen.lock().unwrap().unavailable.entry(code).or_default() += 1;
        return Answer::Retry;
    }
    if body["error"]["code"] == "idempotency_key_in_flight" {
        return Answer::Retry;
    }
    if status.is_server_error() {
        seen.lock()
            .unwrap()
            .errors
            .push(format!("{status}: {body}"));
    }
    Answer::Refused
}

/// Sends a command until it gets a definite answer (bounded), with the same
/// Idempotency-Key each time when one is given: a retry of a command that
/// landed before a crash must answer the first outcome, not write again.
pub async fn send_retrying(
    make: impl Fn() -> reqwest::RequestBuilder,
    what: What,
    key: Option<&str>,
    seen: &Mutex<Seen>,
) -> Option<(u64, Value)> {
    // Bounded by time, not attempts: while a writer settles its partition,
    // a retry answers 409 (key in flight) at once, for as long as it takes.
    let give_up = Instant::now() + Duration::from_secs(120);
    while Instant::now() < give_up {
        let mut req = make();
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        match send(req, what, seen).await {
            Answer::Acked(v, body) => return Some((v, body)),
            Answer::Refused => return None,
            // Without a key a retry could do the command twice: give up.
            Answer::Retry if key.is_none() => return None,
            Answer::Retry => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    None
}

/// One load task: places orders and moves each on (share, cancel, erase)
/// until `stop`; records every acknowledged command.
pub async fn load(
    task: u64,
    seed: u64,
    (bases, down): (Vec<String>, Arc<Mutex<BTreeSet<usize>>>),
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Acks>>,
    seen: Arc<Mutex<Seen>>,
) {
    let client = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(task));
    let mut n = task * 1_000_000;
    // Round-robin over the nodes, request by request (retries included).
    let next = std::sync::atomic::AtomicUsize::new(task as usize);
    let post = |path: String, token: &str| {
        let up: Vec<usize> = {
            let down = down.lock().unwrap();
            (0..bases.len()).filter(|i| !down.contains(i)).collect()
        };
        let pick = next.fetch_add(1, Ordering::Relaxed);
        let base = match up.len() {
            0 => &bases[pick % bases.len()],
            n => &bases[up[pick % n]],
        };
        client.post(format!("{base}{path}")).bearer_auth(token)
    };
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let place_key = format!("crash-{task}-{n}-place");
        let Some((v, body)) = send_retrying(
            || post("/v1/orders".into(), CHECKOUT).json(&order_body(n)),
            What::Placed,
            Some(&place_key),
            &seen,
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let id: uuid::Uuid = body["order_id"].as_str().unwrap().parse().unwrap();
        {
            let mut a = acks.lock().unwrap();
            a.record(id, v, What::Placed);
            a.placed.insert(format!("ON-CRASH-{n}"), id);
        }
        let steps = rng.gen_range(0..4);
        let mut cancelled = false;
        for step in 0..steps {
            let (path, token, payload, what) = match rng.gen_range(0..4) {
                // A new provider each time: sharing again with the same one
                // is a no-op that answers the current version.
                0 | 1 => (
                    format!("/v1/orders/{id}/shares"),
                    CHECKOUT,
                    json!({"party": {"kind": "logistics", "id": format!("provider-{step}")}, "fields": ["shipping"]}),
                    What::Shared,
                ),
                2 => (
                    format!("/v1/orders/{id}/cancel"),
                    CHECKOUT,
                    json!({"reason": "customer_request"}),
                    What::Cancelled,
                ),
                _ => (
                    format!("/v1/orders/{id}/erase"),
                    PRIVACY,
                    json!({}),
                    What::Erased,
                ),
            };
            if what == What::Shared && cancelled {
                continue;
            }
            // Erasure takes no Idempotency-Key: it is sent once.
            let key = (what != What::Erased).then(|| format!("crash-{task}-{n}-{step}"));
            if let Some((v, body)) = send_retrying(
                || post(path.clone(), token).json(&payload),
                what,
                key.as_deref(),
                &seen,
            )
            .await
            {
                if what == What::Erased && body.to_string().contains("views: pending") {
                    seen.lock().unwrap().erasures_views_pending += 1;
                }
                acks.lock().unwrap().record(id, v, what);
                if what == What::Cancelled {
                    cancelled = true;
                }
                if what == What::Erased {
                    break;
                }
            }
        }
    }
}

/// Waits until the node's merchant view holds every order at its last
/// version (the projector has consumed the whole log).
pub async fn wait_views_caught_up(
    client: &reqwest::Client,
    base: &str,
    per_order: &BTreeMap<uuid::Uuid, Vec<(events::Envelope, Vec<u8>)>>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for (id, evs) in per_order {
        loop {
            let r = client
                .get(format!(
                    "{base}/v1/merchants/m-1/orders/{id}?min_version={}",
                    evs.len()
                ))
                .bearer_auth(MERCHANT_M1)
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                break;
            }
            if Instant::now() >= deadline {
                let ready = match client.get(format!("{base}/readyz")).send().await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                panic!(
                    "views did not catch up with order {id} (version {}): {}; /readyz: {ready}",
                    evs.len(),
                    r.status()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What the log holds, checked against the acknowledgements.
pub struct LogCheck {
    pub records: usize,
    pub per_order: BTreeMap<uuid::Uuid, Vec<(events::Envelope, Vec<u8>)>>,
    /// Events that no acknowledged command answered, by kind.
    pub unacked: BTreeMap<&'static str, u64>,
}

impl LogCheck {
    /// Orders with an `OrderErased` event in the log.
    pub fn erased(&self) -> BTreeSet<uuid::Uuid> {
        self.per_order
            .iter()
            .filter(|(_, evs)| evs.iter().any(|(e, _)| e.kind() == "OrderErased"))
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Reads `topic` and checks it against `acks`: every acknowledged command
/// in the log exactly once at the version it answered, chains without gaps,
/// no order number placed twice, and nothing but erasures (sent without an
/// Idempotency-Key, so never retried) in the log unacknowledged.
pub fn check_log(brokers: &str, topic: &str, acks: &Acks) -> LogCheck {
    // The log: every acknowledged command exactly once, chains intact.
    let records = super::committed_records(brokers, topic);
    let mut per_order: BTreeMap<uuid::Uuid, Vec<(events::Envelope, Vec<u8>)>> = BTreeMap::new();
    for (key, value) in &records {
        // `raw_records` appends headers (idempotency key and request digest)
        // to the value; the record itself ends where the envelope does.
        let value = match events::decode(value) {
            Err(events::DecodeError::TrailingBytes(n)) => {
                let (record, headers) = value.split_at(value.len() - n);
                assert!(
                    headers.starts_with(HEADER_IDEMPOTENCY_KEY.as_bytes()),
                    "only headers follow the envelope"
                );
                record
            }
            _ => &value[..],
        };
        let env = events::decode(value).expect("every record decodes");
        assert_eq!(&key[..], env.meta.order_id.as_bytes());
        per_order
            .entry(env.meta.order_id)
            .or_default()
            .push((env, value.to_vec()));
    }
    for (id, evs) in &per_order {
        let mut prev = [0u8; 32];
        for (i, (env, bytes)) in evs.iter().enumerate() {
            assert_eq!(
                env.meta.sequence,
                i as u64 + 1,
                "order {id}: sequences 1..n without gaps or repeats"
            );
            assert_eq!(env.meta.prev_hash, prev, "order {id}: hash chain");
            prev = events::record_hash(bytes);
        }
    }
    for ((id, version), what) in &acks.acked {
        let evs = per_order
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged order {id} has no events"));
        let matching: Vec<_> = evs
            .iter()
            .filter(|(e, _)| e.meta.sequence == *version)
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "order {id} version {version} ({what:?}) in the log exactly once"
        );
        assert_eq!(matching[0].0.kind(), what.kind(), "order {id} v{version}");
    }
    // Placements were retried with their Idempotency-Key until answered: no
    // order number was placed twice, and each answered the order it landed as.
    let mut placements: BTreeMap<String, Vec<uuid::Uuid>> = BTreeMap::new();
    for (id, evs) in &per_order {
        if let orderlog::events::Body::OrderPlaced { order_number, .. } = &evs[0].0.body {
            placements
                .entry(order_number.to_string())
                .or_default()
                .push(*id);
        }
    }
    let twice: Vec<_> = placements.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(twice.is_empty(), "orders placed twice: {twice:?}");
    for (number, id) in &acks.placed {
        assert_eq!(placements[number], vec![*id], "{number}");
    }
    // Commands with an Idempotency-Key were retried until answered, so only
    // erasures (sent once, without a key) may have landed unacknowledged.
    let mut unacked: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (id, evs) in &per_order {
        for (e, _) in evs {
            if !acks.acked.contains_key(&(*id, e.meta.sequence)) {
                *unacked.entry(e.kind()).or_default() += 1;
            }
        }
    }
    assert!(
        unacked.keys().all(|k| *k == "OrderErased"),
        "events no acknowledged command answered: {unacked:?}"
    );
    // Every acknowledged erasure's order has exactly one erasure event.
    for id in &acks.erased {
        let n = per_order[id]
            .iter()
            .filter(|(e, _)| e.kind() == "OrderErased")
            .count();
        assert_eq!(n, 1, "order {id}: one OrderErased");
    }
    LogCheck {
        records: records.len(),
        per_order,
        unacked,
    }
}

/// Every order erased in the log reads back without personal data: those
/// whose erasure was acknowledged (`check_log` found each in the log) and
/// those whose erasure landed unanswered (killed mid-request), whose key
/// destruction is finished at the next start.
pub async fn check_erased_unreadable(client: &reqwest::Client, base: &str, log: &LogCheck) {
    for id in log.erased() {
        let r = client
            .get(format!("{base}/v1/orders/{id}"))
            .bearer_auth(CHECKOUT)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let order: Value = r.json().await.unwrap();
        assert_eq!(order["personal"], Value::Null, "erased order {id}: {order}");
        assert!(!order.to_string().contains("13800138000"));
    }
}

/// Lets the node catch up, stops it with SIGTERM (it must exit 0), and
/// compares its views with a clean rebuild from the log; nothing may have
/// been dead-lettered.
pub async fn stop_and_compare_with_rebuild(
    client: &reqwest::Client,
    node: &Node,
    mut child: Child,
    log: &LogCheck,
    what: &str,
) {
    // The views: let the node catch up, stop it cleanly, compare with a rebuild.
    wait_views_caught_up(client, &node.base(), &log.per_order).await;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "serve exit status {status:?}");
    check_no_wrapped_key_of_erased_on_disk(node, log);

    let clean = node.data_dir.with_file_name("clean");
    let status = Command::new(env!("CARGO_BIN_EXE_orderlog"))
        .args([
            "project",
            "--brokers",
            &node.brokers,
            "--topic",
            &node.topic,
        ])
        .arg("--data-dir")
        .arg(&clean)
        .args(["--all-partitions", "--until-caught-up"])
        .env("ORDERLOG_KEK", &node.kek)
        .env("ORDERLOG_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let digest = |dir: &std::path::Path| {
        let store = orderlog::store::Store::open(dir).unwrap();
        orderlog::projections::query::digest(&store).unwrap()
    };
    assert_eq!(
        digest(&node.data_dir),
        digest(&clean),
        "the node's views after {what} equal a clean rebuild"
    );
    assert!(
        super::raw_records(&node.brokers, &format!("{}.dead-letter", node.topic)).is_empty(),
        "nothing was dead-lettered"
    );
}

/// No file of the stopped node's data directory holds a wrapped subkey of
/// an order erased in the log (every row the key topic ever held for it):
/// the purge after an erasure is durable, whatever crashed in between.
pub fn check_no_wrapped_key_of_erased_on_disk(node: &Node, log: &LogCheck) {
    use orderlog::crypto::StoredKey;
    const PREFIX: usize = 16;
    let erased = log.erased();
    let keys_topic = orderlog::crypto::replica::keys_topic_for(&node.topic);
    let mut needles: BTreeMap<[u8; PREFIX], Vec<u8>> = BTreeMap::new();
    for (k, v) in super::raw_records(&node.brokers, &keys_topic) {
        let Ok(id) = uuid::Uuid::from_slice(&k) else {
            continue;
        };
        if v.is_empty() || !erased.contains(&id) {
            continue;
        }
        // raw_records appends headers to the value; key rows carry none.
        let Ok(row) = orderlog::store::decode_value::<StoredKey>("order_keys", &v) else {
            continue;
        };
        for (_, w) in row.wrapped {
            needles.insert(w[..PREFIX].try_into().unwrap(), w);
        }
    }
    let mut scanned = 0usize;
    for entry in std::fs::read_dir(&node.data_dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        scanned += bytes.len();
        for (at, window) in bytes.windows(PREFIX).enumerate() {
            if let Some(w) = needles.get(window) {
                assert!(
                    !bytes[at..].starts_with(w),
                    "{} still holds a wrapped subkey of an erased order",
                    path.display()
                );
            }
        }
    }
    eprintln!(
        "data directory scanned: {scanned} bytes, no wrapped subkey of {} erased orders ({} subkeys)",
        erased.len(),
        needles.len()
    );
}

/// Every order erased in the log has a tombstone as its last row in the key
/// replica topic: its wrapped key is not left there after the erasure (the
/// node retries the tombstone until Kafka takes it, so wait up to 30 s).
pub async fn check_key_replica_shredded(brokers: &str, topic: &str, log: &LogCheck) {
    let erased = log.erased();
    let keys_topic = orderlog::crypto::replica::keys_topic_for(topic);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut last: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (k, v) in super::committed_records(brokers, &keys_topic) {
            last.insert(k, v);
        }
        let left: Vec<_> = erased
            .iter()
            .filter(|id| {
                last.get(id.as_bytes().as_slice())
                    .is_none_or(|v| !v.is_empty())
            })
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "erased orders whose last key replica row is not a tombstone: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every check after a load against `node`: the log against `acks`, erased
/// orders unreadable over the API and shredded in the key replica, and the
/// node's views against a clean rebuild (which stops `child`).
pub async fn check_after_load(
    client: &reqwest::Client,
    node: &Node,
    child: Child,
    acks: &Acks,
    what: &str,
    t0: Instant,
) -> LogCheck {
    let log = check_log(&node.brokers, &node.topic, acks);
    eprintln!(
        "log checked: {} records ({:?} never acknowledged), {} orders ({:?})",
        log.records,
        log.unacked,
        log.per_order.len(),
        t0.elapsed()
    );
    check_erased_unreadable(client, &node.base(), &log).await;
    check_key_replica_shredded(&node.brokers, &node.topic, &log).await;
    stop_and_compare_with_rebuild(client, node, child, &log, what).await;
    log
}
