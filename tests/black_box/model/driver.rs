//! The driver: the request bodies, sending a step to the app, and
//! comparing each answer with the model's prediction.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use orderlog::domain::fixtures;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

use super::reference::{Expect, Keyed, Model, ModelOrder, Secrets, refused_or};
use super::steps::{Class, Contact, IfMatch, PartyPick, Reason, Step, Target};
use super::{FOREIGN_MERCHANT, OWN_MERCHANT, REQUEST_TIMEOUT};
use crate::common::app::{CHECKOUT, PRIVACY, TestApp};
use crate::common::orders::{CORDLESS_DRILL, OrderBody, SHENZHEN, TEA_250G};

// Request bodies

pub(super) const NAMES: [&str; 6] = [
    "欧阳娜娜",
    "张三丰",
    "李秀英",
    "王芳",
    "陈静",
    "Zoë O'Brien",
];

pub(super) fn order_body(n: u32, real_name: bool, contact: Contact) -> (Value, Secrets) {
    let secrets = Secrets {
        name: format!("{}-{n:04}", NAMES[n as usize % NAMES.len()]),
        street: format!("科技园南区高新南七道 {n:04} 号"),
        mobile: format!("139{:08}", 10_000_000 + n),
        landline: matches!(contact, Contact::Landline | Contact::Both)
            .then(|| format!("0755-86{n:06}")),
        email: matches!(contact, Contact::Email | Contact::Both)
            .then(|| format!("buyer.{n:04}@example.com")),
        id_number: real_name.then(|| fixtures::id_number(1000 + n)),
    };
    let mut order = OrderBody::new(format!("ON-MODEL-{n:04}"))
        .merchant(OWN_MERCHANT)
        .lines(&[TEA_250G])
        .consignee(&secrets.name, &secrets.mobile)
        .address(SHENZHEN, &secrets.street);
    if let Some(id) = &secrets.id_number {
        order = order.line(CORDLESS_DRILL).id_number(id);
    }
    let mut body = order.json();
    // Both channels named, `null` for one not given: a client may send that.
    if !matches!(contact, Contact::None) {
        body["contact"] = json!({"landline": secrets.landline, "email": secrets.email});
    }
    (body, secrets)
}

// ---------------------------------------------------------------------------
// Running a case

#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) runs: u32,
    pub(super) steps: u64,
    pub(super) restarts: u64,
    pub(super) requests: u64,
    pub(super) written: u64,
    pub(super) refused: u64,
    pub(super) orders: u64,
    pub(super) view_checks: u64,
}

pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) etag: Option<String>,
    pub(super) replayed: bool,
    pub(super) body: Value,
}

pub(super) fn fail(msg: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(msg.into())
}

pub(super) async fn send(
    req: reqwest::RequestBuilder,
    stats: &RefCell<Stats>,
) -> Result<Answer, TestCaseError> {
    stats.borrow_mut().requests += 1;
    let r = req
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| fail(format!("request failed: {e}")))?;
    let status = r.status().as_u16();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let etag = header("etag");
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    let text = r
        .text()
        .await
        .map_err(|e| fail(format!("reading the body: {e}")))?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Answer {
        status,
        etag,
        replayed,
        body,
    })
}

/// [`send`] for an order the party should see: a view answers 404 at once
/// until this node has projected what makes the order visible to the party
/// (its placing, its share), so a 404 is retried for a while.
pub(super) async fn send_visible(
    req: impl Fn() -> reqwest::RequestBuilder,
    stats: &RefCell<Stats>,
) -> Result<Answer, TestCaseError> {
    let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        let a = send(req(), stats).await?;
        if a.status != 404 || std::time::Instant::now() >= deadline {
            return Ok(a);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Compares an answer with the prediction; `Ok(true)` when it was a write.
pub(super) fn compare(
    what: &str,
    expect: &Expect,
    a: &Answer,
    secrets: &[&str],
    stats: &RefCell<Stats>,
) -> Result<bool, TestCaseError> {
    let text = a.body.to_string();
    match expect {
        Expect::Written { status, version } => {
            stats.borrow_mut().written += 1;
            prop_assert_eq!(a.status, *status, "{}: status; answer {}", what, text);
            prop_assert_eq!(
                a.body["version"].as_u64(),
                Some(*version),
                "{}: version; answer {}",
                what,
                text
            );
            prop_assert_eq!(
                a.etag.clone(),
                Some(format!("\"{version}\"")),
                "{}: ETag",
                what
            );
            Ok(true)
        }
        Expect::Refused(allowed) => {
            stats.borrow_mut().refused += 1;
            let code = a.body["error"]["code"].as_str().unwrap_or("");
            prop_assert!(
                allowed.iter().any(|(s, c)| *s == a.status && *c == code),
                "{}: expected one of {:?}, got {} {}",
                what,
                allowed,
                a.status,
                text
            );
            for s in secrets {
                prop_assert!(
                    !text.contains(s),
                    "{}: the error echoes personal data: {}",
                    what,
                    text
                );
            }
            Ok(false)
        }
    }
}

pub(super) fn party_json(p: PartyPick) -> (String, String) {
    match p {
        PartyPick::Logistics(id) => ("logistics".into(), id.into()),
        PartyPick::OwnMerchant => ("merchant".into(), OWN_MERCHANT.into()),
        PartyPick::ForeignMerchant => ("merchant".into(), FOREIGN_MERCHANT.into()),
    }
}

pub(super) fn class_names(c: impl IntoIterator<Item = Class>) -> Vec<&'static str> {
    c.into_iter().map(Class::as_str).collect()
}

pub(super) fn string_set(v: &Value) -> Option<BTreeSet<String>> {
    v.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_owned))
        .collect()
}

pub(super) fn set_of(c: &BTreeSet<Class>) -> Option<BTreeSet<String>> {
    Some(c.iter().map(|c| c.as_str().to_owned()).collect())
}

pub(super) struct Case<'a> {
    pub(super) app: TestApp,
    pub(super) model: Model,
    pub(super) stats: &'a RefCell<Stats>,
}

impl Case<'_> {
    /// The order a step aims at: its index in the model, or an unknown id.
    /// A placement under a key whose order has lost a class (or all).
    pub(super) fn placed_then_erased(&self, first: &Keyed) -> bool {
        first.path == "/v1/orders"
            && self
                .model
                .orders
                .iter()
                .any(|o| o.id == first.order_id && (o.fully_erased || !o.erased.is_empty()))
    }

    pub(super) fn resolve(&self, t: Target) -> (Option<usize>, String) {
        match t {
            Target::Placed(i) if !self.model.orders.is_empty() => {
                let i = i % self.model.orders.len();
                (Some(i), self.model.orders[i].id.clone())
            }
            _ => (None, uuid::Uuid::now_v7().to_string()),
        }
    }

    pub(super) fn if_match(&self, at: Option<usize>, im: Option<IfMatch>) -> Option<u64> {
        let v = self.model.orders[at?].version;
        match im? {
            IfMatch::Current => Some(v),
            IfMatch::Stale if v > 1 => Some(v - 1),
            IfMatch::Stale => Some(v + 1),
        }
    }

    pub(super) fn all_secrets(&self) -> Vec<String> {
        self.model
            .orders
            .iter()
            .flat_map(|o| {
                Class::ALL
                    .into_iter()
                    .flat_map(|c| o.secrets.of(c))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub(super) async fn step(&mut self, n: usize, step: &Step) -> Result<(), TestCaseError> {
        let what = format!("step {n} {step:?}");
        let secrets = self.all_secrets();
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        match step {
            Step::Place {
                real_name,
                contact,
                idempotency_key,
            } => {
                let (body, order_secrets) = order_body(self.model.placed, *real_name, *contact);
                self.model.placed += 1;
                let key = idempotency_key.map(|k| format!("model-key-{k}"));
                let mut req = self.app.post("/v1/orders", CHECKOUT).json(&body);
                if let Some(k) = &key {
                    req = req.header("idempotency-key", k);
                }
                // A key already used with another body (every body differs:
                // order numbers are unique); once its order lost any class,
                // the first request can no longer be compared at all.
                let used = key.as_ref().and_then(|k| self.model.keys.get(k));
                let expect = if let Some(first) = used {
                    if self.placed_then_erased(first) {
                        Expect::Refused(vec![(409, "idempotency_key_erased")])
                    } else {
                        Expect::Refused(vec![(422, "idempotency_key_reused")])
                    }
                } else {
                    Expect::Written {
                        status: 201,
                        version: 1,
                    }
                };
                let a = send(req, self.stats).await?;
                if compare(&what, &expect, &a, &secrets, self.stats)? {
                    let id = a.body["order_id"].as_str().unwrap_or_default().to_owned();
                    prop_assert!(
                        uuid::Uuid::parse_str(&id).is_ok(),
                        "{}: order id {}",
                        what,
                        a.body
                    );
                    prop_assert!(
                        !self.model.orders.iter().any(|o| o.id == id),
                        "{}: order id reused",
                        what
                    );
                    prop_assert!(!a.replayed, "{}: a first request is not a replay", what);
                    if let Some(k) = key {
                        self.model.keys.insert(
                            k,
                            Keyed {
                                path: "/v1/orders".to_owned(),
                                body,
                                status: 201,
                                order_id: id.clone(),
                                version: 1,
                            },
                        );
                    }
                    self.model.orders.push(ModelOrder {
                        id,
                        version: 1,
                        real_name: *real_name,
                        secrets: order_secrets,
                        cancel_reason: None,
                        erased: BTreeSet::new(),
                        fully_erased: false,
                        shares: BTreeMap::new(),
                    });
                    self.stats.borrow_mut().orders += 1;
                }
            }
            Step::Retry { key, same_body } => {
                if self.model.keys.is_empty() {
                    return Ok(());
                }
                let (k, first) = self
                    .model
                    .keys
                    .iter()
                    .nth(key % self.model.keys.len())
                    .map(|(k, p)| (k.clone(), p.clone()))
                    .expect("non-empty");
                let mut body = first.body.clone();
                if !same_body {
                    if first.path == "/v1/orders" {
                        body["order_number"] = json!(format!(
                            "{}-OTHER",
                            body["order_number"].as_str().unwrap_or("")
                        ));
                    } else {
                        body["party"] = json!({"kind": "logistics", "id": "jd-logistics"});
                    }
                }
                let req = self
                    .app
                    .post(&first.path, CHECKOUT)
                    .header("idempotency-key", &k)
                    .json(&body);
                let a = send(req, self.stats).await?;
                if self.placed_then_erased(&first) {
                    // The digest of a placement is keyed by the order's key:
                    // erasing any class leaves nothing to compare with.
                    compare(
                        &what,
                        &Expect::Refused(vec![(409, "idempotency_key_erased")]),
                        &a,
                        &secrets,
                        self.stats,
                    )?;
                } else if *same_body {
                    // The first answer again, and nothing written.
                    compare(
                        &what,
                        &Expect::Written {
                            status: first.status,
                            version: first.version,
                        },
                        &a,
                        &secrets,
                        self.stats,
                    )?;
                    prop_assert_eq!(
                        a.body["order_id"].as_str(),
                        Some(first.order_id.as_str()),
                        "{}: replay answers the first order id",
                        what
                    );
                    prop_assert!(a.replayed, "{}: Idempotent-Replayed header", what);
                } else {
                    compare(
                        &what,
                        &Expect::Refused(vec![(422, "idempotency_key_reused")]),
                        &a,
                        &secrets,
                        self.stats,
                    )?;
                }
            }
            Step::Share {
                target,
                party,
                fields,
                if_match,
                idempotency_key,
            } => {
                let (at, id) = self.resolve(*target);
                let (kind, pid) = party_json(*party);
                let body = json!({"party": {"kind": kind, "id": pid}, "fields": class_names(fields.iter().copied())});
                let path = format!("/v1/orders/{id}/shares");
                let key = idempotency_key.map(|k| format!("model-key-{k}"));
                let if_match = if key.is_some() {
                    None
                } else {
                    self.if_match(at, *if_match)
                };
                let mut req = self.app.post(&path, CHECKOUT).json(&body);
                if let Some(v) = if_match {
                    req = req.header("if-match", v.to_string());
                }
                if let Some(k) = &key {
                    req = req.header("idempotency-key", k);
                }
                let requested: BTreeSet<Class> = fields.iter().copied().collect();
                let known = key.as_ref().and_then(|k| self.model.keys.get(k));
                let (expect, next) = match (known, at) {
                    // The same key and request: the first answer, nothing written.
                    (Some(first), _) if first.path == path && first.body == body => (
                        Expect::Written {
                            status: first.status,
                            version: first.version,
                        },
                        None,
                    ),
                    (Some(_), _) => (Expect::Refused(vec![(422, "idempotency_key_reused")]), None),
                    (None, None) => (Expect::Refused(vec![(404, "order_not_found")]), None),
                    (None, Some(i)) => {
                        let o = &self.model.orders[i];
                        let mut errs = Vec::new();
                        if if_match.is_some_and(|v| v != o.version) {
                            errs.push((412, "version_mismatch"));
                        }
                        if o.fully_erased {
                            errs.push((409, "order_erased"));
                        }
                        if o.cancel_reason.is_some() {
                            errs.push((409, "order_cancelled"));
                        }
                        if requested.is_empty() {
                            errs.push((422, "no_field_classes"));
                        }
                        if matches!(party, PartyPick::ForeignMerchant) {
                            errs.push((422, "foreign_merchant"));
                        }
                        if requested.contains(&Class::Identity) && !o.real_name {
                            errs.push((422, "identity_not_applicable"));
                        }
                        if requested.contains(&Class::Contact) && !o.holds(Class::Contact) {
                            errs.push((422, "no_contact_fields"));
                        }
                        if requested.iter().any(|c| o.erased.contains(c)) {
                            errs.push((409, "field_class_erased"));
                        }
                        let mut next = o.clone();
                        let had = next.shares.entry((kind, pid)).or_default();
                        let before = had.len();
                        had.extend(requested.iter().copied());
                        // Sharing again what was already shared records nothing new.
                        if had.len() > before {
                            next.version += 1;
                        }
                        (
                            refused_or(
                                errs,
                                Expect::Written {
                                    status: 200,
                                    version: next.version,
                                },
                            ),
                            Some((i, next)),
                        )
                    }
                };
                let a = send(req, self.stats).await?;
                let replay = known.is_some();
                if compare(&what, &expect, &a, &secrets, self.stats)? {
                    prop_assert_eq!(a.replayed, replay, "{}: Idempotent-Replayed header", what);
                    if let Some((i, next)) = next {
                        if let Some(k) = key {
                            self.model.keys.insert(
                                k,
                                Keyed {
                                    path,
                                    body,
                                    status: 200,
                                    order_id: id,
                                    version: next.version,
                                },
                            );
                        }
                        self.model.orders[i] = next;
                    }
                }
            }
            Step::Cancel {
                target,
                reason,
                if_match,
            } => {
                let (at, id) = self.resolve(*target);
                let raw = match reason {
                    Reason::Valid(r) => *r,
                    Reason::Invalid => "changed_my_mind",
                };
                let if_match = self.if_match(at, *if_match);
                let mut req = self
                    .app
                    .post(&format!("/v1/orders/{id}/cancel"), CHECKOUT)
                    .json(&json!({"reason": raw}));
                if let Some(v) = if_match {
                    req = req.header("if-match", v.to_string());
                }
                let mut errs = Vec::new();
                if matches!(reason, Reason::Invalid) {
                    errs.push((422, "invalid_field"));
                }
                let (expect, next) = match at {
                    None => {
                        errs.push((404, "order_not_found"));
                        (Expect::Refused(errs), None)
                    }
                    Some(i) => {
                        let o = &self.model.orders[i];
                        if if_match.is_some_and(|v| v != o.version) {
                            errs.push((412, "version_mismatch"));
                        }
                        if o.fully_erased {
                            errs.push((409, "order_erased"));
                        }
                        if o.cancel_reason.is_some() {
                            errs.push((409, "already_cancelled"));
                        }
                        let mut next = o.clone();
                        next.version += 1;
                        next.cancel_reason = Some(raw);
                        (
                            refused_or(
                                errs,
                                Expect::Written {
                                    status: 200,
                                    version: next.version,
                                },
                            ),
                            Some((i, next)),
                        )
                    }
                };
                let a = send(req, self.stats).await?;
                if compare(&what, &expect, &a, &secrets, self.stats)?
                    && let Some((i, next)) = next
                {
                    self.model.orders[i] = next;
                }
            }
            Step::Erase {
                target,
                fields,
                if_match,
            } => {
                let (at, id) = self.resolve(*target);
                let body = match fields {
                    None => json!({}),
                    Some(f) => json!({"fields": class_names(f.iter().copied())}),
                };
                let if_match = self.if_match(at, *if_match);
                let mut req = self
                    .app
                    .post(&format!("/v1/orders/{id}/erase"), PRIVACY)
                    .json(&body);
                if let Some(v) = if_match {
                    req = req.header("if-match", v.to_string());
                }
                let scope: Option<BTreeSet<Class>> =
                    fields.as_ref().map(|f| f.iter().copied().collect());
                let mut errs = Vec::new();
                if scope.as_ref().is_some_and(BTreeSet::is_empty) {
                    errs.push((422, "no_field_classes"));
                }
                let (expect, next) = match at {
                    None => {
                        errs.push((404, "order_not_found"));
                        (Expect::Refused(errs), None)
                    }
                    Some(i) => {
                        let o = &self.model.orders[i];
                        if if_match.is_some_and(|v| v != o.version) {
                            errs.push((412, "version_mismatch"));
                        }
                        if o.fully_erased {
                            errs.push((409, "already_erased"));
                        }
                        if let Some(s) = &scope
                            && !s.is_empty()
                            && s.is_subset(&o.erased)
                        {
                            errs.push((409, "already_erased"));
                        }
                        let mut next = o.clone();
                        next.version += 1;
                        match &scope {
                            None => {
                                next.fully_erased = true;
                                next.erased.extend(Class::ALL);
                            }
                            Some(s) => next.erased.extend(s.iter().copied()),
                        }
                        (
                            refused_or(
                                errs,
                                Expect::Written {
                                    status: 200,
                                    version: next.version,
                                },
                            ),
                            Some((i, next)),
                        )
                    }
                };
                let a = send(req, self.stats).await?;
                if compare(&what, &expect, &a, &secrets, self.stats)?
                    && let Some((i, next)) = next
                {
                    let r = &a.body["receipt"];
                    prop_assert_eq!(
                        r["order_id"].as_str(),
                        Some(id.as_str()),
                        "{}: receipt {}",
                        what,
                        r
                    );
                    prop_assert_eq!(
                        r["scope"].as_str(),
                        Some(if scope.is_some() { "classes" } else { "order" }),
                        "{}: receipt {}",
                        what,
                        r
                    );
                    let receipt_fields = scope
                        .clone()
                        .unwrap_or_else(|| Class::ALL.into_iter().collect());
                    prop_assert_eq!(
                        string_set(&r["fields"]),
                        set_of(&receipt_fields),
                        "{}: receipt {}",
                        what,
                        r
                    );
                    self.model.orders[i] = next;
                }
            }
            Step::Get { target } => {
                let (at, id) = self.resolve(*target);
                match at {
                    Some(i) => self.check_order(&what, i).await?,
                    None => {
                        let a = send(
                            self.app.get(&format!("/v1/orders/{id}"), CHECKOUT),
                            self.stats,
                        )
                        .await?;
                        compare(
                            &what,
                            &Expect::Refused(vec![(404, "order_not_found")]),
                            &a,
                            &secrets,
                            self.stats,
                        )?;
                    }
                }
            }
            Step::Restart => unreachable!("handled by the caller"),
        }
        Ok(())
    }
}
