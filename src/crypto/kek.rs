//! The key-encryption key (KEK): loaded from configuration, never stored by
//! orderlog, never printed. It wraps every class subkey with AES-SIV (RFC 5297
//! was designed for deterministic key wrapping).
//!
//! Text form, as `orderlog keygen` writes it and `ORDERLOG_KEK` / the KEK file
//! hold it: `orderlog-kek-v1:` followed by 128 hex digits (64 bytes).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use aes_siv::KeyInit;
use aes_siv::siv::Aes256Siv;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::keys::{KeyId, SUBKEY_LEN, Subkey};
use crate::domain::FieldClass;

const PREFIX: &str = "orderlog-kek-v1:";
const WRAP_LABEL: &[u8] = b"orderlog/v1/kek-wrap";
pub const KEK_LEN: usize = 64;

/// Operational errors of KEK handling. Messages never include key material.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("KEK is not in the form 'orderlog-kek-v1:' followed by 128 hex digits")]
    Malformed,
    #[error("cannot read KEK file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write KEK file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "KEK file {path} has mode {mode:04o}, which lets its group or others read or write it; refused: run `chmod 600 {path}` (owned by the user orderlog runs as)"
    )]
    Exposed { path: String, mode: u32 },
    #[error(
        "no KEK configured: set ORDERLOG_KEK or ORDERLOG_KEK_FILE (create one with `orderlog keygen`)"
    )]
    Missing,
    #[error("a wrapped key is under KEK {0}, which is not configured (was it rotated away?)")]
    UnknownKek(KekId),
    #[error("a wrapped key failed to unwrap: wrong KEK or tampered key record")]
    Unwrap,
}

/// A KEK's public fingerprint: the first 8 bytes of SHA-256 over a label and the KEK.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct KekId(pub [u8; 8]);

impl fmt::Display for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KekId({self})")
    }
}

/// A key-encryption key.
#[derive(Clone)]
pub struct Kek {
    id: KekId,
    bytes: Zeroizing<[u8; KEK_LEN]>,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek({}, [redacted])", self.id)
    }
}

impl Kek {
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEK_LEN]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        Self::from_bytes(bytes)
    }

    fn from_bytes(bytes: Zeroizing<[u8; KEK_LEN]>) -> Self {
        let mut h = Sha256::new();
        h.update(b"orderlog/v1/kek-id");
        h.update(bytes.as_ref());
        let digest = h.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Self {
            id: KekId(id),
            bytes,
        }
    }

    pub fn id(&self) -> KekId {
        self.id
    }

    /// Parses the text form. Surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<Self, KekError> {
        let hex_part = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(KekError::Malformed)?;
        let mut bytes = Zeroizing::new([0u8; KEK_LEN]);
        hex::decode_to_slice(hex_part, bytes.as_mut()).map_err(|_| KekError::Malformed)?;
        Ok(Self::from_bytes(bytes))
    }

    /// The text form. Handle with care: it is the secret.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{PREFIX}{}", hex::encode(self.bytes.as_ref())))
    }

    /// Reads the KEK from a file that only its owner may read or write: a
    /// file its group or others can read (a default umask, a checkout, a
    /// copy) is refused with the fix, before it is read.
    pub fn load_file(path: &Path) -> Result<Self, KekError> {
        use std::io::Read;
        let read = |source| KekError::Read {
            path: path.display().to_string(),
            source,
        };
        // The mode checked is the one of the file read: one open, then fstat.
        let mut f = std::fs::File::open(path).map_err(read)?;
        check_owner_only(path, &f.metadata().map_err(read)?)?;
        let mut text = Zeroizing::new(String::new());
        f.read_to_string(&mut text).map_err(read)?;
        Self::parse(&text)
    }

    /// Writes the KEK to a new file readable by its owner only; refuses to overwrite.
    pub fn write_new_file(&self, path: &Path) -> Result<(), KekError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| KekError::Write {
            path: path.display().to_string(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        f.write_all(self.to_text().as_bytes()).map_err(err)?;
        f.write_all(b"\n").map_err(err)?;
        f.sync_all().map_err(err)
    }

    /// A 32-byte secret for another purpose (such as MAC keys), derived with
    /// HKDF so it reveals nothing about the KEK.
    pub fn derive_secret(&self, label: &str) -> Zeroizing<[u8; 32]> {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(b"orderlog/v1/kek-derived"), self.bytes.as_ref());
        let mut out = Zeroizing::new([0u8; 32]);
        hk.expand(label.as_bytes(), out.as_mut())
            .expect("32 bytes is a valid HKDF output length");
        out
    }

    /// The raw key, for the crypto module's own AES-SIV uses.
    pub(crate) fn bytes(&self) -> &[u8; KEK_LEN] {
        &self.bytes
    }

    fn cipher(&self) -> Aes256Siv {
        Aes256Siv::new(self.bytes.as_ref().into())
    }

    /// Wraps a class subkey, bound to its order, key id and class.
    pub fn wrap(
        &self,
        order_id: &uuid::Uuid,
        key_id: KeyId,
        class: FieldClass,
        subkey: &Subkey,
    ) -> Vec<u8> {
        self.cipher()
            .encrypt(
                [
                    WRAP_LABEL,
                    order_id.as_bytes(),
                    &key_id.0,
                    class.as_str().as_bytes(),
                ],
                subkey.as_ref(),
            )
            .expect("AES-SIV encryption cannot fail for four headers")
    }

    pub fn unwrap_key(
        &self,
        order_id: &uuid::Uuid,
        key_id: KeyId,
        class: FieldClass,
        wrapped: &[u8],
    ) -> Result<Subkey, KekError> {
        let pt = Zeroizing::new(
            self.cipher()
                .decrypt(
                    [
                        WRAP_LABEL,
                        order_id.as_bytes(),
                        &key_id.0,
                        class.as_str().as_bytes(),
                    ],
                    wrapped,
                )
                .map_err(|_| KekError::Unwrap)?,
        );
        if pt.len() != SUBKEY_LEN {
            return Err(KekError::Unwrap);
        }
        let mut out = Zeroizing::new([0u8; SUBKEY_LEN]);
        out.copy_from_slice(&pt);
        Ok(out)
    }
}

/// [`KekError::Exposed`] if the file's group or others have any
/// permission on it (`mode & 0o077`); the mode of a symlink's target counts.
fn check_owner_only(path: &Path, meta: &std::fs::Metadata) -> Result<(), KekError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KekError::Exposed {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// The KEKs orderlog can unwrap with: the current one (which wraps new keys)
/// and, during a rotation, older ones still needed to read unrotated records.
#[derive(Debug, Clone)]
pub struct KekRing {
    current: Kek,
    older: BTreeMap<KekId, Kek>,
}

impl KekRing {
    pub fn new(current: Kek) -> Self {
        Self {
            current,
            older: BTreeMap::new(),
        }
    }

    pub fn with_older(mut self, kek: Kek) -> Self {
        if kek.id() != self.current.id() {
            self.older.insert(kek.id(), kek);
        }
        self
    }

    pub fn current(&self) -> &Kek {
        &self.current
    }

    /// The current KEK, then the older ones.
    pub fn all(&self) -> impl Iterator<Item = &Kek> {
        std::iter::once(&self.current).chain(self.older.values())
    }

    pub fn get(&self, id: KekId) -> Result<&Kek, KekError> {
        if id == self.current.id {
            Ok(&self.current)
        } else {
            self.older.get(&id).ok_or(KekError::UnknownKek(id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_keeps_the_id() {
        let k = Kek::generate();
        let back = Kek::parse(&format!("  {}\n", k.to_text().as_str())).unwrap();
        assert_eq!(back.id(), k.id());
        assert!(matches!(
            Kek::parse("orderlog-kek-v1:abcd"),
            Err(KekError::Malformed)
        ));
        assert!(matches!(Kek::parse("zz"), Err(KekError::Malformed)));
    }

    #[test]
    fn debug_and_errors_never_show_the_kek() {
        let k = Kek::generate();
        let text = k.to_text();
        let hex_part = &text[PREFIX.len()..PREFIX.len() + 16];
        assert!(!format!("{k:?}").contains(hex_part));
        let bad = format!("{}g", &text[..text.len() - 1]);
        let err = Kek::parse(&bad).unwrap_err().to_string();
        assert!(!err.contains(hex_part), "{err}");
    }

    #[test]
    fn wrap_is_bound_to_order_key_id_and_class() {
        let kek = Kek::generate();
        let order = uuid::Uuid::now_v7();
        let kid = KeyId::random();
        let sub = Zeroizing::new([5u8; SUBKEY_LEN]);
        let w = kek.wrap(&order, kid, FieldClass::Shipping, &sub);
        assert_eq!(
            kek.unwrap_key(&order, kid, FieldClass::Shipping, &w)
                .unwrap()
                .as_ref(),
            sub.as_ref()
        );
        assert!(
            kek.unwrap_key(&uuid::Uuid::now_v7(), kid, FieldClass::Shipping, &w)
                .is_err()
        );
        assert!(
            kek.unwrap_key(&order, KeyId::random(), FieldClass::Shipping, &w)
                .is_err()
        );
        assert!(
            kek.unwrap_key(&order, kid, FieldClass::Contact, &w)
                .is_err()
        );
        assert!(
            Kek::generate()
                .unwrap_key(&order, kid, FieldClass::Shipping, &w)
                .is_err()
        );
    }

    #[test]
    fn a_kek_file_its_group_or_others_may_read_is_refused_naming_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let k = Kek::generate();
        k.write_new_file(&path).unwrap();
        let chmod = |mode: u32| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        for owner_only in [0o600, 0o400] {
            chmod(owner_only);
            assert_eq!(
                Kek::load_file(&path).unwrap().id(),
                k.id(),
                "{owner_only:o}"
            );
        }
        chmod(0o644);
        let err = Kek::load_file(&path).unwrap_err();
        assert!(
            matches!(err, KekError::Exposed { mode: 0o644, .. }),
            "{err:?}"
        );
        let text = err.to_string();
        let fix = format!("chmod 600 {}", path.display());
        assert!(text.contains("0644") && text.contains(&fix), "{text}");
        let kek_text = k.to_text();
        let hex_part = &kek_text[PREFIX.len()..PREFIX.len() + 16];
        assert!(!text.contains(hex_part), "{text}");
        for exposed in [0o640, 0o604, 0o620, 0o602, 0o444] {
            chmod(exposed);
            assert!(
                matches!(Kek::load_file(&path), Err(KekError::Exposed { .. })),
                "{exposed:o} is refused"
            );
        }
    }

    #[test]
    fn keygen_file_is_owner_only_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let k = Kek::generate();
        k.write_new_file(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(Kek::load_file(&path).unwrap().id(), k.id());
        assert!(matches!(
            Kek::generate().write_new_file(&path),
            Err(KekError::Write { .. })
        ));
    }
}
