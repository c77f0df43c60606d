//! Receipts: what an erase request answers once its event is logged, and
//! what `GET /v1/orders/{id}/erasure` answers later, both from the same
//! checks: this node's vault no longer yields the erased classes, and every
//! live node's positions have passed the erasure's two records.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::purge::{self, Source};
use super::{LogRef, NodeErasure, Receipt, Records, Step, Timings};
use crate::crypto::VaultError;
use crate::crypto::vault::KeyLookup;
use crate::domain::{ErasureScope, FieldClass};
use crate::service::{Outcome, Service, ServiceError};

/// Why no receipt can be given.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// The event is logged, yet this node's vault still yields an erased class.
    #[error("the erasure event is logged but key destruction could not be verified")]
    Unverified,
    #[error("order does not exist")]
    NoOrder,
    #[error("order has not been erased")]
    NotErased,
    /// This node has not read the erasure yet.
    #[error("this node has not read the erasure yet")]
    Lagging,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl From<crate::store::StoreError> for ReceiptError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Service(ServiceError::Internal(crate::error::Cause::of(e)))
    }
}

/// What a vault's answer for an erased order proves: `Ok` with what it
/// verified, or `Err` with what still holds key bytes of an `erased` class
/// (`whole`: the order itself was erased). The one check of the key half of
/// an erasure: the receipt an erase request answers and `orderlog receipts`
/// both make it. Pure.
pub fn check_vault(
    key: &KeyLookup,
    erased: &BTreeSet<FieldClass>,
    whole: bool,
) -> Result<String, String> {
    match key {
        KeyLookup::Shredded(_) if whole => {
            Ok("vault: order key shredded, only the shred record remains".into())
        }
        // A class erasure that shreds the last subkeys left removes the
        // whole key row: every class, these included, is gone.
        KeyLookup::Shredded(_) => {
            Ok("vault: no subkey of the order is left, the erased classes' included".into())
        }
        KeyLookup::Missing => Ok("vault: no key for the order (and no shred record)".into()),
        KeyLookup::Live(k) => {
            let alive: Vec<&str> = erased
                .iter()
                .filter(|c| k.subkey(**c).is_some())
                .map(|c| c.as_str())
                .collect();
            if !alive.is_empty() {
                Err(format!(
                    "vault: subkeys of erased classes still present: {}",
                    alive.join(", ")
                ))
            } else if whole {
                Err("vault: the order was erased whole, yet a key row remains".into())
            } else {
                Ok("vault: the erased classes' subkeys are gone".into())
            }
        }
        KeyLookup::Unreadable(e) => Err(format!("vault: the order's key row cannot be read: {e}")),
    }
}

/// What this node's vault says of the erased classes, and whether the key
/// row is gone; an erased class still in the vault leaves the erasure
/// unverified.
fn verify_vault(
    service: &Service,
    order_id: Uuid,
    classes: &[FieldClass],
) -> Result<(Vec<String>, bool), ReceiptError> {
    let key = match service.vault().get(order_id) {
        // A store or KEK failure is this node's, not the erasure's.
        Err(e) if !matches!(e, VaultError::Shredded { .. } | VaultError::NotFound(_)) => {
            return Err(ReceiptError::Service(e.into()));
        }
        answer => KeyLookup::of(answer),
    };
    // No key and no shred record: this node has not read the key's row yet
    // (a retry reaching a node whose key follower is behind), which proves
    // nothing yet.
    if matches!(key, KeyLookup::Missing) {
        return Err(ReceiptError::Lagging);
    }
    let row_gone = !matches!(key, KeyLookup::Live(_));
    let erased: BTreeSet<FieldClass> = classes.iter().copied().collect();
    match check_vault(&key, &erased, erased.len() == FieldClass::ALL.len()) {
        Ok(verified) => Ok((vec![verified], row_gone)),
        Err(_) => Err(ReceiptError::Unverified),
    }
}

/// The pause between two looks at the positions when no purge wakes the
/// waiter; once this node is done, it doubles up to [`LAST_TICK`].
const FIRST_TICK: Duration = Duration::from_millis(10);
/// Peers' positions come from their members rows: a waiter for a peer looks
/// at least this often. (A tick of 10 ms throughout had each of a burst's
/// thousand waiters rebuild this node's positions 100 times a second.)
const LAST_TICK: Duration = Duration::from_millis(100);

/// Polls every live node's positions until all are done or `limit`; returns
/// the last statuses and when this node and the cluster were done. This
/// node's purges wake it at once; otherwise it looks again after
/// [`FIRST_TICK`], or, waiting for peers only, a pause that grows to
/// [`LAST_TICK`].
async fn await_nodes(
    service: &Service,
    records: Records,
    limit: Duration,
) -> (Vec<NodeErasure>, Option<Duration>, Duration) {
    let started = Instant::now();
    let mut here = None;
    let mut tick = FIRST_TICK;
    loop {
        let mut drained = std::pin::pin!(service.tracker().map(|t| t.purge.drained()));
        if let Some(d) = drained.as_mut().as_pin_mut() {
            d.enable();
        }
        let nodes = records.on(&service.nodes());
        if here.is_none() && nodes.iter().any(|n| n.this_node && n.done) {
            here = Some(started.elapsed());
        }
        if nodes.iter().all(|n| n.done) || started.elapsed() >= limit {
            return (nodes, here, started.elapsed());
        }
        let purged = async {
            match drained.as_mut().as_pin_mut() {
                Some(d) => d.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = purged => {}
            () = tokio::time::sleep(tick.min(limit.saturating_sub(started.elapsed()))) => {
                // Not every step of this node's own notifies (the views'
                // and the key follower's positions do not): only a wait for
                // peers backs off.
                if here.is_some() {
                    tick = (tick * 2).min(LAST_TICK);
                }
            }
        }
    }
}

/// The event and the key row of `records`, named by topic.
fn refs(topic: &str, records: &Records) -> (LogRef, Option<LogRef>) {
    let event = LogRef {
        topic: topic.to_owned(),
        partition: records.event.0,
        offset: records.event.1,
    };
    let key_row = records.key_row.map(|(partition, offset)| LogRef {
        topic: crate::crypto::keys_topic_for(topic),
        partition,
        offset,
    });
    (event, key_row)
}

fn class_names(classes: &[FieldClass]) -> Vec<String> {
    classes.iter().map(|c| c.as_str().to_owned()).collect()
}

/// The lines of `purged` that say what this node and the cluster did.
fn describe(nodes: &[NodeErasure], classes: &[FieldClass], version: u64) -> Vec<String> {
    let mut out = Vec::new();
    let me = nodes.iter().find(|n| n.this_node);
    let names = class_names(classes).join(", ");
    match me.map(|n| n.views) {
        Some(Step::Purged | Step::Applied) => out.push(format!(
            "views: sealed {names} fields dropped at version {version} on this node"
        )),
        _ => out.push("views: pending, the projector lags; the fields are dropped when it reaches the OrderErased event".to_owned()),
    }
    if me.is_some_and(|n| n.done) {
        out.push("disk: memtables and WAL flushed, the order's key and view ranges compacted to the bottom level on this node".to_owned());
    } else {
        out.push(
            "disk: purge queued on this node; it runs in the background and survives a restart"
                .to_owned(),
        );
    }
    let done = nodes.iter().filter(|n| n.done).count();
    out.push(format!(
        "cluster: {done} of {} live node(s) destroyed the key and purged it from disk",
        nodes.len()
    ));
    out
}

/// The receipt an erase request answers: of the erasure it has just
/// written (counted and logged), or, for a retry under the same
/// idempotency key, of the order's latest erasure as it stands once this
/// node has read it (bounded by `wait`).
pub async fn of_request(
    service: &Service,
    topic: &str,
    scope: &ErasureScope,
    outcome: &Outcome,
    started: Instant,
    wait: Duration,
) -> Result<Receipt, ReceiptError> {
    if outcome.replayed {
        return settled(service, topic, outcome.order_id, wait).await;
    }
    let receipt = after_erase(service, topic, scope, outcome, started, wait).await?;
    tracing::info!(order_id = %outcome.order_id, elapsed_ms = receipt.elapsed_ms, complete = receipt.complete, "Order erased.");
    metrics::counter!(crate::telemetry::ERASURES, "scope" => receipt.scope.clone()).increment(1);
    metrics::histogram!(crate::telemetry::ERASE_LATENCY).record(started.elapsed().as_secs_f64());
    Ok(receipt)
}

/// [`current`], once this node has read the order's erasure and the writer
/// has destroyed its copy of the key (a retry can come in between), within
/// `wait`.
pub async fn settled(
    service: &Service,
    topic: &str,
    order_id: Uuid,
    wait: Duration,
) -> Result<Receipt, ReceiptError> {
    let deadline = Instant::now() + wait;
    loop {
        match current(service, topic, order_id) {
            Err(ReceiptError::Lagging | ReceiptError::Unverified) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            r => return r,
        }
    }
}

/// What a receipt states, from which [`Stated::receipt`] derives the rest
/// (the log references, the names, completeness, the elapsed time): one
/// shape for the receipt of a fresh erasure and of one read back.
struct Stated<'a> {
    order_id: Uuid,
    erased_at_ms: i64,
    /// The order itself was erased, not some of its classes.
    whole: bool,
    classes: &'a [FieldClass],
    reason: crate::domain::ErasureReason,
    records: Records,
    key_id: Option<String>,
    purged: Vec<String>,
    verified: Vec<String>,
    nodes: Vec<NodeErasure>,
    started: Instant,
    timings: Timings,
}

impl Stated<'_> {
    fn receipt(self, topic: &str) -> Receipt {
        let (event, key_row) = refs(topic, &self.records);
        Receipt {
            order_id: self.order_id,
            erased_at: crate::clock::rfc3339(self.erased_at_ms),
            scope: if self.whole { "order" } else { "classes" }.to_owned(),
            fields: class_names(self.classes),
            reason: self.reason.as_str().to_owned(),
            event,
            key_row,
            key_id: self.key_id,
            purged: self.purged,
            verified: self.verified,
            complete: self.nodes.iter().all(|n| n.done),
            nodes: self.nodes,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            timings_ms: self.timings,
        }
    }
}

/// The receipt of an erasure this node has just written (`outcome`).
pub async fn after_erase(
    service: &Service,
    topic: &str,
    scope: &ErasureScope,
    outcome: &Outcome,
    started: Instant,
    wait: Duration,
) -> Result<Receipt, ReceiptError> {
    let logged = started.elapsed();
    let classes: Vec<FieldClass> = scope.classes().into_iter().collect();
    let (mut verified, row_gone) = verify_vault(service, outcome.order_id, &classes)?;
    let keys_topic = crate::crypto::keys_topic_for(topic);
    let mut purged = vec![
        "key vault: wrapped subkeys deleted on this node".to_owned(),
        format!(
            "key replica {keys_topic}: {}",
            if row_gone {
                "tombstone written"
            } else {
                "reduced row written"
            }
        ),
    ];
    let event = outcome.position.unwrap_or((-1, -1));
    let records = Records {
        key_row: outcome.key_row,
        event,
    };
    let (nodes, here, cluster) = await_nodes(service, records, wait).await;
    purged.extend(describe(&nodes, &classes, outcome.version));
    let complete = nodes.iter().all(|n| n.done);
    if complete {
        verified.push(format!(
            "every live node ({}) read the key row and the event and purged its disk",
            nodes.len()
        ));
    }
    Ok(Stated {
        order_id: outcome.order_id,
        erased_at_ms: outcome.occurred_at_ms,
        whole: *scope == ErasureScope::Order,
        classes: &classes,
        reason: crate::domain::ErasureReason::Request,
        records,
        key_id: outcome.key_id.map(|k| k.to_string()),
        purged,
        verified,
        nodes,
        started,
        timings: Timings {
            logged_and_key_destroyed: logged.as_millis() as u64,
            purged_here: here.map_or(0, |h| (logged + h).as_millis() as u64),
            cluster: (logged + cluster).as_millis() as u64,
        },
    }
    .receipt(topic))
}

/// The receipt of an order's latest erasure as it stands now, from this
/// node's record of where it read the erasure.
pub fn current(service: &Service, topic: &str, order_id: Uuid) -> Result<Receipt, ReceiptError> {
    let started = Instant::now();
    let view = service.get(order_id)?.ok_or(ReceiptError::NoOrder)?;
    let Some(order) = &view.record.state.order else {
        return Err(ReceiptError::NoOrder);
    };
    let store = service.store();
    let event = purge::mark(store, &order_id, Source::Views)?;
    let classes: Vec<FieldClass> = order.erased.iter().copied().collect();
    let Some(event) = event else {
        return Err(if classes.is_empty() {
            ReceiptError::NotErased
        } else {
            ReceiptError::Lagging
        });
    };
    let key_row = purge::mark(store, &order_id, Source::Keys)?;
    let (verified, _) = verify_vault(service, order_id, &classes)?;
    let records = Records {
        key_row: key_row.map(|(p, o, _)| (p, o)),
        event: (event.0, event.1),
    };
    let nodes = records.on(&service.nodes());
    let whole = order.status() == crate::domain::Status::Erased;
    Ok(Stated {
        order_id,
        erased_at_ms: event.2,
        whole,
        purged: describe(&nodes, &classes, view.record.state.version),
        classes: &classes,
        reason: view.record.erased_for.unwrap_or_default(),
        records,
        key_id: view.shredded.as_ref().map(|s| s.key_id.to_string()),
        verified,
        nodes,
        started,
        timings: Timings::default(),
    }
    .receipt(topic))
}
