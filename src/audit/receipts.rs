//! `orderlog receipts`: every erasure the log records (`OrderErased`: order,
//! time, partition and offset, scope, key id), each re-verified against the
//! node's data directory: the erased classes' subkeys (or the whole key) are
//! gone from the vault, and the order's view row keeps no sealed field of an
//! erased class. Then against the cluster: every node live now (by its
//! members row) must have read the erasure's key row and event and purged
//! them from its disk ([`crate::erasure`]); a node still pending fails the
//! receipt.
//!
//! [`check`] and [`check_cluster`] are pure; [`run`] reads Kafka and the node.

use std::collections::BTreeSet;

use serde::Serialize;
use uuid::Uuid;

use super::verify::{ChainChecker, Observed, RecordRef};
use super::{AuditError, KeyLookup, NodeData, Source, log, time_text};
use crate::domain::FieldClass;
use crate::events::Body;
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
    /// `request` or `retention`.
    pub reason: &'static str,
    pub classes: Vec<&'static str>,
    pub key_id: String,
    pub verified: Vec<String>,
    pub failures: Vec<String>,
    /// Every node live when the check ran, and its part of the erasure.
    pub nodes: Vec<crate::erasure::NodeErasure>,
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
    keys: Option<std::sync::Arc<crate::crypto::LogKeys>>,
) -> Vec<Receipt> {
    let mut checker = ChainChecker::new(partitions, keys);
    let mut out = Vec::new();
    for (partition, offset, key, value) in records {
        let Observed::Accepted(env) = checker.observe(partition, offset, key, value) else {
            continue;
        };
        let Body::OrderErased {
            classes,
            whole,
            reason,
        } = &env.body
        else {
            continue;
        };
        let classes: BTreeSet<FieldClass> = if *whole {
            FieldClass::ALL.into_iter().collect()
        } else {
            classes.iter().copied().collect()
        };
        out.push(Receipt {
            order_id: env.meta.order_id,
            at: time_text(env.meta.occurred_at_ms),
            at_ms: env.meta.occurred_at_ms,
            partition,
            offset,
            sequence: env.meta.sequence,
            scope: if *whole { "order" } else { "classes" },
            reason: reason.as_str(),
            classes: classes.iter().map(|c| c.as_str()).collect(),
            key_id: env.meta.key_id.to_string(),
            verified: vec![],
            failures: vec![],
            nodes: vec![],
        });
    }
    out.sort_by_key(|r| (r.at_ms, r.partition, r.offset));
    out
}

/// Re-verifies one receipt against the vault's answer and the view row. Pure.
pub fn check(receipt: &mut Receipt, key: &KeyLookup, view: Option<&ProjectedOrder>) {
    let erased = receipt.erased();
    let whole = receipt.scope == "order";
    match crate::erasure::receipt::check_vault(key, &erased, whole) {
        Ok(verified) => receipt.verified.push(verified),
        Err(failure) => receipt.failures.push(failure),
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
                .map(|s| s.class)
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

/// Checks that every live node has passed the erasure's records (the key
/// row where the audited node read it, and the event). Pure.
pub fn check_cluster(
    receipt: &mut Receipt,
    key_row: Option<(i32, i64)>,
    live: &[crate::erasure::NodeRow],
) {
    use crate::erasure::{Records, Step};
    if live.is_empty() {
        receipt.verified.push(
            "cluster: no node is live now; a node applies every erasure before it is ready again"
                .into(),
        );
        return;
    }
    let nodes = Records {
        key_row,
        event: (receipt.partition, receipt.offset),
    }
    .on(live);
    let name = |s: Step| match s {
        Step::Purged => "purged",
        Step::Applied => "applied, purge pending",
        Step::Pending => "pending",
        Step::Unknown => "unknown (this data directory never read the key row)",
    };
    for n in &nodes {
        if n.done {
            receipt.verified.push(format!(
                "node {}: key destroyed and purged, views purged",
                n.node_id
            ));
        } else if n.key == Step::Unknown && n.views == Step::Purged {
            // An erasure this data directory read before it recorded where
            // (an earlier version): the views are checked, the key row cannot be.
            receipt.verified.push(format!(
                "node {}: views purged; the key row's position is not recorded on the audited node",
                n.node_id
            ));
        } else {
            receipt.failures.push(format!(
                "node {}: key {}, views {}",
                n.node_id,
                name(n.key),
                name(n.views)
            ));
        }
    }
    receipt.nodes = nodes;
}

pub fn to_text(receipts: &[Receipt]) -> String {
    let mut s = String::new();
    for r in receipts {
        s.push_str(&format!(
            "{} order {} erased {} ({}) for {} at {} partition {} offset {} key {}\n",
            if r.ok() { "OK  " } else { "FAIL" },
            r.order_id,
            r.scope,
            r.classes.join(","),
            r.reason,
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
        Some(node.vault.log_keys()),
    );
    let live = live_members(source)?;
    for r in &mut receipts {
        let view = query::order(node.store(), r.order_id)?;
        check(r, &node.key(r.order_id), view.as_ref());
        let key_row =
            crate::erasure::purge::mark(node.store(), &r.order_id, crate::erasure::Source::Keys)?
                .map(|(p, o, _)| (p, o));
        check_cluster(r, key_row, &live);
        if !r.ok() {
            tracing::warn!(order_id = %r.order_id, partition = r.partition, offset = r.offset, "Erasure receipt failed re-verification.");
        }
    }
    Ok(receipts)
}

/// The nodes whose members row is fresh now (within three of their
/// heartbeats, and two seconds for clocks apart), with their positions.
fn live_members(source: &Source) -> Result<Vec<crate::erasure::NodeRow>, AuditError> {
    use crate::service::membership::{DEAD_AFTER_HEARTBEATS, Member};
    let members = Source {
        settings: source.settings.clone(),
        topic: crate::kafka::members_topic_for(&source.topic),
        log_keys: None,
    };
    let mut rows: std::collections::BTreeMap<String, Option<Member>> = Default::default();
    match log::scan(&members, None, |r| {
        let Some(node) = r.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) else {
            return;
        };
        let row = if r.value.is_empty() {
            None
        } else {
            serde_json::from_slice::<Member>(&r.value).ok()
        };
        rows.insert(node.to_owned(), row);
    }) {
        Ok(_) => {}
        // No members topic: no node ever ran against this topic in cluster mode.
        Err(AuditError::NoTopic(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let now = crate::clock::now_ms();
    Ok(rows
        .into_values()
        .flatten()
        .filter(|m| {
            let every = m.heartbeat_every_ms.max(1000) as i64;
            now - m.heartbeat_ms <= every * i64::from(DEAD_AFTER_HEARTBEATS) + 2000
        })
        .map(|m| crate::erasure::NodeRow {
            node_id: m.node_id,
            url: m.url,
            this_node: false,
            positions: m.positions,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::verify::tests::Fixture;
    use crate::domain::ErasureScope;
    use crate::events::Sealed;
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
        let mut receipts = collect(1, records, None);
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
        stale.sealed.push(Sealed {
            class: FieldClass::Identity,
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

    #[test]
    fn a_receipt_is_confirmed_only_when_every_live_node_passed_its_records() {
        use crate::erasure::{NodeRow, Positions};
        use std::collections::BTreeMap;
        let receipt = || Receipt {
            order_id: Uuid::nil(),
            at: String::new(),
            at_ms: 0,
            partition: 0,
            offset: 10,
            sequence: 3,
            scope: "order",
            reason: "request",
            classes: vec![],
            key_id: String::new(),
            verified: vec![],
            failures: vec![],
            nodes: vec![],
        };
        let node = |id: &str, keys: i64, views: i64| NodeRow {
            node_id: id.into(),
            url: String::new(),
            this_node: false,
            positions: Positions {
                keys_applied: BTreeMap::from([(2, keys)]),
                keys_purged: BTreeMap::from([(2, keys)]),
                views_projected: BTreeMap::from([(0, views)]),
                views_purged: BTreeMap::from([(0, views)]),
            },
        };
        let mut r = receipt();
        check_cluster(&mut r, Some((2, 5)), &[node("a", 6, 11), node("b", 6, 11)]);
        assert!(r.ok(), "{:?}", r.failures);
        assert_eq!(r.nodes.len(), 2);

        let mut r = receipt();
        check_cluster(&mut r, Some((2, 5)), &[node("a", 6, 11), node("b", 5, 11)]);
        assert_eq!(r.failures, vec!["node b: key pending, views purged"]);

        let mut r = receipt();
        check_cluster(&mut r, None, &[node("a", 6, 11)]);
        assert!(
            r.ok(),
            "a key row of an earlier version is noted, not failed"
        );
        let mut r = receipt();
        check_cluster(&mut r, None, &[node("a", 6, 10)]);
        assert!(!r.ok(), "views not purged fail");

        let mut r = receipt();
        check_cluster(&mut r, Some((2, 5)), &[]);
        assert!(r.ok());
    }
}
