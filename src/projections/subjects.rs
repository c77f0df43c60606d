//! The subject index: from a person's identifiers (mobile, email, ID number)
//! to the orders that hold them, so a privacy officer can find, export and
//! erase "everything about me" without an order id.
//!
//! The index is blind: an identifier is normalized (`+86 138 0013 8000` and
//! `13800138000` are one mobile) and kept only as an HMAC-SHA256 under a key
//! derived from the KEK, which only orderlog nodes hold. It lives in RocksDB
//! on every node, never in Kafka, and is rebuilt from the views when the KEK
//! changes (the old HMACs are dropped and purged from disk).
//!
//! ```text
//! subject_index    kind (1) | bucket (2) | order id (16)   -> empty
//! subject_orders   order id (16) | kind (1)                -> blind id (32)
//! subject_pending  order id (16) | sequence (u64 BE)       -> empty
//! ```
//!
//! The blind id lives only in `subject_orders` values, keyed by order id:
//! the erasure's purge compacts them away with the order's other rows (no
//! compaction over the whole index). An index key holds just the first two
//! bytes of the blind id (the bucket a lookup scans, checking each
//! candidate's blind id): RocksDB copies keys where a purge cannot reach
//! them (every SST file's first and last key into the MANIFEST, a manual
//! compaction's range into its LOG), values only into SST files and the
//! WAL, which a purge rewrites and deletes.
//!
//! The projector queues a `subject_pending` row in the batch of every
//! placement and erasure it folds (exactly once, like the views). The
//! [`Indexer`] thread then computes what the order's entries must be (opening
//! the sealed fields with the vault; an order whose key has not reached this
//! node yet waits), writes the difference, and purges removed entries from
//! disk at once: an erased class leaves no HMAC behind. A search first waits
//! for the projector to cover the log as it was when the search came in, then
//! runs a pass itself ([`SubjectIndex::catch_up`]), so it sees every order
//! placed before it.
//!
//! Never here: an identifier in clear, in a row, a log line or an error.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use rocksdb::{WriteBatch, WriteOptions};
use sha2::Sha256;
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{KeyVault, VaultError};
use crate::domain::validation::{Email, IdNumber, Mobile, ValidationError};
use crate::domain::{Event, FieldClass};
use crate::projections::ProjectorStatus;
use crate::shutdown::{self, CancellationToken, Retry, Worker};
use crate::store::schema::{
    OrderStates, SubjectEntry, SubjectIndexKek, SubjectIndexPurging, SubjectIndexRows,
    SubjectOrders, SubjectPending,
};
use crate::store::{CF_SUBJECT_INDEX, CF_SUBJECT_ORDERS, CF_SUBJECT_PENDING, Store, StoreError};

/// HKDF label of the index key (a new KEK gives a new key).
const KEY_LABEL: &str = "orderlog/v3/subject-index";
/// Most pending rows taken in one write.
const PASS_ROWS: usize = 10_000;
const BLIND_LEN: usize = 32;

/// Which identifier of a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Kind {
    Mobile,
    Email,
    IdNumber,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Mobile, Kind::Email, Kind::IdNumber];

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The field class the identifier is sealed in: erasing that class
    /// removes the entry.
    pub fn class(self) -> FieldClass {
        match self {
            Kind::Mobile => FieldClass::Shipping,
            Kind::Email => FieldClass::Contact,
            Kind::IdNumber => FieldClass::Identity,
        }
    }

    pub(crate) fn tag(self) -> u8 {
        match self {
            Kind::Mobile => 1,
            Kind::Email => 2,
            Kind::IdNumber => 3,
        }
    }

    pub(crate) fn from_tag(t: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.tag() == t)
    }
}

/// A person's identifier, normalized. Personal data: its `Debug` prints no
/// value, and the value is zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Identifier {
    kind: Kind,
    value: Zeroizing<String>,
}

impl std::fmt::Debug for Identifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identifier({}, [redacted])", self.kind.as_str())
    }
}

impl Identifier {
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// A mobile number in any usual spelling: spaces, dashes, dots and
    /// brackets are ignored, and a PRC number with its country code (`+86`,
    /// `0086`, `86`) is the same number as without.
    pub fn mobile(raw: &str) -> Result<Self, ValidationError> {
        let mut s: String = raw
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')' | '\u{a0}' | '\t'))
            .collect();
        if let Some(rest) = s.strip_prefix("00") {
            s = format!("+{rest}");
        }
        if s.len() == 13 && s.starts_with("861") && s.bytes().all(|b| b.is_ascii_digit()) {
            s.insert(0, '+');
        }
        let parsed = Mobile::parse(Kind::Mobile.as_str(), &s)?;
        let value = match parsed.as_str().strip_prefix("+86") {
            Some(national)
                if national.len() == 11
                    && Mobile::parse(Kind::Mobile.as_str(), national).is_ok() =>
            {
                national.to_owned()
            }
            _ => parsed.as_str().to_owned(),
        };
        s.zeroize();
        Ok(Self {
            kind: Kind::Mobile,
            value: Zeroizing::new(value),
        })
    }

    /// An email address, compared without regard to case.
    pub fn email(raw: &str) -> Result<Self, ValidationError> {
        let parsed = Email::parse(Kind::Email.as_str(), raw)?;
        Ok(Self {
            kind: Kind::Email,
            value: Zeroizing::new(parsed.as_str().to_lowercase()),
        })
    }

    /// A PRC resident ID number; spaces are ignored, `x` is `X`.
    pub fn id_number(raw: &str) -> Result<Self, ValidationError> {
        let compact: Zeroizing<String> =
            Zeroizing::new(raw.chars().filter(|c| !c.is_whitespace()).collect());
        let parsed = IdNumber::parse(Kind::IdNumber.as_str(), &compact)?;
        Ok(Self {
            kind: Kind::IdNumber,
            value: Zeroizing::new(parsed.as_str().to_owned()),
        })
    }
}

/// An identifier's HMAC: what the index stores in its place.
pub type Blind = [u8; BLIND_LEN];

/// The index key: HKDF of the KEK, so every node with the KEK computes the
/// same HMACs and nobody without it can test a guess.
pub struct SubjectKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectKey([redacted])")
    }
}

impl SubjectKey {
    pub fn of(kek: &crate::crypto::Kek) -> Self {
        Self(kek.derive_secret(KEY_LABEL))
    }

    /// The identifier's HMAC.
    pub fn blind(&self, id: &Identifier) -> Blind {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_ref())
            .expect("HMAC takes any key length");
        mac.update(&[id.kind.tag(), 0]);
        mac.update(id.value.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl From<rocksdb::Error> for IndexError {
    fn from(e: rocksdb::Error) -> Self {
        Self::Store(StoreError::Rocks(e))
    }
}

/// What one pass of the indexer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Entries written.
    pub indexed: u64,
    /// Entries removed (and purged from disk).
    pub removed: u64,
    /// Orders left queued: their key has not reached this node's vault.
    pub waiting: u64,
}

/// The index of one node.
pub struct SubjectIndex {
    store: Store,
    vault: Arc<KeyVault>,
    key: SubjectKey,
    /// One pass at a time (the indexer thread, or a request catching up).
    pass: Mutex<()>,
    /// Orders waiting for their key after the last pass.
    waiting: AtomicU64,
}

impl std::fmt::Debug for SubjectIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectIndex").finish_non_exhaustive()
    }
}

/// The index key of an entry (the blind id's first two bytes are its bucket).
fn entry(kind: Kind, blind: &Blind, order_id: Uuid) -> SubjectEntry {
    SubjectEntry {
        kind,
        bucket: [blind[0], blind[1]],
        order_id,
    }
}

/// A row read, or none when it is corrupt (logged: the index is rebuilt
/// around it rather than stopped by it); RocksDB's own errors pass.
fn unless_corrupt<T>(read: Result<Option<T>, StoreError>) -> Result<Option<T>, StoreError> {
    match read {
        Err(e) if e.is_corrupt() => {
            tracing::warn!(error = %e, "Skipping a subject index row that does not read.");
            Ok(None)
        }
        other => other,
    }
}

/// Queues the order for (re)indexing, in the batch of the event that calls
/// for it (a placement or an erasure).
pub fn stage_pending(store: &Store, batch: &mut WriteBatch, order_id: &Uuid, sequence: u64) {
    store
        .table::<SubjectPending>()
        .put(batch, &(*order_id, sequence), &());
}

/// Removes, in `batch`, the order's entries of the identifiers `classes`
/// hold (the projector, folding an erasure, in the batch that queues the
/// order's purge, which compacts `subject_orders` by order id with the
/// rest). An entry written after this (the indexer racing the erasure) is
/// removed, and purged, by the indexer when it takes the erasure's pending
/// row.
pub fn stage_removal(
    store: &Store,
    batch: &mut WriteBatch,
    order_id: &Uuid,
    classes: &BTreeSet<FieldClass>,
) -> Result<(), StoreError> {
    let orders = store.table::<SubjectOrders>();
    for kind in Kind::ALL {
        if !classes.contains(&kind.class()) {
            continue;
        }
        let Some(blind) = unless_corrupt(orders.get(&(*order_id, kind)))? else {
            continue;
        };
        store
            .table::<SubjectIndexRows>()
            .delete(batch, &entry(kind, &blind, *order_id));
        orders.delete(batch, &(*order_id, kind));
    }
    Ok(())
}

impl SubjectIndex {
    /// Opens the node's index under its current KEK. An index built under
    /// another KEK (or none: a data directory of an earlier version) is
    /// dropped, purged from disk, and rebuilt: every known order is queued.
    pub fn open(store: Store, vault: Arc<KeyVault>) -> Result<Arc<Self>, IndexError> {
        let (kek_id, key) = vault.derive_secret(KEY_LABEL);
        let index = Self {
            store,
            vault,
            key: SubjectKey(key),
            pass: Mutex::new(()),
            waiting: AtomicU64::new(0),
        };
        let built_under = unless_corrupt(index.store.table::<SubjectIndexKek>().get(&()))?;
        if built_under != Some(kek_id) {
            index.rebuild(kek_id)?;
        } else if index.store.table::<SubjectIndexPurging>().contains(&())? {
            // A crash between removing entries and purging them.
            index.purge_everything()?;
        }
        Ok(Arc::new(index))
    }

    fn rebuild(&self, kek_id: crate::crypto::kek::KekId) -> Result<(), IndexError> {
        let mut batch = WriteBatch::default();
        let dropped = self.store.table::<SubjectIndexRows>().clear(&mut batch)?
            + self.store.table::<SubjectOrders>().clear(&mut batch)?;
        let mut queued = 0u64;
        for id in self.store.table::<OrderStates>().keys() {
            let Some(id) = unless_corrupt(id.map(Some))? else {
                continue;
            };
            stage_pending(&self.store, &mut batch, &id, 0);
            queued += 1;
        }
        self.store
            .table::<SubjectIndexKek>()
            .put(&mut batch, &(), &kek_id);
        if dropped > 0 {
            self.store
                .table::<SubjectIndexPurging>()
                .put(&mut batch, &(), &());
        }
        self.store.db().write(batch)?;
        if dropped > 0 {
            self.purge_everything()?;
        }
        if queued + dropped > 0 {
            tracing::info!(
                orders = queued,
                dropped,
                "Subject index rebuilt under the current KEK: every order queued."
            );
        }
        Ok(())
    }

    fn purge_everything(&self) -> Result<(), IndexError> {
        self.store
            .purge_all(&[CF_SUBJECT_INDEX, CF_SUBJECT_ORDERS, CF_SUBJECT_PENDING])?;
        self.store
            .table::<SubjectIndexPurging>()
            .delete_now(&(), &WriteOptions::default())?;
        Ok(())
    }

    /// The identifier's HMAC under this node's index key.
    pub fn blind(&self, id: &Identifier) -> Blind {
        self.key.blind(id)
    }

    /// The orders holding any of `ids`, with which of them each holds. Only
    /// entries of classes not erased exist.
    pub fn find(&self, ids: &[Identifier]) -> Result<BTreeMap<Uuid, BTreeSet<Kind>>, IndexError> {
        let rows = self.store.table::<SubjectIndexRows>();
        let orders = self.store.table::<SubjectOrders>();
        let mut out: BTreeMap<Uuid, BTreeSet<Kind>> = BTreeMap::new();
        for id in ids {
            let blind = self.blind(id);
            let first = entry(id.kind, &blind, Uuid::nil());
            for key in rows.keys_from(&first) {
                let key = key?;
                if (key.kind, key.bucket) != (first.kind, first.bucket) {
                    break;
                }
                // Another identifier in the same bucket, or an entry being
                // removed: only the order's own blind id counts.
                if orders.get(&(key.order_id, id.kind))? == Some(blind) {
                    out.entry(key.order_id).or_default().insert(id.kind);
                }
            }
        }
        Ok(out)
    }

    /// The order's entries as stored.
    pub fn entries(&self, order_id: &Uuid) -> Result<BTreeMap<Kind, Blind>, IndexError> {
        let first = Kind::ALL
            .into_iter()
            .min_by_key(|k| k.tag())
            .expect("at least one kind");
        let mut out = BTreeMap::new();
        let orders = self.store.table::<SubjectOrders>();
        for row in orders.rows_while(&(*order_id, first), |(id, _)| id == order_id) {
            let ((_, kind), blind) = row?;
            out.insert(kind, blind);
        }
        Ok(out)
    }

    /// What the order's entries must be now: one per identifier it holds
    /// in a class not erased; `None` while its key has not reached this
    /// node's vault.
    pub fn wanted(&self, order_id: &Uuid) -> Result<Option<BTreeMap<Kind, Blind>>, IndexError> {
        wanted(&self.store, &self.vault, &self.key, order_id)
    }

    /// Orders waiting for their key after the last pass.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Takes every queued order: writes its entries, removes those of
    /// erased classes and purges them from disk before returning.
    pub fn catch_up(&self) -> Result<Pass, IndexError> {
        let _one = self.pass.lock();
        let pending = self.store.table::<SubjectPending>();
        let rows_of_index = self.store.table::<SubjectIndexRows>();
        let orders = self.store.table::<SubjectOrders>();
        let purging = self.store.table::<SubjectIndexPurging>();
        let mut pass = Pass::default();
        // The all-zero key comes before every row.
        let mut after: Option<(Uuid, u64)> = None;
        loop {
            // The next rows, grouped by order.
            let mut queued: BTreeMap<Uuid, Vec<(Uuid, u64)>> = BTreeMap::new();
            let mut rows = 0;
            let mut last = None;
            for key in pending.keys_from(&after.unwrap_or((Uuid::nil(), 0))) {
                // A row no codec reads stays queued, and in no one's way.
                let Some(key) = unless_corrupt(key.map(Some))? else {
                    continue;
                };
                if after == Some(key) {
                    continue;
                }
                if rows == PASS_ROWS {
                    break;
                }
                queued.entry(key.0).or_default().push(key);
                rows += 1;
                last = Some(key);
            }
            let Some(last) = last else { break };
            let mut batch = WriteBatch::default();
            let mut ranges: Vec<(&'static str, Vec<u8>)> = Vec::new();
            for (order, keys) in &queued {
                let Some(want) = self.wanted(order)? else {
                    pass.waiting += 1;
                    continue;
                };
                let have = self.entries(order)?;
                for (kind, blind) in &have {
                    if want.get(kind) != Some(blind) {
                        rows_of_index.delete(&mut batch, &entry(*kind, blind, *order));
                        orders.delete(&mut batch, &(*order, *kind));
                        ranges.push((CF_SUBJECT_ORDERS, order.as_bytes().to_vec()));
                        pass.removed += 1;
                    }
                }
                for (kind, blind) in &want {
                    if have.get(kind) != Some(blind) {
                        rows_of_index.put(&mut batch, &entry(*kind, blind, *order), &());
                        orders.put(&mut batch, &(*order, *kind), blind);
                        pass.indexed += 1;
                    }
                }
                for k in keys {
                    pending.delete(&mut batch, k);
                }
            }
            if !ranges.is_empty() {
                purging.put(&mut batch, &(), &());
            }
            self.store.db().write(batch)?;
            if !ranges.is_empty() {
                self.store.purge(&ranges)?;
                purging.delete_now(&(), &WriteOptions::default())?;
            }
            if rows < PASS_ROWS {
                break;
            }
            after = Some(last);
        }
        self.waiting.store(pass.waiting, Ordering::Relaxed);
        if pass.indexed + pass.removed > 0 {
            metrics::counter!(crate::telemetry::SUBJECT_ENTRIES, "change" => "indexed")
                .increment(pass.indexed);
            metrics::counter!(crate::telemetry::SUBJECT_ENTRIES, "change" => "removed")
                .increment(pass.removed);
            tracing::debug!(
                indexed = pass.indexed,
                removed = pass.removed,
                waiting = pass.waiting,
                "Subject index updated."
            );
        }
        Ok(pass)
    }
}

/// What the order's entries must be, from `store`'s order state and sealed
/// placement opened with `vault`'s keys; `None` while the key is not in
/// the vault.
fn wanted(
    store: &Store,
    vault: &KeyVault,
    subject_key: &SubjectKey,
    order_id: &Uuid,
) -> Result<Option<BTreeMap<Kind, Blind>>, IndexError> {
    let none = Ok(Some(BTreeMap::new()));
    let Some(record) = crate::service::state::load_order(store, order_id)? else {
        return none;
    };
    let Some(facts) = &record.state.order else {
        return none;
    };
    if facts.fully_erased {
        return none;
    }
    let live = |c: FieldClass| !facts.erased.contains(&c);
    let Some(env) = crate::service::state::load_placed(store, order_id)? else {
        return none;
    };
    let key = match vault.get(*order_id) {
        Ok(k) => k,
        Err(VaultError::Shredded { .. }) => return none,
        Err(VaultError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let placed = match crate::events::open_event(&env, Some(&key)) {
        Ok(Event::OrderPlaced(p)) => p,
        Ok(_) => return none,
        Err(e) => {
            tracing::error!(%order_id, error = %e, "Sealed fields of a placed order do not open; the order is left out of the subject index.");
            return none;
        }
    };
    let mut ids = Vec::new();
    let p = &placed.personal;
    if live(FieldClass::Shipping)
        && let Some(s) = &p.shipping
        && let Ok(id) = Identifier::mobile(s.expose().mobile.as_str())
    {
        ids.push(id);
    }
    if live(FieldClass::Contact)
        && let Some(c) = &p.contact
        && let Some(email) = &c.expose().email
        && let Ok(id) = Identifier::email(email.as_str())
    {
        ids.push(id);
    }
    if live(FieldClass::Identity)
        && let Some(i) = &p.identity
        && let Ok(id) = Identifier::id_number(i.expose().as_str())
    {
        ids.push(id);
    }
    Ok(Some(
        ids.iter()
            .map(|id| (id.kind, subject_key.blind(id)))
            .collect(),
    ))
}

/// One entry: identifier kind, blind id, order.
pub type Entry = (Kind, Blind, Uuid);

/// The index the views of `store` call for under `vault`'s keys and KEK
/// (what `verify` expects of a node), and how many orders' keys are not in
/// the vault.
pub fn expected(store: &Store, vault: &KeyVault) -> Result<(BTreeSet<Entry>, u64), IndexError> {
    let key = SubjectKey(vault.derive_secret(KEY_LABEL).1);
    let mut out = BTreeSet::new();
    let mut no_key = 0;
    for id in store.table::<OrderStates>().keys() {
        let Some(id) = unless_corrupt(id.map(Some))? else {
            continue;
        };
        match wanted(store, vault, &key, &id)? {
            Some(entries) => out.extend(entries.into_iter().map(|(kind, b)| (kind, b, id))),
            None => no_key += 1,
        }
    }
    Ok((out, no_key))
}

/// The index `store` holds (entries present both ways), and how many
/// orders it has queued for indexing.
pub fn stored(store: &Store) -> Result<(BTreeSet<Entry>, u64), IndexError> {
    let rows_of_index = store.table::<SubjectIndexRows>();
    let mut out = BTreeSet::new();
    for row in store.table::<SubjectOrders>().rows() {
        let ((id, kind), blind) = row?;
        if rows_of_index.contains(&entry(kind, &blind, id))? {
            out.insert((kind, blind, id));
        }
    }
    let queued = store.table::<SubjectPending>().count()?;
    Ok((out, queued))
}

/// The background indexer: a pass after every batch the projector writes,
/// and a retry each second while orders wait for their key.
#[derive(Debug)]
pub struct Indexer {
    index: Arc<SubjectIndex>,
    worker: Worker,
}

impl Indexer {
    pub fn start(
        index: Arc<SubjectIndex>,
        projector: Arc<ProjectorStatus>,
        stop: CancellationToken,
    ) -> Self {
        let handle = index.clone();
        let worker = Worker::spawn("subject-indexer", stop, move |stop| {
            let mut seen = u64::MAX;
            let mut retry_at = Instant::now();
            let mut retry = Retry::new(Duration::from_millis(100), Duration::from_secs(5));
            while !stop.is_cancelled() {
                let batches = projector.batches.load(Ordering::Acquire);
                let again = index.waiting() > 0 && Instant::now() >= retry_at;
                if batches != seen || again {
                    match index.catch_up() {
                        Ok(_) => {
                            seen = batches;
                            retry.reset();
                            retry_at = Instant::now() + Duration::from_secs(1);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "Updating the subject index failed; retrying.");
                            shutdown::sleep(&stop, retry.pause());
                        }
                    }
                }
                shutdown::sleep(&stop, Duration::from_millis(50));
            }
        })
        .expect("spawn subject indexer thread");
        Self {
            index: handle,
            worker,
        }
    }

    /// Ends the thread after its current pass, then takes what is queued
    /// (the projector has stopped by then), so the index on disk matches
    /// the views.
    pub fn stop(self) -> Result<(), String> {
        self.worker.stop().map_err(|e| e.to_string())?;
        self.index.catch_up().map(|_| ()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(id: &Identifier) -> &str {
        id.value.as_str()
    }

    #[test]
    fn spellings_of_one_mobile_normalize_alike() {
        for raw in [
            "13800138000",
            "138 0013 8000",
            "138-0013-8000",
            "+86 138 0013 8000",
            "+8613800138000",
            "0086 13800138000",
            "86 138 0013 8000",
            " (+86) 138.0013.8000 ",
        ] {
            assert_eq!(
                value(&Identifier::mobile(raw).unwrap()),
                "13800138000",
                "{raw}"
            );
        }
        // Another country's number keeps its country code.
        assert_eq!(
            value(&Identifier::mobile("+44 7700 900123").unwrap()),
            "+447700900123"
        );
        let e = Identifier::mobile("12345").unwrap_err();
        assert_eq!(e.field, "mobile");
    }

    #[test]
    fn emails_compare_without_case_and_id_numbers_without_spaces() {
        assert_eq!(
            value(&Identifier::email(" Li.Na@Example.COM ").unwrap()),
            "li.na@example.com"
        );
        assert!(Identifier::email("no-at-sign").is_err());
        let id = Identifier::id_number("11010519491231002x").unwrap();
        assert_eq!(value(&id), "11010519491231002X");
        assert_eq!(
            value(&Identifier::id_number("110105 19491231 002X").unwrap()),
            "11010519491231002X"
        );
        assert_eq!(
            Identifier::id_number("110105194912310021")
                .unwrap_err()
                .field,
            "id_number"
        );
    }

    #[test]
    fn debug_prints_the_kind_never_the_value() {
        let id = Identifier::mobile("13800138000").unwrap();
        let shown = format!("{id:?}");
        assert!(!shown.contains("13800138000"), "{shown}");
        assert!(shown.contains("mobile"));
    }
}
