//! Retention: personal data erased on its own once the policy's period has
//! run out, as ordinary erasures with reason `retention`.
//!
//! - `cancelled`: a cancelled order's personal data, that long after the
//!   cancellation (the whole order, as an erase request does);
//! - `identity`: any order's ID number, that long after placement.
//!
//! The scheduler runs on every node but erases only orders of the
//! partitions the node writes: the partition's single writer appends the
//! `OrderErased`, and its decision refuses a second erasure of the same
//! classes, so an erasure runs once however many nodes there are, and
//! whatever restarts or partition moves happen. An order under legal hold
//! is passed by until the hold is released or ends.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::{Command, DomainError, ErasureReason, ErasureScope, FieldClass};
use crate::service::state::OrderRecord;
use crate::service::{Service, ServiceError};

/// How long personal data is kept; `None` keeps it until erased by request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// After the cancellation of an order: then the whole order is erased.
    pub cancelled: Option<Duration>,
    /// After the placement of any order: then its `identity` class is erased.
    pub identity: Option<Duration>,
    /// How often the scheduler looks for what is due.
    pub interval: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            cancelled: None,
            identity: None,
            interval: Duration::from_secs(60),
        }
    }
}

impl RetentionPolicy {
    /// A quarter of the shortest period, between a second and a minute: an
    /// erasure is due at most that late.
    pub fn default_interval(cancelled: Option<Duration>, identity: Option<Duration>) -> Duration {
        [cancelled, identity]
            .into_iter()
            .flatten()
            .min()
            .map_or(Duration::from_secs(60), |p| p / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    pub fn is_off(&self) -> bool {
        self.cancelled.is_none() && self.identity.is_none()
    }

    /// Which rule erases what of `rec` at `now_ms`, if one is due. Pure.
    pub fn due(&self, rec: &OrderRecord, now_ms: i64) -> Option<(Rule, ErasureScope)> {
        let o = rec.state.order.as_ref()?;
        if o.fully_erased || o.hold_at(now_ms).is_some() {
            return None;
        }
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if let (Some(keep), Some(_), Some(at)) = (self.cancelled, o.cancelled, rec.cancelled_at_ms)
            && at.saturating_add(ms(keep)) <= now_ms
        {
            return Some((Rule::Cancelled, ErasureScope::Order));
        }
        if let Some(keep) = self.identity
            && o.real_name
            && !o.erased.contains(&FieldClass::Identity)
            && rec.placed_at_ms.saturating_add(ms(keep)) <= now_ms
        {
            return Some((
                Rule::Identity,
                ErasureScope::Classes([FieldClass::Identity].into()),
            ));
        }
        None
    }
}

/// The rule that made an erasure due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Rule {
    Cancelled,
    Identity,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// `30d`, `12h`, `90m`, `45s`, `500ms`: a number and a unit.
pub fn parse_period(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{t:?} has no unit (ms, s, m, h or d)"))?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{t:?} must start with a whole number"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit {other:?} (ms, s, m, h or d)")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{t:?} is too long"))
}

/// The orders of `partitions` due for erasure at `now_ms`.
fn due_orders(
    service: &Service,
    policy: &RetentionPolicy,
    partitions: &[i32],
    now_ms: i64,
) -> Result<Vec<(Uuid, Rule, ErasureScope)>, crate::store::StoreError> {
    let store = service.store();
    let count = service.partitions();
    let mut out = Vec::new();
    let states = store.table::<crate::store::schema::OrderStates>();
    let owned = |id: &Uuid| partitions.contains(&(crate::kafka::partition_of(id, count) as i32));
    for row in states.rows_if(owned) {
        let (id, rec) = match row {
            Ok(row) => row,
            // A row that does not read is left to `verify`, not erased.
            Err(e) if e.is_corrupt() => continue,
            Err(e) => return Err(e),
        };
        if let Some((rule, scope)) = policy.due(&rec, now_ms) {
            out.push((id, rule, scope));
        }
    }
    Ok(out)
}

/// One pass: erases what is due in the partitions this node writes.
/// Answers how many erasures it appended.
pub async fn run_once(service: &Service, policy: &RetentionPolicy) -> u64 {
    let partitions = service.owned_partitions();
    if partitions.is_empty() || policy.is_off() || !service.ready() {
        return 0;
    }
    let now = crate::clock::now_ms();
    let due = {
        let (service, policy) = (service.clone(), *policy);
        match tokio::task::spawn_blocking(move || due_orders(&service, &policy, &partitions, now))
            .await
        {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "Reading the order state for retention failed.");
                return 0;
            }
            Err(e) => {
                tracing::error!(error = %e, "The retention scan panicked.");
                return 0;
            }
        }
    };
    let mut erased = 0;
    for (order_id, rule, scope) in due {
        let command = Command::EraseOrder {
            scope: scope.clone(),
            reason: ErasureReason::Retention,
        };
        match service.execute(order_id, command, None, None).await {
            Ok(outcome) => {
                erased += 1;
                metrics::counter!(crate::telemetry::RETENTION_ERASURES, "rule" => rule.as_str())
                    .increment(1);
                metrics::counter!(crate::telemetry::ERASURES, "scope" => if scope == ErasureScope::Order { "order" } else { "classes" }).increment(1);
                tracing::info!(%order_id, rule = rule.as_str(), version = outcome.version, "Order erased by retention.");
            }
            // Erased meanwhile, held meanwhile, or the partition moved: the
            // next pass (here or on the new writer) sees the state as it is.
            Err(ServiceError::Domain(DomainError::AlreadyErased | DomainError::LegalHold(_)))
            | Err(ServiceError::NotOwner { .. } | ServiceError::PartitionMoving { .. }) => {}
            Err(e) => {
                tracing::warn!(%order_id, rule = rule.as_str(), error = %e, "Retention erasure failed; the next pass retries.");
            }
        }
    }
    erased
}

/// The scheduler: a pass every `interval` until stopped.
#[derive(Debug)]
pub struct Retention {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Retention {
    /// Starts the scheduler under `stop`.
    pub fn start(service: Service, policy: RetentionPolicy, stop: CancellationToken) -> Self {
        let token = stop.clone();
        if !policy.is_off() {
            tracing::info!(
                cancelled = ?policy.cancelled,
                identity = ?policy.identity,
                interval = ?policy.interval,
                "Retention policy in force."
            );
        }
        let task = tokio::spawn(async move {
            if policy.is_off() {
                return;
            }
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(policy.interval) => {}
                }
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = run_once(&service, &policy) => {}
                }
            }
        });
        Self { stop, task }
    }

    /// Ends the scheduler (a pass in progress is dropped between commands);
    /// a panic of its task is an error.
    pub async fn stop(self) -> Result<(), tokio::task::JoinError> {
        self.stop.cancel();
        self.task.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CancelReason, Event, Hold, fixtures, fold};

    fn record(events: &[Event], placed_at: i64, cancelled_at: Option<i64>) -> OrderRecord {
        OrderRecord {
            state: fold(events),
            placed_at_ms: placed_at,
            cancelled_at_ms: cancelled_at,
            ..OrderRecord::default()
        }
    }

    fn placed(real_name: bool) -> Event {
        let state = crate::domain::State::default();
        crate::domain::decide(
            &state,
            Command::PlaceOrder(fixtures::new_order(1, real_name)),
        )
        .unwrap()
        .remove(0)
    }

    #[test]
    fn the_default_interval_is_a_quarter_of_the_shortest_period_within_a_second_and_a_minute() {
        let d = RetentionPolicy::default_interval;
        assert_eq!(d(None, None), Duration::from_secs(60));
        assert_eq!(
            d(Some(Duration::from_secs(8)), None),
            Duration::from_secs(2)
        );
        assert_eq!(
            d(Some(Duration::from_secs(2)), None),
            Duration::from_secs(1)
        );
        assert_eq!(
            d(
                Some(Duration::from_secs(30 * 86_400)),
                Some(Duration::from_secs(120))
            ),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn periods_parse_with_their_unit_and_refuse_without() {
        assert_eq!(parse_period("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_period("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_period("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_period("30").unwrap_err().contains("unit"));
        assert!(parse_period("3w").unwrap_err().contains("unknown unit"));
        assert!(parse_period("d").is_err());
    }

    #[test]
    fn a_cancelled_order_is_due_after_its_period_and_a_held_one_never() {
        let policy = RetentionPolicy {
            cancelled: Some(Duration::from_secs(10)),
            ..RetentionPolicy::default()
        };
        let cancelled = [
            placed(false),
            Event::OrderCancelled {
                reason: CancelReason::CustomerRequest,
            },
        ];
        let rec = record(&cancelled, 0, Some(1_000));
        assert_eq!(policy.due(&rec, 10_999), None);
        assert_eq!(
            policy.due(&rec, 11_000),
            Some((Rule::Cancelled, ErasureScope::Order))
        );
        // Active orders are kept.
        assert_eq!(policy.due(&record(&cancelled[..1], 0, None), 99_999), None);
        let hold = Hold {
            reason: crate::domain::validation::HoldReason::parse("r", "dispute").unwrap(),
            until_ms: Some(50_000),
        };
        let mut held = cancelled.to_vec();
        held.push(Event::OrderHeld(hold));
        let rec = record(&held, 0, Some(1_000));
        assert_eq!(policy.due(&rec, 20_000), None, "held");
        assert!(policy.due(&rec, 50_000).is_some(), "the hold has ended");
    }

    #[test]
    fn the_identity_class_is_due_after_placement_for_real_name_orders_only() {
        let policy = RetentionPolicy {
            identity: Some(Duration::from_secs(5)),
            ..RetentionPolicy::default()
        };
        let rec = record(&[placed(true)], 1_000, None);
        assert_eq!(policy.due(&rec, 5_999), None);
        assert_eq!(
            policy.due(&rec, 6_000),
            Some((
                Rule::Identity,
                ErasureScope::Classes([FieldClass::Identity].into())
            ))
        );
        assert_eq!(
            policy.due(&record(&[placed(false)], 1_000, None), 9_999),
            None
        );
        let erased = [
            placed(true),
            Event::OrderErased {
                scope: ErasureScope::Classes([FieldClass::Identity].into()),
                reason: ErasureReason::Retention,
            },
        ];
        assert_eq!(policy.due(&record(&erased, 1_000, None), 9_999), None);
    }
}
