//! `orderlog receipts`: every erasure the log records (`OrderErased`: order,
//! time, partition and offset, scope, key id), each re-verified against the
//! node's data directory: the erased classes' subkeys (or the whole key) are
//! gone from the vault, and the order's view row keeps no sealed field of an
//! erased class.
//!
//! [`check`] is pure; [`run`] reads Kafka and the node.

use std::collections::BTreeSet;

use serde::Serialize;
use uuid::Uuid;

use super::verify::{ChainChecker, Observed, RecordRef};
use super::{AuditError, KeyLookup, NodeData, Source, log, time_text};
use crate::domain::FieldClass;
use crate::events::codec::class_of;
use crate::events::v1::BodyV1;
use crate::projections::{ProjectedOrder, ViewStatus, query};

/// An erasure as the log records it, and what re-verifying it found.
#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    pub order_id: Uuid,
    pub at: String,
    pub at_ms: i64,
    pub partition: i32,
    pub offset: i64,
    pub sequence: u64,
    /// `order` or `classes`.
    pub scope: &'static str,
    pub classes: Vec<&'static str>,
    pub key_id: String,
    pub verified: Vec<String>,
    pub failures: Vec<String>,
}

impl Receipt {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    fn erased(&self) -> BTreeSet<FieldClass> {
        self.classes
            .iter()
            .filter_map(|c| FieldClass::parse(c))
            .collect()
    }
}

/// Collects the erasures from records fed in log order. Pure.
pub fn collect<'a>(
    partitions: usize,
    records: impl IntoIterator<Item = RecordRef<'a>>,
) -> Vec<Receipt> {
    let mut checker = ChainChecker::new(partitions);
    let mut out = Vec::new();
    for (partition, offset, key, value) in records {
        let Observed::Accepted(env) = checker.observe(partition, offset, key, value) else {
            continue;
        };
        let BodyV1::OrderErased { classes, whole } = &env.body else {
            continue;
        };
        let classes: BTreeSet<FieldClass> = if *whole {
            FieldClass::ALL.into_iter().collect()
        } else {
            classes.iter().copied().map(class_of).collect()
        };
        out.push(Receipt {
            order_id: env.meta.order_id,
            at: time_text(env.meta.occurred_at_ms),
            at_ms: env.meta.occurred_at_ms,
            partition,
            offset,
            sequence: env.meta.sequence,
            scope: if *whole { "order" } else { "classes" },
            classes: classes.iter().map(|c| c.as_str()).collect(),
            key_id: env.meta.key_id.to_string(),
            verified: vec![],
            failures: vec![],
        });
    }
    out.sort_by_key(|r| (r.at_ms, r.partition, r.offset));
    out
}

/// Re-verifies one receipt against the vault's answer and the view row. Pure.
pub fn check(receipt: &mut Receipt, key: &KeyLookup, view: Option<&ProjectedOrder>) {
    let erased = receipt.erased();
    let whole = receipt.scope == "order";
    match key {
        KeyLookup::Shredded(_) => receipt
            .verified
            .push("vault: order key shredded, only the shred record remains".into()),
        KeyLookup::Missing => receipt
            .verified
            .push("vault: no key for the order (and no shred record)".into()),
        KeyLookup::Live(k) => {
            let alive: Vec<&str> = erased
                .iter()
                .filter(|c| k.subkey(**c).is_some())
                .map(|c| c.as_str())
                .collect();
            if alive.is_empty() && !whole {
                receipt
                    .verified
                    .push("vault: the erased classes' subkeys are gone".into());
            } else if alive.is_empty() {
                receipt
                    .failures
                    .push("vault: the order was erased whole, yet a key row remains".into());
            } else {
                receipt.failures.push(format!(
                    "vault: subkeys of erased classes still present: {}",
                    alive.join(", ")
                ));
            }
        }
        KeyLookup::Unreadable(e) => receipt
            .failures
            .push(format!("vault: the order's key row cannot be read: {e}")),
    }
    match view {
        None => receipt
            .failures
            .push("views: no row for the order on this node".into()),
        Some(row) if row.version < receipt.sequence => receipt.failures.push(format!(
            "views: the row is at version {}, before the erasure (event {})",
            row.version, receipt.sequence
        )),
        Some(row) => {
            let kept: Vec<&str> = row
                .sealed
                .iter()
                .map(|s| class_of(s.class))
                .filter(|c| erased.contains(c))
                .map(|c| c.as_str())
                .collect();
            if !kept.is_empty() {
                receipt.failures.push(format!(
                    "views: the row still keeps sealed fields of {}",
                    kept.join(", ")
                ));
            } else if whole && row.status != ViewStatus::Erased {
                receipt.failures.push(format!(
                    "views: the row's status is {}, not erased",
                    row.status.as_str()
                ));
            } else {
                receipt.verified.push(format!(
                    "views: the row keeps no sealed field of {}",
                    receipt.classes.join(", ")
                ));
            }
        }
    }
}

pub fn to_text(receipts: &[Receipt]) -> String {
    let mut s = String::new();
    for r in receipts {
        s.push_str(&format!(
            "{} order {} erased {} ({}) at {} partition {} offset {} key {}\n",
            if r.ok() { "OK  " } else { "FAIL" },
            r.order_id,
            r.scope,
            r.classes.join(","),
            r.at,
            r.partition,
            r.offset,
            r.key_id
        ));
        for v in &r.verified {
            s.push_str(&format!("       ok: {v}\n"));
        }
        for f in &r.failures {
            s.push_str(&format!("     FAIL: {f}\n"));
        }
    }
    let failed = receipts.iter().filter(|r| !r.ok()).count();
    s.push_str(&format!(
        "{} erasures, {} verified, {} failed\n",
        receipts.len(),
        receipts.len() - failed,
        failed
    ));
    s
}

/// Every erasure of the log, each re-verified against `node`.
pub fn run(source: &Source, node: &NodeData) -> Result<Vec<Receipt>, AuditError> {
    let partitions = log::partition_count(source)?;
    let mut records = Vec::new();
    log::scan(source, None, |r| records.push(r))?;
    let mut receipts = collect(
        partitions,
        records
            .iter()
            .map(|r| (r.partition, r.offset, r.key.as_deref(), r.value.as_slice())),
    );
    for r in &mut receipts {
        let view = query::order(node.store(), r.order_id)?;
        check(r, &node.key(r.order_id), view.as_ref());
        if !r.ok() {
            tracing::warn!(order_id = %r.order_id, partition = r.partition, offset = r.offset, "Erasure receipt failed re-verification.");
        }
    }
    Ok(receipts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::verify::tests::Fixture;
    use crate::domain::ErasureScope;
    use crate::events::v1::{ClassV1, SealedV1};
    use crate::projections::model::project;

    #[test]
    fn erasures_are_listed_and_checked_against_vault_and_view() {
        let mut f = Fixture::new();
        let a = f.place(1);
        let b = f.place(2);
        f.place(3);
        let at_a = f.erase(a, ErasureScope::Order);
        f.erase(
            b,
            ErasureScope::Classes(BTreeSet::from([FieldClass::Identity])),
        );
        // The views as the projector builds them.
        let view = |o: Uuid| {
            let mut row: Option<ProjectedOrder> = None;
            for (k, v) in &f.records {
                if k.as_slice() == o.as_bytes() {
                    row = Some(project(row.as_ref(), v, Some(k), 0).unwrap().order);
                }
            }
            row
        };
        let records: Vec<_> = f
            .records
            .iter()
            .enumerate()
            .map(|(o, (k, v))| (0, o as i64, Some(k.as_slice()), v.as_slice()))
            .collect();
        let mut receipts = collect(1, records);
        assert_eq!(
            receipts
                .iter()
                .map(|r| (r.order_id, r.scope))
                .collect::<Vec<_>>(),
            vec![(a, "order"), (b, "classes")]
        );
        assert_eq!(receipts[0].offset, at_a);
        assert_eq!(receipts[1].classes, vec!["identity"]);

        let shredded = KeyLookup::Shredded(crate::crypto::Shredded {
            key_id: f.keys[&a].id(),
            classes: FieldClass::ALL.into_iter().collect(),
            whole: true,
            at_ms: 0,
        });
        check(&mut receipts[0], &shredded, view(a).as_ref());
        assert!(receipts[0].ok(), "{:?}", receipts[0].failures);

        // B's identity subkey still in the vault, and its view row kept the field.
        let full = KeyLookup::Live(crate::crypto::OrderKey::from_parts(
            f.keys[&b].id(),
            FieldClass::ALL
                .into_iter()
                .map(|c| (c, f.keys[&b].subkey(c).unwrap().clone()))
                .collect(),
        ));
        let mut stale = view(b).unwrap();
        stale.sealed.push(SealedV1 {
            class: ClassV1::Identity,
            ciphertext: vec![1, 2, 3],
        });
        check(&mut receipts[1], &full, Some(&stale));
        assert_eq!(receipts[1].failures.len(), 2, "{:?}", receipts[1].failures);
        assert!(receipts[1].failures[0].contains("identity"));
        assert!(receipts[1].failures[1].contains("identity"));
        let text = to_text(&receipts);
        assert!(
            text.ends_with("2 erasures, 1 verified, 1 failed\n"),
            "{text}"
        );
    }
}
