//! The key vault: order keys at rest, wrapped under the KEK, in RocksDB.
//!
//! There is no cache: every `get` reads and unwraps, so once `destroy` returns
//! no copy of the key is held by the vault. (Physically purging the deleted
//! rows from SST files and the WAL is the erasure module's job.)

use std::collections::{BTreeMap, BTreeSet};

use parking_lot::RwLock;
use rocksdb::{WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::kek::{Kek, KekError, KekId, KekRing};
use super::keys::{KeyId, OrderKey};
use super::logkey::{LogKeys, SharedLogKeys, WrappedLogKey};
use crate::domain::FieldClass;
use crate::store::schema::{OrderKeys, RetiredLogKeys, ShreddedKeys};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("no key for order {0}")]
    NotFound(Uuid),
    #[error("the key of order {order_id} was shredded")]
    Shredded { order_id: Uuid, record: Shredded },
    #[error("order {0} already has a key")]
    AlreadyExists(Uuid),
    #[error(transparent)]
    Kek(#[from] KekError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("key replica topic: {0}")]
    Replica(#[source] crate::error::Cause),
}

impl From<rocksdb::Error> for VaultError {
    fn from(e: rocksdb::Error) -> Self {
        Self::Store(StoreError::Rocks(e))
    }
}

/// A wrapped order key as stored (schema v1 of the `order_keys` row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    pub kek_id: KekId,
    pub key_id: KeyId,
    pub created_at_ms: i64,
    pub wrapped: Vec<(FieldClass, Vec<u8>)>,
}

/// What remains after a shred: no key bytes, only the fact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shredded {
    pub key_id: KeyId,
    pub classes: BTreeSet<FieldClass>,
    /// True once every class is gone.
    pub whole: bool,
    pub at_ms: i64,
}

/// What staging a key replica row changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// A key or some of its class subkeys were destroyed: the rows are to
    /// be purged from disk.
    pub destroyed: bool,
    live_delta: i64,
}

/// Counts of a KEK rotation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RewrapReport {
    pub rewrapped: u64,
    pub already_current: u64,
}

/// The state of an order's key in a vault, as audits and receipts check it.
#[derive(Debug)]
pub enum KeyLookup {
    /// At least one class subkey lives (shredded classes are absent).
    Live(OrderKey),
    /// Every class is shredded; the record holds no key bytes.
    Shredded(Shredded),
    /// No key and no shred record.
    Missing,
    /// The row exists but cannot be unwrapped (wrong KEK, corrupt row).
    Unreadable(String),
}

impl KeyLookup {
    /// The lookup a vault's answer stands for.
    pub fn of(answer: Result<OrderKey, VaultError>) -> Self {
        match answer {
            Ok(k) => KeyLookup::Live(k),
            Err(VaultError::Shredded { record, .. }) => KeyLookup::Shredded(record),
            Err(VaultError::NotFound(_)) => KeyLookup::Missing,
            Err(e) => KeyLookup::Unreadable(e.to_string()),
        }
    }
}

pub struct KeyVault {
    store: Store,
    ring: RwLock<KekRing>,
    /// Orders with a (partly) live key, kept current by every change.
    live: std::sync::atomic::AtomicI64,
    /// Held by every read-then-write of a key row (the writer's destroy, the
    /// key follower's apply), so neither writes from a stale read.
    rows: parking_lot::Mutex<()>,
    /// The keys that authenticate the event log: the KEKs' own and the
    /// retired ones stored here.
    log_keys: std::sync::Arc<SharedLogKeys>,
}

impl std::fmt::Debug for KeyVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVault")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

fn sync_writes() -> WriteOptions {
    // A lost key is an accidental shred: key changes are fsynced.
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

impl KeyVault {
    pub fn new(store: Store, ring: KekRing) -> Self {
        let log_keys = std::sync::Arc::new(SharedLogKeys::new(LogKeys::from_ring(&ring)));
        let vault = Self {
            store,
            ring: RwLock::new(ring),
            live: std::sync::atomic::AtomicI64::new(0),
            rows: parking_lot::Mutex::new(()),
            log_keys,
        };
        let n = vault.count_rows().unwrap_or(0);
        vault
            .live
            .store(n as i64, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = vault.load_log_keys() {
            tracing::error!(error = %e, "Retired log keys could not be read; records authenticated under them will be refused.");
        }
        vault
    }

    /// The log keys as they change (a reader that runs for long holds this).
    pub fn log_keys_handle(&self) -> std::sync::Arc<SharedLogKeys> {
        self.log_keys.clone()
    }

    /// The keys that authenticate the event log, as of now.
    pub fn log_keys(&self) -> std::sync::Arc<LogKeys> {
        self.log_keys.get()
    }

    /// Takes schema-v1 records (no MAC) as authentic from now on.
    pub fn accept_v1_events(&self, accept: bool) {
        self.log_keys
            .update(|keys| keys.clone().accepting_v1(accept));
    }

    /// The retired log keys stored here, still wrapped.
    pub fn retired_log_keys(&self) -> Result<Vec<WrappedLogKey>, VaultError> {
        self.store
            .table::<RetiredLogKeys>()
            .rows()
            .map(|row| Ok(row?.1))
            .collect()
    }

    /// Takes every stored retired log key that unwraps under this node's
    /// KEKs; one that does not (wrapped under a KEK this node is not given
    /// yet) stays stored for a start with that KEK.
    fn load_log_keys(&self) -> Result<(), VaultError> {
        for row in self.retired_log_keys()? {
            if let Err(e) = self.add_log_key(&row) {
                tracing::info!(log_key = %row.id, error = %e, "A retired log key is kept for a later KEK.");
            }
        }
        Ok(())
    }

    fn add_log_key(&self, row: &WrappedLogKey) -> Result<(), VaultError> {
        let secret = {
            let ring = self.ring.read();
            row.unwrap(&ring)?
        };
        if self.log_keys.get().secret(row.id).is_none() {
            self.log_keys.update(|keys| {
                let mut next = keys.clone();
                next.insert(row.id, secret, row.until.clone());
                next
            });
        }
        Ok(())
    }

    /// Stores a retired log key read from the key topic, and takes it once
    /// it unwraps under a KEK of this node (a row nobody with the KEK wrote
    /// never does). One wrapped under a KEK this node is not given yet is
    /// kept, for a start with it.
    pub fn store_log_key(&self, row: &WrappedLogKey) -> Result<(), VaultError> {
        let taken = self.add_log_key(row);
        let stored = self.store.table::<RetiredLogKeys>();
        // A row that does not unwrap here never replaces one stored before.
        if taken.is_ok() || !stored.contains(&row.id)? {
            stored.put_now(&row.id, row, &sync_writes())?;
        }
        taken
    }

    fn add_live(&self, delta: i64) {
        self.live
            .fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
    }

    /// Orders with a live key, from a counter kept current (no scan).
    pub fn live_count(&self) -> i64 {
        self.live.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The lock a caller of [`KeyVault::stage_replica_row`] holds from the
    /// read to the write of its batch.
    pub fn lock_rows(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.rows.lock()
    }

    pub fn current_kek_id(&self) -> KekId {
        self.ring.read().current().id()
    }

    /// A secret for another purpose derived from the current KEK (HKDF, so
    /// it reveals nothing about the KEK), with that KEK's id: a new KEK
    /// gives a new secret.
    pub fn derive_secret(&self, label: &str) -> (KekId, zeroize::Zeroizing<[u8; 32]>) {
        let ring = self.ring.read();
        (ring.current().id(), ring.current().derive_secret(label))
    }

    fn wrap(kek: &Kek, order_id: &Uuid, key: &OrderKey, created_at_ms: i64) -> StoredKey {
        StoredKey {
            kek_id: kek.id(),
            key_id: key.id(),
            created_at_ms,
            wrapped: key
                .subkeys()
                .iter()
                .map(|(class, sub)| (*class, kek.wrap(order_id, key.id(), *class, sub)))
                .collect(),
        }
    }

    /// Generates and stores a new key for an order.
    pub fn create(&self, order_id: Uuid, now_ms: i64) -> Result<OrderKey, VaultError> {
        let keys = self.store.table::<OrderKeys>();
        if keys.contains(&order_id)? {
            return Err(VaultError::AlreadyExists(order_id));
        }
        if let Some(record) = self.shred_record(order_id)? {
            return Err(VaultError::Shredded { order_id, record });
        }
        let key = OrderKey::generate();
        let stored = Self::wrap(self.ring.read().current(), &order_id, &key, now_ms);
        keys.put_now(&order_id, &stored, &sync_writes())?;
        self.add_live(1);
        Ok(key)
    }

    /// Stores keys generated elsewhere (a write batch's new orders) in one
    /// write. Refuses the whole batch if any order already has a key or was
    /// shredded.
    ///
    /// Not fsynced: the key's durable home is the key topic, where it
    /// commits in the same transaction as the events that need it. A crash
    /// that loses this write is repaired by the key follower, which reads
    /// the topic again from its stored offset (written after the rows it
    /// covers, in the same write-ahead log, so never ahead of them).
    pub fn store_new(&self, keys: &[(Uuid, &OrderKey)], now_ms: i64) -> Result<(), VaultError> {
        let _rows = self.lock_rows();
        if keys.is_empty() {
            return Ok(());
        }
        let table = self.store.table::<OrderKeys>();
        let ring = self.ring.read();
        let mut batch = WriteBatch::default();
        for (order_id, key) in keys {
            if table.contains(order_id)? {
                return Err(VaultError::AlreadyExists(*order_id));
            }
            if let Some(record) = self.shred_record(*order_id)? {
                return Err(VaultError::Shredded {
                    order_id: *order_id,
                    record,
                });
            }
            table.put(
                &mut batch,
                order_id,
                &Self::wrap(ring.current(), order_id, key, now_ms),
            );
        }
        self.store.db().write(batch)?;
        self.add_live(keys.len() as i64);
        Ok(())
    }

    /// Removes the key of an order that never made it into the log (its
    /// placement failed). Not a shred: no record is kept.
    pub fn discard(&self, order_id: Uuid) -> Result<(), VaultError> {
        let _rows = self.lock_rows();
        let existed = self.stored(order_id)?.is_some();
        self.store
            .table::<OrderKeys>()
            .delete_now(&order_id, &sync_writes())?;
        if existed {
            self.add_live(-1);
        }
        Ok(())
    }

    /// The stored row, if any (wrapped; safe to copy elsewhere, such as a replica topic).
    pub fn stored(&self, order_id: Uuid) -> Result<Option<StoredKey>, VaultError> {
        Ok(self.store.table::<OrderKeys>().get(&order_id)?)
    }

    fn shred_record(&self, order_id: Uuid) -> Result<Option<Shredded>, VaultError> {
        Ok(self.store.table::<ShreddedKeys>().get(&order_id)?)
    }

    /// The order's key with the subkeys of every class not shredded.
    pub fn get(&self, order_id: Uuid) -> Result<OrderKey, VaultError> {
        let Some(stored) = self.stored(order_id)? else {
            return Err(match self.shred_record(order_id)? {
                Some(record) => VaultError::Shredded { order_id, record },
                None => VaultError::NotFound(order_id),
            });
        };
        let ring = self.ring.read();
        let kek = ring.get(stored.kek_id)?;
        let mut subkeys = BTreeMap::new();
        for (class, wrapped) in &stored.wrapped {
            subkeys.insert(
                *class,
                kek.unwrap_key(&order_id, stored.key_id, *class, wrapped)?,
            );
        }
        Ok(OrderKey::from_parts(stored.key_id, subkeys))
    }

    /// Shreds `classes` of the order's key, or all of it with `None`.
    /// Returns the shred record, which holds no key bytes.
    pub fn destroy(
        &self,
        order_id: Uuid,
        classes: Option<&BTreeSet<FieldClass>>,
        now_ms: i64,
    ) -> Result<Shredded, VaultError> {
        let _rows = self.lock_rows();
        let db = self.store.db();
        let stored = self.stored(order_id)?;
        let previous = self.shred_record(order_id)?;
        let Some(mut stored) = stored else {
            return match previous {
                Some(record) => Ok(record),
                None => Err(VaultError::NotFound(order_id)),
            };
        };
        let mut batch = WriteBatch::default();
        let mut gone: BTreeSet<FieldClass> = previous.map(|p| p.classes).unwrap_or_default();
        match classes {
            None => {
                gone.extend(FieldClass::ALL);
                stored.wrapped.clear();
            }
            Some(classes) => {
                gone.extend(classes.iter().copied());
                stored.wrapped.retain(|(c, _)| !classes.contains(c));
            }
        }
        let keys = self.store.table::<OrderKeys>();
        if stored.wrapped.is_empty() {
            keys.delete(&mut batch, &order_id);
        } else {
            keys.put(&mut batch, &order_id, &stored);
        }
        let record = Shredded {
            key_id: stored.key_id,
            whole: stored.wrapped.is_empty(),
            classes: gone,
            at_ms: now_ms,
        };
        self.store
            .table::<ShreddedKeys>()
            .put(&mut batch, &order_id, &record);
        db.write_opt(batch, &sync_writes())?;
        if record.whole {
            self.add_live(-1);
        }
        Ok(record)
    }

    /// The shred record of an order, if any class of it was shredded.
    pub fn shredded(&self, order_id: Uuid) -> Result<Option<Shredded>, VaultError> {
        self.shred_record(order_id)
    }

    /// True when the vault holds no key and no shred record (a new or lost node).
    pub fn is_empty(&self) -> Result<bool, VaultError> {
        Ok(self.store.table::<OrderKeys>().is_empty()?
            && self.store.table::<ShreddedKeys>().is_empty()?)
    }

    /// Writes a row restored from the replica topic as it is (still wrapped).
    pub fn restore_row(&self, order_id: Uuid, row: &StoredKey) -> Result<(), VaultError> {
        let _rows = self.lock_rows();
        let existed = self.stored(order_id)?.is_some();
        self.store
            .table::<OrderKeys>()
            .put_now(&order_id, row, &sync_writes())?;
        if !existed {
            self.add_live(1);
        }
        Ok(())
    }

    /// The row the key replica must hold once `classes` (all with `None`)
    /// of the order's key are destroyed: the reduced row, or `None` for a
    /// tombstone. Changes nothing; an erasure sends it in the transaction of
    /// its `OrderErased` event, so the key topic and the log agree.
    pub fn row_after_destroy(
        &self,
        order_id: Uuid,
        classes: Option<&BTreeSet<FieldClass>>,
    ) -> Result<Option<StoredKey>, VaultError> {
        let Some(mut stored) = self.stored(order_id)? else {
            return Ok(None);
        };
        match classes {
            None => stored.wrapped.clear(),
            Some(classes) => stored.wrapped.retain(|(c, _)| !classes.contains(c)),
        }
        Ok((!stored.wrapped.is_empty()).then_some(stored))
    }

    /// Stages in `batch` a row of the key replica written by any node: a new
    /// key is stored, a reduced row destroys the classes it no longer holds, a
    /// tombstone destroys the whole key. Classes already shredded here are
    /// never brought back by an older row. The caller writes the batch (with
    /// its read position) and then calls [`KeyVault::applied`]; one row per
    /// batch, as each reads the state the previous one left.
    pub fn stage_replica_row(
        &self,
        batch: &mut WriteBatch,
        order_id: Uuid,
        row: Option<&StoredKey>,
        now_ms: i64,
    ) -> Result<Applied, VaultError> {
        let local = self.stored(order_id)?;
        let shredded = self.shred_record(order_id)?;
        let keys = self.store.table::<OrderKeys>();
        let records = self.store.table::<ShreddedKeys>();
        let Some(row) = row else {
            if shredded.as_ref().is_some_and(|s| s.whole) && local.is_none() {
                return Ok(Applied::default());
            }
            let record = Shredded {
                key_id: local.as_ref().map_or(KeyId([0; 16]), |l| l.key_id),
                classes: FieldClass::ALL.into_iter().collect(),
                whole: true,
                at_ms: now_ms,
            };
            keys.delete(batch, &order_id);
            records.put(batch, &order_id, &record);
            return Ok(Applied {
                destroyed: true,
                live_delta: if local.is_some() { -1 } else { 0 },
            });
        };
        let gone: BTreeSet<FieldClass> = shredded.map(|s| s.classes).unwrap_or_default();
        let mut row = row.clone();
        row.wrapped.retain(|(c, _)| !gone.contains(c));
        let kept: BTreeSet<FieldClass> = row.wrapped.iter().map(|(c, _)| *c).collect();
        match local {
            Some(local) => {
                let dropped: BTreeSet<FieldClass> = local
                    .wrapped
                    .iter()
                    .map(|(c, _)| *c)
                    .filter(|c| !kept.contains(c))
                    .collect();
                if !dropped.is_empty() {
                    let whole = row.wrapped.is_empty();
                    if whole {
                        keys.delete(batch, &order_id);
                    } else {
                        keys.put(batch, &order_id, &row);
                    }
                    let record = Shredded {
                        key_id: local.key_id,
                        classes: gone.into_iter().chain(dropped).collect(),
                        whole,
                        at_ms: now_ms,
                    };
                    records.put(batch, &order_id, &record);
                    return Ok(Applied {
                        destroyed: true,
                        live_delta: if whole { -1 } else { 0 },
                    });
                }
                if local != row {
                    // The same classes, re-wrapped (a KEK rotation).
                    keys.put(batch, &order_id, &row);
                }
                Ok(Applied::default())
            }
            None if !gone.is_empty() || row.wrapped.is_empty() => Ok(Applied::default()),
            None => {
                keys.put(batch, &order_id, &row);
                Ok(Applied {
                    destroyed: false,
                    live_delta: 1,
                })
            }
        }
    }

    /// Accounts for a batch of [`KeyVault::stage_replica_row`] once written.
    pub fn applied(&self, applied: &Applied) {
        self.add_live(applied.live_delta);
    }

    /// Records that an order's key is gone without having its row (restore of a tombstone).
    pub fn mark_shredded(&self, order_id: Uuid, now_ms: i64) -> Result<(), VaultError> {
        let _rows = self.lock_rows();
        let existed = self.stored(order_id)?.is_some();
        let record = Shredded {
            key_id: KeyId([0; 16]),
            classes: FieldClass::ALL.into_iter().collect(),
            whole: true,
            at_ms: now_ms,
        };
        let mut batch = WriteBatch::default();
        self.store
            .table::<OrderKeys>()
            .delete(&mut batch, &order_id);
        self.store
            .table::<ShreddedKeys>()
            .put(&mut batch, &order_id, &record);
        self.store.db().write_opt(batch, &sync_writes())?;
        if existed {
            self.add_live(-1);
        }
        Ok(())
    }

    /// Every stored row (for republishing after a rotation).
    pub fn all_rows(&self) -> Result<Vec<(Uuid, StoredKey)>, VaultError> {
        Ok(self
            .store
            .table::<OrderKeys>()
            .rows()
            .collect::<Result<_, _>>()?)
    }

    /// Number of orders with a live (at least partly unshredded) key.
    pub fn live_keys(&self) -> Result<u64, VaultError> {
        self.count_rows()
    }

    fn count_rows(&self) -> Result<u64, VaultError> {
        Ok(self.store.table::<OrderKeys>().count()?)
    }

    /// Re-wraps every live key under `new`, which becomes the current KEK. The
    /// old KEK stays in the ring so rows can still be read if this stops half
    /// way; running it again finishes the job (rows already under `new` are
    /// skipped). The event log is not touched: only wrapped keys change.
    ///
    /// `retire_until` is the events topic's end per partition now (nothing is
    /// written during a rotation): the retired log keys authenticate records
    /// before it only. Empty for no bound.
    pub fn rotate(
        &self,
        new: Kek,
        retire_until: &BTreeMap<i32, i64>,
    ) -> Result<RewrapReport, VaultError> {
        {
            let mut ring = self.ring.write();
            let old = ring.current().clone();
            *ring = KekRing::new(new.clone()).with_older(old);
            self.log_keys.update(|keys| {
                let mut next = LogKeys::from_ring(&ring).accepting_v1(keys.accepts_v1());
                for id in keys.ids() {
                    if let Some(secret) = keys.secret(id) {
                        let until = keys.retired_until(id).cloned().unwrap_or_default();
                        next.insert(id, secret.clone(), until);
                    }
                }
                next
            });
        }
        // Every log key but the new KEK's is retired: stored under the new
        // KEK, so the records MAC'd under it still authenticate once the
        // old KEK is gone.
        let keys = self.log_keys();
        for id in keys.ids().filter(|id| *id != new.id()) {
            let secret = keys.secret(id).expect("listed");
            // A key retired before keeps its own bound.
            let until = keys
                .retired_until(id)
                .cloned()
                .unwrap_or_else(|| retire_until.clone());
            self.store_log_key(&WrappedLogKey::wrap(&new, id, secret, until))?;
        }
        let db = self.store.db();
        let keys = self.store.table::<OrderKeys>();
        let mut report = RewrapReport::default();
        let mut batch = WriteBatch::default();
        for row in keys.rows() {
            let (order_id, stored) = row?;
            if stored.kek_id == new.id() {
                report.already_current += 1;
                continue;
            }
            let key = self.get(order_id)?;
            keys.put(
                &mut batch,
                &order_id,
                &Self::wrap(&new, &order_id, &key, stored.created_at_ms),
            );
            report.rewrapped += 1;
            if batch.len() >= 1000 {
                db.write_opt(std::mem::take(&mut batch), &sync_writes())?;
            }
        }
        db.write_opt(batch, &sync_writes())?;
        Ok(report)
    }

    /// Forgets every KEK but the current one (after a completed rotation).
    pub fn forget_old_keks(&self) {
        let mut ring = self.ring.write();
        *ring = KekRing::new(ring.current().clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::kek::Kek;

    fn vault() -> (tempfile::TempDir, KeyVault, Kek) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let kek = Kek::generate();
        (dir, KeyVault::new(store, KekRing::new(kek.clone())), kek)
    }

    fn same(a: &OrderKey, b: &OrderKey) -> bool {
        a.id() == b.id()
            && FieldClass::ALL
                .iter()
                .all(|c| a.subkey(*c).map(|k| **k) == b.subkey(*c).map(|k| **k))
    }

    #[test]
    fn create_then_get_returns_the_same_key() {
        let (_d, v, _) = vault();
        let order = Uuid::now_v7();
        let k = v.create(order, 1).unwrap();
        assert!(same(&k, &v.get(order).unwrap()));
        assert!(matches!(
            v.create(order, 2),
            Err(VaultError::AlreadyExists(_))
        ));
        assert!(matches!(
            v.get(Uuid::now_v7()),
            Err(VaultError::NotFound(_))
        ));
        assert_eq!(v.live_keys().unwrap(), 1);
    }

    #[test]
    fn keys_are_stored_only_wrapped() {
        let (dir, v, _) = vault();
        let order = Uuid::now_v7();
        let k = v.create(order, 1).unwrap();
        drop(v);
        let sub: [u8; 64] = **k.subkey(FieldClass::Shipping).unwrap();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(
                !bytes.windows(16).any(|w| w == &sub[..16]),
                "raw subkey found on disk"
            );
        }
    }

    #[test]
    fn after_destroy_get_fails_and_says_shredded() {
        let (_d, v, _) = vault();
        let order = Uuid::now_v7();
        let k = v.create(order, 1).unwrap();
        let rec = v.destroy(order, None, 5).unwrap();
        assert!(rec.whole);
        assert_eq!(rec.key_id, k.id());
        match v.get(order) {
            Err(VaultError::Shredded { record, .. }) => assert_eq!(record.at_ms, 5),
            other => panic!("expected Shredded, got {other:?}"),
        }
        // A shredded order cannot get a new key under the same id.
        assert!(matches!(
            v.create(order, 6),
            Err(VaultError::Shredded { .. })
        ));
        assert_eq!(v.live_keys().unwrap(), 0);
        // Destroying again is idempotent and returns the first record.
        assert_eq!(v.destroy(order, None, 9).unwrap().at_ms, 5);
    }

    #[test]
    fn destroying_one_class_keeps_the_others() {
        let (_d, v, _) = vault();
        let order = Uuid::now_v7();
        let k = v.create(order, 1).unwrap();
        let rec = v
            .destroy(order, Some(&BTreeSet::from([FieldClass::Identity])), 2)
            .unwrap();
        assert!(!rec.whole);
        let left = v.get(order).unwrap();
        assert!(left.subkey(FieldClass::Identity).is_none());
        assert_eq!(
            left.subkey(FieldClass::Shipping).unwrap().as_ref(),
            k.subkey(FieldClass::Shipping).unwrap().as_ref()
        );
        let rec = v
            .destroy(
                order,
                Some(&BTreeSet::from([FieldClass::Shipping, FieldClass::Contact])),
                3,
            )
            .unwrap();
        assert!(rec.whole);
        assert_eq!(rec.classes.len(), 3);
        assert!(matches!(v.get(order), Err(VaultError::Shredded { .. })));
    }

    #[test]
    fn rotation_rewraps_every_key_and_the_old_kek_is_then_useless() {
        let (dir, v, old) = vault();
        let orders: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        let keys: Vec<OrderKey> = orders.iter().map(|o| v.create(*o, 1).unwrap()).collect();
        let new = Kek::generate();
        let report = v.rotate(new.clone(), &BTreeMap::new()).unwrap();
        assert_eq!(
            report,
            RewrapReport {
                rewrapped: 5,
                already_current: 0
            }
        );
        v.forget_old_keks();
        for (o, k) in orders.iter().zip(&keys) {
            assert!(same(k, &v.get(*o).unwrap()));
            assert_eq!(v.stored(*o).unwrap().unwrap().kek_id, new.id());
        }
        assert_eq!(
            v.rotate(new.clone(), &BTreeMap::new()).unwrap(),
            RewrapReport {
                rewrapped: 0,
                already_current: 5
            }
        );
        drop(v);
        // A vault with only the old KEK cannot read anything any more.
        let v2 = KeyVault::new(Store::open(dir.path()).unwrap(), KekRing::new(old));
        assert!(matches!(
            v2.get(orders[0]),
            Err(VaultError::Kek(KekError::UnknownKek(_)))
        ));
    }

    #[test]
    fn a_wrong_kek_is_refused_cleanly() {
        let (dir, v, _) = vault();
        let order = Uuid::now_v7();
        v.create(order, 1).unwrap();
        drop(v);
        let stranger = KeyVault::new(
            Store::open(dir.path()).unwrap(),
            KekRing::new(Kek::generate()),
        );
        assert!(matches!(
            stranger.get(order),
            Err(VaultError::Kek(KekError::UnknownKek(_)))
        ));
    }
}
