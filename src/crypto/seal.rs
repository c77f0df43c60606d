//! AES-SIV sealing of one field class's plaintext, bound to where it belongs.
//!
//! Sealed layout: `nonce (16) | SIV tag (16) | ciphertext`. The associated data
//! are, as separate AES-SIV header components: a domain label, order id,
//! event id, sequence number, field class, key id, and the random nonce. So a
//! ciphertext moved to another order, event, position or class fails to open,
//! and equal plaintexts never give equal ciphertexts.

use rand::RngCore;
use uuid::Uuid;

use super::keys::{KeyId, OrderKey, Subkey};
use super::siv::{Siv, TAG_LEN};
use crate::domain::FieldClass;

const LABEL: &[u8] = b"orderlog/v1/sealed-field";
pub const NONCE_LEN: usize = 16;

/// Where a sealed field belongs; all of it is authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealContext {
    pub order_id: Uuid,
    pub event_id: Uuid,
    pub sequence: u64,
    pub key_id: KeyId,
}

/// Why a sealed field could not be opened. Carries no plaintext or key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error(
        "sealed {class} field was sealed under key {sealed_with}, not under the key given ({given})"
    )]
    WrongKeyId {
        class: FieldClass,
        sealed_with: KeyId,
        given: KeyId,
    },
    #[error("the {0} subkey of this order is shredded")]
    Shredded(FieldClass),
    #[error("sealed {0} field is too short to be a ciphertext")]
    Truncated(FieldClass),
    #[error(
        "sealed {0} field failed authentication: wrong key, moved from another order, event or class, or tampered with"
    )]
    Unauthentic(FieldClass),
}

fn headers<'a>(
    ctx: &'a SealContext,
    class: FieldClass,
    seq: &'a [u8; 8],
    nonce: &'a [u8],
) -> [&'a [u8]; 7] {
    [
        LABEL,
        ctx.order_id.as_bytes(),
        ctx.event_id.as_bytes(),
        seq,
        class.as_str().as_bytes(),
        &ctx.key_id.0,
        nonce,
    ]
}

fn subkey(key: &OrderKey, class: FieldClass) -> Result<&Subkey, OpenError> {
    key.subkey(class).ok_or(OpenError::Shredded(class))
}

/// Seals `plaintext` of `class` under the order key, bound to `ctx`.
pub fn seal(
    key: &OrderKey,
    ctx: &SealContext,
    class: FieldClass,
    plaintext: &[u8],
) -> Result<Vec<u8>, OpenError> {
    if ctx.key_id != key.id() {
        return Err(OpenError::WrongKeyId {
            class,
            sealed_with: ctx.key_id,
            given: key.id(),
        });
    }
    // From the thread's CSPRNG (ChaCha, seeded and reseeded from the OS):
    // as unpredictable as a getrandom call, without a system call per field.
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    let seq = ctx.sequence.to_be_bytes();
    let siv = Siv::new(subkey(key, class)?);
    let mut out = Vec::with_capacity(NONCE_LEN + TAG_LEN + plaintext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&[0; TAG_LEN]);
    out.extend_from_slice(plaintext);
    let tag = siv.encrypt_in_place(
        &headers(ctx, class, &seq, &nonce),
        &mut out[NONCE_LEN + TAG_LEN..],
    );
    out[NONCE_LEN..NONCE_LEN + TAG_LEN].copy_from_slice(&tag);
    Ok(out)
}

/// Opens what [`seal`] produced, checking that it belongs to `ctx` and `class`.
pub fn open(
    key: &OrderKey,
    ctx: &SealContext,
    class: FieldClass,
    sealed: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, OpenError> {
    if ctx.key_id != key.id() {
        return Err(OpenError::WrongKeyId {
            class,
            sealed_with: ctx.key_id,
            given: key.id(),
        });
    }
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(OpenError::Truncated(class));
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (tag, ct) = rest.split_at(TAG_LEN);
    let seq = ctx.sequence.to_be_bytes();
    let siv = Siv::new(subkey(key, class)?);
    let mut plain = zeroize::Zeroizing::new(ct.to_vec());
    siv.decrypt_in_place(
        &headers(ctx, class, &seq, nonce),
        &mut plain,
        tag.try_into().expect("16 bytes"),
    )
    .map_err(|_| OpenError::Unauthentic(class))?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(key: &OrderKey) -> SealContext {
        SealContext {
            order_id: Uuid::now_v7(),
            event_id: Uuid::now_v7(),
            sequence: 1,
            key_id: key.id(),
        }
    }

    const PT: &[u8] = "张三 13800138000".as_bytes();

    #[test]
    fn seal_then_open_round_trips() {
        let key = OrderKey::generate();
        let c = ctx(&key);
        let sealed = seal(&key, &c, FieldClass::Shipping, PT).unwrap();
        assert_eq!(
            open(&key, &c, FieldClass::Shipping, &sealed)
                .unwrap()
                .as_slice(),
            PT
        );
        assert!(!sealed.windows(PT.len()).any(|w| w == PT));
    }

    #[test]
    fn equal_plaintexts_give_different_ciphertexts() {
        let key = OrderKey::generate();
        let c = ctx(&key);
        assert_ne!(
            seal(&key, &c, FieldClass::Shipping, PT).unwrap(),
            seal(&key, &c, FieldClass::Shipping, PT).unwrap()
        );
    }

    #[test]
    fn another_orders_key_fails() {
        let key = OrderKey::generate();
        let c = ctx(&key);
        let sealed = seal(&key, &c, FieldClass::Shipping, PT).unwrap();
        let other = OrderKey::generate();
        assert!(matches!(
            open(&other, &c, FieldClass::Shipping, &sealed),
            Err(OpenError::WrongKeyId { .. })
        ));
        // Same key id, different key bytes (a forged or corrupted key record).
        let forged = OrderKey::derive(key.id(), &[9; 32]);
        assert_eq!(
            open(&forged, &c, FieldClass::Shipping, &sealed),
            Err(OpenError::Unauthentic(FieldClass::Shipping))
        );
    }

    #[test]
    fn a_ciphertext_moved_to_another_order_event_sequence_or_class_fails() {
        let key = OrderKey::generate();
        let c = ctx(&key);
        let sealed = seal(&key, &c, FieldClass::Shipping, PT).unwrap();
        let moved = [
            SealContext {
                order_id: Uuid::now_v7(),
                ..c
            },
            SealContext {
                event_id: Uuid::now_v7(),
                ..c
            },
            SealContext { sequence: 2, ..c },
        ];
        for m in moved {
            assert_eq!(
                open(&key, &m, FieldClass::Shipping, &sealed),
                Err(OpenError::Unauthentic(FieldClass::Shipping))
            );
        }
        assert_eq!(
            open(&key, &c, FieldClass::Contact, &sealed),
            Err(OpenError::Unauthentic(FieldClass::Contact))
        );
    }

    #[test]
    fn any_flipped_bit_fails() {
        let key = OrderKey::generate();
        let c = ctx(&key);
        let sealed = seal(&key, &c, FieldClass::Identity, PT).unwrap();
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            assert_eq!(
                open(&key, &c, FieldClass::Identity, &t),
                Err(OpenError::Unauthentic(FieldClass::Identity)),
                "byte {i}"
            );
        }
        assert_eq!(
            open(&key, &c, FieldClass::Identity, &sealed[..20]),
            Err(OpenError::Truncated(FieldClass::Identity))
        );
    }

    #[test]
    fn a_shredded_class_cannot_be_opened() {
        let key = OrderKey::generate();
        let c = ctx(&key);
        let sealed = seal(&key, &c, FieldClass::Identity, PT).unwrap();
        let key = key.without(FieldClass::Identity);
        assert_eq!(
            open(&key, &c, FieldClass::Identity, &sealed),
            Err(OpenError::Shredded(FieldClass::Identity))
        );
    }
}
