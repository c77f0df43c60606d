//! What commands are decided against: per order, its version, facts, last
//! hash and key id, kept in RocksDB (`order_state`, `order_placed`) and
//! maintained from the log like a view; and the idempotency keys, with an
//! expiry (`idempotency`). Row layouts are drawn in [`crate::store`].
//!
//! The fold here ([`StateFolder`]) is the one way a record of the log becomes
//! state: the projector runs it in the same WriteBatch as the views and their
//! offsets; the writer runs it over a partition's tail when it takes the
//! partition (start, or after a failed produce) and stores the effects of its
//! own acknowledged batches with the same codecs. Nothing here holds
//! plaintext personal data: the placement is the sealed record as it is in
//! the log.

use foldhash::{HashMap, HashMapExt};

use rocksdb::{MergeOperands, WriteBatch};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::crypto::KeyId;
use crate::domain::validation::{Item, MerchantId, Money, OrderNumber};
use crate::domain::{CancelReason, Event, FieldClass, OrderFacts, Party, State, apply};
use crate::events::chain::Link;
use crate::events::{self, Envelope, RecordHash};
use crate::store::schema::{Idempotency, OrderPlacements, OrderStates, StateFormat, ViewOffsets};
use crate::store::{CF_IDEMPOTENCY, CF_ORDER_PLACED, CF_ORDER_STATE, Store, StoreError};

/// Format byte of `order_placed` rows, and of `order_state` rows written
/// before legal holds (read still).
const STATE_FORMAT: u8 = 1;
/// Format byte of `order_state` rows written now: format 1 with the legal
/// hold and the time of cancellation.
const STATE_FORMAT_V2: u8 = 2;
/// Default expiry of an idempotency key.
pub const DEFAULT_IDEMPOTENCY_TTL: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

/// One order as the writer knows it: enough to decide the next command and
/// chain the next event. (Its sealed placement is a row of its own, read
/// only by queries.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderRecord {
    pub state: State,
    pub last_hash: RecordHash,
    pub key_id: Option<KeyId>,
    pub placed_at_ms: i64,
    pub updated_at_ms: i64,
    /// Offset of the order's latest event (-1 while not yet acknowledged).
    pub last_offset: i64,
    /// When the order was cancelled (for retention). A row stored before
    /// this was kept says its last change instead: never earlier.
    pub cancelled_at_ms: Option<i64>,
    /// Why the order's latest erasure happened.
    pub erased_for: Option<crate::domain::ErasureReason>,
}

/// What folding one record did to its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absorbed {
    /// The record was the order's next event.
    Applied,
    /// The order is already at or past this record's sequence: the record
    /// was folded before (by the writer, or an earlier run), or it is a stale
    /// duplicate. Nothing changes.
    Already,
    /// The record does not continue the order's chain (a gap, or a hash that
    /// does not match): left to audit.
    Broken,
}

impl OrderRecord {
    /// Folds one stored record into the order.
    pub fn absorb(&mut self, env: &Envelope, bytes: &[u8], offset: i64) -> Absorbed {
        let event = events::public_event(env).ok();
        self.absorb_decoded(env, event.as_ref(), || events::record_hash(bytes), offset)
    }

    /// [`OrderRecord::absorb`] for a record already decoded: `event` is its
    /// public event (`None`: it did not convert), `hash` gives its hash.
    pub fn absorb_decoded(
        &mut self,
        env: &Envelope,
        event: Option<&Event>,
        hash: impl FnOnce() -> RecordHash,
        offset: i64,
    ) -> Absorbed {
        let Some(event) = event else {
            return Absorbed::Broken;
        };
        let head = events::chain::Head {
            sequence: self.state.version,
            hash: self.last_hash,
        };
        let placement = matches!(event, Event::OrderPlaced(_));
        match events::chain::link(head, env.meta.sequence, &env.meta.prev_hash, placement) {
            Link::Next => {}
            Link::Repeat => return Absorbed::Already,
            Link::Gap { .. } | Link::WrongHash | Link::Misplaced => return Absorbed::Broken,
        }
        if matches!(event, Event::OrderPlaced(_)) {
            self.key_id = Some(env.meta.key_id);
            self.placed_at_ms = env.meta.occurred_at_ms;
        }
        match event {
            Event::OrderCancelled { .. } if self.cancelled_at_ms.is_none() => {
                self.cancelled_at_ms = Some(env.meta.occurred_at_ms);
            }
            Event::OrderErased { reason, .. } => self.erased_for = Some(*reason),
            _ => {}
        }
        self.state = apply(std::mem::take(&mut self.state), event);
        self.last_hash = hash();
        self.updated_at_ms = env.meta.occurred_at_ms;
        self.last_offset = offset;
        Absorbed::Applied
    }

    /// True once every class of the order is erased: its placement row goes.
    pub fn fully_erased(&self) -> bool {
        self.state.order.as_ref().is_some_and(|o| o.fully_erased)
    }
}

/// The stored form of an [`OrderRecord`] (format 1): the domain's types stay
/// free to change; a change here is a new format.
#[derive(Serialize, Deserialize)]
struct RowV1 {
    version: u64,
    order: Option<FactsV1>,
    last_hash: RecordHash,
    key_id: Option<KeyId>,
    placed_at_ms: i64,
    updated_at_ms: i64,
    last_offset: i64,
}

#[derive(Serialize, Deserialize)]
struct FactsV1 {
    order_number: OrderNumber,
    merchant_id: MerchantId,
    items: Vec<Item>,
    amount: Money,
    real_name: bool,
    has_contact: bool,
    cancelled: Option<CancelReason>,
    erased: std::collections::BTreeSet<FieldClass>,
    fully_erased: bool,
    shares: Vec<ShareV1>,
}

/// Format 2: format 1, then the hold and the time of cancellation.
#[derive(Serialize, Deserialize)]
struct RowV2 {
    row: RowV1,
    /// Reason and end of the hold last placed and not released.
    hold: Option<(crate::domain::validation::HoldReason, Option<i64>)>,
    cancelled_at_ms: Option<i64>,
    erased_for: Option<crate::domain::ErasureReason>,
}

impl From<&OrderRecord> for RowV2 {
    fn from(r: &OrderRecord) -> Self {
        RowV2 {
            row: r.into(),
            hold: r
                .state
                .order
                .as_ref()
                .and_then(|o| o.hold.as_ref())
                .map(|h| (h.reason.clone(), h.until_ms)),
            cancelled_at_ms: r.cancelled_at_ms,
            erased_for: r.erased_for,
        }
    }
}

impl From<RowV2> for OrderRecord {
    fn from(r: RowV2) -> Self {
        let mut rec: OrderRecord = r.row.into();
        if let Some(o) = rec.state.order.as_mut() {
            o.hold = r
                .hold
                .map(|(reason, until_ms)| crate::domain::Hold { reason, until_ms });
        }
        rec.cancelled_at_ms = r.cancelled_at_ms;
        rec.erased_for = r.erased_for;
        rec
    }
}

/// A share as the row holds it: the party in its stored form.
#[derive(Serialize, Deserialize)]
struct ShareV1(
    #[serde(with = "crate::store::schema::stored_party")] Party,
    std::collections::BTreeSet<FieldClass>,
);

impl From<&OrderRecord> for RowV1 {
    fn from(r: &OrderRecord) -> Self {
        RowV1 {
            version: r.state.version,
            order: r.state.order.as_ref().map(|o| FactsV1 {
                order_number: o.order_number.clone(),
                merchant_id: o.merchant_id.clone(),
                items: o.items.clone(),
                amount: o.amount,
                real_name: o.real_name,
                has_contact: o.has_contact,
                cancelled: o.cancelled,
                erased: o.erased.clone(),
                fully_erased: o.fully_erased,
                shares: o
                    .shares
                    .iter()
                    .map(|(p, c)| ShareV1(p.clone(), c.clone()))
                    .collect(),
            }),
            last_hash: r.last_hash,
            key_id: r.key_id,
            placed_at_ms: r.placed_at_ms,
            updated_at_ms: r.updated_at_ms,
            last_offset: r.last_offset,
        }
    }
}

impl From<RowV1> for OrderRecord {
    fn from(r: RowV1) -> Self {
        OrderRecord {
            state: State {
                version: r.version,
                order: r.order.map(|o| OrderFacts {
                    order_number: o.order_number,
                    merchant_id: o.merchant_id,
                    items: o.items,
                    amount: o.amount,
                    real_name: o.real_name,
                    has_contact: o.has_contact,
                    cancelled: o.cancelled,
                    erased: o.erased,
                    fully_erased: o.fully_erased,
                    shares: o.shares.into_iter().map(|ShareV1(p, c)| (p, c)).collect(),
                    hold: None,
                }),
            },
            last_hash: r.last_hash,
            key_id: r.key_id,
            placed_at_ms: r.placed_at_ms,
            updated_at_ms: r.updated_at_ms,
            last_offset: r.last_offset,
            cancelled_at_ms: None,
            erased_for: None,
        }
    }
}

/// Encodes an `order_state` row: format, version (big-endian, so the merge
/// operator compares versions without decoding), then the record.
pub fn encode_state(rec: &OrderRecord) -> Vec<u8> {
    let body = crate::store::encode_value(&RowV2::from(rec));
    let mut v = Vec::with_capacity(9 + body.len());
    v.push(STATE_FORMAT_V2);
    v.extend_from_slice(&rec.state.version.to_be_bytes());
    v.extend_from_slice(&body);
    v
}

pub fn decode_state(bytes: &[u8]) -> Result<OrderRecord, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        cf: CF_ORDER_STATE,
        reason,
    };
    let rec: OrderRecord = match bytes.first() {
        Some(&STATE_FORMAT) if bytes.len() >= 9 => {
            let mut rec: OrderRecord =
                crate::store::decode_value::<RowV1>(CF_ORDER_STATE, &bytes[9..])?.into();
            if rec
                .state
                .order
                .as_ref()
                .is_some_and(|o| o.cancelled.is_some())
            {
                rec.cancelled_at_ms = Some(rec.updated_at_ms);
            }
            rec
        }
        Some(&STATE_FORMAT_V2) if bytes.len() >= 9 => {
            crate::store::decode_value::<RowV2>(CF_ORDER_STATE, &bytes[9..])?.into()
        }
        Some(f) => return Err(corrupt(format!("unknown row format {f}"))),
        None => return Err(corrupt("empty row".into())),
    };
    if rec.state.version.to_be_bytes() != bytes[1..9] {
        return Err(corrupt("version prefix does not match the row".into()));
    }
    Ok(rec)
}

fn row_version(bytes: &[u8]) -> Option<u64> {
    bytes
        .get(1..9)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

/// The `order_state` merge operator: of the stored row and the operands, the
/// row with the highest version wins (equal versions are the same row, both
/// derived from the same event). Never fails: a row that cannot be read
/// loses to any that can.
pub fn merge_highest_version(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &MergeOperands,
) -> Option<Vec<u8>> {
    let mut best: Option<(u64, &[u8])> = existing.and_then(|e| row_version(e).map(|v| (v, e)));
    for op in operands {
        if let Some(v) = row_version(op)
            && best.is_none_or(|(b, _)| v >= b)
        {
            best = Some((v, op));
        }
    }
    best.map(|(_, row)| row.to_vec())
        .or_else(|| existing.map(<[u8]>::to_vec))
}

/// The outcome of an idempotent request, kept so a retry gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentOutcome {
    pub request_digest: [u8; 32],
    pub order_id: Uuid,
    pub version: u64,
}

const IDEMPOTENCY_ROW: usize = 8 + 32 + 16 + 8;

/// An `idempotency` row: the outcome and when it expires (Unix ms).
/// Stored `expiry (i64 BE) | request digest | order id | version (u64 BE)`,
/// the expiry first for the compaction filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOutcome {
    pub outcome: IdempotentOutcome,
    pub expires_at_ms: i64,
}

impl StoredOutcome {
    pub fn encode(&self) -> [u8; IDEMPOTENCY_ROW] {
        let mut v = [0u8; IDEMPOTENCY_ROW];
        v[..8].copy_from_slice(&self.expires_at_ms.to_be_bytes());
        v[8..40].copy_from_slice(&self.outcome.request_digest);
        v[40..56].copy_from_slice(self.outcome.order_id.as_bytes());
        v[56..].copy_from_slice(&self.outcome.version.to_be_bytes());
        v
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let Ok(row) = <&[u8; IDEMPOTENCY_ROW]>::try_from(bytes) else {
            return Err(StoreError::Corrupt {
                cf: CF_IDEMPOTENCY,
                reason: format!("{} bytes, not {IDEMPOTENCY_ROW}", bytes.len()),
            });
        };
        Ok(Self {
            expires_at_ms: i64::from_be_bytes(row[..8].try_into().expect("8 bytes")),
            outcome: IdempotentOutcome {
                request_digest: row[8..40].try_into().expect("32 bytes"),
                order_id: Uuid::from_bytes(row[40..56].try_into().expect("16 bytes")),
                version: u64::from_be_bytes(row[56..].try_into().expect("8 bytes")),
            },
        })
    }
}

/// True when an `idempotency` row's expiry has passed (the compaction
/// filter's test). A row too short to hold one is kept for audit to see.
pub fn idempotency_expired(row: &[u8], now_ms: i64) -> bool {
    row.get(..8)
        .is_some_and(|b| i64::from_be_bytes(b.try_into().expect("8 bytes")) <= now_ms)
}

/// An order's stored state.
pub fn load_order(store: &Store, order_id: &Uuid) -> Result<Option<OrderRecord>, StoreError> {
    store.table::<OrderStates>().get(order_id)
}

/// An `order_placed` row: the version of the order it is true from (1 for
/// the placement, the erasure's for the marker that replaces it), then the
/// `OrderPlaced` record (empty in the marker). The column family keeps the
/// highest version, as `order_state` does, so a placement staged from a
/// stale copy of the order can never outlive its erasure. Stored
/// `format (1) | version (u64 BE) | record`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedRow {
    pub version: u64,
    pub record: Vec<u8>,
}

impl PlacedRow {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(9 + self.record.len());
        v.push(STATE_FORMAT);
        v.extend_from_slice(&self.version.to_be_bytes());
        v.extend_from_slice(&self.record);
        v
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            cf: CF_ORDER_PLACED,
            reason,
        };
        match bytes.first() {
            Some(&STATE_FORMAT) if bytes.len() >= 9 => Ok(Self {
                version: u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes")),
                record: bytes[9..].to_vec(),
            }),
            Some(f) => Err(corrupt(format!("unknown row format {f}"))),
            None => Err(corrupt("empty row".into())),
        }
    }
}

/// An order's sealed `OrderPlaced` record, while the order is not fully erased.
pub fn load_placed(store: &Store, order_id: &Uuid) -> Result<Option<Envelope>, StoreError> {
    let Some(row) = store.table::<OrderPlacements>().get(order_id)? else {
        return Ok(None);
    };
    if row.record.is_empty() {
        return Ok(None); // erased
    }
    events::decode(&row.record)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            cf: CF_ORDER_PLACED,
            reason: e.to_string(),
        })
}

/// One point read: the stored answer to an idempotency key, if it has not expired.
pub fn lookup_idempotency(
    store: &Store,
    key: &[u8; 32],
    now_ms: i64,
) -> Result<Option<IdempotentOutcome>, StoreError> {
    Ok(store
        .table::<Idempotency>()
        .get(key)?
        .filter(|row| row.expires_at_ms > now_ms)
        .map(|row| row.outcome))
}

/// Prepares a data directory before anything folds into it: a new one (no
/// view offsets yet) is marked as holding the order state, which the
/// projector then builds from offset 0 with the views. Returns whether the
/// order state covers the log up to the views' checkpoint; false for a data
/// directory of an earlier version, whose writers must build it from 0.
pub fn prepare(store: &Store) -> Result<bool, StoreError> {
    if store.table::<StateFormat>().get(&())? == Some(STATE_FORMAT) {
        return Ok(true);
    }
    let fresh = store.table::<ViewOffsets>().is_empty()?;
    if fresh {
        mark_built(store)?;
    }
    Ok(fresh)
}

/// Records that the order state covers the log from its start (every
/// partition caught up from offset 0, or from a checkpoint of a state that did).
pub fn mark_built(store: &Store) -> Result<(), StoreError> {
    store
        .table::<StateFormat>()
        .put_now(&(), &STATE_FORMAT, &rocksdb::WriteOptions::default())
}

/// Adds an order's changed rows to `batch`: its state, and its placement
/// (`placed`: the `OrderPlaced` record, when this change placed it), replaced
/// by an empty marker once the order is fully erased. Both are merged: the
/// highest version wins, whichever writer's batch lands last.
pub fn stage_order(
    store: &Store,
    batch: &mut WriteBatch,
    order_id: &Uuid,
    rec: &OrderRecord,
    placed: Option<&[u8]>,
) {
    store.table::<OrderStates>().merge(batch, order_id, rec);
    let placements = store.table::<OrderPlacements>();
    if rec.fully_erased() {
        let marker = PlacedRow {
            version: rec.state.version,
            record: Vec::new(),
        };
        placements.merge(batch, order_id, &marker);
    } else if let Some(bytes) = placed {
        let row = PlacedRow {
            version: 1,
            record: bytes.to_vec(),
        };
        placements.merge(batch, order_id, &row);
    }
}

/// Adds an idempotency row to `batch`.
pub fn stage_idempotency(
    store: &Store,
    batch: &mut WriteBatch,
    key: &[u8; 32],
    outcome: &IdempotentOutcome,
    expires_at_ms: i64,
) {
    let row = StoredOutcome {
        outcome: outcome.clone(),
        expires_at_ms,
    };
    store.table::<Idempotency>().put(batch, key, &row);
}

/// What one folded record was, for the caller's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folded {
    pub order_id: Uuid,
    pub absorbed: Absorbed,
    /// The order is erased (some classes or all) after this record.
    pub erased: bool,
}

/// Folds records of the log into order-state rows. Orders touched since the
/// last [`StateFolder::stage`] or [`StateFolder::take_in_flight`] are kept in
/// memory (a batch's worth), and those of a batch in flight until it is
/// written; the rest are read from the store.
#[derive(Debug)]
pub struct StateFolder {
    store: Store,
    ttl_ms: i64,
    touched: HashMap<Uuid, (OrderRecord, Option<Vec<u8>>)>,
    /// Stored rows read ahead by [`StateFolder::prefetch`], not folded yet.
    fetched: HashMap<Uuid, OrderRecord>,
    /// Rows of the last [`StateFolder::take_in_flight`], read instead of
    /// the store's until [`StateFolder::release_staged`] says their batch
    /// is written.
    staged: Option<std::sync::Arc<StagedRows>>,
    keys: Vec<([u8; 32], IdempotentOutcome, i64)>,
}

/// The rows of the orders folded for one batch (order state, sealed
/// placement, idempotency keys), not yet encoded: the projector's writer
/// thread encodes them into the batch ([`StagedRows::stage`]) while the
/// folder reads them for the next one.
pub struct StagedRows {
    rows: HashMap<Uuid, (OrderRecord, Option<Vec<u8>>)>,
    keys: Vec<([u8; 32], IdempotentOutcome, i64)>,
    now_ms: i64,
}

impl std::fmt::Debug for StagedRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedRows")
            .field("orders", &self.rows.len())
            .field("idempotency_keys", &self.keys.len())
            .finish()
    }
}

impl StagedRows {
    /// Adds the rows to `batch` (idempotency keys expired by `now_ms` are
    /// left out).
    pub fn stage(&self, store: &Store, batch: &mut WriteBatch) {
        for (id, (rec, placed)) in &self.rows {
            stage_order(store, batch, id, rec, placed.as_deref());
        }
        for (key, outcome, expires) in &self.keys {
            if *expires > self.now_ms {
                stage_idempotency(store, batch, key, outcome, *expires);
            }
        }
    }
}

impl StateFolder {
    pub fn new(store: Store, idempotency_ttl: std::time::Duration) -> Self {
        Self {
            store,
            ttl_ms: idempotency_ttl.as_millis().min(i64::MAX as u128) as i64,
            touched: HashMap::new(),
            fetched: HashMap::new(),
            staged: None,
            keys: Vec::new(),
        }
    }

    /// Reads the stored rows of `ids` not yet in memory with one multi-get,
    /// before a batch of their records is folded.
    pub fn prefetch(&mut self, ids: &[Uuid]) -> Result<(), StoreError> {
        let missing: Vec<&Uuid> = ids
            .iter()
            .filter(|id| {
                !self.touched.contains_key(*id)
                    && !self.fetched.contains_key(*id)
                    && self.staged(id).is_none()
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let missing: Vec<Uuid> = missing.into_iter().copied().collect();
        let rows = self
            .store
            .table::<OrderStates>()
            .get_many(&missing, false)?;
        for (id, row) in missing.into_iter().zip(rows) {
            self.fetched.insert(id, row.unwrap_or_default());
        }
        Ok(())
    }

    /// The batch of the last [`StateFolder::take_in_flight`] is written (or
    /// dropped): its rows are read from the store again.
    pub fn release_staged(&mut self) {
        self.staged = None;
    }

    /// The row of `order_id` in the batch in flight, if it has one.
    fn staged(&self, order_id: &Uuid) -> Option<&OrderRecord> {
        self.staged.as_ref()?.rows.get(order_id).map(|(rec, _)| rec)
    }

    /// Forgets the rows read ahead and not folded (they may change on disk).
    pub fn clear_prefetched(&mut self) {
        self.fetched.clear();
    }

    /// The order as folded so far.
    pub fn order(&mut self, order_id: &Uuid) -> Result<&mut OrderRecord, StoreError> {
        if !self.touched.contains_key(order_id) {
            let rec = match self
                .staged(order_id)
                .cloned()
                .or_else(|| self.fetched.remove(order_id))
            {
                Some(rec) => rec,
                None => load_order(&self.store, order_id)?.unwrap_or_default(),
            };
            self.touched.insert(*order_id, (rec, None));
        }
        Ok(&mut self.touched.get_mut(order_id).expect("just inserted").0)
    }

    /// Folds one decoded record (`bytes` as in the log, `idempotency` from
    /// its headers). A placement that is already folded is still staged
    /// again (idempotent), and an erasure always removes the placement: the
    /// writer may have stored an order's later events before the projector
    /// reaches its earlier ones.
    pub fn fold(
        &mut self,
        env: &Envelope,
        bytes: &[u8],
        offset: i64,
        idempotency: Option<([u8; 32], [u8; 32])>,
    ) -> Result<Folded, StoreError> {
        let event = events::public_event(env).ok();
        self.fold_decoded(
            env,
            event.as_ref(),
            events::record_hash(bytes),
            bytes,
            offset,
            idempotency,
        )
    }

    /// [`StateFolder::fold`] for a record already decoded: `event` is its
    /// public event (`None`: it did not convert), `hash` its record hash.
    pub fn fold_decoded(
        &mut self,
        env: &Envelope,
        event: Option<&Event>,
        hash: RecordHash,
        bytes: &[u8],
        offset: i64,
        idempotency: Option<([u8; 32], [u8; 32])>,
    ) -> Result<Folded, StoreError> {
        let order_id = env.meta.order_id;
        let ttl = self.ttl_ms;
        let placed_event = env.meta.sequence == 1;
        let entry = {
            self.order(&order_id)?;
            self.touched.get_mut(&order_id).expect("loaded above")
        };
        let mut absorbed = entry.0.absorb_decoded(env, event, || hash, offset);
        if absorbed == Absorbed::Broken && env.meta.sequence > entry.0.state.version + 1 {
            // A gap: the order may have been stored past this copy meanwhile
            // (by the writer, or a catch-up beside this fold). Read it again.
            if let Some(fresh) = load_order(&self.store, &order_id)?
                && fresh.state.version > entry.0.state.version
            {
                entry.0 = fresh;
                absorbed = entry.0.absorb_decoded(env, event, || hash, offset);
            }
        }
        if absorbed == Absorbed::Applied {
            if placed_event {
                entry.1 = Some(bytes.to_vec());
            }
            if let Some((key, digest)) = idempotency {
                let expires = env.meta.occurred_at_ms.saturating_add(ttl);
                self.keys.push((
                    key,
                    IdempotentOutcome {
                        request_digest: digest,
                        order_id,
                        version: entry.0.state.version,
                    },
                    expires,
                ));
            }
        }
        let erased = entry
            .0
            .state
            .order
            .as_ref()
            .is_some_and(|o| !o.erased.is_empty());
        Ok(Folded {
            order_id,
            absorbed,
            erased,
        })
    }

    /// Adds the rows of every order folded since the last call to `batch`,
    /// and forgets them (for a caller that writes the batch before it folds
    /// again; a batch in flight is [`StateFolder::take_in_flight`]'s).
    pub fn stage(&mut self, batch: &mut WriteBatch, now_ms: i64) {
        self.take(now_ms).stage(&self.store, batch);
    }

    /// The rows of every order folded since the last call, for a batch
    /// written while the next is folded: staged by the writer, and read
    /// instead of the store's until [`StateFolder::release_staged`].
    pub fn take_in_flight(&mut self, now_ms: i64) -> std::sync::Arc<StagedRows> {
        let rows = std::sync::Arc::new(self.take(now_ms));
        self.staged = Some(rows.clone());
        rows
    }

    fn take(&mut self, now_ms: i64) -> StagedRows {
        let capacity = self.touched.len();
        let mut rows = std::mem::replace(&mut self.touched, HashMap::with_capacity(capacity));
        rows.retain(|_, (rec, _)| rec.state.version > 0);
        StagedRows {
            rows,
            keys: std::mem::take(&mut self.keys),
            now_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures;
    use crate::domain::validation::ProviderId;
    use crate::events::EventMeta;

    fn placed_record(order_id: Uuid) -> (Envelope, Vec<u8>) {
        let key = crate::crypto::OrderKey::generate();
        let event = crate::domain::decide(
            &State::default(),
            crate::domain::Command::PlaceOrder(fixtures::new_order(1, false)),
        )
        .unwrap()
        .remove(0);
        let meta = EventMeta {
            event_id: Uuid::now_v7(),
            order_id,
            sequence: 1,
            occurred_at_ms: 1_000,
            key_id: key.id(),
            prev_hash: [0; 32],
        };
        let env = events::seal_event(&event, meta, Some(&key)).unwrap();
        let bytes = events::encode(&env, &events::codec::test_keys());
        (env, bytes)
    }

    fn cancelled_record(order_id: Uuid, prev: &[u8], key_id: KeyId) -> (Envelope, Vec<u8>) {
        let event = Event::OrderCancelled {
            reason: crate::domain::CancelReason::CustomerRequest,
        };
        let meta = EventMeta {
            event_id: Uuid::now_v7(),
            order_id,
            sequence: 2,
            occurred_at_ms: 2_000,
            key_id,
            prev_hash: events::record_hash(prev),
        };
        let env = events::seal_event(&event, meta, None).unwrap();
        let bytes = events::encode(&env, &events::codec::test_keys());
        (env, bytes)
    }

    #[test]
    fn absorb_applies_the_next_event_only() {
        let id = Uuid::now_v7();
        let (p, pb) = placed_record(id);
        let (c, cb) = cancelled_record(id, &pb, p.meta.key_id);
        let mut rec = OrderRecord::default();
        // A cancellation before the placement: a gap, left to audit.
        assert_eq!(rec.absorb(&c, &cb, 1), Absorbed::Broken);
        assert_eq!(rec.state.version, 0);
        assert_eq!(rec.absorb(&p, &pb, 0), Absorbed::Applied);
        assert_eq!(
            (rec.state.version, rec.placed_at_ms, rec.last_offset),
            (1, 1_000, 0)
        );
        assert_eq!(rec.absorb(&p, &pb, 0), Absorbed::Already);
        // A second placement as event 2, chained on the first: misplaced.
        let mut again = p.clone();
        again.meta.sequence = 2;
        again.meta.prev_hash = events::record_hash(&pb);
        assert_eq!(rec.absorb(&again, &pb, 1), Absorbed::Broken);
        assert_eq!(rec.absorb(&c, &cb, 1), Absorbed::Applied);
        assert_eq!(
            (rec.state.version, rec.cancelled_at_ms, rec.updated_at_ms),
            (2, Some(2_000), 2_000)
        );
        assert_eq!(rec.last_hash, events::record_hash(&cb));
    }

    #[test]
    fn a_state_row_round_trips_and_carries_its_version_in_front() {
        let id = Uuid::now_v7();
        let (env, bytes) = placed_record(id);
        let mut rec = OrderRecord::default();
        assert_eq!(rec.absorb(&env, &bytes, 7), Absorbed::Applied);
        // Every kind of fact: shares with both kinds of party, a cancel, an
        // erased class.
        let facts = rec.state.order.as_mut().unwrap();
        facts.shares.insert(
            Party::Logistics(ProviderId::parse("p", "sf-express").unwrap()),
            [FieldClass::Shipping].into(),
        );
        facts.shares.insert(
            Party::Merchant(facts.merchant_id.clone()),
            [FieldClass::Contact, FieldClass::Shipping].into(),
        );
        facts.cancelled = Some(CancelReason::OutOfStock);
        facts.erased.insert(FieldClass::Identity);
        let row = encode_state(&rec);
        assert_eq!(row[0], STATE_FORMAT_V2);
        assert_eq!(row_version(&row), Some(1));
        assert_eq!(decode_state(&row).unwrap(), rec);
        let mut bad = row.clone();
        bad[0] = 9;
        assert!(
            decode_state(&bad)
                .unwrap_err()
                .to_string()
                .contains("format 9")
        );
        let mut lying = row;
        lying[8] = 2;
        assert!(
            decode_state(&lying).is_err(),
            "a prefix that lies is refused"
        );
    }

    /// A store and one placed order: its record, and its state at version 1.
    struct Placed {
        _dir: tempfile::TempDir,
        store: Store,
        id: Uuid,
        env: Envelope,
        bytes: Vec<u8>,
        v1: OrderRecord,
    }

    fn placed_in_a_store() -> Placed {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = Uuid::now_v7();
        let (env, bytes) = placed_record(id);
        let mut v1 = OrderRecord::default();
        assert_eq!(v1.absorb(&env, &bytes, 0), Absorbed::Applied);
        Placed {
            _dir: dir,
            store,
            id,
            env,
            bytes,
            v1,
        }
    }

    #[test]
    fn the_merge_keeps_the_highest_version_in_any_order() {
        let Placed {
            _dir,
            store,
            id,
            env: p,
            bytes: pb,
            v1,
        } = placed_in_a_store();
        let (c, cb) = cancelled_record(id, &pb, p.meta.key_id);
        let mut v2 = v1.clone();
        assert_eq!(v2.absorb(&c, &cb, 1), Absorbed::Applied);
        // The writer stored version 2; a lagging projector then merges 1.
        let states = store.table::<OrderStates>();
        for rec in [&v2, &v1] {
            let mut b = WriteBatch::default();
            states.merge(&mut b, &id, rec);
            store.db().write(b).unwrap();
        }
        assert_eq!(load_order(&store, &id).unwrap().unwrap(), v2);
        let cf = store.cf(CF_ORDER_STATE);
        // Also once compacted into one value.
        store
            .db()
            .compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        assert_eq!(load_order(&store, &id).unwrap().unwrap(), v2);
    }

    #[test]
    fn a_fold_skips_what_the_order_already_holds_and_flags_broken_chains() {
        let Placed {
            _dir,
            store,
            id,
            env: p,
            bytes: pb,
            ..
        } = placed_in_a_store();
        let (c, cb) = cancelled_record(id, &pb, p.meta.key_id);
        let key = [7u8; 32];
        let mut f = StateFolder::new(store.clone(), DEFAULT_IDEMPOTENCY_TTL);
        assert_eq!(
            f.fold(&p, &pb, 0, Some((key, [1; 32]))).unwrap().absorbed,
            Absorbed::Applied
        );
        assert_eq!(
            f.fold(&p, &pb, 0, None).unwrap().absorbed,
            Absorbed::Already
        );
        let mut batch = WriteBatch::default();
        f.stage(&mut batch, 5_000);
        store.db().write(batch).unwrap();
        assert_eq!(load_order(&store, &id).unwrap().unwrap().state.version, 1);
        assert!(load_placed(&store, &id).unwrap().is_some());
        let got = lookup_idempotency(&store, &key, 5_000).unwrap().unwrap();
        assert_eq!((got.order_id, got.version), (id, 1));
        // Expired a week after the event, whatever is on disk.
        let week = DEFAULT_IDEMPOTENCY_TTL.as_millis() as i64;
        assert_eq!(
            lookup_idempotency(&store, &key, 1_000 + week).unwrap(),
            None
        );

        // A new folder (a restart) reads the stored order and goes on.
        let mut f = StateFolder::new(store.clone(), DEFAULT_IDEMPOTENCY_TTL);
        assert_eq!(
            f.fold(&p, &pb, 0, None).unwrap().absorbed,
            Absorbed::Already
        );
        assert_eq!(
            f.fold(&c, &cb, 1, None).unwrap().absorbed,
            Absorbed::Applied
        );
        // The same sequence again with another hash: a fork, not applied.
        let (other, ob) = placed_record(id);
        let (fork, fb) = cancelled_record(id, &ob, other.meta.key_id);
        let mut rec = load_order(&store, &id).unwrap().unwrap();
        assert_eq!(rec.absorb(&fork, &fb, 2), Absorbed::Broken);
    }

    #[test]
    fn a_late_placement_never_outlives_the_erasure_marker() {
        let Placed {
            _dir,
            store,
            id,
            env: p,
            bytes: pb,
            v1: placed,
        } = placed_in_a_store();
        let mut erased = placed.clone();
        erased.state.version = 3;
        erased.state.order.as_mut().unwrap().fully_erased = true;
        let write = |rec: &OrderRecord, bytes: Option<&[u8]>| {
            let mut b = WriteBatch::default();
            stage_order(&store, &mut b, &id, rec, bytes);
            store.db().write(b).unwrap();
        };
        write(&placed, Some(&pb));
        assert_eq!(load_placed(&store, &id).unwrap().unwrap(), p);
        write(&erased, None);
        // A fold that held a stale copy of the order stages the placement again.
        write(&placed, Some(&pb));
        assert_eq!(load_placed(&store, &id).unwrap(), None);
        let cf = store.cf(CF_ORDER_PLACED);
        store
            .db()
            .compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        assert_eq!(load_placed(&store, &id).unwrap(), None);
        let row = store.table::<OrderPlacements>().get(&id).unwrap().unwrap();
        assert!(
            row.record.is_empty(),
            "only the marker is left, no sealed bytes"
        );
    }

    #[test]
    fn expired_idempotency_rows_are_dropped_by_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let out = IdempotentOutcome {
            request_digest: [2; 32],
            order_id: Uuid::now_v7(),
            version: 1,
        };
        let rows = store.table::<Idempotency>();
        for (key, expires_at_ms) in [([1u8; 32], 1), ([2u8; 32], i64::MAX)] {
            let row = StoredOutcome {
                outcome: out.clone(),
                expires_at_ms,
            };
            rows.put_now(&key, &row, &rocksdb::WriteOptions::default())
                .unwrap();
        }
        let cf = store.cf(CF_IDEMPOTENCY);
        store.db().flush_cf(cf).unwrap();
        store
            .db()
            .compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        assert!(!rows.contains(&[1u8; 32]).unwrap());
        assert!(rows.contains(&[2u8; 32]).unwrap());
    }
}
