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

//!
//! The steps and their strategy are in `steps`, the reference model in
//! `reference`, sending steps and comparing answers in `driver`, and the
//! read-backs after each step in `checks`.

mod checks;
mod driver;
mod reference;
mod steps;

use std::cell::RefCell;
use std::time::{Duration, Instant};

use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

use crate::common;
use crate::common::app::TestApp;
use driver::{Case, Stats};
use reference::Model;
use steps::{Class, Contact, PartyPick, Step, Target, steps};

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
