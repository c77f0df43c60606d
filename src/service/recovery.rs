//! Recovery: rebuilding the order state from the whole log at a start that
//! needs it, and finishing erasures a crash interrupted (the key of an order
//! whose `OrderErased` is in the log must not survive in the vault).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::future::join_all;
use uuid::Uuid;

use super::{ServiceError, Shared, intents, kafka_unavailable, partition, state};
use crate::crypto::{KeyReplica, KeyVault, Shredded};
use crate::domain::FieldClass;
use crate::kafka::partition_of;
use crate::shutdown::{self, Retry};
use crate::store::Store;

/// Destroys an order's key (or some classes of it) in the vault, then
/// replaces its replica row with the reduced row or a tombstone.
async fn shred(
    vault: &KeyVault,
    replica: Option<&KeyReplica>,
    order_id: Uuid,
    classes: Option<&BTreeSet<FieldClass>>,
    now: i64,
) -> Result<Shredded, ServiceError> {
    let record = vault.destroy(order_id, classes, now)?;
    publish_replica_row(vault, replica, order_id).await?;
    Ok(record)
}

/// Finishes an erasure the log holds (the order's stored state says which
/// classes): destroys what the vault still holds of them and re-sends the
/// replica row. With `intent`, the order had an erase intent: it is cleared
/// once done, or at once when the log holds no erasure (the record never
/// landed); without, the replica row is re-sent only when something was
/// destroyed.
async fn finish_erasure(
    vault: &KeyVault,
    replica: Option<&KeyReplica>,
    store: &Store,
    order_id: Uuid,
    intent: Option<intents::IntentId>,
) -> Result<(), ServiceError> {
    let rec = state::load_order(store, &order_id)?;
    let erased = rec.as_ref().and_then(|r| {
        r.state
            .order
            .as_ref()
            .filter(|o| !o.erased.is_empty())
            .map(|o| (o, r.updated_at_ms))
    });
    if let Some((o, at)) = erased {
        let live = vault
            .stored(order_id)?
            .is_some_and(|row| row.wrapped.iter().any(|(c, _)| o.erased.contains(c)));
        if live {
            let classes = (!o.fully_erased).then(|| o.erased.clone());
            shred(vault, replica, order_id, classes.as_ref(), at).await?;
            tracing::warn!(%order_id, "Finished an interrupted erasure.");
        } else if intent.is_some() {
            // A crash between the vault and the replica could leave a
            // wrapped key in the replica: send its row again.
            publish_replica_row(vault, replica, order_id).await?;
        }
    }
    if let Some(id) = intent {
        intents::clear(store, &id)?;
    }
    Ok(())
}

/// Finishes the erase intents of `partition` left by erasures whose outcome
/// was not known when they were answered (idempotent for any other).
pub(super) async fn finish_intents(shared: &Shared, partition: usize) -> Result<(), ServiceError> {
    let n = shared.slots.len();
    for (id, _) in intents::pending(&shared.store)? {
        if partition_of(&id.order_id, n) == partition {
            finish_erasure(
                &shared.vault,
                shared.replica.as_ref(),
                &shared.store,
                id.order_id,
                Some(id),
            )
            .await?;
        }
    }
    Ok(())
}

/// Writes an order's current vault row (a tombstone once it is shredded) to
/// the key replica.
async fn publish_replica_row(
    vault: &KeyVault,
    replica: Option<&KeyReplica>,
    order_id: Uuid,
) -> Result<(), ServiceError> {
    let Some(replica) = replica else {
        return Ok(());
    };
    let row = vault.stored(order_id)?;
    replica
        .publish(&[(order_id, row.as_ref())])
        .await
        .map_err(|e| ServiceError::Unavailable(crate::error::Cause::context("key replica", e)))
}

/// Catches every partition's stored state up to `ends` (its start barrier)
/// and finishes interrupted erasures, then opens the writers. Each step is
/// retried until it succeeds or the service stops.
pub(super) async fn catch_up_all(shared: Arc<Shared>, from_zero: bool) {
    let started = Instant::now();
    let mut retry = Retry::new(Duration::from_millis(500), Duration::from_secs(10));
    if !from_zero {
        // Each partition is caught up when this node takes it over.
        shared.ready.store(true, Ordering::Release);
        shared.started.notify_waiters();
        return;
    }
    let erased = loop {
        if shared.closing.is_cancelled() {
            return;
        }
        let (s, t, n) = (
            shared.settings.clone(),
            shared.topic.clone(),
            shared.slots.len(),
        );
        let ends = match tokio::task::spawn_blocking(move || {
            super::log_reader::log_ends(&s, &t, n, Duration::from_secs(30))
        })
        .await
        {
            Ok(Ok(ends)) => ends,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "Reading the end of the log failed; retrying.");
                shutdown::pause(&shared.closing, retry.pause()).await;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "Reading the end of the log failed; retrying.");
                shutdown::pause(&shared.closing, retry.pause()).await;
                continue;
            }
        };
        match catch_up_partitions(&shared, &ends, from_zero).await {
            Ok(erased) => break erased,
            Err(e) => {
                tracing::error!(error = %e, "Catching up with the log failed; retrying.");
                shutdown::pause(&shared.closing, retry.pause()).await;
            }
        }
    };
    loop {
        if shared.closing.is_cancelled() {
            return;
        }
        match finish_erasures(&shared, &erased).await {
            Ok(()) => break,
            Err(e) => {
                tracing::error!(error = %e, "Finishing interrupted erasures failed; retrying.");
                shutdown::pause(&shared.closing, retry.pause()).await;
            }
        }
    }
    shared.ready.store(true, Ordering::Release);
    shared.started.notify_waiters();
    tracing::info!(
        partitions = shared.slots.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Order state rebuilt from the log."
    );
}

/// Folds every partition up to its barrier; returns the erased orders the
/// folds met (every one when folding from 0).
async fn catch_up_partitions(
    shared: &Arc<Shared>,
    ends: &[i64],
    from_zero: bool,
) -> Result<Vec<Uuid>, ServiceError> {
    let catch_ups = ends.iter().enumerate().map(|(p, until)| {
        let (sh, until) = (shared.clone(), *until);
        tokio::task::spawn_blocking(move || {
            let (s, t, st) = (&sh.settings, &sh.topic, &sh.store);
            let keys = &sh.vault.log_keys();
            let n = sh.partitions.len();
            let (ttl, stall, stop) = (sh.idempotency_ttl, Duration::from_secs(60), &sh.closing);
            let from = if from_zero {
                0
            } else {
                st.view_offset(p as i32)?
            };
            let t0 = Instant::now();
            let caught = if from_zero {
                partition::catch_up(s, t, st, keys, n, ttl, p as i32, 0, until, stall, stop)
            } else {
                partition::follow(s, t, st, keys, n, ttl, p as i32, until, stall, stop)
            };
            caught.map(|r| (from, r, t0.elapsed()))
        })
    });
    let mut erased = Vec::new();
    for (p, r) in join_all(catch_ups).await.into_iter().enumerate() {
        let (from, report, took) = r
            .map_err(|e| ServiceError::Internal(crate::error::Cause::of(e)))?
            .map_err(|e| match e {
                partition::CatchUpError::Kafka(e) => kafka_unavailable(&e),
                partition::CatchUpError::Store(e) => e.into(),
            })?;
        tracing::info!(
            partition = p,
            from,
            to = report.end,
            records = report.records,
            applied = report.applied,
            skipped = report.skipped,
            elapsed_ms = took.as_millis() as u64,
            "Partition state caught up with the log."
        );
        erased.extend(report.erased);
    }
    if from_zero {
        state::mark_built(&shared.store)?;
    }
    Ok(erased)
}

/// An erasure is appended before the key is destroyed: finishes those a
/// crash interrupted (the intents), and those the log holds whose key is
/// still in the vault (a vault restored from the replica topic).
async fn finish_erasures(shared: &Shared, erased: &[Uuid]) -> Result<(), ServiceError> {
    let (vault, replica, store) = (&shared.vault, shared.replica.as_ref(), &shared.store);
    for (id, _) in intents::pending(store)? {
        finish_erasure(vault, replica, store, id.order_id, Some(id)).await?;
    }
    for order_id in erased {
        finish_erasure(vault, replica, store, *order_id, None).await?;
    }
    Ok(())
}
