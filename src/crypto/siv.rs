//! AES-SIV with AES-256 (RFC 5297; a 512-bit key: the first half for S2V's
//! CMAC, the second for CTR), giving the same bytes as the `aes-siv` crate's
//! `Aes256Siv` (a property test compares the two on random keys, associated
//! data and messages), built on the `aes` crate's block cipher.
//!
//! Why not that crate: S2V computes one CMAC per associated-data component,
//! and a sealed field has seven. The crate runs them one after another, each
//! a chain of AES rounds waiting on the one before, and derives the CTR key
//! schedule again for every message. Here the CMACs of all components are
//! computed side by side (one `encrypt_blocks` call per block position, which
//! AES-NI pipelines), `CMAC(K, 0^128)` and the subkeys are computed once per
//! key, and CTR runs over the same key schedule. The construction, the bits
//! cleared in the IV and the checks are RFC 5297's; only the order of
//! independent work differs.
//!
//! Constant time as far as secrets go: branches depend on lengths only, the
//! doubling is arithmetic, and the tag is compared with `subtle`.

use aes::Aes256Enc;
use aes::cipher::{BlockEncrypt, KeyInit};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

pub const TAG_LEN: usize = 16;
pub const KEY_LEN: usize = 64;
/// Components whose CMACs are computed in one pass (AES-NI pipelines 8 blocks).
const LANES: usize = 8;

type Block = aes::Block;

/// The authentication tag did not verify. Says nothing more, by design.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unauthentic;

/// One AES-SIV key, expanded: what sealing and opening under it need.
pub struct Siv {
    mac: Aes256Enc,
    ctr: Aes256Enc,
    /// CMAC subkeys K1 and K2.
    k1: u128,
    k2: u128,
    /// `CMAC(K, 0^128)`, where S2V starts.
    d0: u128,
}

impl std::fmt::Debug for Siv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Siv([redacted])")
    }
}

impl Drop for Siv {
    fn drop(&mut self) {
        // The key schedules zeroize themselves (the `aes` crate's `zeroize`).
        self.k1.zeroize();
        self.k2.zeroize();
        self.d0.zeroize();
    }
}

/// Doubling in GF(2^128) with RFC 5297's polynomial, without a branch.
fn dbl(x: u128) -> u128 {
    (x << 1) ^ ((x >> 127).wrapping_neg() & 0x87)
}

fn load(bytes: &[u8]) -> u128 {
    u128::from_be_bytes(bytes.try_into().expect("16 bytes"))
}

/// `bytes` (at most 15) followed by 10*: CMAC's padding of a partial block.
fn padded(bytes: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    b[..bytes.len()].copy_from_slice(bytes);
    b[bytes.len()] = 0x80;
    u128::from_be_bytes(b)
}

/// Number of CBC blocks CMAC runs over a message of `len` bytes.
fn blocks(len: usize) -> usize {
    len.div_ceil(16).max(1)
}

impl Siv {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        let (mac_key, ctr_key) = key.split_at(KEY_LEN / 2);
        let mut siv = Self {
            mac: Aes256Enc::new(mac_key.into()),
            ctr: Aes256Enc::new(ctr_key.into()),
            k1: 0,
            k2: 0,
            d0: 0,
        };
        let l = siv.encrypt(0);
        siv.k1 = dbl(l);
        siv.k2 = dbl(siv.k1);
        // CMAC of one complete zero block: E(0 ^ K1).
        siv.d0 = siv.encrypt(siv.k1);
        siv
    }

    fn encrypt(&self, x: u128) -> u128 {
        let mut b = Block::from(x.to_be_bytes());
        self.mac.encrypt_block(&mut b);
        u128::from_be_bytes(b.into())
    }

    /// The last CBC input of CMAC for a final block of 1..=16 bytes (or none
    /// for an empty message): complete blocks take K1, padded ones K2.
    fn last_block(&self, bytes: &[u8]) -> u128 {
        if bytes.len() == 16 {
            load(bytes) ^ self.k1
        } else {
            padded(bytes) ^ self.k2
        }
    }

    /// The CMACs of up to [`LANES`] messages, side by side: at each block
    /// position, one call encrypts the CBC state of every message that still
    /// has a block there.
    fn cmacs(&self, msgs: &[&[u8]]) -> [u128; LANES] {
        debug_assert!(msgs.len() <= LANES);
        let mut state = [0u128; LANES];
        let rounds = msgs.iter().map(|m| blocks(m.len())).max().unwrap_or(0);
        for r in 0..rounds {
            let mut batch = [Block::default(); LANES];
            let mut lane = [0usize; LANES];
            let mut n = 0;
            for (i, m) in msgs.iter().enumerate() {
                let total = blocks(m.len());
                if r >= total {
                    continue;
                }
                let input = if r + 1 < total {
                    load(&m[16 * r..16 * r + 16])
                } else {
                    self.last_block(&m[16 * r..])
                };
                batch[n] = Block::from((state[i] ^ input).to_be_bytes());
                lane[n] = i;
                n += 1;
            }
            self.mac.encrypt_blocks(&mut batch[..n]);
            for (b, &i) in batch[..n].iter().zip(&lane[..n]) {
                state[i] = u128::from_be_bytes((*b).into());
            }
        }
        state
    }

    /// CMAC of `msg` (at least 16 bytes) with `d` xored onto its last 16
    /// bytes: S2V's `Sn xorend D`, without copying the message.
    fn cmac_xorend(&self, msg: &[u8], d: u128) -> u128 {
        let n = msg.len();
        debug_assert!(n >= 16);
        let total = blocks(n);
        let d = d.to_be_bytes();
        // The bytes of block `i` of `msg xorend d`.
        let block = |i: usize| -> ([u8; 16], usize) {
            let start = 16 * i;
            let end = (start + 16).min(n);
            let mut b = [0u8; 16];
            b[..end - start].copy_from_slice(&msg[start..end]);
            for p in start.max(n - 16)..end {
                b[p - start] ^= d[p - (n - 16)];
            }
            (b, end - start)
        };
        let mut x = 0u128;
        for i in 0..total - 1 {
            let input = if 16 * i + 16 <= n - 16 {
                load(&msg[16 * i..16 * i + 16])
            } else {
                load(&block(i).0)
            };
            x = self.encrypt(x ^ input);
        }
        let (b, len) = block(total - 1);
        self.encrypt(x ^ self.last_block(&b[..len]))
    }

    /// S2V over `headers` then `msg` (RFC 5297, 2.4).
    fn s2v(&self, headers: &[&[u8]], msg: &[u8]) -> u128 {
        let mut d = self.d0;
        for chunk in headers.chunks(LANES) {
            for mac in &self.cmacs(chunk)[..chunk.len()] {
                d = dbl(d) ^ mac;
            }
        }
        if msg.len() >= 16 {
            self.cmac_xorend(msg, d)
        } else {
            // CMAC of one complete block: dbl(D) xor pad(msg).
            self.encrypt(dbl(d) ^ padded(msg) ^ self.k1)
        }
    }

    /// CTR over `buf` from the synthetic IV, with the top bits of its last
    /// two 32-bit words cleared (RFC 5297, 2.6), the counter 128-bit big
    /// endian.
    fn apply_keystream(&self, tag: u128, buf: &mut [u8]) {
        let mut counter = tag & !((1u128 << 63) | (1u128 << 31));
        for chunk in buf.chunks_mut(16 * LANES) {
            let mut ks = [Block::default(); LANES];
            let n = chunk.len().div_ceil(16);
            for b in &mut ks[..n] {
                *b = Block::from(counter.to_be_bytes());
                counter = counter.wrapping_add(1);
            }
            self.ctr.encrypt_blocks(&mut ks[..n]);
            for (bytes, k) in chunk.chunks_mut(16).zip(&ks) {
                for (x, k) in bytes.iter_mut().zip(k.iter()) {
                    *x ^= k;
                }
            }
            // Keystream is as secret as the plaintext it covers.
            for b in &mut ks {
                b.as_mut_slice().zeroize();
            }
        }
    }

    /// Encrypts `buf` in place; returns the SIV tag.
    pub fn encrypt_in_place(&self, headers: &[&[u8]], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self.s2v(headers, buf);
        self.apply_keystream(tag, buf);
        tag.to_be_bytes()
    }

    /// Decrypts `buf` in place if `tag` verifies; otherwise zeroes `buf`.
    pub fn decrypt_in_place(
        &self,
        headers: &[&[u8]],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Unauthentic> {
        self.apply_keystream(u128::from_be_bytes(*tag), buf);
        let computed = self.s2v(headers, buf).to_be_bytes();
        if bool::from(computed.ct_eq(tag)) {
            Ok(())
        } else {
            buf.zeroize();
            Err(Unauthentic)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_siv::siv::Aes256Siv;
    use proptest::prelude::*;

    fn crate_siv(key: &[u8; KEY_LEN], headers: &[Vec<u8>], msg: &[u8]) -> Vec<u8> {
        let mut c = <Aes256Siv as aes_siv::KeyInit>::new(key.into());
        c.encrypt(headers, msg).unwrap()
    }

    fn key_of(seed: &[u8]) -> [u8; KEY_LEN] {
        let mut k = [0u8; KEY_LEN];
        for (i, b) in k.iter_mut().enumerate() {
            *b = seed[i % seed.len()].wrapping_add(i as u8);
        }
        k
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Same tag and ciphertext as the `aes-siv` crate, across header
        /// counts (more than one pass of lanes), header lengths (empty,
        /// partial, whole and several blocks) and message lengths (under
        /// and over one block, whole blocks, several CTR chunks).
        #[test]
        fn equals_the_aes_siv_crate(
            seed in proptest::collection::vec(any::<u8>(), 1..64),
            headers in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..12),
            msg in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let key = key_of(&seed);
            let expected = crate_siv(&key, &headers, &msg);
            let siv = Siv::new(&key);
            let refs: Vec<&[u8]> = headers.iter().map(Vec::as_slice).collect();
            let mut buf = msg.clone();
            let tag = siv.encrypt_in_place(&refs, &mut buf);
            prop_assert_eq!(&expected[..TAG_LEN], &tag[..]);
            prop_assert_eq!(&expected[TAG_LEN..], &buf[..]);
            siv.decrypt_in_place(&refs, &mut buf, &tag).unwrap();
            prop_assert_eq!(&buf, &msg);
        }
    }

    #[test]
    fn a_changed_tag_header_or_ciphertext_fails_and_leaves_no_plaintext() {
        let siv = Siv::new(&key_of(b"k"));
        let msg = b"seventeen bytes!!".to_vec();
        let headers: [&[u8]; 2] = [b"a", b"b"];
        let mut ct = msg.clone();
        let tag = siv.encrypt_in_place(&headers, &mut ct);

        let mut bad_tag = tag;
        bad_tag[15] ^= 1;
        let mut buf = ct.clone();
        assert_eq!(
            siv.decrypt_in_place(&headers, &mut buf, &bad_tag),
            Err(Unauthentic)
        );
        assert!(buf.iter().all(|&b| b == 0));

        let mut buf = ct.clone();
        assert_eq!(
            siv.decrypt_in_place(&[b"a", b"c"], &mut buf, &tag),
            Err(Unauthentic)
        );
        let mut buf = ct.clone();
        buf[0] ^= 1;
        assert_eq!(
            siv.decrypt_in_place(&headers, &mut buf, &tag),
            Err(Unauthentic)
        );
        let mut buf = ct;
        siv.decrypt_in_place(&headers, &mut buf, &tag).unwrap();
        assert_eq!(buf, msg);
    }

    /// RFC 5297's doubling: shift left, and reduce by 0x87 when the top bit
    /// falls off.
    #[test]
    fn doubling_reduces_by_the_polynomial() {
        assert_eq!(dbl(1), 2);
        assert_eq!(dbl(1 << 127), 0x87);
        assert_eq!(dbl((1 << 127) | 1), 0x85);
    }
}
