//! Privacy rights against the real broker.
//!
//! - Subject requests: a privacy officer finds, exports and erases a
//!   person's orders by mobile, email or ID number, in any usual spelling;
//!   afterwards the data directory holds no index entry of that person, while
//!   the entries of the person who shared a mobile stay.
//! - Legal hold: erasure (one order's, or a subject's) is refused while the
//!   hold is in force and goes through once it is released.
//! - Retention: with two nodes on one topic, a cancelled order and a
//!   real-name order's identity class are erased by themselves, each exactly
//!   once, with reason `retention`; a held order waits for its release.

mod common;

use std::time::{Duration, Instant};

use common::app::{CHECKOUT, PRIVACY, TestApp};
use common::orders::{self, LUOYANG, Line, OrderBody, contains, send};
use orderlog::domain::ErasureReason;
use orderlog::domain::fixtures;
use orderlog::events::Body;
use orderlog::projections::subjects::{Identifier, SubjectKey};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Person {
    name: &'static str,
    mobile: &'static str,
    email: String,
    id_number: String,
}

fn order(p: &Person, real_name: bool) -> Value {
    OrderBody::new(format!("ON-S-{}", uuid::Uuid::new_v4().simple()))
        .lines(&[Line::new("TEA", "Tea", 1, 8800).real_name(real_name)])
        .consignee(p.name, p.mobile)
        .address(LUOYANG, "中州东路1号院")
        .email(&p.email)
        .when(real_name, |o| o.id_number(&p.id_number))
        .json()
}

async fn place(app: &TestApp, body: Value) -> String {
    orders::place(app, &body).await
}

async fn subject(app: &TestApp, what: &str, body: Value) -> (StatusCode, Value) {
    let r = app
        .post(&format!("/v1/subjects/{what}"), PRIVACY)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

/// The order ids a search answers, sorted.
async fn search(app: &TestApp, body: Value) -> Vec<String> {
    let (status, v) = subject(app, "search", body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let mut ids: Vec<String> = v["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| (*s).clone()).collect();
    v.sort();
    v
}

/// Files of the data directory holding `needle`.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && contains(&std::fs::read(&path).unwrap(), needle) {
            out.push(path.display().to_string());
        }
    }
    out
}

#[tokio::test]
async fn a_person_is_found_exported_and_erased_by_any_spelling_of_their_identifiers() {
    let logs = common::Captured::install(tracing::Level::DEBUG);

    let app = TestApp::spawn().await;
    let ana = Person {
        name: "欧阳娜",
        mobile: "13912340001",
        email: "Ana.Ouyang@Example.com".into(),
        id_number: fixtures::id_number(7001),
    };
    // Ana's second order gives her mobile with the country code.
    let ana_again = Person {
        mobile: "+8613912340001",
        email: "ana.ouyang@example.COM".into(),
        ..ana_clone(&ana)
    };
    // Bo shares Ana's mobile (a family phone), nothing else.
    let bo = Person {
        name: "欧阳波",
        mobile: "13912340001",
        email: "bo@example.com".into(),
        id_number: fixtures::id_number(7002),
    };
    let cy = Person {
        name: "陈钰",
        mobile: "13700001111",
        email: "cy@example.com".into(),
        id_number: fixtures::id_number(7003),
    };
    let a1 = place(&app, order(&ana, true)).await;
    let a2 = place(&app, order(&ana_again, true)).await;
    let b1 = place(&app, order(&bo, false)).await;
    let c1 = place(&app, order(&cy, true)).await;
    let r = app
        .post(&format!("/v1/orders/{a1}/shares"), CHECKOUT)
        .json(&json!({"party": {"kind": "logistics", "id": "sf-express"}, "fields": ["shipping"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Found at once (the search waits for the views and the index), by
    // every spelling.
    for spelling in [
        "13912340001",
        "139 1234 0001",
        "+86 139 1234 0001",
        "0086-139-1234-0001",
    ] {
        assert_eq!(
            search(&app, json!({ "mobile": spelling })).await,
            sorted(&[&a1, &a2, &b1]),
            "mobile spelled {spelling}"
        );
    }
    assert_eq!(
        search(&app, json!({"email": " ANA.OUYANG@example.com"})).await,
        sorted(&[&a1, &a2])
    );
    let spaced_id = format!(
        "{} {} {}",
        &ana.id_number[..6],
        &ana.id_number[6..14],
        ana.id_number[14..].to_lowercase()
    );
    assert_eq!(
        search(&app, json!({ "id_number": spaced_id })).await,
        sorted(&[&a1, &a2])
    );
    assert_eq!(
        search(&app, json!({"email": "nobody@example.com"})).await,
        Vec::<String>::new()
    );
    let (_, listing) = subject(&app, "search", json!({"email": "cy@example.com"})).await;
    let listed = &listing["orders"][0];
    assert_eq!(listed["order_id"], c1.as_str());
    assert_eq!(listed["status"], "active");
    assert_eq!(listed["matched"], json!(["email"]));
    assert!(listing["request_id"].is_string());

    // Bad identifiers and callers are refused, naming the problem.
    for (body, field) in [
        (json!({"mobile": "12345"}), "mobile"),
        (json!({"email": "not-an-email"}), "email"),
        (json!({"id_number": "110105194912310021"}), "id_number"),
        (json!({}), "body"),
    ] {
        let (status, v) = subject(&app, "search", body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    let (status, _) = subject(&app, "search", json!({"phone": "13912340001"})).await;
    assert!(status.is_client_error());
    let r = app
        .post("/v1/subjects/search", CHECKOUT)
        .json(&json!({"mobile": "13912340001"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // The export holds the person's orders with their fields opened and
    // who received what when.
    let (status, export) =
        subject(&app, "export", json!({"email": "ana.ouyang@example.com"})).await;
    assert_eq!(status, StatusCode::OK, "{export}");
    let orders = export["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 2);
    let first = orders
        .iter()
        .find(|o| o["order_id"] == a1.as_str())
        .unwrap();
    assert_eq!(first["personal"]["consignee"]["name"], "欧阳娜");
    assert_eq!(first["personal"]["id_number"], ana.id_number.as_str());
    assert_eq!(first["share_history"][0]["party"], "logistics:sf-express");
    assert_eq!(first["share_history"][0]["fields"], json!(["shipping"]));
    assert!(first["share_history"][0]["at"].is_string());

    // Cy's identity class alone is erased: no longer found by ID number,
    // still by mobile.
    let r = app
        .post(&format!("/v1/orders/{c1}/erase"), PRIVACY)
        .json(&json!({"fields": ["identity"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        search(&app, json!({"id_number": cy.id_number})).await,
        Vec::<String>::new()
    );
    assert_eq!(
        search(&app, json!({"mobile": cy.mobile})).await,
        vec![c1.clone()]
    );

    // Ana asks to be forgotten, by her ID number: both her orders go,
    // each with its receipt; Bo's order stays.
    let (status, erased) = subject(&app, "erase", json!({"id_number": ana.id_number})).await;
    assert_eq!(status, StatusCode::OK, "{erased}");
    assert_eq!(erased["erased"], 2, "{erased}");
    assert_eq!(erased["refused"], 0, "{erased}");
    assert_eq!(erased["complete"], true, "{erased}");
    for o in erased["orders"].as_array().unwrap() {
        assert_eq!(o["outcome"], "erased");
        assert_eq!(o["receipt"]["complete"], true, "{o}");
    }
    assert_eq!(
        search(&app, json!({"mobile": "13912340001"})).await,
        vec![b1.clone()]
    );
    assert_eq!(
        search(&app, json!({"email": "ana.ouyang@example.com"})).await,
        Vec::<String>::new()
    );
    let (_, gone) = subject(&app, "export", json!({"id_number": ana.id_number})).await;
    assert_eq!(gone["orders"], json!([]));

    // On disk: none of Ana's index entries (her email's and ID number's
    // HMACs), nor Cy's erased ID number's; the shared mobile's entry is
    // still there (Bo's), which shows the scan finds what is there.
    let key = SubjectKey::of(&app.kek);
    let data_dir = app.config.data_dir.clone();
    let ana_email = key.blind(&Identifier::email(&ana.email).unwrap());
    let ana_id = key.blind(&Identifier::id_number(&ana.id_number).unwrap());
    let cy_id = key.blind(&Identifier::id_number(&cy.id_number).unwrap());
    let shared = key.blind(&Identifier::mobile(bo.mobile).unwrap());
    app.app.stop().await;
    assert!(
        !files_holding(&data_dir, &shared).is_empty(),
        "the scan finds a live entry"
    );
    for (what, blind) in [
        ("Ana's email", ana_email),
        ("Ana's ID number", ana_id),
        ("Cy's ID number", cy_id),
    ] {
        // Raw in a row, or as hex in RocksDB's LOG.
        for form in [
            blind.to_vec(),
            hex::encode(blind).into_bytes(),
            hex::encode_upper(blind).into_bytes(),
        ] {
            assert_eq!(
                files_holding(&data_dir, &form),
                Vec::<String>::new(),
                "{what} is still indexed on disk"
            );
        }
    }

    // The logs name the requests, never the identifiers.
    let text = logs.text();
    assert!(text.contains("Subject request."), "the logs were captured");
    assert!(text.contains("request_id"));
    for needle in [
        "13912340001",
        "139 1234 0001",
        "ana.ouyang",
        "Ana.Ouyang",
        ana.id_number.as_str(),
        cy.id_number.as_str(),
    ] {
        assert!(!text.contains(needle), "the logs hold an identifier");
    }
}

fn ana_clone(p: &Person) -> Person {
    Person {
        name: p.name,
        mobile: p.mobile,
        email: p.email.clone(),
        id_number: p.id_number.clone(),
    }
}

/// The order's events in the log, in order (committed records).
fn log_events(app: &TestApp, order_id: &str) -> Vec<orderlog::events::Envelope> {
    let id = uuid::Uuid::parse_str(order_id).unwrap();
    let mut evs: Vec<_> = common::committed_records(&app.app.kafka.brokers, &app.app.topic)
        .into_iter()
        .filter(|(k, _)| k.as_slice() == id.as_bytes())
        .map(|(_, v)| orderlog::events::decode(&v).unwrap())
        .collect();
    evs.sort_by_key(|e| e.meta.sequence);
    evs
}

#[tokio::test]
async fn a_held_order_refuses_erasure_until_its_hold_is_released() {
    let app = TestApp::spawn().await;
    let dan = Person {
        name: "邓丹",
        mobile: "13600002222",
        email: "dan@example.com".into(),
        id_number: fixtures::id_number(7101),
    };
    let id = place(&app, order(&dan, false)).await;
    let hold_path = format!("/v1/orders/{id}/hold");

    // Bad holds are refused, naming the problem; checkout may not hold.
    for (body, field) in [
        (json!({"reason": "call 136 0000 2222 first"}), "reason"),
        (json!({"reason": "dan@example.com asked"}), "reason"),
        (json!({"reason": ""}), "reason"),
        (json!({"reason": "dispute", "until": "tomorrow"}), "until"),
        (
            json!({"reason": "dispute", "until": "2020-01-01T00:00:00Z"}),
            "until",
        ),
    ] {
        let (status, v) = send(app.post(&hold_path, PRIVACY).json(&body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    let (status, _) = send(
        app.post(&hold_path, CHECKOUT)
            .json(&json!({"reason": "dispute"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, held) =
        send(app.post(&hold_path, PRIVACY).json(
            &json!({"reason": "chargeback dispute 2026-117", "until": "2099-01-01T00:00:00Z"}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{held}");
    assert_eq!(held["hold"]["reason"], "chargeback dispute 2026-117");
    assert_eq!(held["hold"]["until"], "2099-01-01T00:00:00Z");
    let (_, read) = send(app.get(&format!("/v1/orders/{id}"), CHECKOUT)).await;
    assert_eq!(read["hold"]["reason"], "chargeback dispute 2026-117");

    // Erasure is refused, by order and by subject, naming the hold.
    let (status, refused) = send(app.post(&format!("/v1/orders/{id}/erase"), PRIVACY)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "legal_hold");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("chargeback dispute 2026-117"),
        "{refused}"
    );
    let (status, subject_erase) = subject(&app, "erase", json!({"mobile": dan.mobile})).await;
    assert_eq!(status, StatusCode::OK, "{subject_erase}");
    assert_eq!(subject_erase["erased"], 0);
    assert_eq!(subject_erase["refused"], 1);
    assert_eq!(subject_erase["complete"], false);
    assert_eq!(subject_erase["orders"][0]["error"]["code"], "legal_hold");
    let (_, export) = subject(&app, "export", json!({"mobile": dan.mobile})).await;
    assert_eq!(
        export["orders"][0]["hold"]["reason"],
        "chargeback dispute 2026-117"
    );
    assert_eq!(export["orders"][0]["personal"]["consignee"]["name"], "邓丹");

    // Released: the erasure goes through; a second release is refused.
    let (status, released) = send(
        app.client
            .delete(format!("{}{hold_path}", app.base))
            .bearer_auth(PRIVACY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{released}");
    let (status, again) = send(
        app.client
            .delete(format!("{}{hold_path}", app.base))
            .bearer_auth(PRIVACY),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(again["error"]["code"], "not_held");
    let (status, erased) = send(app.post(&format!("/v1/orders/{id}/erase"), PRIVACY)).await;
    assert_eq!(status, StatusCode::OK, "{erased}");
    assert_eq!(erased["receipt"]["reason"], "request");

    // The log tells the story, holds included.
    let kinds: Vec<&str> = log_events(&app, &id).iter().map(|e| e.kind()).collect();
    assert_eq!(
        kinds,
        [
            "OrderPlaced",
            "OrderHeld",
            "OrderHoldReleased",
            "OrderErased"
        ]
    );
    // ... and so does `orderlog history`.
    let source = orderlog::audit::Source {
        settings: app.app.kafka.clone(),
        topic: app.app.topic.clone(),
        log_keys: Some(app.app.service.vault().log_keys()),
    };
    let order = uuid::Uuid::parse_str(&id).unwrap();
    let history =
        tokio::task::spawn_blocking(move || orderlog::audit::history::run(&source, order, None))
            .await
            .unwrap()
            .unwrap()
            .to_text();
    assert!(history.contains("OrderHeld"), "{history}");
    assert!(
        history.contains("reason=chargeback dispute 2026-117"),
        "{history}"
    );
    assert!(history.contains("until=2099-01-01T00:00:00Z"), "{history}");
    assert!(history.contains("OrderHoldReleased"), "{history}");
    assert!(history.contains("reason=request"), "{history}");
    app.app.stop().await;
}

/// Polls `check` on the order's JSON (read from the node at `base`) until
/// it holds.
async fn wait_for(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = send(
            client
                .get(format!("{base}/v1/orders/{id}"))
                .bearer_auth(CHECKOUT),
        )
        .await;
        if check(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn retention_erases_by_itself_exactly_once_across_two_nodes_and_waits_for_a_hold() {
    let policy = |c: &mut orderlog::config::Config| {
        c.retention.cancelled = Some(Duration::from_secs(2));
        c.retention.identity = Some(Duration::from_secs(4));
        c.retention.interval = Duration::from_millis(300);
    };
    let a = TestApp::spawn_configured(3, policy).await;
    // A second node on the same topic: the partitions are shared out, and
    // both schedulers run.
    let b_dir = tempfile::tempdir().unwrap();
    let mut b_config = a.config.clone();
    b_config.data_dir = b_dir.path().to_owned();
    let b = orderlog::app::App::start(&b_config).await.unwrap();
    let b_base = format!("http://{}", b.addr);
    let people: Vec<Person> = (0..4)
        .map(|n| Person {
            name: "罗娟",
            mobile: "13500003333",
            email: format!("juan{n}@example.com"),
            id_number: fixtures::id_number(7200 + n),
        })
        .collect();
    let cancelled = place(&a, order(&people[0], false)).await;
    let real_name = place(&a, order(&people[1], true)).await;
    let held = place(&a, order(&people[2], false)).await;
    let active = place(&a, order(&people[3], false)).await;
    for id in [&cancelled, &held] {
        let (status, v) = send(
            a.post(&format!("/v1/orders/{id}/cancel"), CHECKOUT)
                .json(&json!({"reason": "customer_request"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    let (status, v) = send(
        a.post(&format!("/v1/orders/{held}/hold"), PRIVACY)
            .json(&json!({"reason": "authority request 17"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let placed_at = Instant::now();

    // Read through the second node: every node sees the erasures.
    let via_b = (&a.client, b_base.as_str());
    let gone = wait_for(
        via_b.0,
        via_b.1,
        &cancelled,
        "the cancelled order is erased by retention",
        |v| v["status"] == "erased",
    )
    .await;
    assert!(
        placed_at.elapsed() >= Duration::from_secs(2),
        "not before its period"
    );
    assert_eq!(gone["personal"], Value::Null);
    let identity = wait_for(
        via_b.0,
        via_b.1,
        &real_name,
        "the ID number is erased by retention",
        |v| v["erased_fields"] == json!(["identity"]),
    )
    .await;
    assert_eq!(identity["status"], "active");
    assert_eq!(identity["personal"]["id_number"], Value::Null);
    assert_eq!(identity["personal"]["consignee"]["name"], "罗娟");

    // The second node keeps its own subject index, from its own replica of
    // the keys: a search there finds the orders placed through the first.
    let (status, found) = send(
        a.client
            .post(format!("{b_base}/v1/subjects/search"))
            .bearer_auth(PRIVACY)
            .json(&json!({"mobile": "135 0000 3333"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let mut listed: Vec<&str> = found["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    listed.sort();
    let mut live = vec![real_name.as_str(), held.as_str(), active.as_str()];
    live.sort();
    assert_eq!(listed, live, "the erased order is no longer found: {found}");

    // The held order waits for its hold.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, still) = send(a.get(&format!("/v1/orders/{held}"), CHECKOUT)).await;
    assert_eq!(still["status"], "cancelled", "{still}");
    let (status, v) = send(
        a.client
            .delete(format!("{}/v1/orders/{held}/hold", a.base))
            .bearer_auth(PRIVACY),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    wait_for(
        via_b.0,
        via_b.1,
        &held,
        "the released order is erased by retention",
        |v| v["status"] == "erased",
    )
    .await;

    // A few more passes of both schedulers: nothing is erased twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (id, erasures) in [(&cancelled, 1), (&real_name, 1), (&held, 1), (&active, 0)] {
        let found: Vec<_> = log_events(&a, id)
            .into_iter()
            .filter_map(|e| match e.body {
                Body::OrderErased { reason, .. } => Some(reason),
                _ => None,
            })
            .collect();
        assert_eq!(found.len(), erasures, "erasures of {id}: {found:?}");
        assert!(
            found.iter().all(|r| *r == ErasureReason::Retention),
            "{found:?}"
        );
    }
    let (_, active_now) = send(a.get(&format!("/v1/orders/{active}"), CHECKOUT)).await;
    assert_eq!(active_now["status"], "active");
    assert_eq!(active_now["erased_fields"], json!([]));
    let (status, receipt) = send(a.get(&format!("/v1/orders/{cancelled}/erasure"), PRIVACY)).await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    assert_eq!(receipt["receipt"]["reason"], "retention");

    // The person asks to be forgotten through the second node: each order
    // is erased by the node that writes its partition (forwarded where that
    // is the first), each with a complete receipt.
    let (status, forgotten) = send(
        a.client
            .post(format!("{b_base}/v1/subjects/erase"))
            .bearer_auth(PRIVACY)
            .json(&json!({"mobile": "+86 135 0000 3333"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{forgotten}");
    assert_eq!(forgotten["erased"], 2, "{forgotten}");
    assert_eq!(forgotten["complete"], true, "{forgotten}");
    for o in forgotten["orders"].as_array().unwrap() {
        assert_eq!(o["receipt"]["reason"], "request", "{o}");
        assert_eq!(o["receipt"]["nodes"].as_array().unwrap().len(), 2, "{o}");
    }
    let (_, none) = subject(&a, "search", json!({"mobile": "13500003333"})).await;
    assert_eq!(none["orders"], json!([]));
    b.stop().await;
    a.app.stop().await;
}
