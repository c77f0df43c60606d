//! Subject requests against the real broker: a privacy officer finds,
//! exports and erases a person's orders by mobile, email or ID number, in
//! any usual spelling; afterwards the data directory holds no index entry of
//! that person, while the entries of the person who shared a mobile stay.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::app::{CHECKOUT, PRIVACY, TestApp};
use orderlog::domain::fixtures;
use orderlog::projections::subjects::{Identifier, SubjectKey};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Person {
    name: &'static str,
    mobile: &'static str,
    email: String,
    id_number: String,
}

fn order(p: &Person, real_name: bool) -> Value {
    let mut body = json!({
        "order_number": format!("ON-S-{}", uuid::Uuid::new_v4().simple()),
        "merchant_id": "m-1", "currency": "CNY", "amount": 8800,
        "items": [{"sku": "TEA", "name": "Tea", "quantity": 1, "unit_price": 8800, "real_name": real_name}],
        "consignee": {"name": p.name, "mobile": p.mobile,
            "address": {"province": "河南省", "city": "洛阳市", "district": "老城区", "street": "中州东路1号院", "postal_code": "471000"}},
        "contact": {"email": p.email},
    });
    if real_name {
        body["id_number"] = json!(p.id_number);
    }
    body
}

async fn place(app: &TestApp, body: Value) -> String {
    let r = app
        .post("/v1/orders", CHECKOUT)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    v["order_id"].as_str().unwrap().to_owned()
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

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
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
    let logs = Captured::default();
    let writer = logs.clone();
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .try_init();

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
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
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
