//! Malformed and hostile requests against an in-process app: each gets a
//! clear 4xx with a JSON error naming the problem, never echoes what was
//! sent, and writes nothing to Kafka; names that merely look like SQL or
//! HTML are valid and come back byte for byte. Random bodies are thrown at
//! every write route too (64 each; `ORDERLOG_FUZZ_CASES=N` for a long form).

use crate::common;

use common::app::{CHECKOUT, LOGISTICS_SF, TestApp};
use common::cases::{self, ErrorCase};
use common::orders::OrderBody;
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn order_body() -> Value {
    OrderBody::new(format!("ON-{}", uuid::Uuid::new_v4().simple())).json()
}

fn with(path: &[&str], value: Value) -> Value {
    let mut b = order_body();
    let mut at = &mut b;
    for p in path {
        at = if let Ok(i) = p.parse::<usize>() {
            &mut at[i]
        } else {
            &mut at[*p]
        };
    }
    *at = value;
    b
}

#[tokio::test]
async fn malformed_requests_get_a_clear_4xx_and_write_nothing() {
    let app = TestApp::spawn().await;
    let json_req = |b: &Value| app.post("/v1/orders", CHECKOUT).json(b);
    let raw_req = |b: Vec<u8>| {
        app.post("/v1/orders", CHECKOUT)
            .header("content-type", "application/json")
            .body(b)
    };
    let case = |name, req, status, code, field: Option<&'static str>, secret: Option<&str>| {
        ErrorCase::new(name, req, status, code, field).never_echoing(secret)
    };
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let mut deep = String::new();
    for _ in 0..10_000 {
        deep.push('[');
    }
    let mut invalid_utf8 = serde_json::to_vec(&order_body()).unwrap();
    let at = invalid_utf8
        .windows(2)
        .position(|w| w == b"\xe5\xbc")
        .unwrap();
    invalid_utf8[at] = 0xff;
    let cases = vec![
        case(
            "invalid JSON",
            raw_req(b"{\"order_number\": \"SECRET-1\",".to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            None,
            Some("SECRET-1"),
        ),
        case(
            "JSON array instead of object",
            json_req(&json!(["SECRET-2"])),
            unprocessable,
            "invalid_field",
            Some("body"),
            Some("SECRET-2"),
        ),
        case(
            "a valid order as a positional array",
            json_req(&json!([
                "ON-POSITIONAL",
                "m-1",
                [["TEA-250", "Longjing tea", 2, 8800, false]],
                "CNY",
                17600,
                [
                    "张三",
                    ["广东省", "深圳市", "南山区", "科技园路 1 号", "518057"],
                    "13800138000"
                ]
            ])),
            unprocessable,
            "invalid_field",
            Some("body"),
            Some("张三"),
        ),
        case(
            "amount is a string",
            json_req(&with(&["amount"], json!("SECRET-3"))),
            unprocessable,
            "invalid_field",
            Some("amount"),
            Some("SECRET-3"),
        ),
        case(
            "quantity is a float",
            json_req(&with(&["items", "0", "quantity"], json!(2.5))),
            unprocessable,
            "invalid_field",
            Some("items[0].quantity"),
            None,
        ),
        case(
            "name is a number",
            json_req(&with(&["consignee", "name"], json!(424242))),
            unprocessable,
            "invalid_field",
            Some("consignee.name"),
            Some("424242"),
        ),
        case(
            "huge body",
            raw_req(vec![b'{'; 65 * 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            None,
            None,
        ),
        case(
            "huge but valid-looking name",
            json_req(&with(&["consignee", "name"], json!("x".repeat(70_000)))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            None,
            None,
        ),
        case(
            // Refused as not an object, before any recursion limit matters.
            "deeply nested JSON",
            raw_req(deep.into_bytes()),
            unprocessable,
            "invalid_field",
            Some("body"),
            None,
        ),
        case(
            "invalid UTF-8 in a string",
            raw_req(invalid_utf8),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            None,
            None,
        ),
        case(
            "right-to-left override in name",
            json_req(&with(&["consignee", "name"], json!("张\u{202e}三"))),
            unprocessable,
            "invalid_field",
            Some("consignee.name"),
            Some("张\u{202e}三"),
        ),
        case(
            "zero-width space in name",
            json_req(&with(&["consignee", "name"], json!("张\u{200b}三"))),
            unprocessable,
            "invalid_field",
            Some("consignee.name"),
            Some("张\u{200b}三"),
        ),
        case(
            "65 CJK characters in name",
            json_req(&with(&["consignee", "name"], json!("龍".repeat(65)))),
            unprocessable,
            "invalid_field",
            Some("consignee.name"),
            Some(&"龍".repeat(65)),
        ),
        case(
            "negative amount",
            json_req(&with(&["amount"], json!(-17600))),
            unprocessable,
            "invalid_field",
            Some("amount"),
            Some("-17600"),
        ),
        case(
            "negative quantity",
            json_req(&with(&["items", "0", "quantity"], json!(-2))),
            unprocessable,
            "invalid_field",
            Some("items[0].quantity"),
            None,
        ),
        case(
            "negative price",
            json_req(&with(&["items", "0", "unit_price"], json!(-8800))),
            unprocessable,
            "invalid_field",
            Some("items[0].unit_price"),
            Some("-8800"),
        ),
        case(
            "amount over i64",
            json_req(&with(&["amount"], json!(u64::MAX))),
            unprocessable,
            "invalid_field",
            Some("amount"),
            Some("18446744073709551615"),
        ),
        case(
            "price over i64",
            json_req(&with(
                &["items", "0", "unit_price"],
                json!(9_223_372_036_854_775_808u64),
            )),
            unprocessable,
            "invalid_field",
            Some("items[0].unit_price"),
            Some("9223372036854775808"),
        ),
        case(
            "amount beyond u64",
            raw_req(
                serde_json::to_string(&order_body())
                    .unwrap()
                    .replace("17600", "1844674407370955161600")
                    .into_bytes(),
            ),
            unprocessable,
            "invalid_field",
            Some("amount"),
            Some("1844674407370955161600"),
        ),
        case(
            "line total overflows",
            json_req(&with(
                &["items", "0"],
                json!({"sku": "TEA-250", "name": "Longjing tea", "quantity": 100_000, "unit_price": i64::MAX}),
            )),
            unprocessable,
            "invalid_field",
            Some("items"),
            None,
        ),
        case(
            "sum of lines overflows",
            json_req(&with(
                &["items"],
                json!([
                    {"sku": "A", "name": "a", "quantity": 2, "unit_price": i64::MAX},
                    {"sku": "B", "name": "b", "quantity": 2, "unit_price": i64::MAX},
                    {"sku": "C", "name": "c", "quantity": 2, "unit_price": i64::MAX},
                ]),
            )),
            unprocessable,
            "invalid_field",
            Some("items"),
            None,
        ),
        case(
            "missing token",
            app.client
                .post(format!("{}/v1/orders", app.base))
                .json(&order_body()),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            None,
            None,
        ),
        case(
            "logistics token on a checkout route",
            app.post("/v1/orders", LOGISTICS_SF).json(&order_body()),
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
            Some(LOGISTICS_SF),
        ),
        case(
            "token in the Basic scheme",
            app.client
                .post(format!("{}/v1/orders", app.base))
                .header("authorization", format!("Basic {CHECKOUT}"))
                .json(&order_body()),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            None,
            Some(CHECKOUT),
        ),
    ];
    cases::check_all(cases).await;

    // Valid names: within the rules, stored opaque, returned exactly.
    let valid = [
        "Ziyi 😀🚚",
        &"龍".repeat(64),
        "Zoë Cafe\u{301}",
        "Robert'); DROP TABLE orders;--",
        "<script>alert(1)</script>",
        "\"quoted\" & 'single' \\ back",
        "مرحبا עברית",
    ];
    let mut ids = Vec::new();
    for name in valid {
        let r = json_req(&with(&["consignee", "name"], json!(name)))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{name:?}: {body}");
        ids.push((body["order_id"].as_str().unwrap().to_owned(), name));
    }
    for (id, name) in &ids {
        let order: Value = app
            .get(&format!("/v1/orders/{id}"), CHECKOUT)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(order["personal"]["consignee"]["name"], *name);
    }
    assert_eq!(
        app.raw_records().len(),
        valid.len(),
        "only the valid requests wrote records"
    );
    app.app.stop().await;
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,80}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("order_number".to_owned()),
                    Just("amount".to_owned()),
                    Just("items".to_owned()),
                    Just("consignee".to_owned()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A body, and whether it is a valid order (`None`: may be, by chance).
fn arb_body() -> impl Strategy<Value = (Vec<u8>, Option<bool>)> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512).prop_map(|b| (b, Some(false))),
        arb_json().prop_map(|v| (serde_json::to_vec(&v).unwrap(), Some(false))),
        // A valid order with one field replaced by a random value.
        (
            prop_oneof![
                Just(vec!["amount"]),
                Just(vec!["order_number"]),
                Just(vec!["consignee", "name"]),
                Just(vec!["consignee", "mobile"]),
                Just(vec!["items", "0", "quantity"]),
                Just(vec!["items", "0", "unit_price"]),
                Just(vec!["items"]),
            ],
            arb_json()
        )
            .prop_map(|(path, v)| (serde_json::to_vec(&with(&path, v)).unwrap(), None)),
        Just(()).prop_map(|()| (serde_json::to_vec(&order_body()).unwrap(), Some(true))),
    ]
}

/// Random bodies per route: 64 under plain `cargo test`,
/// `ORDERLOG_FUZZ_CASES=N` for a long form.
fn fuzz_cases() -> u32 {
    std::env::var("ORDERLOG_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

#[test]
fn random_bodies_get_a_4xx_or_a_201_and_never_a_5xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(TestApp::spawn());
    let config = ProptestConfig {
        cases: fuzz_cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |((body, valid) in arb_body())| {
        let (status, answer) = rt.block_on(async {
            let r = app
                .post("/v1/orders", CHECKOUT)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let s = r.status();
            (s, r.text().await.unwrap())
        });
        prop_assert!(!status.is_server_error(), "{status}: {answer}");
        if status == StatusCode::CREATED {
            // A random replacement may happen to be valid (an in-range number).
            prop_assert!(valid != Some(false), "a 201 for an invalid body: {answer}");
            let v: Value = serde_json::from_str(&answer).unwrap();
            prop_assert!(v["order_id"].is_string(), "{answer}");
        } else {
            prop_assert!(valid != Some(true), "a valid order was refused: {status}: {answer}");
            prop_assert!(status.is_client_error(), "{status}: {answer}");
            let v: Value = serde_json::from_str(&answer).unwrap();
            prop_assert!(v["error"]["code"].is_string(), "{answer}");
        }
    });
    rt.block_on(app.app.stop());
}

/// A body for share, cancel or erase: random bytes, random JSON, or a
/// plausible body with one part replaced.
fn arb_command_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        arb_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        arb_json().prop_map(|v| serde_json::to_vec(
            &json!({"party": {"kind": "logistics", "id": v}, "fields": ["shipping"]})
        )
        .unwrap()),
        arb_json().prop_map(|v| serde_json::to_vec(&json!({"fields": v})).unwrap()),
        arb_json().prop_map(|v| serde_json::to_vec(&json!({"reason": v})).unwrap()),
    ]
}

#[test]
fn random_bodies_for_share_cancel_and_erase_never_get_a_5xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(TestApp::spawn());
    let config = ProptestConfig {
        cases: fuzz_cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(body in arb_command_body(), route in 0..3usize)| {
        let (status, answer) = rt.block_on(async {
            let r = app
                .post("/v1/orders", CHECKOUT)
                .json(&order_body())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            let id = r.json::<Value>().await.unwrap()["order_id"].as_str().unwrap().to_owned();
            let (path, token) = match route {
                0 => (format!("/v1/orders/{id}/shares"), CHECKOUT),
                1 => (format!("/v1/orders/{id}/cancel"), CHECKOUT),
                _ => (format!("/v1/orders/{id}/erase"), common::app::PRIVACY),
            };
            let r = app
                .post(&path, token)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let s = r.status();
            (s, r.text().await.unwrap())
        });
        prop_assert!(!status.is_server_error(), "{status}: {answer}");
        if !status.is_success() {
            prop_assert!(status.is_client_error(), "{status}: {answer}");
            let v: Value = serde_json::from_str(&answer).unwrap();
            prop_assert!(v["error"]["code"].is_string(), "{answer}");
        }
    });
    rt.block_on(app.app.stop());
}
