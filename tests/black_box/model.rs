//! A state-machine test of the whole service against a reference model.
//!
//! Proptest draws random sequences of steps (place and share, some under an
//! Idempotency-Key; retry a keyed request with the same or another body;
//! cancel; erase a whole order or some field classes; read; If-Match with
//! the right or a stale version; restart the app, which resumes from the
//! state stored beside its checkpoint and catches up with the log's tail) and runs each sequence against a fresh in-process app on its
//! own topic of the real test broker. A reference model written here, from the documented
//! rules only (DESIGN.md, the README, `schemas/openapi.json` and the refusal
//! list of the domain; it never calls `orderlog::domain`'s `decide`/`apply`),
//! predicts every answer: the status, the error code of a refusal, and the
//! version a write answers. Where the documents do not say which of several
//! refusals wins (say an If-Match mismatch on a cancelled order), the model
//! accepts any refusal that applies.
//!
//! After every step each order is read back and compared with the model:
//! version (also in the ETag), status, cancel reason, shares, erased field
//! classes, and which personal fields are readable; an erased class reads
//! `null` and its plaintext appears nowhere in the order's JSON. After each
//! restart and at the end, the merchant view of `m-1` and the shipping view
//! of `sf-express` must agree with the model too.
//!
//! `known_sequences_agree_with_the_model` replays a few fixed sequences
//! (earlier counterexamples) on every run.
//!
//! The short form (12 cases of up to 20 steps) runs under plain `cargo test`.
//! The long form: `ORDERLOG_MODEL_CASES=200 ORDERLOG_MODEL_STEPS=40 cargo test
//! --test black_box model:: -- --nocapture`. `PROPTEST_RNG_SEED` fixes the seed and
//! `ORDERLOG_MODEL_SHRINK_ITERS` bounds shrinking (each shrink step runs a
//! case against a fresh app, so it costs seconds). The test prints how many
//! cases, steps, requests and restarts it ran.

use crate::common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::app::{CHECKOUT, LOGISTICS_SF, MERCHANT_M1, PRIVACY, TestApp};
use common::orders::{CORDLESS_DRILL, OrderBody, SHENZHEN, TEA_250G};
use orderlog::domain::fixtures;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde_json::{Value, json};

const DEFAULT_CASES: u32 = 12;
const DEFAULT_STEPS: usize = 20;
const DEFAULT_SHRINK_ITERS: u32 = 64;

const OWN_MERCHANT: &str = "m-1";
const FOREIGN_MERCHANT: &str = "m-2";
/// The provider whose shipping view the test can read (the harness has its token).
const VIEWED_PROVIDER: &str = "sf-express";
const PROVIDERS: [&str; 3] = [VIEWED_PROVIDER, "yto", "zto"];
const REASONS: [&str; 5] = [
    "customer_request",
    "payment_failed",
    "out_of_stock",
    "fraud_suspected",
    "other",
];
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Steps

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Shipping,
    Contact,
    Identity,
}

impl Class {
    const ALL: [Class; 3] = [Class::Shipping, Class::Contact, Class::Identity];

    fn as_str(self) -> &'static str {
        match self {
            Class::Shipping => "shipping",
            Class::Contact => "contact",
            Class::Identity => "identity",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Contact {
    None,
    Email,
    Landline,
    Both,
}

#[derive(Debug, Clone, Copy)]
enum Target {
    /// The n-th placed order (modulo how many there are; an unknown id while there are none).
    Placed(usize),
    /// A well-formed order id nobody placed.
    Unknown,
}

#[derive(Debug, Clone, Copy)]
enum PartyPick {
    Logistics(&'static str),
    OwnMerchant,
    ForeignMerchant,
}

#[derive(Debug, Clone, Copy)]
enum Reason {
    Valid(&'static str),
    Invalid,
}

#[derive(Debug, Clone, Copy)]
enum IfMatch {
    Current,
    Stale,
}

#[derive(Debug, Clone)]
enum Step {
    Place {
        real_name: bool,
        contact: Contact,
        idempotency_key: Option<u8>,
    },
    /// Sends again a place or share that carried an Idempotency-Key (the
    /// n-th such key used so far, modulo), with the very same body or with
    /// another one.
    Retry {
        key: usize,
        same_body: bool,
    },
    /// With an Idempotency-Key the share goes without If-Match (which of the
    /// two is checked first is not documented).
    Share {
        target: Target,
        party: PartyPick,
        fields: Vec<Class>,
        if_match: Option<IfMatch>,
        idempotency_key: Option<u8>,
    },
    Cancel {
        target: Target,
        reason: Reason,
        if_match: Option<IfMatch>,
    },
    /// `fields: None` erases the whole order.
    Erase {
        target: Target,
        fields: Option<Vec<Class>>,
        if_match: Option<IfMatch>,
    },
    Get {
        target: Target,
    },
    Restart,
}

fn steps(max: usize) -> impl Strategy<Value = Vec<Step>> {
    let target = prop_oneof![
        9 => (0usize..8).prop_map(Target::Placed),
        1 => Just(Target::Unknown),
    ];
    let classes = prop_oneof![
        1 => Just(Vec::new()),
        6 => proptest::sample::subsequence(Class::ALL.to_vec(), 1..=3),
    ];
    let if_match = prop_oneof![
        6 => Just(None),
        2 => Just(Some(IfMatch::Current)),
        2 => Just(Some(IfMatch::Stale)),
    ];
    let party = prop_oneof![
        4 => proptest::sample::select(PROVIDERS.to_vec()).prop_map(PartyPick::Logistics),
        2 => Just(PartyPick::OwnMerchant),
        1 => Just(PartyPick::ForeignMerchant),
    ];
    let reason = prop_oneof![
        5 => proptest::sample::select(REASONS.to_vec()).prop_map(Reason::Valid),
        1 => Just(Reason::Invalid),
    ];
    let contact = prop_oneof![
        Just(Contact::None),
        Just(Contact::Email),
        Just(Contact::Landline),
        Just(Contact::Both),
    ];
    let step = prop_oneof![
        5 => (any::<bool>(), contact, proptest::option::weighted(0.4, 0u8..3)).prop_map(
            |(real_name, contact, idempotency_key)| Step::Place { real_name, contact, idempotency_key }
        ),
        1 => (0usize..4, any::<bool>())
            .prop_map(|(key, same_body)| Step::Retry { key, same_body }),
        5 => (
            target.clone(),
            party,
            classes.clone(),
            if_match.clone(),
            proptest::option::weighted(0.3, 0u8..3),
        )
            .prop_map(|(target, party, fields, if_match, idempotency_key)| Step::Share {
                target,
                party,
                fields,
                if_match,
                idempotency_key,
            }),
        2 => (target.clone(), reason, if_match.clone())
            .prop_map(|(target, reason, if_match)| Step::Cancel { target, reason, if_match }),
        2 => (target.clone(), proptest::option::weighted(0.6, classes), if_match).prop_map(
            |(target, fields, if_match)| Step::Erase { target, fields, if_match }
        ),
        1 => target.prop_map(|target| Step::Get { target }),
        1 => Just(Step::Restart),
    ];
    proptest::collection::vec(step, 1..=max)
}

// ---------------------------------------------------------------------------
// The reference model

/// The personal data an order was placed with, to compare reads against.
#[derive(Debug, Clone)]
struct Secrets {
    name: String,
    street: String,
    mobile: String,
    landline: Option<String>,
    email: Option<String>,
    id_number: Option<String>,
}

impl Secrets {
    /// The plaintext values of one class, for "must not appear" checks.
    fn of(&self, class: Class) -> Vec<&str> {
        match class {
            Class::Shipping => vec![&self.name, &self.street, &self.mobile],
            Class::Contact => self
                .landline
                .iter()
                .chain(&self.email)
                .map(|s| s.as_str())
                .collect(),
            Class::Identity => self.id_number.iter().map(|s| s.as_str()).collect(),
        }
    }
}

#[derive(Debug, Clone)]
struct ModelOrder {
    id: String,
    version: u64,
    real_name: bool,
    secrets: Secrets,
    cancel_reason: Option<&'static str>,
    /// Field classes whose data is shredded.
    erased: BTreeSet<Class>,
    /// The whole order is erased (its key destroyed).
    fully_erased: bool,
    /// Party (kind, id) -> classes shared with it.
    shares: BTreeMap<(String, String), BTreeSet<Class>>,
}

impl ModelOrder {
    fn holds(&self, class: Class) -> bool {
        match class {
            Class::Shipping => true,
            Class::Contact => self.secrets.landline.is_some() || self.secrets.email.is_some(),
            Class::Identity => self.real_name,
        }
    }

    fn status(&self) -> &'static str {
        if self.fully_erased {
            "erased"
        } else if self.cancel_reason.is_some() {
            "cancelled"
        } else {
            "active"
        }
    }

    /// Classes whose fields the order endpoint must show.
    fn readable(&self) -> BTreeSet<Class> {
        Class::ALL
            .into_iter()
            .filter(|c| self.holds(*c) && !self.fully_erased && !self.erased.contains(c))
            .collect()
    }

    /// Classes a party's view must show: shared with it and not erased.
    fn readable_by(&self, kind: &str, id: &str) -> BTreeSet<Class> {
        let shared = self
            .shares
            .get(&(kind.to_owned(), id.to_owned()))
            .cloned()
            .unwrap_or_default();
        shared.intersection(&self.readable()).copied().collect()
    }
}

/// A request sent with an Idempotency-Key, and what it answered first.
#[derive(Debug, Clone)]
struct Keyed {
    path: String,
    body: Value,
    status: u16,
    order_id: String,
    version: u64,
}

#[derive(Debug, Default)]
struct Model {
    orders: Vec<ModelOrder>,
    /// Idempotency-Key -> the request that first succeeded with it. Keys
    /// belong to the caller (checkout), not to a route.
    keys: BTreeMap<String, Keyed>,
    placed: u32,
}

/// What the model predicts for one request.
#[derive(Debug)]
enum Expect {
    /// Carried out: this status, and this version answered.
    Written { status: u16, version: u64 },
    /// Refused with one of these (status, code); several when more than one
    /// documented rule applies and the documents do not rank them.
    Refused(Vec<(u16, &'static str)>),
}

fn refused_or(errs: Vec<(u16, &'static str)>, written: Expect) -> Expect {
    if errs.is_empty() {
        written
    } else {
        Expect::Refused(errs)
    }
}

// ---------------------------------------------------------------------------
// Request bodies

const NAMES: [&str; 6] = [
    "欧阳娜娜",
    "张三丰",
    "李秀英",
    "王芳",
    "陈静",
    "Zoë O'Brien",
];

fn order_body(n: u32, real_name: bool, contact: Contact) -> (Value, Secrets) {
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
struct Stats {
    runs: u32,
    steps: u64,
    restarts: u64,
    requests: u64,
    written: u64,
    refused: u64,
    orders: u64,
    view_checks: u64,
}

struct Answer {
    status: u16,
    etag: Option<String>,
    replayed: bool,
    body: Value,
}

fn fail(msg: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(msg.into())
}

async fn send(
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
async fn send_visible(
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
fn compare(
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

fn party_json(p: PartyPick) -> (String, String) {
    match p {
        PartyPick::Logistics(id) => ("logistics".into(), id.into()),
        PartyPick::OwnMerchant => ("merchant".into(), OWN_MERCHANT.into()),
        PartyPick::ForeignMerchant => ("merchant".into(), FOREIGN_MERCHANT.into()),
    }
}

fn class_names(c: impl IntoIterator<Item = Class>) -> Vec<&'static str> {
    c.into_iter().map(Class::as_str).collect()
}

fn string_set(v: &Value) -> Option<BTreeSet<String>> {
    v.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_owned))
        .collect()
}

fn set_of(c: &BTreeSet<Class>) -> Option<BTreeSet<String>> {
    Some(c.iter().map(|c| c.as_str().to_owned()).collect())
}

struct Case<'a> {
    app: TestApp,
    model: Model,
    stats: &'a RefCell<Stats>,
}

impl Case<'_> {
    /// The order a step aims at: its index in the model, or an unknown id.
    /// A placement under a key whose order has lost a class (or all).
    fn placed_then_erased(&self, first: &Keyed) -> bool {
        first.path == "/v1/orders"
            && self
                .model
                .orders
                .iter()
                .any(|o| o.id == first.order_id && (o.fully_erased || !o.erased.is_empty()))
    }

    fn resolve(&self, t: Target) -> (Option<usize>, String) {
        match t {
            Target::Placed(i) if !self.model.orders.is_empty() => {
                let i = i % self.model.orders.len();
                (Some(i), self.model.orders[i].id.clone())
            }
            _ => (None, uuid::Uuid::now_v7().to_string()),
        }
    }

    fn if_match(&self, at: Option<usize>, im: Option<IfMatch>) -> Option<u64> {
        let v = self.model.orders[at?].version;
        match im? {
            IfMatch::Current => Some(v),
            IfMatch::Stale if v > 1 => Some(v - 1),
            IfMatch::Stale => Some(v + 1),
        }
    }

    fn all_secrets(&self) -> Vec<String> {
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

    async fn step(&mut self, n: usize, step: &Step) -> Result<(), TestCaseError> {
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

    /// Reads one order back and compares it with the model.
    async fn check_order(&self, what: &str, i: usize) -> Result<(), TestCaseError> {
        let o = &self.model.orders[i];
        let a = send(
            self.app.get(&format!("/v1/orders/{}", o.id), CHECKOUT),
            self.stats,
        )
        .await?;
        let b = &a.body;
        let ctx = format!("{what}: order {i} {}", o.id);
        prop_assert_eq!(a.status, 200, "{}: GET {}", ctx, b);
        prop_assert_eq!(
            b["version"].as_u64(),
            Some(o.version),
            "{}: version; {}",
            ctx,
            b
        );
        prop_assert_eq!(
            a.etag.clone(),
            Some(format!("\"{}\"", o.version)),
            "{}: ETag",
            ctx
        );
        prop_assert_eq!(
            b["status"].as_str(),
            Some(o.status()),
            "{}: status; {}",
            ctx,
            b
        );
        prop_assert_eq!(
            b["cancel_reason"].as_str(),
            o.cancel_reason,
            "{}: cancel_reason; {}",
            ctx,
            b
        );
        prop_assert_eq!(
            string_set(&b["erased_fields"]),
            set_of(&o.erased),
            "{}: erased_fields; {}",
            ctx,
            b
        );
        let shares: Option<BTreeMap<(String, String), BTreeSet<String>>> =
            b["shares"].as_array().map(|a| {
                a.iter()
                    .map(|s| {
                        let party = (
                            s["party"]["kind"].as_str().unwrap_or_default().to_owned(),
                            s["party"]["id"].as_str().unwrap_or_default().to_owned(),
                        );
                        (party, string_set(&s["fields"]).unwrap_or_default())
                    })
                    .collect()
            });
        let want: BTreeMap<(String, String), BTreeSet<String>> = o
            .shares
            .iter()
            .filter(|(_, c)| !c.is_empty())
            .map(|(p, c)| (p.clone(), set_of(c).unwrap_or_default()))
            .collect();
        prop_assert_eq!(shares, Some(want), "{}: shares; {}", ctx, b);
        let readable = o.readable();
        let p = &b["personal"];
        if readable.is_empty() {
            prop_assert_eq!(p, &Value::Null, "{}: no class is readable; {}", ctx, b);
        } else {
            check_personal(&ctx, p, o, &readable)?;
        }
        Self::check_unreadable_absent(&ctx, b, o, &readable)?;
        Ok(())
    }

    fn check_unreadable_absent(
        ctx: &str,
        b: &Value,
        o: &ModelOrder,
        readable: &BTreeSet<Class>,
    ) -> Result<(), TestCaseError> {
        let text = b.to_string();
        for c in Class::ALL.into_iter().filter(|c| !readable.contains(c)) {
            for s in o.secrets.of(c) {
                prop_assert!(
                    !text.contains(s),
                    "{}: {} field of class {} readable: {}",
                    ctx,
                    s,
                    c.as_str(),
                    b
                );
            }
        }
        Ok(())
    }

    /// The merchant view of m-1 and, for orders shared with it, the shipping view of sf-express.
    async fn check_views(&self, what: &str) -> Result<(), TestCaseError> {
        for (i, o) in self.model.orders.iter().enumerate() {
            let ctx = format!("{what}: order {i} {}", o.id);
            self.stats.borrow_mut().view_checks += 1;
            let merchant_path = format!(
                "/v1/merchants/{OWN_MERCHANT}/orders/{}?min_version={}",
                o.id, o.version
            );
            let a = send_visible(|| self.app.get(&merchant_path, MERCHANT_M1), self.stats).await?;
            let b = &a.body;
            prop_assert_eq!(a.status, 200, "{}: merchant view {}", ctx, b);
            prop_assert_eq!(
                b["version"].as_u64(),
                Some(o.version),
                "{}: merchant view version {}",
                ctx,
                b
            );
            prop_assert_eq!(
                b["status"].as_str(),
                Some(o.status()),
                "{}: merchant view status {}",
                ctx,
                b
            );
            prop_assert_eq!(
                string_set(&b["erased_fields"]),
                set_of(&o.erased),
                "{}: merchant view erased_fields {}",
                ctx,
                b
            );
            let readable = o.readable_by("merchant", OWN_MERCHANT);
            prop_assert_eq!(
                string_set(&b["fields"]),
                set_of(&readable),
                "{}: merchant view fields {}",
                ctx,
                b
            );
            check_personal(&format!("{ctx}: merchant view"), b, o, &readable)?;
            Self::check_unreadable_absent(&format!("{ctx}: merchant view"), b, o, &readable)?;

            let shared = o
                .shares
                .contains_key(&("logistics".to_owned(), VIEWED_PROVIDER.to_owned()));
            let shipping_path = format!(
                "/v1/shipping/{VIEWED_PROVIDER}/orders/{}?min_version={}",
                o.id, o.version
            );
            let a = if shared {
                send_visible(|| self.app.get(&shipping_path, LOGISTICS_SF), self.stats).await?
            } else {
                // Not shared with it: 404 at once, whatever min_version says.
                send(self.app.get(&shipping_path, LOGISTICS_SF), self.stats).await?
            };
            let b = &a.body;
            if !shared {
                prop_assert_eq!(
                    a.status,
                    404,
                    "{}: shipping view of an order not shared with {} {}",
                    ctx,
                    VIEWED_PROVIDER,
                    b
                );
                continue;
            }
            prop_assert_eq!(a.status, 200, "{}: shipping view {}", ctx, b);
            prop_assert_eq!(
                b["version"].as_u64(),
                Some(o.version),
                "{}: shipping view version {}",
                ctx,
                b
            );
            prop_assert_eq!(
                b["status"].as_str(),
                Some(o.status()),
                "{}: shipping view status {}",
                ctx,
                b
            );
            prop_assert!(
                b.get("amount").is_none() && b.get("items").is_none(),
                "{}: shipping view shows no prices {}",
                ctx,
                b
            );
            let readable = o.readable_by("logistics", VIEWED_PROVIDER);
            prop_assert_eq!(
                string_set(&b["fields"]),
                set_of(&readable),
                "{}: shipping view fields {}",
                ctx,
                b
            );
            check_personal(&format!("{ctx}: shipping view"), b, o, &readable)?;
            Self::check_unreadable_absent(&format!("{ctx}: shipping view"), b, o, &readable)?;
        }
        Ok(())
    }

    async fn check_all(&self, what: &str) -> Result<(), TestCaseError> {
        for i in 0..self.model.orders.len() {
            self.check_order(what, i).await?;
        }
        Ok(())
    }
}

/// `p` holds `consignee`, `contact` and `id_number`: each equal to what was
/// placed when its class is in `readable`, `null` otherwise.
fn check_personal(
    ctx: &str,
    p: &Value,
    o: &ModelOrder,
    readable: &BTreeSet<Class>,
) -> Result<(), TestCaseError> {
    let s = &o.secrets;
    if readable.contains(&Class::Shipping) {
        prop_assert_eq!(
            p["consignee"]["name"].as_str(),
            Some(s.name.as_str()),
            "{}: consignee {}",
            ctx,
            p
        );
        prop_assert_eq!(
            p["consignee"]["mobile"].as_str(),
            Some(s.mobile.as_str()),
            "{}: consignee {}",
            ctx,
            p
        );
        prop_assert_eq!(
            p["consignee"]["address"]["street"].as_str(),
            Some(s.street.as_str()),
            "{}: consignee {}",
            ctx,
            p
        );
    } else {
        prop_assert_eq!(
            &p["consignee"],
            &Value::Null,
            "{}: consignee must be null {}",
            ctx,
            p
        );
    }
    if readable.contains(&Class::Contact) {
        prop_assert_eq!(
            p["contact"]["landline"].as_str(),
            s.landline.as_deref(),
            "{}: contact {}",
            ctx,
            p
        );
        prop_assert_eq!(
            p["contact"]["email"].as_str(),
            s.email.as_deref(),
            "{}: contact {}",
            ctx,
            p
        );
    } else {
        prop_assert_eq!(
            &p["contact"],
            &Value::Null,
            "{}: contact must be null {}",
            ctx,
            p
        );
    }
    if readable.contains(&Class::Identity) {
        prop_assert_eq!(
            p["id_number"].as_str(),
            s.id_number.as_deref(),
            "{}: id_number {}",
            ctx,
            p
        );
    } else {
        prop_assert_eq!(
            &p["id_number"],
            &Value::Null,
            "{}: id_number must be null {}",
            ctx,
            p
        );
    }
    Ok(())
}

/// Runs one sequence against a fresh app; the app is always stopped.
async fn run_case(steps: &[Step], stats: &RefCell<Stats>) -> Result<(), TestCaseError> {
    let mut case = Case {
        app: TestApp::spawn().await,
        model: Model::default(),
        stats,
    };
    let mut result = Ok(());
    for (n, step) in steps.iter().enumerate() {
        stats.borrow_mut().steps += 1;
        let what = format!("step {n} {step:?}");
        let r = match step {
            Step::Restart => {
                stats.borrow_mut().restarts += 1;
                case.app = case.app.restart().await;
                // Every key survives a restart, also one whose request
                // wrote nothing: keys live in RocksDB until they expire.
                match case.check_all(&what).await {
                    Ok(()) => case.check_views(&what).await,
                    e => e,
                }
            }
            _ => match case.step(n, step).await {
                Ok(()) => case.check_all(&what).await,
                e => e,
            },
        };
        if r.is_err() {
            result = r;
            break;
        }
    }
    if result.is_ok() {
        result = case.check_views("at the end").await;
    }
    case.app.app.stop().await;
    result
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

#[test]
fn the_service_agrees_with_a_reference_model_over_random_command_sequences() {
    let cases = env_or("ORDERLOG_MODEL_CASES", DEFAULT_CASES);
    let max_steps = env_or("ORDERLOG_MODEL_STEPS", DEFAULT_STEPS).max(1);
    let config = Config {
        cases,
        max_shrink_iters: env_or("ORDERLOG_MODEL_SHRINK_ITERS", DEFAULT_SHRINK_ITERS),
        // A case costs a fresh app and topic; no regression file (the
        // shrunk sequence is printed, and PROPTEST_RNG_SEED replays a run).
        failure_persistence: None,
        ..Config::default()
    };
    // Start the broker before the clock (the first run may have to launch it).
    common::brokers();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stats = RefCell::new(Stats::default());
    let started = Instant::now();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&steps(max_steps), |steps| {
        stats.borrow_mut().runs += 1;
        rt.block_on(run_case(&steps, &stats))
    });
    let s = stats.borrow();
    eprintln!(
        "model test: {cases} cases of up to {max_steps} steps ({} runs incl. shrinking): {} steps, {} restarts, \
         {} orders placed, {} writes predicted and carried out, {} refusals predicted and answered, \
         {} requests ({} view checks) in {:.1} s",
        s.runs,
        s.steps,
        s.restarts,
        s.orders,
        s.written,
        s.refused,
        s.requests,
        s.view_checks,
        started.elapsed().as_secs_f64()
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, steps)) => {
            panic!(
                "the service and the model disagree: {why}\nminimal failing sequence ({} steps):\n{steps:#?}",
                steps.len()
            )
        }
        Err(e) => panic!("{e}"),
    }
}

/// Sequences worth running every time, whatever the random draw.
#[test]
fn known_sequences_agree_with_the_model() {
    use Step::*;
    let place = Place {
        real_name: false,
        contact: Contact::None,
        idempotency_key: None,
    };
    let share = |key| Share {
        target: Target::Placed(0),
        party: PartyPick::Logistics(VIEWED_PROVIDER),
        fields: vec![Class::Shipping],
        if_match: None,
        idempotency_key: key,
    };
    let sequences = vec![
        // Erasing every class by name shreds the whole key (was a 500).
        vec![
            place.clone(),
            Erase {
                target: Target::Placed(0),
                fields: Some(Class::ALL.to_vec()),
                if_match: None,
            },
        ],
        // A share that records nothing new, under a key, then the key with
        // another request: refused with 422, the key is remembered (was
        // carried out).
        vec![
            place.clone(),
            share(None),
            share(Some(0)),
            Share {
                target: Target::Placed(0),
                party: PartyPick::Logistics("yto"),
                fields: vec![Class::Shipping],
                if_match: None,
                idempotency_key: Some(0),
            },
            Retry {
                key: 0,
                same_body: true,
            },
        ],
        // A key first used to share an order, reused to place one after
        // the first order was erased: another request, 422 (was 409
        // idempotency_key_erased).
        vec![
            place.clone(),
            share(Some(2)),
            Erase {
                target: Target::Placed(0),
                fields: None,
                if_match: None,
            },
            Place {
                real_name: false,
                contact: Contact::None,
                idempotency_key: Some(2),
            },
        ],
    ];
    common::brokers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stats = RefCell::new(Stats::default());
    for steps in sequences {
        if let Err(e) = rt.block_on(run_case(&steps, &stats)) {
            panic!("{e}\nsequence: {steps:#?}");
        }
    }
}
