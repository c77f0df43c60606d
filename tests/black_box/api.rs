//! Black-box tests of the command API: orderlog runs in process on port 0
//! against the real Kafka broker; requests go over a real socket.

use crate::common;

use std::collections::BTreeSet;

use common::app::{AUDITOR, AUDITOR_NAME, CHECKOUT, LOGISTICS_SF, PRIVACY, TestApp};
use common::cases::{self, ErrorCase};
use common::orders::{self, CORDLESS_DRILL, OrderBody, SHENZHEN, TEA_250G, send, send_json};
use orderlog::domain::fixtures;
use reqwest::StatusCode;
use serde_json::{Value, json};

const NAME: &str = "欧阳娜娜";
const STREET: &str = "科技园南区高新南七道 99 号 3 栋 1801";
const MOBILE: &str = "13912345678";
const EMAIL: &str = "ouyang.nana@example.com";
const LANDLINE: &str = "0755-86001234";

fn order_body(real_name: bool) -> Value {
    OrderBody::new(format!("ON-{}", uuid::Uuid::new_v4().simple()))
        .lines(&[TEA_250G])
        .consignee(NAME, MOBILE)
        .address(SHENZHEN, STREET)
        .landline(LANDLINE)
        .email(EMAIL)
        .when(real_name, |o| {
            o.line(CORDLESS_DRILL).id_number(fixtures::id_number(7))
        })
        .json()
}

async fn place(app: &TestApp, body: &Value) -> (StatusCode, Value) {
    send_json(app.post("/v1/orders", CHECKOUT).json(body)).await
}

async fn placed_id(app: &TestApp, real_name: bool) -> String {
    orders::place(app, &order_body(real_name)).await
}

async fn call(app: &TestApp, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
    send(app.post(path, token).json(&body)).await
}

async fn get_order(app: &TestApp, id: &str, token: &str) -> (StatusCode, Value) {
    send_json(app.get(&format!("/v1/orders/{id}"), token)).await
}

#[tokio::test]
async fn placing_an_order_answers_201_and_the_order_reads_back_with_its_personal_fields() {
    let app = TestApp::spawn().await;
    let body = order_body(true);
    let (status, placed) = place(&app, &body).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(placed["version"], 1);
    let id = placed["order_id"].as_str().unwrap();
    let (status, order) = get_order(&app, id, CHECKOUT).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(order["status"], "active");
    assert_eq!(order["order_number"], body["order_number"]);
    assert_eq!(order["amount"], 57_500);
    assert_eq!(order["personal"]["consignee"]["name"], NAME);
    assert_eq!(order["personal"]["consignee"]["mobile"], MOBILE);
    assert_eq!(order["personal"]["contact"]["email"], EMAIL);
    assert_eq!(order["personal"]["id_number"], fixtures::id_number(7));
    app.app.stop().await;
}

/// Log lines of this test binary, as JSON lines (fields flattened): a
/// subscriber installed once for the whole process, which every test's app
/// logs to from then on (the tests of the other modules too: a test finds
/// its own lines by its order's id).
fn captured_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    #[derive(Clone)]
    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
        std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Sink(logs.clone());
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("orderlog=info"))
            .json()
            .flatten_event(true)
            .with_writer(move || sink.clone())
            .try_init()
            .expect("no other subscriber in this test binary");
        logs
    })
    .clone()
}

#[tokio::test]
async fn an_auditor_sees_personal_fields_only_by_asking_and_the_reveal_is_logged_by_token_name() {
    let logs = captured_logs();
    let app = TestApp::spawn().await;
    let id = placed_id(&app, true).await;
    let path = |query: &str| format!("/v1/orders/{id}{query}");
    let read = |query: &str, token: &'static str| {
        let r = app.get(&path(query), token).send();
        async move {
            let r = r.await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };

    // Without asking: the public facts, no personal field, nothing logged as revealed.
    let (s, withheld) = read("", AUDITOR).await;
    assert_eq!(s, StatusCode::OK, "{withheld}");
    assert_eq!(withheld["status"], "active");
    assert_eq!(withheld["amount"], 57_500);
    assert_eq!(withheld["personal"], Value::Null, "{withheld}");
    let (_, explicit_no) = read("?reveal=false", AUDITOR).await;
    assert_eq!(explicit_no["personal"], Value::Null);
    let text = withheld.to_string();
    for needle in [NAME, MOBILE, EMAIL, STREET, fixtures::id_number(7).as_str()] {
        assert!(!text.contains(needle), "{needle} shown without a reveal");
    }

    // Asking: the personal fields, and a log line naming the token and the order.
    let (s, revealed) = read("?reveal=true", AUDITOR).await;
    assert_eq!(s, StatusCode::OK, "{revealed}");
    assert_eq!(revealed["personal"]["consignee"]["name"], NAME);
    assert_eq!(revealed["personal"]["consignee"]["mobile"], MOBILE);
    assert_eq!(revealed["personal"]["contact"]["email"], EMAIL);
    assert_eq!(revealed["personal"]["id_number"], fixtures::id_number(7));

    // Checkout reads them as before, with or without the parameter.
    for query in ["", "?reveal=true"] {
        let (s, order) = read(query, CHECKOUT).await;
        assert_eq!(s, StatusCode::OK, "{order}");
        assert_eq!(order["personal"]["consignee"]["name"], NAME);
    }
    // A malformed or unknown parameter is a 400, not a silent withholding.
    for query in ["?reveal=yes", "?revael=true"] {
        let (s, e) = read(query, AUDITOR).await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_query")),
            "{query}: {e}"
        );
    }

    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let reveals: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["message"] == "Personal fields revealed for audit." && l["order_id"] == id.as_str()
        })
        .collect();
    assert_eq!(reveals.len(), 1, "one reveal, one line: {reveals:?}");
    assert_eq!(reveals[0]["token_name"], AUDITOR_NAME, "{:?}", reveals[0]);
    assert_eq!(reveals[0]["level"], "INFO");
    assert_eq!(
        reveals[0]["classes"], "[\"shipping\", \"contact\", \"identity\"]",
        "{:?}",
        reveals[0]
    );
    assert!(!text.contains(AUDITOR), "a token appeared in the logs");
    for needle in [NAME, MOBILE, EMAIL, STREET] {
        assert!(!text.contains(needle), "personal data in the logs");
    }
    app.app.stop().await;
}

#[tokio::test]
async fn share_cancel_and_erase_each_move_the_order_on_and_erase_removes_personal_fields() {
    let app = TestApp::spawn().await;
    let id = placed_id(&app, true).await;
    let (s, b) = call(&app, &format!("/v1/orders/{id}/shares"), CHECKOUT,
        json!({"party": {"kind": "logistics", "id": "sf-express"}, "fields": ["shipping", "identity"]})).await;
    assert_eq!((s, b["version"].as_u64()), (StatusCode::OK, Some(2)), "{b}");
    let (s, b) = call(
        &app,
        &format!("/v1/orders/{id}/shares"),
        CHECKOUT,
        json!({"party": {"kind": "merchant", "id": "m-1"}, "fields": ["shipping"]}),
    )
    .await;
    assert_eq!((s, b["version"].as_u64()), (StatusCode::OK, Some(3)), "{b}");
    let (s, b) = call(
        &app,
        &format!("/v1/orders/{id}/cancel"),
        CHECKOUT,
        json!({"reason": "customer_request"}),
    )
    .await;
    assert_eq!((s, b["version"].as_u64()), (StatusCode::OK, Some(4)), "{b}");

    let (_, order) = get_order(&app, &id, CHECKOUT).await;
    assert_eq!(order["status"], "cancelled");
    assert_eq!(order["cancel_reason"], "customer_request");
    assert_eq!(order["shares"].as_array().unwrap().len(), 2);
    assert_eq!(
        order["personal"]["consignee"]["name"], NAME,
        "cancelling is not erasing"
    );

    let (s, receipt) = call(&app, &format!("/v1/orders/{id}/erase"), PRIVACY, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{receipt}");
    assert_eq!(receipt["version"], 5);
    let r = &receipt["receipt"];
    assert_eq!(r["order_id"], id.as_str());
    assert_eq!(r["scope"], "order");
    assert!(r["event"]["offset"].as_i64().unwrap() >= 0);
    assert_eq!(r["key_id"].as_str().unwrap().len(), 32);
    assert!(!r["verified"].as_array().unwrap().is_empty());

    let (_, order) = get_order(&app, &id, CHECKOUT).await;
    assert_eq!(order["status"], "erased");
    assert_eq!(order["personal"], Value::Null);
    assert_eq!(
        order["order_number"].as_str().unwrap().len(),
        35,
        "public facts survive erasure"
    );
    let text = order.to_string();
    for needle in [NAME, MOBILE, EMAIL, STREET] {
        assert!(!text.contains(needle));
    }
    app.app.stop().await;
}

#[tokio::test]
async fn erasing_one_field_class_keeps_the_rest_readable() {
    let app = TestApp::spawn().await;
    let id = placed_id(&app, true).await;
    let (s, b) = call(
        &app,
        &format!("/v1/orders/{id}/erase"),
        PRIVACY,
        json!({"fields": ["identity"]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["receipt"]["scope"], "classes");
    let (_, order) = get_order(&app, &id, CHECKOUT).await;
    assert_eq!(order["status"], "active");
    assert_eq!(order["erased_fields"], json!(["identity"]));
    assert_eq!(order["personal"]["id_number"], Value::Null);
    assert_eq!(order["personal"]["consignee"]["name"], NAME);
    app.app.stop().await;
}

/// Every error class, each answered with the right status and a JSON error
/// naming the problem, and none of them writes anything to Kafka.
#[tokio::test]
async fn errors_get_their_status_and_code_and_write_nothing() {
    let app = TestApp::spawn().await;
    let id = placed_id(&app, false).await;
    let (s, _) = call(
        &app,
        &format!("/v1/orders/{id}/cancel"),
        CHECKOUT,
        json!({"reason": "out_of_stock"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let before = app.raw_records().len();
    assert_eq!(before, 2);

    let url = |p: &str| format!("{}{p}", app.base);
    let mut cases = Vec::new();
    cases.push(ErrorCase::new(
        "no token",
        app.client.post(url("/v1/orders")).json(&order_body(false)),
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        None,
    ));
    cases.push(ErrorCase::new(
        "unknown token",
        app.post("/v1/orders", "not-a-known-token-at-all")
            .json(&order_body(false)),
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        None,
    ));
    cases.push(ErrorCase::new(
        "wrong role",
        app.post("/v1/orders", LOGISTICS_SF)
            .json(&order_body(false)),
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    ));
    cases.push(ErrorCase::new(
        "checkout may not erase",
        app.post(&format!("/v1/orders/{id}/erase"), CHECKOUT)
            .json(&json!({})),
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    ));
    cases.push(ErrorCase::new(
        "unknown order",
        app.post(
            &format!("/v1/orders/{}/cancel", uuid::Uuid::now_v7()),
            CHECKOUT,
        )
        .json(&json!({"reason": "other"})),
        StatusCode::NOT_FOUND,
        "order_not_found",
        None,
    ));
    cases.push(ErrorCase::new(
        "malformed id",
        app.post("/v1/orders/not-a-uuid/cancel", CHECKOUT)
            .json(&json!({"reason": "other"})),
        StatusCode::BAD_REQUEST,
        "invalid_order_id",
        Some("id"),
    ));
    cases.push(ErrorCase::new(
        "invalid JSON",
        app.post("/v1/orders", CHECKOUT)
            .body("{\"order_number\": ")
            .header("content-type", "application/json"),
        StatusCode::BAD_REQUEST,
        "invalid_json",
        None,
    ));
    cases.push(ErrorCase::new(
        "empty body",
        app.post("/v1/orders", CHECKOUT),
        StatusCode::BAD_REQUEST,
        "empty_body",
        None,
    ));
    let mut bad_mobile = order_body(false);
    bad_mobile["consignee"]["mobile"] = json!("12345");
    cases.push(ErrorCase::new(
        "bad mobile",
        app.post("/v1/orders", CHECKOUT).json(&bad_mobile),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("consignee.mobile"),
    ));
    let mut bad_id = order_body(true);
    bad_id["id_number"] = json!("110105194912310021");
    cases.push(ErrorCase::new(
        "bad id checksum",
        app.post("/v1/orders", CHECKOUT).json(&bad_id),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("id_number"),
    ));
    let mut no_id = order_body(true);
    no_id.as_object_mut().unwrap().remove("id_number");
    cases.push(ErrorCase::new(
        "real-name without id",
        app.post("/v1/orders", CHECKOUT).json(&no_id),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("id_number"),
    ));
    let mut bad_amount = order_body(false);
    bad_amount["amount"] = json!(1);
    cases.push(ErrorCase::new(
        "amount mismatch",
        app.post("/v1/orders", CHECKOUT).json(&bad_amount),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("amount"),
    ));
    let mut unknown = order_body(false);
    unknown["coupon"] = json!("X");
    cases.push(ErrorCase::new(
        "unknown field",
        app.post("/v1/orders", CHECKOUT).json(&unknown),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("coupon"),
    ));
    let mut bad_email = order_body(false);
    bad_email["contact"]["email"] = json!("ouyang@");
    cases.push(ErrorCase::new(
        "bad email",
        app.post("/v1/orders", CHECKOUT).json(&bad_email),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("contact.email"),
    ));
    let mut empty_name = order_body(false);
    empty_name["consignee"]["name"] = json!("  ");
    cases.push(ErrorCase::new(
        "empty name",
        app.post("/v1/orders", CHECKOUT).json(&empty_name),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("consignee.name"),
    ));
    let mut long_name = order_body(false);
    long_name["consignee"]["name"] = json!("名".repeat(65));
    cases.push(ErrorCase::new(
        "long name",
        app.post("/v1/orders", CHECKOUT).json(&long_name),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("consignee.name"),
    ));
    cases.push(ErrorCase::new(
        "huge body",
        app.post("/v1/orders", CHECKOUT)
            .body(vec![b' '; 200 * 1024]),
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        None,
    ));
    cases.push(ErrorCase::new(
        "cancel twice",
        app.post(&format!("/v1/orders/{id}/cancel"), CHECKOUT)
            .json(&json!({"reason": "other"})),
        StatusCode::CONFLICT,
        "already_cancelled",
        None,
    ));
    cases.push(ErrorCase::new(
        "share cancelled",
        app.post(&format!("/v1/orders/{id}/shares"), CHECKOUT)
            .json(&json!({"party": {"kind": "logistics", "id": "sf"}, "fields": ["shipping"]})),
        StatusCode::CONFLICT,
        "order_cancelled",
        None,
    ));
    cases.push(ErrorCase::new(
        "stale If-Match",
        app.post(&format!("/v1/orders/{id}/erase"), PRIVACY)
            .header("if-match", "1")
            .json(&json!({})),
        StatusCode::PRECONDITION_FAILED,
        "version_mismatch",
        None,
    ));
    cases.push(ErrorCase::new(
        "bad reason",
        app.post(&format!("/v1/orders/{id}/cancel"), CHECKOUT)
            .json(&json!({"reason": "bored"})),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("reason"),
    ));
    cases.push(ErrorCase::new(
        "bad field class",
        app.post(&format!("/v1/orders/{id}/erase"), PRIVACY)
            .json(&json!({"fields": ["shoe_size"]})),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("fields[0]"),
    ));
    cases.push(ErrorCase::new(
        "no route",
        app.get("/v1/nothing", CHECKOUT),
        StatusCode::NOT_FOUND,
        "no_route",
        None,
    ));

    // No error echoes personal data, whatever the request carried.
    let cases = cases
        .into_iter()
        .map(|c| c.never_echoing([NAME, MOBILE, EMAIL, "110105194912310021", "ouyang@"]))
        .collect();
    cases::check_all(cases).await;
    assert_eq!(
        app.raw_records().len(),
        before,
        "no error wrote anything to Kafka"
    );
    app.app.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_refuses_another_body() {
    let app = TestApp::spawn().await;
    let body = order_body(false);
    let send = |b: &Value| {
        app.post("/v1/orders", CHECKOUT)
            .header("idempotency-key", "checkout-req-42")
            .json(b)
            .send()
    };
    let first = send(&body).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = send(&body).await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first);
    assert_eq!(app.raw_records().len(), 1, "a retry writes nothing");

    let mut other = body.clone();
    other["amount"] = json!(17_600);
    other["order_number"] = json!("ON-OTHER");
    let r = send(&other).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "idempotency_key_reused");
    assert_eq!(app.raw_records().len(), 1);

    // Idempotency survives a restart: it is rebuilt from the log.
    let app = app.restart().await;
    let r = app
        .post("/v1/orders", CHECKOUT)
        .header("idempotency-key", "checkout-req-42")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.json::<Value>().await.unwrap(), first);
    assert_eq!(app.raw_records().len(), 1);
    app.app.stop().await;
}

#[tokio::test]
async fn concurrent_writers_on_one_order_lose_no_update_and_versions_strictly_increase() {
    let app = TestApp::spawn().await;
    let id = placed_id(&app, false).await;
    let n = 24;
    let futs = (0..n).map(|i| {
        let app = &app;
        let id = id.clone();
        async move {
            call(app, &format!("/v1/orders/{id}/shares"), CHECKOUT,
                json!({"party": {"kind": "logistics", "id": format!("provider-{i}")}, "fields": ["shipping"]})).await
        }
    });
    let results = futures::future::join_all(futs).await;
    let versions: BTreeSet<u64> = results
        .iter()
        .map(|(s, b)| {
            assert_eq!(*s, StatusCode::OK, "{b}");
            b["version"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        versions,
        (2..=n + 1).collect::<BTreeSet<u64>>(),
        "each write got its own version"
    );
    let (_, order) = get_order(&app, &id, CHECKOUT).await;
    assert_eq!(order["version"], n + 1);
    assert_eq!(
        order["shares"].as_array().unwrap().len() as u64,
        n,
        "no lost update"
    );

    // With If-Match, exactly one of the racing writers wins.
    let v = n + 1;
    let futs = (0..8).map(|i| {
        let app = &app;
        let id = id.clone();
        async move {
            app.post(&format!("/v1/orders/{id}/shares"), CHECKOUT)
                .header("if-match", v.to_string())
                .json(&json!({"party": {"kind": "logistics", "id": format!("racer-{i}")}, "fields": ["shipping"]}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let statuses = futures::future::join_all(futs).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::PRECONDITION_FAILED)
            .count(),
        7
    );
    app.app.stop().await;
}

#[tokio::test]
async fn the_topic_holds_no_personal_plaintext_and_keys_are_order_ids() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = placed_id(&app, true).await;
        call(&app, &format!("/v1/orders/{id}/shares"), CHECKOUT,
            json!({"party": {"kind": "logistics", "id": "sf-express"}, "fields": ["shipping", "contact", "identity"]})).await;
        ids.push(id);
    }
    call(
        &app,
        &format!("/v1/orders/{}/erase", ids[0]),
        PRIVACY,
        json!({}),
    )
    .await;
    let records = app.raw_records();
    assert_eq!(records.len(), 11);
    let id_number = fixtures::id_number(7);
    for (key, value) in &records {
        let key_uuid = uuid::Uuid::from_slice(key).expect("record key is the 16-byte order id");
        assert!(ids.contains(&key_uuid.to_string()));
        for needle in [
            NAME,
            MOBILE,
            EMAIL,
            LANDLINE,
            STREET,
            id_number.as_str(),
            "518057",
        ] {
            assert!(
                !value.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "plaintext {needle:?} in the topic"
            );
            assert!(!key.windows(needle.len()).any(|w| w == needle.as_bytes()));
        }
    }
    app.app.stop().await;
}

#[tokio::test]
async fn state_is_rebuilt_from_the_log_on_restart() {
    let app = TestApp::spawn().await;
    let id = placed_id(&app, false).await;
    call(
        &app,
        &format!("/v1/orders/{id}/cancel"),
        CHECKOUT,
        json!({"reason": "other"}),
    )
    .await;
    let erased = placed_id(&app, false).await;
    call(
        &app,
        &format!("/v1/orders/{erased}/erase"),
        PRIVACY,
        json!({}),
    )
    .await;
    let app = app.restart().await;
    let (s, order) = get_order(&app, &id, CHECKOUT).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (order["version"].as_u64(), order["status"].as_str()),
        (Some(2), Some("cancelled"))
    );
    assert_eq!(order["personal"]["consignee"]["name"], NAME);
    let (s, b) = call(
        &app,
        &format!("/v1/orders/{id}/cancel"),
        CHECKOUT,
        json!({"reason": "other"}),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_cancelled"))
    );
    let (_, order) = get_order(&app, &erased, CHECKOUT).await;
    assert_eq!(
        (order["status"].as_str(), &order["personal"]),
        (Some("erased"), &Value::Null)
    );
    app.app.stop().await;
}

/// What four orders (cancelled, shared, erased, untouched) answer, reads and
/// refusals that write nothing, so it can be asked again after each restart.
async fn check_four_orders(app: &TestApp, ids: &[String], when: &str) {
    let (_, o) = get_order(app, &ids[0], CHECKOUT).await;
    assert_eq!(
        (o["version"].as_u64(), o["status"].as_str()),
        (Some(2), Some("cancelled")),
        "{when}: {o}"
    );
    let (s, b) = call(
        app,
        &format!("/v1/orders/{}/cancel", ids[0]),
        CHECKOUT,
        json!({"reason": "other"}),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_cancelled")),
        "{when}"
    );
    let share = json!({"party": {"kind": "logistics", "id": "sf-express"}, "fields": ["shipping"]});
    let (s, b) = call(
        app,
        &format!("/v1/orders/{}/shares", ids[1]),
        CHECKOUT,
        share.clone(),
    )
    .await;
    assert_eq!(
        (s, b["version"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{when}: sharing again changes nothing: {b}"
    );
    let (_, o) = get_order(app, &ids[1], CHECKOUT).await;
    assert_eq!(o["personal"]["consignee"]["name"], NAME, "{when}: {o}");
    let (s, b) = call(
        app,
        &format!("/v1/orders/{}/shares", ids[2]),
        CHECKOUT,
        share,
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("order_erased")),
        "{when}"
    );
    let (_, o) = get_order(app, &ids[2], CHECKOUT).await;
    assert_eq!(
        (o["status"].as_str(), &o["personal"]),
        (Some("erased"), &Value::Null),
        "{when}"
    );
    let (_, o) = get_order(app, &ids[3], CHECKOUT).await;
    assert_eq!(
        (o["version"].as_u64(), o["status"].as_str()),
        (Some(1), Some("active")),
        "{when}: {o}"
    );
    assert_eq!(o["personal"]["consignee"]["name"], NAME, "{when}: {o}");
}

async fn wait_ready(app: &TestApp) {
    for _ in 0..600 {
        let r = app
            .client
            .get(format!("{}/readyz", app.base))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("never ready");
}

/// The order state and its placement rows, digested.
fn state_digest(dir: &std::path::Path) -> Vec<(&'static str, (u64, String))> {
    let store = orderlog::store::Store::open_read_only(dir).unwrap();
    let d = orderlog::projections::query::digest(&store).unwrap();
    [
        orderlog::store::CF_ORDER_STATE,
        orderlog::store::CF_ORDER_PLACED,
    ]
    .map(|cf| (cf, d.per_view[cf].clone()))
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_state_on_disk_decides_alike_after_eviction_an_upgrade_and_an_empty_data_dir() {
    let mut app = TestApp::spawn().await;
    // A cache of one order: every other order is read back from RocksDB.
    app.config.state_cache_orders = 1;
    let app = app.restart().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(placed_id(&app, false).await);
    }
    call(
        &app,
        &format!("/v1/orders/{}/cancel", ids[0]),
        CHECKOUT,
        json!({"reason": "other"}),
    )
    .await;
    let (s, _) = call(
        &app,
        &format!("/v1/orders/{}/shares", ids[1]),
        CHECKOUT,
        json!({"party": {"kind": "logistics", "id": "sf-express"}, "fields": ["shipping"]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(
        &app,
        &format!("/v1/orders/{}/erase", ids[2]),
        PRIVACY,
        json!({}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    check_four_orders(&app, &ids, "with a cache of one order").await;

    // A restart resumes from the stored state and checkpoint.
    let app = app.restart().await;
    wait_ready(&app).await;
    check_four_orders(&app, &ids, "after a restart").await;
    let before = state_digest(&app.config.data_dir);
    assert_eq!(before[0].1.0, 4, "one state row per order");
    assert!(
        app.app
            .service
            .placed(ids[2].parse().unwrap())
            .unwrap()
            .is_none(),
        "no placement once erased"
    );
    assert!(
        app.app
            .service
            .placed(ids[3].parse().unwrap())
            .unwrap()
            .is_some()
    );

    // A data dir of the previous version: views and their offsets, no
    // order state. The writers build it from offset 0.
    let app = app
        .restart_after(|dir| {
            let store = orderlog::store::Store::open(dir).unwrap();
            for cf in [
                orderlog::store::CF_ORDER_STATE,
                orderlog::store::CF_ORDER_PLACED,
                orderlog::store::CF_META,
            ] {
                let keys: Vec<_> = store
                    .db()
                    .iterator_cf(store.cf(cf), rocksdb::IteratorMode::Start)
                    .map(|kv| kv.unwrap().0)
                    .collect();
                for k in keys {
                    store.db().delete_cf(store.cf(cf), k).unwrap();
                }
            }
        })
        .await;
    wait_ready(&app).await;
    check_four_orders(
        &app,
        &ids,
        "after an upgrade from a data dir without order state",
    )
    .await;
    assert_eq!(
        state_digest(&app.config.data_dir),
        before,
        "the rebuilt state equals the kept one"
    );

    // An empty data dir: keys from the replica topic, state and views from the log.
    let app = app
        .restart_after(|dir| {
            std::fs::remove_dir_all(dir).unwrap();
        })
        .await;
    wait_ready(&app).await;
    check_four_orders(&app, &ids, "after a start on an empty data dir").await;
    assert_eq!(
        state_digest(&app.config.data_dir),
        before,
        "the rebuilt state equals the kept one"
    );
    let (s, b) = call(
        &app,
        &format!("/v1/orders/{}/cancel", ids[3]),
        CHECKOUT,
        json!({"reason": "other"}),
    )
    .await;
    assert_eq!((s, b["version"].as_u64()), (StatusCode::OK, Some(2)), "{b}");
    app.app.stop().await;
}

#[test]
fn the_committed_openapi_document_is_the_generated_one() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap();
    let generated = orderlog::api::openapi::document_json();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()))
            + 1;
        panic!(
            "schemas/openapi.json is not the document the code generates (they differ from \
             line {line}); regenerate it with `cargo run -- openapi > schemas/openapi.json`"
        );
    }
}

#[test]
fn orderlog_openapi_prints_the_generated_document_and_nothing_else() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orderlog"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8(out.stdout).unwrap() == orderlog::api::openapi::document_json(),
        "`orderlog openapi` printed something else than api::openapi::document_json()"
    );
}

#[test]
fn the_openapi_document_names_exactly_the_routes_served() {
    let doc: Value = serde_json::to_value(orderlog::api::openapi::document()).unwrap();
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let served: BTreeSet<(String, String)> = orderlog::api::route_list()
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    let missing: Vec<_> = served.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "routes without an operation in api::openapi (give the handler a #[utoipa::path] \
         and list it there): {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "api::openapi documents routes that api::routes() does not serve: {stale:?}"
    );
}
