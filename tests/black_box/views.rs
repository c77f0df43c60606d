//! The read path against the real broker: shipping and merchant views, change
//! feeds with cursors, exactly-once projection across a killed projector
//! process, dead-lettering, and no personal plaintext on disk.

use crate::common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::app::{CHECKOUT, LOGISTICS_SF, MERCHANT_M1, PRIVACY, TestApp};
use common::orders::{Area, Line, OrderBody, get, post_ok as post};
use orderlog::domain::fixtures;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn order_body(n: u32, real_name: bool, merchant: &str) -> Value {
    const CHENGDU: Area = Area {
        province: "四川省",
        city: "成都市",
        district: "武侯区",
        postal_code: "610041",
    };
    OrderBody::new(format!("ON-V-{n}-{}", uuid::Uuid::new_v4().simple()))
        .merchant(merchant)
        .lines(&[Line::new("SKU-TEA-250", "Longjing tea", 2, 8800)])
        .consignee(format!("诸葛亮{n}"), format!("1380013{:04}", n))
        .address(CHENGDU, format!("武侯祠大街{n}号"))
        .email(format!("kongming{n}@example.com"))
        .when(real_name, |o| {
            o.line(Line::new("SKU-DRILL", "Drill", 1, 39900).real_name(true))
                .id_number(fixtures::id_number(n))
        })
        .json()
}

/// [`get`] of an order just placed or shared with the caller's party: a view
/// answers 404 (at once) until this node has projected what makes the order
/// visible to the party, so a client polls; `min_version` waits only for an
/// order the party can already see.
async fn get_visible(app: &TestApp, path: &str, token: &str) -> (StatusCode, Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, body) = get(app, path, token).await;
        if s != StatusCode::NOT_FOUND || Instant::now() >= deadline {
            return (s, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads a feed to its end from `cursor`, `limit` at a time.
async fn drain(
    app: &TestApp,
    base: &str,
    token: &str,
    mut cursor: String,
    limit: usize,
) -> (Vec<Value>, String) {
    let mut all = Vec::new();
    loop {
        let (s, page) = get(app, &format!("{base}?after={cursor}&limit={limit}"), token).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        let changes = page["changes"].as_array().unwrap().clone();
        cursor = page["next_cursor"].as_str().unwrap().to_owned();
        if changes.is_empty() {
            return (all, cursor);
        }
        all.extend(changes);
    }
}

#[tokio::test]
async fn the_shipping_view_shows_a_provider_only_what_was_shared_with_it() {
    let app = TestApp::spawn().await;
    let shared = post(&app, "/v1/orders", CHECKOUT, order_body(1, true, "m-1")).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let not_shared =
        post(&app, "/v1/orders", CHECKOUT, order_body(2, false, "m-1")).await["order_id"]
            .as_str()
            .unwrap()
            .to_owned();
    let other = post(&app, "/v1/orders", CHECKOUT, order_body(3, false, "m-1")).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let v = post(
        &app,
        &format!("/v1/orders/{shared}/shares"),
        CHECKOUT,
        json!({"party": {"kind": "logistics", "id": "sf-express"}, "fields": ["shipping"]}),
    )
    .await["version"]
        .as_u64()
        .unwrap();
    post(
        &app,
        &format!("/v1/orders/{other}/shares"),
        CHECKOUT,
        json!({"party": {"kind": "logistics", "id": "yto"}, "fields": ["shipping", "contact"]}),
    )
    .await;

    let base = "/v1/shipping/sf-express/orders";
    let (s, order) = get_visible(
        &app,
        &format!("{base}/{shared}?min_version={v}"),
        LOGISTICS_SF,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{order}");
    assert_eq!(order["status"], "active");
    assert_eq!(order["fields"], json!(["shipping"]));
    assert_eq!(order["consignee"]["name"], "诸葛亮1");
    assert_eq!(order["consignee"]["mobile"], "13800130001");
    assert_eq!(order["consignee"]["mobile_masked"], "138****0001");
    assert_eq!(
        order["contact"],
        Value::Null,
        "contact was not shared with sf-express"
    );
    assert_eq!(
        order["id_number"],
        Value::Null,
        "identity was not shared with sf-express"
    );
    assert!(
        order.get("items").is_none() && order.get("amount").is_none(),
        "a provider sees no prices"
    );

    for id in [&not_shared, &other] {
        let (s, _) = get(&app, &format!("{base}/{id}"), LOGISTICS_SF).await;
        assert_eq!(
            s,
            StatusCode::NOT_FOUND,
            "an order not shared with sf-express is not in its view"
        );
    }
    let (feed, _) = drain(&app, base, LOGISTICS_SF, String::new(), 10).await;
    assert_eq!(feed.len(), 1);
    assert_eq!(
        (feed[0]["order_id"].as_str(), feed[0]["change"].as_str()),
        (Some(shared.as_str()), Some("shared"))
    );

    let (s, e) = get(&app, "/v1/shipping/yto/orders", LOGISTICS_SF).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (s, _) = get(&app, base, CHECKOUT).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    app.app.stop().await;
}

#[tokio::test]
async fn cancellations_and_erasures_reach_the_feeds_exactly_once_and_erasure_leaves_no_personal_field()
 {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for n in 0..6 {
        let id = post(
            &app,
            "/v1/orders",
            CHECKOUT,
            order_body(100 + n, true, "m-1"),
        )
        .await["order_id"]
            .as_str()
            .unwrap()
            .to_owned();
        post(&app, &format!("/v1/orders/{id}/shares"), CHECKOUT,
            json!({"party": {"kind": "logistics", "id": "sf-express"}, "fields": ["shipping", "identity"]})).await;
        ids.push(id);
    }
    let base = "/v1/shipping/sf-express/orders";
    // Read part of the feed, then the rest after more changes: nothing twice, nothing missed.
    let wait_v = |id: &str, v: u64| format!("{base}/{id}?min_version={v}");
    let (s, _) = get_visible(&app, &wait_v(&ids[5], 2), LOGISTICS_SF).await;
    assert_eq!(s, StatusCode::OK);
    let (first, cursor) = drain(&app, base, LOGISTICS_SF, String::new(), 4).await;
    assert_eq!(first.len(), 6);
    post(
        &app,
        &format!("/v1/orders/{}/cancel", ids[0]),
        CHECKOUT,
        json!({"reason": "out_of_stock"}),
    )
    .await;
    let erased = post(
        &app,
        &format!("/v1/orders/{}/erase", ids[1]),
        PRIVACY,
        json!({}),
    )
    .await;
    post(
        &app,
        &format!("/v1/orders/{}/erase", ids[2]),
        PRIVACY,
        json!({"fields": ["identity"]}),
    )
    .await;
    let (s, _) = get(&app, &wait_v(&ids[2], 3), LOGISTICS_SF).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = get(
        &app,
        &wait_v(&ids[1], erased["version"].as_u64().unwrap()),
        LOGISTICS_SF,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (second, _) = drain(&app, base, LOGISTICS_SF, cursor, 2).await;
    let seen: Vec<(String, String)> = second
        .iter()
        .map(|c| {
            (
                c["order_id"].as_str().unwrap().to_owned(),
                c["change"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.contains(&(ids[0].clone(), "cancelled".into())));
    assert!(seen.contains(&(ids[1].clone(), "erased".into())));
    assert!(seen.contains(&(ids[2].clone(), "erased".into())));

    let (_, cancelled) = get(&app, &format!("{base}/{}", ids[0]), LOGISTICS_SF).await;
    assert_eq!(
        cancelled["status"], "cancelled",
        "a cancelled order stays listed so the shipment stops"
    );
    let (_, gone) = get(&app, &format!("{base}/{}", ids[1]), LOGISTICS_SF).await;
    assert_eq!(gone["status"], "erased");
    for f in ["consignee", "contact", "id_number"] {
        assert_eq!(gone[f], Value::Null, "erased order keeps no {f}");
    }
    let (_, partial) = get(&app, &format!("{base}/{}", ids[2]), LOGISTICS_SF).await;
    assert_eq!(partial["id_number"], Value::Null);
    assert_eq!(partial["consignee"]["name"], "诸葛亮102");
    assert_eq!(partial["erased_fields"], json!(["identity"]));

    // A whole fresh read sees every change exactly once.
    let (all, _) = drain(&app, base, LOGISTICS_SF, String::new(), 3).await;
    let positions: Vec<&str> = all
        .iter()
        .map(|c| c["position"].as_str().unwrap())
        .collect();
    let unique: std::collections::BTreeSet<&&str> = positions.iter().collect();
    assert_eq!((all.len(), unique.len()), (9, 9));
    app.app.stop().await;
}

#[tokio::test]
async fn the_merchant_view_lists_its_orders_with_amounts_and_only_shared_fields() {
    let app = TestApp::spawn().await;
    let mine = post(&app, "/v1/orders", CHECKOUT, order_body(7, false, "m-1")).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let theirs = post(&app, "/v1/orders", CHECKOUT, order_body(8, false, "m-2")).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let base = "/v1/merchants/m-1/orders";
    let (s, o) = get_visible(&app, &format!("{base}/{mine}?min_version=1"), MERCHANT_M1).await;
    assert_eq!(s, StatusCode::OK, "{o}");
    assert_eq!(
        (
            o["amount"].as_u64(),
            o["currency"].as_str(),
            o["items"].as_array().unwrap().len()
        ),
        (Some(17_600), Some("CNY"), 1)
    );
    assert_eq!(
        o["consignee"],
        Value::Null,
        "nothing personal until shared with the merchant"
    );
    let v = post(
        &app,
        &format!("/v1/orders/{mine}/shares"),
        CHECKOUT,
        json!({"party": {"kind": "merchant", "id": "m-1"}, "fields": ["contact"]}),
    )
    .await["version"]
        .as_u64()
        .unwrap();
    let (_, o) = get(&app, &format!("{base}/{mine}?min_version={v}"), MERCHANT_M1).await;
    assert_eq!(o["contact"]["email"], "kongming7@example.com");
    assert_eq!(
        o["consignee"],
        Value::Null,
        "shipping was not shared with the merchant"
    );
    let (s, _) = get(&app, &format!("{base}/{theirs}"), MERCHANT_M1).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = get(&app, "/v1/merchants/m-2/orders", MERCHANT_M1).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (feed, _) = drain(&app, base, MERCHANT_M1, String::new(), 50).await;
    let changes: Vec<&str> = feed.iter().map(|c| c["change"].as_str().unwrap()).collect();
    assert_eq!(changes, vec!["placed", "shared"]);
    // min_version beyond what exists: the view says it lags instead of answering stale data.
    let (s, e) = get(&app, &format!("{base}/{mine}?min_version=99"), MERCHANT_M1).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("view_lagging"))
    );
    let (s, e) = get(&app, &format!("{base}?after=garbage"), MERCHANT_M1).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_cursor"))
    );
    app.app.stop().await;
}

#[tokio::test]
async fn undecodable_records_go_to_the_dead_letter_topic_and_projection_goes_on() {
    let app = TestApp::spawn().await;
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &app.app.kafka.brokers)
        .create()
        .unwrap();
    for junk in [
        &b"not an event"[..],
        b"OL\x00\x01\xff\xff\xff",
        b"OL\x00\x07future",
    ] {
        producer
            .send(
                rdkafka::producer::FutureRecord::<[u8], [u8]>::to(&app.app.topic)
                    .payload(junk)
                    .partition(0),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let id = post(&app, "/v1/orders", CHECKOUT, order_body(9, false, "m-1")).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _) = get_visible(
        &app,
        &format!("/v1/merchants/m-1/orders/{id}?min_version=1"),
        MERCHANT_M1,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "projection went on past the bad records");
    // The bad records sit in partition 0, which may be behind the order's
    // partition: wait (bounded) for all three to be dead-lettered.
    let dlq_topic = format!("{}.dead-letter", app.app.topic);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let dlq = loop {
        let dlq = common::raw_records(&app.app.kafka.brokers, &dlq_topic);
        if dlq.len() >= 3 || std::time::Instant::now() > deadline {
            break dlq;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dlq.len(), 3);
    let text: Vec<String> = dlq
        .iter()
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(
        text.iter()
            .any(|t| t.contains("unsupported schema version 7")),
        "{text:?}"
    );
    assert!(text.iter().all(|t| t.contains("orderlog-dlq-reason")));
    app.app.stop().await;
}

fn orderlog_bin() -> &'static str {
    env!("CARGO_BIN_EXE_orderlog")
}

/// `orderlog project` with the nodes' KEK (for the log key).
fn run_projector(
    brokers: &str,
    topic: &str,
    kek: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> std::process::Child {
    Command::new(orderlog_bin())
        .args([
            "project",
            "--brokers",
            brokers,
            "--topic",
            topic,
            "--data-dir",
        ])
        .arg(dir)
        .args(extra)
        .env("ORDERLOG_KEK", kek)
        .env("ORDERLOG_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn digest(dir: &std::path::Path) -> orderlog::projections::ViewDigest {
    let store = orderlog::store::Store::open(dir).unwrap();
    orderlog::projections::query::digest(&store).unwrap()
}

#[tokio::test]
async fn a_projector_killed_mid_stream_and_restarted_equals_a_clean_rebuild() {
    let app = TestApp::spawn_with_partitions(4).await;
    // A log of a few thousand events: places, shares, cancels, erasures.
    let svc = app.app.service.clone();
    let mut ids = Vec::new();
    for n in 0..1500u32 {
        let id = uuid::Uuid::now_v7();
        svc.execute(
            id,
            orderlog::domain::Command::PlaceOrder(fixtures::new_order(n, n % 3 == 0)),
            None,
            None,
        )
        .await
        .unwrap();
        ids.push(id);
    }
    use orderlog::domain::validation::ProviderId;
    use orderlog::domain::{CancelReason, Command as C, ErasureScope, FieldClass, Party};
    for (n, id) in ids.iter().enumerate() {
        let party = Party::Logistics(
            ProviderId::parse("p", if n % 2 == 0 { "sf-express" } else { "yto" }).unwrap(),
        );
        svc.execute(
            *id,
            C::ShareOrder {
                party,
                classes: [FieldClass::Shipping].into(),
            },
            None,
            None,
        )
        .await
        .unwrap();
        if n % 5 == 0 {
            svc.execute(
                *id,
                C::CancelOrder {
                    reason: CancelReason::Other,
                },
                None,
                None,
            )
            .await
            .unwrap();
        }
        if n % 7 == 0 {
            svc.execute(*id, C::erase(ErasureScope::Order), None, None)
                .await
                .unwrap();
        }
    }
    let brokers = app.app.kafka.brokers.clone();
    let topic = app.app.topic.clone();
    let kek = app.kek.to_text().to_string();
    let t0 = Instant::now();
    let killed = tempfile::tempdir().unwrap();
    let group = common::unique("kill-test");
    let total: u64 = {
        let (s, _) = (app.raw_records().len() as u64, ());
        s
    };
    // Kill it with SIGKILL at different moments until three kills have hit it
    // mid-stream (some but not all events projected), then let it finish.
    let projected = |dir: &std::path::Path| -> u64 {
        let store = orderlog::store::Store::open(dir).unwrap();
        orderlog::projections::query::partitions(&store)
            .unwrap()
            .into_iter()
            .map(|p| {
                let v = store
                    .db()
                    .get_cf(store.cf(orderlog::store::CF_VIEW_OFFSETS), p.to_be_bytes())
                    .unwrap()
                    .unwrap();
                u64::from_be_bytes(v[..].try_into().unwrap())
            })
            .sum()
    };
    // Watch the projector's progress through the offsets it commits to Kafka
    // (a hint it writes after each RocksDB batch) and kill it part way.
    let watcher: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition(&topic, p);
    }
    let committed = || -> u64 {
        use rdkafka::consumer::Consumer;
        watcher
            .committed_offsets(tpl.clone(), Duration::from_secs(5))
            .map(|t| {
                t.elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        rdkafka::Offset::Offset(o) => Some(o as u64),
                        _ => None,
                    })
                    .sum()
            })
            .unwrap_or(0)
    };
    let mut mid_stream_kills = 0;
    for round in 0..3u64 {
        // Throttled to 1000 events/s so a kill lands part way through.
        let mut child = run_projector(
            &brokers,
            &topic,
            &kek,
            killed.path(),
            &["--group", &group, "--batch", "50", "--max-rate", "1000"],
        );
        let before = committed();
        let deadline = Instant::now() + Duration::from_secs(60);
        while committed() <= before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200 + 150 * round));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let after = projected(killed.path());
        eprintln!(
            "kill {round}: committed {before}..{}, projected {after} of {total} ({:?} since log written)",
            committed(),
            t0.elapsed()
        );
        if after > 0 && after < total {
            mid_stream_kills += 1;
        }
    }
    assert!(
        mid_stream_kills >= 2,
        "only {mid_stream_kills} of 3 kills landed mid-stream"
    );
    let mut child = run_projector(
        &brokers,
        &topic,
        &kek,
        killed.path(),
        &["--group", &group, "--until-caught-up"],
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "projector did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
    eprintln!("caught up after {:?}", t0.elapsed());

    let clean = tempfile::tempdir().unwrap();
    let status = run_projector(
        &brokers,
        &topic,
        &kek,
        clean.path(),
        &["--all-partitions", "--until-caught-up"],
    )
    .wait()
    .unwrap();
    assert!(status.success());

    let (a, b) = (digest(killed.path()), digest(clean.path()));
    assert_eq!(a, b, "views after kills equal a clean rebuild");
    // A replayed event would fail the sequence check and be dead-lettered:
    // an empty dead-letter topic shows that nothing was applied twice.
    let dlq = format!("{topic}.dead-letter");
    assert!(
        common::raw_records(&brokers, &dlq).is_empty(),
        "events were re-applied after a kill"
    );
    let rows: BTreeMap<_, _> = a.per_view.iter().map(|(k, (n, _))| (*k, *n)).collect();
    assert_eq!(rows["view_orders"], 1500);
    app.app.stop().await;
}

#[tokio::test]
async fn no_file_of_the_data_directory_holds_personal_plaintext() {
    let app = TestApp::spawn().await;
    let mut needles = Vec::new();
    for n in 0..20u32 {
        let body = order_body(500 + n, true, "m-1");
        needles.push(body["consignee"]["name"].as_str().unwrap().to_owned());
        needles.push(body["consignee"]["mobile"].as_str().unwrap().to_owned());
        needles.push(
            body["consignee"]["address"]["street"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        needles.push(body["contact"]["email"].as_str().unwrap().to_owned());
        needles.push(body["id_number"].as_str().unwrap().to_owned());
        let id = post(&app, "/v1/orders", CHECKOUT, body).await["order_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let v = post(&app, &format!("/v1/orders/{id}/shares"), CHECKOUT,
            json!({"party": {"kind": "logistics", "id": "sf-express"}, "fields": ["shipping", "contact", "identity"]})).await["version"].as_u64().unwrap();
        let (s, o) = get_visible(
            &app,
            &format!("/v1/shipping/sf-express/orders/{id}?min_version={v}"),
            LOGISTICS_SF,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            o["id_number"],
            fixtures::id_number(500 + n),
            "the view does serve the data"
        );
    }
    let dir = app.data_dir.path().to_owned();
    let data_dir = app.data_dir;
    app.app.stop().await;
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        files += 1;
        for n in &needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n.as_bytes()),
                "{} holds personal plaintext",
                path.display()
            );
        }
    }
    assert!(files > 3);
    drop(data_dir);
}

/// Another party's order is answered as one that does not exist, at once,
/// whatever `min_version` says: neither a wait nor a 503 `view_lagging`
/// tells that it exists or which version it has.
#[tokio::test]
async fn another_partys_order_is_not_found_at_once_whatever_min_version_says() {
    let app = TestApp::spawn().await;
    // Merchant m-2's order, shared with provider yto: version 2.
    let placed = post(&app, "/v1/orders", CHECKOUT, order_body(1, false, "m-2")).await;
    let id = placed["order_id"].as_str().unwrap().to_owned();
    post(
        &app,
        &format!("/v1/orders/{id}/shares"),
        CHECKOUT,
        json!({"party": {"kind": "logistics", "id": "yto"}, "fields": ["shipping"]}),
    )
    .await;
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while orderlog::projections::query::order(&app.app.store, uuid)
        .unwrap()
        .is_none_or(|o| o.version < 2)
    {
        assert!(Instant::now() < deadline, "the order was never projected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let missing = uuid::Uuid::now_v7().to_string();
    for (base, token) in [
        ("/v1/merchants/m-1/orders", MERCHANT_M1),
        ("/v1/shipping/sf-express/orders", LOGISTICS_SF),
    ] {
        let (s, absent) = get(&app, &format!("{base}/{missing}"), token).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{absent}");
        for query in ["", "?min_version=1", "?min_version=2", "?min_version=99"] {
            for target in [&id, &missing] {
                let path = format!("{base}/{target}{query}");
                let started = Instant::now();
                let (s, body) = get(&app, &path, token).await;
                let took = started.elapsed();
                assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {body}");
                assert_eq!(
                    body, absent,
                    "{path}: the answer differs from the one for an order that does not exist"
                );
                assert!(
                    took < Duration::from_secs(2),
                    "{path} answered after {took:?}: the wait tells the order exists"
                );
            }
        }
    }
    app.app.stop().await;
}

/// The reference the projector's batched path must agree with: every record
/// of one partition after another, one at a time, through the pure
/// [`orderlog::projections::model::project`] and the order-state fold, each
/// in its own WriteBatch. A record the views refuse is skipped.
fn reference_fold(
    store: &orderlog::store::Store,
    records: &[(i32, i64, Vec<u8>, Vec<u8>)],
    log_keys: &orderlog::crypto::LogKeys,
    partitions: usize,
) -> (u64, u64) {
    use orderlog::projections::model::{FeedTarget, project};
    use orderlog::store::schema::{FeedKey, MerchantFeed, ShippingFeed, ViewOrders};
    let (mut projected, mut refused) = (0, 0);
    for (partition, offset, key, payload) in records {
        if orderlog::events::authenticate(payload, log_keys, Some((*partition, *offset))).is_err() {
            refused += 1;
            continue;
        }
        let env = orderlog::events::decode(payload).ok();
        if env.as_ref().is_some_and(|e| {
            orderlog::kafka::partition_of(&e.meta.order_id, partitions) != *partition as usize
        }) {
            refused += 1;
            continue;
        }
        let mut batch = rocksdb::WriteBatch::default();
        let mut state =
            orderlog::service::state::StateFolder::new(store.clone(), Duration::from_secs(3600));
        let current = match &env {
            Some(env) => {
                if key == env.meta.order_id.as_bytes() {
                    state.fold(env, payload, *offset, None).unwrap();
                }
                store.table::<ViewOrders>().get(&env.meta.order_id).unwrap()
            }
            None => None,
        };
        state.stage(&mut batch, orderlog::clock::now_ms());
        match project(current.as_ref(), payload, Some(key), *partition as u32) {
            Ok(p) => {
                for (target, entry) in p.feeds {
                    let at = |party| FeedKey {
                        party,
                        partition: *partition as u32,
                        offset: *offset as u64,
                    };
                    match target {
                        FeedTarget::Shipping(id) => {
                            store
                                .table::<ShippingFeed>()
                                .put(&mut batch, &at(id), &entry)
                        }
                        FeedTarget::Merchant(id) => {
                            store
                                .table::<MerchantFeed>()
                                .put(&mut batch, &at(id), &entry)
                        }
                    }
                }
                store
                    .table::<ViewOrders>()
                    .put(&mut batch, &p.order.id(), &p.order);
                projected += 1;
            }
            Err(_) => refused += 1,
        }
        store.db().write(batch).unwrap();
    }
    (projected, refused)
}

#[tokio::test]
async fn the_batched_parallel_projector_builds_the_views_the_reference_fold_builds() {
    use orderlog::kafka::{KafkaSettings, TopicSpec, ensure_topics};
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    const PARTITIONS: i32 = 4;
    let brokers = common::brokers();
    let settings = KafkaSettings::new(&brokers);
    let topic = common::unique("projector-reference");
    ensure_topics(&settings, &[TopicSpec::events(&topic, PARTITIONS, 1)])
        .await
        .unwrap();
    let log_keys = std::sync::Arc::new(orderlog::crypto::LogKeys::from_ring(
        &orderlog::crypto::KekRing::new(orderlog::crypto::Kek::generate()),
    ));
    let partition_of =
        |id: &uuid::Uuid| orderlog::kafka::partition_of(id, PARTITIONS as usize) as i32;
    // 1,500 orders whose events interleave (each order's in its order), so
    // an order's events span polled batches, flushes and the batch in flight.
    let orders: Vec<Vec<(uuid::Uuid, Vec<u8>)>> = (0..1_500u32)
        .map(|n| common::order_events(n, &log_keys))
        .collect();
    let mut sends: Vec<(uuid::Uuid, Vec<u8>, i32)> = Vec::new();
    let longest = orders.iter().map(Vec::len).max().unwrap();
    for round in 0..longest {
        for (i, events) in orders.iter().enumerate() {
            if let Some((id, bytes)) = events.get(round) {
                sends.push((*id, bytes.clone(), partition_of(id)));
                if i % 97 == 0 {
                    // The same record again: out of sequence the second time.
                    sends.push((*id, bytes.clone(), partition_of(id)));
                }
                if i % 131 == 0 && round == 0 {
                    // A copy in another partition, and a forgery.
                    sends.push((*id, bytes.clone(), (partition_of(id) + 1) % PARTITIONS));
                    let mut forged = bytes.clone();
                    let last = forged.len() - 1;
                    forged[last] ^= 1;
                    sends.push((*id, forged, partition_of(id)));
                }
            }
        }
    }
    let producer: FutureProducer = settings
        .client_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let futs: Vec<_> = sends
        .iter()
        .map(|(id, bytes, p)| {
            producer.send(
                FutureRecord::to(&topic)
                    .key(id.as_bytes().as_slice())
                    .payload(bytes)
                    .partition(*p),
                Duration::from_secs(30),
            )
        })
        .collect();
    for r in futures::future::join_all(futs).await {
        r.map_err(|(e, _)| e).unwrap();
    }

    // The new path: batched, decoded in parallel, written by its own thread;
    // small write batches so flushes fall inside polled batches.
    let dir = tempfile::tempdir().unwrap();
    let store = orderlog::store::Store::open(dir.path()).unwrap();
    let projector = orderlog::projections::Projector::start(
        store.clone(),
        orderlog::projections::ProjectorConfig {
            settings: settings.clone(),
            topic: topic.clone(),
            assignment: orderlog::projections::Assignment::All,
            batch_max: 97,
            max_rate: 0,
            dead_letter: false,
            idempotency_ttl: Duration::from_secs(3600),
            purge: None,
            log_keys: std::sync::Arc::new(orderlog::crypto::logkey::SharedLogKeys::new(
                (*log_keys).clone(),
            )),
        },
        orderlog::shutdown::CancellationToken::new(),
    )
    .unwrap();
    assert!(projector.wait_caught_up(Duration::from_secs(120)));
    let projected = projector
        .status
        .projected
        .load(std::sync::atomic::Ordering::Relaxed);
    let refused = projector
        .status
        .dead_lettered
        .load(std::sync::atomic::Ordering::Relaxed);
    projector.stop().unwrap();
    let batched = orderlog::projections::query::digest(&store).unwrap();

    // The reference, over the same records read back partition by partition.
    let consumer: BaseConsumer = settings
        .client_config()
        .set("group.id", common::unique("reference"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut records = Vec::new();
    for p in 0..PARTITIONS {
        let (_, high) = consumer
            .fetch_watermarks(&topic, p, Duration::from_secs(10))
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&topic, p, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut next = 0;
        while next < high {
            let Some(m) = consumer.poll(Duration::from_secs(10)) else {
                panic!("partition {p} ended at {next} of {high}");
            };
            let m = m.unwrap();
            next = m.offset() + 1;
            records.push((
                p,
                m.offset(),
                m.key().unwrap().to_vec(),
                m.payload().unwrap().to_vec(),
            ));
        }
    }
    let reference_dir = tempfile::tempdir().unwrap();
    let reference_store = orderlog::store::Store::open(reference_dir.path()).unwrap();
    let (ref_projected, ref_refused) =
        reference_fold(&reference_store, &records, &log_keys, PARTITIONS as usize);
    let reference = orderlog::projections::query::digest(&reference_store).unwrap();

    assert_eq!(records.len(), sends.len());
    assert!(ref_refused >= 15 + 12 + 12, "the disruptions were refused");
    assert_eq!((projected, refused), (ref_projected, ref_refused));
    for (view, (rows, hash)) in &reference.per_view {
        assert!(*rows > 0, "{view} has rows");
        assert_eq!(
            batched.per_view.get(view),
            Some(&(*rows, hash.clone())),
            "{view}: the batched projector differs from the reference fold"
        );
    }
    assert_eq!(batched.total, reference.total);
}
