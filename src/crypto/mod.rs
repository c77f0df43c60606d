//! Sealing of personal data: per-order keys, per-class subkeys, AES-SIV, the
//! key-encryption key (KEK) and the key vault.
//!
//! Key hierarchy:
//!
//! ```text
//! KEK (64 bytes, from configuration)            never stored by orderlog
//!  └─ wraps ─ class subkey (64 bytes) per order and field class   stored wrapped only
//!               ▲ HKDF-SHA256(order key, class, key id)
//!             order key (256 bits, random)      lives only while an order is placed
//! ```
//!
//! The vault keeps each class subkey wrapped on its own, so one class can be
//! shredded while the others stay readable; destroying all of them is the
//! crypto-shred of the order. Nothing in here logs key material, and every key
//! type prints `[redacted]` and is zeroed on drop.

pub mod follow;
pub mod kek;
pub mod keys;
pub mod logkey;
pub mod replica;
pub mod seal;
pub mod siv;
pub mod vault;

pub use follow::{FollowStatus, KeyFollower};
pub use kek::{Kek, KekError, KekRing};
pub use keys::{KeyId, OrderKey};
pub use logkey::{Forged, LogKeys};
pub use replica::{KeyReplica, keys_topic_for};
pub use seal::{OpenError, SealContext, open, seal};
pub use vault::{KeyVault, Shredded, StoredKey, VaultError};
