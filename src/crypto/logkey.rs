//! The log key: what makes an event record provably written by an orderlog
//! node.
//!
//! AES-SIV authenticates only the sealed fields, and the hash chain is plain
//! SHA-256, so a client with produce rights on the events topic could append
//! a correctly chained event. Every record (schema v2) therefore carries an
//! HMAC-SHA256 over all its other bytes under a key only orderlog nodes hold.
//!
//! The key is derived from the KEK (HKDF, label `orderlog/v2/log-mac`) and
//! named by that KEK's id, so a node needs nothing new to configure. A KEK
//! rotation retires the old KEK but not the records MAC'd under its log key:
//! `keys rotate` stores each retired log key wrapped under the new KEK, in the
//! vault and as a row of the key topic (record key `log-key/<kek id>`), so
//! every node, even one started later with only the new KEK, still
//! authenticates the whole log.

use std::collections::BTreeMap;

use aes_siv::KeyInit;
use aes_siv::siv::Aes256Siv;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::kek::{Kek, KekError, KekId, KekRing};

const DERIVE_LABEL: &str = "orderlog/v2/log-mac";
const WRAP_LABEL: &[u8] = b"orderlog/v2/log-key-wrap";
/// Prefix of a retired log key's record key in the key topic (order rows
/// are keyed by a 16-byte order id, so the two never meet).
pub const RECORD_PREFIX: &str = "log-key/";
pub const TAG_LEN: usize = 32;

/// A log key's bytes; zeroed on drop.
pub type LogSecret = Zeroizing<[u8; 32]>;

/// A retired log key as stored: wrapped under a KEK (AES-SIV, bound to the
/// log key's id), so a row nobody with the KEK wrote does not unwrap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedLogKey {
    /// Which log key this is (the id of the KEK it was derived from).
    pub id: KekId,
    /// The KEK it is wrapped under.
    pub kek_id: KekId,
    pub wrapped: Vec<u8>,
    /// Per partition, the end of the events topic when the key was retired:
    /// a record at or past it under this key is forged (someone holding the
    /// retired KEK, which may be why it was rotated away). Empty: no bound
    /// was known (a rotation without Kafka).
    pub until: BTreeMap<i32, i64>,
}

impl WrappedLogKey {
    pub fn wrap(kek: &Kek, id: KekId, secret: &LogSecret, until: BTreeMap<i32, i64>) -> Self {
        // The bound is authenticated with the key: a row with another bound
        // does not unwrap.
        let bound = bincode::serde::encode_to_vec(&until, bincode::config::standard())
            .expect("a map always encodes");
        let wrapped = Aes256Siv::new(kek.bytes().into())
            .encrypt([WRAP_LABEL, &id.0, &bound], secret.as_ref())
            .expect("AES-SIV encryption cannot fail for three headers");
        Self {
            id,
            kek_id: kek.id(),
            wrapped,
            until,
        }
    }

    pub fn unwrap(&self, ring: &KekRing) -> Result<LogSecret, KekError> {
        let kek = ring.get(self.kek_id)?;
        let bound = bincode::serde::encode_to_vec(&self.until, bincode::config::standard())
            .expect("a map always encodes");
        let plain = Zeroizing::new(
            Aes256Siv::new(kek.bytes().into())
                .decrypt([WRAP_LABEL, &self.id.0, &bound], &self.wrapped)
                .map_err(|_| KekError::Unwrap)?,
        );
        let mut out = Zeroizing::new([0u8; 32]);
        if plain.len() != out.len() {
            return Err(KekError::Unwrap);
        }
        out.copy_from_slice(&plain);
        Ok(out)
    }

    /// The key topic's record key of this row.
    pub fn record_key(&self) -> String {
        format!("{RECORD_PREFIX}{}", self.id)
    }
}

/// The log key of a KEK.
pub fn derive(kek: &Kek) -> LogSecret {
    kek.derive_secret(DERIVE_LABEL)
}

/// Why a record is not taken as written by orderlog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forged {
    #[error(
        "record is schema v{0}, which carries no log MAC; refused (a log written before v2 is read with --accept-v1-events)"
    )]
    Unauthenticated(u16),
    #[error("record is too short to carry a log MAC")]
    Truncated,
    #[error("record is authenticated under log key {0}, which this node does not hold")]
    UnknownKey(KekId),
    #[error("record's log MAC does not match: not written by an orderlog node, or altered")]
    BadMac,
    #[error(
        "record is authenticated under log key {0}, retired before this position: written with a KEK rotated away"
    )]
    Retired(KekId),
}

/// One log key: its bytes, and HMAC's state keyed with them, cloned for
/// each record instead of hashing the padded key twice again (2 of the
/// about 12 SHA-256 blocks of a placement's MAC). That state is as good as
/// the key for making MACs, and `hmac` does not clear it on drop, unlike
/// the bytes beside it: it lives as long as the node's `LogKeys`, which
/// hold the key for the node's life anyway.
#[derive(Clone)]
struct LogKey {
    secret: LogSecret,
    keyed: Hmac<Sha256>,
}

impl LogKey {
    fn new(secret: LogSecret) -> Self {
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_ref())
            .expect("HMAC takes a key of any length");
        Self { secret, keyed }
    }
}

/// Every log key a node can verify with, and the one it writes with.
#[derive(Clone)]
pub struct LogKeys {
    current: KekId,
    keys: BTreeMap<KekId, LogKey>,
    /// Retired keys' bounds (see [`WrappedLogKey::until`]).
    retired: BTreeMap<KekId, BTreeMap<i32, i64>>,
    accept_v1: bool,
}

impl std::fmt::Debug for LogKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogKeys")
            .field("current", &self.current)
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .field("accept_v1", &self.accept_v1)
            .finish()
    }
}

impl LogKeys {
    /// The log keys of every KEK in the ring; the current KEK's writes.
    pub fn from_ring(ring: &KekRing) -> Self {
        let keys = ring
            .all()
            .map(|k| (k.id(), LogKey::new(derive(k))))
            .collect();
        Self {
            current: ring.current().id(),
            keys,
            retired: BTreeMap::new(),
            accept_v1: false,
        }
    }

    /// Adds a retired log key, valid before `until` (per partition; empty
    /// for no bound). A KEK this node holds is never bounded by it.
    pub fn insert(&mut self, id: KekId, secret: LogSecret, until: BTreeMap<i32, i64>) {
        if self.keys.contains_key(&id) {
            return;
        }
        self.keys.insert(id, LogKey::new(secret));
        if !until.is_empty() {
            self.retired.insert(id, until);
        }
    }

    /// The bound of a retired key, if it has one.
    pub fn retired_until(&self, id: KekId) -> Option<&BTreeMap<i32, i64>> {
        self.retired.get(&id)
    }

    /// Takes schema-v1 records (which have no MAC) as authentic: for a log
    /// written before v2 only, since anyone able to produce can write one.
    pub fn accepting_v1(mut self, accept: bool) -> Self {
        self.accept_v1 = accept;
        self
    }

    pub fn accepts_v1(&self) -> bool {
        self.accept_v1
    }

    pub fn current_id(&self) -> KekId {
        self.current
    }

    pub fn ids(&self) -> impl Iterator<Item = KekId> + '_ {
        self.keys.keys().copied()
    }

    pub fn secret(&self, id: KekId) -> Option<&LogSecret> {
        self.keys.get(&id).map(|k| &k.secret)
    }

    /// The tag of `data` under the current log key.
    pub fn tag(&self, data: &[u8]) -> [u8; TAG_LEN] {
        let mut m = self.keys[&self.current].keyed.clone();
        m.update(data);
        m.finalize().into_bytes().into()
    }

    /// Checks `tag` over `data` under log key `id`, in constant time, for a
    /// record at `at` (partition, offset) when the reader knows it: a retired
    /// key does not authenticate a record past its bound.
    pub fn verify(
        &self,
        id: KekId,
        data: &[u8],
        tag: &[u8],
        at: Option<(i32, i64)>,
    ) -> Result<(), Forged> {
        let mut m = self
            .keys
            .get(&id)
            .ok_or(Forged::UnknownKey(id))?
            .keyed
            .clone();
        m.update(data);
        m.verify_slice(tag).map_err(|_| Forged::BadMac)?;
        if let (Some((partition, offset)), Some(until)) = (at, self.retired.get(&id))
            && until.get(&partition).is_none_or(|end| offset >= *end)
        {
            return Err(Forged::Retired(id));
        }
        Ok(())
    }
}

/// The log keys a node holds now, shared by the vault (which learns
/// retired keys from the key topic) and the readers that check records.
pub struct SharedLogKeys(parking_lot::RwLock<std::sync::Arc<LogKeys>>);

impl SharedLogKeys {
    pub fn new(keys: LogKeys) -> Self {
        Self(parking_lot::RwLock::new(std::sync::Arc::new(keys)))
    }

    pub fn get(&self) -> std::sync::Arc<LogKeys> {
        self.0.read().clone()
    }

    /// Replaces the keys with `f` of them.
    pub fn update(&self, f: impl FnOnce(&LogKeys) -> LogKeys) {
        let mut keys = self.0.write();
        *keys = std::sync::Arc::new(f(&keys));
    }
}

impl std::fmt::Debug for SharedLogKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_verifies_under_its_key_only() {
        let a = LogKeys::from_ring(&KekRing::new(Kek::generate()));
        let b = LogKeys::from_ring(&KekRing::new(Kek::generate()));
        let tag = a.tag(b"record");
        assert_eq!(a.verify(a.current_id(), b"record", &tag, None), Ok(()));
        assert_eq!(
            a.verify(a.current_id(), b"recorD", &tag, None),
            Err(Forged::BadMac)
        );
        assert_eq!(
            b.verify(a.current_id(), b"record", &tag, None),
            Err(Forged::UnknownKey(a.current_id()))
        );
    }

    #[test]
    fn a_retired_log_key_survives_rotation_and_authenticates_only_before_its_bound() {
        let old = Kek::generate();
        let new = Kek::generate();
        let before = LogKeys::from_ring(&KekRing::new(old.clone()));
        let tag = before.tag(b"record");
        let until = BTreeMap::from([(0, 100), (1, 5)]);
        let row = WrappedLogKey::wrap(&new, old.id(), &derive(&old), until.clone());
        assert_eq!(row.record_key(), format!("log-key/{}", old.id()));
        let ring = KekRing::new(new.clone());
        let mut after = LogKeys::from_ring(&ring);
        after.insert(row.id, row.unwrap(&ring).unwrap(), row.until.clone());
        assert_eq!(
            after.verify(old.id(), b"record", &tag, Some((0, 99))),
            Ok(())
        );
        assert_eq!(after.verify(old.id(), b"record", &tag, None), Ok(()));
        // Past the bound, or in a partition it does not name: someone who
        // kept the old KEK.
        for at in [(0, 100), (1, 5), (2, 0)] {
            assert_eq!(
                after.verify(old.id(), b"record", &tag, Some(at)),
                Err(Forged::Retired(old.id())),
                "{at:?}"
            );
        }
        assert_ne!(after.current_id(), old.id());
        // A row bound to another id, with another bound, or under a KEK not
        // held, does not unwrap.
        let moved = WrappedLogKey {
            id: new.id(),
            ..row.clone()
        };
        assert!(moved.unwrap(&ring).is_err());
        let widened = WrappedLogKey {
            until: BTreeMap::from([(0, i64::MAX), (1, i64::MAX)]),
            ..row.clone()
        };
        assert!(widened.unwrap(&ring).is_err());
        assert!(row.unwrap(&KekRing::new(Kek::generate())).is_err());
    }
}
