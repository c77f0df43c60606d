//! `orderlog verify`: proves the log is whole and readable as promised.
//!
//! Checked, per order: sequence numbers without gaps or repeats, the hash
//! chain (`prev_hash` is SHA-256 of the order's previous record), that every
//! record decodes, sits under its order's key and in its order's partition;
//! then, against the node's vault, that sealed fields open while the key
//! lives and that a shredded key matches an `OrderErased` in the log (a key
//! missing without one is "key lost"); last, that the node's views equal a
//! replay of the log (digests). Each problem is a [`Finding`] naming the
//! order, partition and offset.
//!
//! [`ChainChecker`], [`check_keys`] and [`compare_views`] are pure; [`run`]
//! does the reading. Findings describe records, never their personal fields.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Serialize;
use uuid::Uuid;

use super::{AuditError, KeyLookup, NodeData, Source, log, replay};
use crate::domain::FieldClass;
use crate::events::Body;
use crate::events::chain::{self, Link};
use crate::events::{self, Envelope, RecordHash};
use crate::kafka::partition_of;
use crate::projections::query::ViewDigest;
use crate::store::schema::ViewOffsets;
use crate::store::{Store, StoreError};

/// What is wrong. Serialized in snake_case for `--json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The record was not written by an orderlog node: no valid log MAC.
    Forged,
    /// The record is not an envelope this build can read.
    Undecodable,
    /// The record key is not the order id inside the envelope.
    KeyMismatch,
    /// The order's records are not all in the partition its id maps to.
    WrongPartition,
    /// Sequence numbers jump: events are missing (withheld or lost).
    SequenceGap,
    /// A second, byte-identical copy of an event already in the chain.
    DuplicateRecord,
    /// A different record claims a sequence number already taken (tampering).
    ConflictingRecord,
    /// The record's `prev_hash` is not the hash of the order's previous record.
    BrokenChain,
    /// An event where it cannot be: no `OrderPlaced` first, or a second one.
    UnexpectedEvent,
    /// A sealed field fails to open although its key lives.
    SealedFieldUnreadable,
    /// The log erased classes whose subkeys still live in the vault.
    ErasureNotApplied,
    /// The vault shredded classes the log has no `OrderErased` for.
    ShreddedWithoutErasure,
    /// No key and no shred record for an order that was never erased.
    KeyLost,
    /// The order's key row exists but cannot be unwrapped.
    KeyUnreadable,
    /// The node's views have not projected the whole log.
    ViewsBehind,
    /// A view differs from the one a replay of the log builds.
    ViewDigestMismatch,
    /// The node's subject index differs from the one its keys and a
    /// replay's views call for.
    SubjectIndexMismatch,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One problem, precisely located.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub order_id: Option<Uuid>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:<25}", self.kind.as_str())?;
        if let Some(o) = self.order_id {
            write!(f, " order {o}")?;
        }
        if let Some(p) = self.partition {
            write!(f, " partition {p}")?;
        }
        if let Some(o) = self.offset {
            write!(f, " offset {o}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

fn short(h: &RecordHash) -> String {
    hex::encode(&h[..8])
}

/// A record as the pure checks take it: partition, offset, key, value.
pub type RecordRef<'a> = (i32, i64, Option<&'a [u8]>, &'a [u8]);

/// What the checker knows of one order.
#[derive(Debug, Clone, Default)]
pub struct OrderTrack {
    pub partition: i32,
    /// Next sequence number expected.
    pub next: u64,
    pub last_hash: RecordHash,
    /// Accepted records by sequence: hash and offset.
    pub records: BTreeMap<u64, (RecordHash, i64)>,
    /// The `OrderPlaced` envelope (sealed fields still sealed) and its offset.
    pub placed: Option<(Envelope, i64)>,
    /// Classes erased by `OrderErased` events, and where the first one is.
    pub erased: BTreeSet<FieldClass>,
    pub erased_at: Option<i64>,
}

/// Whether a record became part of its order's chain.
#[derive(Debug)]
pub enum Observed {
    Accepted(Box<Envelope>),
    Rejected,
}

/// Follows every order's chain record by record. Pure: feed it records in
/// log order with [`ChainChecker::observe`].
#[derive(Debug)]
pub struct ChainChecker {
    partitions: usize,
    /// Without keys (an audit without the KEK), records are not
    /// authenticated.
    keys: Option<std::sync::Arc<crate::crypto::LogKeys>>,
    pub orders: BTreeMap<Uuid, OrderTrack>,
    pub findings: Vec<Finding>,
    pub records: u64,
}

impl ChainChecker {
    pub fn new(partitions: usize, keys: Option<std::sync::Arc<crate::crypto::LogKeys>>) -> Self {
        Self {
            partitions: partitions.max(1),
            keys,
            orders: BTreeMap::new(),
            findings: Vec::new(),
            records: 0,
        }
    }

    fn finding(
        &mut self,
        kind: FindingKind,
        order_id: Option<Uuid>,
        partition: i32,
        offset: i64,
        detail: String,
    ) -> Observed {
        self.findings.push(Finding {
            kind,
            order_id,
            partition: Some(partition),
            offset: Some(offset),
            detail,
        });
        Observed::Rejected
    }

    /// Checks one record and, if it continues its order's chain (or resumes
    /// it after a gap, which is reported), takes it in.
    pub fn observe(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Observed {
        self.records += 1;
        let key_order = key.and_then(|k| Uuid::from_slice(k).ok());
        if let Some(keys) = &self.keys
            && let Err(e @ events::DecodeError::Forged(_)) =
                events::authenticate(value, keys, Some((partition, offset)))
        {
            return self.finding(
                FindingKind::Forged,
                key_order,
                partition,
                offset,
                e.to_string(),
            );
        }
        let env = match events::decode(value) {
            Ok(env) => env,
            Err(e) => {
                return self.finding(
                    FindingKind::Undecodable,
                    key_order,
                    partition,
                    offset,
                    format!("record does not decode: {e}"),
                );
            }
        };
        let order_id = env.meta.order_id;
        if let Err(e) = events::public_event(&env) {
            return self.finding(
                FindingKind::Undecodable,
                Some(order_id),
                partition,
                offset,
                format!("public fields do not decode: {e}"),
            );
        }
        if let Err(e) = events::open_event(&env, None) {
            return self.finding(
                FindingKind::Undecodable,
                Some(order_id),
                partition,
                offset,
                e.to_string(),
            );
        }
        if key != Some(order_id.as_bytes().as_slice()) {
            return self.finding(
                FindingKind::KeyMismatch,
                Some(order_id),
                partition,
                offset,
                match key_order {
                    Some(k) => format!("record key is order {k}, the envelope's order differs"),
                    None => "record key is not a 16-byte order id".to_owned(),
                },
            );
        }
        let home = partition_of(&order_id, self.partitions) as i32;
        if home != partition {
            self.finding(
                FindingKind::WrongPartition,
                Some(order_id),
                partition,
                offset,
                format!("the order's events belong in partition {home}"),
            );
        }
        let hash = events::record_hash(value);
        let seq = env.meta.sequence;
        let track = self.orders.entry(order_id).or_insert_with(|| OrderTrack {
            partition,
            next: 1,
            ..Default::default()
        });
        let expected = track.next;
        let head = chain::Head {
            sequence: expected - 1,
            hash: track.last_hash,
        };
        let placement = matches!(env.body, Body::OrderPlaced { .. });
        let link = chain::link(head, seq, &env.meta.prev_hash, placement);
        match link {
            Link::Repeat => {
                let original = track.records.get(&seq).copied();
                return match original {
                    Some((h, at)) if h == hash => self.finding(
                        FindingKind::DuplicateRecord,
                        Some(order_id),
                        partition,
                        offset,
                        format!("event {seq} repeated: an identical copy is at offset {at}"),
                    ),
                    Some((h, at)) => self.finding(
                        FindingKind::ConflictingRecord,
                        Some(order_id),
                        partition,
                        offset,
                        format!(
                            "a different record claims event {seq} (hash {}; the chain's event {seq} is at offset {at}, hash {})",
                            short(&hash),
                            short(&h)
                        ),
                    ),
                    None => self.finding(
                        FindingKind::ConflictingRecord,
                        Some(order_id),
                        partition,
                        offset,
                        format!(
                            "event {seq} arrived after event {} (sequence goes back)",
                            expected - 1
                        ),
                    ),
                };
            }
            Link::WrongHash => {
                let (want, got) = (short(&track.last_hash), short(&env.meta.prev_hash));
                return self.finding(
                    FindingKind::BrokenChain,
                    Some(order_id),
                    partition,
                    offset,
                    format!(
                        "event {seq} names prev_hash {got}, but the order's previous record hashes to {want}"
                    ),
                );
            }
            // Reported, and the record taken in: what follows it is checked
            // against it.
            Link::Gap { expected } => {
                let missing = if seq == expected + 1 {
                    format!("event {expected} is missing")
                } else {
                    format!("events {expected}..={} are missing", seq - 1)
                };
                self.findings.push(Finding {
                    kind: FindingKind::SequenceGap,
                    order_id: Some(order_id),
                    partition: Some(partition),
                    offset: Some(offset),
                    detail: format!("event {seq} follows event {}: {missing}", expected - 1),
                });
            }
            Link::Misplaced | Link::Next => {}
        }
        // Only event 1 places an order (a placement after a gap included).
        if link == Link::Misplaced || (placement && matches!(link, Link::Gap { .. })) {
            let detail = if placement {
                format!("OrderPlaced as event {seq}; only event 1 may place an order")
            } else {
                format!(
                    "{} as event 1: an order starts with OrderPlaced",
                    env.kind()
                )
            };
            return self.finding(
                FindingKind::UnexpectedEvent,
                Some(order_id),
                partition,
                offset,
                detail,
            );
        }
        let track = self.orders.get_mut(&order_id).expect("inserted above");
        track.next = seq + 1;
        track.last_hash = hash;
        track.records.insert(seq, (hash, offset));
        match &env.body {
            Body::OrderPlaced { .. } => track.placed = Some((env.clone(), offset)),
            Body::OrderErased { classes, whole, .. } => {
                if *whole {
                    track.erased.extend(FieldClass::ALL);
                } else {
                    track.erased.extend(classes.iter().copied());
                }
                track.erased_at.get_or_insert(offset);
            }
            _ => {}
        }
        Observed::Accepted(Box::new(env))
    }
}

/// Checks every placed order's sealed fields against what the vault holds
/// (`key` answers for one order). Pure apart from `key`.
pub fn check_keys(
    orders: &BTreeMap<Uuid, OrderTrack>,
    mut key: impl FnMut(Uuid) -> KeyLookup,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for (order_id, track) in orders {
        let Some((env, placed_at)) = &track.placed else {
            continue;
        };
        let sealed: BTreeSet<FieldClass> = env.sealed.iter().map(|s| s.class).collect();
        let at = |kind, offset: i64, detail: String| Finding {
            kind,
            order_id: Some(*order_id),
            partition: Some(track.partition),
            offset: Some(offset),
            detail,
        };
        let erased_at = track.erased_at.unwrap_or(*placed_at);
        let names =
            |c: &BTreeSet<FieldClass>| c.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ");
        match key(*order_id) {
            KeyLookup::Live(k) => {
                let alive: BTreeSet<FieldClass> = k.classes().collect();
                let not_applied: BTreeSet<FieldClass> =
                    track.erased.intersection(&alive).copied().collect();
                if !not_applied.is_empty() {
                    out.push(at(
                        FindingKind::ErasureNotApplied,
                        erased_at,
                        format!(
                            "the log erased {} but the vault still holds those subkeys",
                            names(&not_applied)
                        ),
                    ));
                }
                let shredded: BTreeSet<FieldClass> = FieldClass::ALL
                    .into_iter()
                    .filter(|c| !alive.contains(c) && !track.erased.contains(c))
                    .collect();
                if !shredded.is_empty() {
                    out.push(at(
                        FindingKind::ShreddedWithoutErasure,
                        *placed_at,
                        format!(
                            "the vault has no subkey for {}, yet the log holds no OrderErased for it",
                            names(&shredded)
                        ),
                    ));
                }
                if k.id() != env.meta.key_id {
                    out.push(at(
                        FindingKind::SealedFieldUnreadable,
                        *placed_at,
                        format!(
                            "the vault's key is {}, the event was sealed under key {}",
                            k.id(),
                            env.meta.key_id
                        ),
                    ));
                } else if let Err(e) = events::open_event(env, Some(&k)) {
                    out.push(at(
                        FindingKind::SealedFieldUnreadable,
                        *placed_at,
                        format!("sealed fields do not open under the order's live key: {e}"),
                    ));
                }
            }
            KeyLookup::Shredded(record) => {
                let unlogged: BTreeSet<FieldClass> =
                    record.classes.difference(&track.erased).copied().collect();
                if !unlogged.is_empty() {
                    out.push(at(
                        FindingKind::ShreddedWithoutErasure,
                        *placed_at,
                        format!(
                            "the vault shredded {} of key {}, yet the log holds no OrderErased for it",
                            names(&unlogged),
                            record.key_id
                        ),
                    ));
                }
                // Fails cleanly: without the key nothing opens, and nothing errs.
                if let Err(e) = events::open_event(env, None) {
                    out.push(at(
                        FindingKind::Undecodable,
                        *placed_at,
                        format!("the erased event does not decode without its key: {e}"),
                    ));
                }
            }
            KeyLookup::Missing => {
                let whole = FieldClass::ALL.iter().all(|c| track.erased.contains(c));
                if !whole && !sealed.is_empty() {
                    out.push(at(
                        FindingKind::KeyLost,
                        *placed_at,
                        format!(
                            "no key and no shred record in the vault, and the log never erased the order (sealed: {})",
                            names(&sealed)
                        ),
                    ));
                }
            }
            KeyLookup::Unreadable(e) => out.push(at(
                FindingKind::KeyUnreadable,
                *placed_at,
                format!("the order's key row cannot be unwrapped: {e}"),
            )),
        }
    }
    out
}

/// Next offset per partition as stored beside the views.
pub fn view_offsets(store: &Store) -> Result<BTreeMap<u32, u64>, StoreError> {
    let mut out = BTreeMap::new();
    for row in store.table::<ViewOffsets>().rows() {
        let (partition, next) = row?;
        if next > 0 {
            out.insert(partition as u32, next as u64);
        }
    }
    Ok(out)
}

/// The node's views against a replay's. Pure.
/// Per order, the subject index entries a node lacks or has too many of
/// (by identifier kind only: the findings name no identifier). Pure.
pub fn compare_index(
    want: &BTreeSet<crate::projections::subjects::Entry>,
    have: &BTreeSet<crate::projections::subjects::Entry>,
    queued: u64,
) -> Vec<Finding> {
    let mut by_order: BTreeMap<Uuid, (Vec<&'static str>, Vec<&'static str>)> = BTreeMap::new();
    for (kind, _, order) in want.difference(have) {
        by_order.entry(*order).or_default().0.push(kind.as_str());
    }
    for (kind, _, order) in have.difference(want) {
        by_order.entry(*order).or_default().1.push(kind.as_str());
    }
    let note = if queued > 0 {
        format!(" ({queued} orders are still queued for indexing on the node)")
    } else {
        String::new()
    };
    by_order
        .into_iter()
        .map(|(order, (missing, extra))| Finding {
            kind: FindingKind::SubjectIndexMismatch,
            order_id: Some(order),
            partition: None,
            offset: None,
            detail: format!(
                "the node's subject index lacks the order's [{}] entries and holds [{}] it should not{note}",
                missing.join(", "),
                extra.join(", ")
            ),
        })
        .collect()
}

pub fn compare_views(
    live: &ViewDigest,
    live_offsets: &BTreeMap<u32, u64>,
    replay: &ViewDigest,
    replay_offsets: &BTreeMap<u32, u64>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    // Equal views are equal at whatever offsets: a node that stopped before
    // records that change no view (a writer's barrier, a transaction
    // marker) is not behind in any way that matters.
    if live.total == replay.total {
        return out;
    }
    let parts: BTreeSet<u32> = live_offsets
        .keys()
        .chain(replay_offsets.keys())
        .copied()
        .collect();
    for p in parts {
        let (l, r) = (
            live_offsets.get(&p).copied().unwrap_or(0),
            replay_offsets.get(&p).copied().unwrap_or(0),
        );
        if l != r {
            out.push(Finding {
                kind: FindingKind::ViewsBehind,
                order_id: None,
                partition: Some(p as i32),
                offset: Some(l as i64),
                detail: format!(
                    "the node's views stop at offset {l}, the log (replayed) at {r}; digests are only comparable at the same offsets"
                ),
            });
        }
    }
    if !out.is_empty() {
        return out;
    }
    for (view, (rows, digest)) in &replay.per_view {
        let (lrows, ldigest) = live
            .per_view
            .get(view)
            .cloned()
            .unwrap_or((0, String::new()));
        if &ldigest != digest {
            out.push(Finding {
                kind: FindingKind::ViewDigestMismatch,
                order_id: None,
                partition: None,
                offset: None,
                detail: format!(
                    "view {view}: the node has {lrows} rows (digest {}), a replay builds {rows} rows (digest {})",
                    &ldigest.get(..16).unwrap_or(&ldigest),
                    &digest.get(..16).unwrap_or(digest)
                ),
            });
        }
    }
    out
}

/// Digests of both sides of the view comparison.
#[derive(Debug, Clone, Serialize)]
pub struct ViewsCompared {
    pub live_total: String,
    pub replay_total: String,
    pub replay_events_per_sec: f64,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub topic: String,
    pub partitions: usize,
    pub records: u64,
    pub orders: usize,
    pub erased_orders: usize,
    pub views: Option<ViewsCompared>,
    pub findings: Vec<Finding>,
    pub elapsed_ms: u64,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// The human form: one line per finding, then a summary.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for f in &self.findings {
            s.push_str(&format!("FINDING {f}\n"));
        }
        if let Some(v) = &self.views {
            s.push_str(&format!(
                "views: node {} / replay {} ({:.0} events/s replayed)\n",
                &v.live_total[..16.min(v.live_total.len())],
                &v.replay_total[..16.min(v.replay_total.len())],
                v.replay_events_per_sec
            ));
        }
        s.push_str(&format!(
            "verified {} records of {} orders ({} erased) in {} partitions of {} in {:.1} s: {}\n",
            self.records,
            self.orders,
            self.erased_orders,
            self.partitions,
            self.topic,
            self.elapsed_ms as f64 / 1000.0,
            if self.findings.is_empty() {
                "no findings".to_owned()
            } else {
                format!("{} findings", self.findings.len())
            }
        ));
        s
    }
}

/// Options of `verify`.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Compare the node's views with a replay (needs a full rebuild).
    pub views: bool,
    /// How long the replay may take to catch up.
    pub replay_timeout: Duration,
    /// How long a live node's views may take to reach the offsets the replay
    /// reached before they are compared (its projector trails its writes
    /// by milliseconds).
    pub node_catch_up: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            views: true,
            replay_timeout: Duration::from_secs(600),
            node_catch_up: Duration::from_secs(10),
        }
    }
}

/// Takes `snapshot`s of the node's views until their offsets reach
/// `target` in every partition, or `limit` has passed; returns the last.
/// A node that is merely a moment behind a replay is then compared at the
/// replay's offsets, not reported as behind.
pub fn catch_up<S, E>(
    target: &BTreeMap<u32, u64>,
    limit: Duration,
    pause: Duration,
    mut snapshot: impl FnMut() -> Result<(S, BTreeMap<u32, u64>), E>,
) -> Result<(S, BTreeMap<u32, u64>), E> {
    let deadline = Instant::now() + limit;
    loop {
        let (s, offsets) = snapshot()?;
        let behind = target
            .iter()
            .any(|(p, t)| offsets.get(p).copied().unwrap_or(0) < *t);
        if !behind || Instant::now() >= deadline {
            return Ok((s, offsets));
        }
        std::thread::sleep(pause);
    }
}

/// Reads the whole log, checks it, and checks the node against it.
pub fn run(
    source: &Source,
    node: &NodeData,
    options: &VerifyOptions,
) -> Result<VerifyReport, AuditError> {
    let started = Instant::now();
    // The node's log keys (its KEK's, and any retired ones it stored).
    let source = &Source {
        log_keys: Some(node.vault.log_keys()),
        ..source.clone()
    };
    let partitions = log::partition_count(source)?;
    let mut checker = ChainChecker::new(partitions, source.log_keys.clone());
    log::scan(source, None, |r| {
        checker.observe(r.partition, r.offset, r.key.as_deref(), &r.value);
    })?;
    let mut findings = std::mem::take(&mut checker.findings);
    findings.extend(check_keys(&checker.orders, |id| node.key(id)));
    let mut views = None;
    if options.views {
        let dir = tempfile::Builder::new()
            .prefix("orderlog-verify-replay-")
            .tempdir()
            .map_err(|source| AuditError::Io {
                path: std::env::temp_dir().display().to_string(),
                source,
            })?;
        let replayed = replay::run(source, dir.path(), options.replay_timeout, |_| {})?;
        let replay_store = Store::open_read_only(dir.path())?;
        let replay_offsets = view_offsets(&replay_store)?;
        // The node as it was opened first; if it is behind the replay, as
        // it is again read from its directory (a read-only open sees the
        // state at that open), for a bounded time.
        let mut first = true;
        let (live, live_offsets) = catch_up(
            &replay_offsets,
            options.node_catch_up,
            Duration::from_millis(200),
            || -> Result<_, AuditError> {
                let fresh;
                let store = if std::mem::take(&mut first) {
                    node.store()
                } else {
                    fresh = Store::open_read_only(node.store().path())?;
                    &fresh
                };
                Ok((
                    crate::projections::query::digest(store)?,
                    view_offsets(store)?,
                ))
            },
        )?;
        let compared = compare_views(&live, &live_offsets, &replayed.digest, &replay_offsets);
        let behind = compared.iter().any(|f| f.kind == FindingKind::ViewsBehind);
        findings.extend(compared);
        if !behind {
            // The index a replay's views call for under the node's keys,
            // against the node's as it stands now.
            let (want, _) = crate::projections::subjects::expected(&replay_store, &node.vault)?;
            let now = Store::open_read_only(node.store().path())?;
            let (have, queued) = crate::projections::subjects::stored(&now)?;
            findings.extend(compare_index(&want, &have, queued));
        }
        views = Some(ViewsCompared {
            live_total: live.total,
            replay_total: replayed.digest.total.clone(),
            replay_events_per_sec: replayed.events_per_sec(),
        });
    }
    findings.sort_by(|a, b| {
        (a.partition, a.offset, a.kind, a.order_id).cmp(&(
            b.partition,
            b.offset,
            b.kind,
            b.order_id,
        ))
    });
    for f in &findings {
        let order_id = f.order_id.map(|o| o.to_string()).unwrap_or_default();
        let (partition, offset) = (f.partition.unwrap_or(-1), f.offset.unwrap_or(-1));
        tracing::warn!(kind = f.kind.as_str(), %order_id, partition, offset, "Audit finding.");
    }
    Ok(VerifyReport {
        topic: source.topic.clone(),
        partitions,
        records: checker.records,
        orders: checker.orders.len(),
        erased_orders: checker
            .orders
            .values()
            .filter(|t| !t.erased.is_empty())
            .count(),
        views,
        findings,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

#[cfg(test)]
#[path = "verify_tests.rs"]
pub(crate) mod tests;
