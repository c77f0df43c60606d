//! Erasure after the log: how far each node has carried out an erasure, and
//! the receipt that says so.
//!
//! An erasure is one transaction: the `OrderErased` event in the event log
//! and the key's tombstone (or reduced row) in `orders.keys`. Every node
//! then, on its own:
//! - its key follower reads the row, destroys its copy of the key and queues
//!   the purge of the order's rows ([`purge`]);
//! - its projector reads the event, drops the view's sealed fields and
//!   queues the same purge;
//! - its purger flushes and compacts them off the disk.
//!
//! Each node publishes, in its members row, how far each reader has
//! *applied* and how far the disk is *purged* ([`Positions`]), per
//! partition. An erasure is done on a node once both purged positions have
//! passed its two records ([`NodeErasure`]); the receipt lists every live
//! node ([`Receipt`]). Never here: key material or personal fields.

pub mod purge;
pub mod receipt;
pub mod retention;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use purge::{PurgeStatus, Purger, Source};

use crate::crypto::FollowStatus;
use crate::projections::ProjectorStatus;

/// How far this node's readers have applied the two topics, and up to where
/// what they destroyed is purged from its disk: per partition, the next
/// offset (everything before it is done).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Positions {
    /// Key topic partition -> next offset the key follower has not applied.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, i64>)]
    pub keys_applied: BTreeMap<i32, i64>,
    /// Key topic partition -> offset below which destroyed keys are off disk.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, i64>)]
    pub keys_purged: BTreeMap<i32, i64>,
    /// Event topic partition -> next offset the views have not projected.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, i64>)]
    pub views_projected: BTreeMap<i32, i64>,
    /// Event topic partition -> offset below which erased view rows are off disk.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, i64>)]
    pub views_purged: BTreeMap<i32, i64>,
}

/// This node's readers, to read its [`Positions`] from.
#[derive(Debug, Clone)]
pub struct Tracker {
    pub keys: Arc<FollowStatus>,
    pub views: Arc<ProjectorStatus>,
    pub purge: Arc<PurgeStatus>,
}

impl Tracker {
    pub fn positions(&self) -> Positions {
        let keys_applied = self.keys.positions();
        let views_projected = self.views.flushed.lock().clone();
        Positions {
            keys_purged: self.purge.purged_up_to(Source::Keys, &keys_applied),
            views_purged: self.purge.purged_up_to(Source::Views, &views_projected),
            keys_applied,
            views_projected,
        }
    }
}

/// How far one node is with one half of an erasure. purged: applied and
/// gone from the node's disk; applied: key destroyed / sealed fields
/// dropped, purge queued; pending: not read yet; unknown: the node never
/// read the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Applied, and the old rows are gone from the node's disk.
    Purged,
    /// Applied (the key destroyed, the view's sealed fields dropped); the
    /// purge from disk is queued.
    Applied,
    /// Not read yet.
    Pending,
    /// This node cannot tell where the record is (it never read it).
    Unknown,
}

impl Step {
    fn at(
        applied: &BTreeMap<i32, i64>,
        purged: &BTreeMap<i32, i64>,
        at: Option<(i32, i64)>,
    ) -> Self {
        let Some((p, o)) = at else {
            return Step::Unknown;
        };
        if purged.get(&p).is_some_and(|next| *next > o) {
            Step::Purged
        } else if applied.get(&p).is_some_and(|next| *next > o) {
            Step::Applied
        } else {
            Step::Pending
        }
    }
}

/// One node's part of an erasure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeErasure {
    pub node_id: String,
    pub url: String,
    /// The node that answered.
    pub this_node: bool,
    /// Its copy of the key: destroyed and purged from its disk, or not yet.
    pub key: Step,
    /// Its views and order state: sealed fields dropped and purged, or not yet.
    pub views: Step,
    /// Both purged.
    pub done: bool,
}

/// A node and its positions, as its members row (or this node) says.
#[derive(Debug, Clone)]
pub struct NodeRow {
    pub node_id: String,
    pub url: String,
    pub this_node: bool,
    pub positions: Positions,
}

/// Where an erasure's two records are: the key row in `orders.keys` (when
/// known) and the `OrderErased` event in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Records {
    pub key_row: Option<(i32, i64)>,
    pub event: (i32, i64),
}

impl Records {
    /// Every node's part, in node id order.
    pub fn on(&self, nodes: &[NodeRow]) -> Vec<NodeErasure> {
        let mut out: Vec<NodeErasure> = nodes
            .iter()
            .map(|n| {
                let p = &n.positions;
                let key = Step::at(&p.keys_applied, &p.keys_purged, self.key_row);
                let views = Step::at(&p.views_projected, &p.views_purged, Some(self.event));
                NodeErasure {
                    node_id: n.node_id.clone(),
                    url: n.url.clone(),
                    this_node: n.this_node,
                    key,
                    views,
                    done: key == Step::Purged && views == Step::Purged,
                }
            })
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }
}

/// A position in a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// How long each stage of an erase request took, in milliseconds (all 0
/// in a receipt read back later).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Timings {
    /// The event and key row committed, the key destroyed on this node.
    pub logged_and_key_destroyed: u64,
    /// This node's views dropped the fields and its disk is purged.
    pub purged_here: u64,
    /// Every live node purged (or the wait gave up).
    pub cluster: u64,
}

/// The answer to an erase request, and to `GET /v1/orders/{id}/erasure`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Receipt {
    pub order_id: Uuid,
    #[schema(format = DateTime)]
    pub erased_at: String,
    /// `order` (the whole order) or `classes` (some field classes).
    #[schema(schema_with = scope_schema)]
    pub scope: String,
    /// The field classes erased.
    #[schema(value_type = Vec<crate::domain::FieldClass>)]
    pub fields: Vec<String>,
    /// Why the order was erased: an erase request (by order or by subject),
    /// or the retention policy.
    #[schema(value_type = crate::domain::ErasureReason)]
    pub reason: String,
    /// The `OrderErased` event.
    pub event: LogRef,
    /// The key's tombstone (or reduced row) in the key topic, committed with
    /// the event; null when this node cannot tell where it is.
    #[schema(required)]
    pub key_row: Option<LogRef>,
    /// The order key's id.
    #[schema(required)]
    pub key_id: Option<String>,
    /// What was destroyed and purged, in words.
    pub purged: Vec<String>,
    /// What was checked on the answering node.
    pub verified: Vec<String>,
    /// Every live node's part.
    pub nodes: Vec<NodeErasure>,
    /// Every live node destroyed the key and purged its disk.
    pub complete: bool,
    pub elapsed_ms: u64,
    pub timings_ms: Timings,
}

/// `scope`'s two values, for the OpenAPI document.
fn scope_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(["order", "classes"]))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, keys: (i64, i64), views: (i64, i64)) -> NodeRow {
        NodeRow {
            node_id: id.into(),
            url: format!("http://{id}"),
            this_node: id == "a",
            positions: Positions {
                keys_applied: BTreeMap::from([(1, keys.0)]),
                keys_purged: BTreeMap::from([(1, keys.1)]),
                views_projected: BTreeMap::from([(0, views.0)]),
                views_purged: BTreeMap::from([(0, views.1)]),
            },
        }
    }

    #[test]
    fn a_node_is_done_once_both_purged_positions_pass_the_records() {
        let records = Records {
            key_row: Some((1, 10)),
            event: (0, 20),
        };
        let nodes = records.on(&[
            row("c", (10, 10), (21, 21)),
            row("a", (11, 11), (21, 21)),
            row("b", (11, 10), (21, 20)),
        ]);
        let got: Vec<_> = nodes
            .iter()
            .map(|n| (n.node_id.as_str(), n.key, n.views, n.done))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", Step::Purged, Step::Purged, true),
                ("b", Step::Applied, Step::Applied, false),
                ("c", Step::Pending, Step::Purged, false),
            ]
        );
        let unknown = Records {
            key_row: None,
            event: (0, 20),
        }
        .on(&[row("a", (11, 11), (21, 21))]);
        assert_eq!(unknown[0].key, Step::Unknown);
        assert!(!unknown[0].done);
    }

    #[test]
    fn positions_read_back_from_a_members_row_without_them() {
        let p: Positions = serde_json::from_str("{}").unwrap();
        assert_eq!(p, Positions::default());
        let full = Positions {
            keys_applied: BTreeMap::from([(3, 7)]),
            ..Positions::default()
        };
        let back: Positions = serde_json::from_str(&serde_json::to_string(&full).unwrap()).unwrap();
        assert_eq!(back, full);
    }
}
