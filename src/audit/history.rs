//! `orderlog history ORDER_ID`: one order's events in log order with their
//! public fields, read from the order's partition. Personal fields stay
//! `[sealed]` unless the caller asks to reveal them (which needs the node's
//! vault and is logged: order id and who, never the data); shredded classes
//! show as `[erased]`.
//!
//! [`build`] is pure over the records and a key lookup; [`run`] reads Kafka.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::verify::{ChainChecker, Finding, Observed, RecordRef};
use super::{AuditError, KeyLookup, NodeData, Source, log, time_text};
use crate::domain::{ErasureScope, Event, FieldClass, PersonalFields};
use crate::events::{self, Envelope};
use crate::kafka::partition_of;

pub const SEALED: &str = "[sealed]";
pub const ERASED: &str = "[erased]";
pub const NO_KEY: &str = "[no key]";

/// One event of the order.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub sequence: u64,
    pub kind: &'static str,
    pub at: String,
    pub partition: i32,
    pub offset: i64,
    pub key_id: String,
    pub public: Value,
    /// Per field class of an `OrderPlaced`: `[sealed]`, `[erased]`, or (revealed) its fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub personal: Option<Value>,
}

/// The order's history, with what `verify` would say about its records.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub order_id: Uuid,
    pub partition: i32,
    pub revealed: bool,
    pub events: Vec<HistoryEntry>,
    pub findings: Vec<Finding>,
}

fn class_names(c: &BTreeSet<FieldClass>) -> Vec<&'static str> {
    c.iter().map(|c| c.as_str()).collect()
}

fn public_of(event: &Event) -> Value {
    match event {
        Event::OrderPlaced(p) => json!({
            "order_number": p.order_number.as_str(),
            "merchant_id": p.merchant_id.as_str(),
            "items": p.items.iter().map(|i| json!({
                "sku": i.sku.as_str(), "name": i.name, "quantity": i.quantity,
                "unit_price": i.unit_price, "real_name": i.real_name,
            })).collect::<Vec<_>>(),
            "amount": p.amount.minor,
            "currency": p.amount.currency.as_str(),
            "classes": class_names(&p.classes),
        }),
        Event::OrderShared { party, classes } => json!({
            "party": party.to_string(),
            "classes": class_names(classes),
        }),
        Event::OrderCancelled { reason } => json!({ "reason": reason.as_str() }),
        Event::OrderErased { scope, reason } => match scope {
            ErasureScope::Order => json!({ "scope": "order", "reason": reason.as_str() }),
            ErasureScope::Classes(c) => {
                json!({ "scope": "classes", "classes": class_names(c), "reason": reason.as_str() })
            }
        },
        Event::OrderHeld(hold) => json!({
            "reason": hold.reason.as_str(),
            "until": hold.until_ms.map(crate::clock::rfc3339),
        }),
        Event::OrderHoldReleased => json!({}),
    }
}

fn opened(class: FieldClass, p: &PersonalFields) -> Option<Value> {
    Some(match class {
        FieldClass::Shipping => {
            let s = p.shipping.as_ref()?.expose();
            let a = &s.address;
            json!({
                "name": s.name.as_str(),
                "address": format!("{} {} {} {} {}", a.province, a.city, a.district, a.street, a.postal_code),
                "mobile": s.mobile.as_str(),
            })
        }
        FieldClass::Contact => {
            let c = p.contact.as_ref()?.expose();
            json!({
                "landline": c.landline.as_ref().map(|l| l.as_str()),
                "email": c.email.as_ref().map(|e| e.as_str()),
            })
        }
        FieldClass::Identity => json!({ "id_number": p.identity.as_ref()?.expose().as_str() }),
    })
}

/// The personal part of an `OrderPlaced`: every class it holds, sealed, or
/// opened with `key` (`None` = do not reveal). Returns also the classes opened.
fn personal_of(
    env: &Envelope,
    classes: &BTreeSet<FieldClass>,
    key: Option<&KeyLookup>,
) -> (Value, Vec<FieldClass>) {
    let mut out = serde_json::Map::new();
    let mut revealed = Vec::new();
    let fields = match key {
        Some(KeyLookup::Live(k)) => match events::open_event(env, Some(k)) {
            Ok(Event::OrderPlaced(p)) => Some(p.personal),
            _ => None,
        },
        _ => None,
    };
    for class in classes {
        let v = match (key, &fields) {
            (None, _) => Value::from(SEALED),
            (Some(KeyLookup::Live(k)), Some(p)) if k.subkey(*class).is_some() => {
                match opened(*class, p) {
                    Some(v) => {
                        revealed.push(*class);
                        v
                    }
                    None => Value::from(SEALED),
                }
            }
            (Some(KeyLookup::Live(k)), None) if k.subkey(*class).is_some() => {
                Value::from("[does not open: run verify]")
            }
            (Some(KeyLookup::Live(_) | KeyLookup::Shredded(_)), _) => Value::from(ERASED),
            (Some(KeyLookup::Missing), _) => Value::from(NO_KEY),
            (Some(KeyLookup::Unreadable(_)), _) => Value::from("[key unreadable]"),
        };
        out.insert(class.as_str().to_owned(), v);
    }
    (Value::Object(out), revealed)
}

/// Builds the history from the records of the order's partition, fed in log
/// order. `key` is the order's key when revealing. Pure.
pub fn build<'a>(
    order_id: Uuid,
    partitions: usize,
    records: impl IntoIterator<Item = RecordRef<'a>>,
    key: Option<&KeyLookup>,
    log_keys: Option<std::sync::Arc<crate::crypto::LogKeys>>,
) -> (History, Vec<FieldClass>) {
    let mut checker = ChainChecker::new(partitions, log_keys);
    let mut entries = Vec::new();
    let mut revealed = Vec::new();
    for (partition, offset, k, value) in records {
        if k != Some(order_id.as_bytes().as_slice()) {
            continue;
        }
        let Observed::Accepted(env) = checker.observe(partition, offset, k, value) else {
            continue;
        };
        let Ok(event) = events::public_event(&env) else {
            continue;
        };
        let personal = match &event {
            Event::OrderPlaced(p) => {
                let (v, r) = personal_of(&env, &p.classes, key);
                revealed.extend(r);
                Some(v)
            }
            _ => None,
        };
        entries.push(HistoryEntry {
            sequence: env.meta.sequence,
            kind: env.kind(),
            at: time_text(env.meta.occurred_at_ms),
            partition,
            offset,
            key_id: env.meta.key_id.to_string(),
            public: public_of(&event),
            personal,
        });
    }
    (
        History {
            order_id,
            partition: partition_of(&order_id, partitions) as i32,
            revealed: key.is_some(),
            events: entries,
            findings: checker.findings,
        },
        revealed,
    )
}

impl History {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "order {} (partition {}): {} events\n",
            self.order_id,
            self.partition,
            self.events.len()
        );
        for e in &self.events {
            let public = match &e.public {
                Value::Object(m) => m
                    .iter()
                    .map(|(k, v)| match v {
                        Value::String(t) => format!("{k}={t}"),
                        Value::Array(a) if k == "items" => format!("items={}", a.len()),
                        Value::Array(a) => format!(
                            "{k}={}",
                            a.iter()
                                .map(|x| x.as_str().unwrap_or_default())
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                        other => format!("{k}={other}"),
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                other => other.to_string(),
            };
            s.push_str(&format!(
                "#{:<3} {}  offset {:<6} {:<15} {public}\n",
                e.sequence, e.at, e.offset, e.kind
            ));
            if let Some(Value::Object(p)) = &e.personal {
                for (class, v) in p {
                    let text = match v {
                        Value::String(t) => t.clone(),
                        Value::Object(fields) => fields
                            .iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("-")))
                            .collect::<Vec<_>>()
                            .join("  "),
                        other => other.to_string(),
                    };
                    s.push_str(&format!("       {class:<9} {text}\n"));
                }
            }
        }
        for f in &self.findings {
            s.push_str(&format!("FINDING {f}\n"));
        }
        s
    }
}

/// Reads the order's partition. With `reveal`, opens personal fields with
/// the node's vault and logs who did.
pub fn run(
    source: &Source,
    order_id: Uuid,
    reveal: Option<(&NodeData, &str)>,
) -> Result<History, AuditError> {
    let partitions = log::partition_count(source)?;
    let partition = partition_of(&order_id, partitions) as i32;
    let mut records = Vec::new();
    log::scan(source, Some(&[partition]), |r| {
        if r.key.as_deref() == Some(order_id.as_bytes().as_slice()) {
            records.push(r);
        }
    })?;
    let key = reveal.map(|(node, _)| node.key(order_id));
    let (history, revealed) = build(
        order_id,
        partitions,
        records
            .iter()
            .map(|r| (r.partition, r.offset, r.key.as_deref(), r.value.as_slice())),
        key.as_ref(),
        source.log_keys.clone(),
    );
    if let Some((_, actor)) = reveal {
        let classes: Vec<&str> = revealed.iter().map(|c| c.as_str()).collect();
        tracing::info!(%order_id, actor, classes = ?classes, "Personal fields revealed for audit.");
    }
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::verify::tests::Fixture;

    fn records(f: &Fixture) -> Vec<RecordRef<'_>> {
        f.records
            .iter()
            .enumerate()
            .map(|(o, (k, v))| (0, o as i64, Some(k.as_slice()), v.as_slice()))
            .collect()
    }

    #[test]
    fn history_keeps_personal_fields_sealed_unless_revealed() {
        let mut f = Fixture::new();
        let a = f.place(7);
        let other = f.place(8);
        f.share_logistics(a, "sf-express");
        f.cancel(other);
        f.erase(
            a,
            ErasureScope::Classes(BTreeSet::from([FieldClass::Identity])),
        );
        let (h, revealed) = build(a, 1, records(&f), None, None);
        assert!(revealed.is_empty());
        assert_eq!(
            h.events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            vec!["OrderPlaced", "OrderShared", "OrderErased"]
        );
        let text = h.to_text();
        let json = serde_json::to_string(&h).unwrap();
        for out in [&text, &json] {
            assert!(out.contains(SEALED), "{out}");
            for needle in ["张三丰7", "zhang.sanfeng7", "13800000007"] {
                assert!(!out.contains(needle), "{out}");
            }
        }
        assert!(text.contains("party=logistics:sf-express"), "{text}");

        let key = KeyLookup::Live(crate::crypto::OrderKey::from_parts(
            f.keys[&a].id(),
            [FieldClass::Shipping, FieldClass::Contact]
                .into_iter()
                .map(|c| (c, f.keys[&a].subkey(c).unwrap().clone()))
                .collect(),
        ));
        let (h, revealed) = build(a, 1, records(&f), Some(&key), None);
        assert_eq!(revealed, vec![FieldClass::Shipping, FieldClass::Contact]);
        let text = h.to_text();
        assert!(text.contains("name=张三丰7"), "{text}");
        assert!(text.contains("email=zhang.sanfeng7@example.com"), "{text}");
        assert!(text.contains(&format!("identity  {ERASED}")), "{text}");
    }
}
