//! BLAKE3-256 content hashes, written `blake3:<64 lowercase hex>`.
//!
//! The hash of a structure is always BLAKE3 over its canonical CBOR encoding
//! ([`hash_of`]); the only other hash inputs are the Merkle nodes of the root
//! hash, which carry their own domain prefixes (see `state::root_hash`).

use crate::cbor::{to_canonical, CanonicalError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

pub const HASH_PREFIX: &str = "blake3:";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashParseError {
    #[error("hash must start with \"blake3:\" (got {0:?})")]
    Prefix(String),
    #[error("hash must have 64 lowercase hex digits after \"blake3:\" (got {0:?})")]
    Digits(String),
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes` after `prefix`, into `buf`; no allocation.
pub(crate) fn hex_into<'a>(buf: &'a mut [u8], prefix: &str, bytes: &[u8]) -> &'a str {
    let p = prefix.len();
    buf[..p].copy_from_slice(prefix.as_bytes());
    for (i, b) in bytes.iter().enumerate() {
        buf[p + 2 * i] = HEX[(b >> 4) as usize];
        buf[p + 2 * i + 1] = HEX[(b & 0x0f) as usize];
    }
    let n = p + 2 * bytes.len();
    std::str::from_utf8(&buf[..n]).expect("ASCII prefix and hex digits are UTF-8")
}

impl Hash {
    pub const ZERO: Hash = Hash([0; 32]);

    pub fn of_bytes(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// BLAKE3 of the canonical CBOR encoding of `value`.
pub fn hash_of<T: Serialize + ?Sized>(value: &T) -> Result<Hash, CanonicalError> {
    Ok(Hash::of_bytes(&to_canonical(value)?))
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 7 + 64];
        f.write_str(hex_into(&mut buf, HASH_PREFIX, &self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for Hash {
    type Err = HashParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s
            .strip_prefix(HASH_PREFIX)
            .ok_or_else(|| HashParseError::Prefix(truncate(s)))?;
        let mut out = [0u8; 32];
        if !lower_hex_decode(digits.as_bytes(), &mut out) {
            return Err(HashParseError::Digits(truncate(s)));
        }
        Ok(Hash(out))
    }
}

pub(crate) fn truncate(s: &str) -> String {
    if s.len() <= 80 {
        s.to_string()
    } else {
        let mut end = 80;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 7 + 64];
        s.serialize_str(hex_into(&mut buf, HASH_PREFIX, &self.0))
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_parsed(d, "a \"blake3:<64 lowercase hex>\" hash")
    }
}

/// Deserialize a text value through `T::from_str`, reading the text where
/// the decoder holds it (no owned copy: a WAL record carries dozens of
/// hashes and signatures).
pub(crate) fn deserialize_parsed<'de, D, T>(d: D, what: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    struct V<T>(&'static str, std::marker::PhantomData<T>);
    impl<T: FromStr> serde::de::Visitor<'_> for V<T>
    where
        T::Err: fmt::Display,
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            v.parse().map_err(E::custom)
        }
    }
    d.deserialize_str(V(what, std::marker::PhantomData))
}

/// Each byte's value as a lowercase hex digit; 0xFF for every other byte.
const UNHEX: [u8; 256] = {
    let mut t = [0xFFu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Decode exactly `2 * out.len()` lowercase hex digits into `out`; false
/// for any other input (wrong length, uppercase, non-hex). One table lookup
/// per digit: parsing hashes was an eighth of the WAL reader's time.
pub(crate) fn lower_hex_decode(digits: &[u8], out: &mut [u8]) -> bool {
    if digits.len() != 2 * out.len() {
        return false;
    }
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (hi, lo) = (UNHEX[pair[0] as usize], UNHEX[pair[1] as usize]);
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0f);
    }
    // Valid digits are below 16; the 0xFF marker sets the high bits.
    bad & 0xF0 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_hex_decode_accepts_only_lowercase_hex_of_the_exact_length() {
        let mut out = [0u8; 3];
        assert!(lower_hex_decode(b"00a9ff", &mut out));
        assert_eq!(out, [0x00, 0xa9, 0xff]);
        for bad in [
            &b"00A9ff"[..],
            b"00a9f",
            b"00a9fff0",
            b"0xa9ff",
            b"00a9f\xff",
            b"g0a9ff",
            b" 0a9ff",
        ] {
            assert!(!lower_hex_decode(bad, &mut out), "{bad:?}");
        }
        // Agrees with the reference decoder on every byte pair.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let mut one = [0u8; 1];
                let ok = lower_hex_decode(&[a, b], &mut one);
                let lower = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
                assert_eq!(ok, lower(a) && lower(b), "{a} {b}");
                if ok {
                    assert_eq!(one.to_vec(), hex::decode([a, b]).unwrap());
                }
            }
        }
    }

    #[test]
    fn display_and_parse_round_trip() {
        let h = Hash::of_bytes(b"swoosh");
        let s = h.to_string();
        assert!(s.starts_with("blake3:"));
        assert_eq!(s.len(), 7 + 64);
        assert_eq!(s.parse::<Hash>().unwrap(), h);
    }

    #[test]
    fn parse_errors_name_the_problem() {
        assert!(matches!(
            "sha256:00".parse::<Hash>(),
            Err(HashParseError::Prefix(_))
        ));
        assert!(matches!(
            "blake3:00".parse::<Hash>(),
            Err(HashParseError::Digits(_))
        ));
        let upper = format!("blake3:{}", "A".repeat(64));
        assert!(matches!(
            upper.parse::<Hash>(),
            Err(HashParseError::Digits(_))
        ));
    }
}
