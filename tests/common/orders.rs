//! Order bodies and the HTTP calls the black-box tests share.
//!
//! One builder makes every test's place-order body; each test keeps its own
//! people, goods and order numbers (what it asserts on), and the builder
//! keeps the shape of the request and the amount (the sum of the lines).
//! Here live only requests and answers as a client sees them: nothing of a
//! test's scenario.

use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use super::app::{CHECKOUT, TestApp};

/// A line of an order.
#[derive(Debug, Clone, Copy)]
pub struct Line {
    pub sku: &'static str,
    pub name: &'static str,
    pub quantity: i64,
    pub unit_price: i64,
    /// `Some` writes the `real_name` flag, `None` leaves it out.
    pub real_name: Option<bool>,
}

impl Line {
    pub const fn new(
        sku: &'static str,
        name: &'static str,
        quantity: i64,
        unit_price: i64,
    ) -> Self {
        Self {
            sku,
            name,
            quantity,
            unit_price,
            real_name: None,
        }
    }

    /// The line with its `real_name` flag written as `yes`.
    pub const fn real_name(self, yes: bool) -> Self {
        Self {
            real_name: Some(yes),
            ..self
        }
    }

    fn json(&self) -> Value {
        let mut line = json!({
            "sku": self.sku,
            "name": self.name,
            "quantity": self.quantity,
            "unit_price": self.unit_price,
        });
        if let Some(yes) = self.real_name {
            line["real_name"] = json!(yes);
        }
        line
    }
}

/// The part of an address a test does not vary (the street does vary).
#[derive(Debug, Clone, Copy)]
pub struct Area {
    pub province: &'static str,
    pub city: &'static str,
    pub district: &'static str,
    pub postal_code: &'static str,
}

pub const SHENZHEN: Area = Area {
    province: "广东省",
    city: "深圳市",
    district: "南山区",
    postal_code: "518057",
};

pub const LUOYANG: Area = Area {
    province: "河南省",
    city: "洛阳市",
    district: "老城区",
    postal_code: "471000",
};

/// A place-order body. [`OrderBody::new`] is the plainest valid order (张三
/// in Shenzhen buys two teas from `m-1`, no contact, no id number); the
/// options change one part each.
#[derive(Debug, Clone)]
pub struct OrderBody {
    order_number: String,
    merchant: String,
    lines: Vec<Line>,
    name: String,
    mobile: String,
    area: Area,
    street: String,
    landline: Option<String>,
    email: Option<String>,
    id_number: Option<String>,
}

impl OrderBody {
    pub fn new(order_number: impl Into<String>) -> Self {
        Self {
            order_number: order_number.into(),
            merchant: "m-1".into(),
            lines: vec![Line::new("TEA-250", "Longjing tea", 2, 8800)],
            name: "张三".into(),
            mobile: "13800138000".into(),
            area: SHENZHEN,
            street: "科技园路 1 号".into(),
            landline: None,
            email: None,
            id_number: None,
        }
    }

    pub fn merchant(mut self, merchant: impl Into<String>) -> Self {
        self.merchant = merchant.into();
        self
    }

    /// Replaces the lines.
    pub fn lines(mut self, lines: &[Line]) -> Self {
        self.lines = lines.to_vec();
        self
    }

    /// Adds a line.
    pub fn line(mut self, line: Line) -> Self {
        self.lines.push(line);
        self
    }

    pub fn consignee(mut self, name: impl Into<String>, mobile: impl Into<String>) -> Self {
        self.name = name.into();
        self.mobile = mobile.into();
        self
    }

    pub fn address(mut self, area: Area, street: impl Into<String>) -> Self {
        self.area = area;
        self.street = street.into();
        self
    }

    pub fn landline(mut self, landline: impl Into<String>) -> Self {
        self.landline = Some(landline.into());
        self
    }

    pub fn email(mut self, email: impl Into<String>) -> Self {
        self.email = Some(email.into());
        self
    }

    pub fn id_number(mut self, id_number: impl Into<String>) -> Self {
        self.id_number = Some(id_number.into());
        self
    }

    /// The body with `options` applied when `yes`.
    pub fn when(self, yes: bool, options: impl FnOnce(Self) -> Self) -> Self {
        if yes { options(self) } else { self }
    }

    /// The request body; `contact` holds only the channels given, and is
    /// left out without any.
    pub fn json(&self) -> Value {
        let amount: i64 = self.lines.iter().map(|l| l.quantity * l.unit_price).sum();
        let mut body = json!({
            "order_number": self.order_number,
            "merchant_id": self.merchant,
            "items": self.lines.iter().map(Line::json).collect::<Vec<_>>(),
            "currency": "CNY",
            "amount": amount,
            "consignee": {
                "name": self.name,
                "address": {
                    "province": self.area.province,
                    "city": self.area.city,
                    "district": self.area.district,
                    "street": self.street,
                    "postal_code": self.area.postal_code,
                },
                "mobile": self.mobile,
            },
        });
        let mut contact = Map::new();
        if let Some(l) = &self.landline {
            contact.insert("landline".into(), json!(l));
        }
        if let Some(e) = &self.email {
            contact.insert("email".into(), json!(e));
        }
        if !contact.is_empty() {
            body["contact"] = Value::Object(contact);
        }
        if let Some(id) = &self.id_number {
            body["id_number"] = json!(id);
        }
        body
    }
}

/// Sends `req`: the status and the body, `null` when it is not JSON.
pub async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// [`send`] for an answer that must be JSON (it panics otherwise).
pub async fn send_json(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

/// POSTs `body` to `path` and asserts a success: the answer's body.
pub async fn post_ok(app: &TestApp, path: &str, token: &str, body: Value) -> Value {
    let r = app.post(path, token).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// GETs `path`: the status and the body, `null` when it is not JSON.
pub async fn get(app: &TestApp, path: &str, token: &str) -> (StatusCode, Value) {
    send(app.get(path, token)).await
}

/// Places `body` as checkout and asserts 201: the new order's id.
pub async fn place(app: &TestApp, body: &Value) -> String {
    let (status, answer) = send_json(app.post("/v1/orders", CHECKOUT).json(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer["order_id"].as_str().unwrap().to_owned()
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The goods of the API and model tests' orders: a tea, and a drill that
/// needs the buyer's real name.
pub const TEA_250G: Line = Line::new("SKU-TEA-250", "Longjing tea 250 g", 2, 8800);
pub const CORDLESS_DRILL: Line =
    Line::new("SKU-DRILL-18V", "Cordless drill", 1, 39_900).real_name(true);
