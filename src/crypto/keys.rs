//! Order keys and the per-class subkeys derived from them.

use std::collections::BTreeMap;
use std::fmt;

use hkdf::Hkdf;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::domain::FieldClass;

/// Length of an AES-SIV-256 key (two AES-256 keys: one for S2V/CMAC, one for CTR).
pub const SUBKEY_LEN: usize = 64;
const HKDF_SALT: &[u8] = b"orderlog/v1/order-key";

/// Identifies one order key. Random, so it says nothing about the order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Self(b)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A class subkey; zeroed on drop.
pub type Subkey = Zeroizing<[u8; SUBKEY_LEN]>;

/// The keys of one order: a subkey per field class it still has. A class that
/// was shredded is simply absent.
pub struct OrderKey {
    id: KeyId,
    subkeys: BTreeMap<FieldClass, Subkey>,
}

impl OrderKey {
    /// A fresh random 256-bit order key, expanded into one subkey per class.
    /// The root key is dropped (and zeroed) before this returns.
    pub fn generate() -> Self {
        let mut root = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(root.as_mut());
        Self::derive(KeyId::random(), &root)
    }

    /// Derives the class subkeys from a root key with HKDF-SHA256.
    pub fn derive(id: KeyId, root: &[u8; 32]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), root);
        let subkeys = FieldClass::ALL
            .into_iter()
            .map(|class| {
                let mut k = Zeroizing::new([0u8; SUBKEY_LEN]);
                let info = [class.as_str().as_bytes(), b"/", &id.0].concat();
                hk.expand(&info, k.as_mut())
                    .expect("64 bytes is a valid HKDF-SHA256 output length");
                (class, k)
            })
            .collect();
        Self { id, subkeys }
    }

    pub(crate) fn from_parts(id: KeyId, subkeys: BTreeMap<FieldClass, Subkey>) -> Self {
        Self { id, subkeys }
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    pub fn subkey(&self, class: FieldClass) -> Option<&Subkey> {
        self.subkeys.get(&class)
    }

    pub fn classes(&self) -> impl Iterator<Item = FieldClass> + '_ {
        self.subkeys.keys().copied()
    }

    pub(crate) fn subkeys(&self) -> &BTreeMap<FieldClass, Subkey> {
        &self.subkeys
    }

    /// The stored digest of a request with personal data (`request`, its
    /// plain hash) that placed this order: an HMAC under a key derived from
    /// every class subkey, so it cannot be recomputed (or a guess about any
    /// field tested) once any class of the order is erased, and does not
    /// change when the KEK rotates. `None` once a class is shredded.
    pub fn request_digest(&self, request: &[u8; 32]) -> Option<[u8; 32]> {
        use hmac::Mac;
        let mut ikm = Zeroizing::new(Vec::with_capacity(FieldClass::ALL.len() * SUBKEY_LEN));
        for class in FieldClass::ALL {
            ikm.extend_from_slice(self.subkey(class)?.as_ref());
        }
        let hk = Hkdf::<Sha256>::new(Some(b"orderlog/v2/request-digest"), &ikm);
        let mut mac_key = Zeroizing::new([0u8; 32]);
        hk.expand(&self.id.0, mac_key.as_mut())
            .expect("32 bytes is a valid HKDF output length");
        let mut m = <hmac::Hmac<Sha256> as Mac>::new_from_slice(mac_key.as_ref())
            .expect("HMAC takes any key length");
        m.update(request);
        Some(m.finalize().into_bytes().into())
    }

    /// Removes one class's subkey from this in-memory copy.
    pub fn without(mut self, class: FieldClass) -> Self {
        self.subkeys.remove(&class);
        self
    }
}

impl fmt::Debug for OrderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrderKey")
            .field("id", &self.id)
            .field("classes", &self.subkeys.keys().collect::<Vec<_>>())
            .field("subkeys", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_gets_a_different_subkey_and_each_order_a_different_key() {
        let a = OrderKey::generate();
        let b = OrderKey::generate();
        let sa = a.subkey(FieldClass::Shipping).unwrap();
        assert_ne!(
            sa.as_ref(),
            a.subkey(FieldClass::Identity).unwrap().as_ref()
        );
        assert_ne!(
            sa.as_ref(),
            b.subkey(FieldClass::Shipping).unwrap().as_ref()
        );
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn derivation_is_deterministic_for_the_same_root_and_id() {
        let id = KeyId([7; 16]);
        let a = OrderKey::derive(id, &[1; 32]);
        let b = OrderKey::derive(id, &[1; 32]);
        assert_eq!(
            a.subkey(FieldClass::Contact).unwrap().as_ref(),
            b.subkey(FieldClass::Contact).unwrap().as_ref()
        );
        let c = OrderKey::derive(KeyId([8; 16]), &[1; 32]);
        assert_ne!(
            a.subkey(FieldClass::Contact).unwrap().as_ref(),
            c.subkey(FieldClass::Contact).unwrap().as_ref()
        );
    }

    #[test]
    fn a_request_digest_is_keyed_by_the_order_and_gone_with_any_class() {
        let key = OrderKey::derive(KeyId([7; 16]), &[1; 32]);
        let request = [5; 32];
        let d = key.request_digest(&request).unwrap();
        assert_ne!(d, request);
        assert_eq!(key.request_digest(&request), Some(d), "deterministic");
        let other = OrderKey::derive(KeyId([8; 16]), &[1; 32]);
        assert_ne!(other.request_digest(&request), Some(d));
        for class in FieldClass::ALL {
            let key = OrderKey::derive(KeyId([7; 16]), &[1; 32]).without(class);
            assert_eq!(key.request_digest(&request), None, "{class} erased");
        }
    }

    #[test]
    fn debug_prints_no_key_material() {
        let k = OrderKey::derive(KeyId([0xAB; 16]), &[0xCD; 32]);
        let s = format!("{k:?}");
        assert!(s.contains("[redacted]"));
        let sub = hex::encode(k.subkey(FieldClass::Shipping).unwrap().as_ref());
        assert!(!s.contains(&sub[..16]));
    }
}
