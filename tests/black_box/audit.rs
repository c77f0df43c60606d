//! The audit commands against the real broker, run as the real binary:
//! verify (a clean log, then tampered, withheld and unapplied records),
//! replay, history (sealed unless revealed), shares and erasure receipts.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command as Process, Output};
use std::time::Duration;

use common::app::TestApp;
use orderlog::domain::{
    CancelReason, Command, ErasureScope, Event, FieldClass, Party, fixtures,
    validation::{MerchantId, ProviderId},
};
use orderlog::events::{self, EventMeta};
use orderlog::kafka::partition_of;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use uuid::Uuid;

/// Where the binary finds the log and the stopped node.
struct Node {
    brokers: String,
    topic: String,
    data_dir: tempfile::TempDir,
    kek: String,
}

impl Node {
    /// Runs `orderlog <args>` against this node.
    fn run(&self, args: &[&str]) -> Output {
        Process::new(env!("CARGO_BIN_EXE_orderlog"))
            .args(args)
            .args(["--brokers", &self.brokers, "--topic", &self.topic])
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .env("ORDERLOG_KEK", &self.kek)
            .env("ORDERLOG_LOG", "info,rdkafka=warn")
            .output()
            .expect("run the orderlog binary")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every personal string of sample order `n`.
fn personal_strings(n: u32) -> Vec<String> {
    vec![
        format!("张三丰{n}"),
        format!("138{:08}", n),
        format!("zhang.sanfeng{n}@example.com"),
        format!("0755-{:08}", 26_000_000 + n),
        fixtures::id_number(n),
        format!("高新南七道{n}号"),
    ]
}

fn assert_no_personal(out: &str, orders: impl IntoIterator<Item = u32>) {
    for n in orders {
        for s in personal_strings(n) {
            assert!(!out.contains(&s), "personal data {s:?} in output:\n{out}");
        }
    }
}

async fn exec(app: &TestApp, order: Uuid, command: Command) {
    app.app
        .service
        .execute(order, command, None, None)
        .await
        .unwrap_or_else(|e| panic!("command on {order}: {e}"));
}

fn sf() -> Party {
    Party::Logistics(ProviderId::parse("p", "sf-express").unwrap())
}

fn m1() -> Party {
    Party::Merchant(MerchantId::parse("m", "m-1").unwrap())
}

/// What the scenario did, to check the reports against.
#[derive(Default)]
struct Scenario {
    orders: BTreeMap<u32, Uuid>,
    shared_with_sf: BTreeSet<Uuid>,
    shared_with_m1: BTreeSet<Uuid>,
    erased_whole: BTreeSet<Uuid>,
    erased_identity: BTreeSet<Uuid>,
    events: u64,
}

/// `count` orders: every one placed; even ones shared with sf-express, every
/// third with merchant m-1; every fifth cancelled; every seventh erased
/// whole; n % 4 == 1 lose their identity class.
async fn scenario(app: &TestApp, count: u32) -> Scenario {
    let mut s = Scenario::default();
    for n in 1..=count {
        let id = Uuid::now_v7();
        exec(app, id, Command::PlaceOrder(fixtures::new_order(n, true))).await;
        s.orders.insert(n, id);
        s.events += 1;
    }
    for (&n, &id) in &s.orders {
        if n.is_multiple_of(2) {
            let classes = BTreeSet::from([FieldClass::Shipping, FieldClass::Identity]);
            exec(
                app,
                id,
                Command::ShareOrder {
                    party: sf(),
                    classes,
                },
            )
            .await;
            s.shared_with_sf.insert(id);
            s.events += 1;
        }
        if n.is_multiple_of(3) {
            let classes = BTreeSet::from([FieldClass::Shipping]);
            exec(
                app,
                id,
                Command::ShareOrder {
                    party: m1(),
                    classes,
                },
            )
            .await;
            s.shared_with_m1.insert(id);
            s.events += 1;
        }
        if n.is_multiple_of(5) {
            let reason = CancelReason::CustomerRequest;
            exec(app, id, Command::CancelOrder { reason }).await;
            s.events += 1;
        }
        if n.is_multiple_of(7) {
            exec(
                app,
                id,
                Command::EraseOrder {
                    scope: ErasureScope::Order,
                    reason: orderlog::domain::ErasureReason::Request,
                },
            )
            .await;
            s.erased_whole.insert(id);
            s.events += 1;
        } else if n % 4 == 1 {
            let scope = ErasureScope::Classes(BTreeSet::from([FieldClass::Identity]));
            exec(
                app,
                id,
                Command::EraseOrder {
                    scope,
                    reason: orderlog::domain::ErasureReason::Request,
                },
            )
            .await;
            s.erased_identity.insert(id);
            s.events += 1;
        }
    }
    s
}

/// Waits for the node's views to reach the end of the log, then stops it
/// (so its data dir is quiescent for the audit).
async fn stop(app: TestApp) -> Node {
    let TestApp {
        app, data_dir, kek, ..
    } = app;
    // The projector's positions refresh every 500 ms: let them see the
    // latest records before asking whether it is caught up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let caught_up = {
        let p = app.projector.as_ref().expect("projector runs");
        tokio::task::block_in_place(|| p.wait_caught_up(Duration::from_secs(60)))
    };
    assert!(caught_up, "the node's projector catches up");
    let node = Node {
        brokers: app.kafka.brokers.clone(),
        topic: app.topic.clone(),
        data_dir,
        kek: kek.to_text().to_string(),
    };
    app.stop().await;
    node
}

async fn produce(app: &TestApp, order: Uuid, value: Vec<u8>) -> (i32, i64) {
    let producer: FutureProducer = app.app.kafka.client_config().create().unwrap();
    let partition = partition_of(&order, app.app.service.partitions()) as i32;
    let d = producer
        .send(
            FutureRecord::to(&app.app.topic)
                .partition(partition)
                .key(order.as_bytes().as_slice())
                .payload(&value),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    (d.partition, d.offset)
}

/// The log keys of a node with `kek`: a record under them is one an
/// orderlog node (or someone holding its KEK) wrote.
fn log_keys(kek: &orderlog::crypto::Kek) -> orderlog::crypto::LogKeys {
    orderlog::crypto::LogKeys::from_ring(&orderlog::crypto::KekRing::new(kek.clone()))
}

/// A new event of `order` as the test wants it (any sequence, any
/// prev_hash), authenticated under `keys`.
fn forge(
    keys: &orderlog::crypto::LogKeys,
    order: Uuid,
    sequence: u64,
    prev_hash: [u8; 32],
    key_id: orderlog::crypto::KeyId,
    event: Event,
) -> Vec<u8> {
    let meta = EventMeta {
        event_id: Uuid::now_v7(),
        order_id: order,
        sequence,
        occurred_at_ms: orderlog::clock::now_ms(),
        key_id,
        prev_hash,
    };
    events::encode(&events::seal_event(&event, meta, None).unwrap(), keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_log_verifies_and_the_reports_tell_who_got_what() {
    let app = TestApp::spawn().await;
    let s = scenario(&app, 42).await;
    let node = stop(app).await;

    // verify: clean, exit 0, in text and JSON.
    let out = node.run(&["verify"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "verify failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("no findings"), "{stdout}");
    let out = node.run(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["findings"], Value::Array(vec![]));
    assert_eq!(report["records"], s.events);
    assert_eq!(report["orders"], s.orders.len());
    assert_eq!(
        report["erased_orders"],
        s.erased_whole.len() + s.erased_identity.len()
    );
    assert_eq!(
        report["views"]["live_total"],
        report["views"]["replay_total"]
    );
    let all_output = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_no_personal(&all_output, s.orders.keys().copied());

    // replay: the digests printed are the node's own.
    let into = tempfile::tempdir().unwrap();
    let target = into.path().join("views");
    let out = node.run(&["replay", "--into", target.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let live = {
        let store = orderlog::store::Store::open_read_only(node.data_dir.path()).unwrap();
        orderlog::projections::query::digest(&store).unwrap()
    };
    let total_line = stdout.lines().find(|l| l.starts_with("total")).unwrap();
    assert!(
        total_line.ends_with(&live.total),
        "{stdout}\nlive {}",
        live.total
    );
    assert!(
        stdout.contains(&format!("replayed {} events (0 refused)", s.events)),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).contains("events/s"),
        "progress lines on stderr"
    );
    // ... and a second replay into the same, now full, directory is refused.
    let out = node.run(&["replay", "--into", target.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not empty"),
        "{}",
        text(&out.stderr)
    );

    // shares by party and by order.
    let out = node.run(&["shares", "--party", "logistics:sf-express", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shares: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let got: BTreeSet<Uuid> = shares
        .iter()
        .map(|r| r["order_id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, s.shared_with_sf);
    assert!(
        shares
            .iter()
            .all(|r| r["classes"] == serde_json::json!(["shipping", "identity"]))
    );
    let both = s.orders[&6];
    let out = node.run(&["shares", "--order", &both.to_string(), "--csv"]);
    let csv = text(&out.stdout);
    assert!(out.status.success());
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{csv}");
    assert!(
        rows[0].contains(",logistics:sf-express,shipping;identity,"),
        "{csv}"
    );
    assert!(rows[1].contains(",merchant:m-1,shipping,"), "{csv}");
    let out = node.run(&["shares", "--party", "merchant:m-1"]);
    let table = text(&out.stdout);
    assert!(
        table.ends_with(&format!("{} shares\n", s.shared_with_m1.len())),
        "{table}"
    );

    // receipts: every erasure listed and re-verified.
    let out = node.run(&["receipts", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let receipts: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let whole: BTreeSet<Uuid> = receipts
        .iter()
        .filter(|r| r["scope"] == "order")
        .map(|r| r["order_id"].as_str().unwrap().parse().unwrap())
        .collect();
    let partial: BTreeSet<Uuid> = receipts
        .iter()
        .filter(|r| r["scope"] == "classes")
        .map(|r| r["order_id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        (whole, partial),
        (s.erased_whole.clone(), s.erased_identity.clone())
    );
    assert!(
        receipts
            .iter()
            .all(|r| r["failures"] == Value::Array(vec![]))
    );

    // history: sealed without --reveal, opened with it, [erased] after erasure.
    let n = 2; // shared with sf-express, never erased
    let id = s.orders[&n].to_string();
    let out = node.run(&["history", &id]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("OrderPlaced") && stdout.contains("OrderShared"),
        "{stdout}"
    );
    assert!(stdout.contains("[sealed]"), "{stdout}");
    assert_no_personal(&format!("{stdout}{stderr}"), [n]);
    let out = node.run(&["history", &id, "--reveal", "--actor", "auditor-7"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(&format!("name=张三丰{n}")), "{stdout}");
    assert!(stdout.contains(&fixtures::id_number(n)), "{stdout}");
    let access = stderr
        .lines()
        .find(|l| l.contains("Personal fields revealed"))
        .unwrap_or_else(|| panic!("access logged:\n{stderr}"));
    assert!(
        access.contains(&id) && access.contains("auditor-7"),
        "{access}"
    );
    assert_no_personal(&stderr, [n]);
    let erased = s.orders[&7].to_string();
    let out = node.run(&["history", &erased, "--reveal"]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("OrderErased"), "{stdout}");
    assert_eq!(stdout.matches("[erased]").count(), 3, "{stdout}");
    assert_no_personal(&stdout, [7]);
    let identity_gone = s.orders[&1].to_string();
    let out = node.run(&["history", &identity_gone, "--reveal"]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("name=张三丰1"), "{stdout}");
    assert!(stdout.contains("identity  [erased]"), "{stdout}");
    assert!(!stdout.contains(&fixtures::id_number(1)), "{stdout}");

    // verify checks the subject index against the one a replay's views
    // call for under the node's keys: an order that lost its entry (a
    // search would miss it, a subject erasure would leave it) is a finding.
    let unindexed = s.orders[&2];
    {
        let store = orderlog::store::Store::open(node.data_dir.path()).unwrap();
        let cf = store.cf(orderlog::store::CF_SUBJECT_ORDERS);
        let row = store
            .db()
            .prefix_iterator_cf(cf, unindexed.as_bytes())
            .next()
            .expect("the order is indexed")
            .unwrap()
            .0;
        assert!(row.starts_with(unindexed.as_bytes()));
        store.db().delete_cf(cf, row).unwrap();
    }
    let out = node.run(&["verify"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let finding = stdout
        .lines()
        .find(|l| l.starts_with("FINDING subject_index_mismatch"))
        .unwrap_or_else(|| panic!("no index finding:\n{stdout}"));
    assert!(finding.contains(&unindexed.to_string()), "{finding}");
    assert_no_personal(&stdout, [2]);

    // verify compares the stored order state with a replay too: a node
    // whose state lost an order (what commands are decided against) is a
    // finding, named by its column family.
    {
        let store = orderlog::store::Store::open(node.data_dir.path()).unwrap();
        let cf = store.cf(orderlog::store::CF_ORDER_STATE);
        store.db().delete_cf(cf, s.orders[&3].as_bytes()).unwrap();
    }
    let out = node.run(&["verify"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let finding = stdout
        .lines()
        .find(|l| l.starts_with("FINDING view_digest_mismatch"))
        .unwrap_or_else(|| panic!("no digest finding:\n{stdout}"));
    assert!(finding.contains("order_state"), "{finding}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_tampered_withheld_and_unapplied_records() {
    let app = TestApp::spawn().await;
    let s = scenario(&app, 12).await;
    let record = |n: u32| app.app.service.get(s.orders[&n]).unwrap().unwrap().record;

    // Records written as a node would (under its log key): the writer bugs
    // and insider edits the chain checks catch.
    let node_keys = log_keys(&app.kek);
    // 1. A copy of a real OrderPlaced, re-encoded with one flipped byte in
    //    its ciphertext: another record under a taken sequence number.
    let tampered = s.orders[&3];
    let mut env = app.app.service.placed(tampered).unwrap().unwrap();
    let last = env.sealed[0].ciphertext.len() - 1;
    env.sealed[0].ciphertext[last] ^= 0x01;
    let (tp, to) = produce(&app, tampered, events::encode(&env, &node_keys)).await;

    // 2. A re-encoded next event of order 4 naming a wrong prev_hash.
    let unchained = s.orders[&4];
    let r = record(4);
    let forged = forge(
        &node_keys,
        unchained,
        r.state.version + 1,
        [9; 32],
        r.key_id.unwrap(),
        Event::OrderCancelled {
            reason: CancelReason::Other,
        },
    );
    let (cp, co) = produce(&app, unchained, forged).await;

    // 3. Order 8 (placed and shared: two events): event 3 is withheld, event 4 appended.
    let withheld = s.orders[&8];
    let r = record(8);
    assert_eq!(r.state.version, 2);
    let forged = forge(
        &node_keys,
        withheld,
        4,
        r.last_hash,
        r.key_id.unwrap(),
        Event::OrderCancelled {
            reason: CancelReason::Other,
        },
    );
    let (gp, go) = produce(&app, withheld, forged).await;

    // 4. Order 10 erased in the log by a record of our own: its key was never shredded.
    let unapplied = s.orders[&10];
    let r = record(10);
    let forged = forge(
        &node_keys,
        unapplied,
        r.state.version + 1,
        r.last_hash,
        r.key_id.unwrap(),
        Event::OrderErased {
            scope: ErasureScope::Order,
            reason: orderlog::domain::ErasureReason::Request,
        },
    );
    let (ep, eo) = produce(&app, unapplied, forged).await;

    // 5. What anyone with produce rights could write: order 6's correctly
    //    chained next event, under a log key of their own.
    let outsider = s.orders[&6];
    let r = record(6);
    let forged = forge(
        &log_keys(&orderlog::crypto::Kek::generate()),
        outsider,
        r.state.version + 1,
        r.last_hash,
        r.key_id.unwrap(),
        Event::OrderCancelled {
            reason: CancelReason::Other,
        },
    );
    let (fp, fo) = produce(&app, outsider, forged).await;

    let node = stop(app).await;
    let out = node.run(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: BTreeSet<(String, String, i64, i64)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["order_id"].as_str().unwrap_or("-").to_owned(),
                f["partition"].as_i64().unwrap_or(-1),
                f["offset"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let want: BTreeSet<(String, String, i64, i64)> = [
        ("conflicting_record", tampered, tp, to),
        ("broken_chain", unchained, cp, co),
        ("sequence_gap", withheld, gp, go),
        ("erasure_not_applied", unapplied, ep, eo),
        ("forged", outsider, fp, fo),
    ]
    .into_iter()
    .map(|(k, o, p, off)| (k.to_owned(), o.to_string(), i64::from(p), off))
    .collect();
    assert_eq!(
        got,
        want,
        "{}",
        serde_json::to_string_pretty(&report).unwrap()
    );
    assert_eq!(
        report["views"]["live_total"],
        report["views"]["replay_total"]
    );

    // The text report names each: kind, order, partition and offset.
    let out = node.run(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    for (kind, order, p, off) in &want {
        assert!(
            stdout.lines().any(|l| l.starts_with("FINDING")
                && l.contains(kind.as_str())
                && l.contains(order.as_str())
                && l.contains(&format!("partition {p} offset {off}"))),
            "{kind} for {order} at {p}/{off} not reported:\n{stdout}"
        );
    }
    assert!(stdout.contains("event 3 is missing"), "{stdout}");
    assert!(stdout.contains("5 findings"), "{stdout}");
    assert_no_personal(
        &format!("{stdout}{}", text(&out.stderr)),
        s.orders.keys().copied(),
    );

    // receipts: the forged erasure fails re-verification; the real ones pass.
    let out = node.run(&["receipts"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    let fail: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL ")).collect();
    assert_eq!(fail.len(), 1, "{stdout}");
    assert!(
        fail[0].contains(&unapplied.to_string()) && fail[0].contains(&format!("offset {eo}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("subkeys of erased classes still present"),
        "{stdout}"
    );
    let real = s.erased_whole.len() + s.erased_identity.len();
    assert!(
        stdout.ends_with(&format!(
            "{} erasures, {real} verified, 1 failed\n",
            real + 1
        )),
        "{stdout}"
    );
}

/// Issue 16, item 1: a client with produce rights on the events topic, but
/// not the nodes' KEK, appends a correctly chained share of a real order to
/// the party of its choice. Neither the views nor the writer take it: it is
/// dead-lettered, the party sees nothing, the order goes on from its real
/// last event, and `verify` reports the record as forged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_share_forged_by_a_producer_is_dead_lettered_and_reveals_nothing() {
    let app = TestApp::spawn().await;
    let id = Uuid::now_v7();
    exec(&app, id, Command::PlaceOrder(fixtures::new_order(61, true))).await;
    let r = app.app.service.get(id).unwrap().unwrap().record;
    let share = Event::OrderShared {
        party: sf(),
        classes: BTreeSet::from([FieldClass::Shipping, FieldClass::Identity]),
    };
    // Under a log key of the forger's own, and as a schema-v1 record (no
    // MAC at all).
    let own_key = forge(
        &log_keys(&orderlog::crypto::Kek::generate()),
        id,
        2,
        r.last_hash,
        r.key_id.unwrap(),
        share.clone(),
    );
    let meta = EventMeta {
        event_id: Uuid::now_v7(),
        order_id: id,
        sequence: 2,
        occurred_at_ms: orderlog::clock::now_ms(),
        key_id: r.key_id.unwrap(),
        prev_hash: r.last_hash,
    };
    let no_mac = events::encode_v1(&events::seal_event(&share, meta, None).unwrap());
    let forged = [
        produce(&app, id, own_key).await,
        produce(&app, id, no_mac).await,
    ];

    // Both are dead-lettered, each with the reason.
    let dead_letter = format!("{}.dead-letter", app.app.topic);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let dead: Vec<String> = common::raw_records(&app.app.kafka.brokers, &dead_letter)
            .into_iter()
            .filter(|(k, _)| k.as_slice() == id.as_bytes())
            .map(|(_, v)| text(&v))
            .collect();
        if dead.len() >= 2 || std::time::Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(dead.len(), 2, "both forged records dead-lettered: {dead:?}");
    assert!(dead[0].contains("does not hold"), "{}", dead[0]);
    assert!(dead[1].contains("schema v1"), "{}", dead[1]);

    // The party named in the forged share sees nothing of the order.
    let view = format!("/v1/shipping/sf-express/orders/{id}");
    let resp = app
        .get(&view, common::app::LOGISTICS_SF)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body = resp.text().await.unwrap();
    assert_no_personal(&body, [61]);

    // The order goes on from its real last event: a real share is event 2.
    let shipping = BTreeSet::from([FieldClass::Shipping]);
    let outcome = app
        .app
        .service
        .execute(
            id,
            Command::ShareOrder {
                party: sf(),
                classes: shipping,
            },
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(outcome.version, 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let shared: Value = loop {
        let resp = app
            .get(&view, common::app::LOGISTICS_SF)
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            break resp.json().await.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "the real share shows");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(shared["version"], 2);
    assert_eq!(
        shared["id_number"],
        Value::Null,
        "identity was never shared"
    );

    let node = stop(app).await;
    let out = node.run(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: BTreeSet<(String, i64, i64)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["partition"].as_i64().unwrap_or(-1),
                f["offset"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let want: BTreeSet<(String, i64, i64)> = forged
        .iter()
        .map(|(p, o)| ("forged".to_owned(), i64::from(*p), *o))
        .collect();
    assert_eq!(
        got,
        want,
        "{}",
        serde_json::to_string_pretty(&report).unwrap()
    );
}
