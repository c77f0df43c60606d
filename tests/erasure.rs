//! Crypto-shredding proven end to end with the real broker and RocksDB: after
//! an erasure nothing the system holds can read the erased data, on disk, in
//! both topics, in the APIs, in the logs, and on a node rebuilt from Kafka.

mod common;

use common::app::{CHECKOUT, LOGISTICS_SF, MERCHANT_M1, PRIVACY, TestApp};
use common::orders::{LUOYANG, Line, OrderBody, contains, get, post_ok as post};
use orderlog::crypto::{Kek, KekRing, KeyVault, VaultError};
use orderlog::domain::{FieldClass, fixtures};
use orderlog::events;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn order_body(n: u32) -> Value {
    OrderBody::new(format!("ON-E-{n}-{}", uuid::Uuid::new_v4().simple()))
        .lines(&[
            Line::new("TEA", "Tea", 2, 8800),
            Line::new("DRILL", "Drill", 1, 39900).real_name(true),
        ])
        .consignee(format!("司马懿{n}"), format!("1391234{:04}", n))
        .address(LUOYANG, format!("中州东路{n}号院"))
        .email(format!("sima.yi{n}@example.com"))
        .landline(format!("0379-6{:07}", n))
        .id_number(fixtures::id_number(n))
        .json()
}

fn needles(n: u32) -> Vec<String> {
    let b = order_body(n);
    vec![
        b["consignee"]["name"].as_str().unwrap().to_owned(),
        b["consignee"]["mobile"].as_str().unwrap().to_owned(),
        b["consignee"]["address"]["street"]
            .as_str()
            .unwrap()
            .to_owned(),
        b["contact"]["email"].as_str().unwrap().to_owned(),
        b["contact"]["landline"].as_str().unwrap().to_owned(),
        b["id_number"].as_str().unwrap().to_owned(),
    ]
}

#[tokio::test]
async fn after_erasure_nothing_the_system_holds_can_read_the_erased_data() {
    // Every log line of the whole scenario, at trace level.
    let logs = common::Captured::install(tracing::Level::TRACE);

    let app = TestApp::spawn().await;
    let (a, b, c) = (1, 2, 3);
    let id_a = post(&app, "/v1/orders", CHECKOUT, order_body(a)).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let id_b = post(&app, "/v1/orders", CHECKOUT, order_body(b)).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let id_c = post(&app, "/v1/orders", CHECKOUT, order_body(c)).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for id in [&id_a, &id_b, &id_c] {
        post(&app, &format!("/v1/orders/{id}/shares"), CHECKOUT,
            json!({"party": {"kind": "logistics", "id": "sf-express"}, "fields": ["shipping", "contact", "identity"]})).await;
        post(
            &app,
            &format!("/v1/orders/{id}/shares"),
            CHECKOUT,
            json!({"party": {"kind": "merchant", "id": "m-1"}, "fields": ["shipping"]}),
        )
        .await;
    }
    let uuid_a = uuid::Uuid::parse_str(&id_a).unwrap();
    // What an attacker would look for afterwards: the raw subkeys and their wrapped form.
    let key_a = app.app.service.vault().get(uuid_a).unwrap();
    let raw_subkeys: Vec<Vec<u8>> = FieldClass::ALL
        .iter()
        .map(|c| key_a.subkey(*c).unwrap()[..32].to_vec())
        .collect();
    let wrapped: Vec<Vec<u8>> = app
        .app
        .service
        .vault()
        .stored(uuid_a)
        .unwrap()
        .unwrap()
        .wrapped
        .iter()
        .map(|(_, w)| w[..32].to_vec())
        .collect();
    drop(key_a);

    let receipt = post(
        &app,
        &format!("/v1/orders/{id_a}/erase"),
        PRIVACY,
        json!({}),
    )
    .await;
    let r = &receipt["receipt"];
    assert_eq!(r["scope"], "order");
    assert!(
        r["purged"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("views: sealed")),
        "{r}"
    );
    assert!(
        r["purged"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("disk:")),
        "{r}"
    );
    assert!(
        r["purged"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().ends_with(": tombstone written")),
        "the key replica's tombstone is acknowledged: {r}"
    );
    let class_receipt = post(
        &app,
        &format!("/v1/orders/{id_b}/erase"),
        PRIVACY,
        json!({"fields": ["identity"]}),
    )
    .await;
    assert!(
        class_receipt["receipt"]["purged"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().ends_with(": reduced row written")),
        "a class erasure leaves a reduced row: {class_receipt}"
    );

    // No API or view returns a personal field of A.
    let (_, order) = get(&app, &format!("/v1/orders/{id_a}"), CHECKOUT).await;
    assert_eq!(
        (order["status"].as_str(), &order["personal"]),
        (Some("erased"), &Value::Null)
    );
    let (_, ship) = get(
        &app,
        &format!("/v1/shipping/sf-express/orders/{id_a}"),
        LOGISTICS_SF,
    )
    .await;
    assert_eq!(
        (
            ship["status"].as_str(),
            &ship["consignee"],
            &ship["contact"],
            &ship["id_number"]
        ),
        (Some("erased"), &Value::Null, &Value::Null, &Value::Null)
    );
    let (_, merch) = get(
        &app,
        &format!("/v1/merchants/m-1/orders/{id_a}"),
        MERCHANT_M1,
    )
    .await;
    assert_eq!(merch["consignee"], Value::Null);
    let (_, feed) = get(
        &app,
        "/v1/shipping/sf-express/orders?limit=1000",
        LOGISTICS_SF,
    )
    .await;
    let feed_text = feed.to_string();
    for n in needles(a) {
        assert!(!feed_text.contains(&n));
    }
    // B lost only its identity class; C is untouched.
    let (_, ob) = get(&app, &format!("/v1/orders/{id_b}"), CHECKOUT).await;
    assert_eq!(
        (
            &ob["personal"]["id_number"],
            ob["personal"]["consignee"]["name"].as_str()
        ),
        (&Value::Null, Some("司马懿2"))
    );
    let (_, oc) = get(&app, &format!("/v1/orders/{id_c}"), CHECKOUT).await;
    assert_eq!(oc["personal"]["id_number"], fixtures::id_number(c));

    // Decrypting A's old events with anything the system still holds fails.
    let records = app.raw_records();
    let placed_a = records
        .iter()
        .filter(|(k, _)| k == uuid_a.as_bytes())
        .map(|(_, v)| events::decode(v).unwrap())
        .find(|e| e.kind() == "OrderPlaced")
        .expect("A's OrderPlaced is still in the log");
    assert!(
        !placed_a.sealed.is_empty(),
        "the log itself is immutable: the sealed fields are still there"
    );
    assert!(matches!(
        app.app.service.vault().get(uuid_a),
        Err(VaultError::Shredded { .. })
    ));
    for other in [&id_b, &id_c] {
        let key = app
            .app
            .service
            .vault()
            .get(uuid::Uuid::parse_str(other).unwrap())
            .unwrap();
        assert!(
            events::open_event(&placed_a, Some(&key)).is_err(),
            "another order's key opens nothing of A"
        );
    }

    // Raw scan of both topics: no personal plaintext anywhere.
    let keys_topic = orderlog::crypto::keys_topic_for(&app.app.topic);
    let key_records = common::raw_records(&app.app.kafka.brokers, &keys_topic);
    let a_rows: Vec<&Vec<u8>> = key_records
        .iter()
        .filter(|(k, _)| k == uuid_a.as_bytes())
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        a_rows.len(),
        2,
        "A's wrapped row and then its tombstone are in {keys_topic}"
    );
    assert!(
        a_rows[1].is_empty(),
        "the latest record of A in {keys_topic} is a tombstone"
    );
    // Until the cleaner compacts it (within max.compaction.lag.ms), the old
    // wrapped row stays in the topic: the documented window that a KEK
    // rotation closes (see the rotation test).
    assert!(!a_rows[0].is_empty());
    for (_, v) in records.iter().chain(key_records.iter()) {
        for n in needles(a)
            .iter()
            .chain(needles(b).iter())
            .chain(needles(c).iter())
        {
            assert!(!contains(v, n.as_bytes()), "plaintext in a topic");
        }
        for k in &raw_subkeys {
            assert!(!contains(v, k), "a raw subkey in a topic");
        }
    }

    // A node rebuilt from Kafka with an empty data directory: it cannot read
    // the erased order and reads the others.
    let kek = app.kek.clone();
    let config = app.config.clone();
    let data_dir = app.data_dir;
    app.app.stop().await;
    let fresh = tempfile::tempdir().unwrap();
    let mut cfg2 = config.clone();
    cfg2.data_dir = fresh.path().to_owned();
    let app2 = orderlog::app::App::start(&cfg2).await.unwrap();
    let base = format!("http://{}", app2.addr);
    let client = reqwest::Client::new();
    let read = |id: String| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            client
                .get(format!("{base}/v1/orders/{id}"))
                .bearer_auth(CHECKOUT)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let ra = read(id_a.clone()).await;
    assert_eq!(
        (ra["status"].as_str(), &ra["personal"]),
        (Some("erased"), &Value::Null)
    );
    let rb = read(id_b.clone()).await;
    assert_eq!(
        (
            &rb["personal"]["id_number"],
            rb["personal"]["consignee"]["name"].as_str()
        ),
        (&Value::Null, Some("司马懿2"))
    );
    let rc = read(id_c.clone()).await;
    assert_eq!(rc["personal"]["consignee"]["name"], "司马懿3");
    assert_eq!(rc["personal"]["id_number"], fixtures::id_number(c));
    let _ = kek;
    app2.stop().await;

    // No file of the (first) data directory holds A's key, raw or wrapped, or any personal plaintext.
    let mut scanned = 0;
    for entry in std::fs::read_dir(data_dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        scanned += bytes.len();
        for k in raw_subkeys.iter().chain(wrapped.iter()) {
            assert!(
                !contains(&bytes, k),
                "{} still holds A's key bytes",
                path.display()
            );
        }
        for n in needles(a).iter().chain(needles(c).iter()) {
            assert!(
                !contains(&bytes, n.as_bytes()),
                "{} holds personal plaintext",
                path.display()
            );
        }
    }
    assert!(scanned > 0);

    // The logs of the whole scenario, at trace level, hold no personal data and no token.
    let text = logs.text();
    assert!(text.contains("Order erased."), "the logs were captured");
    for n in needles(a)
        .iter()
        .chain(needles(b).iter())
        .chain(needles(c).iter())
    {
        assert!(!text.contains(n.as_str()), "personal data in the logs");
    }
    for t in [CHECKOUT, PRIVACY, LOGISTICS_SF] {
        assert!(!text.contains(t), "a token in the logs");
    }
}

#[tokio::test]
async fn kek_rotation_rewraps_both_homes_and_a_destroyed_old_kek_reads_nothing() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for n in 10..13 {
        ids.push(
            post(&app, "/v1/orders", CHECKOUT, order_body(n)).await["order_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // One placed with an Idempotency-Key: its retry after the rotation must
    // answer the same order, not place a second one.
    let keyed_body = order_body(13);
    let keyed = app
        .post("/v1/orders", CHECKOUT)
        .header("Idempotency-Key", "rotation-retry-13")
        .json(&keyed_body)
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), StatusCode::CREATED);
    let keyed_id = keyed.json::<Value>().await.unwrap()["order_id"].clone();
    let log_before = app.raw_records();
    let old = app.kek.clone();
    let mut config = app.config.clone();
    let data_dir = app.data_dir;
    app.app.stop().await;

    let new = Kek::generate();
    let store = orderlog::store::Store::open(data_dir.path()).unwrap();
    let vault = KeyVault::new(store, KekRing::new(old.clone()));
    let settings = orderlog::kafka::KafkaSettings::new(config.brokers.clone().unwrap());
    let keys_topic = orderlog::crypto::keys_topic_for(&config.topic);
    let replica = orderlog::crypto::KeyReplica::new(
        &settings,
        &keys_topic,
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    let ends = (0..config.partitions)
        .map(|p| {
            use rdkafka::consumer::Consumer;
            let c: rdkafka::consumer::BaseConsumer = settings.client_config().create().unwrap();
            let (_, high) = c
                .fetch_watermarks(&config.topic, p, std::time::Duration::from_secs(10))
                .unwrap();
            (p, high)
        })
        .collect();
    let report = orderlog::crypto::replica::rotate_kek(&vault, Some(&replica), new.clone(), &ends)
        .await
        .unwrap();
    assert_eq!((report.rewrapped, report.republished), (4, 4));
    drop(vault);

    // The event log was not touched (same records, compared in key order).
    let mut after = common::raw_records(&settings.brokers, &config.topic);
    let mut before = log_before.clone();
    after.sort();
    before.sort();
    assert!(after == before, "the event log changed during the rotation");
    // The old KEK, once destroyed, opens nothing: not the vault, not a node restored from the replica.
    let store = orderlog::store::Store::open(data_dir.path()).unwrap();
    let with_old = KeyVault::new(store, KekRing::new(old.clone()));
    for id in &ids {
        assert!(with_old.get(uuid::Uuid::parse_str(id).unwrap()).is_err());
    }
    drop(with_old);
    let restored_dir = tempfile::tempdir().unwrap();
    let restored = KeyVault::new(
        orderlog::store::Store::open(restored_dir.path()).unwrap(),
        KekRing::new(old.clone()),
    );
    orderlog::crypto::replica::restore(&settings, &keys_topic, &restored, 0).unwrap();
    for id in &ids {
        assert!(
            restored.get(uuid::Uuid::parse_str(id).unwrap()).is_err(),
            "the newest replica row is under the new KEK"
        );
    }
    drop(restored);
    let restored_dir = tempfile::tempdir().unwrap();
    let restored = KeyVault::new(
        orderlog::store::Store::open(restored_dir.path()).unwrap(),
        KekRing::new(new.clone()),
    );
    let report = orderlog::crypto::replica::restore(&settings, &keys_topic, &restored, 0).unwrap();
    assert_eq!(report.restored, 4);
    for id in &ids {
        assert!(
            restored.get(uuid::Uuid::parse_str(id).unwrap()).is_ok(),
            "a node restored with the new KEK reads every key"
        );
    }
    drop(restored);

    // With the new KEK the service reads every order again.
    config.kek = orderlog::config::KekSource::Inline(orderlog::config::Secret::new(
        new.to_text().to_string(),
    ));
    let app2 = orderlog::app::App::start(&config).await.unwrap();
    let client = reqwest::Client::new();
    for id in &ids {
        let o: Value = client
            .get(format!("http://{}/v1/orders/{id}", app2.addr))
            .bearer_auth(CHECKOUT)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            o["personal"]["consignee"]["name"]
                .as_str()
                .unwrap()
                .starts_with("司马懿"),
            "{o}"
        );
    }
    let retried = client
        .post(format!("http://{}/v1/orders", app2.addr))
        .bearer_auth(CHECKOUT)
        .header("Idempotency-Key", "rotation-retry-13")
        .json(&keyed_body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        retried
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..]),
        "a retry after the rotation is a replay"
    );
    assert_eq!(retried.json::<Value>().await.unwrap()["order_id"], keyed_id);
    // The subject index was rebuilt under the new KEK's index key: a search
    // finds the order, and the old key's HMACs are gone from the disk.
    let email = order_body(10)["contact"]["email"]
        .as_str()
        .unwrap()
        .to_owned();
    let found: Value = client
        .post(format!("http://{}/v1/subjects/search", app2.addr))
        .bearer_auth(PRIVACY)
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["orders"][0]["order_id"], ids[0].as_str(), "{found}");
    app2.stop().await;
    let id = orderlog::projections::subjects::Identifier::email(&email).unwrap();
    let (old_hmac, new_hmac) = (
        orderlog::projections::subjects::SubjectKey::of(&old).blind(&id),
        orderlog::projections::subjects::SubjectKey::of(&new).blind(&id),
    );
    let files = |needle: &[u8]| -> usize {
        std::fs::read_dir(data_dir.path())
            .unwrap()
            .filter_map(|e| std::fs::read(e.unwrap().path()).ok())
            .filter(|bytes| contains(bytes, needle))
            .count()
    };
    assert!(files(&new_hmac) > 0, "the rebuilt entry is on disk");
    assert_eq!(
        files(&old_hmac),
        0,
        "an entry under the old KEK's index key is left"
    );

    // Someone who kept the old KEK appends a correctly chained cancel of
    // the first order, authenticated under the old KEK's log key.
    let first = uuid::Uuid::parse_str(&ids[0]).unwrap();
    let placed = log_before
        .iter()
        .find(|(k, _)| k.as_slice() == first.as_bytes())
        .map(|(_, v)| v.clone())
        .unwrap();
    let placed_env = events::decode(&placed).unwrap();
    let cancel = events::seal_event(
        &orderlog::domain::Event::OrderCancelled {
            reason: orderlog::domain::CancelReason::Other,
        },
        events::EventMeta {
            event_id: uuid::Uuid::now_v7(),
            order_id: first,
            sequence: 2,
            occurred_at_ms: orderlog::clock::now_ms(),
            key_id: placed_env.meta.key_id,
            prev_hash: events::record_hash(&placed),
        },
        None,
    )
    .unwrap();
    let old_keys = orderlog::crypto::LogKeys::from_ring(&KekRing::new(old.clone()));
    let producer: rdkafka::producer::FutureProducer = settings.client_config().create().unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&config.topic)
                .partition(orderlog::kafka::partition_of(&first, config.partitions as usize) as i32)
                .key(first.as_bytes().as_slice())
                .payload(&events::encode(&cancel, &old_keys)),
            std::time::Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    // A new node with the new KEK only, on an empty data directory: the
    // records written before the rotation still authenticate (under the
    // retired log key the key topic now holds, wrapped under the new KEK),
    // so it projects every one of them; the one appended after it, under
    // the retired key, is dead-lettered.
    let fresh = tempfile::tempdir().unwrap();
    config.data_dir = fresh.path().to_owned();
    let app3 = orderlog::app::App::start(&config).await.unwrap();
    let projector = app3.projector.as_ref().unwrap().status.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while projector
        .projected
        .load(std::sync::atomic::Ordering::Relaxed)
        < 4
        || projector
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed)
            < 1
    {
        assert!(std::time::Instant::now() < deadline, "the log is projected");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        (
            projector
                .projected
                .load(std::sync::atomic::Ordering::Relaxed),
            projector
                .dead_lettered
                .load(std::sync::atomic::Ordering::Relaxed)
        ),
        (4, 1),
        "every record written before the rotation projected; the late one under the old key refused"
    );
    let o: Value = client
        .get(format!("http://{}/v1/orders/{}", app3.addr, ids[0]))
        .bearer_auth(CHECKOUT)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(o["version"], 1, "{o}");
    app3.stop().await;

    // `orderlog project` on a fresh directory, with the new KEK only: it
    // reads the retired log key from the key topic (no key follower there).
    let rebuilt = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orderlog"))
        .args([
            "project",
            "--brokers",
            &settings.brokers,
            "--topic",
            &config.topic,
        ])
        .arg("--data-dir")
        .arg(rebuilt.path())
        .args(["--all-partitions", "--until-caught-up"])
        .env("ORDERLOG_KEK", new.to_text().as_str())
        .env("ORDERLOG_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("projected 4 events (1 dead-lettered)"),
        "{stdout}"
    );
}

/// A node whose vault was not current for longer than the key topic keeps
/// tombstones may have missed one (the log cleaner dropped it with the key
/// row): at start it reads the whole key topic and destroys every key the
/// topic no longer holds. A vault current a moment ago does not.
#[tokio::test]
async fn a_vault_out_of_date_for_hours_drops_the_keys_the_key_topic_no_longer_holds() {
    use orderlog::crypto::follow::RECONCILE_AFTER;
    use orderlog::store::schema::KeysCurrentAt;
    let app = TestApp::spawn().await;
    let placed = post(&app, "/v1/orders", CHECKOUT, order_body(1)).await;
    let id = uuid::Uuid::parse_str(placed["order_id"].as_str().unwrap()).unwrap();
    let config = app.config.clone();
    let kek = app.kek.clone();
    let data_dir = app.data_dir;
    app.app.stop().await;
    // A key the topic has no row for, as if its tombstone had been compacted
    // away while the node was down.
    let ghost = uuid::Uuid::now_v7();
    let set_current_at = |ago: std::time::Duration, with_ghost: bool| {
        let store = orderlog::store::Store::open(data_dir.path()).unwrap();
        let now = orderlog::clock::now_ms();
        if with_ghost {
            let vault = KeyVault::new(store.clone(), KekRing::new(kek.clone()));
            vault
                .store_new(&[(ghost, &orderlog::crypto::OrderKey::generate())], now)
                .unwrap();
        }
        store
            .table::<KeysCurrentAt>()
            .put_now(
                &(),
                &(now - ago.as_millis() as i64),
                &rocksdb::WriteOptions::default(),
            )
            .unwrap();
    };
    set_current_at(std::time::Duration::from_secs(60), true);
    let app2 = orderlog::app::App::start(&config).await.unwrap();
    assert!(
        app2.service.vault().get(ghost).is_ok(),
        "a vault current a minute ago is not reconciled"
    );
    app2.stop().await;

    set_current_at(RECONCILE_AFTER + std::time::Duration::from_secs(60), false);
    let app3 = orderlog::app::App::start(&config).await.unwrap();
    assert!(
        matches!(
            app3.service.vault().get(ghost),
            Err(VaultError::Shredded { .. })
        ),
        "the key the topic no longer holds is destroyed"
    );
    assert!(
        app3.service.vault().get(id).is_ok(),
        "a key the topic holds is kept"
    );
    app3.stop().await;
}

/// The purge is part of the erasure, not of the request: a client that
/// hangs up at once still gets the key off the node's disk; and a retry
/// with the same Idempotency-Key answers the erasure's receipt, not 409.
#[tokio::test]
async fn an_erasure_whose_client_hung_up_is_purged_and_a_retry_gets_its_receipt() {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::spawn().await;
    let placed = post(&app, "/v1/orders", CHECKOUT, order_body(7)).await;
    let id = placed["order_id"].as_str().unwrap().to_owned();
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    let wrapped: Vec<Vec<u8>> = app
        .app
        .service
        .vault()
        .stored(uuid)
        .unwrap()
        .unwrap()
        .wrapped
        .into_iter()
        .map(|(_, w)| w)
        .collect();
    // The whole request; the connection is closed, unread, as soon as the
    // erasure is logged and the key destroyed here (before the receipt,
    // which waits for the purge).
    let mut tcp = tokio::net::TcpStream::connect(app.app.addr).await.unwrap();
    let req = format!(
        "POST /v1/orders/{id}/erase HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PRIVACY}\r\nIdempotency-Key: erase-{id}\r\nContent-Length: 0\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.app.service.vault().get(uuid).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the erasure was never carried out"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    drop(tcp);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let status = loop {
        let (s, v) = get(&app, &format!("/v1/orders/{id}/erasure"), PRIVACY).await;
        if s == StatusCode::OK && v["receipt"]["complete"] == true {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the erasure was not carried out and purged: {s} {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // A retry with the same key: the same erasure's receipt.
    let r = app
        .post(&format!("/v1/orders/{id}/erase"), PRIVACY)
        .header("Idempotency-Key", format!("erase-{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    let retried: Value = r.json().await.unwrap();
    assert_eq!(retried["receipt"]["event"], status["receipt"]["event"]);
    assert_eq!(retried["receipt"]["complete"], true, "{retried}");
    let data_dir = app.data_dir;
    app.app.stop().await;
    let mut scanned = 0;
    for entry in std::fs::read_dir(data_dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        scanned += bytes.len();
        for w in &wrapped {
            assert!(
                !contains(&bytes, w),
                "{} still holds the wrapped key of an erasure whose client hung up",
                path.display()
            );
        }
    }
    assert!(scanned > 0);
}

/// The digest of a placement's request, stored in the log beside its
/// idempotency key, is keyed by the order's own key: it is not the plain
/// hash of the body (which anyone holding the log could test guesses of
/// the consignee against), and once the order is erased nobody, not even
/// with the KEK, can recompute it. A retry under the key is then told so.
#[tokio::test]
async fn a_placements_request_digest_is_keyed_by_the_order_key_and_dies_with_it() {
    let app = TestApp::spawn().await;
    let body = order_body(21);
    let placed = app
        .post("/v1/orders", CHECKOUT)
        .header("Idempotency-Key", "digest-21")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), StatusCode::CREATED);
    let id = placed.json::<Value>().await.unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let order_id = uuid::Uuid::parse_str(&id).unwrap();

    // The digest in the record's headers.
    let header = orderlog::service::log_reader::HEADER_REQUEST_DIGEST.as_bytes();
    let stored: Vec<[u8; 32]> = app
        .raw_records()
        .iter()
        .filter(|(k, _)| k.as_slice() == order_id.as_bytes())
        .filter_map(|(_, v)| {
            let at = v.windows(header.len()).position(|w| w == header)? + header.len();
            v.get(at..at + 32).map(|d| d.try_into().unwrap())
        })
        .collect();
    assert_eq!(stored.len(), 1, "one digest, on the placement");
    let plain = orderlog::service::request_hash("POST /v1/orders", &body.to_string());
    assert_ne!(stored[0], plain, "not the plain hash of the body");
    let key = app.app.service.vault().get(order_id).unwrap();
    assert_eq!(key.request_digest(&plain), Some(stored[0]));

    // A retry is a replay while the order lives.
    let retry = || {
        app.post("/v1/orders", CHECKOUT)
            .header("Idempotency-Key", "digest-21")
            .json(&body)
            .send()
    };
    let r = retry().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.json::<Value>().await.unwrap()["order_id"], id.as_str());

    let erased = app
        .post(&format!("/v1/orders/{id}/erase"), PRIVACY)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), StatusCode::OK);
    assert!(matches!(
        app.app.service.vault().get(order_id),
        Err(VaultError::Shredded { .. })
    ));
    let r = retry().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "idempotency_key_erased", "{e}");
}
