//! Golden fixtures: every stored schema version must still decode, forever.
//!
//! `schemas/fixtures/v<N>/*.bin` are encoded events of one order (placed,
//! shared, class-erased, cancelled, erased), sealed under a fixed test key
//! (and, from v2, authenticated under the log key of a fixed test KEK); each
//! `.json` beside them is what the current decoder must read from it.
//! Generate only a NEW version's fixtures, once (it refuses a version whose
//! directory holds files, so golden files are never rewritten):
//! `ORDERLOG_WRITE_FIXTURES=<N> cargo test --test black_box schema_fixtures -- --ignored`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use orderlog::crypto::{Kek, KekRing, KeyId, LogKeys, OrderKey};
use orderlog::domain::validation::HoldReason;
use orderlog::domain::validation::ProviderId;
use orderlog::domain::{
    CancelReason, Command, ErasureReason, ErasureScope, Event, FieldClass, Hold, Party, decide,
    fixtures, fold,
};
use orderlog::events::{self, Envelope, EventMeta};
use serde_json::{Value, json};
use uuid::Uuid;

fn fixture_key() -> OrderKey {
    OrderKey::derive(KeyId([0x11; 16]), &[0x22; 32])
}

/// Every schema version this build reads.
const VERSIONS: [u16; 3] = [1, 2, 3];

fn fixture_log_keys() -> LogKeys {
    let kek = Kek::parse(&format!("orderlog-kek-v1:{}", "33".repeat(64))).unwrap();
    LogKeys::from_ring(&KekRing::new(kek))
}

fn dir(version: u16) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("schemas/fixtures/v{version}"))
}

/// The record as that version encodes it.
fn encode_as(version: u16, env: &Envelope) -> Vec<u8> {
    match version {
        1 => events::encode_v1(env),
        2 => events::encode_v2(env, &fixture_log_keys()),
        3 => events::encode(env, &fixture_log_keys()),
        v => panic!("no encoder for v{v}"),
    }
}

/// What a reader sees of an envelope, personal fields included (fixture data is invented).
fn summary(env: &Envelope, key: &OrderKey) -> Value {
    let event = events::open_event(env, Some(key)).expect("fixture opens");
    let body = match &event {
        Event::OrderPlaced(p) => {
            let s = p.personal.shipping.as_ref().map(|s| s.expose());
            let c = p.personal.contact.as_ref().map(|c| c.expose());
            json!({
                "order_number": p.order_number.as_str(),
                "merchant_id": p.merchant_id.as_str(),
                "items": p.items.iter().map(|i| json!([i.sku.as_str(), i.name, i.quantity, i.unit_price, i.real_name])).collect::<Vec<_>>(),
                "amount": p.amount.minor,
                "currency": p.amount.currency.as_str(),
                "classes": p.classes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                "consignee_name": s.map(|s| s.name.as_str()),
                "postal_code": s.map(|s| s.address.postal_code.as_str()),
                "mobile": s.map(|s| s.mobile.as_str()),
                "email": c.and_then(|c| c.email.as_ref()).map(|e| e.as_str()),
                "id_number": p.personal.identity.as_ref().map(|i| i.expose().as_str()),
            })
        }
        Event::OrderShared { party, classes } => json!({
            "party": party.to_string(),
            "classes": classes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        }),
        Event::OrderCancelled { reason } => json!({ "reason": reason.as_str() }),
        // Versions before 3 have no reason (every erasure was a request).
        Event::OrderErased { scope, reason } if env.schema_version >= 3 => json!({
            "whole": *scope == ErasureScope::Order,
            "classes": scope.classes().iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            "reason": reason.as_str(),
        }),
        Event::OrderErased { scope, .. } => json!({
            "whole": *scope == ErasureScope::Order,
            "classes": scope.classes().iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        }),
        Event::OrderHeld(hold) => json!({
            "reason": hold.reason.as_str(),
            "until_ms": hold.until_ms,
        }),
        Event::OrderHoldReleased => json!({}),
    };
    json!({
        "schema_version": env.schema_version,
        "kind": event.kind(),
        "event_id": env.meta.event_id.to_string(),
        "order_id": env.meta.order_id.to_string(),
        "sequence": env.meta.sequence,
        "occurred_at_ms": env.meta.occurred_at_ms,
        "key_id": env.meta.key_id.to_string(),
        "prev_hash": hex::encode(env.meta.prev_hash),
        "body": body,
    })
}

fn write_fixtures(version: u16) {
    let key = fixture_key();
    let order_id = Uuid::parse_str("01936b2e-0000-7000-8000-000000000001").unwrap();
    let commands = if version >= 3 {
        v3_commands()
    } else {
        v1_commands()
    };
    let mut history: Vec<Event> = Vec::new();
    let mut prev = [0u8; 32];
    for (n, (name, cmd)) in commands.into_iter().enumerate() {
        let mut events = decide(&fold(&history), cmd).unwrap();
        let event = events.remove(0);
        let meta = EventMeta {
            event_id: Uuid::parse_str(&format!("01936b2e-0000-7000-9000-{:012}", n + 1)).unwrap(),
            order_id,
            sequence: n as u64 + 1,
            occurred_at_ms: 1_733_000_000_000 + n as i64 * 60_000,
            key_id: key.id(),
            prev_hash: prev,
        };
        let env = events::seal_event(&event, meta, Some(&key)).unwrap();
        let bytes = encode_as(version, &env);
        prev = events::record_hash(&bytes);
        std::fs::create_dir_all(dir(version)).unwrap();
        std::fs::write(dir(version).join(format!("{name}.bin")), &bytes).unwrap();
        let json =
            serde_json::to_string_pretty(&summary(&events::decode(&bytes).unwrap(), &key)).unwrap();
        std::fs::write(dir(version).join(format!("{name}.json")), json + "\n").unwrap();
        history.push(event);
    }
}

/// The events of the fixtures of version 3: v1's, with a legal hold placed
/// and released, and the identity class erased for retention.
fn v3_commands() -> Vec<(&'static str, Command)> {
    vec![
        (
            "01-order-placed",
            Command::PlaceOrder(fixtures::new_order(42, true)),
        ),
        (
            "02-order-shared",
            Command::ShareOrder {
                party: Party::Logistics(ProviderId::parse("id", "sf-express").unwrap()),
                classes: BTreeSet::from([FieldClass::Shipping, FieldClass::Identity]),
            },
        ),
        (
            "03-order-held",
            Command::HoldOrder(Hold {
                reason: HoldReason::parse("reason", "dispute case 2024-117").unwrap(),
                until_ms: Some(1_735_689_600_000),
            }),
        ),
        ("04-order-hold-released", Command::ReleaseHold),
        (
            "05-order-erased-identity",
            Command::EraseOrder {
                scope: ErasureScope::Classes(BTreeSet::from([FieldClass::Identity])),
                reason: ErasureReason::Retention,
            },
        ),
        (
            "06-order-cancelled",
            Command::CancelOrder {
                reason: CancelReason::CustomerRequest,
            },
        ),
        ("07-order-erased", Command::erase(ErasureScope::Order)),
    ]
}

/// The events of one order the fixtures of versions 1 and 2 hold.
fn v1_commands() -> Vec<(&'static str, Command)> {
    let commands = [
        (
            "01-order-placed",
            Command::PlaceOrder(fixtures::new_order(42, true)),
        ),
        (
            "02-order-shared",
            Command::ShareOrder {
                party: Party::Logistics(ProviderId::parse("id", "sf-express").unwrap()),
                classes: BTreeSet::from([FieldClass::Shipping, FieldClass::Identity]),
            },
        ),
        (
            "03-order-erased-identity",
            Command::EraseOrder {
                scope: ErasureScope::Classes(BTreeSet::from([FieldClass::Identity])),
                reason: orderlog::domain::ErasureReason::Request,
            },
        ),
        (
            "04-order-cancelled",
            Command::CancelOrder {
                reason: CancelReason::CustomerRequest,
            },
        ),
        (
            "05-order-erased",
            Command::EraseOrder {
                scope: ErasureScope::Order,
                reason: orderlog::domain::ErasureReason::Request,
            },
        ),
    ];
    commands.into_iter().collect()
}

/// Writes the fixtures of a new schema version, the newest this build
/// writes, into a directory that holds none yet.
#[test]
#[ignore = "writes golden files; run once for a new schema version"]
fn write_the_fixtures_of_a_new_schema_version() {
    let version: u16 = std::env::var("ORDERLOG_WRITE_FIXTURES")
        .expect("ORDERLOG_WRITE_FIXTURES=<schema version>")
        .parse()
        .expect("ORDERLOG_WRITE_FIXTURES=<schema version>");
    assert_eq!(
        Some(&version),
        VERSIONS.last(),
        "only the newest schema version this build writes gets new fixtures"
    );
    let existing = std::fs::read_dir(dir(version)).map_or(0, |d| d.count());
    assert_eq!(
        existing,
        0,
        "{} already holds fixtures: golden files are never rewritten (remove them knowingly first)",
        dir(version).display()
    );
    write_fixtures(version);
}

fn fixture_files(version: u16) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir(version))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_golden_fixture_decodes_to_its_recorded_reading() {
    let key = fixture_key();
    for version in VERSIONS {
        let files = fixture_files(version);
        let expected = if version >= 3 { 7 } else { 5 };
        assert_eq!(
            files.len(),
            expected,
            "expected {expected} v{version} fixtures in {}",
            dir(version).display()
        );
        for bin in files {
            let bytes = std::fs::read(&bin).unwrap();
            let env = events::decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
            assert_eq!(env.schema_version, version, "{}", bin.display());
            let expected: Value =
                serde_json::from_str(&std::fs::read_to_string(bin.with_extension("json")).unwrap())
                    .unwrap();
            assert_eq!(summary(&env, &key), expected, "{}", bin.display());
            assert_eq!(
                encode_as(version, &env),
                bytes,
                "{} re-encodes to the same bytes",
                bin.display()
            );
        }
    }
}

#[test]
fn v2_fixtures_authenticate_under_their_log_key_and_v1_only_where_accepted() {
    let keys = fixture_log_keys();
    let other = LogKeys::from_ring(&KekRing::new(Kek::generate()));
    for bin in fixture_files(2).into_iter().chain(fixture_files(3)) {
        let bytes = std::fs::read(&bin).unwrap();
        assert_eq!(
            events::authenticate(&bytes, &keys, None),
            Ok(()),
            "{}",
            bin.display()
        );
        assert!(events::authenticate(&bytes, &other, None).is_err());
    }
    for bin in fixture_files(1) {
        let bytes = std::fs::read(&bin).unwrap();
        let refused = events::authenticate(&bytes, &keys, None).unwrap_err();
        assert!(refused.to_string().contains("schema v1"), "{refused}");
        assert_eq!(
            events::authenticate(&bytes, &keys.clone().accepting_v1(true), None),
            Ok(())
        );
    }
}

#[test]
fn golden_fixtures_form_an_intact_hash_chain() {
    for version in VERSIONS {
        let mut prev = [0u8; 32];
        for (n, bin) in fixture_files(version).into_iter().enumerate() {
            let bytes = std::fs::read(&bin).unwrap();
            let env = events::decode(&bytes).unwrap();
            assert_eq!(env.meta.sequence, n as u64 + 1);
            assert_eq!(
                env.meta.prev_hash,
                prev,
                "{} links to its predecessor",
                bin.display()
            );
            prev = events::record_hash(&bytes);
        }
    }
}

#[test]
fn golden_fixtures_hold_no_personal_plaintext() {
    let personal = fixtures::personal(42, true, true);
    let needles = [
        personal.shipping.name.as_str().to_owned(),
        personal.shipping.mobile.as_str().to_owned(),
        personal.shipping.address.street.clone(),
        personal.contact.email.as_ref().unwrap().as_str().to_owned(),
        personal.identity.as_ref().unwrap().as_str().to_owned(),
    ];
    for bin in VERSIONS.into_iter().flat_map(fixture_files) {
        let bytes = std::fs::read(&bin).unwrap();
        for n in &needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n.as_bytes()),
                "{} holds plaintext",
                bin.display()
            );
        }
    }
}
